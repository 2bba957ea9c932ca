//! The control half of a vhost-user port: the protocol on the port's unix
//! socket, on a thread of its own (one per port; it sleeps in `poll` but
//! for the few messages a guest's start, stop and memory changes send).
//!
//! The guest's memory is mapped here and handed to the loop; a ring is
//! handed over once it is started (kicked) and enabled, with everything it
//! needs, and asked back (with where the guest's next buffer is) when the
//! guest stops it.
//!
//! The messages are read here, not by the vhost crate's request handler:
//! that handler refuses SET_VRING_ENABLE until SET_FEATURES has
//! acknowledged `VHOST_USER_F_PROTOCOL_FEATURES`, and QEMU (7.2, Debian
//! 12's) enables a vhost-user NIC's rings at start-up, before the guest's
//! driver has set any feature (the handler's error closes the connection).
//! Like DPDK's vhost library, the switch takes the messages in the order
//! QEMU sends them. Replies and acknowledgements (REPLY_ACK) are as the
//! protocol says.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::sync::mpsc::SyncSender;
use std::time::Duration;

use tracing::{info, warn};
use virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::virtio_net::VIRTIO_NET_F_MRG_RXBUF;
use vm_memory::{FileOffset, GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::split::Split;
use super::{Connection, GuestMem, Shared, Update, nonblocking};
use crate::port::PortError;

/// How long the control thread waits for the loop to give a ring back.
const STOP_WAIT: Duration = Duration::from_secs(2);
/// The largest ring the switch takes (virtio's limit).
const MAX_RING: u16 = 32_768;

/// `VHOST_USER_F_PROTOCOL_FEATURES`: the frontend may ask for the
/// protocol's extensions (and rings start disabled until enabled).
const VHOST_USER_F_PROTOCOL_FEATURES: u64 = 1 << 30;
/// `VHOST_USER_PROTOCOL_F_REPLY_ACK`: the frontend may ask for an answer to
/// any message.
const PROTOCOL_F_REPLY_ACK: u64 = 1 << 3;
/// The protocol extensions the switch offers.
const PROTOCOL_FEATURES: u64 = PROTOCOL_F_REPLY_ACK;

/// The virtio features the switch offers.
/// (No indirect descriptors: a frame needs none, and a chain stays in the
/// ring's own table.)
pub const FEATURES: u64 = (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_NET_F_MRG_RXBUF) | VHOST_USER_F_PROTOCOL_FEATURES;

/// Starts the control thread of the port `port` on `socket`: listening on
/// it (made anew; a stale one is removed), or connecting to it. The thread
/// ends by itself once `shared.stop` is set.
///
/// # Errors
/// A listening socket cannot be made.
pub(super) fn start(
    socket: &Path,
    client: bool,
    port: &str,
    updates: SyncSender<Update>,
    shared: Arc<Shared>,
) -> std::result::Result<(), PortError> {
    let listener = if client {
        None
    } else {
        let fail = |e: std::io::Error| PortError::Vhost { socket: socket.display().to_string(), what: e.to_string() };
        // A socket left by an earlier run is replaced; another kind of file
        // is not.
        if std::fs::symlink_metadata(socket).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type())) {
            let _ = std::fs::remove_file(socket);
        }
        let l = UnixListener::bind(socket).map_err(fail)?;
        l.set_nonblocking(true).map_err(fail)?;
        Some(l)
    };
    // The socket file this listener made (by its inode), to remove at the
    // end.
    let made = listener.as_ref().and_then(|_| std::fs::symlink_metadata(socket).ok()).map(|m| std::os::unix::fs::MetadataExt::ino(&m));
    let (socket, port) = (socket.to_path_buf(), port.to_owned());
    std::thread::Builder::new()
        .name(format!("vhost-{port}"))
        .spawn(move || run(&socket, listener, made, &port, &updates, &shared))
        .map(drop)
        .map_err(|e| PortError::Sys { call: "spawning a vhost-user control thread", what: e.to_string() })
}

fn run(socket: &Path, listener: Option<UnixListener>, made: Option<u64>, port: &str, updates: &SyncSender<Update>, shared: &Arc<Shared>) {
    // Started by a poll loop: off its core, with the switch's other threads.
    crate::port::xdp::sys::join_helpers();
    let where_ = socket.display();
    let mut said_waiting = false;
    while !shared.stop.is_set() {
        let stream = match &listener {
            Some(l) => match l.accept() {
                Ok((s, _)) => Some(s),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => None,
                Err(e) => {
                    warn!(port, "{port}: vhost-user socket {where_}: accept: {e}");
                    None
                }
            },
            None => match UnixStream::connect(socket) {
                Ok(s) => Some(s),
                Err(e) => {
                    if !said_waiting {
                        info!(port, "{port}: vhost-user socket {where_}: cannot connect yet ({e}); retrying");
                        said_waiting = true;
                    }
                    None
                }
            },
        };
        let Some(stream) = stream else {
            match &listener {
                Some(l) => {
                    shared.stop.wait_readable(l.as_raw_fd());
                }
                None => std::thread::sleep(Duration::from_millis(200)),
            }
            continue;
        };
        said_waiting = false;
        info!(port, "{port}: vhost-user guest connected on {where_}");
        serve(stream, port, updates, shared);
        let _ = updates.send(Update::Reset);
        shared.connection.store(Connection::Waiting as u8, Ordering::Relaxed);
        info!(port, "{port}: vhost-user guest on {where_} went away; waiting for it");
    }
    // The socket file goes with the listener, unless another listener
    // (the port made again on the same path) has replaced it meanwhile.
    if let Some(ours) = made
        && std::fs::symlink_metadata(socket).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == ours)
    {
        let _ = std::fs::remove_file(socket);
    }
}

fn serve(mut stream: UnixStream, port: &str, updates: &SyncSender<Update>, shared: &Arc<Shared>) {
    let _ = stream.set_nonblocking(false);
    shared.connection.store(Connection::Connected as u8, Ordering::Relaxed);
    let mut device = Device::new(port, updates.clone(), Arc::clone(shared));
    while !shared.stop.is_set() {
        if !shared.stop.wait_readable(stream.as_raw_fd()) {
            continue;
        }
        let msg = match super::wire::read(&mut stream) {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(e) => {
                warn!(port, "{port}: vhost-user: {e}; closing the connection");
                break;
            }
        };
        let code = msg.code;
        match device.handle(msg) {
            Ok(reply) => {
                if let Some(r) = reply
                    && let Err(e) = super::wire::reply(&mut stream, code, &r)
                {
                    warn!(port, "{port}: vhost-user: replying: {e}; closing the connection");
                    break;
                }
            }
            Err(e) => {
                warn!(port, "{port}: vhost-user: {e}; closing the connection");
                break;
            }
        }
    }
    device.stop_all();
}

/// One ring as the guest described it.
#[derive(Debug, Default)]
struct Vring {
    size: u16,
    base: u16,
    desc: u64,
    avail: u64,
    used: u64,
    kick: Option<File>,
    call: Option<File>,
    /// Kicked (SET_VRING_KICK) and not stopped since.
    started: bool,
    enabled: bool,
    /// The loop has it.
    running: bool,
}

/// A guest's device, as the protocol builds it.
struct Device {
    port: String,
    updates: SyncSender<Update>,
    shared: Arc<Shared>,
    protocol: bool,
    /// REPLY_ACK negotiated: messages that ask for it are answered.
    reply_ack: bool,
    mem: Option<Arc<GuestMem>>,
    /// (the frontend's address, size, guest physical address) of each
    /// memory region: ring addresses come in the frontend's addresses.
    mappings: Vec<(u64, u64, u64)>,
    vrings: [Vring; 2],
}

impl Device {
    fn new(port: &str, updates: SyncSender<Update>, shared: Arc<Shared>) -> Device {
        Device {
            port: port.to_owned(),
            updates,
            shared,
            protocol: false,
            reply_ack: false,
            mem: None,
            mappings: Vec::new(),
            vrings: Default::default(),
        }
    }

    fn vring(&mut self, index: u32) -> Result<&mut Vring, String> {
        self.vrings.get_mut(index as usize).ok_or(format!("no ring {index} (one queue pair: 0 and 1)"))
    }

    fn to_guest(&self, frontend: u64) -> Result<u64, String> {
        self.mappings
            .iter()
            .find(|(va, size, _)| frontend >= *va && frontend - va < *size)
            .map(|(va, _, gpa)| frontend - va + gpa)
            .ok_or(format!("ring address {frontend:#x} is in no memory region"))
    }

    /// Hands ring `i` to the loop if it may run and does not.
    fn maybe_start(&mut self, i: usize) {
        let Some(mem) = self.mem.clone() else { return };
        let v = &self.vrings[i];
        if v.running || !v.started || !v.enabled || v.size == 0 {
            return;
        }
        let Some(ring) = Split::new(mem, v.size, v.desc, v.avail, v.used, v.base) else {
            warn!(port = %self.port, "{}: vhost-user ring {i} is not usable (its addresses are outside the guest's memory, or misaligned); not started", self.port);
            return;
        };
        let dup = |f: &Option<File>| f.as_ref().and_then(|f| f.try_clone().ok());
        let (call, kick) = (dup(&v.call), dup(&v.kick));
        if let Some(k) = &kick {
            nonblocking(k);
        }
        if self.updates.send(Update::Start { index: i, ring: Box::new(ring), call, kick }).is_ok() {
            self.vrings[i].running = true;
        }
        self.publish_state();
    }

    /// Takes ring `i` back from the loop, if it has it.
    fn stop(&mut self, i: usize) {
        if !self.vrings[i].running {
            return;
        }
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.vrings[i].running = false;
        if self.updates.send(Update::Stop { index: i, reply: tx }).is_ok() {
            match rx.recv_timeout(STOP_WAIT) {
                Ok(next) => self.vrings[i].base = next,
                Err(_) => warn!(port = %self.port, "{}: the poll loop did not give vhost-user ring {i} back", self.port),
            }
        }
        self.publish_state();
    }

    fn stop_all(&mut self) {
        for i in 0..self.vrings.len() {
            self.stop(i);
        }
    }

    fn publish_state(&self) {
        let c = if self.vrings.iter().all(|v| v.running) { Connection::Running } else { Connection::Connected };
        self.shared.connection.store(c as u8, Ordering::Relaxed);
    }
}

impl Device {
    /// Takes one message; what to reply, if anything.
    fn handle(&mut self, m: super::wire::Message) -> Result<Option<Vec<u8>>, String> {
        use super::wire::*;
        let ack = m.needs_reply();
        let r = match m.code {
            GET_FEATURES => return Ok(Some(FEATURES.to_le_bytes().to_vec())),
            GET_PROTOCOL_FEATURES => return Ok(Some(PROTOCOL_FEATURES.to_le_bytes().to_vec())),
            GET_QUEUE_NUM => return Ok(Some(2u64.to_le_bytes().to_vec())),
            GET_VRING_BASE => {
                let (index, _) = m.vring_state()?;
                let base = self.get_vring_base(index)?;
                let mut out = index.to_le_bytes().to_vec();
                out.extend_from_slice(&u32::from(base).to_le_bytes());
                return Ok(Some(out));
            }
            SET_OWNER => Ok(()),
            RESET_OWNER => {
                self.reset();
                Ok(())
            }
            SET_FEATURES => self.set_features(m.u64()?),
            SET_PROTOCOL_FEATURES => {
                let f = m.u64()?;
                self.reply_ack = f & PROTOCOL_F_REPLY_ACK != 0;
                if f & !PROTOCOL_FEATURES != 0 { Err(format!("protocol features {f:#x} were not offered")) } else { Ok(()) }
            }
            SET_MEM_TABLE => {
                let regions = m.regions()?;
                self.set_mem_table(&regions, m.files)
            }
            SET_VRING_NUM => {
                let (i, n) = m.vring_state()?;
                self.set_vring_num(i, n)
            }
            SET_VRING_ADDR => {
                let (i, desc, used, avail) = m.vring_addr()?;
                self.set_vring_addr(i, desc, used, avail)
            }
            SET_VRING_BASE => {
                let (i, b) = m.vring_state()?;
                self.set_vring_base(i, b)
            }
            SET_VRING_KICK | SET_VRING_CALL | SET_VRING_ERR => {
                let code = m.code;
                let (i, file) = m.vring_fd()?;
                match code {
                    SET_VRING_KICK => self.set_vring_kick(i, file),
                    SET_VRING_CALL => self.set_vring_call(i, file),
                    _ => self.vring(i).map(|_| ()),
                }
            }
            SET_VRING_ENABLE => {
                let (i, on) = m.vring_state()?;
                self.set_vring_enable(i, on != 0)
            }
            other => Err(format!("request {other} is not supported")),
        };
        match (r, ack && self.reply_ack) {
            (Ok(()), true) => Ok(Some(0u64.to_le_bytes().to_vec())),
            (Ok(()), false) => Ok(None),
            // A failure the frontend asked to hear of is told, and the
            // connection goes on; else it ends.
            (Err(e), true) => {
                warn!(port = %self.port, "{}: vhost-user: {e}", self.port);
                Ok(Some(1u64.to_le_bytes().to_vec()))
            }
            (Err(e), false) => Err(e),
        }
    }

    fn reset(&mut self) {
        self.stop_all();
        for v in &mut self.vrings {
            *v = Vring::default();
        }
    }

    fn set_features(&mut self, features: u64) -> Result<(), String> {
        if features & !FEATURES != 0 {
            return Err(format!("features {features:#x} were not offered"));
        }
        self.protocol = features & VHOST_USER_F_PROTOCOL_FEATURES != 0;
        let mergeable = features & (1 << VIRTIO_NET_F_MRG_RXBUF) != 0;
        let header = if mergeable || features & (1 << VIRTIO_F_VERSION_1) != 0 { 12 } else { 10 };
        let _ = self.updates.send(Update::Features { header, mergeable });
        Ok(())
    }

    fn set_mem_table(&mut self, regions: &[super::wire::Region], files: Vec<File>) -> Result<(), String> {
        if files.len() != regions.len() {
            return Err(format!("{} memory regions came with {} file descriptors", regions.len(), files.len()));
        }
        let mut mapped = Vec::new();
        let mut mappings = Vec::new();
        for (r, f) in regions.iter().zip(files) {
            let size = usize::try_from(r.size).map_err(|_| "a memory region too large".to_owned())?;
            let m = MmapRegion::from_file(FileOffset::new(f, r.offset), size).map_err(|e| format!("mapping guest memory: {e}"))?;
            mapped.push(GuestRegionMmap::new(m, GuestAddress(r.guest)).ok_or("a guest memory region that wraps")?);
            mappings.push((r.frontend, r.size, r.guest));
        }
        let mem = GuestMemoryMmap::from_regions(mapped).map_err(|e| format!("guest memory: {e}"))?;
        self.mappings = mappings;
        let mem = Arc::new(mem);
        self.mem = Some(Arc::clone(&mem));
        // A ring running on the old table is swapped for the same ring on
        // the new one (a guest's memory grew, say), which the loop resumes
        // where the old one was; one the new table cannot hold is taken
        // back. The others may start now.
        for i in 0..self.vrings.len() {
            let v = &self.vrings[i];
            if v.running {
                match Split::new(Arc::clone(&mem), v.size, v.desc, v.avail, v.used, v.base) {
                    Some(ring) => {
                        let _ = self.updates.send(Update::Remap { index: i, ring: Box::new(ring) });
                    }
                    None => self.stop(i),
                }
            }
            self.maybe_start(i);
        }
        Ok(())
    }

    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<(), String> {
        let n = u16::try_from(num).ok().filter(|n| n.is_power_of_two() && *n <= MAX_RING).ok_or(format!("ring size {num}"))?;
        self.vring(index)?.size = n;
        Ok(())
    }

    fn set_vring_addr(&mut self, index: u32, descriptor: u64, used: u64, available: u64) -> Result<(), String> {
        let (d, u, a) = (self.to_guest(descriptor)?, self.to_guest(used)?, self.to_guest(available)?);
        let v = self.vring(index)?;
        (v.desc, v.used, v.avail) = (d, u, a);
        Ok(())
    }

    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<(), String> {
        self.vring(index)?.base = u16::try_from(base).map_err(|_| format!("ring base {base}"))?;
        Ok(())
    }

    fn get_vring_base(&mut self, index: u32) -> Result<u16, String> {
        self.vring(index)?;
        let i = index as usize;
        self.stop(i);
        let protocol = self.protocol;
        let v = &mut self.vrings[i];
        v.started = false;
        if !protocol {
            v.enabled = false;
        }
        v.kick = None;
        Ok(v.base)
    }

    fn set_vring_kick(&mut self, index: u32, fd: Option<File>) -> Result<(), String> {
        let protocol = self.protocol;
        let v = self.vring(index)?;
        v.kick = fd;
        v.started = true;
        if !protocol {
            v.enabled = true;
        }
        self.maybe_start(index as usize);
        Ok(())
    }

    fn set_vring_call(&mut self, index: u32, fd: Option<File>) -> Result<(), String> {
        let v = self.vring(index)?;
        let dup = fd.as_ref().and_then(|f| f.try_clone().ok());
        v.call = fd;
        if v.running {
            let _ = self.updates.send(Update::Call { index: index as usize, call: dup });
        }
        Ok(())
    }

    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<(), String> {
        self.vring(index)?.enabled = enable;
        if enable {
            self.maybe_start(index as usize);
        } else {
            self.stop(index as usize);
        }
        Ok(())
    }
}
