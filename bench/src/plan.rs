//! How much each mode measures.

use serde::Serialize;

/// Counts and durations of one bench run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Plan {
    pub(crate) mode: &'static str,
    /// Length of one bulk run, seconds.
    pub(crate) bulk_secs: f64,
    /// Runs per bulk figure (the median is reported).
    pub(crate) bulk_repeats: usize,
    /// Connections of the parallel bulk figure.
    pub(crate) parallel_streams: usize,
    /// Recorded round trips per message size.
    pub(crate) round_trips: usize,
    /// Fresh connections the round trips are spread over.
    pub(crate) round_trip_connections: usize,
    /// Recorded fresh connections.
    pub(crate) new_connections: usize,
    /// The two idle-connection counts memory is measured at.
    pub(crate) idle_small: usize,
    pub(crate) idle_large: usize,
    /// Pause before reading memory, so the agents finish what they were
    /// doing (milliseconds).
    pub(crate) settle_ms: u64,
}

impl Plan {
    pub(crate) fn full() -> Self {
        Self {
            mode: "full",
            bulk_secs: 3.0,
            bulk_repeats: 5,
            parallel_streams: 8,
            round_trips: 20_000,
            round_trip_connections: 10,
            new_connections: 1_000,
            idle_small: 100,
            idle_large: 10_000,
            settle_ms: 1000,
        }
    }

    pub(crate) fn quick() -> Self {
        Self {
            mode: "quick",
            bulk_secs: 1.0,
            bulk_repeats: 1,
            round_trips: 2_000,
            round_trip_connections: 4,
            new_connections: 200,
            ..Self::full()
        }
    }

    /// A few seconds in all: checks that every measurement still works.
    pub(crate) fn smoke() -> Self {
        Self {
            mode: "smoke",
            bulk_secs: 0.2,
            bulk_repeats: 1,
            parallel_streams: 2,
            round_trips: 200,
            round_trip_connections: 1,
            new_connections: 20,
            idle_small: 10,
            idle_large: 100,
            settle_ms: 200,
        }
    }
}
