//! `[proxy_protocol]` of the cloud config: [`ProxyProtocolConfig`], the load
//! balancers in front of the mapping listeners whose PROXY protocol header
//! (v1 or v2) names the real client.

use std::net::IpAddr;
use std::time::Duration;

use humantime_serde::re::humantime;
use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use crate::defaults::{PROXY_PROTOCOL_TIMEOUT_RANGE, serde_fns};
use crate::error::{ConfigError, Doc};
use crate::values::{Dur, Net};

/// `[proxy_protocol]`: every mapping listener expects a PROXY protocol
/// header, and only from these load balancers (as nginx's `listen ...
/// proxy_protocol` with `set_real_ip_from`, or HAProxy's `accept-proxy`).
/// A connection from any other address is refused before a byte is read,
/// so a header from anyone else is never believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyProtocolConfig {
    /// `from`: the load balancers, as IP addresses or CIDR networks (IPv4
    /// or IPv6); at least one.
    pub from: Vec<IpNet>,
    /// `timeout`: how long a load balancer has to send the whole header;
    /// default [`DEFAULT_PROXY_PROTOCOL_TIMEOUT`](crate::DEFAULT_PROXY_PROTOCOL_TIMEOUT),
    /// within [`PROXY_PROTOCOL_TIMEOUT_RANGE`].
    pub timeout: Duration,
}

impl ProxyProtocolConfig {
    /// Whether `peer` is one of the load balancers of `from`. IPv4-mapped
    /// IPv6 addresses are compared as IPv4.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        let ip = peer.to_canonical();
        self.from.iter().any(|net| net.contains(&ip))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawProxyProtocol {
    from: Spanned<Vec<Net>>,
    #[serde(default = "serde_fns::proxy_protocol_timeout")]
    timeout: Spanned<Dur>,
}

impl RawProxyProtocol {
    /// Checks `[proxy_protocol]`.
    pub(crate) fn validate(self, doc: &Doc<'_>) -> Result<ProxyProtocolConfig, ConfigError> {
        if self.from.get_ref().is_empty() {
            return Err(doc.error_at(
                self.from.span(),
                "proxy_protocol.from: empty, expected at least one load balancer address or \
                 network such as \"10.0.0.5\" or \"10.0.0.0/24\" (remove [proxy_protocol] to \
                 take clients directly)",
            ));
        }
        let timeout = self.timeout.get_ref().0;
        if !PROXY_PROTOCOL_TIMEOUT_RANGE.contains(&timeout) {
            let range = PROXY_PROTOCOL_TIMEOUT_RANGE;
            return Err(doc.error_at(
                self.timeout.span(),
                format!(
                    "proxy_protocol.timeout: {} is out of range, expected {}..={}",
                    doc.snippet(self.timeout.span()),
                    humantime::format_duration(*range.start()),
                    humantime::format_duration(*range.end()),
                ),
            ));
        }
        let from = self.from.into_inner().into_iter().map(|n| n.0).collect();
        Ok(ProxyProtocolConfig { from, timeout })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusts_the_listed_networks_only() {
        let config = ProxyProtocolConfig {
            from: vec!["10.0.0.0/24".parse().unwrap(), "fd00::5/128".parse().unwrap()],
            timeout: Duration::from_secs(5),
        };
        for ip in ["10.0.0.1", "10.0.0.255", "fd00::5", "::ffff:10.0.0.9"] {
            assert!(config.trusts(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["10.0.1.1", "127.0.0.1", "fd00::6", "::1"] {
            assert!(!config.trusts(ip.parse().unwrap()), "{ip}");
        }
    }
}
