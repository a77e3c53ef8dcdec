//! The admin endpoint (SPEC §8): `/metrics` and `/healthz` over plain HTTP/1.1.
//!
//! It runs on a thread of its own with its own small mio `Poll`, not in the reactor. The
//! reactor already keeps every figure as a relaxed atomic in the shared `Arc<Metrics>`, so
//! the admin thread can read them at any time without asking the reactor anything; the
//! text rendering, the HTTP parsing and a slow scraper's socket all cost this thread, and
//! a scrape never takes a turn of the reactor's loop. Serving it from the reactor would
//! have meant another listener, another connection kind and a multi-kilobyte format job
//! on the thread whose latency we measure, for no data the atomics do not already give.
//!
//! Every admin client is bounded like any client: one request per connection, a request
//! head of at most 8 KiB, at most 64 connections at once (more are closed at once), and
//! 5 s to send a full request.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::metrics::{self, Metrics, PlacesView};

/// Fixed tokens at the top of the token space; connection slots are `0..max_conns`.
const LISTENER: Token = Token(usize::MAX - 1);
const WAKER: Token = Token(usize::MAX - 2);

#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Longest request head (request line and headers) we read before giving up.
    max_head: usize,
    /// Admin connections served at once; more are accepted and closed at once.
    max_conns: usize,
    /// Time a connection gets to send its full request, and then to take the reply.
    timeout: Duration,
}

const LIMITS: Limits = Limits {
    max_head: 8 * 1024,
    max_conns: 64,
    timeout: Duration::from_secs(5),
};

pub type PlacesFn = Box<dyn Fn() -> PlacesView + Send>;
pub type HealthFn = Box<dyn Fn() -> String + Send>;

/// The admin thread's state: its poll, its listener and its connection slots.
pub struct Admin {
    poll: Poll,
    listener: TcpListener,
    conns: Vec<Option<Conn>>,
    limits: Limits,
    stop: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    places: PlacesFn,
    health: HealthFn,
}

/// The owner's side: stops the thread on `shutdown()` or drop.
pub struct AdminHandle {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: Option<JoinHandle<()>>,
}

struct Conn {
    stream: TcpStream,
    head: Vec<u8>,
    /// The whole reply once the request is in; `None` while reading.
    reply: Option<Vec<u8>>,
    written: usize,
    deadline: Instant,
}

/// What a request asked for.
#[derive(Debug, PartialEq)]
enum Route {
    Metrics,
    Healthz,
    NotFound,
    MethodNotAllowed,
    BadRequest,
}

impl Admin {
    /// Binds `addr` now (so a port in use is a start-up error) and serves it from a new
    /// thread until the handle is shut down or dropped.
    pub fn start(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        places: PlacesFn,
        health: HealthFn,
    ) -> Result<AdminHandle, io::Error> {
        Self::start_with(addr, metrics, places, health, LIMITS)
    }

    fn start_with(
        addr: SocketAddr,
        metrics: Arc<Metrics>,
        places: PlacesFn,
        health: HealthFn,
        limits: Limits,
    ) -> Result<AdminHandle, io::Error> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(addr)?;
        let local = listener.local_addr()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut admin = Admin {
            poll,
            listener,
            conns: (0..limits.max_conns).map(|_| None).collect(),
            limits,
            stop: Arc::clone(&stop),
            metrics,
            places,
            health,
        };
        let thread = std::thread::Builder::new()
            .name("admin".into())
            .spawn(move || admin.run())?;
        Ok(AdminHandle {
            addr: local,
            stop,
            waker,
            thread: Some(thread),
        })
    }

    fn run(&mut self) {
        let mut events = Events::with_capacity(128);
        while !self.stop.load(Ordering::Relaxed) {
            let timeout = self
                .next_deadline()
                .map(|d| d.saturating_duration_since(Instant::now()));
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                log::error!("admin endpoint stops: poll failed: {e}");
                return;
            }
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept_all(),
                    WAKER => {} // the loop condition sees `stop`
                    Token(slot) => self.ready(slot),
                }
            }
            self.expire(Instant::now());
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let Some(slot) = self.conns.iter().position(Option::is_none) else {
                        // Full: dropping the stream closes it at once.
                        continue;
                    };
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, Token(slot), Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    self.conns[slot] = Some(Conn {
                        stream,
                        head: Vec::new(),
                        reply: None,
                        written: 0,
                        deadline: Instant::now() + self.limits.timeout,
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors, say: the next connection brings a new event.
                    log::warn!("admin endpoint: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn ready(&mut self, slot: usize) {
        let keep = match self.conns.get_mut(slot) {
            Some(Some(conn)) => {
                if conn.reply.is_none() {
                    match read_head(conn, self.limits.max_head) {
                        Ok(Some(route)) => {
                            let reply = self.reply(route);
                            if let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) {
                                conn.reply = Some(reply);
                                conn.deadline = Instant::now() + self.limits.timeout;
                            }
                            self.write(slot)
                        }
                        Ok(None) => Ok(true),
                        Err(()) => Ok(false),
                    }
                } else {
                    self.write(slot)
                }
            }
            _ => return,
        };
        if !matches!(keep, Ok(true)) {
            self.close(slot);
        }
    }

    /// Writes what the reply has left; `Ok(false)` once it is all out (time to close).
    fn write(&mut self, slot: usize) -> io::Result<bool> {
        let Some(Some(conn)) = self.conns.get_mut(slot) else {
            return Ok(false);
        };
        let Some(reply) = &conn.reply else {
            return Ok(true);
        };
        while conn.written < reply.len() {
            match conn.stream.write(&reply[conn.written..]) {
                Ok(0) => return Ok(false),
                Ok(n) => conn.written += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.poll
                        .registry()
                        .reregister(&mut conn.stream, Token(slot), Interest::WRITABLE)?;
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(false)
    }

    fn close(&mut self, slot: usize) {
        if let Some(mut conn) = self.conns.get_mut(slot).and_then(Option::take) {
            let _ = self.poll.registry().deregister(&mut conn.stream);
        }
    }

    fn expire(&mut self, now: Instant) {
        for slot in 0..self.conns.len() {
            if self.conns[slot].as_ref().is_some_and(|c| c.deadline <= now) {
                self.close(slot);
            }
        }
    }

    fn reply(&self, route: Route) -> Vec<u8> {
        match route {
            Route::Metrics => {
                let mut body = String::with_capacity(8 * 1024);
                metrics::render(&self.metrics, &(self.places)(), &mut body);
                response("200 OK", "text/plain; version=0.0.4; charset=utf-8", &body, "")
            }
            Route::Healthz => {
                let body = format!("ok\n{}", (self.health)());
                response("200 OK", "text/plain; charset=utf-8", &body, "")
            }
            Route::NotFound => response("404 Not Found", "text/plain", "not found\n", ""),
            Route::MethodNotAllowed => response(
                "405 Method Not Allowed",
                "text/plain",
                "GET only\n",
                "Allow: GET\r\n",
            ),
            Route::BadRequest => response("400 Bad Request", "text/plain", "bad request\n", ""),
        }
    }
}

/// Reads what the client has sent; `Ok(Some)` once the head is complete, `Ok(None)` to
/// wait for more, `Err` to close (end of input, error, or a head past `max_head`).
fn read_head(conn: &mut Conn, max_head: usize) -> Result<Option<Route>, ()> {
    let mut buf = [0u8; 2048];
    loop {
        match conn.stream.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => {
                let from = conn.head.len().saturating_sub(3);
                conn.head.extend_from_slice(&buf[..n]);
                if let Some(end) = head_end(&conn.head, from) {
                    if end > max_head {
                        return Err(());
                    }
                    return Ok(Some(route(&conn.head[..end])));
                }
                if conn.head.len() >= max_head {
                    return Err(());
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Where the head ends (after its blank line, `\r\n\r\n` or a bare `\n\n`), searching
/// from `from` so each read only scans what is new.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let mut i = from;
    while i < buf.len() {
        if buf[i] == b'\n' {
            if buf.get(i + 1) == Some(&b'\n') {
                return Some(i + 2);
            }
            if buf.get(i + 1) == Some(&b'\r') && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// The route for a complete request head: request line, then `Name: value` lines.
fn route(head: &[u8]) -> Route {
    let Ok(text) = std::str::from_utf8(head) else {
        return Route::BadRequest;
    };
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request = lines.next().unwrap_or("");
    let mut parts = request.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    let method_ok = !method.is_empty() && method.bytes().all(|b| b.is_ascii_uppercase());
    if !method_ok || !target.starts_with('/') || !matches!(version, "HTTP/1.1" | "HTTP/1.0") {
        return Route::BadRequest;
    }
    if lines.any(|l| !l.is_empty() && !l.contains(':')) {
        return Route::BadRequest;
    }
    if method != "GET" {
        return Route::MethodNotAllowed;
    }
    let path = target.split('?').next().unwrap_or(target);
    match path {
        "/metrics" => Route::Metrics,
        "/healthz" => Route::Healthz,
        _ => Route::NotFound,
    }
}

fn response(status: &str, content_type: &str, body: &str, extra: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

impl AdminHandle {
    /// Where it listens (the bound port when started on port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the thread and closes the port; returns once both are done.
    pub fn shutdown(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            // If the wake fails the thread is gone already (its poll failed).
            if self.waker.wake().is_ok() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for AdminHandle {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::tests::parse_strict;
    use crate::metrics::{Direction, LinkId, MessageKind};
    use std::net::TcpStream as StdStream;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    fn start(limits: Limits) -> (AdminHandle, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new(&["Bona".to_string()]));
        let m = Arc::clone(&metrics);
        let handle = Admin::start_with(
            loopback(),
            Arc::clone(&metrics),
            Box::new(PlacesView::idle),
            Box::new(move || metrics::health_lines(&m)),
            limits,
        )
        .expect("admin starts on loopback");
        (handle, metrics)
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s
    }

    /// Sends `request` and reads until the server closes; a reset counts as a close.
    fn exchange(addr: SocketAddr, request: &[u8]) -> String {
        let mut s = connect(addr);
        let _ = s.write_all(request);
        read_all(&mut s)
    }

    fn read_all(s: &mut StdStream) -> String {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
                Err(e) => panic!("read: {e}"),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }

    fn split(reply: &str) -> (&str, &str) {
        reply.split_once("\r\n\r\n").expect("a head and a body")
    }

    #[test]
    fn metrics_are_served_and_parse_strictly() {
        let (admin, metrics) = start(LIMITS);
        metrics.message(MessageKind::Iamat);
        let reply = exchange(admin.local_addr(), b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        let (head, body) = split(&reply);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("\r\nContent-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(head.contains("\r\nConnection: close"), "{head}");
        assert!(
            head.contains(&format!("\r\nContent-Length: {}", body.len())),
            "{head}"
        );
        parse_strict(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
        assert!(body.contains("herd_messages_total{kind=\"IAMAT\"} 1\n"));
        // A query string and HTTP/1.0 are fine too.
        let reply = exchange(admin.local_addr(), b"GET /metrics?x=1 HTTP/1.0\n\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    }

    #[test]
    fn healthz_lists_the_links() {
        let (admin, metrics) = start(LIMITS);
        if let Some(l) = metrics.link(LinkId(0)) {
            l.set_up(Direction::Out, true);
        }
        let reply = exchange(admin.local_addr(), b"GET /healthz HTTP/1.1\r\n\r\n");
        let (head, body) = split(&reply);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, "ok\nBona out up\nBona in down\n");
    }

    #[test]
    fn other_paths_methods_and_garbage() {
        let (admin, _) = start(LIMITS);
        let status = |req: &[u8]| {
            let reply = exchange(admin.local_addr(), req);
            reply.lines().next().unwrap_or("").to_string()
        };
        assert_eq!(status(b"GET / HTTP/1.1\r\n\r\n"), "HTTP/1.1 404 Not Found");
        assert_eq!(
            status(b"GET /metricsx HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 404 Not Found"
        );
        assert_eq!(
            status(b"POST /metrics HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(
            status(b"HEAD /metrics HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 405 Method Not Allowed"
        );
        assert_eq!(status(b"hello\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(status(b"GET /metrics HTTP/2\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        assert_eq!(
            status(b"GET metrics HTTP/1.1\r\n\r\n"),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(
            status(b"GET /metrics HTTP/1.1\r\nno colon\r\n\r\n"),
            "HTTP/1.1 400 Bad Request"
        );
        assert_eq!(status(b"GET /\xff HTTP/1.1\r\n\r\n"), "HTTP/1.1 400 Bad Request");
        let reply = exchange(admin.local_addr(), b"PUT /x HTTP/1.1\r\n\r\n");
        assert!(reply.contains("\r\nAllow: GET\r\n"), "{reply}");
    }

    #[test]
    fn a_slow_client_is_closed_without_a_reply() {
        let limits = Limits {
            timeout: Duration::from_millis(200),
            ..LIMITS
        };
        let (admin, _) = start(limits);
        let mut s = connect(admin.local_addr());
        s.write_all(b"GET /metrics HTTP/1.1\r\n").expect("write");
        assert_eq!(read_all(&mut s), "", "closed, nothing sent");
        // And the slot is free again: a prompt client is served.
        let reply = exchange(admin.local_addr(), b"GET /healthz HTTP/1.1\r\n\r\n");
        assert!(reply.starts_with("HTTP/1.1 200 OK"), "{reply}");
    }

    #[test]
    fn an_oversized_head_is_closed() {
        let (admin, _) = start(LIMITS);
        let mut req = b"GET /metrics HTTP/1.1\r\n".to_vec();
        while req.len() <= LIMITS.max_head {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        req.extend_from_slice(b"\r\n");
        assert_eq!(exchange(admin.local_addr(), &req), "");
        // Just under the bound is served.
        let mut req = b"GET /healthz HTTP/1.1\r\n".to_vec();
        while req.len() < LIMITS.max_head - 100 {
            req.extend_from_slice(b"X-Pad: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n");
        }
        req.extend_from_slice(b"\r\n");
        assert!(exchange(admin.local_addr(), &req).starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn connections_past_the_limit_are_closed_at_once() {
        let (admin, _) = start(LIMITS);
        let addr = admin.local_addr();
        let mut idle: Vec<StdStream> = (0..LIMITS.max_conns).map(|_| connect(addr)).collect();
        // The listener accepts in order, so the one past the limit finds no slot.
        let mut extra = connect(addr);
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\n\r\n");
        assert_eq!(read_all(&mut extra), "");
        // One idle client leaves; its slot serves the next client.
        drop(idle.pop());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let reply = exchange(addr, b"GET /healthz HTTP/1.1\r\n\r\n");
            if reply.starts_with("HTTP/1.1 200 OK") {
                break;
            }
            assert!(Instant::now() < deadline, "slot never freed");
            std::thread::sleep(Duration::from_millis(10));
        }
        // The idle ones are still open: each answers its request.
        let mut s = idle.pop().expect("idle clients");
        s.write_all(b"GET /healthz HTTP/1.1\r\n\r\n").expect("write");
        assert!(read_all(&mut s).starts_with("HTTP/1.1 200 OK"));
    }

    #[test]
    fn bind_errors_are_start_errors_and_shutdown_closes_the_port() {
        let (admin, metrics) = start(LIMITS);
        let addr = admin.local_addr();
        let again = Admin::start(addr, metrics, Box::new(PlacesView::idle), Box::new(String::new));
        assert!(again.is_err(), "second bind on {addr} succeeded");
        admin.shutdown();
        assert!(
            StdStream::connect(addr).is_err(),
            "still listening after shutdown"
        );
    }

    /// Measurement for the closing note, not a check: `cargo test --release --bin
    /// herd -- --ignored admin::tests::scrape_time --nocapture`.
    #[test]
    #[ignore]
    fn scrape_time() {
        let names: Vec<String> = (0..4).map(|i| format!("N{i}")).collect();
        let metrics = Arc::new(Metrics::new(&names));
        let started = Instant::now();
        let mut text = String::new();
        for _ in 0..1000 {
            text.clear();
            metrics::render(&metrics, &PlacesView::idle(), &mut text);
        }
        let render = started.elapsed() / 1000;
        let admin = Admin::start(
            loopback(),
            metrics,
            Box::new(PlacesView::idle),
            Box::new(String::new),
        )
        .expect("starts");
        let mut times: Vec<Duration> = (0..1000)
            .map(|_| {
                let t = Instant::now();
                let reply = exchange(admin.local_addr(), b"GET /metrics HTTP/1.1\r\n\r\n");
                assert!(reply.starts_with("HTTP/1.1 200"));
                t.elapsed()
            })
            .collect();
        times.sort();
        eprintln!(
            "render {render:?} ({} bytes); scrape over loopback: median {:?}, p99 {:?}",
            text.len(),
            times[500],
            times[990]
        );
    }

    #[test]
    fn routes() {
        assert_eq!(route(b"GET /metrics HTTP/1.1\r\n\r\n"), Route::Metrics);
        assert_eq!(
            route(b"GET /healthz?full HTTP/1.1\r\nA: b\r\n\r\n"),
            Route::Healthz
        );
        assert_eq!(route(b"GET  /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(route(b"get /metrics HTTP/1.1\r\n\r\n"), Route::BadRequest);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n", 0), None);
    }
}
