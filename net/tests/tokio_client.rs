//! The same client on tokio (how most gateways run): a current-thread runtime with a
//! LocalSet, against a glommio server in another thread.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::Duration;

use hotshard_net::client::{Client, ClientConfig, ListArgs};
use hotshard_net::listing::ListItem;
use hotshard_net::runtime::Tokio;
use hotshard_net::server::{serve_connection, Handler, Reply, ServerConfig};
use hotshard_net::shard_map::{ShardAddr, ShardMap};
use hotshard_net::{Request, Response, Status};

struct Mem {
    addr: String,
    map: RefCell<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Handler for Mem {
    type In = Vec<u8>;
    type Out = Vec<u8>;

    fn payload_buffer(&self, _request: &Request, len: usize) -> Result<Vec<u8>, Status> {
        Ok(vec![0; len])
    }

    async fn handle(self: Rc<Self>, request: Request, payload: Option<Vec<u8>>) -> Reply<Vec<u8>> {
        match request {
            Request::GetShardMap => {
                let map = ShardMap::spread(
                    1,
                    8,
                    vec![ShardAddr {
                        node: 0,
                        shard: 0,
                        addr: self.addr.clone(),
                    }],
                );
                Reply {
                    response: Response::new(Status::Ok),
                    payload: Some(map.to_bytes().unwrap()),
                }
            }
            Request::Put { key, .. } => {
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
            // A page of keys by prefix (enough to carry a listing to the client and back).
            Request::List { prefix, limit, .. } => {
                let items: Vec<ListItem> = self
                    .map
                    .borrow()
                    .iter()
                    .filter(|(k, _)| k.starts_with(&prefix))
                    .take(limit as usize)
                    .map(|(k, v)| ListItem::Key {
                        key: k.clone(),
                        version: 1,
                        len: v.len() as u64,
                        crc32c: 0,
                    })
                    .collect();
                Reply {
                    response: Response::new(Status::Ok),
                    payload: Some(hotshard_net::listing::encode_page(&items)),
                }
            }
            _ => Reply::status(Status::Internal),
        }
    }
}

#[test]
fn a_tokio_gateway_puts_and_gets() {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server = std::thread::spawn(move || {
        glommio::LocalExecutorBuilder::default()
            .spawn(move || async move {
                let listener = glommio::net::TcpListener::bind("127.0.0.1:0").unwrap();
                let addr = listener.local_addr().unwrap().to_string();
                let handler = Rc::new(Mem {
                    addr: addr.clone(),
                    map: RefCell::default(),
                });
                tx.send(addr).unwrap();
                glommio::spawn_local(async move {
                    while let Ok(s) = listener.accept().await {
                        let h = handler.clone();
                        glommio::spawn_local(async move {
                            serve_connection(s, h, ServerConfig::default()).await;
                        })
                        .detach();
                    }
                })
                .detach();
                while stop_rx.try_recv().is_err() {
                    glommio::timer::sleep(Duration::from_millis(5)).await;
                }
            })
            .unwrap()
            .join()
            .unwrap();
    });
    let addr = rx.recv().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async {
        let client = Client::<Tokio>::connect(&[&addr], ClientConfig::default())
            .await
            .unwrap();
        client.put(b"gw", b"from tokio", None).await.unwrap();
        assert_eq!(client.get(b"gw").await.unwrap().unwrap().0, b"from tokio");
        assert_eq!(client.get(b"none").await.unwrap(), None);
        // An ordered index's page over tokio (issue 33).
        client.put(b"{i}/b", b"2", None).await.unwrap();
        client.put(b"{i}/a", b"1", None).await.unwrap();
        let args = ListArgs {
            index: b"{i}",
            prefix: b"{i}/",
            start_after: None,
            delimiter: b"",
            limit: 10,
            start_at: None,
        };
        let page = client.list(args).await.unwrap();
        let (items, more) = (page.items, page.next.is_some());
        let names: Vec<&[u8]> = items.iter().map(ListItem::name).collect();
        assert_eq!((names, more), (vec![&b"{i}/a"[..], b"{i}/b"], false));
    });
    stop_tx.send(()).unwrap();
    server.join().unwrap();
}
