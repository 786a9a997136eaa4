//! `AnyQueue`: one type over every backend, chosen at run time from a profile.

use std::rc::Rc;

use crate::device::{Device, DeviceInfo, DeviceKind};
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::dma_file_queue::DmaFileQueue;
use crate::error::Result;
use crate::queue::{BlockQueue, Durability};
use crate::sim::SimQueue;
use crate::uring::{PassthroughQueue, UringOptions, UringQueue};

/// A queue of any backend.
pub enum AnyQueue {
    Uring(UringQueue),
    Passthrough(Rc<PassthroughQueue>),
    DmaFile(DmaFileQueue),
    Sim(SimQueue),
    #[cfg(feature = "spdk")]
    Spdk(crate::spdk::SpdkQueue),
}

impl AnyQueue {
    /// The io_uring backend for `device`: NVMe passthrough for a namespace char device,
    /// the block queue for anything else.
    pub fn uring(device: Device, opts: &UringOptions) -> Result<AnyQueue> {
        if device.info().kind == DeviceKind::NvmeCharDevice {
            return Ok(AnyQueue::Passthrough(PassthroughQueue::new(
                device,
                opts.entries,
                opts.pool_bytes,
            )?));
        }
        Ok(AnyQueue::Uring(UringQueue::new(device, opts)?))
    }
}

macro_rules! dispatch {
    ($self:expr, $q:ident => $e:expr) => {
        match $self {
            AnyQueue::Uring($q) => $e,
            AnyQueue::Passthrough($q) => $e,
            AnyQueue::DmaFile($q) => $e,
            AnyQueue::Sim($q) => $e,
            #[cfg(feature = "spdk")]
            AnyQueue::Spdk($q) => $e,
        }
    };
}

impl BlockQueue for AnyQueue {
    fn info(&self) -> &DeviceInfo {
        dispatch!(self, q => q.info())
    }

    fn pool(&self) -> &BufferPool {
        dispatch!(self, q => q.pool())
    }

    async fn read_at(&self, offset: u64, buf: DmaBuffer) -> Result<DmaBuffer> {
        dispatch!(self, q => q.read_at(offset, buf).await)
    }

    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        dispatch!(self, q => q.write_at(offset, buf, durability).await)
    }

    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>> {
        dispatch!(self, q => q.writev_at(offset, bufs, durability).await)
    }

    async fn flush(&self) -> Result<()> {
        dispatch!(self, q => q.flush().await)
    }
}
