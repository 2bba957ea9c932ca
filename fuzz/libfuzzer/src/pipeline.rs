//! Frames from any side, clock ticks and reloads through one pipeline: no
//! panic, and no allocation while deciding (a reload allocates, by design).
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::{Cell, RefCell};

struct Counting;

thread_local! {
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
    static PIPE: RefCell<Option<sgswitch_fuzz::Pipeline<u32>>> = const { RefCell::new(None) };
}

// SAFETY: delegates to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `System.alloc` with layout `l`.
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    PIPE.with(|cell| {
        let mut slot = cell.borrow_mut();
        let pipe = slot.get_or_insert_with(|| {
            let mut p = sgswitch_fuzz::new_pipeline();
            sgswitch_fuzz::pipeline(&mut p, &[0, 0]);
            p
        });
        // Every input starts from an empty table, but the table is not
        // made anew (that allocates).
        pipe.conntrack.flush(None);
        let before = ALLOCS.with(Cell::get);
        sgswitch_fuzz::pipeline(pipe, data);
        let allocated = ALLOCS.with(Cell::get) - before;
        if sgswitch_fuzz::reloads(data) == 0 {
            assert_eq!(allocated, 0, "deciding frames allocated");
        }
    });
});
