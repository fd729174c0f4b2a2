//! `/metrics` in the Prometheus text exposition format.
//!
//! Latencies are histograms with fixed buckets ([`LATENCY_BUCKETS_US`]) and
//! counts since the agent started, so the nodes of a cluster add up:
//! `histogram_quantile(0.99, sum by (le) (rate(..._bucket[5m])))`.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use api::{EdgeHealth, MappingState, Snapshot};

use crate::edges::EdgeRegistry;
use crate::events::{EventLog, Webhook};
use crate::mappings::Mappings;
use crate::metrics::{HistogramCounts, LATENCY_BUCKETS_US};

/// Name, type, help, and how to read the value from a mapping.
type MappingFamily = (&'static str, &'static str, &'static str, fn(&api::MappingView) -> u64);

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The samples of histogram `name` for one series labelled
/// `label="value"`: cumulative `_bucket`s up to `+Inf`, `_sum`, `_count`.
fn histogram(out: &mut String, name: &str, label: &str, value: &str, h: &HistogramCounts) {
    for (bound, count) in LATENCY_BUCKETS_US.iter().zip(h.at_or_below) {
        let le = *bound as f64 / 1e6;
        let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"{le}\"}} {count}");
    }
    let _ = writeln!(out, "{name}_bucket{{{label}=\"{value}\",le=\"+Inf\"}} {}", h.count);
    let _ = writeln!(out, "{name}_sum{{{label}=\"{value}\"}} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(out, "{name}_count{{{label}=\"{value}\"}} {}", h.count);
}

/// How often each mapping's traffic policy bit (mappings with one only).
fn render_policy_hits(out: &mut String, s: &Snapshot) {
    let refused = "relay_mapping_policy_refused_total";
    family(out, refused, "counter", "Clients refused by a cap per client (limit: the key).");
    for m in &s.mappings {
        let Some(h) = &m.policy_hits else { continue };
        for (limit, n) in [
            ("max_connections_per_client", h.refused_concurrent),
            ("new_connections_per_client", h.refused_rate),
        ] {
            let _ = writeln!(out, "{refused}{{mapping=\"{}\",limit=\"{limit}\"}} {n}", m.spec.name);
        }
    }
    let throttled = "relay_mapping_throttled_total";
    family(out, throttled, "counter", "Times a connection waited for the mapping's byte rate.");
    for m in &s.mappings {
        let Some(h) = &m.policy_hits else { continue };
        for (direction, n) in [("in", h.throttled_in), ("out", h.throttled_out)] {
            let _ = writeln!(
                out,
                "{throttled}{{mapping=\"{}\",direction=\"{direction}\"}} {n}",
                m.spec.name
            );
        }
    }
}

/// Connections on the listen addresses mappings share by host, by what
/// became of them. Labelled by the address, not the host: a host is one
/// mapping, already a series of its own, and an unmatched name is the
/// client's choice (unbounded).
fn render_shared_ports(out: &mut String, mappings: &Mappings) {
    let name = "relay_shared_port_connections_total";
    family(
        out,
        name,
        "counter",
        "Connections on a shared listen address: routed to a mapping by name, or not (unknown_tls \
         alerted, unknown_http answered 421, unrecognized closed, timed_out, too_large, overloaded).",
    );
    for port in mappings.shared_ports() {
        let c = &port.counters;
        for (outcome, counter) in [
            ("routed", &c.routed),
            ("unknown_tls", &c.unknown_tls),
            ("unknown_http", &c.unknown_http),
            ("unrecognized", &c.unrecognized),
            ("timed_out", &c.timed_out),
            ("too_large", &c.too_large),
            ("overloaded", &c.overloaded),
        ] {
            let n = counter.load(Ordering::Relaxed);
            let _ = writeln!(out, "{name}{{listen=\"{}\",outcome=\"{outcome}\"}} {n}", port.bound);
        }
    }
}

/// Renders a snapshot, and the latency histograms of `mappings` and
/// `edges`. Mapping names and edge ids are limited to `[A-Za-z0-9._-]`, so
/// label values need no escaping.
pub(super) fn render(
    s: &Snapshot,
    mappings: &Mappings,
    edges: &EdgeRegistry,
    events: &EventLog,
) -> String {
    let mut out = String::new();
    render_events(&mut out, events);
    family(&mut out, "relay_mapping_up", "gauge", "1 if the mapping is listening and serving.");
    for m in &s.mappings {
        let up = u8::from(m.state == MappingState::Active);
        let _ = writeln!(out, "relay_mapping_up{{mapping=\"{}\"}} {up}", m.spec.name);
    }
    render_probes(&mut out, s);
    render_shared_ports(&mut out, mappings);
    render_policy_hits(&mut out, s);
    let counters: [MappingFamily; 5] = [
        ("relay_mapping_connections_active", "gauge", "Client connections open now.", |m| {
            m.active_connections
        }),
        ("relay_mapping_connections_total", "counter", "Client connections accepted.", |m| {
            m.total_connections
        }),
        (
            "relay_mapping_connections_failed_total",
            "counter",
            "Client connections that could not be carried to the destination.",
            |m| m.failed_connections,
        ),
        ("relay_mapping_bytes_in_total", "counter", "Bytes from clients to the service.", |m| {
            m.bytes_in
        }),
        ("relay_mapping_bytes_out_total", "counter", "Bytes from the service to clients.", |m| {
            m.bytes_out
        }),
    ];
    for (name, kind, help, get) in counters {
        family(&mut out, name, kind, help);
        for m in &s.mappings {
            let _ = writeln!(out, "{name}{{mapping=\"{}\"}} {}", m.spec.name, get(m));
        }
    }
    family(
        &mut out,
        "relay_mapping_connect_latency_seconds",
        "histogram",
        "Time to open a stream to the destination, since the agent started.",
    );
    for entry in mappings.entries() {
        let h = entry.metrics.connect_latency.read();
        histogram(
            &mut out,
            "relay_mapping_connect_latency_seconds",
            "mapping",
            &entry.spec.name,
            &h,
        );
    }
    family(&mut out, "relay_edge_up", "gauge", "1 if the edge has all its tunnels up.");
    for e in &s.edges {
        let up = u8::from(e.health == EdgeHealth::Connected);
        let _ = writeln!(out, "relay_edge_up{{edge=\"{}\"}} {up}", e.id);
    }
    family(&mut out, "relay_edge_tunnels", "gauge", "Tunnels of the edge that are up.");
    for e in &s.edges {
        let _ = writeln!(out, "relay_edge_tunnels{{edge=\"{}\"}} {}", e.id, e.tunnels_up);
    }
    family(
        &mut out,
        "relay_edge_window_budget_used_bytes",
        "gauge",
        "Bytes the receive windows of the edge's streams have grown by (window_budget per tunnel).",
    );
    for e in &s.edges {
        let used: u64 = e.tunnels.iter().map(|t| t.window_budget_used_bytes).sum();
        let _ = writeln!(out, "relay_edge_window_budget_used_bytes{{edge=\"{}\"}} {used}", e.id);
    }
    family(
        &mut out,
        "relay_edge_rtt_seconds",
        "histogram",
        "Tunnel round-trip times, one per tunnel per second, since the agent started.",
    );
    for (id, h) in edges.rtt_histograms() {
        histogram(&mut out, "relay_edge_rtt_seconds", "edge", &id, &h);
    }
    family(
        &mut out,
        "relay_edge_connect_failures_total",
        "counter",
        "Destination connects that failed at the edge.",
    );
    for e in &s.edges {
        let _ = writeln!(
            out,
            "relay_edge_connect_failures_total{{edge=\"{}\"}} {}",
            e.id, e.connect_failures
        );
    }
    out
}

/// The event log's figures. Webhooks are labelled by their index in
/// `[events] webhooks`, not their URL: a URL may carry a credential (a
/// user, a token in its query), and `/metrics` is often scraped into
/// places the admin token never reaches.
fn render_events(out: &mut String, events: &EventLog) {
    family(out, "relay_events_total", "counter", "Events recorded since start, by kind.");
    for (kind, n) in events.recorded() {
        let _ = writeln!(out, "relay_events_total{{kind=\"{kind}\"}} {n}");
    }
    family(
        out,
        "relay_events_dropped_total",
        "counter",
        "Events not recorded because the event writer was behind.",
    );
    let _ = writeln!(out, "relay_events_dropped_total {}", events.dropped());
    let hooks = events.webhooks();
    if hooks.is_empty() {
        return;
    }
    type HookFamily = (&'static str, &'static str, &'static str, fn(&Webhook) -> u64);
    let families: [HookFamily; 4] = [
        (
            "relay_events_webhook_delivered_total",
            "counter",
            "Events a webhook receiver accepted.",
            |h| h.delivered.load(Ordering::Relaxed),
        ),
        (
            "relay_events_webhook_dropped_total",
            "counter",
            "Events dropped from a full webhook queue (the oldest first).",
            |h| h.dropped.load(Ordering::Relaxed),
        ),
        (
            "relay_events_webhook_failed_total",
            "counter",
            "Events given up after every retry failed.",
            |h| h.failed.load(Ordering::Relaxed),
        ),
        ("relay_events_webhook_queued", "gauge", "Events waiting for a webhook receiver.", |h| {
            h.queued() as u64
        }),
    ];
    for (name, kind, help, get) in families {
        family(out, name, kind, help);
        for (i, hook) in hooks.iter().enumerate() {
            let _ = writeln!(out, "{name}{{webhook=\"{i}\"}} {}", get(hook));
        }
    }
}

/// `relay_probe_up` and `relay_probe_connect_seconds`, for the mappings
/// with a probe that has run.
fn render_probes(out: &mut String, s: &Snapshot) {
    let probed: Vec<(&str, &api::ProbeView)> = s
        .mappings
        .iter()
        .filter_map(|m| m.probe.as_ref().map(|p| (m.spec.name.as_str(), p)))
        .filter(|(_, p)| p.status != api::ProbeStatus::Pending)
        .collect();
    family(
        out,
        "relay_probe_up",
        "gauge",
        "1 if the latest end-to-end probe reached the target through its edge (ok or slow).",
    );
    for (name, p) in &probed {
        let up = u8::from(matches!(p.status, api::ProbeStatus::Ok | api::ProbeStatus::Slow));
        let _ = writeln!(out, "relay_probe_up{{mapping=\"{name}\"}} {up}");
    }
    family(
        out,
        "relay_probe_connect_seconds",
        "gauge",
        "The edge's connect time to the target in the latest probe that got an answer.",
    );
    for (name, p) in &probed {
        if let Some(us) = p.connect_us {
            let _ = writeln!(
                out,
                "relay_probe_connect_seconds{{mapping=\"{name}\"}} {}",
                us as f64 / 1e6
            );
        }
    }
}
