//! The location table: for each client, the one AT record that announced its latest
//! location (SPEC §3).
//!
//! The ordering rule is what makes flooding converge and stop: a record replaces another
//! only if its client time is later, or on equal time if its AT line is byte-wise greater.
//! Every server applies the same total order, so all end with the same record, and a
//! record that does not win is neither stored nor forwarded.

use std::collections::HashMap;

use crate::protocol::{Location, Timestamp};

/// A stored record.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub time: Timestamp,
    /// The AT line as first produced by the server that took the IAMAT, without `\n`.
    pub line: Box<[u8]>,
    pub location: Location,
}

#[derive(Default)]
pub struct Table {
    records: HashMap<Box<[u8]>, Record>,
}

impl Table {
    pub fn get(&self, client: &[u8]) -> Option<&Record> {
        self.records.get(client)
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Stores the record if it beats the one held for `client`; true if it was stored.
    /// Allocates only for a winner, since most offers in a flood are duplicates.
    pub fn offer(&mut self, client: &[u8], time: Timestamp, line: &[u8], location: Location) -> bool {
        match self.records.get_mut(client) {
            Some(held) => {
                if (time, line) <= (held.time, &held.line[..]) {
                    return false;
                }
                held.time = time;
                held.location = location;
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
                    location,
                };
                self.records.insert(client.into(), record);
            }
        }
        true
    }

    /// Every stored record, for the catch-up sync on a new link.
    pub fn records(&self) -> impl Iterator<Item = &Record> {
        self.records.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s.as_bytes()).unwrap_or_else(|| panic!("bad time {s}"))
    }

    const HERE: Location = Location { lat: 1.0, lng: 2.0 };

    fn offer(t: &mut Table, time: &str, line: &str) -> bool {
        t.offer(b"kiwi", ts(time), line.as_bytes(), HERE)
    }

    fn held(t: &Table) -> String {
        t.get(b"kiwi")
            .map(|r| String::from_utf8_lossy(&r.line).into_owned())
            .unwrap_or_default()
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
        t.offer(b"a", ts("5"), b"AT A +0.1 a +1+2 5", HERE);
        t.offer(b"b", ts("1"), b"AT A +0.1 b +1+2 1", HERE);
        assert_eq!(t.len(), 2);
        assert_eq!(t.records().count(), 2);
        assert!(t.get(b"c").is_none());
    }
}
