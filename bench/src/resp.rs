//! A minimal RESP2 client for the Redis target: pipelined GET and SET, replies parsed
//! just enough to count them and check their sizes.

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;

pub struct Resp {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Resp {
    pub async fn connect(addr: &str) -> anyhow::Result<Resp> {
        let stream = TcpStream::connect(addr)
            .await
            .map_err(|e| anyhow::anyhow!("redis {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(Resp {
            stream,
            buf: vec![0; 1 << 20],
            start: 0,
            end: 0,
        })
    }

    pub fn encode_get(out: &mut Vec<u8>, key: &[u8]) {
        out.extend_from_slice(format!("*2\r\n$3\r\nGET\r\n${}\r\n", key.len()).as_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(b"\r\n");
    }

    pub fn encode_set(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
        out.extend_from_slice(format!("*3\r\n$3\r\nSET\r\n${}\r\n", key.len()).as_bytes());
        out.extend_from_slice(key);
        out.extend_from_slice(format!("\r\n${}\r\n", value.len()).as_bytes());
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }

    pub async fn send(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream.write_all(bytes).await?;
        Ok(())
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
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        anyhow::ensure!(n > 0, "redis closed the connection");
        self.end += n;
        Ok(())
    }

    async fn line(&mut self) -> anyhow::Result<Vec<u8>> {
        loop {
            if let Some(p) = self.buf[self.start..self.end]
                .windows(2)
                .position(|w| w == b"\r\n")
            {
                let line = self.buf[self.start..self.start + p].to_vec();
                self.start += p + 2;
                return Ok(line);
            }
            self.fill().await?;
        }
    }

    /// Reads one reply; returns the bulk length (0 for a simple reply, -1 for nil).
    pub async fn reply(&mut self) -> anyhow::Result<i64> {
        let line = self.line().await?;
        match line.first() {
            Some(b'+') | Some(b':') => Ok(0),
            Some(b'-') => anyhow::bail!("redis error: {}", String::from_utf8_lossy(&line)),
            Some(b'$') => {
                let len: i64 = std::str::from_utf8(&line[1..])?.parse()?;
                if len >= 0 {
                    let need = len as usize + 2;
                    while self.end - self.start < need {
                        self.fill().await?;
                    }
                    self.start += need;
                }
                Ok(len)
            }
            _ => anyhow::bail!("unexpected redis reply {:?}", String::from_utf8_lossy(&line)),
        }
    }
}
