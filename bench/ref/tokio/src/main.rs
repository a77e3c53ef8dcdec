//! herd's SPEC §2–§3 in idiomatic tokio: a reference server for bench/report, not the
//! product. What a competent engineer writes in a day with tokio: a task per connection,
//! an ordered reply channel to a per-connection writer task (a WHATSAT's reply is a
//! spawned task's handle, so later replies wait behind it), one dialler task per
//! neighbour fed by an mpsc channel, the location table behind a Mutex, reqwest for
//! Places, and a buffered log file flushed every 20 ms.
//!
//! ```text
//! herd-tokio [--config herd.yml] NAME
//! ```

use std::collections::HashMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;

const NEW_PATH: &str = "/v1/places:searchNearby";
const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";
const FIELD_MASK: &str = "places.displayName,places.id,places.location,places.formattedAddress,places.types,places.rating,places.userRatingCount,places.businessStatus";
/// Records queued to one neighbour before a link that does not read is dropped.
const LINK_QUEUE: usize = 64 * 1024;
/// Replies queued to one client's writer before its reader waits (backpressure).
const REPLY_QUEUE: usize = 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

// ---- configuration ------------------------------------------------------------------

#[derive(Deserialize)]
struct Config {
    servers: HashMap<String, ServerCfg>,
    #[serde(default)]
    places: PlacesCfg,
    #[serde(default)]
    log: LogCfg,
    #[serde(default)]
    limits: Limits,
}

#[derive(Deserialize)]
struct ServerCfg {
    #[serde(default = "localhost")]
    host: String,
    port: u16,
    peer_port: u16,
    #[serde(default)]
    neighbours: Vec<String>,
}

#[derive(Deserialize)]
#[serde(default)]
struct PlacesCfg {
    api: String,
    url: Option<String>,
    key_env: String,
    timeout_ms: u64,
}

impl Default for PlacesCfg {
    fn default() -> Self {
        PlacesCfg {
            api: "new".into(),
            url: None,
            key_env: "GOOGLE_PLACES_API_KEY".into(),
            timeout_ms: 5000,
        }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct LogCfg {
    dir: String,
}

impl Default for LogCfg {
    fn default() -> Self {
        LogCfg { dir: "logs".into() }
    }
}

#[derive(Deserialize)]
#[serde(default)]
struct Limits {
    max_line: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_line: 8192 }
    }
}

fn localhost() -> String {
    "127.0.0.1".into()
}

// ---- the log: buffered, flushed every 20 ms ------------------------------------------

struct Log(Mutex<std::io::BufWriter<std::fs::File>>);

impl Log {
    fn line(&self, level: &str, msg: std::fmt::Arguments<'_>) {
        let mut out = lock(&self.0);
        let _ = writeln!(out, "{} [{level}] {msg}", rfc3339(SystemTime::now()));
    }

    fn flush(&self) {
        let _ = lock(&self.0).flush();
    }
}

macro_rules! info { ($s:expr, $($a:tt)*) => { $s.log.line("INFO", format_args!($($a)*)) } }
macro_rules! warn { ($s:expr, $($a:tt)*) => { $s.log.line("WARN", format_args!($($a)*)) } }

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// UTC `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ` (civil-from-days, Howard Hinnant's algorithm).
fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86400), secs.rem_euclid(86400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:09}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_nanos()
    )
}

/// Bytes as one printable log line.
struct Shown<'a>(&'a [u8]);

impl std::fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for c in String::from_utf8_lossy(self.0).chars() {
            if c.is_control() {
                write!(f, "{}", c.escape_default())?;
            } else {
                f.write_char(c)?;
            }
        }
        Ok(())
    }
}

// ---- protocol: pure functions over bytes ----------------------------------------------

fn fields(line: &[u8]) -> Vec<&[u8]> {
    line.split(|b| b" \t\r\n\x0b\x0c".contains(b))
        .filter(|f| !f.is_empty())
        .collect()
}

fn is_decimal(t: &[u8]) -> bool {
    let (int, frac) = match t.iter().position(|&b| b == b'.') {
        Some(i) => (&t[..i], Some(&t[i + 1..])),
        None => (t, None),
    };
    !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.is_none_or(|f| !f.is_empty() && f.iter().all(u8::is_ascii_digit))
}

/// `t` (a decimal) ≤ `max`, exactly on the text.
fn at_most(t: &[u8], max: u64) -> bool {
    let (int, frac) = t.split_at(t.iter().position(|&b| b == b'.').unwrap_or(t.len()));
    let int: Vec<u8> = int.iter().copied().skip_while(|&b| b == b'0').collect();
    let Some(n) = std::str::from_utf8(&int)
        .ok()
        .filter(|s| s.len() <= 19)
        .map(|s| s.parse::<u64>().unwrap_or(0))
    else {
        return false;
    };
    n < max || (n == max && frac.iter().all(|&b| b == b'0' || b == b'.'))
}

/// `[+-]D+(.D+)?[+-]D+(.D+)?` with |lat| ≤ 90, |lng| ≤ 180 -> (lat, lng).
fn parse_location(t: &[u8]) -> Option<(f64, f64)> {
    if t.len() < 4 || !matches!(t[0], b'+' | b'-') {
        return None;
    }
    let split = 1 + t[1..].iter().position(|&b| b == b'+' || b == b'-')?;
    let (lat, lng) = (&t[..split], &t[split..]);
    if !is_decimal(&lat[1..]) || !is_decimal(&lng[1..]) || !at_most(&lat[1..], 90) || !at_most(&lng[1..], 180)
    {
        return None;
    }
    let num = |s: &[u8]| std::str::from_utf8(s).ok()?.parse::<f64>().ok();
    Some((num(lat)?, num(lng)?))
}

/// POSIX seconds `D+(.D+)?`, at most 12 integer digits, as nanoseconds (truncated).
fn parse_time(t: &[u8]) -> Option<i128> {
    if !is_decimal(t) {
        return None;
    }
    let (int, frac) = t.split_at(t.iter().position(|&b| b == b'.').unwrap_or(t.len()));
    if int.len() > 12 {
        return None;
    }
    let mut ns: i128 = 0;
    for &b in int {
        ns = ns * 10 + i128::from(b - b'0');
    }
    let frac = frac.get(1..).unwrap_or(&[]);
    for i in 0..9 {
        ns = ns * 10 + frac.get(i).map_or(0, |b| i128::from(b - b'0'));
    }
    Some(ns)
}

fn format_diff(ns: i128) -> String {
    let sign = if ns >= 0 { '+' } else { '-' };
    let a = ns.unsigned_abs();
    format!("{sign}{}.{:09}", a / 1_000_000_000, a % 1_000_000_000)
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn is_diff(t: &[u8]) -> bool {
    matches!(t.first(), Some(b'+' | b'-'))
        && is_decimal(&t[1..])
        && t.iter().position(|&b| b == b'.') == Some(t.len() - 10)
}

/// Google's legacy print style: 3-space indentation, `"key" : value`, UTF-8 kept.
fn legacy_json(v: &Value, depth: usize, out: &mut String) {
    let pad = |out: &mut String, d: usize| out.extend(std::iter::repeat_n("   ", d));
    match v {
        Value::Object(m) if !m.is_empty() => {
            out.push_str("{\n");
            for (i, (k, v)) in m.iter().enumerate() {
                pad(out, depth + 1);
                out.push_str(&Value::String(k.clone()).to_string());
                out.push_str(" : ");
                legacy_json(v, depth + 1, out);
                out.push_str(if i + 1 < m.len() { ",\n" } else { "\n" });
            }
            pad(out, depth);
            out.push('}');
        }
        Value::Array(a) if !a.is_empty() => {
            out.push_str("[\n");
            for (i, v) in a.iter().enumerate() {
                pad(out, depth + 1);
                legacy_json(v, depth + 1, out);
                out.push_str(if i + 1 < a.len() { ",\n" } else { "\n" });
            }
            pad(out, depth);
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

fn document(status: &str, message: Option<&str>, results: Vec<Value>) -> Value {
    let mut doc = Map::new();
    doc.insert("html_attributions".into(), json!([]));
    doc.insert("results".into(), Value::Array(results));
    doc.insert("status".into(), status.into());
    if let Some(m) = message {
        doc.insert("error_message".into(), m.into());
    }
    Value::Object(doc)
}

fn whatsat_reply(at: &[u8], doc: &Value) -> Vec<u8> {
    let mut body = String::new();
    legacy_json(doc, 0, &mut body);
    let mut out = Vec::with_capacity(at.len() + body.len() + 3);
    out.extend_from_slice(at);
    out.push(b'\n');
    out.extend_from_slice(body.as_bytes());
    out.extend_from_slice(b"\n\n");
    out
}

// ---- the server ------------------------------------------------------------------------

struct Herd {
    name: String,
    servers: HashMap<String, (String, u16)>,
    neighbours: Vec<String>,
    max_line: usize,
    log: Log,
    /// client -> (time in ns, AT line)
    table: Mutex<HashMap<Vec<u8>, Record>>,
    /// neighbour -> the sender to its dialler's writer while the link is up
    links: Mutex<HashMap<String, mpsc::Sender<Arc<[u8]>>>>,
    /// neighbour -> the Notify that closes its current inbound connection
    inbound: Mutex<HashMap<String, Arc<Notify>>>,
    dial_now: HashMap<String, Arc<Notify>>,
    places: Places,
}

/// A client's stored record: its time in ns and the AT line that announced it.
type Record = (i128, Arc<[u8]>);

struct Places {
    http: reqwest::Client,
    api: String,
    url: String,
    key_env: String,
    key: Option<String>,
}

enum Reply {
    Ready(Vec<u8>),
    Pending(JoinHandle<Vec<u8>>),
}

impl Herd {
    /// Stores a winning record and forwards it to every linked neighbour but `source`;
    /// None if it did not win, else the neighbours it went to.
    fn offer(&self, client: &[u8], t: i128, line: Arc<[u8]>, source: Option<&str>) -> Option<Vec<String>> {
        let mut table = lock(&self.table);
        if let Some((t0, l0)) = table.get(client)
            && (t, &line[..]) <= (*t0, &l0[..])
        {
            return None;
        }
        table.insert(client.to_vec(), (t, line.clone()));
        let mut links = lock(&self.links);
        let mut sent = Vec::new();
        links.retain(|n, tx| {
            if Some(n.as_str()) == source {
                return true;
            }
            let ok = tx.try_send(line.clone()).is_ok();
            if ok {
                sent.push(n.clone());
            } else {
                warn!(self, "link to {n}: dropped: neighbour does not read");
            }
            ok
        });
        Some(sent)
    }

    async fn client(self: Arc<Self>, stream: TcpStream, peer: String) {
        let _ = stream.set_nodelay(true);
        info!(self, "{peer} connected");
        let (rd, wr) = stream.into_split();
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        let writer = tokio::spawn(write_replies(wr, rx));
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let mut line = Vec::new();
        let why = loop {
            line.clear();
            let limit = self.max_line as u64 + 2;
            match (&mut rd).take(limit).read_until(b'\n', &mut line).await {
                Ok(0) => break "end of input".to_string(),
                Ok(_) => {}
                Err(e) => break e.to_string(),
            }
            let complete = line.last() == Some(&b'\n');
            if complete {
                line.pop();
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
            }
            let reply = if line.len() > self.max_line {
                if !complete && skip_line(&mut rd).await.is_err() {
                    break "read error".into();
                }
                let head = &line[..256.min(line.len())];
                info!(self, "{peer} recv: over-long line | sent: ? {}", Shown(head));
                Some(Reply::Ready([b"? ", head, b"\n"].concat()))
            } else {
                self.on_line(&peer, &line)
            };
            if let Some(reply) = reply
                && tx.send(reply).await.is_err()
            {
                break "write error".into();
            }
        };
        drop(tx);
        let _ = writer.await;
        info!(self, "{peer} closed: {why}");
    }

    fn on_line(self: &Arc<Self>, peer: &str, line: &[u8]) -> Option<Reply> {
        let f = fields(line);
        match f.as_slice() {
            [] => return None,
            [b"IAMAT", client, location, time] => {
                let now = now_ns();
                if let (Some(t), Some(_)) = (parse_time(time), parse_location(location)) {
                    let mut at = format!("AT {} {} ", self.name, format_diff(now - t)).into_bytes();
                    at.extend_from_slice(&[*client, *location, *time].join(&b' '));
                    let at: Arc<[u8]> = at.into();
                    let sent = self.offer(client, t, at.clone(), None).unwrap_or_default();
                    let to = if sent.is_empty() {
                        String::new()
                    } else {
                        format!(" | forwarded to {}", sent.join(", "))
                    };
                    info!(self, "{peer} recv: {} | sent: {}{to}", Shown(line), Shown(&at));
                    return Some(Reply::Ready([&at[..], b"\n"].concat()));
                }
            }
            [b"WHATSAT", client, radius, bound] => {
                let record = lock(&self.table).get(*client).map(|r| r.1.clone());
                let bound = std::str::from_utf8(bound)
                    .ok()
                    .filter(|b| b.bytes().all(|c| c.is_ascii_digit()))
                    .and_then(|b| b.parse::<usize>().ok())
                    .filter(|b| *b <= 20);
                let radius_ok = is_decimal(radius) && at_most(radius, 50) && !at_most(radius, 0);
                if let (Some(at), Some(bound), true) = (record, bound, radius_ok) {
                    return Some(self.whatsat(peer, line, at, radius, bound));
                }
            }
            _ => {}
        }
        info!(self, "{peer} recv: {} | sent: ? {}", Shown(line), Shown(line));
        Some(Reply::Ready([b"? ", line, b"\n"].concat()))
    }

    fn whatsat(
        self: &Arc<Self>,
        peer: &str,
        line: &[u8],
        at: Arc<[u8]>,
        radius: &[u8],
        bound: usize,
    ) -> Reply {
        let p = &self.places;
        let quick = if bound == 0 {
            Some(document("OK", None, Vec::new()))
        } else if p.key.is_none() {
            let msg = format!(
                "no Places API key: set the environment variable {} and restart the server",
                p.key_env
            );
            Some(document("REQUEST_DENIED", Some(&msg), Vec::new()))
        } else {
            None
        };
        if let Some(doc) = quick {
            let reply = whatsat_reply(&at, &doc);
            info!(
                self,
                "{peer} recv: {} | sent: {} (+{} bytes of JSON)",
                Shown(line),
                Shown(&at),
                reply.len() - at.len() - 3
            );
            return Reply::Ready(reply);
        }
        info!(self, "{peer} recv: {} | waiting on Places", Shown(line));
        let location = fields(&at)
            .get(4)
            .and_then(|l| parse_location(l))
            .unwrap_or_default();
        let km: f64 = std::str::from_utf8(radius)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0.0);
        let herd = self.clone();
        Reply::Pending(tokio::spawn(async move {
            let start = Instant::now();
            let mut doc = herd.places.call(location, km * 1000.0, bound).await;
            if let Some(Value::Array(r)) = doc.get_mut("results") {
                r.truncate(bound);
            }
            let status = doc.get("status").and_then(Value::as_str).unwrap_or("?");
            info!(
                herd,
                "places {} {},{} radius {} m bound {bound}: {status}, {} ms",
                herd.places.api,
                location.0,
                location.1,
                km * 1000.0,
                start.elapsed().as_millis()
            );
            whatsat_reply(&at, &doc)
        }))
    }

    async fn peer_in(self: Arc<Self>, stream: TcpStream, peer: String) {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::new(rd);
        let mut line = Vec::new();
        let limit = self.max_line as u64 + 2;
        if (&mut rd).take(limit).read_until(b'\n', &mut line).await.is_err() {
            return;
        }
        let first = line.trim_ascii_end().to_vec();
        let name = match fields(&first).as_slice() {
            [b"HELLO", n] => std::str::from_utf8(n)
                .ok()
                .filter(|n| self.neighbours.iter().any(|x| x == n))
                .map(String::from),
            _ => None,
        };
        let Some(name) = name else {
            info!(self, "{peer} (peer port) refused: {}", Shown(&first));
            let _ = wr.write_all(&[b"? ", &first[..], b"\n"].concat()).await;
            return;
        };
        info!(self, "link from {name} ({peer}): up (HELLO)");
        let close = Arc::new(Notify::new());
        if let Some(old) = lock(&self.inbound).insert(name.clone(), close.clone()) {
            old.notify_one();
        }
        if !lock(&self.links).contains_key(&name)
            && let Some(d) = self.dial_now.get(&name)
        {
            d.notify_one();
        }
        let why = loop {
            line.clear();
            let mut framed = (&mut rd).take(limit);
            tokio::select! {
                _ = close.notified() => break "replaced by a newer HELLO".to_string(),
                r = framed.read_until(b'\n', &mut line) => match r {
                    Ok(0) => break "closed by neighbour".into(),
                    Ok(_) => self.record(&name, &line),
                    Err(e) => break e.to_string(),
                },
            }
        };
        info!(self, "link from {name} ({peer}): dropped: {why}");
        let mut inbound = lock(&self.inbound);
        if inbound.get(&name).is_some_and(|c| Arc::ptr_eq(c, &close)) {
            inbound.remove(&name);
        }
    }

    fn record(&self, from: &str, line: &[u8]) {
        let f = fields(line);
        if f.is_empty() {
            return;
        }
        let valid = f.len() == 6
            && f[0] == b"AT"
            && std::str::from_utf8(f[1]).is_ok_and(|s| self.servers.contains_key(s))
            && is_diff(f[2])
            && parse_location(f[4]).is_some();
        let Some(t) = valid.then(|| parse_time(f[5])).flatten() else {
            warn!(
                self,
                "record from {from} skipped: malformed: {}",
                Shown(line.trim_ascii_end())
            );
            return;
        };
        let canon: Arc<[u8]> = f.join(&b' ').into();
        match self.offer(f[3], t, canon.clone(), Some(from)) {
            None => info!(self, "record from {from} (not newer, dropped): {}", Shown(&canon)),
            Some(sent) => info!(
                self,
                "record from {from} (new): {} | forwarded to {}",
                Shown(&canon),
                sent.join(", ")
            ),
        }
    }

    /// Keeps the outbound link to `n` up: dial, HELLO, whole table, then records as they
    /// win; redial with capped exponential backoff, at once when `n` says HELLO.
    async fn dialler(self: Arc<Self>, n: String) {
        let Some((host, port)) = self.servers.get(&n).cloned() else {
            return;
        };
        let mut backoff = BACKOFF_MIN;
        loop {
            info!(self, "link to {n}: connecting");
            let why = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect((host.as_str(), port)))
                .await
            {
                Err(_) => "connect timed out".to_string(),
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(stream)) => {
                    backoff = BACKOFF_MIN;
                    self.link(&n, stream).await
                }
            };
            lock(&self.links).remove(&n);
            let delay = backoff.mul_f64(0.5 + 0.5 * jitter());
            info!(
                self,
                "link to {n}: down ({why}); retry in {} ms",
                delay.as_millis()
            );
            let wake = self.dial_now.get(&n).cloned().unwrap_or_default();
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = wake.notified() => {}
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn link(&self, n: &str, stream: TcpStream) -> String {
        let _ = stream.set_nodelay(true);
        let (mut rd, wr) = stream.into_split();
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        let (tx, mut rx) = mpsc::channel::<Arc<[u8]>>(LINK_QUEUE);
        // The snapshot and the registration happen under the table lock, so no record is
        // missed or sent twice between the table sync and the stream of new records.
        let snapshot: Vec<Arc<[u8]>> = {
            let table = lock(&self.table);
            lock(&self.links).insert(n.to_string(), tx);
            table.values().map(|(_, l)| l.clone()).collect()
        };
        info!(self, "link to {n}: up ({} records sent)", snapshot.len());
        let mut send = async |lines: &[Arc<[u8]>], hello: bool| -> std::io::Result<()> {
            if hello {
                wr.write_all(format!("HELLO {}\n", self.name).as_bytes()).await?;
            }
            for l in lines {
                wr.write_all(l).await?;
                wr.write_all(b"\n").await?;
            }
            wr.flush().await
        };
        if let Err(e) = send(&snapshot, true).await {
            return e.to_string();
        }
        let mut scratch = [0u8; 1024];
        let mut batch = Vec::new();
        loop {
            tokio::select! {
                got = rx.recv_many(&mut batch, 1024) => {
                    if got == 0 {
                        return "dropped: neighbour does not read".into();
                    }
                    if let Err(e) = send(&batch, false).await {
                        return e.to_string();
                    }
                    batch.clear();
                }
                // The acceptor only ever talks to refuse us; EOF means the link is gone.
                r = rd.read(&mut scratch) => match r {
                    Ok(0) => return "closed by neighbour".into(),
                    Ok(_) => warn!(self, "link to {n}: neighbour says: {}", Shown(&scratch)),
                    Err(e) => return e.to_string(),
                },
            }
        }
    }
}

/// Discards the rest of an over-long line.
async fn skip_line<R: tokio::io::AsyncBufRead + Unpin>(rd: &mut R) -> std::io::Result<()> {
    loop {
        let buf = rd.fill_buf().await?;
        if buf.is_empty() {
            return Ok(());
        }
        match buf.iter().position(|&b| b == b'\n') {
            Some(i) => {
                rd.consume(i + 1);
                return Ok(());
            }
            None => {
                let n = buf.len();
                rd.consume(n);
            }
        }
    }
}

/// Writes replies in message order; a WHATSAT's reply is awaited in its place.
async fn write_replies(wr: tokio::net::tcp::OwnedWriteHalf, mut rx: mpsc::Receiver<Reply>) {
    let mut wr = BufWriter::with_capacity(64 * 1024, wr);
    while let Some(mut reply) = rx.recv().await {
        loop {
            let bytes = match reply {
                Reply::Ready(b) => b,
                Reply::Pending(task) => {
                    if wr.flush().await.is_err() {
                        return;
                    }
                    task.await.unwrap_or_default()
                }
            };
            if wr.write_all(&bytes).await.is_err() {
                return;
            }
            match rx.try_recv() {
                Ok(next) => reply = next,
                Err(_) => break,
            }
        }
        if wr.flush().await.is_err() {
            return;
        }
    }
    let _ = wr.shutdown().await;
}

fn jitter() -> f64 {
    f64::from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos())
            % 1000,
    ) / 1000.0
}

impl Places {
    async fn call(&self, (lat, lng): (f64, f64), metres: f64, bound: usize) -> Value {
        let key = self.key.as_deref().unwrap_or_default();
        let sent = if self.api == "legacy" {
            let url = format!("{}{LEGACY_PATH}", self.url);
            let q = [
                ("location", format!("{lat},{lng}")),
                ("radius", metres.to_string()),
                ("key", key.into()),
            ];
            self.http.get(url).query(&q).send().await
        } else {
            let body = json!({"maxResultCount": bound, "locationRestriction": {"circle": {
                "center": {"latitude": lat, "longitude": lng}, "radius": metres}}});
            self.http
                .post(format!("{}{NEW_PATH}", self.url))
                .header("X-Goog-Api-Key", key)
                .header("X-Goog-FieldMask", FIELD_MASK)
                .json(&body)
                .send()
                .await
        };
        let failed = |what: String| document("UNKNOWN_ERROR", Some(&what), Vec::new());
        let resp = match sent {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return failed("Places request timed out".into()),
            Err(e) => return failed(format!("Places request failed: {}", e.without_url())),
        };
        let http = resp.status().as_u16();
        let got: Value = match resp.bytes().await.map(|b| serde_json::from_slice(&b)) {
            Ok(Ok(v)) => v,
            Ok(Err(_)) => {
                return failed(format!(
                    "Places answered HTTP {http} with a body that is not JSON"
                ));
            }
            Err(e) => return failed(format!("Places request failed: {}", e.without_url())),
        };
        if self.api == "legacy" {
            return got;
        }
        if http != 200 {
            let status = match http {
                400 => "INVALID_REQUEST",
                401 | 403 => "REQUEST_DENIED",
                429 => "OVER_QUERY_LIMIT",
                _ => "UNKNOWN_ERROR",
            };
            let msg = got["error"]["message"]
                .as_str()
                .map(String::from)
                .unwrap_or(format!("Places answered HTTP {http}"));
            return document(status, Some(&msg), Vec::new());
        }
        let results: Vec<Value> = got["places"]
            .as_array()
            .into_iter()
            .flatten()
            .map(legacy_place)
            .collect();
        document(
            if results.is_empty() { "ZERO_RESULTS" } else { "OK" },
            None,
            results,
        )
    }
}

/// A Places API (New) place under the legacy field names.
fn legacy_place(p: &Value) -> Value {
    let mut out = Map::new();
    let mut put = |k: &str, v: &Value| {
        if !v.is_null() {
            out.insert(k.into(), v.clone());
        }
    };
    put("name", &p["displayName"]["text"]);
    put("place_id", &p["id"]);
    if p["location"].is_object() {
        put(
            "geometry",
            &json!({"location": {"lat": p["location"]["latitude"], "lng": p["location"]["longitude"]}}),
        );
    }
    put("vicinity", &p["formattedAddress"]);
    put("types", &p["types"]);
    put("rating", &p["rating"]);
    put("user_ratings_total", &p["userRatingCount"]);
    put("business_status", &p["businessStatus"]);
    Value::Object(out)
}

// ---- start-up -------------------------------------------------------------------------

fn load(path: &Path, name: &str) -> Result<(Config, PathBuf), String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let cfg: Config = serde_yaml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    if !cfg.servers.contains_key(name) {
        return Err(format!("no server {name} in {}", path.display()));
    }
    let dir = path.parent().unwrap_or(Path::new(".")).join(&cfg.log.dir);
    Ok((cfg, dir))
}

fn start(args: &[String]) -> Result<(Arc<Herd>, String, String), String> {
    let (config, name) = match args {
        [flag, path, name] if flag == "--config" => (PathBuf::from(path), name.clone()),
        [name] => (PathBuf::from("herd.yml"), name.clone()),
        _ => return Err("usage: herd-tokio [--config PATH] NAME".into()),
    };
    let (cfg, log_dir) = load(&config, &name)?;
    std::fs::create_dir_all(&log_dir).map_err(|e| format!("{}: {e}", log_dir.display()))?;
    let log_path = log_dir.join(format!("{name}.log"));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let me = &cfg.servers[&name];
    let api = std::env::var("HERD_PLACES_API").unwrap_or(cfg.places.api.clone());
    let default_url = if api == "legacy" {
        "https://maps.googleapis.com"
    } else {
        "https://places.googleapis.com"
    };
    let url = std::env::var("HERD_PLACES_URL")
        .ok()
        .or(cfg.places.url.clone())
        .unwrap_or(default_url.into());
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(cfg.places.timeout_ms))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| e.to_string())?;
    let herd = Herd {
        name: name.clone(),
        servers: cfg
            .servers
            .iter()
            .map(|(n, s)| (n.clone(), (s.host.clone(), s.peer_port)))
            .collect(),
        neighbours: me.neighbours.clone(),
        max_line: cfg.limits.max_line,
        log: Log(Mutex::new(std::io::BufWriter::with_capacity(64 * 1024, file))),
        table: Mutex::default(),
        links: Mutex::default(),
        inbound: Mutex::default(),
        dial_now: me
            .neighbours
            .iter()
            .map(|n| (n.clone(), Arc::default()))
            .collect(),
        places: Places {
            http,
            api,
            url: url.trim_end_matches('/').into(),
            key: std::env::var(&cfg.places.key_env).ok().filter(|k| !k.is_empty()),
            key_env: cfg.places.key_env.clone(),
        },
    };
    Ok((
        Arc::new(herd),
        format!("{}:{}", me.host, me.port),
        format!("{}:{}", me.host, me.peer_port),
    ))
}

async fn accept_loop<F, Fut>(herd: Arc<Herd>, listener: TcpListener, serve: F)
where
    F: Fn(Arc<Herd>, TcpStream, String) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    loop {
        match listener.accept().await {
            Ok((stream, addr)) => {
                tokio::spawn(serve(herd.clone(), stream, addr.to_string()));
            }
            Err(e) => {
                warn!(herd, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (herd, client_addr, peer_addr) = match start(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("herd-tokio: {e}");
            std::process::exit(2);
        }
    };
    let (clients, peers) = match (
        TcpListener::bind(&client_addr).await,
        TcpListener::bind(&peer_addr).await,
    ) {
        (Ok(c), Ok(p)) => (c, p),
        (Err(e), _) | (_, Err(e)) => {
            eprintln!("herd-tokio: cannot listen: {e}");
            std::process::exit(2);
        }
    };
    let key = if herd.places.key.is_some() {
        "set"
    } else {
        "not set"
    };
    info!(
        herd,
        "{} listening on {client_addr} (clients) and {peer_addr} (neighbours); Places key {key}", herd.name
    );
    tokio::spawn(accept_loop(herd.clone(), clients, Herd::client));
    tokio::spawn(accept_loop(herd.clone(), peers, Herd::peer_in));
    for n in herd.neighbours.clone() {
        tokio::spawn(herd.clone().dialler(n));
    }
    let flusher = herd.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        loop {
            tick.tick().await;
            flusher.log.flush();
        }
    });
    let (Ok(mut term), Ok(mut int)) = (
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()),
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()),
    ) else {
        eprintln!("herd-tokio: cannot watch signals");
        std::process::exit(2);
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    info!(herd, "{} shut down", herd.name);
    herd.log.flush();
    std::process::exit(0);
}
