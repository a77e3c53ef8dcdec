//! Test harness: real `herd` processes on free loopback ports, with a temporary herd.yml,
//! and line-oriented TCP clients that talk to them as `nc` would.
//!
//! Every process a test starts is killed by its PID when its handle drops, also when the
//! test fails. Waits poll with deadlines; nothing sleeps a fixed time to "let it settle".

#![allow(dead_code)]

#[cfg(target_os = "linux")]
pub mod netns;
pub mod places_stub;

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_herd");
/// Generous: the suite runs on a loaded 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// A port nobody listens on right now, for a test server to bind.
///
/// Not from the kernel's ephemeral range: the tests' own outgoing connections take their
/// local ports from there, and one could take a chosen port before its server binds it.
/// Below that range, each test process claims a block of ports for itself (see
/// `claim_block`), so neither parallel tests nor test processes running at the same time
/// (two `cargo test`s on one machine) are handed the same port.
pub fn free_port() -> u16 {
    const LOW: usize = 10_000;
    const BLOCK: usize = 500;
    // (block, ports of it handed out)
    static STATE: std::sync::Mutex<Option<(usize, usize)>> = std::sync::Mutex::new(None);
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<usize>().ok())
        .unwrap_or(32768);
    let blocks = ephemeral_low.saturating_sub(LOW) / BLOCK;
    let mut state = STATE.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        let (block, used) = match *state {
            Some((block, used)) if used < BLOCK => (block, used),
            _ => {
                let first = std::process::id() as usize;
                let block = (0..blocks)
                    .map(|i| (first + i) % blocks)
                    .find(|b| claim_block(*b))
                    .unwrap_or_else(|| {
                        panic!("every block of test ports in {LOW}..{ephemeral_low} is taken")
                    });
                (block, 0)
            }
        };
        *state = Some((block, used + 1));
        let port = (LOW + block * BLOCK + used) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Claims block `b` of test ports for this process with a file in the temp directory that
/// holds its PID; a block whose process is gone is taken over.
fn claim_block(b: usize) -> bool {
    let dir = std::env::temp_dir().join("herd-test-ports");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("block-{b}"));
    let me = std::process::id().to_string();
    for _ in 0..2 {
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => return f.write_all(me.as_bytes()).is_ok(),
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let owner = std::fs::read_to_string(&path).unwrap_or_default();
                // Empty: its owner is writing it right now.
                if owner.is_empty() || owner == me || Path::new("/proc").join(&owner).exists() {
                    return false;
                }
                let _ = std::fs::remove_file(&path);
            }
            Err(_) => return false,
        }
    }
    false
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let n = N.fetch_add(1, Ordering::SeqCst);
        let dir = std::env::temp_dir().join(format!("herd-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// SPEC §1's herd: each server with its neighbours.
pub const SPEC_TOPOLOGY: &[(&str, &[&str])] = &[
    ("Bailey", &["Bona", "Campbell"]),
    ("Bona", &["Bailey", "Campbell", "Clark"]),
    ("Campbell", &["Bailey", "Bona", "Jaquez"]),
    ("Clark", &["Bona", "Jaquez"]),
    ("Jaquez", &["Campbell", "Clark"]),
];

/// One server's place in a test herd.
#[derive(Clone, Debug)]
pub struct Spec {
    pub name: String,
    pub port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<String>,
}

/// A herd description in a temporary directory, and the servers started from it.
pub struct Herd {
    pub dir: TempDir,
    pub config: PathBuf,
    pub specs: Vec<Spec>,
    pub servers: Vec<Server>,
    pub env: Vec<(String, String)>,
}

impl Herd {
    /// Writes a herd.yml for `topology` (name, neighbours) with fresh ports; `extra` YAML
    /// (places:, log:, limits: sections) is appended.
    pub fn new(topology: &[(&str, &[&str])], extra: &str) -> Herd {
        let dir = TempDir::new("herd");
        let specs: Vec<Spec> = topology
            .iter()
            .map(|(name, ns)| Spec {
                name: name.to_string(),
                port: free_port(),
                peer_port: free_port(),
                neighbours: ns.iter().map(|n| n.to_string()).collect(),
            })
            .collect();
        let mut yaml = String::from("servers:\n");
        for s in &specs {
            yaml += &format!(
                "  {}: {{ host: 127.0.0.1, port: {}, peer_port: {}, neighbours: [{}] }}\n",
                s.name,
                s.port,
                s.peer_port,
                s.neighbours.join(", ")
            );
        }
        if !extra.contains("log:") {
            yaml += "log: { dir: logs, level: debug }\n";
        }
        if !extra.contains("places:") {
            // Never reach out to Google from a test, even by accident.
            yaml += "places: { url: 'http://127.0.0.1:9' }\n";
        }
        yaml += extra;
        let config = dir.path().join("herd.yml");
        std::fs::write(&config, yaml).expect("write herd.yml");
        Herd {
            dir,
            config,
            specs,
            servers: Vec::new(),
            env: Vec::new(),
        }
    }

    /// SPEC §1's five-server topology (same names and links as the shipped herd.yml) with
    /// fresh ports; nothing started yet.
    pub fn default_five(extra: &str) -> Herd {
        Herd::new(SPEC_TOPOLOGY, extra)
    }

    /// Starts every server of the topology, in topology order.
    pub fn start_all(&mut self) {
        let names: Vec<String> = self.specs.iter().map(|s| s.name.clone()).collect();
        for name in names {
            self.start(&name);
        }
    }

    /// Every server name in the topology, in topology order.
    pub fn names(&self) -> Vec<String> {
        self.specs.iter().map(|s| s.name.clone()).collect()
    }

    /// `kill -9` a started server and waits until it is gone (panics if it is not within
    /// `DEADLINE`); its handle is dropped, so `start(name)` can run it again.
    pub fn kill9(&mut self, name: &str) {
        let server = self.server(name);
        server.signal("KILL");
        assert!(server.wait_exit(DEADLINE).is_some(), "{name} survived SIGKILL");
        self.servers.retain(|s| s.name != name);
    }

    /// One server alone.
    pub fn single(extra: &str) -> Herd {
        let mut h = Herd::new(&[("Alpha", &[])], extra);
        h.start("Alpha");
        h
    }

    pub fn spec(&self, name: &str) -> &Spec {
        self.specs
            .iter()
            .find(|s| s.name == name)
            .expect("server in topology")
    }

    pub fn port(&self, name: &str) -> u16 {
        self.spec(name).port
    }

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Starts `name` and waits until it accepts clients.
    pub fn start(&mut self, name: &str) {
        let port = self.port(name);
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(&self.config)
            .arg(name)
            .env_remove("GOOGLE_PLACES_API_KEY")
            .env_remove("HERD_PLACES_URL")
            .env_remove("HERD_PLACES_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().expect("spawn herd");
        let mut server = Server {
            name: name.to_string(),
            child,
            port,
        };
        server.wait_listening();
        self.servers.retain(|s| s.name != name);
        self.servers.push(server);
    }

    pub fn server(&mut self, name: &str) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .expect("server started")
    }

    pub fn client(&self, name: &str) -> Client {
        Client::connect(self.port(name))
    }
}

/// A running `herd` process, killed on drop.
pub struct Server {
    pub name: String,
    pub child: Child,
    pub port: u16,
}

impl Server {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + DEADLINE;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                panic!("{} exited early ({status}): {err}", self.name);
            }
            assert!(Instant::now() < deadline, "{} did not start listening", self.name);
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether the process is still running, or how it ended and what it said on stderr:
    /// for failure messages.
    pub fn state(&mut self) -> String {
        match self.child.try_wait() {
            Ok(None) => "still running".to_string(),
            Ok(Some(status)) => {
                let mut err = String::new();
                if let Some(e) = self.child.stderr.as_mut() {
                    let _ = e.read_to_string(&mut err);
                }
                format!("exited ({status}); stderr: {err:?}")
            }
            Err(e) => format!("unknown ({e})"),
        }
    }

    /// Sends a signal by PID (`kill -SIG pid`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {}", self.pid());
    }

    /// After `signal("STOP")`: waits until every thread of the process is stopped. SIGSTOP
    /// stops a multi-threaded process only once one of its threads has run to take it, so
    /// right after `kill` returns the reactor may still serve a little input.
    pub fn wait_stopped(&self, within: Duration) -> bool {
        let task = format!("/proc/{}/task", self.pid());
        let stopped = || -> Option<bool> {
            let mut all = true;
            for t in std::fs::read_dir(&task).ok()? {
                let stat = std::fs::read_to_string(t.ok()?.path().join("stat")).ok()?;
                // The state follows the command name, which is in parentheses.
                let state = stat.rsplit_once(')')?.1.split_whitespace().next()?;
                all &= state == "T" || state == "t";
            }
            Some(all)
        };
        eventually(within, || stopped().filter(|s| *s).map(|_| ())).is_some()
    }

    /// Waits for the process to exit; None if it is still running at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // SIGCONT first: a test may have stopped it. Not for one already reaped: its PID
        // may be someone else's by now.
        if let Ok(None) = self.child.try_wait() {
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(self.pid().to_string())
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A line-oriented TCP client with read deadlines.
pub struct Client {
    pub reader: BufReader<TcpStream>,
    pub stream: TcpStream,
}

impl Client {
    pub fn connect(port: u16) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { reader, stream }
    }

    /// A client whose receive buffer is pinned small (no autotuning), so replies it does
    /// not read pile up at the server instead of in this side's kernel buffer.
    pub fn connect_small_rcvbuf(port: u16) -> Client {
        use socket2::{Domain, Socket, Type};
        let socket = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        socket.connect(&addr.into()).expect("connect");
        let stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Client { reader, stream }
    }

    pub fn send(&mut self, bytes: impl AsRef<[u8]>) {
        self.stream.write_all(bytes.as_ref()).expect("send");
    }

    /// The next reply line, with its `\n`; panics on EOF or timeout.
    pub fn line(&mut self) -> String {
        let bytes = self.raw_line();
        String::from_utf8(bytes).expect("utf-8 reply")
    }

    pub fn raw_line(&mut self) -> Vec<u8> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) => panic!("connection closed while waiting for a reply"),
            Ok(_) => buf,
            Err(e) => panic!("no reply: {e}"),
        }
    }

    /// Sends one message and returns its one-line reply.
    pub fn ask(&mut self, msg: &str) -> String {
        self.send(format!("{msg}\n"));
        self.line()
    }

    /// Reads a WHATSAT reply: the AT line and the JSON up to the blank line.
    pub fn whatsat_reply(&mut self) -> (String, String) {
        let at = self.line();
        let mut json = String::new();
        loop {
            let l = self.line();
            if l == "\n" {
                break;
            }
            json += &l;
        }
        (at, json)
    }

    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown");
    }

    /// True if the server closes the connection (EOF) before `within`, with no more data.
    pub fn closed_within(&mut self, within: Duration) -> bool {
        let mut b = [0u8; 1];
        matches!(self.read_some(&mut b, within), Ok(0))
    }

    /// One `read` with a deadline. A read interrupted by a signal is retried: Linux may
    /// fail a socket read that has a timeout with EINTR after the test process was stopped
    /// and continued, even with no signal handler installed.
    pub fn read_some(&mut self, buf: &mut [u8], within: Duration) -> std::io::Result<usize> {
        let deadline = Instant::now() + within;
        let result = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break Err(ErrorKind::TimedOut.into());
            }
            self.stream.set_read_timeout(Some(left))?;
            match self.reader.read(buf) {
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                other => break other,
            }
        };
        self.stream.set_read_timeout(Some(DEADLINE))?;
        result
    }

    /// True if nothing arrives within `quiet`.
    pub fn silent_for(&mut self, quiet: Duration) -> bool {
        self.heard_within(quiet).is_none()
    }

    /// What arrived within `quiet`, if anything: bytes, EOF or an error (for messages).
    pub fn heard_within(&mut self, quiet: Duration) -> Option<String> {
        let mut b = [0u8; 64];
        match self.read_some(&mut b, quiet) {
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
            Err(e) => Some(format!("error: {e}")),
            Ok(0) => Some("EOF".to_string()),
            Ok(n) => Some(format!("bytes: {:?}", String::from_utf8_lossy(&b[..n]))),
        }
    }
}

/// Current POSIX time as `secs.nanos` text.
pub fn now_text() -> String {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn eventually<T>(within: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
