//! Many idle connections through one mapping: each is opened, verified
//! with one echo round trip, and then held open without traffic.
//!
//! Connections are opened either one at a time (for memory figures that
//! do not depend on timing) or in a burst of many at once (how clients
//! arrive after an outage); [`verify`] checks later that the held ones
//! are still served.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::{IO_TIMEOUT, echo_byte};

/// How the connections of one batch fared.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub(crate) struct Opened {
    /// Open and answered the echo round trip.
    pub(crate) served: usize,
    /// Refused, reset or closed before the echo answered.
    pub(crate) refused: usize,
    /// No answer within the timeout, or not attempted before the batch's
    /// deadline.
    pub(crate) timed_out: usize,
}

impl Opened {
    pub(crate) fn add(&mut self, other: Opened) {
        self.served += other.served;
        self.refused += other.refused;
        self.timed_out += other.timed_out;
    }
}

enum Outcome {
    Served(TcpStream),
    Refused,
    TimedOut,
}

/// Opens `count` connections to the echo service at `addr`, `concurrency`
/// at a time, and adds the served ones to `held`. The whole batch is
/// bounded by `deadline`.
pub(crate) async fn open(
    addr: SocketAddr,
    count: usize,
    concurrency: usize,
    held: &mut Vec<TcpStream>,
    deadline: Duration,
) -> Opened {
    let until = Instant::now() + deadline;
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    let mut opened = Opened::default();
    let mut started = 0;
    while started < count {
        let Ok(Ok(permit)) = timeout_at(until, Arc::clone(&slots).acquire_owned()).await else {
            break;
        };
        started += 1;
        tasks.spawn(async move {
            let outcome = timeout_at(until, one(addr)).await.unwrap_or(Outcome::TimedOut);
            drop(permit);
            outcome
        });
        while let Some(done) = tasks.try_join_next() {
            tally(done.ok(), held, &mut opened);
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally(done.ok(), held, &mut opened);
    }
    opened.timed_out += count - started;
    opened
}

fn tally(outcome: Option<Outcome>, held: &mut Vec<TcpStream>, opened: &mut Opened) {
    match outcome {
        Some(Outcome::Served(tcp)) => {
            held.push(tcp);
            opened.served += 1;
        }
        Some(Outcome::Refused) => opened.refused += 1,
        Some(Outcome::TimedOut) | None => opened.timed_out += 1,
    }
}

async fn one(addr: SocketAddr) -> Outcome {
    let mut tcp = match timeout(IO_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => tcp,
        Ok(Err(_)) => return Outcome::Refused,
        Err(_) => return Outcome::TimedOut,
    };
    match timeout(IO_TIMEOUT, echo_byte(&mut tcp)).await {
        Ok(Ok(())) => Outcome::Served(tcp),
        Ok(Err(_)) => Outcome::Refused,
        Err(_) => Outcome::TimedOut,
    }
}

/// One more echo round trip on every held connection, 64 at a time;
/// keeps the ones that answer and returns how many did. Bounded by
/// `deadline` (connections not checked by then count as lost).
pub(crate) async fn verify(held: &mut Vec<TcpStream>, deadline: Duration) -> usize {
    const AT_ONCE: usize = 64;
    let until = Instant::now() + deadline;
    let mut pending = std::mem::take(held);
    let mut tasks = JoinSet::new();
    loop {
        while tasks.len() < AT_ONCE {
            let Some(mut tcp) = pending.pop() else { break };
            tasks.spawn(async move {
                let ok = timeout_at(until, echo_byte(&mut tcp)).await.is_ok_and(|r| r.is_ok());
                ok.then_some(tcp)
            });
        }
        match tasks.join_next().await {
            Some(Ok(Some(tcp))) => held.push(tcp),
            Some(_) => {}
            None => break,
        }
    }
    held.len()
}
