//! Seeded fuzzing of every parser (issue 12): client lines through a real session and
//! table, neighbour records through the link module, herd.yml text through config
//! parsing, and Places answers through the legacy JSON mapping and printer.
//!
//! Input `i` of a target is generated from (seed, target, i) alone, so a run is the same
//! whatever the thread count and any input can be regenerated from the three numbers
//! printed with a failure. Each input is run under `catch_unwind` and its output checked
//! against the properties the SPEC promises, not just "did not crash". The `#[ignore]`d
//! targets are the long runs (`fuzz/run.sh`); the small runs and the format -> parse
//! round trips at the end run in every `cargo test`.

use std::fmt::{self, Write as _};
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use crate::config::{self, Api, Problem};
use crate::legacy_json;
use crate::lines::{Line, WriteQueue};
use crate::links::{Command, Links, NeighbourId};
use crate::places::{self, Pool};
use crate::protocol::{self, AtRecord, Parsed, Request, Timestamp};
use crate::session::{Session, Shared};
use crate::slab::ConnId;
use crate::table::{Rules, Table};
use crate::timer::Jitter;

/// A target's state (table, links, ...) is rebuilt this often, so memory stays flat over
/// millions of inputs and a run is a series of short, independent histories.
const RESET_EVERY: u64 = 1 << 14;
/// Failures printed in full; the rest are only counted.
const SHOWN_FAILURES: usize = 10;
/// The server name of the fuzzed session, and the herd it belongs to.
const ME: &str = "Fuzz";
const SERVERS: [&str; 3] = [ME, "Alpha", "Beta"];

// ---------------------------------------------------------------------------------------
// The driver

/// How much to run: from the environment for the long runs, fixed for the small ones.
#[derive(Clone, Copy, Debug)]
struct Settings {
    n: u64,
    /// First input index, so a failing input can be rerun on its own.
    from: u64,
    seed: u64,
    threads: usize,
    /// Stop early once this much time has passed (the count reached is reported).
    budget: Option<Duration>,
}

impl Settings {
    fn small(n: u64) -> Settings {
        Settings {
            n,
            from: 0,
            seed: 0x5eed,
            threads: 1,
            budget: None,
        }
    }

    /// HERD_FUZZ_N, HERD_FUZZ_SEED, HERD_FUZZ_FROM, HERD_FUZZ_THREADS, HERD_FUZZ_SECS.
    fn from_env() -> Settings {
        let var = |k: &str| std::env::var(k).ok().and_then(|v| parse_number(&v));
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Settings {
            n: var("HERD_FUZZ_N").unwrap_or(100_000),
            from: var("HERD_FUZZ_FROM").unwrap_or(0),
            seed: var("HERD_FUZZ_SEED").unwrap_or(1),
            threads: var("HERD_FUZZ_THREADS").map_or(cores, |t| t.clamp(1, 64) as usize),
            budget: var("HERD_FUZZ_SECS").map(Duration::from_secs),
        }
    }
}

/// Decimal, `0x` hex, and `_` separators allowed (`10_000_000`).
fn parse_number(text: &str) -> Option<u64> {
    let t = text.trim().replace('_', "");
    match t.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => t.parse().ok(),
    }
}

/// The generator one input draws from.
struct Rng(Jitter);

impl Rng {
    fn for_input(seed: u64, target: &str, i: u64) -> Rng {
        let salt = target.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Rng(Jitter::new(mix(seed
            ^ salt
            ^ i.wrapping_mul(0x9e37_79b9_7f4a_7c15))))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// 0..n; n must be positive.
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn digits(&mut self, n: usize, out: &mut Vec<u8>) {
        out.extend((0..n).map(|_| b'0' + self.below(10) as u8));
    }
}

/// splitmix64's finaliser: neighbouring input indices get unrelated seeds.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What one target does with one input: build its state, make an input, check it. The
/// check returns the kind of input it was (for the counts) or what property failed.
struct Target<S, I> {
    name: &'static str,
    make: fn() -> S,
    generate: fn(&mut Rng) -> I,
    check: fn(&mut S, &I) -> Result<&'static str, String>,
}

#[derive(Default)]
struct Report {
    done: u64,
    kinds: Vec<(&'static str, u64)>,
    failures: Vec<String>,
    failed: u64,
    slowest: (Duration, u64),
}

impl Report {
    fn count(&mut self, kind: &'static str, by: u64) {
        match self.kinds.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, n)) => *n += by,
            None => self.kinds.push((kind, by)),
        }
    }

    fn merge(&mut self, other: Report) {
        self.done += other.done;
        for (k, n) in other.kinds {
            self.count(k, n);
        }
        self.failures.extend(other.failures);
        self.failures.truncate(SHOWN_FAILURES);
        self.failed += other.failed;
        self.slowest = self.slowest.max(other.slowest);
    }
}

fn panic_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs one thread's share of the inputs: every `threads`-th block of `RESET_EVERY`
/// indices from block `first`. Each block starts from a fresh state, so what input `i`
/// meets depends only on the inputs before it in its block, not on the thread count.
fn run_share<S, I: fmt::Debug>(t: &Target<S, I>, set: &Settings, first: u64, started: Instant) -> Report {
    let mut report = Report::default();
    let end = set.from.saturating_add(set.n);
    let mut block = set.from / RESET_EVERY + first;
    loop {
        let start = (block * RESET_EVERY).max(set.from);
        if start >= end || set.budget.is_some_and(|b| started.elapsed() > b) {
            break;
        }
        let stop = ((block + 1) * RESET_EVERY).min(end);
        let mut state = (t.make)();
        for i in start..stop {
            if let Some(why) = run_one(t, set, i, &mut state, &mut report) {
                // A panic may have left the state half-changed: start afresh.
                if why.starts_with("panic") {
                    state = (t.make)();
                }
                report.failed += 1;
                if report.failures.len() < SHOWN_FAILURES {
                    let from = i - i % RESET_EVERY;
                    report.failures.push(format!(
                        "input #{i} (HERD_FUZZ_FROM={from} HERD_FUZZ_N={}): {why}",
                        i - from + 1
                    ));
                }
            }
        }
        block += set.threads as u64;
    }
    report
}

/// Input `i`: generated, checked, counted. Returns what failed, with the input.
fn run_one<S, I: fmt::Debug>(
    t: &Target<S, I>,
    set: &Settings,
    i: u64,
    state: &mut S,
    report: &mut Report,
) -> Option<String> {
    let input = (t.generate)(&mut Rng::for_input(set.seed, t.name, i));
    let began = Instant::now();
    let outcome = catch_unwind(AssertUnwindSafe(|| (t.check)(state, &input)));
    report.slowest = report.slowest.max((began.elapsed(), i));
    report.done += 1;
    let why = match outcome {
        Ok(Ok(kind)) => {
            report.count(kind, 1);
            return None;
        }
        Ok(Err(why)) => why,
        Err(payload) => format!("panic: {}", panic_text(payload.as_ref())),
    };
    Some(format!(
        "{}\n    input: {}",
        cut(&why),
        cut(&format!("{input:?}"))
    ))
}

/// At most 1,000 characters of a failure text: the input can be regenerated in full.
fn cut(text: &str) -> String {
    match text.char_indices().nth(1000) {
        Some((at, _)) => format!("{}... ({} bytes)", &text[..at], text.len()),
        None => text.to_string(),
    }
}

/// Runs a target over `set`, prints its figures, and fails the test on any failure.
fn drive<S, I: fmt::Debug>(t: &Target<S, I>, set: &Settings) -> Report
where
    Target<S, I>: Sync,
{
    let started = Instant::now();
    let mut report = Report::default();
    std::thread::scope(|scope| {
        let shares: Vec<_> = (0..set.threads as u64)
            .map(|first| scope.spawn(move || run_share(t, set, first, started)))
            .collect();
        for share in shares {
            match share.join() {
                Ok(r) => report.merge(r),
                Err(p) => report
                    .failures
                    .push(format!("harness panic: {}", panic_text(p.as_ref()))),
            }
        }
    });
    let secs = started.elapsed().as_secs_f64();
    let mut kinds = String::new();
    for (k, n) in &report.kinds {
        let _ = write!(kinds, " {k}={n}");
    }
    println!(
        "fuzz {}: {} inputs in {secs:.1} s = {:.0} inputs/s ({} threads, seed {}, from {}); {} failures; slowest #{} {:.2} ms;{kinds}",
        t.name,
        report.done,
        report.done as f64 / secs.max(1e-9),
        set.threads,
        set.seed,
        set.from,
        report.failed,
        report.slowest.1,
        report.slowest.0.as_secs_f64() * 1e3,
    );
    for f in &report.failures {
        println!("  {f}");
    }
    assert!(
        report.failed == 0 && report.failures.is_empty(),
        "fuzz {}: {} failures (rerun with HERD_FUZZ_SEED={} and the FROM and N shown)",
        t.name,
        report.failed,
        set.seed
    );
    if set.budget.is_none() {
        assert_eq!(report.done, set.n, "every input ran");
    }
    report
}

/// Bytes shown as text with anything unprintable escaped, for failure messages.
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

fn shown(b: &[u8]) -> String {
    b.escape_ascii().to_string()
}

// ---------------------------------------------------------------------------------------
// Shared generators

/// SPEC white space, weighted towards the plain space.
fn blank(r: &mut Rng, out: &mut Vec<u8>) {
    const SPACES: &[u8] = b"      \t\x0b\x0c\r\n";
    let n = if r.one_in(4) { 1 + r.below(3) } else { 1 };
    out.extend((0..n).map(|_| *r.pick(SPACES)));
}

/// Unsigned decimal text near the interesting edges of `limit` (leading zeros, the limit
/// itself with zero and non-zero fractions, far beyond it).
fn decimal(r: &mut Rng, limit: u64, out: &mut Vec<u8>) {
    match r.below(12) {
        0 => out.extend_from_slice(limit.to_string().as_bytes()),
        1 => {
            out.extend_from_slice(b"000");
            out.extend_from_slice(limit.to_string().as_bytes());
        }
        2 => out.extend_from_slice((limit + 1).to_string().as_bytes()),
        3 => {
            let n = 1 + r.below(30);
            r.digits(n, out)
        }
        4 => out.push(b'0'),
        _ => out.extend_from_slice((r.next() % (limit + 2)).to_string().as_bytes()),
    }
    match r.below(8) {
        0..=2 => {}
        3 => out.push(b'.'),
        4 => {
            out.push(b'.');
            out.extend(std::iter::repeat_n(b'0', 1 + r.below(12)));
        }
        5 => {
            out.extend_from_slice(b".");
            out.extend(std::iter::repeat_n(b'0', r.below(12)));
            out.push(b'1');
        }
        _ => {
            out.push(b'.');
            {
                let n = 1 + r.below(14);
                r.digits(n, out)
            };
        }
    }
}

fn location(r: &mut Rng, out: &mut Vec<u8>) {
    const SIGNS: &[u8] = b"+-+-+-+-x";
    if !r.one_in(3) {
        // Mostly in range, so that records win and replies are AT lines.
        for limit in [90, 180] {
            out.push(if r.one_in(2) { b'+' } else { b'-' });
            out.extend_from_slice(r.below(limit).to_string().as_bytes());
            if !r.one_in(4) {
                out.push(b'.');
                let n = 1 + r.below(8);
                r.digits(n, out);
            }
        }
        return;
    }
    out.push(*r.pick(SIGNS));
    decimal(r, 90, out);
    out.push(*r.pick(SIGNS));
    decimal(r, 180, out);
}

fn time(r: &mut Rng, out: &mut Vec<u8>) {
    match r.below(10) {
        0 => out.extend_from_slice(b"999999999999.9"),
        1 => {
            let n = 11 + r.below(3);
            r.digits(n, out)
        }
        2 => out.extend_from_slice(b"1e9"),
        3 => {
            // Within seconds of max_future_s ahead of the peer table's fixed clock.
            let secs = PEER_CLOCK + MAX_FUTURE.as_secs() - 3 + r.below(7) as u64;
            out.extend_from_slice(secs.to_string().as_bytes());
        }
        _ => {
            let secs = 1_600_000_000 + r.next() % 200_000_000;
            out.extend_from_slice(secs.to_string().as_bytes());
        }
    }
    if !r.one_in(4) {
        out.push(b'.');
        let n = if r.one_in(8) { r.below(30) } else { 1 + r.below(9) };
        r.digits(n, out);
    }
}

/// A client name: mostly from a small pool, so WHATSATs and records meet stored ones.
fn client(r: &mut Rng, out: &mut Vec<u8>) {
    const POOL: &[&[u8]] = &[
        b"kiwi.cs.ucla.edu",
        b"a",
        b"c1",
        b"c2",
        b"c3",
        b"\xc3\xa9t\xc3\xa9",
        b"\xff\xfe",
        b"AT",
        b"IAMAT",
        b"0123456789012345678901234",
    ];
    match r.below(8) {
        0 => {
            let n = 1 + r.below(40);
            out.extend((0..n).map(|_| {
                loop {
                    let b = r.next() as u8;
                    if !protocol::is_space(b) {
                        break b;
                    }
                }
            }));
        }
        _ => {
            let name = *r.pick(POOL);
            out.extend_from_slice(name);
        }
    }
}

/// A few random edits: flips, inserts of bytes that matter to the grammar, deletes,
/// duplicated runs, cuts.
fn mutate(r: &mut Rng, data: &mut Vec<u8>) {
    const SPECIAL: &[u8] = b" \t\r\n\x0b\x0c+-.0123456789e\x00\xff\x80\"\\{}[],:*&'#|>?!%@`";
    for _ in 0..1 + r.below(4) {
        let at = r.below(data.len() + 1);
        match r.below(6) {
            0 if at < data.len() => data[at] ^= 1 << r.below(8),
            1 => data.insert(at, *r.pick(SPECIAL)),
            2 => data.insert(at, r.next() as u8),
            3 if at < data.len() => {
                data.remove(at);
            }
            4 if at < data.len() => {
                let end = (at + 1 + r.below(16)).min(data.len());
                let run = data[at..end].to_vec();
                data.splice(at..at, run);
            }
            _ => data.truncate(at),
        }
    }
}

fn random_bytes(r: &mut Rng, max: usize) -> Vec<u8> {
    let n = r.below(max + 1);
    (0..n).map(|_| r.next() as u8).collect()
}

// ---------------------------------------------------------------------------------------
// A reference grammar, written for clarity, as an oracle for the fast parsers

mod reference {
    fn decimal(s: &[u8]) -> Option<(&[u8], &[u8])> {
        let (int, frac) = match s.iter().position(|&b| b == b'.') {
            Some(p) => (&s[..p], Some(&s[p + 1..])),
            None => (s, None),
        };
        let digits = |d: &[u8]| !d.is_empty() && d.iter().all(u8::is_ascii_digit);
        if !digits(int) || frac.is_some_and(|f| !digits(f)) {
            return None;
        }
        Some((int, frac.unwrap_or_default()))
    }

    /// Compares the text with the limit as numbers, digit strings without leading zeros.
    fn at_most(int: &[u8], frac: &[u8], limit: &str) -> bool {
        let start = int.iter().position(|&b| b != b'0').unwrap_or(int.len());
        let int = &int[start..];
        let limit = limit.as_bytes();
        match int.len().cmp(&limit.len()).then(int.cmp(limit)) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => frac.iter().all(|&b| b == b'0'),
            std::cmp::Ordering::Greater => false,
        }
    }

    pub fn location(s: &[u8]) -> bool {
        let sign = |b: &u8| *b == b'+' || *b == b'-';
        if s.is_empty() || !sign(&s[0]) {
            return false;
        }
        let Some(j) = s[1..].iter().position(sign).map(|p| p + 1) else {
            return false;
        };
        match (decimal(&s[1..j]), decimal(&s[j + 1..])) {
            (Some((a, af)), Some((b, bf))) => at_most(a, af, "90") && at_most(b, bf, "180"),
            _ => false,
        }
    }

    /// The time in nanoseconds, if the text is one.
    pub fn time(s: &[u8]) -> Option<i128> {
        let (int, frac) = decimal(s)?;
        if int.len() > 12 {
            return None;
        }
        let secs: i128 = std::str::from_utf8(int).ok()?.parse().ok()?;
        let mut nanos = 0i128;
        for k in 0..9 {
            nanos = nanos * 10 + frac.get(k).map_or(0, |&b| i128::from(b - b'0'));
        }
        Some(secs * 1_000_000_000 + nanos)
    }

    fn radius(s: &[u8]) -> bool {
        decimal(s).is_some_and(|(i, f)| i.iter().chain(f).any(|&b| b != b'0') && at_most(i, f, "50"))
    }

    fn bound(s: &[u8]) -> bool {
        !s.is_empty() && s.iter().all(u8::is_ascii_digit) && at_most(s, b"", "20")
    }

    /// `write_diff`'s shape, `[+-]D+.DDDDDDDDD`, with any number of integer digits: a
    /// diff is copied, never computed with.
    fn is_diff(s: &[u8]) -> bool {
        match s.split_first() {
            Some((b'+' | b'-', rest)) => decimal(rest).is_some_and(|(_, frac)| frac.len() == 9),
            _ => false,
        }
    }

    /// The signed difference in nanoseconds, if the text is a diff that fits an i128.
    pub fn diff(s: &[u8]) -> Option<i128> {
        if !is_diff(s) {
            return None;
        }
        let (&sign, rest) = s.split_first()?;
        let (int, frac) = decimal(rest)?;
        let int: i128 = std::str::from_utf8(int).ok()?.parse().ok()?;
        let frac: i128 = std::str::from_utf8(frac).ok()?.parse().ok()?;
        let v = int.checked_mul(1_000_000_000)?.checked_add(frac)?;
        Some(if sign == b'-' { -v } else { v })
    }

    fn fields(line: &[u8]) -> Vec<&[u8]> {
        line.split(|b| b" \t\n\r\x0b\x0c".contains(b))
            .filter(|f| !f.is_empty())
            .collect()
    }

    #[derive(Debug, PartialEq)]
    pub enum Class {
        Blank,
        Iamat,
        Whatsat,
        Invalid,
    }

    pub fn client_line(line: &[u8]) -> Class {
        match fields(line).as_slice() {
            [] => Class::Blank,
            [b"IAMAT", _, l, t] if location(l) && time(t).is_some() => Class::Iamat,
            [b"WHATSAT", _, r, b] if radius(r) && bound(b) => Class::Whatsat,
            _ => Class::Invalid,
        }
    }

    /// Whether the line is a well-formed record (server not checked).
    pub fn at_record(line: &[u8]) -> bool {
        match fields(line).as_slice() {
            [b"AT", _, d, _, l, t] => is_diff(d) && location(l) && time(t).is_some(),
            _ => false,
        }
    }
}

// ---------------------------------------------------------------------------------------
// Target 1: a client line through a session with a real table

struct ClientState {
    session: Session,
    sh: Shared,
    out: WriteQueue,
    // Kept alive for the pool's waker.
    _poll: mio::Poll,
}

fn make_client() -> ClientState {
    let (poll, waker) = poll_and_waker();
    let places = places_config(0);
    let pool = match Pool::start(&places, None, waker, 16) {
        Ok(p) => p,
        Err(e) => panic!("cannot start a Places pool without workers: {e}"),
    };
    let now = Instant::now();
    ClientState {
        session: Session::new("fuzz".into()),
        sh: Shared {
            name: ME.into(),
            servers: SERVERS.iter().map(|s| s.to_string()).collect(),
            table: ruled_table(),
            links: Links::new(ME.into(), Vec::new(), Duration::from_secs(5), now, 1),
            pool,
            scratch: Vec::new(),
            now,
            metrics: Arc::new(crate::metrics::Metrics::new(&[])),
        },
        out: WriteQueue::default(),
        _poll: poll,
    }
}

/// SPEC §7's default `max_future_s`, and a small `max_clients` so that a run meets a full
/// table often (the pool of client names has ten; random names fill the rest).
const MAX_FUTURE: Duration = Duration::from_secs(86_400);
const MAX_CLIENTS: usize = 64;
/// The peer target's table clock, fixed so that records at the max_future bound are
/// judged the same in every run.
const PEER_CLOCK: u64 = 1_790_000_000;

fn ruled_table() -> Table {
    Table::with_rules(Rules {
        max_future: Some(MAX_FUTURE),
        max_clients: MAX_CLIENTS,
        ttl: None,
    })
}

/// A new client while the table holds `MAX_CLIENTS`: refused.
fn refused_as_full(table: &Table, client: &[u8]) -> bool {
    table.get(client).is_none() && table.len() >= MAX_CLIENTS
}

fn poll_and_waker() -> (mio::Poll, Arc<mio::Waker>) {
    let poll = match mio::Poll::new() {
        Ok(p) => p,
        Err(e) => panic!("no poll: {e}"),
    };
    match mio::Waker::new(poll.registry(), mio::Token(0)) {
        Ok(w) => (poll, Arc::new(w)),
        Err(e) => panic!("no waker: {e}"),
    }
}

/// No key, so a WHATSAT is answered at once (REQUEST_DENIED, or OK for bound 0) and the
/// fuzzer never makes a call.
fn places_config(workers: usize) -> config::Places {
    config::Places {
        api: Api::New,
        url: "http://127.0.0.1:9".into(),
        key_env: "HERD_FUZZ_NO_SUCH_KEY".into(),
        timeout: Duration::from_millis(100),
        workers,
        max_rps: 0,
    }
}

#[derive(Debug)]
enum ClientInput {
    Complete(Bytes),
    Overlong(Bytes),
}

fn gen_client(r: &mut Rng) -> ClientInput {
    if r.one_in(64) {
        let head = random_bytes(r, protocol::OVERLONG_ECHO);
        return ClientInput::Overlong(Bytes(head));
    }
    let mut line = Vec::new();
    match r.below(10) {
        0..=3 => iamat_text(r, &mut line),
        4..=6 => whatsat_text(r, &mut line),
        7 => line = random_bytes(r, 80),
        _ => {
            if r.one_in(2) {
                iamat_text(r, &mut line);
            } else {
                whatsat_text(r, &mut line);
            }
            mutate(r, &mut line);
        }
    }
    ClientInput::Complete(Bytes(line))
}

fn iamat_text(r: &mut Rng, out: &mut Vec<u8>) {
    if r.one_in(3) {
        blank(r, out);
    }
    out.extend_from_slice(if r.one_in(40) { b"iamat" } else { b"IAMAT" });
    blank(r, out);
    client(r, out);
    blank(r, out);
    location(r, out);
    blank(r, out);
    time(r, out);
    if r.one_in(3) {
        blank(r, out);
    }
}

fn whatsat_text(r: &mut Rng, out: &mut Vec<u8>) {
    const BOUNDS: &[&[u8]] = &[
        b"0",
        b"1",
        b"5",
        b"20",
        b"020",
        b"21",
        b"-1",
        b"256",
        b"99999999999999999999",
    ];
    out.extend_from_slice(b"WHATSAT");
    blank(r, out);
    client(r, out);
    blank(r, out);
    decimal(r, 50, out);
    blank(r, out);
    if r.one_in(2) {
        let bound = *r.pick(BOUNDS);
        out.extend_from_slice(bound);
    } else {
        out.extend_from_slice((r.below(22)).to_string().as_bytes());
    }
}

fn drain(out: &mut WriteQueue) -> Result<Vec<u8>, String> {
    let mut sink = Vec::new();
    match out.flush(&mut sink) {
        Ok(true) => Ok(sink),
        other => Err(format!("the write queue did not drain: {other:?}")),
    }
}

fn invalid_reply(line: &[u8]) -> Vec<u8> {
    let mut want = b"? ".to_vec();
    want.extend_from_slice(line);
    want.push(b'\n');
    want
}

fn check_client(st: &mut ClientState, input: &ClientInput) -> Result<&'static str, String> {
    let conn = ConnId {
        index: 0,
        generation: 0,
    };
    let line = match input {
        ClientInput::Overlong(head) => {
            st.session
                .on_line(&mut st.sh, conn, &mut st.out, Line::Overlong(&head.0));
            let got = drain(&mut st.out)?;
            return expect_eq("over-long reply", &got, &invalid_reply(&head.0)).map(|()| "overlong");
        }
        ClientInput::Complete(line) => &line.0[..],
    };
    let parsed = protocol::parse_client_line(line);
    let class = reference::client_line(line);
    let agrees = matches!(
        (&parsed, &class),
        (Parsed::Blank, reference::Class::Blank)
            | (Parsed::Invalid, reference::Class::Invalid)
            | (Parsed::Request(Request::Iamat(_)), reference::Class::Iamat)
            | (Parsed::Request(Request::Whatsat(_)), reference::Class::Whatsat)
    );
    if !agrees {
        return Err(format!("parser says {parsed:?}, the reference grammar {class:?}"));
    }
    let stored_before = match &parsed {
        Parsed::Request(Request::Whatsat(w)) => st.sh.table.get(w.client).map(|rec| rec.line.clone()),
        _ => None,
    };
    let full = match &parsed {
        Parsed::Request(Request::Iamat(req)) => refused_as_full(&st.sh.table, req.client),
        _ => false,
    };
    let before = Timestamp::from_system_time(SystemTime::now());
    st.session
        .on_line(&mut st.sh, conn, &mut st.out, Line::Complete(line));
    let after = Timestamp::from_system_time(SystemTime::now());
    let got = drain(&mut st.out)?;
    match parsed {
        Parsed::Blank => expect_eq("reply to a blank line", &got, b"").map(|()| "blank"),
        Parsed::Invalid => {
            expect_eq("reply to an invalid line", &got, &invalid_reply(line)).map(|()| "invalid")
        }
        Parsed::Request(Request::Iamat(req)) => {
            // SPEC §7: too far ahead of the clock at reading, or a new client for a full
            // table: invalid. The clock was read between `before` and `after`.
            if req.time > after.saturating_add(MAX_FUTURE) || full {
                let kind = if full { "iamat-full" } else { "iamat-future" };
                return expect_eq("reply to a refused IAMAT", &got, &invalid_reply(line)).map(|()| kind);
            }
            if req.time > before.saturating_add(MAX_FUTURE) {
                return Ok("iamat-at-the-bound");
            }
            check_at_reply(&st.sh.table, &req, &got, (before, after)).map(|()| "iamat")
        }
        Parsed::Request(Request::Whatsat(_)) => match stored_before {
            None => expect_eq(
                "reply to a WHATSAT for an unknown client",
                &got,
                &invalid_reply(line),
            )
            .map(|()| "whatsat-unknown"),
            Some(at_line) => check_whatsat_reply(&at_line, &got).map(|()| "whatsat"),
        },
    }
}

fn expect_eq(what: &str, got: &[u8], want: &[u8]) -> Result<(), String> {
    if got == want {
        return Ok(());
    }
    Err(format!(
        "{what}: got \"{}\", want \"{}\"",
        shown(got),
        shown(want)
    ))
}

/// The reply is `AT Fuzz <diff> <client> <location> <time>\n` with the IAMAT's own bytes,
/// a diff that is the clock at reading minus the client's time, and a canonical form that
/// is the line itself; the table holds a record for the client at least as new.
fn check_at_reply(
    table: &Table,
    req: &protocol::Iamat<'_>,
    got: &[u8],
    clock: (Timestamp, Timestamp),
) -> Result<(), String> {
    let Some(body) = got.strip_suffix(b"\n") else {
        return Err(format!("AT reply without its newline: \"{}\"", shown(got)));
    };
    let Some(rec) = protocol::parse_at_record(body) else {
        return Err(format!(
            "AT reply does not parse as a record: \"{}\"",
            shown(body)
        ));
    };
    if (rec.server, rec.client, rec.raw_location, rec.raw_time, rec.time)
        != (
            ME.as_bytes(),
            req.client,
            req.raw_location,
            req.raw_time,
            req.time,
        )
    {
        return Err(format!(
            "AT reply fields differ from the IAMAT's: \"{}\"",
            shown(body)
        ));
    }
    let diff = reference::diff(rec.diff).ok_or("diff not in the +D.DDDDDDDDD shape")?;
    let read_at = req.time.as_nanos() + diff;
    if read_at < clock.0.as_nanos() || read_at > clock.1.as_nanos() {
        return Err(format!("diff {} is not now - time", shown(rec.diff)));
    }
    check_canonical(&rec, body)?;
    match table.get(req.client) {
        Some(held) if held.time >= req.time => Ok(()),
        _ => Err("after an IAMAT the table holds nothing as new for its client".into()),
    }
}

/// A record's canonical form re-parses to the same fields and is its own canonical form;
/// `line` is what it must equal.
fn check_canonical(rec: &AtRecord<'_>, line: &[u8]) -> Result<(), String> {
    let mut canonical = Vec::new();
    let loc = rec.write_canonical(&mut canonical);
    expect_eq("canonical form", &canonical, line)?;
    if canonical.get(loc) != Some(rec.raw_location) {
        return Err("write_canonical's location range is off".into());
    }
    let Some(again) = protocol::parse_at_record(&canonical) else {
        return Err("canonical form does not parse".into());
    };
    if &again != rec {
        return Err(format!("canonical form parses to other fields: {again:?}"));
    }
    let mut twice = Vec::new();
    again.write_canonical(&mut twice);
    expect_eq("canonical of canonical", &twice, &canonical)?;
    let blanks = canonical.iter().filter(|&&b| protocol::is_space(b)).count();
    let spaces = canonical.iter().filter(|&&b| b == b' ').count();
    if (blanks, spaces) != (5, 5) {
        return Err("canonical form has other blanks than five single spaces".into());
    }
    Ok(())
}

/// Stored AT line, `\n`, a legacy JSON document that re-parses, `\n\n`.
fn check_whatsat_reply(at_line: &[u8], got: &[u8]) -> Result<(), String> {
    let rest = got
        .strip_prefix(at_line)
        .and_then(|r| r.strip_prefix(b"\n"))
        .ok_or_else(|| {
            format!(
                "WHATSAT reply does not start with the stored AT line: \"{}\"",
                shown(got)
            )
        })?;
    let json = rest
        .strip_suffix(b"}\n\n")
        .ok_or("WHATSAT reply does not end in }\\n\\n")?;
    let text = std::str::from_utf8(&rest[..json.len() + 1]).map_err(|e| format!("JSON not UTF-8: {e}"))?;
    if text.contains("\n\n") {
        return Err("blank line inside the JSON".into());
    }
    let doc: Value = serde_json::from_str(text).map_err(|e| format!("JSON does not re-parse: {e}"))?;
    check_legacy_shape(&doc, 20)
}

/// `html_attributions`, `results` (at most `bound`), `status` as the legacy API has them.
fn check_legacy_shape(doc: &Value, bound: u8) -> Result<(), String> {
    if !doc.get("html_attributions").is_some_and(Value::is_array) {
        return Err("no html_attributions array".into());
    }
    match doc.get("results").and_then(Value::as_array) {
        Some(r) if r.len() <= bound.into() => {}
        Some(r) => return Err(format!("{} results for bound {bound}", r.len())),
        None => return Err("no results array".into()),
    }
    if !doc.get("status").is_some_and(Value::is_string) {
        return Err("no status string".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Target 2: a neighbour record through the link module into the table

struct PeerState {
    links: Links,
    from: NeighbourId,
    /// The connection of our link to the other neighbour, where floods must go.
    onward: ConnId,
    table: Table,
    servers: Vec<String>,
    scratch: Vec<u8>,
    commands: Vec<Command>,
    now: Instant,
}

/// Links to Alpha and Beta, both up both ways; records arrive from Alpha.
fn make_peer() -> PeerState {
    let now = Instant::now();
    let addr = |p: u16| -> SocketAddr { ([127, 0, 0, 1], p).into() };
    let neighbours = vec![
        ("Alpha".to_string(), addr(1).into()),
        ("Beta".to_string(), addr(2).into()),
    ];
    let mut links = Links::new(ME.into(), neighbours, Duration::from_secs(5), now, 1);
    let mut table = ruled_table();
    table.tick(Timestamp::from_system_time(
        SystemTime::UNIX_EPOCH + Duration::from_secs(PEER_CLOCK),
    ));
    links.expire(now);
    let mut commands = Vec::new();
    links.take_commands(&mut commands);
    let mut onward = None;
    for (k, c) in commands.drain(..).enumerate() {
        if let Command::Dial { n, addr: a } = c {
            let conn = ConnId {
                index: k + 1,
                generation: 0,
            };
            links.dial_started(n, conn, now);
            links.connected(conn, &table, now);
            if a == addr(2) {
                onward = Some(conn);
            }
        }
    }
    let inbound = ConnId {
        index: 100,
        generation: 0,
    };
    let (Some(from), Some(onward)) = (links.hello(inbound, b"Alpha", now), onward) else {
        panic!("the fuzz links did not come up");
    };
    // The greeting's table sync is streamed by `flush`: finish it (the table is empty) so
    // that later flushes carry only floods.
    links.flush(now, &table, |_| 0);
    links.take_commands(&mut commands);
    commands.clear();
    PeerState {
        links,
        from,
        onward,
        table,
        servers: SERVERS.iter().map(|s| s.to_string()).collect(),
        scratch: Vec::new(),
        commands,
        now,
    }
}

#[derive(Debug)]
enum PeerInput {
    Complete(Bytes),
    Overlong(Bytes),
}

fn gen_peer(r: &mut Rng) -> PeerInput {
    if r.one_in(64) {
        return PeerInput::Overlong(Bytes(random_bytes(r, protocol::OVERLONG_ECHO)));
    }
    let mut line = Vec::new();
    match r.below(10) {
        0..=6 => at_text(r, &mut line),
        7 => line = random_bytes(r, 100),
        _ => {
            at_text(r, &mut line);
            mutate(r, &mut line);
        }
    }
    PeerInput::Complete(Bytes(line))
}

fn at_text(r: &mut Rng, out: &mut Vec<u8>) {
    const ORIGINS: &[&[u8]] = &[
        b"Fuzz", b"Alpha", b"Beta", b"Alpha", b"Beta", b"Fuzz", b"Gamma", b"alpha", b"\xff",
    ];
    if r.one_in(4) {
        blank(r, out);
    }
    out.extend_from_slice(b"AT");
    blank(r, out);
    let origin = *r.pick(ORIGINS);
    out.extend_from_slice(origin);
    blank(r, out);
    out.push(*r.pick(b"+-+-+-+-x"));
    if r.one_in(10) {
        {
            let n = 1 + r.below(25);
            r.digits(n, out)
        };
    } else {
        out.extend_from_slice(r.below(100_000).to_string().as_bytes());
    }
    out.push(b'.');
    let n = if r.one_in(8) { r.below(12) } else { 9 };
    r.digits(n, out);
    blank(r, out);
    client(r, out);
    blank(r, out);
    location(r, out);
    blank(r, out);
    time(r, out);
    if r.one_in(4) {
        blank(r, out);
    }
}

fn check_peer(st: &mut PeerState, input: &PeerInput) -> Result<&'static str, String> {
    let line = match input {
        PeerInput::Overlong(head) => {
            let before = st.table.len();
            st.links.record(
                st.from,
                Line::Overlong(&head.0),
                &mut st.table,
                &st.servers,
                &mut st.scratch,
            );
            return expect_no_flood(st, "an over-long line")
                .and_then(|()| unchanged_len(before, st.table.len()))
                .map(|()| "overlong");
        }
        PeerInput::Complete(line) => &line.0[..],
    };
    let parsed = protocol::parse_at_record(line);
    if parsed.is_some() != reference::at_record(line) {
        return Err(format!("parser says {parsed:?}, the reference grammar disagrees"));
    }
    if let Some(rec) = &parsed
        && reference::time(rec.raw_time) != Some(rec.time.as_nanos())
    {
        return Err(format!("time {} parsed as {:?}", shown(rec.raw_time), rec.time));
    }
    let rec = parsed.filter(|r| st.servers.iter().any(|s| s.as_bytes() == r.server));
    let held = rec.as_ref().and_then(|r| st.table.get(r.client)).cloned();
    let refused = rec.as_ref().is_some_and(|r| {
        r.time > st.table.clock().saturating_add(MAX_FUTURE) || refused_as_full(&st.table, r.client)
    });
    let len_before = st.table.len();
    st.links.record(
        st.from,
        Line::Complete(line),
        &mut st.table,
        &st.servers,
        &mut st.scratch,
    );
    let Some(rec) = rec else {
        return expect_no_flood(st, "a malformed record")
            .and_then(|()| unchanged_len(len_before, st.table.len()))
            .map(|()| "malformed");
    };
    let mut canonical = Vec::new();
    rec.write_canonical(&mut canonical);
    check_canonical(&rec, &canonical)?;
    let wins = !refused
        && held
            .as_ref()
            .is_none_or(|h| (rec.time, &canonical[..]) > (h.time, &h.line[..]));
    let now_held = st.table.get(rec.client);
    if !wins {
        if now_held != held.as_ref() {
            return Err("a losing record changed the table".into());
        }
        let kind = if refused { "refused" } else { "lost" };
        return expect_no_flood(st, "a losing record").map(|()| kind);
    }
    match now_held {
        Some(h) if h.time == rec.time && *h.line == canonical[..] && h.location() == rec.raw_location => {}
        other => return Err(format!("a winning record is not what the table holds: {other:?}")),
    }
    st.links.flush(st.now, &st.table, |_| 0);
    st.links.take_commands(&mut st.commands);
    let mut sent = canonical;
    sent.push(b'\n');
    let flooded = std::mem::take(&mut st.commands);
    match flooded.as_slice() {
        [Command::Send { conn, bytes }] if *conn == st.onward && *bytes == sent => Ok("won"),
        other => Err(format!("a winning record was flooded as {other:?}")),
    }
}

fn unchanged_len(before: usize, after: usize) -> Result<(), String> {
    if before == after {
        return Ok(());
    }
    Err(format!("the table went from {before} to {after} records"))
}

fn expect_no_flood(st: &mut PeerState, what: &str) -> Result<(), String> {
    st.links.flush(st.now, &st.table, |_| 0);
    st.links.take_commands(&mut st.commands);
    if st.commands.is_empty() {
        return Ok(());
    }
    let sent = std::mem::take(&mut st.commands);
    Err(format!("{what} caused {sent:?}"))
}

// ---------------------------------------------------------------------------------------
// Target 3: herd.yml text through the caps and the parser

/// herd.yml text, shown as a string literal in failures.
#[derive(Debug)]
struct Yaml(String);

fn gen_config(r: &mut Rng) -> Yaml {
    let mut text = match r.below(20) {
        0 => deep_yaml(r),
        1 => alias_yaml(r),
        2 => String::from_utf8_lossy(&random_bytes(r, 200)).into_owned(),
        _ => herd_yaml(r),
    };
    if r.one_in(3) {
        let mut bytes = text.into_bytes();
        mutate(r, &mut bytes);
        if r.one_in(3) {
            yaml_splice(r, &mut bytes);
        }
        text = String::from_utf8_lossy(&bytes).into_owned();
    }
    Yaml(text)
}

/// Inserts a YAML construct where it can do the most harm.
fn yaml_splice(r: &mut Rng, bytes: &mut Vec<u8>) {
    const BITS: &[&str] = &[
        "&a ",
        "*a",
        "<<: *a\n",
        "!!binary ",
        "!tag ",
        "? ",
        "- ",
        "[",
        "]",
        "{",
        "}",
        "\"",
        "'",
        "|\n",
        ">-\n",
        "%YAML 1.2\n---\n",
        "---\n",
        "...\n",
        "\t",
        "\u{feff}",
        "\r\n",
        "\"\\u0000\\n\"",
        "\"a\\nb\": 1\n",
        "~",
        ": ",
        "#",
        "1e999",
        "0x1F",
        "-0",
        "99999999999999999999999",
        ".inf",
        "\u{1F600}",
    ];
    let at = r.below(bytes.len() + 1);
    let bit = r.pick(BITS).as_bytes();
    bytes.splice(at..at, bit.iter().copied());
}

const NAMES: &[&str] = &[
    "Bailey", "Bona", "Campbell", "Clark", "Jaquez", "Bona", "x y", "é",
];

fn scalar(r: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "0",
        "1",
        "8192",
        "63",
        "64",
        "1048576",
        "1048577",
        "65535",
        "65536",
        "-1",
        "4294967296",
        "18446744073709551616",
        "315360000",
        "315360001",
        "true",
        "null",
        "~",
        "''",
        "\"\"",
        "info",
        "debug",
        "loud",
        "new",
        "legacy",
        "http://127.0.0.1:1",
        "ftp://x",
        "logs",
        "/tmp/x",
        "'{name}.pem'",
        "[]",
        "{}",
        "[1, 2]",
        "{a: 1}",
        "1.5",
        "::1",
        "127.0.0.1",
        "256.0.0.1",
        "\"a\\nb\"",
    ];
    if r.one_in(4) {
        return r.below(100_000).to_string();
    }
    r.pick(WORDS).to_string()
}

fn herd_yaml(r: &mut Rng) -> String {
    let mut t = String::new();
    let n = 1 + r.below(4);
    let names: Vec<&str> = (0..n)
        .map(|k| if r.one_in(6) { *r.pick(NAMES) } else { NAMES[k] })
        .collect();
    let flow = r.one_in(2);
    t.push_str("servers:\n");
    for (k, name) in names.iter().enumerate() {
        // Mostly a consistent herd (a ring), sometimes a broken one.
        let mut nbrs: Vec<&str> = Vec::new();
        if n > 1 {
            nbrs.push(names[(k + 1) % n]);
            if n > 2 {
                nbrs.push(names[(k + n - 1) % n]);
            }
        }
        if r.one_in(8) {
            nbrs.push(*r.pick(NAMES));
        }
        let mut keys: Vec<(String, String)> = vec![
            ("port".into(), (10_000 + 2 * k).to_string()),
            ("peer_port".into(), (20_000 + 2 * k).to_string()),
            ("neighbours".into(), format!("[{}]", nbrs.join(", "))),
        ];
        if r.one_in(3) {
            let host = if r.one_in(4) {
                scalar(r)
            } else {
                "127.0.0.1".into()
            };
            keys.push(("host".into(), host));
        }
        if r.one_in(3) {
            keys.push(("admin_port".into(), (30_000 + k).to_string()));
        }
        if r.one_in(12) {
            let k = r.below(keys.len());
            keys[k].1 = scalar(r);
        }
        if r.one_in(20) {
            keys.push((r.pick(&["admin_host", "colour", "port"]).to_string(), scalar(r)));
        }
        if flow {
            let body: Vec<String> = keys.iter().map(|(k, v)| format!("{k}: {v}")).collect();
            let _ = writeln!(t, "  {name}: {{ {} }}", body.join(", "));
        } else {
            let _ = writeln!(t, "  {name}:");
            for (k, v) in &keys {
                let _ = writeln!(t, "    {k}: {v}");
            }
        }
    }
    const SECTIONS: &[(&str, &[&str])] = &[
        (
            "places",
            &["api", "url", "key_env", "timeout_ms", "workers", "max_rps"],
        ),
        ("log", &["dir", "level", "rotate_mb", "keep"]),
        (
            "limits",
            &[
                "max_line",
                "max_connections",
                "idle_timeout_s",
                "send_timeout_s",
                "max_future_s",
                "max_clients",
            ],
        ),
        ("table", &["ttl_s"]),
        ("peers", &["dead_after_ms"]),
        ("state", &["dir", "every_s"]),
        ("peer_tls", &["ca", "cert", "key"]),
        ("extra", &["x"]),
    ];
    for (section, keys) in SECTIONS {
        let unknown = *section == "extra";
        if !r.one_in(if unknown { 20 } else { 3 }) {
            continue;
        }
        let _ = writeln!(t, "{section}:");
        for key in *keys {
            if r.one_in(2) {
                let value = if r.one_in(5) {
                    scalar(r)
                } else {
                    good(key).to_string()
                };
                let _ = writeln!(t, "  {key}: {value}");
            }
        }
        if r.one_in(10) {
            let _ = writeln!(t, "  unknown_key: {}", scalar(r));
        }
    }
    t
}

/// A value `key` accepts, so that most herds load and reach validation's later checks.
fn good(key: &str) -> &'static str {
    match key {
        "api" => "legacy",
        "url" => "http://127.0.0.1:1",
        "key_env" => "HERD_FUZZ_KEY",
        "timeout_ms" => "1000",
        "workers" => "2",
        "dir" => "logs",
        "level" => "debug",
        "max_line" => "8192",
        "dead_after_ms" => "5000",
        "ca" | "cert" | "key" => "'tls/{name}.pem'",
        _ => "30",
    }
}

/// Nesting around the depth cap, in flow or block style.
fn deep_yaml(r: &mut Rng) -> String {
    let depth = 50 + r.below(30);
    if r.one_in(2) {
        let mut t = "servers: ".to_string();
        t.push_str(&"[".repeat(depth));
        t.push_str(&"]".repeat(r.below(depth + 1)));
        t.push('\n');
        t
    } else {
        let mut t = String::new();
        for k in 0..depth {
            let _ = writeln!(t, "{}k{k}:", " ".repeat(k));
        }
        t
    }
}

/// Anchors and aliases around the alias cap.
fn alias_yaml(r: &mut Rng) -> String {
    let mut t = "a: &a [x, x, x, x]\nb: &b [*a, *a, *a, *a]\n".to_string();
    let n = 250 + r.below(12);
    t.push_str("c: [");
    t.push_str(&vec!["*b"; n].join(", "));
    t.push_str("]\nservers: {}\n");
    t
}

fn check_config(_: &mut (), Yaml(text): &Yaml) -> Result<&'static str, String> {
    match config::parse(text, Path::new("/fuzz-herd"), |_| None) {
        Ok(herd) => check_herd(&herd).map(|()| "loaded"),
        Err(problem) => {
            let msg = problem.to_string();
            if msg.is_empty() || msg.contains(['\n', '\r']) {
                return Err(format!("not a one-line error: {msg:?}"));
            }
            Ok(match problem {
                Problem::Yaml(_) => "yaml-error",
                Problem::Invalid { .. } => "invalid",
                Problem::Refused(_) => "refused",
            })
        }
    }
}

/// What the rest of the server relies on in a loaded herd.
fn check_herd(herd: &config::Herd) -> Result<(), String> {
    if herd.servers.is_empty() {
        return Err("a herd without servers loaded".into());
    }
    for s in &herd.servers {
        for n in &s.neighbours {
            let back = herd.server(n).ok_or(format!("{} lists unknown {n}", s.name))?;
            if !back.neighbours.contains(&s.name) || *n == s.name {
                return Err(format!("link {} - {n} is one-sided or a loop", s.name));
            }
        }
        if herd.servers.iter().filter(|o| o.name == s.name).count() != 1 {
            return Err(format!("server {} twice", s.name));
        }
    }
    if herd.max_line != herd.limits.max_line {
        return Err("max_line differs from limits.max_line".into());
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Target 4: a Places answer through the legacy mapping and printer

#[derive(Debug)]
struct PlacesInput {
    api: Api,
    http: u16,
    bound: u8,
    body: Bytes,
}

fn gen_places(r: &mut Rng) -> PlacesInput {
    const CODES: &[u16] = &[204, 400, 401, 403, 404, 429, 500, 503];
    let api = if r.one_in(2) { Api::New } else { Api::Legacy };
    // Mostly the answer that API gives with HTTP 200, so the mapping itself is exercised;
    // the rest are error envelopes, the other API's answer, any JSON, any code.
    let http = match r.below(10) {
        0 => 100 + r.below(500) as u16,
        1..=2 => *r.pick(CODES),
        _ => 200,
    };
    let bound = if r.one_in(10) { 0 } else { 1 + r.below(20) as u8 };
    let doc = match (r.below(10), api) {
        (0, _) => error_envelope(r),
        (1, _) => random_value(r, 4),
        (2, Api::New) | (3..=9, Api::Legacy) => legacy_answer(r),
        (2, Api::Legacy) | (3..=9, Api::New) => new_answer(r),
        _ => Value::Null,
    };
    let mut body = match r.below(6) {
        0 => serde_json::to_vec_pretty(&doc).unwrap_or_default(),
        _ => serde_json::to_vec(&doc).unwrap_or_default(),
    };
    match r.below(32) {
        0..=2 => mutate(r, &mut body),
        3 => body = b"<html><body>502 Bad Gateway</body></html>".to_vec(),
        4 => body = format!("{}{}", "[".repeat(100 + r.below(100)), "]".repeat(r.below(200))).into_bytes(),
        5 => body = [&b"\xef\xbb\xbf"[..], &body].concat(),
        _ => {}
    }
    PlacesInput {
        api,
        http,
        bound,
        body: Bytes(body),
    }
}

fn text(r: &mut Rng) -> String {
    const WORDS: &[&str] = &[
        "Café \"Noir\"",
        "a\nb",
        "\n\n",
        "tab\there",
        "back\\slash",
        "\u{0}\u{1}\u{1f}",
        "東京",
        "\u{1F600}",
        "",
        " ",
        "\u{2028}",
        "}\n\n{",
    ];
    if r.one_in(3) {
        return (0..r.below(12))
            .map(|_| char::from_u32(r.next() as u32 % 0x11_0000).unwrap_or('?'))
            .collect();
    }
    r.pick(WORDS).to_string()
}

fn number(r: &mut Rng) -> Value {
    match r.below(6) {
        0 => json!(r.next() as i64),
        1 => json!(r.next()),
        2 => json!(f64::from_bits(r.next())),
        3 => json!(0),
        4 => json!((r.below(18_000) as f64 - 9_000.0) / 100.0),
        _ => json!(r.below(6) as f64 / 2.0),
    }
}

/// Any JSON value, at most `depth` containers deep.
fn random_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(if depth == 0 { 4 } else { 6 }) {
        0 => Value::Null,
        1 => json!(r.one_in(2)),
        2 => number(r),
        3 => Value::String(text(r)),
        4 => Value::Array((0..r.below(5)).map(|_| random_value(r, depth - 1)).collect()),
        _ => {
            const KEYS: &[&str] = &["places", "results", "status", "error", "message", "id", "x", ""];
            let map = (0..r.below(5))
                .map(|_| (r.pick(KEYS).to_string(), random_value(r, depth - 1)))
                .collect();
            Value::Object(map)
        }
    }
}

/// Usually the right type, sometimes any value.
fn maybe_wrong(r: &mut Rng, right: Value) -> Value {
    if r.one_in(8) { random_value(r, 2) } else { right }
}

fn new_place(r: &mut Rng) -> Value {
    let mut p = serde_json::Map::new();
    let mut put = |r: &mut Rng, key: &str, v: Value| {
        if !r.one_in(4) {
            let v = maybe_wrong(r, v);
            p.insert(key.into(), v);
        }
    };
    let id = text(r);
    put(r, "id", json!(id));
    let name = text(r);
    put(r, "displayName", json!({"text": name, "languageCode": "en"}));
    let mut loc = serde_json::Map::new();
    if !r.one_in(5) {
        loc.insert("latitude".into(), number(r));
    }
    if !r.one_in(5) {
        loc.insert("longitude".into(), number(r));
    }
    put(r, "location", Value::Object(loc));
    let addr = text(r);
    put(r, "formattedAddress", json!(addr));
    let types: Vec<Value> = (0..r.below(8)).map(|_| json!(text(r))).collect();
    put(r, "types", Value::Array(types));
    let rating = number(r);
    put(r, "rating", rating);
    let count = r.below(100_000);
    put(r, "userRatingCount", json!(count));
    put(r, "businessStatus", json!("OPERATIONAL"));
    if r.one_in(5) {
        p.insert("unexpected".into(), random_value(r, 2));
    }
    Value::Object(p)
}

fn new_answer(r: &mut Rng) -> Value {
    if r.one_in(10) {
        return json!({});
    }
    let n = if r.one_in(8) { r.below(25) } else { r.below(5) };
    let places: Vec<Value> = (0..n).map(|_| new_place(r)).collect();
    let places = maybe_wrong(r, Value::Array(places));
    json!({ "places": places })
}

fn error_envelope(r: &mut Rng) -> Value {
    let message = json!(text(r));
    let message = maybe_wrong(r, message);
    let error = json!({"code": r.below(600), "message": message, "status": "PERMISSION_DENIED"});
    json!({ "error": maybe_wrong(r, error) })
}

fn legacy_answer(r: &mut Rng) -> Value {
    const STATUSES: &[&str] = &[
        "OK",
        "ZERO_RESULTS",
        "REQUEST_DENIED",
        "OVER_QUERY_LIMIT",
        "INVALID_REQUEST",
    ];
    let mut doc = serde_json::Map::new();
    if !r.one_in(20) {
        doc.insert("html_attributions".into(), json!([]));
    }
    if r.one_in(4) {
        doc.insert("next_page_token".into(), json!(text(r)));
    }
    if !r.one_in(20) {
        let n = if r.one_in(8) { r.below(25) } else { r.below(5) };
        let results: Vec<Value> = (0..n).map(|_| random_value(r, 3)).collect();
        doc.insert("results".into(), maybe_wrong(r, Value::Array(results)));
    }
    if !r.one_in(20) {
        let status = json!(r.pick(STATUSES));
        doc.insert("status".into(), maybe_wrong(r, status));
    }
    if r.one_in(4) {
        doc.insert("error_message".into(), json!(text(r)));
    }
    Value::Object(doc)
}

fn check_places(_: &mut (), input: &PlacesInput) -> Result<&'static str, String> {
    let doc = places::answer_document(input.api, input.http, &input.body.0, input.bound);
    let printed = legacy_json::pretty(&doc);
    let again: Value =
        serde_json::from_str(&printed).map_err(|e| format!("printed JSON does not re-parse: {e}"))?;
    // Compared as compact text, so key order counts too.
    let (a, b) = (again.to_string(), doc.to_string());
    if a != b {
        let at = a.bytes().zip(b.bytes()).take_while(|(x, y)| x == y).count();
        let near = |t: &str| {
            t.get(at.saturating_sub(40)..(at + 40).min(t.len()))
                .unwrap_or("")
                .to_string()
        };
        return Err(format!(
            "printed JSON re-parses to another document: {:?} where the document has {:?}",
            near(&a),
            near(&b)
        ));
    }
    if printed.contains("\n\n") || !printed.starts_with('{') || !printed.ends_with('}') {
        return Err(format!("printed JSON would break the reply framing:\n{printed}"));
    }
    check_legacy_shape(&doc, input.bound)?;
    Ok(match doc.get("status").and_then(Value::as_str) {
        Some("OK") => "ok",
        Some("ZERO_RESULTS") => "zero",
        Some("UNKNOWN_ERROR") => "unknown-error",
        _ => "other-status",
    })
}

// ---------------------------------------------------------------------------------------
// The targets, long (ignored; fuzz/run.sh) and short (every cargo test)

const CLIENT: Target<ClientState, ClientInput> = Target {
    name: "client_lines",
    make: make_client,
    generate: gen_client,
    check: check_client,
};
const PEER: Target<PeerState, PeerInput> = Target {
    name: "peer_records",
    make: make_peer,
    generate: gen_peer,
    check: check_peer,
};
const CONFIG: Target<(), Yaml> = Target {
    name: "herd_yml",
    make: || (),
    generate: gen_config,
    check: check_config,
};
const PLACES: Target<(), PlacesInput> = Target {
    name: "places_json",
    make: || (),
    generate: gen_places,
    check: check_places,
};

#[test]
#[ignore = "long run: fuzz/run.sh"]
fn client_lines() {
    drive(&CLIENT, &Settings::from_env());
}

#[test]
#[ignore = "long run: fuzz/run.sh"]
fn peer_records() {
    drive(&PEER, &Settings::from_env());
}

#[test]
#[ignore = "long run: fuzz/run.sh"]
fn herd_yml() {
    drive(&CONFIG, &Settings::from_env());
}

#[test]
#[ignore = "long run: fuzz/run.sh"]
fn places_json() {
    drive(&PLACES, &Settings::from_env());
}

/// Every kind of input the generator is meant to reach shows up in a short run.
fn reaches(report: &Report, kinds: &[&str]) {
    for k in kinds {
        assert!(
            report.kinds.iter().any(|(seen, n)| seen == k && *n > 0),
            "no `{k}` input in {:?}",
            report.kinds
        );
    }
}

#[test]
fn short_run_client_lines() {
    let r = drive(&CLIENT, &Settings::small(3_000));
    reaches(
        &r,
        &[
            "iamat",
            "iamat-future",
            "iamat-full",
            "invalid",
            "whatsat",
            "whatsat-unknown",
            "overlong",
        ],
    );
}

#[test]
fn short_run_peer_records() {
    let r = drive(&PEER, &Settings::small(3_000));
    reaches(&r, &["won", "lost", "malformed", "overlong"]);
}

#[test]
fn short_run_herd_yml() {
    let r = drive(&CONFIG, &Settings::small(1_000));
    reaches(&r, &["loaded", "yaml-error", "invalid", "refused"]);
}

#[test]
fn short_run_places_json() {
    let r = drive(&PLACES, &Settings::small(2_000));
    reaches(&r, &["ok", "zero", "unknown-error", "other-status"]);
}

#[test]
fn the_same_seed_makes_the_same_inputs_whatever_the_order() {
    let a: Vec<String> = (0..50)
        .map(|i| format!("{:?}", gen_client(&mut Rng::for_input(7, "client_lines", i))))
        .collect();
    let b: Vec<String> = (0..50)
        .rev()
        .map(|i| format!("{:?}", gen_client(&mut Rng::for_input(7, "client_lines", i))))
        .collect();
    assert_eq!(a, b.into_iter().rev().collect::<Vec<_>>());
    assert_ne!(a[0], a[1]);
}

#[test]
fn a_failing_check_is_reported_not_hidden() {
    let bad: Target<(), u64> = Target {
        name: "bad",
        make: || (),
        generate: |r| r.next() % 100,
        check: |_, &n| match n {
            0 => panic!("boom"),
            1 => Err("wrong".into()),
            _ => Ok("fine"),
        },
    };
    let caught = catch_unwind(AssertUnwindSafe(|| drive(&bad, &Settings::small(200))));
    assert!(
        caught.is_err(),
        "a panicking and a failing input must fail the run"
    );
}

// ---------------------------------------------------------------------------------------
// Format -> parse round trips (plain cargo test; seconds in debug)

fn random_iamat(r: &mut Rng) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut client = Vec::new();
    self::client(r, &mut client);
    let mut loc = Vec::new();
    for (limit, sign) in [(90u64, r.one_in(2)), (180, r.one_in(2))] {
        loc.push(if sign { b'+' } else { b'-' });
        loc.extend_from_slice((r.next() % limit).to_string().as_bytes());
        if !r.one_in(3) {
            loc.push(b'.');
            {
                let n = 1 + r.below(9);
                r.digits(n, &mut loc)
            };
        }
    }
    let mut t = (r.next() % 1_000_000_000_000).to_string().into_bytes();
    if !r.one_in(4) {
        t.push(b'.');
        {
            let n = 1 + r.below(12);
            r.digits(n, &mut t)
        };
    }
    (client, loc, t)
}

#[test]
fn iamat_to_at_line_to_record_keeps_every_field() {
    let mut r = Rng::for_input(42, "round-trip", 0);
    for _ in 0..20_000 {
        let (client, loc, t) = random_iamat(&mut r);
        let mut line = b"IAMAT ".to_vec();
        for (k, f) in [&client, &loc, &t].into_iter().enumerate() {
            if k > 0 {
                blank(&mut r, &mut line);
            }
            line.extend_from_slice(f);
        }
        let req = match protocol::parse_client_line(&line) {
            Parsed::Request(Request::Iamat(req)) => req,
            other => panic!("{:?} did not parse as an IAMAT: {other:?}", shown(&line)),
        };
        assert_eq!(
            (req.client, req.raw_location, req.raw_time),
            (&client[..], &loc[..], &t[..])
        );
        assert_eq!(reference::time(&t), Some(req.time.as_nanos()));
        let now = Timestamp::from_nanos(r.next() as i128 % 2_000_000_000_000_000_000_000);
        let now = now.unwrap_or(req.time);
        let mut at = Vec::new();
        let loc_range = protocol::write_at_line(ME, now, &req, &mut at);
        assert_eq!(&at[loc_range], &loc[..]);
        let Some(rec) = protocol::parse_at_record(&at) else {
            panic!("AT line {:?} does not parse", shown(&at));
        };
        assert_eq!(
            (rec.server, rec.client, rec.raw_location, rec.raw_time, rec.time),
            (ME.as_bytes(), &client[..], &loc[..], &t[..], req.time)
        );
        assert_eq!(
            reference::diff(rec.diff),
            Some(now.as_nanos() - req.time.as_nanos()),
            "{}",
            shown(&at)
        );
        if let Err(e) = check_canonical(&rec, &at) {
            panic!("{e}: {}", shown(&at));
        }
    }
}

#[test]
fn timestamps_parse_to_their_text_truncated_to_nanoseconds() {
    let mut r = Rng::for_input(43, "round-trip", 0);
    for _ in 0..20_000 {
        let secs = r.next() % 1_000_000_000_000;
        let nanos = r.next() % 1_000_000_000;
        let shown_digits = r.below(13);
        let mut text = secs.to_string();
        if shown_digits > 0 {
            let all = format!("{nanos:09}{:03}", r.below(1000));
            text.push('.');
            text.push_str(&all[..shown_digits]);
        }
        let kept = if shown_digits == 0 {
            0
        } else {
            let digits = &format!("{nanos:09}")[..shown_digits.min(9)];
            format!("{digits:0<9}").parse::<u64>().unwrap_or(u64::MAX)
        };
        let t = Timestamp::parse(text.as_bytes());
        let want = i128::from(secs) * 1_000_000_000 + i128::from(kept);
        assert_eq!(t.map(Timestamp::as_nanos), Some(want), "{text}");
    }
    assert_eq!(Timestamp::parse(b"1000000000000"), None, "13 integer digits");
    assert!(Timestamp::parse(b"999999999999.999999999999").is_some());
}

#[test]
fn diffs_print_as_the_exact_signed_nanosecond_difference() {
    let mut r = Rng::for_input(44, "round-trip", 0);
    const SPAN: u64 = 2_000_000_000_000_000_000;
    for _ in 0..20_000 {
        let a = Timestamp::from_nanos(i128::from(r.next() % SPAN));
        let b = Timestamp::from_nanos(i128::from(r.next() % SPAN));
        let (Some(a), Some(b)) = (a, b) else {
            panic!("nanos in range");
        };
        let mut out = Vec::new();
        protocol::write_diff(a, b, &mut out);
        assert_eq!(
            reference::diff(&out),
            Some(a.as_nanos() - b.as_nanos()),
            "{}",
            shown(&out)
        );
    }
}
