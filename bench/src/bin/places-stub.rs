//! places-stub: the tests' Google Places imitation (tests/support/places_stub.rs) as a
//! program, for benchmarks and for trying WHATSAT offline (README: "WHATSAT offline").
//! It prints its base URL on the first line of stdout and serves until killed.

#[path = "../../../tests/support/places_stub.rs"]
mod places_stub;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

const HELP: &str = "\
places-stub: a local imitation of Google Places, for herd without the internet

USAGE:
    places-stub [--port N] [--delay-ms N]

It answers the two endpoints herd calls, with documents shaped like Google's:
    POST /v1/places:searchNearby             Places API (New), places.api: new
    GET  /maps/api/place/nearbysearch/json   legacy Nearby Search, places.api: legacy
Like Google, it wants a key (any non-empty one: the X-Goog-Api-Key header or the key
parameter) and answers Google's REQUEST_DENIED without one; it returns up to 20 made-up
places near UCLA whatever the location asked for. It listens on 127.0.0.1 only.

OPTIONS:
    --port N        the port to listen on (default 0: any free port)
    --delay-ms N    answer each request after N ms, like a real upstream (default 50,
                    at most 60000)
    -h, --help      this text

OUTPUT:
    The first line of stdout is its base URL, e.g. http://127.0.0.1:8080: give it to herd
    as places.url or HERD_PLACES_URL, and set the key variable to anything:
        places-stub --port 8080 &
        GOOGLE_PLACES_API_KEY=dummy HERD_PLACES_URL=http://127.0.0.1:8080 ./run.sh
    It keeps every request it gets in memory: meant for tests and benchmarks, not for
    serving for days.
";

struct Opts {
    port: u16,
    delay_ms: u64,
}

enum Parsed {
    Run(Opts),
    Help,
}

fn parse() -> Result<Parsed, String> {
    use lexopt::prelude::*;
    let mut o = Opts {
        port: 0,
        delay_ms: 50,
    };
    let mut p = lexopt::Parser::from_env();
    let number = |p: &mut lexopt::Parser, name: &str, max: u64| -> Result<u64, String> {
        let v = p.value().map_err(|e| e.to_string())?;
        let s = v.to_string_lossy().into_owned();
        match s.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => Err(format!("{name}: '{s}' is not a number from 0 to {max}")),
        }
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('h') | Long("help") => return Ok(Parsed::Help),
            Long("port") => o.port = number(&mut p, "--port", u16::MAX as u64)? as u16,
            Long("delay-ms") => o.delay_ms = number(&mut p, "--delay-ms", 60_000)?,
            a => return Err(a.unexpected().to_string()),
        }
    }
    Ok(Parsed::Run(o))
}

fn main() -> ExitCode {
    let o = match parse() {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("places-stub: {e} (see places-stub --help)");
            return ExitCode::from(2);
        }
    };
    let stub = match places_stub::PlacesStub::bind("127.0.0.1", o.port) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("places-stub: {e}");
            return ExitCode::from(1);
        }
    };
    stub.set(places_stub::Behaviour::Delay(Duration::from_millis(o.delay_ms)));
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", stub.url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return ExitCode::from(1);
    }
    drop(out);
    // The stub serves on its own threads; this one only keeps the process alive.
    loop {
        std::thread::park();
    }
}
