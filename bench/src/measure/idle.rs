//! Many idle connections through one mapping: each is opened, verified
//! with one echo round trip, and then held open without traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, timeout, timeout_at};

use super::{IO_TIMEOUT, echo_byte};

/// Connections being opened at once (stays under the listeners' backlog).
const CONCURRENCY: usize = 64;

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

/// Opens `count` connections to the echo service at `addr` and adds the
/// served ones to `held`. The whole batch is bounded by `deadline`.
pub(crate) async fn open(
    addr: SocketAddr,
    count: usize,
    held: &mut Vec<TcpStream>,
    deadline: Duration,
) -> Opened {
    let until = Instant::now() + deadline;
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
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
