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

/// What comes before every upload key of `bucket` (multipart uploads in progress, in key
/// order: `ListMultipartUploads`).
pub fn upload_prefix(bucket: &str) -> String {
    format!("{{s3u:{bucket}}}")
}

/// The key of upload `upload_id` of `key` in `bucket`: the key, a NUL (no S3 key holds
/// one: XML cannot carry it), the id, so that a key's uploads list together.
pub fn upload_key(bucket: &str, key: &str, upload_id: &str) -> Vec<u8> {
    format!("{}{key}\0{upload_id}", upload_prefix(bucket)).into_bytes()
}

/// The index of one upload's parts.
pub fn part_prefix(upload_id: &str) -> String {
    format!("{{s3p:{upload_id}}}")
}

/// The key of part `n` of upload `upload_id` (five digits, so that parts list in order).
pub fn part_key(upload_id: &str, n: u32) -> Vec<u8> {
    format!("{}{n:05}", part_prefix(upload_id)).into_bytes()
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

/// Bytes stored as chunks under one id: a whole object of one PUT, or one part of a
/// multipart upload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Extent {
    pub id: String,
    pub size: u64,
    pub chunk: u64,
}

impl Extent {
    pub fn id(&self) -> Option<u128> {
        u128::from_str_radix(&self.id, 16).ok()
    }

    pub fn chunks(&self) -> u64 {
        self.size.div_ceil(self.chunk.max(1))
    }
}

/// A part uploaded to a multipart upload (the value of its part key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartRecord {
    pub extent: Extent,
    /// MD5 of the part in hex.
    pub etag: String,
    pub modified_ms: u64,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

/// A multipart upload in progress (the value of its upload key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UploadRecord {
    pub key: String,
    pub initiated_ms: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
}

/// An object's record (the value of its entry). Its data is `chunks()` chunks of `chunk`
/// bytes (the last one shorter) under `id`, or, for a multipart upload, its parts in order.
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
    /// A completed multipart upload's parts (then `id` and `chunk` are unused).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parts: Vec<Extent>,
    /// Flexible checksums of the whole body, base64, by algorithm (`crc32`, `sha256`...):
    /// those the client sent, checked.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
    /// A small object's bytes, kept in its entry after the record (no chunks: see
    /// `INLINE_MAX`); `id` and `chunk` are unused then.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub inline: bool,
    #[serde(skip)]
    pub data: Option<bytes::Bytes>,
}

/// Objects of at most this many bytes are kept in their entry: a PUT is one write, a GET
/// one read. Small enough that a listing, which reads each entry, stays cheap.
pub const INLINE_MAX: u64 = 4096;

/// What separates an entry's record from its inline bytes (compact JSON has no newline).
const INLINE_SEPARATOR: u8 = b'\n';

impl ObjectRecord {
    /// Where the object's bytes are, in order.
    pub fn extents(&self) -> Vec<Extent> {
        if self.inline {
            Vec::new()
        } else if self.parts.is_empty() {
            vec![Extent {
                id: self.id.clone(),
                size: self.size,
                chunk: self.chunk,
            }]
        } else {
            self.parts.clone()
        }
    }

    /// The chunks holding bytes `range` of the object: (object id, chunk number, the part
    /// of the chunk needed as offsets within it, end exclusive, and whether that is the
    /// whole chunk).
    pub fn chunks_for(&self, range: std::ops::Range<u64>) -> Vec<ChunkRead> {
        let mut out = Vec::new();
        let mut base = 0u64;
        for e in self.extents() {
            let (lo_e, hi_e) = (range.start.max(base), range.end.min(base + e.size));
            if lo_e < hi_e {
                let (Some(id), chunk) = (e.id(), e.chunk.max(1)) else {
                    break;
                };
                let (first, last) = ((lo_e - base) / chunk, (hi_e - base - 1) / chunk);
                for n in first..=last {
                    let start = base + n * chunk;
                    let end = (start + chunk).min(base + e.size);
                    let (lo, hi) = (lo_e.max(start) - start, hi_e.min(end) - start);
                    out.push(ChunkRead {
                        id,
                        n,
                        lo,
                        hi,
                        whole: lo == 0 && hi == end - start,
                    });
                }
            }
            base += e.size;
        }
        out
    }

    /// The entry's value: the record, and an inline object's bytes after it.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).unwrap_or_default();
        if let (true, Some(data)) = (self.inline, &self.data) {
            v.push(INLINE_SEPARATOR);
            v.extend_from_slice(data);
        }
        v
    }

    /// A record read from a node; None if it is not one (never a panic).
    pub fn decode(bytes: &[u8]) -> Option<ObjectRecord> {
        let (json, data) = match bytes.iter().position(|b| *b == INLINE_SEPARATOR) {
            Some(at) => (&bytes[..at], Some(&bytes[at + 1..])),
            None => (bytes, None),
        };
        let mut r = serde_json::from_slice::<ObjectRecord>(json).ok()?;
        if r.inline {
            let data = data?;
            if data.len() as u64 != r.size {
                return None;
            }
            r.data = Some(bytes::Bytes::copy_from_slice(data));
            return Some(r);
        }
        let extents = r.extents();
        let whole = extents.iter().all(|e| e.chunk > 0 && e.id().is_some())
            && extents.iter().try_fold(0u64, |sum, e| sum.checked_add(e.size)) == Some(r.size);
        (whole && data.is_none()).then_some(r)
    }
}

/// One chunk read of a GET (see `ObjectRecord::chunks_for`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRead {
    pub id: u128,
    pub n: u64,
    pub lo: u64,
    pub hi: u64,
    pub whole: bool,
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
            parts: Vec::new(),
            checksums: BTreeMap::new(),
            inline: false,
            data: None,
        }
    }

    /// Bytes `range` as the chunk reads give them, each chunk holding its own offsets.
    fn read(r: &ObjectRecord, range: std::ops::Range<u64>) -> Vec<(u128, u64)> {
        let mut at = Vec::new();
        for c in r.chunks_for(range) {
            assert!(c.lo < c.hi, "{c:?}");
            for b in c.lo..c.hi {
                at.push((c.id, c.n * 1_000_000 + b));
            }
        }
        at
    }

    #[test]
    fn the_chunks_of_a_range_cover_it_exactly() {
        // One extent, and the same bytes as three parts of other chunk sizes.
        let mut parted = record(23, 4);
        parted.parts = vec![
            Extent {
                id: format!("{:032x}", 1),
                size: 10,
                chunk: 3,
            },
            Extent {
                id: format!("{:032x}", 2),
                size: 1,
                chunk: 8,
            },
            Extent {
                id: format!("{:032x}", 3),
                size: 12,
                chunk: 5,
            },
        ];
        let whole = read(&parted, 0..23);
        assert_eq!(whole.len(), 23);
        for start in 0..23 {
            for end in start + 1..=23 {
                assert_eq!(
                    read(&parted, start..end),
                    whole[start as usize..end as usize],
                    "{start}..{end}"
                );
            }
        }
        for (size, chunk) in [(1u64, 4u64), (4, 4), (5, 4), (17, 4), (1000, 7)] {
            let r = record(size, chunk);
            let whole = read(&r, 0..size);
            assert_eq!(whole.len() as u64, size);
            assert_eq!(r.chunks_for(0..size).len() as u64, size.div_ceil(chunk));
            assert!(r
                .chunks_for(0..size)
                .iter()
                .all(|c| c.whole == (c.hi - c.lo == chunk || c.n == size / chunk)));
            for start in 0..size.min(40) {
                for end in start + 1..=size.min(40) {
                    assert_eq!(read(&r, start..end), whole[start as usize..end as usize]);
                }
            }
        }
        assert!(record(0, 4).chunks_for(0..0).is_empty());
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
        let mut small = record(3, 1);
        small.inline = true;
        small.data = Some(bytes::Bytes::from_static(b"a\nb"));
        assert_eq!(
            ObjectRecord::decode(&small.encode()),
            Some(small.clone()),
            "inline bytes may hold newlines"
        );
        assert!(small.extents().is_empty());
        let mut cut = small.encode();
        cut.pop();
        assert_eq!(
            ObjectRecord::decode(&cut),
            None,
            "inline bytes must be the object's size"
        );
        let mut short = record(5, 4);
        short.parts = vec![Extent {
            id: format!("{:032x}", 1),
            size: 4,
            chunk: 4,
        }];
        assert_eq!(
            ObjectRecord::decode(&short.encode()),
            None,
            "parts must add up to the size"
        );
    }
}
