//! Live figures per mapping and per edge, with bounded memory.
//!
//! Counters are atomics bumped on the data path. Once a second a sampler
//! turns byte counters into throughput samples (a ring of the last
//! [`SERIES_LEN`] seconds) and records them, connect latencies and tunnel
//! round trips into [`Window`]s: sliding-window histograms made of a few
//! hdrhistogram slots. Memory depends on the number of mappings and edges,
//! never on the number of connections.
//!
//! Beside the windows, which the console reads, the same latencies go into
//! [`LatencyHistogram`]s for `/metrics`: counts since the agent started in
//! fixed buckets that every node shares, so Prometheus can add the nodes of
//! a cluster together (percentiles of different nodes cannot be added).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use api::{Bucket, Distribution};
use hdrhistogram::Histogram;

/// Seconds of per-second throughput kept for sparklines.
pub(crate) const SERIES_LEN: usize = 300;
/// Seconds each histogram slot covers.
const SLOT_SECS: u64 = 60;
/// Slots in a window: percentiles cover the last 5 to 6 minutes.
const SLOTS: usize = 6;
/// The window the percentiles cover, for the snapshot's `window_secs`.
pub(crate) const WINDOW_SECS: u64 = SLOT_SECS * (SLOTS as u64 - 1);

/// A sliding-window histogram: one hdrhistogram per minute, the oldest
/// dropped as time moves on. Two significant digits, values up to `max`.
#[derive(Debug)]
pub(crate) struct Window {
    max: u64,
    slots: VecDeque<(u64, Histogram<u32>)>,
}

impl Window {
    pub(crate) fn new(max: u64) -> Self {
        Self { max, slots: VecDeque::with_capacity(SLOTS) }
    }

    /// Records `value` (clamped to the window's range) at `now_secs`.
    pub(crate) fn record(&mut self, value: u64, now_secs: u64) {
        let slot = now_secs / SLOT_SECS;
        if self.slots.back().is_none_or(|(s, _)| *s != slot) {
            let Ok(h) = Histogram::new_with_bounds(1, self.max, 2) else { return };
            self.slots.push_back((slot, h));
        }
        while self.slots.len() > SLOTS {
            self.slots.pop_front();
        }
        if let Some((_, h)) = self.slots.back_mut() {
            h.saturating_record(value.clamp(1, self.max));
        }
    }

    /// Percentiles and buckets over the slots still in the window.
    pub(crate) fn distribution(&self, now_secs: u64) -> Distribution {
        let current = now_secs / SLOT_SECS;
        let Ok(mut merged) = Histogram::<u32>::new_with_bounds(1, self.max, 2) else {
            return Distribution::default();
        };
        for (slot, h) in &self.slots {
            if current.saturating_sub(*slot) < SLOTS as u64 {
                let _ = merged.add(h);
            }
        }
        if merged.is_empty() {
            return Distribution::default();
        }
        let buckets = merged
            .iter_log(1, 2.0)
            .filter(|v| v.count_since_last_iteration() > 0)
            .map(|v| Bucket { le: v.value_iterated_to(), count: v.count_since_last_iteration() })
            .collect();
        Distribution {
            count: merged.len(),
            p50: merged.value_at_quantile(0.50),
            p90: merged.value_at_quantile(0.90),
            p99: merged.value_at_quantile(0.99),
            p999: merged.value_at_quantile(0.999),
            max: merged.max(),
            buckets,
        }
    }
}

/// Upper bounds, in microseconds, of the buckets of every latency
/// histogram on `/metrics`: 0.1 ms (a connect on one LAN) to 10 s in a
/// 1-2.5-5 series. Fixed, so every node of a cluster has the same buckets.
pub(crate) const LATENCY_BUCKETS_US: [u64; 16] = [
    100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000,
    1_000_000, 2_500_000, 5_000_000, 10_000_000,
];

/// A Prometheus histogram of latencies since the agent started: one atomic
/// count per bucket of [`LATENCY_BUCKETS_US`] plus one for larger values,
/// and the sum. Fixed size, whatever the number of values.
#[derive(Debug, Default)]
pub(crate) struct LatencyHistogram {
    /// `counts[i]`: values in `(bound[i-1], bound[i]]`; the last: above every bound.
    counts: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    sum_us: AtomicU64,
}

/// A [`LatencyHistogram`] read at one moment, as Prometheus exposes it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct HistogramCounts {
    /// Values at or below each bound of [`LATENCY_BUCKETS_US`] (cumulative).
    pub(crate) at_or_below: [u64; LATENCY_BUCKETS_US.len()],
    /// Every value (the `+Inf` bucket and `_count`).
    pub(crate) count: u64,
    /// The sum of the values, in microseconds.
    pub(crate) sum_us: u64,
}

impl LatencyHistogram {
    pub(crate) fn record(&self, micros: u64) {
        let bucket = LATENCY_BUCKETS_US.partition_point(|&bound| bound < micros);
        self.counts[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(micros, Ordering::Relaxed);
    }

    /// The cumulative counts. `count` is the total of the buckets as read,
    /// so the `+Inf` bucket and `_count` always agree.
    pub(crate) fn read(&self) -> HistogramCounts {
        let mut out =
            HistogramCounts { sum_us: self.sum_us.load(Ordering::Relaxed), ..Default::default() };
        let mut running = 0u64;
        for (i, count) in self.counts.iter().enumerate() {
            running += count.load(Ordering::Relaxed);
            if let Some(slot) = out.at_or_below.get_mut(i) {
                *slot = running;
            }
        }
        out.count = running;
        out
    }
}

/// Counters of one mapping, bumped by its connections.
#[derive(Debug, Default)]
pub(crate) struct MappingCounters {
    pub(crate) active: AtomicU64,
    pub(crate) total: AtomicU64,
    pub(crate) failed: AtomicU64,
    /// Client to service, and service to client; shared with each relay.
    pub(crate) bytes: tunnel::ByteCounters,
}

/// The sampled side of a mapping's figures.
#[derive(Debug)]
pub(crate) struct MappingSamples {
    last: (u64, u64),
    pub(crate) throughput_in: VecDeque<u64>,
    pub(crate) throughput_out: VecDeque<u64>,
    pub(crate) throughput: Window,
    pub(crate) connect_latency_us: Window,
}

impl Default for MappingSamples {
    fn default() -> Self {
        Self {
            last: (0, 0),
            throughput_in: VecDeque::with_capacity(SERIES_LEN),
            throughput_out: VecDeque::with_capacity(SERIES_LEN),
            // Up to 100 GB/s and 60 s.
            throughput: Window::new(100_000_000_000),
            connect_latency_us: Window::new(60_000_000),
        }
    }
}

fn push_capped(series: &mut VecDeque<u64>, value: u64) {
    if series.len() == SERIES_LEN {
        series.pop_front();
    }
    series.push_back(value);
}

impl MappingSamples {
    /// Takes one per-second sample from the byte counters.
    pub(crate) fn sample(&mut self, counters: &MappingCounters, now_secs: u64) {
        let now = (counters.bytes.sent(), counters.bytes.received());
        let rate_in = now.0.saturating_sub(self.last.0);
        let rate_out = now.1.saturating_sub(self.last.1);
        self.last = now;
        push_capped(&mut self.throughput_in, rate_in);
        push_capped(&mut self.throughput_out, rate_out);
        if rate_in + rate_out > 0 {
            self.throughput.record(rate_in + rate_out, now_secs);
        }
    }

    /// The last per-second sample, in and out.
    pub(crate) fn latest(&self) -> (u64, u64) {
        (
            self.throughput_in.back().copied().unwrap_or(0),
            self.throughput_out.back().copied().unwrap_or(0),
        )
    }
}

/// All of a mapping's figures.
#[derive(Debug, Default)]
pub(crate) struct MappingMetrics {
    pub(crate) counters: MappingCounters,
    pub(crate) samples: Mutex<MappingSamples>,
    /// Connect latencies since the agent started, for `/metrics`.
    pub(crate) connect_latency: LatencyHistogram,
}

impl MappingMetrics {
    pub(crate) fn samples(&self) -> std::sync::MutexGuard<'_, MappingSamples> {
        self.samples.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn record_connect(&self, micros: u64, now_secs: u64) {
        self.samples().connect_latency_us.record(micros, now_secs);
        self.connect_latency.record(micros);
    }
}

/// Counts a connection as active while alive.
#[derive(Debug)]
pub(crate) struct ActiveGuard<'a>(&'a AtomicU64);

impl<'a> ActiveGuard<'a> {
    pub(crate) fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(counter)
    }
}

impl Drop for ActiveGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_percentiles_follow_the_samples() {
        let mut w = Window::new(1_000_000);
        for v in 1..=1000 {
            w.record(v, 0);
        }
        let d = w.distribution(0);
        assert_eq!(d.count, 1000);
        assert!((495..=505).contains(&d.p50), "p50 {}", d.p50);
        assert!((985..=995).contains(&d.p99), "p99 {}", d.p99);
        assert_eq!(d.buckets.iter().map(|b| b.count).sum::<u64>(), 1000);
    }

    #[test]
    fn old_slots_leave_the_window_and_memory_stays_bounded() {
        let mut w = Window::new(1_000_000);
        w.record(5, 0);
        for minute in 1..100 {
            w.record(100, minute * SLOT_SECS);
        }
        assert!(w.slots.len() <= SLOTS);
        let d = w.distribution(99 * SLOT_SECS);
        assert_eq!(d.p50, 100);
        assert_eq!(d.count, SLOTS as u64);
        // Much later, nothing is left in the window.
        assert_eq!(w.distribution(1_000 * SLOT_SECS).count, 0);
    }

    #[test]
    fn histogram_buckets_count_values_at_or_below_each_bound_cumulatively() {
        let h = LatencyHistogram::default();
        // On a bound counts in that bucket (Prometheus: le means <=).
        let values = [0, 100, 101, 500, 7_000, 10_000_000, 10_000_001, u64::from(u32::MAX)];
        for micros in values {
            h.record(micros);
        }
        let c = h.read();
        assert_eq!(c.count, 8);
        assert_eq!(c.at_or_below[0], 2, "0 and 100 at or below 0.1 ms: {c:?}");
        assert_eq!(c.at_or_below[1], 3, "101 by 0.25 ms: {c:?}");
        assert_eq!(c.at_or_below[2], 4, "500 by 0.5 ms: {c:?}");
        assert_eq!(c.at_or_below[5], 4, "nothing in (2.5 ms, 5 ms]: {c:?}");
        assert_eq!(c.at_or_below[6], 5, "7 ms by 10 ms: {c:?}");
        assert_eq!(c.at_or_below[LATENCY_BUCKETS_US.len() - 1], 6, "10 s by 10 s: {c:?}");
        assert!(c.at_or_below.windows(2).all(|w| w[0] <= w[1]), "{c:?}");
        assert_eq!(c.sum_us, values.iter().sum::<u64>());
    }

    #[test]
    fn mapping_connects_go_to_the_window_and_the_histogram() {
        let metrics = MappingMetrics::default();
        metrics.record_connect(1_200, 0);
        metrics.record_connect(30_000, 0);
        assert_eq!(metrics.samples().connect_latency_us.distribution(0).count, 2);
        let c = metrics.connect_latency.read();
        assert_eq!((c.count, c.at_or_below[3], c.at_or_below[4], c.sum_us), (2, 0, 1, 31_200));
    }

    #[test]
    fn throughput_samples_are_per_second_deltas() {
        let metrics = MappingMetrics::default();
        let mut samples = metrics.samples();
        metrics.counters.bytes.add_sent(1000);
        samples.sample(&metrics.counters, 1);
        metrics.counters.bytes.add_sent(500);
        metrics.counters.bytes.add_received(7);
        samples.sample(&metrics.counters, 2);
        assert_eq!(samples.throughput_in.iter().copied().collect::<Vec<_>>(), vec![1000, 500]);
        assert_eq!(samples.latest(), (500, 7));
        for s in 0..(SERIES_LEN as u64 + 10) {
            samples.sample(&metrics.counters, 3 + s);
        }
        assert_eq!(samples.throughput_in.len(), SERIES_LEN);
    }
}
