//! The three protocols the generator speaks — hotshard's frames, Redis RESP2 and the
//! memcached text protocol — each as "append a request" and "read one reply".

use std::ops::Range;

use futures_lite::AsyncRead;
use hotshard_net::codec::{access_response, encode_request_into, header_buf};
use hotshard_net::frame::{Preamble, PREAMBLE_BYTES};
use hotshard_net::shard_map::ShardMap;
use hotshard_net::{Request, Status, Target};

use super::reply_reader::ReplyReader;
use super::workload::Op;

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Hotshard,
    Redis,
    Memcached,
}

/// A target URL split into protocol and address.
pub fn parse_target(url: &str) -> anyhow::Result<(Protocol, String)> {
    for (prefix, p) in [
        ("hotshard://", Protocol::Hotshard),
        ("redis://", Protocol::Redis),
        ("memcached://", Protocol::Memcached),
    ] {
        if let Some(addr) = url.strip_prefix(prefix) {
            anyhow::ensure!(!addr.is_empty(), "target {url} has no host:port");
            return Ok((p, addr.to_string()));
        }
    }
    anyhow::bail!("unknown target {url} (hotshard://, redis:// or memcached://host:port)")
}

/// How a request was answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// Stored or deleted (or a GET with this value, as a range of the reader's buffer).
    Ok(Option<Range<usize>>),
    NotFound,
    Error(String),
}

pub struct Reply {
    /// The request id, for protocols that answer out of order.
    pub id: Option<u64>,
    pub answer: Answer,
}

impl Protocol {
    /// Whether replies come back in request order.
    pub fn in_order(self) -> bool {
        self != Protocol::Hotshard
    }

    /// Appends one request to `out`. `map` routes hotshard requests.
    pub fn encode(
        self,
        out: &mut Vec<u8>,
        id: u64,
        op: Op,
        key: &[u8],
        value: &[u8],
        map: Option<&ShardMap>,
    ) -> anyhow::Result<()> {
        match self {
            Protocol::Hotshard => {
                let target = match map {
                    Some(m) => Target {
                        partition: m.partition(key),
                        epoch: m.epoch,
                    },
                    None => Target {
                        partition: 0,
                        epoch: 0,
                    },
                };
                let key = key.to_vec();
                let req = match op {
                    Op::Get => Request::Get {
                        key,
                        range: None,
                        target,
                    },
                    Op::Put => Request::Put {
                        key,
                        if_version: None,
                        target,
                        expires_ms: 0,
                    },
                    Op::Del => Request::Delete {
                        key,
                        if_version: None,
                        target,
                    },
                };
                let payload = if op == Op::Put { value.len() } else { 0 };
                encode_request_into(out, id, &req, payload)?;
                if op == Op::Put {
                    out.extend_from_slice(value);
                }
            }
            Protocol::Redis => {
                let bulk = |out: &mut Vec<u8>, b: &[u8]| {
                    out.push(b'$');
                    push_decimal(out, b.len());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(b);
                    out.extend_from_slice(b"\r\n");
                };
                match op {
                    Op::Get => {
                        out.extend_from_slice(b"*2\r\n$3\r\nGET\r\n");
                        bulk(out, key);
                    }
                    Op::Put => {
                        out.extend_from_slice(b"*3\r\n$3\r\nSET\r\n");
                        bulk(out, key);
                        bulk(out, value);
                    }
                    Op::Del => {
                        out.extend_from_slice(b"*2\r\n$3\r\nDEL\r\n");
                        bulk(out, key);
                    }
                }
            }
            Protocol::Memcached => match op {
                Op::Get => {
                    out.extend_from_slice(b"get ");
                    out.extend_from_slice(key);
                    out.extend_from_slice(b"\r\n");
                }
                Op::Put => {
                    out.extend_from_slice(b"set ");
                    out.extend_from_slice(key);
                    out.extend_from_slice(b" 0 0 ");
                    push_decimal(out, value.len());
                    out.extend_from_slice(b"\r\n");
                    out.extend_from_slice(value);
                    out.extend_from_slice(b"\r\n");
                }
                Op::Del => {
                    out.extend_from_slice(b"delete ");
                    out.extend_from_slice(key);
                    out.extend_from_slice(b"\r\n");
                }
            },
        }
        Ok(())
    }

    /// Reads one reply. A value stays in the reader's buffer until its next read.
    pub async fn read_reply<R: AsyncRead + Unpin>(self, r: &mut ReplyReader<R>) -> anyhow::Result<Reply> {
        match self {
            Protocol::Hotshard => {
                let at = r.need(PREAMBLE_BYTES).await?;
                let mut pre = [0u8; PREAMBLE_BYTES];
                pre.copy_from_slice(r.bytes(at..at + PREAMBLE_BYTES));
                let pre = Preamble::decode(&pre)?;
                let (hlen, plen) = (pre.header_len as usize, pre.payload_len as usize);
                let at = r.need(PREAMBLE_BYTES + hlen + plen).await?;
                let mut header = header_buf(hlen);
                header.copy_from_slice(r.bytes(at + PREAMBLE_BYTES..at + PREAMBLE_BYTES + hlen));
                let status = access_response(&header)?.status();
                let all = r.consume(PREAMBLE_BYTES + hlen + plen);
                let payload = all.end - plen..all.end;
                let answer = match status {
                    Status::Ok => Answer::Ok((plen > 0).then_some(payload)),
                    Status::NotFound => Answer::NotFound,
                    other => Answer::Error(format!("{other:?}")),
                };
                Ok(Reply {
                    id: Some(pre.request_id),
                    answer,
                })
            }
            Protocol::Redis => {
                let line = r.line().await?;
                let l = r.bytes(line);
                let answer = match l.first() {
                    Some(b'+') => Answer::Ok(None),
                    Some(b':') => match &l[1..] {
                        b"0" => Answer::NotFound,
                        _ => Answer::Ok(None),
                    },
                    Some(b'$') => {
                        let len: i64 = std::str::from_utf8(&l[1..])?.parse()?;
                        if len < 0 {
                            Answer::NotFound
                        } else {
                            r.need(len as usize + 2).await?;
                            let v = r.consume(len as usize + 2);
                            Answer::Ok(Some(v.start..v.end - 2))
                        }
                    }
                    Some(b'-') => Answer::Error(String::from_utf8_lossy(l).into_owned()),
                    _ => anyhow::bail!("unexpected Redis reply {:?}", String::from_utf8_lossy(l)),
                };
                Ok(Reply { id: None, answer })
            }
            Protocol::Memcached => {
                let line = r.line().await?;
                let l = r.bytes(line);
                let answer = if l == b"STORED" || l == b"DELETED" {
                    Answer::Ok(None)
                } else if l == b"END" || l == b"NOT_FOUND" {
                    Answer::NotFound
                } else if let Some(rest) = l.strip_prefix(b"VALUE ") {
                    let len: usize = std::str::from_utf8(rest)?
                        .split(' ')
                        .nth(2)
                        .ok_or_else(|| anyhow::anyhow!("memcached VALUE line without a length"))?
                        .parse()?;
                    r.need(len + 2).await?;
                    let v = r.consume(len + 2);
                    let end = r.line().await?;
                    anyhow::ensure!(r.bytes(end) == b"END", "memcached VALUE not followed by END");
                    Answer::Ok(Some(v.start..v.end - 2))
                } else if l.ends_with(b"ERROR")
                    || l.starts_with(b"SERVER_ERROR")
                    || l.starts_with(b"CLIENT_ERROR")
                {
                    Answer::Error(String::from_utf8_lossy(l).into_owned())
                } else {
                    anyhow::bail!("unexpected memcached reply {:?}", String::from_utf8_lossy(l))
                };
                Ok(Reply { id: None, answer })
            }
        }
    }
}

/// Appends `n` in decimal without allocating (it is on every request's path).
fn push_decimal(out: &mut Vec<u8>, n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = n;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use hotshard_net::codec::encode_response;
    use hotshard_net::Response;

    fn read_all(p: Protocol, bytes: &[u8], n: usize) -> Vec<(Option<u64>, Answer, Vec<u8>)> {
        futures_lite::future::block_on(async {
            let mut r = ReplyReader::new(futures_lite::io::Cursor::new(bytes.to_vec()));
            let mut out = Vec::new();
            for _ in 0..n {
                let reply = p.read_reply(&mut r).await.unwrap();
                let value = match &reply.answer {
                    Answer::Ok(Some(v)) => r.bytes(v.clone()).to_vec(),
                    _ => Vec::new(),
                };
                out.push((reply.id, reply.answer, value));
            }
            out
        })
    }

    #[test]
    fn redis_replies() {
        let got = read_all(
            Protocol::Redis,
            b"+OK\r\n$3\r\nabc\r\n$-1\r\n:1\r\n:0\r\n-ERR x\r\n",
            6,
        );
        assert_eq!(got[0].1, Answer::Ok(None));
        assert_eq!(got[1].2, b"abc");
        assert_eq!(got[2].1, Answer::NotFound);
        assert_eq!(got[3].1, Answer::Ok(None));
        assert_eq!(got[4].1, Answer::NotFound);
        assert!(matches!(got[5].1, Answer::Error(_)));
    }

    #[test]
    fn memcached_replies() {
        let got = read_all(
            Protocol::Memcached,
            b"STORED\r\nVALUE key:1 0 5\r\nhe\r\no\r\nEND\r\nEND\r\nDELETED\r\nNOT_FOUND\r\nSERVER_ERROR out of memory\r\n",
            6,
        );
        assert_eq!(got[0].1, Answer::Ok(None));
        assert_eq!(got[1].2, b"he\r\no", "a value may contain CRLF");
        assert_eq!(got[2].1, Answer::NotFound);
        assert_eq!(got[3].1, Answer::Ok(None));
        assert_eq!(got[4].1, Answer::NotFound);
        assert!(matches!(got[5].1, Answer::Error(_)));
    }

    #[test]
    fn hotshard_replies_carry_their_ids() {
        let mut bytes = encode_response(9, &Response::new(Status::Ok), 3).unwrap();
        bytes.extend_from_slice(b"xyz");
        bytes.extend(encode_response(4, &Response::new(Status::NotFound), 0).unwrap());
        bytes.extend(encode_response(5, &Response::new(Status::Busy), 0).unwrap());
        let got = read_all(Protocol::Hotshard, &bytes, 3);
        assert_eq!((got[0].0, got[0].2.as_slice()), (Some(9), &b"xyz"[..]));
        assert_eq!((got[1].0, &got[1].1), (Some(4), &Answer::NotFound));
        assert_eq!(got[2].1, Answer::Error("Busy".into()));
    }

    #[test]
    fn encodes_each_protocol() {
        let mut out = Vec::new();
        Protocol::Redis
            .encode(&mut out, 1, Op::Put, b"k", b"vv", None)
            .unwrap();
        assert_eq!(out, b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\nvv\r\n");
        out.clear();
        Protocol::Memcached
            .encode(&mut out, 1, Op::Put, b"k", b"vv", None)
            .unwrap();
        Protocol::Memcached
            .encode(&mut out, 2, Op::Del, b"k", b"", None)
            .unwrap();
        assert_eq!(out, b"set k 0 0 2\r\nvv\r\ndelete k\r\n");
        out.clear();
        Protocol::Hotshard
            .encode(&mut out, 3, Op::Put, b"k", b"vv", None)
            .unwrap();
        let f = hotshard_net::codec::parse_frame(&out).unwrap().unwrap();
        assert_eq!((f.preamble.request_id, f.preamble.payload_len), (3, 2));
        for n in [0usize, 7, 10, 4096, 1 << 40] {
            let mut v = Vec::new();
            push_decimal(&mut v, n);
            assert_eq!(v, n.to_string().as_bytes());
        }
        assert!(parse_target("memcached://127.0.0.1:1").is_ok());
        assert!(parse_target("http://x").is_err());
        assert!(parse_target("redis://").is_err());
    }
}
