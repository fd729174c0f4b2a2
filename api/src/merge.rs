//! The cluster's figures: one node's snapshot with its peers' figures
//! summed in (`GET /v1/snapshot?scope=cluster`). Pure: the node that
//! answers fetches its peers' snapshots and hands them here.
//!
//! Mappings are matched by name and edges by id; a mapping or an edge only
//! a peer knows is included as that peer reports it. What is not a figure
//! (a mapping's spec and state, its per-node `nodes`, the snapshot's
//! `nodes`, time and version) is the answering node's.

use std::collections::BTreeMap;

use crate::{
    Bucket, Distribution, EdgeHealth, EdgeView, MappingSeries, MappingView, PeerAnswer, Snapshot,
};

/// `local` with the figures of every peer that answered summed in, and
/// [`Snapshot::peers`] saying which answered and why the others did not.
///
/// Per mapping: connections (active, total, failed), bytes and throughput
/// are summed; the per-second series are summed element-wise, aligned at
/// the newest sample (the nodes sample about once a second each, not in
/// step: a sum may straddle up to a second); distributions are merged with
/// [`sum_distributions`]. Per edge: tunnels up and configured and connect
/// failures are summed, the tunnels listed one after the other (a
/// [`crate::TunnelView`] does not say which node holds it), round-trip
/// percentiles are the worst node's, host figures and version the first
/// node's that has them, draining if any node says so, and the health is
/// `connected` when it is on every node that knows the edge, `down` when
/// it is down on all, else `reconnecting`.
pub fn cluster_snapshot(
    mut local: Snapshot,
    peers: Vec<(String, Result<Snapshot, String>)>,
) -> Snapshot {
    let mut answers = Vec::with_capacity(peers.len());
    let mut others = Vec::new();
    for (node, result) in peers {
        match result {
            Ok(snapshot) => {
                answers.push(PeerAnswer { node, answered: true, error: None });
                others.push(snapshot);
            }
            Err(error) => answers.push(PeerAnswer { node, answered: false, error: Some(error) }),
        }
    }
    local.peers = answers;
    if others.is_empty() {
        return local;
    }
    local.mappings = merge_by(
        std::mem::take(&mut local.mappings),
        others.iter_mut().map(|s| std::mem::take(&mut s.mappings)),
        |m| m.spec.name.clone(),
        add_mapping,
    );
    local.series = merge_series(
        std::mem::take(&mut local.series),
        others.iter_mut().map(|s| std::mem::take(&mut s.series)),
    );
    let edges_per_node: Vec<Vec<EdgeView>> = std::iter::once(std::mem::take(&mut local.edges))
        .chain(others.iter_mut().map(|s| std::mem::take(&mut s.edges)))
        .collect();
    local.edges = merge_edges(edges_per_node);
    local
}

/// Groups `first` and `rest` by `key` (first-seen value kept, the others
/// folded into it with `add`), sorted by key.
fn merge_by<T>(
    first: Vec<T>,
    rest: impl Iterator<Item = Vec<T>>,
    key: impl Fn(&T) -> String,
    add: impl Fn(&mut T, T),
) -> Vec<T> {
    let mut by_key: BTreeMap<String, T> = BTreeMap::new();
    for item in first.into_iter().chain(rest.flatten()) {
        match by_key.entry(key(&item)) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(item);
            }
            std::collections::btree_map::Entry::Occupied(mut slot) => add(slot.get_mut(), item),
        }
    }
    by_key.into_values().collect()
}

fn add_mapping(into: &mut MappingView, other: MappingView) {
    into.active_connections = into.active_connections.saturating_add(other.active_connections);
    into.total_connections = into.total_connections.saturating_add(other.total_connections);
    into.failed_connections = into.failed_connections.saturating_add(other.failed_connections);
    into.bytes_in = into.bytes_in.saturating_add(other.bytes_in);
    into.bytes_out = into.bytes_out.saturating_add(other.bytes_out);
    into.throughput_in_bps = into.throughput_in_bps.saturating_add(other.throughput_in_bps);
    into.throughput_out_bps = into.throughput_out_bps.saturating_add(other.throughput_out_bps);
    if let Some(theirs) = other.policy_hits {
        let ours = into.policy_hits.get_or_insert_default();
        ours.refused_concurrent = ours.refused_concurrent.saturating_add(theirs.refused_concurrent);
        ours.refused_rate = ours.refused_rate.saturating_add(theirs.refused_rate);
        ours.throttled_in = ours.throttled_in.saturating_add(theirs.throttled_in);
        ours.throttled_out = ours.throttled_out.saturating_add(theirs.throttled_out);
    }
}

fn merge_series(
    first: Vec<MappingSeries>,
    rest: impl Iterator<Item = Vec<MappingSeries>>,
) -> Vec<MappingSeries> {
    let mut by_name: BTreeMap<String, Vec<MappingSeries>> = BTreeMap::new();
    for s in first.into_iter().chain(rest.flatten()) {
        by_name.entry(s.name.clone()).or_default().push(s);
    }
    by_name
        .into_values()
        .map(|mut group| {
            if group.len() == 1 {
                // One node's figures: its exact percentiles stay.
                return group.pop().unwrap_or_default();
            }
            let name = group[0].name.clone();
            let ins: Vec<&[u64]> = group.iter().map(|s| s.throughput_in.as_slice()).collect();
            let outs: Vec<&[u64]> = group.iter().map(|s| s.throughput_out.as_slice()).collect();
            let throughputs: Vec<&Distribution> = group.iter().map(|s| &s.throughput).collect();
            let connects: Vec<&Distribution> =
                group.iter().map(|s| &s.connect_latency_us).collect();
            MappingSeries {
                name,
                throughput_in: sum_aligned_at_end(&ins),
                throughput_out: sum_aligned_at_end(&outs),
                throughput: sum_distributions(&throughputs),
                connect_latency_us: sum_distributions(&connects),
            }
        })
        .collect()
}

/// Series summed element-wise with their newest samples (their ends)
/// aligned; as long as the longest.
fn sum_aligned_at_end(series: &[&[u64]]) -> Vec<u64> {
    let len = series.iter().map(|s| s.len()).max().unwrap_or(0);
    let mut sum = vec![0u64; len];
    for s in series {
        let offset = len - s.len();
        for (slot, v) in sum[offset..].iter_mut().zip(s.iter()) {
            *slot = slot.saturating_add(*v);
        }
    }
    sum
}

/// The distribution of the union of the samples behind `parts`, from
/// their buckets: counts of buckets with the same upper bound `le` are
/// added, and each percentile is the `le` of the bucket that holds its
/// rank, capped at the largest sample (the exact maximum of the parts'
/// maxima).
///
/// An approximation: within a bucket the samples' values are lost, so a
/// percentile is reported as its bucket's upper bound, at most one bucket
/// width (a factor of 2 for the agents' log-2 buckets) above the true
/// value, where one node's own percentiles are exact. The count is the sum
/// of the bucket counts.
pub fn sum_distributions(parts: &[&Distribution]) -> Distribution {
    let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
    for d in parts {
        for b in &d.buckets {
            let slot = buckets.entry(b.le).or_insert(0);
            *slot = slot.saturating_add(b.count);
        }
    }
    let buckets: Vec<Bucket> = buckets
        .into_iter()
        .filter(|(_, count)| *count > 0)
        .map(|(le, count)| Bucket { le, count })
        .collect();
    let count = buckets.iter().fold(0u64, |n, b| n.saturating_add(b.count));
    if count == 0 {
        return Distribution::default();
    }
    let max = parts.iter().map(|d| d.max).max().unwrap_or(0);
    let max = if max == 0 { buckets.last().map_or(0, |b| b.le) } else { max };
    let quantile = |q: f64| {
        // The smallest value with at least q of the samples at or below it.
        let rank = ((q * count as f64).ceil() as u64).clamp(1, count);
        let mut seen = 0u64;
        for b in &buckets {
            seen = seen.saturating_add(b.count);
            if seen >= rank {
                return b.le.min(max);
            }
        }
        max
    };
    Distribution {
        count,
        p50: quantile(0.50),
        p90: quantile(0.90),
        p99: quantile(0.99),
        p999: quantile(0.999),
        max,
        buckets,
    }
}

/// One view per edge id from each node's edges.
fn merge_edges(per_node: Vec<Vec<EdgeView>>) -> Vec<EdgeView> {
    let mut by_id: BTreeMap<String, Vec<EdgeView>> = BTreeMap::new();
    for edges in per_node {
        for e in edges {
            by_id.entry(e.id.clone()).or_default().push(e);
        }
    }
    by_id.into_values().filter_map(merge_edge).collect()
}

fn merge_edge(views: Vec<EdgeView>) -> Option<EdgeView> {
    let healths: Vec<EdgeHealth> = views.iter().map(|e| e.health).collect();
    let mut views = views.into_iter();
    let mut edge = views.next()?;
    for other in views {
        edge.tunnels_up = edge.tunnels_up.saturating_add(other.tunnels_up);
        edge.tunnels_configured = edge.tunnels_configured.saturating_add(other.tunnels_configured);
        edge.tunnels.extend(other.tunnels);
        edge.draining |= other.draining;
        edge.revoked |= other.revoked;
        edge.last_seen_unix_ms = edge.last_seen_unix_ms.max(other.last_seen_unix_ms);
        edge.rtt_p50_us = edge.rtt_p50_us.max(other.rtt_p50_us);
        edge.rtt_p99_us = edge.rtt_p99_us.max(other.rtt_p99_us);
        edge.version = edge.version.or(other.version);
        if edge.cpu_percent.is_none() {
            edge.cpu_percent = other.cpu_percent;
            edge.memory_used_bytes = other.memory_used_bytes;
            edge.memory_total_bytes = other.memory_total_bytes;
        }
        edge.connect_failures = edge.connect_failures.saturating_add(other.connect_failures);
        for link in other.node_links {
            if !edge.node_links.iter().any(|l| l.node == link.node) {
                edge.node_links.push(link);
            }
        }
    }
    edge.node_links.sort_by(|a, b| a.node.cmp(&b.node));
    edge.health = if healths.iter().all(|h| *h == EdgeHealth::Connected) {
        EdgeHealth::Connected
    } else if healths.iter().all(|h| *h == EdgeHealth::Down) {
        EdgeHealth::Down
    } else {
        EdgeHealth::Reconnecting
    };
    Some(edge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        EdgeNodeLink, EdgeSource, MappingSource, MappingSpec, MappingState, NodeView, TunnelView,
    };

    fn mapping(name: &str, active: u64, bytes_in: u64) -> MappingView {
        MappingView {
            probe: None,
            spec: MappingSpec {
                name: name.into(),
                listen: "0.0.0.0:8080".into(),
                edge: "e1".into(),
                target: "10.0.0.5:80".into(),
                ..MappingSpec::default()
            },
            source: MappingSource::Runtime,
            state: MappingState::Active,
            bound: Some("0.0.0.0:8080".into()),
            error: None,
            drain_remaining_ms: None,
            active_connections: active,
            total_connections: active * 10,
            failed_connections: 1,
            bytes_in,
            bytes_out: bytes_in * 2,
            throughput_in_bps: 100,
            throughput_out_bps: 200,
            nodes: Vec::new(),
            edge_revoked: false,
            policy_hits: None,
        }
    }

    fn tunnel(id: u64) -> TunnelView {
        TunnelView {
            id,
            streams: 1,
            rtt_us: Some(400),
            draining: false,
            window_budget_used_bytes: 0,
            window_growth_refused: 0,
            credential: None,
        }
    }

    fn edge(id: &str, health: EdgeHealth, tunnels: &[u64], failures: u64) -> EdgeView {
        EdgeView {
            id: id.into(),
            health,
            tunnels_up: tunnels.len() as u32,
            tunnels_configured: 2,
            tunnels: tunnels.iter().copied().map(tunnel).collect(),
            draining: false,
            last_seen_unix_ms: Some(1_000),
            rtt_p50_us: Some(400),
            rtt_p99_us: Some(900),
            version: Some("0.1.0".into()),
            cpu_percent: None,
            memory_used_bytes: None,
            memory_total_bytes: None,
            connect_failures: failures,
            node_links: Vec::new(),
            source: EdgeSource::Config,
            groups: Vec::new(),
            revoked: false,
            previous_token_until_unix_ms: None,
            enrolment: None,
        }
    }

    /// A distribution as a node reports it: log-2 buckets from samples.
    fn distribution_of(samples: &[u64]) -> Distribution {
        let mut buckets: BTreeMap<u64, u64> = BTreeMap::new();
        for s in samples {
            let bits = 64 - s.leading_zeros();
            *buckets.entry((1u64 << bits) - 1).or_insert(0) += 1;
        }
        let d = Distribution {
            count: samples.len() as u64,
            max: samples.iter().copied().max().unwrap_or(0),
            buckets: buckets.into_iter().map(|(le, count)| Bucket { le, count }).collect(),
            ..Distribution::default()
        };
        // Percentiles as the merge computes them, so that the union can be
        // compared field by field.
        sum_distributions(&[&d])
    }

    fn node_snapshot(mappings: Vec<MappingView>, edges: Vec<EdgeView>) -> Snapshot {
        Snapshot {
            at_unix_ms: 5_000,
            version: "0.1.0".into(),
            edges,
            mappings,
            series: Vec::new(),
            window_secs: 300,
            nodes: Vec::new(),
            peers: Vec::new(),
        }
    }

    #[test]
    fn two_nodes_sum_per_mapping_and_per_edge() {
        let mut a = node_snapshot(
            vec![mapping("web", 3, 1_000)],
            vec![edge("e1", EdgeHealth::Connected, &[1, 2], 1)],
        );
        a.nodes = vec![NodeView { id: "a".into(), this_node: true, ..NodeView::default() }];
        a.edges[0].node_links = vec![EdgeNodeLink { node: "a".into(), tunnels_up: 2, error: None }];
        a.series = vec![MappingSeries {
            name: "web".into(),
            throughput_in: vec![1, 2, 3],
            throughput_out: vec![10, 20, 30],
            ..MappingSeries::default()
        }];
        let mut b = node_snapshot(
            vec![mapping("web", 4, 500)],
            vec![edge("e1", EdgeHealth::Connected, &[3, 4], 2)],
        );
        b.edges[0].node_links = vec![EdgeNodeLink { node: "b".into(), tunnels_up: 2, error: None }];
        b.series = vec![MappingSeries {
            name: "web".into(),
            throughput_in: vec![5, 100, 200, 300],
            throughput_out: vec![7, 7],
            ..MappingSeries::default()
        }];
        let nodes = a.nodes.clone();
        let merged = cluster_snapshot(a, vec![("b".into(), Ok(b))]);

        assert_eq!(merged.peers, [PeerAnswer { node: "b".into(), answered: true, error: None }]);
        assert_eq!(merged.nodes, nodes, "the nodes are the answering node's");
        let web = &merged.mappings[0];
        assert_eq!(merged.mappings.len(), 1);
        assert_eq!(
            (web.active_connections, web.total_connections, web.failed_connections),
            (7, 70, 2)
        );
        assert_eq!((web.bytes_in, web.bytes_out), (1_500, 3_000));
        assert_eq!((web.throughput_in_bps, web.throughput_out_bps), (200, 400));
        let series = &merged.series[0];
        assert_eq!(series.throughput_in, [5, 101, 202, 303], "aligned at the newest sample");
        assert_eq!(series.throughput_out, [10, 27, 37]);

        let e1 = &merged.edges[0];
        assert_eq!(merged.edges.len(), 1);
        assert_eq!((e1.tunnels_up, e1.tunnels_configured, e1.connect_failures), (4, 4, 3));
        assert_eq!(e1.tunnels.iter().map(|t| t.id).collect::<Vec<_>>(), [1, 2, 3, 4]);
        assert_eq!(e1.health, EdgeHealth::Connected);
        let links: Vec<&str> = e1.node_links.iter().map(|l| l.node.as_str()).collect();
        assert_eq!(links, ["a", "b"]);
    }

    #[test]
    fn three_nodes_with_mappings_and_edges_only_a_peer_knows() {
        let a = node_snapshot(
            vec![mapping("web", 1, 10)],
            vec![edge("e1", EdgeHealth::Connected, &[1], 0)],
        );
        let b = node_snapshot(
            vec![mapping("web", 2, 20), mapping("db", 5, 50)],
            vec![edge("e1", EdgeHealth::Down, &[], 4), edge("e2", EdgeHealth::Down, &[], 1)],
        );
        let c = node_snapshot(
            vec![mapping("web", 3, 30)],
            vec![edge("e1", EdgeHealth::Connected, &[9], 0), edge("e2", EdgeHealth::Down, &[], 2)],
        );
        let merged = cluster_snapshot(a, vec![("b".into(), Ok(b)), ("c".into(), Ok(c))]);
        let names: Vec<&str> = merged.mappings.iter().map(|m| m.spec.name.as_str()).collect();
        assert_eq!(names, ["db", "web"], "sorted by name; db only b knows");
        assert_eq!(merged.mappings[0].active_connections, 5);
        assert_eq!(merged.mappings[1].active_connections, 6);
        assert_eq!(merged.mappings[1].bytes_in, 60);
        let e1 = &merged.edges[0];
        assert_eq!(e1.health, EdgeHealth::Reconnecting, "down on one node of three");
        assert_eq!((e1.tunnels_up, e1.connect_failures), (2, 4));
        let e2 = &merged.edges[1];
        assert_eq!((e2.id.as_str(), e2.health, e2.connect_failures), ("e2", EdgeHealth::Down, 3));
        assert_eq!(merged.peers.len(), 2);
        assert!(merged.peers.iter().all(|p| p.answered));
    }

    #[test]
    fn a_peer_that_did_not_answer_is_marked_and_adds_nothing() {
        let a = node_snapshot(
            vec![mapping("web", 1, 10)],
            vec![edge("e1", EdgeHealth::Connected, &[1], 0)],
        );
        let b = node_snapshot(vec![mapping("web", 2, 20)], Vec::new());
        let merged = cluster_snapshot(
            a.clone(),
            vec![
                ("b".into(), Ok(b)),
                ("c".into(), Err("no answer within 1s: connection refused".into())),
            ],
        );
        assert_eq!(
            merged.peers,
            [
                PeerAnswer { node: "b".into(), answered: true, error: None },
                PeerAnswer {
                    node: "c".into(),
                    answered: false,
                    error: Some("no answer within 1s: connection refused".into())
                },
            ]
        );
        assert_eq!(merged.mappings[0].active_connections, 3);
        assert_eq!(merged.edges, a.edges, "an edge only the answering node knows, as it is");

        // No peer answered: the node's own figures, untouched.
        let alone = cluster_snapshot(a.clone(), vec![("b".into(), Err("timed out".into()))]);
        assert_eq!(alone.mappings, a.mappings);
        assert_eq!(alone.peers.len(), 1);
    }

    #[test]
    fn summed_distributions_are_the_distribution_of_the_union() {
        let on_a = [3, 5, 9, 17, 17, 120, 700];
        let on_b = [1, 2, 40, 40, 41, 900, 5_000, 5_001];
        let on_c = [6, 7];
        let union: Vec<u64> = on_a.iter().chain(&on_b).chain(&on_c).copied().collect();
        let (a, b, c) = (distribution_of(&on_a), distribution_of(&on_b), distribution_of(&on_c));
        let summed = sum_distributions(&[&a, &b, &c]);
        assert_eq!(summed, distribution_of(&union));
        assert_eq!(summed.count, 17);
        assert_eq!(summed.max, 5_001);
        // 9th of 17 samples (sorted: 1 2 3 5 6 7 9 17 17 ...) is 17, in the
        // bucket up to 31.
        assert_eq!(summed.p50, 31);
        assert_eq!(summed.p999, 5_001, "capped at the largest sample, not 8191");

        // Through cluster_snapshot, on a mapping's series.
        let series = |d: Distribution| MappingSeries {
            name: "web".into(),
            connect_latency_us: d,
            ..MappingSeries::default()
        };
        let mut na = node_snapshot(Vec::new(), Vec::new());
        na.series = vec![series(a)];
        let mut nb = node_snapshot(Vec::new(), Vec::new());
        nb.series = vec![series(b)];
        let mut nc = node_snapshot(Vec::new(), Vec::new());
        nc.series = vec![series(c)];
        let merged = cluster_snapshot(na, vec![("b".into(), Ok(nb)), ("c".into(), Ok(nc))]);
        assert_eq!(merged.series[0].connect_latency_us, distribution_of(&union));
        assert_eq!(sum_distributions(&[]), Distribution::default());
    }
}
