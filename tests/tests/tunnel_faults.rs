//! Bad input and faults: refusals with distinct reasons, allowlist denials,
//! and hostile frames that close one tunnel while the process and the other
//! tunnels carry on.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use bytes::{Bytes, BytesMut};
use e2e_tests::fake_edge::{
    FAKE_TOKEN, Ws, auth, challenge, encode, fake_edge, recv_frame, recv_frames,
};
use e2e_tests::{
    TOKEN, cloud_config, echo_once, echo_server, edge_config, edge_toml, eventually, serves,
};
use futures_util::{SinkExt, StreamExt};
use proto::{Frame, GoAwayCode, NONCE_LEN, PROTOCOL_VERSION, RefuseCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// A cloud with edges `e1` (the real edge) and `fake` (driven by hand), and
/// the given mappings on edge `e1`.
async fn start_cloud(mappings: &[(&str, String)]) -> Cloud {
    let mut toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n[[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n"
    );
    for (name, target) in mappings {
        toml.push_str(&format!(
            "[[mappings]]\nname = \"{name}\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{target}\"\n"
        ));
    }
    Cloud::start(cloud_config(&toml)).await.expect("cloud starts")
}

/// Reads until the cloud closes the tunnel; returns the go-away it sent.
async fn expect_go_away(ws: &mut Ws) -> (GoAwayCode, String) {
    loop {
        let Some(frames) = recv_frames(ws).await else { panic!("tunnel ended without a go-away") };
        for frame in frames {
            match frame {
                Frame::GoAway { code, message } => return (code, message),
                Frame::Ping { .. } | Frame::Pong { .. } => {}
                other => panic!("expected a go-away, got {other:?}"),
            }
        }
    }
}

async fn cloud_with_real_edge() -> (Cloud, Edge, SocketAddr) {
    let echo = echo_server().await;
    let cloud = start_cloud(&[("echo", echo.to_string())]).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let public = cloud.mapping_addr("echo").expect("listening");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "real edge never served");
    (cloud, edge, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_have_distinct_reasons() {
    let cloud = start_cloud(&[]).await;
    let addr = cloud.tunnel_addr();
    let cases = [
        (
            "wrong token",
            auth_for(addr, "fake", TOKEN, PROTOCOL_VERSION).await,
            RefuseCode::BadToken,
        ),
        (
            "unknown edge",
            auth_for(addr, "nobody", FAKE_TOKEN, PROTOCOL_VERSION).await,
            RefuseCode::UnknownEdge,
        ),
        (
            "future version",
            auth_for(addr, "fake", FAKE_TOKEN, 999).await,
            RefuseCode::VersionMismatch,
        ),
    ];
    for (what, refusal, expected) in cases {
        assert_eq!(refusal, Some(expected), "{what}");
    }
    cloud.shutdown().await;
}

async fn auth_for(
    cloud: SocketAddr,
    edge_id: &str,
    token: &str,
    version: u16,
) -> Option<RefuseCode> {
    let (mut ws, nonce) = challenge(cloud).await;
    ws.send(Message::Binary(encode(&auth(&nonce, edge_id, token, version)))).await.ok()?;
    match recv_frame(&mut ws).await {
        Some(Frame::Refuse { code, .. }) => Some(code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replayed_handshake_is_refused() {
    let cloud = start_cloud(&[]).await;
    // Record a valid auth for one challenge...
    let (mut first, nonce) = challenge(cloud.tunnel_addr()).await;
    let recorded = encode(&auth(&nonce, "fake", FAKE_TOKEN, PROTOCOL_VERSION));
    first.send(Message::Binary(recorded.clone())).await.expect("send");
    assert!(matches!(recv_frame(&mut first).await, Some(Frame::Welcome { .. })));
    // ...and replay it, byte for byte, on a new connection.
    let (mut replay, _fresh_nonce) = challenge(cloud.tunnel_addr()).await;
    replay.send(Message::Binary(recorded)).await.expect("send");
    assert!(
        matches!(
            recv_frame(&mut replay).await,
            Some(Frame::Refuse { code: RefuseCode::BadToken, .. })
        ),
        "a replayed auth must not be accepted"
    );
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frame_closes_that_tunnel_only() {
    let (cloud, edge, public) = cloud_with_real_edge().await;
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    // A data frame header claiming 16 MiB: refused on the length field.
    let mut header = BytesMut::new();
    Frame::encode_data_header(1, 16 << 20, &mut header);
    ws.send(Message::Binary(header.freeze())).await.expect("send");
    let (code, message) = expect_go_away(&mut ws).await;
    assert_eq!(code, GoAwayCode::ProtocolError);
    assert!(message.contains("exceeds the maximum"), "{message}");
    // The real edge's tunnels and the process are untouched.
    assert!(serves(public).await);
    assert_eq!(cloud.live_tunnels("e1"), 2);
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_message_and_bad_frames_close_that_tunnel_only() {
    let (cloud, edge, public) = cloud_with_real_edge().await;
    // A WebSocket message far over the limit: the WebSocket layer refuses it.
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    let _ = ws.send(Message::Binary(Bytes::from(vec![0u8; 8 << 20]))).await;
    expect_closed(&mut ws).await;
    // Malformed and out-of-order frames, each on its own tunnel.
    let bad: Vec<(&str, Bytes)> = vec![
        ("unknown kind", Bytes::from_static(&[0x7e, 0, 0, 0, 1, 0, 0, 0, 0])),
        ("truncated", Bytes::from_static(&[0x03, 0, 0, 0, 1, 0, 0, 0, 9, 1, 2])),
        ("data on stream 0", Bytes::from_static(&[0x03, 0, 0, 0, 0, 0, 0, 0, 1, 1])),
        (
            "open from the edge side",
            encode(&Frame::Open {
                stream: 1,
                window: 1024,
                mapping: "x".into(),
                host: "127.0.0.1".into(),
                port: 1,
                origin: None,
            }),
        ),
        (
            "handshake frame after handshake",
            encode(&Frame::Challenge { min_version: 1, max_version: 1, nonce: [0; NONCE_LEN] }),
        ),
    ];
    for (what, bytes) in bad {
        let mut ws = fake_edge(cloud.tunnel_addr()).await;
        ws.send(Message::Binary(bytes)).await.expect("send");
        let (code, message) = expect_go_away(&mut ws).await;
        assert_eq!(code, GoAwayCode::ProtocolError, "{what}: {message}");
    }
    assert!(serves(public).await, "real edge must keep serving");
    assert_eq!(cloud.live_tunnels("e1"), 2);
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// Reads until the cloud ends the connection; fails if it stays open.
async fn expect_closed(ws: &mut Ws) {
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => continue, // pings or a go-away before the close
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the cloud kept the offending tunnel open");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_on_the_tunnel_port_is_closed() {
    let (cloud, edge, public) = cloud_with_real_edge().await;
    let mut tcp = TcpStream::connect(cloud.tunnel_addr()).await.expect("connect");
    tcp.write_all(b"\x16\x03\x01 definitely not a websocket upgrade\r\n\r\n").await.expect("write");
    // The cloud may answer (an HTTP error) but must then end the
    // connection: bytes alone do not count as closed.
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(Duration::from_secs(15), async {
        let mut buf = [0u8; 512];
        loop {
            match tokio::io::AsyncReadExt::read(&mut tcp, &mut buf).await {
                Ok(0) => return "EOF".to_owned(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return e.to_string(),
            }
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    let how = ended.unwrap_or_else(|_| panic!("garbage connection left open; got {answer:?}"));
    assert!(!answer.contains(" 101 "), "the cloud upgraded garbage: {answer:?} ({how})");
    assert!(serves(public).await);
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destinations_outside_the_allowlist_are_refused() {
    let allowed = echo_server().await;
    // A service the edge must never connect to; it counts attempts.
    let forbidden = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let forbidden_addr = forbidden.local_addr().expect("addr");
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&reached);
    tokio::spawn(async move {
        while forbidden.accept().await.is_ok() {
            counter.fetch_add(1, Ordering::SeqCst);
        }
    });
    let cloud =
        start_cloud(&[("ok", allowed.to_string()), ("nope", forbidden_addr.to_string())]).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[allowed.to_string()], TOKEN)))
            .expect("edge");
    let ok = cloud.mapping_addr("ok").expect("ok listening");
    let nope = cloud.mapping_addr("nope").expect("nope listening");
    assert!(eventually(Duration::from_secs(10), || serves(ok)).await);
    for _ in 0..3 {
        let result = tokio::time::timeout(Duration::from_secs(5), echo_once(nope, b"hello")).await;
        match result {
            Ok(Ok(back)) => assert!(back.is_empty(), "denied destination answered"),
            Ok(Err(_)) => {} // reset: what a refused direct connection shows
            Err(_) => panic!("client of a denied destination left hanging"),
        }
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        0,
        "edge connected to a destination outside its allowlist"
    );
    // The reason: the edge's allowlist refused each of them, nothing else.
    assert_eq!(edge.streams_denied(), 3, "edge did not deny the three streams itself");
    assert!(serves(ok).await, "the tunnel must be unaffected");
    assert_eq!(cloud.live_tunnels("e1"), 2);
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_destination_closes_the_client_and_not_the_tunnel() {
    let echo = echo_server().await;
    let dead = e2e_tests::free_port(); // nothing listens here
    let cloud = start_cloud(&[("echo", echo.to_string()), ("dead", dead.to_string())]).await;
    let edge = Edge::start(edge_config(&edge_toml(
        cloud.tunnel_addr(),
        &[echo.to_string(), dead.to_string()],
        TOKEN,
    )))
    .expect("edge");
    let public = cloud.mapping_addr("echo").expect("listening");
    let dead_public = cloud.mapping_addr("dead").expect("listening");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await);
    let result = tokio::time::timeout(Duration::from_secs(5), echo_once(dead_public, b"x")).await;
    assert!(
        matches!(result, Ok(Err(_)) | Ok(Ok(_))),
        "client of a refused destination left hanging"
    );
    if let Ok(Ok(back)) = result {
        assert!(back.is_empty());
    }
    // The reason: the edge tried the destination and the connect failed.
    assert_eq!(edge.connects_failed(), 1, "the edge did not try the dead destination");
    assert_eq!(edge.streams_denied(), 0);
    assert!(serves(public).await);
    assert_eq!(cloud.live_tunnels("e1"), 2);
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// An echo service that counts the connections it accepts.
async fn counting_echo() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&accepted);
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let (mut r, mut w) = tcp.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    (addr, accepted)
}

/// Starts an edge with `allow` (and `check_resolved`) against `cloud` and
/// waits until its tunnels are up.
async fn with_edge(cloud: &Cloud, allow: &[String], check_resolved: bool) -> Edge {
    let mut toml = edge_toml(cloud.tunnel_addr(), allow, TOKEN);
    if check_resolved {
        toml = toml.replacen("[reconnect]", "check_resolved = true\n[reconnect]", 1);
    }
    let edge = Edge::start(edge_config(&toml)).expect("edge");
    assert!(
        eventually(Duration::from_secs(10), || async { cloud.live_tunnels("e1") == 2 }).await,
        "edge tunnels never came up"
    );
    edge
}

/// Shuts `edge` down and waits until the cloud has dropped its tunnels.
async fn stop_edge(cloud: &Cloud, edge: Edge) {
    edge.shutdown().await;
    assert!(
        eventually(Duration::from_secs(10), || async { cloud.live_tunnels("e1") == 0 }).await,
        "edge tunnels still registered after its shutdown"
    );
}

/// A client through `public` is closed without one byte relayed.
async fn assert_refused(public: SocketAddr, what: &str) {
    let result = tokio::time::timeout(Duration::from_secs(5), echo_once(public, b"hello")).await;
    match result {
        Ok(Ok(back)) => assert!(back.is_empty(), "{what}: the destination answered"),
        Ok(Err(_)) => {} // reset, as a refused direct connection
        Err(_) => panic!("{what}: client left hanging"),
    }
}

/// `allow` entries may be networks, which admit IP destinations; a name
/// needs its own entry, and with `check_resolved` the addresses it
/// resolves to must lie in an allowed network too, or the stream is
/// denied before anything is dialled. `localhost` stands in for a name
/// whose DNS an attacker controls: it resolves to 127.0.0.1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowlist_networks_admit_addresses_and_check_resolved_names() {
    let (service, accepted) = counting_echo().await;
    let port = service.port();
    let by_name = format!("localhost:{port}");
    let cloud = start_cloud(&[("byip", service.to_string()), ("byname", by_name.clone())]).await;
    let byip = cloud.mapping_addr("byip").expect("byip listening");
    let byname = cloud.mapping_addr("byname").expect("byname listening");

    // A network admits the IP; the listed name resolves inside it.
    let edge = with_edge(&cloud, &[format!("127.0.0.0/8:{port}"), by_name.clone()], true).await;
    assert!(serves(byip).await, "an address inside an allowed network was not served");
    assert!(serves(byname).await, "a name resolving inside an allowed network was not served");
    assert_eq!(edge.streams_denied(), 0);
    stop_edge(&cloud, edge).await;

    // The name is listed, but resolves outside the only network: denied,
    // and the service never sees a connection; the IP is not admitted.
    let before = accepted.load(Ordering::SeqCst);
    let edge = with_edge(&cloud, &["10.0.0.0/8:*".to_owned(), by_name.clone()], true).await;
    assert_refused(byname, "name resolving outside the networks").await;
    assert_refused(byip, "address outside the networks").await;
    assert_eq!(edge.streams_denied(), 2, "the edge's allowlist did not deny both");
    assert_eq!(accepted.load(Ordering::SeqCst), before, "the edge connected anyway");
    stop_edge(&cloud, edge).await;

    // Without check_resolved the same list trusts the name's DNS.
    let edge = with_edge(&cloud, &["10.0.0.0/8:*".to_owned(), by_name], false).await;
    assert!(serves(byname).await, "an unchecked listed name was not served");
    assert_eq!(edge.streams_denied(), 0);
    stop_edge(&cloud, edge).await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_in_use_fails_only_its_mapping() {
    let echo = echo_server().await;
    let squatter = TcpListener::bind("127.0.0.1:0").await.expect("bind squatter");
    let taken = squatter.local_addr().expect("addr");
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\n[[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n\
         [[mappings]]\nname = \"taken\"\nlisten = \"{taken}\"\nedge = \"e1\"\ntarget = \"{echo}\"\n\
         [[mappings]]\nname = \"free\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{echo}\"\n"
    );
    let cloud =
        Cloud::start(cloud_config(&toml)).await.expect("cloud starts despite one bad mapping");
    match cloud.mappings().get("taken") {
        Some(agent_cloud::MappingStatus::Failed(reason)) => {
            assert!(reason.contains(&taken.to_string()), "{reason}");
            assert!(reason.to_lowercase().contains("in use"), "{reason}");
        }
        other => panic!("mapping on a taken port: {other:?}"),
    }
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let free = cloud.mapping_addr("free").expect("the other mapping listens");
    assert!(
        eventually(Duration::from_secs(10), || serves(free)).await,
        "the other mapping must serve"
    );
    drop(squatter);
    edge.shutdown().await;
    cloud.shutdown().await;
}
