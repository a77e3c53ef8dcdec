//! The thread that writes the log file.
//!
//! SPEC §4 has a log line for every message, so under load the log is written at 30-180
//! MB/s. Copying that text into the page cache took a tenth of the reactor thread's time
//! (the `write` calls, profiled at pipeline 1), on the core that limits throughput. So
//! records fill an in-memory buffer, and a full buffer, or one that `flush` asks for (the
//! reactor does every 20 ms), goes to this thread, which writes it to the `LogFile` and
//! hands the emptied buffer back. Buffers are written in the order they were filled, by
//! one thread, so the file reads as if written in place.
//!
//! A fixed set of buffers bounds the memory. When the thread falls behind (a stalled disk)
//! and every buffer is waiting for it, the next hand-off waits for one to come back, as
//! the logging thread used to wait for its own write: nothing is dropped. If the thread
//! has gone (it cannot panic on input, but if it did), records are dropped rather than
//! kept, so a logging thread never blocks or grows on its account.

use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError, sync_channel};
use std::thread;
use std::time::{Duration, Instant};

use crate::log_file::LogFile;

/// Buffers in all: one being filled, the rest queued for or being written by the thread.
const BUFFERS: usize = 4;

/// What the writer thread is asked to do, in order.
enum Job {
    Write(Vec<u8>),
    /// Let the file check its reopen flag although nothing new was written.
    Flush,
    /// Answer once everything before has been written.
    Sync(SyncSender<()>),
}

/// The `Write` end the logger fills: a buffer, handed to the writer thread when full.
pub struct Handoff {
    current: Vec<u8>,
    capacity: usize,
    jobs: SyncSender<Job>,
    free: Receiver<Vec<u8>>,
    /// Buffers made so far, up to BUFFERS.
    made: usize,
}

/// Starts the writer thread for `file`, with buffers of `capacity` bytes.
pub fn start(file: LogFile, capacity: usize) -> io::Result<Handoff> {
    // Never full: at most BUFFERS writes are out at once, plus a flush and a sync.
    let (jobs, queue) = sync_channel::<Job>(BUFFERS + 2);
    let (give_back, free) = sync_channel::<Vec<u8>>(BUFFERS);
    thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_out(file, &queue, &give_back, capacity))?;
    Ok(Handoff {
        current: Vec::with_capacity(capacity),
        capacity,
        jobs,
        free,
        made: 1,
    })
}

/// The writer thread: writes each buffer and gives it back, until the logger is gone.
fn write_out(mut file: LogFile, queue: &Receiver<Job>, give_back: &SyncSender<Vec<u8>>, capacity: usize) {
    for job in queue {
        match job {
            Job::Write(mut buf) => {
                // A failed write (a full disk) loses the rest of this buffer, unnoted: there
                // is nowhere left to note it. Every buffer ends at a line end, so the next
                // one starts with a whole line.
                let _ = file.write_all(&buf);
                buf.clear();
                // A record longer than a buffer grew this one: give the memory back.
                buf.shrink_to(capacity);
                let _ = give_back.try_send(buf);
            }
            Job::Flush => {
                let _ = file.flush();
            }
            Job::Sync(done) => {
                let _ = file.flush();
                let _ = done.send(());
            }
        }
    }
}

impl Handoff {
    /// Has the writer thread check its file's reopen flag now.
    pub fn poke(&self) {
        let _ = self.jobs.try_send(Job::Flush);
    }

    /// Hands off what is buffered and waits, at most `limit` in all, until everything
    /// handed off is in the file: for the end of the process, which must not hang on a
    /// stalled disk (SIGTERM is honoured within a second, SPEC §1).
    pub fn sync(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        if !self.current.is_empty() {
            let Ok(next) = self.next_buffer(Some(limit)) else {
                return;
            };
            let full = std::mem::replace(&mut self.current, next);
            if self.jobs.try_send(Job::Write(full)).is_err() {
                return;
            }
        }
        let (done, wait) = sync_channel(1);
        if self.jobs.try_send(Job::Sync(done)).is_ok() {
            // Past the limit the process ends without the rest.
            let _ = wait.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    }

    /// The buffer, with room for `n` more bytes unless it is empty (handed off first if
    /// it has not): records are written straight into it, whole, so that every buffer
    /// handed off ends at a line end. A rotation or a reopen, which happen between two
    /// buffers, then never split a line between two files.
    pub fn room(&mut self, n: usize) -> &mut Vec<u8> {
        if self.current.len() + n > self.capacity && !self.current.is_empty() {
            // On failure the buffer was emptied (see `hand_off`): the record goes on.
            let _ = self.hand_off();
        }
        &mut self.current
    }

    /// Sends the current buffer to the writer thread and goes on in a free one.
    fn hand_off(&mut self) -> io::Result<()> {
        let full = match self.next_buffer(None) {
            Ok(next) => std::mem::replace(&mut self.current, next),
            Err(e) => {
                self.current.clear();
                return Err(e);
            }
        };
        self.jobs.send(Job::Write(full)).map_err(|_| gone())
    }

    /// A free buffer: one given back, a new one while fewer than BUFFERS exist, or else
    /// the next one given back, waited for (at most `wait` if given), as a direct write
    /// would have waited.
    fn next_buffer(&mut self, wait: Option<Duration>) -> io::Result<Vec<u8>> {
        match self.free.try_recv() {
            Ok(buf) => Ok(buf),
            Err(TryRecvError::Empty) if self.made < BUFFERS => {
                self.made += 1;
                Ok(Vec::with_capacity(self.capacity))
            }
            Err(TryRecvError::Empty) => match wait {
                None => self.free.recv().map_err(|_| gone()),
                Some(limit) => self
                    .free
                    .recv_timeout(limit)
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut)),
            },
            Err(TryRecvError::Disconnected) => Err(gone()),
        }
    }
}

fn gone() -> io::Error {
    io::Error::other("the log writer thread has stopped")
}

impl Write for Handoff {
    #[inline]
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf).map(|()| buf.len())
    }

    /// Every piece of every record comes through here: kept to a bounds check and a copy.
    #[inline]
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.current.len() + buf.len() > self.capacity && !self.current.is_empty() {
            self.hand_off()?;
        }
        self.current.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.current.is_empty() {
            return Ok(());
        }
        self.hand_off()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Rotation;
    use std::sync::atomic::AtomicBool;

    fn flag() -> &'static AtomicBool {
        Box::leak(Box::new(AtomicBool::new(false)))
    }

    #[test]
    fn buffers_reach_the_file_whole_and_in_order() {
        let dir = std::env::temp_dir().join(format!("herd-log-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("order.log");
        let _ = std::fs::remove_file(&path);
        let rotation = Rotation {
            max_bytes: None,
            keep: 0,
        };
        let file = LogFile::open(path.clone(), rotation, flag()).expect("open");
        // Small buffers, so that many hand-offs (and waits for free buffers) happen.
        let mut h = start(file, 100).expect("start");
        let mut want = Vec::new();
        for i in 0..20_000 {
            // Some records are longer than a buffer.
            let line = if i % 997 == 0 {
                format!("record {i} {}\n", "x".repeat(300))
            } else {
                format!("record {i}\n")
            };
            h.write_all(line.as_bytes()).expect("write");
            want.extend_from_slice(line.as_bytes());
        }
        // `sync` returns once all of it is in the file: read at once, not polled.
        h.sync(Duration::from_secs(10));
        let got = std::fs::read(&path).expect("read the log");
        assert_eq!(got.len(), want.len());
        assert!(got == want, "the file's bytes differ from what was written");
        // Never more than BUFFERS buffers, however many hand-offs.
        assert!(h.made <= BUFFERS, "{} buffers made", h.made);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn sync_returns_once_everything_handed_off_is_written() {
        let dir = std::env::temp_dir().join(format!("herd-log-sync-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("sync.log");
        let _ = std::fs::remove_file(&path);
        let rotation = Rotation {
            max_bytes: None,
            keep: 0,
        };
        let file = LogFile::open(path.clone(), rotation, flag()).expect("open");
        // Big buffers: writing the last one takes the thread a while.
        let mut h = start(file, 16 << 20).expect("start");
        let line = [b'y'; 1023];
        for _ in 0..(48 << 10) {
            h.write_all(&line).expect("write");
            h.write_all(b"\n").expect("write");
        }
        h.sync(Duration::from_secs(30));
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        assert_eq!(len, 48 << 20, "the file when sync returned");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_reopen_between_buffers_never_splits_a_record() {
        let dir = std::env::temp_dir().join(format!("herd-log-reopen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("reopen.log");
        let moved = dir.join("reopen.log.old");
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&moved);
        let rotation = Rotation {
            max_bytes: None,
            keep: 0,
        };
        let reopen = flag();
        let file = LogFile::open(path.clone(), rotation, reopen).expect("open");
        let mut h = start(file, 64).expect("start");
        for i in 0..5_000 {
            if i == 2_500 {
                // logrotate's move, then SIGHUP's flag, seen at the next buffer's write.
                std::fs::rename(&path, &moved).expect("move the log away");
                reopen.store(true, std::sync::atomic::Ordering::Relaxed);
                h.poke();
            }
            // In pieces, as a record is formatted.
            let out = h.room(32);
            out.extend_from_slice(b"record ");
            out.extend_from_slice(i.to_string().as_bytes());
            out.extend_from_slice(b" end\n");
        }
        h.sync(Duration::from_secs(10));
        let old = std::fs::read_to_string(&moved).expect("the moved log");
        let new = std::fs::read_to_string(&path).expect("the reopened log");
        for (name, text) in [("moved", &old), ("reopened", &new)] {
            assert!(text.ends_with('\n'), "{name} log ends mid-record");
            for line in text.lines() {
                let ok = line
                    .strip_prefix("record ")
                    .and_then(|l| l.strip_suffix(" end"))
                    .is_some_and(|n| n.parse::<u32>().is_ok());
                assert!(ok, "{name} log holds a split record: {line:?}");
            }
        }
        let all: Vec<u32> = old
            .lines()
            .chain(new.lines())
            .map(|l| l["record ".len()..l.len() - 4].parse().expect("number"))
            .collect();
        assert_eq!(
            all,
            (0..5_000).collect::<Vec<u32>>(),
            "every record, once, in order"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
