//! Default values and allowed ranges, one named constant each.
//!
//! The serde default functions below return these constants, so a missing
//! key and the documented default can never drift apart.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::Duration;

use crate::LogRotation;

/// Default `[tunnel] heartbeat_interval`: how often each side pings.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(2);
/// Default `[tunnel] heartbeat_timeout`: silence after which a tunnel is dead.
pub const DEFAULT_HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(6);
/// Default `[tunnel] handshake_timeout`: time an edge has to authenticate.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[tunnel] max_streams_per_tunnel`.
pub const DEFAULT_MAX_STREAMS_PER_TUNNEL: u32 = 4096;
/// Allowed `[tunnel] max_streams_per_tunnel`.
pub const MAX_STREAMS_PER_TUNNEL_RANGE: RangeInclusive<u32> = 1..=1_000_000;
/// Default `[tunnel] max_tunnels_per_edge`.
pub const DEFAULT_MAX_TUNNELS_PER_EDGE: u32 = 8;
/// Allowed `[tunnel] max_tunnels_per_edge`.
pub const MAX_TUNNELS_PER_EDGE_RANGE: RangeInclusive<u32> = 1..=64;
/// Default `[tunnel] ipv6_source_prefix`: unauthenticated handshakes from
/// IPv6 addresses are limited per prefix of this many bits.
pub const DEFAULT_IPV6_SOURCE_PREFIX: u32 = 64;
/// Allowed `[tunnel] ipv6_source_prefix`.
pub const IPV6_SOURCE_PREFIX_RANGE: RangeInclusive<u32> = 32..=128;
/// Default `stream_window` (cloud `[tunnel]`, edge top level), in bytes.
pub const DEFAULT_STREAM_WINDOW: u32 = 1024 * 1024;
/// Allowed `stream_window`, in bytes.
pub const STREAM_WINDOW_RANGE: RangeInclusive<u32> = 16 * 1024..=16 * 1024 * 1024;
/// Default `window_budget` (cloud `[tunnel]`, edge top level), in bytes; any
/// `u32` is allowed (0: no stream grows).
pub const DEFAULT_WINDOW_BUDGET: u32 = 32 * 1024 * 1024;
/// Default `shutdown_grace` of both agents: how long open connections may
/// drain after a shutdown signal.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Allowed `[[mappings]] max_connections` (when set; unset means no cap).
pub const MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 1..=u32::MAX;

/// Default edge `tunnels`: parallel tunnels to the cloud.
pub const DEFAULT_TUNNELS: u32 = 2;
/// Allowed edge `tunnels`.
pub const TUNNELS_RANGE: RangeInclusive<u32> = 1..=16;
/// Default edge `connect_timeout` for connections to targets.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default `[reconnect] initial` backoff.
pub const DEFAULT_RECONNECT_INITIAL: Duration = Duration::from_millis(500);
/// Default `[reconnect] max` backoff.
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(30);

/// Default `cloud_url` port for `ws://`.
pub const DEFAULT_WS_PORT: u16 = 80;
/// Default `cloud_url` port for `wss://`.
pub const DEFAULT_WSS_PORT: u16 = 443;
/// Default `cloud_url` path when the URL has none.
pub const DEFAULT_TUNNEL_PATH: &str = "/tunnel";

/// Default `[control] listen` of the cloud: the control API on loopback.
pub const DEFAULT_CONTROL_LISTEN: SocketAddr =
    SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 7070));
/// Default `[control] state_file`, relative to the config file's directory.
pub const DEFAULT_CONTROL_STATE_FILE: &str = "relay-cloud-state.json";
/// Default `[control] request_timeout`: time a client of the control API
/// has to send a request's headers, and then its body; an idle connection
/// is closed after it too.
pub const DEFAULT_CONTROL_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Default `[control] max_connections`: control API connections served at
/// once; more wait in the kernel's accept queue.
pub const DEFAULT_CONTROL_MAX_CONNECTIONS: u32 = 64;
/// Allowed `[control] max_connections`.
pub const CONTROL_MAX_CONNECTIONS_RANGE: RangeInclusive<u32> = 1..=4096;

/// Default `[log] file_prefix` of the cloud agent.
pub const DEFAULT_CLOUD_LOG_FILE_PREFIX: &str = "relay-cloud";
/// Default `[log] file_prefix` of the edge agent.
pub const DEFAULT_EDGE_LOG_FILE_PREFIX: &str = "relay-edge";
/// Default `[log] rotation`.
pub const DEFAULT_LOG_ROTATION: LogRotation = LogRotation::Daily;
/// Allowed `[log] max_files` (when set; unset keeps every file).
pub const LOG_MAX_FILES_RANGE: RangeInclusive<u32> = 1..=u32::MAX;

/// Default `[proxy_protocol] timeout`: time a load balancer has to send
/// the whole PROXY protocol header.
pub const DEFAULT_PROXY_PROTOCOL_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed `[proxy_protocol] timeout`.
pub const PROXY_PROTOCOL_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);

/// Default `host_routing_timeout`: how long a client on a listen address
/// mappings share has to name its host (TLS ClientHello, HTTP request).
pub const DEFAULT_HOST_ROUTING_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed `host_routing_timeout`.
pub const HOST_ROUTING_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(60);

/// Default `[events] max_events`: events kept in memory and in the file.
pub const DEFAULT_EVENTS_MAX: u32 = 10_000;
/// Allowed `[events] max_events`.
pub const EVENTS_MAX_RANGE: RangeInclusive<u32> = 10..=1_000_000;
/// Default `[events] file` name, in the directory of `[control] state_file`.
pub const DEFAULT_EVENTS_FILE: &str = "relay-cloud-events.jsonl";
/// Most `[events] webhooks` URLs.
pub const MAX_WEBHOOKS: usize = 16;
/// Default `[events] webhook_timeout`: time one POST may take.
pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(5);
/// Allowed `[events] webhook_timeout`.
pub const WEBHOOK_TIMEOUT_RANGE: RangeInclusive<Duration> =
    Duration::from_millis(1)..=Duration::from_secs(60);
/// Default `[events] webhook_queue`: events waiting per URL.
pub const DEFAULT_WEBHOOK_QUEUE: u32 = 1000;
/// Allowed `[events] webhook_queue`.
pub const WEBHOOK_QUEUE_RANGE: RangeInclusive<u32> = 1..=100_000;
/// Default `[events] webhook_retries`: attempts after the first failed one.
pub const DEFAULT_WEBHOOK_RETRIES: u32 = 5;
/// Allowed `[events] webhook_retries`.
pub const WEBHOOK_RETRIES_RANGE: RangeInclusive<u32> = 0..=100;

/// Shortest accepted token, in bytes.
pub const MIN_TOKEN_LEN: usize = 16;
/// Longest accepted mapping name or edge id, in characters.
pub const MAX_NAME_LEN: usize = 64;

/// Serde default functions. Values that need a position later are wrapped in
/// `Spanned` with the empty span `0..0`, which means "defaulted, no position".
pub(crate) mod serde_fns {
    use super::*;
    use crate::values::{Addr, Dur};
    use toml::Spanned;

    fn unplaced<T>(value: T) -> Spanned<T> {
        Spanned::new(0..0, value)
    }

    pub(crate) fn heartbeat_interval() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_HEARTBEAT_INTERVAL))
    }
    pub(crate) fn heartbeat_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_HEARTBEAT_TIMEOUT))
    }
    pub(crate) fn handshake_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_HANDSHAKE_TIMEOUT))
    }
    pub(crate) fn max_streams_per_tunnel() -> Spanned<u32> {
        unplaced(DEFAULT_MAX_STREAMS_PER_TUNNEL)
    }
    pub(crate) fn max_tunnels_per_edge() -> Spanned<u32> {
        unplaced(DEFAULT_MAX_TUNNELS_PER_EDGE)
    }
    pub(crate) fn ipv6_source_prefix() -> Spanned<u32> {
        unplaced(DEFAULT_IPV6_SOURCE_PREFIX)
    }
    pub(crate) fn stream_window() -> Spanned<u32> {
        unplaced(DEFAULT_STREAM_WINDOW)
    }
    pub(crate) fn window_budget() -> Spanned<u32> {
        unplaced(DEFAULT_WINDOW_BUDGET)
    }
    pub(crate) fn host_routing_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_HOST_ROUTING_TIMEOUT))
    }
    pub(crate) fn shutdown_grace() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_SHUTDOWN_GRACE))
    }
    pub(crate) fn tunnels() -> Spanned<u32> {
        unplaced(DEFAULT_TUNNELS)
    }
    pub(crate) fn connect_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_CONNECT_TIMEOUT))
    }
    pub(crate) fn reconnect_initial() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_RECONNECT_INITIAL))
    }
    pub(crate) fn reconnect_max() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_RECONNECT_MAX))
    }
    pub(crate) fn control_listen() -> Spanned<Addr> {
        unplaced(Addr(DEFAULT_CONTROL_LISTEN))
    }
    pub(crate) fn control_request_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_CONTROL_REQUEST_TIMEOUT))
    }
    pub(crate) fn control_max_connections() -> Spanned<u32> {
        unplaced(DEFAULT_CONTROL_MAX_CONNECTIONS)
    }
    pub(crate) fn proxy_protocol_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_PROXY_PROTOCOL_TIMEOUT))
    }
    pub(crate) fn events_max() -> Spanned<u32> {
        unplaced(DEFAULT_EVENTS_MAX)
    }
    pub(crate) fn webhooks() -> Spanned<Vec<Spanned<String>>> {
        unplaced(Vec::new())
    }
    pub(crate) fn webhook_timeout() -> Spanned<Dur> {
        unplaced(Dur(DEFAULT_WEBHOOK_TIMEOUT))
    }
    pub(crate) fn webhook_queue() -> Spanned<u32> {
        unplaced(DEFAULT_WEBHOOK_QUEUE)
    }
    pub(crate) fn webhook_retries() -> Spanned<u32> {
        unplaced(DEFAULT_WEBHOOK_RETRIES)
    }
    pub(crate) fn log_rotation() -> LogRotation {
        DEFAULT_LOG_ROTATION
    }
}
