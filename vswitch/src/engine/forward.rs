//! Forwarding decided frames: to one of the loop's sockets, copies for a
//! flood, or a copy to the poll loop that owns the next stage or the target
//! socket (each loop has its own UMEM, so frames crossing loops are copied:
//! `docs/design.md`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crossbeam_queue::ArrayQueue;

use super::bell::Doorbell;
use super::io::{Held, Port};
use super::stats::LoopStats;
use crate::datapath::plan::{Plan, PortIdx};
use crate::datapath::{Action, Outcome, Owner, Source, To, owner_of};
use crate::port::xdp::{FRAME_SIZE, Frame, Memory, sys};

/// Frames one loop's inbox holds at most (each a 2 KiB parcel: 2 MiB).
pub const HANDOVER: usize = 1024;

/// What the receiving loop does with a handed-over frame.
#[derive(Clone, Copy, Debug)]
pub enum Task {
    /// Judge it with this port's ingress (the loop owns the port's zone),
    /// then send it on.
    Judge(PortIdx),
    /// Transmit it: to a port's socket or the uplink of the receiving loop,
    /// or flood it to the receiving loop's sockets.
    Send(To),
}

/// A frame handed from one poll loop to another: its bytes, copied.
pub struct Parcel {
    pub task: Task,
    pub len: u16,
    pub data: [u8; FRAME_SIZE as usize],
}

impl std::fmt::Debug for Parcel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Parcel({:?}, {} bytes)", self.task, self.len)
    }
}

/// A loop's inbox: the frames other loops hand it, and the doorbell that
/// wakes it for them and for work that is not a frame (a request queued,
/// a new plan published: a nudge).
#[derive(Debug)]
pub struct Inbox {
    pub parcels: ArrayQueue<Parcel>,
    pub bell: Doorbell,
    nudged: AtomicBool,
}

impl Inbox {
    pub fn new() -> Inbox {
        Inbox { parcels: ArrayQueue::new(HANDOVER), bell: Doorbell::new(), nudged: AtomicBool::new(false) }
    }

    /// Tells the loop it has work that is not a frame, waking it if it
    /// sleeps; a loop awake sees it at its last look before it sleeps.
    pub fn nudge(&self) {
        self.nudged.store(true, Ordering::Relaxed);
        // Fences before it reads whether the loop sleeps.
        self.bell.ring();
    }

    /// The loop, idle: waits on `fds` (its sockets) and the doorbell, at
    /// most `wait`, unless frames or a nudge came since it last looked.
    pub fn sleep(&self, fds: &mut Vec<libc::pollfd>, wait: Duration) {
        let at = fds.len();
        fds.extend(self.bell.poll_fd());
        self.bell.going_to_sleep();
        if self.parcels.is_empty() && !self.nudged.swap(false, Ordering::Relaxed) {
            sys::wait_for_frames(fds, wait);
        }
        self.bell.awake(fds.get(at));
    }
}

impl Default for Inbox {
    fn default() -> Inbox {
        Inbox::new()
    }
}

/// Every loop's inbox, by loop.
pub type Inboxes = Vec<Arc<Inbox>>;

/// Nudges every loop (a new plan published, a link event, the stop).
pub fn nudge_all(inboxes: &Inboxes) {
    for i in inboxes {
        i.nudge();
    }
}

/// What a loop needs to send frames to the others.
#[derive(Debug)]
pub struct Peers<'a> {
    pub me: Owner,
    pub inboxes: &'a [Arc<Inbox>],
    pub stats: &'a LoopStats,
}

impl Peers<'_> {
    /// Hands a copy of `bytes` to loop `to`, waking it if it sleeps; a full
    /// inbox drops and counts.
    fn send(&self, to: usize, task: Task, bytes: &[u8]) {
        let Some(inbox) = self.inboxes.get(to) else { return };
        let mut p = Parcel { task, len: 0, data: [0; FRAME_SIZE as usize] };
        let n = bytes.len().min(p.data.len());
        p.data[..n].copy_from_slice(&bytes[..n]);
        p.len = u16::try_from(n).unwrap_or(u16::MAX);
        if inbox.parcels.push(p).is_ok() {
            inbox.bell.ring();
            self.stats.handover_sent.add(1);
        } else {
            self.stats.handover_dropped.add(1);
        }
    }

    fn owner(&self, plan: &Plan, q: PortIdx) -> Option<usize> {
        plan.port(q).map(|p| owner_of(p.zone, self.me.loops))
    }
}

/// This loop's uplink socket, if it has one. The uplink's sockets are kept
/// first, by queue, so it is the first.
fn uplink_socket(socks: &[Port]) -> Option<usize> {
    socks.first().filter(|p| p.src == Source::Uplink).map(|_| 0)
}

/// This loop's socket for a unicast target, if it has it (a flood has none).
pub(crate) fn socket_for(socks: &[Port], by_port: &[Option<usize>], to: To) -> Option<usize> {
    match to {
        To::Port(q) => by_port.get(usize::from(q)).copied().flatten(),
        To::Uplink => uplink_socket(socks),
        To::Flood { .. } => None,
    }
}

/// Copies `bytes` to this loop's sockets for `to`: one port's, the
/// uplink's, or every socket a flood reaches (but `from`).
pub fn deliver(mem: &mut Memory, socks: &mut [Port], by_port: &[Option<usize>], from: usize, bytes: &[u8], to: To, stats: &LoopStats) {
    let mut copy = |p: &mut Port| match mem.copy_in(bytes) {
        Some(c) => p.pending.push(c),
        None => stats.copy_failed.add(1),
    };
    if let To::Flood { except, uplink } = to {
        for (t, p) in socks.iter_mut().enumerate() {
            if p.primary() && t != from && (p.src != Source::Uplink || uplink) && !matches!(p.src, Source::Port(q) if Some(q) == except) {
                copy(p);
            }
        }
    } else if let Some(t) = socket_for(socks, by_port, to) {
        copy(&mut socks[t]);
    }
}

/// The loop's state a decided frame may go to, borrowed apart so that the
/// sockets and the memory can both be changed.
#[derive(Debug)]
pub struct Ways<'a> {
    pub plan: &'a Plan,
    pub mem: &'a mut Memory,
    pub socks: &'a mut [Port],
    pub by_port: &'a [Option<usize>],
    pub held: &'a mut Held,
    pub peers: &'a Peers<'a>,
}

impl Ways<'_> {
    /// Sends a decided frame on its way: to one of this loop's sockets,
    /// copies for a flood, a copy to the loop that owns the target (to
    /// send, or to judge its ingress), into the held frames (a fragment
    /// waiting), or back to the free list. `from` is the socket it came in
    /// on (a flood skips it), `usize::MAX` for none.
    pub fn dispatch(&mut self, from: usize, f: Frame, o: &Outcome) {
        let peers = self.peers;
        match o.action {
            Action::Forward(to @ (To::Port(_) | To::Uplink)) => {
                match socket_for(self.socks, self.by_port, to) {
                    Some(t) if t != from => return self.socks[t].pending.push(f),
                    Some(_) => {}
                    None => {
                        let owner = match to {
                            To::Port(q) => peers.owner(self.plan, q),
                            _ => Some(0),
                        };
                        if let Some(l) = owner.filter(|&l| l != peers.me.index) {
                            peers.send(l, Task::Send(to), self.mem.data(&f));
                        }
                    }
                }
                self.mem.release(f);
            }
            Action::Forward(to @ To::Flood { .. }) => {
                let mut buf = [0u8; FRAME_SIZE as usize];
                let bytes = self.mem.data(&f);
                let len = bytes.len().min(buf.len());
                buf[..len].copy_from_slice(&bytes[..len]);
                self.mem.release(f);
                deliver(self.mem, self.socks, self.by_port, from, &buf[..len], to, peers.stats);
                for l in (0..peers.me.loops).filter(|&l| l != peers.me.index) {
                    peers.send(l, Task::Send(to), &buf[..len]);
                }
            }
            Action::Handover(q) => {
                if let Some(l) = peers.owner(self.plan, q).filter(|&l| l != peers.me.index) {
                    peers.send(l, Task::Judge(q), self.mem.data(&f));
                }
                self.mem.release(f);
            }
            Action::Held => self.held.keep(f, self.mem),
            Action::Drop => self.mem.release(f),
        }
    }

    /// Dispatches a fragment the pipeline released: its frame, by number,
    /// from the held frames.
    pub fn released(&mut self, n: u32, o: &Outcome) {
        if let Some(f) = self.held.take(n) {
            self.dispatch(usize::MAX, f, o);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn slept(inbox: &Inbox, limit: Duration) -> Duration {
        let t = Instant::now();
        inbox.sleep(&mut Vec::new(), limit);
        t.elapsed()
    }

    #[test]
    fn work_that_came_while_the_loop_was_awake_keeps_it_from_sleeping() {
        let inbox = Inbox::new();
        // A request or a plan while the loop was busy: its bell was not
        // rung (it was awake), but its last look sees the nudge.
        inbox.nudge();
        assert!(slept(&inbox, Duration::from_secs(5)) < Duration::from_secs(1), "slept through a nudge");
        // Seen once: the next sleep is whole.
        assert!(slept(&inbox, Duration::from_millis(100)) >= Duration::from_millis(90));
        // A frame handed over while it was awake.
        let p = Parcel { task: Task::Send(To::Uplink), len: 0, data: [0; FRAME_SIZE as usize] };
        assert!(inbox.parcels.push(p).is_ok());
        assert!(slept(&inbox, Duration::from_secs(5)) < Duration::from_secs(1), "slept over a parcel");
    }

    #[test]
    fn a_nudge_wakes_a_sleeping_loop() {
        let inbox = Arc::new(Inbox::new());
        let other = Arc::clone(&inbox);
        let waker = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            other.nudge();
        });
        assert!(slept(&inbox, Duration::from_secs(5)) < Duration::from_secs(1), "a nudge did not wake the sleeper");
        waker.join().expect("waker");
    }
}
