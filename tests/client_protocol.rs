//! SPEC §1 and §2 against the real binary: one server, clients over loopback TCP.

mod support;

use std::io::Write;
use std::process::Command;
use std::time::{Duration, Instant};

use support::*;

/// Splits an AT reply into its six fields.
fn at_fields(line: &str) -> Vec<String> {
    assert!(line.ends_with('\n'), "reply ends in newline: {line:?}");
    line.split(' ')
        .map(|s| s.trim_end_matches('\n').to_string())
        .collect()
}

/// Parses a diff like "+12.345678901" into signed nanoseconds, checking its exact shape.
fn diff_nanos(diff: &str) -> i128 {
    let sign = match &diff[..1] {
        "+" => 1,
        "-" => -1,
        other => panic!("diff has no sign: {other:?} in {diff}"),
    };
    let (int, frac) = diff[1..]
        .split_once('.')
        .unwrap_or_else(|| panic!("no point in {diff}"));
    assert_eq!(frac.len(), 9, "exactly 9 fraction digits: {diff}");
    assert!(
        int.chars().all(|c| c.is_ascii_digit()) && !int.is_empty(),
        "{diff}"
    );
    assert!(frac.chars().all(|c| c.is_ascii_digit()), "{diff}");
    let int: i128 = int.parse().expect("int");
    let frac: i128 = frac.parse().expect("frac");
    sign * (int * 1_000_000_000 + frac)
}

fn now_nanos() -> i128 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock");
    d.as_nanos() as i128
}

#[test]
fn iamat_reply_copies_fields_and_gives_a_signed_nine_digit_diff() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let t = now_text();
    let reply = c.ask(&format!("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 {t}"));
    let f = at_fields(&reply);
    assert_eq!(f.len(), 6, "{reply}");
    assert_eq!(f[0], "AT");
    assert_eq!(f[1], "Alpha");
    assert_eq!(f[3], "kiwi.cs.ucla.edu");
    assert_eq!(f[4], "+34.068930-118.445127");
    assert_eq!(f[5], t);
    let d = diff_nanos(&f[2]);
    assert!(
        (0..5_000_000_000).contains(&d),
        "diff {d} ns for a time taken just before"
    );
}

#[test]
fn diff_for_the_spec_2021_timestamp_past_and_future() {
    // max_future off: the far-future line below checks the diff's format.
    let h = Herd::single("limits: { max_future_s: 0 }\n");
    let mut c = h.client("Alpha");
    let client_ns: i128 = 1_621_464_827_959_498_503;
    let before = now_nanos();
    let reply = c.ask("IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503");
    let after = now_nanos();
    let f = at_fields(&reply);
    let d = diff_nanos(&f[2]);
    assert!(f[2].starts_with('+'));
    assert!(
        d >= before - client_ns && d <= after - client_ns,
        "diff {} out of [{}, {}]",
        f[2],
        before - client_ns,
        after - client_ns
    );
    assert_eq!(f[5], "1621464827.959498503", "time is copied byte for byte");

    // A client clock 1000 s ahead: negative diff.
    let future_ns = now_nanos() + 1_000_000_000_000;
    let future = format!("{}.{:09}", future_ns / 1_000_000_000, future_ns % 1_000_000_000);
    let f = at_fields(&c.ask(&format!("IAMAT ahead +0+0 {future}")));
    assert!(f[2].starts_with('-'), "{}", f[2]);
    let d = diff_nanos(&f[2]);
    assert!((-1_000_000_000_000..-990_000_000_000).contains(&d), "{d}");

    // Integer time, 12 digits, far future: still exact, no exponent.
    let f = at_fields(&c.ask("IAMAT far -90+180 999999999999"));
    let expect = now_nanos() - 999_999_999_999_000_000_000;
    let d = diff_nanos(&f[2]);
    assert!((d - expect).abs() < 10_000_000_000, "{} vs {expect}", f[2]);
    assert!(!f[2].contains('e') && !f[2].contains('E'));
    assert_eq!(f[4], "-90+180");
}

#[test]
fn invalid_messages_are_echoed_with_a_question_mark() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let t = now_text();
    let bad = [
        "HELLO".to_string(),
        "iamat kiwi +1+1 5".into(),
        "Whatsat kiwi 10 5".into(),
        "IAMAT kiwi +1+1".into(),
        "IAMAT kiwi +1+1 5 extra".into(),
        format!("IAMAT kiwi 34.068930-118.445127 {t}"),
        format!("IAMAT kiwi +91-118 {t}"),
        format!("IAMAT kiwi +34-180.0001 {t}"),
        "IAMAT kiwi +34-118 1e9".into(),
        "IAMAT kiwi +34-118 inf".into(),
        "IAMAT kiwi +34-118 nan".into(),
        "IAMAT kiwi +34-118 1234567890123".into(),
        "IAMAT kiwi +34-118 -5".into(),
        "AT Alpha +0.000000001 kiwi +1+1 5".into(),
        "HELLO Alpha".into(),
        "WHATSAT nobody 10 5".into(),
        "  leading and trailing blanks kept  ".into(),
        "WHATSAT".into(),
    ];
    for msg in &bad {
        assert_eq!(c.ask(msg), format!("? {msg}\n"), "for {msg:?}");
    }
}

#[test]
fn whatsat_field_ranges() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    c.ask(&format!("IAMAT kiwi +34.068930-118.445127 {}", now_text()));
    for msg in [
        "WHATSAT kiwi 0 5",
        "WHATSAT kiwi 50.01 5",
        "WHATSAT kiwi 51 5",
        "WHATSAT kiwi -1 5",
        "WHATSAT kiwi 10 21",
        "WHATSAT kiwi 10 -1",
        "WHATSAT kiwi 10 1.5",
        "WHATSAT kiwi 1e1 5",
        "WHATSAT kiwi 10",
        "WHATSAT kiwi 10 5 6",
    ] {
        assert_eq!(c.ask(msg), format!("? {msg}\n"), "for {msg:?}");
    }
}

#[test]
fn crlf_tabs_vt_ff_separate_fields_and_blank_lines_are_ignored() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let t = now_text();
    c.send(format!("\n   \n\t\r\nIAMAT\tkiwi \x0b +1+2\x0c {t} \r\n"));
    let f = at_fields(&c.line());
    assert_eq!(
        (f[1].as_str(), f[3].as_str(), f[4].as_str()),
        ("Alpha", "kiwi", "+1+2")
    );
    assert_eq!(f[5], t);
    // The blank lines produced no reply: the next reply is for the next message.
    assert_eq!(c.ask("nope"), "? nope\n");
}

#[test]
fn non_utf8_bytes_are_echoed_as_received() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    c.send(b"\xff\xfe bad \xc3\x28\r\n");
    assert_eq!(c.raw_line(), b"? \xff\xfe bad \xc3\x28\n");
    // A non-UTF-8 client name is a valid name.
    let t = now_text();
    c.send(format!("IAMAT \u{e9}t\u{e9} +1+2 {t}\n"));
    let line = c.line();
    assert!(line.contains(" \u{e9}t\u{e9} +1+2 "), "{line}");
}

#[test]
fn whatsat_without_key_answers_request_denied_after_the_stored_at_line() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let at = c.ask(&format!("IAMAT kiwi +34.068930-118.445127 {}", now_text()));
    c.send("WHATSAT kiwi 10 5\n");
    let (got_at, json) = c.whatsat_reply();
    assert_eq!(got_at, at, "the stored AT line, not recomputed");
    assert!(json.starts_with("{\n   \"html_attributions\" : [],\n"), "{json}");
    assert!(json.contains("\"status\" : \"REQUEST_DENIED\""), "{json}");
    assert!(
        json.contains("GOOGLE_PLACES_API_KEY"),
        "names the variable: {json}"
    );
    assert!(json.ends_with("}\n"), "{json:?}");
    // Bound 0 needs no upstream call: OK with no results.
    c.send("WHATSAT kiwi 10 0\n");
    let (_, json) = c.whatsat_reply();
    assert!(json.contains("\"results\" : []"), "{json}");
    assert!(json.contains("\"status\" : \"OK\""), "{json}");
}

#[test]
fn pipelined_thousand_iamats_are_answered_in_order() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let mut batch = String::new();
    for i in 0..1000 {
        batch += &format!("IAMAT client{i} +1+2 {}.5\n", 1_700_000_000 + i);
    }
    c.send(batch);
    for i in 0..1000 {
        let f = at_fields(&c.line());
        assert_eq!(f[3], format!("client{i}"));
        assert_eq!(f[5], format!("{}.5", 1_700_000_000 + i));
    }
}

#[test]
fn mixed_pipeline_keeps_order_across_valid_invalid_and_whatsat() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    c.send("IAMAT a +1+2 100\nbogus\nWHATSAT a 5 3\nIAMAT b +1+2 101\n");
    assert!(c.line().starts_with("AT Alpha "));
    assert_eq!(c.line(), "? bogus\n");
    let (at, json) = c.whatsat_reply();
    assert!(at.ends_with(" a +1+2 100\n"), "{at}");
    assert!(json.contains("REQUEST_DENIED"));
    assert!(c.line().ends_with(" b +1+2 101\n"));
}

#[test]
fn two_hundred_concurrent_connections_each_get_their_own_answers() {
    let h = Herd::single("");
    let mut clients: Vec<Client> = (0..200).map(|_| h.client("Alpha")).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.send(format!(
            "IAMAT c{i} +1+2 {}\nWHATSAT c{i} 1 0\n",
            1_600_000_000 + i
        ));
    }
    for (i, c) in clients.iter_mut().enumerate() {
        let f = at_fields(&c.line());
        assert_eq!(f[3], format!("c{i}"));
        let (at, json) = c.whatsat_reply();
        assert!(at.contains(&format!(" c{i} ")));
        assert!(json.contains("\"status\" : \"OK\""));
    }
}

#[test]
fn stale_iamat_is_answered_but_does_not_replace_the_record() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let new = c.ask("IAMAT kiwi +10+20 1700000000");
    let old = c.ask("IAMAT kiwi +30+40 1000000000");
    assert!(
        old.ends_with(" kiwi +30+40 1000000000\n"),
        "stale IAMAT still answered: {old}"
    );
    c.send("WHATSAT kiwi 1 0\n");
    let (at, _) = c.whatsat_reply();
    assert_eq!(at, new);
}

#[test]
fn half_close_final_line_without_newline_is_answered_then_closed() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    c.send("IAMAT one +1+2 5\nIAMAT two +1+2 6");
    c.shutdown_write();
    assert!(c.line().contains(" one "));
    let last = c.line();
    assert!(last.ends_with(" two +1+2 6\n"), "{last:?}");
    assert!(c.closed_within(DEADLINE), "server closes after the last reply");
}

#[test]
fn half_close_with_invalid_final_line_and_empty_input() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    c.send("junk  ");
    c.shutdown_write();
    assert_eq!(c.line(), "? junk  \n");
    assert!(c.closed_within(DEADLINE));
    let mut c = h.client("Alpha");
    c.shutdown_write();
    assert!(c.closed_within(DEADLINE), "nothing sent: closed without a reply");
}

#[test]
fn server_sends_nothing_unprompted() {
    let mut h = Herd::single("");
    let mut c = h.client("Alpha");
    if let Some(heard) = c.heard_within(Duration::from_millis(300)) {
        let state = h.server("Alpha").state();
        panic!(
            "no banner, no prompt; heard {heard}; server {state}; log:\n{}",
            h.log("Alpha")
        );
    }
}

#[test]
fn overlong_line_without_newline_is_answered_bounded_and_connection_stays_usable() {
    let h = Herd::single("");
    let mut other = h.client("Alpha");
    let mut c = h.client("Alpha");
    // Warm up (log buffer, read buffers) so the baseline is not the cold process.
    for i in 0..50 {
        c.ask(&format!("IAMAT warm{i} +1+1 {}", now_text()));
    }
    c.send(vec![b'w'; 100_000]);
    c.raw_line();
    c.ask("\nIAMAT w +1+1 5");
    let rss_before = h.servers[0].rss_kib();
    let mut big = Vec::with_capacity(1 << 20);
    for i in 0..(1usize << 20) {
        big.push(b'a' + (i % 26) as u8);
    }
    c.send(&big);
    // Still no newline: the head is answered as soon as the line is known to be too long.
    let reply = c.raw_line();
    let mut expect = b"? ".to_vec();
    expect.extend_from_slice(&big[..256]);
    expect.push(b'\n');
    assert_eq!(reply, expect);
    // The same line goes on for 7 MiB more: a server that kept it would grow by 8 MiB.
    for _ in 0..7 {
        c.send(&big);
    }
    // Another client is served meanwhile (and, the connection being ordered, after the
    // server has read what was sent before).
    assert!(
        other
            .ask(&format!("IAMAT x +1+1 {}", now_text()))
            .starts_with("AT Alpha ")
    );
    let probe = format!("IAMAT probe +1+1 {}", now_text());
    c.send(format!("\n{probe}\n"));
    assert!(
        c.line().contains(" probe "),
        "the rest of the line was discarded; the connection goes on"
    );
    let rss_after = h.servers[0].rss_kib();
    assert!(
        rss_after < rss_before + 2048,
        "RSS grew from {rss_before} to {rss_after} KiB for an 8 MiB line"
    );
}

#[test]
fn line_of_exactly_max_line_is_fine_and_one_more_byte_is_overlong() {
    let h = Herd::single("limits: { max_line: 100 }\n");
    let mut c = h.client("Alpha");
    let name = "n".repeat(100 - "IAMAT  +1+1 5".len());
    let ok = format!("IAMAT {name} +1+1 5");
    assert_eq!(ok.len(), 100);
    assert!(
        c.ask(&format!("{ok}\r")).starts_with("AT Alpha "),
        "100 bytes + CRLF"
    );
    let long = format!("IAMAT {name}x +1+1 5");
    let reply = c.ask(&long);
    assert_eq!(
        reply,
        format!("? {long}\n"),
        "101 bytes: over-long, echo is its first 256 bytes (all of it)"
    );
}

#[test]
fn client_that_never_reads_is_paused_with_bounded_memory_and_others_are_served() {
    let mut h = Herd::single("log: { dir: logs, level: warn }\n");
    let rss_before = h.servers[0].rss_kib();
    let mut hog = Client::connect_small_rcvbuf(h.port("Alpha"));
    let line = format!("IAMAT hog +34.068930-118.445127 {}\n", now_text());
    let per_line = line.len();
    let total_lines = 10_000_000 / per_line;
    let mut writer = hog.stream.try_clone().expect("clone");
    let payload = line.repeat(total_lines);
    let sender = std::thread::spawn(move || {
        // Blocks once the server stops reading; finishes once the reader below drains.
        writer.write_all(payload.as_bytes()).map(|_| payload.len())
    });
    // Wait until the server has stopped taking input (its RSS stops growing), while
    // another client is still answered quickly.
    let mut other = h.client("Alpha");
    let mut peak = 0;
    for i in 0..40 {
        let r = other.ask(&format!("IAMAT other{i} +1+1 {}", now_text()));
        assert!(r.starts_with("AT Alpha "), "{r}");
        // Answered while the hog's write is still blocked: its input is paused, and
        // that pause is the hog's alone.
        assert!(!sender.is_finished(), "the hog's 10 MB were all taken in");
        peak = peak.max(h.servers[0].rss_kib());
        std::thread::sleep(Duration::from_millis(40));
    }
    assert!(
        peak < rss_before + 4 * 1024,
        "RSS grew from {rss_before} to {peak} KiB while a client did not read"
    );
    // Now read everything: every line is answered, each with the hog's own AT line.
    let tail = format!(" {}", line.split_once(' ').map_or("", |(_, rest)| rest));
    let mut partial: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut newline_count = 0usize;
    while newline_count < total_lines {
        let n = hog.read_some(&mut buf, DEADLINE).unwrap_or_else(|e| {
            panic!(
                "reading replies failed after {newline_count} of {total_lines}: {e}; server {}",
                h.servers[0].state()
            )
        });
        assert!(n > 0, "closed after {newline_count} replies");
        partial.extend_from_slice(&buf[..n]);
        let complete = partial.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
        for reply in partial[..complete].split_inclusive(|&b| b == b'\n') {
            let reply = String::from_utf8_lossy(reply);
            assert!(
                reply.starts_with("AT Alpha ") && reply.ends_with(&tail),
                "reply {newline_count}: {reply:?}"
            );
            newline_count += 1;
        }
        partial.drain(..complete);
    }
    assert_eq!(newline_count, total_lines);
    assert!(partial.is_empty(), "nothing after the last reply");
    let sent = sender.join().expect("sender thread").expect("all sent");
    assert_eq!(sent, per_line * total_lines);
}

#[test]
fn log_records_messages_replies_and_peer_addresses_in_utc() {
    let h = Herd::single("");
    let mut c = h.client("Alpha");
    let local = c.stream.local_addr().expect("addr").to_string();
    let reply = c.ask("IAMAT logged +1+2 5");
    c.ask("nonsense");
    let log = eventually(DEADLINE, || {
        let log = h.log("Alpha");
        log.contains("nonsense").then_some(log)
    })
    .expect("log written");
    // One line per message: what was received and what was sent, in full.
    assert!(
        log.contains(&format!(
            "{local} recv: IAMAT logged +1+2 5 | sent: {}\n",
            reply.trim_end()
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("{local} recv: nonsense | sent: ? nonsense\n")),
        "{log}"
    );
    assert!(log.contains("Alpha starting"), "{log}");
    // RFC 3339 in UTC: "...T..:..:..Z" (or an explicit +00:00 offset).
    let first = log.lines().next().unwrap_or_default();
    assert!(
        first.contains('T') && (first.contains("Z ") || first.contains("+00:00")),
        "{first}"
    );
}

#[test]
fn sigterm_closes_listener_logs_shutdown_and_exits_zero_within_a_second() {
    let mut h = Herd::single("");
    let port = h.port("Alpha");
    let mut c = h.client("Alpha");
    c.ask("IAMAT x +1+1 5");
    h.server("Alpha").signal("TERM");
    let status = h.server("Alpha").wait_exit(Duration::from_secs(1));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
        "port is free again"
    );
    assert!(h.log("Alpha").contains("shut down"));
}

#[test]
fn sigint_also_exits_zero() {
    let mut h = Herd::single("");
    h.server("Alpha").signal("INT");
    let status = h.server("Alpha").wait_exit(Duration::from_secs(1));
    assert_eq!(status.map(|s| s.code()), Some(Some(0)));
}

fn herd_cmd(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("GOOGLE_PLACES_API_KEY")
        .output()
        .expect("run herd")
}

fn one_line_error(out: &std::process::Output) -> String {
    assert_eq!(out.status.code(), Some(2), "exit status 2");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.starts_with("herd: "), "{err}");
    err
}

#[test]
fn help_and_version() {
    let out = herd_cmd(&["--help"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("Usage: herd [--config PATH] NAME"));
    let out = herd_cmd(&["--version"]);
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("herd {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn unknown_name_bad_config_and_missing_name_exit_2_with_one_line() {
    let h = Herd::new(&[("Alpha", &[])], "");
    let cfg = h.config.to_str().expect("path");
    let err = one_line_error(&herd_cmd(&["--config", cfg, "Zulu"]));
    assert!(
        err.contains("no server named `Zulu`") && err.contains("Alpha"),
        "{err}"
    );
    let err = one_line_error(&herd_cmd(&["--config", "/nonexistent/herd.yml", "Alpha"]));
    assert!(err.contains("/nonexistent/herd.yml"), "{err}");
    let bad = h.dir.path().join("bad.yml");
    std::fs::write(
        &bad,
        "servers:\n  A: { port: 1, peer_port: 2, neighbours: [B] }\n",
    )
    .expect("write");
    let err = one_line_error(&herd_cmd(&["--config", bad.to_str().expect("path"), "A"]));
    assert!(err.contains("unknown neighbour `B`"), "{err}");
    let err = one_line_error(&herd_cmd(&[]));
    assert!(err.contains("missing server NAME"), "{err}");
}

#[test]
fn port_in_use_exits_2_and_leaves_nothing_listening() {
    let h = Herd::new(&[("Alpha", &[])], "");
    let spec = h.spec("Alpha").clone();
    let _taken = std::net::TcpListener::bind(("127.0.0.1", spec.port)).expect("occupy port");
    let err = one_line_error(&herd_cmd(&[
        "--config",
        h.config.to_str().expect("path"),
        "Alpha",
    ]));
    assert!(err.contains(&spec.port.to_string()), "{err}");
    assert!(
        std::net::TcpListener::bind(("127.0.0.1", spec.peer_port)).is_ok(),
        "peer port not left bound"
    );
}

#[test]
fn a_pipelining_client_does_not_starve_others() {
    let h = Herd::single("log: { dir: logs, level: warn }\n");
    let mut hog = h.client("Alpha");
    let mut writer = hog.stream.try_clone().expect("clone");
    let line = format!("IAMAT hog +1+1 {}\n", now_text());
    let total = 400_000;
    let payload = line.repeat(total);
    let sender = std::thread::spawn(move || writer.write_all(payload.as_bytes()).is_ok());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        let mut lines = 0;
        while lines < total {
            match hog.read_some(&mut buf, DEADLINE) {
                Ok(0) | Err(_) => break,
                Ok(n) => lines += buf[..n].iter().filter(|&&b| b == b'\n').count(),
            }
        }
        lines
    });
    // While the hog's stream is being served, another client's requests are answered
    // between the hog's turns, not after its whole pipeline. (Turns end after 64 messages
    // or when 256 KiB of replies wait; with neither, this waits seconds.)
    let mut other = h.client("Alpha");
    let mut worst = Duration::ZERO;
    let mut asked = 0;
    while !reader.is_finished() && asked < 50 {
        let started = Instant::now();
        assert!(
            other
                .ask(&format!("IAMAT small +1+1 {}", now_text()))
                .starts_with("AT Alpha ")
        );
        worst = worst.max(started.elapsed());
        asked += 1;
    }
    assert!(sender.join().expect("sender"), "all sent");
    assert_eq!(reader.join().expect("reader"), total, "every hog line answered");
    // The behaviour: several of the other client's requests were answered, one after
    // another, while the hog's pipeline was still being served. Served only after the
    // whole pipeline, the first ask would come back after the hog finished. The wait
    // itself is printed, not asserted (it is the benchmarks' business).
    eprintln!("another client waited at most {worst:?} behind a pipeline ({asked} asks)");
    assert!(
        asked >= 5,
        "only {asked} requests of another client were answered while the hog was served"
    );
}

/// SPEC §7: out of file descriptors, the server neither melts down nor stops serving. It
/// runs under `ulimit -n 64` and is sent more connections than that; accept fails with
/// EMFILE, and each failure must not breed more retries (once, their count doubled every
/// 100 ms: a million log lines in 2.4 s and SIGTERM ignored).
#[test]
fn out_of_descriptors_is_survived() {
    let mut herd = Herd::new(&[("Alpha", &[])], "");
    let port = herd.port("Alpha");
    let child = Command::new("sh")
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(BIN)
        .arg("--config")
        .arg(&herd.config)
        .arg("Alpha")
        .env_remove("GOOGLE_PLACES_API_KEY")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn herd under ulimit");
    herd.servers.push(Server {
        name: "Alpha".into(),
        child,
        port,
    });
    let mut first = eventually(DEADLINE, || {
        std::net::TcpStream::connect(("127.0.0.1", port))
            .ok()
            .map(|_| Client::connect(port))
    })
    .expect("server listening");
    let t = now_text();
    assert!(first.ask(&format!("IAMAT a +1+1 {t}")).starts_with("AT Alpha "));

    // The kernel completes these handshakes into the listen backlog whether or not the
    // server can accept them, so the flood is open for sure once the loop ends.
    let flood: Vec<std::net::TcpStream> = (0..150)
        .map(|_| std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to backlog"))
        .collect();
    let failing = eventually(DEADLINE, || {
        herd.log("Alpha").contains("accept failed").then_some(())
    });
    assert!(failing.is_some(), "the flood never exhausted the descriptors");
    // Held while retries run: 2 s is 20 retry periods, enough for the old doubling to
    // write hundreds of thousands of lines; the fixed server writes one a second.
    let held_until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < held_until {
        let t = now_text();
        let reply = first.ask(&format!("IAMAT a +1+1 {t}"));
        assert!(
            reply.starts_with("AT Alpha "),
            "existing client answered: {reply}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let failures = herd.log("Alpha").matches("accept failed").count();
    assert!(failures <= 5, "{failures} 'accept failed' lines in about 2 s");
    drop(flood);

    // The backlog drains as descriptors come free; a newcomer is served.
    let mut late = Client::connect(port);
    let t = now_text();
    assert!(late.ask(&format!("IAMAT b +1+1 {t}")).starts_with("AT Alpha "));
    let server = herd.server("Alpha");
    server.signal("TERM");
    let status = server.wait_exit(DEADLINE);
    assert!(status.is_some_and(|s| s.success()), "exit on SIGTERM: {status:?}");
}
