//! The reference evaluator on every packet of the ClassBench 1k traces,
//! against ClassBench's own first-match scan written independently in
//! `classbench::CbRule::matches`; and the compiled classifier against the
//! reference on every packet of every trace (1k and 10k), all in the
//! repository.

use std::sync::Arc;

use sgswitch_benches::classbench::{self, FAMILIES};
use sgswitch_filter::{By, Compiled, Direction, Key, Policy, Verdict};

#[test]
fn reference_evaluator_agrees_with_classbench_first_match_on_every_1k_trace() {
    let mut packets = 0usize;
    for fam in FAMILIES {
        let rules = classbench::parse_rules(&classbench::read(&format!("{fam}_1k")).unwrap()).unwrap();
        let trace = classbench::parse_trace(&classbench::read(&format!("{fam}_1k_trace")).unwrap()).unwrap();
        let policy = Policy::new(classbench::config(&rules));
        for (i, t) in trace.iter().enumerate() {
            let expected = rules.iter().position(|r| r.matches(t));
            let d = policy.evaluate(0, &classbench::packet(t));
            let got = match d.by {
                By::Rule(r) => Some(usize::from(r.index)),
                _ => None,
            };
            assert_eq!(got, expected, "{fam}_1k_trace line {}: {t:?}", i + 1);
            assert_eq!(d.verdict, if got.is_some() { Verdict::Allow } else { Verdict::Deny });
            // The README's invariant: the first match is never after the
            // rule the packet was generated from.
            assert!(got.is_some_and(|g| g <= t.from_rule), "{fam}_1k_trace line {}", i + 1);
        }
        packets += trace.len();
    }
    assert!(packets > 100_000, "all twelve 1k traces were read ({packets} packets)");
}

#[test]
fn compiled_classifier_agrees_with_the_reference_on_every_trace_packet() {
    let mut packets = 0usize;
    // The twelve 1k traces and the three 10k ones of the repository (and
    // any more `SGSWITCH_CLASSBENCH` holds).
    let sets = classbench::traces();
    for set in &sets {
        let rules = classbench::parse_rules(&classbench::read(set).unwrap()).unwrap();
        let trace = classbench::parse_trace(&classbench::read(&format!("{set}_trace")).unwrap()).unwrap();
        let policy = Arc::new(Policy::new(classbench::config(&rules)));
        let compiled = Compiled::new(policy.clone(), 1);
        let table = compiled.port(0).unwrap().get(Direction::Ingress);
        for (i, t) in trace.iter().enumerate() {
            let p = classbench::packet(t);
            let want = policy.evaluate(0, &p);
            assert_eq!(table.classify(&Key::of(&p)), want, "{set}_trace line {}: {t:?}", i + 1);
        }
        packets += trace.len();
    }
    assert!(sets.len() >= 15 && packets > 100_000, "{} traces, {packets} packets", sets.len());
}
