//! `relay-bench`: measures the real `relay-cloud` and `relay-edge` on
//! loopback against a direct connection to the same services.
//!
//! The agents are found next to this executable (or in `--bin-dir`); the
//! target services run in a child process (`--serve-targets`). See
//! docs/performance.md for what each figure means.

mod agents;
mod bins;
mod load;
mod machine;
mod measure;
mod phases;
mod plan;
mod procs;
mod report;
mod stats;
mod table;
mod targets;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// Benchmarks relay-cloud and relay-edge on loopback against a direct
/// connection: throughput, round trips, new connections, memory, CPU.
#[derive(Debug, Parser)]
#[command(name = "relay-bench", version)]
struct Args {
    /// Also write every figure and the machine's description to FILE (JSON).
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Shorter run: 1 s bulk runs once, 2,000 round trips, 200 connections.
    #[arg(long, conflicts_with = "smoke")]
    quick: bool,
    /// A few seconds with tiny counts, to check the bench still works (CI).
    /// Fails if any measurement fails or a connection opened one at a time
    /// is not served; performance targets are reported, never gated.
    #[arg(long)]
    smoke: bool,
    /// Directory holding relay-cloud and relay-edge (default: the directory
    /// of this executable).
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// Experiment: set an environment variable for both agents, e.g.
    /// TOKIO_WORKER_THREADS=1 (repeatable; recorded in the report).
    #[arg(long, value_name = "KEY=VALUE", value_parser = parse_env)]
    agent_env: Vec<(String, String)>,
    /// Experiment: the cloud's `stream_window` in bytes (the largest its
    /// receive window per stream grows to, for data towards the cloud;
    /// recorded in the report).
    #[arg(long, value_name = "BYTES")]
    stream_window: Option<u32>,
    /// Internal: serve the target services (echo, sink, source).
    #[arg(long, hide = true)]
    serve_targets: bool,
    /// Internal: a plain TCP proxy in front of the services named on stdin.
    #[arg(long, hide = true)]
    serve_proxy: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.serve_targets {
        return targets::serve_main();
    }
    if args.serve_proxy {
        return targets::proxy_main();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("relay-bench: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async {
        let code = tokio::select! {
            code = bench(args) => code,
            (signal, code) = interrupted() => {
                // Dropping `bench` kills every child and removes the
                // temporary directories.
                eprintln!("relay-bench: {signal}: stopping the agents and targets");
                ExitCode::from(code)
            }
        };
        procs::reap_dropped(Duration::from_secs(3)).await;
        code
    });
    // Measurement threads end on their own socket timeouts; do not wait.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}

async fn bench(args: Args) -> ExitCode {
    let plan = match (args.quick, args.smoke) {
        (_, true) => plan::Plan::smoke(),
        (true, _) => plan::Plan::quick(),
        _ => plan::Plan::full(),
    };
    let smoke = args.smoke;
    let bins = match bins::find(args.bin_dir.as_deref()) {
        Ok(bins) => bins,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Only binaries built from this workspace can be stale against it.
    if args.bin_dir.is_none() {
        for warning in bins::staleness(&bins) {
            eprintln!("relay-bench: warning: {warning}");
        }
    }
    if cfg!(debug_assertions) && !smoke {
        eprintln!("relay-bench: warning: this is a debug build; use --release for real figures");
    }
    let setup = agents::Setup { env: args.agent_env.clone(), stream_window: args.stream_window };
    let report = match phases::run(plan, setup, &bins).await {
        Ok(report) => report,
        Err(e) => {
            eprintln!("relay-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}", table::render(&report));
    if let Err(e) = console_cost(&bins, smoke) {
        eprintln!("relay-bench: {e:#}");
        return ExitCode::FAILURE;
    }
    for warning in report.agent_warnings.iter().take(20) {
        eprintln!("agent warning: {warning}");
    }
    if let Some(path) = &args.json {
        if let Err(e) = report::write_json(&report, path) {
            eprintln!("relay-bench: {e:#}");
            return ExitCode::FAILURE;
        }
        eprintln!("relay-bench: wrote {}", path.display());
    }
    // The one-at-a-time batch is deterministic: if it is not all served,
    // the harness or the agents are broken. (The burst is reported, not
    // gated: it depends on timing.)
    let c = &report.connections;
    if smoke && (c.sequential.served != c.attempted || c.sequential_alive != c.attempted) {
        eprintln!(
            "relay-bench: smoke failed: connections opened one at a time were not all served"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

/// The console's cost at a thousand sites (`relayctl measure-tui`: parse,
/// apply and draw a snapshot of 1,000 edges and 5,000 mappings, and the
/// keys), printed after the tunnel's figures.
fn console_cost(bins: &bins::Bins, smoke: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    let relayctl = bins.console.as_ref().context(
        "relayctl not found next to relay-bench: build it too (cargo build --release --bins)",
    )?;
    let rounds = if smoke { "2" } else { "20" };
    let out = std::process::Command::new(relayctl)
        .args(["measure-tui", "--edges", "1000", "--mappings", "5000", "--rounds", rounds])
        .output()
        .with_context(|| format!("running {}", relayctl.display()))?;
    anyhow::ensure!(
        out.status.success(),
        "relayctl measure-tui failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    println!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), v.to_owned())),
        _ => Err(format!("expected KEY=VALUE, got {s:?}")),
    }
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, naming it, with the exit code
/// a shell reports for it.
async fn interrupted() -> (&'static str, u8) {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return ("interrupted", 130);
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => ("interrupted", 130),
        _ = term.recv() => ("terminated", 143),
    }
}
