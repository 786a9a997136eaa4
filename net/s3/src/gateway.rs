//! The S3 operations (`s3s::S3`) on hotshard: buckets, objects in chunks, listings from
//! the bucket's ordered index. See `layout` for where each thing is kept.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use futures::stream::{FuturesOrdered, FuturesUnordered};
use futures::StreamExt;
use hotshard_net::client::{ClientError, ListArgs, ListFrom, ListPage};
use hotshard_net::listing::ListItem;
use hotshard_net::{ByteRange, Status};
use md5::{Digest, Md5};
use s3s::dto::*;
use s3s::{s3_error, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, S3};

use crate::backend::{Backend, BackendGone, NodeClient};
use crate::checksums::{to_dto, BodyChecksums};
use crate::layout::{
    bucket_key, chunk_key, entry_key, entry_prefix, BucketRecord, Extent, ObjectRecord, BUCKETS, INLINE_MAX,
};
use crate::limits::{check_entry_key, check_metadata, MAX_PUT_BYTES};
use crate::sweep::{intent_key, Intent};

/// S3's limit on the objects one DeleteObjects names.
const MAX_DELETES: usize = 1000;

/// Chunks written or read at once for one object.
const CHUNKS_AT_ONCE: usize = 4;
/// Entries whose records a listing page reads at once.
const RECORDS_AT_ONCE: usize = 32;
/// A replaced or deleted object's chunks are removed this long after, so that a GET that
/// read the old record just before may still read its chunks.
const REMOVE_AFTER: Duration = Duration::from_secs(1);
/// How long a removal waits at most for this gateway's GETs still reading the chunks.
const READERS_WAIT: Duration = Duration::from_secs(60);
/// Tries of an entry's conditional write against concurrent writers before giving up.
const ENTRY_TRIES: usize = 16;

/// The gateway: stateless, every request answered from the nodes.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) backend: Arc<Backend>,
    /// Chunk size of new objects.
    pub(crate) chunk: u64,
    /// Chunk ids this gateway's GETs are reading, and how many GETs each: a removal waits
    /// for them (GETs of other gateways have `REMOVE_AFTER`).
    readers: Arc<std::sync::Mutex<std::collections::HashMap<u128, u32>>>,
}

impl Gateway {
    pub fn new(backend: Arc<Backend>, chunk: u64) -> Gateway {
        Gateway {
            backend,
            chunk: chunk.max(1),
            readers: Default::default(),
        }
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn timestamp(ms: u64) -> Timestamp {
    Timestamp::from(UNIX_EPOCH + Duration::from_millis(ms))
}

/// A new object id: 128 bits that no other PUT of any gateway makes (a random seed per
/// process, the time and a counter, mixed).
pub(crate) fn new_id() -> u128 {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::OnceLock;
    static SEED: OnceLock<u128> = OnceLock::new();
    static COUNT: AtomicU64 = AtomicU64::new(0);
    let seed = *SEED.get_or_init(|| {
        let mut b = [0u8; 16];
        if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
            let _ = std::io::Read::read_exact(&mut f, &mut b);
        }
        u128::from_le_bytes(b) ^ u128::from(std::process::id())
    });
    let n = COUNT.fetch_add(1, Ordering::Relaxed);
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mut input = [0u8; 40];
    input[..16].copy_from_slice(&seed.to_le_bytes());
    input[16..32].copy_from_slice(&t.to_le_bytes());
    input[32..].copy_from_slice(&n.to_le_bytes());
    xxhash_rust::xxh3::xxh3_128(&input)
}

/// A node's answer as S3's: Busy is `SlowDown` (503), the rest an internal error.
pub(crate) fn node_error(e: ClientError) -> S3Error {
    match e {
        ClientError::Status(Status::Busy) => s3_error!(SlowDown, "the node is busy; try again"),
        ClientError::Status(Status::NoSpace) => s3_error!(ServiceUnavailable, "the node is out of space"),
        ClientError::Status(Status::TooLarge) => s3_error!(EntityTooLarge),
        other => S3Error::with_message(S3ErrorCode::InternalError, format!("storage: {other}")),
    }
}

pub(crate) fn gone(_: BackendGone) -> S3Error {
    s3_error!(ServiceUnavailable, "the gateway has no connection to a node")
}

fn version_mismatch(e: &ClientError) -> bool {
    matches!(e, ClientError::Status(Status::VersionMismatch { .. }))
}

impl Gateway {
    pub(crate) async fn get(&self, key: Vec<u8>) -> S3Result<Option<(Vec<u8>, u64)>> {
        self.backend
            .run(move |c| async move { c.get(&key).await })
            .await
            .map_err(gone)?
            .map_err(node_error)
    }

    pub(crate) async fn put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        if_version: Option<u64>,
    ) -> Result<u64, S3Error> {
        self.put_raw(key, value, if_version).await?.map_err(node_error)
    }

    async fn put_raw(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        if_version: Option<u64>,
    ) -> S3Result<Result<u64, ClientError>> {
        self.backend
            .run(move |c| async move { c.put(&key, &value, if_version).await })
            .await
            .map_err(gone)
    }

    async fn delete_raw(&self, key: Vec<u8>, if_version: Option<u64>) -> S3Result<Result<u64, ClientError>> {
        self.backend
            .run(move |c| async move { c.delete(&key, if_version).await })
            .await
            .map_err(gone)
    }

    pub(crate) async fn bucket_exists(&self, bucket: &str) -> S3Result<()> {
        match self.get(bucket_key(bucket)).await? {
            Some(_) => Ok(()),
            None => Err(s3_error!(NoSuchBucket)),
        }
    }

    /// The object's record and its entry's version, if there is one.
    pub(crate) async fn record(&self, bucket: &str, key: &str) -> S3Result<Option<(ObjectRecord, u64)>> {
        match self.get(entry_key(bucket, key)).await? {
            None => Ok(None),
            Some((bytes, version)) => match ObjectRecord::decode(&bytes) {
                Some(r) => Ok(Some((r, version))),
                None => Err(S3Error::with_message(
                    S3ErrorCode::InternalError,
                    "the object's entry is not a record this gateway wrote",
                )),
            },
        }
    }

    /// Removes the chunks of `extents`, `REMOVE_AFTER` from now, on a client thread, then
    /// the intent that named them as garbage (if any).
    pub(crate) fn remove_chunks_later(&self, extents: Vec<Extent>, intent: Option<Vec<u8>>) {
        let (backend, readers) = (self.backend.clone(), self.readers.clone());
        tokio::spawn(async move {
            tokio::time::sleep(REMOVE_AFTER).await;
            let waited = std::time::Instant::now();
            let read_now = |e: &Extent| {
                let ids = readers.lock().unwrap_or_else(|p| p.into_inner());
                e.id().is_some_and(|id| ids.contains_key(&id))
            };
            while extents.iter().any(read_now) && waited.elapsed() < READERS_WAIT {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let _ = backend
                .run(move |c| async move {
                    remove_chunks(c.clone(), extents).await;
                    if let Some(key) = intent {
                        let _ = c.delete(&key, None).await;
                    }
                })
                .await;
        });
    }

    /// Writes an intent (see `sweep`) for chunks under `id`; returns its key.
    pub(crate) async fn begin_intent(&self, intent: &Intent, id: u128) -> S3Result<Vec<u8>> {
        let key = intent_key(now_ms(), id);
        let value = serde_json::to_vec(intent).unwrap_or_default();
        self.put(key.clone(), value, None).await?;
        Ok(key)
    }

    /// Deletes an intent whose chunks a record now names, off the request's path (a lost
    /// delete leaves it to the sweep, which finds it settled).
    pub(crate) fn end_intent(&self, key: Vec<u8>) {
        let backend = self.backend.clone();
        tokio::spawn(async move {
            let _ = backend
                .run(move |c| async move { c.delete(&key, None).await })
                .await;
        });
    }

    /// Names `extents` as garbage before the write that leaves them without a record: a
    /// crash after that write leaves them to the sweep (which keeps any that `key`'s entry,
    /// or the part's record, names after all).
    pub(crate) async fn garbage_intent(
        &self,
        bucket: &str,
        key: &str,
        part: Option<(String, u32)>,
        extents: &[Extent],
    ) -> S3Result<Option<Vec<u8>>> {
        let Some(id) = extents.first().and_then(Extent::id) else {
            return Ok(None);
        };
        let intent = Intent::Garbage {
            bucket: bucket.to_string(),
            key: key.to_string(),
            part,
            extents: extents.to_vec(),
        };
        self.begin_intent(&intent, id).await.map(Some)
    }

    /// Writes a body as chunks of object `id`, `CHUNKS_AT_ONCE` in flight; returns its size
    /// and MD5. On any error the chunks written are removed.
    pub(crate) async fn write_chunks(
        &self,
        id: u128,
        body: Option<StreamingBlob>,
        limit: u64,
        sums: &mut BodyChecksums,
    ) -> S3Result<(u64, [u8; 16])> {
        let mut md5 = Md5::new();
        let mut size = 0u64;
        let mut n = 0u64;
        let mut buf = BytesMut::new();
        let mut in_flight = FuturesUnordered::new();
        let result: S3Result<()> = async {
            if let Some(mut body) = body {
                while let Some(piece) = body.next().await {
                    let piece = piece.map_err(|e| {
                        S3Error::with_message(S3ErrorCode::IncompleteBody, format!("the body stopped: {e}"))
                    })?;
                    size += piece.len() as u64;
                    if size > limit {
                        return Err(s3_error!(EntityTooLarge));
                    }
                    md5.update(&piece);
                    sums.update(&piece);
                    buf.extend_from_slice(&piece);
                    while buf.len() as u64 >= self.chunk {
                        let chunk = buf.split_to(self.chunk as usize).freeze();
                        in_flight.push(self.put_chunk(id, n, chunk));
                        n += 1;
                        if in_flight.len() >= CHUNKS_AT_ONCE {
                            in_flight.next().await.transpose()?;
                        }
                    }
                }
            }
            if !buf.is_empty() {
                in_flight.push(self.put_chunk(id, n, buf.split().freeze()));
                n += 1;
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
            Ok(())
        }
        .await;
        drop(in_flight);
        if let Err(e) = result {
            let written = vec![Extent {
                id: format!("{id:032x}"),
                size: n * self.chunk,
                chunk: self.chunk,
            }];
            let _ = self.backend.run(move |c| remove_chunks(c, written)).await;
            return Err(e);
        }
        Ok((size, md5.finalize().into()))
    }

    /// One chunk, handed to a client thread without a copy.
    async fn put_chunk(&self, id: u128, n: u64, data: Bytes) -> S3Result<()> {
        let key = chunk_key(id, n);
        self.backend
            .run(move |c| async move { c.put(&key, &data, None).await })
            .await
            .map_err(gone)?
            .map(|_| ())
            .map_err(node_error)
    }

    /// Points `key` at `record` (the last write of a PUT), honouring `If-Match` and
    /// `If-None-Match`; the object it replaced is named as garbage before, and its chunks
    /// removed after.
    pub(crate) async fn switch_entry(
        &self,
        bucket: &str,
        key: &str,
        record: &ObjectRecord,
        if_match: Option<&ETagCondition>,
        if_none_match: Option<&ETagCondition>,
    ) -> S3Result<()> {
        let entry = entry_key(bucket, key);
        for _ in 0..ENTRY_TRIES {
            let current = self.record(bucket, key).await?;
            check_write_conditions(current.as_ref().map(|(r, _)| r), if_match, if_none_match)?;
            let (version, garbage) = match &current {
                Some((old, v)) => (*v, self.garbage_intent(bucket, key, None, &old.extents()).await?),
                None => (0, None),
            };
            match self
                .put_raw(entry.clone(), record.encode(), Some(version))
                .await?
            {
                Ok(_) => {
                    if let Some((old, _)) = current {
                        self.remove_chunks_later(old.extents(), garbage);
                    }
                    return Ok(());
                }
                // A garbage intent left by a lost race is harmless: the record it named was
                // replaced by the winner, whose own intent names the same chunks.
                Err(e) if version_mismatch(&e) => continue,
                Err(e) => return Err(node_error(e)),
            }
        }
        Err(contended())
    }

    /// Deletes `key`'s entry (nothing if absent, as S3 answers) and, later, its chunks.
    async fn delete_key(&self, bucket: &str, key: &str) -> S3Result<()> {
        for _ in 0..ENTRY_TRIES {
            let Some((record, version)) = self.record(bucket, key).await? else {
                return Ok(());
            };
            let garbage = self.garbage_intent(bucket, key, None, &record.extents()).await?;
            match self.delete_raw(entry_key(bucket, key), Some(version)).await? {
                Ok(_) => {
                    self.remove_chunks_later(record.extents(), garbage);
                    return Ok(());
                }
                Err(e) if version_mismatch(&e) => continue,
                Err(e) => return Err(node_error(e)),
            }
        }
        Err(contended())
    }

    /// A page of the ordered index `tag` (keys starting with `prefix`, rolled up by
    /// `delimiter`), from the start or from `from`.
    pub(crate) async fn index_page(
        &self,
        tag: &[u8],
        prefix: &[u8],
        delimiter: &[u8],
        from: Option<ListFrom>,
        limit: u32,
    ) -> S3Result<ListPage> {
        let (index, prefix, delimiter) = (tag.to_vec(), prefix.to_vec(), delimiter.to_vec());
        self.backend
            .run(move |c| async move {
                let args = ListArgs {
                    index: &index,
                    prefix: &prefix,
                    start_after: None,
                    delimiter: &delimiter,
                    limit,
                    start_at: None,
                };
                match &from {
                    Some(from) => c.list(args.from(from)).await,
                    None => c.list(args).await,
                }
            })
            .await
            .map_err(gone)?
            .map_err(node_error)
    }

    /// One page of a bucket's listing: objects (with their records), common prefixes, and
    /// where the next page starts.
    async fn list_page(
        &self,
        bucket: &str,
        prefix: &str,
        delimiter: &str,
        from: Option<ListFrom>,
        max_keys: u32,
    ) -> S3Result<(Vec<Object>, Vec<CommonPrefix>, Option<ListFrom>)> {
        let tag = entry_prefix(bucket);
        let full_prefix = format!("{tag}{prefix}").into_bytes();
        let page = self
            .index_page(tag.as_bytes(), &full_prefix, delimiter.as_bytes(), from, max_keys)
            .await?;
        let strip = |name: &[u8]| String::from_utf8_lossy(&name[tag.len().min(name.len())..]).into_owned();
        let mut prefixes = Vec::new();
        let mut keys = Vec::new();
        for item in &page.items {
            match item {
                ListItem::Prefix(p) => prefixes.push(CommonPrefix {
                    prefix: Some(strip(p)),
                }),
                ListItem::Key { key, .. } => keys.push(key.clone()),
            }
        }
        // Each entry's record, for its size, ETag and time.
        let mut reads = FuturesOrdered::new();
        let mut objects = Vec::with_capacity(keys.len());
        for key in keys {
            reads.push_back(async move {
                let got = self.get(key.clone()).await;
                (key, got)
            });
            if reads.len() >= RECORDS_AT_ONCE {
                if let Some((key, got)) = reads.next().await {
                    objects.extend(listed_object(&strip(&key), got?));
                }
            }
        }
        while let Some((key, got)) = reads.next().await {
            objects.extend(listed_object(&strip(&key), got?));
        }
        Ok((objects, prefixes, page.next))
    }

    /// The continuation token of a page's next start.
    fn token(next: &ListFrom) -> String {
        match next {
            ListFrom::After(k) => format!("a{}", hex::encode(k)),
            ListFrom::At(k) => format!("t{}", hex::encode(k)),
        }
    }

    /// A continuation token back into where the next page starts, within `bucket`.
    fn from_token(bucket: &str, token: &str) -> S3Result<ListFrom> {
        let bad = || {
            S3Error::with_message(
                S3ErrorCode::InvalidArgument,
                "the continuation token is not valid",
            )
        };
        let (kind, rest) = token.split_at_checked(1).ok_or_else(bad)?;
        let key = hex::decode(rest).map_err(|_| bad())?;
        if !key.starts_with(entry_prefix(bucket).as_bytes()) {
            return Err(bad());
        }
        match kind {
            "a" => Ok(ListFrom::After(key)),
            "t" => Ok(ListFrom::At(key)),
            _ => Err(bad()),
        }
    }

    pub(crate) fn object_body(&self, record: ObjectRecord, range: std::ops::Range<u64>) -> StreamingBlob {
        if let (true, Some(data)) = (record.inline, &record.data) {
            let piece = data.slice(range.start as usize..range.end as usize);
            return StreamingBlob::wrap(futures::stream::iter([Ok::<_, std::io::Error>(piece)]));
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(CHUNKS_AT_ONCE);
        let backend = self.backend.clone();
        let reading = Reading::start(&self.readers, &record);
        tokio::spawn(async move {
            let _reading = reading;
            let _ = backend
                .run(move |c| async move {
                    let mut reads = FuturesOrdered::new();
                    let mut parts = record.chunks_for(range).into_iter();
                    loop {
                        while reads.len() < CHUNKS_AT_ONCE {
                            let Some(part) = parts.next() else { break };
                            let c = c.clone();
                            reads.push_back(async move {
                                let range = (!part.whole).then_some(ByteRange {
                                    offset: part.lo,
                                    len: part.hi - part.lo,
                                });
                                (
                                    part.hi - part.lo,
                                    c.get_range(&chunk_key(part.id, part.n), range).await,
                                )
                            });
                        }
                        let Some((want, got)) = reads.next().await else {
                            return;
                        };
                        let piece = match got {
                            Ok(Some((bytes, _))) if bytes.len() as u64 >= want => {
                                Ok(Bytes::from(bytes).slice(..want as usize))
                            }
                            Ok(_) => Err(std::io::Error::other("a chunk of the object is missing")),
                            Err(e) => Err(std::io::Error::other(format!("storage: {e}"))),
                        };
                        let failed = piece.is_err();
                        if tx.send(piece).await.is_err() || failed {
                            return;
                        }
                    }
                })
                .await;
        });
        StreamingBlob::wrap(ChunkStream(rx))
    }
}

/// Deletes every chunk of `extents` (a chunk already gone is fine).
async fn remove_chunks(c: std::rc::Rc<NodeClient>, extents: Vec<Extent>) {
    for e in extents {
        let Some(id) = e.id() else { continue };
        for n in 0..e.chunks() {
            let _ = c.delete(&chunk_key(id, n), None).await;
        }
    }
}

/// The checksums a PUT's headers carry.
fn checksum_given(input: &PutObjectInput) -> Checksum {
    Checksum {
        checksum_crc32: input.checksum_crc32.clone(),
        checksum_crc32c: input.checksum_crc32c.clone(),
        checksum_crc64nvme: input.checksum_crc64nvme.clone(),
        checksum_sha1: input.checksum_sha1.clone(),
        checksum_sha256: input.checksum_sha256.clone(),
        checksum_type: None,
    }
}

/// What a request's body is to be checked against (see `checksums`).
pub(crate) fn body_checksums<T>(
    req: &S3Request<T>,
    given: Checksum,
    algorithm: Option<&ChecksumAlgorithm>,
) -> BodyChecksums {
    let trailer = req.headers.get("x-amz-trailer").and_then(|v| v.to_str().ok());
    BodyChecksums::new(given, algorithm, trailer)
}

/// Whether a GET or HEAD asks for the object's checksums (and is of the whole object).
fn wants_checksums(mode: Option<&ChecksumMode>, ranged: bool) -> bool {
    !ranged && mode.is_some_and(|m| m.as_str() == ChecksumMode::ENABLED)
}

/// A small body read whole (at most `limit` bytes: more is an incomplete body, since its
/// declared length was within the limit), with its MD5, passing through `sums`.
async fn read_small(
    body: Option<StreamingBlob>,
    limit: u64,
    sums: &mut BodyChecksums,
) -> S3Result<(Bytes, [u8; 16])> {
    let mut buf = BytesMut::new();
    let mut md5 = Md5::new();
    if let Some(mut body) = body {
        while let Some(piece) = body.next().await {
            let piece = piece.map_err(|e| {
                S3Error::with_message(S3ErrorCode::IncompleteBody, format!("the body stopped: {e}"))
            })?;
            if (buf.len() + piece.len()) as u64 > limit {
                return Err(s3_error!(
                    IncompleteBody,
                    "the body is longer than its Content-Length"
                ));
            }
            md5.update(&piece);
            sums.update(&piece);
            buf.extend_from_slice(&piece);
        }
    }
    Ok((buf.freeze(), md5.finalize().into()))
}

/// A key whose conditional write lost `ENTRY_TRIES` races in a row.
fn contended() -> S3Error {
    s3_error!(SlowDown, "the key is written by others too often; try again")
}

/// The most of a refused request's body read and dropped before the answer.
const DRAIN_LIMIT: u64 = 1 << 20;

/// Reads and drops a request's body that is refused before it was read (up to
/// `DRAIN_LIMIT`): an answer sent with the body still unread left its bytes in the
/// connection, and hyper took them for the start of the next request (a bare 400, seen
/// by the boto3 suite after a refused PUT). Past the limit the connection closes.
pub(crate) async fn drain(body: Option<StreamingBlob>) {
    let Some(mut body) = body else { return };
    let mut read = 0u64;
    while let Some(Ok(piece)) = body.next().await {
        read += piece.len() as u64;
        if read > DRAIN_LIMIT {
            return;
        }
    }
}

/// A listed entry as S3's `Object` (None if its record is gone or not one).
fn listed_object(key: &str, got: Option<(Vec<u8>, u64)>) -> Option<Object> {
    let record = ObjectRecord::decode(&got?.0)?;
    Some(Object {
        key: Some(key.to_string()),
        size: Some(record.size as i64),
        e_tag: Some(ETag::Strong(record.etag)),
        last_modified: Some(timestamp(record.modified_ms)),
        storage_class: Some(ObjectStorageClass::from_static(ObjectStorageClass::STANDARD)),
        ..Default::default()
    })
}

/// Whether an ETag condition holds for `record`.
fn etag_matches(c: &ETagCondition, record: &ObjectRecord) -> bool {
    match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == record.etag,
    }
}

/// `If-Match` / `If-None-Match` of a write against the object there now.
fn check_write_conditions(
    current: Option<&ObjectRecord>,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match (c, current) {
        (ETagCondition::Any, Some(_)) => true,
        (ETagCondition::ETag(e), Some(r)) => e.value() == r.etag,
        (_, None) => false,
    };
    if let Some(c) = if_match {
        if current.is_none() {
            return Err(s3_error!(NoSuchKey));
        }
        if !matches(c) {
            return Err(s3_error!(PreconditionFailed));
        }
    }
    if let Some(c) = if_none_match {
        if matches(c) {
            return Err(s3_error!(PreconditionFailed));
        }
    }
    Ok(())
}

/// A GET's or HEAD's conditions: Err(NotModified / PreconditionFailed) if they fail.
fn check_read_conditions(
    record: &ObjectRecord,
    if_match: Option<&ETagCondition>,
    if_none_match: Option<&ETagCondition>,
) -> S3Result<()> {
    let matches = |c: &ETagCondition| match c {
        ETagCondition::Any => true,
        ETagCondition::ETag(e) => e.value() == record.etag,
    };
    if if_match.is_some_and(|c| !matches(c)) {
        return Err(s3_error!(PreconditionFailed));
    }
    if if_none_match.is_some_and(matches) {
        return Err(s3_error!(NotModified));
    }
    Ok(())
}

/// A GET's chunk ids, counted in the gateway's readers for as long as it lives.
struct Reading {
    readers: Arc<std::sync::Mutex<std::collections::HashMap<u128, u32>>>,
    ids: Vec<u128>,
}

impl Reading {
    fn start(
        readers: &Arc<std::sync::Mutex<std::collections::HashMap<u128, u32>>>,
        record: &ObjectRecord,
    ) -> Reading {
        let ids: Vec<u128> = record.extents().iter().filter_map(Extent::id).collect();
        let mut map = readers.lock().unwrap_or_else(|p| p.into_inner());
        for id in &ids {
            *map.entry(*id).or_insert(0) += 1;
        }
        Reading {
            readers: readers.clone(),
            ids,
        }
    }
}

impl Drop for Reading {
    fn drop(&mut self) {
        let mut map = self.readers.lock().unwrap_or_else(|p| p.into_inner());
        for id in &self.ids {
            if let Some(n) = map.get_mut(id) {
                *n -= 1;
                if *n == 0 {
                    map.remove(id);
                }
            }
        }
    }
}

/// A bounded channel's receiver as the body's stream.
struct ChunkStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures::Stream for ChunkStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

fn metadata_of(record: &ObjectRecord) -> Option<Metadata> {
    (!record.metadata.is_empty()).then(|| {
        record
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    })
}

#[async_trait::async_trait]
impl S3 for Gateway {
    async fn create_bucket(
        &self,
        req: S3Request<CreateBucketInput>,
    ) -> S3Result<S3Response<CreateBucketOutput>> {
        let bucket = req.input.bucket;
        let record = serde_json::to_vec(&BucketRecord { created_ms: now_ms() }).unwrap_or_default();
        match self.put_raw(bucket_key(&bucket), record, Some(0)).await? {
            Ok(_) => Ok(S3Response::new(CreateBucketOutput {
                location: Some(format!("/{bucket}")),
            })),
            Err(e) if version_mismatch(&e) => Err(s3_error!(BucketAlreadyOwnedByYou)),
            Err(e) => Err(node_error(e)),
        }
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> S3Result<S3Response<HeadBucketOutput>> {
        self.bucket_exists(&req.input.bucket).await?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn delete_bucket(
        &self,
        req: S3Request<DeleteBucketInput>,
    ) -> S3Result<S3Response<DeleteBucketOutput>> {
        let bucket = req.input.bucket;
        let Some((_, version)) = self.get(bucket_key(&bucket)).await? else {
            return Err(s3_error!(NoSuchBucket));
        };
        let (objects, prefixes, _) = self.list_page(&bucket, "", "", None, 1).await?;
        if !objects.is_empty() || !prefixes.is_empty() {
            return Err(s3_error!(BucketNotEmpty));
        }
        match self.delete_raw(bucket_key(&bucket), Some(version)).await? {
            Ok(_) => Ok(S3Response::new(DeleteBucketOutput::default())),
            Err(e) if version_mismatch(&e) => {
                Err(s3_error!(OperationAborted, "the bucket changed meanwhile"))
            }
            Err(e) => Err(node_error(e)),
        }
    }

    async fn list_buckets(
        &self,
        _req: S3Request<ListBucketsInput>,
    ) -> S3Result<S3Response<ListBucketsOutput>> {
        let items = self
            .backend
            .run(|c| async move {
                c.list_all(ListArgs {
                    index: BUCKETS.as_bytes(),
                    prefix: BUCKETS.as_bytes(),
                    start_after: None,
                    delimiter: b"",
                    limit: 1000,
                    start_at: None,
                })
                .await
            })
            .await
            .map_err(gone)?
            .map_err(node_error)?;
        let mut buckets = Vec::new();
        for item in items {
            if let ListItem::Key { key, .. } = item {
                let name = String::from_utf8_lossy(&key[BUCKETS.len()..]).into_owned();
                let created = match self.get(key).await? {
                    Some((v, _)) => serde_json::from_slice::<BucketRecord>(&v).map_or(0, |b| b.created_ms),
                    None => continue,
                };
                buckets.push(Bucket {
                    name: Some(name),
                    creation_date: Some(timestamp(created)),
                    ..Default::default()
                });
            }
        }
        Ok(S3Response::new(ListBucketsOutput {
            buckets: Some(buckets),
            owner: Some(Owner {
                display_name: Some("hotshard".into()),
                id: Some("hotshard".into()),
            }),
            ..Default::default()
        }))
    }

    async fn put_object(&self, req: S3Request<PutObjectInput>) -> S3Result<S3Response<PutObjectOutput>> {
        let mut sums = body_checksums(
            &req,
            checksum_given(&req.input),
            req.input.checksum_algorithm.as_ref(),
        );
        let trailers = req.trailing_headers;
        let input = req.input;
        let (bucket, key) = (input.bucket, input.key);
        let metadata: BTreeMap<String, String> = input.metadata.unwrap_or_default().into_iter().collect();
        let id = new_id();
        // A small object (its length known before the body) goes inline in its entry: no
        // chunks, so no intent either.
        let inline = input
            .content_length
            .is_some_and(|n| (0..=INLINE_MAX as i64).contains(&n));
        let checked = async {
            check_entry_key(&bucket, &key)?;
            check_metadata(&metadata)?;
            if input
                .content_length
                .is_some_and(|n| n < 0 || n as u64 > MAX_PUT_BYTES)
            {
                return Err(s3_error!(EntityTooLarge));
            }
            self.bucket_exists(&bucket).await?;
            if inline {
                return Ok(None);
            }
            let intent = Intent::Object {
                bucket: bucket.clone(),
                key: key.clone(),
                id: format!("{id:032x}"),
            };
            self.begin_intent(&intent, id).await.map(Some)
        }
        .await;
        let intent = match checked {
            Ok(i) => i,
            Err(e) => {
                drain(input.body).await;
                return Err(e);
            }
        };
        let (size, md5, data) = if inline {
            let (data, md5) = read_small(input.body, INLINE_MAX, &mut sums).await?;
            (data.len() as u64, md5, Some(data))
        } else {
            let (size, md5) = self
                .write_chunks(id, input.body, MAX_PUT_BYTES, &mut sums)
                .await?;
            (size, md5, None)
        };
        // On a refusal from here on, the chunks go now; the intent stays for the sweep.
        let cleanup = |this: &Self| {
            if !inline {
                this.remove_chunks_later(
                    vec![Extent {
                        id: format!("{id:032x}"),
                        size,
                        chunk: this.chunk,
                    }],
                    None,
                )
            }
        };
        if input.content_length.is_some_and(|n| n as u64 != size) {
            cleanup(self);
            return Err(s3_error!(IncompleteBody));
        }
        if let Some(want) = &input.content_md5 {
            let got = base64_md5(&md5);
            if *want != got {
                cleanup(self);
                return Err(s3_error!(BadDigest));
            }
        }
        let checksums = match sums.finish(trailers.and_then(|t| t.take()).as_ref()) {
            Ok(c) => c,
            Err(e) => {
                cleanup(self);
                return Err(e);
            }
        };
        let record = ObjectRecord {
            id: format!("{id:032x}"),
            size,
            chunk: self.chunk,
            etag: hex::encode(md5),
            modified_ms: now_ms(),
            content_type: input.content_type,
            metadata,
            parts: Vec::new(),
            checksums,
            inline,
            data,
        };
        if let Err(e) = self
            .switch_entry(
                &bucket,
                &key,
                &record,
                input.if_match.as_ref(),
                input.if_none_match.as_ref(),
            )
            .await
        {
            cleanup(self);
            return Err(e);
        }
        if let Some(intent) = intent {
            self.end_intent(intent);
        }
        let c = to_dto(&record.checksums);
        Ok(S3Response::new(PutObjectOutput {
            e_tag: Some(ETag::Strong(record.etag)),
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            ..Default::default()
        }))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> S3Result<S3Response<GetObjectOutput>> {
        let input = req.input;
        let Some((record, _)) = self.record(&input.bucket, &input.key).await? else {
            self.bucket_exists(&input.bucket).await?;
            return Err(s3_error!(NoSuchKey));
        };
        check_read_conditions(&record, input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let (range, content_range) = match &input.range {
            None => (0..record.size, None),
            Some(r) => {
                let span = r.check(record.size).map_err(|_| s3_error!(InvalidRange))?;
                let cr = format!("bytes {}-{}/{}", span.start, span.end - 1, record.size);
                (span, Some(cr))
            }
        };
        let len = range.end - range.start;
        let c = if wants_checksums(input.checksum_mode.as_ref(), input.range.is_some()) {
            to_dto(&record.checksums)
        } else {
            Checksum::default()
        };
        let output = GetObjectOutput {
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            content_length: Some(len as i64),
            content_range,
            content_type: record.content_type.clone(),
            e_tag: Some(ETag::Strong(record.etag.clone())),
            last_modified: Some(timestamp(record.modified_ms)),
            metadata: metadata_of(&record),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        };
        let output = GetObjectOutput {
            body: Some(self.object_body(record, range)),
            ..output
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> S3Result<S3Response<HeadObjectOutput>> {
        let input = req.input;
        let Some((record, _)) = self.record(&input.bucket, &input.key).await? else {
            self.bucket_exists(&input.bucket).await?;
            return Err(s3_error!(NoSuchKey));
        };
        check_read_conditions(&record, input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let c = if wants_checksums(input.checksum_mode.as_ref(), input.range.is_some()) {
            to_dto(&record.checksums)
        } else {
            Checksum::default()
        };
        Ok(S3Response::new(HeadObjectOutput {
            checksum_crc32: c.checksum_crc32,
            checksum_crc32c: c.checksum_crc32c,
            checksum_crc64nvme: c.checksum_crc64nvme,
            checksum_sha1: c.checksum_sha1,
            checksum_sha256: c.checksum_sha256,
            content_length: Some(record.size as i64),
            content_type: record.content_type.clone(),
            e_tag: Some(ETag::Strong(record.etag.clone())),
            last_modified: Some(timestamp(record.modified_ms)),
            metadata: metadata_of(&record),
            accept_ranges: Some("bytes".into()),
            ..Default::default()
        }))
    }

    async fn delete_object(
        &self,
        req: S3Request<DeleteObjectInput>,
    ) -> S3Result<S3Response<DeleteObjectOutput>> {
        let input = req.input;
        self.bucket_exists(&input.bucket).await?;
        self.delete_key(&input.bucket, &input.key).await?;
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    async fn delete_objects(
        &self,
        req: S3Request<DeleteObjectsInput>,
    ) -> S3Result<S3Response<DeleteObjectsOutput>> {
        let input = req.input;
        if input.delete.objects.len() > MAX_DELETES {
            return Err(S3Error::with_message(
                S3ErrorCode::MalformedXML,
                format!("at most {MAX_DELETES} keys a request"),
            ));
        }
        self.bucket_exists(&input.bucket).await?;
        let quiet = input.delete.quiet.unwrap_or(false);
        let (mut deleted, mut errors) = (Vec::new(), Vec::new());
        for o in input.delete.objects {
            match self.delete_key(&input.bucket, &o.key).await {
                Ok(()) if quiet => {}
                Ok(()) => deleted.push(DeletedObject {
                    key: Some(o.key),
                    ..Default::default()
                }),
                Err(e) => errors.push(Error {
                    code: Some(e.code().as_str().to_string()),
                    key: Some(o.key),
                    message: e.message().map(str::to_string),
                    version_id: None,
                }),
            }
        }
        Ok(S3Response::new(DeleteObjectsOutput {
            deleted: Some(deleted),
            errors: Some(errors),
            ..Default::default()
        }))
    }

    async fn copy_object(&self, req: S3Request<CopyObjectInput>) -> S3Result<S3Response<CopyObjectOutput>> {
        let input = req.input;
        let CopySource::Bucket {
            bucket: from_bucket,
            key: from_key,
            ..
        } = &input.copy_source
        else {
            return Err(s3_error!(NotImplemented, "copies from access points"));
        };
        check_entry_key(&input.bucket, &input.key)?;
        let Some((source, _)) = self.record(from_bucket, from_key).await? else {
            self.bucket_exists(from_bucket).await?;
            return Err(s3_error!(NoSuchKey));
        };
        if input
            .copy_source_if_match
            .as_ref()
            .is_some_and(|c| !etag_matches(c, &source))
            || input
                .copy_source_if_none_match
                .as_ref()
                .is_some_and(|c| etag_matches(c, &source))
        {
            return Err(s3_error!(PreconditionFailed));
        }
        if source.size > MAX_PUT_BYTES {
            return Err(S3Error::with_message(
                S3ErrorCode::InvalidRequest,
                "objects over 5 GiB are copied with UploadPartCopy",
            ));
        }
        self.bucket_exists(&input.bucket).await?;
        let replace = input
            .metadata_directive
            .as_ref()
            .is_some_and(|d| d.as_str() == MetadataDirective::REPLACE);
        let (content_type, metadata) = if replace {
            let m: BTreeMap<String, String> = input.metadata.unwrap_or_default().into_iter().collect();
            check_metadata(&m)?;
            (input.content_type, m)
        } else {
            (source.content_type.clone(), source.metadata.clone())
        };
        // The bytes go through the gateway: chunks are not shared between objects (a delete
        // removes its object's chunks), so a copy writes its own.
        let size = source.size;
        let body = self.object_body(source, 0..size);
        let id = new_id();
        let intent = Intent::Object {
            bucket: input.bucket.clone(),
            key: input.key.clone(),
            id: format!("{id:032x}"),
        };
        let intent = self.begin_intent(&intent, id).await?;
        let mut no_sums = BodyChecksums::new(Checksum::default(), None, None);
        let (written, md5) = self
            .write_chunks(id, Some(body), MAX_PUT_BYTES, &mut no_sums)
            .await?;
        let extent = Extent {
            id: format!("{id:032x}"),
            size: written,
            chunk: self.chunk,
        };
        if written != size {
            self.remove_chunks_later(vec![extent], None);
            return Err(s3_error!(InternalError, "the source changed while it was copied"));
        }
        let record = ObjectRecord {
            id: extent.id.clone(),
            size,
            chunk: self.chunk,
            etag: hex::encode(md5),
            modified_ms: now_ms(),
            content_type,
            metadata,
            parts: Vec::new(),
            checksums: BTreeMap::new(),
            inline: false,
            data: None,
        };
        if let Err(e) = self
            .switch_entry(&input.bucket, &input.key, &record, None, None)
            .await
        {
            self.remove_chunks_later(vec![extent], None);
            return Err(e);
        }
        self.end_intent(intent);
        Ok(S3Response::new(CopyObjectOutput {
            copy_object_result: Some(CopyObjectResult {
                e_tag: Some(ETag::Strong(record.etag)),
                last_modified: Some(timestamp(record.modified_ms)),
                ..Default::default()
            }),
            ..Default::default()
        }))
    }

    async fn create_multipart_upload(
        &self,
        req: S3Request<CreateMultipartUploadInput>,
    ) -> S3Result<S3Response<CreateMultipartUploadOutput>> {
        Ok(S3Response::new(self.create_upload(req.input).await?))
    }

    async fn upload_part(&self, req: S3Request<UploadPartInput>) -> S3Result<S3Response<UploadPartOutput>> {
        Ok(S3Response::new(self.upload_part_of(req).await?))
    }

    async fn complete_multipart_upload(
        &self,
        req: S3Request<CompleteMultipartUploadInput>,
    ) -> S3Result<S3Response<CompleteMultipartUploadOutput>> {
        Ok(S3Response::new(self.complete_upload(req.input).await?))
    }

    async fn abort_multipart_upload(
        &self,
        req: S3Request<AbortMultipartUploadInput>,
    ) -> S3Result<S3Response<AbortMultipartUploadOutput>> {
        self.abort_upload(req.input).await?;
        Ok(S3Response::new(AbortMultipartUploadOutput::default()))
    }

    async fn list_parts(&self, req: S3Request<ListPartsInput>) -> S3Result<S3Response<ListPartsOutput>> {
        Ok(S3Response::new(self.list_parts_of(req.input).await?))
    }

    async fn list_multipart_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        Ok(S3Response::new(self.list_uploads(req.input).await?))
    }

    async fn list_objects_v2(
        &self,
        req: S3Request<ListObjectsV2Input>,
    ) -> S3Result<S3Response<ListObjectsV2Output>> {
        let input = req.input;
        self.bucket_exists(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as u32;
        let from = match (&input.continuation_token, &input.start_after) {
            (Some(t), _) => Some(Self::from_token(&input.bucket, t)?),
            (None, Some(after)) => Some(ListFrom::After(entry_key(&input.bucket, after))),
            (None, None) => None,
        };
        let (objects, prefixes, next) = if max_keys == 0 {
            (Vec::new(), Vec::new(), None)
        } else {
            self.list_page(&input.bucket, &prefix, &delimiter, from, max_keys)
                .await?
        };
        Ok(S3Response::new(ListObjectsV2Output {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some((objects.len() + prefixes.len()) as i32),
            is_truncated: Some(next.is_some()),
            next_continuation_token: next.as_ref().map(Self::token),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }

    async fn list_objects(
        &self,
        req: S3Request<ListObjectsInput>,
    ) -> S3Result<S3Response<ListObjectsOutput>> {
        let input = req.input;
        self.bucket_exists(&input.bucket).await?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().unwrap_or_default();
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as u32;
        let from = input
            .marker
            .as_ref()
            .map(|m| ListFrom::After(entry_key(&input.bucket, m)));
        let (objects, prefixes, next) = if max_keys == 0 {
            (Vec::new(), Vec::new(), None)
        } else {
            self.list_page(&input.bucket, &prefix, &delimiter, from, max_keys)
                .await?
        };
        // A v1 listing resumes after a marker: the last key or common prefix returned.
        let last = objects
            .last()
            .and_then(|o| o.key.clone())
            .into_iter()
            .chain(prefixes.last().and_then(|p| p.prefix.clone()))
            .max();
        Ok(S3Response::new(ListObjectsOutput {
            name: Some(input.bucket),
            prefix: Some(prefix),
            delimiter: input.delimiter,
            marker: input.marker,
            max_keys: Some(max_keys as i32),
            is_truncated: Some(next.is_some()),
            next_marker: if next.is_some() { last } else { None },
            contents: Some(objects),
            common_prefixes: Some(prefixes),
            encoding_type: input.encoding_type,
            ..Default::default()
        }))
    }
}

pub(crate) fn base64_md5(md5: &[u8; 16]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(24);
    for chunk in md5.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_md5_is_base64_of_the_digest() {
        // The MD5 of "hello": its Content-MD5 header, as any S3 client sends it.
        let md5: [u8; 16] = Md5::digest(b"hello").into();
        assert_eq!(base64_md5(&md5), "XUFAKrxLKna5cZ2REBfFkg==");
    }

    #[test]
    fn a_token_names_a_key_of_its_own_bucket_only() {
        let next = ListFrom::After(entry_key("b", "x/y"));
        let token = Gateway::token(&next);
        assert_eq!(Gateway::from_token("b", &token).ok(), Some(next));
        assert!(Gateway::from_token("other", &token).is_err());
        for junk in ["", "a", "zz", "q00", "a0g"] {
            assert!(Gateway::from_token("b", junk).is_err());
        }
    }
}
