//! Reloading the cloud's config file with SIGHUP, against the real binary:
//! an edge and a mapping added in the file start serving without touching
//! the tunnels and connections already up; a file with an error changes
//! nothing and is reported with file, line and key; a mapping removed from
//! the file drains; what cannot change live is reported and left as is.
//! And the edge's: its allowlist changes live for new streams, open ones
//! continue, a bad file changes nothing.

use std::time::Duration;

use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, TOKEN, echo_server, edge_toml, eventually, free_port, serves,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const WITHIN: Duration = Duration::from_secs(15);
const TOKEN_B: &str = "Xk2mP9qR4sT7vW1yZ3bC5dF8gH0jL6nA";

struct Ports {
    tunnel: std::net::SocketAddr,
    control: std::net::SocketAddr,
    web: std::net::SocketAddr,
    db: std::net::SocketAddr,
}

fn cloud_text(
    p: &Ports,
    state: &std::path::Path,
    echo: std::net::SocketAddr,
    with_b: bool,
    with_web: bool,
) -> String {
    let mut s = format!(
        "shutdown_grace = \"2s\"\n[control]\nlisten = \"{}\"\nadmin_token = \"{ADMIN_TOKEN}\"\n\
         state_file = \"{}\"\n[tunnel]\nlisten = \"{}\"\nheartbeat_interval = \"500ms\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n",
        p.control,
        state.display(),
        p.tunnel
    );
    if with_web {
        s += &format!(
            "[[mappings]]\nname = \"web\"\nlisten = \"{}\"\nedge = \"e1\"\ntarget = \"{echo}\"\n",
            p.web
        );
    }
    if with_b {
        s += &format!(
            "[[edges]]\nid = \"e2\"\ntoken = \"{TOKEN_B}\"\n\
             [[mappings]]\nname = \"db\"\nlisten = \"{}\"\nedge = \"e2\"\ntarget = \"{echo}\"\n",
            p.db
        );
    }
    s
}

fn tunnel_ids(body: &serde_json::Value) -> Vec<u64> {
    body["tunnels"].as_array().into_iter().flatten().filter_map(|t| t["id"].as_u64()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_applies_new_edges_and_mappings_refuses_a_bad_file_and_reports_what_needs_a_restart()
{
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let echo = echo_server().await;
    let p = Ports { tunnel: free_port(), control: free_port(), web: free_port(), db: free_port() };
    let mut cloud = Agent::spawn("relay-cloud", &cloud_text(&p, &state, echo, false, true));
    cloud.wait_for_log(&["control API listening"], WITHIN).await;
    let api = Api::new(p.control, Some(ADMIN_TOKEN));
    let e1 = Agent::spawn("relay-edge", &edge_toml(p.tunnel, &[echo.to_string()], TOKEN));
    assert!(eventually(WITHIN, || serves(p.web)).await, "web never served");
    let (_, before) = api.call("GET", "/v1/edges/e1", None).await;
    // A connection open across every reload below.
    let mut held = tokio::net::TcpStream::connect(p.web).await.unwrap();
    let echoes = async |held: &mut tokio::net::TcpStream| {
        held.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(WITHIN, held.read_exact(&mut back)).await.is_ok_and(|r| r.is_ok())
            && &back == b"ping"
    };
    assert!(echoes(&mut held).await);

    // Add an edge and a mapping in the file.
    std::fs::write(cloud.config_path(), cloud_text(&p, &state, echo, true, true)).unwrap();
    cloud.hang_up();
    cloud.wait_for_log(&["config reloaded", "mapping db added"], WITHIN).await;
    let e2 = Agent::spawn(
        "relay-edge",
        &edge_toml(p.tunnel, &[echo.to_string()], TOKEN_B).replacen(
            "edge_id = \"e1\"",
            "edge_id = \"e2\"",
            1,
        ),
    );
    assert!(eventually(WITHIN, || serves(p.db)).await, "the reloaded mapping never served");
    let (_, after) = api.call("GET", "/v1/edges/e1", None).await;
    assert_eq!(tunnel_ids(&before), tunnel_ids(&after), "e1's tunnels were not touched");
    assert!(echoes(&mut held).await, "the open connection survived the reload");

    // A file with an error changes nothing and says where.
    std::fs::write(
        cloud.config_path(),
        cloud_text(&p, &state, echo, false, true) + "[[mapings]]\n",
    )
    .unwrap();
    cloud.hang_up();
    let refused = cloud.wait_for_log(&["config reload refused"], WITHIN).await;
    assert!(refused.contains("agent.toml") && refused.contains("mapings"), "{refused}");
    assert!(serves(p.db).await, "db still serves after a refused reload");

    // Removing web drains it (the open connection may finish); moving the
    // tunnel listener needs a restart and is left as it is.
    let mut moved = cloud_text(&p, &state, echo, true, false);
    moved = moved.replacen(&p.tunnel.to_string(), &free_port().to_string(), 1);
    std::fs::write(cloud.config_path(), moved).unwrap();
    cloud.hang_up();
    cloud
        .wait_for_log(&["config reloaded", "mapping web removed from the file: draining"], WITHIN)
        .await;
    cloud.wait_for_log(&["not applied", "[tunnel] changed"], WITHIN).await;
    assert!(echoes(&mut held).await, "the draining mapping's open connection continues");
    assert!(tokio::net::TcpStream::connect(p.web).await.is_err(), "web no longer listens");
    assert!(serves(p.db).await, "db unaffected; the tunnel listener kept its address");
    let (_, events) = api.call("GET", "/v1/events", None).await;
    let reloads = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["kind"] == "config_reloaded")
        .count();
    assert_eq!(reloads, 2, "one event per applied reload: {events}");
    drop((e1, e2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_changes_the_edges_allowlist_for_new_streams_and_keeps_open_ones() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state.json");
    let (web_service, db_service) = (echo_server().await, echo_server().await);
    let p = Ports { tunnel: free_port(), control: free_port(), web: free_port(), db: free_port() };
    // web goes to one service, db to the other; the edge allows db's only.
    let cloud_text = format!(
        "{}[[mappings]]\nname = \"db\"\nlisten = \"{}\"\nedge = \"e1\"\ntarget = \"{db_service}\"\n",
        cloud_text(&p, &state, web_service, false, true),
        p.db
    );
    let mut cloud = Agent::spawn("relay-cloud", &cloud_text);
    cloud.wait_for_log(&["control API listening"], WITHIN).await;
    let mut edge =
        Agent::spawn("relay-edge", &edge_toml(p.tunnel, &[db_service.to_string()], TOKEN));
    assert!(eventually(WITHIN, || serves(p.db)).await, "db never served");
    assert!(!serves(p.web).await, "web's service is not on the allowlist yet");
    let mut held = tokio::net::TcpStream::connect(p.db).await.unwrap();
    let echoes = async |held: &mut tokio::net::TcpStream| {
        held.write_all(b"ping").await.unwrap();
        let mut back = [0u8; 4];
        tokio::time::timeout(WITHIN, held.read_exact(&mut back)).await.is_ok_and(|r| r.is_ok())
            && &back == b"ping"
    };
    assert!(echoes(&mut held).await);

    // Swap the allowlist: web's service in, db's out.
    let swapped = edge_toml(p.tunnel, &[web_service.to_string()], TOKEN);
    std::fs::write(edge.config_path(), &swapped).unwrap();
    edge.hang_up();
    let said = edge.wait_for_log(&["config reloaded", "allowed now"], WITHIN).await;
    assert!(said.contains(&web_service.to_string()), "{said}");
    edge.wait_for_log(&["no longer allowed", "connections open to them continue"], WITHIN).await;
    assert!(serves(p.web).await, "web serves at once, without a restart");
    assert!(!serves(p.db).await, "a new db stream is refused");
    assert!(echoes(&mut held).await, "the db connection open before goes on");

    // A file with an error changes nothing and says where.
    std::fs::write(edge.config_path(), format!("{swapped}alow = []\n")).unwrap();
    edge.hang_up();
    let refused = edge.wait_for_log(&["config reload refused"], WITHIN).await;
    assert!(refused.contains("agent.toml") && refused.contains("alow"), "{refused}");
    assert!(serves(p.web).await, "the allowlist stays as it was");

    // What needs a restart is said, and left as it runs.
    std::fs::write(edge.config_path(), swapped.replacen("edge_id", "tunnels = 5\nedge_id", 1))
        .unwrap();
    edge.hang_up();
    edge.wait_for_log(&["not applied until a restart", "tunnels"], WITHIN).await;
    assert!(serves(p.web).await);
    drop(cloud);
}
