//! Open-loop schedule maths (wrk2-style): request k of a run has a fixed intended send time,
//! whatever happens to the requests before it.
//!
//! A total rate R split over S shares (threads) gives share i the times
//! `(k·S + i) / R` for k = 0, 1, 2, ..., so the shares interleave into one evenly spaced
//! stream. Latency is measured from the intended time, not from when the request actually
//! left: if the server (or loadgen) stalls, the requests that should have gone out during
//! the stall are sent late and their latency includes the wait, instead of the stall
//! hiding behind a few slow samples (coordinated omission). Pure; all times are
//! nanoseconds since the start of the run.

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests per second across all shares.
    rate: f64,
    shares: u64,
    index: u64,
}

impl Schedule {
    /// Share `index` of `shares` of a total `rate` (requests/s, > 0).
    pub fn share(rate: f64, shares: u64, index: u64) -> Self {
        let shares = shares.max(1);
        Schedule {
            rate,
            shares,
            index: index.min(shares - 1),
        }
    }

    /// The intended send time of this share's k-th request (k from 0).
    pub fn intended(&self, k: u64) -> u64 {
        let slot = k.saturating_mul(self.shares).saturating_add(self.index);
        (slot as f64 * 1e9 / self.rate) as u64
    }

    /// How many of this share's requests are intended strictly before `t` (so the run
    /// sends requests `0..count_before(end)`).
    pub fn count_before(&self, t: u64) -> u64 {
        // Estimate in floating point, then settle the boundary with `intended` itself so the
        // two can never disagree.
        let slots = t as f64 * self.rate / 1e9;
        let mut k = ((slots - self.index as f64) / self.shares as f64).ceil().max(0.0) as u64;
        while k > 0 && self.intended(k - 1) >= t {
            k -= 1;
        }
        while self.intended(k) < t {
            k += 1;
        }
        k
    }
}

/// How late a request left: actual send time − intended time (0 if it was on time).
pub fn lateness(intended: u64, sent: u64) -> u64 {
    sent.saturating_sub(intended)
}

/// The latency recorded for a reply: from the intended send time, so time spent waiting to
/// be sent counts (coordinated-omission correction). In the closed loop the intended time
/// is the send time.
pub fn latency(intended: u64, replied: u64) -> u64 {
    replied.saturating_sub(intended)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn one_share_is_evenly_spaced() {
        let s = Schedule::share(1000.0, 1, 0);
        assert_eq!(s.intended(0), 0);
        assert_eq!(s.intended(1), MS);
        assert_eq!(s.intended(2500), 2500 * MS);
        assert_eq!(s.count_before(0), 0);
        assert_eq!(s.count_before(1), 1);
        assert_eq!(s.count_before(MS), 1);
        assert_eq!(s.count_before(MS + 1), 2);
        assert_eq!(s.count_before(1000 * MS), 1000); // one second at 1000/s
    }

    #[test]
    fn shares_interleave_into_the_total_rate() {
        let rate = 20_000.0;
        let shares: Vec<_> = (0..3).map(|i| Schedule::share(rate, 3, i)).collect();
        let mut all: Vec<u64> = shares
            .iter()
            .flat_map(|s| (0..1000).map(|k| s.intended(k)))
            .collect();
        all.sort_unstable();
        // 3000 requests, 50 µs apart, no two at once.
        for (n, t) in all.iter().enumerate() {
            assert!(t.abs_diff(n as u64 * 50_000) <= 1, "request {n} at {t}");
        }
        let second = 1_000 * MS;
        let total: u64 = shares.iter().map(|s| s.count_before(second)).sum();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn count_before_agrees_with_intended() {
        for &rate in &[1.0, 3.0, 7_777.7, 20_000.0, 1e6] {
            for shares in 1..4 {
                for index in 0..shares {
                    let s = Schedule::share(rate, shares, index);
                    for t in [0, 1, 999, MS, 123_456_789, 10_000 * MS] {
                        let k = s.count_before(t);
                        assert!(k == 0 || s.intended(k - 1) < t);
                        assert!(s.intended(k) >= t);
                    }
                }
            }
        }
    }

    #[test]
    fn fractional_rates() {
        let s = Schedule::share(0.5, 1, 0); // one request every two seconds
        assert_eq!(s.intended(3), 6_000 * MS);
        assert_eq!(s.count_before(5_000 * MS), 3);
    }

    #[test]
    fn lateness_and_latency() {
        assert_eq!(lateness(10, 15), 5);
        assert_eq!(lateness(10, 9), 0);
        assert_eq!(latency(10, 30), 20);
        assert_eq!(latency(30, 10), 0);
    }

    /// A server that stalls 100 ms: with the schedule, every request that fell due during the
    /// stall is charged the time it waited, so the stall shows in the high percentiles.
    /// Timing from the actual send (the closed-loop view) would report one slow request and
    /// a hundred fast ones.
    #[test]
    fn coordinated_omission_is_corrected() {
        let s = Schedule::share(1000.0, 1, 0);
        let rtt = 50_000; // 50 µs
        let stall_until = 100 * MS;
        let (mut corrected, mut naive) = (Vec::new(), Vec::new());
        let mut free_at = 0; // one connection, one request at a time
        for k in 0..200 {
            let intended = s.intended(k);
            let sent = intended.max(free_at);
            let replied = if sent < stall_until {
                stall_until + rtt
            } else {
                sent + rtt
            };
            free_at = replied;
            corrected.push(latency(intended, replied));
            naive.push(replied - sent);
            assert_eq!(lateness(intended, sent), sent - intended);
        }
        let over = |v: &[u64], t: u64| v.iter().filter(|&&l| l > t).count();
        // Corrected: the first ~100 requests all waited for the stall (decreasing from
        // 100 ms); 50 of them waited more than 50 ms.
        assert_eq!(corrected[0], 100 * MS + rtt);
        assert!(over(&corrected, 50 * MS) >= 50);
        // Naive: only the request in flight during the stall looks slow.
        assert_eq!(over(&naive, 50 * MS), 1);
    }
}
