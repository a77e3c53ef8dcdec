//! Mutual TLS 1.3 for peer links (SPEC §6), without sockets of its own.
//!
//! `TlsSetup` loads the herd's CA and a server's certificate and key once, and builds the two
//! rustls configurations every server needs: one to accept neighbours (a client certificate
//! signed by the CA is required) and one to dial them (our certificate is presented, and the
//! neighbour's must be signed by the CA and name the neighbour dialled). `TlsConn` drives one
//! rustls connection over any non-blocking `Read + Write`, in the shape of rustls'
//! `tlsserver-mio` example; `Transport` lets the reactor's line framing and write queue sit
//! above plain TCP or TLS alike. rustls and its ring provider are the ones ureq brings, so
//! there is one TLS stack in the build.
//!
//! Nothing here prints or formats key material: errors name the file, never its contents.

use std::fmt;
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

/// What rustls may hold per connection, plaintext waiting for the handshake plus encrypted
/// records waiting for the socket. Kept small so the reactor's own write queue, which it
/// measures, stays what bounds a link's output (SPEC §3's backpressure).
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

#[derive(Debug)]
pub enum TlsError {
    Read {
        path: PathBuf,
        err: io::Error,
    },
    /// The file holds no PEM block of the kind wanted (or one that does not decode).
    NoPem {
        path: PathBuf,
        what: &'static str,
    },
    /// The CA file's certificate is not one rustls can use as a trust anchor.
    BadCa {
        path: PathBuf,
        reason: String,
    },
    /// The certificate and key do not go together, or rustls refused them.
    BadCert {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    /// A neighbour name that cannot be checked against a certificate's DNS name.
    BadName(String),
    /// rustls refused to start a connection with this setup.
    Connection(String),
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { path, err } => write!(f, "cannot read {}: {err}", path.display()),
            TlsError::NoPem { path, what } => write!(f, "{}: no valid PEM {what} in it", path.display()),
            TlsError::BadCa { path, reason } => {
                write!(f, "{}: not a usable CA certificate: {reason}", path.display())
            }
            TlsError::BadCert { cert, key, reason } => write!(
                f,
                "certificate {} with key {}: {reason}",
                cert.display(),
                key.display()
            ),
            TlsError::BadName(n) => write!(f, "`{n}` is not a valid DNS name for a peer certificate"),
            TlsError::Connection(reason) => write!(f, "cannot start a TLS connection: {reason}"),
        }
    }
}

/// The herd's trust and this server's identity, loaded once at start-up.
pub struct TlsSetup {
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
    /// Our own certificate, to check at start-up that it names this server.
    cert: CertificateDer<'static>,
}

impl TlsSetup {
    pub fn load(ca_pem: &Path, cert: &Path, key: &Path) -> Result<TlsSetup, TlsError> {
        let ca = certs_from(ca_pem, "certificate")?;
        let chain = certs_from(cert, "certificate")?;
        let key_der = key_from(key)?;
        let mut roots = RootCertStore::empty();
        for c in ca {
            roots.add(c).map_err(|e| TlsError::BadCa {
                path: ca_pem.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        let roots = Arc::new(roots);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let bad_cert = |reason: String| TlsError::BadCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason,
        };
        let bad_ca = |reason: String| TlsError::BadCa {
            path: ca_pem.to_path_buf(),
            reason,
        };
        let verifier = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
            .build()
            .map_err(|e| bad_ca(e.to_string()))?;
        let server = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad_cert(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key_der.clone_key())
            .map_err(|e| bad_cert(e.to_string()))?;
        let client = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| bad_cert(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key_der)
            .map_err(|e| bad_cert(e.to_string()))?;
        let own = chain.into_iter().next().ok_or_else(|| TlsError::NoPem {
            path: cert.to_path_buf(),
            what: "certificate",
        })?;
        Ok(TlsSetup {
            server: Arc::new(server),
            client: Arc::new(client),
            cert: own,
        })
    }

    /// Whether our own certificate names server `name`: a server started with another
    /// server's certificate would be refused by every neighbour, so say so at start-up.
    pub fn cert_names(&self, name: &str) -> bool {
        names(&self.cert, name)
    }

    /// A connection accepted on the peer port.
    pub fn accept(&self) -> Result<TlsConn, TlsError> {
        let conn =
            ServerConnection::new(self.server.clone()).map_err(|e| TlsError::Connection(e.to_string()))?;
        Ok(TlsConn::new(conn.into()))
    }

    /// A connection dialled to `neighbour`, whose certificate must name it.
    pub fn dial(&self, neighbour: &str) -> Result<TlsConn, TlsError> {
        let name =
            ServerName::try_from(neighbour.to_string()).map_err(|_| TlsError::BadName(neighbour.into()))?;
        let conn = ClientConnection::new(self.client.clone(), name)
            .map_err(|e| TlsError::Connection(e.to_string()))?;
        Ok(TlsConn::new(conn.into()))
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|err| TlsError::Read {
        path: path.to_path_buf(),
        err,
    })
}

fn certs_from(path: &Path, what: &'static str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read(path)?;
    let none = || TlsError::NoPem {
        path: path.to_path_buf(),
        what,
    };
    // The parser's own error text is not passed on: for a key file it could quote a line.
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| none())?;
    if certs.is_empty() {
        return Err(none());
    }
    Ok(certs)
}

fn key_from(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|_| TlsError::NoPem {
        path: path.to_path_buf(),
        what: "private key",
    })
}

/// Whether `cert` carries `name` as a subject alternative name. Its chain was checked
/// against the CA in the handshake; this is the name check on top.
fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server) = ServerName::try_from(name) else {
        return false;
    };
    ParsedCertificate::try_from(cert)
        .is_ok_and(|parsed| rustls::client::verify_server_name(&parsed, &server).is_ok())
}

/// Why `TlsConn::read_from` stopped (the same three reasons as `lines::Fill`).
// `read_from` is the whole-buffer read for tests and tools; the reactor reads through
// `Transport::io`.
#[allow(dead_code)]
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum ReadResult {
    WouldBlock,
    Eof,
    /// `out` reached the bound given: process it before reading more.
    Full,
}

/// One TLS connection over a non-blocking socket that the caller owns.
pub struct TlsConn {
    conn: rustls::Connection,
    /// The socket said EOF; what rustls already decrypted is still handed out.
    eof: bool,
}

impl TlsConn {
    fn new(mut conn: rustls::Connection) -> TlsConn {
        conn.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        TlsConn { conn, eof: false }
    }

    /// Reads and decrypts until the socket would block or ends, or `out` holds `max` bytes
    /// (it may pass `max` by one TLS record, at most 16 KiB). Handshake replies that the
    /// input calls for are written to `sock` at once; whatever the socket did not take is
    /// left for `write_to` (check `wants_write`).
    ///
    /// A TLS error (a bad certificate, plaintext where TLS was due) is `InvalidData` with
    /// rustls' reason; the alert for the peer is then queued: `write_to` once, then close.
    #[allow(dead_code)]
    pub fn read_from<S: Read + Write>(
        &mut self,
        sock: &mut S,
        out: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<ReadResult> {
        let mut chunk = [0u8; 16 * 1024];
        while out.len() < max {
            match self.read_plain(sock, &mut chunk) {
                Ok(0) => return Ok(ReadResult::Eof),
                Ok(n) => out.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(ReadResult::WouldBlock),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(ReadResult::Full)
    }

    /// `Read::read` in plaintext terms. A read shorter than `buf` means the socket was
    /// drained (it returned `WouldBlock` or EOF), as for a plain socket, so a caller that
    /// relies on edge-triggered readiness can stop there. Ok(0) is EOF: a close_notify, or
    /// the socket closed without one (a killed neighbour; what it sent before still counts).
    fn read_plain<S: Read + Write>(&mut self, sock: &mut S, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        // The socket gave rustls less than it asked for: it is drained, and one more read
        // would only return `WouldBlock` (a `recvfrom` per event saved, as on plain TCP).
        let mut drained = false;
        while filled < buf.len() {
            match self.conn.reader().read(&mut buf[filled..]) {
                // A close_notify: nothing more will come.
                Ok(0) => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    continue;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            if self.eof {
                return Ok(filled);
            }
            if drained {
                return match filled {
                    0 => Err(ErrorKind::WouldBlock.into()),
                    n => Ok(n),
                };
            }
            let mut probe = ShortRead {
                sock: &mut *sock,
                short: false,
            };
            match self.conn.read_tls(&mut probe) {
                Ok(0) => self.eof = true,
                Ok(_) => {
                    drained = probe.short;
                    self.conn
                        .process_new_packets()
                        .map_err(|e| io::Error::new(ErrorKind::InvalidData, e))?;
                    // Handshake flights and key updates go out without waiting for the
                    // caller's next flush; a full socket leaves them for `write_to`.
                    self.write_to(sock)?;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
        }
        Ok(filled)
    }

    /// Hands plaintext to rustls; returns how much it took (less than `bytes` once
    /// `TLS_BUFFER_LIMIT` is reached: `write_to`, then offer the rest again).
    pub fn write_plain(&mut self, bytes: &[u8]) -> usize {
        // rustls' writer only fails on a closed connection; that shows as taking nothing.
        self.conn.writer().write(bytes).unwrap_or(0)
    }

    /// Writes queued TLS records until none is left (Ok(true)) or the socket would block
    /// (Ok(false)).
    pub fn write_to(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(sock) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// TLS records are waiting for the socket: keep WRITABLE interest.
    pub fn wants_write(&self) -> bool {
        self.conn.wants_write()
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Whether the other side's certificate (verified against the CA in the handshake)
    /// names server `name`; false until the handshake is done. On an accepted link this is
    /// the check that the HELLO names the server of the client certificate.
    pub fn peer_name_ok(&self, name: &str) -> bool {
        if self.conn.is_handshaking() {
            return false;
        }
        match self.conn.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => names(cert, name),
            None => false,
        }
    }

    /// Queues a close_notify, for a clean close after the last `write_to`.
    #[allow(dead_code)]
    pub fn close_notify(&mut self) {
        self.conn.send_close_notify();
    }
}

/// A socket that notes whether its last read returned less than asked.
struct ShortRead<'a, S> {
    sock: &'a mut S,
    short: bool,
}

impl<S: Read> Read for ShortRead<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// A connection's byte transport, so line framing and the write queue need not know
/// whether the link is encrypted.
pub enum Transport {
    Plain,
    Tls(Box<TlsConn>),
}

impl Transport {
    /// `Read` and `Write` in plaintext terms over `sock`, for `LineReader::fill` and
    /// `WriteQueue::flush`. After a flush, TLS records may still wait: see `wants_write`.
    pub fn io<'a, S: Read + Write>(&'a mut self, sock: &'a mut S) -> TransportIo<'a, S> {
        TransportIo {
            transport: self,
            sock,
        }
    }

    /// Writes what TLS still holds for the socket; Ok(true) when nothing is left.
    pub fn write_to(&mut self, sock: &mut impl Write) -> io::Result<bool> {
        match self {
            Transport::Plain => Ok(true),
            Transport::Tls(t) => t.write_to(sock),
        }
    }

    pub fn wants_write(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.wants_write())
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.is_handshaking())
    }

    /// Plain TCP has no certificate to check, so any name passes (no `peer_tls`).
    pub fn peer_name_ok(&self, name: &str) -> bool {
        match self {
            Transport::Plain => true,
            Transport::Tls(t) => t.peer_name_ok(name),
        }
    }
}

pub struct TransportIo<'a, S> {
    transport: &'a mut Transport,
    sock: &'a mut S,
}

impl<S: Read + Write> Read for TransportIo<'_, S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.transport {
            Transport::Plain => self.sock.read(buf),
            Transport::Tls(t) => t.read_plain(self.sock, buf),
        }
    }
}

impl<S: Read + Write> Write for TransportIo<'_, S> {
    /// Ok(n): rustls took n bytes (encrypted, maybe not all on the socket yet);
    /// `WouldBlock` when both rustls' buffer and the socket are full.
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self.transport {
            Transport::Plain => self.sock.write(bytes),
            Transport::Tls(t) => {
                t.write_to(self.sock)?;
                let n = t.write_plain(bytes);
                if n == 0 && !bytes.is_empty() {
                    return Err(ErrorKind::WouldBlock.into());
                }
                t.write_to(self.sock)?;
                Ok(n)
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self.transport.write_to(self.sock)? {
            true => self.sock.flush(),
            false => Err(ErrorKind::WouldBlock.into()),
        }
    }
}

/// In-memory sockets for the tests here and in `certs` (and `tests/certs.rs`).
#[cfg(test)]
pub mod testing {
    use std::cell::RefCell;
    use std::collections::VecDeque;
    use std::io::{self, ErrorKind, Read, Write};
    use std::rc::Rc;

    use super::TlsConn;

    #[derive(Default)]
    struct Buf {
        bytes: VecDeque<u8>,
        closed: bool,
    }

    /// One end of a socket pair: reads what the other end wrote, `WouldBlock` when there is
    /// nothing (EOF once the other end closed); writes up to `cap` unread bytes, then
    /// `WouldBlock`, as a full kernel buffer would.
    pub struct End {
        rx: Rc<RefCell<Buf>>,
        tx: Rc<RefCell<Buf>>,
        cap: usize,
    }

    pub fn pair(cap: usize) -> (End, End) {
        let (ab, ba) = (
            Rc::new(RefCell::new(Buf::default())),
            Rc::new(RefCell::new(Buf::default())),
        );
        (
            End {
                rx: ba.clone(),
                tx: ab.clone(),
                cap,
            },
            End { rx: ab, tx: ba, cap },
        )
    }

    impl End {
        /// Half-closes: the other end reads EOF once it has read everything.
        pub fn close(&self) {
            self.tx.borrow_mut().closed = true;
        }

        /// Bytes written to this end and not yet read by the other.
        pub fn unread_by_peer(&self) -> usize {
            self.tx.borrow().bytes.len()
        }
    }

    impl Read for End {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let mut rx = self.rx.borrow_mut();
            if rx.bytes.is_empty() {
                return if rx.closed {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            }
            let n = out.len().min(rx.bytes.len());
            for (o, b) in out.iter_mut().zip(rx.bytes.drain(..n)) {
                *o = b;
            }
            Ok(n)
        }
    }

    impl Write for End {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let mut tx = self.tx.borrow_mut();
            let room = self.cap.saturating_sub(tx.bytes.len());
            if room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = room.min(bytes.len());
            tx.bytes.extend(&bytes[..n]);
            Ok(n)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Which side of `pump` failed.
    #[derive(Debug, PartialEq, Eq, Clone, Copy)]
    pub enum Side {
        Dialler,
        Acceptor,
    }

    /// Moves bytes both ways until neither side has anything more to say; plaintext that
    /// arrives is appended to `d_out` / `a_out`. The first TLS failure is returned with
    /// its side, after that side's alert was written (as the reactor would before closing).
    pub fn pump(
        d: &mut TlsConn,
        ds: &mut End,
        d_out: &mut Vec<u8>,
        a: &mut TlsConn,
        as_: &mut End,
        a_out: &mut Vec<u8>,
    ) -> Result<(), (Side, io::Error)> {
        for _ in 0..1000 {
            let before = (
                d_out.len(),
                a_out.len(),
                ds.unread_by_peer(),
                as_.unread_by_peer(),
            );
            d.write_to(ds).map_err(|e| (Side::Dialler, e))?;
            a.write_to(as_).map_err(|e| (Side::Acceptor, e))?;
            if let Err(e) = a.read_from(as_, a_out, usize::MAX) {
                let _ = a.write_to(as_);
                return Err((Side::Acceptor, e));
            }
            if let Err(e) = d.read_from(ds, d_out, usize::MAX) {
                let _ = d.write_to(ds);
                return Err((Side::Dialler, e));
            }
            let after = (
                d_out.len(),
                a_out.len(),
                ds.unread_by_peer(),
                as_.unread_by_peer(),
            );
            if before == after && !d.wants_write() && !a.wants_write() {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{End, Side, pair, pump};
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};

    /// A CA made in the test; every test makes its own, no key is ever committed.
    struct Ca {
        issuer: Issuer<'static, KeyPair>,
        pem: String,
    }

    fn ca() -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).expect("ca").pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    /// A server certificate naming `name`, signed by `ca`: (cert PEM, key PEM).
    fn leaf(ca: &Ca, name: &str) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(vec![name.to_string()]).expect("params");
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (
            params.signed_by(&key, &ca.issuer).expect("sign").pem(),
            key.serialize_pem(),
        )
    }

    struct Dir(PathBuf);

    impl Dir {
        fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let d = std::env::temp_dir().join(format!("herd-tls-{}-{tag}-{n}", std::process::id()));
            std::fs::create_dir_all(&d).expect("temp dir");
            Dir(d)
        }

        fn file(&self, name: &str, text: &str) -> PathBuf {
            let p = self.0.join(name);
            std::fs::write(&p, text).expect("write");
            p
        }
    }

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// `name`'s setup: trusting `trust`, with a certificate from `issuer`.
    fn setup_with(dir: &Dir, trust: &Ca, issuer: &Ca, name: &str) -> TlsSetup {
        let (cert, key) = leaf(issuer, name);
        let ca = dir.file(&format!("ca-{name}.pem"), &trust.pem);
        let cert = dir.file(&format!("{name}.pem"), &cert);
        let key = dir.file(&format!("{name}.key"), &key);
        TlsSetup::load(&ca, &cert, &key).expect("load")
    }

    fn setup(dir: &Dir, ca: &Ca, name: &str) -> TlsSetup {
        setup_with(dir, ca, ca, name)
    }

    /// A dialler and an acceptor over an in-memory socket pair.
    struct Link {
        d: TlsConn,
        ds: End,
        d_out: Vec<u8>,
        a: TlsConn,
        as_: End,
        a_out: Vec<u8>,
    }

    impl Link {
        fn new(dialler: &TlsSetup, dials: &str, acceptor: &TlsSetup) -> Link {
            let (ds, as_) = pair(1 << 20);
            Link {
                d: dialler.dial(dials).expect("dial"),
                ds,
                d_out: Vec::new(),
                a: acceptor.accept().expect("accept"),
                as_,
                a_out: Vec::new(),
            }
        }

        fn pump(&mut self) -> Result<(), (Side, io::Error)> {
            pump(
                &mut self.d,
                &mut self.ds,
                &mut self.d_out,
                &mut self.a,
                &mut self.as_,
                &mut self.a_out,
            )
        }
    }

    #[test]
    fn handshake_completes_and_lines_pass_both_ways() {
        let dir = Dir::new("ok");
        let ca = ca();
        let (bailey, bona) = (setup(&dir, &ca, "Bailey"), setup(&dir, &ca, "Bona"));
        let mut l = Link::new(&bona, "Bailey", &bailey);
        // Reading the ClientHello sends the acceptor's flight at once: no write_to needed.
        l.d.write_to(&mut l.ds).expect("client hello");
        assert_eq!(
            l.a.read_from(&mut l.as_, &mut l.a_out, usize::MAX).expect("read"),
            ReadResult::WouldBlock
        );
        assert!(l.as_.unread_by_peer() > 0);
        // Written before the handshake: held by rustls and sent once it is done.
        assert_eq!(l.d.write_plain(b"HELLO Bona\n"), 11);
        assert!(l.d.is_handshaking());
        l.pump().expect("handshake");
        assert!(!l.d.is_handshaking() && !l.a.is_handshaking());
        assert_eq!(l.a_out, b"HELLO Bona\n");
        l.a.write_plain(b"AT Bailey +0.1 kiwi +1+2 3\n");
        l.d.write_plain(b"AT Bona +0.2 kiwi +1+2 4\n");
        l.pump().expect("records");
        assert_eq!(l.d_out, b"AT Bailey +0.1 kiwi +1+2 3\n");
        assert_eq!(l.a_out, b"HELLO Bona\nAT Bona +0.2 kiwi +1+2 4\n");
    }

    #[test]
    fn peer_name_ok_names_only_the_certificates_server() {
        let dir = Dir::new("names");
        let ca = ca();
        let (bailey, bona) = (setup(&dir, &ca, "Bailey"), setup(&dir, &ca, "Bona"));
        let mut l = Link::new(&bona, "Bailey", &bailey);
        assert!(!l.a.peer_name_ok("Bona"), "no certificate before the handshake");
        l.pump().expect("handshake");
        assert!(l.a.peer_name_ok("Bona"));
        assert!(!l.a.peer_name_ok("Bailey"));
        assert!(!l.a.peer_name_ok("Clark"));
        assert!(!l.a.peer_name_ok("not a name"));
        assert!(l.d.peer_name_ok("Bailey"));
        assert!(!l.d.peer_name_ok("Bona"));
        assert!(bailey.cert_names("Bailey") && !bailey.cert_names("Bona"));
        let mut plain = Transport::Plain;
        assert!(plain.peer_name_ok("anyone") && !plain.wants_write() && !plain.is_handshaking());
        assert!(plain.write_to(&mut Vec::new()).expect("plain"));
    }

    #[test]
    fn a_client_certificate_from_another_ca_is_refused() {
        let dir = Dir::new("foreign-client");
        let (herd, other) = (ca(), ca());
        let bailey = setup(&dir, &herd, "Bailey");
        // Trusts the herd's CA, so it would accept Bailey; its own certificate is foreign.
        let intruder = setup_with(&dir, &herd, &other, "Bona");
        let mut l = Link::new(&intruder, "Bailey", &bailey);
        l.d.write_plain(b"HELLO Bona\nAT Bona +0 kiwi +1+2 9999999999\n");
        let (side, err) = l.pump().expect_err("must be refused");
        assert_eq!(side, Side::Acceptor);
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(l.a_out.is_empty(), "nothing from it reaches the acceptor");
        assert!(!l.a.peer_name_ok("Bona"));
    }

    #[test]
    fn a_server_certificate_not_naming_the_dialled_neighbour_is_refused() {
        let dir = Dir::new("wrong-name");
        let ca = ca();
        let bona = setup(&dir, &ca, "Bona");
        // A valid certificate of the herd, but of another server: a squatter on Bailey's port.
        let clark = setup(&dir, &ca, "Clark");
        let mut l = Link::new(&bona, "Bailey", &clark);
        l.d.write_plain(b"HELLO Bona\n");
        let (side, err) = l.pump().expect_err("must be refused");
        assert_eq!(side, Side::Dialler);
        assert!(err.to_string().contains("certificate"), "{err}");
        assert!(l.a_out.is_empty(), "the squatter hears nothing");

        // And one from a foreign CA that claims the right name.
        let squatter = setup_with(&dir, &ca, &self::ca(), "Bailey");
        let mut l = Link::new(&bona, "Bailey", &squatter);
        l.d.write_plain(b"HELLO Bona\n");
        assert_eq!(l.pump().expect_err("must be refused").0, Side::Dialler);
        assert!(l.a_out.is_empty());
    }

    #[test]
    fn tls_1_2_is_refused_even_with_a_valid_certificate() {
        let dir = Dir::new("tls12");
        let ca = ca();
        let bailey = setup(&dir, &ca, "Bailey");
        let (cert, key) = leaf(&ca, "Bona");
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_slice(ca.pem.as_bytes()).expect("ca"))
            .expect("root");
        let old = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS12])
            .expect("tls12")
            .with_root_certificates(roots)
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_slice(cert.as_bytes()).expect("cert")],
                PrivateKeyDer::from_pem_slice(key.as_bytes()).expect("key"),
            )
            .expect("config");
        let name = ServerName::try_from("Bailey").expect("name");
        let (ds, as_) = pair(1 << 20);
        let mut l = Link {
            d: TlsConn::new(ClientConnection::new(Arc::new(old), name).expect("conn").into()),
            ds,
            d_out: Vec::new(),
            a: bailey.accept().expect("accept"),
            as_,
            a_out: Vec::new(),
        };
        l.d.write_plain(b"HELLO Bona\n");
        assert_eq!(l.pump().expect_err("TLS 1.3 only").0, Side::Acceptor);
        assert!(l.a_out.is_empty());
    }

    #[test]
    fn a_plaintext_hello_to_a_tls_acceptor_fails_the_handshake() {
        let dir = Dir::new("plain");
        let bailey = setup(&dir, &ca(), "Bailey");
        let (mut nc, mut s) = pair(1 << 16);
        nc.write_all(b"HELLO Bailey\nAT Bailey +0 kiwi +1+2 9999999999\n")
            .expect("write");
        let mut a = bailey.accept().expect("accept");
        let mut out = Vec::new();
        let err = a.read_from(&mut s, &mut out, usize::MAX).expect_err("not TLS");
        assert_eq!(err.kind(), ErrorKind::InvalidData);
        assert!(out.is_empty());
        // The alert is kept for the socket: one write, then the reactor closes.
        a.write_to(&mut s).expect("alert");
        let mut alert = Vec::new();
        let _ = nc.read_to_end(&mut alert);
        assert_eq!(alert.first(), Some(&0x15), "a TLS alert record");
    }

    #[test]
    fn eof_after_data_delivers_the_data_then_eof() {
        let dir = Dir::new("eof");
        let ca = ca();
        let (bailey, bona) = (setup(&dir, &ca, "Bailey"), setup(&dir, &ca, "Bona"));
        let mut l = Link::new(&bona, "Bailey", &bailey);
        l.pump().expect("handshake");
        l.d.write_plain(b"HELLO Bona\n");
        l.d.write_to(&mut l.ds).expect("write");
        // Killed without a close_notify: what it sent still counts, then EOF.
        l.ds.close();
        let mut out = Vec::new();
        assert_eq!(
            l.a.read_from(&mut l.as_, &mut out, usize::MAX).expect("read"),
            ReadResult::Eof
        );
        assert_eq!(out, b"HELLO Bona\n");
    }

    /// Through `Transport::io`, as the reactor's write queue and line reader use it, with
    /// edge-triggered readiness: the acceptor reads only when new bytes reached its socket,
    /// and stops at a short read. So a short read must mean the socket was drained, or the
    /// link stalls. rustls never holds more than its limit, and every byte arrives in order.
    #[test]
    fn transport_io_is_edge_trigger_safe_bounded_and_in_order() {
        let dir = Dir::new("io");
        let ca = ca();
        let (bailey, bona) = (setup(&dir, &ca, "Bailey"), setup(&dir, &ca, "Bona"));
        let (mut ds, mut as_) = pair(256 * 1024);
        let mut d = Transport::Tls(Box::new(bona.dial("Bailey").expect("dial")));
        let mut a = Transport::Tls(Box::new(bailey.accept().expect("accept")));
        let data: Vec<u8> = (0..2_000_000u32).map(|i| (i % 251) as u8).collect();
        let (mut sent, mut got) = (0, Vec::new());
        let mut scratch = vec![0u8; 64 * 1024];
        for _ in 0..10_000 {
            if got.len() == data.len() {
                break;
            }
            let queued = ds.unread_by_peer();
            match d.io(&mut ds).write(&data[sent..]) {
                Ok(n) => {
                    assert!(n <= TLS_BUFFER_LIMIT, "rustls took {n} bytes at once");
                    sent += n;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("write: {e}"),
            }
            let _ = d.io(&mut ds).flush();
            // The dialler reads too (the handshake's replies), as its readable events would.
            match d.io(&mut ds).read(&mut scratch) {
                Ok(0) => panic!("dialler: EOF"),
                Ok(_) => panic!("dialler: the acceptor sent no plaintext"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                Err(e) => panic!("dialler: {e}"),
            }
            if ds.unread_by_peer() <= queued {
                continue; // no new bytes: no readable event
            }
            loop {
                match a.io(&mut as_).read(&mut scratch) {
                    Ok(n) => {
                        got.extend_from_slice(&scratch[..n]);
                        if n < scratch.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            let _ = a.write_to(&mut as_);
        }
        assert_eq!(sent, data.len());
        assert!(got == data, "{} of {} bytes, in order", got.len(), data.len());
        assert!(!d.is_handshaking() && !d.wants_write());
    }

    #[test]
    fn loading_errors_name_the_file_never_its_contents() {
        let dir = Dir::new("load");
        let ca = ca();
        let (cert, key) = leaf(&ca, "Bailey");
        let ca_path = dir.file("ca.pem", &ca.pem);
        let cert_path = dir.file("Bailey.pem", &cert);
        let key_path = dir.file("Bailey.key", &key);
        let missing = dir.0.join("nope.pem");
        let err = |r: Result<TlsSetup, TlsError>| match r {
            Ok(_) => panic!("loaded"),
            Err(e) => e.to_string(),
        };

        let e = err(TlsSetup::load(&missing, &cert_path, &key_path));
        assert!(e.contains("cannot read") && e.contains("nope.pem"), "{e}");
        let e = err(TlsSetup::load(&ca_path, &cert_path, &missing));
        assert!(e.contains("nope.pem"), "{e}");

        let garbled = dir.file(
            "garbled.pem",
            "-----BEGIN CERTIFICATE-----\n%%%not base64%%%\n-----END CERTIFICATE-----\n",
        );
        let e = err(TlsSetup::load(&garbled, &cert_path, &key_path));
        assert!(
            e.contains("garbled.pem") && e.contains("no valid PEM certificate"),
            "{e}"
        );
        assert!(!e.contains("not base64"), "{e}");
        let e = err(TlsSetup::load(&ca_path, &key_path, &key_path));
        assert!(e.contains("Bailey.key") && e.contains("certificate"), "{e}");

        // A key file with a secret-looking body that does not decode: not quoted back.
        let bad_key = dir.file(
            "bad.key",
            "-----BEGIN PRIVATE KEY-----\nSECRETSECRET\n-----END PRIVATE KEY-----\n",
        );
        let e = err(TlsSetup::load(&ca_path, &cert_path, &bad_key));
        assert!(e.contains("bad.key") && e.contains("private key"), "{e}");
        assert!(!e.contains("SECRET"), "{e}");
        let e = err(TlsSetup::load(&ca_path, &cert_path, &cert_path));
        assert!(e.contains("private key"), "{e}");

        // A real key that is not the certificate's: refused, and the key is not shown.
        let (_, other_key) = leaf(&ca, "Bona");
        let other_key_path = dir.file("other.key", &other_key);
        let e = err(TlsSetup::load(&ca_path, &cert_path, &other_key_path));
        assert!(e.contains("other.key"), "{e}");
        let body: String = other_key.lines().nth(1).unwrap_or("").chars().take(20).collect();
        assert!(!e.contains(&body), "{e}");
        assert!(!e.contains("PRIVATE"), "{e}");
    }

    /// Not a check: the measure for the closing note. `cargo test --release --bin herd
    /// tls::tests::handshake_time -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn handshake_time() {
        let dir = Dir::new("time");
        let ca = ca();
        let (bailey, bona) = (setup(&dir, &ca, "Bailey"), setup(&dir, &ca, "Bona"));
        const N: u32 = 100;
        let start = std::time::Instant::now();
        for _ in 0..N {
            let mut l = Link::new(&bona, "Bailey", &bailey);
            l.d.write_plain(b"HELLO Bona\n");
            l.pump().expect("handshake");
            assert!(l.a.peer_name_ok("Bona"));
        }
        println!(
            "mutual TLS 1.3 handshake, in memory: {:?} on average of {N}",
            start.elapsed() / N
        );
    }
}
