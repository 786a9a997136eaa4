//! A shard's answer to `Update` (RESP's INCR, INCRBYFLOAT, APPEND, SETRANGE, SETBIT, SET
//! with NX/XX/GET, GETDEL, EXPIRE): at
//! the key's head, one update of a key at a time (the next waits for the one running),
//! each a read and then a write conditional on the version read, down the key's chain
//! when it has one. A plain write of the key that lands in between makes the conditional
//! write fail, and the update reads again. Run anywhere else, the same read and write
//! were fair to nobody: a client whose requests crossed shards lost every race to the
//! clients of the owning shard (measured: 250 of 1,000 increments refused after 64 tries).

use std::rc::Rc;

use hotshard_net::server::Reply;
use hotshard_net::{Request, Response, Status, Target, UpdateOp};
use hotshard_nvme::BlockQueue;

use crate::put_payload::PutPayload;
use crate::shard_handler::{OutBuf, ShardHandler};

/// Reads and writes before an update gives up (plain writes of the key kept landing
/// between them): answered Busy.
const TRIES: usize = 64;

/// Redis's reading of a value as an integer (`string2ll`): a decimal i64, no spaces, no
/// '+', no leading zero.
pub fn as_integer(v: &[u8]) -> Option<i64> {
    hotshard_net::resp::command::strict_integer(v)
}

/// The error for a value that would pass the node's value limit (Redis's text names its
/// own limit, proto-max-bulk-len).
pub fn too_long(limit: usize) -> String {
    format!("string exceeds maximum allowed size (this node's value limit of {limit} bytes)")
}

fn bad(reason: &str) -> Reply<OutBuf> {
    Reply::status(Status::BadRequest {
        reason: reason.to_string(),
    })
}

fn answer(arg: i64, old_version: u64, old: Option<OutBuf>) -> Reply<OutBuf> {
    let mut response = Response::new(Status::Ok);
    response.arg = arg as u64;
    response.version = old_version;
    Reply {
        response,
        payload: old,
    }
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// Waits until no other update of `key` runs here, then holds the key until the guard
    /// is dropped.
    async fn hold_key(&self, key: &[u8]) -> crate::dirty_keys::DirtyGuard {
        loop {
            self.updating.clean(key).await;
            // Nothing awaits between the check and the mark: no other task runs here.
            if !self.updating.is_dirty(key) {
                return self.updating.mark(key);
            }
        }
    }

    pub(crate) async fn answer_update(
        self: &Rc<Self>,
        key: Vec<u8>,
        target: Target,
        op: UpdateOp,
        payload: Option<PutPayload>,
    ) -> Reply<OutBuf> {
        let value = payload.map(PutPayload::into_vec).unwrap_or_default();
        let op = crate::chain_expiry::update_at_head(op);
        let _held = self.hold_key(&key).await;
        for _ in 0..TRIES {
            let read = Request::Get {
                key: key.clone(),
                range: None,
                target,
            };
            let got = self.execute(read, None).await;
            let (old, version, old_expiry) = match got.response.status() {
                Status::Ok => (
                    Some(got.payload.unwrap_or(OutBuf::Bytes(Vec::new()))),
                    got.response.version,
                    got.response.expires_ms,
                ),
                Status::NotFound => (None, 0, 0),
                s => return Reply::status(s),
            };
            // What to write (None: a delete), with which expiry, and the answer once it is
            // written. INCR and APPEND keep the key's expiry, as Redis's do.
            let mut expires_ms = old_expiry;
            let (new, arg) = match op {
                UpdateOp::IncrBy(by) => {
                    let n = match &old {
                        Some(v) => match as_integer(v.as_ref()) {
                            Some(n) => n,
                            None => return bad("value is not an integer or out of range"),
                        },
                        None => 0,
                    };
                    let Some(n) = n.checked_add(by) else {
                        return bad("increment or decrement would overflow");
                    };
                    (Some(n.to_string().into_bytes()), n)
                }
                UpdateOp::Append => {
                    let mut v = old.as_ref().map_or_else(Vec::new, |o| o.as_ref().to_vec());
                    v.extend_from_slice(&value);
                    let len = v.len() as i64;
                    (Some(v), len)
                }
                UpdateOp::Set {
                    only_if,
                    get,
                    expires_ms: at,
                    keep_ttl,
                } => {
                    let proceed = match only_if {
                        1 => old.is_none(),
                        2 => old.is_some(),
                        _ => true,
                    };
                    if !proceed {
                        return answer(0, version, old.filter(|_| get));
                    }
                    if !keep_ttl {
                        expires_ms = at;
                    }
                    (Some(value.clone()), 1)
                }
                UpdateOp::Expire { at_ms, cond, get } => {
                    let Some(v) = &old else {
                        return answer(0, 0, None);
                    };
                    let applies = match cond {
                        1 => old_expiry == 0,
                        2 => old_expiry != 0,
                        3 => old_expiry != 0 && at_ms > old_expiry,
                        4 => old_expiry == 0 || at_ms < old_expiry,
                        5 => old_expiry != 0 && at_ms < old_expiry,
                        _ => true,
                    };
                    if !applies || (at_ms == 0 && old_expiry == 0) {
                        return answer(0, version, old.filter(|_| get));
                    }
                    expires_ms = at_ms;
                    if at_ms != 0 && at_ms <= hotshard_store::index::now_ms() {
                        (None, 1)
                    } else {
                        (Some(v.as_ref().to_vec()), 1)
                    }
                }
                UpdateOp::GetDel => {
                    if old.is_none() {
                        return answer(0, 0, None);
                    }
                    (None, 1)
                }
                UpdateOp::SetRange { offset } => {
                    let was = old.as_ref().map_or(&[][..], |o| o.as_ref());
                    if value.is_empty() {
                        return answer(was.len() as i64, version, None);
                    }
                    // Checked before the value is built: the offset is the client's.
                    let limit = self.store.config().max_value_bytes;
                    match offset.checked_add(value.len() as u64) {
                        Some(end) if end <= limit as u64 => {}
                        _ => return bad(&too_long(limit)),
                    }
                    let v = crate::redis_strings::setrange(was, offset as usize, &value);
                    let len = v.len() as i64;
                    (Some(v), len)
                }
                UpdateOp::SetBit { offset, bit } => {
                    let limit = self.store.config().max_value_bytes;
                    if (offset >> 3) >= limit as u64 {
                        return bad(&too_long(limit));
                    }
                    let was = old.as_ref().map_or(&[][..], |o| o.as_ref());
                    let (v, was_set) = crate::redis_strings::setbit(was, offset, bit);
                    (Some(v), i64::from(was_set))
                }
                UpdateOp::IncrByFloat => {
                    match crate::redis_strings::incrbyfloat(old.as_ref().map(|o| o.as_ref()), &value) {
                        Ok(v) => {
                            let len = v.len() as i64;
                            (Some(v), len)
                        }
                        Err(reason) => return bad(reason),
                    }
                }
            };
            // INCRBYFLOAT answers with what it wrote.
            let written = matches!(op, UpdateOp::IncrByFloat).then(|| new.clone()).flatten();
            let write = match new {
                Some(v) => {
                    let put = Request::Put {
                        key: key.clone(),
                        if_version: Some(version),
                        target,
                        expires_ms,
                    };
                    self.execute(put, Some(PutPayload::Heap(v))).await
                }
                None => {
                    let delete = Request::Delete {
                        key: key.clone(),
                        if_version: Some(version),
                        target,
                    };
                    self.execute(delete, None).await
                }
            };
            match write.response.status() {
                Status::Ok => {
                    let give_back = match op {
                        UpdateOp::Set { get, .. } | UpdateOp::Expire { get, .. } => get,
                        UpdateOp::GetDel => true,
                        _ => false,
                    };
                    if let Some(v) = written {
                        return answer(arg, version, Some(OutBuf::Bytes(v)));
                    }
                    return answer(arg, version, old.filter(|_| give_back));
                }
                Status::VersionMismatch { .. } | Status::NotFound => continue,
                s => return Reply::status(s),
            }
        }
        Reply::status(Status::Busy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integers_read_as_redis_reads_them() {
        assert_eq!(as_integer(b"42"), Some(42));
        assert_eq!(as_integer(b"-7"), Some(-7));
        assert_eq!(as_integer(b"+7"), None);
        assert_eq!(as_integer(b" 7"), None);
        assert_eq!(as_integer(b""), None);
        assert_eq!(as_integer(b"9223372036854775808"), None);
        assert_eq!(as_integer(b"007"), None);
        assert_eq!(as_integer(b"-0"), None);
    }
}
