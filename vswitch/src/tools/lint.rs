//! `sgswitch lint`: what in a valid configuration is probably a mistake,
//! per group, exactly (no heuristics):
//!
//! - `never-matches`: a rule whose local side (`destination` of an
//!   ingress rule, `source` of an egress rule) is outside every address of
//!   every port the group is bound to, or whose IP version none of those
//!   ports has (an IPv6 CIDR or icmpv6 on IPv4-only ports, or the other
//!   way round): it cannot match a packet of any bound port. Groups bound
//!   to no port are left to `check`'s own finding;
//! - `duplicate`: a rule that matches exactly what an earlier rule of the
//!   same group and direction matches, with the same action and priority
//!   (ids and descriptions aside): removing it changes nothing;
//! - `quota`: use of a limit (`[limits]`) at 80% or more: rules per group
//!   and per port (a prefix-list rule counts as its `max_entries`), groups
//!   per port, members per group, group references per group.
//!
//! Each finding names the file and line, the group (and rule) or port, and
//! what is wrong.

use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;
use sgswitch_config::{Config, Direction, Group, ICMP, ICMPV6, Remote, Rule};
use sgswitch_filter::Policy;

/// One finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: &'static str,
    pub file: PathBuf,
    pub line: u32,
    /// The group, or the port for a per-port quota.
    pub object: String,
    /// `<group>/<direction>/<id or index>` for a rule.
    pub rule: Option<String>,
    pub message: String,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}: {}", self.file.display(), self.line, self.kind, self.message)
    }
}

/// A limit's use that deserves a word: 80% or more.
fn near(used: u64, limit: u32) -> bool {
    limit > 0 && used * 5 >= u64::from(limit) * 4
}

fn rule_name(g: &Group, d: Direction, i: usize, r: &Rule) -> String {
    match &r.id {
        Some(id) => format!("{}/{}/{id}", g.id, d.as_str()),
        None => format!("{}/{}/{i}", g.id, d.as_str()),
    }
}

fn overlaps(a: &IpNet, b: &IpNet) -> bool {
    a.contains(&b.network()) || b.contains(&a.network())
}

/// The IP version a rule is limited to, if it is: by a CIDR on either side
/// (`0.0.0.0/0` is IPv4's "anywhere") or by icmp/icmpv6 (`Some(true)`:
/// IPv6). A group or prefix-list remote alone does not limit it.
fn version(r: &Rule) -> Option<bool> {
    match (&r.remote, r.local, r.protocol) {
        (Remote::Cidr(n), _, _) => Some(matches!(n, IpNet::V6(_))),
        (_, Some(l), _) => Some(matches!(l, IpNet::V6(_))),
        (_, _, Some(ICMP)) => Some(false),
        (_, _, Some(ICMPV6)) => Some(true),
        _ => None,
    }
}

/// Every finding of `policy`'s configuration, by file and line.
pub fn lint(policy: &Policy) -> Vec<Finding> {
    let cfg: &Config = policy.config();
    let lim = &cfg.host.limits;
    let mut out = Vec::new();
    for (gi, g) in cfg.groups.iter().enumerate() {
        let gi = u16::try_from(gi).unwrap_or(u16::MAX);
        let bound: Vec<&sgswitch_config::Port> = cfg.ports.iter().filter(|p| p.security_groups.iter().any(|r| r.id == g.id)).collect();
        let addrs: Vec<IpNet> = bound.iter().flat_map(|p| p.ipv4.iter().chain(&p.ipv6).copied()).collect();
        let (has4, has6) = (addrs.iter().any(|a| matches!(a, IpNet::V4(_))), addrs.iter().any(|a| matches!(a, IpNet::V6(_))));
        for d in Direction::ALL {
            let rules = g.rules(d);
            for (i, r) in rules.iter().enumerate() {
                let name = rule_name(g, d, i, r);
                let finding = |kind, message: String| Finding {
                    kind,
                    file: g.file.clone(),
                    line: r.loc.line,
                    object: g.id.clone(),
                    rule: Some(name.clone()),
                    message,
                };
                if !bound.is_empty() {
                    let local_key = if d == Direction::Ingress { "destination" } else { "source" };
                    if let Some(l) = r.local.filter(|l| !addrs.iter().any(|a| overlaps(a, l))) {
                        out.push(finding(
                            "never-matches",
                            format!("rule {name}: its {local_key} {l} is outside every address of the ports bound to {}", g.id),
                        ));
                    } else if let Some(v6) = version(r).filter(|&v6| if v6 { !has6 } else { !has4 }) {
                        out.push(finding(
                            "never-matches",
                            format!(
                                "rule {name} is IPv{} only, and no port bound to {} has an IPv{} address",
                                if v6 { 6 } else { 4 },
                                g.id,
                                if v6 { 6 } else { 4 }
                            ),
                        ));
                    }
                }
                let same = |o: &Rule| {
                    (o.priority, o.action, o.protocol, o.ports, o.source_ports, &o.remote, o.local, o.icmp_type, o.icmp_code)
                        == (r.priority, r.action, r.protocol, r.ports, r.source_ports, &r.remote, r.local, r.icmp_type, r.icmp_code)
                };
                if let Some((j, o)) = rules[..i].iter().enumerate().find(|(_, o)| same(o)) {
                    out.push(finding(
                        "duplicate",
                        format!(
                            "rule {name} matches what rule {} (line {}) does, with the same action and priority",
                            rule_name(g, d, j, o),
                            o.loc.line
                        ),
                    ));
                }
            }
        }
        // Limits of the group.
        let group_at = |kind, message: String| Finding { kind, file: g.file.clone(), line: 1, object: g.id.clone(), rule: None, message };
        let weight = cfg.group_weight(g);
        if near(u64::from(weight), lim.rules_per_group) {
            out.push(group_at("quota", format!("{} counts {weight} rules of rules_per_group = {}", g.id, lim.rules_per_group)));
        }
        let members = policy.members(gi).len();
        if near(members as u64, lim.members_per_group) {
            out.push(group_at("quota", format!("{} has {members} members of members_per_group = {}", g.id, lim.members_per_group)));
        }
        let refs = g.ingress.iter().chain(&g.egress).filter(|r| matches!(r.remote, Remote::Group(_))).count();
        if near(refs as u64, lim.group_refs_per_group) {
            out.push(group_at(
                "quota",
                format!("{} has {refs} rules that reference a group, of group_refs_per_group = {}", g.id, lim.group_refs_per_group),
            ));
        }
    }
    for (pi, p) in cfg.ports.iter().enumerate() {
        let port_at = |message: String| Finding { kind: "quota", file: p.file.clone(), line: 1, object: p.id.clone(), rule: None, message };
        let groups = policy.port_groups(pi);
        let weight: u64 = groups.iter().map(|&g| u64::from(cfg.group_weight(policy.group(g)))).sum();
        if near(weight, lim.rules_per_port) {
            out.push(port_at(format!("{} counts {weight} rules of rules_per_port = {}", p.id, lim.rules_per_port)));
        }
        if near(groups.len() as u64, lim.groups_per_port) {
            out.push(port_at(format!("{} is bound to {} groups of groups_per_port = {}", p.id, groups.len(), lim.groups_per_port)));
        }
    }
    out.sort_by(|a, b| (&a.file, a.line, a.kind).cmp(&(&b.file, b.line, b.kind)));
    out
}
