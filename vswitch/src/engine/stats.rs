//! A poll loop's own counters and the state of its sockets and interfaces,
//! beside its pipeline's ([`crate::datapath::stats`]): one writer each, the
//! loop; read by the operator's endpoints.

use std::sync::Arc;
use std::sync::atomic::AtomicU32;

use arc_swap::ArcSwap;

use crate::datapath::plan::MAX_PORTS;
use crate::datapath::stats::{Counter, Counters};

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
    /// A port's socket (else the uplink's).
    pub port: bool,
    pub native: bool,
    pub zero_copy: bool,
    /// Whether the loop drives the queue's receive work (preferred busy
    /// polling): a `BusyPolled` as its number, refreshed with the kernel's
    /// statistics.
    pub busy_poll: std::sync::atomic::AtomicU8,
    /// Why the socket runs in its mode (the modes refused first; why it is
    /// not busy-polled).
    pub why: String,
    /// rx_dropped, rx_invalid_descs, tx_invalid_descs, rx_ring_full,
    /// rx_fill_ring_empty_descs, tx_ring_empty_descs.
    pub kernel: [Counter; 6],
    /// Frames dropped because this socket's tx ring was full.
    pub tx_full: Counter,
    /// TCP and UDP checksums the VM left for the host and the loop
    /// finished ([`crate::packet::offload`]); ports only.
    pub checksums_finished: Counter,
    /// A vhost-user port's connection (then this is no AF_XDP socket, and
    /// `kernel` holds the port's own ring drops).
    pub vhost: Option<Arc<crate::port::vhost::Shared>>,
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
    /// The XDP fast path: flows this loop gives the programs now, what
    /// they forwarded of them (as of the last sync), and flows it could
    /// not give them (its share, or the map, full).
    pub fast_flows: Counter,
    pub fast_packets: Counter,
    pub fast_bytes: Counter,
    pub fast_full: Counter,
    pub conntrack: [Counter; CONNTRACK_EVENTS.len()],
    /// The flows this loop's table holds at most (its share of the host's
    /// capacity).
    pub conntrack_capacity: Counter,
    /// Live flows per zone.
    pub conntrack_entries: Box<[AtomicU32]>,
    pub sockets: ArcSwap<Vec<Arc<SocketStats>>>,
    /// The state of its interfaces, as of its last look.
    pub links: ArcSwap<Vec<LinkState>>,
    /// The NAPI threads that run at idle priority for it (their names).
    pub napi_yielded: ArcSwap<Vec<String>>,
    /// Times it paused, busy, to give those threads a turn.
    pub stepped_aside: Counter,
    /// What its core does when idle (`[datapath] core_idle`), set once at
    /// the start.
    pub core_idle: std::sync::OnceLock<crate::port::xdp::idle::Idle>,
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
            fast_flows: Counter::default(),
            fast_packets: Counter::default(),
            fast_bytes: Counter::default(),
            fast_full: Counter::default(),
            conntrack: Default::default(),
            conntrack_capacity: Counter::default(),
            conntrack_entries: (0..MAX_PORTS).map(|_| AtomicU32::new(0)).collect(),
            sockets: ArcSwap::from_pointee(Vec::new()),
            links: ArcSwap::from_pointee(Vec::new()),
            napi_yielded: ArcSwap::from_pointee(Vec::new()),
            stepped_aside: Counter::default(),
            core_idle: std::sync::OnceLock::new(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
