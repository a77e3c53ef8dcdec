//! The log file as an append-only writer that keeps its share of the page cache small.
//!
//! A busy server writes its log at up to ~200 MB/s (a line per message, SPEC §4). Left to
//! the kernel, that text piles up as dirty pages until the flusher wakes (after 30 s, or
//! at gigabytes), and past `vm.dirty_ratio` the kernel stalls the writer: the log writer
//! thread, and once its buffers are full the reactor behind it. The server never reads
//! its log back, so each chunk written is handed to writeback at once
//! (`sync_file_range`, which starts the I/O and, unless the device's queue is full, does
//! not wait for it), and the chunk two before it, normally
//! on disk by then, is dropped from the cache (`posix_fadvise(DONTNEED)`). Dirty log data
//! stays under two chunks and cached log data near three, and new writes reuse freed
//! pages: on the benchmark VM, writing into pages never touched before ran at about
//! 270 MB/s, against about 2 GB/s this way (bench/NOTES.md).
//!
//! The calls are made by a helper thread, since they can take milliseconds. Both are
//! advice: a failure (or another OS, or a 32-bit one) only means the kernel's defaults
//! apply.
//!
//! The file also rotates itself (SPEC §7): once it reaches `log.rotate_mb` it is renamed
//! to `<Name>.log.1` (older ones shift up, the one past `log.keep` is overwritten) and a
//! new `<Name>.log` is opened. That is a few renames and an open on the writing thread;
//! the old file's last writeback and its pages' drop go to the helper thread. A
//! rotation happens right after a line end, so no line is split between two files. A
//! reopen by path, asked for by a flag (SIGHUP, for logrotate's move-then-signal), is
//! the same switch without the renames.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread;

use crate::config::Rotation;

/// Bytes per writeback step: large enough that the two calls per step cost nothing next
/// to the writes, small enough that little dirty data waits.
const CHUNK: u64 = 8 << 20;

/// Advice ranges start on this boundary, the usual page size (a partial page at the
/// start is simply kept).
const PAGE: u64 = 4096;

/// Bytes written to the log file(s) since start, across rotations (`herd_log_bytes_total`).
pub static WRITTEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A log file opened for appending, whose written pages leave the page cache.
pub struct LogFile {
    /// Shared with the helper thread, which may still be advising on a file rotated away.
    file: Arc<File>,
    path: PathBuf,
    rotation: Rotation,
    /// Rotate after the first line end at or past this offset; None never.
    rotate_at: Option<u64>,
    /// Set by whoever wants the file reopened by path; checked on each write and flush.
    reopen: &'static AtomicBool,
    /// Where the next write lands: the file's length, as the file is opened for appending.
    /// Counted, and checked against the file once per chunk (see `write`).
    end: u64,
    /// Everything before this offset has been handed to writeback.
    synced: u64,
    chunk: u64,
    /// The thread that makes the calls: each can take milliseconds (sync_file_range
    /// prepares the whole chunk's I/O in the caller, 1-4 ms per 8 MiB measured, and the
    /// drop walks its pages), too long for the reactor thread. None where there are no
    /// calls to make.
    advisor: Option<Advisor>,
}

/// The helper thread's queue: advice, with the file it is for.
type Advisor = SyncSender<(Arc<File>, Advice)>;

/// Opens `path` for appending, creating it.
fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}

impl LogFile {
    /// Opens (appending, creating) the log at `path`; its length is the write position.
    pub fn open(path: PathBuf, rotation: Rotation, reopen: &'static AtomicBool) -> io::Result<LogFile> {
        LogFile::with_chunk(path, rotation, reopen, CHUNK)
    }

    fn with_chunk(
        path: PathBuf,
        rotation: Rotation,
        reopen: &'static AtomicBool,
        chunk: u64,
    ) -> io::Result<LogFile> {
        let file = open_append(&path)?;
        let end = file.metadata()?.len();
        Ok(LogFile {
            file: Arc::new(file),
            path,
            rotation,
            rotate_at: rotation.max_bytes,
            reopen,
            end,
            synced: end / PAGE * PAGE,
            chunk,
            advisor: spawn_advisor()?,
        })
    }

    fn write_here(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = (&*self.file).write(buf)?;
        self.end += n as u64;
        WRITTEN.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        if self.end - self.synced >= self.chunk {
            self.recount();
            let (file, advisor) = (&self.file, self.advisor.as_ref());
            advise(&mut self.synced, self.end, self.chunk, |advice| {
                // A full queue means the advisor is far behind: this advice is skipped,
                // which only leaves those pages to the kernel's defaults.
                if let Some(advisor) = advisor {
                    let _ = advisor.try_send((Arc::clone(file), advice));
                }
            });
        }
        Ok(n)
    }

    /// Shifts the old files up and starts a new one. On failure the current file goes
    /// on, says so in a line of its own, and the next try is another `max_bytes` later.
    fn rotate(&mut self) {
        let result = shift(&self.path, self.rotation.keep).and_then(|()| self.switch());
        if let Err(e) = result {
            self.note("rotate", &e);
            self.rotate_at = self.rotation.max_bytes.map(|max| self.end.saturating_add(max));
        }
    }

    fn reopen_if_asked(&mut self) {
        if self.reopen.load(Ordering::Relaxed) {
            self.reopen.store(false, Ordering::Relaxed);
            if let Err(e) = self.switch() {
                self.note("reopen", &e);
            }
        }
    }

    /// Goes on in a file newly opened at `path`; the old one is finished off by the helper.
    fn switch(&mut self) -> io::Result<()> {
        // The directory may have gone with the old file (SPEC §1: created if missing).
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir)?;
        }
        let file = open_append(&self.path)?;
        let end = file.metadata()?.len();
        let old = std::mem::replace(&mut self.file, Arc::new(file));
        if let Some(advisor) = &self.advisor {
            let _ = advisor.try_send((old, Advice::Retire));
        }
        self.end = end;
        self.synced = end / PAGE * PAGE;
        self.rotate_at = self.rotation.max_bytes;
        Ok(())
    }

    /// A line about the log itself, written straight into the file (the logger cannot
    /// be called from inside it).
    fn note(&mut self, what: &str, e: &io::Error) {
        let now = crate::logging::now();
        let line = format!(
            "{now} [ERROR] cannot {what} the log {}: {e}\n",
            self.path.display()
        );
        let _ = self.write_here(line.as_bytes());
    }

    /// Re-reads the write position. The count can go wrong when the file changes
    /// under us: truncated by hand or by `logrotate`'s copytruncate (writes restart at 0,
    /// and advice for offsets far past the end would do nothing from then on), or appended
    /// to by another process.
    fn recount(&mut self) {
        let Ok(pos) = (&*self.file).stream_position() else {
            return;
        };
        if pos < self.synced {
            self.synced = pos / PAGE * PAGE;
        }
        self.end = pos;
    }
}

/// `<path>.<k>`.
fn numbered(path: &Path, k: u32) -> PathBuf {
    let mut name = OsString::from(path.as_os_str());
    name.push(format!(".{k}"));
    PathBuf::from(name)
}

/// `<path>` becomes `<path>.1`, `.1` becomes `.2`, ... up to `.<keep>`, whose old content
/// the rename drops; with `keep` 0 the file is simply removed. Missing files are skipped.
fn shift(path: &Path, keep: u32) -> io::Result<()> {
    let skip_missing = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    if keep == 0 {
        return skip_missing(fs::remove_file(path));
    }
    for k in (1..keep).rev() {
        skip_missing(fs::rename(numbered(path, k), numbered(path, k + 1)))?;
    }
    // Missing when an operator moved it away: the new file is opened all the same.
    skip_missing(fs::rename(path, numbered(path, 1)))
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.reopen_if_asked();
        if let Some(at) = self.rotate_at
            && self.end.saturating_add(buf.len() as u64) > at
        {
            // The old file ends at the last line end that fits, so it stays within
            // max_bytes; the caller writes the rest anew. Only a line longer than
            // max_bytes, in a file of its own, goes past it.
            let room = usize::try_from(at.saturating_sub(self.end)).map_or(buf.len(), |r| r.min(buf.len()));
            let fits = buf[..room].iter().rposition(|&b| b == b'\n');
            let cut = fits.or_else(|| {
                (self.end == 0)
                    .then(|| buf.iter().position(|&b| b == b'\n'))
                    .flatten()
            });
            match cut {
                Some(i) => {
                    let n = self.write_here(&buf[..=i])?;
                    if n == i + 1 {
                        self.rotate();
                    }
                    return Ok(n);
                }
                None if self.end > 0 => self.rotate(),
                None => {}
            }
        }
        self.write_here(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.reopen_if_asked();
        (&*self.file).flush()
    }
}

/// Starts the thread that applies advice to the files it is given. It ends when the
/// `LogFile` is dropped.
fn spawn_advisor() -> io::Result<Option<Advisor>> {
    if !ADVICE_APPLIES {
        return Ok(None);
    }
    // Eight chunks of slack; two messages per chunk.
    let (tx, rx) = sync_channel::<(Arc<File>, Advice)>(16);
    thread::Builder::new()
        .name("log-writeback".into())
        .spawn(move || {
            for (file, advice) in rx {
                apply(&file, advice);
            }
        })?;
    Ok(Some(tx))
}

const ADVICE_APPLIES: bool = cfg!(all(target_os = "linux", target_pointer_width = "64"));

#[derive(Clone, Copy, Debug, PartialEq)]
// Only read where the calls exist.
#[cfg_attr(not(all(target_os = "linux", target_pointer_width = "64")), allow(dead_code))]
enum Advice {
    /// Start writing back `len` bytes at `offset`.
    WriteBack { offset: u64, len: u64 },
    /// Drop `len` bytes at `offset` from the page cache (normally written back by now).
    Drop { offset: u64, len: u64 },
    /// A file rotated or reopened away from: write back the rest, wait for it, and drop
    /// all its pages. Waiting is fine here; nothing else waits on this thread.
    Retire,
}

/// The advice due once the file has grown to `end`: each whole chunk past `synced` goes
/// to writeback, and the chunk two before it, whose writeback started two chunks
/// earlier, is dropped. Advances `synced`.
fn advise(synced: &mut u64, end: u64, chunk: u64, mut apply: impl FnMut(Advice)) {
    while end.saturating_sub(*synced) >= chunk {
        apply(Advice::WriteBack {
            offset: *synced,
            len: chunk,
        });
        if let Some(offset) = synced.checked_sub(2 * chunk) {
            apply(Advice::Drop { offset, len: chunk });
        }
        *synced += chunk;
    }
}

// 64-bit Linux, where file offsets are i64 for both calls.
#[cfg(all(target_os = "linux", target_pointer_width = "64"))]
fn apply(file: &File, advice: Advice) {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let off = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    // SAFETY: `fd` is an open descriptor owned by `file` for the whole call; neither call
    // takes a pointer. Results are ignored: both are advice (see the module comment).
    unsafe {
        match advice {
            Advice::WriteBack { offset, len } => {
                libc::sync_file_range(fd, off(offset), off(len), libc::SYNC_FILE_RANGE_WRITE);
            }
            Advice::Drop { offset, len } => {
                libc::posix_fadvise(fd, off(offset), off(len), libc::POSIX_FADV_DONTNEED);
            }
            Advice::Retire => {
                // Length 0: to the end of the file.
                let all = libc::SYNC_FILE_RANGE_WAIT_BEFORE
                    | libc::SYNC_FILE_RANGE_WRITE
                    | libc::SYNC_FILE_RANGE_WAIT_AFTER;
                libc::sync_file_range(fd, 0, 0, all);
                libc::posix_fadvise(fd, 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn apply(_file: &File, _advice: Advice) {}

#[cfg(test)]
mod tests {
    use super::{Advice, LogFile, advise};
    use crate::config::Rotation;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::sync::atomic::{AtomicBool, Ordering};

    const NEVER: Rotation = Rotation {
        max_bytes: None,
        keep: 0,
    };

    /// A reopen flag of the test's own (the server's is a static in logging).
    fn flag() -> &'static AtomicBool {
        Box::leak(Box::new(AtomicBool::new(false)))
    }

    fn plan(mut synced: u64, ends: &[u64], chunk: u64) -> Vec<Advice> {
        let mut out = Vec::new();
        for &end in ends {
            advise(&mut synced, end, chunk, |a| out.push(a));
        }
        out
    }

    fn wb(offset: u64) -> Advice {
        Advice::WriteBack { offset, len: 100 }
    }

    fn drop(offset: u64) -> Advice {
        Advice::Drop { offset, len: 100 }
    }

    #[test]
    fn nothing_until_a_whole_chunk_is_written() {
        assert_eq!(plan(0, &[0, 1, 99], 100), []);
        assert_eq!(plan(1_000, &[1_099], 100), []);
    }

    #[test]
    fn each_chunk_goes_to_writeback_and_the_one_two_before_is_dropped() {
        assert_eq!(
            plan(0, &[100, 250, 310, 399, 400], 100),
            [wb(0), wb(100), wb(200), drop(0), wb(300), drop(100)]
        );
    }

    #[test]
    fn one_large_write_covers_every_chunk_it_completes() {
        assert_eq!(
            plan(50, &[460], 100),
            [wb(50), wb(150), wb(250), drop(50), wb(350), drop(150)]
        );
    }

    /// A file next to the test binary rather than in /tmp, which may be tmpfs (no page
    /// cache to drop from); removed on drop, also when the test fails.
    struct TestFile(PathBuf);

    impl TestFile {
        fn new(name: &str) -> TestFile {
            let exe = std::env::current_exe().expect("test binary path");
            let dir = exe.parent().expect("test binary directory");
            TestFile(dir.join(format!("herd-{name}-{}.log", std::process::id())))
        }

        /// Opened for appending and reading (mmap needs the latter).
        fn open(&self) -> std::fs::File {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .read(true)
                .open(&self.0)
                .expect("open test file")
        }
    }

    impl Drop for TestFile {
        fn drop(&mut self) {
            std::fs::remove_file(&self.0).ok();
        }
    }

    #[test]
    fn writes_append_every_byte_after_what_the_file_held() {
        let path = TestFile::new("log-file-append");
        std::fs::write(&path.0, b"earlier\n").expect("seed file");
        let chunk = 64 * 1024;
        let mut log = LogFile::with_chunk(path.0.clone(), NEVER, flag(), chunk).expect("log file");
        assert_eq!(log.end, 8);
        // Several whole chunks in uneven writes, so the advice calls run for real.
        let line: Vec<u8> = (0..=250u8).cycle().take(77_777).collect();
        let mut expected = b"earlier\n".to_vec();
        while expected.len() < 5 * chunk as usize + 5 {
            log.write_all(&line).expect("write");
            expected.extend_from_slice(&line);
        }
        log.flush().expect("flush");
        assert_eq!(log.end, expected.len() as u64);
        assert!(log.synced >= 5 * chunk && log.synced <= log.end);
        let got = std::fs::read(&path.0).expect("read back");
        assert!(got == expected, "file differs from what was written");
    }

    #[test]
    fn a_truncated_file_is_noticed_within_a_chunk() {
        let path = TestFile::new("log-file-truncate");
        let chunk = 64 * 1024;
        let mut log = LogFile::with_chunk(path.0.clone(), NEVER, flag(), chunk).expect("log file");
        let block = vec![b'x'; 10_000];
        for _ in 0..30 {
            log.write_all(&block).expect("write");
        }
        assert!(log.synced >= 4 * chunk);
        // As logrotate's copytruncate or `: > Bailey.log` would.
        path.open().set_len(0).expect("truncate");
        for _ in 0..8 {
            log.write_all(&block).expect("write");
        }
        let len = std::fs::metadata(&path.0).expect("stat").len();
        assert_eq!(len, 80_000);
        assert_eq!(log.end, len, "write position re-read from the file");
        assert!(log.synced <= log.end, "advice rebased onto the shorter file");
        // And advice goes on from there, chunk by chunk.
        for _ in 0..14 {
            log.write_all(&block).expect("write");
        }
        assert_eq!(log.end, 220_000);
        assert!(log.end - log.synced < chunk, "advice keeps up");
    }

    /// Bytes of `file` in the page cache, by mincore(2) over a read-only mapping.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn resident(file: &std::fs::File, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        // SAFETY: sysconf takes no pointers.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: a fresh shared read-only mapping of `len` bytes of an open file, only
        // passed to mincore (never read through) and unmapped before returning; `vec`
        // has one byte per page as mincore requires.
        let rc = unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            if addr == libc::MAP_FAILED {
                -1
            } else {
                let rc = libc::mincore(addr, len, vec.as_mut_ptr());
                libc::munmap(addr, len);
                rc
            }
        };
        assert_eq!(rc, 0, "mmap/mincore: {}", std::io::Error::last_os_error());
        (vec.iter().filter(|&&b| b & 1 == 1).count() * page).min(len)
    }

    /// The two calls do what the module relies on: `WriteBack` starts writeback on its
    /// own, so that once that I/O is done (waited for here; the server gives it two
    /// chunks' time), one `Drop` evicts every page. Without the first, the pages would
    /// still be dirty (Drop only starts writing them); without the second, all cached.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn written_back_pages_are_dropped() {
        use super::apply;
        use std::os::fd::AsRawFd;
        let path = TestFile::new("log-file-drop");
        let mut file = path.open();
        let len = 1 << 20;
        file.write_all(&vec![b'x'; len]).expect("write");
        if resident(&file, len) != len {
            // A file system that does not keep written pages in the page cache (some
            // network or FUSE ones): nothing to drop, and nothing this test can check.
            eprintln!("skipped: the test file's pages are not cached on this file system");
            return;
        }
        let chunk = len as u64;
        apply(
            &file,
            Advice::WriteBack {
                offset: 0,
                len: chunk,
            },
        );
        // SAFETY: an open descriptor, no pointers. WAIT_BEFORE waits for writeback in
        // progress and starts none.
        let rc = unsafe {
            libc::sync_file_range(file.as_raw_fd(), 0, len as i64, libc::SYNC_FILE_RANGE_WAIT_BEFORE)
        };
        assert_eq!(rc, 0, "sync_file_range(WAIT_BEFORE)");
        apply(
            &file,
            Advice::Drop {
                offset: 0,
                len: chunk,
            },
        );
        assert_eq!(
            resident(&file, len),
            0,
            "bytes still cached after writeback and drop"
        );
    }

    /// A directory beside the test binary (see TestFile), removed on drop.
    struct TestDir(PathBuf);

    impl TestDir {
        fn new(name: &str) -> TestDir {
            let exe = std::env::current_exe().expect("test binary path");
            let dir = exe.parent().expect("test binary directory");
            let dir = dir.join(format!("herd-{name}-{}", std::process::id()));
            std::fs::remove_dir_all(&dir).ok();
            std::fs::create_dir_all(&dir).expect("create test dir");
            TestDir(dir)
        }

        /// File names in the directory, sorted.
        fn names(&self) -> Vec<String> {
            let mut names: Vec<String> = std::fs::read_dir(&self.0)
                .expect("read dir")
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            names
        }

        fn read(&self, name: &str) -> String {
            std::fs::read_to_string(self.0.join(name)).unwrap_or_default()
        }
    }

    impl Drop for TestDir {
        fn drop(&mut self) {
            std::fs::remove_dir_all(&self.0).ok();
        }
    }

    /// Writes `count` numbered 50-byte lines through a BufWriter, which (as the logger
    /// does) hands the file pieces that begin and end anywhere in a line.
    fn write_lines(
        path: &Path,
        rotation: Rotation,
        reopen: &'static AtomicBool,
        lines: std::ops::Range<u32>,
    ) {
        let log = LogFile::with_chunk(path.to_path_buf(), rotation, reopen, 1 << 20).expect("log file");
        let mut w = std::io::BufWriter::with_capacity(333, log);
        for i in lines {
            writeln!(w, "line {i:06} {}", "x".repeat(37)).expect("write");
        }
        w.flush().expect("flush");
    }

    fn expected(lines: std::ops::Range<u32>) -> String {
        lines
            .map(|i| format!("line {i:06} {}\n", "x".repeat(37)))
            .collect()
    }

    fn rotation(max_bytes: u64, keep: u32) -> Rotation {
        Rotation {
            max_bytes: Some(max_bytes),
            keep,
        }
    }

    #[test]
    fn rotation_keeps_every_line_in_order_across_the_files() {
        let dir = TestDir::new("log-rotate-all");
        let path = dir.0.join("Bailey.log");
        // 400 lines of 50 bytes, rotated at 1000 bytes (plus up to a write's worth to the
        // next line end): 15 to 20 files, all kept.
        write_lines(&path, rotation(1000, 100), flag(), 0..400);
        let names = dir.names();
        assert!((15..=20).contains(&names.len()), "{names:?}");
        let mut all = String::new();
        for k in (1..names.len()).rev() {
            let part = dir.read(&format!("Bailey.log.{k}"));
            // Each rotated file ends at a line end just past the size: no line split.
            assert!(
                part.ends_with('\n') && part.starts_with("line "),
                "Bailey.log.{k}: {part:?}"
            );
            assert!(
                part.len() >= 1000 && part.len() < 1000 + 333,
                "Bailey.log.{k}: {}",
                part.len()
            );
            all.push_str(&part);
        }
        all.push_str(&dir.read("Bailey.log"));
        assert!(
            all == expected(0..400),
            "lines lost or out of order across rotations"
        );
    }

    #[test]
    fn rotation_keeps_only_the_newest_files() {
        let dir = TestDir::new("log-rotate-keep");
        let path = dir.0.join("Bona.log");
        write_lines(&path, rotation(1000, 2), flag(), 0..400);
        assert_eq!(dir.names(), ["Bona.log", "Bona.log.1", "Bona.log.2"]);
        let kept = dir.read("Bona.log.2") + &dir.read("Bona.log.1") + &dir.read("Bona.log");
        assert!(expected(0..400).ends_with(&kept), "the newest lines, in order");
        assert!(kept.len() >= 2000, "two whole rotated files and the current one");
        // keep 0: no old files at all.
        let dir = TestDir::new("log-rotate-keep0");
        let path = dir.0.join("Clark.log");
        write_lines(&path, rotation(1000, 0), flag(), 0..400);
        assert_eq!(dir.names(), ["Clark.log"]);
        assert!(expected(0..400).ends_with(&dir.read("Clark.log")));
        // Rotation off: one file with everything.
        let dir = TestDir::new("log-rotate-never");
        let path = dir.0.join("Jaquez.log");
        write_lines(&path, NEVER, flag(), 0..400);
        assert_eq!(dir.names(), ["Jaquez.log"]);
        assert!(dir.read("Jaquez.log") == expected(0..400));
    }

    #[test]
    fn a_reopen_after_the_file_was_moved_writes_a_new_file() {
        let dir = TestDir::new("log-reopen");
        let path = dir.0.join("Campbell.log");
        let reopen = flag();
        let mut log = LogFile::with_chunk(path.clone(), NEVER, reopen, 1 << 20).expect("log file");
        log.write_all(b"before\n").expect("write");
        // As logrotate does: move, then signal.
        std::fs::rename(&path, dir.0.join("Campbell.log.moved")).expect("move");
        log.write_all(b"still in the moved file\n").expect("write");
        reopen.store(true, Ordering::Relaxed);
        log.flush().expect("flush reopens");
        assert!(!reopen.load(Ordering::Relaxed), "the request is taken");
        log.write_all(b"after\n").expect("write");
        assert_eq!(
            dir.read("Campbell.log.moved"),
            "before\nstill in the moved file\n"
        );
        assert_eq!(dir.read("Campbell.log"), "after\n");
        // A reopen with nothing moved goes on appending to the same file.
        reopen.store(true, Ordering::Relaxed);
        log.write_all(b"again\n").expect("write");
        assert_eq!(dir.read("Campbell.log"), "after\nagain\n");
    }

    #[test]
    fn a_reopen_after_the_directory_was_removed_makes_it_again() {
        let dir = TestDir::new("log-reopen-dir");
        let path = dir.0.join("sub").join("Clark.log");
        std::fs::create_dir_all(dir.0.join("sub")).expect("dir");
        let reopen = flag();
        let mut log = LogFile::with_chunk(path.clone(), NEVER, reopen, 1 << 20).expect("log file");
        log.write_all(b"before\n").expect("write");
        std::fs::remove_dir_all(dir.0.join("sub")).expect("remove");
        reopen.store(true, Ordering::Relaxed);
        log.write_all(b"after\n").expect("write");
        assert_eq!(std::fs::read_to_string(&path).expect("recreated"), "after\n");
    }

    #[test]
    fn a_failed_rotation_is_noted_in_the_log_and_writing_goes_on() {
        let dir = TestDir::new("log-rotate-fail");
        let path = dir.0.join("Bailey.log");
        // `.1` cannot be replaced by a file: it is a non-empty directory.
        std::fs::create_dir_all(dir.0.join("Bailey.log.1").join("x")).expect("blocker");
        write_lines(&path, rotation(1000, 1), flag(), 0..100);
        let text = dir.read("Bailey.log");
        assert!(text.contains("[ERROR] cannot rotate the log"), "{text}");
        let lines: String = text
            .lines()
            .filter(|l| !l.contains("[ERROR]"))
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(lines == expected(0..100), "nothing lost");
        // Retried once per max_bytes, not on every write.
        assert!(
            text.matches("[ERROR]").count() <= 5,
            "{}",
            text.matches("[ERROR]").count()
        );
    }
}
