//! The shard-aware client for gateways and the bench: one pipelined connection per shard,
//! keys routed by xxh3 → partition → owner from the shard map, the map refreshed and the
//! request retried once on `WrongShard`, and a deadline on every request.
//!
//! ```no_run
//! # async fn example() -> Result<(), hotshard_net::client::ClientError> {
//! use hotshard_net::client::{Client, ClientConfig};
//! use hotshard_net::runtime::Glommio;
//!
//! let client = Client::<Glommio>::connect(&["127.0.0.1:7400"], ClientConfig::default()).await?;
//! let version = client.put(b"bucket/object", b"bytes", None).await?;
//! let (value, v) = client.get(b"bucket/object").await?.expect("just written");
//! assert_eq!((value.as_slice(), v), (&b"bytes"[..], version));
//! client.delete(b"bucket/object", Some(version)).await?;
//! # Ok(()) }
//! ```

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use crate::connection::{Answer, Connection};
use crate::error::WireError;
use crate::message::{ByteRange, Request, Response, Status, Target};
use crate::runtime::Runtime;
use crate::shard_map::ShardMap;

/// What can go wrong for a client call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("the node answered {0:?}")]
    Status(Status),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("protocol error: {0}")]
    Wire(#[from] WireError),
    #[error("no shard owns partition {0}")]
    NoOwner(u32),
}

/// Whether a request that failed with `e` may be sent again after a map refresh: always if
/// it was never sent (no connection), otherwise only if it is a read.
pub(crate) fn retry_after(e: &ClientError, request: &Request) -> bool {
    matches!(e, ClientError::Connect { .. })
        || (is_read(request) && matches!(e, ClientError::Timeout(_) | ClientError::Wire(_)))
}

/// The request went out and no answer came back: its node may be gone.
pub(crate) fn answer_lost(e: &ClientError) -> bool {
    matches!(e, ClientError::Timeout(_) | ClientError::Wire(_))
}

/// A request that changes nothing: any serving replica answers it, and it may be sent again.
pub(crate) fn is_read(request: &Request) -> bool {
    request.is_read()
}

/// What a page of an ordered index asks, for either client (`Client::list`).
#[derive(Debug, Clone, Copy)]
pub struct ListArgs<'a> {
    /// A key naming the index's tag (`{photos}`): it routes the request when the listing's
    /// start does not begin with the tag.
    pub index: &'a [u8],
    pub prefix: &'a [u8],
    pub start_after: Option<&'a [u8]>,
    pub delimiter: &'a [u8],
    pub limit: u32,
    /// Where the listing starts (inclusive), in the next range of a split index: a page's
    /// `ListFrom::At`.
    pub start_at: Option<&'a [u8]>,
}

impl ListArgs<'_> {
    /// The key that routes the request: where the listing starts (the latest of prefix,
    /// `start_after` and `start_at`) if it begins with an index tag, so that the range of a
    /// split index holding it answers; else `index`.
    pub fn route_key(&self) -> &[u8] {
        let start = [self.start_after, self.start_at]
            .into_iter()
            .flatten()
            .fold(self.prefix, |a, b| a.max(b));
        match hotshard_placement::index_split::leading_tag(start) {
            Some(_) => start,
            None => self.index,
        }
    }

    pub(crate) fn request(&self, target: crate::message::Target) -> Request {
        Request::List {
            index: self.route_key().to_vec(),
            target,
            prefix: self.prefix.to_vec(),
            start: match (self.start_at, self.start_after) {
                (Some(at), _) => Some(crate::message::ListStart::At(at.to_vec())),
                (None, Some(after)) => Some(crate::message::ListStart::After(after.to_vec())),
                (None, None) => None,
            },
            delimiter: self.delimiter.to_vec(),
            limit: self.limit,
        }
    }

    /// The same listing from where `next` says.
    pub fn from<'b>(&self, next: &'b ListFrom) -> ListArgs<'b>
    where
        Self: 'b,
    {
        let (after, at) = match next {
            ListFrom::After(k) => (Some(&k[..]), None),
            ListFrom::At(k) => (None, Some(&k[..])),
        };
        ListArgs {
            start_after: after,
            start_at: at,
            ..*self
        }
    }
}

/// Where the next page of a listing starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListFrom {
    /// After this item (the page's last).
    After(Vec<u8>),
    /// At this key, in the next range of a split index.
    At(Vec<u8>),
}

/// A page of an ordered index: its items in key order, and where the next starts (None:
/// the listing is done).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListPage {
    pub items: Vec<crate::listing::ListItem>,
    pub next: Option<ListFrom>,
}

/// A `List` answer as a page.
pub(crate) fn list_answer(resp: &Response, body: &[u8]) -> Result<ListPage, ClientError> {
    expect_ok(resp)?;
    let (items, resume) = crate::listing::decode_page_resuming(body).map_err(WireError::Malformed)?;
    let next = match (resp.arg, resume, items.last()) {
        (1, None, Some(last)) => Some(ListFrom::After(last.name().to_vec())),
        (2, Some(r), _) => Some(ListFrom::At(r)),
        (0, None, _) => None,
        _ => return Err(WireError::Malformed("a listing page that says not where to go on".into()).into()),
    };
    Ok(ListPage { items, next })
}

/// `Ok` for a successful response, the status as an error otherwise.
pub(crate) fn expect_ok(resp: &Response) -> Result<(), ClientError> {
    match resp.status() {
        Status::Ok => Ok(()),
        s => Err(ClientError::Status(s)),
    }
}

/// `true` for Ok, `false` for NotFound, the status as an error otherwise.
pub(crate) fn found(resp: &Response) -> Result<bool, ClientError> {
    match resp.status() {
        Status::Ok => Ok(true),
        Status::NotFound => Ok(false),
        s => Err(ClientError::Status(s)),
    }
}

#[derive(Clone)]
pub struct ClientConfig {
    /// Deadline of every request (connect included).
    pub timeout: Duration,
    /// The node's shared secret, proved on every new connection (never sent).
    pub secret: Option<Vec<u8>>,
}

impl std::fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientConfig")
            .field("timeout", &self.timeout)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            timeout: Duration::from_secs(5),
            secret: None,
        }
    }
}

/// Proves the shared secret on a new connection: challenge, then HMAC proof.
pub async fn authenticate<S>(conn: &Connection<S>, secret: &[u8]) -> Result<(), ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    answer_challenge(conn, |nonce| crate::auth::proof(secret, nonce)).await
}

/// Proves the cluster's peer key on a new connection (a node calling another): challenge,
/// then HMAC proof in the peer context. The connection may then send node-to-node
/// requests, and needs no client secret.
pub async fn authenticate_as_peer<S>(conn: &Connection<S>, key: &[u8]) -> Result<(), ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    answer_challenge(conn, |nonce| crate::auth::peer_proof(key, nonce)).await
}

/// Asks for a challenge and answers it with `prove(nonce)`.
async fn answer_challenge<S>(
    conn: &Connection<S>,
    prove: impl FnOnce(&[u8]) -> Vec<u8>,
) -> Result<(), ClientError>
where
    S: futures_lite::AsyncRead + futures_lite::AsyncWrite + Unpin,
{
    let (resp, _) = conn.call(&Request::AuthChallenge, &[]).await?;
    expect_ok(&resp)?;
    let nonce = crate::auth::from_hex(resp.reason.as_str())
        .ok_or_else(|| ClientError::Wire(WireError::Malformed("challenge is not hex".into())))?;
    let proof = prove(&nonce);
    let (resp, _) = conn.call(&Request::AuthProof { proof }, &[]).await?;
    expect_ok(&resp)
}

/// A client of a cluster of nodes. Not `Send`: one per thread (or per core).
pub struct Client<R: Runtime> {
    seeds: Vec<String>,
    cfg: ClientConfig,
    map: RefCell<ShardMap>,
    conns: RefCell<HashMap<String, Connection<R::Stream>>>,
    /// Turns with every read: which serving replica of a chain it goes to.
    reads: std::cell::Cell<usize>,
}

impl<R: Runtime> Client<R> {
    /// Fetches the shard map from the first seed address that answers.
    pub async fn connect(seeds: &[&str], cfg: ClientConfig) -> Result<Self, ClientError> {
        let client = Client {
            seeds: seeds.iter().map(|s| s.to_string()).collect(),
            cfg,
            map: RefCell::new(ShardMap::spread(0, 1, Vec::new())),
            conns: RefCell::new(HashMap::new()),
            reads: std::cell::Cell::new(0),
        };
        client.refresh_map().await?;
        Ok(client)
    }

    pub fn shard_map(&self) -> ShardMap {
        self.map.borrow().clone()
    }

    async fn connection(&self, addr: &str) -> Result<Connection<R::Stream>, ClientError> {
        if let Some(c) = self.conns.borrow().get(addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let stream = R::timeout(self.cfg.timeout, R::connect(addr))
            .await
            .ok_or(ClientError::Timeout(self.cfg.timeout))?
            .map_err(|e| ClientError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let conn = Connection::new(stream);
        if let Some(secret) = &self.cfg.secret {
            R::timeout(self.cfg.timeout, authenticate(&conn, secret))
                .await
                .ok_or(ClientError::Timeout(self.cfg.timeout))??;
        }
        self.conns.borrow_mut().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    async fn call_addr(&self, addr: &str, request: &Request, payload: &[u8]) -> Result<Answer, ClientError> {
        let conn = self.connection(addr).await?;
        R::timeout(self.cfg.timeout, conn.call(request, payload))
            .await
            .ok_or(ClientError::Timeout(self.cfg.timeout))?
            .map_err(ClientError::from)
    }

    /// Takes the map a WrongShard answer carried, if it is one and not older than this
    /// client's; says whether it did.
    fn take_map(&self, body: &[u8]) -> bool {
        match ShardMap::from_bytes(body) {
            Ok(map) if map.epoch >= self.map.borrow().epoch => {
                *self.map.borrow_mut() = map;
                true
            }
            _ => false,
        }
    }

    /// Asks the seeds (then every known shard) for the current map.
    pub async fn refresh_map(&self) -> Result<(), ClientError> {
        let mut addrs = self.seeds.clone();
        addrs.extend(self.map.borrow().shards.iter().map(|s| s.addr.clone()));
        let mut last = ClientError::NoOwner(0);
        for addr in addrs {
            match self.call_addr(&addr, &Request::GetShardMap, &[]).await {
                Ok((resp, body)) if resp.status() == Status::Ok => {
                    let map = ShardMap::from_bytes(&body).map_err(WireError::from)?;
                    if map.epoch >= self.map.borrow().epoch {
                        *self.map.borrow_mut() = map;
                    }
                    return Ok(());
                }
                Ok((resp, _)) => last = ClientError::Status(resp.status()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends a keyed request to the key's owner (a read: to one of its chain's serving
    /// replicas, in turn). Refreshes the map and tries once more
    /// when the map names no owner for the key, when the owner answers WrongShard, when
    /// the owner cannot be reached (nothing was sent), and, for reads only, when the
    /// answer is lost: a write whose answer was lost may have been applied, and is never
    /// sent twice.
    async fn keyed(
        &self,
        key: &[u8],
        payload: &[u8],
        make: impl Fn(Target) -> Request,
    ) -> Result<Answer, ClientError> {
        for attempt in 0..2 {
            let last = attempt == 1;
            let (owner, partition, request) = {
                let map = self.map.borrow();
                let partition = map.partition(key);
                let target = Target {
                    partition,
                    epoch: map.epoch,
                };
                let request = make(target);
                let to = if is_read(&request) {
                    let pick = self.reads.get();
                    self.reads.set(pick.wrapping_add(1));
                    map.reader(partition, pick)
                } else {
                    map.owner(partition)
                };
                (to.map(|o| o.addr.clone()), partition, request)
            };
            let Some(addr) = owner else {
                if last {
                    return Err(ClientError::NoOwner(partition));
                }
                self.refresh_map().await?;
                continue;
            };
            match self.call_addr(&addr, &request, payload).await {
                Ok((resp, body)) if !last && matches!(resp.status(), Status::WrongShard { .. }) => {
                    if !self.take_map(&body) {
                        self.refresh_map().await?
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(e) if !last && retry_after(&e, &request) => {
                    if self.refresh_map().await.is_err() {
                        return Err(e);
                    }
                }
                Err(e) => {
                    // The node may be gone: the next request routes by a fresh map (this
                    // one is not sent again).
                    if answer_lost(&e) {
                        let _ = self.refresh_map().await;
                    }
                    return Err(e);
                }
            }
        }
        Err(ClientError::Status(Status::WrongShard {
            epoch: self.map.borrow().epoch,
        }))
    }

    /// Stores `value`; with `if_version`, only at that version (0: only if absent).
    pub async fn put(&self, key: &[u8], value: &[u8], if_version: Option<u64>) -> Result<u64, ClientError> {
        let (resp, _) = self
            .keyed(key, value, |target| Request::Put {
                key: key.to_vec(),
                if_version,
                target,
                expires_ms: 0,
            })
            .await?;
        expect_ok(&resp)?;
        Ok(resp.version)
    }

    /// The value and version of `key`, or None.
    pub async fn get(&self, key: &[u8]) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        self.get_range(key, None).await
    }

    pub async fn get_range(
        &self,
        key: &[u8],
        range: Option<ByteRange>,
    ) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        let (resp, body) = self
            .keyed(key, &[], |target| Request::Get {
                key: key.to_vec(),
                range,
                target,
            })
            .await?;
        Ok(found(&resp)?.then_some((body, resp.version)))
    }

    pub async fn delete(&self, key: &[u8], if_version: Option<u64>) -> Result<u64, ClientError> {
        let (resp, _) = self
            .keyed(key, &[], |target| Request::Delete {
                key: key.to_vec(),
                if_version,
                target,
            })
            .await?;
        expect_ok(&resp)?;
        Ok(resp.version)
    }

    /// (length, version, crc32c) of `key`, or None.
    pub async fn stat(&self, key: &[u8]) -> Result<Option<(u64, u64, u32)>, ClientError> {
        let (resp, _) = self
            .keyed(key, &[], |target| Request::Stat {
                key: key.to_vec(),
                target,
            })
            .await?;
        let v = resp;
        Ok(found(&v)?.then_some((v.object_len, v.version, v.crc32c)))
    }

    /// A page of an ordered index (issue 33; `ListArgs`): its items in key order, and
    /// where the next starts (`ListArgs::from`).
    pub async fn list(&self, args: ListArgs<'_>) -> Result<ListPage, ClientError> {
        let (resp, body) = self
            .keyed(args.route_key(), &[], |target| args.request(target))
            .await?;
        list_answer(&resp, &body)
    }

    /// Every item of a listing, page after page (each page from the range of a split
    /// index that holds its start). For listings too long to hold, page with `list`.
    pub async fn list_all(&self, args: ListArgs<'_>) -> Result<Vec<crate::listing::ListItem>, ClientError> {
        let mut all = Vec::new();
        let mut page = self.list(args).await?;
        loop {
            all.append(&mut page.items);
            match page.next.take() {
                Some(next) => page = self.list(args.from(&next)).await?,
                None => return Ok(all),
            }
        }
    }

    /// Round trip to one shard.
    pub async fn ping(&self, addr: &str) -> Result<(), ClientError> {
        let (resp, _) = self.call_addr(addr, &Request::Ping, &[]).await?;
        expect_ok(&resp)
    }
}
