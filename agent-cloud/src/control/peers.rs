//! `scope=cluster`: the answering node asks every peer for its snapshot,
//! each within a time limit, and sums them with its own
//! (`api::cluster_snapshot`). A peer that does not answer in time is
//! marked in the snapshot's `peers` and left out of the sums.

use std::time::Duration;

use api::Snapshot;

use crate::cluster::Cluster;

/// How long a peer has to answer.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);
/// Largest snapshot read from a peer.
const MAX_PEER_SNAPSHOT: u64 = 16 * 1024 * 1024;

/// `local` summed with every live peer's snapshot.
pub(super) async fn cluster_snapshot(
    cluster: &Cluster,
    admin_token: &config::Secret,
    local: Snapshot,
    series: Option<&str>,
) -> Snapshot {
    let token = String::from_utf8_lossy(admin_token.expose()).into_owned();
    let query = series.map_or_else(String::new, |s| format!("?series={}", query_value(s)));
    let fetches = cluster.nodes().into_iter().filter(|n| !n.this_node).map(|node| {
        let (token, query) = (token.clone(), query.clone());
        async move {
            let answer = match node.control_url {
                None => Err("the node has no control_url peers can reach".to_owned()),
                Some(url) => fetch(format!("{url}/v1/snapshot{query}"), token).await,
            };
            (node.id, answer)
        }
    });
    let peers = futures_util::future::join_all(fetches).await;
    api::cluster_snapshot(local, peers)
}

/// `value` percent-encoded for a query string: mapping names and commas
/// pass as they are, anything else a client sent is encoded, so it cannot
/// add parameters to the peer's URL.
fn query_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'-' | b',' => {
                out.push(char::from(b));
            }
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

async fn fetch(url: String, token: String) -> Result<Snapshot, String> {
    let blocking = tokio::task::spawn_blocking(move || {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(PEER_TIMEOUT))
            .build()
            .new_agent();
        let mut response = agent
            .get(&url)
            .header("authorization", format!("Bearer {token}"))
            .call()
            .map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        if status != 200 {
            return Err(format!("answered {status}"));
        }
        let text = response
            .body_mut()
            .with_config()
            .limit(MAX_PEER_SNAPSHOT)
            .read_to_string()
            .map_err(|e| e.to_string())?;
        serde_json::from_str(&text).map_err(|e| format!("not a snapshot: {e}"))
    });
    // The blocking call is bounded by its own timeout; this bounds the wait
    // for a free blocking thread too.
    match tokio::time::timeout(PEER_TIMEOUT * 2, blocking).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {:?}", PEER_TIMEOUT * 2)),
    }
}

#[cfg(test)]
mod tests {
    use super::query_value;

    #[test]
    fn a_series_list_passes_and_anything_else_is_encoded() {
        assert_eq!(query_value("web,db-1.x_y"), "web,db-1.x_y");
        assert_eq!(query_value("a&scope=cluster#"), "a%26scope%3Dcluster%23");
        assert_eq!(query_value("é"), "%C3%A9");
    }
}
