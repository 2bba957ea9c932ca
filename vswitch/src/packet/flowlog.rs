//! The flow log of denied packets: one JSON line per denied flow (time,
//! port, direction, 5-tuple, reason, rule), rate-limited and sampled, to a
//! file or stderr.
//!
//! # Design
//! The poll loop's side, [`FlowLog::offer`], runs per denied packet and does
//! a bounded amount of work with no allocation, lock or system call: a
//! direct-mapped table of recently logged flows drops repeats (a flow is
//! logged at most once per `repeat_after` seconds), a sampling counter keeps
//! one flow in `sample`, a token bucket holds the rate to `rate` lines per
//! second with bursts of `burst`, and the record (a `Copy` struct) goes into
//! a bounded lock-free queue ([`crossbeam_queue::ArrayQueue`]). A full
//! queue drops the record and counts it: the datapath never waits for the
//! disk. A writer thread formats and writes the lines
//! (in the operations layer, `ops::flowlog`).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crossbeam_queue::ArrayQueue;
use sgswitch_config::{Direction, FlowLogTo};
use sgswitch_conntrack::Now;

use super::parse::Ip;
use crate::datapath::plan::{PortIdx, Published};
use crate::datapath::stats::Counter;
use crate::datapath::{Outcome, Reason};

/// Records waiting for the writer at most.
const QUEUE: usize = 4096;
/// Slots of the recently-logged table (a power of two).
const SEEN: usize = 4096;

/// One denied packet, as the loop hands it to the writer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    /// Milliseconds since the log's epoch (the loop's clock).
    pub at_ms: u64,
    pub generation: u32,
    pub port: Option<PortIdx>,
    pub direction: Direction,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub reason: Reason,
}

/// What became of denied packets offered to the log.
#[derive(Debug, Default)]
pub struct Stats {
    /// Lines written (by the writer).
    pub written: Counter,
    /// The flow was logged less than `repeat_after` ago.
    pub repeat: Counter,
    /// Not drawn by sampling.
    pub sampled_out: Counter,
    /// Over the rate limit.
    pub rate_limited: Counter,
    /// The writer had fallen behind by a whole queue.
    pub queue_full: Counter,
    /// Write errors (by the writer).
    pub errors: Counter,
}

impl Stats {
    /// (label, counter) pairs of the outcomes, for metrics.
    pub fn outcomes(&self) -> [(&'static str, &Counter); 6] {
        [
            ("written", &self.written),
            ("repeat", &self.repeat),
            ("sampled-out", &self.sampled_out),
            ("rate-limited", &self.rate_limited),
            ("queue-full", &self.queue_full),
            ("write-error", &self.errors),
        ]
    }
}

/// A token bucket in thousandths of a line, on the caller's clock.
#[derive(Clone, Copy, Debug)]
pub struct Limiter {
    /// Lines per second = thousandths per millisecond.
    rate: u64,
    cap: u64,
    tokens: u64,
    last_ms: u64,
}

impl Limiter {
    /// `rate` lines per second, bursts of `burst`; starts full.
    pub fn new(rate: u32, burst: u32) -> Limiter {
        let cap = u64::from(burst.max(1)) * 1000;
        Limiter { rate: u64::from(rate), cap, tokens: cap, last_ms: 0 }
    }

    /// Takes one line's token at `now_ms`, if there is one.
    pub fn take(&mut self, now_ms: u64) -> bool {
        let dt = now_ms.saturating_sub(self.last_ms);
        self.last_ms = self.last_ms.max(now_ms);
        self.tokens = self.tokens.saturating_add(dt.saturating_mul(self.rate)).min(self.cap);
        if self.tokens >= 1000 {
            self.tokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// The poll loop's side of the flow log.
#[derive(Debug)]
pub struct FlowLog {
    queue: Arc<ArrayQueue<Record>>,
    stats: Arc<Stats>,
    limiter: Limiter,
    /// (flow hash | 1, last logged at ms); 0 is an empty slot.
    seen: Box<[(u64, u64)]>,
    repeat_ms: u64,
    sample: u64,
    drawn: u64,
}

/// The writer's side: the queue's consumer and the destination.
#[derive(Debug)]
pub struct Writer {
    queue: Arc<ArrayQueue<Record>>,
    stats: Arc<Stats>,
    to: FlowLogTo,
}

impl FlowLog {
    /// A flow log with the settings of `[flow_log]`.
    pub fn new(cfg: &sgswitch_config::FlowLog) -> (FlowLog, Writer) {
        let queue = Arc::new(ArrayQueue::new(QUEUE));
        let log = FlowLog::feeding(cfg, Arc::clone(&queue));
        let writer = Writer { queue, stats: Arc::clone(&log.stats), to: cfg.to.clone() };
        (log, writer)
    }

    /// A flow log with its own counters that feeds `queue`.
    fn feeding(cfg: &sgswitch_config::FlowLog, queue: Arc<ArrayQueue<Record>>) -> FlowLog {
        FlowLog {
            queue,
            stats: Arc::new(Stats::default()),
            limiter: Limiter::new(cfg.rate, cfg.burst),
            seen: vec![(0, 0); SEEN].into_boxed_slice(),
            repeat_ms: u64::from(cfg.repeat_after) * 1000,
            sample: u64::from(cfg.sample.max(1)),
            drawn: 0,
        }
    }

    /// One flow log per poll loop, all feeding one writer: each loop has
    /// its own counters and its share of the rate and burst (rounded up),
    /// so the host's total stays at what `[flow_log]` says.
    pub fn per_loop(cfg: &sgswitch_config::FlowLog, loops: usize) -> (Vec<FlowLog>, Writer) {
        let loops = u32::try_from(loops.max(1)).unwrap_or(u32::MAX);
        let share = sgswitch_config::FlowLog { rate: cfg.rate.div_ceil(loops), burst: cfg.burst.div_ceil(loops), ..cfg.clone() };
        let (first, writer) = FlowLog::new(&share);
        let rest = (1..loops).map(|_| FlowLog::feeding(&share, Arc::clone(&writer.queue)));
        (std::iter::once(first).chain(rest).collect(), writer)
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Offers a denied packet. Never allocates, locks or blocks.
    pub fn offer(&mut self, now: Now, generation: u32, o: &Outcome, ip: &Ip) {
        let (sport, dport) = ip.ports();
        let h = flow_hash(o.port, ip.proto, ip.src, ip.dst, sport, dport) | 1;
        let slot = &mut self.seen[(h >> 32) as usize & (SEEN - 1)];
        if slot.0 == h && now.0.saturating_sub(slot.1) < self.repeat_ms {
            self.stats.repeat.add(1);
            return;
        }
        self.drawn += 1;
        if self.drawn % self.sample != 0 {
            self.stats.sampled_out.add(1);
            return;
        }
        if !self.limiter.take(now.0) {
            self.stats.rate_limited.add(1);
            return;
        }
        *slot = (h, now.0);
        let r = Record {
            at_ms: now.0,
            generation,
            port: o.port,
            direction: o.direction,
            proto: ip.proto,
            src: ip.src,
            dst: ip.dst,
            sport,
            dport,
            reason: o.reason,
        };
        if self.queue.push(r).is_err() {
            self.stats.queue_full.add(1);
        }
    }
}

/// A cheap mix of a flow's fields (multiply-xorshift).
fn flow_hash(port: Option<PortIdx>, proto: u8, src: IpAddr, dst: IpAddr, sport: u16, dport: u16) -> u64 {
    let bits = |a: IpAddr| match a {
        IpAddr::V4(v) => u128::from(v.to_bits()),
        IpAddr::V6(v) => v.to_bits(),
    };
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    let mut mix = |v: u64| {
        h = (h ^ v).wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 29;
    };
    for a in [bits(src), bits(dst)] {
        let b = a.to_le_bytes();
        for half in [&b[..8], &b[8..]] {
            mix(u64::from_le_bytes(half.try_into().expect("8 bytes")));
        }
    }
    mix(u64::from(sport) << 32 | u64::from(dport) << 16 | u64::from(proto) | (port.map_or(0xffff, |p| p as u64) << 48));
    h
}

/// Formats one record as its JSON line, naming the port and rule by the
/// plan of the record's generation when it is at hand.
pub fn line(r: &Record, epoch_ms: u64, plan: Option<&Published>) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(epoch_ms.saturating_add(r.at_ms));
    let plan = plan.map(|p| &p.plan);
    let port = r.port.and_then(|p| plan.and_then(|pl| pl.port(p))).map(|p| p.id.to_string());
    let rule = match (r.reason, plan) {
        (Reason::Rule(rr), Some(pl)) => Some(pl.policy().rule_name(rr)),
        _ => None,
    };
    let v = serde_json::json!({
        "time": humantime::format_rfc3339_millis(t).to_string(),
        "port": port,
        "direction": r.direction.as_str(),
        "proto": sgswitch_config::protocol_name(Some(r.proto)),
        "src": r.src.to_string(),
        "sport": r.sport,
        "dst": r.dst.to_string(),
        "dport": r.dport,
        "reason": r.reason.as_str(),
        "rule": rule,
        "generation": plan.map_or(u64::from(r.generation), |p| p.shown_generation),
    });
    v.to_string()
}

impl Writer {
    /// Takes the oldest waiting record (the writer thread's loop; tests and
    /// benchmarks drain with it too).
    pub fn pop(&self) -> Option<Record> {
        self.queue.pop()
    }

    /// Where the lines go.
    pub fn to(&self) -> &FlowLogTo {
        &self.to
    }

    /// The counters of what became of the records.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let mut l = Limiter::new(10, 5);
        let first: usize = (0..100).filter(|_| l.take(0)).count();
        assert_eq!(first, 5, "a full bucket allows one burst");
        // Ten lines a second: one per 100 ms, at any offered load.
        let mut got = 0;
        for ms in 1..=2000 {
            for _ in 0..50 {
                got += usize::from(l.take(ms));
            }
        }
        assert_eq!(got, 20);
    }

    #[test]
    fn the_bucket_refills_to_its_burst_only() {
        let mut l = Limiter::new(100, 3);
        assert!(l.take(0) && l.take(0) && l.take(0) && !l.take(0));
        assert_eq!((0..10).filter(|_| l.take(60_000)).count(), 3, "an hour idle still allows one burst");
    }
}
