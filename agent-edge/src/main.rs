//! `relay-edge`: see the crate docs of `agent_edge`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// The on-prem side of hybrid relay: dials out to the cloud agent and
/// connects the streams it carries to allowed destinations.
#[derive(Debug, Parser)]
#[command(name = "relay-edge", version)]
struct Args {
    /// The edge agent's configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: PathBuf,
    /// Validate the configuration, print the result, and exit (0 valid, 1 not).
    #[arg(long)]
    check: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let config = match config::EdgeConfig::load(&args.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("relay-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    if args.check {
        for warning in &config.warnings {
            eprintln!("relay-edge: warning: {warning}");
        }
        return match agent_edge::check(&config) {
            Ok(summary) => {
                println!("{}: ok ({summary})", args.config.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-edge: {}: {e}", args.config.display());
                ExitCode::FAILURE
            }
        };
    }
    let _log = match tunnel::service::init_logging(config.log.as_ref()) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("relay-edge: {e}");
            return ExitCode::FAILURE;
        }
    };
    run(config)
}

#[tokio::main]
async fn run(config: config::EdgeConfig) -> ExitCode {
    let edge = match agent_edge::Edge::start(config) {
        Ok(edge) => edge,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("relay-edge: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    tunnel::service::shutdown_requested().await;
    edge.shutdown().await;
    ExitCode::SUCCESS
}
