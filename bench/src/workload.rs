//! What loadgen sends and what it accepts back: request lines, reply framing and reply
//! validation (SPEC §2).
//!
//! Pure: no sockets and no clocks (times come in as arguments), so every rule here is
//! unit-tested. Requests are formatted straight into a connection's output buffer with no
//! allocation, since this runs once per request on a machine the server shares.

use std::ops::Range;

/// A reply longer than this without its terminator means the stream is not what we think it
/// is; the connection is dropped rather than buffering without bound.
pub const MAX_REPLY: usize = 4 * 1024 * 1024;

/// Client ids are `lg-<n>`.
pub const CLIENT_PREFIX: &[u8] = b"lg-";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Iamat,
    Whatsat,
    Raw,
}

impl Kind {
    pub fn framing(self) -> Framing {
        match self {
            Kind::Whatsat => Framing::Block,
            Kind::Iamat | Kind::Raw => Framing::Line,
        }
    }
}

/// How a reply ends: one line, or (WHATSAT) an AT line and JSON ending in a blank line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Line,
    Block,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The first reply in the buffer is complete and this long (terminator included).
    Complete(usize),
    /// Not yet; the first `scanned` bytes hold no terminator, so the next call may start
    /// there instead of rescanning a large reply that trickles in.
    Incomplete { scanned: usize },
    /// Longer than `MAX_REPLY` with no end in sight.
    TooLong,
}

/// Finds the end of the first reply in `buf`. `scanned` is what an earlier call on the same
/// (grown) buffer returned in `Incomplete`, or 0.
///
/// With `Framing::Block`, a reply that starts `AT ` ends at the first blank line (`\n\n`:
/// SPEC §2 keeps empty lines out of the JSON); anything else (`? ...`) is one line.
pub fn frame(buf: &[u8], framing: Framing, scanned: usize) -> Frame {
    let block = framing == Framing::Block && {
        let n = buf.len().min(3);
        if buf[..n] != b"AT "[..n] {
            false
        } else if n < 3 {
            // Too short to tell a WHATSAT block from a one-line reply.
            return Frame::Incomplete { scanned: 0 };
        } else {
            true
        }
    };
    let found = if block {
        let from = scanned.saturating_sub(1);
        buf[from..]
            .windows(2)
            .position(|w| w == b"\n\n")
            .map(|p| from + p + 2)
    } else {
        let from = scanned.min(buf.len());
        buf[from..].iter().position(|&b| b == b'\n').map(|p| from + p + 1)
    };
    match found {
        Some(n) => Frame::Complete(n),
        None if buf.len() > MAX_REPLY => Frame::TooLong,
        None => Frame::Incomplete { scanned: buf.len() },
    }
}

/// A reply without its line terminator (`\n` or `\r\n`).
pub fn line_body(reply: &[u8]) -> &[u8] {
    let r = reply.strip_suffix(b"\n").unwrap_or(reply);
    r.strip_suffix(b"\r").unwrap_or(r)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `? ...`: the server called a request we believe valid invalid.
    ErrorReply,
    /// A well-formed WHATSAT answer without places: no key, quota, upstream down. Fast to
    /// produce, so counting it as a success would report the speed of a refusal.
    Places(PlacesStatus),
    /// Not a reply the protocol allows for this request.
    Malformed,
}

/// A WHATSAT answer's `status` other than `OK` and `ZERO_RESULTS` (Google's statuses).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlacesStatus {
    RequestDenied,
    OverQueryLimit,
    InvalidRequest,
    UnknownError,
    /// Any other status text.
    Other,
}

impl PlacesStatus {
    /// `Ok(())` for the statuses of an answer that did its job.
    pub fn classify(status: &[u8]) -> Result<(), PlacesStatus> {
        match status {
            b"OK" | b"ZERO_RESULTS" => Ok(()),
            b"REQUEST_DENIED" => Err(PlacesStatus::RequestDenied),
            b"OVER_QUERY_LIMIT" => Err(PlacesStatus::OverQueryLimit),
            b"INVALID_REQUEST" => Err(PlacesStatus::InvalidRequest),
            b"UNKNOWN_ERROR" => Err(PlacesStatus::UnknownError),
            _ => Err(PlacesStatus::Other),
        }
    }
}

/// The top-level `"status"` value of a WHATSAT JSON document, found without parsing it
/// (loadgen checks tens of thousands a second). The top-level key comes after `results`,
/// so the last `"status"` is the one; a quote inside a JSON string is escaped, so no string
/// value can hold `"status"` followed by a quote. `business_status` does not match either.
pub fn json_status(json: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = b"\"status\"";
    let at = json.windows(KEY.len()).rposition(|w| w == KEY)?;
    let rest = json[at + KEY.len()..].trim_ascii_start();
    let rest = rest.strip_prefix(b":")?.trim_ascii_start().strip_prefix(b"\"")?;
    let end = rest.iter().position(|&b| b == b'"')?;
    Some(&rest[..end])
}

/// SPEC §2 field separators.
fn is_blank(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\r' | b'\n' | 0x0b | 0x0c)
}

/// Splits `line` into at most `N` fields; returns how many there were (`N + 1` = too many).
fn fields<'a, const N: usize>(line: &'a [u8], out: &mut [&'a [u8]; N]) -> usize {
    let mut n = 0;
    for f in line.split(|&b| is_blank(b)).filter(|f| !f.is_empty()) {
        if n == N {
            return N + 1;
        }
        out[n] = f;
        n += 1;
    }
    n
}

/// `<diff>`: a sign, digits, a point and exactly nine digits.
fn is_diff(f: &[u8]) -> bool {
    let Some((&sign, rest)) = f.split_first() else {
        return false;
    };
    let Some((int, frac)) = rest.split_at_checked(rest.len().saturating_sub(10)) else {
        return false;
    };
    matches!(sign, b'+' | b'-')
        && !int.is_empty()
        && int.iter().all(u8::is_ascii_digit)
        && frac.len() == 10
        && frac[0] == b'.'
        && frac[1..].iter().all(u8::is_ascii_digit)
}

/// Checks an AT line (`AT <server> <diff> <client> <location> <time>`) and returns its last
/// three fields.
fn at_fields(line: &[u8]) -> Option<[&[u8]; 3]> {
    let mut f = [&b""[..]; 6];
    if fields(line, &mut f) != 6 || f[0] != b"AT" || !is_diff(f[2]) {
        return None;
    }
    Some([f[3], f[4], f[5]])
}

fn is_error_reply(body: &[u8]) -> bool {
    body.starts_with(b"? ")
}

/// IAMAT: a 6-field AT line whose client, location and time are `echo` (the request's
/// `<client> <location> <time>`, single-spaced) exactly.
pub fn check_iamat(reply: &[u8], echo: &[u8]) -> Outcome {
    let body = line_body(reply);
    if is_error_reply(body) {
        return Outcome::ErrorReply;
    }
    let mut want = [&b""[..]; 3];
    match at_fields(body) {
        Some(got) if fields(echo, &mut want) == 3 && got == want => Outcome::Ok,
        _ => Outcome::Malformed,
    }
}

/// WHATSAT: an AT line for `client`, then JSON starting `{` and the reply ending `}\n\n`,
/// with a `status`: `OK` or `ZERO_RESULTS` is a success, any other is `Outcome::Places`.
pub fn check_whatsat(reply: &[u8], client: &[u8]) -> Outcome {
    if is_error_reply(reply) {
        return Outcome::ErrorReply;
    }
    let Some(nl) = reply.iter().position(|&b| b == b'\n') else {
        return Outcome::Malformed;
    };
    let (at, json) = (line_body(&reply[..=nl]), &reply[nl + 1..]);
    match at_fields(at) {
        Some([c, _, _]) if c == client && json.starts_with(b"{") && json.ends_with(b"}\n\n") => {
            match json_status(json).map(PlacesStatus::classify) {
                Some(Ok(())) => Outcome::Ok,
                Some(Err(s)) => Outcome::Places(s),
                None => Outcome::Malformed,
            }
        }
        _ => Outcome::Malformed,
    }
}

/// Raw: one line; with `expect`, it must start with it. `? ` (herd) and `-` (Redis) replies
/// are error replies.
pub fn check_raw(reply: &[u8], expect: Option<&[u8]>) -> Outcome {
    let body = line_body(reply);
    match expect {
        Some(prefix) if body.starts_with(prefix) => Outcome::Ok,
        _ if is_error_reply(body) || body.starts_with(b"-") => Outcome::ErrorReply,
        Some(_) => Outcome::Malformed,
        None => Outcome::Ok,
    }
}

/// splitmix64: tiny, fast and good enough to spread clients and locations; seeded, so a
/// run can be repeated.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// A location in micro-degrees; always within |lat| ≤ 90, |lng| ≤ 180.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub lat_micro: i64,
    pub lng_micro: i64,
}

impl Location {
    pub fn random(rng: &mut Rng) -> Self {
        Location {
            lat_micro: rng.below(180_000_001) as i64 - 90_000_000,
            lng_micro: rng.below(360_000_001) as i64 - 180_000_000,
        }
    }
}

/// The next timestamp for a client: the wall clock, but strictly after the client's last
/// one (so every IAMAT is newer than the previous one, even within one nanosecond).
pub fn next_time(last: &mut u64, wall_ns: u64) -> u64 {
    let t = wall_ns.max(last.saturating_add(1));
    *last = t;
    t
}

fn push_u64(out: &mut Vec<u8>, mut v: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.extend_from_slice(&tmp[i..]);
}

/// `v` in exactly `width` digits, zero-padded (v < 10^width).
fn push_padded(out: &mut Vec<u8>, mut v: u64, width: usize) {
    let at = out.len();
    out.resize(at + width, b'0');
    for slot in out[at..].iter_mut().rev() {
        *slot = b'0' + (v % 10) as u8;
        v /= 10;
    }
}

/// `+D.DDDDDD` / `-D.DDDDDD` (ISO 6709 needs the sign).
fn push_degrees(out: &mut Vec<u8>, micro: i64) {
    out.push(if micro < 0 { b'-' } else { b'+' });
    let m = micro.unsigned_abs();
    push_u64(out, m / 1_000_000);
    out.push(b'.');
    push_padded(out, m % 1_000_000, 6);
}

pub fn push_client(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(CLIENT_PREFIX);
    push_u64(out, n);
}

/// POSIX seconds with all nine fraction digits.
pub fn push_time(out: &mut Vec<u8>, ns: u64) {
    push_u64(out, ns / 1_000_000_000);
    out.push(b'.');
    push_padded(out, ns % 1_000_000_000, 9);
}

fn push_end(out: &mut Vec<u8>, crlf: bool) {
    out.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
}

/// Appends `IAMAT lg-<client> <location> <time>` and returns where
/// `<client> <location> <time>` (what the reply must echo) sits in `out`.
pub fn push_iamat(out: &mut Vec<u8>, client: u64, loc: Location, time_ns: u64, crlf: bool) -> Range<usize> {
    out.extend_from_slice(b"IAMAT ");
    let start = out.len();
    push_client(out, client);
    out.push(b' ');
    push_degrees(out, loc.lat_micro);
    push_degrees(out, loc.lng_micro);
    out.push(b' ');
    push_time(out, time_ns);
    let end = out.len();
    push_end(out, crlf);
    start..end
}

/// Appends `WHATSAT lg-<client> <radius> <bound>` and returns where the client id sits.
pub fn push_whatsat(out: &mut Vec<u8>, client: u64, radius: &str, bound: u32, crlf: bool) -> Range<usize> {
    out.extend_from_slice(b"WHATSAT ");
    let start = out.len();
    push_client(out, client);
    let end = out.len();
    out.push(b' ');
    out.extend_from_slice(radius.as_bytes());
    out.push(b' ');
    push_u64(out, u64::from(bound));
    push_end(out, crlf);
    start..end
}

pub fn push_raw(out: &mut Vec<u8>, line: &[u8], crlf: bool) {
    out.extend_from_slice(line);
    push_end(out, crlf);
}

/// A reply shortened and escaped for an error message.
pub fn show(reply: &[u8]) -> String {
    let body = line_body(reply);
    let cut = &body[..body.len().min(120)];
    let mut s = String::from_utf8_lossy(cut).escape_debug().to_string();
    if cut.len() < body.len() {
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &[u8] = b"AT Bailey +0.000012345 lg-7 +34.068930-118.445127 1700000000.000000001\n";
    const ECHO: &[u8] = b"lg-7 +34.068930-118.445127 1700000000.000000001";
    const BLOCK: &[u8] = b"AT Bailey +0.000012345 lg-7 +34.068930-118.445127 1700000000.000000001\n\
        {\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"OK\"\n}\n\n";

    /// Feeds `stream` to the framer in pieces of `step` bytes, as reads would deliver it, and
    /// returns the replies found.
    fn frame_all(stream: &[u8], framings: &[Framing], step: usize) -> Vec<Vec<u8>> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        let mut scanned = 0;
        for chunk in stream.chunks(step) {
            buf.extend_from_slice(chunk);
            while out.len() < framings.len() {
                match frame(&buf, framings[out.len()], scanned) {
                    Frame::Complete(n) => {
                        out.push(buf.drain(..n).collect());
                        scanned = 0;
                    }
                    Frame::Incomplete { scanned: s } => {
                        scanned = s;
                        break;
                    }
                    Frame::TooLong => panic!("too long"),
                }
            }
        }
        assert!(buf.is_empty(), "left over: {:?}", String::from_utf8_lossy(&buf));
        out
    }

    #[test]
    fn pipelined_lines_in_any_split() {
        let stream = [AT, b"? IAMAT x\n", AT].concat();
        for step in [1, 2, 3, 7, 64, 4096] {
            let got = frame_all(&stream, &[Framing::Line; 3], step);
            assert_eq!(
                got,
                vec![AT.to_vec(), b"? IAMAT x\n".to_vec(), AT.to_vec()],
                "step {step}"
            );
        }
    }

    #[test]
    fn whatsat_blocks_end_at_the_blank_line() {
        // A block, a `?` line for a WHATSAT, another block: the `?` reply is one line even
        // where a block was expected.
        let stream = [BLOCK, b"? WHATSAT nobody 10 5\n", BLOCK].concat();
        for step in [1, 2, 5, 13, 4096] {
            let got = frame_all(&stream, &[Framing::Block; 3], step);
            assert_eq!(got[0], BLOCK, "step {step}");
            assert_eq!(got[1], b"? WHATSAT nobody 10 5\n");
            assert_eq!(got[2], BLOCK);
        }
    }

    #[test]
    fn block_needs_three_bytes_to_decide() {
        assert_eq!(frame(b"A", Framing::Block, 0), Frame::Incomplete { scanned: 0 });
        assert_eq!(frame(b"AT", Framing::Block, 0), Frame::Incomplete { scanned: 0 });
        assert_eq!(frame(b"?\n", Framing::Block, 0), Frame::Complete(2));
        // An AT line alone is not a whole WHATSAT reply.
        assert!(matches!(frame(AT, Framing::Block, 0), Frame::Incomplete { .. }));
    }

    #[test]
    fn incremental_scan_resumes_across_a_split_terminator() {
        let (a, b) = BLOCK.split_at(BLOCK.len() - 1); // split between the two '\n'
        let Frame::Incomplete { scanned } = frame(a, Framing::Block, 0) else {
            panic!()
        };
        assert_eq!(
            frame(BLOCK, Framing::Block, scanned),
            Frame::Complete(BLOCK.len())
        );
        assert_eq!(b, b"\n");
    }

    #[test]
    fn crlf_replies_frame_and_validate() {
        assert_eq!(frame(b"+PONG\r\n+PONG\r\n", Framing::Line, 0), Frame::Complete(7));
        assert_eq!(line_body(b"+PONG\r\n"), b"+PONG");
        assert_eq!(check_raw(b"+PONG\r\n", Some(b"+PONG")), Outcome::Ok);
        let crlf_at = [&AT[..AT.len() - 1], b"\r\n"].concat();
        assert_eq!(check_iamat(&crlf_at, ECHO), Outcome::Ok);
    }

    #[test]
    fn too_long_is_reported() {
        let big = vec![b'x'; MAX_REPLY + 1];
        assert_eq!(frame(&big, Framing::Line, 0), Frame::TooLong);
    }

    #[test]
    fn good_at_replies() {
        assert_eq!(check_iamat(AT, ECHO), Outcome::Ok);
        let neg = b"AT Bona -12.000000001 lg-7 +34.068930-118.445127 1700000000.000000001\n";
        assert_eq!(check_iamat(neg, ECHO), Outcome::Ok);
        assert_eq!(check_whatsat(BLOCK, b"lg-7"), Outcome::Ok);
    }

    #[test]
    fn bad_at_replies() {
        let bad: &[&[u8]] = &[
            b"AT Bailey +0.000012345 lg-8 +34.068930-118.445127 1700000000.000000001\n", // client
            b"AT Bailey +0.000012345 lg-7 +34.068931-118.445127 1700000000.000000001\n", // location
            b"AT Bailey +0.000012345 lg-7 +34.068930-118.445127 1700000000.00000000\n",  // time
            b"AT Bailey 0.000012345 lg-7 +34.068930-118.445127 1700000000.000000001\n",  // unsigned
            b"AT Bailey +0.00001234 lg-7 +34.068930-118.445127 1700000000.000000001\n",  // 8 digits
            b"AT Bailey +.000012345 lg-7 +34.068930-118.445127 1700000000.000000001\n",  // no int
            b"AT Bailey +0.000012345 lg-7 +34.068930-118.445127\n",                      // 5 fields
            b"AT Bailey +0.000012345 lg-7 +34.068930-118.445127 1700000000.000000001 x\n", // 7
            b"at Bailey +0.000012345 lg-7 +34.068930-118.445127 1700000000.000000001\n",
            b"\n",
        ];
        for r in bad {
            assert_eq!(check_iamat(r, ECHO), Outcome::Malformed, "{}", show(r));
        }
        assert_eq!(check_iamat(b"? IAMAT lg-7 x y\n", ECHO), Outcome::ErrorReply);
    }

    /// A WHATSAT reply with this JSON after the AT line.
    fn whatsat_with(json: &str) -> Vec<u8> {
        [AT, json.as_bytes(), b"\n\n"].concat()
    }

    #[test]
    fn whatsat_status_decides_success() {
        let doc = |status: &str| {
            format!(
                "{{\n   \"html_attributions\" : [],\n   \"results\" : [],\n   \"status\" : \"{status}\",\n   \"error_message\" : \"no key\"\n}}"
            )
        };
        let cases = [
            ("OK", Outcome::Ok),
            ("ZERO_RESULTS", Outcome::Ok),
            ("REQUEST_DENIED", Outcome::Places(PlacesStatus::RequestDenied)),
            ("OVER_QUERY_LIMIT", Outcome::Places(PlacesStatus::OverQueryLimit)),
            ("INVALID_REQUEST", Outcome::Places(PlacesStatus::InvalidRequest)),
            ("UNKNOWN_ERROR", Outcome::Places(PlacesStatus::UnknownError)),
            ("NOT_FOUND", Outcome::Places(PlacesStatus::Other)),
            ("", Outcome::Places(PlacesStatus::Other)),
        ];
        for (status, want) in cases {
            assert_eq!(
                check_whatsat(&whatsat_with(&doc(status)), b"lg-7"),
                want,
                "{status}"
            );
        }
        // No status at all is not a Places answer.
        let none = "{\n   \"html_attributions\" : [],\n   \"results\" : []\n}";
        assert_eq!(check_whatsat(&whatsat_with(none), b"lg-7"), Outcome::Malformed);
    }

    #[test]
    fn the_top_level_status_is_the_one_read() {
        // Places carry `business_status`, and a name may spell "status" (escaped quotes):
        // neither is the answer's status, which follows `results`.
        let json = br#"{
   "html_attributions" : [],
   "results" : [
      {
         "business_status" : "CLOSED_PERMANENTLY",
         "name" : "The \"status\" : \"DENIED\" bar"
      }
   ],
   "status" : "OK"
}"#;
        assert_eq!(json_status(json), Some(&b"OK"[..]));
        // A passed-through (legacy) body may nest objects with keys of their own.
        let nested = br#"{ "results" : [ { "x" : { "status" : "INNER" } } ], "status" : "ZERO_RESULTS" }"#;
        assert_eq!(json_status(nested), Some(&b"ZERO_RESULTS"[..]));
        assert_eq!(json_status(br#"{"status":"OK"}"#), Some(&b"OK"[..]), "compact");
        assert_eq!(json_status(br#"{"status" : 3}"#), None, "not a string");
        assert_eq!(json_status(br#"{"status" : "OK}"#), None, "unterminated");
        assert_eq!(json_status(br#"{"business_status" : "OK"}"#), None);
    }

    #[test]
    fn bad_whatsat_replies() {
        assert_eq!(
            check_whatsat(b"? WHATSAT lg-7 10 5\n", b"lg-7"),
            Outcome::ErrorReply
        );
        assert_eq!(check_whatsat(BLOCK, b"lg-8"), Outcome::Malformed);
        let no_json = [AT, b"[]\n\n"].concat();
        assert_eq!(check_whatsat(&no_json, b"lg-7"), Outcome::Malformed);
        let not_closed = [AT, b"{\n   \"results\" : []\n\n"].concat();
        assert_eq!(check_whatsat(&not_closed, b"lg-7"), Outcome::Malformed);
        assert_eq!(check_whatsat(b"{}\n\n", b"lg-7"), Outcome::Malformed);
    }

    #[test]
    fn raw_replies() {
        assert_eq!(check_raw(b"+PONG\r\n", None), Outcome::Ok);
        assert_eq!(check_raw(b"+PONGS\n", Some(b"+PONG")), Outcome::Ok);
        assert_eq!(check_raw(b"+OK\r\n", Some(b"+PONG")), Outcome::Malformed);
        assert_eq!(
            check_raw(b"-ERR unknown\r\n", Some(b"+PONG")),
            Outcome::ErrorReply
        );
        assert_eq!(check_raw(b"? PING\n", None), Outcome::ErrorReply);
    }

    #[test]
    fn requests_are_well_formed() {
        let mut out = b"previous\n".to_vec();
        let loc = Location {
            lat_micro: 34_068_930,
            lng_micro: -118_445_127,
        };
        let r = push_iamat(&mut out, 7, loc, 1_700_000_000_000_000_001, false);
        assert_eq!(
            &out[9..],
            b"IAMAT lg-7 +34.068930-118.445127 1700000000.000000001\n"
        );
        assert_eq!(&out[r], ECHO);
        let mut out = Vec::new();
        let loc = Location {
            lat_micro: -5,
            lng_micro: 0,
        };
        push_iamat(&mut out, 0, loc, 12, true);
        assert_eq!(out, b"IAMAT lg-0 -0.000005+0.000000 0.000000012\r\n");
        let mut out = Vec::new();
        let r = push_whatsat(&mut out, 42, "10", 5, false);
        assert_eq!(out, b"WHATSAT lg-42 10 5\n");
        assert_eq!(&out[r], b"lg-42");
        let mut out = Vec::new();
        push_raw(&mut out, b"PING", true);
        assert_eq!(out, b"PING\r\n");
    }

    #[test]
    fn random_locations_are_in_range() {
        let mut rng = Rng::new(1);
        for _ in 0..10_000 {
            let l = Location::random(&mut rng);
            assert!(l.lat_micro.abs() <= 90_000_000 && l.lng_micro.abs() <= 180_000_000);
        }
        assert!((0..1000).all(|_| rng.below(7) < 7));
        assert_eq!(rng.below(0), 0);
    }

    #[test]
    fn timestamps_strictly_increase_per_client() {
        let mut last = 0;
        assert_eq!(next_time(&mut last, 100), 100);
        assert_eq!(next_time(&mut last, 100), 101); // same wall time: one nanosecond later
        assert_eq!(next_time(&mut last, 50), 102); // wall clock stepped back
        assert_eq!(next_time(&mut last, 200), 200);
    }
}
