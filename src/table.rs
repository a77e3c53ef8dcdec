//! The location table: for each client, the one AT record that announced its latest
//! location (SPEC §3).
//!
//! The ordering rule is what makes flooding converge and stop: a record replaces another
//! only if its client time is later, or on equal time if its AT line is byte-wise greater.
//! Every server applies the same total order, so all end with the same record, and a
//! record that does not win is neither stored nor forwarded.
//!
//! SPEC §7's table rules live here too, judged by client time against the wall clock the
//! caller passes in: a record too far in the future is refused, one older than the ttl is
//! refused and forgotten (by client time, so every server forgets the same records without
//! a message), and a full table takes no new client. Expiry uses a min-heap of (client
//! time, client) pushed on every win; stale entries (the client has a newer record since)
//! are skipped when they surface, and the heap is rebuilt when they outnumber the records.

use std::borrow::Borrow;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::hash::{Hash, Hasher};
use std::time::Duration;

use std::ops::Range;

use crate::protocol::Timestamp;

/// Expired records forgotten per `tick` at most, so one pass after a long quiet spell (or a
/// clock jump) cannot stall the reactor; the rest go on the next passes.
pub const SWEEP_PER_TICK: usize = 4096;

/// SPEC §7's rules for what the table takes. `None`/0 turns a rule off.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Rules {
    /// A record whose client time is further ahead of the clock than this is refused.
    pub max_future: Option<Duration>,
    /// The most clients held; 0 = no bound.
    pub max_clients: usize,
    /// A record whose client time is older than this is refused and forgotten.
    pub ttl: Option<Duration>,
}

/// What became of an offered record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offer {
    /// Stored: it is the client's record now.
    Won,
    /// Not newer than the record held: dropped.
    Lost,
    /// Its client time is more than `max_future` ahead of the clock.
    TooFuture,
    /// Its client time is more than `ttl` behind the clock.
    Expired,
    /// A new client, and the table already holds `max_clients`.
    Full,
}

/// A stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub time: Timestamp,
    /// The AT line as first produced by the server that took the IAMAT, without `\n`.
    pub line: Box<[u8]>,
    /// Where the location text sits in `line` (as the AT line's writer reported it), so a
    /// WHATSAT reads it without parsing the line again.
    location: (u32, u32),
}

impl Record {
    /// The location field of the stored line.
    pub fn location(&self) -> &[u8] {
        let (start, end) = (self.location.0 as usize, self.location.1 as usize);
        self.line.get(start..end).unwrap_or_default()
    }
}

/// A range as two u32s: a record is one line, far below 4 GiB; a range that does not fit
/// becomes empty, which reads as an invalid location rather than a wrong one.
fn narrow(r: Range<usize>) -> (u32, u32) {
    match (u32::try_from(r.start), u32::try_from(r.end)) {
        (Ok(a), Ok(b)) => (a, b),
        _ => (0, 0),
    }
}

#[derive(Default)]
pub struct Table {
    records: HashMap<Key, Record>,
    /// Records ever added: with `len`, how many were ever removed, which a `Cursor` needs.
    inserted: u64,
    rules: Rules,
    /// The wall clock as of the last `tick`.
    clock: Timestamp,
    /// Records with a client time before this are expired (ttl on only).
    cutoff: Option<Timestamp>,
    /// (client time, client) of every win while the ttl is on, earliest on top.
    expiry: BinaryHeap<Reverse<(Timestamp, Key)>>,
    /// New clients refused because the table was full, since start.
    full_refusals: u64,
}

/// Where a table sync has got to: a position in the map's iteration order, which stays put
/// while records are added or replaced without the map growing. A removal shifts later
/// records back by one, so the cursor steps back by the removals since its last step; a
/// map that was rebuilt (grown or shrunk) starts it over. Either way it may send a record
/// twice, never skip one that was there all along (a record added meanwhile is flooded).
#[derive(Clone, Debug)]
pub struct Cursor {
    pos: usize,
    capacity: usize,
    removed: u64,
}

/// Client ids up to this long are held inside the table's own memory.
const INLINE: usize = 22;

/// A client id as the table's key: inline when short, as client ids are, so a lookup
/// compares it where the hash probe already looked instead of following a pointer to
/// another allocation. Under load the table is the server's largest working set, and that
/// extra cache miss per IAMAT showed in profiles. Hashes and compares as its bytes.
#[derive(Clone, Debug)]
enum Key {
    Inline { len: u8, bytes: [u8; INLINE] },
    Heap(Box<[u8]>),
}

impl Key {
    fn new(client: &[u8]) -> Key {
        match u8::try_from(client.len()) {
            Ok(len) if client.len() <= INLINE => {
                let mut bytes = [0; INLINE];
                bytes[..client.len()].copy_from_slice(client);
                Key::Inline { len, bytes }
            }
            _ => Key::Heap(client.into()),
        }
    }

    fn as_slice(&self) -> &[u8] {
        match self {
            Key::Inline { len, bytes } => &bytes[..usize::from(*len)],
            Key::Heap(bytes) => bytes,
        }
    }
}

// `HashMap::get(&[u8])` relies on these agreeing with `[u8]`'s own Hash and Eq.
impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Key) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for Key {}

impl Ord for Key {
    fn cmp(&self, other: &Key) -> Ordering {
        self.as_slice().cmp(other.as_slice())
    }
}

impl PartialOrd for Key {
    fn partial_cmp(&self, other: &Key) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Table {
    /// A table that applies `rules`; call `tick` before the first offer.
    pub fn with_rules(rules: Rules) -> Table {
        Table {
            rules,
            ..Table::default()
        }
    }

    /// The client's record, unless it has expired.
    pub fn get(&self, client: &[u8]) -> Option<&Record> {
        self.records.get(client).filter(|r| self.live(r))
    }

    fn live(&self, r: &Record) -> bool {
        self.cutoff.is_none_or(|cutoff| r.time >= cutoff)
    }

    /// Sets the wall clock the rules are judged by and forgets up to `SWEEP_PER_TICK`
    /// expired records. Called once per loop pass.
    pub fn tick(&mut self, now: Timestamp) {
        self.clock = now;
        let Some(ttl) = self.rules.ttl else {
            return;
        };
        let cutoff = now.saturating_sub(ttl);
        self.cutoff = Some(cutoff);
        for _ in 0..SWEEP_PER_TICK {
            match self.expiry.peek() {
                Some(Reverse((time, _))) if *time < cutoff => {}
                _ => return,
            }
            let Some(Reverse((time, key))) = self.expiry.pop() else {
                return;
            };
            // Only if this entry is still the client's record: a newer one has its own.
            if self.records.get(&key).is_some_and(|r| r.time == time) {
                self.records.remove(&key);
            }
        }
    }

    /// The wall clock as of the last `tick`.
    pub fn clock(&self) -> Timestamp {
        self.clock
    }

    /// New clients refused because the table was full, since start.
    pub fn full_refusals(&self) -> u64 {
        self.full_refusals
    }

    pub fn max_clients(&self) -> usize {
        self.rules.max_clients
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// `offer_at` by the clock of the last `tick`; true if the record was stored. The
    /// tests' short form.
    #[cfg(test)]
    pub fn offer(&mut self, client: &[u8], time: Timestamp, line: &[u8], location: Range<usize>) -> bool {
        self.offer_at(self.clock, client, time, line, location) == Offer::Won
    }

    /// Stores the record if the rules allow it at wall time `now` and it beats the one held
    /// for `client`. Allocates only for a winner, since most offers in a flood are
    /// duplicates. `location` is where the location text sits in `line`.
    pub fn offer_at(
        &mut self,
        now: Timestamp,
        client: &[u8],
        time: Timestamp,
        line: &[u8],
        location: Range<usize>,
    ) -> Offer {
        if self
            .rules
            .max_future
            .is_some_and(|f| time > now.saturating_add(f))
        {
            return Offer::TooFuture;
        }
        if self.rules.ttl.is_some_and(|ttl| time < now.saturating_sub(ttl)) {
            return Offer::Expired;
        }
        let full = self.rules.max_clients != 0 && self.records.len() >= self.rules.max_clients;
        match self.records.get_mut(client) {
            // An expired record that the sweep has not reached yet loses to anything live.
            Some(held) if self.cutoff.is_some_and(|c| held.time < c) => {
                held.time = time;
                held.location = narrow(location);
                held.line = line.into();
            }
            Some(held) => {
                if (time, line) <= (held.time, &held.line[..]) {
                    return Offer::Lost;
                }
                held.time = time;
                held.location = narrow(location);
                // A client's AT lines mostly keep their length: reuse the allocation.
                if held.line.len() == line.len() {
                    held.line.copy_from_slice(line);
                } else {
                    held.line = line.into();
                }
            }
            None if full => {
                self.full_refusals += 1;
                return Offer::Full;
            }
            None => {
                let record = Record {
                    time,
                    line: line.into(),
                    location: narrow(location),
                };
                self.records.insert(Key::new(client), record);
                self.inserted += 1;
            }
        }
        if self.rules.ttl.is_some() {
            self.remember_expiry(client, time);
        }
        Offer::Won
    }

    /// Indexes a win for expiry; rebuilds the index from the records once stale entries
    /// (superseded wins) make up more than half of it, so it stays O(clients).
    fn remember_expiry(&mut self, client: &[u8], time: Timestamp) {
        self.expiry.push(Reverse((time, Key::new(client))));
        if self.expiry.len() > 2 * self.records.len() + 1024 {
            let entries: Vec<_> = self
                .records
                .iter()
                .map(|(k, r)| Reverse((r.time, k.clone())))
                .collect();
            self.expiry = BinaryHeap::from(entries);
        }
    }

    /// Every live record: an expired one is neither synced nor saved (SPEC §7).
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values().filter(|r| self.live(r))
    }

    fn removed(&self) -> u64 {
        self.inserted.saturating_sub(self.records.len() as u64)
    }

    /// A cursor at the first record, for a table sync.
    pub fn cursor(&self) -> Cursor {
        Cursor {
            pos: 0,
            capacity: self.records.capacity(),
            removed: self.removed(),
        }
    }

    /// Hands `each` the records from `cursor` on until it returns false; true when the
    /// table is done. Finding the place again walks the map from its start, which costs a
    /// few ns a record: with chunks of a few thousand records, little next to writing them.
    pub fn resume(&self, cursor: &mut Cursor, mut each: impl FnMut(&Record) -> bool) -> bool {
        let removed = self.removed();
        if cursor.capacity != self.records.capacity() {
            *cursor = self.cursor();
        } else {
            let back = usize::try_from(removed - cursor.removed.min(removed)).unwrap_or(usize::MAX);
            cursor.pos = cursor.pos.saturating_sub(back);
            cursor.removed = removed;
        }
        for record in self.records.values().skip(cursor.pos) {
            cursor.pos += 1;
            // SPEC §7: an expired record is not synced.
            if !self.live(record) {
                continue;
            }
            if !each(record) {
                return cursor.pos >= self.records.len();
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s.as_bytes()).unwrap_or_else(|| panic!("bad time {s}"))
    }

    /// The location range of an AT line, found the slow way.
    fn loc(line: &[u8]) -> Range<usize> {
        let field = crate::protocol::fields(line).nth(4).unwrap_or_default();
        let start = field.as_ptr() as usize - line.as_ptr() as usize;
        start..start + field.len()
    }

    fn offer(t: &mut Table, time: &str, line: &str) -> bool {
        t.offer(b"kiwi", ts(time), line.as_bytes(), loc(line.as_bytes()))
    }

    fn held(t: &Table) -> String {
        t.get(b"kiwi")
            .map(|r| String::from_utf8_lossy(&r.line).into_owned())
            .unwrap_or_default()
    }

    #[test]
    fn the_location_is_read_from_where_the_writer_said() {
        let mut t = Table::default();
        offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10");
        assert_eq!(t.get(b"kiwi").map(Record::location), Some(&b"+1+2"[..]));
        offer(&mut t, "11", "AT Bona +0.1 kiwi -33.5+151.25 11");
        assert_eq!(t.get(b"kiwi").map(Record::location), Some(&b"-33.5+151.25"[..]));
    }

    #[test]
    fn first_record_is_stored() {
        let mut t = Table::default();
        assert!(offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10"));
        assert_eq!(held(&t), "AT A +0.1 kiwi +1+2 10");
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn later_time_replaces_and_earlier_time_is_dropped() {
        let mut t = Table::default();
        offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10");
        assert!(offer(&mut t, "11", "AT B +0.1 kiwi +1+2 11"));
        assert!(!offer(&mut t, "10.5", "AT C +0.1 kiwi +1+2 10.5"));
        assert_eq!(held(&t), "AT B +0.1 kiwi +1+2 11");
    }

    #[test]
    fn equal_record_is_not_a_winner() {
        let mut t = Table::default();
        offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10");
        assert!(!offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10"));
    }

    #[test]
    fn equal_time_breaks_ties_by_bytewise_greater_line_in_either_arrival_order() {
        let small = "AT Bailey +0.1 kiwi +1+2 10";
        let big = "AT Bona +0.1 kiwi +1+2 10";
        for (first, second) in [(small, big), (big, small)] {
            let mut t = Table::default();
            offer(&mut t, "10", first);
            offer(&mut t, "10", second);
            assert_eq!(held(&t), big);
        }
    }

    #[test]
    fn times_equal_after_nanosecond_truncation_tie_break_on_the_line() {
        let mut t = Table::default();
        offer(&mut t, "10.1234567891", "AT B +0.1 kiwi +1+2 10.1234567891");
        assert!(!offer(
            &mut t,
            "10.1234567899",
            "AT A +0.1 kiwi +1+2 10.1234567899"
        ));
        assert!(offer(&mut t, "10.123456789", "AT C +0.1 kiwi +1+2 10.123456789"));
    }

    #[test]
    fn a_winner_of_a_different_length_replaces_the_whole_line() {
        let mut t = Table::default();
        offer(&mut t, "10", "AT A +0.1 kiwi +1+2 10");
        assert!(offer(&mut t, "11", "AT Bona +12.5 kiwi +1.5+2 11"));
        assert_eq!(held(&t), "AT Bona +12.5 kiwi +1.5+2 11");
        assert!(offer(&mut t, "12", "AT B +1 kiwi +1+2 12"));
        assert_eq!(held(&t), "AT B +1 kiwi +1+2 12");
        assert_eq!(t.get(b"kiwi").map(|r| r.time), Some(ts("12")));
    }

    #[test]
    fn clients_are_independent() {
        let mut t = Table::default();
        t.offer(b"a", ts("5"), b"AT A +0.1 a +1+2 5", 11..15);
        t.offer(b"b", ts("1"), b"AT A +0.1 b +1+2 1", 11..15);
        assert_eq!(t.len(), 2);
        assert_eq!(t.records().count(), 2);
        assert!(t.get(b"c").is_none());
    }

    fn ruled(max_future: u64, max_clients: usize, ttl: u64) -> Table {
        let secs = |s| (s > 0).then(|| Duration::from_secs(s));
        let mut t = Table::with_rules(Rules {
            max_future: secs(max_future),
            max_clients,
            ttl: secs(ttl),
        });
        t.tick(ts("1000"));
        t
    }

    fn offer_as(t: &mut Table, client: &str, time: &str) -> Offer {
        let line = format!("AT A +0.1 {client} +1+2 {time}");
        let now = t.clock;
        t.offer_at(
            now,
            client.as_bytes(),
            ts(time),
            line.as_bytes(),
            loc(line.as_bytes()),
        )
    }

    #[test]
    fn a_record_too_far_ahead_of_the_clock_is_refused() {
        let mut t = ruled(100, 0, 0);
        assert_eq!(
            offer_as(&mut t, "kiwi", "1100"),
            Offer::Won,
            "exactly max_future ahead"
        );
        assert_eq!(offer_as(&mut t, "kiwi", "1100.000000001"), Offer::TooFuture);
        assert_eq!(offer_as(&mut t, "new", "999999999999"), Offer::TooFuture);
        assert!(t.get(b"new").is_none());
        let mut off = ruled(0, 0, 0);
        assert_eq!(offer_as(&mut off, "kiwi", "999999999999"), Offer::Won);
    }

    #[test]
    fn a_full_table_refuses_new_clients_only_and_counts_them() {
        let mut t = ruled(0, 2, 0);
        assert_eq!(offer_as(&mut t, "a", "1"), Offer::Won);
        assert_eq!(offer_as(&mut t, "b", "1"), Offer::Won);
        assert_eq!(offer_as(&mut t, "c", "1"), Offer::Full);
        assert_eq!(offer_as(&mut t, "d", "1"), Offer::Full);
        assert_eq!(
            offer_as(&mut t, "a", "2"),
            Offer::Won,
            "a known client still updates"
        );
        assert_eq!(offer_as(&mut t, "a", "0.5"), Offer::Lost);
        assert_eq!((t.len(), t.full_refusals()), (2, 2));
    }

    #[test]
    fn records_older_than_the_ttl_are_refused_hidden_and_swept() {
        let mut t = ruled(0, 0, 100);
        assert_eq!(offer_as(&mut t, "old", "899.999999999"), Offer::Expired);
        assert_eq!(offer_as(&mut t, "a", "900"), Offer::Won);
        assert_eq!(offer_as(&mut t, "b", "950"), Offer::Won);
        t.tick(ts("1000.5"));
        assert!(t.get(b"a").is_none(), "expired: WHATSAT finds nothing");
        assert!(t.get(b"b").is_some());
        assert_eq!(t.records().count(), 1, "an expired record is not synced");
        assert_eq!(t.len(), 1, "and it was swept");
        // b renewed before its time: its first heap entry is stale and must not remove it.
        assert_eq!(offer_as(&mut t, "b", "1000"), Offer::Won);
        t.tick(ts("1060"));
        assert!(t.get(b"b").is_some());
        t.tick(ts("1100.000000001"));
        assert_eq!((t.len(), t.get(b"b").map(|r| r.time)), (0, None));
    }

    #[test]
    fn an_expired_record_not_yet_swept_loses_to_any_live_one() {
        let mut t = ruled(0, 0, 100);
        for i in 0..SWEEP_PER_TICK + 1 {
            assert_eq!(offer_as(&mut t, &format!("c{i}"), "901"), Offer::Won);
        }
        t.tick(ts("1002"));
        assert_eq!(t.len(), 1, "one pass sweeps at most SWEEP_PER_TICK");
        let left = (0..SWEEP_PER_TICK + 1)
            .map(|i| format!("c{i}"))
            .find(|c| t.records.contains_key(c.as_bytes()))
            .unwrap_or_default();
        assert!(t.get(left.as_bytes()).is_none());
        // Older than the held (expired) record but live: it wins.
        assert_eq!(offer_as(&mut t, &left, "950"), Offer::Won);
        assert!(t.get(left.as_bytes()).is_some());
    }

    #[test]
    fn the_expiry_index_stays_proportional_to_the_clients() {
        let mut t = ruled(0, 0, 1_000_000);
        for i in 0..20_000 {
            offer_as(&mut t, "kiwi", &format!("{}", 1 + i));
        }
        assert!(t.expiry.len() <= 2 * t.len() + 1024, "{}", t.expiry.len());
        t.tick(ts("1000020"));
        assert_eq!(t.get(b"kiwi").map(|r| r.time), Some(ts("20000")));
    }

    #[test]
    fn ids_of_every_length_around_the_inline_limit_are_told_apart() {
        // Lengths 0..=2*INLINE, ids that are prefixes of each other, and ids that differ
        // only by trailing NUL bytes (the inline padding): each finds its own record.
        let mut t = Table::default();
        let mut ids: Vec<Vec<u8>> = (0..=2 * INLINE).map(|n| vec![b'k'; n]).collect();
        ids.extend((0..=2 * INLINE).map(|n| [vec![b'k'; n], vec![0]].concat()));
        for (i, id) in ids.iter().enumerate() {
            let line = format!("AT A +0.1 line{i} +1+2 5");
            assert!(
                t.offer(id, ts("5"), line.as_bytes(), loc(line.as_bytes())),
                "id {i}"
            );
        }
        assert_eq!(t.len(), ids.len());
        for (i, id) in ids.iter().enumerate() {
            let line = t.get(id).map(|r| String::from_utf8_lossy(&r.line).into_owned());
            assert_eq!(line, Some(format!("AT A +0.1 line{i} +1+2 5")), "id {i}");
            assert!(!t.offer(id, ts("4"), b"AT A +0.1 older +1+2 4", 16..20), "id {i}");
        }
        assert!(t.get(&[b'k'; 2 * INLINE + 1]).is_none());
    }
}
