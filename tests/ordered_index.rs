//! An ordered index on a whole node (issue 33): keys naming a tag (`{photos}/...`) are
//! written through the native client, some deleted and some overwritten, beside keys that
//! name no tag; `List` pages (prefix, delimiter, start after the last item) give exactly
//! what a `BTreeMap` of the acknowledged writes gives, from whichever shard accepts the
//! connection; `hotshard ls` prints the same; limits are refused.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::client::ListArgs;
use hotshard_net::listing::ListItem;

/// Every item of a listing, page after page of `page` items.
fn list_all(c: &mut BlockingClient, prefix: &[u8], delimiter: &[u8], page: u32) -> Vec<ListItem> {
    let mut all: Vec<ListItem> = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let got = c
            .list(ListArgs {
                index: b"{photos}",
                prefix,
                start_after: after.as_deref(),
                delimiter,
                limit: page,
                start_at: None,
            })
            .unwrap();
        let (items, more) = (got.items, got.next.is_some());
        assert!(items.len() <= page as usize);
        if let (Some(last), Some(first)) = (all.last(), items.first()) {
            assert!(last.name() < first.name(), "pages overlap");
        }
        after = items.last().map(|i| i.name().to_vec());
        all.extend(items);
        if !more {
            return all;
        }
    }
}

#[test]
fn listings_are_in_key_order_and_match_what_was_written() {
    let dir = test_dir();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    let mut model: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
    for i in 0..600u32 {
        let key = format!("{{photos}}/{}/{:04}.jpg", 2020 + i % 4, (i * 7919) % 1000);
        let value = vec![b'x'; (i % 50) as usize];
        let version = c.put(key.as_bytes(), &value).unwrap();
        model.insert(key.into_bytes(), version);
        c.put(format!("photos/untagged/{i}").as_bytes(), b"v").unwrap();
    }
    let keys: Vec<Vec<u8>> = model.keys().cloned().collect();
    for k in keys.iter().step_by(5) {
        c.delete(k).unwrap();
        model.remove(k);
    }
    // Everything, in pages of 7.
    let all = list_all(&mut c, b"", b"", 7);
    let want: Vec<ListItem> = model
        .iter()
        .map(|(k, v)| ListItem::Key {
            key: k.clone(),
            version: *v,
            len: 0,
            crc32c: 0,
        })
        .collect();
    assert_eq!(all.len(), want.len());
    for (got, want) in all.iter().zip(&want) {
        match (got, want) {
            (
                ListItem::Key { key, version, .. },
                ListItem::Key {
                    key: k, version: v, ..
                },
            ) => assert_eq!((key, version), (k, v)),
            other => panic!("{other:?}"),
        }
    }
    // Folders: the years, as common prefixes.
    let years = list_all(&mut c, b"{photos}/", b"/", 2);
    let names: Vec<&[u8]> = years.iter().map(ListItem::name).collect();
    assert_eq!(
        names,
        vec![
            &b"{photos}/2020/"[..],
            b"{photos}/2021/",
            b"{photos}/2022/",
            b"{photos}/2023/"
        ]
    );
    assert!(years.iter().all(|i| matches!(i, ListItem::Prefix(_))));
    // One folder, by prefix.
    let in_2021 = list_all(&mut c, b"{photos}/2021/", b"/", 1000);
    assert_eq!(
        in_2021.len(),
        model.keys().filter(|k| k.starts_with(b"{photos}/2021/")).count()
    );
    // The CLI pages through the same.
    let out = cli(&[
        "ls",
        "{photos}",
        "--prefix",
        "{photos}/",
        "--delimiter",
        "/",
        "--addr",
        &node.addr(0),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.lines().count(), 4, "{text}");
    assert!(text.starts_with("{photos}/2020/\t(prefix)"), "{text}");
    // A page of more than 1000 items is refused.
    let too_many = ListArgs {
        index: b"{photos}",
        prefix: b"",
        start_after: None,
        delimiter: b"",
        limit: 1001,
        start_at: None,
    };
    assert!(c.list(too_many).is_err());
}
