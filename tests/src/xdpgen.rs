//! A traffic generator and a sink in XDP, for the end-to-end benchmark and
//! the flood tests: frames made by the kernel, not by a process, so that
//! the generator is not what limits a measurement.
//!
//! - [`Generator`]: `BPF_PROG_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (the
//!   technique of xdp-tools' `xdp-trafficgen`): the kernel runs a small XDP
//!   program over a template frame in a loop, and the program's `XDP_TX`
//!   sends each frame out of the interface it names, through the driver's
//!   `ndo_xdp_xmit` (on veth: straight into the peer's receive ring). The
//!   program writes a counter into the frame's source address's last byte
//!   and the UDP source port (and the IP id so that the header checksum
//!   stays right), so the frames are `flows` flows in turn, or a new flow
//!   each (2^24 before one repeats); optionally the send time
//!   (`bpf_ktime_get_ns`) into the payload, for latency. A kernel may
//!   refuse live frames (`EPERM`: a sandbox's kernel here did, with every
//!   capability but `CAP_SYS_RESOURCE`); the generator then writes the
//!   same frames itself and sends them through an `AF_PACKET` socket that
//!   bypasses the qdisc ([`Via::Packet`]): an skb per frame made in this
//!   process, so it says which way it sends.
//! - [`Sink`]: an XDP program on the receiving interface that counts every
//!   frame, files the latency of stamped ones in a histogram of 1 µs
//!   buckets, and drops them, so no process or stack work competes.
//!
//! The programs are a few dozen instructions, assembled here; there is no
//! BPF toolchain to install. Root (CAP_BPF, CAP_NET_ADMIN).
#![allow(unsafe_code, reason = "the bpf(2) system call takes a union of C structs; each call says what it passes")]

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// The UDP payload offset of the 60-byte template: Ethernet (14), IPv4
/// (20), UDP (8).
const PAYLOAD: i16 = 42;
/// Template length: a 64-byte frame on the wire without its FCS.
pub const FRAME_LEN: usize = 60;
/// Latency buckets of 1 µs; the last holds everything longer.
pub const BUCKETS: u32 = 1024;

// bpf(2) commands.
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const XDP_DROP: i32 = 1;
const XDP_TX: i32 = 3;

/// One BPF instruction.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// A small assembler: the instructions these programs need.
mod asm {
    use super::Insn;

    const LDX_MEM: u8 = 0x61; // | size
    const STX_MEM: u8 = 0x63;
    const ST_MEM: u8 = 0x62;
    const ALU64_K: u8 = 0x07;
    const ALU64_X: u8 = 0x0f;
    const JMP_K: u8 = 0x05;
    const JMP_X: u8 = 0x0d;
    pub(super) const W: u8 = 0x00;
    pub(super) const B: u8 = 0x10;
    pub(super) const DW: u8 = 0x18;
    pub(super) const ADD: u8 = 0x00;
    pub(super) const SUB: u8 = 0x10;
    pub(super) const DIV: u8 = 0x30;
    pub(super) const AND: u8 = 0x50;
    pub(super) const RSH: u8 = 0x70;
    pub(super) const MOV: u8 = 0xb0;
    pub(super) const JEQ: u8 = 0x10;
    pub(super) const JGT: u8 = 0x20;
    pub(super) const JSLT: u8 = 0xc0;
    pub(super) const JA: u8 = 0x00;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
        Insn { code, regs: (src << 4) | (dst & 0x0f), off, imm }
    }
    pub(super) fn alu_k(op: u8, dst: u8, imm: i32) -> Insn {
        insn(ALU64_K | op, dst, 0, 0, imm)
    }
    pub(super) fn alu_x(op: u8, dst: u8, src: u8) -> Insn {
        insn(ALU64_X | op, dst, src, 0, 0)
    }
    pub(super) fn load(size: u8, dst: u8, src: u8, off: i16) -> Insn {
        insn(LDX_MEM | size, dst, src, off, 0)
    }
    pub(super) fn store(size: u8, dst: u8, off: i16, src: u8) -> Insn {
        insn(STX_MEM | size, dst, src, off, 0)
    }
    pub(super) fn store_imm(size: u8, dst: u8, off: i16, imm: i32) -> Insn {
        insn(ST_MEM | size, dst, 0, off, imm)
    }
    /// `if dst OP imm goto +off`.
    pub(super) fn jmp_k(op: u8, dst: u8, imm: i32, off: i16) -> Insn {
        insn(JMP_K | op, dst, 0, off, imm)
    }
    /// `if dst OP src goto +off`.
    pub(super) fn jmp_x(op: u8, dst: u8, src: u8, off: i16) -> Insn {
        insn(JMP_X | op, dst, src, off, 0)
    }
    pub(super) fn call(helper: i32) -> Insn {
        insn(0x85, 0, 0, 0, helper)
    }
    pub(super) fn exit() -> Insn {
        insn(0x95, 0, 0, 0, 0)
    }
    /// `r1 = map` (two instructions: a 64-bit load of the map's fd).
    pub(super) fn map_fd(dst: u8, fd: i32) -> [Insn; 2] {
        [insn(0x18, dst, 1, 0, fd), insn(0, 0, 0, 0, 0)]
    }
    /// `*(u64 *)(dst + off) += src`, atomically.
    pub(super) fn atomic_add64(dst: u8, off: i16, src: u8) -> Insn {
        insn(0xdb, dst, src, off, 0)
    }
    /// `src = atomic_fetch_add((u32 *)(dst + off), src)`.
    pub(super) fn fetch_add32(dst: u8, off: i16, src: u8) -> Insn {
        insn(0xc3, dst, src, off, 0x01)
    }
}

/// Resolves `Label` jumps: each jump instruction is pushed with a label id
/// and patched once the label's place is known.
#[derive(Default)]
struct Program {
    insns: Vec<Insn>,
    jumps: Vec<(usize, usize)>,
    labels: Vec<Option<usize>>,
}

impl Program {
    fn push(&mut self, i: Insn) {
        self.insns.push(i);
    }
    fn label(&mut self) -> usize {
        self.labels.push(None);
        self.labels.len() - 1
    }
    fn jump(&mut self, i: Insn, label: usize) {
        self.jumps.push((self.insns.len(), label));
        self.insns.push(i);
    }
    fn here(&mut self, label: usize) {
        self.labels[label] = Some(self.insns.len());
    }
    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in self.jumps {
            let to = self.labels[label].expect("every label placed");
            self.insns[at].off = i16::try_from(to as isize - at as isize - 1).expect("a short program");
        }
        self.insns
    }
}

fn bpf(cmd: libc::c_long, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a zeroed buffer at least as large as the union
    // member the command reads (the callers lay the fields out as the
    // kernel's `union bpf_attr` does); the kernel reads and writes only
    // within the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), std::mem::size_of_val(attr)) };
    if rc < 0 { Err(io::Error::last_os_error()) } else { Ok(rc) }
}

fn fd(rc: i64) -> OwnedFd {
    // SAFETY: a successful bpf() that makes an object returns a new file
    // descriptor this process owns.
    unsafe { OwnedFd::from_raw_fd(i32::try_from(rc).unwrap_or(-1)) }
}

fn lo_hi(a: u32, b: u32) -> u64 {
    u64::from(a) | (u64::from(b) << 32)
}

fn map_array(entries: u32, value: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_MAP_TYPE_ARRAY, 4); // map_type, key_size
    attr[1] = lo_hi(value, entries); // value_size, max_entries
    bpf(BPF_MAP_CREATE, &mut attr).map(fd)
}

fn map_get(map: &OwnedFd, key: u32) -> io::Result<u64> {
    let k = key;
    let mut v = 0u64;
    let mut attr = [0u64; 4];
    attr[0] = u64::from(u32::try_from(map.as_raw_fd()).unwrap_or(0));
    attr[1] = (&raw const k) as u64;
    attr[2] = (&raw mut v) as u64;
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(v)
}

fn map_set(map: &OwnedFd, key: u32, value: &[u64]) -> io::Result<()> {
    let k = key;
    let mut attr = [0u64; 4];
    attr[0] = u64::from(u32::try_from(map.as_raw_fd()).unwrap_or(0));
    attr[1] = (&raw const k) as u64;
    attr[2] = value.as_ptr() as u64;
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
}

fn load(insns: &[Insn], name: &str) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 65536];
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_PROG_TYPE_XDP, u32::try_from(insns.len()).unwrap_or(0));
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = lo_hi(1, u32::try_from(log.len()).unwrap_or(0)); // log_level, log_size
    attr[4] = log.as_mut_ptr() as u64;
    // prog_name at byte 48 (attr[6..8]).
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(name.bytes().take(15)) {
        *d = s;
    }
    attr[6] = u64::from_le_bytes(n[..8].try_into().expect("8 bytes"));
    attr[7] = u64::from_le_bytes(n[8..].try_into().expect("8 bytes"));
    bpf(BPF_PROG_LOAD, &mut attr).map(fd).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        io::Error::new(e.kind(), format!("loading {name}: {e}\n{}", String::from_utf8_lossy(&log[..end])))
    })
}

fn ifindex(iface: &str) -> io::Result<u32> {
    let name = std::ffi::CString::new(iface).map_err(|_| io::Error::other("interface name"))?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(name.as_ptr()) } {
        0 => Err(io::Error::new(io::ErrorKind::NotFound, format!("{iface}: no such interface"))),
        i => Ok(i),
    }
}

/// The traffic a [`Generator`] makes.
#[derive(Clone, Copy, Debug)]
pub struct Traffic {
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    /// The first three bytes of the source address are kept; its last byte
    /// and the source port count the flows.
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    /// Flows in turn (a power of two, at most 2^24), or `None`: a new flow
    /// every frame.
    pub flows: Option<u32>,
    /// Writes the send time into each frame, for [`Sink`]'s latency.
    pub stamp: bool,
}

/// The template frame: IPv4 UDP, the source address's last byte 0 and the
/// IP id 0xffff minus the address's low 16-bit word, so that the program's
/// changes keep the header checksum valid (see `generator_program`).
pub fn template(t: &Traffic) -> Vec<u8> {
    let mut f = vec![0u8; FRAME_LEN];
    f[0..6].copy_from_slice(&t.dst_mac);
    f[6..12].copy_from_slice(&t.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let s = t.src.octets();
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&46u16.to_be_bytes());
    // id + the source's low word == 0xffff: the program keeps that sum.
    ip[4..6].copy_from_slice(&(0xffff - u16::from(s[2]) * 256).to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[s[0], s[1], s[2], 0]);
    ip[16..20].copy_from_slice(&t.dst.octets());
    let mut sum = 0u32;
    for w in ip.chunks(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !u16::try_from(sum).unwrap_or(0);
    ip[10..12].copy_from_slice(&csum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[2..4].copy_from_slice(&t.dport.to_be_bytes());
    udp[4..6].copy_from_slice(&26u16.to_be_bytes());
    f
}

/// The generator's program: with a pace (see [`Generator::with_pace`]),
/// a frame that is not due yet is dropped, unsent; n = counter++ (masked to
/// the flows); the source address's last byte = n & 0xff, the IP id = its
/// template value minus that byte (so the sum of the two header words, and
/// with it the checksum, is unchanged), the source port = n >> 8; the send
/// time into the payload if stamping; `XDP_TX`.
fn generator_program(counter: &OwnedFd, mask: u32, stamp: bool, pace: Option<&OwnedFd>) -> Vec<Insn> {
    use asm::*;
    let mut p = Program::default();
    let out = p.label();
    p.push(load(W, 7, 1, 0)); // r7 = data
    p.push(load(W, 8, 1, 4)); // r8 = data_end
    p.push(alu_x(MOV, 2, 7));
    p.push(alu_k(ADD, 2, i32::from(PAYLOAD) + 8));
    p.jump(jmp_x(JGT, 2, 8, 0), out);
    if let Some(pace) = pace {
        // r9 = &pace[0] = {next send time, interval} (ns).
        lookup_slot0(&mut p, pace, out);
        p.push(alu_x(MOV, 9, 0));
        p.push(call(5)); // r0 = now (ktime_get_ns)
        p.push(load(DW, 1, 9, 0)); // r1 = next
        p.jump(jmp_x(JGT, 1, 0, 0), out); // not due: dropped, unsent
        p.push(load(DW, 2, 9, 8)); // r2 = interval
        p.push(alu_x(ADD, 1, 2));
        // Behind (the core was taken a while): the next is an interval
        // from now, no catching up in a burst.
        let on_time = p.label();
        p.jump(jmp_x(JGT, 1, 0, 0), on_time);
        p.push(alu_x(MOV, 1, 0));
        p.push(alu_x(ADD, 1, 2));
        p.here(on_time);
        p.push(store(DW, 9, 0, 1));
    }
    lookup_slot0(&mut p, counter, out);
    p.push(alu_k(MOV, 1, 1));
    p.push(fetch_add32(0, 0, 1)); // r1 = counter++
    p.push(alu_k(AND, 1, i32::try_from(mask).unwrap_or(i32::MAX)));
    p.push(alu_x(MOV, 2, 1));
    p.push(alu_k(AND, 2, 0xff));
    p.push(store(B, 7, 29, 2)); // source address, last byte
    // The id's low byte: 0xff minus the address byte (the template's id
    // ends in 0xff, so this never borrows).
    p.push(alu_k(MOV, 3, 0xff));
    p.push(alu_x(SUB, 3, 2));
    p.push(store(B, 7, 19, 3));
    p.push(alu_x(MOV, 2, 1));
    p.push(alu_k(RSH, 2, 8));
    p.push(store(B, 7, 35, 2)); // source port, low byte
    p.push(alu_k(RSH, 2, 8));
    p.push(store(B, 7, 34, 2)); // source port, high byte
    if stamp {
        p.push(call(5)); // ktime_get_ns
        p.push(store(DW, 7, PAYLOAD, 0));
    }
    p.push(alu_k(MOV, 0, XDP_TX));
    p.push(exit());
    p.here(out);
    p.push(alu_k(MOV, 0, XDP_DROP));
    p.push(exit());
    p.finish()
}

/// r0 = &map[0], or on to `out` if there is none.
fn lookup_slot0(p: &mut Program, map: &OwnedFd, out: usize) {
    use asm::*;
    p.push(store_imm(W, 10, -4, 0));
    p.push(alu_x(MOV, 2, 10));
    p.push(alu_k(ADD, 2, -4));
    for i in map_fd(1, map.as_raw_fd()) {
        p.push(i);
    }
    p.push(call(1)); // map_lookup_elem
    p.jump(jmp_k(JEQ, 0, 0, 0), out);
}

/// How a [`Generator`] puts its frames on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    /// `BPF_PROG_RUN` live frames: the kernel makes each frame from the
    /// template and sends it by `XDP_TX`, with no skb and no process work
    /// per frame.
    LiveFrames,
    /// An `AF_PACKET` socket bypassing the qdisc, frames written by this
    /// process and handed to the driver by `sendmmsg`, an skb each: for
    /// kernels that refuse live frames (`EPERM`; seen on a sandbox's
    /// kernel). Slower (1.2 Mpps on a veth there; live frames made 2-13
    /// Mpps on the kernel before), so a bench that uses it says so.
    Packet,
}

impl Via {
    pub fn name(self) -> &'static str {
        match self {
            Via::LiveFrames => "live-frames",
            Via::Packet => "af-packet",
        }
    }
}

/// Sends [`Traffic`] out of an interface: by `BPF_PROG_RUN` live frames
/// where the kernel allows them, otherwise by an `AF_PACKET` socket (see
/// [`Via`]); the same frames either way. Made and run in the network
/// namespace of the interface.
#[derive(Debug)]
pub struct Generator {
    engine: Engine,
}

#[derive(Debug)]
enum Engine {
    Live(Live),
    Packet(Packet),
}

#[derive(Debug)]
struct Live {
    prog: OwnedFd,
    counter: OwnedFd,
    _pace: Option<OwnedFd>,
    frame: Vec<u8>,
    ifindex: u32,
    _keep: Keepalive,
}

/// The generator's program attached (natively) to an idle veth pair of its
/// own while it lives. A `BPF_PROG_RUN` of more than one frame adds its
/// program to the kernel's XDP dispatcher and removes it after, and each
/// change rebuilds the dispatcher and waits for an RCU grace period (about
/// 28 ms here); a program already attached somewhere changes nothing, so
/// short paced runs cost microseconds instead. The pair also takes the
/// one frame that tells whether the kernel runs live frames at all.
#[derive(Debug)]
struct Keepalive {
    name: String,
    _link: OwnedFd,
}

impl Keepalive {
    fn new(prog: &OwnedFd) -> io::Result<Keepalive> {
        // Unique per generator: several may live in one process.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 1000;
        let name = format!("sgbk{}x{n}", std::process::id() % 100_000);
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().map(|s| s.success());
        let peer = format!("{name}p");
        if !ip(&["link", "add", &name, "type", "veth", "peer", "name", &peer])? {
            return Err(io::Error::other(format!("ip link add {name}: failed")));
        }
        let keep = ip(&["link", "set", &name, "up"]).and_then(|_| ip(&["link", "set", &peer, "up"])).and_then(|_| attach(prog, &name));
        match keep {
            Ok(link) => Ok(Keepalive { name, _link: link }),
            Err(e) => {
                let _ = ip(&["link", "del", &name]);
                Err(e)
            }
        }
    }
}

impl Drop for Keepalive {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip").args(["link", "del", &self.name]).status();
    }
}

/// Attaches `prog` to `iface` in native mode through a BPF link (detached
/// when the link's descriptor closes).
fn attach(prog: &OwnedFd, iface: &str) -> io::Result<OwnedFd> {
    let ifindex = ifindex(iface)?;
    let mut attr = [0u64; 8];
    attr[0] = lo_hi(u32::try_from(prog.as_raw_fd()).unwrap_or(0), ifindex); // prog_fd, target_ifindex
    attr[1] = lo_hi(BPF_XDP, XDP_FLAGS_DRV_MODE); // attach_type, flags
    bpf(BPF_LINK_CREATE, &mut attr).map(fd).map_err(|e| io::Error::new(e.kind(), format!("attaching to {iface}: {e}")))
}

/// The flow mask of `t`: frame n is flow n & mask.
pub fn flow_mask(t: &Traffic) -> io::Result<u32> {
    match t.flows {
        Some(n) if n.is_power_of_two() && n <= 1 << 24 => Ok(n - 1),
        Some(n) => Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{n} flows: a power of two up to 2^24"))),
        None => Ok((1 << 24) - 1),
    }
}

/// The interval between frames at `pps`.
fn interval(pps: u64) -> io::Result<u64> {
    match pps {
        0 => Err(io::Error::new(io::ErrorKind::InvalidInput, "a pace of 0 frames a second")),
        p => Ok((1_000_000_000 / p).max(1)),
    }
}

impl Live {
    /// The live-frames generator, or `None` when the kernel refuses live
    /// frames (one frame into the keepalive pair tells).
    fn make(iface: &str, t: &Traffic, pace: Option<u64>) -> io::Result<Option<Live>> {
        let ifindex = ifindex(iface)?;
        let counter = map_array(1, 4)?;
        let pace = match pace {
            Some(pps) => {
                let m = map_array(1, 16)?;
                map_set(&m, 0, &[0, interval(pps)?])?;
                Some(m)
            }
            None => None,
        };
        let prog = load(&generator_program(&counter, flow_mask(t)?, t.stamp, pace.as_ref()), "sgb_gen")?;
        let keep = Keepalive::new(&prog)?;
        let probe = self::ifindex(&keep.name)?;
        let live = Live { prog, counter, _pace: pace, frame: template(t), ifindex, _keep: keep };
        match live.run(probe, 1, 1) {
            Ok(()) => Ok(Some(live)),
            Err(e) if e.raw_os_error() == Some(libc::EPERM) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Runs the program over `frames` frames sent out of `ifindex`, `batch`
    /// per kernel batch (at most 256).
    fn run(&self, ifindex: u32, frames: u32, batch: u32) -> io::Result<()> {
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
        // rx_queue_index, egress_ifindex.
        let ctx: [u32; 6] = [0, u32::try_from(self.frame.len()).unwrap_or(0), 0, ifindex, 0, 0];
        let mut attr = [0u64; 10];
        attr[0] = lo_hi(u32::try_from(self.prog.as_raw_fd()).unwrap_or(0), 0); // prog_fd, retval
        attr[1] = lo_hi(u32::try_from(self.frame.len()).unwrap_or(0), 0); // data_size_in, data_size_out
        attr[2] = self.frame.as_ptr() as u64; // data_in
        attr[4] = lo_hi(frames, 0); // repeat, duration
        attr[5] = lo_hi(u32::try_from(std::mem::size_of_val(&ctx)).unwrap_or(0), 0); // ctx_size_in, out
        attr[6] = ctx.as_ptr() as u64; // ctx_in
        attr[8] = lo_hi(BPF_F_TEST_XDP_LIVE_FRAMES, 0); // flags, cpu
        attr[9] = u64::from(batch.clamp(1, 256)); // batch_size
        bpf(BPF_PROG_TEST_RUN, &mut attr).map(|_| ())
    }

    /// Frames sent so far (the program's counter, a u32).
    fn sent(&self) -> io::Result<u64> {
        map_get(&self.counter, 0)
    }
}

/// The frames a [`Packet`] generator hands the kernel per `sendmmsg`.
const PACKET_BATCH: usize = 64;

/// The `AF_PACKET` generator: what the program does to each frame, done
/// here (see [`write_frame`]).
#[derive(Debug)]
struct Packet {
    fd: OwnedFd,
    frame: [u8; FRAME_LEN],
    mask: u32,
    stamp: bool,
    /// Frames made so far: the next frame's number.
    n: std::cell::Cell<u32>,
    /// The interval of a paced generator, ns.
    pace: Option<u64>,
}

/// Writes frame number `n` (already masked) into `f`, as the generator's
/// program does: the source address's last byte, the IP id (so that the
/// header checksum holds), the source port; and `stamp`, the send time
/// (`CLOCK_MONOTONIC` ns), into the payload.
pub fn write_frame(f: &mut [u8; FRAME_LEN], n: u32, stamp: Option<u64>) {
    let [lo, mid, hi, _] = n.to_le_bytes();
    f[29] = lo;
    f[19] = 0xff - lo;
    f[35] = mid;
    f[34] = hi;
    if let Some(ns) = stamp {
        f[PAYLOAD as usize..PAYLOAD as usize + 8].copy_from_slice(&ns.to_ne_bytes());
    }
}

/// `CLOCK_MONOTONIC` in ns, the clock of `bpf_ktime_get_ns` (the sink's).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn socklen(n: usize) -> libc::socklen_t {
    libc::socklen_t::try_from(n).unwrap_or(0)
}

impl Packet {
    fn make(iface: &str, t: &Traffic, pace: Option<u64>) -> io::Result<Packet> {
        let ifindex = ifindex(iface)?;
        let pace = pace.map(interval).transpose()?;
        // SAFETY: socket(2) with constant arguments; the descriptor is
        // owned from here on.
        let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a new descriptor this process owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // Protocol 0: the socket receives nothing; it only sends.
        // SAFETY: sockaddr_ll is plain data; zero is a valid start.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = u16::try_from(libc::AF_PACKET).unwrap_or(0);
        sll.sll_ifindex = i32::try_from(ifindex).unwrap_or(0);
        // SAFETY: `sll` is a sockaddr_ll of the size passed.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), socklen(std::mem::size_of_val(&sll))) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // Straight to the driver, as pktgen and live frames do: no qdisc.
        let one: libc::c_int = 1;
        // SAFETY: an int option of the size passed.
        let rc = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_QDISC_BYPASS,
                (&raw const one).cast(),
                socklen(std::mem::size_of_val(&one)),
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        let frame: [u8; FRAME_LEN] = template(t).try_into().map_err(|_| io::Error::other("template length"))?;
        Ok(Packet { fd, frame, mask: flow_mask(t)?, stamp: t.stamp, n: std::cell::Cell::new(0), pace })
    }

    /// Makes and sends up to `frames` (at most [`PACKET_BATCH`]) frames in
    /// one `sendmmsg`; returns how many the kernel took.
    fn send_batch(&self, frames: usize) -> io::Result<usize> {
        let frames = frames.min(PACKET_BATCH);
        let mut bufs = [self.frame; PACKET_BATCH];
        let stamp = self.stamp.then(monotonic_ns);
        let first = self.n.get();
        for (i, f) in bufs.iter_mut().take(frames).enumerate() {
            write_frame(f, first.wrapping_add(u32::try_from(i).unwrap_or(0)) & self.mask, stamp);
        }
        // SAFETY: iovec and mmsghdr are plain data; zero is a valid start.
        let mut iov: [libc::iovec; PACKET_BATCH] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut msgs: [libc::mmsghdr; PACKET_BATCH] = unsafe { std::mem::zeroed() };
        for ((m, v), b) in msgs.iter_mut().zip(iov.iter_mut()).zip(bufs.iter_mut()).take(frames) {
            v.iov_base = b.as_mut_ptr().cast();
            v.iov_len = FRAME_LEN;
            m.msg_hdr.msg_iov = v;
            m.msg_hdr.msg_iovlen = 1;
        }
        // SAFETY: `msgs[..frames]` point at `iov` and `bufs`, which live
        // across the call; the kernel reads them and writes msg_len.
        let rc = unsafe { libc::sendmmsg(self.fd.as_raw_fd(), msgs.as_mut_ptr(), u32::try_from(frames).unwrap_or(0), libc::MSG_DONTWAIT) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            // The driver's queue is full: nothing sent this time.
            return match e.raw_os_error() {
                Some(libc::EAGAIN | libc::ENOBUFS) => Ok(0),
                _ => Err(e),
            };
        }
        let sent = usize::try_from(rc).unwrap_or(0);
        self.n.set(first.wrapping_add(u32::try_from(sent).unwrap_or(0)));
        Ok(sent)
    }

    /// Sends `frames` frames, at most `batch` a call; returns how many
    /// the kernel took, fewer where the driver's queue filled (it is not
    /// waited for).
    fn send(&self, frames: u64, batch: usize) -> io::Result<u64> {
        let mut sent = 0;
        while sent < frames {
            let want = usize::try_from(frames - sent).unwrap_or(usize::MAX).min(batch.max(1));
            match self.send_batch(want)? {
                0 => break,
                n => sent += n as u64,
            }
        }
        Ok(sent)
    }

    /// One frame each interval for `d`, each stamped the moment it goes;
    /// behind (the core taken a while), the next is an interval from now,
    /// as the program's pace does.
    fn run_paced(&self, every: u64, d: Duration) -> io::Result<u64> {
        let end = Instant::now() + d;
        let mut next = monotonic_ns();
        let mut sent = 0u64;
        while Instant::now() < end {
            let now = monotonic_ns();
            if now < next {
                std::hint::spin_loop();
                continue;
            }
            sent += self.send_batch(1)? as u64;
            next = if next + every > now { next + every } else { now + every };
        }
        Ok(sent)
    }
}

impl Generator {
    /// A generator flat out (or paced from user space by
    /// [`Generator::paced`]), by live frames where the kernel allows them.
    pub fn new(iface: &str, t: &Traffic) -> io::Result<Generator> {
        Generator::make(iface, t, None)
    }

    /// A generator that paces itself, `pps` frames a second, each sent (and
    /// stamped) the moment it is due (see [`Generator::run_paced`]). By
    /// live frames its program runs flat out and drops, unsent, every frame
    /// that is not due yet: frames come one by one, at an even rate, up to
    /// what the generator can make, where a paced run from user space
    /// sends bursts (a `BPF_PROG_RUN` call costs microseconds). By
    /// `AF_PACKET` each frame is a system call of its own.
    pub fn with_pace(iface: &str, t: &Traffic, pps: u64) -> io::Result<Generator> {
        interval(pps)?;
        Generator::make(iface, t, Some(pps))
    }

    /// A generator that sends `via` the way asked (live frames fail where
    /// the kernel refuses them).
    pub fn via(via: Via, iface: &str, t: &Traffic, pps: Option<u64>) -> io::Result<Generator> {
        let engine = match via {
            Via::LiveFrames => Engine::Live(
                Live::make(iface, t, pps)?
                    .ok_or_else(|| io::Error::new(io::ErrorKind::PermissionDenied, "this kernel refuses BPF_PROG_RUN live frames"))?,
            ),
            Via::Packet => Engine::Packet(Packet::make(iface, t, pps)?),
        };
        Ok(Generator { engine })
    }

    fn make(iface: &str, t: &Traffic, pps: Option<u64>) -> io::Result<Generator> {
        let engine = match Live::make(iface, t, pps)? {
            Some(live) => Engine::Live(live),
            None => Engine::Packet(Packet::make(iface, t, pps)?),
        };
        Ok(Generator { engine })
    }

    /// Whether this kernel runs `BPF_PROG_RUN` live frames (a frame into a
    /// veth pair of the probe's own tells): `Ok(false)` where it refuses
    /// them.
    pub fn live_frames_run_here() -> io::Result<bool> {
        let t = Traffic {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::LOCALHOST,
            dst: Ipv4Addr::LOCALHOST,
            dport: 9,
            flows: Some(1),
            stamp: false,
        };
        Ok(Live::make("lo", &t, None)?.is_some())
    }

    /// How this generator sends.
    pub fn sends_via(&self) -> Via {
        match self.engine {
            Engine::Live(_) => Via::LiveFrames,
            Engine::Packet(_) => Via::Packet,
        }
    }

    /// Sends `frames` frames, `batch` per kernel batch (at most 256 by live
    /// frames, 64 by `AF_PACKET`); returns the frames the kernel took: all
    /// of them by live frames (a frame the driver refuses is dropped), by
    /// `AF_PACKET` fewer where the driver's queue filled.
    pub fn send(&self, frames: u32, batch: u32) -> io::Result<u64> {
        match &self.engine {
            Engine::Live(l) => l.run(l.ifindex, frames, batch).map(|()| u64::from(frames)),
            Engine::Packet(p) => p.send(u64::from(frames), usize::try_from(batch).unwrap_or(PACKET_BATCH)),
        }
    }

    /// Sends as fast as the kernel can for `d`; returns the frames sent.
    pub fn flood(&self, d: Duration) -> io::Result<u64> {
        let end = Instant::now() + d;
        let mut sent = 0u64;
        while Instant::now() < end {
            sent += match &self.engine {
                Engine::Live(_) => self.send(65_536, 64)?,
                Engine::Packet(p) => p.send(1024, PACKET_BATCH)?,
            };
        }
        Ok(sent)
    }

    /// Runs a generator made [`Generator::with_pace`] for `d`; returns the
    /// frames it sent. By live frames, frames wait at most a batch of 8
    /// runs of the program (about a microsecond) for the kernel to send
    /// them.
    pub fn run_paced(&self, d: Duration) -> io::Result<u64> {
        match &self.engine {
            Engine::Live(l) => {
                let before = l.sent()?;
                let end = Instant::now() + d;
                while Instant::now() < end {
                    l.run(l.ifindex, 16_384, 8)?;
                }
                // The counter is a u32 that counts sent frames.
                Ok((l.sent()?.wrapping_sub(before)) & u64::from(u32::MAX))
            }
            Engine::Packet(p) => match p.pace {
                Some(every) => p.run_paced(every, d),
                None => Err(io::Error::new(io::ErrorKind::InvalidInput, "run_paced: a generator made with_pace")),
            },
        }
    }

    /// Sends `pps` frames a second for `d`, in bursts of `burst`; returns
    /// the frames sent. A generator that falls behind (its core taken a
    /// while) does not catch up in one long burst, which would test the
    /// receiver's buffers rather than its rate: the debt beyond a burst is
    /// forgiven, so the rate offered is what was sent.
    pub fn paced(&self, pps: u64, d: Duration, burst: u32) -> io::Result<u64> {
        let start = Instant::now();
        let mut sent = 0u64;
        let mut due_from = 0u128;
        while start.elapsed() < d {
            let due = start.elapsed().as_nanos() * u128::from(pps) / 1_000_000_000 - due_from;
            let owed = due.saturating_sub(u128::from(sent));
            if owed > 2 * u128::from(burst) {
                due_from += owed - u128::from(burst);
            }
            if owed > 0 {
                sent += self.send(burst, burst)?;
            } else {
                std::hint::spin_loop();
            }
        }
        Ok(sent)
    }
}

/// The sink's program: counts every frame (slot 0); a frame whose payload
/// holds a send time adds 1 to the slot of its latency in µs (1 +
/// min(latency, 1023)); drops it.
fn sink_program(map: &OwnedFd) -> Vec<Insn> {
    use asm::*;
    let mut p = Program::default();
    let out = p.label();
    let bump = |p: &mut Program, out: usize| {
        // key in r1 -> map[key] += 1
        p.push(store(W, 10, -4, 1));
        p.push(alu_x(MOV, 2, 10));
        p.push(alu_k(ADD, 2, -4));
        for i in map_fd(1, map.as_raw_fd()) {
            p.push(i);
        }
        p.push(call(1));
        p.jump(jmp_k(JEQ, 0, 0, 0), out);
        p.push(alu_k(MOV, 1, 1));
        p.push(atomic_add64(0, 0, 1));
    };
    p.push(load(W, 7, 1, 0));
    p.push(load(W, 8, 1, 4));
    p.push(alu_k(MOV, 1, 0));
    bump(&mut p, out);
    p.push(alu_x(MOV, 2, 7));
    p.push(alu_k(ADD, 2, i32::from(PAYLOAD) + 8));
    p.jump(jmp_x(JGT, 2, 8, 0), out);
    p.push(load(DW, 9, 7, PAYLOAD));
    p.jump(jmp_k(JEQ, 9, 0, 0), out);
    p.push(call(5));
    p.push(alu_x(SUB, 0, 9));
    // r0 = now - sent; negative (a stamp of another clock) is not filed.
    let neg = p.label();
    p.jump(jmp_k(JSLT, 0, 0, 0), neg);
    p.push(alu_k(DIV, 0, 1000));
    let capped = p.label();
    p.jump(jmp_k(JGT, 0, i32::try_from(BUCKETS - 2).unwrap_or(0), 0), capped);
    let file = p.label();
    p.jump(jmp_k(JA, 0, 0, 0), file);
    p.here(capped);
    p.push(alu_k(MOV, 0, i32::try_from(BUCKETS - 1).unwrap_or(0)));
    p.here(file);
    p.push(alu_x(MOV, 1, 0));
    p.push(alu_k(ADD, 1, 1));
    bump(&mut p, out);
    p.here(neg);
    p.here(out);
    p.push(alu_k(MOV, 0, XDP_DROP));
    p.push(exit());
    p.finish()
}

/// Counts and drops every frame arriving on an interface, with the
/// latency of stamped ones; detached when dropped.
#[derive(Debug)]
pub struct Sink {
    map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

/// What a [`Sink`] has seen.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Seen {
    pub frames: u64,
    /// Stamped frames by latency in µs (the last bucket: that or more).
    pub latency: Vec<u64>,
}

impl Seen {
    /// The latency below which `ppm` millionths of the stamped frames
    /// arrived, in µs (the bucket's upper edge), or `None` without stamped
    /// frames.
    pub fn quantile(&self, ppm: u64) -> Option<u64> {
        let total: u64 = self.latency.iter().sum();
        if total == 0 {
            return None;
        }
        let want = total.saturating_mul(ppm).div_ceil(1_000_000).max(1);
        let mut seen = 0;
        for (i, n) in self.latency.iter().enumerate() {
            seen += n;
            if seen >= want {
                return Some(i as u64 + 1);
            }
        }
        None
    }

    /// What was seen since `earlier`.
    pub fn since(&self, earlier: &Seen) -> Seen {
        Seen { frames: self.frames - earlier.frames, latency: self.latency.iter().zip(&earlier.latency).map(|(a, b)| a - b).collect() }
    }
}

impl Sink {
    /// Attaches in native mode (veth supports it; it also gives the
    /// interface NAPI, so its receive work can be threaded and pinned).
    pub fn attach(iface: &str) -> io::Result<Sink> {
        let map = map_array(BUCKETS + 1, 8)?;
        let prog = load(&sink_program(&map), "sgb_sink")?;
        let link = attach(&prog, iface)?;
        Ok(Sink { map, _prog: prog, _link: link })
    }

    pub fn seen(&self) -> io::Result<Seen> {
        let frames = map_get(&self.map, 0)?;
        let latency = (1..=BUCKETS).map(|k| map_get(&self.map, k)).collect::<io::Result<Vec<u64>>>()?;
        Ok(Seen { frames, latency })
    }
}

/// An XDP program that sends every frame arriving on one interface out of
/// another (`bpf_redirect`): what an XDP-level fast path costs at least,
/// with no lookup, for `benches/e2e.sh`'s `xdp-redirect` line.
#[derive(Debug)]
pub struct Redirect {
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Redirect {
    pub fn attach(from: &str, to: &str) -> io::Result<Redirect> {
        use asm::{MOV, alu_k, call, exit};
        let target = ifindex(to)?;
        let mut p = Program::default();
        p.push(alu_k(MOV, 1, i32::try_from(target).unwrap_or(0)));
        p.push(alu_k(MOV, 2, 0));
        p.push(call(23)); // bpf_redirect(ifindex, flags)
        p.push(exit());
        let prog = load(&p.finish(), "sgb_redirect")?;
        let link = attach(&prog, from)?;
        Ok(Redirect { _prog: prog, _link: link })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(super) fn traffic(flows: Option<u32>, stamp: bool) -> Traffic {
        Traffic {
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            src: Ipv4Addr::new(198, 51, 100, 10),
            dst: Ipv4Addr::new(10, 9, 0, 21),
            dport: 9000,
            flows,
            stamp,
        }
    }

    #[test]
    fn the_template_has_a_valid_header_checksum_for_every_address_byte() {
        let t = traffic(None, false);
        let mut f: [u8; FRAME_LEN] = template(&t).try_into().expect("a frame");
        for n in (0..1 << 24).step_by(4099).chain(0..=255) {
            // What the program writes, and the AF_PACKET generator.
            write_frame(&mut f, n, Some(0x1122_3344_5566_7788));
            let ip = etherparse::Ipv4HeaderSlice::from_slice(&f[14..34]).expect("a header");
            assert_eq!(ip.to_header().calc_header_checksum(), ip.header_checksum(), "frame {n}");
            assert_eq!(ip.source(), [198, 51, 100, n.to_le_bytes()[0]]);
            let udp = etherparse::UdpHeaderSlice::from_slice(&f[34..42]).expect("a header");
            assert_eq!(u32::from(udp.source_port()), n >> 8, "frame {n}");
            assert_eq!(udp.destination_port(), 9000);
            assert_eq!(f[42..50], 0x1122_3344_5566_7788u64.to_ne_bytes());
        }
    }

    #[test]
    fn quantiles_are_bucket_upper_edges() {
        let mut latency = vec![0; BUCKETS as usize];
        latency[2] = 98;
        latency[40] = 2;
        let s = Seen { frames: 100, latency };
        assert_eq!(s.quantile(500_000), Some(3));
        assert_eq!(s.quantile(980_000), Some(3));
        assert_eq!(s.quantile(990_000), Some(41));
        assert_eq!(Seen::default().quantile(500_000), None);
    }
}

/// The generator's own pacing, on a veth pair of this test's (root): what
/// `benches/e2e.sh`'s latency points rely on.
#[cfg(test)]
mod paced {
    use super::*;
    use crate::netns::sh;

    #[test]
    fn a_generator_that_paces_itself_sends_the_rate_asked_and_stamps_each_frame() {
        assert!(sh("[ \"$(id -u)\" -eq 0 ]"), "this test needs root (XDP)");
        // By live frames where this kernel runs them (it says when it does
        // not), and by AF_PACKET everywhere.
        let t = super::tests::traffic(Some(16), true);
        match paced_run(Via::LiveFrames, 200_000) {
            Ok((sent, seen)) => check_paced(Via::LiveFrames, sent, &seen),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => eprintln!("live frames: {e}"),
            Err(e) => panic!("a paced run by live frames: {e}"),
        }
        let (sent, seen) = paced_run(Via::Packet, 200_000).expect("a paced run by AF_PACKET");
        check_paced(Via::Packet, sent, &seen);
        assert!(Generator::with_pace("sgt-none", &t, 0).is_err(), "no pace of 0");
        let zero = Generator::via(Via::Packet, "lo", &t, Some(0)).map(|_| ()).expect_err("no pace of 0");
        assert_eq!(zero.kind(), io::ErrorKind::InvalidInput, "{zero}");
    }

    #[test]
    fn a_generator_falls_back_to_af_packet_only_where_live_frames_are_refused() {
        assert!(sh("[ \"$(id -u)\" -eq 0 ]"), "this test needs root (XDP)");
        sh("ip link del sgt-fba 2>/dev/null");
        // No IPv6 of the kernel's own: nothing arrives that was not sent.
        assert!(sh("ip link add sgt-fba type veth peer name sgt-fbb \
             && sysctl -qw net.ipv6.conf.sgt-fba.disable_ipv6=1 net.ipv6.conf.sgt-fbb.disable_ipv6=1 \
             && ip link set sgt-fba up && ip link set sgt-fbb up"));
        let t = super::tests::traffic(Some(16), false);
        let chosen = Generator::new("sgt-fba", &t).map(|g| g.sends_via());
        let live = Generator::via(Via::LiveFrames, "sgt-fba", &t, None).map(|g| g.sends_via());
        // A flood by AF_PACKET: every frame one of the 16 flows, arriving.
        let flood = (|| -> io::Result<(u64, Seen)> {
            let sink = Sink::attach("sgt-fbb")?;
            let g = Generator::via(Via::Packet, "sgt-fba", &t, None)?;
            let before = sink.seen()?;
            let sent = g.flood(Duration::from_millis(300))?;
            std::thread::sleep(Duration::from_millis(50));
            Ok((sent, sink.seen()?.since(&before)))
        })();
        sh("ip link del sgt-fba");
        match live {
            Ok(v) => assert_eq!(chosen.expect("a generator"), v, "live frames where the kernel runs them"),
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
                assert_eq!(chosen.expect("a generator"), Via::Packet, "AF_PACKET where live frames are refused");
            }
        }
        let (sent, seen) = flood.expect("a flood by AF_PACKET");
        assert!(sent > 10_000, "a flood: {sent} frames in 0.3 s");
        assert!(seen.frames * 100 >= sent * 99 && seen.frames <= sent, "{} of the {sent} frames sent arrived", seen.frames);
    }

    /// A paced run of 0.5 s at `pps`, by `via`, on a veth pair of its own
    /// into a sink.
    fn paced_run(via: Via, pps: u64) -> io::Result<(u64, Seen)> {
        sh("ip link del sgt-pga 2>/dev/null");
        // No IPv6 of the kernel's own: nothing arrives that was not sent.
        assert!(sh("ip link add sgt-pga type veth peer name sgt-pgb \
             && sysctl -qw net.ipv6.conf.sgt-pga.disable_ipv6=1 net.ipv6.conf.sgt-pgb.disable_ipv6=1 \
             && ip link set sgt-pga up && ip link set sgt-pgb up"));
        let t = super::tests::traffic(Some(16), true);
        let result = (|| -> io::Result<(u64, Seen)> {
            let sink = Sink::attach("sgt-pgb")?;
            let g = Generator::via(via, "sgt-pga", &t, Some(pps))?;
            let before = sink.seen()?;
            let sent = g.run_paced(Duration::from_millis(500))?;
            std::thread::sleep(Duration::from_millis(50));
            Ok((sent, sink.seen()?.since(&before)))
        })();
        sh("ip link del sgt-pga");
        result
    }

    fn check_paced(via: Via, sent: u64, seen: &Seen) {
        // 100,000 due in half a second; a loaded machine takes the core
        // now and then, and a late frame is not made up for.
        assert!((70_000..=101_000).contains(&sent), "{via:?}: sent {sent} of 100,000 due");
        // A transmit can fail now and then (the counter counts what the
        // program sent on its way).
        assert!(seen.frames <= sent && seen.frames * 100 >= sent * 99, "{via:?}: {} of the {sent} frames sent arrived", seen.frames);
        assert_eq!(seen.latency.iter().sum::<u64>(), seen.frames, "{via:?}: every frame stamped");
    }
}
