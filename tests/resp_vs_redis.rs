//! The RESP front against Redis 7 itself (issue 32): the same command sequences sent to a
//! redis-server this test starts and to a node, every reply compared byte for byte
//! (`tests/resp/vs_redis.py` holds the table: every string and expiry command, with its
//! error cases). Replies that name the server or the clock (TIME, CONFIG GET, WAIT in a
//! cluster) are checked here on their own. CI installs redis-server.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// A redis-server on `port` with no persistence, stopped when dropped.
struct Redis(Child);

impl Redis {
    fn start(port: u16) -> Redis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (CI installs it from Debian's redis-server package)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Redis(child)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn raw_call(port: u16, args: &[&str]) -> Vec<u8> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n{a}\r\n", a.len()).as_bytes());
    }
    s.write_all(&out).unwrap();
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    // One short reply: read until it ends in CRLF and stays quiet briefly.
    loop {
        let n = s.read(&mut buf).unwrap();
        got.extend_from_slice(&buf[..n]);
        if n == 0 || got.ends_with(b"\r\n") {
            s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
            match s.read(&mut buf) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                _ => break,
            }
        }
    }
    got
}

#[test]
fn every_string_and_expiry_command_answers_as_redis_7() {
    let dir = test_dir();
    let port = ports();
    let _node = start(
        &write_config_with(dir.path(), port, "[resp]\nallow_flushall = true\n"),
        port,
    );
    let redis_port = ports();
    let _redis = Redis::start(redis_port);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/resp/vs_redis.py");
    let out = Command::new("python3")
        .arg(script)
        .arg(redis_port.to_string())
        .arg((port + 2).to_string())
        .output()
        .expect("python3");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}");
    assert!(
        out.status.success(),
        "replies differ from Redis's:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn time_config_and_wait_answer_for_this_node() {
    let dir = test_dir();
    let port = ports();
    let _node = start(&write_config(dir.path(), port), port);
    let resp = port + 2;
    // TIME: seconds and microseconds, as bulk strings, now.
    let time = String::from_utf8(raw_call(resp, &["TIME"])).unwrap();
    let parts: Vec<&str> = time.split("\r\n").collect();
    assert_eq!(parts[0], "*2", "{time:?}");
    let secs: u64 = parts[2].parse().unwrap();
    let micros: u64 = parts[4].parse().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(secs.abs_diff(now) <= 2 && micros < 1_000_000, "{time:?}");
    // CONFIG GET: what applies here, read-only.
    let config = String::from_utf8(raw_call(resp, &["CONFIG", "GET", "append*"])).unwrap();
    assert_eq!(
        config,
        "*4\r\n$11\r\nappendfsync\r\n$6\r\nalways\r\n$10\r\nappendonly\r\n$3\r\nyes\r\n"
    );
    let save = String::from_utf8(raw_call(resp, &["CONFIG", "GET", "SAVE", "maxmemory"])).unwrap();
    assert_eq!(
        save,
        "*4\r\n$9\r\nmaxmemory\r\n$1\r\n0\r\n$4\r\nsave\r\n$0\r\n\r\n"
    );
    let set = String::from_utf8(raw_call(resp, &["CONFIG", "SET", "maxmemory", "1"])).unwrap();
    assert!(
        set.starts_with("-ERR CONFIG SET is not supported: 'maxmemory'"),
        "{set:?}"
    );
    // Where the node differs from Redis, on purpose (README.md): an expiry past what a
    // record holds, and commands that would have to be atomic across two chains.
    assert_eq!(
        raw_call(resp, &["SET", "k", "v", "PXAT", "9223372036854775807"]),
        b"-ERR invalid expire time in 'set' command\r\n"
    );
    assert_eq!(
        raw_call(resp, &["EXPIREAT", "k", "281474976710656"]),
        b"-ERR invalid expire time in 'expireat' command\r\n"
    );
    assert_eq!(raw_call(resp, &["SET", "k", "v"]), b"+OK\r\n");
    for two_keys in [
        &["MSETNX", "a", "1", "b", "2"][..],
        &["RENAME", "k", "k2"],
        &["COPY", "k", "k2"],
    ] {
        assert_eq!(
            raw_call(resp, two_keys),
            b"-CROSSSLOT Keys in request don't hash to the same slot\r\n",
            "{two_keys:?}"
        );
    }
    // WAIT on a single node: no replicas, answered at once whatever it asks for.
    let started = Instant::now();
    assert_eq!(raw_call(resp, &["WAIT", "2", "0"]), b":0\r\n");
    assert!(started.elapsed() < Duration::from_secs(1));
}
