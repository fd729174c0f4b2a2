//! [`AllowEntry`]: one entry of the edge's destination allowlist, a name or
//! address (`db.internal:5432`, `10.0.0.7:22`) or a network
//! (`10.0.0.0/8:22`, `[fd00::]/8:*`).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::str::FromStr;

use ipnet::IpNet;
use serde::de::{self, Deserializer, Visitor};

use crate::hostport::{HostPort, ParseError, parse_port};

/// One entry of the edge's `allow` list.
///
/// A destination the cloud asks for is allowed when an entry admits it:
/// a name only by a [`Host`](Self::Host) entry with that name, an IP
/// address by a [`Host`](Self::Host) entry with that address or by a
/// [`Network`](Self::Network) holding it. With `check_resolved`, the
/// addresses a name resolves to must also be admitted by an address entry
/// (see [`admits_addr`](Self::admits_addr)).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AllowEntry {
    /// `host:port`: exactly this name (compared without regard to case) or
    /// IP address, on this port.
    Host(HostPort),
    /// `net/len:port` or `net/len:*`: any address in the network, on this
    /// port or (`None`, written `*`) any port. IPv6 networks are bracketed:
    /// `[fd00::]/8:22`. The network address has no host bits set.
    Network {
        /// The network.
        net: IpNet,
        /// The port, or `None` for any port.
        port: Option<u16>,
    },
}

impl AllowEntry {
    /// Whether the destination `host:port`, as the cloud sent it, is
    /// admitted: a name by an equal name entry, an IP literal by an equal
    /// address entry or a network holding it.
    pub fn admits(&self, host: &str, port: u16) -> bool {
        match host.parse::<IpAddr>() {
            Ok(ip) => self.admits_addr(SocketAddr::new(ip, port)),
            Err(_) => match self {
                AllowEntry::Host(hp) => hp.port == port && hp.host.eq_ignore_ascii_case(host),
                AllowEntry::Network { .. } => false,
            },
        }
    }

    /// Whether the address `addr` is admitted by an address entry: a
    /// [`Host`](Self::Host) entry with this IP and port, or a network
    /// holding the IP with a matching port. Name entries admit no address.
    /// IPv4-mapped IPv6 addresses are compared as IPv4.
    pub fn admits_addr(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        match self {
            AllowEntry::Host(hp) => {
                hp.port == addr.port() && hp.host.parse::<IpAddr>().is_ok_and(|h| h == ip)
            }
            AllowEntry::Network { net, port } => {
                port.is_none_or(|p| p == addr.port()) && net.contains(&ip)
            }
        }
    }

    /// Whether this entry can admit an address (an IP or a network), as
    /// `check_resolved` needs.
    pub fn is_address(&self) -> bool {
        match self {
            AllowEntry::Host(hp) => hp.host.parse::<IpAddr>().is_ok(),
            AllowEntry::Network { .. } => true,
        }
    }
}

impl From<HostPort> for AllowEntry {
    fn from(hp: HostPort) -> Self {
        AllowEntry::Host(hp)
    }
}

impl fmt::Display for AllowEntry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AllowEntry::Host(hp) => hp.fmt(f),
            AllowEntry::Network { net, port } => {
                match net {
                    IpNet::V4(n) => write!(f, "{n}")?,
                    IpNet::V6(n) => write!(f, "[{}]/{}", n.network(), n.prefix_len())?,
                }
                match port {
                    Some(p) => write!(f, ":{p}"),
                    None => f.write_str(":*"),
                }
            }
        }
    }
}

impl FromStr for AllowEntry {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        if !s.contains('/') {
            return s.parse::<HostPort>().map(AllowEntry::Host).map_err(|e| {
                ParseError(format!(
                    "{e}, or a network with a port such as \"10.0.0.0/8:22\" or \"[fd00::]/8:*\""
                ))
            });
        }
        parse_network(s).map_err(|why| {
            ParseError(format!(
                "invalid network entry {s:?}: {why}; expected network/prefix:port or \
                 network/prefix:* such as \"10.0.0.0/8:22\" or \"[fd00::]/8:*\""
            ))
        })
    }
}

/// Parses `a.b.c.d/len:port`, `[v6]/len:port` (port may be `*`).
fn parse_network(s: &str) -> Result<AllowEntry, String> {
    if s.chars().any(char::is_whitespace) {
        return Err("spaces are not allowed".into());
    }
    let (net, port) = match s.strip_prefix('[') {
        Some(rest) => {
            let (addr, after) = rest.split_once(']').ok_or("missing ']' after the IPv6 address")?;
            let addr: Ipv6Addr =
                addr.parse().map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
            let after = after.strip_prefix('/').ok_or("expected \"/prefix\" after ']'")?;
            let (len, port) = after.split_once(':').ok_or("missing port (a number or *)")?;
            (format!("{addr}/{len}"), port)
        }
        None => {
            let (net, port) = s.rsplit_once(':').ok_or("missing port (a number or *)")?;
            if net.contains(':') {
                return Err("IPv6 networks must be bracketed, e.g. \"[fd00::]/8:*\"".into());
            }
            (net.to_owned(), port)
        }
    };
    let net: IpNet = net.parse().map_err(|_| format!("{net:?} is not a network"))?;
    if net.trunc() != net {
        return Err(format!("{net} has host bits set (the network is {})", net.trunc()));
    }
    let port = match port {
        "*" => None,
        p => Some(parse_port(p)?),
    };
    Ok(AllowEntry::Network { net, port })
}

impl<'de> de::Deserialize<'de> for AllowEntry {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AllowEntry;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a \"host:port\" or \"network/prefix:port\" string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AllowEntry, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> AllowEntry {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str, fragment: &str) {
        let err = s.parse::<AllowEntry>().expect_err(s).to_string();
        assert!(err.contains(fragment), "{s}: {err}");
        assert!(err.contains(&format!("{s:?}")), "{err} should quote the input");
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_prints_every_form() {
        for (text, shown) in [
            ("db.internal:5432", "db.internal:5432"),
            ("DB.Internal:5432", "db.internal:5432"),
            ("10.0.0.7:22", "10.0.0.7:22"),
            ("[::1]:22", "[::1]:22"),
            ("10.0.0.0/8:22", "10.0.0.0/8:22"),
            ("10.0.0.0/8:*", "10.0.0.0/8:*"),
            ("0.0.0.0/0:443", "0.0.0.0/0:443"),
            ("[fd00::]/8:*", "[fd00::]/8:*"),
            ("[FD00:0::]/16:5432", "[fd00::]/16:5432"),
            ("192.0.2.7/32:80", "192.0.2.7/32:80"),
        ] {
            assert_eq!(ok(text).to_string(), shown, "{text}");
            assert_eq!(ok(shown), ok(text), "{shown} round trip");
        }
    }

    #[test]
    fn rejects_malformed_entries_quoting_them() {
        bad("10.0.0.0/8", "missing port");
        bad("10.0.0.0/33:22", "not a network");
        bad("10.0.0.1/8:22", "host bits set (the network is 10.0.0.0/8)");
        bad("10.0.0.0/8:0", "port 0");
        bad("10.0.0.0/8:**", "invalid port");
        bad("fd00::/8:22", "must be bracketed");
        bad("[fd00::/8:22", "missing ']'");
        bad("[fd00::]/8", "missing port");
        bad("[fd00::]8/8:22", "expected \"/prefix\"");
        bad("[10.0.0.0]/8:22", "not an IPv6 address");
        bad("db.internal/8:22", "not a network");
        bad("10.0.0.0/8 :22", "spaces");
        bad("db.internal:*", "invalid port");
        bad("db.internal", "network with a port such as");
    }

    #[test]
    fn names_match_names_and_addresses_match_addresses() {
        let name = ok("db.internal:5432");
        assert!(name.admits("db.internal", 5432));
        assert!(name.admits("DB.Internal", 5432));
        assert!(!name.admits("db.internal", 5433));
        assert!(!name.admits("db.internal.evil", 5432));
        assert!(!name.admits_addr(addr("10.0.0.1:5432")), "a name entry admits no address");
        assert!(!name.is_address());

        let ip = ok("127.0.0.1:22");
        assert!(ip.admits("127.0.0.1", 22) && ip.admits_addr(addr("127.0.0.1:22")));
        assert!(!ip.admits("127.0.0.2", 22) && !ip.admits("127.0.0.1", 23));
        assert!(ip.admits_addr(addr("[::ffff:127.0.0.1]:22")), "IPv4-mapped is IPv4");
        assert!(ip.is_address());

        let net = ok("10.0.0.0/8:22");
        assert!(net.admits("10.1.2.3", 22) && net.admits_addr(addr("10.255.0.1:22")));
        assert!(!net.admits("10.1.2.3", 23));
        assert!(!net.admits("11.0.0.1", 22));
        assert!(!net.admits("ten.internal", 22), "a network admits no name");

        let any_port = ok("[fd00::]/8:*");
        assert!(any_port.admits("fd12::1", 1) && any_port.admits("fdff::", 65535));
        assert!(!any_port.admits("fe80::1", 22) && !any_port.admits("10.0.0.1", 22));
    }
}
