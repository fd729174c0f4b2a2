//! The edge agent's config: [`EdgeConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::defaults::{self as d, DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::log::{LogConfig, RawLog};
use crate::secret::{EDGE_TOKEN_KEYS, Secret, TokenKeys};
use crate::values::{self, Dur};
use crate::{AllowEntry, CloudUrl, load};

/// `relay-edge` configuration: which cloud to dial, as whom, and which
/// destinations it may connect to.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// `cloud_url`: the cloud agent's tunnel endpoint.
    pub cloud_url: CloudUrl,
    /// `edge_id`: the id this edge authenticates as.
    pub edge_id: String,
    /// From `token` or the file named by `token_file`.
    pub token: Secret,
    /// `tunnels`: parallel tunnels to keep open.
    pub tunnels: u32,
    /// `ca_file`: extra PEM trust root for `wss://`, resolved against the
    /// config file's directory; not read when the config loads.
    pub ca_file: Option<PathBuf>,
    /// `allow`: the destinations this edge may connect to: names and
    /// addresses (`host:port`) and networks (`10.0.0.0/8:22`).
    pub allow: Vec<AllowEntry>,
    /// `check_resolved`: connect to a name only at resolved addresses that
    /// an address entry of `allow` admits too. Validation makes sure one
    /// exists when this is set.
    pub check_resolved: bool,
    /// `connect_timeout`: limit on connecting to a destination.
    pub connect_timeout: Duration,
    /// `[reconnect]`: backoff between failed tunnel attempts.
    pub reconnect: BackoffConfig,
    /// `shutdown_grace`: how long open connections may drain on shutdown.
    pub shutdown_grace: Duration,
    /// `stream_window`: largest receive window one stream grows to, for
    /// data towards the edge, in bytes (each starts at 64 KiB).
    pub stream_window: u32,
    /// `window_budget`: bytes the streams of one tunnel may grow their
    /// receive windows by beyond the first 64 KiB each, together.
    pub window_budget: u32,
    /// `[log]`: log files; `None` logs to standard error only.
    pub log: Option<LogConfig>,
}

/// `[reconnect]`: exponential backoff bounds, `0 < initial <= max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// `initial`: first delay.
    pub initial: Duration,
    /// `max`: upper bound on the delay.
    pub max: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self { initial: DEFAULT_RECONNECT_INITIAL, max: DEFAULT_RECONNECT_MAX }
    }
}

impl EdgeConfig {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] if the file cannot be read, is not valid TOML, has
    /// unknown keys or bad values, or fails validation (see the crate docs).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::from_toml(&load::read(path)?, path)
    }

    /// Parses and validates `text`. `origin` names the file in messages and
    /// its directory is the base of relative paths (token files are read).
    ///
    /// # Errors
    /// [`ConfigError`] as for [`load`](Self::load).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let doc = Doc { text, origin };
        load::parse::<RawEdge>(&doc)?.validate(&doc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    cloud_url: CloudUrl,
    edge_id: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default = "serde_fns::tunnels")]
    tunnels: Spanned<u32>,
    ca_file: Option<Spanned<PathBuf>>,
    #[serde(default)]
    allow: Vec<AllowEntry>,
    check_resolved: Option<Spanned<bool>>,
    #[serde(default = "serde_fns::connect_timeout")]
    connect_timeout: Spanned<Dur>,
    #[serde(default)]
    reconnect: RawBackoff,
    #[serde(default = "serde_fns::shutdown_grace")]
    shutdown_grace: Spanned<Dur>,
    #[serde(default = "serde_fns::stream_window")]
    stream_window: Spanned<u32>,
    #[serde(default = "serde_fns::window_budget")]
    window_budget: Spanned<u32>,
    log: Option<RawLog>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackoff {
    #[serde(default = "serde_fns::reconnect_initial")]
    initial: Spanned<Dur>,
    #[serde(default = "serde_fns::reconnect_max")]
    max: Spanned<Dur>,
}

impl Default for RawBackoff {
    fn default() -> Self {
        Self { initial: serde_fns::reconnect_initial(), max: serde_fns::reconnect_max() }
    }
}

impl RawEdge {
    fn validate(self, doc: &Doc<'_>) -> Result<EdgeConfig, ConfigError> {
        let edge_id = values::name(doc, "edge_id", &self.edge_id)?;
        let keys = TokenKeys {
            table: "",
            table_span: 0..0,
            names: EDGE_TOKEN_KEYS,
            token: self.token,
            token_file: self.token_file,
        };
        let token = keys.resolve(doc)?;
        let tunnels = values::in_range(doc, "tunnels", &self.tunnels, d::TUNNELS_RANGE)?;
        let ca_file = match &self.ca_file {
            Some(p) => Some(load::path(doc, "ca_file", p)?),
            None => None,
        };
        let check_resolved = self.check_resolved.as_ref().is_some_and(|c| *c.get_ref());
        if let Some(c) = self.check_resolved.as_ref().filter(|_| check_resolved)
            && !self.allow.iter().any(AllowEntry::is_address)
        {
            return Err(doc.error_at(
                c.span(),
                "check_resolved: true, but `allow` has no IP or network entry, so every name \
                 would be refused; add the networks the names must resolve into, such as \
                 \"10.0.0.0/8:*\"",
            ));
        }
        Ok(EdgeConfig {
            cloud_url: self.cloud_url,
            edge_id,
            token,
            tunnels,
            ca_file,
            allow: self.allow,
            check_resolved,
            connect_timeout: values::nonzero(doc, "connect_timeout", &self.connect_timeout)?,
            reconnect: self.reconnect.validate(doc)?,
            shutdown_grace: self.shutdown_grace.into_inner().0,
            stream_window: values::in_range(
                doc,
                "stream_window",
                &self.stream_window,
                d::STREAM_WINDOW_RANGE,
            )?,
            // Any u32 is allowed (0: no stream grows); the TOML type check
            // already refused the rest, with its position.
            window_budget: self.window_budget.into_inner(),
            log: match self.log {
                Some(raw) => Some(raw.validate(doc, d::DEFAULT_EDGE_LOG_FILE_PREFIX)?),
                None => None,
            },
        })
    }
}

impl RawBackoff {
    fn validate(self, doc: &Doc<'_>) -> Result<BackoffConfig, ConfigError> {
        let initial = values::nonzero(doc, "reconnect.initial", &self.initial)?;
        values::ordered(doc, "reconnect.", ("initial", &self.initial), ("max", &self.max), false)?;
        Ok(BackoffConfig { initial, max: self.max.into_inner().0 })
    }
}
