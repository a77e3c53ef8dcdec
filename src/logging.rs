//! The server's log file, `<log.dir>/<Name>.log` (SPEC §4), in UTC.
//!
//! Records go into a large in-memory buffer; the reactor writes it out at most 20 ms after
//! a record is made (and at shutdown), so a busy server pays one write per 64 KiB or per
//! 20 ms rather than one per log line.
//!
//! simplelog's WriteLogger filters and writes the records. Each record's prefix (UTC time
//! to the nanosecond, level) is written by `Stamped` instead of simplelog's own: simplelog
//! formats the time through the `time` crate and allocates a `String` for the level on
//! every record, which profiled at a sixth of the server's CPU under load, since SPEC §4
//! has a log line for every message.

use std::cell::Cell;
use std::fs;
use std::io::BufWriter;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use log::{Log, Metadata, Record};
use simplelog::{ConfigBuilder, SharedLogger, WriteLogger};

use crate::config::Rotation;
use crate::log_file::LogFile;

/// Small enough that writing a full buffer holds up the reactor only briefly (about 30 µs
/// into reused page-cache pages), large enough for a few hundred records per write.
const LOG_BUFFER: usize = 64 * 1024;

/// Opens (appending) the server's log file, rotated as `rotation` says, and installs it
/// as the `log` backend. Returns the file's path.
pub fn init(dir: &Path, name: &str, level: log::LevelFilter, rotation: Rotation) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let file = LogFile::open(path.clone(), rotation, &REOPEN)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let config = ConfigBuilder::new()
        // `Stamped` writes the time and the level.
        .set_time_level(log::LevelFilter::Off)
        .set_max_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        // Only herd's own records: ureq logs request URLs (with the legacy API's key) at
        // trace level, and library chatter does not belong in the server's log anyway.
        .add_filter_allow_str("herd")
        .build();
    let writer = BufWriter::with_capacity(LOG_BUFFER, file);
    let inner = WriteLogger::new(level, config, writer);
    log::set_max_level(inner.level());
    log::set_boxed_logger(Box::new(Stamped(inner))).map_err(|e| format!("cannot install logger: {e}"))?;
    Ok(path)
}

/// Set when a record is buffered, cleared when the buffer is written out.
static UNFLUSHED: AtomicBool = AtomicBool::new(false);

/// Set by `reopen`, seen by the log file at its next write or flush.
static REOPEN: AtomicBool = AtomicBool::new(false);

/// Writes out what is buffered and goes on in a newly opened `<Name>.log`, found by
/// path: after logrotate (or an operator) moved the file away, records go to the new
/// one. For SIGHUP.
pub fn reopen() {
    REOPEN.store(true, Ordering::Relaxed);
    flush();
}

/// The current time as the log shows it, for lines the log file writes about itself.
pub fn now() -> impl std::fmt::Display {
    Utc(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default())
}

/// Writes buffered records to the file.
pub fn flush() {
    UNFLUSHED.store(false, Ordering::Relaxed);
    log::logger().flush();
}

/// Whether records may wait in the buffer.
pub fn unflushed() -> bool {
    UNFLUSHED.load(Ordering::Relaxed)
}

/// Prefixes each record with `2026-11-24T00:26:29.397918777Z [INFO] ` and hands it on.
struct Stamped<L>(L);

impl<L: Log> Log for Stamped<L> {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        self.0.enabled(metadata)
    }

    fn log(&self, record: &Record<'_>) {
        if !self.0.enabled(record.metadata()) {
            return;
        }
        let now = Utc(SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default());
        let level = record.level().as_str();
        self.0.log(
            &Record::builder()
                .args(format_args!("{now} [{level}] {}", record.args()))
                .metadata(record.metadata().clone())
                .module_path(record.module_path())
                .file(record.file())
                .line(record.line())
                .build(),
        );
        // Only herd's records are written (see init): others leave nothing to flush.
        if record.target().starts_with("herd") {
            UNFLUSHED.store(true, Ordering::Relaxed);
        }
    }

    fn flush(&self) {
        self.0.flush();
    }
}

/// A time since the epoch shown as RFC 3339 in UTC with nanoseconds.
struct Utc(std::time::Duration);

/// "YYYY-MM-DDTHH:MM:SS." for one second.
type SecondText = [u8; 20];

thread_local! {
    /// The last second shown: a busy server logs many records per second, and the
    /// calendar arithmetic need not run for each.
    static LAST_SECOND: Cell<(u64, SecondText)> = const { Cell::new((u64::MAX, [0; 20])) };
}

impl std::fmt::Display for Utc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.0.as_secs();
        let (cached, mut second) = LAST_SECOND.get();
        if cached != secs {
            second = second_text(secs);
            LAST_SECOND.set((secs, second));
        }
        let mut b = *b"0000-00-00T00:00:00.000000000Z";
        b[..20].copy_from_slice(&second);
        put_digits(&mut b[20..29], u64::from(self.0.subsec_nanos()));
        // Only ASCII digits and punctuation were written.
        f.write_str(std::str::from_utf8(&b).unwrap_or("????-??-??T??:??:??.?????????Z"))
    }
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

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let cut = self.0.len() > SHOWN_MAX;
        let head = &self.0[..self.0.len().min(SHOWN_MAX)];
        // One branch-free pass (it vectorises) instead of an early-exit scan per byte.
        let control = head.iter().fold(false, |acc, &b| acc | (b < 0x20) | (b == 0x7f));
        match std::str::from_utf8(head) {
            Ok(s) if !control => f.write_str(s)?,
            // The cut fell inside a character: show the text before it.
            Err(e) if cut && !control && e.error_len().is_none() => {
                let (text, _) = head.split_at(e.valid_up_to());
                f.write_str(std::str::from_utf8(text).unwrap_or_default())?
            }
            _ => write!(f, "{}", head.escape_ascii())?,
        }
        if cut {
            write!(f, "...({} bytes)", self.0.len())?;
        }
        Ok(())
    }
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
