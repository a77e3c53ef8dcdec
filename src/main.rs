//! `herd [--config PATH] NAME`: runs one server of the herd described by the config file.
//! `herd status`: asks every server of that herd how it is (src/status.rs).
//!
//! Start-up failures (bad arguments, bad config, unknown name, a port in use) print one
//! line on stderr and exit with status 2 before anything is left listening.

mod admin;
mod certs;
mod cli;
mod config;
#[cfg(test)]
mod fuzz;
mod legacy_json;
mod lines;
mod links;
mod log_file;
mod log_writer;
mod logging;
mod metrics;
mod places;
mod protocol;
mod reactor;
mod resolver;
mod session;
mod slab;
mod snapshot;
mod status;
mod table;
mod timer;
mod tls;

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::process::ExitCode;
use std::time::Duration;

use cli::Command;

fn main() -> ExitCode {
    let args = match cli::parse(std::env::args_os().skip(1)) {
        Ok(Command::Help) => {
            print!("{}", cli::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("herd {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Ok(Command::List(config)) => {
            return match list(&config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(msg) => fail(&msg),
            };
        }
        Ok(Command::Status(config)) => return status(&config),
        Ok(Command::Certs(args)) => {
            return match certs::run(&args.config, args.out.as_deref(), args.force) {
                Ok(paths) => {
                    // Only the paths: a key's contents are never printed.
                    for p in paths {
                        println!("wrote {}", p.display());
                    }
                    ExitCode::SUCCESS
                }
                Err(msg) => fail(&msg),
            };
        }
        Ok(Command::Run(args)) => args,
        Err(e) => return fail(&format!("{e} (try --help)")),
    };
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => fail(&msg),
    }
}

fn fail(msg: &str) -> ExitCode {
    eprintln!("herd: {msg}");
    ExitCode::from(2)
}

fn run(args: cli::Args) -> Result<(), String> {
    let herd = config::load(&args.config, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let Some(me) = herd.server(&args.name) else {
        let names: Vec<&str> = herd.servers.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no server named `{}` in {} (it has: {})",
            args.name,
            args.config.display(),
            names.join(", ")
        ));
    };
    let client_addr = resolve(&me.host, me.port)?;
    let peer_addr = resolve(&me.host, me.peer_port)?;
    // SPEC §5: neighbours' names are looked up at each dial, not here; only our own host
    // must resolve at start. Validation guarantees every neighbour is a configured server.
    let neighbours = me
        .neighbours
        .iter()
        .filter_map(|n| herd.server(n))
        .map(|s| {
            let at = links::Endpoint {
                host: s.host.clone(),
                port: s.peer_port,
            };
            (s.name.clone(), at)
        })
        .collect();
    // An unset or empty variable means no key (SPEC §1); the key itself is never printed.
    let key = std::env::var(&herd.places.key_env).ok().filter(|k| !k.is_empty());
    let has_key = key.is_some();
    let tls = load_tls(&herd, &me.name)?;
    let tls_note = match &herd.peer_tls {
        Some(t) => {
            let (ca, cert, _) = t.for_server(&me.name);
            Some(format!(
                "peer links: mutual TLS 1.3 (CA {}, certificate {})",
                ca.display(),
                cert.display()
            ))
        }
        None => None,
    };
    let exposed = plain_exposure(&herd, me);
    let settings = reactor::Settings {
        name: me.name.clone(),
        max_line: herd.max_line,
        client_addr,
        peer_addr,
        neighbours,
        servers: herd.servers.iter().map(|s| s.name.clone()).collect(),
        // 0 in the file (None) turns the cap off, which the reactor spells 0.
        max_connections: herd.limits.max_connections.unwrap_or(0),
        dead_after: herd.peers.dead_after,
        tls,
        idle_timeout: herd.limits.idle_timeout,
        send_timeout: herd.limits.send_timeout,
        table_rules: table::Rules {
            max_future: herd.limits.max_future,
            max_clients: herd.limits.max_clients.unwrap_or(0),
            ttl: herd.table.ttl,
        },
        admin_addr: match me.admin_port {
            Some(port) => Some(resolve(&me.admin_host, port)?),
            None => None,
        },
        snapshots: herd.state.dir.as_ref().map(|dir| snapshot::Plan {
            path: dir.join(format!("{}.snap", me.name)),
            every: herd.state.every,
        }),
    };
    reactor::tune_allocator();
    let reactor = reactor::Reactor::bind(settings, &herd.places, key).map_err(|e| e.to_string())?;
    let log_path = logging::init(&herd.log.dir, &me.name, herd.log.level, herd.log.rotation)?;
    log::info!(
        "{} starting (herd {}): clients on {client_addr}, neighbours on {peer_addr}, linked to [{}], config {}, log {}",
        me.name,
        env!("CARGO_PKG_VERSION"),
        me.neighbours.join(", "),
        args.config.display(),
        log_path.display()
    );
    log::info!(
        "Places: {:?} API at {}, {} workers, timeout {} ms, key {}",
        herd.places.api,
        herd.places.url,
        herd.places.workers,
        herd.places.timeout.as_millis(),
        if has_key {
            format!("from ${}", herd.places.key_env)
        } else {
            format!(
                "not set (${} is empty): WHATSAT answers REQUEST_DENIED",
                herd.places.key_env
            )
        }
    );
    match tls_note {
        Some(note) => log::info!("{note}"),
        None if !exposed.is_empty() => log::warn!(
            "peer links are plain TCP and {} not on loopback: the peer port trusts any HELLO \
             (anyone who reaches it can inject records, and links travel in clear); set peer_tls \
             (see `herd certs`)",
            exposed.join(", ")
        ),
        None => {}
    }
    if let Some(addr) = reactor.admin_addr() {
        log::info!("admin endpoint on http://{addr}/metrics and /healthz");
    }
    logging::flush();
    let result = reactor.run();
    if let Err(e) = &result {
        log::error!("reactor failed: {e}");
    }
    // Whatever was logged since the reactor's last write: Places calls that ended during
    // the shutdown grace, or the records before a failure.
    logging::finish();
    result.map_err(|e| format!("reactor failed: {e}"))
}

/// `peer_tls`: this server's CA, certificate and key, checked before anything listens. A
/// certificate that does not name this server would be refused by every neighbour.
fn load_tls(herd: &config::Herd, me: &str) -> Result<Option<tls::TlsSetup>, String> {
    let Some(t) = &herd.peer_tls else {
        return Ok(None);
    };
    let (ca, cert, key) = t.for_server(me);
    let setup = tls::TlsSetup::load(&ca, &cert, &key).map_err(|e| format!("peer_tls: {e}"))?;
    if !setup.cert_names(me) {
        return Err(format!(
            "peer_tls: {} does not name server {me} (wrong server's certificate?)",
            cert.display()
        ));
    }
    Ok(Some(setup))
}

/// Without `peer_tls`: this server's peer address and its neighbours' hosts that are not
/// on loopback (SPEC §6's warning), as `Name (host)`.
fn plain_exposure(herd: &config::Herd, me: &config::Server) -> Vec<String> {
    if herd.peer_tls.is_some() {
        return Vec::new();
    }
    std::iter::once(me)
        .chain(me.neighbours.iter().filter_map(|n| herd.server(n)))
        .filter(|s| !is_loopback_host(&s.host))
        .map(|s| format!("{} ({})", s.name, s.host))
        .collect()
}

/// A host counts as loopback if it is a loopback address or `localhost`. Other names are
/// not looked up: start-up must not wait on a resolver for a warning (SPEC §5), and a
/// name may point anywhere later.
fn is_loopback_host(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            h == "localhost" || h.ends_with(".localhost")
        }
    }
}

/// `--list`: the validated herd, one server per line, for scripts. The first five
/// columns are what run.sh reads; ADMIN and the neighbours were added after them.
fn list(path: &std::path::Path) -> Result<(), String> {
    let herd = config::load(path, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    for s in &herd.servers {
        println!("{}", list_line(&herd, s));
    }
    Ok(())
}

/// `herd status`: exit 0 if the whole herd is up, 1 if not, 2 for a bad config.
fn status(path: &std::path::Path) -> ExitCode {
    let herd = match config::load(path, |k| std::env::var(k).ok()) {
        Ok(h) => h,
        Err(e) => return fail(&e.to_string()),
    };
    let servers: Vec<(String, Option<SocketAddr>)> = herd
        .servers
        .iter()
        .map(|s| (s.name.clone(), admin_addr(s)))
        .collect();
    // SPEC §8: the whole table in under a second.
    let whole = status::run(
        &servers,
        Duration::from_millis(900),
        &mut std::io::stdout().lock(),
    );
    if whole {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}

/// Where `herd status` finds a server's admin endpoint; `None` if it has none (or its
/// `admin_host` does not resolve: the row then says it has no admin port).
fn admin_addr(server: &config::Server) -> Option<SocketAddr> {
    let port = server.admin_port?;
    resolve(&server.admin_host, port).ok()
}

/// NAME HOST PORT PEER_PORT LOG_FILE ADMIN NEIGHBOURS; `-` for no admin port or no
/// neighbours, so every line has seven fields.
fn list_line(herd: &config::Herd, s: &config::Server) -> String {
    let log = herd.log.dir.join(format!("{}.log", s.name));
    let admin = match s.admin_port {
        Some(port) if s.admin_host.contains(':') => format!("[{}]:{port}", s.admin_host),
        Some(port) => format!("{}:{port}", s.admin_host),
        None => "-".to_string(),
    };
    let neighbours = if s.neighbours.is_empty() {
        "-".to_string()
    } else {
        s.neighbours.join(",")
    };
    format!(
        "{} {} {} {} {} {admin} {neighbours}",
        s.name,
        s.host,
        s.port,
        s.peer_port,
        log.display()
    )
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("host `{host}` has no address"))
}

#[cfg(test)]
mod tests {
    use super::list_line;
    use std::path::Path;

    #[test]
    fn plain_peer_links_off_loopback_are_named_for_the_warning() {
        use super::plain_exposure;
        let base = "servers:\n  A: { port: 1, peer_port: 2, neighbours: [B, C] }\n  \
                    B: { host: 10.1.2.3, port: 4, peer_port: 5, neighbours: [A] }\n  \
                    C: { host: localhost, port: 7, peer_port: 8, neighbours: [A] }\n";
        let exposed = |text: &str, me: &str| {
            let herd =
                crate::config::parse(text, Path::new("/h"), |_| None).unwrap_or_else(|e| panic!("{e}"));
            let me = herd.server(me).unwrap_or_else(|| panic!("{me}"));
            plain_exposure(&herd, me)
        };
        assert_eq!(exposed(base, "A"), ["B (10.1.2.3)"]);
        assert_eq!(exposed(base, "B"), ["B (10.1.2.3)"], "its own peer port too");
        assert!(
            exposed(base, "C").is_empty(),
            "localhost and 127.0.0.1 are loopback"
        );
        let tls = format!("{base}peer_tls: {{ ca: ca.pem, cert: '{{name}}.pem', key: '{{name}}.key' }}\n");
        assert!(exposed(&tls, "A").is_empty(), "no warning under TLS");
    }

    #[test]
    fn list_lines_keep_five_columns_then_admin_and_neighbours() {
        let text = "servers:\n  A: { port: 1, peer_port: 2, admin_port: 3, neighbours: [B, C] }\n  \
                    B: { port: 4, peer_port: 5, admin_host: '::1', admin_port: 6, neighbours: [A] }\n  \
                    C: { port: 7, peer_port: 8, neighbours: [A] }\n  D: { port: 9, peer_port: 10 }\n";
        let herd = crate::config::parse(text, Path::new("/h"), |_| None).unwrap_or_else(|e| panic!("{e}"));
        let lines: Vec<String> = herd.servers.iter().map(|s| list_line(&herd, s)).collect();
        assert_eq!(
            lines,
            [
                "A 127.0.0.1 1 2 /h/logs/A.log 127.0.0.1:3 B,C",
                "B 127.0.0.1 4 5 /h/logs/B.log [::1]:6 A",
                "C 127.0.0.1 7 8 /h/logs/C.log - A",
                "D 127.0.0.1 9 10 /h/logs/D.log - -",
            ]
        );
    }
}
