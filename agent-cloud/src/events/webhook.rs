//! Webhooks: each event POSTed as JSON to each configured URL, one thread
//! per URL sending in order. A URL has a bounded queue that drops its
//! oldest event when full (a receiver that is down costs memory for
//! `webhook_queue` events, no more); a failed POST is retried with
//! backoff, then given up. Every outcome is counted for `/metrics`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use tracing::{info, warn};

/// First wait before a retry; doubled each time up to [`BACKOFF_MAX`].
const BACKOFF_START: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The wait before retry number `retry` (from 0).
pub(super) fn backoff(retry: u32) -> Duration {
    BACKOFF_START.saturating_mul(2u32.saturating_pow(retry.min(16))).min(BACKOFF_MAX)
}

/// One configured URL: its queue and its figures.
#[derive(Debug)]
pub(crate) struct Webhook {
    url: String,
    queue: Mutex<VecDeque<Arc<str>>>,
    cap: usize,
    wake: Condvar,
    stopping: AtomicBool,
    pub(crate) delivered: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) failed: AtomicU64,
}

impl Webhook {
    pub(super) fn new(url: String, cap: usize) -> Self {
        Self {
            url,
            queue: Mutex::new(VecDeque::new()),
            cap: cap.max(1),
            wake: Condvar::new(),
            stopping: AtomicBool::new(false),
            delivered: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn queue(&self) -> MutexGuard<'_, VecDeque<Arc<str>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Events waiting (not counting one being sent).
    pub(crate) fn queued(&self) -> usize {
        self.queue().len()
    }

    /// Queues one event's JSON, dropping the oldest waiting one when full.
    pub(super) fn push(&self, json: Arc<str>) {
        let mut queue = self.queue();
        if queue.len() >= self.cap {
            queue.pop_front();
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
        queue.push_back(json);
        drop(queue);
        self.wake.notify_one();
    }

    pub(super) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        // Taken so a sender between its check and its wait sees the flag.
        drop(self.queue());
        self.wake.notify_all();
    }

    /// The next event, waiting for one; `None` once stopping.
    fn next(&self) -> Option<Arc<str>> {
        let mut queue = self.queue();
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return None;
            }
            if let Some(json) = queue.pop_front() {
                return Some(json);
            }
            queue = self.wake.wait(queue).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Sleeps `pause` unless stopped first; false when stopping.
    fn pause(&self, pause: Duration) -> bool {
        let queue = self.queue();
        if self.stopping.load(Ordering::Relaxed) {
            return false;
        }
        let _unused =
            self.wake.wait_timeout_while(queue, pause, |_| !self.stopping.load(Ordering::Relaxed));
        !self.stopping.load(Ordering::Relaxed)
    }

    /// Sends queued events until stopped: `index` names it in logs (the
    /// URL may hold a credential), `timeout` bounds one POST, `retries`
    /// more attempts follow a failed one.
    pub(super) fn run(self: Arc<Self>, index: usize, timeout: Duration, retries: u32) {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(timeout))
            .max_redirects(0)
            .build()
            .new_agent();
        // Logged once per outage, not once per event.
        let mut failing = false;
        while let Some(json) = self.next() {
            let mut attempt = 0;
            loop {
                match post(&agent, &self.url, &json) {
                    Ok(()) => {
                        self.delivered.fetch_add(1, Ordering::Relaxed);
                        if failing {
                            info!(webhook = index, "webhook receiver accepts events again");
                            failing = false;
                        }
                        break;
                    }
                    Err(e) => {
                        if !failing {
                            warn!(webhook = index, error = %e, "webhook POST failed; retrying with backoff");
                            failing = true;
                        }
                        if attempt >= retries {
                            self.failed.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        if !self.pause(backoff(attempt)) {
                            return;
                        }
                        attempt += 1;
                    }
                }
            }
        }
    }
}

/// One POST; any 2xx answer is a delivery.
fn post(agent: &ureq::Agent, url: &str, json: &str) -> Result<(), String> {
    let response = agent
        .post(url)
        .header("content-type", "application/json")
        .send(json.as_bytes())
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    if (200..300).contains(&status) { Ok(()) } else { Err(format!("answered {status}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let waits: Vec<u64> = (0..8).map(|r| backoff(r).as_millis() as u64).collect();
        assert_eq!(waits, [250, 500, 1000, 2000, 4000, 8000, 10_000, 10_000]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
    }

    #[test]
    fn a_full_queue_drops_its_oldest_and_counts_it() {
        let hook = Webhook::new("http://127.0.0.1:9/".into(), 2);
        for n in 1..=5 {
            hook.push(Arc::from(format!("{n}")));
        }
        assert_eq!(hook.queued(), 2);
        assert_eq!(hook.dropped.load(Ordering::Relaxed), 3);
        let left: Vec<String> = hook.queue().iter().map(|j| j.to_string()).collect();
        assert_eq!(left, ["4", "5"], "the newest are kept");
        hook.stop();
        assert_eq!(hook.next(), None, "a stopped hook sends nothing more");
    }
}
