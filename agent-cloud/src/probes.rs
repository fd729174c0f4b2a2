//! End-to-end probes: every mapping with `probe_interval` has its target
//! checked through its edge (protocol version 6, docs/protocol.md,
//! "Probes"), so the operator tells "the site is down" (no tunnel) from
//! "the service is down" (the edge cannot connect) from "slow".
//!
//! A probe is a connect from the edge under its own allowlist, closed at
//! once: it is no client connection and moves no mapping counter. Each
//! node probes through its own tunnels. Only a change of status is an
//! event. Bounded: one probe per mapping at a time, [`MAX_AT_ONCE`] in all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use api::{EventKind, ProbeStatus, ProbeView, SLOW_PROBE_MS};
use proto::OpenCode;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::edges::EdgeRegistry;
use crate::events::EventLog;
use crate::mapping::{MappingEntry, Phase};
use crate::mappings::Mappings;

/// Probes running at once on this node.
const MAX_AT_ONCE: usize = 256;
/// How often the prober looks for mappings that are due.
const TICK: Duration = Duration::from_millis(250);
/// The edge's limit on one check (less when the interval is shorter).
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// What one probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Found {
    Answer {
        code: OpenCode,
        connect: Duration,
        message: String,
        rtt: Duration,
    },
    NoTunnel,
    /// The edge is too old: the sentence says for what.
    Unsupported(String),
    NoAnswer(String),
}

fn code_name(code: OpenCode) -> &'static str {
    match code {
        OpenCode::Ok => "ok",
        OpenCode::Refused => "refused",
        OpenCode::Denied => "denied",
        OpenCode::Timeout => "timeout",
        OpenCode::Unreachable => "unreachable",
        OpenCode::Draining => "draining",
        _ => "error",
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Whether `view` has another status than `prev`.
pub(crate) fn changed(prev: Option<&ProbeView>, view: &ProbeView) -> bool {
    prev.is_none_or(|p| p.status != view.status)
}

/// The view after `found`. Pure.
pub(crate) fn next(prev: Option<&ProbeView>, found: &Found, now_ms: u64) -> ProbeView {
    let (status, detail, connect_us, rtt_us) = match found {
        Found::Answer { code: OpenCode::Ok, connect, rtt, .. } => {
            let slow = connect.as_millis() > u128::from(SLOW_PROBE_MS);
            let status = if slow { ProbeStatus::Slow } else { ProbeStatus::Ok };
            (status, "ok".to_owned(), Some(micros(*connect)), Some(micros(*rtt)))
        }
        Found::Answer { code, connect, message, rtt } => {
            let detail = if message.is_empty() {
                code_name(*code).to_owned()
            } else {
                let message: String = message.chars().take(120).collect();
                format!("{}: {}", code_name(*code), tunnel::untrusted::escaped(message))
            };
            (ProbeStatus::Failed, detail, Some(micros(*connect)), Some(micros(*rtt)))
        }
        Found::NoTunnel => (ProbeStatus::NoTunnel, "no tunnel to the edge".to_owned(), None, None),
        Found::Unsupported(why) => (ProbeStatus::Unsupported, why.clone(), None, None),
        Found::NoAnswer(why) => (ProbeStatus::Failed, format!("no answer: {why}"), None, None),
    };
    let since_unix_ms = match prev {
        Some(p) if p.status == status => p.since_unix_ms,
        _ => now_ms,
    };
    let failing = matches!(status, ProbeStatus::Failed | ProbeStatus::NoTunnel);
    let consecutive_failures =
        if failing { prev.map_or(0, |p| p.consecutive_failures).saturating_add(1) } else { 0 };
    ProbeView {
        status,
        detail,
        connect_us,
        rtt_us,
        at_unix_ms: now_ms,
        since_unix_ms,
        consecutive_failures,
    }
}

/// The event text for a status change; none when the status is the same,
/// or for the first good probe (not news).
pub(crate) fn event_text(prev: Option<&ProbeView>, view: &ProbeView) -> Option<String> {
    if !changed(prev, view) {
        return None;
    }
    let first = prev.is_none_or(|p| p.status == ProbeStatus::Pending);
    if first && view.status == ProbeStatus::Ok {
        return None;
    }
    let latency = view.connect_us.map(|us| format!(", connect {:.1} ms", us as f64 / 1000.0));
    Some(format!(
        "probe {}: {}{}",
        status_word(view.status),
        view.detail,
        latency.unwrap_or_default()
    ))
}

/// The word the API and the console use for a status.
pub(crate) fn status_word(status: ProbeStatus) -> &'static str {
    match status {
        ProbeStatus::Pending => "pending",
        ProbeStatus::Ok => "ok",
        ProbeStatus::Slow => "slow",
        ProbeStatus::Failed => "failed",
        ProbeStatus::NoTunnel => "no_tunnel",
        ProbeStatus::Unsupported => "unsupported",
        ProbeStatus::Other => "other",
    }
}

/// Probes one mapping once, through the tunnel a client would get.
async fn probe_once(entry: &MappingEntry, edges: &EdgeRegistry, interval: Duration) -> Found {
    let Some(tunnel) = edges.pick(&entry.spec.edge, &[]) else { return Found::NoTunnel };
    let timeout = PROBE_TIMEOUT.min(interval);
    let started = Instant::now();
    let target = &entry.spec.target;
    let exchange = entry.spec.probe_expect.as_ref().map(|expect| proto::ProbeExchange {
        send: entry.spec.probe_send.clone().unwrap_or_default(),
        expect: expect.clone(),
    });
    match tunnel.probe(&entry.spec.name, &target.host, target.port, timeout, exchange).await {
        Ok(answer) => Found::Answer {
            code: answer.code,
            connect: answer.connect,
            message: answer.message,
            rtt: started.elapsed(),
        },
        Err(e @ tunnel::ProbeError::Unsupported { .. }) => Found::Unsupported(e.to_string()),
        Err(e) => Found::NoAnswer(e.to_string()),
    }
}

/// Runs the prober until `stop`.
pub(crate) async fn run(
    mappings: Arc<Mappings>,
    edges: Arc<EdgeRegistry>,
    events: EventLog,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(MAX_AT_ONCE));
    let mut due: HashMap<String, Instant> = HashMap::new();
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now = Instant::now();
        let entries = mappings.entries();
        let names: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.spec.name.as_str()).collect();
        due.retain(|name, _| names.contains(name.as_str()));
        for entry in entries {
            let Some(interval) = entry.spec.probe_interval else { continue };
            if entry.phase() != Phase::Active {
                continue;
            }
            let due_at = due.entry(entry.spec.name.clone()).or_insert(now);
            if *due_at > now {
                continue;
            }
            // One at a time per mapping: the next is due an interval after
            // this one, and a probe lasts less than that.
            *due_at = now + interval;
            let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else { continue };
            let edges = Arc::clone(&edges);
            let events = events.clone();
            tokio::spawn(async move {
                let found = probe_once(&entry, &edges, interval).await;
                let (prev, view) =
                    entry.record_probe(|prev| next(prev, &found, crate::clock::unix_ms()));
                if let Some(text) = event_text(prev.as_ref(), &view) {
                    events.record(EventKind::ProbeChanged, &entry.spec.name, &text);
                }
                drop(slot);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(code: OpenCode, connect_ms: u64) -> Found {
        Found::Answer {
            code,
            connect: Duration::from_millis(connect_ms),
            message: if code == OpenCode::Ok { String::new() } else { "Connection refused".into() },
            rtt: Duration::from_millis(connect_ms + 1),
        }
    }

    #[test]
    fn statuses_tell_site_down_from_service_down_from_slow() {
        let ok = next(None, &answer(OpenCode::Ok, 2), 1_000);
        assert_eq!(
            (ok.status, changed(None, &ok), ok.connect_us),
            (ProbeStatus::Ok, true, Some(2_000))
        );
        assert_eq!(event_text(None, &ok), None, "the first good probe is not news");
        let slow = next(Some(&ok), &answer(OpenCode::Ok, SLOW_PROBE_MS + 1), 2_000);
        assert_eq!(slow.status, ProbeStatus::Slow);
        let down = next(Some(&slow), &answer(OpenCode::Refused, 1), 3_000);
        assert_eq!((down.status, changed(Some(&slow), &down)), (ProbeStatus::Failed, true));
        assert_eq!(down.detail, "refused: Connection refused");
        assert_eq!((down.since_unix_ms, down.consecutive_failures), (3_000, 1));
        let text = event_text(Some(&slow), &down).unwrap();
        assert!(text.starts_with("probe failed: refused"), "{text}");
        let still = next(Some(&down), &answer(OpenCode::Timeout, 3_000), 4_000);
        assert!(!changed(Some(&down), &still), "failed is still failed");
        assert_eq!(event_text(Some(&down), &still), None, "no event without a change");
        assert_eq!((still.since_unix_ms, still.consecutive_failures), (3_000, 2));
        let site = next(Some(&still), &Found::NoTunnel, 5_000);
        assert_eq!((site.status, site.consecutive_failures), (ProbeStatus::NoTunnel, 3));
        let back = next(Some(&site), &answer(OpenCode::Ok, 1), 6_000);
        let recovered = changed(Some(&site), &back);
        assert_eq!((back.status, recovered, back.consecutive_failures), (ProbeStatus::Ok, true, 0));
        assert!(event_text(Some(&site), &back).is_some(), "recovering is news");
        let why = "the edge speaks protocol 5; a probe needs 6: upgrade relay-edge".to_owned();
        let old = next(None, &Found::Unsupported(why), 7_000);
        assert_eq!(old.status, ProbeStatus::Unsupported);
    }
}
