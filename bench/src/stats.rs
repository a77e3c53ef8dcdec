//! Latency histograms, error counts and the final report (text or one JSON object).
//!
//! Latencies are recorded in microseconds in HDR histograms (1 µs to 60 s, 3 significant
//! digits, about 140 KiB each): recording is a few nanoseconds and percentiles stay exact
//! to 0.1 % however long the run. Each loop thread keeps its own and they are added up at
//! the end, which is exact for HDR histograms.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;
use serde_json::{Value, json};

use crate::workload::PlacesStatus;

pub const HIGHEST_US: u64 = 60_000_000;
const SIGFIG: u8 = 3;

pub type Hist = Histogram<u64>;

pub fn histogram() -> Hist {
    // The bounds are constants that hdrhistogram accepts; this cannot fail.
    Histogram::new_with_bounds(1, HIGHEST_US, SIGFIG).expect("constant histogram bounds are valid")
}

/// Records a latency given in nanoseconds, rounded to the microsecond; below 1 µs counts
/// as 1 µs and above 60 s as 60 s.
pub fn record_ns(h: &mut Hist, ns: u64) {
    h.saturating_record((ns.saturating_add(500) / 1000).clamp(1, HIGHEST_US));
}

/// Adds `from` into `into`. Both come from `histogram()`, so the ranges always agree.
pub fn merge(into: &mut Hist, from: &Hist) {
    if into.add(from).is_err() {
        // Unreachable with equal bounds; fall back to re-recording value by value.
        for v in from.iter_recorded() {
            into.saturating_record_n(v.value_iterated_to(), v.count_at_value());
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Errors {
    /// `? ...` answers to requests loadgen believes valid.
    pub error_reply: u64,
    /// WHATSAT answers whose status is not OK or ZERO_RESULTS, by status.
    pub places: PlacesErrors,
    /// Replies the protocol does not allow for the request.
    pub malformed: u64,
    /// Connections that failed, were refused or were closed by the server.
    pub connection: u64,
    /// Requests outstanding longer than --timeout.
    pub timeout: u64,
}

impl Errors {
    pub fn total(&self) -> u64 {
        self.error_reply + self.places.total() + self.malformed + self.connection + self.timeout
    }

    pub fn add(&mut self, o: &Errors) {
        self.error_reply += o.error_reply;
        self.places.add(&o.places);
        self.malformed += o.malformed;
        self.connection += o.connection;
        self.timeout += o.timeout;
    }

    pub fn describe(&self) -> String {
        let places = if self.places.total() > 0 {
            format!(", Places status {}", self.places.describe())
        } else {
            String::new()
        };
        format!(
            "{} (error replies {}{places}, malformed {}, connection {}, timeouts {})",
            self.total(),
            self.error_reply,
            self.malformed,
            self.connection,
            self.timeout
        )
    }
}

/// WHATSAT answers that came back without places, by status (JSON keys are the statuses).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PlacesErrors {
    #[serde(rename = "REQUEST_DENIED")]
    pub request_denied: u64,
    #[serde(rename = "OVER_QUERY_LIMIT")]
    pub over_query_limit: u64,
    #[serde(rename = "INVALID_REQUEST")]
    pub invalid_request: u64,
    #[serde(rename = "UNKNOWN_ERROR")]
    pub unknown_error: u64,
    /// Any other status.
    pub other: u64,
}

impl PlacesErrors {
    pub fn count(&mut self, s: PlacesStatus) {
        *match s {
            PlacesStatus::RequestDenied => &mut self.request_denied,
            PlacesStatus::OverQueryLimit => &mut self.over_query_limit,
            PlacesStatus::InvalidRequest => &mut self.invalid_request,
            PlacesStatus::UnknownError => &mut self.unknown_error,
            PlacesStatus::Other => &mut self.other,
        } += 1;
    }

    fn by_status(&self) -> [(&'static str, u64); 5] {
        [
            ("REQUEST_DENIED", self.request_denied),
            ("OVER_QUERY_LIMIT", self.over_query_limit),
            ("INVALID_REQUEST", self.invalid_request),
            ("UNKNOWN_ERROR", self.unknown_error),
            ("other", self.other),
        ]
    }

    pub fn total(&self) -> u64 {
        self.by_status().iter().map(|(_, n)| n).sum()
    }

    pub fn add(&mut self, o: &PlacesErrors) {
        self.request_denied += o.request_denied;
        self.over_query_limit += o.over_query_limit;
        self.invalid_request += o.invalid_request;
        self.unknown_error += o.unknown_error;
        self.other += o.other;
    }

    /// The statuses seen, e.g. `REQUEST_DENIED 12, UNKNOWN_ERROR 1`.
    pub fn describe(&self) -> String {
        let seen: Vec<String> = self
            .by_status()
            .iter()
            .filter(|(_, n)| *n > 0)
            .map(|(s, n)| format!("{s} {n}"))
            .collect();
        seen.join(", ")
    }
}

/// The figures every report shows, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p99_9: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(h: &Hist) -> Summary {
        let q = |p: f64| if h.is_empty() { 0 } else { h.value_at_quantile(p) };
        Summary {
            count: h.len(),
            mean: if h.is_empty() {
                0.0
            } else {
                (h.mean() * 10.0).round() / 10.0
            },
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p99_9: q(0.999),
            max: if h.is_empty() { 0 } else { h.max() },
        }
    }

    pub fn text(&self) -> String {
        format!(
            "p50 {} ms  p90 {}  p99 {}  p99.9 {}  max {}  mean {}",
            ms(self.p50),
            ms(self.p90),
            ms(self.p99),
            ms(self.p99_9),
            ms(self.max),
            ms(self.mean.round() as u64)
        )
    }
}

/// Percentile points for a latency chart: `[[percentile, µs], ...]`.
pub fn spectrum(h: &Hist) -> Vec<(f64, u64)> {
    const POINTS: [f64; 13] = [
        0.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.5, 99.9, 99.95, 99.99, 100.0,
    ];
    if h.is_empty() {
        return Vec::new();
    }
    POINTS
        .iter()
        .map(|&p| {
            (
                p,
                if p >= 100.0 {
                    h.max()
                } else {
                    h.value_at_percentile(p)
                },
            )
        })
        .collect()
}

/// A denser spectrum for a plot (`--svg`): eight points a decade of 1/(1-p), from 0 % to
/// 99.999 %, then the maximum.
pub fn plot_points(h: &Hist) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut v: Vec<(f64, u64)> = (0..=40)
        .map(|k| {
            let p = 100.0 * (1.0 - 10f64.powf(-(k as f64) / 8.0));
            (p, h.value_at_percentile(p))
        })
        .collect();
    v.push((100.0, h.max()));
    v
}

/// Microseconds as milliseconds with three decimals: `0.087`.
pub fn ms(us: u64) -> String {
    format!("{}.{:03}", us / 1000, us % 1000)
}

/// What a load run (every workload but propagation) measured.
pub struct LoadReport {
    /// The run's parameters, echoed in the JSON.
    pub params: Value,
    /// One line describing the set-up, e.g. "iamat, closed loop, 50 connections x 1".
    pub title: String,
    pub duration_s: f64,
    pub hist: Hist,
    pub errors: Errors,
    pub warmup_errors: Errors,
    /// Open loop only: how late requests left (intended → actual send).
    pub lateness: Option<Hist>,
    /// Open loop only: requests due before the end that were never sent (loadgen fell
    /// behind by more than the run).
    pub unsent: u64,
    /// Requests still unanswered when the hard stop hit.
    pub outstanding: u64,
    pub aborted: bool,
    pub idle: Option<IdleReport>,
    /// What the figures alone would hide (see warnings.rs).
    pub warnings: Vec<String>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct IdleReport {
    pub opened: usize,
    pub still_open: usize,
}

impl LoadReport {
    pub fn throughput(&self) -> f64 {
        if self.duration_s > 0.0 {
            self.hist.len() as f64 / self.duration_s
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Value {
        let s = Summary::of(&self.hist);
        let mut v = json!({
            "params": self.params,
            "duration_s": self.duration_s,
            "requests": s.count,
            "throughput": (self.throughput() * 10.0).round() / 10.0,
            "latency_us": s,
            "percentiles_us": spectrum(&self.hist),
            "errors": self.errors,
            "errors_total": self.errors.total(),
            "warmup_errors": self.warmup_errors,
            "outstanding_at_stop": self.outstanding,
            "aborted": self.aborted,
            "warnings": self.warnings,
        });
        if let Some(l) = &self.lateness {
            v["send_lateness_us"] = json!(Summary::of(l));
            v["unsent"] = json!(self.unsent);
        }
        if let Some(i) = &self.idle {
            v["idle"] = json!(i);
        }
        v
    }

    pub fn text(&self) -> String {
        let s = Summary::of(&self.hist);
        let mut t = String::new();
        let _ = writeln!(t, "loadgen: {}", self.title);
        let _ = writeln!(
            t,
            "  requests  {} in {:.2} s = {:.0} req/s",
            s.count,
            self.duration_s,
            self.throughput()
        );
        let _ = writeln!(t, "  latency   {}", s.text());
        let _ = writeln!(t, "  errors    {}", self.errors.describe());
        if self.warmup_errors.total() > 0 {
            let _ = writeln!(
                t,
                "  (warm-up errors, not counted: {})",
                self.warmup_errors.describe()
            );
        }
        if let Some(l) = &self.lateness {
            let l = Summary::of(l);
            let _ = writeln!(
                t,
                "  sending   late by p50 {} ms, p99 {}, max {} (included in the latencies)",
                ms(l.p50),
                ms(l.p99),
                ms(l.max)
            );
            if self.unsent > 0 {
                let _ = writeln!(
                    t,
                    "  WARNING: loadgen fell behind: {} requests due were never sent",
                    self.unsent
                );
            }
        }
        if let Some(i) = &self.idle {
            let _ = writeln!(
                t,
                "  idle      {} connections opened, {} still open at the end",
                i.opened, i.still_open
            );
        }
        if self.aborted {
            let _ = writeln!(
                t,
                "  ABORTED at the hard stop; {} requests still outstanding",
                self.outstanding
            );
        }
        for w in &self.warnings {
            let _ = writeln!(t, "  WARNING: {w}");
        }
        t
    }
}

/// What a propagation run measured.
pub struct PropReport {
    pub params: Value,
    pub title: String,
    pub trials: u64,
    pub hist: Hist,
    pub errors: Errors,
    /// WHATSAT polls sent to the receiving server, over all trials.
    pub polls: u64,
    pub aborted: bool,
    pub idle: Option<IdleReport>,
}

impl PropReport {
    pub fn json(&self) -> Value {
        let mut v = json!({
            "params": self.params,
            "trials": self.trials,
            "propagated": self.hist.len(),
            "latency_us": Summary::of(&self.hist),
            "percentiles_us": spectrum(&self.hist),
            "polls": self.polls,
            "errors": self.errors,
            "errors_total": self.errors.total(),
            "aborted": self.aborted,
        });
        if let Some(i) = &self.idle {
            v["idle"] = json!(i);
        }
        v
    }

    pub fn text(&self) -> String {
        let s = Summary::of(&self.hist);
        let mut t = String::new();
        let _ = writeln!(t, "loadgen: {}", self.title);
        let per = if s.count > 0 {
            self.polls as f64 / self.trials.max(1) as f64
        } else {
            0.0
        };
        let _ = writeln!(
            t,
            "  trials    {} ({} propagated; {:.1} polls per trial)",
            self.trials, s.count, per
        );
        let _ = writeln!(t, "  latency   {}", s.text());
        let _ = writeln!(t, "  errors    {}", self.errors.describe());
        if let Some(i) = &self.idle {
            let _ = writeln!(
                t,
                "  idle      {} connections opened, {} still open at the end",
                i.opened, i.still_open
            );
        }
        if self.aborted {
            let _ = writeln!(t, "  ABORTED at the hard stop");
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_in_microseconds_with_clamping() {
        let mut h = histogram();
        record_ns(&mut h, 1_499); // 1 µs
        record_ns(&mut h, 200); // below 1 µs counts as 1
        record_ns(&mut h, 250_000); // 250 µs
        record_ns(&mut h, 3_600_000_000_000); // an hour: clamped to 60 s
        assert_eq!(h.len(), 4);
        assert_eq!(h.min(), 1);
        assert!(h.equivalent(h.max(), HIGHEST_US));
        assert_eq!(h.count_at(250), 1);
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = histogram();
        for us in 1..=1000u64 {
            record_ns(&mut h, us * 1000);
        }
        let s = Summary::of(&h);
        assert_eq!(s.count, 1000);
        assert_eq!(s.p50, 500);
        assert_eq!(s.p90, 900);
        assert_eq!(s.p99, 990);
        assert_eq!(s.p99_9, 999);
        assert_eq!(s.max, 1000);
        assert!((s.mean - 500.5).abs() < 1.0);
        let sp = spectrum(&h);
        assert_eq!(sp.first(), Some(&(0.0, 1)));
        assert_eq!(sp.last(), Some(&(100.0, 1000)));
    }

    #[test]
    fn empty_histogram_summarises_to_zeros() {
        let s = Summary::of(&histogram());
        assert_eq!((s.count, s.p99, s.max), (0, 0, 0));
        assert!(spectrum(&histogram()).is_empty());
    }

    #[test]
    fn merge_across_threads_is_exact() {
        // Two threads: one fast, one with a slow tail. The merge must equal one histogram
        // that saw every sample.
        let (mut a, mut b, mut all) = (histogram(), histogram(), histogram());
        for i in 0..9_000u64 {
            record_ns(&mut a, 40_000 + i);
            record_ns(&mut all, 40_000 + i);
        }
        for i in 0..1_000u64 {
            record_ns(&mut b, 5_000_000 + i * 1000);
            record_ns(&mut all, 5_000_000 + i * 1000);
        }
        let mut merged = histogram();
        merge(&mut merged, &a);
        merge(&mut merged, &b);
        assert_eq!(merged, all);
        let s = Summary::of(&merged);
        assert_eq!(s.count, 10_000);
        assert!(s.p50 < 100 && s.p99 >= 5_000, "{s:?}");
    }

    #[test]
    fn ms_formatting_and_errors() {
        assert_eq!(ms(87), "0.087");
        assert_eq!(ms(12_345), "12.345");
        let mut e = Errors {
            error_reply: 1,
            timeout: 2,
            ..Errors::default()
        };
        e.add(&Errors {
            malformed: 3,
            connection: 4,
            ..Errors::default()
        });
        assert_eq!(e.total(), 10);
        assert_eq!(
            e.describe(),
            "10 (error replies 1, malformed 3, connection 4, timeouts 2)"
        );
    }
}
