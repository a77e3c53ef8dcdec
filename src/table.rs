//! The location table: for each client, the one AT record that announced its latest
//! location (SPEC §3).
//!
//! The ordering rule is what makes flooding converge and stop: a record replaces another
//! only if its client time is later, or on equal time if its AT line is byte-wise greater.
//! Every server applies the same total order, so all end with the same record, and a
//! record that does not win is neither stored nor forwarded.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use std::ops::Range;

use crate::protocol::Timestamp;

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

impl Table {
    pub fn get(&self, client: &[u8]) -> Option<&Record> {
        self.records.get(client)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Stores the record if it beats the one held for `client`; true if it was stored.
    /// Allocates only for a winner, since most offers in a flood are duplicates.
    /// `location` is where the location text sits in `line`.
    pub fn offer(&mut self, client: &[u8], time: Timestamp, line: &[u8], location: Range<usize>) -> bool {
        match self.records.get_mut(client) {
            Some(held) => {
                if (time, line) <= (held.time, &held.line[..]) {
                    return false;
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
        true
    }

    /// Every stored record.
    #[allow(dead_code)] // the state snapshots take it, being wired alongside
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
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
