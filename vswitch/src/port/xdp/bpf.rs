//! The switch's own XDP program on each interface it binds: the frames of
//! each receive queue go to the AF_XDP socket of that queue (an `XSKMAP`
//! indexed by queue), and a queue without one goes to the kernel's stack
//! (`XDP_PASS`), as libxdp's default program does.
//!
//! It is attached through a BPF link (`BPF_LINK_CREATE`), which the kernel
//! owns on the switch's behalf only while a descriptor to it is open: a
//! switch that exits, cleanly or killed, leaves no program on its
//! interfaces (libxdp attached through netlink, which outlives the
//! process, and a killed switch's program stayed until the next start
//! removed it). A link also keeps any other program from replacing this
//! one while the switch runs.
//!
//! One attachment per interface serves every socket bound on it, whichever
//! poll loop owns the socket: sockets hold it, and the last one closed
//! detaches the program. The programs are a few dozen instructions,
//! assembled here (no BPF toolchain).
//!
//! # The fast path
//! With `[datapath] fast_path`, the program first looks an untagged IPv4
//! UDP frame (20-byte header, not a fragment) up in [`FastMaps`]' flow
//! map, by the interface it arrived on, both MACs, both addresses and both
//! ports: a flow a poll loop judged established and put there. A hit
//! whose generation is its loop's current one is counted (packets, bytes)
//! in the flow's slot of the counter array and redirected to the
//! interface the loop sent the flow's frames to; a miss goes to the socket
//! as before. The counter array is mapped into the switch's memory
//! (`BPF_F_MMAPABLE`), so the loops read what the programs counted with
//! plain loads: a sync of thousands of flows makes no system call (one
//! lookup per flow made each sync slice a stall of tens of microseconds
//! that the kernel's receive work, sharing the loop's core, waited out).
//! The loop stays the authority: it puts a flow there only after passing one of its frames as established
//! through the flow cache, moves its generation on with every plan (which
//! retires all its flows at once), and every sync accounts what the
//! program forwarded to the flow's connection entries and counters and
//! takes the flow out when an entry is no longer ready or would lapse
//! before the next sync (`engine::fast`).
#![allow(unsafe_code, reason = "the bpf(2) system call takes a union of C structs; each call says what it passes")]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// `map_flags`: the array can be mapped into the process (Linux 5.5).
const BPF_F_MMAPABLE: u32 = 1 << 10;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_PASS: i32 = 2;
/// `bpf_redirect_map(map, key, flags)`.
const HELPER_REDIRECT_MAP: i32 = 51;
/// `bpf_map_lookup_elem(map, key)`.
const HELPER_LOOKUP: i32 = 1;
/// `bpf_redirect(ifindex, flags)`.
const HELPER_REDIRECT: i32 = 23;
/// `bpf_xdp_get_buff_len(ctx)` (Linux 5.18).
const HELPER_BUFF_LEN: i32 = 188;
/// Flows the fast path's map holds at most, whatever the number of loops
/// (each loop gives it at most `engine::fast::PER_LOOP`).
pub const FLOWS: u32 = 65_536;
/// Flows the switch's map is made for: [`size_fast_path`] sets it to what
/// its loops can hold, before the first socket is made.
static FLOW_CAPACITY: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(FLOWS);

/// Sizes the flow map to `flows` (at most [`FLOWS`], at least 1): called
/// with the loops' total before the first socket is made. The programs
/// look every frame up in it, a flow or not (a new flow's is a miss), and
/// its bucket array, one bucket per entry, is what that lookup reads: at
/// 65,536 entries 1 MiB, read at random, a cache miss per new flow (5% of
/// the core in the new-flow flood); at one loop's 4,096, 64 KiB.
pub fn size_fast_path(flows: usize) {
    FLOW_CAPACITY.store(flow_capacity(flows), Ordering::Relaxed);
}

fn flow_capacity(flows: usize) -> u32 {
    u32::try_from(flows).unwrap_or(FLOWS).clamp(1, FLOWS)
}
/// Poll loops the generation map has a word for.
pub const LOOPS: u32 = 256;
/// The program's name, as `ip link` and `bpftool` show it.
pub const PROGRAM: &str = "sgswitch_xsk";
/// Queues an interface's map holds: queue indices above are passed to the
/// stack (no interface here has more).
const QUEUES: u32 = 256;

/// One BPF instruction.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
}

/// `bpf(cmd, attr)`, the result or the error.
fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a zeroed buffer at least as large as the union
    // member the command reads (the callers lay the fields out as the
    // kernel's `union bpf_attr` does); the kernel reads and writes only
    // within the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

/// The descriptor a successful `bpf` call that makes an object returned.
fn owned(rc: i64) -> OwnedFd {
    // SAFETY: such a call returns a new file descriptor this process owns.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(rc).unwrap_or(-1)) }
}

fn lo_hi(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

fn raw(fd: &OwnedFd) -> u32 {
    u32::try_from(fd.as_raw_fd()).unwrap_or(0)
}

/// Builds a program, resolving jumps to labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    jumps: Vec<(usize, usize)>,
    labels: Vec<usize>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) -> &mut Asm {
        self.insns.push(insn(code, dst, src, off, imm));
        self
    }
    fn label(&mut self) -> usize {
        self.labels.push(usize::MAX);
        self.labels.len() - 1
    }
    fn here(&mut self, label: usize) {
        self.labels[label] = self.insns.len();
    }
    /// `if dst OP imm goto label` (`op`: a BPF_JMP|BPF_K code).
    fn jump_k(&mut self, op: u8, dst: u8, imm: i32, label: usize) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.op(op, dst, 0, 0, imm)
    }
    /// `if dst OP src goto label` (`op`: a BPF_JMP|BPF_X code).
    fn jump_x(&mut self, op: u8, dst: u8, src: u8, label: usize) -> &mut Asm {
        self.jumps.push((self.insns.len(), label));
        self.op(op, dst, src, 0, 0)
    }
    /// `r0 = bpf_map_lookup_elem(map, &key)`, `goto miss` if it is not
    /// there; the key is the u32 at `r8 + field`, copied to the stack at
    /// `r10 + at`.
    fn lookup_field(&mut self, field: i16, at: i16, map: &OwnedFd, miss: usize) -> &mut Asm {
        self.op(LDX_W, 1, 8, field, 0)
            .op(STX_W, 10, 1, at, 0)
            .map(1, map)
            .op(MOV_X, 2, 10, 0, 0)
            .op(ADD_K, 2, 0, 0, i32::from(at))
            .op(CALL, 0, 0, 0, HELPER_LOOKUP)
            .jump_k(JEQ_K, 0, 0, miss)
    }
    /// `dst = map` (a 64-bit load of the map's descriptor).
    fn map(&mut self, dst: u8, map: &OwnedFd) -> &mut Asm {
        self.op(0x18, dst, 1, 0, map.as_raw_fd()).op(0, 0, 0, 0, 0)
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.jumps) {
            let to = self.labels[label];
            self.insns[at].off = i16::try_from(to as isize - at as isize - 1).unwrap_or(0);
        }
        self.insns
    }
}

// Instruction codes.
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const STX_W: u8 = 0x63;
const MOV_K: u8 = 0xb7;
const MOV_X: u8 = 0xbf;
const ADD_K: u8 = 0x07;
const AND_K: u8 = 0x57;
const JNE_K: u8 = 0x55;
const JEQ_K: u8 = 0x15;
const JGT_X: u8 = 0x2d;
const JNE_X: u8 = 0x5d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// `lock *(u64 *)(dst + off) += src`.
const ATOMIC_DW: u8 = 0xdb;

/// The redirect to the queue's socket (the stack when it has none): the
/// end of both programs. Reads the context from r6.
fn to_socket(a: &mut Asm, xsks: &OwnedFd) {
    a.op(LDX_W, 2, 6, 16, 0) // r2 = ctx->rx_queue_index
        .map(1, xsks)
        .op(MOV_K, 3, 0, 0, XDP_PASS)
        .op(CALL, 0, 0, 0, HELPER_REDIRECT_MAP)
        .op(EXIT, 0, 0, 0, 0);
}

/// The fast path's program (see the module's description): the key as
/// [`FastKey`] lays it out, on the stack at r10 - 32; the value as
/// [`FastValue`].
fn fast_program(xsks: &OwnedFd, maps: &FastMaps) -> Vec<Insn> {
    let mut a = Asm::default();
    let slow = a.label();
    a.op(MOV_X, 6, 1, 0, 0) // r6 = ctx
        .op(LDX_W, 2, 6, 0, 0) // r2 = data
        .op(LDX_W, 3, 6, 4, 0) // r3 = data_end
        .op(MOV_X, 4, 2, 0, 0)
        .op(ADD_K, 4, 0, 0, 42) // Ethernet, IPv4, UDP
        .jump_x(JGT_X, 4, 3, slow)
        .op(LDX_H, 4, 2, 12, 0)
        .jump_k(JNE_K, 4, 0x0008, slow) // EtherType IPv4 (as read little-endian)
        .op(LDX_B, 4, 2, 14, 0)
        .jump_k(JNE_K, 4, 0x45, slow) // version 4, a 20-byte header
        .op(LDX_H, 4, 2, 20, 0)
        .op(AND_K, 4, 0, 0, 0xff3f) // more fragments, fragment offset
        .jump_k(JNE_K, 4, 0, slow)
        .op(LDX_B, 4, 2, 23, 0)
        .jump_k(JNE_K, 4, 17, slow); // UDP
    // The key: interface, the MACs (12 bytes from 0), addresses and ports
    // (12 bytes from 26), the protocol.
    a.op(LDX_W, 5, 6, 12, 0).op(STX_W, 10, 5, -32, 0); // ctx->ingress_ifindex
    for (from, to) in [(0, -28), (4, -24), (8, -20), (26, -16), (30, -12), (34, -8)] {
        a.op(LDX_W, 5, 2, from, 0).op(STX_W, 10, 5, to, 0);
    }
    // The frame's length from the kernel (subtracting the packet pointers
    // would need CAP_PERFMON).
    a.op(STX_W, 10, 4, -4, 0)
        .op(MOV_X, 1, 6, 0, 0)
        .op(CALL, 0, 0, 0, HELPER_BUFF_LEN)
        .op(MOV_X, 7, 0, 0, 0) // r7 = the frame's length
        .map(1, &maps.flows)
        .op(MOV_X, 2, 10, 0, 0)
        .op(ADD_K, 2, 0, 0, -32)
        .op(CALL, 0, 0, 0, HELPER_LOOKUP)
        .jump_k(JEQ_K, 0, 0, slow)
        .op(MOV_X, 8, 0, 0, 0) // r8 = the flow
        // Its loop's generation (by its owner), which moves with every
        // plan.
        .lookup_field(4, -36, &maps.generations, slow)
        .op(LDX_W, 1, 0, 0, 0)
        .op(LDX_W, 2, 8, 8, 0)
        .jump_x(JNE_X, 1, 2, slow)
        // Its counters, by its slot.
        .lookup_field(12, -40, &maps.counters, slow)
        .op(MOV_K, 1, 0, 0, 1)
        .op(ATOMIC_DW, 0, 1, 0, 0) // packets
        .op(ATOMIC_DW, 0, 7, 8, 0) // bytes
        .op(LDX_W, 1, 8, 0, 0)
        .op(MOV_K, 2, 0, 0, 0)
        .op(CALL, 0, 0, 0, HELPER_REDIRECT)
        .op(EXIT, 0, 0, 0, 0);
    a.here(slow);
    to_socket(&mut a, xsks);
    a.finish()
}

/// The program: `return bpf_redirect_map(&xsks, ctx->rx_queue_index,
/// XDP_PASS)`.
fn program(xsks: &OwnedFd) -> Vec<Insn> {
    let mut a = Asm::default();
    a.op(MOV_X, 6, 1, 0, 0);
    to_socket(&mut a, xsks);
    a.finish()
}

/// Loads an XDP program; a refusal is loaded again with the verifier's
/// log, for the message (a log on success only costs, and can overflow).
fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let attempt = |log: &mut [u8]| {
        let mut attr = [0u64; 16];
        attr[0] = lo_hi(BPF_PROG_TYPE_XDP, u32::try_from(insns.len()).unwrap_or(0));
        attr[1] = insns.as_ptr() as u64;
        attr[2] = license.as_ptr() as u64;
        if !log.is_empty() {
            attr[3] = lo_hi(1, u32::try_from(log.len()).unwrap_or(0)); // log_level, log_size
            attr[4] = log.as_mut_ptr() as u64;
        }
        // prog_name at byte 48.
        let mut n = [0u8; 16];
        for (d, s) in n.iter_mut().zip(PROGRAM.bytes().take(15)) {
            *d = s;
        }
        attr[6] = u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]]);
        attr[7] = u64::from_le_bytes([n[8], n[9], n[10], n[11], n[12], n[13], n[14], n[15]]);
        bpf(BPF_PROG_LOAD, &mut attr).map(owned)
    };
    attempt(&mut []).map_err(|e| {
        let mut log = vec![0u8; 1 << 16];
        // Its result is the same refusal; what matters is the log.
        let again = attempt(&mut log);
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        let text = String::from_utf8_lossy(&log[..end]);
        // The verifier's last lines say why.
        let tail: Vec<&str> = text.lines().rev().take(4).collect();
        drop(again);
        io::Error::new(e.kind(), format!("loading {PROGRAM}: {e} ({})", tail.into_iter().rev().collect::<Vec<_>>().join(" / ")))
    })
}

/// The program attached to one interface, with its map of sockets.
#[derive(Debug)]
pub struct Attached {
    /// Native (driver) mode; false is generic (skb).
    pub native: bool,
    xsks: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

fn map_create(kind: u32, key: u32, value: u32, entries: u32) -> io::Result<OwnedFd> {
    map_create_flags(kind, key, value, entries, 0)
}

fn map_create_flags(kind: u32, key: u32, value: u32, entries: u32, flags: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 8];
    attr[0] = lo_hi(kind, key); // map_type, key_size
    attr[1] = lo_hi(value, entries); // value_size, max_entries
    attr[2] = u64::from(flags); // map_flags
    bpf(BPF_MAP_CREATE, &mut attr).map(owned)
}

/// `(map, key, value, flags)` for the element calls.
fn elem(cmd: libc::c_long, map: &OwnedFd, key: *const u8, value: *mut u8) -> io::Result<()> {
    let mut attr = [0u64; 4];
    attr[0] = u64::from(raw(map));
    attr[1] = key as u64;
    attr[2] = value as u64;
    bpf(cmd, &mut attr).map(|_| ())
}

/// A fast-path flow's key, laid out as the program builds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FastKey {
    /// The interface the frames arrive on.
    pub ifindex: u32,
    /// The frame's first 12 bytes: destination and source MAC.
    pub macs: [u8; 12],
    /// IPv4 source and destination address, UDP source and destination
    /// port, as on the wire (frame bytes 26..38).
    pub flow: [u8; 12],
    /// The IP protocol (17).
    pub proto: u32,
}

impl FastKey {
    /// The key of an untagged IPv4 UDP frame with a 20-byte header that
    /// arrived on `ifindex`; `None` for any other frame.
    pub fn of(ifindex: u32, frame: &[u8]) -> Option<FastKey> {
        let f = frame.get(..42)?;
        let fragment = u16::from_be_bytes([f[20], f[21]]) & 0x3fff != 0;
        if f[12..14] != [0x08, 0x00] || f[14] != 0x45 || fragment || f[23] != 17 {
            return None;
        }
        let mut k = FastKey { ifindex, proto: 17, ..FastKey::default() };
        k.macs.copy_from_slice(&f[..12]);
        k.flow.copy_from_slice(&f[26..38]);
        Some(k)
    }
}

/// A fast-path flow's value, laid out as the program reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct FastValue {
    /// Where its frames go.
    pub out_ifindex: u32,
    /// The loop that put it there, and the generation it did so in.
    pub owner: u32,
    pub generation: u32,
    /// Where the program counts its frames ([`FastMaps::counts`]).
    pub slot: u32,
}

impl FastValue {
    pub fn new(out_ifindex: u32, owner: u32, generation: u32, slot: u32) -> FastValue {
        FastValue { out_ifindex, owner, generation, slot }
    }
}

/// One slot of the counter array: what the program forwarded of the flow
/// in that slot (and of the flows in it before; readers take differences).
#[repr(C)]
struct Counts {
    packets: AtomicU64,
    bytes: AtomicU64,
}

/// The counter array, mapped into this process.
#[derive(Debug)]
struct Mapped {
    at: std::ptr::NonNull<Counts>,
    slots: u32,
    len: usize,
}

// SAFETY: the mapping is shared memory that only atomics read (the kernel
// and the programs write it with atomic adds); it lives as long as the
// `Mapped`, and no reference to it outlives a call.
unsafe impl Send for Mapped {}
// SAFETY: as above.
unsafe impl Sync for Mapped {}

impl Mapped {
    fn new(fd: &OwnedFd, slots: u32) -> io::Result<Mapped> {
        // SAFETY: sysconf takes no pointers.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096).max(1);
        let len = (slots as usize * size_of::<Counts>()).div_ceil(page) * page;
        // SAFETY: maps `len` bytes of the array, which the kernel made at
        // least that large (an mmapable array is page-rounded), shared and
        // read-write as the kernel requires of BPF_F_MMAPABLE; the result
        // is checked before use and unmapped in Drop.
        let at = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd.as_raw_fd(), 0) };
        if at == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let at = std::ptr::NonNull::new(at.cast::<Counts>()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapped { at, slots, len })
    }

    fn counts(&self, slot: u32) -> (u64, u64) {
        if slot >= self.slots {
            return (0, 0);
        }
        // SAFETY: `slot` is within the array's `slots` entries, which the
        // mapping covers; `Counts` is two aligned u64 atomics, as the
        // array's 16-byte values are laid out.
        let c = unsafe { &*self.at.as_ptr().add(slot as usize) };
        (c.packets.load(Ordering::Relaxed), c.bytes.load(Ordering::Relaxed))
    }
}

impl Drop for Mapped {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `new` mapped; nothing refers to it.
        let _ = unsafe { libc::munmap(self.at.as_ptr().cast(), self.len) };
    }
}

/// The fast path's maps, one per switch: the flows, each loop's
/// generation, and the flows' counters.
#[derive(Debug)]
pub struct FastMaps {
    flows: OwnedFd,
    generations: OwnedFd,
    counters: OwnedFd,
    mapped: Mapped,
}

impl FastMaps {
    fn new() -> io::Result<FastMaps> {
        let size = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        let capacity = FLOW_CAPACITY.load(Ordering::Relaxed);
        let flows = map_create(BPF_MAP_TYPE_HASH, size(size_of::<FastKey>()), size(size_of::<FastValue>()), capacity)?;
        let generations = map_create(BPF_MAP_TYPE_ARRAY, 4, 4, LOOPS)?;
        let counters = map_create_flags(BPF_MAP_TYPE_ARRAY, 4, size(size_of::<Counts>()), capacity, BPF_F_MMAPABLE)?;
        let mapped = Mapped::new(&counters, capacity)?;
        Ok(FastMaps { flows, generations, counters, mapped })
    }

    /// Counter slots: one per flow the map holds.
    pub fn slots(&self) -> u32 {
        self.mapped.slots
    }

    /// What the program has counted in `slot` (packets, bytes), read from
    /// memory: no system call. (0, 0) past the array.
    pub fn counts(&self, slot: u32) -> (u64, u64) {
        self.mapped.counts(slot)
    }

    /// Loop `owner`'s flows of any other generation are not taken from now
    /// on.
    ///
    /// # Errors
    /// The kernel's.
    pub fn set_generation(&self, owner: u32, generation: u32) -> io::Result<()> {
        let (k, mut v) = (owner, generation);
        elem(BPF_MAP_UPDATE_ELEM, &self.generations, (&raw const k).cast(), (&raw mut v).cast())
    }

    /// Puts a flow there (or replaces it).
    ///
    /// # Errors
    /// The kernel's (the map full: `E2BIG`).
    pub fn put(&self, key: &FastKey, value: &FastValue) -> io::Result<()> {
        let mut v = *value;
        elem(BPF_MAP_UPDATE_ELEM, &self.flows, (&raw const *key).cast(), (&raw mut v).cast())
    }

    /// Takes a flow out.
    pub fn remove(&self, key: &FastKey) {
        let _ = elem(BPF_MAP_DELETE_ELEM, &self.flows, (&raw const *key).cast(), std::ptr::null_mut());
    }
}

/// Set when the kernel refused the fast path's program (then every
/// interface gets the plain one).
static FAST_REFUSED: AtomicBool = AtomicBool::new(false);

/// The fast path's maps while it runs: they could be made, and the kernel
/// took its program (as far as the interfaces bound so far tell).
pub fn usable_maps() -> Option<&'static FastMaps> {
    fast_maps().filter(|_| !FAST_REFUSED.load(Ordering::Relaxed))
}

/// The switch's fast-path maps, made the first time they are asked for;
/// `None` (with the reason logged once) if the kernel refuses them.
fn fast_maps() -> Option<&'static FastMaps> {
    static MAPS: std::sync::OnceLock<Option<FastMaps>> = std::sync::OnceLock::new();
    MAPS.get_or_init(|| match FastMaps::new() {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!("fast path off: its maps cannot be made ({e})");
            None
        }
    })
    .as_ref()
}

impl Attached {
    fn new(ifindex: u32, native: bool, fast: bool) -> io::Result<Attached> {
        let xsks = map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, QUEUES)?;
        let prog = match fast.then(usable_maps).flatten() {
            Some(maps) => load(&fast_program(&xsks, maps)).or_else(|e| {
                // An older kernel (the frame-length helper is Linux 5.18):
                // the sockets still work, without the fast path.
                FAST_REFUSED.store(true, Ordering::Relaxed);
                tracing::warn!("fast path off: {e}");
                load(&program(&xsks))
            })?,
            None => load(&program(&xsks))?,
        };
        let mut attr = [0u64; 8];
        attr[0] = lo_hi(raw(&prog), ifindex); // prog_fd, target_ifindex
        attr[1] = lo_hi(BPF_XDP, if native { XDP_FLAGS_DRV_MODE } else { XDP_FLAGS_SKB_MODE }); // attach_type, flags
        let link = bpf(BPF_LINK_CREATE, &mut attr).map(owned)?;
        Ok(Attached { native, xsks, _prog: prog, _link: link })
    }

    /// Sends queue `queue`'s frames to the socket `fd`.
    ///
    /// # Errors
    /// The kernel's (a queue past the map, a socket not bound to this
    /// interface and queue).
    pub fn insert(&self, queue: u32, fd: libc::c_int) -> io::Result<()> {
        let (k, mut v) = (queue, fd);
        elem(BPF_MAP_UPDATE_ELEM, &self.xsks, (&raw const k).cast(), (&raw mut v).cast())
    }
}

/// Every interface's attachment, while a socket holds it. (`fast`: with
/// the fast path's lookup; every socket of a switch asks alike.)
static ATTACHED: Mutex<Option<HashMap<u32, Weak<Attached>>>> = Mutex::new(None);

/// The program on interface `ifindex` in the mode asked (`native`):
/// attached now, or the attachment another socket made.
///
/// # Errors
/// The interface runs this switch's program in the other mode (another
/// socket chose it), or the kernel refused (another program is attached,
/// the driver has no native XDP, no CAP_BPF), in words.
pub fn attach(interface: &str, ifindex: u32, native: bool, fast: bool) -> Result<Arc<Attached>, String> {
    let mut all = ATTACHED.lock().unwrap_or_else(PoisonError::into_inner);
    let map = all.get_or_insert_with(HashMap::new);
    map.retain(|_, w| w.strong_count() > 0);
    if let Some(a) = map.get(&ifindex).and_then(Weak::upgrade) {
        return if a.native == native {
            Ok(a)
        } else {
            Err(format!("the interface runs {PROGRAM} in {} mode", if a.native { "native" } else { "skb" }))
        };
    }
    let a = Arc::new(Attached::new(ifindex, native, fast).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY | libc::EEXIST) => {
            format!("another XDP program is attached to {interface} (`ip link set dev {interface} xdp off` removes it)")
        }
        _ => format!("attaching {PROGRAM}: {e}"),
    })?);
    map.insert(ifindex, Arc::downgrade(&a));
    Ok(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flow_map_is_sized_to_the_loops_within_its_bounds() {
        assert_eq!(flow_capacity(4096), 4096, "one loop's share");
        assert_eq!(flow_capacity(4096 * 4), 16_384);
        assert_eq!(flow_capacity(4096 * 64), FLOWS, "never above the switch's bound");
        assert_eq!(flow_capacity(usize::MAX), FLOWS);
        assert_eq!(flow_capacity(0), 1, "a map has at least one entry");
    }
}
