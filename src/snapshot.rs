//! Table snapshots across restarts (SPEC §8): the file format, a writer thread, loading.
//!
//! The file is a fixed header and then the AT lines, one per record, each ended by `\n`,
//! so `tail -c +37 Bailey.snap` shows the records as the protocol spells them:
//!
//! ```text
//! offset  size  field
//!      0     8  magic  "HERDSNAP"
//!      8     4  format version, u32 little-endian (1)
//!     12     8  record count, u64 LE
//!     20     8  body length in bytes, u64 LE
//!     28     8  FNV-1a-64 of bytes 8..28 and then of the body, u64 LE
//!     36        body
//! ```
//!
//! The checksum covers the count and length as well as the body, so no single flipped
//! byte anywhere goes unnoticed. The reactor only copies its table into one buffer and
//! hands it to the `Writer` thread, which does the hashing and the disk work (temp file,
//! fsync, rename, fsync of the directory), so the old snapshot is whole until the new one
//! is. Decoding never trusts the header's count for memory: it allocates by the bytes
//! actually there.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::table::Offer;

const MAGIC: &[u8; 8] = b"HERDSNAP";
pub const VERSION: u32 = 1;
const HEADER: usize = 36;

#[derive(Debug)]
pub enum SnapError {
    /// Shorter than its header says (or than a header): a write cut off.
    Truncated {
        len: usize,
        need: u64,
    },
    BadMagic,
    WrongVersion(u32),
    /// More bytes after the body than the header accounts for.
    TrailingBytes(u64),
    BadChecksum {
        stored: u64,
        computed: u64,
    },
    /// The body's line count disagrees with the header's.
    BadCount {
        header: u64,
        found: u64,
    },
    Io {
        action: &'static str,
        path: PathBuf,
        error: io::Error,
    },
}

impl fmt::Display for SnapError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SnapError::Truncated { len, need } => {
                write!(f, "truncated: {len} bytes, the header needs {need}")
            }
            SnapError::BadMagic => f.write_str("not a herd snapshot (bad magic)"),
            SnapError::WrongVersion(v) => {
                write!(f, "format version {v}, this herd reads version {VERSION}")
            }
            SnapError::TrailingBytes(n) => write!(f, "{n} bytes after the records"),
            SnapError::BadChecksum { stored, computed } => {
                write!(
                    f,
                    "checksum mismatch (stored {stored:016x}, computed {computed:016x})"
                )
            }
            SnapError::BadCount { header, found } => {
                write!(f, "header says {header} records, body has {found}")
            }
            SnapError::Io { action, path, error } => {
                write!(f, "cannot {action} {}: {error}", path.display())
            }
        }
    }
}

/// FNV-1a, 64 bits: a few lines, no crate, and each step is a bijection of the state, so
/// any one changed byte changes the result.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(mut self, bytes: &[u8]) -> Fnv {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
        self
    }
}

/// The header for `body` (newline-ended lines, `count` of them).
fn header(count: u64, body: &[u8]) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h[12..20].copy_from_slice(&count.to_le_bytes());
    h[20..28].copy_from_slice(&(body.len() as u64).to_le_bytes());
    let sum = Fnv::new().update(&h[8..28]).update(body).0;
    h[28..36].copy_from_slice(&sum.to_le_bytes());
    h
}

/// Appends a whole snapshot of `lines` to `out`; returns the records written. A line
/// holding `\n` could not be read back as one record, so it is left out (AT lines never
/// hold one).
#[cfg(test)]
pub fn encode<'a>(lines: impl Iterator<Item = &'a [u8]>, out: &mut Vec<u8>) -> usize {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER]);
    let mut count = 0;
    for line in lines.filter(|l| !l.contains(&b'\n')) {
        out.extend_from_slice(line);
        out.push(b'\n');
        count += 1;
    }
    let h = header(count as u64, &out[start + HEADER..]);
    out[start..start + HEADER].copy_from_slice(&h);
    count
}

/// The records of a snapshot, borrowed from `data`, or why it cannot be trusted.
pub fn decode(data: &[u8]) -> Result<Vec<&[u8]>, SnapError> {
    let body = check(data)?;
    let header_count = u64_at(data, 12);
    // Each record takes at least its `\n`, so the body's length bounds the allocation
    // whatever the header claims.
    let mut lines = Vec::with_capacity(
        body.len()
            .min(usize::try_from(header_count).unwrap_or(usize::MAX)),
    );
    lines.extend(body_lines(body));
    let ended = body.last().is_none_or(|b| *b == b'\n');
    if !ended || lines.len() as u64 != header_count {
        let found = lines.len() as u64 + u64::from(!ended);
        return Err(SnapError::BadCount {
            header: header_count,
            found,
        });
    }
    Ok(lines)
}

/// Checks everything but the count; returns the body.
fn check(data: &[u8]) -> Result<&[u8], SnapError> {
    let magic_len = data.len().min(MAGIC.len());
    if data[..magic_len] != MAGIC[..magic_len] {
        return Err(SnapError::BadMagic);
    }
    if data.len() < HEADER {
        return Err(SnapError::Truncated {
            len: data.len(),
            need: HEADER as u64,
        });
    }
    let version = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
    if version != VERSION {
        return Err(SnapError::WrongVersion(version));
    }
    let body_len = u64_at(data, 20);
    let have = (data.len() - HEADER) as u64;
    if have < body_len {
        return Err(SnapError::Truncated {
            len: data.len(),
            need: body_len.saturating_add(HEADER as u64),
        });
    }
    if have > body_len {
        return Err(SnapError::TrailingBytes(have - body_len));
    }
    let body = &data[HEADER..];
    let stored = u64_at(data, 28);
    let computed = Fnv::new().update(&data[8..28]).update(body).0;
    if stored != computed {
        return Err(SnapError::BadChecksum { stored, computed });
    }
    Ok(body)
}

fn u64_at(data: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&data[at..at + 8]);
    u64::from_le_bytes(b)
}

fn body_lines(body: &[u8]) -> impl Iterator<Item = &[u8]> {
    body.split_inclusive(|b| *b == b'\n')
        .map(|l| l.strip_suffix(b"\n").unwrap_or(l))
}

/// A snapshot read from disk and checked; its records are borrowed from one buffer, so
/// loading a million of them is one allocation, not a million.
pub struct Snapshot {
    data: Vec<u8>,
    count: usize,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The AT lines, without their `\n`, in the order they were written.
    pub fn lines(&self) -> impl Iterator<Item = &[u8]> {
        body_lines(self.data.get(HEADER..).unwrap_or_default())
    }
}

/// Reads and checks the snapshot at `path`; no file is `Ok(None)` (a first start).
pub fn load(path: &Path) -> Result<Option<Snapshot>, SnapError> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SnapError::Io {
                action: "read",
                path: path.into(),
                error,
            });
        }
    };
    let count = decode(&data)?.len();
    Ok(Some(Snapshot { data, count }))
}

/// The copy of the table the reactor hands over: each line followed by `\n`, e.g.
/// `collect(|| table.records().map(|r| &r.line[..]))`. This runs on the reactor, so it
/// walks the lines twice (`lines` is called twice): once to size the buffer, so there is
/// one allocation and no regrowth copies, then to copy. That is the reactor's whole cost.
#[cfg(test)]
pub fn collect<'a, I: Iterator<Item = &'a [u8]>>(lines: impl Fn() -> I) -> Vec<u8> {
    let mut body = Vec::new();
    collect_into(&mut body, lines);
    body
}

/// `collect` into a buffer that may come from `Writer::spare`: its pages are already
/// mapped, and mapping fresh ones is most of the copy's cost for a big table.
pub fn collect_into<'a, I: Iterator<Item = &'a [u8]>>(body: &mut Vec<u8>, lines: impl Fn() -> I) {
    body.clear();
    let size: usize = lines().map(|l| l.len() + 1).sum();
    body.reserve(size);
    // Each record's line is a separate allocation, so copying them one by one waits on a
    // cache miss per record (most of the copy's time for a big table). Touching a batch
    // of lines first lets those misses overlap; then the copies find them in cache.
    let mut batch: [&[u8]; 32] = [&[]; 32];
    let mut n = 0;
    let mut touched = 0u8;
    for line in lines() {
        touched ^= line.first().copied().unwrap_or(0);
        batch[n] = line;
        n += 1;
        if n == batch.len() {
            copy_lines(body, &batch);
            n = 0;
        }
    }
    copy_lines(body, &batch[..n]);
    std::hint::black_box(touched);
}

/// No check for a `\n` inside a line: table lines come out of line framing and cannot
/// hold one, and the check was a third of the copy. Were one there, the writer counts
/// records by `\n` as written, so the file stays consistent and the stray piece is
/// dropped as malformed at load.
fn copy_lines(body: &mut Vec<u8>, lines: &[&[u8]]) {
    for line in lines {
        body.extend_from_slice(line);
        body.push(b'\n');
    }
}

/// What one finished write did.
#[derive(Debug, Clone, PartialEq)]
pub struct Written {
    pub path: PathBuf,
    pub records: u64,
    pub bytes: u64,
    pub took: Duration,
}

pub type Done = Box<dyn Fn(Result<Written, SnapError>) + Send>;

/// Writes snapshots to one path from a thread of its own.
pub struct Writer {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The newest table copy not yet being written; a newer submit replaces it.
    pending: Option<Vec<u8>>,
    /// The last written buffer, emptied, for the next `collect_into`.
    spare: Option<Vec<u8>>,
    stop: bool,
}

impl Writer {
    /// Creates the directory if needed and starts the thread; `done` hears of every
    /// write's outcome, on the writer's thread.
    pub fn start(path: PathBuf, done: Done) -> io::Result<Writer> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir)?;
        }
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("snapshot".into())
            .spawn(move || writer_loop(&theirs, &path, &done))?;
        Ok(Writer {
            shared,
            thread: Some(thread),
        })
    }

    /// Queues `body` (AT lines, each ended by `\n`, as `collect` builds it) to be
    /// written; replaces a queued one that has not started yet. Never blocks on disk.
    pub fn submit(&self, mut body: Vec<u8>) {
        if body.last().is_some_and(|b| *b != b'\n') {
            body.push(b'\n');
        }
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.pending = Some(body);
        self.shared.wake.notify_one();
    }

    /// The buffer of the last finished write, emptied (or a new one): collecting into it
    /// skips mapping fresh pages, which for 1M records roughly halves the copy on the
    /// reactor, at the price of keeping one table-sized buffer between snapshots.
    pub fn spare(&self) -> Vec<u8> {
        let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
        state.spare.take().unwrap_or_default()
    }

    /// Writes what is queued, then stops the thread; returns when it is all on disk (the
    /// shutdown path: submit the last table, then finish).
    #[cfg(test)]
    pub fn finish(mut self) {
        self.stop();
    }

    /// `finish`, but waits at most `limit` (a signal must end the process within a
    /// second); true if everything queued is on disk. On false the thread is left to end
    /// with the process: the write in flight goes to the temp file, so the previous
    /// snapshot stays whole.
    pub fn finish_within(mut self, limit: Duration) -> bool {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.stop = true;
            self.shared.wake.notify_one();
        }
        let Some(thread) = self.thread.take() else {
            return true;
        };
        let deadline = Instant::now() + limit;
        while !thread.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(2));
        }
        let finished = thread.is_finished();
        if finished {
            let _ = thread.join();
        }
        finished
    }

    fn stop(&mut self) {
        {
            let mut state = self.shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.stop = true;
            self.shared.wake.notify_one();
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn writer_loop(shared: &Shared, path: &Path, done: &Done) {
    loop {
        let body = {
            let mut state = shared.state.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(body) = state.pending.take() {
                    break body;
                }
                if state.stop {
                    return;
                }
                state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
            }
        };
        let result = write_snapshot(path, &body);
        let mut body = body;
        body.clear();
        shared.state.lock().unwrap_or_else(PoisonError::into_inner).spare = Some(body);
        done(result);
    }
}

/// Header and body to `<path>.tmp`, fsync, rename over `path`, fsync the directory.
fn write_snapshot(path: &Path, body: &[u8]) -> Result<Written, SnapError> {
    let started = Instant::now();
    let count = body.iter().filter(|b| **b == b'\n').count() as u64;
    let h = header(count, body);
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let io_err = |action: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |error| SnapError::Io {
            action,
            path: p,
            error,
        }
    };
    let written = (|| {
        let mut file = fs::File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(&h).map_err(io_err("write", &tmp))?;
        file.write_all(body).map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        fs::rename(&tmp, path).map_err(io_err("rename into place", path))
    })();
    if written.is_err() {
        // Leaves no half-written file behind; a directory in its way stays.
        let _ = fs::remove_file(&tmp);
    }
    written?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))?;
    Ok(Written {
        path: path.to_path_buf(),
        records: count,
        bytes: (HEADER + body.len()) as u64,
        took: started.elapsed(),
    })
}

/// This thread's CPU time so far (zero if the clock cannot be read).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the timespec we pass, which outlives the call.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    match (ok, u64::try_from(ts.tv_sec), u32::try_from(ts.tv_nsec)) {
        (true, Ok(s), Ok(ns)) => Duration::new(s, ns),
        _ => Duration::ZERO,
    }
}

/// How this server keeps its table across restarts (`state:` in herd.yml). The limits a
/// loaded record must pass (`table.ttl_s`, `limits.max_future_s`, `limits.max_clients`)
/// are the table's own rules.
#[derive(Clone, Debug)]
pub struct Plan {
    pub path: PathBuf,
    pub every: Duration,
}

/// The longest the final snapshot on SIGTERM/SIGINT may take, the reactor's copy
/// included, before the process exits anyway (the Places pool's grace of at most 300 ms
/// comes on top, within the second). A big table may not make it: then the last
/// periodic snapshot stays, as after a kill -9.
pub const FINAL_WAIT: Duration = Duration::from_millis(650);

/// The reactor's side of snapshots: when the next is due and the writer that takes it.
pub struct Periodic {
    plan: Plan,
    writer: Option<Writer>,
    due: Instant,
}

/// What loading a snapshot into the table did, for the start-up log line.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Restored {
    pub stored: usize,
    pub not_newer: usize,
    pub malformed: usize,
    pub expired: usize,
    pub too_far_ahead: usize,
    /// Refused because the table was full (`limits.max_clients`).
    pub full: usize,
}

impl Periodic {
    /// Starts the writer thread (creating the directory). A failure is logged and leaves
    /// snapshots off: a disk problem must not keep the server from serving.
    pub fn start(plan: Plan, now: Instant) -> Periodic {
        let done: Done = Box::new(|result| match result {
            Ok(w) => log::info!(
                "snapshot: wrote {} records ({} bytes) to {} in {} ms",
                w.records,
                w.bytes,
                w.path.display(),
                w.took.as_millis()
            ),
            Err(e) => log::warn!("snapshot not written: {e}; the previous one stays"),
        });
        let writer = match Writer::start(plan.path.clone(), done) {
            Ok(w) => Some(w),
            Err(e) => {
                log::error!("snapshots off: cannot start writing {}: {e}", plan.path.display());
                None
            }
        };
        Periodic {
            due: now + plan.every,
            plan,
            writer,
        }
    }

    /// Loads the snapshot into `table` (before any link is up): each line is re-parsed
    /// as a neighbour's record would be and offered, minus what the limits rule out. Any
    /// problem with the file is logged and the table starts as it was: never a crash.
    pub fn restore(&self, table: &mut crate::table::Table, servers: &[String]) -> Restored {
        let path = &self.plan.path;
        let started = Instant::now();
        let snap = match load(path) {
            Ok(Some(snap)) if !snap.is_empty() => snap,
            Ok(Some(_)) => {
                log::info!("snapshot: {} holds no records", path.display());
                return Restored::default();
            }
            Ok(None) => {
                log::info!("snapshot: none at {}, starting empty", path.display());
                return Restored::default();
            }
            Err(e) => {
                log::warn!("snapshot {} ignored, starting empty: {e}", path.display());
                return Restored::default();
            }
        };
        let now = crate::protocol::Timestamp::from_system_time(std::time::SystemTime::now());
        let mut r = Restored::default();
        let mut line = Vec::new();
        for raw in snap.lines() {
            let rec = crate::protocol::parse_at_record(raw)
                .filter(|rec| servers.iter().any(|s| s.as_bytes() == rec.server));
            let Some(rec) = rec else {
                r.malformed += 1;
                continue;
            };
            line.clear();
            let loc = rec.write_canonical(&mut line);
            // The table's clock is not set before the first pass: judge by ours.
            let count = match table.offer_at(now, rec.client, rec.time, &line, loc) {
                Offer::Won => &mut r.stored,
                Offer::Lost => &mut r.not_newer,
                Offer::TooFuture => &mut r.too_far_ahead,
                Offer::Expired => &mut r.expired,
                Offer::Full => &mut r.full,
            };
            *count += 1;
        }
        log::info!(
            "snapshot: loaded {} of {} records from {} in {} ms (dropped: {} expired, {} too far ahead, {} malformed, {} duplicates, {} over max_clients)",
            r.stored,
            snap.len(),
            path.display(),
            started.elapsed().as_millis(),
            r.expired,
            r.too_far_ahead,
            r.malformed,
            r.not_newer,
            r.full
        );
        r
    }

    /// When the next snapshot is due, for the poll timeout; None with snapshots off.
    pub fn due(&self) -> Option<Instant> {
        self.writer.as_ref().map(|_| self.due)
    }

    /// Takes a snapshot if one is due: copies the table's lines into the writer's spare
    /// buffer (the only part on the reactor) and hands it over.
    pub fn tick(&mut self, now: Instant, table: &crate::table::Table) {
        if now < self.due {
            return;
        }
        self.due = now + self.plan.every;
        self.submit(table);
    }

    fn submit(&mut self, table: &crate::table::Table) {
        let Some(writer) = &self.writer else {
            return;
        };
        let started = Instant::now();
        let cpu = thread_cpu();
        let mut body = writer.spare();
        collect_into(&mut body, || table.records().map(|r| &r.line[..]));
        // Wall time is the reactor's stall; CPU time tells a slow copy from a busy machine.
        log::debug!(
            "snapshot: copied {} records ({} bytes) on the reactor in {} us ({} us of CPU)",
            table.len(),
            body.len(),
            started.elapsed().as_micros(),
            thread_cpu().saturating_sub(cpu).as_micros()
        );
        writer.submit(body);
    }

    /// The shutdown snapshot: the table as it is now, on disk before the return unless
    /// that takes longer than `FINAL_WAIT`.
    pub fn finish(mut self, table: &crate::table::Table) {
        let deadline = Instant::now() + FINAL_WAIT;
        self.submit(table);
        let left = deadline.saturating_duration_since(Instant::now());
        if let Some(writer) = self.writer.take()
            && !writer.finish_within(left)
        {
            log::warn!(
                "snapshot: final write to {} not done within {} ms; the previous one stays",
                self.plan.path.display(),
                FINAL_WAIT.as_millis()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    const LINES: [&[u8]; 3] = [
        b"AT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
        b"AT Bona -1.000000000 a +12-118 1621464828",
        b"",
    ];

    fn encoded(lines: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        encode(lines.iter().copied(), &mut out);
        out
    }

    /// A fresh directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            let d = std::env::temp_dir().join(format!("herd-snap-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&d);
            fs::create_dir_all(&d).expect("temp dir");
            TempDir(d)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn reheader(data: &mut [u8]) {
        let sum = Fnv::new().update(&data[8..28]).update(&data[HEADER..]).0;
        data[28..36].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn round_trip() {
        let data = encoded(&LINES);
        assert_eq!(decode(&data).expect("decodes"), LINES.to_vec());
        assert_eq!(&data[..8], b"HERDSNAP");
        let empty = encoded(&[]);
        assert_eq!(empty.len(), HEADER);
        assert!(decode(&empty).expect("empty table").is_empty());
    }

    #[test]
    fn a_table_round_trips_through_collect_and_load() {
        let mut table = crate::table::Table::default();
        for line in &LINES[..2] {
            let fields: Vec<&[u8]> = line.split(|b| *b == b' ').collect();
            let time = crate::protocol::Timestamp::parse(fields[5]).expect("time");
            let start = fields[..4].iter().map(|f| f.len() + 1).sum::<usize>();
            table.offer(fields[3], time, line, start..start + fields[4].len());
        }
        let dir = TempDir::new("table");
        let path = dir.0.join("Jaquez.snap");
        let (w, rx) = writer(&path);
        w.submit(collect(|| table.records().map(|r| &r.line[..])));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a report")
            .expect("written");
        let snap = load(&path).expect("loads").expect("exists");
        let mut got: Vec<&[u8]> = snap.lines().collect();
        got.sort();
        assert_eq!(got, LINES[..2].to_vec());
    }

    #[test]
    fn a_line_with_a_newline_is_left_out() {
        let mut out = Vec::new();
        assert_eq!(encode([&b"a\nb"[..], b"c"].into_iter(), &mut out), 1);
        assert_eq!(decode(&out).expect("decodes"), vec![&b"c"[..]]);
    }

    #[test]
    fn truncated_at_every_length() {
        let data = encoded(&LINES);
        for n in 0..data.len() {
            match decode(&data[..n]) {
                Err(SnapError::Truncated { len, .. }) => assert_eq!(len, n),
                other => panic!("length {n}: {other:?}"),
            }
        }
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let data = encoded(&LINES);
        for i in 0..data.len() {
            for mask in [0x01, 0x80, 0xff] {
                let mut bad = data.clone();
                bad[i] ^= mask;
                assert!(decode(&bad).is_err(), "byte {i} ^ {mask:#x} accepted");
            }
        }
        let mut bad = data.clone();
        bad[0] = b'X';
        assert!(matches!(decode(&bad), Err(SnapError::BadMagic)));
        let mut bad = data.clone();
        let last = bad.len() - 2;
        bad[last] ^= 1;
        assert!(matches!(decode(&bad), Err(SnapError::BadChecksum { .. })));
    }

    #[test]
    fn wrong_version_trailing_bytes_and_bad_count() {
        let mut data = encoded(&LINES);
        data[8..12].copy_from_slice(&2u32.to_le_bytes());
        reheader(&mut data);
        assert!(matches!(decode(&data), Err(SnapError::WrongVersion(2))));

        let mut data = encoded(&LINES);
        data.push(b'x');
        assert!(matches!(decode(&data), Err(SnapError::TrailingBytes(1))));

        let mut data = encoded(&LINES);
        data[12..20].copy_from_slice(&7u64.to_le_bytes());
        reheader(&mut data);
        assert!(matches!(
            decode(&data),
            Err(SnapError::BadCount { header: 7, found: 3 })
        ));
    }

    #[test]
    fn a_huge_claimed_count_allocates_nothing_big() {
        let mut data = encoded(&LINES);
        data[12..20].copy_from_slice(&u64::MAX.to_le_bytes());
        reheader(&mut data);
        // With capacity taken from the header this would abort the test process.
        assert!(matches!(decode(&data), Err(SnapError::BadCount { .. })));
        let mut data = encoded(&LINES);
        data[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(decode(&data), Err(SnapError::Truncated { .. })));
    }

    #[test]
    fn errors_read_as_log_lines() {
        let e = SnapError::WrongVersion(9).to_string();
        assert_eq!(e, "format version 9, this herd reads version 1");
        let e = SnapError::Truncated { len: 3, need: 36 }.to_string();
        assert_eq!(e, "truncated: 3 bytes, the header needs 36");
    }

    #[test]
    fn restore_offers_what_the_limits_allow() {
        let dir = TempDir::new("restore");
        let path = dir.0.join("Bailey.snap");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let lines = [
            format!("AT Bailey +0.000000000 fresh +1+1 {now}"),
            format!("AT   Bona  +0.000000000 spaced +1+1 {now}"),
            format!("AT Bailey +0.000000000 old +1+1 {}", now - 7200),
            format!("AT Bailey +0.000000000 ahead +1+1 {}", now + 7200),
            format!("AT Nobody +0.000000000 stranger +1+1 {now}"),
            "garbage".to_string(),
            format!("AT Bailey +0.000000000 fresh +1+1 {}", now - 1),
        ];
        let mut data = Vec::new();
        encode(lines.iter().map(|l| l.as_bytes()), &mut data);
        fs::write(&path, data).expect("write");
        let plan = Plan {
            path: path.clone(),
            every: Duration::from_secs(60),
        };
        let servers = ["Bailey".to_string(), "Bona".to_string()];
        let p = Periodic::start(plan, Instant::now());
        let mut table = crate::table::Table::with_rules(crate::table::Rules {
            ttl: Some(Duration::from_secs(3600)),
            max_future: Some(Duration::from_secs(3600)),
            max_clients: 0,
        });
        let r = p.restore(&mut table, &servers);
        assert_eq!(
            r,
            Restored {
                stored: 2,
                not_newer: 1,
                malformed: 2,
                expired: 1,
                too_far_ahead: 1,
                full: 0
            }
        );
        let spaced = table.get(b"spaced").expect("stored");
        assert_eq!(
            &spaced.line[..],
            format!("AT Bona +0.000000000 spaced +1+1 {now}").as_bytes(),
            "stored in canonical form"
        );
        assert!(table.get(b"old").is_none() && table.get(b"ahead").is_none());
        // With the limits off, both are kept; with max_clients 3, the fourth is refused.
        let mut table = crate::table::Table::default();
        assert_eq!(p.restore(&mut table, &servers).stored, 4);
        let mut small = crate::table::Table::with_rules(crate::table::Rules {
            ttl: None,
            max_future: None,
            max_clients: 3,
        });
        let r = p.restore(&mut small, &servers);
        assert_eq!((r.stored, r.full), (3, 1));
        // A corrupt file leaves the table as it was.
        fs::write(&path, b"HERDSNAP\x01\0\0\0garbage").expect("write");
        assert_eq!(p.restore(&mut table, &servers), Restored::default());
        assert_eq!(table.len(), 4);
    }

    #[test]
    fn periodic_snapshots_and_the_final_one() {
        let dir = TempDir::new("periodic");
        let path = dir.0.join("Bona.snap");
        let plan = Plan {
            path: path.clone(),
            every: Duration::from_secs(5),
        };
        let t0 = Instant::now();
        let mut p = Periodic::start(plan, t0);
        assert_eq!(p.due(), Some(t0 + Duration::from_secs(5)));
        let mut table = crate::table::Table::default();
        let line = b"AT Bona +0.000000000 kiwi +1+1 5";
        let time = crate::protocol::Timestamp::parse(b"5").expect("time");
        table.offer(b"kiwi", time, line, 27..31);
        p.tick(t0 + Duration::from_secs(4), &table);
        assert_eq!(p.due(), Some(t0 + Duration::from_secs(5)), "not due yet");
        p.tick(t0 + Duration::from_secs(5), &table);
        assert_eq!(p.due(), Some(t0 + Duration::from_secs(10)));
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "periodic snapshot never written");
            std::thread::sleep(Duration::from_millis(5));
        }
        let line2 = b"AT Bona +0.000000000 pear +1+1 6";
        table.offer(b"pear", time, line2, 27..31);
        p.finish(&table);
        let snap = load(&path).expect("loads").expect("exists");
        assert_eq!(snap.len(), 2, "the final snapshot has the latest table");
    }

    #[test]
    fn load_missing_empty_and_good_files() {
        let dir = TempDir::new("load");
        let path = dir.0.join("Bailey.snap");
        assert!(matches!(load(&path), Ok(None)));
        fs::write(&path, b"").expect("write");
        assert!(matches!(load(&path), Err(SnapError::Truncated { len: 0, .. })));
        fs::write(&path, encoded(&LINES)).expect("write");
        let snap = load(&path).expect("loads").expect("exists");
        assert_eq!(snap.len(), 3);
        assert_eq!(snap.lines().collect::<Vec<_>>(), LINES.to_vec());
    }

    fn writer(path: &Path) -> (Writer, mpsc::Receiver<Result<Written, SnapError>>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let done: Done = Box::new(move |r| {
            let _ = tx.lock().unwrap_or_else(PoisonError::into_inner).send(r);
        });
        (
            Writer::start(path.to_path_buf(), done).expect("writer starts"),
            rx,
        )
    }

    #[test]
    fn the_writer_writes_and_the_last_submit_wins() {
        let dir = TempDir::new("writer");
        let path = dir.0.join("sub").join("Bona.snap");
        let (w, rx) = writer(&path);
        w.submit(collect(|| LINES.iter().copied()));
        let first = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("a report")
            .expect("written");
        assert_eq!((first.records, first.path.as_path()), (3, path.as_path()));
        assert_eq!(first.bytes, fs::metadata(&path).expect("file").len());
        let spare = w.spare();
        assert!(spare.is_empty() && spare.capacity() >= first.bytes as usize - HEADER);
        assert_eq!(w.spare().capacity(), 0, "handed out once");
        for i in 0..50u32 {
            w.submit(format!("AT x +0.000000000 c{i} +1+1 {i}\n").into_bytes());
        }
        w.finish();
        let reports: Vec<_> = rx.try_iter().collect();
        assert!(
            !reports.is_empty() && reports.len() <= 50,
            "{} reports",
            reports.len()
        );
        let snap = load(&path).expect("loads").expect("exists");
        assert_eq!(
            snap.lines().collect::<Vec<_>>(),
            vec![&b"AT x +0.000000000 c49 +1+1 49"[..]]
        );
        let tmp = dir.0.join("sub").join("Bona.snap.tmp");
        assert!(!tmp.exists(), "temp file left behind");
    }

    #[test]
    fn a_failed_write_leaves_the_old_snapshot_whole() {
        let dir = TempDir::new("atomic");
        let path = dir.0.join("Clark.snap");
        let (w, rx) = writer(&path);
        w.submit(collect(|| LINES.iter().copied()));
        rx.recv_timeout(Duration::from_secs(10))
            .expect("a report")
            .expect("written");
        // A directory where the temp file goes makes the create fail, even for root.
        fs::create_dir(dir.0.join("Clark.snap.tmp")).expect("mkdir");
        w.submit(b"AT new +0.000000000 n +1+1 1\n".to_vec());
        match rx.recv_timeout(Duration::from_secs(10)).expect("a report") {
            Err(SnapError::Io { action: "create", .. }) => {}
            other => panic!("{other:?}"),
        }
        let snap = load(&path).expect("old file intact").expect("exists");
        assert_eq!(snap.lines().collect::<Vec<_>>(), LINES.to_vec());
    }

    /// Measurement for the issue's closing note, not a check: `cargo test --release --bin
    /// herd -- --ignored snapshot::tests::write_a_million --nocapture`.
    #[test]
    #[ignore]
    fn write_a_million() {
        let dir = TempDir::new("million");
        let path = dir.0.join("Bailey.snap");
        let lines: Vec<Vec<u8>> = (0..1_000_000u32)
            .map(|i| {
                format!("AT Bailey +0.263873386 client{i:07} +34.068930-118.445127 1621464827.{i:09}")
                    .into_bytes()
            })
            .collect();
        let started = Instant::now();
        let mut grown = Vec::new();
        for l in &lines {
            grown.extend_from_slice(l);
            grown.push(b'\n');
        }
        let grown_copy = started.elapsed();
        drop(grown);
        let started = Instant::now();
        let body = collect(|| lines.iter().map(Vec::as_slice));
        let copy = started.elapsed();
        let mut reused = body.clone();
        let started = Instant::now();
        collect_into(&mut reused, || lines.iter().map(Vec::as_slice));
        let reused_copy = started.elapsed();
        assert_eq!(reused, body);
        drop(reused);
        eprintln!(
            "copy into a growing Vec {grown_copy:?}, sized first {copy:?}, into a mapped buffer {reused_copy:?}"
        );
        let (w, rx) = writer(&path);
        w.submit(body);
        let written = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("report")
            .expect("written");
        w.finish();
        let started = Instant::now();
        let snap = load(&path).expect("loads").expect("exists");
        let loaded = started.elapsed();
        assert_eq!(snap.len(), 1_000_000);
        eprintln!(
            "1M records: reactor-side copy {copy:?}; write (encode+fsync+rename) {:?}, {} bytes; load+check {loaded:?}",
            written.took, written.bytes
        );
    }

    #[test]
    fn a_million_records() {
        let lines: Vec<Vec<u8>> = (0..1_000_000u32)
            .map(|i| {
                format!("AT Bailey +0.263873386 client{i:07} +34.068930-118.445127 1621464827.{i:09}")
                    .into_bytes()
            })
            .collect();
        let started = Instant::now();
        let body = collect(|| lines.iter().map(Vec::as_slice));
        let copied = started.elapsed();
        let mut out = Vec::new();
        let started = Instant::now();
        encode(lines.iter().map(Vec::as_slice), &mut out);
        let encoded = started.elapsed();
        let started = Instant::now();
        let decoded = decode(&out).expect("decodes");
        let took = started.elapsed();
        assert_eq!(decoded.len(), 1_000_000);
        assert_eq!(decoded[999_999], lines[999_999].as_slice());
        assert_eq!(out.len(), HEADER + body.len());
        // Not asserted (test builds are unoptimised); printed for the report.
        eprintln!(
            "1M records, {} bytes: copy {copied:?}, encode {encoded:?}, decode {took:?}",
            out.len()
        );
    }
}
