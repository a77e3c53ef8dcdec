//! SPEC §6 through the real binary: herds with `peer_tls`, their certificates made by
//! `herd certs` in the test's temp dir, and the test playing intruders on the peer port
//! with rustls of its own: plaintext, a certificate from another CA, a valid certificate of
//! the wrong server, and squatters on a down neighbour's port.
//!
//! "Gets nothing" is checked twice: the intruder reads no plaintext (or only the `? ...`
//! refusal) before the server closes, and no record it sent is stored. The server closing
//! the connection means it has handled everything the intruder sent before.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection, StreamOwned};

use support::*;

const PEER_TLS: &str = "peer_tls: { ca: certs/ca.pem, cert: 'certs/{name}.pem', key: 'certs/{name}.key' }\n";
const LOC: &str = "+34.068930-118.445127";
const CATCH_UP: Duration = Duration::from_secs(5);

/// A - B - C: C is two hops from A, and no neighbour of A.
const CHAIN: &[(&str, &[&str])] = &[("A", &["B"]), ("B", &["A", "C"]), ("C", &["B"])];

/// A herd with `peer_tls` and its certificates in `certs/` beside herd.yml; nothing started.
fn tls_herd(topology: &[(&str, &[&str])]) -> Herd {
    let h = Herd::new(topology, PEER_TLS);
    certs(&h, None);
    h
}

/// Runs `herd certs` for `h`'s config (into `out`, or the default `certs/`); returns its
/// stdout and stderr.
fn certs(h: &Herd, out: Option<&Path>) -> String {
    let mut cmd = Command::new(BIN);
    cmd.arg("certs").arg("--config").arg(&h.config);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let o = cmd.output().expect("run herd certs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "herd certs: {text}");
    text
}

fn cert_dir(h: &Herd) -> PathBuf {
    h.dir.path().join("certs")
}

/// A second, unrelated CA with certificates for the same server names.
fn foreign_certs(h: &Herd) -> PathBuf {
    let dir = h.dir.path().join("foreign");
    certs(h, Some(&dir));
    dir
}

fn roots(ca: &Path) -> RootCertStore {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(ca).expect("ca pem"))
        .expect("root");
    roots
}

fn identity(dir: &Path, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let cert = CertificateDer::from_pem_file(dir.join(format!("{name}.pem"))).expect("cert pem");
    let key = PrivateKeyDer::from_pem_file(dir.join(format!("{name}.key"))).expect("key pem");
    (vec![cert], key)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A TLS client that trusts `ca` and presents `name`'s certificate from `dir`.
fn client_config(ca: &Path, dir: &Path, name: &str) -> Arc<ClientConfig> {
    let (chain, key) = identity(dir, name);
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_root_certificates(roots(ca))
        .with_client_auth_cert(chain, key)
        .expect("client config");
    Arc::new(cfg)
}

/// A TLS server (a squatter) presenting `name`'s certificate from `dir`, asking for none.
fn squatter_config(dir: &Path, name: &str) -> Arc<ServerConfig> {
    let (chain, key) = identity(dir, name);
    let cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("server config");
    Arc::new(cfg)
}

/// A TLS connection to `port` expecting the server's certificate to name `server`.
fn tls_connect(port: u16, server: &str, cfg: Arc<ClientConfig>) -> StreamOwned<ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let name = ServerName::try_from(server.to_string()).expect("name");
    StreamOwned::new(ClientConnection::new(cfg, name).expect("client"), tcp)
}

/// Everything readable until EOF, an error or `within`: the plaintext and how it ended.
fn drain(stream: &mut impl Read, within: Duration) -> (Vec<u8>, String) {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if Instant::now() >= deadline {
            return (got, "still open".into());
        }
        match stream.read(&mut buf) {
            Ok(0) => return (got, "EOF".into()),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return (got, "still open".into());
            }
            Err(e) => return (got, format!("error: {e}")),
        }
    }
}

/// What `server` stores for `client`: its AT line, or None (`WHATSAT ... 1 0` makes no
/// upstream call).
fn record_at(h: &Herd, server: &str, client: &str) -> Option<String> {
    let mut c = h.client(server);
    let first = c.ask(&format!("WHATSAT {client} 1 0"));
    if first.starts_with("? ") {
        return None;
    }
    while c.line() != "\n" {}
    Some(first)
}

/// Polls until every server of `servers` holds `want` for `client`.
fn converge(h: &Herd, servers: &[&str], client: &str, want: &str, within: Duration) {
    let mut last = String::new();
    let done = eventually(within, || {
        last.clear();
        for s in servers {
            let got = record_at(h, s, client);
            if got.as_deref() != Some(want) {
                last += &format!("\n  {s} holds {got:?}");
            }
        }
        last.is_empty().then_some(())
    });
    assert!(done.is_some(), "{client} not everywhere within {within:?}:{last}");
}

fn iamat(h: &Herd, server: &str, client: &str, time: &str) -> String {
    let reply = h.client(server).ask(&format!("IAMAT {client} {LOC} {time}"));
    assert!(reply.starts_with(&format!("AT {server} ")), "{reply}");
    reply
}

/// Waits until `name`'s log contains `text`; panics with the log if it does not.
fn logged(h: &Herd, name: &str, text: &str) {
    let found = eventually(DEADLINE, || h.log(name).contains(text).then_some(()));
    assert!(found.is_some(), "{name}'s log lacks {text:?}:\n{}", h.log(name));
}

/// Every line of every private key under `dirs`, minus the PEM armour: none may show
/// anywhere.
fn key_lines(dirs: &[PathBuf]) -> Vec<String> {
    let mut lines = Vec::new();
    for dir in dirs {
        for entry in std::fs::read_dir(dir).expect("cert dir") {
            let path = entry.expect("entry").path();
            if path.extension().is_some_and(|e| e == "key") {
                let body = std::fs::read_to_string(&path).expect("key");
                lines.extend(body.lines().filter(|l| !l.starts_with("-----")).map(String::from));
            }
        }
    }
    assert!(!lines.is_empty());
    lines
}

fn assert_no_key_material(what: &str, text: &str, keys: &[String]) {
    assert!(!text.contains("PRIVATE KEY"), "{what} shows a PEM key header");
    for l in keys {
        assert!(!text.contains(l.as_str()), "{what} shows key material");
    }
}

#[test]
fn a_tls_herd_propagates_and_catches_up_after_kill_9_and_shows_no_key() {
    let mut h = tls_herd(CHAIN);
    h.start_all();
    let first = iamat(&h, "A", "kiwi", "1700000000");
    converge(&h, &["A", "B", "C"], "kiwi", &first, DEADLINE);

    h.kill9("B");
    let newer = iamat(&h, "A", "kiwi", "1700000001");
    let other = iamat(&h, "C", "lemon", "1700000002");
    h.start("B");
    // Only the table syncs over the new TLS links can carry these.
    converge(&h, &["A", "B", "C"], "kiwi", &newer, CATCH_UP);
    converge(&h, &["A", "B", "C"], "lemon", &other, CATCH_UP);

    logged(&h, "A", "peer links: mutual TLS 1.3");
    logged(&h, "A", "TLS handshake done");
    let keys = key_lines(&[cert_dir(&h)]);
    for name in ["A", "B", "C"] {
        assert!(
            !h.log(name).contains("trusts any HELLO"),
            "{name}: TLS herd warned"
        );
        assert_no_key_material(&format!("{name}'s log"), &h.log(name), &keys);
        let state = h.server(name).state();
        assert_eq!(state, "still running", "{name}");
    }
    // What the servers said on stderr, once stopped.
    for name in ["A", "B", "C"] {
        let s = h.server(name);
        s.signal("TERM");
        assert!(s.wait_exit(DEADLINE).is_some());
        let mut err = String::new();
        if let Some(e) = s.child.stderr.as_mut() {
            let _ = e.read_to_string(&mut err);
        }
        assert_no_key_material(&format!("{name}'s stderr"), &err, &keys);
    }
    // And `herd certs` itself, run again elsewhere.
    let out = certs(&h, Some(&h.dir.path().join("again")));
    assert_no_key_material("herd certs", &out, &key_lines(&[h.dir.path().join("again")]));
}

#[test]
fn plaintext_hello_and_at_to_a_tls_peer_port_store_nothing() {
    let mut h = tls_herd(&[("A", &["B"]), ("B", &["A"])]);
    h.start("A");
    let mut p = Client::connect(h.spec("A").peer_port);
    p.send(format!("HELLO B\nAT B +0.000000001 evil {LOC} 1700000000\n"));
    let (got, end) = drain(&mut p.reader, DEADLINE);
    assert_ne!(end, "still open", "A kept the plaintext connection");
    assert!(!String::from_utf8_lossy(&got).contains("evil"), "{got:?}");
    // A TLS alert, not a protocol reply: no `? HELLO B`.
    assert!(got.is_empty() || got[0] == 0x15, "{got:?}");
    assert_eq!(record_at(&h, "A", "evil"), None);
    logged(&h, "A", "TLS handshake failed");
}

#[test]
fn a_silent_connection_to_a_tls_peer_port_is_closed_after_the_connect_timeout() {
    let mut h = tls_herd(&[("A", &["B"]), ("B", &["A"])]);
    h.start("A");
    let mut p = Client::connect(h.spec("A").peer_port);
    assert!(
        p.closed_within(DEADLINE),
        "a handshake that never starts holds the connection"
    );
    logged(&h, "A", "TLS handshake not done within 2000 ms");
}

#[test]
fn a_certificate_from_another_ca_gets_nothing() {
    let mut h = tls_herd(&[("A", &["B"]), ("B", &["A"])]);
    let foreign = foreign_certs(&h);
    h.start("A");
    // Trusts the herd's CA, so it would believe A; its own certificate names B but is
    // signed by another CA.
    let cfg = client_config(&cert_dir(&h).join("ca.pem"), &foreign, "B");
    let mut s = tls_connect(h.spec("A").peer_port, "A", cfg);
    // TLS 1.3: the client may finish its side before A has checked its certificate, so
    // the write can succeed; what matters is what A does with it.
    let _ = s.write_all(format!("HELLO B\nAT B +0.000000001 evil {LOC} 1700000000\n").as_bytes());
    let (got, end) = drain(&mut s, DEADLINE);
    assert!(got.is_empty(), "A answered: {:?}", String::from_utf8_lossy(&got));
    assert_ne!(end, "still open");
    assert_eq!(record_at(&h, "A", "evil"), None);
    logged(&h, "A", "TLS handshake failed: invalid peer certificate");
}

#[test]
fn a_valid_certificate_not_matching_the_hello_or_not_a_neighbour_gets_nothing() {
    let mut h = tls_herd(CHAIN);
    h.start_all();
    let warm = iamat(&h, "B", "warm", "1700000000");
    converge(&h, &["A", "B", "C"], "warm", &warm, DEADLINE);
    let ca = cert_dir(&h).join("ca.pem");
    // C's own certificate, valid in the herd: it may not speak for B, and C is no
    // neighbour of A.
    for hello in ["B", "C"] {
        let cfg = client_config(&ca, &cert_dir(&h), "C");
        let mut s = tls_connect(h.spec("A").peer_port, "A", cfg);
        s.write_all(format!("HELLO {hello}\nAT B +0.000000001 evil {LOC} 1700000009\n").as_bytes())
            .expect("the handshake itself succeeds");
        let (got, end) = drain(&mut s, DEADLINE);
        assert_eq!(String::from_utf8_lossy(&got), format!("? HELLO {hello}\n"));
        assert_ne!(end, "still open", "A kept the connection after HELLO {hello}");
    }
    assert_eq!(record_at(&h, "A", "evil"), None);
    logged(&h, "A", "its TLS certificate does not name the server of HELLO B");
    logged(&h, "A", "refused: HELLO C");
    // The real B -> A link was not displaced: B's records still arrive.
    let later = iamat(&h, "C", "later", "1700000010");
    converge(&h, &["A"], "later", &later, DEADLINE);
    assert!(
        !h.log("A").contains("replaced by a newer HELLO"),
        "a refused HELLO displaced the real link:\n{}",
        h.log("A")
    );
}

/// A squatter on B's peer port, while B is down: A dials it and must send it nothing.
fn squat(listener: &TcpListener, cfg: Arc<ServerConfig>) -> (Vec<u8>, String) {
    listener.set_nonblocking(true).expect("nonblocking");
    let tcp = eventually(DEADLINE, || listener.accept().ok().map(|(s, _)| s)).expect("A dialled B's port");
    tcp.set_nonblocking(false).expect("blocking");
    tcp.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut s = StreamOwned::new(ServerConnection::new(cfg).expect("server"), tcp);
    drain(&mut s, DEADLINE)
}

#[test]
fn a_squatter_on_a_down_neighbours_port_receives_no_record() {
    let mut h = tls_herd(CHAIN);
    let foreign = foreign_certs(&h);
    let listener = TcpListener::bind(("127.0.0.1", h.spec("B").peer_port)).expect("squat B's port");
    h.start("A");
    let secret = iamat(&h, "A", "secret", "1700000000");
    assert!(secret.contains("secret"));

    // A foreign CA's certificate that claims to be B.
    let (got, end) = squat(&listener, squatter_config(&foreign, "B"));
    assert!(
        got.is_empty(),
        "the squatter heard {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(end.starts_with("error"), "A did not refuse the squatter: {end}");
    logged(&h, "A", "TLS handshake failed: invalid peer certificate");

    // A valid certificate of the herd, but C's: A dialled B.
    let (got, end) = squat(&listener, squatter_config(&cert_dir(&h), "C"));
    assert!(
        got.is_empty(),
        "the squatter heard {:?}",
        String::from_utf8_lossy(&got)
    );
    assert!(end.starts_with("error"), "A did not refuse the squatter: {end}");
    let failed = eventually(DEADLINE, || {
        (h.log("A")
            .matches("TLS handshake failed: invalid peer certificate")
            .count()
            >= 2)
            .then_some(())
    });
    assert!(failed.is_some(), "A's log:\n{}", h.log("A"));
    let log = h.log("A");
    assert!(
        !log.contains("up; sent HELLO"),
        "A thought the squatter was B:\n{log}"
    );
}

/// The positive control for the intruders above: the test, holding B's own certificate,
/// is a neighbour like any other. Dialling A it is heard (a record it sends is stored);
/// dialled by A (B's port, B's certificate) it gets HELLO, the table and heartbeats, all
/// inside TLS; gone silent, A closes its link after dead_after.
#[test]
fn the_test_with_b_s_certificate_is_a_neighbour_inside_tls() {
    let mut h = Herd::new(
        &[("A", &["B"]), ("B", &["A"])],
        &format!("{PEER_TLS}peers: {{ dead_after_ms: 1000 }}\n"),
    );
    certs(&h, None);
    let listener = TcpListener::bind(("127.0.0.1", h.spec("B").peer_port)).expect("B's port");
    h.start("A");
    let known = iamat(&h, "A", "known", "1700000000");

    // A dials B: the handshake first, then HELLO A and A's table, then heartbeats.
    listener.set_nonblocking(true).expect("nonblocking");
    let tcp = eventually(DEADLINE, || listener.accept().ok().map(|(s, _)| s)).expect("A dialled B");
    tcp.set_nonblocking(false).expect("blocking");
    tcp.set_read_timeout(Some(Duration::from_millis(2500)))
        .expect("timeout");
    let mut from_a = StreamOwned::new(
        ServerConnection::new(squatter_config(&cert_dir(&h), "B")).expect("server"),
        tcp,
    );
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let want = format!("HELLO A\n{known}\n");
    while !got.ends_with(b"\n\n") {
        match from_a.read(&mut buf) {
            Ok(0) => panic!("A closed: {:?}", String::from_utf8_lossy(&got)),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => panic!("{e}; got {:?}", String::from_utf8_lossy(&got)),
        }
    }
    assert!(
        String::from_utf8_lossy(&got).starts_with(&want),
        "{:?}",
        String::from_utf8_lossy(&got)
    );

    // B dials A: its record is stored; then silence closes the link.
    let cfg = client_config(&cert_dir(&h).join("ca.pem"), &cert_dir(&h), "B");
    let mut to_a = tls_connect(h.spec("A").peer_port, "A", cfg);
    let line = format!("AT B +0.000000001 fromb {LOC} 1700000001\n");
    to_a.write_all(format!("HELLO B\n{line}").as_bytes())
        .expect("write");
    let stored = eventually(DEADLINE, || record_at(&h, "A", "fromb"));
    assert_eq!(stored.as_deref(), Some(line.as_str()));
    let (rest, end) = drain(&mut to_a, DEADLINE);
    assert!(rest.is_empty(), "A said {:?}", String::from_utf8_lossy(&rest));
    assert_ne!(end, "still open", "A kept a silent link");
    logged(&h, "A", "link from B: dropped: silent for 1000 ms");
}
