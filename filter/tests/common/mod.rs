//! Random configurations and packets for the property and differential
//! tests, and a printer that turns a failing configuration into the
//! directory an operator would write.
#![allow(dead_code, unreachable_pub, reason = "shared by several test crates, each using a part")]

use std::fmt::Write as _;
use std::net::IpAddr;

use ipnet::IpNet;
use proptest::prelude::*;
use sgswitch_config::{
    Action, Config, Direction, Group, GroupType, Host, IdRef, IntraGroup, PolicyModel, Port, PortRange, PrefixList, Remote, Rule,
    protocol_name,
};
use sgswitch_filter::Packet;

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
pub struct RuleSpec {
    pub priority: u8,
    pub deny: bool,
    pub proto: usize,
    pub remote_kind: u8,
    pub remote: usize,
    pub ports: Option<(u16, u16)>,
    pub source_ports: Option<(u16, u16)>,
    pub local: Option<usize>,
    pub icmp_type: Option<u8>,
}

pub fn rule_spec() -> impl Strategy<Value = RuleSpec> {
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
pub type GroupSpec = (bool, Vec<usize>, Vec<RuleSpec>, Vec<RuleSpec>);

#[derive(Clone, Debug)]
pub struct Spec {
    pub model: PolicyModel,
    pub enterprise: bool,
    pub groups: Vec<GroupSpec>,
    pub lists: Vec<Vec<usize>>,
    /// Per port: address indices, group indices (deduplicated in order).
    pub ports: Vec<(Vec<usize>, Vec<usize>)>,
}

pub fn spec() -> impl Strategy<Value = Spec> {
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

pub fn build(s: &Spec) -> Config {
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
                vhost_user: None,
                mac: None,
                ipv4: nets.iter().filter(|n| matches!(n, IpNet::V4(_))).copied().collect(),
                ipv6: nets.iter().filter(|n| matches!(n, IpNet::V6(_))).copied().collect(),
                security_groups: sg,
                spoof_check: true,
                allow_blocked_egress: false,
                link_local: Vec::new(),
                conntrack_timeouts: None,
            }
        })
        .collect();
    let host = Host { policy_model: s.model, ..Host::default() };
    Config { host, groups, prefix_lists, ports, ..Config::default() }
}

pub fn packet() -> impl Strategy<Value = Packet> {
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

fn range(r: PortRange) -> String {
    format!("\"{}/{}\"", r.start, r.end)
}

/// `cfg` as the files of a configuration directory, for a failure message.
pub fn render(cfg: &Config) -> String {
    let mut out = String::new();
    let h = &cfg.host;
    let _ = writeln!(out, "=== host.toml ===\npolicy_model = \"{}\"", h.policy_model.as_str());
    for l in &cfg.prefix_lists {
        let entries: Vec<String> = l.entries.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = writeln!(
            out,
            "=== prefix-lists/{}.toml ===\nid = \"{}\"\nmax_entries = {}\nentries = [{}]",
            l.id,
            l.id,
            l.max_entries,
            entries.join(", ")
        );
    }
    for p in &cfg.ports {
        let list = |v: &[IpNet]| v.iter().map(|n| format!("\"{n}\"")).collect::<Vec<_>>().join(", ");
        let groups: Vec<String> = p.security_groups.iter().map(|g| format!("\"{}\"", g.id)).collect();
        let _ = writeln!(
            out,
            "=== ports/{}.toml ===\nid = \"{}\"\nipv4 = [{}]\nipv6 = [{}]\nsecurity_groups = [{}]",
            p.id,
            p.id,
            list(&p.ipv4),
            list(&p.ipv6),
            groups.join(", ")
        );
    }
    for g in &cfg.groups {
        let members: Vec<String> = g.remote_members.iter().map(|n| format!("\"{n}\"")).collect();
        let _ = writeln!(
            out,
            "=== groups/{}.toml ===\nid = \"{}\"\ntype = \"{}\"\nintra_group = \"{}\"\nremote_members = [{}]",
            g.id,
            g.id,
            g.kind.as_str(),
            if g.intra_group == IntraGroup::Accept { "accept" } else { "drop" },
            members.join(", ")
        );
        for d in [Direction::Ingress, Direction::Egress] {
            let (remote_key, local_key) = if d == Direction::Ingress { ("source", "destination") } else { ("destination", "source") };
            for r in g.rules(d) {
                let _ = writeln!(
                    out,
                    "[[{}]]\npriority = {}\naction = \"{}\"\nprotocol = \"{}\"\n{remote_key} = \"{}\"",
                    d.as_str(),
                    r.priority,
                    r.action.as_str(),
                    protocol_name(r.protocol),
                    r.remote
                );
                if let Some(p) = r.ports {
                    let _ = writeln!(out, "ports = {}", range(p));
                }
                if let Some(p) = r.source_ports {
                    let _ = writeln!(out, "source_ports = {}", range(p));
                }
                if let Some(n) = r.local {
                    let _ = writeln!(out, "{local_key} = \"{n}\"");
                }
                if let Some(t) = r.icmp_type {
                    let _ = writeln!(out, "icmp_type = {t}");
                }
                if let Some(c) = r.icmp_code {
                    let _ = writeln!(out, "icmp_code = {c}");
                }
            }
        }
    }
    out
}
