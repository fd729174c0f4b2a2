//! `[tunnel]` of the cloud config: [`TunnelListenConfig`] and [`TlsFiles`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::defaults::{self as d, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::load;
use crate::reach::Reach;
use crate::secret::{OPEN_BITS, PRIVATE_FILE_HINT, guard_file};
use crate::values::{self, Addr, Dur};

/// `[tunnel]`: the listener edge agents dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelListenConfig {
    /// `listen`: socket address, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// `[tunnel.tls]`: certificate and key; `None` serves plain `ws://`.
    pub tls: Option<TlsFiles>,
    /// `allow_plaintext`: without `tls`, `listen` may be beyond loopback.
    /// Off by default: after the handshake a plain tunnel is neither secret
    /// nor protected from injected frames.
    pub allow_plaintext: bool,
    /// `heartbeat_interval`: how often each side pings.
    pub heartbeat_interval: Duration,
    /// `heartbeat_timeout`: silence after which a tunnel is dropped; greater
    /// than `heartbeat_interval`.
    pub heartbeat_timeout: Duration,
    /// `handshake_timeout`: time a new connection has to authenticate.
    pub handshake_timeout: Duration,
    /// `max_streams_per_tunnel`: concurrent relayed connections per tunnel.
    pub max_streams_per_tunnel: u32,
    /// `max_tunnels_per_edge`: concurrent tunnels one edge id may hold.
    pub max_tunnels_per_edge: u32,
    /// `ipv6_source_prefix`: IPv6 addresses whose first this many bits are
    /// equal count as one source for the unauthenticated-handshake limit.
    pub ipv6_source_prefix: u32,
    /// `stream_window`: largest flow-control window one stream's receive
    /// window grows to, in bytes (each starts at 64 KiB).
    pub stream_window: u32,
    /// `window_budget`: bytes the streams of one tunnel may add to their
    /// receive windows beyond the first 64 KiB each, together.
    pub window_budget: u32,
}

impl TunnelListenConfig {
    /// A listener on `listen` without TLS and with every default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            allow_plaintext: false,
            heartbeat_interval: d::DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: d::DEFAULT_HEARTBEAT_TIMEOUT,
            handshake_timeout: d::DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams_per_tunnel: d::DEFAULT_MAX_STREAMS_PER_TUNNEL,
            max_tunnels_per_edge: d::DEFAULT_MAX_TUNNELS_PER_EDGE,
            ipv6_source_prefix: d::DEFAULT_IPV6_SOURCE_PREFIX,
            stream_window: d::DEFAULT_STREAM_WINDOW,
            window_budget: d::DEFAULT_WINDOW_BUDGET,
        }
    }
}

/// `[tunnel.tls]`: PEM files, resolved against the config file's directory.
/// They are not read when the config loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// `cert`: certificate chain (PEM).
    pub cert: PathBuf,
    /// `key`: private key (PEM).
    pub key: PathBuf,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTunnel {
    listen: Spanned<Addr>,
    tls: Option<RawTls>,
    #[serde(default)]
    allow_plaintext: bool,
    #[serde(default = "serde_fns::heartbeat_interval")]
    heartbeat_interval: Spanned<Dur>,
    #[serde(default = "serde_fns::heartbeat_timeout")]
    heartbeat_timeout: Spanned<Dur>,
    #[serde(default = "serde_fns::handshake_timeout")]
    handshake_timeout: Spanned<Dur>,
    #[serde(default = "serde_fns::max_streams_per_tunnel")]
    max_streams_per_tunnel: Spanned<u32>,
    #[serde(default = "serde_fns::max_tunnels_per_edge")]
    max_tunnels_per_edge: Spanned<u32>,
    #[serde(default = "serde_fns::ipv6_source_prefix")]
    ipv6_source_prefix: Spanned<u32>,
    #[serde(default = "serde_fns::stream_window")]
    stream_window: Spanned<u32>,
    #[serde(default = "serde_fns::window_budget")]
    window_budget: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

impl RawTunnel {
    /// Checks `[tunnel]`; a TLS key open to other users on loopback is
    /// pushed on `warnings`.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        warnings: &mut Vec<String>,
    ) -> Result<TunnelListenConfig, ConfigError> {
        let heartbeat_interval =
            values::nonzero(doc, "tunnel.heartbeat_interval", &self.heartbeat_interval)?;
        let heartbeat_timeout =
            values::nonzero(doc, "tunnel.heartbeat_timeout", &self.heartbeat_timeout)?;
        values::ordered(
            doc,
            "tunnel.",
            ("heartbeat_interval", &self.heartbeat_interval),
            ("heartbeat_timeout", &self.heartbeat_timeout),
            true,
        )?;
        let listen = self.listen.get_ref().0;
        let reach = Reach::of_listener("tunnel.listen", listen);
        let tls = match self.tls {
            Some(tls) => {
                let key = load::path(doc, "tunnel.tls.key", &tls.key)?;
                // As ssh checks keys; the certificate itself is public.
                guard_file(
                    doc,
                    ("tunnel.tls.key", tls.key.span()),
                    &key,
                    OPEN_BITS,
                    "private key file",
                    PRIVATE_FILE_HINT,
                    &reach,
                    warnings,
                )?;
                Some(TlsFiles { cert: load::path(doc, "tunnel.tls.cert", &tls.cert)?, key })
            }
            None => None,
        };
        if let (None, false, Some(why)) = (&tls, self.allow_plaintext, reach.beyond()) {
            return Err(doc.error_at(
                self.listen.span(),
                format!(
                    "tunnel.listen: plain ws:// tunnels are refused beyond loopback ({why}): \
                     after the handshake anyone on the path can read every byte and inject \
                     streams; add [tunnel.tls] with `cert` and `key` (edges then dial wss://), \
                     or set `allow_plaintext = true` in [tunnel] if the network is trusted or \
                     a TLS proxy sits in front"
                ),
            ));
        }
        let count = |key: &str, value: &Spanned<u32>, range| {
            values::in_range(doc, &format!("tunnel.{key}"), value, range)
        };
        Ok(TunnelListenConfig {
            listen,
            tls,
            allow_plaintext: self.allow_plaintext,
            heartbeat_interval,
            heartbeat_timeout,
            handshake_timeout: values::nonzero(
                doc,
                "tunnel.handshake_timeout",
                &self.handshake_timeout,
            )?,
            max_streams_per_tunnel: count(
                "max_streams_per_tunnel",
                &self.max_streams_per_tunnel,
                d::MAX_STREAMS_PER_TUNNEL_RANGE,
            )?,
            max_tunnels_per_edge: count(
                "max_tunnels_per_edge",
                &self.max_tunnels_per_edge,
                d::MAX_TUNNELS_PER_EDGE_RANGE,
            )?,
            ipv6_source_prefix: count(
                "ipv6_source_prefix",
                &self.ipv6_source_prefix,
                d::IPV6_SOURCE_PREFIX_RANGE,
            )?,
            stream_window: count("stream_window", &self.stream_window, d::STREAM_WINDOW_RANGE)?,
            // Any u32 is allowed (0: no stream grows); the TOML type check
            // already refused the rest, with its position.
            window_budget: self.window_budget.into_inner(),
        })
    }
}
