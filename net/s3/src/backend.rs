//! The gateway's way to the nodes: threads each running a tokio current-thread runtime with
//! a hotshard client (which is not `Send`: one per thread), taking jobs from the HTTP side.
//!
//! A job is a closure given the thread's client; its future runs on the thread's
//! `LocalSet`, and its answer comes back over a oneshot channel.

use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hotshard_net::client::{Client, ClientConfig};
use hotshard_net::runtime::Tokio;
use tokio::sync::{mpsc, oneshot};

pub type NodeClient = Client<Tokio>;

type Job = Box<dyn FnOnce(Rc<NodeClient>) -> Pin<Box<dyn Future<Output = ()>>> + Send>;

/// How long a client thread keeps trying to reach its first node (an embedded gateway
/// starts beside the shards it talks to).
const CONNECT_FOR: Duration = Duration::from_secs(60);

/// Where the gateway's requests go: the seeds of a node or cluster.
#[derive(Clone, Debug)]
pub struct BackendConfig {
    pub seeds: Vec<String>,
    pub client: ClientConfig,
    /// Client threads (each one client, one set of connections).
    pub threads: usize,
}

/// The client threads, taking jobs in turn.
pub struct Backend {
    senders: Vec<mpsc::UnboundedSender<Job>>,
    next: AtomicUsize,
}

#[derive(Debug, thiserror::Error)]
#[error("the gateway's client thread is gone")]
pub struct BackendGone;

impl Backend {
    /// Starts the client threads; each connects (retrying for up to a minute) on its own.
    pub fn start(cfg: BackendConfig) -> std::io::Result<Backend> {
        let mut senders = Vec::new();
        for t in 0..cfg.threads.max(1) {
            let (tx, rx) = mpsc::unbounded_channel::<Job>();
            let cfg = cfg.clone();
            std::thread::Builder::new()
                .name(format!("s3-client-{t}"))
                .spawn(move || client_thread(cfg, rx))?;
            senders.push(tx);
        }
        Ok(Backend {
            senders,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `f` with a client thread's client and returns its answer.
    pub async fn run<T, F, Fut>(&self, f: F) -> Result<T, BackendGone>
    where
        F: FnOnce(Rc<NodeClient>) -> Fut + Send + 'static,
        Fut: Future<Output = T> + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |client| {
            Box::pin(async move {
                let _ = tx.send(f(client).await);
            })
        });
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.senders.len();
        self.senders[i].send(job).map_err(|_| BackendGone)?;
        rx.await.map_err(|_| BackendGone)
    }
}

fn client_thread(cfg: BackendConfig, mut jobs: mpsc::UnboundedReceiver<Job>) {
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("s3 gateway: no runtime for a client thread: {e}");
            return;
        }
    };
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let seeds: Vec<&str> = cfg.seeds.iter().map(String::as_str).collect();
        let started = std::time::Instant::now();
        let client = loop {
            match NodeClient::connect(&seeds, cfg.client.clone()).await {
                Ok(c) => break Rc::new(c),
                Err(e) if started.elapsed() > CONNECT_FOR => {
                    tracing::error!("s3 gateway: no node answers at {:?}: {e}", cfg.seeds);
                    return;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        };
        while let Some(job) = jobs.recv().await {
            tokio::task::spawn_local(job(client.clone()));
        }
    });
}
