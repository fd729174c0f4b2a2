//! Hostile peers: floods of stalled handshakes, a fake edge that overruns
//! its window, clients that open and reset in a loop, and a fake cloud that
//! reuses stream ids. Each ends with the offender cut off, nothing leaked,
//! and real agents still working.

use std::net::SocketAddr;
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use bytes::{Bytes, BytesMut};
use e2e_tests::{TOKEN, cloud_config, echo_server, edge_config, edge_toml, eventually, serves};
use futures_util::{SinkExt, StreamExt};
use proto::{Frame, GoAwayCode, NONCE_LEN, OpenCode, PROTOCOL_VERSION};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

const FAKE_TOKEN: &str = "Hk2pW9xQv7LmT4sZr1NcY8bDf3GjE6aU";

fn encode(frame: &Frame) -> Bytes {
    let mut buf = BytesMut::new();
    frame.encode(&mut buf);
    buf.freeze()
}

fn frames(mut bytes: Bytes) -> Vec<Frame> {
    let mut out = Vec::new();
    while let Ok(Some(f)) = proto::decode(&mut bytes, 1 << 20) {
        out.push(f);
    }
    out
}

/// Reads until a go-away arrives (or 5 s of silence, or the end).
async fn next_go_away<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Option<(GoAwayCode, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Binary(bytes) = msg {
            for frame in frames(bytes) {
                if let Frame::GoAway { code, message } = frame {
                    return Some((code, message));
                }
            }
        }
    }
    None
}

/// A cloud with the real edge `e1` serving `echo`, and edge `fake` serving
/// mapping `fakemap` (to be driven by hand).
async fn cloud_with_fake_edge(echo: SocketAddr) -> Cloud {
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"2s\"\n\
         handshake_timeout = \"2s\"\n\
         [[edges]]\nid = \"e1\"\ntoken = \"{TOKEN}\"\n[[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n\
         [[mappings]]\nname = \"echo\"\nlisten = \"127.0.0.1:0\"\nedge = \"e1\"\ntarget = \"{echo}\"\n\
         [[mappings]]\nname = \"fakemap\"\nlisten = \"127.0.0.1:0\"\nedge = \"fake\"\ntarget = \"127.0.0.1:9\"\n"
    );
    Cloud::start(cloud_config(&toml)).await.expect("cloud")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_from_one_address_do_not_lock_out_a_real_edge() {
    let echo = echo_server().await;
    let cloud = cloud_with_fake_edge(echo).await;
    // 600 connections from 127.0.0.2 that never say anything.
    let mut stalled = Vec::new();
    for _ in 0..600 {
        let socket = TcpSocket::new_v4().expect("socket");
        socket.bind("127.0.0.2:0".parse().expect("addr")).expect("bind 127.0.0.2");
        if let Ok(tcp) = socket.connect(cloud.tunnel_addr()).await {
            stalled.push(tcp);
        }
    }
    // A real edge from 127.0.0.1 still connects at once.
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    assert!(
        eventually(Duration::from_secs(5), || serves(public)).await,
        "a real edge could not get in past the stalled handshakes"
    );
    // The stalled connections are cut at the handshake deadline (2 s).
    let mut buf = [0u8; 1];
    let first = &mut stalled[0];
    let cut = tokio::time::timeout(
        Duration::from_secs(6),
        tokio::io::AsyncReadExt::read(first, &mut buf),
    )
    .await;
    assert!(matches!(cut, Ok(Ok(0) | Err(_))), "a stalled handshake was kept open: {cut:?}");
    drop(stalled);
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// Handshakes as edge `fake` and returns the socket.
async fn fake_edge(
    cloud: SocketAddr,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>> {
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{cloud}/tunnel")).await.expect("connect");
    let Some(Ok(Message::Binary(challenge))) = ws.next().await else { panic!("no challenge") };
    let Some(Frame::Challenge { nonce: server_nonce, .. }) = frames(challenge).pop() else {
        panic!("not a challenge")
    };
    let nonce = [3u8; NONCE_LEN];
    let proof = proto::auth_proof(
        FAKE_TOKEN.as_bytes(),
        &server_nonce,
        &nonce,
        PROTOCOL_VERSION,
        1,
        "fake",
    );
    let auth = Frame::Auth {
        version: PROTOCOL_VERSION,
        edge_id: "fake".into(),
        epoch: 1,
        agent_version: "t".into(),
        nonce,
        proof,
    };
    ws.send(Message::Binary(encode(&auth))).await.expect("auth");
    let Some(Ok(Message::Binary(welcome))) = ws.next().await else { panic!("no welcome") };
    assert!(matches!(frames(welcome).pop(), Some(Frame::Welcome { .. })));
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_overruns_its_window_loses_its_tunnel_only() {
    let echo = echo_server().await;
    let cloud = cloud_with_fake_edge(echo).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await);
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    // A client of the fake edge's mapping makes the cloud open a stream.
    let _client =
        TcpStream::connect(cloud.mapping_addr("fakemap").expect("fakemap")).await.expect("client");
    let stream = loop {
        let Some(Ok(Message::Binary(bytes))) = ws.next().await else {
            panic!("tunnel ended early")
        };
        if let Some(Frame::Open { stream, window, .. }) =
            frames(bytes).into_iter().find(|f| matches!(f, Frame::Open { .. }))
        {
            assert!(window > 0);
            break stream;
        }
    };
    ws.send(Message::Binary(encode(&Frame::OpenResult {
        stream,
        code: OpenCode::Ok,
        window: 65536,
        message: String::new(),
    })))
    .await
    .expect("open result");
    // Then more data than the cloud's window (256 KiB) allows, as legal
    // frames in one message, so no window update can arrive in between.
    let mut burst = BytesMut::new();
    for _ in 0..5 {
        Frame::Data { stream, payload: Bytes::from(vec![0u8; 64 * 1024]) }.encode(&mut burst);
    }
    ws.send(Message::Binary(burst.freeze())).await.expect("burst");
    let (code, message) =
        next_go_away(&mut ws).await.expect("the cloud must close a tunnel that overruns a window");
    assert_eq!(code, GoAwayCode::ProtocolError);
    assert!(message.contains("allowed"), "{message}");
    assert!(serves(public).await, "the real edge keeps serving");
    assert_eq!(cloud.live_tunnels("e1"), 2);
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_open_and_reset_in_a_loop_leave_nothing_behind() {
    let echo = echo_server().await;
    let cloud = cloud_with_fake_edge(echo).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await);
    for round in 0..20 {
        let mut batch = Vec::new();
        for _ in 0..100 {
            batch.push(tokio::spawn(async move {
                if let Ok(mut tcp) = TcpStream::connect(public).await {
                    if round % 2 == 0 {
                        let _ = tcp.write_all(b"half a request").await;
                    }
                    // Close with an RST instead of a FIN.
                    let _ = socket2::SockRef::from(&tcp).set_linger(Some(Duration::ZERO));
                }
            }));
        }
        for t in batch {
            t.await.expect("client");
        }
    }
    // Every stream is gone again on both sides.
    assert!(
        eventually(Duration::from_secs(10), || async { edge.open_streams() == 0 }).await,
        "edge still holds {} streams after the churn",
        edge.open_streams()
    );
    assert!(serves(public).await);
    assert_eq!(cloud.live_tunnels("e1"), 2, "the churn must not cost a tunnel");
    edge.shutdown().await;
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_drops_a_tunnel_whose_cloud_reuses_a_stream_id() {
    // A fake cloud: completes the handshake, then opens stream 1 twice.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let echo = echo_server().await;
    let edge =
        Edge::start(edge_config(&edge_toml(addr, &[echo.to_string()], TOKEN))).expect("edge");
    let mut connections = 0;
    let mut go_away = None;
    while connections < 2 {
        let (tcp, _) = tokio::time::timeout(Duration::from_secs(10), listener.accept())
            .await
            .expect("edge dials")
            .expect("accept");
        connections += 1;
        let mut ws = tokio_tungstenite::accept_async(tcp).await.expect("ws");
        let server_nonce = [9u8; NONCE_LEN];
        let challenge = Frame::Challenge { min_version: 1, max_version: 1, nonce: server_nonce };
        ws.send(Message::Binary(encode(&challenge))).await.expect("challenge");
        let Some(Ok(Message::Binary(auth))) = ws.next().await else { panic!("no auth") };
        let Some(Frame::Auth { nonce, .. }) = frames(auth).pop() else { panic!("not auth") };
        let proof = proto::server_proof(TOKEN.as_bytes(), &server_nonce, &nonce, 77);
        let welcome = Frame::Welcome {
            version: 1,
            tunnel_id: 77,
            heartbeat_ms: 500,
            max_streams: 100,
            max_frame_payload: 256 * 1024,
            proof,
        };
        ws.send(Message::Binary(encode(&welcome))).await.expect("welcome");
        if connections == 2 {
            break; // the edge is still dialling in: enough
        }
        let open = Frame::Open {
            stream: 1,
            window: 65536,
            mapping: "m".into(),
            host: "127.0.0.1".into(),
            port: echo.port(),
        };
        ws.send(Message::Binary(encode(&open))).await.expect("open");
        ws.send(Message::Binary(encode(&open))).await.expect("open again");
        go_away = next_go_away(&mut ws).await;
    }
    let (code, message) = go_away.expect("the edge must close a tunnel with a reused stream id");
    assert_eq!(code, GoAwayCode::ProtocolError);
    assert!(message.contains("stream id 1"), "{message}");
    edge.shutdown().await;
}
