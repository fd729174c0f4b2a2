//! A small etcd v3 client over gRPC: the calls a node needs (range, txn,
//! watch, leases), each bounded in time, failing over between endpoints.
//!
//! The generated API comes from `etcdv3client::pb` (its code is shipped in
//! the crate, so building needs no `protoc`); channels, TLS, credentials,
//! time limits and failover are ours.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use config::ClusterConfig;
use etcdv3client::pb;
use futures_util::StreamExt;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tonic::{Code, Request, Status};

/// Time limit of one call (connect included).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);
/// Metadata key that makes a member end a watch when it loses its leader
/// (what clientv3's `WithRequireLeader` sends): a member cut off from the
/// quorum must not leave us watching a stream that can say nothing.
const REQUIRE_LEADER: &str = "hasleader";

/// Why an etcd call failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("etcd at {endpoint}: {reason}")]
pub(crate) struct EtcdError {
    endpoint: String,
    reason: String,
    /// The call timed out after reaching a member: a write may still be
    /// committed (etcd does not say), e.g. once a lost quorum returns.
    pub(crate) outcome_unknown: bool,
    /// etcd answered and refused the request itself (too many operations,
    /// no permission): the store is reachable, the request is at fault.
    pub(crate) refused: bool,
}

/// A connection to an etcd cluster.
#[derive(Debug)]
pub(crate) struct Etcd {
    channels: Vec<(String, Channel)>,
    /// The endpoint in use; moves on when a call cannot reach it.
    current: AtomicUsize,
    credentials: Option<(String, String)>,
    token: Mutex<Option<AsciiMetadataValue>>,
}

/// One key and value, with the revision that last changed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
    pub(crate) mod_revision: i64,
}

/// An event of a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Event {
    Put(Kv),
    Delete { key: String, revision: i64 },
}

/// What a watch delivers.
#[derive(Debug)]
pub(crate) enum WatchItem {
    /// Events, all of revisions up to `revision`, in order.
    Events { revision: i64, events: Vec<Event> },
    /// The revision to watch from was compacted: read everything again.
    Compacted { compact_revision: i64 },
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

fn kv_of(kv: pb::KeyValue) -> Kv {
    Kv {
        key: String::from_utf8_lossy(&kv.key).into_owned(),
        value: kv.value,
        mod_revision: kv.mod_revision,
    }
}

impl Etcd {
    /// Prepares channels to every endpoint; nothing is dialled yet.
    ///
    /// # Errors
    /// When an endpoint URL or the TLS files are unusable.
    pub(crate) fn new(config: &ClusterConfig) -> Result<Self, String> {
        let tls = tls_config(config)?;
        let mut channels = Vec::new();
        for url in &config.etcd_endpoints {
            let mut endpoint = Endpoint::from_shared(url.clone())
                .map_err(|e| format!("etcd endpoint {url}: {e}"))?
                .connect_timeout(CALL_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(5))
                .keep_alive_while_idle(true);
            if let Some(tls) = &tls {
                endpoint = endpoint
                    .tls_config(tls.clone())
                    .map_err(|e| format!("etcd endpoint {url}: TLS: {e}"))?;
            }
            channels.push((url.clone(), endpoint.connect_lazy()));
        }
        let credentials = config
            .etcd_user
            .as_ref()
            .map(|(u, p)| (u.clone(), String::from_utf8_lossy(p.expose()).into_owned()));
        Ok(Self { channels, current: AtomicUsize::new(0), credentials, token: Mutex::new(None) })
    }

    /// Moves on to the next member: the current one did not answer in
    /// time for a caller with a tighter limit than ours.
    pub(crate) fn next_member(&self) {
        let next = (self.current.load(Ordering::Relaxed) + 1) % self.channels.len().max(1);
        self.current.store(next, Ordering::Relaxed);
    }

    /// The endpoints, for messages.
    pub(crate) fn endpoints(&self) -> Vec<String> {
        self.channels.iter().map(|(u, _)| u.clone()).collect()
    }

    fn channel(&self, index: usize) -> &(String, Channel) {
        &self.channels[index % self.channels.len()]
    }

    fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(CALL_TIMEOUT);
        if let Some(token) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("token", token);
        }
        request
    }

    async fn authenticate(&self, channel: Channel) -> Result<(), Status> {
        let Some((name, password)) = &self.credentials else { return Ok(()) };
        let mut auth = pb::auth_client::AuthClient::new(channel);
        let mut request = Request::new(pb::AuthenticateRequest {
            name: name.clone(),
            password: password.clone(),
        });
        request.set_timeout(CALL_TIMEOUT);
        let token = auth.authenticate(request).await?.into_inner().token;
        let token = AsciiMetadataValue::try_from(token)
            .map_err(|_| Status::internal("etcd sent an auth token that is not ASCII"))?;
        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token);
        Ok(())
    }

    /// Runs `call` on the current endpoint; on an error that another
    /// member may not have (unreachable, no leader, a stale token) it
    /// tries the next endpoints once each. A call that is not `idempotent`
    /// (a guarded write) is not sent again after it timed out: the first
    /// may still commit, and the second would then fail its guard and
    /// misreport the change.
    async fn call<T, F, Fut>(&self, what: &str, idempotent: bool, call: F) -> Result<T, EtcdError>
    where
        F: Fn(Channel) -> Fut,
        Fut: Future<Output = Result<T, Status>>,
    {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = None;
        let mut timed_out = false;
        for attempt in 0..self.channels.len().max(1) {
            let index = start + attempt;
            let (url, channel) = self.channel(index);
            let needs_token = self.credentials.is_some()
                && self.token.lock().unwrap_or_else(|p| p.into_inner()).is_none();
            if needs_token && let Err(status) = self.authenticate(channel.clone()).await {
                last = Some((url.clone(), status));
                continue;
            }
            match call(channel.clone()).await {
                Ok(v) => {
                    self.current.store(index % self.channels.len(), Ordering::Relaxed);
                    return Ok(v);
                }
                Err(status) if retry_elsewhere(&status) => {
                    let this_timed_out = error(url, what, &status).outcome_unknown;
                    timed_out |= this_timed_out;
                    if this_timed_out && !idempotent {
                        self.current.store((index + 1) % self.channels.len(), Ordering::Relaxed);
                        return Err(error(url, what, &status));
                    }
                    if status.code() == Code::Unauthenticated {
                        *self.token.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    }
                    last = Some((url.clone(), status));
                }
                Err(status) => {
                    let mut e = error(url, what, &status);
                    e.outcome_unknown |= timed_out;
                    return Err(e);
                }
            }
        }
        let (url, status) = last.unwrap_or_else(|| (String::new(), Status::unavailable("none")));
        self.current.store((start + 1) % self.channels.len().max(1), Ordering::Relaxed);
        let mut e = error(&url, what, &status);
        e.outcome_unknown |= timed_out;
        Err(e)
    }

    /// Every key under `prefix`, and the store's revision they are of.
    pub(crate) async fn range_prefix(&self, prefix: &str) -> Result<(i64, Vec<Kv>), EtcdError> {
        let response = self
            .call("read", true, |channel| async move {
                let mut kv = pb::kv_client::KvClient::new(channel);
                let request = self.request(pb::RangeRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix),
                    ..Default::default()
                });
                kv.range(request).await.map(tonic::Response::into_inner)
            })
            .await?;
        let revision = response.header.map_or(0, |h| h.revision);
        Ok((revision, response.kvs.into_iter().map(kv_of).collect()))
    }

    /// Runs a transaction; returns whether its compares held, and the
    /// revision it ran at.
    pub(crate) async fn txn(&self, txn: pb::TxnRequest) -> Result<(bool, i64), EtcdError> {
        let response = self
            .call("write", false, |channel| {
                let txn = txn.clone();
                async move {
                    let mut kv = pb::kv_client::KvClient::new(channel);
                    kv.txn(self.request(txn)).await.map(tonic::Response::into_inner)
                }
            })
            .await?;
        Ok((response.succeeded, response.header.map_or(0, |h| h.revision)))
    }

    /// Grants a lease of `ttl`; returns its id.
    pub(crate) async fn lease_grant(&self, ttl: Duration) -> Result<i64, EtcdError> {
        let ttl = i64::try_from(ttl.as_secs()).unwrap_or(60);
        let response = self
            .call("lease grant", true, |channel| async move {
                let mut lease = pb::lease_client::LeaseClient::new(channel);
                let request = self.request(pb::LeaseGrantRequest { ttl, id: 0 });
                lease.lease_grant(request).await.map(tonic::Response::into_inner)
            })
            .await?;
        Ok(response.id)
    }

    /// Renews lease `id` once; `Ok(false)` when the lease is gone (it
    /// expired: the node's record went with it).
    pub(crate) async fn lease_keep_alive(&self, id: i64) -> Result<bool, EtcdError> {
        let ttl = self
            .call("lease keep-alive", true, |channel| async move {
                let mut lease = pb::lease_client::LeaseClient::new(channel);
                let once = futures_util::stream::iter([pb::LeaseKeepAliveRequest { id }]);
                let mut responses = lease.lease_keep_alive(self.request(once)).await?.into_inner();
                match responses.message().await? {
                    Some(r) => Ok(r.ttl),
                    None => Err(Status::unavailable("keep-alive stream ended without an answer")),
                }
            })
            .await?;
        Ok(ttl > 0)
    }

    /// Watches every key under `prefix` from revision `from`. The stream
    /// ends (or yields an error) when the watch is lost: the caller reads
    /// everything again.
    pub(crate) async fn watch_prefix(
        &self,
        prefix: &str,
        from: i64,
    ) -> Result<impl futures_util::Stream<Item = Result<WatchItem, EtcdError>> + use<>, EtcdError>
    {
        let (url, channel) = self.channel(self.current.load(Ordering::Relaxed)).clone();
        let create = pb::WatchRequest {
            request_union: Some(pb::watch_request::RequestUnion::CreateRequest(
                pb::WatchCreateRequest {
                    key: prefix.as_bytes().to_vec(),
                    range_end: prefix_end(prefix),
                    start_revision: from,
                    ..Default::default()
                },
            )),
        };
        // The request stream stays open: closing it would end the watch.
        let requests = futures_util::stream::iter([create]).chain(futures_util::stream::pending());
        let mut request = Request::new(requests);
        if let Some(token) = self.token.lock().unwrap_or_else(|p| p.into_inner()).clone() {
            request.metadata_mut().insert("token", token);
        }
        request.metadata_mut().insert(REQUIRE_LEADER, AsciiMetadataValue::from_static("true"));
        let mut watch = pb::watch_client::WatchClient::new(channel);
        let opened = tokio::time::timeout(CALL_TIMEOUT, watch.watch(request)).await;
        let responses = match opened {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => {
                self.current.fetch_add(1, Ordering::Relaxed);
                return Err(error(&url, "watch", &status));
            }
            Err(_) => {
                self.current.fetch_add(1, Ordering::Relaxed);
                return Err(error(&url, "watch", &Status::deadline_exceeded("timed out")));
            }
        };
        let url = Arc::new(url);
        Ok(responses.map(move |item| {
            let response = item.map_err(|status| error(&url, "watch", &status))?;
            watch_item(response).map_err(|reason| EtcdError {
                endpoint: url.to_string(),
                reason,
                outcome_unknown: false,
                refused: false,
            })
        }))
    }
}

/// Turns one watch response into what the reconciler needs.
fn watch_item(response: pb::WatchResponse) -> Result<WatchItem, String> {
    if response.compact_revision > 0 {
        return Ok(WatchItem::Compacted { compact_revision: response.compact_revision });
    }
    if response.canceled {
        return Err(format!("watch cancelled: {}", response.cancel_reason));
    }
    // The events' own revisions, not the header's: the header of the
    // `created` answer and of catch-up batches is the store's current
    // revision, ahead of events still to come; resuming from it would skip
    // them.
    let revision = response
        .events
        .iter()
        .filter_map(|e| e.kv.as_ref())
        .map(|kv| kv.mod_revision)
        .max()
        .unwrap_or(0);
    let events = response
        .events
        .into_iter()
        .filter_map(|e| {
            let kv = e.kv?;
            if e.r#type == pb::event::EventType::Delete as i32 {
                Some(Event::Delete {
                    key: String::from_utf8_lossy(&kv.key).into_owned(),
                    revision: kv.mod_revision,
                })
            } else {
                Some(Event::Put(kv_of(kv)))
            }
        })
        .collect();
    Ok(WatchItem::Events { revision, events })
}

/// Errors another member may not have: this one is unreachable, has no
/// leader, is overloaded, or our token expired.
fn retry_elsewhere(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable | Code::DeadlineExceeded | Code::Unknown | Code::Unauthenticated
    )
}

fn error(url: &str, what: &str, status: &Status) -> EtcdError {
    let reason = match status.code() {
        Code::DeadlineExceeded | Code::Cancelled => {
            format!("{what} got no answer within {CALL_TIMEOUT:?} (no quorum, or unreachable)")
        }
        Code::Unavailable => format!("{what}: unreachable: {}", status.message()),
        _ => format!("{what}: {}: {}", status.code(), status.message()),
    };
    let outcome_unknown = matches!(status.code(), Code::DeadlineExceeded | Code::Cancelled)
        || status.message().contains("timed out");
    let refused = matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::OutOfRange
    );
    EtcdError { endpoint: url.to_owned(), reason, outcome_unknown, refused }
}

fn tls_config(config: &ClusterConfig) -> Result<Option<ClientTlsConfig>, String> {
    let https = config.etcd_endpoints.iter().any(|e| e.starts_with("https://"));
    if !https {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = &config.etcd_ca_file {
        let pem =
            std::fs::read(ca).map_err(|e| format!("cluster.etcd_ca_file {}: {e}", ca.display()))?;
        tls = tls.ca_certificate(Certificate::from_pem(pem));
    }
    if let Some((cert, key)) = &config.etcd_client_cert {
        let cert_pem = std::fs::read(cert)
            .map_err(|e| format!("cluster.etcd_cert_file {}: {e}", cert.display()))?;
        let key_pem = std::fs::read(key)
            .map_err(|e| format!("cluster.etcd_key_file {}: {e}", key.display()))?;
        tls = tls.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end("/a/"), b"/a0".to_vec());
        assert_eq!(prefix_end("a\u{7f}"), b"a\x80".to_vec());
    }
}
