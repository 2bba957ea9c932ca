//! Properties of the reference evaluator over random configurations and
//! packets: the invariants `semantics.md` implies, checked on shapes nobody
//! wrote a case for.

mod common;

use common::{RuleSpec, build, packet, rule_spec, spec};
use ipnet::IpNet;
use proptest::prelude::*;
use sgswitch_config::{Direction, PolicyModel, Remote};
use sgswitch_filter::{By, Decision, Packet, Policy, Verdict};

/// Every (port, packet, decision) of the policy's ports and the packets.
fn decisions<'a>(policy: &Policy, pkts: &'a [Packet]) -> Vec<(usize, &'a Packet, Decision)> {
    (0..policy.ports().len()).flat_map(|port| pkts.iter().map(move |p| (port, p, policy.evaluate(port, p)))).collect()
}

fn decide_all(policy: &Policy, pkts: &[Packet]) -> Vec<Decision> {
    decisions(policy, pkts).into_iter().map(|(_, _, d)| d).collect()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// The rule a decision names matches the packet, and under the priority
    /// model no matching rule of the port ranks above it.
    #[test]
    fn the_deciding_rule_matches_and_nothing_outranks_it(s in spec(), pkts in prop::collection::vec(packet(), 1..20)) {
        let policy = Policy::new(build(&s));
        for (port, p, d) in decisions(&policy, &pkts) {
            if let By::Rule(r) = d.by {
                prop_assert!(policy.rule_matches(policy.rule(r), p));
                prop_assert_eq!(d.verdict, Verdict::from(r.action));
                prop_assert!(policy.port_groups(port).contains(&r.group));
                prop_assert_eq!(r.direction, p.direction);
                if s.model == PolicyModel::Priority {
                    for &g in policy.port_groups(port) {
                        for (i, rule) in policy.group(g).rules(p.direction).iter().enumerate() {
                            let id = policy.rule_ref(g, p.direction, i);
                            if policy.rule_matches(rule, p) {
                                prop_assert!((id.priority, id.action) >= (r.priority, r.action));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Adding a rule of lower priority (a larger number) never changes a
    /// decision made by a higher-priority rule or by the intra-group step.
    #[test]
    fn a_lower_priority_rule_never_changes_a_higher_priority_decision(
        mut s in spec(), pkts in prop::collection::vec(packet(), 1..20), extra in rule_spec(), g in 0usize..4, egress in any::<bool>(),
    ) {
        s.model = PolicyModel::Priority;
        let before = Policy::new(build(&s));
        let gi = g % s.groups.len();
        let mut extra = extra;
        extra.priority = 6; // below every generated rule (1..=5)
        if egress { s.groups[gi].3.push(extra) } else { s.groups[gi].2.push(extra) }
        let after = Policy::new(build(&s));
        for (a, b) in decide_all(&before, &pkts).iter().zip(decide_all(&after, &pkts)) {
            if matches!(a.by, By::Rule(_) | By::IntraGroup { .. }) {
                prop_assert_eq!(*a, b);
            }
        }
    }

    /// Under the union and priority models the verdict does not depend on
    /// the order of a port's groups (only which tied rule is reported).
    #[test]
    fn union_and_priority_verdicts_are_independent_of_group_order(s in spec(), pkts in prop::collection::vec(packet(), 1..20)) {
        prop_assume!(s.model != PolicyModel::Ordered);
        let before = Policy::new(build(&s));
        let mut rev = s.clone();
        for (_, gs) in &mut rev.ports {
            gs.reverse();
        }
        let after = Policy::new(build(&rev));
        for (a, b) in decide_all(&before, &pkts).iter().zip(decide_all(&after, &pkts)) {
            prop_assert_eq!(a.verdict, b.verdict);
        }
    }

    /// An IPv4 CIDR never decides an IPv6 packet, and the reverse.
    #[test]
    fn rules_of_one_ip_version_never_decide_the_other(s in spec(), pkts in prop::collection::vec(packet(), 1..20)) {
        let policy = Policy::new(build(&s));
        for (_, p, d) in decisions(&policy, &pkts) {
            if let By::Rule(r) = d.by {
                let rule = policy.rule(r);
                let v4 = p.remote.is_ipv4();
                if let Remote::Cidr(n) = rule.remote {
                    prop_assert_eq!(matches!(n, IpNet::V4(_)), v4);
                }
                if let Some(n) = rule.local {
                    prop_assert_eq!(matches!(n, IpNet::V4(_)), v4);
                }
            }
        }
    }

    /// Ordered model: putting a deny-everything group first denies every
    /// packet by that group's rule; putting an allow-everything group first
    /// allows every packet. (Binding order is the whole story.)
    #[test]
    fn ordered_model_first_group_decides_when_it_matches(mut s in spec(), pkts in prop::collection::vec(packet(), 1..20), deny in any::<bool>()) {
        s.model = PolicyModel::Ordered;
        s.enterprise = false;
        let all = |net: usize| RuleSpec { priority: 1, deny, proto: 0, remote_kind: 0, remote: net, ports: None, source_ports: None, local: None, icmp_type: None };
        let catch_all = vec![all(0), all(5)]; // 0.0.0.0/0 and ::/0
        s.groups.push((false, vec![], catch_all.clone(), catch_all));
        let first = s.groups.len() - 1;
        for (_, gs) in &mut s.ports {
            gs.retain(|&g| g % (first + 1) != first);
            gs.insert(0, first);
        }
        let policy = Policy::new(build(&s));
        for (_, _, d) in decisions(&policy, &pkts) {
            prop_assert_eq!(d.verdict, if deny { Verdict::Deny } else { Verdict::Allow });
            let By::Rule(r) = d.by else { panic!("a catch-all rule decides") };
            prop_assert_eq!(&policy.group(r.group).id, &format!("sg-{first}"));
        }
    }

    /// Without any matching rule the default is the model's: priority model
    /// ingress deny, egress allow (basic) or deny (enterprise); other
    /// models deny.
    #[test]
    fn defaults_follow_the_model(s in spec(), pkts in prop::collection::vec(packet(), 1..20)) {
        let policy = Policy::new(build(&s));
        for (_, p, d) in decisions(&policy, &pkts) {
            if d.by == By::Default {
                let want = match (s.model, p.direction) {
                    (PolicyModel::Priority, Direction::Egress) if !s.enterprise => Verdict::Allow,
                    _ => Verdict::Deny,
                };
                prop_assert_eq!(d.verdict, want);
            }
            if let By::IntraGroup { group } = d.by {
                prop_assert_eq!(s.model, PolicyModel::Priority);
                prop_assert!(!s.enterprise);
                prop_assert!(policy.members(group).iter().any(|n| n.contains(&p.remote)));
            }
        }
    }
}
