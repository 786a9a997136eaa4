//! Multipart uploads: an upload is a key in the bucket's index of uploads; each part is
//! written as chunks under an id of its own, with a part record in the upload's own index;
//! Complete writes the object's record naming the parts' chunks (no data is copied) and
//! switches the key to it like a PUT.

use std::collections::BTreeMap;

use hotshard_net::client::{ListArgs, ListFrom};
use hotshard_net::listing::ListItem;
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Result};

use crate::checksums::to_dto;
use crate::gateway::{body_checksums, drain, gone, new_id, node_error, now_ms, timestamp, Gateway};
use crate::layout::{
    part_key, part_prefix, upload_key, upload_prefix, Extent, ObjectRecord, PartRecord, UploadRecord,
};
use crate::limits::{check_entry_key, check_metadata, MAX_OBJECT_BYTES, MAX_PART_BYTES};
use crate::sweep::Intent;

/// S3's: parts are numbered 1 to 10,000.
pub const MAX_PARTS: i32 = 10_000;
/// S3's: every part but the last holds at least 5 MiB.
pub const MIN_PART_BYTES: u64 = 5 << 20;
/// The most parts or uploads one listing answers (S3's default and ceiling).
const LIST_MAX: u32 = 1000;

/// S3's multipart ETag: the MD5 of the parts' binary MD5s, then `-` and their number.
pub fn multipart_etag(part_md5s: &[[u8; 16]]) -> String {
    let mut md5 = Md5::new();
    for p in part_md5s {
        md5.update(p);
    }
    format!("{}-{}", hex::encode(md5.finalize()), part_md5s.len())
}

fn no_such_upload() -> S3Error {
    s3_error!(NoSuchUpload)
}

fn check_part_number(n: i32) -> S3Result<u32> {
    if !(1..=MAX_PARTS).contains(&n) {
        return Err(S3Error::with_message(
            S3ErrorCode::InvalidArgument,
            format!("part numbers are 1 to {MAX_PARTS}"),
        ));
    }
    Ok(n as u32)
}

impl Gateway {
    /// The upload's record, or NoSuchUpload.
    async fn upload(&self, bucket: &str, key: &str, upload_id: &str) -> S3Result<UploadRecord> {
        let bytes = self
            .get(upload_key(bucket, key, upload_id))
            .await?
            .ok_or_else(no_such_upload)?
            .0;
        serde_json::from_slice(&bytes).map_err(|_| no_such_upload())
    }

    /// Every part record of an upload, by part number.
    async fn parts(&self, upload_id: &str) -> S3Result<BTreeMap<u32, (PartRecord, u64)>> {
        let tag = part_prefix(upload_id).into_bytes();
        let items = self
            .backend
            .run(move |c| async move {
                c.list_all(ListArgs {
                    index: &tag,
                    prefix: &tag,
                    start_after: None,
                    delimiter: b"",
                    limit: LIST_MAX,
                    start_at: None,
                })
                .await
            })
            .await
            .map_err(gone)?
            .map_err(node_error)?;
        let mut parts = BTreeMap::new();
        let prefix_len = part_prefix(upload_id).len();
        for item in items {
            let ListItem::Key { key, .. } = item else { continue };
            let Some(n) = std::str::from_utf8(&key[prefix_len..])
                .ok()
                .and_then(|s| s.parse().ok())
            else {
                continue;
            };
            if let Some((bytes, version)) = self.get(key).await? {
                if let Ok(p) = serde_json::from_slice::<PartRecord>(&bytes) {
                    parts.insert(n, (p, version));
                }
            }
        }
        Ok(parts)
    }

    pub(crate) async fn create_upload(
        &self,
        input: CreateMultipartUploadInput,
    ) -> S3Result<CreateMultipartUploadOutput> {
        check_entry_key(&input.bucket, &input.key)?;
        let metadata: BTreeMap<String, String> = input.metadata.unwrap_or_default().into_iter().collect();
        check_metadata(&metadata)?;
        self.bucket_exists(&input.bucket).await?;
        let upload_id = format!("{:032x}", new_id());
        let record = UploadRecord {
            key: input.key.clone(),
            initiated_ms: now_ms(),
            content_type: input.content_type,
            metadata,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        self.put(upload_key(&input.bucket, &input.key, &upload_id), value, Some(0))
            .await?;
        Ok(CreateMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(upload_id),
            ..Default::default()
        })
    }

    pub(crate) async fn upload_part_of(&self, req: S3Request<UploadPartInput>) -> S3Result<UploadPartOutput> {
        let given = Checksum {
            checksum_crc32: req.input.checksum_crc32.clone(),
            checksum_crc32c: req.input.checksum_crc32c.clone(),
            checksum_crc64nvme: req.input.checksum_crc64nvme.clone(),
            checksum_sha1: req.input.checksum_sha1.clone(),
            checksum_sha256: req.input.checksum_sha256.clone(),
            checksum_type: None,
        };
        let mut sums = body_checksums(&req, given, req.input.checksum_algorithm.as_ref());
        let trailers = req.trailing_headers;
        let input = req.input;
        let id = new_id();
        let checked = async {
            let n = check_part_number(input.part_number)?;
            if input
                .content_length
                .is_some_and(|l| l < 0 || l as u64 > MAX_PART_BYTES)
            {
                return Err(s3_error!(EntityTooLarge));
            }
            self.upload(&input.bucket, &input.key, &input.upload_id).await?;
            let intent = Intent::Part {
                bucket: input.bucket.clone(),
                key: input.key.clone(),
                upload_id: input.upload_id.clone(),
                n,
                id: format!("{id:032x}"),
            };
            Ok((n, self.begin_intent(&intent, id).await?))
        }
        .await;
        let (n, intent) = match checked {
            Ok(c) => c,
            Err(e) => {
                drain(input.body).await;
                return Err(e);
            }
        };
        let (size, md5) = self
            .write_chunks(id, input.body, MAX_PART_BYTES, &mut sums)
            .await?;
        let extent = Extent {
            id: format!("{id:032x}"),
            size,
            chunk: self.chunk,
        };
        if input.content_length.is_some_and(|l| l as u64 != size) {
            self.remove_chunks_later(vec![extent], None);
            return Err(s3_error!(IncompleteBody));
        }
        if let Some(want) = &input.content_md5 {
            if *want != crate::gateway::base64_md5(&md5) {
                self.remove_chunks_later(vec![extent], None);
                return Err(s3_error!(BadDigest));
            }
        }
        let checksums = match sums.finish(trailers.and_then(|t| t.take()).as_ref()) {
            Ok(c) => c,
            Err(e) => {
                self.remove_chunks_later(vec![extent], None);
                return Err(e);
            }
        };
        let record = PartRecord {
            extent: extent.clone(),
            etag: hex::encode(md5),
            modified_ms: now_ms(),
            checksums,
        };
        let key = part_key(&input.upload_id, n);
        // A part uploaded again replaces the earlier one, whose chunks go.
        let before = self
            .get(key.clone())
            .await?
            .and_then(|(b, _)| serde_json::from_slice::<PartRecord>(&b).ok());
        let garbage = match &before {
            Some(old) => {
                let part = Some((input.upload_id.clone(), n));
                self.garbage_intent(&input.bucket, &input.key, part, std::slice::from_ref(&old.extent))
                    .await?
            }
            None => None,
        };
        let value = serde_json::to_vec(&record).unwrap_or_default();
        if let Err(e) = self.put(key, value, None).await {
            self.remove_chunks_later(vec![extent], None);
            return Err(e);
        }
        self.end_intent(intent);
        if let Some(old) = before {
            self.remove_chunks_later(vec![old.extent], garbage);
        }
        let c = to_dto(&record.checksums);
        Ok(UploadPartOutput {
            e_tag: Some(ETag::Strong(record.etag)),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            ..Default::default()
        })
    }

    pub(crate) async fn complete_upload(
        &self,
        input: CompleteMultipartUploadInput,
    ) -> S3Result<CompleteMultipartUploadOutput> {
        let upload = self.upload(&input.bucket, &input.key, &input.upload_id).await?;
        let asked = input.multipart_upload.and_then(|m| m.parts).unwrap_or_default();
        if asked.is_empty() {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                "a multipart upload completes with at least one part",
            ));
        }
        let stored = self.parts(&input.upload_id).await?;
        let mut extents = Vec::with_capacity(asked.len());
        let mut md5s = Vec::with_capacity(asked.len());
        let mut last = 0u32;
        let mut size = 0u64;
        for (i, part) in asked.iter().enumerate() {
            let n = check_part_number(part.part_number.unwrap_or(0))?;
            if n <= last {
                return Err(s3_error!(InvalidPartOrder));
            }
            last = n;
            let Some((record, _)) = stored.get(&n) else {
                return Err(s3_error!(InvalidPart));
            };
            if part.e_tag.as_ref().is_some_and(|e| e.value() != record.etag) {
                return Err(s3_error!(InvalidPart));
            }
            if i + 1 < asked.len() && record.extent.size < MIN_PART_BYTES {
                return Err(s3_error!(EntityTooSmall));
            }
            let mut md5 = [0u8; 16];
            hex::decode_to_slice(&record.etag, &mut md5).map_err(|_| s3_error!(InvalidPart))?;
            md5s.push(md5);
            size += record.extent.size;
            extents.push(record.extent.clone());
        }
        if size > MAX_OBJECT_BYTES {
            return Err(s3_error!(EntityTooLarge));
        }
        let first = extents[0].clone();
        let record = ObjectRecord {
            id: first.id,
            size,
            chunk: first.chunk,
            etag: multipart_etag(&md5s),
            modified_ms: now_ms(),
            content_type: upload.content_type,
            metadata: upload.metadata,
            parts: extents,
            // S3 gives a multipart object a checksum of its parts' checksums; not kept here.
            checksums: BTreeMap::new(),
            inline: false,
            data: None,
        };
        self.switch_entry(
            &input.bucket,
            &input.key,
            &record,
            input.if_match.as_ref(),
            input.if_none_match.as_ref(),
        )
        .await?;
        // The upload is done: its records go; the parts not named go with their chunks.
        let used: std::collections::HashSet<u32> = asked
            .iter()
            .filter_map(|p| p.part_number)
            .map(|n| n as u32)
            .collect();
        let unused: Vec<(u32, Extent)> = stored
            .iter()
            .filter(|(n, _)| !used.contains(n))
            .map(|(n, (p, _))| (*n, p.extent.clone()))
            .collect();
        self.retire_parts(&input.bucket, &input.key, &input.upload_id, unused)
            .await?;
        self.forget_upload(
            &input.bucket,
            &input.key,
            &input.upload_id,
            stored.keys().copied().collect(),
        )
        .await?;
        Ok(CompleteMultipartUploadOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            e_tag: Some(ETag::Strong(record.etag)),
            ..Default::default()
        })
    }

    /// Parts about to be forgotten: each named as garbage (kept by the sweep while its part
    /// record or the object names it), its chunks removed later.
    async fn retire_parts(
        &self,
        bucket: &str,
        key: &str,
        upload_id: &str,
        parts: Vec<(u32, Extent)>,
    ) -> S3Result<()> {
        for (n, extent) in parts {
            let part = Some((upload_id.to_string(), n));
            let garbage = self
                .garbage_intent(bucket, key, part, std::slice::from_ref(&extent))
                .await?;
            self.remove_chunks_later(vec![extent], garbage);
        }
        Ok(())
    }

    /// Deletes an upload's part records and then its own record.
    async fn forget_upload(&self, bucket: &str, key: &str, upload_id: &str, parts: Vec<u32>) -> S3Result<()> {
        let (upload, id) = (upload_key(bucket, key, upload_id), upload_id.to_string());
        self.backend
            .run(move |c| async move {
                for n in parts {
                    c.delete(&part_key(&id, n), None).await?;
                }
                c.delete(&upload, None).await.map(|_| ())
            })
            .await
            .map_err(gone)?
            .map_err(node_error)
    }

    pub(crate) async fn abort_upload(&self, input: AbortMultipartUploadInput) -> S3Result<()> {
        self.upload(&input.bucket, &input.key, &input.upload_id).await?;
        let stored = self.parts(&input.upload_id).await?;
        // A Complete cut off before it forgot the upload left parts the object now names:
        // those stay.
        let in_use: std::collections::HashSet<String> = match self.record(&input.bucket, &input.key).await? {
            Some((r, _)) => r.extents().into_iter().map(|e| e.id).collect(),
            None => Default::default(),
        };
        let retired = stored
            .iter()
            .map(|(n, (p, _))| (*n, p.extent.clone()))
            .filter(|(_, e)| !in_use.contains(&e.id))
            .collect();
        self.retire_parts(&input.bucket, &input.key, &input.upload_id, retired)
            .await?;
        self.forget_upload(
            &input.bucket,
            &input.key,
            &input.upload_id,
            stored.keys().copied().collect(),
        )
        .await
    }

    pub(crate) async fn list_parts_of(&self, input: ListPartsInput) -> S3Result<ListPartsOutput> {
        self.upload(&input.bucket, &input.key, &input.upload_id).await?;
        let max = input
            .max_parts
            .unwrap_or(LIST_MAX as i32)
            .clamp(0, LIST_MAX as i32) as usize;
        let after = input.part_number_marker.unwrap_or(0).max(0) as u32;
        let stored = self.parts(&input.upload_id).await?;
        let mut parts: Vec<Part> = Vec::new();
        let mut more = false;
        for (n, (p, _)) in stored.range(after + 1..) {
            if parts.len() == max {
                more = true;
                break;
            }
            parts.push(Part {
                part_number: Some(*n as i32),
                size: Some(p.extent.size as i64),
                e_tag: Some(ETag::Strong(p.etag.clone())),
                last_modified: Some(timestamp(p.modified_ms)),
                ..Default::default()
            });
        }
        Ok(ListPartsOutput {
            bucket: Some(input.bucket),
            key: Some(input.key),
            upload_id: Some(input.upload_id),
            max_parts: Some(max as i32),
            is_truncated: Some(more),
            next_part_number_marker: parts.last().and_then(|p| p.part_number).filter(|_| more),
            part_number_marker: input.part_number_marker,
            parts: Some(parts),
            ..Default::default()
        })
    }

    pub(crate) async fn list_uploads(
        &self,
        input: ListMultipartUploadsInput,
    ) -> S3Result<ListMultipartUploadsOutput> {
        self.bucket_exists(&input.bucket).await?;
        let tag = upload_prefix(&input.bucket);
        let prefix = input.prefix.clone().unwrap_or_default();
        let max = input
            .max_uploads
            .unwrap_or(LIST_MAX as i32)
            .clamp(1, LIST_MAX as i32) as u32;
        let from = match (&input.key_marker, &input.upload_id_marker) {
            (Some(k), Some(u)) => Some(ListFrom::After(upload_key(&input.bucket, k, u))),
            // After every upload of the marker's key.
            (Some(k), None) => Some(ListFrom::After(format!("{tag}{k}\u{1}").into_bytes())),
            _ => None,
        };
        let full_prefix = format!("{tag}{prefix}").into_bytes();
        let page = self
            .index_page(tag.as_bytes(), &full_prefix, b"", from, max)
            .await?;
        let mut uploads = Vec::new();
        for item in &page.items {
            let ListItem::Key { key, .. } = item else { continue };
            let name = String::from_utf8_lossy(&key[tag.len()..]).into_owned();
            let Some((key_name, upload_id)) = name.rsplit_once('\0') else {
                continue;
            };
            let initiated = match self.get(key.clone()).await? {
                Some((v, _)) => serde_json::from_slice::<UploadRecord>(&v).map_or(0, |u| u.initiated_ms),
                None => continue,
            };
            uploads.push(MultipartUpload {
                key: Some(key_name.to_string()),
                upload_id: Some(upload_id.to_string()),
                initiated: Some(timestamp(initiated)),
                ..Default::default()
            });
        }
        let more = page.next.is_some();
        Ok(ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            max_uploads: Some(max as i32),
            is_truncated: Some(more),
            next_key_marker: uploads.last().and_then(|u| u.key.clone()).filter(|_| more),
            next_upload_id_marker: uploads.last().and_then(|u| u.upload_id.clone()).filter(|_| more),
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            uploads: Some(uploads),
            ..Default::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_parts_md5s() {
        // Two parts, "a" and "b": the ETag S3 gives (checked against boto3's by the suite).
        let a: [u8; 16] = Md5::digest(b"a").into();
        let b: [u8; 16] = Md5::digest(b"b").into();
        let mut both = Vec::new();
        both.extend_from_slice(&a);
        both.extend_from_slice(&b);
        let want = format!("{}-2", hex::encode(Md5::digest(&both)));
        assert_eq!(multipart_etag(&[a, b]), want);
    }
}
