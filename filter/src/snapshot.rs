//! Publishing compiled policies to the datapath.
//!
//! The control thread builds a whole new [`Compiled`] off the hot path and
//! [`Published::publish`]es it with one atomic pointer swap (arc-swap).
//! Readers [`Published::load`] a guard: no lock, no half-built table (a
//! snapshot is complete before it becomes reachable), and an old snapshot
//! is freed when the last guard or `Arc` on it is dropped.
//!
//! A poll loop loads once per batch, not per packet, and keeps the guard
//! for the batch: every packet of a batch is judged by one generation.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};

use crate::compiled::Compiled;

/// The current policy snapshot, shared by the control thread and every
/// poll loop.
#[derive(Debug)]
pub struct Published {
    current: ArcSwap<Compiled>,
}

impl Published {
    pub fn new(first: Compiled) -> Published {
        Published { current: ArcSwap::from_pointee(first) }
    }

    /// The snapshot in force now. Lock-free; cheap enough for once per
    /// batch.
    pub fn load(&self) -> Guard<Arc<Compiled>> {
        self.current.load()
    }

    /// An owned handle on the snapshot in force now, for holders that
    /// outlive a batch (the control socket, `trace` against the live policy).
    pub fn load_full(&self) -> Arc<Compiled> {
        self.current.load_full()
    }

    /// Makes `next` the snapshot in force; returns the one it replaces
    /// (freed when its last reader lets go).
    pub fn publish(&self, next: Compiled) -> Arc<Compiled> {
        self.current.swap(Arc::new(next))
    }
}
