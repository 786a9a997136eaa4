//! S3's flexible checksums (CRC32, CRC32C, CRC64NVME, SHA-1, SHA-256) on a PUT or a part:
//! computed as the body passes, checked against the value the client sent (a header before
//! the body, or a trailer after it, as current AWS SDKs do by default), kept in the record
//! and given back (PUT's answer; GET and HEAD with `x-amz-checksum-mode: ENABLED`).

use std::collections::BTreeMap;

use s3s::checksum::ChecksumHasher;
use s3s::crypto::{Checksum as _, Crc32, Crc32c, Crc64Nvme, Sha1, Sha256};
use s3s::dto::{Checksum, ChecksumAlgorithm};
use s3s::{S3Error, S3ErrorCode, S3Result};

/// The algorithms by their names in records and in `x-amz-checksum-*`.
const NAMES: [&str; 5] = ["crc32", "crc32c", "crc64nvme", "sha1", "sha256"];

fn field(c: &Checksum, name: &str) -> Option<String> {
    match name {
        "crc32" => c.checksum_crc32.clone(),
        "crc32c" => c.checksum_crc32c.clone(),
        "crc64nvme" => c.checksum_crc64nvme.clone(),
        "sha1" => c.checksum_sha1.clone(),
        "sha256" => c.checksum_sha256.clone(),
        _ => None,
    }
}

/// Kept checksums as S3's fields (None: no checksum was kept).
pub fn to_dto(kept: &BTreeMap<String, String>) -> Checksum {
    let get = |n: &str| kept.get(n).cloned();
    Checksum {
        checksum_crc32: get("crc32"),
        checksum_crc32c: get("crc32c"),
        checksum_crc64nvme: get("crc64nvme"),
        checksum_sha1: get("sha1"),
        checksum_sha256: get("sha256"),
        checksum_type: None,
    }
}

/// The checksums of one body on its way in.
pub struct BodyChecksums {
    hasher: ChecksumHasher,
    /// Values sent in headers.
    given: Checksum,
}

impl BodyChecksums {
    /// Computes every algorithm the client names: by a value in a header (`given`), by
    /// `x-amz-sdk-checksum-algorithm`, or by a trailer it announces in `x-amz-trailer`.
    pub fn new(
        given: Checksum,
        algorithm: Option<&ChecksumAlgorithm>,
        trailer: Option<&str>,
    ) -> BodyChecksums {
        let mut hasher = ChecksumHasher::default();
        let trailer = trailer.unwrap_or("").to_ascii_lowercase();
        for name in NAMES {
            let wanted = field(&given, name).is_some()
                || algorithm.is_some_and(|a| a.as_str().eq_ignore_ascii_case(name))
                || trailer
                    .split(',')
                    .any(|t| t.trim() == format!("x-amz-checksum-{name}"));
            if !wanted {
                continue;
            }
            match name {
                "crc32" => hasher.crc32 = Some(Crc32::new()),
                "crc32c" => hasher.crc32c = Some(Crc32c::new()),
                "crc64nvme" => hasher.crc64nvme = Some(Crc64Nvme::new()),
                "sha1" => hasher.sha1 = Some(Sha1::new()),
                _ => hasher.sha256 = Some(Sha256::new()),
            }
        }
        BodyChecksums { hasher, given }
    }

    pub fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }

    /// The checksums computed, once each sent value (header, else `trailers`) is checked
    /// against them: BadDigest on any difference.
    pub fn finish(self, trailers: Option<&http::HeaderMap>) -> S3Result<BTreeMap<String, String>> {
        let computed = self.hasher.finalize();
        let mut kept = BTreeMap::new();
        for name in NAMES {
            let Some(ours) = field(&computed, name) else {
                continue;
            };
            let sent = field(&self.given, name).or_else(|| {
                trailers
                    .and_then(|t| t.get(format!("x-amz-checksum-{name}")))
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            });
            if let Some(sent) = sent {
                if sent != ours {
                    return Err(S3Error::with_message(
                        S3ErrorCode::BadDigest,
                        format!(
                            "the {} you specified did not match the calculated checksum",
                            name.to_uppercase()
                        ),
                    ));
                }
            }
            kept.insert(name.to_string(), ours);
        }
        Ok(kept)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_checksum_is_checked_and_kept() {
        // CRC32 of "hello", as AWS SDKs send it (base64 of the big-endian value).
        let right = Checksum {
            checksum_crc32: Some("NhCmhg==".into()),
            ..Default::default()
        };
        let mut ok = BodyChecksums::new(right, None, None);
        ok.update(b"hel");
        ok.update(b"lo");
        assert_eq!(
            ok.finish(None).unwrap().get("crc32").map(String::as_str),
            Some("NhCmhg==")
        );
        let wrong = Checksum {
            checksum_crc32: Some("AAAAAA==".into()),
            ..Default::default()
        };
        let mut bad = BodyChecksums::new(wrong, None, None);
        bad.update(b"hello");
        assert!(bad.finish(None).is_err());
        // Announced as a trailer, sent after the body.
        let mut late = BodyChecksums::new(Checksum::default(), None, Some("x-amz-checksum-crc32"));
        late.update(b"hello");
        let mut trailers = http::HeaderMap::new();
        trailers.insert("x-amz-checksum-crc32", "AAAAAA==".parse().unwrap());
        assert!(late.finish(Some(&trailers)).is_err());
        // Nothing named: nothing computed or kept.
        let mut none = BodyChecksums::new(Checksum::default(), None, None);
        none.update(b"hello");
        assert!(none.finish(None).unwrap().is_empty());
    }
}
