//! SPEC §5 on a real (virtual) network: the five servers on five hosts in network
//! namespaces joined by a bridge (tests/support/netns.rs), with silent partitions, unplugged
//! cables, packet loss, hosts that lose power and come back, hung dials, frozen processes
//! and names that do not resolve yet. Each scenario asserts its SPEC §5 bound, with a
//! slack for this loaded 2-core machine, and prints what it measured (`--nocapture`).
//!
//! The scenarios need root, nftables and iproute2, so they are ignored in a plain `cargo
//! test`: run them with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run
//! does when root). `HERD_NETNS_PART5` (a comma-separated list of tags) runs only those of
//! the SPEC §5 scenarios, to rerun one while working on it; unset, all run. The log
//! parsing they rely on is tested here without root.

mod support;

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use support::netns::{Bed, Dir, LinkEvent, Options, link_event, parse_rfc3339};
use support::{DEADLINE, now_text};

const LOC: &str = "+34.068930-118.445127";
/// What a loaded 2-core machine may add to a SPEC bound in an assertion: generous next to
/// the bounds, small next to what they guard against (TCP's minutes of retransmissions).
const SLACK: Duration = Duration::from_secs(2);
/// `peers.dead_after_ms` in the scenarios that time dead-path detection: SPEC's least.
const DEAD_AFTER: Duration = Duration::from_millis(1000);
/// SPEC §5: a dialler writes a heartbeat after 1 s without writing.
const HEARTBEAT: Duration = Duration::from_secs(1);
/// SPEC §5: heal to linked and caught up.
const HEAL: Duration = Duration::from_secs(1);
/// SPEC §5: a rebooted neighbour host is linked and caught up within this.
const REBOOT: Duration = Duration::from_secs(2);
/// SPEC §3: graders send traffic 0.5 s after a restart, so "at once" must fit in this.
const AT_ONCE: Duration = Duration::from_millis(500);

/// Whether the SPEC §5 scenario tagged `tag` runs: all of them, unless HERD_NETNS_PART5
/// names a comma-separated subset (to rerun one scenario while working on it).
fn part5(tag: &str) -> bool {
    let Ok(list) = std::env::var("HERD_NETNS_PART5") else {
        return true;
    };
    let on = list.split(',').map(str::trim).any(|t| t == tag || t == "all");
    if !on {
        eprintln!("skipped: not in HERD_NETNS_PART5={list}");
    }
    on
}

fn part5_options(dead_after_ms: u32) -> Options {
    Options {
        dead_after_ms: Some(dead_after_ms),
        ..Options::default()
    }
}

/// A bed with every server started and every link up both ways.
fn running(options: Options) -> Bed {
    let mut bed = Bed::new(options);
    bed.start_all();
    if let Err(e) = bed.wait_all_linked(DEADLINE) {
        panic!("herd never linked up: {e}");
    }
    bed
}

fn all(bed: &Bed) -> Vec<String> {
    bed.names()
}

fn rec(client: &str, time: &str) -> (String, String) {
    (client.to_string(), time.to_string())
}

fn since(t: SystemTime) -> Duration {
    SystemTime::now().duration_since(t).unwrap_or_default()
}

/// Waits until both ends of every link between `host` and its neighbours have logged the
/// link down since `from` (the link we dialled and the one they dialled, on both sides);
/// Ok(the latest of them, from `from`) or Err(what is still missing).
fn wait_noticed(bed: &Bed, host: &str, from: SystemTime, within: Duration) -> Result<Duration, String> {
    let neighbours = bed.host(host).neighbours.clone();
    let mut latest = Duration::ZERO;
    let mut missing = Vec::new();
    let deadline = Instant::now() + within;
    loop {
        missing.clear();
        for nb in &neighbours {
            for (side, other) in [(host, nb.as_str()), (nb.as_str(), host)] {
                let events = bed.link_events(side, other, from);
                for dir in [Dir::Out, Dir::In] {
                    match events
                        .iter()
                        .find(|(_, d, ev, _)| *d == dir && *ev == LinkEvent::Down)
                    {
                        Some((at, ..)) => latest = latest.max(at.duration_since(from).unwrap_or_default()),
                        None => missing.push(format!("{side} about {other} ({dir:?})")),
                    }
                }
            }
        }
        if missing.is_empty() {
            return Ok(latest);
        }
        if Instant::now() >= deadline {
            return Err(format!("no link-down line from {}", missing.join(", ")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Today's code: five servers in five namespaces, reached by name, flood an IAMAT from
/// Bailey to Jaquez (two hops), and a server killed and restarted catches up.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn five_hosts_propagate_and_a_restarted_server_catches_up() {
    let mut bed = running(Options::default());
    let t1 = now_text();
    bed.iamat("Bailey", "kiwi.cs.ucla.edu", LOC, &t1);
    let took = bed
        .wait_agree(&["Jaquez".into()], &[rec("kiwi.cs.ucla.edu", &t1)], DEADLINE)
        .unwrap_or_else(|e| panic!("Bailey's IAMAT never reached Jaquez: {e}"));
    eprintln!("Bailey -> Jaquez over the bridge: {took:?}");

    bed.kill9("Jaquez");
    let t2 = now_text();
    bed.iamat("Bailey", "lemon", LOC, &t2);
    let others: Vec<String> = all(&bed).into_iter().filter(|n| n != "Jaquez").collect();
    if let Err(e) = bed.wait_agree(&others, &[rec("lemon", &t2)], DEADLINE) {
        panic!("herd without Jaquez: {e}");
    }
    bed.start("Jaquez");
    let want = [rec("kiwi.cs.ucla.edu", &t1), rec("lemon", &t2)];
    let took = bed
        .wait_agree(&["Jaquez".into()], &want, HEAL + SLACK)
        .unwrap_or_else(|e| panic!("restarted Jaquez did not catch up: {e}"));
    eprintln!("restarted Jaquez caught up in {took:?}");
}

/// SPEC §5: a silent partition (every frame of Bailey dropped in the switch, no RST) and an
/// unplugged cable (Clark's port down) are noticed on both sides within dead_after_ms + 1 s.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn silent_partition_is_noticed_on_both_sides() {
    if !part5("partition") {
        return;
    }
    let mut bed = running(part5_options(DEAD_AFTER.as_millis() as u32));
    let bound = DEAD_AFTER + HEARTBEAT + SLACK;

    let t0 = SystemTime::now();
    bed.cut("Bailey");
    let took = wait_noticed(&bed, "Bailey", t0, bound).unwrap_or_else(|e| panic!("cut of Bailey: {e}"));
    eprintln!("cut: noticed on both sides within {took:?}");
    bed.heal("Bailey");
    if let Err(e) = bed.wait_all_linked(HEAL + SLACK) {
        panic!("not relinked after the heal: {e}");
    }

    let t1 = SystemTime::now();
    bed.link_down("Clark");
    let took = wait_noticed(&bed, "Clark", t1, bound).unwrap_or_else(|e| panic!("Clark's cable: {e}"));
    eprintln!("cable out: noticed on both sides within {took:?}");
    bed.link_up("Clark");
    if let Err(e) = bed.wait_all_linked(HEAL + SLACK) {
        panic!("not relinked after the cable came back: {e}");
    }
}

/// SPEC §5: once a partition heals, both sides are linked and caught up within 1 s, never at
/// the pace of TCP's retransmission backoff: records written on both sides during the cut
/// (the first ones while the links still looked up) reach every server.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn healed_partition_catches_up_within_a_second() {
    if !part5("heal") {
        return;
    }
    let mut bed = running(part5_options(DEAD_AFTER.as_millis() as u32));
    let cut_at = Instant::now();
    bed.cut("Bailey");
    let mut want = Vec::new();
    for (host, client) in [("Bailey", "west"), ("Jaquez", "east")] {
        let t = now_text();
        bed.iamat(host, client, LOC, &t);
        want.push(rec(client, &t));
    }
    // Long enough for both sides to give up on the old links and for the kernel's
    // retransmission timers on them to back off to seconds.
    std::thread::sleep(Duration::from_secs(8).saturating_sub(cut_at.elapsed()));
    for (host, client) in [("Bailey", "west2"), ("Jaquez", "east2")] {
        let t = now_text();
        bed.iamat(host, client, LOC, &t);
        want.push(rec(client, &t));
    }
    bed.heal("Bailey");
    let took = bed
        .wait_agree(&all(&bed), &want, HEAL + SLACK)
        .unwrap_or_else(|e| panic!("not caught up after the heal: {e}"));
    eprintln!("heal to every server agreeing: {took:?}");
}

/// SPEC §6 over the bridge: five hosts whose every peer link is mutual TLS link up,
/// flood, and catch up after a silent partition heals. The heal's SPEC §5 bound (1 s) is
/// asserted unless `HERD_NETNS_PART5` leaves `tls-heal` out; then only that the herd
/// agrees again.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn tls_hosts_propagate_and_catch_up_after_a_healed_partition() {
    let strict = std::env::var("HERD_NETNS_PART5").map_or(true, |l| {
        l.split(',').any(|t| matches!(t.trim(), "tls-heal" | "all"))
    });
    let bound = if strict { HEAL + SLACK } else { DEADLINE };
    let mut bed = running(Options {
        tls: true,
        ..part5_options(DEAD_AFTER.as_millis() as u32)
    });
    let t0 = now_text();
    bed.iamat("Bailey", "kiwi", LOC, &t0);
    let took = bed
        .wait_agree(&["Jaquez".into()], &[rec("kiwi", &t0)], DEADLINE)
        .unwrap_or_else(|e| panic!("Bailey's IAMAT never reached Jaquez over TLS: {e}"));
    eprintln!("Bailey -> Jaquez over TLS across the bridge: {took:?}");
    for name in all(&bed) {
        let log = bed.log(&name);
        assert!(log.contains("peer links: mutual TLS 1.3"), "{name} is not on TLS");
        assert!(!log.contains("PRIVATE KEY"), "{name}'s log shows key material");
    }

    let cut_at = Instant::now();
    bed.cut("Bailey");
    let mut want = vec![rec("kiwi", &t0)];
    for (host, client) in [("Bailey", "west"), ("Jaquez", "east")] {
        let t = now_text();
        bed.iamat(host, client, LOC, &t);
        want.push(rec(client, &t));
    }
    // Long enough for the links to be given up on both sides.
    std::thread::sleep((DEAD_AFTER + HEARTBEAT + SLACK).saturating_sub(cut_at.elapsed()));
    bed.heal("Bailey");
    let took = bed
        .wait_agree(&all(&bed), &want, bound)
        .unwrap_or_else(|e| panic!("not caught up over TLS after the heal: {e}"));
    eprintln!("TLS: heal to every server agreeing: {took:?}");
}

/// SPEC §5: a host that loses power (kill -9 and a fresh namespace while cut off, so no FIN
/// or RST reaches its neighbours) and comes back with the same address is linked and caught up within 2 s with
/// no client traffic. dead_after_ms is the default 5 s, far longer than the whole reboot, so
/// the neighbours cannot notice by silence: only by the heartbeat that meets the new
/// kernel's RST.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn rebooted_host_is_caught_up_without_client_traffic() {
    if !part5("reboot") {
        return;
    }
    let mut bed = running(part5_options(5000));
    let mut want = Vec::new();
    for name in all(&bed) {
        for i in 0..4 {
            let client = format!("{name}-client-{i}");
            let t = now_text();
            bed.iamat(&name, &client, LOC, &t);
            want.push((client, t));
        }
    }
    if let Err(e) = bed.wait_agree(&all(&bed), &want, DEADLINE) {
        panic!("no agreement before the reboot: {e}");
    }
    bed.cut("Jaquez");
    bed.reboot("Jaquez");
    bed.heal("Jaquez");
    let healed = Instant::now();
    let took = bed
        .wait_agree(&["Jaquez".into()], &want, REBOOT + SLACK)
        .unwrap_or_else(|e| panic!("rebooted Jaquez not caught up: {e}"));
    eprintln!("rebooted Jaquez caught up {took:?} after the heal");
    let left = (REBOOT + SLACK).saturating_sub(healed.elapsed());
    if let Err(e) = bed.wait_all_linked(left) {
        panic!("rebooted Jaquez not linked both ways: {e}");
    }
}

/// SPEC §5: when a HELLO arrives from a neighbour whose dial is still in progress (its SYN
/// lost), the server abandons that dial and dials at once. Bona is down and every dial to
/// it hangs; at a moment when each neighbour has such a dial (one of them started within
/// 300 ms, so it has well over a second to hang), those dials are pinned (their frames keep
/// being dropped) and Bona comes up. Each neighbour must link to it within 0.5 s, and Bona
/// gets a record only they can bring it.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn hello_during_a_hung_dial_is_answered_at_once() {
    if !part5("hung_dial") {
        return;
    }
    let mut bed = running(part5_options(DEAD_AFTER.as_millis() as u32));
    bed.kill9("Bona");
    let peer_port = bed.host("Bona").peer_port;
    bed.drop_syns("Bona", peer_port);
    let t = now_text();
    bed.iamat("Bailey", "plum", LOC, &t);
    let neighbours = bed.host("Bona").neighbours.clone();

    let found = support::eventually(Duration::from_secs(15), || {
        let mut fresh = false;
        let mut all_hung = Vec::new();
        for nb in &neighbours {
            let dials = bed.hung_dials(nb, "Bona");
            if dials.is_empty() {
                return None;
            }
            fresh |= dials
                .iter()
                .any(|(_, age)| age.is_some_and(|a| a < Duration::from_millis(300)));
            let addr = bed.host(nb).addr;
            all_hung.extend(dials.iter().map(|(sport, _)| (addr, *sport)));
        }
        fresh.then_some(all_hung)
    });
    let flows: Vec<(Ipv4Addr, u16)> =
        found.unwrap_or_else(|| panic!("never saw every neighbour of Bona in a hung dial at once"));
    bed.pin_and_allow_syns("Bona", &flows);
    let started = SystemTime::now();
    bed.start("Bona");
    // Bona's own dial (and so its HELLO) may come before `start` sees it listening, so
    // links are counted from its start: a stricter clock than from its HELLO.
    eprintln!(
        "Bona up {:?} after its start; pinned dials {flows:?}",
        since(started)
    );

    let bound = AT_ONCE + SLACK / 4;
    for nb in &neighbours {
        let linked = support::eventually(bound, || {
            bed.link_events(nb, "Bona", started)
                .into_iter()
                .find(|(_, d, ev, _)| *d == Dir::Out && *ev == LinkEvent::Up)
                .map(|(at, ..)| at)
        });
        match linked {
            Some(at) => eprintln!(
                "{nb} linked to Bona {:?} after its start",
                at.duration_since(started).unwrap_or_default()
            ),
            None => {
                let seen: Vec<String> = bed
                    .link_events(nb, "Bona", started - Duration::from_secs(3))
                    .into_iter()
                    .map(|(.., text)| text)
                    .collect();
                panic!(
                    "{nb} did not dial Bona within {bound:?} of its HELLO (its dial to it was hanging); its log:\n{}",
                    seen.join("\n")
                )
            }
        }
    }
    if let Err(e) = bed.wait_agree(&["Bona".into()], &[rec("plum", &t)], bound) {
        panic!("Bona not caught up: {e}");
    }
}

/// Pipelines IAMATs for one client with ever newer times into a server, reading and
/// discarding the replies, until stopped.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    stream: std::net::TcpStream,
    sent: Arc<Mutex<u64>>,
}

impl Traffic {
    fn start(bed: &Bed, at: &str, client: &str) -> Traffic {
        let c = bed.client(at);
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(Mutex::new(0u64));
        let mut writer = c.stream.try_clone().expect("clone");
        let mut reader = c.stream.try_clone().expect("clone");
        let _ = writer.set_write_timeout(Some(Duration::from_secs(1)));
        let _ = reader.set_read_timeout(Some(Duration::from_millis(200)));
        let base = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let client = client.to_string();
        let (s1, s2, n) = (stop.clone(), stop.clone(), sent.clone());
        let w = std::thread::spawn(move || {
            use std::io::Write;
            let mut k: u64 = 0;
            while !s1.load(Ordering::Relaxed) {
                let mut batch = String::new();
                for _ in 0..16 {
                    k += 1;
                    batch += &format!("IAMAT {client} {LOC} {base}.{k:09}\n");
                }
                if writer.write_all(batch.as_bytes()).is_err() {
                    break;
                }
                *n.lock().unwrap_or_else(|e| e.into_inner()) = k;
            }
        });
        let r = std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = vec![0u8; 1 << 16];
            while !s2.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
        });
        Traffic {
            stop,
            threads: vec![w, r],
            stream: c.stream,
            sent,
        }
    }

    fn sent(&self) -> u64 {
        *self.sent.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(std::net::Shutdown::Both);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// SPEC §5: a neighbour that does not read (SIGSTOPped; its kernel still accepts and
/// acknowledges) costs at most one table resend per backoff: after the k-th consecutive
/// drop the redial waits at least the ordinary backoff doubled k-1 times (50 ms base, less
/// at most 25% jitter), and the first such drop is a warning. Only Bailey and Bona run, and
/// the records are 7 KB each, so the 8 MiB bound fills fast and the logs stay small.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn frozen_neighbour_costs_one_table_resend_per_backoff() {
    if !part5("frozen") {
        return;
    }
    const BASE: Duration = Duration::from_millis(50);
    const CAP: Duration = Duration::from_secs(30);
    const DROPS: usize = 4;
    let mut bed = Bed::new(part5_options(DEAD_AFTER.as_millis() as u32));
    bed.start("Bailey");
    bed.start("Bona");
    if let Err(e) = bed.wait_all_linked(DEADLINE) {
        panic!("Bailey and Bona never linked: {e}");
    }
    let client = format!("frozen-{}", "x".repeat(7000));
    let t0 = SystemTime::now();
    bed.sigstop("Bona");
    let traffic = Traffic::start(&bed, "Bailey", &client);

    // (drop time, its line, time of the redial that followed)
    let cycles = || -> Vec<(SystemTime, String, Option<SystemTime>)> {
        let mut out: Vec<(SystemTime, String, Option<SystemTime>)> = Vec::new();
        for (at, dir, ev, text) in bed.link_events("Bailey", "Bona", t0) {
            if dir != Dir::Out {
                continue;
            }
            match ev {
                LinkEvent::Down => out.push((at, text, None)),
                LinkEvent::Up => {
                    if let Some(last) = out.last_mut()
                        && last.2.is_none()
                    {
                        last.2 = Some(at);
                    }
                }
            }
        }
        out
    };
    let _ = support::eventually(Duration::from_secs(35), || {
        let c = cycles();
        (c.iter().filter(|c| c.2.is_some()).count() >= DROPS).then_some(())
    });
    let sent = traffic.sent();
    drop(traffic);
    let seen = cycles();
    eprintln!(
        "{sent} IAMATs of 7 KB sent; {} drops of the link to frozen Bona",
        seen.len()
    );
    let mut delay = BASE;
    for (k, (down, line, up)) in seen.iter().enumerate() {
        let Some(up) = up else { break };
        let gap = up.duration_since(*down).unwrap_or_default();
        let least = delay.min(CAP) * 3 / 4;
        eprintln!(
            "drop {}: redialled after {gap:?} (at least {least:?}): {line}",
            k + 1
        );
        assert!(
            gap >= least,
            "drop {} of the link to frozen Bona was redialled after {gap:?}, before the backoff ({least:?}): {line}",
            k + 1
        );
        delay *= 2;
    }
    if let Some((_, line, _)) = seen.first() {
        assert!(line.contains("WARN"), "the first drop is not a warning: {line}");
    }

    bed.sigcont("Bona");
    let t = now_text();
    bed.iamat("Bailey", &client, LOC, &t);
    if let Err(e) = bed.wait_agree(&["Bona".into()], &[rec(&client, &t)], DEADLINE) {
        panic!("Bona did not catch up once thawed: {e}");
    }
}

/// 20% of the packets to Campbell (the herd's hub: three neighbours) lost for 20 s, while
/// every server takes an IAMAT each second: no link flaps (not one link-down line), and
/// every server agrees. With the default dead_after_ms (5 s); 1 s would make TCP itself
/// give up on a segment three times unlucky in a row, which 20% loss makes likely.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn lossy_link_does_not_flap_and_the_herd_agrees() {
    let mut bed = running(Options::default());
    let t0 = SystemTime::now();
    bed.loss("Campbell", 20);
    let start = Instant::now();
    let mut want: Vec<(String, String)> = Vec::new();
    for round in 0..20u32 {
        std::thread::sleep((Duration::from_secs(u64::from(round))).saturating_sub(start.elapsed()));
        for name in all(&bed) {
            let client = format!("lossy-{name}");
            let t = now_text();
            bed.iamat(&name, &client, LOC, &t);
            want.retain(|(c, _)| *c != client);
            want.push((client, t));
        }
    }
    // Still lossy: retransmissions must get every record through.
    let took = bed
        .wait_agree(&all(&bed), &want, DEADLINE)
        .unwrap_or_else(|e| panic!("no agreement under 20% loss: {e}"));
    eprintln!("agreement {took:?} after the last round, under loss");
    bed.heal("Campbell");
    let mut flaps = Vec::new();
    for name in all(&bed) {
        for nb in &bed.host(&name).neighbours {
            for (at, dir, ev, text) in bed.link_events(&name, nb, t0) {
                if ev == LinkEvent::Down {
                    flaps.push(format!(
                        "{name} {dir:?} at +{:?}: {text}",
                        at.duration_since(t0).unwrap_or_default()
                    ));
                }
            }
        }
    }
    assert!(
        flaps.is_empty(),
        "links flapped under 20% loss:\n{}",
        flaps.join("\n")
    );
}

/// SPEC §5: a neighbour's name is resolved at each dial; one that does not resolve yet is a
/// failed dial (logged, retried), not a start-up error. Bailey starts with neither of its
/// neighbours' names in its hosts file, serves clients, and once the names appear it links
/// up and its record reaches them within a second.
#[test]
#[ignore = "needs root and network namespaces: run with `cargo test --test netns -- --ignored --test-threads=1` (.ci/run does when root)"]
fn unresolvable_neighbour_is_dialled_once_its_name_resolves() {
    if !part5("names") {
        return;
    }
    let mut bed = Bed::new(part5_options(DEAD_AFTER.as_millis() as u32));
    bed.hide_names("Bailey", &["Bona", "Campbell"]);
    let t0 = SystemTime::now();
    bed.start_all();
    let t = now_text();
    let asked = Instant::now();
    bed.iamat("Bailey", "fig", LOC, &t);
    assert!(
        asked.elapsed() < Duration::from_secs(1),
        "Bailey's reply waited {:?}",
        asked.elapsed()
    );
    for nb in ["Bona", "Campbell"] {
        let failed = support::eventually(HEAL + SLACK, || {
            bed.link_events("Bailey", nb, t0)
                .into_iter()
                .find(|(_, d, ev, _)| *d == Dir::Out && *ev == LinkEvent::Down)
        });
        assert!(
            failed.is_some(),
            "Bailey logged no failed dial to {nb} (its name does not resolve)"
        );
    }
    assert!(
        bed.record("Bona", "fig").is_none(),
        "Bona has Bailey's record, which no link could carry"
    );

    bed.hide_names("Bailey", &[]);
    let took = bed
        .wait_agree(&all(&bed), &[rec("fig", &t)], HEAL + SLACK)
        .unwrap_or_else(|e| panic!("not caught up once the names resolve: {e}"));
    eprintln!("names resolve -> every server has Bailey's record: {took:?}");
    if let Err(e) = bed.wait_all_linked(SLACK) {
        panic!("not linked once the names resolve: {e}");
    }
}

/// The closing note's figures, not a check: `HERD_NETNS_MEASURE=<trials>` runs that many
/// silent cuts of Bailey (cut -> link down on both sides; heal -> every server agrees on
/// records written on both sides during the cut) and reboots of Jaquez with no traffic
/// (heal -> caught up), and prints p50 and max. Each bound is still asserted.
#[test]
#[ignore = "a measurement: HERD_NETNS_MEASURE=10 cargo test --test netns measure -- --ignored --nocapture (root)"]
fn measure_cut_heal_and_reboot() {
    let Some(trials) = std::env::var("HERD_NETNS_MEASURE")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    else {
        eprintln!("skipped: a measurement; run with HERD_NETNS_MEASURE=<trials>");
        return;
    };
    let mut bed = running(part5_options(DEAD_AFTER.as_millis() as u32));
    let (mut noticed, mut healed, mut rebooted) = (Vec::new(), Vec::new(), Vec::new());
    for k in 0..trials {
        let t0 = SystemTime::now();
        let cut_at = Instant::now();
        bed.cut("Bailey");
        let took = wait_noticed(&bed, "Bailey", t0, DEAD_AFTER + HEARTBEAT + SLACK)
            .unwrap_or_else(|e| panic!("trial {k}: {e}"));
        noticed.push(took);
        let mut want = Vec::new();
        for (host, client) in [("Bailey", "west"), ("Jaquez", "east")] {
            let t = now_text();
            bed.iamat(host, &format!("{client}-{k}"), LOC, &t);
            want.push(rec(&format!("{client}-{k}"), &t));
        }
        std::thread::sleep(Duration::from_secs(4).saturating_sub(cut_at.elapsed()));
        bed.heal("Bailey");
        let took = bed
            .wait_agree(&all(&bed), &want, HEAL + SLACK)
            .unwrap_or_else(|e| panic!("trial {k}: not caught up after the heal: {e}"));
        healed.push(took);
        if let Err(e) = bed.wait_all_linked(DEADLINE) {
            panic!("trial {k}: not relinked: {e}");
        }
    }
    let mut want = Vec::new();
    for k in 0..trials {
        let t = now_text();
        bed.iamat("Bailey", &format!("boot-{k}"), LOC, &t);
        want.push(rec(&format!("boot-{k}"), &t));
        if let Err(e) = bed.wait_agree(&all(&bed), &want, DEADLINE) {
            panic!("reboot {k}: no agreement before: {e}");
        }
        bed.cut("Jaquez");
        bed.reboot("Jaquez");
        bed.heal("Jaquez");
        let took = bed
            .wait_agree(&["Jaquez".into()], &want, REBOOT + SLACK)
            .unwrap_or_else(|e| panic!("reboot {k}: not caught up: {e}"));
        rebooted.push(took);
        if let Err(e) = bed.wait_all_linked(DEADLINE) {
            panic!("reboot {k}: not relinked: {e}");
        }
    }
    for (what, v) in [
        ("silent cut -> link down on both sides", &mut noticed),
        ("heal -> every server agrees", &mut healed),
        ("reboot (no traffic) -> caught up", &mut rebooted),
    ] {
        v.sort();
        eprintln!(
            "{what}: {} trials, p50 {:?}, max {:?}",
            v.len(),
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
}

// ---- the log parsing the scenarios rely on (no root needed) ----

#[test]
fn link_events_are_read_from_todays_log_lines() {
    let cases = [
        (
            "[INFO] link to Bona (10.213.0.2:20044): up; sent HELLO and 3 records",
            Some((Dir::Out, LinkEvent::Up)),
        ),
        (
            "[INFO] link to Bona (10.213.0.2:20044): up -> down: Connection reset by peer (os error 104); retry in 50 ms",
            Some((Dir::Out, LinkEvent::Down)),
        ),
        ("[DEBUG] link to Bona (10.213.0.2:20044): connecting", None),
        (
            "[INFO] link to Bona (10.213.0.2:20044): connecting -> down: Connection refused (os error 111); retry in 92 ms",
            Some((Dir::Out, LinkEvent::Down)),
        ),
        (
            "[INFO] link from Bona (10.213.0.2:41234): up (HELLO)",
            Some((Dir::In, LinkEvent::Up)),
        ),
        (
            "[INFO] link from Bona (10.213.0.2:41234): dropped: end of stream",
            Some((Dir::In, LinkEvent::Down)),
        ),
        (
            "[INFO] link to Bonanza (10.213.0.9:1): up; sent HELLO and 0 records",
            None,
        ),
        (
            "[INFO] 10.213.0.1:5555 recv: IAMAT Bona +1+1 1 | sent: AT Bailey +0.1 Bona +1+1 1",
            None,
        ),
    ];
    for (line, want) in cases {
        assert_eq!(link_event(line, "Bona"), want, "{line}");
    }
}

#[test]
fn log_timestamps_are_parsed_to_the_nanosecond() {
    let t = parse_rfc3339("2026-11-24T00:26:29.397918777Z").expect("parses");
    let d = t.duration_since(SystemTime::UNIX_EPOCH).expect("after 1970");
    // date -u -d 2026-11-24T00:26:29Z +%s
    assert_eq!(d.as_secs(), 1_795_479_989);
    assert_eq!(d.subsec_nanos(), 397_918_777);
    let leap = parse_rfc3339("2024-02-29T23:59:59.5Z").expect("parses");
    assert_eq!(
        leap.duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .ok(),
        Some(1_709_251_199_500)
    );
    assert!(parse_rfc3339("2026-11-24 00:26:29").is_none());
}
