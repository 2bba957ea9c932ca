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
//! - `missing-id`: a rule without an `id`, when `[lint] require_rule_ids`
//!   asks for them (duplicate ids are errors of the configuration);
//! - `quota`: use of a limit (`[limits]`) at 80% or more: rules per group
//!   and per port (a prefix-list rule counts as its `max_entries`), groups
//!   per port, members per group, group references per group.
//!
//! And per port, over its merged policy as the datapath evaluates it
//! ([`analyse`], exact: a walk of the elementary boxes of the port's rules):
//!
//! - `shadowed`: a rule that can never decide a packet of the port, with the
//!   rules (or intra-group allows) that decide wherever it matches;
//! - `redundant`: a rule whose removal changes no verdict of the port, with
//!   what decides in its place;
//! - `overlap`: an allow and a deny rule that match some of the same
//!   packets, where a tie decides which wins: equal priority (deny first)
//!   in the priority model, the groups' binding order in the ordered one.
//!
//! Each finding names the file and line, the group (and rule) or port, and
//! what is wrong.

use std::collections::BTreeSet;

use hashbrown::HashSet;
use std::fmt;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::Serialize;
use sgswitch_config::{Action, Config, Direction, GroupType, ICMP, ICMPV6, IntraGroup, PolicyModel, Remote, Rule};
use sgswitch_filter::{Policy, RuleRef};

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
                let name = g.rule_name(d, i);
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
                if r.id.is_none() && cfg.host.lint.require_rule_ids {
                    out.push(finding("missing-id", format!("rule {name} has no `id` ([lint] require_rule_ids = true)")));
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
                            g.rule_name(d, j),
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
    // A rule that matches no packet of any port is said once, by the
    // group's finding, where that finding says why.
    let never: HashSet<String> = out.iter().filter(|f| f.kind == "never-matches").filter_map(|f| f.rule.clone()).collect();
    out.extend(per_port(policy, &never));
    out.sort_by(|a, b| (&a.file, a.line, a.kind, &a.message).cmp(&(&b.file, b.line, b.kind, &b.message)));
    out
}

/// The per-port findings: shadowed and redundant rules and tie-decided
/// overlaps, one finding per rule (or pair) and kind, naming every port
/// where it holds; a rule matching no packet is left to its group's
/// finding where `never` (the rules the group findings say cannot match)
/// has it.
fn per_port(policy: &Policy, never: &HashSet<String>) -> Vec<Finding> {
    let cfg = policy.config();
    // (kind, rule, message) -> (the rule, the ports)
    type Key = (&'static str, u16, &'static str, u16, String);
    let mut found: std::collections::BTreeMap<Key, (RuleRef, Vec<&str>)> = std::collections::BTreeMap::new();
    let key = |kind: &'static str, r: &RuleRef, message: String| -> Key { (kind, r.group, r.direction.as_str(), r.index, message) };
    for (port, p) in cfg.ports.iter().enumerate() {
        for d in Direction::ALL {
            let a = analyse(policy, port, d);
            let name = |i: usize| match &a.order[i] {
                Decider::IntraGroup(g) => format!("the intra-group allow of {}", policy.group(*g).id),
                Decider::Rule(r) => format!("rule {}", policy.rule_name(*r)),
            };
            // At most five names, then how many more.
            let list = |set: &mut dyn ExactSizeIterator<Item = String>| {
                let n = set.len();
                let mut names: Vec<String> = set.take(5).collect();
                if n > 5 {
                    names.push(format!("{} more", n - 5));
                }
                names.join(", ")
            };
            for (i, dec) in a.order.iter().enumerate() {
                let Decider::Rule(r) = dec else { continue };
                if !a.decides[i] {
                    let message = if a.covered_by[i].is_empty() {
                        if never.contains(&policy.rule_name(*r)) {
                            continue;
                        }
                        format!("{} matches no packet of", name(i))
                    } else {
                        format!(
                            "{} never decides a packet (covered by {}) of",
                            name(i),
                            list(&mut a.covered_by[i].iter().map(|&c| name(c)))
                        )
                    };
                    found.entry(key("shadowed", r, message)).or_insert((*r, Vec::new())).1.push(&p.id);
                } else if !a.needed[i] {
                    let next = list(&mut a.next[i].iter().map(|n| n.map_or_else(|| "the default".to_owned(), name)));
                    let message = format!("removing {} changes no verdict (where it decides, {next} decides the same) of", name(i));
                    found.entry(key("redundant", r, message)).or_insert((*r, Vec::new())).1.push(&p.id);
                }
            }
            for &(w, l) in &a.ties {
                let (Decider::Rule(wr), Decider::Rule(_)) = (&a.order[w], &a.order[l]) else { continue };
                let by = if cfg.host.policy_model == PolicyModel::Ordered {
                    "the order the groups are bound in".to_owned()
                } else {
                    format!("the tie at priority {} (deny first)", wr.priority)
                };
                let message = format!(
                    "{} and {} match some of the same packets with different actions; {} wins by {by}, on",
                    name(w),
                    name(l),
                    name(w)
                );
                found.entry(key("overlap", wr, message)).or_insert((*wr, Vec::new())).1.push(&p.id);
            }
        }
    }
    found
        .into_iter()
        .map(|((kind, _, _, _, message), (r, mut ports))| {
            ports.dedup();
            let g = policy.group(r.group);
            Finding {
                kind,
                file: g.file.clone(),
                line: policy.rule(r).loc.line,
                object: g.id.clone(),
                rule: Some(policy.rule_name(r)),
                message: format!("{message} port{} {}", if ports.len() == 1 { "" } else { "s" }, ports.join(", ")),
            }
        })
        .collect()
}

// ---------------------------------------------------------------- per port

/// One decider of a port's merged policy, in the order the model tries
/// them: an intra-group allow (priority model) or a rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decider {
    IntraGroup(u16),
    Rule(RuleRef),
}

/// What the walk of a port's merged policy in one direction found, by the
/// rule's place in [`merged`]'s order.
#[derive(Debug, Default)]
pub struct Analysis {
    pub order: Vec<Decider>,
    /// The rule decides some packet.
    pub decides: Vec<bool>,
    /// Removing the rule changes some verdict.
    pub needed: Vec<bool>,
    /// Where the rule matches but another decides: those others, by place
    /// (empty for a rule that matches no packet of the port).
    pub covered_by: Vec<BTreeSet<usize>>,
    /// Where the rule decides: what decides without it (a place, or `None`
    /// for the default).
    pub next: Vec<BTreeSet<Option<usize>>>,
    /// Allow and deny rules both matching some packet where a tie decides
    /// (equal priority: deny first; or, in the ordered model, the group
    /// binding order): (the winner, the loser).
    pub ties: BTreeSet<(usize, usize)>,
}

/// The deciders of `port`'s policy in direction `d`, in the order its model
/// tries them.
pub fn merged(policy: &Policy, port: usize, d: Direction) -> Vec<Decider> {
    let mut rules: Vec<RuleRef> = policy.port_rules(port, d).map(|(id, _)| id).collect();
    let mut out = Vec::new();
    match policy.config().host.policy_model {
        PolicyModel::Priority => {
            for &g in policy.port_groups(port) {
                let group = policy.group(g);
                if group.kind == GroupType::Basic && group.intra_group == IntraGroup::Accept {
                    out.push(Decider::IntraGroup(g));
                }
            }
            // Stable: equal keys keep group order, then file order.
            rules.sort_by_key(|r| (r.priority, r.action));
        }
        PolicyModel::Ordered => {}
        PolicyModel::Union => rules.retain(|r| r.action == Action::Allow),
    }
    out.extend(rules.into_iter().map(Decider::Rule));
    out
}

/// An inclusive interval of one field.
type Span = (u128, u128);

fn net_span(n: &IpNet) -> Span {
    match n {
        IpNet::V4(n) => (u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
    }
}

/// The fields, in the order the walk splits them.
const FIELDS: usize = 7;

/// Where each decider matches, field by field, as sorted spans; an empty
/// list never matches.
fn spans_of(policy: &Policy, dec: &Decider, v6: bool) -> [Vec<Span>; FIELDS] {
    let all = |max: u128| vec![(0, max)];
    let addr_max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
    let fam = |n: &&IpNet| matches!(n, IpNet::V6(_)) == v6;
    match dec {
        Decider::IntraGroup(g) => [
            all(255),
            policy.members(*g).iter().filter(fam).map(net_span).collect(),
            all(addr_max),
            all(65535),
            all(65535),
            all(255),
            all(255),
        ],
        Decider::Rule(id) => {
            let r = policy.rule(*id);
            let one = |v: Option<u8>| v.map_or_else(|| all(255), |v| vec![(u128::from(v), u128::from(v))]);
            let range =
                |p: Option<sgswitch_config::PortRange>| p.map_or_else(|| all(65535), |p| vec![(u128::from(p.start), u128::from(p.end))]);
            let local = match r.local {
                Some(l) if fam(&&l) => vec![net_span(&l)],
                Some(_) => Vec::new(),
                None => all(addr_max),
            };
            [
                one(r.protocol),
                policy.remote_nets(&r.remote).iter().filter(fam).map(net_span).collect(),
                local,
                range(r.ports),
                range(r.source_ports),
                one(r.icmp_type),
                one(r.icmp_code),
            ]
        }
    }
}

/// Walks the elementary boxes of `port`'s merged policy in direction `d`:
/// each field is split at every boundary of the deciders still possible,
/// so every leaf is a box where the same deciders match (exact), and a
/// candidate set met twice at one depth is walked once.
pub fn analyse(policy: &Policy, port: usize, d: Direction) -> Analysis {
    let order = merged(policy, port, d);
    let n = order.len();
    let mut a = Analysis {
        decides: vec![false; n],
        needed: vec![false; n],
        covered_by: vec![BTreeSet::new(); n],
        next: vec![BTreeSet::new(); n],
        ..Analysis::default()
    };
    let default = policy.default_decision(port, d).verdict == sgswitch_filter::Verdict::Allow;
    let allows = |i: usize| match &order[i] {
        Decider::IntraGroup(_) => true,
        Decider::Rule(r) => r.action == Action::Allow,
    };
    let ordered = policy.config().host.policy_model == PolicyModel::Ordered;
    let p = &policy.config().ports[port];
    for v6 in [false, true] {
        let own: Vec<Span> = (if v6 { &p.ipv6 } else { &p.ipv4 }).iter().map(net_span).collect();
        if own.is_empty() {
            continue;
        }
        let spans: Vec<[Vec<Span>; FIELDS]> = order.iter().map(|dec| spans_of(policy, dec, v6)).collect();
        let addr_max = if v6 { u128::MAX } else { u128::from(u32::MAX) };
        // ICMP is IPv4's, ICMPv6 IPv6's.
        let protos: Vec<Span> = if v6 { vec![(0, 0), (2, 255)] } else { vec![(0, 57), (59, 255)] };
        let domains: [Vec<Span>; FIELDS] =
            [protos, vec![(0, addr_max)], own, vec![(0, 65535)], vec![(0, 65535)], vec![(0, 255)], vec![(0, 255)]];
        let candidates: Vec<usize> = (0..n).filter(|&i| spans[i].iter().all(|s| !s.is_empty())).collect();
        let mut seen = HashSet::new();
        let mut last_cover = vec![usize::MAX; n];
        let mut leaf = |m: &[usize]| {
            let Some(&first) = m.first() else { return };
            if let Decider::Rule(_) = order[first] {
                a.decides[first] = true;
                let after = m.get(1).copied();
                a.next[first].insert(after);
                if after.map_or(default, allows) != allows(first) {
                    a.needed[first] = true;
                }
            }
            for &other in &m[1..] {
                // Most boxes a rule matches in share their first decider.
                if last_cover[other] != first {
                    last_cover[other] = first;
                    a.covered_by[other].insert(first);
                }
            }
            // The first rule of the other action: decided by a tie?
            if let Some(&loser) = m.iter().find(|&&i| allows(i) != allows(first)) {
                if let (Decider::Rule(w), Decider::Rule(l)) = (&order[first], &order[loser]) {
                    let tie = if ordered { w.group != l.group } else { w.priority == l.priority };
                    if tie && policy.config().host.policy_model != PolicyModel::Union {
                        a.ties.insert((first, loser));
                    }
                }
            }
        };
        walk(0, &candidates, &spans, &domains, &mut seen, &mut leaf);
    }
    a.order = order;
    a
}

fn walk(
    field: usize,
    cands: &[usize],
    spans: &[[Vec<Span>; FIELDS]],
    domains: &[Vec<Span>; FIELDS],
    seen: &mut HashSet<(usize, Vec<usize>)>,
    leaf: &mut impl FnMut(&[usize]),
) {
    if field == FIELDS {
        leaf(cands);
        return;
    }
    // A field no candidate narrows (every span covers the domain) splits
    // nothing.
    let whole = |c: &usize| domains[field].iter().all(|&(lo, hi)| spans[*c][field].iter().any(|&(a, b)| a <= lo && hi <= b));
    if cands.iter().all(whole) {
        walk(field + 1, cands, spans, domains, seen, leaf);
        return;
    }
    if !seen.insert((field, cands.to_vec())) {
        return;
    }
    // A sweep over the field: every start and end + 1 of the domain and of
    // the candidates' spans, in order; `inside[k]` counts the spans of
    // candidate `cands[k]` that hold the current segment.
    let mut events: Vec<(u128, usize, bool)> = Vec::new();
    for (k, &c) in cands.iter().enumerate() {
        for &(lo, hi) in &spans[c][field] {
            events.push((lo, k, true));
            if let Some(after) = hi.checked_add(1) {
                events.push((after, k, false));
            }
        }
    }
    // The domain's own bounds cut too (`usize::MAX`: no candidate).
    for &(lo, hi) in &domains[field] {
        events.push((lo, usize::MAX, true));
        events.extend(hi.checked_add(1).map(|h| (h, usize::MAX, true)));
    }
    events.sort_unstable_by_key(|e| e.0);
    let in_domain = |v: u128| domains[field].iter().any(|&(lo, hi)| lo <= v && v <= hi);
    let mut inside = vec![0u32; cands.len()];
    // The candidates holding the segment, as bits by place in `cands`:
    // the next set is read off them in order without scanning them all.
    let mut holds = vec![0u64; cands.len().div_ceil(64)];
    let mut holding = 0usize;
    let mut ev = 0;
    let mut next: Vec<usize> = Vec::with_capacity(cands.len());
    let mut last: Vec<usize> = Vec::with_capacity(cands.len());
    let mut first = true;
    while ev < events.len() {
        let start = events[ev].0;
        while ev < events.len() && events[ev].0 == start {
            let (_, k, open) = events[ev];
            ev += 1;
            if k == usize::MAX {
                continue;
            }
            if open {
                if inside[k] == 0 {
                    holding += 1;
                    holds[k / 64] |= 1 << (k % 64);
                }
                inside[k] += 1;
            } else {
                inside[k] -= 1;
                if inside[k] == 0 {
                    holding -= 1;
                    holds[k / 64] &= !(1 << (k % 64));
                }
            }
        }
        if !in_domain(start) {
            continue;
        }
        next.clear();
        if holding > 0 {
            for (w, &word) in holds.iter().enumerate() {
                let mut bits = word;
                while bits != 0 {
                    next.push(cands[w * 64 + bits.trailing_zeros() as usize]);
                    bits &= bits - 1;
                }
            }
        }
        // Neighbouring segments with the same deciders are one box.
        if !first && last == next {
            continue;
        }
        first = false;
        walk(field + 1, &next, spans, domains, seen, leaf);
        std::mem::swap(&mut last, &mut next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use sgswitch_config::Config;
    use sgswitch_filter::{By, Packet};
    use std::net::{IpAddr, Ipv4Addr};

    /// A small configuration: two ports (p1 in sg-a and sg-b, p2 in sg-b),
    /// the rules given as (group, direction, TOML body).
    fn config(model: &str, intra_a: bool, rules: &[(usize, bool, String)]) -> Config {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, text: String| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("folder")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("host.toml", format!("policy_model = \"{model}\"\n"));
        write("ports/p1.toml", "id = \"p1\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-b\"]\n".into());
        write("ports/p2.toml", "id = \"p2\"\nipv4 = [\"10.1.0.5\"]\nsecurity_groups = [\"sg-b\"]\n".into());
        for (g, id) in ["sg-a", "sg-b"].iter().enumerate() {
            let intra = if g == 0 && !intra_a { "intra_group = \"drop\"\n" } else { "" };
            let body: String = rules
                .iter()
                .filter(|(rg, _, _)| *rg == g)
                .map(|(_, ingress, r)| format!("\n[[{}]]\n{r}\n", if *ingress { "ingress" } else { "egress" }))
                .collect();
            write(&format!("groups/{id}.toml"), format!("id = \"{id}\"\n{intra}{body}"));
        }
        sgswitch_config::load_dir(dir.path()).expect("the generated configuration loads")
    }

    /// A generated rule: protocol, ports, remote (indices into the choices
    /// below), priority, deny, a local side.
    type Shape = (usize, usize, usize, u8, bool, bool);
    /// A generated rule in group 0 or 1, ingress or egress.
    type Spec = (usize, bool, Shape);

    fn rule_text(model: &str, ingress: bool, (proto, ports, remote, prio, deny, local): Shape) -> String {
        let (remote_key, local_key) = if ingress { ("source", "destination") } else { ("destination", "source") };
        let proto_s = ["tcp", "udp", "all", "icmp"][proto];
        let mut t = format!(
            "protocol = \"{proto_s}\"\n{remote_key} = \"{}\"\n",
            ["0.0.0.0/0", "10.0.0.0/8", "10.1.0.0/16", "192.168.0.0/16", "sg-b"][remote]
        );
        if proto < 2 && ports > 0 {
            t += &format!("ports = \"{}\"\n", ["", "22/22", "80/80", "20/100"][ports]);
        }
        if model == "priority" {
            t += &format!("priority = {prio}\n");
        }
        if deny && model != "union" {
            t += "action = \"deny\"\n";
        }
        if local {
            t += &format!("{local_key} = \"10.0.0.1/32\"\n");
        }
        t
    }

    /// Every elementary box of the small configurations, by brute force:
    /// one packet per combination of field segments.
    fn packets(d: Direction, local: Ipv4Addr) -> Vec<Packet> {
        let remotes = [
            "0.0.0.0",
            "10.0.0.0",
            "10.0.0.1",
            "10.0.0.2",
            "10.1.0.0",
            "10.1.0.5",
            "10.1.0.6",
            "10.2.0.0",
            "11.0.0.0",
            "192.168.0.0",
            "192.169.0.0",
        ];
        let mut out = Vec::new();
        for proto in [1u8, 6, 17, 47] {
            for r in remotes {
                for port in [0u16, 20, 22, 23, 80, 81, 101] {
                    let remote = IpAddr::V4(r.parse().expect("address"));
                    let (remote_port, local_port) = if d == Direction::Ingress { (40000, port) } else { (port, 40000) };
                    out.push(Packet {
                        direction: d,
                        proto,
                        remote,
                        local: IpAddr::V4(local),
                        remote_port,
                        local_port,
                        icmp_type: 8,
                        icmp_code: 0,
                    });
                }
            }
        }
        out
    }

    fn without(cfg: &Config, r: RuleRef) -> Policy {
        let mut c = cfg.clone();
        let g = &mut c.groups[usize::from(r.group)];
        match r.direction {
            Direction::Ingress => g.ingress.remove(usize::from(r.index)),
            Direction::Egress => g.egress.remove(usize::from(r.index)),
        };
        Policy::new(c)
    }

    fn check(model: &str, intra_a: bool, specs: &[Spec]) -> Result<(), TestCaseError> {
        let rules: Vec<(usize, bool, String)> = specs.iter().map(|&(g, ing, s)| (g, ing, rule_text(model, ing, s))).collect();
        let cfg = config(model, intra_a, &rules);
        let policy = Policy::new(cfg.clone());
        for (port, local) in [(0usize, Ipv4Addr::new(10, 0, 0, 1)), (1, Ipv4Addr::new(10, 1, 0, 5))] {
            for d in Direction::ALL {
                let a = analyse(&policy, port, d);
                let pkts = packets(d, local);
                let decider = |pol: &Policy, p: &Packet| pol.evaluate(port, p);
                for (i, dec) in a.order.iter().enumerate() {
                    let Decider::Rule(r) = dec else { continue };
                    let decides = pkts.iter().any(|p| decider(&policy, p).by == By::Rule(*r));
                    prop_assert_eq!(
                        a.decides[i],
                        decides,
                        "decides, {} {} port {} {:?}\n{:#?}",
                        model,
                        policy.rule_name(*r),
                        port,
                        d,
                        rules
                    );
                    let gone = without(&cfg, *r);
                    let needed = pkts.iter().any(|p| decider(&policy, p).verdict != decider(&gone, p).verdict);
                    prop_assert_eq!(a.needed[i], needed, "needed, {} {} port {} {:?}\n{:#?}", model, policy.rule_name(*r), port, d, rules);
                    // The covering deciders decide wherever it matches.
                    if !decides {
                        for p in pkts.iter().filter(|p| policy.rule_matches(policy.rule(*r), p)) {
                            let by = decider(&policy, p).by;
                            let place = a.order.iter().position(|o| match (o, by) {
                                (Decider::Rule(x), By::Rule(y)) => *x == y,
                                (Decider::IntraGroup(g), By::IntraGroup { group }) => *g == group,
                                _ => false,
                            });
                            prop_assert!(place.is_some_and(|c| a.covered_by[i].contains(&c)), "cover of {}", policy.rule_name(*r));
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn spec() -> impl Strategy<Value = Spec> {
        (0..2usize, any::<bool>(), (0..4usize, 0..4usize, 0..5usize, 1..4u8, any::<bool>(), proptest::bool::weighted(0.2)))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(150))]
        #[test]
        fn the_walk_agrees_with_brute_force_priority(intra: bool, specs in proptest::collection::vec(spec(), 1..8)) {
            check("priority", intra, &specs)?;
        }

        #[test]
        fn the_walk_agrees_with_brute_force_ordered(specs in proptest::collection::vec(spec(), 1..8)) {
            check("ordered", false, &specs)?;
        }

        #[test]
        fn the_walk_agrees_with_brute_force_union(specs in proptest::collection::vec(spec(), 1..8)) {
            check("union", false, &specs)?;
        }
    }
}
