//! The log file as an append-only writer that keeps its share of the page cache small.
//!
//! A busy server writes its log at up to ~100 MB/s (a line per message, SPEC §4). Left to
//! the kernel, that text piles up as dirty pages until the flusher wakes (after 30 s, or
//! at gigabytes), and past `vm.dirty_ratio` the kernel stalls the writer, which here is
//! the reactor thread. The server never reads its log back, so each chunk written is
//! handed to writeback at once (`sync_file_range`, which starts the I/O and does not wait
//! for it), and the chunk before that, written back by then, is dropped from the cache
//! (`posix_fadvise(DONTNEED)`). Dirty log data stays near two chunks, and new writes reuse
//! freed pages: on the benchmark VM, writing into pages never touched before ran at about
//! 270 MB/s, against about 2 GB/s this way (bench/NOTES.md).
//!
//! Both calls are advice: a failure (or another OS) only means the kernel's defaults apply.

use std::fs::File;
use std::io::{self, Write};

/// Bytes per writeback step: large enough that the two calls per step cost nothing next
/// to the writes, small enough that little dirty data waits.
const CHUNK: u64 = 8 << 20;

pub struct LogFile {
    file: File,
    /// The file's length: it is opened for appending, so every write lands here.
    end: u64,
    /// Everything before this offset has been handed to writeback.
    synced: u64,
}

impl LogFile {
    pub fn new(file: File) -> io::Result<LogFile> {
        let end = file.metadata()?.len();
        Ok(LogFile {
            file,
            end,
            synced: end,
        })
    }
}

impl Write for LogFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.end += n as u64;
        advise(&mut self.synced, self.end, CHUNK, |advice| {
            apply(&self.file, advice)
        });
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Advice {
    /// Start writing back `len` bytes at `offset`.
    WriteBack { offset: u64, len: u64 },
    /// Drop `len` bytes at `offset` from the page cache (written back by now).
    Drop { offset: u64, len: u64 },
}

/// The advice due once the file has grown to `end`: each whole chunk past `synced` goes
/// to writeback, and the chunk before it, whose writeback started a chunk earlier, is
/// dropped. Advances `synced`.
fn advise(synced: &mut u64, end: u64, chunk: u64, mut apply: impl FnMut(Advice)) {
    while end.saturating_sub(*synced) >= chunk {
        apply(Advice::WriteBack {
            offset: *synced,
            len: chunk,
        });
        if let Some(offset) = synced.checked_sub(chunk) {
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

    fn plan(mut synced: u64, ends: &[u64], chunk: u64) -> Vec<Advice> {
        let mut out = Vec::new();
        for &end in ends {
            advise(&mut synced, end, chunk, |a| out.push(a));
        }
        out
    }

    #[test]
    fn nothing_until_a_whole_chunk_is_written() {
        assert_eq!(plan(0, &[0, 1, 99], 100), []);
        assert_eq!(plan(1_000, &[1_099], 100), []);
    }

    #[test]
    fn each_chunk_goes_to_writeback_and_the_one_before_is_dropped() {
        use Advice::{Drop, WriteBack};
        assert_eq!(
            plan(0, &[100, 250, 310], 100),
            [
                WriteBack { offset: 0, len: 100 },
                WriteBack {
                    offset: 100,
                    len: 100
                },
                Drop { offset: 0, len: 100 },
                WriteBack {
                    offset: 200,
                    len: 100
                },
                Drop {
                    offset: 100,
                    len: 100
                },
            ]
        );
    }

    #[test]
    fn one_large_write_covers_every_chunk_it_completes() {
        use Advice::{Drop, WriteBack};
        assert_eq!(
            plan(50, &[360], 100),
            [
                WriteBack { offset: 50, len: 100 },
                WriteBack {
                    offset: 150,
                    len: 100
                },
                Drop { offset: 50, len: 100 },
                WriteBack {
                    offset: 250,
                    len: 100
                },
                Drop {
                    offset: 150,
                    len: 100
                },
            ]
        );
    }

    /// Bytes of `file` in the page cache, by mincore(2) over a read-only mapping.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    fn resident(file: &std::fs::File, len: usize) -> usize {
        use std::os::fd::AsRawFd;
        let page = 4096;
        let mut vec = vec![0u8; len.div_ceil(page)];
        // SAFETY: a fresh shared read-only mapping of `len` bytes of an open file, only
        // passed to mincore (never read through) and unmapped before returning; `vec`
        // has one byte per page as mincore requires.
        unsafe {
            let addr = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            );
            assert_ne!(addr, libc::MAP_FAILED, "mmap");
            let rc = libc::mincore(addr, len, vec.as_mut_ptr());
            libc::munmap(addr, len);
            assert_eq!(rc, 0, "mincore");
        }
        vec.iter().filter(|&&b| b & 1 == 1).count() * page
    }

    /// The two calls do what the module relies on: `WriteBack` starts writeback on its
    /// own, so that once that I/O is done (waited for here; the server just gives it a
    /// chunk's time), one `Drop` evicts every page. Without the first, the pages would
    /// still be dirty (Drop only starts writing them); without the second, all cached.
    #[cfg(all(target_os = "linux", target_pointer_width = "64"))]
    #[test]
    fn written_back_pages_are_dropped() {
        use super::apply;
        use std::os::fd::AsRawFd;
        // Next to the test binary rather than in /tmp, which may be tmpfs (no page cache
        // to drop from).
        let exe = std::env::current_exe().expect("test binary path");
        let dir = exe.parent().expect("test binary directory");
        let path = dir.join(format!("herd-log-file-drop-{}.log", std::process::id()));
        // Readable too: mmap needs it.
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(&path)
            .expect("create");
        let len = 1 << 20;
        file.write_all(&vec![b'x'; len]).expect("write");
        let cached = resident(&file, len);
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
        apply(
            &file,
            Advice::Drop {
                offset: 0,
                len: chunk,
            },
        );
        let left = resident(&file, len);
        std::fs::remove_file(&path).ok();
        assert_eq!(rc, 0, "sync_file_range(WAIT_BEFORE)");
        assert_eq!(cached, len, "freshly written pages are cached");
        assert_eq!(left, 0, "bytes still cached after writeback and drop");
    }

    #[test]
    fn writes_append_every_byte_after_what_the_file_held() {
        let path = std::env::temp_dir().join(format!("herd-log-file-{}.log", std::process::id()));
        std::fs::write(&path, b"earlier\n").expect("seed file");
        let open = || {
            std::fs::OpenOptions::new()
                .append(true)
                .open(&path)
                .expect("open")
        };
        let mut log = LogFile::new(open()).expect("log file");
        assert_eq!(log.end, 8);
        // Three whole chunks and a bit, in uneven writes, so the advice calls run for real.
        let line: Vec<u8> = (0..=250u8).cycle().take(777_777).collect();
        let mut expected = b"earlier\n".to_vec();
        let mut written = 0usize;
        while written < 3 * super::CHUNK as usize + 5 {
            log.write_all(&line).expect("write");
            expected.extend_from_slice(&line);
            written += line.len();
        }
        log.flush().expect("flush");
        assert_eq!(log.end, expected.len() as u64);
        assert!(log.synced >= 3 * super::CHUNK && log.synced <= log.end);
        let got = std::fs::read(&path).expect("read back");
        std::fs::remove_file(&path).ok();
        assert!(got == expected, "file differs from what was written");
    }
}
