//! A blocking client of the cloud agent's control API
//! (`docs/control-api.md`).
//!
//! Blocking keeps it simple: subcommands make one call and exit, and the
//! TUI polls from its own thread.

use std::time::Duration;

use api::{ApiError, BatchRequest, BatchResponse, EdgeView, MappingSpec, MappingView, Snapshot};
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::settings::AdminToken;

/// Each request must finish within this long.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a call to the control API failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub(crate) enum ClientError {
    /// Nothing answered at the endpoint (agent down, wrong address).
    #[error("cannot reach the cloud agent at {endpoint}: {reason}")]
    Unreachable { endpoint: String, reason: String },
    /// The admin token was missing or wrong.
    #[error("the cloud agent at {endpoint} refused the admin token (401)")]
    Unauthorized { endpoint: String },
    /// The API answered with an error.
    #[error("{error} ({status} {code})")]
    Api { status: u16, code: String, error: String },
    /// The answer was not what this relayctl understands.
    #[error("unexpected answer from {endpoint}: {reason}")]
    BadAnswer { endpoint: String, reason: String },
}

impl ClientError {
    /// Process exit code for scripts: 2 unreachable, 3 unauthorized,
    /// 4 refused by the API, 5 anything else.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 2,
            ClientError::Unauthorized { .. } => 3,
            ClientError::Api { .. } => 4,
            ClientError::BadAnswer { .. } => 5,
        }
    }
}

/// A client of one cloud agent's control API. Its `Debug` masks the token.
#[derive(Debug, Clone)]
pub(crate) struct ControlClient {
    endpoint: String,
    token: Option<AdminToken>,
    agent: ureq::Agent,
}

impl ControlClient {
    /// A client for `endpoint` (e.g. `http://127.0.0.1:7070`) with the
    /// admin token, if any.
    pub(crate) fn new(endpoint: &str, token: Option<AdminToken>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .build()
            .new_agent();
        Self { endpoint: endpoint.trim_end_matches('/').to_owned(), token, agent }
    }

    /// The endpoint this client talks to.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn bad(&self, reason: impl ToString) -> ClientError {
        ClientError::BadAnswer { endpoint: self.endpoint.clone(), reason: reason.to_string() }
    }

    /// Sends one request; returns the status and the body text.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), ClientError> {
        let url = format!("{}{path}", self.endpoint);
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }
        let result = match body {
            Some(json) => {
                let request = request
                    .header("content-type", "application/json")
                    .body(json)
                    .map_err(|e| self.bad(e))?;
                self.agent.run(request)
            }
            None => self.agent.run(request.body(()).map_err(|e| self.bad(e))?),
        };
        let mut response = result.map_err(|e| ClientError::Unreachable {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        })?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().map_err(|e| self.bad(e))?;
        if status == 401 {
            return Err(ClientError::Unauthorized { endpoint: self.endpoint.clone() });
        }
        Ok((status, text))
    }

    fn api_error(status: u16, text: String) -> ClientError {
        match serde_json::from_str::<ApiError>(&text) {
            Ok(e) => ClientError::Api { status, code: e.code, error: e.error },
            Err(_) => ClientError::Api { status, code: "http".into(), error: text },
        }
    }

    fn call<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Option<T>, ClientError> {
        let (status, text) = self.send(method, path, body)?;
        match status {
            200..=299 if text.is_empty() => Ok(None),
            200..=299 => serde_json::from_str(&text).map(Some).map_err(|e| self.bad(e)),
            _ => Err(Self::api_error(status, text)),
        }
    }

    fn expect<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<T, ClientError> {
        self.call(method, path, body)?.ok_or_else(|| ClientError::BadAnswer {
            endpoint: self.endpoint.clone(),
            reason: format!("empty answer to {method} {path}"),
        })
    }

    /// Everything a console draws.
    ///
    /// # Errors
    /// A [`ClientError`] when the call fails.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, ClientError> {
        self.expect("GET", "/v1/snapshot", None)
    }

    /// Every mapping.
    ///
    /// # Errors
    /// A [`ClientError`] when the call fails.
    pub(crate) fn mappings(&self) -> Result<Vec<MappingView>, ClientError> {
        self.expect("GET", "/v1/mappings", None)
    }

    /// Every edge.
    ///
    /// # Errors
    /// A [`ClientError`] when the call fails.
    pub(crate) fn edges(&self) -> Result<Vec<EdgeView>, ClientError> {
        self.expect("GET", "/v1/edges", None)
    }

    /// Adds a mapping; it is listening when this returns.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] names the problem.
    pub(crate) fn add_mapping(&self, spec: &MappingSpec) -> Result<MappingView, ClientError> {
        let body = serde_json::to_string(spec).map_err(|e| self.bad(e))?;
        self.expect("POST", "/v1/mappings", Some(body))
    }

    /// Starts draining a mapping.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown name.
    pub(crate) fn drain_mapping(
        &self,
        name: &str,
        deadline_secs: Option<u64>,
    ) -> Result<Option<MappingView>, ClientError> {
        let body = serde_json::json!({ "deadline_secs": deadline_secs }).to_string();
        self.call("POST", &format!("/v1/mappings/{name}/drain"), Some(body))
    }

    /// Removes a mapping at once.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown name.
    pub(crate) fn remove_mapping(&self, name: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("DELETE", &format!("/v1/mappings/{name}"), None).map(|_| ())
    }

    /// Stops new connections to an edge.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn drain_edge(&self, id: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("POST", &format!("/v1/edges/{id}/drain"), None).map(|_| ())
    }

    /// Lets new connections go to a drained edge again.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn undrain_edge(&self, id: &str) -> Result<(), ClientError> {
        self.call::<serde_json::Value>("POST", &format!("/v1/edges/{id}/undrain"), None).map(|_| ())
    }

    /// Applies (or with `dry_run`, plans) a batch. A batch the API refused
    /// still returns its per-change outcomes.
    ///
    /// # Errors
    /// A [`ClientError`] when no outcomes came back.
    pub(crate) fn batch(&self, request: &BatchRequest) -> Result<BatchResponse, ClientError> {
        let body = serde_json::to_string(request).map_err(|e| self.bad(e))?;
        let (status, text) = self.send("POST", "/v1/batch", Some(body))?;
        serde_json::from_str::<BatchResponse>(&text).map_err(|_| Self::api_error(status, text))
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_masks_the_token() {
        let token = "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd";
        let client = ControlClient::new("http://127.0.0.1:7070/", Some(token.into()));
        let shown = format!("{client:?}");
        assert!(!shown.contains(token), "token in clear: {shown}");
        assert!(shown.contains("http://127.0.0.1:7070") && shown.contains("****"), "{shown}");
    }
}
