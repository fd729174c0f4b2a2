//! Phase 3: bulk throughput in both directions, 1 and N streams, direct
//! and relayed runs alternating. Around every run the CPU time of each
//! process on the path is read: the bench's client, the targets process,
//! and for relayed runs both agents.

use std::time::Duration;

use anyhow::Result;

use super::{per_agent, progress};
use crate::agents::Agents;
use crate::measure::bulk::{self, Direction};
use crate::plan::Plan;
use crate::procs::{self, Proc};
use crate::report::{AgentCpu, Cpu, PerAgent, RateLimited, Throughput};
use crate::stats::Spread;
use crate::targets::{Addrs, Targets};

/// Pause between runs, so the previous run's connections are gone.
const BETWEEN_RUNS: Duration = Duration::from_millis(300);
const GIB: f64 = (1u64 << 30) as f64;
const MIB: f64 = (1u64 << 20) as f64;

pub(super) async fn run(
    plan: &Plan,
    agents: &mut Agents,
    targets: &Targets,
) -> Result<(Vec<Throughput>, Cpu)> {
    let mut rows = Vec::new();
    for direction in [Direction::Up, Direction::Down] {
        for streams in [1, plan.parallel_streams] {
            rows.push(figure(plan, agents, targets, direction, streams).await?);
        }
    }
    let sum = |dir: Direction, f: &dyn Fn(&Throughput) -> f64| -> f64 {
        rows.iter().filter(|r| r.direction == dir).map(f).sum()
    };
    let gib = |r: &Throughput| r.relay_bytes as f64 / GIB;
    let (up, down) = (sum(Direction::Up, &gib), sum(Direction::Down, &gib));
    let agent = |cpu: &dyn Fn(&Throughput) -> f64| {
        AgentCpu::new(sum(Direction::Up, cpu), sum(Direction::Down, cpu), up, down)
    };
    let cpu = Cpu {
        gib_up: up,
        gib_down: down,
        cloud: agent(&|r| r.relay_cpu_secs.cloud),
        edge: agent(&|r| r.relay_cpu_secs.edge),
    };
    Ok((rows, cpu))
}

/// Bulk through the limited mappings, 1 and 2 streams each way: the limit
/// is for the mapping, so two connections should each get about half.
pub(super) async fn rate_limited(plan: &Plan, agents: &Agents) -> Result<Vec<RateLimited>> {
    let duration = Duration::from_secs_f64(plan.bulk_secs);
    let limit = crate::agents::RATE_LIMIT as f64 / MIB;
    let mut rows = Vec::new();
    for direction in [Direction::Up, Direction::Down] {
        let addr = if direction == Direction::Up { agents.limited.0 } else { agents.limited.1 };
        for streams in [1, 2] {
            progress(&format!("  rate limited {}, {streams} streams", direction.label()));
            let each = bulk::run_each(addr, direction, streams, duration).await?;
            tokio::time::sleep(BETWEEN_RUNS).await;
            let secs = each.total.secs.max(1e-9);
            let total = each.total.mib_per_sec();
            rows.push(RateLimited {
                direction,
                streams,
                limit_mib_s: limit,
                total_mib_s: total,
                per_stream_mib_s: each.per_stream.iter().map(|b| *b as f64 / MIB / secs).collect(),
                ratio: total / limit,
            });
        }
    }
    Ok(rows)
}

/// CPU seconds so far of the client (this process) and the targets.
fn endpoints_cpu(targets: &Targets) -> Result<f64> {
    Ok(procs::cpu_seconds(std::process::id())? + targets.proc.cpu_seconds()?)
}

/// One throughput figure.
async fn figure(
    plan: &Plan,
    agents: &mut Agents,
    targets: &Targets,
    direction: Direction,
    streams: usize,
) -> Result<Throughput> {
    let duration = Duration::from_secs_f64(plan.bulk_secs);
    let pick = |a: &Addrs| if direction == Direction::Up { a.sink } else { a.source };
    let (mut direct_rates, mut relay_rates) = (Vec::new(), Vec::new());
    let (mut direct_bytes, mut direct_path_cpu, mut direct_secs) = (0, 0.0, 0.0);
    let (mut relay_bytes, mut relay_path_cpu, mut relay_secs) = (0, 0.0, 0.0);
    let mut relay_cpu_secs = PerAgent { cloud: 0.0, edge: 0.0 };
    for rep in 1..=plan.bulk_repeats {
        let before = endpoints_cpu(targets)?;
        let t = bulk::run(pick(&targets.addrs), direction, streams, duration).await?;
        // Teardown of the run's connections counts too.
        tokio::time::sleep(BETWEEN_RUNS).await;
        direct_path_cpu += endpoints_cpu(targets)? - before;
        direct_bytes += t.bytes;
        direct_secs += t.secs;
        direct_rates.push(t.mib_per_sec());

        let before = (endpoints_cpu(targets)?, per_agent(agents, Proc::cpu_seconds)?);
        let t = bulk::run(pick(&agents.mapped), direction, streams, duration).await?;
        tokio::time::sleep(BETWEEN_RUNS).await;
        let after = (endpoints_cpu(targets)?, per_agent(agents, Proc::cpu_seconds)?);
        let (cloud, edge) = (after.1.cloud - before.1.cloud, after.1.edge - before.1.edge);
        relay_cpu_secs.cloud += cloud;
        relay_cpu_secs.edge += edge;
        relay_path_cpu += after.0 - before.0 + cloud + edge;
        relay_bytes += t.bytes;
        relay_secs += t.secs;
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
    Ok(Throughput {
        direction,
        streams,
        ratio: relay_mib_s.median / direct_mib_s.median,
        direct_mib_s,
        relay_mib_s,
        relay_bytes,
        relay_cpu_secs,
        direct_path_cpu_per_gib: direct_path_cpu / (direct_bytes as f64 / GIB),
        relay_path_cpu_per_gib: relay_path_cpu / (relay_bytes as f64 / GIB),
        direct_path_cores: direct_path_cpu / direct_secs,
        relay_path_cores: relay_path_cpu / relay_secs,
    })
}
