//! Phase 2: round trips of 1 byte and 1 KiB, and new connections, direct
//! and through the relay, taking turns; and the agents' CPU time per
//! relayed round trip and per relayed connection (warm-up included; the
//! agents do nothing else meanwhile).

use anyhow::Result;

use super::{per_agent, progress};
use crate::agents::Agents;
use crate::measure::{connect, rtt};
use crate::plan::Plan;
use crate::procs::Proc;
use crate::report::{Compared, PerAgent, RoundTrip};
use crate::stats::{Latency, Spread};
use crate::targets::Addrs;

/// Agent CPU microseconds per operation while `op` runs `ops` of them.
async fn cpu_per_op<T>(
    agents: &Agents,
    ops: usize,
    op: impl Future<Output = Result<T>>,
) -> Result<(T, PerAgent<f64>)> {
    let before = per_agent(agents, Proc::cpu_seconds)?;
    let out = op.await?;
    let after = per_agent(agents, Proc::cpu_seconds)?;
    let us = |a: f64, b: f64| (b - a) * 1e6 / ops.max(1) as f64;
    Ok((out, PerAgent { cloud: us(before.cloud, after.cloud), edge: us(before.edge, after.edge) }))
}

pub(super) async fn run(
    plan: &Plan,
    agents: &Agents,
    direct: &Addrs,
) -> Result<(Vec<RoundTrip>, Compared, PerAgent<f64>)> {
    let pair = [direct.echo, agents.mapped.echo];
    let mut round_trip = Vec::new();
    for size in [1, 1024] {
        let reps = plan.round_trip_connections;
        let relayed = plan.round_trips + rtt::WARMUP * reps;
        let measure = rtt::measure(pair, size, plan.round_trips, reps);
        let ([(d, d_p50s), (r, r_p50s)], agent_cpu_us) =
            cpu_per_op(agents, relayed, measure).await?;
        let (d, r) = (Latency::of(&d), Latency::of(&r));
        let us = |p50s: Vec<u64>| Spread::of(p50s.into_iter().map(|ns| ns as f64 / 1e3).collect());
        let (direct_p50s, relay_p50s) = (us(d_p50s), us(r_p50s));
        progress(&format!(
            "  round trip {size} B: p50 direct {:.1} µs, relay {:.1} µs (per connection {:.0?} µs)",
            d.p50_us, r.p50_us, relay_p50s.samples
        ));
        round_trip.push(RoundTrip {
            message_bytes: size,
            latency: Compared::new(d, r),
            direct_p50_per_connection_us: direct_p50s,
            relay_p50_per_connection_us: relay_p50s,
            agent_cpu_us_per_round_trip: agent_cpu_us,
        });
    }
    let relayed = plan.new_connections + connect::WARMUP;
    let measure = connect::measure(pair, plan.new_connections);
    let ([d, r], connection_cpu_us) = cpu_per_op(agents, relayed, measure).await?;
    let (d, r) = (Latency::of(&d), Latency::of(&r));
    progress(&format!("  new connection: p50 direct {:.1} µs, relay {:.1} µs", d.p50_us, r.p50_us));
    Ok((round_trip, Compared::new(d, r), connection_cpu_us))
}
