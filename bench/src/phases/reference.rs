//! Phase 4: the reference. Two plain TCP proxies in a chain (two more
//! user-space hops, like the cloud and the edge, but no framing, no
//! multiplexing and no flow control), measured the same way and taking
//! turns with the direct path: what any two-hop relay costs on this
//! machine, so the relay's own overhead can be told apart from the cost of
//! the hops themselves.

use std::time::Duration;

use anyhow::Result;

use super::progress;
use crate::measure::bulk::{self, Direction};
use crate::measure::{connect, rtt};
use crate::plan::Plan;
use crate::report::{Compared, Reference, ReferenceThroughput};
use crate::stats::{Latency, Spread};
use crate::targets::{Addrs, Targets};

pub(super) async fn run(plan: &Plan, bench: &std::path::Path, direct: &Addrs) -> Result<Reference> {
    let first = Targets::start_proxy(bench, direct).await?;
    let second = Targets::start_proxy(bench, &first.addrs).await?;
    let chain = second.addrs;
    let pair = [direct.echo, chain.echo];

    let reps = plan.round_trip_connections;
    let [(d, _), (c, _)] = rtt::measure(pair, 1, plan.round_trips, reps).await?;
    let round_trip_1b = Compared::new(Latency::of(&d), Latency::of(&c));
    let [d, c] = connect::measure(pair, plan.new_connections).await?;
    let new_connection = Compared::new(Latency::of(&d), Latency::of(&c));
    progress(&format!(
        "  round trip 1 B p50: direct {:.1} µs, two proxies {:.1} µs; new connection p50: {:.1} / {:.1} µs",
        round_trip_1b.direct.p50_us,
        round_trip_1b.relay.p50_us,
        new_connection.direct.p50_us,
        new_connection.relay.p50_us
    ));

    let duration = Duration::from_secs_f64(plan.bulk_secs);
    let mut throughput = Vec::new();
    for streams in [1, plan.parallel_streams] {
        for direction in [Direction::Up, Direction::Down] {
            let pick = |a: &Addrs| if direction == Direction::Up { a.sink } else { a.source };
            let (mut direct_rates, mut chain_rates) = (Vec::new(), Vec::new());
            for _ in 0..plan.bulk_repeats {
                let d = bulk::run(pick(direct), direction, streams, duration).await?;
                direct_rates.push(d.mib_per_sec());
                tokio::time::sleep(Duration::from_millis(300)).await;
                let c = bulk::run(pick(&chain), direction, streams, duration).await?;
                chain_rates.push(c.mib_per_sec());
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let (direct_mib_s, chain_mib_s) = (Spread::of(direct_rates), Spread::of(chain_rates));
            progress(&format!(
                "  {streams} stream(s) {}: direct {:.0} MiB/s, two proxies {:.0} MiB/s",
                direction.label(),
                direct_mib_s.median,
                chain_mib_s.median
            ));
            throughput.push(ReferenceThroughput {
                streams,
                direction,
                ratio: chain_mib_s.median / direct_mib_s.median,
                direct_mib_s,
                chain_mib_s,
            });
        }
    }
    second.proc.stop().await;
    first.proc.stop().await;
    Ok(Reference { round_trip_1b, new_connection, throughput })
}
