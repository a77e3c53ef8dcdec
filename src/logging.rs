//! The server's log file, `<log.dir>/<Name>.log` (SPEC §4), in UTC.
//!
//! Records go into a large in-memory buffer, handed to the log writer thread when full
//! and by the reactor at most 20 ms after a record is made (and at shutdown): a busy
//! server's threads pay a copy per log line, and the `write` calls run on that thread
//! (src/log_writer.rs).
//!
//! `FileLog` is the `log` backend: it keeps herd's own records at the configured level
//! and writes each as `2026-11-24T00:26:29.397918777Z [INFO] text`. SPEC §4 has a log
//! line for every message, so those lines (`message`) skip `format_args!` and the `log`
//! machinery and are written piece by piece into the same buffer, under the same lock,
//! so they keep their order with every other record. Formatting had profiled at a third
//! of the server's user-space instructions under load.

use std::cell::Cell;
use std::fmt::{self, Display};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::config::Rotation;
use crate::log_file::LogFile;
use crate::log_writer::{self, Handoff};

/// Large enough for a few hundred records per write; the writer thread holds a few.
const LOG_BUFFER: usize = 64 * 1024;

/// The installed backend, for `message`.
static FILE_LOG: OnceLock<&'static FileLog> = OnceLock::new();

/// Opens (appending) the server's log file, rotated as `rotation` says, and installs it
/// as the `log` backend. Returns the file's path.
pub fn init(dir: &Path, name: &str, level: LevelFilter, rotation: Rotation) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let file = LogFile::open(path.clone(), rotation, &REOPEN)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let sink =
        log_writer::start(file, LOG_BUFFER).map_err(|e| format!("cannot start the log writer: {e}"))?;
    let backend: &'static FileLog = Box::leak(Box::new(FileLog {
        level,
        sink: Mutex::new(sink),
    }));
    log::set_logger(backend).map_err(|e| format!("cannot install logger: {e}"))?;
    log::set_max_level(level);
    let _ = FILE_LOG.set(backend);
    Ok(path)
}

/// Set when a record is buffered, cleared when the buffer is handed on.
static UNFLUSHED: AtomicBool = AtomicBool::new(false);

/// Set by `reopen`, seen by the log file at its next write or flush.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Writes out what is buffered and goes on in a newly opened `<Name>.log`, found by
/// path: after logrotate (or an operator) moved the file away, records go to the new
/// one. For SIGHUP.
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
    flush();
    // Reopened now, not at the next record's write.
    if let Some(log) = FILE_LOG.get() {
        log.lock().poke();
    }
}

/// The current time as the log shows it, for lines the log file writes about itself.
pub fn now() -> impl Display {
    Utc(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Hands buffered records to the writer thread.
pub fn flush() {
    UNFLUSHED.store(false, Ordering::Relaxed);
    log::logger().flush();
}

/// Writes everything logged so far to the file, waiting at most a second: for the end of
/// the process, which would otherwise lose what the writer thread has not written yet.
pub fn finish() {
    UNFLUSHED.store(false, Ordering::Relaxed);
    if let Some(log) = FILE_LOG.get() {
        log.lock().sync(Duration::from_secs(1));
    }
}

/// Whether records may wait in the buffer.
pub fn unflushed() -> bool {
    UNFLUSHED.load(Ordering::Relaxed)
}

/// One INFO line built by `build` straight into the log buffer: for the line SPEC §4
/// has for every message. Does nothing below INFO or before `init` (unit tests).
pub fn message(build: impl FnOnce(&mut Line<'_>)) {
    let Some(log) = FILE_LOG.get() else {
        return;
    };
    if log.level < Level::Info {
        return;
    }
    let mut sink = log.lock();
    let out = sink.room(MESSAGE_ROOM);
    stamp(out, Level::Info);
    build(&mut Line { out });
    out.push(b'\n');
    UNFLUSHED.store(true, Ordering::Relaxed);
}

/// Room made for a message line before it is written: enough for the longest, two texts
/// cut at `SHOWN_MAX` and escaped (up to 4 bytes each) with their length marks, plus an
/// address and a few names. A longer line only grows the buffer for once.
const MESSAGE_ROOM: usize = 2 * (4 * SHOWN_MAX + 32) + 512;

/// The same for any other record: most are short; a long one grows the buffer for once.
const RECORD_ROOM: usize = 512;

/// The text of one `message` line, appended piece by piece.
pub struct Line<'a> {
    out: &'a mut Vec<u8>,
}

impl Line<'_> {
    /// Text of the server's own.
    pub fn text(&mut self, text: &str) -> &mut Self {
        self.out.extend_from_slice(text.as_bytes());
        self
    }

    /// Bytes that came from outside, shown as `Shown` shows them.
    pub fn shown(&mut self, bytes: &[u8]) -> &mut Self {
        let (view, cut) = view(bytes);
        match view {
            View::Text(text) => self.out.extend_from_slice(text),
            View::Escaped(head) => {
                let _ = write!(self.out, "{}", head.escape_ascii());
            }
        }
        if let Some(len) = cut {
            let _ = write!(self.out, "...({len} bytes)");
        }
        self
    }

    /// Anything else, formatted.
    pub fn display(&mut self, value: impl Display) -> &mut Self {
        let _ = write!(self.out, "{value}");
        self
    }
}

/// herd's own records at `level` or above, into the buffer that the writer thread writes
/// out. Other crates' records are left out: ureq logs request URLs (with the legacy API's
/// key) at trace level, and library chatter does not belong in the server's log anyway.
struct FileLog {
    level: LevelFilter,
    sink: Mutex<Handoff>,
}

impl FileLog {
    fn lock(&self) -> MutexGuard<'_, Handoff> {
        // A thread that panicked while writing left at worst a partial line.
        self.sink.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Log for FileLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= self.level && metadata.target().starts_with("herd")
    }

    fn log(&self, record: &Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let mut sink = self.lock();
        // Whole, into the buffer itself (see `Handoff::room`).
        let out = sink.room(RECORD_ROOM);
        stamp(out, record.level());
        let _ = writeln!(out, "{}", record.args());
        UNFLUSHED.store(true, Ordering::Relaxed);
    }

    fn flush(&self) {
        let _ = self.lock().flush();
    }
}

/// A record's prefix: `2026-11-24T00:26:29.397918777Z [INFO] `.
fn stamp(out: &mut impl Write, level: Level) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let _ = out.write_all(&utc_text(now));
    let tag: &[u8] = match level {
        Level::Error => b" [ERROR] ",
        Level::Warn => b" [WARN] ",
        Level::Info => b" [INFO] ",
        Level::Debug => b" [DEBUG] ",
        Level::Trace => b" [TRACE] ",
    };
    let _ = out.write_all(tag);
}

/// A time since the epoch shown as RFC 3339 in UTC with nanoseconds.
struct Utc(Duration);

/// "YYYY-MM-DDTHH:MM:SS." for one second.
type SecondText = [u8; 20];

thread_local! {
    /// The last second shown: a busy server logs many records per second, and the
    /// calendar arithmetic need not run for each.
    static LAST_SECOND: Cell<(u64, SecondText)> = const { Cell::new((u64::MAX, [0; 20])) };
}

impl Display for Utc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII digits and punctuation were written.
        f.write_str(std::str::from_utf8(&utc_text(self.0)).unwrap_or("????-??-??T??:??:??.?????????Z"))
    }
}

/// `2026-11-24T00:26:29.397918777Z` for a time since the epoch.
fn utc_text(since_epoch: Duration) -> [u8; 30] {
    let secs = since_epoch.as_secs();
    let (cached, mut second) = LAST_SECOND.get();
    if cached != secs {
        second = second_text(secs);
        LAST_SECOND.set((secs, second));
    }
    let mut b = *b"0000-00-00T00:00:00.000000000Z";
    b[..20].copy_from_slice(&second);
    put_digits(&mut b[20..29], u64::from(since_epoch.subsec_nanos()));
    b
}

fn second_text(secs: u64) -> SecondText {
    let (y, mo, d) = civil_from_days((secs / 86_400) as i64);
    let s = secs % 86_400;
    let mut b = *b"0000-00-00T00:00:00.";
    put_digits(&mut b[0..4], y.clamp(0, 9999) as u64);
    put_digits(&mut b[5..7], u64::from(mo));
    put_digits(&mut b[8..10], u64::from(d));
    put_digits(&mut b[11..13], s / 3600);
    put_digits(&mut b[14..16], s / 60 % 60);
    put_digits(&mut b[17..19], s % 60);
    b
}

/// `v` in decimal, zero-padded to fill `out` (higher digits dropped).
fn put_digits(out: &mut [u8], mut v: u64) {
    for slot in out.iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// The most bytes of one message or reply a log line shows (SPEC §7): a client's 8 KiB
/// lines would otherwise amplify into the log.
pub const SHOWN_MAX: usize = 256;

/// Message bytes for a log line: as text when they are printable UTF-8 (the common case,
/// written in one piece), escaped otherwise, so a log line stays one line whatever a
/// client sends. Past `SHOWN_MAX` bytes the text is cut and marked `...(N bytes)` with
/// the full length.
pub struct Shown<'a>(pub &'a [u8]);

impl Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (view, cut) = view(self.0);
        match view {
            View::Text(text) => f.write_str(std::str::from_utf8(text).unwrap_or_default())?,
            View::Escaped(head) => write!(f, "{}", head.escape_ascii())?,
        }
        if let Some(len) = cut {
            write!(f, "...({len} bytes)")?;
        }
        Ok(())
    }
}

/// How the head of a logged text is shown.
enum View<'a> {
    /// Printable UTF-8, written as it is.
    Text(&'a [u8]),
    /// Anything else: escaped byte by byte.
    Escaped(&'a [u8]),
}

/// The shown part of `bytes`, and their full length if they were cut.
fn view(bytes: &[u8]) -> (View<'_>, Option<usize>) {
    let cut = (bytes.len() > SHOWN_MAX).then_some(bytes.len());
    let head = &bytes[..bytes.len().min(SHOWN_MAX)];
    // Nearly every logged text is printable ASCII: one branch-free pass (it vectorises)
    // settles it, with no UTF-8 decoding and no cut character to look for.
    if head
        .iter()
        .fold(0u8, |acc, &b| acc | u8::from(b.wrapping_sub(0x20) >= 0x5f))
        == 0
    {
        return (View::Text(head), cut);
    }
    let control = head.iter().fold(false, |acc, &b| acc | (b < 0x20) | (b == 0x7f));
    let view = match std::str::from_utf8(head) {
        Ok(_) if !control => View::Text(head),
        // The cut fell inside a character: show the text before it.
        Err(e) if cut.is_some() && !control && e.error_len().is_none() => {
            View::Text(&head[..e.valid_up_to()])
        }
        _ => View::Escaped(head),
    };
    (view, cut)
}

#[cfg(test)]
mod tests {
    use super::{SHOWN_MAX, Shown, Utc, civil_from_days};
    use std::time::Duration;

    #[test]
    fn utc_time_is_rfc3339_with_nanoseconds() {
        let at = |secs: u64, nanos: u32| Utc(Duration::new(secs, nanos)).to_string();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000000Z");
        assert_eq!(at(1_621_464_827, 959_498_503), "2021-05-19T22:53:47.959498503Z");
        assert_eq!(at(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(at(4_107_542_399, 999_999_999), "2100-02-28T23:59:59.999999999Z");
        assert_eq!(at(1_795_478_400, 0), "2026-11-24T00:00:00.000000000Z");
        // The cached second is replaced when the second changes, in either direction.
        assert_eq!(at(1_795_478_400, 5), "2026-11-24T00:00:00.000000005Z");
        assert_eq!(at(1_795_478_401, 5), "2026-11-24T00:00:01.000000005Z");
        assert_eq!(at(1_795_478_399, 5), "2026-11-23T23:59:59.000000005Z");
        assert_eq!(at(1_795_478_401, 5), "2026-11-24T00:00:01.000000005Z");
    }

    #[test]
    fn civil_dates_walk_day_by_day_across_leap_rules() {
        // Every day from 1970 to 2400 follows the previous one in the calendar.
        let mut prev = civil_from_days(0);
        assert_eq!(prev, (1970, 1, 1));
        for day in 1..157_000 {
            let next = civil_from_days(day);
            let (y, m, d) = prev;
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            let expect = if d < len {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
            assert_eq!(next, expect, "day {day}");
            prev = next;
        }
    }

    #[test]
    fn printable_text_is_kept_and_the_rest_escaped() {
        assert_eq!(
            Shown(b"IAMAT k\xc3\xa9 +1+1 5").to_string(),
            "IAMAT k\u{e9} +1+1 5"
        );
        assert_eq!(Shown(b"a\x0bb\r").to_string(), "a\\x0bb\\r");
        assert_eq!(Shown(b"\xff x").to_string(), "\\xff x");
        assert_eq!(Shown(b"del\x7f").to_string(), "del\\x7f");
    }

    #[test]
    fn long_texts_are_cut_at_256_bytes_and_marked_with_their_length() {
        let exact = vec![b'a'; SHOWN_MAX];
        assert_eq!(
            Shown(&exact).to_string(),
            "a".repeat(256),
            "256 bytes are shown whole"
        );
        let long = vec![b'a'; 8192];
        assert_eq!(
            Shown(&long).to_string(),
            format!("{}...(8192 bytes)", "a".repeat(256))
        );
        // Escaping applies to the shown part only, and only control bytes there count.
        let mut tail_control = vec![b'b'; 300];
        tail_control[299] = 0;
        assert_eq!(
            Shown(&tail_control).to_string(),
            format!("{}...(300 bytes)", "b".repeat(256))
        );
        let mut head_control = vec![b'c'; 300];
        head_control[0] = b'\n';
        assert_eq!(
            Shown(&head_control).to_string(),
            format!("\\n{}...(300 bytes)", "c".repeat(255))
        );
        // A cut inside a two-byte character keeps the text before it.
        let mut split = vec![b'd'; 255];
        split.extend_from_slice("\u{e9}\u{e9}".as_bytes());
        assert_eq!(
            Shown(&split).to_string(),
            format!("{}...(259 bytes)", "d".repeat(255))
        );
        // Invalid UTF-8 in the shown part is still escaped.
        let mut bad = vec![0xff; 1];
        bad.extend(vec![b'e'; 400]);
        assert_eq!(
            Shown(&bad).to_string(),
            format!("\\xff{}...(401 bytes)", "e".repeat(255))
        );
    }
}
