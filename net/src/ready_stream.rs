//! A client stream for code running on a shard's executor (node-to-node calls down a
//! chain): reads with a plain non-blocking `recv` and readiness from the thread's epoll
//! set (`hotshard_reactor`), writes with a plain non-blocking `send`, and glommio's own
//! stream only when the socket is full, as the node's server and the generator do.
//! glommio's stream alone took 2-3 ms per replication round trip under load here: its
//! completions wait for the busy executor to look at its ring.

use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use glommio::net::TcpStream;
use hotshard_reactor::ReadySocket;

pub use hotshard_reactor::{Outstanding, Readiness, ReadyListener};

/// A socket's write side: a plain non-blocking `send` first, and `inner` (the executor's
/// stream) only when the socket is full.
pub struct SendDirect<W> {
    inner: W,
    fd: RawFd,
}

impl<W> SendDirect<W> {
    /// Writes to `fd`, which `inner` owns.
    pub fn new(inner: W, fd: RawFd) -> SendDirect<W> {
        SendDirect { inner, fd }
    }
}

impl<W: AsyncWrite + Unpin> AsyncWrite for SendDirect<W> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        // SAFETY: send reads at most buf.len() bytes from buf.
        let n = unsafe {
            libc::send(
                self.fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
        if n >= 0 {
            return Poll::Ready(Ok(n as usize));
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::WouldBlock {
            return Poll::Ready(Err(err));
        }
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A connected TCP stream read through the thread's readiness set.
pub struct ReadyStream {
    reader: ReadySocket<()>,
    writer: SendDirect<TcpStream>,
}

impl ReadyStream {
    /// Wraps a connected stream (on a glommio executor).
    pub fn new(stream: TcpStream) -> io::Result<ReadyStream> {
        let fd = stream.as_raw_fd();
        let set = Readiness::for_this_thread()?;
        let reader = ReadySocket::new((), fd, set).map_err(|(e, _)| e)?;
        Ok(ReadyStream {
            reader,
            writer: SendDirect::new(stream, fd),
        })
    }
}

impl AsyncRead for ReadyStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.reader).poll_read(cx, buf)
    }
}

impl AsyncWrite for ReadyStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.writer).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.writer).poll_close(cx)
    }
}

/// glommio with streams read through the thread's readiness set (`ReadyStream`).
pub struct GlommioReady;

impl crate::runtime::Runtime for GlommioReady {
    type Stream = ReadyStream;

    async fn connect(addr: &str) -> io::Result<ReadyStream> {
        let stream = crate::runtime::Glommio::connect(addr).await?;
        ReadyStream::new(stream)
    }

    async fn timeout<F: std::future::Future>(limit: Duration, fut: F) -> Option<F::Output> {
        crate::runtime::Glommio::timeout(limit, fut).await
    }
}
