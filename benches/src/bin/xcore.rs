//! How far apart two cores are: the round trip of a cache line between
//! them, for `benches/e2e.sh` to record beside each point.
//!
//! `xcore A B [--trips N]`: a thread on core A and one on core B pass a
//! counter back and forth through one cache line N times (default
//! 100,000); prints `{"rtt_ns":R}`, the median of five runs' mean round
//! trip in nanoseconds.
//!
//! Why: this machine is a guest whose two vCPUs the host places near each
//! other at times (a round trip of about 60 ns) and apart at others (about
//! 340 ns), for seconds to minutes at a time, while a core's own speed
//! stays the same. An AF_XDP frame in copy mode crosses between the
//! generator's core and the system's several times (the generator's skb,
//! the veth rings, the completion rings and their locks, the sink's wake),
//! so the kernel-bound systems' rates follow the placement, and a user
//! space-bound one's (Open vSwitch's) hardly; see `docs/bench/README.md`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::Instant;

#[repr(align(128))]
struct Line(AtomicU64);

fn pin(core: usize) {
    if !core_affinity::set_for_current(core_affinity::CoreId { id: core }) {
        eprintln!("xcore: cannot run on core {core}");
        std::process::exit(2);
    }
}

/// The mean round trip of `trips` passes, in ns. Each side pins itself
/// and then meets the other at a barrier (a sleep, not a spin) before the
/// first pass: run at real-time priority, a thread spinning on a core
/// that another still has to leave would never let it run.
fn once(a: usize, b: usize, trips: u64) -> f64 {
    let line = Arc::new(Line(AtomicU64::new(0)));
    let met = Arc::new(Barrier::new(2));
    let (other, other_met) = (Arc::clone(&line), Arc::clone(&met));
    let peer = std::thread::spawn(move || {
        pin(b);
        other_met.wait();
        for i in 0..trips {
            while other.0.load(Ordering::Acquire) != 2 * i + 1 {
                std::hint::spin_loop();
            }
            other.0.store(2 * i + 2, Ordering::Release);
        }
    });
    let leader = std::thread::spawn(move || {
        pin(a);
        met.wait();
        // The first pass, untimed: both sides are spinning on their cores.
        line.0.store(1, Ordering::Release);
        while line.0.load(Ordering::Acquire) != 2 {
            std::hint::spin_loop();
        }
        let t = Instant::now();
        for i in 1..trips {
            line.0.store(2 * i + 1, Ordering::Release);
            while line.0.load(Ordering::Acquire) != 2 * i + 2 {
                std::hint::spin_loop();
            }
        }
        t.elapsed()
    });
    let took = leader.join().expect("the leading thread ends");
    peer.join().expect("the peer thread ends");
    took.as_secs_f64() * 1e9 / (trips - 1) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let core = |i: usize| args.get(i).and_then(|c| c.parse::<usize>().ok());
    let (Some(a), Some(b)) = (core(1), core(2)) else {
        eprintln!("usage: xcore A B [--trips N]");
        std::process::exit(1);
    };
    let trips: u64 =
        args.iter().position(|x| x == "--trips").and_then(|i| args.get(i + 1)).map_or(100_000, |n| n.parse().expect("--trips N")).max(2);
    let mut runs: Vec<f64> = (0..5).map(|_| once(a, b, trips)).collect();
    runs.sort_by(f64::total_cmp);
    println!("{}", serde_json::json!({"rtt_ns": runs[2].round()}));
}
