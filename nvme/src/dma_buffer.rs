//! Aligned DMA buffers from a per-queue pool with a fixed memory budget.
//!
//! The pool owns one aligned arena split into `IO_ALIGN` pages; a buffer is a run of
//! contiguous pages. Running out is an error (`try_alloc`) or a wait (`alloc`), never growth.

use std::alloc::Layout;
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::{Deref, DerefMut};
use std::pin::Pin;
use std::ptr::NonNull;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use crate::error::{NvmeError, Result};
use crate::limits::{IO_ALIGN, MAX_POOL_BYTES};

/// Where an arena's memory came from, and how to give it back.
pub enum ArenaSource {
    /// `std::alloc` with page alignment.
    Heap,
    /// Memory from a foreign allocator (SPDK's), released by the closure.
    Foreign(Box<dyn FnOnce(NonNull<u8>)>),
}

struct PoolInner {
    id: u64,
    base: NonNull<u8>,
    capacity: usize,
    /// One bit per page, set when the page is free.
    free_map: RefCell<Vec<u64>>,
    free_pages: Cell<usize>,
    /// Tasks waiting for pages. Bounded by the number of tasks on this core.
    waiters: RefCell<Vec<Waker>>,
    source: RefCell<Option<ArenaSource>>,
}

impl Drop for PoolInner {
    fn drop(&mut self) {
        match self.source.borrow_mut().take() {
            Some(ArenaSource::Heap) | None => {
                let layout =
                    Layout::from_size_align(self.capacity, IO_ALIGN).expect("layout was valid at allocation");
                // SAFETY: `base` came from `alloc_zeroed` with this exact layout, and every
                // buffer holds an `Rc` to this pool, so no buffer outlives the arena.
                unsafe { std::alloc::dealloc(self.base.as_ptr(), layout) };
            }
            Some(ArenaSource::Foreign(free)) => free(self.base),
        }
    }
}

static NEXT_POOL_ID: AtomicU64 = AtomicU64::new(1);

/// A per-queue pool of aligned buffers with a fixed byte budget. Not shared across threads.
#[derive(Clone)]
pub struct BufferPool {
    inner: Rc<PoolInner>,
}

impl std::fmt::Debug for BufferPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufferPool")
            .field("capacity", &self.inner.capacity)
            .field("free", &self.free_bytes())
            .finish()
    }
}

impl BufferPool {
    /// A pool of `capacity` bytes (rounded up to whole pages) on the heap.
    pub fn new(capacity: usize) -> Result<Self> {
        let capacity = checked_pool_capacity(capacity)?;
        let layout = Layout::from_size_align(capacity, IO_ALIGN)
            .map_err(|e| NvmeError::Config(format!("pool layout: {e}")))?;
        // SAFETY: the layout has a non-zero size (checked above) and a power-of-two alignment.
        let base = unsafe { std::alloc::alloc_zeroed(layout) };
        let base = NonNull::new(base).ok_or(NvmeError::PoolExhausted {
            requested: capacity,
            free: 0,
            capacity,
        })?;
        Ok(Self::from_arena(base, capacity, ArenaSource::Heap))
    }

    /// A pool over memory that someone else allocated (SPDK's DMA-safe memory).
    /// `base` must be `IO_ALIGN`-aligned, `capacity` a multiple of `IO_ALIGN`, and the
    /// memory valid until `source` releases it.
    pub fn from_arena(base: NonNull<u8>, capacity: usize, source: ArenaSource) -> Self {
        assert_eq!(base.as_ptr() as usize % IO_ALIGN, 0, "arena must be aligned");
        assert_eq!(capacity % IO_ALIGN, 0, "arena must be whole pages");
        let pages = capacity / IO_ALIGN;
        let mut free_map = vec![u64::MAX; pages.div_ceil(64)];
        if !pages.is_multiple_of(64) {
            let last = free_map.len() - 1;
            free_map[last] = (1u64 << (pages % 64)) - 1;
        }
        BufferPool {
            inner: Rc::new(PoolInner {
                id: NEXT_POOL_ID.fetch_add(1, Ordering::Relaxed),
                base,
                capacity,
                free_map: RefCell::new(free_map),
                free_pages: Cell::new(pages),
                waiters: RefCell::new(Vec::new()),
                source: RefCell::new(Some(source)),
            }),
        }
    }

    /// Total bytes in the pool.
    pub fn capacity(&self) -> usize {
        self.inner.capacity
    }

    /// Bytes not handed out.
    pub fn free_bytes(&self) -> usize {
        self.inner.free_pages.get() * IO_ALIGN
    }

    /// Start address and length of the arena, for registering it with a ring.
    pub fn arena(&self) -> (NonNull<u8>, usize) {
        (self.inner.base, self.inner.capacity)
    }

    pub(crate) fn id(&self) -> u64 {
        self.inner.id
    }

    /// A zero-filled-on-first-use buffer of `len` bytes, or `PoolExhausted` now.
    pub fn try_alloc(&self, len: usize) -> Result<DmaBuffer> {
        let pages = len.max(1).div_ceil(IO_ALIGN);
        match self.take_pages(pages) {
            Some(first) => Ok(DmaBuffer {
                pool: self.inner.clone(),
                // SAFETY: `first + pages <= total pages`, so the pointer stays in the arena.
                ptr: unsafe { NonNull::new_unchecked(self.inner.base.as_ptr().add(first * IO_ALIGN)) },
                len,
                pages,
            }),
            None => Err(NvmeError::PoolExhausted {
                requested: len,
                free: self.free_bytes(),
                capacity: self.capacity(),
            }),
        }
    }

    /// A buffer of `len` bytes, waiting for other buffers to return if the pool is short.
    /// Fails at once if `len` could never fit.
    pub fn alloc(&self, len: usize) -> AllocFuture<'_> {
        AllocFuture { pool: self, len }
    }

    fn take_pages(&self, pages: usize) -> Option<usize> {
        if pages > self.inner.free_pages.get() {
            return None;
        }
        let mut map = self.inner.free_map.borrow_mut();
        let first = if pages == 1 {
            let word = map.iter().position(|w| *w != 0)?;
            word * 64 + map[word].trailing_zeros() as usize
        } else {
            find_free_run(&map, pages)?
        };
        for page in first..first + pages {
            map[page / 64] &= !(1u64 << (page % 64));
        }
        self.inner.free_pages.set(self.inner.free_pages.get() - pages);
        Some(first)
    }
}

fn checked_pool_capacity(capacity: usize) -> Result<usize> {
    if capacity == 0 || capacity > MAX_POOL_BYTES {
        return Err(NvmeError::Config(format!(
            "DMA pool size {capacity} must be between 1 and {MAX_POOL_BYTES} bytes"
        )));
    }
    Ok(capacity.div_ceil(IO_ALIGN) * IO_ALIGN)
}

/// First index of `pages` consecutive set bits in `map`.
fn find_free_run(map: &[u64], pages: usize) -> Option<usize> {
    let total = map.len() * 64;
    let mut run_start = 0;
    let mut run_len = 0;
    let mut page = 0;
    while page < total {
        let word = map[page / 64];
        if page % 64 == 0 && word == 0 {
            run_len = 0;
            page += 64;
            continue;
        }
        if word & (1u64 << (page % 64)) != 0 {
            if run_len == 0 {
                run_start = page;
            }
            run_len += 1;
            if run_len == pages {
                return Some(run_start);
            }
        } else {
            run_len = 0;
        }
        page += 1;
    }
    None
}

/// Future of [`BufferPool::alloc`].
pub struct AllocFuture<'a> {
    pool: &'a BufferPool,
    len: usize,
}

impl Future for AllocFuture<'_> {
    type Output = Result<DmaBuffer>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.len > self.pool.capacity() {
            return Poll::Ready(Err(NvmeError::PoolExhausted {
                requested: self.len,
                free: self.pool.free_bytes(),
                capacity: self.pool.capacity(),
            }));
        }
        match self.pool.try_alloc(self.len) {
            Ok(buf) => Poll::Ready(Ok(buf)),
            Err(_) => {
                self.pool.inner.waiters.borrow_mut().push(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// An `IO_ALIGN`-aligned buffer from a [`BufferPool`]; its pages return to the pool on drop.
pub struct DmaBuffer {
    pool: Rc<PoolInner>,
    ptr: NonNull<u8>,
    len: usize,
    pages: usize,
}

impl DmaBuffer {
    /// Bytes this buffer can hold (whole pages).
    pub fn capacity(&self) -> usize {
        self.pages * IO_ALIGN
    }

    /// Bytes in use; reads and writes move exactly this many.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Change the bytes in use, up to the capacity.
    pub fn set_len(&mut self, len: usize) -> Result<()> {
        if len > self.capacity() {
            return Err(NvmeError::TooLarge {
                len,
                limit: self.capacity(),
            });
        }
        self.len = len;
        Ok(())
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }

    pub(crate) fn pool_id(&self) -> u64 {
        self.pool.id
    }
}

impl Deref for DmaBuffer {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: `ptr..ptr+capacity` is inside the arena, owned by this buffer alone
        // (its pages are marked taken), and `len <= capacity`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl DerefMut for DmaBuffer {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl std::fmt::Debug for DmaBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaBuffer")
            .field("len", &self.len)
            .field("capacity", &self.capacity())
            .finish()
    }
}

impl Drop for DmaBuffer {
    fn drop(&mut self) {
        let first = (self.ptr.as_ptr() as usize - self.pool.base.as_ptr() as usize) / IO_ALIGN;
        {
            let mut map = self.pool.free_map.borrow_mut();
            for page in first..first + self.pages {
                map[page / 64] |= 1u64 << (page % 64);
            }
        }
        self.pool.free_pages.set(self.pool.free_pages.get() + self.pages);
        let waiters = std::mem::take(&mut *self.pool.waiters.borrow_mut());
        for waker in waiters {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_return_to_the_pool() {
        let pool = BufferPool::new(64 * IO_ALIGN).unwrap();
        let a = pool.try_alloc(100).unwrap();
        let b = pool.try_alloc(3 * IO_ALIGN + 1).unwrap();
        assert_eq!(a.as_ptr() as usize % IO_ALIGN, 0);
        assert_eq!(b.as_ptr() as usize % IO_ALIGN, 0);
        assert_eq!(b.capacity(), 4 * IO_ALIGN);
        assert_eq!(pool.free_bytes(), 59 * IO_ALIGN);
        drop(a);
        drop(b);
        assert_eq!(pool.free_bytes(), 64 * IO_ALIGN);
    }

    #[test]
    fn exhaustion_is_an_error_not_growth() {
        let pool = BufferPool::new(4 * IO_ALIGN).unwrap();
        let _held = pool.try_alloc(3 * IO_ALIGN).unwrap();
        match pool.try_alloc(2 * IO_ALIGN) {
            Err(NvmeError::PoolExhausted {
                requested,
                free,
                capacity,
            }) => {
                assert_eq!(
                    (requested, free, capacity),
                    (2 * IO_ALIGN, IO_ALIGN, 4 * IO_ALIGN)
                );
            }
            other => panic!("expected PoolExhausted, got {other:?}"),
        }
        // A request that could never fit fails instead of waiting forever.
        let never = futures_lite::future::block_on(pool.alloc(5 * IO_ALIGN));
        assert!(matches!(never, Err(NvmeError::PoolExhausted { .. })));
    }

    #[test]
    fn fragmented_pool_finds_contiguous_runs() {
        let pool = BufferPool::new(130 * IO_ALIGN).unwrap();
        let bufs: Vec<_> = (0..130).map(|_| pool.try_alloc(IO_ALIGN).unwrap()).collect();
        let mut kept = Vec::new();
        for (i, b) in bufs.into_iter().enumerate() {
            // Free pages 70..73 and every odd page.
            if (70..73).contains(&i) || i % 2 == 1 {
                drop(b);
            } else {
                kept.push(b);
            }
        }
        let run = pool.try_alloc(3 * IO_ALIGN).unwrap();
        let offset = run.as_ptr() as usize - pool.arena().0.as_ptr() as usize;
        assert_eq!(offset / IO_ALIGN, 69); // 69 (odd), 70, 71 are the first free run of 3
        assert!(pool.try_alloc(4 * IO_ALIGN).is_err());
    }

    #[test]
    fn waiting_alloc_completes_when_a_buffer_returns() {
        let pool = BufferPool::new(2 * IO_ALIGN).unwrap();
        let held = pool.try_alloc(2 * IO_ALIGN).unwrap();
        let mut fut = Box::pin(pool.alloc(IO_ALIGN));
        let waker = futures_lite::future::block_on(futures_lite::future::poll_fn(|cx| {
            Poll::Ready(cx.waker().clone())
        }));
        let mut cx = Context::from_waker(&waker);
        assert!(fut.as_mut().poll(&mut cx).is_pending());
        drop(held);
        assert!(matches!(fut.as_mut().poll(&mut cx), Poll::Ready(Ok(_))));
    }

    #[test]
    fn set_len_is_bounded_by_capacity() {
        let pool = BufferPool::new(4 * IO_ALIGN).unwrap();
        let mut b = pool.try_alloc(10).unwrap();
        assert!(b.set_len(IO_ALIGN).is_ok());
        assert!(matches!(b.set_len(IO_ALIGN + 1), Err(NvmeError::TooLarge { .. })));
    }
}
