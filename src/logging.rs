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
