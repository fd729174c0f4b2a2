//! The real `relay-cloud` and `relay-edge` as child processes, with
//! generated configurations in a temporary directory: one mapping per
//! target service, all on 127.0.0.1, ports picked by the kernel (port 0)
//! and read back from the cloud's log.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::bins::Bins;
use crate::procs::{self, Proc};
use crate::targets::Addrs;

/// Log filter of the agents: warnings, and the cloud's info lines, which
/// are lifecycle events (where it listens, tunnels up) and failures only,
/// never one per served connection. The bench needs the lifecycle lines.
const CLOUD_LOG: &str = "warn,agent_cloud=info";
const EDGE_LOG: &str = "warn";

/// Tunnels the edge keeps (the agents' default).
const TUNNELS: u32 = 2;
const STARTUP: Duration = Duration::from_secs(15);
const EDGE_ID: &str = "bench-edge";
/// The byte rate of the limited mappings: 10 MiB/s.
pub(crate) const RATE_LIMIT: u64 = 10 * 1024 * 1024;

/// How the agents are started, beyond the defaults: for experiments
/// (`--agent-env`, `--stream-window`); recorded in the report.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub(crate) struct Setup {
    /// Extra environment variables of both agents.
    pub(crate) env: Vec<(String, String)>,
    /// The cloud's `stream_window` (the largest its receive window per
    /// stream grows to, i.e. for data towards the cloud); None keeps the
    /// agents' default.
    pub(crate) stream_window: Option<u32>,
}

/// A running cloud and edge. Both are killed, and the configs removed,
/// when this is dropped.
#[derive(Debug)]
pub(crate) struct Agents {
    pub(crate) cloud: Proc,
    pub(crate) edge: Proc,
    /// The public mapping ports, one per target service.
    pub(crate) mapped: Addrs,
    /// The sink and the source again, through mappings limited to
    /// [`RATE_LIMIT`] bytes per second (`rate_limit_in`, `rate_limit_out`).
    pub(crate) limited: (SocketAddr, SocketAddr),
    /// Log lines each agent had written once ready (later warnings are
    /// reported).
    startup_lines: (usize, usize),
    _dir: tempfile::TempDir,
}

impl Agents {
    /// Starts the cloud, then the edge, and waits until all tunnels are
    /// up and an echo round trip through the relay works.
    pub(crate) async fn start(
        bins: &Bins,
        targets: &Addrs,
        max_streams: u32,
        setup: &Setup,
    ) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("relay-bench-").tempdir()?;
        // Random per run; fastrand is enough for a loopback-only bench.
        let token: String = (0..32).map(|_| fastrand::alphanumeric()).collect();

        let cloud_path = dir.path().join("cloud.toml");
        std::fs::write(&cloud_path, cloud_toml(&token, targets, max_streams, setup.stream_window))?;
        let mut cloud =
            Proc::spawn("relay-cloud", agent_command(&bins.cloud, &cloud_path, CLOUD_LOG, setup))?;
        let listening = cloud.wait_for(&["listening for edge tunnels"], 1, STARTUP).await?;
        let tunnel = field(&listening[0], "listen=")?;
        let mapped = Addrs {
            echo: mapping_addr(&mut cloud, "echo").await?,
            sink: mapping_addr(&mut cloud, "sink").await?,
            source: mapping_addr(&mut cloud, "source").await?,
        };

        let limited = (
            mapping_addr(&mut cloud, "limited-sink").await?,
            mapping_addr(&mut cloud, "limited-source").await?,
        );
        let edge_path = dir.path().join("edge.toml");
        std::fs::write(&edge_path, edge_toml(&token, tunnel, targets))?;
        let edge =
            Proc::spawn("relay-edge", agent_command(&bins.edge, &edge_path, EDGE_LOG, setup))?;
        let up = format!("tunnels={TUNNELS}");
        if let Err(e) = cloud.wait_for(&["edge tunnel up", &up], 1, STARTUP).await {
            return Err(e.context(format!(
                "the edge's tunnels did not come up; edge log:\n{}",
                edge.tail()
            )));
        }

        let mut agents = Self { cloud, edge, mapped, limited, startup_lines: (0, 0), _dir: dir };
        agents.check_echo().await?;
        agents.startup_lines = (agents.cloud.lines().len(), agents.edge.lines().len());
        Ok(agents)
    }

    async fn check_echo(&mut self) -> Result<()> {
        let addr = self.mapped.echo;
        let probe = async {
            let mut tcp = tokio::net::TcpStream::connect(addr).await?;
            crate::measure::echo_byte(&mut tcp).await
        };
        match tokio::time::timeout(Duration::from_secs(5), probe).await {
            Ok(Ok(())) => Ok(()),
            outcome => {
                let why = match outcome {
                    Ok(Err(e)) => e.to_string(),
                    _ => "timed out".to_owned(),
                };
                anyhow::bail!(
                    "no echo through the relay at {addr}: {why}\ncloud log:\n{}\nedge log:\n{}",
                    self.cloud.tail(),
                    self.edge.tail()
                )
            }
        }
    }

    /// Both agents, for per-agent figures.
    pub(crate) fn both(&self) -> [&Proc; 2] {
        [&self.cloud, &self.edge]
    }

    /// Warnings and errors the agents logged after they were ready.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut all = self.cloud.warnings_after(self.startup_lines.0);
        let edge = self.edge.warnings_after(self.startup_lines.1);
        all.extend(edge.into_iter().map(|l| format!("edge: {l}")));
        all
    }

    /// Fails if either agent has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        for proc in [&mut self.cloud, &mut self.edge] {
            if !proc.is_running() {
                anyhow::bail!("{} exited during the run:\n{}", proc.name, proc.tail());
            }
        }
        Ok(())
    }

    pub(crate) async fn stop(self) {
        self.edge.stop().await;
        self.cloud.stop().await;
    }
}

fn agent_command(bin: &Path, config: &Path, log: &str, setup: &Setup) -> tokio::process::Command {
    let mut cmd = procs::command(bin);
    cmd.arg("--config").arg(config).env("RUST_LOG", log);
    cmd.envs(setup.env.iter().map(|(k, v)| (k, v)));
    cmd
}

async fn mapping_addr(cloud: &mut Proc, name: &str) -> Result<SocketAddr> {
    let needle = format!("mapping={name} ");
    let lines = cloud.wait_for(&["mapping listening", &needle], 1, STARTUP).await?;
    field(&lines[0], "listen=")
}

/// The address in a `key=ADDR` field of a log line.
fn field(line: &str, key: &str) -> Result<SocketAddr> {
    line.split_whitespace()
        .find_map(|f| f.strip_prefix(key))
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("no {key}ADDR in log line {line:?}"))
}

fn cloud_toml(token: &str, t: &Addrs, max_streams: u32, window: Option<u32>) -> String {
    let window = window.map(|w| format!("stream_window = {w}\n")).unwrap_or_default();
    let mut s = format!(
        "shutdown_grace = \"1s\"\n\n[tunnel]\nlisten = \"127.0.0.1:0\"\n\
         max_streams_per_tunnel = {max_streams}\n{window}\n\
         [[edges]]\nid = \"{EDGE_ID}\"\ntoken = \"{token}\"\n"
    );
    for (name, target) in [("echo", t.echo), ("sink", t.sink), ("source", t.source)] {
        s.push_str(&format!(
            "\n[[mappings]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n\
             edge = \"{EDGE_ID}\"\ntarget = \"{target}\"\n"
        ));
    }
    for (name, target, key) in
        [("limited-sink", t.sink, "rate_limit_in"), ("limited-source", t.source, "rate_limit_out")]
    {
        s.push_str(&format!(
            "\n[[mappings]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\n\
             edge = \"{EDGE_ID}\"\ntarget = \"{target}\"\n{key} = {RATE_LIMIT}\n"
        ));
    }
    s
}

fn edge_toml(token: &str, cloud: SocketAddr, t: &Addrs) -> String {
    format!(
        "cloud_url = \"ws://{cloud}/tunnel\"\nedge_id = \"{EDGE_ID}\"\ntoken = \"{token}\"\n\
         tunnels = {TUNNELS}\nallow = [\"{}\", \"{}\", \"{}\"]\nshutdown_grace = \"1s\"\n",
        t.echo, t.sink, t.source
    )
}
