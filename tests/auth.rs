//! The shared secret: with `[auth] secret` set, a connection must prove it before any
//! request; a missing or wrong proof is refused, closed and counted; the secret appears in
//! no log and no metric.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::*;
use hotshard_net::blocking::BlockingClient;
use hotshard_net::codec::{access_response, encode_request, parse_frame};
use hotshard_net::{Request, Status};

const SECRET: &str = "test-secret-0123456789";

fn http(port: u16, path: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body
}

#[test]
fn only_clients_that_prove_the_secret_get_in() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let port = ports();
    let cfg = write_config_with(dir.path(), port, &format!("[auth]\nsecret = \"{SECRET}\"\n"));
    let node = start_with_secret(&cfg, port, SECRET);
    let t = Duration::from_secs(5);

    // No proof: the first request is refused with Unauthorized and the connection closed.
    let mut s = TcpStream::connect(node.addr(0)).unwrap();
    s.write_all(&encode_request(1, &Request::Ping, 0).unwrap())
        .unwrap();
    s.set_read_timeout(Some(t)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let f = parse_frame(&got).unwrap().expect("an answer before the close");
    assert_eq!(access_response(&f.header).unwrap().status(), Status::Unauthorized);

    // A proof without a challenge, and a wrong secret: refused.
    let mut s = TcpStream::connect(node.addr(1)).unwrap();
    s.write_all(&encode_request(1, &Request::AuthProof { proof: vec![0; 32] }, 0).unwrap())
        .unwrap();
    s.set_read_timeout(Some(t)).unwrap();
    let mut got = Vec::new();
    s.read_to_end(&mut got).unwrap();
    let f = parse_frame(&got).unwrap().unwrap();
    assert_eq!(access_response(&f.header).unwrap().status(), Status::Unauthorized);
    let e = BlockingClient::connect_with_secret(&node.addr(0), t, Some(b"wrong-secret-0123456".to_vec()))
        .err()
        .expect("a wrong secret gets in");
    assert!(e.to_string().contains("Unauthorized"), "{e}");
    assert!(BlockingClient::connect(&node.addr(0), t).is_err());

    // The right secret: everything works, on both shards (forwarding included).
    let mut c =
        BlockingClient::connect_with_secret(&node.addr(0), t, Some(SECRET.as_bytes().to_vec())).unwrap();
    for i in 0..20 {
        c.put(format!("k{i}").as_bytes(), b"v").unwrap();
        assert_eq!(c.get(format!("k{i}").as_bytes(), None).unwrap().unwrap().0, b"v");
    }

    // The CLI proves the secret from HOTSHARD_SECRET, and says what to do without it.
    let out = Command::new(binary())
        .args(["get", "k1", "--addr", &node.addr(1)])
        .env("HOTSHARD_SECRET", SECRET)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "v");
    let out = Command::new(binary())
        .args(["get", "k1", "--addr", &node.addr(1)])
        .env_remove("HOTSHARD_SECRET")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("HOTSHARD_SECRET"), "{err}");

    let metrics = http(port + 3, "/metrics");
    let failures: u64 = metrics
        .lines()
        .filter(|l| l.starts_with("hotshard_auth_failures_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(failures >= 4, "refusals counted: {failures}\n{metrics}");
    assert!(!metrics.contains(SECRET));
    let log = std::fs::read_to_string(cfg.with_extension("log")).unwrap_or_default();
    assert!(!log.contains(SECRET), "the node logged its secret");
}
