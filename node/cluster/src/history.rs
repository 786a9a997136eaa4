//! `hotshard cluster history PARTITION`: one partition's chain in every version of the map
//! etcd still holds (etcd keeps past revisions until it is compacted), oldest first, with
//! the registrations each map recorded. For an operator (or a failing test) asking how a
//! chain came to be as it is.

use std::fmt::Write as _;

use etcd_client::{Client, GetOptions};
use hotshard_placement::ShardMap;

use crate::error::{ClusterError, ClusterResult};
use crate::keys::ClusterKeys;

/// Most past maps read (each is one etcd read).
const MOST_MAPS: usize = 10_000;

/// Every map etcd still holds, oldest first, with the revision each was written at.
pub async fn map_history(client: &Client, keys: &ClusterKeys) -> ClusterResult<Vec<(i64, ShardMap)>> {
    let mut maps = Vec::new();
    let mut at = None;
    while maps.len() < MOST_MAPS {
        let options = at.map(|rev| GetOptions::new().with_revision(rev));
        let got = match client.clone().get(keys.map(), options).await {
            Ok(got) => got,
            // Compacted past this revision: the older maps are gone.
            Err(_) if at.is_some() => break,
            Err(e) => return Err(e.into()),
        };
        let Some(kv) = got.kvs().first() else { break };
        let map = ShardMap::from_bytes(kv.value())
            .map_err(|e| ClusterError::BadState(format!("the cluster map: {e}")))?;
        maps.push((kv.mod_revision(), map));
        if kv.create_revision() == kv.mod_revision() {
            break;
        }
        at = Some(kv.mod_revision() - 1);
    }
    maps.reverse();
    Ok(maps)
}

/// One line per map in which `partition`'s chain (or the registrations) changed: the
/// epoch, the revision, the chain's version and its replicas (node/shard:state).
pub fn chain_history(maps: &[(i64, ShardMap)], partition: u32) -> String {
    let mut out = String::new();
    let mut last = String::new();
    for (rev, map) in maps {
        let Some(chain) = map.chain(partition) else {
            continue;
        };
        let mut line = format!("v{}", chain.version);
        for r in &chain.replicas {
            match map.shards.get(r.shard as usize) {
                Some(s) => write!(line, " {}/{}:{:?}", s.node, s.shard, r.state),
                None => write!(line, " ?{}:{:?}", r.shard, r.state),
            }
            .ok();
        }
        let incarnations: Vec<String> = map
            .incarnations
            .iter()
            .map(|i| format!("{}@{:x}", i.node, i.incarnation))
            .collect();
        write!(line, "  registrations [{}]", incarnations.join(" ")).ok();
        if line != last {
            writeln!(out, "epoch {} rev {rev}: {line}", map.epoch).ok();
            last = line;
        }
    }
    out
}
