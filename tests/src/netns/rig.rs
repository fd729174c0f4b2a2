//! The agents and the probe tools running in a [`Topology`], and the
//! measurements the tests make on them.

use std::io::Write;
use std::net::SocketAddr;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::{CLOUD_IP, Ns, SERVICE, Topology, unsupported};
use crate::{Agent, TOKEN, edge_toml};

const STARTUP: Duration = Duration::from_secs(10);
/// Lines that mean a tunnel ended, on each side.
pub const EDGE_DOWN: &[&str] = &["tunnel down"];
pub const CLOUD_DOWN: &[&str] = &["edge tunnel closed"];

/// Writes a line to stderr past the test harness's capture, so measured
/// figures and skips show without `--nocapture`.
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A cloud config for the topology: tunnel listener and one mapping `svc`
/// (to [`SERVICE`]) on ephemeral ports of the cloud's wan address, edge
/// `e1` with [`TOKEN`], and the given heartbeat.
pub fn cloud_toml(heartbeat_interval: &str, heartbeat_timeout: &str) -> String {
    format!(
        "shutdown_grace = \"3s\"\n[tunnel]\nlisten = \"{CLOUD_IP}:0\"\nallow_plaintext = true\n\
         heartbeat_interval = \"{heartbeat_interval}\"\nheartbeat_timeout = \"{heartbeat_timeout}\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n[[mappings]]\nname = \"svc\"\n\
         listen = \"{CLOUD_IP}:0\"\nedge = \"e1\"\ntarget = \"{SERVICE}\"\n"
    )
}

impl Topology {
    /// Starts an agent binary inside `ns`.
    pub fn spawn_agent(&self, ns: Ns, bin_name: &str, config_text: &str) -> Agent {
        Agent::spawn_wrapped(&["ip", "netns", "exec", &self.ns(ns)], bin_name, config_text)
    }

    /// Starts an echo server on `addr` in `ns`; killed when dropped.
    pub async fn serve(&self, ns: Ns, addr: &str) -> Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns(ns), &self.probe, "serve", addr])
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn e2e-probe serve");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(Duration::from_secs(5), lines.next_line()).await;
        let listening = matches!(first, Ok(Ok(Some(ref l))) if l.starts_with("listening"));
        assert!(listening, "echo server on {addr} in {ns:?}: {first:?}");
        child
    }

    /// Runs `e2e-probe args...` in `ns`, bounded by `limit`; resolves to
    /// whether it succeeded and what it printed. The future owns what it
    /// needs (it can be spawned); the probe starts when it is first polled.
    pub fn probe(
        &self,
        ns: Ns,
        args: &[&str],
        limit: Duration,
    ) -> impl Future<Output = (bool, String)> + Send + 'static {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns(ns), &self.probe]).args(args).kill_on_drop(true);
        let what = format!("{args:?}");
        async move {
            match tokio::time::timeout(limit, command.output()).await {
                Ok(Ok(out)) => {
                    (out.status.success(), String::from_utf8_lossy(&out.stdout).trim().to_owned())
                }
                Ok(Err(e)) => (false, format!("cannot run e2e-probe: {e}")),
                Err(_) => (false, format!("e2e-probe {what} still running after {limit:?}")),
            }
        }
    }

    /// A checksummed echo of `bytes` bytes from `ns` to `addr`, sent after
    /// the connection has been open and idle for `idle`.
    ///
    /// # Errors
    /// What the probe reported.
    pub async fn echo_after(
        &self,
        ns: Ns,
        addr: SocketAddr,
        bytes: u64,
        idle: Duration,
        timeout: Duration,
    ) -> Result<String, String> {
        let seed = fastrand::u64(..).to_string();
        let (addr, bytes) = (addr.to_string(), bytes.to_string());
        let (ms, idle_ms) = (timeout.as_millis().to_string(), idle.as_millis().to_string());
        let args = ["echo", &addr, &bytes, &seed, &ms, &idle_ms];
        match self.probe(ns, &args, idle + timeout * 2).await {
            (true, out) => Ok(out),
            (false, out) => Err(out),
        }
    }

    /// [`echo_after`](Self::echo_after) without the idle time.
    ///
    /// # Errors
    /// What the probe reported.
    pub async fn echo(
        &self,
        ns: Ns,
        addr: SocketAddr,
        bytes: u64,
        timeout: Duration,
    ) -> Result<String, String> {
        self.echo_after(ns, addr, bytes, Duration::ZERO, timeout).await
    }
}

/// The topology with both agents and the on-prem echo service running and
/// both edge tunnels up. Fields drop in order: processes, then namespaces.
#[derive(Debug)]
pub struct Rig {
    pub cloud: Agent,
    pub edge: Agent,
    _service: Child,
    /// The mapping's public address (on the cloud).
    pub public: SocketAddr,
    /// The cloud's tunnel listener.
    pub tunnel: SocketAddr,
    pub topo: Topology,
}

impl Rig {
    /// Builds everything; `None` when this machine cannot run
    /// network-namespace tests or lacks one of `tools` (see
    /// [`cannot_run`](crate::skip::cannot_run): under CI that panics).
    pub async fn start(
        test: &str,
        probe: &str,
        heartbeat: (&str, &str),
        tools: &[&str],
    ) -> Option<Rig> {
        let topo = match unsupported(tools).map_or_else(|| Topology::build(probe), Err) {
            Ok(topo) => topo,
            Err(why) => {
                crate::skip::cannot_run(test, &why);
                return None;
            }
        };
        let _service = topo.serve(Ns::Onprem, SERVICE).await;
        let config = cloud_toml(heartbeat.0, heartbeat.1);
        let mut cloud = topo.spawn_agent(Ns::Cloud, "relay-cloud", &config);
        let line = cloud.wait_for_log(&["listening for edge tunnels"], STARTUP).await;
        let tunnel = listen_addr(&line);
        let line = cloud.wait_for_log(&["mapping listening", "mapping=svc "], STARTUP).await;
        let public = listen_addr(&line);
        // Plain ws:// across the topology's networks, chosen on purpose.
        let config =
            format!("allow_plaintext = true\n{}", edge_toml(tunnel, &[SERVICE.into()], TOKEN));
        let edge = topo.spawn_agent(Ns::Edge, "relay-edge", &config);
        let mut rig = Rig { cloud, edge, _service, public, tunnel, topo };
        rig.edge.wait_for_logs(&["tunnel up"], 2, STARTUP).await;
        let took = rig.serves_within(STARTUP).await;
        assert!(took.is_some(), "the mapping never served\n{}", rig.logs());
        Some(rig)
    }

    /// Polls a small echo from the client until it works; how long it took.
    pub async fn serves_within(&self, limit: Duration) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            let probe = self.topo.echo(Ns::Client, self.public, 1024, Duration::from_secs(1));
            if probe.await.is_ok() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Both agents' logs so far, for failure messages.
    pub fn logs(&mut self) -> String {
        let cloud = self.cloud.logged().join("\n");
        format!("--- cloud log:\n{cloud}\n--- edge log:\n{}", self.edge.logged().join("\n"))
    }

    /// The edge's tunnel connections as the cloud sees them (peer addresses).
    pub fn tunnel_peers(&self) -> Vec<SocketAddr> {
        let all = self.topo.tcp_established(Ns::Cloud);
        let mut peers: Vec<_> = all.into_iter().filter(|(l, _)| *l == self.tunnel).collect();
        peers.sort();
        peers.into_iter().map(|(_, p)| p).collect()
    }

    /// After a fault at `t0` (a [`time_of_day`]), with `base` the counts of
    /// [`EDGE_DOWN`] and [`CLOUD_DOWN`] lines before it: both tunnels must
    /// be logged down on both sides by heartbeat timeout within `bound`.
    /// Returns the slowest detection.
    pub async fn assert_detected(
        &mut self,
        base: (usize, usize),
        t0: Duration,
        bound: Duration,
    ) -> Duration {
        let wait = bound + Duration::from_secs(3);
        let edge = self.edge.wait_for_logs(EDGE_DOWN, base.0 + 2, wait).await.split_off(base.0);
        let cloud = self.cloud.wait_for_logs(CLOUD_DOWN, base.1 + 2, wait).await.split_off(base.1);
        let (edge_d, cloud_d) = (delays(t0, &edge), delays(t0, &cloud));
        report(&format!("  detection: edge {edge_d:?}, cloud {cloud_d:?}"));
        for line in edge.iter().chain(&cloud) {
            report(&format!("    {line}"));
            let timeout = line.contains("no answer to pings");
            assert!(timeout, "not a heartbeat timeout: {line}\n{}", self.logs());
        }
        let worst = edge_d.iter().chain(&cloud_d).max().copied().unwrap_or_default();
        assert!(worst < bound, "detection took {worst:?} (bound {bound:?})\n{}", self.logs());
        worst
    }

    /// After the path is back: the mapping serves, and the edge has two new
    /// tunnels (beyond `ups_before` "tunnel up" lines), within `bound`.
    /// Returns the time until the mapping served.
    pub async fn assert_recovered(&mut self, ups_before: usize, bound: Duration) -> Duration {
        let Some(took) = self.serves_within(bound).await else {
            panic!("mapping not serving {bound:?} after the heal\n{}", self.logs())
        };
        self.edge.wait_for_logs(&["tunnel up"], ups_before + 2, bound).await;
        took
    }
}

/// How many log lines of `agent` so far contain all of `needles`.
pub fn count(agent: &mut Agent, needles: &[&str]) -> usize {
    agent.logged().iter().filter(|l| needles.iter().all(|n| l.contains(n))).count()
}

/// The socket address after `listen=` in a log line.
fn listen_addr(line: &str) -> SocketAddr {
    let value = line.split_whitespace().find_map(|f| f.strip_prefix("listen="));
    let value = value.unwrap_or_else(|| panic!("no listen= in {line:?}"));
    value.parse().unwrap_or_else(|e| panic!("bad listen address in {line:?}: {e}"))
}

/// UTC time of day now, comparable with the agents' log timestamps.
pub fn time_of_day() -> Duration {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).expect("clock after 1970");
    Duration::from_micros(u64::try_from(now.as_micros() % 86_400_000_000).expect("fits"))
}

/// The UTC time of day from a log line's leading RFC 3339 timestamp.
fn log_time(line: &str) -> Duration {
    let stamp = line.split_whitespace().next().unwrap_or_default();
    let time = stamp.split_once('T').and_then(|(_, t)| t.strip_suffix('Z'));
    let time = time.unwrap_or_else(|| panic!("no UTC timestamp in {line:?}"));
    let parts: Vec<f64> = time.split(':').filter_map(|p| p.parse().ok()).collect();
    let [h, m, s] = parts[..] else { panic!("bad timestamp in {line:?}") };
    Duration::from_secs_f64(h * 3600.0 + m * 60.0 + s)
}

/// How long after `t0` each line was logged (across midnight too).
fn delays(t0: Duration, lines: &[String]) -> Vec<Duration> {
    let day = Duration::from_secs(86_400);
    let after = |t: Duration| if t >= t0 { t - t0 } else { t + day - t0 };
    lines.iter().map(|l| after(log_time(l))).collect()
}
