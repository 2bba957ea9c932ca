//! Connection tracking: what makes security groups stateful
//! (`shared/design/semantics.md`, "State").
//!
//! - [`key`]: flow keys; both directions of a flow normalise to one [`Key`],
//!   per zone (one zone per port).
//! - [`tcp`]: the TCP state machine as a pure function, with the liberal
//!   sequence check for RST.
//! - [`frag`]: fragments follow the verdict of their datagram's first
//!   fragment; early followers wait in a bounded hold.
//! - `index`: the table's index, entry numbers by key hash in groups of
//!   eight slots (one cache line), searched without branching on neighbours.
//! - [`table`]: the bounded, preallocated connection [`Table`]: lookup and
//!   state update, creation through the caller's policy closure, amortised
//!   expiry, capacity and eviction, lazy revalidation by policy generation.
//!
//! # Contract
//! Pure data structures: no I/O, no threads, no clock (the caller passes
//! `now`), no locks. One owner per zone. The two `unsafe` calls, the
//! huge-page advice and the cache prefetch, are in `mem` (see there), which
//! the datapath's own preallocated tables use too.
#![deny(unsafe_code)]

pub mod frag;
mod index;
pub mod key;
pub mod mem;
pub mod table;
pub mod tcp;

pub use frag::{Follow, FragKey, FragSettings, FragStats, Fragment, Fragments};
pub use key::{Key, Tuple, Zone};
pub use table::{BATCH, Counters, EVICT_SCAN, EntryAt, Now, Outcome, PacketInfo, Prepared, Ready, Settings, State, Stats, Table, Timeouts};
pub use tcp::{Segment, Side, Step, TcpState};
