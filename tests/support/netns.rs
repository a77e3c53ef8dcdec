//! A network test bed for SPEC §5 (issue 10): the five servers of SPEC §1 on five hosts,
//! each host a network namespace with its own address, joined by a bridge that lives in a
//! sixth namespace, so nothing here touches the root namespace's network.
//!
//! Faults are made where a real network makes them: in the switch. The bridge namespace
//! holds one nftables table (`bridge herd`) rebuilt from the bed's fault state on every
//! change, so a cut host's own stack sees a perfectly normal send and the frame just
//! vanishes (no RST, no local error, ARP still answered), as on a cut cable behind a
//! router. `ip link set` on the bridge side of a host's veth is the unplugged cable.
//! Dropping in the host's own OUTPUT hook would not do: a locally dropped segment is an
//! error to the sender's TCP and stays unsent instead of being lost in flight.
//!
//! Names: every host's `/etc/netns/<ns>/hosts` maps `<Name>.herd.test` to its address
//! (`ip netns exec` bind-mounts it over /etc/hosts), and its nsswitch.conf and
//! resolv.conf there make a missing name fail at once instead of timing out on a DNS
//! server this network cannot reach. herd.yml uses the names.
//!
//! Clients are probes of a server's state, not of the network: the test process connects
//! from inside the server's own namespace (a thread that `setns`es into it), to the
//! server's own address, so a probe works whatever fault its host is under.
//!
//! Everything is torn down by `Drop`, also when a test fails: every server is killed by
//! its PID, then the namespaces (which takes the bridge and veths with them) and the
//! `/etc/netns` directories are removed. Leftovers of a test process that was itself
//! killed are removed by the next bed.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{BIN, Client, DEADLINE, SPEC_TOPOLOGY, Server, TempDir, eventually};

/// The test subnet: used only inside the bed's namespaces, which have no route out.
const SUBNET: [u8; 3] = [10, 213, 0];
/// SPEC §1's ports; every host has its own address, so they never collide.
const PORTS: &[(&str, u16, u16)] = &[
    ("Bailey", 10099, 20099),
    ("Bona", 10044, 20044),
    ("Campbell", 10022, 20022),
    ("Clark", 10211, 20211),
    ("Jaquez", 10194, 20194),
];
/// Namespace names start with this, then the test process's PID.
const NS_PREFIX: &str = "herd-";
const NETNS_DIR: &str = "/var/run/netns";
const ETC_NETNS: &str = "/etc/netns";

/// How the bed's herd.yml is written.
#[derive(Clone, Debug)]
pub struct Options {
    /// `peers.dead_after_ms` (SPEC §5). None leaves the `peers:` section out, for servers
    /// that do not know the key yet (their config would refuse it).
    pub dead_after_ms: Option<u32>,
    pub log_level: &'static str,
    /// `peer_tls` (SPEC §6), with certificates made by `herd certs` beside herd.yml.
    pub tls: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            dead_after_ms: None,
            log_level: "debug",
            tls: false,
        }
    }
}

/// The faults in force on one host's port of the bridge.
#[derive(Clone, Debug, Default)]
struct Faults {
    /// Every IP frame from and to the host is dropped.
    cut: bool,
    /// Percent of the IP frames sent *to* the host that are dropped.
    loss: u8,
    /// Pure SYNs to this TCP port of the host are dropped: dials to it hang.
    drop_syns_to: Option<u16>,
    /// Every frame of these flows (source address and port, to `drop_syns_to`'s port or
    /// any port) is dropped: dials that were already hanging keep hanging.
    pinned: Vec<(Ipv4Addr, u16)>,
}

pub struct Host {
    pub name: String,
    pub ns: String,
    pub addr: Ipv4Addr,
    pub port: u16,
    pub peer_port: u16,
    pub neighbours: Vec<String>,
    /// The bridge-side end of the host's veth (in the bridge namespace).
    port_if: String,
    faults: Faults,
    /// Names left out of this host's hosts file.
    hidden: Vec<String>,
}

impl Host {
    pub fn dns_name(&self) -> String {
        format!("{}.herd.test", self.name)
    }
}

/// One line of a server's log that mentions a link, with its timestamp.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub at: SystemTime,
    pub text: String,
}

/// Which of a neighbour's two connections a link line is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// The link this server dialled ("link to N").
    Out,
    /// The connection N dialled to us ("link from N").
    In,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    Up,
    Down,
}

/// Reads a server's log as it grows and keeps the lines that mention a link, so a busy
/// log is read once, not once per poll.
#[derive(Default)]
struct LogTail {
    offset: u64,
    partial: Vec<u8>,
    lines: Vec<LogLine>,
}

pub struct Bed {
    /// `herd-<pid>-<n>`: every namespace of this bed starts with it.
    pub tag: String,
    pub dir: TempDir,
    pub config: PathBuf,
    pub hosts: Vec<Host>,
    bridge_ns: String,
    servers: Vec<Server>,
    logs: Mutex<HashMap<String, LogTail>>,
    /// Namespaces and /etc/netns dirs made so far: what `Drop` removes.
    made_ns: Vec<String>,
    /// Reboots so far: each rebooted host gets a namespace with a new name.
    boots: usize,
}

/// Fails the test at once, with the reason, when the bed cannot be built here.
pub fn require_bed() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert!(
        euid == 0,
        "the network test bed needs root (network namespaces, nftables); run as root"
    );
    for (tool, package) in [("ip", "iproute2"), ("ss", "iproute2"), ("nft", "nftables")] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        assert!(
            found,
            "`{tool}` not found: install {package} (`apt-get install -y {package}`; .ci/run does)"
        );
    }
}

/// Runs a command of the bed's plumbing; Err(its stderr) if it fails.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn must(program: &str, args: &[&str]) {
    if let Err(e) = sh(program, args) {
        panic!("test bed: {e}");
    }
}

/// Runs `f` on a thread that has entered network namespace `ns`. Sockets it creates stay
/// in that namespace, so a connected stream can be handed back and used from anywhere.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = Path::new(NETNS_DIR).join(ns);
    std::thread::scope(|s| {
        s.spawn(move || {
            let file = File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            // SAFETY: a valid namespace fd; CLONE_NEWNET only changes this thread's network
            // namespace, which is what the thread exists for.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert!(rc == 0, "setns {ns}: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    })
}

/// Removes namespaces and /etc/netns dirs left by test processes that no longer run (one
/// killed before its `Drop` could run), and kills the servers still running in them.
fn remove_leftovers() {
    let stale = |name: &str| -> bool {
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            return false;
        };
        let pid = rest.split('-').next().unwrap_or("");
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists()
    };
    for dir in [NETNS_DIR, ETC_NETNS] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if stale(&name) {
                if dir == NETNS_DIR {
                    // Servers the dead test started: by the PIDs in that namespace.
                    let pids = Command::new("ip").args(["netns", "pids", &name]).output();
                    if let Ok(out) = pids {
                        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                            let _ = sh("kill", &["-KILL", pid]);
                        }
                    }
                    let _ = sh("ip", &["netns", "del", &name]);
                } else {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
        }
    }
}

impl Bed {
    /// Builds the five hosts and writes herd.yml; starts nothing.
    pub fn new(options: Options) -> Bed {
        require_bed();
        remove_leftovers();
        static N: AtomicUsize = AtomicUsize::new(0);
        let tag = format!(
            "{NS_PREFIX}{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let dir = TempDir::new("netns");
        let hosts: Vec<Host> = SPEC_TOPOLOGY
            .iter()
            .enumerate()
            .map(|(i, (name, neighbours))| {
                let (_, port, peer_port) = PORTS
                    .iter()
                    .find(|(n, ..)| n == name)
                    .copied()
                    .expect("SPEC server has ports");
                Host {
                    name: name.to_string(),
                    ns: format!("{tag}-{name}"),
                    addr: Ipv4Addr::new(SUBNET[0], SUBNET[1], SUBNET[2], i as u8 + 1),
                    port,
                    peer_port,
                    neighbours: neighbours.iter().map(|n| n.to_string()).collect(),
                    port_if: format!("p-{name}"),
                    faults: Faults::default(),
                    hidden: Vec::new(),
                }
            })
            .collect();
        let config = dir.path().join("herd.yml");
        let mut bed = Bed {
            bridge_ns: format!("{tag}-br"),
            tag,
            dir,
            config,
            hosts,
            servers: Vec::new(),
            logs: Mutex::new(HashMap::new()),
            made_ns: Vec::new(),
            boots: 0,
        };
        bed.build();
        bed.write_config(&options);
        bed
    }

    fn build(&mut self) {
        let br = self.bridge_ns.clone();
        must("ip", &["netns", "add", &br]);
        self.made_ns.push(br.clone());
        must("ip", &["-n", &br, "link", "set", "lo", "up"]);
        must("ip", &["-n", &br, "link", "add", "br0", "type", "bridge"]);
        must("ip", &["-n", &br, "link", "set", "br0", "up"]);
        for i in 0..self.hosts.len() {
            self.make_host(i);
        }
        self.apply_rules();
    }

    /// Makes host `i`'s namespace, plugs it into the bridge and writes its /etc/netns files.
    fn make_host(&mut self, i: usize) {
        let br = self.bridge_ns.clone();
        let (ns, port_if, addr) = {
            let h = &self.hosts[i];
            (h.ns.clone(), h.port_if.clone(), h.addr)
        };
        must("ip", &["netns", "add", &ns]);
        self.made_ns.push(ns.clone());
        // Both ends are made inside the bridge namespace and one is moved straight into the
        // host's: neither ever appears in the root namespace.
        must(
            "ip",
            &[
                "-n", &br, "link", "add", &port_if, "type", "veth", "peer", "name", "eth0", "netns", &ns,
            ],
        );
        must("ip", &["-n", &br, "link", "set", &port_if, "master", "br0", "up"]);
        must("ip", &["-n", &ns, "link", "set", "lo", "up"]);
        // The host's NIC keeps its MAC across a reboot, so its neighbours' ARP entries stay
        // right and the first heartbeat after it reaches the new kernel.
        let o = addr.octets();
        let mac = format!("02:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3]);
        must("ip", &["-n", &ns, "link", "set", "eth0", "address", &mac]);
        must(
            "ip",
            &["-n", &ns, "addr", "add", &format!("{addr}/24"), "dev", "eth0"],
        );
        must("ip", &["-n", &ns, "link", "set", "eth0", "up"]);
        self.write_etc(i);
    }

    /// Writes host `i`'s /etc/netns files: hosts (minus its hidden names), and a resolver
    /// set-up under which a name missing from hosts fails at once.
    fn write_etc(&self, i: usize) {
        let h = &self.hosts[i];
        let dir = Path::new(ETC_NETNS).join(&h.ns);
        std::fs::create_dir_all(&dir).expect("create /etc/netns dir");
        let mut hosts = String::from("127.0.0.1 localhost\n");
        for other in &self.hosts {
            if !h.hidden.contains(&other.name) {
                hosts += &format!("{} {}\n", other.addr, other.dns_name());
            }
        }
        // In place (truncate and write, same inode): the running servers see this file
        // through a bind mount, which a rename would leave on the old inode.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join("hosts"))
            .expect("open hosts");
        f.write_all(hosts.as_bytes()).expect("write hosts");
        for (file, text) in [
            ("nsswitch.conf", "passwd: files\ngroup: files\nhosts: files\n"),
            (
                "resolv.conf",
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            ),
        ] {
            let path = dir.join(file);
            if !path.exists() {
                std::fs::write(path, text).expect("write /etc/netns file");
            }
        }
    }

    fn write_config(&self, options: &Options) {
        let mut yaml = String::from("servers:\n");
        for h in &self.hosts {
            yaml += &format!(
                "  {}: {{ host: {}, port: {}, peer_port: {}, neighbours: [{}] }}\n",
                h.name,
                h.dns_name(),
                h.port,
                h.peer_port,
                h.neighbours.join(", ")
            );
        }
        yaml += &format!("log: {{ dir: logs, level: {} }}\n", options.log_level);
        // Never reach out to Google from a test, even by accident.
        yaml += "places: { url: 'http://127.0.0.1:9' }\n";
        // HERD_NETNS_OMIT_PEERS runs a scenario against servers that refuse the key (to see
        // how today's code fails it).
        if let Some(ms) = options.dead_after_ms
            && std::env::var_os("HERD_NETNS_OMIT_PEERS").is_none()
        {
            yaml += &format!("peers: {{ dead_after_ms: {ms} }}\n");
        }
        if options.tls {
            yaml += "peer_tls: { ca: certs/ca.pem, cert: 'certs/{name}.pem', key: 'certs/{name}.key' }\n";
        }
        std::fs::write(&self.config, yaml).expect("write herd.yml");
        if options.tls {
            let out = Command::new(BIN)
                .arg("certs")
                .arg("--config")
                .arg(&self.config)
                .output()
                .expect("run herd certs");
            assert!(
                out.status.success(),
                "herd certs: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the bed"))
    }

    fn host_mut(&mut self, name: &str) -> &mut Host {
        self.hosts
            .iter_mut()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name} in the bed"))
    }

    pub fn names(&self) -> Vec<String> {
        self.hosts.iter().map(|h| h.name.clone()).collect()
    }

    // ---- servers ----

    /// Starts every server, in SPEC order.
    pub fn start_all(&mut self) {
        for name in self.names() {
            self.start(&name);
        }
    }

    /// Starts `name` in its namespace and waits until it accepts clients (probed from inside
    /// that namespace, so this works while the host is cut off).
    pub fn start(&mut self, name: &str) {
        let (ns, addr, port) = {
            let h = self.host(name);
            (h.ns.clone(), h.addr, h.port)
        };
        let child = Command::new("ip")
            .args(["netns", "exec", &ns, BIN, "--config"])
            .arg(&self.config)
            .arg(name)
            .env_remove("GOOGLE_PLACES_API_KEY")
            .env_remove("HERD_PLACES_URL")
            .env_remove("HERD_PLACES_API")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec herd");
        // `ip netns exec` execs the command in place, so this PID is the server's.
        let mut server = Server {
            name: name.to_string(),
            child,
            port,
        };
        let deadline = Instant::now() + DEADLINE;
        let target = SocketAddr::from((addr, port));
        loop {
            let up = in_netns(&ns, || {
                TcpStream::connect_timeout(&target, Duration::from_millis(500)).is_ok()
            });
            if up {
                break;
            }
            if let Ok(Some(_)) = server.child.try_wait() {
                panic!("{name} exited early: {}", server.state());
            }
            assert!(Instant::now() < deadline, "{name} did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        self.servers.retain(|s| s.name != name);
        self.servers.push(server);
    }

    pub fn server(&mut self, name: &str) -> &mut Server {
        self.servers
            .iter_mut()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("{name} not started"))
    }

    /// `kill -9`, and waits until it is gone.
    pub fn kill9(&mut self, name: &str) {
        let server = self.server(name);
        server.signal("KILL");
        assert!(server.wait_exit(DEADLINE).is_some(), "{name} survived SIGKILL");
        self.servers.retain(|s| s.name != name);
    }

    /// `kill -9` then start again in the same namespace. Its kernel stays, so sockets the
    /// old process left (FIN_WAIT, retransmitting) still speak for it: for a host that lost
    /// power, see `reboot`.
    pub fn restart(&mut self, name: &str) {
        self.kill9(name);
        self.start(name);
    }

    /// A host that loses power and boots again with the same address, while it is cut off
    /// (so its neighbours hear nothing of it): the server is killed, the host's namespace
    /// unplugged and replaced by a fresh one (a new kernel state: the old one's orphaned
    /// sockets would otherwise go on retransmitting their FINs and tell the neighbours), and
    /// the server started in it. The cut stays until `heal`.
    pub fn reboot(&mut self, name: &str) {
        assert!(
            self.host(name).faults.cut,
            "reboot {name}: cut it first, or its FIN tells all"
        );
        self.kill9(name);
        let i = self.hosts.iter().position(|h| h.name == name).expect("host");
        let old = self.hosts[i].ns.clone();
        // Deleting one end of the veth deletes both: the old namespace is offline for good.
        must(
            "ip",
            &["-n", &self.bridge_ns, "link", "del", &self.hosts[i].port_if],
        );
        let _ = sh("ip", &["netns", "del", &old]);
        let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(&old));
        self.boots += 1;
        self.hosts[i].ns = format!("{}-{name}-boot{}", self.tag, self.boots);
        self.make_host(i);
        self.start(name);
    }

    pub fn sigstop(&mut self, name: &str) {
        let server = self.server(name);
        server.signal("STOP");
        assert!(server.wait_stopped(DEADLINE), "{name} did not stop");
    }

    pub fn sigcont(&mut self, name: &str) {
        self.server(name).signal("CONT");
    }

    // ---- faults ----

    /// Drops every IP frame from and to `name` in the switch: a silent partition.
    pub fn cut(&mut self, name: &str) {
        self.host_mut(name).faults.cut = true;
        self.apply_rules();
    }

    /// Undoes `cut`, `loss`, `drop_syns_to` and `pin` for `name`.
    pub fn heal(&mut self, name: &str) {
        self.host_mut(name).faults = Faults::default();
        self.apply_rules();
    }

    /// Drops `percent` of the IP frames sent to `name` (data to it and ACKs of its data).
    pub fn loss(&mut self, name: &str, percent: u8) {
        assert!(percent <= 100, "loss of {percent}%");
        self.host_mut(name).faults.loss = percent;
        self.apply_rules();
    }

    /// Drops pure SYNs to `name`'s TCP port `port`: every dial to it hangs.
    pub fn drop_syns(&mut self, name: &str, port: u16) {
        self.host_mut(name).faults.drop_syns_to = Some(port);
        self.apply_rules();
    }

    /// Lets new dials to `name` through again but keeps dropping the frames of the given
    /// flows (source address and port), so dials already hanging keep hanging.
    pub fn pin_and_allow_syns(&mut self, name: &str, flows: &[(Ipv4Addr, u16)]) {
        let h = self.host_mut(name);
        h.faults.pinned = flows.to_vec();
        h.faults.drop_syns_to = None;
        self.apply_rules();
    }

    /// The unplugged cable: the bridge side of `name`'s veth goes down (its eth0 loses
    /// carrier; its addresses and routes stay).
    pub fn link_down(&mut self, name: &str) {
        let port_if = self.host(name).port_if.clone();
        must("ip", &["-n", &self.bridge_ns, "link", "set", &port_if, "down"]);
    }

    pub fn link_up(&mut self, name: &str) {
        let port_if = self.host(name).port_if.clone();
        must("ip", &["-n", &self.bridge_ns, "link", "set", &port_if, "up"]);
    }

    /// Rewrites the bridge's nftables table from every host's fault state, atomically.
    fn apply_rules(&self) {
        let mut rules = String::new();
        for h in &self.hosts {
            let (p, f) = (&h.port_if, &h.faults);
            if f.cut {
                // ARP still passes: the path is silent, the neighbour entry stays valid.
                rules += &format!("    iifname \"{p}\" ether type != arp drop\n");
                rules += &format!("    oifname \"{p}\" ether type != arp drop\n");
            }
            if f.loss > 0 {
                rules += &format!(
                    "    oifname \"{p}\" ether type ip numgen random mod 100 < {} counter drop\n",
                    f.loss
                );
            }
            if let Some(port) = f.drop_syns_to {
                rules += &format!(
                    "    oifname \"{p}\" ip protocol tcp tcp dport {port} tcp flags & (syn | ack) == syn drop\n"
                );
            }
            for (addr, sport) in &f.pinned {
                rules +=
                    &format!("    oifname \"{p}\" ip saddr {addr} ip protocol tcp tcp sport {sport} drop\n");
            }
        }
        let text = format!(
            "flush ruleset\ntable bridge herd {{\n  chain forward {{\n    type filter hook forward priority 0; policy accept;\n{rules}  }}\n}}\n"
        );
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.bridge_ns, "nft", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn nft");
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(text.as_bytes()).expect("write nft rules");
        }
        let out = child.wait_with_output().expect("wait nft");
        assert!(
            out.status.success(),
            "nft -f failed: {}\n{text}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // ---- names ----

    /// Leaves `names` out of `at`'s hosts file (now, and for servers already running).
    pub fn hide_names(&mut self, at: &str, names: &[&str]) {
        self.host_mut(at).hidden = names.iter().map(|n| n.to_string()).collect();
        let i = self.hosts.iter().position(|h| h.name == at).expect("host");
        self.write_etc(i);
    }

    // ---- clients ----

    /// A client connected to `name`'s client port from inside its own namespace.
    pub fn client(&self, name: &str) -> Client {
        let h = self.host(name);
        let target = SocketAddr::from((h.addr, h.port));
        let stream = in_netns(&h.ns, || TcpStream::connect_timeout(&target, DEADLINE))
            .unwrap_or_else(|e| panic!("connect to {name} at {target}: {e}"));
        stream.set_read_timeout(Some(DEADLINE)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        let reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
        Client { reader, stream }
    }

    /// Sends an IAMAT to `name` and checks its reply.
    pub fn iamat(&self, name: &str, client: &str, loc: &str, time: &str) {
        let reply = self.client(name).ask(&format!("IAMAT {client} {loc} {time}"));
        assert!(
            reply.starts_with(&format!("AT {name} "))
                && reply.ends_with(&format!(" {client} {loc} {time}\n")),
            "IAMAT {client} at {name} answered {reply:?}"
        );
    }

    /// The AT line `name` stores for `client` (WHATSAT with bound 0 makes no Places call),
    /// or None when it has none.
    pub fn record(&self, name: &str, client: &str) -> Option<String> {
        let mut c = self.client(name);
        let first = c.ask(&format!("WHATSAT {client} 1 0"));
        if first.starts_with("? ") {
            return None;
        }
        while c.line() != "\n" {}
        Some(first)
    }

    /// Whether every server in `at` stores, for each client, the record whose IAMAT carried
    /// that time; the first disagreement otherwise.
    pub fn disagreement(&self, at: &[String], records: &[(String, String)]) -> Option<String> {
        for name in at {
            for (client, time) in records {
                match self.record(name, client) {
                    Some(line) if line.trim_end().ends_with(&format!(" {time}")) => {}
                    other => return Some(format!("{name} has {other:?} for {client} (want time {time})")),
                }
            }
        }
        None
    }

    /// Polls until every server in `at` has each record; Ok(how long it took) or Err(the
    /// last disagreement).
    pub fn wait_agree(
        &self,
        at: &[String],
        records: &[(String, String)],
        within: Duration,
    ) -> Result<Duration, String> {
        let start = Instant::now();
        let mut last = String::new();
        let done = eventually(within, || match self.disagreement(at, records) {
            None => Some(()),
            Some(d) => {
                last = d;
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        });
        done.map(|_| start.elapsed()).ok_or(last)
    }

    // ---- logs ----

    pub fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join("logs").join(format!("{name}.log"))
    }

    /// The whole log (for failure messages; large under load).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.log_path(name)).unwrap_or_default()
    }

    /// Every line of `name`'s log so far that mentions a link (contains "link "), read
    /// incrementally.
    pub fn link_lines(&self, name: &str) -> Vec<LogLine> {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        let tail = logs.entry(name.to_string()).or_default();
        let Ok(mut f) = File::open(self.log_path(name)) else {
            return tail.lines.clone();
        };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        if len < tail.offset {
            // Truncated or replaced: read it again from the start.
            *tail = LogTail::default();
        }
        let mut fresh = Vec::new();
        if f.seek(SeekFrom::Start(tail.offset)).is_ok() && f.read_to_end(&mut fresh).is_ok() {
            tail.offset += fresh.len() as u64;
            tail.partial.extend_from_slice(&fresh);
            let cut = tail
                .partial
                .iter()
                .rposition(|b| *b == b'\n')
                .map_or(0, |i| i + 1);
            let complete: Vec<u8> = tail.partial.drain(..cut).collect();
            for line in String::from_utf8_lossy(&complete).lines() {
                if line.contains("link ")
                    && let Some(at) = line.split_whitespace().next().and_then(parse_rfc3339)
                {
                    tail.lines.push(LogLine {
                        at,
                        text: line.to_string(),
                    });
                }
            }
        }
        tail.lines.clone()
    }

    /// `name`'s link events about neighbour `nb` since `since`.
    pub fn link_events(
        &self,
        name: &str,
        nb: &str,
        since: SystemTime,
    ) -> Vec<(SystemTime, Dir, LinkEvent, String)> {
        self.link_lines(name)
            .into_iter()
            .filter(|l| l.at >= since)
            .filter_map(|l| {
                let (dir, ev) = link_event(&l.text, nb)?;
                Some((l.at, dir, ev, l.text))
            })
            .collect()
    }

    /// Whether both of `name`'s connections with `nb` are up by its log.
    pub fn linked(&self, name: &str, nb: &str) -> bool {
        let events = self.link_events(name, nb, UNIX_EPOCH);
        [Dir::Out, Dir::In].iter().all(|d| {
            events
                .iter()
                .rev()
                .find(|(_, dir, ..)| dir == d)
                .is_some_and(|(_, _, ev, _)| *ev == LinkEvent::Up)
        })
    }

    /// Waits until every running server's log shows both connections with each running
    /// neighbour up.
    pub fn wait_all_linked(&self, within: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        let running = |name: &str| self.servers.iter().any(|s| s.name == name);
        let missing = || -> Option<String> {
            for h in self.hosts.iter().filter(|h| running(&h.name)) {
                for nb in h.neighbours.iter().filter(|nb| running(nb)) {
                    if !self.linked(&h.name, nb) {
                        return Some(format!("{} not linked with {nb}", h.name));
                    }
                }
            }
            None
        };
        let mut last = String::new();
        let done = eventually(within, || match missing() {
            None => Some(()),
            Some(m) => {
                last = m;
                std::thread::sleep(Duration::from_millis(20));
                None
            }
        });
        done.map(|_| start.elapsed()).ok_or(last)
    }

    /// The TCP dials from `name` to `to`'s peer port that are waiting on their SYN
    /// (`ss` in `name`'s namespace): each as (source port, age of the dial if the kernel's
    /// first SYN timer is still running).
    pub fn hung_dials(&self, name: &str, to: &str) -> Vec<(u16, Option<Duration>)> {
        let h = self.host(name);
        let t = self.host(to);
        let out = Command::new("ip")
            .args(["netns", "exec", &h.ns, "ss", "-Htno", "state", "syn-sent"])
            .output()
            .expect("run ss");
        let want = format!("{}:{}", t.addr, t.peer_port);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.split_whitespace().any(|f| f == want))
            .filter_map(|l| {
                let local = l
                    .split_whitespace()
                    .find(|f| f.starts_with(&format!("{}:", h.addr)))?;
                let sport = local.rsplit(':').next()?.parse().ok()?;
                Some((sport, first_syn_age(l)))
            })
            .collect()
    }
}

/// From an `ss -o` line of a SYN-SENT socket, how long ago its first SYN left, if no
/// retransmission has happened yet (timer "on", 0 retransmits, the kernel's 1 s initial
/// SYN timeout minus what is left of it).
fn first_syn_age(line: &str) -> Option<Duration> {
    let timer = line.split("timer:(on,").nth(1)?;
    let mut fields = timer.trim_end_matches(')').split(',');
    let left = fields.next()?;
    let retrans: u32 = fields.next()?.trim_end_matches(')').parse().ok()?;
    if retrans != 0 {
        return None;
    }
    let left = if let Some(ms) = left.strip_suffix("ms") {
        Duration::from_millis(ms.parse().ok()?)
    } else if let Some(s) = left.strip_suffix("sec") {
        Duration::from_secs_f64(s.parse().ok()?)
    } else {
        return None;
    };
    Some(Duration::from_secs(1).saturating_sub(left))
}

/// What a log line says about the link between this server and neighbour `nb`: which
/// connection, and whether it came up or went down. The one place that knows the log's
/// wording: "link to NB ..." is the link we dialled, "link from NB ..." the one NB dialled;
/// a line saying "down" or "dropped" is a loss (also a dial that failed), one saying "up"
/// otherwise is the link coming up; "connecting" and anything else is no event.
pub fn link_event(line: &str, nb: &str) -> Option<(Dir, LinkEvent)> {
    let after = |key: &str| -> Option<&str> {
        let i = line.find(key)?;
        let rest = &line[i + key.len()..];
        // "Bona" must not match "Bonanza".
        match rest.chars().next() {
            Some(c) if c.is_alphanumeric() => None,
            _ => Some(rest),
        }
    };
    let (dir, rest) = match (after(&format!("link to {nb}")), after(&format!("link from {nb}"))) {
        (Some(r), _) => (Dir::Out, r),
        (None, Some(r)) => (Dir::In, r),
        (None, None) => return None,
    };
    let word = |w: &str| rest.split(|c: char| !c.is_alphanumeric()).any(|t| t == w);
    if word("down") || word("dropped") {
        Some((dir, LinkEvent::Down))
    } else if word("up") {
        Some((dir, LinkEvent::Up))
    } else {
        None
    }
}

/// `2026-11-24T00:26:29.397918777Z` as a SystemTime.
pub fn parse_rfc3339(s: &str) -> Option<SystemTime> {
    let s = s.strip_suffix('Z')?;
    let (date, time) = s.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut t = hms.split(':').map(|p| p.parse::<u64>().ok());
    let (hh, mm, ss) = (t.next()??, t.next()??, t.next()??);
    let digits: String = frac.chars().take(9).collect();
    let nanos: u64 = format!("{digits:0<9}").parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = u64::try_from(era * 146_097 + doe - 719_468).ok()?;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_nanos(nanos))
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The servers first (Server's drop: SIGCONT, kill by PID, wait), so no process
        // holds a namespace when it is deleted.
        self.servers.clear();
        for ns in self.made_ns.iter().rev() {
            let _ = sh("ip", &["netns", "del", ns]);
            let _ = std::fs::remove_dir_all(Path::new(ETC_NETNS).join(ns));
        }
    }
}
