//! Command-line parsing and validation.
//!
//! Pure (no network, no files): argv becomes an `Args` value or a one-line `ArgError`,
//! which main prints before exiting with status 2. Every value is checked against a bound
//! here, so nothing later can be asked for an unbounded run, connection count or memory.
//! Targets are only resolved (and refused unless loopback) in target.rs.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

pub const HELP: &str = "\
loadgen: load generator for herd (and for a reference server such as Redis)

USAGE:
    loadgen [OPTIONS] (--addr HOST:PORT ... | --config herd.yml [--servers A,B])
    loadgen --workload propagation --from ADDR|NAME --to ADDR|NAME [--config herd.yml]

TARGETS (loopback only: 127.0.0.0/8, ::1, localhost):
    --addr HOST:PORT       a server to load; repeat for several
    --config FILE          take the servers from a herd.yml `servers:` map
    --servers A,B          only these servers of --config (default: all)
                           Connections are spread round-robin over the targets.

WORKLOAD:
    --workload KIND        iamat (default) | whatsat | mix | raw | propagation
                             iamat:   IAMAT lg-<n> <random location> <current time>
                             whatsat: WHATSAT lg-<n> RADIUS BOUND (after one unmeasured
                                      IAMAT per client in set-up)
                             mix:     IAMATs and WHATSATs, see --mix
                             raw:     --line sent as is, one-line replies (e.g. Redis PING)
                             propagation: IAMAT to --from, then WHATSAT polls to --to
                                      until the record arrives; per-trial latency
    --clients N            client ids lg-0 .. lg-<N-1> (default 10000)
    --radius KM            WHATSAT radius (default 10)
    --bound N              WHATSAT bound (default 5)
    --mix F                mix: fraction of IAMATs (default 0.9)
    --line TEXT            raw: the line to send (default PING)
    --expect PREFIX        raw: a reply must start with PREFIX (default: anything but
                           `? ...` or `-...` error replies)
    --crlf / --no-crlf     end requests with \\r\\n (default: on for raw, off otherwise)
    --from ADDR|NAME       propagation: where the IAMAT goes (NAME needs --config)
    --to ADDR|NAME         propagation: where WHATSAT polls go
    --trials N             propagation: number of trials (default 100)

LOAD:
    --connections C        connections (default 50)
    --pipeline D           requests outstanding per connection (default 1)
    --rate R               open loop: R requests/s in total, each timed from its intended
                           send time (wrk2-style); without it the loop is closed
    --threads N            independent client loops (default 1), histograms merged
    --idle N               also hold N idle connections open for the whole run
    --seed N               random seed for clients and locations (default 1)

TIME:
    --duration T           measured time (default 10s); T is 500ms, 2s, 1.5m, ...
    --warmup T             unmeasured time before it (default 2s)
    --timeout T            a request unanswered this long is a timeout (default 5s)
                           The run is aborted, and what was measured reported, at
                           warm-up + duration + 5s.

OUTPUT:
    --json                 one JSON object on stdout (figures and parameters)
    --svg FILE             also write the run's latency by percentile as an SVG plot
    --quiet                no progress lines on stderr (nor, with --json, the warnings:
                           they are in the JSON's warnings)
    -h, --help             this text
    -V, --version          the version

Latencies are in milliseconds in the text report and microseconds in the JSON.
A WHATSAT answer whose status is not OK or ZERO_RESULTS (say REQUEST_DENIED: no key)
counts as an error, by status. The report warns when every reply was an error, and
estimates the log volume when the servers log every message (herd's log.level info).
";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    Iamat,
    Whatsat,
    Mix,
    Raw,
    Propagation,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::Iamat => "iamat",
            Workload::Whatsat => "whatsat",
            Workload::Mix => "mix",
            Workload::Raw => "raw",
            Workload::Propagation => "propagation",
        }
    }

    /// Whether WHATSATs are sent, so every client needs an IAMAT in set-up first.
    pub fn needs_setup(self) -> bool {
        matches!(self, Workload::Whatsat | Workload::Mix)
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    pub addrs: Vec<String>,
    pub config: Option<PathBuf>,
    pub servers: Vec<String>,
    pub workload: Workload,
    pub clients: u64,
    pub radius: String,
    pub bound: u32,
    pub mix: f64,
    pub line: String,
    pub expect: Option<String>,
    pub crlf: bool,
    pub from: Option<String>,
    pub to: Option<String>,
    pub trials: u64,
    pub connections: usize,
    pub pipeline: usize,
    pub rate: Option<f64>,
    pub threads: usize,
    pub idle: usize,
    pub seed: u64,
    pub duration: Duration,
    pub warmup: Duration,
    pub timeout: Duration,
    pub json: bool,
    pub svg: Option<PathBuf>,
    pub quiet: bool,
}

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Box<Args>),
    Help,
    Version,
}

#[derive(Debug, PartialEq, Eq)]
pub struct ArgError(pub String);

impl fmt::Display for ArgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<lexopt::Error> for ArgError {
    fn from(e: lexopt::Error) -> Self {
        ArgError(e.to_string())
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ArgError> {
    Err(ArgError(msg.into()))
}

/// Bounds: generous for a 2-core machine, but finite.
const MAX_CONNECTIONS: usize = 50_000;
const MAX_PIPELINE: usize = 1024;
const MAX_THREADS: usize = 64;
const MAX_IDLE: usize = 200_000;
const MAX_CLIENTS: u64 = 10_000_000;
const MAX_TRIALS: u64 = 1_000_000;
const MAX_RATE: f64 = 10_000_000.0;
const MAX_TIME: Duration = Duration::from_secs(24 * 3600);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// `500ms`, `2s`, `1.5m`, `1h`, `250us`; a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("bad duration '{s}' (use e.g. 500ms, 2s, 1.5m)")),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration '{s}' (use e.g. 500ms, 2s, 1.5m)"))?;
    let secs = v * scale;
    if !secs.is_finite() || secs > MAX_TIME.as_secs_f64() {
        return Err(format!("duration '{s}' is longer than 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn text(name: &str, v: OsString) -> Result<String, ArgError> {
    v.into_string()
        .map_err(|v| ArgError(format!("{name}: '{}' is not UTF-8", v.to_string_lossy())))
}

fn number<T>(name: &str, v: OsString, lo: T, hi: T) -> Result<T, ArgError>
where
    T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
{
    let s = text(name, v)?;
    match s.trim().parse::<T>() {
        Ok(n) if n >= lo && n <= hi => Ok(n),
        _ => err(format!("{name}: '{s}' is not a number from {lo} to {hi}")),
    }
}

fn duration(name: &str, v: OsString) -> Result<Duration, ArgError> {
    parse_duration(&text(name, v)?).map_err(|e| ArgError(format!("{name}: {e}")))
}

/// Parses the arguments after the program name.
pub fn parse<I: IntoIterator<Item = OsString>>(argv: I) -> Result<Command, ArgError> {
    use lexopt::prelude::*;

    let mut a = Args {
        addrs: Vec::new(),
        config: None,
        servers: Vec::new(),
        workload: Workload::Iamat,
        clients: 10_000,
        radius: "10".into(),
        bound: 5,
        mix: 0.9,
        line: "PING".into(),
        expect: None,
        crlf: false,
        from: None,
        to: None,
        trials: 100,
        connections: 50,
        pipeline: 1,
        rate: None,
        threads: 1,
        idle: 0,
        seed: 1,
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
        json: false,
        svg: None,
        quiet: false,
    };
    let mut crlf = None;
    // Options that only make sense with one workload, to refuse them elsewhere.
    let (mut raw_only, mut prop_only, mut mix_given, mut whatsat_only) = (None, None, false, None);
    let mut p = lexopt::Parser::from_args(argv);
    while let Some(arg) = p.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Long("addr") => a.addrs.push(text("--addr", p.value()?)?),
            Long("config") => a.config = Some(PathBuf::from(p.value()?)),
            Long("servers") => {
                let v = text("--servers", p.value()?)?;
                a.servers.extend(
                    v.split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from),
                );
                if a.servers.is_empty() {
                    return err("--servers: no server names given");
                }
            }
            Long("workload") => {
                let v = text("--workload", p.value()?)?;
                a.workload = match v.as_str() {
                    "iamat" => Workload::Iamat,
                    "whatsat" => Workload::Whatsat,
                    "mix" => Workload::Mix,
                    "raw" => Workload::Raw,
                    "propagation" => Workload::Propagation,
                    _ => {
                        return err(format!(
                            "--workload: unknown '{v}' (iamat, whatsat, mix, raw, propagation)"
                        ));
                    }
                };
            }
            Long("clients") => a.clients = number("--clients", p.value()?, 1, MAX_CLIENTS)?,
            Long("radius") => {
                let v = text("--radius", p.value()?)?;
                match v.parse::<f64>() {
                    Ok(r) if r > 0.0 && r.is_finite() && !v.contains(char::is_whitespace) => a.radius = v,
                    _ => return err(format!("--radius: '{v}' is not a positive number")),
                }
                whatsat_only = Some("--radius");
            }
            Long("bound") => {
                a.bound = number("--bound", p.value()?, 0, 1000)?;
                whatsat_only = Some("--bound");
            }
            Long("mix") => {
                a.mix = number("--mix", p.value()?, 0.0, 1.0)?;
                mix_given = true;
            }
            Long("line") => {
                a.line = text("--line", p.value()?)?;
                if a.line.is_empty() || a.line.contains(['\n', '\r']) {
                    return err("--line: must be one non-empty line (the terminator is added)");
                }
                raw_only = Some("--line");
            }
            Long("expect") => {
                a.expect = Some(text("--expect", p.value()?)?);
                raw_only = Some("--expect");
            }
            Long("crlf") => crlf = Some(true),
            Long("no-crlf") => crlf = Some(false),
            Long("from") => {
                a.from = Some(text("--from", p.value()?)?);
                prop_only = Some("--from");
            }
            Long("to") => {
                a.to = Some(text("--to", p.value()?)?);
                prop_only = Some("--to");
            }
            Long("trials") => {
                a.trials = number("--trials", p.value()?, 1, MAX_TRIALS)?;
                prop_only = Some("--trials");
            }
            Long("connections") | Short('c') => {
                a.connections = number("--connections", p.value()?, 1, MAX_CONNECTIONS)?
            }
            Long("pipeline") | Short('d') => a.pipeline = number("--pipeline", p.value()?, 1, MAX_PIPELINE)?,
            Long("rate") | Short('R') => {
                let r: f64 = number("--rate", p.value()?, 0.0, MAX_RATE)?;
                if r <= 0.0 {
                    return err("--rate: must be more than 0");
                }
                a.rate = Some(r);
            }
            Long("threads") | Short('t') => a.threads = number("--threads", p.value()?, 1, MAX_THREADS)?,
            Long("idle") => a.idle = number("--idle", p.value()?, 0, MAX_IDLE)?,
            Long("seed") => a.seed = number("--seed", p.value()?, 0, u64::MAX)?,
            Long("duration") => a.duration = duration("--duration", p.value()?)?,
            Long("warmup") => a.warmup = duration("--warmup", p.value()?)?,
            Long("timeout") => a.timeout = duration("--timeout", p.value()?)?,
            Long("json") => a.json = true,
            Long("svg") => a.svg = Some(PathBuf::from(p.value()?)),
            Long("quiet") | Short('q') => a.quiet = true,
            _ => return Err(arg.unexpected().into()),
        }
    }
    a.crlf = crlf.unwrap_or(a.workload == Workload::Raw);
    validate(&a, raw_only, prop_only, mix_given, whatsat_only)?;
    Ok(Command::Run(Box::new(a)))
}

fn validate(
    a: &Args,
    raw_only: Option<&str>,
    prop_only: Option<&str>,
    mix_given: bool,
    whatsat_only: Option<&str>,
) -> Result<(), ArgError> {
    let w = a.workload;
    if let Some(o) = raw_only.filter(|_| w != Workload::Raw) {
        return err(format!("{o} is only for --workload raw"));
    }
    if let Some(o) = prop_only.filter(|_| w != Workload::Propagation) {
        return err(format!("{o} is only for --workload propagation"));
    }
    if mix_given && w != Workload::Mix {
        return err("--mix is only for --workload mix");
    }
    if let Some(o) = whatsat_only.filter(|_| !w.needs_setup()) {
        return err(format!("{o} is only for --workload whatsat or mix"));
    }
    if !a.servers.is_empty() && a.config.is_none() {
        return err("--servers needs --config");
    }
    if a.duration.is_zero() {
        return err("--duration: must be more than 0");
    }
    if a.timeout.is_zero() || a.timeout > MAX_TIMEOUT {
        return err("--timeout: must be more than 0 and at most 60s");
    }
    if w == Workload::Propagation {
        if a.from.is_none() || a.to.is_none() {
            return err("--workload propagation needs --from and --to");
        }
        if !a.addrs.is_empty() {
            return err("--workload propagation takes --from and --to, not --addr");
        }
        if a.rate.is_some() {
            return err("--rate does not apply to --workload propagation");
        }
        return Ok(());
    }
    if a.addrs.is_empty() && a.config.is_none() {
        return err("no target: give --addr HOST:PORT or --config herd.yml");
    }
    if !a.addrs.is_empty() && a.config.is_some() {
        return err("give either --addr or --config, not both");
    }
    if a.threads > a.connections {
        return err(format!(
            "--threads {} is more than --connections {}",
            a.threads, a.connections
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_str(s: &str) -> Result<Command, ArgError> {
        parse(s.split_whitespace().map(OsString::from))
    }

    fn run(s: &str) -> Args {
        match parse_str(s) {
            Ok(Command::Run(a)) => *a,
            other => panic!("{s}: {other:?}"),
        }
    }

    fn fails(s: &str, needle: &str) {
        match parse_str(s) {
            Err(ArgError(m)) => assert!(m.contains(needle), "{s}: '{m}' lacks '{needle}'"),
            other => panic!("{s}: expected an error, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let a = run("--addr 127.0.0.1:10099");
        assert_eq!(a.workload, Workload::Iamat);
        assert_eq!(
            (a.connections, a.pipeline, a.threads, a.clients),
            (50, 1, 1, 10_000)
        );
        assert_eq!(
            (a.duration, a.warmup, a.timeout),
            (
                Duration::from_secs(10),
                Duration::from_secs(2),
                Duration::from_secs(5)
            )
        );
        assert!(!a.crlf && a.rate.is_none() && !a.json);
    }

    #[test]
    fn full_command_lines() {
        let a = run(
            "--config herd.yml --servers Bailey,Bona --workload mix --mix 0.5 -c 8 -d 16 --rate 20000 \
             --threads 2 --duration 1.5m --warmup 500ms --json --idle 10",
        );
        assert_eq!(a.servers, ["Bailey", "Bona"]);
        assert_eq!(
            (a.mix, a.connections, a.pipeline, a.rate),
            (0.5, 8, 16, Some(20_000.0))
        );
        assert_eq!(a.duration, Duration::from_secs(90));
        assert_eq!(a.warmup, Duration::from_millis(500));
        let r = run("--workload raw --addr 127.0.0.1:6390 --expect +PONG");
        assert!(r.crlf, "raw defaults to CRLF");
        assert_eq!((r.line.as_str(), r.expect.as_deref()), ("PING", Some("+PONG")));
        assert!(!run("--workload raw --addr 127.0.0.1:1 --no-crlf").crlf);
        assert!(run("--addr 127.0.0.1:1 --crlf").crlf);
        let p = run("--workload propagation --from 127.0.0.1:1 --to Jaquez --config herd.yml --trials 5");
        assert_eq!(
            (p.from.as_deref(), p.to.as_deref(), p.trials),
            (Some("127.0.0.1:1"), Some("Jaquez"), 5)
        );
        assert!(matches!(parse_str("--help"), Ok(Command::Help)));
        assert!(matches!(parse_str("--addr x -V"), Ok(Command::Version)));
    }

    #[test]
    fn errors_are_one_clear_line() {
        fails("", "no target");
        fails(
            "--addr 127.0.0.1:1 --config herd.yml",
            "either --addr or --config",
        );
        fails("--addr 127.0.0.1:1 --servers Bailey", "--servers needs --config");
        fails("--addr 127.0.0.1:1 --workload bogus", "unknown 'bogus'");
        fails(
            "--addr 127.0.0.1:1 --connections 0",
            "--connections: '0' is not a number from 1",
        );
        fails("--addr 127.0.0.1:1 --connections many", "not a number");
        fails("--addr 127.0.0.1:1 --pipeline 5000", "--pipeline");
        fails("--addr 127.0.0.1:1 --rate 0", "--rate");
        fails("--addr 127.0.0.1:1 --rate -5", "--rate");
        fails("--addr 127.0.0.1:1 --duration 10x", "bad duration '10x'");
        fails("--addr 127.0.0.1:1 --duration 0", "--duration");
        fails("--addr 127.0.0.1:1 --duration 100h", "longer than 24h");
        fails("--addr 127.0.0.1:1 --timeout 2m", "--timeout");
        fails(
            "--addr 127.0.0.1:1 --threads 4 --connections 2",
            "--threads 4 is more than --connections 2",
        );
        fails(
            "--addr 127.0.0.1:1 --line PING",
            "--line is only for --workload raw",
        );
        fails("--addr 127.0.0.1:1 --mix 0.5", "--mix is only for --workload mix");
        fails("--addr 127.0.0.1:1 --workload mix --mix 1.5", "--mix");
        fails(
            "--addr 127.0.0.1:1 --radius 5",
            "--radius is only for --workload whatsat or mix",
        );
        fails("--addr 127.0.0.1:1 --workload whatsat --radius -1", "--radius");
        fails("--addr 127.0.0.1:1 --trials 3", "only for --workload propagation");
        fails(
            "--workload propagation --from 127.0.0.1:1",
            "needs --from and --to",
        );
        fails(
            "--workload propagation --from a --to b --rate 5",
            "--rate does not apply",
        );
        fails("--addr 127.0.0.1:1 --frobnicate", "--frobnicate");
        fails("--addr", "--addr");
        fails("--addr 127.0.0.1:1 --servers ,", "no server names");
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1.5m"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("100us"), Ok(Duration::from_micros(100)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("1.2.3s").is_err());
    }
}
