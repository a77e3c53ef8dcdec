//! SPEC §3 (propagation) against real herds of `herd` processes on loopback: flooding over
//! one to three hops, servers killed, stopped, restarted or never started, ties, many
//! updates in shuffled order, and fake neighbours speaking the peer protocol by hand.
//!
//! A server's record for a client is observed with `WHATSAT <client> 1 0` (bound 0 makes
//! no upstream call): the reply's first line is the stored AT line, or `? WHATSAT ...` if
//! the client is unknown there. Every wait polls with a deadline.
//!
//! "Not forwarded" is checked with a marker: records on one link arrive in order, so once a
//! marker sent after a record has reached every server, the record would have too.

mod support;

use std::collections::HashMap;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use support::*;

/// How long a restarted or late server may take to catch up in an assertion. SPEC §3 asks
/// for 1 s; the suite runs on a loaded 2-core machine, so the assertion is generous and the
/// time it took is printed (`--nocapture`).
const CATCH_UP: Duration = Duration::from_secs(5);

const LOC: &str = "+34.068930-118.445127";

/// A-B-C-D: D is three hops from A.
const CHAIN: &[(&str, &[&str])] = &[
    ("A", &["B"]),
    ("B", &["A", "C"]),
    ("C", &["B", "D"]),
    ("D", &["C"]),
];

/// Sends `IAMAT <client> <loc> <time>` to `server` on a new connection and returns the
/// reply, checked to be that server's AT line for exactly this message.
fn iamat(h: &Herd, server: &str, client: &str, loc: &str, time: &str) -> String {
    iamat_on(&mut h.client(server), server, client, loc, time)
}

fn iamat_on(c: &mut Client, server: &str, client: &str, loc: &str, time: &str) -> String {
    let reply = c.ask(&format!("IAMAT {client} {loc} {time}"));
    check_at_reply(&reply, server, client, loc, time);
    reply
}

fn check_at_reply(reply: &str, server: &str, client: &str, loc: &str, time: &str) {
    let head = format!("AT {server} ");
    let tail = format!(" {client} {loc} {time}\n");
    assert!(
        reply.starts_with(&head) && reply.ends_with(&tail) && reply.split(' ').count() == 6,
        "IAMAT {client} {loc} {time} at {server} answered {reply:?}"
    );
}

/// What `server` holds for each of `clients`: the stored AT line (with `\n`), or None when
/// it answers `? WHATSAT ...`. One connection, the WHATSATs pipelined.
fn records_at(h: &Herd, server: &str, clients: &[&str]) -> Vec<Option<String>> {
    let mut c = h.client(server);
    let mut msg = String::new();
    for client in clients {
        msg += &format!("WHATSAT {client} 1 0\n");
    }
    c.send(msg);
    clients
        .iter()
        .map(|client| {
            let first = c.line();
            if first.starts_with("? ") {
                assert_eq!(first, format!("? WHATSAT {client} 1 0\n"), "at {server}");
                return None;
            }
            // The JSON, up to the blank line that ends the reply.
            while c.line() != "\n" {}
            Some(first)
        })
        .collect()
}

fn record_at(h: &Herd, server: &str, client: &str) -> Option<String> {
    records_at(h, server, &[client]).pop().flatten()
}

/// Polls until every server in `servers` holds exactly the expected AT line for every
/// client in `expected` (client, AT line with `\n`). Returns how long that took; panics with
/// what differs if `within` passes first.
fn converge(h: &Herd, servers: &[&str], expected: &[(String, String)], within: Duration) -> Duration {
    let start = Instant::now();
    let clients: Vec<&str> = expected.iter().map(|(c, _)| c.as_str()).collect();
    let mut last = String::new();
    let done = eventually(within, || {
        last.clear();
        for server in servers {
            let held = records_at(h, server, &clients);
            for ((client, want), got) in expected.iter().zip(held) {
                if got.as_deref() != Some(want.as_str()) {
                    last += &format!("\n  {server} holds {got:?} for {client}, want {want:?}");
                }
            }
        }
        last.is_empty().then_some(())
    });
    assert!(done.is_some(), "no convergence within {within:?}:{last}");
    start.elapsed()
}

fn rec(client: &str, line: &str) -> (String, String) {
    (client.to_string(), line.to_string())
}

/// Sets `client`'s expected record, replacing an older one.
fn expect(expected: &mut Vec<(String, String)>, client: &str, line: &str) {
    expected.retain(|(c, _)| c != client);
    expected.push(rec(client, line));
}

/// A started five-server herd whose links carry records: a warm-up record has reached all.
fn five_up() -> Herd {
    let mut h = Herd::default_five("");
    h.start_all();
    let warm = iamat(&h, "Bailey", "warm.up", "+0+0", "1000000000");
    converge(&h, &all(&h), &[rec("warm.up", &warm)], DEADLINE);
    h
}

fn all(h: &Herd) -> Vec<&str> {
    h.specs.iter().map(|s| s.name.as_str()).collect()
}

/// splitmix64: a fixed-seed generator, so a failing run can be replayed exactly.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// A valid ISO 6709 location with six fraction digits.
    fn location(&mut self) -> String {
        let lat = self.below(180_000_001) as i64 - 90_000_000;
        let lng = self.below(360_000_001) as i64 - 180_000_000;
        let part = |v: i64, w: usize| {
            let sign = if v < 0 { '-' } else { '+' };
            let v = v.unsigned_abs();
            format!("{sign}{:0w$}.{:06}", v / 1_000_000, v % 1_000_000)
        };
        format!("{}{}", part(lat, 2), part(lng, 3))
    }
}

// ---------------------------------------------------------------------------------------
// Flooding

#[test]
fn records_travel_one_two_and_three_hops_unchanged() {
    let mut h = Herd::new(CHAIN, "");
    h.start_all();

    let at = iamat(&h, "A", "kiwi.cs.ucla.edu", LOC, "1621464827.959498503");
    for (hops, server) in [(1, "B"), (2, "C"), (3, "D")] {
        let seen = eventually(DEADLINE, || {
            record_at(&h, server, "kiwi.cs.ucla.edu").filter(|l| *l == at)
        });
        assert!(seen.is_some(), "{hops} hop(s) from A, {server} never held {at:?}");
    }

    // The other way, and a newer record for the same client replaces the older everywhere
    // with the far server's own AT line, not recomputed on the way.
    let newer = iamat(&h, "D", "kiwi.cs.ucla.edu", "-33.8688+151.2093", "1621464828");
    assert!(newer.starts_with("AT D "), "{newer}");
    converge(
        &h,
        &["A", "B", "C", "D"],
        &[rec("kiwi.cs.ucla.edu", &newer)],
        DEADLINE,
    );
}

#[test]
fn a_stale_iamat_is_answered_but_neither_stored_nor_forwarded() {
    // D with the test listening on its neighbour C's peer port, so what D forwards is read
    // straight off the link: records on it arrive in order, so once the marker sent after
    // the stale IAMAT has arrived, the stale record would have come before it.
    let mut h = Herd::new(&[("C", &["D"]), ("D", &["C"])], "");
    let listener =
        std::net::TcpListener::bind(("127.0.0.1", h.spec("C").peer_port)).expect("bind C's peer port");
    h.start("D");
    let mut link = accept_link(&listener);
    assert_eq!(next_record(&mut link), "HELLO D\n");
    let newest = iamat(&h, "D", "kiwi", "+10+10", "1700000200");
    assert_eq!(next_record(&mut link), newest);

    // Older time: answered with its own AT line (a copy of the IAMAT data), nothing else.
    let stale = iamat(&h, "D", "kiwi", "+20+20", "1700000100");
    assert!(stale.starts_with("AT D "), "{stale}");
    assert_eq!(
        record_at(&h, "D", "kiwi"),
        Some(newest),
        "the stale record was stored"
    );
    let marker = iamat(&h, "D", "marker", "+0+0", "1700000300");
    assert_eq!(next_record(&mut link), marker, "the stale record was forwarded");
}

/// Accepts the one connection a server under test dials to a neighbour the test plays.
fn accept_link(listener: &std::net::TcpListener) -> Client {
    listener.set_nonblocking(true).expect("nonblocking");
    let stream = eventually(DEADLINE, || listener.accept().ok().map(|(s, _)| s))
        .expect("the server dialled its neighbour");
    stream.set_nonblocking(false).expect("blocking");
    stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
    let reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    Client { reader, stream }
}

/// The next non-blank line on a link (blank lines are heartbeats, not records).
fn next_record(link: &mut Client) -> String {
    loop {
        let line = link.line();
        if line != "\n" {
            return line;
        }
    }
}

// ---------------------------------------------------------------------------------------
// Two servers killed: the ten ways

/// The survivor with no surviving neighbour when `killed` are gone, if any.
fn cut_off(killed: &[&str]) -> Option<&'static str> {
    SPEC_TOPOLOGY
        .iter()
        .filter(|(name, _)| !killed.contains(name))
        .find(|(_, ns)| ns.iter().all(|n| killed.contains(n)))
        .map(|(name, _)| *name)
}

fn kill_two(a: &str, b: &str, isolated: Option<&str>) {
    // The expected split is stated by each case and checked against the topology.
    assert_eq!(cut_off(&[a, b]), isolated, "topology disagrees with the case");
    let mut h = five_up();
    let names = h.names();
    let everyone: Vec<&str> = names.iter().map(String::as_str).collect();
    let old = iamat(&h, "Campbell", "kiwi", "+1+1", "1700000000");
    converge(&h, &everyone, &[rec("kiwi", &old)], DEADLINE);

    h.kill9(a);
    h.kill9(b);
    let survivors: Vec<&str> = everyone.iter().copied().filter(|n| *n != a && *n != b).collect();

    match isolated {
        None => {
            // Every survivor in turn takes a newer update; all three agree on each.
            for (i, at) in survivors.iter().enumerate() {
                let line = iamat(&h, at, "kiwi", "+2+2", &format!("17000000{:02}", 10 + i));
                converge(&h, &survivors, &[rec("kiwi", &line)], DEADLINE);
            }
        }
        Some(alone) => {
            let pair: Vec<&str> = survivors.iter().copied().filter(|n| *n != alone).collect();
            let newer = iamat(&h, pair[0], "kiwi", "+3+3", "1700000010");
            converge(&h, &pair, &[rec("kiwi", &newer)], DEADLINE);
            assert_eq!(
                record_at(&h, alone, "kiwi").as_deref(),
                Some(old.as_str()),
                "{alone} is cut off by killing {a} and {b}: it keeps the older record"
            );
            // And the other way: an update at the lone server stays there.
            let lone = iamat(&h, alone, "lonely", "+4+4", "1700000020");
            assert_eq!(record_at(&h, alone, "lonely").as_deref(), Some(lone.as_str()));
            let marker = iamat(&h, pair[1], "marker", "+0+0", "1700000030");
            converge(&h, &pair, &[rec("marker", &marker)], DEADLINE);
            for p in &pair {
                assert_eq!(record_at(&h, p, "lonely"), None, "{p} heard from cut-off {alone}");
            }
        }
    }
}

macro_rules! kill_two_cases {
    ($($name:ident: $a:literal, $b:literal => $isolated:expr;)*) => {
        $(#[test] fn $name() { kill_two($a, $b, $isolated); })*
    };
}

kill_two_cases! {
    kill_bailey_and_bona: "Bailey", "Bona" => None;
    kill_bailey_and_campbell: "Bailey", "Campbell" => None;
    kill_bailey_and_clark: "Bailey", "Clark" => None;
    kill_bailey_and_jaquez: "Bailey", "Jaquez" => None;
    kill_bona_and_campbell_cuts_off_bailey: "Bona", "Campbell" => Some("Bailey");
    kill_bona_and_clark: "Bona", "Clark" => None;
    kill_bona_and_jaquez_cuts_off_clark: "Bona", "Jaquez" => Some("Clark");
    kill_campbell_and_clark_cuts_off_jaquez: "Campbell", "Clark" => Some("Jaquez");
    kill_campbell_and_jaquez: "Campbell", "Jaquez" => None;
    kill_clark_and_jaquez: "Clark", "Jaquez" => None;
}

// ---------------------------------------------------------------------------------------
// Restarts, stops, late starts

#[test]
fn each_server_killed_and_restarted_catches_up_from_its_neighbours() {
    let mut h = five_up();
    let names = h.names();
    let mut expected = vec![rec(
        "warm.up",
        &record_at(&h, "Bailey", "warm.up").expect("warm-up record"),
    )];
    let first = iamat(&h, "Campbell", "kiwi", "+1+1", "1700000000");
    expect(&mut expected, "kiwi", &first);
    converge(&h, &all(&h), &expected, DEADLINE);

    let mut report = Vec::new();
    for (i, name) in names.iter().enumerate() {
        h.kill9(name);
        let others: Vec<&str> = names.iter().map(String::as_str).filter(|n| n != name).collect();
        // Sent while it is down: a new client, and a newer record for an old one.
        let at = others[i % others.len()];
        let new_client = format!("while.{name}.down");
        let line = iamat(&h, at, &new_client, "+5+5", "1700000100");
        expect(&mut expected, &new_client, &line);
        let line = iamat(
            &h,
            others[(i + 1) % others.len()],
            "kiwi",
            "+6+6",
            &format!("17000002{i:02}"),
        );
        expect(&mut expected, "kiwi", &line);
        converge(&h, &others, &expected, DEADLINE);

        // No client update from here on: only the neighbours' table sync can teach it.
        let spawned = Instant::now();
        h.start(name);
        let listening = spawned.elapsed();
        converge(&h, &[name], &expected, CATCH_UP);
        report.push(format!(
            "{name} {:?} (listening at {listening:?})",
            spawned.elapsed()
        ));
    }
    eprintln!("caught up after restart (from spawn): {}", report.join(", "));
    converge(&h, &all(&h), &expected, DEADLINE);
}

#[test]
fn a_stopped_neighbour_delays_neither_replies_nor_flooding_and_catches_up_after_cont() {
    let mut h = five_up();
    h.server("Bona").signal("STOP");
    assert!(h.server("Bona").wait_stopped(DEADLINE), "Bona did not stop");

    // The setup holds: Bona does not answer while stopped.
    let mut to_bona = h.client("Bona");
    to_bona.send("WHATSAT warm.up 1 0\n");
    assert!(
        to_bona.silent_for(Duration::from_millis(300)),
        "Bona answered while stopped"
    );

    let mut bailey = h.client("Bailey");
    let mut expected = Vec::new();
    for k in 0..20 {
        let client = format!("stop.{}", k % 4);
        // Answered while Bona is still stopped (it is continued only below): a stalled
        // neighbour delays no reply. How fast is the benchmarks' business.
        let line = iamat_on(
            &mut bailey,
            "Bailey",
            &client,
            "+7+7",
            &format!("17000000{:02}", k),
        );
        expect(&mut expected, &client, &line);
    }
    // Clark hears it the long way round: Bailey, Campbell, Jaquez, Clark.
    converge(
        &h,
        &["Bailey", "Campbell", "Jaquez", "Clark"],
        &expected,
        DEADLINE,
    );

    h.server("Bona").signal("CONT");
    let (at, _) = to_bona.whatsat_reply();
    assert!(at.starts_with("AT Bailey ") && at.contains(" warm.up "), "{at}");
    converge(&h, &all(&h), &expected, DEADLINE);
}

#[test]
fn a_neighbour_that_never_started_is_retried_and_catches_up_when_it_starts() {
    let mut h = Herd::default_five("");
    for name in ["Bailey", "Bona", "Campbell", "Jaquez"] {
        h.start(name);
    }
    let running = ["Bailey", "Bona", "Campbell", "Jaquez"];
    let mut expected = Vec::new();
    // Clark's two neighbours answer while Clark is down and flood among the four.
    for (i, at) in ["Bona", "Jaquez", "Bona", "Jaquez"].iter().enumerate() {
        let line = iamat(&h, at, &format!("late.{i}"), "+8+8", "1700000000");
        expect(&mut expected, &format!("late.{i}"), &line);
    }
    converge(&h, &running, &expected, DEADLINE);

    // Both of Clark's neighbours log the link to it down, and retry it.
    for server in ["Bona", "Jaquez"] {
        let retried = eventually(DEADLINE, || {
            let log = h.log(server);
            let downs = log
                .lines()
                .filter(|l| l.contains("link to Clark (") && l.contains("down") && l.contains("retry in"))
                .count();
            (downs >= 2).then_some(())
        });
        assert!(
            retried.is_some(),
            "{server}'s log shows no repeated retries of the link to Clark:\n{}",
            h.log(server)
        );
    }

    let spawned = Instant::now();
    h.start("Clark");
    converge(&h, &["Clark"], &expected, CATCH_UP);
    eprintln!("late Clark caught up {:?} after spawn", spawned.elapsed());
    // And it is a full member: its own update reaches Bailey, three hops away.
    let line = iamat(&h, "Clark", "late.0", "+9+9", "1700000001");
    expect(&mut expected, "late.0", &line);
    converge(&h, &all(&h), &expected, DEADLINE);
    for server in ["Bona", "Jaquez"] {
        let up = eventually(DEADLINE, || {
            h.log(server)
                .lines()
                .any(|l| l.contains("link to Clark (") && l.contains(": up"))
                .then_some(())
        });
        assert!(up.is_some(), "{server} never logged its link to Clark up");
    }
}

// A restarted server being dialled back at once on its HELLO, rather than at the end of a
// backoff, is a rule of the link module: src/links.rs tests it with injected time
// (`a_hello_while_our_link_is_down_dials_back_at_once`). Restarts end to end are above.

#[test]
fn output_to_a_stopped_neighbour_is_bounded_and_resynced_after_cont() {
    // Records of about 1 MB (limits.max_line at its maximum) make the 8 MiB bound on output
    // queued for a neighbour cheap to cross. Logging is at warn: every 1 MB message would
    // otherwise be logged three times.
    const RECORDS: usize = 64;
    let mut h = Herd::new(
        &[("Bailey", &["Bona"]), ("Bona", &["Bailey"])],
        "limits: { max_line: 1048576 }\nlog: { dir: logs, level: warn }\n",
    );
    h.start_all();
    let warm = iamat(&h, "Bailey", "warm.up", "+0+0", "1000000000");
    converge(&h, &["Bailey", "Bona"], &[rec("warm.up", &warm)], DEADLINE);

    h.server("Bona").signal("STOP");
    assert!(h.server("Bona").wait_stopped(DEADLINE), "Bona did not stop");
    let before = h.server("Bailey").rss_kib();
    let big = format!("big.{}", "x".repeat(1_000_000));
    let mut bailey = h.client("Bailey");
    let mut latest = String::new();
    let mut slowest = Duration::ZERO;
    for k in 0..RECORDS {
        let sent = Instant::now();
        latest = iamat_on(
            &mut bailey,
            "Bailey",
            &big,
            "+1+1",
            &format!("{}", 1_700_000_000 + k),
        );
        slowest = slowest.max(sent.elapsed());
    }
    let grown_mib = h.server("Bailey").rss_kib().saturating_sub(before) / 1024;
    eprintln!(
        "{RECORDS} MB of records for a stopped neighbour: Bailey grew {grown_mib} MiB; slowest reply {slowest:?}"
    );
    // Every reply came while Bona was stopped; the time is printed, not asserted.
    // Unbounded, about RECORDS MB minus what the kernel buffers would be held.
    assert!(
        grown_mib < 32,
        "Bailey grew {grown_mib} MiB queueing for a stopped neighbour"
    );

    h.server("Bona").signal("CONT");
    converge(
        &h,
        &["Bailey", "Bona"],
        &[rec(&big, &latest), rec("warm.up", &warm)],
        DEADLINE,
    );
}

// ---------------------------------------------------------------------------------------
// Ordering

#[test]
fn equal_times_at_two_servers_at_once_converge_to_the_greater_at_line() {
    let h = five_up();
    let mut bailey = h.client("Bailey");
    let mut jaquez = h.client("Jaquez");
    let time = "1700000000.123456789";
    let mut expected = Vec::new();
    for round in 0..10 {
        let client = format!("tie.{round}");
        let barrier = Barrier::new(2);
        let (b, j) = std::thread::scope(|s| {
            let b = s.spawn(|| {
                barrier.wait();
                iamat_on(&mut bailey, "Bailey", &client, "+11.5-11.5", time)
            });
            let j = s.spawn(|| {
                barrier.wait();
                iamat_on(&mut jaquez, "Jaquez", &client, "-22.5+22.5", time)
            });
            (b.join().expect("Bailey side"), j.join().expect("Jaquez side"))
        });
        // The byte-wise greater line (here always Jaquez's: "AT J" > "AT B") must win.
        let winner = b.max(j);
        expect(&mut expected, &client, &winner);
    }
    converge(&h, &all(&h), &expected, DEADLINE);

    // One after the other. The lesser line second: answered, dropped everywhere.
    let j = iamat(&h, "Jaquez", "tie.seq", "-1-1", time);
    converge(&h, &all(&h), &[rec("tie.seq", &j)], DEADLINE);
    iamat(&h, "Bailey", "tie.seq", "+1+1", time);
    let marker = iamat(&h, "Bailey", "marker", "+0+0", time);
    converge(
        &h,
        &all(&h),
        &[rec("tie.seq", &j), rec("marker", &marker)],
        DEADLINE,
    );

    // The greater line second: replaces the lesser everywhere.
    let b = iamat(&h, "Bailey", "tie.rev", "+1+1", time);
    converge(&h, &all(&h), &[rec("tie.rev", &b)], DEADLINE);
    let j = iamat(&h, "Jaquez", "tie.rev", "-1-1", time);
    converge(&h, &all(&h), &[rec("tie.rev", &j)], DEADLINE);
}

#[test]
fn two_hundred_shuffled_updates_converge_to_each_clients_latest_everywhere() {
    let h = five_up();
    let names = h.names();
    let mut rng = Rng(0x5eed_f00d_4e2d);
    // (client, k, location, time): times strictly increase with k for each client.
    let mut updates = Vec::new();
    for c in 0..20 {
        for k in 0..10u64 {
            let time = format!(
                "{}.{:09}",
                1_700_000_000 + 10 * k + rng.below(10),
                rng.below(1_000_000_000)
            );
            updates.push((format!("many.{c:02}"), k, rng.location(), time));
        }
    }
    for i in (1..updates.len()).rev() {
        updates.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut per_server: Vec<Vec<_>> = vec![Vec::new(); names.len()];
    for u in updates {
        per_server[rng.below(names.len() as u64) as usize].push(u);
    }

    // One connection per server, all five sending at once.
    let replies: Vec<(String, u64, String)> = std::thread::scope(|s| {
        let workers: Vec<_> = per_server
            .iter()
            .zip(&names)
            .map(|(batch, server)| {
                let mut c = h.client(server);
                s.spawn(move || {
                    batch
                        .iter()
                        .map(|(client, k, loc, time)| {
                            (client.clone(), *k, iamat_on(&mut c, server, client, loc, time))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("sender"))
            .collect()
    });
    assert_eq!(replies.len(), 200);

    let mut latest: HashMap<String, (u64, String)> = HashMap::new();
    for (client, k, line) in replies {
        let e = latest.entry(client).or_insert((k, line.clone()));
        if k >= e.0 {
            *e = (k, line);
        }
    }
    assert_eq!(latest.len(), 20);
    let expected: Vec<(String, String)> = latest.into_iter().map(|(c, (_, l))| (c, l)).collect();
    converge(&h, &all(&h), &expected, DEADLINE);
}

// ---------------------------------------------------------------------------------------
// The peer port spoken by hand

/// A connection to `server`'s peer port.
fn peer(h: &Herd, server: &str) -> Client {
    Client::connect(h.spec(server).peer_port)
}

#[test]
fn a_fake_neighbour_is_heard_flooded_onwards_and_survives_a_malformed_record() {
    // Everyone but Bailey: a test plays Bailey on Bona's peer port.
    let mut h = Herd::default_five("");
    for name in ["Bona", "Campbell", "Clark", "Jaquez"] {
        h.start(name);
    }
    let others = ["Bona", "Campbell", "Clark", "Jaquez"];
    let mut fake = peer(&h, "Bona");
    fake.send("HELLO Bailey\n");
    let good = "AT Bailey +0.000000001 fake.1 +1.5-2.5 1700000000.000000001";
    fake.send(format!("{good}\n"));
    // Stored as received, and forwarded to Bona's other neighbours (and on to Jaquez).
    converge(&h, &others, &[rec("fake.1", &format!("{good}\n"))], DEADLINE);

    // Malformed records are skipped; had they been taken, their later times would win.
    for bad in [
        "AT Bailey nonsense",
        "AT Bailey +0.1 fake.2 +1+1 1700000009",
        "AT Bailey +0.000000001 fake.2 +91+1 1700000009",
        "AT Bailey +0.000000001 fake.2 +1+1 1700000009 extra",
        "IAMAT fake.2 +1+1 1700000009",
        "HELLO Bailey",
    ] {
        fake.send(format!("{bad}\n"));
    }
    // The link stays: a later good record still goes through.
    let good2 = "AT Bailey -0.000000002 fake.2 -2.5+1.5 1700000001";
    fake.send(format!("{good2}\n"));
    // An older record for fake.1 is dropped, not forwarded.
    fake.send("AT Bailey +0.000000003 fake.1 +3+3 1699999999\n");
    let marker = "AT Bailey +0.000000004 marker +0+0 1700000002";
    fake.send(format!("{marker}\n"));
    converge(
        &h,
        &others,
        &[
            rec("fake.1", &format!("{good}\n")),
            rec("fake.2", &format!("{good2}\n")),
            rec("marker", &format!("{marker}\n")),
        ],
        DEADLINE,
    );
    // Log records reach the file within 20 ms.
    let logged = eventually(DEADLINE, || {
        h.log("Bona")
            .contains("malformed: AT Bailey nonsense")
            .then_some(())
    });
    assert!(
        logged.is_some(),
        "Bona's log does not mention the malformed record:\n{}",
        h.log("Bona")
    );
    // The accepting side sends nothing back, and keeps the connection.
    assert!(
        fake.silent_for(Duration::from_millis(300)),
        "Bona sent something to its dialler"
    );
}

#[test]
fn a_record_is_stored_and_forwarded_in_canonical_form_and_needs_a_known_origin() {
    // Bailey is played by the test on Bona's peer port; Campbell shows what Bona forwards.
    let mut h = Herd::default_five("");
    for name in ["Bona", "Campbell"] {
        h.start(name);
    }
    let mut fake = peer(&h, "Bona");
    fake.send("HELLO Bailey\n");
    // Blanks of every kind around and between the fields, and a CRLF ending.
    fake.send("\t AT  Bailey\t+0.000000001\x0B messy\x0C +1.5-2.5   1700000000.5 \r\n");
    // Every field valid but the origin, which is no server of the herd.
    fake.send("AT Nobody +0.000000001 stranger +1+1 1700000000\n");
    let marker = "AT Bailey +0.000000002 marker +0+0 1700000001";
    fake.send(format!("{marker}\n"));
    converge(
        &h,
        &["Bona", "Campbell"],
        &[
            rec("messy", "AT Bailey +0.000000001 messy +1.5-2.5 1700000000.5\n"),
            rec("marker", &format!("{marker}\n")),
        ],
        DEADLINE,
    );
    // Records on a link arrive in order: the marker is in, so the stranger was seen.
    for server in ["Bona", "Campbell"] {
        assert_eq!(record_at(&h, server, "stranger"), None, "{server} stored it");
    }
    let logged = eventually(DEADLINE, || {
        h.log("Bona")
            .contains("malformed: AT Nobody +0.000000001 stranger")
            .then_some(())
    });
    assert!(logged.is_some(), "Bona's log:\n{}", h.log("Bona"));
}

#[test]
fn the_peer_port_refuses_a_first_line_that_is_not_a_neighbours_hello() {
    let mut h = Herd::default_five("");
    h.start("Bona");
    for first in [
        "HELLO Jaquez", // configured, but not Bona's neighbour
        "HELLO Nobody",
        "HELLO Bona",
        "HELLO bailey",
        "HELLO Bailey extra",
        "HELLO",
        "AT Bailey +0.000000001 sneaky +1+1 1700000000",
        "IAMAT sneaky +1+1 1700000000",
        "WHATSAT warm.up 1 0",
    ] {
        let mut p = peer(&h, "Bona");
        p.send(format!("{first}\n"));
        assert_eq!(p.line(), format!("? {first}\n"));
        assert!(
            p.closed_within(DEADLINE),
            "Bona kept the connection after {first:?}"
        );
    }
    assert_eq!(record_at(&h, "Bona", "sneaky"), None);
}

/// SPEC §5: blank lines on a peer connection are ignored, so a heartbeat that goes out
/// before the HELLO (or a peer that sends one first) does not get the link refused.
#[test]
fn blank_lines_before_the_hello_are_ignored() {
    let mut h = Herd::default_five("");
    h.start("Bona");
    let mut p = peer(&h, "Bona");
    p.send("\n \r\n\t\nHELLO Bailey\nAT Bailey +0.000000001 early +1+1 1700000000\n");
    converge(
        &h,
        &["Bona"],
        &[rec("early", "AT Bailey +0.000000001 early +1+1 1700000000\n")],
        DEADLINE,
    );
    assert!(
        p.silent_for(Duration::from_millis(200)),
        "Bona answered or closed"
    );
}

#[test]
fn a_second_hello_from_the_same_neighbour_replaces_the_older_connection() {
    let mut h = Herd::default_five("");
    h.start("Bona");
    let mut first = peer(&h, "Bona");
    first.send("HELLO Bailey\nAT Bailey +0.000000001 one +1+1 1700000000\n");
    converge(
        &h,
        &["Bona"],
        &[rec("one", "AT Bailey +0.000000001 one +1+1 1700000000\n")],
        DEADLINE,
    );

    let mut second = peer(&h, "Bona");
    second.send("HELLO Bailey\n");
    assert!(
        first.closed_within(DEADLINE),
        "the older connection from Bailey was not closed"
    );
    second.send("AT Bailey +0.000000002 two +2+2 1700000001\n");
    converge(
        &h,
        &["Bona"],
        &[rec("two", "AT Bailey +0.000000002 two +2+2 1700000001\n")],
        DEADLINE,
    );
    assert!(
        second.silent_for(Duration::from_millis(200)),
        "the newer connection got data or closed"
    );
}

#[test]
fn the_client_port_refuses_peer_messages_and_does_not_store_or_forward_them() {
    let mut h = Herd::new(&[("Bailey", &["Bona"]), ("Bona", &["Bailey"])], "");
    h.start_all();
    let mut c = h.client("Bailey");
    for msg in ["HELLO Bona", "AT Bona +0.000000001 sneaky +1+1 1700000000"] {
        assert_eq!(c.ask(msg), format!("? {msg}\n"));
    }
    // Same connection still serves; the marker reaching Bona shows nothing went before it.
    let marker = iamat_on(&mut c, "Bailey", "marker", "+0+0", "1700000001");
    converge(&h, &["Bailey", "Bona"], &[rec("marker", &marker)], DEADLINE);
    for server in ["Bailey", "Bona"] {
        assert_eq!(
            record_at(&h, server, "sneaky"),
            None,
            "{server} stored a record sent to a client port"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Measurement (not a test): `cargo test --release --test herd -- --ignored --nocapture`

#[test]
#[ignore = "measurement: IAMAT reply at Bailey to visible at Jaquez, 1,000 trials"]
fn measure_two_hop_propagation_bailey_to_jaquez() {
    let mut h = Herd::default_five("log: { dir: logs, level: info }\n");
    h.start_all();
    let warm = iamat(&h, "Bailey", "warm.up", "+0+0", "1000000000");
    converge(&h, &all(&h), &[rec("warm.up", &warm)], DEADLINE);

    let mut bailey = h.client("Bailey");
    let mut jaquez = h.client("Jaquez");
    let mut samples = Vec::with_capacity(1000);
    let mut polls = 0u64;
    for trial in 0..1000 {
        let client = format!("m.{trial}");
        iamat_on(&mut bailey, "Bailey", &client, "+1+1", &now_text());
        let replied = Instant::now();
        let ask = format!("WHATSAT {client} 1 0\n");
        loop {
            polls += 1;
            jaquez.send(&ask);
            let first = jaquez.line();
            if first.starts_with("AT ") {
                while jaquez.line() != "\n" {}
                break;
            }
            assert!(replied.elapsed() < DEADLINE, "trial {trial} never reached Jaquez");
        }
        samples.push(replied.elapsed());
    }
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 * q) as usize).min(samples.len() - 1)];
    eprintln!(
        "Bailey reply -> visible at Jaquez (2 hops), {} trials: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}; {:.2} polls/trial",
        samples.len(),
        at(0.50),
        at(0.90),
        at(0.99),
        samples[samples.len() - 1],
        polls as f64 / samples.len() as f64
    );
}
