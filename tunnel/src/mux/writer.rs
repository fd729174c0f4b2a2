//! The writer task: frames from the two queues, batched into WebSocket
//! messages; a go-away goes last, after the data queued before it.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::BytesMut;
use futures_util::SinkExt;
use proto::Frame;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use super::{MAX_BATCH, Shared};

pub(super) async fn write_loop<S>(
    shared: Arc<Shared>,
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut data_rx: mpsc::Receiver<Frame>,
    mut control_rx: mpsc::UnboundedReceiver<Frame>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut buf = BytesMut::with_capacity(64 * 1024);
    // A go-away waits until the data frames queued before it are written
    // (a stream's last data and FIN must not be lost to a graceful close);
    // `flush_first` counts them.
    let mut go_away: Option<(Frame, usize)> = None;
    loop {
        tokio::select! {
            biased;
            () = shared.closed.cancelled() => break,
            Some(frame) = control_rx.recv() => take_control(&shared, frame, &mut buf, &mut go_away, &data_rx),
            Some(frame) = data_rx.recv() => encode_data(frame, &mut buf, &mut go_away),
            else => break,
        }
        // Batch whatever else is ready into the same message: fewer, larger
        // WebSocket messages and syscalls. Control frames go first.
        while buf.len() < MAX_BATCH {
            if let Ok(frame) = control_rx.try_recv() {
                take_control(&shared, frame, &mut buf, &mut go_away, &data_rx);
            } else if go_away.as_ref().is_some_and(|(_, n)| *n == 0) {
                break;
            } else if let Ok(frame) = data_rx.try_recv() {
                encode_data(frame, &mut buf, &mut go_away);
            } else {
                break;
            }
        }
        let last = match &go_away {
            Some((frame, 0)) if buf.len() < MAX_BATCH => {
                frame.encode(&mut buf);
                true
            }
            _ => false,
        };
        if !buf.is_empty() {
            if let Err(e) = sink.send(Message::Binary(buf.split().freeze())).await {
                shared.set_close_reason(format!("websocket write failed: {e}"));
                break;
            }
        }
        if last {
            let _ = sink.close().await;
            break;
        }
        if buf.capacity() > 4 * MAX_BATCH {
            buf = BytesMut::with_capacity(64 * 1024);
        }
    }
    shared.closed.cancel();
}

fn encode_data(frame: Frame, buf: &mut BytesMut, go_away: &mut Option<(Frame, usize)>) {
    frame.encode(buf);
    if let Some((_, flush_first)) = go_away {
        *flush_first = flush_first.saturating_sub(1);
    }
}

fn take_control(
    shared: &Shared,
    frame: Frame,
    buf: &mut BytesMut,
    go_away: &mut Option<(Frame, usize)>,
    data_rx: &mpsc::Receiver<Frame>,
) {
    match frame {
        Frame::GoAway { .. } => {
            if go_away.is_none() {
                *go_away = Some((frame, data_rx.len()));
            }
        }
        Frame::Pong { .. } => {
            shared.pong_queued.store(false, Ordering::Relaxed);
            frame.encode(buf);
        }
        _ => frame.encode(buf),
    }
}
