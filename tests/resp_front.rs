//! The Redis protocol on a whole node (issue 21), driven by Redis's own tools: redis-py
//! through every command (`tests/resp/redis_py_suite.py`), redis-cli and redis-benchmark;
//! native and RESP clients seeing the same objects; a corpus of malformed streams, each
//! answered with a protocol error or closed, never a panic, with memory bounded under a
//! client that never reads; and SETs acknowledged over RESP surviving kill -9.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use hotshard_net::blocking::BlockingClient;

/// The RESP port `write_config` gives a node on `port`.
fn resp_port(port: u16) -> u16 {
    port + 2
}

fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", resp_port(port))).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

/// A command as a RESP array of bulk strings.
fn command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Reads one reply (simple, error, integer, bulk or null) whole.
fn reply(s: &mut TcpStream) -> Vec<u8> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    while !line.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the connection closed");
        line.push(b[0]);
    }
    if line[0] != b'$' || line.starts_with(b"$-1") {
        return line;
    }
    let len: usize = std::str::from_utf8(&line[1..line.len() - 2])
        .unwrap()
        .parse()
        .unwrap();
    let mut body = vec![0u8; len + 2];
    s.read_exact(&mut body).unwrap();
    body.truncate(len);
    body
}

fn call(s: &mut TcpStream, args: &[&[u8]]) -> Vec<u8> {
    s.write_all(&command(args)).unwrap();
    reply(s)
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn redis_py_drives_every_command() {
    let dir = test_dir();
    let port = ports();
    let _node = start(&write_config(dir.path(), port), port);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/resp/redis_py_suite.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(resp_port(port).to_string())
        .output()
        .expect("python3 (CI installs it, with redis-py from PyPI)");
    assert!(
        out.status.success(),
        "redis-py suite failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn native_and_resp_clients_see_the_same_objects() {
    let dir = test_dir();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let mut native = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    let mut resp = connect(port);
    for i in 0..50 {
        let key = format!("shared:{i}");
        native
            .put(key.as_bytes(), format!("native {i}").as_bytes())
            .unwrap();
        assert_eq!(
            call(&mut resp, &[b"GET", key.as_bytes()]),
            format!("native {i}").into_bytes()
        );
        let over = format!("resp {i}");
        assert_eq!(
            call(&mut resp, &[b"SET", key.as_bytes(), over.as_bytes()]),
            b"+OK\r\n"
        );
        assert_eq!(
            native.get(key.as_bytes(), None).unwrap().unwrap().0,
            over.into_bytes()
        );
        native.delete(key.as_bytes()).unwrap();
        assert_eq!(call(&mut resp, &[b"EXISTS", key.as_bytes()]), b":0\r\n");
    }
}

#[test]
fn redis_cli_and_redis_benchmark_run_against_the_node() {
    let dir = test_dir();
    let port = ports();
    let _node = start(&write_config(dir.path(), port), port);
    let p = resp_port(port).to_string();
    let cli = |args: &[&str]| {
        let out = Command::new("redis-cli")
            .args(["-p", &p])
            .args(args)
            .output()
            .expect("redis-cli (Debian's redis-tools)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    assert_eq!(cli(&["PING"]), "PONG");
    assert_eq!(cli(&["SET", "cli-key", "hello world"]), "OK");
    assert_eq!(cli(&["GET", "cli-key"]), "hello world");
    assert_eq!(cli(&["INCRBY", "cli-n", "5"]), "5");
    assert!(cli(&["NOSUCH"]).contains("unknown command 'NOSUCH'"));
    assert!(cli(&["INFO", "persistence"]).contains("hotshard_durability"));
    let out = Command::new("redis-benchmark")
        .args([
            "-p", &p, "-t", "set,get", "-n", "4000", "-c", "8", "-P", "4", "-r", "1000", "-d", "512", "-q",
        ])
        .output()
        .expect("redis-benchmark (Debian's redis-tools)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    for op in ["SET", "GET"] {
        let line = text
            .split(['\r', '\n'])
            .find(|l| l.starts_with(&format!("{op}: ")) && l.contains("requests per second"))
            .unwrap_or_else(|| panic!("no {op} result in {text}"));
        let rps: f64 = line[op.len() + 2..]
            .split_whitespace()
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert!(rps > 0.0, "{line}");
    }
    assert!(!text.contains("ERR"), "{text}");
    // What redis-benchmark wrote is there: its keys are key:000000000000 ..
    let keys: u64 = cli(&["DBSIZE"]).parse().unwrap();
    assert!(keys > 100, "{keys} keys after the benchmark");
}

/// Each stream is answered with Redis's protocol error and closed, or (incomplete) closed
/// when the frame timeout passes or the client goes; the node answers others throughout.
#[test]
fn malformed_streams_are_answered_or_closed_and_nothing_panics() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config_with(dir.path(), port, "[net]\nframe_timeout_ms = 1000\n");
    let node = start(&cfg, port);
    let corpus: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "a bad type byte in an array",
            b"*1\r\n+PING\r\n".to_vec(),
            Some("expected '$'"),
        ),
        (
            "a negative bulk length",
            b"*1\r\n$-5\r\n".to_vec(),
            Some("invalid bulk length"),
        ),
        (
            "a huge bulk length",
            b"*1\r\n$99999999999\r\n".to_vec(),
            Some("invalid bulk length"),
        ),
        (
            "a bulk past the value limit",
            b"*2\r\n$3\r\nSET\r\n$8388609\r\n".to_vec(),
            Some("invalid bulk length"),
        ),
        (
            "a huge array",
            b"*99999999\r\n".to_vec(),
            Some("invalid multibulk length"),
        ),
        (
            "a count that is not a number",
            b"*x\r\n".to_vec(),
            Some("invalid multibulk length"),
        ),
        (
            "an array of arrays",
            b"*1\r\n*1\r\n*1\r\n*1\r\n".to_vec(),
            Some("expected '$'"),
        ),
        (
            "a bulk without its CRLF",
            b"*1\r\n$4\r\nPINGxx".to_vec(),
            Some("expected CRLF"),
        ),
        (
            "unbalanced quotes",
            b"SET \"k v\r\n".to_vec(),
            Some("unbalanced quotes"),
        ),
        (
            "an inline line with no newline",
            vec![b'a'; 70 * 1024],
            Some("too big inline request"),
        ),
        (
            "a bulk that never ends",
            b"*2\r\n$3\r\nGET\r\n$100\r\nabc".to_vec(),
            None,
        ),
        ("a length line that never ends", b"*2\r\n$3".to_vec(), None),
    ];
    for (what, bytes, error) in corpus {
        let mut s = connect(port);
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(&bytes).unwrap();
        let mut got = Vec::new();
        let started = Instant::now();
        let _ = s.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got);
        match error {
            Some(e) => assert!(
                text.starts_with("-ERR Protocol error") && text.contains(e),
                "{what}: {text:?}"
            ),
            None => {
                assert!(got.is_empty(), "{what}: {text:?}");
                assert!(
                    started.elapsed() < Duration::from_secs(4),
                    "{what}: not closed at the frame timeout"
                );
            }
        }
        let mut other = connect(port);
        assert_eq!(call(&mut other, &[b"PING"]), b"+PONG\r\n", "after {what}");
    }

    // A client that pipelines reads of a large value and never reads a reply: the node
    // stops reading from it (at most `max_in_flight` replies wait), its memory stays
    // bounded, and other clients are answered.
    let pid = node.child.as_ref().unwrap().id();
    let mut s = connect(port);
    let value = vec![b'v'; 256 << 10];
    assert_eq!(call(&mut s, &[b"SET", b"flood", &value]), b"+OK\r\n");
    let before = rss_kib(pid);
    let mut flood = connect(port);
    flood.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let get = command(&[b"GET", b"flood"]);
    let mut sent = 0u64;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if flood.write_all(&get).is_err() {
            break;
        }
        sent += 1;
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert_eq!(call(&mut s, &[b"PING"]), b"+PONG\r\n");
    assert!(
        grown_mib < 200,
        "the node grew by {grown_mib} MiB under {sent} unread GETs"
    );
    drop(flood);
    assert_eq!(call(&mut s, &[b"PING"]), b"+PONG\r\n");
}

#[test]
fn sets_acknowledged_over_resp_survive_kill_9() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    // Two writers pipelining SETs (values from bytes to 256 KiB) until the node is killed:
    // every SET answered +OK must be there after the restart.
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut s = connect(port);
                for i in 0.. {
                    let key = format!("crash:{w}:{i}");
                    let len = [1usize, 100, 4096, 70_000, 256 << 10][i % 5];
                    let value = vec![(i % 251) as u8; len];
                    if s.write_all(&command(&[b"SET", key.as_bytes(), &value])).is_err() {
                        return;
                    }
                    let mut line = [0u8; 5];
                    match s.read_exact(&mut line) {
                        Ok(()) if &line == b"+OK\r\n" => acked.lock().unwrap().push((key, value)),
                        _ => return,
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    node.kill9();
    for w in writers {
        w.join().unwrap();
    }
    let acked = std::mem::take(&mut *acked.lock().unwrap());
    assert!(
        acked.len() > 50,
        "only {} SETs acknowledged before the kill",
        acked.len()
    );
    let _node = start(&cfg, port);
    let mut s = connect(port);
    for (key, value) in &acked {
        assert_eq!(
            &call(&mut s, &[b"GET", key.as_bytes()]),
            value,
            "{key} after kill -9"
        );
    }
}

/// Expiry is kept with the record: a restart (kill -9) keeps each key's expiry, and once it
/// passes the key is gone for RESP, the native protocol and the CLI alike, including a key
/// the CLI wrote with `--ttl`.
#[test]
fn expiry_survives_kill_9_and_holds_on_both_protocols() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    let mut s = connect(port);
    let set_at = Instant::now();
    assert_eq!(call(&mut s, &[b"SET", b"long", b"1", b"EX", b"100"]), b"+OK\r\n");
    assert_eq!(
        call(&mut s, &[b"SET", b"short", b"2", b"PX", b"2500"]),
        b"+OK\r\n"
    );
    assert_eq!(call(&mut s, &[b"SET", b"plain", b"3"]), b"+OK\r\n");
    let addr = node.addr(0);
    let out = cli(&["put", "cli-key", "4", "--ttl", "2500ms", "--addr", &addr]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let bad = cli(&["put", "cli-key", "4", "--ttl", "soon", "--addr", &addr]);
    assert!(!bad.status.success());
    node.kill9();
    let node = start(&cfg, port);
    let mut s = connect(port);
    let ttl = |s: &mut TcpStream, key: &[u8]| -> i64 {
        let r = call(s, &[b"PTTL", key]);
        std::str::from_utf8(&r[1..r.len() - 2]).unwrap().parse().unwrap()
    };
    assert!(
        (95_000..=100_000).contains(&ttl(&mut s, b"long")),
        "{}",
        ttl(&mut s, b"long")
    );
    assert!((1..=2500).contains(&ttl(&mut s, b"short")));
    assert!((1..=2500).contains(&ttl(&mut s, b"cli-key")));
    assert_eq!(ttl(&mut s, b"plain"), -1);
    std::thread::sleep(Duration::from_millis(2600).saturating_sub(set_at.elapsed()));
    let mut native = BlockingClient::connect(&node.addr(1), Duration::from_secs(5)).unwrap();
    for key in [&b"short"[..], b"cli-key"] {
        assert_eq!(call(&mut s, &[b"GET", key]), b"$-1\r\n");
        assert_eq!(ttl(&mut s, key), -2);
        assert_eq!(
            native.get(key, None).unwrap(),
            None,
            "native GET of an expired key"
        );
    }
    let out = cli(&["get", "cli-key", "--addr", &addr]);
    assert!(!out.status.success(), "the CLI finds nothing");
    assert_eq!(call(&mut s, &[b"GET", b"long"]), b"1");
    assert_eq!(native.get(b"plain", None).unwrap().unwrap().0, b"3");
}

/// The admin endpoint's metric `name`, summed over its label sets.
fn metric(port: u16, name: &str) -> u64 {
    let mut s = TcpStream::connect(("127.0.0.1", port + 3)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// A large SET's value is received from the socket straight into a DMA buffer of the
/// shard that writes it (when that is the shard the connection is on), with any arguments
/// after it, pipelined with other commands, and reads back whole.
#[test]
fn large_set_values_are_received_straight_into_the_device_buffer() {
    let dir = test_dir();
    let port = ports();
    let _node = start(&write_config(dir.path(), port), port);
    let before = metric(port, "hotshard_put_payload_bytes_direct_total");
    let mut s = connect(port);
    let mut pipeline = Vec::new();
    let values: Vec<Vec<u8>> = (0..16u8)
        .map(|i| {
            (0..(300 << 10) + i as usize * 1000)
                .map(|j| (j as u8) ^ i)
                .collect()
        })
        .collect();
    for (i, v) in values.iter().enumerate() {
        let key = format!("big:{i}");
        pipeline.extend(command(&[b"SET", key.as_bytes(), v, b"EX", b"100"]));
        pipeline.extend(command(&[b"GET", key.as_bytes()]));
    }
    pipeline.extend(command(&[b"PING"]));
    s.write_all(&pipeline).unwrap();
    for (i, v) in values.iter().enumerate() {
        assert_eq!(reply(&mut s), b"+OK\r\n", "SET big:{i}");
        assert_eq!(&reply(&mut s), v, "GET big:{i}");
    }
    assert_eq!(reply(&mut s), b"+PONG\r\n");
    let r = call(&mut s, &[b"TTL", b"big:3"]);
    assert!(
        r == b":100\r\n" || r == b":99\r\n",
        "the EX after the value: {r:?}"
    );
    let direct = metric(port, "hotshard_put_payload_bytes_direct_total") - before;
    assert!(
        direct > 1 << 20,
        "only {direct} bytes went straight into DMA buffers"
    );
}

/// A plain SET whose value (over 1 KiB) arrived whole with its command is copied once,
/// into the device buffer, as the command is taken: values on either side of that bound,
/// values holding CRLF and RESP-looking bytes, SETs of one key absorbed into the last, and
/// SETs with options after the value all read back exactly. One shard, so that every key
/// is the connection's shard's (a key another shard writes is taken with the command).
#[test]
fn whole_set_values_go_into_the_device_buffer_as_the_command_is_taken() {
    let dir = test_dir();
    let port = ports();
    let _node = start_shards(&one_shard_small_pool(dir.path(), port), port, None, None, &[], 1);
    let buffered = "hotshard_put_payload_bytes_buffered_total";
    let before = metric(port, buffered);
    let mut s = connect(port);
    let sizes = [1000, 1024, 1025, 2048, 4096, 4097, 16 << 10, 60 << 10];
    let value = |i: usize, len: usize| -> Vec<u8> {
        let pattern = b"\r\n$4\r\nSET\r\n*3\r\n";
        (0..len)
            .map(|j| pattern[(i + j) % pattern.len()] ^ (j / 7) as u8)
            .collect()
    };
    let mut pipeline = Vec::new();
    let mut expect_buffered = 0;
    for (i, &len) in sizes.iter().enumerate() {
        let key = format!("k{i}");
        pipeline.extend(command(&[b"SET", key.as_bytes(), &value(i, len)]));
        if len > 1024 {
            expect_buffered += len as u64;
        }
        // Absorbed into the next SET of the same key: only the last one is written.
        pipeline.extend(command(&[b"SET", b"same", &value(i, len)]));
        // Options after the value: taken with the command's bytes, as before.
        pipeline.extend(command(&[
            b"SET",
            format!("ex{i}").as_bytes(),
            &value(i, len),
            b"EX",
            b"100",
        ]));
    }
    s.write_all(&pipeline).unwrap();
    for i in 0..3 * sizes.len() {
        assert_eq!(reply(&mut s), b"+OK\r\n", "SET {i}");
    }
    for (i, &len) in sizes.iter().enumerate() {
        assert_eq!(
            call(&mut s, &[b"GET", format!("k{i}").as_bytes()]),
            value(i, len),
            "k{i}"
        );
        assert_eq!(
            call(&mut s, &[b"GET", format!("ex{i}").as_bytes()]),
            value(i, len),
            "ex{i}"
        );
        let ttl = call(&mut s, &[b"TTL", format!("ex{i}").as_bytes()]);
        assert!(
            ttl == b":100\r\n" || ttl == b":99\r\n",
            "the EX after value {i}: {ttl:?}"
        );
    }
    let last = sizes.len() - 1;
    assert_eq!(call(&mut s, &[b"GET", b"same"]), value(last, sizes[last]));
    let got = metric(port, buffered) - before;
    assert!(
        got >= expect_buffered,
        "{got} bytes went into device buffers as commands were taken, {expect_buffered} expected at least"
    );
}

/// A one-shard node with a 64 MiB DMA pool and no cache, as the issue's user had it.
fn one_shard_small_pool(dir: &std::path::Path, port: u16) -> std::path::PathBuf {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\ndata_bytes = 536870912\nbase_port = {port}\nadmin_port = {}\nresp_port = {}\ncores = [0]\n\
             [queue]\npool_mib = 64\n[store]\nsegment_mib = 16\ncache_mib = 0\n",
            dir.join("data").display(),
            port + 3,
            port + 2
        ),
    )
    .unwrap();
    cfg
}

/// One MGET of more uncached large values than the shard's DMA pool holds (issue 31 item
/// 3): it answers, every value whole, and a GET of another uncached key on a native
/// connection answers while it runs. Before, the MGET held every buffer it had read while
/// its next read waited for one only its own reply would free: no answer, and every device
/// read on the shard hung until the process restarted.
#[test]
fn an_mget_larger_than_the_dma_pool_answers_and_jams_nothing() {
    let dir = test_dir();
    let port = ports();
    let _node = start_shards(&one_shard_small_pool(dir.path(), port), port, None, None, &[], 1);
    let value = |i: usize| -> Vec<u8> { (0..1 << 20).map(|j| (j * 7 + i) as u8).collect() };
    let mut s = connect(port);
    for i in 0..101 {
        let key = format!("mget:{i}");
        assert_eq!(call(&mut s, &[b"SET", key.as_bytes(), &value(i)]), b"+OK\r\n");
    }
    let keys: Vec<String> = (0..100).map(|i| format!("mget:{i}")).collect();
    let mut args: Vec<&[u8]> = vec![b"MGET"];
    args.extend(keys.iter().map(|k| k.as_bytes()));
    let started = Instant::now();
    s.write_all(&command(&args)).unwrap();
    // Meanwhile, a native GET of a key the MGET does not name (uncached: a device read).
    let mut native = BlockingClient::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(10)).unwrap();
    let got = native
        .get(b"mget:100", None)
        .expect("a GET during the MGET answers");
    assert_eq!(got.unwrap().0, value(100));
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "the MGET's connection closed");
        head.push(b[0]);
    }
    assert_eq!(head, b"*100\r\n");
    for i in 0..100 {
        assert!(reply(&mut s) == value(i), "MGET's value {i}");
    }
    eprintln!(
        "MGET of 100 values of 1 MiB on a 64 MiB pool: {:?}",
        started.elapsed()
    );
    assert_eq!(call(&mut s, &[b"PING"]), b"+PONG\r\n");

    // A client that pipelines GETs of those uncached values and never reads a reply: its
    // replies hold device buffers until the frame timeout closes it, and reads that find
    // the pool empty meanwhile are answered Busy at that timeout instead of waiting for
    // ever. The node's memory stays bounded, and once the flood is gone a device read
    // answers at once.
    let pid = _node.child.as_ref().unwrap().id();
    let before = rss_kib(pid);
    let mut flood = connect(port);
    flood.set_write_timeout(Some(Duration::from_millis(200))).unwrap();
    let mut sent = 0usize;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        let key = format!("mget:{}", sent % 100);
        if flood.write_all(&command(&[b"GET", key.as_bytes()])).is_err() {
            break;
        }
        sent += 1;
    }
    let grown_mib = rss_kib(pid).saturating_sub(before) / 1024;
    assert!(
        grown_mib < 300,
        "the node grew by {grown_mib} MiB under {sent} unread GETs"
    );
    let mut other = connect(port);
    assert_eq!(call(&mut other, &[b"PING"]), b"+PONG\r\n");
    let flooded = Instant::now();
    let mut native = BlockingClient::connect(&format!("127.0.0.1:{port}"), Duration::from_secs(30)).unwrap();
    let got = loop {
        match native.get(b"mget:100", None) {
            Ok(v) => break v,
            Err(e) => {
                assert!(
                    flooded.elapsed() < Duration::from_secs(30),
                    "no device read in 30 s: {e}"
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    };
    assert_eq!(got.unwrap().0, value(100));
    eprintln!(
        "{sent} unread GETs of 1 MiB: grew {grown_mib} MiB; another key read {:?} after the flood began",
        flooded.elapsed()
    );
    drop(flood);
    let after = Instant::now();
    assert_eq!(native.get(b"mget:99", None).unwrap().unwrap().0, value(99));
    assert!(
        after.elapsed() < Duration::from_secs(2),
        "a read after the flood took {:?}",
        after.elapsed()
    );
}

/// A command on the whole keyspace is a barrier both ways (issue 31 item 4): in one
/// pipeline, `FLUSHALL; SET k v; GET k` answers the value (the SET waits for the
/// FLUSHALL). Before, the SET ran beside the FLUSHALL, which then deleted it: GET k nil.
#[test]
fn a_flushall_in_a_pipeline_is_a_barrier_for_what_follows() {
    let dir = test_dir();
    let port = ports();
    let _node = start(
        &write_config_with(dir.path(), port, "[resp]\nallow_flushall = true\n"),
        port,
    );
    let mut s = connect(port);
    for round in 0..4 {
        // FLUSHDB is the same barrier (issue 32).
        let flush: &[u8] = if round % 2 == 0 { b"FLUSHALL" } else { b"FLUSHDB" };
        // Enough keys that the FLUSHALL takes a while.
        let mut fill = Vec::new();
        for i in 0..1000 {
            fill.extend(command(&[b"SET", format!("fill:{i}").as_bytes(), b"x"]));
        }
        s.write_all(&fill).unwrap();
        for _ in 0..1000 {
            assert_eq!(reply(&mut s), b"+OK\r\n");
        }
        let mut pipeline = command(&[flush]);
        pipeline.extend(command(&[b"SET", b"after", b"v"]));
        pipeline.extend(command(&[b"GET", b"after"]));
        s.write_all(&pipeline).unwrap();
        assert_eq!(reply(&mut s), b"+OK\r\n", "FLUSHALL, round {round}");
        assert_eq!(reply(&mut s), b"+OK\r\n", "SET, round {round}");
        assert_eq!(reply(&mut s), b"v", "GET after FLUSHALL and SET, round {round}");
    }
}

/// Plain SETs of one key pipelined one after another are absorbed (issue 32): while one
/// runs, the ones behind it wait as one, and only the last is written, every one answered
/// +OK in order; a command between them naming the key (GET, APPEND, SET with an option)
/// sees every SET before it and none after. 500 SETs of one key take far fewer writes
/// than 500 (each waited for the one before: 500 writes, one device wait each).
#[test]
fn pipelined_sets_of_one_key_are_absorbed_and_keep_their_order() {
    let dir = test_dir();
    let port = ports();
    let _node = start(&write_config(dir.path(), port), port);
    let mut s = connect(port);
    let puts = |port: u16| {
        let mut a = TcpStream::connect(("127.0.0.1", port + 3)).unwrap();
        a.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut text = String::new();
        a.read_to_string(&mut text).unwrap();
        text.lines()
            .filter(|l| l.starts_with("hotshard_ops_total{") && l.contains("op=\"put\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum::<u64>()
    };
    let before = puts(port);
    let mut pipeline = Vec::new();
    for i in 0..500 {
        pipeline.extend(command(&[b"SET", b"same", i.to_string().as_bytes()]));
    }
    pipeline.extend(command(&[b"GET", b"same"]));
    s.write_all(&pipeline).unwrap();
    for i in 0..500 {
        assert_eq!(reply(&mut s), b"+OK\r\n", "SET {i}");
    }
    assert_eq!(reply(&mut s), b"499", "the last SET wins");
    let written = puts(port) - before;
    assert!(written < 100, "{written} writes for 500 SETs of one key");
    // Commands between SETs of the key see exactly the SETs before them.
    let mut pipeline = Vec::new();
    for args in [
        &[&b"SET"[..], b"k", b"a"][..],
        &[b"SET", b"k", b"b"],
        &[b"GET", b"k"],
        &[b"SET", b"k", b"c"],
        &[b"SET", b"k", b"d"],
        &[b"APPEND", b"k", b"x"],
        &[b"SET", b"k", b"e"],
        &[b"SET", b"k", b"f", b"XX"],
        &[b"SET", b"k", b"g"],
        &[b"SET", b"other", b"1"],
        &[b"SET", b"k", b"h"],
        &[b"GET", b"k"],
    ] {
        pipeline.extend(command(args));
    }
    s.write_all(&pipeline).unwrap();
    let replies: Vec<Vec<u8>> = (0..12).map(|_| reply(&mut s)).collect();
    let ok = b"+OK\r\n".to_vec();
    assert_eq!(
        replies,
        vec![
            ok.clone(),
            ok.clone(),
            b"b".to_vec(),
            ok.clone(),
            ok.clone(),
            b":2\r\n".to_vec(),
            ok.clone(),
            ok.clone(),
            ok.clone(),
            ok.clone(),
            ok.clone(),
            b"h".to_vec()
        ]
    );
}

/// Listings of a partition larger than one answer (issue 31 item 5): 40,000 keys of 500
/// bytes over 2 partitions (10 MB of keys each, past the 8 MiB a listing may carry).
/// SCAN returns every key, and KEYS too (with its limit raised; FLUSHALL lists as KEYS
/// does). Before, a partition was cut at 8 MiB and counted as done: keys were missed.
#[test]
fn listings_page_through_a_partition_larger_than_one_answer() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config_with(dir.path(), port, "[resp]\nkeys_limit = 1000000\n");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replacen("[node]\n", "[node]\npartition_bits = 1\n", 1)
            .replace("data_bytes = 134217728", "data_bytes = 1073741824"),
    )
    .unwrap();
    let _node = start(&cfg, port);
    let mut s = connect(port);
    let n = 40_000;
    let key = |i: usize| format!("{i:0>500}");
    for chunk in (0..n).collect::<Vec<_>>().chunks(5000) {
        let mut p = Vec::new();
        for &i in chunk {
            p.extend(command(&[b"SET", key(i).as_bytes(), b"v"]));
        }
        s.write_all(&p).unwrap();
        for _ in chunk {
            assert_eq!(reply(&mut s), b"+OK\r\n");
        }
    }
    // SCAN, page by page.
    let mut seen = std::collections::HashSet::new();
    let mut cursor = b"0".to_vec();
    let mut calls = 0;
    loop {
        s.write_all(&command(&[b"SCAN", &cursor, b"COUNT", b"100000"]))
            .unwrap();
        let head = reply(&mut s);
        assert_eq!(head, b"*2\r\n");
        cursor = reply(&mut s);
        let count_line = reply(&mut s);
        let count: usize = std::str::from_utf8(&count_line[1..count_line.len() - 2])
            .unwrap()
            .parse()
            .unwrap();
        for _ in 0..count {
            seen.insert(reply(&mut s));
        }
        calls += 1;
        if cursor == b"0" {
            break;
        }
    }
    assert_eq!(
        seen.len(),
        n,
        "SCAN returned {} of {n} keys in {calls} calls",
        seen.len()
    );
    // KEYS.
    s.write_all(&command(&[b"KEYS", b"*"])).unwrap();
    let head = reply(&mut s);
    assert_eq!(head, format!("*{n}\r\n").into_bytes());
    for _ in 0..n {
        reply(&mut s);
    }
    eprintln!("SCAN of {n} keys of 500 bytes in 2 partitions: {calls} calls");
}
