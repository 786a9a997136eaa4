//! A shard's listening sockets: bound without SO_REUSEPORT, accepted from (through the
//! shard's epoll set, never an io_uring accept) until the node stops, taken out of LISTEN
//! when it stops, and kept working when the process runs out of file descriptors.

use std::cell::{Cell, RefCell};
use std::os::unix::io::{AsRawFd, FromRawFd, IntoRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use glommio::net::TcpStream;
use hotshard_net::ready_stream::{Readiness, ReadyListener};

/// How often a waiting accept looks at the shutdown flag (not on the data path).
pub const SHUTDOWN_POLL: Duration = Duration::from_millis(50);
/// How long a starting shard retries a port still held by a previous, killed process.
const BIND_RETRY: Duration = Duration::from_secs(10);
/// Pause after a failed accept. glommio's accept first tries a plain `accept` and returns
/// its error at once, so retrying without a pause never lets the shard's other tasks run:
/// with the descriptors used up, the shard stopped answering (the overload test).
const ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// Most pending connections closed per failed accept when descriptors run out.
const SHED_PER_ROUND: usize = 256;

pub struct Listener {
    /// Accepts through the shard's epoll set (see `ReadyListener` for why not io_uring).
    /// Declared before `_socket` (held open, closed on drop): it leaves the set before the
    /// socket closes.
    ready: ReadyListener,
    _socket: std::net::TcpListener,
    fd: RawFd,
    /// A descriptor held in reserve: closing it lets the shard accept (and close) the
    /// connections it cannot serve when the process is out of descriptors.
    spare: RefCell<Option<std::fs::File>>,
}

/// Waits until the flag is set.
pub async fn wait_for_shutdown(flag: &AtomicBool) {
    while !flag.load(Ordering::Relaxed) {
        glommio::timer::sleep(SHUTDOWN_POLL).await;
    }
}

/// `work`'s output, or `None` if the shutdown flag is set first.
async fn unless_stopped<T>(work: impl std::future::Future<Output = T>, shutdown: &AtomicBool) -> Option<T> {
    futures_lite::future::or(async { Some(work.await) }, async {
        wait_for_shutdown(shutdown).await;
        None
    })
    .await
}

impl Listener {
    /// Binds without SO_REUSEPORT (which glommio's `bind` sets): with it, a second node
    /// could share the port, and a killed node's socket, kept alive for a moment by its
    /// io_uring, would take and then reset some of the new node's connections. A port still
    /// held that way is retried for a while.
    pub async fn bind(addr: &str) -> std::io::Result<Listener> {
        let deadline = std::time::Instant::now() + BIND_RETRY;
        let std_listener = loop {
            match std::net::TcpListener::bind(addr) {
                Ok(l) => break l,
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
                {
                    glommio::timer::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e),
            }
        };
        Listener::from_std(std_listener)
    }

    /// Waits until nothing listens on `addr` (a killed process's socket may linger for a
    /// moment; retried for a while), by binding it without SO_REUSEPORT and letting it go:
    /// the main thread's check before the shards bind their `bind_reuseport` sockets, so
    /// that a port held by another process is an error instead of a shared port.
    pub fn check_free(addr: &str) -> std::io::Result<()> {
        let deadline = std::time::Instant::now() + BIND_RETRY;
        loop {
            match std::net::TcpListener::bind(addr) {
                Err(e)
                    if e.kind() == std::io::ErrorKind::AddrInUse && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(100));
                }
                bound => return bound.map(drop),
            }
        }
    }

    /// One of several sockets on `addr` with SO_REUSEPORT: each shard binds its own and the
    /// kernel spreads new connections over them by their addresses. (One socket shared
    /// through copies of its descriptor does not work: glommio switches O_NONBLOCK on and
    /// off around each accept, the flag is shared by the copies, and a shard caught between
    /// another's switches blocked its whole thread in `accept`.)
    pub fn bind_reuseport(addr: &str) -> std::io::Result<Listener> {
        use socket2::{Domain, Protocol, Socket, Type};
        let addr: std::net::SocketAddr = addr
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr}: {e}")))?;
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_port(true)?;
        // As std's bind does: connections a killed node left closing on the port must not
        // keep the next node from binding it.
        socket.set_reuse_address(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Listener::from_std(socket.into())
    }

    /// Accepts from a bound, listening socket, through this thread's epoll set (so: inside
    /// a glommio executor).
    pub fn from_std(socket: std::net::TcpListener) -> std::io::Result<Listener> {
        let fd = socket.as_raw_fd();
        let ready = ReadyListener::new(fd, Readiness::for_this_thread()?)?;
        Ok(Listener {
            ready,
            _socket: socket,
            fd,
            spare: RefCell::new(std::fs::File::open("/dev/null").ok()),
        })
    }

    /// The next connection, or `None` once the shutdown flag is set. Accept errors are
    /// counted in `errors` and waited out, never returned.
    pub async fn next(&self, shutdown: &AtomicBool, errors: &Cell<u64>) -> Option<TcpStream> {
        loop {
            let accepted = unless_stopped(self.ready.accept(), shutdown).await?;
            let err = match accepted {
                // SAFETY: a connected TCP socket just accepted, whose ownership moves to
                // the glommio stream.
                Ok(fd) => return Some(unsafe { TcpStream::from_raw_fd(fd.into_raw_fd()) }),
                Err(e) => e,
            };
            errors.set(errors.get() + 1);
            if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) {
                self.shed_pending();
            }
            tracing::debug!("accept: {err}");
            unless_stopped(glommio::timer::sleep(ACCEPT_BACKOFF), shutdown).await?;
        }
    }

    /// Out of descriptors: closes the spare one, accepts and closes the connections
    /// waiting in the backlog (their clients see the close at once instead of hanging in
    /// it), then takes the spare back.
    fn shed_pending(&self) {
        drop(self.spare.borrow_mut().take());
        self.close_backlog();
        *self.spare.borrow_mut() = std::fs::File::open("/dev/null").ok();
    }

    /// Accepts and closes up to `SHED_PER_ROUND` waiting connections (the socket is
    /// non-blocking: `ReadyListener` made it so).
    fn close_backlog(&self) {
        for _ in 0..SHED_PER_ROUND {
            // SAFETY: a non-blocking accept on our listening socket; a returned descriptor
            // is ours and closed at once.
            let fd = unsafe {
                libc::accept4(
                    self.fd,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                    libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                )
            };
            if fd < 0 {
                break;
            }
            // SAFETY: the descriptor accept4 just returned.
            unsafe { libc::close(fd) };
        }
    }

    /// Takes the socket out of LISTEN at once, so that a connect is refused (which clients
    /// retry) while the shard drains. (When accepts went through io_uring, closing was not
    /// enough: the ring kept the socket listening until it was torn down after the process
    /// exited, and 4 of 10 connects right after a node exited were accepted, then reset.)
    pub fn stop(&self) {
        // SAFETY: `fd` is the listener's own descriptor, open for as long as `self` lives.
        unsafe { libc::shutdown(self.fd, libc::SHUT_RDWR) };
    }
}
