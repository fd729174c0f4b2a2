//! Calls to the cloud agent, off the UI thread: a poller that fetches a
//! snapshot about once a second (the cluster's figures, `scope=cluster`,
//! with the series of the selected mapping only; it says when another of
//! several endpoints answers) and the events
//! recorded since its last fetch, and one short-lived thread per change.
//! Both report back as [`Action`]s on a channel.

use std::sync::mpsc::{self, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::app::{Action, Request};
use crate::client::ControlClient;

/// How often the snapshot is fetched.
const INTERVAL: Duration = Duration::from_secs(1);

/// Unix time in milliseconds (0 if the clock is before 1970).
pub(crate) fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The mapping whose series the detail pane draws: the only series the
/// poller asks for.
pub(crate) type Watched = Arc<Mutex<Option<String>>>;

/// Starts the poller. Sending on the returned channel fetches at once;
/// dropping it (or the receiver of `tx`) stops the poller.
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn spawn_poller(
    client: ControlClient,
    tx: Sender<Action>,
    watched: Watched,
) -> anyhow::Result<Sender<()>> {
    let (wake, woken) = mpsc::channel::<()>();
    thread::Builder::new()
        .name("relayctl-poll".into())
        .spawn(move || {
            let mut answered = client.endpoint();
            let mut events = EventCursor::default();
            loop {
                let started = Instant::now();
                let series = watched.lock().map(|w| w.clone()).unwrap_or_default();
                let result = client.cluster_snapshot(series.as_deref());
                let endpoint = client.endpoint();
                if endpoint != answered {
                    answered = endpoint.clone();
                    if tx.send(Action::Endpoint(endpoint)).is_err() {
                        return;
                    }
                }
                let up = result.is_ok();
                if tx.send(Action::Snapshot { result, now_ms: unix_ms() }).is_err() {
                    return;
                }
                // A failed fetch is seen in the snapshot's link state; the
                // events wait for the next second.
                if let Some(new) = up.then(|| events.fetch(&client)).flatten() {
                    if tx.send(Action::Events(new)).is_err() {
                        return;
                    }
                }
                match woken.recv_timeout(INTERVAL.saturating_sub(started.elapsed())) {
                    Ok(()) => while woken.try_recv().is_ok() {},
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            }
        })
        .context("starting the snapshot thread")?;
    Ok(wake)
}

/// Where the poller is in the event log of the endpoint that answers.
#[derive(Debug, Default)]
struct EventCursor {
    /// The last seq received; `None` before the first fetch.
    last_seq: Option<u64>,
    endpoint: String,
}

impl EventCursor {
    /// Events since the last fetch (the newest the view holds, the first
    /// time, or after another endpoint answered: its log is another).
    fn fetch(&mut self, client: &ControlClient) -> Option<Vec<api::Event>> {
        let endpoint = client.endpoint();
        if endpoint != self.endpoint {
            (self.last_seq, self.endpoint) = (None, endpoint);
        }
        let since = match self.last_seq {
            Some(seq) => seq,
            None => {
                let newest = client.events(u64::MAX - 1, 1).ok()?.last_seq;
                newest.saturating_sub(super::events::MAX_HELD as u64)
            }
        };
        let page = client.events(since, super::events::MAX_HELD).ok()?;
        let last = page.events.last().map_or(since, |e| e.seq);
        self.last_seq = Some(last);
        (!page.events.is_empty()).then_some(page.events)
    }
}

/// Makes `request` on its own thread; the answer comes back on `tx` as
/// [`Action::Finished`].
///
/// # Errors
/// When the thread cannot be started.
pub(crate) fn perform(
    client: &ControlClient,
    request: Request,
    tx: &Sender<Action>,
) -> anyhow::Result<()> {
    let (client, tx) = (client.clone(), tx.clone());
    thread::Builder::new()
        .name("relayctl-call".into())
        .spawn(move || {
            let result = match &request {
                Request::Enroll(r) => {
                    let body =
                        api::EnrollRequest { group: r.group.clone(), ttl_secs: Some(r.ttl_secs) };
                    let result = client.enroll(&r.id, &body).map(|c| c.value);
                    let _ = tx.send(Action::Enrolled { request: r.clone(), result });
                    return;
                }
                Request::Add(spec) => client.add_mapping(spec).map(|c| Some(Box::new(c.value))),
                Request::Drain { name, deadline_secs } => {
                    client.drain_mapping(name, Some(*deadline_secs)).map(|c| c.value.map(Box::new))
                }
                Request::Remove { name } => client.remove_mapping(name).map(|_| None),
                Request::DrainEdge { id } => client.drain_edge(id).map(|_| None),
                Request::UndrainEdge { id } => client.undrain_edge(id).map(|_| None),
                Request::RevokeEdge { id } => client.revoke_edge(id).map(|_| None),
                Request::DrainNode { id, deadline_secs } => {
                    client.drain_node(id, Some(*deadline_secs)).map(|_| None)
                }
                Request::UndrainNode { id } => client.undrain_node(id).map(|_| None),
                Request::Refresh => Ok(None),
            };
            let _ = tx.send(Action::Finished { request, result });
        })
        .context("starting a thread for the call")?;
    Ok(())
}
