//! `herd certs` through the real binary (SPEC §6): what it writes and with which modes, its
//! refusal to overwrite, `--force`, and that what it writes is a working herd PKI: loaded
//! with the server's own `TlsSetup`, two servers complete a mutual TLS handshake.

mod support;

// The server's TLS module itself, so the certificates are checked by the code that will
// use them. (Its own unit tests come along and run here too.)
#[allow(dead_code)]
#[path = "../src/tls.rs"]
mod tls;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use support::*;

const NAMES: [&str; 5] = ["Bailey", "Bona", "Campbell", "Clark", "Jaquez"];

fn certs(herd: &Herd, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("certs")
        .arg("--config")
        .arg(&herd.config)
        .args(args)
        .output()
        .expect("run herd certs")
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).expect("metadata").permissions().mode() & 0o777
}

fn all_files() -> Vec<String> {
    let mut files = vec!["ca.pem".to_string(), "ca.key".to_string()];
    for n in NAMES {
        files.push(format!("{n}.pem"));
        files.push(format!("{n}.key"));
    }
    files
}

#[test]
fn writes_a_ca_and_a_pair_per_server_keys_mode_0600() {
    let herd = Herd::default_five("");
    let out = certs(&herd, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = herd.dir.path().join("certs");
    for f in all_files() {
        let path = dir.join(&f);
        let body = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{f}: {e}"));
        if f.ends_with(".key") {
            assert_eq!(mode(&path), 0o600, "{f}");
            assert!(body.starts_with("-----BEGIN PRIVATE KEY-----"), "{f}");
        } else {
            assert_eq!(mode(&path) & 0o022, 0, "{f} writable by others");
            assert!(body.starts_with("-----BEGIN CERTIFICATE-----"), "{f}");
        }
        assert!(text(&out).contains(&f), "the output names {f}");
    }
    assert!(
        !text(&out).contains("PRIVATE"),
        "no key is printed: {}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), all_files().len());
}

#[test]
fn refuses_to_overwrite_without_force_and_then_writes_nothing() {
    let herd = Herd::default_five("");
    let dir = herd.dir.path().join("certs");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(dir.join("Bona.key"), "old").expect("old key");
    let out = certs(&herd, &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(msg.contains("Bona.key") && msg.contains("--force"), "{msg}");
    assert_eq!(msg.lines().count(), 1, "one line: {msg}");
    assert_eq!(std::fs::read_to_string(dir.join("Bona.key")).expect("key"), "old");
    assert_eq!(
        std::fs::read_dir(&dir).expect("dir").count(),
        1,
        "nothing else was written"
    );
}

#[test]
fn force_replaces_every_file_and_keys_end_up_0600() {
    let herd = Herd::default_five("");
    let out_dir = herd.dir.path().join("elsewhere");
    let out_arg = out_dir.to_str().expect("utf-8 path");
    assert!(certs(&herd, &["--out", out_arg]).status.success());
    let old_ca = std::fs::read_to_string(out_dir.join("ca.pem")).expect("ca");
    let old_key = std::fs::read_to_string(out_dir.join("Bailey.key")).expect("key");
    // A key file someone made readable: --force must not keep that mode.
    std::fs::set_permissions(out_dir.join("Bailey.key"), std::fs::Permissions::from_mode(0o644))
        .expect("chmod");

    let again = certs(&herd, &["--out", out_arg]);
    assert_eq!(again.status.code(), Some(2), "no overwrite without --force");
    let forced = certs(&herd, &["--out", out_arg, "--force"]);
    assert!(forced.status.success(), "{}", text(&forced));
    assert_ne!(
        std::fs::read_to_string(out_dir.join("ca.pem")).expect("ca"),
        old_ca
    );
    assert_ne!(
        std::fs::read_to_string(out_dir.join("Bailey.key")).expect("key"),
        old_key
    );
    assert_eq!(mode(&out_dir.join("Bailey.key")), 0o600);
    assert!(!herd.dir.path().join("certs").exists(), "--out is where they go");
}

#[test]
fn generated_certificates_load_and_complete_a_mutual_handshake() {
    let herd = Herd::default_five("");
    let out = certs(&herd, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let dir = herd.dir.path().join("certs");
    let load = |name: &str| {
        tls::TlsSetup::load(
            &dir.join("ca.pem"),
            &dir.join(format!("{name}.pem")),
            &dir.join(format!("{name}.key")),
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let (bailey, bona) = (load("Bailey"), load("Bona"));
    assert!(bailey.cert_names("Bailey") && !bailey.cert_names("Bona"));

    let (mut ds, mut as_) = tls::testing::pair(1 << 20);
    let mut d = bona.dial("Bailey").expect("dial");
    let mut a = bailey.accept().expect("accept");
    let (mut d_out, mut a_out) = (Vec::new(), Vec::new());
    d.write_plain(b"HELLO Bona\n");
    tls::testing::pump(&mut d, &mut ds, &mut d_out, &mut a, &mut as_, &mut a_out).expect("handshake");
    assert_eq!(a_out, b"HELLO Bona\n");
    assert!(a.peer_name_ok("Bona") && !a.peer_name_ok("Bailey"));
    assert!(d.peer_name_ok("Bailey"));

    // Dialling Campbell but reaching Bailey: refused by the dialler.
    let (mut ds, mut as_) = tls::testing::pair(1 << 20);
    let mut d = bona.dial("Campbell").expect("dial");
    let mut a = bailey.accept().expect("accept");
    let (mut d_out, mut a_out) = (Vec::new(), Vec::new());
    d.write_plain(b"HELLO Bona\n");
    let refused = tls::testing::pump(&mut d, &mut ds, &mut d_out, &mut a, &mut as_, &mut a_out);
    assert!(
        matches!(refused, Err((tls::testing::Side::Dialler, _))),
        "{refused:?}"
    );
    assert!(a_out.is_empty());
}
