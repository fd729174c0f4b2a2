//! The fleet at run time, against real agents on loopback: edges added
//! through the API connect with the token it made and survive a restart of
//! the cloud; a revoked edge is cut off at once and told why; a rotated
//! token and the old one both work during the grace; batches mix edges and
//! mappings all or nothing.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, cloud_config, cloud_toml_with_control, echo_once, echo_server,
    edge_config, edge_toml, eventually, free_port, serves,
};
use serde_json::{Value, json};

const WITHIN: Duration = Duration::from_secs(10);

/// An edge config for `id` with `token`, dialling `cloud`.
fn edge_as(id: &str, cloud: SocketAddr, service: SocketAddr, token: &str) -> String {
    edge_toml(cloud, &[service.to_string()], token).replacen(
        "edge_id = \"e1\"",
        &format!("edge_id = \"{id}\""),
        1,
    )
}

async fn start_cloud(state: &Path) -> (Cloud, Api) {
    let cloud = Cloud::start(cloud_config(&cloud_toml_with_control("127.0.0.1:0", &[], state)))
        .await
        .expect("cloud starts");
    let api = Api::new(cloud.control_addr().expect("control API"), Some(ADMIN_TOKEN));
    (cloud, api)
}

async fn edge_view(api: &Api, id: &str) -> api::EdgeView {
    let (status, body) = api.call("GET", &format!("/v1/edges/{id}"), None).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_value(body).expect("edge view")
}

/// Adds edge `id` through the API; returns its token.
async fn add_edge(api: &Api, id: &str) -> String {
    let (status, body) = api.call("POST", "/v1/edges", Some(json!({"id": id}))).await;
    assert_eq!(status, 201, "{body}");
    let credential: api::EdgeCredential = serde_json::from_value(body).expect("credential");
    assert_eq!(credential.token.len(), 64);
    assert_eq!(credential.edge.as_ref().map(|e| e.source), Some(api::EdgeSource::Runtime));
    credential.token
}

async fn add_mapping(api: &Api, name: &str, edge: &str, target: SocketAddr) -> SocketAddr {
    let listen = free_port();
    let body = json!({"name": name, "listen": listen.to_string(), "edge": edge,
        "target": target.to_string()});
    let (status, answer) = api.call("POST", "/v1/mappings", Some(body)).await;
    assert_eq!(status, 201, "{answer}");
    listen
}

async fn tunnels_up(api: &Api, id: &str) -> u32 {
    edge_view(api, id).await.tunnels_up
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_added_at_run_time_serves_and_survives_a_restart_of_the_cloud() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let echo = echo_server().await;
    let (cloud, api) = start_cloud(&state).await;
    let token = add_edge(&api, "site-b").await;
    let (status, body) = api.call("POST", "/v1/edges", Some(json!({"id": "site-b"}))).await;
    assert_eq!((status, body["code"].as_str()), (409, Some("conflict")), "{body}");

    let edge =
        Edge::start(edge_config(&edge_as("site-b", cloud.tunnel_addr(), echo, &token))).unwrap();
    let web = add_mapping(&api, "web", "site-b", echo).await;
    assert!(eventually(WITHIN, || serves(web)).await, "the new edge never carried web");
    assert_eq!(echo_once(web, b"hello").await.unwrap(), b"hello");
    let view = edge_view(&api, "site-b").await;
    assert_eq!(view.tunnels[0].credential.as_deref(), Some("current"));

    // The file holds the edge (and its token, so it is private).
    let text = std::fs::read_to_string(&state).unwrap();
    assert!(text.contains("site-b") && text.contains(&token), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&state).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    // A restarted cloud knows the edge and its token: the edge reconnects.
    let tunnel = cloud.tunnel_addr();
    cloud.shutdown().await;
    let toml = cloud_toml_with_control(&tunnel.to_string(), &[], &state);
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud restarts");
    let api = Api::new(cloud.control_addr().unwrap(), Some(ADMIN_TOKEN));
    let web = cloud.mapping_addr("web").expect("web back after the restart");
    assert!(eventually(WITHIN, || serves(web)).await, "the edge did not come back");
    assert_eq!(edge_view(&api, "site-b").await.source, api::EdgeSource::Runtime);

    // Removing it is refused while a mapping needs it; then allowed.
    let (status, body) = api.call("DELETE", "/v1/edges/site-b", None).await;
    assert_eq!(status, 409, "{body}");
    assert!(body["error"].as_str().unwrap_or("").contains("web"), "{body}");
    let (status, body) = api.call("DELETE", "/v1/mappings/web", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, body) = api.call("DELETE", "/v1/edges/site-b", None).await;
    assert_eq!(status, 204, "{body}");
    let (status, _) = api.call("GET", "/v1/edges/site-b", None).await;
    assert_eq!(status, 404);
    // A config-file edge cannot be removed at run time (revoke it).
    let (status, body) = api.call("DELETE", "/v1/edges/e1", None).await;
    assert_eq!(status, 409, "{body}");
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_edge_is_cut_off_at_once_and_its_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let echo = echo_server().await;
    let (cloud, api) = start_cloud(&state).await;
    let token = add_edge(&api, "site-c").await;
    // The real binary, so its log is what an operator reads.
    let mut edge =
        Agent::spawn("relay-edge", &edge_as("site-c", cloud.tunnel_addr(), echo, &token));
    let web = add_mapping(&api, "web", "site-c", echo).await;
    assert!(eventually(WITHIN, || serves(web)).await, "the edge never carried web");
    assert!(tunnels_up(&api, "site-c").await > 0);

    let started = Instant::now();
    let (status, body) = api.call("POST", "/v1/edges/site-c/revoke", None).await;
    let answered = started.elapsed();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["revoked"], Value::Bool(true), "{body}");
    // The tunnels are gone by the time the answer arrives.
    assert_eq!(tunnels_up(&api, "site-c").await, 0, "a tunnel outlived its edge's revocation");
    let (_, mapping) = api.call("GET", "/v1/mappings/web", None).await;
    assert_eq!(mapping["edge_revoked"], Value::Bool(true), "{mapping}");
    assert!(!serves(web).await, "a revoked edge's mapping still carried a client");

    // Each tunnel slot of the edge is refused once, then waits at least
    // 5 s before it dials again.
    let slots = config::DEFAULT_TUNNELS as usize;
    let refusals = edge.wait_for_logs(&["revoked by the cloud's operator"], slots, WITHIN).await;
    let line = refusals[0].clone();
    println!(
        "revocation answered after {answered:?}; the edge logged its refusal {:?} after the \
         revoke began: {line}",
        started.elapsed()
    );
    assert!(line.contains("Revoked"), "the edge names the refusal code: {line}");
    // It stays refused across a restart of the cloud.
    let tunnel = cloud.tunnel_addr();
    cloud.shutdown().await;
    let toml = cloud_toml_with_control(&tunnel.to_string(), &[], &state);
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud restarts");
    let api = Api::new(cloud.control_addr().unwrap(), Some(ADMIN_TOKEN));
    assert!(edge_view(&api, "site-c").await.revoked);
    // Every slot was refused before the restart and is waiting: the next
    // refusal is the restarted cloud's.
    let refused = edge.logged().iter().filter(|l| l.contains("revoked by the cloud's")).count();
    let next_dial = Duration::from_secs(20);
    edge.wait_for_logs(&["revoked by the cloud's operator"], refused + 1, next_dial).await;
    assert_eq!(tunnels_up(&api, "site-c").await, 0);

    // A new token is a fresh start; the old one stays dead.
    let (status, body) = api.call("POST", "/v1/edges/site-c/rotate-token", None).await;
    assert_eq!(status, 200, "{body}");
    let credential: api::EdgeCredential = serde_json::from_value(body).unwrap();
    assert_eq!(credential.edge.and_then(|e| e.previous_token_until_unix_ms), None);
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_rotation_the_old_and_the_new_token_both_work_until_the_grace_ends() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let echo = echo_server().await;
    let (cloud, api) = start_cloud(&state).await;
    let old = add_edge(&api, "site-d").await;
    let config = |token: &str| edge_config(&edge_as("site-d", cloud.tunnel_addr(), echo, token));
    let edge = Edge::start(config(&old)).unwrap();
    assert!(eventually(WITHIN, || async { tunnels_up(&api, "site-d").await > 0 }).await);

    let (status, body) =
        api.call("POST", "/v1/edges/site-d/rotate-token", Some(json!({"grace_secs": 600}))).await;
    assert_eq!(status, 200, "{body}");
    let rotated: api::EdgeCredential = serde_json::from_value(body).unwrap();
    assert_ne!(rotated.token, old);
    let until = rotated.edge.as_ref().and_then(|e| e.previous_token_until_unix_ms);
    assert!(until.is_some(), "the answer says until when the old token works: {rotated:?}");
    // The old token's tunnel stays up, shown as such.
    let view = edge_view(&api, "site-d").await;
    assert!(view.tunnels_up > 0, "the rotation dropped the old token's tunnels: {view:?}");
    assert!(view.tunnels.iter().all(|t| t.credential.as_deref() == Some("previous")), "{view:?}");

    // A run with the old token still gets in during the grace...
    edge.shutdown().await;
    let edge = Edge::start(config(&old)).unwrap();
    assert!(eventually(WITHIN, || async { tunnels_up(&api, "site-d").await > 0 }).await);
    edge.shutdown().await;
    // ...and one with the new token, shown as current.
    let edge = Edge::start(config(&rotated.token)).unwrap();
    assert!(
        eventually(WITHIN, || async {
            let view = edge_view(&api, "site-d").await;
            view.tunnels_up > 0
                && view.tunnels.iter().all(|t| t.credential.as_deref() == Some("current"))
        })
        .await
    );

    // A rotation without grace: the token just replaced dies at once, with
    // its tunnels.
    let (status, body) =
        api.call("POST", "/v1/edges/site-d/rotate-token", Some(json!({"grace_secs": 0}))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(tunnels_up(&api, "site-d").await, 0, "the replaced token's tunnels stayed up");
    let (status, body) = api
        .call("POST", "/v1/edges/site-d/rotate-token", Some(json!({"grace_secs": 2_592_001})))
        .await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid")), "{body}");
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_adds_an_edge_and_its_mapping_together_or_neither() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let echo = echo_server().await;
    let (cloud, api) = start_cloud(&state).await;
    let listen = free_port().to_string();
    let mapping = json!({"op": "add", "name": "db", "listen": listen, "edge": "pool",
        "target": echo.to_string()});

    // The second change is refused: nothing is added, no token is shown.
    let refused = json!({"changes": [
        {"op": "add_edge", "id": "site-e", "group": "pool"},
        mapping,
        {"op": "add_edge", "id": "bad id"},
    ]});
    let (status, body) = api.call("POST", "/v1/batch", Some(refused)).await;
    assert_eq!(status, 400, "{body}");
    let answer: api::BatchResponse = serde_json::from_value(body).unwrap();
    assert!(!answer.applied && answer.outcomes.iter().all(|o| o.token.is_none()), "{answer:?}");
    let (_, edges) = api.call("GET", "/v1/edges", None).await;
    assert_eq!(edges.as_array().map(Vec::len), Some(1), "only the config's e1: {edges}");

    // A dry run plans it and makes no token either.
    let batch = json!({"dry_run": true, "changes": [
        {"op": "add_edge", "id": "site-e", "group": "pool"}, mapping]});
    let (status, body) = api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["outcomes"].as_array().unwrap().iter().all(|o| o.get("token").is_none()));

    // Applied: the edge in its group, the mapping through the group.
    let batch = json!({"changes": [{"op": "add_edge", "id": "site-e", "group": "pool"}, mapping]});
    let (status, body) = api.call("POST", "/v1/batch", Some(batch)).await;
    assert_eq!(status, 200, "{body}");
    let answer: api::BatchResponse = serde_json::from_value(body).unwrap();
    assert!(answer.applied, "{answer:?}");
    let token = answer.outcomes[0].token.clone().expect("the new edge's token");
    assert_eq!(edge_view(&api, "site-e").await.groups, ["pool"]);
    let edge =
        Edge::start(edge_config(&edge_as("site-e", cloud.tunnel_addr(), echo, &token))).unwrap();
    let db = cloud.mapping_addr("db").expect("db listens");
    assert!(eventually(WITHIN, || serves(db)).await, "the group's new member never carried db");
    edge.shutdown().await;
    cloud.shutdown().await;
}
