//! A virtio split ring as the device side uses it, on the guest's memory
//! mapped into the switch: descriptor table, available ring, used ring.
//!
//! Why not virtio-queue's `Queue` in the loop: measured at 1,000 rules
//! (perf, software clock), its per-chain read of the available index and
//! vm-memory's per-access region walk (`read_slice`, `write_slice`,
//! `load`/`store` each find the region and iterate over it) took about half
//! of the loop at 1 Mpps. Here the three ring areas are found in the
//! guest's memory once, when the ring starts, and checked to lie whole
//! inside one mapped region; the available index is read once per batch and
//! the used index written once per batch; buffers are found by a scan of the
//! regions (a guest has a handful) and bounds-checked.
//!
//! # Safety
//! Every pointer here points into a mapping that `mem` (an `Arc` the ring
//! holds) keeps alive, and every access is checked to lie inside it: the
//! ring areas when the ring is made, each buffer before it is read or
//! written. The guest writes the same memory concurrently: ring fields are
//! read and written with volatile or atomic accesses, and frame bytes are
//! copied out to the switch's own memory once (then parsed from the copy),
//! so a guest that changes a buffer while it is read garbles only its own
//! frame.
#![allow(unsafe_code, reason = "the guest's rings and buffers are raw shared memory; the module docs say why each access holds")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};

use super::GuestMem;

/// Descriptor flags.
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;
/// Used ring flag: the device polls; the driver need not kick.
const USED_F_NO_NOTIFY: u16 = 1;
/// Avail ring flag: the driver polls; the device need not interrupt.
const AVAIL_F_NO_INTERRUPT: u16 = 1;

/// One descriptor: where, how long, whether the device writes it.
#[derive(Clone, Copy, Debug)]
pub(super) struct Desc {
    pub addr: u64,
    pub len: u32,
    pub write: bool,
}

/// A posted chain's head and its first descriptor, as a batch takes them.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Head {
    pub head: u16,
    pub addr: u64,
    pub len: u32,
    /// `u16::MAX` for a head outside the table (no simple chain).
    pub flags: u16,
}

/// Why a chain could not be walked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ChainError {
    /// A head or next index out of the table, a loop, an indirect table.
    Malformed,
    /// More descriptors than the caller takes.
    TooLong,
}

/// A mapped region: guest physical start, length, host address.
#[derive(Clone, Copy, Debug)]
struct Region {
    start: u64,
    len: u64,
    host: *mut u8,
}

/// A split ring the loop owns.
#[derive(Debug)]
pub(super) struct Split {
    size: u16,
    desc: *mut u8,
    avail: *mut u8,
    used: *mut u8,
    next_avail: u16,
    next_used: u16,
    /// The used index as last published.
    published: u16,
    /// The available index as last read: entries up to it are the
    /// device's to take.
    avail_seen: u16,
    regions: Vec<Region>,
    /// The CPU has PREFETCHW (else a write prefetch is a read one).
    prefetchw: bool,
    _mem: Arc<GuestMem>,
}

// SAFETY: the raw pointers point into the mapping `_mem` keeps alive; the
// ring moves to the loop's thread whole and is used only there.
unsafe impl Send for Split {}

impl Split {
    /// The ring of `size` entries at these guest addresses, starting at
    /// `base`; `None` if a part is misaligned or not inside one region.
    pub(super) fn new(mem: Arc<GuestMem>, size: u16, desc: u64, avail: u64, used: u64, base: u16) -> Option<Split> {
        if size == 0 || !size.is_power_of_two() || desc % 16 != 0 || avail % 2 != 0 || used % 4 != 0 {
            return None;
        }
        let regions: Vec<Region> = mem
            .iter()
            .filter_map(|r| {
                let host = r.get_host_address(vm_memory::MemoryRegionAddress(0)).ok()?;
                Some(Region { start: r.start_addr().0, len: r.len(), host })
            })
            .collect();
        let n = u64::from(size);
        let find = |addr: u64, len: u64| translate(&regions, addr, len);
        let desc = find(desc, 16 * n)?;
        let avail = find(avail, 6 + 2 * n)?;
        let used = find(used, 6 + 8 * n)?;
        Some(Split {
            size,
            desc,
            avail,
            used,
            next_avail: base,
            next_used: base,
            published: base,
            avail_seen: base,
            regions,
            prefetchw: has_prefetchw(),
            _mem: mem,
        })
    }

    /// Where running index `i` falls in the ring: `size` is a power of
    /// two (checked in `new`), so a mask, not a division in the loop.
    #[inline]
    fn slot(&self, i: u16) -> usize {
        usize::from(i & (self.size - 1))
    }

    pub(super) fn next_avail(&self) -> u16 {
        self.next_avail
    }

    /// Carries on where `old` (the same ring on an earlier memory table)
    /// stopped.
    pub(super) fn resume(&mut self, old: &Split) {
        (self.next_avail, self.next_used, self.published, self.avail_seen) = (old.next_avail, old.next_used, old.published, old.avail_seen);
    }

    fn avail_idx(&self) -> u16 {
        // SAFETY: `avail` + 2 is inside the available ring (checked in
        // `new`), 2-aligned; an atomic view of guest memory.
        let a = unsafe { AtomicU16::from_ptr(self.avail.add(2).cast::<u16>()) };
        u16::from_le(a.load(Ordering::Acquire))
    }

    /// Reads the available index: how many chains the guest has posted
    /// that the device has not taken.
    pub(super) fn refresh(&mut self) -> u16 {
        self.avail_seen = self.avail_idx();
        self.avail_seen.wrapping_sub(self.next_avail)
    }

    /// The next posted chain's head, if any (as of the last `refresh`).
    pub(super) fn pop(&mut self) -> Option<u16> {
        if self.next_avail == self.avail_seen {
            return None;
        }
        let slot = self.slot(self.next_avail);
        // SAFETY: slot < size: inside the available ring's entries.
        let head = u16::from_le(unsafe { self.avail.add(4 + 2 * slot).cast::<u16>().read_volatile() });
        self.next_avail = self.next_avail.wrapping_add(1);
        Some(head)
    }

    /// Puts back the last `n` chains taken (not used).
    pub(super) fn unpop(&mut self, n: u16) {
        self.next_avail = self.next_avail.wrapping_sub(n);
    }

    fn desc(&self, i: u16) -> (u64, u32, u16, u16) {
        // SAFETY: the caller checked i < size: inside the descriptor table.
        unsafe {
            let p = self.desc.add(16 * usize::from(i));
            let addr = u64::from_le(p.cast::<u64>().read_volatile());
            let len = u32::from_le(p.add(8).cast::<u32>().read_volatile());
            let flags = u16::from_le(p.add(12).cast::<u16>().read_volatile());
            let next = u16::from_le(p.add(14).cast::<u16>().read_volatile());
            (addr, len, flags, next)
        }
    }

    /// Takes up to `out.len()` posted chains (as of the last `refresh`),
    /// each head with its first descriptor, and starts loading each
    /// buffer's bytes from `offset` on (for `access`), and the used-ring
    /// entries the chains will take, for writing; how many. Reading a
    /// batch's descriptors before any copy lets their cache misses overlap.
    ///
    /// The lines the guest last wrote are in its core's cache: a read
    /// prefetch fetches them shared, and a write to them then pays a
    /// second trip between the cores to own them. A buffer the switch
    /// writes (and every used entry) is asked for owned at once.
    pub(super) fn take_batch(&mut self, out: &mut [Head], offset: u64, access: Access) -> usize {
        let mut n = 0;
        for slot in out.iter_mut() {
            let Some(head) = self.pop() else { break };
            *slot = if head < self.size {
                let (addr, len, flags, _) = self.desc(head);
                Head { head, addr, len, flags }
            } else {
                Head { head, addr: 0, len: 0, flags: u16::MAX }
            };
            if let Some(p) = translate(&self.regions, slot.addr.wrapping_add(offset), 1) {
                self.prefetch(p, access);
            }
            n += 1;
        }
        // The used entries these chains will take (8 bytes each, after the
        // 4-byte header), a line at a time, and the last one's (the line
        // after the others' when the entries do not start a line).
        let taken = u16::try_from(n).unwrap_or(u16::MAX);
        for at in (0..taken).step_by(8).chain(taken.checked_sub(1)) {
            let slot = self.slot(self.next_used.wrapping_add(at));
            // SAFETY: a slot is below `size`: inside the used ring; the
            // pointer is only prefetched.
            self.prefetch(unsafe { self.used.add(4 + 8 * slot) }, Access::Write);
        }
        n
    }

    /// Whether a chain's first descriptor is the whole chain, read-only,
    /// direct.
    pub(super) fn simple(flags: u16) -> bool {
        flags & (F_NEXT | F_WRITE | F_INDIRECT) == 0
    }

    /// Whether a chain's first descriptor is the whole chain, writable,
    /// direct.
    pub(super) fn simple_writable(flags: u16) -> bool {
        flags & (F_NEXT | F_INDIRECT) == 0 && flags & F_WRITE != 0
    }

    /// Asks the CPU to start loading the line at `p`, to read it or to own
    /// it for writing (a hint: it never faults, whatever `p` is).
    #[inline]
    fn prefetch(&self, p: *const u8, access: Access) {
        #[cfg(target_arch = "x86_64")]
        if access == Access::Write && self.prefetchw {
            // SAFETY: a prefetch is a hint that never faults; the CPU has
            // the instruction (`has_prefetchw`); it reads no memory into
            // registers and writes none.
            unsafe { std::arch::asm!("prefetchw [{0}]", in(reg) p, options(nostack, preserves_flags, readonly)) }
        } else {
            // SAFETY: a prefetch is a hint that never faults.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>()) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (p, access);
    }

    /// The descriptors of the chain at `head`, into `out`; how many.
    pub(super) fn chain(&self, head: u16, out: &mut [Desc]) -> Result<usize, ChainError> {
        let mut i = head;
        let mut n = 0;
        loop {
            if i >= self.size {
                return Err(ChainError::Malformed);
            }
            let (addr, len, flags, next) = self.desc(i);
            if flags & F_INDIRECT != 0 {
                return Err(ChainError::Malformed);
            }
            let slot = out.get_mut(n).ok_or(ChainError::TooLong)?;
            *slot = Desc { addr, len, write: flags & F_WRITE != 0 };
            n += 1;
            if flags & F_NEXT == 0 {
                return Ok(n);
            }
            i = next;
        }
    }

    /// Whether guest bytes [addr, addr + len) are all inside the guest's
    /// memory (what `read` and `write` check).
    pub(super) fn holds(&self, addr: u64, len: usize) -> bool {
        translate(&self.regions, addr, len as u64).is_some()
    }

    /// Copies guest bytes at `addr` into `to`; false if they are not all
    /// inside the guest's memory.
    pub(super) fn read(&self, addr: u64, to: &mut [u8]) -> bool {
        let Some(p) = translate(&self.regions, addr, to.len() as u64) else { return false };
        // SAFETY: `translate` checked [addr, addr + len) lies in one mapped
        // region; `to` is the switch's own memory, not overlapping it.
        unsafe { std::ptr::copy_nonoverlapping(p, to.as_mut_ptr(), to.len()) };
        true
    }

    /// Copies `from` into guest memory at `addr`; false if it does not fit
    /// inside the guest's memory.
    pub(super) fn write(&self, addr: u64, from: &[u8]) -> bool {
        let Some(p) = translate(&self.regions, addr, from.len() as u64) else { return false };
        // SAFETY: as in `read`, the other way.
        unsafe { std::ptr::copy_nonoverlapping(from.as_ptr(), p, from.len()) };
        true
    }

    /// Records chain `head` as used, `len` bytes written; seen by the guest
    /// at the next `publish`.
    pub(super) fn push_used(&mut self, head: u16, len: u32) {
        let slot = self.slot(self.next_used);
        // SAFETY: slot < size: inside the used ring's entries (8 bytes
        // each, after the 4-byte header).
        unsafe {
            let p = self.used.add(4 + 8 * slot);
            p.cast::<u32>().write_volatile(u32::from(head).to_le());
            p.add(4).cast::<u32>().write_volatile(len.to_le());
        }
        self.next_used = self.next_used.wrapping_add(1);
    }

    /// Publishes the used entries pushed since the last call; whether
    /// there were any.
    pub(super) fn publish(&mut self) -> bool {
        if self.published == self.next_used {
            return false;
        }
        // SAFETY: `used` + 2 is the used index, inside the used ring,
        // 2-aligned (4-aligned ring).
        let a = unsafe { AtomicU16::from_ptr(self.used.add(2).cast::<u16>()) };
        a.store(self.next_used.to_le(), Ordering::Release);
        self.published = self.next_used;
        true
    }

    /// Whether the guest wants to be told of used buffers.
    pub(super) fn wants_interrupt(&self) -> bool {
        // SAFETY: the available ring's flags, inside it.
        let flags = u16::from_le(unsafe { self.avail.cast::<u16>().read_volatile() });
        flags & AVAIL_F_NO_INTERRUPT == 0
    }

    /// Tells the guest whether to kick when it posts chains; when asking it
    /// to, returns whether chains were posted meanwhile.
    pub(super) fn set_kicks(&mut self, on: bool) -> bool {
        let a = {
            // SAFETY: the used ring's flags, inside it, 2-aligned.
            unsafe { AtomicU16::from_ptr(self.used.cast::<u16>()) }
        };
        a.store(if on { 0 } else { USED_F_NO_NOTIFY.to_le() }, Ordering::SeqCst);
        on && self.avail_idx() != self.next_avail
    }
}

/// What the switch will do with guest bytes it asks for ahead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

/// Whether the CPU has PREFETCHW (CPUID 0x8000_0001, ECX bit 8): the
/// kernel's `prefetchw` checks the same before it uses the instruction.
fn has_prefetchw() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let leaf = 0x8000_0001;
        std::arch::x86_64::__get_cpuid_max(0x8000_0000).0 >= leaf && std::arch::x86_64::__cpuid(leaf).ecx & (1 << 8) != 0
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// The host address of guest bytes [addr, addr + len), if they lie in one
/// region.
fn translate(regions: &[Region], addr: u64, len: u64) -> Option<*mut u8> {
    let r = regions.iter().find(|r| addr >= r.start && addr - r.start < r.len)?;
    let off = addr - r.start;
    if len > r.len - off {
        return None;
    }
    // SAFETY: off + len <= r.len: inside the region's mapping.
    Some(unsafe { r.host.add(usize::try_from(off).ok()?) })
}

#[cfg(test)]
mod tests {
    /// The CPUID bit read is the one Linux reports as `3dnowprefetch`.
    #[test]
    #[cfg(all(target_arch = "x86_64", target_os = "linux"))]
    fn prefetchw_is_found_where_the_kernel_finds_it() {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").expect("/proc/cpuinfo");
        let flags = cpuinfo.lines().find(|l| l.starts_with("flags")).expect("a flags line");
        let kernel = flags.split_whitespace().any(|f| f == "3dnowprefetch");
        assert_eq!(super::has_prefetchw(), kernel, "{flags}");
    }
}
