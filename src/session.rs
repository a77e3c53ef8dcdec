//! Client sessions (SPEC §2): what one client line does and the order replies leave in.
//! No sockets and no mio: a session writes into its connection's `WriteQueue` and the
//! reactor flushes it.
//!
//! Replies go out in request order: a WHATSAT waiting on Places holds back the replies
//! queued after it on its connection, and only there. Each message is logged as one line
//! naming what was received and what was sent, so a busy server writes one record per
//! request.

use std::collections::VecDeque;
use std::time::SystemTime;

use log::{debug, info};

use crate::lines::{Line, WriteQueue};
use crate::links::Links;
use crate::logging::{self, Shown};
use crate::metrics::{MessageKind, Metrics};
use crate::places::{self, Pool, Submit};
use crate::protocol::{self, Location, Parsed, Request, Timestamp};
use crate::slab::ConnId;
use crate::table::{Offer, Table};

/// Stop serving a client's input while this much of its output is unsent (the client is
/// not reading its replies); resume once it drains.
pub const OUT_HIGH: usize = 256 * 1024;
/// WHATSATs one connection may have waiting on Places before its input is paused.
pub const MAX_WAITING: usize = 64;

/// What a Places answer is addressed to: the connection that asked and the reply's place
/// in that connection's order.
pub struct Tag {
    pub conn: ConnId,
    seq: u64,
}

/// Places lookups are served round-robin over connections: one per (slot, generation).
impl crate::places::Fair for Tag {
    fn connection(&self) -> u64 {
        lane(self.conn)
    }
}

/// The connection's identity in the Places pool's fair queue.
pub fn lane(conn: ConnId) -> u64 {
    (conn.index as u64) ^ (u64::from(conn.generation) << 32)
}

/// What every message may read or change, besides its own connection.
pub struct Shared {
    pub name: String,
    /// Every server of herd.yml, for checking a record's origin.
    pub servers: Vec<String>,
    pub table: Table,
    pub links: Links,
    pub pool: Pool<Tag>,
    /// Reused for each reply and record, so an IAMAT costs no allocation.
    pub scratch: Vec<u8>,
    /// The loop pass's one reading of the monotonic clock.
    pub now: std::time::Instant,
    /// The server's counters (SPEC §8), shared with the admin thread.
    pub metrics: std::sync::Arc<Metrics>,
}

/// One client connection's side of the protocol.
pub struct Session {
    /// The client's address as text, formatted once for the log lines of every message.
    pub peer: Box<str>,
    replies: Replies,
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

    /// Fills the waiting reply `seq` with what `build` makes of its AT line and releases
    /// every reply now at the front. False if no reply `seq` is waiting.
    fn complete(&mut self, seq: u64, out: &mut WriteQueue, build: impl FnOnce(&[u8], &mut Vec<u8>)) -> bool {
        let Some(slot) = self
            .queue
            .iter_mut()
            .find(|r| matches!(r, Reply::Waiting { seq: s, .. } if *s == seq))
        else {
            return false;
        };
        let Reply::Waiting { at_line, .. } = slot else {
            return false;
        };
        let mut reply = Vec::new();
        build(at_line, &mut reply);
        self.bytes += reply.len();
        *slot = Reply::Ready(reply);
        self.waiting -= 1;
        while let Some(Reply::Ready(_)) = self.queue.front() {
            if let Some(Reply::Ready(bytes)) = self.queue.pop_front() {
                self.bytes -= bytes.len();
                out.push(&bytes);
            }
        }
        true
    }
}

/// SPEC §2: the stored AT line, `\n`, the JSON, `\n\n`.
fn write_whatsat_reply(at_line: &[u8], json: &str, out: &mut Vec<u8>) {
    out.reserve(at_line.len() + json.len() + 3);
    out.extend_from_slice(at_line);
    out.push(b'\n');
    out.extend_from_slice(json.as_bytes());
    out.extend_from_slice(b"\n\n");
}

/// Builds a WHATSAT reply and logs it, whether the answer is immediate (bound 0, no key,
/// busy) or came later from the pool: `received` is the message when it is answered at
/// once, `None` when it was logged as waiting.
fn answer_whatsat(peer: &str, received: Option<&[u8]>, at_line: &[u8], json: &str, out: &mut Vec<u8>) {
    write_whatsat_reply(at_line, json, out);
    // The reply as sent (SPEC §4), cut at 256 bytes and marked with its length like any
    // logged text (§7): the AT line and the head of the JSON.
    logging::message(|l| {
        l.text(peer);
        match received {
            Some(line) => l.text(" recv: ").shown(line).text(" | sent: "),
            None => l.text(" sent: "),
        }
        .shown(out);
    });
}

impl Session {
    pub fn new(peer: Box<str>) -> Session {
        Session {
            peer,
            replies: Replies::default(),
        }
    }

    /// True while the client is behind on reading or has too much waiting on Places: its
    /// input is not served until that changes.
    pub fn backpressured(&self, out: &WriteQueue) -> bool {
        out.len() + self.replies.bytes >= OUT_HIGH || self.replies.waiting >= MAX_WAITING
    }

    /// Some reply waits for a Places answer.
    pub fn awaits_places(&self) -> bool {
        self.replies.waiting > 0
    }

    /// No reply is held back.
    pub fn is_idle(&self) -> bool {
        self.replies.queue.is_empty()
    }

    /// Answers one client message (SPEC §2).
    pub fn on_line(&mut self, sh: &mut Shared, conn: ConnId, out: &mut WriteQueue, line: Line<'_>) {
        let scratch = &mut sh.scratch;
        scratch.clear();
        let line = match line {
            Line::Complete(line) => line,
            Line::Overlong(head) => {
                sh.metrics.message(MessageKind::Invalid);
                info!("{} recv: over-long line | sent: ? {}", self.peer, Shown(head));
                protocol::write_overlong(head, scratch);
                return self.replies.push(out, scratch);
            }
        };
        let request = match protocol::parse_client_line(line) {
            Parsed::Blank => return,
            Parsed::Invalid => return self.invalid(&sh.metrics, scratch, out, line),
            Parsed::Request(r) => r,
        };
        match request {
            Request::Iamat(req) => {
                let now = Timestamp::from_system_time(SystemTime::now());
                let location = protocol::write_at_line(&sh.name, now, &req, scratch);
                // SPEC §7: judged by the same `now` as the reply's diff. A full table is
                // counted there and reported by the reactor at most once a second.
                let won = match sh.table.offer_at(now, req.client, req.time, scratch, location) {
                    Offer::TooFuture | Offer::Full => return self.invalid(&sh.metrics, scratch, out, line),
                    offer => offer == Offer::Won,
                };
                // Only an IAMAT answered with an AT line: a refused one counts as invalid.
                sh.metrics.message(MessageKind::Iamat);
                flood_and_log(&self.peer, line, &mut sh.links, won, scratch);
                scratch.push(b'\n');
                self.replies.push(out, scratch);
            }
            Request::Whatsat(req) => {
                let Some(record) = sh.table.get(req.client) else {
                    return self.invalid(&sh.metrics, scratch, out, line);
                };
                // A stored location was checked by `Location::is_valid`, so it converts.
                let Some(location) = Location::parse(record.location()) else {
                    return self.invalid(&sh.metrics, scratch, out, line);
                };
                sh.metrics.message(MessageKind::Whatsat);
                let query = places::Query {
                    lat: location.lat,
                    lng: location.lng,
                    radius: req.radius,
                    bound: req.bound,
                };
                let at_line = record.line.clone();
                let tag = Tag {
                    conn,
                    seq: self.replies.next_seq,
                };
                match sh.pool.submit(tag, query) {
                    Submit::Now(json) => {
                        answer_whatsat(&self.peer, Some(line), &at_line, &json, scratch);
                        self.replies.push(out, scratch);
                    }
                    Submit::Queued => {
                        info!("{} recv: {} | waiting on Places", self.peer, Shown(line));
                        self.replies.wait(at_line);
                    }
                }
            }
        }
    }

    fn invalid(&mut self, metrics: &Metrics, scratch: &mut Vec<u8>, out: &mut WriteQueue, line: &[u8]) {
        metrics.message(MessageKind::Invalid);
        logging::message(|l| {
            l.text(&self.peer)
                .text(" recv: ")
                .shown(line)
                .text(" | sent: ? ")
                .shown(line);
        });
        scratch.clear();
        protocol::write_invalid(line, scratch);
        self.replies.push(out, scratch);
    }

    /// The Places answer for the WHATSAT `tag` asked: fills its place in order and
    /// releases every reply now at the front.
    pub fn places_answer(&mut self, tag: &Tag, json: &str, out: &mut WriteQueue) {
        let peer = &self.peer;
        let build = |at_line: &[u8], reply: &mut Vec<u8>| answer_whatsat(peer, None, at_line, json, reply);
        if !self.replies.complete(tag.seq, out, build) {
            debug!("{peer}: Places answer for no waiting reply");
        }
    }
}

/// Floods a winning IAMAT's record and writes the message's one log line.
fn flood_and_log(peer: &str, line: &[u8], links: &mut Links, won: bool, reply: &[u8]) {
    let to = won.then(|| links.flood(reply, None));
    logging::message(|l| {
        l.text(peer)
            .text(" recv: ")
            .shown(line)
            .text(" | sent: ")
            .shown(reply);
        if let Some(to) = to {
            l.display(to);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(out: &mut WriteQueue) -> String {
        let mut sink = Vec::new();
        assert!(matches!(out.flush(&mut sink), Ok(true)));
        String::from_utf8_lossy(&sink).into_owned()
    }

    fn whatsat(at: &[u8], json: &str) -> String {
        let mut out = Vec::new();
        write_whatsat_reply(at, json, &mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn replies_go_straight_out_while_nothing_waits() {
        let mut r = Replies::default();
        let mut out = WriteQueue::default();
        r.push(&mut out, b"one\n");
        r.push(&mut out, b"two\n");
        assert_eq!(drain(&mut out), "one\ntwo\n");
    }

    #[test]
    fn replies_after_a_waiting_whatsat_are_held_back_until_it_is_answered() {
        let mut r = Replies::default();
        let mut out = WriteQueue::default();
        r.push(&mut out, b"first\n");
        let seq = r.wait(b"AT X".to_vec().into());
        r.push(&mut out, b"after\n");
        assert_eq!(drain(&mut out), "first\n", "only what came before the wait");
        assert!(r.complete(seq, &mut out, |at, buf| write_whatsat_reply(at, "{}", buf)));
        assert_eq!(drain(&mut out), whatsat(b"AT X", "{}") + "after\n");
        assert_eq!((r.waiting, r.bytes), (0, 0));
        assert!(r.queue.is_empty());
    }

    #[test]
    fn answers_that_come_back_out_of_order_are_released_in_order() {
        let mut r = Replies::default();
        let mut out = WriteQueue::default();
        let a = r.wait(b"AT A".to_vec().into());
        let b = r.wait(b"AT B".to_vec().into());
        assert!(r.complete(b, &mut out, |at, buf| write_whatsat_reply(at, "{\"b\"}", buf)));
        assert_eq!(drain(&mut out), "", "B waits for A");
        assert!(r.complete(a, &mut out, |at, buf| write_whatsat_reply(at, "{\"a\"}", buf)));
        assert_eq!(
            drain(&mut out),
            whatsat(b"AT A", "{\"a\"}") + &whatsat(b"AT B", "{\"b\"}")
        );
        assert!(!r.complete(a, &mut out, |_, _| {}), "an answer is used once");
    }

    #[test]
    fn a_session_is_backpressured_by_unsent_output_or_by_waiting_lookups() {
        let mut s = Session::new("peer".into());
        let mut out = WriteQueue::default();
        assert!(!s.backpressured(&out));
        out.push(&vec![b'x'; OUT_HIGH]);
        assert!(s.backpressured(&out));
        let empty = WriteQueue::default();
        for _ in 0..MAX_WAITING - 1 {
            s.replies.wait(b"AT".to_vec().into());
        }
        assert!(!s.backpressured(&empty));
        s.replies.wait(b"AT".to_vec().into());
        assert!(s.backpressured(&empty));
        assert!(!s.is_idle());
    }
}
