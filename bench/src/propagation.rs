//! --workload propagation: how long a location takes to flood from one server to another.
//!
//! Per trial, a fresh client id: an IAMAT goes to `from`; when its reply arrives the clock
//! starts, and `WHATSAT <id> 1 0` polls go to `to`, back to back on one persistent
//! connection, until the answer is the AT line instead of `? ...`. Bound 0 means `to` makes
//! no Places call, so each poll is one round trip and the resolution is about one loopback
//! round trip. Blocking sockets: only one request is ever outstanding, and a blocking read
//! wakes as soon as a poll would, with fewer system calls.

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::buf::ByteQueue;
use crate::stats::{self, Errors, Hist};
use crate::target::Target;
use crate::workload::{self as wl, Frame, Framing, Location, Outcome, Rng};

pub struct Settings {
    pub from: Target,
    pub to: Target,
    pub trials: u64,
    pub timeout: Duration,
    /// Stop starting trials after this (the run's hard stop).
    pub hard_stop: Duration,
    pub crlf: bool,
    pub seed: u64,
    pub quiet: bool,
}

pub struct Outcomes {
    pub trials: u64,
    pub hist: Hist,
    pub errors: Errors,
    pub polls: u64,
    pub aborted: bool,
}

/// One persistent client connection with its input buffer.
struct Link {
    target: Target,
    timeout: Duration,
    stream: TcpStream,
    input: ByteQueue,
}

enum Reply {
    /// The reply is the first `n` bytes of the input.
    Got(usize),
    TimedOut,
}

impl Link {
    fn open(target: &Target, timeout: Duration) -> io::Result<Link> {
        let stream = TcpStream::connect_timeout(&target.addr, timeout)?;
        stream.set_nodelay(true)?;
        // Each read waits at most this long; the trial's own deadline is checked between
        // polls.
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(Link {
            target: target.clone(),
            timeout,
            stream,
            input: ByteQueue::new(),
        })
    }

    fn reopen(&mut self) -> io::Result<()> {
        *self = Link::open(&self.target, self.timeout)?;
        Ok(())
    }

    /// Sends `req` and reads until one whole reply (framed as `framing`) is in the input.
    fn request(&mut self, req: &[u8], framing: Framing) -> io::Result<Reply> {
        self.stream.write_all(req)?;
        let mut scanned = 0;
        let mut chunk = [0u8; 16 * 1024];
        loop {
            match wl::frame(self.input.data(), framing, scanned) {
                Frame::Complete(n) => return Ok(Reply::Got(n)),
                Frame::Incomplete { scanned: s } => scanned = s,
                Frame::TooLong => return Err(io::Error::new(ErrorKind::InvalidData, "reply too long")),
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return Err(io::Error::new(ErrorKind::UnexpectedEof, "closed by the server")),
                Ok(n) => self.input.push(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(Reply::TimedOut);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// Gets a link back after a failure; a server that cannot be reached again ends the run.
fn recover(link: &mut Link, errors: &mut Errors, timed_out: bool) -> Result<(), String> {
    if timed_out {
        errors.timeout += 1;
    } else {
        errors.connection += 1;
    }
    link.reopen()
        .map_err(|e| format!("cannot reconnect to {}: {e}", link.target))
}

pub fn run(s: &Settings) -> Result<Outcomes, String> {
    let open = |t: &Target| Link::open(t, s.timeout).map_err(|e| format!("cannot connect to {t}: {e}"));
    let (mut from, mut to) = (open(&s.from)?, open(&s.to)?);
    let mut rng = Rng::new(s.seed);
    // Fresh ids for every run against a long-running herd: the process id and start time.
    let nonce = format!("{}x{}", std::process::id(), wall_ns() / 1_000_000);
    let mut out = Outcomes {
        trials: 0,
        hist: stats::histogram(),
        errors: Errors::default(),
        polls: 0,
        aborted: false,
    };
    let start = Instant::now();
    let mut next_note = Duration::from_secs(1);
    let end = if s.crlf { &b"\r\n"[..] } else { &b"\n"[..] };
    let mut req = Vec::new();
    for trial in 0..s.trials {
        if start.elapsed() >= s.hard_stop {
            out.aborted = true;
            break;
        }
        out.trials += 1;
        let id = format!("lg-p{nonce}-{trial}");
        req.clear();
        req.extend_from_slice(b"IAMAT ");
        req.extend_from_slice(id.as_bytes());
        // The IAMAT line without its id: the location and time the record must carry.
        let mut tail = Vec::new();
        let loc = Location::random(&mut rng);
        wl::push_iamat(&mut tail, 0, loc, wall_ns(), false);
        let loc_time = &tail[b"IAMAT lg-0 ".len()..tail.len() - 1];
        req.push(b' ');
        req.extend_from_slice(loc_time);
        req.extend_from_slice(end);
        let echo = [id.as_bytes(), b" ", loc_time].concat();
        match from.request(&req, Framing::Line) {
            Ok(Reply::Got(n)) => {
                let o = wl::check_iamat(&from.input.data()[..n], &echo);
                from.input.consume(n);
                match o {
                    Outcome::Ok => {}
                    Outcome::ErrorReply => {
                        out.errors.error_reply += 1;
                        continue;
                    }
                    // An IAMAT reply has no Places status; check_iamat never says so.
                    Outcome::Malformed | Outcome::Places(_) => {
                        out.errors.malformed += 1;
                        continue;
                    }
                }
            }
            Ok(Reply::TimedOut) => {
                recover(&mut from, &mut out.errors, true)?;
                continue;
            }
            Err(_) => {
                recover(&mut from, &mut out.errors, false)?;
                continue;
            }
        }
        let clock = Instant::now();
        req.clear();
        req.extend_from_slice(b"WHATSAT ");
        req.extend_from_slice(id.as_bytes());
        req.extend_from_slice(b" 1 0");
        req.extend_from_slice(end);
        loop {
            if clock.elapsed() > s.timeout {
                out.errors.timeout += 1;
                break;
            }
            out.polls += 1;
            let n = match to.request(&req, Framing::Block) {
                Ok(Reply::Got(n)) => n,
                Ok(Reply::TimedOut) => {
                    recover(&mut to, &mut out.errors, true)?;
                    break;
                }
                Err(_) => {
                    recover(&mut to, &mut out.errors, false)?;
                    break;
                }
            };
            let elapsed = clock.elapsed();
            let reply = &to.input.data()[..n];
            // Not there yet: `? WHATSAT ...`. There: the AT line of our own IAMAT (same
            // location and time), then the JSON.
            // The AT line is what propagation waits for; whatever Places said is beside it.
            let o = match wl::check_whatsat(reply, id.as_bytes()) {
                Outcome::Ok | Outcome::Places(_) => {
                    let first = reply
                        .iter()
                        .position(|&b| b == b'\n')
                        .map_or(reply, |p| &reply[..=p]);
                    wl::check_iamat(first, &echo)
                }
                o => o,
            };
            to.input.consume(n);
            match o {
                Outcome::ErrorReply => continue,
                Outcome::Ok => stats::record_ns(&mut out.hist, elapsed.as_nanos() as u64),
                Outcome::Malformed | Outcome::Places(_) => out.errors.malformed += 1,
            }
            break;
        }
        if !s.quiet && start.elapsed() >= next_note {
            next_note += Duration::from_secs(1);
            let sum = stats::Summary::of(&out.hist);
            eprintln!(
                "loadgen: [{:>3}s] {} trials, p99 {} ms, errors {}",
                start.elapsed().as_secs(),
                out.trials,
                stats::ms(sum.p99),
                out.errors.total()
            );
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::BufRead;
    use std::net::TcpListener;
    use std::thread;

    /// A stand-in for two herd servers: `from` answers IAMATs with their AT line; `to`
    /// answers `?` to the first two polls of each client, then the AT line and JSON.
    fn fake_pair() -> (Target, Target) {
        let lf = TcpListener::bind("127.0.0.1:0").expect("bind");
        let lt = TcpListener::bind("127.0.0.1:0").expect("bind");
        let (af, at) = (lf.local_addr().expect("addr"), lt.local_addr().expect("addr"));
        let (ftx, frx) = std::sync::mpsc::channel::<String>();
        thread::spawn(move || {
            let (s, _) = lf.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            for line in io::BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                let f: Vec<&str> = line.split_whitespace().collect();
                let at = format!("AT A +0.000000001 {} {} {}", f[1], f[2], f[3]);
                let _ = ftx.send(at.clone());
                let _ = writeln!(w, "{at}");
            }
        });
        thread::spawn(move || {
            let (s, _) = lt.accept().expect("accept");
            let mut w = s.try_clone().expect("clone");
            let mut polls = 0;
            for line in io::BufReader::new(s).lines() {
                let Ok(line) = line else { return };
                polls += 1;
                if polls % 3 != 0 {
                    let _ = writeln!(w, "? {line}");
                } else {
                    let at = frx.recv().expect("record");
                    let _ = write!(
                        w,
                        "{at}\n{{\n   \"results\" : [],\n   \"status\" : \"OK\"\n}}\n\n"
                    );
                }
            }
        });
        let t = |a: std::net::SocketAddr| Target {
            name: a.to_string(),
            addr: a,
        };
        (t(af), t(at))
    }

    #[test]
    fn polls_until_the_record_arrives() {
        let (from, to) = fake_pair();
        let s = Settings {
            from,
            to,
            trials: 4,
            timeout: Duration::from_secs(2),
            hard_stop: Duration::from_secs(10),
            crlf: false,
            seed: 3,
            quiet: true,
        };
        let o = run(&s).expect("run");
        assert_eq!(o.errors, Errors::default());
        assert_eq!((o.trials, o.hist.len(), o.polls), (4, 4, 12));
    }
}
