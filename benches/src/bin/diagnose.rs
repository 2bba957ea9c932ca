//! `diagnose` on a large host: how long the answer takes once the plan is
//! built (the CLI loads the directory first; `ctl diagnose` answers from
//! the running switch's plan).
//!
//! `cargo run --release -p sgswitch-benches --bin diagnose -- [--ports N]
//! [--rules N]` builds a host of N ports (default 100), each bound to five
//! groups of its own holding N rules together (default 1,000), and prints
//! one JSON line per case with `ports`, `rules_per_port`, `case` (`one`: a
//! single path; `services`: the usual services both ways, twelve paths),
//! `runs`, and the median and 99th percentile in microseconds.

use std::time::Instant;

use sgswitch::datapath::plan::{Plan, Zones};
use sgswitch::tools::diagnose::{Ask, diagnose};
use sgswitch_benches::sgshape;

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn main() {
    let (ports, rules) = (arg("--ports", 100), arg("--rules", 1000));
    let cfg = sgshape::host_config(ports, rules, 7);
    let (plan, _) = Plan::build(cfg, &mut Zones::default(), 1).expect("a plan");
    let cases = [
        ("one", Ask { from: "eni-000".into(), to: "eni-001".into(), proto: Some("tcp".into()), port: Some(443), ..Ask::default() }),
        ("services", Ask { from: "eni-000".into(), to: "eni-001".into(), ..Ask::default() }),
    ];
    for (case, ask) in cases {
        const RUNS: usize = 300;
        let mut us: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                let paths = diagnose(&plan, &ask).expect("diagnose");
                std::hint::black_box(paths);
                t.elapsed().as_secs_f64() * 1e6
            })
            .collect();
        us.sort_by(f64::total_cmp);
        println!(
            "{{\"bench\":\"diagnose\",\"ports\":{ports},\"rules_per_port\":{rules},\"case\":\"{case}\",\"runs\":{RUNS},\"median_us\":{:.1},\"p99_us\":{:.1}}}",
            us[RUNS / 2],
            us[RUNS * 99 / 100]
        );
    }
}
