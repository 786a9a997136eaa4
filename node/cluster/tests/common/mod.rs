//! A throwaway one-member etcd for tests: its own data directory under the target dir and
//! loopback ports nobody else holds; stopped (and its data removed) when dropped.

#![allow(dead_code)]

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use etcd_client::Client;

pub struct Etcd {
    child: Child,
    pub endpoint: String,
    peer_url: String,
    client_port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// Starts etcd on `endpoint` with its data in `dir` (a restart finds its data there).
fn spawn(dir: &std::path::Path, endpoint: &str, peer_url: &str) -> Child {
    Command::new("etcd")
        .args(["--name", "t", "--data-dir"])
        .arg(dir.join("etcd"))
        .args([
            "--listen-client-urls",
            endpoint,
            "--advertise-client-urls",
            endpoint,
        ])
        .args([
            "--listen-peer-urls",
            peer_url,
            "--initial-advertise-peer-urls",
            peer_url,
        ])
        .args(["--initial-cluster", &format!("t={peer_url}")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("etcd is not installed: apt-get install etcd-server (.ci/run does)")
}

impl Etcd {
    /// Starts etcd (Debian's `etcd-server`; `.ci/run` installs it) and waits until it
    /// answers.
    pub fn start() -> Etcd {
        let base = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
        std::fs::create_dir_all(base).unwrap();
        // Ports are picked free and released before etcd binds them, so another process
        // (a node's outgoing connection, say) may take one first: etcd then exits, and is
        // started again on other ports.
        for _ in 0..5 {
            let dir = tempfile::tempdir_in(base).unwrap();
            let (client_port, peer) = (free_port(), free_port());
            let endpoint = format!("http://127.0.0.1:{client_port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let child = spawn(dir.path(), &endpoint, &peer_url);
            let mut etcd = Etcd {
                child,
                endpoint,
                peer_url,
                client_port,
                _dir: dir,
            };
            if etcd.listening_within(Duration::from_secs(20)) {
                return etcd;
            }
            let _ = etcd.child.kill();
            let _ = etcd.child.wait();
        }
        panic!("etcd did not start listening (five tries, each on new ports)");
    }

    /// Whether etcd listens within `limit` (false at once if it exited).
    fn listening_within(&mut self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        while std::net::TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            if Instant::now() > deadline || !matches!(self.child.try_wait(), Ok(None)) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        true
    }

    fn wait_listening(&mut self) {
        assert!(
            self.listening_within(Duration::from_secs(20)),
            "etcd did not start listening again on its ports"
        );
    }

    /// Kills etcd (kill -9), waits `down`, and starts it again on the same data and ports.
    pub fn restart(&mut self, down: Duration) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::thread::sleep(down);
        self.child = spawn(self._dir.path(), &self.endpoint, &self.peer_url);
        self.wait_listening();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client of `endpoint`, once etcd answers.
pub async fn connect(endpoint: &str) -> Client {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let answered = match Client::connect([endpoint], None).await {
            Ok(c) => c.clone().status().await.map(|_| c),
            Err(e) => Err(e),
        };
        match answered {
            Ok(c) => return c,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(100)).await,
            Err(e) => panic!("etcd at {endpoint} does not answer: {e}"),
        }
    }
}
