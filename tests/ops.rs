//! Operating the herd (SPEC §8) through the real binary: the admin endpoint's `/metrics`
//! (held to a strict text-format parser) and `/healthz`, `herd status`, and table
//! snapshots across restarts, kill -9 and damaged files.

#[path = "support/prom.rs"]
mod prom;
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;

use support::{BIN, DEADLINE, Herd, eventually, free_port, now_text};

/// A herd whose servers each have an admin port; `admin[i]` is `herd.specs[i]`'s.
struct Ops {
    herd: Herd,
    admin: Vec<u16>,
}

impl Ops {
    fn new(topology: &[(&str, &[&str])], extra: &str) -> Ops {
        let herd = Herd::new(topology, extra);
        let mut yaml = std::fs::read_to_string(&herd.config).expect("herd.yml");
        let mut admin = Vec::new();
        for s in &herd.specs {
            let port = free_port();
            let at = format!("peer_port: {}, ", s.peer_port);
            yaml = yaml.replacen(&at, &format!("{at}admin_port: {port}, "), 1);
            admin.push(port);
        }
        std::fs::write(&herd.config, yaml).expect("write herd.yml");
        Ops { herd, admin }
    }

    fn admin_port(&self, name: &str) -> u16 {
        let i = self.herd.specs.iter().position(|s| s.name == name);
        self.admin[i.expect("server in topology")]
    }

    /// GET `path` from `name`'s admin port: (status line, body).
    fn get(&self, name: &str, path: &str) -> (String, String) {
        http_get(self.admin_port(name), path)
    }

    /// `/metrics` of `name`, checked strictly.
    fn metrics(&self, name: &str) -> Vec<prom::Sample> {
        let (status, body) = self.get(name, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
        prom::parse_strict(&body).unwrap_or_else(|e| panic!("{name} /metrics: {e}\n{body}"))
    }

    /// Waits until `name`'s metric (with exactly these labels) has `want`.
    fn wait_metric(&self, name: &str, metric: &str, labels: &[(&str, &str)], want: f64) {
        let got = eventually(DEADLINE, || {
            (value(&self.metrics(name), metric, labels) == Some(want)).then_some(())
        });
        assert!(
            got.is_some(),
            "{name}: {metric}{labels:?} never became {want}; last: {:?}",
            value(&self.metrics(name), metric, labels)
        );
    }

    fn snap_path(&self, name: &str) -> PathBuf {
        self.herd.dir.path().join("state").join(format!("{name}.snap"))
    }
}

fn http_get(port: u16, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the admin port");
    s.set_read_timeout(Some(DEADLINE)).expect("timeout");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").expect("send");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read reply");
    let (head, body) = reply.split_once("\r\n\r\n").expect("head and body");
    let status = head.lines().next().unwrap_or("").to_string();
    (status, body.to_string())
}

fn value(samples: &[prom::Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && l.len() == labels.len()
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v))
        })
        .map(|s| s.2)
}

const PAIR: &[(&str, &[&str])] = &[("Alpha", &["Beta"]), ("Beta", &["Alpha"])];

fn iamat(client: &str) -> String {
    format!("IAMAT {client} +34.068930-118.445127 {}", now_text())
}

fn herd_status(config: &std::path::Path) -> (i32, String) {
    let out = Command::new(BIN)
        .arg("status")
        .arg("--config")
        .arg(config)
        .output()
        .expect("run herd status");
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn metrics_parse_strictly_and_counts_move() {
    let mut ops = Ops::new(PAIR, "");
    ops.herd.start_all();
    for (me, other) in [("Alpha", "Beta"), ("Beta", "Alpha")] {
        for dir in ["out", "in"] {
            ops.wait_metric(
                me,
                "herd_link_up",
                &[("neighbour", other), ("direction", dir)],
                1.0,
            );
        }
    }
    let before = ops.metrics("Alpha");
    assert_eq!(value(&before, "herd_up", &[]), Some(1.0));
    assert_eq!(
        value(&before, "herd_messages_total", &[("kind", "IAMAT")]),
        Some(0.0)
    );
    assert_eq!(value(&before, "herd_table_clients", &[]), Some(0.0));

    let mut c = ops.herd.client("Alpha");
    assert!(c.ask(&iamat("kiwi")).starts_with("AT Alpha "));
    assert!(c.ask("WHATSAT kiwi 10 0").starts_with("AT Alpha "));
    c.whatsat_reply_rest();
    assert!(c.ask("HELLO nonsense").starts_with("? "));
    let m = ops.metrics("Alpha");
    assert_eq!(value(&m, "herd_messages_total", &[("kind", "IAMAT")]), Some(1.0));
    assert_eq!(
        value(&m, "herd_messages_total", &[("kind", "WHATSAT")]),
        Some(1.0)
    );
    assert_eq!(
        value(&m, "herd_messages_total", &[("kind", "invalid")]),
        Some(1.0)
    );
    assert_eq!(value(&m, "herd_table_clients", &[]), Some(1.0));
    assert_eq!(value(&m, "herd_records_forwarded_total", &[]), Some(1.0));
    assert!(value(&m, "herd_connections_accepted_total", &[]) >= Some(1.0));
    assert!(value(&m, "herd_log_bytes_total", &[]) > Some(0.0));
    ops.wait_metric("Alpha", "herd_connections_open", &[], 1.0);
    // The record reached Beta as a new record from its neighbour.
    ops.wait_metric("Beta", "herd_records_total", &[("outcome", "new")], 1.0);
    ops.wait_metric("Beta", "herd_table_clients", &[], 1.0);

    // A stopped neighbour shows as down, and coming back as a reconnect.
    ops.herd.kill9("Beta");
    ops.wait_metric(
        "Alpha",
        "herd_link_up",
        &[("neighbour", "Beta"), ("direction", "out")],
        0.0,
    );
    ops.wait_metric(
        "Alpha",
        "herd_link_up",
        &[("neighbour", "Beta"), ("direction", "in")],
        0.0,
    );
    ops.herd.start("Beta");
    ops.wait_metric(
        "Alpha",
        "herd_link_up",
        &[("neighbour", "Beta"), ("direction", "out")],
        1.0,
    );
    ops.wait_metric(
        "Alpha",
        "herd_link_reconnects_total",
        &[("neighbour", "Beta")],
        1.0,
    );
    drop(c);
    ops.wait_metric("Alpha", "herd_connections_open", &[], 0.0);
}

trait WhatsatRest {
    fn whatsat_reply_rest(&mut self);
}

impl WhatsatRest for support::Client {
    /// The JSON after a WHATSAT's AT line, up to its blank line.
    fn whatsat_reply_rest(&mut self) {
        while self.line() != "\n" {}
    }
}

#[test]
fn promtool_accepts_a_live_scrape_if_installed() {
    let mut ops = Ops::new(PAIR, "");
    ops.herd.start("Alpha");
    let (_, body) = ops.get("Alpha", "/metrics");
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let Ok(mut child) = child else {
        eprintln!("promtool not installed: skipped (the strict parser covers it)");
        return;
    };
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(body.as_bytes()).expect("promtool stdin");
    }
    let out = child.wait_with_output().expect("promtool runs");
    let said = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}\n{body}"
    );
}

#[test]
fn healthz_names_each_link_and_other_paths_are_404() {
    let mut ops = Ops::new(PAIR, "");
    ops.herd.start("Alpha");
    let (status, body) = ops.get("Alpha", "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert_eq!(body, "ok\nBeta out down\nBeta in down\n");
    ops.herd.start("Beta");
    let up = eventually(DEADLINE, || {
        let (_, body) = ops.get("Alpha", "/healthz");
        (body == "ok\nBeta out up\nBeta in up\n").then_some(())
    });
    assert!(up.is_some(), "healthz never showed both directions up");
    assert_eq!(ops.get("Alpha", "/").0, "HTTP/1.1 404 Not Found");
    assert_eq!(ops.get("Alpha", "/metrics/x").0, "HTTP/1.1 404 Not Found");
}

#[test]
fn sigterm_with_an_admin_endpoint_exits_0_and_closes_it() {
    let mut ops = Ops::new(PAIR, "");
    ops.herd.start("Alpha");
    let port = ops.admin_port("Alpha");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_ok());
    ops.herd.server("Alpha").signal("TERM");
    let status = ops.herd.server("Alpha").wait_exit(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}

#[test]
fn an_admin_port_in_use_is_a_start_up_error() {
    let ops = Ops::new(PAIR, "");
    let _taken = std::net::TcpListener::bind(("127.0.0.1", ops.admin_port("Alpha"))).expect("bind");
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&ops.herd.config)
        .arg("Alpha")
        .output()
        .expect("run herd");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{}", ops.admin_port("Alpha"))),
        "{err}"
    );
}

#[test]
fn herd_status_is_0_for_a_whole_herd_and_1_with_a_server_down() {
    let mut ops = Ops::new(PAIR, "");
    ops.herd.start_all();
    let whole = eventually(DEADLINE, || {
        let (code, text) = herd_status(&ops.herd.config);
        (code == 0).then_some(text)
    });
    let text = whole.expect("herd status never said the whole herd is up");
    assert!(text.contains("Alpha") && text.contains("Beta"), "{text}");
    ops.herd.kill9("Beta");
    let (code, text) = herd_status(&ops.herd.config);
    assert_eq!(code, 1, "{text}");
}

/// SIGTERM every server, start them all again: every record is still there, because each
/// server wrote its table on the way down and read it back before linking up.
#[test]
fn a_whole_herd_restart_keeps_every_record() {
    let mut herd = Herd::default_five("");
    herd.start_all();
    let names = herd.names();
    let mut sent = Vec::new();
    for (i, name) in names.iter().cycle().take(25).enumerate() {
        let client = format!("client{i}");
        let reply = herd.client(name).ask(&iamat(&client));
        assert!(reply.starts_with("AT "), "{reply}");
        sent.push((client, reply));
    }
    let everywhere = |herd: &Herd| {
        names.iter().all(|name| {
            let mut c = herd.client(name);
            sent.iter().all(|(client, at)| {
                let reply = c.ask(&format!("WHATSAT {client} 10 0"));
                if reply.starts_with("? ") {
                    return false;
                }
                c.whatsat_reply_rest();
                reply == *at
            })
        })
    };
    assert!(
        eventually(DEADLINE, || everywhere(&herd).then_some(())).is_some(),
        "no full flood"
    );
    for name in &names {
        herd.server(name).signal("TERM");
    }
    for name in &names {
        let status = herd.server(name).wait_exit(DEADLINE);
        assert!(status.is_some_and(|s| s.success()), "{name}: {status:?}");
    }
    herd.servers.clear();
    for name in &names {
        assert!(
            herd.dir
                .path()
                .join("state")
                .join(format!("{name}.snap"))
                .exists()
        );
    }
    herd.start_all();
    // No server had anything in memory: what they serve came from their snapshots.
    assert!(everywhere(&herd), "a record was lost across the restart");
    for name in &names {
        let loaded = eventually(DEADLINE, || {
            herd.log(name)
                .contains("snapshot: loaded 25 of 25 records")
                .then_some(())
        });
        assert!(loaded.is_some(), "{name}: {}", herd.log(name));
    }
}

/// With `every_s: 1`, a kill -9 loses at most what came after the last periodic snapshot.
#[test]
fn kill_9_loses_at_most_one_period() {
    let mut ops = Ops::new(&[("Alpha", &[])], "state: { every_s: 1 }\n");
    ops.herd.start("Alpha");
    let mut c = ops.herd.client("Alpha");
    let early: Vec<String> = (0..10).map(|i| c.ask(&iamat(&format!("early{i}")))).collect();
    // The next periodic snapshot has them all.
    let written = eventually(DEADLINE, || {
        ops.herd
            .log("Alpha")
            .contains("snapshot: wrote 10 records")
            .then_some(())
    });
    assert!(
        written.is_some(),
        "no periodic snapshot: {}",
        ops.herd.log("Alpha")
    );
    c.ask(&iamat("late"));
    drop(c);
    ops.herd.kill9("Alpha");
    ops.herd.start("Alpha");
    let mut c = ops.herd.client("Alpha");
    for (i, at) in early.iter().enumerate() {
        assert_eq!(&c.ask(&format!("WHATSAT early{i} 10 0")), at);
        c.whatsat_reply_rest();
    }
    let m = ops.metrics("Alpha");
    assert!(value(&m, "herd_table_clients", &[]) >= Some(10.0));
}

/// A damaged snapshot is logged and ignored: the server starts empty and serves.
#[test]
fn damaged_snapshots_are_logged_and_ignored() {
    let mut ops = Ops::new(&[("Alpha", &[])], "");
    ops.herd.start("Alpha");
    let at = ops.herd.client("Alpha").ask(&iamat("kiwi"));
    ops.herd.server("Alpha").signal("TERM");
    assert!(ops.herd.server("Alpha").wait_exit(DEADLINE).is_some());
    ops.herd.servers.clear();
    let path = ops.snap_path("Alpha");
    let good = std::fs::read(&path).expect("a snapshot after SIGTERM");
    assert!(good.starts_with(b"HERDSNAP"));

    // The good file first: it is read back.
    ops.herd.start("Alpha");
    let mut c = ops.herd.client("Alpha");
    assert_eq!(c.ask("WHATSAT kiwi 10 0"), at);
    drop(c);
    ops.herd.kill9("Alpha");

    let mut corrupt = good.clone();
    let last = corrupt.len() - 5;
    corrupt[last] ^= 0x01;
    let mut wrong_version = good.clone();
    wrong_version[8] = 9;
    let cases: [(&str, Vec<u8>, &str); 4] = [
        ("corrupt", corrupt, "checksum mismatch"),
        ("truncated", good[..good.len() / 2].to_vec(), "truncated"),
        ("empty", Vec::new(), "truncated: 0 bytes"),
        ("wrong version", wrong_version, "format version 9"),
    ];
    for (what, bytes, says) in cases {
        std::fs::write(&path, &bytes).expect("write snapshot");
        let log_before = ops.herd.log("Alpha").len();
        ops.herd.start("Alpha");
        let mut c = ops.herd.client("Alpha");
        assert!(
            c.ask("WHATSAT kiwi 10 0").starts_with("? "),
            "{what}: a record came back"
        );
        assert!(
            c.ask(&iamat("pear")).starts_with("AT Alpha "),
            "{what}: not serving"
        );
        let logged = eventually(DEADLINE, || {
            let log = ops.herd.log("Alpha");
            let new = &log[log_before..];
            (new.contains("ignored, starting empty") && new.contains(says)).then_some(())
        });
        assert!(
            logged.is_some(),
            "{what}: {}",
            &ops.herd.log("Alpha")[log_before..]
        );
        drop(c);
        ops.herd.kill9("Alpha");
    }
}
