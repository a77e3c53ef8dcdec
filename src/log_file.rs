//! The log file as an append-only writer that keeps its share of the page cache small.
//!
//! A busy server writes its log at up to ~100 MB/s (a line per message, SPEC §4). Left to
//! the kernel, that text piles up as dirty pages until the flusher wakes (after 30 s, or
//! at gigabytes), and past `vm.dirty_ratio` the kernel stalls the writer, which here is
//! the reactor thread. The server never reads its log back, so each chunk written is
//! handed to writeback at once (`sync_file_range`, which starts the I/O and, unless the
//! device's queue is full, does not wait for it), and the chunk two before it, normally
//! on disk by then, is dropped from the cache (`posix_fadvise(DONTNEED)`). Dirty log data
//! stays under two chunks and cached log data near three, and new writes reuse freed
//! pages: on the benchmark VM, writing into pages never touched before ran at about
//! 270 MB/s, against about 2 GB/s this way (bench/NOTES.md).
//!
//! The calls are made by a helper thread, since they can take milliseconds. Both are
//! advice: a failure (or another OS, or a 32-bit one) only means the kernel's defaults
//! apply.

use std::fs::File;
use std::io::{self, Seek, Write};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread;

/// Bytes per writeback step: large enough that the two calls per step cost nothing next
/// to the writes, small enough that little dirty data waits.
const CHUNK: u64 = 8 << 20;

/// Advice ranges start on this boundary, the usual page size (a partial page at the
/// start is simply kept).
const PAGE: u64 = 4096;

/// A log file opened for appending, whose written pages leave the page cache.
pub struct LogFile {
    file: File,
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
    advisor: Option<SyncSender<Advice>>,
}

impl LogFile {
    /// `file` must be opened for appending: its length is taken as the write position.
    pub fn new(file: File) -> io::Result<LogFile> {
        LogFile::with_chunk(file, CHUNK)
    }

    fn with_chunk(file: File, chunk: u64) -> io::Result<LogFile> {
        let end = file.metadata()?.len();
        let advisor = spawn_advisor(&file)?;
        Ok(LogFile {
            file,
            end,
            synced: end / PAGE * PAGE,
            chunk,
            advisor,
        })
    }

    /// Re-reads the write position. The count can go wrong when the file changes
    /// under us: truncated by hand or by `logrotate`'s copytruncate (writes restart at 0,
    /// and advice for offsets far past the end would do nothing from then on), or appended
    /// to by another process.
    fn recount(&mut self) {
        let Ok(pos) = self.file.stream_position() else {
            return;
        };
        if pos < self.synced {
            self.synced = pos / PAGE * PAGE;
        }
        self.end = pos;
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.end += n as u64;
        if self.end - self.synced >= self.chunk {
            self.recount();
            let advisor = self.advisor.as_ref();
            advise(&mut self.synced, self.end, self.chunk, |advice| {
                // A full queue means the advisor is far behind: this advice is skipped,
                // which only leaves those pages to the kernel's defaults.
                if let Some(advisor) = advisor {
                    let _ = advisor.try_send(advice);
                }
            });
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// Starts the thread that applies advice to (a handle on) `file`. It ends when the
/// `LogFile` is dropped.
fn spawn_advisor(file: &File) -> io::Result<Option<SyncSender<Advice>>> {
    if !ADVICE_APPLIES {
        return Ok(None);
    }
    let file = file.try_clone()?;
    // Eight chunks of slack; two messages per chunk.
    let (tx, rx) = sync_channel(16);
    thread::Builder::new()
        .name("log-writeback".into())
        .spawn(move || {
            for advice in rx {
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
        }
    }
}

#[cfg(not(all(target_os = "linux", target_pointer_width = "64")))]
fn apply(_file: &File, _advice: Advice) {}

#[cfg(test)]
mod tests {
    use super::{Advice, LogFile, advise};
    use std::io::Write;
    use std::path::PathBuf;

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
        let mut log = LogFile::with_chunk(path.open(), chunk).expect("log file");
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
        let mut log = LogFile::with_chunk(path.open(), chunk).expect("log file");
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
}
