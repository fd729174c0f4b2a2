//! One bench run: the target services, then three phases, each on freshly
//! started agents so that one phase's memory does not show in the next:
//!
//! 1. [`memory`]: memory idle, with the small and the large number of idle
//!    connections, after closing them; then a burst of as many connections;
//! 2. [`latency`]: round trips and new connections, direct and relayed;
//! 3. [`bulk`]: bulk throughput, direct and relayed runs alternating, with
//!    the CPU time of every process on the path around each run and the
//!    agents' VmHWM at the end.

mod bulk;
mod latency;
mod memory;
mod reference;

use anyhow::{Result, ensure};
use tokio::time::Instant;

use crate::agents::{Agents, Setup};
use crate::bins::Bins;
use crate::load::CpuAccount;
use crate::machine::Machine;
use crate::plan::Plan;
use crate::procs::Proc;
use crate::report::{self, PerAgent, Report};
use crate::targets::Targets;

/// The cloud's per-tunnel stream limit: above the idle connections even
/// if one tunnel carries them all.
const MAX_STREAMS: u32 = 20_000;

pub(crate) async fn run(plan: Plan, setup: Setup, bins: &Bins) -> Result<Report> {
    let started = Instant::now();
    let account = CpuAccount::start();
    let bin_dir = bins.cloud.parent().map(|d| d.display().to_string()).unwrap_or_default();
    let machine = Machine::probe(bin_dir);
    let mut targets = Targets::start(&bins.bench).await?;
    let direct = targets.addrs;
    let mut warnings = Vec::new();

    progress(&format!("phase 1/4: memory, {} idle connections", plan.idle_large));
    let mut agents = start_agents(bins, &targets, &setup).await?;
    let (mut memory, connections) = memory::run(&plan, &mut agents).await?;
    warnings.extend(agents.warnings());
    agents.stop().await;

    progress("phase 2/4: round trips and new connections");
    let mut agents = start_agents(bins, &targets, &setup).await?;
    let (round_trip, new_connection, connection_cpu_us) =
        latency::run(&plan, &agents, &direct).await?;
    agents.check_running()?;
    warnings.extend(agents.warnings());
    agents.stop().await;

    progress("phase 3/4: bulk throughput");
    let mut agents = start_agents(bins, &targets, &setup).await?;
    let (throughput, cpu) = bulk::run(&plan, &mut agents, &targets).await?;
    memory.bulk_peak_kib = per_agent(&agents, Proc::hwm_kib)?;
    let rate_limited = bulk::rate_limited(&plan, &agents).await?;
    agents.check_running()?;
    warnings.extend(agents.warnings());
    agents.stop().await;
    progress("phase 4/4: reference, two plain TCP proxies in a chain");
    let reference = reference::run(&plan, &bins.bench, &direct).await?;
    ensure!(targets.proc.is_running(), "the targets process exited:\n{}", targets.proc.tail());
    targets.proc.stop().await;
    let load = account.finish();

    let mut report = Report {
        plan,
        setup,
        machine,
        throughput,
        round_trip,
        new_connection,
        reference,
        agent_cpu_us_per_connection: connection_cpu_us,
        memory,
        connections,
        cpu,
        rate_limited,
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

/// Fresh agents; their process ids are printed for attaching a profiler.
async fn start_agents(bins: &Bins, targets: &Targets, setup: &Setup) -> Result<Agents> {
    let agents = Agents::start(bins, &targets.addrs, MAX_STREAMS, setup).await?;
    let [cloud, edge] = agents.both();
    progress(&format!("  relay-cloud pid {}, relay-edge pid {}", cloud.pid(), edge.pid()));
    Ok(agents)
}

fn per_agent<T>(agents: &Agents, read: impl Fn(&Proc) -> Result<T>) -> Result<PerAgent<T>> {
    let [cloud, edge] = agents.both();
    Ok(PerAgent { cloud: read(cloud)?, edge: read(edge)? })
}
