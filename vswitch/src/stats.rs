//! Counters the poll loops write and the metrics endpoint, the control
//! socket and the shutdown summary read.
//!
//! # Design
//! Every counter has exactly one writer, its poll loop. [`Counter::add`] is a
//! relaxed load and a relaxed store, not a locked read-modify-write: on
//! x86-64 and aarch64 it compiles to the same plain load, add and store as a
//! `u64` field would, so keeping the counters readable from other threads
//! costs the hot path nothing. A scraper reads each counter with a relaxed
//! load; it may see one counter a batch ahead of another, never a torn value.
//!
//! Rule hits are per plan (a reload renumbers the rules). A plan's hits live
//! in a [`RuleHits`] array with the plan's labels; the loop publishes a
//! [`RuleBook`] (the current array plus the totals of earlier plans, folded by
//! label) through an [`ArcSwap`] when it adopts a new plan, so a scrape always
//! sees one consistent book.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use arc_swap::ArcSwap;

use crate::plan::MAX_PORTS;

/// A counter with one writer.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Adds `n`. Only the counter's one writer may call this.
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.store(self.0.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }

    /// Sets the value (for totals copied from a structure the writer owns).
    #[inline]
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Packets and bytes.
#[derive(Debug, Default)]
pub struct Cell {
    pub packets: Counter,
    pub bytes: Counter,
}

/// Reason kinds, the counter index (`interfaces.md`'s reason set, plus
/// `fragment`, `malformed`, `non-ip` and `no-port`).
pub const REASONS: [&str; 15] = [
    "established",
    "related",
    "rule",
    "intra-group",
    "default",
    "spoof",
    "invalid",
    "blocked-egress",
    "conntrack-full",
    "infrastructure",
    "fragment",
    "malformed",
    "non-ip",
    "no-port",
    "tagged",
];

/// The counters of one port (or of traffic that belongs to no port).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// `[direction: ingress, egress][forwarded?][reason kind]`.
    pub by: [[[Cell; REASONS.len()]; 2]; 2],
}

impl PortCounters {
    fn reset(&self) {
        for c in self.by.iter().flatten().flatten() {
            c.packets.set(0);
            c.bytes.set(0);
        }
    }
}

/// A rule as metrics and the flow log name it: the same group, direction and
/// index `sgswitch trace` reports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleLabel {
    pub group: Arc<str>,
    pub direction: &'static str,
    pub index: u16,
    pub action: &'static str,
}

/// The hits of one plan's rules, by rule slot ([`crate::plan::Plan::rule_slot`]).
#[derive(Debug)]
pub struct RuleHits {
    pub generation: u32,
    pub labels: Arc<[RuleLabel]>,
    pub hits: Box<[Counter]>,
}

impl RuleHits {
    pub fn new(generation: u32, labels: Arc<[RuleLabel]>) -> RuleHits {
        let hits = labels.iter().map(|_| Counter::default()).collect();
        RuleHits { generation, labels, hits }
    }
}

/// Rule hits as published: the current plan's array, and what the rules of
/// earlier plans counted, by label.
#[derive(Debug)]
pub struct RuleBook {
    pub current: Arc<RuleHits>,
    pub folded: BTreeMap<RuleLabel, u64>,
}

impl RuleBook {
    /// Every rule's total, current plan and earlier ones together; rules of
    /// the current plan are listed even at zero.
    pub fn totals(&self) -> BTreeMap<RuleLabel, u64> {
        let mut t = self.folded.clone();
        for (l, h) in self.current.labels.iter().zip(self.current.hits.iter()) {
            *t.entry(l.clone()).or_default() += h.get();
        }
        t
    }
}

/// One pipeline's counters (one per poll loop).
#[derive(Debug)]
pub struct Counters {
    /// Per zone + 1; index 0 is traffic of no port (malformed frames,
    /// uplink frames for no port).
    pub ports: Box<[PortCounters]>,
    pub rules: ArcSwap<RuleBook>,
    /// Frames the flow cache could hold that took a recorded route (hits)
    /// and that the pipeline decided from scratch (misses).
    pub flow_cache_hits: Counter,
    pub flow_cache_misses: Counter,
}

impl Default for Counters {
    fn default() -> Self {
        Counters {
            ports: (0..=MAX_PORTS).map(|_| PortCounters::default()).collect(),
            rules: ArcSwap::from_pointee(RuleBook { current: Arc::new(RuleHits::new(0, Arc::from([]))), folded: BTreeMap::new() }),
            flow_cache_hits: Counter::default(),
            flow_cache_misses: Counter::default(),
        }
    }
}

impl Counters {
    /// Zeroes a zone's counters: its port went away, and the zone may be
    /// given to another port.
    pub fn reset_zone(&self, zone: u16) {
        if let Some(p) = self.ports.get(usize::from(zone) + 1) {
            p.reset();
        }
    }

    /// Publishes `next` as the current rule-hit array, folding the hits of
    /// the one it replaces by label. Called by the writer, between batches.
    pub fn publish_rules(&self, next: Arc<RuleHits>) {
        // Rules of the replaced plan that never hit are not kept.
        let mut folded = self.rules.load().totals();
        folded.retain(|_, n| *n > 0);
        self.rules.store(Arc::new(RuleBook { current: next, folded }));
    }
}

/// Upper bounds of the packets-per-batch histogram buckets.
pub const BATCH_BUCKETS: [u64; 7] = [1, 2, 4, 8, 16, 32, 64];

/// The connection table's event totals, copied from the table by its loop.
pub const CONNTRACK_EVENTS: [(&str, &str); 7] = [
    ("created", "flows created"),
    ("expired", "flows that timed out"),
    ("evicted", "unassured flows evicted to make room"),
    ("refused_full", "new flows refused because the table or the port's share was full"),
    ("invalid", "packets invalid for their flow's state"),
    ("revalidated", "flows re-judged after a policy change"),
    ("revalidation_removed", "flows removed because the new policy denies them"),
];

/// One AF_XDP socket: its mode and the kernel's ring statistics
/// (`XDP_STATISTICS`), refreshed by the loop about once a second.
#[derive(Debug)]
pub struct SocketStats {
    pub interface: String,
    pub queue: u32,
    pub native: bool,
    pub zero_copy: bool,
    /// rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full,
    /// rx_fill_ring_empty_descs, tx_ring_empty_descs.
    pub kernel: [Counter; 6],
    /// Frames dropped because this socket's tx ring was full.
    pub tx_full: Counter,
}

pub const KERNEL_STATS: [(&str, &str); 6] = [
    ("rx_dropped", "frames the kernel dropped on receive for reasons other than a full ring"),
    ("rx_invalid_descs", "invalid descriptors on the rx side"),
    ("tx_invalid_descs", "invalid descriptors on the tx ring"),
    ("rx_ring_full", "frames dropped because the rx ring was full"),
    ("rx_fill_ring_empty", "times the fill ring was empty when a frame arrived"),
    ("tx_ring_empty", "times the kernel found the tx ring empty"),
];

/// The state of one interface a loop has sockets on (or should have).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkState {
    pub interface: String,
    /// The port whose interface it is; `None` for the uplink.
    pub port: Option<String>,
    /// Whether its sockets are open.
    pub up: bool,
    /// Why not, when not.
    pub reason: String,
}

/// A poll loop's own counters, beside its pipeline's.
#[derive(Debug)]
pub struct LoopStats {
    pub index: usize,
    pub core: usize,
    pub pipeline: Arc<Counters>,
    pub batches: Counter,
    /// Non-cumulative counts per [`BATCH_BUCKETS`] bucket.
    pub batch_sizes: [Counter; BATCH_BUCKETS.len()],
    pub batch_packets: Counter,
    pub busy: Counter,
    pub idle: Counter,
    /// Copies (floods, handed-over frames) that found no free UMEM frame.
    pub copy_failed: Counter,
    /// Frames handed to other loops, dropped because the target's inbox
    /// was full, and taken from this loop's inbox.
    pub handover_sent: Counter,
    pub handover_dropped: Counter,
    pub handover_received: Counter,
    pub conntrack: [Counter; CONNTRACK_EVENTS.len()],
    /// The flows this loop's table holds at most (its share of the host's
    /// capacity).
    pub conntrack_capacity: Counter,
    /// Live flows per zone.
    pub conntrack_entries: Box<[AtomicU32]>,
    pub sockets: ArcSwap<Vec<Arc<SocketStats>>>,
    /// The state of its interfaces, as of its last look.
    pub links: ArcSwap<Vec<LinkState>>,
}

impl LoopStats {
    pub fn new(index: usize, core: usize, pipeline: Arc<Counters>) -> LoopStats {
        LoopStats {
            index,
            core,
            pipeline,
            batches: Counter::default(),
            batch_sizes: Default::default(),
            batch_packets: Counter::default(),
            busy: Counter::default(),
            idle: Counter::default(),
            copy_failed: Counter::default(),
            handover_sent: Counter::default(),
            handover_dropped: Counter::default(),
            handover_received: Counter::default(),
            conntrack: Default::default(),
            conntrack_capacity: Counter::default(),
            conntrack_entries: (0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect(),
            sockets: ArcSwap::from_pointee(Vec::new()),
            links: ArcSwap::from_pointee(Vec::new()),
        }
    }

    /// Counts one batch of `n` packets.
    #[inline]
    pub fn batch(&self, n: usize) {
        self.batches.add(1);
        self.batch_packets.add(n as u64);
        let b = BATCH_BUCKETS.iter().position(|&le| n as u64 <= le).unwrap_or(BATCH_BUCKETS.len() - 1);
        self.batch_sizes[b].add(1);
    }
}

/// The control plane's counters: reloads and the configuration in force.
#[derive(Debug, Default)]
pub struct ControlStats {
    pub generation: AtomicU64,
    /// Unix time of the last successful load, in milliseconds.
    pub loaded_at_ms: AtomicU64,
    pub reloads_ok: AtomicU64,
    pub reloads_failed: AtomicU64,
    /// Settings the configuration in force changes that take effect only
    /// at the next start (see `run::restart_needed`); written by reloads,
    /// read by the metrics endpoint and `ctl status`, never by a loop.
    pub needs_restart: std::sync::Mutex<Vec<String>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_new_rules_folds_the_old_hits_by_label() {
        let label = |g: &str, i| RuleLabel { group: Arc::from(g), direction: "ingress", index: i, action: "allow" };
        let c = Counters::default();
        let first = Arc::new(RuleHits::new(1, Arc::from([label("sg-a", 0), label("sg-a", 1)])));
        c.publish_rules(Arc::clone(&first));
        first.hits[1].add(5);
        // The next plan drops rule 0 and keeps rule 1 under the same label.
        let second = Arc::new(RuleHits::new(2, Arc::from([label("sg-a", 1), label("sg-b", 0)])));
        c.publish_rules(Arc::clone(&second));
        second.hits[0].add(2);
        let t = c.rules.load().totals();
        assert_eq!(t.get(&label("sg-a", 1)), Some(&7));
        assert_eq!(t.get(&label("sg-b", 0)), Some(&0), "current rules are listed at zero");
        assert_eq!(t.get(&label("sg-a", 0)), None, "a rule with no hits in a past plan is not kept");
    }

    #[test]
    fn batch_sizes_land_in_their_buckets() {
        let s = LoopStats::new(0, 0, Arc::new(Counters::default()));
        for n in [1, 2, 3, 64, 64, 200] {
            s.batch(n);
        }
        let got: Vec<u64> = s.batch_sizes.iter().map(Counter::get).collect();
        assert_eq!(got, [1, 1, 1, 0, 0, 0, 3]);
        assert_eq!(s.batch_packets.get(), 334);
    }
}
