//! `GET /v1/events` and the live stream `GET /v1/events/stream`, and the
//! events the control API's own changes record.

use std::sync::Arc;

use api::{Change, DEFAULT_EVENTS_LIMIT, Event, EventKind, MAX_EVENTS_LIMIT};
use axum::Json;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;

use super::ControlState;
use crate::events::EventLog;

/// How long one event may take to reach a stream client; a client that
/// stopped reading is disconnected (it resumes with `since`).
const EVENT_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Events read from the ring at once when a stream catches up.
const CATCH_UP_BATCH: usize = 256;

type Shared = Arc<ControlState>;

/// `?since=SEQ&limit=N`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    #[serde(default)]
    since: u64,
    limit: Option<usize>,
}

pub(super) async fn list(State(state): State<Shared>, Query(q): Query<EventsQuery>) -> Response {
    let limit = q.limit.unwrap_or(DEFAULT_EVENTS_LIMIT).clamp(1, MAX_EVENTS_LIMIT);
    Json(state.events.page(q.since, limit)).into_response()
}

/// A WebSocket that gets every event after `since` (the backlog the log
/// still holds), then each new one, one JSON text message each.
pub(super) async fn stream(
    State(state): State<Shared>,
    Query(q): Query<EventsQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let events = state.events.clone();
    upgrade.on_upgrade(move |socket| serve_stream(socket, events, q.since))
}

async fn serve_stream(mut socket: WebSocket, events: EventLog, since: u64) {
    // Subscribed before the backlog is read: nothing falls in between.
    let mut live = events.subscribe();
    let mut last_sent = since;
    if !catch_up(&mut socket, &events, &mut last_sent).await {
        return;
    }
    loop {
        let event = tokio::select! {
            received = live.recv() => received,
            // A client's close (or any message) ends nothing but a close.
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Close(_)) | Err(_)) | None => return,
                Some(Ok(_)) => continue,
            },
        };
        match event {
            Ok(event) if event.seq <= last_sent => {}
            Ok(event) => {
                if !send(&mut socket, &event).await {
                    return;
                }
                last_sent = event.seq;
            }
            // Fell behind the live channel: the ring still has them (or
            // says they are gone, as a jump in seq).
            Err(RecvError::Lagged(_)) => {
                if !catch_up(&mut socket, &events, &mut last_sent).await {
                    return;
                }
            }
            Err(RecvError::Closed) => {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    }
}

/// Sends what the ring holds after `last_sent`; false when the client is
/// gone or too slow.
async fn catch_up(socket: &mut WebSocket, events: &EventLog, last_sent: &mut u64) -> bool {
    loop {
        let batch = events.since(*last_sent, CATCH_UP_BATCH);
        let Some(last) = batch.last().map(|e| e.seq) else { return true };
        for event in &batch {
            if !send(socket, event).await {
                return false;
            }
        }
        *last_sent = last;
    }
}

async fn send(socket: &mut WebSocket, event: &Event) -> bool {
    let Ok(json) = serde_json::to_string(event) else { return false };
    let sent = tokio::time::timeout(EVENT_SEND_LIMIT, socket.send(Message::Text(json.into())));
    matches!(sent.await, Ok(Ok(())))
}

/// Records the events of `changes`, applied through `interface` (`api` or
/// `batch`).
pub(super) fn record_changes(events: &EventLog, changes: &[Change], interface: &str) {
    for change in changes {
        match change {
            Change::Add { spec } => events.record(
                EventKind::MappingAdded,
                &spec.name,
                &format!(
                    "added through the {interface}: {} to edge {}, target {}",
                    spec.listen, spec.edge, spec.target
                ),
            ),
            Change::Drain { name, deadline_secs } => {
                let deadline =
                    deadline_secs.unwrap_or(crate::mappings::DEFAULT_DRAIN_DEADLINE.as_secs());
                events.record(
                    EventKind::MappingDrained,
                    name,
                    &format!("draining through the {interface}: open connections have {deadline}s"),
                );
            }
            Change::SetPolicy { name, policy } => {
                let shown = policy
                    .to_policy()
                    .map_or_else(|_| "an invalid policy".to_owned(), |p| p.to_string());
                events.record(
                    EventKind::PolicyChanged,
                    name,
                    &format!("policy set through the {interface}: {shown}"),
                );
            }
            Change::Remove { name } => events.record(
                EventKind::MappingRemoved,
                name,
                &format!("removed through the {interface}"),
            ),
            Change::AddEdge { id, group } => events.record(
                EventKind::EdgeAdded,
                id,
                &match group {
                    Some(g) => format!("added through the {interface}, in group {g}"),
                    None => format!("added through the {interface}"),
                },
            ),
            Change::Enroll { id, ttl_secs, .. } => {
                let ttl = ttl_secs.unwrap_or(api::DEFAULT_ENROL_TTL_SECS);
                events.record(
                    EventKind::EnrolmentCodeMade,
                    id,
                    &format!("enrolment code made through the {interface}, valid for {ttl}s"),
                );
            }
            // Recorded by the tunnel listener, which knows the address.
            Change::Redeem { .. } => {}
            Change::RemoveEdge { id } => events.record(
                EventKind::EdgeRemoved,
                id,
                &format!("removed through the {interface}"),
            ),
            Change::RotateToken { id, grace_secs } => {
                let grace = grace_secs.unwrap_or(crate::fleet::DEFAULT_ROTATION_GRACE_SECS);
                events.record(
                    EventKind::TokenRotated,
                    id,
                    &format!(
                        "new token through the {interface}; the old one is accepted for {grace}s"
                    ),
                );
            }
            Change::RevokeEdge { id } => events.record(
                EventKind::EdgeRevoked,
                id,
                &format!("revoked through the {interface}: its tunnels are closed"),
            ),
        }
    }
}
