//! A virtio-net driver over vhost-user, in this process: what a guest's NIC
//! is to a vhost-user switch port (QEMU's `-netdev vhost-user`, DPDK's
//! `net_virtio_user`), for the tests and the vhost benchmark.
//!
//! The driver's "guest memory" is a file on tmpfs it shares with the switch; its two
//! split rings (queue 0 receives, queue 1 sends) and their buffers live
//! there at fixed places, descriptor `i` of a ring always naming buffer `i`.
//! It speaks the protocol with the vhost crate's frontend and reads and
//! writes the rings with vm-memory, as the switch does, so no unsafe code is
//! needed here.
//!
//! Like a poll-mode driver it asks for no interrupts, and it kicks the send
//! ring only when the switch has not said it polls (`VRING_USED_F_NO_NOTIFY`).

use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use vhost::vhost_user::message::VhostUserProtocolFeatures;
use vhost::vhost_user::{Frontend, VhostUserFrontend};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::{Bytes, FileOffset, MmapRegion, VolatileMemory};
use vmm_sys_util::eventfd::EventFd;

/// What is told of each frame received.
type FrameSeen<'a> = dyn FnMut(&[u8]) + 'a;

/// Entries per ring.
pub const RING: u16 = 1024;
/// Bytes per buffer.
const BUF: usize = 2048;
/// The virtio-net header (VERSION_1, mergeable buffers).
const HEADER: usize = 12;
const VIRTIO_F_VERSION_1: u64 = 1 << 32;
const VIRTIO_NET_F_MRG_RXBUF: u64 = 1 << 15;
const PROTOCOL_FEATURES: u64 = 1 << 30;
const DESC_F_WRITE: u16 = 2;
const AVAIL_F_NO_INTERRUPT: u16 = 1;
const USED_F_NO_NOTIFY: u16 = 1;

/// Where ring `q`'s parts and buffers are (guest addresses).
#[derive(Clone, Copy, Debug)]
struct Layout {
    desc: u64,
    avail: u64,
    used: u64,
    bufs: u64,
}

impl Layout {
    fn of(q: u64) -> Layout {
        let base = q * 0x10_0000;
        let bufs = 0x40_0000 + q * u64::from(RING) * BUF as u64;
        Layout { desc: base, avail: base + 0x4000, used: base + 0x8000, bufs }
    }

    fn buf(&self, i: u16) -> u64 {
        self.bufs + u64::from(i) * BUF as u64
    }
}

/// One ring as the driver keeps it.
#[derive(Debug)]
struct Ring {
    at: Layout,
    /// The next avail index the driver publishes.
    avail: u16,
    /// The used index the driver has read up to.
    used: u16,
    /// Descriptors the switch does not hold.
    free: Vec<u16>,
}

/// A virtio-net device driven from this process through a switch's
/// vhost-user socket.
pub struct Driver {
    frontend: Frontend,
    region: MmapRegion<()>,
    rx: Ring,
    tx: Ring,
    kick: [EventFd; 2],
    _call: [EventFd; 2],
    /// Frames sent whose kick the switch asked for.
    pub kicks: u64,
    /// What each send buffer holds (and its descriptor says), so a frame
    /// like the last one sent from it is written only where it differs:
    /// a guest's driver writes a frame once, and rewriting unchanged bytes
    /// would make the generator the bound.
    shadow: Vec<([u8; BUF], usize, bool)>,
    /// A frame as it is built (kept, not zeroed each call).
    scratch: Vec<u8>,
    /// Receive buffers to give back (kept, not zeroed each call).
    ids: Vec<u16>,
    /// The receive buffer `break_next_rx` made read-only.
    bent_rx: Option<u16>,
    /// The shared memory's file, size and address here (for a second
    /// SET_MEM_TABLE).
    memory: (OwnedFd, u64, u64),
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Driver(rx {:?}, tx {:?})", self.rx, self.tx)
    }
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

impl Driver {
    /// Connects to `socket` (retrying for up to `within`), negotiates,
    /// shares the memory and starts both rings, the receive ring full of
    /// empty buffers.
    ///
    /// # Errors
    /// The socket does not answer, or a protocol step fails.
    pub fn connect(socket: &Path, within: Duration) -> Result<Driver, String> {
        let t = Instant::now();
        let frontend = loop {
            match Frontend::connect(socket, 2) {
                Ok(f) => break f,
                Err(e) if t.elapsed() > within => return Err(err("connect", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        Driver::start(frontend)
    }

    /// As [`Driver::connect`], but listening on `socket` for the switch to
    /// connect (a port with `socket_mode = "client"`, as QEMU's
    /// `-chardev socket,server=on` is to it).
    ///
    /// # Errors
    /// Nothing connected within `within`, or a protocol step failed.
    pub fn accept(socket: &Path, within: Duration) -> Result<Driver, String> {
        let _ = std::fs::remove_file(socket);
        let l = std::os::unix::net::UnixListener::bind(socket).map_err(|e| err("bind", e))?;
        l.set_nonblocking(true).map_err(|e| err("listen", e))?;
        let t = Instant::now();
        let stream = loop {
            match l.accept() {
                Ok((s, _)) => break s,
                Err(e) if t.elapsed() > within => return Err(err("accept", e)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        stream.set_nonblocking(false).map_err(|e| err("socket", e))?;
        Driver::start(Frontend::from_stream(stream, 2))
    }

    fn start(mut frontend: Frontend) -> Result<Driver, String> {
        let size = 0x40_0000 + 2 * RING as usize * BUF;
        let fd = memfd(size as u64)?;
        let file = fd.try_clone().map_err(|e| err("dup", e))?;
        let region = MmapRegion::from_file(FileOffset::new(File::from(file), 0), size).map_err(|e| err("mmap", e))?;
        // The frontend's address of the memory: ring addresses are given so.
        let userspace_addr = region.as_ptr() as u64;

        frontend.set_owner().map_err(|e| err("set_owner", e))?;
        let offered = frontend.get_features().map_err(|e| err("get_features", e))?;
        let wanted = VIRTIO_F_VERSION_1 | VIRTIO_NET_F_MRG_RXBUF | PROTOCOL_FEATURES;
        frontend.set_features(offered & wanted).map_err(|e| err("set_features", e))?;
        if offered & PROTOCOL_FEATURES != 0 {
            let _ = frontend.get_protocol_features().map_err(|e| err("get_protocol_features", e))?;
            frontend.set_protocol_features(VhostUserProtocolFeatures::empty()).map_err(|e| err("set_protocol_features", e))?;
        }
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: size as u64,
            userspace_addr,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
        };
        frontend.set_mem_table(&[info]).map_err(|e| err("set_mem_table", e))?;

        let new_fd = || EventFd::new(libc::EFD_NONBLOCK).map_err(|e| err("eventfd", e));
        let kick = [new_fd()?, new_fd()?];
        let call = [new_fd()?, new_fd()?];
        let mut d = Driver {
            frontend,
            region,
            rx: Ring { at: Layout::of(0), avail: 0, used: 0, free: Vec::new() },
            tx: Ring { at: Layout::of(1), avail: 0, used: 0, free: (0..RING).rev().collect() },
            kick,
            _call: call,
            kicks: 0,
            shadow: vec![([0; BUF], usize::MAX, false); usize::from(RING)],
            scratch: vec![0; BUF],
            ids: Vec::with_capacity(usize::from(RING)),
            bent_rx: None,
            memory: (fd, size as u64, userspace_addr),
        };
        for q in 0..2u16 {
            let lay = Layout::of(u64::from(q));
            let w = |e| err("ring memory", e);
            // Poll mode: no interrupts.
            d.region.as_volatile_slice().write_obj(AVAIL_F_NO_INTERRUPT.to_le(), at(lay.avail)).map_err(w)?;
            for i in 0..RING {
                // struct virtq_desc { le64 addr; le32 len; le16 flags; le16 next; }
                let desc = lay.desc + 16 * u64::from(i);
                d.region.as_volatile_slice().write_obj(lay.buf(i).to_le(), at(desc)).map_err(w)?;
                d.region.as_volatile_slice().write_obj(2048u32.to_le(), at(desc + 8)).map_err(w)?;
                let flags = if q == 0 { DESC_F_WRITE } else { 0 };
                d.region.as_volatile_slice().write_obj(flags.to_le(), at(desc + 12)).map_err(w)?;
            }
            let fe = &mut d.frontend;
            let qi = usize::from(q);
            fe.set_vring_num(qi, RING).map_err(|e| err("set_vring_num", e))?;
            fe.set_vring_base(qi, 0).map_err(|e| err("set_vring_base", e))?;
            let config = VringConfigData {
                queue_max_size: RING,
                queue_size: RING,
                flags: 0,
                desc_table_addr: userspace_addr + lay.desc,
                used_ring_addr: userspace_addr + lay.used,
                avail_ring_addr: userspace_addr + lay.avail,
                log_addr: None,
            };
            fe.set_vring_addr(qi, &config).map_err(|e| err("set_vring_addr", e))?;
            fe.set_vring_call(qi, &d._call[qi]).map_err(|e| err("set_vring_call", e))?;
            fe.set_vring_kick(qi, &d.kick[qi]).map_err(|e| err("set_vring_kick", e))?;
            if offered & PROTOCOL_FEATURES != 0 {
                fe.set_vring_enable(qi, true).map_err(|e| err("set_vring_enable", e))?;
            }
        }
        // Every receive buffer to the switch.
        let all: Vec<u16> = (0..RING).collect();
        d.post_rx(&all);
        Ok(d)
    }

    fn post_rx(&mut self, ids: &[u16]) {
        let r = &mut self.rx;
        for &i in ids {
            let slot = r.at.avail + 4 + 2 * u64::from(r.avail % RING);
            let _ = self.region.as_volatile_slice().write_obj(i.to_le(), at(slot));
            r.avail = r.avail.wrapping_add(1);
        }
        let _ = self.region.as_volatile_slice().store(r.avail.to_le(), at(r.at.avail + 2), Ordering::Release);
    }

    /// Takes back the send buffers the switch has read.
    fn reclaim_tx(&mut self) {
        let r = &mut self.tx;
        let used: u16 = self.region.as_volatile_slice().load(at(r.at.used + 2), Ordering::Acquire).map_or(r.used, u16::from_le);
        while r.used != used {
            let elem = r.at.used + 4 + 8 * u64::from(r.used % RING);
            if let Ok(id) = self.region.as_volatile_slice().read_obj::<u32>(at(elem)) {
                r.free.push(u16::try_from(u32::from_le(id)).unwrap_or(0) % RING);
            }
            r.used = r.used.wrapping_add(1);
        }
    }

    /// Sends up to `frames.len()` frames, built in place by `fill(k, buf)`
    /// (a frame of `len` bytes, the `k`th of this call); returns how many
    /// the ring had room for.
    pub fn send_with(&mut self, n: usize, len: usize, mut fill: impl FnMut(usize, &mut [u8])) -> usize {
        self.reclaim_tx();
        let mut frame = std::mem::take(&mut self.scratch);
        let len = len.min(BUF - HEADER);
        let mut sent = 0;
        while sent < n {
            let Some(i) = self.tx.free.pop() else { break };
            fill(sent, &mut frame[..len]);
            let r = &mut self.tx;
            let vs = self.region.as_volatile_slice();
            let buf = r.at.buf(i);
            let desc = r.at.desc + 16 * u64::from(i);
            let (old, old_len, bent) = &mut self.shadow[usize::from(i)];
            if *bent || *old_len == usize::MAX {
                // The whole descriptor and the header (`post_raw` may have
                // bent it; or it was never used).
                let _ = vs.write_obj(buf.to_le(), at(desc));
                let _ = vs.write_obj(0u16, at(desc + 12));
                let _ = vs.write_slice(&[0u8; HEADER], at(buf));
                *bent = false;
                *old_len = usize::MAX - 1;
            }
            if *old_len != len {
                let _ = vs.write_obj(u32::try_from(HEADER + len).unwrap_or(0).to_le(), at(desc + 8));
                let _ = vs.write_slice(&frame[..len], at(buf + HEADER as u64));
                old[..len].copy_from_slice(&frame[..len]);
                *old_len = len;
            } else if let (Some(a), Some(b)) = (
                frame[..len].iter().zip(&old[..len]).position(|(x, y)| x != y),
                frame[..len].iter().zip(&old[..len]).rposition(|(x, y)| x != y),
            ) {
                let _ = vs.write_slice(&frame[a..=b], at(buf + (HEADER + a) as u64));
                old[a..=b].copy_from_slice(&frame[a..=b]);
            }
            let slot = r.at.avail + 4 + 2 * u64::from(r.avail % RING);
            let _ = vs.write_obj(i.to_le(), at(slot));
            r.avail = r.avail.wrapping_add(1);
            sent += 1;
        }
        self.scratch = frame;
        if sent > 0 {
            let r = &self.tx;
            let _ = self.region.as_volatile_slice().store(r.avail.to_le(), at(r.at.avail + 2), Ordering::Release);
            let flags: u16 = self.region.as_volatile_slice().load(at(r.at.used), Ordering::Acquire).map_or(0, u16::from_le);
            if flags & USED_F_NO_NOTIFY == 0 {
                let _ = self.kick[1].write(1);
                self.kicks += 1;
            }
        }
        sent
    }

    /// Posts one send descriptor as given (an address outside the shared
    /// memory, a writable flag: what a broken or hostile guest does), with
    /// a kick; whether the ring had room.
    pub fn post_raw(&mut self, addr: u64, len: u32, flags: u16) -> bool {
        self.reclaim_tx();
        let Some(i) = self.tx.free.pop() else { return false };
        self.shadow[usize::from(i)].2 = true;
        let r = &mut self.tx;
        let desc = r.at.desc + 16 * u64::from(i);
        let _ = self.region.as_volatile_slice().write_obj(addr.to_le(), at(desc));
        let _ = self.region.as_volatile_slice().write_obj(len.to_le(), at(desc + 8));
        let _ = self.region.as_volatile_slice().write_obj(flags.to_le(), at(desc + 12));
        let slot = r.at.avail + 4 + 2 * u64::from(r.avail % RING);
        let _ = self.region.as_volatile_slice().write_obj(i.to_le(), at(slot));
        r.avail = r.avail.wrapping_add(1);
        let _ = self.region.as_volatile_slice().store(r.avail.to_le(), at(r.at.avail + 2), Ordering::Release);
        let _ = self.kick[1].write(1);
        true
    }

    /// Sends copies of `frame`, as many as `n` and the ring's room allow.
    pub fn send(&mut self, frame: &[u8], n: usize) -> usize {
        self.send_with(n, frame.len(), |_, b| b.copy_from_slice(frame))
    }

    /// The frames the switch wrote into the receive ring since the last
    /// call, each given to `seen` (without its header; a buffer given back
    /// empty as an empty frame); their buffers go back to the switch.
    /// Returns how many buffers came back.
    pub fn receive(&mut self, mut seen: impl FnMut(&[u8])) -> usize {
        self.take_used(Some(&mut seen))
    }

    /// Frames received since the last call, counted, not looked at.
    pub fn drain(&mut self) -> usize {
        self.take_used(None)
    }

    fn take_used(&mut self, mut seen: Option<&mut FrameSeen<'_>>) -> usize {
        let r = &mut self.rx;
        let vs = self.region.as_volatile_slice();
        let used: u16 = vs.load(at(r.at.used + 2), Ordering::Acquire).map_or(r.used, u16::from_le);
        let mut ids = std::mem::take(&mut self.ids);
        ids.clear();
        while r.used != used {
            let elem = r.at.used + 4 + 8 * u64::from(r.used % RING);
            let id = u16::try_from(vs.read_obj::<u32>(at(elem)).map_or(0, u32::from_le)).unwrap_or(0) % RING;
            if let Some(seen) = seen.as_mut() {
                let len = vs.read_obj::<u32>(at(elem + 4)).map_or(0, u32::from_le);
                let body = (len as usize).saturating_sub(HEADER).min(self.scratch.len());
                if vs.read_slice(&mut self.scratch[..body], at(r.at.buf(id) + HEADER as u64)).is_ok() {
                    seen(&self.scratch[..body]);
                }
            }
            if self.bent_rx == Some(id) {
                let _ = vs.write_obj(DESC_F_WRITE.to_le(), at(r.at.desc + 16 * u64::from(id) + 12));
                self.bent_rx = None;
            }
            ids.push(id);
            r.used = r.used.wrapping_add(1);
        }
        let n = ids.len();
        if n > 0 {
            self.post_rx(&ids);
        }
        self.ids = ids;
        n
    }

    /// Makes the next receive buffer the switch will take read-only (a
    /// broken guest's): it must give it back empty and go on. The buffer
    /// is mended when it comes back.
    pub fn break_next_rx(&mut self) {
        let r = &self.rx;
        let vs = self.region.as_volatile_slice();
        let slot = r.at.avail + 4 + 2 * u64::from(r.used % RING);
        let id = vs.read_obj::<u16>(at(slot)).map_or(0, u16::from_le) % RING;
        let _ = vs.write_obj(0u16, at(r.at.desc + 16 * u64::from(id) + 12));
        self.bent_rx = Some(id);
    }

    /// Sends the memory table again while the rings run, as a VMM does
    /// when its guest's memory changes: the switch must carry on where the
    /// rings were.
    ///
    /// # Errors
    /// The switch refused it.
    pub fn resend_memory(&mut self) -> Result<(), String> {
        let (fd, size, addr) = &self.memory;
        let info = VhostUserMemoryRegionInfo {
            guest_phys_addr: 0,
            memory_size: *size,
            userspace_addr: *addr,
            mmap_offset: 0,
            mmap_handle: fd.as_raw_fd(),
        };
        self.frontend.set_mem_table(&[info]).map(|_| ()).map_err(|e| err("set_mem_table", e))
    }

    /// Asks the switch for the send ring's position, as a VMM does when
    /// its guest stops (the switch gives the ring back).
    ///
    /// # Errors
    /// The switch did not answer.
    pub fn stop_tx(&mut self) -> Result<u32, String> {
        self.frontend.get_vring_base(1).map_err(|e| err("get_vring_base", e))
    }
}

/// A guest address as an offset in the one region (which starts at 0).
fn at(addr: u64) -> usize {
    usize::try_from(addr).unwrap_or(usize::MAX)
}

/// Shared memory of `size` bytes: an unlinked file on tmpfs (`/dev/shm`),
/// which the switch maps through the descriptor it is sent.
/// Where there is no `/dev/shm` (or no room in it), a file in the temporary
/// folder serves as well: the switch maps whatever file it is sent.
fn memfd(size: u64) -> Result<OwnedFd, String> {
    let f = tempfile::tempfile_in("/dev/shm").or_else(|_| tempfile::tempfile()).map_err(|e| err("a file for the shared memory", e))?;
    f.set_len(size).map_err(|e| err("ftruncate", e))?;
    Ok(OwnedFd::from(f))
}
