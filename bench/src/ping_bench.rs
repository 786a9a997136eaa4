//! `hotshard-bench ping`: a loopback Ping round trip through the protocol (server driver
//! and pipelined client), against a plain TCP ping-pong of the same request and response
//! sizes measured in the same invocation. Server on one core, client on another.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use glommio::{LocalExecutorBuilder, Placement};
use hotshard_net::codec::{encode_request, encode_response};
use hotshard_net::connection::Connection;
use hotshard_net::server::{serve_connection, Handler, Reply, ServerConfig};
use hotshard_net::{Request, Response, Status};

use crate::latency::{new_histogram, print_table, process_cpu_seconds, RunFigures};

struct PingOnly;

impl Handler for PingOnly {
    type In = Vec<u8>;
    type Out = Vec<u8>;
    fn payload_buffer(&self, _request: &Request, _len: usize) -> Result<Vec<u8>, Status> {
        Err(Status::BadRequest {
            reason: "ping server".into(),
        })
    }
    async fn handle(self: Rc<Self>, _request: Request, _payload: Option<Vec<u8>>) -> Reply<Vec<u8>> {
        Reply::status(Status::Ok)
    }
}

/// Runs `server` on `server_core` and `client` on `client_core`; returns the client's result.
fn pair<T: Send + 'static>(
    server_core: usize,
    client_core: usize,
    server: impl FnOnce(TcpListener) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()>>> + Send + 'static,
    client: impl FnOnce(String) -> std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<T>>>>
        + Send
        + 'static,
) -> anyhow::Result<T> {
    let (tx, rx) = std::sync::mpsc::channel();
    let srv = LocalExecutorBuilder::new(Placement::Fixed(server_core))
        .name("ping-server")
        .spawn(move || async move {
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
            tx.send(listener.local_addr().expect("address").to_string()).ok();
            server(listener).await;
        })
        .map_err(|e| anyhow::anyhow!("server executor: {e}"))?;
    let addr = rx.recv().context("server address")?;
    let result = LocalExecutorBuilder::new(Placement::Fixed(client_core))
        .name("ping-client")
        .spawn(move || async move { client(addr).await })
        .map_err(|e| anyhow::anyhow!("client executor: {e}"))?
        .join()
        .map_err(|e| anyhow::anyhow!("client: {e:?}"))?;
    srv.join().map_err(|e| anyhow::anyhow!("server: {e:?}"))?;
    result
}

fn figures(label: &str, h: &hdrhistogram::Histogram<u64>, secs: f64, cpu: f64) -> RunFigures {
    RunFigures::from_histogram(label, h, secs, 0, cpu)
}

pub fn ping_command(duration: Duration, server_core: usize, client_core: usize) -> anyhow::Result<()> {
    let req_len = encode_request(1, &Request::Ping, 0)?.len();
    let resp_len = encode_response(1, &Response::new(Status::Ok), 0)?.len();

    // Anchor: the same bytes each way over a plain TCP ping-pong.
    let cpu = process_cpu_seconds();
    let (h, secs) = pair(
        server_core,
        client_core,
        move |listener| {
            Box::pin(async move {
                if let Ok(mut s) = listener.accept().await {
                    let _ = s.set_nodelay(true);
                    let mut req = vec![0u8; req_len];
                    let resp = vec![1u8; resp_len];
                    while s.read_exact(&mut req).await.is_ok() {
                        if s.write_all(&resp).await.is_err() {
                            break;
                        }
                    }
                }
            })
        },
        move |addr| {
            Box::pin(async move {
                let mut s = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                s.set_nodelay(true).map_err(|e| anyhow::anyhow!("{e}"))?;
                let (req, mut resp) = (vec![2u8; req_len], vec![0u8; resp_len]);
                let mut h = new_histogram();
                let start = Instant::now();
                while start.elapsed() < duration {
                    let t0 = Instant::now();
                    s.write_all(&req).await?;
                    s.read_exact(&mut resp).await?;
                    h.record(t0.elapsed().as_nanos().max(1) as u64).ok();
                }
                Ok((h, start.elapsed().as_secs_f64()))
            })
        },
    )?;
    let anchor = figures(
        &format!("tcp ping-pong {req_len}/{resp_len} B"),
        &h,
        secs,
        process_cpu_seconds() - cpu,
    );

    // Second anchor: blocking std sockets on pinned threads (no async runtime at all).
    let cpu = process_cpu_seconds();
    let (h, secs) = std_ping_pong(req_len, resp_len, duration, server_core, client_core)?;
    let std_anchor = figures(
        &format!("std blocking ping-pong {req_len}/{resp_len} B"),
        &h,
        secs,
        process_cpu_seconds() - cpu,
    );

    // Ours: Ping through the server driver and the pipelined client.
    let cpu = process_cpu_seconds();
    let (h, secs) = pair(
        server_core,
        client_core,
        |listener| {
            Box::pin(async move {
                if let Ok(s) = listener.accept().await {
                    let _ = s.set_nodelay(true);
                    serve_connection(s, Rc::new(PingOnly), ServerConfig::default()).await;
                }
            })
        },
        move |addr| {
            Box::pin(async move {
                let s = TcpStream::connect(addr.as_str())
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                s.set_nodelay(true).map_err(|e| anyhow::anyhow!("{e}"))?;
                let conn = Connection::new(s);
                let mut h = new_histogram();
                let start = Instant::now();
                while start.elapsed() < duration {
                    let t0 = Instant::now();
                    let (r, _) = conn.call(&Request::Ping, &[]).await?;
                    anyhow::ensure!(r.status() == Status::Ok, "ping answered {:?}", r.status());
                    h.record(t0.elapsed().as_nanos().max(1) as u64).ok();
                }
                Ok((h, start.elapsed().as_secs_f64()))
            })
        },
    )?;
    let ours = figures("hotshard ping", &h, secs, process_cpu_seconds() - cpu);
    print_table(&[anchor, ours.clone()], true);
    println!();
    print_table(&[std_anchor, ours], true);
    println!("(IOPS column = round trips per second; MB/s is not meaningful here)");
    Ok(())
}

fn pin(core: usize) {
    if let Some(id) = core_affinity::get_core_ids().and_then(|ids| ids.into_iter().find(|c| c.id == core)) {
        core_affinity::set_for_current(id);
    }
}

/// A ping-pong on blocking std sockets, server and client each on its own pinned thread.
fn std_ping_pong(
    req_len: usize,
    resp_len: usize,
    duration: Duration,
    server_core: usize,
    client_core: usize,
) -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let server = std::thread::spawn(move || {
        pin(server_core);
        if let Ok((mut s, _)) = listener.accept() {
            let _ = s.set_nodelay(true);
            let mut req = vec![0u8; req_len];
            let resp = vec![1u8; resp_len];
            while s.read_exact(&mut req).is_ok() {
                if s.write_all(&resp).is_err() {
                    break;
                }
            }
        }
    });
    let client = std::thread::spawn(move || -> anyhow::Result<(hdrhistogram::Histogram<u64>, f64)> {
        pin(client_core);
        let mut s = std::net::TcpStream::connect(addr)?;
        s.set_nodelay(true)?;
        let (req, mut resp) = (vec![2u8; req_len], vec![0u8; resp_len]);
        let mut h = new_histogram();
        let start = Instant::now();
        while start.elapsed() < duration {
            let t0 = Instant::now();
            s.write_all(&req)?;
            s.read_exact(&mut resp)?;
            h.record(t0.elapsed().as_nanos().max(1) as u64).ok();
        }
        Ok((h, start.elapsed().as_secs_f64()))
    });
    let result = client
        .join()
        .map_err(|_| anyhow::anyhow!("client thread panicked"))?;
    server
        .join()
        .map_err(|_| anyhow::anyhow!("server thread panicked"))?;
    result
}
