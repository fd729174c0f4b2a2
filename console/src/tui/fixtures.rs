//! Deterministic data for the tests: a fixed clock, two edges and three
//! mappings with fixed figures.

use api::{
    Bucket, Distribution, EdgeHealth, EdgeView, MappingSeries, MappingSource, MappingSpec,
    MappingState, MappingView, Snapshot, TunnelView,
};

use super::app::{Action, App};
use super::theme::Theme;
use crate::client::ClientError;

/// The fixed "now" of every test, unix milliseconds.
pub(crate) const NOW: u64 = 1_795_871_570_000;
/// Where the fixtures' cloud agent is.
pub(crate) const ENDPOINT: &str = "http://127.0.0.1:7070";

/// An app without colours that has received [`snapshot`] 400 ms ago.
pub(crate) fn app() -> App {
    let mut app = App::new(ENDPOINT, None, Theme::new(false), NOW - 400);
    app.update(Action::Snapshot { result: Ok(snapshot()), now_ms: NOW - 400 });
    app.update(Action::Tick(NOW));
    app
}

/// Events of the fixtures' agent: `n` of them, one a minute up to [`NOW`],
/// cycling through tunnels, mapping changes and a limit.
pub(crate) fn events(n: u64) -> Vec<api::Event> {
    use api::EventKind::*;
    let kinds = [
        (TunnelUp, "site-a", "tunnel 3 up (protocol 4, edge agent 0.1.0)"),
        (
            MappingAdded,
            "web",
            "added through the api: 0.0.0.0:8080 to edge site-a, target 10.0.0.5:80",
        ),
        (
            LimitHit,
            "web",
            "mapping web refused a client: at max_connections 100 (41 more since the last such event)",
        ),
        (MappingDrained, "db", "draining through the batch: open connections have 30s"),
        (TunnelDown, "site-b", "tunnel 4 down: heartbeat timeout (no frame for 6s)"),
        (EdgeDrained, "site-b", "drained through the api: no new connections go to it"),
    ];
    (1..=n)
        .map(|seq| {
            let (kind, subject, text) = kinds[(seq as usize - 1) % kinds.len()];
            api::Event {
                seq,
                at_unix_ms: NOW - (n - seq) * 60_000,
                kind,
                subject: subject.into(),
                text: text.into(),
                node: None,
            }
        })
        .collect()
}

/// The app after the cloud agent stopped answering 14 s after the data.
pub(crate) fn disconnected() -> App {
    let mut app = app();
    let error = ClientError::Unreachable {
        endpoint: ENDPOINT.into(),
        reason: "io: Connection refused (os error 111)".into(),
    };
    app.update(Action::Snapshot { result: Err(error), now_ms: NOW + 14_000 });
    app
}

fn spec(name: &str, listen: &str, edge: &str, target: &str) -> MappingSpec {
    MappingSpec {
        name: name.into(),
        listen: listen.into(),
        edge: edge.into(),
        target: target.into(),
        ..MappingSpec::default()
    }
}

fn mapping(spec: MappingSpec, state: MappingState) -> MappingView {
    MappingView {
        probe: None,
        bound: (state == MappingState::Active).then(|| spec.listen.clone()),
        spec,
        source: MappingSource::Config,
        state,
        error: None,
        drain_remaining_ms: None,
        active_connections: 0,
        total_connections: 0,
        failed_connections: 0,
        bytes_in: 0,
        bytes_out: 0,
        throughput_in_bps: 0,
        throughput_out_bps: 0,
        nodes: Vec::new(),
        edge_revoked: false,
        policy_hits: None,
    }
}

fn distribution(p50: u64, p99: u64, first_bit: u32, counts: &[u64]) -> Distribution {
    let buckets: Vec<Bucket> = counts
        .iter()
        .enumerate()
        .map(|(i, count)| Bucket { le: (1u64 << (first_bit + i as u32)) - 1, count: *count })
        .filter(|b| b.count > 0)
        .collect();
    Distribution {
        count: counts.iter().sum(),
        p50,
        p90: (p50 + p99) / 2,
        p99,
        p999: p99 + p99 / 10,
        max: p99 * 2,
        buckets,
    }
}

/// A wavy but fixed per-second series of `len` samples around `base`.
fn wave(len: usize, base: u64) -> Vec<u64> {
    (0..len as u64).map(|i| base + base * ((i * 7) % 23 + (i / 30) % 5 * 4) / 30).collect()
}

/// Two edges (one connected with reports, one down) and three mappings
/// (active with traffic, draining with 2 connections and 25 s left,
/// failed with an error).
pub(crate) fn snapshot() -> Snapshot {
    let at = NOW - 400;
    let site_a = EdgeView {
        id: "site-a".into(),
        health: EdgeHealth::Connected,
        tunnels_up: 2,
        tunnels_configured: 2,
        tunnels: vec![
            TunnelView {
                id: 7,
                streams: 12,
                rtt_us: Some(412),
                draining: false,
                window_budget_used_bytes: 0,
                window_growth_refused: 0,
                credential: None,
            },
            TunnelView {
                id: 8,
                streams: 4,
                rtt_us: Some(380),
                draining: false,
                window_budget_used_bytes: 0,
                window_growth_refused: 0,
                credential: None,
            },
        ],
        draining: false,
        last_seen_unix_ms: Some(at - 300),
        rtt_p50_us: Some(390),
        rtt_p99_us: Some(1_200),
        version: Some("0.1.0".into()),
        cpu_percent: Some(12.5),
        memory_used_bytes: Some(3_435_973_837),
        memory_total_bytes: Some(17_179_869_184),
        connect_failures: 0,
        node_links: Vec::new(),
        source: api::EdgeSource::Config,
        groups: Vec::new(),
        revoked: false,
        previous_token_until_unix_ms: None,
        enrolment: None,
    };
    let site_b = EdgeView {
        id: "site-b".into(),
        health: EdgeHealth::Down,
        tunnels_up: 0,
        tunnels_configured: 2,
        tunnels: Vec::new(),
        draining: false,
        last_seen_unix_ms: Some(at - 125_000),
        rtt_p50_us: None,
        rtt_p99_us: None,
        version: Some("0.1.0".into()),
        cpu_percent: None,
        memory_used_bytes: None,
        memory_total_bytes: None,
        connect_failures: 3,
        node_links: Vec::new(),
        source: api::EdgeSource::Config,
        groups: Vec::new(),
        revoked: false,
        previous_token_until_unix_ms: None,
        enrolment: None,
    };
    let mut db =
        mapping(spec("db", "0.0.0.0:15432", "site-a", "db.internal:5432"), MappingState::Draining);
    db.source = MappingSource::Runtime;
    db.drain_remaining_ms = Some(25_400);
    db.active_connections = 2;
    db.total_connections = 87;
    db.bytes_in = 48_200_000;
    db.bytes_out = 912_000_000;
    db.throughput_in_bps = 2_300;
    db.throughput_out_bps = 41_000;
    let mut ssh =
        mapping(spec("ssh-legacy", "0.0.0.0:22", "site-b", "10.0.0.9:22"), MappingState::Failed);
    ssh.error = Some("cannot listen on 0.0.0.0:22: Address already in use (os error 98)".into());
    let mut web_spec = spec("web", "0.0.0.0:8080", "site-a", "10.0.0.5:80");
    web_spec.allow = vec!["203.0.113.0/24".into()];
    let mut web = mapping(web_spec, MappingState::Active);
    web.active_connections = 14;
    web.total_connections = 1_204;
    web.failed_connections = 3;
    web.bytes_in = 1_234_000_000;
    web.bytes_out = 8_420_000_000;
    web.throughput_in_bps = 1_250_000;
    web.throughput_out_bps = 5_600_000;
    let web_in = wave(300, 1_000_000);
    let web_out = wave(300, 4_500_000);
    let series = vec![
        MappingSeries {
            name: "db".into(),
            throughput_in: wave(300, 2_000),
            throughput_out: wave(300, 40_000),
            throughput: distribution(42_000, 61_000, 14, &[10, 120, 170]),
            connect_latency_us: distribution(900, 3_000, 9, &[4, 20, 9, 1]),
        },
        MappingSeries {
            name: "web".into(),
            throughput_in: web_in,
            throughput_out: web_out,
            throughput: distribution(5_900_000, 8_100_000, 20, &[5, 0, 40, 180, 75]),
            connect_latency_us: distribution(600, 2_100, 8, &[3, 25, 60, 10, 2]),
        },
    ];
    Snapshot {
        at_unix_ms: at,
        version: "0.1.0".into(),
        edges: vec![site_a, site_b],
        mappings: vec![db, ssh, web],
        series,
        window_secs: 300,
        ..Snapshot::default()
    }
}

/// The app that has received [`cluster_snapshot`] 400 ms ago.
pub(crate) fn cluster_app() -> App {
    let mut app = App::new(ENDPOINT, None, Theme::new(false), NOW - 400);
    app.update(Action::Snapshot { result: Ok(cluster_snapshot()), now_ms: NOW - 400 });
    app.update(Action::Tick(NOW));
    app
}

/// [`snapshot`] as node `a` of a three-node cluster sums it: `b`'s
/// figures are missing (it did not answer in time); `c` is draining, and
/// could not bind `web` (its port is in use there), which `a` and `b`
/// serve.
pub(crate) fn cluster_snapshot() -> Snapshot {
    use api::{
        EdgeNodeLink, MappingFailure, MappingOnNode, NodeMappingState, NodeView, PeerAnswer,
    };
    let mut s = snapshot();
    let at = s.at_unix_ms;
    let busy = "cannot listen on 0.0.0.0:8080: Address already in use (os error 98)";
    let node = |id: &str, connections: u64| NodeView {
        id: id.into(),
        advertise: format!("wss://{id}.relay.example:7000"),
        control_url: Some(format!("http://{id}.relay.internal:7070")),
        version: "0.1.0".into(),
        started_unix_ms: at - 7_300_000,
        ready: true,
        draining: false,
        drain_deadline_unix_ms: None,
        store_reachable: true,
        applied_revision: 42,
        connections,
        edges_connected: 1,
        mapping_failures: Vec::new(),
        updated_unix_ms: at - 1_000,
        this_node: false,
    };
    let mut a = node("a", 9);
    a.this_node = true;
    let b = node("b", 7);
    let mut c = node("c", 0);
    c.ready = false;
    c.draining = true;
    c.drain_deadline_unix_ms = Some(at + 25_400);
    c.applied_revision = 41;
    c.edges_connected = 0;
    c.mapping_failures = vec![MappingFailure { mapping: "web".into(), error: busy.into() }];
    s.nodes = vec![a, b, c];
    s.peers = vec![
        PeerAnswer {
            node: "b".into(),
            answered: false,
            error: Some("no answer within 1s: timed out".into()),
        },
        PeerAnswer { node: "c".into(), answered: true, error: None },
    ];
    let on = |node: &str, state, error: Option<&str>| MappingOnNode {
        node: node.into(),
        state,
        error: error.map(str::to_owned),
    };
    for m in &mut s.mappings {
        m.nodes = match m.spec.name.as_str() {
            "web" => vec![
                on("a", NodeMappingState::Active, None),
                on("b", NodeMappingState::Active, None),
                on("c", NodeMappingState::Failed, Some(busy)),
            ],
            "db" => ["a", "b", "c"]
                .into_iter()
                .map(|n| on(n, NodeMappingState::Draining, None))
                .collect(),
            _ => ["a", "b", "c"]
                .into_iter()
                .map(|n| on(n, NodeMappingState::Failed, m.error.as_deref()))
                .collect(),
        };
    }
    s.edges[0].node_links = vec![
        EdgeNodeLink { node: "a".into(), tunnels_up: 1, error: None },
        EdgeNodeLink { node: "b".into(), tunnels_up: 1, error: None },
        EdgeNodeLink {
            node: "c".into(),
            tunnels_up: 0,
            error: Some("dial wss://c.relay.example:7000: connection refused".into()),
        },
    ];
    s
}
