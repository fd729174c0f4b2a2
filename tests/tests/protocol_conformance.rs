//! What a second implementation of the edge found in docs/protocol.md and
//! the cloud (issue 17), each pinned by a fake edge speaking raw frames to
//! a real cloud: handshake refusals, empty messages and frames, liveness,
//! and the rules around an open's answer.

use std::net::SocketAddr;
use std::time::Duration;

use agent_cloud::Cloud;
use bytes::Bytes;
use e2e_tests::fake_edge::{FAKE_TOKEN, Ws, auth, challenge, encode, fake_edge, recv_frames};
use e2e_tests::{cloud_config, echo_server, eventually};
use futures_util::{SinkExt, StreamExt};
use proto::{Frame, GoAwayCode, OpenCode, PROTOCOL_VERSION, RefuseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A cloud whose only edge is `fake`, serving mapping `fakemap`.
async fn cloud_for_fake_edge() -> Cloud {
    let target = echo_server().await;
    let toml = format!(
        "[tunnel]\nlisten = \"127.0.0.1:0\"\nheartbeat_interval = \"200ms\"\nheartbeat_timeout = \"1s\"\n\
         handshake_timeout = \"2s\"\n\
         [[edges]]\nid = \"fake\"\ntoken = \"{FAKE_TOKEN}\"\n\
         [[mappings]]\nname = \"fakemap\"\nlisten = \"127.0.0.1:0\"\nedge = \"fake\"\ntarget = \"{target}\"\n"
    );
    Cloud::start(cloud_config(&toml)).await.expect("cloud")
}

/// Reads until the cloud closes the tunnel; returns its go-away, answering
/// pings on the way only if `answer_pings`.
async fn go_away(ws: &mut Ws, answer_pings: bool) -> Option<(GoAwayCode, String)> {
    while let Some(frames) = recv_frames(ws).await {
        for frame in frames {
            match frame {
                Frame::GoAway { code, message } => return Some((code, message)),
                Frame::Ping { nonce } if answer_pings => {
                    ws.send(Message::Binary(encode(&Frame::Pong { nonce }))).await.ok()?;
                }
                _ => {}
            }
        }
    }
    None
}

/// The next message after the challenge, for a first message that is not
/// a well-formed `Auth`.
async fn handshake_answer(cloud: SocketAddr, first: Message) -> Option<Frame> {
    let (mut ws, _) = challenge(cloud).await;
    ws.send(first).await.ok()?;
    let frames = recv_frames(&mut ws).await?;
    frames.into_iter().next()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_malformed_handshake_message_gets_a_protocol_error_refusal() {
    let cloud = cloud_for_fake_edge().await;
    let addr = cloud.tunnel_addr();
    let (_, nonce) = challenge(addr).await;
    let good = encode(&auth(&nonce, "fake", FAKE_TOKEN, PROTOCOL_VERSION));
    let mut oversized = vec![0x11, 0, 0, 0, 0, 0, 0, 0x08, 0];
    oversized.extend(vec![0u8; 2048]);
    let mut two = good.to_vec();
    two.extend_from_slice(&good);
    let mut trailing = good.to_vec();
    trailing.push(0);
    let cases: Vec<(&str, Message)> = vec![
        ("an oversized auth", Message::Binary(Bytes::from(oversized))),
        ("two frames", Message::Binary(Bytes::from(two))),
        ("a trailing byte", Message::Binary(Bytes::from(trailing))),
        ("a text message", Message::Text("hello".into())),
        ("an empty message", Message::Binary(Bytes::new())),
        ("a frame of the wrong kind", Message::Binary(encode(&Frame::Drain))),
    ];
    for (what, message) in cases {
        match handshake_answer(addr, message).await {
            Some(Frame::Refuse { code: RefuseCode::ProtocolError, .. }) => {}
            other => panic!("{what}: expected Refuse code 7, got {other:?}"),
        }
    }
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_message_or_data_frame_after_the_handshake_is_a_protocol_error() {
    let cloud = cloud_for_fake_edge().await;
    for (what, bytes) in [
        ("empty message", Bytes::new()),
        ("empty data frame", Bytes::from_static(&[0x03, 0, 0, 0, 1, 0, 0, 0, 0])),
    ] {
        let mut ws = fake_edge(cloud.tunnel_addr()).await;
        ws.send(Message::Binary(bytes)).await.expect("send");
        let (code, message) = go_away(&mut ws, true).await.unwrap_or_else(|| panic!("{what}"));
        assert_eq!(code, GoAwayCode::ProtocolError, "{what}: {message}");
    }
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_pings_do_not_keep_a_tunnel_alive() {
    let cloud = cloud_for_fake_edge().await;
    let ws = fake_edge(cloud.tunnel_addr()).await;
    let (reader_done_tx, mut reader_done) = tokio::sync::oneshot::channel();
    let (mut sink, mut stream) = ws.split();
    // Reads (so the cloud's writer never stalls) and never answers pings.
    tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            if let Message::Binary(bytes) = msg {
                for frame in e2e_tests::fake_edge::decode_all(bytes) {
                    if let Frame::GoAway { code, .. } = frame {
                        let _ = reader_done_tx.send(code);
                        return;
                    }
                }
            }
        }
    });
    let code = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            tokio::select! {
                code = &mut reader_done => return code.ok(),
                () = tokio::time::sleep(Duration::from_millis(100)) => {
                    if sink.send(Message::Ping(Bytes::from_static(b"x"))).await.is_err() {
                        return None;
                    }
                }
            }
        }
    })
    .await
    .expect("a peer that sends only WebSocket pings was kept for 20 s (timeout is 1 s)");
    assert_eq!(code, Some(GoAwayCode::Timeout));
    cloud.shutdown().await;
}

/// A client of `fakemap` and the `Open` the fake edge receives for it.
async fn client_and_open(cloud: &Cloud, ws: &mut Ws) -> (TcpStream, u32, u32) {
    // The fake edge's tunnel is registered just after its Welcome.
    assert!(eventually(Duration::from_secs(10), || async { cloud.live_tunnels("fake") > 0 }).await);
    let client =
        TcpStream::connect(cloud.mapping_addr("fakemap").expect("mapping")).await.expect("client");
    loop {
        let frames = recv_frames(ws).await.expect("an open");
        for frame in frames {
            match frame {
                Frame::Open { stream, window, .. } => return (client, stream, window),
                Frame::Ping { nonce } => {
                    ws.send(Message::Binary(encode(&Frame::Pong { nonce }))).await.expect("pong");
                }
                _ => {}
            }
        }
    }
}

fn batch(frames: &[Frame]) -> Message {
    let mut bytes = Vec::new();
    for frame in frames {
        bytes.extend_from_slice(&encode(frame));
    }
    Message::Binary(Bytes::from(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_before_the_open_result_and_unknown_codes_are_protocol_errors() {
    let cloud = cloud_for_fake_edge().await;
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    let (_client, stream, _) = client_and_open(&cloud, &mut ws).await;
    ws.send(batch(&[Frame::Data { stream, payload: Bytes::from_static(b"early") }]))
        .await
        .expect("send");
    let (code, message) = go_away(&mut ws, true).await.expect("go-away");
    assert_eq!(code, GoAwayCode::ProtocolError);
    assert!(message.contains("before its open result"), "{message}");

    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    let (_client, stream, _) = client_and_open(&cloud, &mut ws).await;
    let mut bytes = encode(&Frame::OpenResult {
        stream,
        code: OpenCode::Ok,
        window: 1024,
        message: String::new(),
    })
    .to_vec();
    bytes[9] = 99; // the code byte
    ws.send(Message::Binary(Bytes::from(bytes))).await.expect("send");
    let (code, message) = go_away(&mut ws, true).await.expect("go-away");
    assert_eq!(code, GoAwayCode::ProtocolError, "{message}");
    cloud.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_sent_with_the_open_result_is_used_and_a_duplicate_result_ignored() {
    let cloud = cloud_for_fake_edge().await;
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    let (mut client, stream, _) = client_and_open(&cloud, &mut ws).await;
    let ok = Frame::OpenResult { stream, code: OpenCode::Ok, window: 1000, message: String::new() };
    // One message: the answer, a window of 100,000 bytes, and the answer
    // again (ignored).
    ws.send(batch(&[ok.clone(), Frame::Window { stream, limit: 100_000 }, ok]))
        .await
        .expect("send");
    let sent = vec![9u8; 100_000];
    client.write_all(&sent).await.expect("client writes");
    let mut got = 0usize;
    while got < sent.len() {
        let Some(frames) = recv_frames(&mut ws).await else {
            panic!("the cloud sent {got} of the 100,000 bytes the window allowed, then stopped")
        };
        for frame in frames {
            match frame {
                Frame::Data { payload, .. } => got += payload.len(),
                Frame::Ping { nonce } => {
                    ws.send(Message::Binary(encode(&Frame::Pong { nonce }))).await.expect("pong");
                }
                Frame::GoAway { message, .. } => panic!("tunnel closed: {message}"),
                _ => {}
            }
        }
    }
    assert_eq!(got, 100_000);
    // The stream still works the other way.
    ws.send(batch(&[Frame::Data { stream, payload: Bytes::from_static(b"back") }]))
        .await
        .expect("send");
    let mut buf = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut buf))
        .await
        .expect("data reaches the client")
        .expect("read");
    assert_eq!(&buf, b"back");
    cloud.shutdown().await;
}
