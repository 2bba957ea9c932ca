//! Connection tracking: what makes security groups stateful
//! (`shared/design/semantics.md`, "State").
//!
//! - [`key`]: flow keys; both directions of a flow normalise to one [`Key`],
//!   per zone (one zone per port).
//! - [`tcp`]: the TCP state machine as a pure function, with the liberal
//!   sequence check for RST.
//!
//! # Contract
//! Pure data structures: no I/O, no threads, no clock (the caller passes
//! `now`), no locks. One owner per zone.
#![forbid(unsafe_code)]

pub mod key;
pub mod tcp;

pub use key::{Key, Tuple, Zone};
pub use tcp::{Segment, Side, Step, TcpState};
