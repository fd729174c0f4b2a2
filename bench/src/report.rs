//! Every figure of one run, the targets they are held against, and the
//! JSON file. The printed table is in `table.rs`.

use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::agents::Setup;
use crate::load::Load;
use crate::machine::Machine;
use crate::measure::bulk::Direction;
use crate::measure::idle::Opened;
use crate::plan::Plan;
use crate::stats::{Latency, Spread};

#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) plan: Plan,
    pub(crate) setup: Setup,
    pub(crate) machine: Machine,
    pub(crate) throughput: Vec<Throughput>,
    pub(crate) round_trip: Vec<RoundTrip>,
    pub(crate) new_connection: Compared,
    /// The same measurements through two plain TCP proxies in a chain.
    pub(crate) reference: Reference,
    /// Agent CPU microseconds per relayed new connection.
    pub(crate) agent_cpu_us_per_connection: PerAgent<f64>,
    pub(crate) memory: Memory,
    pub(crate) connections: Connections,
    pub(crate) cpu: Cpu,
    /// Bulk through mappings with a byte rate (`rate_limit_in/out`).
    pub(crate) rate_limited: Vec<RateLimited>,
    pub(crate) targets: Vec<Check>,
    /// WARN/ERROR lines the agents logged while being measured.
    pub(crate) agent_warnings: Vec<String>,
    /// CPU used by other processes meanwhile (None if /proc is unreadable).
    pub(crate) load: Option<Load>,
    pub(crate) elapsed_secs: f64,
}

/// One direction through a rate-limited mapping: what the limit let
/// through, in all and per connection, MiB/s.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct RateLimited {
    pub(crate) direction: Direction,
    pub(crate) streams: usize,
    pub(crate) limit_mib_s: f64,
    pub(crate) total_mib_s: f64,
    pub(crate) per_stream_mib_s: Vec<f64>,
    /// Total over the limit (1.0 is exact).
    pub(crate) ratio: f64,
}

/// Bulk throughput, MiB/s.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Throughput {
    pub(crate) direction: Direction,
    pub(crate) streams: usize,
    pub(crate) direct_mib_s: Spread,
    pub(crate) relay_mib_s: Spread,
    /// Relay median over direct median.
    pub(crate) ratio: f64,
    /// Bytes moved by all relayed runs of this figure.
    pub(crate) relay_bytes: u64,
    /// CPU seconds each agent spent on them.
    pub(crate) relay_cpu_secs: PerAgent<f64>,
    /// CPU seconds per GiB of every process on the path: client and
    /// service (direct), plus both agents (relay).
    pub(crate) direct_path_cpu_per_gib: f64,
    pub(crate) relay_path_cpu_per_gib: f64,
    /// Those processes' CPU seconds per second of transfer: how many of
    /// the machine's cores the path kept busy.
    pub(crate) direct_path_cores: f64,
    pub(crate) relay_path_cores: f64,
}

#[derive(Debug, Clone, Serialize)]
pub(crate) struct RoundTrip {
    pub(crate) message_bytes: usize,
    #[serde(flatten)]
    pub(crate) latency: Compared,
    /// The p50 of each connection the round trips were spread over.
    pub(crate) direct_p50_per_connection_us: Spread,
    pub(crate) relay_p50_per_connection_us: Spread,
    /// Agent CPU microseconds per relayed round trip.
    pub(crate) agent_cpu_us_per_round_trip: PerAgent<f64>,
}

/// A latency measured directly and through the relay.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Compared {
    pub(crate) direct: Latency,
    pub(crate) relay: Latency,
    /// Relay p50 over direct p50.
    pub(crate) ratio_p50: f64,
}

impl Compared {
    pub(crate) fn new(direct: Latency, relay: Latency) -> Self {
        let ratio_p50 = relay.p50_us / direct.p50_us;
        Self { direct, relay, ratio_p50 }
    }
}

/// Two plain TCP proxies in a chain (`relay` is the chain in these
/// `Compared` figures).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Reference {
    pub(crate) round_trip_1b: Compared,
    pub(crate) new_connection: Compared,
    pub(crate) throughput: Vec<ReferenceThroughput>,
}

/// Single-stream throughput, direct and through the proxy chain, MiB/s.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ReferenceThroughput {
    /// Parallel connections, as in the relay's bulk runs.
    pub(crate) streams: usize,
    pub(crate) direction: crate::measure::bulk::Direction,
    pub(crate) direct_mib_s: Spread,
    pub(crate) chain_mib_s: Spread,
    /// Chain median over direct median.
    pub(crate) ratio: f64,
}

/// A figure for each agent.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct PerAgent<T> {
    pub(crate) cloud: T,
    pub(crate) edge: T,
}

/// Resident memory, KiB.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Memory {
    /// Fresh agents, tunnels up, no connection.
    pub(crate) idle_kib: PerAgent<u64>,
    /// With `plan.idle_small` idle connections open.
    pub(crate) small_kib: PerAgent<u64>,
    /// With `plan.idle_large` idle connections open.
    pub(crate) large_kib: PerAgent<u64>,
    /// After those connections closed.
    pub(crate) after_close_kib: PerAgent<u64>,
    /// (large - idle) / connections served.
    pub(crate) per_connection_kib: PerAgent<f64>,
    /// VmHWM of fresh agents after all bulk runs.
    pub(crate) bulk_peak_kib: PerAgent<u64>,
}

/// The idle connections of the memory phase, and a burst of as many.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Connections {
    /// Connections per batch (`plan.idle_large`).
    pub(crate) attempted: usize,
    /// Opened one at a time (the memory figures).
    pub(crate) sequential: Opened,
    /// Of those, still answering an echo after memory was read.
    pub(crate) sequential_alive: usize,
    /// Opened `burst_concurrency` at a time, after the first batch closed.
    pub(crate) burst: Opened,
    /// Of those, still answering an echo once all were opened.
    pub(crate) burst_alive: usize,
    pub(crate) burst_concurrency: usize,
}

impl Connections {
    /// Every connection of both batches served and still open at the end.
    pub(crate) fn all_served(&self) -> bool {
        let n = self.attempted;
        self.sequential.served == n
            && self.sequential_alive == n
            && self.burst.served == n
            && self.burst_alive == n
    }
}

/// CPU time of the agents over the relayed bulk runs.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct Cpu {
    /// GiB moved through the relay, per direction.
    pub(crate) gib_up: f64,
    pub(crate) gib_down: f64,
    pub(crate) cloud: AgentCpu,
    pub(crate) edge: AgentCpu,
}

/// Seconds of CPU (user + system).
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct AgentCpu {
    pub(crate) seconds_up: f64,
    pub(crate) seconds_down: f64,
    pub(crate) per_gib_up: f64,
    pub(crate) per_gib_down: f64,
    pub(crate) per_gib_all: f64,
}

impl AgentCpu {
    pub(crate) fn new(seconds_up: f64, seconds_down: f64, gib_up: f64, gib_down: f64) -> Self {
        Self {
            seconds_up,
            seconds_down,
            per_gib_up: seconds_up / gib_up,
            per_gib_down: seconds_down / gib_down,
            per_gib_all: (seconds_up + seconds_down) / (gib_up + gib_down),
        }
    }
}

/// One figure against its target.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Check {
    pub(crate) figure: String,
    pub(crate) target: String,
    pub(crate) value: String,
    pub(crate) met: bool,
}

const MIB: f64 = 1024.0;

/// The targets of docs/performance.md, checked against this run.
pub(crate) fn checks(r: &Report) -> Vec<Check> {
    let mut out = Vec::new();
    let mut check = |figure: String, target: &str, value: String, met: bool| {
        out.push(Check { figure, target: target.to_owned(), value, met });
    };
    for t in &r.throughput {
        let figure = format!("{}-stream throughput, {}", t.streams, t.direction.label());
        check(figure, ">= 0.5 x direct", format!("{:.2} x", t.ratio), t.ratio >= 0.5);
    }
    if let Some(rt) = r.round_trip.iter().find(|rt| rt.message_bytes == 1) {
        let ratio = rt.latency.ratio_p50;
        check(
            "round trip p50, 1 byte".into(),
            "<= 1.5 x direct",
            format!("{ratio:.2} x"),
            ratio <= 1.5,
        );
    }
    let ratio = r.new_connection.ratio_p50;
    check("new connection p50".into(), "<= 2 x direct", format!("{ratio:.2} x"), ratio <= 2.0);
    let m = &r.memory;
    for (name, idle, per_conn, peak) in [
        ("relay-cloud", m.idle_kib.cloud, m.per_connection_kib.cloud, m.bulk_peak_kib.cloud),
        ("relay-edge", m.idle_kib.edge, m.per_connection_kib.edge, m.bulk_peak_kib.edge),
    ] {
        let idle_mib = idle as f64 / MIB;
        check(
            format!("memory idle, {name}"),
            "<= 8 MiB",
            format!("{idle_mib:.1} MiB"),
            idle_mib <= 8.0,
        );
        check(
            format!("memory per idle connection, {name}"),
            "<= 16 KiB",
            format!("{per_conn:.1} KiB"),
            per_conn <= 16.0,
        );
        let peak_mib = peak as f64 / MIB;
        check(
            format!("peak memory during bulk, {name}"),
            "<= 32 MiB",
            format!("{peak_mib:.1} MiB"),
            peak_mib <= 32.0,
        );
    }
    let c = &r.connections;
    let n = c.attempted;
    let value = format!(
        "{}/{n} one at a time; {}/{n} {} at a time ({} still open)",
        c.sequential.served, c.burst.served, c.burst_concurrency, c.burst_alive
    );
    check(
        format!("{} concurrent connections through one edge", r.plan.idle_large),
        "all served, none refused",
        value,
        c.all_served(),
    );
    out
}

pub(crate) fn write_json(report: &Report, path: &Path) -> Result<()> {
    let json = serde_json::to_string_pretty(report)?;
    std::fs::write(path, json + "\n").with_context(|| format!("cannot write {}", path.display()))
}
