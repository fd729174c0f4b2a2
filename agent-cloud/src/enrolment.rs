//! Enrolment: making one-time codes (`POST /v1/edges/{id}/enroll`) and
//! redeeming them on the tunnel listener (`Enroll` instead of `Auth`, see
//! docs/protocol.md, "Enrolment").
//!
//! A redemption is a change like any other ([`api::Change::Redeem`]): it
//! goes through the same planner and the same guarded commit (the state
//! file under the batch lock, or one etcd transaction in a cluster), so a
//! code is used up exactly once even when two machines race for it on two
//! nodes. Failed attempts are rate-limited per source address and in
//! total, before the secret is even looked up.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use api::{Change, EnrolmentTicket};
use proto::{ENROL_SECRET_LEN, RefuseCode};
use tracing::{info, warn};
use tunnel::untrusted::escaped;

use crate::edge_changes::{Unredeemable, redeemable};
use crate::errors::ErrorKind;
use crate::events::EventLog;
use crate::mappings::Mappings;

/// Failed attempts one source may make in a burst, and how fast it gets
/// one back: 5 at once, then one per 12 s.
const PER_SOURCE: Bucket = Bucket { capacity: 5.0, per_sec: 1.0 / 12.0 };
/// Failed attempts from everywhere together: 60 at once, one per second.
const OVERALL: Bucket = Bucket { capacity: 60.0, per_sec: 1.0 };
/// Sources tracked at most; beyond, the fullest bucket is forgotten.
const MAX_SOURCES: usize = 4_096;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    capacity: f64,
    per_sec: f64,
}

#[derive(Debug, Clone, Copy)]
struct Level {
    tokens: f64,
    at: Instant,
}

impl Level {
    fn refilled(self, bucket: Bucket, now: Instant) -> f64 {
        let secs = now.saturating_duration_since(self.at).as_secs_f64();
        (self.tokens + secs * bucket.per_sec).min(bucket.capacity)
    }
}

/// Rate limit on failed redemptions: a token bucket per source address
/// and one for all. Pure but for the `now` it is given.
#[derive(Debug)]
pub(crate) struct FailureLimit {
    sources: HashMap<IpAddr, Level>,
    overall: Level,
}

impl FailureLimit {
    pub(crate) fn new(now: Instant) -> Self {
        Self { sources: HashMap::new(), overall: Level { tokens: OVERALL.capacity, at: now } }
    }

    /// Whether `source` may try a code now.
    pub(crate) fn allows(&self, source: IpAddr, now: Instant) -> bool {
        let source_ok =
            self.sources.get(&source).is_none_or(|l| l.refilled(PER_SOURCE, now) >= 1.0);
        source_ok && self.overall.refilled(OVERALL, now) >= 1.0
    }

    /// Counts a failed attempt from `source`.
    pub(crate) fn failed(&mut self, source: IpAddr, now: Instant) {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&source) {
            // Forget the source that has been quiet longest.
            if let Some(oldest) = self.sources.iter().min_by_key(|(_, l)| l.at).map(|(ip, _)| *ip) {
                self.sources.remove(&oldest);
            }
        }
        let level =
            self.sources.entry(source).or_insert(Level { tokens: PER_SOURCE.capacity, at: now });
        *level = Level { tokens: (level.refilled(PER_SOURCE, now) - 1.0).max(0.0), at: now };
        self.overall =
            Level { tokens: (self.overall.refilled(OVERALL, now) - 1.0).max(0.0), at: now };
    }
}

/// What the cloud needs to make and redeem codes.
#[derive(Debug)]
pub(crate) struct Enrolment {
    pub(crate) mappings: Arc<Mappings>,
    pub(crate) events: EventLog,
    /// The tunnel URL to print in the enrolment command.
    pub(crate) cloud_url: String,
    limit: Mutex<FailureLimit>,
}

/// How a redemption ended, for the tunnel listener to answer.
#[derive(Debug)]
pub(crate) enum Redeemed {
    Enrolled { edge_id: String, token: String },
    Refused { code: RefuseCode, message: String },
}

impl Enrolment {
    pub(crate) fn new(mappings: Arc<Mappings>, events: EventLog, cloud_url: String) -> Self {
        let limit = Mutex::new(FailureLimit::new(Instant::now()));
        Self { mappings, events, cloud_url, limit }
    }

    fn limit(&self) -> std::sync::MutexGuard<'_, FailureLimit> {
        self.limit.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The code as planned (with this cloud's pin) and the command to run
    /// on the on-prem machine.
    pub(crate) fn ticket(
        &self,
        edge_id: &str,
        code: &str,
        expires_unix_ms: u64,
    ) -> EnrolmentTicket {
        let command =
            format!("relay-edge enroll --cloud {} --code {code} --dir /etc/relay", self.cloud_url);
        EnrolmentTicket {
            edge_id: edge_id.to_owned(),
            code: code.to_owned(),
            expires_unix_ms,
            cloud_url: self.cloud_url.clone(),
            command,
        }
    }

    /// Redeems the code whose secret an edge at `source` sent.
    pub(crate) async fn redeem(
        &self,
        source: IpAddr,
        secret: &[u8; ENROL_SECRET_LEN],
        hostname: &str,
    ) -> Redeemed {
        let source = source.to_canonical();
        if !self.limit().allows(source, Instant::now()) {
            warn!(%source, "enrolment attempt refused: too many failed attempts lately");
            return Redeemed::Refused {
                code: RefuseCode::RateLimited,
                message: "too many failed enrolment attempts from this address or in total; \
                          wait a minute and check the code"
                    .into(),
            };
        }
        let digest = proto::secret_digest(secret);
        let now_ms = crate::clock::unix_ms();
        let refused = |why: Unredeemable| {
            self.limit().failed(source, Instant::now());
            warn!(%source, hostname = %escaped(hostname), reason = why.sentence(),
                "enrolment refused");
            Redeemed::Refused { code: why.refuse_code(), message: why.sentence().into() }
        };
        if let Err(why) = redeemable(&self.mappings.edges.fleet(), &digest, now_ms) {
            return refused(why);
        }
        let changes = [Change::Redeem { secret_sha256: digest.clone(), hostname: hostname.into() }];
        let outcome = self.mappings.apply(&changes, false).await;
        let token = outcome.outcomes.first().and_then(|o| o.token.clone());
        match (outcome.applied, token) {
            (true, Some(token)) => {
                let fleet = self.mappings.edges.fleet();
                let edge_id =
                    fleet.by_enrolment(&digest).map_or_else(String::new, |r| r.id.clone());
                info!(edge = %edge_id, %source, hostname = %escaped(hostname), "edge enrolled");
                self.events.record(
                    api::EventKind::EdgeEnrolled,
                    &edge_id,
                    &format!(
                        "enrolled from {source} (host {}): the edge has its own token",
                        escaped(hostname)
                    ),
                );
                Redeemed::Enrolled { edge_id, token }
            }
            _ => match &outcome.failure {
                // Another redemption won the race, or the code expired
                // in between: say which.
                Some(e) if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Conflict) => {
                    let why = redeemable(&self.mappings.edges.fleet(), &digest, now_ms)
                        .err()
                        .unwrap_or(Unredeemable::Used);
                    refused(why)
                }
                failure => {
                    let why = failure.as_ref().map_or_else(
                        || "the change was applied, but made no token".to_owned(),
                        ToString::to_string,
                    );
                    warn!(%source, error = %why, "enrolment could not be recorded");
                    Redeemed::Refused {
                        code: RefuseCode::Unavailable,
                        message: format!("the cloud cannot record the enrolment now: {why}"),
                    }
                }
            },
        }
    }
}

/// The URL edges dial, as best this node knows it: a cluster's
/// `advertise`, or the tunnel listener's address (the host name when it
/// listens on every address).
pub(crate) fn cloud_url(config: &config::CloudConfig, bound: std::net::SocketAddr) -> String {
    if let Some(cluster) = &config.cluster {
        return cluster.advertise.to_string();
    }
    let scheme = if config.tunnel.tls.is_some() { "wss" } else { "ws" };
    let host = if bound.ip().is_unspecified() {
        tunnel::service::hostname().unwrap_or_else(|| "THIS-HOST".to_owned())
    } else {
        match bound.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        }
    };
    format!("{scheme}://{host}:{}/tunnel", bound.port())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_source_gets_five_failures_then_one_per_twelve_seconds() {
        let t0 = Instant::now();
        let mut limit = FailureLimit::new(t0);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..5 {
            assert!(limit.allows(a, t0));
            limit.failed(a, t0);
        }
        assert!(!limit.allows(a, t0), "the sixth attempt in a burst is refused");
        assert!(limit.allows(b, t0), "another source is not");
        assert!(!limit.allows(a, t0 + Duration::from_secs(11)));
        assert!(limit.allows(a, t0 + Duration::from_secs(12)));
    }

    #[test]
    fn all_sources_together_are_limited_and_the_table_is_bounded() {
        let t0 = Instant::now();
        let mut limit = FailureLimit::new(t0);
        for i in 0..60u32 {
            limit.failed(IpAddr::from(i.to_be_bytes()), t0);
        }
        assert!(!limit.allows("198.51.100.7".parse().unwrap(), t0), "the overall bucket is empty");
        assert!(limit.allows("198.51.100.7".parse().unwrap(), t0 + Duration::from_secs(1)));
        for i in 0..(MAX_SOURCES as u32 + 10) {
            limit.failed(IpAddr::from((i + 1000).to_be_bytes()), t0);
        }
        assert!(limit.sources.len() <= MAX_SOURCES);
    }
}
