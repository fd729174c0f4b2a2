//! The URL of a cluster node, as the cloud tells it to an edge: parsed like
//! `cloud_url`, and held to the same transport rules.

use thiserror::Error;

use crate::reach::is_loopback_host;
use crate::{CloudUrl, EdgeConfig};

/// Why an edge does not dial a node URL the cloud told it.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum NodeUrlError {
    /// It is not a `ws://` or `wss://` URL.
    #[error("{0}")]
    Invalid(String),
    /// `ws://` while `cloud_url` is `wss://`: a downgrade.
    #[error("plain ws:// while cloud_url is wss://; a node URL may not drop TLS")]
    Downgrade,
    /// `ws://` to a host beyond loopback without `allow_plaintext`.
    #[error("plain ws:// beyond loopback (host {0:?}) needs allow_plaintext = true")]
    PlaintextBeyondLoopback(String),
}

impl EdgeConfig {
    /// Parses a node URL the cloud sent with the parser of `cloud_url`,
    /// and checks that dialling it keeps the transport `cloud_url` has: no
    /// `ws://` when `cloud_url` is `wss://`, and no `ws://` beyond
    /// loopback unless `allow_plaintext`. A `wss://` node URL is dialled
    /// with this config's trust settings (`ca_file`, `public_roots`,
    /// `pin_sha256`) and its own host as the TLS server name.
    ///
    /// # Errors
    /// [`NodeUrlError`] saying why the URL is not dialled.
    pub fn node_url(&self, text: &str) -> Result<CloudUrl, NodeUrlError> {
        let url: CloudUrl =
            text.parse().map_err(|e: crate::ParseError| NodeUrlError::Invalid(e.0))?;
        if !url.tls && self.cloud_url.tls {
            return Err(NodeUrlError::Downgrade);
        }
        if !url.tls && !self.allow_plaintext && !is_loopback_host(&url.host) {
            return Err(NodeUrlError::PlaintextBeyondLoopback(url.host));
        }
        Ok(url)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn edge(cloud_url: &str, extra: &str) -> EdgeConfig {
        let toml = format!(
            "cloud_url = \"{cloud_url}\"\nedge_id = \"e\"\n\
             token = \"q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd\"\n{extra}"
        );
        EdgeConfig::from_toml(&toml, Path::new("edge.toml")).unwrap()
    }

    #[test]
    fn a_node_url_keeps_the_transport_of_cloud_url() {
        let tls = edge("wss://lb.example.com/tunnel", "");
        assert_eq!(tls.node_url("wss://a.example.com:8443/tunnel").unwrap().host, "a.example.com");
        assert_eq!(tls.node_url("ws://a.example.com/tunnel"), Err(NodeUrlError::Downgrade));
        assert_eq!(tls.node_url("ws://127.0.0.1:1/tunnel"), Err(NodeUrlError::Downgrade));
        assert!(matches!(tls.node_url("http://a/tunnel"), Err(NodeUrlError::Invalid(_))));
        assert!(matches!(tls.node_url("wss://u:p@a/tunnel"), Err(NodeUrlError::Invalid(_))));

        let plain = edge("ws://127.0.0.1:7000/tunnel", "");
        assert!(plain.node_url("ws://127.0.0.1:7001/tunnel").is_ok());
        assert!(plain.node_url("wss://a.example.com/tunnel").is_ok(), "an upgrade is fine");
        assert_eq!(
            plain.node_url("ws://10.0.0.5/tunnel"),
            Err(NodeUrlError::PlaintextBeyondLoopback("10.0.0.5".into()))
        );
        let trusted = edge("ws://10.0.0.1/tunnel", "allow_plaintext = true\n");
        assert!(trusted.node_url("ws://10.0.0.5/tunnel").is_ok());
    }
}
