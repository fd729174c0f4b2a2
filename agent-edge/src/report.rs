//! Every few seconds, tell the cloud how this edge and its host are doing,
//! and in a cluster its tunnels to each node (`NodeLinks`).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use proto::EdgeReport;
use sysinfo::{MemoryRefreshKind, RefreshKind, System};

use crate::edge::EdgeShared;

/// How often reports go out. CPU use is averaged over this interval.
const REPORT_INTERVAL: Duration = Duration::from_secs(2);

pub(crate) async fn run(shared: Arc<EdgeShared>) {
    let mut system = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(sysinfo::CpuRefreshKind::nothing().with_cpu_usage())
            .with_memory(MemoryRefreshKind::nothing().with_ram()),
    );
    let mut tick = tokio::time::interval(REPORT_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shared.stop_tunnels.cancelled() => return,
            _ = tick.tick() => {}
            () = shared.tunnel_up.notified() => {}
        }
        system.refresh_cpu_usage();
        system.refresh_memory();
        let report = EdgeReport {
            tunnels_configured: u16::try_from(shared.config.tunnels).unwrap_or(u16::MAX),
            cpu_permille: (system.global_cpu_usage().clamp(0.0, 100.0) * 10.0) as u16,
            memory_used: system.used_memory(),
            memory_total: system.total_memory(),
            connects_ok: shared.connects_ok.load(Ordering::Relaxed),
            connects_failed: shared.connects_failed.load(Ordering::Relaxed),
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        };
        // In a cluster every node learns which nodes this edge reaches.
        let links: Vec<proto::NodeLink> =
            shared.lock_node_pools().values().map(|pool| pool.link()).collect();
        for tunnel in shared.handles.live() {
            tunnel.send_report(report.clone());
            if !links.is_empty() {
                tunnel.send_node_links(links.clone());
            }
        }
    }
}
