//! Configuration of the hybrid relay agents, read from TOML.
//!
//! [`CloudConfig`] is the `relay-cloud` file (tunnel listener, allowed edges,
//! public mappings); [`EdgeConfig`] is the `relay-edge` file (cloud URL,
//! identity, allowed destinations). Both load in two steps: serde
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
//!   whitespace is trimmed), are at least [`MIN_TOKEN_LEN`] bytes and do not
//!   look like placeholders such as `changeme`.
//! - Cloud: at least one `[[edges]]`, unique edge ids and mapping names,
//!   listeners that do not clash (port 0 never clashes), mappings naming a
//!   configured edge.
//! - Relative paths (`token_file`, `[tunnel.tls]`, `ca_file`) are resolved
//!   against the config file's directory. Only token files are read here;
//!   certificates are the agents' business.

mod cloud;
mod cloud_url;
pub mod defaults;
mod edge;
mod error;
mod hostport;
mod load;
mod parse_error;
mod secret;
mod tunnel;
mod values;

pub use cloud::{CloudConfig, EdgeEntry, MappingConfig};
pub use cloud_url::CloudUrl;
pub use defaults::*;
pub use edge::{BackoffConfig, EdgeConfig};
pub use error::ConfigError;
pub use hostport::{HostPort, ParseError};
pub use secret::Secret;
pub use tunnel::{TlsFiles, TunnelListenConfig};
