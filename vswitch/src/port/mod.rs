//! Port I/O: how frames get in and out of the switch. AF_XDP sockets on the
//! ports' and the uplink's interfaces ([`xdp`]), and captures read for
//! `replay` ([`capture`]). The only `unsafe` code of the switch is here, in
//! `xdp`, each block with the invariant it relies on.
//!
//! A poll loop's frames are [`xdp::Frame`]s of its [`xdp::Memory`], and it
//! drives each port through [`Rings`], the four calls of one iteration.
//! [`xdp::Socket`] is the one kind today; another kind of port (vhost-user,
//! say) implements `Rings` by moving frames between its own memory and the
//! loop's `Memory`.

pub mod capture;
pub mod halt;
pub mod vhost;
pub mod xdp;

use self::xdp::{Frame, Memory};

/// What a poll loop asks of a port each iteration. Frames move by value:
/// a call that takes frames takes them from the caller's vector, and one
/// that gives frames appends them, so a frame is never in two places.
pub trait Rings {
    /// Moves up to `max` received frames to the end of `out`; returns how
    /// many.
    fn receive(&mut self, mem: &mut Memory, out: &mut Vec<Frame>, max: usize) -> usize;
    /// Sends the frames at the front of `frames`, as many as the port has
    /// room for, in one commit; the rest stay in `frames`. Returns how many
    /// it took. Called every iteration, with no frames too, to push out
    /// what the port still holds.
    fn transmit(&mut self, mem: &mut Memory, frames: &mut Vec<Frame>) -> usize;
    /// Gives the port free frames to receive into, up to `target` in all.
    fn refill(&mut self, mem: &mut Memory, target: u32);
    /// Takes back the frames the port has finished sending; returns how
    /// many.
    fn reclaim(&mut self, mem: &mut Memory) -> usize;
    /// What an idle loop waits on: readable when frames have arrived (a
    /// port may ask to be woken here, so it is called once per wait).
    fn poll_fd(&mut self) -> libc::pollfd;
}

/// Why a port's socket, or what it needs, could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortError {
    #[error("interface {iface}: no such network interface")]
    NoInterface { iface: String },
    #[error("creating the UMEM ({frames} frames): {what}")]
    Umem { frames: u32, what: String },
    #[error(
        "interface {iface}: cannot open an AF_XDP socket on queue {queue} ({tried}); is the switch running as root, and the kernel built with XDP sockets?"
    )]
    Bind { iface: String, queue: u32, tried: String },
    #[error("interface {iface} queue {queue}: already bound by this switch")]
    AlreadyBound { iface: String, queue: u32 },
    #[error("interface {iface}: another sgswitch is using it (it holds {lock}); stop it first")]
    Busy { iface: String, lock: String },
    #[error("interface {iface}: cannot lock {lock}: {what}")]
    Lock { iface: String, lock: String, what: String },
    #[error("vhost-user socket {socket}: {what}")]
    Vhost { socket: String, what: String },
    #[error("{call}: {what}")]
    Sys { call: &'static str, what: String },
}
