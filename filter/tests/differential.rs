//! The compiled classifier against the reference evaluator: random
//! configurations (all three models, intra-group accept and drop, group
//! references, prefix lists, IPv4 and IPv6, overlapping ranges, equal
//! priorities) and random packets; every decision, rule identity included,
//! must agree. A failure is shrunk by proptest and printed as a
//! configuration directory.

mod common;

use std::cell::Cell;
use std::sync::Arc;

use common::{build, packet, render, spec};
use proptest::prelude::*;
use sgswitch_filter::{By, Compiled, Decision, Direction, Key, Policy, Verdict};

thread_local! {
    static DECISIONS: Cell<usize> = const { Cell::new(0) };
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2500, ..ProptestConfig::default() })]

    /// Not a test by itself: the test below runs it and counts.
    fn compiled_tables_decide_exactly_as_the_reference(s in spec(), pkts in prop::collection::vec(packet(), 40..80)) {
        let cfg = build(&s);
        let policy = Arc::new(Policy::new(cfg.clone()));
        let compiled = Compiled::new(policy.clone(), 1);
        for port in 0..policy.ports().len() {
            let tables = compiled.port(port).expect("every port has tables");
            let want: Vec<Decision> = pkts.iter().map(|p| policy.evaluate(port, p)).collect();
            for (p, w) in pkts.iter().zip(&want) {
                prop_assert_eq!(compiled.decide(port, p), *w, "port {} packet {:?}\n{}", policy.ports()[port].id, p, render(&cfg));
            }
            // The batch API, per direction, over the same packets.
            for d in [Direction::Ingress, Direction::Egress] {
                let (keys, want): (Vec<Key>, Vec<Decision>) =
                    pkts.iter().zip(&want).filter(|(p, _)| p.direction == d).map(|(p, w)| (Key::of(p), *w)).unzip();
                let mut got = vec![Decision { verdict: Verdict::Deny, by: By::Default }; keys.len()];
                tables.get(d).classify_batch(&keys, &mut got);
                prop_assert_eq!(got, want);
            }
            DECISIONS.with(|d| d.set(d.get() + pkts.len()));
        }
    }
}

#[test]
fn compiled_tables_agree_with_the_reference_on_200_000_decisions() {
    compiled_tables_decide_exactly_as_the_reference();
    let n = DECISIONS.with(Cell::get);
    assert!(n >= 200_000, "only {n} decisions compared");
}

/// The packet a key stands for in direction `d` (IPv4 keys use the low 32
/// bits of their address fields, as lookups do).
fn packet_of(k: &Key, d: Direction) -> sgswitch_filter::Packet {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let addr = |x: u128| {
        if k.v6 { IpAddr::V6(Ipv6Addr::from(x)) } else { IpAddr::V4(Ipv4Addr::from(u32::try_from(x & 0xffff_ffff).unwrap())) }
    };
    let (remote_port, local_port) = match d {
        Direction::Ingress => (k.src_port, k.dst_port),
        Direction::Egress => (k.dst_port, k.src_port),
    };
    sgswitch_filter::Packet {
        direction: d,
        proto: k.proto,
        remote: addr(k.remote),
        local: addr(k.local),
        remote_port,
        local_port,
        icmp_type: k.icmp_type,
        icmp_code: k.icmp_code,
    }
}

fn any_key() -> impl Strategy<Value = Key> {
    (any::<bool>(), any::<u8>(), any::<u128>(), any::<u128>(), any::<u16>(), any::<u16>(), any::<u8>(), any::<u8>()).prop_map(
        |(v6, proto, remote, local, dst_port, src_port, icmp_type, icmp_code)| Key {
            v6,
            proto,
            remote,
            local,
            dst_port,
            src_port,
            icmp_type,
            icmp_code,
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any key at all, over the whole range of every field, is answered
    /// (no panic) and answered as the reference would.
    #[test]
    fn any_key_is_answered_as_the_reference_would(s in spec(), keys in prop::collection::vec(any_key(), 1..50), egress in any::<bool>()) {
        let policy = Arc::new(Policy::new(build(&s)));
        let compiled = Compiled::new(policy.clone(), 1);
        let d = if egress { Direction::Egress } else { Direction::Ingress };
        for port in 0..policy.ports().len() {
            let t = compiled.port(port).expect("tables").get(d);
            for k in &keys {
                prop_assert_eq!(t.classify(k), policy.evaluate(port, &packet_of(k, d)));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// A reload compiles after the plan before it and takes the tables of
    /// the group lists whose inputs did not change: one group's rules
    /// changed (every action flipped, one rule dropped), every decision is
    /// still the reference's, and the lists that neither hold that group
    /// nor change are not compiled again.
    ///
    /// Or (`narrow`) only one rule's ports changed: the lists holding the
    /// group keep their number of rules, and take from the tables before
    /// every field but the ports.
    #[test]
    fn tables_taken_from_the_plan_before_decide_as_the_reference(
        s in spec(),
        pick in any::<prop::sample::Index>(),
        narrow in any::<bool>(),
        ports in (any::<u16>(), any::<u16>()).prop_map(|(a, b)| sgswitch_config::PortRange { start: a.min(b), end: a.max(b) }),
        pkts in prop::collection::vec(packet(), 20..40),
    ) {
        let before = build(&s);
        let mut after = before.clone();
        let k = pick.index(after.groups.len().max(1));
        if let Some(g) = after.groups.get_mut(k) {
            if narrow {
                if let Some(r) = g.ingress.iter_mut().chain(g.egress.iter_mut()).find(|r| r.ports.is_some()) {
                    r.ports = Some(ports);
                }
            } else {
                for r in g.ingress.iter_mut().chain(g.egress.iter_mut()) {
                    r.action = match r.action { sgswitch_config::Action::Allow => sgswitch_config::Action::Deny, sgswitch_config::Action::Deny => sgswitch_config::Action::Allow };
                }
                g.egress.pop();
            }
        }
        // Deny rules are not allowed under the union model: keep that model's
        // configurations as they were.
        if after.host.policy_model == sgswitch_config::PolicyModel::Union {
            after = before.clone();
        }
        let old = Compiled::new(Arc::new(Policy::new(before.clone())), 1);
        let policy = Arc::new(Policy::new(after.clone()));
        let new = Compiled::reusing(policy.clone(), 2, Some(&old));
        for port in 0..policy.ports().len() {
            for p in &pkts {
                prop_assert_eq!(new.decide(port, p), policy.evaluate(port, p), "port {} packet {:?}\n{}", policy.ports()[port].id, p, render(&after));
            }
            let holds = policy.port_groups(port).contains(&u16::try_from(k).unwrap_or(u16::MAX));
            let same = std::ptr::eq(new.port(port).expect("tables"), old.port(port).expect("tables"));
            if holds && before != after {
                prop_assert!(!same, "port {} holds the changed group but kept its tables", policy.ports()[port].id);
            }
        }
    }
}

#[test]
fn a_change_to_one_group_leaves_the_other_lists_tables_as_they_were() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let before = sgswitch_config::load_dir(&dir).expect("examples load");
    let mut after = before.clone();
    let db = after.groups.iter_mut().find(|g| g.id == "sg-db").expect("sg-db");
    db.ingress.pop();
    let old = Compiled::new(Arc::new(Policy::new(before)), 1);
    let policy = Arc::new(Policy::new(after));
    let new = Compiled::reusing(policy.clone(), 2, Some(&old));
    let db = policy.group_index("sg-db").expect("sg-db");
    let (mut kept, mut rebuilt) = (0, 0);
    for port in 0..policy.ports().len() {
        let same = std::ptr::eq(new.port(port).expect("tables"), old.port(port).expect("tables"));
        assert_eq!(same, !policy.port_groups(port).contains(&db), "{}", policy.ports()[port].id);
        if same { kept += 1 } else { rebuilt += 1 }
    }
    assert!(kept > 0 && rebuilt > 0, "kept {kept}, rebuilt {rebuilt}");
}
