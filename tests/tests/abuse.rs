//! Hostile peers: floods of stalled handshakes, a fake edge that overruns
//! its window, clients that open and reset in a loop, and a fake cloud that
//! reuses stream ids. Each ends with the offender cut off, nothing leaked,
//! and real agents still working.

use std::net::SocketAddr;
use std::time::Duration;

use agent_cloud::Cloud;
use agent_edge::Edge;
use bytes::{Bytes, BytesMut};
use e2e_tests::fake_edge::{FAKE_TOKEN, decode_all, encode, fake_edge};
use e2e_tests::{TOKEN, cloud_config, echo_server, edge_config, edge_toml, eventually, serves};
use futures_util::{SinkExt, StreamExt};
use proto::{Frame, GoAwayCode, NONCE_LEN, OpenCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;

/// Reads until a go-away arrives (or 5 s of silence, or the end).
async fn next_go_away<S>(
    ws: &mut tokio_tungstenite::WebSocketStream<S>,
) -> Option<(GoAwayCode, String)>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        if let Message::Binary(bytes) = msg {
            for frame in decode_all(bytes) {
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

/// [`cloud_with_fake_edge`] plus the real edge `e1`, once it serves `echo`.
async fn cloud_with_real_edge() -> (Cloud, Edge, SocketAddr) {
    let echo = echo_server().await;
    let cloud = cloud_with_fake_edge(echo).await;
    let edge =
        Edge::start(edge_config(&edge_toml(cloud.tunnel_addr(), &[echo.to_string()], TOKEN)))
            .expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "real edge never served");
    (cloud, edge, public)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edge_that_overruns_its_window_loses_its_tunnel_only() {
    let (cloud, edge, public) = cloud_with_real_edge().await;
    let mut ws = fake_edge(cloud.tunnel_addr()).await;
    // The cloud registers the tunnel just after sending its welcome; a
    // client arriving before that would find no tunnel and be reset.
    assert!(
        eventually(Duration::from_secs(5), || async { cloud.live_tunnels("fake") == 1 }).await,
        "the fake edge's tunnel never registered"
    );
    // A client of the fake edge's mapping makes the cloud open a stream.
    let _client =
        TcpStream::connect(cloud.mapping_addr("fakemap").expect("fakemap")).await.expect("client");
    let (stream, window) = loop {
        let Some(Ok(Message::Binary(bytes))) = ws.next().await else {
            panic!("tunnel ended early")
        };
        if let Some(Frame::Open { stream, window, .. }) =
            decode_all(bytes).into_iter().find(|f| matches!(f, Frame::Open { .. }))
        {
            assert!(window > 0);
            break (stream, window as usize);
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
    // Then one byte more than the window the cloud granted, as legal frames
    // in one message, so no window update can arrive in between.
    let mut burst = BytesMut::new();
    let mut left = window + 1;
    while left > 0 {
        let n = left.min(64 * 1024);
        Frame::Data { stream, payload: Bytes::from(vec![0u8; n]) }.encode(&mut burst);
        left -= n;
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
    let (cloud, edge, public) = cloud_with_real_edge().await;
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
        let Some(Frame::Auth { nonce, .. }) = decode_all(auth).pop() else { panic!("not auth") };
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
            origin: None,
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

// Slow and oversized upgrade requests: each is cut off, by the handshake
// deadline or by the WebSocket layer's header limit, and a real edge gets
// in meanwhile.

use std::net::IpAddr;
use std::time::Instant;

use e2e_tests::cloud_toml;
use tokio::io::AsyncReadExt;

/// A valid WebSocket upgrade request for the tunnel at `cloud`, with
/// `extra` (whole header lines) before its end.
fn upgrade_request(cloud: SocketAddr, extra: &str) -> Vec<u8> {
    format!(
        "GET /tunnel HTTP/1.1\r\nHost: {cloud}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// How a drip connection ended: after how long, with how many bytes sent.
#[derive(Debug)]
struct Cut {
    after: Duration,
    sent: usize,
    how: String,
}

/// Connects to `cloud` from `source` and sends `request` one byte every
/// 100 ms until the cloud closes the connection. An error if the cloud
/// answers anything, takes the whole request, or keeps the connection for
/// 10 s. `after` counts from before the connect, so the cloud's deadline
/// (from its accept) can never look shorter than it is.
async fn drip(cloud: SocketAddr, source: IpAddr, request: Vec<u8>) -> Result<Cut, String> {
    let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
    socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("bind {source}: {e}"))?;
    let started = Instant::now();
    let tcp = socket.connect(cloud).await.map_err(|e| format!("connect: {e}"))?;
    let (mut r, mut w) = tcp.into_split();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let give_up = tokio::time::sleep(Duration::from_secs(10));
    tokio::pin!(give_up);
    let mut sent = 0;
    let mut buf = [0u8; 512];
    loop {
        tokio::select! {
            read = r.read(&mut buf) => {
                let how = match read {
                    Ok(0) => "EOF".to_owned(),
                    Ok(n) => return Err(format!(
                        "the cloud answered {:?} after {sent} bytes",
                        String::from_utf8_lossy(&buf[..n])
                    )),
                    Err(e) => e.to_string(),
                };
                return Ok(Cut { after: started.elapsed(), sent, how });
            }
            _ = tick.tick() => {
                let Some(byte) = request.get(sent..=sent) else {
                    return Err(format!("the whole request went through in {:?}", started.elapsed()));
                };
                if let Err(e) = w.write_all(byte).await {
                    return Ok(Cut { after: started.elapsed(), sent, how: format!("write: {e}") });
                }
                sent += 1;
            }
            () = &mut give_up => return Err(format!("still open after 10 s, {sent} bytes sent")),
        }
    }
}

/// 50 valid upgrade requests dripped one byte every 100 ms: each is
/// admitted (25 per source address, under the per-address limit of 32) and
/// cut by the handshake deadline: never before it, and before the request
/// could have been sent whole or the drip gives up (10 s), while a real
/// edge gets in and serves as long as the drips hold their slots.
///
/// Only orderings and loose bounds are asserted, so a loaded machine
/// cannot fail it: a sleep never ends early, and late only by scheduling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_drip_handshakes_are_cut_at_the_deadline() {
    const DRIPS: usize = 50;
    const DEADLINE: Duration = Duration::from_secs(3);
    let echo = echo_server().await;
    let toml = cloud_toml(
        "127.0.0.1:0",
        &[("echo", &echo.to_string())],
        &format!("handshake_timeout = \"{}s\"", DEADLINE.as_secs()),
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let tunnel = cloud.tunnel_addr();
    let request = upgrade_request(tunnel, "");
    assert!(request.len() as u64 > 10 * (DEADLINE.as_secs() + 2), "request too short to drip");

    let started = Instant::now();
    let drips: Vec<_> = (0..DRIPS)
        .map(|i| {
            let source = IpAddr::from([127, 0, 0, 2 + (i % 2) as u8]);
            tokio::spawn(drip(tunnel, source, request.clone()))
        })
        .collect();

    // A real edge (from 127.0.0.1) connects and serves meanwhile.
    let edge =
        Edge::start(edge_config(&edge_toml(tunnel, &[echo.to_string()], TOKEN))).expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    let served = eventually(Duration::from_secs(10), || serves(public)).await;
    let served_after = started.elapsed();
    assert!(served, "a real edge could not get in while {DRIPS} handshakes dripped");
    let open = drips.iter().filter(|d| !d.is_finished()).count();
    eprintln!("real edge served {served_after:?} after the drips started, {open} still open");
    assert_eq!(open, DRIPS, "the real edge served only after drips were cut ({served_after:?})");

    let mut cuts = Vec::new();
    for (i, d) in drips.into_iter().enumerate() {
        match d.await.expect("drip task") {
            Ok(cut) => cuts.push(cut),
            Err(e) => panic!("drip {i}: {e}"),
        }
    }
    let after: Vec<Duration> = cuts.iter().map(|c| c.after).collect();
    let (min, max) = (after.iter().min().expect("cuts"), after.iter().max().expect("cuts"));
    let sent: Vec<usize> = cuts.iter().map(|c| c.sent).collect();
    let mut hows = std::collections::BTreeMap::<&str, usize>::new();
    for cut in &cuts {
        *hows.entry(cut.how.as_str()).or_default() += 1;
    }
    eprintln!(
        "{DRIPS} drips cut after {min:?}..{max:?} (deadline {DEADLINE:?}), having sent {}..{} of {} \
         bytes; seen as {hows:?}",
        sent.iter().min().expect("cuts"),
        sent.iter().max().expect("cuts"),
        request.len(),
    );
    // Not before the deadline; the upper bounds (the whole request, 10 s)
    // are `drip`'s errors above.
    for (i, cut) in cuts.iter().enumerate() {
        assert!(cut.after >= DEADLINE, "drip {i} was cut before the deadline: {cut:?}");
    }
    assert!(serves(public).await, "the real edge stopped serving");
    assert_eq!(cloud.live_tunnels("e1"), 2, "the real edge lost a tunnel");
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// An upgrade request with a 1 MiB header is refused by the WebSocket
/// layer's header limit, long before the handshake deadline, without a
/// 101; the cloud then still takes a real edge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_headers_are_refused() {
    // Closed before the handshake deadline, so the close is the size limit.
    const DEADLINE: Duration = Duration::from_secs(10);
    const BOUND: Duration = Duration::from_secs(8);
    let echo = echo_server().await;
    let toml = cloud_toml(
        "127.0.0.1:0",
        &[("echo", &echo.to_string())],
        &format!("handshake_timeout = \"{}s\"", DEADLINE.as_secs()),
    );
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let tunnel = cloud.tunnel_addr();
    let padding = format!("X-Padding: {}\r\n", "a".repeat(1024 * 1024));
    let request = upgrade_request(tunnel, &padding);

    let tcp = TcpStream::connect(tunnel).await.expect("connect");
    let started = Instant::now();
    let (mut r, mut w) = tcp.into_split();
    let writer = tokio::spawn(async move {
        let mut written = 0;
        for chunk in request.chunks(64 * 1024) {
            if let Err(e) = w.write_all(chunk).await {
                return (written, Some(e.to_string()));
            }
            written += chunk.len();
        }
        (written, None)
    });
    let mut answer = Vec::new();
    let ended = tokio::time::timeout(BOUND, async {
        let mut buf = [0u8; 4096];
        loop {
            match r.read(&mut buf).await {
                Ok(0) => return "EOF".to_owned(),
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) => return e.to_string(),
            }
        }
    })
    .await;
    let closed_after = started.elapsed();
    // The writer ends once the connection is gone (or was never stopped).
    let (written, write_error) = tokio::time::timeout(Duration::from_secs(5), writer)
        .await
        .expect("writer still blocked 5 s after the read side ended")
        .expect("writer task");
    let answer = String::from_utf8_lossy(&answer).into_owned();
    eprintln!(
        "1 MiB header: connection ended ({ended:?}) after {closed_after:?}; {written} bytes \
         written (write error: {write_error:?}); answer {answer:?}"
    );
    let how = ended.unwrap_or_else(|_| panic!("connection still open after {BOUND:?}"));
    // The cloud ended it (a FIN or a reset), having answered nothing or an
    // HTTP error: never 101, never anything else.
    assert!(how == "EOF" || how.contains("reset"), "the connection ended by {how:?}");
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 4"),
        "the cloud answered a request with a 1 MiB header with {answer:?}"
    );

    let edge =
        Edge::start(edge_config(&edge_toml(tunnel, &[echo.to_string()], TOKEN))).expect("edge");
    let public = cloud.mapping_addr("echo").expect("echo");
    assert!(
        eventually(Duration::from_secs(5), || serves(public)).await,
        "the cloud does not serve a real edge after the oversized request"
    );
    edge.shutdown().await;
    cloud.shutdown().await;
}

/// Whether a connection from `source` is closed at once (the gate refused
/// it) rather than kept waiting for a handshake.
async fn refused_at_the_gate(cloud: SocketAddr, source: IpAddr) -> bool {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.bind(SocketAddr::new(source, 0)).expect("bind probe source");
    let Ok(mut tcp) = socket.connect(cloud).await else { return false };
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_millis(500), tcp.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// 40 addresses x 32 stalled handshakes, more than the 1,024 places: a
/// known edge (it connected before, from 127.0.0.1) still reconnects at
/// once, long before the flood's handshakes time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_many_addresses_does_not_lock_out_a_known_edge() {
    const SOURCES: u8 = 40;
    const PER_SOURCE: usize = 32;
    let echo = echo_server().await;
    let toml =
        cloud_toml("127.0.0.1:0", &[("echo", &echo.to_string())], "handshake_timeout = \"60s\"");
    let cloud = Cloud::start(cloud_config(&toml)).await.expect("cloud");
    let tunnel = cloud.tunnel_addr();
    let public = cloud.mapping_addr("echo").expect("echo");
    let edge_text = edge_toml(tunnel, &[echo.to_string()], TOKEN);
    let edge = Edge::start(edge_config(&edge_text)).expect("edge");
    assert!(eventually(Duration::from_secs(10), || serves(public)).await, "edge never served");
    edge.shutdown().await;
    assert!(eventually(Duration::from_secs(10), || async { cloud.live_tunnels("e1") == 0 }).await);

    let mut flood = Vec::new();
    for s in 0..SOURCES {
        for _ in 0..PER_SOURCE {
            let socket = TcpSocket::new_v4().expect("socket");
            socket.bind(SocketAddr::new(IpAddr::from([127, 0, 1, 1 + s]), 0)).expect("bind");
            if let Ok(tcp) = socket.connect(tunnel).await {
                flood.push(tcp);
            }
        }
    }
    // The gate is full for newcomers once a connection from a fresh
    // address is closed at once.
    assert!(
        eventually(Duration::from_secs(10), || refused_at_the_gate(tunnel, [127, 0, 2, 1].into()))
            .await,
        "{} stalled handshakes did not fill the gate",
        flood.len()
    );

    let edge = Edge::start(edge_config(&edge_text)).expect("edge again");
    assert!(
        eventually(Duration::from_secs(10), || serves(public)).await,
        "a known edge could not reconnect past {} stalled handshakes",
        flood.len()
    );
    drop(flood);
    edge.shutdown().await;
    cloud.shutdown().await;
}
