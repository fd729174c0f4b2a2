//! The cloud agent's config: [`CloudConfig`], `[[edges]]` and `[[mappings]]`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::defaults::serde_fns;
use crate::error::{ConfigError, Doc, line_col};
use crate::secret::{Secret, TokenKeys};
use crate::tunnel::{RawTunnel, TunnelListenConfig};
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
    mappings: Vec<RawMapping>,
    #[serde(default = "serde_fns::shutdown_grace")]
    shutdown_grace: Spanned<Dur>,
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
        let mut ids = HashMap::new();
        for (i, raw) in self.edges.into_iter().enumerate() {
            let table = format!("edges[{i}]");
            let span = raw.span();
            let raw = raw.into_inner();
            let id = values::name(doc, &format!("{table}.id"), &raw.id)?;
            unique(doc, &mut ids, &raw.id, &format!("{table}.id"), "edge id")?;
            let token = TokenKeys {
                table: &table,
                table_span: span,
                token: raw.token,
                token_file: raw.token_file,
            }
            .resolve(doc)?;
            edges.push(EdgeEntry { id, token });
        }
        let mut mappings = Vec::with_capacity(self.mappings.len());
        let mut names = HashMap::new();
        for (i, raw) in self.mappings.into_iter().enumerate() {
            let key = format!("mappings[{i}].name");
            values::name(doc, &key, &raw.name)?;
            unique(doc, &mut names, &raw.name, &key, "mapping name")?;
            let mapping = raw.validate(doc, i, &tunnel, &edges, &mappings)?;
            mappings.push(mapping);
        }
        let shutdown_grace = self.shutdown_grace.into_inner().0;
        Ok(CloudConfig { tunnel, edges, mappings, shutdown_grace })
    }
}

impl RawMapping {
    /// Checks mapping `i` (whose name was already checked) against the
    /// tunnel listener, the edges and the mappings before it.
    fn validate(
        self,
        doc: &Doc<'_>,
        i: usize,
        tunnel: &TunnelListenConfig,
        edges: &[EdgeEntry],
        earlier: &[MappingConfig],
    ) -> Result<MappingConfig, ConfigError> {
        let key = |k: &str| format!("mappings[{i}].{k}");
        let listen = self.listen.get_ref().0;
        let clash = |m: String| doc.error_at(self.listen.span(), format!("{}: {m}", key("listen")));
        if overlaps(listen, tunnel.listen) {
            let msg = format!("\"{listen}\" conflicts with tunnel.listen \"{}\"", tunnel.listen);
            return Err(clash(msg));
        }
        if let Some((j, other)) =
            earlier.iter().enumerate().find(|(_, m)| overlaps(listen, m.listen))
        {
            return Err(clash(format!(
                "\"{listen}\" conflicts with mappings[{j}].listen \"{}\" (mapping {:?})",
                other.listen, other.name
            )));
        }
        let edge = self.edge.get_ref();
        if !edges.iter().any(|e| &e.id == edge) {
            let known: Vec<String> = edges.iter().map(|e| format!("{:?}", e.id)).collect();
            return Err(doc.error_at(
                self.edge.span(),
                format!(
                    "{}: unknown edge {edge:?} (configured edges: {})",
                    key("edge"),
                    known.join(", ")
                ),
            ));
        }
        let max_connections = match &self.max_connections {
            Some(v) => Some(values::in_range(doc, &key("max_connections"), v, 1..=u32::MAX)?),
            None => None,
        };
        Ok(MappingConfig {
            name: self.name.into_inner(),
            listen,
            edge: edge.clone(),
            target: self.target,
            allow: self.allow.into_iter().map(|n| n.0).collect(),
            max_connections,
        })
    }
}

/// Records `value` in `seen` with its line, failing if it was already there.
fn unique(
    doc: &Doc<'_>,
    seen: &mut HashMap<String, usize>,
    value: &Spanned<String>,
    key: &str,
    what: &str,
) -> Result<(), ConfigError> {
    let line = line_col(doc.text, value.span().start).0;
    if let Some(first) = seen.insert(value.get_ref().clone(), line) {
        let msg = format!(
            "{key}: duplicate {what} {:?} (first defined on line {first})",
            value.get_ref()
        );
        return Err(doc.error_at(value.span(), msg));
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
        assert!(overlaps(a("[::]:1"), a("[::1]:1")));
        assert!(!overlaps(a("127.0.0.1:0"), a("127.0.0.1:0")));
        assert!(!overlaps(a("0.0.0.0:0"), a("127.0.0.1:0")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.2:1")));
        assert!(!overlaps(a("[::]:1"), a("127.0.0.1:1")));
        assert!(!overlaps(a("127.0.0.1:1"), a("127.0.0.1:2")));
    }
}
