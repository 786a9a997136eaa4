//! A shard's answer to `ListKeys` (SCAN and KEYS on the RESP front): the live keys of the
//! partitions it is asked for, filtered by a glob pattern, in one walk of its index.
//! Refused (WrongShard) unless the shard serves every one of those partitions by its map,
//! so that a replica a chain has dropped (which keeps its old data) is never listed.

use hotshard_net::resp::glob::glob_match;
use hotshard_net::server::Reply;
use hotshard_net::{Response, Status};
use hotshard_nvme::BlockQueue;

use crate::route::{serves, store_partition};
use crate::shard_handler::{OutBuf, ShardHandler};

/// A listing stops taking whole partitions once its keys pass this many bytes.
pub const LIST_SOFT_BYTES: usize = 1 << 20;
/// No listing passes this (one partition alone may hold more: it is cut here).
pub const LIST_HARD_BYTES: usize = hotshard_net::limits::MAX_PAYLOAD_BYTES;

/// Keys as a listing's payload: each a 2-byte little-endian length and its bytes.
pub fn encode_keys(keys: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| k.len() + 2).sum());
    for k in keys {
        if out.len() + k.len() + 2 > LIST_HARD_BYTES {
            break;
        }
        out.extend_from_slice(&(k.len() as u16).to_le_bytes());
        out.extend_from_slice(k);
    }
    out
}

/// The keys of a listing's payload; None if it is malformed.
pub fn decode_keys(mut b: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut keys = Vec::new();
    while !b.is_empty() {
        let len = u16::from_le_bytes([*b.first()?, *b.get(1)?]) as usize;
        let key = b.get(2..2 + len)?;
        keys.push(key.to_vec());
        b = &b[2 + len..];
    }
    Some(keys)
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    pub(crate) fn answer_list_keys(&self, partitions: &[u32], pattern: &[u8]) -> Reply<OutBuf> {
        if let Some(busy) = self.fenced_reply() {
            return busy;
        }
        let mut local = Vec::with_capacity(partitions.len());
        {
            let map = self.map.borrow();
            for &p in partitions {
                if !serves(&map, self.node_id, self.shard, p) {
                    drop(map);
                    return self.wrong_shard();
                }
                match store_partition(p) {
                    Ok(p) => local.push(p),
                    Err(status) => return Reply::status(status),
                }
            }
        }
        let keep = |k: &[u8]| pattern.is_empty() || glob_match(pattern, k);
        let (keys, done) = self.store.keys_of_partitions(&local, keep, LIST_SOFT_BYTES);
        let mut response = Response::new(Status::Ok);
        response.arg = done as u64;
        Reply {
            response,
            payload: Some(OutBuf::Bytes(encode_keys(&keys))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_bad_payloads_are_refused() {
        let keys = vec![b"a".to_vec(), Vec::new(), vec![7u8; 300]];
        assert_eq!(decode_keys(&encode_keys(&keys)), Some(keys));
        assert_eq!(decode_keys(&[5, 0, b'a']), None);
        assert_eq!(decode_keys(&[5]), None);
        assert_eq!(decode_keys(&[]), Some(Vec::new()));
    }
}
