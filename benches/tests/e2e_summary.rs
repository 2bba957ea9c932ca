//! `benches/e2e_summary.py`, the end-to-end benchmark's summary, on points
//! made up for the purpose: each point goes to the placement its two
//! cache-line probes agree on (none when they differ), and each of the two
//! targets the placement moves is judged for sgswitch (`met`) and for what
//! bounds any switch on the port path there (`reachable`: the ceiling's
//! new flows, the floor's p99).

use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};

const NEAR: [u32; 2] = [60, 70];
const APART: [u32; 2] = [330, 345];
const MOVING: [u32; 2] = [65, 340];

fn new_flows(system: &str, mpps: f64, xcore: [u32; 2]) -> Value {
    json!({"system": system, "rules": 1000, "cores": 1, "case": "new", "load": null, "mpps": mpps, "xcore_rtt_ns": xcore, "round": 1})
}

fn latency(system: &str, p99: u32, xcore: [u32; 2]) -> Value {
    json!({"system": system, "rules": 1000, "cores": 1, "case": "latency", "load": 0.5, "mpps": 0.4, "p99_us": p99, "xcore_rtt_ns": xcore, "round": 1})
}

/// Near, everything within reach and met; apart, the ceiling makes 2.8x
/// Open vSwitch and the floor's p99 is 65 us, so neither target can be.
fn points() -> Vec<Value> {
    // Per placement: sgswitch's, Open vSwitch's and the ceiling's new
    // flows (Mpps), then sgswitch's and the floor's p99 (us).
    let mut v = Vec::new();
    for (xcore, [sg, ovs, raw], [p99, floor]) in [(NEAR, [0.75, 0.23, 0.88], [40, 35]), (APART, [0.56, 0.22, 0.62], [60, 65])] {
        v.extend([new_flows("sgswitch", sg, xcore), new_flows("ovs-afxdp", ovs, xcore), new_flows("raw-afxdp", raw, xcore)]);
        v.extend([latency("sgswitch", p99, xcore), latency("xdp-redirect", floor, xcore)]);
    }
    // Moved during the point: in neither placement.
    v.extend([new_flows("raw-afxdp", 5.0, MOVING), latency("sgswitch", 900, MOVING)]);
    v
}

fn write(path: &Path, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(path, text).unwrap();
}

fn run(args: &[&str]) -> Vec<Value> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("e2e_summary.py");
    let out = Command::new("python3").arg(&script).args(args).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn a_runs_summary_judges_each_placement_against_what_bounds_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("points.jsonl");
    write(&file, &points());
    let lines = run(&[file.to_str().unwrap(), "1"]);
    // The points, then one summary line for the one rule count.
    assert_eq!(lines.len(), points().len() + 1);
    let s = &lines[lines.len() - 1];
    let near = &s["by_placement"]["near"];
    let apart = &s["by_placement"]["apart"];

    assert_eq!(near["new_points_of"], json!({"sgswitch": 1, "ovs-afxdp": 1, "raw-afxdp": 1}));
    assert_eq!(near["new_vs_ovs"], json!(3.261));
    assert_eq!(near["met"], json!({"new_vs_ovs": true, "p99_us_at_half_peak": true}));
    assert_eq!(near["reachable"], json!({"new_vs_ovs": true, "p99_us_at_half_peak": true}));
    // A new flow's 1,333 ns against the ceiling's 1,136; 3x Open vSwitch
    // is 1,449.
    assert_eq!(near["new_decision_ns"], json!(197));
    assert_eq!(near["new_decision_budget_ns"], json!(313));

    assert_eq!(apart["new_points"], json!(3));
    assert_eq!(apart["raw_new_vs_ovs"], json!(2.818));
    assert_eq!(apart["new_vs_raw"], json!(0.903));
    assert_eq!(apart["met"], json!({"new_vs_ovs": false, "p99_us_at_half_peak": false}));
    assert_eq!(apart["reachable"], json!({"new_vs_ovs": false, "p99_us_at_half_peak": false}));
    // Apart, 3x Open vSwitch leaves less than nothing for the decisions.
    assert_eq!(apart["new_decision_ns"], json!(173));
    assert_eq!(apart["new_decision_budget_ns"], json!(-98));

    // Run-wide, the medians mix the placements (and count the moving
    // points): a miss there says nothing of which machine missed.
    assert_eq!(s["raw_new_vs_ovs"], json!(3.911));
    assert_eq!(s["new_vs_ovs"], json!(2.911));
    assert_eq!(s["met"]["new_vs_ovs"], json!(false));
    assert_eq!(s["p99_us_at_half_peak"], json!(60));
    assert_eq!(s["met"]["p99_us_at_half_peak"], json!(false));
}

#[test]
fn pooled_runs_add_their_points_and_skip_their_summaries() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    let mut first = points();
    // A saved run ends with its summary lines, which have no "case".
    first.push(json!({"rules": 1000, "new_vs_ovs": 9.9, "by_placement": {}}));
    write(&a, &first);
    // A second run, apart only, where the ceiling did make 3x.
    write(&b, &[new_flows("raw-afxdp", 0.70, APART), new_flows("raw-afxdp", 0.71, APART), new_flows("ovs-afxdp", 0.22, APART)]);
    let lines = run(&["--pool", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(lines.len(), 1);
    let apart = &lines[0]["by_placement"]["apart"];
    assert_eq!(apart["new_points_of"], json!({"sgswitch": 1, "ovs-afxdp": 2, "raw-afxdp": 3}));
    // The ceiling's median over 0.62, 0.70, 0.71 against 0.22.
    assert_eq!(apart["raw_new_vs_ovs"], json!(3.182));
    assert_eq!(apart["reachable"]["new_vs_ovs"], json!(true));
    assert_eq!(apart["met"]["new_vs_ovs"], json!(false));
}
