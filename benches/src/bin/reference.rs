//! The reference evaluator's cost per decision: the baseline the compiled
//! classifier (issue 4) is measured against.
//!
//! `cargo run --release -p sgswitch-benches --bin reference -- [--quick]`
//! prints one JSON object per line and rule set:
//! `{"set":…,"rules":…,"packets":…,"reference_ns_median":…,"reference_ns_p99":…}`.
//! Cases: the twelve ClassBench 1k sets with their traces; without
//! `--quick` also the three 10k sets that have traces.

use std::hint::black_box;
use std::time::Instant;

use sgswitch_benches::classbench::{self, FAMILIES};
use sgswitch_filter::Policy;

fn run(set: &str, trace_name: &str, max_packets: usize) -> Result<(), String> {
    let rules = classbench::parse_rules(&classbench::read(set)?)?;
    let trace = classbench::parse_trace(&classbench::read(trace_name)?)?;
    let policy = Policy::new(classbench::config(&rules));
    let packets: Vec<_> = trace.iter().take(max_packets).map(classbench::packet).collect();
    let mut ns: Vec<u64> = Vec::with_capacity(packets.len());
    for p in &packets {
        let t = Instant::now();
        black_box(policy.evaluate(0, black_box(p)));
        ns.push(u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX));
    }
    ns.sort_unstable();
    let pct = |q: usize| ns[(ns.len() * q / 100).min(ns.len() - 1)];
    println!(
        "{{\"set\":\"{set}\",\"rules\":{},\"packets\":{},\"reference_ns_median\":{},\"reference_ns_p99\":{}}}",
        rules.len(),
        ns.len(),
        pct(50),
        pct(99)
    );
    Ok(())
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let max = if quick { 2_000 } else { usize::MAX };
    let mut sets: Vec<(String, String)> = FAMILIES.iter().map(|f| (format!("{f}_1k"), format!("{f}_1k_trace"))).collect();
    if !quick {
        for s in ["acl2_10k", "fw1_10k", "ipc1_10k"] {
            sets.push((s.to_string(), format!("{s}_trace")));
        }
    }
    for (set, trace) in sets {
        if let Err(e) = run(&set, &trace, max) {
            eprintln!("{set}: {e}");
            std::process::exit(2);
        }
    }
}
