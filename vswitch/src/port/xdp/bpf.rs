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
//! detaches the program. The program is five instructions, assembled here
//! (no BPF toolchain).
#![allow(unsafe_code, reason = "the bpf(2) system call takes a union of C structs; each call says what it passes")]

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::{Arc, Mutex, PoisonError, Weak};

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
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

/// The program: `return bpf_redirect_map(&xsks, ctx->rx_queue_index,
/// XDP_PASS)`.
fn program(xsks: &OwnedFd) -> [Insn; 6] {
    let fd = xsks.as_raw_fd();
    [
        insn(0x61, 2, 1, 16, 0), // r2 = ctx->rx_queue_index
        insn(0x18, 1, 1, 0, fd), // r1 = the map (a 64-bit load of its fd)
        insn(0, 0, 0, 0, 0),
        insn(0xb7, 3, 0, 0, XDP_PASS), // r3 = XDP_PASS
        insn(0x85, 0, 0, 0, HELPER_REDIRECT_MAP),
        insn(0x95, 0, 0, 0, 0), // exit
    ]
}

fn load(insns: &[Insn]) -> io::Result<OwnedFd> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    let mut attr = [0u64; 16];
    attr[0] = lo_hi(BPF_PROG_TYPE_XDP, u32::try_from(insns.len()).unwrap_or(0));
    attr[1] = insns.as_ptr() as u64;
    attr[2] = license.as_ptr() as u64;
    attr[3] = lo_hi(1, u32::try_from(log.len()).unwrap_or(0)); // log_level, log_size
    attr[4] = log.as_mut_ptr() as u64;
    // prog_name at byte 48.
    let mut n = [0u8; 16];
    for (d, s) in n.iter_mut().zip(PROGRAM.bytes().take(15)) {
        *d = s;
    }
    attr[6] = u64::from_le_bytes([n[0], n[1], n[2], n[3], n[4], n[5], n[6], n[7]]);
    attr[7] = u64::from_le_bytes([n[8], n[9], n[10], n[11], n[12], n[13], n[14], n[15]]);
    bpf(BPF_PROG_LOAD, &mut attr).map(owned).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        io::Error::new(e.kind(), format!("loading {PROGRAM}: {e} {}", String::from_utf8_lossy(&log[..end]).trim()))
    })
}

/// The program attached to one interface, with its map of sockets.
#[derive(Debug)]
pub struct Attached {
    pub ifindex: u32,
    /// Native (driver) mode; false is generic (skb).
    pub native: bool,
    xsks: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
}

impl Attached {
    fn new(ifindex: u32, native: bool) -> io::Result<Attached> {
        let mut attr = [0u64; 8];
        attr[0] = lo_hi(BPF_MAP_TYPE_XSKMAP, 4); // map_type, key_size
        attr[1] = lo_hi(4, QUEUES); // value_size, max_entries
        let xsks = bpf(BPF_MAP_CREATE, &mut attr).map(owned)?;
        let prog = load(&program(&xsks))?;
        let mut attr = [0u64; 8];
        attr[0] = lo_hi(raw(&prog), ifindex); // prog_fd, target_ifindex
        attr[1] = lo_hi(BPF_XDP, if native { XDP_FLAGS_DRV_MODE } else { XDP_FLAGS_SKB_MODE }); // attach_type, flags
        let link = bpf(BPF_LINK_CREATE, &mut attr).map(owned)?;
        Ok(Attached { ifindex, native, xsks, _prog: prog, _link: link })
    }

    /// Sends queue `queue`'s frames to the socket `fd`.
    ///
    /// # Errors
    /// The kernel's (a queue past the map, a socket not bound to this
    /// interface and queue).
    pub fn insert(&self, queue: u32, fd: libc::c_int) -> io::Result<()> {
        let (k, v) = (queue, fd);
        let mut attr = [0u64; 4];
        attr[0] = u64::from(raw(&self.xsks));
        attr[1] = (&raw const k) as u64;
        attr[2] = (&raw const v) as u64;
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

/// Every interface's attachment, while a socket holds it.
static ATTACHED: Mutex<Option<HashMap<u32, Weak<Attached>>>> = Mutex::new(None);

/// The program on interface `ifindex` in the mode asked (`native`):
/// attached now, or the attachment another socket made.
///
/// # Errors
/// The interface runs this switch's program in the other mode (another
/// socket chose it), or the kernel refused (another program is attached,
/// the driver has no native XDP, no CAP_BPF), in words.
pub fn attach(interface: &str, ifindex: u32, native: bool) -> Result<Arc<Attached>, String> {
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
    let a = Arc::new(Attached::new(ifindex, native).map_err(|e| match e.raw_os_error() {
        Some(libc::EBUSY | libc::EEXIST) => {
            format!("another XDP program is attached to {interface} (`ip link set dev {interface} xdp off` removes it)")
        }
        _ => format!("attaching {PROGRAM}: {e}"),
    })?);
    map.insert(ifindex, Arc::downgrade(&a));
    Ok(a)
}
