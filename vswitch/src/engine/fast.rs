//! A poll loop's side of the XDP fast path (`port/xdp/bpf.rs`): which of
//! its flows the interfaces' programs forward, and what they forwarded.
//!
//! - **Offered**: a UDP frame the pipeline passed as established by its
//!   recorded route (`Pipeline::fast_candidate`), unicast between two of
//!   this loop's sockets, whose checksum the loop did not have to finish
//!   (the program cannot), toward an interface that takes redirected
//!   frames (a tap; any with `fast_path = "on"`). Its key is put in the
//!   flow map with this loop's current generation.
//! - **Retired at once** by a new plan: the loop moves its generation on
//!   (one map write, after which the programs take none of its flows) and
//!   then deletes them, as the flow cache forgets its routes. So are they
//!   when one of the loop's interfaces goes away (a VM's tap deleted and
//!   made again has a new index, which the flows sent to it do not know).
//! - **Synced** every [`SYNC_MS`], a slice of flows per iteration: what
//!   the programs counted in each flow's slot of the counter array since
//!   the last sync (read from memory, no system call) is accounted to its
//!   connection entries and counters (`Pipeline::fast_account`), and a flow
//!   whose route or entries are gone, or whose entries would lapse before
//!   the next sync, is taken out: its frames come to the loop again, which
//!   judges them and lets the connection lapse on time.
//!
//! At most [`PER_LOOP`] flows per loop, each with a counter slot of the
//! loop's own range; flows past it stay with the loop. A slot freed is
//! reused last (first in, first out), long after any frame the programs
//! were forwarding for its old flow. Nothing here runs per forwarded frame.

use std::collections::VecDeque;

use hashbrown::HashSet;

use sgswitch_conntrack::{Now, PacketInfo};

use crate::datapath::plan::Plan;
use crate::engine::stats::LoopStats;
use crate::packet::Pipeline;
use crate::packet::flowcache::FlowKey;
use crate::port::xdp::bpf::{FastKey, FastMaps, FastValue};

/// How often each flow is synced, in ms: the longest a connection entry's
/// last-seen time lags its flow's last frame, and how far ahead a flow
/// must stay ready to be kept.
pub const SYNC_MS: u64 = 250;
/// Flows one loop gives the programs at most.
pub const PER_LOOP: usize = 4096;
/// Flows synced per loop iteration: while the loop accounts them it does
/// not poll its queues, and the kernel's receive work sharing its core
/// waits. When each flow cost a system call, 256 a slice put sgswitch's
/// p99 latency at 101-226 µs where the programs alone measured 18-64, and
/// 16 at 33-89; read from memory, a flow costs its accounting only.
const SLICE: usize = 64;

#[derive(Debug)]
struct Flow {
    key: FastKey,
    cache: FlowKey,
    info: PacketInfo,
    /// Its counter slot, and the slot's counts at the last sync.
    slot: u32,
    packets: u64,
    bytes: u64,
}

/// One loop's fast-path flows.
#[derive(Debug)]
pub struct Fast {
    maps: &'static FastMaps,
    owner: u32,
    generation: u32,
    /// The plan its flows were judged under (0: none yet).
    plan: u64,
    flows: Vec<Flow>,
    keys: HashSet<FastKey>,
    /// The loop's counter slots not in use, the longest free first.
    free: VecDeque<u32>,
    /// Where the sync in progress is, when it started, how long the last
    /// one took, and when the next one starts.
    cursor: usize,
    started_ms: u64,
    last_cycle_ms: u64,
    due_ms: u64,
}

impl Fast {
    /// Loop `owner`'s fast path, with room for [`PER_LOOP`] flows
    /// (allocated now) and the counter slots of its range (as many of
    /// them as the array has: the map is sized to the loops).
    pub fn new(maps: &'static FastMaps, owner: usize) -> Fast {
        Fast {
            maps,
            owner: u32::try_from(owner).unwrap_or(u32::MAX),
            generation: 0,
            plan: 0,
            flows: Vec::with_capacity(PER_LOOP),
            keys: HashSet::with_capacity(PER_LOOP),
            free: slots_of(owner, maps.slots()).collect(),
            cursor: 0,
            started_ms: 0,
            last_cycle_ms: 0,
            due_ms: 0,
        }
    }

    /// Retires every flow judged under another plan than `plan`.
    pub fn adopt(&mut self, plan: u64) {
        if plan != self.plan {
            self.plan = plan;
            self.retire();
        }
    }

    /// Retires every flow: the programs take none from now on (a plan
    /// changed, or an interface went away, and with it the index a flow
    /// was sent to).
    pub fn retire(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if let Err(e) = self.maps.set_generation(self.owner, self.generation) {
            // The programs could still take the old flows: delete them one
            // by one below, the only way left.
            tracing::warn!("fast path: loop {}'s generation could not be moved on: {e}", self.owner);
        }
        for f in self.flows.drain(..) {
            self.maps.remove(&f.key);
            self.free.push_back(f.slot);
        }
        self.keys.clear();
        self.cursor = 0;
    }

    /// Gives the programs the flow of a frame the pipeline passed
    /// (`cache`, `info`: its candidate), which arrived on `in_ifindex` as
    /// `frame` and goes out of `out_ifindex`. Nothing if it is not of the
    /// program's shape, already there, or this loop's share is full.
    pub fn offer(&mut self, in_ifindex: u32, frame: &[u8], out_ifindex: u32, cache: FlowKey, info: PacketInfo, stats: &LoopStats) {
        let Some(key) = FastKey::of(in_ifindex, frame) else { return };
        if self.keys.contains(&key) {
            return;
        }
        // Free slots and flows together are the loop's range: a free slot is
        // room for a flow.
        let Some(slot) = self.free.pop_front() else {
            stats.fast_full.add(1);
            return;
        };
        // Counted from what the slot holds now.
        let (packets, bytes) = self.maps.counts(slot);
        if self.maps.put(&key, &FastValue::new(out_ifindex, self.owner, self.generation, slot)).is_err() {
            self.free.push_front(slot);
            stats.fast_full.add(1);
            return;
        }
        self.keys.insert(key);
        self.flows.push(Flow { key, cache, info, slot, packets, bytes });
        stats.fast_flows.set(self.flows.len() as u64);
    }

    /// When (ms) [`Fast::sync`] next has work: now while a sync is under
    /// way (a slice per iteration), else when the next one starts.
    pub fn due_ms(&self) -> u64 {
        if self.cursor > 0 { 0 } else { self.due_ms }
    }

    /// Syncs a slice of the flows when a sync is due (see the module).
    pub fn sync<H: Copy>(&mut self, pipe: &mut Pipeline<H>, plan: &Plan, now: Now, stats: &LoopStats) {
        if now.0 < self.due_ms {
            return;
        }
        if self.cursor == 0 {
            self.started_ms = now.0;
        }
        // A flow is visited again after the pause and a whole sync: kept
        // only if its entries are still ready then (a sync that took longer
        // than the last one is allowed for twice over).
        let until = Now(now.0 + SYNC_MS + 2 * self.last_cycle_ms.max(SYNC_MS / 2));
        let mut end = (self.cursor + SLICE).min(self.flows.len());
        // The slice's flow cache slots, then its connection entries, into
        // the cache before any is used: their misses overlap instead of
        // one after the other (each flow's cost was nearly all misses).
        let slice = &self.flows[self.cursor..end];
        for f in slice {
            pipe.fast_warm_route(&f.cache);
        }
        for f in slice {
            pipe.fast_warm_entries(plan, &f.cache);
        }
        let mut i = self.cursor;
        while i < end {
            let f = &mut self.flows[i];
            let (p, b) = self.maps.counts(f.slot);
            let (packets, bytes) = (p.wrapping_sub(f.packets), b.wrapping_sub(f.bytes));
            (f.packets, f.bytes) = (p, b);
            stats.fast_packets.add(packets);
            stats.fast_bytes.add(bytes);
            if pipe.fast_account(plan, &f.cache, &f.info, (packets, bytes), now, until) {
                i += 1;
            } else {
                // Taken out: the last flow takes its place (synced next,
                // if it was past the slice).
                self.maps.remove(&f.key);
                self.keys.remove(&f.key);
                self.free.push_back(f.slot);
                self.flows.swap_remove(i);
                end = end.min(self.flows.len());
            }
        }
        self.cursor = end;
        if self.cursor >= self.flows.len() {
            self.cursor = 0;
            self.last_cycle_ms = now.0.saturating_sub(self.started_ms);
            self.due_ms = now.0 + SYNC_MS;
        }
        stats.fast_flows.set(self.flows.len() as u64);
    }
}

/// Loop `owner`'s counter slots in an array of `slots`: its range of
/// [`PER_LOOP`], cut at the array's end (the map is sized to the loops,
/// at most `bpf::FLOWS`: past that, loops have fewer or none).
fn slots_of(owner: usize, slots: u32) -> impl Iterator<Item = u32> {
    let from = u32::try_from(owner.saturating_mul(PER_LOOP)).unwrap_or(u32::MAX);
    let to = u32::try_from(owner.saturating_add(1).saturating_mul(PER_LOOP)).unwrap_or(u32::MAX).min(slots);
    from..to.max(from)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_loop_counts_in_its_own_slots_within_the_array() {
        let per = u32::try_from(PER_LOOP).expect("per loop");
        let all = 4 * per;
        let ranges: Vec<(u32, u32, usize)> = (0..5)
            .map(|o| {
                let s: Vec<u32> = slots_of(o, all).collect();
                (s.first().copied().unwrap_or(0), s.last().copied().unwrap_or(0), s.len())
            })
            .collect();
        assert_eq!(ranges[0], (0, per - 1, PER_LOOP));
        assert_eq!(ranges[3], (3 * per, all - 1, PER_LOOP));
        assert_eq!(ranges[4].2, 0, "a loop past the array has no slot");
        // An array cut short leaves the last loop what is left.
        assert_eq!(slots_of(1, per + 10).count(), 10);
        assert_eq!(slots_of(usize::MAX, all).count(), 0);
    }
}
