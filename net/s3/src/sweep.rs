//! Chunks no entry names: a PUT, a part or a copy cut off between its chunks and its
//! record, or a replaced object's chunks whose removal a crash cut off. Before it writes
//! chunks, the gateway writes an intent naming them and what should come to name them; it
//! deletes the intent once the record is written (or the chunks are removed). The sweep
//! reads intents older than a bound and removes the chunks of those whose object never
//! named them, then the intent.
//!
//! Intents live in 64 small ordered indexes (`{s3i:NN}`, NN the id's low bits, so that
//! they spread over chains), keyed by time then id, so that a sweep reads the oldest first
//! and stops at the first one younger than the bound.

use std::rc::Rc;
use std::time::Duration;

use hotshard_net::client::{ClientError, ListArgs, ListFrom};
use hotshard_net::listing::ListItem;
use hotshard_net::Status;
use serde::{Deserialize, Serialize};

use crate::backend::NodeClient;
use crate::layout::{chunk_key, entry_key, part_key, Extent, ObjectRecord, PartRecord};

/// How many intent indexes there are.
pub const INTENT_INDEXES: u32 = 64;
/// Consecutive chunks found absent after which a chunk walk of unknown length ends (a
/// writer has at most this many less one in flight).
const MISSES_END: u64 = 8;

/// What an intent's chunks are for.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Intent {
    /// Chunks of a new object (a PUT or a copy) for this key.
    Object { bucket: String, key: String, id: String },
    /// Chunks of part `n` of an upload.
    Part {
        bucket: String,
        key: String,
        upload_id: String,
        n: u32,
        id: String,
    },
    /// Chunks about to lose their last record (an object replaced or deleted, a part sent
    /// again, an upload aborted or completed without them), to be removed unless the
    /// key's entry (or the part's record, if `part` names one) names them after all.
    Garbage {
        bucket: String,
        key: String,
        part: Option<(String, u32)>,
        extents: Vec<Extent>,
    },
}

fn index_of(id: u128) -> String {
    format!("{{s3i:{:02}}}", (id % INTENT_INDEXES as u128) as u32)
}

/// The key of an intent made at `ms` for chunks under `id` (for garbage, the first extent's).
pub fn intent_key(ms: u64, id: u128) -> Vec<u8> {
    format!("{}{ms:016x}{id:032x}", index_of(id)).into_bytes()
}

/// When the intent at `key` was made (None if the key is not an intent's).
fn made_at(key: &[u8]) -> Option<u64> {
    let tail = std::str::from_utf8(key).ok()?.split_once('}')?.1;
    u64::from_str_radix(tail.get(..16)?, 16).ok()
}

/// What one sweep did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SweepCount {
    /// Intents read that were older than the bound.
    pub intents: u64,
    /// Chunks removed.
    pub chunks_removed: u64,
}

fn absent(r: &Result<u64, ClientError>) -> bool {
    matches!(r, Err(ClientError::Status(Status::NotFound)))
}

/// Removes chunks `0..` of `id` until `MISSES_END` in a row are absent.
async fn remove_unknown_length(c: &NodeClient, id: u128) -> Result<u64, ClientError> {
    let (mut n, mut misses, mut removed) = (0u64, 0u64, 0u64);
    while misses < MISSES_END {
        let r = c.delete(&chunk_key(id, n), None).await;
        if absent(&r) {
            misses += 1;
        } else {
            r?;
            misses = 0;
            removed += 1;
        }
        n += 1;
    }
    Ok(removed)
}

async fn remove_extent(c: &NodeClient, e: &Extent) -> Result<u64, ClientError> {
    let Some(id) = e.id() else { return Ok(0) };
    let mut removed = 0;
    for n in 0..e.chunks() {
        let r = c.delete(&chunk_key(id, n), None).await;
        if !absent(&r) {
            r?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// The chunk ids the record at `key` (an object's entry or a part's record) names.
async fn ids_named_by(c: &NodeClient, key: &[u8]) -> Result<Vec<String>, ClientError> {
    let Some((bytes, _)) = c.get(key).await? else {
        return Ok(Vec::new());
    };
    if let Some(r) = ObjectRecord::decode(&bytes) {
        return Ok(r.extents().into_iter().map(|e| e.id).collect());
    }
    Ok(serde_json::from_slice::<PartRecord>(&bytes)
        .map(|p| vec![p.extent.id])
        .unwrap_or_default())
}

async fn named_by(c: &NodeClient, key: &[u8], id: &str) -> Result<bool, ClientError> {
    Ok(ids_named_by(c, key).await?.iter().any(|i| i == id))
}

/// Settles one intent: its chunks removed unless a record names them.
async fn settle(c: &NodeClient, intent: &Intent) -> Result<u64, ClientError> {
    match intent {
        Intent::Object { bucket, key, id } => {
            if named_by(c, &entry_key(bucket, key), id).await? {
                return Ok(0);
            }
            match u128::from_str_radix(id, 16) {
                Ok(n) => remove_unknown_length(c, n).await,
                Err(_) => Ok(0),
            }
        }
        Intent::Part {
            bucket,
            key,
            upload_id,
            n,
            id,
        } => {
            if named_by(c, &part_key(upload_id, *n), id).await?
                || named_by(c, &entry_key(bucket, key), id).await?
            {
                return Ok(0);
            }
            match u128::from_str_radix(id, 16) {
                Ok(n) => remove_unknown_length(c, n).await,
                Err(_) => Ok(0),
            }
        }
        Intent::Garbage {
            bucket,
            key,
            part,
            extents,
        } => {
            let mut named = ids_named_by(c, &entry_key(bucket, key)).await?;
            if let Some((upload_id, n)) = part {
                named.extend(ids_named_by(c, &part_key(upload_id, *n)).await?);
            }
            let mut removed = 0;
            for e in extents.iter().filter(|e| !named.contains(&e.id)) {
                removed += remove_extent(c, e).await?;
            }
            Ok(removed)
        }
    }
}

/// One sweep of every intent index: intents made more than `older_than` ago (by `now_ms`)
/// are settled and deleted.
pub async fn sweep_once(
    c: Rc<NodeClient>,
    now_ms: u64,
    older_than: Duration,
) -> Result<SweepCount, ClientError> {
    let bound = now_ms.saturating_sub(older_than.as_millis() as u64);
    let mut count = SweepCount::default();
    for i in 0..INTENT_INDEXES {
        let tag = format!("{{s3i:{i:02}}}").into_bytes();
        let mut from: Option<ListFrom> = None;
        'pages: loop {
            let args = ListArgs {
                index: &tag,
                prefix: &tag,
                start_after: None,
                delimiter: b"",
                limit: 100,
                start_at: None,
            };
            let page = match &from {
                Some(f) => c.list(args.from(f)).await?,
                None => c.list(args).await?,
            };
            for item in &page.items {
                let ListItem::Key { key, .. } = item else { continue };
                match made_at(key) {
                    Some(ms) if ms < bound => {}
                    // Sorted by time: the rest are younger.
                    _ => break 'pages,
                }
                count.intents += 1;
                if let Some((bytes, version)) = c.get(key).await? {
                    if let Ok(intent) = serde_json::from_slice::<Intent>(&bytes) {
                        count.chunks_removed += settle(&c, &intent).await?;
                    }
                    // Gone or replaced meanwhile (another sweep): fine either way.
                    let _ = c.delete(key, Some(version)).await;
                }
            }
            match page.next {
                Some(next) => from = Some(next),
                None => break,
            }
        }
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_sort_by_time_within_their_index_and_spread_over_indexes() {
        let a = intent_key(1_000, 5);
        let b = intent_key(2_000, 5 + INTENT_INDEXES as u128);
        assert_eq!(a[..8], b[..8], "same index");
        assert!(a < b);
        assert_eq!(made_at(&a), Some(1_000));
        assert_eq!(made_at(b"{s3i:01}zz"), None);
        let indexes: std::collections::HashSet<_> = (0..1000u128).map(index_of).collect();
        assert_eq!(indexes.len(), INTENT_INDEXES as usize);
        let i = Intent::Part {
            bucket: "b".into(),
            key: "k".into(),
            upload_id: "u".into(),
            n: 3,
            id: "00".into(),
        };
        assert_eq!(
            serde_json::from_slice::<Intent>(&serde_json::to_vec(&i).unwrap()).unwrap(),
            i
        );
    }
}
