//! The herd wire protocol (SPEC §2 and §3) as pure functions: bytes in, values out.
//!
//! Parsing validates every field exactly on its text, so range checks never depend on
//! floating-point rounding, and replies are built from the client's own bytes. Nothing here
//! does I/O or reads a clock: the caller passes the time in, which keeps this module
//! deterministic and testable byte for byte.

use std::ops::Range;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NANOS_PER_SEC: u64 = 1_000_000_000;
/// SPEC §2: "at most 12 integer digits" in a client time.
const MAX_TIME_INT_DIGITS: usize = 12;
// Timestamp::parse folds digits without overflow checks: these make sure it can.
const _: () = assert!(10u64.checked_pow(MAX_TIME_INT_DIGITS as u32).is_some());
const _: () = assert!(10u32.checked_pow(KEPT_FRACTION_DIGITS as u32).is_some());
/// Fraction digits a timestamp keeps; the rest are truncated.
const KEPT_FRACTION_DIGITS: usize = 9;
const MAX_LATITUDE: u64 = 90;
const MAX_LONGITUDE: u64 = 180;
const MAX_RADIUS_KM: u64 = 50;
/// Largest WHATSAT bound.
pub const MAX_BOUND: u8 = 20;
/// How many bytes of an over-long line are echoed back.
pub const OVERLONG_ECHO: usize = 256;

/// SPEC white space: space, \t, \n, \x0B (VT), \x0C (FF), \r.
/// (`u8::is_ascii_whitespace` lacks VT, so it cannot be used.)
pub fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0B | 0x0C | b'\r')
}

/// Split on runs of SPEC white space, ignoring leading/trailing.
pub fn fields(line: &[u8]) -> impl Iterator<Item = &[u8]> {
    line.split(|&b| is_space(b)).filter(|f| !f.is_empty())
}

/// The fields of `line` when there are exactly `N` of them.
fn exact_fields<const N: usize>(line: &[u8]) -> Option<[&[u8]; N]> {
    let mut it = fields(line);
    let mut out: [&[u8]; N] = [&[]; N];
    for slot in &mut out {
        *slot = it.next()?;
    }
    it.next().is_none().then_some(out)
}

fn digit(b: u8) -> Option<u8> {
    b.is_ascii_digit().then(|| b - b'0')
}

fn all_digits(s: &[u8]) -> bool {
    s.iter().all(u8::is_ascii_digit)
}

/// Unsigned decimal text `D+(.D+)?`, kept as text so that range checks are exact.
#[derive(Clone, Copy)]
struct Decimal<'a> {
    int: &'a [u8],
    /// Empty when there is no point (a point with no digits after it is rejected).
    frac: &'a [u8],
}

impl<'a> Decimal<'a> {
    fn parse(s: &'a [u8]) -> Option<Self> {
        let mut parts = s.splitn(2, |&b| b == b'.');
        let int = parts.next()?;
        let frac = parts.next();
        if int.is_empty() || !all_digits(int) || frac.is_some_and(<[u8]>::is_empty) {
            return None;
        }
        let frac = frac.unwrap_or_default();
        all_digits(frac).then_some(Decimal { int, frac })
    }

    /// Integer part as a number; saturates so that absurdly long inputs still compare as huge.
    fn int_saturating(&self) -> u64 {
        self.int
            .iter()
            .filter_map(|&b| digit(b))
            .fold(0u64, |acc, d| acc.saturating_mul(10).saturating_add(u64::from(d)))
    }

    fn is_zero(&self) -> bool {
        self.int.iter().chain(self.frac).all(|&b| b == b'0')
    }

    /// `self <= limit`, decided on the text: at the limit only a zero fraction fits.
    fn at_most(&self, limit: u64) -> bool {
        match self.int_saturating().cmp(&limit) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Equal => self.frac.iter().all(|&b| b == b'0'),
            std::cmp::Ordering::Greater => false,
        }
    }
}

/// Validated ASCII number text to f64; only for values sent upstream, never for checks.
fn text_to_f64(text: &[u8]) -> Option<f64> {
    fast_f64(text).or_else(|| std::str::from_utf8(text).ok()?.parse().ok())
}

/// Powers of ten that f64 holds exactly.
const POW10: [f64; 23] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18,
    1e19, 1e20, 1e21, 1e22,
];

/// Clinger's fast path for `[+-]D+(.D+)?`: with the digits as an integer below 2^53 and at
/// most 22 fraction digits, one division of two exact values is correctly rounded. Every
/// IAMAT carries two coordinates, and std's general parser cost a visible share of the
/// request; anything outside the fast path returns None and goes to that parser.
fn fast_f64(text: &[u8]) -> Option<f64> {
    let (negative, digits) = match text.split_first()? {
        (b'-', rest) => (true, rest),
        (b'+', rest) => (false, rest),
        _ => (false, text),
    };
    let mut mantissa: u64 = 0;
    let mut fraction: Option<usize> = None;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                mantissa = mantissa.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
                if let Some(f) = fraction.as_mut() {
                    *f += 1;
                }
            }
            b'.' if fraction.is_none() => fraction = Some(0),
            _ => return None,
        }
    }
    if mantissa > 1 << 53 {
        return None;
    }
    let value = mantissa as f64 / POW10.get(fraction.unwrap_or(0))?;
    Some(if negative { -value } else { value })
}

/// POSIX time, truncated to nanoseconds. Ord = chronological.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp {
    // Field order matters: the derived Ord compares seconds first.
    secs: u64,
    nanos: u32,
}

impl Timestamp {
    /// `D+(.D+)?`, at most 12 integer digits as written (leading zeros count), any number of
    /// fraction digits of which the first 9 are kept.
    pub fn parse(s: &[u8]) -> Option<Timestamp> {
        let dec = Decimal::parse(s)?;
        if dec.int.len() > MAX_TIME_INT_DIGITS {
            return None;
        }
        // `Decimal` holds ASCII digits only, and 12 digits fit a u64 (9 a u32), so the
        // arithmetic below cannot overflow.
        let secs = dec
            .int
            .iter()
            .fold(0u64, |acc, &b| acc * 10 + u64::from(b - b'0'));
        let mut nanos = 0u32;
        for i in 0..KEPT_FRACTION_DIGITS {
            nanos = nanos * 10 + u32::from(dec.frac.get(i).map_or(0, |&b| b - b'0'));
        }
        Some(Timestamp { secs, nanos })
    }

    /// None if negative or beyond what `u64` seconds can hold.
    #[cfg(test)]
    pub fn from_nanos(ns: i128) -> Option<Timestamp> {
        let ns = u128::try_from(ns).ok()?;
        let per_sec = u128::from(NANOS_PER_SEC);
        let secs = u64::try_from(ns / per_sec).ok()?;
        let nanos = u32::try_from(ns % per_sec).ok()?;
        Some(Timestamp { secs, nanos })
    }

    /// A clock set before the epoch reads as 0 rather than failing: diffs stay computable.
    pub fn from_system_time(t: SystemTime) -> Timestamp {
        t.duration_since(UNIX_EPOCH)
            .map(|d| Timestamp {
                secs: d.as_secs(),
                nanos: d.subsec_nanos(),
            })
            .unwrap_or(Timestamp { secs: 0, nanos: 0 })
    }

    /// `self + d`, saturating: a limit of ten years never wraps a clock reading.
    pub fn saturating_add(self, d: Duration) -> Timestamp {
        let nanos = self.nanos + d.subsec_nanos();
        let carry = u64::from(nanos >= NANOS_PER_SEC as u32);
        match self
            .secs
            .checked_add(d.as_secs())
            .and_then(|s| s.checked_add(carry))
        {
            Some(secs) => Timestamp {
                secs,
                nanos: nanos % NANOS_PER_SEC as u32,
            },
            None => Timestamp {
                secs: u64::MAX,
                nanos: NANOS_PER_SEC as u32 - 1,
            },
        }
    }

    /// `self - d`, or 0 (the epoch) if that would be before it.
    pub fn saturating_sub(self, d: Duration) -> Timestamp {
        let (mut secs, mut nanos) = (self.secs, self.nanos);
        if nanos < d.subsec_nanos() {
            let Some(s) = secs.checked_sub(1) else {
                return Timestamp { secs: 0, nanos: 0 };
            };
            secs = s;
            nanos += NANOS_PER_SEC as u32;
        }
        match secs.checked_sub(d.as_secs()) {
            Some(secs) => Timestamp {
                secs,
                nanos: nanos - d.subsec_nanos(),
            },
            None => Timestamp { secs: 0, nanos: 0 },
        }
    }

    #[cfg(test)]
    pub fn as_nanos(self) -> i128 {
        i128::from(self.secs) * i128::from(NANOS_PER_SEC) + i128::from(self.nanos)
    }
}

/// ISO 6709 decimal degrees; the values are only used for upstream queries.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Location {
    pub lat: f64,
    pub lng: f64,
}

impl Location {
    /// `[+-]D+(.D+)?[+-]D+(.D+)?` with |lat| <= 90 and |lng| <= 180, checked on the text.
    pub fn parse(s: &[u8]) -> Option<Location> {
        let (lat_text, lng_text) = Location::split_checked(s)?;
        Some(Location {
            lat: text_to_f64(lat_text)?,
            lng: text_to_f64(lng_text)?,
        })
    }

    /// What `parse` accepts, without the conversion: an IAMAT's location is only checked
    /// (and later sent on as text); the numbers are needed only for a WHATSAT query.
    pub fn is_valid(s: &[u8]) -> bool {
        Location::split_checked(s).is_some()
    }

    /// The signed latitude and longitude texts, if both are in range.
    fn split_checked(s: &[u8]) -> Option<(&[u8], &[u8])> {
        let is_sign = |b: &u8| matches!(b, b'+' | b'-');
        if !s.first().is_some_and(is_sign) {
            return None;
        }
        // The longitude starts at the second sign; the latitude's digits lie between.
        let lng_start = 1 + s.get(1..)?.iter().position(is_sign)?;
        let (lat_text, lng_text) = s.split_at_checked(lng_start)?;
        let lat = Decimal::parse(lat_text.get(1..)?)?;
        let lng = Decimal::parse(lng_text.get(1..)?)?;
        (lat.at_most(MAX_LATITUDE) && lng.at_most(MAX_LONGITUDE)).then_some((lat_text, lng_text))
    }
}

/// A WHATSAT radius, 0 < r <= 50 km. Metres are kept as exact decimal text because that
/// is what goes into the upstream URL.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Radius {
    metres: String,
}

impl Radius {
    pub fn parse(s: &[u8]) -> Option<Radius> {
        let dec = Decimal::parse(s)?;
        if dec.is_zero() || !dec.at_most(MAX_RADIUS_KM) {
            return None;
        }
        Some(Radius {
            metres: km_text_to_metres(dec),
        })
    }

    /// Radius in metres as canonical decimal text: "0.5" -> "500", "0.0001" -> "0.1".
    pub fn metres(&self) -> &str {
        &self.metres
    }
}

/// Multiply by 1000 by moving the decimal point, so no float artefact reaches the URL.
fn km_text_to_metres(dec: Decimal<'_>) -> String {
    let (moved, rest) = dec.frac.split_at(dec.frac.len().min(3));
    let padding = 3 - moved.len();
    let whole: Vec<u8> = dec
        .int
        .iter()
        .chain(moved)
        .copied()
        .chain(std::iter::repeat_n(b'0', padding))
        .skip_while(|&b| b == b'0')
        .collect();
    let rest_len = rest.iter().rposition(|&b| b != b'0').map_or(0, |p| p + 1);
    let rest = rest.get(..rest_len).unwrap_or_default();

    let mut out = String::with_capacity(whole.len() + rest.len() + 2);
    if whole.is_empty() {
        out.push('0');
    }
    out.extend(whole.iter().map(|&b| char::from(b)));
    if !rest.is_empty() {
        out.push('.');
        out.extend(rest.iter().map(|&b| char::from(b)));
    }
    out
}

/// `D+` with value 0..=20; leading zeros are fine, signs and points are not.
fn parse_bound(s: &[u8]) -> Option<u8> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u8, |acc, &b| {
        let v = acc.checked_mul(10)?.checked_add(digit(b)?)?;
        (v <= MAX_BOUND).then_some(v)
    })
}

#[derive(Clone, Debug, PartialEq)]
pub struct Iamat<'a> {
    pub client: &'a [u8],
    /// Checked by `Location::is_valid`.
    pub raw_location: &'a [u8],
    pub time: Timestamp,
    pub raw_time: &'a [u8],
}

#[derive(Clone, Debug, PartialEq)]
pub struct Whatsat<'a> {
    pub client: &'a [u8],
    pub radius: Radius,
    pub raw_radius: &'a [u8],
    pub bound: u8,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Request<'a> {
    Iamat(Iamat<'a>),
    Whatsat(Whatsat<'a>),
}

#[derive(Clone, Debug, PartialEq)]
pub enum Parsed<'a> {
    /// Empty or all white space: ignored, no reply.
    Blank,
    Request(Request<'a>),
    /// Answered with `write_invalid`.
    Invalid,
}

/// `line` is the message without its line terminator. Commands are case-sensitive, and AT
/// and HELLO are peer-port messages, so on the client port they are Invalid like any other
/// unknown command.
pub fn parse_client_line(line: &[u8]) -> Parsed<'_> {
    let Some(command) = fields(line).next() else {
        return Parsed::Blank;
    };
    let request = match command {
        b"IAMAT" => parse_iamat(line).map(Request::Iamat),
        b"WHATSAT" => parse_whatsat(line).map(Request::Whatsat),
        _ => None,
    };
    request.map_or(Parsed::Invalid, Parsed::Request)
}

fn parse_iamat(line: &[u8]) -> Option<Iamat<'_>> {
    let [_, client, raw_location, raw_time] = exact_fields(line)?;
    Location::is_valid(raw_location).then_some(())?;
    Some(Iamat {
        client,
        raw_location,
        time: Timestamp::parse(raw_time)?,
        raw_time,
    })
}

fn parse_whatsat(line: &[u8]) -> Option<Whatsat<'_>> {
    let [_, client, raw_radius, raw_bound] = exact_fields(line)?;
    Some(Whatsat {
        client,
        radius: Radius::parse(raw_radius)?,
        raw_radius,
        bound: parse_bound(raw_bound)?,
    })
}

/// Appends "? " + line + "\n"; the line is echoed byte for byte, blanks and non-UTF-8 kept.
pub fn write_invalid(line: &[u8], out: &mut Vec<u8>) {
    out.reserve(line.len() + 3);
    out.extend_from_slice(b"? ");
    out.extend_from_slice(line);
    out.push(b'\n');
}

/// The reply to an over-long line echoes only its first 256 bytes, keeping memory bounded.
pub fn write_overlong(prefix: &[u8], out: &mut Vec<u8>) {
    write_invalid(prefix.get(..OVERLONG_ECHO).unwrap_or(prefix), out);
}

/// Appends `now - client_time` as a signed decimal with exactly 9 fraction digits, computed
/// in integer nanoseconds so that no digit is lost to floating point.
pub fn write_diff(now: Timestamp, client_time: Timestamp, out: &mut Vec<u8>) {
    // Subtract the smaller from the larger as (seconds, nanoseconds) with a borrow: exact,
    // and without the 128-bit division or the `format!` this runs for every IAMAT.
    let (sign, big, small) = if now >= client_time {
        (b'+', now, client_time)
    } else {
        (b'-', client_time, now)
    };
    let (secs, nanos) = if big.nanos >= small.nanos {
        (big.secs - small.secs, big.nanos - small.nanos)
    } else {
        (
            big.secs - small.secs - 1,
            big.nanos + NANOS_PER_SEC as u32 - small.nanos,
        )
    };
    out.push(sign);
    write_u64(secs, out);
    out.push(b'.');
    let mut frac = [b'0'; KEPT_FRACTION_DIGITS];
    let mut n = nanos;
    for d in frac.iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    out.extend_from_slice(&frac);
}

/// Decimal digits of `n`, no padding.
fn write_u64(mut n: u64, out: &mut Vec<u8>) {
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
}

/// Appends "AT <server> <diff> <client> <raw_location> <raw_time>" without a newline, so the
/// same bytes serve as the stored record, the reply line and the propagated line. Returns
/// where the location landed in `out`, so WHATSAT can read it without parsing the line.
pub fn write_at_line(server: &str, now: Timestamp, req: &Iamat<'_>, out: &mut Vec<u8>) -> Range<usize> {
    out.extend_from_slice(b"AT ");
    out.extend_from_slice(server.as_bytes());
    out.push(b' ');
    write_diff(now, req.time, out);
    out.push(b' ');
    out.extend_from_slice(req.client);
    out.push(b' ');
    let location = out.len()..out.len() + req.raw_location.len();
    out.extend_from_slice(req.raw_location);
    out.push(b' ');
    out.extend_from_slice(req.raw_time);
    location
}

/// A record received from a neighbour.
#[derive(Clone, Debug, PartialEq)]
pub struct AtRecord<'a> {
    pub server: &'a [u8],
    pub diff: &'a [u8],
    pub client: &'a [u8],
    /// Checked by `Location::is_valid`.
    pub raw_location: &'a [u8],
    pub time: Timestamp,
    pub raw_time: &'a [u8],
}

impl AtRecord<'_> {
    /// SPEC §3: the record rebuilt from its six fields with single spaces (no newline), the
    /// form it is stored and forwarded in, so the blanks a neighbour sent never reach a
    /// client. For a line `write_at_line` made, this is the line itself. Returns where the
    /// location landed in `out`, as `write_at_line` does.
    pub fn write_canonical(&self, out: &mut Vec<u8>) -> Range<usize> {
        out.extend_from_slice(b"AT ");
        for part in [self.server, self.diff, self.client] {
            out.extend_from_slice(part);
            out.push(b' ');
        }
        let location = out.len()..out.len() + self.raw_location.len();
        out.extend_from_slice(self.raw_location);
        out.push(b' ');
        out.extend_from_slice(self.raw_time);
        location
    }
}

/// `[+-]D+.DDDDDDDDD`: the shape `write_diff` produces.
fn is_diff(s: &[u8]) -> bool {
    let Some((sign, rest)) = s.split_first() else {
        return false;
    };
    matches!(sign, b'+' | b'-') && Decimal::parse(rest).is_some_and(|d| d.frac.len() == KEPT_FRACTION_DIGITS)
}

/// "AT <server> <diff> <client> <location> <time>", exactly 6 fields.
pub fn parse_at_record(line: &[u8]) -> Option<AtRecord<'_>> {
    let [command, server, diff, client, raw_location, raw_time] = exact_fields(line)?;
    if command != b"AT" || !is_diff(diff) {
        return None;
    }
    Location::is_valid(raw_location).then_some(())?;
    Some(AtRecord {
        server,
        diff,
        client,
        raw_location,
        time: Timestamp::parse(raw_time)?,
        raw_time,
    })
}

/// "HELLO <name>", exactly two fields.
pub fn parse_hello(line: &[u8]) -> Option<&[u8]> {
    match exact_fields(line)? {
        [b"HELLO", name] => Some(name),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One `#[test]` per row, so every case is named and fails on its own.
    macro_rules! cases {
        ($check:ident: $($name:ident($($arg:expr),* $(,)?);)*) => {
            $(#[test] fn $name() { $check($($arg),*); })*
        };
    }

    fn ts(secs: u64, nanos: u32) -> Timestamp {
        Timestamp { secs, nanos }
    }

    fn time_of(text: &str) -> Timestamp {
        Timestamp::parse(text.as_bytes()).expect(text)
    }

    mod white_space {
        use super::*;

        fn space(b: u8, expected: bool) {
            assert_eq!(is_space(b), expected, "byte {b:#04x}");
        }

        cases! { space:
            space_is_space(b' ', true);
            tab_is_space(b'\t', true);
            lf_is_space(b'\n', true);
            vt_is_space(0x0B, true);
            ff_is_space(0x0C, true);
            cr_is_space(b'\r', true);
            letter_is_not_space(b'a', false);
            nul_is_not_space(0x00, false);
            nel_is_not_space(0x85, false);
            nbsp_is_not_space(0xA0, false);
        }

        #[test]
        fn every_byte_against_the_spec_list() {
            for b in 0..=u8::MAX {
                // SPEC's list, stated another way: ASCII white space plus vertical tab.
                let spec = b.is_ascii_whitespace() || b == 0x0B;
                assert_eq!(is_space(b), spec, "byte {b:#04x}");
            }
        }

        fn split(line: &[u8], expected: &[&[u8]]) {
            assert_eq!(fields(line).collect::<Vec<_>>(), expected);
        }

        cases! { split:
            fields_of_empty_line(b"", &[]);
            fields_of_blank_line(b" \t\r\n\x0B\x0C", &[]);
            fields_skip_runs_and_ends(b" a\t\x0Bb  \x0Cc\r\n", &[b"a", b"b", b"c"]);
            fields_keep_non_utf8(b"\xff \xfe\x80", &[b"\xff", b"\xfe\x80"]);
        }
    }

    mod time {
        use super::*;

        fn time(text: &[u8], expected: Option<(u64, u32)>) {
            let expected = expected.map(|(s, n)| ts(s, n));
            assert_eq!(Timestamp::parse(text), expected);
        }

        cases! { time:
            integer_seconds(b"1621464827", Some((1621464827, 0)));
            zero(b"0", Some((0, 0)));
            one_fraction_digit(b"1.5", Some((1, 500_000_000)));
            nine_fraction_digits(b"1621464827.959498503", Some((1621464827, 959_498_503)));
            twelve_fraction_digits_truncated(b"1.123456789999", Some((1, 123_456_789)));
            many_fraction_digits_truncated(b"1.0000000009999999999999999", Some((1, 0)));
            twelve_integer_digits(b"999999999999", Some((999_999_999_999, 0)));
            twelve_digits_with_leading_zeros(b"000000000001", Some((1, 0)));
            thirteen_integer_digits(b"1000000000000", None);
            thirteen_digits_leading_zero_count(b"0000000000001", None);
            trailing_point(b"1.", None);
            leading_point(b".5", None);
            lone_point(b".", None);
            empty(b"", None);
            two_points(b"1.2.3", None);
            minus_sign(b"-1", None);
            plus_sign(b"+1", None);
            exponent_lower(b"1e5", None);
            exponent_upper(b"1E5", None);
            inf(b"inf", None);
            nan(b"nan", None);
            infinity(b"infinity", None);
            hex(b"0x10", None);
            inner_space(b"1 2", None);
            non_utf8(b"1\xff", None);
        }

        #[test]
        fn truncated_times_compare_equal() {
            assert_eq!(time_of("1.1234567891"), time_of("1.1234567899"));
            assert_eq!(time_of("1.123456789"), time_of("1.1234567899"));
        }

        #[test]
        fn ordering_is_chronological() {
            assert!(time_of("1.000000001") > time_of("1"));
            assert!(time_of("2") > time_of("1.999999999"));
            assert!(time_of("10") > time_of("9.9"));
            assert!(time_of("0.5") < time_of("0.50000001"));
            assert!(time_of("999999999999") > time_of("1621464827.959498503"));
        }

        #[test]
        fn nanos_round_trip() {
            let t = time_of("1621464827.959498503");
            assert_eq!(t.as_nanos(), 1_621_464_827_959_498_503);
            assert_eq!(Timestamp::from_nanos(t.as_nanos()), Some(t));
            assert_eq!(Timestamp::from_nanos(1_500_000_000), Some(time_of("1.5")));
            assert_eq!(Timestamp::from_nanos(0), Some(ts(0, 0)));
        }

        #[test]
        fn from_nanos_rejects_negative_and_too_large() {
            assert_eq!(Timestamp::from_nanos(-1), None);
            let too_large = (i128::from(u64::MAX) + 1) * 1_000_000_000;
            assert_eq!(Timestamp::from_nanos(too_large), None);
        }

        #[test]
        fn from_system_time() {
            use std::time::Duration;
            let after = UNIX_EPOCH + Duration::new(1, 500_000_000);
            assert_eq!(Timestamp::from_system_time(after), time_of("1.5"));
            let before = UNIX_EPOCH - Duration::from_secs(1);
            assert_eq!(Timestamp::from_system_time(before), ts(0, 0));
        }
    }

    mod location {
        use super::*;

        fn location(text: &[u8], expected: Option<(f64, f64)>) {
            let expected = expected.map(|(lat, lng)| Location { lat, lng });
            assert_eq!(Location::parse(text), expected);
            assert_eq!(Location::is_valid(text), expected.is_some());
        }

        cases! { location:
            spec_example(b"+34.068930-118.445127", Some((34.068930, -118.445127)));
            integer_degrees(b"+12-118", Some((12.0, -118.0)));
            negative_latitude_positive_longitude(b"-33.8688+151.2093", Some((-33.8688, 151.2093)));
            zeros(b"+0+0", Some((0.0, 0.0)));
            negative_zeros(b"-0-0.0", Some((-0.0, -0.0)));
            latitude_90(b"+90+0", Some((90.0, 0.0)));
            latitude_minus_90(b"-90+0", Some((-90.0, 0.0)));
            latitude_90_point_0(b"+90.0+0", Some((90.0, 0.0)));
            latitude_90_point_000(b"+90.000+0", Some((90.0, 0.0)));
            latitude_0090(b"+0090+0", Some((90.0, 0.0)));
            latitude_many_leading_zeros(b"-00000000000000000000000000000090+0", Some((-90.0, 0.0)));
            latitude_just_above_90(b"+90.000000001+0", None);
            latitude_just_above_90_beyond_f64(b"+90.00000000000000000000001+0", None);
            latitude_minus_just_above_90(b"-90.0000000001+0", None);
            latitude_91(b"+91+0", None);
            latitude_huge(b"+99999999999999999999999999999+0", None);
            longitude_180(b"+0+180", Some((0.0, 180.0)));
            longitude_minus_180(b"+0-180", Some((0.0, -180.0)));
            longitude_180_point_0(b"+0-180.0", Some((0.0, -180.0)));
            longitude_180_point_1(b"+0+180.1", None);
            longitude_just_above_180(b"+0-180.000000000001", None);
            longitude_181(b"+0+181", None);
            missing_latitude_sign(b"34.1-118", None);
            missing_longitude_sign(b"+34.1118", None);
            double_latitude_sign(b"++34-118", None);
            double_longitude_sign(b"+34--118", None);
            third_part(b"+34-118+5", None);
            empty(b"", None);
            sign_only(b"+", None);
            empty_latitude(b"+-118", None);
            empty_longitude(b"+34-", None);
            empty_latitude_fraction(b"+34.-118", None);
            empty_latitude_integer(b"+.5-118", None);
            empty_longitude_fraction(b"+34-118.", None);
            empty_longitude_integer(b"+34-.5", None);
            exponent_lower(b"+1e1-118", None);
            exponent_upper(b"+34-1E2", None);
            inf(b"+inf-118", None);
            nan(b"+nan+0", None);
            infinity(b"+34-infinity", None);
            comma_separator(b"+34,5-118", None);
            non_utf8(b"+34\xff-118", None);
        }
    }

    mod radius {
        use super::*;

        fn radius(text: &[u8], expected_metres: Option<&str>) {
            let parsed = Radius::parse(text);
            assert_eq!(parsed.as_ref().map(Radius::metres), expected_metres);
        }

        cases! { radius:
            ten(b"10", Some("10000"));
            half(b"0.5", Some("500"));
            tenth_of_a_metre(b"0.0001", Some("0.1"));
            fraction_beyond_metres(b"12.3456", Some("12345.6"));
            leading_zeros(b"007", Some("7000"));
            one_metre(b"0.001", Some("1"));
            trailing_zeros_dropped(b"0.00100", Some("1"));
            trailing_zeros_after_metres_dropped(b"1.23450", Some("1234.5"));
            fifty(b"50", Some("50000"));
            fifty_point_0(b"50.0", Some("50000"));
            fifty_plus_a_bit(b"50.0001", None);
            fifty_one(b"51", None);
            huge(b"99999999999999999999999999", None);
            zero(b"0", None);
            zero_point_0(b"0.0", None);
            zeros(b"000.000", None);
            tiny(b"0.000000000000000000001", Some("0.000000000000000001"));
            negative(b"-5", None);
            plus_sign(b"+5", None);
            leading_point(b".5", None);
            trailing_point(b"5.", None);
            exponent(b"1e1", None);
            inf(b"inf", None);
            nan(b"nan", None);
            empty(b"", None);
        }
    }

    mod client_line {
        use super::*;

        const SPEC_IAMAT: &[u8] = b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";

        fn blank(line: &[u8]) {
            assert_eq!(parse_client_line(line), Parsed::Blank);
        }

        cases! { blank:
            empty_line(b"");
            spaces_only(b"   ");
            mixed_blanks(b" \t\r\x0B\x0C ");
        }

        fn invalid(line: &[u8]) {
            assert_eq!(parse_client_line(line), Parsed::Invalid);
        }

        cases! { invalid:
            iamat_one_field(b"IAMAT");
            iamat_two_fields(b"IAMAT kiwi");
            iamat_three_fields(b"IAMAT kiwi +1+1");
            iamat_five_fields(b"IAMAT kiwi +1+1 5 extra");
            whatsat_two_fields(b"WHATSAT kiwi");
            whatsat_three_fields(b"WHATSAT kiwi 10");
            whatsat_five_fields(b"WHATSAT kiwi 10 5 6");
            lower_case_iamat(b"iamat kiwi +1+1 5");
            mixed_case_whatsat(b"Whatsat kiwi 10 5");
            lower_case_whatsat(b"whatsat kiwi 10 5");
            at_on_client_port(b"AT Bailey +0.263873386 kiwi +1+1 5");
            hello_on_client_port(b"HELLO Bailey");
            unknown_command(b"FOO a b c");
            iamat_bad_location(b"IAMAT kiwi +91+0 5");
            iamat_bad_time(b"IAMAT kiwi +1+1 1e5");
            iamat_non_utf8_in_location(b"IAMAT kiwi +1\xff+1 5");
            iamat_non_utf8_in_time(b"IAMAT kiwi +1+1 5\xff");
            iamat_fields_swapped(b"IAMAT kiwi 5 +1+1");
            whatsat_non_utf8_in_radius(b"WHATSAT kiwi 1\xff 5");
            whatsat_radius_zero(b"WHATSAT kiwi 0 5");
            whatsat_radius_too_big(b"WHATSAT kiwi 50.0001 5");
            command_glued_to_field(b"IAMATkiwi +1+1 5");
        }

        fn iamat(line: &[u8], client: &[u8], raw_location: &[u8], raw_time: &[u8]) {
            let Parsed::Request(Request::Iamat(req)) = parse_client_line(line) else {
                panic!("not an IAMAT: {:?}", parse_client_line(line));
            };
            assert_eq!(req.client, client);
            assert_eq!(req.raw_location, raw_location);
            assert_eq!(req.raw_time, raw_time);
            assert!(Location::is_valid(raw_location));
            assert_eq!(Some(req.time), Timestamp::parse(raw_time));
        }

        cases! { iamat:
            spec_example(SPEC_IAMAT, b"kiwi.cs.ucla.edu", b"+34.068930-118.445127", b"1621464827.959498503");
            tabs_between_fields(b"IAMAT\tkiwi\t\t+1+1\t5", b"kiwi", b"+1+1", b"5");
            vertical_tab_and_form_feed(b"IAMAT\x0Bkiwi\x0C+1+1\x0B\x0C5", b"kiwi", b"+1+1", b"5");
            carriage_returns(b"IAMAT\r\nkiwi\r+1+1\r\n5\r", b"kiwi", b"+1+1", b"5");
            leading_and_trailing_blanks(b"  \tIAMAT kiwi +1+1 5 \t ", b"kiwi", b"+1+1", b"5");
            non_utf8_client(b"IAMAT \xff\xfe\x80 +1+1 5", b"\xff\xfe\x80", b"+1+1", b"5");
            raw_fields_kept(b"IAMAT k +0089.10-000.0 000000000005.10", b"k", b"+0089.10-000.0", b"000000000005.10");
            client_named_like_command(b"IAMAT IAMAT +1+1 5", b"IAMAT", b"+1+1", b"5");
        }

        #[test]
        fn iamat_values() {
            let Parsed::Request(Request::Iamat(req)) = parse_client_line(SPEC_IAMAT) else {
                panic!("not an IAMAT");
            };
            assert_eq!(
                Location::parse(req.raw_location),
                Some(Location {
                    lat: 34.068930,
                    lng: -118.445127
                })
            );
            assert_eq!(req.time, ts(1_621_464_827, 959_498_503));
        }

        fn whatsat(line: &[u8], expected: Option<(&[u8], &str, u8)>) {
            let got = match parse_client_line(line) {
                Parsed::Request(Request::Whatsat(w)) => {
                    Some((w.client, w.radius.metres().to_owned(), w.bound))
                }
                Parsed::Invalid => None,
                other => panic!("unexpected {other:?}"),
            };
            let expected = expected.map(|(c, m, b)| (c, m.to_owned(), b));
            assert_eq!(got, expected);
        }

        cases! { whatsat:
            whatsat_spec_example(b"WHATSAT kiwi.cs.ucla.edu 10 5", Some((b"kiwi.cs.ucla.edu", "10000", 5)));
            whatsat_tabs(b"\tWHATSAT\tkiwi\x0B0.5\x0C3\r", Some((b"kiwi", "500", 3)));
            whatsat_non_utf8_client(b"WHATSAT \xc3\x28 1 1", Some((b"\xc3\x28", "1000", 1)));
            whatsat_radius_fifty(b"WHATSAT kiwi 50 1", Some((b"kiwi", "50000", 1)));
            whatsat_radius_fifty_point_0(b"WHATSAT kiwi 50.0 1", Some((b"kiwi", "50000", 1)));
            whatsat_radius_one_metre(b"WHATSAT kiwi 0.001 1", Some((b"kiwi", "1", 1)));
            whatsat_radius_zero_point_0(b"WHATSAT kiwi 0.0 1", None);
            bound_0(b"WHATSAT kiwi 10 0", Some((b"kiwi", "10000", 0)));
            bound_20(b"WHATSAT kiwi 10 20", Some((b"kiwi", "10000", 20)));
            bound_leading_zero(b"WHATSAT kiwi 10 05", Some((b"kiwi", "10000", 5)));
            bound_many_leading_zeros(b"WHATSAT kiwi 10 0000000000000000000000020", Some((b"kiwi", "10000", 20)));
            bound_21(b"WHATSAT kiwi 10 21", None);
            bound_overflowing_u8(b"WHATSAT kiwi 10 256", None);
            bound_huge(b"WHATSAT kiwi 10 99999999999999999999999", None);
            bound_minus_1(b"WHATSAT kiwi 10 -1", None);
            bound_plus_5(b"WHATSAT kiwi 10 +5", None);
            bound_1_point_0(b"WHATSAT kiwi 10 1.0", None);
            bound_exponent(b"WHATSAT kiwi 10 1e1", None);
            bound_non_utf8(b"WHATSAT kiwi 10 \xff", None);
        }

        #[test]
        fn whatsat_raw_radius_kept() {
            let Parsed::Request(Request::Whatsat(w)) = parse_client_line(b"WHATSAT k 010.50 2") else {
                panic!("not a WHATSAT");
            };
            assert_eq!(w.raw_radius, b"010.50");
            assert_eq!(w.radius.metres(), "10500");
        }
    }

    mod diff {
        use super::*;

        fn diff(now: &str, client: &str, expected: &str) {
            let mut out = Vec::new();
            write_diff(time_of(now), time_of(client), &mut out);
            assert_eq!(String::from_utf8_lossy(&out), expected);
        }

        cases! { diff:
            spec_example_past("1621464828.223371889", "1621464827.959498503", "+0.263873386");
            future_client("100", "112.000000001", "-12.000000001");
            zero("1621464827.959498503", "1621464827.959498503", "+0.000000000");
            zero_at_epoch("0", "0", "+0.000000000");
            sub_second_negative("10", "10.5", "-0.500000000");
            sub_second_positive("10.5", "10", "+0.500000000");
            one_nanosecond_negative("5", "5.000000001", "-0.000000001");
            large_positive("79460001.123456789", "1", "+79460000.123456789");
            twelve_digit_future_client("1700000000", "999999999999.999999999", "-998299999999.999999999");
            truncated_client_time("2", "1.9999999999", "+0.000000001");
        }

        #[test]
        fn diff_appends() {
            let mut out = b"x".to_vec();
            write_diff(time_of("1"), time_of("0"), &mut out);
            assert_eq!(out, b"x+1.000000000");
        }
    }

    mod replies {
        use super::*;

        fn at_line(line: &[u8], now: &str, expected: &[u8]) {
            let Parsed::Request(Request::Iamat(req)) = parse_client_line(line) else {
                panic!("not an IAMAT");
            };
            let mut out = b"old".to_vec();
            write_at_line("Bailey", time_of(now), &req, &mut out);
            assert_eq!(String::from_utf8_lossy(&out), String::from_utf8_lossy(expected));
            assert_eq!(out, expected);
        }

        cases! { at_line:
            at_line_spec_example(
                b"IAMAT kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
                "1621464828.223371889",
                b"oldAT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503",
            );
            at_line_keeps_raw_bytes(
                b"\tIAMAT  \xffk\t+0090.0-000180 000000000001.50000000000\r",
                "2",
                b"oldAT Bailey +0.500000000 \xffk +0090.0-000180 000000000001.50000000000",
            );
            at_line_future_client(
                b"IAMAT c +1+1 999999999999.5",
                "1700000000",
                b"oldAT Bailey -998299999999.500000000 c +1+1 999999999999.5",
            );
        }

        fn invalid_reply(line: &[u8], expected: &[u8]) {
            let mut out = b"old".to_vec();
            write_invalid(line, &mut out);
            assert_eq!(out, expected);
        }

        cases! { invalid_reply:
            invalid_plain(b"FOO", b"old? FOO\n");
            invalid_keeps_blanks(b"  IAMAT \t x\x0B \r", b"old?   IAMAT \t x\x0B \r\n");
            invalid_keeps_non_utf8(b"\xff\xfe bad", b"old? \xff\xfe bad\n");
            invalid_empty(b"", b"old? \n");
        }

        #[test]
        fn overlong_echoes_first_256_bytes() {
            let line: Vec<u8> = (0..300u16).map(|i| b'a' + (i % 26) as u8).collect();
            let mut out = Vec::new();
            write_overlong(&line, &mut out);
            let mut expected = b"? ".to_vec();
            expected.extend_from_slice(&line[..256]);
            expected.push(b'\n');
            assert_eq!(out, expected);
        }

        #[test]
        fn overlong_with_short_prefix_echoes_all() {
            let mut out = Vec::new();
            write_overlong(b" abc ", &mut out);
            assert_eq!(out, b"?  abc \n");
        }
    }

    mod peer {
        use super::*;

        const RECORD: &[u8] =
            b"AT Bailey +0.263873386 kiwi.cs.ucla.edu +34.068930-118.445127 1621464827.959498503";

        #[test]
        fn record_spec_example() {
            let rec = parse_at_record(RECORD).expect("valid record");
            assert_eq!(
                rec,
                AtRecord {
                    server: b"Bailey",
                    diff: b"+0.263873386",
                    client: b"kiwi.cs.ucla.edu",
                    raw_location: b"+34.068930-118.445127",
                    time: ts(1_621_464_827, 959_498_503),
                    raw_time: b"1621464827.959498503",
                }
            );
        }

        #[test]
        fn canonical_form_has_single_spaces_and_no_stray_blanks() {
            let line = b"\tAT  Bailey\x0B+0.263873386 \t kiwi.cs.ucla.edu\x0C+34.068930-118.445127   1621464827.959498503\r ";
            let mut out = Vec::new();
            parse_at_record(line)
                .expect("valid record")
                .write_canonical(&mut out);
            assert_eq!(out, RECORD);
        }

        #[test]
        fn canonical_form_of_a_canonical_record_is_itself() {
            let mut out = Vec::new();
            parse_at_record(RECORD)
                .expect("valid record")
                .write_canonical(&mut out);
            assert_eq!(out, RECORD);
        }

        #[test]
        fn record_round_trips_write_at_line() {
            let Parsed::Request(Request::Iamat(req)) =
                parse_client_line(b"IAMAT \xffc -90+180 000000000000.1234567891")
            else {
                panic!("not an IAMAT");
            };
            let mut line = Vec::new();
            let loc = write_at_line("Jaquez", time_of("1"), &req, &mut line);
            let rec = parse_at_record(&line).expect("valid record");
            assert_eq!(rec.server, b"Jaquez");
            assert_eq!(rec.client, req.client);
            assert_eq!(rec.raw_location, req.raw_location);
            assert_eq!(rec.time, req.time);
            let mut again = Vec::new();
            let at = rec.write_canonical(&mut again);
            assert_eq!(again, line, "an AT line we wrote is already canonical");
            assert_eq!(at, loc, "both report the location at the same place");
            assert_eq!(&line[loc], req.raw_location);
        }

        fn record(line: &[u8], valid: bool) {
            assert_eq!(
                parse_at_record(line).is_some(),
                valid,
                "{}",
                String::from_utf8_lossy(line)
            );
        }

        cases! { record:
            record_blank_separators(b"\tAT\x0BBailey\x0C-12.000000001\r k +1+1 5\r", true);
            record_non_utf8_names(b"AT B\xff -0.000000001 \xfek +1+1 5", true);
            record_large_diff(b"AT B +79460000.123456789 k +1+1 5", true);
            record_five_fields(b"AT Bailey +0.263873386 kiwi +1+1", false);
            record_seven_fields(b"AT Bailey +0.263873386 kiwi +1+1 5 x", false);
            record_empty(b"", false);
            record_lower_case(b"at Bailey +0.263873386 kiwi +1+1 5", false);
            record_hello(b"HELLO Bailey", false);
            record_iamat(b"IAMAT kiwi +1+1 5", false);
            record_unsigned_diff(b"AT Bailey 0.263873386 kiwi +1+1 5", false);
            record_diff_eight_fraction_digits(b"AT Bailey +0.26387338 kiwi +1+1 5", false);
            record_diff_ten_fraction_digits(b"AT Bailey +0.2638733860 kiwi +1+1 5", false);
            record_diff_no_fraction(b"AT Bailey +1 kiwi +1+1 5", false);
            record_diff_no_integer(b"AT Bailey +.263873386 kiwi +1+1 5", false);
            record_diff_double_sign(b"AT Bailey +-0.263873386 kiwi +1+1 5", false);
            record_diff_exponent(b"AT Bailey +1e1.000000000 kiwi +1+1 5", false);
            record_bad_location(b"AT Bailey +0.263873386 kiwi +91+1 5", false);
            record_bad_time(b"AT Bailey +0.263873386 kiwi +1+1 1000000000000", false);
            record_time_fields_swapped(b"AT Bailey +0.263873386 kiwi 5 +1+1", false);
        }

        fn hello(line: &[u8], expected: Option<&[u8]>) {
            assert_eq!(parse_hello(line), expected);
        }

        cases! { hello:
            hello_name(b"HELLO Bailey", Some(b"Bailey"));
            hello_blanks(b" \tHELLO\x0BBailey \r", Some(b"Bailey"));
            hello_non_utf8_name(b"HELLO \xff", Some(b"\xff"));
            hello_without_name(b"HELLO", None);
            hello_three_fields(b"HELLO Bailey Bona", None);
            hello_lower_case(b"hello Bailey", None);
            hello_glued(b"HELLOBailey", None);
            hello_empty(b"", None);
            hello_record(RECORD, None);
        }
    }
}

#[cfg(test)]
mod timestamp_arithmetic_tests {
    use super::Timestamp;
    use std::time::Duration;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s.as_bytes()).unwrap_or_else(|| panic!("bad time {s}"))
    }

    #[test]
    fn adding_and_subtracting_carry_across_the_second() {
        let d = Duration::new(1, 600_000_000);
        assert_eq!(ts("10.5").saturating_add(d), ts("12.1"));
        assert_eq!(ts("12.1").saturating_sub(d), ts("10.5"));
        assert_eq!(
            ts("10.000000001").saturating_sub(Duration::from_nanos(2)),
            ts("9.999999999")
        );
    }

    #[test]
    fn arithmetic_saturates_at_the_epoch_and_at_the_end_of_time() {
        assert_eq!(ts("5").saturating_sub(Duration::from_secs(6)), ts("0"));
        assert_eq!(ts("0.5").saturating_sub(Duration::from_millis(600)), ts("0"));
        let end = ts("1").saturating_add(Duration::new(u64::MAX, 999_999_999));
        assert!(end > ts("999999999999.999999999"));
        assert_eq!(end.saturating_add(Duration::from_secs(1)), end);
    }
}

/// A seeded xorshift64 for the randomised comparisons below.
#[cfg(test)]
fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
    move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    }
}

#[cfg(test)]
mod fast_f64_tests {
    use super::{fast_f64, text_to_f64, xorshift};

    #[test]
    fn fast_path_agrees_with_std_bit_for_bit() {
        let mut next = xorshift(0x9e37_79b9_7f4a_7c15);
        let mut checked = 0;
        for _ in 0..200_000 {
            let int = next() % 181;
            let frac_digits = (next() % 16) as usize;
            let frac = next() % 10u64.pow(frac_digits as u32).max(1);
            let sign = if next() % 2 == 0 { "+" } else { "-" };
            let text = if frac_digits == 0 {
                format!("{sign}{int}")
            } else {
                format!("{sign}{int}.{frac:0frac_digits$}")
            };
            let std: f64 = text.parse().unwrap_or(f64::NAN);
            if let Some(fast) = fast_f64(text.as_bytes()) {
                assert_eq!(fast.to_bits(), std.to_bits(), "{text}");
                checked += 1;
            }
            assert_eq!(
                text_to_f64(text.as_bytes()).map(f64::to_bits),
                Some(std.to_bits()),
                "{text}"
            );
        }
        assert!(
            checked > 150_000,
            "the fast path should cover typical coordinates: {checked}"
        );
    }

    #[test]
    fn outside_the_fast_path_falls_back() {
        assert_eq!(fast_f64(b"1.00000000000000000000001"), None);
        assert_eq!(fast_f64(b"12345678901234567890"), None);
        assert_eq!(text_to_f64(b"12345678901234567890"), Some(12345678901234567890.0));
        assert_eq!(fast_f64(b"1.2.3"), None);
        assert_eq!(fast_f64(b""), None);
        assert_eq!(fast_f64(b"-0"), Some(-0.0));
    }
}

#[cfg(test)]
mod diff_tests {
    use super::{Timestamp, write_diff, xorshift};

    /// The straightforward formula the fast version replaced.
    fn reference(now: Timestamp, t: Timestamp) -> String {
        let d = now.as_nanos() - t.as_nanos();
        let m = d.unsigned_abs();
        format!(
            "{}{}.{:09}",
            if d < 0 { '-' } else { '+' },
            m / 1_000_000_000,
            m % 1_000_000_000
        )
    }

    #[test]
    fn agrees_with_the_i128_formula_including_borrows_and_extremes() {
        let mut next = xorshift(0x2545_f491_4f6c_dd1d);
        let mut cases = vec![
            (Timestamp { secs: 0, nanos: 0 }, Timestamp { secs: 0, nanos: 0 }),
            (
                Timestamp { secs: 5, nanos: 0 },
                Timestamp {
                    secs: 4,
                    nanos: 999_999_999,
                },
            ),
            (
                Timestamp {
                    secs: 4,
                    nanos: 999_999_999,
                },
                Timestamp { secs: 5, nanos: 0 },
            ),
            (
                Timestamp {
                    secs: u64::MAX,
                    nanos: 999_999_999,
                },
                Timestamp { secs: 0, nanos: 0 },
            ),
            (
                Timestamp { secs: 0, nanos: 0 },
                Timestamp {
                    secs: u64::MAX,
                    nanos: 999_999_999,
                },
            ),
        ];
        for _ in 0..100_000 {
            let a = Timestamp {
                secs: next() % 2_000_000_000_000,
                nanos: (next() % 1_000_000_000) as u32,
            };
            let b = Timestamp {
                secs: next() % 2_000_000_000_000,
                nanos: (next() % 1_000_000_000) as u32,
            };
            cases.push((a, b));
        }
        for (now, t) in cases {
            let mut out = Vec::new();
            write_diff(now, t, &mut out);
            assert_eq!(
                String::from_utf8_lossy(&out),
                reference(now, t),
                "{now:?} - {t:?}"
            );
        }
    }
}
