//! The server side of a RESP connection, on glommio: reads commands (pipelined or not),
//! answers the connection's own commands (AUTH, HELLO, CLIENT, SELECT, QUIT, COMMAND)
//! itself, hands every other command to the handler on its own task, and writes the
//! replies in the order the commands came, each value straight from the handler's buffer.
//! Commands of one connection run at once unless they share a key (then each waits for
//! the ones before it), so a pipeline of writes to many keys is one group commit, and
//! `SET k 1` then `INCR k` still runs in order. Every length is checked before anything
//! is allocated (`frame`); a malformed stream gets Redis's protocol error and the
//! connection closes; a command that has begun must arrive within the frame timeout and
//! replies must be read within it; at most `max_in_flight` commands wait for their
//! replies before the connection stops reading.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::os::unix::io::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::io::{split, WriteHalf};
use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::command::{parse, RespCommand};
use super::frame::{parse_command, partial_bulk, Arg, Parsed, RespLimits};
use super::reply;
use crate::server::{send_all, Sent, SocketReader};
use crate::stop::{StopSignal, StopWatch};
use crate::vectored::MAX_SLICES;

/// Socket reads go through a buffer at least this big.
const READ_BYTES: usize = 64 << 10;
/// Room for the `$<len>` line and the CRLF around one bulk argument.
const MAX_HEADER_LINE: usize = 32;
/// Replies ready together leave in one `sendmsg` up to about this many bytes.
const WRITE_BATCH_BYTES: usize = 256 << 10;

/// One command's bytes, copied out of the read buffer so that it can run on its own task
/// while the connection reads on; a large SET's value is not among them but in a buffer
/// of the handler's, received there straight from the socket (`value`; the command's
/// value argument is then empty).
pub struct OwnedCommand<V> {
    bytes: Vec<u8>,
    args: Vec<Arg>,
    value: Option<V>,
}

impl<V> OwnedCommand<V> {
    /// The SET value received into the handler's buffer, if it was.
    pub fn take_value(&mut self) -> Option<V> {
        self.value.take()
    }

    /// Argument `i` (0: the command's name), if there is one.
    pub fn arg(&self, i: usize) -> Option<&[u8]> {
        self.args.get(i).map(|a| a.bytes(&self.bytes))
    }

    /// How many arguments the command has, its name among them.
    pub fn arg_count(&self) -> usize {
        self.args.len()
    }

    pub fn args(&self) -> Vec<&[u8]> {
        self.args.iter().map(|a| a.bytes(&self.bytes)).collect()
    }

    /// The command read into what it asks (Err: the error reply).
    pub fn parse(&self) -> Result<RespCommand<'_>, String> {
        parse(&self.args())
    }

    /// The hashes of the keys a command of this name touches, from the positions the
    /// command table gives (MSET: every other argument), or None when it reads or changes
    /// the whole keyspace. Arguments a malformed command lacks are left out: its parse in
    /// the handler answers it.
    fn key_hashes(&self, name: &str) -> Option<Vec<u64>> {
        let (first, last, step) = match name {
            "SCAN" | "KEYS" | "DBSIZE" | "FLUSHALL" | "FLUSHDB" | "INFO" | "RANDOMKEY" => return None,
            "MSET" | "MSETNX" => (1, -1, 2),
            _ => match super::command::TABLE.iter().find(|(n, ..)| *n == name) {
                Some((_, _, _, first, last)) => (*first, *last, 1),
                None => (0, 0, 1),
            },
        };
        if first <= 0 {
            return Some(Vec::new());
        }
        let end = if last < 0 {
            self.args.len()
        } else {
            (last as usize + 1).min(self.args.len())
        };
        Some(
            (first as usize..end)
                .step_by(step)
                .map(|i| key_hash(self.args[i].bytes(&self.bytes)))
                .collect(),
        )
    }

    /// The command's name as COMMAND lists it, or "unknown".
    pub fn name(&self) -> &'static str {
        self.args
            .first()
            .and_then(|a| super::command::table_name(a.bytes(&self.bytes)))
            .unwrap_or("unknown")
    }
}

/// A reply: bytes already encoded, a bulk string sent from the handler's buffer, or
/// several of these one after another (an array's header is a `Raw` of its own).
pub enum RespReply<B> {
    Raw(Vec<u8>),
    Bulk(B),
    /// Nothing: `$-1` in RESP2, `_` in RESP3 (the connection's protocol decides).
    Null,
    Many(Vec<RespReply<B>>),
    /// A map of n pairs follows: `%n` in RESP3, `*2n` in RESP2.
    MapHeader(usize),
}

impl<B> RespReply<B> {
    pub fn ok() -> Self {
        RespReply::Raw(b"+OK\r\n".to_vec())
    }

    pub fn error(e: &str) -> Self {
        let mut out = Vec::with_capacity(e.len() + 3);
        reply::error(&mut out, e);
        RespReply::Raw(out)
    }

    pub fn integer(n: i64) -> Self {
        let mut out = Vec::with_capacity(8);
        reply::integer(&mut out, n);
        RespReply::Raw(out)
    }

    pub fn null() -> Self {
        RespReply::Null
    }

    pub fn bulk_bytes(b: &[u8]) -> Self {
        let mut out = Vec::with_capacity(b.len() + 16);
        reply::bulk(&mut out, b);
        RespReply::Raw(out)
    }
}

/// The node's side: what the connection cannot answer by itself.
pub trait RespHandler: 'static {
    /// A buffer a value is sent from (the store's, or the cache's).
    type Out: AsRef<[u8]> + 'static;
    /// A buffer a large SET's value is received into (a DMA buffer bound for the device).
    type In: AsMut<[u8]> + 'static;
    /// A buffer of exactly `len` bytes for the value of `SET key`, or None to receive it
    /// through the connection's read buffer like any other argument.
    fn value_buffer(&self, _key: &[u8], _len: usize) -> Option<Self::In> {
        None
    }
    /// A value of `buffered + direct` bytes has arrived in a `value_buffer`: `buffered`
    /// were copied from the read buffer, `direct` received straight into it.
    fn value_received(&self, _buffered: usize, _direct: usize) {}
    /// The password AUTH must give, if any.
    fn secret(&self) -> Option<&[u8]>;
    /// The reply to `command` (named `name`) if the handler can give it now, with no I/O
    /// and no wait (a GET of a cached value, say): it is then answered in place, with no
    /// task and no future of its own. None: `call` runs it. Each answer is counted here.
    fn answer_at_once(
        &self,
        _name: &'static str,
        _command: &OwnedCommand<Self::In>,
    ) -> Option<RespReply<Self::Out>> {
        None
    }
    /// Runs `command` (every command but the connection's own).
    fn call(
        self: Rc<Self>,
        command: OwnedCommand<Self::In>,
    ) -> impl Future<Output = RespReply<Self::Out>> + 'static;
    /// Counts a command (its name as COMMAND lists it, or "unknown").
    fn count(&self, _name: &'static str, _ok: bool) {}
}

#[derive(Debug, Clone, Copy)]
pub struct RespServerConfig {
    pub limits: RespLimits,
    /// Commands read and not yet answered before the connection stops reading.
    pub max_in_flight: usize,
    /// A command that has begun must arrive within this; replies must be read within it.
    pub frame_timeout: Duration,
    /// The most bytes one command may take (its values together).
    pub max_command_bytes: usize,
    /// The connection's id (CLIENT ID).
    pub client_id: u64,
}

/// How a connection ended.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RespReport {
    pub commands: u64,
    pub protocol_error: Option<String>,
    pub timed_out: bool,
    pub auth_failures: u64,
    pub stopped: bool,
}

/// A reply's place in command order, filled when its command is answered, and the
/// protocol it is written in (the one in force when its command was read).
struct SlotInner<B> {
    reply: RefCell<Option<RespReply<B>>>,
    resp3: bool,
}

type Slot<B> = Rc<SlotInner<B>>;

struct Outbox<B> {
    slots: RefCell<VecDeque<Slot<B>>>,
    /// Close the connection after the reply in the last slot (QUIT, a protocol error).
    close_after: Cell<bool>,
    /// HELLO 3 has switched the connection to RESP3.
    resp3: Cell<bool>,
    reading_done: Cell<bool>,
    closed: Cell<bool>,
    stalled: Cell<bool>,
    writer_waker: RefCell<Option<Waker>>,
    reader_waker: RefCell<Option<Waker>>,
    /// Commands read and not yet written, on the thread's readiness set (they keep its
    /// poller awake).
    in_flight: hotshard_reactor::Outstanding,
}

impl<B> Outbox<B> {
    fn wake_writer(&self) {
        if let Some(w) = self.writer_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn wake_reader(&self) {
        if let Some(w) = self.reader_waker.borrow_mut().take() {
            w.wake();
        }
    }

    fn push(&self, reply: Option<RespReply<B>>) -> Slot<B> {
        let slot = Rc::new(SlotInner {
            reply: RefCell::new(reply),
            resp3: self.resp3.get(),
        });
        self.slots.borrow_mut().push_back(slot.clone());
        self.in_flight.add(1);
        self.wake_writer();
        slot
    }
}

/// Commands running now and the keys they touch (as hashes): a command that touches one
/// of them waits until the running ones are done.
struct Running {
    count: Rc<Cell<usize>>,
    /// The keys the running commands name, each with how many of them name it: a key
    /// leaves when the last command naming it is answered (a client streaming new keys
    /// holds only those of its commands in flight).
    keys: Rc<RefCell<HashMap<u64, u32>>>,
    /// A command on the whole keyspace (FLUSHALL, KEYS, SCAN, ...) runs: every command
    /// after it waits for it, as every command before it was waited for.
    whole: Rc<Cell<bool>>,
    /// Tasks waiting for a running command to end (`wait_idle`, a pending SET's).
    waiters: Rc<RefCell<Vec<Waker>>>,
}

/// Wakes every task waiting for a running command to end.
fn wake_all(waiters: &RefCell<Vec<Waker>>) {
    for w in waiters.borrow_mut().drain(..) {
        w.wake();
    }
}

/// Plain SETs of one key (`SET key value`, no option) that came one after another while an
/// earlier command naming the key ran: only the last of them is written, once the key is
/// free, and each is answered as it is (Redis's pipeline `SET k 1`, `SET k 2` leaves 2,
/// and the first SET may be taken to have happened an instant before the second, inside
/// both their waits: no read can come between them, since any other command naming the
/// key waits for both). A pipeline of N SETs of one key so costs two writes, not N
/// waits for the device one after another.
pub(crate) struct PendingSet<V, B> {
    key: u64,
    command: OwnedCommand<V>,
    /// The reply slots of the SETs it stands for, in order (the last is `command`'s).
    slots: Vec<Slot<B>>,
}

/// A connection's pending SET, if any (one at a time).
type Pending<V, B> = Rc<RefCell<Option<PendingSet<V, B>>>>;

impl Running {
    /// Marks `keys` (None: the whole keyspace) as named by a running command.
    fn take(&self, keys: &Option<Vec<u64>>) {
        match keys {
            None => self.whole.set(true),
            Some(ks) => {
                let mut map = self.keys.borrow_mut();
                for k in ks {
                    *map.entry(*k).or_default() += 1;
                }
            }
        }
    }
}

/// Gives back what `Running::take` marked, once its command is answered.
fn give_back(keys: &RefCell<HashMap<u64, u32>>, whole: &Cell<bool>, taken: &Option<Vec<u64>>) {
    match taken {
        None => whole.set(false),
        Some(ks) => {
            let mut map = keys.borrow_mut();
            for k in ks {
                if let Some(n) = map.get_mut(k) {
                    *n -= 1;
                    if *n == 0 {
                        map.remove(k);
                    }
                }
            }
        }
    }
}

fn key_hash(key: &[u8]) -> u64 {
    // FNV-1a: the set only needs to tell keys apart most of the time (a collision makes a
    // command wait, nothing more).
    key.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Per-connection state the connection's own commands read and change.
struct Session {
    authenticated: bool,
    name: Vec<u8>,
    /// Failed AUTHs so far: the `AUTH_FAILURES_CLOSE`th closes the connection.
    auth_failures: u32,
}

/// What a connection that has not authenticated (with a secret set) may send, as Redis
/// limits it since CVE-2021-32675: at most 10 arguments, each at most 16 KiB, so that
/// nobody who lacks the password makes the node allocate or hold more than that.
pub const UNAUTHENTICATED: RespLimits = RespLimits {
    max_args: 10,
    max_bulk: 16 << 10,
    max_inline: 16 << 10,
};

/// Failed AUTHs after which a connection is closed (each answered WRONGPASS first).
pub const AUTH_FAILURES_CLOSE: u32 = 3;

/// Redis's wording for a command past `UNAUTHENTICATED`.
fn unauthenticated_error(e: String) -> String {
    e.replace("invalid multibulk length", "unauthenticated multibulk length")
        .replace("invalid bulk length", "unauthenticated bulk length")
}

/// Serves one RESP connection until the peer closes it, sends something malformed, says
/// QUIT, or `stop` fires (then it answers what it has read and closes).
pub async fn serve_resp_connection<S, H>(
    stream: S,
    handler: Rc<H>,
    cfg: RespServerConfig,
    stop: &Rc<StopSignal>,
) -> RespReport
where
    S: AsyncRead + AsyncWrite + AsRawFd + Unpin + 'static,
    H: RespHandler,
{
    let fd = stream.as_raw_fd();
    let (reader, writer) = split(stream);
    let outbox = Rc::new(Outbox::<H::Out> {
        slots: RefCell::new(VecDeque::new()),
        close_after: Cell::new(false),
        resp3: Cell::new(false),
        reading_done: Cell::new(false),
        closed: Cell::new(false),
        stalled: Cell::new(false),
        writer_waker: RefCell::new(None),
        reader_waker: RefCell::new(None),
        in_flight: hotshard_reactor::Outstanding::for_this_thread(),
    });
    let writer_task = glommio::spawn_local(write_loop(writer, fd, outbox.clone(), cfg.frame_timeout));
    let mut reader = SocketReader::new(reader, fd);
    let mut report = read_loop(&mut reader, handler, outbox.clone(), cfg, stop.watch()).await;
    report.timed_out |= outbox.stalled.get();
    outbox.reading_done.set(true);
    outbox.wake_writer();
    writer_task.await;
    report
}

/// What ended a wait for bytes.
enum Filled {
    Read(std::io::Result<usize>),
    Stopped,
    TimedOut,
}

async fn read_loop<R, H>(
    r: &mut R,
    handler: Rc<H>,
    outbox: Rc<Outbox<H::Out>>,
    cfg: RespServerConfig,
    stop: StopWatch,
) -> RespReport
where
    R: AsyncRead + Unpin,
    H: RespHandler,
{
    let mut report = RespReport::default();
    let mut session = Session {
        authenticated: handler.secret().is_none(),
        name: Vec::new(),
        auth_failures: 0,
    };
    // With a secret set, AUTH must come within one frame timeout of connecting: otherwise
    // anyone who reaches the port holds a connection slot for ever by saying nothing.
    let auth_deadline = Instant::now() + cfg.frame_timeout;
    let mut running = Running {
        count: Rc::new(Cell::new(0)),
        keys: Rc::new(RefCell::new(HashMap::new())),
        whole: Rc::new(Cell::new(false)),
        waiters: Rc::new(RefCell::new(Vec::new())),
    };
    let pending: Pending<H::In, H::Out> = Rc::new(RefCell::new(None));
    let max_in_flight = cfg.max_in_flight.max(1);
    let mut buf: Vec<u8> = vec![0; READ_BYTES];
    let mut len = 0usize;
    // When the command at the front of the buffer began to arrive.
    let mut begun: Option<Instant> = None;
    // The value of the SET at the front, received into the handler's buffer.
    let mut value: Option<H::In> = None;
    loop {
        // Every whole command in the buffer, in order.
        let mut at = 0usize;
        loop {
            let limits = match session.authenticated {
                true => cfg.limits,
                false => UNAUTHENTICATED,
            };
            let max_command_bytes = match session.authenticated {
                true => cfg.max_command_bytes,
                false => UNAUTHENTICATED.max_args * (UNAUTHENTICATED.max_bulk + MAX_HEADER_LINE),
            };
            match parse_command(&buf[at..len], &limits) {
                Parsed::Command(mut c) => {
                    let whole = &buf[at..at + c.consumed];
                    // A SET's value goes straight into the handler's buffer when it gives
                    // one (one copy, no allocation of the command's bytes).
                    let in_buffer = match (session.authenticated, &value) {
                        (true, None) => value_into_buffer(&handler, whole, &mut c.args),
                        _ => None,
                    };
                    let bytes = match &in_buffer {
                        Some((_, end)) => whole[..*end].to_vec(),
                        None => whole.to_vec(),
                    };
                    if let Some((v, _)) = in_buffer {
                        value = Some(v);
                    }
                    at += c.consumed;
                    begun = None;
                    if c.args.is_empty() {
                        continue;
                    }
                    // Ranges are relative to where the command started.
                    let command = OwnedCommand {
                        bytes,
                        args: c.args,
                        value: value.take(),
                    };
                    report.commands += 1;
                    let go_on = dispatch(
                        command,
                        &handler,
                        &outbox,
                        &mut session,
                        (&mut running, &pending),
                        &cfg,
                        &mut report,
                    )
                    .await;
                    if !go_on {
                        return report;
                    }
                    // Backpressure: read nothing more until a reply has gone out.
                    wait_for_room(&outbox, max_in_flight).await;
                    if outbox.closed.get() {
                        report.timed_out = true;
                        return report;
                    }
                }
                Parsed::Incomplete { need } => {
                    if need > max_command_bytes {
                        let e =
                            format!("ERR Protocol error: a command of more than {max_command_bytes} bytes");
                        return fail(&outbox, &mut report, e);
                    }
                    if at < len && begun.is_none() {
                        begun = Some(Instant::now());
                    }
                    // No device buffer for anyone who has not authenticated.
                    if value.is_none() && need >= DIRECT_VALUE_BYTES && session.authenticated {
                        let deadline = begun.unwrap_or_else(Instant::now) + cfg.frame_timeout;
                        match receive_value(r, &handler, &mut buf, at, len, &cfg.limits, deadline).await {
                            Direct::Received(v, new_len) => {
                                value = Some(v);
                                len = new_len;
                            }
                            Direct::NotHere => {}
                            Direct::Failed(timed_out) => {
                                report.timed_out = timed_out;
                                return report;
                            }
                        }
                    }
                    // Make room for the whole command (at least a read's worth).
                    buf.copy_within(at..len, 0);
                    len -= at;
                    let want = need.max(len + READ_BYTES);
                    if buf.len() < want {
                        buf.resize(want, 0);
                    } else if buf.len() > 4 * READ_BYTES && want <= READ_BYTES {
                        // A large command has gone: give its memory back.
                        buf.truncate(READ_BYTES);
                        buf.shrink_to_fit();
                    }
                    break;
                }
                Parsed::Error(e) if !session.authenticated => {
                    return fail(&outbox, &mut report, unauthenticated_error(e))
                }
                Parsed::Error(e) => return fail(&outbox, &mut report, e),
            }
        }
        if stop.is_stopped() {
            report.stopped = true;
            return report;
        }
        let deadline = begun.map(|b| b + cfg.frame_timeout);
        let deadline = match session.authenticated {
            true => deadline,
            false => Some(deadline.map_or(auth_deadline, |d| d.min(auth_deadline))),
        };
        let filled = {
            let read = async { Filled::Read(r.read(&mut buf[len..]).await) };
            let stopped = async {
                stop.stopped().await;
                Filled::Stopped
            };
            let late = async {
                match deadline {
                    Some(d) => glommio::timer::sleep(d.saturating_duration_since(Instant::now())).await,
                    None => std::future::pending::<()>().await,
                }
                Filled::TimedOut
            };
            futures_lite::future::or(read, futures_lite::future::or(stopped, late)).await
        };
        match filled {
            Filled::Read(Ok(0)) | Filled::Read(Err(_)) => return report,
            Filled::Read(Ok(n)) => len += n,
            Filled::Stopped => {
                report.stopped = true;
                return report;
            }
            Filled::TimedOut => {
                report.timed_out = true;
                return report;
            }
        }
    }
}

/// A SET value at least this big is received straight into the handler's buffer.
const DIRECT_VALUE_BYTES: usize = 64 << 10;

/// A plain SET value of at least this many bytes, already whole in the read buffer, is
/// copied into the handler's buffer as the command is taken, rather than copied out with
/// the command and again into a device buffer when it runs: below it the handler stores
/// the value inline in its record anyway.
const BUFFERED_VALUE_BYTES: usize = 1024;

/// If `command` (its bytes `whole`, parsed into `args`) is `SET key value` with a value of
/// at least `BUFFERED_VALUE_BYTES` and the handler gives a buffer for it: the value copied
/// there, its argument made empty (as a value received straight from the socket is), and
/// where the command's bytes can end (the value was its last argument).
fn value_into_buffer<H: RespHandler>(
    handler: &Rc<H>,
    whole: &[u8],
    args: &mut [Arg],
) -> Option<(H::In, usize)> {
    let [name, key, Arg::At(v)] = args else {
        return None;
    };
    if v.len() < BUFFERED_VALUE_BYTES || !name.bytes(whole).eq_ignore_ascii_case(b"SET") {
        return None;
    }
    let mut buffer = handler.value_buffer(key.bytes(whole), v.len())?;
    buffer.as_mut()[..v.len()].copy_from_slice(&whole[v.clone()]);
    handler.value_received(v.len(), 0);
    let end = v.start;
    *v = end..end;
    Some((buffer, end))
}

/// What became of a SET value `receive_value` looked at.
enum Direct<V> {
    /// In the handler's buffer; the read buffer now ends (at the returned length) where
    /// the value began, its `$<len>` line rewritten as `$0` so that the command parses
    /// with an empty value argument.
    Received(V, usize),
    /// Not a SET value, or the handler has no buffer for it: the read buffer takes it.
    NotHere,
    /// The connection failed (true: the value did not arrive within the frame timeout).
    Failed(bool),
}

/// If the command at `buf[at..len]` is a SET cut inside its value, and the handler gives a
/// buffer for it: copies what has arrived of the value there and receives the rest from
/// the socket straight into it.
async fn receive_value<R, H>(
    r: &mut R,
    handler: &Rc<H>,
    buf: &mut [u8],
    at: usize,
    len: usize,
    limits: &RespLimits,
    deadline: Instant,
) -> Direct<H::In>
where
    R: AsyncRead + Unpin,
    H: RespHandler,
{
    let Some(p) = partial_bulk(&buf[at..len], limits) else {
        return Direct::NotHere;
    };
    let is_set = p.before.len() == 2 && p.before[0].bytes(&buf[at..len]).eq_ignore_ascii_case(b"SET");
    if !is_set || p.value_len < DIRECT_VALUE_BYTES {
        return Direct::NotHere;
    }
    let Some(mut v) = handler.value_buffer(p.before[1].bytes(&buf[at..len]), p.value_len) else {
        return Direct::NotHere;
    };
    let value_at = at + p.value_at;
    let have = (len - value_at).min(p.value_len);
    v.as_mut()[..have].copy_from_slice(&buf[value_at..value_at + have]);
    if have < p.value_len {
        let rest = &mut v.as_mut()[have..p.value_len];
        let left = deadline.saturating_duration_since(Instant::now());
        match glommio::timer::timeout(left, async { Ok(r.read_exact(rest).await) }).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Direct::Failed(false),
            Err(_) => return Direct::Failed(true),
        }
    }
    handler.value_received(have, p.value_len - have);
    // The bytes after the value that were already read (its CRLF, later arguments).
    let after = value_at + have;
    let tail: Vec<u8> = buf[after..len].to_vec();
    let header_at = at + p.header_at;
    let mut end = header_at;
    for b in b"$0\r\n".iter().chain(tail.iter()) {
        buf[end] = *b;
        end += 1;
    }
    Direct::Received(v, end)
}

/// A protocol error: its reply goes out, then the connection closes.
fn fail<B>(outbox: &Outbox<B>, report: &mut RespReport, e: String) -> RespReport {
    outbox.push(Some(RespReply::error(&e)));
    outbox.close_after.set(true);
    report.protocol_error = Some(e);
    report.clone()
}

async fn wait_for_room<B>(outbox: &Outbox<B>, max: usize) {
    futures_lite::future::poll_fn(|cx| {
        if outbox.slots.borrow().len() < max || outbox.closed.get() {
            Poll::Ready(())
        } else {
            *outbox.reader_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        }
    })
    .await
}

/// Waits until no command is running.
async fn wait_idle(running: &mut Running) {
    futures_lite::future::poll_fn(|cx| {
        if running.count.get() == 0 {
            Poll::Ready(())
        } else {
            running.waiters.borrow_mut().push(cx.waker().clone());
            Poll::Pending
        }
    })
    .await;
}

/// Answers one command, or starts it; false when the connection is to close after it.
async fn dispatch<H: RespHandler>(
    command: OwnedCommand<H::In>,
    handler: &Rc<H>,
    outbox: &Rc<Outbox<H::Out>>,
    session: &mut Session,
    (running, pending): (&mut Running, &Pending<H::In, H::Out>),
    cfg: &RespServerConfig,
    report: &mut RespReport,
) -> bool {
    let name = command.name();
    // Only the connection's own commands (and unknown ones, for their error) are parsed
    // here; the handler parses the rest once, and their keys come from the command table.
    if !OWN_COMMANDS.contains(&name) && name != "unknown" {
        if !session.authenticated {
            outbox.push(Some(RespReply::error(NOAUTH)));
            return true;
        }
        return start(command, name, handler, outbox, running, pending).await;
    }
    let parsed = command.parse();
    let own = match &parsed {
        Err(e) => {
            handler.count(name, false);
            // Before AUTH, even an unknown command is answered NOAUTH (as Redis does).
            let e = if session.authenticated {
                e.clone()
            } else {
                NOAUTH.to_string()
            };
            outbox.push(Some(RespReply::error(&e)));
            return true;
        }
        Ok(c) => own_command(c, handler, session, &outbox.resp3, cfg, report),
    };
    if let Some((reply, close)) = own {
        handler.count(name, true);
        outbox.push(Some(reply));
        if close {
            outbox.close_after.set(true);
        }
        return !close;
    }
    if !session.authenticated {
        outbox.push(Some(RespReply::error(NOAUTH)));
        return true;
    }
    drop(parsed);
    start(command, name, handler, outbox, running, pending).await
}

/// The commands the connection answers itself.
const OWN_COMMANDS: [&str; 8] = [
    "PING", "ECHO", "HELLO", "AUTH", "SELECT", "QUIT", "CLIENT", "COMMAND",
];

/// Hands `command` to the handler: at once, or on a task of its own, after the running
/// commands that share a key with it (all of them, for a command on the whole keyspace).
async fn start<H: RespHandler>(
    command: OwnedCommand<H::In>,
    name: &'static str,
    handler: &Rc<H>,
    outbox: &Rc<Outbox<H::Out>>,
    running: &mut Running,
    pending: &Pending<H::In, H::Out>,
) -> bool {
    let keys = command.key_hashes(name);
    let must_wait = running.whole.get()
        || match &keys {
            None => true,
            Some(ks) => {
                let running_keys = running.keys.borrow();
                ks.iter().any(|k| running_keys.contains_key(k))
            }
        };
    let plain_set = name == "SET" && command.arg_count() == 3;
    if must_wait && plain_set && !running.whole.get() {
        let key = keys
            .as_ref()
            .and_then(|ks| ks.first().copied())
            .unwrap_or_default();
        let mut p = pending.borrow_mut();
        match p.as_mut() {
            // The key itself, not only its hash: FNV-1a collides on purpose-made keys, and a
            // SET absorbed into another key's would be answered +OK and never written.
            Some(ps) if ps.key == key && ps.command.arg(1) == command.arg(1) => {
                ps.command = command;
                ps.slots.push(outbox.push(None));
                return true;
            }
            Some(_) => {}
            None => {
                *p = Some(PendingSet {
                    key,
                    command,
                    slots: vec![outbox.push(None)],
                });
                drop(p);
                run_pending_set(key, keys, handler, outbox, running, pending);
                return true;
            }
        }
    }
    if must_wait {
        wait_idle(running).await;
    }
    if let Some(reply) = handler.answer_at_once(name, &command) {
        outbox.push(Some(reply));
        return true;
    }
    running.take(&keys);
    let slot = outbox.push(None);
    // Poll once here: a command that needs no I/O (a cache hit) is answered without a
    // task of its own.
    let mut answer = Box::pin(handler.clone().call(command));
    if let Some(reply) = futures_lite::future::poll_once(answer.as_mut()).await {
        give_back(&running.keys, &running.whole, &keys);
        *slot.reply.borrow_mut() = Some(reply);
        outbox.wake_writer();
        return true;
    }
    running.count.set(running.count.get() + 1);
    let (count, waiters, outbox) = (running.count.clone(), running.waiters.clone(), outbox.clone());
    let (running_keys, whole) = (running.keys.clone(), running.whole.clone());
    glommio::spawn_local(async move {
        let reply = answer.await;
        give_back(&running_keys, &whole, &keys);
        *slot.reply.borrow_mut() = Some(reply);
        count.set(count.get() - 1);
        wake_all(&waiters);
        outbox.wake_writer();
    })
    .detach();
    true
}

/// Runs the connection's pending SET of `key` on a task of its own: counted as running
/// (its key taken) from now, so that every other command naming the key waits for it; once
/// the commands before it that name the key have ended, the last SET it stands for runs,
/// and each of them is answered with that SET's reply.
fn run_pending_set<H: RespHandler>(
    key: u64,
    keys: Option<Vec<u64>>,
    handler: &Rc<H>,
    outbox: &Rc<Outbox<H::Out>>,
    running: &Running,
    pending: &Pending<H::In, H::Out>,
) {
    running.take(&keys);
    running.count.set(running.count.get() + 1);
    let (count, waiters, outbox) = (running.count.clone(), running.waiters.clone(), outbox.clone());
    let (running_keys, whole) = (running.keys.clone(), running.whole.clone());
    let (handler, pending) = (handler.clone(), pending.clone());
    glommio::spawn_local(async move {
        // Until this is the only command naming the key.
        futures_lite::future::poll_fn(|cx| {
            if running_keys.borrow().get(&key).is_none_or(|&n| n <= 1) {
                Poll::Ready(())
            } else {
                waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        })
        .await;
        let set = pending.borrow_mut().take().expect("a pending SET runs once");
        let reply = handler.clone().call(set.command).await;
        let (last, absorbed) = set.slots.split_last().expect("a pending SET has a slot");
        for slot in absorbed {
            let copy = match &reply {
                RespReply::Raw(b) => RespReply::Raw(b.clone()),
                _ => RespReply::error("ERR internal error: a SET answered with a value"),
            };
            handler.count(
                "SET",
                !matches!(&copy, RespReply::Raw(b) if b.first() == Some(&b'-')),
            );
            *slot.reply.borrow_mut() = Some(copy);
        }
        *last.reply.borrow_mut() = Some(reply);
        give_back(&running_keys, &whole, &keys);
        count.set(count.get() - 1);
        wake_all(&waiters);
        outbox.wake_writer();
    })
    .detach();
}

const NOAUTH: &str = "NOAUTH Authentication required.";
const WRONGPASS: &str = "WRONGPASS invalid username-password pair or user is disabled.";

/// Compares in time that depends on the lengths only.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

/// The connection's own commands: (reply, close after it); None for the handler's.
fn own_command<H: RespHandler>(
    c: &RespCommand<'_>,
    handler: &Rc<H>,
    session: &mut Session,
    resp3: &Cell<bool>,
    cfg: &RespServerConfig,
    report: &mut RespReport,
) -> Option<(RespReply<H::Out>, bool)> {
    use RespCommand as C;
    let check = |password: &[u8], user: Option<&[u8]>, session: &mut Session, report: &mut RespReport| {
        let user_ok = user.is_none_or(|u| u == b"default");
        match handler.secret() {
            None => Err("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?".to_string()),
            Some(s) if user_ok && same_secret(s, password) => {
                session.authenticated = true;
                Ok(())
            }
            Some(_) => {
                report.auth_failures += 1;
                session.auth_failures += 1;
                Err(WRONGPASS.to_string())
            }
        }
    };
    Some(match c {
        C::Auth { user, password } => match check(password, *user, session, report) {
            Ok(()) => (RespReply::ok(), false),
            Err(e) => (RespReply::error(&e), session.auth_failures >= AUTH_FAILURES_CLOSE),
        },
        C::Hello { protover, auth } => {
            if let Some((user, password)) = auth {
                if let Err(e) = check(password, Some(user), session, report) {
                    let close = session.auth_failures >= AUTH_FAILURES_CLOSE;
                    return Some((RespReply::error(&e), close));
                }
            }
            if !session.authenticated {
                return Some((RespReply::error(NOAUTH), false));
            }
            let three = match protover {
                None => resp3.get(),
                Some(2) => false,
                Some(3) => true,
                Some(_) => {
                    return Some((
                        RespReply::error("NOPROTO sorry, this protocol version is not supported"),
                        false,
                    ))
                }
            };
            // The reply to HELLO is already in the protocol it asks for.
            resp3.set(three);
            (hello_reply(cfg.client_id, three), false)
        }
        C::Quit => (RespReply::ok(), true),
        _ if !session.authenticated => return None,
        C::Ping(None) => (RespReply::Raw(b"+PONG\r\n".to_vec()), false),
        C::Ping(Some(m)) | C::Echo(m) => (RespReply::bulk_bytes(m), false),
        C::Select(0) => (RespReply::ok(), false),
        C::Select(_) => (RespReply::error("ERR DB index is out of range"), false),
        C::ClientSetName(n) => {
            if n.iter().any(|&b| b <= b' ' || b > b'~') {
                return Some((
                    RespReply::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ),
                    false,
                ));
            }
            session.name = n.to_vec();
            (RespReply::ok(), false)
        }
        C::ClientGetName if session.name.is_empty() => (RespReply::null(), false),
        C::ClientGetName => (RespReply::bulk_bytes(&session.name), false),
        C::ClientSetInfo => (RespReply::ok(), false),
        C::ClientId => (RespReply::integer(cfg.client_id as i64), false),
        C::Command(args) => (command_reply(args), false),
        _ => return None,
    })
}

/// HELLO's map: a map in RESP3, a flat array of names and values in RESP2.
fn hello_reply<B>(client_id: u64, resp3: bool) -> RespReply<B> {
    let mut out = Vec::new();
    if resp3 {
        out.extend_from_slice(b"%7\r\n");
    } else {
        reply::array_header(&mut out, 14);
    }
    for (k, v) in [("server", "hotshard"), ("version", env!("CARGO_PKG_VERSION"))] {
        reply::bulk(&mut out, k.as_bytes());
        reply::bulk(&mut out, v.as_bytes());
    }
    reply::bulk(&mut out, b"proto");
    reply::integer(&mut out, if resp3 { 3 } else { 2 });
    reply::bulk(&mut out, b"id");
    reply::integer(&mut out, client_id as i64);
    reply::bulk(&mut out, b"mode");
    reply::bulk(&mut out, b"standalone");
    reply::bulk(&mut out, b"role");
    reply::bulk(&mut out, b"master");
    reply::bulk(&mut out, b"modules");
    reply::array_header(&mut out, 0);
    RespReply::Raw(out)
}

/// COMMAND, COMMAND COUNT, COMMAND INFO, COMMAND DOCS: what clients ask at connect, each
/// answered with Redis 7's own entries for the commands this front serves (`redis_docs`,
/// RESP2 as Redis writes them; a RESP3 client reads them too).
fn command_reply<B>(args: &[&[u8]]) -> RespReply<B> {
    use super::redis_docs::DOCS;
    let find = |name: &[u8]| {
        DOCS.iter()
            .find(|(n, ..)| n.as_bytes().eq_ignore_ascii_case(name))
    };
    let sub = args
        .first()
        .map(|s| String::from_utf8_lossy(s).to_ascii_uppercase());
    let names = args.get(1..).unwrap_or_default();
    let mut out = Vec::new();
    match sub.as_deref() {
        Some("COUNT") => reply::integer(&mut out, DOCS.len() as i64),
        None => {
            reply::array_header(&mut out, DOCS.len());
            DOCS.iter().for_each(|(_, info, _)| out.extend_from_slice(info));
        }
        Some("INFO") if names.is_empty() => {
            reply::array_header(&mut out, DOCS.len());
            DOCS.iter().for_each(|(_, info, _)| out.extend_from_slice(info));
        }
        Some("INFO") => {
            reply::array_header(&mut out, names.len());
            let mut parts = vec![RespReply::Raw(std::mem::take(&mut out))];
            for n in names {
                parts.push(match find(n) {
                    Some((_, info, _)) => RespReply::Raw(info.to_vec()),
                    None => RespReply::Null,
                });
            }
            return RespReply::Many(parts);
        }
        Some("DOCS") => {
            let found: Vec<&[u8]> = if names.is_empty() {
                DOCS.iter().map(|(_, _, d)| *d).collect()
            } else {
                names.iter().filter_map(|n| find(n)).map(|(_, _, d)| *d).collect()
            };
            reply::array_header(&mut out, 2 * found.len());
            found.iter().for_each(|d| out.extend_from_slice(d));
        }
        Some(other) => reply::error(
            &mut out,
            &format!("ERR unknown subcommand '{other}'. Try COMMAND HELP."),
        ),
    }
    RespReply::Raw(out)
}

/// Appends `r` to the batch: encoded bytes into `heads`, values by reference. Returns the
/// bytes it adds to the batch.
fn encode<B: AsRef<[u8]>>(
    r: RespReply<B>,
    resp3: bool,
    heads: &mut Vec<u8>,
    parts: &mut Vec<Part<B>>,
) -> usize {
    match r {
        RespReply::Null => {
            let start = heads.len();
            heads.extend_from_slice(if resp3 { b"_\r\n" } else { b"$-1\r\n" });
            parts.push(Part::Head(start..heads.len()));
            heads.len() - start
        }
        RespReply::Raw(b) => {
            let start = heads.len();
            heads.extend_from_slice(&b);
            parts.push(Part::Head(start..heads.len()));
            b.len()
        }
        RespReply::Bulk(v) => {
            let start = heads.len();
            let len = v.as_ref().len();
            reply::bulk_header(heads, len);
            parts.push(Part::Head(start..heads.len()));
            parts.push(Part::Value(v));
            let value_end = heads.len();
            heads.extend_from_slice(reply::CRLF);
            parts.push(Part::Head(value_end..heads.len()));
            heads.len() - start + len
        }
        RespReply::Many(rs) => rs.into_iter().map(|r| encode(r, resp3, heads, parts)).sum(),
        RespReply::MapHeader(n) => {
            let start = heads.len();
            if resp3 {
                heads.extend_from_slice(format!("%{n}\r\n").as_bytes());
            } else {
                reply::array_header(heads, 2 * n);
            }
            parts.push(Part::Head(start..heads.len()));
            heads.len() - start
        }
    }
}

enum Part<B> {
    Head(std::ops::Range<usize>),
    Value(B),
}

async fn write_loop<S, B>(mut w: WriteHalf<S>, fd: RawFd, outbox: Rc<Outbox<B>>, timeout: Duration)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: AsRef<[u8]>,
{
    let mut heads: Vec<u8> = Vec::new();
    let mut parts: Vec<Part<B>> = Vec::new();
    'outer: loop {
        // Wait until the reply at the front is ready (or nothing more will come).
        let ready = futures_lite::future::poll_fn(|cx| {
            let slots = outbox.slots.borrow();
            match slots.front() {
                Some(s) if s.reply.borrow().is_some() => return Poll::Ready(true),
                None if outbox.reading_done.get() => return Poll::Ready(false),
                _ => {}
            }
            *outbox.writer_waker.borrow_mut() = Some(cx.waker().clone());
            Poll::Pending
        })
        .await;
        if !ready {
            break;
        }
        // Let other ready commands finish first, then send every ready reply at once.
        futures_lite::future::yield_now().await;
        let mut bytes = 0;
        loop {
            let front = {
                let mut slots = outbox.slots.borrow_mut();
                match slots.front() {
                    Some(s) if s.reply.borrow().is_some() => slots.pop_front(),
                    _ => None,
                }
            };
            let Some(slot) = front else { break };
            let r = slot.reply.borrow_mut().take().expect("filled");
            bytes += encode(r, slot.resp3, &mut heads, &mut parts);
            outbox.in_flight.sub(1);
            if bytes >= WRITE_BATCH_BYTES || parts.len() + 3 >= MAX_SLICES {
                break;
            }
        }
        let last_batch = outbox.close_after.get() && outbox.slots.borrow().is_empty();
        let slices: Vec<&[u8]> = parts
            .iter()
            .map(|p| match p {
                Part::Head(r) => &heads[r.clone()],
                Part::Value(v) => v.as_ref(),
            })
            .filter(|s| !s.is_empty())
            .collect();
        match send_all(fd, &mut w, &slices, timeout).await {
            Sent::All => {}
            Sent::Failed => break,
            Sent::Stalled => {
                outbox.stalled.set(true);
                outbox.closed.set(true);
                outbox.wake_reader();
                break 'outer;
            }
        }
        drop(slices);
        parts.clear();
        heads.clear();
        outbox.wake_reader();
        if w.flush().await.is_err() || last_batch {
            break;
        }
    }
    outbox.closed.set(true);
    outbox.wake_reader();
    let unsent = std::mem::take(&mut *outbox.slots.borrow_mut());
    outbox.in_flight.sub(unsent.len());
    drop(unsent);
    let _ = w.close().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A key leaves the running set when the last command naming it is answered, so a
    /// client streaming new keys while others run keeps only those in flight (before, the
    /// set was cleared only when nothing ran, and grew without bound under a stream).
    #[test]
    fn running_keys_leave_with_their_last_command() {
        let running = Running {
            count: Rc::new(Cell::new(0)),
            keys: Rc::new(RefCell::new(HashMap::new())),
            whole: Rc::new(Cell::new(false)),
            waiters: Rc::new(RefCell::new(Vec::new())),
        };
        let a = Some(vec![key_hash(b"a"), key_hash(b"b")]);
        let b = Some(vec![key_hash(b"b")]);
        running.take(&a);
        running.take(&b);
        give_back(&running.keys, &running.whole, &a);
        assert_eq!(
            running.keys.borrow().len(),
            1,
            "b is still named by a running command"
        );
        give_back(&running.keys, &running.whole, &b);
        assert!(running.keys.borrow().is_empty());
        for i in 0..10_000u32 {
            let k = Some(vec![key_hash(&i.to_le_bytes())]);
            running.take(&k);
            give_back(&running.keys, &running.whole, &k);
        }
        assert!(
            running.keys.borrow().is_empty(),
            "a stream of new keys leaves nothing"
        );
        running.take(&None);
        assert!(running.whole.get());
        give_back(&running.keys, &running.whole, &None);
        assert!(!running.whole.get());
    }
}
