//! A stand-in for Google Places on 127.0.0.1, for tests: it answers the legacy Nearby
//! Search (`GET /maps/api/place/nearbysearch/json`) and Places API (New) searchNearby
//! (`POST /v1/places:searchNearby`) with documents shaped like Google's, and records every
//! request so a test can check what the server sent.
//!
//! ```ignore
//! let stub = PlacesStub::start();           // Google-like answers, 20 places near UCLA
//! stub.url();                               // "http://127.0.0.1:PORT", for places.url
//! stub.set(Behaviour::Delay(d));            // switch how the following requests are answered
//! stub.script(vec![b1, b2]);                // the next two requests get b1, b2, then as set
//! PlacesStub::start_on("127.0.0.2");        // the same on another loopback address
//! stub.requests();                          // every request so far, oldest first
//! stub.connections();                       // connections accepted so far
//! stub.wait_requests(n, timeout);           // ... once at least n arrived (or time is up)
//! drop(stub);                               // stops listening and cuts open connections
//! ```
//!
//! Both endpoints check the key as Google does (legacy: `key` query parameter; New:
//! `X-Goog-Api-Key` header) and answer Google's own error when it is missing. The New
//! endpoint also requires `X-Goog-FieldMask`, returns only the masked `places.*` fields and
//! honours `maxResultCount`. Plain std HTTP/1.1: a thread per connection, keep-alive,
//! `Content-Length` bodies (chunked request bodies are refused with 411).
#![allow(dead_code)] // each test binary uses a different part of it

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use serde_json::{Map, Value, json};

pub const LEGACY_PATH: &str = "/maps/api/place/nearbysearch/json";
pub const NEW_PATH: &str = "/v1/places:searchNearby";
/// Google's answer to a legacy request without a key.
pub const LEGACY_NO_KEY: &str = "You must use an API key to authenticate each request to Google Maps Platform APIs. For additional information, please refer to http://g.co/dev/maps-no-account";
/// Google's answer to a New request without a key (HTTP 403, PERMISSION_DENIED).
pub const NEW_NO_KEY: &str = "The request is missing a valid API key.";
pub const NEXT_PAGE_TOKEN: &str = "AciIO2dGn8T3Yq0bK9mXwZcVJrLp4Hs1uN6eQaFtDy7oWxBg5iMkRlSvC2hUjE8zP0fA";
const MAX_HEAD: usize = 64 * 1024;

/// How the stub answers the requests that follow `PlacesStub::set`.
#[derive(Clone, Debug, PartialEq)]
pub enum Behaviour {
    /// Google's normal answer: legacy gets 20 results and a `next_page_token`; New gets
    /// `maxResultCount` places with only the masked fields.
    Normal,
    /// Wait, then answer normally (the wait ends early if the stub is dropped).
    Delay(Duration),
    /// Legacy: HTTP 200 with Google's legacy error document, e.g. `REQUEST_DENIED`,
    /// `OVER_QUERY_LIMIT`, `INVALID_REQUEST` (`error_message` first, as Google sorts keys).
    /// The New endpoint answers normally.
    LegacyStatus { status: String, message: Option<String> },
    /// Legacy: `ZERO_RESULTS`; New: `{}` (what Google sends when nothing is found).
    ZeroResults,
    /// Both endpoints: HTTP `http` with the New API's error envelope
    /// `{"error": {"code", "message", "status"}}`.
    Envelope {
        http: u16,
        status: String,
        message: String,
    },
    /// Both endpoints: HTTP `http` with Google's HTML error page.
    NotJson { http: u16 },
    /// The normal answer, with blank lines between members and trailing newlines.
    BlankLines,
    /// Read the request, then close the connection without a byte of answer.
    Drop,
    /// HTTP `http` (3xx) with `Location: location` and an HTML body.
    Redirect { http: u16, location: String },
    /// `per_cent` of requests (picked pseudo-randomly but reproducibly by their number)
    /// get HTTP `http` with Google's error envelope; the others the normal answer.
    Flaky { per_cent: u64, http: u16 },
}

/// One request as the stub received it.
#[derive(Clone, Debug, PartialEq)]
pub struct Recorded {
    pub method: String,
    /// Without the query string.
    pub path: String,
    /// Query parameters, percent-decoded, in order.
    pub query: Vec<(String, String)>,
    /// Header names lowercased, values as sent.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn param(&self, name: &str) -> Option<&str> {
        self.query
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The body as JSON, if it is JSON.
    pub fn json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }
}

pub struct PlacesStub {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

struct Shared {
    behaviour: Mutex<Behaviour>,
    /// One-shot behaviours for the next requests, before `behaviour`.
    script: Mutex<std::collections::VecDeque<Behaviour>>,
    requests: Mutex<Vec<Recorded>>,
    arrived: Condvar,
    stop: AtomicBool,
    accepted: AtomicUsize,
    /// Clones of open connections by number, so Drop can cut them.
    conns: Mutex<Vec<(usize, TcpStream)>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A test that panicked while holding a lock must not hide its own failure behind ours.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl PlacesStub {
    /// Listens on an ephemeral port of 127.0.0.1. Panics if it cannot: it is test code.
    pub fn start() -> PlacesStub {
        PlacesStub::start_on("127.0.0.1")
    }

    /// Listens on an ephemeral port of `ip` (any 127.x.y.z works on Linux).
    pub fn start_on(ip: &str) -> PlacesStub {
        match PlacesStub::bind(ip, 0) {
            Ok(s) => s,
            Err(e) => panic!("places stub: {e}"),
        }
    }

    /// Listens on `ip`:`port` (port 0: any free one), for the places-stub program.
    pub fn bind(ip: &str, port: u16) -> io::Result<PlacesStub> {
        let listener = TcpListener::bind((ip, port))
            .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {ip}:{port}: {e}")))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            behaviour: Mutex::new(Behaviour::Normal),
            script: Mutex::new(std::collections::VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            arrived: Condvar::new(),
            stop: AtomicBool::new(false),
            accepted: AtomicUsize::new(0),
            conns: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = thread::Builder::new()
            .name("places-stub".into())
            .spawn(move || accept_loop(listener, s))?;
        Ok(PlacesStub {
            addr,
            shared,
            accept: Some(accept),
        })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, b: Behaviour) {
        *lock(&self.shared.behaviour) = b;
    }

    /// The next requests get these behaviours, one each, before the one `set` chose.
    pub fn script(&self, bs: Vec<Behaviour>) {
        lock(&self.shared.script).extend(bs);
    }

    /// How many connections were accepted so far (shows whether the client reuses them).
    pub fn connections(&self) -> usize {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.shared.requests).clone()
    }

    /// Waits until at least `n` requests arrived or `timeout` passed; returns them all.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> Vec<Recorded> {
        let deadline = Instant::now() + timeout;
        let mut got = lock(&self.shared.requests);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            got = match self.shared.arrived.wait_timeout(got, left) {
                Ok((g, _)) => g,
                Err(p) => p.into_inner().0,
            };
        }
        got.clone()
    }
}

impl Drop for PlacesStub {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // The accept loop blocks in accept(): one connection wakes it to see `stop`.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for (_, c) in lock(&self.shared.conns).drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    for stream in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let id = shared.accepted.fetch_add(1, Ordering::SeqCst);
        if let Ok(c) = stream.try_clone() {
            lock(&shared.conns).push((id, c));
        }
        let s = Arc::clone(&shared);
        let _ = thread::Builder::new()
            .name("places-stub-conn".into())
            .spawn(move || {
                let mut stream = stream;
                serve(&mut stream, &s);
                // The clone kept for Drop would hold the socket open: close it for real.
                let _ = stream.shutdown(Shutdown::Both);
                lock(&s.conns).retain(|(n, _)| *n != id);
            });
    }
}

struct Request {
    rec: Recorded,
    close: bool,
}

struct Answer {
    http: u16,
    content_type: &'static str,
    body: String,
    location: Option<String>,
}

impl Answer {
    fn json(http: u16, body: String) -> Answer {
        Answer {
            http,
            content_type: "application/json; charset=UTF-8",
            body,
            location: None,
        }
    }
}

/// Answers requests on one connection until either side closes it.
fn serve(stream: &mut TcpStream, shared: &Shared) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let req = match read_request(stream, &mut buf) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                if e.kind() == io::ErrorKind::InvalidData {
                    let _ = write_answer(stream, &Answer::json(411, String::new()), true);
                }
                return;
            }
        };
        let number = {
            let mut reqs = lock(&shared.requests);
            reqs.push(req.rec.clone());
            shared.arrived.notify_all();
            reqs.len() as u64
        };
        let scripted = lock(&shared.script).pop_front();
        let behaviour = scripted.unwrap_or_else(|| lock(&shared.behaviour).clone());
        let behaviour = match behaviour {
            Behaviour::Flaky { per_cent, http } if unlucky(number, per_cent) => Behaviour::Envelope {
                http,
                status: "UNAVAILABLE".into(),
                message: "The service is currently unavailable.".into(),
            },
            Behaviour::Flaky { .. } => Behaviour::Normal,
            other => other,
        };
        if let Behaviour::Delay(d) = behaviour {
            pause(shared, d);
        }
        if shared.stop.load(Ordering::SeqCst) || behaviour == Behaviour::Drop {
            return;
        }
        let answer = answer(&req.rec, &behaviour);
        if write_answer(stream, &answer, req.close).is_err() || req.close {
            return;
        }
    }
}

/// Whether request `n` is among the `per_cent` that fail: a fixed hash of `n`, so a run
/// can be repeated.
fn unlucky(n: u64, per_cent: u64) -> bool {
    let mut x = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03;
    x ^= x >> 31;
    x = x.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x ^= x >> 29;
    x % 100 < per_cent
}

/// Sleeps in small steps so that dropping the stub ends a long delay at once.
fn pause(shared: &Shared, d: Duration) {
    let until = Instant::now() + d;
    while !shared.stop.load(Ordering::SeqCst) {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return;
        }
        thread::sleep(left.min(Duration::from_millis(10)));
    }
}

/// `read`, retried when a signal interrupts it (as a socket read can fail with EINTR after
/// the process was stopped and continued).
fn read_retrying(stream: &mut TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        match stream.read(buf) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

/// Reads one request; `Ok(None)` on a clean end of stream between requests.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> io::Result<Option<Request>> {
    let head_end = loop {
        if let Some(i) = find(buf, b"\r\n\r\n") {
            break i;
        }
        if buf.len() > MAX_HEAD {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "head too long"));
        }
        let mut chunk = [0u8; 4096];
        let n = read_retrying(stream, &mut chunk)?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(io::ErrorKind::UnexpectedEof.into())
            };
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next().unwrap_or("").split(' ');
    let method = first.next().unwrap_or("").to_string();
    let target = first.next().unwrap_or("").to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let header = |name: &str| headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    if header("transfer-encoding").is_some() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "chunked body"));
    }
    let len: usize = header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    while buf.len() < len {
        let mut chunk = [0u8; 4096];
        let n = read_retrying(stream, &mut chunk)?;
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body: Vec<u8> = buf.drain(..len).collect();
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p.to_string(), parse_query(q)),
        None => (target, Vec::new()),
    };
    let rec = Recorded {
        method,
        path,
        query,
        headers,
        body,
    };
    Ok(Some(Request { rec, close }))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn parse_query(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(n), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn write_answer(stream: &mut TcpStream, a: &Answer, close: bool) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nServer: scaffolding on HTTPServer2\r\n{}{}\r\n",
        a.http,
        reason(a.http),
        a.content_type,
        a.body.len(),
        a.location
            .as_ref()
            .map(|l| format!("Location: {l}\r\n"))
            .unwrap_or_default(),
        if close { "Connection: close\r\n" } else { "" },
    );
    stream.write_all(head.as_bytes())?;
    stream.write_all(a.body.as_bytes())?;
    stream.flush()
}

fn reason(code: u16) -> &'static str {
    match code {
        200 => "OK",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        411 => "Length Required",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

fn answer(rec: &Recorded, b: &Behaviour) -> Answer {
    match b {
        Behaviour::NotJson { http } => return html_error(*http),
        Behaviour::Redirect { http, location } => {
            let mut a = html_error(*http);
            a.location = Some(location.clone());
            return a;
        }
        Behaviour::Envelope {
            http,
            status,
            message,
        } => return envelope(*http, status, message),
        _ => {}
    }
    match (rec.method.as_str(), rec.path.as_str()) {
        ("GET", LEGACY_PATH) => legacy(rec, b),
        ("POST", NEW_PATH) => new_api(rec, b),
        _ => html_error(404),
    }
}

fn legacy(rec: &Recorded, b: &Behaviour) -> Answer {
    if rec.param("key").is_none_or(str::is_empty) {
        return legacy_error("REQUEST_DENIED", Some(LEGACY_NO_KEY));
    }
    let location = rec.param("location").and_then(parse_location);
    let radius = rec.param("radius").and_then(|r| r.parse::<f64>().ok());
    if location.is_none() || radius.is_none_or(|r| r <= 0.0) {
        return legacy_error("INVALID_REQUEST", None);
    }
    match b {
        Behaviour::LegacyStatus { status, message } => legacy_error(status, message.as_deref()),
        Behaviour::ZeroResults => legacy_error("ZERO_RESULTS", None),
        Behaviour::BlankLines => Answer::json(200, with_blank_lines(&legacy_ok())),
        _ => Answer::json(200, google_text(&legacy_ok())),
    }
}

fn parse_location(s: &str) -> Option<(f64, f64)> {
    let (lat, lng) = s.split_once(',')?;
    Some((lat.trim().parse().ok()?, lng.trim().parse().ok()?))
}

/// Google sorts legacy keys, so `error_message` comes first.
fn legacy_error(status: &str, message: Option<&str>) -> Answer {
    let mut doc = Map::new();
    if let Some(m) = message {
        doc.insert("error_message".into(), json!(m));
    }
    doc.insert("html_attributions".into(), json!([]));
    doc.insert("results".into(), json!([]));
    doc.insert("status".into(), json!(status));
    Answer::json(200, google_text(&Value::Object(doc)))
}

fn legacy_ok() -> Value {
    let results: Vec<Value> = PLACES.iter().map(legacy_result).collect();
    json!({
        "html_attributions": [],
        "next_page_token": NEXT_PAGE_TOKEN,
        "results": results,
        "status": "OK",
    })
}

fn new_api(rec: &Recorded, b: &Behaviour) -> Answer {
    if rec.header("x-goog-api-key").is_none_or(str::is_empty) {
        return envelope(403, "PERMISSION_DENIED", NEW_NO_KEY);
    }
    let Some(mask) = rec.header("x-goog-fieldmask") else {
        return envelope(
            400,
            "INVALID_ARGUMENT",
            "FieldMask is a required parameter. See https://cloud.google.com/apis/docs/system-parameters on how to provide it. As an example, you can set the header 'X-Goog-FieldMask' to value 'places.displayName', 'places.id' to ask for the display name and the place id of a place. You can also set the value to '*' in manual testing to get all the available response fields.",
        );
    };
    let Some(body) = rec.json() else {
        return envelope(400, "INVALID_ARGUMENT", "Invalid JSON payload received.");
    };
    let count = body.get("maxResultCount").map_or(Some(20), Value::as_u64);
    let Some(count) = count.filter(|c| (1..=20).contains(c)) else {
        return envelope(
            400,
            "INVALID_ARGUMENT",
            "maxResultCount must be between 1 and 20.",
        );
    };
    let radius = body
        .pointer("/locationRestriction/circle/radius")
        .and_then(Value::as_f64);
    if radius.is_none_or(|r| r <= 0.0 || r > 50000.0) {
        return envelope(
            400,
            "INVALID_ARGUMENT",
            "Invalid radius. Radius must be a value between 0.0 and 50000.0 inclusive.",
        );
    }
    let doc = match b {
        Behaviour::ZeroResults => json!({}),
        _ => {
            let places: Vec<Value> = PLACES
                .iter()
                .take(count as usize)
                .map(|p| masked(new_place(p), mask))
                .collect();
            json!({ "places": places })
        }
    };
    match b {
        Behaviour::BlankLines => Answer::json(200, with_blank_lines(&doc)),
        _ => Answer::json(200, pretty_2(&doc)),
    }
}

/// Keeps the top-level place fields the mask names (`places.displayName.text` keeps
/// `displayName`), or all of them for `*`.
fn masked(place: Value, mask: &str) -> Value {
    let wanted: Vec<&str> = mask
        .split(',')
        .map(str::trim)
        .filter_map(|m| {
            if m == "*" {
                Some("*")
            } else {
                m.strip_prefix("places.")
            }
        })
        .map(|m| m.split('.').next().unwrap_or(m))
        .collect();
    if wanted.contains(&"*") {
        return place;
    }
    match place {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .filter(|(k, _)| wanted.contains(&k.as_str()))
                .collect(),
        ),
        other => other,
    }
}

fn envelope(http: u16, status: &str, message: &str) -> Answer {
    let doc = json!({ "error": { "code": http, "message": message, "status": status } });
    Answer::json(http, pretty_2(&doc))
}

fn html_error(http: u16) -> Answer {
    let body = format!(
        "<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n  <title>Error {http} (Server Error)!!1</title>\n  <p><b>{http}.</b> <ins>That\u{2019}s an error.</ins>\n  <p>The server encountered a temporary error and could not complete your request.<p>Please try again in 30 seconds.  <ins>That\u{2019}s all we know.</ins>\n"
    );
    Answer {
        http,
        content_type: "text/html; charset=UTF-8",
        body,
        location: None,
    }
}

fn pretty_2(v: &Value) -> String {
    serde_json::to_string_pretty(v).unwrap_or_default()
}

/// Google's legacy text escapes `<` and `>` inside strings (they cannot occur outside).
fn google_text(v: &Value) -> String {
    pretty_2(v).replace('<', "\\u003c").replace('>', "\\u003e")
}

/// Valid JSON whose white space holds blank lines, ending in newlines.
fn with_blank_lines(v: &Value) -> String {
    let text = google_text(v).replace('\n', "\n\n");
    format!("{text}\r\n\n\n")
}

/// A place near UCLA as the stub knows it; both APIs are rendered from this.
pub struct Place {
    pub name: &'static str,
    pub id: &'static str,
    pub lat: f64,
    pub lng: f64,
    pub vicinity: &'static str,
    pub types: &'static [&'static str],
    /// None for places Google gives no rating or status (a city, say).
    pub rating: Option<(f64, u64)>,
    pub business_status: Option<&'static str>,
}

const EST: &str = "establishment";
const POI: &str = "point_of_interest";
const OP: Option<&str> = Some("OPERATIONAL");

/// The 20 places both endpoints return, nearest first; a table, one place per line.
#[rustfmt::skip]
pub const PLACES: [Place; 20] = [
    Place { name: "Los Angeles", id: "ChIJE9on3F3HwoAR9AhGJW_fL-I", lat: 34.0549076, lng: -118.242643, vicinity: "Los Angeles", types: &["locality", "political"], rating: None, business_status: None },
    Place { name: "University of California, Los Angeles", id: "ChIJZQ9c8IW8woARN0gTXFiTqSU", lat: 34.068921, lng: -118.4451811, vicinity: "Los Angeles", types: &["university", POI, EST], rating: Some((4.6, 5678)), business_status: OP },
    Place { name: "Royce Hall", id: "ChIJQ5vZ0Ie8woARYk1hR2Yx3sA", lat: 34.0728757, lng: -118.4421629, vicinity: "10745 Dickson Plaza, Los Angeles", types: &["tourist_attraction", POI, EST], rating: Some((4.8, 1023)), business_status: OP },
    Place { name: "W Los Angeles - West Beverly Hills", id: "ChIJ8xT6lYS8woARnPq4UuVvB6w", lat: 34.0634397, lng: -118.4480458, vicinity: "930 Hilgard Avenue, Los Angeles", types: &["lodging", POI, EST], rating: Some((4.1, 2301)), business_status: OP },
    Place { name: "Hammer Museum", id: "ChIJN1rM3nq8woARs3vG8F0VJqU", lat: 34.0594669, lng: -118.4437383, vicinity: "10899 Wilshire Boulevard, Los Angeles", types: &["museum", "tourist_attraction", POI, EST], rating: Some((4.6, 2890)), business_status: OP },
    Place { name: "Fowler Museum at UCLA", id: "ChIJd8BlQ2C8woAR8tXvR0NkK7c", lat: 34.0729436, lng: -118.4434245, vicinity: "308 Charles E Young Drive North, Los Angeles", types: &["museum", POI, EST], rating: Some((4.7, 812)), business_status: Some("CLOSED_TEMPORARILY") },
    Place { name: "Mildred E. Mathias Botanical Garden", id: "ChIJ3zK9m4W8woARm5Z2eYt0cQg", lat: 34.0667, lng: -118.4415, vicinity: "707 Tiverton Drive, Los Angeles", types: &["park", "tourist_attraction", POI, EST], rating: Some((4.7, 641)), business_status: OP },
    Place { name: "Ronald Reagan UCLA Medical Center", id: "ChIJ1XhM2YW8woARw2nqFQ8ZJtE", lat: 34.0664817, lng: -118.4466783, vicinity: "757 Westwood Plaza, Los Angeles", types: &["hospital", "health", POI, EST], rating: Some((4.3, 1544)), business_status: OP },
    Place { name: "Diddy Riese", id: "ChIJAfd3c4O8woARLi5Y0zJ2b9U", lat: 34.0630209, lng: -118.4468405, vicinity: "926 Broxton Avenue, Los Angeles", types: &["bakery", "store", "food", POI, EST], rating: Some((4.7, 6012)), business_status: OP },
    Place { name: "Tsujita LA Artisan Noodle つじ田", id: "ChIJ7Vq5ZbG7woARfW3a9pWc2Wk", lat: 34.0394, lng: -118.4425, vicinity: "2057 Sawtelle Boulevard, Los Angeles", types: &["restaurant", "food", POI, EST], rating: Some((4.5, 4120)), business_status: OP },
    Place { name: "Café 1919", id: "ChIJpW1bV4O8woARv8Y0c3k6NnE", lat: 34.0628, lng: -118.4475, vicinity: "1061 Broxton Avenue, Los Angeles", types: &["cafe", "food", POI, EST], rating: Some((4.2, 388)), business_status: OP },
    Place { name: "Westwood Village Memorial Park Cemetery", id: "ChIJ0Q2c0Hq8woARx8rM6sUO1nA", lat: 34.0584, lng: -118.4406, vicinity: "1218 Glendon Avenue, Los Angeles", types: &["cemetery", POI, EST], rating: Some((4.6, 1377)), business_status: OP },
    Place { name: "Regency Village Theatre", id: "ChIJ2aS8VIO8woARh5oY2qj7B1M", lat: 34.0632, lng: -118.447, vicinity: "961 Broxton Avenue, Los Angeles", types: &["movie_theater", POI, EST], rating: Some((4.6, 2210)), business_status: OP },
    Place { name: "Ackerman Union", id: "ChIJu5w8k4e8woARcVJ5xv5p8Ho", lat: 34.0705, lng: -118.444, vicinity: "308 Westwood Plaza, Los Angeles", types: &[POI, EST], rating: Some((4.4, 455)), business_status: OP },
    Place { name: "Pauley Pavilion", id: "ChIJr2t5q4W8woAR3g2fS1y0yZs", lat: 34.0702, lng: -118.4468, vicinity: "301 Westwood Plaza, Los Angeles", types: &["stadium", POI, EST], rating: Some((4.7, 1680)), business_status: OP },
    Place { name: "Powell Library", id: "ChIJX3o2hIe8woAR5nS7kq0x8lE", lat: 34.0716, lng: -118.4422, vicinity: "10740 Dickson Plaza, Los Angeles", types: &["library", POI, EST], rating: Some((4.8, 402)), business_status: OP },
    Place { name: "Janss Steps", id: "ChIJH6s3h4e8woARr0a8b6fV2pY", lat: 34.0722, lng: -118.4432, vicinity: "Los Angeles", types: &["tourist_attraction", POI, EST], rating: Some((4.7, 97)), business_status: OP },
    Place { name: "Trader Joe's", id: "ChIJ5b9PZX68woARtPq4l2vG0eI", lat: 34.0603, lng: -118.4447, vicinity: "1000 Glendon Avenue, Los Angeles", types: &["grocery_or_supermarket", "food", "store", POI, EST], rating: Some((4.5, 1289)), business_status: OP },
    Place { name: "In-N-Out Burger", id: "ChIJ0aE4mYS8woARtwz9xAO4S0c", lat: 34.0633, lng: -118.4482, vicinity: "922 Gayley Avenue, Los Angeles", types: &["restaurant", "food", POI, EST], rating: Some((4.5, 3521)), business_status: OP },
    Place { name: "Franklin D. Murphy Sculpture Garden", id: "ChIJS7bJ3Ye8woARz6mF8d1Qh7g", lat: 34.0749, lng: -118.4393, vicinity: "245 Charles E Young Drive East, Los Angeles", types: &["park", POI, EST], rating: Some((4.7, 251)), business_status: OP },
];

/// Google's padding of a place's location into its legacy viewport.
const VIEWPORT: f64 = 0.0013489802915;

fn legacy_result(p: &Place) -> Value {
    let mut r = Map::new();
    if let Some(s) = p.business_status {
        r.insert("business_status".into(), json!(s));
    }
    r.insert(
        "geometry".into(),
        json!({
            "location": { "lat": p.lat, "lng": p.lng },
            "viewport": {
                "northeast": { "lat": p.lat + VIEWPORT, "lng": p.lng + VIEWPORT },
                "southwest": { "lat": p.lat - VIEWPORT, "lng": p.lng - VIEWPORT },
            },
        }),
    );
    r.insert(
        "icon".into(),
        json!("https://maps.gstatic.com/mapfiles/place_api/icons/v1/png_71/generic_business-71.png"),
    );
    r.insert("icon_background_color".into(), json!("#7B9EB0"));
    r.insert(
        "icon_mask_base_uri".into(),
        json!("https://maps.gstatic.com/mapfiles/place_api/icons/v2/generic_pinlet"),
    );
    r.insert("name".into(), json!(p.name));
    if p.business_status.is_some() {
        r.insert("opening_hours".into(), json!({ "open_now": true }));
    }
    r.insert(
        "photos".into(),
        json!([{
            "height": 3024,
            "html_attributions": [
                format!("<a href=\"https://maps.google.com/maps/contrib/104953827719331546187\">{} visitor</a>", p.name)
            ],
            "photo_reference": format!("AUjq9jl{}Xq3MZ0_rV8pKd2yWn5sT1uHfGvB7cE4aL9oQ", p.id),
            "width": 4032,
        }]),
    );
    r.insert("place_id".into(), json!(p.id));
    r.insert(
        "plus_code".into(),
        json!({ "compound_code": "3H9W+J9 Los Angeles, California", "global_code": "85633H9W+J9" }),
    );
    if let Some((rating, _)) = p.rating {
        r.insert("rating".into(), json!(rating));
    }
    r.insert("reference".into(), json!(p.id));
    r.insert("scope".into(), json!("GOOGLE"));
    r.insert("types".into(), json!(p.types));
    if let Some((_, count)) = p.rating {
        r.insert("user_ratings_total".into(), json!(count));
    }
    r.insert("vicinity".into(), json!(p.vicinity));
    Value::Object(r)
}

/// Every field Places API (New) would send for `*`, in Google's order; the mask trims it.
fn new_place(p: &Place) -> Value {
    let mut r = Map::new();
    r.insert("name".into(), json!(format!("places/{}", p.id)));
    r.insert("id".into(), json!(p.id));
    r.insert("types".into(), json!(p.types));
    r.insert(
        "formattedAddress".into(),
        json!(format!("{}, CA 90024, USA", p.vicinity)),
    );
    r.insert(
        "location".into(),
        json!({ "latitude": p.lat, "longitude": p.lng }),
    );
    if let Some((rating, _)) = p.rating {
        r.insert("rating".into(), json!(rating));
    }
    r.insert(
        "googleMapsUri".into(),
        json!(format!("https://maps.google.com/?cid={}", p.id.len() * 1_000_003)),
    );
    if let Some(s) = p.business_status {
        r.insert("businessStatus".into(), json!(s));
    }
    if let Some((_, count)) = p.rating {
        r.insert("userRatingCount".into(), json!(count));
    }
    r.insert(
        "displayName".into(),
        json!({ "text": p.name, "languageCode": "en" }),
    );
    if let Some(t) = p.types.first() {
        r.insert("primaryType".into(), json!(t));
    }
    r.insert("shortFormattedAddress".into(), json!(p.vicinity));
    Value::Object(r)
}
