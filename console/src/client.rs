//! A blocking client of the cloud agent's control API
//! (`docs/control-api.md`).
//!
//! Blocking keeps it simple: subcommands make one call and exit, and the
//! TUI polls from its own thread.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use api::{
    AddEdgeRequest, ApiError, BatchRequest, BatchResponse, EdgeCredential, EdgeView, EnrollRequest,
    EnrolmentTicket, MappingSpec, MappingView, NodeApply, NodeView, RotateTokenRequest, Snapshot,
};
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
    /// A cluster call to an agent that runs alone.
    #[error("the cloud agent at {endpoint} runs alone: no [cluster] section in its config")]
    NotACluster { endpoint: String },
    /// The answer was not what this relayctl understands.
    #[error("unexpected answer from {endpoint}: {reason}")]
    BadAnswer { endpoint: String, reason: String },
}

/// The error for endpoints none of which answered: the one, or each
/// with its reason, on one line.
fn unreachable(failures: Vec<(String, String)>) -> ClientError {
    match <[_; 1]>::try_from(failures) {
        Ok([(endpoint, reason)]) => ClientError::Unreachable { endpoint, reason },
        Err(failures) => ClientError::Unreachable {
            endpoint: format!(
                "any of {}",
                failures.iter().map(|(e, _)| e.as_str()).collect::<Vec<_>>().join(", ")
            ),
            reason: failures
                .iter()
                .map(|(e, r)| format!("{e}: {r}"))
                .collect::<Vec<_>>()
                .join("; "),
        },
    }
}

impl ClientError {
    /// Process exit code for scripts: 2 unreachable, 3 unauthorized,
    /// 4 refused by the API, 5 anything else.
    pub(crate) fn exit_code(&self) -> u8 {
        match self {
            ClientError::Unreachable { .. } => 2,
            ClientError::Unauthorized { .. } => 3,
            ClientError::Api { .. } | ClientError::NotACluster { .. } => 4,
            ClientError::BadAnswer { .. } => 5,
        }
    }
}

/// What the answer to a change says of a cluster: the store revision it
/// was committed at and what each node did within the agent's wait. Empty
/// when the agent runs alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Applied {
    pub(crate) revision: Option<i64>,
    pub(crate) nodes: Vec<NodeApply>,
}

impl Applied {
    /// Read leniently from an answer's body: a mapping's own `nodes` (where
    /// it stands on each node) are not [`NodeApply`]s and are left out.
    fn from_body(body: &serde_json::Value) -> Applied {
        let revision = body.get("revision").and_then(serde_json::Value::as_i64);
        let nodes = body
            .get("nodes")
            .and_then(|n| serde_json::from_value::<Vec<NodeApply>>(n.clone()).ok())
            .unwrap_or_default();
        Applied { revision, nodes }
    }
}

/// The answer to a change: what it returned, what it says of the nodes,
/// and its body as sent (for `-o json`; `None` when empty).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Changed<T> {
    pub(crate) value: T,
    pub(crate) applied: Applied,
    pub(crate) body: Option<serde_json::Value>,
}

impl<T> Changed<T> {
    fn unit(self) -> Changed<()> {
        Changed { value: (), applied: self.applied, body: self.body }
    }
}

/// A client of the control API of one cloud agent, or of the first of
/// several (the nodes of a cluster) that answers. Its `Debug` masks the
/// token.
///
/// Every call tries the endpoint that answered last, then the others in
/// the order given. It moves on when nothing answered: a refused or
/// timed-out connect (at most [`CONNECT_TIMEOUT`]), an unknown host; and,
/// for a `GET` only (it changes nothing, so sending it twice is harmless),
/// any failure before an answer arrived. An HTTP error status is an
/// answer, and so is returned as it is.
#[derive(Debug, Clone)]
pub(crate) struct ControlClient {
    endpoints: Arc<[String]>,
    /// Index in `endpoints` of the one that answered last.
    answered: Arc<AtomicUsize>,
    token: Option<AdminToken>,
    agent: ureq::Agent,
    /// Say on stderr which endpoint answered, and why others did not.
    verbose: bool,
}

/// How long a connect to one endpoint may take before the next is tried.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether a transport error means nothing answered at the endpoint, so
/// that no request reached it (a change can then be sent to the next).
fn nothing_reached(error: &ureq::Error) -> bool {
    use std::io::ErrorKind;
    match error {
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        ureq::Error::Timeout(t) => {
            matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        }
        ureq::Error::Io(e) => matches!(
            e.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::HostUnreachable
                | ErrorKind::NetworkUnreachable
                | ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

impl ControlClient {
    /// A client for `endpoints` (e.g. `http://127.0.0.1:7070`), tried in
    /// this order, with the admin token, if any.
    pub(crate) fn new(endpoints: &[String], token: Option<AdminToken>) -> Self {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(REQUEST_TIMEOUT))
            .timeout_connect(Some(CONNECT_TIMEOUT))
            .build()
            .new_agent();
        let mut endpoints: Vec<String> =
            endpoints.iter().map(|e| e.trim_end_matches('/').to_owned()).collect();
        if endpoints.is_empty() {
            endpoints.push(crate::settings::DEFAULT_ENDPOINT.to_owned());
        }
        Self {
            endpoints: endpoints.into(),
            answered: Arc::new(AtomicUsize::new(0)),
            token,
            agent,
            verbose: false,
        }
    }

    /// The same client, saying on stderr which endpoint answered.
    pub(crate) fn verbose(mut self, verbose: bool) -> Self {
        self.verbose = verbose;
        self
    }

    /// Every endpoint, in the order given.
    pub(crate) fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The admin token's text, if there is one.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_ref().map(AdminToken::expose)
    }

    /// The event log after `since`, at most `limit` events.
    ///
    /// # Errors
    /// A [`ClientError`] when the call fails.
    pub(crate) fn events(&self, since: u64, limit: usize) -> Result<api::EventsPage, ClientError> {
        self.expect("GET", &format!("/v1/events?since={since}&limit={limit}"), None)
    }

    /// The endpoint that answered last (before any call: the first).
    pub(crate) fn endpoint(&self) -> String {
        let i = self.answered.load(Ordering::Relaxed);
        self.endpoints.get(i).cloned().unwrap_or_default()
    }

    fn bad(&self, reason: impl ToString) -> ClientError {
        ClientError::BadAnswer { endpoint: self.endpoint(), reason: reason.to_string() }
    }

    /// Sends one request to the first endpoint that answers; returns the
    /// status and the body text.
    fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String), ClientError> {
        let last = self.answered.load(Ordering::Relaxed).min(self.endpoints.len() - 1);
        let order = std::iter::once(last).chain((0..self.endpoints.len()).filter(|i| *i != last));
        let mut failures: Vec<(String, String)> = Vec::new();
        for i in order {
            let endpoint = &self.endpoints[i];
            match self.send_to(endpoint, method, path, body.clone()) {
                Ok(mut response) => {
                    if self.verbose {
                        eprintln!("relayctl: {method} {path}: {endpoint} answered");
                    }
                    self.answered.store(i, Ordering::Relaxed);
                    let status = response.status().as_u16();
                    let text = response.body_mut().read_to_string().map_err(|e| self.bad(e))?;
                    if status == 401 {
                        return Err(ClientError::Unauthorized { endpoint: endpoint.clone() });
                    }
                    return Ok((status, text));
                }
                Err(e) => {
                    let next = method == "GET" || nothing_reached(&e);
                    if self.verbose {
                        eprintln!("relayctl: {method} {path}: {endpoint} did not answer: {e}");
                    }
                    failures.push((endpoint.clone(), e.to_string()));
                    if !next {
                        break;
                    }
                }
            }
        }
        Err(unreachable(failures))
    }

    fn send_to(
        &self,
        endpoint: &str,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<ureq::http::Response<ureq::Body>, ureq::Error> {
        let url = format!("{endpoint}{path}");
        let mut request = ureq::http::Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            request = request.header("authorization", format!("Bearer {}", token.expose()));
        }
        match body {
            Some(json) => {
                let request = request.header("content-type", "application/json").body(json)?;
                self.agent.run(request)
            }
            None => self.agent.run(request.body(())?),
        }
    }

    /// A 404 `not_a_cluster`, or a 404 without an API error body (an
    /// agent from before clusters has no such route), as
    /// [`ClientError::NotACluster`].
    fn not_a_cluster(&self, error: ClientError) -> ClientError {
        match error {
            ClientError::Api { status: 404, code, .. }
                if code == "not_a_cluster" || code == "http" =>
            {
                ClientError::NotACluster { endpoint: self.endpoint() }
            }
            other => other,
        }
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
            endpoint: self.endpoint(),
            reason: format!("empty answer to {method} {path}"),
        })
    }

    /// Everything a console draws, with every mapping's and edge's figures
    /// summed over the nodes of a cluster (`scope=cluster`; an agent that
    /// runs alone answers with its own), and the series of the mapping
    /// named `series` only (none without a name): a thousand sites' series
    /// are megabytes a second nobody draws.
    ///
    /// # Errors
    /// A [`ClientError`] when the call fails.
    pub(crate) fn cluster_snapshot(&self, series: Option<&str>) -> Result<Snapshot, ClientError> {
        // Mapping names are `A-Z a-z 0-9 . _ -`: nothing to encode.
        let series = series.filter(|s| !s.is_empty()).unwrap_or("none");
        self.expect("GET", &format!("/v1/snapshot?scope=cluster&series={series}"), None)
    }

    /// The nodes of the cluster.
    ///
    /// # Errors
    /// [`ClientError::NotACluster`] when the agent runs alone; another
    /// [`ClientError`] when the call fails.
    pub(crate) fn nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.expect("GET", "/v1/nodes", None).map_err(|e| self.not_a_cluster(e))
    }

    /// Drains a node: it reports not-ready, and its open connections may
    /// finish within `deadline_secs` (the agent's default without).
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown node.
    pub(crate) fn drain_node(
        &self,
        id: &str,
        deadline_secs: Option<u64>,
    ) -> Result<Option<NodeView>, ClientError> {
        let body = serde_json::json!({ "deadline_secs": deadline_secs }).to_string();
        self.call("POST", &format!("/v1/nodes/{id}/drain"), Some(body))
            .map_err(|e| self.not_a_cluster(e))
    }

    /// Makes a drained node ready again.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown node.
    pub(crate) fn undrain_node(&self, id: &str) -> Result<Option<NodeView>, ClientError> {
        self.call("POST", &format!("/v1/nodes/{id}/undrain"), None)
            .map_err(|e| self.not_a_cluster(e))
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

    /// Makes a change; returns the answer's body, if any, with what it
    /// says of the nodes.
    fn change(
        &self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<Changed<Option<serde_json::Value>>, ClientError> {
        let body: Option<serde_json::Value> = self.call(method, path, body)?;
        let applied = body.as_ref().map(Applied::from_body).unwrap_or_default();
        Ok(Changed { value: body.clone(), applied, body })
    }

    /// Adds a mapping; it is listening when this returns.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] names the problem.
    pub(crate) fn add_mapping(
        &self,
        spec: &MappingSpec,
    ) -> Result<Changed<MappingView>, ClientError> {
        let body = serde_json::to_string(spec).map_err(|e| self.bad(e))?;
        let changed = self.change("POST", "/v1/mappings", Some(body))?;
        let Some(body) = changed.value else {
            return Err(self.bad("empty answer to POST /v1/mappings"));
        };
        let view = serde_json::from_value(body).map_err(|e| self.bad(e))?;
        Ok(Changed { value: view, applied: changed.applied, body: changed.body })
    }

    /// Starts draining a mapping.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown name.
    /// Replaces a mapping's traffic policy.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown
    /// mapping, 409 for one from cloud.toml or draining.
    pub(crate) fn set_policy(
        &self,
        name: &str,
        policy: &api::PolicySpec,
    ) -> Result<Changed<Option<MappingView>>, ClientError> {
        let body = serde_json::to_string(policy).map_err(|e| self.bad(e))?;
        let changed = self.change("PUT", &format!("/v1/mappings/{name}/policy"), Some(body))?;
        let view = match changed.value {
            Some(body) => Some(serde_json::from_value(body).map_err(|e| self.bad(e))?),
            None => None,
        };
        Ok(Changed { value: view, applied: changed.applied, body: changed.body })
    }

    pub(crate) fn drain_mapping(
        &self,
        name: &str,
        deadline_secs: Option<u64>,
    ) -> Result<Changed<Option<MappingView>>, ClientError> {
        let body = serde_json::json!({ "deadline_secs": deadline_secs }).to_string();
        let changed = self.change("POST", &format!("/v1/mappings/{name}/drain"), Some(body))?;
        let view = match changed.value {
            Some(body) => Some(serde_json::from_value(body).map_err(|e| self.bad(e))?),
            None => None,
        };
        Ok(Changed { value: view, applied: changed.applied, body: changed.body })
    }

    /// Removes a mapping at once.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown name.
    pub(crate) fn remove_mapping(&self, name: &str) -> Result<Changed<()>, ClientError> {
        self.change("DELETE", &format!("/v1/mappings/{name}"), None).map(Changed::unit)
    }

    /// Stops new connections to an edge.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn drain_edge(&self, id: &str) -> Result<Changed<()>, ClientError> {
        self.change("POST", &format!("/v1/edges/{id}/drain"), None).map(Changed::unit)
    }

    /// Lets new connections go to a drained edge again.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn undrain_edge(&self, id: &str) -> Result<Changed<()>, ClientError> {
        self.change("POST", &format!("/v1/edges/{id}/undrain"), None).map(Changed::unit)
    }

    /// Adds an edge; the answer holds its new token.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 409 for an id in use.
    pub(crate) fn add_edge(
        &self,
        request: &AddEdgeRequest,
    ) -> Result<Changed<EdgeCredential>, ClientError> {
        let body = serde_json::to_string(request).map_err(|e| self.bad(e))?;
        self.credential(self.change("POST", "/v1/edges", Some(body))?)
    }

    /// Gives an edge a new token, keeping the old one for `grace_secs`.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn rotate_token(
        &self,
        id: &str,
        grace_secs: Option<u64>,
    ) -> Result<Changed<EdgeCredential>, ClientError> {
        let body =
            serde_json::to_string(&RotateTokenRequest { grace_secs }).map_err(|e| self.bad(e))?;
        self.credential(self.change("POST", &format!("/v1/edges/{id}/rotate-token"), Some(body))?)
    }

    /// Makes a one-time enrolment code for edge `id`.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 409 when the group
    /// does not match an existing edge's.
    pub(crate) fn enroll(
        &self,
        id: &str,
        request: &EnrollRequest,
    ) -> Result<Changed<EnrolmentTicket>, ClientError> {
        let body = serde_json::to_string(request).map_err(|e| self.bad(e))?;
        let changed = self.change("POST", &format!("/v1/edges/{id}/enroll"), Some(body))?;
        let Some(body) = changed.value else {
            return Err(self.bad("an empty answer where the enrolment code should be"));
        };
        let ticket = serde_json::from_value(body).map_err(|e| self.bad(e))?;
        Ok(Changed { value: ticket, applied: changed.applied, body: changed.body })
    }

    fn credential(
        &self,
        changed: Changed<Option<serde_json::Value>>,
    ) -> Result<Changed<EdgeCredential>, ClientError> {
        let Some(body) = changed.value else {
            return Err(self.bad("an empty answer where the edge's new token should be"));
        };
        let credential = serde_json::from_value(body).map_err(|e| self.bad(e))?;
        Ok(Changed { value: credential, applied: changed.applied, body: changed.body })
    }

    /// Removes an edge added at run time.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 409 for a config-file
    /// edge or one a mapping needs.
    pub(crate) fn remove_edge(&self, id: &str) -> Result<Changed<()>, ClientError> {
        self.change("DELETE", &format!("/v1/edges/{id}"), None).map(Changed::unit)
    }

    /// Revokes an edge: its tunnels close, and it is refused from then on.
    ///
    /// # Errors
    /// A [`ClientError`]; [`ClientError::Api`] with 404 for an unknown edge.
    pub(crate) fn revoke_edge(&self, id: &str) -> Result<Changed<()>, ClientError> {
        self.change("POST", &format!("/v1/edges/{id}/revoke"), None).map(Changed::unit)
    }

    /// Applies (or with `dry_run`, plans) a batch. A batch the API refused
    /// still returns its per-change outcomes, and with them the refusal of
    /// the batch as a whole when the answer carries one (its `error`: a
    /// conflicting change committed first, the store unreachable).
    ///
    /// # Errors
    /// A [`ClientError`] when no outcomes came back.
    pub(crate) fn batch(
        &self,
        request: &BatchRequest,
    ) -> Result<(BatchResponse, Option<ClientError>), ClientError> {
        let body = serde_json::to_string(request).map_err(|e| self.bad(e))?;
        let (status, text) = self.send("POST", "/v1/batch", Some(body))?;
        let Ok(answer) = serde_json::from_str::<BatchResponse>(&text) else {
            return Err(Self::api_error(status, text));
        };
        let refusal = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| serde_json::from_value::<ApiError>(v.get("error")?.clone()).ok())
            .map(|e| ClientError::Api { status, code: e.code, error: e.error });
        Ok((answer, refusal))
    }
}

#[cfg(test)]
mod debug_tests {
    use super::*;

    #[test]
    fn debug_masks_the_token() {
        let token = "q3Zt8VwKx1pL0eYb7NsR4uHc9JmA2fGd";
        let client = ControlClient::new(&["http://127.0.0.1:7070/".into()], Some(token.into()));
        let shown = format!("{client:?}");
        assert!(!shown.contains(token), "token in clear: {shown}");
        assert!(shown.contains("http://127.0.0.1:7070") && shown.contains("****"), "{shown}");
    }
}

#[cfg(test)]
mod endpoint_tests {
    //! Several endpoints against real loopback listeners: a closed port, a
    //! listener that hangs up without answering, and a small HTTP server.

    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;
    use std::thread;

    use super::*;

    /// An endpoint that refuses connections: a socket bound but never
    /// listening keeps the port taken (a port merely bound and closed
    /// could be handed to another test's server meanwhile), and a connect
    /// to it is refused. Keep the socket while the endpoint is used.
    fn closed_port() -> (String, socket2::Socket) {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
        socket.bind(&any.into()).expect("bind");
        let addr = socket.local_addr().expect("addr").as_socket().expect("inet");
        (format!("http://{addr}"), socket)
    }

    /// Reads one request; returns its request line.
    fn read_request(stream: &mut TcpStream) -> String {
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut first = String::new();
        reader.read_line(&mut first).expect("request line");
        let mut length = 0;
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line.trim().is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body).expect("body");
        first.trim().to_owned()
    }

    /// A server answering every request with `status` and `body`; sends
    /// each request line it gets on the channel.
    fn server(status: u16, body: &'static str) -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                // Told before answering, so the test sees it once answered.
                if tx.send(read_request(&mut stream)).is_err() {
                    return;
                }
                let _ = write!(
                    stream,
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                // A lingering close: whatever of the request was not read
                // (a chunked body's last chunk) would otherwise make the
                // close a reset, which can overtake the answer.
                let _ = stream.shutdown(std::net::Shutdown::Write);
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(2)));
                let _ = std::io::copy(&mut stream, &mut std::io::sink());
            }
        });
        (format!("http://{addr}"), rx)
    }

    /// A listener that reads each request and hangs up without answering.
    fn hangs_up() -> (String, mpsc::Receiver<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, rx) = mpsc::channel();
        thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { return };
                if tx.send(read_request(&mut stream)).is_err() {
                    return;
                }
                drop(stream);
            }
        });
        (format!("http://{addr}"), rx)
    }

    const EDGES: &str = r#"[]"#;

    #[test]
    fn a_closed_port_is_skipped_and_the_next_endpoint_answers() {
        let (closed, _held) = closed_port();
        let (live, requests) = server(200, EDGES);
        let client = ControlClient::new(&[closed.clone(), live.clone()], None);
        assert_eq!(client.edges(), Ok(Vec::new()));
        assert_eq!(requests.try_recv().as_deref(), Ok("GET /v1/edges HTTP/1.1"));
        assert_eq!(client.endpoint(), live, "the one that answered");
        // A change is sent to the closed port's successor too: nothing was
        // reached before it.
        let drained = client.drain_edge("e1");
        assert!(drained.is_ok(), "{drained:?}");
        assert_eq!(requests.try_recv().as_deref(), Ok("POST /v1/edges/e1/drain HTTP/1.1"));
    }

    #[test]
    fn an_http_error_is_an_answer() {
        let (failing, first) = server(503, r#"{"code":"store_unavailable","error":"etcd down"}"#);
        let (live, second) = server(200, EDGES);
        let client = ControlClient::new(&[failing, live], None);
        let err = client.edges().expect_err("the 503 is the answer");
        assert_eq!(
            err,
            ClientError::Api {
                status: 503,
                code: "store_unavailable".into(),
                error: "etcd down".into()
            }
        );
        assert!(first.try_recv().is_ok());
        assert!(second.try_recv().is_err(), "the second endpoint was not asked");
    }

    #[test]
    fn a_hang_up_moves_a_read_on_but_not_a_change() {
        let (rude, rude_requests) = hangs_up();
        let (live, requests) = server(200, EDGES);
        let client = ControlClient::new(&[rude.clone(), live], None);
        assert_eq!(client.edges(), Ok(Vec::new()), "a GET goes on to the next");
        assert!(rude_requests.try_recv().is_ok() && requests.try_recv().is_ok());
        // Start again at the rude one: a change it may have applied is not
        // sent again elsewhere.
        let (closed, _held) = closed_port();
        let client = ControlClient::new(&[rude.clone(), closed], None);
        let err = client.drain_edge("e1").expect_err("not answered");
        assert!(
            matches!(&err, ClientError::Unreachable { endpoint, .. } if *endpoint == rude),
            "{err}"
        );
    }

    #[test]
    fn a_change_reports_the_revision_and_what_each_node_did() {
        let (live, _requests) = server(
            202,
            r#"{"edge":"e1","revision":42,"nodes":[{"node":"a","applied":true},{"node":"c","applied":false}]}"#,
        );
        let client = ControlClient::new(&[live], None);
        let c = client.drain_edge("e1").expect("drained");
        assert_eq!(c.applied.revision, Some(42));
        let nodes: Vec<(&str, bool)> =
            c.applied.nodes.iter().map(|n| (n.node.as_str(), n.applied)).collect();
        assert_eq!(nodes, [("a", true), ("c", false)]);
        assert_eq!(c.body.as_ref().and_then(|b| b.get("edge")), Some(&"e1".into()));

        // A mapping's own `nodes` say where it stands, not what a change did.
        let view = serde_json::json!({"name": "web", "revision": 7,
            "nodes": [{"node": "a", "state": "active"}]});
        assert_eq!(Applied::from_body(&view), Applied { revision: Some(7), nodes: Vec::new() });
    }

    #[test]
    fn a_refused_batch_carries_the_reason_for_the_whole() {
        let (live, _requests) = server(
            409,
            r#"{"applied":false,"dry_run":false,"outcomes":[],"error":{"code":"conflict","error":"another change was committed first (revision 43); nothing changed"}}"#,
        );
        let client = ControlClient::new(&[live], None);
        let request = BatchRequest { changes: Vec::new(), dry_run: false };
        let (answer, refusal) = client.batch(&request).expect("an answer");
        assert!(!answer.applied);
        let refusal = refusal.expect("the reason").to_string();
        assert_eq!(
            refusal,
            "another change was committed first (revision 43); nothing changed (409 conflict)"
        );
    }

    #[test]
    fn none_answering_names_each_on_one_line() {
        let ((a, _held_a), (b, _held_b)) = (closed_port(), closed_port());
        let client = ControlClient::new(&[a.clone(), b.clone()], None);
        let err = client.edges().expect_err("nothing listens");
        let text = err.to_string();
        assert_eq!(err.exit_code(), 2);
        assert!(text.starts_with(&format!("cannot reach the cloud agent at any of {a}, {b}: ")));
        assert!(text.contains(&format!("{a}: ")) && text.contains(&format!("; {b}: ")), "{text}");
        assert_eq!(text.lines().count(), 1);
    }
}
