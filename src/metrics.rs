//! The server's counters (SPEC §8) and their Prometheus text rendering.
//!
//! The reactor bumps these as it works: every field is an atomic touched with a relaxed
//! `fetch_add`/`store`, no lock and no allocation on the hot path. Relaxed is enough
//! because each counter is read on its own: a scrape may see `accepted` one ahead of
//! `open`, which no monitoring query can tell from a scrape taken a moment later. The
//! admin thread (src/admin.rs) reads them through the shared `Arc<Metrics>` and renders
//! the text there, so a scrape costs the reactor nothing but the cache lines it shares.
//! The Places pool keeps its own counters; it is shown through a `PlacesView` that the
//! caller builds at scrape time.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// What kind of client message a line was (`herd_messages_total{kind}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MessageKind {
    Iamat,
    Whatsat,
    Invalid,
}

impl MessageKind {
    const ALL: [MessageKind; 3] = [MessageKind::Iamat, MessageKind::Whatsat, MessageKind::Invalid];

    fn label(self) -> &'static str {
        match self {
            MessageKind::Iamat => "IAMAT",
            MessageKind::Whatsat => "WHATSAT",
            MessageKind::Invalid => "invalid",
        }
    }
}

/// What became of a record offered to the table (`herd_records_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordOutcome {
    New,
    NotNewer,
    Malformed,
    TooFarAhead,
    Expired,
}

impl RecordOutcome {
    const ALL: [RecordOutcome; 5] = [
        RecordOutcome::New,
        RecordOutcome::NotNewer,
        RecordOutcome::Malformed,
        RecordOutcome::TooFarAhead,
        RecordOutcome::Expired,
    ];

    fn label(self) -> &'static str {
        match self {
            RecordOutcome::New => "new",
            RecordOutcome::NotNewer => "not_newer",
            RecordOutcome::Malformed => "malformed",
            RecordOutcome::TooFarAhead => "too_far_ahead",
            RecordOutcome::Expired => "expired",
        }
    }
}

/// Which of the two connections of a neighbour link: the one we dial or the one it dials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Out,
    In,
}

/// One neighbour's link counters.
#[derive(Debug)]
pub struct LinkMetrics {
    pub name: String,
    up_out: AtomicU64,
    up_in: AtomicU64,
    reconnects: AtomicU64,
    queued_bytes: AtomicU64,
    /// The outbound link has been up at least once, so its next coming up is a reconnect.
    been_up_out: AtomicBool,
}

impl LinkMetrics {
    pub fn set_up(&self, direction: Direction, up: bool) {
        let cell = match direction {
            Direction::Out => &self.up_out,
            Direction::In => &self.up_in,
        };
        cell.store(u64::from(up), Ordering::Relaxed);
    }

    pub fn is_up(&self, direction: Direction) -> bool {
        let cell = match direction {
            Direction::Out => &self.up_out,
            Direction::In => &self.up_in,
        };
        cell.load(Ordering::Relaxed) != 0
    }

    pub fn reconnected(&self) {
        self.reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// The bytes waiting in this link's output queue(s), as the reactor last saw them.
    pub fn set_queued_bytes(&self, bytes: usize) {
        self.queued_bytes.store(bytes as u64, Ordering::Relaxed);
    }
}

/// A neighbour's position in `Metrics::links`, in the order the names were given.
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkId(pub usize);

#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    connections_open: AtomicU64,
    connections_accepted: AtomicU64,
    connections_refused: AtomicU64,
    messages: [AtomicU64; 3],
    records: [AtomicU64; 5],
    records_forwarded: AtomicU64,
    table_clients: AtomicU64,
    log_bytes: AtomicU64,
    links: Vec<LinkMetrics>,
}

impl Metrics {
    /// Counters for a server with these neighbours (one `LinkMetrics` each, same order).
    pub fn new(neighbours: &[String]) -> Metrics {
        Metrics {
            started: Instant::now(),
            connections_open: AtomicU64::new(0),
            connections_accepted: AtomicU64::new(0),
            connections_refused: AtomicU64::new(0),
            messages: Default::default(),
            records: Default::default(),
            records_forwarded: AtomicU64::new(0),
            table_clients: AtomicU64::new(0),
            log_bytes: AtomicU64::new(0),
            links: neighbours
                .iter()
                .map(|name| LinkMetrics {
                    name: name.clone(),
                    up_out: AtomicU64::new(0),
                    up_in: AtomicU64::new(0),
                    reconnects: AtomicU64::new(0),
                    queued_bytes: AtomicU64::new(0),
                    been_up_out: AtomicBool::new(false),
                })
                .collect(),
        }
    }

    /// A client connection was accepted; it is counted open until `closed()`.
    pub fn accepted(&self) {
        self.connections_accepted.fetch_add(1, Ordering::Relaxed);
        self.connections_open.fetch_add(1, Ordering::Relaxed);
    }

    /// An accepted connection went away. Saturates at 0 so a stray extra call cannot wrap.
    pub fn closed(&self) {
        let _ = self
            .connections_open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }

    /// A connection was turned away (limit reached) without being served.
    pub fn refused(&self) {
        self.connections_refused.fetch_add(1, Ordering::Relaxed);
    }

    pub fn message(&self, kind: MessageKind) {
        self.messages[kind as usize].fetch_add(1, Ordering::Relaxed);
    }

    pub fn record(&self, outcome: RecordOutcome) {
        self.records[outcome as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A winning record was queued to `n` neighbours.
    pub fn forwarded(&self, n: usize) {
        self.records_forwarded.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn set_table_clients(&self, n: usize) {
        self.table_clients.store(n as u64, Ordering::Relaxed);
    }

    /// Neighbour `link`'s connection in `direction` came up. An outbound link that was up
    /// before counts as a reconnect: the first link-up after start is not one.
    pub fn link_up(&self, link: usize, direction: Direction) {
        let Some(l) = self.links.get(link) else {
            return;
        };
        l.set_up(direction, true);
        if direction == Direction::Out && l.been_up_out.swap(true, Ordering::Relaxed) {
            l.reconnected();
        }
    }

    /// Neighbour `link`'s connection in `direction` is down (or never came up).
    pub fn link_down(&self, link: usize, direction: Direction) {
        if let Some(l) = self.links.get(link) {
            l.set_up(direction, false);
        }
    }

    /// The log's byte count as the log file keeps it (it is written from several threads).
    pub fn set_log_bytes(&self, bytes: u64) {
        self.log_bytes.store(bytes, Ordering::Relaxed);
    }

    #[cfg(test)]
    pub fn link(&self, id: LinkId) -> Option<&LinkMetrics> {
        self.links.get(id.0)
    }

    pub fn links(&self) -> &[LinkMetrics] {
        &self.links
    }

    pub fn uptime_seconds(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }
}

/// The Places pool's figures at scrape time, built by whoever owns the pool.
#[derive(Clone, Debug, PartialEq)]
pub struct PlacesView {
    /// Calls by the status of their answer (`OK`, `ZERO_RESULTS`, ..., `UNKNOWN_ERROR`).
    pub calls_by_status: Vec<(&'static str, u64)>,
    pub queue_depth: u64,
    /// Histogram buckets: upper bound in seconds and the cumulative count at or below it,
    /// in increasing order, without `+Inf` (that is `duration_count`).
    pub duration_buckets: Vec<(f64, u64)>,
    pub duration_sum_seconds: f64,
    pub duration_count: u64,
    pub retries: u64,
    /// `closed`, `open` or `half_open`.
    pub breaker: &'static str,
}

/// The statuses a Places answer can have, shown at 0 before the first call.
#[cfg(test)]
pub const PLACES_STATUSES: [&str; 6] = [
    "OK",
    "ZERO_RESULTS",
    "INVALID_REQUEST",
    "OVER_QUERY_LIMIT",
    "REQUEST_DENIED",
    "UNKNOWN_ERROR",
];

const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];

impl PlacesView {
    /// A pool that has done nothing yet.
    #[cfg(test)]
    pub fn idle() -> PlacesView {
        PlacesView {
            calls_by_status: PLACES_STATUSES.iter().map(|s| (*s, 0)).collect(),
            queue_depth: 0,
            duration_buckets: [0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]
                .iter()
                .map(|le| (*le, 0))
                .collect(),
            duration_sum_seconds: 0.0,
            duration_count: 0,
            retries: 0,
            breaker: "closed",
        }
    }
}

impl PlacesView {
    /// The pool's counters as the exposition shows them: the `+Inf` bucket is implied by
    /// `_count`, and the breaker's `half-open` is spelt as a label value may be quoted
    /// without surprise (`half_open`).
    pub fn from_stats(s: &crate::places::stats::PlacesStats) -> PlacesView {
        use crate::places::stats::BreakerState;
        PlacesView {
            calls_by_status: s.calls.clone(),
            queue_depth: s.queue_depth,
            duration_buckets: s
                .latency
                .iter()
                .copied()
                .filter(|(le, _)| le.is_finite())
                .collect(),
            duration_sum_seconds: s.latency_sum_seconds,
            duration_count: s.latency_count,
            retries: s.retries,
            breaker: match s.breaker {
                BreakerState::Closed => "closed",
                BreakerState::Open => "open",
                BreakerState::Probing => "half_open",
            },
        }
    }
}

/// `/healthz` lines after `ok`: one per neighbour link and direction, `Bona out up`.
pub fn health_lines(m: &Metrics) -> String {
    let mut out = String::new();
    for link in &m.links {
        for (dir, d) in [(Direction::Out, "out"), (Direction::In, "in")] {
            let state = if link.is_up(dir) { "up" } else { "down" };
            let _ = writeln!(out, "{} {d} {state}", link.name);
        }
    }
    out
}

/// Appends the whole exposition (Prometheus text format 0.0.4) to `out`.
pub fn render(m: &Metrics, places: &PlacesView, out: &mut String) {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);

    family(out, "herd_up", "gauge", "1 while the server is serving.");
    out.push_str("herd_up 1\n");
    family(
        out,
        "herd_uptime_seconds",
        "gauge",
        "Seconds since the server started.",
    );
    let _ = writeln!(out, "herd_uptime_seconds {:.3}", m.uptime_seconds());
    simple(
        out,
        "herd_connections_open",
        "gauge",
        "Client connections open now.",
        load(&m.connections_open),
    );
    simple(
        out,
        "herd_connections_accepted_total",
        "counter",
        "Client connections accepted.",
        load(&m.connections_accepted),
    );
    simple(
        out,
        "herd_connections_refused_total",
        "counter",
        "Client connections turned away at the connection limit.",
        load(&m.connections_refused),
    );

    family(out, "herd_messages_total", "counter", "Client messages by kind.");
    for kind in MessageKind::ALL {
        let _ = writeln!(
            out,
            "herd_messages_total{{kind=\"{}\"}} {}",
            kind.label(),
            load(&m.messages[kind as usize])
        );
    }
    family(
        out,
        "herd_records_total",
        "counter",
        "Records from neighbours offered to the table, by outcome.",
    );
    for outcome in RecordOutcome::ALL {
        let _ = writeln!(
            out,
            "herd_records_total{{outcome=\"{}\"}} {}",
            outcome.label(),
            load(&m.records[outcome as usize])
        );
    }
    simple(
        out,
        "herd_records_forwarded_total",
        "counter",
        "Records queued to neighbours (one per neighbour sent to).",
        load(&m.records_forwarded),
    );
    simple(
        out,
        "herd_table_clients",
        "gauge",
        "Clients in the location table.",
        load(&m.table_clients),
    );

    family(
        out,
        "herd_link_up",
        "gauge",
        "1 if the neighbour link is up in that direction.",
    );
    for link in &m.links {
        for (dir, cell) in [("out", &link.up_out), ("in", &link.up_in)] {
            out.push_str("herd_link_up{neighbour=\"");
            escape_label(out, &link.name);
            let _ = writeln!(out, "\",direction=\"{dir}\"}} {}", load(cell));
        }
    }
    per_link(
        out,
        m,
        "herd_link_reconnects_total",
        "counter",
        "Times the outbound link to the neighbour came up again after being up.",
        |l| load(&l.reconnects),
    );
    per_link(
        out,
        m,
        "herd_link_queued_bytes",
        "gauge",
        "Bytes waiting to be sent to the neighbour.",
        |l| load(&l.queued_bytes),
    );

    family(
        out,
        "herd_places_calls_total",
        "counter",
        "Places lookups by the status of their answer.",
    );
    for (status, n) in &places.calls_by_status {
        out.push_str("herd_places_calls_total{status=\"");
        escape_label(out, status);
        let _ = writeln!(out, "\"}} {n}");
    }
    family(
        out,
        "herd_places_call_duration_seconds",
        "histogram",
        "Duration of upstream Places calls.",
    );
    for (le, n) in &places.duration_buckets {
        let _ = writeln!(
            out,
            "herd_places_call_duration_seconds_bucket{{le=\"{}\"}} {n}",
            Float(*le)
        );
    }
    let _ = writeln!(
        out,
        "herd_places_call_duration_seconds_bucket{{le=\"+Inf\"}} {}",
        places.duration_count
    );
    let _ = writeln!(
        out,
        "herd_places_call_duration_seconds_sum {}",
        Float(places.duration_sum_seconds)
    );
    let _ = writeln!(
        out,
        "herd_places_call_duration_seconds_count {}",
        places.duration_count
    );
    simple(
        out,
        "herd_places_queue_depth",
        "gauge",
        "Places lookups waiting for a worker.",
        places.queue_depth,
    );
    simple(
        out,
        "herd_places_retries_total",
        "counter",
        "Upstream Places calls retried.",
        places.retries,
    );
    family(
        out,
        "herd_places_breaker_state",
        "gauge",
        "1 for the Places circuit breaker's current state.",
    );
    for state in BREAKER_STATES {
        let on = u8::from(state == places.breaker);
        let _ = writeln!(out, "herd_places_breaker_state{{state=\"{state}\"}} {on}");
    }
    if !BREAKER_STATES.contains(&places.breaker) {
        out.push_str("herd_places_breaker_state{state=\"");
        escape_label(out, places.breaker);
        out.push_str("\"} 1\n");
    }
    simple(
        out,
        "herd_log_bytes_total",
        "counter",
        "Bytes written to the log.",
        load(&m.log_bytes),
    );
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

fn simple(out: &mut String, name: &str, kind: &str, help: &str, value: u64) {
    family(out, name, kind, help);
    let _ = writeln!(out, "{name} {value}");
}

fn per_link(
    out: &mut String,
    m: &Metrics,
    name: &str,
    kind: &str,
    help: &str,
    value: impl Fn(&LinkMetrics) -> u64,
) {
    family(out, name, kind, help);
    for link in &m.links {
        let _ = write!(out, "{name}{{neighbour=\"");
        escape_label(out, &link.name);
        let _ = writeln!(out, "\"}} {}", value(link));
    }
}

/// Label values escape `\`, `"` and newline (format 0.0.4); names come from herd.yml.
fn escape_label(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// A float as the format wants it: Rust's shortest round-trip form, but `+Inf`, `-Inf`
/// and `NaN` spelt as Prometheus spells them.
struct Float(f64);

impl std::fmt::Display for Float {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = self.0;
        if v.is_nan() {
            f.write_str("NaN")
        } else if v == f64::INFINITY {
            f.write_str("+Inf")
        } else if v == f64::NEG_INFINITY {
            f.write_str("-Inf")
        } else {
            write!(f, "{v}")
        }
    }
}

// One strict parser for the unit tests and tests/ops.rs.
#[cfg(test)]
#[path = "../tests/support/prom.rs"]
mod prom;

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use super::prom::{Sample, parse_strict};

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn rendered(m: &Metrics, p: &PlacesView) -> String {
        let mut out = String::new();
        render(m, p, &mut out);
        out
    }

    fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && l.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
            })
            .map(|s| s.2)
    }

    #[test]
    fn fresh_render_parses_strictly_and_names_everything_spec_lists() {
        let m = Metrics::new(&names(&["Bona", "Campbell"]));
        let text = rendered(&m, &PlacesView::idle());
        let samples = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        for family in [
            "herd_up",
            "herd_uptime_seconds",
            "herd_connections_open",
            "herd_connections_accepted_total",
            "herd_connections_refused_total",
            "herd_messages_total",
            "herd_records_total",
            "herd_records_forwarded_total",
            "herd_table_clients",
            "herd_link_up",
            "herd_link_reconnects_total",
            "herd_link_queued_bytes",
            "herd_places_calls_total",
            "herd_places_call_duration_seconds",
            "herd_places_queue_depth",
            "herd_log_bytes_total",
        ] {
            assert!(text.contains(&format!("# HELP {family} ")), "{family}");
            assert!(text.contains(&format!("# TYPE {family} ")), "{family}");
        }
        assert_eq!(value(&samples, "herd_up", &[]), Some(1.0));
        for kind in ["IAMAT", "WHATSAT", "invalid"] {
            assert_eq!(
                value(&samples, "herd_messages_total", &[("kind", kind)]),
                Some(0.0)
            );
        }
        for o in ["new", "not_newer", "malformed", "too_far_ahead", "expired"] {
            assert_eq!(
                value(&samples, "herd_records_total", &[("outcome", o)]),
                Some(0.0)
            );
        }
        for n in ["Bona", "Campbell"] {
            for d in ["out", "in"] {
                let v = value(&samples, "herd_link_up", &[("neighbour", n), ("direction", d)]);
                assert_eq!(v, Some(0.0));
            }
        }
    }

    #[test]
    fn a_link_counts_a_reconnect_only_after_it_was_up() {
        let m = Metrics::new(&names(&["Bona"]));
        m.link_up(0, Direction::In);
        m.link_down(0, Direction::In);
        m.link_up(0, Direction::Out);
        m.link_down(0, Direction::Out);
        m.link_down(0, Direction::Out);
        let reconnects = |m: &Metrics| {
            let s = parse_strict(&rendered(m, &PlacesView::idle())).unwrap();
            value(&s, "herd_link_reconnects_total", &[("neighbour", "Bona")])
        };
        assert_eq!(reconnects(&m), Some(0.0), "first up is no reconnect");
        m.link_up(0, Direction::Out);
        assert_eq!(reconnects(&m), Some(1.0));
        assert_eq!(health_lines(&m), "Bona out up\nBona in down\n");
        m.link_up(7, Direction::Out); // no such link: ignored
    }

    #[test]
    fn the_places_pool_counters_become_a_view() {
        let fresh = crate::places::stats::PlacesCounters::default().snapshot();
        let view = PlacesView::from_stats(&fresh);
        assert_eq!(view.breaker, "closed");
        assert!(view.duration_buckets.iter().all(|(le, _)| le.is_finite()));
        assert_eq!(
            view.duration_buckets.len(),
            crate::places::stats::LATENCY_BUCKETS.len()
        );
        let stats = crate::places::stats::PlacesStats {
            breaker: crate::places::stats::BreakerState::Probing,
            calls: vec![("OK", 3), ("OTHER", 1)],
            latency: vec![(0.1, 1), (1.0, 3), (f64::INFINITY, 4)],
            latency_count: 4,
            latency_sum_seconds: 2.5,
            queue_depth: 2,
            retries: 5,
            ..fresh
        };
        let view = PlacesView::from_stats(&stats);
        assert_eq!(
            view,
            PlacesView {
                calls_by_status: vec![("OK", 3), ("OTHER", 1)],
                queue_depth: 2,
                duration_buckets: vec![(0.1, 1), (1.0, 3)],
                duration_sum_seconds: 2.5,
                duration_count: 4,
                retries: 5,
                breaker: "half_open",
            }
        );
        let text = rendered(&Metrics::new(&[]), &view);
        parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }

    #[test]
    fn counters_show_what_was_bumped() {
        let m = Metrics::new(&names(&["Bona"]));
        m.accepted();
        m.accepted();
        m.closed();
        m.closed();
        m.closed(); // one too many: stays at 0
        m.accepted();
        m.refused();
        m.message(MessageKind::Iamat);
        m.message(MessageKind::Iamat);
        m.message(MessageKind::Invalid);
        m.record(RecordOutcome::TooFarAhead);
        m.forwarded(2);
        m.set_table_clients(7);
        m.set_log_bytes(123);
        let bona = m.link(LinkId(0)).expect("one link");
        bona.set_up(Direction::In, true);
        bona.reconnected();
        bona.set_queued_bytes(4096);
        assert!(m.link(LinkId(1)).is_none());
        let s = parse_strict(&rendered(&m, &PlacesView::idle())).unwrap();
        assert_eq!(value(&s, "herd_connections_open", &[]), Some(1.0));
        assert_eq!(value(&s, "herd_connections_accepted_total", &[]), Some(3.0));
        assert_eq!(value(&s, "herd_connections_refused_total", &[]), Some(1.0));
        assert_eq!(value(&s, "herd_messages_total", &[("kind", "IAMAT")]), Some(2.0));
        assert_eq!(
            value(&s, "herd_messages_total", &[("kind", "invalid")]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "herd_records_total", &[("outcome", "too_far_ahead")]),
            Some(1.0)
        );
        assert_eq!(value(&s, "herd_records_forwarded_total", &[]), Some(2.0));
        assert_eq!(value(&s, "herd_table_clients", &[]), Some(7.0));
        assert_eq!(value(&s, "herd_log_bytes_total", &[]), Some(123.0));
        let up = |d| value(&s, "herd_link_up", &[("neighbour", "Bona"), ("direction", d)]);
        assert_eq!((up("out"), up("in")), (Some(0.0), Some(1.0)));
        assert_eq!(
            value(&s, "herd_link_reconnects_total", &[("neighbour", "Bona")]),
            Some(1.0)
        );
        assert_eq!(
            value(&s, "herd_link_queued_bytes", &[("neighbour", "Bona")]),
            Some(4096.0)
        );
        assert_eq!(health_lines(&m), "Bona out down\nBona in up\n");
    }

    #[test]
    fn places_view_renders_exactly() {
        let m = Metrics::new(&[]);
        let places = PlacesView {
            calls_by_status: vec![("OK", 5), ("UNKNOWN_ERROR", 1)],
            queue_depth: 3,
            duration_buckets: vec![(0.1, 2), (0.5, 5)],
            duration_sum_seconds: 1.25,
            duration_count: 6,
            retries: 2,
            breaker: "open",
        };
        let text = rendered(&m, &places);
        parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let start = text
            .find("# HELP herd_places_calls_total")
            .expect("places section");
        let end = text.find("# HELP herd_log_bytes_total").expect("log section");
        let expected = "\
# HELP herd_places_calls_total Places lookups by the status of their answer.
# TYPE herd_places_calls_total counter
herd_places_calls_total{status=\"OK\"} 5
herd_places_calls_total{status=\"UNKNOWN_ERROR\"} 1
# HELP herd_places_call_duration_seconds Duration of upstream Places calls.
# TYPE herd_places_call_duration_seconds histogram
herd_places_call_duration_seconds_bucket{le=\"0.1\"} 2
herd_places_call_duration_seconds_bucket{le=\"0.5\"} 5
herd_places_call_duration_seconds_bucket{le=\"+Inf\"} 6
herd_places_call_duration_seconds_sum 1.25
herd_places_call_duration_seconds_count 6
# HELP herd_places_queue_depth Places lookups waiting for a worker.
# TYPE herd_places_queue_depth gauge
herd_places_queue_depth 3
# HELP herd_places_retries_total Upstream Places calls retried.
# TYPE herd_places_retries_total counter
herd_places_retries_total 2
# HELP herd_places_breaker_state 1 for the Places circuit breaker's current state.
# TYPE herd_places_breaker_state gauge
herd_places_breaker_state{state=\"closed\"} 0
herd_places_breaker_state{state=\"open\"} 1
herd_places_breaker_state{state=\"half_open\"} 0
";
        assert_eq!(&text[start..end], expected);
        // With no neighbours the link families are announced but empty, which is legal.
        assert!(text.contains("# TYPE herd_link_up gauge\n# HELP herd_link_reconnects_total"));
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(&names(&["we\"ird\\name\n"]));
        let text = rendered(&m, &PlacesView::idle());
        let s = parse_strict(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let v = value(&s, "herd_link_queued_bytes", &[("neighbour", "we\"ird\\name\n")]);
        assert_eq!(v, Some(0.0));
    }

    #[test]
    fn floats_are_spelt_as_prometheus_spells_them() {
        let f = |v: f64| Float(v).to_string();
        assert_eq!(f(f64::INFINITY), "+Inf");
        assert_eq!(f(f64::NEG_INFINITY), "-Inf");
        assert_eq!(f(f64::NAN), "NaN");
        assert_eq!(f(0.005), "0.005");
        assert_eq!(f(10.0), "10");
    }

    /// `promtool check metrics` (Debian's `prometheus` package) when it is installed; the
    /// strict parser above stands in for it where it is not.
    #[test]
    fn promtool_accepts_the_output_if_installed() {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let m = Metrics::new(&names(&["Bona", "Campbell"]));
        m.message(MessageKind::Whatsat);
        let places = PlacesView {
            calls_by_status: vec![("OK", 5), ("UNKNOWN_ERROR", 1)],
            duration_buckets: vec![(0.1, 2), (0.5, 5)],
            duration_sum_seconds: 1.25,
            duration_count: 6,
            ..PlacesView::idle()
        };
        let text = rendered(&m, &places);
        let child = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn();
        let Ok(mut child) = child else {
            eprintln!("promtool not installed: skipped");
            return;
        };
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("promtool stdin");
        }
        let out = child.wait_with_output().expect("promtool runs");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.status.success() && said.trim().is_empty(),
            "promtool: {said}\n{text}"
        );
    }

    #[test]
    fn the_strict_parser_rejects_what_it_should() {
        let ok = "# HELP a_total h\n# TYPE a_total counter\na_total 1\n";
        assert!(parse_strict(ok).is_ok());
        for bad in [
            "a_total 1\n",                                                                    // no TYPE
            "# HELP a_total h\n# TYPE a_total counter\na_total 1", // no final newline
            "# TYPE a_total counter\na_total 1\n",                 // no HELP
            "# HELP a h\n# TYPE a counter\na 1\n",                 // counter without _total
            "# HELP a h\n# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n", // repeated sample
            "# HELP a h\n# TYPE a gauge\na{x=1} 1\n",              // unquoted label
            "# HELP a h\n# TYPE a gauge\na one\n",                 // bad value
            "# HELP a h\n# TYPE a gauge\na 1\n# HELP b h\n# TYPE b gauge\nb 1\n# HELP a h\n", // split family
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",
            "# HELP h h\n# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_sum 1\nh_count 2\n", // no +Inf
        ] {
            assert!(parse_strict(bad).is_err(), "accepted: {bad:?}");
        }
    }
}
