//! The server's log file, `<log.dir>/<Name>.log` (SPEC §4), in UTC.
//!
//! Records go into a large in-memory buffer; the reactor flushes it once per loop pass (and
//! at shutdown), so a busy server pays one write per pass rather than one per log line.

use std::fs::{self, OpenOptions};
use std::io::BufWriter;
use std::path::{Path, PathBuf};

use simplelog::{ConfigBuilder, WriteLogger};

const LOG_BUFFER: usize = 256 * 1024;

/// Opens (appending) the server's log file and installs it as the `log` backend.
/// Returns the file's path.
pub fn init(dir: &Path, name: &str, level: log::LevelFilter) -> Result<PathBuf, String> {
    fs::create_dir_all(dir).map_err(|e| format!("cannot create log directory {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.log"));
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .map_err(|e| format!("cannot open log file {}: {e}", path.display()))?;
    let config = ConfigBuilder::new()
        .set_time_format_rfc3339()
        .set_thread_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_location_level(log::LevelFilter::Off)
        // Only herd's own records: ureq logs request URLs (with the legacy API's key) at
        // trace level, and library chatter does not belong in the server's log anyway.
        .add_filter_allow_str("herd")
        .build();
    let writer = BufWriter::with_capacity(LOG_BUFFER, file);
    WriteLogger::init(level, config, writer).map_err(|e| format!("cannot install logger: {e}"))?;
    Ok(path)
}

/// Writes buffered records to the file.
pub fn flush() {
    log::logger().flush();
}

/// Message bytes for a log line: as text when they are printable UTF-8 (the common case,
/// written in one piece), escaped otherwise, so a log line stays one line whatever a
/// client sends.
pub struct Shown<'a>(pub &'a [u8]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // One branch-free pass (it vectorises) instead of an early-exit scan per byte.
        let control = self
            .0
            .iter()
            .fold(false, |acc, &b| acc | (b < 0x20) | (b == 0x7f));
        match std::str::from_utf8(self.0) {
            Ok(s) if !control => f.write_str(s),
            _ => write!(f, "{}", self.0.escape_ascii()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Shown;

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
}
