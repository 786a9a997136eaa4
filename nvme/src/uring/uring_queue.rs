//! `UringQueue`: a per-core io_uring queue implementing `BlockQueue`.
//!
//! Submissions are batched: entries go into the SQ and reach the kernel on the next reap,
//! which every waiting future performs when polled. While operations are in flight the
//! waiting futures keep themselves scheduled (polling, as SPDK does); with nothing in
//! flight no future exists and the queue costs no CPU.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::os::unix::io::AsRawFd;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use io_uring::{opcode, squeue, types, IoUring};

use super::completion::{Keep, Slots};
use super::ring_setup::{build_ring, RingFeatures, UringOptions};
use crate::device::{Device, DeviceInfo};
use crate::dma_buffer::{BufferPool, DmaBuffer};
use crate::error::{NvmeError, Result};
use crate::queue::{check_io, check_iov, thread_token, BlockQueue, Durability};

const ENTER_GETEVENTS: u32 = 1;

struct Inner {
    ring: RefCell<IoUring>,
    slots: RefCell<Slots>,
    unsubmitted: Cell<u32>,
    /// Entries given to the ring whose completion has not been reaped yet.
    awaiting_cqe: Cell<usize>,
    /// A poller task reaps for everyone; operations then only wait for their wake-up.
    poller_running: Cell<bool>,
    /// The poller's waker while it sleeps (nothing awaiting a completion).
    poller_parked: RefCell<Option<Waker>>,
    owner: usize,
    pool: BufferPool,
    device: Device,
    features: RingFeatures,
    wait_after_idle_polls: u32,
    wait_timeout_us: u32,
    idle_sleep_us: u32,
    batch_submissions: bool,
}

/// Idle polls before a poller with `idle_sleep_us` set sleeps.
const IDLE_POLLS_BEFORE_SLEEP: u32 = 16;

/// A per-core io_uring queue. Not `Send`: it belongs to the thread that made it.
#[derive(Clone)]
pub struct UringQueue {
    inner: Rc<Inner>,
}

impl UringQueue {
    /// Builds the ring, registers the device file and the DMA arena where the kernel allows.
    pub fn new(device: Device, opts: &UringOptions) -> Result<UringQueue> {
        if device.info().passthrough {
            return Err(NvmeError::Unsupported(
                "NVMe char devices are driven by the passthrough queue (PassthroughQueue)".into(),
            ));
        }
        let (ring, mut features) = build_ring(opts)?;
        let pool = BufferPool::new(opts.pool_bytes)?;
        features.fixed_file = ring
            .submitter()
            .register_files(&[device.file().as_raw_fd()])
            .is_ok();
        if opts.register_buffers {
            let (base, len) = pool.arena();
            let iov = [libc::iovec {
                iov_base: base.as_ptr().cast(),
                iov_len: len,
            }];
            // SAFETY: the arena stays allocated for as long as the ring exists: the pool is
            // owned by `Inner`, which drops the ring first (field order) and waits for every
            // in-flight operation before that.
            features.fixed_buffers = unsafe { ring.submitter().register_buffers(&iov) }.is_ok();
            if !features.fixed_buffers {
                tracing::debug!("buffer registration refused; using unregistered buffers");
            }
        }
        let capacity = ring.params().cq_entries().min(ring.params().sq_entries() * 2) as usize;
        Ok(UringQueue {
            inner: Rc::new(Inner {
                ring: RefCell::new(ring),
                slots: RefCell::new(Slots::new(capacity)),
                unsubmitted: Cell::new(0),
                awaiting_cqe: Cell::new(0),
                poller_running: Cell::new(false),
                poller_parked: RefCell::new(None),
                owner: thread_token(),
                pool,
                device,
                features,
                wait_after_idle_polls: opts.wait_after_idle_polls,
                wait_timeout_us: opts.wait_timeout_us,
                idle_sleep_us: opts.idle_sleep_us,
                batch_submissions: opts.batch_submissions,
            }),
        })
    }

    /// The flags the ring ended up with.
    pub fn features(&self) -> RingFeatures {
        self.inner.features
    }

    /// Operations submitted and not yet completed.
    pub fn in_flight(&self) -> usize {
        self.inner.slots.borrow().in_flight()
    }

    fn fd(&self) -> FdRef {
        if self.inner.features.fixed_file {
            FdRef::Fixed
        } else {
            FdRef::Raw(self.inner.device.file().as_raw_fd())
        }
    }

    fn check_thread(&self) -> Result<()> {
        if thread_token() != self.inner.owner {
            return Err(NvmeError::WrongThread);
        }
        Ok(())
    }

    fn fixed_index(&self, buf: &DmaBuffer) -> Option<u16> {
        (self.inner.features.fixed_buffers && buf.pool_id() == self.inner.pool.id()).then_some(0)
    }

    /// Puts one entry in the SQ; the kernel sees it at the next reap.
    fn push(&self, entry: squeue::Entry, keep: Keep) -> Result<Op> {
        self.check_thread()?;
        let inner = &self.inner;
        let id = {
            let mut slots = inner.slots.borrow_mut();
            let (in_flight, capacity) = (slots.in_flight(), slots.capacity());
            slots
                .insert(keep)
                .ok_or(NvmeError::RingFull { in_flight, capacity })?
        };
        let entry = entry.user_data(id as u64);
        let mut ring = inner.ring.borrow_mut();
        // SAFETY: every pointer in `entry` targets memory held in slot `id` (`keep`) or in
        // the pool/arena, which outlive the operation: slots release `keep` only after the
        // completion arrives, and `Inner::drop` waits for all completions.
        let pushed = unsafe { ring.submission().push(&entry) }.is_ok()
            || (submit_pending(&ring, inner) && unsafe { ring.submission().push(&entry) }.is_ok());
        if !pushed {
            drop(ring);
            let mut slots = inner.slots.borrow_mut();
            let (in_flight, capacity) = (slots.in_flight(), slots.capacity());
            drop(slots.cancel(id));
            return Err(NvmeError::RingFull { in_flight, capacity });
        }
        inner.unsubmitted.set(inner.unsubmitted.get() + 1);
        inner.awaiting_cqe.set(inner.awaiting_cqe.get() + 1);
        if !inner.batch_submissions {
            submit_pending(&ring, inner);
        }
        if let Some(poller) = inner.poller_parked.borrow_mut().take() {
            poller.wake();
        }
        Ok(Op {
            queue: self.inner.clone(),
            id,
            submitted: false,
            finished: false,
        })
    }

    /// Submits pending entries and collects completions. Called by waiting futures.
    fn reap(inner: &Inner) {
        let mut ring = inner.ring.borrow_mut();
        let features = inner.features;
        let to_submit = inner.unsubmitted.get();
        let (taskrun, overflow) = {
            let sq = ring.submission();
            (sq.taskrun(), sq.cq_overflow())
        };
        let must_enter = to_submit > 0 || features.iopoll || overflow || (features.defer_taskrun && taskrun);
        if must_enter {
            if features.sqpoll {
                let _ = ring.submit();
            } else {
                let flags = if features.defer_taskrun || features.iopoll || overflow {
                    ENTER_GETEVENTS
                } else {
                    0
                };
                // SAFETY: plain io_uring_enter with no argument struct.
                match unsafe {
                    ring.submitter()
                        .enter::<libc::sigset_t>(to_submit, 0, flags, None)
                } {
                    Ok(n) => inner.unsubmitted.set(to_submit - (n as u32).min(to_submit)),
                    Err(e) => tracing::trace!("io_uring_enter: {e} (retried on next poll)"),
                }
            }
            if features.sqpoll {
                inner.unsubmitted.set(0);
            }
        }
        let mut slots = inner.slots.borrow_mut();
        let mut reaped = 0;
        for cqe in ring.completion() {
            slots.complete(cqe.user_data(), cqe.result());
            reaped += 1;
        }
        inner
            .awaiting_cqe
            .set(inner.awaiting_cqe.get().saturating_sub(reaped));
    }

    /// Blocks the thread until one completion arrives or the wait timeout passes.
    fn wait_for_one(inner: &Inner) {
        let ring = inner.ring.borrow_mut();
        let ts = types::Timespec::new().nsec(inner.wait_timeout_us.saturating_mul(1000).min(999_999_999));
        let args = types::SubmitArgs::new().timespec(&ts);
        match ring.submitter().submit_with_args(1, &args) {
            Ok(n) => inner
                .unsubmitted
                .set(inner.unsubmitted.get().saturating_sub(n as u32)),
            Err(e) if e.raw_os_error() == Some(libc::ETIME) => {}
            Err(e) => tracing::trace!("io_uring wait: {e}"),
        }
        drop(ring);
        UringQueue::reap(inner);
    }

    /// A probe saying whether this queue's poller is busy (operations in flight, so it
    /// re-schedules itself on every turn); false once the queue is gone.
    pub fn busy_probe(&self) -> impl Fn() -> bool + 'static {
        let inner = Rc::downgrade(&self.inner);
        move || {
            inner
                .upgrade()
                .is_some_and(|i| i.awaiting_cqe.get() > 0 || i.unsubmitted.get() > 0)
        }
    }

    /// A task that reaps completions for every operation of this queue: spawn it on the
    /// queue's executor (`glommio::spawn_local(queue.poller()).detach()`). While entries
    /// await completion it polls the ring once per scheduler pass; with none it sleeps
    /// until the next submission. It ends when the queue is dropped. Without a poller,
    /// each waiting operation polls for itself (fine for tests, costlier at depth).
    pub fn poller(&self) -> impl Future<Output = ()> + 'static {
        self.inner.poller_running.set(true);
        Poller {
            queue: Rc::downgrade(&self.inner),
            idle_polls: 0,
            sleep: None,
        }
    }

    async fn io(&self, entry: squeue::Entry, keep: Keep, expected: usize, op: &'static str) -> Result<Keep> {
        let (res, keep) = self.push(entry, keep)?.await;
        if res < 0 {
            return Err(NvmeError::io(op, std::io::Error::from_raw_os_error(-res)));
        }
        if res as usize != expected {
            return Err(NvmeError::ShortTransfer {
                op,
                done: res as usize,
                expected,
            });
        }
        Ok(keep)
    }
}

fn submit_pending(ring: &IoUring, inner: &Inner) -> bool {
    match ring.submit() {
        Ok(n) => {
            let left = inner.unsubmitted.get().saturating_sub(n as u32);
            inner.unsubmitted.set(left);
            true
        }
        Err(_) => false,
    }
}

#[derive(Clone, Copy)]
enum FdRef {
    Fixed,
    Raw(i32),
}

macro_rules! with_fd {
    ($fd:expr, $build:expr) => {
        match $fd {
            FdRef::Fixed => $build(types::Fixed(0)),
            FdRef::Raw(fd) => $build(types::Fd(fd)),
        }
    };
}

fn rw_flags(d: Durability) -> i32 {
    match d {
        Durability::Volatile => 0,
        Durability::Fua => libc::RWF_DSYNC,
    }
}

impl BlockQueue for UringQueue {
    fn info(&self) -> &DeviceInfo {
        self.inner.device.info()
    }

    fn pool(&self) -> &BufferPool {
        &self.inner.pool
    }

    async fn read_at(&self, offset: u64, mut buf: DmaBuffer) -> Result<DmaBuffer> {
        let len = buf.len();
        check_io(self.info(), offset, len)?;
        let ptr = buf.as_mut_ptr();
        let entry = match self.fixed_index(&buf) {
            Some(index) => with_fd!(self.fd(), |fd| opcode::ReadFixed::new(fd, ptr, len as u32, index)
                .offset(offset)
                .build()),
            None => with_fd!(self.fd(), |fd| opcode::Read::new(fd, ptr, len as u32)
                .offset(offset)
                .build()),
        };
        match self.io(entry, Keep::One(buf), len, "read").await? {
            Keep::One(buf) => Ok(buf),
            _ => unreachable!("read keeps one buffer"),
        }
    }

    async fn write_at(&self, offset: u64, buf: DmaBuffer, durability: Durability) -> Result<DmaBuffer> {
        let len = buf.len();
        check_io(self.info(), offset, len)?;
        let ptr = buf.as_ptr();
        let flags = rw_flags(durability);
        let entry = match self.fixed_index(&buf) {
            Some(index) => with_fd!(self.fd(), |fd| opcode::WriteFixed::new(
                fd, ptr, len as u32, index
            )
            .offset(offset)
            .rw_flags(flags)
            .build()),
            None => with_fd!(self.fd(), |fd| opcode::Write::new(fd, ptr, len as u32)
                .offset(offset)
                .rw_flags(flags)
                .build()),
        };
        match self.io(entry, Keep::One(buf), len, "write").await? {
            Keep::One(buf) => Ok(buf),
            _ => unreachable!("write keeps one buffer"),
        }
    }

    async fn writev_at(
        &self,
        offset: u64,
        bufs: Vec<DmaBuffer>,
        durability: Durability,
    ) -> Result<Vec<DmaBuffer>> {
        let total = check_iov(self.info(), offset, &bufs)?;
        let iovecs: Box<[libc::iovec]> = bufs
            .iter()
            .map(|b| libc::iovec {
                iov_base: b.as_ptr() as *mut _,
                iov_len: b.len(),
            })
            .collect();
        let (iov_ptr, iov_len) = (iovecs.as_ptr(), iovecs.len() as u32);
        let flags = rw_flags(durability);
        let entry = with_fd!(self.fd(), |fd| opcode::Writev::new(fd, iov_ptr, iov_len)
            .offset(offset)
            .rw_flags(flags)
            .build());
        match self.io(entry, Keep::Many(bufs, iovecs), total, "writev").await? {
            Keep::Many(bufs, _) => Ok(bufs),
            _ => unreachable!("writev keeps its buffers"),
        }
    }

    async fn flush(&self) -> Result<()> {
        let entry = with_fd!(self.fd(), |fd| opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build());
        self.io(entry, Keep::Nothing, 0, "fdatasync").await.map(drop)
    }
}

/// An operation in flight: completes with the kernel's result and the kept memory.
struct Op {
    queue: Rc<Inner>,
    id: u32,
    submitted: bool,
    finished: bool,
}

impl Future for Op {
    type Output = (i32, Keep);

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let taken = self.queue.slots.borrow_mut().take_or_wait(self.id, cx.waker());
        if let Some(done) = taken {
            self.finished = true;
            return Poll::Ready(done);
        }
        if self.queue.poller_running.get() {
            // The poller reaps and wakes us; the waker is registered above.
            return Poll::Pending;
        }
        if !self.submitted {
            // First poll: let the other ready tasks queue their entries too, so that one
            // io_uring_enter carries the whole batch.
            self.submitted = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        UringQueue::reap(&self.queue);
        let taken = self.queue.slots.borrow_mut().take_or_wait(self.id, cx.waker());
        if let Some(done) = taken {
            self.finished = true;
            return Poll::Ready(done);
        }
        // Stay scheduled: the completion arrives in shared memory, not as a wake-up.
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

struct Poller {
    queue: std::rc::Weak<Inner>,
    idle_polls: u32,
    sleep: Option<glommio::timer::Timer>,
}

impl Future for Poller {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let Some(inner) = self.queue.upgrade() else {
            return Poll::Ready(());
        };
        let before = inner.awaiting_cqe.get();
        UringQueue::reap(&inner);
        let awaiting = inner.awaiting_cqe.get();
        if awaiting == 0 && inner.unsubmitted.get() == 0 {
            self.idle_polls = 0;
            *inner.poller_parked.borrow_mut() = Some(cx.waker().clone());
            return Poll::Pending;
        }
        if awaiting < before {
            self.idle_polls = 0;
        } else {
            self.idle_polls += 1;
            if inner.wait_after_idle_polls > 0 && self.idle_polls >= inner.wait_after_idle_polls {
                self.idle_polls = 0;
                UringQueue::wait_for_one(&inner);
            } else if inner.idle_sleep_us > 0 && self.idle_polls >= IDLE_POLLS_BEFORE_SLEEP {
                self.idle_polls = 0;
                let mut timer =
                    glommio::timer::Timer::new(std::time::Duration::from_micros(inner.idle_sleep_us as u64));
                if Pin::new(&mut timer).poll(cx).is_pending() {
                    self.sleep = Some(timer);
                    return Poll::Pending;
                }
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        if let Some(inner) = self.queue.upgrade() {
            inner.poller_running.set(false);
            inner.poller_parked.borrow_mut().take();
        }
    }
}

impl Drop for Op {
    fn drop(&mut self) {
        if !self.finished {
            self.queue.slots.borrow_mut().abandon(self.id);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A sleeping poller must wake to see that the queue is gone and end.
        if let Some(poller) = self.poller_parked.get_mut().take() {
            poller.wake();
        }
        // The kernel may still write into abandoned buffers: wait for every completion
        // before the arena (in `pool`) can be freed.
        let ring = self.ring.get_mut();
        let mut spins = 0u32;
        while self.slots.get_mut().in_flight() > 0 && spins < 1_000_000 {
            if ring.submit_and_wait(1).is_err() {
                spins += 1;
            }
            for cqe in ring.completion() {
                self.slots.get_mut().complete(cqe.user_data(), cqe.result());
            }
        }
    }
}
