//! A slab of connections indexed by mio token, with a generation per slot.
//!
//! Slots are reused, so a token alone does not name a connection for long: a Places answer
//! can come back after its connection closed and a new one took the slot. A [`ConnId`] is
//! the slot and its generation together; every lookup by id misses once the connection it
//! named is gone.

/// One connection for as long as it lives: a slot (the mio token) and that slot's
/// generation when the connection took it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnId {
    pub index: usize,
    pub generation: u32,
}

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

/// A free slot, reserved: its id is known before the value exists (the value usually needs
/// it, e.g. to register a socket under the token).
pub struct VacantEntry<'a, T> {
    slab: &'a mut Slab<T>,
    id: ConnId,
}

impl<T> VacantEntry<'_, T> {
    pub fn id(&self) -> ConnId {
        self.id
    }

    pub fn insert(self, value: T) -> ConnId {
        let slab = self.slab;
        let i = self.id.index;
        if slab.free.last() == Some(&i) {
            slab.free.pop();
            slab.slots[i].value = Some(value);
        } else {
            slab.slots.push(Slot {
                generation: 0,
                value: Some(value),
            });
        }
        slab.len += 1;
        self.id
    }
}

impl<T> Slab<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    /// The slot the next value goes into; nothing changes unless `insert` is called on it.
    pub fn vacant_entry(&mut self) -> VacantEntry<'_, T> {
        let id = match self.free.last() {
            Some(&i) => ConnId {
                index: i,
                generation: self.slots[i].generation,
            },
            None => ConnId {
                index: self.slots.len(),
                generation: 0,
            },
        };
        VacantEntry { slab: self, id }
    }

    /// The id of whatever lives in slot `i` now (for a poll event, which only has the
    /// token).
    pub fn id_at(&self, i: usize) -> Option<ConnId> {
        let slot = self.slots.get(i)?;
        slot.value.as_ref()?;
        Some(ConnId {
            index: i,
            generation: slot.generation,
        })
    }

    /// The value `id` names, if it is still there.
    pub fn get_mut(&mut self, id: ConnId) -> Option<&mut T> {
        let slot = self.slots.get_mut(id.index)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub fn get(&self, id: ConnId) -> Option<&T> {
        let slot = self.slots.get(id.index)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    /// Empties the slot `id` names; its next occupant gets a new generation.
    pub fn remove(&mut self, id: ConnId) -> Option<T> {
        let slot = self.slots.get_mut(id.index)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = slot.generation.wrapping_add(1);
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    /// Ids of every value held.
    pub fn ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slots.iter().enumerate().filter_map(|(i, s)| {
            s.value.as_ref().map(|_| ConnId {
                index: i,
                generation: s.generation,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insert<T>(s: &mut Slab<T>, v: T) -> ConnId {
        s.vacant_entry().insert(v)
    }

    #[test]
    fn insert_get_remove() {
        let mut s = Slab::default();
        let a = insert(&mut s, "a");
        let b = insert(&mut s, "b");
        assert_ne!(a, b);
        assert_eq!(s.get_mut(a), Some(&mut "a"));
        assert_eq!(s.len(), 2);
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.id_at(a.index), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn reused_slot_gets_a_new_generation_and_stale_ids_miss() {
        let mut s = Slab::default();
        let old = insert(&mut s, 1);
        s.remove(old);
        let new = insert(&mut s, 2);
        assert_eq!(old.index, new.index, "the slot is reused");
        assert_ne!(old, new);
        assert_eq!(s.get_mut(old), None);
        assert_eq!(s.remove(old), None, "a stale id removes nothing");
        assert_eq!(s.get(new), Some(&2));
        assert_eq!(s.id_at(new.index), Some(new));
    }

    #[test]
    fn a_vacant_entry_knows_its_id_and_takes_nothing_until_insert() {
        let mut s = Slab::default();
        for n in 0..5 {
            let entry = s.vacant_entry();
            let id = entry.id();
            assert_eq!(entry.insert(n), id);
        }
        let three = s.id_at(3).expect("slot 3");
        s.remove(three);
        let unused = s.vacant_entry().id();
        assert_eq!(unused.index, 3);
        assert_eq!(s.len(), 4, "an entry not inserted into holds nothing");
        let entry = s.vacant_entry();
        assert_eq!(entry.id(), unused);
        assert_eq!(entry.insert(9), unused);
        assert_eq!(s.ids().count(), 5);
    }

    #[test]
    fn out_of_range_index_is_none() {
        let mut s: Slab<u8> = Slab::default();
        let id = ConnId {
            index: 7,
            generation: 0,
        };
        assert!(s.get_mut(id).is_none());
        assert!(s.id_at(7).is_none());
        assert!(s.remove(id).is_none());
    }
}
