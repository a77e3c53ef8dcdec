//! Per-connection byte buffers: `LineReader` frames input into lines with a hard bound on
//! what it holds, `WriteQueue` keeps output that the socket has not yet taken.
//!
//! Both work on any `Read`/`Write`, so they are tested here with in-memory streams; the
//! reactor gives them non-blocking sockets and treats `WouldBlock` as "come back later".

use std::io::{self, ErrorKind, Read, Write};

use crate::protocol::OVERLONG_ECHO;
/// An idle connection should cost almost nothing: buffers larger than this are released
/// once they are empty.
const KEEP_CAPACITY: usize = 4 * 1024;

/// One framed message.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    /// A message without its terminator (`\n` or `\r\n`).
    Complete(&'a [u8]),
    /// A message longer than the limit: its first `OVERLONG_ECHO` bytes. The rest of it is
    /// discarded as it arrives.
    Overlong(&'a [u8]),
}

/// Why `LineReader::fill` stopped reading.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Fill {
    /// The socket has nothing more for now.
    WouldBlock,
    /// The peer closed its sending side; whatever is buffered is all there will be.
    Eof,
    /// The buffer holds enough unprocessed input; process it before reading more, so one
    /// busy sender cannot make the server buffer without bound.
    Full,
}

pub struct LineReader {
    buf: Vec<u8>,
    /// Start of unprocessed input in `buf`.
    start: usize,
    /// Where the search for `\n` resumes: bytes before it are known to hold none.
    scanned: usize,
    max_line: usize,
    /// Inside an over-long line whose head was already reported: drop bytes up to `\n`.
    discarding: bool,
    /// Bytes of the over-long line being discarded, counted so far.
    overlong_len: usize,
    /// The full length of an over-long line once its end is known, for the log (SPEC §7:
    /// a logged message is cut and marked with its full length).
    overlong_ended: Option<usize>,
}

impl LineReader {
    pub fn new(max_line: usize) -> LineReader {
        LineReader {
            buf: Vec::new(),
            start: 0,
            scanned: 0,
            max_line,
            discarding: false,
            overlong_len: 0,
            overlong_ended: None,
        }
    }

    /// The full length of the last over-long line, once its end has been read: its head
    /// was handed out as `Line::Overlong` before the rest arrived.
    pub fn overlong_ended(&mut self) -> Option<usize> {
        self.overlong_ended.take()
    }

    /// Unprocessed input held, in bytes.
    pub fn buffered(&self) -> usize {
        self.buf.len() - self.start
    }

    /// Reads until the source would block, ends, or the buffer holds a full line plus one
    /// read. Reads land in `scratch` (one buffer shared by all connections) and only the
    /// bytes that arrived are copied, so a connection holds just its unprocessed input.
    /// `Interrupted` is retried; other errors are returned.
    ///
    /// A read shorter than `scratch` means the socket was drained at that instant; with
    /// edge-triggered readiness any later data raises a new event, so unless `until_eof`
    /// (the peer has closed and its EOF must be seen) that counts as `WouldBlock` and saves
    /// the extra `read` that would only return `EAGAIN`.
    pub fn fill(&mut self, src: &mut impl Read, scratch: &mut [u8], until_eof: bool) -> io::Result<Fill> {
        self.compact();
        let cap = self.max_line + 2 + scratch.len();
        loop {
            if self.buffered() >= cap {
                return Ok(Fill::Full);
            }
            match src.read(scratch) {
                Ok(0) => return Ok(Fill::Eof),
                Ok(n) => {
                    self.buf.extend_from_slice(&scratch[..n]);
                    if n < scratch.len() && !until_eof {
                        return Ok(Fill::WouldBlock);
                    }
                }
                Err(e) => match e.kind() {
                    ErrorKind::WouldBlock => return Ok(Fill::WouldBlock),
                    ErrorKind::Interrupted => {}
                    _ => return Err(e),
                },
            }
        }
    }

    /// Drops processed bytes so the buffer does not creep, and gives back memory that an
    /// idle connection does not need.
    fn compact(&mut self) {
        if self.start == 0 {
            return;
        }
        self.buf.drain(..self.start);
        self.scanned -= self.start;
        self.start = 0;
        if self.buf.is_empty() && self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// Everything was processed: empty the buffer without moving bytes, and give a large
    /// one back (a burst must not leave an idle connection holding its high-water mark).
    fn release(&mut self) {
        self.buf.clear();
        self.start = 0;
        self.scanned = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }

    /// The next complete message, if the buffer holds one.
    pub fn next_line(&mut self) -> Option<Line<'_>> {
        loop {
            let newline = self.buf[self.scanned..]
                .iter()
                .position(|&b| b == b'\n')
                .map(|i| self.scanned + i);
            let Some(nl) = newline else {
                if self.start == self.buf.len() {
                    self.release();
                    return None;
                }
                self.scanned = self.buf.len();
                return self.without_newline();
            };
            let begin = self.start;
            self.start = nl + 1;
            self.scanned = self.start;
            if self.discarding {
                self.discarding = false;
                self.overlong_ended = Some(self.overlong_len + strip_cr(&self.buf[begin..nl]).len());
                continue;
            }
            let line = strip_cr(&self.buf[begin..nl]);
            if line.len() > self.max_line {
                self.overlong_ended = Some(line.len());
                return Some(Line::Overlong(head(line)));
            }
            return Some(Line::Complete(line));
        }
    }

    /// No `\n` in the buffer: either wait for more, or give up on a line that can no
    /// longer fit (`max_line` bytes plus a `\r` that might be half of `\r\n`).
    fn without_newline(&mut self) -> Option<Line<'_>> {
        let begin = self.start;
        if self.discarding {
            self.overlong_len += self.buf.len() - self.start;
            self.start = self.buf.len();
            self.scanned = self.start;
            return None;
        }
        if self.buffered() <= self.max_line + 1 {
            return None;
        }
        self.start = self.buf.len();
        self.scanned = self.start;
        self.discarding = true;
        self.overlong_len = self.buf.len() - begin;
        Some(Line::Overlong(head(&self.buf[begin..])))
    }

    /// After EOF: the final message that had no `\n`, if any. A final line is still a
    /// message (SPEC §2), and it has no terminator to strip.
    pub fn take_last(&mut self) -> Option<Line<'_>> {
        let begin = self.start;
        self.start = self.buf.len();
        self.scanned = self.start;
        if std::mem::take(&mut self.discarding) {
            self.overlong_ended = Some(self.overlong_len + self.buf.len() - begin);
            return None;
        }
        if begin == self.buf.len() {
            return None;
        }
        let line = &self.buf[begin..];
        if line.len() > self.max_line {
            self.overlong_ended = Some(line.len());
            return Some(Line::Overlong(head(line)));
        }
        Some(Line::Complete(line))
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn head(line: &[u8]) -> &[u8] {
    &line[..line.len().min(OVERLONG_ECHO)]
}

/// Output waiting for the socket. Appends are cheap; `flush` writes until empty or until
/// the socket would block.
#[derive(Default)]
pub struct WriteQueue {
    buf: Vec<u8>,
    /// Bytes before this were already written.
    sent: usize,
}

impl WriteQueue {
    pub fn len(&self) -> usize {
        self.buf.len() - self.sent
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Like `push`, but takes the bytes whole when nothing is queued (a table sync can be
    /// megabytes: no second copy).
    pub fn append(&mut self, bytes: Vec<u8>) {
        if self.is_empty() {
            self.buf = bytes;
            self.sent = 0;
        } else {
            self.buf.extend_from_slice(&bytes);
        }
    }

    /// Writes as much as the sink takes. Ok(true) when everything was written.
    pub fn flush(&mut self, sink: &mut impl Write) -> io::Result<bool> {
        while self.sent < self.buf.len() {
            match sink.write(&self.buf[self.sent..]) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => {
                    // Keep memory proportional to what is unsent.
                    if self.sent > self.buf.len() / 2 {
                        self.buf.drain(..self.sent);
                        self.sent = 0;
                    }
                    return Ok(false);
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.buf.clear();
        self.sent = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A source that yields the given chunks, then `WouldBlock` (or EOF once `eof` is set).
    struct Chunks {
        chunks: VecDeque<Vec<u8>>,
        eof: bool,
    }

    impl Read for Chunks {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let Some(mut c) = self.chunks.pop_front() else {
                return if self.eof {
                    Ok(0)
                } else {
                    Err(ErrorKind::WouldBlock.into())
                };
            };
            let n = c.len().min(out.len());
            out[..n].copy_from_slice(&c[..n]);
            if n < c.len() {
                c.drain(..n);
                self.chunks.push_front(c);
            }
            Ok(n)
        }
    }

    const READ_CHUNK: usize = 16 * 1024;

    /// `LineReader::fill` with a scratch buffer of the reactor's kind.
    fn fill(r: &mut LineReader, s: &mut impl Read) -> Option<Fill> {
        let mut scratch = vec![0u8; READ_CHUNK];
        r.fill(s, &mut scratch, true).ok()
    }

    #[test]
    fn a_short_read_ends_the_fill_unless_eof_is_wanted() {
        let mut scratch = vec![0u8; 64];
        let mut r = LineReader::new(100);
        let mut s = src(&[b"a\n", b"b\n"], true);
        assert_eq!(r.fill(&mut s, &mut scratch, false).ok(), Some(Fill::WouldBlock));
        assert_eq!(drain(&mut r), vec!["a"]);
        assert_eq!(r.fill(&mut s, &mut scratch, true).ok(), Some(Fill::Eof));
        assert_eq!(drain(&mut r), vec!["b"]);
        // A full read may have left more behind: keep reading.
        let mut r = LineReader::new(100);
        let mut s = src(&[&[b'x'; 64], b"\n"], false);
        assert_eq!(r.fill(&mut s, &mut scratch, false).ok(), Some(Fill::WouldBlock));
        assert_eq!(drain(&mut r), vec!["x".repeat(64)]);
    }

    fn src(chunks: &[&[u8]], eof: bool) -> Chunks {
        Chunks {
            chunks: chunks.iter().map(|c| c.to_vec()).collect(),
            eof,
        }
    }

    /// Everything the reader yields, as owned lines; "!" marks an over-long head.
    fn drain(r: &mut LineReader) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(l) = r.next_line() {
            out.push(show(l));
        }
        out
    }

    fn show(l: Line<'_>) -> String {
        match l {
            Line::Complete(b) => String::from_utf8_lossy(b).into_owned(),
            Line::Overlong(b) => format!("!{}", String::from_utf8_lossy(b)),
        }
    }

    #[test]
    fn pipelined_lines_split_at_newline_and_crlf() {
        let mut r = LineReader::new(100);
        let mut s = src(&[b"a b\nc\r\nd"], false);
        assert_eq!(fill(&mut r, &mut s), Some(Fill::WouldBlock));
        assert_eq!(drain(&mut r), vec!["a b", "c"]);
        // "d" waits for its terminator.
        assert_eq!(r.buffered(), 1);
    }

    #[test]
    fn line_split_across_reads_is_joined() {
        let mut r = LineReader::new(100);
        let mut s = src(&[b"IAM", b"AT x", b" +1+1 5\r", b"\n"], false);
        fill(&mut r, &mut s);
        assert_eq!(drain(&mut r), vec!["IAMAT x +1+1 5"]);
    }

    #[test]
    fn only_one_cr_belongs_to_the_terminator() {
        let mut r = LineReader::new(100);
        fill(&mut r, &mut src(&[b"a\r\r\n\r\n"], false));
        assert_eq!(drain(&mut r), vec!["a\r", ""]);
    }

    #[test]
    fn empty_lines_are_framed_as_empty() {
        let mut r = LineReader::new(100);
        fill(&mut r, &mut src(&[b"\n\n \n"], false));
        assert_eq!(drain(&mut r), vec!["", "", " "]);
    }

    #[test]
    fn line_of_exactly_max_line_is_accepted_with_either_terminator() {
        let line = vec![b'x'; 64];
        for term in [&b"\n"[..], b"\r\n"] {
            let mut r = LineReader::new(64);
            let mut data = line.clone();
            data.extend_from_slice(term);
            data.extend_from_slice(b"next\n");
            fill(&mut r, &mut src(&[&data], false));
            assert_eq!(drain(&mut r), vec!["x".repeat(64), "next".to_string()]);
        }
    }

    #[test]
    fn max_line_plus_cr_without_newline_yet_waits() {
        // 64 bytes and a '\r': the '\n' may still come and make it a legal line.
        let mut r = LineReader::new(64);
        let mut data = vec![b'x'; 64];
        data.push(b'\r');
        fill(&mut r, &mut src(&[&data], false));
        assert_eq!(drain(&mut r), Vec::<String>::new());
        fill(&mut r, &mut src(&[b"\n"], false));
        assert_eq!(drain(&mut r), vec!["x".repeat(64)]);
    }

    #[test]
    fn line_one_byte_too_long_is_overlong_when_complete() {
        let mut r = LineReader::new(64);
        let mut data = vec![b'y'; 65];
        data.extend_from_slice(b"\nok\n");
        fill(&mut r, &mut src(&[&data], false));
        assert_eq!(drain(&mut r), vec![format!("!{}", "y".repeat(65)), "ok".into()]);
    }

    #[test]
    fn overlong_line_reports_its_head_and_discards_the_rest() {
        let mut r = LineReader::new(300);
        let mut big = Vec::new();
        for i in 0..2000u32 {
            big.push(b'a' + (i % 26) as u8);
        }
        let expected_head: String = String::from_utf8_lossy(&big[..256]).into_owned();
        let chunks: Vec<&[u8]> = big.chunks(100).collect();
        let mut s = src(&chunks, false);
        fill(&mut r, &mut s);
        assert_eq!(drain(&mut r), vec![format!("!{expected_head}")]);
        assert_eq!(r.overlong_ended(), None, "its end is not known yet");
        // More of the same line, then its end and a good line.
        fill(&mut r, &mut src(&[&[b'z'; 5000], b"zz\nafter\n"], false));
        assert_eq!(drain(&mut r), vec!["after"]);
        assert_eq!(
            r.overlong_ended(),
            Some(2000 + 5002),
            "the full length, for the log"
        );
        assert_eq!(r.overlong_ended(), None, "reported once");
    }

    #[test]
    fn an_overlong_line_read_whole_or_ended_by_eof_reports_its_length() {
        let mut r = LineReader::new(10);
        fill(&mut r, &mut src(&[b"0123456789abc\r\nok\n"], false));
        assert_eq!(drain(&mut r), vec!["!0123456789abc", "ok"]);
        assert_eq!(r.overlong_ended(), Some(13));
        let mut r = LineReader::new(10);
        fill(&mut r, &mut src(&[&[b'x'; 40], &[b'y'; 7]], true));
        assert_eq!(drain(&mut r).len(), 1);
        assert!(r.take_last().is_none());
        assert_eq!(r.overlong_ended(), Some(47));
    }

    #[test]
    fn memory_stays_bounded_while_a_huge_line_streams_in() {
        let mut r = LineReader::new(8192);
        let chunk = vec![b'q'; 64 * 1024];
        for _ in 0..32 {
            let mut s = src(&[&chunk], false);
            loop {
                let f = fill(&mut r, &mut s);
                drain(&mut r);
                if f != Some(Fill::Full) {
                    break;
                }
            }
            assert!(
                r.buf.capacity() <= 4 * (8192 + 2 + READ_CHUNK),
                "{}",
                r.buf.capacity()
            );
        }
        fill(&mut r, &mut src(&[b"\nIAMAT\n"], false));
        assert_eq!(drain(&mut r), vec!["IAMAT"]);
    }

    #[test]
    fn a_drained_reader_gives_back_a_large_buffer_at_once() {
        let mut r = LineReader::new(8192);
        let burst = b"IAMAT x +1+1 5\n".repeat(1000);
        fill(&mut r, &mut src(&[&burst], false));
        assert!(r.buf.capacity() > KEEP_CAPACITY);
        while r.next_line().is_some() {}
        assert_eq!((r.buf.capacity(), r.buffered()), (0, 0));
        // A small buffer is kept for the next line.
        fill(&mut r, &mut src(&[b"a\n"], false));
        while r.next_line().is_some() {}
        assert!(r.buf.capacity() > 0 && r.buf.capacity() <= KEEP_CAPACITY);
    }

    #[test]
    fn fill_stops_when_full_so_input_is_processed_first() {
        let mut r = LineReader::new(64);
        let data = b"ab\n".repeat(20_000);
        let mut s = src(&[&data], false);
        assert_eq!(fill(&mut r, &mut s), Some(Fill::Full));
        assert!(r.buffered() < 64 + 2 + 2 * READ_CHUNK);
        let mut total = drain(&mut r).len();
        while fill(&mut r, &mut s) == Some(Fill::Full) {
            total += drain(&mut r).len();
        }
        total += drain(&mut r).len();
        assert_eq!(total, 20_000);
    }

    #[test]
    fn final_line_without_newline_is_taken_at_eof() {
        let mut r = LineReader::new(64);
        let mut s = src(&[b"one\ntwo"], true);
        assert_eq!(fill(&mut r, &mut s), Some(Fill::Eof));
        assert_eq!(drain(&mut r), vec!["one"]);
        assert_eq!(r.take_last().map(show), Some("two".to_string()));
        assert_eq!(r.take_last(), None);
    }

    #[test]
    fn final_line_keeps_a_lone_cr_since_it_has_no_terminator() {
        let mut r = LineReader::new(64);
        fill(&mut r, &mut src(&[b"x\r"], true));
        assert_eq!(drain(&mut r), Vec::<String>::new());
        assert_eq!(r.take_last().map(show), Some("x\r".to_string()));
    }

    #[test]
    fn nothing_after_last_newline_means_no_final_line() {
        let mut r = LineReader::new(64);
        fill(&mut r, &mut src(&[b"one\n"], true));
        assert_eq!(drain(&mut r), vec!["one"]);
        assert_eq!(r.take_last(), None);
    }

    #[test]
    fn eof_inside_a_discarded_line_yields_nothing_more() {
        let mut r = LineReader::new(64);
        fill(&mut r, &mut src(&[&[b'x'; 200]], true));
        assert_eq!(drain(&mut r).len(), 1);
        assert_eq!(r.take_last(), None);
    }

    #[test]
    fn non_utf8_bytes_pass_through() {
        let mut r = LineReader::new(64);
        fill(&mut r, &mut src(&[b"\xff\xfe x\n"], false));
        assert_eq!(r.next_line(), Some(Line::Complete(&b"\xff\xfe x"[..])));
    }

    #[test]
    fn read_errors_other_than_wouldblock_are_returned() {
        struct Broken;
        impl Read for Broken {
            fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
                Err(ErrorKind::ConnectionReset.into())
            }
        }
        let mut r = LineReader::new(64);
        let mut scratch = [0u8; 64];
        let got = r.fill(&mut Broken, &mut scratch, false).map_err(|e| e.kind());
        assert_eq!(got, Err(ErrorKind::ConnectionReset));
    }

    /// A sink that takes at most `room` bytes, then blocks.
    struct Sink {
        got: Vec<u8>,
        room: usize,
    }

    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            if self.room == 0 {
                return Err(ErrorKind::WouldBlock.into());
            }
            let n = b.len().min(self.room).min(7);
            self.got.extend_from_slice(&b[..n]);
            self.room -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn write_queue_keeps_what_the_socket_did_not_take() {
        let mut q = WriteQueue::default();
        q.push(b"hello world\n");
        q.push(b"second\n");
        let mut sink = Sink {
            got: Vec::new(),
            room: 10,
        };
        assert_eq!(q.flush(&mut sink).ok(), Some(false));
        assert_eq!(q.len(), 19 - 10);
        sink.room = 100;
        assert_eq!(q.flush(&mut sink).ok(), Some(true));
        assert_eq!(sink.got, b"hello world\nsecond\n");
        assert!(q.is_empty());
    }

    #[test]
    fn write_queue_reports_write_zero_and_errors() {
        struct Zero;
        impl Write for Zero {
            fn write(&mut self, _: &[u8]) -> io::Result<usize> {
                Ok(0)
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut q = WriteQueue::default();
        q.push(b"x");
        assert_eq!(
            q.flush(&mut Zero).map_err(|e| e.kind()),
            Err(ErrorKind::WriteZero)
        );
    }
}
