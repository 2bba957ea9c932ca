//! The compiled classifier's cost per lookup, side by side with the
//! reference evaluator (and DPDK's rte_acl when built with `--features
//! rte-acl`), on the same rules and packets in one run.
//!
//! `cargo run --release -p sgswitch-benches --bin classify -- --json [--quick]`
//! prints one JSON object per line and rule set, with `set`, `rules`,
//! `packets`, `ns_median`, `ns_p99` (single lookups, timer overhead
//! subtracted), `ns_batch` (mean per packet through `classify_batch` over
//! all packets), `reference_ns_median`, `rte_acl_ns_median` (null without
//! DPDK), `memory_bytes`, `build_ms`, and the rte_acl figures; then one line
//! for the 100-port host (`"set":"host-100x1000"`: `publish_ms` from a
//! loaded configuration to a published snapshot).
//!
//! Sets: security-group shape at 10, 100 and 1,000 rules; the twelve
//! ClassBench families at 1k and 10k and `ipc1_50k`, with their traces
//! where present and synthetic packets drawn from the rules otherwise
//! (1,000,000; 100,000 with `--quick`, which also skips the 10k and 50k
//! sets).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use sgswitch_benches::classbench::{self, FAMILIES};
use sgswitch_benches::sgshape;
use sgswitch_filter::{By, Compiled, Decision, Direction, Key, Packet, Policy, Verdict};

/// Median cost of reading the clock twice, subtracted from single-lookup
/// timings.
fn timer_overhead() -> u64 {
    let mut v: Vec<u64> = (0..100_000)
        .map(|_| {
            let t = Instant::now();
            ns(t)
        })
        .collect();
    v.sort_unstable();
    v[v.len() / 2]
}

fn ns(t: Instant) -> u64 {
    u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn pct(v: &mut [u64], q: usize) -> u64 {
    v.sort_unstable();
    v.get((v.len() * q / 100).min(v.len().saturating_sub(1))).copied().unwrap_or(0)
}

struct Row {
    set: String,
    rules: usize,
    packets: usize,
    ns_median: u64,
    ns_p99: u64,
    ns_batch: f64,
    reference_ns_median: u64,
    memory_bytes: usize,
    build_ms: f64,
    rte: Option<RteRow>,
}

#[derive(Default)]
struct RteRow {
    ns_median: u64,
    ns_batch: f64,
    memory_bytes: usize,
    build_ms: f64,
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or_else(|| "null".into(), |x| x.to_string())
}

impl Row {
    fn print(&self, json: bool) {
        let r = self.rte.as_ref();
        if json {
            println!(
                "{{\"set\":\"{}\",\"rules\":{},\"packets\":{},\"ns_median\":{},\"ns_p99\":{},\"ns_batch\":{:.1},\"reference_ns_median\":{},\"rte_acl_ns_median\":{},\"rte_acl_ns_batch\":{},\"ratio_to_rte_acl\":{},\"memory_bytes\":{},\"rte_acl_memory_bytes\":{},\"build_ms\":{:.3},\"rte_acl_build_ms\":{}}}",
                self.set,
                self.rules,
                self.packets,
                self.ns_median,
                self.ns_p99,
                self.ns_batch,
                self.reference_ns_median,
                opt(r.map(|r| r.ns_median)),
                opt(r.map(|r| format!("{:.1}", r.ns_batch))),
                opt(r.map(|r| format!("{:.2}", self.ns_batch / r.ns_batch.max(0.001)))),
                self.memory_bytes,
                opt(r.map(|r| r.memory_bytes)),
                self.build_ms,
                opt(r.map(|r| format!("{:.3}", r.build_ms))),
            );
        } else {
            println!(
                "{:<14} {:>6} rules  median {:>4} ns  p99 {:>5} ns  batch {:>6.1} ns  reference {:>7} ns  rte_acl {:>6} ns  memory {:>9} B  build {:>8.3} ms",
                self.set,
                self.rules,
                self.ns_median,
                self.ns_p99,
                self.ns_batch,
                self.reference_ns_median,
                opt(r.map(|r| format!("{:.1}", r.ns_batch))),
                self.memory_bytes,
                self.build_ms
            );
        }
    }
}

/// Measures the compiled ingress table of port 0 of `policy` on `packets`.
fn measure(set: &str, rules: usize, policy: Policy, packets: &[Packet], overhead: u64, reference_sample: usize) -> Row {
    let policy = Arc::new(policy);
    let t0 = Instant::now();
    let compiled = Compiled::new(policy.clone(), 1);
    let build_ms = ns(t0) as f64 / 1e6;
    let table = compiled.port(0).expect("one port").get(Direction::Ingress);
    let keys: Vec<Key> = packets.iter().map(Key::of).collect();
    // Warm up, then single lookups, each timed.
    let mut sink = 0u32;
    for k in &keys {
        sink ^= table.lookup(black_box(k)).unwrap_or(0);
    }
    let mut single: Vec<u64> = keys
        .iter()
        .map(|k| {
            let t = Instant::now();
            black_box(table.lookup(black_box(k)));
            ns(t).saturating_sub(overhead)
        })
        .collect();
    // The batch API over everything, as the datapath calls it.
    let mut out = vec![Decision { verdict: Verdict::Deny, by: By::Default }; 64];
    let t = Instant::now();
    for chunk in keys.chunks(64) {
        table.classify_batch(black_box(chunk), &mut out);
        black_box(&out);
    }
    let ns_batch = ns(t) as f64 / keys.len().max(1) as f64;
    let step = (packets.len() / reference_sample.max(1)).max(1);
    let mut reference: Vec<u64> = packets
        .iter()
        .step_by(step)
        .map(|p| {
            let t = Instant::now();
            black_box(policy.evaluate(0, black_box(p)));
            ns(t).saturating_sub(overhead)
        })
        .collect();
    black_box(sink);
    Row {
        set: set.to_string(),
        rules,
        packets: packets.len(),
        ns_median: pct(&mut single, 50),
        ns_p99: pct(&mut single, 99),
        ns_batch,
        reference_ns_median: pct(&mut reference, 50),
        memory_bytes: table.memory_bytes(),
        build_ms,
        rte: None,
    }
}

#[cfg(feature = "rte-acl")]
fn with_rte(mut row: Row, rules: &[classbench::CbRule], packets: &[classbench::CbPacket], overhead: u64) -> Result<Row, String> {
    let m = sgswitch_benches::rte_acl::measure(rules, packets, overhead)?;
    row.rte = Some(RteRow { ns_median: m.ns_median, ns_batch: m.ns_batch, memory_bytes: m.memory_bytes, build_ms: m.build_ms });
    Ok(row)
}

#[cfg(not(feature = "rte-acl"))]
fn with_rte(row: Row, _: &[classbench::CbRule], _: &[classbench::CbPacket], _: u64) -> Result<Row, String> {
    Ok(row)
}

fn classbench_row(set: &str, synthetic: usize, overhead: u64, reference_sample: usize) -> Result<Row, String> {
    let rules = classbench::parse_rules(&classbench::read(set)?)?;
    let trace = match classbench::read(&format!("{set}_trace")) {
        Ok(text) => classbench::parse_trace(&text)?,
        Err(_) => classbench::synthetic(&rules, synthetic, 7),
    };
    let packets: Vec<Packet> = trace.iter().map(classbench::packet).collect();
    let row = measure(set, rules.len(), Policy::new(classbench::config(&rules)), &packets, overhead, reference_sample);
    with_rte(row, &rules, &trace, overhead)
}

/// From a loaded configuration of 100 ports x 1,000 rules (no two ports
/// sharing a table) to a published snapshot.
fn host_row(json: bool) {
    let cfg = sgshape::host_config(100, 1000, 11);
    let published = arc_swap::ArcSwap::from_pointee(Compiled::new(Arc::new(Policy::new(sgshape::config(10, 1))), 0));
    let t = Instant::now();
    let compiled = Compiled::new(Arc::new(Policy::new(cfg)), 1);
    let (tables, memory) = (compiled.distinct_tables(), compiled.memory_bytes());
    published.store(Arc::new(compiled));
    let ms = ns(t) as f64 / 1e6;
    if json {
        println!(
            "{{\"set\":\"host-100x1000\",\"ports\":100,\"rules\":100000,\"tables\":{tables},\"memory_bytes\":{memory},\"publish_ms\":{ms:.1}}}"
        );
    } else {
        println!("host-100x1000  {tables} tables, {memory} B, loaded -> published in {ms:.1} ms");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json = args.iter().any(|a| a == "--json");
    let synthetic = if quick { 100_000 } else { 1_000_000 };
    let reference_sample = if quick { 300 } else { 2_000 };
    let overhead = timer_overhead();
    if !json {
        println!("timer overhead {overhead} ns (subtracted from single-lookup figures)");
    }
    for n in [10, 100, 1000] {
        let cfg = sgshape::config(n, 42);
        let packets = sgshape::packets(&cfg, synthetic, 43);
        measure(&format!("sg_{n}"), n, Policy::new(cfg), &packets, overhead, reference_sample).print(json);
    }
    let mut sets: Vec<String> = FAMILIES.iter().map(|f| format!("{f}_1k")).collect();
    if !quick {
        sets.extend(FAMILIES.iter().map(|f| format!("{f}_10k")));
        sets.push("ipc1_50k".into());
    }
    for set in &sets {
        match classbench_row(set, synthetic, overhead, reference_sample) {
            Ok(row) => row.print(json),
            Err(e) => {
                eprintln!("{set}: {e}");
                std::process::exit(2);
            }
        }
    }
    host_row(json);
}
