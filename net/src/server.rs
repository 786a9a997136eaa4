//! The server side of a connection, on glommio: reads frames, hands each request to the
//! handler on its own task (many in flight, answered by id, possibly out of order), lands
//! a request's payload directly in a buffer the handler provides (a DMA buffer bound for
//! the device), sends each response's payload straight from the handler's buffer, stops
//! reading at the in-flight limit (backpressure), and on malformed input sends an error
//! frame and closes. Nothing a peer sends can panic it.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};

use futures_lite::io::{split, BufReader, ReadHalf, WriteHalf};
use futures_lite::{AsyncRead, AsyncWrite, AsyncWriteExt};
use rkyv::rancor::Error as RkyvError;

use crate::codec::{access_request, encode_response_into};
use crate::error::WireError;
use crate::frame::FrameKind;
use crate::frame_io::{flush, read_head, read_payload, skip_payload, write_frame};
use crate::limits::DEFAULT_MAX_IN_FLIGHT;
use crate::message::{Request, Response, Status};
use crate::vectored::{try_sendmsg, MAX_SLICES};

/// Socket reads go through a buffer this big, so that many small frames cost one read.
const READ_BUFFER_BYTES: usize = 64 << 10;
/// Replies ready together go out in one `sendmsg` up to this many bytes, each payload
/// straight from its own buffer.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// What a handler answers: a response header and, for a Get, a payload to send as is.
pub struct Reply<B> {
    pub response: Response,
    pub payload: Option<B>,
}

impl<B> Reply<B> {
    pub fn status(status: Status) -> Self {
        Reply {
            response: Response::new(status),
            payload: None,
        }
    }
}

/// The node's side of the protocol: where payloads land and how requests are answered.
pub trait Handler: 'static {
    /// Buffer a request payload is read into (a DMA buffer for the node).
    type In: AsMut<[u8]> + 'static;
    /// Buffer a response payload is sent from (a slice of a DMA buffer for the node).
    type Out: AsRef<[u8]> + 'static;
    /// A buffer of exactly `len` bytes for a request's payload, or why there is none.
    fn payload_buffer(&self, len: usize) -> Result<Self::In, Status>;
    /// Answers one request.
    fn handle(
        self: Rc<Self>,
        request: Request,
        payload: Option<Self::In>,
    ) -> impl Future<Output = Reply<Self::Out>> + 'static;
}

#[derive(Debug, Clone, Copy)]
pub struct ServerConfig {
    /// Requests in flight on one connection before it stops reading.
    pub max_in_flight: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    pub requests: u64,
    /// The peer sent something malformed; it got an error frame and the connection closed.
    pub protocol_error: Option<String>,
}

enum Outgoing<B> {
    Reply(u64, Reply<B>),
    /// Answer a malformed frame, then close.
    Fatal(u64, String),
}

/// Replies waiting for the writer, and the in-flight count the reader waits on.
struct Shared<B> {
    queue: RefCell<VecDeque<Outgoing<B>>>,
    in_flight: Cell<usize>,
    reading_done: Cell<bool>,
    writer_waker: RefCell<Option<Waker>>,
    reader_waker: RefCell<Option<Waker>>,
}

impl<B> Shared<B> {
    fn push(&self, item: Outgoing<B>) {
        self.queue.borrow_mut().push_back(item);
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_reader(&self) {
        if let Some(w) = self.reader_waker.borrow_mut().take() {
            w.wake();
        }
    }
}

/// Serves one connection until the peer closes it or sends something malformed.
pub async fn serve_connection<S, H>(stream: S, handler: Rc<H>, cfg: ServerConfig) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + 'static,
    H: Handler,
{
    let fd = stream.as_raw_fd();
    let (reader, writer) = split(stream);
    let shared = Rc::new(Shared::<H::Out> {
        queue: RefCell::new(VecDeque::new()),
        in_flight: Cell::new(0),
        reading_done: Cell::new(false),
        writer_waker: RefCell::new(None),
        reader_waker: RefCell::new(None),
    });
    let writer_task = glommio::spawn_local(write_loop(writer, fd, shared.clone()));
    let reader = BufReader::with_capacity(READ_BUFFER_BYTES, reader);
    let report = read_loop(reader, handler, shared.clone(), cfg.max_in_flight.max(1)).await;
    shared.reading_done.set(true);
    if let Some(w) = shared.writer_waker.borrow_mut().take() {
        w.wake();
    }
    writer_task.await;
    report
}

async fn read_loop<S, H>(
    mut r: BufReader<ReadHalf<S>>,
    handler: Rc<H>,
    shared: Rc<Shared<H::Out>>,
    max_in_flight: usize,
) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    H: Handler,
{
    let mut report = ConnectionReport::default();
    loop {
        // Backpressure: read nothing more until a reply has gone out.
        futures_lite::future::poll_fn(|cx| {
            if shared.in_flight.get() < max_in_flight {
                Poll::Ready(())
            } else {
                *shared.reader_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let (preamble, header) = match read_head(&mut r).await {
            Ok(Some(h)) => h,
            Ok(None) | Err(WireError::Closed) => return report,
            Err(e) => return fatal(&shared, &mut report, 0, e),
        };
        let id = preamble.request_id;
        if preamble.kind != FrameKind::Request {
            return fatal(
                &shared,
                &mut report,
                id,
                WireError::Malformed("expected a request frame".into()),
            );
        }
        let request = match access_request(&header, preamble.payload_len).and_then(|a| {
            rkyv::deserialize::<Request, RkyvError>(a).map_err(|e| WireError::Malformed(e.to_string()))
        }) {
            Ok(req) => req,
            Err(e) => return fatal(&shared, &mut report, id, e),
        };
        let len = preamble.payload_len as usize;
        let payload = if matches!(request, Request::Put { .. }) {
            match handler.payload_buffer(len) {
                Ok(mut buf) => {
                    if let Err(e) = read_payload(&mut r, &mut buf.as_mut()[..len]).await {
                        return if e == WireError::Closed {
                            report
                        } else {
                            fatal(&shared, &mut report, id, e)
                        };
                    }
                    Some(buf)
                }
                Err(status) => {
                    // Nowhere to put it (too large, out of buffers): drain it and say why.
                    if skip_payload(&mut r, len).await.is_err() {
                        return report;
                    }
                    shared.in_flight.set(shared.in_flight.get() + 1);
                    shared.push(Outgoing::Reply(id, Reply::status(status)));
                    report.requests += 1;
                    continue;
                }
            }
        } else {
            None
        };
        report.requests += 1;
        shared.in_flight.set(shared.in_flight.get() + 1);
        // Poll the handler once here: a request that needs no I/O (a cache hit, a stat)
        // is answered without a task of its own; one that waits moves to its own task.
        let mut answer = Box::pin(handler.clone().handle(request, payload));
        let first = futures_lite::future::poll_once(answer.as_mut()).await;
        match first {
            Some(reply) => shared.push(Outgoing::Reply(id, reply)),
            None => {
                let shared = shared.clone();
                glommio::spawn_local(async move {
                    let reply = answer.await;
                    shared.push(Outgoing::Reply(id, reply));
                })
                .detach();
            }
        }
    }
}

fn fatal<B>(shared: &Shared<B>, report: &mut ConnectionReport, id: u64, e: WireError) -> ConnectionReport {
    let reason = e.to_string();
    report.protocol_error = Some(reason.clone());
    shared.in_flight.set(shared.in_flight.get() + 1);
    shared.push(Outgoing::Fatal(id, reason));
    report.clone()
}

async fn write_loop<S, B>(mut w: WriteHalf<S>, fd: RawFd, shared: Rc<Shared<B>>)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AsRef<[u8]>,
{
    // Replies gathered for one sendmsg. Every head of a batch in one reused buffer; each reply keeps its head's range and its
    // payload buffer, alive until they are on the socket.
    let mut heads: Vec<u8> = Vec::new();
    let mut batch: Vec<(std::ops::Range<usize>, Option<B>)> = Vec::new();
    'outer: loop {
        let first = futures_lite::future::poll_fn(|cx| {
            if let Some(item) = shared.queue.borrow_mut().pop_front() {
                return Poll::Ready(Some(item));
            }
            if shared.reading_done.get() && shared.in_flight.get() == 0 {
                return Poll::Ready(None);
            }
            *shared.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        let Some(mut item) = first else { break };
        // Let the other handlers that are ready finish first, then send every reply at once.
        futures_lite::future::yield_now().await;
        let mut close = false;
        let mut bytes = 0usize;
        loop {
            let (id, response, payload, fatal) = match item {
                Outgoing::Reply(id, reply) => (id, reply.response, reply.payload, false),
                Outgoing::Fatal(id, reason) => (id, Response::new(Status::BadRequest { reason }), None, true),
            };
            let body_len = payload.as_ref().map_or(0, |p| p.as_ref().len());
            let start = heads.len();
            if encode_response_into(&mut heads, id, &response, body_len).is_err() {
                break 'outer;
            }
            bytes += heads.len() - start + body_len;
            batch.push((start..heads.len(), payload));
            shared.in_flight.set(shared.in_flight.get() - 1);
            close |= fatal;
            if close || bytes >= WRITE_BATCH_BYTES || batch.len() * 2 >= MAX_SLICES {
                break;
            }
            match shared.queue.borrow_mut().pop_front() {
                Some(next) => item = next,
                None => break,
            }
        }
        let slices: Vec<&[u8]> = batch
            .iter()
            .flat_map(|(h, p)| [&heads[h.clone()], p.as_ref().map_or(&[][..], |p| p.as_ref())])
            .filter(|s| !s.is_empty())
            .collect();
        // Whatever the socket does not take at once is written as it drains.
        let mut sent = match try_sendmsg(fd, &slices) {
            Ok(n) => n,
            Err(_) => break,
        };
        for s in &slices {
            if sent >= s.len() {
                sent -= s.len();
                continue;
            }
            if write_frame(&mut w, &s[sent..], &[]).await.is_err() {
                break 'outer;
            }
            sent = 0;
        }
        drop(slices);
        batch.clear();
        heads.clear();
        shared.wake_reader();
        if flush(&mut w).await.is_err() || close {
            break;
        }
    }
    let _ = w.close().await;
}
