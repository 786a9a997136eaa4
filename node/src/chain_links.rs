//! A shard's connections to the shards after it in its chains, on other nodes: one
//! pipelined connection per address, opened (and authenticated with the cluster's peer
//! key, which makes it a node's connection: the only kind that may send node-to-node
//! requests) on first use, dropped when it breaks or an answer does not come in time, and
//! opened again by the next call.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use hotshard_net::connection::{Answer, Connection};
use hotshard_net::ready_stream::{GlommioReady, Outstanding, ReadyStream};
use hotshard_net::runtime::Runtime;
use hotshard_net::Request;

/// Why a call to another node got no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkError {
    Connect(String),
    Broken(String),
    Timeout,
}

pub struct ChainLinks {
    conns: RefCell<HashMap<String, Connection<ReadyStream>>>,
    secret: Option<Vec<u8>>,
    /// Holds the cluster's peer key once the control thread has read it (None: a single
    /// node, which has no peers).
    board: Option<std::sync::Arc<crate::map_cell::MapBoard>>,
    /// Calls waiting for an answer, counted on the shard's readiness set so that its
    /// poller keeps polling (made on first use: it must be on the shard's executor).
    waiting: std::cell::OnceCell<Outstanding>,
}

impl ChainLinks {
    pub fn new(
        secret: Option<Vec<u8>>,
        board: Option<std::sync::Arc<crate::map_cell::MapBoard>>,
    ) -> ChainLinks {
        ChainLinks {
            conns: RefCell::new(HashMap::new()),
            secret,
            board,
            waiting: std::cell::OnceCell::new(),
        }
    }

    async fn connection(&self, addr: &str, limit: Duration) -> Result<Connection<ReadyStream>, LinkError> {
        if let Some(c) = self.conns.borrow().get(addr).filter(|c| !c.is_broken()) {
            return Ok(c.clone());
        }
        let stream = GlommioReady::timeout(limit, GlommioReady::connect(addr))
            .await
            .ok_or(LinkError::Timeout)?
            .map_err(|e| LinkError::Connect(format!("{addr}: {e}")))?;
        let conn = Connection::new(stream);
        // A node proves the peer key (which also stands for the clients' secret); before
        // it holds the key, the secret (its node-to-node requests are refused until then).
        let key = self.board.as_ref().and_then(|b| b.peer_key());
        if key.is_some() || self.secret.is_some() {
            let proving = async {
                match (key, &self.secret) {
                    (Some(key), _) => hotshard_net::client::authenticate_as_peer(&conn, key).await,
                    (None, secret) => {
                        let secret = secret.as_deref().unwrap_or_default();
                        hotshard_net::client::authenticate(&conn, secret).await
                    }
                }
            };
            GlommioReady::timeout(limit, proving)
                .await
                .ok_or(LinkError::Timeout)?
                .map_err(|e| LinkError::Connect(format!("{addr}: {e}")))?;
        }
        self.conns.borrow_mut().insert(addr.to_string(), conn.clone());
        Ok(conn)
    }

    /// Sends `request` to `addr` and waits up to `limit` for its answer. On a timeout or a
    /// broken connection the connection is dropped (a late answer goes nowhere).
    pub async fn call(
        &self,
        addr: &str,
        request: &Request,
        payload: &[u8],
        limit: Duration,
    ) -> Result<Answer, LinkError> {
        let conn = self.connection(addr, limit).await?;
        let answered = {
            let _waiting = Waiting::on(self.waiting.get_or_init(Outstanding::for_this_thread));
            GlommioReady::timeout(limit, conn.call(request, payload)).await
        };
        let answer = match answered {
            Some(Ok(answer)) => return Ok(answer),
            Some(Err(e)) => LinkError::Broken(e.to_string()),
            None => LinkError::Timeout,
        };
        self.conns.borrow_mut().remove(addr);
        Err(answer)
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.borrow().len()
    }
}

/// One call counted as waiting while it lives, however the call ends (a dropped future
/// included: a count left behind would keep the shard's poller spinning).
struct Waiting<'a>(&'a Outstanding);

impl<'a> Waiting<'a> {
    fn on(count: &'a Outstanding) -> Waiting<'a> {
        count.add(1);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.sub(1);
    }
}
