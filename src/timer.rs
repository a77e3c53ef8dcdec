//! Hashed timer wheel for the reactor: neighbour reconnect backoff and connect-attempt
//! deadlines, with the earliest deadline becoming mio's poll timeout.
//!
//! Time is cut into fixed ticks counted from the wheel's origin. A timer lives on an intrusive
//! doubly linked list in slot `tick % slots`, so insert is O(1), cancel is O(1) plus a walk of
//! one slot when it removes that slot's earliest timer, and `expire` only visits the slots the
//! clock has moved past: at most one rotation however long the stall.
//! The wheel never reads a clock; every instant is passed in, so it is deterministic and is
//! tested without sleeps. Ids carry a generation so a stale id never cancels a newer timer
//! that reuses its storage. `Backoff` and `Jitter` compute the reconnect delays fed into it.

use std::time::{Duration, Instant};

/// End-of-list marker for the intrusive links and the free list.
const NIL: usize = usize::MAX;

/// More slots than this buys nothing for a reactor and would only cost memory (and a huge
/// `slots` argument must not abort on allocation).
const MAX_SLOTS: usize = 1 << 16;

/// Handle returned by [`TimerWheel::insert`]; only useful for [`TimerWheel::cancel`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TimerId {
    index: usize,
    generation: u64,
}

#[derive(Debug)]
struct Node<T> {
    /// `None` while the node sits on the free list.
    value: Option<T>,
    /// Bumped on release, so ids handed out for earlier occupants stop matching.
    generation: u64,
    tick: u64,
    deadline: Instant,
    list: usize,
    prev: usize,
    /// Doubles as the free-list link while the node is vacant.
    next: usize,
}

#[derive(Clone, Copy, Debug)]
struct List {
    head: usize,
    tail: usize,
    /// Earliest `(tick, deadline)` on the list, so `next_deadline` never walks timers.
    min: Option<(u64, Instant)>,
}

impl List {
    const EMPTY: List = List {
        head: NIL,
        tail: NIL,
        min: None,
    };
}

/// Single-level hashed timer wheel with injected time. See the module doc.
///
/// Deadlines are rounded up to the tick, so a timer never fires early; the one exception is a
/// deadline at or before the latest `now` the wheel was given, which fires at the next
/// [`expire`](Self::expire) whatever its tick.
#[derive(Debug)]
pub struct TimerWheel<T> {
    origin: Instant,
    tick: Duration,
    slots: usize,
    /// `slots` wheel lists, then one "overdue" list for deadlines already in the past at
    /// insert: they must fire at the next `expire`, not wait for their tick to come round.
    lists: Vec<List>,
    nodes: Vec<Node<T>>,
    free: usize,
    len: usize,
    /// Latest instant passed to `expire` (the origin before that); decides "overdue".
    now: Instant,
    /// First tick `expire` has not processed yet; every timer on a wheel list has a tick at or
    /// after it, which is what lets `expire` and `next_deadline` stop after one rotation.
    next_tick: u64,
    /// Kept between calls so a steady trickle of expiries does not allocate.
    due: Vec<(Instant, usize)>,
}

impl<T> TimerWheel<T> {
    /// `tick` granularity (e.g. 10 ms), `slots` wheel size (e.g. 256), `now` = the wheel's
    /// origin. A zero tick is taken as 1 ns and `slots` is clamped to `1..=65536`, so no
    /// argument can make the wheel panic.
    pub fn new(tick: Duration, slots: usize, now: Instant) -> Self {
        let slots = slots.clamp(1, MAX_SLOTS);
        Self {
            origin: now,
            tick: tick.max(Duration::from_nanos(1)),
            slots,
            lists: vec![List::EMPTY; slots + 1],
            nodes: Vec::new(),
            free: NIL,
            len: 0,
            now,
            next_tick: 0,
            due: Vec::new(),
        }
    }

    /// Schedule `value` at `deadline` (rounded UP to the tick, so it never fires early).
    /// Returns an id for cancel. A deadline in the past fires at the next `expire`.
    pub fn insert(&mut self, deadline: Instant, value: T) -> TimerId {
        let tick = self.ticks(deadline, true);
        let list = if deadline <= self.now {
            self.slots
        } else {
            self.slot_of(tick)
        };
        let index = self.alloc(value, tick, deadline, list);
        self.push_back(list, index);
        self.len += 1;
        TimerId {
            index,
            generation: self.nodes[index].generation,
        }
    }

    /// Removes a pending timer and hands its value back; `None` if it already fired, was
    /// cancelled, or the id is not from this wheel.
    pub fn cancel(&mut self, id: TimerId) -> Option<T> {
        let node = self.nodes.get(id.index)?;
        if node.generation != id.generation || node.value.is_none() {
            return None;
        }
        let (key, list) = ((node.tick, node.deadline), node.list);
        self.unlink(id.index);
        if self.lists[list].min == Some(key) {
            self.recompute_min(list);
        }
        self.release(id.index)
    }

    /// Earliest pending deadline, rounded up to the tick (the reactor turns it into the poll
    /// timeout); `None` when empty. An overdue timer reports its own deadline, which is
    /// already past, so the poll does not block. O(slots) at worst, never O(timers).
    pub fn next_deadline(&self) -> Option<Instant> {
        if self.len == 0 {
            return None;
        }
        if let Some((_, deadline)) = self.lists[self.slots].min {
            return Some(deadline);
        }
        // Walking ticks in order, the first slot whose minimum is exactly the tick being
        // looked at holds the global minimum; if none does within a rotation, every timer is
        // at least a rotation away and the smallest slot minimum is the answer.
        let mut earliest: Option<(u64, Instant)> = None;
        for offset in 0..self.slots as u64 {
            let tick = self.next_tick.saturating_add(offset);
            let Some(key) = self.lists[self.slot_of(tick)].min else {
                continue;
            };
            if key.0 == tick {
                earliest = Some(key);
                break;
            }
            earliest = Some(earliest.map_or(key, |e| e.min(key)));
        }
        // Only a deadline within a tick of the end of time fails to round up; its own
        // deadline is then the best representable answer (an early wake-up, not an early fire).
        earliest.map(|(tick, deadline)| self.instant_of(tick).unwrap_or(deadline))
    }

    /// Moves every timer whose (rounded-up) deadline is `<= now`, plus every overdue one, into
    /// `out` in deadline order, advancing the wheel. After a long stall it catches up without
    /// skipping a timer and without visiting any slot twice. A `now` earlier than one already
    /// seen is treated as that later instant.
    pub fn expire(&mut self, now: Instant, out: &mut Vec<T>) {
        if now > self.now {
            self.now = now;
        }
        let horizon = self.ticks(self.now, false);
        let mut due = std::mem::take(&mut self.due);

        // Every overdue timer is due by definition.
        let overdue = self.slots;
        let mut cursor = self.lists[overdue].head;
        while cursor != NIL {
            let node = &self.nodes[cursor];
            due.push((node.deadline, cursor));
            cursor = node.next;
        }
        self.lists[overdue] = List::EMPTY;
        let overdue_count = due.len();

        if horizon >= self.next_tick {
            // One rotation covers every slot, so a longer stall needs no more visits: a slot
            // visited once yields all its due timers whichever rotation they were in.
            let span = (horizon - self.next_tick)
                .saturating_add(1)
                .min(self.slots as u64);
            let mut in_wheel = self.len.saturating_sub(overdue_count);
            let mut offset = 0;
            while offset < span && in_wheel > 0 {
                let slot = self.slot_of(self.next_tick + offset);
                in_wheel = in_wheel.saturating_sub(self.collect_due(slot, horizon, &mut due));
                offset += 1;
            }
            self.next_tick = horizon.saturating_add(1);
        }

        // Overdue timers were inserted after any wheel timer with an equal deadline; moving
        // them behind lets the stable sort keep insertion order among ties.
        due.rotate_left(overdue_count);
        due.sort_by_key(|&(deadline, _)| deadline);
        for &(_, index) in &due {
            if let Some(value) = self.release(index) {
                out.push(value);
            }
        }
        due.clear();
        self.due = due;
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ticks from the origin to `at`, rounded up or down; instants before the origin count
    /// as tick 0 and absurdly far ones saturate rather than wrap.
    fn ticks(&self, at: Instant, round_up: bool) -> u64 {
        let nanos = at.saturating_duration_since(self.origin).as_nanos();
        let tick = self.tick.as_nanos();
        let ticks = if round_up {
            nanos.div_ceil(tick)
        } else {
            nanos / tick
        };
        u64::try_from(ticks).unwrap_or(u64::MAX)
    }

    fn instant_of(&self, tick: u64) -> Option<Instant> {
        let nanos = self.tick.as_nanos().checked_mul(u128::from(tick))?;
        self.origin.checked_add(duration_from_nanos(nanos)?)
    }

    fn slot_of(&self, tick: u64) -> usize {
        // The remainder is below `slots`, a usize, so the cast is lossless.
        (tick % self.slots as u64) as usize
    }

    fn alloc(&mut self, value: T, tick: u64, deadline: Instant, list: usize) -> usize {
        let index = self.free;
        if let Some(node) = self.nodes.get_mut(index) {
            self.free = node.next;
            node.value = Some(value);
            node.tick = tick;
            node.deadline = deadline;
            node.list = list;
            node.prev = NIL;
            node.next = NIL;
            index
        } else {
            self.nodes.push(Node {
                value: Some(value),
                generation: 0,
                tick,
                deadline,
                list,
                prev: NIL,
                next: NIL,
            });
            self.nodes.len() - 1
        }
    }

    /// Appending keeps each list in insertion order, which `expire` relies on for ties.
    fn push_back(&mut self, list: usize, index: usize) {
        let tail = self.lists[list].tail;
        let key = {
            let node = &mut self.nodes[index];
            node.prev = tail;
            node.next = NIL;
            (node.tick, node.deadline)
        };
        if tail == NIL {
            self.lists[list].head = index;
        } else {
            self.nodes[tail].next = index;
        }
        let list = &mut self.lists[list];
        list.tail = index;
        list.min = Some(list.min.map_or(key, |m| m.min(key)));
    }

    /// Detaches a node from its list; the caller keeps the list's `min` right.
    fn unlink(&mut self, index: usize) {
        let Node { list, prev, next, .. } = self.nodes[index];
        if prev == NIL {
            self.lists[list].head = next;
        } else {
            self.nodes[prev].next = next;
        }
        if next == NIL {
            self.lists[list].tail = prev;
        } else {
            self.nodes[next].prev = prev;
        }
    }

    fn recompute_min(&mut self, list: usize) {
        let mut min: Option<(u64, Instant)> = None;
        let mut cursor = self.lists[list].head;
        while cursor != NIL {
            let node = &self.nodes[cursor];
            let key = (node.tick, node.deadline);
            min = Some(min.map_or(key, |m| m.min(key)));
            cursor = node.next;
        }
        self.lists[list].min = min;
    }

    /// Unlinks the timers of `slot` due by `horizon` into `due` and refreshes the slot's
    /// minimum from the survivors (later rotations) in the same pass. Returns how many.
    fn collect_due(&mut self, slot: usize, horizon: u64, due: &mut Vec<(Instant, usize)>) -> usize {
        let mut min: Option<(u64, Instant)> = None;
        let mut taken = 0;
        let mut cursor = self.lists[slot].head;
        while cursor != NIL {
            let node = &self.nodes[cursor];
            let (next, key) = (node.next, (node.tick, node.deadline));
            if key.0 <= horizon {
                self.unlink(cursor);
                due.push((key.1, cursor));
                taken += 1;
            } else {
                min = Some(min.map_or(key, |m| m.min(key)));
            }
            cursor = next;
        }
        self.lists[slot].min = min;
        taken
    }

    /// Frees an already unlinked node and returns its value.
    fn release(&mut self, index: usize) -> Option<T> {
        let node = self.nodes.get_mut(index)?;
        let value = node.value.take()?;
        node.generation = node.generation.wrapping_add(1);
        node.prev = NIL;
        node.next = self.free;
        self.free = index;
        self.len -= 1;
        Some(value)
    }
}

fn duration_from_nanos(nanos: u128) -> Option<Duration> {
    const NANOS_PER_SEC: u128 = 1_000_000_000;
    let secs = u64::try_from(nanos / NANOS_PER_SEC).ok()?;
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).ok()?;
    Some(Duration::new(secs, subsec))
}

/// Capped exponential backoff with jitter: attempt 0 -> ~base, doubling, capped at `cap`;
/// jitter subtracts up to 25% (so the cap is never exceeded). The randomness is injected (a
/// u64 the caller passes, e.g. from [`Jitter`]) so it is testable.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Delay before the next attempt, in `(0.75 * d, d]` where `d = min(base * 2^attempt,
    /// cap)`; `random` picks the point in that range. Counts the attempt (saturating).
    pub fn next_delay(&mut self, random: u64) -> Duration {
        let full = 1u32
            .checked_shl(self.attempt)
            .map_or(self.cap, |factor| self.base.saturating_mul(factor))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        // Jitter spreads reconnects of neighbours that lost a link at the same moment; it only
        // ever shortens the delay so `cap` stays a hard bound. The top 32 bits of `random`
        // scale a quarter of the delay, which cannot overflow u128 for any Duration.
        let quarter = full / 4;
        let cut = (quarter.as_nanos() * u128::from(random >> 32)) >> 32;
        full.saturating_sub(duration_from_nanos(cut).unwrap_or(quarter))
    }

    /// Back to attempt 0, e.g. once a link is up again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// Attempts counted since the last reset.
    pub fn attempts(&self) -> u32 {
        self.attempt
    }
}

/// Lets a repeated warning through at most once per `every`, counting the ones it held
/// back: a failure that repeats thousands of times a second (out of descriptors) must not
/// turn into as many log lines.
#[derive(Debug)]
pub struct Throttle {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl Throttle {
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(n)` when this occurrence may be logged, `n` being how many were held back
    /// since the last one logged; `None` when it is to be counted only.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.saturating_duration_since(t) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// xorshift64* generator for jitter; seedable, so tests and runs can be reproduced.
#[derive(Clone, Debug)]
pub struct Jitter(u64);

impl Jitter {
    pub fn new(seed: u64) -> Self {
        // Zero is xorshift's fixed point: the generator would return 0 for ever.
        Self(if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t0 = Instant::now();
        let mut t = Throttle::new(Duration::from_secs(1));
        assert_eq!(t.allow(t0), Some(0));
        for ms in [1, 200, 999] {
            assert_eq!(t.allow(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(t.allow(t0 + Duration::from_millis(1000)), Some(3));
        assert_eq!(t.allow(t0 + Duration::from_millis(1500)), None);
        assert_eq!(t.allow(t0 + Duration::from_millis(2000)), Some(1));
    }

    const TICK: Duration = Duration::from_millis(10);
    const SLOTS: usize = 8;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn wheel<T>(t0: Instant) -> TimerWheel<T> {
        TimerWheel::new(TICK, SLOTS, t0)
    }

    fn expire<T>(w: &mut TimerWheel<T>, at: Instant) -> Vec<T> {
        let mut out = Vec::new();
        w.expire(at, &mut out);
        out
    }

    #[test]
    fn fires_on_its_tick_and_not_before() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(10), "a");
        assert!(expire(&mut w, t0 + ms(9)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(10)), ["a"]);
        assert!(expire(&mut w, t0 + ms(20)).is_empty());
    }

    #[test]
    fn deadline_between_ticks_rounds_up_never_early() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(11), "a");
        assert!(expire(&mut w, t0 + ms(11)).is_empty());
        assert!(expire(&mut w, t0 + ms(19)).is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(expire(&mut w, t0 + ms(20)), ["a"]);
    }

    #[test]
    fn several_timers_in_one_tick_fire_together_in_deadline_order() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(29), "c");
        w.insert(t0 + ms(21), "a");
        w.insert(t0 + ms(25), "b");
        w.insert(t0 + ms(25), "b2");
        w.insert(t0 + ms(31), "next");
        assert_eq!(expire(&mut w, t0 + ms(30)), ["a", "b", "b2", "c"]);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn cancel_before_expiry_returns_value_and_it_never_fires() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let a = w.insert(t0 + ms(50), "a");
        w.insert(t0 + ms(50), "b");
        assert_eq!(w.cancel(a), Some("a"));
        assert_eq!(w.cancel(a), None);
        assert_eq!(expire(&mut w, t0 + ms(1000)), ["b"]);
    }

    #[test]
    fn cancel_after_fire_returns_none() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let a = w.insert(t0 + ms(10), "a");
        assert_eq!(expire(&mut w, t0 + ms(10)), ["a"]);
        assert_eq!(w.cancel(a), None);
    }

    #[test]
    fn cancel_of_unknown_id_returns_none() {
        let t0 = Instant::now();
        let mut w: TimerWheel<&str> = wheel(t0);
        let bogus = TimerId {
            index: 7,
            generation: 3,
        };
        assert_eq!(w.cancel(bogus), None);
        w.insert(t0 + ms(10), "a");
        assert_eq!(w.cancel(bogus), None);
        assert_eq!(w.len(), 1);
    }

    #[test]
    fn stale_id_does_not_cancel_newer_timer_reusing_the_slot() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let old = w.insert(t0 + ms(10), "old");
        assert_eq!(expire(&mut w, t0 + ms(10)), ["old"]);
        let new = w.insert(t0 + ms(20), "new");
        assert_eq!(new.index, old.index, "test needs the storage to be reused");
        assert_eq!(w.cancel(old), None);
        assert_eq!(w.len(), 1);

        let cancelled = w.insert(t0 + ms(30), "x");
        assert_eq!(w.cancel(cancelled), Some("x"));
        let reused = w.insert(t0 + ms(30), "y");
        assert_eq!(w.cancel(cancelled), None);
        assert_eq!(expire(&mut w, t0 + ms(30)), ["new", "y"]);
        assert_eq!(w.cancel(reused), None);
    }

    #[test]
    fn rearm_by_cancel_and_insert_moves_the_deadline() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        let id = w.insert(t0 + ms(20), "conn");
        let value = w.cancel(id).expect("pending timer");
        w.insert(t0 + ms(70), value);
        assert!(expire(&mut w, t0 + ms(60)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(70)), ["conn"]);
    }

    #[test]
    fn insert_again_after_firing() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(10), "retry");
        let fired = expire(&mut w, t0 + ms(10));
        assert_eq!(fired, ["retry"]);
        w.insert(t0 + ms(40), fired[0]);
        assert!(expire(&mut w, t0 + ms(39)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(40)), ["retry"]);
        assert!(w.is_empty());
    }

    #[test]
    fn catch_up_after_long_stall_fires_everything_once_in_order() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        // Three rotations' worth, inserted out of order, several sharing slots.
        let deadlines = [235, 5, 80, 160, 17, 79, 240, 81, 100, 1];
        for d in deadlines {
            w.insert(t0 + ms(d), d);
        }
        let beyond = w.insert(t0 + ms(10 * 8 * 10 + 5), 9999);
        let fired = expire(&mut w, t0 + ms(10 * 8 * 10));
        let mut expected = deadlines.to_vec();
        expected.sort_unstable();
        assert_eq!(fired, expected);
        assert_eq!(w.len(), 1);
        assert!(expire(&mut w, t0 + ms(10 * 8 * 10)).is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + ms(810)));
        assert_eq!(w.cancel(beyond), Some(9999));
    }

    #[test]
    fn huge_stall_does_not_walk_every_tick() {
        let t0 = Instant::now();
        // 1 ns ticks: a per-tick walk over ten years would never finish.
        let mut w = TimerWheel::new(Duration::from_nanos(1), 4, t0);
        let years = Duration::from_secs(10 * 365 * 24 * 3600);
        w.insert(t0 + years / 2, "mid");
        w.insert(t0 + ms(1), "early");
        w.insert(t0 + years * 2, "later");
        assert_eq!(expire(&mut w, t0 + years), ["early", "mid"]);
        assert_eq!(w.next_deadline(), Some(t0 + years * 2));
    }

    #[test]
    fn far_deadline_wrapping_several_rotations_fires_on_time() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        // 8 slots * 10 ms = 80 ms per rotation; 415 ms is five rotations and change.
        w.insert(t0 + ms(415), "far");
        let mut now = t0;
        while now < t0 + ms(410) {
            now += ms(10);
            assert!(expire(&mut w, now).is_empty(), "fired early at {now:?}");
        }
        assert_eq!(w.next_deadline(), Some(t0 + ms(420)));
        assert_eq!(expire(&mut w, t0 + ms(420)), ["far"]);
    }

    #[test]
    fn far_deadline_survives_a_jump_to_one_rotation_before_it() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(400), "far");
        // Lands on the same slot exactly one rotation early.
        assert!(expire(&mut w, t0 + ms(320)).is_empty());
        assert!(expire(&mut w, t0 + ms(399)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(400)), ["far"]);
    }

    #[test]
    fn slot_collision_one_rotation_apart() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        // Ticks 3 and 11 share slot 3.
        w.insert(t0 + ms(110), "second");
        w.insert(t0 + ms(30), "first");
        assert_eq!(w.next_deadline(), Some(t0 + ms(30)));
        assert_eq!(expire(&mut w, t0 + ms(30)), ["first"]);
        assert_eq!(w.next_deadline(), Some(t0 + ms(110)));
        assert!(expire(&mut w, t0 + ms(100)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(110)), ["second"]);
    }

    #[test]
    fn past_deadline_fires_at_next_expire() {
        let t0 = Instant::now();
        let mut w = wheel(t0 + ms(1000));
        // Before the origin.
        w.insert(t0, "before-origin");
        assert_eq!(w.next_deadline(), Some(t0));
        assert_eq!(expire(&mut w, t0 + ms(1000)), ["before-origin"]);

        assert!(expire(&mut w, t0 + ms(1015)).is_empty());
        // In the past but in a tick not yet processed: must not wait for the 1020 ms tick.
        w.insert(t0 + ms(1012), "late");
        w.insert(t0 + ms(1015), "now");
        assert!(w.next_deadline().is_some_and(|d| d <= t0 + ms(1015)));
        assert_eq!(expire(&mut w, t0 + ms(1015)), ["late", "now"]);
        assert!(w.is_empty());
    }

    #[test]
    fn past_and_future_timers_interleave_in_deadline_order() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(25), "wheel");
        assert!(expire(&mut w, t0 + ms(27)).is_empty());
        w.insert(t0 + ms(26), "overdue");
        w.insert(t0 + ms(24), "older");
        // Equal deadlines keep insertion order even across the wheel and the overdue list.
        w.insert(t0 + ms(25), "tie");
        assert_eq!(expire(&mut w, t0 + ms(30)), ["older", "wheel", "tie", "overdue"]);
    }

    #[test]
    fn earlier_now_than_already_seen_fires_nothing_new() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        w.insert(t0 + ms(50), "a");
        assert!(expire(&mut w, t0 + ms(40)).is_empty());
        assert!(expire(&mut w, t0 + ms(5)).is_empty());
        assert_eq!(expire(&mut w, t0 + ms(50)), ["a"]);
    }

    #[test]
    fn next_deadline_tracks_inserts_cancels_and_expiries() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        assert_eq!(w.next_deadline(), None);
        let far = w.insert(t0 + ms(500), "far");
        assert_eq!(w.next_deadline(), Some(t0 + ms(500)));
        let b = w.insert(t0 + ms(35), "b");
        assert_eq!(w.next_deadline(), Some(t0 + ms(40)));
        let a = w.insert(t0 + ms(20), "a");
        let a2 = w.insert(t0 + ms(20), "a2");
        assert_eq!(w.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(w.cancel(a), Some("a"));
        assert_eq!(w.next_deadline(), Some(t0 + ms(20)));
        assert_eq!(w.cancel(a2), Some("a2"));
        assert_eq!(w.next_deadline(), Some(t0 + ms(40)));
        assert!(expire(&mut w, t0 + ms(30)).is_empty());
        assert_eq!(w.next_deadline(), Some(t0 + ms(40)));
        assert_eq!(expire(&mut w, t0 + ms(40)), ["b"]);
        assert_eq!(w.cancel(b), None);
        assert_eq!(w.next_deadline(), Some(t0 + ms(500)));
        assert_eq!(w.cancel(far), Some("far"));
        assert_eq!(w.next_deadline(), None);
    }

    #[test]
    fn len_and_is_empty() {
        let t0 = Instant::now();
        let mut w = wheel(t0);
        assert!(w.is_empty());
        assert_eq!(w.len(), 0);
        let a = w.insert(t0 + ms(10), 1);
        w.insert(t0 + ms(20), 2);
        w.insert(t0 + ms(900), 3);
        assert_eq!(w.len(), 3);
        assert!(!w.is_empty());
        w.cancel(a);
        w.cancel(a);
        assert_eq!(w.len(), 2);
        assert_eq!(expire(&mut w, t0 + ms(20)), [2]);
        assert_eq!(w.len(), 1);
        assert_eq!(expire(&mut w, t0 + ms(900)), [3]);
        assert!(w.is_empty());
    }

    #[test]
    fn degenerate_parameters_do_not_panic() {
        let t0 = Instant::now();
        let mut w = TimerWheel::new(Duration::ZERO, 0, t0);
        w.insert(t0 + ms(1), "a");
        w.insert(t0, "b");
        assert_eq!(w.next_deadline(), Some(t0));
        assert_eq!(expire(&mut w, t0 + ms(1)), ["b", "a"]);
        let mut big: TimerWheel<()> = TimerWheel::new(Duration::MAX, usize::MAX, t0);
        big.insert(t0 + ms(1), ());
        assert!(big.next_deadline().is_some());
        assert!(expire(&mut big, t0 + ms(2)).is_empty());
    }

    /// Random operations checked against an obviously correct list, so orderings and
    /// bookkeeping the hand-written cases miss still get exercised.
    #[test]
    fn matches_reference_model_under_random_operations() {
        struct Pending {
            id: TimerId,
            value: u64,
            deadline: Instant,
            tick: u64,
            overdue: bool,
        }
        let t0 = Instant::now();
        let mut rng = Jitter::new(42);
        let mut w = TimerWheel::new(TICK, 4, t0);
        let mut model: Vec<Pending> = Vec::new();
        let mut fired_ids: Vec<TimerId> = Vec::new();
        let (mut now, mut seen) = (t0, t0);
        for value in 0..5000u64 {
            match rng.next_u64() % 10 {
                0..=4 => {
                    let offset = ms(rng.next_u64() % 700);
                    let deadline = if rng.next_u64() % 100 < 25 {
                        now.checked_sub(offset).unwrap_or(t0).max(t0)
                    } else {
                        now + offset
                    };
                    let id = w.insert(deadline, value);
                    let tick = (deadline - t0).as_nanos().div_ceil(TICK.as_nanos()) as u64;
                    let overdue = deadline <= seen;
                    model.push(Pending {
                        id,
                        value,
                        deadline,
                        tick,
                        overdue,
                    });
                }
                5 if !model.is_empty() => {
                    let i = (rng.next_u64() % model.len() as u64) as usize;
                    let p = model.remove(i);
                    assert_eq!(w.cancel(p.id), Some(p.value));
                }
                6 if !fired_ids.is_empty() => {
                    let i = (rng.next_u64() % fired_ids.len() as u64) as usize;
                    assert_eq!(w.cancel(fired_ids[i]), None);
                }
                _ => {
                    let step = if rng.next_u64() % 100 < 5 { 3000 } else { 40 };
                    now += ms(rng.next_u64() % step);
                    seen = seen.max(now);
                    let horizon = ((seen - t0).as_nanos() / TICK.as_nanos()) as u64;
                    let (mut due, rest): (Vec<_>, Vec<_>) =
                        model.drain(..).partition(|p| p.overdue || p.tick <= horizon);
                    model = rest;
                    due.sort_by_key(|p| p.deadline);
                    let expected: Vec<u64> = due.iter().map(|p| p.value).collect();
                    fired_ids.extend(due.iter().map(|p| p.id));
                    assert_eq!(expire(&mut w, now), expected);
                }
            }
            assert_eq!(w.len(), model.len());
            let expected_next = if model.iter().any(|p| p.overdue) {
                model.iter().filter(|p| p.overdue).map(|p| p.deadline).min()
            } else {
                model.iter().map(|p| t0 + TICK * p.tick as u32).min()
            };
            assert_eq!(w.next_deadline(), expected_next, "step {value}");
        }
    }

    #[test]
    fn backoff_doubles_until_cap() {
        let mut b = Backoff::new(ms(100), ms(1000));
        // random = 0 means no jitter.
        let delays: Vec<Duration> = (0..7).map(|_| b.next_delay(0)).collect();
        assert_eq!(delays, [100, 200, 400, 800, 1000, 1000, 1000].map(ms).to_vec());
    }

    #[test]
    fn backoff_jitter_stays_within_bounds_and_below_cap() {
        let mut rng = Jitter::new(7);
        let cap = ms(1000);
        for attempt in 0..12u32 {
            let nominal = ms(100).saturating_mul(1 << attempt).min(cap);
            for _ in 0..200 {
                let mut b = Backoff::new(ms(100), cap);
                b.attempt = attempt;
                let d = b.next_delay(rng.next_u64());
                assert!(d <= nominal && d <= cap, "{d:?} above {nominal:?}");
                assert!(d >= nominal * 3 / 4, "{d:?} cut more than 25% of {nominal:?}");
            }
        }
        let mut b = Backoff::new(ms(100), cap);
        assert!(b.next_delay(u64::MAX) >= ms(75));
        assert!(b.next_delay(u64::MAX) < ms(200));
    }

    #[test]
    fn backoff_reset_starts_again_from_base() {
        let mut b = Backoff::new(ms(50), ms(10_000));
        for _ in 0..5 {
            b.next_delay(0);
        }
        assert_eq!(b.next_delay(0), ms(1600));
        b.reset();
        assert_eq!(b.next_delay(0), ms(50));
        assert_eq!(b.next_delay(0), ms(100));
    }

    #[test]
    fn backoff_saturates_after_many_attempts() {
        let mut b = Backoff::new(Duration::MAX, Duration::MAX);
        b.attempt = u32::MAX - 1;
        for _ in 0..3 {
            assert!(b.next_delay(u64::MAX) >= Duration::MAX / 4 * 3);
        }
        assert_eq!(b.attempt, u32::MAX);
        let mut zero = Backoff::new(Duration::ZERO, ms(10));
        assert_eq!(zero.next_delay(u64::MAX), Duration::ZERO);
    }

    #[test]
    fn jitter_is_deterministic_for_a_seed() {
        let a: Vec<u64> = {
            let mut j = Jitter::new(12345);
            (0..16).map(|_| j.next_u64()).collect()
        };
        let mut j = Jitter::new(12345);
        let b: Vec<u64> = (0..16).map(|_| j.next_u64()).collect();
        assert_eq!(a, b);
        let mut other = Jitter::new(54321);
        assert_ne!(other.next_u64(), a[0]);
        let mut distinct = a.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), a.len());
    }

    #[test]
    fn jitter_zero_seed_is_not_stuck() {
        let mut j = Jitter::new(0);
        let (x, y) = (j.next_u64(), j.next_u64());
        assert_ne!(x, 0);
        assert_ne!(x, y);
    }
}
