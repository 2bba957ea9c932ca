//! The counters the pipeline writes (per port, direction, action and
//! reason; per rule) and the metrics endpoint, the control socket and the
//! shutdown summary read.
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
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwap;

use super::Kind;
use super::plan::{MAX_PORTS, RuleLabel};

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

/// The counters of one port (or of traffic that belongs to no port).
#[derive(Debug, Default)]
pub struct PortCounters {
    /// `[direction: ingress, egress][forwarded?][reason kind]`.
    pub by: [[[Cell; Kind::COUNT]; 2]; 2],
}

impl PortCounters {
    fn reset(&self) {
        for c in self.by.iter().flatten().flatten() {
            c.packets.set(0);
            c.bytes.set(0);
        }
    }
}

/// The hits of one plan's rules, by rule slot ([`crate::datapath::plan::Plan::rule_slot`]).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publishing_new_rules_folds_the_old_hits_by_label() {
        let label = |g: &str, i| RuleLabel {
            group: Arc::from(g),
            direction: "ingress",
            name: crate::datapath::plan::RuleName::Index(i),
            action: "allow",
        };
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
}
