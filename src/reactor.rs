//! The reactor: one thread and one `mio::Poll` that own every socket of this server.
//!
//! ```text
//!   client listener ─┐                          ┌─ Places pool threads (blocking ureq)
//!   peer listener ───┤                          │     results: channel + Waker
//!   client sockets ──┼─ Poll ── reactor loop ───┤
//!   neighbour links ─┘     │                    └─ timer wheel: reconnects, timeouts
//!                  slab: token → Conn (with generation)
//! ```
//!
//! Each loop pass: poll (timeout from the timer wheel, or zero while work is pending),
//! dispatch events, give every connection with input a turn of at most `LINES_PER_TURN`
//! messages (fairness: one pipelining client cannot starve the rest), act on the HELLOs
//! that turn saw, then move each neighbour's batched records to its link, flush every
//! connection that got output, and flush the log. Nothing here blocks: sockets are
//! non-blocking and Places calls run on the pool.
//!
//! A client connection answers in request order: a WHATSAT waiting on Places holds back
//! the replies queued after it on that connection, and only there.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::lines::{Fill, Line, LineReader, WriteQueue};
use crate::logging::Shown;
use crate::peers::{self, Link, Neighbour};
use crate::places::{self, Pool, Submit};
use crate::protocol::{self, Location, Parsed, Request, Timestamp};
use crate::slab::Slab;
use crate::table::Table;
use crate::timer::{Jitter, Throttle, TimerWheel};

// Fixed tokens live at the top of the token space; connection slots use 0.. .
const LISTENER: Token = Token(usize::MAX - 1);
const PEER_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const SIGNALS: Token = Token(usize::MAX - 4);

const EVENTS_CAPACITY: usize = 1024;
/// One read lands here before it is copied to its connection's buffer.
const SCRATCH_SIZE: usize = 64 * 1024;
/// Messages one connection may have served per turn before the others get theirs.
const LINES_PER_TURN: usize = 64;
/// Stop reading a client's input while this much of its output is unsent (the client is
/// not reading its replies); resume once it drains.
const OUT_HIGH: usize = 256 * 1024;
/// WHATSATs one connection may have waiting on Places before its input is paused.
const MAX_WAITING: usize = 64;
/// Places jobs that may wait for a worker before WHATSAT is answered "server busy".
const PLACES_QUEUE: usize = 1024;
/// The longest the loop sleeps, so housekeeping never stalls on a quiet server.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// Log records are written to the file at most this long after they are made (and when
/// the 64 KiB buffer fills). Writing once per loop pass instead cost a `write` per dozen
/// requests at pipeline 1: 3.5% of the server's cycles.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Retry delay after `accept` fails for lack of resources (EMFILE and the like).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// A failure that repeats (out of descriptors, over the connection cap) is logged at most
/// this often (SPEC §7).
const WARN_EVERY: Duration = Duration::from_secs(1);
/// `Settings::max_connections` unless configured (SPEC §7).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
const TIMER_TICK: Duration = Duration::from_millis(5);
const TIMER_SLOTS: usize = 512;
/// An AT record is an IAMAT plus a server name and a diff; neighbours get room for that.
const PEER_LINE_SLACK: usize = 512;

/// What a Places answer is addressed to: a connection slot, the generation of the
/// connection that asked, and the reply's place in that connection's order.
pub struct Tag {
    token: usize,
    generation: u32,
    seq: u64,
}

/// Timer payloads.
enum Timer {
    RetryAccept,
    /// Dial neighbour n again.
    Redial(usize),
    /// Give up on the dial to neighbour n.
    ConnectTimeout(usize),
}

/// What this server is, for the reactor.
pub struct Settings {
    pub name: String,
    pub max_line: usize,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Each neighbour's name and peer address.
    pub neighbours: Vec<(String, SocketAddr)>,
    /// Every server of herd.yml: a record from a neighbour naming another origin is
    /// malformed (SPEC §3).
    pub servers: Vec<String>,
    /// Client connections open at once; past it a new one is accepted and closed at once.
    /// 0 = no cap.
    pub max_connections: usize,
}

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    peer_listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
    conns: Slab<Conn>,
    core: Core,
    /// Connections with input left to serve, in turn order.
    ready: VecDeque<usize>,
    /// Connections with output to flush this pass.
    dirty: Vec<usize>,
    timers: TimerWheel<Timer>,
    scratch: Vec<u8>,
    jitter: Jitter,
    log_flushed_at: Instant,
    accept: AcceptState,
}

/// Keeps descriptor exhaustion from feeding on itself (SPEC §7): one retry timer at most,
/// whichever listener failed, and one log line a second.
struct AcceptState {
    max_clients: usize,
    /// Client connections open now.
    clients: usize,
    retry_pending: bool,
    failed: Throttle,
    refused: Throttle,
}

/// State the message handlers need besides the connection itself.
struct Core {
    name: String,
    max_line: usize,
    servers: Vec<String>,
    table: Table,
    pool: Pool<Tag>,
    neighbours: Vec<Neighbour>,
    /// Reused for each AT reply, so an IAMAT costs no allocation.
    reply: Vec<u8>,
    /// HELLOs accepted during this pass's turns: (connection, neighbour). Acting on them
    /// touches other connections, so it happens after the turn.
    hellos: Vec<(usize, usize)>,
}

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Client,
    /// Accepted on the peer port; `from` is known once its HELLO names a neighbour.
    PeerIn {
        from: Option<usize>,
    },
    /// Dialled by us to neighbour `n`; records go out on it.
    PeerOut {
        n: usize,
    },
}

struct Conn {
    stream: TcpStream,
    input: LineReader,
    /// Everything else, apart so a line borrowed from `input` can be handled while the
    /// rest of the connection changes.
    s: Session,
}

struct Session {
    addr: SocketAddr,
    /// `addr` as text, formatted once for the log lines of every message.
    peer: Box<str>,
    /// The peer closed or failed (per the event): read on until EOF or the error.
    peer_closed: bool,
    generation: u32,
    role: Role,
    output: WriteQueue,
    replies: Replies,
    /// The socket may hold unread input (no `WouldBlock` seen since the last readable event).
    can_read: bool,
    /// The peer closed its sending side; whatever is buffered is the last input.
    eof: bool,
    /// No more input will be served: once the replies are flushed the connection closes.
    input_done: bool,
    /// Stopped serving input because of backpressure; resume when output drains.
    stalled: bool,
    scheduled: bool,
    dirty: bool,
    writable_interest: bool,
}

/// Replies held back behind a WHATSAT that waits on Places.
#[derive(Default)]
struct Replies {
    queue: VecDeque<Reply>,
    next_seq: u64,
    waiting: usize,
    bytes: usize,
}

enum Reply {
    Ready(Vec<u8>),
    Waiting { seq: u64, at_line: Box<[u8]> },
}

impl Replies {
    /// Appends a finished reply: straight to the socket's queue unless an earlier reply is
    /// still waiting.
    fn push(&mut self, out: &mut WriteQueue, bytes: &[u8]) {
        if self.queue.is_empty() {
            out.push(bytes);
            return;
        }
        self.bytes += bytes.len();
        if let Some(Reply::Ready(last)) = self.queue.back_mut() {
            last.extend_from_slice(bytes);
        } else {
            self.queue.push_back(Reply::Ready(bytes.to_vec()));
        }
    }

    /// Reserves the next place in order for a WHATSAT whose JSON is not known yet.
    fn wait(&mut self, at_line: Box<[u8]>) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.waiting += 1;
        self.queue.push_back(Reply::Waiting { seq, at_line });
        seq
    }

    /// Fills the waiting reply `seq` and releases every reply now at the front. Returns
    /// the AT line it answered, for the log.
    fn complete(&mut self, seq: u64, json: &str, out: &mut WriteQueue) -> Option<Box<[u8]>> {
        let slot = self
            .queue
            .iter_mut()
            .find(|r| matches!(r, Reply::Waiting { seq: s, .. } if *s == seq))?;
        let Reply::Waiting { at_line, .. } = slot else {
            return None;
        };
        let line = std::mem::take(at_line);
        let mut reply = Vec::with_capacity(line.len() + json.len() + 3);
        write_whatsat_reply(&line, json, &mut reply);
        self.bytes += reply.len();
        *slot = Reply::Ready(reply);
        self.waiting -= 1;
        while let Some(Reply::Ready(_)) = self.queue.front() {
            if let Some(Reply::Ready(bytes)) = self.queue.pop_front() {
                self.bytes -= bytes.len();
                out.push(&bytes);
            }
        }
        Some(line)
    }

    fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }
}

/// SPEC §2: the stored AT line, `\n`, the JSON, `\n\n`.
fn write_whatsat_reply(at_line: &[u8], json: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(at_line);
    out.push(b'\n');
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl Session {
    /// True while the client is behind on reading or has too much waiting on Places.
    fn backpressured(&self) -> bool {
        self.output.len() + self.replies.bytes >= OUT_HIGH || self.replies.waiting >= MAX_WAITING
    }

    fn finished(&self) -> bool {
        self.input_done && self.replies.is_empty() && self.output.is_empty()
    }
}

#[derive(Debug)]
pub enum StartError {
    Bind { addr: SocketAddr, err: io::Error },
    Io(&'static str, io::Error),
}

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StartError::Bind { addr, err } => write!(f, "cannot listen on {addr}: {err}"),
            StartError::Io(what, err) => write!(f, "{what}: {err}"),
        }
    }
}

fn listen(poll: &Poll, addr: SocketAddr, token: Token) -> Result<TcpListener, StartError> {
    let mut listener = TcpListener::bind(addr).map_err(|err| StartError::Bind { addr, err })?;
    poll.registry()
        .register(&mut listener, token, Interest::READABLE)
        .map_err(|e| StartError::Io("cannot register listener", e))?;
    Ok(listener)
}

impl Reactor {
    /// Binds both listeners and prepares the loop; nothing is served until `run`.
    pub fn bind(
        settings: Settings,
        places_cfg: &crate::config::Places,
        places_key: Option<String>,
    ) -> Result<Reactor, StartError> {
        let poll = Poll::new().map_err(|e| StartError::Io("cannot create poll", e))?;
        // Before listening: once the port accepts, a supervisor may already signal us, and
        // the default action would kill the process instead of a clean exit 0.
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])
                .map_err(|e| StartError::Io("cannot watch signals", e))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| StartError::Io("cannot register signals", e))?;
        let listener = listen(&poll, settings.client_addr, LISTENER)?;
        let peer_listener = listen(&poll, settings.peer_addr, PEER_LISTENER)?;
        let waker =
            Waker::new(poll.registry(), WAKER).map_err(|e| StartError::Io("cannot create waker", e))?;
        let pool = Pool::start(places_cfg, places_key, Arc::new(waker), PLACES_QUEUE)
            .map_err(|e| StartError::Io("cannot start Places workers", e))?;
        let now = Instant::now();
        let mut timers = TimerWheel::new(TIMER_TICK, TIMER_SLOTS, now);
        // Every link starts down with a dial due at once.
        let neighbours = settings
            .neighbours
            .into_iter()
            .enumerate()
            .map(|(i, (name, addr))| Neighbour::new(name, addr, timers.insert(now, Timer::Redial(i))))
            .collect();
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            peer_listener: Some(peer_listener),
            signals,
            conns: Slab::default(),
            core: Core {
                name: settings.name,
                max_line: settings.max_line,
                servers: settings.servers,
                table: Table::default(),
                pool,
                neighbours,
                reply: Vec::new(),
                hellos: Vec::new(),
            },
            ready: VecDeque::new(),
            dirty: Vec::new(),
            timers,
            scratch: vec![0; SCRATCH_SIZE],
            jitter: Jitter::new(seed),
            log_flushed_at: Instant::now(),
            accept: AcceptState {
                max_clients: settings.max_connections,
                clients: 0,
                retry_pending: false,
                failed: Throttle::new(WARN_EVERY),
                refused: Throttle::new(WARN_EVERY),
            },
        })
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut expired = Vec::new();
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(LISTENER),
                    PEER_LISTENER => self.accept(PEER_LISTENER),
                    WAKER => self.places_answers(),
                    SIGNALS => {
                        if self.signalled() {
                            self.shutdown();
                            // No Places call starts after the signal.
                            self.core.pool.shutdown();
                            return Ok(());
                        }
                    }
                    Token(i) => self.conn_event(i, event),
                }
            }
            let now = Instant::now();
            self.timers.expire(now, &mut expired);
            for timer in expired.drain(..) {
                self.on_timer(timer);
            }
            self.serve_ready();
            self.flush_dirty();
            if now >= self.log_flushed_at + LOG_FLUSH_EVERY {
                crate::logging::flush();
                self.log_flushed_at = now;
            }
        }
    }

    fn poll_timeout(&self) -> Duration {
        if !self.ready.is_empty() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let mut timeout = match self.timers.next_deadline() {
            Some(at) => at.saturating_duration_since(now).min(MAX_POLL_WAIT),
            None => MAX_POLL_WAIT,
        };
        if crate::logging::unflushed() {
            // Buffered log records reach the file within LOG_FLUSH_EVERY, busy or idle.
            timeout = timeout.min((self.log_flushed_at + LOG_FLUSH_EVERY).saturating_duration_since(now));
        }
        timeout
    }

    fn signalled(&mut self) -> bool {
        let mut any = false;
        for sig in self.signals.pending() {
            info!("signal {sig} received, shutting down");
            any = true;
        }
        any
    }

    /// SPEC §1: stop listening and drop every link at once, so a replacement can bind and
    /// no record leaks out after the signal; then exit.
    fn shutdown(&mut self) {
        for mut l in [self.listener.take(), self.peer_listener.take()]
            .into_iter()
            .flatten()
        {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let open = self.conns.len();
        let tokens: Vec<usize> = self.conns.keys().collect();
        for t in tokens {
            if let Some(mut conn) = self.conns.remove(t) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
        info!("{} shut down ({open} connections closed)", self.core.name);
        crate::logging::flush();
    }

    fn on_timer(&mut self, timer: Timer) {
        match timer {
            Timer::RetryAccept => {
                self.accept.retry_pending = false;
                self.accept(LISTENER);
                self.accept(PEER_LISTENER);
            }
            Timer::Redial(n) => {
                if matches!(self.core.neighbours[n].link, Link::Down { .. }) {
                    self.dial(n);
                }
            }
            Timer::ConnectTimeout(n) => {
                if let Link::Connecting { token, .. } = self.core.neighbours[n].link {
                    self.close(token, "connect timed out");
                }
            }
        }
    }

    fn accept(&mut self, which: Token) {
        loop {
            let listener = match which {
                LISTENER => &self.listener,
                _ => &self.peer_listener,
            };
            let Some(listener) = listener else {
                return;
            };
            match listener.accept() {
                Ok((stream, addr)) => {
                    if which == LISTENER && self.over_cap(addr) {
                        // Dropping the stream closes it: the client learns at once
                        // instead of waiting in the backlog.
                        drop(stream);
                        continue;
                    }
                    let (role, max_line) = match which {
                        LISTENER => (Role::Client, self.core.max_line),
                        _ => (Role::PeerIn { from: None }, self.core.max_line + PEER_LINE_SLACK),
                    };
                    if let Some(token) = self.add_conn(stream, addr, role, max_line, Interest::READABLE) {
                        // Data may have come with the connection; readiness already fired.
                        self.schedule(token);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) if is_transient_accept_error(&e) => {
                    // The connection died in the backlog: nothing to serve, keep accepting.
                    debug!("accept: {e}");
                }
                Err(e) => {
                    // Out of descriptors or memory: the backlog keeps the clients waiting;
                    // edge-triggered readiness will not fire again for them, so retry soon.
                    // One retry serves both listeners: a timer per failure would double
                    // with every retry that fails again.
                    let now = Instant::now();
                    if let Some(held) = self.accept.failed.allow(now) {
                        warn!(
                            "accept failed: {e}; retrying in {} ms ({held} more failures since the last report)",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    if !self.accept.retry_pending {
                        self.accept.retry_pending = true;
                        self.timers.insert(now + ACCEPT_RETRY, Timer::RetryAccept);
                    }
                    return;
                }
            }
        }
    }

    /// True when a new client would exceed `max_connections`; logs that (throttled).
    fn over_cap(&mut self, addr: SocketAddr) -> bool {
        let a = &mut self.accept;
        if a.max_clients == 0 || a.clients < a.max_clients {
            return false;
        }
        if let Some(held) = a.refused.allow(Instant::now()) {
            warn!(
                "{addr} refused: {} client connections open (limits.max_connections); {held} more refused since the last report",
                a.clients
            );
        }
        true
    }

    fn add_conn(
        &mut self,
        mut stream: TcpStream,
        addr: SocketAddr,
        role: Role,
        max_line: usize,
        interest: Interest,
    ) -> Option<usize> {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{addr}: set_nodelay: {e}");
        }
        let (token, generation) = self.conns.vacant();
        if let Err(e) = self.poll.registry().register(&mut stream, Token(token), interest) {
            warn!("{addr}: cannot register connection: {e}");
            return None;
        }
        self.conns.insert(Conn {
            stream,
            input: LineReader::new(max_line),
            s: Session {
                addr,
                peer: addr.to_string().into(),
                peer_closed: false,
                generation,
                role,
                output: WriteQueue::default(),
                replies: Replies::default(),
                can_read: true,
                eof: false,
                input_done: false,
                stalled: false,
                scheduled: false,
                dirty: false,
                writable_interest: interest.is_writable(),
            },
        });
        match role {
            Role::Client => {
                self.accept.clients += 1;
                info!("{addr} connected")
            }
            Role::PeerIn { .. } => info!("{addr} connected to the peer port"),
            Role::PeerOut { .. } => {}
        }
        Some(token)
    }

    /// Starts a non-blocking connect to neighbour `n`; completion shows as writability.
    fn dial(&mut self, n: usize) {
        if let Link::Down { retry } = self.core.neighbours[n].link {
            self.timers.cancel(retry);
        }
        let addr = self.core.neighbours[n].addr;
        let interest = Interest::READABLE | Interest::WRITABLE;
        let max_line = self.core.max_line + PEER_LINE_SLACK;
        let conn = TcpStream::connect(addr)
            .ok()
            .and_then(|stream| self.add_conn(stream, addr, Role::PeerOut { n }, max_line, interest));
        let Some(token) = conn else {
            self.link_down(n, "cannot start a connection");
            return;
        };
        let timeout = self
            .timers
            .insert(Instant::now() + peers::CONNECT_TIMEOUT, Timer::ConnectTimeout(n));
        let nb = &mut self.core.neighbours[n];
        nb.link = Link::Connecting { token, timeout };
        debug!("link to {} ({addr}): connecting", nb.name);
    }

    /// The dial to neighbour `n` on `token` finished: check how.
    fn connect_done(&mut self, n: usize, token: usize) {
        let Some(conn) = self.conns.get_mut(token) else {
            return;
        };
        let failed = match conn.stream.take_error() {
            Ok(Some(e)) | Err(e) => Some(e),
            Ok(None) => match conn.stream.peer_addr() {
                Ok(_) => None,
                // Spurious wake-up: still connecting.
                Err(e) if e.kind() == ErrorKind::NotConnected => return,
                Err(e) => Some(e),
            },
        };
        if let Some(e) = failed {
            self.close(token, &e.to_string());
            return;
        }
        let nb = &mut self.core.neighbours[n];
        if let Link::Connecting { timeout, .. } = nb.link {
            self.timers.cancel(timeout);
        }
        nb.link = Link::Up { token };
        nb.backoff.reset();
        nb.outbox.clear();
        nb.out_limit = peers::greeting(
            &self.core.name,
            self.core.table.records().map(|r| &r.line[..]),
            conn.s.output.buf(),
        );
        info!(
            "link to {} ({}): up; sent HELLO and {} records",
            nb.name,
            nb.addr,
            self.core.table.len()
        );
        self.mark_dirty(token);
    }

    /// Marks the link to neighbour `n` down and schedules a redial with backoff.
    fn link_down(&mut self, n: usize, why: &str) {
        let delay = self.core.neighbours[n].backoff.next_delay(self.jitter.next_u64());
        let retry = self.timers.insert(Instant::now() + delay, Timer::Redial(n));
        let nb = &mut self.core.neighbours[n];
        let was = std::mem::replace(&mut nb.link, Link::Down { retry });
        nb.outbox.clear();
        let msg = format!(
            "link to {} ({}): {was} -> down: {why}; retry in {} ms",
            nb.name,
            nb.addr,
            delay.as_millis()
        );
        // A neighbour that stays away would fill the log with the same refusal.
        if matches!(was, Link::Up { .. }) || delay < peers::RETRY_CAP / 2 {
            info!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    fn conn_event(&mut self, token: usize, event: &Event) {
        let Some(conn) = self.conns.get_mut(token) else {
            // A stale event for a connection closed earlier in this batch.
            return;
        };
        if let Role::PeerOut { n } = conn.s.role
            && matches!(self.core.neighbours[n].link, Link::Connecting { token: t, .. } if t == token)
        {
            self.connect_done(n, token);
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            conn.s.can_read = true;
            conn.s.peer_closed |= event.is_read_closed() || event.is_error();
            self.schedule(token);
        }
        if event.is_writable() || event.is_write_closed() {
            self.mark_dirty(token);
        }
    }

    fn schedule(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token)
            && !conn.s.scheduled
        {
            conn.s.scheduled = true;
            self.ready.push_back(token);
        }
    }

    fn mark_dirty(&mut self, token: usize) {
        if let Some(conn) = self.conns.get_mut(token)
            && !conn.s.dirty
        {
            conn.s.dirty = true;
            self.dirty.push(token);
        }
    }

    /// Gives each connection that was ready at the start of the pass one turn.
    fn serve_ready(&mut self) {
        for _ in 0..self.ready.len() {
            let Some(token) = self.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            conn.s.scheduled = false;
            match serve(&mut self.core, conn, token, &mut self.scratch) {
                Ok(turn) => {
                    if turn.wrote {
                        self.mark_dirty(token);
                    }
                    if turn.more {
                        self.schedule(token);
                    }
                }
                Err(e) => self.close(token, &e.to_string()),
            }
            self.act_on_hellos();
        }
    }

    /// A neighbour said HELLO on `token`: it replaces any older link from it, and if our
    /// link to it is down, it is evidently back: dial it now instead of at the end of a
    /// backoff.
    fn act_on_hellos(&mut self) {
        while let Some((token, n)) = self.core.hellos.pop() {
            if let Some(old) = self.core.neighbours[n].inbound.replace(token)
                && old != token
            {
                self.close(old, "replaced by a newer HELLO from the same neighbour");
            }
            if matches!(self.core.neighbours[n].link, Link::Down { .. }) {
                self.dial(n);
            }
        }
    }

    fn flush_dirty(&mut self) {
        self.post_outboxes();
        let mut dirty = std::mem::take(&mut self.dirty);
        for token in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            conn.s.dirty = false;
            if let Err(e) = flush(conn, token, self.poll.registry()) {
                self.close(token, &e.to_string());
                continue;
            }
            if conn.s.finished() {
                self.close(token, "finished");
            } else if conn.s.stalled && !conn.s.backpressured() {
                conn.s.stalled = false;
                self.schedule(token);
            }
        }
        // Keep the allocation for the next pass.
        self.dirty = dirty;
    }

    /// Moves each neighbour's batched records onto its link. A neighbour that lets too
    /// much pile up is stalled: drop the link; it resyncs from the table when it is back.
    fn post_outboxes(&mut self) {
        for n in 0..self.core.neighbours.len() {
            let nb = &mut self.core.neighbours[n];
            let Some(token) = nb.up_token() else {
                continue;
            };
            if nb.outbox.is_empty() {
                continue;
            }
            let Some(conn) = self.conns.get_mut(token) else {
                continue;
            };
            conn.s.output.push(&nb.outbox);
            nb.outbox.clear();
            let queued = conn.s.output.len();
            if queued > nb.out_limit {
                let why = format!("neighbour is not reading ({queued} bytes queued)");
                self.close(token, &why);
            } else {
                self.mark_dirty(token);
            }
        }
    }

    /// Hands every finished Places answer to the connection that asked, if it is still
    /// the same connection.
    fn places_answers(&mut self) {
        let mut done = Vec::new();
        self.core.pool.drain(|tag, json| done.push((tag, json)));
        for (tag, json) in done {
            let Some(conn) = self.conns.get_live(tag.token, tag.generation) else {
                debug!("Places answer for a closed connection dropped");
                continue;
            };
            let s = &mut conn.s;
            if let Some(at_line) = s.replies.complete(tag.seq, &json, &mut s.output) {
                info!(
                    "{} sent: {} (+{} bytes of JSON)",
                    s.peer,
                    Shown(&at_line),
                    json.len()
                );
            }
            self.mark_dirty(tag.token);
        }
    }

    fn close(&mut self, token: usize, why: &str) {
        let Some(mut conn) = self.conns.remove(token) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let addr = conn.s.addr;
        match conn.s.role {
            Role::Client => {
                self.accept.clients -= 1;
                info!("{addr} closed: {why}")
            }
            Role::PeerIn { from: None } => info!("{addr} (peer port) closed: {why}"),
            Role::PeerIn { from: Some(n) } => {
                let nb = &mut self.core.neighbours[n];
                if nb.inbound == Some(token) {
                    nb.inbound = None;
                }
                info!("link from {} ({addr}): dropped: {why}", nb.name);
            }
            Role::PeerOut { n } => {
                let ours = match self.core.neighbours[n].link {
                    Link::Up { token: t } => t == token,
                    Link::Connecting { token: t, timeout } => {
                        self.timers.cancel(timeout);
                        t == token
                    }
                    Link::Down { .. } => false,
                };
                if ours {
                    self.link_down(n, why);
                }
            }
        }
    }
}

/// Accept errors that concern one connection only, not the listener.
fn is_transient_accept_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::PermissionDenied
    )
}

/// What a turn did.
struct Turn {
    /// Output was queued: flush this pass.
    wrote: bool,
    /// Input is left that this turn did not serve.
    more: bool,
}

/// One turn of a connection: read what is there and handle up to `LINES_PER_TURN`
/// messages.
fn serve(core: &mut Core, conn: &mut Conn, token: usize, scratch: &mut [u8]) -> io::Result<Turn> {
    let mut turn = Turn {
        wrote: false,
        more: false,
    };
    let mut served = 0;
    let s = &mut conn.s;
    while !s.input_done {
        if s.backpressured() {
            s.stalled = true;
            return Ok(turn);
        }
        if served == LINES_PER_TURN {
            turn.more = true;
            return Ok(turn);
        }
        if let Some(line) = conn.input.next_line() {
            on_line(core, token, s, line);
            served += 1;
            turn.wrote = true;
            continue;
        }
        if s.eof {
            if let Some(line) = conn.input.take_last() {
                on_line(core, token, s, line);
            }
            s.input_done = true;
            // The close happens at flush, once the replies are out.
            turn.wrote = true;
            return Ok(turn);
        }
        if !s.can_read {
            return Ok(turn);
        }
        match conn.input.fill(&mut conn.stream, scratch, s.peer_closed)? {
            Fill::WouldBlock => s.can_read = false,
            Fill::Eof => s.eof = true,
            Fill::Full => {}
        }
    }
    Ok(turn)
}

fn on_line(core: &mut Core, token: usize, s: &mut Session, line: Line<'_>) {
    match s.role {
        Role::Client => client_line(core, token, s, line),
        Role::PeerIn { from: None } => hello_line(core, token, s, line),
        Role::PeerIn { from: Some(n) } => record_line(core, n, line),
        Role::PeerOut { n } => {
            // The accepting side says nothing unless it refuses us.
            let (Line::Complete(l) | Line::Overlong(l)) = line;
            warn!(
                "link to {}: neighbour says: {}",
                core.neighbours[n].name,
                Shown(l)
            );
        }
    }
}

/// Answers one client message (SPEC §2). Each message gets one log line naming what was
/// received and what was sent, so a busy server writes one record per request.
fn client_line(core: &mut Core, token: usize, s: &mut Session, line: Line<'_>) {
    let line = match line {
        Line::Complete(line) => line,
        Line::Overlong(head) => {
            info!("{} recv: over-long line | sent: ? {}", s.peer, Shown(head));
            let mut reply = std::mem::take(&mut core.reply);
            reply.clear();
            protocol::write_overlong(head, &mut reply);
            s.replies.push(&mut s.output, &reply);
            core.reply = reply;
            return;
        }
    };
    let request = match protocol::parse_client_line(line) {
        Parsed::Blank => return,
        Parsed::Invalid => return invalid(core, s, line),
        Parsed::Request(r) => r,
    };
    match request {
        Request::Iamat(req) => {
            let now = Timestamp::from_system_time(SystemTime::now());
            let mut reply = std::mem::take(&mut core.reply);
            reply.clear();
            protocol::write_at_line(&core.name, now, &req, &mut reply);
            let forwarded = if core.table.offer(req.client, req.time, &reply) {
                flood(&mut core.neighbours, &reply, None)
            } else {
                0
            };
            let to = Names(&core.neighbours, forwarded);
            info!("{} recv: {} | sent: {}{to}", s.peer, Shown(line), Shown(&reply));
            reply.push(b'\n');
            s.replies.push(&mut s.output, &reply);
            core.reply = reply;
        }
        Request::Whatsat(req) => {
            let Some(record) = core.table.get(req.client) else {
                return invalid(core, s, line);
            };
            // The numbers are read from the stored line only here: IAMATs and records only
            // check the location text. A stored line is a valid AT record (written by
            // write_at_line or accepted by parse_at_record), so this always succeeds.
            let location =
                protocol::parse_at_record(&record.line).and_then(|r| Location::parse(r.raw_location));
            let Some(location) = location else {
                return invalid(core, s, line);
            };
            let query = places::Query {
                lat: location.lat,
                lng: location.lng,
                radius_m: req.radius.metres().to_string(),
                bound: req.bound,
            };
            let at_line = record.line.clone();
            let tag = Tag {
                token,
                generation: s.generation,
                seq: s.replies.next_seq,
            };
            match core.pool.submit(tag, query) {
                Submit::Now(json) => {
                    let mut reply = Vec::with_capacity(at_line.len() + json.len() + 3);
                    write_whatsat_reply(&at_line, &json, &mut reply);
                    info!(
                        "{} recv: {} | sent: {} (+{} bytes of JSON)",
                        s.peer,
                        Shown(line),
                        Shown(&at_line),
                        json.len()
                    );
                    s.replies.push(&mut s.output, &reply);
                }
                Submit::Queued => {
                    info!("{} recv: {} | waiting on Places", s.peer, Shown(line));
                    s.replies.wait(at_line);
                }
            }
        }
    }
}

fn invalid(core: &mut Core, s: &mut Session, line: &[u8]) {
    info!("{} recv: {} | sent: ? {}", s.peer, Shown(line), Shown(line));
    let mut reply = std::mem::take(&mut core.reply);
    reply.clear();
    protocol::write_invalid(line, &mut reply);
    s.replies.push(&mut s.output, &reply);
    core.reply = reply;
}

/// The first line on the peer port must be `HELLO <neighbour>`; anything else is refused
/// with `? <line>` and the connection closes.
fn hello_line(core: &mut Core, token: usize, s: &mut Session, line: Line<'_>) {
    let neighbour = match line {
        Line::Complete(l) => protocol::parse_hello(l).and_then(|name| peers::find(&core.neighbours, name)),
        Line::Overlong(_) => None,
    };
    match neighbour {
        Some(n) => {
            s.role = Role::PeerIn { from: Some(n) };
            info!("link from {} ({}): up (HELLO)", core.neighbours[n].name, s.peer);
            core.hellos.push((token, n));
        }
        None => {
            let (Line::Complete(l) | Line::Overlong(l)) = line;
            info!("{} (peer port) refused: {}", s.peer, Shown(l));
            let mut reply = Vec::with_capacity(l.len() + 3);
            protocol::write_invalid(l, &mut reply);
            s.output.push(&reply);
            s.input_done = true;
        }
    }
}

/// A record from neighbour `n`: store it if it wins and pass it on to everyone else.
fn record_line(core: &mut Core, n: usize, line: Line<'_>) {
    let from = &core.neighbours[n].name;
    let Line::Complete(line) = line else {
        warn!("record from {from} skipped: over-long line");
        return;
    };
    if protocol::fields(line).next().is_none() {
        return;
    }
    let rec =
        protocol::parse_at_record(line).filter(|r| core.servers.iter().any(|s| s.as_bytes() == r.server));
    let Some(rec) = rec else {
        warn!("record from {from} skipped: malformed: {}", Shown(line));
        return;
    };
    let mut canonical = std::mem::take(&mut core.reply);
    canonical.clear();
    rec.write_canonical(&mut canonical);
    if core.table.offer(rec.client, rec.time, &canonical) {
        let forwarded = flood(&mut core.neighbours, &canonical, Some(n));
        let to = Names(&core.neighbours, forwarded);
        info!(
            "record from {} (new): {}{to}",
            core.neighbours[n].name,
            Shown(&canonical)
        );
    } else {
        info!("record from {from} (not newer, dropped): {}", Shown(&canonical));
    }
    core.reply = canonical;
}

/// Queues a winning record for every neighbour except the one it came from; returns the
/// set of neighbours it went to (bit i for neighbour i), for the log.
fn flood(neighbours: &mut [Neighbour], line: &[u8], except: Option<usize>) -> u64 {
    let mut to = 0u64;
    for (i, nb) in neighbours.iter_mut().enumerate() {
        if Some(i) != except && nb.up_token().is_some() {
            nb.queue(line);
            to |= 1u64.checked_shl(i as u32).unwrap_or(0);
        }
    }
    to
}

/// " | forwarded to A, B" for a set of neighbours, or nothing for an empty set.
struct Names<'a>(&'a [Neighbour], u64);

impl std::fmt::Display for Names<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut sep = " | forwarded to ";
        for (i, nb) in self.0.iter().enumerate() {
            if self.1 & 1u64.checked_shl(i as u32).unwrap_or(0) != 0 {
                write!(f, "{sep}{}", nb.name)?;
                sep = ", ";
            }
        }
        Ok(())
    }
}

/// Writes what the socket takes; asks for WRITABLE only while output is left over.
fn flush(conn: &mut Conn, token: usize, registry: &mio::Registry) -> io::Result<()> {
    let drained = conn.s.output.flush(&mut conn.stream)?;
    let want_writable = !drained;
    if want_writable != conn.s.writable_interest {
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut conn.stream, Token(token), interest)?;
        conn.s.writable_interest = want_writable;
    }
    Ok(())
}
