//! A global allocator that counts allocations per thread, for the tests
//! that prove a hot path allocates nothing. Included with
//! `#[path = "…/tests/support/counting_alloc.rs"] mod counting_alloc;`.
//!
//! Per thread: the test harness's own threads allocate while a test runs,
//! and only the measured thread's allocations count.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    // Const-initialised, so reading it never allocates.
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// Allocations made so far by this thread.
pub(crate) fn allocs() -> usize {
    ALLOCS.with(Cell::get)
}

// SAFETY: delegates to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: same contract as our caller's.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;
