//! A small blocking client for scripts and the CLI: one std `TcpStream` per shard (driven
//! through `AssertAsync`: each poll blocks, which is what a script wants) with
//! read and write timeouts, the same frames and the same routing as the async client.

use std::net::TcpStream;
use std::time::Duration;

use futures_lite::future::block_on;
use futures_lite::io::AssertAsync;

use crate::client::{answer_lost, expect_ok, found, is_read, retry_after, ClientError};
use crate::connection::{Answer, Connection};
use crate::message::{ByteRange, Request, Target};
use crate::shard_map::ShardMap;

/// Blocking calls to one node: routes by the node's shard map to its shards.
pub struct BlockingClient {
    timeout: Duration,
    secret: Option<Vec<u8>>,
    /// The cluster's peer key, proved instead of the secret (tools and tests that speak
    /// as a node).
    peer_key: Option<Vec<u8>>,
    map: ShardMap,
    /// The address it was given: asked first for a newer map.
    seeds: Vec<String>,
    conns: std::collections::HashMap<String, Connection<AssertAsync<TcpStream>>>,
    /// Turns with every read: which serving replica of a chain it goes to.
    reads: usize,
    /// Where the last request went (tests record which replica answered a read).
    last_addr: String,
}

impl BlockingClient {
    /// Connects to `addr` and fetches its shard map.
    pub fn connect(addr: &str, timeout: Duration) -> Result<Self, ClientError> {
        Self::connect_with_secret(addr, timeout, None)
    }

    /// Connects to a node that requires its shared secret.
    pub fn connect_with_secret(
        addr: &str,
        timeout: Duration,
        secret: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let mut c = BlockingClient {
            timeout,
            secret,
            peer_key: None,
            map: ShardMap::spread(0, 1, Vec::new()),
            seeds: vec![addr.to_string()],
            conns: Default::default(),
            reads: 0,
            last_addr: String::new(),
        };
        let (resp, body) = c.call(addr, &Request::GetShardMap, &[])?;
        expect_ok(&resp)?;
        c.map = ShardMap::from_bytes(&body).map_err(crate::WireError::from)?;
        Ok(c)
    }

    /// From now on, new connections prove the cluster's peer key `key` (as a node does)
    /// instead of the secret; the open ones are closed.
    pub fn as_peer(mut self, key: Vec<u8>) -> Self {
        self.peer_key = Some(key);
        self.conns.clear();
        self
    }

    pub fn shard_map(&self) -> &ShardMap {
        &self.map
    }

    /// Sends `request` to the shard at `addr` as it is, with no routing and no retry: for
    /// tools and tests that ask one replica of a chain.
    pub fn call_at(&mut self, addr: &str, request: &Request, payload: &[u8]) -> Result<Answer, ClientError> {
        self.call(addr, request, payload)
    }

    /// The address the last request was sent to.
    pub fn last_addr(&self) -> &str {
        &self.last_addr
    }

    fn call(&mut self, addr: &str, request: &Request, payload: &[u8]) -> Result<Answer, ClientError> {
        if self.last_addr != addr {
            self.last_addr = addr.to_string();
        }
        if self.conns.get(addr).is_none_or(|c| c.is_broken()) {
            let sock = addr
                .parse()
                .map_err(|e| ClientError::Connect {
                    addr: addr.into(),
                    reason: format!("{e}"),
                })
                .and_then(|a| {
                    TcpStream::connect_timeout(&a, self.timeout).map_err(|e| ClientError::Connect {
                        addr: addr.into(),
                        reason: e.to_string(),
                    })
                })?;
            let _ = sock.set_nodelay(true);
            sock.set_read_timeout(Some(self.timeout)).ok();
            sock.set_write_timeout(Some(self.timeout)).ok();
            let conn = Connection::new(AssertAsync::new(sock));
            match (&self.peer_key, &self.secret) {
                (Some(key), _) => block_on(crate::client::authenticate_as_peer(&conn, key))?,
                (None, Some(secret)) => block_on(crate::client::authenticate(&conn, secret))?,
                (None, None) => {}
            }
            self.conns.insert(addr.to_string(), conn);
        }
        let conn = self.conns[addr].clone();
        block_on(conn.call(request, payload)).map_err(|e| match e {
            crate::error::WireError::TimedOut => ClientError::Timeout(self.timeout),
            other => ClientError::Wire(other),
        })
    }

    /// Fetches the map again from the shards it names (first the one that answered
    /// first), keeping it only if it is not older.
    pub fn refresh_map(&mut self) -> Result<(), ClientError> {
        let mut last = ClientError::NoOwner(0);
        let addrs: Vec<String> = self
            .seeds
            .iter()
            .cloned()
            .chain(self.map.shards.iter().map(|s| s.addr.clone()))
            .collect();
        for addr in addrs {
            match self.call(&addr, &Request::GetShardMap, &[]) {
                Ok((resp, body)) if resp.status() == crate::Status::Ok => {
                    let map = ShardMap::from_bytes(&body).map_err(crate::WireError::from)?;
                    if map.epoch >= self.map.epoch {
                        self.map = map;
                    }
                    return Ok(());
                }
                Ok((resp, _)) => last = ClientError::Status(resp.status()),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Sends a keyed request to the key's owner (a read: to its chain's serving replicas in
    /// turn), with the async client's retry rules
    /// (`Client::keyed`): a refresh and one more try on no owner, WrongShard, an owner
    /// that cannot be reached, or a lost answer to a read; a write is never sent twice.
    fn keyed(
        &mut self,
        key: &[u8],
        payload: &[u8],
        make: impl Fn(Target) -> Request,
    ) -> Result<Answer, ClientError> {
        for attempt in 0..2 {
            let last = attempt == 1;
            let partition = self.map.partition(key);
            let target = Target {
                partition,
                epoch: self.map.epoch,
            };
            let request = make(target);
            let to = if is_read(&request) {
                self.reads = self.reads.wrapping_add(1);
                self.map.reader(partition, self.reads)
            } else {
                self.map.owner(partition)
            };
            let Some(addr) = to.map(|o| o.addr.clone()) else {
                if last {
                    return Err(ClientError::NoOwner(partition));
                }
                self.refresh_map()?;
                continue;
            };
            match self.call(&addr, &request, payload) {
                Ok((resp, body)) if !last && matches!(resp.status(), crate::Status::WrongShard { .. }) => {
                    // The answer carries the node's map: one round trip, no GetShardMap.
                    match ShardMap::from_bytes(&body) {
                        Ok(map) if map.epoch >= self.map.epoch => self.map = map,
                        _ => self.refresh_map()?,
                    }
                }
                Ok(answer) => return Ok(answer),
                Err(e) if !last && retry_after(&e, &request) => {
                    if self.refresh_map().is_err() {
                        return Err(e);
                    }
                }
                Err(e) => {
                    // The node may be gone: the next request routes by a fresh map (this
                    // one is not sent again).
                    if answer_lost(&e) {
                        let _ = self.refresh_map();
                    }
                    return Err(e);
                }
            }
        }
        Err(ClientError::Status(crate::Status::WrongShard {
            epoch: self.map.epoch,
        }))
    }

    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<u64, ClientError> {
        self.put_expiring(key, value, 0)
    }

    /// `put` of an object that expires at `expires_ms` (Unix milliseconds; 0: never).
    pub fn put_expiring(&mut self, key: &[u8], value: &[u8], expires_ms: u64) -> Result<u64, ClientError> {
        let (r, _) = self.keyed(key, value, |target| Request::Put {
            key: key.to_vec(),
            if_version: None,
            target,
            expires_ms,
        })?;
        expect_ok(&r)?;
        Ok(r.version)
    }

    pub fn get(
        &mut self,
        key: &[u8],
        range: Option<ByteRange>,
    ) -> Result<Option<(Vec<u8>, u64)>, ClientError> {
        let (r, body) = self.keyed(key, &[], |target| Request::Get {
            key: key.to_vec(),
            range,
            target,
        })?;
        Ok(found(&r)?.then_some((body, r.version)))
    }

    /// A page of an ordered index (issue 33; `client::ListArgs`): its items in key order,
    /// and where the next starts (`ListArgs::from`).
    pub fn list(
        &mut self,
        args: crate::client::ListArgs<'_>,
    ) -> Result<crate::client::ListPage, ClientError> {
        let (r, body) = self.keyed(args.route_key(), &[], |target| args.request(target))?;
        crate::client::list_answer(&r, &body)
    }

    /// The pages of a listing, one by one (each from the range of a split index that holds
    /// its start), until it is done or a page fails.
    pub fn list_pages<'c>(&'c mut self, args: crate::client::ListArgs<'c>) -> ListPages<'c> {
        ListPages {
            client: self,
            args,
            next: None,
            done: false,
        }
    }

    pub fn delete(&mut self, key: &[u8]) -> Result<u64, ClientError> {
        let (r, _) = self.keyed(key, &[], |target| Request::Delete {
            key: key.to_vec(),
            if_version: None,
            target,
        })?;
        expect_ok(&r)?;
        Ok(r.version)
    }

    pub fn stat(&mut self, key: &[u8]) -> Result<Option<(u64, u64, u32)>, ClientError> {
        let (r, _) = self.keyed(key, &[], |target| Request::Stat {
            key: key.to_vec(),
            target,
        })?;
        let v = r;
        Ok(found(&v)?.then_some((v.object_len, v.version, v.crc32c)))
    }

    /// The stats text of the shard at `addr`.
    pub fn stats(&mut self, addr: &str) -> Result<String, ClientError> {
        let (r, body) = self.call(addr, &Request::Stats, &[])?;
        expect_ok(&r)?;
        Ok(String::from_utf8_lossy(&body).into_owned())
    }
}

/// The pages of one listing (`BlockingClient::list_pages`).
pub struct ListPages<'c> {
    client: &'c mut BlockingClient,
    args: crate::client::ListArgs<'c>,
    next: Option<crate::client::ListFrom>,
    done: bool,
}

impl Iterator for ListPages<'_> {
    type Item = Result<Vec<crate::listing::ListItem>, ClientError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let args = match &self.next {
            Some(from) => self.args.from(from),
            None => self.args,
        };
        match self.client.list(args) {
            Ok(page) => {
                self.done = page.next.is_none();
                self.next = page.next;
                Some(Ok(page.items))
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_that_never_answers_is_a_timeout_not_a_malformed_frame() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let holder = std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            std::thread::sleep(Duration::from_millis(600));
            drop(s);
        });
        let err = BlockingClient::connect(&addr, Duration::from_millis(200))
            .err()
            .unwrap();
        assert!(matches!(err, ClientError::Timeout(_)), "{err}");
        assert_eq!(err.to_string(), "no answer within 200ms");
        holder.join().unwrap();
    }
}
