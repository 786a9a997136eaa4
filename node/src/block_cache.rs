//! A per-thread cache of freed 1-16 KiB heap blocks in front of the system allocator, for
//! the shard threads.
//!
//! Under durable SETs a shard allocates and frees a few blocks of this size per command
//! (the command's future is about 5 KiB). glibc serves them from its large bins: each such
//! request first consolidates the fast bins, and each free merges with its neighbours;
//! that was most of the 17 % of a shard's CPU that glibc's allocator took (`perf`,
//! session 20). A shard thread that opted in (`cache_this_thread`) keeps up to
//! `MAX_CACHED_BYTES` of such blocks, by size class, and hands them out again with a push
//! and a pop. Other threads, and every other size, go straight to the system allocator.
//!
//! Every request in the cached range is rounded up to its class's size whichever thread
//! makes it, so a block freed on a caching thread is always as large as its class, wherever
//! it was allocated. mimalloc did the same job (1.01-1.34x on SETs) but made each idle
//! socket cost the node 70 KiB (`BENCHMARKS.md`); this cache holds nothing per connection.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// The size classes are multiples of this.
const UNIT: usize = 1024;
/// Classes: (UNIT, 2 UNIT], ..., (15 UNIT, 16 UNIT]. Requests of UNIT bytes or fewer are
/// glibc's thread cache's and fast bins' already.
const CLASSES: usize = 15;
/// At most this many bytes are kept by one thread, over all classes: about what 800
/// commands in flight (50 connections pipelining 16) hold at once, so that a burst of them
/// ending feeds the next burst from the cache.
const MAX_CACHED_BYTES: usize = 8 << 20;
/// Blocks of the cached range are aligned to this (as glibc's malloc aligns every block).
const ALIGN: usize = 16;

/// Per class, a list of free blocks linked through their first bytes.
struct Cache {
    on: bool,
    bytes: usize,
    heads: [*mut u8; CLASSES],
}

thread_local! {
    // Const-initialised and without a destructor: reading it never allocates and works
    // while the thread exits (the blocks it holds then are never freed; only long-lived
    // shard threads turn it on).
    static CACHE: UnsafeCell<Cache> = const {
        UnsafeCell::new(Cache {
            on: false,
            bytes: 0,
            heads: [std::ptr::null_mut(); CLASSES],
        })
    };
}

/// From now on this thread keeps the blocks it frees for its next requests.
pub fn cache_this_thread() {
    CACHE.with(|c| unsafe { (*c.get()).on = true });
}

/// The bytes this thread holds for reuse.
pub fn cached_bytes() -> usize {
    CACHE.with(|c| unsafe { (*c.get()).bytes })
}

/// The class of a request, or None when the system allocator takes it as it is.
fn class_of(layout: Layout) -> Option<usize> {
    let size = layout.size();
    if layout.align() > ALIGN || size <= UNIT || size > UNIT * (CLASSES + 1) {
        return None;
    }
    Some(size.div_ceil(UNIT) - 2)
}

fn class_layout(class: usize) -> Layout {
    // Sizes from 2 to 16 KiB, aligned to 16: always a valid layout.
    Layout::from_size_align((class + 2) * UNIT, ALIGN).expect("a block class's layout")
}

/// The global allocator: the system's, with the per-thread block cache in front.
pub struct ShardAllocator;

unsafe impl GlobalAlloc for ShardAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(class) = class_of(layout) else {
            return unsafe { System.alloc(layout) };
        };
        let cached = CACHE
            .try_with(|c| {
                let c = unsafe { &mut *c.get() };
                let block = c.heads[class];
                if block.is_null() {
                    return None;
                }
                // Each free block starts with the next one's address (aligned to 16).
                c.heads[class] = unsafe { *(block as *mut *mut u8) };
                c.bytes -= (class + 2) * UNIT;
                Some(block)
            })
            .ok()
            .flatten();
        match cached {
            Some(block) => block,
            None => unsafe { System.alloc(class_layout(class)) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let Some(class) = class_of(layout) else {
            return unsafe { System.dealloc(ptr, layout) };
        };
        let kept = CACHE
            .try_with(|c| {
                let c = unsafe { &mut *c.get() };
                let size = (class + 2) * UNIT;
                if !c.on || c.bytes + size > MAX_CACHED_BYTES {
                    return false;
                }
                unsafe { *(ptr as *mut *mut u8) = c.heads[class] };
                c.heads[class] = ptr;
                c.bytes += size;
                true
            })
            .unwrap_or(false);
        if !kept {
            unsafe { System.dealloc(ptr, class_layout(class)) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if class_of(layout).is_none() {
            return unsafe { System.alloc_zeroed(layout) };
        }
        let ptr = unsafe { self.alloc(layout) };
        if !ptr.is_null() {
            unsafe { std::ptr::write_bytes(ptr, 0, layout.size()) };
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // Safety of the layout: the caller promises new_size, rounded to the alignment,
        // does not overflow isize.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        match (class_of(layout), class_of(new_layout)) {
            (None, None) => unsafe { System.realloc(ptr, layout, new_size) },
            (Some(a), Some(b)) if a == b => ptr,
            _ => {
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(size: usize) -> Layout {
        Layout::from_size_align(size, 8).unwrap()
    }

    #[test]
    fn sizes_fall_into_classes_of_whole_kibibytes() {
        assert_eq!(class_of(layout(1024)), None, "glibc's own fast path");
        assert_eq!(class_of(layout(1025)), Some(0));
        assert_eq!(class_of(layout(2048)), Some(0));
        assert_eq!(class_of(layout(5240)), Some(4));
        assert_eq!(class_of(layout(16 << 10)), Some(14));
        assert_eq!(class_of(layout((16 << 10) + 1)), None);
        assert_eq!(
            class_of(Layout::from_size_align(4096, 4096).unwrap()),
            None,
            "alignment past 16"
        );
        for size in 1025..=(16 << 10) {
            let c = class_of(layout(size)).unwrap();
            assert!(class_layout(c).size() >= size, "{size} fits its class");
        }
    }

    #[test]
    fn a_caching_thread_reuses_a_freed_block_for_the_next_request_of_its_class() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let a = ShardAllocator.alloc(layout(5000));
            // The whole class is usable: write all of it.
            std::ptr::write_bytes(a, 7, class_layout(class_of(layout(5000)).unwrap()).size());
            ShardAllocator.dealloc(a, layout(5000));
            assert_eq!(cached_bytes(), 5 << 10);
            let b = ShardAllocator.alloc(layout(4200));
            assert_eq!(a, b, "same class, same block");
            assert_eq!(cached_bytes(), 0);
            let c = ShardAllocator.alloc(layout(3000));
            assert_ne!(b, c, "another class is not served from it");
            ShardAllocator.dealloc(b, layout(4200));
            ShardAllocator.dealloc(c, layout(3000));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_thread_that_did_not_opt_in_keeps_nothing() {
        std::thread::spawn(|| unsafe {
            let a = ShardAllocator.alloc(layout(5000));
            ShardAllocator.dealloc(a, layout(5000));
            assert_eq!(cached_bytes(), 0);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_block_from_another_thread_is_a_whole_class_when_a_caching_thread_frees_it() {
        // Allocated on a thread that does not cache, freed (and reused) on one that does.
        let a = std::thread::spawn(|| unsafe { ShardAllocator.alloc(layout(2100)) as usize })
            .join()
            .unwrap();
        std::thread::spawn(move || unsafe {
            cache_this_thread();
            ShardAllocator.dealloc(a as *mut u8, layout(2100));
            let b = ShardAllocator.alloc(layout(3072));
            assert_eq!(b as usize, a);
            std::ptr::write_bytes(b, 1, 3072);
            ShardAllocator.dealloc(b, layout(3072));
        })
        .join()
        .unwrap();
    }

    #[test]
    fn the_cache_stops_at_its_bound() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let n = MAX_CACHED_BYTES / (16 << 10) + 10;
            let blocks: Vec<_> = (0..n).map(|_| ShardAllocator.alloc(layout(16 << 10))).collect();
            for &p in &blocks {
                ShardAllocator.dealloc(p, layout(16 << 10));
            }
            assert_eq!(cached_bytes(), MAX_CACHED_BYTES);
            // Handed out again, each once.
            let mut again: Vec<_> = (0..n).map(|_| ShardAllocator.alloc(layout(16 << 10))).collect();
            assert_eq!(cached_bytes(), 0);
            again.sort();
            again.dedup();
            assert_eq!(again.len(), n, "no block handed out twice");
            for &p in &again {
                std::ptr::write_bytes(p, 3, 16 << 10);
                ShardAllocator.dealloc(p, layout(16 << 10));
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn realloc_keeps_the_bytes_across_classes_and_in_place_within_one() {
        std::thread::spawn(|| unsafe {
            cache_this_thread();
            let a = ShardAllocator.alloc(layout(1500));
            for i in 0..1500 {
                *a.add(i) = i as u8;
            }
            let same = ShardAllocator.realloc(a, layout(1500), 2000);
            assert_eq!(same, a, "the class's block already has room");
            let bigger = ShardAllocator.realloc(same, layout(2000), 9000);
            let out_of_range = ShardAllocator.realloc(bigger, layout(9000), 100_000);
            let back = ShardAllocator.realloc(out_of_range, layout(100_000), 1200);
            let small = ShardAllocator.realloc(back, layout(1200), 500);
            for i in 0..500 {
                assert_eq!(*small.add(i), i as u8);
            }
            ShardAllocator.dealloc(small, layout(500));
        })
        .join()
        .unwrap();
    }
}
