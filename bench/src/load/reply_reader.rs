//! A buffered reader for replies: lines (RESP, memcached) and exact byte counts, with the
//! bytes left in the buffer for the caller to look at before the next read.

use futures_lite::{AsyncRead, AsyncReadExt};

/// Largest reply the generator accepts (a value plus its framing).
pub const MAX_REPLY_BYTES: usize = 64 << 20;

pub struct ReplyReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> ReplyReader<R> {
    pub fn new(inner: R) -> Self {
        ReplyReader {
            inner,
            buf: vec![0; 256 << 10],
            start: 0,
            end: 0,
        }
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let n = self.inner.read(&mut self.buf[self.end..]).await?;
        anyhow::ensure!(n > 0, "the server closed the connection");
        self.end += n;
        Ok(())
    }

    /// Makes sure `n` unread bytes are buffered; returns where they start.
    pub async fn need(&mut self, n: usize) -> anyhow::Result<usize> {
        anyhow::ensure!(n <= MAX_REPLY_BYTES, "reply of {n} bytes is over the limit");
        if self.buf.len() - self.start < n {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.buf.len() < n {
                self.buf.resize(n.next_power_of_two(), 0);
            }
        }
        while self.end - self.start < n {
            self.fill().await?;
        }
        Ok(self.start)
    }

    /// The next line without its `\r\n`, as a range of `bytes()`; consumed.
    pub async fn line(&mut self) -> anyhow::Result<std::ops::Range<usize>> {
        let mut scanned = 0;
        loop {
            if let Some(p) = memchr::memchr(b'\n', &self.buf[self.start + scanned..self.end]) {
                let at = self.start + scanned + p;
                let line_end = if at > self.start && self.buf[at - 1] == b'\r' {
                    at - 1
                } else {
                    at
                };
                let range = self.start..line_end;
                self.start = at + 1;
                return Ok(range);
            }
            scanned = self.end - self.start;
            anyhow::ensure!(scanned < 64 << 10, "reply line longer than 64 KiB");
            self.fill().await?;
        }
    }

    /// Bytes received and not yet consumed: the start of a reply that is already on its way.
    pub fn buffered(&self) -> usize {
        self.end - self.start
    }

    /// Consumes `n` buffered bytes (after `need(n)`).
    pub fn consume(&mut self, n: usize) -> std::ops::Range<usize> {
        let r = self.start..self.start + n;
        self.start += n;
        r
    }

    /// Bytes of the buffer; ranges from `line` and `consume` stay valid until the next read.
    pub fn bytes(&self, range: std::ops::Range<usize>) -> &[u8] {
        &self.buf[range]
    }
}
