//! The cloud agent's config: [`CloudConfig`] and `[[edges]]`; the other
//! tables have their own modules.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cluster::{ClusterConfig, RawCluster};
use crate::control::{ControlConfig, RawControl};
use crate::defaults::{DEFAULT_CLOUD_LOG_FILE_PREFIX, HOST_ROUTING_TIMEOUT_RANGE, serde_fns};
use crate::error::{ConfigError, Doc, line_col};
use crate::events::{EventsConfig, RawEvents};
use crate::load;
use crate::log::{LogConfig, RawLog};
use crate::mapping::{MappingConfig, RawMapping};
use crate::proxy_protocol::{ProxyProtocolConfig, RawProxyProtocol};
use crate::reach::Reach;
use crate::secret::{EDGE_TOKEN_KEYS, GENERATE_HINT, Secret, TokenKeys};
use crate::tunnel::{RawTunnel, TunnelListenConfig};
use crate::values::{self, Dur};

/// `relay-cloud` configuration: where edges connect, which edges may, and
/// which public ports are relayed to which edge.
#[derive(Debug, Clone)]
pub struct CloudConfig {
    /// `[tunnel]`: the WebSocket listener for edge agents.
    pub tunnel: TunnelListenConfig,
    /// `[[edges]]`: the edges allowed to connect; ids unique; at least one
    /// unless `[control]` is there to add them at run time.
    pub edges: Vec<EdgeEntry>,
    /// `[[groups]]`: named sets of edges that can reach the same targets; a
    /// mapping may name a group instead of one edge for failover.
    pub groups: Vec<EdgeGroup>,
    /// `[[mappings]]`: public listeners relayed through an edge.
    pub mappings: Vec<MappingConfig>,
    /// `shutdown_grace`: how long open connections may drain on shutdown.
    pub shutdown_grace: Duration,
    /// `host_routing_timeout`: how long a client on a shared listen
    /// address has to name its host before it is closed.
    pub host_routing_timeout: Duration,
    /// `[control]`: the control API; `None` when the table is absent.
    pub control: Option<ControlConfig>,
    /// `[log]`: log files; `None` logs to standard error only.
    pub log: Option<LogConfig>,
    /// `[events]`: the event log and its webhooks; the defaults when the
    /// table is absent.
    pub events: EventsConfig,
    /// `[cluster]`: this agent is one node of a cluster whose state lives
    /// in etcd; `None` runs alone with the state file.
    pub cluster: Option<ClusterConfig>,
    /// `[proxy_protocol]`: the load balancers whose PROXY header every
    /// mapping listener expects; `None` takes clients directly.
    pub proxy_protocol: Option<ProxyProtocolConfig>,
    /// Problems accepted because the secret at fault is used on loopback
    /// only (a token file open to other users), each as
    /// `<file>:<line>:<col>: <key>: <problem>`; the agent logs them.
    pub warnings: Vec<String>,
}

/// `[[edges]]`: one edge allowed to connect.
#[derive(Debug, Clone)]
pub struct EdgeEntry {
    /// `id`: the edge id it authenticates as.
    pub id: String,
    /// From `token` or the file named by `token_file`.
    pub token: Secret,
}

/// `[[groups]]`: edges on different machines that can reach the same
/// destinations. New connections of a mapping that names the group go to
/// its healthy edge with the fewest open streams.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EdgeGroup {
    /// `id`: unique among edge ids and group ids.
    pub id: String,
    /// `edges`: ids of configured `[[edges]]`, at least one, no repeats.
    pub edges: Vec<String>,
}

impl CloudConfig {
    /// Reads and validates the file at `path`.
    ///
    /// # Errors
    /// [`ConfigError`] if the file cannot be read, is not valid TOML, has
    /// unknown keys or bad values, or fails validation (see the crate docs).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let (text, mode) = load::read(path)?;
        let doc = Doc { text: &text, origin: path, mode };
        load::parse::<RawCloud>(&doc)?.validate(&doc)
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
        load::parse::<RawCloud>(&doc)?.validate(&doc)
    }

    /// The `[[edges]]` entry with this id.
    pub fn edge(&self, id: &str) -> Option<&EdgeEntry> {
        self.edges.iter().find(|e| e.id == id)
    }

    /// The edges a mapping target names: the edge itself, or a group's
    /// members. Empty for an unknown name.
    pub fn edges_of(&self, target: &str) -> Vec<&str> {
        if let Some(group) = self.groups.iter().find(|g| g.id == target) {
            return group.edges.iter().map(String::as_str).collect();
        }
        self.edge(target).map(|e| vec![e.id.as_str()]).unwrap_or_default()
    }

    /// The ids of the `[[edges]]` entries, in file order.
    pub fn edge_ids(&self) -> impl Iterator<Item = &str> {
        self.edges.iter().map(|e| e.id.as_str())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    tunnel: RawTunnel,
    #[serde(default)]
    edges: Vec<Spanned<RawEdge>>,
    #[serde(default)]
    groups: Vec<Spanned<RawGroup>>,
    #[serde(default)]
    mappings: Vec<RawMapping>,
    #[serde(default = "serde_fns::shutdown_grace")]
    shutdown_grace: Spanned<Dur>,
    #[serde(default = "serde_fns::host_routing_timeout")]
    host_routing_timeout: Spanned<Dur>,
    control: Option<Spanned<RawControl>>,
    events: Option<RawEvents>,
    log: Option<RawLog>,
    cluster: Option<Spanned<RawCluster>>,
    proxy_protocol: Option<RawProxyProtocol>,
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
struct RawGroup {
    id: Spanned<String>,
    edges: Spanned<Vec<Spanned<String>>>,
}

impl RawCloud {
    fn validate(self, doc: &Doc<'_>) -> Result<CloudConfig, ConfigError> {
        let mut warnings = Vec::new();
        let tunnel = self.tunnel.validate(doc, &mut warnings)?;
        // Without the control API no edge can be added at run time.
        if self.edges.is_empty() && self.control.is_none() {
            return Err(doc.error(
                "no [[edges]] configured: add at least one [[edges]] table with `id` and \
                 `token_file` (or `token`), or a [control] section to add edges at run time \
                 (relayctl edges add)",
            ));
        }
        // Edge tokens are used on the tunnel listener.
        let reach = Reach::of_listener("tunnel.listen", tunnel.listen);
        let mut edges: Vec<EdgeEntry> = Vec::with_capacity(self.edges.len());
        let mut ids = HashMap::new();
        for (i, raw) in self.edges.into_iter().enumerate() {
            let table = format!("edges[{i}]");
            let span = raw.span();
            let raw = raw.into_inner();
            let id = values::name(doc, &format!("{table}.id"), &raw.id)?;
            unique(doc, &mut ids, &raw.id, &format!("{table}.id"), "edge id")?;
            // Where a shared token is reported: the key that was set.
            let (token_key, token_span) = match (&raw.token, &raw.token_file) {
                (Some(t), _) => ("token", t.span()),
                (None, Some(f)) => ("token_file", f.span()),
                (None, None) => ("token", span.clone()),
            };
            let token = TokenKeys {
                table: &table,
                table_span: span,
                names: EDGE_TOKEN_KEYS,
                token: raw.token,
                token_file: raw.token_file,
                reach: &reach,
            }
            .resolve(doc, &mut warnings)?;
            // The token is the edge's identity: two edges sharing one could
            // each authenticate as the other.
            if let Some((j, twin)) =
                edges.iter().enumerate().find(|(_, e)| e.token.expose() == token.expose())
            {
                return Err(doc.error_at(
                    token_span,
                    format!(
                        "{table}.{token_key}: same token as edges[{j}] ({:?}): each edge needs \
                         its own token, or one can act as the other; {GENERATE_HINT}",
                        twin.id
                    ),
                ));
            }
            edges.push(EdgeEntry { id, token });
        }
        let mut groups = Vec::with_capacity(self.groups.len());
        for (i, raw) in self.groups.into_iter().enumerate() {
            let raw = raw.into_inner();
            let id_key = format!("groups[{i}].id");
            let id = values::name(doc, &id_key, &raw.id)?;
            unique(doc, &mut ids, &raw.id, &id_key, "edge or group id")?;
            let key = format!("groups[{i}].edges");
            if raw.edges.get_ref().is_empty() {
                return Err(doc.error_at(
                    raw.edges.span(),
                    format!("{key}: a group needs at least one edge"),
                ));
            }
            let mut members = HashMap::new();
            for member in raw.edges.get_ref() {
                if !edges.iter().any(|e: &EdgeEntry| &e.id == member.get_ref()) {
                    let known: Vec<String> = edges.iter().map(|e| format!("{:?}", e.id)).collect();
                    return Err(doc.error_at(
                        member.span(),
                        format!(
                            "{key}: unknown edge {:?} (configured edges: {})",
                            member.get_ref(),
                            known.join(", ")
                        ),
                    ));
                }
                unique(doc, &mut members, member, &key, "group member")?;
            }
            let members = raw.edges.into_inner().into_iter().map(Spanned::into_inner).collect();
            groups.push(EdgeGroup { id, edges: members });
        }
        if let (Some(_), Some(first)) = (&self.cluster, self.mappings.first()) {
            return Err(doc.error_at(
                first.name.span(),
                "mappings[0]: in a cluster ([cluster]) mappings live in etcd, shared by every \
                 node: remove [[mappings]] from the file and add them with `relayctl batch` or \
                 `relayctl add`",
            ));
        }
        let mut mappings = Vec::with_capacity(self.mappings.len());
        let mut names = HashMap::new();
        for (i, raw) in self.mappings.into_iter().enumerate() {
            let key = format!("mappings[{i}].name");
            values::name(doc, &key, &raw.name)?;
            unique(doc, &mut names, &raw.name, &key, "mapping name")?;
            let mapping = raw.validate(doc, i, &tunnel, &edges, &groups, &mappings)?;
            mappings.push(mapping);
        }
        let control = match self.control {
            Some(raw) => {
                let span = raw.span();
                let raw = raw.into_inner();
                Some(raw.validate(doc, span, (&tunnel, &edges, &mappings), &mut warnings)?)
            }
            None => None,
        };
        let events = match self.events {
            Some(raw) => raw.validate(doc, control.as_ref())?,
            None => EventsConfig::defaults(control.as_ref().map(|c| c.state_file.as_path())),
        };
        let log = match self.log {
            Some(raw) => Some(raw.validate(doc, DEFAULT_CLOUD_LOG_FILE_PREFIX)?),
            None => None,
        };
        let cluster = match self.cluster {
            Some(raw) => {
                let span = raw.span();
                Some(raw.into_inner().validate(doc, span, control.as_ref())?)
            }
            None => None,
        };
        let proxy_protocol = self.proxy_protocol.map(|raw| raw.validate(doc)).transpose()?;
        let shutdown_grace = self.shutdown_grace.into_inner().0;
        let host_routing_timeout = self.host_routing_timeout.get_ref().0;
        if !HOST_ROUTING_TIMEOUT_RANGE.contains(&host_routing_timeout) {
            return Err(doc.error_at(
                self.host_routing_timeout.span(),
                format!(
                    "host_routing_timeout: {host_routing_timeout:?} is out of range, expected \
                     {:?} to {:?}",
                    HOST_ROUTING_TIMEOUT_RANGE.start(),
                    HOST_ROUTING_TIMEOUT_RANGE.end()
                ),
            ));
        }
        Ok(CloudConfig {
            tunnel,
            edges,
            groups,
            mappings,
            shutdown_grace,
            host_routing_timeout,
            control,
            log,
            events,
            cluster,
            proxy_protocol,
            warnings,
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
