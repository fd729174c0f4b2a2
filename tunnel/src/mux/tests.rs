//! Two tunnel ends over a real loopback TCP connection: window tuning and
//! the per-tunnel budget, observed from inside.

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::stream::{Inbound, StreamReceiver, StreamSender};
use crate::ws::{Side, WsConn, max_message_len};

const MAX_WINDOW: u32 = 256 * 1024;

/// The edge's and the cloud's WebSocket over one loopback TCP connection.
async fn ws_pair() -> (WsConn<TcpStream>, WsConn<TcpStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, accepted) =
        tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
    let limit = max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD);
    (
        WsConn::new(client.unwrap(), Side::Client, limit, BytesMut::new()),
        WsConn::new(accepted.unwrap().0, Side::Server, limit, BytesMut::new()),
    )
}

/// A cloud end and an edge end, the edge receiving with `settings`.
async fn pair(
    edge_settings: MuxSettings,
) -> (Tunnel, Tunnel, mpsc::UnboundedReceiver<IncomingStream>) {
    let (edge_ws, cloud_ws) = ws_pair().await;
    // A slow heartbeat: no ping wakes the cloud's writer by chance.
    let (cloud, _) = Tunnel::spawn(cloud_ws, Role::Cloud, 1, quiet());
    let (edge, incoming) = Tunnel::spawn(edge_ws, Role::Edge, 1, edge_settings);
    (cloud, edge, incoming)
}

fn edge_settings(window_budget: u64) -> MuxSettings {
    MuxSettings { stream_window: MAX_WINDOW, window_budget, ..MuxSettings::default() }
}

/// Opens a stream from the cloud; returns the cloud's sending half and the
/// edge's receiving half.
async fn open(
    cloud: &Tunnel,
    incoming: &mut mpsc::UnboundedReceiver<IncomingStream>,
) -> (StreamSender, StreamReceiver) {
    let (opened, accepted) = tokio::join!(cloud.open_stream("m", "127.0.0.1", 9, None), async {
        incoming.recv().await.unwrap().accept().await.unwrap()
    });
    (opened.unwrap().split().0, accepted.split().1)
}

/// Sends `total` bytes as fast as credit allows.
async fn send(sender: &StreamSender, total: usize) {
    let mut left = total;
    while left > 0 {
        let n = sender.credit(left.min(64 * 1024)).await.unwrap();
        sender.send(Bytes::from(vec![7u8; n])).await.unwrap();
        left -= n;
    }
}

/// Receives `total` bytes, consuming each chunk at once.
async fn receive(receiver: &mut StreamReceiver, total: usize) {
    let mut got = 0;
    while got < total {
        let Inbound::Data(bytes) = receiver.recv().await else { panic!("stream ended early") };
        got += bytes.len();
        receiver.consumed(bytes.len()).await.unwrap();
    }
}

#[tokio::test]
async fn a_bulk_stream_grows_its_window_to_the_maximum() {
    let (cloud, edge, mut incoming) = pair(edge_settings(u64::MAX / 2)).await;
    let (sender, mut receiver) = open(&cloud, &mut incoming).await;
    assert_eq!(receiver.recv_window(), INITIAL_STREAM_WINDOW);
    // A few MiB are plenty; more rounds only absorb a stalled test machine
    // (a report more than 16 ms after the previous one shrinks the window).
    for _ in 0..8 {
        tokio::join!(send(&sender, 2 << 20), receive(&mut receiver, 2 << 20));
        if receiver.recv_window() == MAX_WINDOW {
            break;
        }
    }
    assert_eq!(receiver.recv_window(), MAX_WINDOW);
    let borrowed = u64::from(MAX_WINDOW - INITIAL_STREAM_WINDOW);
    assert_eq!(edge.shared.recv_budget.left(), u64::MAX / 2 - borrowed);
    drop((sender, receiver));
    all_streams_gone(&cloud, &edge).await;
    assert_eq!(edge.shared.recv_budget.left(), u64::MAX / 2);
}

/// Waits (5 s at most) for `tunnel` to end, then checks why; `what` says
/// what was expected if it does not end.
async fn closes_because(tunnel: &Tunnel, reason: &str, what: &str) {
    tokio::time::timeout(std::time::Duration::from_secs(5), tunnel.closed()).await.expect(what);
    let why = tunnel.close_reason().unwrap_or_default();
    assert!(why.contains(reason), "closed for: {why}");
}

/// Waits (bounded) until neither end has a stream left: their state, and
/// so the windows' debt to the budget, is gone.
async fn all_streams_gone(cloud: &Tunnel, edge: &Tunnel) {
    let gone = async {
        while edge.active_streams() > 0 || cloud.active_streams() > 0 {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), gone)
        .await
        .expect("streams still open 5 s after both ends let go");
}

#[tokio::test]
async fn parallel_streams_share_the_tunnel_budget() {
    // Enough for one stream to grow to the maximum and another to double
    // once; four bulk streams would need three times as much.
    let growth = u64::from(MAX_WINDOW - INITIAL_STREAM_WINDOW);
    let budget = growth + u64::from(INITIAL_STREAM_WINDOW);
    let (cloud, edge, mut incoming) = pair(edge_settings(budget)).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(open(&cloud, &mut incoming).await);
    }
    let mut windows = Vec::new();
    // More rounds only absorb a stalled test machine (see above).
    for _ in 0..4 {
        let transfers = streams.iter_mut().map(|(sender, receiver)| async move {
            tokio::join!(send(sender, 2 << 20), receive(receiver, 2 << 20));
        });
        futures_util::future::join_all(transfers).await;
        windows = streams.iter().map(|(_, r)| r.recv_window()).collect();
        if windows.iter().any(|w| *w > INITIAL_STREAM_WINDOW) {
            break;
        }
    }
    let borrowed: u64 = windows.iter().map(|w| u64::from(w - INITIAL_STREAM_WINDOW)).sum();
    assert!(borrowed > 0, "no window grew: {windows:?}");
    assert!(windows.iter().filter(|w| **w == MAX_WINDOW).count() <= 1, "{windows:?}");
    assert_eq!(edge.shared.recv_budget.left() + borrowed, budget, "{windows:?}");
    drop(streams);
    all_streams_gone(&cloud, &edge).await;
    assert_eq!(edge.shared.recv_budget.left(), budget);
}

#[tokio::test]
async fn a_go_away_after_a_full_batch_still_reaches_the_peer() {
    let slow_heartbeat = MuxSettings {
        heartbeat_interval: std::time::Duration::from_secs(30),
        heartbeat_timeout: std::time::Duration::from_secs(90),
        ..edge_settings(0)
    };
    let (cloud, edge, mut incoming) = pair(slow_heartbeat).await;
    let mut streams = Vec::new();
    for _ in 0..4 {
        streams.push(open(&cloud, &mut incoming).await);
    }
    // Both sides' first pings (sent at once) are answered: from here on no
    // heartbeat frame can wake the cloud's writer and free the go-away.
    let pinged = async {
        while cloud.rtt().is_none() || edge.rtt().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), pinged).await.expect("first pings");
    // Four 64 KiB frames, one per stream's whole initial window, then the
    // go-away: all five are queued before the writer runs (this test's
    // runtime has one thread), so the data fills one batch to the limit
    // and the go-away must still go out with it.
    for (sender, _) in &streams {
        send(sender, INITIAL_STREAM_WINDOW as usize).await;
    }
    cloud.close(proto::GoAwayCode::Normal, "going away after a full batch");
    closes_because(&edge, "going away after a full batch", "the edge's tunnel must end").await;
}

/// A cloud tunnel whose edge end is driven by hand: raw frames both ways.
struct RawEdge {
    ws: WsConn<TcpStream>,
}

impl RawEdge {
    async fn send(&mut self, frames: Vec<Frame>) {
        let mut message = crate::ws::OutMessage::new(Side::Client);
        for frame in frames {
            message.push(frame);
        }
        self.ws.writer.send(&mut message).await.unwrap();
    }

    /// The next frames from the cloud (one message), pings answered on the
    /// way unless `answer_pings` is false; None once the tunnel is gone.
    async fn recv(&mut self, answer_pings: bool) -> Option<Vec<Frame>> {
        loop {
            let next =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.ws.reader.next());
            let crate::ws::WsMessage::Binary(mut bytes) = next.await.ok()?.ok()?? else {
                continue;
            };
            let mut frames = Vec::new();
            while let Some(frame) = proto::decode(&mut bytes, u32::MAX).unwrap() {
                frames.push(frame);
            }
            let pings: Vec<Frame> = frames
                .iter()
                .filter_map(|f| match f {
                    Frame::Ping { nonce } => Some(Frame::Pong { nonce: *nonce }),
                    _ => None,
                })
                .collect();
            if answer_pings && !pings.is_empty() {
                self.send(pings).await;
            }
            return Some(frames);
        }
    }

    /// Frames for streams (heartbeats left out), until `done` says stop.
    async fn stream_frames(&mut self, mut done: impl FnMut(&[Frame]) -> bool) -> Vec<Frame> {
        let mut seen = Vec::new();
        while !done(&seen) {
            let frames = self.recv(true).await.expect("cloud went away");
            seen.extend(frames.into_iter().filter(|f| f.stream() != 0));
        }
        seen
    }
}

async fn cloud_and_raw_edge(settings: MuxSettings) -> (Tunnel, RawEdge) {
    let (edge_ws, cloud_ws) = ws_pair().await;
    let (cloud, _) = Tunnel::spawn(cloud_ws, Role::Cloud, 1, settings);
    (cloud, RawEdge { ws: edge_ws })
}

/// Pings every 100 ms, gives up after 500 ms without an answer.
fn fast_heartbeat() -> MuxSettings {
    MuxSettings {
        heartbeat_interval: std::time::Duration::from_millis(100),
        heartbeat_timeout: std::time::Duration::from_millis(500),
        ..MuxSettings::default()
    }
}

fn quiet() -> MuxSettings {
    MuxSettings {
        heartbeat_interval: std::time::Duration::from_secs(30),
        heartbeat_timeout: std::time::Duration::from_secs(90),
        ..MuxSettings::default()
    }
}

/// Opens a stream on `cloud`, answered by the raw edge with `answer`.
async fn open_raw(cloud: &Tunnel, edge: &mut RawEdge, answer: Vec<Frame>) -> MuxStream {
    let opening = cloud.open_stream("m", "127.0.0.1", 9, None);
    tokio::pin!(opening);
    let frames = tokio::select! {
        frames = edge.stream_frames(|seen| !seen.is_empty()) => frames,
        _ = &mut opening => panic!("opened without an answer"),
    };
    assert!(matches!(frames[0], Frame::Open { stream: 1, .. }), "{frames:?}");
    edge.send(answer).await;
    opening.await.unwrap()
}

#[tokio::test]
async fn a_reset_never_overtakes_the_data_queued_before_it() {
    let (cloud, mut edge) = cloud_and_raw_edge(quiet()).await;
    let grant = Frame::OpenResult {
        stream: 1,
        code: OpenCode::Ok,
        window: 1 << 20,
        message: String::new(),
    };
    let (sender, _receiver) = open_raw(&cloud, &mut edge, vec![grant]).await.split();
    // Queued before the writer runs (one-thread runtime): four frames of
    // data, then the reset.
    for _ in 0..4 {
        sender.send(Bytes::from(vec![1u8; 64 * 1024])).await.unwrap();
    }
    sender.reset(ResetCode::Other, "done");
    let frames =
        edge.stream_frames(|seen| seen.iter().any(|f| matches!(f, Frame::Reset { .. }))).await;
    let kinds: Vec<&str> = frames
        .iter()
        .map(|f| if matches!(f, Frame::Reset { .. }) { "reset" } else { "data" })
        .collect();
    assert_eq!(kinds, ["data", "data", "data", "data", "reset"], "wire order");
}

#[tokio::test]
async fn a_reset_of_an_abandoned_open_follows_the_open() {
    let (cloud, mut edge) = cloud_and_raw_edge(quiet()).await;
    {
        // Polled once: the open is queued, then the future is dropped (an
        // open timeout, a drain deadline, a removed mapping).
        let opening = cloud.open_stream("m", "127.0.0.1", 9, None);
        tokio::pin!(opening);
        assert!(futures_util::poll!(&mut opening).is_pending());
    }
    let frames =
        edge.stream_frames(|seen| seen.iter().any(|f| matches!(f, Frame::Reset { .. }))).await;
    assert!(
        matches!(
            frames.as_slice(),
            [Frame::Open { stream: 1, .. }, Frame::Reset { stream: 1, .. }]
        ),
        "the edge must see the open before its reset: {frames:?}"
    );
}

#[tokio::test]
async fn a_window_in_the_same_message_as_the_open_result_is_kept() {
    let (cloud, mut edge) = cloud_and_raw_edge(quiet()).await;
    let answer = vec![
        Frame::OpenResult { stream: 1, code: OpenCode::Ok, window: 1000, message: String::new() },
        Frame::Window { stream: 1, limit: 200_000 },
    ];
    let (sender, _receiver) = open_raw(&cloud, &mut edge, answer).await.split();
    let sending = send(&sender, 200_000);
    let receiving = edge.stream_frames(|seen| {
        let got: usize = seen
            .iter()
            .map(|f| if let Frame::Data { payload, .. } = f { payload.len() } else { 0 })
            .sum();
        got >= 200_000
    });
    let ((), _) = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        tokio::join!(sending, receiving)
    })
    .await
    .expect("the cloud must send all 200,000 bytes the window allows");
}

#[tokio::test]
async fn a_pong_answers_the_latest_ping() {
    let (_cloud, mut edge) = cloud_and_raw_edge(quiet()).await;
    // Two pings in one message: the second arrives while the first's pong
    // is still queued.
    edge.send(vec![Frame::Ping { nonce: 1 }, Frame::Ping { nonce: 2 }]).await;
    let mut pongs = Vec::new();
    while !pongs.contains(&2) {
        let frames = edge.recv(true).await.expect("no pong for the latest ping");
        pongs.extend(frames.iter().filter_map(|f| match f {
            Frame::Pong { nonce } => Some(*nonce),
            _ => None,
        }));
    }
}

#[tokio::test]
async fn a_peer_that_sends_but_never_answers_pings_times_out() {
    let settings = fast_heartbeat();
    let (cloud, mut edge) = cloud_and_raw_edge(settings).await;
    // Frames keep flowing (its own pings); pongs never come. Once the cloud
    // has closed, sending fails: then only wait for the close to be seen.
    let chatter = async {
        for nonce in 1.. {
            let mut message = crate::ws::OutMessage::new(Side::Client);
            message.push(Frame::Ping { nonce });
            if edge.ws.writer.send(&mut message).await.is_err() {
                break;
            }
            while let Ok(Some(_)) =
                tokio::time::timeout(std::time::Duration::from_millis(50), edge.recv(false)).await
            {
            }
        }
        // The cloud is gone: let the select see it close.
        std::future::pending::<()>().await;
    };
    tokio::select! {
        () = cloud.closed() => {}
        () = chatter => unreachable!(),
        () = tokio::time::sleep(std::time::Duration::from_secs(30)) => {
            panic!("a peer that never answers pings kept its tunnel")
        }
    }
    let reason = cloud.close_reason().unwrap_or_default();
    assert!(reason.contains("no answer to pings"), "closed for: {reason}");
}

#[tokio::test]
async fn a_tunnel_out_of_stream_ids_takes_no_more_and_retires_when_idle() {
    let (cloud, edge, mut incoming) = pair(edge_settings(0)).await;
    // As if 2^32 - 2 streams had been opened on both ends.
    cloud.shared.table().ids = StreamIds::after(u32::MAX - 1);
    edge.shared.table().ids = StreamIds::after(u32::MAX - 1);
    assert!(cloud.accepts_streams());
    let (sender, receiver) = open(&cloud, &mut incoming).await;
    assert!(!cloud.accepts_streams(), "the last id is used: pick another tunnel");
    assert!(matches!(
        cloud.open_stream("m", "127.0.0.1", 9, None).await,
        Err(OpenError::IdsExhausted)
    ));
    assert!(!cloud.is_closed(), "its last stream still runs");
    drop((sender, receiver));
    closes_because(
        &cloud,
        "stream ids used up",
        "an idle tunnel without ids must close, so the edge redials",
    )
    .await;
}

/// A socket whose drop is observable: the receiver of `_dropped` wakes.
struct Watched {
    tcp: TcpStream,
    _dropped: oneshot::Sender<()>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_read(cx, buf)
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.tcp).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

#[tokio::test]
async fn a_peer_that_stops_reading_does_not_hold_the_writer_and_socket() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    // Small buffers on both sides, so a few opens fill them.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let (peer, accepted) =
        tokio::join!(socket.connect(listener.local_addr().unwrap()), listener.accept());
    let _peer = peer.unwrap(); // never reads, never writes: no pong ever
    let accepted = accepted.unwrap().0;
    socket2::SockRef::from(&accepted).set_send_buffer_size(4096).unwrap();
    let (dropped_tx, dropped) = oneshot::channel::<()>();
    let watched = Watched { tcp: accepted, _dropped: dropped_tx };
    let limit = max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD);
    let settings = fast_heartbeat();
    let (cloud, _) = Tunnel::spawn(
        WsConn::new(watched, Side::Server, limit, BytesMut::new()),
        Role::Cloud,
        1,
        settings,
    );
    // Opens whose frames fill the socket: the writer blocks in a send.
    let (mapping, host) = ("m".repeat(200), "h".repeat(200));
    for _ in 0..200 {
        let opening = cloud.open_stream(&mapping, &host, 9, None);
        let _ = tokio::time::timeout(std::time::Duration::from_millis(1), opening).await;
    }
    tokio::time::timeout(std::time::Duration::from_secs(10), cloud.closed())
        .await
        .expect("the heartbeat gives up on a peer that never answers");
    // The sender is dropped with the socket: the receiver then wakes.
    tokio::time::timeout(std::time::Duration::from_secs(10), dropped)
        .await
        .expect("the tunnel's socket is still held by a writer stuck on a peer that does not read")
        .expect_err("nothing is ever sent: the wake is the drop");
}

#[tokio::test]
async fn resets_piling_up_behind_a_peer_that_does_not_read_close_the_tunnel() {
    let settings = MuxSettings { max_streams: 4, queue_frames: 4, ..quiet() };
    let (cloud, _edge) = cloud_and_raw_edge(settings).await;
    // One-thread runtime: the writer takes none of them meanwhile.
    for stream in 1..=8 {
        cloud.shared.send_reset(stream, ResetCode::Other, "x");
    }
    assert!(!cloud.shared.going_away.load(Ordering::Relaxed), "8 fit (4 streams + 4 frames)");
    cloud.shared.send_reset(9, ResetCode::Other, "x");
    closes_because(&cloud, "too many resets queued", "the ninth reset closes the tunnel").await;
}

#[tokio::test]
async fn data_moving_keeps_a_tunnel_alive_while_its_pong_is_stuck_behind_it() {
    let settings = fast_heartbeat();
    let (cloud, mut edge) = cloud_and_raw_edge(settings).await;
    let grant =
        Frame::OpenResult { stream: 1, code: OpenCode::Ok, window: 1024, message: String::new() };
    let (_sender, mut receiver) = open_raw(&cloud, &mut edge, vec![grant]).await.split();
    // The edge uploads (never answering a ping, as if its pongs sat behind
    // the data in its socket) for four heartbeat timeouts; the cloud
    // consumes what arrives.
    let consume = async {
        loop {
            match receiver.recv().await {
                Inbound::Data(bytes) => receiver.consumed(bytes.len()).await.unwrap(),
                _ => return,
            }
        }
    };
    let upload = async {
        let until = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        let (mut sent, mut limit) = (0u64, u64::from(INITIAL_STREAM_WINDOW));
        while tokio::time::Instant::now() < until {
            if sent < limit {
                let payload = Bytes::from(vec![3u8; 1000.min((limit - sent) as usize)]);
                sent += payload.len() as u64;
                edge.send(vec![Frame::Data { stream: 1, payload }]).await;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            while let Ok(Some(frames)) =
                tokio::time::timeout(std::time::Duration::from_millis(1), edge.recv(false)).await
            {
                for frame in frames {
                    if let Frame::Window { limit: l, .. } = frame {
                        limit = limit.max(l);
                    }
                }
            }
        }
    };
    tokio::select! {
        () = upload => {}
        () = consume => panic!("the stream ended during the upload"),
        () = cloud.closed() => panic!("closed while data moved: {:?}", cloud.close_reason()),
    }
    // Then silence: the heartbeat gives up.
    tokio::time::timeout(std::time::Duration::from_secs(10), cloud.closed())
        .await
        .expect("no data and no pongs: the tunnel must close");
}

fn node(id: &str) -> NodeAddr {
    NodeAddr { id: id.into(), url: format!("ws://{id}.test/tunnel") }
}

#[tokio::test]
async fn node_lists_reach_the_edge_and_node_links_the_cloud() {
    let (cloud, edge, _incoming) = pair(quiet()).await;
    let mut nodes = edge.nodes();
    assert!(nodes.borrow().is_none());
    // Written in one go on this one-thread runtime: the second list
    // replaces the first in the slot, and only it goes out.
    cloud.send_nodes("a", &[node("a"), node("b")]);
    cloud.send_nodes("a", &[node("a"), node("b"), node("c")]);
    tokio::time::timeout(std::time::Duration::from_secs(5), nodes.changed())
        .await
        .unwrap()
        .unwrap();
    let list = nodes.borrow_and_update().clone().unwrap();
    assert_eq!(list.this_node, "a");
    assert_eq!(list.nodes, [node("a"), node("b"), node("c")]);

    let link = NodeLink { node: "c".into(), tunnels_up: 0, error: "refused".into() };
    edge.send_node_links(vec![link.clone()]);
    let arrived = async {
        while cloud.last_node_links().is_none() {
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), arrived).await.unwrap();
    assert_eq!(cloud.last_node_links(), Some(vec![link]));
    assert!(!cloud.is_closed() && !edge.is_closed());
}

#[tokio::test]
async fn a_version_3_tunnel_sends_no_cluster_frame_and_refuses_one() {
    let v3 = MuxSettings { version: 3, ..quiet() };
    let (cloud, mut edge) = cloud_and_raw_edge(v3.clone()).await;
    assert!(!cloud.carries_nodes());
    cloud.send_nodes("a", &[node("a")]);
    cloud.drain(); // a frame that does go, behind where the list would be
    let frames = edge.recv(true).await.unwrap();
    assert_eq!(frames, [Frame::Drain], "only the drain was sent");
    edge.send(vec![Frame::NodeLinks { links: Vec::new() }]).await;
    closes_because(&cloud, "node links frame on a version 3 tunnel", "v3 cloud kept the tunnel")
        .await;
}

#[tokio::test]
async fn a_cluster_frame_the_wrong_way_closes_the_tunnel() {
    let (cloud, mut edge) = cloud_and_raw_edge(quiet()).await;
    edge.send(vec![Frame::Nodes { this_node: "a".into(), nodes: vec![node("a")] }]).await;
    closes_because(&cloud, "nodes frame sent the wrong way", "cloud took a node list").await;
}

#[tokio::test]
async fn a_held_first_frame_goes_out_ahead_of_everything_queued_before_its_release() {
    let (mut edge_ws, cloud_ws) = ws_pair().await;
    let welcome = Frame::Welcome {
        version: proto::PROTOCOL_VERSION,
        tunnel_id: 9,
        heartbeat_ms: 60_000,
        max_streams: 16,
        max_frame_payload: proto::DEFAULT_MAX_FRAME_PAYLOAD,
        proof: [0; proto::AUTH_PROOF_LEN],
    };
    let (cloud, _, held) = Tunnel::spawn_held(cloud_ws, Role::Cloud, 9, quiet(), welcome.clone());
    // Queued while held: an open (the tunnel is registered, a client came).
    let opening = tokio::spawn({
        let cloud = cloud.clone();
        async move { cloud.open_stream("m", "127.0.0.1", 9, None).await.map(|_| ()) }
    });
    let early = crate::wire::recv_frame(&mut edge_ws, Duration::from_millis(200)).await;
    assert!(early.is_err(), "nothing is written while held: {early:?}");
    held.release();
    let first = crate::wire::recv_frame(&mut edge_ws, Duration::from_secs(5)).await.unwrap();
    assert_eq!(first, welcome);
    // Then what was queued, as the edge's own mux reads it.
    let (_edge, mut incoming) = Tunnel::spawn(edge_ws, Role::Edge, 9, quiet());
    let stream = tokio::time::timeout(Duration::from_secs(5), incoming.recv()).await;
    assert!(stream.is_ok_and(|s| s.is_some_and(|s| s.port == 9)), "the open queued while held");
    opening.abort();

    // Dropped unreleased: closed, the first frame never written.
    let (mut edge_ws, cloud_ws) = ws_pair().await;
    let (cloud, _, held) = Tunnel::spawn_held(cloud_ws, Role::Cloud, 10, quiet(), welcome);
    drop(held);
    cloud.closed().await;
    assert!(crate::wire::recv_frame(&mut edge_ws, Duration::from_millis(500)).await.is_err());
}

fn origin(send_proxy: Option<proto::SendProxy>) -> proto::StreamOrigin {
    proto::StreamOrigin {
        client: "192.0.2.7:40000".parse().unwrap(),
        public: "127.0.0.1:443".parse().unwrap(),
        server_name: "a.example".into(),
        send_proxy,
    }
}

#[tokio::test]
async fn a_stream_origin_reaches_the_edge_on_a_version_8_tunnel() {
    let (cloud, _edge, mut incoming) = pair(quiet()).await;
    let sent = origin(Some(proto::SendProxy::V1));
    let opening = tokio::spawn({
        let (cloud, sent) = (cloud.clone(), sent.clone());
        async move { cloud.open_stream("m", "127.0.0.1", 9, Some(sent)).await.map(|_| ()) }
    });
    let stream = incoming.recv().await.unwrap();
    assert_eq!(stream.origin.as_deref(), Some(&sent));
    stream.accept().await.unwrap();
    assert!(opening.await.unwrap().is_ok());
}

#[tokio::test]
async fn an_older_edge_gets_no_origin_and_a_proxy_header_is_refused_for_it() {
    let v7 = MuxSettings { version: 7, ..quiet() };
    let (cloud, mut edge) = cloud_and_raw_edge(v7).await;
    let refused = cloud.open_stream("m", "127.0.0.1", 9, Some(origin(Some(proto::SendProxy::V2))));
    match refused.await {
        Err(OpenError::Unsupported { version: 7, need: 8, .. }) => {}
        other => panic!("expected unsupported, got {other:?}"),
    }
    let opening = tokio::spawn({
        let cloud = cloud.clone();
        async move { cloud.open_stream("m", "127.0.0.1", 9, Some(origin(None))).await.map(|_| ()) }
    });
    let frames = edge.recv(true).await.unwrap();
    assert!(
        matches!(frames.as_slice(), [Frame::Open { origin: None, .. }]),
        "a version 7 open, as before: {frames:?}"
    );
    opening.abort();
}
