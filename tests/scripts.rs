//! `run.sh` and `stop.sh` as a user runs them (SPEC §1), on a temporary two-server herd
//! with free ports. `HERD_BIN` points the scripts at the binary under test, so no release
//! build happens here; every PID the scripts record is killed when the test ends.
//!
//! The servers outlive run.sh, and this test process adopts them (a child subreaper), so a
//! server that exits stays a zombie until the tests end: the scripts must see an exited
//! server as gone even when nobody has reaped it, as under an init that reaps late.

mod support;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use support::*;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

struct Scripts {
    herd: Herd,
    run_dir: PathBuf,
}

impl Scripts {
    fn new() -> Scripts {
        adopt_orphans();
        let herd = Herd::new(&[("Alpha", &["Beta"]), ("Beta", &["Alpha"])], "");
        let run_dir = herd.dir.path().join("run");
        Scripts { herd, run_dir }
    }

    fn script(&self, name: &str, args: &[&str]) -> Output {
        Command::new(Path::new(ROOT).join(name))
            .args(args)
            .env("HERD_CONFIG", &self.herd.config)
            .env("HERD_RUN_DIR", &self.run_dir)
            .env("HERD_BIN", BIN)
            .env_remove("GOOGLE_PLACES_API_KEY")
            .output()
            .expect("run the script")
    }

    fn pid(&self, name: &str) -> Option<u32> {
        std::fs::read_to_string(self.run_dir.join(format!("{name}.pid")))
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    fn accepting(&self, name: &str) -> bool {
        std::net::TcpStream::connect(("127.0.0.1", self.herd.port(name))).is_ok()
    }
}

impl Drop for Scripts {
    fn drop(&mut self) {
        for name in ["Alpha", "Beta"] {
            if let Some(pid) = self.pid(name) {
                kill9(pid);
            }
        }
    }
}

/// Makes this process the reaper of orphans started under it (see the module doc).
fn adopt_orphans() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: PR_SET_CHILD_SUBREAPER takes an integer flag and no pointers; it only
        // changes which process inherits orphaned descendants.
        let r = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) };
        assert_eq!(r, 0, "prctl(PR_SET_CHILD_SUBREAPER)");
    });
}

fn kill9(pid: u32) {
    let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).status();
}

/// Running: a zombie has exited.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn run_starts_every_server_records_pids_and_says_where_they_listen() {
    let s = Scripts::new();
    let out = s.script("run.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    for name in ["Alpha", "Beta"] {
        assert!(
            said.contains(name) && said.contains(&s.herd.port(name).to_string()),
            "{said}"
        );
        assert!(said.contains(&format!("{name}.log")), "log path printed: {said}");
        let pid = s.pid(name).expect("PID file");
        assert!(alive(pid));
        assert!(s.accepting(name), "{name} accepts when run.sh returns");
    }
    // The two are a herd: an update at Alpha reaches Beta.
    let mut a = s.herd.client("Alpha");
    a.ask("IAMAT viaScripts +1+1 5");
    let mut b = s.herd.client("Beta");
    let seen = eventually(DEADLINE, || {
        let r = b.ask("WHATSAT viaScripts 1 0");
        if !r.starts_with("AT ") {
            return None;
        }
        // The JSON that follows, up to its blank line.
        while b.line() != "\n" {}
        Some(())
    });
    assert!(seen.is_some(), "record flooded from Alpha to Beta");
}

#[test]
fn run_refuses_a_running_server_and_unknown_names() {
    let s = Scripts::new();
    assert!(s.script("run.sh", &["Alpha"]).status.success());
    let first = s.pid("Alpha").expect("pid");
    let again = s.script("run.sh", &["Alpha"]);
    assert!(!again.status.success());
    assert!(text(&again).contains("already running"), "{}", text(&again));
    assert_eq!(
        s.pid("Alpha"),
        Some(first),
        "the running server's PID file is kept"
    );
    let unknown = s.script("run.sh", &["Zulu"]);
    assert!(!unknown.status.success());
    assert!(
        text(&unknown).contains("no server named 'Zulu'"),
        "{}",
        text(&unknown)
    );
    assert!(!s.accepting("Beta"), "only the named server was started");
}

#[test]
fn stop_stops_only_what_it_recorded_and_cleans_stale_pid_files() {
    let s = Scripts::new();
    assert!(s.script("run.sh", &[]).status.success());
    let (alpha, beta) = (s.pid("Alpha").expect("pid"), s.pid("Beta").expect("pid"));
    let out = s.script("stop.sh", &["Alpha"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(eventually(Duration::from_secs(5), || (!alive(alpha)).then_some(())).is_some());
    assert!(s.pid("Alpha").is_none(), "PID file removed");
    assert!(alive(beta), "Beta untouched");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", s.herd.port("Alpha"))).is_ok(),
        "Alpha's port is free"
    );

    // A PID file whose process is gone (here: a finished `true`) is stale: removed, and
    // that process id is not signalled.
    let mut t = Command::new("true").spawn().expect("spawn");
    let dead = t.id();
    t.wait().expect("wait");
    std::fs::write(s.run_dir.join("Ghost.pid"), dead.to_string()).expect("write");
    let out = s.script("stop.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Ghost: not running"), "{}", text(&out));
    assert!(eventually(Duration::from_secs(5), || (!alive(beta)).then_some(())).is_some());
    let left: Vec<_> = std::fs::read_dir(&s.run_dir)
        .expect("run dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.path().extension().is_some_and(|x| x == "pid"))
        .collect();
    assert!(left.is_empty(), "no PID files left: {left:?}");
    let nothing = s.script("stop.sh", &[]);
    assert!(nothing.status.success());
    assert!(text(&nothing).contains("nothing to stop"));
}

#[test]
fn run_reports_a_bad_config_in_one_line() {
    let s = Scripts::new();
    std::fs::write(
        &s.herd.config,
        "servers:\n  A: { port: 1, peer_port: 2, neighbours: [B] }\n",
    )
    .expect("write");
    let out = s.script("run.sh", &[]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.contains("unknown neighbour `B`"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn run_starts_the_others_when_a_port_is_taken_and_names_the_failure() {
    let s = Scripts::new();
    // Another program holds Alpha's client port and accepts connections on it: only who
    // owns the listening socket tells it from Alpha.
    let squatter = TcpListener::bind(("127.0.0.1", s.herd.port("Alpha"))).expect("bind");
    let out = s.script("run.sh", &[]);
    assert!(!out.status.success(), "{}", text(&out));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("did not start Alpha") && err.contains("Address already in use"),
        "the failure is named with the server's own error: {err}"
    );
    assert!(
        s.pid("Alpha").is_none(),
        "no PID file for a server that is not running"
    );
    let beta = s.pid("Beta").expect("Beta is started all the same");
    assert!(alive(beta));
    assert!(s.accepting("Beta"));
    assert!(s.run_dir.join("Alpha.stderr").exists(), "the error is kept");
    drop(squatter);

    let out = s.script("stop.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let left: Vec<_> = std::fs::read_dir(&s.run_dir)
        .expect("run dir")
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    assert!(left.is_empty(), "stale PID and stderr files removed: {left:?}");
}

#[test]
fn run_after_a_crash_starts_only_the_missing_server() {
    let s = Scripts::new();
    let out = s.script("run.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let (alpha, beta) = (s.pid("Alpha").expect("pid"), s.pid("Beta").expect("pid"));
    kill9(alpha);
    assert!(eventually(Duration::from_secs(5), || (!alive(alpha)).then_some(())).is_some());

    let out = s.script("run.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("already running: Beta"), "{}", text(&out));
    assert_eq!(s.pid("Beta"), Some(beta), "Beta left alone");
    let again = s.pid("Alpha").expect("Alpha started again");
    assert_ne!(again, alpha);
    assert!(alive(again));
    assert!(s.accepting("Alpha"));
}

#[test]
fn stop_returns_as_soon_as_the_servers_are_gone() {
    let s = Scripts::new();
    let out = s.script("run.sh", &[]);
    assert!(out.status.success(), "{}", text(&out));
    let pids = [s.pid("Alpha").expect("pid"), s.pid("Beta").expect("pid")];
    let began = Instant::now();
    let out = s.script("stop.sh", &[]);
    let took = began.elapsed();
    assert!(out.status.success(), "{}", text(&out));
    // The servers exit within a second of SIGTERM (and stay unreaped zombies here): the
    // script must notice, not wait out its 5 s grace and reach for SIGKILL.
    assert!(!text(&out).contains("SIGKILL"), "{}", text(&out));
    assert!(took < Duration::from_secs(5), "stop.sh took {took:?}");
    for pid in pids {
        assert!(!alive(pid));
    }
    assert!(text(&out).contains("Alpha: stopped") && text(&out).contains("Beta: stopped"));
}

#[test]
fn help_explains_and_starts_nothing() {
    let s = Scripts::new();
    for script in ["run.sh", "stop.sh"] {
        for flag in ["--help", "-h"] {
            let out = s.script(script, &[flag]);
            assert!(out.status.success(), "{script} {flag}: {}", text(&out));
            let said = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                said.starts_with(&format!("Usage: ./{script} [NAME...]")),
                "{said}"
            );
        }
    }
    let odd = s.script("run.sh", &["--verbose"]);
    assert_eq!(odd.status.code(), Some(2));
    assert!(
        text(&odd).contains("unknown option '--verbose'"),
        "{}",
        text(&odd)
    );
    assert!(!s.accepting("Alpha") && !s.accepting("Beta"));
    assert!(s.pid("Alpha").is_none() && s.pid("Beta").is_none());
}

#[test]
fn unknown_names_are_all_named_and_nothing_is_done() {
    let s = Scripts::new();
    let out = s.script("run.sh", &["Zulu", "Alpha", "Yankee"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        err.contains("no server named 'Zulu' 'Yankee'") && err.contains("it has: Alpha Beta"),
        "{err}"
    );
    assert!(!s.accepting("Alpha"), "nothing started");

    assert!(s.script("run.sh", &["Alpha"]).status.success());
    let out = s.script("stop.sh", &["Nobody", "Alpha"]);
    assert!(!out.status.success());
    assert!(text(&out).contains("no server named 'Nobody'"), "{}", text(&out));
    let alpha = s.pid("Alpha").expect("Alpha left running");
    assert!(alive(alpha));
    // A configured server that is not running is no error.
    let out = s.script("stop.sh", &["Beta"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("Beta: not running"), "{}", text(&out));
}
