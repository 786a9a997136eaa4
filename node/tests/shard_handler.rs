//! The shard's request handler (the code behind every connection) on a store on SimDevice.
//! Disk faults as a client of the node sees them: EIO on a read fails that object only; EIO
//! on a write fails that put and loses nothing acknowledged; a full device answers NoSpace;
//! read errors show in the shard's metrics. And requests forwarded from another shard: the
//! receiver checks that it owns the partition.

#[path = "../store/tests/common/mod.rs"]
mod common;

use std::rc::Rc;

use common::{check_value, make_value, small_config, SIM_BYTES};
use hotshard_net::shard_map::{ShardAddr, ShardMap};
use hotshard_net::{Request, Status, Target};
use hotshard_node::admission::Admission;
use hotshard_node::peers::{mesh, Peers};
use hotshard_node::shard_handler::ShardHandler;
use hotshard_node::shard_stats::ShardStats;
use hotshard_node::store::Store;
use hotshard_node::waitable_count::WaitableCount;
use hotshard_nvme::{SimDevice, SimQueue};

fn target(map: &ShardMap, key: &[u8]) -> Target {
    Target {
        partition: map.partition(key),
        epoch: map.epoch,
    }
}

async fn handler(dev: &SimDevice) -> Rc<ShardHandler<SimQueue>> {
    handler_of_shard(dev, 0, 1).await
}

/// Shard `shard` of a node of `shards` shards, whose partitions are spread over them.
async fn handler_of_shard(dev: &SimDevice, shard: u32, shards: u32) -> Rc<ShardHandler<SimQueue>> {
    handler_with_cache(dev, shard, shards, 0).await
}

async fn handler_with_cache(
    dev: &SimDevice,
    shard: u32,
    shards: u32,
    cache_bytes: usize,
) -> Rc<ShardHandler<SimQueue>> {
    let mut cfg = small_config(SIM_BYTES);
    cfg.cache_bytes = cache_bytes;
    let (store, _) = Store::open(dev.queue(4 << 20).unwrap(), cfg).await.unwrap();
    let map = ShardMap::spread(
        1,
        4,
        (0..shards)
            .map(|shard| ShardAddr {
                node: 0,
                shard,
                addr: format!("127.0.0.1:{}", 1 + shard),
            })
            .collect(),
    );
    let ends = mesh(shards as usize).swap_remove(shard as usize);
    let (peers, _) = Peers::connect(shard as usize, ends).await;
    Rc::new(ShardHandler {
        shard: shard as usize,
        node_id: 0,
        store,
        map: Rc::new(hotshard_node::map_cell::MapCell::new(map)),
        peers,
        stats: Rc::new(ShardStats::default()),
        in_flight: WaitableCount::default(),
        admission: Admission::new(64, 1 << 20),
        secret: None,
        dirty: Default::default(),
        links: hotshard_node::chain_links::ChainLinks::new(None, None),
        answer_wait: std::time::Duration::from_secs(5),
        updating: Default::default(),
        started_writes: Default::default(),
        splits: Default::default(),
        sync: Default::default(),
        sync_bytes_per_sec: 0,
        split_entries: 0,
    })
}

async fn put(h: &Rc<ShardHandler<SimQueue>>, key: &[u8], value: Vec<u8>) -> Status {
    let req = Request::Put {
        key: key.to_vec(),
        if_version: None,
        target: target(&h.map.current(), key),
        expires_ms: 0,
    };
    h.execute(req, Some(hotshard_node::put_payload::PutPayload::Heap(value)))
        .await
        .response
        .status()
}

async fn get(h: &Rc<ShardHandler<SimQueue>>, key: &[u8]) -> (Status, Option<Vec<u8>>) {
    let req = Request::Get {
        key: key.to_vec(),
        range: None,
        target: target(&h.map.current(), key),
    };
    let r = h.execute(req, None).await;
    (r.response.status(), r.payload.map(|p| p.as_ref().to_vec()))
}

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn read_and_write_errors_fail_only_their_request_and_are_counted() {
    run(|| async {
        let dev = SimDevice::new(SIM_BYTES, 512, 1).unwrap();
        let h = handler(&dev).await;
        assert_eq!(put(&h, b"a", make_value(1, 10_000)).await, Status::Ok);
        assert_eq!(put(&h, b"b", make_value(2, 10_000)).await, Status::Ok);
        // A latent bad sector under "a"'s value (segment 0 starts at 8192; one meta block,
        // then the value).
        dev.fail_reads(8192 + 4096..8192 + 4 * 4096);
        assert_eq!(get(&h, b"a").await.0, Status::Internal, "EIO answers an error");
        let (status, value) = get(&h, b"b").await;
        assert_eq!(status, Status::Ok, "other objects keep being served");
        assert_eq!(check_value(&value.unwrap()), Some(2));
        let metrics = h.stats.render(0, &h.store);
        assert!(
            metrics.contains("hotshard_read_errors_total{shard=\"0\"} 1"),
            "the bad sector is counted: {metrics}"
        );
        dev.clear_faults();
        // EIO on a write: that put fails; every acknowledged object is intact.
        dev.fail_writes(0..SIM_BYTES);
        assert_eq!(put(&h, b"c", make_value(3, 100)).await, Status::Internal);
        dev.clear_faults();
        assert_eq!(get(&h, b"c").await.0, Status::NotFound);
        assert_eq!(check_value(&get(&h, b"a").await.1.unwrap()), Some(1));
        assert!(h
            .stats
            .render(0, &h.store)
            .contains("hotshard_write_errors_total{shard=\"0\"} 1"));
    });
}

#[test]
fn a_full_device_answers_no_space_and_keeps_reading() {
    run(|| async {
        let dev = SimDevice::new(SIM_BYTES, 512, 2).unwrap();
        let h = handler(&dev).await;
        let mut stored = Vec::new();
        for i in 0..10_000u64 {
            let key = format!("fill-{i}").into_bytes();
            match put(&h, &key, make_value(i, 20_000)).await {
                Status::Ok => stored.push((key, i)),
                Status::NoSpace => break,
                other => panic!("put {i}: {other:?}"),
            }
        }
        assert!(!stored.is_empty());
        assert_eq!(put(&h, b"one-more", make_value(1, 20_000)).await, Status::NoSpace);
        for (key, i) in &stored {
            assert_eq!(check_value(&get(&h, key).await.1.unwrap()), Some(*i));
        }
    });
}

/// Issue 17: a forwarded request was executed on the receiving shard with no check that it
/// owns the partition. Shard 0 of two receives a put forwarded for a partition of shard 1
/// (as if the maps of the two shards disagreed): WrongShard, counted, nothing written. A
/// put for its own partition is served.
#[test]
fn a_forwarded_request_for_a_partition_the_shard_does_not_own_is_refused() {
    run(|| async {
        let dev = SimDevice::new(SIM_BYTES, 4096, 3).unwrap();
        let h = handler_of_shard(&dev, 0, 2).await;
        let key_of = |shard: u32| {
            (0..)
                .map(|i| format!("k{i}").into_bytes())
                .find(|k| {
                    h.map
                        .current()
                        .owner(h.map.current().partition(k))
                        .is_some_and(|o| o.shard == shard)
                })
                .unwrap()
        };
        let (theirs, mine) = (key_of(1), key_of(0));
        let put = |key: &[u8]| Request::Put {
            key: key.to_vec(),
            if_version: None,
            target: target(&h.map.current(), key),
            expires_ms: 0,
        };
        let (response, map) = h
            .clone()
            .answer_forwarded(put(&theirs), Some(b"v".to_vec()))
            .await;
        assert_eq!(response.status(), Status::WrongShard { epoch: h.map.epoch() });
        assert_eq!(
            ShardMap::from_bytes(&map).unwrap(),
            *h.map.current(),
            "WrongShard carries the shard's map, so the client needs no second round trip"
        );
        assert!(
            h.store.stat(&theirs).is_err(),
            "nothing written for another shard's key"
        );
        assert_eq!(h.stats.wrong_shard.get(), 1);
        let (response, _) = h.clone().answer_forwarded(put(&mine), Some(b"v".to_vec())).await;
        assert_eq!(response.status(), Status::Ok);
        assert_eq!(h.store.stat(&mine).unwrap().len, 1);
    });
}

/// Issue 17: a range GET looked the key up twice (the value, then a stat for the whole
/// length). The reply names the whole object's length from the one lookup, from the device
/// and from the cache alike.
#[test]
fn a_range_get_reports_the_whole_length_from_one_lookup() {
    run(|| async {
        let dev = SimDevice::new(SIM_BYTES, 4096, 4).unwrap();
        // Small enough for the cache (a 64th of its 256 KiB).
        let value = make_value(9, 3_000);
        let ranged_get = |h: &ShardHandler<SimQueue>| Request::Get {
            key: b"ranged".to_vec(),
            range: Some(hotshard_net::ByteRange { offset: 100, len: 50 }),
            target: target(&h.map.current(), b"ranged"),
        };
        let h = handler_with_cache(&dev, 0, 1, 256 << 10).await;
        assert_eq!(put(&h, b"ranged", value.clone()).await, Status::Ok);
        let mut seen = Vec::new();
        for _ in 0..2 {
            let r = h.execute(ranged_get(&h), None).await;
            assert_eq!(r.response.status(), Status::Ok);
            assert_eq!(r.response.object_len, 3_000);
            let payload = r.payload.unwrap();
            assert_eq!(payload.as_ref(), &value[100..150]);
            seen.push(matches!(&payload, hotshard_node::shard_handler::OutBuf::Value(v) if v.from_cache()));
        }
        // The write of a key nobody has read does not cache it; the first read does.
        assert_eq!(seen, [false, true]);
        drop(h);
        let h = handler_with_cache(&dev, 0, 1, 256 << 10).await;
        let r = h.execute(ranged_get(&h), None).await;
        assert_eq!(r.response.object_len, 3_000, "from the device");
        assert_eq!(r.payload.unwrap().as_ref(), &value[100..150]);
        assert_eq!(
            h.store.cache_stats().hits,
            0,
            "the reopened store read the device"
        );
    });
}

async fn update(
    h: &Rc<ShardHandler<SimQueue>>,
    key: &[u8],
    op: hotshard_net::UpdateOp,
    value: Option<&[u8]>,
) -> (Status, i64, u64, Option<Vec<u8>>) {
    let req = Request::Update {
        key: key.to_vec(),
        target: target(&h.map.current(), key),
        op,
    };
    let payload = value.map(|v| hotshard_node::put_payload::PutPayload::Heap(v.to_vec()));
    let r = h.execute(req, payload).await;
    (
        r.response.status(),
        r.response.arg as i64,
        r.response.version,
        r.payload.map(|p| p.as_ref().to_vec()),
    )
}

/// Updates (RESP's INCR, APPEND, SET NX/XX/GET, GETDEL) at the key's shard: many at once
/// on one key lose none, and each op answers as Redis's command does.
#[test]
fn updates_of_one_key_at_once_lose_nothing_and_answer_as_redis_does() {
    use hotshard_net::UpdateOp;
    run(|| async {
        let dev = SimDevice::new(SIM_BYTES, 4096, 9).unwrap();
        let h = handler(&dev).await;
        let tasks: Vec<_> = (0..40)
            .map(|_| {
                let h = h.clone();
                glommio::spawn_local(async move { update(&h, b"n", UpdateOp::IncrBy(1), None).await })
            })
            .collect();
        let mut seen = Vec::new();
        for t in tasks {
            let (status, n, _, _) = t.await;
            assert_eq!(status, Status::Ok);
            seen.push(n);
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (1..=40).collect::<Vec<_>>(),
            "each increment saw its own value"
        );
        assert_eq!(get(&h, b"n").await.1.unwrap(), b"40");

        assert_eq!(put(&h, b"s", b"abc".to_vec()).await, Status::Ok);
        let (status, ..) = update(&h, b"s", UpdateOp::IncrBy(1), None).await;
        assert!(matches!(status, Status::BadRequest { reason } if reason.contains("not an integer")));
        assert_eq!(update(&h, b"s", UpdateOp::Append, Some(b"de")).await.1, 5);
        // NX on a present key: not stored; the old value only with GET.
        let nx = UpdateOp::Set {
            only_if: 1,
            get: true,
            expires_ms: 0,
            keep_ttl: false,
        };
        let (status, stored, version, old) = update(&h, b"s", nx, Some(b"zz")).await;
        assert_eq!(
            (status, stored, old.as_deref()),
            (Status::Ok, 0, Some(&b"abcde"[..]))
        );
        assert!(version > 0);
        let xx = UpdateOp::Set {
            only_if: 2,
            get: false,
            expires_ms: 0,
            keep_ttl: false,
        };
        assert_eq!(update(&h, b"absent", xx, Some(b"v")).await.1, 0);
        assert_eq!(get(&h, b"absent").await.0, Status::NotFound);
        let (_, deleted, _, old) = update(&h, b"s", UpdateOp::GetDel, None).await;
        assert_eq!((deleted, old.as_deref()), (1, Some(&b"abcde"[..])));
        assert_eq!(update(&h, b"s", UpdateOp::GetDel, None).await.1, 0);
        assert_eq!(
            put(&h, b"max", i64::MAX.to_string().into_bytes()).await,
            Status::Ok
        );
        let (status, ..) = update(&h, b"max", UpdateOp::IncrBy(1), None).await;
        assert!(matches!(status, Status::BadRequest { reason } if reason.contains("overflow")));
    });
}
