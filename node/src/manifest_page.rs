//! A page of a partition's manifest on the wire (the payload of a SyncManifest answer):
//! for each key, in key order, `u16` key length, the key, `u64` version, `u32` value
//! checksum and one byte (1: a tombstone), little-endian. Decoded with every length checked
//! against what is left and against the key limit: a page from the network cannot make the
//! node panic or allocate beyond it.

use crate::store::ManifestEntry;

/// Bytes of one entry besides its key.
const FIXED: usize = 2 + 8 + 4 + 1;

/// Encodes entries of `entries` from the first with a key after `after` (all if `after`
/// is empty), until the page would pass `max_bytes` (at least one entry is taken). Returns
/// the page and whether entries remain.
pub fn encode_page(entries: &[ManifestEntry], after: &[u8], max_bytes: usize) -> (Vec<u8>, bool) {
    let start = if after.is_empty() {
        0
    } else {
        entries.partition_point(|e| e.key.as_slice() <= after)
    };
    let mut out = Vec::new();
    let mut taken = 0;
    for e in &entries[start..] {
        if taken > 0 && out.len() + FIXED + e.key.len() > max_bytes {
            break;
        }
        out.extend_from_slice(&(e.key.len() as u16).to_le_bytes());
        out.extend_from_slice(&e.key);
        out.extend_from_slice(&e.version.to_le_bytes());
        out.extend_from_slice(&e.crc32c.to_le_bytes());
        out.push(u8::from(e.tombstone));
        taken += 1;
    }
    (out, start + taken < entries.len())
}

/// Decodes a page; `max_key` bounds each key. Keys must come in strictly increasing order
/// (a page that goes back could make a resync loop for ever).
pub fn decode_page(mut bytes: &[u8], max_key: usize) -> Result<Vec<ManifestEntry>, String> {
    let mut entries: Vec<ManifestEntry> = Vec::new();
    while !bytes.is_empty() {
        let take = |bytes: &mut &[u8], n: usize| -> Result<Vec<u8>, String> {
            if bytes.len() < n {
                return Err(format!(
                    "a manifest entry cut short ({} bytes left, {n} needed)",
                    bytes.len()
                ));
            }
            let (head, rest) = bytes.split_at(n);
            *bytes = rest;
            Ok(head.to_vec())
        };
        let key_len = u16::from_le_bytes(take(&mut bytes, 2)?.try_into().unwrap_or_default()) as usize;
        if key_len == 0 || key_len > max_key {
            return Err(format!("a manifest key of {key_len} bytes (limit {max_key})"));
        }
        let key = take(&mut bytes, key_len)?;
        let version = u64::from_le_bytes(take(&mut bytes, 8)?.try_into().unwrap_or_default());
        let crc32c = u32::from_le_bytes(take(&mut bytes, 4)?.try_into().unwrap_or_default());
        let tombstone = match take(&mut bytes, 1)?[0] {
            0 => false,
            1 => true,
            b => return Err(format!("a manifest entry's tombstone byte is {b}")),
        };
        if entries.last().is_some_and(|l| l.key >= key) {
            return Err("manifest keys out of order".into());
        }
        entries.push(ManifestEntry {
            key,
            version,
            crc32c,
            tombstone,
        });
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, version: u64) -> ManifestEntry {
        ManifestEntry {
            key: key.as_bytes().to_vec(),
            version,
            crc32c: version as u32 ^ 0xabcd,
            tombstone: version.is_multiple_of(2),
        }
    }

    #[test]
    fn pages_cover_every_entry_once_in_order() {
        let all: Vec<ManifestEntry> = (0..50).map(|i| entry(&format!("key-{i:03}"), i + 1)).collect();
        let mut after = Vec::new();
        let mut got = Vec::new();
        loop {
            let (page, more) = encode_page(&all, &after, 100);
            let entries = decode_page(&page, 1024).unwrap();
            assert!(!entries.is_empty());
            after = entries.last().unwrap().key.clone();
            got.extend(entries);
            if !more {
                break;
            }
        }
        assert_eq!(got, all);
        assert_eq!(encode_page(&[], b"", 100), (Vec::new(), false));
    }

    #[test]
    fn a_bad_page_is_an_error_not_a_panic() {
        let (page, _) = encode_page(&[entry("a", 1), entry("b", 2)], b"", 1 << 20);
        for cut in 0..page.len() {
            let _ = decode_page(&page[..cut], 1024);
        }
        assert!(decode_page(&page[..page.len() - 1], 1024).is_err());
        assert!(decode_page(&page, 0).is_err(), "key over the limit");
        let (backwards, _) = encode_page(&[entry("b", 1), entry("a", 2)], b"", 1 << 20);
        assert!(decode_page(&backwards, 1024).is_err());
        let mut bad = page.clone();
        let last = bad.len() - 1;
        bad[last] = 7;
        assert!(decode_page(&bad, 1024).is_err());
        assert_eq!(decode_page(&page, 1024).unwrap().len(), 2);
    }
}
