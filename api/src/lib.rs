//! The control API's JSON bodies, shared by `relay-cloud` (which serves
//! them) and `relayctl` (which reads them). Field names are a contract with
//! scripts: add fields, never rename or remove them.
//!
//! The endpoints are documented in `docs/control-api.md`.

use serde::{Deserialize, Serialize};

mod cluster;
mod events;
mod merge;

pub use cluster::{
    EdgeNodeLink, MappingFailure, MappingOnNode, NodeApply, NodeMappingState, NodeView, PeerAnswer,
};
pub use events::{DEFAULT_EVENTS_LIMIT, Event, EventKind, EventsPage, MAX_EVENTS_LIMIT};
pub use merge::{cluster_snapshot, sum_distributions};

/// A mapping as an operator writes it: `POST /v1/mappings`, batch `add`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappingSpec {
    /// Unique name, 1..=64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// Public listen address, e.g. `0.0.0.0:2222`.
    pub listen: String,
    /// Edge id that carries its connections.
    pub edge: String,
    /// Destination `host:port`, as the edge resolves it.
    pub target: String,
    /// Client networks allowed (CIDR or bare IP); empty means any.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Concurrent client connections allowed; none means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Seconds between end-to-end probes of `target` through the edge (1
    /// to 3600); none means no probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_interval_secs: Option<u64>,
    /// What the probe writes after connecting (needs `probe_expect`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_send: Option<String>,
    /// Text the service must answer with for the probe to pass (needs
    /// `probe_interval_secs`; an edge of protocol 7 or newer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_expect: Option<String>,
    /// `"v1"` or `"v2"`: the edge writes a PROXY protocol header naming the
    /// real client to `target` before its bytes (an edge of protocol 8 or
    /// newer); none means no header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_protocol: Option<config::ProxyVersion>,
    /// The name this mapping takes on a listen address it shares with
    /// others: `app.example.com`, `*.example.com` (one label), or `*` (the
    /// address's default). None: the mapping owns its address alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// Concurrent connections one client (an IPv4 address, an IPv6 /64)
    /// may hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u32>,
    /// New connections one client may open per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_connections_per_client: Option<u32>,
    /// Bytes per second from all clients to the service, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_in_bps: Option<u64>,
    /// Bytes per second from the service to all clients, together.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_out_bps: Option<u64>,
}

impl MappingSpec {
    /// The traffic policy fields.
    pub fn policy(&self) -> PolicySpec {
        PolicySpec {
            max_connections_per_client: self.max_connections_per_client,
            new_connections_per_client: self.new_connections_per_client,
            rate_limit_in_bps: self.rate_limit_in_bps,
            rate_limit_out_bps: self.rate_limit_out_bps,
        }
    }

    /// Checks the spec with the config file's rules (the same messages a
    /// `[[mappings]]` table gets) and returns the mapping it describes.
    ///
    /// # Errors
    /// The first field that is wrong, named.
    pub fn to_config(&self) -> Result<config::MappingConfig, config::FieldError> {
        config::MappingConfig::from_parts(
            &self.name,
            &self.listen,
            &self.edge,
            &self.target,
            &self.allow,
            self.max_connections,
        )
        .and_then(|mut m| {
            m.probe_interval = match self.probe_interval_secs {
                Some(secs) => Some(
                    config::check_probe_interval(std::time::Duration::from_secs(secs)).map_err(
                        |message| config::FieldError { field: "probe_interval_secs", message },
                    )?,
                ),
                None => None,
            };
            config::check_probe_exchange(
                self.probe_send.as_deref(),
                self.probe_expect.as_deref(),
                m.probe_interval.is_some(),
            )
            .map_err(|(field, message)| config::FieldError { field, message })?;
            m.probe_send.clone_from(&self.probe_send);
            m.probe_expect.clone_from(&self.probe_expect);
            m.proxy_protocol = self.proxy_protocol;
            m.host = match &self.host {
                Some(h) => Some(
                    h.parse().map_err(|message| config::FieldError { field: "host", message })?,
                ),
                None => None,
            };
            m.policy = self.policy().to_policy()?;
            m.check_combination().map_err(|(field, message)| config::FieldError {
                field: api_field(field),
                message,
            })?;
            Ok(m)
        })
    }
}

/// A traffic policy as the API writes it (`PUT /v1/mappings/{name}/policy`,
/// batch `set_policy`); the same fields as a [`MappingSpec`]'s.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicySpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections_per_client: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_connections_per_client: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_in_bps: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit_out_bps: Option<u64>,
}

impl PolicySpec {
    /// The policy, checked with the config file's rules.
    ///
    /// # Errors
    /// The field at fault, by its API name.
    pub fn to_policy(&self) -> Result<config::TrafficPolicy, config::FieldError> {
        let policy = config::TrafficPolicy {
            max_connections_per_client: self.max_connections_per_client,
            new_connections_per_client: self.new_connections_per_client,
            rate_limit_in: self.rate_limit_in_bps,
            rate_limit_out: self.rate_limit_out_bps,
        };
        policy
            .check()
            .map_err(|(field, message)| config::FieldError { field: api_field(field), message })?;
        Ok(policy)
    }

    /// The fields of `policy`.
    pub fn of(policy: &config::TrafficPolicy) -> Self {
        Self {
            max_connections_per_client: policy.max_connections_per_client,
            new_connections_per_client: policy.new_connections_per_client,
            rate_limit_in_bps: policy.rate_limit_in,
            rate_limit_out_bps: policy.rate_limit_out,
        }
    }
}

/// The API's name of a config field.
fn api_field(field: &'static str) -> &'static str {
    match field {
        "rate_limit_in" => "rate_limit_in_bps",
        "rate_limit_out" => "rate_limit_out_bps",
        other => other,
    }
}

/// How often a mapping's traffic policy bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyHits {
    /// Clients refused at `max_connections_per_client`.
    pub refused_concurrent: u64,
    /// Clients refused over `new_connections_per_client`.
    pub refused_rate: u64,
    /// Times a connection waited for `rate_limit_in`.
    pub throttled_in: u64,
    /// Times a connection waited for `rate_limit_out`.
    pub throttled_out: u64,
}

/// Where a mapping came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingSource {
    /// The config file's `[[mappings]]`.
    Config,
    /// Added through the API; persisted in the state file.
    Runtime,
}

/// A mapping's life-cycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MappingState {
    /// Listening and serving.
    Active,
    /// Listener closed; open connections finish until the deadline.
    Draining,
    /// Configured but its address could not be bound.
    Failed,
}

/// A mapping as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MappingView {
    /// What the operator asked for.
    #[serde(flatten)]
    pub spec: MappingSpec,
    /// Config file or API.
    pub source: MappingSource,
    /// Life-cycle state.
    pub state: MappingState,
    /// The bound address (differs from `listen` when it asked for port 0).
    pub bound: Option<String>,
    /// Why the mapping failed, when `state` is `failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When draining: milliseconds until open connections are reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drain_remaining_ms: Option<u64>,
    /// Client connections open now.
    pub active_connections: u64,
    /// Client connections accepted since the agent started.
    pub total_connections: u64,
    /// Connections that could not be carried (no tunnel, edge refused, a
    /// bad or late PROXY protocol header).
    pub failed_connections: u64,
    /// Bytes from clients to the service.
    pub bytes_in: u64,
    /// Bytes from the service to clients.
    pub bytes_out: u64,
    /// Bytes per second from clients, over the last second.
    pub throughput_in_bps: u64,
    /// Bytes per second to clients, over the last second.
    pub throughput_out_bps: u64,
    /// In a cluster: where the mapping stands on each live node. Empty when
    /// the agent runs alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<MappingOnNode>,
    /// Whether every edge that could carry it (its edge, or each member of
    /// its group) is revoked: its clients are refused.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub edge_revoked: bool,
    /// The latest end-to-end probe, when the mapping has `probe_interval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe: Option<ProbeView>,
    /// With a traffic policy: how often its limits bit since the agent
    /// started (summed over the nodes of a cluster).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_hits: Option<PolicyHits>,
}

/// What a mapping's probe found: can the edge reach the target?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProbeStatus {
    /// Not probed yet.
    Pending,
    /// The edge connected to the target.
    Ok,
    /// The edge connected, slower than [`SLOW_PROBE_MS`].
    Slow,
    /// The edge is up but could not connect (refused, timed out,
    /// unreachable, not on its allowlist): the service is down.
    Failed,
    /// No tunnel to the edge: the site is down.
    NoTunnel,
    /// The edge speaks a protocol older than probes (version 6).
    Unsupported,
    /// A status this build does not know.
    #[serde(other)]
    Other,
}

/// A probe slower than this (the edge's connect) is `slow`.
pub const SLOW_PROBE_MS: u64 = 500;

/// The latest probe of a mapping.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProbeView {
    pub status: ProbeStatus,
    /// The edge's answer (`ok`, `refused`, `denied`, `timeout`,
    /// `unreachable`, `draining`, `error`) or why none came.
    pub detail: String,
    /// The edge's connect time, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connect_us: Option<u64>,
    /// The whole round trip from this node, microseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt_us: Option<u64>,
    /// Unix ms of the latest probe.
    pub at_unix_ms: u64,
    /// Unix ms since when the status has been what it is.
    pub since_unix_ms: u64,
    /// Probes in a row that did not find the target reachable.
    pub consecutive_failures: u32,
}

/// How an edge is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeHealth {
    /// All the tunnels the edge wants are up.
    Connected,
    /// Some tunnels are up, or it was connected recently and is redialling.
    Reconnecting,
    /// No tunnel up.
    Down,
}

/// One tunnel of an edge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TunnelView {
    /// The tunnel's id.
    pub id: u64,
    /// Streams open on it.
    pub streams: u64,
    /// Latest heartbeat round-trip time, in microseconds.
    pub rtt_us: Option<u64>,
    /// Whether the edge said it is draining.
    pub draining: bool,
    /// Bytes the cloud's receive windows for this tunnel's streams have
    /// grown by beyond 64 KiB each, together (at most `window_budget`).
    #[serde(default)]
    pub window_budget_used_bytes: u64,
    /// Times one of those windows would have grown and did not, for lack
    /// of budget: streams held to 64 KiB per round trip.
    #[serde(default)]
    pub window_growth_refused: u64,
    /// Which of the edge's tokens the tunnel proved: `current`, or
    /// `previous` during a rotation's grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Where an edge comes from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EdgeSource {
    /// The config file's `[[edges]]` (perhaps with a run-time token or a
    /// revocation on top).
    #[default]
    Config,
    /// Added through the API; persisted in the state file (etcd in a
    /// cluster).
    Runtime,
}

/// An edge as the API reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeView {
    /// The edge id.
    pub id: String,
    /// Health at a glance.
    pub health: EdgeHealth,
    /// Tunnels up now.
    pub tunnels_up: u32,
    /// Tunnels the edge is configured to keep (from its reports; 0 before
    /// the first report).
    pub tunnels_configured: u32,
    /// Live tunnels.
    pub tunnels: Vec<TunnelView>,
    /// Whether an operator drained this edge: no new streams go to it.
    pub draining: bool,
    /// Unix time in milliseconds when a frame last arrived from it.
    pub last_seen_unix_ms: Option<u64>,
    /// Heartbeat round-trip percentiles over the window, microseconds.
    pub rtt_p50_us: Option<u64>,
    /// See `rtt_p50_us`.
    pub rtt_p99_us: Option<u64>,
    /// The edge's agent version.
    pub version: Option<String>,
    /// Host CPU use in percent (all cores), from the edge's last report.
    pub cpu_percent: Option<f32>,
    /// Host memory in use, bytes.
    pub memory_used_bytes: Option<u64>,
    /// Host memory in total, bytes.
    pub memory_total_bytes: Option<u64>,
    /// Destination connects that failed, as the edge counts them.
    pub connect_failures: u64,
    /// In a cluster: the edge's tunnels to each node, and why it cannot
    /// reach one, from its reports. Empty when the agent runs alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub node_links: Vec<EdgeNodeLink>,
    /// The config file, or the API.
    #[serde(default)]
    pub source: EdgeSource,
    /// The groups it is a member of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// Whether an operator revoked it: refused until it gets a new token.
    #[serde(default)]
    pub revoked: bool,
    /// After a token rotation: unix ms until which the old token is still
    /// accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_token_until_unix_ms: Option<u64>,
    /// Its latest enrolment code, while the cloud keeps it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrolment: Option<EnrolmentView>,
}

/// Percentiles of a histogram, plus its buckets for drawing.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Distribution {
    /// Number of samples in the window.
    pub count: u64,
    /// 50th percentile.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest sample.
    pub max: u64,
    /// Upper bounds and counts of log-spaced buckets, for a bar chart.
    pub buckets: Vec<Bucket>,
}

/// One bar of a histogram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    /// Samples up to and including this value fall here.
    pub le: u64,
    /// How many.
    pub count: u64,
}

/// Per-mapping series for a console's sparkline and histograms.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct MappingSeries {
    /// Mapping name.
    pub name: String,
    /// Bytes per second from clients, one sample a second, oldest first.
    pub throughput_in: Vec<u64>,
    /// Bytes per second to clients, one sample a second, oldest first.
    pub throughput_out: Vec<u64>,
    /// Distribution of per-second throughput (in + out), bytes per second.
    pub throughput: Distribution,
    /// Time to open a stream (tunnel round trip plus the edge's connect),
    /// microseconds.
    pub connect_latency_us: Distribution,
}

/// Everything a console draws, about once a second on `/v1/stream`, and
/// on `GET /v1/snapshot`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Unix time in milliseconds when it was taken.
    pub at_unix_ms: u64,
    /// The cloud agent's version.
    pub version: String,
    /// Edges, by id.
    pub edges: Vec<EdgeView>,
    /// Mappings, by name.
    pub mappings: Vec<MappingView>,
    /// Series per mapping, by name.
    pub series: Vec<MappingSeries>,
    /// Width of the percentile window, seconds.
    pub window_secs: u64,
    /// In a cluster: every live node. Empty when the agent runs alone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeView>,
    /// For `scope=cluster`: which peers' figures are summed in, and which
    /// did not answer in time. Empty otherwise.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<PeerAnswer>,
}

/// Longest grace a token rotation may give the old token, in seconds (30
/// days).
pub const MAX_ROTATION_GRACE_SECS: u64 = 30 * 86_400;

/// Longest drain deadline a request may ask for, in seconds (7 days).
/// Longer ones are refused with 400 `invalid` before anything changes.
pub const MAX_DRAIN_DEADLINE_SECS: u64 = 7 * 24 * 3600;

/// One change in a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Change {
    /// Add a mapping.
    Add {
        /// The mapping.
        /// Boxed: a batch of thousands of small changes should not pay
        /// for a whole mapping each.
        #[serde(flatten)]
        spec: Box<MappingSpec>,
    },
    /// Drain a mapping.
    Drain {
        /// Mapping name.
        name: String,
        /// Seconds open connections may continue; default 30, at most
        /// [`MAX_DRAIN_DEADLINE_SECS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        deadline_secs: Option<u64>,
    },
    /// Remove a mapping at once, resetting its connections.
    Remove {
        /// Mapping name.
        name: String,
    },
    /// Replace a mapping's traffic policy, live: the fields given are the
    /// whole new policy (one left out is no limit).
    SetPolicy {
        /// Mapping name.
        name: String,
        /// The new policy.
        #[serde(flatten)]
        policy: PolicySpec,
    },
    /// Add an edge. The cloud makes its token and answers it, once, in
    /// the outcome's `token`.
    AddEdge {
        /// Edge id, 1..=64 characters of `[A-Za-z0-9._-]`.
        id: String,
        /// A group to join (created by its first member).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    /// Remove an edge added at run time, closing its tunnels. Refused while
    /// a mapping can only be carried by it.
    RemoveEdge {
        /// Edge id.
        id: String,
    },
    /// Give an edge a new token (answered once in the outcome's `token`);
    /// the old one stays valid for the grace. On a revoked edge: a fresh
    /// start, the old token stays dead.
    RotateToken {
        /// Edge id.
        id: String,
        /// Seconds the old token stays valid; default 3600, at most
        /// [`MAX_ROTATION_GRACE_SECS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        grace_secs: Option<u64>,
    },
    /// Revoke an edge: its tunnels close at once on every node, and it is
    /// refused until it gets a new token.
    RevokeEdge {
        /// Edge id.
        id: String,
    },
    /// Make a one-time enrolment code for an edge, creating the edge (with
    /// no token yet) when it does not exist. The code is answered once, in
    /// the outcome's `code`; a newer code for the same edge replaces it.
    Enroll {
        /// Edge id.
        id: String,
        /// A group for an edge this creates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        /// Seconds the code stays valid; default 900 (15 minutes), 1 to
        /// [`MAX_ENROL_TTL_SECS`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ttl_secs: Option<u64>,
    },
    /// Redeem an enrolment code (the tunnel listener does this; a request
    /// cannot name it): the code's edge gets a fresh token, the code is
    /// used up.
    #[serde(skip)]
    Redeem {
        /// SHA-256 of the code's secret, hex.
        secret_sha256: String,
        /// What the enrolling machine calls itself (untrusted text).
        hostname: String,
    },
}

/// Longest lifetime of an enrolment code, in seconds (7 days).
pub const MAX_ENROL_TTL_SECS: u64 = 7 * 24 * 3600;
/// Lifetime of an enrolment code that names none, in seconds.
pub const DEFAULT_ENROL_TTL_SECS: u64 = 900;

/// `POST /v1/edges/{id}/enroll`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    /// A group for an edge this creates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Seconds the code stays valid; default 900.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// The answer to `POST /v1/edges/{id}/enroll`: the code, shown this once,
/// and what to run on the on-prem machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentTicket {
    /// The edge id the code is bound to.
    pub edge_id: String,
    /// The one-time code (`hr1.<secret>[.<pin>]`).
    pub code: String,
    /// Unix ms when it expires.
    pub expires_unix_ms: u64,
    /// The tunnel URL edges reach this cloud at, as the cloud knows it
    /// (`[tunnel] public_url`, a cluster's `advertise`, or the listener's
    /// address); check it when the cloud sits behind a load balancer.
    pub cloud_url: String,
    /// The command to run on the on-prem machine.
    pub command: String,
}

/// An edge's pending or redeemed enrolment code, in [`EdgeView`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrolmentView {
    /// Unix ms when the code expires (or expired).
    pub expires_unix_ms: u64,
    /// Unix ms when it was redeemed, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_unix_ms: Option<u64>,
    /// The host name the redeeming machine gave (untrusted text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redeemed_by: Option<String>,
}

/// `POST /v1/edges`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddEdgeRequest {
    /// Edge id.
    pub id: String,
    /// A group to join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

/// `POST /v1/edges/{id}/rotate-token`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateTokenRequest {
    /// Seconds the old token stays valid; default 3600.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_secs: Option<u64>,
}

/// The answer to adding an edge or rotating its token: the edge, and its
/// new token, which the cloud shows this once.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EdgeCredential {
    /// The edge as it is now; absent when this node had not applied the
    /// change yet (a cluster node whose wait ran out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edge: Option<EdgeView>,
    /// The new token (64 hex digits): put it in the edge's `token_file`.
    pub token: String,
}

/// `POST /v1/drain` bodies for mappings: `POST /v1/mappings/{name}/drain`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DrainRequest {
    /// Seconds open connections may continue; default 30, at most
    /// [`MAX_DRAIN_DEADLINE_SECS`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_secs: Option<u64>,
}

/// `POST /v1/batch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// The changes, applied in order, all or nothing.
    pub changes: Vec<Change>,
    /// Validate and report the plan without changing anything.
    #[serde(default)]
    pub dry_run: bool,
}

/// The outcome of one change of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeOutcome {
    /// Position in the request, from 0.
    pub index: usize,
    /// Whether this change is valid (dry run) or was applied.
    pub ok: bool,
    /// What it does or did, or why it failed.
    pub message: String,
    /// For `add_edge` and `rotate_token` once applied: the new token, shown
    /// this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// For `enroll` once applied: the enrolment code (with the cloud's pin
    /// when it has TLS), shown this once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// The answer to a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResponse {
    /// Whether every change was applied (always false for a dry run).
    pub applied: bool,
    /// Echo of the request's flag.
    pub dry_run: bool,
    /// One per change, in order.
    pub outcomes: Vec<ChangeOutcome>,
    /// In a cluster: the store revision the batch was committed at.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
    /// In a cluster: what each live node did with it within the wait.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nodes: Vec<NodeApply>,
    /// Why the batch was not applied, with the same code as the status's
    /// error body would carry (`conflict`, `store_unavailable`, ...);
    /// absent when it was applied or is a dry run that passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// Every error response: a stable machine code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiError {
    /// Stable code, e.g. `address_in_use`, `unknown_edge`, `not_found`.
    pub code: String,
    /// What went wrong, naming the field or value.
    pub error: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_wire_format_is_stable() {
        let change: Change = serde_json::from_str(
            r#"{"op":"add","name":"db","listen":"0.0.0.0:5432","edge":"e1","target":"db:5432"}"#,
        )
        .unwrap();
        assert!(
            matches!(change, Change::Add { ref spec } if spec.name == "db" && spec.allow.is_empty())
        );
        let drain: Change =
            serde_json::from_str(r#"{"op":"drain","name":"db","deadline_secs":60}"#).unwrap();
        assert_eq!(drain, Change::Drain { name: "db".into(), deadline_secs: Some(60) });
        assert_eq!(
            serde_json::to_string(&Change::Remove { name: "x".into() }).unwrap(),
            r#"{"op":"remove","name":"x"}"#
        );
        let rotate: Change =
            serde_json::from_str(r#"{"op":"rotate_token","id":"e1","grace_secs":60}"#).unwrap();
        assert_eq!(rotate, Change::RotateToken { id: "e1".into(), grace_secs: Some(60) });
        assert_eq!(
            serde_json::to_string(&Change::AddEdge { id: "e2".into(), group: None }).unwrap(),
            r#"{"op":"add_edge","id":"e2"}"#
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err = serde_json::from_str::<MappingSpec>(
            r#"{"name":"db","listen":"0.0.0.0:1","edge":"e","target":"h:1","lisen":"x"}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("lisen"), "{err}");
    }
}
