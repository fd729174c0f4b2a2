//! The edge agent's config: [`EdgeConfig`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use serde::Deserialize;
use toml::Spanned;

use crate::defaults::{self as d, DEFAULT_RECONNECT_INITIAL, DEFAULT_RECONNECT_MAX, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::log::{LogConfig, RawLog};
use crate::reach::Reach;
use crate::secret::{EDGE_TOKEN_KEYS, Secret, TokenKeys, guard_file};
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
    /// `ca_file`: PEM trust roots for `wss://` (a private CA, or the cloud's
    /// self-signed certificate), resolved against the config file's
    /// directory; not read when the config loads. When set, only these are
    /// trusted, unless `public_roots` adds the built-in ones back.
    pub ca_file: Option<PathBuf>,
    /// `public_roots`: trust the built-in Mozilla roots (webpki-roots).
    /// Default `true` without `ca_file`, `false` with it.
    pub public_roots: bool,
    /// `pin_sha256`: SHA-256 digests of public keys (SubjectPublicKeyInfo).
    /// When not empty, the cloud's certificate must, besides being trusted,
    /// carry one of these keys. Only with `wss://`.
    pub pin_sha256: Vec<[u8; 32]>,
    /// `allow_plaintext`: a `ws://` `cloud_url` may name a host beyond
    /// loopback. Off by default: after the handshake a plain tunnel is
    /// neither secret nor protected from injected frames.
    pub allow_plaintext: bool,
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
    /// Problems accepted because the cloud is on loopback (a token file
    /// open to other users), each as `<file>:<line>:<col>: <key>:
    /// <problem>`; the agent logs them.
    pub warnings: Vec<String>,
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
        let (text, mode) = load::read(path)?;
        let doc = Doc { text: &text, origin: path, mode };
        load::parse::<RawEdge>(&doc)?.validate(&doc)
    }

    /// Parses and validates `text`. `origin` names the file in messages and
    /// its directory is the base of relative paths (token files are read).
    /// Unlike [`load`](Self::load), the permissions of `origin` itself are
    /// not checked: the text did not come from it.
    ///
    /// # Errors
    /// [`ConfigError`] as for [`load`](Self::load).
    pub fn from_toml(text: &str, origin: &Path) -> Result<Self, ConfigError> {
        let doc = Doc { text, origin, mode: None };
        load::parse::<RawEdge>(&doc)?.validate(&doc)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    cloud_url: Spanned<CloudUrl>,
    #[serde(default)]
    allow_plaintext: bool,
    edge_id: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
    #[serde(default = "serde_fns::tunnels")]
    tunnels: Spanned<u32>,
    ca_file: Option<Spanned<PathBuf>>,
    public_roots: Option<Spanned<bool>>,
    #[serde(default)]
    pin_sha256: Vec<Spanned<String>>,
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
        let cloud_url = self.cloud_url.get_ref().clone();
        // The token is used on the connection to the cloud.
        let reach = Reach::of_host("cloud_url", &cloud_url.host);
        if let (false, false, Some(why)) = (cloud_url.tls, self.allow_plaintext, reach.beyond()) {
            return Err(doc.error_at(
                self.cloud_url.span(),
                format!(
                    "cloud_url: plain ws:// tunnels are refused beyond loopback ({why}): after \
                     the handshake anyone on the path can read every byte and open streams to \
                     the allowed destinations; use wss:// (the cloud then needs [tunnel.tls]), \
                     or set `allow_plaintext = true` at the top level if the network is trusted"
                ),
            ));
        }
        let mut warnings = Vec::new();
        let keys = TokenKeys {
            table: "",
            table_span: 0..0,
            names: EDGE_TOKEN_KEYS,
            token: self.token,
            token_file: self.token_file,
            reach: &reach,
        };
        let token = keys.resolve(doc, &mut warnings)?;
        let tunnels = values::in_range(doc, "tunnels", &self.tunnels, d::TUNNELS_RANGE)?;
        let ca_file = match &self.ca_file {
            Some(p) => {
                let path = load::path(doc, "ca_file", p)?;
                // Whoever can write it can add a CA this edge trusts.
                guard_file(
                    doc,
                    ("ca_file", p.span()),
                    &path,
                    0o022,
                    "CA file",
                    "let only its owner write it (`chmod go-w`)",
                    &reach,
                    &mut warnings,
                )?;
                Some(path)
            }
            None => None,
        };
        let public_roots = match &self.public_roots {
            Some(v) if !*v.get_ref() && ca_file.is_none() => {
                return Err(doc.error_at(
                    v.span(),
                    "public_roots: false without `ca_file` leaves nothing to trust; set \
                     `ca_file` to the cloud's CA certificate (or its own certificate)",
                ));
            }
            Some(v) => *v.get_ref(),
            None => ca_file.is_none(),
        };
        let pin_sha256 = pins(doc, &self.pin_sha256, &cloud_url)?;
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
            cloud_url,
            edge_id,
            token,
            tunnels,
            ca_file,
            public_roots,
            pin_sha256,
            allow_plaintext: self.allow_plaintext,
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
            warnings,
        })
    }
}

/// How to compute a pin, quoted in pin errors.
const PIN_HINT: &str = "openssl x509 -in cloud.crt -pubkey -noout | openssl pkey -pubin \
                        -outform der | openssl dgst -sha256 -binary | base64";

/// Decodes `pin_sha256`: base64 of 32 bytes, optionally written as curl's
/// `sha256//...`; only with `wss://`.
fn pins(
    doc: &Doc<'_>,
    raw: &[Spanned<String>],
    cloud_url: &CloudUrl,
) -> Result<Vec<[u8; 32]>, ConfigError> {
    if let (Some(first), false) = (raw.first(), cloud_url.tls) {
        return Err(doc.error_at(
            first.span(),
            format!(
                "pin_sha256: pins apply to wss:// only, and cloud_url is \"{cloud_url}\"; use \
                 wss:// or remove pin_sha256"
            ),
        ));
    }
    raw.iter()
        .enumerate()
        .map(|(i, pin)| {
            let text = pin.get_ref();
            let b64 = text.strip_prefix("sha256//").unwrap_or(text);
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok())
                .ok_or_else(|| {
                    doc.error_at(
                        pin.span(),
                        format!(
                            "pin_sha256[{i}]: invalid pin {text:?}: expected the base64 SHA-256 \
                             of the cloud certificate's public key (44 characters), as printed \
                             by `relay-cloud --check` or `{PIN_HINT}`"
                        ),
                    )
                })
        })
        .collect()
}

impl RawBackoff {
    fn validate(self, doc: &Doc<'_>) -> Result<BackoffConfig, ConfigError> {
        let initial = values::nonzero(doc, "reconnect.initial", &self.initial)?;
        values::ordered(doc, "reconnect.", ("initial", &self.initial), ("max", &self.max), false)?;
        Ok(BackoffConfig { initial, max: self.max.into_inner().0 })
    }
}
