//! Forwarding between the shards of one node: a glommio shared channel for every ordered
//! pair of shards carries a forwarded request one way and its reply back.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};

use glommio::channels::shared_channel::{ConnectedReceiver, ConnectedSender, SharedReceiver, SharedSender};
use hotshard_net::{Request, Response};

use crate::waitable_count::WaitableCount;

/// Capacity of each shard-to-shard channel: bounds forwarded requests in flight per pair.
pub const PEER_CHANNEL_CAPACITY: usize = 1024;

/// What crosses between shards.
pub enum PeerMsg {
    Forward {
        from: usize,
        token: u64,
        request: Request,
        payload: Option<Vec<u8>>,
    },
    Reply {
        token: u64,
        response: Response,
        payload: Vec<u8>,
    },
    /// The sender is stopping and every one of its connections has closed: it forwards
    /// nothing more (anything it forwarded earlier came before this on the channel).
    Drained,
}

/// The channel ends one shard gets: a sender to and a receiver from every other shard.
pub struct PeerEnds {
    pub senders: Vec<Option<SharedSender<PeerMsg>>>,
    pub receivers: Vec<Option<SharedReceiver<PeerMsg>>>,
}

/// Builds the full mesh for `n` shards; `result[i]` goes to shard i.
pub fn mesh(n: usize) -> Vec<PeerEnds> {
    let mut ends: Vec<PeerEnds> = (0..n)
        .map(|_| PeerEnds {
            senders: (0..n).map(|_| None).collect(),
            receivers: (0..n).map(|_| None).collect(),
        })
        .collect();
    for from in 0..n {
        for to in 0..n {
            if from != to {
                let (tx, rx) = glommio::channels::shared_channel::new_bounded(PEER_CHANNEL_CAPACITY);
                ends[from].senders[to] = Some(tx);
                ends[to].receivers[from] = Some(rx);
            }
        }
    }
    ends
}

#[derive(Default)]
struct Pending {
    answer: Option<(Response, Vec<u8>)>,
    waker: Option<Waker>,
}

/// One shard's connected ends and the forwarded requests waiting for replies.
pub struct Peers {
    pub me: usize,
    senders: Vec<Option<ConnectedSender<PeerMsg>>>,
    pending: RefCell<HashMap<u64, Pending>>,
    next_token: Cell<u64>,
    /// Peers that said `Drained`.
    pub drained: WaitableCount,
}

impl Peers {
    /// Connects this shard's ends (must run on the shard's executor).
    pub async fn connect(me: usize, ends: PeerEnds) -> (Rc<Peers>, Vec<(usize, ConnectedReceiver<PeerMsg>)>) {
        // Each end's connect waits for its other end, so connect all of them together:
        // one at a time, two shards would wait on each other forever.
        let senders = hotshard_nvme::queue::join_all(
            ends.senders
                .into_iter()
                .map(|s| async move {
                    match s {
                        Some(s) => Some(s.connect().await),
                        None => None,
                    }
                })
                .collect(),
        );
        let receivers = hotshard_nvme::queue::join_all(
            ends.receivers
                .into_iter()
                .enumerate()
                .map(|(from, r)| async move {
                    match r {
                        Some(r) => Some((from, r.connect().await)),
                        None => None,
                    }
                })
                .collect(),
        );
        let (senders, receivers) = futures_lite::future::zip(senders, receivers).await;
        let receivers = receivers.into_iter().flatten().collect();
        (
            Rc::new(Peers {
                me,
                senders,
                pending: RefCell::new(HashMap::new()),
                next_token: Cell::new(1),
                drained: WaitableCount::default(),
            }),
            receivers,
        )
    }

    /// Sends `request` to shard `to` and waits for its reply.
    pub async fn forward(
        &self,
        to: usize,
        request: Request,
        payload: Option<Vec<u8>>,
    ) -> Option<(Response, Vec<u8>)> {
        let sender = self.senders.get(to)?.as_ref()?;
        let token = self.next_token.get();
        self.next_token.set(token + 1);
        self.pending.borrow_mut().insert(token, Pending::default());
        if sender
            .send(PeerMsg::Forward {
                from: self.me,
                token,
                request,
                payload,
            })
            .await
            .is_err()
        {
            self.pending.borrow_mut().remove(&token);
            return None;
        }
        let answer = futures_lite::future::poll_fn(|cx| {
            let mut pending = self.pending.borrow_mut();
            let slot = pending.get_mut(&token).expect("own slot");
            match slot.answer.take() {
                Some(a) => Poll::Ready(a),
                None => {
                    slot.waker = Some(cx.waker().clone());
                    Poll::Pending
                }
            }
        })
        .await;
        self.pending.borrow_mut().remove(&token);
        Some(answer)
    }

    /// Delivers a reply that came back from another shard.
    pub fn deliver(&self, token: u64, response: Response, payload: Vec<u8>) {
        if let Some(slot) = self.pending.borrow_mut().get_mut(&token) {
            slot.answer = Some((response, payload));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }

    /// Tells every other shard that this one forwards nothing more.
    pub async fn announce_drained(&self) {
        for sender in self.senders.iter().flatten() {
            let _ = sender.send(PeerMsg::Drained).await;
        }
    }

    /// How many other shards there are.
    pub fn others(&self) -> usize {
        self.senders.iter().flatten().count()
    }

    /// Sends a reply back to the shard that forwarded a request.
    pub async fn reply(&self, to: usize, token: u64, response: Response, payload: Vec<u8>) {
        if let Some(Some(sender)) = self.senders.get(to) {
            let _ = sender
                .send(PeerMsg::Reply {
                    token,
                    response,
                    payload,
                })
                .await;
        }
    }
}
