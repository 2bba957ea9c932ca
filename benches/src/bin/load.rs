//! Loading and compiling a large configuration directory, as `check` and a
//! reload do: the files read and validated (`load_dir`), then the plan
//! built (the classifier compiled).
//!
//! `cargo run --release -p sgswitch-benches --bin load -- --json [--rules N]`
//! writes directories of N rules (default 40,000) in two layouts and prints
//! one JSON line for each with `layout`, `rules`, `bytes` (of the group
//! files), `load_ms`, `compile_ms` and `total_ms`, the best of three
//! trials:
//! - `200-per-group`: groups of 200 rules, ports of 5 groups each (1,000
//!   rules), which the default limits allow;
//! - `one-group`: every rule in one group file bound to one port, with the
//!   limits raised to allow it: the largest file, where a loader that
//!   rescans a file per position is quadratic.

use std::fmt::Write;
use std::time::Instant;

use sgswitch::datapath::plan::{Plan, Zones};

fn write_dir(dir: &std::path::Path, rules: usize, per_group: usize) -> usize {
    let groups = rules.div_ceil(per_group);
    let per_port = if per_group >= rules { 1 } else { 5 };
    std::fs::create_dir_all(dir.join("groups")).expect("mkdir");
    std::fs::create_dir_all(dir.join("ports")).expect("mkdir");
    std::fs::write(
        dir.join("host.toml"),
        format!(
            "[limits]\nmembers_per_group = 100000\nrules_per_group = {}\nrules_per_port = {}\n",
            per_group.max(200),
            (per_group * per_port).max(1000)
        ),
    )
    .expect("host.toml");
    let mut bytes = 0;
    for g in 0..groups {
        let mut t = format!("id = \"sg-{g}\"\nname = \"group {g}\"\n");
        for r in 0..per_group.min(rules - g * per_group) {
            let (a, b) = (r % 250, g % 250);
            let _ = write!(
                t,
                "\n[[ingress]]\npriority = {}\naction = \"{}\"\nprotocol = \"tcp\"\nports = \"{}/{}\"\nsource = \"10.{b}.{a}.0/24\"\ndescription = \"rule {r} of group {g}\"\n",
                1 + r % 100,
                if r % 7 == 0 { "deny" } else { "allow" },
                1000 + r,
                1000 + r + g % 10
            );
        }
        bytes += t.len();
        std::fs::write(dir.join(format!("groups/sg-{g}.toml")), t).expect("group file");
    }
    // Each port binds `per_port` consecutive groups.
    for p in 0..groups * 2 {
        let first = (p / 2) / per_port * per_port;
        let list: Vec<String> = (first..(first + per_port).min(groups)).map(|g| format!("\"sg-{g}\"")).collect();
        let (hi, lo) = (p / 250, p % 250);
        std::fs::write(
            dir.join(format!("ports/eni-{p}.toml")),
            format!("id = \"eni-{p}\"\nipv4 = [\"172.{}.{hi}.{lo}\"]\nsecurity_groups = [{}]\n", 16 + hi / 250, list.join(", ")),
        )
        .expect("port file");
    }
    bytes
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rules = args.iter().position(|a| a == "--rules").and_then(|i| args.get(i + 1)).and_then(|s| s.parse().ok()).unwrap_or(40_000);
    for (layout, per_group) in [("200-per-group", 200), ("one-group", rules)] {
        run(layout, rules, per_group);
    }
}

fn run(layout: &str, rules: usize, per_group: usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let bytes = write_dir(dir.path(), rules, per_group);
    let mut best = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        let t = Instant::now();
        let cfg = match sgswitch_config::load_dir(dir.path()) {
            Ok(c) => c,
            Err(e) => panic!("the generated directory does not load: {e}"),
        };
        let load = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        let (plan, _) = Plan::build(cfg, &mut Zones::default(), 1).expect("plan");
        let compile = t.elapsed().as_secs_f64() * 1e3;
        assert_eq!(plan.rules_total(), rules);
        if load + compile < best.0 + best.1 {
            best = (load, compile);
        }
    }
    println!(
        "{}",
        serde_json::json!({
            "bench": "load",
            "layout": layout,
            "rules": rules,
            "bytes": bytes,
            "load_ms": (best.0 * 10.0).round() / 10.0,
            "compile_ms": (best.1 * 10.0).round() / 10.0,
            "total_ms": ((best.0 + best.1) * 10.0).round() / 10.0,
        })
    );
}
