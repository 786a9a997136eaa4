//! Reading and writing frames on any `AsyncRead`/`AsyncWrite` (glommio's TcpStream, or
//! tokio's through a compat adapter). Lengths are checked before anything is allocated.

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::codec::{header_buf, HeaderBuf};
use crate::error::WireError;
use crate::frame::{Preamble, PREAMBLE_BYTES};

fn io_err(e: std::io::Error) -> WireError {
    match e.kind() {
        // The peer closed (or reset) the connection.
        std::io::ErrorKind::UnexpectedEof
        | std::io::ErrorKind::BrokenPipe
        | std::io::ErrorKind::ConnectionReset => WireError::Closed,
        // What a socket read timeout looks like (EAGAIN on Linux).
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => WireError::TimedOut,
        _ => WireError::Malformed(format!("i/o: {e}")),
    }
}

/// Reads a preamble and its header. `Ok(None)` on a clean end of stream between frames.
pub async fn read_head<R: AsyncRead + Unpin>(r: &mut R) -> Result<Option<(Preamble, HeaderBuf)>, WireError> {
    let mut pre = [0u8; PREAMBLE_BYTES];
    let n = r.read(&mut pre).await.map_err(io_err)?;
    if n == 0 {
        return Ok(None);
    }
    r.read_exact(&mut pre[n..]).await.map_err(io_err)?;
    let preamble = Preamble::decode(&pre)?;
    let mut header = header_buf(preamble.header_len as usize);
    r.read_exact(&mut header).await.map_err(io_err)?;
    Ok(Some((preamble, header)))
}

/// Reads exactly `buf.len()` payload bytes.
pub async fn read_payload<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<(), WireError> {
    r.read_exact(buf).await.map_err(io_err)
}

/// Reads and throws away `len` bytes (a payload that has nowhere to go).
pub async fn skip_payload<R: AsyncRead + Unpin>(r: &mut R, mut len: usize) -> Result<(), WireError> {
    let mut scratch = [0u8; 4096];
    while len > 0 {
        let n = len.min(scratch.len());
        r.read_exact(&mut scratch[..n]).await.map_err(io_err)?;
        len -= n;
    }
    Ok(())
}

/// Writes an encoded preamble+header, then the payload straight from its buffer.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    w: &mut W,
    head: &[u8],
    payload: &[u8],
) -> Result<(), WireError> {
    w.write_all(head).await.map_err(io_err)?;
    if !payload.is_empty() {
        w.write_all(payload).await.map_err(io_err)?;
    }
    Ok(())
}

pub async fn flush<W: AsyncWrite + Unpin>(w: &mut W) -> Result<(), WireError> {
    w.flush().await.map_err(io_err)
}
