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
) -> Snapshot {
    let token = String::from_utf8_lossy(admin_token.expose()).into_owned();
    let fetches = cluster.nodes().into_iter().filter(|n| !n.this_node).map(|node| {
        let token = token.clone();
        async move {
            let answer = match node.control_url {
                None => Err("the node has no control_url peers can reach".to_owned()),
                Some(url) => fetch(format!("{url}/v1/snapshot"), token).await,
            };
            (node.id, answer)
        }
    });
    let peers = futures_util::future::join_all(fetches).await;
    api::cluster_snapshot(local, peers)
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
