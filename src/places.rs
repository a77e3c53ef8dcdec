//! Google Places lookups for WHATSAT, kept off the reactor thread.
//!
//! The reactor owns a `Pool`. `submit` either answers at once (bound 0, no key, queue
//! full, over `places.max_rps`, upstream down) or queues a call; identical lookups in
//! flight share one call. Waiting calls are served fairly over client connections
//! (`sched::FairQueue`), so one connection's thousand lookups never hold up another's.
//! A few worker threads share one ureq `Agent`, make the blocking call (retrying a failed
//! connection, 429 or 5xx with jittered backoff inside the `timeout_ms` budget), turn
//! Google's answer into the final legacy-style JSON document and post it back on a
//! channel, waking the reactor through its `mio::Waker` only when no earlier wake is still
//! pending. `drain`, on the reactor thread, hands each answer to every tag that asked.
//! A circuit breaker stops calling an upstream that keeps failing; `stats` reads the
//! pool's counters.
//!
//! The API key lives only in the workers' `Upstream`; every text that could carry it (ureq
//! errors may quote the URL) is redacted before it reaches a log line or a reply.
//! Redirects are never followed: the key must not travel to another host.

mod sched;
pub mod stats;

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::BuildHasher;
use std::io;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Number, Value, json};

use crate::config::{self, Api};
use crate::legacy_json;
use crate::protocol::Radius;
use sched::{Breaker, Bucket, CallId, Change, FairQueue, Lane};
use stats::{PlacesCounters, PlacesStats};

const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";
const NEW_PATH: &str = "/v1/places:searchNearby";
/// Exactly the fields the legacy mapping reads: searchNearby is billed by the richest field
/// asked for, so asking for more would cost more and show nothing.
pub const FIELD_MASK: &str = "places.displayName,places.id,places.location,places.formattedAddress,places.types,places.rating,places.userRatingCount,places.businessStatus";
/// Google's answers are tens of KB; a body far larger is not a Nearby Search answer.
const MAX_BODY: u64 = 4 << 20;
/// How long `shutdown` waits for workers before leaving them to end with the process.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(300);
const REDACTED: &str = "<key>";
/// How std words a failed name lookup (it has no ErrorKind for it).
const NO_ADDRESS: &str = "failed to lookup address information";
const UNAVAILABLE: &str = "Places upstream unavailable";
/// A retry is only made if at least this much of the budget is left after its backoff.
const MIN_TRY: Duration = Duration::from_millis(10);

/// Retry and breaker settings (SPEC §7). Fixed in production; unit tests shorten them.
#[derive(Clone, Copy, Debug)]
pub struct Tuning {
    /// Retries after the first try, for a failed connection, 429 or 5xx.
    pub max_retries: u32,
    /// The first retry waits about this long (0.5x to 1.5x), each further one twice as long.
    pub retry_base: Duration,
    /// Consecutive failed calls that open the breaker.
    pub breaker_after: u32,
    /// How long the breaker stays open before one probe call decides.
    pub breaker_open: Duration,
}

impl Default for Tuning {
    fn default() -> Tuning {
        Tuning {
            max_retries: 2,
            retry_base: Duration::from_millis(100),
            breaker_after: 5,
            breaker_open: Duration::from_secs(10),
        }
    }
}

/// How the pool tells client connections apart for fair service. Every lookup whose tag
/// gives the same key waits in that connection's line, in submission order.
pub trait Fair {
    fn connection(&self) -> u64;
}

/// What to look up. The radius is protocol's checked `Radius`, whose metres are exact
/// decimal text ("10000", "500", "0.1"), so nothing here checks it again.
#[derive(Clone, Debug, PartialEq)]
pub struct Query {
    pub lat: f64,
    pub lng: f64,
    pub radius: Radius,
    pub bound: u8,
}

/// Two queries that would send Google the same request. Coordinates compare by bits, so
/// this is exactly "same text in the request".
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Same {
    lat: u64,
    lng: u64,
    radius: Radius,
    bound: u8,
}

impl Same {
    fn of(q: &Query) -> Same {
        Same {
            lat: q.lat.to_bits(),
            lng: q.lng.to_bits(),
            radius: q.radius.clone(),
            bound: q.bound,
        }
    }
}

#[derive(Debug, PartialEq)]
pub enum Submit {
    /// Answered at once, no upstream call: bound 0 -> OK with results [], no key ->
    /// REQUEST_DENIED naming the env var, radius not decimal -> INVALID_REQUEST, queue
    /// full -> UNKNOWN_ERROR "server busy ...", over `places.max_rps` -> OVER_QUERY_LIMIT,
    /// breaker open -> UNKNOWN_ERROR "Places upstream unavailable".
    Now(Arc<str>),
    /// A job is queued or joined an identical in-flight one; the answer comes via `drain`.
    Queued,
}

struct Job {
    same: Same,
    query: Query,
    /// The one call that decides whether an open breaker closes.
    probe: bool,
}

struct Done {
    same: Same,
    answer: Arc<str>,
}

/// What the reactor and the workers share under one lock.
struct Sched {
    queue: FairQueue<Job>,
    bucket: Option<Bucket>,
    breaker: Breaker,
    stop: bool,
}

/// What every worker shares.
struct Shared {
    upstream: Upstream,
    sched: Mutex<Sched>,
    /// Signalled when a job is queued or the pool stops.
    work: Condvar,
    counters: Arc<PlacesCounters>,
    tuning: Tuning,
    waker: Arc<mio::Waker>,
    /// Set by the worker whose result will wake the reactor; cleared by `drain`.
    pending: AtomicBool,
}

impl Shared {
    fn sched(&self) -> MutexGuard<'_, Sched> {
        // Nothing under this lock can panic halfway through a change that matters.
        self.sched.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Lookups waiting for one call: who asked, and which call answers them.
struct Waiting<T> {
    tags: Vec<T>,
    call: CallId,
    lanes: Vec<Lane>,
}

/// The pool. `T` is the reactor's tag (token, generation, reply slot); the pool only asks
/// it which connection it belongs to.
pub struct Pool<T> {
    done: Receiver<Done>,
    shared: Arc<Shared>,
    waiting: HashMap<Same, Waiting<T>>,
    next_call: CallId,
    queue_bound: usize,
    workers: Vec<JoinHandle<()>>,
    empty: Arc<str>,
    no_key: Option<Arc<str>>,
    unavailable: Arc<str>,
    over_limit: Arc<str>,
}

impl<T: Fair> Pool<T> {
    /// Starts `cfg.workers` threads sharing one ureq Agent (rustls, connections reused,
    /// idle pool sized to the workers, redirects not followed, `cfg.timeout` bounding each
    /// whole lookup, retries included). `key`: the API key from the environment (None or
    /// empty = no key). `queue_bound`: how many calls may wait for a worker before
    /// `submit` answers "server busy".
    pub fn start(
        cfg: &config::Places,
        key: Option<String>,
        waker: Arc<mio::Waker>,
        queue_bound: usize,
    ) -> io::Result<Pool<T>> {
        Pool::start_tuned(cfg, key, waker, queue_bound, Tuning::default())
    }

    /// `start` with other retry and breaker settings.
    pub fn start_tuned(
        cfg: &config::Places,
        key: Option<String>,
        waker: Arc<mio::Waker>,
        queue_bound: usize,
        tuning: Tuning,
    ) -> io::Result<Pool<T>> {
        let key = key.filter(|k| !k.is_empty());
        let no_key = key.is_none().then(|| {
            let msg = format!(
                "no Places API key: set the environment variable {} and restart the server",
                cfg.key_env
            );
            Arc::from(legacy_json::error_document("REQUEST_DENIED", &msg))
        });
        let over_limit = format!(
            "over this server's Places rate limit (places.max_rps: {} calls per second); try again later",
            cfg.max_rps
        );
        let now = Instant::now();
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::new(Shared {
            upstream: Upstream::new(cfg, key.unwrap_or_default()),
            sched: Mutex::new(Sched {
                queue: FairQueue::default(),
                bucket: Bucket::new(cfg.max_rps, now),
                breaker: Breaker::new(tuning.breaker_after, tuning.breaker_open, now),
                stop: false,
            }),
            work: Condvar::new(),
            counters: Arc::new(PlacesCounters::default()),
            tuning,
            waker,
            pending: AtomicBool::new(false),
        });
        let mut workers = Vec::with_capacity(cfg.workers);
        for i in 0..cfg.workers {
            let (s, tx) = (Arc::clone(&shared), done_tx.clone());
            let spawned = thread::Builder::new()
                .name(format!("places-{i}"))
                .spawn(move || work(&s, &tx));
            match spawned {
                Ok(h) => workers.push(h),
                Err(e) => {
                    stop(&shared);
                    return Err(e);
                }
            }
        }
        Ok(Pool {
            done,
            shared,
            waiting: HashMap::new(),
            next_call: 0,
            queue_bound,
            workers,
            empty: Arc::from(legacy_json::ok_empty()),
            no_key,
            unavailable: Arc::from(legacy_json::error_document("UNKNOWN_ERROR", UNAVAILABLE)),
            over_limit: Arc::from(legacy_json::error_document("OVER_QUERY_LIMIT", &over_limit)),
        })
    }

    pub fn submit(&mut self, tag: T, query: Query) -> Submit {
        if query.bound == 0 {
            return Submit::Now(Arc::clone(&self.empty));
        }
        if let Some(doc) = &self.no_key {
            return Submit::Now(Arc::clone(doc));
        }
        let lane = tag.connection();
        let same = Same::of(&query);
        let counters = &self.shared.counters;
        let mut sched = self.shared.sched();
        if let Some(w) = self.waiting.get_mut(&same) {
            w.tags.push(tag);
            counters.shared();
            if sched.queue.is_waiting(w.call) && !w.lanes.contains(&lane) {
                sched.queue.join(lane, w.call);
                w.lanes.push(lane);
            }
            return Submit::Queued;
        }
        let now = Instant::now();
        if sched.breaker.refuses(now) {
            counters.breaker_refused();
            return Submit::Now(Arc::clone(&self.unavailable));
        }
        if sched.queue.len() >= self.queue_bound || sched.stop {
            drop(sched);
            log::warn!("places: every worker busy and the queue full; answering UNKNOWN_ERROR");
            counters.busy();
            return Submit::Now(busy());
        }
        if !sched.bucket.as_mut().is_none_or(|b| b.take(now)) {
            drop(sched);
            log::debug!("places: over places.max_rps; answering OVER_QUERY_LIMIT");
            counters.rate_limited();
            return Submit::Now(Arc::clone(&self.over_limit));
        }
        let probe = sched.breaker.admit().is_some();
        if probe {
            counters.set_breaker(sched.breaker.state(), false);
            log::info!("places: breaker half-open: one probe call decides");
        }
        let call = self.next_call;
        self.next_call += 1;
        let job = Job {
            same: same.clone(),
            query,
            probe,
        };
        sched.queue.push(lane, call, job);
        counters.set_queue_depth(sched.queue.len());
        drop(sched);
        self.shared.work.notify_one();
        self.waiting.insert(
            same,
            Waiting {
                tags: vec![tag],
                call,
                lanes: vec![lane],
            },
        );
        Submit::Queued
    }

    /// The connection `lane` closed: its lookups are answered to no one, so the calls no
    /// other connection waits for are dropped before a worker starts them (one already
    /// under way runs on, bounded by `timeout_ms`). The breaker's probe is never dropped:
    /// only its outcome takes the breaker out of half-open. Returns how many were dropped.
    pub fn forget(&mut self, lane: Lane) -> usize {
        let mut sched = self.shared.sched();
        let mut dropped = 0;
        self.waiting.retain(|_, w| {
            w.tags.retain(|t| t.connection() != lane);
            w.lanes.retain(|&l| l != lane);
            let orphan = w.tags.is_empty() && sched.queue.cancel(w.call, |job| !job.probe);
            dropped += usize::from(orphan);
            !orphan
        });
        sched.queue.forget_lane(lane);
        self.shared.counters.set_queue_depth(sched.queue.len());
        dropped
    }
}

impl<T> Pool<T> {
    /// Called by the reactor on each waker event: hands every finished answer to `f`
    /// (once per tag that joined the query), draining the channel until empty because
    /// wakes coalesce.
    pub fn drain(&mut self, mut f: impl FnMut(T, Arc<str>)) {
        // Cleared before draining: a result sent after this either is drained below or
        // finds the flag clear and wakes us again. The swap acquires the workers' sends.
        self.shared.pending.swap(false, Ordering::AcqRel);
        while let Ok(Done { same, answer }) = self.done.try_recv() {
            for tag in self.waiting.remove(&same).map(|w| w.tags).unwrap_or_default() {
                f(tag, Arc::clone(&answer));
            }
        }
    }

    /// A reading of the pool's counters (cheap: relaxed atomic loads).
    pub fn stats(&self) -> PlacesStats {
        self.shared.counters.snapshot()
    }

    /// The counters themselves, for a thread that reads them without the pool.
    pub fn counters(&self) -> Arc<PlacesCounters> {
        Arc::clone(&self.shared.counters)
    }

    /// Distinct queries submitted and not yet drained.
    #[cfg(test)]
    pub fn in_flight(&self) -> usize {
        self.waiting.len()
    }

    /// Stops accepting work and lets the workers exit. Waits at most `SHUTDOWN_GRACE`; a
    /// worker still inside a call is left to finish it (bounded by the timeout) on its own.
    pub fn shutdown(self) {
        log::info!("places: {}", summary(&self.stats()));
        let Pool { shared, workers, .. } = self;
        stop(&shared);
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        for w in workers {
            while !w.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(5));
            }
            if w.is_finished() {
                let _ = w.join();
            }
        }
    }
}

/// The counters in one log line, for the shutdown record.
fn summary(s: &PlacesStats) -> String {
    let calls: Vec<String> = s
        .calls
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(st, n)| format!("{st} {n}"))
        .collect();
    format!(
        "{} lookups answered by the upstream ({}), {} HTTP requests, {} retries, {} shared, {} over max_rps, {} refused by the breaker (now {}, opened {} times), {} busy",
        s.latency_count,
        if calls.is_empty() {
            "none".into()
        } else {
            calls.join(", ")
        },
        s.attempts,
        s.retries,
        s.shared,
        s.rate_limited,
        s.breaker_refused,
        s.breaker.as_str(),
        s.breaker_opened,
        s.busy
    )
}

fn stop(shared: &Shared) {
    shared.sched().stop = true;
    shared.work.notify_all();
}

fn busy() -> Arc<str> {
    let msg = "server busy: too many Places lookups waiting, try again later";
    Arc::from(legacy_json::error_document("UNKNOWN_ERROR", msg))
}

/// The radius as a JSON number for searchNearby's body. `Radius::metres` is plain decimal
/// text, which JSON reads exactly as written; the string form is only a fallback that
/// cannot be reached, since nothing here may panic.
fn radius_json(r: &Radius) -> Value {
    r.metres()
        .parse::<Number>()
        .map_or_else(|_| Value::String(r.metres().into()), Value::Number)
}

/// The next job in fair order, or None once the pool stops. A job queued before the
/// breaker opened is answered at once without a call (unless it is the probe).
fn next_job(shared: &Shared) -> Option<(Job, bool)> {
    let mut sched = shared.sched();
    loop {
        if sched.stop {
            return None;
        }
        if let Some(job) = sched.queue.pop() {
            shared.counters.set_queue_depth(sched.queue.len());
            let held = sched.breaker.holds(job.probe);
            return Some((job, held));
        }
        sched = shared.work.wait(sched).unwrap_or_else(PoisonError::into_inner);
    }
}

fn work(shared: &Shared, done: &Sender<Done>) {
    while let Some((job, held)) = next_job(shared) {
        let answer = if held {
            shared.counters.breaker_refused();
            legacy_json::error_document("UNKNOWN_ERROR", UNAVAILABLE).into()
        } else {
            shared.counters.in_flight(1);
            // A bug in the mapping must not leave the reactor waiting forever for this query.
            let answer =
                panic::catch_unwind(AssertUnwindSafe(|| lookup(shared, &job))).unwrap_or_else(|_| {
                    let msg = "Places request failed: internal error";
                    Arc::from(legacy_json::error_document("UNKNOWN_ERROR", msg))
                });
            shared.counters.in_flight(-1);
            answer
        };
        if done
            .send(Done {
                same: job.same,
                answer,
            })
            .is_err()
        {
            return;
        }
        // Only the first result since the last drain pays for a wake; that drain takes all.
        if shared.pending.swap(true, Ordering::AcqRel) {
            continue;
        }
        if let Err(e) = shared.waker.wake() {
            log::warn!("places: cannot wake the reactor: {e}");
        }
    }
}

/// One lookup: the call, its retries, the counters and the breaker's bookkeeping.
fn lookup(shared: &Shared, job: &Job) -> Arc<str> {
    let tuning = &shared.tuning;
    let counters = &shared.counters;
    // Retries spend the same per-second budget as first tries: the cap is on calls.
    let may_retry = || {
        let mut sched = shared.sched();
        !sched.stop && sched.bucket.as_mut().is_none_or(|b| b.take(Instant::now()))
    };
    let looked = shared.upstream.lookup(&job.query, tuning, counters, may_retry);
    let ok = looked.status != "UNKNOWN_ERROR";
    counters.answered(&looked.status, looked.took);
    let change = {
        let mut sched = shared.sched();
        let change = sched.breaker.record(job.probe, ok, Instant::now());
        if change.is_some() {
            counters.set_breaker(sched.breaker.state(), change != Some(Change::Recovered));
        }
        change
    };
    let open = tuning.breaker_open.as_millis();
    match change {
        Some(Change::Opened) => log::warn!(
            "places: upstream down after {} failed calls in a row; answering \"{UNAVAILABLE}\" for {open} ms",
            tuning.breaker_after
        ),
        Some(Change::ProbeFailed) => {
            log::warn!("places: probe call failed; upstream still down, next probe in {open} ms")
        }
        Some(Change::Recovered) => {
            log::info!("places: probe call answered {}; upstream up again", looked.status)
        }
        Some(Change::Probing) | None => {}
    }
    looked.doc
}

/// How far apart retry `n` (1-based) starts: `base * 2^(n-1)`, jittered to 0.5x..1.5x
/// so workers that failed together do not come back together.
fn backoff(base: Duration, n: u32) -> Duration {
    let d = base.saturating_mul(1 << (n.saturating_sub(1)).min(16));
    let unit = RandomState::new().hash_one(n) as f64 / u64::MAX as f64;
    d.mul_f64(0.5 + unit)
}

/// Why a call produced no document from Google. Display is the `error_message` sent to
/// the client, so it must never hold the key (transport texts are redacted first).
#[derive(Debug, PartialEq)]
enum Failure {
    TimedOut(Duration),
    Refused,
    Dropped,
    HostNotFound,
    TooLarge,
    Transport(String),
    NotJson {
        http: u16,
    },
    NotPlaces {
        http: u16,
    },
    /// A 3xx: following it could hand the key to another host.
    Redirect {
        http: u16,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::TimedOut(d) => write!(f, "Places request failed: timed out after {} ms", d.as_millis()),
            Failure::Refused => write!(f, "Places request failed: connection refused"),
            Failure::Dropped => write!(
                f,
                "Places request failed: connection closed before the answer was complete"
            ),
            Failure::HostNotFound => write!(f, "Places request failed: host not found"),
            Failure::TooLarge => write!(f, "Places request failed: answer larger than {MAX_BODY} bytes"),
            Failure::Transport(m) => write!(f, "Places request failed: {m}"),
            Failure::NotJson { http } => {
                write!(f, "Places answered HTTP {http} with a body that is not JSON")
            }
            Failure::NotPlaces { http } => write!(
                f,
                "Places answered HTTP {http} with JSON that is not a Nearby Search answer"
            ),
            Failure::Redirect { http } => write!(
                f,
                "Places answered HTTP {http}, a redirect; herd does not follow redirects (check places.url)"
            ),
        }
    }
}

/// The HTTP side: one Agent, the configured API, the key.
struct Upstream {
    agent: ureq::Agent,
    api: Api,
    base: String,
    key: String,
    timeout: Duration,
}

impl Upstream {
    fn new(cfg: &config::Places, key: String) -> Upstream {
        let config = ureq::Agent::config_builder()
            .timeout_global(Some(cfg.timeout))
            // Google's error bodies carry the reason; read them rather than get a bare code.
            .http_status_as_error(false)
            .max_idle_connections(cfg.workers)
            .max_idle_connections_per_host(cfg.workers)
            // A redirect would carry X-Goog-Api-Key (or the legacy key in the URL) to
            // wherever it points; 0 makes ureq hand back the 3xx itself.
            .max_redirects(0)
            .user_agent(concat!("herd/", env!("CARGO_PKG_VERSION")))
            .build();
        Upstream {
            agent: ureq::Agent::new_with_config(config),
            api: cfg.api,
            base: cfg.url.trim_end_matches('/').to_string(),
            key,
            timeout: cfg.timeout,
        }
    }

    /// The final reply document for `q` with its status, after at most
    /// `tuning.max_retries` retries (each only if `may_retry` agrees), logged.
    fn lookup(
        &self,
        q: &Query,
        tuning: &Tuning,
        counters: &PlacesCounters,
        mut may_retry: impl FnMut() -> bool,
    ) -> Looked {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let mut retries = 0;
        let result = loop {
            counters.attempt();
            let budget = deadline.saturating_duration_since(Instant::now());
            let (http, result) = self.attempt(q, budget);
            if retries >= tuning.max_retries || !retryable(http, &result) {
                break result;
            }
            let delay = backoff(tuning.retry_base, retries + 1);
            // A retry that cannot finish inside the budget would only turn this answer
            // into a timeout.
            if Instant::now() + delay + MIN_TRY >= deadline || !may_retry() {
                break result;
            }
            if let Err(f) = &result {
                let why = self.redact(&f.to_string());
                log::debug!(
                    "places: try {} failed ({why}); retrying in {} ms",
                    retries + 1,
                    delay.as_millis()
                );
            } else if let Some(code) = http {
                log::debug!(
                    "places: try {} answered HTTP {code}; retrying in {} ms",
                    retries + 1,
                    delay.as_millis()
                );
            }
            thread::sleep(delay);
            retries += 1;
            counters.retry();
        };
        let doc = result
            .unwrap_or_else(|f| legacy_json::document(Vec::new(), "UNKNOWN_ERROR", Some(&f.to_string())));
        let status = doc.get("status").and_then(Value::as_str).unwrap_or("?");
        let found = doc.get("results").and_then(Value::as_array).map_or(0, Vec::len);
        let note = doc
            .get("error_message")
            .and_then(Value::as_str)
            .map(|m| format!(" ({m})"))
            .unwrap_or_default();
        let api = match self.api {
            Api::Legacy => "legacy",
            Api::New => "new",
        };
        let tries = match retries {
            0 => String::new(),
            n => format!(" after {n} retries"),
        };
        let took = started.elapsed();
        let line = format!(
            "places {api} {},{} radius {} m bound {}: {status}{note}, {found} results, {} ms{tries}",
            q.lat,
            q.lng,
            q.radius.metres(),
            q.bound,
            took.as_millis()
        );
        log::info!("{}", self.redact(&line));
        Looked {
            status: status.to_string(),
            doc: Arc::from(self.redact(&legacy_json::pretty(&doc))),
            took,
        }
    }

    /// One try, no retry: the reply document for `q`.
    #[cfg(test)]
    fn answer(&self, q: &Query) -> Arc<str> {
        let once = Tuning {
            max_retries: 0,
            ..Tuning::default()
        };
        self.lookup(q, &once, &PlacesCounters::default(), || false).doc
    }

    /// One HTTP request with `budget` left: the HTTP status if an answer came, and the
    /// document or what failed.
    fn attempt(&self, q: &Query, budget: Duration) -> (Option<u16>, Result<Value, Failure>) {
        let sent = match self.api {
            Api::Legacy => self.legacy_request(q, budget),
            Api::New => self.new_request(q, budget),
        };
        let (http, body) = match sent {
            Ok(answer) => answer,
            Err(f @ Failure::Redirect { http }) => return (Some(http), Err(f)),
            Err(f) => return (None, Err(f)),
        };
        let doc = match self.api {
            Api::Legacy => legacy_document(http, &body, q.bound),
            Api::New => new_document(http, &body, q.bound),
        };
        (Some(http), doc)
    }

    fn legacy_request(&self, q: &Query, budget: Duration) -> Result<(u16, Vec<u8>), Failure> {
        let url = format!(
            "{}{LEGACY_PATH}?location={},{}&radius={}&key={}",
            self.base,
            q.lat,
            q.lng,
            q.radius.metres(),
            encode(&self.key)
        );
        let request = self.agent.get(&url).config().timeout_global(Some(budget)).build();
        self.finish(request.call())
    }

    fn new_request(&self, q: &Query, budget: Duration) -> Result<(u16, Vec<u8>), Failure> {
        let radius = radius_json(&q.radius);
        let body = json!({
            "maxResultCount": q.bound,
            "locationRestriction": {
                "circle": {
                    "center": { "latitude": q.lat, "longitude": q.lng },
                    "radius": radius,
                },
            },
        });
        let sent = self
            .agent
            .post(format!("{}{NEW_PATH}", self.base))
            .config()
            .timeout_global(Some(budget))
            .build()
            .header("X-Goog-Api-Key", &self.key)
            .header("X-Goog-FieldMask", FIELD_MASK)
            .header("Content-Type", "application/json")
            .send(body.to_string());
        self.finish(sent)
    }

    /// Status and whole body, or what went wrong on the way.
    fn finish(
        &self,
        sent: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<(u16, Vec<u8>), Failure> {
        let mut response = sent.map_err(|e| self.failure(e))?;
        let http = response.status().as_u16();
        if (300..400).contains(&http) {
            return Err(Failure::Redirect { http });
        }
        let body = response
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_vec()
            .map_err(|e| self.failure(e))?;
        Ok((http, body))
    }

    fn failure(&self, e: ureq::Error) -> Failure {
        use io::ErrorKind as K;
        match e {
            ureq::Error::Timeout(_) => Failure::TimedOut(self.timeout),
            ureq::Error::HostNotFound => Failure::HostNotFound,
            ureq::Error::BodyExceedsLimit(_) => Failure::TooLarge,
            // getaddrinfo's failures reach us as an uncategorised io::Error from std.
            ureq::Error::Io(io) if io.to_string().starts_with(NO_ADDRESS) => Failure::HostNotFound,
            ureq::Error::Io(io) => match io.kind() {
                K::ConnectionRefused => Failure::Refused,
                K::TimedOut | K::WouldBlock => Failure::TimedOut(self.timeout),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe => {
                    Failure::Dropped
                }
                _ => Failure::Transport(self.redact(&io.to_string())),
            },
            other => Failure::Transport(self.redact(&other.to_string())),
        }
    }

    /// Removes the key, as sent or percent-encoded, from `text`.
    fn redact(&self, text: &str) -> String {
        if self.key.is_empty() {
            return text.to_string();
        }
        text.replace(&self.key, REDACTED)
            .replace(&encode(&self.key), REDACTED)
    }
}

/// A lookup's outcome: the reply document and its status, for the counters and breaker.
struct Looked {
    doc: Arc<str>,
    status: String,
    took: Duration,
}

/// Google's guidance: retry failed connections, 429 and 5xx; never other 4xx. A timeout
/// has spent the budget, and a host name that does not resolve will not on a retry.
fn retryable(http: Option<u16>, result: &Result<Value, Failure>) -> bool {
    match (http, result) {
        (Some(code), _) => code == 429 || (500..600).contains(&code),
        (None, Err(Failure::Refused | Failure::Dropped | Failure::Transport(_))) => true,
        (None, _) => false,
    }
}

/// Percent-encodes all but RFC 3986's unreserved characters.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The reply document a worker makes of an answer from `api` (HTTP status and body), a
/// failure included: the mapping without the call, for the fuzz harness (src/fuzz.rs).
#[cfg(test)]
pub fn answer_document(api: Api, http: u16, body: &[u8], bound: u8) -> Value {
    let doc = match api {
        Api::Legacy => legacy_document(http, body, bound),
        Api::New => new_document(http, body, bound),
    };
    doc.unwrap_or_else(|f| legacy_json::document(Vec::new(), "UNKNOWN_ERROR", Some(&f.to_string())))
}

/// Legacy Nearby Search: Google's document passed through, `results` cut to the bound.
/// Google answers its own errors with HTTP 200 and a `status`; any HTTP code with a
/// `status` is passed through the same way.
fn legacy_document(http: u16, body: &[u8], bound: u8) -> Result<Value, Failure> {
    let mut doc: Value = serde_json::from_slice(body).map_err(|_| Failure::NotJson { http })?;
    if !doc.get("status").is_some_and(Value::is_string) {
        return envelope(http, &doc);
    }
    // SPEC §2: a reply always has the legacy shape. Google's answers, its errors too,
    // always carry both arrays, so a body without them is no Nearby Search answer.
    if !doc.get("html_attributions").is_some_and(Value::is_array) {
        return Err(Failure::NotPlaces { http });
    }
    let Some(Value::Array(results)) = doc.get_mut("results") else {
        return Err(Failure::NotPlaces { http });
    };
    results.truncate(bound.into());
    Ok(doc)
}

/// Places API (New): an error envelope for non-2xx, else `places` mapped to legacy results.
fn new_document(http: u16, body: &[u8], bound: u8) -> Result<Value, Failure> {
    let doc: Value = serde_json::from_slice(body).map_err(|_| Failure::NotJson { http })?;
    if !(200..300).contains(&http) {
        return envelope(http, &doc);
    }
    let places = match doc.get("places") {
        Some(Value::Array(places)) => places.as_slice(),
        // Google sends `{}` when nothing matched.
        None if doc.is_object() => &[],
        _ => return Err(Failure::NotPlaces { http }),
    };
    let results: Vec<Value> = places.iter().take(bound.into()).map(legacy_place).collect();
    let status = if results.is_empty() { "ZERO_RESULTS" } else { "OK" };
    Ok(legacy_json::document(results, status, None))
}

/// Google's error envelope `{"error": {"code", "message", "status"}}` as a legacy document,
/// its status chosen by the HTTP code the way the legacy API would have reported it.
fn envelope(http: u16, doc: &Value) -> Result<Value, Failure> {
    let error = doc
        .get("error")
        .filter(|e| e.is_object())
        .ok_or(Failure::NotPlaces { http })?;
    let status = match http {
        400 => "INVALID_REQUEST",
        401 | 403 => "REQUEST_DENIED",
        429 => "OVER_QUERY_LIMIT",
        _ => "UNKNOWN_ERROR",
    };
    let message = match error.get("message").and_then(Value::as_str) {
        Some(m) if !m.is_empty() => m.to_string(),
        _ => format!("Places answered HTTP {http}"),
    };
    Ok(legacy_json::document(Vec::new(), status, Some(&message)))
}

/// One New-API place under legacy names, keys in Google's legacy (sorted) order; fields
/// the place lacks are left out.
fn legacy_place(place: &Value) -> Value {
    let mut r = Map::new();
    let mut copy = |to: &str, from: Option<&Value>| {
        if let Some(v) = from {
            r.insert(to.to_string(), v.clone());
        }
    };
    copy("business_status", place.get("businessStatus"));
    let geometry = place.get("location").map(|loc| {
        // Google's JSON leaves out zero fields, so a place on the equator has no latitude.
        let zero = || Value::from(0);
        let lat = loc.get("latitude").cloned().unwrap_or_else(zero);
        let lng = loc.get("longitude").cloned().unwrap_or_else(zero);
        json!({ "location": { "lat": lat, "lng": lng } })
    });
    copy("geometry", geometry.as_ref());
    copy("name", place.pointer("/displayName/text"));
    copy("place_id", place.get("id"));
    copy("rating", place.get("rating"));
    copy("types", place.get("types"));
    copy("user_ratings_total", place.get("userRatingCount"));
    copy("vicinity", place.get("formattedAddress"));
    Value::Object(r)
}

#[cfg(test)]
#[path = "../tests/support/places_stub.rs"]
mod places_stub;

#[cfg(test)]
mod tests {
    use super::places_stub::{Behaviour, LEGACY_NO_KEY, NEW_NO_KEY, NEXT_PAGE_TOKEN, PLACES, PlacesStub};
    use super::stats::BreakerState;
    use super::*;
    use std::sync::Once;

    const KEY: &str = "AIzaSy-test/key+42";
    const ENC_KEY: &str = "AIzaSy-test%2Fkey%2B42";
    const WAIT: Duration = Duration::from_secs(5);

    fn cfg(api: Api, url: &str) -> config::Places {
        config::Places {
            api,
            url: url.to_string(),
            key_env: "GOOGLE_PLACES_API_KEY".into(),
            timeout: Duration::from_millis(2000),
            workers: 2,
            max_rps: 0,
        }
    }

    // Each distinct test tag stands for its own connection.
    impl Fair for u32 {
        fn connection(&self) -> u64 {
            u64::from(*self)
        }
    }

    impl Fair for usize {
        fn connection(&self) -> u64 {
            *self as u64
        }
    }

    impl Fair for &str {
        fn connection(&self) -> u64 {
            RandomState::new().hash_one(self)
        }
    }

    fn upstream(api: Api, stub: &PlacesStub) -> Upstream {
        Upstream::new(&cfg(api, &stub.url()), KEY.into())
    }

    fn radius_km(text: &str) -> Radius {
        Radius::parse(text.as_bytes()).expect("a valid radius")
    }

    fn query(bound: u8) -> Query {
        Query {
            lat: 34.06893,
            lng: -118.445127,
            radius: radius_km("10"),
            bound,
        }
    }

    fn parse(text: &str) -> Value {
        match serde_json::from_str(text) {
            Ok(v) => v,
            Err(e) => panic!("not JSON ({e}):\n{text}"),
        }
    }

    /// Every reply document: legacy layout, no blank line, no final newline, no key.
    fn checked(doc: &str) -> Value {
        assert!(doc.starts_with("{\n   \""), "{doc}");
        assert!(doc.ends_with("\n}"), "{doc}");
        assert!(!doc.contains("\n\n"), "blank line in:\n{doc}");
        assert!(!doc.contains(KEY) && !doc.contains(ENC_KEY), "key in:\n{doc}");
        let v = parse(doc);
        assert_eq!(legacy_json::pretty(&v), doc, "not in legacy style");
        v
    }

    fn status(v: &Value) -> &str {
        v["status"].as_str().unwrap_or("<none>")
    }

    fn results(v: &Value) -> &[Value] {
        v["results"].as_array().map_or(&[], Vec::as_slice)
    }

    fn message(v: &Value) -> &str {
        v["error_message"].as_str().unwrap_or("<none>")
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object()
            .map_or(Vec::new(), |m| m.keys().map(String::as_str).collect())
    }

    // ---- New API -> legacy mapping ----

    #[test]
    fn new_place_maps_to_legacy_names_in_legacy_order() {
        let place = parse(
            r#"{"name": "places/ChIJx", "id": "ChIJx", "types": ["cafe", "food"],
                "formattedAddress": "1061 Broxton Ave, Los Angeles, CA 90024, USA",
                "location": {"latitude": 34.0628, "longitude": -118.4475},
                "rating": 4.2, "businessStatus": "OPERATIONAL", "userRatingCount": 388,
                "displayName": {"text": "Café 1919", "languageCode": "en"}}"#,
        );
        let want = r#"{
   "business_status" : "OPERATIONAL",
   "geometry" : {
      "location" : {
         "lat" : 34.0628,
         "lng" : -118.4475
      }
   },
   "name" : "Café 1919",
   "place_id" : "ChIJx",
   "rating" : 4.2,
   "types" : [ "cafe", "food" ],
   "user_ratings_total" : 388,
   "vicinity" : "1061 Broxton Ave, Los Angeles, CA 90024, USA"
}"#;
        assert_eq!(legacy_json::pretty(&legacy_place(&place)), want);
    }

    #[test]
    fn missing_fields_are_left_out_and_zero_coordinates_restored() {
        let place = parse(r#"{"id": "a", "location": {"longitude": 9.5}}"#);
        let got = legacy_place(&place);
        assert_eq!(
            got,
            json!({"geometry": {"location": {"lat": 0, "lng": 9.5}}, "place_id": "a"})
        );
        assert_eq!(legacy_place(&json!({})), json!({}));
    }

    #[test]
    fn new_document_cuts_to_bound() {
        let body = json!({"places": [{"id": "1"}, {"id": "2"}, {"id": "3"}, {"id": "4"}]});
        let doc = new_document(200, body.to_string().as_bytes(), 3);
        let doc = doc.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys(&doc), ["html_attributions", "results", "status"]);
        assert_eq!(status(&doc), "OK");
        assert_eq!(results(&doc).len(), 3);
        assert_eq!(results(&doc)[2], json!({"place_id": "3"}));
    }

    #[test]
    fn new_document_with_nothing_is_zero_results() {
        for body in ["{}", r#"{"places": []}"#] {
            let doc = new_document(200, body.as_bytes(), 5).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status(&doc), "ZERO_RESULTS", "{body}");
            assert!(results(&doc).is_empty());
            assert!(doc.get("error_message").is_none());
        }
    }

    #[test]
    fn error_envelopes_map_by_http_status() {
        let cases = [
            (400, "INVALID_ARGUMENT", "INVALID_REQUEST"),
            (401, "UNAUTHENTICATED", "REQUEST_DENIED"),
            (403, "PERMISSION_DENIED", "REQUEST_DENIED"),
            (429, "RESOURCE_EXHAUSTED", "OVER_QUERY_LIMIT"),
            (500, "INTERNAL", "UNKNOWN_ERROR"),
            (503, "UNAVAILABLE", "UNKNOWN_ERROR"),
            (404, "NOT_FOUND", "UNKNOWN_ERROR"),
        ];
        for (http, google, want) in cases {
            let body = json!({"error": {"code": http, "message": format!("msg {http}"), "status": google}});
            let doc = new_document(http, body.to_string().as_bytes(), 5);
            let doc = doc.unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status(&doc), want, "{http}");
            assert_eq!(message(&doc), format!("msg {http}"));
            assert_eq!(
                keys(&doc),
                ["html_attributions", "results", "status", "error_message"]
            );
        }
        let doc = new_document(500, br#"{"error": {"code": 500}}"#, 5);
        let doc = doc.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(message(&doc), "Places answered HTTP 500");
    }

    #[test]
    fn new_document_rejects_what_is_not_searchnearby() {
        assert_eq!(
            new_document(200, b"<html>", 5),
            Err(Failure::NotJson { http: 200 })
        );
        assert_eq!(new_document(502, b"", 5), Err(Failure::NotJson { http: 502 }));
        assert_eq!(new_document(200, b"[]", 5), Err(Failure::NotPlaces { http: 200 }));
        assert_eq!(
            new_document(200, br#"{"places": 3}"#, 5),
            Err(Failure::NotPlaces { http: 200 })
        );
        assert_eq!(
            new_document(500, br#"{"oops": 1}"#, 5),
            Err(Failure::NotPlaces { http: 500 })
        );
    }

    #[test]
    fn legacy_document_passes_through_and_cuts_to_bound() {
        let body = br#"{"html_attributions": [], "next_page_token": "t", "results": [{"b": 1, "a": 2}, {"n": 2}, {"n": 3}], "status": "OK"}"#;
        let doc = legacy_document(200, body, 2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            keys(&doc),
            ["html_attributions", "next_page_token", "results", "status"]
        );
        assert_eq!(results(&doc).len(), 2);
        assert_eq!(keys(&results(&doc)[0]), ["b", "a"]);
    }

    #[test]
    fn legacy_document_keeps_google_statuses_whatever_the_http_code() {
        let body = br#"{"error_message": "slow down", "html_attributions": [], "results": [], "status": "OVER_QUERY_LIMIT"}"#;
        for http in [200, 429, 500] {
            let doc = legacy_document(http, body, 5).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(status(&doc), "OVER_QUERY_LIMIT");
            assert_eq!(
                keys(&doc),
                ["error_message", "html_attributions", "results", "status"]
            );
        }
    }

    #[test]
    fn legacy_document_without_status() {
        assert_eq!(
            legacy_document(502, b"Bad Gateway", 5),
            Err(Failure::NotJson { http: 502 })
        );
        assert_eq!(
            legacy_document(200, br#"{"results": []}"#, 5),
            Err(Failure::NotPlaces { http: 200 })
        );
        let env = br#"{"error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}}"#;
        let doc = legacy_document(403, env, 5).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!((status(&doc), message(&doc)), ("REQUEST_DENIED", "no"));
    }

    /// Found by src/fuzz.rs: a body with a status but not the two arrays was passed
    /// through, and the reply lacked the legacy shape SPEC §2 promises.
    #[test]
    fn legacy_document_without_both_arrays_is_not_places() {
        for body in [
            &br#"{"html_attributions": [], "status": "REQUEST_DENIED"}"#[..],
            br#"{"results": [], "status": "ZERO_RESULTS"}"#,
            br#"{"html_attributions": [], "results": null, "status": "OK"}"#,
            br#"{"html_attributions": "x", "results": [], "status": "OK"}"#,
        ] {
            assert_eq!(
                legacy_document(200, body, 5),
                Err(Failure::NotPlaces { http: 200 }),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }

    /// Found by src/fuzz.rs: without serde_json's float_roundtrip a number could come back
    /// one bit off, so the reply printed another number than Google sent.
    #[test]
    fn numbers_in_an_answer_are_printed_as_google_sent_them() {
        let body = br#"{"places": [{"location": {"latitude": -8.850773685734031e-181, "longitude": 3.7415508855866613e62}}]}"#;
        let text = legacy_json::pretty(&answer_document(Api::New, 200, body, 1));
        assert!(text.contains("\"lat\" : -8.850773685734031e-181,"), "{text}");
        assert!(text.contains("\"lng\" : 3.7415508855866613e+62\n"), "{text}");
    }

    #[test]
    fn failures_say_what_failed() {
        let cases = [
            (
                Failure::TimedOut(Duration::from_millis(5000)),
                "Places request failed: timed out after 5000 ms",
            ),
            (Failure::Refused, "Places request failed: connection refused"),
            (
                Failure::Dropped,
                "Places request failed: connection closed before the answer was complete",
            ),
            (Failure::HostNotFound, "Places request failed: host not found"),
            (
                Failure::TooLarge,
                "Places request failed: answer larger than 4194304 bytes",
            ),
            (
                Failure::Transport("tls: bad cert".into()),
                "Places request failed: tls: bad cert",
            ),
            (
                Failure::NotJson { http: 502 },
                "Places answered HTTP 502 with a body that is not JSON",
            ),
            (
                Failure::NotPlaces { http: 200 },
                "Places answered HTTP 200 with JSON that is not a Nearby Search answer",
            ),
        ];
        for (f, want) in cases {
            assert_eq!(f.to_string(), want);
        }
    }

    #[test]
    fn the_radius_goes_into_json_as_the_exact_number_of_metres() {
        for (km, json) in [
            ("10", "10000"),
            ("0.0001", "0.1"),
            ("12.5", "12500"),
            ("0.0125", "12.5"),
        ] {
            assert_eq!(radius_json(&radius_km(km)).to_string(), json, "{km} km");
        }
    }

    #[test]
    fn key_is_percent_encoded_and_redacted_both_ways() {
        assert_eq!(encode(KEY), ENC_KEY);
        assert_eq!(encode("AZaz09-_.~"), "AZaz09-_.~");
        let up = Upstream::new(&cfg(Api::Legacy, "http://127.0.0.1:9"), KEY.into());
        let text = format!("bad uri: http://x/?key={ENC_KEY}&k2={KEY}");
        assert_eq!(up.redact(&text), "bad uri: http://x/?key=<key>&k2=<key>");
        let none = Upstream::new(&cfg(Api::Legacy, "http://127.0.0.1:9"), String::new());
        assert_eq!(none.redact("as is"), "as is");
    }

    // ---- the pool, without Google ----

    struct Reactor {
        poll: mio::Poll,
        waker: Arc<mio::Waker>,
    }

    fn reactor() -> Reactor {
        let poll = mio::Poll::new().unwrap_or_else(|e| panic!("{e}"));
        let waker = mio::Waker::new(poll.registry(), mio::Token(7)).unwrap_or_else(|e| panic!("{e}"));
        Reactor {
            poll,
            waker: Arc::new(waker),
        }
    }

    fn pool<T: Fair>(
        r: &Reactor,
        api: Api,
        url: &str,
        key: Option<&str>,
        workers: usize,
        queue: usize,
    ) -> Pool<T> {
        let mut c = cfg(api, url);
        c.workers = workers;
        Pool::start(&c, key.map(String::from), Arc::clone(&r.waker), queue).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Drains only on waker events, as the reactor does, until `n` answers arrived.
    fn collect<T>(r: &mut Reactor, pool: &mut Pool<T>, n: usize) -> Vec<(T, Arc<str>)> {
        let deadline = Instant::now() + WAIT;
        let mut events = mio::Events::with_capacity(8);
        let mut got = Vec::new();
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "only {} of {n} answers arrived", got.len());
            if let Err(e) = r.poll.poll(&mut events, Some(left)) {
                assert_eq!(e.kind(), io::ErrorKind::Interrupted, "{e}");
            }
            if events.iter().any(|e| e.token() == mio::Token(7)) {
                pool.drain(|t, a| got.push((t, a)));
            }
        }
        got
    }

    fn now(s: Submit) -> Value {
        match s {
            Submit::Now(doc) => checked(&doc),
            Submit::Queued => panic!("expected an immediate answer"),
        }
    }

    #[test]
    fn bound_zero_answers_ok_without_a_call() {
        let stub = PlacesStub::start();
        let r = reactor();
        let mut p: Pool<u32> = pool(&r, Api::New, &stub.url(), Some(KEY), 1, 4);
        let doc = now(p.submit(1, query(0)));
        assert_eq!(legacy_json::pretty(&doc), legacy_json::ok_empty());
        let mut no_key: Pool<u32> = pool(&r, Api::New, &stub.url(), None, 1, 4);
        assert_eq!(status(&now(no_key.submit(1, query(0)))), "OK");
        thread::sleep(Duration::from_millis(50));
        assert!(stub.requests().is_empty());
        assert_eq!(p.in_flight(), 0);
    }

    #[test]
    fn no_key_is_request_denied_naming_the_variable() {
        let stub = PlacesStub::start();
        let r = reactor();
        for key in [None, Some("")] {
            let mut p: Pool<u32> = pool(&r, Api::Legacy, &stub.url(), key, 1, 4);
            let doc = now(p.submit(1, query(5)));
            assert_eq!(status(&doc), "REQUEST_DENIED");
            assert_eq!(
                message(&doc),
                "no Places API key: set the environment variable GOOGLE_PLACES_API_KEY and restart the server"
            );
        }
        thread::sleep(Duration::from_millis(50));
        assert!(stub.requests().is_empty());
    }

    // ---- the pool against the stub ----

    #[test]
    fn identical_queries_share_one_call_and_all_get_the_answer() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_millis(200)));
        let mut r = reactor();
        let mut p: Pool<&str> = pool(&r, Api::Legacy, &stub.url(), Some(KEY), 4, 8);
        assert_eq!(p.submit("a", query(5)), Submit::Queued);
        assert_eq!(p.submit("b", query(5)), Submit::Queued);
        assert_eq!(p.submit("c", query(5)), Submit::Queued);
        assert_eq!(p.submit("other bound", query(4)), Submit::Queued);
        assert_eq!(p.in_flight(), 2);
        let mut got = collect(&mut r, &mut p, 4);
        got.sort_by_key(|(t, _)| *t);
        let tags: Vec<&str> = got.iter().map(|(t, _)| *t).collect();
        assert_eq!(tags, ["a", "b", "c", "other bound"]);
        assert!(Arc::ptr_eq(&got[0].1, &got[1].1) && Arc::ptr_eq(&got[1].1, &got[2].1));
        assert_eq!(results(&checked(&got[0].1)).len(), 5);
        assert_eq!(results(&checked(&got[3].1)).len(), 4);
        assert_eq!(stub.requests().len(), 2);
        assert_eq!(p.in_flight(), 0);
        // Once answered, the same query is a new call.
        assert_eq!(p.submit("d", query(5)), Submit::Queued);
        assert_eq!(collect(&mut r, &mut p, 1).len(), 1);
        assert_eq!(stub.requests().len(), 3);
        p.shutdown();
    }

    #[test]
    fn full_queue_answers_busy_at_once() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_millis(300)));
        let mut r = reactor();
        let mut p: Pool<u32> = pool(&r, Api::New, &stub.url(), Some(KEY), 1, 1);
        let at = |lat: f64| Query { lat, ..query(3) };
        assert_eq!(p.submit(1, at(1.0)), Submit::Queued);
        stub.wait_requests(1, WAIT); // the only worker is now busy
        assert_eq!(p.submit(2, at(2.0)), Submit::Queued); // waits in the queue
        let doc = now(p.submit(3, at(3.0)));
        assert_eq!(status(&doc), "UNKNOWN_ERROR");
        assert!(message(&doc).starts_with("server busy"), "{doc}");
        // Joining an identical in-flight query needs no queue room.
        assert_eq!(p.submit(4, at(2.0)), Submit::Queued);
        let mut got = collect(&mut r, &mut p, 3);
        got.sort_by_key(|(t, _)| *t);
        assert_eq!(got.iter().map(|(t, _)| *t).collect::<Vec<_>>(), [1, 2, 4]);
        assert!(got.iter().all(|(_, a)| status(&checked(a)) == "OK"));
        assert_eq!(stub.requests().len(), 2);
    }

    #[test]
    fn coalesced_wakes_lose_nothing() {
        let stub = PlacesStub::start();
        let mut r = reactor();
        let mut p: Pool<usize> = pool(&r, Api::New, &stub.url(), Some(KEY), 3, 64);
        for round in 0..3 {
            for i in 0..12 {
                let q = Query {
                    lat: i as f64,
                    ..query(1)
                };
                assert_eq!(p.submit(round * 100 + i, q), Submit::Queued);
            }
            let got = collect(&mut r, &mut p, 12);
            assert_eq!(got.len(), 12);
            let mut tags: Vec<usize> = got.into_iter().map(|(t, _)| t).collect();
            tags.sort_unstable();
            assert_eq!(tags, (0..12).map(|i| round * 100 + i).collect::<Vec<_>>());
        }
        let mut extra = 0;
        p.drain(|_, _| extra += 1);
        assert_eq!(extra, 0);
    }

    #[test]
    fn shutdown_does_not_wait_for_a_slow_call() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_secs(3)));
        let r = reactor();
        let mut p: Pool<u32> = pool(&r, Api::Legacy, &stub.url(), Some(KEY), 2, 4);
        assert_eq!(p.submit(1, query(2)), Submit::Queued);
        assert_eq!(p.submit(2, query(3)), Submit::Queued);
        assert_eq!(p.submit(3, query(4)), Submit::Queued);
        stub.wait_requests(2, WAIT);
        let started = Instant::now();
        p.shutdown();
        assert!(
            started.elapsed() < Duration::from_millis(600),
            "{:?}",
            started.elapsed()
        );
        drop(stub);
    }

    #[test]
    fn shutdown_of_an_idle_pool_joins_its_workers() {
        let r = reactor();
        let p: Pool<u32> = pool(&r, Api::Legacy, "http://127.0.0.1:9", Some(KEY), 4, 4);
        let started = Instant::now();
        p.shutdown();
        assert!(started.elapsed() < Duration::from_millis(200));
    }

    // ---- redirects, retries, the breaker, max_rps, fairness, counters ----

    fn quick() -> Tuning {
        Tuning {
            retry_base: Duration::from_millis(5),
            ..Tuning::default()
        }
    }

    fn tuned_pool<T: Fair>(r: &Reactor, c: &config::Places, tuning: Tuning) -> Pool<T> {
        Pool::start_tuned(c, Some(KEY.into()), Arc::clone(&r.waker), 64, tuning)
            .unwrap_or_else(|e| panic!("{e}"))
    }

    fn at(lat: f64) -> Query {
        Query { lat, ..query(3) }
    }

    fn unavailable(v: &Value) -> bool {
        status(v) == "UNKNOWN_ERROR" && message(v) == UNAVAILABLE
    }

    #[test]
    fn redirects_are_not_followed_and_the_key_stays_home() {
        let home = PlacesStub::start();
        let elsewhere = PlacesStub::start_on("127.0.0.2");
        for (api, http, path) in [
            (Api::New, 302, NEW_PATH),
            (Api::New, 307, NEW_PATH),
            (Api::New, 308, NEW_PATH),
            (Api::Legacy, 301, LEGACY_PATH),
            (Api::Legacy, 302, LEGACY_PATH),
        ] {
            home.set(Behaviour::Redirect {
                http,
                location: format!("{}{path}?key={KEY}", elsewhere.url()),
            });
            let doc = checked(&upstream(api, &home).answer(&query(3)));
            assert_eq!(status(&doc), "UNKNOWN_ERROR");
            assert_eq!(
                message(&doc),
                format!(
                    "Places answered HTTP {http}, a redirect; herd does not follow redirects (check places.url)"
                )
            );
        }
        assert_eq!(home.requests().len(), 5);
        assert!(elsewhere.requests().is_empty(), "a redirect was followed");
        assert_eq!(elsewhere.connections(), 0);
    }

    #[test]
    fn failed_connections_429_and_5xx_are_retried_other_4xx_never() {
        let stub = PlacesStub::start();
        let up = upstream(Api::New, &stub);
        let envelope = |http: u16| Behaviour::Envelope {
            http,
            status: "X".into(),
            message: format!("google says {http}"),
        };
        let cases = [
            (vec![envelope(503), envelope(500)], "OK", 3),
            (vec![envelope(429)], "OK", 2),
            (vec![Behaviour::Drop], "OK", 2),
            (vec![Behaviour::NotJson { http: 502 }], "OK", 2),
            (vec![envelope(400)], "INVALID_REQUEST", 1),
            (vec![envelope(403)], "REQUEST_DENIED", 1),
            (vec![envelope(404)], "UNKNOWN_ERROR", 1),
            (
                vec![Behaviour::Redirect {
                    http: 302,
                    location: "http://127.0.0.1:9/".into(),
                }],
                "UNKNOWN_ERROR",
                1,
            ),
            // At most two retries.
            (
                vec![envelope(503), envelope(503), envelope(503)],
                "UNKNOWN_ERROR",
                3,
            ),
        ];
        for (script, want, calls) in cases {
            let before = stub.requests().len();
            stub.script(script.clone());
            let counters = PlacesCounters::default();
            let looked = up.lookup(&query(3), &quick(), &counters, || true);
            assert_eq!(looked.status, want, "{script:?}");
            checked(&looked.doc);
            assert_eq!(stub.requests().len() - before, calls, "{script:?}");
            let s = counters.snapshot();
            assert_eq!((s.attempts, s.retries), (calls as u64, calls as u64 - 1));
            stub.script(Vec::new());
            // Whatever was left of the script must not leak into the next case.
            while up.lookup(&query(1), &quick(), &counters, || false).status != "OK" {}
        }
        // The caller may refuse a retry (the rate cap does).
        stub.script(vec![envelope(503)]);
        let before = stub.requests().len();
        let looked = up.lookup(&query(3), &quick(), &PlacesCounters::default(), || false);
        assert_eq!(
            (looked.status.as_str(), stub.requests().len() - before),
            ("UNKNOWN_ERROR", 1)
        );
    }

    #[test]
    fn retries_stay_inside_the_timeout_budget() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Envelope {
            http: 503,
            status: "UNAVAILABLE".into(),
            message: "down".into(),
        });
        let mut c = cfg(Api::New, &stub.url());
        // The first backoff (50 ms at least) does not fit: no retry at all.
        c.timeout = Duration::from_millis(40);
        let slow = Tuning {
            retry_base: Duration::from_millis(100),
            ..Tuning::default()
        };
        let looked =
            Upstream::new(&c, KEY.into()).lookup(&query(3), &slow, &PlacesCounters::default(), || true);
        assert_eq!(looked.status, "UNKNOWN_ERROR");
        assert_eq!(stub.requests().len(), 1);
        // A retry that hangs: the whole lookup still ends by the deadline.
        stub.set(Behaviour::Delay(Duration::from_millis(1000)));
        stub.script(vec![Behaviour::Drop]);
        c.timeout = Duration::from_millis(300);
        let started = Instant::now();
        let looked =
            Upstream::new(&c, KEY.into()).lookup(&query(3), &quick(), &PlacesCounters::default(), || true);
        assert!(
            started.elapsed() < Duration::from_millis(450),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(looked.status, "UNKNOWN_ERROR");
        assert!(message(&checked(&looked.doc)).contains("timed out after 300 ms"));
    }

    #[test]
    fn breaker_opens_answers_at_once_and_one_probe_decides() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::NotJson { http: 200 });
        let mut r = reactor();
        let tuning = Tuning {
            breaker_open: Duration::from_millis(300),
            ..quick()
        };
        let mut p: Pool<u32> = tuned_pool(&r, &cfg(Api::New, &stub.url()), tuning);
        for i in 0..5 {
            assert_eq!(p.submit(i, at(f64::from(i))), Submit::Queued);
            collect(&mut r, &mut p, 1);
        }
        assert_eq!(p.stats().breaker, BreakerState::Open);
        let started = Instant::now();
        assert!(unavailable(&now(p.submit(9, at(9.0)))));
        assert!(started.elapsed() < Duration::from_millis(50));
        assert_eq!(stub.requests().len(), 5, "no call while open");
        // After the pause a probe goes out; others are still refused while it is out.
        thread::sleep(Duration::from_millis(320));
        stub.set(Behaviour::Delay(Duration::from_millis(100)));
        stub.script(vec![Behaviour::NotJson { http: 200 }]);
        assert_eq!(p.submit(10, at(10.0)), Submit::Queued);
        assert_eq!(p.stats().breaker, BreakerState::Probing);
        assert!(unavailable(&now(p.submit(11, at(11.0)))));
        // A lookup identical to the probe shares it.
        assert_eq!(p.submit(12, at(10.0)), Submit::Queued);
        let got = collect(&mut r, &mut p, 2);
        assert!(got.iter().all(|(_, a)| status(&checked(a)) == "UNKNOWN_ERROR"));
        assert_eq!(p.stats().breaker, BreakerState::Open, "a failed probe reopens");
        assert!(unavailable(&now(p.submit(13, at(13.0)))));
        thread::sleep(Duration::from_millis(320));
        assert_eq!(p.submit(14, at(14.0)), Submit::Queued);
        let got = collect(&mut r, &mut p, 1);
        assert_eq!(status(&checked(&got[0].1)), "OK");
        let s = p.stats();
        assert_eq!(
            (s.breaker, s.breaker_opened, s.breaker_refused),
            (BreakerState::Closed, 2, 3)
        );
        assert_eq!(p.submit(15, at(15.0)), Submit::Queued);
        assert_eq!(collect(&mut r, &mut p, 1).len(), 1);
        assert_eq!(stub.requests().len(), 8);
    }

    #[test]
    fn calls_queued_before_the_breaker_opened_are_not_made() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::NotJson { http: 200 });
        let mut r = reactor();
        let mut c = cfg(Api::New, &stub.url());
        c.workers = 1;
        let mut p: Pool<u32> = tuned_pool(&r, &c, quick());
        for i in 0..8 {
            assert_eq!(p.submit(i, at(f64::from(i))), Submit::Queued);
        }
        let got = collect(&mut r, &mut p, 8);
        assert_eq!(got.iter().filter(|(_, a)| unavailable(&checked(a))).count(), 3);
        assert_eq!(stub.requests().len(), 5);
    }

    #[test]
    fn max_rps_answers_over_query_limit_at_once() {
        let stub = PlacesStub::start();
        let mut r = reactor();
        let mut c = cfg(Api::New, &stub.url());
        c.max_rps = 2;
        let mut p: Pool<u32> = tuned_pool(&r, &c, quick());
        assert_eq!(p.submit(1, at(1.0)), Submit::Queued);
        assert_eq!(p.submit(2, at(2.0)), Submit::Queued);
        let doc = now(p.submit(3, at(3.0)));
        assert_eq!(status(&doc), "OVER_QUERY_LIMIT");
        assert!(message(&doc).contains("places.max_rps: 2"), "{doc}");
        // Joining an identical lookup makes no call, so it needs no token.
        assert_eq!(p.submit(4, at(2.0)), Submit::Queued);
        assert_eq!(collect(&mut r, &mut p, 3).len(), 3);
        assert_eq!(p.stats().rate_limited, 1);
        assert_eq!(stub.requests().len(), 2);
        thread::sleep(Duration::from_millis(550));
        assert_eq!(p.submit(5, at(5.0)), Submit::Queued);
        assert_eq!(collect(&mut r, &mut p, 1).len(), 1);
    }

    #[test]
    fn a_newcomer_is_not_queued_behind_a_flood() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_millis(50)));
        let mut r = reactor();
        let mut c = cfg(Api::New, &stub.url());
        c.workers = 1;
        let mut p: Pool<u32> = tuned_pool(&r, &c, quick());
        // Connection 1 queues 30 lookups, then connection 2 asks for one.
        for i in 0..30 {
            assert_eq!(p.submit(1, at(f64::from(i))), Submit::Queued);
        }
        stub.wait_requests(1, WAIT);
        assert_eq!(p.submit(2, at(-1.0)), Submit::Queued);
        let got = collect(&mut r, &mut p, 31);
        let pos = got.iter().position(|(t, _)| *t == 2);
        assert!(pos.is_some_and(|i| i <= 3), "answered as number {pos:?} of 31");
        // Connection 1's own lookups were made in its order.
        let lats: Vec<f64> = stub
            .requests()
            .iter()
            .filter_map(|r| {
                r.json()?
                    .pointer("/locationRestriction/circle/center/latitude")?
                    .as_f64()
            })
            .filter(|&l| l >= 0.0)
            .collect();
        assert_eq!(lats, (0..30).map(f64::from).collect::<Vec<_>>());
        let s = p.stats();
        assert_eq!((s.queue_depth, s.in_flight, s.latency_count), (0, 0, 31));
        assert_eq!(s.calls[0], ("OK", 31));
        assert!(s.latency_sum_seconds >= 31.0 * 0.05, "{s:?}");
    }

    #[test]
    fn a_shared_lookup_starts_at_the_turn_of_whoever_comes_first() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_millis(50)));
        let mut r = reactor();
        let mut c = cfg(Api::New, &stub.url());
        c.workers = 1;
        let mut p: Pool<u32> = tuned_pool(&r, &c, quick());
        for i in 0..20 {
            assert_eq!(p.submit(1, at(f64::from(i))), Submit::Queued);
        }
        stub.wait_requests(1, WAIT);
        // Connection 2 asks for what connection 1 queued last.
        assert_eq!(p.submit(2, at(19.0)), Submit::Queued);
        let got = collect(&mut r, &mut p, 21);
        let pos = got.iter().position(|(t, _)| *t == 2);
        assert!(pos.is_some_and(|i| i <= 3), "answered as number {pos:?}");
        assert_eq!(stub.requests().len(), 20, "still one call for both");
        assert_eq!(p.stats().shared, 1);
    }

    // ---- real HTTP against the stub: legacy ----

    #[test]
    fn legacy_request_shape() {
        let stub = PlacesStub::start();
        let up = upstream(Api::Legacy, &stub);
        let mut q = query(5);
        q.radius = radius_km("0.0001");
        checked(&up.answer(&q));
        let reqs = stub.requests();
        assert_eq!(reqs.len(), 1);
        let req = &reqs[0];
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/maps/api/place/nearbysearch/json");
        let params: Vec<(&str, &str)> = req.query.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            params,
            [
                ("location", "34.06893,-118.445127"),
                ("radius", "0.1"),
                ("key", KEY)
            ]
        );
        assert!(req.body.is_empty());
        assert!(req.header("x-goog-api-key").is_none());
    }

    #[test]
    fn legacy_results_are_cut_to_the_bound() {
        let stub = PlacesStub::start();
        let up = upstream(Api::Legacy, &stub);
        for bound in [1, 5, 20] {
            let doc = checked(&up.answer(&query(bound)));
            assert_eq!(status(&doc), "OK");
            assert_eq!(results(&doc).len(), usize::from(bound));
            assert_eq!(
                keys(&doc),
                ["html_attributions", "next_page_token", "results", "status"]
            );
            assert_eq!(doc["next_page_token"], NEXT_PAGE_TOKEN);
            assert_eq!(results(&doc)[0]["name"], PLACES[0].name);
        }
    }

    #[test]
    fn legacy_answer_looks_like_google() {
        let stub = PlacesStub::start();
        let text = upstream(Api::Legacy, &stub).answer(&query(2));
        let doc = checked(&text);
        assert!(
            text.starts_with("{\n   \"html_attributions\" : [],\n   \"next_page_token\" : "),
            "{text}"
        );
        assert!(
            text.contains(
                "\n         \"types\" : [ \"university\", \"point_of_interest\", \"establishment\" ],\n"
            ),
            "{text}"
        );
        // Google's \u003c escapes come back as plain UTF-8 text.
        assert!(
            text.contains("\"<a href=\\\"https://maps.google.com/maps/contrib/"),
            "{text}"
        );
        assert_eq!(
            keys(&results(&doc)[1])[..3],
            ["business_status", "geometry", "icon"]
        );
        assert!(text.ends_with("\n   \"status\" : \"OK\"\n}"));
    }

    #[test]
    fn legacy_error_statuses_pass_through() {
        let stub = PlacesStub::start();
        let up = upstream(Api::Legacy, &stub);
        let cases = [
            ("REQUEST_DENIED", Some("The provided API key is invalid.")),
            (
                "OVER_QUERY_LIMIT",
                Some("You have exceeded your daily request quota for this API."),
            ),
            ("INVALID_REQUEST", None),
        ];
        for (google, msg) in cases {
            stub.set(Behaviour::LegacyStatus {
                status: google.into(),
                message: msg.map(String::from),
            });
            let text = up.answer(&query(5));
            let doc = checked(&text);
            assert_eq!(status(&doc), google);
            let mut want = String::from("{\n");
            if let Some(m) = msg {
                want += &format!("   \"error_message\" : \"{m}\",\n");
            }
            want += &format!(
                "   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"{google}\"\n}}"
            );
            assert_eq!(text.as_ref(), want);
        }
    }

    #[test]
    fn legacy_zero_results() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::ZeroResults);
        let doc = checked(&upstream(Api::Legacy, &stub).answer(&query(5)));
        assert_eq!(status(&doc), "ZERO_RESULTS");
        assert!(results(&doc).is_empty());
    }

    #[test]
    fn legacy_missing_key_gets_googles_answer() {
        let stub = PlacesStub::start();
        let up = Upstream::new(&cfg(Api::Legacy, &stub.url()), String::new());
        let doc = checked(&up.answer(&query(5)));
        assert_eq!((status(&doc), message(&doc)), ("REQUEST_DENIED", LEGACY_NO_KEY));
        assert_eq!(stub.requests()[0].param("key"), Some(""));
    }

    // ---- real HTTP against the stub: Places API (New) ----

    #[test]
    fn new_request_shape() {
        let stub = PlacesStub::start();
        let up = upstream(Api::New, &stub);
        let mut q = query(7);
        q.radius = radius_km("0.0001");
        checked(&up.answer(&q));
        checked(&up.answer(&query(20)));
        let reqs = stub.requests();
        assert_eq!(reqs.len(), 2);
        let req = &reqs[0];
        assert_eq!(req.method, "POST");
        assert_eq!(req.path, "/v1/places:searchNearby");
        assert!(req.query.is_empty());
        assert_eq!(req.header("x-goog-api-key"), Some(KEY));
        assert_eq!(req.header("x-goog-fieldmask"), Some(FIELD_MASK));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = String::from_utf8_lossy(&req.body);
        assert_eq!(
            body,
            r#"{"maxResultCount":7,"locationRestriction":{"circle":{"center":{"latitude":34.06893,"longitude":-118.445127},"radius":0.1}}}"#
        );
        assert_eq!(
            reqs[1]
                .json()
                .and_then(|b| b["locationRestriction"]["circle"]["radius"].as_u64()),
            Some(10000)
        );
        assert_eq!(
            reqs[1].json().map(|b| b["maxResultCount"].clone()),
            Some(json!(20))
        );
    }

    #[test]
    fn new_places_are_mapped_and_bounded() {
        let stub = PlacesStub::start();
        let up = upstream(Api::New, &stub);
        for bound in [1, 5, 20] {
            let doc = checked(&up.answer(&query(bound)));
            assert_eq!(status(&doc), "OK");
            assert_eq!(keys(&doc), ["html_attributions", "results", "status"]);
            let got = results(&doc);
            assert_eq!(got.len(), usize::from(bound));
            for (r, p) in got.iter().zip(PLACES.iter()) {
                assert_eq!(r["name"], p.name);
                assert_eq!(r["place_id"], p.id);
                assert_eq!(r["geometry"]["location"], json!({"lat": p.lat, "lng": p.lng}));
                assert_eq!(r["vicinity"], format!("{}, CA 90024, USA", p.vicinity));
                assert_eq!(r["types"], json!(p.types));
                assert_eq!(r.get("rating").and_then(Value::as_f64), p.rating.map(|r| r.0));
                assert_eq!(
                    r.get("user_ratings_total").and_then(Value::as_u64),
                    p.rating.map(|r| r.1)
                );
                assert_eq!(
                    r.get("business_status").and_then(Value::as_str),
                    p.business_status
                );
            }
        }
        // The city has no rating or status: those keys are simply absent.
        let doc = checked(&up.answer(&query(1)));
        assert_eq!(
            keys(&results(&doc)[0]),
            ["geometry", "name", "place_id", "types", "vicinity"]
        );
    }

    #[test]
    fn new_zero_results() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::ZeroResults);
        let doc = checked(&upstream(Api::New, &stub).answer(&query(5)));
        assert_eq!(status(&doc), "ZERO_RESULTS");
        assert!(results(&doc).is_empty());
    }

    #[test]
    fn new_error_envelopes_over_http() {
        let stub = PlacesStub::start();
        let up = upstream(Api::New, &stub);
        let cases = [
            (
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                "INVALID_REQUEST",
            ),
            (
                403,
                "PERMISSION_DENIED",
                "Places API (New) has not been used in project 1 before or it is disabled.",
                "REQUEST_DENIED",
            ),
            (
                429,
                "RESOURCE_EXHAUSTED",
                "Quota exceeded for quota metric 'SearchNearby requests'.",
                "OVER_QUERY_LIMIT",
            ),
            (500, "INTERNAL", "Internal error encountered.", "UNKNOWN_ERROR"),
        ];
        for (http, google, msg, want) in cases {
            stub.set(Behaviour::Envelope {
                http,
                status: google.into(),
                message: msg.into(),
            });
            let doc = checked(&up.answer(&query(5)));
            assert_eq!((status(&doc), message(&doc)), (want, msg), "{http}");
            assert!(results(&doc).is_empty());
        }
    }

    #[test]
    fn new_missing_key_gets_googles_403() {
        let stub = PlacesStub::start();
        let up = Upstream::new(&cfg(Api::New, &stub.url()), String::new());
        let doc = checked(&up.answer(&query(5)));
        assert_eq!((status(&doc), message(&doc)), ("REQUEST_DENIED", NEW_NO_KEY));
    }

    // ---- real HTTP against the stub: what can go wrong on the way ----

    #[test]
    fn blank_lines_in_googles_json_do_not_reach_the_reply() {
        let stub = PlacesStub::start();
        for api in [Api::Legacy, Api::New] {
            let up = upstream(api, &stub);
            stub.set(Behaviour::Normal);
            let normal = up.answer(&query(3));
            stub.set(Behaviour::BlankLines);
            let blank = up.answer(&query(3));
            checked(&blank);
            assert_eq!(blank, normal);
        }
    }

    #[test]
    fn not_json_is_unknown_error() {
        let stub = PlacesStub::start();
        for api in [Api::Legacy, Api::New] {
            for http in [200, 502] {
                stub.set(Behaviour::NotJson { http });
                let doc = checked(&upstream(api, &stub).answer(&query(5)));
                assert_eq!(status(&doc), "UNKNOWN_ERROR");
                let want = format!("Places answered HTTP {http} with a body that is not JSON");
                assert_eq!(message(&doc), want);
            }
        }
    }

    #[test]
    fn dropped_connection_is_unknown_error() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Drop);
        for api in [Api::Legacy, Api::New] {
            let doc = checked(&upstream(api, &stub).answer(&query(5)));
            assert_eq!(status(&doc), "UNKNOWN_ERROR");
            assert_eq!(message(&doc), Failure::Dropped.to_string());
        }
    }

    #[test]
    fn timeout_bounds_the_whole_call() {
        let stub = PlacesStub::start();
        stub.set(Behaviour::Delay(Duration::from_secs(3)));
        for api in [Api::Legacy, Api::New] {
            let mut c = cfg(api, &stub.url());
            c.timeout = Duration::from_millis(300);
            let started = Instant::now();
            let doc = checked(&Upstream::new(&c, KEY.into()).answer(&query(5)));
            let took = started.elapsed();
            assert!(
                took >= Duration::from_millis(290) && took < Duration::from_millis(1500),
                "{took:?}"
            );
            assert_eq!(status(&doc), "UNKNOWN_ERROR");
            assert_eq!(message(&doc), "Places request failed: timed out after 300 ms");
        }
    }

    #[test]
    fn refused_connection_is_unknown_error() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
            l.local_addr().unwrap_or_else(|e| panic!("{e}")).port()
        };
        for api in [Api::Legacy, Api::New] {
            let up = Upstream::new(&cfg(api, &format!("http://127.0.0.1:{port}")), KEY.into());
            let doc = checked(&up.answer(&query(5)));
            assert_eq!(
                (status(&doc), message(&doc)),
                ("UNKNOWN_ERROR", "Places request failed: connection refused")
            );
        }
    }

    #[test]
    fn connections_are_reused() {
        let stub = PlacesStub::start();
        let up = upstream(Api::New, &stub);
        for _ in 0..3 {
            checked(&up.answer(&query(2)));
        }
        assert_eq!(stub.requests().len(), 3);
        assert_eq!(stub.connections(), 1);
    }

    // ---- the key never leaves ----

    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());

    struct Capture;

    impl log::Log for Capture {
        fn enabled(&self, _: &log::Metadata<'_>) -> bool {
            true
        }
        fn log(&self, record: &log::Record<'_>) {
            let line = format!("{} {} {}", record.level(), record.target(), record.args());
            LOG.lock().unwrap_or_else(PoisonError::into_inner).push(line);
        }
        fn flush(&self) {}
    }

    fn capture_logs() {
        static ONCE: Once = Once::new();
        ONCE.call_once(|| {
            if log::set_logger(&Capture).is_ok() {
                log::set_max_level(log::LevelFilter::Debug);
            }
        });
    }

    fn logged(needle: &str) -> Vec<String> {
        let lines = LOG.lock().unwrap_or_else(PoisonError::into_inner);
        lines.iter().filter(|l| l.contains(needle)).cloned().collect()
    }

    #[test]
    fn key_never_in_logs_or_replies() {
        capture_logs();
        let stub = PlacesStub::start();
        let behaviours = [
            Behaviour::Normal,
            Behaviour::Drop,
            Behaviour::NotJson { http: 500 },
            Behaviour::LegacyStatus {
                status: "REQUEST_DENIED".into(),
                message: Some("The provided API key is invalid.".into()),
            },
            Behaviour::Envelope {
                http: 400,
                status: "INVALID_ARGUMENT".into(),
                message: "API key not valid. Please pass a valid API key.".into(),
            },
        ];
        for api in [Api::Legacy, Api::New] {
            for b in &behaviours {
                stub.set(b.clone());
                let mut q = query(4);
                q.lat = -33.8670522; // marks this test's log lines
                checked(&upstream(api, &stub).answer(&q));
            }
            // A URL ureq refuses: its error may quote the URL, key included.
            let up = Upstream::new(&cfg(api, "http://bad host:1"), KEY.into());
            let doc = checked(&up.answer(&Query {
                lat: -33.8670522,
                ..query(4)
            }));
            assert_eq!(status(&doc), "UNKNOWN_ERROR");
        }
        let lines = logged("-33.8670522");
        assert_eq!(lines.len(), 12, "{lines:#?}");
        assert!(lines.iter().all(|l| l.starts_with("INFO ")), "{lines:#?}");
        let all = LOG.lock().unwrap_or_else(PoisonError::into_inner).join("\n");
        assert!(!all.contains(KEY) && !all.contains(ENC_KEY), "{all}");
        assert!(!all.contains("key="), "{all}");
        let ok = logged("places legacy -33.8670522,-118.445127 radius 10000 m bound 4: OK, 4 results, ");
        assert_eq!(ok.len(), 1, "{lines:#?}");
        assert!(ok[0].ends_with(" ms"), "{ok:?}");
        let failed = logged(
            "places new -33.8670522,-118.445127 radius 10000 m bound 4: UNKNOWN_ERROR (Places answered HTTP 500 with a body that is not JSON), 0 results, ",
        );
        assert_eq!(failed.len(), 1, "{lines:#?}");
    }
}
