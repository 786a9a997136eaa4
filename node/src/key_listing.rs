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

/// A listing stops taking whole partitions once its keys pass this many bytes, and a
/// partition whose keys alone pass it is listed in pages of about this size.
pub const LIST_SOFT_BYTES: usize = 1 << 20;
/// No listing passes this (the payload limit).
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
    pub(crate) fn answer_list_keys(
        &self,
        partitions: &[u32],
        pattern: &[u8],
        from_hash: u64,
    ) -> Reply<OutBuf> {
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
        let groups = self.store.keys_by_partition(&local, keep);
        let page = page_of(groups, from_hash, LIST_SOFT_BYTES);
        let mut response = Response::new(Status::Ok);
        response.arg = page.done as u64;
        response.version = page.resume;
        Reply {
            response,
            payload: Some(OutBuf::Bytes(encode_keys(&page.keys))),
        }
    }
}

/// One answer to a listing: its keys, how many partitions it covers whole, and where the
/// next one (the first it does not cover) resumes (`list_hash`; 0: from its start).
#[derive(Debug, PartialEq, Eq)]
pub struct Page {
    pub keys: Vec<Vec<u8>>,
    pub done: usize,
    pub resume: u64,
}

/// The page of `groups` (each partition's keys, in the listing's order) that fits about
/// `soft` bytes: whole partitions while they fit (at least one started), the first one
/// from `from_hash` on. A partition that alone passes `soft` is cut in the order of
/// `list_hash`, never between keys of the same hash, and the page says where it resumes.
/// (Before, a partition was cut at the payload limit and counted as done: SCAN, KEYS and
/// FLUSHALL missed the rest of it.)
pub fn page_of(groups: Vec<Vec<Vec<u8>>>, from_hash: u64, soft: usize) -> Page {
    use hotshard_net::message::list_hash;
    let (mut keys, mut bytes, mut done) = (Vec::new(), 0usize, 0usize);
    for (i, mut group) in groups.into_iter().enumerate() {
        if i == 0 && from_hash > 0 {
            group.retain(|k| list_hash(k) >= from_hash);
        }
        let group_bytes: usize = group.iter().map(|k| k.len() + 2).sum();
        if done > 0 && bytes + group_bytes > soft {
            break;
        }
        if group_bytes <= soft.max(1) || group.is_empty() {
            bytes += group_bytes;
            keys.extend(group);
            done += 1;
            continue;
        }
        // Alone past the page size: the first page of it, in hash order.
        let mut hashed: Vec<(u64, Vec<u8>)> = group.into_iter().map(|k| (list_hash(&k), k)).collect();
        hashed.sort_unstable();
        let mut resume = 0;
        for (j, (h, k)) in hashed.iter().enumerate() {
            let same_as_last = j > 0 && hashed[j - 1].0 == *h;
            if bytes >= soft && !same_as_last {
                resume = *h;
                break;
            }
            bytes += k.len() + 2;
        }
        keys.extend(
            hashed
                .into_iter()
                .take_while(|(h, _)| resume == 0 || *h < resume)
                .map(|(_, k)| k),
        );
        if resume == 0 {
            done += 1;
            continue;
        }
        return Page { keys, done, resume };
    }
    Page {
        keys,
        done,
        resume: 0,
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;
    use hotshard_net::message::list_hash;

    /// A partition larger than a page is listed whole across pages, each key once, and a
    /// key present throughout is listed whatever is added meanwhile; small ones go whole.
    #[test]
    fn a_large_partition_is_listed_in_pages_each_key_once() {
        let big: Vec<Vec<u8>> = (0..50_000).map(|i| format!("key:{i:08}").into_bytes()).collect();
        let small = vec![b"a".to_vec(), b"b".to_vec()];
        let mut seen = std::collections::HashSet::new();
        let mut from = 0;
        let mut pages = 0;
        loop {
            let page = page_of(vec![big.clone(), small.clone()], from, 64 << 10);
            pages += 1;
            for k in &page.keys {
                assert!(seen.insert(k.clone()) || small.contains(k), "listed twice");
            }
            if page.resume == 0 {
                assert_eq!(page.done, 2, "the small partition follows the last page");
                break;
            }
            assert_eq!(page.done, 0);
            assert!(page.resume > from);
            from = page.resume;
        }
        assert!(pages > 5, "{pages} pages");
        for k in &big {
            assert!(seen.contains(k), "{} missing", String::from_utf8_lossy(k));
        }
        // Small partitions: whole, several per page.
        let page = page_of(vec![small.clone(), small.clone()], 0, 1 << 20);
        assert_eq!((page.keys.len(), page.done, page.resume), (4, 2, 0));
        assert!(list_hash(b"") >= 1);
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
