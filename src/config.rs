//! The herd description (`herd.yml`): which servers exist, where they listen, who their
//! neighbours are, how to reach Places and where to log.
//!
//! Parsing is two steps: serde turns YAML into raw structs (so YAML and type errors come
//! with the key path and line), then `validate` checks the herd as a whole (links are
//! symmetric, ports distinct) and produces a `Herd` that the rest of the program can trust.
//! No network here: host names are kept as written and resolved by whoever binds or dials.

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
/// Lines shorter than this could not even hold an IAMAT with a plausible client name.
const MIN_MAX_LINE: usize = 64;
const MAX_MAX_LINE: usize = 1 << 20;
const MAX_WORKERS: usize = 256;
/// Far above any Places quota; a bigger number is more likely a typo than a plan.
const MAX_RPS: u32 = 100_000;

/// A validated herd.
#[derive(Clone, Debug)]
pub struct Herd {
    /// In file order.
    pub servers: Vec<Server>,
    pub places: Places,
    pub log: Log,
    pub max_line: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Server {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<String>,
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
            ConfigError::Read { path, err } => write!(f, "{}: cannot read: {err}", path.display()),
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
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::Read {
        path: path.to_path_buf(),
        err,
    })?;
    let base = path.parent().unwrap_or(Path::new("."));
    parse(&text, base, env).map_err(|e| e.at(path))
}

/// Parses herd YAML; a relative `log.dir` is taken relative to `base`.
pub fn parse(text: &str, base: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Herd, Problem> {
    let raw: RawHerd = serde_yaml::from_str(text).map_err(|e| Problem::Yaml(e.to_string()))?;
    validate(raw, base, env)
}

/// A config problem before the file name is known.
#[derive(Debug, PartialEq)]
pub enum Problem {
    Yaml(String),
    Invalid { key: String, msg: String },
}

impl Problem {
    fn invalid(key: impl Into<String>, msg: impl Into<String>) -> Problem {
        Problem::Invalid {
            key: key.into(),
            msg: msg.into(),
        }
    }

    fn at(self, path: &Path) -> ConfigError {
        let path = path.to_path_buf();
        match self {
            Problem::Yaml(msg) => ConfigError::Yaml { path, msg },
            Problem::Invalid { key, msg } => ConfigError::Invalid { path, key, msg },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::Yaml(msg) => f.write_str(msg),
            Problem::Invalid { key, msg } => write!(f, "{key}: {msg}"),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHerd {
    servers: RawServers,
    #[serde(default)]
    places: RawPlaces,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    limits: RawLimits,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    host: Option<String>,
    port: u16,
    peer_port: u16,
    #[serde(default)]
    neighbours: Vec<String>,
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
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_line: Option<usize>,
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
    let servers = validate_servers(raw.servers.0)?;
    let places = validate_places(raw.places, &env)?;
    let log = validate_log(raw.log, base)?;
    let max_line = raw.limits.max_line.unwrap_or(DEFAULT_MAX_LINE);
    if !(MIN_MAX_LINE..=MAX_MAX_LINE).contains(&max_line) {
        return Err(Problem::invalid(
            "limits.max_line",
            format!("{max_line} is out of range {MIN_MAX_LINE}..={MAX_MAX_LINE}"),
        ));
    }
    Ok(Herd {
        servers,
        places,
        log,
        max_line,
    })
}

fn validate_servers(raw: Vec<(String, RawServer)>) -> Result<Vec<Server>, Problem> {
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
        for (key, port) in [("port", r.port), ("peer_port", r.peer_port)] {
            if port == 0 {
                return Err(Problem::invalid(
                    format!("servers.{name}.{key}"),
                    "port 0 is not allowed (neighbours must know where to dial)",
                ));
            }
        }
        servers.push(Server {
            name,
            host,
            port: r.port,
            peer_port: r.peer_port,
            neighbours: r.neighbours,
        });
    }
    check_ports(&servers)?;
    check_links(&servers)?;
    Ok(servers)
}

/// Two listeners on one host and port cannot both bind; say which two collide.
fn check_ports(servers: &[Server]) -> Result<(), Problem> {
    let mut seen: Vec<(&str, u16, String)> = Vec::new();
    for s in servers {
        for (key, port) in [("port", s.port), ("peer_port", s.peer_port)] {
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
    let level = match raw.level.as_deref().unwrap_or("info") {
        "off" => log::LevelFilter::Off,
        "error" => log::LevelFilter::Error,
        "warn" => log::LevelFilter::Warn,
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
    Ok(Log { dir, level })
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
        let e = parse_err(&format!("{base}limits: {{ max_line: 10 }}\n"));
        assert_eq!(e, "limits.max_line: 10 is out of range 64..=1048576");
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
        assert!(
            err.to_string().starts_with("/nonexistent/herd.yml: cannot read:"),
            "{err}"
        );
    }
}
