//! The fleet's endpoints: add an edge, remove it, give it a new token,
//! revoke it. Each is a one-change batch, like the mapping endpoints.

use api::{AddEdgeRequest, Change, EdgeCredential, EdgeView, EnrollRequest, RotateTokenRequest};
use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::routes::{Shared, bad_body, change_error, single};
use crate::errors::ChangeError;
use crate::errors::ErrorKind;

/// Applies one change and records its event once applied.
async fn apply(state: &Shared, change: Change) -> crate::mappings::BatchOutcome {
    let changes = [change];
    let outcome = state.mappings.apply(&changes, false).await;
    if outcome.applied {
        super::events::record_changes(&state.events, &changes, "api");
    }
    outcome
}

fn edge_view(state: &Shared, id: &str) -> Option<EdgeView> {
    let views = state.edges.views(crate::clock::now_secs(), crate::clock::unix_ms());
    views.into_iter().find(|e| e.id == id)
}

/// The answer to a change that makes a token: the edge and its token.
fn credential(
    state: &Shared,
    id: &str,
    outcome: crate::mappings::BatchOutcome,
    status: StatusCode,
) -> Response {
    if let Some(e) = &outcome.failure {
        return change_error(e);
    }
    let token = outcome.outcomes.first().and_then(|o| o.token.clone());
    match token {
        Some(token) => {
            let body = EdgeCredential { edge: edge_view(state, id), token };
            (status, Json(body)).into_response()
        }
        // Applied, yet no token to show: a bug, said plainly.
        None => change_error(&ChangeError::new(
            ErrorKind::Internal,
            format!("edge {id:?}: the change was applied, but made no token"),
        )),
    }
}

pub(super) async fn get_edge(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    match edge_view(&state, &id) {
        Some(view) => Json(view).into_response(),
        None => {
            change_error(&ChangeError::new(ErrorKind::NotFound, format!("no edge with id {id:?}")))
        }
    }
}

pub(super) async fn add_edge(
    State(state): State<Shared>,
    body: Result<Json<AddEdgeRequest>, JsonRejection>,
) -> Response {
    let Json(request) = match body {
        Ok(b) => b,
        Err(e) => return bad_body(&e),
    };
    let change = Change::AddEdge { id: request.id.clone(), group: request.group };
    let outcome = apply(&state, change).await;
    credential(&state, &request.id, outcome, StatusCode::CREATED)
}

pub(super) async fn remove_edge(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let outcome = apply(&state, Change::RemoveEdge { id }).await;
    single(outcome, StatusCode::NO_CONTENT, ())
}

pub(super) async fn rotate_token(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Option<Json<RotateTokenRequest>>,
) -> Response {
    let grace_secs = body.and_then(|Json(b)| b.grace_secs);
    let outcome = apply(&state, Change::RotateToken { id: id.clone(), grace_secs }).await;
    credential(&state, &id, outcome, StatusCode::OK)
}

pub(super) async fn revoke_edge(State(state): State<Shared>, Path(id): Path<String>) -> Response {
    let outcome = apply(&state, Change::RevokeEdge { id: id.clone() }).await;
    let view = edge_view(&state, &id);
    single(outcome, StatusCode::OK, Json(view))
}

pub(super) async fn enroll(
    State(state): State<Shared>,
    Path(id): Path<String>,
    body: Option<Json<EnrollRequest>>,
) -> Response {
    let Some(enrolment) = state.enrolment.clone() else {
        return change_error(&ChangeError::new(
            ErrorKind::Internal,
            "enrolment is not set up on this agent".into(),
        ));
    };
    let EnrollRequest { group, ttl_secs } = body.map(|Json(b)| b).unwrap_or_default();
    let outcome = apply(&state, Change::Enroll { id: id.clone(), group, ttl_secs }).await;
    if let Some(e) = &outcome.failure {
        return change_error(e);
    }
    let code = outcome.outcomes.first().and_then(|o| o.code.clone());
    let expires = edge_view(&state, &id).and_then(|e| e.enrolment).map(|e| e.expires_unix_ms);
    match code {
        Some(code) => {
            let expires = expires.unwrap_or_else(|| {
                let ttl = ttl_secs.unwrap_or(api::DEFAULT_ENROL_TTL_SECS);
                crate::clock::unix_ms().saturating_add(ttl * 1000)
            });
            (StatusCode::CREATED, Json(enrolment.ticket(&id, &code, expires))).into_response()
        }
        None => change_error(&ChangeError::new(
            ErrorKind::Internal,
            format!("edge {id:?}: the change was applied, but made no code"),
        )),
    }
}
