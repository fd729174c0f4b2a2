//! `[cluster]` of the cloud config: [`ClusterConfig`], which makes the
//! agent one node of a cluster whose shared state lives in etcd.

use std::ops::Range;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::cloud_url::CloudUrl;
use crate::control::ControlConfig;
use crate::error::{ConfigError, Doc};
use crate::values::{self, Dur};
use crate::{Secret, load};

/// Lease time-to-live when `lease_ttl` is not set: a killed node's record
/// disappears this long after its last keep-alive.
pub const DEFAULT_CLUSTER_LEASE_TTL: Duration = Duration::from_secs(5);
/// How long the answer to a change waits for the live nodes to apply it,
/// when `apply_wait` is not set.
pub const DEFAULT_CLUSTER_APPLY_WAIT: Duration = Duration::from_secs(5);
/// Key prefix when `etcd_prefix` is not set.
pub const DEFAULT_CLUSTER_PREFIX: &str = "/hybrid-relay/";
/// File name of the local copy of the last applied state, beside the
/// state file, when `local_copy` is not set.
pub const DEFAULT_CLUSTER_LOCAL_COPY: &str = "relay-cloud-cluster.json";

/// `[cluster]`: this agent is one node of a cluster. Mappings, drained
/// edges and node drains live in etcd; every node serves every mapping.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `node_id`: this node's id, unique in the cluster (name rules).
    pub node_id: String,
    /// `advertise`: the tunnel URL at which edges reach this node directly
    /// (not the load balancer's).
    pub advertise: CloudUrl,
    /// `control_url`: the control API as the other nodes reach it
    /// (`http://host:port`), so that one node can sum the cluster's
    /// figures. Default: `http://` + `[control] listen`, unless that is an
    /// unspecified address (then peers cannot ask this node).
    pub control_url: Option<String>,
    /// `etcd_endpoints`: `http://` or `https://` URLs of etcd members.
    pub etcd_endpoints: Vec<String>,
    /// `etcd_prefix`: every key of this cluster starts with it; ends in `/`.
    pub etcd_prefix: String,
    /// `etcd_ca_file`: CA that signs the etcd members' certificates
    /// (`https://` endpoints).
    pub etcd_ca_file: Option<PathBuf>,
    /// `etcd_cert_file` and `etcd_key_file`: this node's client
    /// certificate, when etcd requires one.
    pub etcd_client_cert: Option<(PathBuf, PathBuf)>,
    /// `etcd_user` and the password in `etcd_password_file`, when etcd has
    /// authentication on.
    pub etcd_user: Option<(String, Secret)>,
    /// `lease_ttl`: the node's record expires this long after the node
    /// stops renewing it (2 s to 60 s).
    pub lease_ttl: Duration,
    /// `apply_wait`: how long the answer to a change waits for the live
    /// nodes to apply it.
    pub apply_wait: Duration,
    /// `local_copy`: the last state this node applied, so that it can
    /// start and serve while etcd is unreachable.
    pub local_copy: PathBuf,
    /// `public_ip`: when set, this node binds every mapping's port on this
    /// address instead of the mapping's `listen` address (several nodes on
    /// one machine, each on its own address; or one public address of a
    /// machine that has several).
    pub public_ip: Option<std::net::IpAddr>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    node_id: Spanned<String>,
    advertise: Spanned<String>,
    control_url: Option<Spanned<String>>,
    etcd_endpoints: Spanned<Vec<Spanned<String>>>,
    etcd_prefix: Option<Spanned<String>>,
    etcd_ca_file: Option<Spanned<PathBuf>>,
    etcd_cert_file: Option<Spanned<PathBuf>>,
    etcd_key_file: Option<Spanned<PathBuf>>,
    etcd_user: Option<Spanned<String>>,
    etcd_password_file: Option<Spanned<PathBuf>>,
    lease_ttl: Option<Spanned<Dur>>,
    apply_wait: Option<Spanned<Dur>>,
    local_copy: Option<Spanned<PathBuf>>,
    public_ip: Option<Spanned<String>>,
}

const LEASE_TTL_RANGE: Range<u64> = 2..61;

impl RawCluster {
    /// Checks `[cluster]` (spanning `span`). A node needs `[control]`: its
    /// readiness, drains and changes go through the control API.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        span: Range<usize>,
        control: Option<&ControlConfig>,
    ) -> Result<ClusterConfig, ConfigError> {
        let Some(control) = control else {
            return Err(doc.error_at(
                span,
                "cluster: a cluster node needs a [control] table: the load balancer checks its \
                 /ready, and operators change and drain through it",
            ));
        };
        let node_id = values::name(doc, "cluster.node_id", &self.node_id)?;
        let advertise: CloudUrl =
            self.advertise.get_ref().parse().map_err(|e| {
                doc.error_at(self.advertise.span(), format!("cluster.advertise: {e}"))
            })?;
        let control_url = match &self.control_url {
            Some(url) => Some(http_url(doc, "cluster.control_url", url)?),
            None if control.listen.ip().is_unspecified() => None,
            None => Some(format!("http://{}", control.listen)),
        };
        if self.etcd_endpoints.get_ref().is_empty() {
            return Err(doc.error_at(
                self.etcd_endpoints.span(),
                "cluster.etcd_endpoints: at least one etcd URL, e.g. [\"http://127.0.0.1:2379\"]",
            ));
        }
        let mut etcd_endpoints = Vec::new();
        for (i, url) in self.etcd_endpoints.get_ref().iter().enumerate() {
            etcd_endpoints.push(http_url(doc, &format!("cluster.etcd_endpoints[{i}]"), url)?);
        }
        let etcd_prefix = match &self.etcd_prefix {
            None => DEFAULT_CLUSTER_PREFIX.to_owned(),
            Some(p) => {
                let v = p.get_ref();
                if !v.starts_with('/') || !v.ends_with('/') || v.len() < 2 || v.contains("//") {
                    return Err(doc.error_at(
                        p.span(),
                        format!(
                            "cluster.etcd_prefix: {v:?} must start and end with '/', e.g. \
                             \"/hybrid-relay/\""
                        ),
                    ));
                }
                v.clone()
            }
        };
        let etcd_ca_file =
            self.etcd_ca_file.as_ref().map(|p| load::path(doc, "cluster.etcd_ca_file", p));
        let etcd_client_cert = match (&self.etcd_cert_file, &self.etcd_key_file) {
            (Some(c), Some(k)) => Some((
                load::path(doc, "cluster.etcd_cert_file", c)?,
                load::path(doc, "cluster.etcd_key_file", k)?,
            )),
            (None, None) => None,
            (Some(c), None) => {
                return Err(doc.error_at(
                    c.span(),
                    "cluster.etcd_cert_file: needs etcd_key_file too (a client certificate and its key)",
                ));
            }
            (None, Some(k)) => {
                return Err(doc.error_at(
                    k.span(),
                    "cluster.etcd_key_file: needs etcd_cert_file too (a client certificate and its key)",
                ));
            }
        };
        let tls_files = etcd_ca_file.is_some() || etcd_client_cert.is_some();
        if tls_files && etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err(doc.error_at(
                self.etcd_endpoints.span(),
                "cluster.etcd_endpoints: etcd TLS files are set, so every endpoint must be https://",
            ));
        }
        let etcd_user = match (&self.etcd_user, &self.etcd_password_file) {
            (Some(user), Some(file)) => {
                let path = load::path(doc, "cluster.etcd_password_file", file)?;
                let text = std::fs::read(&path).map_err(|e| {
                    doc.error_at(
                        file.span(),
                        format!("cluster.etcd_password_file: cannot read {}: {e}", path.display()),
                    )
                })?;
                let trimmed = text.trim_ascii_end();
                if trimmed.is_empty() {
                    return Err(doc.error_at(
                        file.span(),
                        format!("cluster.etcd_password_file: {} is empty", path.display()),
                    ));
                }
                Some((user.get_ref().clone(), Secret::new(trimmed)))
            }
            (None, None) => None,
            (Some(u), None) => {
                return Err(
                    doc.error_at(u.span(), "cluster.etcd_user: needs etcd_password_file too")
                );
            }
            (None, Some(f)) => {
                return Err(
                    doc.error_at(f.span(), "cluster.etcd_password_file: needs etcd_user too")
                );
            }
        };
        let lease_ttl = match &self.lease_ttl {
            None => DEFAULT_CLUSTER_LEASE_TTL,
            Some(d) => {
                let v = d.get_ref().0;
                if v.subsec_nanos() != 0 || !LEASE_TTL_RANGE.contains(&v.as_secs()) {
                    return Err(doc.error_at(
                        d.span(),
                        format!(
                            "cluster.lease_ttl: {} must be whole seconds from 2s to 60s",
                            doc.snippet(d.span())
                        ),
                    ));
                }
                v
            }
        };
        let apply_wait = match &self.apply_wait {
            None => DEFAULT_CLUSTER_APPLY_WAIT,
            Some(d) => values::nonzero(doc, "cluster.apply_wait", d)?,
        };
        let local_copy = match &self.local_copy {
            Some(p) => load::path(doc, "cluster.local_copy", p)?,
            None => control.state_file.with_file_name(DEFAULT_CLUSTER_LOCAL_COPY),
        };
        let public_ip = match &self.public_ip {
            None => None,
            Some(ip) => Some(ip.get_ref().parse().map_err(|_| {
                doc.error_at(
                    ip.span(),
                    format!(
                        "cluster.public_ip: invalid IP address {:?}, expected e.g. \"203.0.113.7\"",
                        ip.get_ref()
                    ),
                )
            })?),
        };
        Ok(ClusterConfig {
            public_ip,
            node_id,
            advertise,
            control_url,
            etcd_endpoints,
            etcd_prefix,
            etcd_ca_file: etcd_ca_file.transpose()?,
            etcd_client_cert,
            etcd_user,
            lease_ttl,
            apply_wait,
            local_copy,
        })
    }
}

/// An `http://` or `https://` URL with a host and nothing after the
/// authority but an optional `/`.
fn http_url(doc: &Doc<'_>, key: &str, value: &Spanned<String>) -> Result<String, ConfigError> {
    let v = value.get_ref();
    let rest = v.strip_prefix("http://").or_else(|| v.strip_prefix("https://"));
    let authority = rest.map(|r| r.strip_suffix('/').unwrap_or(r));
    match authority {
        Some(a) if !a.is_empty() && !a.contains(['/', '@', ' ', '?', '#']) => {
            Ok(v.strip_suffix('/').unwrap_or(v).to_owned())
        }
        _ => Err(doc.error_at(
            value.span(),
            format!("{key}: invalid URL {v:?}, expected http://host:port or https://host:port"),
        )),
    }
}
