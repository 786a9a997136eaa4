//! One generator connection: picks operations, encodes them, matches replies to requests,
//! records latency and checks values. Driven closed loop (a fixed number in flight) or
//! open loop (sends at intended times; latency counts from the intended time, so a stalled
//! server cannot hide the requests it delayed).

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncWriteExt};
use hdrhistogram::Histogram;
use hotshard_net::shard_map::ShardMap;
use hotshard_reactor::Outstanding;

use super::progress::Progress;
use super::reply_reader::ReplyReader;
use super::verify::{KeyBook, Seen};
use super::wire::{Answer, Protocol, Reply};
use super::workload::{fill_value, read_tag, Op, OpGen};

/// What one generator thread measured.
pub struct ThreadStats {
    pub hist: Histogram<u64>,
    pub by_op: BTreeMap<&'static str, u64>,
    pub not_found: u64,
    pub errors: BTreeMap<String, u64>,
    pub bytes: u64,
    pub warm_end: Instant,
    pub last_done: Instant,
    /// Operations still to send after warm-up when an operation count was asked for.
    pub quota: Option<u64>,
    pub deadline: Instant,
    pub progress: Option<Arc<Progress>>,
}

impl ThreadStats {
    fn stopped(&self, now: Instant) -> bool {
        now >= self.deadline || self.quota == Some(0)
    }
}

struct Pending {
    id: u64,
    intended: Instant,
    op: Op,
    /// Bytes of a put's value: counted in MB/s only once the put is acknowledged.
    value_len: usize,
    key: u64,
    write: u32,
    lo: u32,
}

/// The longest index tag a run may name (`--key-tag`).
pub const MAX_KEY_TAG: usize = 64;

/// Key `i`'s name, without allocating: `key:` and ten digits, after `{tag}` when the run
/// names an index tag (every key then lands in that one bucket index, in key order).
pub struct KeyName {
    bytes: [u8; MAX_KEY_TAG + 16],
    len: usize,
}

impl KeyName {
    /// `tag` is at most `MAX_KEY_TAG` bytes (checked when the run's arguments are read).
    pub fn of(tag: &[u8], i: u64) -> KeyName {
        let mut bytes = [0u8; MAX_KEY_TAG + 16];
        let mut len = 0;
        if !tag.is_empty() {
            bytes[0] = b'{';
            bytes[1..=tag.len()].copy_from_slice(tag);
            bytes[tag.len() + 1] = b'}';
            len = tag.len() + 2;
        }
        bytes[len..len + 4].copy_from_slice(b"key:");
        let mut n = i;
        for j in (len + 4..len + 14).rev() {
            bytes[j] = b'0' + (n % 10) as u8;
            n /= 10;
        }
        KeyName { bytes, len: len + 14 }
    }
}

impl std::ops::Deref for KeyName {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

pub struct Conn {
    pub proto: Protocol,
    pub map: Option<Rc<ShardMap>>,
    pub keys: Rc<Vec<u64>>,
    pub gen: OpGen,
    pending: VecDeque<Pending>,
    /// The same count, added to the thread's readiness set: while replies are awaited its
    /// poller keeps polling instead of sleeping (a wake-up costs ~40 µs, BENCHMARKS.md).
    outstanding: Outstanding,
    next_id: u64,
    /// Verify mode: the ledger, indexed by key / threads.
    pub book: Option<Rc<RefCell<KeyBook>>>,
    pub threads: u64,
    /// The run's index tag (empty: none).
    tag: Rc<[u8]>,
    value: Rc<Vec<u8>>,
    scratch: Vec<u8>,
    pub stats: Rc<RefCell<ThreadStats>>,
}

impl Conn {
    #[allow(clippy::too_many_arguments)] // each is a separate part of the connection
    pub fn new(
        proto: Protocol,
        map: Option<Rc<ShardMap>>,
        keys: Rc<Vec<u64>>,
        gen: OpGen,
        book: Option<Rc<RefCell<KeyBook>>>,
        threads: u64,
        tag: Rc<[u8]>,
        value: Rc<Vec<u8>>,
        stats: Rc<RefCell<ThreadStats>>,
    ) -> Conn {
        Conn {
            proto,
            map,
            keys,
            gen,
            pending: VecDeque::new(),
            outstanding: Outstanding::for_this_thread(),
            next_id: 0,
            book,
            threads,
            tag,
            scratch: vec![0; value.len()],
            value,
            stats,
        }
    }

    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Appends the next operation to `out`, stamped with the time it was meant to go.
    pub fn issue(&mut self, intended: Instant, out: &mut Vec<u8>) -> anyhow::Result<()> {
        let next = self.gen.next();
        let mut op = next.op;
        let mut key = self.keys[next.slot];
        let (mut write, mut lo) = (0, 0);
        if let Some(book) = &self.book {
            let mut book = book.borrow_mut();
            if op != Op::Get {
                let mut tries = 0;
                loop {
                    if let Some(w) = book.begin_write(key / self.threads, op == Op::Del) {
                        write = w;
                        break;
                    }
                    tries += 1;
                    if tries == 8 {
                        op = Op::Get;
                        break;
                    }
                    key = self.keys[self.gen.other_slot()];
                }
            }
            if op == Op::Get {
                lo = book.begin_read(key / self.threads);
            }
        }
        let value: &[u8] = if op != Op::Put {
            &[]
        } else if self.book.is_some() {
            fill_value(key, write, &mut self.scratch[..next.value_len]);
            &self.scratch[..next.value_len]
        } else {
            &self.value[..next.value_len]
        };
        self.next_id += 1;
        self.proto.encode(
            out,
            self.next_id,
            op,
            &KeyName::of(&self.tag, key),
            value,
            self.map.as_deref(),
        )?;
        let mut stats = self.stats.borrow_mut();
        if intended >= stats.warm_end {
            if let Some(q) = stats.quota.as_mut() {
                *q = q.saturating_sub(1);
            }
        }
        self.pending.push_back(Pending {
            id: self.next_id,
            intended,
            op,
            value_len: value.len(),
            key,
            write,
            lo,
        });
        self.outstanding.add(1);
        Ok(())
    }

    /// Matches a reply to its request and accounts for it.
    pub fn complete<R>(&mut self, reply: Reply, reader: &ReplyReader<R>) -> anyhow::Result<()>
    where
        R: AsyncRead + Unpin,
    {
        let p = match reply.id {
            Some(id) if !self.proto.in_order() => {
                let at = self
                    .pending
                    .iter()
                    .position(|p| p.id == id)
                    .ok_or_else(|| anyhow::anyhow!("reply to unknown request {id}"))?;
                self.pending.remove(at).expect("position is in range")
            }
            _ => self
                .pending
                .pop_front()
                .ok_or_else(|| anyhow::anyhow!("a reply nobody asked for"))?,
        };
        self.outstanding.sub(1);
        let now = Instant::now();
        let mut stats = self.stats.borrow_mut();
        // An error reply (Busy included) is not a completed operation: it is counted
        // apart, so that a target that sheds load does not look faster than one that serves.
        let completed = !matches!(reply.answer, Answer::Error(_));
        if completed && p.intended >= stats.warm_end {
            let ns = now.duration_since(p.intended).as_nanos().max(1) as u64;
            stats.hist.record(ns).ok();
            *stats.by_op.entry(op_name(p.op)).or_default() += 1;
            stats.last_done = now;
            if let Some(pr) = &stats.progress {
                pr.record(ns);
            }
        }
        match &reply.answer {
            Answer::NotFound => stats.not_found += 1,
            Answer::Error(e) => *stats.errors.entry(e.clone()).or_default() += 1,
            Answer::Ok(Some(v)) => stats.bytes += v.len() as u64,
            Answer::Ok(None) => stats.bytes += p.value_len as u64,
        }
        drop(stats);
        if let Some(book) = &self.book {
            let mut book = book.borrow_mut();
            let local = p.key / self.threads;
            match p.op {
                Op::Put | Op::Del => {
                    let acked = matches!(reply.answer, Answer::Ok(_))
                        || (p.op == Op::Del && reply.answer == Answer::NotFound);
                    book.end_write(local, p.write, acked);
                }
                Op::Get => {
                    let seen = match &reply.answer {
                        Answer::NotFound => Some(Seen::Absent),
                        Answer::Ok(Some(v)) => Some(match read_tag(reader.bytes(v.clone())) {
                            Some((k, w)) if k == p.key => Seen::Write(local, w),
                            Some((_, w)) => Seen::Write(u64::MAX, w),
                            None => Seen::Garbage,
                        }),
                        Answer::Ok(None) => Some(Seen::Garbage),
                        Answer::Error(_) => None,
                    };
                    if let Some(seen) = seen {
                        book.check_read(local, p.lo, seen);
                    }
                }
            }
        }
        Ok(())
    }
}

fn op_name(op: Op) -> &'static str {
    match op {
        Op::Get => "get",
        Op::Put => "put",
        Op::Del => "del",
    }
}

/// Closed loop: `pipeline` requests in flight. Batch mode sends `pipeline`, then reads them
/// all (as redis-benchmark -P does); stream mode sends one more as each answer arrives.
pub async fn closed_loop<R, W>(
    conn: &RefCell<Conn>,
    reader: &mut ReplyReader<R>,
    writer: &mut W,
    pipeline: usize,
    stream: bool,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: futures_lite::AsyncWrite + Unpin,
{
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        let stopped = conn.borrow().stats.borrow().stopped(now);
        if !stopped {
            out.clear();
            {
                let mut c = conn.borrow_mut();
                let want = if stream {
                    pipeline - c.in_flight()
                } else if c.in_flight() == 0 {
                    pipeline
                } else {
                    0
                };
                for _ in 0..want {
                    if c.stats.borrow().quota == Some(0) {
                        break;
                    }
                    c.issue(now, &mut out)?;
                }
            }
            if !out.is_empty() {
                writer.write_all(&out).await?;
            }
        }
        let in_flight = conn.borrow().in_flight();
        if in_flight == 0 {
            if stopped {
                return Ok(());
            }
            continue;
        }
        let proto = conn.borrow().proto;
        // Batch mode reads the whole batch. Stream mode takes every reply that has already
        // begun to arrive before the next send, so that their replacements leave in one
        // write, as the client library's shared outbox sends them.
        for read in 1.. {
            let reply = proto.read_reply(reader).await?;
            conn.borrow_mut().complete(reply, reader)?;
            let more = if stream {
                reader.buffered() > 0 && conn.borrow().in_flight() > 0
            } else {
                read < in_flight
            };
            if !more {
                break;
            }
        }
    }
}

/// Open loop, sending side: one request every `interval`, all that are due in one write,
/// never more than the semaphore's permits in flight.
pub async fn open_loop_sender<W>(
    conn: Rc<RefCell<Conn>>,
    writer: &mut W,
    interval: Duration,
    permits: Rc<glommio::sync::Semaphore>,
    wake: glommio::channels::local_channel::LocalSender<()>,
    start: Instant,
) -> anyhow::Result<()>
where
    W: futures_lite::AsyncWrite + Unpin,
{
    let mut next = start;
    let mut out = Vec::new();
    loop {
        let now = Instant::now();
        if conn.borrow().stats.borrow().stopped(now) {
            return Ok(());
        }
        if next > now {
            glommio::timer::sleep(next - now).await;
            continue;
        }
        out.clear();
        while next <= Instant::now() && !conn.borrow().stats.borrow().stopped(next) {
            if !permits.try_acquire(1).map_err(|e| anyhow::anyhow!("{e}"))? {
                if !out.is_empty() {
                    break;
                }
                permits.acquire(1).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            }
            conn.borrow_mut().issue(next, &mut out)?;
            next += interval;
        }
        if !out.is_empty() {
            writer.write_all(&out).await?;
            wake.try_send(()).ok();
        }
    }
}

/// Open loop, receiving side: reads replies while any are owed; ends when the sender has
/// stopped and everything is answered.
pub async fn open_loop_receiver<R>(
    conn: Rc<RefCell<Conn>>,
    mut reader: ReplyReader<R>,
    permits: Rc<glommio::sync::Semaphore>,
    wake: glommio::channels::local_channel::LocalReceiver<()>,
) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
{
    use futures_lite::StreamExt;
    let mut wake = wake.stream();
    loop {
        if conn.borrow().in_flight() > 0 {
            let proto = conn.borrow().proto;
            let reply = proto.read_reply(&mut reader).await?;
            conn.borrow_mut().complete(reply, &reader)?;
            permits.signal(1);
            continue;
        }
        if wake.next().await.is_none() && conn.borrow().in_flight() == 0 {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_names_match_their_format() {
        for i in [0u64, 7, 1234567890, 42] {
            assert_eq!(&super::KeyName::of(b"", i)[..], format!("key:{i:010}").as_bytes());
            assert_eq!(
                &super::KeyName::of(b"b", i)[..],
                format!("{{b}}key:{i:010}").as_bytes()
            );
            let tag = [b't'; super::MAX_KEY_TAG];
            assert_eq!(super::KeyName::of(&tag, i).len(), super::MAX_KEY_TAG + 16);
        }
    }
}
