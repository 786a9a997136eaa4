//! Where the gateway keeps S3's things in hotshard: key names and the object record.
//!
//! - a bucket: `{s3b}NAME`, one index (tag `s3b`) holding every bucket, listed in order;
//! - an object's entry: `{s3o:BUCKET}KEY` in the bucket's own ordered index (tag
//!   `s3o:BUCKET`), so that a listing is a range of it and a large bucket splits by key;
//!   its value is the object's record (JSON: size, chunk size, ETag, id, metadata);
//! - an object's data: chunks `c:ID:N` (ID 32 hex digits, N the chunk number), placed by
//!   the hash of the whole key, so that a large object spreads over every shard and node.
//!
//! Each PUT writes its chunks under a new id, then the entry last: the entry switches the key
//! to the new object in one write, and a reader sees one object or the other, never a mix.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The tag of the index of buckets.
pub const BUCKETS: &str = "{s3b}";

/// A bucket's key in the index of buckets.
pub fn bucket_key(bucket: &str) -> Vec<u8> {
    format!("{BUCKETS}{bucket}").into_bytes()
}

/// What comes before every entry key of `bucket`: its index tag.
pub fn entry_prefix(bucket: &str) -> String {
    format!("{{s3o:{bucket}}}")
}

/// The entry key of `key` in `bucket`.
pub fn entry_key(bucket: &str, key: &str) -> Vec<u8> {
    let mut k = entry_prefix(bucket).into_bytes();
    k.extend_from_slice(key.as_bytes());
    k
}

/// The key of chunk `n` of object `id`.
pub fn chunk_key(id: u128, n: u64) -> Vec<u8> {
    format!("c:{id:032x}:{n:x}").into_bytes()
}

/// A bucket's record (the value of its key).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BucketRecord {
    /// Milliseconds since the epoch.
    pub created_ms: u64,
}

/// An object's record (the value of its entry). Its data is `chunks()` chunks of `chunk`
/// bytes (the last one shorter) under `id`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ObjectRecord {
    /// The object's id, 128 bits in hex (each PUT makes a new one).
    pub id: String,
    pub size: u64,
    /// Chunk size in bytes (at least 1).
    pub chunk: u64,
    /// The ETag, without quotes: the MD5 of the body in hex.
    pub etag: String,
    pub modified_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// User metadata (`x-amz-meta-*`, names without the prefix).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

impl ObjectRecord {
    pub fn id(&self) -> Option<u128> {
        u128::from_str_radix(&self.id, 16).ok()
    }

    /// How many chunks hold the object.
    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk.max(1))
    }

    /// The chunks holding bytes `range` of the object, each with the part of it needed
    /// (offsets within the chunk, end exclusive).
    pub fn chunks_for(&self, range: std::ops::Range<u64>) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let chunk = self.chunk.max(1);
        let first = range.start / chunk;
        let last = if range.end == 0 {
            0
        } else {
            (range.end - 1) / chunk + 1
        };
        (first..last.max(first)).map(move |n| {
            let base = n * chunk;
            let lo = range.start.max(base) - base;
            let hi = range.end.min(base + chunk) - base;
            (n, lo, hi)
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// A record read from a node; None if it is not one (never a panic).
    pub fn decode(bytes: &[u8]) -> Option<ObjectRecord> {
        serde_json::from_slice::<ObjectRecord>(bytes)
            .ok()
            .filter(|r| r.chunk > 0 && r.id().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(size: u64, chunk: u64) -> ObjectRecord {
        ObjectRecord {
            id: format!("{:032x}", 7u128),
            size,
            chunk,
            etag: String::new(),
            modified_ms: 0,
            content_type: None,
            metadata: BTreeMap::new(),
        }
    }

    #[test]
    fn the_chunks_of_a_range_cover_it_exactly() {
        for (size, chunk) in [(0u64, 4u64), (1, 4), (4, 4), (5, 4), (17, 4), (1000, 7)] {
            let r = record(size, chunk);
            assert_eq!(r.chunks_for(0..size).count() as u64, r.chunks());
            for start in 0..size.min(40) {
                for end in start + 1..=size.min(40) {
                    let parts: Vec<_> = r.chunks_for(start..end).collect();
                    let bytes: u64 = parts.iter().map(|(_, lo, hi)| hi - lo).sum();
                    assert_eq!(bytes, end - start, "{size}/{chunk} {start}..{end}");
                    let (n, lo, _) = parts[0];
                    assert_eq!(n * chunk + lo, start);
                    assert!(parts.iter().all(|(_, lo, hi)| lo < hi && *hi <= chunk));
                }
            }
        }
    }

    #[test]
    fn a_record_survives_encoding_and_garbage_is_refused() {
        let mut r = record(5, 4);
        r.metadata.insert("a".into(), "b".into());
        r.content_type = Some("text/plain".into());
        assert_eq!(ObjectRecord::decode(&r.encode()), Some(r));
        for junk in [
            &b""[..],
            b"{}",
            b"nonsense",
            b"{\"id\":\"zz\",\"size\":1,\"chunk\":1,\"etag\":\"\",\"modified_ms\":0}",
        ] {
            assert_eq!(ObjectRecord::decode(junk), None);
        }
        let mut zero = record(1, 1);
        zero.chunk = 0;
        assert_eq!(ObjectRecord::decode(&zero.encode()), None);
    }
}
