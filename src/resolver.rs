//! Neighbour name lookups off the reactor thread (SPEC §5): `getaddrinfo` blocks for as
//! long as the system resolver likes, so a few threads make the lookups and post the
//! answers back through the reactor's `mio::Waker`, as the Places pool does. The reactor
//! drains the answers on each wake and hands them to `links::Links::resolved`.
//!
//! A lookup that never answers holds one thread; the link module times the lookup out on
//! its own, and the next dial's job goes to another thread.

use std::net::{SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

use crate::links::NeighbourId;

/// A few threads: lookups are rare (one per dial of a named neighbour) but one may hang.
const THREADS: usize = 2;

struct Job {
    n: NeighbourId,
    seq: u64,
    host: String,
    port: u16,
}

/// One lookup's outcome: the first address, or why there is none.
pub struct Answer {
    pub n: NeighbourId,
    pub seq: u64,
    pub addr: Result<SocketAddr, String>,
}

pub struct Resolver {
    jobs: Option<Sender<Job>>,
    answers: Receiver<Answer>,
    waker: Arc<mio::Waker>,
    /// Threads start with the first job: a herd of addresses never needs one.
    started: bool,
    queue: Arc<Mutex<Receiver<Job>>>,
    done: Sender<Answer>,
}

impl Resolver {
    pub fn new(waker: Arc<mio::Waker>) -> Resolver {
        let (jobs, queue) = mpsc::channel();
        let (done, answers) = mpsc::channel();
        Resolver {
            jobs: Some(jobs),
            answers,
            waker,
            started: false,
            queue: Arc::new(Mutex::new(queue)),
            done,
        }
    }

    /// Queues a lookup of `host`; Err if no resolver thread could be started, which the
    /// caller counts as a failed dial.
    pub fn submit(&mut self, n: NeighbourId, seq: u64, host: String, port: u16) -> Result<(), String> {
        if !self.started {
            for i in 0..THREADS {
                let (queue, done, waker) = (
                    Arc::clone(&self.queue),
                    self.done.clone(),
                    Arc::clone(&self.waker),
                );
                std::thread::Builder::new()
                    .name(format!("resolver-{i}"))
                    .spawn(move || work(&queue, &done, &waker))
                    .map_err(|e| format!("cannot start a resolver thread: {e}"))?;
            }
            self.started = true;
        }
        let job = Job { n, seq, host, port };
        match &self.jobs {
            Some(jobs) => jobs
                .send(job)
                .map_err(|_| "the resolver threads are gone".to_string()),
            None => Err("shutting down".into()),
        }
    }

    /// Hands every answer that arrived to `f`.
    pub fn drain(&self, mut f: impl FnMut(Answer)) {
        while let Ok(a) = self.answers.try_recv() {
            f(a);
        }
    }
}

impl Drop for Resolver {
    /// The threads end once the queue is closed (one stuck in a lookup ends with it; it
    /// is not waited for).
    fn drop(&mut self) {
        self.jobs = None;
    }
}

fn work(queue: &Mutex<Receiver<Job>>, done: &Sender<Answer>, waker: &mio::Waker) {
    loop {
        // The lock is held only to take a job, never during a lookup.
        let job = match queue.lock() {
            Ok(q) => q.recv(),
            Err(poisoned) => poisoned.into_inner().recv(),
        };
        let Ok(job) = job else {
            return;
        };
        let addr = lookup(&job.host, job.port);
        if done
            .send(Answer {
                n: job.n,
                seq: job.seq,
                addr,
            })
            .is_err()
        {
            return;
        }
        // A failed wake leaves the answer for the next one; the link times the lookup out.
        let _ = waker.wake();
    }
}

/// The first address of `host`, preferring IPv4 as the listeners' default does.
pub fn lookup(host: &str, port: u16) -> Result<SocketAddr, String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .copied()
        .ok_or_else(|| format!("`{host}` has no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn answer(r: &mut Resolver, poll: &mut mio::Poll, host: &str) -> Answer {
        r.submit(NeighbourId::new(3), 7, host.into(), 99)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut events = mio::Events::with_capacity(4);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let _ = poll.poll(&mut events, Some(Duration::from_millis(100)));
            let mut got = None;
            r.drain(|a| got = Some(a));
            if let Some(a) = got {
                return a;
            }
            assert!(Instant::now() < deadline, "no answer for {host}");
        }
    }

    #[test]
    fn names_are_looked_up_off_the_thread_and_answered_through_the_waker() {
        let mut poll = mio::Poll::new().unwrap_or_else(|e| panic!("{e}"));
        let waker = mio::Waker::new(poll.registry(), mio::Token(1)).unwrap_or_else(|e| panic!("{e}"));
        let mut r = Resolver::new(Arc::new(waker));
        let a = answer(&mut r, &mut poll, "localhost");
        assert_eq!((a.n, a.seq), (NeighbourId::new(3), 7));
        assert_eq!(a.addr.map(|a| (a.ip().is_loopback(), a.port())), Ok((true, 99)));
        let bad = answer(&mut r, &mut poll, "no-such-host.invalid");
        assert!(bad.addr.is_err());
    }
}
