//! `herd [--config PATH] NAME`: runs one server of the herd described by the config file.
//!
//! Start-up failures (bad arguments, bad config, unknown name, a port in use) print one
//! line on stderr and exit with status 2 before anything is left listening.

mod certs;
mod cli;
mod config;
mod legacy_json;
mod lines;
mod log_file;
mod logging;
mod peers;
mod places;
mod protocol;
mod reactor;
mod slab;
mod table;
mod timer;
// The TLS building blocks for peer links (SPEC §6), not yet wired into the reactor.
#[allow(dead_code)]
mod tls;

use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

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
    let mut neighbours = Vec::new();
    for n in &me.neighbours {
        // Validation guarantees every neighbour is a configured server.
        if let Some(s) = herd.server(n) {
            neighbours.push((s.name.clone(), resolve(&s.host, s.peer_port)?));
        }
    }
    // An unset or empty variable means no key (SPEC §1); the key itself is never printed.
    let key = std::env::var(&herd.places.key_env).ok().filter(|k| !k.is_empty());
    let has_key = key.is_some();
    let settings = reactor::Settings {
        name: me.name.clone(),
        max_line: herd.max_line,
        client_addr,
        peer_addr,
        neighbours,
    };
    let reactor = reactor::Reactor::bind(settings, &herd.places, key).map_err(|e| e.to_string())?;
    let log_path = logging::init(&herd.log.dir, &me.name, herd.log.level)?;
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
    logging::flush();
    let result = reactor.run();
    if let Err(e) = &result {
        log::error!("reactor failed: {e}");
    }
    // Whatever was logged since the reactor's last write: Places calls that ended during
    // the shutdown grace, or the records before a failure.
    logging::flush();
    result.map_err(|e| format!("reactor failed: {e}"))
}

/// `--list`: the validated herd, one server per line, for scripts.
fn list(path: &std::path::Path) -> Result<(), String> {
    let herd = config::load(path, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    for s in &herd.servers {
        let log = herd.log.dir.join(format!("{}.log", s.name));
        println!(
            "{} {} {} {} {}",
            s.name,
            s.host,
            s.port,
            s.peer_port,
            log.display()
        );
    }
    Ok(())
}

fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    (host, port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve host `{host}`: {e}"))?
        .next()
        .ok_or_else(|| format!("host `{host}` has no address"))
}
