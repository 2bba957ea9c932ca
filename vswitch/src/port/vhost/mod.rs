//! vhost-user ports: the switch reads and writes a guest's virtio-net
//! rings in the guest's own memory, shared over a unix socket (QEMU's
//! `-netdev vhost-user`, DPDK's `net_virtio_user`), with no kernel on the
//! way.
//!
//! Two halves, on two threads, and no lock between them:
//!
//! - The **control** half ([`control`]) speaks the vhost-user protocol on
//!   the port's socket, on a thread of its own: it maps the guest's memory,
//!   learns where the rings are, and hands each ring to the poll loop, whole,
//!   through a bounded queue once the guest has started it; when the guest
//!   stops a ring (or goes away) it asks the loop for it back and waits for
//!   the answer. It listens (server mode) or connects (client mode) again
//!   after a disconnect, so a guest that restarts needs no switch restart.
//! - The **ring** half ([`VhostUser`], the loop's) owns the rings it was
//!   handed: it copies the frames the guest sent into the loop's UMEM
//!   frames ([`Rings::receive`]), and frames for the guest into the guest's
//!   receive buffers ([`Rings::transmit`]), a batch at a time. A guest that
//!   posts no receive buffers has its frames dropped and counted; nothing
//!   waits for it.
//!
//! virtio-net as negotiated here: `VERSION_1`, mergeable receive buffers,
//! indirect descriptors; no checksum or segmentation offloads (the guest
//! sends whole, checksummed frames no larger than an MTU), one queue pair.
#![allow(unsafe_code, reason = "eventfds (fcntl, read, write) are libc calls; each says why it holds")]

pub mod control;
mod wire;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryMmap};

use super::Rings;
use super::xdp::{FRAME_SIZE, Frame, Memory};

/// Guest memory as the rings see it.
pub type GuestMem = GuestMemoryMmap<()>;

/// Queue 0 of a virtio-net device: the guest's receive buffers, which the
/// switch fills.
pub const RX: usize = 0;
/// Queue 1: the frames the guest sends.
pub const TX: usize = 1;

/// Receive buffers one frame may take (mergeable buffers): a guest that
/// posts buffers so small that a frame needs more is sent nothing.
const MAX_BUFFERS: usize = 8;

/// What the control half tells the loop, in order.
#[derive(Debug)]
pub enum Update {
    /// The guest's memory (a new table replaces the old one).
    Memory(Arc<GuestMem>),
    /// The virtio-net header's length and whether receive buffers merge.
    Features { header: usize, mergeable: bool },
    /// A ring, started: the loop owns it from here.
    Start { index: usize, queue: Box<Queue>, call: Option<File>, kick: Option<File> },
    /// Where the ring's used-buffer notifications go now.
    Call { index: usize, call: Option<File> },
    /// Give the ring back: the answer is where the guest's next buffer is.
    Stop { index: usize, reply: SyncSender<u16> },
    /// The guest went away: forget its memory and rings.
    Reset,
}

/// The state of a port's connection, for status and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Connection {
    /// No guest is connected (server: listening; client: retrying).
    Waiting,
    /// A guest is connected; its rings are not both running.
    Connected,
    /// Both rings run.
    Running,
}

impl Connection {
    pub fn label(self) -> &'static str {
        match self {
            Connection::Waiting => "waiting",
            Connection::Connected => "connected",
            Connection::Running => "running",
        }
    }

    pub fn from_u8(v: u8) -> Connection {
        match v {
            1 => Connection::Connected,
            2 => Connection::Running,
            _ => Connection::Waiting,
        }
    }
}

/// What the two halves share: the control thread's stop flag and the
/// connection's state.
#[derive(Debug, Default)]
pub struct Shared {
    pub stop: AtomicBool,
    pub connection: AtomicU8,
}

/// Counters of a vhost-user port's rings (the loop's, summed when read):
/// frames from the guest dropped because the loop had no free frame or
/// they were too large for one, and descriptor chains that broke the
/// rules (writable where the guest should only be read, outside its
/// memory).
#[derive(Debug, Default, Clone, Copy)]
pub struct RingCounts {
    pub no_frame: u64,
    pub too_large: u64,
    pub malformed: u64,
}

/// A ring the loop owns.
#[derive(Debug)]
struct Ring {
    queue: Box<Queue>,
    call: Option<File>,
    kick: Option<File>,
    /// The guest was asked to kick (the loop is about to sleep); else it
    /// is told not to (`VRING_USED_F_NO_NOTIFY`): a busy loop polls, and a
    /// kick costs a VM an exit.
    kicks_wanted: bool,
}

impl Ring {
    /// Tells the guest it has used buffers, if it asked to be told.
    fn notify(&mut self, mem: &GuestMem) {
        if let Some(call) = &self.call
            && self.queue.needs_notification(mem).unwrap_or(true)
        {
            signal(call);
        }
    }
}

/// The loop's half of a vhost-user port.
#[derive(Debug)]
pub struct VhostUser {
    socket: PathBuf,
    label: String,
    client: bool,
    updates: Receiver<Update>,
    shared: Arc<Shared>,
    control: Option<std::thread::JoinHandle<()>>,
    mem: Option<Arc<GuestMem>>,
    header: usize,
    mergeable: bool,
    rings: [Option<Ring>; 2],
    /// One frame as it is copied out of the guest.
    scratch: Box<[u8]>,
    pub counts: RingCounts,
}

impl Drop for VhostUser {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        // The control thread notices within its poll interval; the loop
        // does not wait for it, but rings and memory go first.
        self.rings = [None, None];
        self.mem = None;
        if let Some(t) = self.control.take() {
            drop(t);
        }
    }
}

impl VhostUser {
    /// Opens the port's socket (listening on it, or connecting to it in
    /// client mode) and starts its control thread.
    ///
    /// # Errors
    /// The socket cannot be made (its folder is missing, say).
    pub fn open(socket: PathBuf, client: bool, port: &str) -> Result<VhostUser, super::PortError> {
        let (tx, rx) = std::sync::mpsc::sync_channel(64);
        let shared = Arc::new(Shared::default());
        let control = control::start(&socket, client, port, tx, Arc::clone(&shared))?;
        let label = socket.display().to_string();
        Ok(VhostUser {
            socket,
            label,
            client,
            updates: rx,
            shared,
            control: Some(control),
            mem: None,
            header: 12,
            mergeable: true,
            rings: [None, None],
            scratch: vec![0; 65_536].into_boxed_slice(),
            counts: RingCounts::default(),
        })
    }

    /// The socket's path, as status names the port's link.
    pub fn label(&self) -> &str {
        &self.label
    }

    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    pub fn client(&self) -> bool {
        self.client
    }

    /// What the control thread shares: the connection's state.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    pub fn connection(&self) -> Connection {
        Connection::from_u8(self.shared.connection.load(Ordering::Relaxed))
    }

    /// Takes what the control half sent since the last call.
    fn apply_updates(&mut self) {
        loop {
            let u = match self.updates.try_recv() {
                Ok(u) => u,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            match u {
                Update::Memory(m) => self.mem = Some(m),
                Update::Features { header, mergeable } => {
                    self.header = header;
                    self.mergeable = mergeable;
                }
                Update::Start { index, mut queue, call, kick } => {
                    if let (Some(slot), Some(m)) = (self.rings.get_mut(index), self.mem.as_deref()) {
                        let _ = queue.disable_notification(m);
                        *slot = Some(Ring { queue, call, kick, kicks_wanted: false });
                    }
                }
                Update::Call { index, call } => {
                    if let Some(Some(r)) = self.rings.get_mut(index) {
                        r.call = call;
                    }
                }
                Update::Stop { index, reply } => {
                    let next = self.rings.get_mut(index).and_then(Option::take).map_or(0, |r| r.queue.next_avail());
                    let _ = reply.try_send(next);
                }
                Update::Reset => {
                    self.rings = [None, None];
                    self.mem = None;
                }
            }
        }
    }

    /// Copies the frame of one descriptor chain the guest sent into
    /// `scratch`, without its virtio-net header; its length, or what was
    /// wrong with it.
    fn read_chain(scratch: &mut [u8], header: usize, chain: virtio_queue::DescriptorChain<&GuestMem>) -> Result<usize, Bad> {
        let mem = chain.memory();
        let mut skip = header;
        let mut len = 0usize;
        for d in chain.clone() {
            if d.is_write_only() {
                return Err(Bad::Malformed);
            }
            let mut at = d.addr();
            let mut n = d.len() as usize;
            if skip > 0 {
                let s = skip.min(n);
                skip -= s;
                n -= s;
                at = at.checked_add(s as u64).ok_or(Bad::Malformed)?;
            }
            if n == 0 {
                continue;
            }
            let end = len.checked_add(n).filter(|&e| e <= scratch.len()).ok_or(Bad::TooLarge)?;
            mem.read_slice(&mut scratch[len..end], at).map_err(|_| Bad::Malformed)?;
            len = end;
        }
        Ok(len)
    }

    /// Writes one frame (with its header) into the guest's receive
    /// buffers: one buffer, or with mergeable buffers as many as it needs.
    /// The buffers go to the guest in one step (the used ring's index moves
    /// once), so the guest never sees part of a frame.
    fn write_frame(ring: &mut Ring, mem: &GuestMem, header: usize, mergeable: bool, frame: &[u8]) -> Wrote {
        let total = header + frame.len();
        let mut used: [(u16, u32); MAX_BUFFERS] = [(0, 0); MAX_BUFFERS];
        let mut buffers = 0;
        let mut done = 0usize;
        // Where the header's num_buffers field landed, byte by byte.
        let mut count_at: [Option<GuestAddress>; 2] = [None, None];
        while done < total {
            if buffers == MAX_BUFFERS || (buffers == 1 && !mergeable) {
                for _ in 0..buffers {
                    ring.queue.go_to_previous_position();
                }
                return Wrote::TooLarge;
            }
            let Some(chain) = ring.queue.pop_descriptor_chain(mem) else {
                for _ in 0..buffers {
                    ring.queue.go_to_previous_position();
                }
                return Wrote::Full;
            };
            let head = chain.head_index();
            let mut here = 0u32;
            for d in chain {
                if !d.is_write_only() || done >= total {
                    break;
                }
                let mut at = d.addr();
                let mut room = d.len() as usize;
                while room > 0 && done < total {
                    // The header first, then the frame.
                    let (src, off) = if done < header { (&HEADER[..header], done) } else { (frame, done - header) };
                    let n = room.min(src.len() - off);
                    if mem.write_slice(&src[off..off + n], at).is_err() {
                        break;
                    }
                    for (k, slot) in count_at.iter_mut().enumerate() {
                        let b = 10 + k;
                        if header == 12 && done <= b && b < done + n {
                            *slot = at.checked_add((b - done) as u64);
                        }
                    }
                    done += n;
                    here = here.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
                    room -= n;
                    at = match at.checked_add(n as u64) {
                        Some(a) => a,
                        None => break,
                    };
                }
            }
            used[buffers] = (head, here);
            buffers += 1;
            if here == 0 {
                // A buffer the guest cannot be written into: give it back
                // empty, with what came before (nothing is published yet).
                for _ in 0..buffers {
                    ring.queue.go_to_previous_position();
                }
                return Wrote::TooLarge;
            }
        }
        if header == 12 {
            let count = u16::try_from(buffers).unwrap_or(1).to_le_bytes();
            for (slot, b) in count_at.iter().zip(count) {
                if let Some(at) = slot {
                    let _ = mem.write_obj(b, *at);
                }
            }
        }
        publish_used(&mut ring.queue, mem, &used[..buffers]);
        Wrote::Done
    }
}

/// The virtio-net header of every frame the switch writes: no checksum or
/// segmentation work for the guest, one buffer (mergeable buffers set the
/// count as they go).
const HEADER: [u8; 12] = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bad {
    Malformed,
    TooLarge,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wrote {
    Done,
    Full,
    TooLarge,
}

/// Puts `used` (head, length) on the used ring and moves its index once.
fn publish_used(queue: &mut Queue, mem: &GuestMem, used: &[(u16, u32)]) {
    if let [(head, len)] = used {
        let _ = queue.add_used(mem, *head, *len);
        return;
    }
    let size = queue.size();
    if size == 0 {
        return;
    }
    let base = queue.used_ring();
    let next = queue.next_used();
    for (k, (head, len)) in used.iter().enumerate() {
        let slot = next.wrapping_add(u16::try_from(k).unwrap_or(0)) % size;
        // struct virtq_used { le16 flags; le16 idx; struct { le32 id; le32 len; } ring[]; }
        let at = base.wrapping_add(4 + 8 * u64::from(slot));
        let _ = mem.write_obj(u32::from(*head).to_le(), GuestAddress(at));
        let _ = mem.write_obj(len.to_le(), GuestAddress(at + 4));
    }
    let after = next.wrapping_add(u16::try_from(used.len()).unwrap_or(0));
    std::sync::atomic::fence(Ordering::Release);
    let _ = mem.store(after.to_le(), GuestAddress(base.wrapping_add(2)), Ordering::Release);
    queue.set_next_used(after);
}

impl Rings for VhostUser {
    fn receive(&mut self, mem: &mut Memory, out: &mut Vec<Frame>, max: usize) -> usize {
        self.apply_updates();
        let (Some(g), Some(ring)) = (self.mem.as_deref(), self.rings[TX].as_mut()) else { return 0 };
        if ring.kicks_wanted {
            ring.kicks_wanted = false;
            let _ = ring.queue.disable_notification(g);
        }
        let mut n = 0;
        let mut used = false;
        while n < max {
            let Some(chain) = ring.queue.pop_descriptor_chain(g) else { break };
            let head = chain.head_index();
            let read = Self::read_chain(&mut self.scratch, self.header, chain);
            let _ = ring.queue.add_used(g, head, 0);
            used = true;
            let len = match read {
                Ok(len) if len >= 14 && len <= FRAME_SIZE as usize => len,
                Ok(len) if len > FRAME_SIZE as usize => {
                    self.counts.too_large += 1;
                    continue;
                }
                Err(Bad::TooLarge) => {
                    self.counts.too_large += 1;
                    continue;
                }
                Ok(_) | Err(Bad::Malformed) => {
                    self.counts.malformed += 1;
                    continue;
                }
            };
            match mem.copy_in(&self.scratch[..len]) {
                Some(f) => {
                    out.push(f);
                    n += 1;
                }
                None => self.counts.no_frame += 1,
            }
        }
        if used {
            ring.notify(g);
        }
        n
    }

    fn transmit(&mut self, mem: &mut Memory, frames: &mut Vec<Frame>) -> usize {
        let (Some(g), Some(ring)) = (self.mem.as_deref(), self.rings[RX].as_mut()) else { return 0 };
        let mut taken = 0;
        let mut wrote = false;
        for f in frames.iter() {
            match Self::write_frame(ring, g, self.header, self.mergeable, mem.data(f)) {
                Wrote::Done => wrote = true,
                Wrote::TooLarge => self.counts.too_large += 1,
                Wrote::Full => break,
            }
            taken += 1;
        }
        for f in frames.drain(..taken) {
            mem.release(f);
        }
        if wrote {
            ring.notify(g);
        }
        taken
    }

    fn refill(&mut self, _mem: &mut Memory, _target: u32) {}

    fn reclaim(&mut self, _mem: &mut Memory) -> usize {
        0
    }

    fn poll_fd(&mut self) -> libc::pollfd {
        // The guest is asked to kick the send ring again, and the kick is
        // read, so that only a kick after this wakes the loop; frames it
        // added before it saw the request wake the loop at once (the loop
        // kicks itself).
        let none = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        let (Some(g), Some(ring)) = (self.mem.as_deref(), self.rings[TX].as_mut()) else { return none };
        let Some(kick) = &ring.kick else { return none };
        let fd = kick.as_raw_fd();
        drain(fd);
        ring.kicks_wanted = true;
        if ring.queue.enable_notification(g).unwrap_or(true) {
            signal(kick);
        }
        libc::pollfd { fd, events: libc::POLLIN, revents: 0 }
    }
}

/// Adds one to an eventfd (the guest's notification).
fn signal(f: &File) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: `one` is 8 readable bytes, what an eventfd write takes; the
    // fd is open (`f` owns it). A full counter (EAGAIN) already signals.
    let _ = unsafe { libc::write(f.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// Reads an eventfd's count to zero (it is non-blocking).
fn drain(fd: libc::c_int) {
    let mut b = [0u8; 8];
    // SAFETY: `b` is 8 writable bytes; the fd is an open non-blocking
    // eventfd (set by `nonblocking` when it arrived), so this does not
    // wait.
    let _ = unsafe { libc::read(fd, b.as_mut_ptr().cast(), b.len()) };
}

/// Makes an eventfd the guest sent non-blocking.
fn nonblocking(f: &File) {
    let fd = f.as_raw_fd();
    // SAFETY: fcntl on an fd `f` owns, reading then setting its status
    // flags; no memory is passed.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags >= 0 {
            libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK);
        }
    }
}
