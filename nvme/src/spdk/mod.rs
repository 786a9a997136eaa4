//! SPDK backend (feature `spdk`): environment init, probe and attach, one qpair per shard,
//! DMA buffers from SPDK's allocator, completions polled from the shard's executor.
//! Untested on machines without SPDK and an NVMe device bound to a userspace driver.

use std::cell::RefCell;
use std::ffi::{c_void, CString};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::ptr::NonNull;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use crate::device::{DeviceInfo, DeviceKind};
use crate::dma_buffer::{ArenaSource, BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::limits::IO_ALIGN;
use crate::queue::{check_io, thread_token, BlockQueue, Durability};

#[repr(C)]
#[derive(Default)]
struct HsCompletion {
    done: i32,
    status: i32,
}

#[repr(C)]
struct HsCtrlr {
    ctrlr: *mut c_void,
    ns: *mut c_void,
}

extern "C" {
    fn hs_spdk_env_init(name: *const libc::c_char, core_mask: *const libc::c_char, mem_size_mb: i32) -> i32;
    fn hs_spdk_attach(traddr: *const libc::c_char, nsid: u32, out: *mut HsCtrlr) -> i32;
    fn hs_spdk_detach(c: *mut HsCtrlr);
    fn hs_spdk_ns_size(c: *const HsCtrlr) -> u64;
    fn hs_spdk_sector_size(c: *const HsCtrlr) -> u32;
    fn hs_spdk_alloc_qpair(c: *mut HsCtrlr) -> *mut c_void;
    fn hs_spdk_free_qpair(q: *mut c_void);
    fn hs_spdk_read(
        c: *mut HsCtrlr,
        q: *mut c_void,
        buf: *mut c_void,
        lba: u64,
        n: u32,
        d: *mut HsCompletion,
    ) -> i32;
    fn hs_spdk_write(
        c: *mut HsCtrlr,
        q: *mut c_void,
        buf: *mut c_void,
        lba: u64,
        n: u32,
        fua: i32,
        d: *mut HsCompletion,
    ) -> i32;
    fn hs_spdk_flush(c: *mut HsCtrlr, q: *mut c_void, d: *mut HsCompletion) -> i32;
    fn hs_spdk_poll(q: *mut c_void) -> i32;
    fn hs_spdk_dma_alloc(size: usize, align: usize) -> *mut c_void;
    fn hs_spdk_dma_free(p: *mut c_void);
}

static ENV: OnceLock<std::result::Result<(), String>> = OnceLock::new();

/// Initialises SPDK's environment once per process (hugepages, PCI access).
pub fn init_env(name: &str, core_mask: Option<&str>, mem_size_mb: i32) -> Result<()> {
    ENV.get_or_init(|| {
        let name = CString::new(name).map_err(|e| e.to_string())?;
        let mask = core_mask
            .map(CString::new)
            .transpose()
            .map_err(|e| e.to_string())?;
        // SAFETY: both strings are valid NUL-terminated C strings that SPDK copies.
        let rc = unsafe {
            hs_spdk_env_init(
                name.as_ptr(),
                mask.as_ref().map_or(std::ptr::null(), |m| m.as_ptr()),
                mem_size_mb,
            )
        };
        if rc == 0 {
            // SPDK keeps the name pointer.
            std::mem::forget(name);
            Ok(())
        } else {
            Err(format!(
                "spdk_env_init failed ({rc}); are hugepages reserved and the device bound?"
            ))
        }
    })
    .clone()
    .map_err(NvmeError::Unsupported)
}

/// An attached controller and namespace, shared by every shard's queue.
pub struct SpdkController {
    raw: RefCell<HsCtrlr>,
    info: DeviceInfo,
}

// SAFETY: SPDK's controller and namespace objects may be used from several threads for
// allocating qpairs and submitting on distinct qpairs; the RefCell is only borrowed for the
// duration of a single FFI call on the calling thread, and each qpair stays on one thread.
unsafe impl Send for SpdkController {}
// SAFETY: as above.
unsafe impl Sync for SpdkController {}

impl SpdkController {
    /// Attaches the controller at PCIe address `traddr` and opens namespace `nsid`.
    pub fn attach(traddr: &str, nsid: u32) -> Result<Arc<SpdkController>> {
        let addr = CString::new(traddr).map_err(|e| NvmeError::Config(e.to_string()))?;
        let mut raw = HsCtrlr {
            ctrlr: std::ptr::null_mut(),
            ns: std::ptr::null_mut(),
        };
        // SAFETY: `addr` is a valid C string; `raw` is written by the call.
        let rc = unsafe { hs_spdk_attach(addr.as_ptr(), nsid, &mut raw) };
        if rc != 0 {
            return Err(NvmeError::io(
                "spdk attach",
                std::io::Error::from_raw_os_error(-rc),
            ));
        }
        // SAFETY: `raw` holds an attached controller and active namespace.
        let (size, lbs) = unsafe { (hs_spdk_ns_size(&raw), hs_spdk_sector_size(&raw)) };
        let info = DeviceInfo {
            path: PathBuf::from(format!("spdk:{traddr}/ns{nsid}")),
            kind: DeviceKind::BlockDevice,
            size: size / IO_ALIGN as u64 * IO_ALIGN as u64,
            logical_block_size: lbs,
            direct_io: true,
            iopoll: true,
            passthrough: false,
            nsid,
        };
        Ok(Arc::new(SpdkController {
            raw: RefCell::new(raw),
            info,
        }))
    }

    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
}

impl Drop for SpdkController {
    fn drop(&mut self) {
        // SAFETY: every queue holds an Arc to the controller, so none is left.
        unsafe { hs_spdk_detach(self.raw.get_mut()) };
    }
}

/// Memory an in-flight command points at, released only after its completion.
struct InFlight {
    done: Box<HsCompletion>,
    _keep: Vec<DmaBuffer>,
}

/// One qpair, polled from the shard's executor.
pub struct SpdkQueue {
    ctrlr: Arc<SpdkController>,
    qpair: *mut c_void,
    pool: BufferPool,
    owner: usize,
    /// Commands whose futures were dropped before completion.
    orphans: RefCell<Vec<InFlight>>,
}

impl SpdkQueue {
    /// Allocates a qpair and a DMA pool of `pool_bytes` from SPDK's allocator.
    pub fn new(ctrlr: Arc<SpdkController>, pool_bytes: usize) -> Result<SpdkQueue> {
        let pool_bytes = pool_bytes.div_ceil(IO_ALIGN) * IO_ALIGN;
        // SAFETY: plain allocation call; null is checked below.
        let mem = unsafe { hs_spdk_dma_alloc(pool_bytes, IO_ALIGN) };
        let base = NonNull::new(mem.cast::<u8>()).ok_or(NvmeError::PoolExhausted {
            requested: pool_bytes,
            free: 0,
            capacity: pool_bytes,
        })?;
        // SAFETY: `base` came from spdk_dma_zmalloc and is freed exactly once by the pool.
        let free = Box::new(|p: NonNull<u8>| unsafe { hs_spdk_dma_free(p.as_ptr().cast()) });
        let pool = BufferPool::from_arena(base, pool_bytes, ArenaSource::Foreign(free));
        // SAFETY: the controller is attached for as long as `ctrlr` lives.
        let qpair = unsafe { hs_spdk_alloc_qpair(&mut *ctrlr.raw.borrow_mut()) };
        if qpair.is_null() {
            return Err(NvmeError::Unsupported(
                "spdk_nvme_ctrlr_alloc_io_qpair failed".into(),
            ));
        }
        Ok(SpdkQueue {
            ctrlr,
            qpair,
            pool,
            owner: thread_token(),
            orphans: RefCell::new(Vec::new()),
        })
    }

    fn check_thread(&self) -> Result<()> {
        if thread_token() != self.owner {
            return Err(NvmeError::WrongThread);
        }
        Ok(())
    }

    fn lba(&self, offset: u64, len: usize) -> (u64, u32) {
        let s = self.ctrlr.info.logical_block_size as u64;
        (offset / s, (len as u64 / s) as u32)
    }

    /// Submits through `submit` and polls the qpair until the completion arrives.
    async fn run(
        &self,
        keep: Vec<DmaBuffer>,
        op: &'static str,
        submit: impl FnOnce(*mut HsCompletion) -> i32,
    ) -> Result<Vec<DmaBuffer>> {
        self.check_thread()?;
        let mut done = Box::<HsCompletion>::default();
        let rc = submit(&mut *done);
        if rc == -libc::ENOMEM {
            return Err(NvmeError::RingFull {
                in_flight: 0,
                capacity: 0,
            });
        }
        if rc != 0 {
            return Err(NvmeError::io(op, std::io::Error::from_raw_os_error(-rc)));
        }
        let wait = SpdkWait {
            queue: self,
            flight: Some(InFlight { done, _keep: keep }),
        };
        let (status, keep) = wait.await;
        if status != 0 {
            return Err(NvmeError::io(op, std::io::Error::from_raw_os_error(-status)));
        }
        Ok(keep)
    }

    fn poll_qpair(&self) {
        // SAFETY: the qpair belongs to this thread (checked at submission).
        unsafe { hs_spdk_poll(self.qpair) };
        self.orphans.borrow_mut().retain(|f| f.done.done == 0);
    }
}

struct SpdkWait<'a> {
    queue: &'a SpdkQueue,
    flight: Option<InFlight>,
}

impl Future for SpdkWait<'_> {
    type Output = (i32, Vec<DmaBuffer>);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.queue.poll_qpair();
        let done = self.flight.as_ref().is_some_and(|f| f.done.done != 0);
        if done {
            let f = self.flight.take().expect("checked above");
            return Poll::Ready((f.done.status, f._keep));
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for SpdkWait<'_> {
    fn drop(&mut self) {
        if let Some(f) = self.flight.take() {
            self.queue.orphans.borrow_mut().push(f);
        }
    }
}

impl Drop for SpdkQueue {
    fn drop(&mut self) {
        while !self.orphans.get_mut().is_empty() {
            self.poll_qpair();
        }
        // SAFETY: no command is in flight any more.
        unsafe { hs_spdk_free_qpair(self.qpair) };
    }
}

fn raw(c: &SpdkController) -> *mut HsCtrlr {
    c.raw.as_ptr()
}

impl BlockQueue for SpdkQueue {
    fn info(&self) -> &DeviceInfo {
        &self.ctrlr.info
    }

    fn pool(&self) -> &BufferPool {
        &self.pool
    }

    async fn read_at(&self, offset: u64, mut buf: DmaBuffer) -> Result<DmaBuffer> {
        check_io(self.info(), offset, buf.len())?;
        let (lba, n) = self.lba(offset, buf.len());
        let ptr = buf.as_mut_ptr().cast::<c_void>();
        let (c, q) = (raw(&self.ctrlr), self.qpair);
        // SAFETY: `ptr` is SPDK DMA memory kept alive (in `keep`) until completion.
        let mut keep = self
            .run(vec![buf], "spdk read", |d| unsafe {
                hs_spdk_read(c, q, ptr, lba, n, d)
            })
            .await?;
        Ok(keep.pop().expect("one buffer"))
    }

    async fn write_at(&self, offset: u64, mut buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        check_io(self.info(), offset, buf.len())?;
        let (lba, n) = self.lba(offset, buf.len());
        let ptr = buf.as_mut_ptr().cast::<c_void>();
        let fua = (durability == Durability::Fua) as i32;
        let (c, q) = (raw(&self.ctrlr), self.qpair);
        // SAFETY: as in `read_at`.
        let mut keep = self
            .run(vec![buf], "spdk write", |d| unsafe {
                hs_spdk_write(c, q, ptr, lba, n, fua, d)
            })
            .await?;
        Ok(keep.pop().expect("one buffer"))
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
        let (c, q) = (raw(&self.ctrlr), self.qpair);
        // SAFETY: flush carries no buffer.
        self.run(Vec::new(), "spdk flush", |d| unsafe { hs_spdk_flush(c, q, d) })
            .await
            .map(drop)
    }
}
