//! Properties of the reference evaluator over random configurations and
//! packets: the invariants `semantics.md` implies, checked on shapes nobody
//! wrote a case for.

use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use sgswitch_config::{
    Action, Config, Direction, Group, GroupType, Host, IdRef, IntraGroup, PolicyModel, Port, PortRange, PrefixList, Remote, Rule,
};
use sgswitch_filter::{By, Decision, Packet, Policy, Verdict};

const NETS: &[&str] =
    &["0.0.0.0/0", "10.0.0.0/8", "10.0.0.0/24", "10.0.0.5/32", "192.0.2.0/24", "::/0", "fd00::/64", "fd00::5/128", "2001:db8::/32"];
const ADDRS: &[&str] =
    &["10.0.0.1", "10.0.0.2", "10.0.0.5", "10.0.1.9", "192.0.2.7", "203.0.113.1", "fd00::1", "fd00::5", "2001:db8::1", "fe80::9"];
const PROTOS: &[Option<u8>] = &[None, Some(6), Some(17), Some(1), Some(58), Some(47)];

fn net(i: usize) -> IpNet {
    NETS[i % NETS.len()].parse().unwrap()
}

fn addr(i: usize) -> IpAddr {
    ADDRS[i % ADDRS.len()].parse().unwrap()
}

/// A rule as small indices, turned into a `Rule` once the groups and
/// prefix lists it may reference are known.
#[derive(Clone, Debug)]
struct RuleSpec {
    priority: u8,
    deny: bool,
    proto: usize,
    remote_kind: u8,
    remote: usize,
    ports: Option<(u16, u16)>,
    source_ports: Option<(u16, u16)>,
    local: Option<usize>,
    icmp_type: Option<u8>,
}

fn rule_spec() -> impl Strategy<Value = RuleSpec> {
    (
        1u8..=5,
        any::<bool>(),
        0..PROTOS.len(),
        0u8..4,
        0usize..16,
        prop::option::of((1u16..8, 0u16..4)),
        prop::option::weighted(0.2, (1u16..8, 0u16..4)),
        prop::option::weighted(0.2, 0usize..NETS.len()),
        prop::option::weighted(0.3, 0u8..10),
    )
        .prop_map(|(priority, deny, proto, remote_kind, remote, ports, source_ports, local, icmp_type)| RuleSpec {
            priority,
            deny,
            proto,
            remote_kind,
            remote,
            ports: ports.map(|(a, w)| (a, a + w)),
            source_ports: source_ports.map(|(a, w)| (a, a + w)),
            local,
            icmp_type,
        })
}

/// A group as indices: intra-group accept?, remote members, ingress, egress.
type GroupSpec = (bool, Vec<usize>, Vec<RuleSpec>, Vec<RuleSpec>);

#[derive(Clone, Debug)]
struct Spec {
    model: PolicyModel,
    enterprise: bool,
    groups: Vec<GroupSpec>,
    lists: Vec<Vec<usize>>,
    /// Per port: address indices, group indices (deduplicated in order).
    ports: Vec<(Vec<usize>, Vec<usize>)>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop_oneof![Just(PolicyModel::Priority), Just(PolicyModel::Ordered), Just(PolicyModel::Union)],
        prop::bool::weighted(0.2),
        prop::collection::vec(
            (
                any::<bool>(),
                prop::collection::vec(0usize..NETS.len(), 0..2),
                prop::collection::vec(rule_spec(), 0..6),
                prop::collection::vec(rule_spec(), 0..6),
            ),
            1..4,
        ),
        prop::collection::vec(prop::collection::vec(0usize..NETS.len(), 1..3), 0..3),
        prop::collection::vec((prop::collection::vec(0usize..ADDRS.len(), 1..3), prop::collection::vec(0usize..4, 1..4)), 1..4),
    )
        .prop_map(|(model, enterprise, groups, lists, ports)| Spec { model, enterprise, groups, lists, ports })
}

fn build_rule(s: &RuleSpec, model: PolicyModel, enterprise: bool, ngroups: usize, nlists: usize) -> Rule {
    let remote = match s.remote_kind {
        1 if !enterprise => Remote::Group(format!("sg-{}", s.remote % ngroups)),
        2 if nlists > 0 => Remote::PrefixList(format!("pl-{}", s.remote % nlists)),
        _ => Remote::Cidr(net(s.remote)),
    };
    let protocol = PROTOS[s.proto];
    let has_ports = matches!(protocol, Some(6 | 17));
    let is_icmp = matches!(protocol, Some(1 | 58));
    Rule {
        priority: s.priority,
        action: if s.deny && model != PolicyModel::Union { Action::Deny } else { Action::Allow },
        protocol,
        ports: s.ports.filter(|_| has_ports).map(|(start, end)| PortRange { start, end }),
        source_ports: s.source_ports.filter(|_| has_ports).map(|(start, end)| PortRange { start, end }),
        remote,
        local: s.local.map(net),
        icmp_type: s.icmp_type.filter(|_| is_icmp),
        ..Rule::default()
    }
}

fn build(s: &Spec) -> Config {
    let ng = s.groups.len();
    let nl = s.lists.len();
    let groups = s
        .groups
        .iter()
        .enumerate()
        .map(|(i, (accept, members, ing, eg))| Group {
            id: format!("sg-{i}"),
            file: Default::default(),
            name: String::new(),
            description: String::new(),
            kind: if s.enterprise { GroupType::Enterprise } else { GroupType::Basic },
            intra_group: if *accept && !s.enterprise { IntraGroup::Accept } else { IntraGroup::Drop },
            remote_members: members.iter().map(|&m| net(m)).collect(),
            ingress: ing.iter().map(|r| build_rule(r, s.model, s.enterprise, ng, nl)).collect(),
            egress: eg.iter().map(|r| build_rule(r, s.model, s.enterprise, ng, nl)).collect(),
        })
        .collect();
    let prefix_lists = s
        .lists
        .iter()
        .enumerate()
        .map(|(i, e)| PrefixList {
            id: format!("pl-{i}"),
            file: Default::default(),
            max_entries: 10,
            entries: e.iter().map(|&n| net(n)).collect(),
        })
        .collect();
    let ports = s
        .ports
        .iter()
        .enumerate()
        .map(|(i, (addrs, gs))| {
            let mut sg: Vec<IdRef> = Vec::new();
            for g in gs {
                let id = format!("sg-{}", g % ng);
                if !sg.iter().any(|r| r.id == id) {
                    sg.push(IdRef { id, loc: Default::default() });
                }
            }
            let nets: Vec<IpNet> = addrs.iter().map(|&a| IpNet::from(addr(a))).collect();
            Port {
                id: format!("eni-{i}"),
                file: Default::default(),
                interface: None,
                mac: None,
                ipv4: nets.iter().filter(|n| matches!(n, IpNet::V4(_))).copied().collect(),
                ipv6: nets.iter().filter(|n| matches!(n, IpNet::V6(_))).copied().collect(),
                security_groups: sg,
                spoof_check: true,
                allow_blocked_egress: false,
            }
        })
        .collect();
    let host = Host { policy_model: s.model, ..Host::default() };
    Config { host, groups, prefix_lists, ports, ..Config::default() }
}

fn packet() -> impl Strategy<Value = Packet> {
    (any::<bool>(), prop::sample::select(vec![6u8, 17, 1, 58, 47]), 0..ADDRS.len(), 0..ADDRS.len(), 0u16..10, 0u16..10, 0u8..10, 0u8..3)
        .prop_map(|(ingress, proto, r, l, rp, lp, t, c)| {
            let remote = addr(r);
            // The local side is of the remote's family, as on the wire.
            let local = (0..ADDRS.len()).map(|k| addr(l + k)).find(|a| a.is_ipv4() == remote.is_ipv4()).unwrap();
            Packet {
                direction: if ingress { Direction::Ingress } else { Direction::Egress },
                proto,
                remote,
                local,
                remote_port: rp,
                local_port: lp,
                icmp_type: t,
                icmp_code: c,
            }
        })
}

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
