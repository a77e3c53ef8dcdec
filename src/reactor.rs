//! The reactor: the I/O shell. One thread and one `mio::Poll` own every socket of this
//! server; the protocol lives in `session` (client lines) and `links` (neighbour links),
//! which never touch a socket. The reactor carries out what they ask.
//!
//! ```text
//!   client listener ─┐                          ┌─ Places pool threads (blocking ureq)
//!   peer listener ───┤                          │     results: channel + Waker
//!   client sockets ──┼─ Poll ── reactor loop ───┤
//!   neighbour links ─┘     │                    └─ links: state machine + link timers
//!                  slab: ConnId (token + generation) → Conn
//! ```
//!
//! Each loop pass takes one `now` after the poll and uses it throughout: dispatch events,
//! run the link timers, give every connection with input a turn of at most
//! `LINES_PER_TURN` messages (fairness: one pipelining client cannot starve the rest),
//! carry out the links' commands, move each neighbour's batched records to its link, flush
//! every connection that got output, and flush the log. Nothing here blocks: sockets are
//! non-blocking and Places calls run on the pool.

use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use log::{debug, info, warn};
use mio::event::Event;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::lines::{Fill, Line, LineReader, WriteQueue};
use crate::links::{CONNECT_TIMEOUT, Command, Endpoint, Links, NeighbourId};
use crate::logging::Shown;
use crate::places::Pool;
use crate::protocol;
use crate::resolver::Resolver;
use crate::session::{self, OUT_HIGH, Session, Shared};
use crate::slab::{ConnId, Slab};
use crate::table::Table;
use crate::timer::Throttle;
use crate::tls::{TlsSetup, Transport};

// Fixed tokens live at the top of the token space; connection slots use 0.. .
const LISTENER: Token = Token(usize::MAX - 1);
const PEER_LISTENER: Token = Token(usize::MAX - 2);
const WAKER: Token = Token(usize::MAX - 3);
const SIGNALS: Token = Token(usize::MAX - 4);

const EVENTS_CAPACITY: usize = 1024;
/// One read lands here before it is copied to its connection's buffer.
const READ_BUF_SIZE: usize = 64 * 1024;
/// Messages one connection may have served per turn before the others get theirs.
const LINES_PER_TURN: usize = 64;
/// Places jobs that may wait for a worker before WHATSAT is answered "server busy".
const PLACES_QUEUE: usize = 1024;
/// The longest the loop sleeps, so housekeeping never stalls on a quiet server.
const MAX_POLL_WAIT: Duration = Duration::from_secs(1);
/// Log records are handed to the log writer thread at most this long after they are
/// made (and when the 64 KiB buffer fills). Handing off once per loop pass would wake that
/// thread for a dozen requests' worth at pipeline 1.
const LOG_FLUSH_EVERY: Duration = Duration::from_millis(20);
/// Peer-port connections that may wait for their HELLO at once; past it the oldest goes.
/// A neighbour's link says HELLO right after it connects, so this many only come from a
/// flood; each holds a slot, buffers and, under TLS, a handshake's state.
const PEERS_WITHOUT_HELLO: usize = 64;
/// Retry delay after `accept` fails for lack of resources (EMFILE and the like).
const ACCEPT_RETRY: Duration = Duration::from_millis(100);
/// A failure that repeats (out of descriptors, over the connection cap) is logged at most
/// this often (SPEC §7).
const WARN_EVERY: Duration = Duration::from_secs(1);
/// An AT record is an IAMAT plus a server name and a diff; neighbours get room for that.
const PEER_LINE_SLACK: usize = 512;
/// Table-sync chunks one loop pass may write to sockets that take them at once, before the
/// loop goes round (serving clients) again.
const SYNC_CHUNKS_PER_PASS: usize = 8;
/// How often client timeouts are checked, the table-full count reported and freed memory
/// handed back: one pass over the client connections (about 30 µs for 10,000), so a
/// timeout fires at most this late.
const HOUSEKEEPING_EVERY: Duration = Duration::from_millis(250);
/// Closes since the last `malloc_trim` that make it worth another: a burst of closed
/// connections leaves freed buffers that glibc would otherwise keep.
const TRIM_AFTER_CLOSES: usize = 16;
/// At most one `malloc_trim` this often: it walks the heap, a few ms when it is large.
const TRIM_EVERY: Duration = Duration::from_secs(1);

/// What this server is, for the reactor.
pub struct Settings {
    pub name: String,
    pub max_line: usize,
    pub client_addr: SocketAddr,
    pub peer_addr: SocketAddr,
    /// Each neighbour's name and where to dial it (a name is looked up at each dial).
    pub neighbours: Vec<(String, Endpoint)>,
    /// Every server of herd.yml: a record from a neighbour naming another origin is
    /// malformed (SPEC §3).
    pub servers: Vec<String>,
    /// Client connections open at once; past it a new one is accepted and closed at once.
    /// 0 = no cap.
    pub max_connections: usize,
    /// An inbound neighbour link silent this long is closed (`peers.dead_after_ms`).
    pub dead_after: Duration,
    /// `peer_tls`: every peer connection, made or accepted, is mutual TLS (SPEC §6).
    pub tls: Option<TlsSetup>,
    /// A client that sent nothing this long with no reply pending is closed.
    pub idle_timeout: Option<Duration>,
    /// A client whose unsent output stayed over `session::OUT_HIGH` this long is closed.
    pub send_timeout: Option<Duration>,
    /// `max_future`, `max_clients` and `ttl` for the table.
    pub table_rules: crate::table::Rules,
    /// Where `/metrics` and `/healthz` are served (SPEC §8); None: no admin endpoint.
    pub admin_addr: Option<SocketAddr>,
    /// Table snapshots (SPEC §8); None: off.
    pub snapshots: Option<crate::snapshot::Plan>,
}

pub struct Reactor {
    poll: Poll,
    listener: Option<TcpListener>,
    peer_listener: Option<TcpListener>,
    signals: signal_hook_mio::v1_0::Signals,
    conns: Slab<Conn>,
    sh: Shared,
    max_line: usize,
    /// Connections with input left to serve, in turn order.
    ready: VecDeque<ConnId>,
    /// Connections with output to flush this pass.
    dirty: Vec<ConnId>,
    read_buf: Vec<u8>,
    /// The links' commands being carried out (kept for its allocation).
    commands: Vec<Command>,
    log_flushed_at: Instant,
    accept: AcceptState,
    resolver: Resolver,
    /// `peers.dead_after`: the dialler's TCP user timeout.
    dead_after: Duration,
    tls: Option<TlsSetup>,
    /// Accepted peer connections and when each must have said an accepted HELLO, in
    /// accept order (every deadline is the same span after its accept, so the front is
    /// always the earliest).
    handshakes: VecDeque<(Instant, ConnId)>,
    house: Housekeeping,
    /// The admin endpoint's thread, stopped with the listeners.
    admin: Option<crate::admin::AdminHandle>,
    /// The snapshot plan until `run` starts the writer, then the writer's schedule.
    snapshot_plan: Option<crate::snapshot::Plan>,
    snapshots: Option<crate::snapshot::Periodic>,
}

/// SPEC §7's periodic work: client timeouts, the table-full report, memory return.
struct Housekeeping {
    idle_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
    due: Instant,
    /// Clients to close this pass, with why (kept for its allocation).
    expired: Vec<(ConnId, String)>,
    /// `Table::full_refusals` as of the last report.
    full_reported: u64,
    full_reported_at: Option<Instant>,
    closes: usize,
    trimmed_at: Instant,
}

/// Keeps descriptor exhaustion from feeding on itself (SPEC §7): one retry at most,
/// whichever listener failed, and one log line a second.
struct AcceptState {
    max_clients: usize,
    /// Client connections open now.
    clients: usize,
    /// Peer-port connections open now, with a HELLO or still without.
    peers: usize,
    retry_at: Option<Instant>,
    failed: Throttle,
    refused: Throttle,
    peers_refused: Throttle,
}

/// What a connection is for.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Role {
    Client,
    /// Accepted on the peer port; `links` knows once its HELLO names a neighbour.
    PeerIn,
    /// Dialled by us to a neighbour; records go out on it.
    PeerOut,
}

/// How far a connection's input has got.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Input {
    /// Serving input. `unread`: the socket may hold more (no `WouldBlock` since the last
    /// readable event).
    Open { unread: bool },
    /// The peer closed its sending side; whatever is buffered is the last input.
    Eof,
    /// No more input will be served: once the replies are flushed the connection closes.
    Done,
}

struct Conn {
    stream: TcpStream,
    addr: SocketAddr,
    role: Role,
    input: LineReader,
    state: Input,
    /// Not served while the client is backpressured; resumed when its output drains.
    paused: bool,
    /// The event said the peer closed or failed: read on until EOF or the error.
    hup: bool,
    /// When input last arrived (for `idle_timeout`).
    last_input: Instant,
    /// Since when unsent output has been over `session::OUT_HIGH` (for `send_timeout`).
    over_since: Option<Instant>,
    output: WriteQueue,
    session: Session,
    /// Plain TCP, or TLS between the socket and the line framing. A dial gets its TLS once
    /// the TCP connect is done, so a `Plain` dial under `peer_tls` is still connecting.
    transport: Transport,
    /// When the TLS handshake started, for the log.
    tls_since: Option<Instant>,
    // The reactor's bookkeeping: each queue holds a connection at most once.
    in_ready: bool,
    in_dirty: bool,
    writable_interest: bool,
}

impl Conn {
    fn finished(&self) -> bool {
        self.state == Input::Done
            && self.session.is_idle()
            && self.output.is_empty()
            && !self.transport.wants_write()
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
        // SIGHUP reopens the log; the others an operator may send by mistake are only
        // logged (SPEC §7). SIGPIPE is ignored by the Rust runtime already.
        use signal_hook::consts::{SIGALRM, SIGHUP, SIGINT, SIGTERM, SIGUSR1, SIGUSR2};
        let mut signals =
            signal_hook_mio::v1_0::Signals::new([SIGTERM, SIGINT, SIGHUP, SIGUSR1, SIGUSR2, SIGALRM])
                .map_err(|e| StartError::Io("cannot watch signals", e))?;
        poll.registry()
            .register(&mut signals, SIGNALS, Interest::READABLE)
            .map_err(|e| StartError::Io("cannot register signals", e))?;
        let peer_listener = listen(&poll, settings.peer_addr, PEER_LISTENER)?;
        // mio allows one waker per poll: the Places pool and the resolver share it.
        let waker = Arc::new(
            Waker::new(poll.registry(), WAKER).map_err(|e| StartError::Io("cannot create waker", e))?,
        );
        let resolver = Resolver::new(Arc::clone(&waker));
        let pool = Pool::start(places_cfg, places_key, waker, PLACES_QUEUE)
            .map_err(|e| StartError::Io("cannot start Places workers", e))?;
        let seed = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ u64::from(std::process::id()) << 32;
        let now = Instant::now();
        let links = Links::new(
            settings.name.clone(),
            settings.neighbours,
            settings.dead_after,
            now,
            seed,
        );
        let metrics = Arc::clone(links.metrics());
        let admin = match settings.admin_addr {
            Some(addr) => Some(start_admin(addr, &metrics, &pool)?),
            None => None,
        };
        // The client port last: once it accepts (what run.sh and the tests wait for),
        // every other port is up too.
        let listener = listen(&poll, settings.client_addr, LISTENER)?;
        Ok(Reactor {
            poll,
            listener: Some(listener),
            peer_listener: Some(peer_listener),
            signals,
            conns: Slab::default(),
            sh: Shared {
                name: settings.name,
                servers: settings.servers,
                table: Table::with_rules(settings.table_rules),
                links,
                pool,
                scratch: Vec::new(),
                now,
                metrics,
            },
            max_line: settings.max_line,
            ready: VecDeque::new(),
            dirty: Vec::new(),
            read_buf: vec![0; READ_BUF_SIZE],
            commands: Vec::new(),
            log_flushed_at: now,
            accept: AcceptState {
                max_clients: settings.max_connections,
                clients: 0,
                peers: 0,
                retry_at: None,
                failed: Throttle::new(WARN_EVERY),
                refused: Throttle::new(WARN_EVERY),
                peers_refused: Throttle::new(WARN_EVERY),
            },
            resolver,
            dead_after: settings.dead_after,
            tls: settings.tls,
            handshakes: VecDeque::new(),
            house: Housekeeping {
                idle_timeout: settings.idle_timeout,
                send_timeout: settings.send_timeout,
                due: now,
                expired: Vec::new(),
                full_reported: 0,
                full_reported_at: None,
                closes: 0,
                trimmed_at: now,
            },
            admin,
            snapshot_plan: settings.snapshots,
            snapshots: None,
        })
    }

    /// Where the admin endpoint listens, if it does.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(|a| a.local_addr())
    }

    /// Runs until SIGTERM or SIGINT.
    pub fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS_CAPACITY);
        let mut now = Instant::now();
        self.restore(now);
        loop {
            let timeout = self.poll_timeout(now);
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            now = Instant::now();
            self.sh.now = now;
            // One wall-clock reading per pass for the table's rules (a vDSO call, no
            // syscall); an IAMAT still reads its own for its diff.
            self.sh
                .table
                .tick(protocol::Timestamp::from_system_time(SystemTime::now()));
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(LISTENER, now),
                    PEER_LISTENER => self.accept(PEER_LISTENER, now),
                    WAKER => {
                        self.places_answers();
                        self.resolver_answers(now);
                    }
                    SIGNALS => {
                        if self.signalled() {
                            self.shutdown();
                            // No Places call starts after the signal.
                            self.sh.pool.shutdown();
                            return Ok(());
                        }
                    }
                    Token(i) => self.conn_event(i, event, now),
                }
            }
            if self.accept.retry_at.is_some_and(|at| now >= at) {
                self.accept.retry_at = None;
                self.accept(LISTENER, now);
                self.accept(PEER_LISTENER, now);
            }
            self.expire_handshakes(now);
            self.sh.links.expire(now);
            self.run_commands(now);
            self.serve_ready(now);
            self.flush_dirty(now);
            self.publish_metrics();
            if let Some(s) = &mut self.snapshots {
                s.tick(now, &self.sh.table);
            }
            if now >= self.house.due {
                self.housekeeping(now);
            }
            if now >= self.log_flushed_at + LOG_FLUSH_EVERY {
                crate::logging::flush();
                self.log_flushed_at = now;
            }
        }
    }

    fn poll_timeout(&self, now: Instant) -> Duration {
        let conns = &self.conns;
        if !self.ready.is_empty()
            || self
                .sh
                .links
                .sync_wants_room(|id| conns.get(id).map_or(usize::MAX, |c| c.output.len()))
        {
            return Duration::ZERO;
        }
        let mut timeout = MAX_POLL_WAIT;
        let handshake = self.handshakes.front().map(|(at, _)| *at);
        let house = (self.house.idle_timeout.is_some() || self.house.send_timeout.is_some())
            .then_some(self.house.due);
        for at in [
            self.sh.links.next_deadline(),
            self.accept.retry_at,
            handshake,
            house,
            self.snapshots.as_ref().and_then(|s| s.due()),
        ]
        .into_iter()
        .flatten()
        {
            timeout = timeout.min(at.saturating_duration_since(now));
        }
        if crate::logging::unflushed() {
            // Buffered log records reach the file within LOG_FLUSH_EVERY, busy or idle.
            timeout = timeout.min((self.log_flushed_at + LOG_FLUSH_EVERY).saturating_duration_since(now));
        }
        timeout
    }

    /// Handles the signals that arrived; true if one of them asks to shut down.
    fn signalled(&mut self) -> bool {
        use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
        let mut stop = false;
        for sig in self.signals.pending() {
            match sig {
                SIGTERM | SIGINT => {
                    info!("signal {sig} received, shutting down");
                    stop = true;
                }
                SIGHUP => {
                    info!("signal {sig} (SIGHUP) received: reopening the log");
                    crate::logging::reopen();
                    info!("log reopened after SIGHUP");
                }
                _ => info!("signal {sig} received and ignored (SIGHUP reopens the log, SIGTERM stops)"),
            }
        }
        stop
    }

    /// SPEC §7's periodic work; runs every `HOUSEKEEPING_EVERY`.
    fn housekeeping(&mut self, now: Instant) {
        self.house.due = now + HOUSEKEEPING_EVERY;
        self.expire_clients(now);
        let refused = self.sh.table.full_refusals();
        let quiet = self
            .house
            .full_reported_at
            .is_none_or(|at| now.saturating_duration_since(at) >= WARN_EVERY);
        if refused > self.house.full_reported && quiet {
            warn!(
                "table full ({} clients, limits.max_clients): {} new clients refused since the last report",
                self.sh.table.max_clients(),
                refused - self.house.full_reported
            );
            self.house.full_reported = refused;
            self.house.full_reported_at = Some(now);
        }
        if self.house.closes >= TRIM_AFTER_CLOSES && now >= self.house.trimmed_at + TRIM_EVERY {
            self.house.closes = 0;
            self.house.trimmed_at = now;
            release_memory();
        }
    }

    /// Closes the clients that were idle for `idle_timeout` or had output over the
    /// backpressure bound for `send_timeout` (SPEC §7).
    fn expire_clients(&mut self, now: Instant) {
        let (idle, send) = (self.house.idle_timeout, self.house.send_timeout);
        if idle.is_none() && send.is_none() {
            return;
        }
        let mut expired = std::mem::take(&mut self.house.expired);
        for id in self.conns.ids() {
            let Some(c) = self.conns.get(id) else {
                continue;
            };
            if c.role != Role::Client {
                continue;
            }
            if let Some(idle) = idle
                && now.saturating_duration_since(c.last_input) >= idle
                && !c.in_ready
                && c.session.is_idle()
                && c.output.is_empty()
            {
                expired.push((
                    id,
                    format!("idle for {} s (limits.idle_timeout_s)", idle.as_secs()),
                ));
            } else if let Some(send) = send
                && c.over_since
                    .is_some_and(|t| now.saturating_duration_since(t) >= send)
            {
                expired.push((
                    id,
                    format!(
                        "not reading: {} bytes unsent for {} s (limits.send_timeout_s)",
                        c.output.len(),
                        send.as_secs()
                    ),
                ));
            }
        }
        for (id, why) in expired.drain(..) {
            self.close(id, &why, now);
        }
        self.house.expired = expired;
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
        if let Some(admin) = self.admin.take() {
            admin.shutdown();
        }
        let open = self.conns.len();
        let ids: Vec<ConnId> = self.conns.ids().collect();
        for id in ids {
            if let Some(mut conn) = self.conns.remove(id) {
                let _ = self.poll.registry().deregister(&mut conn.stream);
            }
        }
        // No record arrives after the links are gone: this is the table to keep.
        if let Some(s) = self.snapshots.take() {
            s.finish(&self.sh.table);
        }
        // The process is about to exit: freeing a million records one by one took half a
        // second of the shutdown, and the kernel takes the memory back at once anyway.
        std::mem::forget(std::mem::take(&mut self.sh.table));
        info!("{} shut down ({open} connections closed)", self.sh.name);
        crate::logging::flush();
    }

    /// SPEC §8: loads the snapshot before the first poll, so before any link is up (the
    /// first dials go out in the first pass), then starts taking them.
    fn restore(&mut self, now: Instant) {
        if let Some(plan) = self.snapshot_plan.take() {
            let periodic = crate::snapshot::Periodic::start(plan, now);
            periodic.restore(&mut self.sh.table, &self.sh.servers);
            self.snapshots = Some(periodic);
            crate::logging::flush();
        }
    }

    /// The gauges the admin thread shows, as of this pass (the counters move as events
    /// happen; these are states, cheaper to copy once a pass than to track per change).
    fn publish_metrics(&self) {
        let m = &self.sh.metrics;
        m.set_table_clients(self.sh.table.len());
        m.set_log_bytes(crate::log_file::WRITTEN.load(std::sync::atomic::Ordering::Relaxed));
        let conns = &self.conns;
        self.sh
            .links
            .publish_queued(|id| conns.get(id).map_or(0, |c| c.output.len()));
    }

    /// Carries out what the links asked for, until they ask nothing more (closing a
    /// connection can make a link ask for a redial, say).
    fn run_commands(&mut self, now: Instant) {
        loop {
            let mut commands = std::mem::take(&mut self.commands);
            self.sh.links.take_commands(&mut commands);
            if commands.is_empty() {
                self.commands = commands;
                return;
            }
            for command in commands.drain(..) {
                match command {
                    Command::Dial { n, addr } => self.dial(n, addr, now),
                    Command::Resolve { n, seq, host, port } => {
                        if let Err(e) = self.resolver.submit(n, seq, host, port) {
                            self.sh.links.resolved(n, seq, Err(e), now);
                        }
                    }
                    Command::Send { conn, bytes } => {
                        if let Some(c) = self.conns.get_mut(conn) {
                            c.output.append(bytes);
                            self.mark_dirty(conn);
                        }
                    }
                    Command::Close { conn, why } => self.close(conn, &why, now),
                }
            }
            // Hand the allocation back; the links' own vector came out empty.
            self.commands = commands;
        }
    }

    fn accept(&mut self, which: Token, now: Instant) {
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
                    if which == LISTENER && self.over_cap(addr, now) {
                        self.sh.metrics.refused();
                        // Dropping the stream closes it: the client learns at once
                        // instead of waiting in the backlog.
                        drop(stream);
                        continue;
                    }
                    if which == PEER_LISTENER {
                        self.make_room_for_peer(addr, now);
                    }
                    let (role, max_line) = match which {
                        LISTENER => (Role::Client, self.max_line),
                        _ => (Role::PeerIn, self.max_line + PEER_LINE_SLACK),
                    };
                    if let Some(id) = self.add_conn(stream, addr, role, max_line, Interest::READABLE) {
                        if role == Role::PeerIn {
                            self.accept.peers += 1;
                            self.accept_peer(id, now);
                        }
                        // Data may have come with the connection; readiness already fired.
                        self.schedule(id);
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
                    if let Some(held) = self.accept.failed.allow(now) {
                        warn!(
                            "accept failed: {e}; retrying in {} ms ({held} more failures since the last report)",
                            ACCEPT_RETRY.as_millis()
                        );
                    }
                    self.accept.retry_at.get_or_insert(now + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// With `PEERS_WITHOUT_HELLO` peer connections already waiting for their HELLO, closes
    /// the oldest of them (logged, throttled) to make room for the one just accepted.
    /// Each has a deadline (see `accept_peer`), so this bounds what anyone who reaches the
    /// port can hold; and since a neighbour says HELLO within a round trip of connecting,
    /// a flood of silent connections displaces only its own, never a neighbour's new link.
    fn make_room_for_peer(&mut self, addr: SocketAddr, now: Instant) {
        let linked = self.sh.links.inbound_count();
        let waiting = self.accept.peers.saturating_sub(linked);
        if waiting < PEERS_WITHOUT_HELLO {
            return;
        }
        // The queue is in accept order; entries for connections linked or closed since
        // are dropped on the way.
        while let Some((_, id)) = self.handshakes.pop_front() {
            if !self.waits_for_hello(id) {
                continue;
            }
            if let Some(held) = self.accept.peers_refused.allow(now) {
                warn!(
                    "{addr} (peer port): {waiting} peer connections are waiting for their HELLO; \
                     closing the oldest ({held} more since the last report)"
                );
            }
            let why = format!("displaced: {PEERS_WITHOUT_HELLO} peer connections waiting for their HELLO");
            self.close(id, &why, now);
            return;
        }
    }

    /// True when a new client would exceed `max_connections`; logs that (throttled).
    fn over_cap(&mut self, addr: SocketAddr, now: Instant) -> bool {
        let a = &mut self.accept;
        if a.max_clients == 0 || a.clients < a.max_clients {
            return false;
        }
        if let Some(held) = a.refused.allow(now) {
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
    ) -> Option<ConnId> {
        if let Err(e) = stream.set_nodelay(true) {
            debug!("{addr}: set_nodelay: {e}");
        }
        let entry = self.conns.vacant_entry();
        let id = entry.id();
        if let Err(e) = self
            .poll
            .registry()
            .register(&mut stream, Token(id.index), interest)
        {
            warn!("{addr}: cannot register connection: {e}");
            return None;
        }
        entry.insert(Conn {
            stream,
            addr,
            role,
            input: LineReader::new(max_line),
            state: Input::Open { unread: true },
            paused: false,
            hup: false,
            last_input: self.sh.now,
            over_since: None,
            output: WriteQueue::default(),
            session: Session::new(addr.to_string().into()),
            transport: Transport::Plain,
            tls_since: None,
            in_ready: false,
            in_dirty: false,
            writable_interest: interest.is_writable(),
        });
        match role {
            Role::Client => {
                self.accept.clients += 1;
                self.sh.metrics.accepted();
                info!("{addr} connected")
            }
            Role::PeerIn => info!("{addr} connected to the peer port"),
            Role::PeerOut => {}
        }
        Some(id)
    }

    /// Starts a non-blocking connect to neighbour `n`; completion shows as writability.
    fn dial(&mut self, n: NeighbourId, addr: SocketAddr, now: Instant) {
        let interest = Interest::READABLE | Interest::WRITABLE;
        let max_line = self.max_line + PEER_LINE_SLACK;
        let dead_after = self.dead_after;
        let conn = TcpStream::connect(addr)
            .ok()
            .inspect(|stream| {
                if let Err(e) = set_dead_path_options(stream, dead_after) {
                    warn!("{addr}: cannot set keep-alive and TCP_USER_TIMEOUT: {e}");
                }
            })
            .and_then(|stream| self.add_conn(stream, addr, Role::PeerOut, max_line, interest));
        match conn {
            Some(id) => self.sh.links.dial_started(n, id, now),
            None => self.sh.links.dial_failed(n, "cannot start a connection", now),
        }
    }

    /// The dial on `id` finished: check how.
    fn connect_done(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
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
        match failed {
            Some(e) => self.close_failed(id, &e, now),
            None if self.tls.is_some() => self.dial_tls(id, now),
            None => self.sh.links.connected(id, &self.sh.table, now),
        }
    }

    /// An accepted peer connection must say an accepted HELLO within `hello_deadline`.
    /// Under `peer_tls` it is TLS from its first byte, and the handshake comes first.
    fn accept_peer(&mut self, id: ConnId, now: Instant) {
        let Some(tls) = &self.tls else {
            self.handshakes.push_back((now + self.hello_deadline(), id));
            return;
        };
        match tls.accept() {
            Ok(t) => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.transport = Transport::Tls(Box::new(t));
                    conn.tls_since = Some(now);
                }
                self.handshakes.push_back((now + CONNECT_TIMEOUT, id));
            }
            Err(e) => self.close(id, &e.to_string(), now),
        }
    }

    /// The TCP connect of a dial is done: the TLS handshake starts, and the link stays
    /// connecting (under the links' connect timeout) until it is done and the neighbour's
    /// certificate named it. Nothing, not even our HELLO, goes out before.
    fn dial_tls(&mut self, id: ConnId, now: Instant) {
        let (Some(tls), Some(n)) = (&self.tls, self.sh.links.dialling(id)) else {
            return;
        };
        match tls.dial(self.sh.links.name(n)) {
            Ok(t) => {
                if let Some(conn) = self.conns.get_mut(id) {
                    conn.transport = Transport::Tls(Box::new(t));
                    conn.tls_since = Some(now);
                    debug!(
                        "link to {} ({}): connected, TLS handshake",
                        self.sh.links.name(n),
                        conn.addr
                    );
                }
                // The ClientHello.
                self.mark_dirty(id);
            }
            Err(e) => self.close(id, &e.to_string(), now),
        }
    }

    /// After a turn: a dial whose TLS handshake just finished is a link that is up, and
    /// its HELLO and table go out now.
    fn tls_established(&mut self, id: ConnId, now: Instant) {
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        if conn.transport.is_handshaking() {
            return;
        }
        let Some(since) = conn.tls_since.take() else {
            return;
        };
        let took = now.saturating_duration_since(since);
        match conn.role {
            Role::PeerOut => {
                if let Some(n) = self.sh.links.dialling(id) {
                    debug!(
                        "link to {} ({}): TLS handshake done in {} us",
                        self.sh.links.name(n),
                        conn.addr,
                        took.as_micros()
                    );
                    self.sh.links.connected(id, &self.sh.table, now);
                }
            }
            _ => debug!(
                "{} (peer port): TLS handshake done in {} us",
                conn.addr,
                took.as_micros()
            ),
        }
    }

    /// An accepted peer connection still open that has neither had its HELLO accepted nor
    /// been refused (a refused one is closing after its `? ...` reply).
    fn waits_for_hello(&self, id: ConnId) -> bool {
        self.conns.get(id).is_some_and(|c| c.state != Input::Done) && self.sh.links.inbound_from(id).is_none()
    }

    /// How long an accepted peer connection has to say its HELLO: the connect timeout
    /// under TLS (SPEC §6); otherwise twice `dead_after` (SPEC §5 closes an inbound link
    /// silent that long) or of the connect timeout, whichever is longer, so that a HELLO
    /// delayed by a lossy path's retransmissions still makes it. A neighbour says HELLO
    /// as soon as it has connected.
    fn hello_deadline(&self) -> Duration {
        if self.tls.is_some() {
            CONNECT_TIMEOUT
        } else {
            2 * self.dead_after.max(CONNECT_TIMEOUT)
        }
    }

    /// Closes every accepted peer connection that has not had a HELLO accepted by its
    /// deadline (`hello_deadline`): a stalled handshake or a silent peer holds nothing
    /// for long.
    fn expire_handshakes(&mut self, now: Instant) {
        while let Some(&(at, id)) = self.handshakes.front() {
            if at > now {
                return;
            }
            self.handshakes.pop_front();
            if !self.waits_for_hello(id) {
                continue;
            }
            let handshaking = self.conns.get(id).is_some_and(|c| c.transport.is_handshaking());
            let why = if handshaking {
                "TLS handshake not done"
            } else {
                "no HELLO"
            };
            let why = format!("{why} within {} ms", self.hello_deadline().as_millis());
            self.close(id, &why, now);
        }
    }

    fn conn_event(&mut self, i: usize, event: &Event, now: Instant) {
        let Some(id) = self.conns.id_at(i) else {
            // A stale event for a connection closed earlier in this batch.
            return;
        };
        let Some(conn) = self.conns.get_mut(id) else {
            return;
        };
        let tcp_connecting = matches!(conn.transport, Transport::Plain);
        if conn.role == Role::PeerOut && tcp_connecting && self.sh.links.dialling(id).is_some() {
            self.connect_done(id, now);
            return;
        }
        if conn.role == Role::Client && (event.is_error() || event.is_write_closed()) {
            // Reset, or gone both ways: no reply can reach it. Close now: a client paused
            // behind a slow Places answer would otherwise keep its buffers until then.
            let why = match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => e.to_string(),
                Ok(None) => "hung up".to_string(),
            };
            self.close(id, &why, now);
            return;
        }
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            if let Input::Open { unread } = &mut conn.state {
                *unread = true;
            }
            conn.hup |= event.is_read_closed() || event.is_error();
            self.schedule(id);
        }
        if event.is_writable() || event.is_write_closed() {
            self.mark_dirty(id);
        }
    }

    fn schedule(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.in_ready
        {
            conn.in_ready = true;
            self.ready.push_back(id);
        }
    }

    fn mark_dirty(&mut self, id: ConnId) {
        if let Some(conn) = self.conns.get_mut(id)
            && !conn.in_dirty
        {
            conn.in_dirty = true;
            self.dirty.push(id);
        }
    }

    /// Gives each connection that was ready at the start of the pass one turn.
    fn serve_ready(&mut self, now: Instant) {
        for _ in 0..self.ready.len() {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            conn.in_ready = false;
            match serve(&mut self.sh, conn, id, &mut self.read_buf) {
                Ok(turn) => {
                    // TLS may owe the socket a handshake flight the read called for.
                    if turn.wrote || conn.transport.wants_write() {
                        self.mark_dirty(id);
                    }
                    if turn.more {
                        self.schedule(id);
                    }
                    self.tls_established(id, now);
                }
                Err(e) if conn.transport.is_handshaking() => {
                    // The alert tells the other side why; one try, then close.
                    let _ = conn.transport.write_to(&mut conn.stream);
                    self.close(id, &format!("TLS handshake failed: {e}"), now);
                }
                Err(e) => self.close_failed(id, &e, now),
            }
            // A HELLO may have asked to close an older link or to dial back.
            self.run_commands(now);
        }
    }

    fn flush_dirty(&mut self, now: Instant) {
        // A table sync whose chunk the socket took at once gets the next at once, a few
        // times per pass; the poll does not wait while one has room (`poll_timeout`).
        for _ in 0..SYNC_CHUNKS_PER_PASS {
            self.flush_pass(now);
            let conns = &self.conns;
            if !self
                .sh
                .links
                .sync_wants_room(|id| conns.get(id).map_or(usize::MAX, |c| c.output.len()))
            {
                break;
            }
        }
    }

    fn flush_pass(&mut self, now: Instant) {
        let conns = &self.conns;
        self.sh.links.flush(now, &self.sh.table, |id| {
            conns.get(id).map_or(0, |c| c.output.len())
        });
        self.run_commands(now);
        let mut dirty = std::mem::take(&mut self.dirty);
        for id in dirty.drain(..) {
            let Some(conn) = self.conns.get_mut(id) else {
                continue;
            };
            conn.in_dirty = false;
            if let Err(e) = flush(conn, id, self.poll.registry()) {
                self.close_failed(id, &e, now);
                continue;
            }
            // Output only shrinks here, so this sees every time it drops under the bound.
            if conn.output.len() < OUT_HIGH {
                conn.over_since = None;
            } else if conn.role == Role::Client {
                conn.over_since.get_or_insert(now);
            }
            if conn.finished() {
                self.close(id, "finished", now);
            } else if conn.paused && !conn.session.backpressured(&conn.output) {
                conn.paused = false;
                self.schedule(id);
            }
        }
        // Keep the allocation for the next pass.
        self.dirty = dirty;
    }

    /// Hands every finished Places answer to the connection that asked, if it is still
    /// the same connection.
    fn places_answers(&mut self) {
        let mut done = Vec::new();
        self.sh.pool.drain(|tag, json| done.push((tag, json)));
        for (tag, json) in done {
            let Some(conn) = self.conns.get_mut(tag.conn) else {
                debug!("Places answer for a closed connection dropped");
                continue;
            };
            conn.session.places_answer(&tag, &json, &mut conn.output);
            self.mark_dirty(tag.conn);
        }
    }

    /// The neighbours' lookups that answered.
    fn resolver_answers(&mut self, now: Instant) {
        let links = &mut self.sh.links;
        self.resolver.drain(|a| links.resolved(a.n, a.seq, a.addr, now));
        self.run_commands(now);
    }

    /// Closes a connection whose socket failed with `e`. On a link we dialled, a TCP user
    /// timeout with output still waiting is a neighbour that does not read (links.rs).
    fn close_failed(&mut self, id: ConnId, e: &io::Error, now: Instant) {
        if let Some(conn) = self.conns.get(id)
            && conn.role == Role::PeerOut
            && e.raw_os_error() == Some(libc::ETIMEDOUT)
        {
            let backlog = !conn.output.is_empty();
            self.sh.links.timed_out(id, backlog);
        }
        self.close(id, &e.to_string(), now);
    }

    fn close(&mut self, id: ConnId, why: &str, now: Instant) {
        let Some(mut conn) = self.conns.remove(id) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        let addr = conn.addr;
        // Its buffers are freed as `conn` drops here; housekeeping hands them back.
        self.house.closes += 1;
        match conn.role {
            Role::Client => {
                self.accept.clients -= 1;
                self.sh.metrics.closed();
                info!("{addr} closed: {why}");
                if conn.session.awaits_places() {
                    let dropped = self.sh.pool.forget(session::lane(id));
                    if dropped > 0 {
                        info!("{addr}: {dropped} queued Places lookups dropped with the connection");
                    }
                }
            }
            Role::PeerIn => {
                self.accept.peers -= 1;
                if self.sh.links.closed(id, why, now).is_none() {
                    info!("{addr} (peer port) closed: {why}");
                }
            }
            Role::PeerOut => {
                self.sh.links.closed(id, why, now);
            }
        }
    }
}

/// SPEC §5: a dialled link fails once data sat unacknowledged for `dead_after`
/// (`TCP_USER_TIMEOUT`), and keep-alive probes an idle path well within it (the heartbeat
/// keeps a dialled link from being idle long anyway, so the probes are a second line).
fn set_dead_path_options(stream: &TcpStream, dead_after: Duration) -> io::Result<()> {
    let fd = stream.as_raw_fd();
    let ms = libc::c_int::try_from(dead_after.as_millis()).unwrap_or(libc::c_int::MAX);
    // Keep-alive counts in whole seconds: probe after a third of dead_after, each second.
    let idle = (ms / 3000).max(1);
    let count = (ms / 1000 - idle).max(1);
    for (level, name, value) in [
        (libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, idle),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, 1),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT, count),
        (libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, ms),
    ] {
        setsockopt(fd, level, name, value)?;
    }
    Ok(())
}

fn setsockopt(fd: libc::c_int, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` is an open socket owned by the caller's stream, and `value` outlives
    // the call; setsockopt only reads `len` bytes from it.
    let rc = unsafe { libc::setsockopt(fd, level, name, (&raw const value).cast(), len) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Tunes glibc's allocator at start-up so memory freed after a burst can go back to the
/// OS: a fixed mmap threshold keeps big per-connection buffers (a backpressured client's
/// 256 KiB of replies) in their own mappings, returned when freed, instead of letting
/// glibc's adaptive threshold move them onto the heap after the first free.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; it is called before other threads
    // allocate much, and any value is valid for M_MMAP_THRESHOLD up to 32 MiB.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

/// Returns freed heap pages to the OS (SPEC §7: RSS back near its baseline after a
/// burst). glibc keeps freed memory in the middle of its heaps otherwise.
fn release_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes the allocator's own locks; it only releases free memory.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Binds the admin endpoint (a port in use is a start-up error, like the others) and
/// serves it from its own thread off the shared counters and the Places pool's.
fn start_admin(
    addr: SocketAddr,
    metrics: &Arc<crate::metrics::Metrics>,
    pool: &Pool<crate::session::Tag>,
) -> Result<crate::admin::AdminHandle, StartError> {
    let counters = pool.counters();
    let health = Arc::clone(metrics);
    crate::admin::Admin::start(
        addr,
        Arc::clone(metrics),
        Box::new(move || crate::metrics::PlacesView::from_stats(&counters.snapshot())),
        Box::new(move || crate::metrics::health_lines(&health)),
    )
    .map_err(|err| StartError::Bind { addr, err })
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
fn serve(sh: &mut Shared, conn: &mut Conn, id: ConnId, read_buf: &mut [u8]) -> io::Result<Turn> {
    let mut turn = Turn {
        wrote: false,
        more: false,
    };
    let mut served = 0;
    loop {
        let unread = match conn.state {
            Input::Done => return Ok(turn),
            Input::Eof => false,
            Input::Open { unread } => unread,
        };
        if conn.session.backpressured(&conn.output) {
            conn.paused = true;
            return Ok(turn);
        }
        if served == LINES_PER_TURN {
            turn.more = true;
            return Ok(turn);
        }
        if let Some(line) = conn.input.next_line() {
            on_line(
                sh,
                id,
                conn.role,
                &conn.transport,
                &mut conn.session,
                &mut conn.output,
                &mut conn.state,
                line,
            );
            served += 1;
            turn.wrote = true;
            log_overlong_end(conn);
            continue;
        }
        if conn.state == Input::Eof {
            if let Some(line) = conn.input.take_last() {
                on_line(
                    sh,
                    id,
                    conn.role,
                    &conn.transport,
                    &mut conn.session,
                    &mut conn.output,
                    &mut conn.state,
                    line,
                );
            }
            log_overlong_end(conn);
            conn.state = Input::Done;
            // The close happens at flush, once the replies are out.
            turn.wrote = true;
            return Ok(turn);
        }
        if !unread {
            return Ok(turn);
        }
        let before = conn.input.buffered();
        let mut src = conn.transport.io(&mut conn.stream);
        let filled = conn.input.fill(&mut src, read_buf, conn.hup)?;
        if conn.input.buffered() > before {
            conn.last_input = sh.now;
        }
        match filled {
            Fill::WouldBlock => conn.state = Input::Open { unread: false },
            Fill::Eof => conn.state = Input::Eof,
            Fill::Full => {}
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn on_line(
    sh: &mut Shared,
    id: ConnId,
    role: Role,
    transport: &Transport,
    session: &mut Session,
    output: &mut WriteQueue,
    state: &mut Input,
    line: Line<'_>,
) {
    match role {
        Role::Client => session.on_line(sh, id, output, line),
        Role::PeerIn => match sh.links.inbound_from(id) {
            Some(n) => {
                sh.links.heard(n, sh.now);
                sh.links
                    .record(n, line, &mut sh.table, &sh.servers, &mut sh.scratch)
            }
            None => hello_line(sh, id, transport, session, output, state, line),
        },
        Role::PeerOut => sh.links.heard_on_outbound(id, line),
    }
}

/// An over-long line's head was logged (and answered) before the rest arrived; its full
/// length, once known, goes in a line of its own (SPEC §7).
fn log_overlong_end(conn: &mut Conn) {
    if let Some(len) = conn.input.overlong_ended() {
        info!(
            "{} over-long line was {len} bytes; all but its head discarded",
            conn.session.peer
        );
    }
}

/// The first line on the peer port must be `HELLO <neighbour>`; anything else is refused
/// with `? <line>` and the connection closes.
fn hello_line(
    sh: &mut Shared,
    id: ConnId,
    transport: &Transport,
    session: &Session,
    output: &mut WriteQueue,
    state: &mut Input,
    line: Line<'_>,
) {
    let name = match line {
        // SPEC §5: blank lines on a peer connection are ignored, before the HELLO too.
        Line::Complete(l) if protocol::fields(l).next().is_none() => return,
        Line::Complete(l) => protocol::parse_hello(l),
        Line::Overlong(_) => None,
    };
    // SPEC §6: under TLS the HELLO must name the server of the client certificate; a
    // valid certificate of one server must not speak for another. Checked before the
    // links hear of it, so a refused HELLO displaces no link.
    let cert_ok = name.is_none_or(|n| std::str::from_utf8(n).is_ok_and(|n| transport.peer_name_ok(n)));
    let neighbour = name
        .filter(|_| cert_ok)
        .and_then(|name| sh.links.hello(id, name, sh.now));
    match neighbour {
        Some(n) => info!("link from {} ({}): up (HELLO)", sh.links.name(n), session.peer),
        None => {
            let (Line::Complete(l) | Line::Overlong(l)) = line;
            if cert_ok {
                info!("{} (peer port) refused: {}", session.peer, Shown(l));
            } else {
                warn!(
                    "{} (peer port) refused: its TLS certificate does not name the server of {}",
                    session.peer,
                    Shown(l)
                );
            }
            let mut reply = Vec::with_capacity(l.len() + 3);
            protocol::write_invalid(l, &mut reply);
            output.append(reply);
            *state = Input::Done;
        }
    }
}

/// Writes what the socket takes; asks for WRITABLE only while output is left over.
fn flush(conn: &mut Conn, id: ConnId, registry: &mio::Registry) -> io::Result<()> {
    let drained = conn.output.flush(&mut conn.transport.io(&mut conn.stream))?;
    // Encrypted records (or a handshake flight) rustls still holds for the socket.
    let tls_drained = conn.transport.write_to(&mut conn.stream)?;
    let want_writable = !drained || !tls_drained;
    if want_writable != conn.writable_interest {
        let interest = if want_writable {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        registry.reregister(&mut conn.stream, Token(id.index), interest)?;
        conn.writable_interest = want_writable;
    }
    Ok(())
}
