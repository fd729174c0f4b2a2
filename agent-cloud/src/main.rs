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
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("relay-cloud: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[tokio::main]
async fn run(config: config::CloudConfig) -> anyhow::Result<()> {
    let cloud = agent_cloud::Cloud::start(config).await.context("cannot start")?;
    tunnel::service::shutdown_requested().await;
    cloud.shutdown().await;
    Ok(())
}
