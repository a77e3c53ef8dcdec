//! SPEC §7's limits against the real binary: client timeouts, far-future and expired
//! records, a full table, memory given back after a burst, and the signals an operator
//! may send. Each test acts as a client (and, where a neighbour is needed, as that
//! neighbour, on the peer port) the way `nc` would.

mod support;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use support::*;

/// POSIX time `offset_s` seconds from now, as client text.
fn time_from_now(offset_s: i64) -> String {
    time_from_now_ms(offset_s * 1000)
}

fn time_from_now_ms(offset_ms: i64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970");
    let ms = now.as_millis() as i64 + offset_ms;
    format!("{}.{:03}", ms / 1000, ms % 1000)
}

fn iamat(client: &str, time: &str) -> String {
    format!("IAMAT {client} +34.068930-118.445127 {time}")
}

/// Alpha with Beta as its one neighbour; only Alpha runs, the test plays Beta.
fn alpha_with_beta(extra: &str) -> Herd {
    let mut h = Herd::new(&[("Alpha", &["Beta"]), ("Beta", &["Alpha"])], extra);
    h.start("Alpha");
    h
}

/// Says HELLO on Alpha's peer port as Beta and sends `records` (AT lines).
fn as_beta(h: &Herd, records: &[String]) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", h.spec("Alpha").peer_port)).expect("peer connect");
    let mut text = String::from("HELLO Beta\n");
    for r in records {
        text += r;
        text.push('\n');
    }
    s.write_all(text.as_bytes()).expect("send records");
    s
}

fn record(client: &str, time: &str) -> String {
    format!("AT Beta +0.000000001 {client} +34.068930-118.445127 {time}")
}

/// `WHATSAT <client> 10 0`: the `? ...` line, or the AT line of a full answer (its JSON
/// read and dropped).
fn whatsat(c: &mut Client, client: &str) -> String {
    let first = c.ask(&format!("WHATSAT {client} 10 0"));
    if !first.starts_with("? ") {
        while c.line() != "\n" {}
    }
    first
}

fn invalid_whatsat(client: &str) -> String {
    format!("? WHATSAT {client} 10 0\n")
}

fn log_has(h: &Herd, what: &str) -> bool {
    eventually(DEADLINE, || h.log("Alpha").contains(what).then_some(())).is_some()
}

#[test]
fn a_client_that_sends_nothing_is_closed_after_idle_timeout() {
    let h = Herd::single("limits: { idle_timeout_s: 1 }\n");
    let start = Instant::now();
    let mut idle = h.client("Alpha");
    let mut busy = h.client("Alpha");
    // The busy client keeps talking past the timeout and stays.
    while start.elapsed() < Duration::from_millis(2500) {
        let msg = iamat("kiwi", &now_text());
        assert!(busy.ask(&msg).starts_with("AT Alpha "), "busy client answered");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(idle.closed_within(DEADLINE), "the idle client was closed");
    assert!(
        start.elapsed() >= Duration::from_secs(1),
        "not before the timeout"
    );
    assert!(busy.ask(&iamat("kiwi", &now_text())).starts_with("AT Alpha "));
    assert!(log_has(&h, "idle for 1 s (limits.idle_timeout_s)"));
}

#[test]
fn without_idle_timeout_a_silent_client_stays() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    assert!(c.silent_for(Duration::from_millis(1500)), "nothing, not even EOF");
    assert!(c.ask(&iamat("kiwi", &now_text())).starts_with("AT Alpha "));
}

#[test]
fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    let h = Herd::single("limits: { send_timeout_s: 1 }\n");
    let mut hog = Client::connect_small_rcvbuf(h.port("Alpha"));
    // Invalid lines echo back whole: 8 KB of replies each, far past the 256 KiB bound.
    let junk = format!("junk-{}\n", "y".repeat(8000)).repeat(1000);
    let mut writer = hog.stream.try_clone().expect("clone");
    // Blocks once the server stops reading; ends with an error once it closes.
    let feeder = std::thread::spawn(move || {
        let _ = writer.write_all(junk.as_bytes());
    });
    assert!(
        log_has(&h, "(limits.send_timeout_s)"),
        "closed for not reading:\n{}",
        h.log("Alpha")
    );
    // The replies that made it out, then the end.
    let mut buf = vec![0u8; 64 * 1024];
    let ended = eventually(DEADLINE, || match hog.read_some(&mut buf, DEADLINE) {
        Ok(0) => Some(()),
        Err(e) if e.kind() != ErrorKind::TimedOut && e.kind() != ErrorKind::WouldBlock => Some(()),
        _ => None,
    });
    assert!(ended.is_some(), "the connection was closed");
    let _ = feeder.join();
    let mut other = h.client("Alpha");
    assert!(other.ask(&iamat("kiwi", &now_text())).starts_with("AT Alpha "));
}

#[test]
fn an_iamat_further_ahead_than_max_future_is_invalid() {
    let h = alpha_with_beta("limits: { max_future_s: 3600 }\n");
    let mut c = h.client("Alpha");
    let far = iamat("far", &time_from_now(3700));
    assert_eq!(c.ask(&far), format!("? {far}\n"));
    let near = iamat("near", &time_from_now(3500));
    assert!(c.ask(&near).starts_with("AT Alpha -"), "an hour ahead is fine");
    let pinned = iamat("near", "999999999999.9");
    assert_eq!(c.ask(&pinned), format!("? {pinned}\n"), "cannot pin a client");
    assert_eq!(whatsat(&mut c, "far"), invalid_whatsat("far"));
    // From a neighbour: the far record is dropped and logged, the good one taken.
    let _beta = as_beta(
        &h,
        &[
            record("peerfar", &time_from_now(3700)),
            record("peernear", &now_text()),
        ],
    );
    assert!(log_has(&h, "further ahead than limits.max_future_s, dropped"));
    let got = eventually(DEADLINE, || {
        let r = whatsat(&mut c, "peernear");
        r.starts_with("AT Beta").then_some(r)
    });
    assert!(got.is_some(), "the good record was stored");
    assert_eq!(whatsat(&mut c, "peerfar"), invalid_whatsat("peerfar"));
}

#[test]
fn a_full_table_refuses_new_clients_and_says_so() {
    let h = alpha_with_beta("limits: { max_clients: 2 }\n");
    let mut c = h.client("Alpha");
    for client in ["a", "b"] {
        assert!(c.ask(&iamat(client, &now_text())).starts_with("AT Alpha "));
    }
    let third = iamat("c", &now_text());
    assert_eq!(c.ask(&third), format!("? {third}\n"));
    assert!(
        c.ask(&iamat("a", &now_text())).starts_with("AT Alpha "),
        "known clients update"
    );
    let _beta = as_beta(&h, &[record("d", &now_text()), record("b", &now_text())]);
    // The record for b (known) is taken, the one for d (new) is not.
    assert!(log_has(&h, "record from Beta (new): AT Beta +0.000000001 b "));
    assert_eq!(whatsat(&mut c, "d"), invalid_whatsat("d"));
    assert!(log_has(&h, "table full (2 clients, limits.max_clients)"));
    let reports = h.log("Alpha").matches("table full").count();
    assert!(reports <= 2, "{reports} reports in about a second");
}

#[test]
fn records_older_than_the_ttl_are_forgotten_refused_and_not_synced() {
    let h = alpha_with_beta("table: { ttl_s: 3 }\n");
    let mut c = h.client("Alpha");
    assert!(c.ask(&iamat("live", &now_text())).starts_with("AT Alpha "));
    let dying = iamat("dying", &time_from_now_ms(-2500));
    assert!(c.ask(&dying).starts_with("AT Alpha "));
    // A stale IAMAT is answered, but nothing is kept.
    assert!(c.ask(&iamat("old", &time_from_now(-10))).starts_with("AT Alpha "));
    assert_eq!(whatsat(&mut c, "old"), invalid_whatsat("old"));
    let gone = eventually(DEADLINE, || {
        (whatsat(&mut c, "dying") == invalid_whatsat("dying")).then_some(())
    });
    assert!(gone.is_some(), "an expired record is forgotten");
    // Alpha dials Beta (redialling every half second): play Beta and read the sync.
    let listener = TcpListener::bind(("127.0.0.1", h.spec("Beta").peer_port)).expect("bind Beta");
    let (s, _) = listener.accept().expect("Alpha dials Beta");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut sync = String::new();
    let mut r = BufReader::new(s);
    while let Ok(n) = r.read_line(&mut sync) {
        if n == 0 {
            break;
        }
    }
    assert!(sync.starts_with("HELLO Alpha\n"), "{sync}\n{}", h.log("Alpha"));
    assert!(sync.contains(" live "), "{sync}\n{}", h.log("Alpha"));
    assert!(!sync.contains(" dying ") && !sync.contains(" old "), "{sync}");
    // From a neighbour: a record that old is dropped.
    let _beta = as_beta(&h, &[record("peerold", &time_from_now(-10))]);
    assert!(log_has(&h, "(older than table.ttl_s, dropped)"));
    assert_eq!(whatsat(&mut c, "peerold"), invalid_whatsat("peerold"));
}

/// `n` clients that each send a WHATSAT (left waiting) and then 320 KB of invalid lines
/// without reading, until the server holds them all paused; returns them.
fn fill_buffers(h: &Herd, n: usize, baseline: u64) -> Vec<(Client, usize)> {
    let port = h.port("Alpha");
    let junk = format!("junk-{}\n", "y".repeat(8000)).repeat(40);
    // Each also adds a client to the table: records that outlive the burst, allocated
    // in between its buffers, as on a live server.
    let payloads: Vec<String> = (0..n)
        .map(|i| {
            format!(
                "{}\nWHATSAT kiwi 10 5\n{junk}",
                iamat(&format!("c{n}-{i}"), &now_text())
            )
        })
        .collect();
    let mut clients: Vec<(Client, usize)> = (0..n)
        .map(|_| {
            let c = Client::connect(port);
            c.stream.set_nonblocking(true).expect("nonblocking");
            (c, 0)
        })
        .collect();
    // Round-robin writes until every client has sent it all (the server reads each one
    // until it is paused; the rest waits in kernel buffers).
    let deadline = Instant::now() + DEADLINE;
    let total = payloads[0].len();
    while clients.iter().any(|(_, sent)| *sent < total) && Instant::now() < deadline {
        for ((c, sent), payload) in clients.iter_mut().zip(&payloads) {
            let mut stream = &c.stream;
            while *sent < payload.len() {
                match stream.write(&payload.as_bytes()[*sent..]) {
                    Ok(n) => *sent += n,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
    // Every client paused (the server's RSS holds still), with at least 128 KiB of
    // replies held for each.
    let mut last = 0;
    let grown = eventually(2 * DEADLINE, || {
        std::thread::sleep(Duration::from_millis(300));
        let rss = h.servers[0].rss_kib();
        let still = rss.abs_diff(std::mem::replace(&mut last, rss)) < 1024;
        (still && rss > baseline + 128 * n as u64).then_some(())
    });
    assert!(
        grown.is_some(),
        "RSS {} KiB from {baseline} KiB",
        h.servers[0].rss_kib()
    );
    clients
}

/// Closes them for good (a reset), not half-closed: a half-closed client is still owed
/// its replies once Places answers.
fn reset_all(clients: Vec<(Client, usize)>) {
    for (c, _) in clients {
        let _ = socket2::SockRef::from(&c.stream).set_linger(Some(Duration::ZERO));
    }
}

#[test]
fn memory_goes_back_to_the_os_after_a_thousand_clients_filled_their_buffers() {
    // A Places upstream that takes connections and never answers: every client's WHATSAT
    // waits, so the replies to what it sends next pile up at the server (not in a kernel
    // buffer) until its input is paused at the 256 KiB bound.
    let upstream = TcpListener::bind(("127.0.0.1", 0)).expect("bind upstream");
    let url = format!("http://{}", upstream.local_addr().expect("addr"));
    let mut h = Herd::new(
        &[("Alpha", &[])],
        &format!("log: {{ dir: logs, level: warn }}\nplaces: {{ url: '{url}', timeout_ms: 60000 }}\n"),
    );
    h.env.push(("GOOGLE_PLACES_API_KEY".into(), "dummy".into()));
    h.start("Alpha");
    let mut c = h.client("Alpha");
    assert!(c.ask(&iamat("kiwi", &now_text())).starts_with("AT Alpha "));
    let baseline = h.servers[0].rss_kib();
    // A smaller burst first: glibc raises its mmap threshold when a big mapped buffer
    // is freed, so the next burst's buffers land on the heap, where they stay unless the
    // server hands them back.
    reset_all(fill_buffers(&h, 200, baseline));
    let settled = eventually(DEADLINE, || {
        (h.servers[0].rss_kib() <= baseline + 32 * 1024).then_some(())
    });
    let clients = fill_buffers(&h, 1000, baseline);
    let peak = h.servers[0].rss_kib();
    reset_all(clients);
    let back = eventually(Duration::from_secs(3), || {
        (h.servers[0].rss_kib() <= baseline + 64 * 1024).then_some(())
    });
    assert!(
        back.is_some(),
        "RSS {} KiB 3 s after the clients closed (baseline {baseline} KiB, peak {peak} KiB, \
         after the first burst: {settled:?})",
        h.servers[0].rss_kib()
    );
    assert!(c.ask(&iamat("kiwi", &now_text())).starts_with("AT Alpha "));
    drop(upstream);
}

#[test]
fn sighup_reopens_the_log_after_it_was_moved_away() {
    let mut h = Herd::single("");
    let mut c = h.client("Alpha");
    assert!(c.ask(&iamat("before", &now_text())).starts_with("AT Alpha "));
    let path = h.log_path("Alpha");
    assert!(log_has(&h, "IAMAT before "));
    let moved = path.with_extension("log.moved");
    std::fs::rename(&path, &moved).expect("move the log away");
    h.server("Alpha").signal("HUP");
    assert!(c.ask(&iamat("after", &now_text())).starts_with("AT Alpha "));
    assert!(log_has(&h, "IAMAT after "), "new records in a new file");
    assert!(!h.log("Alpha").contains("IAMAT before "));
    let old = std::fs::read_to_string(&moved).unwrap_or_default();
    assert!(old.contains("IAMAT before ") && !old.contains("IAMAT after "));
}

#[test]
fn sigusr1_sigusr2_sigpipe_and_sigalrm_do_not_kill_the_server() {
    let mut h = Herd::single("");
    for sig in ["USR1", "USR2", "PIPE", "ALRM"] {
        h.server("Alpha").signal(sig);
        let mut c = h.client("Alpha");
        let msg = iamat(&format!("after-{sig}"), &now_text());
        assert!(c.ask(&msg).starts_with("AT Alpha "), "serving after SIG{sig}");
        let server = h.server("Alpha");
        assert!(
            matches!(server.child.try_wait(), Ok(None)),
            "alive after SIG{sig}"
        );
    }
    // SIGTERM still stops it, cleanly.
    h.server("Alpha").signal("TERM");
    let status = h.server("Alpha").wait_exit(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// EOF (or a reset) on `s` within DEADLINE: the server closed it.
fn closed_by_server(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn peer_connections_that_never_say_hello_are_bounded_and_time_out() {
    let h = alpha_with_beta("peers: { dead_after_ms: 1000 }\n");
    let peer_port = h.spec("Alpha").peer_port;
    // Before any of them is accepted, so every deadline is at least 4 s after this.
    let started = Instant::now();
    let mut silent: Vec<TcpStream> = (0..64)
        .map(|_| TcpStream::connect(("127.0.0.1", peer_port)).expect("peer connect"))
        .collect();
    let accepted = eventually(DEADLINE, || {
        (h.log("Alpha").matches("connected to the peer port").count() >= 64).then_some(())
    });
    assert!(accepted.is_some(), "the server accepted the 64");
    // A 65th makes the oldest go at once, while the others are still open.
    let mut extra = TcpStream::connect(("127.0.0.1", peer_port)).expect("peer connect");
    assert!(closed_by_server(&mut silent[0]), "the oldest was not closed");
    let second = &mut silent[1];
    second.set_nonblocking(true).expect("nonblocking");
    let mut byte = [0u8; 1];
    assert!(
        matches!(second.read(&mut byte), Err(e) if e.kind() == ErrorKind::WouldBlock),
        "the second silent connection was closed as well"
    );
    second.set_nonblocking(false).expect("blocking");
    assert!(
        log_has(
            &h,
            "64 peer connections are waiting for their HELLO; closing the oldest"
        ),
        "the displacement is logged"
    );
    // The flood does not keep the neighbour out: its HELLO links up meanwhile.
    let beta = as_beta(&h, &[]);
    assert!(log_has(&h, "link from Beta"), "Beta's HELLO during the flood");
    let mut c = h.client("Alpha");
    assert!(c.ask("x").starts_with("? x"), "clients are still served");
    // Every silent one is closed at its deadline (twice dead_after or the 2 s connect
    // timeout, whichever is longer), and not before; Beta's link stays.
    for s in silent.iter_mut().skip(1).chain([&mut extra]) {
        assert!(closed_by_server(s), "a silent peer connection stayed open");
    }
    assert!(
        started.elapsed() >= Duration::from_secs(4),
        "closed before its deadline"
    );
    assert!(log_has(&h, "no HELLO within 4000 ms"), "the close says why");
    // (Beta's link itself goes once it is silent for dead_after, as SPEC §5 says; it
    // sends no heartbeats here. It must not have been the one displaced.)
    assert!(
        !h.log("Alpha").contains("link from Beta: dropped: displaced"),
        "Beta's link was displaced by the flood"
    );
    drop(beta);
}
