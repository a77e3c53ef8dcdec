//! The herd description (`herd.yml`): which servers exist, where they listen, who their
//! neighbours are, how to reach Places and where to log.
//!
//! Parsing is two steps: serde turns YAML into raw structs (so YAML and type errors come
//! with the key path and line), then `validate` checks the herd as a whole (links are
//! symmetric, ports distinct) and produces a `Herd` that the rest of the program can trust.
//! No network here: host names are kept as written and resolved by whoever binds or dials.
//!
//! Before serde sees the text, `check_caps` bounds its size, nesting and alias count
//! (SPEC §7): a YAML alias is expanded by copying, so a small file can stand for a huge
//! document, and the parser recurses on nesting.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, MapAccess, Visitor};

pub const DEFAULT_HOST: &str = "127.0.0.1";
pub const DEFAULT_KEY_ENV: &str = "GOOGLE_PLACES_API_KEY";
pub const DEFAULT_MAX_LINE: usize = 8192;
const NEW_API_URL: &str = "https://places.googleapis.com";
const LEGACY_API_URL: &str = "https://maps.googleapis.com";
/// A bound this small makes every message over-long, which is the operator's (or a test's)
/// choice, not an error.
const MIN_MAX_LINE: usize = 1;
const MAX_MAX_LINE: usize = 1 << 20;
const MAX_WORKERS: usize = 256;
/// Far above any Places quota; a bigger number is more likely a typo than a plan.
const MAX_RPS: u32 = 100_000;
/// SPEC §7's caps on the file, checked on the text before it is parsed.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;
pub const MAX_CONFIG_DEPTH: usize = 64;
pub const MAX_CONFIG_ALIASES: usize = 256;
/// Flow collections opened inside another: a backstop for the depth count (see
/// `check_caps`); a herd of 1,000 servers written in flow style has about as many. At
/// this depth over a 1 MiB file the parser would still finish in well under a second.
const MAX_NESTED_FLOW: usize = 1024;
/// The longest time any `_s` key may name: ten years. Far beyond any sensible setting,
/// and small enough that `Instant + Duration` can never overflow.
const MAX_SECONDS: u64 = 10 * 365 * 86_400;
const DEFAULT_DEAD_AFTER_MS: u64 = 5000;
const DEAD_AFTER_MS: std::ops::RangeInclusive<u64> = 1000..=600_000;
const MAX_ROTATE_MB: u64 = 1 << 20;
const MAX_KEEP: u32 = 1000;

/// A validated herd.
#[derive(Clone, Debug)]
pub struct Herd {
    /// In file order.
    pub servers: Vec<Server>,
    pub places: Places,
    pub log: Log,
    /// The same as `limits.max_line`, kept for the code that reads it from here.
    pub max_line: usize,
    // These four and `PeerTls::for_server` are read by the features of SPEC §5-§8, which
    // are being built alongside; the allows go when those are wired in.
    pub limits: Limits,
    pub table: TableRules,
    pub peers: Peers,
    pub state: State,
    pub peer_tls: Option<PeerTls>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<String>,
    /// The admin endpoint's port (SPEC §8); none means no admin endpoint.
    pub admin_port: Option<u16>,
    pub admin_host: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    New,
    Legacy,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Places {
    pub api: Api,
    /// Base URL without a trailing `/`.
    pub url: String,
    pub key_env: String,
    pub timeout: Duration,
    pub workers: usize,
    /// Upstream calls per second at most (a token bucket); 0 = no cap.
    pub max_rps: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Log {
    pub dir: PathBuf,
    pub level: log::LevelFilter,
    pub rotation: Rotation,
}

/// When the log file is rotated and how many old files are kept (SPEC §7).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rotation {
    /// Rotate once the file reaches this many bytes; None never rotates.
    pub max_bytes: Option<u64>,
    /// Old files kept as `<Name>.log.1` (newest) .. `<Name>.log.<keep>`; 0 keeps none.
    pub keep: u32,
}

/// SPEC §7's `limits:`. None (0 in the file) turns a limit off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest message in bytes; always on.
    pub max_line: usize,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<Duration>,
    pub send_timeout: Option<Duration>,
    pub max_future: Option<Duration>,
    pub max_clients: Option<usize>,
}

/// The `table:` section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TableRules {
    /// A record whose client time is older than this is forgotten; None keeps records.
    pub ttl: Option<Duration>,
}

/// The `peers:` section (SPEC §5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peers {
    /// A peer connection silent (or unacknowledged) this long is dead.
    pub dead_after: Duration,
}

/// The `state:` section (SPEC §8): table snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct State {
    /// Where `<Name>.snap` lives; None (an empty `dir`) turns snapshots off.
    pub dir: Option<PathBuf>,
    pub every: Duration,
}

/// The `peer_tls:` section (SPEC §6): file names, each possibly holding `{name}`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    ca: String,
    cert: String,
    key: String,
    /// The config file's directory, against which relative names are taken.
    base: PathBuf,
}

impl PeerTls {
    /// The CA, certificate and key files of server `name`.
    pub fn for_server(&self, name: &str) -> (PathBuf, PathBuf, PathBuf) {
        let path = |template: &str| {
            let p = PathBuf::from(template.replace("{name}", name));
            if p.is_relative() { self.base.join(p) } else { p }
        };
        (path(&self.ca), path(&self.cert), path(&self.key))
    }
}

impl Herd {
    pub fn server(&self, name: &str) -> Option<&Server> {
        self.servers.iter().find(|s| s.name == name)
    }
}

#[derive(Debug)]
pub enum ConfigError {
    Read {
        path: PathBuf,
        err: std::io::Error,
    },
    /// Over a cap of SPEC §7, found before parsing.
    Refused {
        path: PathBuf,
        msg: String,
    },
    /// serde_yaml's message already names the key path and the line.
    Yaml {
        path: PathBuf,
        msg: String,
    },
    Invalid {
        path: PathBuf,
        key: String,
        msg: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, err } if err.kind() == std::io::ErrorKind::NotFound => {
                // Most often herd was started from another directory than herd.yml's.
                let looked = std::path::absolute(path).unwrap_or_else(|_| path.clone());
                write!(
                    f,
                    "{}: no such file (looked for {}); name the herd file with --config PATH",
                    path.display(),
                    looked.display()
                )
            }
            ConfigError::Read { path, err } => write!(f, "{}: cannot read: {err}", path.display()),
            ConfigError::Refused { path, msg } => write!(f, "{}: refused: {msg}", path.display()),
            ConfigError::Yaml { path, msg } => write!(f, "{}: {msg}", path.display()),
            ConfigError::Invalid { path, key, msg } => {
                write!(f, "{}: {key}: {msg}", path.display())
            }
        }
    }
}

impl std::error::Error for ConfigError {}

/// Reads and validates a herd file. `env` looks up environment variables (injected so
/// tests need not touch the process environment).
pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Herd, ConfigError> {
    let text = read_capped(path)?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env).map_err(|e| e.at(path))
}

/// Reads at most one byte past the size cap, so a huge (or endless) file costs nothing.
fn read_capped(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    let read_err = |err| ConfigError::Read {
        path: path.to_path_buf(),
        err,
    };
    let file = std::fs::File::open(path).map_err(read_err)?;
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Problem::Refused(too_big()).at(path));
    }
    String::from_utf8(bytes).map_err(|e| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("not UTF-8 (at byte {})", e.utf8_error().valid_up_to()),
        ))
    })
}

fn too_big() -> String {
    format!("the file is over {MAX_CONFIG_BYTES} bytes (1 MiB)")
}

/// Parses herd YAML; relative paths (`log.dir`, `state.dir`, `peer_tls`) are taken
/// relative to `base`.
pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Herd, Problem> {
    check_caps(text)?;
    let raw: RawHerd = serde_yaml::from_str(text).map_err(|e| Problem::Yaml(one_line(e.to_string())))?;
    validate(raw, base, env)
}

/// SPEC §7's caps, on the text, in one pass and no allocation, so that no file can make
/// the parser expand or recurse far. The counts err on the high side: an alias is any
/// `*` that starts a token, even inside quotes or a comment; a nesting level is each open
/// flow bracket, each block indentation step and each `- ` / `? ` on a line. Brackets in
/// a quoted scalar count as well, except that a closing one there never takes the depth
/// below where the quote began (`["]", ["]", ...` nests, whatever its brackets say).
/// Since telling quotes apart needs a whole YAML scanner, the count of flow collections
/// opened inside others is capped too: that bounds the depth however the quotes were
/// misread, and with it the parser's work, which grows with depth times tokens. A real
/// herd.yml is three or four levels deep with a few nested collections per server and
/// no aliases, so none of this refuses anything real.
pub fn check_caps(text: &str) -> Result<(), Problem> {
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(Problem::Refused(too_big()));
    }
    let mut aliases = 0usize;
    let mut nested = 0usize;
    let mut flow = 0usize;
    // Inside a quoted scalar: its quote byte and the flow depth where it began.
    let mut quote: Option<(u8, usize)> = None;
    // Block indentations currently open, innermost last; bounded by the depth cap.
    let mut indents = [0usize; MAX_CONFIG_DEPTH + 1];
    let mut open = 0usize;
    for (number, line) in text.lines().enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|&&b| b == b' ').count();
        let rest = &bytes[indent..];
        let blank = rest.iter().all(|b| b.is_ascii_whitespace()) || rest.first() == Some(&b'#');
        let mut depth = flow;
        if flow == 0 && quote.is_none() && !blank {
            while open > 0 && indents[open - 1] > indent {
                open -= 1;
            }
            if open == 0 || indents[open - 1] < indent {
                if open == indents.len() {
                    return Err(too_deep(number));
                }
                indents[open] = indent;
                open += 1;
            }
            // `- - - x` nests three sequences on one line.
            let mut r = rest;
            let mut marks = 0;
            while let [b'-' | b'?', b' ' | b'\t', tail @ ..] = r {
                marks += 1;
                r = tail.trim_ascii_start();
            }
            depth = open + marks;
        }
        // The last byte other than white space: a quote can only open a scalar after one
        // of `[{,:-?` or at the start of a line, not inside a plain word (`rock 'n roll`).
        let mut last = b'\n';
        let mut prev = b' ';
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            match (b, quote) {
                (b'[' | b'{', _) => {
                    if flow > 0 {
                        nested += 1;
                    }
                    flow += 1;
                    depth = depth.max(open + flow);
                }
                (b']' | b'}', None) => flow = flow.saturating_sub(1),
                (b']' | b'}', Some((_, floor))) => flow = flow.saturating_sub(1).max(floor),
                (b'*', _) if matches!(prev, b' ' | b'\t' | b'[' | b'{' | b',' | b':' | b'-' | b'?') => {
                    aliases += 1;
                }
                (b'\'' | b'"', None) if matches!(last, b'\n' | b'[' | b'{' | b',' | b':' | b'-' | b'?') => {
                    quote = Some((b, flow));
                }
                // `''` is a quote inside a single-quoted scalar; `\"` inside a double one.
                (b'\'', Some((b'\'', _))) if bytes.get(i + 1) == Some(&b'\'') => i += 1,
                (b'\\', Some((b'"', _))) => i += 1,
                (q, Some((open_q, _))) if q == open_q => quote = None,
                _ => {}
            }
            if !b.is_ascii_whitespace() {
                last = b;
            }
            prev = b;
            i += 1;
        }
        if depth > MAX_CONFIG_DEPTH {
            return Err(too_deep(number));
        }
        if aliases > MAX_CONFIG_ALIASES {
            return Err(Problem::Refused(format!(
                "more than {MAX_CONFIG_ALIASES} aliases (`*name`) by line {}",
                number + 1
            )));
        }
        if nested > MAX_NESTED_FLOW {
            return Err(Problem::Refused(format!(
                "more than {MAX_NESTED_FLOW} flow collections (`[...]`, `{{...}}`) inside others by line {}",
                number + 1
            )));
        }
    }
    Ok(())
}

fn too_deep(number: usize) -> Problem {
    Problem::Refused(format!(
        "nested deeper than {MAX_CONFIG_DEPTH} levels at line {}",
        number + 1
    ))
}

/// Control characters escaped: an error quotes names and values from the file, which may
/// hold line breaks, and a config error is always reported as one line.
fn one_line(text: String) -> String {
    if !text.contains(char::is_control) {
        return text;
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:04x}}}", u32::from(c))),
            c => out.push(c),
        }
    }
    out
}

/// A config problem before the file name is known.
#[derive(Debug, PartialEq)]
pub enum Problem {
    Yaml(String),
    Invalid {
        key: String,
        msg: String,
    },
    /// Over a cap of SPEC §7; the text was not parsed.
    Refused(String),
}

impl Problem {
    fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Problem {
        Problem::Invalid {
            key: one_line(key.into()),
            msg: one_line(msg.into()),
        }
    }

    fn at(self, path: &Path) -> ConfigError {
        let path = path.to_path_buf();
        match self {
            Problem::Yaml(msg) => ConfigError::Yaml { path, msg },
            Problem::Refused(msg) => ConfigError::Refused { path, msg },
            Problem::Invalid { key, msg } => ConfigError::Invalid { path, key, msg },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Yaml(msg) => f.write_str(msg),
            Problem::Refused(msg) => write!(f, "refused: {msg}"),
            Problem::Invalid { key, msg } => write!(f, "{key}: {msg}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHerd {
    servers: RawServers,
    // Each section may be left out, or written empty (`log:` or `log: ~`): both mean its
    // defaults.
    places: Option<RawPlaces>,
    log: Option<RawLog>,
    limits: Option<RawLimits>,
    table: Option<RawTable>,
    peers: Option<RawPeers>,
    state: Option<RawState>,
    peer_tls: Option<RawPeerTls>,
    /// The default for every server's `admin_host`.
    admin_host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    host: Option<String>,
    port: u16,
    peer_port: u16,
    #[serde(default)]
    neighbours: Vec<String>,
    admin_port: Option<u16>,
    admin_host: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPlaces {
    api: Option<Api>,
    url: Option<String>,
    key_env: Option<String>,
    timeout_ms: Option<u64>,
    workers: Option<usize>,
    max_rps: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLog {
    dir: Option<PathBuf>,
    level: Option<String>,
    rotate_mb: Option<u64>,
    keep: Option<u32>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line: Option<usize>,
    max_connections: Option<usize>,
    idle_timeout_s: Option<u64>,
    send_timeout_s: Option<u64>,
    max_future_s: Option<u64>,
    max_clients: Option<usize>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTable {
    ttl_s: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPeers {
    dead_after_ms: Option<u64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawState {
    dir: Option<PathBuf>,
    every_s: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeerTls {
    ca: String,
    cert: String,
    key: String,
}

/// The `servers` mapping in file order. A plain map would silently keep the last of two
/// entries with the same name; a herd with two Baileys is a mistake worth reporting.
struct RawServers(Vec<(String, RawServer)>);

impl<'de> Deserialize<'de> for RawServers {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawServers;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping from server name to its settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<RawServers, A::Error> {
                let mut out: Vec<(String, RawServer)> = Vec::new();
                while let Some(name) = map.next_key::<String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(de::Error::custom(format!("server `{name}` is listed twice")));
                    }
                    let server = map.next_value::<RawServer>()?;
                    out.push((name, server));
                }
                Ok(RawServers(out))
            }
        }
        d.deserialize_map(V)
    }
}

fn validate(raw: RawHerd, base: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Herd, Problem> {
    let admin_host = match raw.admin_host {
        Some(h) if h.trim().is_empty() => return Err(Problem::invalid("admin_host", "empty host")),
        Some(h) => h,
        None => DEFAULT_HOST.to_string(),
    };
    let servers = validate_servers(raw.servers.0, &admin_host)?;
    let places = validate_places(raw.places.unwrap_or_default(), &env)?;
    let log = validate_log(raw.log.unwrap_or_default(), base)?;
    let limits = validate_limits(raw.limits.unwrap_or_default())?;
    let table = TableRules {
        ttl: seconds("table.ttl_s", raw.table.unwrap_or_default().ttl_s.unwrap_or(0))?,
    };
    let dead_after_ms = raw
        .peers
        .unwrap_or_default()
        .dead_after_ms
        .unwrap_or(DEFAULT_DEAD_AFTER_MS);
    if !DEAD_AFTER_MS.contains(&dead_after_ms) {
        return Err(out_of_range("peers.dead_after_ms", dead_after_ms, DEAD_AFTER_MS));
    }
    let peers = Peers {
        dead_after: Duration::from_millis(dead_after_ms),
    };
    let state = validate_state(raw.state.unwrap_or_default(), base)?;
    let peer_tls = raw.peer_tls.map(|t| validate_peer_tls(t, base)).transpose()?;
    Ok(Herd {
        servers,
        places,
        log,
        max_line: limits.max_line,
        limits,
        table,
        peers,
        state,
        peer_tls,
    })
}

fn out_of_range<T: fmt::Display>(key: &str, v: T, range: std::ops::RangeInclusive<T>) -> Problem {
    Problem::invalid(
        key,
        format!("{v} is out of range {}..={}", range.start(), range.end()),
    )
}

/// A `_s` key where 0 means off.
fn seconds(key: &str, v: u64) -> Result<Option<Duration>, Problem> {
    if v > MAX_SECONDS {
        return Err(out_of_range(key, v, 0..=MAX_SECONDS));
    }
    Ok((v > 0).then(|| Duration::from_secs(v)))
}

fn validate_limits(raw: RawLimits) -> Result<Limits, Problem> {
    // 0 ("off") is the longest line herd will hold: memory per connection stays bounded.
    let max_line = match raw.max_line.unwrap_or(DEFAULT_MAX_LINE) {
        0 => MAX_MAX_LINE,
        n => n,
    };
    if !(MIN_MAX_LINE..=MAX_MAX_LINE).contains(&max_line) {
        return Err(out_of_range(
            "limits.max_line",
            max_line,
            MIN_MAX_LINE..=MAX_MAX_LINE,
        ));
    }
    let nonzero = |v: usize| (v > 0).then_some(v);
    Ok(Limits {
        max_line,
        max_connections: nonzero(raw.max_connections.unwrap_or(10_000)),
        idle_timeout: seconds("limits.idle_timeout_s", raw.idle_timeout_s.unwrap_or(0))?,
        send_timeout: seconds("limits.send_timeout_s", raw.send_timeout_s.unwrap_or(30))?,
        max_future: seconds("limits.max_future_s", raw.max_future_s.unwrap_or(86_400))?,
        max_clients: nonzero(raw.max_clients.unwrap_or(0)),
    })
}

fn validate_state(raw: RawState, base: &Path) -> Result<State, Problem> {
    let dir = raw.dir.unwrap_or_else(|| PathBuf::from("state"));
    let dir = if dir.as_os_str().is_empty() {
        None
    } else if dir.is_relative() {
        Some(base.join(dir))
    } else {
        Some(dir)
    };
    let every_s = raw.every_s.unwrap_or(60);
    if !(1..=MAX_SECONDS).contains(&every_s) {
        return Err(out_of_range("state.every_s", every_s, 1..=MAX_SECONDS));
    }
    Ok(State {
        dir,
        every: Duration::from_secs(every_s),
    })
}

fn validate_peer_tls(raw: RawPeerTls, base: &Path) -> Result<PeerTls, Problem> {
    for (key, v) in [("ca", &raw.ca), ("cert", &raw.cert), ("key", &raw.key)] {
        if v.trim().is_empty() {
            return Err(Problem::invalid(format!("peer_tls.{key}"), "empty file name"));
        }
    }
    Ok(PeerTls {
        ca: raw.ca,
        cert: raw.cert,
        key: raw.key,
        base: base.to_path_buf(),
    })
}

fn validate_servers(raw: Vec<(String, RawServer)>, default_admin_host: &str) -> Result<Vec<Server>, Problem> {
    if raw.is_empty() {
        return Err(Problem::invalid("servers", "no servers listed"));
    }
    let mut servers = Vec::with_capacity(raw.len());
    for (name, r) in raw {
        // The name travels in AT lines and HELLOs, which are white-space separated.
        if name.is_empty() || name.bytes().any(|b| b.is_ascii_whitespace() || b == 0x0b) {
            return Err(Problem::invalid(
                format!("servers.{name}"),
                "a server name must be non-empty and contain no white space",
            ));
        }
        let host = r.host.unwrap_or_else(|| DEFAULT_HOST.to_string());
        if host.trim().is_empty() {
            return Err(Problem::invalid(format!("servers.{name}.host"), "empty host"));
        }
        for (key, port) in [
            ("port", Some(r.port)),
            ("peer_port", Some(r.peer_port)),
            ("admin_port", r.admin_port),
        ] {
            if port == Some(0) {
                return Err(Problem::invalid(
                    format!("servers.{name}.{key}"),
                    "port 0 is not allowed (a fixed port is needed to reach it)",
                ));
            }
        }
        let admin_host = r.admin_host.unwrap_or_else(|| default_admin_host.to_string());
        if admin_host.trim().is_empty() {
            return Err(Problem::invalid(
                format!("servers.{name}.admin_host"),
                "empty host",
            ));
        }
        servers.push(Server {
            name,
            host,
            port: r.port,
            peer_port: r.peer_port,
            neighbours: r.neighbours,
            admin_port: r.admin_port,
            admin_host,
        });
    }
    check_ports(&servers)?;
    check_links(&servers)?;
    Ok(servers)
}

/// Two listeners on one host and port cannot both bind; say which two collide. The admin
/// port counts as on the server's `host`, whatever `admin_host` says: it is on the same
/// machine, and 127.0.0.1:p and 0.0.0.0:p collide too.
fn check_ports(servers: &[Server]) -> Result<(), Problem> {
    let mut seen: Vec<(&str, u16, String)> = Vec::new();
    for s in servers {
        let admin = s.admin_port.map(|p| ("admin_port", p));
        for (key, port) in [("port", s.port), ("peer_port", s.peer_port)]
            .into_iter()
            .chain(admin)
        {
            let here = format!("servers.{}.{key}", s.name);
            if let Some((_, _, first)) = seen.iter().find(|(h, p, _)| *h == s.host && *p == port) {
                return Err(Problem::invalid(
                    here,
                    format!("port {port} on {} is already used by {first}", s.host),
                ));
            }
            seen.push((&s.host, port, here));
        }
    }
    Ok(())
}

fn check_links(servers: &[Server]) -> Result<(), Problem> {
    let names: HashSet<&str> = servers.iter().map(|s| s.name.as_str()).collect();
    for s in servers {
        let key = format!("servers.{}.neighbours", s.name);
        let mut seen = HashSet::new();
        for n in &s.neighbours {
            if !names.contains(n.as_str()) {
                return Err(Problem::invalid(key, format!("unknown neighbour `{n}`")));
            }
            if *n == s.name {
                return Err(Problem::invalid(key, format!("`{n}` lists itself")));
            }
            if !seen.insert(n.as_str()) {
                return Err(Problem::invalid(key, format!("`{n}` is listed twice")));
            }
            let back = servers.iter().find(|o| o.name == *n);
            if back.is_some_and(|o| !o.neighbours.contains(&s.name)) {
                return Err(Problem::invalid(
                    key,
                    format!(
                        "one-sided link: {} lists {n} but {n} does not list {} (links are bidirectional)",
                        s.name, s.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

fn validate_places(raw: RawPlaces, env: impl Fn(&str) -> Option<String>) -> Result<Places, Problem> {
    let api = match env("HERD_PLACES_API").filter(|v| !v.is_empty()) {
        Some(v) => match v.as_str() {
            "new" => Api::New,
            "legacy" => Api::Legacy,
            _ => {
                return Err(Problem::invalid(
                    "HERD_PLACES_API",
                    format!("`{v}` is not one of `new`, `legacy`"),
                ));
            }
        },
        None => raw.api.unwrap_or(Api::New),
    };
    let url = env("HERD_PLACES_URL")
        .filter(|v| !v.is_empty())
        .or(raw.url)
        .unwrap_or_else(|| match api {
            Api::New => NEW_API_URL.to_string(),
            Api::Legacy => LEGACY_API_URL.to_string(),
        });
    let url = url.trim_end_matches('/').to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(Problem::invalid(
            "places.url",
            format!("`{url}` must start with http:// or https://"),
        ));
    }
    let key_env = raw.key_env.unwrap_or_else(|| DEFAULT_KEY_ENV.to_string());
    if key_env.is_empty() {
        return Err(Problem::invalid("places.key_env", "empty variable name"));
    }
    let timeout_ms = raw.timeout_ms.unwrap_or(5000);
    if timeout_ms == 0 {
        return Err(Problem::invalid("places.timeout_ms", "must be at least 1"));
    }
    let workers = raw.workers.unwrap_or(4);
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(Problem::invalid(
            "places.workers",
            format!("{workers} is out of range 1..={MAX_WORKERS}"),
        ));
    }
    let max_rps = raw.max_rps.unwrap_or(0);
    if max_rps > MAX_RPS {
        return Err(Problem::invalid(
            "places.max_rps",
            format!("{max_rps} is out of range 0..={MAX_RPS} (0 turns the cap off)"),
        ));
    }
    Ok(Places {
        api,
        url,
        key_env,
        timeout: Duration::from_millis(timeout_ms),
        workers,
        max_rps,
    })
}

fn validate_log(raw: RawLog, base: &Path) -> Result<Log, Problem> {
    let dir = raw.dir.unwrap_or_else(|| PathBuf::from("logs"));
    let dir = if dir.is_relative() { base.join(dir) } else { dir };
    let level = raw.level.as_deref().unwrap_or("info").to_ascii_lowercase();
    let level = match level.as_str() {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" | "warning" => log::LevelFilter::Warn,
        "info" => log::LevelFilter::Info,
        "debug" => log::LevelFilter::Debug,
        "trace" => log::LevelFilter::Trace,
        other => {
            return Err(Problem::invalid(
                "log.level",
                format!("`{other}` is not one of off, error, warn, info, debug, trace"),
            ));
        }
    };
    let rotate_mb = raw.rotate_mb.unwrap_or(256);
    if rotate_mb > MAX_ROTATE_MB {
        return Err(out_of_range("log.rotate_mb", rotate_mb, 0..=MAX_ROTATE_MB));
    }
    let keep = raw.keep.unwrap_or(4);
    if keep > MAX_KEEP {
        return Err(out_of_range("log.keep", keep, 0..=MAX_KEEP));
    }
    let rotation = Rotation {
        max_bytes: (rotate_mb > 0).then_some(rotate_mb << 20),
        keep,
    };
    Ok(Log { dir, level, rotation })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HERD: &str = include_str!("../herd.yml");

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse_ok(text: &str) -> Herd {
        match parse(text, Path::new("/etc/herd"), no_env) {
            Ok(h) => h,
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    fn parse_err(text: &str) -> String {
        match parse(text, Path::new("/etc/herd"), no_env) {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn shipped_herd_is_the_spec_table() {
        let h = parse_ok(HERD);
        let got: Vec<(&str, u16, u16, Vec<&str>)> = h
            .servers
            .iter()
            .map(|s| {
                let n = s.neighbours.iter().map(String::as_str).collect();
                (s.name.as_str(), s.port, s.peer_port, n)
            })
            .collect();
        assert_eq!(
            got,
            vec![
                ("Bailey", 10099, 20099, vec!["Bona", "Campbell"]),
                ("Bona", 10044, 20044, vec!["Bailey", "Campbell", "Clark"]),
                ("Campbell", 10022, 20022, vec!["Bailey", "Bona", "Jaquez"]),
                ("Clark", 10211, 20211, vec!["Bona", "Jaquez"]),
                ("Jaquez", 10194, 20194, vec!["Campbell", "Clark"]),
            ]
        );
        assert!(h.servers.iter().all(|s| s.host == "127.0.0.1"));
        assert_eq!(h.log.dir, Path::new("/etc/herd/logs"));
        assert_eq!(h.log.level, log::LevelFilter::Info);
        assert_eq!(h.max_line, 8192);
        assert_eq!(h.places.key_env, "GOOGLE_PLACES_API_KEY");
        let admin: Vec<(Option<u16>, &str)> = h
            .servers
            .iter()
            .map(|s| (s.admin_port, s.admin_host.as_str()))
            .collect();
        let local = "127.0.0.1";
        assert_eq!(
            admin,
            [
                (Some(30099), local),
                (Some(30044), local),
                (Some(30022), local),
                (Some(30211), local),
                (Some(30194), local),
            ]
        );
        // Its commented-out sections are the defaults.
        let bare = parse_ok("servers:\n  A: { port: 1, peer_port: 2 }\n");
        assert_eq!(h.limits, bare.limits);
        assert_eq!(h.table, bare.table);
        assert_eq!(h.peers, bare.peers);
        assert_eq!(h.state, bare.state);
        assert_eq!(h.log.rotation, bare.log.rotation);
        assert_eq!(h.peer_tls, None);
    }

    /// The sections of SPEC §5-§8 with nothing set.
    #[test]
    fn new_sections_default_as_spec_says() {
        let h = parse_ok("servers:\n  A: { port: 1000, peer_port: 2000 }\n");
        assert_eq!(
            h.limits,
            Limits {
                max_line: 8192,
                max_connections: Some(10_000),
                idle_timeout: None,
                send_timeout: Some(Duration::from_secs(30)),
                max_future: Some(Duration::from_secs(86_400)),
                max_clients: None,
            }
        );
        assert_eq!(h.table.ttl, None);
        assert_eq!(h.peers.dead_after, Duration::from_millis(5000));
        assert_eq!(
            h.state,
            State {
                dir: Some(PathBuf::from("/etc/herd/state")),
                every: Duration::from_secs(60),
            }
        );
        assert_eq!(
            h.log.rotation,
            Rotation {
                max_bytes: Some(256 << 20),
                keep: 4
            }
        );
        assert_eq!(h.servers[0].admin_port, None);
        assert_eq!(h.servers[0].admin_host, "127.0.0.1");
        assert!(h.peer_tls.is_none());
    }

    const BASE: &str = "servers:\n  A: { port: 1, peer_port: 2 }\n";

    fn with(extra: &str) -> Herd {
        parse_ok(&format!("{BASE}{extra}\n"))
    }

    fn with_err(extra: &str) -> String {
        parse_err(&format!("{BASE}{extra}\n"))
    }

    #[test]
    fn limits_are_typed_and_zero_turns_them_off() {
        let h = with(
            "limits: { max_connections: 5, idle_timeout_s: 7, send_timeout_s: 9, max_future_s: 11, max_clients: 13 }",
        );
        let l = h.limits;
        assert_eq!(l.max_connections, Some(5));
        assert_eq!(l.idle_timeout, Some(Duration::from_secs(7)));
        assert_eq!(l.send_timeout, Some(Duration::from_secs(9)));
        assert_eq!(l.max_future, Some(Duration::from_secs(11)));
        assert_eq!(l.max_clients, Some(13));
        let h = with(
            "limits: { max_connections: 0, idle_timeout_s: 0, send_timeout_s: 0, max_future_s: 0, max_clients: 0 }",
        );
        let off = Limits {
            max_line: 8192,
            max_connections: None,
            idle_timeout: None,
            send_timeout: None,
            max_future: None,
            max_clients: None,
        };
        assert_eq!(h.limits, off);
        assert_eq!(with("limits: { max_line: 100 }").limits.max_line, 100);
        assert_eq!(with("limits: { max_line: 100 }").max_line, 100, "kept in sync");
    }

    #[test]
    fn bad_limits_name_the_key() {
        for key in ["idle_timeout_s", "send_timeout_s", "max_future_s"] {
            let e = with_err(&format!("limits: {{ {key}: 315360001 }}"));
            assert_eq!(
                e,
                format!("limits.{key}: 315360001 is out of range 0..=315360000")
            );
            let e = with_err(&format!("limits: {{ {key}: -1 }}"));
            assert!(e.starts_with(&format!("limits.{key}: invalid type")), "{e}");
        }
        for key in ["max_connections", "max_clients"] {
            let e = with_err(&format!("limits: {{ {key}: many }}"));
            assert!(e.starts_with(&format!("limits.{key}: invalid type")), "{e}");
        }
        let e = with_err("limits: { max_line: 1048577 }");
        assert_eq!(e, "limits.max_line: 1048577 is out of range 1..=1048576");
        let e = with_err("limits: { max_lines: 100 }");
        assert!(e.starts_with("limits: unknown field `max_lines`"), "{e}");
    }

    #[test]
    fn table_ttl() {
        assert_eq!(
            with("table: { ttl_s: 3600 }").table.ttl,
            Some(Duration::from_secs(3600))
        );
        assert_eq!(with("table: { ttl_s: 0 }").table.ttl, None);
        let e = with_err("table: { ttl_s: 999999999999 }");
        assert_eq!(e, "table.ttl_s: 999999999999 is out of range 0..=315360000");
        let e = with_err("table: { ttl: 5 }");
        assert!(e.starts_with("table: unknown field `ttl`"), "{e}");
    }

    #[test]
    fn peers_dead_after() {
        let dead = |ms: u64| {
            with(&format!("peers: {{ dead_after_ms: {ms} }}"))
                .peers
                .dead_after
        };
        assert_eq!(dead(1000), Duration::from_millis(1000));
        assert_eq!(dead(600_000), Duration::from_millis(600_000));
        for ms in [0, 999, 600_001] {
            let e = with_err(&format!("peers: {{ dead_after_ms: {ms} }}"));
            assert_eq!(
                e,
                format!("peers.dead_after_ms: {ms} is out of range 1000..=600000")
            );
        }
        let e = with_err("peers: { dead_after: 5 }");
        assert!(e.starts_with("peers: unknown field `dead_after`"), "{e}");
    }

    #[test]
    fn state_dir_and_period() {
        let s = with("state: { dir: snaps, every_s: 5 }").state;
        assert_eq!(s.dir, Some(PathBuf::from("/etc/herd/snaps")));
        assert_eq!(s.every, Duration::from_secs(5));
        assert_eq!(
            with("state: { dir: /var/lib/herd }").state.dir,
            Some(PathBuf::from("/var/lib/herd"))
        );
        assert_eq!(
            with("state: { dir: '' }").state.dir,
            None,
            "empty turns snapshots off"
        );
        let e = with_err("state: { every_s: 0 }");
        assert_eq!(e, "state.every_s: 0 is out of range 1..=315360000");
        let e = with_err("state: { every: 5 }");
        assert!(e.starts_with("state: unknown field `every`"), "{e}");
    }

    #[test]
    fn log_rotation() {
        let r = with("log: { rotate_mb: 1, keep: 2 }").log.rotation;
        assert_eq!(
            r,
            Rotation {
                max_bytes: Some(1 << 20),
                keep: 2
            }
        );
        let r = with("log: { rotate_mb: 0, keep: 0 }").log.rotation;
        assert_eq!(
            r,
            Rotation {
                max_bytes: None,
                keep: 0
            }
        );
        let e = with_err("log: { rotate_mb: 1048577 }");
        assert_eq!(e, "log.rotate_mb: 1048577 is out of range 0..=1048576");
        let e = with_err("log: { keep: 1001 }");
        assert_eq!(e, "log.keep: 1001 is out of range 0..=1000");
        let e = with_err("log: { keep: -1 }");
        assert!(e.starts_with("log.keep: invalid type"), "{e}");
    }

    #[test]
    fn admin_port_and_host() {
        let h = parse_ok(
            "servers:\n  A: { port: 1, peer_port: 2, admin_port: 3 }\n  B: { port: 4, peer_port: 5, admin_port: 6, admin_host: 0.0.0.0 }\n",
        );
        assert_eq!(
            (h.servers[0].admin_port, h.servers[0].admin_host.as_str()),
            (Some(3), "127.0.0.1")
        );
        assert_eq!(
            (h.servers[1].admin_port, h.servers[1].admin_host.as_str()),
            (Some(6), "0.0.0.0")
        );
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, admin_port: 0 }\n");
        assert!(
            e.starts_with("servers.A.admin_port: port 0 is not allowed"),
            "{e}"
        );
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, admin_port: 70000 }\n");
        assert!(e.starts_with("servers.A.admin_port: invalid value"), "{e}");
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, admin_port: 3, admin_host: ' ' }\n");
        assert_eq!(e, "servers.A.admin_host: empty host");
        // Against its own ports, and another server's on the same host.
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, admin_port: 2 }\n");
        assert_eq!(
            e,
            "servers.A.admin_port: port 2 on 127.0.0.1 is already used by servers.A.peer_port"
        );
        let e = parse_err(
            "servers:\n  A: { port: 1, peer_port: 2, admin_port: 5 }\n  B: { port: 4, peer_port: 5 }\n",
        );
        assert_eq!(
            e,
            "servers.B.peer_port: port 5 on 127.0.0.1 is already used by servers.A.admin_port"
        );
        let e = parse_err(
            "servers:\n  A: { port: 1, peer_port: 2, admin_port: 9 }\n  B: { port: 4, peer_port: 5, admin_port: 9, admin_host: '::1' }\n",
        );
        assert_eq!(
            e,
            "servers.B.admin_port: port 9 on 127.0.0.1 is already used by servers.A.admin_port"
        );
        // Servers on different machines may use the same admin port.
        let h = parse_ok(
            "servers:\n  A: { host: 10.0.0.1, port: 1, peer_port: 2, admin_port: 9 }\n  B: { host: 10.0.0.2, port: 1, peer_port: 2, admin_port: 9 }\n",
        );
        assert_eq!(h.servers.len(), 2);
    }

    #[test]
    fn peer_tls_paths_per_server() {
        let h =
            with("peer_tls: { ca: certs/ca.pem, cert: 'certs/{name}.pem', key: '/keys/{name}/{name}.key' }");
        let tls = h.peer_tls.unwrap_or_else(|| panic!("peer_tls missing"));
        assert_eq!(
            tls.for_server("Bailey"),
            (
                PathBuf::from("/etc/herd/certs/ca.pem"),
                PathBuf::from("/etc/herd/certs/Bailey.pem"),
                PathBuf::from("/keys/Bailey/Bailey.key"),
            )
        );
        let e = with_err("peer_tls: { ca: ca.pem, cert: c.pem }");
        assert!(e.starts_with("peer_tls: missing field `key`"), "{e}");
        let e = with_err("peer_tls: { ca: '', cert: c.pem, key: k.pem }");
        assert_eq!(e, "peer_tls.ca: empty file name");
        let e = with_err("peer_tls: { ca: a, cert: c, key: k, crl: x }");
        assert!(e.starts_with("peer_tls: unknown field `crl`"), "{e}");
    }

    #[test]
    fn caps_refuse_aliases_before_expansion() {
        // 3,000 aliases of one anchor (issue 12: 3 GB of RSS before this cap).
        let mut text = String::from("servers:\n  A: { port: 1, peer_port: 2 }\nx: &a [1, 2, 3]\ny: [");
        for _ in 0..3000 {
            text.push_str("*a, ");
        }
        text.push_str("]\n");
        let e = parse_err(&text);
        assert_eq!(e, "refused: more than 256 aliases (`*name`) by line 4");
        // 256 are allowed (and then refused by serde for the unknown keys, not by the cap).
        let mut ok = String::from("servers:\n  A: { port: 1, peer_port: 2 }\nx: &a 1\ny: [");
        for _ in 0..256 {
            ok.push_str("*a, ");
        }
        ok.push_str("]\n");
        assert!(check_caps(&ok).is_ok());
        // A `*` inside a word is no alias.
        assert!(check_caps(&"url: http://x/*\n".repeat(300)).is_ok());
    }

    #[test]
    fn caps_refuse_deep_nesting() {
        let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            parse_err(&deep),
            "refused: nested deeper than 64 levels at line 1"
        );
        let braces = format!("a: {}{}\n", "{b: ".repeat(65), "}".repeat(65));
        assert!(parse_err(&braces).starts_with("refused: nested deeper"));
        // Block nesting by indentation, and by sequences on one line.
        let mut block = String::new();
        for i in 0..100 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert_eq!(
            parse_err(&block),
            "refused: nested deeper than 64 levels at line 65"
        );
        let dashes = format!("{}x\n", "- ".repeat(70));
        assert!(parse_err(&dashes).starts_with("refused: nested deeper"));
        // 64 levels are fine as far as the cap goes.
        let mut block = String::new();
        for i in 0..64 {
            block.push_str(&format!("{}k{i}:\n", " ".repeat(i)));
        }
        assert!(check_caps(&block).is_ok());
        // A key and 63 flow levels under it: 64.
        let flow = format!("x: {}{}", "[".repeat(63), "]".repeat(63));
        assert!(check_caps(&flow).is_ok());
        let flow = format!("x: {}{}", "[".repeat(64), "]".repeat(64));
        assert!(check_caps(&flow).is_err());
    }

    #[test]
    fn caps_see_through_brackets_in_quotes() {
        // Quoted closing brackets do not undo the nesting they sit in.
        for q in ['"', '\''] {
            let sneaky = format!("x: {}{}\n", format!("[{q}]{q}, ").repeat(100), "]".repeat(100));
            assert!(
                parse_err(&sneaky).starts_with("refused: nested deeper"),
                "{sneaky}"
            );
        }
        let escaped = format!("x: {}\n", r#"["\"]", "#.repeat(70));
        assert!(
            parse_err(&escaped).starts_with("refused: nested deeper"),
            "{escaped}"
        );
        let doubled = format!("x: {}\n", "[''']', ".repeat(70));
        assert!(
            parse_err(&doubled).starts_with("refused: nested deeper"),
            "{doubled}"
        );
        // Balanced brackets in quotes, and quotes inside plain words, leave the depth be.
        let real = "  A: { host: '::1', port: 1, peer_port: 2, url: 'http://[::1]:9/[x]' }\n".repeat(200);
        assert!(check_caps(&format!("servers:\n{real}")).is_ok());
        let plain = "x: [rock 'n roll, it's \"fine]\n".repeat(200);
        assert!(check_caps(&plain).is_ok());
        // However the quotes fool the count, collections inside others are bounded.
        let many = "x: [[a], {b: [c]}]\n".repeat(400);
        assert_eq!(
            parse_err(&many),
            "refused: more than 1024 flow collections (`[...]`, `{...}`) inside others by line 342"
        );
    }

    #[test]
    fn caps_refuse_a_file_over_one_mib() {
        let big = format!("{BASE}#{}\n", "x".repeat(1 << 20));
        assert_eq!(parse_err(&big), "refused: the file is over 1048576 bytes (1 MiB)");
        let dir = std::env::temp_dir().join(format!("herd-config-cap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("herd.yml");
        std::fs::write(&path, &big).unwrap_or_else(|e| panic!("{e}"));
        let err = load(&path, no_env).map(|_| ()).unwrap_err().to_string();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(
            err,
            format!(
                "{}: refused: the file is over 1048576 bytes (1 MiB)",
                path.display()
            )
        );
    }

    #[test]
    fn defaults_when_sections_are_missing() {
        let h = parse_ok("servers:\n  A: { port: 1000, peer_port: 2000 }\n");
        assert_eq!(h.servers[0].host, "127.0.0.1");
        assert!(h.servers[0].neighbours.is_empty());
        assert_eq!(
            h.places,
            Places {
                api: Api::New,
                url: "https://places.googleapis.com".into(),
                key_env: "GOOGLE_PLACES_API_KEY".into(),
                timeout: Duration::from_millis(5000),
                workers: 4,
                max_rps: 0,
            }
        );
        assert_eq!(h.max_line, 8192);
    }

    #[test]
    fn legacy_api_defaults_to_maps_url_and_trailing_slash_is_ignored() {
        let h = parse_ok("servers:\n  A: { port: 1, peer_port: 2 }\nplaces: { api: legacy }\n");
        assert_eq!(h.places.url, "https://maps.googleapis.com");
        let h =
            parse_ok("servers:\n  A: { port: 1, peer_port: 2 }\nplaces: { url: 'http://127.0.0.1:9/' }\n");
        assert_eq!(h.places.url, "http://127.0.0.1:9");
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let env = |k: &str| match k {
            "HERD_PLACES_URL" => Some("http://127.0.0.1:4000/".to_string()),
            "HERD_PLACES_API" => Some("legacy".to_string()),
            _ => None,
        };
        let text = "servers:\n  A: { port: 1, peer_port: 2 }\nplaces: { api: new, url: 'https://x' }\n";
        let h = parse(text, Path::new("."), env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(h.places.api, Api::Legacy);
        assert_eq!(h.places.url, "http://127.0.0.1:4000");
    }

    #[test]
    fn bad_api_override_is_named() {
        let env = |k: &str| (k == "HERD_PLACES_API").then(|| "v2".to_string());
        let text = "servers:\n  A: { port: 1, peer_port: 2 }\n";
        let err = parse(text, Path::new("."), env).map(|_| ()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "HERD_PLACES_API: `v2` is not one of `new`, `legacy`"
        );
    }

    #[test]
    fn unknown_neighbour_names_server_and_key() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, neighbours: [Zed] }\n");
        assert_eq!(e, "servers.A.neighbours: unknown neighbour `Zed`");
    }

    #[test]
    fn one_sided_link_names_both_servers() {
        let e = parse_err(
            "servers:\n  A: { port: 1, peer_port: 2, neighbours: [B] }\n  B: { port: 3, peer_port: 4 }\n",
        );
        assert!(
            e.starts_with("servers.A.neighbours: one-sided link: A lists B but B does not list A"),
            "{e}"
        );
    }

    #[test]
    fn self_and_repeated_neighbours_are_rejected() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2, neighbours: [A] }\n");
        assert_eq!(e, "servers.A.neighbours: `A` lists itself");
        let e = parse_err(
            "servers:\n  A: { port: 1, peer_port: 2, neighbours: [B, B] }\n  B: { port: 3, peer_port: 4, neighbours: [A] }\n",
        );
        assert_eq!(e, "servers.A.neighbours: `B` is listed twice");
    }

    #[test]
    fn duplicate_port_names_both_places() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2 }\n  B: { port: 3, peer_port: 1 }\n");
        assert_eq!(
            e,
            "servers.B.peer_port: port 1 on 127.0.0.1 is already used by servers.A.port"
        );
        let e = parse_err("servers:\n  A: { port: 5, peer_port: 5 }\n");
        assert_eq!(
            e,
            "servers.A.peer_port: port 5 on 127.0.0.1 is already used by servers.A.port"
        );
    }

    #[test]
    fn same_port_on_different_hosts_is_fine() {
        let h = parse_ok(
            "servers:\n  A: { host: 10.0.0.1, port: 1, peer_port: 2 }\n  B: { host: 10.0.0.2, port: 1, peer_port: 2 }\n",
        );
        assert_eq!(h.servers.len(), 2);
    }

    #[test]
    fn missing_field_names_server_key_and_line() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2 }\n  B: { port: 3 }\n");
        assert_eq!(e, "servers.B: missing field `peer_port` at line 3 column 6");
    }

    #[test]
    fn unknown_key_is_a_typo_not_silently_ignored() {
        let e = parse_err("servers:\n  A: { port: 1, peerport: 2 }\n");
        assert!(e.starts_with("servers.A: unknown field `peerport`"), "{e}");
        assert!(e.contains("line 2"), "{e}");
    }

    #[test]
    fn bad_yaml_gives_a_line() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2\n");
        assert!(e.contains("line"), "{e}");
        assert!(!e.contains('\n'), "one line: {e}");
    }

    #[test]
    fn out_of_range_port_names_key() {
        let e = parse_err("servers:\n  A: { port: 70000, peer_port: 2 }\n");
        assert!(
            e.starts_with("servers.A.port: invalid value: integer `70000`"),
            "{e}"
        );
        let e = parse_err("servers:\n  A: { port: 0, peer_port: 2 }\n");
        assert!(e.starts_with("servers.A.port: port 0 is not allowed"), "{e}");
    }

    #[test]
    fn duplicate_server_is_rejected() {
        let e = parse_err("servers:\n  A: { port: 1, peer_port: 2 }\n  A: { port: 3, peer_port: 4 }\n");
        assert!(e.contains("servers"), "{e}");
        assert!(e.contains("A"), "{e}");
    }

    #[test]
    fn empty_servers_and_bad_names_are_rejected() {
        assert_eq!(parse_err("servers: {}\n"), "servers: no servers listed");
        let e = parse_err("servers:\n  'A B': { port: 1, peer_port: 2 }\n");
        assert!(
            e.starts_with("servers.A B: a server name must be non-empty"),
            "{e}"
        );
    }

    #[test]
    fn places_and_log_and_limits_values_are_checked() {
        let base = "servers:\n  A: { port: 1, peer_port: 2 }\n";
        let e = parse_err(&format!("{base}places: {{ workers: 0 }}\n"));
        assert_eq!(e, "places.workers: 0 is out of range 1..=256");
        let e = parse_err(&format!("{base}places: {{ max_rps: 100001 }}\n"));
        assert_eq!(
            e,
            "places.max_rps: 100001 is out of range 0..=100000 (0 turns the cap off)"
        );
        let e = parse_err(&format!("{base}places: {{ max_rps: -1 }}\n"));
        assert!(e.starts_with("places.max_rps: "), "{e}");
        assert_eq!(
            parse_ok(&format!("{base}places: {{ max_rps: 20 }}\n"))
                .places
                .max_rps,
            20
        );
        let e = parse_err(&format!("{base}places: {{ timeout_ms: 0 }}\n"));
        assert_eq!(e, "places.timeout_ms: must be at least 1");
        let e = parse_err(&format!("{base}places: {{ api: v3 }}\n"));
        assert!(e.starts_with("places.api: unknown variant `v3`"), "{e}");
        let e = parse_err(&format!("{base}places: {{ url: 'ftp://x' }}\n"));
        assert_eq!(e, "places.url: `ftp://x` must start with http:// or https://");
        let e = parse_err(&format!("{base}log: {{ level: loud }}\n"));
        assert!(e.starts_with("log.level: `loud` is not one of"), "{e}");
        // A tiny bound is allowed (every message is then over-long); 0 is the largest.
        let small = |v: &str| parse_ok(&format!("{base}limits: {{ max_line: {v} }}\n")).max_line;
        assert_eq!(small("10"), 10);
        assert_eq!(small("0"), 1 << 20);
        // Level names are not case-sensitive; `warning` is `warn`.
        let level = |v: &str| parse_ok(&format!("{base}log: {{ level: {v} }}\n")).log.level;
        assert_eq!(level("INFO"), log::LevelFilter::Info);
        assert_eq!(level("Warning"), log::LevelFilter::Warn);
        // An empty section is its defaults; a top-level admin_host is every server's default.
        let h = parse_ok(&format!("{base}log: ~\nlimits:\nadmin_host: 0.0.0.0\n"));
        assert_eq!(h.max_line, 8192);
        assert!(
            h.servers.iter().all(|s| s.admin_host == "0.0.0.0"),
            "{:?}",
            h.servers
        );
        let h = parse_ok(&format!(
            "{base}limits: {{ max_line: 300 }}\nlog: {{ dir: /var/log/herd, level: debug }}\n"
        ));
        assert_eq!(h.max_line, 300);
        assert_eq!(h.log.dir, Path::new("/var/log/herd"));
        assert_eq!(h.log.level, log::LevelFilter::Debug);
    }

    #[test]
    fn load_prefixes_errors_with_the_file() {
        let err = load(Path::new("/nonexistent/herd.yml"), no_env)
            .map(|_| ())
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "/nonexistent/herd.yml: no such file (looked for /nonexistent/herd.yml); name the herd file with --config PATH"
        );
        let err = load(Path::new("no-such-herd.yml"), no_env)
            .map(|_| ())
            .unwrap_err();
        let cwd = std::env::current_dir().unwrap_or_default();
        let looked = cwd.join("no-such-herd.yml");
        assert!(
            err.to_string()
                .contains(&format!("(looked for {})", looked.display())),
            "{err}"
        );
        let err = load(Path::new("/"), no_env).map(|_| ()).unwrap_err();
        assert!(err.to_string().starts_with("/: cannot read:"), "{err}");
    }

    /// Found by src/fuzz.rs: serde_yaml quotes the offending value, and a quoted value may
    /// hold a line break, which made a two-line error.
    #[test]
    fn errors_quoting_line_breaks_stay_on_one_line() {
        let yaml = "servers:\n  A: { port: 1, peer_port: 2 }\nplaces:\n  api: \"a\\nb\"\n";
        let neighbour = "servers:\n  A: { port: 1, peer_port: 2, neighbours: [\"B\\r\\u0001\"] }\n";
        for (text, want) in [(yaml, "`a\\nb`"), (neighbour, "`B\\r\\u{0001}`")] {
            let msg = match parse(text, Path::new("/h"), |_| None) {
                Ok(_) => panic!("{text} loaded"),
                Err(e) => e.to_string(),
            };
            assert!(!msg.contains(['\n', '\r', '\u{1}']), "{msg:?}");
            assert!(msg.contains(want), "{msg:?}");
        }
    }
}
