//! The S3 gateway inside a node (issue 34), driven by boto3 (`tests/s3/boto3_suite.py`:
//! buckets, objects across chunk boundaries, ranges, conditional reads and writes, two
//! clients racing to create one key, listings against a model, limits, signatures and
//! presigned URLs, multipart uploads, copies, batch deletes) and by the AWS CLI (a sync and
//! a 100 MiB multipart upload); objects acknowledged through it survive kill -9; a
//! node given no keys generates them into its data directory, readable by its owner only.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const SUITE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/s3/boto3_suite.py");

/// A free port for the gateway (bound and let go: another process could take it between).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `[s3]` section: keys given, 64 KiB chunks so that small objects span many.
fn s3_section(port: u16) -> String {
    format!("[s3]\nlisten = \"127.0.0.1:{port}\"\naccess_key = \"AKTEST\"\nsecret_key = \"SKTEST\"\nchunk_kib = 64\n")
}

/// Waits until the gateway answers HTTP.
fn wait_for_gateway(port: u16) {
    let until = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "the S3 gateway did not listen");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn suite(port: u16, mode: &[&str], stdin: &str) -> String {
    let mut child = Command::new("python3")
        .arg(SUITE)
        .arg(format!("http://127.0.0.1:{port}"))
        .args(["AKTEST", "SKTEST"])
        .args(mode)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (CI installs it, with boto3 from PyPI)");
    child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "boto3 suite {mode:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn boto3_drives_every_operation() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    let _node = start(&write_config_with(dir.path(), port, &s3_section(s3)), port);
    wait_for_gateway(s3);
    let said = suite(s3, &[], "");
    for step in [
        "buckets",
        "objects",
        "conditions",
        "listing",
        "limits_and_auth",
        "multipart",
        "copies_and_batch_deletes",
        "checksums",
    ] {
        assert!(said.contains(&format!("{step}: ok")), "{said}");
    }
}

#[test]
fn objects_acknowledged_through_the_gateway_survive_kill_9() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    let cfg = write_config_with(dir.path(), port, &s3_section(s3));
    let mut node = start(&cfg, port);
    wait_for_gateway(s3);
    let written = suite(s3, &["write-survivors", "60"], "");
    assert_eq!(written.lines().count(), 60);
    node.kill9();
    let _node = start(&cfg, port);
    wait_for_gateway(s3);
    let read = suite(s3, &["check-survivors"], &written);
    assert!(read.contains("60 objects read back whole"), "{read}");
}

/// Objects and uploads in flight at a kill -9: none is visible in part, every acknowledged
/// one holds what was acknowledged (or what a later attempt wrote), and the sweep removes
/// the chunks the kill left without an entry until the node holds exactly what its objects
/// and unfinished uploads need.
#[test]
fn a_kill_mid_put_leaves_nothing_partial_and_the_sweep_removes_the_orphans() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    let section = format!("{}sweep_every_secs = 1\norphan_after_secs = 3\n", s3_section(s3));
    let cfg = write_config_with(dir.path(), port, &section);
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("data_bytes = 134217728", "data_bytes = 1073741824"),
    )
    .unwrap();
    let mut node = start(&cfg, port);
    wait_for_gateway(s3);
    let writer = Command::new("python3")
        .arg(SUITE)
        .arg(format!("http://127.0.0.1:{s3}"))
        .args(["AKTEST", "SKTEST", "write-until-killed"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    node.kill9();
    let out = writer.wait_with_output().unwrap();
    let said = String::from_utf8(out.stdout).unwrap();
    assert!(
        said.lines().any(|l| l.starts_with("ack ")),
        "nothing was acknowledged:\n{said}"
    );
    let _node = start(&cfg, port);
    wait_for_gateway(s3);
    let resp = (port + 2).to_string();
    let check = || {
        let got = suite(s3, &["check-after-crash", &resp, "65536"], &said);
        let line = got
            .lines()
            .find(|l| l.starts_with("objects "))
            .unwrap()
            .to_string();
        let n: Vec<u64> = line.split(' ').filter_map(|w| w.parse().ok()).collect();
        (line, n[1], n[2])
    };
    let (first, need, held) = check();
    assert!(held >= need, "{first}");
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let (line, need, held) = check();
        if held == need {
            eprintln!("right after the restart: {first}; after the sweep: {line}");
            break;
        }
        assert!(
            Instant::now() < until,
            "the sweep left orphans: {line} (right after the restart: {first})"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn the_aws_cli_copies_syncs_and_lists() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    // Room for the 100 MiB file (the suite's config holds 128 MiB).
    let cfg = write_config_with(dir.path(), port, &s3_section(s3));
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("data_bytes = 134217728", "data_bytes = 805306368"),
    )
    .unwrap();
    let _node = start(&cfg, port);
    wait_for_gateway(s3);
    let files = dir.path().join("files");
    std::fs::create_dir_all(files.join("sub")).unwrap();
    // 100 MiB: the CLI uploads it in parts of 8 MiB (a multipart upload).
    const BIG: usize = 100 << 20;
    let big: Vec<u8> = (0..BIG as u32)
        .map(|i| (i.wrapping_mul(7) ^ (i >> 13)) as u8)
        .collect();
    std::fs::write(files.join("big.bin"), &big).unwrap();
    std::fs::write(files.join("sub/a.txt"), b"a").unwrap();
    std::fs::write(files.join("sub/b.txt"), b"bb").unwrap();
    let endpoint = format!("http://127.0.0.1:{s3}");
    let aws = |args: &[&str]| {
        let out = Command::new("aws")
            .args(["--endpoint-url", &endpoint])
            .args(args)
            .env("AWS_ACCESS_KEY_ID", "AKTEST")
            .env("AWS_SECRET_ACCESS_KEY", "SKTEST")
            .env("AWS_DEFAULT_REGION", "us-east-1")
            .env("AWS_CONFIG_FILE", "/dev/null")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
            .output()
            .expect("the AWS CLI (CI installs awscli from PyPI)");
        assert!(
            out.status.success(),
            "aws {args:?}:\n{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    aws(&["s3", "mb", "s3://cli"]);
    let src = files.to_str().unwrap();
    aws(&["s3", "sync", src, "s3://cli/files"]);
    let listed = aws(&["s3", "ls", "--recursive", "s3://cli/"]);
    for (name, size) in [
        ("files/big.bin", BIG),
        ("files/sub/a.txt", 1),
        ("files/sub/b.txt", 2),
    ] {
        assert!(
            listed
                .lines()
                .any(|l| l.ends_with(name) && l.contains(&format!(" {size} "))),
            "{name} of {size} bytes not in:\n{listed}"
        );
    }
    let folders = aws(&["s3", "ls", "s3://cli/files/"]);
    assert!(folders.contains("PRE sub/"), "{folders}");
    let back = dir.path().join("back.bin");
    aws(&["s3", "cp", "s3://cli/files/big.bin", back.to_str().unwrap()]);
    assert!(std::fs::read(&back).unwrap() == big, "the copy back differs");
    let head = aws(&[
        "s3api",
        "head-object",
        "--bucket",
        "cli",
        "--key",
        "files/big.bin",
    ]);
    assert!(
        head.contains("-13\\\""),
        "a 100 MiB upload in 8 MiB parts has a 13-part ETag: {head}"
    );
    // A second sync has nothing to copy.
    assert_eq!(aws(&["s3", "sync", src, "s3://cli/files"]).trim(), "");
    aws(&["s3", "rm", "--recursive", "s3://cli/files"]);
    assert_eq!(aws(&["s3", "ls", "--recursive", "s3://cli/"]).trim(), "");
    aws(&["s3", "rb", "s3://cli"]);
}

/// `hotshard s3`: a gateway process of its own in front of a node that serves no S3,
/// with its keys from the environment; it refuses to start without them.
#[test]
fn a_gateway_process_of_its_own_serves_a_node() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    let _node = start(&write_config(dir.path(), port), port);
    let refused = Command::new(binary())
        .args(["s3", "--seeds", &format!("127.0.0.1:{port}")])
        .env_remove("HOTSHARD_S3_ACCESS_KEY")
        .env_remove("HOTSHARD_S3_SECRET_KEY")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("HOTSHARD_S3_ACCESS_KEY"));
    let gateway = Command::new(binary())
        .args([
            "s3",
            "--seeds",
            &format!("127.0.0.1:{port},127.0.0.1:{}", port + 1),
        ])
        .args(["--listen", &format!("127.0.0.1:{s3}"), "--chunk-kib", "64"])
        .env("HOTSHARD_S3_ACCESS_KEY", "AKTEST")
        .env("HOTSHARD_S3_SECRET_KEY", "SKTEST")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Stopped (and reaped) whatever the test's end.
    let _gateway = Node {
        child: Some(gateway),
        port: s3,
    };
    wait_for_gateway(s3);
    let said = suite(s3, &["smoke"], "");
    assert!(said.contains("listing: ok"), "{said}");
}

#[test]
fn a_node_given_no_keys_generates_them_for_its_owner_only() {
    let dir = test_dir();
    let (port, s3) = (ports(), free_port());
    let cfg = write_config_with(dir.path(), port, &format!("[s3]\nlisten = \"127.0.0.1:{s3}\"\n"));
    // Started here, not by `start`, to keep its standard output (the start-up line).
    let out = dir.path().join("stdout.txt");
    let child = Command::new(binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let node = Node {
        child: Some(child),
        port,
    };
    wait_for_gateway(s3);
    let file = dir.path().join("data").join("s3-credentials.json");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let keys: serde_json::Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    // The start-up line comes once every shard serves, after the gateway listens.
    let until = Instant::now() + Duration::from_secs(10);
    let log = loop {
        let log = std::fs::read_to_string(&out).unwrap();
        if log.contains("hotshard serving") || Instant::now() > until {
            break log;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let access = keys["access_key"].as_str().unwrap();
    assert!(
        log.contains(access) && log.contains("s3-credentials.json"),
        "{log}"
    );
    assert!(
        !log.contains(keys["secret_key"].as_str().unwrap()),
        "the log shows the secret"
    );
    drop(node);
}
