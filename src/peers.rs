//! Neighbour links (SPEC §3): what this server knows about each neighbour and the state of
//! the link it dials to it.
//!
//! Every server dials each neighbour's peer port and sends `HELLO <name>`, its whole table,
//! then records as they win; the neighbour's own dial to us carries records the other way.
//! So records are only ever *written* on links we dialled (`Link`) and only *read* on
//! links we accepted. The reactor owns the sockets; this module holds the per-neighbour
//! state, the outbox that batches records per loop pass, and the rules for moving between
//! states, so they can be tested without sockets.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use crate::timer::{Backoff, TimerId};

/// First retry after a link is lost; doubles up to `RETRY_CAP`.
pub const RETRY_BASE: Duration = Duration::from_millis(50);
/// A neighbour that comes back is redialled within this (SPEC §3: within a second, with
/// room for the connect itself).
pub const RETRY_CAP: Duration = Duration::from_millis(500);
/// mio has no connect timeout; the timer wheel gives up on a dial after this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Output queued to a neighbour that does not read, beyond which the link is dropped (and
/// later resynced from the table): a stalled neighbour must not cost unbounded memory.
pub const MIN_OUT_LIMIT: usize = 8 << 20;

/// Our outbound link to one neighbour.
#[derive(Debug, PartialEq)]
pub enum Link {
    /// Not connected; a retry is scheduled.
    Down { retry: TimerId },
    /// A non-blocking connect is in flight on connection `token`.
    Connecting { token: usize, timeout: TimerId },
    /// Connected; HELLO and the table were queued.
    Up { token: usize },
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Link::Down { .. } => "down",
            Link::Connecting { .. } => "connecting",
            Link::Up { .. } => "up",
        })
    }
}

pub struct Neighbour {
    pub name: String,
    pub addr: SocketAddr,
    pub link: Link,
    pub backoff: Backoff,
    /// Records to send on the next flush: one write per pass, not one per record.
    pub outbox: Vec<u8>,
    /// Queued output past which the link counts as stalled; set when the link comes up
    /// (the initial table sync alone may be large).
    pub out_limit: usize,
    /// The connection the neighbour dialled to us, once its HELLO arrived.
    pub inbound: Option<usize>,
}

impl Neighbour {
    pub fn new(name: String, addr: SocketAddr, retry: TimerId) -> Neighbour {
        Neighbour {
            name,
            addr,
            link: Link::Down { retry },
            backoff: Backoff::new(RETRY_BASE, RETRY_CAP),
            outbox: Vec::new(),
            out_limit: MIN_OUT_LIMIT,
            inbound: None,
        }
    }

    /// The connection records go out on, if the link is up.
    pub fn up_token(&self) -> Option<usize> {
        match self.link {
            Link::Up { token } => Some(token),
            _ => None,
        }
    }

    /// Queues a record (an AT line without `\n`) if the link can carry it; a record for a
    /// link that is not up is dropped, since the table sync on link-up resends it.
    pub fn queue(&mut self, line: &[u8]) {
        if self.up_token().is_some() {
            self.outbox.extend_from_slice(line);
            self.outbox.push(b'\n');
        }
    }
}

/// The HELLO and full-table sync that open a link, and the stall limit that goes with it.
pub fn greeting<'a>(me: &str, records: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> usize {
    out.extend_from_slice(b"HELLO ");
    out.extend_from_slice(me.as_bytes());
    out.push(b'\n');
    for line in records {
        out.extend_from_slice(line);
        out.push(b'\n');
    }
    MIN_OUT_LIMIT.max(2 * out.len())
}

/// Index of the neighbour called `name`.
pub fn find(neighbours: &[Neighbour], name: &[u8]) -> Option<usize> {
    neighbours.iter().position(|n| n.name.as_bytes() == name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timer::TimerWheel;
    use std::time::Instant;

    fn neighbour() -> Neighbour {
        let mut wheel = TimerWheel::new(Duration::from_millis(5), 8, Instant::now());
        let id = wheel.insert(Instant::now(), ());
        Neighbour::new("Bona".into(), ([127, 0, 0, 1], 1).into(), id)
    }

    #[test]
    fn records_are_queued_only_while_the_link_is_up() {
        let mut n = neighbour();
        n.queue(b"AT A +0.000000001 c +1+1 1");
        assert!(n.outbox.is_empty(), "down: dropped, resynced later");
        n.link = Link::Up { token: 3 };
        n.queue(b"AT A +0.000000001 c +1+1 1");
        n.queue(b"AT A +0.000000001 d +1+1 2");
        assert_eq!(
            n.outbox,
            b"AT A +0.000000001 c +1+1 1\nAT A +0.000000001 d +1+1 2\n"
        );
        assert_eq!(n.up_token(), Some(3));
    }

    #[test]
    fn greeting_is_hello_then_every_record() {
        let mut out = Vec::new();
        let recs: [&[u8]; 2] = [b"AT A +1.000000000 x +1+1 1", b"AT B -1.000000000 y +2+2 2"];
        let limit = greeting("Bailey", recs.into_iter(), &mut out);
        assert_eq!(
            out,
            b"HELLO Bailey\nAT A +1.000000000 x +1+1 1\nAT B -1.000000000 y +2+2 2\n"
        );
        assert_eq!(limit, MIN_OUT_LIMIT);
    }

    #[test]
    fn a_large_table_raises_the_stall_limit_above_its_own_size() {
        let line = vec![b'x'; 1000];
        let recs = std::iter::repeat_n(&line[..], 10_000);
        let mut out = Vec::new();
        let limit = greeting("A", recs, &mut out);
        assert!(limit >= 2 * out.len() && limit > MIN_OUT_LIMIT);
    }

    #[test]
    fn find_by_name_is_exact() {
        let ns = vec![neighbour()];
        assert_eq!(find(&ns, b"Bona"), Some(0));
        assert_eq!(find(&ns, b"bona"), None);
        assert_eq!(find(&ns, b"Bon"), None);
    }

    #[test]
    fn link_states_display_for_logs() {
        assert_eq!(Link::Up { token: 1 }.to_string(), "up");
    }
}
