//! Chain replication on the data path. The head writes a PUT or DELETE durably (the engine
//! gives it its version) and passes the record down the chain; each replica applies it
//! with that same version through the engine's seam for versioned records, passes it on,
//! and answers upstream only once its successor has; the head answers the client once the
//! tail has the record durably. Each hop names the chain version it routed by, and a
//! replica whose chain differs refuses it: the sender waits for the newer map and sends
//! again to whoever follows it then, so a record is never lost between a chain's old shape
//! and its new one, nor applied by a replica the chain has dropped.
//!
//! Passing down runs as its own task, which neither a client's disconnect nor the head's
//! answer deadline cancels: it ends when the record is acknowledged downstream, or when
//! this shard is no longer a serving replica of the partition. While it runs the key is
//! dirty (`dirty_keys`), and reads of it wait.

use std::rc::Rc;
use std::time::{Duration, Instant};

use hotshard_net::runtime::{Glommio, Runtime};
use hotshard_net::server::Reply;
use hotshard_net::{Recipient, Request, Status};
use hotshard_nvme::BlockQueue;

use crate::chain_view::{next_hop, ChainPlace, Holding, Hop};
use crate::dirty_keys::DirtyGuard;
use crate::put_payload::PutPayload;
use crate::route::store_partition;
use crate::shard_handler::{ok_with, status_of, OutBuf, ShardHandler};
use crate::waitable_count::Counted;

/// How long one hop may take to answer before the connection is dropped and the record
/// sent again (to the same replica, or to whoever follows this one by then).
const HOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Pauses between tries of a hop, doubling up to the last.
const FIRST_PAUSE: Duration = Duration::from_millis(1);
const LAST_PAUSE: Duration = Duration::from_millis(50);
/// How long the key of a write a replica applied and could not get acknowledged stays
/// dirty at most, waiting for its predecessor to send it again by the new chain (a few
/// hops' time; a predecessor that died sends nothing again).
const PARKED_LIMIT: Duration = Duration::from_secs(5);

/// A record on its way down a chain.
pub struct ChainRecord {
    pub key: Vec<u8>,
    pub partition: u32,
    pub version: u64,
    /// None: a tombstone.
    pub value: Option<Vec<u8>>,
    /// When the object expires, Unix milliseconds; 0: never.
    pub expires_ms: u64,
    /// The head's own write, or one passed down under a chain version: what this shard may
    /// do with it (`chain_view::next_hop`).
    pub holding: Holding,
}

/// What the head of a chain writes and passes down.
pub enum ChainWrite {
    Put {
        payload: Option<PutPayload>,
        if_version: Option<u64>,
        expires_ms: u64,
    },
    Delete {
        if_version: Option<u64>,
    },
    /// A tombstone only if the key has no live version (`Store::bury_if_absent`): a
    /// reassertion of a key the head does not have.
    Bury,
}

impl<Q: BlockQueue + 'static> ShardHandler<Q> {
    /// A PUT or DELETE at the head of a chain with replicas after it: written here, then
    /// passed down. Answered Ok once the tail has it, or OutcomeUnknown if that takes
    /// longer than the frame timeout (passing down goes on).
    pub(crate) async fn write_down_chain(
        self: &Rc<Self>,
        key: Vec<u8>,
        partition: u32,
        write: ChainWrite,
    ) -> Reply<OutBuf> {
        let started = Instant::now();
        let sp = match store_partition(partition) {
            Ok(p) => p,
            Err(status) => return Reply::status(status),
        };
        // Dirty before anything is written here: a read must not see this version until
        // the tail has it.
        let dirty = self.dirty.mark(&key);
        let (value, expires_ms, r) = match write {
            ChainWrite::Put {
                payload,
                if_version,
                expires_ms,
            } => {
                let v = payload.map(PutPayload::into_vec).unwrap_or_default();
                let r = self
                    .store
                    .put_expiring(&key, sp, &v, if_version, expires_ms)
                    .await;
                (Some(v), expires_ms, r)
            }
            ChainWrite::Delete { if_version } => (None, 0, self.store.delete(&key, sp, if_version).await),
            ChainWrite::Bury => (None, 0, self.store.bury_if_absent(&key, sp).await),
        };
        let len = value.as_ref().map_or(0, Vec::len) as u64;
        let op = if value.is_none() {
            &self.stats.delete
        } else {
            &self.stats.put
        };
        let version = match r {
            Ok(v) => v,
            Err(e) => {
                op.record(started.elapsed().as_micros() as u64, len, false);
                return Reply::status(status_of(&e));
            }
        };
        let record = ChainRecord {
            key,
            partition,
            version,
            value,
            expires_ms,
            holding: Holding::OwnWrite,
        };
        if planted_early_ack() {
            glommio::spawn_local(Rc::clone(self).pass_down(record, dirty)).detach();
            return chain_reply(true, version, len);
        }
        if let Some(hold) = planted_hold(&record) {
            // As if the head's core were busy between its own write and passing it on.
            glommio::timer::sleep(hold).await;
        }
        if stopped_at_head(&record) {
            // As if the head died here: written locally, never passed on, never answered
            // Ok, and dirty for good (reads here wait) until the process ends.
            std::mem::forget(dirty);
            return chain_reply(false, version, len);
        }
        let acknowledged = self.pass_down_and_wait(record, dirty).await;
        op.record(started.elapsed().as_micros() as u64, len, acknowledged);
        chain_reply(acknowledged, version, len)
    }

    /// A record from this shard's predecessor in the chain: applied here with its version
    /// (skipped if this replica already has it or a newer one), passed down, and answered
    /// Ok once every replica after this one has it.
    pub(crate) async fn answer_replicate(
        self: &Rc<Self>,
        request: Request,
        payload: Option<PutPayload>,
    ) -> Reply<OutBuf> {
        let Request::Replicate {
            to,
            key,
            partition,
            chain_version,
            version,
            tombstone,
            expires_ms,
        } = request
        else {
            return Reply::status(Status::Internal);
        };
        let started = Instant::now();
        if let Some(refused) = crate::partition_sync::version_out_of_bounds(version) {
            return refused;
        }
        if let Some(busy) = self.fenced_reply() {
            return busy;
        }
        if let Some(refused) = self.misaddressed(to) {
            return refused;
        }
        let mine = {
            let map = self.map.borrow();
            ChainPlace::of(&map, partition, self.node_id, self.shard)
        };
        // A serving or a syncing replica takes the record if its chain has the sender's
        // shape. Otherwise the sender's map or this one is behind: the answer carries this
        // replica's chain version, and the sender tries again once the maps agree.
        match mine.takes_writes() {
            Some((v, _)) if v == chain_version => {}
            other => {
                self.stats.wrong_shard.set(self.stats.wrong_shard.get() + 1);
                let mut reply = Reply::status(Status::WrongShard {
                    epoch: self.map.epoch(),
                });
                if let Some((v, _)) = other {
                    reply.response.version = v;
                }
                return reply;
            }
        }
        let sp = match store_partition(partition) {
            Ok(p) => p,
            Err(status) => return Reply::status(status),
        };
        // Dirty here too when this is the tail: if the chain changes while it applies, the
        // record is not acknowledged (below), and until its predecessor has sent it again
        // by the new chain a read here must not answer it.
        let dirty = self.dirty.mark(&key);
        let value = (!tombstone).then(|| payload.map(PutPayload::into_vec).unwrap_or_default());
        let len = value.as_ref().map_or(0, Vec::len) as u64;
        let applied = self
            .store
            .apply_versioned_expiring(&key, sp, value.as_deref(), version, expires_ms)
            .await;
        if let Err(e) = applied {
            self.stats
                .replicate
                .record(started.elapsed().as_micros() as u64, len, false);
            return Reply::status(status_of(&e));
        }
        let record = ChainRecord {
            key,
            partition,
            version,
            value,
            expires_ms,
            holding: Holding::PassedUnder(chain_version),
        };
        if let Some(hold) = planted_leaving_hold(&mine).or_else(|| planted_middle_hold(&mine)) {
            // As if this leaving (or middle) replica's core were busy between applying the
            // record and passing it on, long enough for a map that changes its chain to
            // arrive.
            glommio::timer::sleep(hold).await;
        }
        // What follows is decided by the map as it is now, and only while the chain is
        // still at the version the record came under (`chain_view::next_hop`): a replica
        // dropped from the chain meanwhile (a leaving one, its drop published while it
        // applied) or put back behind replicas the record never reached (its lease lapsed,
        // it returned as the syncing tail) cannot say that every replica after it has the
        // record. It answers "not acknowledged", and its predecessor sends the record again
        // by its own map. Acknowledging it there let a write be acknowledged that the
        // chain's tail never got (the stale read of
        // bench/results/violation-grow-session19-key6.txt; the second case was found by
        // the placement model check once it modelled writes in flight).
        let acknowledged = match self.next_hop_now(partition, chain_version) {
            Hop::Acknowledged => {
                self.dirty.settled(&record.key, version);
                true
            }
            Hop::Abandoned => {
                self.park(dirty, version);
                if let Some(hold) = planted_middle_hold(&mine) {
                    // And as busy again before it answers: its predecessor sends the
                    // record again by the new chain only this much later.
                    glommio::timer::sleep(hold).await;
                }
                false
            }
            Hop::Send { .. } => self.pass_down_and_wait(record, dirty).await,
        };
        self.stats
            .replicate
            .record(started.elapsed().as_micros() as u64, len, acknowledged);
        chain_reply(acknowledged, version, len)
    }

    /// Keeps the key of a write this shard applied and could not get acknowledged dirty
    /// until it, or a newer write of the key, is acknowledged here, or `PARKED_LIMIT`
    /// passes (`dirty_keys`).
    fn park(self: &Rc<Self>, dirty: DirtyGuard, version: u64) {
        if planted_abandoned_is_clean() {
            // The bug the parking fixes: the key clean at once.
            return;
        }
        self.dirty.park(dirty, version, Instant::now() + PARKED_LIMIT);
        let keys = self.dirty.clone();
        glommio::spawn_local(async move {
            glommio::timer::sleep(PARKED_LIMIT).await;
            keys.expire_parked(Instant::now());
        })
        .detach();
    }

    /// Passes `record` down in its own task and waits for it up to the frame timeout:
    /// true once every replica after this one has it.
    async fn pass_down_and_wait(self: &Rc<Self>, record: ChainRecord, dirty: DirtyGuard) -> bool {
        let task = glommio::spawn_local(Rc::clone(self).pass_down(record, dirty)).detach();
        matches!(Glommio::timeout(self.answer_wait, task).await, Some(Some(true)))
    }

    /// Sends `record` to this shard's successor in the partition's chain (the next serving
    /// replica, or after the last one the first syncing replica) until it is acknowledged
    /// (true; at once if none follows) or this shard can no longer get it acknowledged
    /// (false: it left the chain, or, for a record passed down to it, the chain's version
    /// is no longer the one it came under). Each try routes by the map as it is then.
    async fn pass_down(self: Rc<Self>, record: ChainRecord, dirty: DirtyGuard) -> bool {
        let _counted = Counted::new(&self.in_flight);
        let _waiting = Waiting::new(&self.stats.waiting_on_successor);
        let ChainRecord {
            key,
            partition,
            version,
            value,
            expires_ms,
            holding,
        } = record;
        // Built once (the key moved in, not copied per try); each try sets the chain
        // version it routes by.
        let mut request = Request::Replicate {
            to: Recipient { node: 0, shard: 0 },
            key,
            partition,
            chain_version: 0,
            version,
            tombstone: value.is_none(),
            expires_ms,
        };
        let value = value.as_deref().unwrap_or(&[]);
        let mut pause = FIRST_PAUSE;
        loop {
            // Held as an Rc across the call: the successor's address is borrowed from it.
            let map = self.map.current();
            let (chain_version, successor) =
                match next_hop(&map, partition, self.node_id, self.shard, holding) {
                    Hop::Abandoned => {
                        self.park(dirty, version);
                        return false;
                    }
                    Hop::Acknowledged => {
                        self.dirty.settled(dirty.key(), version);
                        return true;
                    }
                    Hop::Send { version, next } => (version, &map.shards[next as usize]),
                };
            let (recipient, successor) = (
                Recipient {
                    node: successor.node,
                    shard: successor.shard,
                },
                successor.addr.as_str(),
            );
            if !self.map.fenced() {
                if let Request::Replicate {
                    to, chain_version: v, ..
                } = &mut request
                {
                    *v = chain_version;
                    *to = recipient;
                }
                let sent = Instant::now();
                let answer = self.links.call(successor, &request, value, HOP_TIMEOUT).await;
                let ok = matches!(&answer, Ok((r, _)) if r.status() == Status::Ok);
                self.stats
                    .pass_down
                    .record(sent.elapsed().as_micros() as u64, value.len() as u64, ok);
                match answer {
                    Ok(_) if ok => {
                        self.dirty.settled(dirty.key(), version);
                        return true;
                    }
                    Ok((r, _)) => tracing::debug!(
                        to = %successor,
                        status = ?r.status(),
                        partition,
                        "replica refused a record; trying again"
                    ),
                    Err(e) => tracing::debug!(to = %successor, error = ?e, "no answer from the next replica"),
                }
            }
            glommio::timer::sleep(pause).await;
            pause = (pause * 2).min(LAST_PAUSE);
        }
    }
}

/// The answer to a write passed down a chain: Ok with its version and length once every
/// replica after this one has it, OutcomeUnknown if that did not come in time.
fn chain_reply(acknowledged: bool, version: u64, len: u64) -> Reply<OutBuf> {
    if !acknowledged {
        return Reply::status(Status::OutcomeUnknown);
    }
    Reply {
        response: ok_with(version, len, 0),
        payload: None,
    }
}

/// A planted bug, for proving that the cluster's history checker catches one: with
/// `HOTSHARD_PLANTED_BUG=ack-at-head` a head answers a write as soon as it has it, before
/// the tail does. Only in builds with the `planted-faults` feature (the tests' builds, in
/// every profile); a node built for use has no such switch.
fn planted_early_ack() -> bool {
    static PLANTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *PLANTED.get_or_init(|| crate::planted::fault("ack-at-head").is_some())
}

/// A planted fault, for the test of reads queued behind a head's write: with
/// `HOTSHARD_PLANTED_BUG=hold-at-head:P:MS` a head waits MS milliseconds between its own
/// write of a key starting with P and passing it on (the key dirty all the while). Only in
/// builds with the `planted-faults` feature.
fn planted_hold(record: &ChainRecord) -> Option<Duration> {
    static HOLD: std::sync::OnceLock<Option<(Vec<u8>, Duration)>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        let v = crate::planted::fault("hold-at-head")?;
        let (prefix, ms) = v.rsplit_once(':')?;
        Some((
            prefix.as_bytes().to_vec(),
            Duration::from_millis(ms.parse().ok()?),
        ))
    });
    hold.as_ref()
        .filter(|(prefix, _)| record.key.starts_with(prefix))
        .map(|(_, d)| *d)
}

/// A planted fault, for the test of replicas dropped while they pass a record on: with
/// `HOTSHARD_PLANTED_BUG=leaving-hold:MS` a replica that is leaving a chain (by the map the
/// record came under) waits MS milliseconds between applying a record and deciding where
/// it goes next. Only in builds with the `planted-faults` feature.
fn planted_leaving_hold(place: &ChainPlace) -> Option<Duration> {
    static HOLD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        let ms = crate::planted::fault("leaving-hold")?;
        Some(Duration::from_millis(ms.parse().ok()?))
    });
    hold.filter(|_| matches!(place, ChainPlace::Leaving { .. }))
}

/// A planted delay: with `HOTSHARD_PLANTED_BUG=middle-hold:MS` a serving replica with a
/// successor waits MS between applying a record and deciding where it goes, and MS again
/// before answering "not acknowledged" when its chain changed meanwhile (the window in
/// which the record is here and not after it). Only in builds with `planted-faults`.
fn planted_middle_hold(place: &ChainPlace) -> Option<Duration> {
    static HOLD: std::sync::OnceLock<Option<Duration>> = std::sync::OnceLock::new();
    let hold = HOLD.get_or_init(|| {
        let ms = crate::planted::fault("middle-hold")?;
        Some(Duration::from_millis(ms.parse().ok()?))
    });
    hold.filter(|_| matches!(place, ChainPlace::Serving { .. }) && place.has_successor())
}

/// The planted bug `abandoned-is-clean`: the key of a write a replica applied and could not
/// get acknowledged is clean at once (what replicas did before session 21), for the test
/// that shows the detector catches it. Only in builds with `planted-faults`.
fn planted_abandoned_is_clean() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| crate::planted::fault("abandoned-is-clean").is_some())
}

/// A planted fault, for the resync test: with `HOTSHARD_PLANTED_BUG=stop-at-head:P,Q` a
/// head keeps a PUT of a key starting with P, and a DELETE of a key starting with Q, to
/// itself (a write that reached one replica and no further: what a head that dies at that
/// instant leaves behind). Only in builds with the `planted-faults` feature.
fn stopped_at_head(record: &ChainRecord) -> bool {
    static PREFIXES: std::sync::OnceLock<Option<(Vec<u8>, Vec<u8>)>> = std::sync::OnceLock::new();
    let prefixes = PREFIXES.get_or_init(|| {
        let v = crate::planted::fault("stop-at-head")?;
        let (put, delete) = v.split_once(',')?;
        Some((put.as_bytes().to_vec(), delete.as_bytes().to_vec()))
    });
    prefixes.as_ref().is_some_and(|(put, delete)| match record.value {
        Some(_) => !put.is_empty() && record.key.starts_with(put),
        None => !delete.is_empty() && record.key.starts_with(delete),
    })
}

/// Counts a record waiting on a successor while it lives.
struct Waiting<'a>(&'a std::cell::Cell<u64>);

impl<'a> Waiting<'a> {
    fn new(c: &'a std::cell::Cell<u64>) -> Waiting<'a> {
        c.set(c.get() + 1);
        Waiting(c)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.set(self.0.get() - 1);
    }
}
