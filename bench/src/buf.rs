//! `ByteQueue`: a FIFO of bytes on one `Vec`, used per connection for input, output and the
//! bytes each reply must echo.
//!
//! Consumed bytes are dropped lazily (a head index); the live tail moves to the front only
//! once the dead prefix is at least as long as it, so a steady stream costs amortised O(1)
//! per byte, and memory stays within about twice the live data (a queue that empties after
//! holding something huge gives the excess back).

/// Capacity kept when an emptied queue had grown past `SHRINK_ABOVE`.
const KEEP: usize = 64 * 1024;
const SHRINK_ABOVE: usize = 1024 * 1024;

#[derive(Debug, Default)]
pub struct ByteQueue {
    buf: Vec<u8>,
    head: usize,
}

impl ByteQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn len(&self) -> usize {
        self.buf.len() - self.head
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The live bytes, oldest first.
    pub fn data(&self) -> &[u8] {
        &self.buf[self.head..]
    }

    pub fn push(&mut self, bytes: &[u8]) {
        self.tail().extend_from_slice(bytes);
    }

    /// The backing vector, compacted, for appending in place (request formatting writes
    /// straight into the output queue). Only append to it: the live bytes are all of it.
    pub fn tail(&mut self) -> &mut Vec<u8> {
        if self.head > 0 && self.head >= self.len() {
            self.buf.drain(..self.head);
            self.head = 0;
        }
        &mut self.buf
    }

    /// Drops the `n` oldest bytes (all of them if there are fewer).
    pub fn consume(&mut self, n: usize) {
        self.head = (self.head + n).min(self.buf.len());
        if self.head == self.buf.len() {
            self.clear();
        }
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.head = 0;
        if self.buf.capacity() > SHRINK_ABOVE {
            self.buf.shrink_to(KEEP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo_order_and_consume() {
        let mut q = ByteQueue::new();
        q.push(b"hello ");
        q.push(b"world");
        assert_eq!(q.data(), b"hello world");
        q.consume(6);
        assert_eq!(q.data(), b"world");
        q.push(b"!");
        assert_eq!(q.data(), b"world!");
        q.consume(100);
        assert!(q.is_empty());
    }

    #[test]
    fn steady_stream_stays_bounded() {
        let mut q = ByteQueue::new();
        for _ in 0..100_000 {
            q.push(b"0123456789");
            q.consume(9);
        }
        // One byte is left per round, so 100,000 bytes are live; the backing vector never
        // holds more than about twice that.
        assert_eq!(q.len(), 100_000);
        assert!(q.buf.len() <= 2 * q.len() + 16, "{}", q.buf.len());
    }

    #[test]
    fn tail_appends_after_live_bytes() {
        let mut q = ByteQueue::new();
        q.push(b"abcdef");
        q.consume(4);
        let v = q.tail();
        let at = v.len();
        v.extend_from_slice(b"gh");
        assert_eq!(&v[at..], b"gh");
        assert_eq!(q.data(), b"efgh");
    }

    #[test]
    fn emptied_queue_gives_memory_back() {
        let mut q = ByteQueue::new();
        q.push(&vec![0u8; 4 * 1024 * 1024]);
        q.consume(q.len());
        assert!(q.buf.capacity() <= KEEP);
    }
}
