//! Port I/O: how frames get in and out of the switch. AF_XDP sockets on the
//! ports' and the uplink's interfaces ([`xdp`]), and captures read for
//! `replay` ([`capture`]). The only `unsafe` code of the switch is here, in
//! `xdp`, each block with the invariant it relies on.
//!
//! A poll loop drives its sockets through [`xdp::Socket`]; its frames are
//! [`xdp::Frame`]s of its [`xdp::Memory`]. Another kind of port (vhost-user,
//! say) moves frames between its own memory and a loop's `Memory` through
//! the same calls: receive into `Frame`s, transmit `Frame`s, refill and
//! reclaim around them.

pub mod capture;
pub mod xdp;

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
    #[error("{call}: {what}")]
    Sys { call: &'static str, what: String },
}
