//! The admin endpoint on shard 0: `GET /metrics` (Prometheus text of every shard of the
//! node) and `GET /health`. A minimal HTTP/1.1 responder: one request per connection.
//! It stops listening when the node stops, like the data listeners.

use std::rc::Rc;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use hotshard_net::Request;
use hotshard_nvme::BlockQueue;

use crate::listener::Listener;
use crate::shard_handler::ShardHandler;

/// Largest request head we read; anything longer is not a metrics scrape.
const MAX_REQUEST_HEAD: usize = 4096;
/// How long a scrape may take to send its request or read the answer: an idle connection
/// would otherwise hold a descriptor (which the data connections share) for ever.
const ADMIN_IO_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// The whole request head must arrive within this, however it trickles in: a per-read
/// timeout alone let a client that sends a byte every few seconds hold a connection for
/// hours.
const ADMIN_HEAD_DEADLINE: std::time::Duration = std::time::Duration::from_secs(5);

/// The Prometheus text of all shards: this one's, and the others' fetched over the mesh.
pub async fn all_metrics<Q: BlockQueue + 'static>(handler: &ShardHandler<Q>, shards: usize) -> String {
    let mut out = String::new();
    for shard in 0..shards {
        if shard == handler.shard {
            out.push_str(&handler.render_metrics());
        } else if let Some((_, body)) = handler.peers.forward(shard, Request::Stats, None).await {
            out.push_str(&String::from_utf8_lossy(&body));
        }
    }
    out
}

/// Serves until the shutdown flag is set, then takes the listener out of LISTEN.
pub async fn serve_admin<Q: BlockQueue + 'static>(
    listener: Listener,
    handler: Rc<ShardHandler<Q>>,
    shards: usize,
    shutdown: Arc<AtomicBool>,
) {
    while let Some(mut stream) = listener.next(&shutdown, &handler.stats.accept_errors).await {
        let handler = handler.clone();
        glommio::spawn_local(async move {
            if stream.set_read_timeout(Some(ADMIN_IO_TIMEOUT)).is_err()
                || stream.set_write_timeout(Some(ADMIN_IO_TIMEOUT)).is_err()
            {
                return;
            }
            let read_head = async {
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return Ok(None),
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                Ok(Some(head))
            };
            let Ok(Some(head)) = glommio::timer::timeout(ADMIN_HEAD_DEADLINE, read_head).await else {
                return;
            };
            let line = String::from_utf8_lossy(&head);
            let path = line.split_whitespace().nth(1).unwrap_or("");
            let (status, body) = match path {
                "/metrics" => ("200 OK", all_metrics(&handler, shards).await),
                "/health" => ("200 OK", "ok\n".to_string()),
                _ => ("404 Not Found", "try /metrics or /health\n".to_string()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
    listener.stop();
}
