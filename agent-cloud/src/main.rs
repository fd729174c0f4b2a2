//! `relay-cloud`: see the crate docs of `agent_cloud`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

/// The public side of hybrid relay: accepts edge tunnels and serves each
/// mapping's public port through them.
#[derive(Debug, Parser)]
#[command(name = "relay-cloud", version)]
struct Args {
    /// The cloud agent's configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration, print the result, and exit (0 valid, 1 not).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config::CloudConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relay-cloud: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        for warning in &config.warnings {
            eprintln!("relay-cloud: warning: {warning}");
        }
        return match agent_cloud::check(&config) {
            Ok(summary) => {
                println!("{}: ok ({summary})", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-cloud: {}: {e:#}", args.config.display());
                ExitCode::FAILURE
            }
        };
    }
    let _log = match tunnel::service::init_logging(config.log.as_ref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("relay-cloud: {e}");
            return ExitCode::FAILURE;
        }
    };
    match run(config, &args.config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("relay-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: config::CloudConfig, path: &std::path::Path) -> anyhow::Result<()> {
    let cloud = agent_cloud::Cloud::start(config).await.context("cannot start")?;
    tunnel::service::until_shutdown(|| reload(&cloud, path)).await;
    cloud.shutdown().await;
    Ok(())
}

/// SIGHUP: re-reads the config file and applies what can change live. A
/// file with an error changes nothing.
async fn reload(cloud: &agent_cloud::Cloud, path: &std::path::Path) {
    tracing::info!(file = %path.display(), "SIGHUP: reloading the config file");
    let config = match config::CloudConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("config reload refused, nothing changed: {e}");
            return;
        }
    };
    for warning in &config.warnings {
        tracing::warn!("{warning}");
    }
    match cloud.reload(config).await {
        Ok(report) if report.applied.is_empty() && report.not_applied.is_empty() => {
            tracing::info!("config reloaded: nothing changed");
        }
        Ok(report) => {
            for line in &report.applied {
                tracing::info!("config reloaded: {line}");
            }
            for line in &report.not_applied {
                tracing::warn!("config reloaded, not applied: {line}");
            }
        }
        Err(e) => tracing::error!("config reload refused, nothing changed: {e}"),
    }
}
