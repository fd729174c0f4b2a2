//! The writer task: frames from the two queues, batched into WebSocket
//! messages; a go-away goes last, after the stream frames queued before it.
//! Every write is raced against the tunnel closing, so a peer that stops
//! reading (a zero TCP window) cannot hold the task and its socket once the
//! heartbeat has given up on it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use proto::Frame;
use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::mpsc;

use super::{MAX_BATCH, Queued, Role, Shared};
use crate::ws::{OutMessage, Side, WsWriter};

pub(super) async fn write_loop<S>(
    shared: Arc<Shared>,
    mut ws: WsWriter<WriteHalf<S>>,
    mut data_rx: mpsc::UnboundedReceiver<Queued>,
    mut control_rx: mpsc::UnboundedReceiver<Frame>,
    first: Option<(Frame, tokio::sync::oneshot::Receiver<()>)>,
) where
    S: AsyncWrite,
{
    let side = if shared.role == Role::Cloud { Side::Server } else { Side::Client };
    let mut message = OutMessage::new(side);
    // A go-away waits until the data frames queued before it are written
    // (a stream's last data and FIN must not be lost to a graceful close);
    // `flush_first` counts them.
    let mut go_away: Option<(Frame, usize)> = None;
    if let Some((frame, gate)) = first {
        let released = tokio::select! {
            () = shared.closed.cancelled() => false,
            released = gate => released.is_ok(),
        };
        if !released {
            shared.set_close_reason("the tunnel was not admitted".into());
            shared.closed.cancel();
            shared.stream_room.close();
            return;
        }
        // A handshake frame: alone in its message, as the peer requires.
        message.push(frame);
        let sent = tokio::select! {
            sent = ws.send(&mut message) => sent,
            () = shared.closed.cancelled() => Ok(()),
        };
        if let Err(e) = sent {
            shared.set_close_reason(format!("websocket write failed: {e}"));
            shared.closed.cancel();
            shared.stream_room.close();
            return;
        }
    }
    loop {
        tokio::select! {
            biased;
            () = shared.closed.cancelled() => break,
            Some(frame) = control_rx.recv() => take_control(&shared, frame, &mut message, &mut go_away, &data_rx),
            Some(queued) = data_rx.recv() => push_data(&shared, queued, &mut message, &mut go_away),
            else => break,
        }
        // Batch whatever else is ready into the same message: fewer, larger
        // WebSocket messages and syscalls. Control frames go first.
        while message.len() < MAX_BATCH {
            if let Ok(frame) = control_rx.try_recv() {
                take_control(&shared, frame, &mut message, &mut go_away, &data_rx);
            } else if go_away.as_ref().is_some_and(|(_, n)| *n == 0) {
                break;
            } else if let Ok(queued) = data_rx.try_recv() {
                push_data(&shared, queued, &mut message, &mut go_away);
            } else {
                break;
            }
        }
        // Goes with this batch even if it is full: a go-away is small and the
        // peer's message limit leaves room; holding it back would lose it
        // when nothing else is queued (the go-away timer closes first).
        let last = matches!(go_away, Some((_, 0)));
        if last {
            if let Some((frame, _)) = go_away.take() {
                message.push(frame);
            }
        }
        if !message.is_empty() {
            let sent = tokio::select! {
                sent = ws.send(&mut message) => sent,
                () = shared.closed.cancelled() => break,
            };
            if let Err(e) = sent {
                shared.set_close_reason(format!("websocket write failed: {e}"));
                break;
            }
        }
        if last {
            tokio::select! {
                _ = ws.close(1000) => {}
                () = shared.closed.cancelled() => {}
            }
            break;
        }
    }
    shared.closed.cancel();
    // Stream tasks waiting for room in the queue learn the tunnel is gone.
    shared.stream_room.close();
}

fn push_data(
    shared: &Shared,
    queued: Queued,
    message: &mut OutMessage,
    go_away: &mut Option<(Frame, usize)>,
) {
    if queued.is_final() {
        shared.resets_queued.fetch_sub(1, Ordering::Relaxed);
    }
    // The queue's room is given back as the frame leaves it.
    message.push(queued.frame);
    if let Some((_, flush_first)) = go_away {
        *flush_first = flush_first.saturating_sub(1);
    }
}

fn take_control(
    shared: &Shared,
    frame: Frame,
    message: &mut OutMessage,
    go_away: &mut Option<(Frame, usize)>,
    data_rx: &mpsc::UnboundedReceiver<Queued>,
) {
    match frame {
        Frame::GoAway { .. } => {
            if go_away.is_none() {
                *go_away = Some((frame, data_rx.len()));
            }
        }
        Frame::Pong { .. } => {
            // Clear the flag before reading the nonce: a ping that arrives
            // after this queues a pong of its own.
            shared.pong_queued.store(false, Ordering::SeqCst);
            message.push(Frame::Pong { nonce: shared.pong_nonce.load(Ordering::SeqCst) });
        }
        Frame::Ping { .. } => {
            shared.ping_queued.store(false, Ordering::Relaxed);
            message.push(frame);
        }
        Frame::Report(_) => {
            shared.report_queued.store(false, Ordering::Relaxed);
            message.push(frame);
        }
        // The marker of a cluster frame: the latest one goes.
        Frame::Nodes { .. } | Frame::NodeLinks { .. } => {
            if let Some(latest) = shared.take_cluster() {
                message.push(latest);
            }
        }
        _ => message.push(frame),
    }
}
