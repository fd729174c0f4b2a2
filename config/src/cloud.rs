//! The cloud agent's config: [`CloudConfig`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::defaults::{self as d, DEFAULT_HANDSHAKE_TIMEOUT, DEFAULT_HEARTBEAT_INTERVAL};
use crate::error::{ConfigError, Doc, line_col};
use crate::secret::{Secret, TokenKeys};
use crate::values::{self, Addr, Dur, Net};
use crate::{HostPort, load};

/// `relay-cloud` configuration: where edges connect, which edges may, and
/// which public ports are relayed to which edge.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// `[tunnel]`: the WebSocket listener for edge agents.
    pub tunnel: TunnelListenConfig,
    /// `[[edges]]`: the edges allowed to connect; at least one, ids unique.
    pub edges: Vec<EdgeEntry>,
    /// `[[mappings]]`: public listeners relayed through an edge.
    pub mappings: Vec<MappingConfig>,
    /// `shutdown_grace`: how long open connections may drain on shutdown.
    pub shutdown_grace: Duration,
}

/// `[tunnel]`: the listener edge agents dial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TunnelListenConfig {
    /// `listen`: socket address, e.g. `0.0.0.0:8443`.
    pub listen: SocketAddr,
    /// `[tunnel.tls]`: certificate and key; `None` serves plain `ws://`.
    pub tls: Option<TlsFiles>,
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
    /// `stream_window`: per-stream flow-control window, in bytes.
    pub stream_window: u32,
}

impl TunnelListenConfig {
    /// A listener on `listen` without TLS and with every default.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            tls: None,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            heartbeat_timeout: d::DEFAULT_HEARTBEAT_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            max_streams_per_tunnel: d::DEFAULT_MAX_STREAMS_PER_TUNNEL,
            max_tunnels_per_edge: d::DEFAULT_MAX_TUNNELS_PER_EDGE,
            stream_window: d::DEFAULT_STREAM_WINDOW,
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

/// `[[edges]]`: one edge allowed to connect.
#[derive(Debug, Clone)]
pub struct EdgeEntry {
    /// `id`: the edge id it authenticates as.
    pub id: String,
    /// From `token` or the file named by `token_file`.
    pub token: Secret,
}

/// `[[mappings]]`: a public listener whose connections are relayed through
/// an edge to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingConfig {
    /// `name`: unique, 1..=64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// `listen`: unique socket address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `edge`: the id of a configured `[[edges]]` entry.
    pub edge: String,
    /// `target`: the `host:port` the edge connects to.
    pub target: HostPort,
    /// `allow`: client networks; empty means any client.
    pub allow: Vec<IpNet>,
    /// `max_connections`: concurrent client connections, unlimited if `None`.
    pub max_connections: Option<u32>,
}

impl CloudConfig {
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
        load::parse::<RawCloud>(&doc)?.validate(&doc)
    }

    /// The `[[edges]]` entry with this id.
    pub fn edge(&self, id: &str) -> Option<&EdgeEntry> {
        self.edges.iter().find(|e| e.id == id)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    tunnel: RawTunnel,
    #[serde(default)]
    edges: Vec<Spanned<RawEdge>>,
    #[serde(default)]
    mappings: Vec<Spanned<RawMapping>>,
    #[serde(default = "d::serde_fns::shutdown_grace")]
    shutdown_grace: Spanned<Dur>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTunnel {
    listen: Spanned<Addr>,
    tls: Option<RawTls>,
    #[serde(default = "d::serde_fns::heartbeat_interval")]
    heartbeat_interval: Spanned<Dur>,
    #[serde(default = "d::serde_fns::heartbeat_timeout")]
    heartbeat_timeout: Spanned<Dur>,
    #[serde(default = "d::serde_fns::handshake_timeout")]
    handshake_timeout: Spanned<Dur>,
    #[serde(default = "d::serde_fns::max_streams_per_tunnel")]
    max_streams_per_tunnel: Spanned<u32>,
    #[serde(default = "d::serde_fns::max_tunnels_per_edge")]
    max_tunnels_per_edge: Spanned<u32>,
    #[serde(default = "d::serde_fns::stream_window")]
    stream_window: Spanned<u32>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: Spanned<PathBuf>,
    key: Spanned<PathBuf>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEdge {
    id: Spanned<String>,
    token: Option<Spanned<String>>,
    token_file: Option<Spanned<PathBuf>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMapping {
    name: Spanned<String>,
    listen: Spanned<Addr>,
    edge: Spanned<String>,
    target: HostPort,
    #[serde(default)]
    allow: Vec<Net>,
    max_connections: Option<Spanned<u32>>,
}

impl RawCloud {
    fn validate(self, doc: &Doc<'_>) -> Result<CloudConfig, ConfigError> {
        let tunnel = self.tunnel.validate(doc)?;
        if self.edges.is_empty() {
            return Err(doc.error(
                "no [[edges]] configured: add at least one [[edges]] table with `id` and \
                 `token_file` (or `token`)",
            ));
        }
        let mut edges = Vec::with_capacity(self.edges.len());
        let mut edge_ids = HashMap::new();
        for (i, raw) in self.edges.into_iter().enumerate() {
            let span = raw.span();
            let raw = raw.into_inner();
            let table = format!("edges[{i}]");
            let id = values::name(doc, &format!("{table}.id"), &raw.id)?;
            unique(doc, &mut edge_ids, &raw.id, &format!("{table}.id"), "edge id")?;
            let keys = TokenKeys {
                table: &table,
                table_span: span,
                token: raw.token,
                token_file: raw.token_file,
            };
            edges.push(EdgeEntry { id, token: keys.resolve(doc)? });
        }
        let mut mappings: Vec<MappingConfig> = Vec::with_capacity(self.mappings.len());
        let mut names = HashMap::new();
        for (i, raw) in self.mappings.into_iter().enumerate() {
            let raw = raw.into_inner();
            let key = |k: &str| format!("mappings[{i}].{k}");
            let name = values::name(doc, &key("name"), &raw.name)?;
            unique(doc, &mut names, &raw.name, &key("name"), "mapping name")?;
            let listen = raw.listen.get_ref().0;
            let clash =
                |m: String| doc.error_at(raw.listen.span(), format!("{}: {m}", key("listen")));
            if overlaps(listen, tunnel.listen) {
                return Err(clash(format!(
                    "\"{listen}\" conflicts with tunnel.listen \"{}\"",
                    tunnel.listen
                )));
            }
            if let Some((j, other)) =
                mappings.iter().enumerate().find(|(_, m)| overlaps(listen, m.listen))
            {
                return Err(clash(format!(
                    "\"{listen}\" conflicts with mappings[{j}].listen \"{}\" (mapping {:?})",
                    other.listen, other.name
                )));
            }
            let edge = raw.edge.get_ref();
            if !edges.iter().any(|e| &e.id == edge) {
                let known: Vec<String> = edges.iter().map(|e| format!("{:?}", e.id)).collect();
                return Err(doc.error_at(
                    raw.edge.span(),
                    format!(
                        "{}: unknown edge {edge:?} (configured edges: {})",
                        key("edge"),
                        known.join(", ")
                    ),
                ));
            }
            let max_connections = match &raw.max_connections {
                Some(v) => Some(values::in_range(doc, &key("max_connections"), v, 1..=u32::MAX)?),
                None => None,
            };
            mappings.push(MappingConfig {
                name,
                listen,
                edge: edge.clone(),
                target: raw.target,
                allow: raw.allow.into_iter().map(|n| n.0).collect(),
                max_connections,
            });
        }
        let shutdown_grace = self.shutdown_grace.into_inner().0;
        Ok(CloudConfig { tunnel, edges, mappings, shutdown_grace })
    }
}

impl RawTunnel {
    fn validate(self, doc: &Doc<'_>) -> Result<TunnelListenConfig, ConfigError> {
        let interval = values::nonzero(doc, "tunnel.heartbeat_interval", &self.heartbeat_interval)?;
        let timeout = values::nonzero(doc, "tunnel.heartbeat_timeout", &self.heartbeat_timeout)?;
        values::ordered(
            doc,
            "tunnel.",
            ("heartbeat_interval", &self.heartbeat_interval),
            ("heartbeat_timeout", &self.heartbeat_timeout),
            true,
        )?;
        let tls = match self.tls {
            Some(tls) => Some(TlsFiles {
                cert: load::path(doc, "tunnel.tls.cert", &tls.cert)?,
                key: load::path(doc, "tunnel.tls.key", &tls.key)?,
            }),
            None => None,
        };
        Ok(TunnelListenConfig {
            listen: self.listen.get_ref().0,
            tls,
            heartbeat_interval: interval,
            heartbeat_timeout: timeout,
            handshake_timeout: values::nonzero(
                doc,
                "tunnel.handshake_timeout",
                &self.handshake_timeout,
            )?,
            max_streams_per_tunnel: values::in_range(
                doc,
                "tunnel.max_streams_per_tunnel",
                &self.max_streams_per_tunnel,
                d::MAX_STREAMS_PER_TUNNEL_RANGE,
            )?,
            max_tunnels_per_edge: values::in_range(
                doc,
                "tunnel.max_tunnels_per_edge",
                &self.max_tunnels_per_edge,
                d::MAX_TUNNELS_PER_EDGE_RANGE,
            )?,
            stream_window: values::in_range(
                doc,
                "tunnel.stream_window",
                &self.stream_window,
                d::STREAM_WINDOW_RANGE,
            )?,
        })
    }
}

/// Records `value` in `seen`, failing if it was already there.
fn unique(
    doc: &Doc<'_>,
    seen: &mut HashMap<String, usize>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<(), ConfigError> {
    let line = line_col(doc.text, value.span().start).0;
    if let Some(first) = seen.insert(value.get_ref().clone(), line) {
        return Err(doc.error_at(
            value.span(),
            format!(
                "{key}: duplicate {what} {:?} (first defined on line {first})",
                value.get_ref()
            ),
        ));
    }
    Ok(())
}

/// Whether two listeners would fight over a port: same non-zero port and the
/// same address, or a wildcard address of the same family.
fn overlaps(a: SocketAddr, b: SocketAddr) -> bool {
    let wildcard =
        (a.ip().is_unspecified() || b.ip().is_unspecified()) && a.is_ipv4() == b.is_ipv4();
    a.port() != 0 && a.port() == b.port() && (a.ip() == b.ip() || wildcard)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlap_rules() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert!(overlaps(a("127.0.0.1:1"), a("127.0.0.1:1")));
        assert!(overlaps(a("0.0.0.0:1"), a("127.0.0.1:1")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(!overlaps(a("[::]:1"), a("127.0.0.1:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
    }
}
