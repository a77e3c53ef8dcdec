//! `herd certs`: a new certificate authority for the herd and a certificate + key for each
//! of its servers (SPEC §6), ready for `peer_tls`.
//!
//! Each server certificate names its server as a DNS subject alternative name and may be
//! used both to accept (TLS server) and to dial (TLS client), since every peer link is
//! mutual. Existing files are never overwritten unless asked to, and that is checked for
//! every file before any is written. Keys are created with mode 0600 from the start, so no
//! key is ever readable by others, not even for an instant. No key is ever printed.

use std::fmt;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::ServerName;

/// How long the generated certificates are valid. Rotating them means running
/// `herd certs --force` again and restarting the herd.
const VALID_DAYS: i64 = 10 * 365;
/// Back-dated a little, so a neighbour whose clock is behind still accepts a fresh one.
const BACKDATE_HOURS: i64 = 1;
/// The file name of the CA, beside the servers' `<Name>.pem` and `<Name>.key`.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca.key";

#[derive(Debug)]
pub enum CertsError {
    /// A server name that cannot be a DNS subject alternative name, so no TLS dial could
    /// ever check it.
    BadName(String),
    /// Files that are already there, without `--force`; nothing was written.
    Exists(Vec<PathBuf>),
    Generate(rcgen::Error),
    Write {
        path: PathBuf,
        err: io::Error,
    },
}

impl fmt::Display for CertsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CertsError::BadName(n) => write!(
                f,
                "server name `{n}` is not a valid DNS name, so it cannot be named in a certificate"
            ),
            CertsError::Exists(paths) => {
                let list: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
                write!(
                    f,
                    "refusing to overwrite {} (use --force to replace them); nothing was written",
                    list.join(", ")
                )
            }
            CertsError::Generate(e) => write!(f, "cannot generate a certificate: {e}"),
            CertsError::Write { path, err } => write!(f, "cannot write {}: {err}", path.display()),
        }
    }
}

impl From<rcgen::Error> for CertsError {
    fn from(e: rcgen::Error) -> Self {
        CertsError::Generate(e)
    }
}

/// One file to write: its name in the output directory, its PEM text, and whether it is a
/// private key (mode 0600) or a certificate (mode 0644).
pub struct PemFile {
    pub name: String,
    pub pem: String,
    pub secret: bool,
}

/// The default output directory: `certs/` beside the config file.
pub fn default_dir(config: &Path) -> PathBuf {
    config.parent().unwrap_or(Path::new("")).join("certs")
}

/// Generates the CA and every server's certificate and key, in memory.
pub fn generate(names: &[String]) -> Result<Vec<PemFile>, CertsError> {
    for name in names {
        if ServerName::try_from(name.as_str()).is_err() {
            return Err(CertsError::BadName(name.clone()));
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(BACKDATE_HOURS);
    let not_after = now + time::Duration::days(VALID_DAYS);

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "herd CA");
    // Path length 0: this CA signs the servers' certificates and nothing that signs more.
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    let ca_cert = ca.self_signed(&ca_key)?;
    let mut files = vec![
        PemFile {
            name: CA_CERT.into(),
            pem: ca_cert.pem(),
            secret: false,
        },
        PemFile {
            name: CA_KEY.into(),
            pem: ca_key.serialize_pem(),
            secret: true,
        },
    ];
    let issuer = Issuer::new(ca, ca_key);
    for name in names {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(vec![name.clone()])?;
        params.distinguished_name.push(DnType::CommonName, name.as_str());
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: a server accepts its neighbours' links and dials its own.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.signed_by(&key, &issuer)?;
        files.push(PemFile {
            name: format!("{name}.pem"),
            pem: cert.pem(),
            secret: false,
        });
        files.push(PemFile {
            name: format!("{name}.key"),
            pem: key.serialize_pem(),
            secret: true,
        });
    }
    Ok(files)
}

/// Writes `files` into `dir` (created if missing). Without `force`, any file already there
/// stops everything before the first write. Returns the paths written.
pub fn write(dir: &Path, files: &[PemFile], force: bool) -> Result<Vec<PathBuf>, CertsError> {
    let paths: Vec<PathBuf> = files.iter().map(|f| dir.join(&f.name)).collect();
    if !force {
        let existing: Vec<PathBuf> = paths
            .iter()
            .filter(|p| p.symlink_metadata().is_ok())
            .cloned()
            .collect();
        if !existing.is_empty() {
            return Err(CertsError::Exists(existing));
        }
    }
    std::fs::create_dir_all(dir).map_err(|err| CertsError::Write {
        path: dir.to_path_buf(),
        err,
    })?;
    for (file, path) in files.iter().zip(&paths) {
        write_one(path, file, force).map_err(|err| CertsError::Write {
            path: path.clone(),
            err,
        })?;
    }
    Ok(paths)
}

/// A new file, never an old one reused: an existing key file's wider mode would survive a
/// truncating open, and a symlink planted in its place would be followed.
fn write_one(path: &Path, file: &PemFile, force: bool) -> io::Result<()> {
    if force {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(if file.secret { 0o600 } else { 0o644 });
    }
    let mut f = options.open(path)?;
    f.write_all(file.pem.as_bytes())?;
    f.sync_all()
}

/// `herd certs`: the server names of the herd at `config`, generated and written.
pub fn run(config: &Path, out: Option<&Path>, force: bool) -> Result<Vec<PathBuf>, String> {
    let herd = crate::config::load(config, |k| std::env::var(k).ok()).map_err(|e| e.to_string())?;
    let names: Vec<String> = herd.servers.iter().map(|s| s.name.clone()).collect();
    let dir = out.map(Path::to_path_buf).unwrap_or_else(|| default_dir(config));
    let files = generate(&names).map_err(|e| e.to_string())?;
    write(&dir, &files, force).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: &[&str]) -> Vec<String> {
        n.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn one_ca_and_a_pair_per_server() {
        let files = generate(&names(&["Bailey", "Bona"])).expect("generate");
        let list: Vec<(&str, bool)> = files.iter().map(|f| (f.name.as_str(), f.secret)).collect();
        assert_eq!(
            list,
            [
                ("ca.pem", false),
                ("ca.key", true),
                ("Bailey.pem", false),
                ("Bailey.key", true),
                ("Bona.pem", false),
                ("Bona.key", true)
            ]
        );
        for f in &files {
            let marker = if f.secret {
                "-----BEGIN PRIVATE KEY-----"
            } else {
                "-----BEGIN CERTIFICATE-----"
            };
            assert!(f.pem.starts_with(marker), "{}", f.name);
        }
    }

    #[test]
    fn a_name_that_is_no_dns_name_is_refused() {
        assert!(
            matches!(generate(&names(&["Bailey", "not a name"])), Err(CertsError::BadName(n)) if n == "not a name")
        );
    }

    #[test]
    fn default_dir_is_beside_the_config() {
        assert_eq!(
            default_dir(Path::new("/etc/herd/herd.yml")),
            Path::new("/etc/herd/certs")
        );
        assert_eq!(default_dir(Path::new("herd.yml")), Path::new("certs"));
    }
}
