//! The harness as a user runs it: against a hotshard node process, against Redis and
//! memcached, against a server that lies (verify must catch it), and sweep/tune starting
//! their own node from a profile.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bench() -> &'static str {
    env!("CARGO_BIN_EXE_hotshard-bench")
}

/// The node binary next to the harness, as the workspace's test build makes it (the node's
/// own tests use it: same profile, same features). `cargo test --no-run --workspace` is a
/// no-op inside a workspace run, and builds it for a narrower one. (A plain `cargo build`
/// of the node resolves other features than a test build and compiled it all again, about
/// 100 s of every CI run.)
fn node_binary() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = Path::new(bench()).parent().unwrap().to_path_buf();
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["test", "--no-run", "-q", "--workspace"])
                .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
                .stdout(Stdio::null())
                .env("CARGO_TARGET_DIR", profile_dir.parent().unwrap());
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            assert!(cmd.status().unwrap().success(), "building the node failed");
            profile_dir.join("hotshard")
        })
        .clone()
}

fn port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    // Below the ephemeral range (32768 and up), where outgoing connections could hold them.
    20_000 + (std::process::id() % 250) as u16 * 48 + NEXT.fetch_add(5, Ordering::Relaxed)
}

fn test_dir(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("harness-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn wait_port(port: u16) {
    let until = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < until, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn profile(dir: &Path, port: u16) -> PathBuf {
    profile_with(dir, port, "")
}

fn profile_with(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let p = dir.join("profile.toml");
    std::fs::write(
        &p,
        format!(
            "[node]\ndata_dir = \"{}\"\ndata_bytes = 134217728\nbase_port = {port}\nadmin_port = {}\nresp_port = {}\ncores = [0, 1]\n\
             [queue]\npool_mib = 32\n[store]\nsegment_mib = 9\ncache_mib = 8\n{extra}",
            dir.join("data").display(),
            port + 3,
            port + 2
        ),
    )
    .unwrap();
    p
}

fn start_node(dir: &Path, port: u16) -> Proc {
    start_node_with(dir, port, "")
}

fn start_node_with(dir: &Path, port: u16, extra: &str) -> Proc {
    let cfg = profile_with(dir, port, extra);
    let child = Command::new(node_binary())
        .args(["serve", "--config"])
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc(child);
    wait_port(port);
    wait_port(port + 1);
    p
}

fn run(args: &[&str]) -> Output {
    run_with_env(args, None)
}

fn run_with_env(args: &[&str], secret: Option<&str>) -> Output {
    let mut c = Command::new(bench());
    match secret {
        Some(s) => c.env("HOTSHARD_SECRET", s),
        None => c.env_remove("HOTSHARD_SECRET"),
    };
    c.args(args)
        .env("RUST_BACKTRACE", "0")
        .current_dir(env!("CARGO_TARGET_TMPDIR"))
        .output()
        .unwrap()
}

fn json_rows(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "harness failed: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn check_verified(row: &serde_json::Value) {
    assert!(row["verified"].as_u64().unwrap() > 100, "{row}");
    assert_eq!(row["verify_failures"].as_u64().unwrap(), 0, "{row}");
    assert!(row["ops"].as_u64().unwrap() > 0, "{row}");
}

#[test]
fn verified_mixed_load_against_a_node_closed_and_open_loop() {
    let dir = test_dir("node");
    let port = port();
    let _node = start_node(&dir, port);
    let target = format!("hotshard://127.0.0.1:{port}");
    let out = run(&[
        "run",
        "--target",
        &target,
        "--mix",
        "get=60,put=30,del=10",
        "--keys",
        "2000",
        "--value-size",
        "64-6000",
        "--dist",
        "zipfian:0.9",
        "--connections",
        "4",
        "--pipeline",
        "8",
        "--duration",
        "1s",
        "--verify",
        "--json",
        "--cores",
        "1",
    ]);
    let rows = json_rows(&out);
    let row = &rows[0];
    check_verified(row);
    for op in ["get", "put", "del"] {
        assert!(row["by_op"][op].as_u64().unwrap_or(0) > 0, "no {op}: {row}");
    }
    // Open loop at a fixed rate: the achieved rate follows the offered one.
    let out = run(&[
        "run",
        "--target",
        &target,
        "--mix",
        "get=80,put=20",
        "--keys",
        "2000",
        "--rate",
        "3000",
        "--duration",
        "2s",
        "--warmup",
        "200ms",
        "--verify",
        "--json",
        "--cores",
        "1,0",
        "--connections",
        "4",
    ]);
    let rows = json_rows(&out);
    check_verified(&rows[0]);
    let rate = rows[0]["iops"].as_f64().unwrap();
    assert!(
        (2_400.0..3_600.0).contains(&rate),
        "offered 3000/s, achieved {rate}"
    );
}

#[test]
fn the_hotshard_target_proves_the_nodes_secret() {
    let dir = test_dir("secret");
    let port = port();
    let secret = "harness-secret-0123456789";
    let _node = start_node_with(&dir, port, &format!("[auth]\nsecret = \"{secret}\"\n"));
    let target = format!("hotshard://127.0.0.1:{port}");
    let args = [
        "run",
        "--target",
        &target,
        "--mix",
        "get=50,put=50",
        "--keys",
        "300",
        "--duration",
        "500ms",
        "--verify",
        "--json",
        "--cores",
        "1",
    ];
    let rows = json_rows(&run_with_env(&args, Some(secret)));
    check_verified(&rows[0]);
    let out = run_with_env(&args, None);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Unauthorized"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A RESP server that stores nothing and answers each command with `answer(command)`.
fn fake_redis(answer: impl Fn(&[u8]) -> Vec<u8> + Send + Sync + 'static) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let answer = Arc::new(answer);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let mut w = s.try_clone().unwrap();
                let mut r = BufReader::new(s);
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let n: usize = line.trim()[1..].parse().unwrap_or(0);
                    let mut words = Vec::new();
                    for _ in 0..n {
                        let mut len = String::new();
                        r.read_line(&mut len).unwrap();
                        let len: usize = len.trim()[1..].parse().unwrap();
                        let mut b = vec![0u8; len + 2];
                        r.read_exact(&mut b).unwrap();
                        words.push(b);
                    }
                    let mut command = words.concat();
                    command.truncate(64);
                    if w.write_all(&answer(&command)).is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// A RESP server that stores nothing and answers every GET with the same 100 bytes.
fn lying_redis() -> u16 {
    fake_redis(|command| {
        if command.starts_with(b"GET") {
            let mut v = b"$100\r\n".to_vec();
            v.extend_from_slice(&[7u8; 100]);
            v.extend_from_slice(b"\r\n");
            v
        } else {
            b"+OK\r\n".to_vec()
        }
    })
}

/// Issue 16: error replies were counted as completed operations, so a target that shed
/// load looked faster than one that served it. A target that answers every request with
/// an error has no throughput at all, and no ratio is printed against it unless asked.
#[test]
fn error_replies_are_not_operations_and_get_no_ratio() {
    let good = lying_redis();
    let shedding = fake_redis(|_| b"-ERR overloaded\r\n".to_vec());
    let args = |extra: &'static [&'static str]| {
        let mut a: Vec<String> = [
            "run",
            "--target",
            &format!("redis://127.0.0.1:{good}"),
            "--target",
            &format!("redis://127.0.0.1:{shedding}"),
            "--keys",
            "100",
            "--value-size",
            "100",
            "--mix",
            "get=50,put=50",
            "--duration",
            "300ms",
            "--cores",
            "1",
            "--connections",
            "1",
            "--pipeline",
            "4",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let out = run(&args(&["--json"]).iter().map(String::as_str).collect::<Vec<_>>());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rows = json_rows(&out);
    let shed = &rows[1];
    let errors: u64 = shed["errors"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(errors > 0, "{shed}");
    assert_eq!(
        shed["iops"].as_f64().unwrap(),
        0.0,
        "errors counted as operations: {shed}"
    );
    let served: u64 = shed["by_op"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(served, 0, "{shed}");
    assert_eq!(
        shed["mb_per_s"].as_f64().unwrap(),
        0.0,
        "refused puts counted as bytes moved: {shed}"
    );

    let out = run(&args(&[]).iter().map(String::as_str).collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no ratio"), "{text}");
    assert!(!text.lines().any(|l| l.starts_with("ratio ")), "{text}");
    let out = run(&args(&["--allow-errors"])
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.lines().any(|l| l.starts_with("ratio redis")), "{text}");
}

/// `--preload` aborted the whole run on the first Busy; Busy means try later. A server
/// that answers each key's first two SETs with -BUSY is preloaded in full.
#[test]
fn preload_retries_busy_answers() {
    let refused = Arc::new(std::sync::Mutex::new(
        std::collections::HashMap::<Vec<u8>, u32>::new(),
    ));
    let count = refused.clone();
    let busy_answers = Arc::new(AtomicUsize::new(0));
    let seen = busy_answers.clone();
    let port = fake_redis(move |command| {
        if command.starts_with(b"SET") {
            let mut m = count.lock().unwrap();
            let n = m.entry(command.to_vec()).or_default();
            *n += 1;
            if *n <= 2 {
                seen.fetch_add(1, Ordering::Relaxed);
                return b"-BUSY try again later\r\n".to_vec();
            }
            return b"+OK\r\n".to_vec();
        }
        b"$-1\r\n".to_vec()
    });
    let out = run(&[
        "run",
        "--target",
        &format!("redis://127.0.0.1:{port}"),
        "--keys",
        "50",
        "--value-size",
        "16",
        "--mix",
        "get",
        "--duration",
        "200ms",
        "--preload",
        "--cores",
        "1",
    ]);
    assert!(
        out.status.success(),
        "preload gave up on Busy: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        busy_answers.load(Ordering::Relaxed) >= 100,
        "every key was refused twice"
    );
}

#[test]
fn verify_catches_a_server_that_returns_wrong_bytes() {
    let port = lying_redis();
    let out = run(&[
        "run",
        "--target",
        &format!("redis://127.0.0.1:{port}"),
        "--keys",
        "100",
        "--value-size",
        "100",
        "--duration",
        "300ms",
        "--verify",
        "--cores",
        "1",
        "--connections",
        "1",
        "--pipeline",
        "4",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "a lying server passed verify: {text}");
    assert!(text.contains("wrong"), "{text}");
}

/// A RESP server that answers GETs (NotFound) only in bursts: it holds requests until
/// `burst` are outstanding (or nothing more came for 20 ms), then answers them all in one
/// write. Returns its port and the most requests it ever saw outstanding at once.
fn bursting_redis(burst: usize) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let most = Arc::new(AtomicUsize::new(0));
    let seen = most.clone();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            let most = seen.clone();
            std::thread::spawn(move || {
                s.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
                let (mut outstanding, mut tail, mut buf) = (0usize, Vec::new(), vec![0u8; 64 << 10]);
                loop {
                    match s.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => {
                            tail.extend_from_slice(&buf[..n]);
                            let pat = b"\r\nGET\r\n";
                            let mut at = 0;
                            while let Some(p) = tail[at..].windows(pat.len()).position(|w| w == pat) {
                                outstanding += 1;
                                at += p + pat.len();
                            }
                            let keep_from = at.max(tail.len().saturating_sub(pat.len() - 1));
                            tail.drain(..keep_from);
                            most.fetch_max(outstanding, Ordering::Relaxed);
                            if outstanding < burst {
                                continue;
                            }
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                            ) => {}
                        Err(_) => return,
                    }
                    if outstanding > 0 && s.write_all(&b"$-1\r\n".repeat(outstanding)).is_err() {
                        return;
                    }
                    outstanding = 0;
                }
            });
        }
    });
    (port, most)
}

#[test]
fn stream_mode_keeps_at_most_the_pipeline_in_flight_when_replies_come_in_bursts() {
    // Stream mode takes every reply that has begun to arrive before it sends their
    // replacements in one write; it must still never have more than --pipeline out.
    let (port, most) = bursting_redis(8);
    let out = run(&[
        "run",
        "--target",
        &format!("redis://127.0.0.1:{port}"),
        "--mix",
        "get",
        "--keys",
        "100",
        "--duration",
        "500ms",
        "--cores",
        "1",
        "--connections",
        "1",
        "--pipeline",
        "8",
        "--stream",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(most.load(Ordering::Relaxed), 8, "{text}");
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

#[test]
fn same_generator_drives_redis_and_memcached() {
    // .ci/run installs both; say so rather than pass silently without them.
    assert!(
        have("redis-server") && have("memcached"),
        "redis-server and memcached are needed (apt-get install redis-server memcached)"
    );
    let (rp, mp) = (port(), port());
    let _redis = Proc(
        Command::new("redis-server")
            .args(["--port", &rp.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let _mc = Proc(
        Command::new("memcached")
            .args([
                "-u",
                "root",
                "-p",
                &mp.to_string(),
                "-U",
                "0",
                "-l",
                "127.0.0.1",
                "-t",
                "1",
            ])
            .spawn()
            .unwrap(),
    );
    wait_port(rp);
    wait_port(mp);
    let out = run(&[
        "run",
        "--target",
        &format!("redis://127.0.0.1:{rp}"),
        "--target",
        &format!("memcached://127.0.0.1:{mp}"),
        "--mix",
        "get=70,put=20,del=10",
        "--keys",
        "1000",
        "--duration",
        "1s",
        "--verify",
        "--json",
        "--cores",
        "1",
    ]);
    let rows = json_rows(&out);
    check_verified(&rows[0]);
    check_verified(&rows[1]);
    // compare interleaves and prints the ratio of each target to the first.
    let out = run(&[
        "compare",
        "--target",
        &format!("redis://127.0.0.1:{rp}"),
        "--target",
        &format!("memcached://127.0.0.1:{mp}"),
        "--rounds",
        "2",
        "--duration",
        "300ms",
        "--preload",
        "--keys",
        "500",
        "--cores",
        "1",
    ]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("median ratio memcached://"), "{text}");
    assert_eq!(text.lines().filter(|l| l.starts_with("2 ")).count(), 2, "{text}");
}

#[test]
fn sweep_plots_and_tune_writes_a_profile() {
    let dir = test_dir("tune");
    let port = port();
    let prof = profile(&dir, port);
    let svg = dir.join("sweep.svg");
    let out = run(&[
        "sweep",
        "--profile",
        prof.to_str().unwrap(),
        "--knob",
        "shards=1,2",
        "--knob",
        "pipeline=1,8",
        "--mix",
        "get=50,put=50",
        "--keys",
        "500",
        "--duration",
        "500ms",
        "--cores",
        "1",
        "--connections",
        "2",
        "--plot",
        svg.to_str().unwrap(),
        "--json",
        "--hotshard",
        node_binary().to_str().unwrap(),
    ]);
    let points = json_rows(&out);
    assert_eq!(points.as_array().unwrap().len(), 4, "{points}");
    assert!(std::fs::read_to_string(&svg).unwrap().contains("<polyline"));
    let tuned = dir.join("tuned.toml");
    let out = run(&[
        "tune",
        "--profile",
        prof.to_str().unwrap(),
        "--knob",
        "queue.poll_sleep_us=5,0",
        "--knob",
        "store.batch_kib=1024,256",
        "--p99-us",
        "1000000",
        "--mix",
        "put",
        "--keys",
        "500",
        "--duration",
        "500ms",
        "--cores",
        "1",
        "--connections",
        "2",
        "--out",
        tuned.to_str().unwrap(),
        "--hotshard",
        node_binary().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&tuned).unwrap();
    assert!(text.contains("# Chosen:"), "{text}");
    assert_eq!(text.matches("#   ").count(), 3, "three distinct trials: {text}");
    let parsed: toml::Table = text.parse().unwrap();
    assert!(parsed["queue"]["poll_sleep_us"].as_integer().is_some());
}
