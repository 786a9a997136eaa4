//! A pipelined client connection on any `AsyncRead + AsyncWrite` (glommio, or tokio through
//! a compat adapter) and any single-threaded executor: many requests in flight, responses
//! matched by request id. No background task: whichever caller waits while nobody is
//! reading becomes the reader and delivers every response it reads.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::io::{split, BufReader, ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncWrite};
use rkyv::rancor::Error as RkyvError;

use crate::codec::{access_response, encode_request_into};
use crate::error::WireError;
use crate::frame::FrameKind;
use crate::frame_io::{flush, read_head, read_payload, write_frame};
use crate::limits::{MAX_PAYLOAD_BYTES, MAX_SHARD_MAP_BYTES};
use crate::message::{Request, Response};

/// A response and its payload.
pub type Answer = (Response, Vec<u8>);

#[derive(Default)]
struct Slot {
    answer: Option<Result<Answer, WireError>>,
    waker: Option<Waker>,
}

/// Reads from the socket go through a buffer of this size.
const READ_BUFFER_BYTES: usize = 64 << 10;

struct Inner<S> {
    reader: RefCell<Option<BufReader<ReadHalf<S>>>>,
    writer: RefCell<Option<WriteHalf<S>>>,
    /// Frames queued by callers; whoever holds the writer sends all of them at once.
    outbox: RefCell<Vec<u8>>,
    /// Bumped each time the outbox is handed to the socket; a caller's frame is out once
    /// the generation it queued in has been written.
    written_generation: Cell<u64>,
    outbox_generation: Cell<u64>,
    writer_waiters: RefCell<Vec<Waker>>,
    slots: RefCell<HashMap<u64, Slot>>,
    next_id: Cell<u64>,
    broken: RefCell<Option<WireError>>,
}

/// One connection to one shard. Cheap to clone; not `Send`.
pub struct Connection<S> {
    inner: Rc<Inner<S>>,
}

impl<S> Clone for Connection<S> {
    fn clone(&self) -> Self {
        Connection {
            inner: self.inner.clone(),
        }
    }
}

/// Marks the connection broken if a caller is dropped while it holds a half of the stream
/// in the middle of a frame.
struct HalfGuard<'a, S> {
    inner: &'a Inner<S>,
    armed: bool,
}

impl<S> Drop for HalfGuard<'_, S> {
    fn drop(&mut self) {
        if self.armed {
            self.inner
                .fail(WireError::Malformed("a request was abandoned mid-frame".into()));
        }
    }
}

impl<S> Inner<S> {
    fn fail(&self, e: WireError) {
        self.broken.borrow_mut().get_or_insert(e.clone());
        for slot in self.slots.borrow_mut().values_mut() {
            slot.answer.get_or_insert(Err(e.clone()));
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
        for w in self.writer_waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Wakes one caller still waiting, so that it takes over reading.
    fn hand_over_reading(&self) {
        let mut slots = self.slots.borrow_mut();
        if let Some(slot) = slots
            .values_mut()
            .find(|s| s.answer.is_none() && s.waker.is_some())
        {
            if let Some(w) = slot.waker.take() {
                w.wake();
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    pub fn new(stream: S) -> Self {
        let (r, w) = split(stream);
        Connection {
            inner: Rc::new(Inner {
                reader: RefCell::new(Some(BufReader::with_capacity(READ_BUFFER_BYTES, r))),
                writer: RefCell::new(Some(w)),
                outbox: RefCell::new(Vec::new()),
                written_generation: Cell::new(0),
                outbox_generation: Cell::new(1),
                writer_waiters: RefCell::new(Vec::new()),
                slots: RefCell::new(HashMap::new()),
                next_id: Cell::new(1),
                broken: RefCell::new(None),
            }),
        }
    }

    /// True once the stream failed; the caller should reconnect.
    pub fn is_broken(&self) -> bool {
        self.inner.broken.borrow().is_some()
    }

    /// Requests sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.inner.slots.borrow().len()
    }

    /// Sends `request` (with `payload` for a Put) and waits for its response.
    pub async fn call(&self, request: &Request, payload: &[u8]) -> Result<Answer, WireError> {
        if let Some(e) = self.inner.broken.borrow().clone() {
            return Err(e);
        }
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        // Queue the frame straight into the outbox; the caller holding the write half sends
        // everything queued, so requests issued together leave in one write.
        let my_generation = self.inner.outbox_generation.get();
        {
            let mut outbox = self.inner.outbox.borrow_mut();
            encode_request_into(&mut outbox, id, request, payload.len())?;
            outbox.extend_from_slice(payload);
        }
        self.inner.slots.borrow_mut().insert(id, Slot::default());
        let result = self.send_and_wait(id, my_generation).await;
        self.inner.slots.borrow_mut().remove(&id);
        result
    }

    /// After the peer closed while we wrote: the answer to `id` it may have sent first, or
    /// its answer to the connection as a whole (id 0: a frame whose head it could not
    /// take, such as a payload over its limit). The socket is closed at the other end, so
    /// the read ends at its EOF.
    async fn read_parting_answer(&self, id: u64) -> Option<Answer> {
        let mut r = self.inner.reader.borrow_mut().take()?;
        let frame = read_response(&mut r).await;
        *self.inner.reader.borrow_mut() = Some(r);
        match frame {
            Ok((rid, answer)) if rid == id || rid == 0 => Some(answer),
            _ => None,
        }
    }

    async fn send_and_wait(&self, id: u64, my_generation: u64) -> Result<Answer, WireError> {
        let inner = &self.inner;
        loop {
            let w = futures_lite::future::poll_fn(|cx| {
                if let Some(e) = inner.broken.borrow().clone() {
                    return Poll::Ready(Err(e));
                }
                if inner.written_generation.get() >= my_generation {
                    return Poll::Ready(Ok(None));
                }
                match inner.writer.borrow_mut().take() {
                    Some(w) => Poll::Ready(Ok(Some(w))),
                    None => {
                        inner.writer_waiters.borrow_mut().push(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await?;
            let Some(mut w) = w else { break };
            let mut guard = HalfGuard { inner, armed: true };
            // Let the other ready callers queue their frames first: one write carries them all.
            futures_lite::future::yield_now().await;
            let mut written = Ok(());
            loop {
                let mut bytes = std::mem::take(&mut *inner.outbox.borrow_mut());
                if bytes.is_empty() {
                    break;
                }
                let generation = inner.outbox_generation.get();
                inner.outbox_generation.set(generation + 1);
                written = match write_frame(&mut w, &bytes, &[]).await {
                    Ok(()) => flush(&mut w).await,
                    Err(e) => Err(e),
                };
                // Hand the buffer back so that its capacity serves the next frames.
                bytes.clear();
                let mut outbox = inner.outbox.borrow_mut();
                if outbox.is_empty() {
                    *outbox = bytes;
                }
                drop(outbox);
                if written.is_err() {
                    break;
                }
                inner.written_generation.set(generation);
            }
            guard.armed = false;
            *inner.writer.borrow_mut() = Some(w);
            for waiter in inner.writer_waiters.borrow_mut().drain(..) {
                waiter.wake();
            }
            if let Err(e) = written {
                // A node that refuses a frame (one over its limits) answers why and closes
                // while the rest is still being sent: that answer is the useful error.
                let answer = if e == WireError::Closed {
                    self.read_parting_answer(id).await
                } else {
                    None
                };
                inner.fail(e.clone());
                return answer.ok_or(e);
            }
        }
        // Wait for the answer, reading for everyone while nobody else is.
        loop {
            let reader = futures_lite::future::poll_fn(|cx| {
                let mut slots = inner.slots.borrow_mut();
                let slot = slots.get_mut(&id).expect("own slot");
                if let Some(answer) = slot.answer.take() {
                    return Poll::Ready(Err(answer));
                }
                match inner.reader.borrow_mut().take() {
                    Some(r) => Poll::Ready(Ok(r)),
                    None => {
                        slot.waker = Some(cx.waker().clone());
                        Poll::Pending
                    }
                }
            })
            .await;
            let mut r = match reader {
                Err(answer) => return answer,
                Ok(r) => r,
            };
            let mut guard = HalfGuard { inner, armed: true };
            let frame = read_response(&mut r).await;
            guard.armed = false;
            *inner.reader.borrow_mut() = Some(r);
            match frame {
                Ok((rid, answer)) => {
                    let mut slots = inner.slots.borrow_mut();
                    match slots.get_mut(&rid) {
                        Some(slot) => {
                            slot.answer = Some(Ok(answer));
                            if let Some(w) = slot.waker.take() {
                                w.wake();
                            }
                        }
                        None => {
                            drop(slots);
                            // An answer to nothing we asked: the peer is confused.
                            let e = WireError::Malformed(format!("response to unknown request {rid}"));
                            inner.fail(e.clone());
                            return Err(e);
                        }
                    }
                }
                Err(e) => {
                    inner.fail(e.clone());
                    return Err(e);
                }
            }
            let mine = inner
                .slots
                .borrow_mut()
                .get_mut(&id)
                .and_then(|s| s.answer.take());
            if let Some(answer) = mine {
                inner.hand_over_reading();
                return answer;
            }
        }
    }
}

async fn read_response<S: AsyncRead + AsyncWrite + Unpin>(
    r: &mut BufReader<ReadHalf<S>>,
) -> Result<(u64, Answer), WireError> {
    let (preamble, header) = read_head(r).await?.ok_or(WireError::Closed)?;
    if preamble.kind != FrameKind::Response {
        return Err(WireError::Malformed("expected a response frame".into()));
    }
    let archived = access_response(&header)?;
    let response: Response = rkyv::deserialize::<Response, RkyvError>(archived)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    let len = preamble.payload_len as usize;
    if len > MAX_PAYLOAD_BYTES.max(MAX_SHARD_MAP_BYTES) {
        return Err(WireError::TooLarge {
            what: "payload",
            len,
            limit: MAX_PAYLOAD_BYTES,
        });
    }
    let mut payload = vec![0u8; len];
    read_payload(r, &mut payload).await?;
    Ok((preamble.request_id, (response, payload)))
}
