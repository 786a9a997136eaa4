//! `hotshard-bench list`: a page of an ordered index (issue 33) over the network, against
//! its anchors measured in the same invocation: the same page taken from a `BTreeMap` in
//! this process (the physical limit here), a TCP ping-pong carrying a reply of the page's
//! size (the network's floor), and SCAN over the same keys (hotshard's, and Redis's if
//! given). Loads the keys itself through RESP (pipelined SETs of one index tag).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hdrhistogram::Histogram;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::client::ListArgs;
use hotshard_net::listing::ListItem;
use hotshard_nvme::SplitMix64;

use crate::latency::new_histogram;

#[derive(clap::Args)]
pub struct ListArgsCli {
    /// The node's native port (listings).
    #[arg(long, default_value = "127.0.0.1:7000")]
    pub addr: String,
    /// The node's RESP port (loading, SCAN).
    #[arg(long, default_value = "127.0.0.1:6400")]
    pub resp: String,
    /// A Redis to load the same keys into and SCAN, as a peer anchor.
    #[arg(long)]
    pub redis: Option<String>,
    /// Entries in the index.
    #[arg(long, default_value_t = 1_000_000)]
    pub keys: u64,
    /// Keys per page.
    #[arg(long, default_value_t = 1000)]
    pub page: u32,
    /// Pages timed, each from a random place.
    #[arg(long, default_value_t = 300)]
    pub pages: u64,
    /// Skip loading (the node already holds the keys).
    #[arg(long)]
    pub no_load: bool,
}

/// The index's tag and the keys' common prefix.
const PREFIX: &str = "{bucket}/objects/";
/// Each entry's value (an index entry is small: an object's id and size, say).
const VALUE: &str = "0123456789abcdef0123456789abcdef";

fn key(i: u64) -> String {
    format!("{PREFIX}{i:010}")
}

pub fn list_command(a: &ListArgsCli) -> anyhow::Result<()> {
    if !a.no_load {
        let t = Instant::now();
        load(&a.resp, a.keys).context("loading the node")?;
        println!(
            "loaded {} entries into the node in {:.1} s",
            a.keys,
            t.elapsed().as_secs_f64()
        );
    }
    let mut rows = Vec::new();
    let (h, bytes) = node_pages(a)?;
    rows.push(("hotshard List, 1 page", h));
    rows.push(("BTreeMap in process", btree_pages(a)));
    rows.push(("TCP ping-pong, page-sized reply", ping_pong(bytes, a.pages)?));
    let (h, per_call) = scan(&a.resp, a.page, a.pages)?;
    println!("hotshard SCAN COUNT {}: {per_call:.0} keys per call", a.page);
    rows.push(("hotshard SCAN, 1 call", h));
    if let Some(redis) = &a.redis {
        load(redis, a.keys).context("loading Redis")?;
        let (h, per_call) = scan(redis, a.page, a.pages)?;
        println!("Redis SCAN COUNT {}: {per_call:.0} keys per call", a.page);
        rows.push(("Redis SCAN, 1 call", h));
    }
    println!(
        "\n{} keys per page, {} pages from random places, index of {} entries; reply {} bytes",
        a.page, a.pages, a.keys, bytes
    );
    println!("{:<34} {:>10} {:>10} {:>10}", "", "p50 us", "p99 us", "max us");
    for (name, h) in &rows {
        let us = |q: f64| h.value_at_quantile(q) as f64 / 1e3;
        println!(
            "{name:<34} {:>10.1} {:>10.1} {:>10.1}",
            us(0.5),
            us(0.99),
            h.max() as f64 / 1e3
        );
    }
    Ok(())
}

/// Writes keys 0..n with pipelined SETs, a thousand at a time.
fn load(addr: &str, n: u64) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).with_context(|| format!("connecting to {addr}"))?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut line = String::new();
    let mut i = 0;
    while i < n {
        let end = (i + 1000).min(n);
        let mut out = Vec::with_capacity(80 * 1000);
        for k in i..end {
            let k = key(k);
            write!(
                out,
                "*3\r\n$3\r\nSET\r\n${}\r\n{k}\r\n${}\r\n{VALUE}\r\n",
                k.len(),
                VALUE.len()
            )?;
        }
        s.write_all(&out)?;
        for _ in i..end {
            line.clear();
            r.read_line(&mut line)?;
            if line != "+OK\r\n" {
                bail!("SET answered {line:?}");
            }
        }
        i = end;
    }
    Ok(())
}

/// Pages of `a.page` keys after random places, timed at the client; the mean reply size.
fn node_pages(a: &ListArgsCli) -> anyhow::Result<(Histogram<u64>, usize)> {
    let mut c = BlockingClient::connect(&a.addr, Duration::from_secs(10))?;
    let mut rng = SplitMix64::new(33);
    let mut h = new_histogram();
    let mut bytes = 0;
    for n in 0..a.pages + 10 {
        let after = key(rng.below(a.keys.saturating_sub(u64::from(a.page)).max(1)));
        let args = ListArgs {
            index: PREFIX.as_bytes(),
            prefix: PREFIX.as_bytes(),
            start_after: Some(after.as_bytes()),
            delimiter: b"",
            limit: a.page,
            start_at: None,
        };
        let t = Instant::now();
        let items = c.list(args)?.items;
        let took = t.elapsed();
        if items.len() != a.page as usize {
            bail!("a page after {after} held {} keys, not {}", items.len(), a.page);
        }
        if let Some(ListItem::Key { key: first, .. }) = items.first() {
            if first.as_slice() <= after.as_bytes() {
                bail!("a page after {after} began at {}", String::from_utf8_lossy(first));
            }
        }
        // The first pages warm the connection; not counted.
        if n >= 10 {
            h.record(took.as_nanos() as u64)?;
            bytes += items
                .iter()
                .map(|i| match i {
                    ListItem::Key { key, .. } => key.len() + 24,
                    ListItem::Prefix(p) => p.len() + 4,
                })
                .sum::<usize>();
        }
    }
    Ok((h, bytes / a.pages.max(1) as usize))
}

/// The same pages from a `BTreeMap` of the same keys and sizes (cloned out, as a reply is).
fn btree_pages(a: &ListArgsCli) -> Histogram<u64> {
    let map: BTreeMap<Vec<u8>, (u64, u64, u32)> = (0..a.keys)
        .map(|i| (key(i).into_bytes(), (i, VALUE.len() as u64, 0)))
        .collect();
    let mut rng = SplitMix64::new(33);
    let mut h = new_histogram();
    for _ in 0..a.pages {
        let after = key(rng.below(a.keys.saturating_sub(u64::from(a.page)).max(1))).into_bytes();
        let t = Instant::now();
        let page: Vec<(Vec<u8>, u64, u64, u32)> = map
            .range::<Vec<u8>, _>((std::ops::Bound::Excluded(&after), std::ops::Bound::Unbounded))
            .take(a.page as usize)
            .map(|(k, &(v, l, c))| (k.clone(), v, l, c))
            .collect();
        h.record(t.elapsed().as_nanos() as u64).unwrap();
        std::hint::black_box(page);
    }
    h
}

/// Round trips of a 32-byte request answered with `bytes` bytes over loopback TCP.
fn ping_pong(bytes: usize, rounds: u64) -> anyhow::Result<Histogram<u64>> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_nodelay(true)?;
        let reply = vec![7u8; bytes];
        let mut req = [0u8; 32];
        while s.read_exact(&mut req).is_ok() {
            s.write_all(&reply)?;
        }
        Ok(())
    });
    let mut c = TcpStream::connect(addr)?;
    c.set_nodelay(true)?;
    let mut reply = vec![0u8; bytes];
    let mut h = new_histogram();
    for n in 0..rounds + 10 {
        let t = Instant::now();
        c.write_all(&[1u8; 32])?;
        c.read_exact(&mut reply)?;
        if n >= 10 {
            h.record(t.elapsed().as_nanos() as u64)?;
        }
    }
    drop(c);
    server.join().expect("ping-pong server")?;
    Ok(h)
}

/// SCAN COUNT `count` calls over the whole keyspace from the start (again from the start
/// when one ends), `calls` of them timed; the mean keys per call.
fn scan(addr: &str, count: u32, calls: u64) -> anyhow::Result<(Histogram<u64>, f64)> {
    let mut s = TcpStream::connect(addr)?;
    s.set_nodelay(true)?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut h = new_histogram();
    let mut cursor = "0".to_string();
    let mut keys = 0u64;
    for _ in 0..calls {
        let c = count.to_string();
        let cmd = format!(
            "*4\r\n$4\r\nSCAN\r\n${}\r\n{cursor}\r\n$5\r\nCOUNT\r\n${}\r\n{c}\r\n",
            cursor.len(),
            c.len()
        );
        let t = Instant::now();
        s.write_all(cmd.as_bytes())?;
        let (next, n) = read_scan_reply(&mut r)?;
        h.record(t.elapsed().as_nanos() as u64)?;
        keys += n;
        cursor = next;
    }
    Ok((h, keys as f64 / calls.max(1) as f64))
}

/// A SCAN reply: the next cursor and how many keys came.
fn read_scan_reply(r: &mut impl BufRead) -> anyhow::Result<(String, u64)> {
    let mut line = String::new();
    let mut next_line = |r: &mut dyn BufRead| -> anyhow::Result<String> {
        line.clear();
        r.read_line(&mut line)?;
        Ok(line.trim_end().to_string())
    };
    if next_line(r)? != "*2" {
        bail!("SCAN did not answer an array of two");
    }
    let _len = next_line(r)?;
    let cursor = next_line(r)?;
    let n: u64 = next_line(r)?
        .strip_prefix('*')
        .context("SCAN's keys are not an array")?
        .parse()?;
    for _ in 0..n {
        let _len = next_line(r)?;
        let _key = next_line(r)?;
    }
    Ok((cursor, n))
}
