//! loadgen: the load generator of herd (issue 5), and of a reference server such as Redis
//! for comparison with the very same tool.
//!
//! main wires the parts: it parses the arguments, resolves the (loopback-only) targets,
//! opens any idle connections, splits connections and clients over the loop threads, starts
//! them together, prints a progress line per second on stderr and the report (text, or one
//! JSON object) on stdout. Exit status: 0 when the run happened (its errors are in the
//! report), 1 when it could not run, 2 for bad arguments or targets.

mod args;
mod buf;
mod driver;
mod idle;
mod pacing;
mod propagation;
mod stats;
mod svg;
mod sys;
mod target;
mod warnings;
mod workload;

use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use args::{Args, Command, Workload};
use driver::{Go, Msg, Partition, Plan};
use stats::{Errors, IdleReport, LoadReport, PropReport};
use target::Target;

/// Why a run did not happen.
enum Failure {
    /// Bad arguments or targets: exit 2.
    Usage(String),
    /// Could not run (connect, set-up, limits): exit 1.
    Run(String),
}

fn main() -> ExitCode {
    let a = match args::parse(std::env::args_os().skip(1)) {
        Ok(Command::Run(a)) => a,
        Ok(Command::Help) => {
            print!("{}", args::HELP);
            return ExitCode::SUCCESS;
        }
        Ok(Command::Version) => {
            println!("loadgen {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("loadgen: error: {e} (see loadgen --help)");
            return ExitCode::from(2);
        }
    };
    match run(&a) {
        Ok(report) => {
            // A reader that went away (`loadgen | head`) is not worth a panic.
            use std::io::Write;
            match write!(std::io::stdout().lock(), "{report}") {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("loadgen: cannot write the report: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Err(Failure::Usage(m)) => {
            eprintln!("loadgen: error: {m}");
            ExitCode::from(2)
        }
        Err(Failure::Run(m)) => {
            eprintln!("loadgen: error: {m}");
            ExitCode::from(1)
        }
    }
}

fn run(a: &Args) -> Result<String, Failure> {
    let usage = |e: target::TargetError| Failure::Usage(e.0);
    if a.workload == Workload::Propagation {
        let cfg = a.config.as_deref();
        let from = target::resolve_one(a.from.as_deref().unwrap_or_default(), cfg).map_err(usage)?;
        let to = target::resolve_one(a.to.as_deref().unwrap_or_default(), cfg).map_err(usage)?;
        let mut idle = open_idle(a, &[from.clone(), to.clone()], 4)?;
        return run_propagation(a, from, to, idle.as_mut());
    }
    let targets = match &a.config {
        Some(path) => target::from_config(path, &a.servers),
        None => target::from_addrs(&a.addrs),
    }
    .map_err(usage)?;
    let mut idle = open_idle(a, &targets, a.connections + 4 * a.threads)?;
    run_load(a, &targets, idle.as_mut())
}

/// Raises the open-files limit for what the run holds, then opens the idle connections.
fn open_idle(a: &Args, targets: &[Target], busy_fds: usize) -> Result<Option<idle::Idle>, Failure> {
    sys::ensure_nofile((a.idle + busy_fds + 64) as u64).map_err(Failure::Run)?;
    if a.idle == 0 {
        return Ok(None);
    }
    idle::Idle::open(targets, a.idle, a.timeout, a.quiet)
        .map(Some)
        .map_err(Failure::Run)
}

fn idle_report(idle: Option<&mut idle::Idle>) -> Option<IdleReport> {
    idle.map(|i| IdleReport {
        opened: i.opened(),
        still_open: i.still_open(),
    })
}

fn params(a: &Args, targets: &[&Target]) -> Value {
    let secs = |d: Duration| d.as_secs_f64();
    let mut p = json!({
        "workload": a.workload.name(),
        "targets": targets.iter().map(|t| json!({"name": t.name, "addr": t.addr.to_string()})).collect::<Vec<_>>(),
        "timeout_s": secs(a.timeout),
        "idle": a.idle,
        "seed": a.seed,
        "crlf": a.crlf,
    });
    if a.workload == Workload::Propagation {
        p["trials"] = json!(a.trials);
        p["from"] = json!(targets[0].addr.to_string());
        p["to"] = json!(targets[1].addr.to_string());
        return p;
    }
    p["connections"] = json!(a.connections);
    p["pipeline"] = json!(a.pipeline);
    p["rate"] = json!(a.rate);
    p["threads"] = json!(a.threads);
    p["duration_s"] = json!(secs(a.duration));
    p["warmup_s"] = json!(secs(a.warmup));
    match a.workload {
        Workload::Raw => {
            p["line"] = json!(a.line);
            p["expect"] = json!(a.expect);
        }
        w => {
            p["clients"] = json!(a.clients);
            if w.needs_setup() {
                p["radius"] = json!(a.radius);
                p["bound"] = json!(a.bound);
            }
            if w == Workload::Mix {
                p["mix"] = json!(a.mix);
            }
        }
    }
    p
}

fn run_propagation(
    a: &Args,
    from: Target,
    to: Target,
    idle: Option<&mut idle::Idle>,
) -> Result<String, Failure> {
    let title = format!("propagation {from} -> {to}, {} trials", a.trials);
    let params = params(a, &[&from, &to]);
    let s = propagation::Settings {
        from,
        to,
        trials: a.trials,
        timeout: a.timeout,
        hard_stop: a.duration + driver::HARD_STOP_GRACE,
        crlf: a.crlf,
        seed: a.seed,
        quiet: a.quiet,
    };
    let o = propagation::run(&s).map_err(Failure::Run)?;
    write_svg(a, &title, &o.hist)?;
    let r = PropReport {
        params,
        title,
        trials: o.trials,
        hist: o.hist,
        errors: o.errors,
        polls: o.polls,
        aborted: o.aborted,
        idle: idle_report(idle),
    };
    Ok(if a.json {
        format!("{}\n", r.json())
    } else {
        r.text()
    })
}

/// Splits connections and clients over threads: connection g goes to server g mod T and
/// thread g mod N; each (thread, server) pair that has connections owns every P-th client
/// id (P = number of pairs), so no two threads ever send for the same client.
fn plans(a: &Args, targets: &[Target]) -> Result<Vec<Plan>, Failure> {
    let mut pairs: Vec<(usize, usize)> = Vec::new();
    let mut conns: Vec<Vec<(std::net::SocketAddr, usize)>> = vec![Vec::new(); a.threads];
    for g in 0..a.connections {
        let (t, s) = (g % a.threads, g % targets.len());
        let p = match pairs.iter().position(|&x| x == (t, s)) {
            Some(p) => p,
            None => {
                pairs.push((t, s));
                pairs.len() - 1
            }
        };
        conns[t].push((targets[s].addr, p));
    }
    let np = pairs.len() as u64;
    if a.workload != Workload::Raw && a.clients < np {
        return Err(Failure::Usage(format!(
            "--clients {} is fewer than the {np} (thread, server) pairs that share them",
            a.clients
        )));
    }
    let part = |p: u64| Partition {
        first: p,
        stride: np,
        count: (a.clients - p).div_ceil(np),
    };
    Ok(conns
        .into_iter()
        .enumerate()
        .map(|(t, cs)| {
            // Global pair numbers to this thread's partition list.
            let mut local: Vec<usize> = Vec::new();
            let cs = cs
                .into_iter()
                .map(|(addr, p)| {
                    let l = local.iter().position(|&x| x == p).unwrap_or_else(|| {
                        local.push(p);
                        local.len() - 1
                    });
                    (addr, l)
                })
                .collect();
            let partitions = local.iter().map(|&p| part(p as u64)).collect();
            Plan {
                thread: t,
                conns: cs,
                partitions,
            }
        })
        .collect())
}

fn title(a: &Args, targets: &[Target]) -> String {
    let loop_kind = match a.rate {
        Some(r) => format!(
            "open loop at {r} req/s, {} connections (up to {} in flight each)",
            a.connections, a.pipeline
        ),
        None => format!(
            "closed loop, {} connections x pipeline {}",
            a.connections, a.pipeline
        ),
    };
    let to: Vec<String> = targets.iter().map(|t| t.to_string()).collect();
    let what = match a.workload {
        Workload::Raw => format!("raw {:?}", a.line),
        Workload::Mix => format!("mix {:.0}% IAMAT", a.mix * 100.0),
        w => w.name().to_string(),
    };
    let threads = if a.threads == 1 {
        "1 thread".to_string()
    } else {
        format!("{} threads", a.threads)
    };
    format!("{what}, {loop_kind}, {threads} -> {}", to.join(", "))
}

fn run_load(a: &Args, targets: &[Target], idle: Option<&mut idle::Idle>) -> Result<String, Failure> {
    let plans = plans(a, targets)?;
    let settings = Arc::new(driver::Settings {
        workload: a.workload,
        pipeline: a.pipeline,
        rate: a.rate,
        threads: a.threads,
        warmup: a.warmup,
        duration: a.duration,
        timeout: a.timeout,
        radius: a.radius.clone(),
        bound: a.bound,
        mix: a.mix,
        line: a.line.clone().into_bytes(),
        expect: a.expect.clone().map(String::into_bytes),
        crlf: a.crlf,
        seed: a.seed,
    });
    let (tx, rx) = mpsc::channel();
    let mut handles = Vec::new();
    let mut gos = Vec::new();
    for plan in plans {
        let (go_tx, go_rx) = mpsc::channel();
        let (tx, s) = (tx.clone(), settings.clone());
        let h = thread::Builder::new()
            .name(format!("loadgen-{}", plan.thread))
            .spawn(move || driver::run(plan, s, tx, go_rx))
            .map_err(|e| Failure::Run(format!("cannot start a thread: {e}")))?;
        handles.push(h);
        gos.push(go_tx);
    }
    drop(tx);
    let n = handles.len();
    let stop = |gos: &[mpsc::Sender<Go>], handles: Vec<thread::JoinHandle<()>>| {
        for g in gos {
            let _ = g.send(Go::Abort);
        }
        for h in handles {
            let _ = h.join();
        }
    };

    // Set-up: every thread connects (and sends its WHATSAT IAMATs) before the clock starts.
    let mut ready = 0;
    let setup_started = Instant::now();
    while ready < n {
        match rx.recv() {
            Ok(Msg::Ready) => ready += 1,
            Ok(Msg::Failed(e)) => {
                stop(&gos, handles);
                return Err(Failure::Run(e));
            }
            Ok(_) => {}
            Err(_) => {
                stop(&gos, handles);
                return Err(Failure::Run("a client thread died during set-up".into()));
            }
        }
    }
    if !a.quiet && a.workload.needs_setup() {
        eprintln!(
            "loadgen: set-up: {} clients IAMAT'd in {:.2} s",
            a.clients,
            setup_started.elapsed().as_secs_f64()
        );
    }
    let start = Instant::now();
    for g in &gos {
        let _ = g.send(Go::Start(start));
    }

    // The run: progress per second, then each thread's final figures.
    let mut total = stats::histogram();
    let mut reported = vec![0u64; n];
    let mut seconds: BTreeMap<u64, (u64, Errors)> = BTreeMap::new();
    let mut printed = 0u64;
    let mut errors_so_far = Errors::default();
    let mut finals = Vec::new();
    let warmup_s = a.warmup.as_secs_f64();
    while finals.len() < n {
        let Ok(msg) = rx.recv() else { break };
        match msg {
            Msg::Tick(t) => {
                stats::merge(&mut total, &t.hist);
                let e = seconds.entry(t.second).or_default();
                e.0 += t.completed;
                e.1.add(&t.errors);
                reported[t.thread] = reported[t.thread].max(t.second);
            }
            Msg::Done(f) => {
                stats::merge(&mut total, &f.hist);
                reported[f.thread] = u64::MAX;
                finals.push(f);
            }
            Msg::Ready | Msg::Failed(_) => {}
        }
        let upto = reported.iter().copied().min().unwrap_or(0);
        while let Some((&s, _)) = seconds.first_key_value() {
            if s > upto {
                break;
            }
            let (_, (done, errs)) = seconds.pop_first().unwrap_or_default();
            errors_so_far.add(&errs);
            if !a.quiet && s > printed {
                printed = s;
                let line = if (s as f64) <= warmup_s {
                    format!("warm-up {done} req/s")
                } else {
                    format!(
                        "{done} req/s  p99 {} ms  errors {}",
                        stats::ms(stats::Summary::of(&total).p99),
                        errors_so_far.total()
                    )
                };
                eprintln!("loadgen: [{s:>3}s] {line}");
            }
        }
    }
    for h in handles {
        let _ = h.join();
    }
    if finals.len() < n {
        return Err(Failure::Run("a client thread died during the run".into()));
    }
    let mut errors = Errors::default();
    let mut warmup_errors = Errors::default();
    let mut lateness = stats::histogram();
    let (mut unsent, mut outstanding, mut aborted) = (0, 0, false);
    for f in &finals {
        errors.add(&f.errors);
        warmup_errors.add(&f.warmup_errors);
        stats::merge(&mut lateness, &f.lateness);
        unsent += f.unsent;
        outstanding += f.outstanding;
        aborted |= f.aborted;
    }
    let title = title(a, targets);
    write_svg(a, &title, &total)?;
    let warnings = warnings::warnings(&warnings::Run {
        workload: a.workload,
        mix: a.mix,
        ok: total.len(),
        errors: &errors,
        requests: requests_sent(a, total.len() + errors.total()),
        logging: match &a.config {
            Some(path) => std::fs::read_to_string(path)
                .map_or(warnings::Logging::Unknown, |y| warnings::Logging::of_config(&y)),
            None => warnings::Logging::Unknown,
        },
    });
    if a.json && !a.quiet {
        // The JSON goes to a file or a pipe: say it where a person looks too.
        for w in &warnings {
            eprintln!("loadgen: WARNING: {w}");
        }
    }
    let r = LoadReport {
        params: params(a, &targets.iter().collect::<Vec<_>>()),
        title,
        duration_s: a.duration.as_secs_f64(),
        hist: total,
        errors,
        warmup_errors,
        lateness: a.rate.map(|_| lateness),
        unsent,
        outstanding,
        aborted,
        idle: idle_report(idle),
        warnings,
    };
    Ok(if a.json {
        format!("{}\n", r.json())
    } else {
        r.text()
    })
}

/// All requests of a run from the `measured` ones (answered in the measured time): the
/// warm-up at the same pace, plus one set-up IAMAT per client for WHATSAT workloads.
fn requests_sent(a: &Args, measured: u64) -> u64 {
    let d = a.duration.as_secs_f64();
    let all = if d > 0.0 {
        measured as f64 * (d + a.warmup.as_secs_f64()) / d
    } else {
        measured as f64
    };
    let setup = if a.workload.needs_setup() { a.clients } else { 0 };
    all.round() as u64 + setup
}

/// `--svg FILE`: the run's latency by percentile.
fn write_svg(a: &Args, title: &str, hist: &stats::Hist) -> Result<(), Failure> {
    let Some(path) = &a.svg else { return Ok(()) };
    let svg = svg::latency_by_percentile(&format!("loadgen: {title}"), &stats::plot_points(hist));
    std::fs::write(path, svg).map_err(|e| Failure::Run(format!("cannot write {}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Args {
        match args::parse(s.split_whitespace().map(std::ffi::OsString::from)) {
            Ok(Command::Run(a)) => *a,
            _ => panic!("{s}"),
        }
    }

    fn targets(n: u16) -> Vec<Target> {
        (1..=n)
            .map(|p| Target {
                name: format!("S{p}"),
                addr: format!("127.0.0.1:{p}").parse().expect("addr"),
            })
            .collect()
    }

    #[test]
    fn connections_and_clients_are_split_without_overlap() {
        let a = args("--addr 127.0.0.1:1 --connections 10 --threads 2 --clients 100");
        let t = targets(3);
        let plans = plans(&a, &t).unwrap_or_else(|_| panic!("plans"));
        assert_eq!(plans.len(), 2);
        assert_eq!(plans.iter().map(|p| p.conns.len()).sum::<usize>(), 10);
        // Every server gets connections, round-robin.
        for s in &t {
            let n = plans
                .iter()
                .flat_map(|p| &p.conns)
                .filter(|c| c.0 == s.addr)
                .count();
            assert!(n >= 3, "{} has {n}", s.name);
        }
        // Every client id belongs to exactly one partition.
        let mut seen = vec![0; 100];
        for p in &plans {
            for part in &p.partitions {
                for j in 0..part.count {
                    seen[(part.first + j * part.stride) as usize] += 1;
                }
            }
        }
        assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    }

    #[test]
    fn too_few_clients_for_the_pairs() {
        let a = args("--addr 127.0.0.1:1 --connections 4 --threads 2 --clients 3");
        assert!(matches!(plans(&a, &targets(3)), Err(Failure::Usage(m)) if m.contains("--clients 3")));
    }
}
