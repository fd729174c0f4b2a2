//! The admin token check.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ControlState;
use super::routes::error_response;

/// Lets a request through only with `Authorization: Bearer <admin token>`.
/// The comparison takes the same time wherever the first difference is.
pub(super) async fn require_token(
    State(state): State<Arc<ControlState>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let ok = presented
        .is_some_and(|token| bool::from(token.as_bytes().ct_eq(state.admin_token.expose())));
    if !ok {
        let mut response = error_response(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong admin token (send `Authorization: Bearer <token>`)",
        )
        .into_response();
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, header::HeaderValue::from_static("Bearer"));
        return response;
    }
    next.run(request).await
}
