//! The NAPI threads that share a loop's core (`[datapath] napi_threads`):
//! the kernel's receive work for the loop's interfaces that the loop cannot
//! busy poll, run at idle priority while the loop holds them, so that the
//! kernel receives only as fast as the loop takes frames (see
//! [`crate::port::xdp::napi`] for why).
//!
//! Looked at once a second, with the loop's interfaces (off the per-packet
//! path): a thread pinned to the loop's core after the switch started is
//! taken then, and one moved away, or whose interface went, is put back.

use crate::port::xdp::napi::{self, Netdev, Yielded};
use tracing::{info, warn};

/// At most this many threads left as they were are remembered (so that
/// each is logged once).
const TOLD_MAX: usize = 256;

#[derive(Debug)]
pub struct NapiThreads {
    loop_index: usize,
    core: usize,
    netdev: Option<Netdev>,
    held: Vec<Yielded>,
    /// Threads left as they are, already logged.
    told: Vec<i32>,
    /// The threads cannot be known (the reason was logged once).
    unknown: bool,
}

impl NapiThreads {
    pub fn new(loop_index: usize, core: usize) -> NapiThreads {
        NapiThreads { loop_index, core, netdev: None, held: Vec::new(), told: Vec::new(), unknown: false }
    }

    /// Whether a NAPI thread yields to this loop: then the loop must not
    /// spin when idle (the thread would get nothing of the core while it
    /// spins, and frames come only from it), and steps aside now and then
    /// when busy for long (see `poll_loop`).
    pub fn any(&self) -> bool {
        !self.held.is_empty()
    }

    /// The held threads' names.
    pub fn names(&self) -> Vec<String> {
        self.held.iter().map(|y| y.name.clone()).collect()
    }

    /// Takes the NAPI threads of `ifindexes` that may run on this loop's
    /// core only and puts back those that no longer do (or whose interface
    /// is not in `ifindexes` any more). Returns whether the set changed.
    pub fn refresh(&mut self, ifindexes: &[u32]) -> bool {
        let (i, core) = (self.loop_index, self.core);
        if self.netdev.is_none() && !self.unknown {
            match Netdev::open() {
                Ok(n) => self.netdev = Some(n),
                Err(e) => self.cannot_know(e.to_string()),
            }
        }
        let before: Vec<i32> = self.held.iter().map(|y| y.pid).collect();
        // One request for the namespace's every context, however many
        // interfaces the loop has.
        let contexts = match &self.netdev {
            Some(netdev) if !ifindexes.is_empty() => netdev.contexts(None).unwrap_or_else(|e| {
                self.cannot_know(format!("netdev napi-get: {e}"));
                Vec::new()
            }),
            _ => Vec::new(),
        };
        let mut seen = Vec::new();
        for c in contexts.into_iter().filter(|c| c.pid != 0 && ifindexes.contains(&c.ifindex) && napi::pinned_to(c.pid, core)) {
            seen.push(c.pid);
            if self.held.iter().any(|y| y.pid == c.pid) {
                continue;
            }
            match napi::yield_thread(c.pid) {
                Ok(y) => {
                    info!(
                        "loop {i}: NAPI thread {} ({}) shares core {core} with the loop: it runs at idle priority, receiving as fast as the loop takes frames",
                        y.name, y.pid
                    );
                    self.held.push(y);
                }
                Err(why) if !self.told.contains(&c.pid) => {
                    info!("loop {i}: NAPI thread {} on core {core} left as it is: {why}", c.pid);
                    if self.told.len() >= TOLD_MAX {
                        self.told.clear();
                    }
                    self.told.push(c.pid);
                }
                Err(_) => {}
            }
        }
        self.held.retain(|y| {
            let keep = seen.contains(&y.pid);
            if !keep {
                info!(
                    "loop {i}: NAPI thread {} ({}) no longer shares core {core} with the loop: its scheduling is put back",
                    y.name, y.pid
                );
            }
            keep
        });
        self.held.iter().map(|y| y.pid).ne(before)
    }

    fn cannot_know(&mut self, why: String) {
        if !self.unknown {
            warn!(
                "loop {}: the NAPI threads of its interfaces are not known ({why}): a NAPI thread on core {} competes with the loop at equal weight",
                self.loop_index, self.core
            );
        }
        self.unknown = true;
        self.netdev = None;
    }
}
