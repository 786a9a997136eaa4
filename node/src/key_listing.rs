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
        let page = page_of(&local, from_hash, LIST_SOFT_BYTES, |p, from, soft| {
            self.store
                .partition_keys_by_hash(p, from, soft, hotshard_net::message::list_hash, keep)
        });
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

/// The page of `partitions` that fits about `soft` bytes, each partition's keys in the
/// order of `list_hash` (`keys(partition, from, soft)`: its keys from hash `from` on that
/// fit `soft`, and where it goes on past them): whole partitions while they fit (at least
/// one started), the first one from `from_hash` on. A partition that alone passes `soft` is
/// cut in hash order, never between keys of the same hash, and the page says where it
/// resumes. (Before, a partition was cut at the payload limit and counted as done: SCAN,
/// KEYS and FLUSHALL missed the rest of it.)
pub fn page_of(
    partitions: &[u16],
    from_hash: u64,
    soft: usize,
    keys: impl Fn(u16, u64, usize) -> (Vec<Vec<u8>>, Option<u64>),
) -> Page {
    let (mut page, mut bytes, mut done) = (Vec::new(), 0usize, 0usize);
    for (i, &p) in partitions.iter().enumerate() {
        let from = if i == 0 { from_hash } else { 0 };
        let (group, resume) = keys(p, from, soft.max(1));
        let group_bytes: usize = group.iter().map(|k| k.len() + 2).sum();
        // After a whole partition, only another that fits whole.
        if done > 0 && (resume.is_some() || bytes + group_bytes > soft) {
            break;
        }
        bytes += group_bytes;
        page.extend(group);
        match resume {
            None => done += 1,
            Some(resume) => {
                return Page {
                    keys: page,
                    done,
                    resume,
                }
            }
        }
    }
    Page {
        keys: page,
        done,
        resume: 0,
    }
}

#[cfg(test)]
mod paging_tests {
    use super::*;
    use hotshard_net::message::list_hash;

    /// What `Store::partition_keys_by_hash` answers, by sorting (its own test checks it
    /// against this): the longest run of keys in hash order from `from` that fits `soft`
    /// (at least the keys of its lowest hash), cut before the first hash that does not fit.
    fn by_sorting(keys: &[Vec<u8>], from: u64, soft: usize) -> (Vec<Vec<u8>>, Option<u64>) {
        let mut hashed: Vec<(u64, Vec<u8>)> = keys.iter().map(|k| (list_hash(k), k.clone())).collect();
        hashed.retain(|(h, _)| *h >= from);
        hashed.sort();
        let mut bytes = 0;
        for (j, (h, k)) in hashed.iter().enumerate() {
            bytes += k.len() + 2;
            if bytes > soft && *h > hashed[0].0 {
                let cut = *h;
                let page = hashed[..j]
                    .iter()
                    .filter(|(h, _)| *h < cut)
                    .map(|(_, k)| k.clone())
                    .collect();
                return (page, Some(cut));
            }
        }
        (hashed.into_iter().map(|(_, k)| k).collect(), None)
    }

    /// A partition larger than a page is listed whole across pages, each key once, and a
    /// key present throughout is listed whatever is added meanwhile; small ones go whole.
    #[test]
    fn a_large_partition_is_listed_in_pages_each_key_once() {
        let big: Vec<Vec<u8>> = (0..50_000).map(|i| format!("key:{i:08}").into_bytes()).collect();
        let small = vec![b"a".to_vec(), b"b".to_vec()];
        let groups = [big.clone(), small.clone()];
        let keys = |p: u16, from: u64, soft: usize| by_sorting(&groups[p as usize], from, soft);
        let mut seen = std::collections::HashSet::new();
        let mut from = 0;
        let mut pages = 0;
        loop {
            let page = page_of(&[0, 1], from, 64 << 10, keys);
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
        let groups = [small.clone(), small.clone()];
        let keys = |p: u16, from: u64, soft: usize| by_sorting(&groups[p as usize], from, soft);
        let page = page_of(&[0, 1], 0, 1 << 20, keys);
        assert_eq!((page.keys.len(), page.done, page.resume), (4, 2, 0));
        // After a whole partition, a large one is left for the next page.
        let groups = [small.clone(), big.clone()];
        let keys = |p: u16, from: u64, soft: usize| by_sorting(&groups[p as usize], from, soft);
        let page = page_of(&[0, 1], 0, 64 << 10, keys);
        assert_eq!((page.keys.len(), page.done, page.resume), (2, 1, 0));
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
