//! The Redis protocol on a shard (issue 21): each RESP command becomes the native requests
//! a native client would send (Get, Put, Delete, Stat, ListKeys), routed the same way: to
//! this shard's store, to another shard of this node over the peer channel, or, in a
//! cluster, proxied to the node that owns the key. So both protocols see the same objects.
//! Read-modify-write commands (INCR, APPEND, SET NX/XX/GET, GETDEL) are a read and a write
//! conditional on the version read, retried when another write came in between: atomic
//! at the key's head without a lock.

use std::rc::Rc;
use std::time::Instant;

use hotshard_net::resp::command::{ExpireIf, Expiry, GetExpiry, LcsReply, RespCommand, SetIf};
use hotshard_net::resp::server::{OwnedCommand, RespHandler, RespReply};
use hotshard_net::server::{Handler, Reply};
use hotshard_net::{Request, Response, Status, Target, UpdateOp};
use hotshard_nvme::BlockQueue;

use crate::config::RespSection;
use crate::key_listing::decode_keys;
use crate::put_payload::PutPayload;
use crate::redis_strings as strings;
use crate::shard_handler::{keyed, OutBuf, ShardHandler};

type R = RespReply<OutBuf>;

/// A SCAN cursor: partition `p` from its start, or (the top bit set) from `list_hash`
/// `resume` on, with the partition in the bits above the hash's.
fn scan_cursor(p: u64, resume: u64) -> u64 {
    match resume {
        0 => p,
        r => 1 << 63 | p << hotshard_net::message::LIST_HASH_BITS | r,
    }
}

/// The partition and the hash a SCAN cursor names (`scan_cursor`).
fn from_scan_cursor(c: u64) -> (u64, u64) {
    let bits = hotshard_net::message::LIST_HASH_BITS;
    match c >> 63 {
        0 => (c, 0),
        _ => ((c & !(1 << 63)) >> bits, c & ((1 << bits) - 1)),
    }
}

/// Most partitions one SCAN call covers.
const SCAN_SPAN: u32 = hotshard_net::limits::MAX_LIST_PARTITIONS as u32;

pub struct RespFront<Q: BlockQueue> {
    pub shard: Rc<ShardHandler<Q>>,
    /// Shards on this node.
    pub shards: usize,
    pub cfg: RespSection,
    pub port: u16,
    pub started: Instant,
    /// The durability the store acknowledges with (INFO says it).
    pub durability: String,
    /// Bytes of values copied out for multi-key replies not yet written
    /// (`resp.max_reply_mib`).
    pub reply_bytes: Rc<std::cell::Cell<usize>>,
}

/// How a conditional write ended.
enum Wrote {
    Done,
    /// Another write came first.
    Mismatch,
    /// A delete found nothing.
    Absent,
}

/// The error reply for a status that is not the command's own outcome.
pub fn status_error(s: &Status) -> String {
    match s {
        Status::Busy | Status::WrongShard { .. } => {
            "TRYAGAIN the node is busy or the key is moving; retry".into()
        }
        Status::TooLarge => format!(
            "ERR value is larger than this node's limit of {} bytes",
            hotshard_net::limits::MAX_PAYLOAD_BYTES
        ),
        Status::NoSpace => "OOM no space left on the node's device".into(),
        Status::Corrupt => "ERR the stored value failed its checksum".into(),
        Status::OutcomeUnknown => {
            "ERR outcome unknown: the write may or may not have been applied; read the key".into()
        }
        Status::BadRequest { reason } => format!("ERR {reason}"),
        Status::Unauthorized => "NOAUTH Authentication required.".into(),
        Status::NotFound => "ERR no such key".into(),
        Status::VersionMismatch { .. } => "TRYAGAIN the key changed; retry".into(),
        Status::Ok | Status::Internal => "ERR internal error".into(),
    }
}

impl<Q: BlockQueue + 'static> RespFront<Q> {
    fn target(&self, key: &[u8]) -> Target {
        let map = self.shard.map.borrow();
        Target {
            partition: map.partition(key),
            epoch: map.epoch,
        }
    }

    /// Sends one native request (and its value) where it is answered, within this shard's
    /// admission budget, as a request from a native connection would be.
    async fn native(&self, request: Request, value: Option<Val<'_>>) -> Reply<OutBuf> {
        let h = &self.shard;
        let len = value.as_ref().map_or(0, Val::len);
        let held = match Handler::admit(&**h, &request, len) {
            Ok(held) => held,
            Err(status) => return Reply::status(status),
        };
        let _held = held.map(|bytes| crate::forwarding::Held {
            admission: &h.admission,
            bytes,
        });
        if let Some((_, target)) = keyed(&request) {
            let reads = request.is_read();
            if elsewhere(&h.map.borrow(), h.node_id, target.partition, reads) {
                let bytes = value.as_ref().map_or(&[][..], Val::bytes);
                return self.proxy(&request, bytes, target.partition).await;
            }
        }
        let payload = match value {
            Some(Val::Bytes(v)) => match h.payload_buffer(&request, v.len()) {
                Ok(mut buf) => {
                    buf.as_mut()[..v.len()].copy_from_slice(v);
                    Some(buf)
                }
                Err(status) => return Reply::status(status),
            },
            Some(Val::Received(p)) => Some(p),
            None => None,
        };
        h.clone().handle(request, payload).await
    }

    /// A request for a key another node owns, sent to that node (a standalone Redis client
    /// may talk to any node of a cluster).
    async fn proxy(&self, request: &Request, value: &[u8], partition: u32) -> Reply<OutBuf> {
        let h = &self.shard;
        let reads = request.is_read();
        let addr = match answered_by(&h.map.borrow(), partition, reads) {
            Some(o) => o.addr.clone(),
            None => return Reply::status(Status::Busy),
        };
        match h.links.call(&addr, request, value, h.answer_wait).await {
            Ok((response, body)) => Reply {
                response,
                payload: (!body.is_empty()).then_some(OutBuf::Bytes(body)),
            },
            // Any write handed over and not answered (a Put, a Delete, an Update: INCR,
            // APPEND, SET NX/XX/GET, GETDEL, EXPIRE) may have been applied: its outcome is
            // unknown, never "try again" (a retried INCR would count twice).
            Err(_) if !reads => Reply::status(Status::OutcomeUnknown),
            Err(_) => Reply::status(Status::Busy),
        }
    }

    /// The value and version of `key`; None if it has none.
    async fn get(&self, key: &[u8]) -> Result<Option<(OutBuf, u64)>, String> {
        let request = Request::Get {
            key: key.to_vec(),
            range: None,
            target: self.target(key),
        };
        let reply = self.native(request, None).await;
        match reply.response.status() {
            Status::Ok => Ok(Some((
                reply.payload.unwrap_or(OutBuf::Bytes(Vec::new())),
                reply.response.version,
            ))),
            Status::NotFound => Ok(None),
            s => Err(status_error(&s)),
        }
    }

    /// A value read straight from the device, counted against the shard's admission
    /// budget until its reply has gone, as a native GET's is: a client that pipelines
    /// GETs and never reads their replies holds at most the budget, and is answered Busy
    /// past it.
    fn held_until_written(&self, v: OutBuf) -> OutBuf {
        let len = v.as_ref().len();
        if len == 0 || !matches!(v, OutBuf::Value(crate::store::Value::Dma { .. })) {
            return v;
        }
        let h = self.shard.clone();
        h.admission.hold(len);
        let release: Rc<dyn Fn(usize)> = Rc::new(move |b| h.admission.unhold(b));
        OutBuf::Charged(Box::new(v), crate::shard_handler::Charge::new(len, release))
    }

    /// A value of a multi-key reply, copied out of its device buffer now (the buffer goes
    /// back to the pool before the next key is read: a command that held every buffer it
    /// read waited for ever on one only its own reply would free) and counted against
    /// `resp.max_reply_mib` until the reply has gone. An error past that budget.
    fn copied_out(&self, v: OutBuf) -> Result<OutBuf, String> {
        let len = v.as_ref().len();
        let budget = self.cfg.max_reply_mib << 20;
        let used = self.reply_bytes.get();
        if used + len > budget {
            return Err(format!(
                "ERR the reply would hold more than this node's resp.max_reply_mib ({} MiB) of values: ask for fewer keys at once",
                self.cfg.max_reply_mib
            ));
        }
        let copied = OutBuf::Bytes(v.as_ref().to_vec());
        drop(v);
        self.reply_bytes.set(used + len);
        let counter = self.reply_bytes.clone();
        let release: Rc<dyn Fn(usize)> = Rc::new(move |b| counter.set(counter.get().saturating_sub(b)));
        Ok(OutBuf::Charged(
            Box::new(copied),
            crate::shard_handler::Charge::new(len, release),
        ))
    }

    /// The length and expiry (Unix ms, 0: none) of `key`; None if it has none.
    async fn stat(&self, key: &[u8]) -> Result<Option<(u64, u64)>, String> {
        Ok(self.stat_versioned(key).await?.map(|(len, at, _)| (len, at)))
    }

    /// The length, expiry and version of `key`; None if it has none.
    async fn stat_versioned(&self, key: &[u8]) -> Result<Option<(u64, u64, u64)>, String> {
        let request = Request::Stat {
            key: key.to_vec(),
            target: self.target(key),
        };
        let r = self.native(request, None).await.response;
        match r.status() {
            Status::Ok => Ok(Some((r.object_len, r.expires_ms, r.version))),
            Status::NotFound => Ok(None),
            s => Err(status_error(&s)),
        }
    }

    /// The bytes `range` picks from `key`'s value given its length (None: none), read from
    /// the device alone (a ranged GET); None if the key has no value. The length comes
    /// from a Stat: if the value changed before the read, both are done again.
    async fn read_range(
        &self,
        key: &[u8],
        range: impl Fn(u64) -> Option<(u64, u64)>,
    ) -> Result<Option<OutBuf>, String> {
        for _ in 0..16 {
            let Some((len, _, version)) = self.stat_versioned(key).await? else {
                return Ok(None);
            };
            let Some((offset, len)) = range(len) else {
                return Ok(Some(OutBuf::Bytes(Vec::new())));
            };
            let request = Request::Get {
                key: key.to_vec(),
                range: Some(hotshard_net::ByteRange { offset, len }),
                target: self.target(key),
            };
            let reply = self.native(request, None).await;
            match reply.response.status() {
                Status::Ok if reply.response.version == version => {
                    return Ok(Some(reply.payload.unwrap_or(OutBuf::Bytes(Vec::new()))));
                }
                Status::Ok | Status::NotFound | Status::BadRequest { .. } => continue,
                s => return Err(status_error(&s)),
            }
        }
        Err(CONTENDED.into())
    }

    /// Writes `value` (with `if_version`: only over that version; 0: only if absent).
    async fn put(
        &self,
        key: &[u8],
        value: Val<'_>,
        if_version: Option<u64>,
        expires_ms: u64,
    ) -> Result<Wrote, String> {
        let request = Request::Put {
            key: key.to_vec(),
            if_version,
            target: self.target(key),
            expires_ms,
        };
        match self.native(request, Some(value)).await.response.status() {
            Status::Ok => Ok(Wrote::Done),
            Status::VersionMismatch { .. } => Ok(Wrote::Mismatch),
            s => Err(status_error(&s)),
        }
    }

    async fn delete(&self, key: &[u8], if_version: Option<u64>) -> Result<Wrote, String> {
        let request = Request::Delete {
            key: key.to_vec(),
            if_version,
            target: self.target(key),
        };
        match self.native(request, None).await.response.status() {
            Status::Ok => Ok(Wrote::Done),
            Status::NotFound => Ok(Wrote::Absent),
            Status::VersionMismatch { .. } => Ok(Wrote::Mismatch),
            s => Err(status_error(&s)),
        }
    }

    /// Runs `c`; `received` is its SET value if the connection received it into a buffer
    /// of this shard's (`value_buffer`).
    async fn run(&self, c: RespCommand<'_>, received: Option<PutPayload>) -> Result<R, String> {
        use RespCommand as C;
        let max_key = hotshard_net::limits::MAX_KEY_BYTES;
        if c.keys().unwrap_or_default().iter().any(|k| k.len() > max_key) {
            return Err(format!(
                "ERR key is longer than this node's limit of {max_key} bytes"
            ));
        }
        Ok(match c {
            C::Get(k) | C::GetEx(k, GetExpiry::Keep) => match self.get(k).await? {
                Some((v, _)) => RespReply::Bulk(self.held_until_written(v)),
                None => RespReply::null(),
            },
            C::Set {
                key,
                value,
                cond,
                expiry,
                keep_ttl,
                get,
            } => {
                let expires_ms = match expiry {
                    Some(e) => expiry_ms(e).ok_or("ERR invalid expire time in 'set' command")?,
                    None => 0,
                };
                let value = match received {
                    Some(p) => Val::Received(p),
                    None => Val::Bytes(value),
                };
                self.set(key, value, cond, get, expires_ms, keep_ttl).await?
            }
            C::GetDel(k) => {
                let (_, old) = self.update(k, UpdateOp::GetDel, None).await?;
                old.map_or(RespReply::null(), RespReply::Bulk)
            }
            C::GetEx(k, how) => {
                let at_ms = match how {
                    GetExpiry::Set(e) => expiry_ms(e).ok_or("ERR invalid expire time in 'getex' command")?,
                    _ => 0,
                };
                let op = UpdateOp::Expire {
                    at_ms,
                    cond: 0,
                    get: true,
                };
                let (_, old) = self.update(k, op, None).await?;
                old.map_or(RespReply::null(), RespReply::Bulk)
            }
            C::GetRange(k, start, end) => {
                match self
                    .read_range(k, |len| strings::getrange(len, start, end))
                    .await?
                {
                    Some(v) => RespReply::Bulk(self.held_until_written(v)),
                    None => RespReply::bulk_bytes(b""),
                }
            }
            C::StrLen(k) => RespReply::integer(self.stat(k).await?.map_or(0, |(len, _)| len as i64)),
            C::Append(k, tail) => {
                RespReply::integer(self.update(k, UpdateOp::Append, Some(Val::Bytes(tail))).await?.0)
            }
            C::IncrBy(k, by) => RespReply::integer(self.update(k, UpdateOp::IncrBy(by), None).await?.0),
            C::Del(keys) => {
                let mut n = 0;
                for k in keys {
                    if let Wrote::Done = self.delete(k, None).await? {
                        n += 1;
                    }
                }
                RespReply::integer(n)
            }
            C::Exists(keys) | C::Touch(keys) => {
                let mut n = 0;
                for k in keys {
                    n += i64::from(self.stat(k).await?.is_some());
                }
                RespReply::integer(n)
            }
            C::MGet(keys) => {
                let mut head = Vec::new();
                hotshard_net::resp::reply::array_header(&mut head, keys.len());
                let mut parts = vec![RespReply::Raw(head)];
                for k in keys {
                    // A key that cannot be read is nil in MGET, as Redis gives for a
                    // key of another type.
                    parts.push(match self.get(k).await {
                        Ok(Some((v, _))) => RespReply::Bulk(self.copied_out(v)?),
                        Ok(None) | Err(_) => RespReply::null(),
                    });
                }
                RespReply::Many(parts)
            }
            C::MSet(pairs) => {
                for (k, v) in pairs {
                    self.put(k, Val::Bytes(v), None, 0).await?;
                }
                RespReply::ok()
            }
            C::Expire(k, e, when, name) => {
                // A time already past (EXPIRE k 0, or a negative one) deletes the key.
                // (A relative zero is taken as the head's now.) Past what a record holds
                // (the year 10889), refused as Redis refuses an overflowing time.
                let at_ms = expiry_ms(e)
                    .ok_or_else(|| format!("ERR invalid expire time in '{name}' command"))?
                    .max(1);
                let cond = match when {
                    ExpireIf::Always => 0,
                    ExpireIf::NoExpiry => 1,
                    ExpireIf::HasExpiry => 2,
                    ExpireIf::Later => 3,
                    ExpireIf::Sooner => 4,
                    ExpireIf::HasExpirySooner => 5,
                };
                let op = UpdateOp::Expire {
                    at_ms,
                    cond,
                    get: false,
                };
                RespReply::integer(self.update(k, op, None).await?.0)
            }
            C::Ttl(k, millis) => RespReply::integer(match self.stat(k).await? {
                None => -2,
                Some((_, 0)) => -1,
                Some((_, at)) => {
                    let left = at.saturating_sub(hotshard_store::index::now_ms()) as i64;
                    if millis {
                        left
                    } else {
                        (left + 500) / 1000
                    }
                }
            }),
            C::Persist(k) => {
                let op = UpdateOp::Expire {
                    at_ms: 0,
                    cond: 2,
                    get: false,
                };
                RespReply::integer(self.update(k, op, None).await?.0)
            }
            C::Type(k) => RespReply::Raw(match self.stat(k).await? {
                Some(_) => b"+string\r\n".to_vec(),
                None => b"+none\r\n".to_vec(),
            }),
            C::DbSize => RespReply::integer(self.node_metric("hotshard_objects").await as i64),
            C::Scan {
                cursor,
                pattern,
                count,
            } => {
                // Spans of partitions until COUNT keys (Redis's default: 10) or the end.
                let (mut next, mut keys) = (cursor, Vec::new());
                loop {
                    let (after, mut page) = self.scan(next, pattern.unwrap_or_default()).await?;
                    keys.append(&mut page);
                    next = after;
                    if next == 0 || keys.len() as u64 >= count.unwrap_or(10) {
                        break;
                    }
                }
                let mut out = Vec::new();
                let reply = hotshard_net::resp::reply::array_header;
                reply(&mut out, 2);
                hotshard_net::resp::reply::bulk(&mut out, next.to_string().as_bytes());
                reply(&mut out, keys.len());
                for k in &keys {
                    hotshard_net::resp::reply::bulk(&mut out, k);
                }
                RespReply::Raw(out)
            }
            C::Keys(pattern) => {
                // A listing may list a key twice (on a map change): twice the limit.
                let keys = self
                    .all_keys(pattern, Some(self.cfg.keys_limit.saturating_mul(2)))
                    .await?;
                if keys.len() as u64 > self.cfg.keys_limit {
                    return Err(format!(
                        "ERR KEYS is refused past {} keys (resp.keys_limit): use SCAN",
                        self.cfg.keys_limit
                    ));
                }
                let mut out = Vec::new();
                hotshard_net::resp::reply::array_header(&mut out, keys.len());
                for k in &keys {
                    hotshard_net::resp::reply::bulk(&mut out, k);
                }
                RespReply::Raw(out)
            }
            C::FlushAll(db) => {
                if !self.cfg.allow_flushall {
                    return Err(format!(
                        "ERR {} is off on this node (set resp.allow_flushall = true to allow it)",
                        if db { "FLUSHDB" } else { "FLUSHALL" }
                    ));
                }
                for k in self.all_keys(b"", None).await? {
                    self.delete(&k, None).await?;
                }
                RespReply::ok()
            }
            C::Info(section) => RespReply::bulk_bytes(self.info(section).await.as_bytes()),
            other => self.run_more(other).await?,
        })
    }

    /// The commands of issue 32: the rest of Redis's string and keyspace commands.
    async fn run_more(&self, c: RespCommand<'_>) -> Result<R, String> {
        use RespCommand as C;
        let limit = self.shard.store.config().max_value_bytes;
        Ok(match c {
            C::SetNx(k, v) => RespReply::integer(self.set_if_absent(k, v).await?),
            C::MSetNx(pairs) => {
                // All or none: atomic only when every pair names the same key (one
                // conditional write at its head). Keys of several chains would need a
                // write across chains, which the node does not have: refused as Redis
                // Cluster refuses keys of several slots.
                let (k, v) = pairs[pairs.len() - 1];
                if pairs.iter().any(|(other, _)| *other != k) {
                    return Err(CROSSSLOT.into());
                }
                RespReply::integer(self.set_if_absent(k, v).await?)
            }
            C::SetRange(k, offset, v) => {
                if !v.is_empty() {
                    let end = offset.saturating_add(v.len() as u64);
                    if end > REDIS_MAX_STRING {
                        return Err("ERR string exceeds maximum allowed size (proto-max-bulk-len)".into());
                    }
                    if end > limit as u64 {
                        return Err(format!("ERR {}", crate::key_update::too_long(limit)));
                    }
                }
                let op = UpdateOp::SetRange { offset };
                RespReply::integer(self.update(k, op, Some(Val::Bytes(v))).await?.0)
            }
            C::IncrByFloat(k, by) => {
                let (_, v) = self
                    .update(k, UpdateOp::IncrByFloat, Some(Val::Bytes(by)))
                    .await?;
                RespReply::Bulk(v.unwrap_or(OutBuf::Bytes(Vec::new())))
            }
            C::SetBit(k, offset, bit) => {
                if offset >> 3 >= limit as u64 {
                    return Err(format!("ERR {}", crate::key_update::too_long(limit)));
                }
                RespReply::integer(self.update(k, UpdateOp::SetBit { offset, bit }, None).await?.0)
            }
            C::GetBit(k, offset) => {
                let byte = self
                    .read_range(k, |len| (offset >> 3 < len).then_some((offset >> 3, 1)))
                    .await?;
                let bit =
                    byte.is_some_and(|b| !b.as_ref().is_empty() && strings::getbit(b.as_ref(), offset & 7));
                RespReply::integer(i64::from(bit))
            }
            C::BitCount(k, range) => RespReply::integer(match self.get(k).await? {
                Some((v, _)) => strings::bitcount(v.as_ref(), range),
                None => 0,
            }),
            C::BitPos(k, bit, range) => RespReply::integer(match self.get(k).await? {
                None => {
                    if bit {
                        -1
                    } else {
                        0
                    }
                }
                Some((v, _)) => {
                    let (start, end, unit) = hotshard_net::resp::command::bitpos_range(&range)?;
                    strings::bitpos(v.as_ref(), bit, start, end, unit)
                }
            }),
            C::Lcs(a, b, how) => self.lcs(a, b, how).await?,
            C::ExpireTime(k, millis) => RespReply::integer(match self.stat(k).await? {
                None => -2,
                Some((_, 0)) => -1,
                Some((_, at)) if millis => at as i64,
                Some((_, at)) => (at / 1000) as i64,
            }),
            C::Time => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default();
                let mut out = Vec::new();
                hotshard_net::resp::reply::array_header(&mut out, 2);
                hotshard_net::resp::reply::bulk(&mut out, now.as_secs().to_string().as_bytes());
                hotshard_net::resp::reply::bulk(&mut out, now.subsec_micros().to_string().as_bytes());
                RespReply::Raw(out)
            }
            C::RandomKey => match self.random_key().await? {
                Some(k) => RespReply::bulk_bytes(&k),
                None => RespReply::null(),
            },
            C::Rename(src, dst, nx) => {
                if self.stat(src).await?.is_none() {
                    return Err("ERR no such key".into());
                }
                if src != dst {
                    // Atomic only within one chain, and the node has no write of two keys
                    // at once: refused as Redis Cluster refuses keys of two slots.
                    return Err(CROSSSLOT.into());
                }
                if nx {
                    RespReply::integer(0)
                } else {
                    RespReply::ok()
                }
            }
            C::Copy(src, dst, _replace) => {
                if src == dst {
                    return Err("ERR source and destination objects are the same".into());
                }
                if self.stat(src).await?.is_none() {
                    return Ok(RespReply::integer(0));
                }
                return Err(CROSSSLOT.into());
            }
            C::ObjectEncoding(k) => match self.get(k).await? {
                Some((v, _)) => RespReply::bulk_bytes(strings::object_encoding(v.as_ref()).as_bytes()),
                None => RespReply::null(),
            },
            C::ConfigGet(patterns) => self.config_get(&patterns),
            C::ConfigSet(pairs) => {
                let (name, _) = pairs[0];
                let known = self
                    .config_table()
                    .into_iter()
                    .any(|(n, _)| name.eq_ignore_ascii_case(n.as_bytes()));
                return Err(if known {
                    format!(
                        "ERR CONFIG SET is not supported: '{}' is fixed by the node's configuration file",
                        String::from_utf8_lossy(name)
                    )
                } else {
                    format!(
                        "ERR Unknown option or number of arguments for CONFIG SET - '{}'",
                        String::from_utf8_lossy(name)
                    )
                });
            }
            C::Wait(..) => RespReply::integer(self.replicas_with_every_write()),
            // The connection answers the rest itself.
            _ => return Err("ERR internal error: a connection command reached the store".into()),
        })
    }

    /// SETNX: `key` set to `value` only if it has none, at its head; 1 if it was.
    async fn set_if_absent(&self, key: &[u8], value: &[u8]) -> Result<i64, String> {
        let op = UpdateOp::Set {
            only_if: 1,
            get: false,
            expires_ms: 0,
            keep_ttl: false,
        };
        Ok(self.update(key, op, Some(Val::Bytes(value))).await?.0)
    }

    /// LCS of two keys' values (absent: empty), each read once; the sizes are checked
    /// (Stat) before either is read. The two reads are not one snapshot.
    async fn lcs(&self, a: &[u8], b: &[u8], how: LcsReply) -> Result<R, String> {
        let len = |s: Option<(u64, u64)>| s.map_or(0, |(l, _)| l);
        let (alen, blen) = (len(self.stat(a).await?), len(self.stat(b).await?));
        if (alen + 1).saturating_mul(blen + 1) > strings::LCS_MAX_CELLS {
            return Err(strings::lcs_too_large());
        }
        // Copied out before the next read: no two device buffers held at once.
        let read = |k: &'_ [u8]| {
            let k = k.to_vec();
            async move {
                Ok::<_, String>(
                    self.get(&k)
                        .await?
                        .map_or_else(Vec::new, |(v, _)| v.as_ref().to_vec()),
                )
            }
        };
        let (va, vb) = (read(a).await?, read(b).await?);
        use hotshard_net::resp::reply;
        let mut out = Vec::new();
        match strings::lcs(&va, &vb, how)? {
            strings::LcsAnswer::String(s) => reply::bulk(&mut out, &s),
            strings::LcsAnswer::Len(n) => reply::integer(&mut out, n),
            strings::LcsAnswer::Idx(matches, total) => {
                let with_len = matches!(
                    how,
                    LcsReply::Idx {
                        with_match_len: true,
                        ..
                    }
                );
                let mut parts = vec![RespReply::MapHeader(2)];
                reply::bulk(&mut out, b"matches");
                reply::array_header(&mut out, matches.len());
                for m in matches {
                    reply::array_header(&mut out, 2 + usize::from(with_len));
                    for (x, y) in [m.a, m.b] {
                        reply::array_header(&mut out, 2);
                        reply::integer(&mut out, x as i64);
                        reply::integer(&mut out, y as i64);
                    }
                    if with_len {
                        reply::integer(&mut out, m.len as i64);
                    }
                }
                reply::bulk(&mut out, b"len");
                reply::integer(&mut out, total);
                parts.push(RespReply::Raw(out));
                return Ok(RespReply::Many(parts));
            }
        }
        Ok(RespReply::Raw(out))
    }

    /// A key picked at random: a SCAN from a random partition on, round to where it began;
    /// None when the store is empty.
    async fn random_key(&self) -> Result<Option<Vec<u8>>, String> {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(hotshard_store::index::now_ms());
        let seed = h.finish();
        let total = 1u64 << self.shard.map.borrow().partition_bits;
        let first = seed % total;
        let mut cursor = scan_cursor(first, 0);
        let mut wrapped = false;
        loop {
            let (next, keys) = self.scan(cursor, b"").await?;
            if !keys.is_empty() {
                return Ok(Some(keys[(seed >> 20) as usize % keys.len()].clone()));
            }
            if next == 0 {
                if wrapped || first == 0 {
                    return Ok(None);
                }
                wrapped = true;
            }
            cursor = next;
            if wrapped && from_scan_cursor(cursor).0 >= first {
                return Ok(None);
            }
        }
    }

    /// What CONFIG GET shows: a read-only view of what applies on this node.
    fn config_table(&self) -> Vec<(&'static str, String)> {
        vec![
            ("appendfsync", "always".into()),
            ("appendonly", "yes".into()),
            ("databases", "1".into()),
            ("maxmemory", "0".into()),
            ("maxmemory-policy", "noeviction".into()),
            ("port", self.port.to_string()),
            (
                "proto-max-bulk-len",
                self.shard.store.config().max_value_bytes.to_string(),
            ),
            ("save", String::new()),
        ]
    }

    /// CONFIG GET: every parameter that one of `patterns` matches (case-insensitive, each
    /// once), as a map.
    fn config_get(&self, patterns: &[&[u8]]) -> R {
        let table = self.config_table();
        let picked: Vec<&(&str, String)> = table
            .iter()
            .filter(|(name, _)| {
                patterns
                    .iter()
                    .any(|p| hotshard_net::resp::glob::glob_match(&p.to_ascii_lowercase(), name.as_bytes()))
            })
            .collect();
        let mut out = Vec::new();
        for (name, value) in &picked {
            hotshard_net::resp::reply::bulk(&mut out, name.as_bytes());
            hotshard_net::resp::reply::bulk(&mut out, value.as_bytes());
        }
        RespReply::Many(vec![RespReply::MapHeader(picked.len()), RespReply::Raw(out)])
    }

    /// WAIT's answer: how many replicas besides the head hold every acknowledged write. A
    /// write is acknowledged only once every serving replica of its chain has it, so this
    /// is the fewest serving replicas of any chain, less the head (0 on a single node).
    fn replicas_with_every_write(&self) -> i64 {
        let map = self.shard.map.borrow();
        (0..1u32 << map.partition_bits)
            .filter_map(|p| map.chain(p))
            .map(|c| {
                c.replicas
                    .iter()
                    .filter(|r| r.state == hotshard_placement::ReplicaState::Serving)
                    .count() as i64
                    - 1
            })
            .min()
            .unwrap_or(0)
            .max(0)
    }

    /// SET: a plain write (with its expiry, or none), or with NX / XX / GET / KEEPTTL an
    /// update at the key's head.
    async fn set(
        &self,
        key: &[u8],
        value: Val<'_>,
        cond: SetIf,
        get: bool,
        expires_ms: u64,
        keep_ttl: bool,
    ) -> Result<R, String> {
        if let (SetIf::Always, false, false) = (cond, get, keep_ttl) {
            self.put(key, value, None, expires_ms).await?;
            return Ok(RespReply::ok());
        }
        let only_if = match cond {
            SetIf::Always => 0,
            SetIf::Absent => 1,
            SetIf::Present => 2,
        };
        let (stored, old) = self
            .update(
                key,
                UpdateOp::Set {
                    only_if,
                    get,
                    expires_ms,
                    keep_ttl,
                },
                Some(value),
            )
            .await?;
        Ok(match (get, old) {
            (true, Some(v)) => RespReply::Bulk(v),
            (true, None) => RespReply::null(),
            (false, _) if stored == 1 => RespReply::ok(),
            (false, _) => RespReply::null(),
        })
    }

    /// A read-modify-write at the key's head (`key_update`): its result and the old value
    /// where the op gives it back.
    async fn update(
        &self,
        key: &[u8],
        op: UpdateOp,
        value: Option<Val<'_>>,
    ) -> Result<(i64, Option<OutBuf>), String> {
        let request = Request::Update {
            key: key.to_vec(),
            target: self.target(key),
            op,
        };
        let reply = self
            .native(request, value.or(op.carries_value().then_some(Val::Bytes(&[]))))
            .await;
        match reply.response.status() {
            Status::Ok => {
                // The old value (SET GET, GETDEL, GETEX) when there was one, or what the
                // op wrote (INCRBYFLOAT).
                let old = (reply.response.version > 0 || reply.payload.is_some())
                    .then(|| reply.payload.unwrap_or(OutBuf::Bytes(Vec::new())));
                Ok((reply.response.arg as i64, old))
            }
            Status::Busy => Err(CONTENDED.into()),
            s => Err(status_error(&s)),
        }
    }

    /// One of a local shard's listings (or a remote node's): the keys, how many of
    /// `partitions` they cover, and where the first one not covered resumes (0: its start).
    async fn list(
        &self,
        server: Server,
        partitions: Vec<u32>,
        pattern: &[u8],
        from_hash: u64,
    ) -> Result<(Vec<Vec<u8>>, usize, u64), String> {
        let request = Request::ListKeys {
            partitions,
            pattern: pattern.to_vec(),
            from_hash,
        };
        let h = &self.shard;
        let (response, body): (Response, Vec<u8>) = match server {
            Server::Shard(s) if s == h.shard => {
                let reply = h.answer_control(request);
                let body = reply.payload.map(|p| p.as_ref().to_vec()).unwrap_or_default();
                (reply.response, body)
            }
            Server::Shard(s) => h
                .peers
                .forward(s, request, None)
                .await
                .ok_or_else(|| status_error(&Status::Busy))?,
            Server::Node(addr) => h
                .links
                .call(&addr, &request, &[], h.answer_wait)
                .await
                .map_err(|_| status_error(&Status::Busy))?,
        };
        match response.status() {
            Status::Ok => {
                let keys = decode_keys(&body).ok_or("ERR a malformed key listing")?;
                Ok((keys, response.arg as usize, response.version))
            }
            s => Err(status_error(&s)),
        }
    }

    /// SCAN from `cursor` (`scan_cursor`: a partition, and where in it; 0 at the start and
    /// at the end): the next span of partitions, each listed whole (a large one in pages
    /// in the order of `list_hash`) by a shard that serves it, so a key present for the
    /// whole scan is returned at least once whatever is written meanwhile.
    async fn scan(&self, cursor: u64, pattern: &[u8]) -> Result<(u64, Vec<Vec<u8>>), String> {
        let (cursor, from_hash) = from_scan_cursor(cursor);
        let (total, groups) = {
            let map = self.shard.map.borrow();
            let total = 1u64 << map.partition_bits;
            if cursor >= total {
                return Ok((0, Vec::new()));
            }
            let end = (cursor + SCAN_SPAN as u64).min(total) as u32;
            let mut groups: Vec<(Server, Vec<u32>)> = Vec::new();
            for p in cursor as u32..end {
                let server = match crate::chain_view::local_replica(&map, p, self.shard.node_id) {
                    Some(s) => Server::Shard(s),
                    None => match map.reader(p, 0) {
                        Some(o) => Server::Node(o.addr.clone()),
                        None => return Err(status_error(&Status::Busy)),
                    },
                };
                match groups.iter_mut().find(|(s, _)| *s == server) {
                    Some((_, ps)) => ps.push(p),
                    None => groups.push((server, vec![p])),
                }
            }
            (total, groups)
        };
        let mut next = groups
            .iter()
            .flat_map(|(_, ps)| ps.last().copied())
            .max()
            .map_or((total, 0), |p| (p as u64 + 1, 0));
        let mut keys = Vec::new();
        for (server, partitions) in groups {
            // The cursor's partition is the first of its server's.
            let from = match partitions.first() {
                Some(&p) if p as u64 == cursor => from_hash,
                _ => 0,
            };
            let (mut listed, done, resume) = self.list(server, partitions.clone(), pattern, from).await?;
            // A listing covers at least its first partition, or part of it (`resume`).
            let left = if resume > 0 { done } else { done.max(1) };
            if let Some(&first_left) = partitions.get(left) {
                let here = (first_left as u64, if left == done { resume } else { 0 });
                next = next.min(here);
            }
            keys.append(&mut listed);
        }
        let (p, resume) = next;
        Ok((if p >= total { 0 } else { scan_cursor(p, resume) }, keys))
    }

    /// Every key matching `pattern` (KEYS, FLUSHALL): a whole SCAN, each key once; with
    /// `limit`, an error as soon as more keys than that were listed (KEYS, before it has
    /// gathered the cluster's keys: the guard counts what it lists, not what one node
    /// holds).
    async fn all_keys(&self, pattern: &[u8], limit: Option<u64>) -> Result<Vec<Vec<u8>>, String> {
        let (mut cursor, mut keys) = (0, Vec::new());
        loop {
            let (next, mut page) = self.scan(cursor, pattern).await?;
            keys.append(&mut page);
            if let Some(limit) = limit.filter(|&l| keys.len() as u64 > l) {
                return Err(format!(
                    "ERR KEYS is refused past {limit} keys (resp.keys_limit): use SCAN"
                ));
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
        keys.sort_unstable();
        keys.dedup();
        Ok(keys)
    }

    /// A counter or gauge summed over this node's shards.
    async fn node_metric(&self, name: &str) -> u64 {
        let text = crate::admin::all_metrics(&self.shard, self.shards).await;
        sum_metric(&text, name)
    }

    async fn info(&self, section: Option<&[u8]>) -> String {
        let text = crate::admin::all_metrics(&self.shard, self.shards).await;
        let m = |name: &str| sum_metric(&text, name);
        let want = section.map(|s| String::from_utf8_lossy(s).to_ascii_lowercase());
        let show = |s: &str| match want.as_deref() {
            None | Some("all") | Some("default") | Some("everything") => true,
            Some(w) => w == s,
        };
        let mut out = String::new();
        if show("server") {
            out.push_str(&format!(
                "# Server\r\nredis_version:7.0.0\r\nhotshard_version:{}\r\nredis_mode:standalone\r\n\
                 os:Linux\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\
                 hotshard_shards:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                self.port,
                self.started.elapsed().as_secs(),
                self.shards
            ));
        }
        if show("clients") {
            out.push_str(&format!(
                "# Clients\r\nconnected_clients:{}\r\n\r\n",
                m("hotshard_resp_connections_open")
            ));
        }
        if show("memory") {
            out.push_str(&format!(
                "# Memory\r\nused_memory:{}\r\nhotshard_index_bytes:{}\r\nhotshard_cache_bytes:{}\r\n\r\n",
                m("hotshard_index_bytes") + m("hotshard_cache_bytes"),
                m("hotshard_index_bytes"),
                m("hotshard_cache_bytes")
            ));
        }
        if show("persistence") {
            out.push_str(&format!(
                "# Persistence\r\nloading:0\r\naof_enabled:0\r\nrdb_bgsave_in_progress:0\r\n\
                 hotshard_durability:every write is on the device ({}) before it is acknowledged\r\n\r\n",
                self.durability
            ));
        }
        if show("stats") {
            out.push_str(&format!(
                "# Stats\r\ntotal_connections_received:{}\r\ntotal_commands_processed:{}\r\n\
                 keyspace_hits:{}\r\nkeyspace_misses:{}\r\n\r\n",
                m("hotshard_resp_connections_total"),
                m("hotshard_resp_commands_total"),
                m("hotshard_cache_hits_total"),
                m("hotshard_cache_misses_total")
            ));
        }
        if show("keyspace") {
            out.push_str("# Keyspace\r\n");
            let keys = m("hotshard_objects");
            if keys > 0 {
                out.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
            }
        }
        out
    }
}

/// Whether another node answers `partition` (as `route` decides it, without hashing the
/// key again: the partition came from the same hash): no serving replica here for a read,
/// and the head elsewhere.
fn elsewhere(map: &hotshard_placement::ShardMap, node_id: u32, partition: u32, reads: bool) -> bool {
    if reads && crate::chain_view::local_replica(map, partition, node_id).is_some() {
        return false;
    }
    answered_by(map, partition, reads).is_some_and(|o| o.node != node_id)
}

/// Where `partition`'s reads (a serving replica) or writes (the head, which may be a
/// leaving one that answers no reads) go.
fn answered_by(
    map: &hotshard_placement::ShardMap,
    partition: u32,
    reads: bool,
) -> Option<&hotshard_placement::ShardAddr> {
    if reads {
        map.reader(partition, 0)
    } else {
        map.owner(partition)
    }
}

/// A value for a write: bytes of a command, or a buffer the connection received it into.
enum Val<'a> {
    Bytes(&'a [u8]),
    Received(PutPayload),
}

impl Val<'_> {
    fn len(&self) -> usize {
        match self {
            Val::Bytes(b) => b.len(),
            Val::Received(p) => p.len(),
        }
    }

    fn bytes(&self) -> &[u8] {
        match self {
            Val::Bytes(b) => b,
            Val::Received(p) => p.as_ref(),
        }
    }
}

/// Who lists a partition's keys: a shard of this node, or another node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Server {
    Shard(usize),
    Node(String),
}

/// An expiry as a request carries it: Unix milliseconds, or for EX and PX milliseconds
/// from when the key's chain head takes it (`hotshard_net::expiry`: the head's clock
/// decides, not this node's). None past what a record holds (by this node's clock).
fn expiry_ms(e: Expiry) -> Option<u64> {
    let now = hotshard_store::index::now_ms();
    let (field, at) = match e {
        Expiry::In(s) => {
            let ms = s.checked_mul(1000)?;
            (hotshard_net::expiry::expires_in(ms), ms.checked_add(now)?)
        }
        Expiry::InMillis(ms) => (hotshard_net::expiry::expires_in(ms), ms.checked_add(now)?),
        Expiry::At(s) => {
            let at = s.checked_mul(1000)?;
            (at, at)
        }
        Expiry::AtMillis(ms) => (ms, ms),
    };
    (at <= hotshard_store::format::MAX_EXPIRES_MS).then_some(field)
}
const CONTENDED: &str = "TRYAGAIN the node is busy, or other writes of the key kept coming first; retry";

/// Redis Cluster's refusal of a command whose keys are in different slots: what a
/// command on several keys gets here when it would have to be atomic across them.
const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// Redis's largest string (proto-max-bulk-len's default, 512 MiB).
const REDIS_MAX_STRING: u64 = 512 << 20;

/// `name`'s samples summed (every label set) in Prometheus text.
pub fn sum_metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

impl<Q: BlockQueue + 'static> RespHandler for RespFront<Q> {
    type Out = OutBuf;
    type In = PutPayload;

    /// A DMA buffer of this shard's pool for the value of a key it writes itself (no
    /// replicas to pass it to): the batch writes it from there. None otherwise, or when
    /// the pool has no room now (the value then comes through the read buffer).
    fn value_buffer(&self, key: &[u8], len: usize) -> Option<PutPayload> {
        let h = &self.shard;
        if len > h.store.config().max_value_bytes {
            return None;
        }
        let partition = h.map.borrow().partition(key);
        let mine = {
            let map = h.map.borrow();
            crate::route::owns(&map, h.node_id, h.shard, partition)
                && !crate::route::has_replicas(&map, partition)
        };
        mine.then(|| h.store.value_buffer(len))
            .flatten()
            .map(PutPayload::InPlace)
    }

    fn value_received(&self, buffered: usize, direct: usize) {
        hotshard_net::server::Handler::payload_received(&*self.shard, buffered, direct);
    }

    fn secret(&self) -> Option<&[u8]> {
        self.shard.secret.as_deref()
    }

    /// A GET of a key this shard serves, cached or absent (`read_at_once`).
    fn answer_at_once(&self, name: &'static str, command: &OwnedCommand<PutPayload>) -> Option<R> {
        if name != "GET" || command.arg_count() != 2 {
            return None;
        }
        let key = command.arg(1)?;
        if key.len() > hotshard_net::limits::MAX_KEY_BYTES {
            return None;
        }
        let reply = self.shard.read_at_once(key)?;
        let answer = match reply.response.status() {
            Status::Ok => RespReply::Bulk(reply.payload.unwrap_or(OutBuf::Bytes(Vec::new()))),
            Status::NotFound => RespReply::null(),
            s => RespReply::error(&status_error(&s)),
        };
        self.count(name, !matches!(answer, RespReply::Raw(_)));
        Some(answer)
    }

    async fn call(self: Rc<Self>, mut command: OwnedCommand<PutPayload>) -> R {
        let received = command.take_value();
        let reply = match command.parse() {
            Ok(c) => match self.run(c, received).await {
                Ok(r) => r,
                Err(e) => RespReply::error(&e),
            },
            Err(e) => RespReply::error(&e),
        };
        let failed = matches!(&reply, RespReply::Raw(b) if b.first() == Some(&b'-'));
        self.count(command.name(), !failed);
        reply
    }

    fn count(&self, name: &'static str, ok: bool) {
        self.shard.stats.count_resp(name, ok);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_cursors_name_a_partition_and_a_place_in_it() {
        for (p, h) in [
            (0, 0),
            (5, 0),
            (65_535, 0),
            (0, 1),
            (7, 12_345),
            (65_535, (1 << 47) - 1),
        ] {
            let c = scan_cursor(p, h);
            assert_eq!(from_scan_cursor(c), (p, h), "cursor {c}");
            assert_eq!(c == 0, p == 0 && h == 0, "0 only for the start");
        }
    }

    #[test]
    fn metrics_are_summed_over_label_sets() {
        let text = "hotshard_objects{shard=\"0\"} 3\nhotshard_objects{shard=\"1\"} 4\nhotshard_objects_x 9\n";
        assert_eq!(sum_metric(text, "hotshard_objects"), 7);
        assert_eq!(sum_metric(text, "missing"), 0);
    }
}
