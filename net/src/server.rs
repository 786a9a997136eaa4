//! The server side of a connection, on glommio: reads frames, hands each request to the
//! handler on its own task (many in flight, answered by id, possibly out of order), lands
//! a request's payload directly in a buffer the handler provides (a DMA buffer bound for
//! the device), sends each response's payload straight from the handler's buffer, stops
//! reading at the in-flight limit (backpressure), answers Busy without allocating when the
//! handler is over its budget, closes a connection whose frame does not arrive (or whose
//! replies are not read) within the frame timeout, and on malformed input sends an error
//! frame and closes. Nothing a peer sends can panic it. When its executor's stop signal
//! fires it takes no new request, answers the ones it has, and closes cleanly.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{split, BufReader, ReadHalf, WriteHalf};
use futures_lite::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt};
use rkyv::rancor::Error as RkyvError;

use crate::codec::{access_request, encode_response_into};
use crate::error::WireError;
use crate::frame::{FrameKind, PREAMBLE_BYTES};
use crate::frame_io::{flush, read_head, read_payload, skip_payload, write_frame};
use crate::limits::DEFAULT_MAX_IN_FLIGHT;
use crate::message::{Request, Response, Status};
use crate::runtime::{Glommio, Runtime};
use crate::stop::{StopSignal, StopWatch};
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
    /// A buffer of exactly `len` bytes for `request`'s payload, or why there is none. The
    /// request is there to route by: a payload bound for this core's device can land in a
    /// DMA buffer, one that another core will write in an ordinary one.
    fn payload_buffer(&self, request: &Request, len: usize) -> Result<Self::In, Status>;
    /// A payload of `buffered + direct` bytes has arrived: `buffered` were already in the
    /// connection's read buffer (with the frame's header) and were copied out of it,
    /// `direct` were received straight into the payload buffer.
    fn payload_received(&self, _buffered: usize, _direct: usize) {}
    /// Whether there is room for this request now, before anything is allocated for it;
    /// returns the bytes it holds from now on (its payload), or None when it is not
    /// counted at all (small control requests). An error answers it at once (Busy when
    /// over budget).
    fn admit(&self, _request: &Request, _payload_len: usize) -> Result<Option<usize>, Status> {
        Ok(None)
    }
    /// An admitted request's reply carries a payload of `bytes`, held until it has left.
    fn hold(&self, _bytes: usize) {}
    /// An admitted request's reply has been sent (or dropped with its connection): the
    /// bytes from `admit` and `hold` are free again.
    fn release(&self, _bytes: usize) {}
    /// The shared secret a connection must prove it knows before any other request.
    fn secret(&self) -> Option<&[u8]> {
        None
    }
    /// The cluster's peer key, once this node holds it: a connection that proves it may
    /// send node-to-node requests (`Request::is_node_to_node`), which any other connection
    /// is refused (and closed). None: none may.
    fn peer_key(&self) -> Option<&[u8]> {
        None
    }
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
    /// A frame that has begun must arrive whole within this time, and a batch of replies
    /// must leave within it; otherwise the connection is closed (slow or stuck peers).
    /// With a secret set, the handshake must also be over within this time of connecting.
    pub frame_timeout: Duration,
    /// Only another node of the cluster may use this connection (one taken into the slots
    /// kept for them when the clients' are full): it must prove the peer key within the
    /// handshake deadline, before anything else; a client's secret does not do.
    pub peers_only: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            frame_timeout: Duration::from_secs(10),
            peers_only: false,
        }
    }
}

/// How a connection ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ConnectionReport {
    pub requests: u64,
    /// The peer sent something malformed; it got an error frame and the connection closed.
    pub protocol_error: Option<String>,
    /// A frame did not arrive whole within the frame timeout; the connection was closed.
    pub timed_out: bool,
    /// A secret is required and the peer did not prove it; refused and closed.
    pub unauthorized: bool,
    /// It sent a node-to-node request without having proved the cluster's peer key;
    /// refused and closed.
    pub refused_node_request: bool,
    /// The stop signal ended it: every request read was answered, then the connection
    /// closed with a FIN.
    pub stopped: bool,
}

/// What ended a connection's wait for its next frame.
enum Idle {
    Read(std::io::Result<usize>),
    Stopped,
    /// The connection had not proved the secret within its handshake deadline.
    HandshakeExpired,
}

/// Budget held by one admitted request, given back when its reply is gone.
struct Reservation {
    release: Rc<dyn Fn(usize)>,
    bytes: usize,
}

impl Drop for Reservation {
    fn drop(&mut self) {
        (self.release)(self.bytes);
    }
}

enum Outgoing<B> {
    Reply(u64, Reply<B>, Option<Reservation>),
    /// Answer with this status (a malformed frame, a refused peer), then close.
    Fatal(u64, Status),
}

/// Replies waiting for the writer, and the in-flight count the reader waits on.
struct Shared<B> {
    queue: RefCell<VecDeque<Outgoing<B>>>,
    /// Requests read and not yet answered (they keep the thread's readiness poller awake).
    in_flight: hotshard_reactor::Outstanding,
    reading_done: Cell<bool>,
    /// The writer gave up on the peer; the reader stops too.
    closed: Cell<bool>,
    /// The peer stopped reading its replies for the whole frame timeout.
    stalled: Cell<bool>,
    writer_waker: RefCell<Option<Waker>>,
    reader_waker: RefCell<Option<Waker>>,
}

impl<B> Shared<B> {
    fn push(&self, item: Outgoing<B>) {
        if self.closed.get() {
            return; // nobody will send it: free its buffers and its budget now
        }
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
    serve_connection_until(stream, handler, cfg, &StopSignal::new()).await
}

/// How long a stopped connection keeps reading (and discarding) what the peer still sends
/// after its last reply, so that closing does not reset the connection (a close with
/// unread bytes sends RST, and the peer's kernel may then drop replies it has not read).
const LINGER: Duration = Duration::from_secs(1);

/// Serves one connection until the peer closes it, sends something malformed, or `stop`
/// fires: then it finishes the frame it is reading, answers every request it has read,
/// sends a FIN after the last reply and reads what the peer still sends for up to
/// `LINGER` before closing.
pub async fn serve_connection_until<S, H>(
    stream: S,
    handler: Rc<H>,
    cfg: ServerConfig,
    stop: &Rc<StopSignal>,
) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + 'static,
    H: Handler,
{
    let fd = stream.as_raw_fd();
    let (reader, writer) = split(stream);
    let shared = Rc::new(Shared::<H::Out> {
        queue: RefCell::new(VecDeque::new()),
        in_flight: hotshard_reactor::Outstanding::for_this_thread(),
        reading_done: Cell::new(false),
        closed: Cell::new(false),
        stalled: Cell::new(false),
        writer_waker: RefCell::new(None),
        reader_waker: RefCell::new(None),
    });
    let writer_task = glommio::spawn_local(write_loop(writer, fd, shared.clone(), cfg.frame_timeout));
    let mut reader = BufReader::with_capacity(READ_BUFFER_BYTES, SocketReader::new(reader, fd));
    let mut report = read_loop(&mut reader, handler, shared.clone(), cfg, stop.watch()).await;
    report.timed_out |= shared.stalled.get();
    shared.reading_done.set(true);
    if let Some(w) = shared.writer_waker.borrow_mut().take() {
        w.wake();
    }
    writer_task.await;
    if report.stopped && !shared.stalled.get() {
        linger(&mut reader).await;
    }
    report
}

/// After the FIN: reads and drops what the peer still sends until it closes too, or
/// `LINGER` passes.
async fn linger<R: AsyncRead + Unpin>(r: &mut BufReader<R>) {
    let drained = async {
        loop {
            match r.fill_buf().await {
                Ok([]) | Err(_) => return,
                Ok(b) => {
                    let n = b.len();
                    r.consume(n);
                }
            }
        }
    };
    let _ = Glommio::timeout(LINGER, drained).await;
}

async fn read_loop<S, H>(
    r: &mut BufReader<SocketReader<ReadHalf<S>>>,
    handler: Rc<H>,
    shared: Rc<Shared<H::Out>>,
    cfg: ServerConfig,
    stop: StopWatch,
) -> ConnectionReport
where
    S: AsyncRead + AsyncWrite + Unpin + 'static,
    H: Handler,
{
    let max_in_flight = cfg.max_in_flight.max(1);
    let release: Rc<dyn Fn(usize)> = {
        let handler = handler.clone();
        Rc::new(move |bytes| handler.release(bytes))
    };
    let mut report = ConnectionReport::default();
    let mut authenticated = handler.secret().is_none() && !cfg.peers_only;
    // Proved the cluster's peer key: a node of this cluster.
    let mut peer = false;
    let handshake_deadline = Instant::now() + cfg.frame_timeout;
    let mut nonce: Option<[u8; crate::auth::NONCE_BYTES]> = None;
    loop {
        // Backpressure: read nothing more until a reply has gone out.
        futures_lite::future::poll_fn(|cx| {
            if shared.in_flight.get() < max_in_flight || shared.closed.get() {
                Poll::Ready(())
            } else {
                *shared.reader_waker.borrow_mut() = Some(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        if shared.closed.get() {
            report.timed_out = true;
            return report;
        }
        // An idle connection may wait for its next frame as long as it likes; once a frame
        // has begun, all of it must arrive within the frame timeout.
        // Stopping: take no new frame, even one whose first bytes are buffered (its sender
        // gets no answer for it, and a FIN after the last answer).
        // Before it has proved the secret, a connection is not idle but in its handshake,
        // which must end within one frame timeout of the connection's start: otherwise
        // anyone who can reach the port holds a connection slot for ever by saying nothing.
        let handshake_left =
            (!authenticated).then(|| handshake_deadline.saturating_duration_since(Instant::now()));
        let filled = if stop.is_stopped() {
            Idle::Stopped
        } else {
            let read = async { Idle::Read(r.fill_buf().await.map(<[u8]>::len)) };
            let stopped = async {
                stop.stopped().await;
                Idle::Stopped
            };
            let handshake_over = async {
                match handshake_left {
                    Some(left) => glommio::timer::sleep(left).await,
                    None => std::future::pending::<()>().await,
                }
                Idle::HandshakeExpired
            };
            futures_lite::future::or(read, futures_lite::future::or(stopped, handshake_over)).await
        };
        match filled {
            Idle::Stopped => {
                report.stopped = true;
                return report;
            }
            Idle::HandshakeExpired => {
                report.unauthorized = true;
                report.timed_out = true;
                return report;
            }
            Idle::Read(Ok(0)) | Idle::Read(Err(_)) => return report,
            Idle::Read(Ok(_)) => {}
        }
        let b = r.buffer();
        let head_bytes = if b.len() >= PREAMBLE_BYTES {
            PREAMBLE_BYTES + u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize
        } else {
            usize::MAX
        };
        let frame_timeout = match handshake_left {
            Some(left) => left.min(cfg.frame_timeout),
            None => cfg.frame_timeout,
        };
        let head = within(r.buffer().len(), head_bytes, frame_timeout, read_head(&mut *r)).await;
        let (preamble, header) = match head {
            None => {
                report.timed_out = true;
                return report;
            }
            Some(Ok(Some(h))) => h,
            Some(Ok(None)) | Some(Err(WireError::Closed)) => return report,
            Some(Err(e)) => return fatal(&shared, &mut report, 0, e),
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
        if !authenticated || matches!(request, Request::AuthChallenge | Request::AuthProof { .. }) {
            let keys = Keys {
                secret: handler.secret().filter(|_| !cfg.peers_only),
                peer: handler.peer_key(),
            };
            match authenticate(keys, authenticated, &request, &mut nonce) {
                Ok((reply, proved)) => {
                    authenticated |= proved.is_some();
                    peer |= proved == Some(Proved::Peer);
                    report.requests += 1;
                    shared.in_flight.add(1);
                    shared.push(Outgoing::Reply(id, reply, None));
                    continue;
                }
                Err(status) => {
                    report.unauthorized = true;
                    shared.in_flight.add(1);
                    shared.push(Outgoing::Fatal(id, status));
                    return report;
                }
            }
        }
        if request.is_node_to_node() && !peer {
            // Before its payload is read: nothing is allocated for it.
            report.refused_node_request = true;
            shared.in_flight.add(1);
            shared.push(Outgoing::Fatal(id, Status::Unauthorized));
            return report;
        }
        let len = preamble.payload_len as usize;
        let (reservation, refused) = match handler.admit(&request, len) {
            Ok(Some(bytes)) => (
                Some(Reservation {
                    release: release.clone(),
                    bytes,
                }),
                None,
            ),
            Ok(None) => (None, None),
            Err(status) => (None, Some(status)),
        };
        let buffer = match refused {
            Some(status) => Err(status),
            None if match &request {
                Request::Put { .. } | Request::Replicate { tombstone: false, .. } => true,
                Request::Update { op, .. } => op.carries_value(),
                _ => false,
            } =>
            {
                handler.payload_buffer(&request, len).map(Some)
            }
            None => Ok(None),
        };
        let payload = match buffer {
            Ok(Some(mut buf)) => {
                let buffered = r.buffer().len();
                let read = within(
                    buffered,
                    len,
                    cfg.frame_timeout,
                    read_payload_into(&mut *r, &mut buf.as_mut()[..len]),
                )
                .await;
                match read {
                    Some(Ok(copied)) => {
                        handler.payload_received(copied, len - copied);
                        Some(buf)
                    }
                    Some(Err(WireError::Closed)) => return report,
                    Some(Err(e)) => return fatal(&shared, &mut report, id, e),
                    None => {
                        report.timed_out = true;
                        return report;
                    }
                }
            }
            Ok(None) => None,
            Err(status) => {
                // Refused or nowhere to put it (too large, over budget): drain it, say why.
                let buffered = r.buffer().len();
                let drained = within(buffered, len, cfg.frame_timeout, skip_payload(&mut *r, len)).await;
                if !matches!(drained, Some(Ok(()))) {
                    report.timed_out = drained.is_none();
                    return report;
                }
                drop(reservation);
                shared.in_flight.add(1);
                shared.push(Outgoing::Reply(id, Reply::status(status), None));
                report.requests += 1;
                continue;
            }
        };
        report.requests += 1;
        shared.in_flight.add(1);
        // Poll the handler once here: a request that needs no I/O (a cache hit, a stat)
        // is answered without a task of its own; one that waits moves to its own task.
        let mut answer = Box::pin(handler.clone().handle(request, payload));
        let first = futures_lite::future::poll_once(answer.as_mut()).await;
        match first {
            Some(reply) => {
                let reservation = hold(&*handler, reservation, &reply);
                shared.push(Outgoing::Reply(id, reply, reservation));
            }
            None => {
                let (shared, handler) = (shared.clone(), handler.clone());
                glommio::spawn_local(async move {
                    let reply = answer.await;
                    let reservation = hold(&*handler, reservation, &reply);
                    shared.push(Outgoing::Reply(id, reply, reservation));
                })
                .detach();
            }
        }
    }
}

/// Fills `buf` with a payload: what the read buffer already holds is copied out of it
/// (it came in with the frame's header), the rest is received from the socket straight
/// into `buf`, never through the read buffer, and never past the payload's end. Returns the
/// bytes copied.
///
/// Why not receive every payload straight into its buffer: that needs the header read on
/// its own first, one more `recv` per request, which costs more than copying a payload of
/// a few KiB that arrived with its header (a `recv` is a system call; a 4 KiB copy is a
/// few hundred nanoseconds).
async fn read_payload_into<R: AsyncRead + Unpin>(
    r: &mut BufReader<R>,
    buf: &mut [u8],
) -> Result<usize, WireError> {
    let have = r.buffer().len().min(buf.len());
    buf[..have].copy_from_slice(&r.buffer()[..have]);
    r.consume(have);
    if have < buf.len() {
        read_payload(r.get_mut(), &mut buf[have..]).await?;
    }
    Ok(have)
}

/// A connection's read side: through the shard's readiness set (`readiness`), or, if that
/// cannot be set up, through the executor's own stream.
pub(crate) enum SocketReader<R> {
    Ready(hotshard_reactor::ReadySocket<R>),
    Plain(R),
}

impl<R: AsyncRead + Unpin> SocketReader<R> {
    pub(crate) fn new(inner: R, fd: RawFd) -> Self {
        match hotshard_reactor::Readiness::for_this_thread() {
            Ok(set) => match hotshard_reactor::ReadySocket::new(inner, fd, set) {
                Ok(s) => SocketReader::Ready(s),
                Err((_, inner)) => SocketReader::Plain(inner),
            },
            Err(_) => SocketReader::Plain(inner),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for SocketReader<R> {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            SocketReader::Ready(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            SocketReader::Plain(r) => std::pin::Pin::new(r).poll_read(cx, buf),
        }
    }
}

/// Charges a reply's payload to its request's reservation: the bytes stay counted until
/// the reply has been written (a client that does not read holds them).
fn hold<H: Handler>(
    handler: &H,
    reservation: Option<Reservation>,
    reply: &Reply<H::Out>,
) -> Option<Reservation> {
    let bytes = reply.payload.as_ref().map_or(0, |p| p.as_ref().len());
    reservation.map(|mut r| {
        if bytes > 0 {
            handler.hold(bytes);
            r.bytes += bytes;
        }
        r
    })
}

/// Runs `fut` under the frame timeout, unless the `needed` bytes are already buffered: then
/// it cannot wait, and arming a timer per frame would cost more than the frame (a timer
/// is registered with the reactor and removed again).
async fn within<T>(
    buffered: usize,
    needed: usize,
    timeout: Duration,
    fut: impl Future<Output = T>,
) -> Option<T> {
    if buffered >= needed {
        Some(fut.await)
    } else {
        glommio::timer::timeout(timeout, async { Ok(fut.await) })
            .await
            .ok()
    }
}

/// Before a connection has proved the secret: a challenge gets a nonce, a proof is checked
/// against it; anything else, or a wrong proof, is refused.
/// The credentials a connection may prove.
#[derive(Clone, Copy)]
struct Keys<'a> {
    secret: Option<&'a [u8]>,
    peer: Option<&'a [u8]>,
}

/// What a proof proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Proved {
    Client,
    Peer,
}

/// Answers a connection's challenge or proof (or refuses anything else from a connection
/// that still has to prove the secret). A proof of the peer key makes the connection a
/// peer's (and authenticated); one of the secret, authenticated. On a connection already
/// authenticated (no secret, or proved) a proof that proves neither changes nothing and
/// is answered Ok, as before there was a peer key: a client with a secret may talk to a
/// node with none.
fn authenticate<B>(
    keys: Keys<'_>,
    authenticated: bool,
    request: &Request,
    nonce: &mut Option<[u8; crate::auth::NONCE_BYTES]>,
) -> Result<(Reply<B>, Option<Proved>), Status> {
    match request {
        Request::AuthChallenge => {
            let n = crate::auth::new_nonce();
            *nonce = Some(n);
            let mut r = Response::new(Status::Ok);
            r.reason = crate::auth::to_hex(&n);
            let reply = Reply {
                response: r,
                payload: None,
            };
            Ok((reply, None))
        }
        Request::AuthProof { proof } => {
            let n = nonce.take();
            let proved = match (n, keys.peer, keys.secret) {
                (Some(n), Some(k), _) if crate::auth::verify_peer(k, &n, proof) => Some(Proved::Peer),
                (Some(n), _, Some(s)) if crate::auth::verify(s, &n, proof) => Some(Proved::Client),
                _ => None,
            };
            if proved.is_none() && !authenticated {
                return Err(Status::Unauthorized);
            }
            Ok((Reply::status(Status::Ok), proved))
        }
        _ => Err(Status::Unauthorized),
    }
}

fn fatal<B>(shared: &Shared<B>, report: &mut ConnectionReport, id: u64, e: WireError) -> ConnectionReport {
    let reason = e.to_string();
    report.protocol_error = Some(reason.clone());
    shared.in_flight.add(1);
    shared.push(Outgoing::Fatal(id, Status::BadRequest { reason }));
    report.clone()
}

/// How a batch of replies left.
pub(crate) enum Sent {
    All,
    /// The socket failed.
    Failed,
    /// The peer did not read for the whole timeout: the connection has been shut down.
    Stalled,
}

/// Sends `slices` with one `sendmsg`; whatever the socket does not take at once is written
/// as it drains. A peer that does not read for the whole `timeout` is cut off (its
/// connection shut down both ways, so that its reader ends too).
pub(crate) async fn send_all<W: AsyncWrite + Unpin>(
    fd: RawFd,
    w: &mut W,
    slices: &[&[u8]],
    timeout: Duration,
) -> Sent {
    let mut sent = match try_sendmsg(fd, slices) {
        Ok(n) => n,
        Err(_) => return Sent::Failed,
    };
    for s in slices {
        if sent >= s.len() {
            sent -= s.len();
            continue;
        }
        let rest = &s[sent..];
        let wrote =
            glommio::timer::timeout(timeout, async { Ok(write_frame(&mut *w, rest, &[]).await) }).await;
        if !matches!(wrote, Ok(Ok(()))) {
            // SAFETY: shutdown on the connection's own descriptor, still open.
            unsafe { libc::shutdown(fd, libc::SHUT_RDWR) };
            return Sent::Stalled;
        }
        sent = 0;
    }
    Sent::All
}

async fn write_loop<S, B>(mut w: WriteHalf<S>, fd: RawFd, shared: Rc<Shared<B>>, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AsRef<[u8]>,
{
    // Replies gathered for one sendmsg. Every head of a batch in one reused buffer; each reply keeps its head's range and its
    // payload buffer, alive until they are on the socket.
    let mut heads: Vec<u8> = Vec::new();
    let mut batch: Vec<(std::ops::Range<usize>, Option<B>, Option<Reservation>)> = Vec::new();
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
            let (id, response, payload, reservation, fatal) = match item {
                Outgoing::Reply(id, reply, r) => (id, reply.response, reply.payload, r, false),
                Outgoing::Fatal(id, status) => (id, Response::new(status), None, None, true),
            };
            let body_len = payload.as_ref().map_or(0, |p| p.as_ref().len());
            let start = heads.len();
            if encode_response_into(&mut heads, id, &response, body_len).is_err() {
                break 'outer;
            }
            bytes += heads.len() - start + body_len;
            batch.push((start..heads.len(), payload, reservation));
            shared.in_flight.sub(1);
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
            .flat_map(|(h, p, _)| [&heads[h.clone()], p.as_ref().map_or(&[][..], |p| p.as_ref())])
            .filter(|s| !s.is_empty())
            .collect();
        match send_all(fd, &mut w, &slices, timeout).await {
            Sent::All => {}
            Sent::Failed => break,
            Sent::Stalled => {
                // End the reader too: it may be waiting for bytes or for backpressure.
                shared.stalled.set(true);
                shared.closed.set(true);
                shared.wake_reader();
                break 'outer;
            }
        }
        drop(slices);
        batch.clear();
        heads.clear();
        shared.wake_reader();
        if flush(&mut w).await.is_err() || close {
            break;
        }
    }
    // Replies that will never be sent hold DMA buffers and budget that requests still
    // being answered (perhaps waiting for those very buffers) need: free them now.
    shared.closed.set(true);
    shared.wake_reader();
    drop(batch);
    let unsent = std::mem::take(&mut *shared.queue.borrow_mut());
    drop(unsent);
    let _ = w.close().await;
}
