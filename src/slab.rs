//! A slab of connections indexed by mio token, with a generation per slot.
//!
//! Slots are reused, so a token alone does not name a connection for long: a Places answer
//! can come back after its connection closed and a new one took the slot. Each insert
//! gets the slot's current generation; `get_live` only answers for the generation given.

pub struct Slab<T> {
    slots: Vec<Slot<T>>,
    /// Indices of empty slots, reused last-in first-out (warm in cache).
    free: Vec<usize>,
    len: usize,
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

impl<T> Default for Slab<T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
        }
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The index and generation the next `insert` will use.
    pub fn vacant(&self) -> (usize, u32) {
        match self.free.last() {
            Some(&i) => (i, self.slots[i].generation),
            None => (self.slots.len(), 0),
        }
    }

    /// Stores `value`; returns its index and generation.
    pub fn insert(&mut self, value: T) -> (usize, u32) {
        self.len += 1;
        if let Some(i) = self.free.pop() {
            let slot = &mut self.slots[i];
            slot.value = Some(value);
            return (i, slot.generation);
        }
        self.slots.push(Slot {
            generation: 0,
            value: Some(value),
        });
        (self.slots.len() - 1, 0)
    }

    pub fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.slots.get_mut(i)?.value.as_mut()
    }

    /// The value at `i` only if it is still the one that was given `generation`.
    pub fn get_live(&mut self, i: usize, generation: u32) -> Option<&mut T> {
        let slot = self.slots.get_mut(i)?;
        if slot.generation != generation {
            return None;
        }
        slot.value.as_mut()
    }

    /// Empties slot `i`; its next occupant gets a new generation.
    pub fn remove(&mut self, i: usize) -> Option<T> {
        let slot = self.slots.get_mut(i)?;
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(i);
        self.len -= 1;
        Some(value)
    }

    /// Indices of occupied slots.
    pub fn keys(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, _)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn insert_get_remove() {
        let mut s = Slab::default();
        let (a, ga) = s.insert("a");
        let (b, _) = s.insert("b");
        assert_ne!(a, b);
        assert_eq!(s.get_mut(a), Some(&mut "a"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.get_live(a, ga), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn reused_slot_gets_a_new_generation_and_stale_lookups_miss() {
        let mut s = Slab::default();
        let (i, g0) = s.insert(1);
        s.remove(i);
        assert_eq!(s.vacant().0, i);
        let (j, g1) = s.insert(2);
        assert_eq!(i, j);
        assert_ne!(g0, g1);
        assert_eq!(s.get_live(i, g0), None);
        assert_eq!(s.get_live(i, g1), Some(&mut 2));
    }

    #[test]
    fn vacant_predicts_insert() {
        let mut s = Slab::default();
        for n in 0..5 {
            let v = s.vacant();
            assert_eq!(s.insert(n), v);
        }
        s.remove(3);
        let v = s.vacant();
        assert_eq!(s.insert(9), v);
        assert_eq!(s.keys().count(), 5);
    }

    #[test]
    fn out_of_range_index_is_none() {
        let mut s: Slab<u8> = Slab::default();
        assert!(s.get_mut(7).is_none());
        assert!(s.get_live(7, 0).is_none());
        assert!(s.remove(7).is_none());
    }
}
