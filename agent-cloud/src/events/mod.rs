//! The event log: what happened on this agent (tunnels up and down,
//! mappings added, drained and removed, edges drained, cluster nodes
//! joining and leaving, limits that began to refuse), bounded in memory
//! and on disk, served by `GET /v1/events` and posted to webhooks.
//!
//! [`EventLog::record`] never blocks and does no I/O: it puts the event on
//! a bounded channel (counting it as dropped when full). One writer thread
//! gives each event its `seq`, keeps it in the [`ring`], appends it to the
//! [`file`], tells the live streams and queues it for each [`webhook`].
//!
//! - `ring`: the last `max_events` in memory.
//! - `file`: the JSON-lines file, compacted to stay bounded.
//! - `limit`: one `limit_hit` per subject and interval.
//! - `webhook`: per-URL bounded queues and their sender threads.

mod file;
mod limit;
mod ring;
mod webhook;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use api::{Event, EventKind, EventsPage};
use config::EventsConfig;
use tokio::sync::broadcast;
use tracing::{info, warn};

pub(crate) use webhook::Webhook;

/// Events waiting for the writer; more are dropped (and counted).
const QUEUE: usize = 4096;
/// Events a live stream may fall behind by before it re-reads the ring.
const LIVE_BACKLOG: usize = 1024;
/// Longest `text`, in characters; longer is cut with an ellipsis.
pub(crate) const MAX_TEXT_CHARS: usize = 200;
/// Longest `subject`, in characters.
const MAX_SUBJECT_CHARS: usize = 128;
/// One `limit_hit` per subject per this interval.
pub(crate) const LIMIT_EVENT_INTERVAL: Duration = Duration::from_secs(60);

/// A cheap handle on the agent's event log.
#[derive(Debug, Clone)]
pub(crate) struct EventLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    to_writer: SyncSender<Message>,
    shared: Arc<Shared>,
    limits: Mutex<limit::RateGate>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the writer and the readers share.
#[derive(Debug)]
struct Shared {
    ring: Mutex<ring::Ring>,
    live: broadcast::Sender<Arc<Event>>,
    /// Recorded events by kind, in the order of [`EventKind::ALL`] (and
    /// one more slot for [`EventKind::Other`]).
    recorded: [AtomicU64; EventKind::ALL.len() + 1],
    dropped: AtomicU64,
    webhooks: Vec<Arc<Webhook>>,
    node: Option<String>,
}

impl Shared {
    fn ring(&self) -> MutexGuard<'_, ring::Ring> {
        self.ring.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Debug)]
enum Message {
    Record { kind: EventKind, subject: String, text: String, at_unix_ms: u64 },
    Stop,
}

fn kind_index(kind: EventKind) -> usize {
    EventKind::ALL.iter().position(|k| *k == kind).unwrap_or(EventKind::ALL.len())
}

impl EventLog {
    /// Loads the file of `config` (if any), starts the writer and one
    /// sender per webhook. `node` is this node's id in a cluster. A file
    /// that cannot be read is logged and the log starts empty, in memory
    /// only: events are not worth refusing to start for.
    pub(crate) fn start(config: &EventsConfig, node: Option<String>) -> Self {
        let max = config.max_events.max(1);
        let mut ring = ring::Ring::new(max);
        let mut file = None;
        if let Some(path) = &config.file {
            match file::load(path, max) {
                Ok(loaded) => {
                    if loaded.skipped > 0 || loaded.torn {
                        warn!(path = %path.display(), skipped = loaded.skipped, torn = loaded.torn,
                            "events file had lines that are not events (a crash mid-write?); skipped");
                    }
                    let count = loaded.events.len();
                    for event in loaded.events {
                        ring.push(Arc::new(event));
                    }
                    let mut opened = file::EventFile::new(path.clone(), loaded.lines, max);
                    // Rewrite a damaged or oversized file before appending to it.
                    if loaded.skipped > 0 || loaded.torn || opened.needs_compaction() {
                        if let Err(e) = opened.compact(ring.iter()) {
                            warn!(path = %path.display(), error = %e, "cannot rewrite the events file");
                        }
                    }
                    info!(path = %path.display(), loaded = count, last_seq = ring.last_seq(), "event log loaded");
                    file = Some(opened);
                }
                Err(e) => warn!(path = %path.display(), error = %e,
                    "cannot read the events file; events are kept in memory only"),
            }
        }
        let webhooks: Vec<Arc<Webhook>> = config
            .webhooks
            .iter()
            .map(|url| Arc::new(Webhook::new(url.clone(), config.webhook_queue)))
            .collect();
        for (index, hook) in webhooks.iter().enumerate() {
            let hook = Arc::clone(hook);
            let (timeout, retries) = (config.webhook_timeout, config.webhook_retries);
            let spawned = std::thread::Builder::new()
                .name(format!("relay-webhook-{index}"))
                .spawn(move || hook.run(index, timeout, retries));
            if let Err(e) = spawned {
                warn!(webhook = index, error = %e, "cannot start the webhook sender");
            }
        }
        let (live, _) = broadcast::channel(LIVE_BACKLOG);
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            live,
            recorded: std::array::from_fn(|_| AtomicU64::new(0)),
            dropped: AtomicU64::new(0),
            webhooks,
            node,
        });
        let (to_writer, from_callers) = std::sync::mpsc::sync_channel(QUEUE);
        let writer_shared = Arc::clone(&shared);
        let writer = std::thread::Builder::new()
            .name("relay-events".into())
            .spawn(move || write_events(&writer_shared, file, &from_callers))
            .inspect_err(|e| warn!(error = %e, "cannot start the event writer; no events recorded"))
            .ok();
        Self {
            inner: Arc::new(Inner {
                to_writer,
                shared,
                limits: Mutex::new(limit::RateGate::new(LIMIT_EVENT_INTERVAL)),
                writer: Mutex::new(writer),
            }),
        }
    }

    /// Records an event. Never blocks: when the writer is behind by
    /// [`QUEUE`] events this one is dropped and counted. `subject` and
    /// `text` may come from a peer: they are escaped and cut to length.
    pub(crate) fn record(&self, kind: EventKind, subject: &str, text: &str) {
        let message = Message::Record {
            kind,
            subject: clean(subject, MAX_SUBJECT_CHARS),
            text: clean(text, MAX_TEXT_CHARS),
            at_unix_ms: crate::clock::unix_ms(),
        };
        match self.inner.to_writer.try_send(message) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Records a `limit_hit` for `subject` unless one was recorded for
    /// the same `limit` and subject within [`LIMIT_EVENT_INTERVAL`]; the
    /// text then says how many hits were held back in between.
    pub(crate) fn limit_hit(&self, limit: &str, subject: &str, text: &str) {
        let key = format!("{limit}/{subject}");
        let admitted = {
            let mut gate = self.inner.limits.lock().unwrap_or_else(|p| p.into_inner());
            gate.admit(&key, Instant::now())
        };
        match admitted {
            None => {}
            Some(0) => self.record(EventKind::LimitHit, subject, text),
            Some(n) => self.record(
                EventKind::LimitHit,
                subject,
                &format!("{text} ({n} more since the last such event)"),
            ),
        }
    }

    /// `GET /v1/events`: at most `limit` events after `since`.
    pub(crate) fn page(&self, since: u64, limit: usize) -> EventsPage {
        let ring = self.inner.shared.ring();
        EventsPage {
            events: ring.since(since, limit).iter().map(|e| (**e).clone()).collect(),
            oldest_seq: ring.oldest_seq(),
            last_seq: ring.last_seq(),
            dropped: self.dropped(),
        }
    }

    /// Events after `since` from the ring, as shared pointers (streams).
    pub(crate) fn since(&self, since: u64, limit: usize) -> Vec<Arc<Event>> {
        self.inner.shared.ring().since(since, limit)
    }

    /// New events as they are recorded. Subscribe before reading the
    /// backlog with [`since`](Self::since), and skip seqs already sent.
    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.inner.shared.live.subscribe()
    }

    /// Events recorded since start, by kind (kinds never seen included).
    pub(crate) fn recorded(&self) -> Vec<(EventKind, u64)> {
        let shared = &self.inner.shared;
        EventKind::ALL
            .iter()
            .map(|&k| (k, shared.recorded[kind_index(k)].load(Ordering::Relaxed)))
            .collect()
    }

    /// Events dropped because the writer was behind.
    pub(crate) fn dropped(&self) -> u64 {
        self.inner.shared.dropped.load(Ordering::Relaxed)
    }

    /// The webhooks in config order (their index names them in metrics).
    pub(crate) fn webhooks(&self) -> &[Arc<Webhook>] {
        &self.inner.shared.webhooks
    }

    /// Stops the writer once it has written what was recorded before,
    /// and the webhook senders (what they hold is not sent).
    pub(crate) async fn close(&self) {
        for hook in &self.inner.shared.webhooks {
            hook.stop();
        }
        let writer = self.inner.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        let Some(writer) = writer else { return };
        let to_writer = self.inner.to_writer.clone();
        // Blocking: the writer may be busy with a full queue for a moment.
        let _ = tokio::task::spawn_blocking(move || {
            let _ = to_writer.send(Message::Stop);
            let _ = writer.join();
        })
        .await;
    }
}

/// The writer thread: numbers, keeps, writes and fans out each event.
fn write_events(shared: &Shared, mut file: Option<file::EventFile>, from: &Receiver<Message>) {
    // Logged once per failure streak of the disk, not once per event.
    let mut file_failing = false;
    // Callers read the clock before they queue: two racing callers may
    // arrive out of order, so times are kept from going back along seq.
    let mut last_at = shared.ring().iter().last().map_or(0, |e| e.at_unix_ms);
    while let Ok(first) = from.recv() {
        let mut next = Some(first);
        while let Some(message) = next.take() {
            let Message::Record { kind, subject, text, at_unix_ms } = message else {
                flush(&mut file, &mut file_failing);
                return;
            };
            last_at = last_at.max(at_unix_ms);
            let event = {
                let mut ring = shared.ring();
                let event = Arc::new(Event {
                    seq: ring.last_seq() + 1,
                    at_unix_ms: last_at,
                    kind,
                    subject,
                    text,
                    node: shared.node.clone(),
                });
                ring.push(Arc::clone(&event));
                event
            };
            shared.recorded[kind_index(kind)].fetch_add(1, Ordering::Relaxed);
            if let Some(f) = &mut file {
                if let Err(e) = f.append(&event) {
                    report_file_error(&mut file_failing, &e.to_string());
                }
            }
            let _ = shared.live.send(Arc::clone(&event));
            if !shared.webhooks.is_empty() {
                if let Ok(json) = serde_json::to_string(&*event) {
                    let json: Arc<str> = Arc::from(json);
                    for hook in &shared.webhooks {
                        hook.push(Arc::clone(&json));
                    }
                }
            }
            // Take what else is waiting before one flush for them all.
            next = from.try_recv().ok();
        }
        flush(&mut file, &mut file_failing);
        if let Some(f) = &mut file {
            if f.needs_compaction() {
                // Copied out, so readers do not wait for the disk.
                let held: Vec<Arc<Event>> = shared.ring().iter().cloned().collect();
                if let Err(e) = f.compact(held.iter()) {
                    report_file_error(&mut file_failing, &e);
                }
            }
        }
    }
}

fn flush(file: &mut Option<file::EventFile>, failing: &mut bool) {
    if let Some(f) = file {
        match f.flush() {
            Ok(()) => *failing = false,
            Err(e) => report_file_error(failing, &e.to_string()),
        }
    }
}

fn report_file_error(failing: &mut bool, error: &str) {
    if !*failing {
        warn!(%error, "cannot write the events file; events are still kept in memory");
        *failing = true;
    }
}

/// `text` with control characters and the like escaped (it may come from
/// an edge), cut to `max` characters.
fn clean(text: &str, max: usize) -> String {
    // Cut first: a megabyte of peer text is not escaped whole.
    let bounded: String = text.trim().chars().take(max + 1).collect();
    let escaped = tunnel::untrusted::escape(&bounded);
    if escaped.chars().count() <= max {
        return escaped.into_owned();
    }
    let mut cut: String = escaped.chars().take(max.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests;
