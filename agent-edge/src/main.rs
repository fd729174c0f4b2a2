//! `relay-edge`: see the crate docs of `agent_edge`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The on-prem side of hybrid relay: dials out to the cloud agent and
/// connects the streams it carries to allowed destinations.
#[derive(Debug, Parser)]
#[command(name = "relay-edge", version, args_conflicts_with_subcommands = true)]
struct Args {
    /// The edge agent's configuration file (TOML).
    #[arg(long, short = 'c', value_name = "FILE", required = true)]
    config: Option<PathBuf>,
    /// Validate the configuration, print the result, and exit (0 valid, 1 not).
    #[arg(long)]
    check: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Redeem a one-time enrolment code (from `relayctl edges enroll`) and
    /// write a ready edge.toml and token file into DIR.
    Enroll {
        /// The cloud's tunnel URL, as the enrolment command shows it.
        #[arg(long, value_name = "URL")]
        cloud: String,
        /// The one-time code.
        #[arg(long, value_name = "CODE")]
        code: String,
        /// Where to write edge.toml, token (mode 0600) and cloud-ca.pem.
        #[arg(long, value_name = "DIR", default_value = ".")]
        dir: PathBuf,
        /// A destination this edge may connect to (host:port, or
        /// net/len:port); repeat it. Without any, edge.toml says where to
        /// add them: the cloud cannot choose them.
        #[arg(long = "allow", value_name = "DEST")]
        allow: Vec<String>,
        /// Trust this CA for the cloud's certificate instead of choosing
        /// (the public roots, or the CA the cloud presents).
        #[arg(long, value_name = "FILE")]
        ca_file: Option<PathBuf>,
        /// Allow a plain ws:// cloud beyond loopback (not for production).
        #[arg(long)]
        allow_plaintext: bool,
        /// Replace an edge.toml or token that exists in DIR.
        #[arg(long)]
        force: bool,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    let path = match (args.command, args.config) {
        (Some(Command::Enroll { cloud, code, dir, allow, ca_file, allow_plaintext, force }), _) => {
            let request = agent_edge::enrol::EnrolRequest {
                cloud,
                code,
                dir,
                allow,
                ca_file,
                allow_plaintext,
                force,
            };
            return enroll(&request);
        }
        (None, Some(path)) => path,
        (None, None) => {
            eprintln!("relay-edge: --config FILE is required (or: relay-edge enroll --help)");
            return ExitCode::from(2);
        }
    };
    let config = match config::EdgeConfig::load(&path) {
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
                println!("{}: ok ({summary})", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("relay-edge: {}: {e}", path.display());
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
    run(config, path)
}

/// Re-reads the config file and applies what can change live.
fn reload(edge: &agent_edge::Edge, path: &std::path::Path) {
    let config = match config::EdgeConfig::load(path) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!("config reload refused, nothing changed: {e}");
            return;
        }
    };
    let report = edge.reload(&config);
    if report.applied.is_empty() {
        tracing::info!("config reloaded: nothing to apply");
    } else {
        tracing::info!("config reloaded: {}", report.applied.join("; "));
    }
    if !report.restart_needed.is_empty() {
        tracing::warn!(
            "config reloaded, but not applied until a restart: {} changed",
            report.restart_needed.join(", ")
        );
    }
}

#[tokio::main]
async fn run(config: config::EdgeConfig, path: PathBuf) -> ExitCode {
    let edge = match agent_edge::Edge::start(config) {
        Ok(edge) => edge,
        Err(e) => {
            tracing::error!("cannot start: {e}");
            eprintln!("relay-edge: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    // SIGHUP (`systemctl reload`): re-read the file; a bad one changes
    // nothing and says where, as at start.
    tunnel::service::until_shutdown(|| async { reload(&edge, &path) }).await;
    edge.shutdown().await;
    ExitCode::SUCCESS
}

/// `relay-edge enroll`: exit 0 enrolled, 1 refused or failed.
#[tokio::main(flavor = "current_thread")]
async fn enroll(request: &agent_edge::enrol::EnrolRequest) -> ExitCode {
    match agent_edge::enrol::enrol(request).await {
        Ok(done) => {
            println!("enrolled as edge {}", done.edge_id);
            println!(
                "  wrote {} and {} (mode 0600)",
                done.config_file.display(),
                done.token_file.display()
            );
            println!("  the cloud is trusted through {}", done.trust);
            if request.allow.is_empty() {
                println!(
                    "  no destination is allowed yet: add them to `allow` in {}",
                    done.config_file.display()
                );
            }
            println!(
                "next: relay-edge --config {}   (or start relay-edge.service)",
                done.config_file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("relay-edge: enrolment failed: {e}");
            ExitCode::FAILURE
        }
    }
}
