//! [`HostPort`]: a `host:port` destination, and the host rules shared with
//! [`CloudUrl`](crate::CloudUrl).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};

/// Why a `host:port` or URL string was rejected; the message quotes the input
/// and says what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub(crate) String);

/// A destination such as `db.internal:5432`, `10.0.0.7:22` or `[::1]:22`.
///
/// The host is stored without brackets and normalised: IP literals in their
/// canonical form, DNS names in lower case, so equal destinations compare
/// equal. [`Display`](fmt::Display) brackets IPv6 hosts again. The port is
/// never 0.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    /// Host name or IP address, IPv6 without brackets.
    pub host: String,
    /// Port, 1..=65535.
    pub port: u16,
}

impl HostPort {
    /// Builds from parts, applying the same rules as [`FromStr`].
    ///
    /// # Errors
    /// [`ParseError`] when the host is empty, malformed, or the port is 0.
    pub fn new(host: &str, port: u16) -> Result<Self, ParseError> {
        let host = if host.contains(':') { format!("[{host}]") } else { host.to_owned() };
        format!("{host}:{port}").parse()
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", bracket(&self.host), self.port)
    }
}

impl FromStr for HostPort {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let fail = |why: &str| {
            ParseError(format!(
                "invalid host:port {s:?}: {why}; expected host:port such as \
                 \"db.internal:5432\", \"10.0.0.7:22\" or \"[::1]:22\""
            ))
        };
        let (host, port) = split_authority(s).map_err(|why| fail(&why))?;
        let port = port.ok_or_else(|| fail("missing port"))?;
        let port = parse_port(port).map_err(|why| fail(&why))?;
        Ok(Self { host, port })
    }
}

impl<'de> de::Deserialize<'de> for HostPort {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HostPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a \"host:port\" string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HostPort, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

/// `host` with brackets if it is an IPv6 address.
pub(crate) fn bracket(host: &str) -> String {
    if host.contains(':') { format!("[{host}]") } else { host.to_owned() }
}

/// Splits `host[:port]` into a normalised host and the raw port text.
pub(crate) fn split_authority(s: &str) -> Result<(String, Option<&str>), String> {
    if s.chars().any(char::is_whitespace) {
        return Err("spaces are not allowed".into());
    }
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest.split_once(']').ok_or("missing ']' after IPv6 address")?;
        let ip: Ipv6Addr =
            inner.parse().map_err(|_| format!("{inner:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':').ok_or("expected ':' after ']'")?),
        };
        return Ok((ip.to_string(), port));
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    };
    if host.contains(':') {
        return Err("IPv6 addresses must be bracketed, e.g. \"[::1]:22\"".into());
    }
    Ok((check_host(host)?, port))
}

/// Validates an unbracketed host: an IPv4 address or a DNS-like name.
fn check_host(host: &str) -> Result<String, String> {
    if host.is_empty() {
        return Err("empty host".into());
    }
    if let Ok(ip) = host.parse::<Ipv4Addr>() {
        return Ok(ip.to_string());
    }
    if host.chars().all(|c| c.is_ascii_digit() || c == '.') {
        return Err(format!("{host:?} is not a valid IPv4 address"));
    }
    let ok_chars = host.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_'));
    if !ok_chars || host.len() > 253 || host.starts_with(['.', '-']) {
        return Err(format!("{host:?} is not a valid host name"));
    }
    Ok(host.to_ascii_lowercase())
}

/// Parses a port, rejecting 0.
pub(crate) fn parse_port(port: &str) -> Result<u16, String> {
    match port.parse::<u16>() {
        Ok(0) => Err("port 0 is not allowed".into()),
        Ok(p) if port.starts_with(|c: char| c.is_ascii_digit()) => Ok(p),
        _ => Err(format!("invalid port {port:?}, expected 1..=65535")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> HostPort {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str, fragment: &str) {
        let err = s.parse::<HostPort>().expect_err(s).to_string();
        assert!(err.contains(fragment), "{s}: {err}");
        assert!(err.contains(&format!("{s:?}")), "{err} should quote the input");
    }

    #[test]
    fn good() {
        assert_eq!(ok("db.internal:5432"), HostPort { host: "db.internal".into(), port: 5432 });
        assert_eq!(ok("10.0.0.7:22").to_string(), "10.0.0.7:22");
        assert_eq!(ok("[::1]:22"), HostPort { host: "::1".into(), port: 22 });
        assert_eq!(ok("[::1]:22").to_string(), "[::1]:22");
        assert_eq!(ok("[FD00:0::0001]:65535").to_string(), "[fd00::1]:65535");
        assert_eq!(ok("Example.COM:80").to_string(), "example.com:80");
        assert_eq!(ok("my_host-1:1").host, "my_host-1");
        assert_eq!(HostPort::new("::1", 22).unwrap(), ok("[::1]:22"));
        assert_eq!(HostPort::new("db", 1).unwrap().to_string(), "db:1");
    }

    #[test]
    fn bad_cases() {
        bad("db.internal", "missing port");
        bad("db:0", "port 0 is not allowed");
        bad("db:65536", "invalid port");
        bad("db:+22", "invalid port");
        bad("db:", "invalid port");
        bad(":22", "empty host");
        bad("", "empty host");
        bad("::1:22", "must be bracketed");
        bad("[::1]", "missing port");
        bad("[::1:22", "missing ']'");
        bad("[10.0.0.1]:22", "not an IPv6 address");
        bad("[::1]22", "expected ':'");
        bad("db host:22", "spaces");
        bad("db/x:22", "not a valid host name");
        bad("user@db:22", "not a valid host name");
        bad("10.0.0.256:22", "not a valid IPv4 address");
        assert!(HostPort::new("", 22).is_err());
        assert!(HostPort::new("db", 0).is_err());
    }

    #[test]
    fn deserializes_from_string() {
        #[derive(serde::Deserialize)]
        struct T {
            t: HostPort,
        }
        let t: T = toml::from_str("t = \"[::1]:22\"").unwrap();
        assert_eq!(t.t.port, 22);
        let err = toml::from_str::<T>("t = \"x:0\"").err().unwrap();
        assert!(err.message().contains("port 0"), "{err}");
    }
}
