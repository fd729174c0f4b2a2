//! Once a second: sample throughput and round trips, and publish a
//! snapshot for the control API.

use std::sync::Arc;
use std::time::Duration;

use api::{MappingSeries, Snapshot};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::clock;
use crate::edges::EdgeRegistry;
use crate::mappings::Mappings;
use crate::metrics::WINDOW_SECS;

pub(crate) async fn run(
    mappings: Arc<Mappings>,
    edges: Arc<EdgeRegistry>,
    snapshots: watch::Sender<Arc<Snapshot>>,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = clock::now_secs();
        for entry in mappings.entries() {
            entry.metrics.samples().sample(&entry.metrics.counters, now);
        }
        edges.sample(now);
        snapshots.send_replace(Arc::new(snapshot(&mappings, &edges, now)));
    }
}

/// Everything the console draws, as of `now`.
pub(crate) fn snapshot(mappings: &Mappings, edges: &EdgeRegistry, now: u64) -> Snapshot {
    let entries = mappings.entries();
    let series = entries
        .iter()
        .map(|e| {
            let s = e.metrics.samples();
            MappingSeries {
                name: e.spec.name.clone(),
                throughput_in: s.throughput_in.iter().copied().collect(),
                throughput_out: s.throughput_out.iter().copied().collect(),
                throughput: s.throughput.distribution(now),
                connect_latency_us: s.connect_latency_us.distribution(now),
            }
        })
        .collect();
    Snapshot {
        at_unix_ms: clock::unix_ms(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        edges: edges.views(now, clock::unix_ms()),
        mappings: mappings.views(),
        series,
        window_secs: WINDOW_SECS,
        nodes: mappings.cluster.get().map(|c| c.nodes()).unwrap_or_default(),
        ..Snapshot::default()
    }
}
