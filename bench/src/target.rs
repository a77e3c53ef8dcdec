//! Where loadgen may send traffic: loopback addresses only.
//!
//! A load generator pointed at the wrong host is a denial-of-service tool, so every target
//! (from --addr, a herd.yml or --from/--to) must be 127.0.0.0/8, ::1 or the literal name
//! `localhost`; no other name is looked up. herd.yml is read only for its `servers:` map
//! (host, default 127.0.0.1, and client port), in file order.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;

use serde_yaml::Value;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The server's name in herd.yml, or the address as given.
    pub name: String,
    pub addr: SocketAddr,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.name == self.addr.to_string() {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{} {}", self.name, self.addr)
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub struct TargetError(pub String);

impl fmt::Display for TargetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse(what: &str) -> TargetError {
    TargetError(format!(
        "refusing to send load to {what}: loadgen only targets loopback (127.0.0.0/8, ::1, localhost)"
    ))
}

/// A host that is allowed, as an IP: loopback literals and `localhost` (as 127.0.0.1).
pub fn loopback_ip(host: &str) -> Result<IpAddr, TargetError> {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    if h.eq_ignore_ascii_case("localhost") {
        return Ok(IpAddr::V4(Ipv4Addr::LOCALHOST));
    }
    match h.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(ip),
        _ => Err(refuse(host)),
    }
}

/// `HOST:PORT` (IPv6 as `[::1]:PORT`), loopback only.
pub fn parse_addr(s: &str) -> Result<SocketAddr, TargetError> {
    let Some((host, port)) = s.trim().rsplit_once(':') else {
        return Err(TargetError(format!("'{s}' is not HOST:PORT")));
    };
    let port: u16 = match port.parse() {
        Ok(p) if p > 0 => p,
        _ => return Err(TargetError(format!("'{s}': bad port '{port}'"))),
    };
    if host.is_empty() {
        return Err(TargetError(format!("'{s}' is not HOST:PORT")));
    }
    Ok(SocketAddr::new(loopback_ip(host).map_err(|_| refuse(s))?, port))
}

pub fn from_addrs(addrs: &[String]) -> Result<Vec<Target>, TargetError> {
    addrs
        .iter()
        .map(|a| {
            parse_addr(a).map(|addr| Target {
                name: addr.to_string(),
                addr,
            })
        })
        .collect()
}

/// Every server of a herd.yml text, in file order, without the loopback check (a herd may
/// list remote servers that this run does not use).
fn servers_of(yaml: &str) -> Result<Vec<(String, String, u16)>, String> {
    let doc: Value = serde_yaml::from_str(yaml).map_err(|e| e.to_string())?;
    let Some(map) = doc.get("servers").and_then(Value::as_mapping) else {
        return Err("no `servers:` map".into());
    };
    let mut out = Vec::new();
    for (name, s) in map {
        let name = name.as_str().ok_or("a server name is not a string")?.to_string();
        let host = match s.get("host") {
            None | Some(Value::Null) => "127.0.0.1".to_string(),
            Some(h) => h
                .as_str()
                .ok_or_else(|| format!("servers.{name}.host is not a string"))?
                .to_string(),
        };
        let port = s
            .get("port")
            .and_then(Value::as_u64)
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| format!("servers.{name}.port is missing or not a port number"))?;
        out.push((name, host, port));
    }
    Ok(out)
}

/// The servers of a herd.yml text, all or the `only` ones (in that order), loopback only.
pub fn from_config_text(yaml: &str, only: &[String], file: &str) -> Result<Vec<Target>, TargetError> {
    let all = servers_of(yaml).map_err(|e| TargetError(format!("{file}: {e}")))?;
    let pick: Vec<&(String, String, u16)> = if only.is_empty() {
        all.iter().collect()
    } else {
        let mut v = Vec::new();
        for want in only {
            match all.iter().find(|(n, _, _)| n == want) {
                Some(s) => v.push(s),
                None => {
                    let names: Vec<&str> = all.iter().map(|(n, _, _)| n.as_str()).collect();
                    return Err(TargetError(format!(
                        "{file}: no server named '{want}' (it has: {})",
                        names.join(", ")
                    )));
                }
            }
        }
        v
    };
    if pick.is_empty() {
        return Err(TargetError(format!("{file}: `servers:` is empty")));
    }
    pick.into_iter()
        .map(|(name, host, port)| {
            let ip = loopback_ip(host).map_err(|_| refuse(&format!("server {name} ({host}:{port})")))?;
            Ok(Target {
                name: name.clone(),
                addr: SocketAddr::new(ip, *port),
            })
        })
        .collect()
}

pub fn from_config(path: &Path, only: &[String]) -> Result<Vec<Target>, TargetError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| TargetError(format!("cannot read {}: {e}", path.display())))?;
    from_config_text(&text, only, &path.display().to_string())
}

/// `--from` / `--to`: an address, or a server name of `--config`.
pub fn resolve_one(spec: &str, config: Option<&Path>) -> Result<Target, TargetError> {
    if spec.contains(':') {
        let addr = parse_addr(spec)?;
        return Ok(Target {
            name: addr.to_string(),
            addr,
        });
    }
    match config {
        Some(path) => Ok(from_config(path, &[spec.to_string()])?.remove(0)),
        None => Err(TargetError(format!(
            "'{spec}' is not HOST:PORT (a server name needs --config)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_only() {
        for ok in [
            "127.0.0.1:10099",
            "127.8.9.10:1",
            "localhost:6379",
            "LOCALHOST:1",
            "[::1]:80",
        ] {
            assert!(parse_addr(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            parse_addr("localhost:5").map(|a| a.to_string()),
            Ok("127.0.0.1:5".into())
        );
        for bad in [
            "10.0.0.1:80",
            "0.0.0.0:80",
            "8.8.8.8:53",
            "example.com:80",
            "[::]:80",
            "[::ffff:127.0.0.1]:1",
        ] {
            let e = parse_addr(bad).unwrap_err().0;
            assert!(e.contains("refusing") && e.contains(bad), "{bad}: {e}");
        }
        assert!(parse_addr("127.0.0.1").unwrap_err().0.contains("not HOST:PORT"));
        assert!(parse_addr("127.0.0.1:0").unwrap_err().0.contains("bad port"));
        assert!(parse_addr("127.0.0.1:99999").unwrap_err().0.contains("bad port"));
        assert!(parse_addr(":80").unwrap_err().0.contains("not HOST:PORT"));
    }

    const YML: &str = "servers:\n  Bailey: { host: 127.0.0.1, port: 10099, peer_port: 20099, neighbours: [Bona] }\n  \
        Bona: { port: 10044, peer_port: 20044, neighbours: [Bailey] }\n  \
        Far: { host: 10.1.1.1, port: 10001, peer_port: 20001 }\nlog: { dir: logs }\n";

    #[test]
    fn config_servers_in_file_order() {
        let t = from_config_text(YML, &["Bona".into(), "Bailey".into()], "h.yml").unwrap();
        assert_eq!(
            t[0],
            Target {
                name: "Bona".into(),
                addr: "127.0.0.1:10044".parse().unwrap()
            }
        );
        assert_eq!(t[1].name, "Bailey");
        assert_eq!(t[1].to_string(), "Bailey 127.0.0.1:10099");
    }

    #[test]
    fn config_errors() {
        let e = from_config_text(YML, &[], "h.yml").unwrap_err().0;
        assert!(e.contains("refusing") && e.contains("Far"), "{e}");
        let e = from_config_text(YML, &["Nope".into()], "h.yml").unwrap_err().0;
        assert!(
            e.contains("no server named 'Nope'") && e.contains("Bailey, Bona, Far"),
            "{e}"
        );
        assert!(
            from_config_text("log: {}\n", &[], "h.yml")
                .unwrap_err()
                .0
                .contains("no `servers:`")
        );
        let e = from_config_text("servers:\n  A: { host: 127.0.0.1 }\n", &[], "h.yml")
            .unwrap_err()
            .0;
        assert!(e.contains("servers.A.port"), "{e}");
        assert!(from_config_text("servers: [", &[], "h.yml").is_err());
    }

    #[test]
    fn from_and_to_specs() {
        assert_eq!(resolve_one("127.0.0.1:7", None).unwrap().addr.port(), 7);
        assert!(
            resolve_one("Bailey", None)
                .unwrap_err()
                .0
                .contains("needs --config")
        );
        assert!(
            resolve_one("10.0.0.1:7", None)
                .unwrap_err()
                .0
                .contains("refusing")
        );
    }
}
