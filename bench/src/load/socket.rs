//! The generator's side of a connection, built like the node's: reads with a plain
//! non-blocking `recv` and readiness from the thread's epoll set (`hotshard_reactor`),
//! writes with a plain non-blocking `send`, and the executor's stream only when the socket
//! is full (`hotshard_net::ready_stream::SendDirect`, which the node's links down a chain
//! use too). glommio's own read arms an io_uring poll after every short read, whose
//! completions interrupt the busy generator; without this the generator spent 3.1 µs of
//! CPU per 4 KiB Redis SET and was the bottleneck of that comparison.

use std::os::unix::io::AsRawFd;

use futures_lite::io::{ReadHalf, WriteHalf};
use glommio::net::TcpStream;
use hotshard_net::ready_stream::SendDirect;
use hotshard_reactor::{Readiness, ReadySocket};

pub type Reader = ReadySocket<ReadHalf<TcpStream>>;
pub type Writer = SendDirect<WriteHalf<TcpStream>>;

/// Splits a connected stream into the generator's reader and writer.
pub fn split(stream: TcpStream) -> anyhow::Result<(Reader, Writer)> {
    let fd = stream.as_raw_fd();
    let (r, w) = futures_lite::io::split(stream);
    let set = Readiness::for_this_thread()?;
    // The generator polls while it waits for replies; on this VM it shares core 1 with the
    // kworker that finishes each durable write, which must not wait for its time slice.
    set.set_yield_when_idle(true);
    let reader = ReadySocket::new(r, fd, set).map_err(|(e, _)| anyhow::anyhow!("readiness: {e}"))?;
    Ok((reader, SendDirect::new(w, fd)))
}
