//! Warnings for runs whose figures mislead on their own, printed with the report:
//! - every reply was an error (a herd without a Places key answers WHATSAT with a fast
//!   REQUEST_DENIED: 80k "req/s" of refusals is not a WHATSAT throughput);
//! - the servers were logging every message: herd's default `log.level: info` writes a
//!   line per request, so a few seconds at full speed leave hundreds of MB of logs (issue
//!   14 saw 382 MB after a four-second run). The estimate says how much, so a user can
//!   turn logging down (`log.level: warn`) or make room.

use serde_yaml::Value;

use crate::args::Workload;
use crate::stats::Errors;

/// Log bytes per request at info level, measured with loadgen's client ids: the line of
/// the server that took an IAMAT (with its "forwarded to" note) or a WHATSAT, and the line
/// each other server writes for a flooded record. A herd's mesh can bring a record to a
/// server more than once, so the estimate is a lower bound.
const IAMAT_LINE: u64 = 215;
const WHATSAT_LINE: u64 = 180;
const RECORD_LINE: u64 = 135;
/// Below this a run's logs are not worth a warning.
const WARN_LOG_BYTES: u64 = 50_000_000;

/// What loadgen knows about the targets' logging.
#[derive(Debug, Clone, PartialEq)]
pub enum Logging {
    /// From --config: the herd's `log.level` and how many servers it has.
    Herd { level: String, servers: usize },
    /// --addr: maybe a herd at its default level, maybe something else.
    Unknown,
}

impl Logging {
    /// From a herd.yml's text: `log.level` (default `info`) and the size of `servers:`.
    pub fn of_config(yaml: &str) -> Logging {
        let v: Value = serde_yaml::from_str(yaml).unwrap_or(Value::Null);
        let level = v
            .get("log")
            .and_then(|l| l.get("level"))
            .and_then(Value::as_str)
            .unwrap_or("info")
            .to_string();
        let servers = v
            .get("servers")
            .and_then(Value::as_mapping)
            .map_or(1, |m| m.len().max(1));
        Logging::Herd { level, servers }
    }
}

/// A finished load run, as far as the warnings need it.
pub struct Run<'a> {
    pub workload: Workload,
    /// --mix: the fraction of IAMATs.
    pub mix: f64,
    /// Successful replies (measured).
    pub ok: u64,
    pub errors: &'a Errors,
    /// Requests sent in all, warm-up and set-up included, as far as known.
    pub requests: u64,
    pub logging: Logging,
}

/// Bytes the herd logged for `requests` at info level: at least.
pub fn log_bytes(requests: u64, iamat_share: f64, servers: usize) -> u64 {
    let iamats = (requests as f64 * iamat_share.clamp(0.0, 1.0)).round() as u64;
    let whatsats = requests - iamats.min(requests);
    let flooded = RECORD_LINE * servers.saturating_sub(1) as u64;
    iamats * (IAMAT_LINE + flooded) + whatsats * WHATSAT_LINE
}

fn mb(bytes: u64) -> String {
    format!("{:.0} MB", bytes as f64 / 1e6)
}

pub fn warnings(r: &Run) -> Vec<String> {
    let mut w = Vec::new();
    let total = r.errors.total();
    if r.ok == 0 && total > 0 {
        let mut m = String::from(
            "every reply was an error (see errors above): no latency or throughput was measured",
        );
        if r.errors.places.request_denied > 0 {
            m.push_str(
                "; REQUEST_DENIED means the servers have no Places key (set one, or run \
                 places-stub: see the README's offline recipe)",
            );
        }
        w.push(m);
    }
    let iamat_share = match r.workload {
        Workload::Iamat => 1.0,
        Workload::Whatsat => 0.0,
        Workload::Mix => r.mix,
        // Raw is for a reference server (Redis); propagation sends a few requests.
        Workload::Raw | Workload::Propagation => return w,
    };
    let (level, servers, hedge) = match &r.logging {
        Logging::Herd { level, servers } => (level.as_str(), *servers, ""),
        Logging::Unknown => (
            "info",
            1,
            "if the targets are herd servers at the default log.level info, ",
        ),
    };
    if !matches!(level, "info" | "debug" | "trace") {
        return w;
    }
    let bytes = log_bytes(r.requests, iamat_share, servers);
    if bytes >= WARN_LOG_BYTES {
        w.push(format!(
            "{hedge}this run wrote at least {} of logs ({} requests; one line per message at \
             level {level}); set log.level: warn in herd.yml for long or repeated runs",
            mb(bytes),
            r.requests
        ));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(workload: Workload, ok: u64, errors: &Errors, requests: u64, logging: Logging) -> Vec<String> {
        warnings(&Run {
            workload,
            mix: 0.9,
            ok,
            errors,
            requests,
            logging,
        })
    }

    fn herd(level: &str, servers: usize) -> Logging {
        Logging::Herd {
            level: level.into(),
            servers,
        }
    }

    #[test]
    fn all_errors_is_a_warning_that_names_the_status() {
        let mut e = Errors::default();
        e.places.request_denied = 52_028;
        let w = run(Workload::Whatsat, 0, &e, 52_028, herd("warn", 1));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("every reply was an error"), "{w:?}");
        assert!(w[0].contains("no Places key"), "{w:?}");
        // One success among the errors: the errors are in the report, no warning.
        assert!(run(Workload::Whatsat, 1, &e, 52_029, herd("warn", 1)).is_empty());
        assert!(run(Workload::Whatsat, 0, &Errors::default(), 0, herd("warn", 1)).is_empty());
    }

    #[test]
    fn log_volume_is_estimated_per_workload_and_herd_size() {
        assert_eq!(log_bytes(1000, 1.0, 1), 1000 * IAMAT_LINE);
        assert_eq!(log_bytes(1000, 1.0, 5), 1000 * (IAMAT_LINE + 4 * RECORD_LINE));
        assert_eq!(log_bytes(1000, 0.0, 5), 1000 * WHATSAT_LINE);
        assert_eq!(log_bytes(10, 0.9, 1), 9 * IAMAT_LINE + WHATSAT_LINE);
        let e = Errors::default();
        // 10 s at 45k IAMAT/s on one server at info: about 97 MB.
        let w = run(Workload::Iamat, 450_000, &e, 450_000, herd("info", 1));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(
            w[0].contains("at least 97 MB") && w[0].contains("log.level: warn"),
            "{w:?}"
        );
        assert!(run(Workload::Iamat, 450_000, &e, 450_000, herd("warn", 1)).is_empty());
        assert!(
            run(Workload::Iamat, 1000, &e, 1000, herd("info", 5)).is_empty(),
            "small run"
        );
        assert!(run(Workload::Raw, 9_000_000, &e, 9_000_000, Logging::Unknown).is_empty());
        let unknown = run(Workload::Iamat, 450_000, &e, 450_000, Logging::Unknown);
        assert!(
            unknown[0].starts_with("if the targets are herd servers"),
            "{unknown:?}"
        );
    }

    #[test]
    fn the_level_and_size_come_from_the_config() {
        let yaml = "servers:\n  A: { port: 1, peer_port: 2 }\n  B: { port: 3, peer_port: 4 }\nlog: { level: warn }\n";
        assert_eq!(Logging::of_config(yaml), herd("warn", 2));
        assert_eq!(
            Logging::of_config("servers:\n  A: { port: 1 }\n"),
            herd("info", 1)
        );
        assert_eq!(Logging::of_config(": not yaml ["), herd("info", 1));
    }
}
