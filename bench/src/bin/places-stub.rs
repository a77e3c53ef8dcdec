//! `places-stub [--delay-ms N]`: the tests' Places imitation (tests/support/places_stub.rs)
//! as a process, for benchmarks: answers both Google endpoints after N ms (default 50) on
//! a free 127.0.0.1 port, prints its base URL on the first line of stdout, and serves until
//! killed.

#[path = "../../../tests/support/places_stub.rs"]
mod places_stub;

use std::io::Write;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    let mut delay_ms = 50u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next().map(|v| v.parse::<u64>())) {
            ("--delay-ms", Some(Ok(v))) if v <= 60_000 => delay_ms = v,
            _ => {
                eprintln!("places-stub: usage: places-stub [--delay-ms N]  (N <= 60000)");
                return std::process::ExitCode::from(2);
            }
        }
    }
    let stub = places_stub::PlacesStub::start();
    stub.set(places_stub::Behaviour::Delay(Duration::from_millis(delay_ms)));
    let mut out = std::io::stdout().lock();
    if writeln!(out, "{}", stub.url())
        .and_then(|()| out.flush())
        .is_err()
    {
        return std::process::ExitCode::from(1);
    }
    drop(out);
    // The stub serves on its own threads; this one only keeps the process alive.
    loop {
        std::thread::park();
    }
}
