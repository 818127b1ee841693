//! Shared pieces of the dataplane benchmarks: a counting global allocator.
//!
//! Each bench that checks its packet path makes no heap allocation includes this module
//! (`mod support;`) and installs the allocator:
//!
//! ```ignore
//! #[global_allocator]
//! static GLOBAL: support::CountingAllocator = support::CountingAllocator;
//! ```
//!
//! then reads [`allocations`] (every thread of the process) or [`thread_allocations`]
//! (the calling thread only) before and after the measured loop.
//!
//! This file is `benches/support/mod.rs`, not `benches/*.rs` nor `benches/*/main.rs`, so
//! cargo does not discover it as a bench target of its own.

// Each bench uses only some of these items (one count or the other).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};

/// Heap allocations (alloc, alloc_zeroed, realloc) since the start of the process, on
/// every thread.
static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// Heap allocations (alloc, alloc_zeroed, realloc) made by this thread since it
    /// started. Const-initialised with no destructor: reading or bumping it never
    /// allocates, so it is safe to use from inside the allocator.
    static THREAD_ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

/// The system allocator, counting allocations (alloc, alloc_zeroed, realloc; dealloc is
/// not counted) both process-wide ([`allocations`]) and per thread
/// ([`thread_allocations`]).
pub struct CountingAllocator;

impl CountingAllocator {
    /// Records one allocation in both counters.
    #[inline]
    fn count() {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // `try_with`: the thread-local may already be gone while the thread exits; those
        // allocations are then counted process-wide only.
        let _ = THREAD_ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to `System`, which upholds the GlobalAlloc
// contract; the counters have no effect on the memory returned and never allocate.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: forwarded with the caller's guarantees (non-zero size layout).
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        Self::count();
        // SAFETY: forwarded with the caller's guarantees (non-zero size layout).
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        Self::count();
        // SAFETY: `ptr` was allocated by this allocator (i.e. by System) with `layout`,
        // and the caller guarantees `new_size` is valid for it.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by this allocator (i.e. by System) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

/// Heap allocations made by every thread of the process since it started.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

/// Heap allocations made by the calling thread since it started.
pub fn thread_allocations() -> u64 {
    THREAD_ALLOCATIONS.with(Cell::get)
}
