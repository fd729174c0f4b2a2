//! Phase 1: resident memory of the agents idle, with idle connections,
//! and after closing them; then whether a burst of connections is served.

use std::time::Duration;

use anyhow::Result;

use super::{per_agent, progress};
use crate::agents::Agents;
use crate::measure::idle;
use crate::plan::Plan;
use crate::procs::Proc;
use crate::report::{Connections, Memory, PerAgent};

/// Bound on opening one batch of idle connections.
const OPEN_DEADLINE: Duration = Duration::from_secs(180);
/// Bound on checking that held connections still answer.
const VERIFY_DEADLINE: Duration = Duration::from_secs(60);
/// Connections opened at once in the burst test.
const BURST: usize = 64;

async fn rss_settled(plan: &Plan, agents: &Agents) -> Result<PerAgent<u64>> {
    tokio::time::sleep(Duration::from_millis(plan.settle_ms)).await;
    per_agent(agents, Proc::rss_kib)
}

pub(super) async fn run(plan: &Plan, agents: &mut Agents) -> Result<(Memory, Connections)> {
    let mut memory = Memory { idle_kib: rss_settled(plan, agents).await?, ..Memory::default() };
    let addr = agents.mapped.echo;
    let n = plan.idle_large;

    // One at a time, so the memory figures do not depend on timing.
    let mut held = Vec::with_capacity(n);
    let mut sequential = idle::open(addr, plan.idle_small, 1, &mut held, OPEN_DEADLINE).await;
    memory.small_kib = rss_settled(plan, agents).await?;
    let more = n.saturating_sub(plan.idle_small);
    sequential.add(idle::open(addr, more, 1, &mut held, OPEN_DEADLINE).await);
    memory.large_kib = rss_settled(plan, agents).await?;
    let sequential_alive = idle::verify(&mut held, VERIFY_DEADLINE).await;
    progress(&format!(
        "  {n} connections one at a time: {} served, {} refused, {} timed out; {sequential_alive} still open",
        sequential.served, sequential.refused, sequential.timed_out
    ));
    drop(held);
    memory.after_close_kib = rss_settled(plan, agents).await?;
    // Per connection actually open (all of them when every one was served).
    let open = sequential_alive.max(1) as f64;
    let per = |large: u64, idle: u64| (large as f64 - idle as f64) / open;
    memory.per_connection_kib = PerAgent {
        cloud: per(memory.large_kib.cloud, memory.idle_kib.cloud),
        edge: per(memory.large_kib.edge, memory.idle_kib.edge),
    };

    // The same number arriving BURST at a time, as after an outage.
    let mut held = Vec::with_capacity(n);
    let burst = idle::open(addr, n, BURST, &mut held, OPEN_DEADLINE).await;
    let burst_alive = idle::verify(&mut held, VERIFY_DEADLINE).await;
    progress(&format!(
        "  {n} connections {BURST} at a time: {} served, {} refused, {} timed out; {burst_alive} still open",
        burst.served, burst.refused, burst.timed_out
    ));
    drop(held);
    agents.check_running()?;
    let connections = Connections {
        attempted: n,
        sequential,
        sequential_alive,
        burst,
        burst_alive,
        burst_concurrency: BURST,
    };
    Ok((memory, connections))
}
