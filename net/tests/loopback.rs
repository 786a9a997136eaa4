//! The server driver and the pipelined client over loopback TCP on glommio, with an
//! in-memory handler: round trips, pipelining, out-of-order answers, malformed input.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::{TcpListener, TcpStream};
use hotshard_net::blocking::BlockingClient;
use hotshard_net::client::{Client, ClientConfig};
use hotshard_net::codec::{access_response, encode_request};
use hotshard_net::connection::Connection;
use hotshard_net::frame_io::read_head;
use hotshard_net::runtime::Glommio;
use hotshard_net::server::{serve_connection, Handler, Reply, ServerConfig};
use hotshard_net::shard_map::{ShardAddr, ShardMap};
use hotshard_net::{Request, Response, Status, Target};

#[derive(Default)]
struct MemHandler {
    map: RefCell<HashMap<Vec<u8>, Vec<u8>>>,
    /// The shard-map epoch this "node" is at, and its address.
    epoch: std::cell::Cell<u64>,
    addr: RefCell<String>,
    /// The cluster's peer key, if this "node" has one; and the node-to-node requests it
    /// was handed.
    peer_key: Option<Vec<u8>>,
    node_requests: std::cell::Cell<u64>,
}

impl MemHandler {
    fn shard_map(&self) -> ShardMap {
        let me = ShardAddr {
            node: 0,
            shard: 0,
            addr: self.addr.borrow().clone(),
        };
        ShardMap::spread(self.epoch.get(), 8, vec![me])
    }

    fn stale(&self, t: &Target) -> bool {
        t.epoch < self.epoch.get()
    }
}

impl Handler for MemHandler {
    type In = Vec<u8>;
    type Out = Vec<u8>;

    fn peer_key(&self) -> Option<&[u8]> {
        self.peer_key.as_deref()
    }

    fn payload_buffer(&self, _request: &Request, len: usize) -> Result<Vec<u8>, Status> {
        if len > 1 << 20 {
            return Err(Status::TooLarge);
        }
        Ok(vec![0; len])
    }

    async fn handle(self: Rc<Self>, request: Request, payload: Option<Vec<u8>>) -> Reply<Vec<u8>> {
        let wrong = Reply::status(Status::WrongShard {
            epoch: self.epoch.get(),
        });
        match request {
            Request::Ping => Reply::status(Status::Ok),
            Request::GetShardMap => Reply {
                response: Response::new(Status::Ok),
                payload: Some(self.shard_map().to_bytes().unwrap()),
            },
            Request::Put { target, .. } | Request::Get { target, .. } | Request::Delete { target, .. }
                if self.stale(&target) =>
            {
                wrong
            }
            Request::Put { key, .. } => {
                // Answer later than a Get that arrives after it: out-of-order replies.
                glommio::timer::sleep(Duration::from_millis(2)).await;
                self.map.borrow_mut().insert(key, payload.unwrap_or_default());
                Reply::status(Status::Ok)
            }
            Request::Get { key, .. } => match self.map.borrow().get(&key) {
                Some(v) => Reply {
                    response: Response::new(Status::Ok),
                    payload: Some(v.clone()),
                },
                None => Reply::status(Status::NotFound),
            },
            Request::Delete { key, .. } => match self.map.borrow_mut().remove(&key) {
                Some(_) => Reply::status(Status::Ok),
                None => Reply::status(Status::NotFound),
            },
            r if r.is_node_to_node() => {
                self.node_requests.set(self.node_requests.get() + 1);
                if let Request::Replicate { key, .. } = r {
                    self.map.borrow_mut().insert(key, payload.unwrap_or_default());
                }
                Reply::status(Status::Ok)
            }
            _ => Reply::status(Status::BadRequest {
                reason: "not here".into(),
            }),
        }
    }
}

fn target() -> Target {
    Target {
        partition: 0,
        epoch: 1,
    }
}

/// Starts a server on 127.0.0.1:0 on this executor; returns its address.
fn start_server(cfg: ServerConfig) -> std::net::SocketAddr {
    start_server_with(cfg, Rc::new(MemHandler::default()))
}

fn start_server_with(cfg: ServerConfig, handler: Rc<MemHandler>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    *handler.addr.borrow_mut() = addr.to_string();
    handler.epoch.set(handler.epoch.get().max(1));
    glommio::spawn_local(async move {
        while let Ok(stream) = listener.accept().await {
            let handler = handler.clone();
            glommio::spawn_local(async move {
                serve_connection(stream, handler, cfg).await;
            })
            .detach();
        }
    })
    .detach();
    addr
}

fn run<F: std::future::Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
    glommio::LocalExecutorBuilder::default()
        .spawn(move || async move { f().await })
        .unwrap()
        .join()
        .unwrap();
}

#[test]
fn round_trips_and_pipelining() {
    run(|| async {
        let addr = start_server(ServerConfig::default());
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        let (r, _) = conn.call(&Request::Ping, &[]).await.unwrap();
        assert_eq!(r.status(), Status::Ok);
        let put = Request::Put {
            key: b"k".to_vec(),
            if_version: None,
            target: target(),
            expires_ms: 0,
        };
        assert_eq!(conn.call(&put, b"value").await.unwrap().0.status(), Status::Ok);
        let get = Request::Get {
            key: b"k".to_vec(),
            range: None,
            target: target(),
        };
        let (r, body) = conn.call(&get, &[]).await.unwrap();
        assert_eq!((r.status(), body.as_slice()), (Status::Ok, &b"value"[..]));
        let missing = Request::Get {
            key: b"nope".to_vec(),
            range: None,
            target: target(),
        };
        assert_eq!(
            conn.call(&missing, &[]).await.unwrap().0.status(),
            Status::NotFound
        );

        // 200 requests in flight on one connection, puts answered after later gets.
        let mut calls = Vec::new();
        for i in 0..200u32 {
            let conn = conn.clone();
            calls.push(glommio::spawn_local(async move {
                let key = format!("key{i}").into_bytes();
                let put = Request::Put {
                    key: key.clone(),
                    if_version: None,
                    target: target(),
                    expires_ms: 0,
                };
                let value = i.to_le_bytes().repeat(100);
                conn.call(&put, &value).await.unwrap();
                let get = Request::Get {
                    key,
                    range: None,
                    target: target(),
                };
                let (r, body) = conn.call(&get, &[]).await.unwrap();
                assert_eq!(r.status(), Status::Ok);
                assert_eq!(body, value);
            }));
        }
        for c in calls {
            c.await;
        }
        assert_eq!(conn.in_flight(), 0);
    });
}

#[test]
fn a_small_in_flight_limit_still_answers_everything() {
    run(|| async {
        let addr = start_server(ServerConfig {
            max_in_flight: 2,
            ..ServerConfig::default()
        });
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        let mut calls = Vec::new();
        for i in 0..50u32 {
            let conn = conn.clone();
            calls.push(glommio::spawn_local(async move {
                let put = Request::Put {
                    key: format!("k{i}").into_bytes(),
                    if_version: None,
                    target: target(),
                    expires_ms: 0,
                };
                conn.call(&put, b"v").await.unwrap().0.status()
            }));
        }
        for c in calls {
            assert_eq!(c.await, Status::Ok);
        }
    });
}

/// Sends raw bytes; returns the status of the error frame, and whether the server closed.
async fn send_raw(addr: std::net::SocketAddr, bytes: &[u8]) -> (Option<Status>, bool) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    s.flush().await.unwrap();
    let status = match read_head(&mut s).await {
        Ok(Some((_, header))) => access_response(&header).ok().map(|r| r.status()),
        _ => None,
    };
    let mut rest = [0u8; 16];
    let closed = matches!(s.read(&mut rest).await, Ok(0) | Err(_));
    (status, closed)
}

#[test]
fn malformed_input_gets_an_error_frame_and_a_close() {
    run(|| async {
        let addr = start_server(ServerConfig::default());
        let valid = encode_request(9, &Request::Ping, 0).unwrap();
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        let mut bad_magic = valid.clone();
        bad_magic[0] = b'X';
        cases.push(("wrong magic", bad_magic));
        let mut bad_version = valid.clone();
        bad_version[4] = 77;
        cases.push(("unknown version", bad_version));
        let mut huge_header = valid.clone();
        huge_header[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("oversized header length", huge_header));
        let mut huge_payload = valid.clone();
        huge_payload[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
        cases.push(("oversized payload length", huge_payload));
        let mut garbage_header = valid.clone();
        for b in &mut garbage_header[24..] {
            *b = 0xEE;
        }
        cases.push(("invalid rkyv", garbage_header));
        let mut disagreeing = encode_request(9, &Request::Ping, 3).unwrap();
        disagreeing.extend_from_slice(b"abc");
        cases.push(("payload on a ping", disagreeing));
        for (what, bytes) in cases {
            let (status, closed) = send_raw(addr, &bytes).await;
            assert!(
                matches!(status, Some(Status::BadRequest { .. })),
                "{what}: {status:?}"
            );
            assert!(closed, "{what}: the server must close");
        }
        // The server keeps serving others.
        let conn = Connection::new(TcpStream::connect(addr).await.unwrap());
        assert_eq!(
            conn.call(&Request::Ping, &[]).await.unwrap().0.status(),
            Status::Ok
        );
    });
}

#[test]
fn the_client_routes_refreshes_its_map_on_wrong_shard_and_retries_once() {
    run(|| async {
        let handler = Rc::new(MemHandler::default());
        let addr = start_server_with(ServerConfig::default(), handler.clone());
        let client = Client::<Glommio>::connect(&[&addr.to_string()], ClientConfig::default())
            .await
            .unwrap();
        assert_eq!(client.shard_map().epoch, 1);
        client.put(b"a", b"1", None).await.unwrap();
        // The cluster moves on: the client's epoch is now stale.
        handler.epoch.set(5);
        assert_eq!(client.get(b"a").await.unwrap().unwrap().0, b"1");
        assert_eq!(client.shard_map().epoch, 5, "refreshed on WrongShard");
        assert_eq!(client.get(b"missing").await.unwrap(), None);
        client.delete(b"a", None).await.unwrap();
        assert_eq!(client.get(b"a").await.unwrap(), None);
    });
}

#[test]
fn a_request_without_an_answer_times_out() {
    run(|| async {
        // A listener that accepts and never answers.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let held = glommio::spawn_local(async move { listener.accept().await.ok().map(|s| (s, listener)) });
        let cfg = ClientConfig {
            timeout: Duration::from_millis(100),
            ..ClientConfig::default()
        };
        let started = std::time::Instant::now();
        let err = Client::<Glommio>::connect(&[&addr], cfg).await.err().unwrap();
        assert!(
            matches!(err, hotshard_net::client::ClientError::Timeout(_)),
            "{err}"
        );
        assert!(started.elapsed() < Duration::from_secs(5));
        drop(held);
    });
}

#[test]
fn the_blocking_client_works_against_the_glommio_server() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        run(move || async move {
            let addr = start_server(ServerConfig::default());
            tx.send(addr).unwrap();
            while stop_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
        })
    });
    let addr = rx.recv().unwrap().to_string();
    let mut c = BlockingClient::connect(&addr, Duration::from_secs(2)).unwrap();
    c.put(b"x", b"blocking").unwrap();
    assert_eq!(c.get(b"x", None).unwrap().unwrap().0, b"blocking");
    c.delete(b"x").unwrap();
    assert_eq!(c.get(b"x", None).unwrap(), None);
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}

/// Node-to-node requests only on a connection that proved the cluster's peer key: a plain
/// client's Replicate, Reassert and SyncManifest are refused and closed before the
/// handler sees them (and before a payload is read), as are those of a connection that
/// proved a wrong key or only the clients' secret; a peer's reach the handler.
#[test]
fn node_to_node_requests_need_the_peer_key() {
    const KEY: &[u8] = b"the cluster's peer key, 32 bytes";
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let seen_there = seen.clone();
    let server = std::thread::spawn(move || {
        run(move || async move {
            let handler = Rc::new(MemHandler {
                peer_key: Some(KEY.to_vec()),
                ..MemHandler::default()
            });
            let addr = start_server_with(ServerConfig::default(), handler.clone());
            tx.send(addr).unwrap();
            while stop_rx.try_recv().is_err() {
                glommio::timer::sleep(Duration::from_millis(5)).await;
            }
            seen_there.store(handler.node_requests.get(), std::sync::atomic::Ordering::SeqCst);
        })
    });
    let addr = rx.recv().unwrap().to_string();
    let to = hotshard_net::Recipient { node: 0, shard: 0 };
    let requests = [
        Request::Replicate {
            to,
            key: b"k".to_vec(),
            partition: 0,
            chain_version: 1,
            version: 7,
            tombstone: false,
            expires_ms: 0,
        },
        Request::Reassert {
            to,
            key: b"k".to_vec(),
            partition: 0,
            floor: u64::MAX,
        },
        Request::SyncManifest {
            to,
            partition: 0,
            chain_version: 1,
            after: Vec::new(),
        },
    ];
    for request in &requests {
        for key in [None, Some(b"a wrong key, also of 32 bytes...".to_vec())] {
            let mut c = BlockingClient::connect(&addr, Duration::from_secs(2)).unwrap();
            if let Some(k) = key.clone() {
                c = c.as_peer(k);
            }
            let body: &[u8] = if matches!(request, Request::Replicate { .. }) {
                b"overwritten"
            } else {
                b""
            };
            let (resp, _) = c.call_at(&addr, request, body).unwrap();
            assert_eq!(resp.status(), Status::Unauthorized, "{request:?} with {key:?}");
            let mut fresh = BlockingClient::connect(&addr, Duration::from_secs(2)).unwrap();
            assert!(fresh.get(b"k", None).unwrap().is_none(), "nothing written");
        }
    }
    let mut peer = BlockingClient::connect(&addr, Duration::from_secs(2))
        .unwrap()
        .as_peer(KEY.to_vec());
    for request in &requests {
        let body: &[u8] = if matches!(request, Request::Replicate { .. }) {
            b"replicated"
        } else {
            b""
        };
        let (resp, _) = peer.call_at(&addr, request, body).unwrap();
        assert_eq!(resp.status(), Status::Ok, "{request:?}");
    }
    assert_eq!(peer.get(b"k", None).unwrap().unwrap().0, b"replicated");
    stop_tx.send(()).unwrap();
    server.join().unwrap();
    assert_eq!(
        seen.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "only the peer's requests reached the handler"
    );
}
