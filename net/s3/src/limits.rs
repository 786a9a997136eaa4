//! S3's limits, checked before anything is stored.

use std::collections::BTreeMap;

use hotshard_net::limits::MAX_KEY_BYTES;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Result};

use crate::layout::entry_key;

/// The largest object one PUT stores (S3's: 5 GiB).
pub const MAX_PUT_BYTES: u64 = 5 << 30;
/// The largest part of a multipart upload (S3's: 5 GiB).
pub const MAX_PART_BYTES: u64 = 5 << 30;
/// The largest object (S3's: 5 TiB).
pub const MAX_OBJECT_BYTES: u64 = 5 << 40;
/// S3's limit on an object's key.
pub const MAX_S3_KEY_BYTES: usize = 1024;
/// S3's limit on user metadata: names and values together.
pub const MAX_METADATA_BYTES: usize = 2048;

/// A key S3 allows whose entry (the bucket's index tag, then the key) fits a node's key.
/// The tag takes up to 70 bytes, so keys near S3's 1,024 may be refused here.
pub fn check_entry_key(bucket: &str, key: &str) -> S3Result<()> {
    if key.is_empty() {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            "an object key is not empty",
        ));
    }
    if key.len() > MAX_S3_KEY_BYTES {
        return Err(s3_error!(KeyTooLongError));
    }
    let entry = entry_key(bucket, key).len();
    if entry > MAX_KEY_BYTES {
        return Err(S3Error::with_message(
            S3ErrorCode::KeyTooLongError,
            format!(
                "with the bucket's name this key takes {entry} bytes of a node's {MAX_KEY_BYTES}: at most {} bytes in this bucket",
                MAX_KEY_BYTES - (entry - key.len())
            ),
        ));
    }
    Ok(())
}

/// User metadata within S3's 2 KB.
pub fn check_metadata(metadata: &BTreeMap<String, String>) -> S3Result<()> {
    let bytes: usize = metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(s3_error!(MetadataTooLarge));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_and_metadata_past_the_limits_are_refused() {
        assert!(check_entry_key("b", "k").is_ok());
        assert!(check_entry_key("b", "").is_err());
        assert!(check_entry_key("b", &"k".repeat(MAX_S3_KEY_BYTES + 1)).is_err());
        let room = MAX_KEY_BYTES - entry_key("b", "").len();
        assert!(check_entry_key("b", &"k".repeat(room)).is_ok());
        assert!(check_entry_key("b", &"k".repeat(room + 1)).is_err());
        let mut m = BTreeMap::new();
        m.insert("a".to_string(), "v".repeat(MAX_METADATA_BYTES - 1));
        assert!(check_metadata(&m).is_ok());
        m.insert("b".to_string(), String::new());
        assert!(check_metadata(&m).is_err());
    }
}
