//! Counters the Places pool keeps for the admin endpoint (SPEC §8): relaxed atomics,
//! bumped by the workers and the reactor, read from any thread without a lock.

use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

pub use super::sched::BreakerState;

/// Final statuses of lookups that reached the upstream; anything else Google may send
/// (a legacy status herd does not know) counts as "OTHER".
pub const STATUSES: [&str; 7] = [
    "OK",
    "ZERO_RESULTS",
    "INVALID_REQUEST",
    "REQUEST_DENIED",
    "OVER_QUERY_LIMIT",
    "UNKNOWN_ERROR",
    "OTHER",
];

/// Upper bounds (seconds) of the lookup latency histogram's buckets; `+Inf` is implied.
pub const LATENCY_BUCKETS: [f64; 10] = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

const R: Ordering = Ordering::Relaxed;

#[derive(Default)]
pub struct PlacesCounters {
    calls: [AtomicU64; STATUSES.len()],
    attempts: AtomicU64,
    retries: AtomicU64,
    rate_limited: AtomicU64,
    breaker_refused: AtomicU64,
    busy: AtomicU64,
    shared: AtomicU64,
    breaker: AtomicU8,
    breaker_opened: AtomicU64,
    queue_depth: AtomicU64,
    in_flight: AtomicU64,
    /// Per bucket, not cumulative (the last one is +Inf); `snapshot` sums them.
    latency: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    latency_sum_us: AtomicU64,
}

/// One reading of every counter.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacesStats {
    /// Lookups answered from the upstream, by final status (after retries), in
    /// `STATUSES` order.
    pub calls: Vec<(&'static str, u64)>,
    /// HTTP requests sent upstream (first tries and retries).
    pub attempts: u64,
    pub retries: u64,
    /// Lookups answered OVER_QUERY_LIMIT at once because of `places.max_rps`.
    pub rate_limited: u64,
    /// Lookups answered "Places upstream unavailable" at once by the breaker.
    pub breaker_refused: u64,
    /// Lookups answered "server busy" because the queue was full.
    pub busy: u64,
    /// Lookups that joined an identical one instead of making a call.
    pub shared: u64,
    pub breaker: BreakerState,
    pub breaker_opened: u64,
    /// Calls waiting for a worker.
    pub queue_depth: u64,
    /// Calls a worker is making now.
    pub in_flight: u64,
    /// Prometheus-style cumulative buckets: (upper bound in seconds, lookups at most that
    /// long); the last bound is `f64::INFINITY` and its count is `latency_count`.
    pub latency: Vec<(f64, u64)>,
    pub latency_count: u64,
    pub latency_sum_seconds: f64,
}

impl PlacesCounters {
    pub fn snapshot(&self) -> PlacesStats {
        let calls = STATUSES
            .iter()
            .zip(&self.calls)
            .map(|(s, c)| (*s, c.load(R)))
            .collect();
        let bounds = LATENCY_BUCKETS.iter().copied().chain([f64::INFINITY]);
        let mut total = 0;
        let latency: Vec<(f64, u64)> = bounds
            .zip(&self.latency)
            .map(|(b, c)| {
                total += c.load(R);
                (b, total)
            })
            .collect();
        let breaker = match self.breaker.load(R) {
            1 => BreakerState::Open,
            2 => BreakerState::Probing,
            _ => BreakerState::Closed,
        };
        PlacesStats {
            calls,
            attempts: self.attempts.load(R),
            retries: self.retries.load(R),
            rate_limited: self.rate_limited.load(R),
            breaker_refused: self.breaker_refused.load(R),
            busy: self.busy.load(R),
            shared: self.shared.load(R),
            breaker,
            breaker_opened: self.breaker_opened.load(R),
            queue_depth: self.queue_depth.load(R),
            in_flight: self.in_flight.load(R),
            latency,
            latency_count: total,
            latency_sum_seconds: self.latency_sum_us.load(R) as f64 / 1e6,
        }
    }

    pub(super) fn answered(&self, status: &str, took: Duration) {
        let i = STATUSES
            .iter()
            .position(|s| *s == status)
            .unwrap_or(STATUSES.len() - 1);
        self.calls[i].fetch_add(1, R);
        let secs = took.as_secs_f64();
        let b = LATENCY_BUCKETS
            .iter()
            .position(|&le| secs <= le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.latency[b].fetch_add(1, R);
        let us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.latency_sum_us.fetch_add(us, R);
    }

    pub(super) fn attempt(&self) {
        self.attempts.fetch_add(1, R);
    }

    pub(super) fn retry(&self) {
        self.retries.fetch_add(1, R);
    }

    pub(super) fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, R);
    }

    pub(super) fn breaker_refused(&self) {
        self.breaker_refused.fetch_add(1, R);
    }

    pub(super) fn busy(&self) {
        self.busy.fetch_add(1, R);
    }

    pub(super) fn shared(&self) {
        self.shared.fetch_add(1, R);
    }

    pub(super) fn set_breaker(&self, s: BreakerState, opened: bool) {
        let v = match s {
            BreakerState::Closed => 0,
            BreakerState::Open => 1,
            BreakerState::Probing => 2,
        };
        self.breaker.store(v, R);
        if opened {
            self.breaker_opened.fetch_add(1, R);
        }
    }

    pub(super) fn set_queue_depth(&self, n: usize) {
        self.queue_depth.store(n as u64, R);
    }

    pub(super) fn in_flight(&self, delta: i64) {
        if delta >= 0 {
            self.in_flight.fetch_add(delta.unsigned_abs(), R);
        } else {
            self.in_flight.fetch_sub(delta.unsigned_abs(), R);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_is_cumulative_and_statuses_fall_back_to_other() {
        let c = PlacesCounters::default();
        c.answered("OK", Duration::from_millis(5));
        c.answered("OK", Duration::from_millis(200));
        c.answered("NOT_A_STATUS", Duration::from_secs(30));
        let s = c.snapshot();
        assert_eq!(s.calls[0], ("OK", 2));
        assert_eq!(s.calls[6], ("OTHER", 1));
        assert_eq!(s.latency[0], (0.01, 1));
        assert_eq!(s.latency[4], (0.25, 2));
        assert_eq!(s.latency[9], (10.0, 2));
        assert_eq!(s.latency[10], (f64::INFINITY, 3));
        assert_eq!(s.latency_count, 3);
        assert!((s.latency_sum_seconds - 30.205).abs() < 1e-6);
    }
}
