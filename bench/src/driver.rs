//! The client loop: one mio `Poll` per thread owning that thread's connections, sending
//! requests as slots free up (closed loop) or as the schedule falls due (open loop), and
//! reading and validating replies incrementally.
//!
//! Lean, because loadgen shares two cores with the server it measures: non-blocking sockets
//! with TCP_NODELAY; every request issued in one loop turn goes out in one write per
//! connection; reads stop at WouldBlock or a short read; and no allocation per request in
//! the steady state (requests are formatted into the connection's output queue, and what
//! each reply must echo into a per-connection byte queue).
//!
//! A connection holds up to `pipeline` requests in flight; each free place is a "slot" in
//! one FIFO per thread. The closed loop fills every free slot at once; the open loop fills
//! one per request that has fallen due. A slot carries its connection's generation so that
//! slots of a connection that failed and reconnected are recognised as stale.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use mio::net::TcpStream;
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};

use crate::args::Workload;
use crate::buf::ByteQueue;
use crate::pacing::{self, Schedule};
use crate::stats::{self, Errors, Hist};
use crate::sys::{self, TimerFd};
use crate::workload::{self as wl, Frame, Kind, Location, Outcome, Rng};

const TIMER: Token = Token(usize::MAX);
const MS: u64 = 1_000_000;
const SEC: u64 = 1_000_000_000;
/// Requests in flight per connection while sending the set-up IAMATs.
const SETUP_DEPTH: usize = 32;
/// The set-up (connecting, and the IAMATs WHATSAT needs) must finish within this.
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// A failed connection is retried after this.
const RETRY_AFTER: u64 = 100 * MS;
/// How often outstanding requests are checked against --timeout.
const CHECK_EVERY: u64 = 100 * MS;
/// After warm-up + duration, the run waits this long for outstanding replies, then aborts.
pub const HARD_STOP_GRACE: Duration = Duration::from_secs(5);
const READ_CHUNK: usize = 64 * 1024;

/// What every loop thread runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub workload: Workload,
    pub pipeline: usize,
    /// Open loop: requests/s across all threads.
    pub rate: Option<f64>,
    pub threads: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub timeout: Duration,
    pub radius: String,
    pub bound: u32,
    pub mix: f64,
    pub line: Vec<u8>,
    pub expect: Option<Vec<u8>>,
    pub crlf: bool,
    pub seed: u64,
}

/// Clients `first + j·stride` for j in `0..count`: the ids one (thread, server) pair owns,
/// so a client's timestamps increase without sharing state between threads and its
/// WHATSATs go to the server that has its location.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub first: u64,
    pub stride: u64,
    pub count: u64,
}

/// One thread's share of the run.
#[derive(Debug, Clone)]
pub struct Plan {
    pub thread: usize,
    /// Each connection's server and partition (an index into `partitions`).
    pub conns: Vec<(SocketAddr, usize)>,
    pub partitions: Vec<Partition>,
}

pub enum Go {
    Start(Instant),
    Abort,
}

/// A second's worth of progress from one thread.
pub struct Tick {
    pub thread: usize,
    /// Seconds since the start (this tick covers the second before it).
    pub second: u64,
    /// Good replies (warm-up included).
    pub completed: u64,
    /// Measured errors.
    pub errors: Errors,
    /// Measured latencies of this second; the run's histogram is the sum of all ticks'
    /// and the final residue.
    pub hist: Hist,
}

pub struct Final {
    pub thread: usize,
    pub errors: Errors,
    pub warmup_errors: Errors,
    /// Latencies recorded since the last tick.
    pub hist: Hist,
    pub lateness: Hist,
    pub unsent: u64,
    pub outstanding: u64,
    pub aborted: bool,
}

pub enum Msg {
    Ready,
    Failed(String),
    Tick(Tick),
    Done(Box<Final>),
}

/// Runs one loop thread: connect and set up, report ready, wait for the common start,
/// run, report. Every outcome ends in exactly one `Failed` or `Done`.
pub fn run(plan: Plan, settings: Arc<Settings>, tx: Sender<Msg>, go: Receiver<Go>) {
    sys::precise_timers();
    let mut d = match Driver::new(plan, settings) {
        Ok(d) => d,
        Err(e) => {
            let _ = tx.send(Msg::Failed(e));
            return;
        }
    };
    if let Err(e) = d.setup() {
        let _ = tx.send(Msg::Failed(e));
        return;
    }
    let _ = tx.send(Msg::Ready);
    let start = match go.recv() {
        Ok(Go::Start(s)) => s,
        Ok(Go::Abort) | Err(_) => return,
    };
    let fin = d.measure(start, &tx);
    let _ = tx.send(Msg::Done(Box::new(fin)));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Connecting { since: u64 },
    Open,
    Down { retry_at: u64 },
}

#[derive(Debug, Clone, Copy)]
struct Pending {
    kind: Kind,
    /// Bytes of the connection's echo queue that belong to this request.
    echo_len: u32,
    intended: u64,
    sent: u64,
}

struct Conn {
    addr: SocketAddr,
    part: usize,
    generation: u32,
    state: State,
    stream: Option<TcpStream>,
    out: ByteQueue,
    input: ByteQueue,
    /// Input bytes already searched for the end of the first reply.
    scanned: usize,
    echo: ByteQueue,
    pending: VecDeque<Pending>,
    dirty: bool,
}

struct Part {
    p: Partition,
    /// Each client's last timestamp (ns since the epoch).
    last: Vec<u64>,
    /// Set-up: the next client to IAMAT.
    setup_next: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Measure,
}

struct Driver {
    s: Arc<Settings>,
    thread: usize,
    poll: Poll,
    events: Option<Events>,
    timer: Option<TimerFd>,
    timer_at: Option<u64>,
    conns: Vec<Conn>,
    parts: Vec<Part>,
    free: VecDeque<(u32, u32)>,
    dirty: Vec<usize>,
    outstanding: u64,
    rng: Rng,
    scratch: Vec<u8>,
    base: Instant,
    phase: Phase,
    setup_error: Option<String>,
    // Measure phase.
    warmup_ns: u64,
    end_ns: u64,
    sched: Option<Schedule>,
    next_k: u64,
    errors: Errors,
    warmup_errors: Errors,
    hist: Hist,
    lateness: Hist,
    tick_completed: u64,
    tick_errors: Errors,
}

impl Driver {
    fn new(plan: Plan, s: Arc<Settings>) -> Result<Driver, String> {
        let poll = Poll::new().map_err(|e| format!("cannot create a poll: {e}"))?;
        let timer = match s.rate {
            Some(_) => {
                let t = TimerFd::new().map_err(|e| format!("cannot create a timerfd: {e}"))?;
                poll.registry()
                    .register(&mut SourceFd(&t.as_raw_fd()), TIMER, Interest::READABLE)
                    .map_err(|e| format!("cannot poll a timerfd: {e}"))?;
                Some(t)
            }
            None => None,
        };
        let conns = plan
            .conns
            .iter()
            .map(|&(addr, part)| Conn {
                addr,
                part,
                generation: 0,
                state: State::Down { retry_at: 0 },
                stream: None,
                out: ByteQueue::new(),
                input: ByteQueue::new(),
                scanned: 0,
                echo: ByteQueue::new(),
                pending: VecDeque::with_capacity(s.pipeline.max(SETUP_DEPTH)),
                dirty: false,
            })
            .collect();
        let parts = plan
            .partitions
            .iter()
            .map(|&p| Part {
                p,
                last: vec![0; p.count as usize],
                setup_next: 0,
            })
            .collect();
        let sched = s
            .rate
            .map(|r| Schedule::share(r, s.threads as u64, plan.thread as u64));
        Ok(Driver {
            rng: Rng::new(s.seed ^ (plan.thread as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
            s,
            thread: plan.thread,
            poll,
            events: Some(Events::with_capacity(1024)),
            timer,
            timer_at: None,
            conns,
            parts,
            free: VecDeque::new(),
            dirty: Vec::new(),
            outstanding: 0,
            scratch: vec![0; READ_CHUNK],
            base: Instant::now(),
            phase: Phase::Setup,
            setup_error: None,
            warmup_ns: 0,
            end_ns: 0,
            sched,
            next_k: 0,
            errors: Errors::default(),
            warmup_errors: Errors::default(),
            hist: stats::histogram(),
            lateness: stats::histogram(),
            tick_completed: 0,
            tick_errors: Errors::default(),
        })
    }

    fn now(&self) -> u64 {
        since(self.base)
    }

    /// Connects every connection and, for WHATSAT workloads, sends one IAMAT per client.
    fn setup(&mut self) -> Result<(), String> {
        self.base = Instant::now();
        self.phase = Phase::Setup;
        let deadline = SETUP_LIMIT.as_nanos() as u64;
        let connect_by = self.s.timeout.as_nanos() as u64;
        for i in 0..self.conns.len() {
            self.connect(i, 0);
        }
        loop {
            let now = self.now();
            if let Some(e) = self.setup_error.take() {
                return Err(e);
            }
            let pending_connects = self.conns.iter().filter(|c| c.state != State::Open).count();
            if pending_connects == 0 {
                break;
            }
            if now >= connect_by {
                let c = self.conns.iter().find(|c| c.state != State::Open).map(|c| c.addr);
                return Err(format!(
                    "connecting timed out: {pending_connects} connections (to {}) not open after {:?}",
                    c.map(|a| a.to_string()).unwrap_or_default(),
                    self.s.timeout
                ));
            }
            self.pump(connect_by)?;
        }
        if !self.s.workload.needs_setup() {
            return Ok(());
        }
        self.refill_slots(SETUP_DEPTH);
        let total: u64 = self.parts.iter().map(|p| p.p.count).sum();
        let mut next_check = CHECK_EVERY;
        loop {
            let now = self.now();
            if let Some(e) = self.setup_error.take() {
                return Err(e);
            }
            let left: u64 = self.parts.iter().map(|p| p.p.count - p.setup_next).sum();
            if left == 0 && self.outstanding == 0 {
                return Ok(());
            }
            if now >= deadline {
                return Err(format!(
                    "set-up IAMATs did not finish within {SETUP_LIMIT:?} ({} of {total} answered)",
                    total - left - self.outstanding
                ));
            }
            if now >= next_check {
                self.check_timeouts(now);
                next_check = now + CHECK_EVERY;
            }
            self.issue_setup();
            self.flush_dirty();
            self.pump(next_check.min(deadline))?;
        }
    }

    /// The measured run, from `start` (common to all threads).
    fn measure(&mut self, start: Instant, tx: &Sender<Msg>) -> Final {
        self.base = start;
        self.phase = Phase::Measure;
        self.timer_at = None; // it was set on the set-up's time base
        self.warmup_ns = self.s.warmup.as_nanos() as u64;
        self.end_ns = self.warmup_ns + self.s.duration.as_nanos() as u64;
        let hard_stop = self.end_ns + HARD_STOP_GRACE.as_nanos() as u64;
        let k_end = self.sched.map_or(0, |s| s.count_before(self.end_ns));
        self.refill_slots(self.s.pipeline);
        let (mut next_tick, mut next_check) = (SEC, CHECK_EVERY);
        let mut aborted = false;
        let mut unsent = 0;
        let mut ended = false;
        loop {
            let now = self.now();
            if now >= hard_stop {
                aborted = true;
                break;
            }
            if now >= next_tick {
                self.send_tick(next_tick / SEC, tx);
                while next_tick <= now {
                    next_tick += SEC;
                }
            }
            if now >= next_check {
                self.check_timeouts(now);
                self.reconnect_due(now);
                next_check = now + CHECK_EVERY;
            }
            if !ended {
                // The open loop also sends what fell due just before the end.
                if now < self.end_ns || self.sched.is_some() {
                    self.issue(now, k_end);
                }
                if now >= self.end_ns {
                    ended = true;
                    unsent = k_end.saturating_sub(self.next_k);
                }
            }
            self.flush_dirty();
            if ended && self.outstanding == 0 {
                break;
            }
            let mut wake = next_tick.min(next_check).min(hard_stop);
            if !ended {
                wake = wake.min(self.end_ns);
                match self.sched {
                    Some(s) if self.next_k < k_end && !self.free.is_empty() => {
                        wake = wake.min(s.intended(self.next_k));
                    }
                    _ => {}
                }
            }
            if let Err(e) = self.pump(wake) {
                // The poll itself failed: nothing more can be measured.
                eprintln!("loadgen: thread {}: {e}", self.thread);
                aborted = true;
                break;
            }
        }
        Final {
            thread: self.thread,
            errors: self.errors,
            warmup_errors: self.warmup_errors,
            hist: std::mem::replace(&mut self.hist, stats::histogram()),
            lateness: std::mem::replace(&mut self.lateness, stats::histogram()),
            unsent,
            outstanding: self.outstanding,
            aborted,
        }
    }

    fn send_tick(&mut self, second: u64, tx: &Sender<Msg>) {
        let _ = tx.send(Msg::Tick(Tick {
            thread: self.thread,
            second,
            completed: std::mem::take(&mut self.tick_completed),
            errors: std::mem::take(&mut self.tick_errors),
            hist: std::mem::replace(&mut self.hist, stats::histogram()),
        }));
    }

    /// Makes the slot queue `depth` slots per open connection, interleaved so that
    /// consecutive requests go to different connections.
    fn refill_slots(&mut self, depth: usize) {
        self.free.clear();
        for _ in 0..depth {
            for (i, c) in self.conns.iter().enumerate() {
                if c.state == State::Open {
                    self.free.push_back((i as u32, c.generation));
                }
            }
        }
    }

    /// The next free slot of a connection that is still open, in its current generation.
    fn pop_slot(&mut self) -> Option<usize> {
        while let Some((i, generation)) = self.free.pop_front() {
            let c = &self.conns[i as usize];
            if c.generation == generation && c.state == State::Open {
                return Some(i as usize);
            }
        }
        None
    }

    fn issue_setup(&mut self) {
        let wall = wall_ns();
        while let Some(i) = self.pop_slot() {
            let part = self.conns[i].part;
            let ps = &mut self.parts[part];
            if ps.setup_next >= ps.p.count {
                continue; // this slot's partition is done; drop the slot
            }
            let j = ps.setup_next;
            ps.setup_next += 1;
            let now = self.now();
            self.send(i, Kind::Iamat, j, now, now, wall);
        }
    }

    fn issue(&mut self, now: u64, k_end: u64) {
        let wall = wall_ns();
        match self.sched {
            Some(sched) => {
                while self.next_k < k_end {
                    let intended = sched.intended(self.next_k);
                    if intended > now {
                        break;
                    }
                    let Some(i) = self.pop_slot() else { break };
                    self.send_next(i, intended, now, wall);
                    self.next_k += 1;
                }
            }
            None => {
                while let Some(i) = self.pop_slot() {
                    self.send_next(i, now, now, wall);
                }
            }
        }
    }

    /// Sends the workload's next request on connection `i`.
    fn send_next(&mut self, i: usize, intended: u64, now: u64, wall: u64) {
        let kind = match self.s.workload {
            Workload::Iamat | Workload::Propagation => Kind::Iamat,
            Workload::Whatsat => Kind::Whatsat,
            Workload::Mix if self.rng.unit() < self.s.mix => Kind::Iamat,
            Workload::Mix => Kind::Whatsat,
            Workload::Raw => Kind::Raw,
        };
        let count = self.parts[self.conns[i].part].p.count;
        let j = self.rng.below(count);
        self.send(i, kind, j, intended, now, wall);
    }

    /// Formats one request for client `j` of the connection's partition into its output.
    fn send(&mut self, i: usize, kind: Kind, j: u64, intended: u64, now: u64, wall: u64) {
        let c = &mut self.conns[i];
        let part = &mut self.parts[c.part];
        let client = part.p.first + j * part.p.stride;
        let out = c.out.tail();
        let echo = match kind {
            Kind::Iamat => {
                let t = wl::next_time(&mut part.last[j as usize], wall);
                wl::push_iamat(out, client, Location::random(&mut self.rng), t, self.s.crlf)
            }
            Kind::Whatsat => wl::push_whatsat(out, client, &self.s.radius, self.s.bound, self.s.crlf),
            Kind::Raw => {
                wl::push_raw(out, &self.s.line, self.s.crlf);
                0..0
            }
        };
        c.echo.push(&out[echo.clone()]);
        c.pending.push_back(Pending {
            kind,
            echo_len: echo.len() as u32,
            intended,
            sent: now,
        });
        self.outstanding += 1;
        if !c.dirty {
            c.dirty = true;
            self.dirty.push(i);
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(i) = self.dirty.pop() {
            self.conns[i].dirty = false;
            self.flush(i);
        }
    }

    fn flush(&mut self, i: usize) {
        let c = &mut self.conns[i];
        if c.state != State::Open {
            return;
        }
        let Some(stream) = c.stream.as_mut() else { return };
        while !c.out.is_empty() {
            let data = c.out.data();
            match stream.write(data) {
                Ok(n) => {
                    let short = n < data.len();
                    c.out.consume(n);
                    if short {
                        break; // the socket buffer is full: wait for WRITABLE
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let now = self.now();
                    self.fail(i, Fail::Connection, &format!("write: {e}"), now);
                    return;
                }
            }
        }
    }

    fn connect(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        let r = TcpStream::connect(c.addr).and_then(|mut s| {
            s.set_nodelay(true)?;
            self.poll
                .registry()
                .register(&mut s, Token(i), Interest::READABLE | Interest::WRITABLE)?;
            Ok(s)
        });
        match r {
            Ok(s) => {
                c.stream = Some(s);
                c.state = State::Connecting { since: now };
            }
            Err(e) => self.fail(i, Fail::Connection, &format!("connect: {e}"), now),
        }
    }

    fn reconnect_due(&mut self, now: u64) {
        if now >= self.end_ns {
            return;
        }
        for i in 0..self.conns.len() {
            if matches!(self.conns[i].state, State::Down { retry_at } if retry_at <= now) {
                self.connect(i, now);
            }
        }
    }

    /// A connection became writable or signalled while connecting: did it succeed?
    fn finish_connect(&mut self, i: usize, now: u64) {
        let c = &mut self.conns[i];
        let Some(stream) = c.stream.as_ref() else { return };
        let problem = match stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match stream.peer_addr() {
                Ok(_) => None,
                Err(e) if e.kind() == ErrorKind::NotConnected => return, // not yet
                Err(e) => Some(e),
            },
        };
        if let Some(e) = problem {
            self.fail(i, Fail::Connection, &format!("connect: {e}"), now);
            return;
        }
        c.state = State::Open;
        let depth = if self.phase == Phase::Setup {
            SETUP_DEPTH
        } else {
            self.s.pipeline
        };
        self.push_slots(i, depth);
    }

    /// Queues `depth` slots for connection `i`, which has just opened. A connection that
    /// went down leaves its slots queued until they are popped, and the open loop pops only
    /// as requests fall due: against a server that accepts and closes at once (at its
    /// connection limit, or restarting) every reconnect added `depth` dead slots, without
    /// bound. So once the queue holds more than every connection's full depth, the dead
    /// slots are swept out; live ones are never more than that.
    fn push_slots(&mut self, i: usize, depth: usize) {
        if self.free.len() + depth > self.conns.len() * depth {
            let conns = &self.conns;
            self.free.retain(|&(j, g)| {
                let c = &conns[j as usize];
                c.generation == g && c.state == State::Open && j as usize != i
            });
        }
        let generation = self.conns[i].generation;
        for _ in 0..depth {
            self.free.push_back((i as u32, generation));
        }
    }

    fn check_timeouts(&mut self, now: u64) {
        let limit = self.s.timeout.as_nanos() as u64;
        for i in 0..self.conns.len() {
            let c = &self.conns[i];
            let late = match c.state {
                State::Open => c
                    .pending
                    .front()
                    .is_some_and(|p| now.saturating_sub(p.sent) > limit),
                State::Connecting { since } => now.saturating_sub(since) > limit,
                State::Down { .. } => false,
            };
            if late {
                self.fail(
                    i,
                    Fail::Timeout,
                    &format!("no reply within {:?}", self.s.timeout),
                    now,
                );
            }
        }
    }

    /// Gives up on connection `i`: counts the failure, forgets its requests and schedules a
    /// reconnect. A timeout counts every request it had outstanding.
    fn fail(&mut self, i: usize, why: Fail, detail: &str, now: u64) {
        let c = &mut self.conns[i];
        if self.phase == Phase::Setup {
            if self.setup_error.is_none() {
                self.setup_error = Some(format!("{}: {detail}", c.addr));
            }
        } else if why == Fail::Timeout {
            for p in &c.pending {
                let (total, tick) = if p.intended >= self.warmup_ns {
                    (&mut self.errors, Some(&mut self.tick_errors))
                } else {
                    (&mut self.warmup_errors, None)
                };
                total.timeout += 1;
                if let Some(t) = tick {
                    t.timeout += 1;
                }
            }
            if c.pending.is_empty() {
                self.errors.timeout += 1; // a connect that timed out
                self.tick_errors.timeout += 1;
            }
        } else {
            let bucket = if now >= self.warmup_ns {
                &mut self.errors
            } else {
                &mut self.warmup_errors
            };
            match why {
                Fail::Malformed => bucket.malformed += 1,
                _ => bucket.connection += 1,
            }
            if now >= self.warmup_ns {
                match why {
                    Fail::Malformed => self.tick_errors.malformed += 1,
                    _ => self.tick_errors.connection += 1,
                }
            }
        }
        if let Some(mut s) = c.stream.take() {
            let _ = self.poll.registry().deregister(&mut s);
        }
        self.outstanding -= c.pending.len() as u64;
        c.pending.clear();
        c.out.clear();
        c.input.clear();
        c.echo.clear();
        c.scanned = 0;
        c.generation = c.generation.wrapping_add(1);
        c.state = State::Down {
            retry_at: now + RETRY_AFTER,
        };
    }

    /// Waits for events until `wake_at` (ns since `base`) at the latest, and handles them.
    fn pump(&mut self, wake_at: u64) -> Result<(), String> {
        let now = self.now();
        let wait = wake_at.saturating_sub(now);
        let timeout = match &self.timer {
            // Sub-millisecond precision from the timerfd; the poll timeout (rounded up to
            // a millisecond by mio) is only a backstop.
            Some(t) if wait > 0 => {
                if self.timer_at != Some(wake_at) {
                    if t.arm(Duration::from_nanos(wait)).is_ok() {
                        self.timer_at = Some(wake_at);
                    } else {
                        self.timer_at = None;
                    }
                }
                Duration::from_nanos(wait) + Duration::from_millis(1)
            }
            _ => Duration::from_nanos(wait),
        };
        let Some(mut events) = self.events.take() else {
            return Err("internal: events buffer missing".into());
        };
        let r = self.poll.poll(&mut events, Some(timeout));
        if let Err(e) = r {
            self.events = Some(events);
            return if e.kind() == ErrorKind::Interrupted {
                Ok(())
            } else {
                Err(format!("poll: {e}"))
            };
        }
        for ev in events.iter() {
            let tok = ev.token();
            if tok == TIMER {
                if let Some(t) = &self.timer {
                    t.clear();
                }
                self.timer_at = None;
                continue;
            }
            let i = tok.0;
            if i >= self.conns.len() {
                continue;
            }
            let now = self.now();
            match self.conns[i].state {
                State::Connecting { .. } => self.finish_connect(i, now),
                State::Open => {
                    if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                        self.read(i);
                    }
                    if ev.is_writable() {
                        self.flush(i);
                    }
                }
                State::Down { .. } => {}
            }
        }
        self.events = Some(events);
        Ok(())
    }

    /// Reads what connection `i` has, handling every complete reply.
    fn read(&mut self, i: usize) {
        loop {
            let c = &mut self.conns[i];
            if c.state != State::Open {
                return;
            }
            let Some(stream) = c.stream.as_mut() else { return };
            match stream.read(&mut self.scratch) {
                Ok(0) => {
                    let now = self.now();
                    self.fail(i, Fail::Connection, "closed by the server", now);
                    return;
                }
                Ok(n) => {
                    let now = since(self.base);
                    c.input.push(&self.scratch[..n]);
                    self.replies(i, now);
                    // A short read emptied the socket; anything arriving later raises a new
                    // edge, so the extra read that would only return WouldBlock is skipped.
                    if n < self.scratch.len() {
                        return;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    let now = self.now();
                    self.fail(i, Fail::Connection, &format!("read: {e}"), now);
                    return;
                }
            }
        }
    }

    /// Takes every complete reply off connection `i`'s input.
    fn replies(&mut self, i: usize, now: u64) {
        loop {
            let c = &mut self.conns[i];
            if c.state != State::Open || c.input.is_empty() {
                return;
            }
            let Some(&p) = c.pending.front() else {
                let what = format!("reply to no request: {}", wl::show(c.input.data()));
                self.fail(i, Fail::Malformed, &what, now);
                return;
            };
            let n = match wl::frame(c.input.data(), p.kind.framing(), c.scanned) {
                Frame::Complete(n) => n,
                Frame::Incomplete { scanned } => {
                    c.scanned = scanned;
                    return;
                }
                Frame::TooLong => {
                    self.fail(i, Fail::Malformed, "reply longer than 4 MiB", now);
                    return;
                }
            };
            let reply = &c.input.data()[..n];
            let echo = &c.echo.data()[..p.echo_len as usize];
            let outcome = match p.kind {
                Kind::Iamat => wl::check_iamat(reply, echo),
                Kind::Whatsat => wl::check_whatsat(reply, echo),
                Kind::Raw => wl::check_raw(reply, self.s.expect.as_deref()),
            };
            if outcome != Outcome::Ok && self.phase == Phase::Setup && self.setup_error.is_none() {
                self.setup_error = Some(format!(
                    "{}: a set-up IAMAT for {} was answered: {}",
                    c.addr,
                    String::from_utf8_lossy(echo.split(|&b| b == b' ').next().unwrap_or_default()),
                    wl::show(reply)
                ));
            }
            c.echo.consume(p.echo_len as usize);
            c.input.consume(n);
            c.scanned = 0;
            c.pending.pop_front();
            self.free.push_back((i as u32, c.generation));
            self.outstanding -= 1;
            if self.phase == Phase::Measure {
                self.account(p, outcome, now);
            }
        }
    }

    fn account(&mut self, p: Pending, outcome: Outcome, now: u64) {
        if outcome == Outcome::Ok {
            self.tick_completed += 1;
        }
        let measured = p.intended >= self.warmup_ns;
        if !measured {
            match outcome {
                Outcome::Ok => {}
                Outcome::ErrorReply => self.warmup_errors.error_reply += 1,
                Outcome::Places(s) => self.warmup_errors.places.count(s),
                Outcome::Malformed => self.warmup_errors.malformed += 1,
            }
            return;
        }
        match outcome {
            Outcome::Ok => {
                stats::record_ns(&mut self.hist, pacing::latency(p.intended, now));
                if self.sched.is_some() {
                    stats::record_ns(&mut self.lateness, pacing::lateness(p.intended, p.sent));
                }
            }
            Outcome::ErrorReply => {
                self.errors.error_reply += 1;
                self.tick_errors.error_reply += 1;
            }
            Outcome::Places(s) => {
                self.errors.places.count(s);
                self.tick_errors.places.count(s);
            }
            Outcome::Malformed => {
                self.errors.malformed += 1;
                self.tick_errors.malformed += 1;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fail {
    Connection,
    Timeout,
    Malformed,
}

/// Nanoseconds since `base` (a free function so it can be called while a connection is
/// borrowed).
fn since(base: Instant) -> u64 {
    base.elapsed().as_nanos() as u64
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};
    use std::net::TcpListener;
    use std::sync::mpsc;
    use std::thread;

    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answers like herd (and `PING` like Redis).
        Good,
        /// Reads and never answers.
        Silent,
        /// Every third answer is `? ...`.
        Picky,
    }

    fn fake_server(mode: Mode) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { return };
                thread::spawn(move || {
                    let mut w = s.try_clone().expect("clone");
                    let mut n = 0;
                    for line in BufReader::new(s).lines() {
                        let Ok(line) = line else { return };
                        n += 1;
                        let f: Vec<&str> = line.split_whitespace().collect();
                        let reply = match (mode, f.first().copied()) {
                            (Mode::Silent, _) => continue,
                            (Mode::Picky, _) if n % 3 == 0 => format!("? {line}\n"),
                            (_, Some("IAMAT")) => format!("AT F +0.000000001 {} {} {}\n", f[1], f[2], f[3]),
                            (_, Some("WHATSAT")) => format!(
                                "AT F +0.000000001 {} +1.0+2.0 3.0\n{{\n   \"results\" : [],\n   \"status\" : \"OK\"\n}}\n\n",
                                f[1]
                            ),
                            _ => "+PONG\r\n".to_string(),
                        };
                        if w.write_all(reply.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    fn settings(workload: Workload) -> Settings {
        Settings {
            workload,
            pipeline: 4,
            rate: None,
            threads: 1,
            warmup: Duration::ZERO,
            duration: Duration::from_millis(300),
            timeout: Duration::from_secs(2),
            radius: "10".into(),
            bound: 5,
            mix: 0.5,
            line: b"PING".to_vec(),
            expect: Some(b"+PONG".to_vec()),
            crlf: false,
            seed: 1,
        }
    }

    /// Runs one loop thread against `addr` with 3 connections; returns the good replies
    /// (from every tick and the final residue) and the final figures.
    fn run_against(addr: SocketAddr, s: Settings) -> Result<(u64, Box<Final>), String> {
        let clients = 30;
        let plan = Plan {
            thread: 0,
            conns: vec![(addr, 0); 3],
            partitions: vec![Partition {
                first: 0,
                stride: 1,
                count: clients,
            }],
        };
        let (tx, rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel();
        let h = thread::spawn(move || run(plan, Arc::new(s), tx, go_rx));
        let mut ok = 0;
        loop {
            match rx.recv().map_err(|e| e.to_string())? {
                Msg::Ready => {
                    let _ = go_tx.send(Go::Start(Instant::now()));
                }
                Msg::Failed(e) => return Err(e),
                Msg::Tick(t) => ok += t.hist.len(),
                Msg::Done(f) => {
                    let _ = h.join();
                    ok += f.hist.len();
                    return Ok((ok, f));
                }
            }
        }
    }

    #[test]
    fn closed_loop_validates_every_workload() {
        let addr = fake_server(Mode::Good);
        for w in [Workload::Iamat, Workload::Whatsat, Workload::Mix, Workload::Raw] {
            let (ok, f) = run_against(addr, settings(w)).expect("run");
            assert!(ok > 0, "{w:?}");
            assert_eq!(f.errors, Errors::default(), "{w:?}");
            assert!(!f.aborted && f.outstanding == 0, "{w:?}");
        }
    }

    #[test]
    fn error_replies_are_counted() {
        let (ok, f) = run_against(fake_server(Mode::Picky), settings(Workload::Iamat)).expect("run");
        assert!(ok > 0 && f.errors.error_reply > 0, "{ok} {:?}", f.errors);
        assert_eq!(f.errors.total(), f.errors.error_reply);
    }

    #[test]
    fn open_loop_sends_exactly_the_schedule() {
        let mut s = settings(Workload::Iamat);
        s.rate = Some(2000.0);
        s.pipeline = 1;
        let (ok, f) = run_against(fake_server(Mode::Good), s).expect("run");
        // 300 ms at 2000/s: requests 0..600, every one answered or accounted for.
        assert_eq!(ok + f.errors.total() + f.unsent, 600, "{:?}", f.errors);
        assert_eq!(f.lateness.len(), ok);
    }

    #[test]
    fn unanswered_requests_time_out_and_the_run_still_ends() {
        let mut s = settings(Workload::Iamat);
        s.timeout = Duration::from_millis(100);
        let (ok, f) = run_against(fake_server(Mode::Silent), s).expect("run");
        assert_eq!(ok, 0);
        assert!(f.errors.timeout >= 3 * 4, "{:?}", f.errors);
        assert!(!f.aborted);
    }

    #[test]
    fn a_flapping_connection_does_not_grow_the_slot_queue() {
        let mut s = settings(Workload::Iamat);
        s.rate = Some(10.0);
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let plan = Plan {
            thread: 0,
            conns: vec![(addr, 0); 3],
            partitions: vec![Partition {
                first: 0,
                stride: 1,
                count: 30,
            }],
        };
        let mut d = Driver::new(plan, Arc::new(s)).expect("driver");
        for i in 0..3 {
            d.conns[i].state = State::Open;
            d.push_slots(i, 4);
        }
        // Connection 0 opens and fails ten thousand times while nothing is popped.
        for _ in 0..10_000 {
            d.conns[0].generation = d.conns[0].generation.wrapping_add(1);
            d.push_slots(0, 4);
        }
        assert!(d.free.len() <= 3 * 4, "{} slots queued", d.free.len());
        let live = |d: &Driver, i: u32| d.free.iter().filter(|&&(j, _)| j == i).count();
        assert_eq!((live(&d, 0), live(&d, 1), live(&d, 2)), (4, 4, 4));
    }

    #[test]
    fn refused_connection_fails_setup() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = run_against(addr, settings(Workload::Iamat))
            .err()
            .expect("an error");
        assert!(e.contains(&addr.to_string()), "{e}");
    }

    #[test]
    fn whatsat_setup_fails_on_error_replies() {
        let e = run_against(fake_server(Mode::Picky), settings(Workload::Whatsat))
            .err()
            .expect("an error");
        assert!(e.contains("set-up IAMAT"), "{e}");
    }
}
