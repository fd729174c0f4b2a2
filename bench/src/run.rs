//! One bench run: the target services, then three phases, each on freshly
//! started agents so that one phase's memory does not show in the next:
//!
//! 1. memory idle, then with the small and the large number of idle
//!    connections, then after closing them;
//! 2. round trips and new connections, direct and relayed;
//! 3. bulk throughput, direct and relayed runs alternating, with the
//!    agents' CPU time around each relayed run and their VmHWM at the end.

use std::time::Duration;

use anyhow::{Result, ensure};
use tokio::time::Instant;

use crate::agents::Agents;
use crate::bins::Bins;
use crate::load::CpuAccount;
use crate::machine::Machine;
use crate::measure::bulk::{self, Direction};
use crate::measure::{connect, idle, rtt};
use crate::plan::Plan;
use crate::procs::Proc;
use crate::report::{
    self, AgentCpu, Compared, Connections, Cpu, Memory, PerAgent, Report, RoundTrip, Throughput,
};
use crate::stats::{Latency, Spread};
use crate::targets::{Addrs, Targets};

/// Pause between bulk runs, so the previous run's connections are gone.
const BETWEEN_RUNS: Duration = Duration::from_millis(300);
/// Bound on opening one batch of idle connections.
const OPEN_DEADLINE: Duration = Duration::from_secs(180);
/// The cloud's per-tunnel stream limit: above the idle connections even
/// if one tunnel carries them all.
const MAX_STREAMS: u32 = 20_000;

pub(crate) async fn run(plan: Plan, bins: &Bins) -> Result<Report> {
    let started = Instant::now();
    let account = CpuAccount::start();
    let machine =
        Machine::probe(bins.cloud.parent().map(|d| d.display().to_string()).unwrap_or_default());
    let mut targets = Targets::start(&bins.bench).await?;
    let direct = targets.addrs;
    let mut warnings = Vec::new();

    progress(&format!("phase 1/3: memory, {} idle connections", plan.idle_large));
    let mut agents = Agents::start(bins, &direct, MAX_STREAMS).await?;
    agents_started(&agents);
    let (mut memory, connections) = idle_connections(&plan, &mut agents).await?;
    warnings.extend(agents.warnings());
    agents.stop().await;

    progress("phase 2/3: round trips and new connections");
    let mut agents = Agents::start(bins, &direct, MAX_STREAMS).await?;
    agents_started(&agents);
    let mut round_trip = Vec::new();
    let pair = [direct.echo, agents.mapped.echo];
    for size in [1, 1024] {
        let [d, r] = rtt::measure(pair, size, plan.round_trips).await?;
        let (d, r) = (Latency::of(&d), Latency::of(&r));
        progress(&format!(
            "  round trip {size} B: p50 direct {:.1} µs, relay {:.1} µs",
            d.p50_us, r.p50_us
        ));
        round_trip.push(RoundTrip { message_bytes: size, latency: Compared::new(d, r) });
    }
    let [d, r] = connect::measure(pair, plan.new_connections).await?;
    let (d, r) = (Latency::of(&d), Latency::of(&r));
    progress(&format!("  new connection: p50 direct {:.1} µs, relay {:.1} µs", d.p50_us, r.p50_us));
    let new_connection = Compared::new(d, r);
    agents.check_running()?;
    warnings.extend(agents.warnings());
    agents.stop().await;

    progress("phase 3/3: bulk throughput");
    let mut agents = Agents::start(bins, &direct, MAX_STREAMS).await?;
    agents_started(&agents);
    let (throughput, cpu) = bulk_runs(&plan, &mut agents, &direct).await?;
    memory.bulk_peak_kib = per_agent(&agents, Proc::hwm_kib)?;
    warnings.extend(agents.warnings());
    agents.stop().await;
    ensure!(targets.proc.is_running(), "the targets process exited:\n{}", targets.proc.tail());
    targets.proc.stop().await;
    let load = account.finish();

    let mut report = Report {
        plan,
        machine,
        throughput,
        round_trip,
        new_connection,
        memory,
        connections,
        cpu,
        targets: Vec::new(),
        agent_warnings: warnings,
        load,
        elapsed_secs: started.elapsed().as_secs_f64(),
    };
    report.targets = report::checks(&report);
    Ok(report)
}

fn progress(line: &str) {
    eprintln!("{line}");
}

/// Names the agents' processes, for attaching a profiler to them.
fn agents_started(agents: &Agents) {
    let [cloud, edge] = agents.both();
    progress(&format!("  relay-cloud pid {}, relay-edge pid {}", cloud.pid(), edge.pid()));
}

fn per_agent<T>(agents: &Agents, read: impl Fn(&Proc) -> Result<T>) -> Result<PerAgent<T>> {
    let [cloud, edge] = agents.both();
    Ok(PerAgent { cloud: read(cloud)?, edge: read(edge)? })
}

async fn rss_settled(plan: &Plan, agents: &Agents) -> Result<PerAgent<u64>> {
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    per_agent(agents, Proc::rss_kib)
}

async fn idle_connections(plan: &Plan, agents: &mut Agents) -> Result<(Memory, Connections)> {
    let mut memory = Memory { idle_kib: rss_settled(plan, agents).await?, ..Memory::default() };
    let mut held = Vec::with_capacity(plan.idle_large);
    let addr = agents.mapped.echo;
    let small = idle::open(addr, plan.idle_small, &mut held, OPEN_DEADLINE).await;
    memory.small_kib = rss_settled(plan, agents).await?;
    let more = plan.idle_large.saturating_sub(plan.idle_small);
    let mut large = small;
    large.add(idle::open(addr, more, &mut held, OPEN_DEADLINE).await);
    progress(&format!(
        "  {} connections: {} served, {} refused, {} timed out",
        plan.idle_large, large.served, large.refused, large.timed_out
    ));
    memory.large_kib = rss_settled(plan, agents).await?;
    drop(held);
    memory.after_close_kib = rss_settled(plan, agents).await?;
    // Per connection actually open (all of them when every one was served).
    let open = large.served.max(1) as f64;
    let per = |large: u64, idle: u64| (large as f64 - idle as f64) / open;
    memory.per_connection_kib = PerAgent {
        cloud: per(memory.large_kib.cloud, memory.idle_kib.cloud),
        edge: per(memory.large_kib.edge, memory.idle_kib.edge),
    };
    agents.check_running()?;
    Ok((memory, Connections { small, large, attempted: plan.idle_large }))
}

/// Bytes moved and agent CPU seconds, per direction.
#[derive(Default)]
struct Tally {
    bytes: [u64; 2],
    cloud: [f64; 2],
    edge: [f64; 2],
}

async fn bulk_runs(
    plan: &Plan,
    agents: &mut Agents,
    direct: &Addrs,
) -> Result<(Vec<Throughput>, Cpu)> {
    let duration = Duration::from_secs_f64(plan.bulk_secs);
    let mut rows = Vec::new();
    let mut tally = Tally::default();
    for (d, direction) in [Direction::Up, Direction::Down].into_iter().enumerate() {
        let pick = |a: &Addrs| if direction == Direction::Up { a.sink } else { a.source };
        for streams in [1, plan.parallel_streams] {
            let (mut direct_rates, mut relay_rates) = (Vec::new(), Vec::new());
            for rep in 1..=plan.bulk_repeats {
                let t = bulk::run(pick(direct), direction, streams, duration).await?;
                direct_rates.push(t.mib_per_sec());
                tokio::time::sleep(BETWEEN_RUNS).await;

                let before = per_agent(agents, Proc::cpu_seconds)?;
                let t = bulk::run(pick(&agents.mapped), direction, streams, duration).await?;
                // Teardown of the run's streams counts too.
                tokio::time::sleep(BETWEEN_RUNS).await;
                let after = per_agent(agents, Proc::cpu_seconds)?;
                tally.bytes[d] += t.bytes;
                tally.cloud[d] += after.cloud - before.cloud;
                tally.edge[d] += after.edge - before.edge;
                relay_rates.push(t.mib_per_sec());
                agents.check_running()?;
                progress(&format!(
                    "  {streams} stream(s) {} run {rep}/{}: direct {:.0} MiB/s, relay {:.0} MiB/s",
                    direction.label(),
                    plan.bulk_repeats,
                    direct_rates[rep - 1],
                    relay_rates[rep - 1]
                ));
            }
            let (direct_mib_s, relay_mib_s) = (Spread::of(direct_rates), Spread::of(relay_rates));
            let ratio = relay_mib_s.median / direct_mib_s.median;
            rows.push(Throughput { direction, streams, direct_mib_s, relay_mib_s, ratio });
        }
    }
    let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
    let (up, down) = (gib(tally.bytes[0]), gib(tally.bytes[1]));
    let cpu = Cpu {
        gib_up: up,
        gib_down: down,
        cloud: AgentCpu::new(tally.cloud[0], tally.cloud[1], up, down),
        edge: AgentCpu::new(tally.edge[0], tally.edge[1], up, down),
    };
    Ok((rows, cpu))
}
