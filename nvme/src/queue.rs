//! The interface every backend implements: one queue per shard, async reads, writes,
//! vectored writes and flushes on owned DMA buffers.

use crate::device::DeviceInfo;
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::limits::{MAX_IOVECS, MAX_IO_BYTES};

/// How durable a completed write must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Completed by the device, possibly still in its volatile cache: a later `flush`
    /// makes it durable.
    Volatile,
    /// Durable when it completes (FUA / RWF_DSYNC).
    Fua,
}

/// A per-core device queue. Futures complete when the device completes the I/O; buffers
/// are owned by the operation while it is in flight and handed back with its result.
#[allow(async_fn_in_trait)]
pub trait BlockQueue {
    /// The device this queue drives.
    fn info(&self) -> &DeviceInfo;
    /// The queue's DMA buffer pool.
    fn pool(&self) -> &BufferPool;
    /// Reads `buf.len()` bytes at `offset` into `buf`.
    async fn read_at(&self, offset: u64, buf: DmaBuffer) -> Result<DmaBuffer>;
    /// Writes `buf` at `offset`.
    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer>;
    /// Writes the buffers back to back starting at `offset`, in one device operation.
    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>>;
    /// Makes every completed write durable.
    async fn flush(&self) -> Result<()>;
}

/// The checks every backend makes before an I/O reaches the device.
pub fn check_io(info: &DeviceInfo, offset: u64, len: usize) -> Result<()> {
    let align = info.logical_block_size as u64;
    if !offset.is_multiple_of(align) {
        return Err(NvmeError::Misaligned {
            what: "offset",
            value: offset,
            align,
        });
    }
    if !(len as u64).is_multiple_of(align) || len == 0 {
        return Err(NvmeError::Misaligned {
            what: "length",
            value: len as u64,
            align,
        });
    }
    if len > MAX_IO_BYTES {
        return Err(NvmeError::TooLarge {
            len,
            limit: MAX_IO_BYTES,
        });
    }
    match offset.checked_add(len as u64) {
        Some(end) if end <= info.size => Ok(()),
        _ => Err(NvmeError::OutOfRange {
            offset,
            len: len as u64,
            size: info.size,
        }),
    }
}

/// `check_io` for a vectored write; returns the total length.
pub fn check_iov(info: &DeviceInfo, offset: u64, bufs: &[DmaBuffer]) -> Result<usize> {
    if bufs.is_empty() || bufs.len() > MAX_IOVECS {
        return Err(NvmeError::TooLarge {
            len: bufs.len(),
            limit: MAX_IOVECS,
        });
    }
    let align = info.logical_block_size as usize;
    let mut total = 0usize;
    for b in bufs {
        if b.len() % align != 0 || b.is_empty() {
            return Err(NvmeError::Misaligned {
                what: "iovec length",
                value: b.len() as u64,
                align: align as u64,
            });
        }
        total = total.saturating_add(b.len());
    }
    check_io(info, offset, total)?;
    Ok(total)
}

/// A vectored write as one write per buffer, for backends without a vectored command.
/// The writes complete independently; every one has completed (with `durability`) when
/// this returns, which is all a caller of `writev_at` may assume.
pub async fn write_each<Q: BlockQueue + ?Sized>(
    q: &Q,
    offset: u64,
    bufs: Vec<DmaBuffer>,
    durability: Durability,
) -> Result<Vec<DmaBuffer>> {
    check_iov(q.info(), offset, &bufs)?;
    let mut at = offset;
    let mut out = Vec::with_capacity(bufs.len());
    for b in bufs {
        let len = b.len() as u64;
        out.push(q.write_at(at, b, durability).await?);
        at += len;
    }
    Ok(out)
}

/// Polls all futures together on the current task; results in order.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    futures_lite::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

/// Identifies the thread a queue belongs to without touching an atomic.
pub(crate) fn thread_token() -> usize {
    thread_local! { static TOKEN: u8 = const { 0 }; }
    TOKEN.with(|t| t as *const u8 as usize)
}
