//! Large preallocated arrays, backed by transparent huge pages where the
//! kernel allows.
//!
//! At a million flows the table spans over 100 MB. With 4 KiB pages every
//! lookup misses the TLB as well as the cache, and the page walk misses too;
//! with 2 MiB pages the TLB covers the table. The arrays are advised with
//! `madvise(MADV_HUGEPAGE)` before they are first written, so the kernel
//! backs them with huge pages as they fault in (under THP `madvise` mode, the
//! common default). Where huge pages are not available the advice fails
//! silently and the arrays are ordinary pages: slower, never wrong.

use std::mem::MaybeUninit;

/// The size of a transparent huge page on x86-64 and arm64 (4 KiB base).
const HUGE: usize = 2 << 20;

/// `len` copies of `value` in memory advised for huge pages.
pub fn filled<T: Clone>(len: usize, value: T) -> Vec<T> {
    let mut v = Vec::with_capacity(len);
    advise_huge(v.spare_capacity_mut());
    v.resize(len, value);
    v
}

/// Advises the whole 2 MiB pages inside `mem` for huge pages; does nothing
/// for smaller ranges.
#[allow(unsafe_code, reason = "madvise, advice only; see the SAFETY note")]
fn advise_huge<T>(mem: &mut [MaybeUninit<T>]) {
    let bytes = size_of_val(mem);
    let base = mem.as_mut_ptr().cast::<u8>();
    let skip = base.align_offset(HUGE);
    let Some(len) = bytes.checked_sub(skip).map(|rest| rest / HUGE * HUGE) else { return };
    if len == 0 {
        return;
    }
    let start = base.wrapping_add(skip);
    // SAFETY: MADV_HUGEPAGE only tells the kernel how to back pages of this
    // range, which lies inside memory this function borrows mutably (the
    // vector's unused capacity, not yet written); it reads and writes
    // nothing and changes no contents, so no reference is invalidated. A
    // failure (THP disabled, old kernel) is ignored on purpose.
    let _ = unsafe { libc::madvise(start.cast(), len, libc::MADV_HUGEPAGE) };
}

/// Asks the CPU to bring the cache line of `r` in, without waiting for it:
/// unlike a load, a prefetch retires at once, so a batch can have all its
/// misses in flight. Elsewhere than x86-64 it does nothing.
#[inline(always)]
#[allow(unsafe_code, reason = "a prefetch hint; see the SAFETY note")]
pub fn prefetch<T>(r: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: SSE is part of the x86-64 baseline, so the instruction exists
    // on every CPU this code runs on; a prefetch reads nothing into the
    // program and cannot fault, and the address is that of a live
    // reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(std::ptr::from_ref(r).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = r;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_arrays_hold_their_values_large_or_small() {
        let small = filled(3, 7u32);
        assert_eq!(small, [7, 7, 7]);
        let big = filled(3 << 20, 0xabu8);
        assert_eq!(big.len(), 3 << 20);
        assert!(big.iter().all(|&b| b == 0xab));
    }
}
