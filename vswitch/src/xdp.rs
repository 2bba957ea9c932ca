//! AF_XDP sockets with xsk-rs: one socket per (interface, queue), all the
//! sockets of one poll loop on one shared UMEM.
//!
//! Sharing the UMEM is what lets a loop forward without copying: a frame
//! received on one port is handed to another port's tx ring by its
//! descriptor. Frames that go to several places (flooded ARP/ND) are copied
//! into fresh UMEM frames, one per target, and so are frames handed to
//! another poll loop (each loop has its own UMEM).
//!
//! The XDP attach mode and zero-copy are chosen by trying, most capable
//! first: native zero-copy, native copy, then generic (skb) copy, within what
//! `host.toml` allows (`mode`, `zero_copy`); the mode in use is returned and
//! logged. veth and tap devices have no zero-copy support, so on them the
//! kernel copies between the device and the UMEM (copy mode) even when the
//! attach mode is native.
#![allow(unsafe_code, reason = "xsk-rs ring and UMEM access is unsafe; each call says why it holds")]

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::Path;

use sgswitch_config::{XdpMode, ZeroCopy};
use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

/// UMEM frame size: one MTU-sized Ethernet frame and headroom.
pub const FRAME_SIZE: u32 = 2048;

/// Frames the kernel sends per kick in copy mode (its default transmit
/// budget per `sendto`).
const KICK_FRAMES: u32 = 32;

/// The mode a socket actually runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mode {
    /// Native (driver) XDP; false is generic (skb) mode.
    pub native: bool,
    pub zero_copy: bool,
}

impl Mode {
    pub fn describe(self) -> String {
        format!("{} {}", if self.native { "native" } else { "skb" }, if self.zero_copy { "zero-copy" } else { "copy" })
    }
}

/// One bound socket and its four rings.
pub struct Socket {
    pub interface: String,
    /// The interface's index when the socket was bound: another index (or
    /// none) under the same name later means the interface was deleted
    /// (and perhaps made again) under the socket.
    pub ifindex: u32,
    pub queue: u32,
    /// This socket's number in its UMEM's [`Ledger`].
    id: u16,
    pub mode: Mode,
    pub tx: TxQueue,
    pub rx: RxQueue,
    pub fq: FillQueue,
    pub cq: CompQueue,
    /// Entries of each of its rings (fill, completion, rx, tx).
    ring_size: u32,
}

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Socket({}#{} {})", self.interface, self.queue, self.mode.describe())
    }
}

/// Which socket holds each frame of a UMEM: 0 for the loop itself (free,
/// or in its hands), else the id of the socket whose fill or tx ring it
/// was put on and which has not given it back (rx or completion ring).
/// One store per frame handed over either way; when a socket is closed,
/// its frames return to the free list ([`Memory::forget`]).
#[derive(Debug)]
pub struct Ledger(Vec<u16>);

impl Ledger {
    #[inline]
    fn set(&mut self, d: &FrameDesc, holder: u16) {
        if let Some(h) = self.0.get_mut(d.addr() / FRAME_SIZE as usize) {
            *h = holder;
        }
    }

    #[inline]
    fn set_all(&mut self, ds: &[FrameDesc], holder: u16) {
        for d in ds {
            self.set(d, holder);
        }
    }
}

/// A loop's UMEM and its free frames.
pub struct Memory {
    pub umem: Umem,
    pub free: Vec<FrameDesc>,
    /// Every frame's descriptor, by frame number.
    all: Vec<FrameDesc>,
    pub ledger: Ledger,
    /// The next socket id (1..).
    next_id: u16,
    /// The socket bound first, whose descriptor carries the UMEM's
    /// registration: other sockets share the UMEM through it, so once its
    /// interface is gone the UMEM must be made anew.
    registered: Option<u16>,
    pub ring_size: u32,
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({} free)", self.free.len())
    }
}

impl Memory {
    /// A UMEM of `frames` frames of [`FRAME_SIZE`] bytes.
    ///
    /// # Errors
    /// The memory cannot be mapped or registered.
    pub fn new(frames: u32, ring_size: u32) -> Result<Memory, String> {
        let qs = |n: u32| QueueSize::new(n).map_err(|e| format!("ring size {n}: {e}"));
        let config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| e.to_string())?)
            .fill_queue_size(qs(ring_size)?)
            .comp_queue_size(qs(ring_size)?)
            .build()
            .map_err(|e| e.to_string())?;
        let n = NonZeroU32::new(frames).ok_or("a UMEM needs frames")?;
        let (umem, free) = Umem::new(config, n, false).map_err(|e| format!("creating the UMEM ({frames} frames): {e}"))?;
        let mut all = free.clone();
        all.sort_by_key(FrameDesc::addr);
        let ledger = Ledger(vec![0; all.len()]);
        Ok(Memory { umem, free, all, ledger, next_id: 1, registered: None, ring_size })
    }

    /// Closes `sock` and gives the frames it held back to the free list.
    /// Returns whether the UMEM must be made anew: `sock` carried its
    /// registration.
    pub fn forget(&mut self, sock: Socket) -> bool {
        let id = sock.id;
        drop(sock);
        for (i, h) in self.ledger.0.iter_mut().enumerate() {
            if *h == id {
                *h = 0;
                if let Some(d) = self.all.get(i) {
                    self.free.push(*d);
                }
            }
        }
        self.registered == Some(id)
    }

    fn new_id(&mut self) -> u16 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The bytes of a received (or written) frame.
    pub fn data(&self, d: &FrameDesc) -> &[u8] {
        // SAFETY: `d` is a descriptor of this UMEM, owned by the caller
        // (not in any ring), so the kernel does not write the frame.
        unsafe { self.umem.data(d) }.contents()
    }

    /// Copies `bytes` into a free frame; `None` if none is free.
    pub fn copy_in(&mut self, bytes: &[u8]) -> Option<FrameDesc> {
        let mut d = self.free.pop()?;
        // SAFETY: `d` came from the free list: no ring holds it.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cursor = data.cursor();
        // A frame dropped back to the free list keeps its old length, and a
        // cursor writes after it: start at the beginning.
        cursor.set_pos(0);
        let written = std::io::Write::write_all(&mut cursor, bytes).is_ok();
        if written {
            Some(d)
        } else {
            self.free.push(d);
            None
        }
    }

    /// Binds a socket on `interface`/`queue`, trying the attach modes
    /// `mode` and `zero_copy` allow, most capable first.
    ///
    /// # Errors
    /// The interface does not exist, or no mode could be bound; the message
    /// names the interface and the last reason.
    pub fn bind(&mut self, interface: &str, queue: u32, mode: XdpMode, zero_copy: ZeroCopy) -> Result<Socket, String> {
        if !Path::new("/sys/class/net").join(interface).exists() {
            return Err(format!("interface {interface}: no such network interface"));
        }
        // Claimed for the first time: an AF_XDP program already there is a
        // dead switch's.
        if claim(interface)?
            && let Some(removed) = remove_stale_programs(interface)
        {
            tracing::warn!("{removed}");
        }
        let natives: &[bool] = match mode {
            XdpMode::Auto => &[true, false],
            XdpMode::Native => &[true],
            XdpMode::Skb => &[false],
        };
        let zcs: &[bool] = match zero_copy {
            ZeroCopy::Auto => &[true, false],
            ZeroCopy::On => &[true],
            ZeroCopy::Off => &[false],
        };
        let name = interface.parse().map_err(|_| format!("interface {interface}: not a valid interface name"))?;
        // libxdp loads (or joins) the interface's XDP program when a socket
        // is made; two loops doing so at once on one interface race and one
        // fails. Binding is setup work, never per packet: serialise it.
        static BINDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = BINDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let qs = QueueSize::new(self.ring_size).map_err(|e| e.to_string())?;
        let mut last = String::new();
        for &native in natives {
            for &zc in zcs {
                // Generic mode has no zero-copy.
                if zc && !native {
                    continue;
                }
                let xdp = if native { XdpFlags::XDP_FLAGS_DRV_MODE } else { XdpFlags::XDP_FLAGS_SKB_MODE };
                let bind = BindFlags::XDP_USE_NEED_WAKEUP | if zc { BindFlags::XDP_ZEROCOPY } else { BindFlags::XDP_COPY };
                let config = SocketConfig::builder()
                    .rx_queue_size(qs)
                    .tx_queue_size(qs)
                    .xdp_flags(xdp)
                    .bind_flags(bind)
                    .libxdp_flags(LibxdpFlags::empty())
                    .build();
                // SAFETY: every (interface, queue) is bound once per
                // switch (the runtime opens each port's socket once), so
                // the default program load is not shared.
                match unsafe { xsk_rs::Socket::new(config, &self.umem, &name, queue) } {
                    Ok((tx, rx, Some((fq, cq)))) => {
                        // A socket sharing a UMEM may end up in copy mode
                        // whatever it asked for: ask the kernel.
                        let zero_copy = zc && is_zero_copy(rx.fd().as_raw_fd());
                        let id = self.new_id();
                        self.registered.get_or_insert(id);
                        return Ok(Socket {
                            interface: interface.to_owned(),
                            ifindex: ifindex(interface),
                            queue,
                            id,
                            mode: Mode { native, zero_copy },
                            tx,
                            rx,
                            fq,
                            cq,
                            ring_size: self.ring_size,
                        });
                    }
                    Ok((_, _, None)) => return Err(format!("interface {interface} queue {queue}: already bound by this switch")),
                    Err(e) => {
                        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(" ({c})"));
                        last = format!("{} {}: {e}{cause}", if native { "native" } else { "skb" }, if zc { "zero-copy" } else { "copy" });
                    }
                }
            }
        }
        Err(format!(
            "interface {interface}: cannot open an AF_XDP socket ({last}); is the switch running as root, and the kernel built with XDP sockets?"
        ))
    }
}

/// Waits until one of the sockets whose descriptors `fds` holds (from
/// [`Socket::poll_fd`]) has received frames, or `timeout` passes: how an
/// idle poll loop sleeps without `busy_poll`. A fixed sleep oversleeps on a
/// loaded host (a 200 us sleep measured up to 4 ms here) while the fill ring
/// runs dry; this returns as soon as the kernel queues a frame.
pub fn wait_for_frames(fds: &mut [libc::pollfd], timeout: std::time::Duration) {
    let ts = libc::timespec {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(timeout.subsec_nanos()),
    };
    let n = libc::nfds_t::try_from(fds.len()).unwrap_or(libc::nfds_t::MAX);
    // SAFETY: `fds` is a valid array of `n` pollfd structs the kernel may
    // write `revents` into; `ts` outlives the call; no signal mask is
    // changed (null). An error (EINTR) just ends the wait early.
    let _ = unsafe { libc::ppoll(fds.as_mut_ptr(), n, &raw const ts, std::ptr::null()) };
}

/// The receive queues of `interface` (`/sys/class/net/<if>/queues/rx-*`),
/// at least one.
pub fn rx_queues(interface: &str) -> u32 {
    let dir = Path::new("/sys/class/net").join(interface).join("queues");
    let n = std::fs::read_dir(dir)
        .map_or(0, |d| d.filter_map(Result::ok).filter(|e| e.file_name().to_string_lossy().starts_with("rx-")).count());
    u32::try_from(n).unwrap_or(1).max(1)
}

/// Whether a bound AF_XDP socket runs in zero-copy mode
/// (`getsockopt(SOL_XDP, XDP_OPTIONS)`).
fn is_zero_copy(fd: std::os::fd::RawFd) -> bool {
    const SOL_XDP: libc::c_int = 283;
    const XDP_OPTIONS: libc::c_int = 8;
    const XDP_OPTIONS_ZEROCOPY: u32 = 1;
    let mut flags: u32 = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<u32>()).unwrap_or(4);
    // SAFETY: `fd` is an open AF_XDP socket; the kernel writes at most
    // `len` bytes (struct xdp_options is one u32) into `flags`.
    let rc = unsafe { libc::getsockopt(fd, SOL_XDP, XDP_OPTIONS, (&raw mut flags).cast(), &raw mut len) };
    rc == 0 && flags & XDP_OPTIONS_ZEROCOPY != 0
}

/// Where the switch keeps one lock file per interface it uses.
const LOCK_DIR: &str = "/run/sgswitch/interfaces";

/// The interfaces this process has claimed, with their locked files.
static CLAIMED: std::sync::Mutex<Vec<(String, std::fs::File)>> = std::sync::Mutex::new(Vec::new());

/// Claims `interface` for this process: an exclusive `flock` on its lock
/// file under `/run/sgswitch/interfaces`, held until the process ends (the kernel drops
/// it even after SIGKILL). Claimed first, an interface has no live sgswitch
/// on it, so an AF_XDP program found there is a dead one's
/// ([`remove_stale_programs`]). `Ok(true)` when newly claimed.
///
/// # Errors
/// Another running sgswitch holds the interface, or the lock file cannot
/// be made.
pub fn claim(interface: &str) -> Result<bool, String> {
    use std::os::fd::AsRawFd;
    let mut claimed = CLAIMED.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if claimed.iter().any(|(n, _)| n == interface) {
        return Ok(false);
    }
    let err = |e: &dyn std::fmt::Display| format!("interface {interface}: cannot lock {LOCK_DIR}/{interface}: {e}");
    std::fs::create_dir_all(LOCK_DIR).map_err(|e| err(&e))?;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(Path::new(LOCK_DIR).join(interface))
        .map_err(|e| err(&e))?;
    // SAFETY: `f` is an open file; flock changes no memory.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(format!("interface {interface}: another sgswitch is using it (it holds {LOCK_DIR}/{interface}); stop it first"));
    }
    claimed.push((interface.to_owned(), f));
    Ok(true)
}

/// The name of the XDP program libxdp attaches for AF_XDP sockets (its
/// default program, redirecting to the interface's socket map).
const XSK_PROGRAM: &str = "xsk_def_prog";

/// Removes the XDP programs a previous sgswitch left on `interface`: only
/// libxdp's AF_XDP default program (and its dispatcher), which a switch
/// killed with SIGKILL leaves attached and which makes the next socket on
/// the interface fail; any other program stays. Returns what was removed.
/// Call only on an interface this process has just [`claim`]ed, before
/// opening its sockets: no live sgswitch uses the program then.
pub fn remove_stale_programs(interface: &str) -> Option<String> {
    let name = std::ffi::CString::new(interface).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    let ifindex = libc::c_int::try_from(index).ok().filter(|&i| i > 0)?;
    // SAFETY: libxdp returns either a valid multiprog we own (closed below)
    // or an error pointer, which `libxdp_get_error` tells apart.
    let mp = unsafe { libxdp_sys::xdp_multiprog__get_from_ifindex(ifindex) };
    // SAFETY: `mp` is what libxdp returned, as its error check expects.
    if mp.is_null() || unsafe { libxdp_sys::libxdp_get_error(mp.cast()) } != 0 {
        return None;
    }
    let mut names = Vec::new();
    // SAFETY: `mp` is a valid multiprog; `next_prog` walks its programs
    // (null to start, null at the end) and names are NUL-terminated strings
    // owned by the programs, copied out before `mp` is closed.
    unsafe {
        let name_of = |p: *const libxdp_sys::xdp_program| {
            let n = libxdp_sys::xdp_program__name(p);
            if n.is_null() { String::new() } else { std::ffi::CStr::from_ptr(n).to_string_lossy().into_owned() }
        };
        if libxdp_sys::xdp_multiprog__is_legacy(mp) {
            names.push(name_of(libxdp_sys::xdp_multiprog__main_prog(mp)));
        } else {
            let mut p = libxdp_sys::xdp_multiprog__next_prog(std::ptr::null(), mp);
            while !p.is_null() {
                names.push(name_of(p));
                p = libxdp_sys::xdp_multiprog__next_prog(p, mp);
            }
        }
    }
    let ours = !names.is_empty() && names.iter().all(|n| n == XSK_PROGRAM);
    // SAFETY: `mp` is valid; detaching removes what it describes from the
    // interface, and closing frees it once.
    let detached = ours && unsafe { libxdp_sys::xdp_multiprog__detach(mp) } == 0;
    // SAFETY: as above; `mp` is not used after this.
    unsafe { libxdp_sys::xdp_multiprog__close(mp) };
    detached.then(|| format!("{interface}: removed the XDP program ({}) a previous sgswitch left attached", names.join(", ")))
}

/// Raises the soft limit on open files to the hard limit: sockets, the
/// metrics endpoint's clients and the control socket's share it, and the
/// default of 1,024 is what a handful of idle clients used to exhaust.
/// Returns the limit in force.
pub fn raise_open_files() -> u64 {
    let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `r` is a valid rlimit the kernel writes; RLIMIT_NOFILE is a
    // valid resource.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut r) } != 0 {
        return 0;
    }
    if r.rlim_cur < r.rlim_max {
        let raised = libc::rlimit { rlim_cur: r.rlim_max, rlim_max: r.rlim_max };
        // SAFETY: as above; the new soft limit is the hard one, which an
        // unprivileged process may set too.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const raised) } == 0 {
            return raised.rlim_cur;
        }
    }
    r.rlim_cur
}

/// The index of interface `name`, 0 if there is none.
pub fn ifindex(name: &str) -> u32 {
    let Ok(c) = std::ffi::CString::new(name) else { return 0 };
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    unsafe { libc::if_nametoindex(c.as_ptr()) }
}

/// Counts the kernel's link events (an interface made, deleted, or its
/// state changed: `RTM_NEWLINK`/`RTM_DELLINK` on an `rtnetlink` socket
/// subscribed to `RTMGRP_LINK`) into `events` until `stop`: the poll loops
/// look at their interfaces again when it moves. The events are only a
/// prompt (the loops read the interfaces themselves), so nothing of them is
/// parsed. Returns at once, with the reason, if the socket cannot be made.
///
/// # Errors
/// The netlink socket cannot be opened or bound.
pub fn watch_links(stop: &std::sync::atomic::AtomicBool, events: &std::sync::atomic::AtomicU64) -> Result<(), String> {
    use std::sync::atomic::Ordering;
    const RTMGRP_LINK: u32 = 1;
    // SAFETY: a plain socket call; the descriptor is owned below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(format!("netlink socket: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: an all-zero sockaddr_nl is valid; the fields are set below.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::sa_family_t::try_from(libc::AF_NETLINK).unwrap_or(16);
    addr.nl_groups = RTMGRP_LINK;
    let len = libc::socklen_t::try_from(std::mem::size_of::<libc::sockaddr_nl>()).unwrap_or(12);
    // SAFETY: `addr` is a valid sockaddr_nl of `len` bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), (&raw const addr).cast(), len) } != 0 {
        return Err(format!("netlink bind: {}", std::io::Error::last_os_error()));
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
    let tlen = libc::socklen_t::try_from(std::mem::size_of::<libc::timeval>()).unwrap_or(16);
    // SAFETY: `timeout` is a valid timeval of `tlen` bytes.
    unsafe { libc::setsockopt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVTIMEO, (&raw const timeout).cast(), tlen) };
    let mut buf = vec![0u8; 64 * 1024];
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: `buf` is a valid buffer of its length for the kernel.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n > 0 {
            events.fetch_add(1, Ordering::Relaxed);
        } else if n < 0 {
            let e = std::io::Error::last_os_error();
            // A timeout lets `stop` be seen; an overrun lost events, which
            // is itself a prompt to look.
            if e.raw_os_error() == Some(libc::ENOBUFS) {
                events.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

/// Silences libbpf's and libxdp's own messages on stderr (ELF section
/// notices, the bpffs fallback): the switch reports what failed itself.
pub fn quiet_libraries() {
    // SAFETY: setting the print callbacks to none; called before any
    // socket is created.
    unsafe {
        libxdp_sys::libxdp_set_print(None);
        libbpf_set_print(std::ptr::null());
    }
}

unsafe extern "C" {
    /// libbpf (linked in through libxdp-sys): `libbpf_print_fn_t
    /// libbpf_set_print(libbpf_print_fn_t fn)`; null silences it.
    fn libbpf_set_print(f: *const libc::c_void) -> *const libc::c_void;
}

impl Socket {
    /// Returns completed tx frames to `free`.
    pub fn reclaim(&mut self, free: &mut Vec<FrameDesc>, ledger: &mut Ledger, scratch: &mut [FrameDesc]) -> usize {
        // SAFETY: descriptors from the completion ring are ours again.
        let n = unsafe { self.cq.consume(scratch) };
        ledger.set_all(&scratch[..n], 0);
        free.extend_from_slice(&scratch[..n]);
        n
    }

    /// Tops the fill ring up to `target` frames from `free` (each socket of
    /// a loop gets its share of the UMEM; an empty fill ring drops frames).
    pub fn refill(&mut self, free: &mut Vec<FrameDesc>, ledger: &mut Ledger, target: u32) {
        let ring = self.fq.nb_free(u32::MAX);
        let filled = self.ring_size.saturating_sub(ring);
        let want = (target.saturating_sub(filled) as usize).min(free.len()).min(ring as usize);
        if want > 0 {
            let from = free.len() - want;
            // SAFETY: the descriptors are free (in no ring), of this UMEM.
            // xsk-rs submits all of them or none.
            let done = unsafe { self.fq.produce(&free[from..]) };
            if done > 0 {
                ledger.set_all(&free[from..], self.id);
            }
            free.truncate(free.len() - done);
        }
        if self.fq.needs_wakeup() {
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// This socket's entry for [`wait_for_frames`]: readable when its rx
    /// ring holds frames.
    pub fn poll_fd(&self) -> libc::pollfd {
        libc::pollfd { fd: self.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 }
    }

    /// Takes received frames into `descs`; returns how many.
    pub fn receive(&mut self, descs: &mut [FrameDesc], ledger: &mut Ledger) -> usize {
        // SAFETY: the frames handed back are ours until given to a ring.
        let n = unsafe { self.rx.consume(descs) };
        ledger.set_all(&descs[..n], 0);
        n
    }

    /// Queues frames for transmission, as many as the ring has room for;
    /// returns how many it took (the rest stay the caller's). Call it every
    /// loop iteration, with no frames too: it also kicks the kernel while
    /// the ring holds frames the kernel has not taken.
    pub fn transmit(&mut self, descs: &[FrameDesc], ledger: &mut Ledger) -> usize {
        let mut n = 0;
        if !descs.is_empty() {
            // xsk-rs submits all or nothing: offer what the ring has room for.
            let room = usize::try_from(self.tx.nb_free(u32::try_from(descs.len()).unwrap_or(u32::MAX))).unwrap_or(usize::MAX);
            let take = descs.len().min(room);
            if take > 0 {
                // SAFETY: the descriptors are ours (received or copied
                // into), of this loop's UMEM, and not in any other ring.
                n = unsafe { self.tx.produce(&descs[..take]) };
                ledger.set_all(&descs[..n], self.id);
            }
        }
        // Copy mode sends only on a kick (sendto), at most 32 frames per
        // kick; zero-copy drivers ask for one with the need-wakeup flag.
        // Kick until the kernel has taken everything from the ring (or stops
        // taking: a full completion ring), or the rest of a batch waits for
        // the loop's next turn, which may come after an idle sleep. Bounded:
        // a full ring is `ring_size / 32` kicks.
        let mut free = self.tx.nb_free_exact();
        for _ in 0..=self.ring_size / KICK_FRAMES {
            if free >= self.ring_size || (self.mode.zero_copy && !self.tx.needs_wakeup()) {
                break;
            }
            let _ = self.tx.wakeup();
            let now = self.tx.nb_free_exact();
            if now == free {
                break;
            }
            free = now;
        }
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recycled_frame_holds_exactly_the_bytes_copied_in_last() {
        let mut mem = Memory::new(512, 64).expect("a UMEM");
        let long: Vec<u8> = (0..148u8).collect();
        let d = mem.copy_in(&long).expect("a free frame");
        assert_eq!(mem.data(&d), &long[..]);
        // Back to the free list as a dropped frame goes (with its length),
        // and taken again (the list is a stack).
        mem.free.push(d);
        let short = [7u8; 60];
        let d = mem.copy_in(&short).expect("a free frame");
        assert_eq!(mem.data(&d), &short[..], "the frame has the new bytes only");
    }
}
