//! `lint` on a large host: how long the findings take once the
//! configuration is loaded.
//!
//! `cargo run --release -p sgswitch-benches --bin lint -- [--ports N]
//! [--rules N]` builds a host of N ports (default 100), each bound to five
//! groups of its own holding N rules together (default 1,000), and prints
//! one JSON line with `ports`, `rules_per_port`, `findings`, and the best
//! of five runs in milliseconds.

use std::time::Instant;

use sgswitch::tools::lint::lint;
use sgswitch_benches::sgshape;
use sgswitch_filter::Policy;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (ports, rules) = (arg("--ports", 100), arg("--rules", 1000));
    let policy = Policy::new(sgshape::host_config(ports, rules, 7));
    let mut best = f64::MAX;
    let mut findings = 0;
    for _ in 0..5 {
        let t = Instant::now();
        findings = std::hint::black_box(lint(&policy)).len();
        best = best.min(t.elapsed().as_secs_f64() * 1e3);
    }
    println!("{{\"bench\":\"lint\",\"ports\":{ports},\"rules_per_port\":{rules},\"findings\":{findings},\"best_ms\":{best:.1}}}");
}
