//! `[[mappings]]` of the cloud config: [`MappingConfig`], checked from the
//! file or, with [`MappingConfig::from_parts`], from strings that arrive at
//! run time. Both paths share the rules and messages of [`values`].

use std::net::SocketAddr;

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::defaults::MAX_CONNECTIONS_RANGE;
use crate::error::{ConfigError, Doc, FieldError};
use crate::policy::{Rate, TrafficPolicy};
use crate::tunnel::TunnelListenConfig;
use crate::values::{self, Addr, Net};
use crate::{EdgeEntry, EdgeGroup, HostPattern, HostPort};

/// `[[mappings]]`: a public listener whose connections are relayed through
/// an edge to a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MappingConfig {
    /// `name`: unique, 1..=64 characters of `[A-Za-z0-9._-]`.
    pub name: String,
    /// `listen`: unique socket address; port 0 picks a free port.
    pub listen: SocketAddr,
    /// `edge`: the id of a configured `[[edges]]` entry or `[[groups]]`
    /// entry (several edges that can all reach the target).
    pub edge: String,
    /// `target`: the `host:port` the edge connects to.
    pub target: HostPort,
    /// `allow`: client networks; empty means any client.
    pub allow: Vec<IpNet>,
    /// `max_connections`: concurrent client connections, unlimited if `None`.
    pub max_connections: Option<u32>,
    /// `probe_interval`: how often the cloud checks, through the edge, that
    /// `target` takes connections (1 s to 1 h); no probe if `None`.
    pub probe_interval: Option<std::time::Duration>,
    /// `probe_send`: what the probe writes after connecting (needs
    /// `probe_expect`).
    pub probe_send: Option<String>,
    /// `probe_expect`: text the service must answer with for the probe to
    /// pass (needs `probe_interval`).
    pub probe_expect: Option<String>,
    /// `proxy_protocol`: the PROXY protocol header the edge writes to
    /// `target` before the client's bytes, naming the real client; none if
    /// `None`.
    pub proxy_protocol: Option<ProxyVersion>,
    /// `host`: on a listen address several mappings share, the name this
    /// one takes (TLS server name or HTTP `Host`); a mapping without one
    /// owns its address alone.
    pub host: Option<HostPattern>,
    /// Caps per client and byte rates, enforced by the cloud.
    pub policy: TrafficPolicy,
}

/// A PROXY protocol version, as `proxy_protocol = "v1"` or `"v2"` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProxyVersion {
    /// The text header (`PROXY TCP4 ...`).
    V1,
    /// The binary header, which also carries the TLS server name.
    V2,
}

impl std::fmt::Display for ProxyVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ProxyVersion::V1 => "v1",
            ProxyVersion::V2 => "v2",
        })
    }
}

impl std::str::FromStr for ProxyVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "v1" => Ok(ProxyVersion::V1),
            "v2" => Ok(ProxyVersion::V2),
            _ => Err(format!("{s:?} is not a PROXY protocol version: expected \"v1\" or \"v2\"")),
        }
    }
}

/// Shortest and longest `probe_interval`.
pub const PROBE_INTERVAL_RANGE: std::ops::RangeInclusive<std::time::Duration> =
    std::time::Duration::from_secs(1)..=std::time::Duration::from_secs(3600);

/// Longest `probe_send` or `probe_expect`, bytes (one frame's text).
pub const MAX_PROBE_TEXT: usize = 255;

/// Checks a probe's send/expect: `probe_expect` non-empty and needed by
/// `probe_send`, both needing `probe_interval`, each at most
/// [`MAX_PROBE_TEXT`] bytes. Returns the field at fault and why.
///
/// # Errors
/// `(field, message)`.
pub fn check_probe_exchange(
    send: Option<&str>,
    expect: Option<&str>,
    has_interval: bool,
) -> Result<(), (&'static str, String)> {
    for (field, value) in [("probe_send", send), ("probe_expect", expect)] {
        if value.is_some_and(|v| v.len() > MAX_PROBE_TEXT) {
            return Err((field, format!("longer than {MAX_PROBE_TEXT} bytes")));
        }
    }
    match (send, expect) {
        (_, Some("")) => Err(("probe_expect", "must not be empty".to_owned())),
        (Some(_), None) => {
            Err(("probe_send", "needs probe_expect: what the service must answer".to_owned()))
        }
        (_, Some(_)) if !has_interval => {
            Err(("probe_expect", "needs probe_interval: how often to probe".to_owned()))
        }
        _ => Ok(()),
    }
}

/// Checks a probe interval against [`PROBE_INTERVAL_RANGE`].
///
/// # Errors
/// A message saying the range.
pub fn check_probe_interval(d: std::time::Duration) -> Result<std::time::Duration, String> {
    if PROBE_INTERVAL_RANGE.contains(&d) {
        Ok(d)
    } else {
        Err(format!("{d:?} is out of range, expected 1s to 1h"))
    }
}

impl MappingConfig {
    /// Builds and checks a mapping from strings, e.g. a request to the
    /// control API, with the rules and messages of a `[[mappings]]` table:
    /// `name` and `edge` are 1..=64 characters of `[A-Za-z0-9._-]`, `listen`
    /// is `IP:port`, `target` is a [`HostPort`], each `allow` entry is a
    /// CIDR or a bare IP, and `max_connections` is at least 1.
    ///
    /// Only the value itself is checked: whether `edge` is configured and
    /// whether `listen` clashes with another listener is the caller's
    /// business.
    ///
    /// # Errors
    /// [`FieldError`] naming the first bad field, e.g. ``listen: invalid
    /// socket address "1.2.3": expected IP:port such as "0.0.0.0:8443" ...``.
    pub fn from_parts(
        name: &str,
        listen: &str,
        edge: &str,
        target: &str,
        allow: &[String],
        max_connections: Option<u32>,
    ) -> Result<MappingConfig, FieldError> {
        let field = |field: &'static str| move |message: String| FieldError { field, message };
        values::check_name(name, "name").map_err(field("name"))?;
        let listen = values::parse_addr(listen).map_err(field("listen"))?;
        values::check_name(edge, "name").map_err(field("edge"))?;
        let target = target.parse::<HostPort>().map_err(|e| field("target")(e.to_string()))?;
        let allow = allow
            .iter()
            .map(|a| values::parse_net(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(field("allow"))?;
        let max_connections = match max_connections {
            Some(v) => Some(
                values::check_range(v, MAX_CONNECTIONS_RANGE).map_err(field("max_connections"))?,
            ),
            None => None,
        };
        Ok(MappingConfig {
            name: name.to_owned(),
            listen,
            edge: edge.to_owned(),
            target,
            allow,
            max_connections,
            probe_interval: None,
            probe_send: None,
            probe_expect: None,
            proxy_protocol: None,
            host: None,
            policy: TrafficPolicy::default(),
        })
    }

    /// The rules between fields, for both the file and the API: which
    /// settings cannot go together. Returns the field at fault and why.
    ///
    /// # Errors
    /// `(field, message)`.
    pub fn check_combination(&self) -> Result<(), (&'static str, String)> {
        self.policy.check()?;
        if self.proxy_protocol.is_some() && self.probe_expect.is_some() {
            return Err((
                "probe_expect",
                "not with proxy_protocol: a probe writes no PROXY header, so a service that \
                 expects one would not answer it (a probe without send/expect still checks the \
                 connect)"
                    .to_owned(),
            ));
        }
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMapping {
    pub(crate) name: Spanned<String>,
    listen: Spanned<Addr>,
    edge: Spanned<String>,
    target: HostPort,
    #[serde(default)]
    allow: Vec<Net>,
    max_connections: Option<Spanned<u32>>,
    probe_interval: Option<Spanned<values::Dur>>,
    probe_send: Option<Spanned<String>>,
    probe_expect: Option<Spanned<String>>,
    proxy_protocol: Option<Spanned<ProxyVersion>>,
    host: Option<Spanned<HostPattern>>,
    max_connections_per_client: Option<Spanned<u32>>,
    new_connections_per_client: Option<Spanned<u32>>,
    rate_limit_in: Option<Spanned<Rate>>,
    rate_limit_out: Option<Spanned<Rate>>,
}

impl RawMapping {
    /// Checks mapping `i` (whose name was already checked) against the
    /// tunnel listener, the edges and the mappings before it.
    pub(crate) fn validate(
        self,
        doc: &Doc<'_>,
        i: usize,
        tunnel: &TunnelListenConfig,
        edges: &[EdgeEntry],
        groups: &[EdgeGroup],
        earlier: &[MappingConfig],
    ) -> Result<MappingConfig, ConfigError> {
        let key = |k: &str| format!("mappings[{i}].{k}");
        let listen = self.listen.get_ref().0;
        let host = self.host.as_ref().map(|h| h.get_ref());
        if let Some(m) = listen_clash(listen, host, &format!("\"{listen}\""), tunnel, earlier) {
            return Err(doc.error_at(self.listen.span(), format!("{}: {m}", key("listen"))));
        }
        let edge = self.edge.get_ref();
        if !edges.iter().any(|e| &e.id == edge) && !groups.iter().any(|g| &g.id == edge) {
            let known: Vec<String> = edges
                .iter()
                .map(|e| &e.id)
                .chain(groups.iter().map(|g| &g.id))
                .map(|id| format!("{id:?}"))
                .collect();
            return Err(doc.error_at(
                self.edge.span(),
                format!(
                    "{}: unknown edge or group {edge:?} (configured: {})",
                    key("edge"),
                    known.join(", ")
                ),
            ));
        }
        let max_connections = match &self.max_connections {
            Some(v) => {
                Some(values::in_range(doc, &key("max_connections"), v, MAX_CONNECTIONS_RANGE)?)
            }
            None => None,
        };
        let probe_interval =
            match &self.probe_interval {
                Some(v) => Some(check_probe_interval(v.get_ref().0).map_err(|m| {
                    doc.error_at(v.span(), format!("{}: {m}", key("probe_interval")))
                })?),
                None => None,
            };
        let (send, expect) = (self.probe_send.as_ref(), self.probe_expect.as_ref());
        if let Err((field, m)) = check_probe_exchange(
            send.map(|s| s.get_ref().as_str()),
            expect.map(|s| s.get_ref().as_str()),
            probe_interval.is_some(),
        ) {
            let span = if field == "probe_send" { send } else { expect.or(send) };
            let span = span.map_or_else(|| self.name.span(), Spanned::span);
            return Err(doc.error_at(span, format!("{}: {m}", key(field))));
        }
        let spans = [
            ("probe_expect", self.probe_expect.as_ref().map(Spanned::span)),
            ("proxy_protocol", self.proxy_protocol.as_ref().map(Spanned::span)),
            (
                "max_connections_per_client",
                self.max_connections_per_client.as_ref().map(Spanned::span),
            ),
            (
                "new_connections_per_client",
                self.new_connections_per_client.as_ref().map(Spanned::span),
            ),
            ("rate_limit_in", self.rate_limit_in.as_ref().map(Spanned::span)),
            ("rate_limit_out", self.rate_limit_out.as_ref().map(Spanned::span)),
        ];
        let policy = TrafficPolicy {
            max_connections_per_client: self.max_connections_per_client.map(Spanned::into_inner),
            new_connections_per_client: self.new_connections_per_client.map(Spanned::into_inner),
            rate_limit_in: self.rate_limit_in.map(|r| r.into_inner().0),
            rate_limit_out: self.rate_limit_out.map(|r| r.into_inner().0),
        };
        let mapping = MappingConfig {
            name: self.name.get_ref().clone(),
            listen,
            edge: edge.clone(),
            target: self.target,
            allow: self.allow.into_iter().map(|n| n.0).collect(),
            max_connections,
            probe_interval,
            probe_send: self.probe_send.map(Spanned::into_inner),
            probe_expect: self.probe_expect.map(Spanned::into_inner),
            proxy_protocol: self.proxy_protocol.map(Spanned::into_inner),
            host: self.host.map(Spanned::into_inner),
            policy,
        };
        if let Err((field, m)) = mapping.check_combination() {
            let span = spans.iter().find(|(f, _)| *f == field).and_then(|(_, s)| s.clone());
            let span = span.unwrap_or_else(|| self.name.span());
            return Err(doc.error_at(span, format!("{}: {m}", key(field))));
        }
        Ok(mapping)
    }
}

/// Why `listen` (shown as `shown`), for a mapping routing `host` (none
/// for the control listener), cannot be used next to the tunnel listener
/// and `mappings`, or `None` if it clashes with neither.
pub(crate) fn listen_clash(
    listen: SocketAddr,
    host: Option<&HostPattern>,
    shown: &str,
    tunnel: &TunnelListenConfig,
    mappings: &[MappingConfig],
) -> Option<String> {
    if overlaps(listen, tunnel.listen) {
        return Some(format!("{shown} conflicts with tunnel.listen \"{}\"", tunnel.listen));
    }
    mappings.iter().enumerate().find_map(|(j, other)| {
        let at = format!("mappings[{j}].listen \"{}\" (mapping {:?})", other.listen, other.name);
        match listen_sharing((listen, host), (other.listen, other.host.as_ref())) {
            Sharing::Apart | Sharing::Shared => None,
            Sharing::SameHost => Some(format!(
                "{shown} with host \"{}\" conflicts with {at}, which routes the same host",
                other.host.as_ref().map(ToString::to_string).unwrap_or_default()
            )),
            Sharing::Clash => {
                Some(format!("{shown} conflicts with {at}{}", share_hint(host, other)))
            }
        }
    })
}

/// What to say when two mappings could have shared an address.
fn share_hint(host: Option<&HostPattern>, other: &MappingConfig) -> &'static str {
    if host.is_some() || other.host.is_some() {
        "; mappings share a listen address only when each names a host and the addresses are \
         written the same"
    } else {
        ""
    }
}

/// How two listeners `(listen, host)` stand to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Different ports or addresses: no interaction.
    Apart,
    /// The same address, each routing its own host: one listener.
    Shared,
    /// The same address and the same host.
    SameHost,
    /// They would fight over a port.
    Clash,
}

/// Whether two mappings can listen side by side: apart, on one shared
/// listener (the same `listen`, written the same, and each naming a
/// different host), or not at all. Port 0 is a port of its own for each
/// listener, except that mappings with hosts and the same `listen` share
/// the one port picked.
pub fn listen_sharing(
    (a, a_host): (SocketAddr, Option<&HostPattern>),
    (b, b_host): (SocketAddr, Option<&HostPattern>),
) -> Sharing {
    match (a_host, b_host) {
        (Some(x), Some(y)) if a == b => {
            if x == y {
                Sharing::SameHost
            } else {
                Sharing::Shared
            }
        }
        _ if overlaps(a, b) => Sharing::Clash,
        _ => Sharing::Apart,
    }
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
    fn a_probe_exchange_needs_an_expectation_and_an_interval() {
        assert_eq!(check_probe_exchange(None, None, false), Ok(()));
        assert_eq!(check_probe_exchange(Some("PING\r\n"), Some("+PONG"), true), Ok(()));
        assert_eq!(check_probe_exchange(None, Some("SSH-"), true), Ok(()), "a greeting alone");
        let field =
            |send, expect, interval| check_probe_exchange(send, expect, interval).unwrap_err().0;
        assert_eq!(field(Some("PING"), None, true), "probe_send");
        assert_eq!(field(None, Some(""), true), "probe_expect");
        assert_eq!(field(None, Some("SSH-"), false), "probe_expect");
        let long = "x".repeat(MAX_PROBE_TEXT + 1);
        assert_eq!(field(Some(&long), Some("y"), true), "probe_send");
    }

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

    fn parts(
        name: &str,
        listen: &str,
        edge: &str,
        target: &str,
        allow: &[&str],
        max: Option<u32>,
    ) -> Result<MappingConfig, FieldError> {
        let allow: Vec<String> = allow.iter().map(|a| (*a).to_owned()).collect();
        MappingConfig::from_parts(name, listen, edge, target, &allow, max)
    }

    /// A good mapping with one field replaced by `value`.
    fn with(field: &str, value: &str) -> Result<MappingConfig, FieldError> {
        let pick = |f: &str, good: &'static str| {
            if f == field { value.to_owned() } else { good.to_owned() }
        };
        let allow = pick("allow", "10.0.0.0/8");
        parts(
            &pick("name", "ssh"),
            &pick("listen", "0.0.0.0:2222"),
            &pick("edge", "edge-a"),
            &pick("target", "db.internal:22"),
            &[allow.as_str()],
            Some(1),
        )
    }

    fn bad(field: &str, value: &str, fragment: &str) {
        let err = with(field, value).expect_err(value);
        assert_eq!(err.field, field, "{err}");
        assert!(err.message.contains(fragment), "{field} = {value:?}: {err}");
        assert_eq!(err.to_string(), format!("{field}: {}", err.message));
    }

    #[test]
    fn from_parts_good() {
        let m = parts(
            "db.v6",
            "[::1]:5432",
            "Edge_B.2",
            "[FD00::5]:5432",
            &["203.0.113.0/24", "198.51.100.7", "::1"],
            Some(10),
        )
        .unwrap();
        assert_eq!(m.name, "db.v6");
        assert_eq!(m.listen, "[::1]:5432".parse().unwrap());
        assert_eq!(m.edge, "Edge_B.2");
        assert_eq!(m.target, HostPort { host: "fd00::5".into(), port: 5432 });
        let allow: Vec<String> = m.allow.iter().map(ToString::to_string).collect();
        assert_eq!(allow, ["203.0.113.0/24", "198.51.100.7/32", "::1/128"]);
        assert_eq!(m.max_connections, Some(10));
        let open = parts("t", "127.0.0.1:0", "e", "localhost:7", &[], None).unwrap();
        assert!(open.allow.is_empty() && open.max_connections.is_none());
        // The edge need not exist: only its spelling is checked.
        assert!(with("edge", "no-such-edge").is_ok());
    }

    #[test]
    fn from_parts_names_the_bad_field() {
        bad("name", "my ssh", "invalid name \"my ssh\", expected 1 to 64 characters");
        bad("name", "", "invalid name \"\"");
        bad("name", &"n".repeat(65), "expected 1 to 64 characters");
        bad("listen", "1.2.3", "invalid socket address \"1.2.3\": expected IP:port");
        bad("listen", "localhost:22", "host names are not accepted");
        bad("edge", "edge/a", "invalid name \"edge/a\"");
        bad("target", "10.0.0.7", "invalid host:port \"10.0.0.7\": missing port");
        bad("target", "db:0", "port 0 is not allowed");
        bad("target", "fd00::7:22", "IPv6 addresses must be bracketed");
        bad("allow", "10.0.0.0/33", "invalid CIDR \"10.0.0.0/33\"");
        bad("allow", "example.com", "invalid CIDR \"example.com\"");
        let err = parts("ssh", "0.0.0.0:2222", "e", "h:22", &[], Some(0)).unwrap_err();
        assert_eq!(err.to_string(), "max_connections: 0 is out of range, expected at least 1");
    }
}
