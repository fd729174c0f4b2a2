//! The control API's endpoints.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use api::{ApiError, BatchRequest, BatchResponse, Change, DrainRequest, MappingSpec};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router, middleware};

use super::{ControlState, auth, events, fleet_routes, prometheus};
use crate::errors::ChangeError;
use crate::mappings::BatchOutcome;

/// How long one snapshot may take to reach a `/v1/stream` client.
const SNAPSHOT_SEND_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

pub(super) type Shared = Arc<ControlState>;

/// Largest request body accepted: a batch of a few thousand changes.
const MAX_BODY: usize = 1024 * 1024;

pub(super) fn router(state: Shared) -> Router {
    let guarded = Router::new()
        .route("/metrics", get(metrics))
        .route("/v1/snapshot", get(snapshot))
        .route("/v1/stream", get(stream))
        .route("/v1/events", get(events::list))
        .route("/v1/events/stream", get(events::stream))
        .route("/v1/mappings", get(list_mappings).post(add_mapping))
        .route("/v1/mappings/{name}", get(get_mapping).delete(remove_mapping))
        .route("/v1/mappings/{name}/drain", post(drain_mapping))
        .route("/v1/mappings/{name}/policy", axum::routing::put(set_policy))
        .route("/v1/edges", get(list_edges).post(fleet_routes::add_edge))
        .route("/v1/edges/{id}", get(fleet_routes::get_edge).delete(fleet_routes::remove_edge))
        .route("/v1/edges/{id}/rotate-token", post(fleet_routes::rotate_token))
        .route("/v1/edges/{id}/revoke", post(fleet_routes::revoke_edge))
        .route("/v1/edges/{id}/enroll", post(fleet_routes::enroll))
        .route("/v1/edges/{id}/drain", post(drain_edge))
        .route("/v1/edges/{id}/undrain", post(undrain_edge))
        .route("/v1/batch", post(batch))
        .route("/v1/nodes", get(list_nodes))
        .route("/v1/nodes/{id}/drain", post(drain_node))
        .route("/v1/nodes/{id}/undrain", post(undrain_node))
        // The body is read only once the token is checked: an anonymous
        // client cannot make the agent buffer a body at all.
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), body_within_timeout))
        .route_layer(middleware::from_fn_with_state(Arc::clone(&state), auth::require_token));
    Router::new()
        .route("/ready", get(ready))
        .route("/ready/{mapping}", get(ready_for_mapping))
        .merge(guarded)
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// Reads the whole request body within `request_timeout` before any
/// handler runs: a body dripped a byte at a time would otherwise hold its
/// connection for as long as the client likes (the headers are bounded by
/// the server's header-read timeout).
async fn body_within_timeout(
    State(state): State<Shared>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let (parts, body) = request.into_parts();
    let read = tokio::time::timeout(state.request_timeout, axum::body::to_bytes(body, MAX_BODY));
    match read.await {
        Ok(Ok(bytes)) => {
            next.run(axum::extract::Request::from_parts(parts, axum::body::Body::from(bytes))).await
        }
        Ok(Err(_)) => error_response(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid",
            &format!("the request body is larger than {MAX_BODY} bytes, or was cut short"),
        ),
        Err(_) => {
            let mut response = error_response(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                &format!("the request body did not arrive within {:?}", state.request_timeout),
            );
            response
                .headers_mut()
                .insert(header::CONNECTION, header::HeaderValue::from_static("close"));
            response
        }
    }
}

pub(super) fn error_response(status: StatusCode, code: &str, error: &str) -> Response {
    (status, Json(ApiError { code: code.to_owned(), error: error.to_owned() })).into_response()
}

pub(super) fn change_error(e: &ChangeError) -> Response {
    let status = StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    error_response(status, e.kind.code(), &e.message)
}

/// Turns a one-change batch into the answer of a single-change endpoint.
pub(super) fn single(
    outcome: BatchOutcome,
    ok_status: StatusCode,
    body: impl IntoResponse,
) -> Response {
    match outcome.failure {
        Some(e) => change_error(&e),
        None => (ok_status, body).into_response(),
    }
}

async fn ready(State(state): State<Shared>) -> StatusCode {
    let cluster_ready = state.cluster.as_ref().is_none_or(|c| c.ready());
    if state.ready.load(Ordering::Relaxed) && cluster_ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

/// Whether this node can serve mapping `name` now: it is ready, the
/// mapping listens here, and a tunnel to its edge (or a member of its
/// group) is up. A load balancer that checks this per mapping sends a
/// mapping's clients only to the nodes that can carry them.
async fn ready_for_mapping(State(state): State<Shared>, Path(name): Path<String>) -> StatusCode {
    if ready(State(Arc::clone(&state))).await != StatusCode::OK {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let Some(entry) = state.mappings.get(&name) else { return StatusCode::NOT_FOUND };
    let can_carry = entry.phase() == crate::mapping::Phase::Active
        && state.edges.pick(&entry.spec.edge, &[]).is_some();
    if can_carry { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE }
}

/// A snapshot as of now (the stream's are up to a second old).
fn fresh_snapshot(state: &ControlState) -> api::Snapshot {
    crate::sampler::snapshot(&state.mappings, &state.edges, crate::clock::now_secs())
}

async fn metrics(State(state): State<Shared>) -> Response {
    let snapshot = fresh_snapshot(&state);
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        prometheus::render(&snapshot, &state.mappings, &state.edges, &state.events),
    )
        .into_response()
}

/// The query of `/v1/snapshot` and `/v1/stream`: `scope=cluster` sums the
/// figures over the cluster's nodes; `series=none` or `series=NAME,...`
/// keeps only those mappings' series (all by default). At 5,000 mappings
/// the series are seven eighths of the snapshot's bytes, and a console
/// draws one mapping's.
#[derive(Debug, Default, serde::Deserialize)]
struct SnapshotQuery {
    scope: Option<String>,
    series: Option<String>,
}

impl SnapshotQuery {
    fn cluster<'a>(&self, state: &'a ControlState) -> Option<&'a Arc<crate::cluster::Cluster>> {
        state.cluster.as_ref().filter(|_| self.scope.as_deref() == Some("cluster"))
    }

    /// A copy of `snapshot` with only the series asked for (a stream's
    /// copy each second leaves the others where they are).
    fn copy(&self, snapshot: &api::Snapshot) -> api::Snapshot {
        let wanted: Option<std::collections::HashSet<&str>> = match self.series.as_deref() {
            None | Some("all") => None,
            Some("none" | "") => Some(std::collections::HashSet::new()),
            Some(names) => Some(names.split(',').collect()),
        };
        let series = match &wanted {
            None => snapshot.series.clone(),
            Some(w) => {
                snapshot.series.iter().filter(|s| w.contains(s.name.as_str())).cloned().collect()
            }
        };
        api::Snapshot {
            at_unix_ms: snapshot.at_unix_ms,
            version: snapshot.version.clone(),
            edges: snapshot.edges.clone(),
            mappings: snapshot.mappings.clone(),
            series,
            window_secs: snapshot.window_secs,
            nodes: snapshot.nodes.clone(),
            peers: snapshot.peers.clone(),
        }
    }

    /// The snapshot asked for: this node's, or the cluster's (each peer is
    /// asked for the same series).
    async fn answer(&self, state: &ControlState, local: &api::Snapshot) -> api::Snapshot {
        let local = self.copy(local);
        match self.cluster(state) {
            Some(cluster) => {
                let series = self.series.as_deref();
                super::peers::cluster_snapshot(cluster, &state.admin_token, local, series).await
            }
            None => local,
        }
    }
}

async fn snapshot(State(state): State<Shared>, Query(query): Query<SnapshotQuery>) -> Response {
    let local = fresh_snapshot(&state);
    Json(query.answer(&state, &local).await).into_response()
}

/// A WebSocket that receives a JSON snapshot about once a second.
async fn stream(
    State(state): State<Shared>,
    Query(query): Query<SnapshotQuery>,
    upgrade: WebSocketUpgrade,
) -> Response {
    let mut snapshots = state.snapshots.clone();
    upgrade.on_upgrade(move |mut socket: WebSocket| async move {
        loop {
            let local = Arc::clone(&snapshots.borrow_and_update());
            let snapshot = query.answer(&state, &local).await;
            let json = serde_json::to_string(&snapshot);
            let Ok(json) = json else { return };
            // A console that stopped reading must not hold this task and
            // its socket: a snapshot it cannot take within the limit ends it.
            let sent =
                tokio::time::timeout(SNAPSHOT_SEND_LIMIT, socket.send(Message::Text(json.into())));
            if !matches!(sent.await, Ok(Ok(()))) {
                return;
            }
            if snapshots.changed().await.is_err() {
                let _ = socket.send(Message::Close(None)).await;
                return;
            }
        }
    })
}

async fn list_mappings(State(state): State<Shared>) -> Response {
    Json(state.mappings.views()).into_response()
}

async fn get_mapping(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    match state.mappings.get(&name) {
        Some(entry) => Json(state.mappings.view_of(&entry)).into_response(),
        None => change_error(&ChangeError::not_found(&name)),
    }
}

/// Body errors (bad JSON, unknown fields) as our JSON error shape.
pub(super) fn bad_body(e: &axum::extract::rejection::JsonRejection) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid", &e.body_text())
}

async fn add_mapping(
    State(state): State<Shared>,
    body: Result<Json<MappingSpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(spec) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e),
    };
    let name = spec.name.clone();
    let changes = [Change::Add { spec: Box::new(spec) }];
    let outcome = state.mappings.apply(&changes, false).await;
    if outcome.applied {
        events::record_changes(&state.events, &changes, "api");
    }
    let view = state.mappings.get(&name).map(|e| state.mappings.view_of(&e));
    single(outcome, StatusCode::CREATED, Json(view))
}

async fn drain_mapping(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Option<Json<DrainRequest>>,
) -> Response {
    let deadline_secs = body.and_then(|Json(b)| b.deadline_secs);
    let changes = [Change::Drain { name: name.clone(), deadline_secs }];
    let outcome = state.mappings.apply(&changes, false).await;
    if outcome.applied {
        events::record_changes(&state.events, &changes, "api");
    }
    let view = state.mappings.get(&name).map(|e| state.mappings.view_of(&e));
    single(outcome, StatusCode::ACCEPTED, Json(view))
}

async fn set_policy(
    State(state): State<Shared>,
    Path(name): Path<String>,
    body: Result<Json<api::PolicySpec>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(policy) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e),
    };
    let changes = [Change::SetPolicy { name: name.clone(), policy }];
    let outcome = state.mappings.apply(&changes, false).await;
    if outcome.applied {
        events::record_changes(&state.events, &changes, "api");
    }
    let view = state.mappings.get(&name).map(|e| state.mappings.view_of(&e));
    single(outcome, StatusCode::OK, Json(view))
}

async fn remove_mapping(State(state): State<Shared>, Path(name): Path<String>) -> Response {
    let changes = [Change::Remove { name }];
    let outcome = state.mappings.apply(&changes, false).await;
    if outcome.applied {
        events::record_changes(&state.events, &changes, "api");
    }
    single(outcome, StatusCode::NO_CONTENT, ())
}

async fn list_edges(State(state): State<Shared>) -> Response {
    Json(state.edges.views(crate::clock::now_secs(), crate::clock::unix_ms())).into_response()
}

async fn drain_edge(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.mappings.set_edge_draining(&id, true).await {
        Ok(()) => {
            let text = "drained through the api: no new connections go to it";
            state.events.record(api::EventKind::EdgeDrained, &id, text);
            StatusCode::ACCEPTED.into_response()
        }
        Err(e) => change_error(&e),
    }
}

async fn undrain_edge(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match state.mappings.set_edge_draining(&id, false).await {
        Ok(()) => {
            let text = "undrained through the api: takes new connections again";
            state.events.record(api::EventKind::EdgeUndrained, &id, text);
            StatusCode::OK.into_response()
        }
        Err(e) => change_error(&e),
    }
}

async fn batch(
    State(state): State<Shared>,
    body: Result<Json<BatchRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e),
    };
    let outcome = state.mappings.apply(&request.changes, request.dry_run).await;
    if outcome.applied {
        events::record_changes(&state.events, &request.changes, "batch");
    }
    let status = match &outcome.failure {
        Some(e) => {
            StatusCode::from_u16(e.kind.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        }
        None => StatusCode::OK,
    };
    let body = BatchResponse {
        applied: outcome.applied,
        dry_run: request.dry_run,
        outcomes: outcome.outcomes,
        revision: outcome.revision,
        nodes: outcome.nodes,
        error: outcome
            .failure
            .as_ref()
            .map(|e| ApiError { code: e.kind.code().to_owned(), error: e.message.clone() }),
    };
    (status, Json(body)).into_response()
}

/// The answer for an agent that runs alone.
fn not_a_cluster() -> Response {
    error_response(
        StatusCode::NOT_FOUND,
        "not_a_cluster",
        "this cloud agent runs alone: its config has no [cluster] section",
    )
}

async fn list_nodes(State(state): State<Shared>) -> Response {
    match &state.cluster {
        Some(cluster) => Json(cluster.nodes()).into_response(),
        None => not_a_cluster(),
    }
}

async fn drain_node(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Option<Json<DrainRequest>>,
) -> Response {
    let Some(cluster) = &state.cluster else { return not_a_cluster() };
    let deadline = match crate::mappings::drain_deadline(body.and_then(|Json(b)| b.deadline_secs)) {
        Ok(d) => d,
        Err(e) => return change_error(&e),
    };
    match cluster.set_node_drain(&id, Some(deadline)).await {
        Ok(node) => (StatusCode::ACCEPTED, Json(node)).into_response(),
        Err(e) => change_error(&e),
    }
}

async fn undrain_node(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let Some(cluster) = &state.cluster else { return not_a_cluster() };
    match cluster.set_node_drain(&id, None).await {
        Ok(node) => Json(node).into_response(),
        Err(e) => change_error(&e),
    }
}
