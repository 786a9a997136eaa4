//! NVMe passthrough: io_uring URING_CMD on a namespace char device (`/dev/ngXnY`), which
//! skips the block layer. Chosen when the device path is such a device.
//! Untested here: this machine has no NVMe device.

use std::cell::RefCell;
use std::future::Future;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};

use io_uring::{cqueue, opcode, squeue, types, IoUring};

use super::completion::{Keep, Slots};
use crate::device::{Device, DeviceInfo};
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::queue::{check_io, thread_token, BlockQueue, Durability};

/// `_IOWR('N', 0x80, struct nvme_uring_cmd)`: an NVMe I/O command through io_uring.
const NVME_URING_CMD_IO: u32 = 0xC048_4E80;
const NVME_CMD_FLUSH: u8 = 0x00;
const NVME_CMD_WRITE: u8 = 0x01;
const NVME_CMD_READ: u8 = 0x02;
/// Force Unit Access bit of command dword 12.
const NVME_RW_FUA: u32 = 1 << 30;

/// `struct nvme_uring_cmd` from `linux/nvme_ioctl.h` (72 bytes).
#[repr(C)]
#[derive(Default, Clone, Copy)]
struct NvmeUringCmd {
    opcode: u8,
    flags: u8,
    rsvd1: u16,
    nsid: u32,
    cdw2: u32,
    cdw3: u32,
    metadata: u64,
    addr: u64,
    metadata_len: u32,
    data_len: u32,
    cdw10: u32,
    cdw11: u32,
    cdw12: u32,
    cdw13: u32,
    cdw14: u32,
    cdw15: u32,
    timeout_ms: u32,
    rsvd2: u32,
}

impl NvmeUringCmd {
    fn to_bytes(self) -> [u8; 80] {
        let mut out = [0u8; 80];
        // SAFETY: `NvmeUringCmd` is 72 bytes of plain integers with no padding holes that
        // matter (repr(C), naturally aligned fields); we copy its bytes into a larger array.
        let src = unsafe {
            std::slice::from_raw_parts((&self as *const Self).cast::<u8>(), std::mem::size_of::<Self>())
        };
        out[..src.len()].copy_from_slice(src);
        out
    }
}

/// A per-core queue of NVMe commands on a 128-byte-SQE ring.
pub struct PassthroughQueue {
    ring: RefCell<IoUring<squeue::Entry128, cqueue::Entry32>>,
    slots: RefCell<Slots>,
    device: Device,
    pool: BufferPool,
    owner: usize,
}

impl PassthroughQueue {
    pub fn new(device: Device, entries: u32, pool_bytes: usize) -> Result<Rc<PassthroughQueue>> {
        if !device.info().passthrough {
            return Err(NvmeError::Unsupported(
                "passthrough needs an NVMe char device (/dev/ngXnY)".into(),
            ));
        }
        let ring = IoUring::<squeue::Entry128, cqueue::Entry32>::builder()
            .build(entries)
            .map_err(|e| NvmeError::io("io_uring_setup (SQE128)", e))?;
        let capacity = ring.params().cq_entries() as usize;
        Ok(Rc::new(PassthroughQueue {
            ring: RefCell::new(ring),
            slots: RefCell::new(Slots::new(capacity)),
            device,
            pool: BufferPool::new(pool_bytes)?,
            owner: thread_token(),
        }))
    }

    fn command(&self, opcode: u8, offset: u64, buf: Option<&DmaBuffer>, cdw12_flags: u32) -> NvmeUringCmd {
        let lbs = self.device.info().logical_block_size as u64;
        let slba = offset / lbs;
        let (addr, len) = buf.map_or((0, 0), |b| (b.as_ptr() as u64, b.len() as u32));
        let nlb = (len as u64 / lbs).saturating_sub(1) as u32;
        NvmeUringCmd {
            opcode,
            nsid: self.device.info().nsid,
            addr,
            data_len: len,
            cdw10: slba as u32,
            cdw11: (slba >> 32) as u32,
            cdw12: if buf.is_some() { nlb | cdw12_flags } else { 0 },
            ..NvmeUringCmd::default()
        }
    }

    async fn submit(&self, cmd: NvmeUringCmd, keep: Keep) -> Result<Keep> {
        if thread_token() != self.owner {
            return Err(NvmeError::WrongThread);
        }
        let id = {
            let mut slots = self.slots.borrow_mut();
            let (in_flight, capacity) = (slots.in_flight(), slots.capacity());
            slots
                .insert(keep)
                .ok_or(NvmeError::RingFull { in_flight, capacity })?
        };
        let entry = opcode::UringCmd80::new(types::Fd(self.device.file().as_raw_fd()), NVME_URING_CMD_IO)
            .cmd(cmd.to_bytes())
            .build()
            .user_data(id as u64);
        {
            let mut ring = self.ring.borrow_mut();
            // SAFETY: the command's data pointer targets a buffer held in slot `id` until
            // its completion is reaped.
            if unsafe { ring.submission().push(&entry) }.is_err() {
                drop(ring);
                drop(self.slots.borrow_mut().cancel(id));
                return Err(NvmeError::RingFull {
                    in_flight: 0,
                    capacity: 0,
                });
            }
            ring.submit().map_err(|e| NvmeError::io("io_uring_enter", e))?;
        }
        let (res, keep) = PassthroughOp { queue: self, id }.await;
        if res < 0 {
            return Err(NvmeError::io(
                "nvme passthrough",
                std::io::Error::from_raw_os_error(-res),
            ));
        }
        if res > 0 {
            // A positive result is the NVMe status code: the command failed on the device.
            return Err(NvmeError::io(
                "nvme passthrough",
                std::io::Error::other(format!("NVMe status {res:#x}")),
            ));
        }
        Ok(keep)
    }

    fn reap(&self) {
        let mut ring = self.ring.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        for cqe in ring.completion() {
            slots.complete(cqe.user_data(), cqe.result());
        }
    }
}

struct PassthroughOp<'a> {
    queue: &'a PassthroughQueue,
    id: u32,
}

impl Future for PassthroughOp<'_> {
    type Output = (i32, Keep);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.queue.reap();
        let taken = self.queue.slots.borrow_mut().take_or_wait(self.id, cx.waker());
        match taken {
            Some(done) => Poll::Ready(done),
            None => {
                cx.waker().wake_by_ref();
                Poll::Pending
            }
        }
    }
}

impl Drop for PassthroughOp<'_> {
    fn drop(&mut self) {
        self.queue.slots.borrow_mut().abandon(self.id);
    }
}

impl Drop for PassthroughQueue {
    fn drop(&mut self) {
        let ring = self.ring.get_mut();
        while self.slots.get_mut().in_flight() > 0 {
            if ring.submit_and_wait(1).is_err() {
                break;
            }
            for cqe in ring.completion() {
                self.slots.get_mut().complete(cqe.user_data(), cqe.result());
            }
        }
    }
}

impl BlockQueue for Rc<PassthroughQueue> {
    fn info(&self) -> &DeviceInfo {
        self.device.info()
    }

    fn pool(&self) -> &BufferPool {
        &self.pool
    }

    async fn read_at(&self, offset: u64, buf: DmaBuffer) -> Result<DmaBuffer> {
        check_io(self.info(), offset, buf.len())?;
        let cmd = self.command(NVME_CMD_READ, offset, Some(&buf), 0);
        match self.submit(cmd, Keep::One(buf)).await? {
            Keep::One(b) => Ok(b),
            _ => unreachable!("read keeps one buffer"),
        }
    }

    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        check_io(self.info(), offset, buf.len())?;
        let fua = if durability == Durability::Fua {
            NVME_RW_FUA
        } else {
            0
        };
        let cmd = self.command(NVME_CMD_WRITE, offset, Some(&buf), fua);
        match self.submit(cmd, Keep::One(buf)).await? {
            Keep::One(b) => Ok(b),
            _ => unreachable!("write keeps one buffer"),
        }
    }

    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>> {
        crate::queue::write_each(self, offset, bufs, durability).await
    }

    async fn flush(&self) -> Result<()> {
        let cmd = self.command(NVME_CMD_FLUSH, 0, None, 0);
        self.submit(cmd, Keep::Nothing).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_layout_matches_the_kernel_header() {
        assert_eq!(std::mem::size_of::<NvmeUringCmd>(), 72);
        let cmd = NvmeUringCmd {
            opcode: NVME_CMD_READ,
            nsid: 1,
            cdw10: 0x1234,
            cdw12: 7 | NVME_RW_FUA,
            ..Default::default()
        };
        let b = cmd.to_bytes();
        assert_eq!(b[0], NVME_CMD_READ);
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 1);
        // cdw10 is at byte 40 and cdw12 at byte 48 of struct nvme_uring_cmd.
        assert_eq!(u32::from_le_bytes(b[40..44].try_into().unwrap()), 0x1234);
        assert_eq!(u32::from_le_bytes(b[48..52].try_into().unwrap()), 7 | (1 << 30));
    }
}
