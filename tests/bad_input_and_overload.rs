//! The node as a process against hostile and excessive clients: a corpus of malformed
//! frames, a slowloris, a client that never reads its replies, and 1,000 connections each
//! pipelining to the limit, and more connections than the node may open files. Each bad
//! connection gets an error frame or a clean close within
//! a timeout, well-behaved clients keep being answered, and memory stays bounded.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::codec::{access_response, encode_request, parse_frame};
use hotshard_net::{Request, Status, Target};

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn metric(port: u16, name: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Reads until the server closes; returns what it sent. Panics after `within`.
fn read_to_close(s: &mut TcpStream, within: Duration) -> Vec<u8> {
    s.set_read_timeout(Some(within)).unwrap();
    let mut all = Vec::new();
    let mut buf = [0u8; 65536];
    let started = Instant::now();
    loop {
        match s.read(&mut buf) {
            Ok(0) => return all,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return all,
            Err(e) => panic!("no close within {within:?} ({e}) after {:?}", started.elapsed()),
        }
    }
}

fn assert_served(addr: &str) {
    let mut c = BlockingClient::connect(addr, Duration::from_secs(5)).unwrap();
    c.put(b"still-here", b"yes").unwrap();
    assert_eq!(c.get(b"still-here", None).unwrap().unwrap().0, b"yes");
}

fn get_frame(id: u64, key: &[u8], map_bits_partition: u32) -> Vec<u8> {
    encode_request(
        id,
        &Request::Get {
            key: key.to_vec(),
            range: None,
            target: Target {
                partition: map_bits_partition,
                epoch: 1,
            },
        },
        0,
    )
    .unwrap()
}

#[test]
fn malformed_frames_slowloris_and_non_readers_are_cut_off_and_others_served() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = ports();
    let cfg = write_config_with(dir.path(), port, "[net]\nframe_timeout_ms = 500\n");
    let node = start(&cfg, port);
    let addr = node.addr(0);
    let ping = encode_request(9, &Request::Ping, 0).unwrap();
    let mut corpus: Vec<(&str, Vec<u8>)> = Vec::new();
    let mut b = ping.clone();
    b[0] = b'X';
    corpus.push(("wrong magic", b));
    let mut b = ping.clone();
    b[4] = 99;
    corpus.push(("unknown version", b));
    let mut b = ping.clone();
    b[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
    corpus.push(("oversized header length", b));
    let mut b = ping.clone();
    b[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    corpus.push(("oversized payload length", b));
    let mut b = ping.clone();
    for x in b[24..].iter_mut() {
        *x = 0xA5;
    }
    corpus.push(("invalid rkyv header", b));
    // The header is the archived request enum; its first byte is the operation's tag.
    let mut b = ping.clone();
    b[24] = 200;
    corpus.push(("unknown operation", b));
    let mut b = get_frame(3, b"k", 0);
    b[12..16].copy_from_slice(&16u32.to_le_bytes());
    b.extend_from_slice(&[0u8; 16]);
    corpus.push(("payload on a Get", b));
    let mut b = ping.clone();
    b[5] = 2;
    corpus.push(("a response frame sent as a request", b));
    for (what, bytes) in &corpus {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(bytes).unwrap();
        eprintln!("case: {what}");
        let answer = read_to_close(&mut s, Duration::from_secs(5));
        if !answer.is_empty() {
            let f = parse_frame(&answer)
                .unwrap_or_else(|e| panic!("{what}: unparseable answer {e}"))
                .unwrap_or_else(|| panic!("{what}: partial answer"));
            let status = access_response(&f.header).unwrap().status();
            assert!(matches!(status, Status::BadRequest { .. }), "{what}: {status:?}");
        }
        assert_served(&addr);
    }
    // Truncated: half a frame, then nothing. Cut off after the frame timeout.
    let mut s = TcpStream::connect(&addr).unwrap();
    s.write_all(&ping[..30]).unwrap();
    let t = Instant::now();
    read_to_close(&mut s, Duration::from_secs(5));
    assert!(
        t.elapsed() >= Duration::from_millis(400),
        "closed before the timeout"
    );
    // Slowloris: one byte every 100 ms forever.
    let mut s = TcpStream::connect(&addr).unwrap();
    let t = Instant::now();
    let mut closed = false;
    for byte in ping.iter().cycle().take(200) {
        if s.write_all(&[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        let mut probe = [0u8; 1];
        s.set_nonblocking(true).unwrap();
        let r = s.read(&mut probe);
        s.set_nonblocking(false).unwrap();
        if matches!(r, Ok(0)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "slowloris connection still open after {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    assert_served(&addr);
    // A client that never reads: 1 MiB values asked for 200 times, replies never read.
    {
        let mut c = BlockingClient::connect(&addr, Duration::from_secs(5)).unwrap();
        c.put(b"big", &vec![7u8; 1 << 20]).unwrap();
    }
    let map = BlockingClient::connect(&addr, Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let p = map.partition(b"big");
    let owner = map.owner(p).unwrap().addr.clone();
    let before = rss_kib(node.child.as_ref().unwrap().id());
    let mut hog = TcpStream::connect(&owner).unwrap();
    hog.set_write_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut stuck = Vec::new();
    for i in 0..200 {
        stuck.extend(get_frame(i, b"big", p));
    }
    let _ = hog.write_all(&stuck);
    std::thread::sleep(Duration::from_millis(1500));
    eprintln!(
        "after the non-reader: busy {} timeouts {} pending {} requests, {} bytes",
        metric(port + 3, "hotshard_busy_total"),
        metric(port + 3, "hotshard_frame_timeouts_total"),
        metric(port + 3, "hotshard_pending_requests"),
        metric(port + 3, "hotshard_pending_bytes")
    );
    assert_served(&owner);
    let grown = rss_kib(node.child.as_ref().unwrap().id()).saturating_sub(before);
    // At most max_in_flight (128) replies are queued for it; the values come from the
    // cache (8 MiB budget) or from the DMA pool, so growth stays far below 200 MiB.
    assert!(
        grown < 200 << 10,
        "RSS grew {grown} KiB for a client that never reads"
    );
    let timeouts = metric(port + 3, "hotshard_frame_timeouts_total");
    assert!(
        timeouts >= 3,
        "truncated, slowloris and the non-reader: {timeouts}"
    );
    drop(hog);
}

#[test]
fn a_thousand_pipelining_connections_get_busy_not_unbounded_memory() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = ports();
    let cfg = write_config_with(
        dir.path(),
        port,
        "[net]\nmax_in_flight = 32\nmax_pending_requests = 256\nmax_pending_mib = 16\n",
    );
    let node = start(&cfg, port);
    let pid = node.child.as_ref().unwrap().id();
    let map = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let base = rss_kib(pid);
    // 1,000 connections to shard 0, each with 32 puts of 4 KiB for keys shard 0 owns.
    let keys: Vec<(Vec<u8>, u32)> = (0..)
        .map(|i| format!("load-{i}").into_bytes())
        .map(|k| {
            let p = map.partition(&k);
            (k, p)
        })
        .filter(|(_, p)| map.owner(*p).unwrap().shard == 0)
        .take(512)
        .collect();
    let value = vec![3u8; 4096];
    let conns: usize = 1000;
    let per_conn = 32;
    let threads = 8;
    let good_latencies = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // A well-behaved client on its own connection, asking once every 20 ms.
    BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .put(b"good-key", b"good")
        .unwrap();
    let good = {
        let (lat, stop, addr) = (good_latencies.clone(), stop.clone(), node.addr(0));
        std::thread::spawn(move || {
            let mut c = BlockingClient::connect(&addr, Duration::from_secs(10)).unwrap();
            let mut busy = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let t = Instant::now();
                match c.get(b"good-key", None) {
                    Ok(v) => {
                        assert_eq!(v.unwrap().0, b"good");
                        lat.lock().unwrap().push(t.elapsed());
                    }
                    Err(e) if e.to_string().to_lowercase().contains("busy") => busy += 1,
                    Err(e) => panic!("well-behaved client: {e}"),
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            busy
        })
    };
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sampler = {
        let (peak, stop) = (peak.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                peak.fetch_max(rss_kib(pid), std::sync::atomic::Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(10));
            }
        })
    };
    let mut workers = Vec::new();
    for t in 0..threads {
        let (keys, value, addr) = (keys.clone(), value.clone(), node.addr(0));
        workers.push(std::thread::spawn(move || {
            let mut socks = Vec::new();
            for c in (t..conns).step_by(threads) {
                let mut s = TcpStream::connect(&addr).unwrap();
                let mut out = Vec::new();
                for i in 0..per_conn {
                    let (k, p) = &keys[(c * per_conn + i) % keys.len()];
                    let req = Request::Put {
                        key: k.clone(),
                        if_version: None,
                        target: Target {
                            partition: *p,
                            epoch: 1,
                        },
                        expires_ms: 0,
                    };
                    out.extend(encode_request(i as u64, &req, value.len()).unwrap());
                    out.extend_from_slice(&value);
                }
                s.write_all(&out).unwrap();
                socks.push(s);
            }
            let (mut ok, mut busy) = (0u64, 0u64);
            for mut s in socks {
                s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
                let mut buf = Vec::new();
                let mut got = 0;
                let mut chunk = [0u8; 8192];
                while got < per_conn {
                    while let Some(f) = parse_frame(&buf).unwrap() {
                        match access_response(&f.header).unwrap().status() {
                            Status::Ok => ok += 1,
                            Status::Busy => busy += 1,
                            other => panic!("unexpected {other:?}"),
                        }
                        buf.drain(..f.consumed);
                        got += 1;
                    }
                    if got == per_conn {
                        break;
                    }
                    let n = s.read(&mut chunk).unwrap();
                    assert!(n > 0, "closed with {got} of {per_conn} answered");
                    buf.extend_from_slice(&chunk[..n]);
                }
            }
            (ok, busy)
        }));
    }
    let (mut ok, mut busy) = (0, 0);
    for w in workers {
        let (o, b) = w.join().unwrap();
        ok += o;
        busy += b;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let good_busy = good.join().unwrap();
    sampler.join().unwrap();
    let peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let lat = good_latencies.lock().unwrap().clone();
    let worst = lat.iter().max().copied().unwrap_or_default();
    println!(
        "overload: {ok} ok, {busy} busy of {}; RSS {base} KiB -> peak {peak} KiB; well-behaved client: {} answers, {good_busy} busy, worst {worst:?}",
        conns * per_conn,
        lat.len()
    );
    assert_eq!(ok + busy, (conns * per_conn) as u64, "every request answered");
    assert!(busy > 0, "the node never said Busy under 32,000 pipelined puts");
    assert!(ok > 0);
    // Budget: 16 MiB of pending payloads, plus per connection a 64 KiB read buffer and
    // a request's worth of bookkeeping (~100 KiB x 1,000), plus a stated 64 MiB margin.
    let budget_kib = (16 << 10) + 1000 * 100 + (64 << 10);
    assert!(
        peak.saturating_sub(base) < budget_kib,
        "RSS grew {} KiB (budget {budget_kib})",
        peak - base
    );
    assert!(!lat.is_empty(), "the well-behaved client got no answer");
    assert!(
        worst < Duration::from_secs(2),
        "well-behaved client waited {worst:?}"
    );
    assert_served(&node.addr(1));
}

#[test]
fn running_out_of_file_descriptors_sheds_connections_and_keeps_serving() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    // Far below net.max_connections (1024): the kernel refuses accepts with EMFILE first.
    let node = start_with_fd_limit(&cfg, port, 96);
    let mut healthy = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    let keys: Vec<String> = (0..20).map(|k| format!("key-{k}")).collect();
    for key in &keys {
        // Also opens the client's connection to each shard before the flood.
        healthy.put(key.as_bytes(), b"1").unwrap();
    }
    let mut flood = Vec::new();
    for i in 0..200 {
        let addr: std::net::SocketAddr = node.addr(i % 2).parse().unwrap();
        if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            flood.push(s);
        }
    }
    // While every descriptor is taken, both shards keep answering the client they have.
    for key in &keys {
        healthy.put(key.as_bytes(), b"2").unwrap();
        assert_eq!(healthy.get(key.as_bytes(), None).unwrap().unwrap().0, b"2");
    }
    // The connections it could not take were closed, not left hanging in the backlog.
    let mut closed = 0;
    for s in flood.iter_mut() {
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let shed = match s.read(&mut [0u8; 1]) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        };
        closed += shed as usize;
    }
    assert!(closed > 0, "no connection was shed");
    drop(flood);
    // Once they are gone, new clients are served again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let served = BlockingClient::connect(&node.addr(1), Duration::from_secs(2))
            .and_then(|mut c| c.put(b"after", b"3").map(drop));
        if served.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not served after the flood: {served:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The admin endpoint (also out of descriptors during the flood) counted the refusals.
    assert!(
        metric(port + 3, "hotshard_accept_errors_total") > 0,
        "the flood never ran the node out of descriptors"
    );
    // And it still stops when asked.
    let mut node = node;
    node.stop();
}

#[test]
fn an_idle_admin_connection_is_closed() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let mut idle = TcpStream::connect(("127.0.0.1", port + 3)).unwrap();
    // It sends nothing; the node closes it after its admin timeout (5 s), well before this.
    idle.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let got = idle.read(&mut [0u8; 16]);
    assert!(
        matches!(got, Ok(0)),
        "an idle admin connection stayed open: {got:?}"
    );
    drop(node);
}
