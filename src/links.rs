//! Neighbour links (SPEC §3) as a state machine with no sockets, no mio and no clock of its
//! own: the reactor reports what happened (a dial started or failed, a connect finished, a
//! connection closed, a HELLO or a record arrived, time passed) and carries out the
//! [`Command`]s this module queues in answer (dial, write, close). So every link rule is a
//! unit test with injected time.
//!
//! Each server dials every neighbour and writes `HELLO <name>`, its whole table, then
//! records as they win, on that outbound connection; the neighbour's own dial to us brings
//! records the other way. Records are only *written* on links we dialled and only *read* on
//! links we accepted. The link timers (redial with backoff, connect timeout) live on this
//! module's own wheel; the reactor folds `next_deadline` into its poll timeout.
//!
//! A neighbour's `host` may be a name: it is looked up anew at each dial (SPEC §5), by the
//! reactor's resolver thread, so a dial to a name goes through a `Resolving` phase first.
//! The table sync that opens a link is streamed: `flush` writes it a chunk at a time as the
//! connection's output drains, so a big table never sits whole in one buffer.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, info, warn};

use crate::lines::Line;
use crate::logging::Shown;
use crate::metrics::{Direction, Metrics, RecordOutcome};
use crate::protocol;
use crate::slab::ConnId;
use crate::table::{Cursor, Offer, Table};
use crate::timer::{Backoff, Jitter, TimerId, TimerWheel};

/// First retry after a link is lost; doubles up to `RETRY_CAP`.
pub const RETRY_BASE: Duration = Duration::from_millis(50);
/// A neighbour that comes back is redialled within this (SPEC §3: within a second, with
/// room for the connect itself).
pub const RETRY_CAP: Duration = Duration::from_millis(500);
/// mio has no connect timeout; the link wheel gives up on a dial after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Output queued to a neighbour that does not read, beyond which the link is dropped (and
/// later resynced from the table): a stalled neighbour must not cost unbounded memory.
pub const MIN_OUT_LIMIT: usize = 8 << 20;
/// SPEC §5: after each consecutive drop for not reading, the redial waits twice as long,
/// up to this, so a frozen host costs its neighbours at most one table resend per period.
pub const STALL_RETRY_CAP: Duration = Duration::from_secs(30);
/// SPEC §5: a dialler that has written nothing for this long writes an empty line, so a
/// dead path shows as a failed write and a silent one as silence at the other end.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// A table sync is written in chunks of about this size, each once the connection holds
/// less than this: the sync costs the sender at most about two chunks of output.
pub const SYNC_CHUNK: usize = 256 << 10;
const TIMER_TICK: Duration = Duration::from_millis(5);
const TIMER_SLOTS: usize = 512;

/// A neighbour: an index into this server's list of neighbours, in herd.yml order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NeighbourId(usize);

#[cfg(test)]
impl NeighbourId {
    pub fn new(i: usize) -> NeighbourId {
        NeighbourId(i)
    }
}

/// Where a neighbour is dialled: `host` is an address or a name looked up at each dial.
#[derive(Clone, Debug, PartialEq)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
}

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Endpoint {
        Endpoint {
            host: a.ip().to_string(),
            port: a.port(),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, self.port).fmt(f),
            Err(_) => write!(f, "{}:{}", self.host, self.port),
        }
    }
}

/// What the reactor is asked to do.
#[derive(Debug, PartialEq)]
pub enum Command {
    /// Start a non-blocking connect; report it with `dial_started` or `dial_failed`.
    Dial { n: NeighbourId, addr: SocketAddr },
    /// Look `host` up off the reactor thread; report it with `resolved` and this `seq`.
    Resolve {
        n: NeighbourId,
        seq: u64,
        host: String,
        port: u16,
    },
    /// Append these bytes to the connection's output.
    Send { conn: ConnId, bytes: Vec<u8> },
    /// Close the connection (and report it with `closed`).
    Close { conn: ConnId, why: String },
}

/// Our outbound link to one neighbour.
#[derive(Debug, PartialEq)]
enum Out {
    /// Not connected; a redial is due.
    Down { retry: TimerId },
    /// The neighbour's name is being looked up (lookup number `seq`); `timeout` bounds it
    /// like a connect.
    Resolving { seq: u64, timeout: TimerId },
    /// A non-blocking connect is in flight.
    Connecting { conn: ConnId, timeout: TimerId },
    /// Connected; HELLO and the table were sent.
    Up { conn: ConnId },
}

impl fmt::Display for Out {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Out::Down { .. } => "down",
            Out::Resolving { .. } => "resolving",
            Out::Connecting { .. } => "connecting",
            Out::Up { .. } => "up",
        })
    }
}

enum LinkTimer {
    Redial(NeighbourId),
    ConnectTimeout(NeighbourId),
    /// Time to check whether the outbound link on this connection needs a heartbeat.
    Heartbeat(NeighbourId, ConnId),
    /// Time to check whether the inbound link on this connection went silent.
    Silence(NeighbourId, ConnId),
}

struct Neighbour {
    name: String,
    addr: Endpoint,
    /// Numbers the lookups, so the answer to one that timed out is known as stale.
    lookups: u64,
    /// Where the table sync on the up link has got to; `None` once it is all written.
    sync: Option<TableSync>,
    /// When the outbound link came up (a drain to empty only counts once it has been up
    /// for `dead_after`: a frozen host's kernel still takes a first buffer-full).
    up_since: Instant,
    out: Out,
    backoff: Backoff,
    /// Records to send at the next `flush`: one write per loop pass, not one per record.
    outbox: Vec<u8>,
    /// The connection the neighbour dialled to us, once its HELLO arrived.
    inbound: Option<ConnId>,
    /// The number of the last flood that queued a record here, for the log's "forwarded
    /// to" list.
    flooded: u64,
    /// When the outbound link last had bytes sent (for heartbeats).
    last_sent: Instant,
    /// The link is being closed to be dialled again at once, not after a backoff.
    redial_now: bool,
    /// Backoff after drops for not reading; reset once the link is read down to empty.
    stall_backoff: Backoff,
    /// The link is being closed because the neighbour does not read.
    stall_drop: bool,
    /// When the inbound link last brought a line (for dead paths).
    last_heard: Instant,
}

/// A table sync in progress.
struct TableSync {
    cursor: Cursor,
    records: usize,
}

pub struct Links {
    me: String,
    neighbours: Vec<Neighbour>,
    timers: TimerWheel<LinkTimer>,
    jitter: Jitter,
    commands: Vec<Command>,
    floods: u64,
    dead_after: Duration,
    /// How long an outbound link may go without writing before it gets a heartbeat: SPEC's
    /// 1 s, or a third of `dead_after` if that is shorter, so the accepting side never
    /// counts a live link as silent.
    beat: Duration,
    /// The server's counters (SPEC §8); link `i` there is `NeighbourId(i)` here.
    metrics: Arc<Metrics>,
}

impl Links {
    /// Every link starts down with a dial due at `now`. An inbound link silent for
    /// `dead_after` is closed.
    pub fn new(
        me: String,
        neighbours: Vec<(String, Endpoint)>,
        dead_after: Duration,
        now: Instant,
        seed: u64,
    ) -> Links {
        let mut timers = TimerWheel::new(TIMER_TICK, TIMER_SLOTS, now);
        let names: Vec<String> = neighbours.iter().map(|(name, _)| name.clone()).collect();
        let neighbours = neighbours
            .into_iter()
            .enumerate()
            .map(|(i, (name, addr))| Neighbour {
                name,
                addr,
                lookups: 0,
                sync: None,
                up_since: now,
                out: Out::Down {
                    retry: timers.insert(now, LinkTimer::Redial(NeighbourId(i))),
                },
                backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
                outbox: Vec::new(),
                inbound: None,
                flooded: 0,
                last_sent: now,
                last_heard: now,
                redial_now: false,
                stall_backoff: Backoff::new(RETRY_BASE, STALL_RETRY_CAP),
                stall_drop: false,
            })
            .collect();
        Links {
            me,
            neighbours,
            timers,
            jitter: Jitter::new(seed),
            commands: Vec::new(),
            floods: 0,
            dead_after,
            beat: HEARTBEAT.min(dead_after / 3),
            metrics: Arc::new(Metrics::new(&names)),
        }
    }

    /// The server's counters, made here so their link order is the neighbours' order.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Publishes the bytes waiting for each neighbour (`queued`: a connection's unsent
    /// output); once per loop pass, after the flush.
    pub fn publish_queued(&self, queued: impl Fn(ConnId) -> usize) {
        for (i, nb) in self.neighbours.iter().enumerate() {
            let held = match nb.out {
                Out::Up { conn } => queued(conn) + nb.outbox.len(),
                _ => 0,
            };
            if let Some(m) = self.metrics.links().get(i) {
                m.set_queued_bytes(held);
            }
        }
    }

    /// Moves the queued commands into `out` (which should be empty), to be carried out.
    pub fn take_commands(&mut self, out: &mut Vec<Command>) {
        std::mem::swap(&mut self.commands, out);
    }

    pub fn name(&self, n: NeighbourId) -> &str {
        &self.neighbours[n.0].name
    }

    /// The earliest link timer, for the poll timeout.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// Runs the link timers due at `now`: redials and connect timeouts.
    pub fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.timers.expire(now, &mut due);
        for timer in due {
            match timer {
                LinkTimer::Redial(n) => {
                    if matches!(self.neighbours[n.0].out, Out::Down { .. }) {
                        self.dial(n, now);
                    }
                }
                LinkTimer::ConnectTimeout(n) => match self.neighbours[n.0].out {
                    Out::Connecting { conn, .. } => self.commands.push(Command::Close {
                        conn,
                        why: "connect timed out".into(),
                    }),
                    Out::Resolving { .. } => self.down(n, "name lookup timed out", now),
                    _ => {}
                },
                LinkTimer::Heartbeat(n, conn) => self.heartbeat(n, conn, now),
                LinkTimer::Silence(n, conn) => self.check_silence(n, conn, now),
            }
        }
    }

    /// An outbound link that sent nothing for `HEARTBEAT` gets an empty line. A timer for
    /// a connection that is no longer the link is simply dropped.
    fn heartbeat(&mut self, n: NeighbourId, conn: ConnId, now: Instant) {
        let nb = &mut self.neighbours[n.0];
        if nb.out != (Out::Up { conn }) {
            return;
        }
        let due = nb.last_sent + self.beat;
        let next = if now >= due {
            nb.last_sent = now;
            self.commands.push(Command::Send {
                conn,
                bytes: b"\n".to_vec(),
            });
            now + self.beat
        } else {
            due
        };
        self.timers.insert(next, LinkTimer::Heartbeat(n, conn));
    }

    /// An inbound link that brought nothing for `dead_after` is closed: the path is dead
    /// or the neighbour is gone without a reset (SPEC §5).
    fn check_silence(&mut self, n: NeighbourId, conn: ConnId, now: Instant) {
        let nb = &self.neighbours[n.0];
        if nb.inbound != Some(conn) {
            return;
        }
        let due = nb.last_heard + self.dead_after;
        if now >= due {
            let why = format!("silent for {} ms", self.dead_after.as_millis());
            self.commands.push(Command::Close { conn, why });
        } else {
            self.timers.insert(due, LinkTimer::Silence(n, conn));
        }
    }

    /// A line (a record or a heartbeat) arrived on `conn`.
    pub fn heard(&mut self, from: NeighbourId, now: Instant) {
        self.neighbours[from.0].last_heard = now;
    }

    /// Dials `n` now: at once for an address, after a lookup for a name.
    fn dial(&mut self, n: NeighbourId, now: Instant) {
        let nb = &mut self.neighbours[n.0];
        if let Out::Down { retry } = nb.out {
            self.timers.cancel(retry);
        }
        if let Ok(ip) = nb.addr.host.parse::<IpAddr>() {
            let addr = SocketAddr::new(ip, nb.addr.port);
            self.commands.push(Command::Dial { n, addr });
            return;
        }
        nb.lookups += 1;
        let seq = nb.lookups;
        let timeout = self
            .timers
            .insert(now + CONNECT_TIMEOUT, LinkTimer::ConnectTimeout(n));
        nb.out = Out::Resolving { seq, timeout };
        self.commands.push(Command::Resolve {
            n,
            seq,
            host: nb.addr.host.clone(),
            port: nb.addr.port,
        });
    }

    /// The lookup `seq` for `n` answered: dial the address, or count a failed dial. An
    /// answer that comes after its lookup timed out is dropped.
    pub fn resolved(&mut self, n: NeighbourId, seq: u64, answer: Result<SocketAddr, String>, now: Instant) {
        let Some(nb) = self.neighbours.get_mut(n.0) else {
            return;
        };
        let Out::Resolving { seq: s, timeout } = nb.out else {
            return;
        };
        if s != seq {
            return;
        }
        self.timers.cancel(timeout);
        match answer {
            Ok(addr) => {
                // `dial_started` or `dial_failed` follows at once, when the reactor runs this.
                let retry = self.timers.insert(now + CONNECT_TIMEOUT, LinkTimer::Redial(n));
                nb.out = Out::Down { retry };
                debug!("link to {} ({}): resolved to {addr}", nb.name, nb.addr);
                self.commands.push(Command::Dial { n, addr });
            }
            Err(e) => self.down(n, &format!("cannot resolve: {e}"), now),
        }
    }

    /// The connect for `n` is in flight on `conn`; it must finish within `CONNECT_TIMEOUT`.
    pub fn dial_started(&mut self, n: NeighbourId, conn: ConnId, now: Instant) {
        let timeout = self
            .timers
            .insert(now + CONNECT_TIMEOUT, LinkTimer::ConnectTimeout(n));
        let nb = &mut self.neighbours[n.0];
        if let Out::Down { retry } = nb.out {
            // The guard `resolved` left, in case no dial report came.
            self.timers.cancel(retry);
        }
        nb.out = Out::Connecting { conn, timeout };
        debug!("link to {} ({}): connecting", nb.name, nb.addr);
    }

    /// The connect for `n` could not even start.
    pub fn dial_failed(&mut self, n: NeighbourId, why: &str, now: Instant) {
        self.down(n, why, now);
    }

    /// The neighbour we are dialling on `conn`, if `conn` is such a dial.
    pub fn dialling(&self, conn: ConnId) -> Option<NeighbourId> {
        self.find(|nb| matches!(nb.out, Out::Connecting { conn: c, .. } if c == conn))
    }

    /// Inbound links up (each with its HELLO accepted).
    pub fn inbound_count(&self) -> usize {
        self.neighbours.iter().filter(|nb| nb.inbound.is_some()).count()
    }

    /// The neighbour whose records arrive on `conn`, once its HELLO was accepted.
    pub fn inbound_from(&self, conn: ConnId) -> Option<NeighbourId> {
        self.find(|nb| nb.inbound == Some(conn))
    }

    fn find(&self, pred: impl Fn(&Neighbour) -> bool) -> Option<NeighbourId> {
        self.neighbours.iter().position(pred).map(NeighbourId)
    }

    /// The dial on `conn` connected: the link is up; HELLO goes out, and the whole table
    /// follows from `flush`, a chunk at a time.
    pub fn connected(&mut self, conn: ConnId, table: &Table, now: Instant) {
        let Some(n) = self.dialling(conn) else {
            return;
        };
        let nb = &mut self.neighbours[n.0];
        if let Out::Connecting { timeout, .. } = nb.out {
            self.timers.cancel(timeout);
        }
        nb.out = Out::Up { conn };
        self.metrics.link_up(n.0, Direction::Out);
        nb.backoff.reset();
        nb.outbox.clear();
        nb.last_sent = now;
        nb.up_since = now;
        self.timers.insert(now + self.beat, LinkTimer::Heartbeat(n, conn));
        nb.sync = Some(TableSync {
            cursor: table.cursor(),
            records: 0,
        });
        info!(
            "link to {} ({}): up; sent HELLO, syncing {} records",
            nb.name,
            nb.addr,
            table.len()
        );
        let bytes = format!("HELLO {}\n", self.me).into_bytes();
        self.commands.push(Command::Send { conn, bytes });
    }

    /// The up link on `conn` failed because data sat unacknowledged for `dead_after` (TCP's
    /// user timeout). With output still waiting (`backlog`) or the sync unfinished, that is
    /// a neighbour that stopped reading, whose kernel still answers, so it counts as a
    /// not-reading drop for the backoff: a frozen host must not get the table resent at
    /// the ordinary reconnect pace. Call it before the connection is closed.
    pub fn timed_out(&mut self, conn: ConnId, backlog: bool) {
        if let Some(n) = self.find(|nb| nb.out == Out::Up { conn }) {
            let nb = &mut self.neighbours[n.0];
            if backlog || nb.sync.is_some() {
                nb.stall_drop = true;
            }
        }
    }

    /// True while some up link is syncing and its connection (`queued` bytes waiting) has
    /// room for the next chunk: the reactor then calls `flush` again without waiting.
    pub fn sync_wants_room(&self, queued: impl Fn(ConnId) -> usize) -> bool {
        self.neighbours.iter().any(|nb| match nb.out {
            Out::Up { conn } => nb.sync.is_some() && queued(conn) < SYNC_CHUNK,
            _ => false,
        })
    }

    /// `conn` closed (for any reason, ours or theirs). Returns the neighbour it was a link
    /// of, if it was one.
    pub fn closed(&mut self, conn: ConnId, why: &str, now: Instant) -> Option<NeighbourId> {
        if let Some(n) = self.inbound_from(conn) {
            let nb = &mut self.neighbours[n.0];
            nb.inbound = None;
            self.metrics.link_down(n.0, Direction::In);
            info!("link from {}: dropped: {why}", nb.name);
            return Some(n);
        }
        let n = self.find(|nb| match nb.out {
            Out::Up { conn: c } | Out::Connecting { conn: c, .. } => c == conn,
            Out::Down { .. } | Out::Resolving { .. } => false,
        })?;
        if let Out::Connecting { timeout, .. } = self.neighbours[n.0].out {
            self.timers.cancel(timeout);
        }
        self.down(n, why, now);
        Some(n)
    }

    /// Marks the link to `n` down and schedules a redial with backoff.
    fn down(&mut self, n: NeighbourId, why: &str, now: Instant) {
        let nb = &mut self.neighbours[n.0];
        let stalled = std::mem::take(&mut nb.stall_drop);
        let drops = nb.stall_backoff.attempts() + 1;
        let delay = if std::mem::take(&mut nb.redial_now) {
            Duration::ZERO
        } else if stalled {
            nb.stall_backoff.next_delay(self.jitter.next_u64())
        } else {
            nb.backoff.next_delay(self.jitter.next_u64())
        };
        let retry = self.timers.insert(now + delay, LinkTimer::Redial(n));
        let was = std::mem::replace(&mut nb.out, Out::Down { retry });
        if let Out::Down { retry: guard } = was {
            // The guard `resolved` left for a dial that failed to start: this retry is it.
            self.timers.cancel(guard);
        }
        self.metrics.link_down(n.0, Direction::Out);
        nb.outbox.clear();
        nb.sync = None;
        let msg = format!(
            "link to {} ({}): {was} -> down: {why}; retry in {} ms",
            nb.name,
            nb.addr,
            delay.as_millis()
        );
        // SPEC §5: the first drop of a neighbour that does not read is a warning; the
        // ones after it (each waiting twice as long) are not news.
        if stalled && drops == 1 {
            warn!("{msg} (not reading)");
        } else if stalled {
            info!("{msg} (not reading: drop {drops} in a row)");
        } else if matches!(was, Out::Up { .. }) || delay < RETRY_CAP / 2 {
            // A neighbour that stays away would fill the log with the same refusal.
            info!("{msg}");
        } else {
            debug!("{msg}");
        }
    }

    /// The first line on a peer-port connection named `name`. `Some` if that is a
    /// neighbour: `conn` now carries its records, an older connection from it is closed, and
    /// if our link to it is down it is evidently back, so it is dialled now instead of at
    /// the end of a backoff. `None`: refuse the connection.
    pub fn hello(&mut self, conn: ConnId, name: &[u8], now: Instant) -> Option<NeighbourId> {
        let n = self.find(|nb| nb.name.as_bytes() == name)?;
        let nb = &mut self.neighbours[n.0];
        nb.last_heard = now;
        self.timers
            .insert(now + self.dead_after, LinkTimer::Silence(n, conn));
        let replaced = nb.inbound.replace(conn).filter(|old| *old != conn);
        self.metrics.link_up(n.0, Direction::In);
        if let Some(old) = replaced {
            self.commands.push(Command::Close {
                conn: old,
                why: "replaced by a newer HELLO from the same neighbour".into(),
            });
        }
        // SPEC §5: a HELLO says the neighbour is there now, so a link of ours that is not
        // known good is redialled at once: a dial still connecting may be waiting on a
        // lost SYN, and an "up" link to a neighbour that dialled us anew while its old
        // connection never closed is to a host that rebooted without a reset.
        let why = match nb.out {
            Out::Down { .. } => {
                self.dial(n, now);
                return Some(n);
            }
            // The dial is about to start: it is as fresh as one started now.
            Out::Resolving { .. } => return Some(n),
            Out::Connecting { conn, .. } => (conn, "abandoned: the neighbour said HELLO meanwhile"),
            Out::Up { conn } if replaced.is_some() => {
                (conn, "the neighbour evidently restarted (a new HELLO)")
            }
            Out::Up { .. } => return Some(n),
        };
        nb.redial_now = true;
        self.commands.push(Command::Close {
            conn: why.0,
            why: why.1.into(),
        });
        Some(n)
    }

    /// Queues a winning record (an AT line without `\n`) for every up link except the one
    /// it came from; returns what to log as where it went.
    pub fn flood(&mut self, line: &[u8], except: Option<NeighbourId>) -> Forwarded<'_> {
        self.floods += 1;
        for (i, nb) in self.neighbours.iter_mut().enumerate() {
            // A link that is not up gets the record with the table sync when it comes up.
            if Some(NeighbourId(i)) != except && matches!(nb.out, Out::Up { .. }) {
                nb.outbox.extend_from_slice(line);
                nb.outbox.push(b'\n');
                nb.flooded = self.floods;
                self.metrics.forwarded(1);
            }
        }
        Forwarded(self)
    }

    /// A line from neighbour `from` after its HELLO: a record, stored in canonical form if
    /// it wins and flooded on; blank lines are ignored and malformed ones logged and
    /// skipped (the link stays). `scratch` is reused for the canonical line.
    pub fn record(
        &mut self,
        from: NeighbourId,
        line: Line<'_>,
        table: &mut Table,
        servers: &[String],
        scratch: &mut Vec<u8>,
    ) {
        let name = &self.neighbours[from.0].name;
        let Line::Complete(line) = line else {
            self.metrics.record(RecordOutcome::Malformed);
            warn!("record from {name} skipped: over-long line");
            return;
        };
        if protocol::fields(line).next().is_none() {
            return;
        }
        // SPEC §3: a record naming an origin that is no server of the herd is malformed.
        let rec =
            protocol::parse_at_record(line).filter(|r| servers.iter().any(|s| s.as_bytes() == r.server));
        let Some(rec) = rec else {
            self.metrics.record(RecordOutcome::Malformed);
            warn!("record from {name} skipped: malformed: {}", Shown(line));
            return;
        };
        scratch.clear();
        let loc = rec.write_canonical(scratch);
        match table.offer_at(table.clock(), rec.client, rec.time, scratch, loc) {
            Offer::Won => {}
            Offer::Lost => {
                self.metrics.record(RecordOutcome::NotNewer);
                return info!("record from {name} (not newer, dropped): {}", Shown(scratch));
            }
            Offer::TooFuture => {
                self.metrics.record(RecordOutcome::TooFarAhead);
                return warn!(
                    "record from {name} (further ahead than limits.max_future_s, dropped): {}",
                    Shown(scratch)
                );
            }
            Offer::Expired => {
                self.metrics.record(RecordOutcome::Expired);
                return info!(
                    "record from {name} (older than table.ttl_s, dropped): {}",
                    Shown(scratch)
                );
            }
            // Counted by the table; the reactor reports it at most once a second.
            Offer::Full => return,
        }
        self.metrics.record(RecordOutcome::New);
        let to = self.flood(scratch, Some(from));
        info!(
            "record from {} (new): {}{to}",
            to.0.neighbours[from.0].name,
            Shown(scratch)
        );
    }

    /// Moves each up link's batched records to its connection, and the next chunk of its
    /// table sync once the connection has room for it. `queued` tells how much output the
    /// connection already holds: a neighbour that lets more than its bound pile up is
    /// stalled, and its link is dropped (it resyncs from the table when it is back).
    pub fn flush(&mut self, now: Instant, table: &Table, queued: impl Fn(ConnId) -> usize) {
        for nb in &mut self.neighbours {
            let Out::Up { conn } = nb.out else {
                continue;
            };
            let held = queued(conn);
            if held == 0 && nb.sync.is_none() && now >= nb.up_since + self.dead_after {
                // Read down to empty, and for longer than a frozen host's kernel would
                // have taken it alone: it is reading again, so drops count from scratch.
                nb.stall_backoff.reset();
            }
            if held < SYNC_CHUNK
                && let Some(sync) = &mut nb.sync
            {
                let mut bytes = Vec::with_capacity(SYNC_CHUNK + 1024);
                let done = table.resume(&mut sync.cursor, |r| {
                    bytes.extend_from_slice(&r.line);
                    bytes.push(b'\n');
                    sync.records += 1;
                    bytes.len() < SYNC_CHUNK
                });
                if done {
                    debug!(
                        "link to {}: table sync written ({} records)",
                        nb.name, sync.records
                    );
                    nb.sync = None;
                }
                if !bytes.is_empty() {
                    nb.last_sent = now;
                    self.commands.push(Command::Send { conn, bytes });
                }
            }
            if nb.outbox.is_empty() {
                continue;
            }
            let total = held + nb.outbox.len();
            if total > MIN_OUT_LIMIT {
                nb.outbox.clear();
                nb.stall_drop = true;
                self.commands.push(Command::Close {
                    conn,
                    why: format!("neighbour is not reading ({total} bytes queued)"),
                });
            } else {
                let bytes = std::mem::take(&mut nb.outbox);
                nb.last_sent = now;
                self.commands.push(Command::Send { conn, bytes });
            }
        }
    }

    /// A line on a link we dialled: the accepting side says nothing unless it refuses us.
    pub fn heard_on_outbound(&self, conn: ConnId, line: Line<'_>) {
        let (Line::Complete(l) | Line::Overlong(l)) = line;
        if let Some(n) = self.find(|nb| nb.out == Out::Up { conn }) {
            warn!("link to {}: neighbour says: {}", self.name(n), Shown(l));
        }
    }
}

/// " | forwarded to A, B" for the neighbours the last flood reached, or nothing.
pub struct Forwarded<'a>(&'a Links);

impl fmt::Display for Forwarded<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut sep = " | forwarded to ";
        for nb in self.0.neighbours.iter().filter(|nb| nb.flooded == self.0.floods) {
            write!(f, "{sep}{}", nb.name)?;
            sep = ", ";
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Timestamp;

    const DEAD_AFTER: Duration = Duration::from_millis(3000);
    const A: NeighbourId = NeighbourId(0);
    const B: NeighbourId = NeighbourId(1);
    const C: NeighbourId = NeighbourId(2);

    fn conn(index: usize) -> ConnId {
        ConnId { index, generation: 0 }
    }

    fn addr(port: u16) -> SocketAddr {
        ([127, 0, 0, 1], port).into()
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Links to A, B and C with their first dials taken out (started on conns 0, 1, 2 is up
    /// to each test).
    fn links(t0: Instant) -> Links {
        let ns = ["A", "B", "C"].iter().enumerate();
        let mut l = Links::new(
            "Me".into(),
            ns.map(|(i, n)| (n.to_string(), addr(i as u16 + 1).into()))
                .collect(),
            DEAD_AFTER,
            t0,
            7,
        );
        l.expire(t0);
        assert_eq!(
            commands(&mut l),
            vec![
                Command::Dial { n: A, addr: addr(1) },
                Command::Dial { n: B, addr: addr(2) },
                Command::Dial { n: C, addr: addr(3) },
            ],
            "every link starts with a dial due at once"
        );
        l
    }

    fn commands(l: &mut Links) -> Vec<Command> {
        let mut out = Vec::new();
        l.take_commands(&mut out);
        out
    }

    /// Brings neighbour `n`'s link up on `c` at `now`; returns the greeting sent.
    fn up(l: &mut Links, n: NeighbourId, c: ConnId, now: Instant, table: &Table) -> Vec<u8> {
        l.dial_started(n, c, now);
        l.connected(c, table, now);
        let mut greeting = match commands(l).pop() {
            Some(Command::Send { conn, bytes }) if conn == c => bytes,
            other => panic!("no greeting on link-up: {other:?}"),
        };
        // The table follows a chunk per flush, while the socket takes them at once.
        loop {
            l.flush(now, table, |_| 0);
            let sent: Vec<u8> = commands(l)
                .into_iter()
                .filter_map(|cmd| match cmd {
                    Command::Send { conn, bytes } if conn == c => Some(bytes),
                    _ => None,
                })
                .flatten()
                .collect();
            if sent.is_empty() {
                return greeting;
            }
            greeting.extend(sent);
        }
    }

    /// Steps the clock a millisecond at a time from `from` until a dial to `n` comes out;
    /// returns how long after `from` that was.
    fn next_dial(l: &mut Links, n: NeighbourId, from: Instant) -> Duration {
        for k in 0..=2_000 {
            l.expire(from + ms(k));
            let dials: Vec<Command> = commands(l);
            if dials
                .iter()
                .any(|c| matches!(c, Command::Dial { n: m, .. } | Command::Resolve { n: m, .. } if *m == n))
            {
                return ms(k);
            }
        }
        panic!("no redial within 2 s");
    }

    fn table_with(records: &[&str]) -> Table {
        let mut t = Table::default();
        for (i, r) in records.iter().enumerate() {
            let rec = protocol::parse_at_record(r.as_bytes()).expect("valid record");
            let mut line = Vec::new();
            let loc = rec.write_canonical(&mut line);
            let time = Timestamp::parse(rec.raw_time).expect("time");
            assert!(t.offer(format!("c{i}").as_bytes(), time, &line, loc));
        }
        t
    }

    #[test]
    fn failed_dials_back_off_doubling_to_the_cap_with_jitter_below_each_step() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let mut now = t0;
        for step in [50, 100, 200, 400, 500, 500, 500] {
            l.dial_started(A, conn(0), now);
            assert_eq!(l.closed(conn(0), "refused", now), Some(A));
            let delay = next_dial(&mut l, A, now);
            // Jitter takes off at most a quarter; the wheel's 5 ms tick may round up.
            let (low, high) = (ms(step * 3 / 4), ms(step) + TIMER_TICK);
            assert!(
                delay > low && delay <= high,
                "step {step} ms: redial after {delay:?}"
            );
            now += delay;
        }
    }

    #[test]
    fn a_link_that_was_up_starts_its_backoff_again() {
        let t0 = Instant::now();
        let mut l = links(t0);
        l.dial_failed(A, "cannot start a connection", t0);
        let d1 = next_dial(&mut l, A, t0);
        l.dial_failed(A, "cannot start a connection", t0 + d1);
        let d2 = next_dial(&mut l, A, t0 + d1);
        assert!(d2 > ms(75), "second failure waits the second step: {d2:?}");
        let now = t0 + d1 + d2;
        up(&mut l, A, conn(0), now, &Table::default());
        l.closed(conn(0), "reset", now);
        assert!(
            next_dial(&mut l, A, now) <= ms(50) + TIMER_TICK,
            "back to the first step"
        );
    }

    #[test]
    fn a_dial_that_does_not_connect_in_time_is_closed_then_redialled() {
        let t0 = Instant::now();
        let mut l = links(t0);
        l.dial_started(A, conn(0), t0);
        l.expire(t0 + CONNECT_TIMEOUT - ms(1));
        assert_eq!(commands(&mut l), vec![], "not before the timeout");
        l.expire(t0 + CONNECT_TIMEOUT + TIMER_TICK);
        assert_eq!(
            commands(&mut l),
            vec![Command::Close {
                conn: conn(0),
                why: "connect timed out".into()
            }]
        );
        let closed_at = t0 + CONNECT_TIMEOUT + TIMER_TICK;
        assert_eq!(l.closed(conn(0), "connect timed out", closed_at), Some(A));
        assert!(next_dial(&mut l, A, closed_at) <= ms(50) + TIMER_TICK);
    }

    #[test]
    fn a_dial_that_connects_cancels_its_timeout() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        // Lost and redialled: the first dial's timeout must not cut the second one short.
        l.closed(conn(0), "reset", t0 + ms(10));
        let redial = t0 + ms(10) + next_dial(&mut l, A, t0 + ms(10));
        l.dial_started(A, conn(1), redial);
        l.expire(t0 + CONNECT_TIMEOUT + TIMER_TICK);
        assert_eq!(commands(&mut l), vec![]);
        assert_eq!(l.dialling(conn(1)), Some(A));
        l.expire(redial + CONNECT_TIMEOUT + TIMER_TICK);
        assert!(
            matches!(commands(&mut l)[..], [Command::Close { .. }]),
            "its own timeout"
        );
    }

    #[test]
    fn link_up_sends_hello_then_the_whole_table() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let table = table_with(&["AT X +0.000000001 c0 +1+1 5"]);
        let greeting = up(&mut l, A, conn(0), t0, &table);
        assert_eq!(greeting, b"HELLO Me\nAT X +0.000000001 c0 +1+1 5\n");
    }

    #[test]
    fn a_hello_while_our_link_is_down_dials_back_at_once() {
        let t0 = Instant::now();
        let mut l = links(t0);
        // Down after a few failures: the next retry is far off.
        let mut now = t0;
        for _ in 0..4 {
            l.dial_failed(A, "refused", now);
            now += next_dial(&mut l, A, now);
        }
        l.dial_failed(A, "refused", now);
        assert_eq!(l.hello(conn(9), b"A", now), Some(A));
        assert_eq!(commands(&mut l), vec![Command::Dial { n: A, addr: addr(1) }]);
        // The backoff's retry was cancelled: no second dial when it would have been due.
        l.dial_started(A, conn(0), now);
        l.expire(now + RETRY_CAP + TIMER_TICK);
        assert_eq!(commands(&mut l), vec![]);
    }

    #[test]
    fn a_first_hello_while_our_link_is_up_changes_nothing() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        assert_eq!(l.hello(conn(8), b"A", t0), Some(A));
        assert_eq!(commands(&mut l), vec![]);
    }

    #[test]
    fn a_hello_while_our_dial_is_connecting_abandons_it_and_dials_at_once() {
        let t0 = Instant::now();
        let mut l = links(t0);
        l.dial_started(B, conn(1), t0);
        assert_eq!(l.hello(conn(9), b"B", t0 + ms(100)), Some(B));
        assert_eq!(
            commands(&mut l),
            vec![Command::Close {
                conn: conn(1),
                why: "abandoned: the neighbour said HELLO meanwhile".into()
            }]
        );
        let closed = t0 + ms(100);
        l.closed(conn(1), "abandoned", closed);
        assert_eq!(next_dial(&mut l, B, closed), ms(0), "no backoff");
    }

    #[test]
    fn a_new_hello_over_an_old_inbound_while_up_means_a_restart_and_redials_at_once() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.hello(conn(8), b"A", t0);
        // Rebooted without a reset: a new connection and HELLO, the old ones still open.
        l.hello(conn(9), b"A", t0 + ms(500));
        let cmds = commands(&mut l);
        assert!(cmds.contains(&Command::Close {
            conn: conn(0),
            why: "the neighbour evidently restarted (a new HELLO)".into()
        }));
        let closed = t0 + ms(500);
        l.closed(conn(0), "restarted", closed);
        assert_eq!(next_dial(&mut l, A, closed), ms(0), "no backoff");
        // The next loss backs off as usual.
        l.dial_started(A, conn(3), closed);
        l.closed(conn(3), "refused", closed);
        assert!(next_dial(&mut l, A, closed) > ms(20));
    }

    #[test]
    fn a_second_hello_from_a_neighbour_replaces_the_older_connection() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.hello(conn(8), b"A", t0);
        assert_eq!(l.inbound_from(conn(8)), Some(A));
        l.hello(conn(9), b"A", t0);
        assert_eq!(
            commands(&mut l),
            vec![
                Command::Close {
                    conn: conn(8),
                    why: "replaced by a newer HELLO from the same neighbour".into()
                },
                Command::Close {
                    conn: conn(0),
                    why: "the neighbour evidently restarted (a new HELLO)".into()
                },
            ]
        );
        assert_eq!(l.inbound_from(conn(9)), Some(A));
        assert_eq!(l.inbound_from(conn(8)), None);
        // The older one closing later does not undo the newer.
        assert_eq!(l.closed(conn(8), "replaced", t0), None);
        assert_eq!(l.inbound_from(conn(9)), Some(A));
    }

    #[test]
    fn a_hello_naming_no_neighbour_is_refused() {
        let t0 = Instant::now();
        let mut l = links(t0);
        for name in [&b"Me"[..], b"a", b"Nobody", b""] {
            assert_eq!(l.hello(conn(9), name, t0), None);
        }
        assert_eq!(commands(&mut l), vec![]);
    }

    #[test]
    fn a_record_floods_to_every_up_link_but_its_source() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let t = Table::default();
        for (n, c) in [(A, 0), (B, 1), (C, 2)] {
            up(&mut l, n, conn(c), t0, &t);
        }
        let shown = l.flood(b"AT X +0.000000001 k +1+1 5", Some(B)).to_string();
        assert_eq!(shown, " | forwarded to A, C");
        l.flush(t0, &Table::default(), |_| 0);
        let line = b"AT X +0.000000001 k +1+1 5\n".to_vec();
        assert_eq!(
            commands(&mut l),
            vec![
                Command::Send {
                    conn: conn(0),
                    bytes: line.clone()
                },
                Command::Send {
                    conn: conn(2),
                    bytes: line
                },
            ]
        );
        l.flush(t0, &Table::default(), |_| 0);
        assert_eq!(commands(&mut l), vec![], "an outbox is sent once");
    }

    #[test]
    fn a_flood_skips_links_that_are_not_up() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.dial_started(B, conn(1), t0);
        assert_eq!(
            l.flood(b"AT X +0.000000001 k +1+1 5", None).to_string(),
            " | forwarded to A"
        );
        l.closed(conn(0), "reset", t0);
        assert_eq!(l.flood(b"AT X +0.000000001 k +1+1 6", None).to_string(), "");
        l.flush(t0, &Table::default(), |_| 0);
        assert_eq!(
            commands(&mut l),
            vec![],
            "a link that went down dropped its outbox"
        );
    }

    #[test]
    fn a_neighbour_that_does_not_read_is_dropped_past_the_bound() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.flood(b"AT X +0.000000001 k +1+1 5", None);
        l.flush(t0, &Table::default(), |_| MIN_OUT_LIMIT - 100);
        assert!(
            matches!(commands(&mut l)[..], [Command::Send { .. }]),
            "under the bound"
        );
        l.flood(b"AT X +0.000000001 k +1+1 6", None);
        l.flush(t0, &Table::default(), |_| MIN_OUT_LIMIT);
        match &commands(&mut l)[..] {
            [Command::Close { conn: c, why }] => {
                assert_eq!(*c, conn(0));
                assert!(why.contains("not reading"), "{why}");
            }
            other => panic!("not dropped: {other:?}"),
        }
    }

    #[test]
    fn records_are_stored_canonical_flooded_on_and_need_a_known_origin() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let mut table = Table::default();
        for (n, c) in [(A, 0), (B, 1)] {
            up(&mut l, n, conn(c), t0, &table);
        }
        l.hello(conn(9), b"A", t0);
        let servers = ["X".to_string(), "Me".to_string()];
        let mut scratch = Vec::new();
        let messy = Line::Complete(b" AT\tX  +0.000000001 k\x0b+1+1 5 ");
        l.record(A, messy, &mut table, &servers, &mut scratch);
        let stranger = Line::Complete(b"AT Nobody +0.000000001 s +1+1 5");
        l.record(A, stranger, &mut table, &servers, &mut scratch);
        let held = table.get(b"k").map(|r| (r.line.to_vec(), r.location().to_vec()));
        assert_eq!(
            held,
            Some((b"AT X +0.000000001 k +1+1 5".to_vec(), b"+1+1".to_vec()))
        );
        assert!(table.get(b"s").is_none(), "unknown origin stored");
        l.flush(t0, &Table::default(), |_| 0);
        assert_eq!(
            commands(&mut l),
            vec![Command::Send {
                conn: conn(1),
                bytes: b"AT X +0.000000001 k +1+1 5\n".to_vec()
            }],
            "canonical, to B only"
        );
        // The same record again is not newer: not flooded.
        l.record(
            A,
            Line::Complete(b"AT X +0.000000001 k +1+1 5"),
            &mut table,
            &servers,
            &mut scratch,
        );
        l.flush(t0, &Table::default(), |_| 0);
        assert_eq!(commands(&mut l), vec![]);
    }

    #[test]
    fn an_up_link_silent_for_a_second_gets_a_heartbeat() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.expire(t0 + HEARTBEAT - ms(1));
        assert_eq!(commands(&mut l), vec![], "not before a second");
        l.expire(t0 + HEARTBEAT + TIMER_TICK);
        let beat = Command::Send {
            conn: conn(0),
            bytes: b"\n".to_vec(),
        };
        assert_eq!(commands(&mut l), vec![beat]);
        // A record sent resets the second.
        let sent = t0 + ms(1500);
        l.flood(b"AT X +0.000000001 k +1+1 5", None);
        l.flush(sent, &Table::default(), |_| 0);
        commands(&mut l);
        l.expire(sent + HEARTBEAT - ms(5));
        assert_eq!(
            commands(&mut l),
            vec![],
            "a record went out {:?} ago",
            HEARTBEAT - ms(5)
        );
        l.expire(sent + HEARTBEAT + TIMER_TICK);
        assert!(matches!(&commands(&mut l)[..], [Command::Send { bytes, .. }] if bytes == b"\n"));
    }

    #[test]
    fn a_link_that_went_down_gets_no_heartbeat() {
        let t0 = Instant::now();
        let mut l = links(t0);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.closed(conn(0), "reset", t0);
        l.expire(t0 + HEARTBEAT + TIMER_TICK);
        let sends = commands(&mut l)
            .into_iter()
            .filter(|c| matches!(c, Command::Send { .. }))
            .count();
        assert_eq!(sends, 0);
    }

    #[test]
    fn an_inbound_link_silent_for_dead_after_is_closed() {
        let t0 = Instant::now();
        let mut l = links(t0);
        l.hello(conn(9), b"A", t0);
        commands(&mut l); // the dial-back
        let heard = t0 + ms(2000);
        l.heard(A, heard);
        l.expire(t0 + DEAD_AFTER + TIMER_TICK);
        assert_eq!(commands(&mut l), vec![], "heard {:?} ago", DEAD_AFTER - ms(2000));
        l.expire(heard + DEAD_AFTER + TIMER_TICK);
        assert_eq!(
            commands(&mut l),
            vec![Command::Close {
                conn: conn(9),
                why: "silent for 3000 ms".into()
            }]
        );
    }

    #[test]
    fn a_replaced_inbound_link_leaves_no_silence_check_on_its_successor() {
        let t0 = Instant::now();
        let mut l = links(t0);
        l.hello(conn(8), b"A", t0);
        let second = t0 + ms(2000);
        l.hello(conn(9), b"A", second);
        commands(&mut l);
        l.expire(t0 + DEAD_AFTER + TIMER_TICK);
        assert_eq!(commands(&mut l), vec![], "the first connection's check is void");
        l.expire(second + DEAD_AFTER + TIMER_TICK);
        assert!(matches!(&commands(&mut l)[..], [Command::Close { conn: c, .. }] if *c == conn(9)));
    }

    #[test]
    fn a_table_sync_is_streamed_in_bounded_chunks_and_survives_changes() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let mut table = Table::default();
        let line = |i: usize| format!("AT X +0.000000001 c{i} +1+1 5");
        for i in 0..100_000 {
            let at = line(i);
            table.offer(
                format!("c{i}").as_bytes(),
                Timestamp::parse(b"5").unwrap_or_else(|| panic!()),
                at.as_bytes(),
                0..0,
            );
        }
        l.dial_started(A, conn(0), t0);
        l.connected(conn(0), &table, t0);
        assert_eq!(
            commands(&mut l),
            vec![Command::Send {
                conn: conn(0),
                bytes: b"HELLO Me\n".to_vec()
            }]
        );
        // The socket takes 100 KiB a pass; the connection's output is what it holds.
        let mut queued = 0usize;
        let mut most = 0usize;
        let mut sent = Vec::new();
        for pass in 0..100_000 {
            if pass == 3 {
                // Records added and replaced meanwhile (they would be flooded too).
                for i in 100_000..100_050 {
                    let at = line(i);
                    table.offer(
                        format!("c{i}").as_bytes(),
                        Timestamp::parse(b"5").unwrap_or_else(|| panic!()),
                        at.as_bytes(),
                        0..0,
                    );
                }
            }
            l.flush(t0, &table, |_| queued);
            for cmd in commands(&mut l) {
                if let Command::Send { bytes, .. } = cmd {
                    queued += bytes.len();
                    sent.extend(bytes);
                }
            }
            most = most.max(queued);
            queued = queued.saturating_sub(100 << 10);
            if queued == 0 && !l.sync_wants_room(|_| 0) {
                break;
            }
        }
        assert!(most <= 2 * SYNC_CHUNK + 1024, "{most} bytes queued at once");
        let text = String::from_utf8_lossy(&sent);
        let got: std::collections::HashSet<&str> = text.lines().collect();
        let missing = (0..100_000).filter(|i| !got.contains(line(*i).as_str())).count();
        assert_eq!(missing, 0, "records there all along were skipped");
        assert!(!l.sync_wants_room(|_| 0), "the sync is done");
    }

    #[test]
    fn a_name_is_looked_up_at_each_dial_and_a_failed_lookup_is_a_failed_dial() {
        let t0 = Instant::now();
        let at = Endpoint {
            host: "bona.example".into(),
            port: 7,
        };
        let mut l = Links::new("Me".into(), vec![("A".into(), at)], DEAD_AFTER, t0, 7);
        l.expire(t0);
        let resolve = |seq| Command::Resolve {
            n: A,
            seq,
            host: "bona.example".into(),
            port: 7,
        };
        assert_eq!(commands(&mut l), vec![resolve(1)]);
        // A HELLO meanwhile does not start a second dial.
        l.hello(conn(9), b"A", t0);
        assert_eq!(commands(&mut l), vec![]);
        l.resolved(A, 1, Err("not found".into()), t0 + ms(5));
        assert_eq!(commands(&mut l), vec![]);
        let wait = next_dial(&mut l, A, t0 + ms(5));
        assert!(wait > ms(20), "retried with backoff: {wait:?}");
        // The next dial looks the name up again; a late answer to the first is ignored.
        let second = t0 + ms(5) + wait;
        l.resolved(A, 1, Ok(addr(1)), second);
        assert_eq!(commands(&mut l), vec![]);
        l.resolved(A, 2, Ok(addr(1)), second);
        assert_eq!(commands(&mut l), vec![Command::Dial { n: A, addr: addr(1) }]);
        l.dial_started(A, conn(0), second);
        l.connected(conn(0), &Table::default(), second);
        assert!(matches!(&commands(&mut l)[..], [Command::Send { .. }]), "up");
    }

    #[test]
    fn a_lookup_that_never_answers_times_out_like_a_connect() {
        let t0 = Instant::now();
        let at = Endpoint {
            host: "bona.example".into(),
            port: 7,
        };
        let mut l = Links::new("Me".into(), vec![("A".into(), at)], DEAD_AFTER, t0, 7);
        l.expire(t0);
        commands(&mut l);
        l.expire(t0 + CONNECT_TIMEOUT + TIMER_TICK);
        let later = t0 + CONNECT_TIMEOUT + TIMER_TICK;
        let wait = next_dial(&mut l, A, later);
        assert!(wait <= RETRY_CAP + TIMER_TICK, "redialled: {wait:?}");
    }

    #[test]
    fn heartbeats_come_at_least_three_times_per_dead_after() {
        let t0 = Instant::now();
        let mut l = Links::new("Me".into(), vec![("A".into(), addr(1).into())], ms(1000), t0, 7);
        l.expire(t0);
        commands(&mut l);
        up(&mut l, A, conn(0), t0, &Table::default());
        l.expire(t0 + ms(340));
        assert!(
            matches!(&commands(&mut l)[..], [Command::Send { bytes, .. }] if bytes == b"\n"),
            "no heartbeat a third of dead_after after the last write"
        );
    }

    #[test]
    fn a_user_timeout_with_output_waiting_counts_as_not_reading() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let mut now = t0;
        for (i, step) in [50u64, 100, 200].into_iter().enumerate() {
            up(&mut l, A, conn(i), now, &Table::default());
            l.timed_out(conn(i), true);
            l.closed(conn(i), "Connection timed out", now);
            let d = next_dial(&mut l, A, now);
            assert!(
                d > ms(step * 3 / 4) && d <= ms(step) + TIMER_TICK * 2,
                "drop {i}: {d:?}"
            );
            now += d;
        }
        // A timeout with nothing waiting is a dead path: the ordinary backoff.
        up(&mut l, A, conn(7), now, &Table::default());
        l.timed_out(conn(7), false);
        l.closed(conn(7), "Connection timed out", now);
        assert!(next_dial(&mut l, A, now) <= ms(50) + TIMER_TICK);
    }

    #[test]
    fn drops_for_not_reading_back_off_doubling_to_30_s_until_the_link_reads() {
        let t0 = Instant::now();
        let mut l = links(t0);
        let mut now = t0;
        let stall = |l: &mut Links, now: Instant, c: usize| -> Duration {
            up(l, A, conn(c), now, &Table::default());
            l.flood(b"AT X +0.000000001 k +1+1 5", None);
            l.flush(now, &Table::default(), |_| MIN_OUT_LIMIT);
            assert!(matches!(&commands(l)[..], [Command::Close { .. }]), "dropped");
            l.closed(conn(c), "not reading", now);
            let mut k = Duration::ZERO;
            // Coarse steps: the later delays are seconds long.
            while k <= STALL_RETRY_CAP + ms(100) {
                l.expire(now + k);
                if commands(l).iter().any(|c| matches!(c, Command::Dial { .. })) {
                    return k;
                }
                k += ms(5);
            }
            panic!("no redial");
        };
        for (i, step) in [50u64, 100, 200, 400, 800, 1600].into_iter().enumerate() {
            let d = stall(&mut l, now, i);
            assert!(
                d > ms(step * 3 / 4) && d <= ms(step) + TIMER_TICK * 2,
                "drop {i}: {d:?}"
            );
            now += d;
        }
        // Capped at 30 s after enough drops.
        for i in 6..12 {
            let d = stall(&mut l, now, i);
            assert!(d <= STALL_RETRY_CAP + TIMER_TICK * 2, "{d:?}");
            now += d;
        }
        let last = stall(&mut l, now, 12);
        assert!(last > STALL_RETRY_CAP * 3 / 4, "{last:?}");
        now += last;
        // Once it reads down to empty, a drop starts from the first step again.
        up(&mut l, A, conn(20), now, &Table::default());
        // Up for dead_after and empty: a frozen host's kernel could not have taken it all.
        let now = now + DEAD_AFTER;
        l.flush(now, &Table::default(), |_| 0);
        l.flood(b"AT X +0.000000001 k +1+1 6", None);
        l.flush(now, &Table::default(), |_| MIN_OUT_LIMIT);
        commands(&mut l);
        l.closed(conn(20), "not reading", now);
        assert!(next_dial(&mut l, A, now) <= ms(50) + TIMER_TICK);
    }
}
