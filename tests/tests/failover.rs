//! Edge groups: a mapping served by three edges; one is killed with
//! SIGKILL; new connections go to the others with no error visible to
//! clients beyond the connections that were on the lost edge.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use e2e_tests::fake_edge::{FAKE_TOKEN, encode, fake_edge, recv_frames};
use e2e_tests::{
    ADMIN_TOKEN, Agent, Api, TOKEN, cloud_config, echo_once, echo_server, edge_config, eventually,
    serves,
};
use futures_util::SinkExt;
use proto::{Frame, OpenCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

const EDGES: [(&str, &str); 3] = [
    ("site-a", "Aq1Ws2Ed3Rf4Tg5Yh6Uj7Ik8Ol9Pm0Nb"),
    ("site-b", "Bz9Xc8Vb7Nm6Lk5Jh4Gf3Ds2Aq1Wp0Oi"),
    ("site-c", "Cm3Nj8Hb4Gv7Fc2Dx6Sz1Aq5Wr9Et0Yu"),
];

fn cloud_toml(state: &std::path::Path, target: &str) -> String {
    let mut s = format!(
        "shutdown_grace = \"2s\"\n[control]\nlisten = \"127.0.0.1:0\"\nadmin_token = \"{ADMIN_TOKEN}\"\nstate_file = \"{}\"\n\
         [tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n",
        state.display()
    );
    for (id, token) in EDGES {
        s.push_str(&format!("[[edges]]\nid = \"{id}\"\ntoken = \"{token}\"\n"));
    }
    s.push_str(&format!(
        "[[groups]]\nid = \"db-sites\"\nedges = [\"site-a\", \"site-b\", \"site-c\"]\n\
         [[mappings]]\nname = \"db\"\nlisten = \"127.0.0.1:0\"\nedge = \"db-sites\"\ntarget = \"{target}\"\n"
    ));
    s
}

fn edge_toml(cloud: std::net::SocketAddr, id: &str, token: &str, target: &str) -> String {
    format!(
        "cloud_url = \"ws://{cloud}/tunnel\"\nedge_id = \"{id}\"\ntoken = \"{token}\"\nallow = [\"{target}\"]\n\
         [reconnect]\ninitial = \"50ms\"\nmax = \"500ms\"\n"
    )
}

/// Streams open on each edge's tunnels, from the control API.
async fn streams_per_edge(api: &Api) -> Vec<(String, u64)> {
    let (_, edges) = api.call("GET", "/v1/edges", None).await;
    edges
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            let streams = e["tunnels"]
                .as_array()
                .map_or(0, |ts| ts.iter().map(|t| t["streams"].as_u64().unwrap_or(0)).sum());
            (e["id"].as_str().unwrap_or_default().to_owned(), streams)
        })
        .collect()
}

async fn round_trip(tcp: &mut TcpStream) -> bool {
    let ok = async {
        tcp.write_all(b"still here").await?;
        let mut back = [0u8; 10];
        tcp.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(&back == b"still here")
    };
    matches!(tokio::time::timeout(Duration::from_secs(5), ok).await, Ok(Ok(true)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_survives_losing_one_of_three_edges() {
    let dir = tempfile::tempdir().expect("dir");
    let echo = echo_server().await.to_string();
    let cloud = Cloud::start(cloud_config(&cloud_toml(&dir.path().join("state.json"), &echo)))
        .await
        .expect("cloud");
    let api = Api::new(cloud.control_addr().expect("control"), Some(ADMIN_TOKEN));
    let mut edges: Vec<Agent> = EDGES
        .iter()
        .map(|(id, token)| {
            Agent::spawn("relay-edge", &edge_toml(cloud.tunnel_addr(), id, token, &echo))
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(10), || async {
            EDGES.iter().all(|(id, _)| cloud.live_tunnels(id) == 2)
        })
        .await,
        "not every edge connected"
    );
    let public = cloud.mapping_addr("db").expect("db listening");

    // Six long-lived connections spread over the least loaded tunnels.
    let mut open = Vec::new();
    for _ in 0..6 {
        let mut tcp = TcpStream::connect(public).await.expect("connect");
        assert!(round_trip(&mut tcp).await);
        open.push(tcp);
    }
    let spread = streams_per_edge(&api).await;
    assert!(spread.iter().all(|(_, n)| *n == 2), "streams not spread over the group: {spread:?}");

    // Kill one edge outright.
    edges[0].signal("KILL");
    assert_eq!(edges[0].wait_exit(Duration::from_secs(5)).await, None);

    // New connections keep working, at once, with no errors.
    let mut failures = 0;
    for i in 0..30 {
        let payload = format!("request {i}");
        match echo_once(public, payload.as_bytes()).await {
            Ok(back) if back == payload.as_bytes() => {}
            _ => failures += 1,
        }
    }
    assert_eq!(failures, 0, "clients saw errors after one edge of the group died");

    // Connections on the survivors are untouched; those on the dead edge end.
    let mut survived = 0;
    for tcp in &mut open {
        if round_trip(tcp).await {
            survived += 1;
        }
    }
    assert_eq!(survived, 4, "exactly the two connections of the killed edge are lost");
    let (_, edges_now) = api.call("GET", "/v1/edges", None).await;
    let health: Vec<(String, String)> = edges_now
        .as_array()
        .expect("edges")
        .iter()
        .map(|e| {
            (
                e["id"].as_str().unwrap_or_default().to_owned(),
                e["health"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(health.iter().any(|(id, h)| id == "site-a" && h != "connected"), "{health:?}");

    // An operator drains another edge: new connections avoid it too.
    let (status, _) = api.call("POST", "/v1/edges/site-b/drain", None).await;
    assert_eq!(status, 202);
    let before = streams_per_edge(&api).await;
    let mut held = Vec::new();
    for _ in 0..4 {
        let mut tcp = TcpStream::connect(public).await.expect("connect");
        assert!(round_trip(&mut tcp).await);
        held.push(tcp);
    }
    let after = streams_per_edge(&api).await;
    let grew = |id: &str| {
        let get = |v: &Vec<(String, u64)>| v.iter().find(|(e, _)| e == id).map_or(0, |(_, n)| *n);
        get(&after) as i64 - get(&before) as i64
    };
    assert_eq!(grew("site-b"), 0, "a drained edge got new streams: {before:?} -> {after:?}");
    assert_eq!(grew("site-c"), 4, "{before:?} -> {after:?}");
    assert!(serves(public).await);
    drop(held);
    drop(open);
    for edge in &mut edges[1..] {
        edge.signal("TERM");
    }
    cloud.shutdown().await;
}

/// A group whose first member answers every open with `Draining` (as an
/// edge does in the moment between deciding to stop and its `Drain` frame
/// reaching the cloud): every client is carried by the other member.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_answers_draining_is_skipped_for_another_member() {
    let echo = echo_server().await;
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n[[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n\
         [[groups]]\nid = \"pool\"\nedges = [\"fake\", \"e1\"]\n\
         [[mappings]]\nname = \"pooled\"\nlisten = \"127.0.0.1:0\"\nedge = \"pool\"\ntarget = \"{echo}\"\n"
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), "e1", TOKEN, &echo.to_string())))
            .expect("edge");
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    let opens = Arc::new(AtomicUsize::new(0));
    let fake = {
        let opens = Arc::clone(&opens);
        tokio::spawn(async move {
            while let Some(frames) = recv_frames(&mut ws).await {
                for frame in frames {
                    let answer = match frame {
                        Frame::Ping { nonce } => Frame::Pong { nonce },
                        Frame::Open { stream, .. } => {
                            opens.fetch_add(1, Ordering::Relaxed);
                            Frame::OpenResult {
                                stream,
                                code: OpenCode::Draining,
                                window: 0,
                                message: "edge is shutting down".into(),
                            }
                        }
                        _ => continue,
                    };
                    if ws.send(Message::Binary(encode(&answer))).await.is_err() {
                        return;
                    }
                }
            }
        })
    };
    assert!(
        eventually(Duration::from_secs(10), || async {
            cloud.live_tunnels("fake") == 1 && cloud.live_tunnels("e1") == 2
        })
        .await,
        "edges never connected"
    );
    let public = cloud.mapping_addr("pooled").expect("pooled listening");
    let mut failures = 0;
    for i in 0..10 {
        let payload = format!("request {i}");
        match echo_once(public, payload.as_bytes()).await {
            Ok(back) if back == payload.as_bytes() => {}
            _ => failures += 1,
        }
    }
    assert!(opens.load(Ordering::Relaxed) > 0, "the draining member was never tried");
    assert_eq!(failures, 0, "clients failed when a group member answered Draining");
    fake.abort();
    edge.shutdown().await;
    cloud.shutdown().await;
}
