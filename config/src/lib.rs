//! Configuration of the hybrid relay agents, read from TOML.
//!
//! [`CloudConfig`] is the `relay-cloud` file (tunnel listener, allowed edges,
//! public mappings, and an optional `[control]` table for the control API);
//! [`EdgeConfig`] is the `relay-edge` file (cloud URL, identity, allowed
//! destinations). Both accept an optional `[log]` table ([`LogConfig`]: log
//! files in a directory, rotated minutely, hourly, daily or never). Both
//! load in two steps: serde
//! deserializes the text into private "raw" structs that reject unknown keys,
//! then one validation pass checks ranges, names, cross references and
//! tokens and builds the public structs.
//!
//! Every [`ConfigError`] reads `<file>:<line>:<col>: <key>: <problem>`, with
//! the key as a dotted path (`mappings[1].edge`), the bad value quoted (never
//! a token) and what was expected:
//!
//! ```text
//! cloud.toml:22:8: mappings[1].edge: unknown edge "edge-b" (configured edges: "edge-a")
//! ```
//!
//! # Rules checked at load time
//! - Durations are strings such as `"2s"`, `"500ms"`, `"1m 30s"`; timeouts
//!   and intervals must not be zero.
//! - Counts lie in the ranges of [`defaults`]; `heartbeat_timeout >
//!   heartbeat_interval`; `[reconnect] initial <= max`.
//! - Tokens come from exactly one of `token` or `token_file` (whose trailing
//!   ASCII whitespace is trimmed; nothing else is, and nothing is decoded), are at least [`MIN_TOKEN_LEN`] bytes and do not
//!   look like placeholders such as `changeme`. The same rules apply to
//!   `[control]`'s `admin_token` / `admin_token_file`.
//! - Cloud: at least one `[[edges]]`, unique edge ids, unique edge tokens
//!   (an edge's token is its identity), unique mapping names, listeners
//!   that do not clash (port 0 never clashes), mappings naming a configured
//!   edge.
//! - Plain tunnels only on loopback unless chosen: a cloud without
//!   `[tunnel.tls]` listening beyond loopback, or an edge dialling `ws://`
//!   to a host that is not a loopback address or `localhost`, needs
//!   `allow_plaintext = true`.
//! - Secrets where they are used (the reach of the tunnel listener
//!   for edge tokens, of `[control] listen` for the admin token, of the
//!   `cloud_url` host for the edge's token): beyond loopback, the
//!   repository's demo tokens ([`is_demo_token`]) are refused, and so is a
//!   token file, or a config file holding a token inline, open to group or
//!   others (any of mode `0o077`, as ssh checks keys). On loopback an open
//!   file is accepted with a warning in the config's `warnings`, which the
//!   agents log. [`CloudConfig::from_toml`] text has no file mode to check.
//!   The same rule holds for `[tunnel.tls] key` (a secret) and, with the
//!   group and other *write* bits, for the edge's `ca_file` (whoever can
//!   write it chooses whom the edge trusts).
//! - Edge `pin_sha256`: base64 SHA-256 digests (32 bytes) of public keys,
//!   `wss://` only; `public_roots = false` needs a `ca_file`.
//! - `[control]` ([`ControlConfig`]): `listen` (default
//!   [`DEFAULT_CONTROL_LISTEN`]) clashes with neither `tunnel.listen` nor a
//!   mapping's `listen`; the admin token differs from every edge token, so
//!   an edge's token never opens the control API.
//! - `[log]`: `dir` is required; `file_prefix` follows the name rules;
//!   `rotation` is one of `"minutely"`, `"hourly"`, `"daily"`, `"never"`
//!   ([`LogRotation`]); `max_files`, when set, is at least 1.
//! - `[proxy_protocol]` ([`ProxyProtocolConfig`]): `from` holds at least one
//!   IP address or CIDR network; `timeout` lies in
//!   [`PROXY_PROTOCOL_TIMEOUT_RANGE`].
//! - `[events]` ([`EventsConfig`]): `max_events`, `webhook_queue` and
//!   `webhook_retries` in their ranges of [`defaults`]; `webhooks` are at
//!   most [`MAX_WEBHOOKS`] distinct `http://` URLs; `file` defaults to
//!   [`DEFAULT_EVENTS_FILE`] beside `[control] state_file`.
//! - Relative paths (`token_file`, `admin_token_file`, `[tunnel.tls]`,
//!   `ca_file`, `state_file`, `[log] dir`, `[events] file`) are resolved against the config
//!   file's directory. Only token files are read here; certificates, the
//!   state file and the log directory are the agents' business.
//!
//! # Mappings from elsewhere
//! [`MappingConfig::from_parts`] checks a mapping that arrives at run time
//! (from the control API) with the rules and messages of `[[mappings]]`,
//! reporting a [`FieldError`] (`<field>: <problem>`) instead of a position.

mod allow;
mod cloud;
mod cloud_url;
mod cluster;
mod control;
pub mod defaults;
mod edge;
mod error;
mod events;
mod host;
mod hostport;
mod load;
mod log;
mod mapping;
mod node_url;
mod parse_error;
mod policy;
mod proxy_protocol;
mod reach;
mod secret;
mod tunnel;
mod values;

pub use allow::AllowEntry;
pub use cloud::{CloudConfig, EdgeEntry, EdgeGroup};
pub use cloud_url::CloudUrl;
pub use cluster::{
    ClusterConfig, DEFAULT_CLUSTER_APPLY_WAIT, DEFAULT_CLUSTER_LEASE_TTL,
    DEFAULT_CLUSTER_LOCAL_COPY, DEFAULT_CLUSTER_PREFIX,
};
pub use control::ControlConfig;
pub use defaults::*;
pub use edge::{BackoffConfig, EdgeConfig};
pub use error::{ConfigError, FieldError};
pub use events::EventsConfig;
pub use host::{HostPattern, Specificity, normalize_host};
pub use hostport::{HostPort, ParseError};
pub use log::{LogConfig, LogRotation};
pub use mapping::{
    MAX_PROBE_TEXT, MappingConfig, PROBE_INTERVAL_RANGE, ProxyVersion, Sharing,
    check_probe_exchange, check_probe_interval, listen_sharing,
};
pub use node_url::NodeUrlError;
pub use policy::{MAX_RATE, MIN_RATE, TrafficPolicy, parse_rate, rate};
pub use proxy_protocol::ProxyProtocolConfig;
pub use secret::{Secret, is_demo_token};
pub use tunnel::{TlsFiles, TunnelListenConfig};

/// Checks an id or name given at run time (an edge id, a group id) with the
/// config file's rules: 1 to 64 characters of `[A-Za-z0-9._-]`.
///
/// # Errors
/// A [`FieldError`] for `field`, quoting the value and the rule.
pub fn check_id(field: &'static str, value: &str) -> Result<(), FieldError> {
    values::check_name(value, "id").map_err(|message| FieldError { field, message })
}
