//! What the client needs from an executor: connecting a stream and putting a deadline on a
//! future. Implemented for glommio here and for tokio behind the `tokio` feature.

use std::future::Future;
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};

pub trait Runtime: 'static {
    type Stream: AsyncRead + AsyncWrite + Unpin + 'static;
    fn connect(addr: &str) -> impl Future<Output = std::io::Result<Self::Stream>>;
    /// `None` if `fut` did not finish within `limit`.
    fn timeout<F: Future>(limit: Duration, fut: F) -> impl Future<Output = Option<F::Output>>;
}

/// glommio: the node's executor and the bench's.
#[cfg(feature = "glommio")]
pub struct Glommio;

#[cfg(feature = "glommio")]
impl Runtime for Glommio {
    type Stream = glommio::net::TcpStream;

    async fn connect(addr: &str) -> std::io::Result<Self::Stream> {
        let stream = glommio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        stream
            .set_nodelay(true)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(stream)
    }

    async fn timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
        let fut = std::pin::pin!(fut);
        let timer = glommio::timer::Timer::new(limit);
        futures_lite::future::or(async { Some(fut.await) }, async {
            timer.await;
            None
        })
        .await
    }
}

/// tokio, for gateways (which mostly are tokio): use it on a current-thread runtime or a
/// `LocalSet`, since the client is not `Send`.
#[cfg(feature = "tokio")]
pub struct Tokio;

#[cfg(feature = "tokio")]
impl Runtime for Tokio {
    type Stream = tokio_util::compat::Compat<tokio::net::TcpStream>;

    async fn connect(addr: &str) -> std::io::Result<Self::Stream> {
        use tokio_util::compat::TokioAsyncReadCompatExt;
        let stream = tokio::net::TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(stream.compat())
    }

    async fn timeout<F: Future>(limit: Duration, fut: F) -> Option<F::Output> {
        tokio::time::timeout(limit, fut).await.ok()
    }
}
