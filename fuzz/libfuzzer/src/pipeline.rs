//! Frames from any side, clock ticks and reloads through one pipeline: no
//! panic, and no allocation while deciding (a reload allocates, by design).
#![no_main]

use std::cell::RefCell;

#[path = "../../../tests/support/counting_alloc.rs"]
mod counting_alloc;

thread_local! {
    static PIPE: RefCell<Option<sgswitch_fuzz::Pipeline<u32>>> = const { RefCell::new(None) };
}

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
        let before = counting_alloc::allocs();
        sgswitch_fuzz::pipeline(pipe, data);
        let allocated = counting_alloc::allocs() - before;
        if sgswitch_fuzz::reloads(data) == 0 {
            assert_eq!(allocated, 0, "deciding frames allocated");
        }
    });
});
