//! AF_XDP sockets with xsk-rs: one socket per (interface, queue), all the
//! sockets of one poll loop on one shared UMEM.
//!
//! Sharing the UMEM is what lets a loop forward without copying: a frame
//! received on one port is handed to another port's tx ring as it is.
//! Frames that go to several places (flooded ARP/ND) are copied into fresh
//! UMEM frames, one per target, and so are frames handed to another poll
//! loop (each loop has its own UMEM).
//!
//! The XDP attach mode and zero-copy are chosen by trying, most capable
//! first: native zero-copy, native copy, then generic (skb) copy, within what
//! `host.toml` allows (`mode`, `zero_copy`); the mode in use is returned and
//! logged. veth and tap devices have no zero-copy support, so on them the
//! kernel copies between the device and the UMEM (copy mode) even when the
//! attach mode is native.
//!
//! # Frame ownership
//! A UMEM frame is a [`Frame`]: not `Copy` or `Clone`, made only by this
//! module, and moved from place to place: from a socket's rx ring to the
//! loop ([`Socket::receive`]), from the loop to a tx ring
//! ([`Socket::transmit`]) or the free list ([`Memory::release`]), from the
//! free list to a fill ring ([`Socket::refill`]) and back through the
//! completion ring ([`Socket::reclaim`]). A frame in a ring is the kernel's
//! until the ring gives it back, and the type system keeps the loop from
//! using it, or giving it away twice, meanwhile. The rings are private to
//! [`Socket`]; each hand-over to a ring is a transaction (the frames that
//! fit are committed at once; the rest stay the caller's). A ledger
//! records which socket holds each frame, so a socket closed with frames in
//! its rings gives them back ([`Memory::forget`]).
//!
//! # Invariants
//! Every frame of a UMEM is in exactly one place: the free list, a value
//! the loop holds, or one socket's rings (then the ledger names the
//! socket). The unsafe calls into xsk-rs below rely on it and say so.
#![allow(unsafe_code, reason = "xsk-rs ring and UMEM access is unsafe; each call says why it holds")]

pub mod bpf;
pub mod idle;
pub mod napi;
pub mod sys;

use std::num::NonZeroU32;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use sgswitch_config::{Datapath, PreferBusyPoll, XdpMode, ZeroCopy};
use xsk_rs::config::{BindFlags, FrameSize, LibxdpFlags, QueueSize, SocketConfig, UmemConfig, XdpFlags};
use xsk_rs::{CompQueue, FillQueue, FrameDesc, RxQueue, TxQueue, Umem};

pub use super::PortError;
use super::Rings;

/// UMEM frame size: one MTU-sized Ethernet frame and headroom.
pub const FRAME_SIZE: u32 = 2048;

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

/// How [`Memory::bind`] makes a socket: the attach modes to try, whether
/// to busy poll, and how long to wait for a queue another socket holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BindOptions {
    pub mode: XdpMode,
    pub zero_copy: ZeroCopy,
    pub busy_poll: Option<BusyPoll>,
    /// How long a queue bound by another socket (`EBUSY`) is waited for:
    /// the kernel releases a dead process's AF_XDP sockets in the
    /// background, and a restart (systemd's) can come before it is done.
    /// [`BUSY_WAIT`] when the switch starts; zero in a running loop, which
    /// must not stall and tries again a second later anyway.
    pub busy_wait: Duration,
    /// The interface's program looks flows up in the fast path's maps
    /// (`bpf.rs`) before the sockets.
    pub fast: bool,
}

/// The wait for a held queue when the switch starts.
pub const BUSY_WAIT: Duration = Duration::from_secs(2);

/// Preferred busy polling: the socket options, and the interface settings
/// that make the kernel leave the queue's receive work to the loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BusyPoll {
    /// Failing to set it up fails the bind (`prefer_busy_poll = "on"`);
    /// else the socket runs without, and says why.
    pub required: bool,
    /// Frames per busy poll (`SO_BUSY_POLL_BUDGET`).
    pub budget: u32,
    /// The interface's `napi_defer_hard_irqs` and `gro_flush_timeout` (ns)
    /// while a socket busy polls it.
    pub defer_hard_irqs: u32,
    pub gro_flush_timeout_ns: u64,
}

impl BindOptions {
    /// What `[datapath]` asks for.
    pub fn of(d: &Datapath) -> BindOptions {
        let busy_poll = (d.prefer_busy_poll != PreferBusyPoll::Off).then_some(BusyPoll {
            required: d.prefer_busy_poll == PreferBusyPoll::On,
            budget: d.busy_poll_budget,
            defer_hard_irqs: d.napi_defer_hard_irqs,
            gro_flush_timeout_ns: u64::from(d.gro_flush_timeout_us) * 1000,
        });
        let fast = d.fast_path != sgswitch_config::FastPath::Off;
        BindOptions { mode: d.mode, zero_copy: d.zero_copy, busy_poll, busy_wait: BUSY_WAIT, fast }
    }
}

/// One frame of a loop's UMEM, owned by whoever holds this value (see the
/// module's "Frame ownership").
#[derive(Debug)]
pub struct Frame(FrameDesc);

impl Frame {
    /// The frame's number in its UMEM: what the pipeline carries as the
    /// frame's handle while a fragment is held.
    #[inline]
    pub fn number(&self) -> u32 {
        u32::try_from(self.0.addr() / FRAME_SIZE as usize).unwrap_or(u32::MAX)
    }
}

/// Which socket holds each frame of a UMEM: 0 for the loop itself (free,
/// or in its hands), else the id of the socket whose fill or tx ring it
/// was put on and which has not given it back. One store per frame handed
/// over either way.
#[derive(Debug)]
struct Ledger(Vec<u16>);

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

/// A loop's UMEM, its free frames, and who holds the others.
pub struct Memory {
    umem: Umem,
    free: Vec<FrameDesc>,
    /// Every frame's descriptor, by frame number.
    all: Vec<FrameDesc>,
    ledger: Ledger,
    /// The next socket id (1..).
    next_id: u16,
    /// The socket bound first, whose descriptor carries the UMEM's
    /// registration: other sockets share the UMEM through it, so once its
    /// interface is gone the UMEM must be made anew.
    registered: Option<u16>,
    ring_size: u32,
    /// Free frames fill rings are not given: what copies (floods, frames
    /// handed over by other loops) draw on.
    reserve: usize,
    /// Descriptors moved to or from a ring at once (scratch, see
    /// [`scratch`]).
    scratch: Vec<FrameDesc>,
}

/// The first `len` descriptors of a loop's scratch space. It only grows
/// (to the ring size, once), so taking it costs nothing: sized afresh each
/// call, as a `Vec` resized between the transmit batch and the ring size,
/// it rewrote a ring's worth of descriptors every loop turn.
fn scratch(space: &mut Vec<FrameDesc>, len: usize) -> &mut [FrameDesc] {
    if space.len() < len {
        space.resize(len, FrameDesc::default());
    }
    &mut space[..len]
}

impl std::fmt::Debug for Memory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Memory({} free)", self.free.len())
    }
}

impl Memory {
    /// A UMEM of `frames` frames of [`FRAME_SIZE`] bytes, with fill and
    /// completion rings of `ring_size`.
    ///
    /// # Errors
    /// The memory cannot be mapped or registered.
    pub fn new(frames: u32, ring_size: u32) -> Result<Memory, PortError> {
        let umem_err = |what: String| PortError::Umem { frames, what };
        let qs = |n: u32| QueueSize::new(n).map_err(|e| umem_err(format!("ring size {n}: {e}")));
        let config = UmemConfig::builder()
            .frame_size(FrameSize::new(FRAME_SIZE).map_err(|e| umem_err(e.to_string()))?)
            .fill_queue_size(qs(ring_size)?)
            .comp_queue_size(qs(ring_size)?)
            .build()
            .map_err(|e| umem_err(e.to_string()))?;
        let n = NonZeroU32::new(frames).ok_or_else(|| umem_err("a UMEM needs frames".into()))?;
        let (umem, free) = Umem::new(config, n, false).map_err(|e| umem_err(e.to_string()))?;
        let mut all = free.clone();
        all.sort_by_key(FrameDesc::addr);
        let ledger = Ledger(vec![0; all.len()]);
        let scratch = Vec::with_capacity(ring_size as usize);
        Ok(Memory { umem, free, all, ledger, next_id: 1, registered: None, ring_size, reserve: 0, scratch })
    }

    /// Keeps `n` free frames out of the fill rings, for copies.
    pub fn keep_free(&mut self, n: usize) {
        self.reserve = n;
    }

    /// How many frames are free.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// How many frames the UMEM has.
    pub fn frames(&self) -> usize {
        self.all.len()
    }

    /// The bytes of a frame the loop holds.
    #[inline]
    pub fn data(&self, f: &Frame) -> &[u8] {
        // SAFETY: `f` is a frame of this UMEM the caller holds (no ring has
        // it), so the kernel does not write it.
        unsafe { self.umem.data(&f.0) }.contents()
    }

    /// Runs `f` on the bytes of a frame the loop holds, to change them.
    #[inline]
    pub fn with_data_mut<R>(&mut self, frame: &mut Frame, f: impl FnOnce(&mut [u8]) -> R) -> R {
        // SAFETY: as in `data`: no ring holds the frame, and `&mut Frame`
        // makes this the only access to it.
        let mut d = unsafe { self.umem.data_mut(&mut frame.0) };
        f(d.contents_mut())
    }

    /// Gives a frame back to the free list.
    #[inline]
    pub fn release(&mut self, f: Frame) {
        self.free.push(f.0);
    }

    /// A free frame holding a copy of `bytes`; `None` if none is free (or
    /// the bytes do not fit).
    pub fn copy_in(&mut self, bytes: &[u8]) -> Option<Frame> {
        self.fill_in(bytes.len(), |dst| {
            dst.copy_from_slice(bytes);
            true
        })
    }

    /// A free frame of `len` bytes that `fill` writes, all of them, where
    /// they are (a reader that can write into the frame needs no copy in
    /// between); `None`, with no frame taken, if none is free, `len` is
    /// more than a frame holds, or `fill` says it could not (then it is
    /// not called again).
    pub fn fill_in(&mut self, len: usize, fill: impl FnOnce(&mut [u8]) -> bool) -> Option<Frame> {
        let mut d = self.free.pop()?;
        // SAFETY: `d` came from the free list: no ring holds it.
        let mut data = unsafe { self.umem.data_mut(&mut d) };
        let mut cursor = data.cursor();
        // The frame's length is the cursor's position (a frame dropped
        // back to the free list keeps its old one).
        let fits = len <= cursor.buf_len();
        cursor.set_pos(len);
        if fits && fill(data.contents_mut()) {
            Some(Frame(d))
        } else {
            self.free.push(d);
            None
        }
    }

    /// Closes `sock` and gives the frames its rings held back to the free
    /// list. Returns whether the UMEM must be made anew: `sock` carried its
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

    /// Binds a socket on `interface`/`queue`, trying the attach modes
    /// `opts` allows, most capable first, and sets up busy polling if asked.
    ///
    /// # Errors
    /// The interface does not exist, or no mode could be bound, or busy
    /// polling was required and could not be set up; the message names the
    /// interface and the reason.
    pub fn bind(&mut self, interface: &str, queue: u32, opts: &BindOptions) -> Result<Socket, PortError> {
        let BindOptions { mode, zero_copy, busy_poll, busy_wait, fast } = *opts;
        if !Path::new("/sys/class/net").join(interface).exists() {
            return Err(PortError::NoInterface { iface: interface.to_owned() });
        }
        sys::claim(interface)?;
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
        let name = interface.parse().map_err(|_| PortError::NoInterface { iface: interface.to_owned() })?;
        let ifindex = sys::ifindex(interface);
        // Binding is setup work, never per packet: one at a time, so that
        // the loops binding queues of one interface find one program.
        static BINDING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = BINDING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let qs = QueueSize::new(self.ring_size).map_err(|e| PortError::Bind {
            iface: interface.to_owned(),
            queue,
            tried: format!("ring size {}: {e}", self.ring_size),
        })?;
        let mut last = String::new();
        let mut refused = Vec::new();
        let busy_until = Instant::now() + busy_wait;
        for &native in natives {
            // The switch's program (bpf.rs), in this mode, before the
            // sockets: libxdp is told not to load its own.
            let program = match bpf::attach(interface, ifindex, native, fast) {
                Ok(p) => p,
                Err(e) => {
                    // The reason a mode tried before failed says more than
                    // that this one is not the one in use.
                    let why = format!("{}: {e}", if native { "native" } else { "skb" });
                    if last.is_empty() {
                        last.clone_from(&why);
                    }
                    refused.push(why);
                    continue;
                }
            };
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
                    .libxdp_flags(LibxdpFlags::XSK_LIBXDP_FLAGS_INHIBIT_PROG_LOAD)
                    .build();
                // A queue still held by a socket the kernel is releasing
                // (a switch killed a moment ago) refuses with EBUSY until
                // it is done: wait for it (`busy_wait`) before trying a
                // lesser mode or giving up.
                let made = loop {
                    // SAFETY: every (interface, queue) is bound once per
                    // switch (the runtime opens each port's socket once),
                    // and libxdp loads no program (inhibited).
                    let r = unsafe { xsk_rs::Socket::new(config, &self.umem, &name, queue) };
                    match &r {
                        Err(e) if is_busy(e) && Instant::now() < busy_until => std::thread::sleep(BUSY_RETRY),
                        _ => break r,
                    }
                };
                match made {
                    Ok((tx, rx, Some((fq, cq)))) => {
                        let fd = rx.fd().as_raw_fd();
                        if let Err(e) = program.insert(queue, fd) {
                            return Err(PortError::Sys {
                                call: "bpf map update",
                                what: format!("interface {interface} queue {queue}: {e}"),
                            });
                        }
                        // A socket sharing a UMEM may end up in copy mode
                        // whatever it asked for: ask the kernel.
                        let zero_copy = zc && is_zero_copy(fd);
                        let mut why = if refused.is_empty() { String::from("the most capable mode allowed") } else { refused.join("; ") };
                        // Busy polling needs the socket options now, and
                        // the queue's NAPI context, which the kernel names
                        // with the first frames (see `Napi`).
                        let napi = match busy_poll.map(|b| (b, sys::busy_poll(fd, &b))) {
                            None => Napi::Off,
                            Some((b, Ok(()))) => Napi::Unknown { wait: 0, asked: 0, settings: b },
                            Some((b, Err(e))) if b.required => {
                                return Err(PortError::Sys { call: "busy polling", what: format!("interface {interface}: {e}") });
                            }
                            Some((_, Err(e))) => {
                                why.push_str(&format!("; not busy-polled: {e}"));
                                Napi::Off
                            }
                        };
                        let tx_budget = sys::tx_budget(fd, self.ring_size);
                        let id = self.new_id();
                        self.registered.get_or_insert(id);
                        return Ok(Socket {
                            interface: interface.to_owned(),
                            ifindex,
                            queue,
                            id,
                            mode: Mode { native, zero_copy },
                            why,
                            napi,
                            seen_frames: false,
                            tx_budget,
                            tx,
                            rx,
                            fq,
                            cq,
                            ring_size: self.ring_size,
                            _program: std::sync::Arc::clone(&program),
                        });
                    }
                    Ok((_, _, None)) => return Err(PortError::AlreadyBound { iface: interface.to_owned(), queue }),
                    Err(e) => {
                        let cause = std::error::Error::source(&e).map_or(String::new(), |c| format!(" ({c})"));
                        last = format!("{} {}: {e}{cause}", if native { "native" } else { "skb" }, if zc { "zero-copy" } else { "copy" });
                        refused.push(last.clone());
                    }
                }
            }
        }
        Err(PortError::Bind { iface: interface.to_owned(), queue, tried: last })
    }
}

/// How often a held queue is tried again within `BindOptions::busy_wait`.
const BUSY_RETRY: Duration = Duration::from_millis(20);

/// Whether socket creation failed because the queue is bound already.
fn is_busy(e: &xsk_rs::socket::SocketCreateError) -> bool {
    std::error::Error::source(e).and_then(|c| c.downcast_ref::<std::io::Error>()).and_then(std::io::Error::raw_os_error)
        == Some(libc::EBUSY)
}

/// One bound socket and its four rings, private: frames go in and out only
/// through its methods.
pub struct Socket {
    interface: String,
    /// The interface's index when the socket was bound: another index (or
    /// none) under the same name later means the interface was deleted
    /// (and perhaps made again) under the socket.
    ifindex: u32,
    queue: u32,
    /// This socket's number in its UMEM's ledger.
    id: u16,
    mode: Mode,
    /// Why it runs in that mode: the modes refused before it, and why it
    /// is not busy-polled if it was asked to be.
    why: String,
    /// Busy polling: waiting for the kernel to name the queue's NAPI
    /// context, engaged, unavailable or not asked for.
    napi: Napi,
    /// Whether frames have arrived (after which an unnamed NAPI context
    /// stays unnamed).
    seen_frames: bool,
    /// Frames one kick sends in copy mode (`XDP_MAX_TX_SKB_BUDGET` where
    /// the kernel has it; 32 without).
    tx_budget: u32,
    tx: TxQueue,
    rx: RxQueue,
    fq: FillQueue,
    cq: CompQueue,
    /// Entries of each of its rings (fill, completion, rx, tx).
    ring_size: u32,
    /// The interface's program, which sends this queue's frames here
    /// (last: dropped after the socket closes, and the last socket of the
    /// interface detaches it).
    _program: std::sync::Arc<bpf::Attached>,
}

/// Busy polling a socket needs the NAPI id of its queue, which the kernel
/// records with the first frame it receives (`SO_INCOMING_NAPI_ID`). A
/// queue whose frames come with no NAPI id (tap devices; veth on kernels
/// that register its receive queues before naming their NAPI contexts) is
/// received by the kernel in its own context, as without busy polling.
#[derive(Debug)]
enum Napi {
    /// Not asked for, or its socket options refused.
    Off,
    /// Not named yet: asked again after `wait` more receive calls;
    /// `asked` counts the questions since frames arrived.
    Unknown { wait: u16, asked: u8, settings: BusyPoll },
    /// Busy polled, with the interface's NAPI settings changed for it
    /// (restored when the last such socket on the interface closes).
    Polled(#[expect(dead_code, reason = "held for its Drop: restores the interface")] sys::Tuned),
    /// The kernel named no NAPI context for the frames that arrived.
    Unavailable,
}

/// Whether a socket is busy-polled, for the log and the metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum BusyPolled {
    /// Not asked for (or refused).
    Off,
    /// Asked for; waiting for the first frames to name the NAPI context.
    Pending,
    /// Engaged: the loop drives the queue's receive work.
    Yes,
    /// Asked for; the queue's frames come with no NAPI context.
    Unavailable,
}

impl BusyPolled {
    /// The value of `self as u8`.
    pub fn from_u8(v: u8) -> BusyPolled {
        [BusyPolled::Off, BusyPolled::Pending, BusyPolled::Yes, BusyPolled::Unavailable]
            .get(usize::from(v))
            .copied()
            .unwrap_or(BusyPolled::Off)
    }

    pub fn label(self) -> &'static str {
        match self {
            BusyPolled::Off => "off",
            BusyPolled::Pending => "pending",
            BusyPolled::Yes => "yes",
            BusyPolled::Unavailable => "unavailable",
        }
    }
}

/// Questions for a NAPI id, after frames arrived, before giving up.
const NAPI_ASKS: u8 = 3;

/// Receive calls between two questions for a socket's NAPI id.
const NAPI_ASK_EVERY: u16 = 1024;

impl std::fmt::Debug for Socket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Socket({}#{} {})", self.interface, self.queue, self.mode.describe())
    }
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

impl Socket {
    pub fn interface(&self) -> &str {
        &self.interface
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Why the socket runs in its mode.
    pub fn why(&self) -> &str {
        &self.why
    }

    /// Whether the socket is busy-polled.
    pub fn busy_polled(&self) -> BusyPolled {
        match self.napi {
            Napi::Off => BusyPolled::Off,
            Napi::Unknown { .. } => BusyPolled::Pending,
            Napi::Polled(_) => BusyPolled::Yes,
            Napi::Unavailable => BusyPolled::Unavailable,
        }
    }

    /// Drives the queue's receive work once, if busy polled: a
    /// non-blocking `recvfrom`, which polls the queue's NAPI context for up
    /// to the busy-poll budget of frames into the rx ring. Until the
    /// context is named, asks for its id now and then; once named, tunes
    /// the interface for busy polling (`sys::tune`).
    fn busy_poll(&mut self) {
        let fd = self.rx.fd().as_raw_fd();
        match &mut self.napi {
            Napi::Polled(_) => sys::poke(fd),
            Napi::Off | Napi::Unavailable => {}
            Napi::Unknown { wait, .. } if *wait > 0 => *wait -= 1,
            Napi::Unknown { asked, settings, .. } => {
                let (settings, asked) = (*settings, *asked);
                let id = sys::napi_id(fd);
                self.napi = if id != 0 {
                    match sys::tune(&self.interface, settings.defer_hard_irqs, settings.gro_flush_timeout_ns) {
                        Ok(t) => {
                            tracing::info!("{} queue {}: busy polling NAPI context {id}", self.interface, self.queue);
                            Napi::Polled(t)
                        }
                        Err(e) => {
                            tracing::warn!("{} queue {}: not busy-polled: {e}", self.interface, self.queue);
                            Napi::Unavailable
                        }
                    }
                } else if self.seen_frames && asked + 1 >= NAPI_ASKS {
                    tracing::info!(
                        "{} queue {}: not busy-polled: the kernel names no NAPI context for its frames (tap devices have none, nor veth on some kernels); it receives them in its own context",
                        self.interface,
                        self.queue
                    );
                    Napi::Unavailable
                } else {
                    Napi::Unknown { wait: NAPI_ASK_EVERY, asked: asked + u8::from(self.seen_frames), settings }
                };
            }
        }
    }

    /// The index the interface had when the socket was bound.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The kernel's statistics of the socket (`XDP_STATISTICS`): rx
    /// dropped, rx invalid, tx invalid, rx ring full, fill ring empty, tx
    /// ring empty.
    pub fn statistics(&self) -> Option<[u64; 6]> {
        let k = self.rx.fd().xdp_statistics().ok()?;
        Some([
            k.rx_dropped(),
            k.rx_invalid_descs(),
            k.tx_invalid_descs(),
            k.rx_ring_full(),
            k.rx_fill_ring_empty_descs(),
            k.tx_ring_empty_descs(),
        ])
    }
}

impl Rings for Socket {
    /// Takes the frames the kernel has sent (the completion ring) back to
    /// the free list; returns how many.
    fn reclaim(&mut self, mem: &mut Memory) -> usize {
        let scratch = scratch(&mut mem.scratch, self.ring_size as usize);
        // SAFETY: descriptors from the completion ring are the loop's again:
        // the kernel has sent them.
        let n = unsafe { self.cq.consume(scratch) };
        mem.ledger.set_all(&scratch[..n], 0);
        mem.free.extend_from_slice(&scratch[..n]);
        n
    }

    /// Tops the fill ring up to `target` frames from the free list, leaving
    /// the frames kept for copies ([`Memory::keep_free`]): each socket of
    /// a loop gets its share of the UMEM; an empty fill ring drops frames.
    fn refill(&mut self, mem: &mut Memory, target: u32) {
        let ring = self.fq.nb_free(u32::MAX);
        let filled = self.ring_size.saturating_sub(ring);
        let want = (target.saturating_sub(filled) as usize).min(mem.free.len().saturating_sub(mem.reserve)).min(ring as usize);
        if want > 0 {
            let from = mem.free.len() - want;
            // SAFETY: the descriptors are free (in no ring), of this UMEM;
            // xsk-rs puts all of them on the ring or none.
            let done = unsafe { self.fq.produce(&mem.free[from..]) };
            if done > 0 {
                mem.ledger.set_all(&mem.free[from..], self.id);
                mem.free.truncate(from);
            }
        }
        if self.fq.needs_wakeup() {
            let _ = self.fq.wakeup(self.rx.fd_mut(), 0);
        }
    }

    /// This socket's entry for [`sys::wait_for_frames`]: readable when its
    /// rx ring holds frames.
    fn poll_fd(&mut self) -> libc::pollfd {
        libc::pollfd { fd: self.rx.fd().as_raw_fd(), events: libc::POLLIN, revents: 0 }
    }

    /// Moves up to `max` received frames to the end of `out`; returns how
    /// many.
    fn receive(&mut self, mem: &mut Memory, out: &mut Vec<Frame>, max: usize) -> usize {
        self.busy_poll();
        let scratch = scratch(&mut mem.scratch, max.min(self.ring_size as usize));
        // SAFETY: the frames the rx ring hands back are the loop's: the
        // kernel has written them and lets go.
        let n = unsafe { self.rx.consume(scratch) };
        mem.ledger.set_all(&scratch[..n], 0);
        out.extend(scratch[..n].iter().map(|d| Frame(*d)));
        self.seen_frames |= n > 0;
        n
    }

    /// Moves the frames at the front of `frames` onto the tx ring, as many
    /// as it has room for, in one commit; returns how many (the rest stay
    /// in `frames`). Call it every loop iteration, with no frames too: it
    /// also kicks the kernel while the ring holds frames the kernel has not
    /// taken.
    fn transmit(&mut self, mem: &mut Memory, frames: &mut Vec<Frame>) -> usize {
        let mut n = 0;
        if !frames.is_empty() {
            let room = usize::try_from(self.tx.nb_free(u32::try_from(frames.len()).unwrap_or(u32::MAX))).unwrap_or(usize::MAX);
            let take = frames.len().min(room);
            if take > 0 {
                let scratch = scratch(&mut mem.scratch, take);
                for (d, f) in scratch.iter_mut().zip(&frames[..take]) {
                    *d = f.0;
                }
                // SAFETY: the frames are the loop's (held as `Frame`s, so in
                // no ring), of this UMEM; xsk-rs submits all or none, and
                // the ones it took are removed from `frames` below, so no
                // frame is in two places.
                n = unsafe { self.tx.produce(scratch) };
                if n > 0 {
                    mem.ledger.set_all(&scratch[..n], self.id);
                    frames.drain(..n);
                }
            }
        }
        // Copy mode sends only on a kick (sendto); zero-copy drivers ask
        // for one with the need-wakeup flag. One kick sends up to the tx
        // budget: with the ring's size as the budget, one kick a call gets
        // a batch out. A kernel without the budget option sends 32 a kick:
        // kick until it has taken everything from the ring (or stops
        // taking: a full completion ring), or the rest of a batch waits for
        // the loop's next turn. Bounded: a full ring is `ring_size / 32`
        // kicks.
        let mut free = self.tx.nb_free_exact();
        let kicks = if self.tx_budget >= self.ring_size { 1 } else { self.ring_size / self.tx_budget.max(1) + 1 };
        for _ in 0..kicks {
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
        let f = mem.copy_in(&long).expect("a free frame");
        assert_eq!(mem.data(&f), &long[..]);
        // Back to the free list as a dropped frame goes (with its length),
        // and taken again (the list is a stack).
        mem.release(f);
        let short = [7u8; 60];
        let f = mem.copy_in(&short).expect("a free frame");
        assert_eq!(mem.data(&f), &short[..], "the frame has the new bytes only");
    }

    #[test]
    fn frame_numbers_are_the_frames_places_in_the_umem() {
        let mut mem = Memory::new(512, 64).expect("a UMEM");
        let mut numbers: Vec<u32> = (0..512).map(|_| mem.copy_in(&[1]).expect("a frame").number()).collect();
        numbers.sort_unstable();
        assert_eq!(numbers, (0..512).collect::<Vec<u32>>());
    }
}
