//! A second backend on glommio's `DmaFile`, behind the same `BlockQueue` interface, so
//! the two are measured side by side. It must run inside a glommio executor.
//!
//! glommio owns its buffers, so each write copies into a glommio `DmaBuffer` and each read
//! copies out of glommio's result; FUA is a write followed by `fdatasync`.

use std::rc::Rc;

use glommio::io::{DmaFile, OpenOptions as GlommioOpenOptions};

use crate::device::{DeviceInfo, DeviceKind};
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::queue::{check_io, check_iov, thread_token, BlockQueue, Durability};

/// A per-core queue on glommio's own io_uring rings.
pub struct DmaFileQueue {
    file: Rc<DmaFile>,
    info: DeviceInfo,
    pool: BufferPool,
    owner: usize,
}

fn glommio_err(op: &'static str, e: glommio::GlommioError<()>) -> NvmeError {
    NvmeError::io(op, std::io::Error::other(e.to_string()))
}

impl DmaFileQueue {
    /// Opens the device described by `info` (already probed by `Device::open`).
    pub async fn open(info: DeviceInfo, pool_bytes: usize) -> Result<DmaFileQueue> {
        if !info.direct_io || info.kind == DeviceKind::NvmeCharDevice {
            return Err(NvmeError::Unsupported(
                "DmaFile needs O_DIRECT on a file or block device".into(),
            ));
        }
        let file = GlommioOpenOptions::new()
            .read(true)
            .write(true)
            .dma_open(&info.path)
            .await
            .map_err(|e| glommio_err("DmaFile open", e))?;
        Ok(DmaFileQueue {
            file: Rc::new(file),
            info,
            pool: BufferPool::new(pool_bytes)?,
            owner: thread_token(),
        })
    }

    fn check_thread(&self) -> Result<()> {
        if thread_token() != self.owner {
            return Err(NvmeError::WrongThread);
        }
        Ok(())
    }

    async fn write_copy(&self, offset: u64, data: &[u8], durability: Durability) -> Result<()> {
        let mut gbuf = self.file.alloc_dma_buffer(data.len());
        gbuf.as_bytes_mut().copy_from_slice(data);
        let n = self
            .file
            .write_at(gbuf, offset)
            .await
            .map_err(|e| glommio_err("write", e))?;
        if n != data.len() {
            return Err(NvmeError::ShortTransfer {
                op: "write",
                done: n,
                expected: data.len(),
            });
        }
        if durability == Durability::Fua {
            self.file
                .fdatasync()
                .await
                .map_err(|e| glommio_err("fdatasync", e))?;
        }
        Ok(())
    }
}

impl BlockQueue for DmaFileQueue {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn pool(&self) -> &BufferPool {
        &self.pool
    }

    async fn read_at(&self, offset: u64, mut buf: DmaBuffer) -> Result<DmaBuffer> {
        self.check_thread()?;
        check_io(&self.info, offset, buf.len())?;
        let res = self
            .file
            .read_at_aligned(offset, buf.len())
            .await
            .map_err(|e| glommio_err("read", e))?;
        if res.len() != buf.len() {
            return Err(NvmeError::ShortTransfer {
                op: "read",
                done: res.len(),
                expected: buf.len(),
            });
        }
        buf.copy_from_slice(&res);
        Ok(buf)
    }

    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        self.check_thread()?;
        check_io(&self.info, offset, buf.len())?;
        self.write_copy(offset, &buf, durability).await?;
        Ok(buf)
    }

    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>> {
        self.check_thread()?;
        let total = check_iov(&self.info, offset, &bufs)?;
        // glommio has no vectored DMA write: gather into one buffer, one device write.
        let mut gbuf = self.file.alloc_dma_buffer(total);
        let mut at = 0;
        for b in &bufs {
            gbuf.as_bytes_mut()[at..at + b.len()].copy_from_slice(b);
            at += b.len();
        }
        let n = self
            .file
            .write_at(gbuf, offset)
            .await
            .map_err(|e| glommio_err("writev", e))?;
        if n != total {
            return Err(NvmeError::ShortTransfer {
                op: "writev",
                done: n,
                expected: total,
            });
        }
        if durability == Durability::Fua {
            self.file
                .fdatasync()
                .await
                .map_err(|e| glommio_err("fdatasync", e))?;
        }
        Ok(bufs)
    }

    async fn flush(&self) -> Result<()> {
        self.check_thread()?;
        self.file
            .fdatasync()
            .await
            .map_err(|e| glommio_err("fdatasync", e))
    }
}
