//! Hostile peers against the real `relay-cloud` process: floods of tiny and
//! empty frames measured in resident memory, and clients that vanish while
//! their stream waits for credit.

use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use bytes::{BufMut, Bytes, BytesMut};
use e2e_tests::fake_edge::{FAKE_TOKEN, Ws, encode, fake_edge, recv_frames};
use e2e_tests::{
    ADMIN_TOKEN, Api, TOKEN, cloud_config, cloud_toml_with_control, edge_config, edge_toml,
    eventually, start_cloud_with,
};
use futures_util::SinkExt;
use proto::{Frame, GoAwayCode, OpenCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Streams the fake edge floods, each towards a client that never reads.
const STREAMS: usize = 20;
/// Bytes sent on each stream: four initial windows. The kernel takes up to
/// about 1 MiB per socket before the cloud must hold anything, so this is
/// what the cloud's reader must get through as fast as the fake edge can
/// send it (a debug build reads a few million frames a second).
const PER_STREAM: u64 = 256 * 1024;
/// 1-byte data frames per message (about 80 KiB of wire each).
const FRAMES_PER_MESSAGE: usize = 8192;

fn fake_cloud_toml() -> String {
    format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"500ms\"\nheartbeat_timeout = \"5s\"\n\
         [[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n\
         [[mappings]]\nname = \"fakemap\"\nlisten = \"127.0.0.1:0\"\nedge = \"fake\"\ntarget = \"127.0.0.1:9\"\n"
    )
}

/// One message of `n` 1-byte data frames on `stream`.
fn one_byte_frames(stream: u32, n: usize) -> Bytes {
    let mut buf = BytesMut::with_capacity(n * (proto::HEADER_LEN + 1));
    for i in 0..n {
        Frame::encode_data_header(stream, 1, &mut buf);
        buf.put_u8((i % 251) as u8);
    }
    buf.freeze()
}

/// A client with a tiny receive buffer that connects and never reads.
async fn stalled_client(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    socket.connect(addr).await.expect("client connects")
}

/// Answers the cloud's opens and pings until `want` streams are open;
/// returns each stream with the credit it was granted.
async fn accept_opens(ws: &mut Ws, want: usize) -> Vec<(u32, u64)> {
    let mut streams = Vec::new();
    while streams.len() < want {
        let frames = recv_frames(ws).await.expect("opens from the cloud");
        for frame in frames {
            match frame {
                Frame::Open { stream, window, .. } => {
                    let ok = Frame::OpenResult {
                        stream,
                        code: OpenCode::Ok,
                        window: 64 * 1024,
                        message: String::new(),
                    };
                    ws.send(Message::Binary(encode(&ok))).await.expect("open result");
                    streams.push((stream, u64::from(window)));
                }
                Frame::Ping { nonce } => {
                    ws.send(Message::Binary(encode(&Frame::Pong { nonce }))).await.expect("pong");
                }
                _ => {}
            }
        }
    }
    streams
}

/// A fake edge sends [`PER_STREAM`] bytes on every stream as 1-byte frames
/// (following the window as the cloud grants more) towards clients that do
/// not read. The cloud's peak resident memory must stay within its
/// documented bound: per stream the initial window plus one copy block, not
/// a queue entry and an allocation (pinning a read buffer) per frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_byte_frame_floods_stay_within_the_memory_bound() {
    let mut cloud = start_cloud_with(&fake_cloud_toml(), &["fakemap"]).await;
    let mut ws = fake_edge(cloud.tunnel).await;
    cloud.agent.wait_for_log(&["edge connected", "edge=fake"], Duration::from_secs(10)).await;
    let mut clients = Vec::new();
    for _ in 0..STREAMS {
        clients.push(stalled_client(cloud.mappings[0]).await);
    }
    let streams = accept_opens(&mut ws, STREAMS).await;
    let before = cloud.agent.peak_rss_kib();
    // Send each stream's credit as 1-byte frames; then keep following the
    // limits the cloud grants until every stream has sent its share.
    let mut limits: std::collections::HashMap<u32, (u64, u64)> =
        streams.iter().map(|&(id, window)| (id, (0, window))).collect();
    let mut sent_total = 0u64;
    loop {
        let mut sent_now = 0;
        for (&id, (sent, limit)) in limits.iter_mut() {
            while *sent < (*limit).min(PER_STREAM) {
                let n = FRAMES_PER_MESSAGE
                    .min(usize::try_from((*limit).min(PER_STREAM) - *sent).unwrap());
                ws.send(Message::Binary(one_byte_frames(id, n))).await.expect("flood");
                *sent += n as u64;
                sent_now += n as u64;
            }
        }
        sent_total += sent_now;
        if limits.values().all(|(sent, _)| *sent >= PER_STREAM) {
            break;
        }
        let frames = recv_frames(&mut ws).await.expect("the cloud grants more credit");
        for frame in frames {
            match frame {
                Frame::Window { stream, limit } => {
                    if let Some(entry) = limits.get_mut(&stream) {
                        entry.1 = entry.1.max(limit);
                    }
                }
                Frame::Ping { nonce } => {
                    ws.send(Message::Binary(encode(&Frame::Pong { nonce }))).await.expect("pong");
                }
                Frame::GoAway { message, .. } => panic!("the cloud closed the tunnel: {message}"),
                _ => {}
            }
        }
    }
    // Until the cloud has passed everything on: no window grant for a
    // second (pings are answered meanwhile).
    let settled = tokio::time::timeout(Duration::from_secs(60), async {
        let mut last_grant = tokio::time::Instant::now();
        while last_grant.elapsed() < Duration::from_secs(1) {
            let next = tokio::time::timeout(Duration::from_secs(1), recv_frames(&mut ws)).await;
            let Ok(Some(frames)) = next else { return };
            for frame in frames {
                match frame {
                    Frame::Window { .. } => last_grant = tokio::time::Instant::now(),
                    Frame::Ping { nonce } => {
                        let pong = Message::Binary(encode(&Frame::Pong { nonce }));
                        ws.send(pong).await.expect("pong");
                    }
                    _ => {}
                }
            }
        }
    });
    settled.await.expect("the cloud kept granting credit for a minute");
    let after = cloud.agent.peak_rss_kib();
    let grown_kib = after.saturating_sub(before);
    // Initial window and one 16 KiB block per stream, plus 16 MiB for the
    // allocator and runtime.
    let bound_kib = (STREAMS as u64) * (64 + 16) + 16 * 1024;
    println!(
        "1-byte flood: {sent_total} frames over {STREAMS} stalled streams; cloud peak RSS {before} -> {after} KiB \
         (+{grown_kib} KiB, bound {bound_kib} KiB)"
    );
    assert_eq!(sent_total, (STREAMS as u64) * PER_STREAM);
    assert!(grown_kib <= bound_kib, "cloud grew {grown_kib} KiB, bound {bound_kib} KiB");
    assert!(cloud.agent.is_running());
    drop(clients);
}

/// Empty data frames are refused at the first one: the tunnel closes with
/// a protocol error and nothing accumulates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_frame_flood_is_cut_at_the_first_frame() {
    let mut cloud = start_cloud_with(&fake_cloud_toml(), &["fakemap"]).await;
    let mut ws = fake_edge(cloud.tunnel).await;
    cloud.agent.wait_for_log(&["edge connected", "edge=fake"], Duration::from_secs(10)).await;
    let _client = stalled_client(cloud.mappings[0]).await;
    let streams = accept_opens(&mut ws, 1).await;
    let before = cloud.agent.rss_kib();
    let mut flood = BytesMut::new();
    // 50,000 frames: one message under the WebSocket limit (768 KiB).
    for _ in 0..50_000 {
        Frame::encode_data_header(streams[0].0, 0, &mut flood);
    }
    let _ = ws.send(Message::Binary(flood.freeze())).await;
    let mut code = None;
    while let Some(frames) = recv_frames(&mut ws).await {
        if let Some(Frame::GoAway { code: c, .. }) =
            frames.into_iter().find(|f| matches!(f, Frame::GoAway { .. }))
        {
            code = Some(c);
            break;
        }
    }
    assert_eq!(code, Some(GoAwayCode::ProtocolError));
    let after = cloud.agent.rss_kib();
    println!("empty-frame flood: cloud RSS {before} -> {after} KiB");
    assert!(after.saturating_sub(before) < 8 * 1024, "cloud grew {} KiB", after - before);
    assert!(cloud.agent.is_running());
}

/// A client that sends faster than the service reads fills its stream's
/// window; when it then vanishes with an RST, the relay must notice at
/// once, though it is waiting for credit and not reading the socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_reset_while_its_stream_waits_for_credit_is_reaped() {
    // A service that accepts and never reads.
    let service = TcpListener::bind("127.0.0.1:0").await.expect("service");
    let service_addr = service.local_addr().expect("addr");
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((tcp, _)) = service.accept().await {
            held.push(tcp);
        }
    });
    let state = tempfile::tempdir().expect("temp dir");
    let toml = cloud_toml_with_control(
        "127.0.0.1:0",
        &[("sink", &service_addr.to_string())],
        &state.path().join("state.json"),
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let edge = Edge::start(edge_config(&edge_toml(
        cloud.tunnel_addr(),
        &[service_addr.to_string()],
        TOKEN,
    )))
    .expect("edge");
    let api = Api::new(cloud.control_addr().expect("control"), Some(ADMIN_TOKEN));
    let public = cloud.mapping_addr("sink").expect("sink");
    assert!(eventually(Duration::from_secs(10), || async { cloud.live_tunnels("e1") > 0 }).await);
    let mut client = TcpStream::connect(public).await.expect("client");
    // Write until the path is full: a write that makes no progress for a
    // second is blocked (if it only looks blocked, the test proves less,
    // but cannot fail wrongly).
    let chunk = vec![1u8; 256 * 1024];
    let mut written = 0usize;
    while written < 256 << 20 {
        match tokio::time::timeout(Duration::from_secs(1), client.write_all(&chunk)).await {
            Ok(Ok(())) => written += chunk.len(),
            Ok(Err(e)) => panic!("client write failed: {e}"),
            Err(_) => break,
        }
    }
    let active = || async {
        let (_, m) = api.call("GET", "/v1/mappings/sink", None).await;
        m["active_connections"].as_u64().unwrap_or(u64::MAX)
    };
    assert_eq!(active().await, 1, "the client's stream is open ({written} bytes written)");
    socket2::SockRef::from(&client).set_linger(Some(Duration::ZERO)).expect("linger");
    drop(client);
    assert!(
        eventually(Duration::from_secs(15), || async { active().await == 0 }).await,
        "a client that reset while its stream waited for credit is still counted"
    );
    held.abort();
    edge.shutdown().await;
    cloud.shutdown().await;
}
