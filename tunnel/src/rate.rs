//! Rate limits: a pure token bucket ([`TokenBucket`], time passed in), and
//! [`RateLimiter`], one bucket shared by every connection of a mapping in
//! one direction.
//!
//! Fairness: callers queue on a FIFO lock and each takes at most
//! [`QUANTUM`] bytes per turn, so connections of one mapping take turns
//! and share its limit about equally. A limited connection reads only what
//! it was granted, so it slows through flow control: nothing is buffered
//! beyond one grant, nothing is dropped.

use std::time::Duration;

use tokio::time::Instant;

/// Most bytes one turn grants: small enough that connections interleave
/// finely, large enough to keep frames efficient.
pub const QUANTUM: usize = 16 * 1024;

/// A token bucket of `rate` tokens per second holding at most `burst`.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    /// A full bucket at `now`. `rate` and `burst` are at least 1.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Self {
        let (rate, burst) = (rate.max(1) as f64, burst.max(1) as f64);
        Self { rate, burst, tokens: burst, at: now }
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
    }

    /// Takes up to `want` whole tokens (at least one) at `now`: how many,
    /// or, when not one is there, how long until one is.
    ///
    /// # Errors
    /// The wait, when the bucket is empty.
    pub fn take(&mut self, want: u64, now: Instant) -> Result<u64, Duration> {
        self.refill(now);
        if self.tokens < 1.0 {
            return Err(Duration::from_secs_f64((1.0 - self.tokens) / self.rate));
        }
        let granted = (want.max(1) as f64).min(self.tokens.floor());
        self.tokens -= granted;
        Ok(granted as u64)
    }

    /// Takes exactly one token if there is one (a connection attempt).
    pub fn try_take_one(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// A new rate and burst from `now` on, keeping what it holds (up to
    /// the new burst).
    pub fn set_rate(&mut self, rate: u64, burst: u64, now: Instant) {
        self.refill(now);
        self.rate = rate.max(1) as f64;
        self.burst = burst.max(1) as f64;
        self.tokens = self.tokens.min(self.burst);
    }

    /// Puts back `n` tokens taken but not used (up to the burst).
    pub fn give_back(&mut self, n: u64) {
        self.tokens = (self.tokens + n as f64).min(self.burst);
    }

    /// Whether the bucket is full at `now` (an idle client's can go).
    pub fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.tokens >= self.burst
    }
}

/// 20 ms' worth of `rate`, at least one [`QUANTUM`].
fn burst_of(rate: u64) -> u64 {
    (rate / 50).max(QUANTUM as u64)
}

/// A byte rate shared by many connections (a mapping's, one direction).
#[derive(Debug)]
pub struct RateLimiter {
    /// Held across the wait for tokens: the next caller waits its turn
    /// behind it (tokio's mutex is FIFO).
    turn: tokio::sync::Mutex<()>,
    bucket: std::sync::Mutex<TokenBucket>,
    /// Bytes per second.
    rate: std::sync::atomic::AtomicU64,
    /// Turns that had to wait for tokens: how often the limit bit.
    throttled: std::sync::atomic::AtomicU64,
}

impl RateLimiter {
    /// `rate` bytes per second, with a burst of 20 ms' worth (at least one
    /// [`QUANTUM`]): over a few seconds the rate holds within about 1 %.
    pub fn new(rate: u64) -> Self {
        Self {
            turn: tokio::sync::Mutex::new(()),
            bucket: std::sync::Mutex::new(TokenBucket::new(rate, burst_of(rate), Instant::now())),
            rate: std::sync::atomic::AtomicU64::new(rate),
            throttled: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Waits for this connection's turn and for tokens; returns how many
    /// bytes it may move now, at most `want` and [`QUANTUM`].
    pub async fn grant(&self, want: usize) -> usize {
        let want = want.clamp(1, QUANTUM) as u64;
        let _turn = self.turn.lock().await;
        let mut waited = false;
        loop {
            let taken = self.bucket().take(want, Instant::now());
            match taken {
                Ok(n) => {
                    if waited {
                        self.throttled.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                    return n as usize;
                }
                Err(wait) => {
                    waited = true;
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// The rate, bytes per second.
    pub fn rate(&self) -> u64 {
        self.rate.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Changes the rate for every connection sharing the limiter, from the
    /// next grant on.
    pub fn set_rate(&self, rate: u64) {
        self.rate.store(rate, std::sync::atomic::Ordering::Relaxed);
        self.bucket().set_rate(rate, burst_of(rate), Instant::now());
    }

    fn bucket(&self) -> std::sync::MutexGuard<'_, TokenBucket> {
        self.bucket.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Returns `n` granted bytes that were not moved (a read that found
    /// less than it was granted).
    pub fn give_back(&self, n: usize) {
        if n > 0 {
            self.bucket().give_back(n as u64);
        }
    }

    /// Turns that waited for the limit so far.
    pub fn throttled(&self) -> u64 {
        self.throttled.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_grants_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.take(150, t0), Ok(100), "the burst");
        let wait = b.take(1, t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(1), "one token at 1000/s");
        assert_eq!(b.take(500, t0 + Duration::from_millis(50)), Ok(50));
        assert_eq!(b.take(500, t0 + Duration::from_secs(10)), Ok(100), "never over the burst");
    }

    #[test]
    fn over_a_long_run_the_grants_add_up_to_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(10_000, 1_000, t0);
        let (mut now, mut total) = (t0, 0u64);
        while now < t0 + Duration::from_secs(10) {
            match b.take(700, now) {
                Ok(n) => total += n,
                Err(wait) => now += wait,
            }
        }
        // 10 s at 10,000/s plus the first burst.
        assert!((100_000..=101_000 + 700).contains(&total), "{total}");
    }

    #[test]
    fn a_new_rate_applies_from_now_and_keeps_what_the_bucket_holds() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1000, 100, t0);
        assert_eq!(b.take(60, t0), Ok(60));
        b.set_rate(10, 20, t0);
        assert_eq!(b.take(100, t0), Ok(20), "capped at the new burst");
        assert_eq!(b.take(1, t0).unwrap_err(), Duration::from_millis(100), "one at 10/s");
    }

    #[test]
    fn connection_attempts_take_one_token_each() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2, 2, t0);
        assert!(b.try_take_one(t0) && b.try_take_one(t0));
        assert!(!b.try_take_one(t0), "the third within the second");
        assert!(b.try_take_one(t0 + Duration::from_millis(500)));
        assert!(!b.is_full(t0 + Duration::from_millis(500)));
        assert!(b.is_full(t0 + Duration::from_secs(5)));
    }

    #[tokio::test(start_paused = true)]
    async fn connections_sharing_a_limiter_take_turns() {
        let limiter = std::sync::Arc::new(RateLimiter::new(160 * 1024));
        let moved: Vec<_> = (0..2)
            .map(|_| {
                let limiter = std::sync::Arc::clone(&limiter);
                tokio::spawn(async move {
                    let mut total = 0;
                    let until = Instant::now() + Duration::from_secs(5);
                    while Instant::now() < until {
                        total += limiter.grant(64 * 1024).await;
                    }
                    total
                })
            })
            .collect();
        let mut totals = Vec::new();
        for m in moved {
            totals.push(m.await.unwrap());
        }
        let (a, b) = (totals[0] as f64, totals[1] as f64);
        assert!((a / b - 1.0).abs() < 0.1, "each about half: {totals:?}");
        let sum = a + b;
        assert!((sum / (5.0 * 160.0 * 1024.0) - 1.0).abs() < 0.1, "the limit in all: {sum}");
        assert!(limiter.throttled() > 0);
    }
}
