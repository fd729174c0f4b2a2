//! [`Reach`]: whether a listener, or the host an edge dials, can be reached
//! from beyond this machine. Plain tunnels, the repository's demo tokens and
//! token files open to other users are accepted on loopback only.

use std::net::{IpAddr, SocketAddr};

/// How far a listener or a dialled host reaches: loopback only, or beyond
/// (with the reason, quoted in errors).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reach(Option<String>);

impl Reach {
    /// The reach of a listener on `addr`, set by `key` (`"tunnel.listen"`).
    pub(crate) fn of_listener(key: &str, addr: SocketAddr) -> Self {
        if is_loopback_ip(addr.ip()) {
            Self(None)
        } else {
            Self(Some(format!("{key} \"{addr}\" is beyond loopback")))
        }
    }

    /// The reach of a connection to `host`, set by `key` (`"cloud_url"`).
    pub(crate) fn of_host(key: &str, host: &str) -> Self {
        if is_loopback_host(host) {
            Self(None)
        } else {
            Self(Some(format!("{key} host {host:?} is beyond loopback")))
        }
    }

    /// Why it reaches beyond loopback, or `None` for loopback only.
    pub(crate) fn beyond(&self) -> Option<&str> {
        self.0.as_deref()
    }
}

/// `127.0.0.0/8`, `::1`, and IPv4-mapped loopback (`::ffff:127.0.0.1`).
pub(crate) fn is_loopback_ip(ip: IpAddr) -> bool {
    ip.to_canonical().is_loopback()
}

/// A loopback IP address or exactly `localhost`. Any other name may
/// resolve anywhere: it counts as beyond. Names under `.localhost` too,
/// although RFC 6761 reserves them: a resolver without special handling
/// asks DNS (and its search domains) for them.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => is_loopback_ip(ip),
        Err(_) => {
            let host = host.to_ascii_lowercase();
            host == "localhost"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_or_not() {
        for host in ["127.0.0.1", "127.9.9.9", "::1", "::ffff:127.0.0.1", "localhost", "LocalHost"]
        {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in [
            "0.0.0.0",
            "::",
            "10.0.0.1",
            "relay.example.com",
            "localhost.example.com",
            "a.localhost",
        ] {
            assert!(!is_loopback_host(host), "{host}");
        }
        let beyond = Reach::of_listener("tunnel.listen", "0.0.0.0:8443".parse().unwrap());
        assert_eq!(beyond.beyond(), Some("tunnel.listen \"0.0.0.0:8443\" is beyond loopback"));
        assert_eq!(Reach::of_listener("x", "[::1]:1".parse().unwrap()).beyond(), None);
        assert_eq!(
            Reach::of_host("cloud_url", "relay.example.com").beyond(),
            Some("cloud_url host \"relay.example.com\" is beyond loopback")
        );
    }
}
