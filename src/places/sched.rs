//! The Places pool's admission and ordering rules as plain data with injected time: the
//! fair queue of waiting calls, the `places.max_rps` token bucket and the circuit breaker.
//! No threads, sockets or clocks here; `Pool` holds them behind one mutex.
//!
//! Fair queue: start-time fair queuing over client connections ("lanes"). Every lane's
//! next call carries a round number; workers take the lowest round, first come first
//! served within a round, and a lane that was served goes to the next round. A lane that
//! becomes busy after sitting out at least one round starts one round *behind* the current
//! one, so a newcomer is served by the next free worker however many lookups other lanes
//! have queued, yet no lane can get ahead more than once per round (a lane served in this
//! or the last round re-enters at its own next round), so nobody is starved.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

/// A connection's identity for fairness (the reactor derives it from its tag).
pub type Lane = u64;
/// One upstream call, shared by every identical lookup that joined it.
pub type CallId = u64;

#[derive(Default)]
struct LaneState {
    /// Calls this lane waits for, oldest first; an id whose call another lane already
    /// started is skipped when it comes up.
    calls: VecDeque<CallId>,
    /// Round of the last call this lane started.
    last: Option<u64>,
}

/// Waiting calls by lane, served in start-time fair order. `J` is the job.
pub struct FairQueue<J> {
    lanes: HashMap<Lane, LaneState>,
    /// Busy lanes by (round of their next call, arrival order).
    ready: BTreeSet<(u64, u64, Lane)>,
    /// Calls not yet started.
    jobs: HashMap<CallId, J>,
    /// Round of the most recently started call.
    round: u64,
    arrivals: u64,
}

impl<J> Default for FairQueue<J> {
    fn default() -> Self {
        FairQueue {
            lanes: HashMap::new(),
            ready: BTreeSet::new(),
            jobs: HashMap::new(),
            round: 0,
            arrivals: 0,
        }
    }
}

impl<J> FairQueue<J> {
    /// Calls waiting for a worker.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// True while `call` waits for a worker (so another lane may still speed it up).
    pub fn is_waiting(&self, call: CallId) -> bool {
        self.jobs.contains_key(&call)
    }

    /// Queues a new call on `lane`.
    pub fn push(&mut self, lane: Lane, call: CallId, job: J) {
        self.jobs.insert(call, job);
        self.join(lane, call);
    }

    /// `lane` also waits for `call` (queued by another lane): whichever lane reaches it first
    /// starts it, so sharing a call never makes a lookup wait behind another lane's queue.
    pub fn join(&mut self, lane: Lane, call: CallId) {
        let state = self.lanes.entry(lane).or_default();
        if state.calls.contains(&call) {
            return;
        }
        if state.calls.is_empty() {
            let behind = self.round.saturating_sub(1);
            let round = state.last.map_or(behind, |l| (l + 1).max(behind));
            self.ready.insert((round, self.arrivals, lane));
            self.arrivals += 1;
        }
        state.calls.push_back(call);
    }

    /// Drops `call` if no worker has started it and `droppable` says so of its job: true
    /// if it was dropped. The lanes' entries for it are skipped when they come up, as for
    /// a call another lane started.
    pub fn cancel(&mut self, call: CallId, droppable: impl FnOnce(&J) -> bool) -> bool {
        self.jobs.get(&call).is_some_and(droppable) && self.jobs.remove(&call).is_some()
    }

    /// Forgets `lane` (its connection closed): its turn, if it has one, is skipped.
    pub fn forget_lane(&mut self, lane: Lane) {
        self.lanes.remove(&lane);
    }

    /// The next call to start, in fair order.
    pub fn pop(&mut self) -> Option<J> {
        while let Some((round, _, lane)) = self.ready.pop_first() {
            let Some(state) = self.lanes.get_mut(&lane) else {
                continue;
            };
            let mut job = None;
            while let Some(call) = state.calls.pop_front() {
                if let Some(j) = self.jobs.remove(&call) {
                    job = Some(j);
                    break;
                }
            }
            // A lane whose only entries were started by others is not charged a turn.
            let Some(job) = job else { continue };
            state.last = Some(round);
            if !state.calls.is_empty() {
                self.ready.insert((round + 1, self.arrivals, lane));
                self.arrivals += 1;
            }
            if round > self.round {
                self.round = round;
                // An idle lane that sat out a round would re-enter one round behind anyway;
                // forgetting it keeps the map as small as the recently busy lanes.
                let now = self.round;
                self.lanes
                    .retain(|_, s| !s.calls.is_empty() || s.last.is_some_and(|l| l + 1 >= now));
            }
            return Some(job);
        }
        None
    }

    #[cfg(test)]
    fn lanes(&self) -> usize {
        self.lanes.len()
    }
}

/// `places.max_rps` as a token bucket holding at most one second's worth of calls.
pub struct Bucket {
    rate: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// None when `max_rps` is 0 (no cap).
    pub fn new(max_rps: u32, now: Instant) -> Option<Bucket> {
        (max_rps > 0).then(|| Bucket {
            rate: f64::from(max_rps),
            tokens: f64::from(max_rps),
            at: now,
        })
    }

    /// Takes a token for one call, if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        let earned = now.saturating_duration_since(self.at).as_secs_f64() * self.rate;
        self.tokens = (self.tokens + earned).min(self.rate.max(1.0));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    /// The upstream is considered down; no call is made.
    Open,
    /// One probe call is in flight and decides.
    Probing,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::Probing => "half-open",
        }
    }
}

/// What changed, for the log.
#[derive(Debug, PartialEq, Eq)]
pub enum Change {
    Opened,
    Probing,
    Recovered,
    ProbeFailed,
}

/// SPEC §7: after `after` consecutive failed calls the upstream is down for `open_for`,
/// then one probe call decides.
pub struct Breaker {
    after: u32,
    open_for: Duration,
    failures: u32,
    state: BreakerState,
    until: Instant,
}

impl Breaker {
    pub fn new(after: u32, open_for: Duration, now: Instant) -> Breaker {
        Breaker {
            after,
            open_for,
            failures: 0,
            state: BreakerState::Closed,
            until: now,
        }
    }

    pub fn state(&self) -> BreakerState {
        self.state
    }

    /// True if a new lookup must be refused at once (down, or the probe is still out).
    pub fn refuses(&self, now: Instant) -> bool {
        match self.state {
            BreakerState::Closed => false,
            BreakerState::Open => now < self.until,
            BreakerState::Probing => true,
        }
    }

    /// Admits a new call (after `refuses` said no): true if it is the probe.
    pub fn admit(&mut self) -> Option<Change> {
        if self.state == BreakerState::Open {
            self.state = BreakerState::Probing;
            return Some(Change::Probing);
        }
        None
    }

    /// True if a call queued earlier must not be made now (its lookup was not the probe).
    pub fn holds(&self, probe: bool) -> bool {
        !probe && self.state != BreakerState::Closed
    }

    /// Records how a call ended. Only the probe's outcome counts while not closed.
    pub fn record(&mut self, probe: bool, ok: bool, now: Instant) -> Option<Change> {
        match (self.state, probe) {
            (BreakerState::Probing, true) => {
                if ok {
                    self.state = BreakerState::Closed;
                    self.failures = 0;
                    Some(Change::Recovered)
                } else {
                    self.state = BreakerState::Open;
                    self.until = now + self.open_for;
                    Some(Change::ProbeFailed)
                }
            }
            (BreakerState::Closed, _) if ok => {
                self.failures = 0;
                None
            }
            (BreakerState::Closed, _) => {
                self.failures += 1;
                if self.failures < self.after {
                    return None;
                }
                self.state = BreakerState::Open;
                self.until = now + self.open_for;
                Some(Change::Opened)
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lanes' calls in the order a single worker would start them.
    fn order(q: &mut FairQueue<(Lane, u32)>) -> Vec<(Lane, u32)> {
        std::iter::from_fn(|| q.pop()).collect()
    }

    #[test]
    fn cancelled_calls_and_forgotten_lanes_are_skipped() {
        let mut q = FairQueue::default();
        for call in 0..3 {
            q.push(1, call, (1, call as u32));
        }
        q.push(2, 10, (2, 10));
        q.push(2, 11, (2, 11));
        // Lane 2 waits for lane 1's last call too: cancelling it leaves lane 2 its own.
        q.join(2, 2);
        assert!(!q.cancel(1, |_| false), "kept when its job says so");
        assert!(q.cancel(1, |_| true));
        assert!(!q.cancel(1, |_| true), "already gone");
        assert_eq!(q.pop(), Some((1, 0)));
        assert!(!q.cancel(0, |_| true), "a started call is not cancelled");
        q.forget_lane(1);
        assert!(q.cancel(2, |_| true));
        assert_eq!(order(&mut q), vec![(2, 10), (2, 11)]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn lanes_take_turns_and_keep_their_own_order() {
        let mut q = FairQueue::default();
        let mut id = 0;
        for (lane, n) in [(1, 3), (2, 2), (3, 1)] {
            for i in 0..n {
                id += 1;
                q.push(lane, id, (lane, i));
            }
        }
        assert_eq!(q.len(), 6);
        assert_eq!(order(&mut q), [(1, 0), (2, 0), (3, 0), (1, 1), (2, 1), (1, 2)]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn a_newcomer_is_served_next_whatever_others_queued() {
        let mut q = FairQueue::default();
        for i in 0..600u32 {
            let lane = u64::from(i % 10);
            q.push(lane, u64::from(i), (lane, i));
        }
        for _ in 0..25 {
            q.pop();
        }
        q.push(99, 1000, (99, 0));
        q.push(99, 1001, (99, 1));
        assert_eq!(q.pop(), Some((99, 0)));
        // Its second lookup takes its turn in the round like everyone else's.
        let next: Vec<Lane> = std::iter::from_fn(|| q.pop()).take(10).map(|(l, _)| l).collect();
        assert_eq!(next, [5, 6, 7, 8, 9, 99, 0, 1, 2, 3]);
    }

    #[test]
    fn a_lane_that_comes_back_at_once_cannot_jump_again() {
        let mut q = FairQueue::default();
        for i in 0..40u32 {
            let lane = u64::from(i % 4);
            q.push(lane, u64::from(i), (lane, i));
        }
        let mut id = 100;
        let mut served_7 = 0;
        // Lane 7 keeps exactly one lookup waiting: it gets one call per round, not more.
        q.push(7, id, (7, 0));
        for _ in 0..20 {
            if let Some((lane, _)) = q.pop() {
                if lane == 7 {
                    served_7 += 1;
                    id += 1;
                    q.push(7, id, (7, 0));
                }
            }
        }
        // 20 calls over 5 busy lanes: about 4 rounds, plus lane 7's one jump.
        assert!((4..=5).contains(&served_7), "{served_7}");
    }

    #[test]
    fn a_shared_call_starts_at_the_earliest_lane_and_only_once() {
        let mut q = FairQueue::default();
        for i in 0..5u32 {
            q.push(1, u64::from(i), ("a", i));
        }
        // Lane 2 asks for the same lookup as lane 1's last one.
        q.join(2, 4);
        assert_eq!(q.pop(), Some(("a", 0)));
        assert_eq!(q.pop(), Some(("a", 4)), "lane 2's turn starts the shared call");
        let rest: Vec<_> = std::iter::from_fn(|| q.pop()).collect();
        assert_eq!(rest, [("a", 1), ("a", 2), ("a", 3)], "never twice");
        assert!(!q.is_waiting(4));
    }

    #[test]
    fn idle_lanes_are_forgotten() {
        let mut q = FairQueue::default();
        for lane in 0..100u64 {
            q.push(lane, lane, ());
        }
        while q.pop().is_some() {}
        for i in 0..4u64 {
            q.push(1000, 1000 + i, ());
            q.pop();
        }
        assert!(q.lanes() <= 2, "{}", q.lanes());
    }

    #[test]
    fn bucket_caps_calls_per_second() {
        let t0 = Instant::now();
        assert!(Bucket::new(0, t0).is_none());
        let mut b = Bucket::new(3, t0).unwrap_or_else(|| panic!("bucket"));
        let took = (0..10).filter(|_| b.take(t0)).count();
        assert_eq!(took, 3, "one second's burst");
        assert!(!b.take(t0 + Duration::from_millis(300)));
        assert!(b.take(t0 + Duration::from_millis(340)));
        // A long idle spell earns no more than one second's worth.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..10).filter(|_| b.take(later)).count(), 3);
    }

    #[test]
    fn breaker_opens_after_consecutive_failures_then_one_probe_decides() {
        let t0 = Instant::now();
        let open = Duration::from_secs(10);
        let mut b = Breaker::new(5, open, t0);
        for _ in 0..4 {
            assert_eq!(b.record(false, false, t0), None);
        }
        assert_eq!(b.record(false, true, t0), None, "a success resets the count");
        for _ in 0..4 {
            assert_eq!(b.record(false, false, t0), None);
        }
        assert!(!b.refuses(t0));
        assert_eq!(b.record(false, false, t0), Some(Change::Opened));
        assert!(b.refuses(t0 + open - Duration::from_millis(1)));
        assert!(b.holds(false));
        // A call that started before the breaker opened changes nothing.
        assert_eq!(b.record(false, true, t0), None);
        let t1 = t0 + open;
        assert!(!b.refuses(t1));
        assert_eq!(b.admit(), Some(Change::Probing));
        assert!(b.refuses(t1), "one probe at a time");
        assert!(!b.holds(true));
        assert_eq!(b.record(true, false, t1), Some(Change::ProbeFailed));
        assert!(b.refuses(t1 + open - Duration::from_millis(1)));
        let t2 = t1 + open;
        assert_eq!(b.admit(), Some(Change::Probing));
        assert_eq!(b.record(true, true, t2), Some(Change::Recovered));
        assert_eq!(b.state(), BreakerState::Closed);
        assert!(!b.refuses(t2));
    }
}
