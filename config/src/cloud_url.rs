//! [`CloudUrl`]: the `ws://` or `wss://` address an edge dials.

use std::fmt;
use std::str::FromStr;

use serde::de::{self, Deserializer, Visitor};

use crate::defaults::{DEFAULT_TUNNEL_PATH, DEFAULT_WS_PORT, DEFAULT_WSS_PORT};
use crate::hostport::{ParseError, bracket, parse_port, split_authority};

/// The cloud agent's tunnel endpoint, e.g. `wss://relay.example.com/tunnel`.
///
/// Parsed from `ws://host[:port][/path]` or `wss://host[:port][/path]`. The
/// port defaults to 80 (`ws`) or 443 (`wss`) and the path to `/tunnel`. The
/// host is stored like [`HostPort::host`](crate::HostPort::host): IPv6
/// without brackets, names in lower case. [`Display`](fmt::Display) gives the
/// full URL back, always with the port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CloudUrl {
    /// `true` for `wss://`.
    pub tls: bool,
    /// Host name (also the TLS server name) or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Request path, starting with `/`; may carry a `?query`.
    pub path: String,
}

impl CloudUrl {
    /// `"wss"` or `"ws"`.
    pub fn scheme(&self) -> &'static str {
        if self.tls { "wss" } else { "ws" }
    }
}

impl fmt::Display for CloudUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}{}", self.scheme(), bracket(&self.host), self.port, self.path)
    }
}

impl FromStr for CloudUrl {
    type Err = ParseError;

    fn from_str(s: &str) -> Result<Self, ParseError> {
        let fail = |why: &str| {
            ParseError(format!(
                "invalid URL {s:?}: {why}; expected ws://host[:port][/path] or \
                 wss://host[:port][/path], e.g. \"wss://relay.example.com/tunnel\""
            ))
        };
        let (scheme, rest) = s.split_once("://").ok_or_else(|| fail("missing scheme"))?;
        let tls = match scheme.to_ascii_lowercase().as_str() {
            "ws" => false,
            "wss" => true,
            _ => return Err(fail(&format!("unsupported scheme {scheme:?}"))),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(fail("credentials in the URL are not supported (use token or token_file)"));
        }
        let (host, port) = split_authority(authority).map_err(|why| fail(&why))?;
        let port = match port {
            Some(p) => parse_port(p).map_err(|why| fail(&why))?,
            None if tls => DEFAULT_WSS_PORT,
            None => DEFAULT_WS_PORT,
        };
        if path.chars().any(|c| c.is_whitespace() || c == '#') {
            return Err(fail("the path must not contain spaces or '#'"));
        }
        let path = if path.is_empty() { DEFAULT_TUNNEL_PATH.to_owned() } else { path.to_owned() };
        Ok(Self { tls, host, port, path })
    }
}

impl<'de> de::Deserialize<'de> for CloudUrl {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = CloudUrl;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a ws:// or wss:// URL string")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<CloudUrl, E> {
                v.parse().map_err(E::custom)
            }
        }
        deserializer.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> CloudUrl {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str, fragment: &str) {
        let err = s.parse::<CloudUrl>().expect_err(s).to_string();
        assert!(err.contains(fragment), "{s}: {err}");
    }

    #[test]
    fn good() {
        let u = ok("ws://127.0.0.1:7000/tunnel");
        assert_eq!(
            u,
            CloudUrl { tls: false, host: "127.0.0.1".into(), port: 7000, path: "/tunnel".into() }
        );
        assert_eq!(u.to_string(), "ws://127.0.0.1:7000/tunnel");
        let u = ok("wss://Relay.Example.com");
        assert_eq!((u.tls, u.port, u.path.as_str()), (true, 443, "/tunnel"));
        assert_eq!(u.to_string(), "wss://relay.example.com:443/tunnel");
        assert_eq!(ok("ws://relay").port, 80);
        assert_eq!(ok("WSS://relay/").path, "/");
        let u = ok("wss://[::1]:8443/a/b?x=1");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 8443, "/a/b?x=1"));
        assert_eq!(u.to_string(), "wss://[::1]:8443/a/b?x=1");
        assert_eq!(u.scheme(), "wss");
        // Display round-trips.
        assert_eq!(ok(&u.to_string()), u);
    }

    #[test]
    fn bad_cases() {
        bad("http://relay/tunnel", "unsupported scheme \"http\"");
        bad("relay:8443", "missing scheme");
        bad("ws:///tunnel", "empty host");
        bad("ws://:80/tunnel", "empty host");
        bad("wss://::1:8443/", "must be bracketed");
        bad("wss://relay:0/", "port 0");
        bad("wss://relay:http/", "invalid port");
        bad("wss://user:pw@relay/", "credentials");
        bad("wss://relay/a b", "spaces");
        bad("wss://relay/a#frag", "'#'");
    }
}
