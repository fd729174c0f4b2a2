//! Two tunnel ends over a real loopback TCP connection: window tuning and
//! the per-tunnel budget, observed from inside.

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpStream};

use super::*;
use crate::stream::{Inbound, StreamReceiver, StreamSender};
use crate::ws::{Side, WsConn, max_message_len};

const MAX_WINDOW: u32 = 256 * 1024;

/// A cloud end and an edge end, the edge receiving with `settings`.
async fn pair(
    edge_settings: MuxSettings,
) -> (Tunnel, Tunnel, mpsc::UnboundedReceiver<IncomingStream>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let (client, accepted) =
        tokio::join!(TcpStream::connect(listener.local_addr().unwrap()), listener.accept());
    let limit = max_message_len(proto::DEFAULT_MAX_FRAME_PAYLOAD);
    let edge_ws = WsConn::new(client.unwrap(), Side::Client, limit, BytesMut::new());
    let cloud_ws = WsConn::new(accepted.unwrap().0, Side::Server, limit, BytesMut::new());
    // A slow heartbeat: no ping wakes the cloud's writer by chance.
    let cloud_settings = MuxSettings {
        heartbeat_interval: std::time::Duration::from_secs(30),
        heartbeat_timeout: std::time::Duration::from_secs(90),
        ..MuxSettings::default()
    };
    let (cloud, _) = Tunnel::spawn(cloud_ws, Role::Cloud, 1, cloud_settings);
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
    let (opened, accepted) = tokio::join!(cloud.open_stream("m", "127.0.0.1", 9), async {
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
    tokio::time::timeout(std::time::Duration::from_secs(5), edge.closed())
        .await
        .expect("the edge's tunnel must end");
    let reason = edge.close_reason().unwrap_or_default();
    assert!(reason.contains("going away after a full batch"), "edge saw: {reason}");
}
