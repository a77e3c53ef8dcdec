//! --idle: connections that send nothing, held open for the whole run (to measure what
//! holding many clients costs a server: its RSS per connection).
//!
//! They are opened before the measured run, gradually: in batches with a short pause, so
//! the server's accept queue (listen backlog) never overflows, and with brief retries on
//! the errors a momentarily full queue or port range gives. They are plain blocking std
//! sockets that no poll ever sees; at the end a non-blocking peek tells which the server
//! closed.

use std::io::{self, ErrorKind, Read};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::target::Target;

/// Connections opened back to back before pausing: half of a 128 backlog (herd's), so an
/// idle server's accept loop always keeps up.
const BATCH: usize = 64;
const PAUSE: Duration = Duration::from_millis(1);
/// How long one connection may keep failing with a retryable error.
const RETRY_FOR: Duration = Duration::from_secs(5);

pub struct Idle {
    streams: Vec<TcpStream>,
}

fn retryable(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ConnectionRefused
            | ErrorKind::WouldBlock
            | ErrorKind::TimedOut
            | ErrorKind::AddrNotAvailable
            | ErrorKind::Interrupted
    )
}

fn connect(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let start = Instant::now();
    let mut wait = Duration::from_millis(5);
    loop {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => return Ok(s),
            Err(e) if retryable(&e) && start.elapsed() < RETRY_FOR => {
                thread::sleep(wait);
                wait = (wait * 2).min(Duration::from_millis(200));
            }
            Err(e) => return Err(e),
        }
    }
}

impl Idle {
    /// Opens `n` connections spread round-robin over `targets`.
    pub fn open(targets: &[Target], n: usize, timeout: Duration, quiet: bool) -> Result<Idle, String> {
        let start = Instant::now();
        let mut last_note = start;
        let mut streams = Vec::with_capacity(n);
        for i in 0..n {
            let t = &targets[i % targets.len()];
            let s = connect(t.addr, timeout).map_err(|e| {
                let hint = if e.kind() == ErrorKind::AddrNotAvailable {
                    " (out of local ports: earlier runs' TIME_WAIT sockets free them within a minute)"
                } else {
                    ""
                };
                format!("idle connection {} of {n} to {t}: {e}{hint}", i + 1)
            })?;
            streams.push(s);
            if (i + 1) % BATCH == 0 {
                thread::sleep(PAUSE);
                if !quiet && last_note.elapsed() >= Duration::from_secs(1) {
                    last_note = Instant::now();
                    eprintln!("loadgen: idle: {} of {n} connections open", i + 1);
                }
            }
        }
        if !quiet && n > 0 {
            eprintln!(
                "loadgen: idle: {n} connections open ({:.1} s)",
                start.elapsed().as_secs_f64()
            );
        }
        Ok(Idle { streams })
    }

    pub fn opened(&self) -> usize {
        self.streams.len()
    }

    /// How many are still open: a read that would block means the server has said nothing
    /// and not closed it.
    pub fn still_open(&mut self) -> usize {
        let mut buf = [0u8; 1];
        let mut open = 0;
        for s in &mut self.streams {
            if s.set_nonblocking(true).is_ok()
                && matches!(s.read(&mut buf), Err(ref e) if e.kind() == ErrorKind::WouldBlock)
            {
                open += 1;
            }
        }
        open
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn opens_holds_and_notices_closes() {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        let t = Target {
            name: "t".into(),
            addr: l.local_addr().expect("addr"),
        };
        let mut idle = Idle::open(std::slice::from_ref(&t), 3, Duration::from_secs(1), true).expect("open");
        let accepted: Vec<_> = (0..3).map(|_| l.accept().expect("accept").0).collect();
        assert_eq!((idle.opened(), idle.still_open()), (3, 3));
        drop(accepted);
        // The closes travel over loopback; give them a moment.
        let deadline = Instant::now() + Duration::from_secs(2);
        while idle.still_open() > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(idle.still_open(), 0);
    }
}
