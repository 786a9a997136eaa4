//! Exactly one coordinator acts, and a deposed one cannot write: against a real etcd.

mod common;

use std::time::{Duration, Instant};

use etcd_client::{Client, TxnOp};
use hotshard_cluster::{ClusterError, ClusterKeys, Leadership};

const TTL: i64 = 2;

async fn map_value(client: &Client, keys: &ClusterKeys) -> Option<String> {
    let got = client.clone().get(keys.map(), None).await.unwrap();
    got.kvs()
        .first()
        .map(|kv| String::from_utf8_lossy(kv.value()).into_owned())
}

#[tokio::test(flavor = "current_thread")]
async fn one_coordinator_acts_and_a_deposed_one_cannot_write() {
    let etcd = common::Etcd::start();
    let client = common::connect(&etcd.endpoint).await;
    let keys = ClusterKeys::new("leadership-test").unwrap();

    let a = Leadership::campaign(&client, &keys, "a", TTL).await.unwrap();
    a.guarded(vec![TxnOp::put(keys.map(), "from a", None)])
        .await
        .unwrap();
    assert_eq!(map_value(&client, &keys).await.as_deref(), Some("from a"));

    // b campaigns while a acts: it must not act.
    let b = tokio::spawn({
        let (client, keys) = (client.clone(), keys.clone());
        async move { Leadership::campaign(&client, &keys, "b", TTL).await }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(!b.is_finished(), "b acts while a's lease is alive");
    assert!(a.is_acting());

    // a stops renewing (a paused or dead coordinator): once its lease expires b acts,
    // and a's writes are refused even though a itself has not noticed yet.
    let a_term = a.term();
    let paused_at = Instant::now();
    let stale = stop_renewing(a);
    let b = tokio::time::timeout(Duration::from_secs(15), b)
        .await
        .expect("b took over within the lease TTL and a few retries")
        .unwrap()
        .unwrap();
    let takeover = paused_at.elapsed();
    assert!(b.term() > a_term, "a new term");
    assert!(
        takeover >= Duration::from_secs(1),
        "b acted {takeover:?} after a paused: before a's lease could expire"
    );
    match stale
        .guarded(vec![TxnOp::put(keys.map(), "from deposed a", None)])
        .await
    {
        Err(ClusterError::Deposed) => {}
        other => panic!("the deposed coordinator's write: {other:?}"),
    }
    b.guarded(vec![TxnOp::put(keys.map(), "from b", None)])
        .await
        .unwrap();
    assert_eq!(map_value(&client, &keys).await.as_deref(), Some("from b"));

    // A clean hand-over: b resigns, a third takes over at once.
    b.resign().await.unwrap();
    let c = tokio::time::timeout(
        Duration::from_secs(5),
        Leadership::campaign(&client, &keys, "c", TTL),
    )
    .await
    .expect("c acts after b resigned")
    .unwrap();
    c.guarded(vec![TxnOp::put(keys.map(), "from c", None)])
        .await
        .unwrap();
}

/// What a paused coordinator keeps: its term's revision, able to try a write, no longer
/// renewing its lease.
fn stop_renewing(l: Leadership) -> Leadership {
    l.stop_renewing();
    l
}
