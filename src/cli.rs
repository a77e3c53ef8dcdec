//! Command-line arguments (lexopt): `herd [--config PATH] NAME`, `herd status`, `herd certs ...`, `--help`,
//! `--version`.

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

pub const HELP: &str = "\
herd: one server of a proxy herd (see herd.yml and README.md)

Usage: herd [--config PATH] NAME
       herd [--config PATH] --list
       herd status [--config PATH]
       herd certs [--config PATH] [--out DIR] [--force]

Arguments:
  NAME                 the server to run, as named under `servers:` in the config
  status               ask every server's admin endpoint and print one row each:
                       up or down, uptime, clients, links up/total (each direction
                       counted), messages/s (over ~200 ms), Places calls and errors;
                       exit status 0 only if every server and every link is up

Options:
  -c, --config PATH    the herd description [default: herd.yml]
  -l, --list           check the config and print one line per server:
                       NAME HOST PORT PEER_PORT LOG_FILE ADMIN NEIGHBOURS
                       (ADMIN is host:port; `-` for none; used by run.sh)
  -h, --help           print this help
  -V, --version        print the version

herd certs: writes a new CA (ca.pem, ca.key) and <NAME>.pem + <NAME>.key for every server
of the herd, for peer_tls (keys mode 0600; no key is ever printed)
  -o, --out DIR        where to write them [default: certs/ beside the config]
  -f, --force          replace existing files (without it, nothing is written if any exists)

Environment:
  GOOGLE_PLACES_API_KEY  the Places API key (the variable named by places.key_env)
  HERD_PLACES_URL        overrides places.url
  HERD_PLACES_API        overrides places.api (new | legacy)
";

#[derive(Debug, PartialEq)]
pub enum Command {
    Run(Args),
    List(PathBuf),
    Status(PathBuf),
    Certs(CertsArgs),
    Help,
    Version,
}

#[derive(Debug, PartialEq)]
pub struct Args {
    pub config: PathBuf,
    pub name: String,
}

/// `herd certs [--config PATH] [--out DIR] [--force]`.
#[derive(Debug, PartialEq)]
pub struct CertsArgs {
    pub config: PathBuf,
    /// `None`: `certs/` beside the config file.
    pub out: Option<PathBuf>,
    pub force: bool,
}

#[derive(Debug, PartialEq)]
pub enum CliError {
    MissingName,
    ExtraArgument(String),
    Invalid(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::MissingName => f.write_str("missing server NAME"),
            CliError::ExtraArgument(a) => write!(f, "unexpected argument `{a}`: one server NAME per process"),
            CliError::Invalid(msg) => f.write_str(msg),
        }
    }
}

impl From<lexopt::Error> for CliError {
    fn from(e: lexopt::Error) -> Self {
        CliError::Invalid(e.to_string())
    }
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Command, CliError> {
    use lexopt::prelude::*;
    let mut args = args.into_iter().peekable();
    // Only as the first argument, so `herd -c x.yml certs` still runs a server of that name.
    if args.peek().is_some_and(|a| a == "certs") {
        args.next();
        return parse_certs(lexopt::Parser::from_args(args));
    }
    let mut parser = lexopt::Parser::from_args(args);
    let mut config = PathBuf::from("herd.yml");
    let mut name = None;
    let mut list = false;
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('V') | Long("version") => return Ok(Command::Version),
            Short('c') | Long("config") => config = parser.value()?.into(),
            Short('l') | Long("list") => list = true,
            Value(v) if name.is_none() => {
                name = Some(
                    v.into_string()
                        .map_err(|v| CliError::Invalid(format!("server name {v:?} is not UTF-8")))?,
                )
            }
            Value(v) => return Err(CliError::ExtraArgument(v.to_string_lossy().into_owned())),
            _ => return Err(arg.unexpected().into()),
        }
    }
    // `status` in the NAME position is the subcommand, so no server can be called that.
    if name.as_deref() == Some("status") {
        return if list {
            Err(CliError::Invalid(
                "`status` and `--list` do not go together".into(),
            ))
        } else {
            Ok(Command::Status(config))
        };
    }
    if list {
        return match name {
            Some(n) => Err(CliError::ExtraArgument(n)),
            None => Ok(Command::List(config)),
        };
    }
    let name = name.ok_or(CliError::MissingName)?;
    Ok(Command::Run(Args { config, name }))
}

fn parse_certs(mut parser: lexopt::Parser) -> Result<Command, CliError> {
    use lexopt::prelude::*;
    let mut certs = CertsArgs {
        config: PathBuf::from("herd.yml"),
        out: None,
        force: false,
    };
    while let Some(arg) = parser.next()? {
        match arg {
            Short('h') | Long("help") => return Ok(Command::Help),
            Short('c') | Long("config") => certs.config = parser.value()?.into(),
            Short('o') | Long("out") => certs.out = Some(parser.value()?.into()),
            Short('f') | Long("force") => certs.force = true,
            Value(v) => return Err(CliError::ExtraArgument(v.to_string_lossy().into_owned())),
            _ => return Err(arg.unexpected().into()),
        }
    }
    Ok(Command::Certs(certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(args: &[&str]) -> Result<Command, CliError> {
        parse(args.iter().map(OsString::from))
    }

    fn run(config: &str, name: &str) -> Result<Command, CliError> {
        Ok(Command::Run(Args {
            config: config.into(),
            name: name.into(),
        }))
    }

    #[test]
    fn name_with_default_config() {
        assert_eq!(p(&["Bailey"]), run("herd.yml", "Bailey"));
    }

    #[test]
    fn config_in_every_spelling() {
        for args in [
            &["--config", "x.yml", "Bona"][..],
            &["--config=x.yml", "Bona"],
            &["-c", "x.yml", "Bona"],
            &["Bona", "--config", "x.yml"],
        ] {
            assert_eq!(p(args), run("x.yml", "Bona"), "{args:?}");
        }
    }

    #[test]
    fn help_and_version_win() {
        assert_eq!(p(&["--help"]), Ok(Command::Help));
        assert_eq!(p(&["Bailey", "-h"]), Ok(Command::Help));
        assert_eq!(p(&["--version"]), Ok(Command::Version));
        assert_eq!(p(&["-V"]), Ok(Command::Version));
    }

    #[test]
    fn list_takes_no_name() {
        assert_eq!(p(&["--list"]), Ok(Command::List("herd.yml".into())));
        assert_eq!(p(&["-c", "h.yml", "-l"]), Ok(Command::List("h.yml".into())));
        assert_eq!(p(&["--list", "A"]), Err(CliError::ExtraArgument("A".into())));
    }

    #[test]
    fn status_takes_a_config() {
        assert_eq!(p(&["status"]), Ok(Command::Status("herd.yml".into())));
        assert_eq!(
            p(&["status", "--config", "h.yml"]),
            Ok(Command::Status("h.yml".into()))
        );
        assert_eq!(p(&["-c", "h.yml", "status"]), Ok(Command::Status("h.yml".into())));
        assert_eq!(
            p(&["status", "Bailey"]),
            Err(CliError::ExtraArgument("Bailey".into()))
        );
        assert!(matches!(p(&["status", "--list"]), Err(CliError::Invalid(_))));
    }

    #[test]
    fn certs_with_defaults_and_options() {
        let certs = |config: &str, out: Option<&str>, force| {
            Ok(Command::Certs(CertsArgs {
                config: config.into(),
                out: out.map(PathBuf::from),
                force,
            }))
        };
        assert_eq!(p(&["certs"]), certs("herd.yml", None, false));
        assert_eq!(
            p(&["certs", "-c", "h.yml", "--out", "d", "--force"]),
            certs("h.yml", Some("d"), true)
        );
        assert_eq!(p(&["certs", "--out=d", "-f"]), certs("herd.yml", Some("d"), true));
        assert_eq!(
            p(&["certs", "Bailey"]),
            Err(CliError::ExtraArgument("Bailey".into()))
        );
        // Not first: a server named `certs`.
        assert_eq!(p(&["-c", "x.yml", "certs"]), run("x.yml", "certs"));
    }

    #[test]
    fn errors_are_named() {
        assert_eq!(p(&[]), Err(CliError::MissingName));
        assert_eq!(p(&["A", "B"]), Err(CliError::ExtraArgument("B".into())));
        assert!(matches!(p(&["--bogus", "A"]), Err(CliError::Invalid(m)) if m.contains("--bogus")));
        assert!(matches!(p(&["A", "--config"]), Err(CliError::Invalid(m)) if m.contains("--config")));
    }
}
