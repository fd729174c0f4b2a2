//! The reader task: decodes frames, applies them to streams, and runs the
//! heartbeat. It never waits on the writer (see the parent module).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use proto::{Frame, GoAwayCode};
use tokio::io::{AsyncRead, ReadHalf};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Entry, IncomingStream, Role, Shared, unix_ms};
use crate::stream::{Inbound, MuxStream};
use crate::ws::{WsMessage, WsReader};

/// Why the reader stops on a frame.
#[derive(Debug)]
enum Stop {
    /// A frame the peer should not have sent. Closes the tunnel with a
    /// protocol-error go-away.
    Violation(String),
    /// The peer said it is closing the tunnel.
    PeerGoAway(String),
}

impl<E: fmt::Display> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Violation(e.to_string())
    }
}

pub(super) async fn read_loop<S>(
    shared: Arc<Shared>,
    mut ws: WsReader<ReadHalf<S>>,
    incoming_tx: mpsc::UnboundedSender<IncomingStream>,
) where
    S: AsyncRead,
{
    let settings = shared.settings.clone();
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // Fires `heartbeat_timeout` after the last message; moved forward
    // lazily (only when it fires early) rather than on every message.
    let silence = tokio::time::sleep(settings.heartbeat_timeout);
    tokio::pin!(silence);
    let mut ping: (u64, Instant) = (0, Instant::now());
    let reason = loop {
        tokio::select! {
            () = shared.closed.cancelled() => break None,
            () = &mut silence => {
                let deadline = last_heard + settings.heartbeat_timeout;
                if deadline > Instant::now() {
                    silence.as_mut().reset(deadline);
                    continue;
                }
                let why = format!("no frame from peer for {:?}", last_heard.elapsed());
                shared.go_away(GoAwayCode::Timeout, why.clone());
                break Some(why);
            }
            msg = ws.next() => match msg {
                Ok(None) => break Some("connection closed by peer".to_owned()),
                Err(e) => break Some(format!("websocket error: {e}")),
                Ok(Some(WsMessage::Binary(bytes))) => {
                    last_heard = Instant::now();
                    shared.last_heard_ms.store(unix_ms(), Ordering::Relaxed);
                    match on_message(&shared, bytes, &incoming_tx, &mut ping) {
                        Ok(()) => {}
                        Err(Stop::Violation(why)) => {
                            warn!(reason = %why, "protocol violation; closing tunnel");
                            shared.go_away(GoAwayCode::ProtocolError, why.clone());
                            break Some(format!("protocol violation: {why}"));
                        }
                        Err(Stop::PeerGoAway(why)) => break Some(why),
                    }
                }
                Ok(Some(WsMessage::Close(why))) => {
                    break Some(format!("peer closed the websocket {why}").trim_end().to_owned());
                }
                Ok(Some(WsMessage::Ping | WsMessage::Pong)) => last_heard = Instant::now(),
                Ok(Some(WsMessage::Text)) => {
                    let why = "non-binary websocket message".to_owned();
                    shared.go_away(GoAwayCode::ProtocolError, why.clone());
                    break Some(why);
                }
            },
            _ = heartbeat.tick() => {
                // One ping outstanding: if the last is still queued, the
                // writer is stalled and another would only pile up.
                if !shared.ping_queued.swap(true, Ordering::Relaxed) {
                    ping = (ping.0.wrapping_add(1), Instant::now());
                    shared.send_control(Frame::Ping { nonce: ping.0 });
                }
            }
        }
    };
    if let Some(reason) = reason {
        shared.set_close_reason(reason);
    }
    if shared.going_away.load(Ordering::Relaxed) {
        // Let the writer deliver the go-away; it cancels when done, or the
        // go-away timer does.
        shared.closed.cancelled().await;
    }
    shared.closed.cancel();
    shared.fail_all_streams();
    debug!(reason = ?shared.close_reason.lock().ok().and_then(|r| r.clone()), "tunnel ended");
}

fn on_message(
    shared: &Arc<Shared>,
    mut bytes: Bytes,
    incoming_tx: &mpsc::UnboundedSender<IncomingStream>,
    ping: &mut (u64, Instant),
) -> Result<(), Stop> {
    while !bytes.is_empty() {
        let Some(frame) = proto::decode(&mut bytes, shared.settings.max_frame_payload)? else {
            return Err(Stop::Violation("truncated frame at end of message".into()));
        };
        on_frame(shared, frame, incoming_tx, ping)?;
    }
    Ok(())
}

fn on_frame(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming_tx: &mpsc::UnboundedSender<IncomingStream>,
    ping: &mut (u64, Instant),
) -> Result<(), Stop> {
    match frame {
        Frame::Data { stream, payload } => {
            let table = shared.table();
            // Data for a stream we already reset or closed is normal for a
            // moment (it was in flight); drop it.
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            let behind = {
                let mut inner = entry.stream.lock();
                inner.state.on_data().map_err(|e| format!("stream {stream}: {e}"))?;
                let behind = inner.recv.buffered() > 0;
                inner
                    .recv
                    .on_data(payload.len() as u64)
                    .map_err(|e| format!("stream {stream}: {e}"))?;
                behind
            };
            // Queued behind earlier data, the payload waits for the local
            // reader: it must not pin the whole read buffer meanwhile.
            let payload = if behind { crate::buffers::detach(payload) } else { payload };
            let _ = entry.inbound.send(Inbound::Data(payload));
        }
        Frame::Window { stream, limit } => {
            let table = shared.table();
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            let grew = entry
                .stream
                .lock()
                .send
                .on_window_update(limit)
                .map_err(|e| format!("stream {stream}: {e}"))?;
            if grew {
                entry.stream.wake_sender();
            }
        }
        Frame::Fin { stream } => {
            let mut table = shared.table();
            let Some(entry) = table.map.get(&stream) else { return Ok(()) };
            let closed = {
                let mut inner = entry.stream.lock();
                inner.state.on_fin().map_err(|e| format!("stream {stream}: {e}"))?;
                inner.recv.on_fin(&entry.stream.budget);
                inner.state.is_closed()
            };
            let _ = entry.inbound.send(Inbound::Fin);
            if closed {
                table.map.remove(&stream);
                shared.active.store(table.map.len(), Ordering::Relaxed);
            }
        }
        Frame::Reset { stream, code, message } => {
            let mut table = shared.table();
            if let Some(entry) = table.map.remove(&stream) {
                shared.active.store(table.map.len(), Ordering::Relaxed);
                drop(table);
                entry.stream.mark_reset(&format!("reset by peer: {message}"));
                let _ = entry.inbound.send(Inbound::Reset { code, message });
            }
        }
        Frame::Open { stream, window, mapping, host, port } => {
            if shared.role != Role::Edge {
                return Err(Stop::Violation("only the cloud may open streams".into()));
            }
            let (inbound_tx, inbound_rx) = mpsc::unbounded_channel();
            let stream_shared = {
                let mut table = shared.table();
                if table.closed {
                    return Ok(());
                }
                table.ids.accept(stream)?;
                if table.map.len() >= shared.settings.max_streams as usize {
                    return Err(Stop::Violation(format!(
                        "peer exceeded the limit of {} streams",
                        shared.settings.max_streams
                    )));
                }
                let s = shared.new_stream(stream, window);
                table.map.insert(
                    stream,
                    Entry { stream: Arc::clone(&s), inbound: inbound_tx, pending_open: None },
                );
                shared.active.store(table.map.len(), Ordering::Relaxed);
                s
            };
            let stream = MuxStream::new(stream_shared, Arc::clone(shared), inbound_rx);
            let _ = incoming_tx.send(IncomingStream { mapping, host, port, stream });
        }
        Frame::OpenResult { stream, code, window, message } => {
            if shared.role != Role::Cloud {
                return Err(Stop::Violation("only the edge answers opens".into()));
            }
            let mut table = shared.table();
            if let Some(pending) = table.map.get_mut(&stream).and_then(|e| e.pending_open.take()) {
                let _ = pending.send((code, window, message));
            }
        }
        Frame::Ping { nonce } => {
            // One pong outstanding at most: a ping flood costs the peer, not us.
            if !shared.pong_queued.swap(true, Ordering::Relaxed) {
                shared.send_control(Frame::Pong { nonce });
            }
        }
        Frame::Pong { nonce } => {
            if nonce == ping.0 {
                let rtt = ping.1.elapsed().as_micros().clamp(1, u128::from(u64::MAX)) as u64;
                shared.rtt_micros.store(rtt, Ordering::Relaxed);
            }
        }
        Frame::Drain => shared.peer_draining.store(true, Ordering::Relaxed),
        Frame::Report(report) => {
            if shared.role != Role::Cloud {
                return Err(Stop::Violation("only the edge sends reports".into()));
            }
            *shared.last_report.lock().unwrap_or_else(|p| p.into_inner()) = Some(report);
        }
        Frame::GoAway { code, message } => {
            return Err(Stop::PeerGoAway(format!("peer closed the tunnel ({code:?}): {message}")));
        }
        other => {
            return Err(Stop::Violation(format!("unexpected frame after handshake: {other:?}")));
        }
    }
    Ok(())
}
