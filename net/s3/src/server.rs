//! The gateway's HTTP side: a listener, hyper (HTTP/1.1) on tokio, s3s with SigV4, and a
//! cap on connections and on the time a client may take to send a request's head.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::backend::{Backend, BackendConfig};
use crate::credentials::Credentials;
use crate::gateway::Gateway;

/// Connections served at once; past it, new ones wait in the listen backlog.
pub const MAX_CONNECTIONS: usize = 1024;
/// How long a client may take to send a request's head.
const HEADER_TIMEOUT: Duration = Duration::from_secs(30);
/// The default chunk size of new objects (at most the engine's value limit).
pub const DEFAULT_CHUNK_BYTES: u64 = 1 << 20;

/// What one gateway needs.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    pub listen: SocketAddr,
    pub backend: BackendConfig,
    pub credentials: Credentials,
    pub chunk_bytes: u64,
    /// tokio worker threads for HTTP.
    pub http_threads: usize,
    /// How often the sweep of chunks no entry names runs (zero: never), and how old an
    /// intent must be before the sweep settles it (longer than any PUT takes).
    pub sweep_every: Duration,
    pub orphan_after: Duration,
}

/// Binds the listener (so that a port in use is an error at once), then serves on its own
/// threads until the process ends. Returns the address bound.
pub fn spawn_gateway(cfg: GatewayConfig) -> std::io::Result<SocketAddr> {
    let std_listener = std::net::TcpListener::bind(cfg.listen)?;
    std_listener.set_nonblocking(true)?;
    let addr = std_listener.local_addr()?;
    let backend = Arc::new(Backend::start(cfg.backend.clone())?);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cfg.http_threads.max(1))
        .thread_name("s3-http")
        .enable_all()
        .build()?;
    std::thread::Builder::new()
        .name("s3-gateway".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match TcpListener::from_std(std_listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!("s3 gateway: {e}");
                        return;
                    }
                };
                if !cfg.sweep_every.is_zero() {
                    tokio::spawn(keep_sweeping(backend.clone(), cfg.sweep_every, cfg.orphan_after));
                }
                serve(listener, backend, &cfg).await;
            })
        })?;
    Ok(addr)
}

/// s3s with one change: a refusal of a request that carries a body closes the connection.
/// A refusal may come before the body was read (s3s's own checks, a missing bucket), and
/// a client that sent `Expect: 100-continue` and got no `100` may not send it at all: the
/// connection's next bytes are then either that body or the next request, and hyper took
/// a late body for a request line (a bare 400 for the next request, seen by boto3).
#[derive(Clone)]
struct CloseOnRefusal(s3s::service::S3Service);

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for CloseOnRefusal {
    type Response = s3s::HttpResponse;
    type Error = s3s::HttpError;
    type Future = futures::future::BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn call(&self, req: http::Request<hyper::body::Incoming>) -> Self::Future {
        let with_body = req
            .headers()
            .get(http::header::CONTENT_LENGTH)
            .is_some_and(|v| v.as_bytes() != b"0")
            || req.headers().contains_key(http::header::TRANSFER_ENCODING);
        let answer = hyper::service::Service::call(&self.0, req);
        Box::pin(async move {
            let mut res = answer.await?;
            if with_body && !res.status().is_success() {
                res.headers_mut()
                    .insert(http::header::CONNECTION, http::HeaderValue::from_static("close"));
            }
            Ok(res)
        })
    }
}

/// Runs the sweep (`sweep.rs`) every `every`, for the gateway's life.
async fn keep_sweeping(backend: Arc<Backend>, every: Duration, orphan_after: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let now = crate::gateway::now_ms();
        match backend
            .run(move |c| crate::sweep::sweep_once(c, now, orphan_after))
            .await
        {
            Ok(Ok(n)) if n.intents > 0 => tracing::info!(
                intents = n.intents,
                chunks_removed = n.chunks_removed,
                "s3 gateway: sweep settled old intents"
            ),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!("s3 gateway: sweep: {e}"),
            Err(_) => return,
        }
    }
}

async fn serve(listener: TcpListener, backend: Arc<Backend>, cfg: &GatewayConfig) {
    let mut builder = S3ServiceBuilder::new(Gateway::new(backend, cfg.chunk_bytes));
    builder.set_auth(SimpleAuth::from_single(
        cfg.credentials.access_key.clone(),
        cfg.credentials.secret_key.clone(),
    ));
    let service = builder.build();
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!("s3 gateway: accept: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = CloseOnRefusal(service.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service);
            let _ = conn.await;
            drop(permit);
        });
    }
}
