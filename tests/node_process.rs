//! Whole-node tests: the `hotshard` binary as a process on a temporary data directory.
//! Put, get and delete through the client and the CLI; kill -9 and restart with every
//! acknowledged write intact; a second node on the same data refused; a misrouted request
//! forwarded and answered; a bad config refused with the key named.

mod common;

use std::net::TcpStream as StdTcp;
use std::process::Command;
use std::time::Duration;

use common::*;
use hotshard_net::blocking::BlockingClient;

#[test]
fn put_get_delete_through_the_client_and_the_cli() {
    let dir = test_dir();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    assert_eq!(c.shard_map().shards.len(), 2);
    c.put(b"alpha", b"one").unwrap();
    assert_eq!(c.get(b"alpha", None).unwrap().unwrap().0, b"one");
    c.delete(b"alpha").unwrap();
    assert_eq!(c.get(b"alpha", None).unwrap(), None);

    let addr = node.addr(1);
    let out = cli(&["put", "beta", "two", "--addr", &addr]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = cli(&["get", "beta", "--addr", &addr]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "two");
    let out = cli(&["stat", "beta", "--addr", &addr]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 bytes"));
    assert!(cli(&["del", "beta", "--addr", &addr]).status.success());
    let out = cli(&["get", "beta", "--addr", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("not found"), "{err}");
    let out = cli(&["stats", "--raw", "--addr", &addr]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("hotshard_ops_total{shard=\"1\""));
    // The summary: one screen, a column per shard and one for the node.
    let out = cli(&["stats", "--interval", "0.2", "--addr", &addr]);
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for row in [
        "put/s",
        "get p50/p99",
        "errors/s",
        "cache hits",
        "free",
        "connections",
    ] {
        assert!(
            summary.lines().any(|l| l.starts_with(row)),
            "no {row} row:\n{summary}"
        );
    }
    assert!(
        summary.contains("shard 1") && summary.contains("node"),
        "{summary}"
    );
    assert!(summary.lines().count() <= 30, "more than a screen:\n{summary}");
    // A value over the node's limit: the node's reason, not a broken pipe.
    let big = dir.path().join("big.bin");
    std::fs::write(&big, vec![7u8; (8 << 20) + 1]).unwrap();
    let out = cli(&["put", "big", "--file", big.to_str().unwrap(), "--addr", &addr]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("over the limit"), "{err}");
    // Output into a pipe nobody reads (`hotshard stats | head -1`): ends quietly, as
    // command-line tools do, instead of panicking with a backtrace.
    {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = std::process::Command::new(binary())
            .args(["stats", "--addr", &addr])
            .stdout(writer)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{err}");
    }

    // The admin endpoint: health, and Prometheus text covering both shards.
    let http = |path: &str| {
        use std::io::{Read, Write};
        let mut s = StdTcp::connect(format!("127.0.0.1:{}", node.port + 3)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut body = String::new();
        s.read_to_string(&mut body).unwrap();
        body
    };
    assert!(http("/health").ends_with("ok\n"));
    // One RESP command, so that the per-command series exist.
    {
        use std::io::{Read, Write};
        let mut resp = StdTcp::connect(format!("127.0.0.1:{}", node.port + 2)).unwrap();
        resp.write_all(b"*1\r\n$4\r\nPING\r\n").unwrap();
        let mut pong = [0u8; 7];
        resp.read_exact(&mut pong).unwrap();
        assert_eq!(&pong, b"+PONG\r\n");
    }
    let metrics = http("/metrics");
    assert_dashboard_matches("node/dashboards/hotshard-node.json", &metrics);
    assert!(metrics.starts_with("HTTP/1.1 200"), "{metrics}");
    for shard in ["0", "1"] {
        assert!(
            metrics.contains(&format!("hotshard_ops_total{{shard=\"{shard}\",op=\"put\"}}")),
            "{metrics}"
        );
    }
}

/// The dashboard check fails for a metric the node does not export (here, one left out of
/// an otherwise complete scrape).
#[test]
fn the_dashboard_check_catches_a_metric_the_node_does_not_export() {
    let names = dashboard_metric_names("node/dashboards/hotshard-node.json");
    let all: String = names.iter().map(|n| format!("{n}{{shard=\"0\"}} 1\n")).collect();
    assert_dashboard_matches("node/dashboards/hotshard-node.json", &all);
    let dropped = names.iter().next().unwrap().clone();
    let without: String = all
        .lines()
        .filter(|l| !l.starts_with(&format!("{dropped}{{")))
        .map(|l| format!("{l}\n"))
        .collect();
    let caught =
        std::panic::catch_unwind(|| assert_dashboard_matches("node/dashboards/hotshard-node.json", &without));
    assert!(caught.is_err(), "{dropped} missing and the check passed");
    assert_eq!(
        metric_names_in("rate(hotshard_ops_total{op=\"put\"}[1m]) / not_hotshard_x + hotshard_b"),
        ["hotshard_b".to_string(), "hotshard_ops_total".to_string()]
            .into_iter()
            .collect()
    );
}

/// A node restarted after kill -9 answers every connection its port accepts: a client
/// that waits for the port (as service managers and test harnesses do) and then asks gets
/// its answer, never "connection closed". Before, a killed node's listening sockets lived
/// on in its io_uring for about 0.2 s after it died, completing handshakes and closing
/// each connection unanswered (3 of 3 tries failed).
#[test]
fn a_restarted_node_answers_every_connection_its_port_accepts() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .put(b"kept", b"through restarts")
        .unwrap();
    for attempt in 0..3 {
        node.kill9();
        let child = Command::new(binary())
            .args(["serve", "--config"])
            .arg(&cfg)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        node = common::Node {
            child: Some(child),
            port,
        };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while StdTcp::connect(node.addr(0)).is_err() {
            assert!(std::time::Instant::now() < deadline, "the port never accepted");
            std::thread::sleep(Duration::from_millis(1));
        }
        let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("attempt {attempt}: the port accepted, then: {e}"));
        let got = c
            .get(b"kept", None)
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_eq!(got.unwrap().0, b"through restarts");
    }
}

#[test]
fn kill_9_and_restart_keeps_every_acknowledged_write() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    let mut acked = Vec::new();
    {
        let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
        for i in 0..300u32 {
            let key = format!("key-{i}");
            let value = format!("value-{i}-").repeat(1 + (i as usize % 50));
            c.put(key.as_bytes(), value.as_bytes()).unwrap();
            acked.push((key, Some(value)));
        }
        for i in (0..300).step_by(7) {
            c.delete(format!("key-{i}").as_bytes()).unwrap();
            acked[i].1 = None;
        }
    }
    node.kill9();
    let node = start(&cfg, port);
    let log = || std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
    let mut c = BlockingClient::connect(&node.addr(1), Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("{e}; node log: {}", log()));
    for (key, value) in &acked {
        let got = c
            .get(key.as_bytes(), None)
            .unwrap()
            .map(|(v, _)| String::from_utf8(v).unwrap());
        assert_eq!(&got, value, "{key}");
    }
}

#[test]
fn a_second_node_on_the_same_data_is_refused() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let _node = start(&cfg, port);
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("in use by another hotshard node"));
}

#[test]
fn a_restart_with_another_shard_count_is_refused_and_loses_nothing() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    for k in 0..40 {
        c.put(format!("k{k}").as_bytes(), format!("v{k}").as_bytes())
            .unwrap();
    }
    drop(c);
    node.stop();
    // The same data with one shard: regions would move over the second shard's data, and
    // half the keys would answer NotFound. Refused before anything is opened.
    let one = dir.path().join("one.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    assert!(text.contains("cores = [0, 1]"));
    std::fs::write(&one, text.replace("cores = [0, 1]", "cores = [0]")).unwrap();
    let log = dir.path().join("one.log");
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&one)
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let status = wait_for_exit(
        &mut child,
        Duration::from_secs(20),
        "a one-shard node should refuse two-shard data",
    );
    assert!(!status.success());
    let err = std::fs::read_to_string(&log).unwrap();
    assert!(err.contains("written by 2 shard(s)"), "{err}");
    // With its own shard count again, every key is there.
    let node = start(&cfg, port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    for k in 0..40 {
        let got = c.get(format!("k{k}").as_bytes(), None).unwrap().map(|(v, _)| v);
        assert_eq!(got, Some(format!("v{k}").into_bytes()), "k{k}");
    }
}

/// The first key `k0`, `k1`, ... that `shard` owns under `map`.
fn key_owned_by_shard(map: &hotshard_net::shard_map::ShardMap, shard: u32) -> String {
    (0..)
        .map(|i| format!("k{i}"))
        .find(|k| {
            map.owner(map.partition(k.as_bytes()))
                .is_some_and(|o| o.shard == shard)
        })
        .expect("some key on every shard")
}

#[test]
fn a_misrouted_request_is_forwarded_and_answered() {
    use hotshard_net::connection::Connection;
    use hotshard_net::{Request, Status, Target};
    let dir = test_dir();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let map = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    // A key shard 1 owns, sent to shard 0 on purpose.
    let key = key_owned_by_shard(&map, 1);
    let target = Target {
        partition: map.partition(key.as_bytes()),
        epoch: map.epoch,
    };
    let sock = StdTcp::connect(node.addr(0)).unwrap();
    let conn = Connection::new(futures_lite::io::AssertAsync::new(sock));
    let put = Request::Put {
        key: key.clone().into_bytes(),
        if_version: None,
        target,
        expires_ms: 0,
    };
    let (r, _) = futures_lite::future::block_on(conn.call(&put, b"forwarded")).unwrap();
    assert_eq!(r.status(), Status::Ok);
    let get = Request::Get {
        key: key.into_bytes(),
        range: None,
        target,
    };
    let (r, body) = futures_lite::future::block_on(conn.call(&get, &[])).unwrap();
    assert_eq!((r.status(), body.as_slice()), (Status::Ok, &b"forwarded"[..]));
    let stats = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .stats(&node.addr(0))
        .unwrap();
    assert!(
        stats.contains("hotshard_forwarded_total{shard=\"0\"} 2"),
        "{stats}"
    );
}

/// Issue 16: a request forwarded from another shard ran outside the owner's admission
/// budget, so one shard's clients could flood another. Shard 1's only slot is held by a
/// put whose payload has not arrived; a put for shard 1 sent through shard 0 is now
/// answered Busy, and served again once the slot is free.
#[test]
fn a_forwarded_request_is_admitted_by_the_owning_shard() {
    use hotshard_net::codec::encode_request;
    use hotshard_net::connection::Connection;
    use hotshard_net::{Request, Status, Target};
    use std::io::Write;
    let dir = test_dir();
    let port = ports();
    let cfg = write_config_with(
        dir.path(),
        port,
        "[net]\nmax_pending_requests = 1\nframe_timeout_ms = 60000\n",
    );
    let node = start(&cfg, port);
    let map = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    let key = key_owned_by_shard(&map, 1);
    let target = Target {
        partition: map.partition(key.as_bytes()),
        epoch: map.epoch,
    };
    let put = Request::Put {
        key: key.clone().into_bytes(),
        if_version: None,
        target,
        expires_ms: 0,
    };
    // Shard 1's one slot: a put whose 1000-byte payload has only begun to arrive.
    let mut holder = StdTcp::connect(node.addr(1)).unwrap();
    holder.write_all(&encode_request(1, &put, 1000).unwrap()).unwrap();
    holder.write_all(&[0u8; 10]).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let sock = StdTcp::connect(node.addr(0)).unwrap();
    let conn = Connection::new(futures_lite::io::AssertAsync::new(sock));
    let (r, _) = futures_lite::future::block_on(conn.call(&put, b"forwarded")).unwrap();
    assert_eq!(
        r.status(),
        Status::Busy,
        "shard 1 took a forwarded request beyond its budget"
    );
    // The slot comes free when the held put ends; then the forwarded put is served.
    holder.write_all(&[0u8; 990]).unwrap();
    let mut ok = false;
    for _ in 0..50 {
        let (r, _) = futures_lite::future::block_on(conn.call(&put, b"forwarded")).unwrap();
        if r.status() == Status::Ok {
            ok = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(ok, "the forwarded put was never served once shard 1 had room");
}

#[test]
fn a_bad_config_is_refused_with_the_key_named() {
    let dir = test_dir();
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "[store]\nsegment_mib = 16\ndurabilty = \"fua\"\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("durabilty"), "{err}");
    std::fs::write(&cfg, "[queue]\nbackend = \"spdk-please\"\n").unwrap();
    let out = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue.backend"));
}

/// A node stopped with SIGTERM stops listening before it exits: a connect right after it
/// has gone is refused (and retried by a client), never accepted and then reset (the
/// executor's ring kept the port listening until the kernel tore it down: 4 of 10 connects
/// succeeded before the fix).
#[test]
fn after_a_graceful_stop_the_port_refuses_instead_of_resetting() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    for _ in 0..3 {
        let mut node = start(&cfg, port);
        let addr = node.addr(0);
        // The admin endpoint (port + 3 in the test config) is stopped the same way.
        let admin = format!("127.0.0.1:{}", port + 3);
        assert!(
            std::net::TcpStream::connect(&admin).is_ok(),
            "admin endpoint not up"
        );
        node.stop();
        for attempt in 0..20 {
            for (what, a) in [("data", &addr), ("admin", &admin)] {
                let connected = std::net::TcpStream::connect(a);
                assert!(
                    connected.is_err(),
                    "{what} connect {attempt} after the node exited was accepted"
                );
            }
        }
    }
}

/// SIGTERM while a client keeps pipelining puts to shard 0 (half of them forwarded to
/// shard 1): the node stops reading new requests, answers every request it has read, and
/// ends the connection with a FIN after its last reply (never a reset, which would throw
/// away replies still in flight); every put it acknowledged is there after a restart.
#[test]
fn a_graceful_stop_answers_what_it_read_and_closes_cleanly() {
    use hotshard_net::codec::{access_response, encode_request, parse_frame};
    use hotshard_net::{Request, Status, Target};
    use std::io::{Read, Write};

    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    let map = BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .shard_map()
        .clone();
    // An endless sequence of keys, all sent to shard 0: about half are shard 1's, which
    // shard 0 forwards to it (the stop must not strand those either).
    let keys_of = |map: hotshard_net::shard_map::ShardMap| {
        (0..).map(|i| format!("stop-{i}").into_bytes()).map(move |k| {
            let p = map.partition(&k);
            (k, p)
        })
    };
    let value_of = |i: usize| format!("value-{i}-").repeat(100).into_bytes();
    let mut sock = StdTcp::connect(node.addr(0)).unwrap();
    let signalled_at = std::sync::Arc::new(std::sync::OnceLock::<std::time::Instant>::new());
    let writer = {
        let (mut sock, keys) = (sock.try_clone().unwrap(), keys_of(map.clone()));
        let signalled_at = signalled_at.clone();
        std::thread::spawn(move || {
            let mut sent = 0;
            for (i, (key, partition)) in keys.enumerate() {
                // Keep sending for a moment after the signal (the node must not take these),
                // then stop, leaving the connection open.
                if signalled_at
                    .get()
                    .is_some_and(|t| t.elapsed() > Duration::from_millis(100))
                {
                    return sent;
                }
                let value = value_of(i);
                let req = Request::Put {
                    key,
                    if_version: None,
                    target: Target { partition, epoch: 1 },
                    expires_ms: 0,
                };
                let mut frame = encode_request(i as u64, &req, value.len()).unwrap();
                frame.extend_from_slice(&value);
                if sock.write_all(&frame).is_err() {
                    return sent; // the node has closed: expected once it stops
                }
                sent += 1;
            }
            sent
        })
    };
    sock.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 65536]);
    let mut acked = Vec::new();
    let mut signalled = None;
    let end = loop {
        while let Some(f) = parse_frame(&buf).unwrap() {
            let r = access_response(&f.header).unwrap();
            let id = f.preamble.request_id;
            assert_eq!(
                r.status(),
                Status::Ok,
                "request {id} (a node that stopped reading would not answer it)"
            );
            acked.push(id as usize);
            buf.drain(..f.consumed);
        }
        if signalled.is_none() && acked.len() >= 500 {
            // SAFETY: signalling our own child process.
            assert_eq!(
                unsafe { libc::kill(node.child.as_ref().unwrap().id() as i32, libc::SIGTERM) },
                0
            );
            signalled = Some(std::time::Instant::now());
            let _ = signalled_at.set(std::time::Instant::now());
            // Read nothing for a while: the node's last replies then still sit in its send
            // buffer when it is done, and closing it with a reset would throw them away.
            std::thread::sleep(Duration::from_millis(300));
        }
        match sock.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => break Err(e),
        }
    };
    let _ = sock.shutdown(std::net::Shutdown::Both);
    let sent = writer.join().unwrap();
    let since_signal = signalled
        .unwrap_or_else(|| panic!("only {} answers before the connection ended", acked.len()))
        .elapsed();
    assert!(
        end.is_ok(),
        "after {} answers the connection ended with {end:?}, not a clean close",
        acked.len()
    );
    assert!(buf.is_empty(), "{} bytes of a reply cut off", buf.len());
    // The node stops reading at once (it would otherwise take requests until its drain
    // deadline, 10 s, or until the store is full).
    assert!(
        since_signal < Duration::from_secs(5),
        "the connection stayed open {since_signal:?} after SIGTERM"
    );
    assert!(
        node.child.take().unwrap().wait().unwrap().success(),
        "the node did not stop cleanly"
    );
    println!(
        "{} of {sent} puts answered before the stop closed the connection",
        acked.len()
    );

    let _node = start(&cfg, port);
    let mut c = BlockingClient::connect(&_node.addr(0), Duration::from_secs(5)).unwrap();
    // Every put the node applied was answered: a put that is stored but was never answered
    // means its reply was lost. The node reads a connection's requests in order and
    // applies every one it reads (here or, forwarded, on shard 1), so a lost reply shows
    // at the first unanswered id, at most one past the highest answered one.
    let last = *acked.iter().max().unwrap();
    assert!(last < sent, "answered {last}, but only {sent} were sent whole");
    let acked: std::collections::HashSet<usize> = acked.into_iter().collect();
    for (i, (key, _)) in keys_of(map).take(last + 2).enumerate() {
        let got = c.get(&key, None).unwrap().map(|g| g.0);
        if acked.contains(&i) {
            assert_eq!(got, Some(value_of(i)), "acknowledged put {i} lost");
        } else {
            assert_eq!(got, None, "put {i} was applied but its answer never arrived");
        }
    }
}

/// A panic in a shard (a bug, injected here by the `planted-faults` build) ends the whole process with
/// status 101 instead of leaving it up with a dead shard: before session 5 the process
/// hung, its main thread waiting for the shard for ever, and only kill -9 ended it.
#[test]
fn a_panicking_shard_ends_the_process() {
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .env("HOTSHARD_FAULT_PANIC_SHARD0", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let status = wait_for_exit(
        &mut child,
        Duration::from_secs(20),
        "the node should exit once its shard panics",
    );
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(101), "{err}");
    assert!(err.contains("injected by HOTSHARD_FAULT_PANIC_SHARD0"), "{err}");
    // Nothing was lost: the data can be served again at once.
    let node = start(&cfg, port);
    BlockingClient::connect(&node.addr(0), Duration::from_secs(5))
        .unwrap()
        .put(b"after", b"restart")
        .unwrap();
}

/// A second SIGTERM ends a stop that is still draining: here a client holds a frame half
/// sent, which the drain would wait for up to the frame timeout (10 s). The process exits
/// at once with status 128 + 15, and the data starts again with every acknowledged put.
#[test]
fn a_second_signal_ends_a_slow_stop_at_once() {
    use std::io::Write;
    let dir = test_dir();
    let port = ports();
    let cfg = write_config(dir.path(), port);
    let mut node = start(&cfg, port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    c.put(b"before", b"the stop").unwrap();
    // 12 bytes of a 24-byte preamble: the frame has begun, so the node waits for the rest.
    let mut half = StdTcp::connect(node.addr(0)).unwrap();
    half.write_all(&hotshard_net::codec::encode_request(1, &hotshard_net::Request::Ping, 0).unwrap()[..12])
        .unwrap();
    std::thread::sleep(Duration::from_millis(200));
    let mut child = node.child.take().unwrap();
    // SAFETY: signalling our own child process.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        child.try_wait().unwrap().is_none(),
        "the first signal should wait for the half-sent frame"
    );
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = wait_for_exit(
        &mut child,
        Duration::from_secs(5),
        "a second signal should end the stop at once",
    );
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status:?}");
    drop(half);
    let node = start(&cfg, port);
    let mut c = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    assert_eq!(c.get(b"before", None).unwrap().unwrap().0, b"the stop");
}

/// The value of `name{shard="N"}` in a stats text, or 0 if it is not there.
/// Issue 17: a PUT's value goes from the socket to the device with no copy on the node
/// when the shard that reads it owns the key: it is received into a DMA buffer of that
/// shard's pool and the batch writes from it. A PUT forwarded to another shard is copied
/// once (into the owner's batch), and a value short enough to ride inline is copied.
#[test]
fn a_value_for_the_receiving_shard_reaches_the_device_without_a_copy() {
    use hotshard_net::connection::Connection;
    use hotshard_net::{Request, Status, Target};
    let dir = test_dir();
    let port = ports();
    let node = start(&write_config(dir.path(), port), port);
    let mut client = BlockingClient::connect(&node.addr(0), Duration::from_secs(5)).unwrap();
    let map = client.shard_map().clone();
    let sizes = [4096usize, 65_536, 1 << 20, 3 << 20];
    // Keys shard 0 owns, through the client (which routes to the owner).
    let mine: Vec<String> = (0..)
        .map(|i| format!("zc{i}"))
        .filter(|k| {
            map.owner(map.partition(k.as_bytes()))
                .is_some_and(|o| o.shard == 0)
        })
        .take(sizes.len())
        .collect();
    for (k, len) in mine.iter().zip(sizes) {
        client.put(k.as_bytes(), &vec![7u8; len]).unwrap();
    }
    let before = client.stats(&node.addr(0)).unwrap();
    let in_place = shard_counter(&before, "hotshard_store_value_bytes_in_place_total", 0);
    assert_eq!(in_place, sizes.iter().sum::<usize>() as u64, "{before}");
    assert_eq!(
        shard_counter(&before, "hotshard_store_value_bytes_copied_total", 0),
        0,
        "{before}"
    );
    let received = shard_counter(&before, "hotshard_put_payload_bytes_buffered_total", 0)
        + shard_counter(&before, "hotshard_put_payload_bytes_direct_total", 0);
    assert_eq!(received, in_place, "every payload byte counted once: {before}");
    // A key shard 1 owns, sent to shard 0: forwarded, and copied once into shard 1's batch.
    let theirs = key_owned_by_shard(&map, 1);
    let sock = StdTcp::connect(node.addr(0)).unwrap();
    let conn = Connection::new(futures_lite::io::AssertAsync::new(sock));
    let put = Request::Put {
        key: theirs.clone().into_bytes(),
        if_version: None,
        target: Target {
            partition: map.partition(theirs.as_bytes()),
            epoch: map.epoch,
        },
        expires_ms: 0,
    };
    let (r, _) = futures_lite::future::block_on(conn.call(&put, &[9u8; 65_536])).unwrap();
    assert_eq!(r.status(), Status::Ok);
    let after = client.stats(&node.addr(1)).unwrap();
    assert_eq!(
        shard_counter(&after, "hotshard_store_value_bytes_copied_total", 1),
        65_536,
        "{after}"
    );
    assert_eq!(
        shard_counter(&after, "hotshard_store_value_bytes_in_place_total", 1),
        0,
        "{after}"
    );
    for (k, len) in mine.iter().zip(sizes) {
        let (v, _) = client.get(k.as_bytes(), None).unwrap().expect("stored");
        assert_eq!(v.len(), len);
        assert!(v.iter().all(|b| *b == 7));
    }
}
