//! `herd status`: one row per server from its admin endpoint's `/metrics` (SPEC §8).
//!
//! Every server is asked at once, each from a thread of its own, and every socket step is
//! bounded by one overall deadline, so a herd with dead or stalled servers still answers
//! within the timeout. Messages/s comes from two scrapes about 200 ms apart, divided by
//! the difference of the server's own `herd_uptime_seconds` (so our scheduling does not
//! skew it): what the server does now, not its average since start. If the second scrape
//! fails, the row shows the average since start instead, marked `~`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// The most of a `/metrics` reply we read; herd's is a few KiB.
const MAX_REPLY: usize = 1 << 20;

/// The figures a row needs, from one scrape.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Scrape {
    pub uptime_s: f64,
    pub clients: u64,
    pub links_up: u64,
    pub links_total: u64,
    pub messages: u64,
    pub places_calls: u64,
    /// Places answers whose status is neither `OK` nor `ZERO_RESULTS`.
    pub places_errors: u64,
}

#[derive(Debug)]
pub enum ProbeError {
    NoAdminPort,
    Connect(io::Error),
    Io(io::Error),
    TimedOut,
    /// Not an HTTP 200 with a body, or missing `herd_up 1`.
    BadReply(String),
}

impl fmt::Display for ProbeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProbeError::NoAdminPort => f.write_str("no admin_port in the config"),
            ProbeError::Connect(e) => write!(f, "cannot connect: {e}"),
            ProbeError::Io(e) => write!(f, "scrape failed: {e}"),
            ProbeError::TimedOut => f.write_str("timed out"),
            ProbeError::BadReply(why) => write!(f, "bad reply: {why}"),
        }
    }
}

/// One server's outcome: a scrape and the message rate, or why it is down.
struct Row {
    name: String,
    result: Result<(Scrape, Rate), ProbeError>,
}

enum Rate {
    Recent(f64),
    SinceStart(f64),
}

/// Asks every server, prints the table to `out`, and says whether the herd is whole:
/// every server up and every link (each direction counted) up.
pub fn run(servers: &[(String, Option<SocketAddr>)], timeout: Duration, out: &mut impl Write) -> bool {
    let started = Instant::now();
    let threads: Vec<_> = servers
        .iter()
        .map(|(name, addr)| {
            let (name, addr) = (name.clone(), *addr);
            std::thread::spawn(move || Row {
                result: addr
                    .ok_or(ProbeError::NoAdminPort)
                    .and_then(|a| probe(a, started, timeout)),
                name,
            })
        })
        .collect();
    let rows: Vec<Row> = threads
        .into_iter()
        .zip(servers)
        .map(|(t, (name, _))| {
            t.join().unwrap_or_else(|_| Row {
                name: name.clone(),
                result: Err(ProbeError::BadReply("probe thread failed".into())),
            })
        })
        .collect();
    let _ = print_rows(&rows, out);
    rows.iter()
        .all(|r| matches!(&r.result, Ok((s, _)) if s.links_up == s.links_total))
}

/// Two scrapes ~timeout/5 apart, the first bounded to 60% of the time, the second to all.
fn probe(addr: SocketAddr, started: Instant, timeout: Duration) -> Result<(Scrape, Rate), ProbeError> {
    let first = scrape(addr, started + timeout * 6 / 10)?;
    let gap_end = Instant::now() + timeout / 5;
    std::thread::sleep(gap_end.saturating_duration_since(Instant::now()));
    let average = || {
        if first.uptime_s > 0.0 {
            first.messages as f64 / first.uptime_s
        } else {
            0.0
        }
    };
    let rate = match scrape(addr, started + timeout) {
        Ok(second) if second.uptime_s > first.uptime_s && second.messages >= first.messages => {
            Rate::Recent((second.messages - first.messages) as f64 / (second.uptime_s - first.uptime_s))
        }
        _ => Rate::SinceStart(average()),
    };
    Ok((first, rate))
}

fn remaining(deadline: Instant) -> Result<Duration, ProbeError> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(ProbeError::TimedOut)
    } else {
        Ok(left)
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

/// `GET /metrics` by `deadline`, parsed.
fn scrape(addr: SocketAddr, deadline: Instant) -> Result<Scrape, ProbeError> {
    let mut s = TcpStream::connect_timeout(&addr, remaining(deadline)?).map_err(|e| {
        if timed_out(&e) {
            ProbeError::TimedOut
        } else {
            ProbeError::Connect(e)
        }
    })?;
    let io = |e: io::Error| {
        if timed_out(&e) {
            ProbeError::TimedOut
        } else {
            ProbeError::Io(e)
        }
    };
    s.set_write_timeout(Some(remaining(deadline)?)).map_err(io)?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: herd\r\nConnection: close\r\n\r\n")
        .map_err(io)?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        s.set_read_timeout(Some(remaining(deadline)?)).map_err(io)?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => reply.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(io(e)),
        }
        if reply.len() > MAX_REPLY {
            return Err(ProbeError::BadReply("more than 1 MiB".into()));
        }
    }
    let text = String::from_utf8_lossy(&reply);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(ProbeError::BadReply("no HTTP head".into()));
    };
    let status = head.lines().next().unwrap_or("");
    if !status.starts_with("HTTP/1.1 200 ") && !status.starts_with("HTTP/1.0 200 ") {
        return Err(ProbeError::BadReply(format!("`{status}`")));
    }
    parse(body)
}

/// The few samples `status` needs from a text-format exposition.
pub fn parse(body: &str) -> Result<Scrape, ProbeError> {
    let mut s = Scrape::default();
    let mut up = false;
    for line in body.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let labels = match line[name_end..].strip_prefix('{') {
            Some(rest) => rest.rsplit_once('}').map_or("", |(l, _)| l),
            None => "",
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let count = if value.is_finite() && value > 0.0 {
            value as u64
        } else {
            0
        };
        match name {
            "herd_up" => up = value == 1.0,
            "herd_uptime_seconds" => s.uptime_s = value,
            "herd_table_clients" => s.clients = count,
            "herd_link_up" => {
                s.links_total += 1;
                s.links_up += u64::from(value == 1.0);
            }
            "herd_messages_total" => s.messages += count,
            "herd_places_calls_total" => {
                s.places_calls += count;
                if !matches!(label(labels, "status"), Some("OK" | "ZERO_RESULTS")) {
                    s.places_errors += count;
                }
            }
            _ => {}
        }
    }
    if up {
        Ok(s)
    } else {
        Err(ProbeError::BadReply("no `herd_up 1`".into()))
    }
}

/// A label's value from `a="x",b="y"` (herd's own values hold no escaped quotes).
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.split(',').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k.trim() == key).then(|| v.trim().trim_matches('"'))
    })
}

fn print_rows(rows: &[Row], out: &mut impl Write) -> io::Result<()> {
    let w = rows.iter().map(|r| r.name.len()).max().unwrap_or(0).max(6);
    writeln!(
        out,
        "{:<w$}  {:<5}  {:>8}  {:>8}  {:>6}  {:>9}  {:>7}  {:>6}",
        "SERVER", "STATE", "UPTIME", "CLIENTS", "LINKS", "MSG/S", "PLACES", "ERRORS"
    )?;
    for row in rows {
        match &row.result {
            Ok((s, rate)) => {
                let rate = match rate {
                    Rate::Recent(r) => format!("{r:.1}"),
                    Rate::SinceStart(r) => format!("~{r:.1}"),
                };
                writeln!(
                    out,
                    "{:<w$}  {:<5}  {:>8}  {:>8}  {:>6}  {:>9}  {:>7}  {:>6}",
                    row.name,
                    "up",
                    uptime(s.uptime_s),
                    s.clients,
                    format!("{}/{}", s.links_up, s.links_total),
                    rate,
                    s.places_calls,
                    s.places_errors
                )?;
            }
            Err(e) => writeln!(out, "{:<w$}  {:<5}  {e}", row.name, "down")?,
        }
    }
    Ok(())
}

/// `42s`, `12m05s`, `3h07m`, `2d03h`.
fn uptime(seconds: f64) -> String {
    let s = if seconds.is_finite() && seconds > 0.0 {
        seconds as u64
    } else {
        0
    };
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86400, s % 86400 / 3600),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{self, Direction, LinkId, Metrics, PlacesView};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    const TIMEOUT: Duration = Duration::from_secs(1);

    /// A canned admin endpoint: answers every connection with `body(n)` for the n-th one.
    fn fake(body: impl Fn(u64) -> String + Send + 'static) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let served = AtomicU64::new(0);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut s) = stream else { continue };
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf);
                let b = body(served.fetch_add(1, Ordering::Relaxed));
                let reply = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{b}",
                    b.len()
                );
                let _ = s.write_all(reply.as_bytes());
            }
        });
        addr
    }

    /// Metrics text for a server whose counters move between scrapes: 100 messages and
    /// 0.2 s of uptime per scrape, so its recent rate is exactly 500/s.
    fn moving(links_up: &'static [u8]) -> impl Fn(u64) -> String {
        move |n| {
            let mut t = format!(
                "# HELP herd_up x\n# TYPE herd_up gauge\nherd_up 1\nherd_uptime_seconds {}\nherd_table_clients 42\n\
                 herd_messages_total{{kind=\"IAMAT\"}} {}\nherd_messages_total{{kind=\"invalid\"}} 0\n\
                 herd_places_calls_total{{status=\"OK\"}} 7\nherd_places_calls_total{{status=\"ZERO_RESULTS\"}} 1\n\
                 herd_places_calls_total{{status=\"UNKNOWN_ERROR\"}} 2\n",
                3700.0 + 0.2 * n as f64,
                1000 + 100 * n
            );
            for (i, up) in links_up.iter().enumerate() {
                t.push_str(&format!(
                    "herd_link_up{{neighbour=\"N{i}\",direction=\"out\"}} {up}\n"
                ));
            }
            t
        }
    }

    fn closed_port() -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    }

    fn status(servers: &[(&str, Option<SocketAddr>)]) -> (bool, String) {
        let servers: Vec<_> = servers.iter().map(|(n, a)| (n.to_string(), *a)).collect();
        let mut out = Vec::new();
        let ok = run(&servers, TIMEOUT, &mut out);
        (ok, String::from_utf8_lossy(&out).into_owned())
    }

    fn row<'a>(out: &'a str, name: &str) -> Vec<&'a str> {
        let line = out
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{out}"));
        line.split_whitespace().collect()
    }

    #[test]
    fn a_whole_herd_is_ok() {
        let a = fake(moving(&[1, 1]));
        let b = fake(moving(&[1]));
        let (ok, out) = status(&[("Bailey", Some(a)), ("Bona", Some(b))]);
        assert!(ok, "{out}");
        assert!(out.starts_with("SERVER"), "{out}");
        assert_eq!(
            row(&out, "Bailey"),
            ["Bailey", "up", "1h01m", "42", "2/2", "500.0", "10", "2"],
            "{out}"
        );
        assert_eq!(row(&out, "Bona")[4], "1/1");
    }

    #[test]
    fn a_link_down_or_a_server_down_fails() {
        let a = fake(moving(&[1, 0]));
        let (ok, out) = status(&[("Bailey", Some(a))]);
        assert!(!ok, "{out}");
        assert_eq!(row(&out, "Bailey")[4], "1/2");

        let good = fake(moving(&[1]));
        let (ok, out) = status(&[
            ("Bailey", Some(good)),
            ("Bona", Some(closed_port())),
            ("Clark", None),
        ]);
        assert!(!ok, "{out}");
        assert_eq!(row(&out, "Bona")[..3], ["Bona", "down", "cannot"], "{out}");
        assert!(
            row(&out, "Clark").join(" ").contains("down no admin_port"),
            "{out}"
        );
        assert_eq!(row(&out, "Bailey")[1], "up");
    }

    #[test]
    fn a_stalled_server_is_down_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let stalled = listener.local_addr().expect("addr");
        let good = fake(moving(&[]));
        let started = Instant::now();
        let (ok, out) = status(&[("Bailey", Some(stalled)), ("Bona", Some(good))]);
        assert!(!ok, "{out}");
        assert!(row(&out, "Bailey").join(" ").contains("down timed out"), "{out}");
        assert_eq!(row(&out, "Bona")[1], "up", "{out}");
        // Generous: the bound is the timeout, the margin is for a loaded test machine.
        assert!(started.elapsed() < TIMEOUT * 3, "{:?}", started.elapsed());
        drop(listener);
    }

    #[test]
    fn a_second_scrape_failing_falls_back_to_the_average() {
        let addr = fake(|n| if n == 0 { moving(&[])(0) } else { "junk".into() });
        let (ok, out) = status(&[("Bailey", Some(addr))]);
        assert!(ok, "{out}");
        // 1000 messages in 3700 s.
        assert_eq!(row(&out, "Bailey")[5], "~0.3", "{out}");
    }

    #[test]
    fn parses_what_the_real_renderer_writes() {
        let m = Metrics::new(&["Bona".to_string(), "Campbell".to_string()]);
        m.set_table_clients(9);
        m.message(metrics::MessageKind::Whatsat);
        m.message(metrics::MessageKind::Invalid);
        if let Some(l) = m.link(LinkId(1)) {
            l.set_up(Direction::In, true);
            l.set_up(Direction::Out, true);
        }
        let places = PlacesView {
            calls_by_status: vec![("OK", 3), ("REQUEST_DENIED", 4), ("ZERO_RESULTS", 1)],
            ..PlacesView::idle()
        };
        let mut text = String::new();
        metrics::render(&Arc::new(m), &places, &mut text);
        let s = parse(&text).expect("parses");
        assert_eq!(
            (
                s.clients,
                s.links_up,
                s.links_total,
                s.messages,
                s.places_calls,
                s.places_errors
            ),
            (9, 2, 4, 2, 8, 4)
        );
        assert!(matches!(parse("herd_up 0\n"), Err(ProbeError::BadReply(_))));
    }

    #[test]
    fn reads_a_real_admin_endpoint() {
        let m = Arc::new(Metrics::new(&["Bona".to_string()]));
        let admin = crate::admin::Admin::start(
            "127.0.0.1:0".parse().expect("addr"),
            Arc::clone(&m),
            Box::new(PlacesView::idle),
            Box::new(String::new),
        )
        .expect("admin starts");
        m.set_table_clients(5);
        let (ok, out) = status(&[("Bailey", Some(admin.local_addr()))]);
        assert!(!ok, "links are down: {out}");
        assert_eq!(row(&out, "Bailey")[1..5], ["up", "0s", "5", "0/2"], "{out}");
        if let Some(l) = m.link(LinkId(0)) {
            l.set_up(Direction::Out, true);
            l.set_up(Direction::In, true);
        }
        let (ok, out) = status(&[("Bailey", Some(admin.local_addr()))]);
        assert!(ok, "{out}");
    }

    #[test]
    fn uptimes_read_well() {
        assert_eq!(uptime(42.9), "42s");
        assert_eq!(uptime(725.0), "12m05s");
        assert_eq!(uptime(3.0 * 3600.0 + 7.0 * 60.0), "3h07m");
        assert_eq!(uptime(2.0 * 86400.0 + 3.0 * 3600.0), "2d03h");
        assert_eq!(uptime(f64::NAN), "0s");
    }
}
