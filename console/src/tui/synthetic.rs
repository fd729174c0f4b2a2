//! A made-up fleet of any size, as a cloud agent would report it: for the
//! console's measurement (`relayctl measure-tui`, which `relay-bench`
//! runs) and the tests at a thousand sites. Deterministic: the same sizes
//! give the same snapshot.

use api::{
    Bucket, Distribution, EdgeHealth, EdgeView, MappingSeries, MappingSource, MappingSpec,
    MappingState, MappingView, ProbeStatus, ProbeView, Snapshot, TunnelView,
};

/// Samples in each mapping's series, as the cloud keeps them.
const SERIES_LEN: usize = 300;

/// `edges` edges (`site-0001`, ...; every 50th down, every 97th revoked,
/// the rest in groups of ten) and `mappings` mappings spread over them
/// (every 7th on a group, with probes, some failing, and traffic), at
/// `at_unix_ms`, with a full series for each mapping (as `/v1/snapshot`
/// sends by default).
pub(crate) fn fleet(edges: usize, mappings: usize, at_unix_ms: u64) -> Snapshot {
    let edge_views: Vec<EdgeView> = (0..edges).map(|i| edge(i, at_unix_ms)).collect();
    let mapping_views: Vec<MappingView> =
        (0..mappings).map(|i| mapping(i, edges.max(1), at_unix_ms)).collect();
    let series = mapping_views.iter().enumerate().map(|(i, m)| series(i, &m.spec.name)).collect();
    Snapshot {
        at_unix_ms,
        version: "0.1.0".into(),
        edges: edge_views,
        mappings: mapping_views,
        series,
        window_secs: SERIES_LEN as u64,
        ..Snapshot::default()
    }
}

fn edge_id(i: usize) -> String {
    format!("site-{:04}", i + 1)
}

fn edge(i: usize, at: u64) -> EdgeView {
    let down = i % 50 == 49;
    let tunnels: Vec<TunnelView> = if down {
        Vec::new()
    } else {
        (0..2)
            .map(|t| TunnelView {
                id: (i * 2 + t) as u64,
                streams: ((i * 7 + t * 3) % 40) as u64,
                rtt_us: Some(300 + (i % 17) as u64 * 40),
                draining: false,
                window_budget_used_bytes: 0,
                window_growth_refused: 0,
                credential: Some("current".into()),
            })
            .collect()
    };
    EdgeView {
        id: edge_id(i),
        health: if down { EdgeHealth::Down } else { EdgeHealth::Connected },
        tunnels_up: tunnels.len() as u32,
        tunnels_configured: 2,
        tunnels,
        draining: i % 211 == 3,
        last_seen_unix_ms: Some(if down { at - 180_000 } else { at - 200 }),
        rtt_p50_us: (!down).then_some(350 + (i % 17) as u64 * 40),
        rtt_p99_us: (!down).then_some(1_200 + (i % 13) as u64 * 90),
        version: Some("0.1.0".into()),
        cpu_percent: (!down).then_some((i % 90) as f32 + 2.5),
        memory_used_bytes: (!down).then_some(2_000_000_000 + (i as u64 % 40) * 100_000_000),
        memory_total_bytes: (!down).then_some(17_179_869_184),
        connect_failures: (i % 23 == 5) as u64 * (i as u64 % 9 + 1),
        node_links: Vec::new(),
        source: if i % 3 == 0 { api::EdgeSource::Config } else { api::EdgeSource::Runtime },
        groups: vec![format!("region-{:02}", i / 10)],
        revoked: i % 97 == 96,
        previous_token_until_unix_ms: None,
        enrolment: None,
    }
}

fn mapping(i: usize, edges: usize, at: u64) -> MappingView {
    let home = i % edges;
    // Every 7th mapping goes to a group of ten edges.
    let edge = if i % 7 == 6 { format!("region-{:02}", home / 10) } else { edge_id(home) };
    let port = 20_000 + i as u64;
    let spec = MappingSpec {
        name: format!("svc-{:05}", i + 1),
        listen: format!("0.0.0.0:{port}"),
        edge,
        target: format!("10.{}.{}.{}:{}", i / 65_536 % 256, i / 256 % 256, i % 256, 80 + i % 5),
        probe_interval_secs: Some(10),
        ..MappingSpec::default()
    };
    let state = match i % 400 {
        399 => MappingState::Failed,
        13 => MappingState::Draining,
        _ => MappingState::Active,
    };
    let busy = (i % 11) as u64;
    // What `edge()` makes of its edge (a group has up members).
    let own_edge = i % 7 != 6;
    let (edge_down, edge_revoked) = (own_edge && home % 50 == 49, own_edge && home % 97 == 96);
    let probe = ProbeView {
        status: match i % 60 {
            _ if edge_down => ProbeStatus::NoTunnel,
            59 => ProbeStatus::Failed,
            29 => ProbeStatus::Slow,
            _ => ProbeStatus::Ok,
        },
        detail: if i % 60 == 59 && !edge_down {
            "connection refused".into()
        } else {
            String::new()
        },
        connect_us: Some(200 + (i % 31) as u64 * 15),
        rtt_us: Some(600 + (i % 29) as u64 * 20),
        at_unix_ms: at - 3_000,
        since_unix_ms: at - 3_600_000,
        consecutive_failures: (i % 60 == 59) as u32 * 4,
    };
    MappingView {
        bound: (state != MappingState::Failed).then(|| spec.listen.clone()),
        error: (state == MappingState::Failed)
            .then(|| format!("cannot listen on 0.0.0.0:{port}: Address already in use")),
        drain_remaining_ms: (state == MappingState::Draining).then_some(21_000),
        spec,
        source: MappingSource::Runtime,
        state,
        active_connections: busy * 3,
        total_connections: busy * 1_000 + i as u64,
        failed_connections: (i % 37 == 1) as u64 * (i as u64 % 50),
        bytes_in: busy * 12_345_678,
        bytes_out: busy * 98_765_432,
        throughput_in_bps: busy * 10_000,
        throughput_out_bps: busy * 85_000,
        nodes: Vec::new(),
        edge_revoked,
        policy_hits: None,
        probe: Some(probe),
    }
}

fn series(i: usize, name: &str) -> MappingSeries {
    let wave = |base: u64| -> Vec<u64> {
        (0..SERIES_LEN as u64).map(|t| base + base * ((t * 7 + i as u64) % 23) / 30).collect()
    };
    let distribution = |p50: u64| Distribution {
        count: 300,
        p50,
        p90: p50 * 2,
        p99: p50 * 3,
        p999: p50 * 4,
        max: p50 * 5,
        buckets: (0..12).map(|b| Bucket { le: (p50 >> 4) << b, count: 25 }).collect(),
    };
    let base = 1_000 * (i % 11) as u64 + 500;
    MappingSeries {
        name: name.to_owned(),
        throughput_in: wave(base),
        throughput_out: wave(base * 8),
        throughput: distribution(base * 9),
        connect_latency_us: distribution(800),
    }
}
