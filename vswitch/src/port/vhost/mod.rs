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
//! virtio-net as negotiated here: `VERSION_1`, mergeable receive buffers;
//! no indirect descriptors, no checksum or segmentation offloads (the guest
//! sends whole, checksummed frames no larger than an MTU), one queue pair.
#![allow(unsafe_code, reason = "eventfds (fcntl, read, write) are libc calls; each says why it holds")]

pub mod control;
mod split;
mod wire;

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU8;
use std::sync::mpsc::{Receiver, SyncSender, TryRecvError};
use std::time::Duration;

use vm_memory::GuestMemoryMmap;

use self::split::{Access, ChainError, Desc, Head, Split};

use super::Rings;
use super::halt::Halt;
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
pub(in crate::port::vhost) enum Update {
    /// The virtio-net header's length and whether receive buffers merge.
    Features { header: usize, mergeable: bool },
    /// A ring, started: the loop owns it from here.
    Start { index: usize, ring: Box<Split>, call: Option<File>, kick: Option<File> },
    /// The ring on a new memory table: the loop swaps it in where the old
    /// one was, with nothing in between.
    Remap { index: usize, ring: Box<Split> },
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

/// What the two halves share: the control thread's stop and the
/// connection's state.
#[derive(Debug)]
pub struct Shared {
    /// Set when the port goes: the control thread, which waits on it with
    /// its socket, sleeps until the guest writes or the port goes.
    pub stop: Halt,
    pub connection: AtomicU8,
}

impl Default for Shared {
    fn default() -> Shared {
        Shared { stop: Halt::new("a vhost-user port's control thread's stop", Duration::from_millis(50)), connection: AtomicU8::new(0) }
    }
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
    split: Box<Split>,
    call: Option<File>,
    kick: Option<File>,
    /// The guest was asked to kick (the loop is about to sleep); else it
    /// is told not to (`VRING_USED_F_NO_NOTIFY`): a busy loop polls, and a
    /// kick costs a VM an exit.
    kicks_wanted: bool,
}

impl Ring {
    /// Publishes the used entries, if any, and tells the guest, if it
    /// asked to be told.
    fn publish(&mut self) {
        if self.split.publish()
            && let Some(call) = &self.call
            && self.split.wants_interrupt()
        {
            signal(call);
        }
    }
}

/// Chains taken from the guest's send ring at once (the loop's batch).
const RX_BATCH: usize = 64;

/// Descriptors one chain may have (a frame and its header in as many
/// pieces).
const MAX_CHAIN: usize = 16;

/// The loop's half of a vhost-user port.
#[derive(Debug)]
pub struct VhostUser {
    /// The socket's path, as status and metrics name the port's link.
    label: String,
    client: bool,
    updates: Receiver<Update>,
    shared: Arc<Shared>,
    header: usize,
    mergeable: bool,
    rings: [Option<Ring>; 2],
    /// One frame as it is copied out of the guest.
    scratch: Box<[u8]>,
    pub counts: RingCounts,
}

impl Drop for VhostUser {
    fn drop(&mut self) {
        // The control thread wakes and ends; the loop does not wait for it.
        self.shared.stop.set();
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
        control::start(&socket, client, port, tx, Arc::clone(&shared))?;
        Ok(VhostUser {
            label: socket.display().to_string(),
            client,
            updates: rx,
            shared,
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

    pub fn client(&self) -> bool {
        self.client
    }

    /// What the control thread shares: the connection's state.
    pub fn shared(&self) -> Arc<Shared> {
        Arc::clone(&self.shared)
    }

    /// Takes what the control half sent since the last call.
    fn apply_updates(&mut self) {
        loop {
            let u = match self.updates.try_recv() {
                Ok(u) => u,
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return,
            };
            match u {
                Update::Features { header, mergeable } => {
                    self.header = header;
                    self.mergeable = mergeable;
                }
                Update::Start { index, mut ring, call, kick } => {
                    if let Some(slot) = self.rings.get_mut(index) {
                        ring.set_kicks(false);
                        *slot = Some(Ring { split: ring, call, kick, kicks_wanted: false });
                    }
                }
                Update::Remap { index, mut ring } => {
                    if let Some(Some(r)) = self.rings.get_mut(index) {
                        ring.resume(&r.split);
                        ring.set_kicks(r.kicks_wanted);
                        r.split = ring;
                    }
                }
                Update::Call { index, call } => {
                    if let Some(Some(r)) = self.rings.get_mut(index) {
                        r.call = call;
                    }
                }
                Update::Stop { index, reply } => {
                    let next = self.rings.get_mut(index).and_then(Option::take).map_or(0, |r| r.split.next_avail());
                    let _ = reply.try_send(next);
                }
                Update::Reset => self.rings = [None, None],
            }
        }
    }

    /// Copies the frame of chain `head` the guest sent into `scratch`,
    /// without its virtio-net header; its length, or what was wrong.
    fn read_chain(ring: &Split, head: u16, header: usize, scratch: &mut [u8]) -> Result<usize, Bad> {
        let mut descs = [Desc { addr: 0, len: 0, write: false }; MAX_CHAIN];
        let n = ring.chain(head, &mut descs).map_err(|e| if e == ChainError::TooLong { Bad::TooLarge } else { Bad::Malformed })?;
        let mut skip = header;
        let mut len = 0usize;
        for d in &descs[..n] {
            if d.write {
                return Err(Bad::Malformed);
            }
            let mut at = d.addr;
            let mut n = d.len as usize;
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
            if !ring.read(at, &mut scratch[len..end]) {
                return Err(Bad::Malformed);
            }
            len = end;
        }
        Ok(len)
    }

    /// Writes one frame (with its header) into the guest's receive
    /// buffers: one buffer, or with mergeable buffers as many as it needs.
    /// The buffers are pushed to the used ring, for the caller to publish
    /// once (so the guest never sees part of a frame).
    fn write_frame(ring: &mut Split, header: usize, mergeable: bool, frame: &[u8]) -> Wrote {
        let total = header + frame.len();
        let mut used: [(u16, u32); MAX_BUFFERS] = [(0, 0); MAX_BUFFERS];
        let mut buffers: u16 = 0;
        let mut done = 0usize;
        let mut chain = [Desc { addr: 0, len: 0, write: false }; MAX_CHAIN];
        // Where the header's num_buffers field landed, byte by byte.
        let mut count_at: [Option<u64>; 2] = [None, None];
        while done < total {
            if usize::from(buffers) == MAX_BUFFERS || (buffers == 1 && !mergeable) {
                ring.unpop(buffers);
                return Wrote::TooLarge;
            }
            let Some(head) = ring.pop() else {
                ring.unpop(buffers);
                return Wrote::Full;
            };
            // What of the frame this buffer took (nothing from a broken
            // chain).
            let mut here = 0u32;
            let descs = match ring.chain(head, &mut chain) {
                Ok(n) => &chain[..n],
                Err(_) => &[][..],
            };
            for d in descs.iter().take_while(|d| d.write) {
                let (mut at, mut room) = (d.addr, d.len as usize);
                while room > 0 && done < total {
                    // The header first, then the frame.
                    let (src, off) = if done < header { (&HEADER[..header], done) } else { (frame, done - header) };
                    let k = room.min(src.len() - off);
                    if !ring.write(at, &src[off..off + k]) {
                        break;
                    }
                    for (j, slot) in count_at.iter_mut().enumerate() {
                        let b = 10 + j;
                        if header == 12 && done <= b && b < done + k {
                            *slot = Some(at + (b - done) as u64);
                        }
                    }
                    done += k;
                    here = here.saturating_add(u32::try_from(k).unwrap_or(u32::MAX));
                    room -= k;
                    at += k as u64;
                }
            }
            if here == 0 {
                // A buffer that takes none of the frame (a broken chain, no
                // writable descriptor, outside the guest's memory) goes back
                // empty, with the frame's other buffers (the ring cannot be
                // wound back past a used one), and the frame is dropped: as
                // on the batch's one-descriptor path.
                for &(h, _) in &used[..usize::from(buffers)] {
                    ring.push_used(h, 0);
                }
                ring.push_used(head, 0);
                return Wrote::Broken;
            }
            used[usize::from(buffers)] = (head, here);
            buffers += 1;
        }
        if header == 12 && buffers > 1 {
            for (slot, b) in count_at.iter().zip(buffers.to_le_bytes()) {
                if let Some(at) = slot {
                    ring.write(*at, &[b]);
                }
            }
        }
        for &(head, len) in &used[..usize::from(buffers)] {
            ring.push_used(head, len);
        }
        Wrote::Done
    }
}

/// The virtio-net header of every frame the switch writes: no checksum or
/// segmentation work for the guest, one buffer (mergeable buffers set the
/// count when there are more).
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
    /// A buffer for the frame was broken: the frame's buffers went back
    /// empty and the frame is dropped.
    Broken,
}

impl Rings for VhostUser {
    fn receive(&mut self, mem: &mut Memory, out: &mut Vec<Frame>, max: usize) -> usize {
        self.apply_updates();
        let Some(ring) = self.rings[TX].as_mut() else { return 0 };
        if ring.kicks_wanted {
            ring.kicks_wanted = false;
            ring.split.set_kicks(false);
        }
        if ring.split.refresh() == 0 {
            return 0;
        }
        // First the heads and their first descriptors (independent loads,
        // whose misses overlap), each buffer's load started; then the
        // copies, one per frame.
        let mut heads = [Head::default(); RX_BATCH];
        let taken = ring.split.take_batch(&mut heads[..max.min(RX_BATCH)], self.header as u64, Access::Read);
        let mut n = 0;
        for &Head { head, addr, len: dlen, flags } in &heads[..taken] {
            // The common case, one read-only descriptor holding a frame of
            // a size a frame takes: from the guest straight into a free
            // frame. Not made, the frame is counted as the general path
            // below would count it (outside the guest's memory: malformed;
            // else no frame was free), without reading it to find out.
            if Split::simple(flags)
                && let Some(b) = (dlen as usize).checked_sub(self.header).filter(|b| (14..=FRAME_SIZE as usize).contains(b))
                && let Some(at) = addr.checked_add(self.header as u64)
            {
                ring.split.push_used(head, 0);
                match mem.fill_in(b, |dst| ring.split.read(at, dst)) {
                    Some(f) => {
                        out.push(f);
                        n += 1;
                    }
                    None if ring.split.holds(at, b) => self.counts.no_frame += 1,
                    None => self.counts.malformed += 1,
                }
                continue;
            }
            let read = if Split::simple(flags) {
                // One read-only descriptor: the header, then the frame.
                let body = (dlen as usize).checked_sub(self.header).ok_or(Bad::Malformed);
                body.and_then(|b| {
                    let dst = self.scratch.get_mut(..b).ok_or(Bad::TooLarge)?;
                    let at = addr.checked_add(self.header as u64).ok_or(Bad::Malformed)?;
                    if ring.split.read(at, dst) { Ok(b) } else { Err(Bad::Malformed) }
                })
            } else {
                Self::read_chain(&ring.split, head, self.header, &mut self.scratch)
            };
            ring.split.push_used(head, 0);
            let len = match read {
                Ok(len) if (14..=FRAME_SIZE as usize).contains(&len) => len,
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
        ring.publish();
        n
    }

    fn transmit(&mut self, mem: &mut Memory, frames: &mut Vec<Frame>) -> usize {
        let Some(ring) = self.rings[RX].as_mut() else { return 0 };
        if frames.is_empty() {
            return 0;
        }
        ring.split.refresh();
        // First the guest's buffers for the batch (their descriptors read
        // together, each buffer's line requested), then the copies; a
        // frame whose buffer is not one writable descriptor large enough
        // takes the general path (the buffers from it on are put back).
        let mut bufs = [Head::default(); RX_BATCH];
        let got = ring.split.take_batch(&mut bufs[..frames.len().min(RX_BATCH)], 0, Access::Write);
        let mut taken = 0;
        for &Head { head, addr, len: room, flags } in &bufs[..got] {
            let data = mem.data(&frames[taken]);
            let need = self.header + data.len();
            if !Split::simple_writable(flags) || (room as usize) < need {
                ring.split.unpop(u16::try_from(got - taken).unwrap_or(0));
                break;
            }
            let body = addr.checked_add(self.header as u64);
            if ring.split.write(addr, &HEADER[..self.header]) && body.is_some_and(|at| ring.split.write(at, data)) {
                ring.split.push_used(head, u32::try_from(need).unwrap_or(0));
            } else {
                // Outside the guest's memory: the buffer goes back empty.
                ring.split.push_used(head, 0);
                self.counts.malformed += 1;
            }
            taken += 1;
        }
        for f in frames[taken..].iter() {
            match Self::write_frame(&mut ring.split, self.header, self.mergeable, mem.data(f)) {
                Wrote::Done => {}
                Wrote::TooLarge => self.counts.too_large += 1,
                Wrote::Broken => self.counts.malformed += 1,
                Wrote::Full => break,
            }
            taken += 1;
        }
        for f in frames.drain(..taken) {
            mem.release(f);
        }
        // Frames written, and broken buffers given back empty.
        ring.publish();
        taken
    }

    fn refill(&mut self, _mem: &mut Memory, _target: u32) {}

    fn reclaim(&mut self, _mem: &mut Memory) -> usize {
        0
    }

    fn poll_fd(&mut self) -> libc::pollfd {
        // The guest is asked to kick the send ring again, and the kick is
        // read, so that only a kick after this wakes the loop; chains it
        // posted before it saw the request wake the loop at once (the loop
        // kicks itself).
        let none = libc::pollfd { fd: -1, events: libc::POLLIN, revents: 0 };
        let Some(ring) = self.rings[TX].as_mut() else { return none };
        let Some(kick) = &ring.kick else { return none };
        let fd = kick.as_raw_fd();
        drain(fd);
        ring.kicks_wanted = true;
        if ring.split.set_kicks(true) {
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
