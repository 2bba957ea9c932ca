//! A poll loop's sockets: opening those it should have (its share of the
//! uplink's queues, its ports' queues), closing those of ports that went
//! away or whose interface was deleted, and saying which interfaces are
//! down and why.

use std::sync::Arc;

use sgswitch_config::{FastPath, Host};
use tracing::{info, warn};

use super::stats::{LinkState, SocketStats};
use crate::datapath::plan::Plan;
use crate::datapath::stats::Counter;
use crate::datapath::{Owner, Source};
use crate::port::vhost::VhostUser;
use crate::port::xdp::{BindOptions, BusyPolled, Frame, Memory, Socket, sys};
use crate::port::{PortError, Rings};

/// Where frames held by the pipeline (fragments waiting for their first)
/// wait, by frame number: the pipeline carries only the number.
#[derive(Debug)]
pub struct Held(Vec<Option<Frame>>);

impl Held {
    /// Room for every frame of a UMEM of `frames` frames.
    pub fn new(frames: usize) -> Held {
        Held((0..frames).map(|_| None).collect())
    }

    /// Keeps `f` until the pipeline releases it (a frame of the same
    /// number held before goes back to `mem`).
    pub fn keep(&mut self, f: Frame, mem: &mut Memory) {
        match self.0.get_mut(f.number() as usize) {
            Some(slot) => {
                if let Some(old) = slot.replace(f) {
                    mem.release(old);
                }
            }
            None => mem.release(f),
        }
    }

    /// The frame of number `n`, taken back.
    pub fn take(&mut self, n: u32) -> Option<Frame> {
        self.0.get_mut(n as usize).and_then(Option::take)
    }

    /// Gives every held frame back to `mem` (the pipeline forgot them).
    pub fn release_all(&mut self, mem: &mut Memory) {
        for f in self.0.iter_mut().filter_map(Option::take) {
            mem.release(f);
        }
    }

    /// Forgets every held frame: they were of a UMEM that is gone.
    pub fn clear(&mut self) {
        self.0.iter_mut().for_each(|f| *f = None);
    }
}

/// Free frames kept back from the fill rings for copies (floods, frames
/// handed over by other loops): a loop takes at most a batch of them an
/// iteration, and sends them before the next.
pub const KEEP_FOR_COPIES: usize = 256;

/// Frames a new socket's fill ring gets when it is opened.
const FIRST_FILL: u32 = 256;

/// How a port's frames come and go: an AF_XDP socket on an interface's
/// queue, or a vhost-user guest's rings.
#[derive(Debug)]
pub enum Link {
    Xdp(Socket),
    Vhost(VhostUser),
}

impl Link {
    /// The interface's name; a vhost-user port's socket path.
    pub fn interface(&self) -> &str {
        match self {
            Link::Xdp(s) => s.interface(),
            Link::Vhost(v) => v.label(),
        }
    }

    /// The receive queue (a vhost-user port has one queue pair: 0).
    pub fn queue(&self) -> u32 {
        match self {
            Link::Xdp(s) => s.queue(),
            Link::Vhost(_) => 0,
        }
    }

    /// The interface's index; 0 for a vhost-user port (no interface).
    pub fn ifindex(&self) -> u32 {
        match self {
            Link::Xdp(s) => s.ifindex(),
            Link::Vhost(_) => 0,
        }
    }

    pub fn busy_polled(&self) -> BusyPolled {
        match self {
            Link::Xdp(s) => s.busy_polled(),
            Link::Vhost(_) => BusyPolled::Off,
        }
    }

    /// The kernel's ring statistics (see `SocketStats::kernel`); a
    /// vhost-user port's own drops in their places: frames from the guest
    /// with no free frame or too large as `rx_dropped`, malformed chains as
    /// `rx_invalid_descs`.
    pub fn statistics(&self) -> Option<[u64; 6]> {
        match self {
            Link::Xdp(s) => s.statistics(),
            Link::Vhost(v) => Some([v.counts.no_frame + v.counts.too_large, v.counts.malformed, 0, 0, 0, 0]),
        }
    }
}

impl Rings for Link {
    #[inline]
    fn receive(&mut self, mem: &mut Memory, out: &mut Vec<Frame>, max: usize) -> usize {
        match self {
            Link::Xdp(s) => s.receive(mem, out, max),
            Link::Vhost(v) => v.receive(mem, out, max),
        }
    }
    #[inline]
    fn transmit(&mut self, mem: &mut Memory, frames: &mut Vec<Frame>) -> usize {
        match self {
            Link::Xdp(s) => s.transmit(mem, frames),
            Link::Vhost(v) => v.transmit(mem, frames),
        }
    }
    #[inline]
    fn refill(&mut self, mem: &mut Memory, target: u32) {
        match self {
            Link::Xdp(s) => s.refill(mem, target),
            Link::Vhost(v) => v.refill(mem, target),
        }
    }
    #[inline]
    fn reclaim(&mut self, mem: &mut Memory) -> usize {
        match self {
            Link::Xdp(s) => s.reclaim(mem),
            Link::Vhost(v) => v.reclaim(mem),
        }
    }
    fn poll_fd(&mut self) -> libc::pollfd {
        match self {
            Link::Xdp(s) => s.poll_fd(),
            Link::Vhost(v) => v.poll_fd(),
        }
    }
}

/// A socket, where its frames come from, and its counters.
pub struct Port {
    pub sock: Link,
    pub src: Source,
    /// Frames decided for this socket, sent at the end of the iteration.
    pub pending: Vec<Frame>,
    pub stats: Arc<SocketStats>,
    /// What the log has been told of this socket (bits of
    /// `warn_about_offloads`).
    pub warned: u8,
    /// The XDP fast path may send flows out of this socket's interface.
    pub fast_target: bool,
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Port({:?}, {:?}, {} pending)", self.sock, self.src, self.pending.len())
    }
}

impl Port {
    /// The socket on queue 0 is its interface's primary: unicast to the
    /// interface and floods go out there, once.
    pub fn primary(&self) -> bool {
        self.sock.queue() == 0
    }

    /// A vhost-user port's (not an AF_XDP socket).
    pub fn vhost(&self) -> bool {
        matches!(self.sock, Link::Vhost(_))
    }
}

fn open(mem: &mut Memory, host: &Host, interface: &str, queue: u32, src: Source, cap: usize, starting: bool) -> Result<Port, PortError> {
    let mut opts = BindOptions::of(&host.datapath);
    if !starting {
        opts.busy_wait = std::time::Duration::ZERO;
    }
    let mut sock = mem.bind(interface, queue, &opts)?;
    // Frames to receive into from the start: the loop tops the ring up to
    // its share each iteration.
    sock.refill(mem, FIRST_FILL);
    let mode = sock.mode();
    info!(interface, queue, mode = %mode.describe(), why = sock.why(), "{interface}: AF_XDP socket on queue {queue}, {} ({})", mode.describe(), sock.why());
    let stats = Arc::new(SocketStats {
        interface: interface.to_owned(),
        queue: sock.queue(),
        port: matches!(src, Source::Port(_)),
        native: mode.native,
        zero_copy: mode.zero_copy,
        busy_poll: std::sync::atomic::AtomicU8::new(sock.busy_polled() as u8),
        why: sock.why().to_owned(),
        kernel: Default::default(),
        tx_full: Counter::default(),
        checksums_finished: Counter::default(),
        vhost: None,
    });
    // Redirected frames are sent with the driver's `ndo_xdp_xmit`: a tap's
    // takes them whatever its guest runs; a veth's only if its peer runs
    // XDP or GRO, which this side cannot see (`fast_path = "on"` says so).
    let fast_target = match host.datapath.fast_path {
        FastPath::On => true,
        FastPath::Auto => sys::is_tap(interface),
        FastPath::Off => false,
    };
    Ok(Port { sock: Link::Xdp(sock), src, pending: Vec::with_capacity(cap), stats, warned: 0, fast_target })
}

/// A vhost-user port's rings (listening on, or connecting to, its socket).
fn open_vhost(v: &sgswitch_config::VhostUser, port: &str, src: Source, cap: usize) -> Result<Port, PortError> {
    let dev = VhostUser::open(v.socket.clone(), v.client, port)?;
    let mode = if v.client { "client" } else { "server" };
    info!(port, socket = %v.socket.display(), "{port}: vhost-user port on {} ({mode})", v.socket.display());
    let stats = Arc::new(SocketStats {
        interface: dev.label().to_owned(),
        queue: 0,
        port: true,
        native: false,
        zero_copy: false,
        busy_poll: std::sync::atomic::AtomicU8::new(BusyPolled::Off as u8),
        why: format!("vhost-user {mode}"),
        kernel: Default::default(),
        tx_full: Counter::default(),
        checksums_finished: Counter::default(),
        vhost: Some(dev.shared()),
    });
    Ok(Port { sock: Link::Vhost(dev), src, pending: Vec::with_capacity(cap), stats, warned: 0, fast_target: false })
}

/// A loop's I/O: its UMEM, its sockets (the uplink's first, by queue),
/// which of them is each plan port's, the frames the pipeline holds, and
/// the interfaces it could not open a socket on, with why.
#[derive(Debug)]
pub struct Io {
    pub mem: Memory,
    pub socks: Vec<Port>,
    pub by_port: Vec<Option<usize>>,
    pub held: Held,
    pub down: Vec<(String, String)>,
}

/// The link state of this loop's interfaces as last logged: `None` up,
/// `Some(reason)` down. A change is logged once.
pub type LinkLog = std::collections::HashMap<String, Option<String>>;

impl Io {
    pub fn new(host: &Host) -> Result<Io, PortError> {
        let mut mem = Memory::new(host.datapath.frames, host.datapath.ring_size)?;
        mem.keep_free(KEEP_FOR_COPIES);
        let held = Held::new(mem.frames());
        Ok(Io { mem, socks: Vec::new(), by_port: Vec::new(), held, down: Vec::new() })
    }

    /// Opens the sockets this loop should have and has not: its share of
    /// the uplink's queues (queue q is loop q's, modulo the loops; loop 0
    /// has queue 0, the primary) and every queue of the plan's ports it
    /// owns; closes those of ports that went away (or are another loop's);
    /// maps the plan's ports to sockets. An interface that cannot be opened
    /// is recorded as down, with the reason; with `strict` (at start), a
    /// failure on the uplink is an error.
    pub fn connect(&mut self, plan: &Plan, host: &Host, me: Owner, uplink: &str, strict: bool) -> Result<(), PortError> {
        let cap = host.datapath.frames as usize;
        self.down.clear();
        let queues: Vec<u32> = (0..sys::rx_queues(uplink)).filter(|&q| q as usize % me.loops == me.index).collect();
        let mut at = 0;
        for queue in queues {
            if self.socks.iter().any(|s| s.src == Source::Uplink && s.sock.queue() == queue) {
                at += 1;
                continue;
            }
            match open(&mut self.mem, host, uplink, queue, Source::Uplink, cap, strict) {
                Ok(p) => {
                    self.socks.insert(at, p);
                    at += 1;
                }
                Err(e) if strict => return Err(e),
                Err(e) => {
                    self.down.push((uplink.to_owned(), e.to_string()));
                    break;
                }
            }
        }
        // Each port's link here: its interface, or its vhost-user socket
        // (named by the socket's path, with the mode).
        let wanted: Vec<Option<(&str, Option<&sgswitch_config::VhostUser>)>> = plan
            .ports
            .iter()
            .map(|p| {
                let link = match &p.vhost_user {
                    Some(v) => v.socket.to_str().map(|s| (s, Some(v))),
                    None => p.interface.as_deref().map(|i| (i, None)),
                };
                link.filter(|_| me.owns(p.zone))
            })
            .collect();
        let same = |s: &Port, (name, v): (&str, Option<&sgswitch_config::VhostUser>)| {
            s.sock.interface() == name
                && match (&s.sock, v) {
                    (Link::Xdp(_), None) => true,
                    (Link::Vhost(d), Some(v)) => d.client() == v.client,
                    _ => false,
                }
        };
        // Keep the uplink and the ports still configured here.
        let mut gone = Vec::new();
        let mut i = 0;
        while i < self.socks.len() {
            let s = &self.socks[i];
            if s.src == Source::Uplink || wanted.iter().flatten().any(|w| same(s, *w)) {
                i += 1;
            } else {
                info!(interface = %s.sock.interface(), "{}: port removed, socket closed", s.sock.interface());
                gone.push(self.socks.remove(i));
            }
        }
        for p in gone {
            self.close(p);
        }
        self.by_port.clear();
        for (p, w) in (0..).zip(wanted) {
            self.by_port.push(None);
            let Some((name, vhost)) = w else { continue };
            if let Some(v) = vhost {
                let found = self.socks.iter().position(|s| same(s, (name, vhost)));
                let id = &plan.ports[usize::from(p)].id;
                let Some(at) = self.found_or_opened(found, name, |_| open_vhost(v, id, Source::Port(p), cap)) else { continue };
                self.socks[at].src = Source::Port(p);
                self.by_port[usize::from(p)] = Some(at);
                continue;
            }
            // Every receive queue of the port's interface; all in this loop,
            // which owns the port's zone.
            for queue in 0..sys::rx_queues(name) {
                let found = self.socks.iter().position(|s| same(s, (name, None)) && s.sock.queue() == queue);
                let opened = self.found_or_opened(found, name, |mem| open(mem, host, name, queue, Source::Port(p), cap, strict));
                let Some(at) = opened else { break };
                self.socks[at].src = Source::Port(p);
                if queue == 0 {
                    self.by_port[usize::from(p)] = Some(at);
                }
            }
        }
        Ok(())
    }

    /// The socket at `found`, or one `open` makes (added to the loop's);
    /// `None`, with the interface recorded as down, if it cannot be made.
    fn found_or_opened(
        &mut self,
        found: Option<usize>,
        name: &str,
        open: impl FnOnce(&mut Memory) -> Result<Port, PortError>,
    ) -> Option<usize> {
        if found.is_some() {
            return found;
        }
        match open(&mut self.mem) {
            Ok(port) => {
                self.socks.push(port);
                Some(self.socks.len() - 1)
            }
            Err(e) => {
                self.down.push((name.to_owned(), e.to_string()));
                None
            }
        }
    }

    /// Closes a socket: its pending frames and those its rings held go
    /// back to the free list. Returns whether the UMEM must be made anew.
    fn close(&mut self, mut p: Port) -> bool {
        for f in p.pending.drain(..) {
            self.mem.release(f);
        }
        match p.sock {
            Link::Xdp(s) => self.mem.forget(s),
            // Its frames were copies; nothing of the UMEM is in its rings.
            Link::Vhost(_) => false,
        }
    }

    /// Closes the sockets whose interface was deleted (or deleted and made
    /// again: another index under the name); returns whether any was. If
    /// one of them carried the UMEM's registration, every socket is closed
    /// and the UMEM made anew (then frames the pipeline holds are of the
    /// old one: `forget_held`).
    pub fn unlink_gone(&mut self, host: &Host, forget_held: impl FnOnce()) -> Result<bool, PortError> {
        let (mut i, before) = (0, self.socks.len());
        let mut rebuild = false;
        while i < self.socks.len() {
            let s = &self.socks[i].sock;
            if matches!(s, Link::Vhost(_)) || sys::ifindex(s.interface()) == s.ifindex() {
                i += 1;
                continue;
            }
            let p = self.socks.remove(i);
            rebuild |= self.close(p);
        }
        if rebuild {
            self.socks.clear();
            self.by_port.clear();
            forget_held();
            self.held.clear();
            self.mem = Memory::new(host.datapath.frames, host.datapath.ring_size)?;
            self.mem.keep_free(KEEP_FOR_COPIES);
        }
        Ok(self.socks.len() != before)
    }

    /// The interfaces of its AF_XDP sockets that the loop does not busy
    /// poll (not asked for, not yet engaged, or the kernel names no NAPI
    /// context), each once: the kernel receives for them in its own
    /// context. (Once engaged, busy polling turns the interface's threaded
    /// NAPI off, and the thread goes.)
    pub fn unpolled_interfaces(&self) -> Vec<u32> {
        let mut out: Vec<u32> = self
            .socks
            .iter()
            .filter(|p| matches!(p.sock, Link::Xdp(_)) && p.sock.busy_polled() != BusyPolled::Yes)
            .map(|p| p.sock.ifindex())
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Logs each interface whose state changed since `log` last saw it, and
    /// the state of all of them for status and metrics.
    pub fn report(&self, plan: &Plan, me: Owner, uplink: &str, log: &mut LinkLog) -> Vec<LinkState> {
        let mut states = Vec::new();
        let mut names: Vec<(&str, Option<&str>)> = vec![(uplink, None)];
        names.extend(plan.ports.iter().filter(|p| me.owns(p.zone)).filter_map(|p| {
            let link = match &p.vhost_user {
                Some(v) => v.socket.to_str()?,
                None => p.interface.as_deref()?,
            };
            Some((link, Some(&*p.id)))
        }));
        for (name, port) in names {
            let reason = self.down.iter().find(|(n, _)| n == name).map(|(_, r)| r.clone());
            let up = reason.is_none() && self.socks.iter().any(|s| s.sock.interface() == name);
            if port.is_none() && !up && reason.is_none() {
                // No uplink queue is this loop's.
                continue;
            }
            let before = log.get(name).cloned();
            if before.as_ref() != Some(&reason) {
                match (&reason, before.is_some()) {
                    (None, true) => info!(interface = name, "{name}: interface back, AF_XDP sockets open"),
                    (None, false) => {}
                    (Some(r), _) => warn!(
                        interface = name,
                        "{name}: down ({r}); traffic of {} is dropped until it comes back",
                        port.unwrap_or("the uplink")
                    ),
                }
                log.insert(name.to_owned(), reason.clone());
            }
            states.push(LinkState { interface: name.to_owned(), port: port.map(str::to_owned), up, reason: reason.unwrap_or_default() });
        }
        states
    }
}
