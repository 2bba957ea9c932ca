//! The conformance table of `tests/conformance/`: every case through the
//! library (load + reference evaluator) and through the `sgswitch` binary
//! (`trace --batch --json`), against the expected decisions.

use sgswitch_config::load_dir;
use sgswitch_filter::{By, Policy};
use sgswitch_tests::{Case, Expected, conformance_cases, write_dir};

fn sgswitch(args: &[&str]) -> std::process::Output {
    sgswitch_tests::run(env!("CARGO_BIN_EXE_sgswitch"), args)
}

/// Runs one case both ways; returns a message per mismatch.
fn run_case(file: &str, case: &Case) -> Vec<String> {
    let mut fails = Vec::new();
    let dir = write_dir(&case.files());
    let at = |i: usize| format!("{file}: case {:?} packet {i}", case.name);

    // Library.
    let cfg = match load_dir(dir.path()) {
        Ok(c) => c,
        Err(e) => return vec![format!("{file}: case {:?} does not load:\n{e}", case.name)],
    };
    let policy = Policy::new(cfg);
    for (i, p) in case.packets.iter().enumerate() {
        let want = Expected::parse(&p.expect);
        let (port, pkt) = match policy.resolve(&p.query()) {
            Ok(x) => x,
            Err(e) => {
                fails.push(format!("{}: cannot resolve: {e}", at(i)));
                continue;
            }
        };
        let d = policy.evaluate(port, &pkt);
        let got = Expected {
            verdict: d.verdict.as_str().into(),
            by: d.by.as_str().into(),
            rule: match d.by {
                By::Rule(r) => Some((policy.group(r.group).id.clone(), r.direction.as_str().into(), r.index)),
                _ => None,
            },
        };
        if got != want {
            fails.push(format!("{} (library): expected {want:?}, got {got:?}", at(i)));
        }
    }

    // Binary.
    let batch = dir.path().join("requests.jsonl");
    std::fs::write(&batch, case.batch()).expect("write batch");
    let out = sgswitch(&["trace", dir.path().to_str().expect("utf-8 path"), "--batch", batch.to_str().expect("utf-8"), "--json"]);
    if !out.status.success() {
        fails.push(format!("{file}: case {:?}: sgswitch failed: {}", case.name, String::from_utf8_lossy(&out.stderr)));
        return fails;
    }
    let stdout = String::from_utf8(out.stdout).expect("utf-8 output");
    let lines: Vec<&str> = stdout.lines().collect();
    if lines.len() != case.packets.len() {
        fails.push(format!("{file}: case {:?}: {} packets but {} output lines", case.name, case.packets.len(), lines.len()));
        return fails;
    }
    for (i, (p, line)) in case.packets.iter().zip(lines).enumerate() {
        let want = Expected::parse(&p.expect);
        let v: serde_json::Value = serde_json::from_str(line).expect("one JSON object per line");
        let keys: Vec<&str> = v.as_object().expect("object").keys().map(String::as_str).collect();
        let rule = &v["rule"];
        let got = Expected {
            verdict: v["verdict"].as_str().unwrap_or("?").into(),
            by: v["by"].as_str().unwrap_or("?").into(),
            rule: rule.as_object().map(|_| {
                (
                    rule["group"].as_str().unwrap_or("?").into(),
                    rule["direction"].as_str().unwrap_or("?").into(),
                    u16::try_from(rule["index"].as_u64().unwrap_or(u64::MAX)).unwrap_or(u16::MAX),
                )
            }),
        };
        if got != want {
            fails.push(format!("{} (binary): expected {want:?}, got {line}", at(i)));
        }
        let mut sorted = keys.clone();
        sorted.sort_unstable();
        if sorted != ["by", "rule", "verdict"] {
            fails.push(format!("{} (binary): keys {keys:?}", at(i)));
        }
        if let Some((g, d, idx)) = &want.rule {
            let (prio, action) = case.rule_fields(g, d, *idx);
            if rule["priority"].as_i64() != Some(prio) || rule["action"].as_str() != Some(action.as_str()) {
                fails.push(format!("{} (binary): rule fields {rule} but the rule is priority {prio}, {action}", at(i)));
            }
        } else if !rule.is_null() {
            fails.push(format!("{} (binary): rule must be null when by is {}", at(i), want.by));
        }
    }
    fails
}

#[test]
fn conformance_table_decides_as_semantics_md_says_through_library_and_binary() {
    let cases = conformance_cases();
    assert!(cases.len() >= 60, "the table has {} cases; the contract asks for at least 60", cases.len());
    let packets: usize = cases.iter().map(|(_, c)| c.packets.len()).sum();
    let mut fails = Vec::new();
    for (file, case) in &cases {
        assert!(!case.covers.is_empty(), "{file}: case {:?} says what it covers", case.name);
        fails.extend(run_case(file, case));
    }
    assert!(fails.is_empty(), "{} mismatches:\n{}", fails.len(), fails.join("\n"));
    println!("{} cases, {packets} packets: all agree", cases.len());
}

#[test]
fn every_policy_model_and_every_decision_kind_is_covered() {
    let cases = conformance_cases();
    for model in ["priority", "ordered", "union"] {
        let of_model: Vec<&Case> = cases.iter().map(|(_, c)| c).filter(|c| c.model.as_deref().unwrap_or("priority") == model).collect();
        assert!(of_model.len() >= 8, "{model}: only {} cases", of_model.len());
        let expects: Vec<&str> = of_model.iter().flat_map(|c| c.packets.iter().map(|p| p.expect.as_str())).collect();
        for kind in ["allow rule", "deny default"] {
            assert!(expects.iter().any(|e| e.starts_with(kind)), "{model}: no \"{kind}\" case");
        }
    }
    let all: Vec<&str> = cases.iter().flat_map(|(_, c)| c.packets.iter().map(|p| p.expect.as_str())).collect();
    for kind in ["allow intra-group", "deny rule", "allow default"] {
        assert!(all.iter().any(|e| e.starts_with(kind)), "no \"{kind}\" case");
    }
}

/// `diagnose` shows each side of a path as `trace` decides it: for every
/// row of the table, the path from the remote to the port (an ingress row)
/// or from the port to the remote (an egress row) has, on the row's side,
/// the row's expected decision (source ports and ICMP types as the row
/// gives them). A row whose remote is the port itself is no path, and is
/// counted as not askable.
#[test]
fn diagnose_agrees_with_the_table_on_the_side_of_every_row() {
    use sgswitch::datapath::plan::{Plan, Zones};
    use sgswitch::tools::diagnose::{Ask, diagnose};
    use sgswitch_config::{Direction, protocol_name};

    let (mut asked, mut skipped) = (0, 0);
    let mut fails = Vec::new();
    for (file, case) in &conformance_cases() {
        let dir = write_dir(&case.files());
        let cfg = load_dir(dir.path()).expect("the case loads");
        let (plan, _) = Plan::build(cfg, &mut Zones::default(), 1).expect("a plan");
        for (i, p) in case.packets.iter().enumerate() {
            let (port, pkt) = plan.policy().resolve(&p.query()).expect("the row resolves");
            let (source_port, dest_port) = match pkt.direction {
                Direction::Ingress => (p.remote_port, pkt.local_port),
                Direction::Egress => (p.local_port, pkt.remote_port),
            };
            let icmp = matches!(pkt.proto, 1 | 58);
            if pkt.remote == pkt.local {
                skipped += 1;
                continue;
            }
            asked += 1;
            let (from, to) = match pkt.direction {
                Direction::Ingress => (pkt.remote, pkt.local),
                Direction::Egress => (pkt.local, pkt.remote),
            };
            let ask = Ask {
                from: from.to_string(),
                to: to.to_string(),
                proto: Some(protocol_name(Some(pkt.proto)).to_string()),
                port: matches!(pkt.proto, 6 | 17).then_some(dest_port),
                source_port: source_port.filter(|_| matches!(pkt.proto, 6 | 17)),
                icmp_type: icmp.then_some(pkt.icmp_type),
                icmp_code: icmp.then_some(pkt.icmp_code),
            };
            let at = format!("{file}: case {:?} packet {i}", case.name);
            let paths = match diagnose(&plan, &ask) {
                Ok(p) => p,
                Err(e) => {
                    fails.push(format!("{at}: diagnose {ask:?}: {e}"));
                    continue;
                }
            };
            let side = &paths[0][pkt.direction.as_str()];
            let want = Expected::parse(&p.expect);
            let got = Expected {
                verdict: side["verdict"].as_str().unwrap_or("?").into(),
                by: side["by"].as_str().unwrap_or("?").into(),
                rule: side["rule"].as_object().map(|r| {
                    (
                        r["group"].as_str().unwrap_or("?").into(),
                        r["direction"].as_str().unwrap_or("?").into(),
                        u16::try_from(r["index"].as_u64().unwrap_or(u64::MAX)).unwrap_or(u16::MAX),
                    )
                }),
            };
            let port_id = &plan.policy().ports()[port].id;
            let named = paths[0][if pkt.direction == Direction::Ingress { "to" } else { "from" }]["port"].as_str();
            if named != Some(port_id.as_str()) {
                fails.push(format!("{at}: the {} side is {named:?}, not {port_id}", pkt.direction.as_str()));
            } else if got != want {
                fails.push(format!("{at}: expected {want:?}, diagnose says {side}"));
            }
        }
    }
    assert!(fails.is_empty(), "{} disagreements:\n{}", fails.len(), fails.join("\n"));
    assert_eq!(skipped, 0, "{asked} rows asked, {skipped} not askable");
    println!("diagnose: {asked} rows agree, {skipped} not askable");
}
