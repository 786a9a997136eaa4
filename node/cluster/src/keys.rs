//! Where the cluster's state lives in etcd: every key under one prefix per cluster, so that
//! several clusters (or test runs) share an etcd without touching each other.

use hotshard_placement::{SplitDone, SplitState};

/// The keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKeys {
    prefix: String,
}

impl ClusterKeys {
    /// Keys under `/hotshard/<cluster>/`. `cluster` names the cluster (letters, digits,
    /// `-` and `_`), so that a key cannot escape its prefix.
    pub fn new(cluster: &str) -> Result<ClusterKeys, String> {
        let ok = !cluster.is_empty()
            && cluster.len() <= 64
            && cluster
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !ok {
            return Err(format!(
                "cluster name {cluster:?}: 1 to 64 letters, digits, '-' or '_'"
            ));
        }
        Ok(ClusterKeys {
            prefix: format!("/hotshard/{cluster}/"),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Held (bound to its lease) by the acting coordinator; its value names it.
    pub fn coordinator(&self) -> String {
        format!("{}coordinator", self.prefix)
    }

    /// The cluster map: written only by the acting coordinator, in guarded transactions.
    pub fn map(&self) -> String {
        format!("{}map", self.prefix)
    }

    /// The cluster's id, made when it forms: every node keeps it with its data and refuses
    /// to serve a cluster with another.
    pub fn cluster_id(&self) -> String {
        format!("{}cluster_id", self.prefix)
    }

    /// The cluster's peer key (hex): nodes prove it to each other before any node-to-node
    /// request (`hotshard_net::auth`). Made once, before the cluster forms; whoever can
    /// read etcd can read it, so etcd is where the cluster's trust lives.
    pub fn peer_key(&self) -> String {
        format!("{}peer_key", self.prefix)
    }

    /// A node's registration, bound to the node's lease: gone when the node is.
    pub fn node(&self, id: u32) -> String {
        format!("{}nodes/{id:08}", self.prefix)
    }

    /// A syncing replica's report that it caught up with `partition`'s chain (value: the
    /// chain version it caught up under), read and removed by the acting coordinator.
    pub fn caught_up(&self, partition: u32, node: u32, shard: u32) -> String {
        format!("{}caught_up/{partition:05}/{node:08}/{shard:04}", self.prefix)
    }

    /// Prefix of every caught-up report.
    pub fn caught_up_prefix(&self) -> String {
        format!("{}caught_up/", self.prefix)
    }

    /// (partition, node, shard) of a caught-up report's key; None for any other key.
    pub fn parse_caught_up(&self, key: &str) -> Option<(u32, u32, u32)> {
        let rest = key.strip_prefix(&self.caught_up_prefix())?;
        let mut parts = rest.split('/').map(str::parse::<u32>);
        let (p, n, s) = (parts.next()?.ok()?, parts.next()?.ok()?, parts.next()?.ok()?);
        parts.next().is_none().then_some((p, n, s))
    }

    /// When the coordinator first saw node `id` gone (unix seconds): kept while it stays
    /// gone, so that a coordinator taking over knows how long it has been down.
    pub fn down_since(&self, id: u32) -> String {
        format!("{}down_since/{id:08}", self.prefix)
    }

    pub fn down_since_prefix(&self) -> String {
        format!("{}down_since/", self.prefix)
    }

    /// Set by `hotshard cluster drain`: the node's replicas move elsewhere.
    pub fn draining(&self, id: u32) -> String {
        format!("{}draining/{id:08}", self.prefix)
    }

    pub fn draining_prefix(&self) -> String {
        format!("{}draining/", self.prefix)
    }

    /// Set by `hotshard cluster accept-loss`: the operator accepts that `partition`'s chain,
    /// which no replica holding every acknowledged write can serve any more, serves again
    /// from what is left (value: the chain version looked at). Removed by the coordinator
    /// once that version is past.
    pub fn accept_loss(&self, partition: u32) -> String {
        format!("{}accept_loss/{partition:05}", self.prefix)
    }

    pub fn accept_loss_prefix(&self) -> String {
        format!("{}accept_loss/", self.prefix)
    }

    /// Asks the coordinator to split a bucket index at `from` (issue 33; the key, in hex,
    /// names the first key of the range to split off). Removed once the split is made or
    /// refused.
    pub fn split_wanted(&self, from: &[u8]) -> String {
        format!("{}split_wanted/{}", self.prefix, hex(from))
    }

    pub fn split_wanted_prefix(&self) -> String {
        format!("{}split_wanted/", self.prefix)
    }

    /// The first key a split-wanted key names; None for any other key.
    pub fn parse_split_wanted(&self, key: &str) -> Option<Vec<u8>> {
        unhex(key.strip_prefix(&self.split_wanted_prefix())?)
    }

    /// A replica of a split's new chain finished the copy for a state (named last: a
    /// report for the next state is another key, so removing a stale one cannot take it),
    /// read and removed by the acting coordinator.
    pub fn split_done(&self, id: u64, node: u32, shard: u32, state: SplitState) -> String {
        format!(
            "{}split_done/{id:020}/{node:08}/{shard:04}/{}",
            self.prefix,
            state.name()
        )
    }

    pub fn split_done_prefix(&self) -> String {
        format!("{}split_done/", self.prefix)
    }

    /// The report a split-done key makes; None for any other key.
    pub fn parse_split_done(&self, key: &str) -> Option<SplitDone> {
        let rest = key.strip_prefix(&self.split_done_prefix())?;
        let mut parts = rest.split('/');
        let id = parts.next()?.parse().ok()?;
        let node = parts.next()?.parse().ok()?;
        let shard = parts.next()?.parse().ok()?;
        let state = SplitState::parse(parts.next()?)?;
        parts.next().is_none().then_some((id, node, shard, state))
    }

    /// The node id at the end of a key under one of the per-node prefixes.
    pub fn node_of(&self, key: &str, prefix: &str) -> Option<u32> {
        key.strip_prefix(prefix)?.parse().ok()
    }

    /// Prefix of every node's registration.
    pub fn nodes(&self) -> String {
        format!("{}nodes/", self.prefix)
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_leave_the_prefix_are_refused() {
        let k = ClusterKeys::new("prod-1").unwrap();
        assert_eq!(k.coordinator(), "/hotshard/prod-1/coordinator");
        assert_eq!(k.node(7), "/hotshard/prod-1/nodes/00000007");
        assert!(k.node(7).starts_with(&k.nodes()));
        let c = k.caught_up(12, 3, 1);
        assert_eq!(k.parse_caught_up(&c), Some((12, 3, 1)));
        assert_eq!(k.parse_caught_up(&k.node(3)), None);
        assert_eq!(k.parse_caught_up(&format!("{c}/9")), None);
        let w = k.split_wanted(b"{b}/m\xff");
        assert_eq!(k.parse_split_wanted(&w), Some(b"{b}/m\xff".to_vec()));
        assert_eq!(k.parse_split_wanted(&k.node(3)), None);
        let d = k.split_done(9, 3, 1, SplitState::Fenced);
        assert_eq!(k.parse_split_done(&d), Some((9, 3, 1, SplitState::Fenced)));
        assert_eq!(k.parse_split_done(&format!("{d}/2")), None);
        for bad in ["", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(ClusterKeys::new(bad).is_err(), "{bad:?}");
        }
    }
}
