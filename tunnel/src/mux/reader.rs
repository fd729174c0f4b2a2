//! The reader task: decodes frames, applies them to streams, and runs the
//! heartbeat. It never waits on the writer (see the parent module).
//!
//! Liveness is the peer answering pings, or moving stream data: a `Data`
//! frame, or a `Window` that raises a limit (it consumed what this side
//! sent). A pong can queue behind seconds of bulk data on a slow link, and
//! that data proves the peer alive just as well. Anything else (its own
//! pings, reports, repeated windows, WebSocket pings) does not count: a
//! peer that keeps sending those but stops answering is as dead as a silent
//! one, and a side whose own writer is stuck behind a peer that does not
//! read gets no answers and, once the credit it granted is used, no data.

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
use crate::stream::MuxStream;
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

/// Our pings and the peer's answers to them.
#[derive(Debug)]
struct Heartbeat {
    /// Nonce and send time of the latest ping.
    sent: (u64, Instant),
    /// Nonce of the newest ping answered, and when the answer came (the
    /// tunnel's start before any).
    answered: (u64, Instant),
    /// When the peer last moved stream data.
    progress: Instant,
}

impl Heartbeat {
    fn new(now: Instant) -> Self {
        Self { sent: (0, now), answered: (0, now), progress: now }
    }

    /// The last proof that the peer is alive.
    fn alive_at(&self) -> Instant {
        self.answered.1.max(self.progress)
    }

    /// Applies a pong. Returns the round trip when it answers the latest
    /// ping. A pong for an older ping still proves the peer alive (it may
    /// answer only the latest of several); one for a ping never sent, or
    /// answered already, proves nothing.
    fn on_pong(&mut self, nonce: u64, now: Instant) -> Option<std::time::Duration> {
        if nonce <= self.answered.0 || nonce > self.sent.0 {
            return None;
        }
        self.answered = (nonce, now);
        (nonce == self.sent.0).then(|| now.saturating_duration_since(self.sent.1))
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
    let mut beat = Heartbeat::new(Instant::now());
    // Fires `heartbeat_timeout` after the last answer; moved forward lazily
    // (only when it fires early) rather than on every pong.
    let unanswered = tokio::time::sleep(settings.heartbeat_timeout);
    tokio::pin!(unanswered);
    let reason = loop {
        tokio::select! {
            () = shared.closed.cancelled() => break None,
            () = &mut unanswered => {
                let deadline = beat.alive_at() + settings.heartbeat_timeout;
                if deadline > Instant::now() {
                    unanswered.as_mut().reset(deadline);
                    continue;
                }
                let why = format!("no answer to pings for {:?}", beat.alive_at().elapsed());
                shared.go_away(GoAwayCode::Timeout, why.clone());
                break Some(why);
            }
            msg = ws.next() => match msg {
                Ok(None) => break Some("connection closed by peer".to_owned()),
                Err(e) => break Some(format!("websocket error: {e}")),
                Ok(Some(WsMessage::Binary(bytes))) => {
                    shared.last_heard_ms.store(unix_ms(), Ordering::Relaxed);
                    match on_message(&shared, bytes, &incoming_tx, &mut beat) {
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
                // Allowed and ignored: liveness is the protocol's own ping.
                Ok(Some(WsMessage::Ping | WsMessage::Pong)) => {}
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
                    beat.sent = (beat.sent.0 + 1, Instant::now());
                    shared.send_control(Frame::Ping { nonce: beat.sent.0 });
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
    beat: &mut Heartbeat,
) -> Result<(), Stop> {
    if bytes.is_empty() {
        return Err(Stop::Violation(
            "empty websocket message (one or more frames expected)".into(),
        ));
    }
    while !bytes.is_empty() {
        let Some(frame) = proto::decode(&mut bytes, shared.settings.max_frame_payload)? else {
            return Err(Stop::Violation("truncated frame at end of message".into()));
        };
        on_frame(shared, frame, incoming_tx, beat)?;
    }
    Ok(())
}

/// The entry of an open stream for a frame that needs one, or None for a
/// stream already gone (its frames may have been in flight: ignored). On
/// the cloud, a stream frame before the edge's open result is a violation.
fn open_entry<'t>(
    map: &'t std::collections::HashMap<u32, Entry>,
    stream: u32,
    kind: &str,
) -> Result<Option<&'t Entry>, Stop> {
    match map.get(&stream) {
        Some(entry) if entry.pending_open.is_some() => {
            Err(Stop::Violation(format!("stream {stream}: {kind} before its open result")))
        }
        entry => Ok(entry),
    }
}

fn on_frame(
    shared: &Arc<Shared>,
    frame: Frame,
    incoming_tx: &mpsc::UnboundedSender<IncomingStream>,
    beat: &mut Heartbeat,
) -> Result<(), Stop> {
    match frame {
        Frame::Data { stream, payload } => {
            let table = shared.table();
            let Some(entry) = open_entry(&table.map, stream, "data")? else { return Ok(()) };
            {
                let mut inner = entry.stream.lock();
                inner.state.on_data().map_err(|e| format!("stream {stream}: {e}"))?;
                // Unless the local reader is parked waiting for it, the
                // payload waits (behind earlier data, or for a relay busy
                // elsewhere): the inbox copies it (see `crate::inbox`).
                let waits = !inner.reader_parked || inner.recv.buffered() > 0;
                inner
                    .recv
                    .on_data(payload.len() as u64)
                    .map_err(|e| format!("stream {stream}: {e}"))?;
                inner.inbox.push(payload, waits);
            }
            entry.stream.wake_receiver();
            beat.progress = Instant::now();
        }
        Frame::Window { stream, limit } => {
            let table = shared.table();
            let Some(entry) = open_entry(&table.map, stream, "window")? else { return Ok(()) };
            let grew = entry
                .stream
                .lock()
                .send
                .on_window_update(limit)
                .map_err(|e| format!("stream {stream}: {e}"))?;
            if grew {
                entry.stream.wake_sender();
                beat.progress = Instant::now();
            }
        }
        Frame::Fin { stream } => {
            let mut table = shared.table();
            let Some(entry) = open_entry(&table.map, stream, "fin")? else { return Ok(()) };
            let closed = {
                let mut inner = entry.stream.lock();
                inner.state.on_fin().map_err(|e| format!("stream {stream}: {e}"))?;
                inner.recv.on_fin(&entry.stream.budget);
                inner.inbox.push_fin();
                inner.state.is_closed()
            };
            entry.stream.wake_receiver();
            if closed {
                table.map.remove(&stream);
                shared.active.store(table.map.len(), Ordering::Relaxed);
            }
        }
        Frame::Reset { stream, code, message } => {
            let mut table = shared.table();
            if let Some(mut entry) = table.map.remove(&stream) {
                shared.active.store(table.map.len(), Ordering::Relaxed);
                drop(table);
                // An edge that drops a stream before answering resets it:
                // that is its answer.
                if let Some(pending) = entry.pending_open.take() {
                    let _ = pending.send((proto::OpenCode::Error, format!("reset: {message}")));
                }
                entry.stream.mark_reset(code, &format!("reset by peer: {message}"));
            }
        }
        Frame::Open { stream, window, mapping, host, port, origin } => {
            if shared.role != Role::Edge {
                return Err(Stop::Violation("only the cloud may open streams".into()));
            }
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
                table.map.insert(stream, Entry { stream: Arc::clone(&s), pending_open: None });
                shared.active.store(table.map.len(), Ordering::Relaxed);
                s
            };
            let stream = MuxStream::new(stream_shared, Arc::clone(shared));
            let _ = incoming_tx.send(IncomingStream { mapping, host, port, origin, stream });
        }
        Frame::OpenResult { stream, code, window, message } => {
            if shared.role != Role::Cloud {
                return Err(Stop::Violation("only the edge answers opens".into()));
            }
            let mut table = shared.table();
            // A duplicate, or one for a stream already gone, is ignored.
            let Some(entry) = table.map.get_mut(&stream) else { return Ok(()) };
            let Some(pending) = entry.pending_open.take() else { return Ok(()) };
            if code == proto::OpenCode::Draining {
                // It said so before its Drain frame arrived: open no more here.
                shared.peer_draining.store(true, Ordering::Relaxed);
            }
            if code == proto::OpenCode::Ok {
                // Applied here, in frame order: a `Window` right behind it in
                // the same message must find the grant in place.
                entry.stream.lock().send.grant_initial(window);
                entry.stream.wake_sender();
            } else {
                // A refused stream is gone: later frames for it are ignored.
                table.map.remove(&stream);
                shared.active.store(table.map.len(), Ordering::Relaxed);
            }
            let _ = pending.send((code, message));
        }
        Frame::Ping { nonce } => {
            // One pong outstanding at most (a ping flood costs the peer, not
            // us), and it carries the latest nonce when it is written.
            shared.pong_nonce.store(nonce, Ordering::SeqCst);
            if !shared.pong_queued.swap(true, Ordering::SeqCst) {
                shared.send_control(Frame::Pong { nonce });
            }
        }
        Frame::Pong { nonce } => {
            if let Some(rtt) = beat.on_pong(nonce, Instant::now()) {
                let rtt = rtt.as_micros().clamp(1, u128::from(u64::MAX)) as u64;
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
        Frame::Nodes { this_node, nodes } => {
            versioned_frame_allowed(shared, "nodes", proto::NODES_VERSION, Role::Edge)?;
            shared.nodes_in.send_replace(Some(super::NodeList { this_node, nodes }));
        }
        Frame::NodeLinks { links } => {
            versioned_frame_allowed(shared, "node links", proto::NODES_VERSION, Role::Cloud)?;
            *shared.node_links_in.lock().unwrap_or_else(|p| p.into_inner()) = Some(links);
        }
        Frame::Probe { id, timeout_ms, mapping, host, port, exchange } => {
            versioned_frame_allowed(shared, "probe", proto::PROBE_VERSION, Role::Edge)?;
            if exchange.is_some() {
                let need = proto::PROBE_EXCHANGE_VERSION;
                versioned_frame_allowed(shared, "probe exchange", need, Role::Edge)?;
            }
            let timeout = std::time::Duration::from_millis(u64::from(timeout_ms));
            let probe = super::IncomingProbe { id, mapping, host, port, timeout, exchange };
            shared.probes.arrived(probe);
        }
        Frame::ProbeResult { id, code, connect_us, message } => {
            versioned_frame_allowed(shared, "probe result", proto::PROBE_VERSION, Role::Cloud)?;
            let connect = std::time::Duration::from_micros(u64::from(connect_us));
            shared.probes.answered(id, super::ProbeAnswer { code, connect, message });
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

/// A frame of a later version (cluster: 4, probes: 6) needs a tunnel of
/// that version and the right direction.
fn versioned_frame_allowed(
    shared: &Shared,
    kind: &str,
    since: u16,
    receiver: Role,
) -> Result<(), Stop> {
    if shared.settings.version < since {
        return Err(Stop::Violation(format!(
            "{kind} frame on a version {} tunnel",
            shared.settings.version
        )));
    }
    if shared.role != receiver {
        return Err(Stop::Violation(format!("{kind} frame sent the wrong way")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn only_answers_to_pings_sent_count() {
        let start = Instant::now();
        let mut beat = Heartbeat::new(start);
        assert_eq!(beat.on_pong(1, start), None, "no ping was sent");
        beat.sent = (1, start);
        beat.sent = (2, start + Duration::from_millis(10));
        // The answer to the older ping: alive, but no round trip.
        let later = start + Duration::from_millis(15);
        assert_eq!(beat.on_pong(1, later), None);
        assert_eq!(beat.answered, (1, later));
        assert_eq!(beat.on_pong(1, later), None, "answered already");
        let last = start + Duration::from_millis(30);
        assert_eq!(beat.on_pong(2, last), Some(Duration::from_millis(20)));
        assert_eq!(beat.on_pong(3, last), None, "never sent");
        assert_eq!(beat.answered.0, 2);
    }
}
