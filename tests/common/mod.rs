//! Helpers for whole-node tests: the binary, ports, configs, starting and killing nodes.
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use hotshard_net::blocking::BlockingClient;

/// The history checker of the cluster tests (`linearizability_checker.rs` shows it fails).
pub mod linearizability;
pub mod nemesis;

/// The `hotshard` binary cargo built with these tests (same profile, same features: the
/// planted faults compiled in, inert unless a test's environment names one).
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_hotshard"))
}

/// Four consecutive free ports (two shards, RESP, admin) per call, distinct within the
/// process. Tests of other processes running at the same time (a second `cargo test`) may
/// start from the same place: a block whose ports are taken now is skipped, so that two
/// clusters never share a listener (they stalled each other's moves when they did).
pub fn ports() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    loop {
        let base =
            17_400 + (std::process::id() % 500) as u16 * 20 + NEXT.fetch_add(4, Ordering::Relaxed) % 20_000;
        let free = (base..base + 4).all(|p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok());
        if free {
            return base;
        }
    }
}

pub struct Node {
    pub child: Option<Child>,
    pub port: u16,
}

impl Node {
    pub fn addr(&self, shard: u16) -> String {
        format!("127.0.0.1:{}", self.port + shard)
    }

    /// SIGTERM, and the process must exit successfully (a graceful stop).
    pub fn stop(&mut self) {
        let mut child = self.child.take().expect("running");
        // SAFETY: signalling our own child process.
        assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
        assert!(child.wait().unwrap().success(), "the node did not stop cleanly");
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill9();
    }
}

pub fn write_config(dir: &Path, port: u16) -> PathBuf {
    write_config_with(dir, port, "")
}

/// A two-shard config with `extra` TOML appended (sections not already present).
pub fn write_config_with(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let cfg = dir.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "[node]\ndata_dir = \"{}\"\ndata_bytes = 134217728\nbase_port = {port}\nadmin_port = {}\nresp_port = {}\ncores = [0, 1]\n\
             [queue]\npool_mib = 64\n[store]\nsegment_mib = 9\ncache_mib = 8\n{extra}",
            dir.join("data").display(),
            port + 3,
            port + 2
        ),
    )
    .unwrap();
    cfg
}

/// Starts the node and waits until both shards accept connections.
pub fn start(cfg: &Path, port: u16) -> Node {
    start_inner(cfg, port, None, None, &[])
}

/// Starts the node with `env` added to its environment.
pub fn start_with_env(cfg: &Path, port: u16, env: &[(&str, &str)]) -> Node {
    start_inner(cfg, port, None, None, env)
}

/// Starts the node with at most `limit` open files (soft and hard: it cannot raise it).
pub fn start_with_fd_limit(cfg: &Path, port: u16, limit: u64) -> Node {
    start_inner(cfg, port, None, Some(limit), &[])
}

/// Starts a node that requires `secret`, logging at debug level (so a test can check that
/// the log never holds the secret).
pub fn start_with_secret(cfg: &Path, port: u16, secret: &str) -> Node {
    start_inner(cfg, port, Some(secret), None, &[])
}

fn start_inner(
    cfg: &Path,
    port: u16,
    secret: Option<&str>,
    fd_limit: Option<u64>,
    env: &[(&str, &str)],
) -> Node {
    start_shards(cfg, port, secret, fd_limit, env, 2)
}

/// Starts a node of `shards` shards and waits until each accepts connections.
pub fn start_shards(
    cfg: &Path,
    port: u16,
    secret: Option<&str>,
    fd_limit: Option<u64>,
    env: &[(&str, &str)],
    shards: u16,
) -> Node {
    let log_path = cfg.with_extension("log");
    let log = std::fs::File::create(&log_path).unwrap();
    let mut cmd = Command::new(binary());
    cmd.args(["serve", "--config"])
        .arg(cfg)
        .env(
            "RUST_LOG",
            // HOTSHARD_TEST_NODE_LOG: the nodes' log filter, for chasing a failure.
            std::env::var("HOTSHARD_TEST_NODE_LOG")
                .unwrap_or_else(|_| if secret.is_some() { "debug" } else { "warn" }.into()),
        )
        .stdout(Stdio::null())
        .envs(env.iter().copied())
        .stderr(log);
    if let Some(limit) = fd_limit {
        use std::os::unix::process::CommandExt;
        // SAFETY: only setrlimit (async-signal-safe) runs between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let lim = libc::rlimit {
                    rlim_cur: limit,
                    rlim_max: limit,
                };
                if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    let child = cmd.spawn().unwrap();
    let mut node = Node {
        child: Some(child),
        port,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    for shard in 0..shards {
        let secret = secret.map(|s| s.as_bytes().to_vec());
        while BlockingClient::connect_with_secret(&node.addr(shard), Duration::from_secs(1), secret.clone())
            .is_err()
        {
            let exited = node
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
                .is_some();
            if exited || Instant::now() > deadline {
                panic!(
                    "node did not start listening: {}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    node
}

/// Waits up to `limit` for `child` to exit; if it has not, kills it and fails the test
/// with `what` (what it was expected to have done).
pub fn wait_for_exit(child: &mut Child, limit: Duration, what: &str) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("still running after {limit:?}: {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn cli(args: &[&str]) -> Output {
    Command::new(binary()).args(args).output().unwrap()
}

pub fn test_dir() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    std::fs::create_dir_all(base).unwrap();
    tempfile::tempdir_in(base).unwrap()
}

/// Every metric name the Grafana dashboard at `path` (relative to the repository) queries: each
/// `hotshard_…` name in each panel's or variable's expression.
pub fn dashboard_metric_names(path: &str) -> std::collections::BTreeSet<String> {
    fn walk(v: &serde_json::Value, exprs: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(s)) => exprs.push(s.clone()),
                        _ => walk(v, exprs),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, exprs)),
            _ => {}
        }
    }
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    let text = std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()));
    let json: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    walk(&json, &mut exprs);
    assert!(!exprs.is_empty(), "{path} has no expressions");
    metric_names_in(&exprs.join("\n"))
}

/// The `hotshard_…` identifiers in `text` (a PromQL expression or Prometheus text).
/// The value of the counter `name` of `shard` in a shard's stats text (0 when absent).
pub fn shard_counter(stats: &str, name: &str, shard: u32) -> u64 {
    let prefix = format!("{name}{{shard=\"{shard}\"}} ");
    stats
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.trim().parse().expect("an integer counter"))
}

pub fn metric_names_in(text: &str) -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("hotshard_") {
        let preceded_by_word = rest[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        if !preceded_by_word {
            names.insert(tail[..end].to_string());
        }
        rest = &tail[end..];
    }
    names
}

/// Fails naming every metric the dashboard at `path` queries that `metrics` (a node's
/// /metrics text) does not have.
pub fn assert_dashboard_matches(path: &str, metrics: &str) {
    let exported: std::collections::BTreeSet<String> = metrics
        .lines()
        .filter(|l| l.starts_with("hotshard_"))
        .filter_map(|l| l.split(['{', ' ']).next().map(str::to_string))
        .collect();
    let queried = dashboard_metric_names(path);
    assert!(queried.len() >= 10, "{path} queries only {queried:?}");
    let missing: Vec<&String> = queried.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "{path} queries metrics the node does not export: {missing:?}"
    );
}
