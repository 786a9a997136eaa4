//! Connection readiness owned by the shard: one epoll set per executor thread, drained
//! without blocking on every turn of the executor while there is traffic, and slept on
//! through the executor's reactor only when the shard has been idle for a moment.
//!
//! Why: glommio 0.9's socket read arms an io_uring poll after every read that does not fill
//! the buffer, and its rings do not set COOP_TASKRUN, so under load each completion
//! interrupts the running shard (a reschedule IPI) — a fifth of the shard's CPU in the
//! cache-GET benchmark. Reading with a plain non-blocking `recv` and learning readiness from
//! an edge-triggered epoll set that the shard drains itself costs one `epoll_wait(0)` per
//! executor turn instead (measured: +23% cache-GET throughput, BENCHMARKS.md).
//!
//! Sleeping: after `IDLE_SPIN` (50 µs) without events, the poller asks a helper thread (which
//! inherits the shard's core) to block in `epoll_wait` on the set, and waits for the
//! helper's wake-up byte on a glommio socket. Events that arrive in between stay queued in
//! the set, so none is lost. While requests are outstanding on this thread (`Outstanding`:
//! a server answering them, a client waiting for replies) it polls for up to `BUSY_SPIN`
//! instead (counted from the last event or change of that count): their next message is a
//! device access or a round trip away, and waking from the sleep costs about 40 µs on this
//! VM. A device-GET trace showed the shard and the generator each sleeping through every
//! wave of 32 reads this way (`bench/trace-device-get.sh`, BENCHMARKS.md session 7).

use std::cell::{Cell, RefCell};
use std::io::{self, Read, Write};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_lite::{AsyncRead, AsyncReadExt};

/// How long the poller keeps draining an empty set before it sleeps. Longer than a
/// loopback round trip, so that a request/response conversation stays in polling mode:
/// ping p50 15 µs at 50 µs, but 65 µs at 10 µs (the shard sleeps between pings and each
/// one pays the wake-up). Durable PUTs, where the shard idles while the device works,
/// measured 60K ops/s at both 10 and 50 µs (streamed) and 39-44K at 250 µs, where the
/// spinning takes turns from the device poller. Cache GETs do not change.
const IDLE_SPIN: Duration = Duration::from_micros(50);
/// How long the poller keeps draining an empty set while requests are outstanding on its
/// thread: longer than a device read or a durable write, so that the shard (or client)
/// waiting for one does not sleep through the traffic that follows it.
const BUSY_SPIN: Duration = Duration::from_millis(1);
/// The most of one turn of the executor (the time between two passes of the poller) that
/// counts as idle: a longer turn means other tasks had work.
const BUSY_GAP: Duration = Duration::from_micros(200);
/// Events taken per `epoll_wait`.
const EVENTS_PER_WAIT: usize = 64;

/// What a registered socket's reader knows of its edges.
enum Edge {
    /// No edge since the reader last looked.
    None,
    /// The reader waits for the next edge.
    Awaited(Waker),
    /// An edge came since the reader last looked (and its waker, if any, was woken).
    Came,
}

pub struct Readiness {
    epfd: RawFd,
    edges: RefCell<Vec<Edge>>,
    free: RefCell<Vec<usize>>,
    /// Tells the helper to wait on the set (one byte per sleep); closing it ends the helper.
    helper_ctl: RefCell<StdUnixStream>,
    /// Requests outstanding on this thread, over every `Outstanding` counter.
    outstanding: Cell<usize>,
    /// Bumped whenever that total changes: a request taken on or answered counts as
    /// traffic, as an event does.
    changes: Cell<u64>,
    /// Times the poller has gone to sleep.
    sleeps: Cell<u64>,
    /// While polling idle, give the core to any other thread ready on it (`sched_yield`).
    yield_when_idle: Cell<bool>,
    /// Whether something else on this thread is polling right now (the device's poller with
    /// I/O in flight): then the poller never sleeps (`set_busy_probe`).
    busy_probe: RefCell<Option<Box<dyn Fn() -> bool>>>,
}

/// One connection's outstanding requests (a server's being answered, a client's waiting
/// for replies), added to its thread's total, which keeps the poller awake. Whatever is
/// still counted when it is dropped (a connection that ended) leaves the total with it.
pub struct Outstanding {
    here: Cell<usize>,
    set: Option<Rc<Readiness>>,
}

impl Outstanding {
    /// A counter for this thread's set (counted nowhere else if the set cannot be made).
    /// Like `Readiness::for_this_thread`, must be called inside a glommio executor.
    pub fn for_this_thread() -> Self {
        Outstanding {
            here: Cell::new(0),
            set: Readiness::for_this_thread().ok(),
        }
    }

    pub fn get(&self) -> usize {
        self.here.get()
    }

    pub fn add(&self, n: usize) {
        self.here.set(self.here.get() + n);
        if let Some(s) = &self.set {
            s.outstanding.set(s.outstanding.get() + n);
            s.changes.set(s.changes.get().wrapping_add(1));
        }
    }

    pub fn sub(&self, n: usize) {
        let n = n.min(self.here.get());
        self.here.set(self.here.get() - n);
        if let Some(s) = &self.set {
            s.outstanding.set(s.outstanding.get().saturating_sub(n));
            s.changes.set(s.changes.get().wrapping_add(1));
        }
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.sub(self.here.get());
    }
}

thread_local! {
    static THIS_THREAD: RefCell<Option<Rc<Readiness>>> = const { RefCell::new(None) };
}

impl Readiness {
    /// This executor thread's set, created (with its poller task and helper thread) on
    /// first use. Must be called from inside a glommio executor.
    pub fn for_this_thread() -> io::Result<Rc<Readiness>> {
        if let Some(r) = THIS_THREAD.with(|t| t.borrow().clone()) {
            return Ok(r);
        }
        let r = Readiness::start()?;
        THIS_THREAD.with(|t| *t.borrow_mut() = Some(r.clone()));
        Ok(r)
    }

    fn start() -> io::Result<Rc<Readiness>> {
        // SAFETY: plain syscalls; each returned fd is checked and then owned.
        let epfd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if epfd < 0 {
            return Err(io::Error::last_os_error());
        }
        let (ctl_shard, ctl_helper) = StdUnixStream::pair()?;
        let (wake_helper, wake_shard) = StdUnixStream::pair()?;
        // SAFETY: a fresh fd we own, handed to glommio.
        let wake_shard = unsafe { glommio::net::UnixStream::from_raw_fd(wake_shard.into_raw_fd()) };
        spawn_helper(epfd, ctl_helper, wake_helper)?;
        let r = Rc::new(Readiness {
            epfd,
            edges: RefCell::new(Vec::new()),
            free: RefCell::new(Vec::new()),
            helper_ctl: RefCell::new(ctl_shard),
            outstanding: Cell::new(0),
            changes: Cell::new(0),
            sleeps: Cell::new(0),
            yield_when_idle: Cell::new(false),
            busy_probe: RefCell::new(None),
        });
        glommio::spawn_local(poller(Rc::downgrade(&r), wake_shard)).detach();
        Ok(r)
    }

    /// Adds a socket (edge-triggered, for reading); returns its token.
    pub fn register(&self, fd: RawFd) -> io::Result<usize> {
        let token = match self.free.borrow_mut().pop() {
            Some(t) => t,
            None => {
                let mut e = self.edges.borrow_mut();
                e.push(Edge::None);
                e.len() - 1
            }
        };
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP | libc::EPOLLET) as u32,
            u64: token as u64,
        };
        // SAFETY: epoll_ctl on our set and the caller's open socket.
        if unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            self.free.borrow_mut().push(token);
            return Err(io::Error::last_os_error());
        }
        Ok(token)
    }

    /// Requests outstanding on this thread (the sum of its `Outstanding` counters).
    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// How many times the poller has gone to sleep since the set was created.
    pub fn sleeps(&self) -> u64 {
        self.sleeps.get()
    }

    /// Tells the poller when the executor is kept busy by another poller on this thread
    /// (the device's, while I/O is in flight): while `probe` says so, the poller keeps
    /// draining the set instead of sleeping. Why: the sleeping poller is woken through
    /// glommio's reactor, which glommio reaps only when its task queues run dry or its
    /// preemption timer (100 ms) fires; a device poller that re-schedules itself while I/O
    /// is in flight keeps the queue from running dry, so under GC's continuous reads every
    /// request arriving during a sleep waited for the timer: the steady state's p99.9 of
    /// 50-70 ms (issue 36, BENCHMARKS.md). Spinning costs nothing then: the core is busy
    /// polling anyway, and one `epoll_wait(0)` per turn is what a busy shard pays.
    pub fn set_busy_probe(&self, probe: impl Fn() -> bool + 'static) {
        *self.busy_probe.borrow_mut() = Some(Box::new(probe));
    }

    fn other_poller_busy(&self) -> bool {
        self.busy_probe.borrow().as_ref().is_some_and(|p| p())
    }

    /// Whether the poller, while it polls with nothing to do, first lets any other thread
    /// ready on its core run (`sched_yield`). For a thread that shares its core with work
    /// the kernel does for it, such as the load generator on the core that takes the
    /// disk's interrupts, whose kworker finishes every durable write: spinning without
    /// yielding starved it (durable PUT 114K → 17K ops/s, BENCHMARKS.md). Off for a shard,
    /// which owns its core: there a yield would hand whole scheduler slices to any CPU-bound
    /// neighbour.
    pub fn set_yield_when_idle(&self, on: bool) {
        self.yield_when_idle.set(on);
    }

    /// Removes a socket before it is closed.
    pub fn deregister(&self, fd: RawFd, token: usize) {
        // SAFETY: epoll_ctl on our set; a failure (fd already closed) leaves nothing behind.
        unsafe { libc::epoll_ctl(self.epfd, libc::EPOLL_CTL_DEL, fd, std::ptr::null_mut()) };
        if let Some(e) = self.edges.borrow_mut().get_mut(token) {
            *e = Edge::None;
        }
        self.free.borrow_mut().push(token);
    }

    /// The reader of `token` waits for its next edge.
    fn wait_readable(&self, token: usize, waker: &Waker) {
        if let Some(e) = self.edges.borrow_mut().get_mut(token) {
            match e {
                Edge::Awaited(old) if old.will_wake(waker) => {}
                _ => *e = Edge::Awaited(waker.clone()),
            }
        }
    }

    /// Whether an edge came for `token` since `forget_edges`; forgets it.
    fn take_edge(&self, token: usize) -> bool {
        self.edges
            .borrow_mut()
            .get_mut(token)
            .is_some_and(|e| matches!(std::mem::replace(e, Edge::None), Edge::Came))
    }

    /// The reader of `token` has just drained its socket: edges before now are spent.
    fn forget_edges(&self, token: usize) {
        if let Some(e) = self.edges.borrow_mut().get_mut(token) {
            *e = Edge::None;
        }
    }

    /// Takes what is ready without blocking and wakes its readers; returns how many.
    fn drain(&self) -> usize {
        // SAFETY: zeroed epoll_event is a valid value; epoll_wait fills at most the array.
        let mut events: [libc::epoll_event; EVENTS_PER_WAIT] = unsafe { std::mem::zeroed() };
        let n = unsafe { libc::epoll_wait(self.epfd, events.as_mut_ptr(), EVENTS_PER_WAIT as i32, 0) };
        if n <= 0 {
            return 0;
        }
        for ev in &events[..n as usize] {
            let waker = match self.edges.borrow_mut().get_mut(ev.u64 as usize) {
                Some(e) => match std::mem::replace(e, Edge::Came) {
                    Edge::Awaited(w) => Some(w),
                    _ => None,
                },
                None => None,
            };
            if let Some(w) = waker {
                w.wake();
            }
        }
        n as usize
    }
}

impl Drop for Readiness {
    fn drop(&mut self) {
        // SAFETY: our own fd; the helper sees its control socket close and ends.
        unsafe { libc::close(self.epfd) };
    }
}

/// The helper: on each byte from the shard, blocks until the set has something, then
/// sends the shard a byte. Ends when the shard's side of the control socket closes.
fn spawn_helper(epfd: RawFd, mut ctl: StdUnixStream, mut wake: StdUnixStream) -> io::Result<()> {
    // An outer set holding the shard's set, level-triggered: waiting on it does not take
    // the shard's events.
    // SAFETY: plain syscalls on fds we own.
    let outer = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
    if outer < 0 {
        return Err(io::Error::last_os_error());
    }
    // The control socket is in the outer set too, so that the helper also wakes (and
    // ends) when the shard's side closes while it waits.
    for (fd, token) in [(epfd, 0u64), (ctl.as_raw_fd(), 1)] {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        if unsafe { libc::epoll_ctl(outer, libc::EPOLL_CTL_ADD, fd, &mut ev) } < 0 {
            let e = io::Error::last_os_error();
            unsafe { libc::close(outer) };
            return Err(e);
        }
    }
    std::thread::Builder::new()
        .name("hotshard-net-wake".into())
        .spawn(move || {
            let mut byte = [0u8; 1];
            while matches!(ctl.read(&mut byte), Ok(1)) {
                let mut ev = libc::epoll_event { events: 0, u64: 0 };
                // SAFETY: waits on our outer set for one event.
                let n = unsafe { libc::epoll_wait(outer, &mut ev, 1, -1) };
                if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                    break;
                }
                if wake.write_all(&[1]).is_err() {
                    break;
                }
            }
            // SAFETY: our own fd.
            unsafe { libc::close(outer) };
        })?;
    Ok(())
}

/// Drains the set while there is traffic; sleeps through the reactor when idle.
async fn poller(me: std::rc::Weak<Readiness>, mut wake: glommio::net::UnixStream) {
    // Time spent polling an empty set since the last traffic. A pass counts the time since
    // the previous one only up to `BUSY_GAP`: a longer wait for the turn means other tasks
    // were running (a GC step's copying, say), and that is no sign of an idle shard.
    let mut idle = Duration::ZERO;
    let mut last_pass = Instant::now();
    let mut changes_seen = 0u64;
    let mut buf = [0u8; 64];
    loop {
        let Some(r) = me.upgrade() else { return };
        let now = Instant::now();
        let gap = now.duration_since(last_pass);
        last_pass = now;
        let changed = r.changes.get() != changes_seen;
        changes_seen = r.changes.get();
        if r.drain() > 0 || changed {
            idle = Duration::ZERO;
            drop(r);
            futures_lite::future::yield_now().await;
            continue;
        }
        if r.other_poller_busy() {
            // The device's poller keeps the executor turning: the shard is not idle.
            idle = Duration::ZERO;
        } else {
            idle += gap.min(BUSY_GAP);
        }
        let spin = if r.outstanding.get() > 0 {
            BUSY_SPIN
        } else {
            IDLE_SPIN
        };
        if idle < spin {
            if r.yield_when_idle.get() {
                // SAFETY: no arguments; its result does not matter.
                unsafe { libc::sched_yield() };
            }
            drop(r);
            futures_lite::future::yield_now().await;
            continue;
        }
        // Sleep: the helper waits on the set and wakes us through the reactor.
        r.sleeps.set(r.sleeps.get() + 1);
        let asked = r.helper_ctl.borrow_mut().write_all(&[1]).is_ok();
        drop(r);
        if !asked {
            return;
        }
        match wake.read(&mut buf).await {
            Ok(n) if n > 0 => {}
            _ => return,
        }
        idle = Duration::ZERO;
    }
}

/// Reads a socket with plain non-blocking `recv`, waiting for readiness through the
/// shard's set. `inner` is kept only so that the stream stays open while this reads it.
pub struct ReadySocket<R> {
    _inner: R,
    fd: RawFd,
    token: usize,
    readiness: Rc<Readiness>,
    /// The last `recv` returned less than it was asked for: the socket was empty then, so
    /// the next `recv` is tried only after an edge (one `recv` per message instead of two,
    /// the second failing with EAGAIN: a sixth of a one-command-per-round-trip GET's
    /// system calls).
    drained: bool,
    /// `recv` calls made (for the tests).
    recvs: u64,
}

impl<R> ReadySocket<R> {
    /// Registers `fd`; on failure hands `inner` back with the error.
    pub fn new(inner: R, fd: RawFd, readiness: Rc<Readiness>) -> Result<Self, (io::Error, R)> {
        let token = match readiness.register(fd) {
            Ok(t) => t,
            Err(e) => return Err((e, inner)),
        };
        Ok(ReadySocket {
            _inner: inner,
            fd,
            token,
            readiness,
            drained: false,
            recvs: 0,
        })
    }

    /// How many `recv` calls this socket has made.
    pub fn recvs(&self) -> u64 {
        self.recvs
    }
}

impl<R> Drop for ReadySocket<R> {
    fn drop(&mut self) {
        self.readiness.deregister(self.fd, self.token);
    }
}

impl<R> AsRawFd for ReadySocket<R> {
    fn as_raw_fd(&self) -> RawFd {
        self.fd
    }
}

impl<R: Unpin> AsyncRead for ReadySocket<R> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        // Emptied by the last recv and no edge since: data that came after that recv raised
        // an edge (edge-triggered epoll queues one for every arrival), which the poller
        // has not taken yet, or there is none. Either way the wake-up comes.
        if self.drained && !buf.is_empty() && !self.readiness.take_edge(self.token) {
            self.readiness.wait_readable(self.token, cx.waker());
            return Poll::Pending;
        }
        self.recvs += 1;
        // SAFETY: recv writes at most buf.len() bytes into buf.
        let n = unsafe { libc::recv(self.fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            // A read short of the buffer emptied the socket: edges so far are spent.
            self.drained = n > 0 && (n as usize) < buf.len();
            if self.drained {
                self.readiness.forget_edges(self.token);
            }
            return Poll::Ready(Ok(n as usize));
        }
        self.drained = false;
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Poll::Ready(Err(err));
        }
        // The socket is drained, so its next data raises an edge in the set, which the
        // poller turns into a wake-up (also if it came before this line).
        self.readiness.wait_readable(self.token, cx.waker());
        Poll::Pending
    }
}

/// Accepts from a listening socket with a plain non-blocking `accept4`, waiting for the
/// next connection through the shard's set.
///
/// Why not glommio's accept: it keeps an io_uring accept in flight on the socket, and the
/// ring holds the socket until the kernel tears the ring down, some time after the process
/// has exited. A killed node's port so went on completing handshakes for about 0.2 s and
/// closing each connection unanswered, while the node that replaced it waited to bind; a
/// client that waited for the port to accept read "connection closed". An epoll set holds
/// no reference: the socket dies with the process, and a connect is refused until the new
/// node listens.
pub struct ReadyListener {
    fd: RawFd,
    token: usize,
    readiness: Rc<Readiness>,
}

impl ReadyListener {
    /// Registers the listening socket `fd` (which the caller keeps open for as long as
    /// this lives) and makes it non-blocking.
    pub fn new(fd: RawFd, readiness: Rc<Readiness>) -> io::Result<ReadyListener> {
        // SAFETY: fcntl on the caller's open socket.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
            return Err(io::Error::last_os_error());
        }
        let token = readiness.register(fd)?;
        Ok(ReadyListener { fd, token, readiness })
    }

    /// The next connection: a blocking, close-on-exec socket, as glommio's accept gives.
    pub async fn accept(&self) -> io::Result<std::os::fd::OwnedFd> {
        std::future::poll_fn(|cx| {
            // SAFETY: accept4 on our listening socket; a returned descriptor is new and ours.
            let fd = unsafe {
                libc::accept4(
                    self.fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_CLOEXEC,
                )
            };
            if fd >= 0 {
                // SAFETY: the descriptor accept4 just returned, owned by nobody else.
                return Poll::Ready(Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }));
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::WouldBlock {
                return Poll::Ready(Err(err));
            }
            // The backlog is empty, so the next connection raises an edge in the set.
            self.readiness.wait_readable(self.token, cx.waker());
            Poll::Pending
        })
        .await
    }
}

impl Drop for ReadyListener {
    fn drop(&mut self) {
        self.readiness.deregister(self.fd, self.token);
    }
}
