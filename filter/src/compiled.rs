//! The compiled classifier: what the datapath judges every first packet
//! with. Each port's merged policy, per direction, becomes an immutable
//! [`Table`] whose lookup returns exactly the reference evaluator's
//! decision, rule identity included.
//!
//! # Design
//! All three policy models reduce to *first match over a list* plus a
//! default, once the list is put in the right order:
//! - `priority`: intra-group-accept entries first (remote = the group's
//!   members, every other field a wildcard), then the port's rules stably
//!   sorted by (priority, deny before allow): the stable sort keeps group
//!   binding order and file order as the last tie-breaks, which is exactly
//!   the reference's "only a strictly better rule replaces the one held";
//! - `ordered`: the rules in binding order, then file order;
//! - `union`: the allow rules in that order (deny rules never decide).
//!
//! First match over that list is a packet-classification problem, solved by
//! the bit-vector engine in `bits.rs` (see the crate documentation
//! for the measurements behind the choice). Group references and prefix
//! lists are expanded into address *sets* of one rule (several intervals
//! on one field, one bit), never into one rule per member. IPv4 and IPv6
//! have separate engines, each holding only the rules that can match its
//! family.
//!
//! Ports with the same group list get the same table ([`Compiled`] shares
//! them through an `Arc`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use sgswitch_config::{Action, Direction, GroupType, IntraGroup, PolicyModel, Rule};

use crate::bits::{Bits, Constraints, FamilyKey, Located, Point};
use crate::decision::{By, Decision, Packet, RuleRef, Verdict};
use crate::policy::{Policy, PortIdx};

/// What a lookup reads off a packet, as plain integers. IPv4 addresses sit
/// in the low 32 bits. Both addresses are of the family `v6` says.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key {
    pub v6: bool,
    pub proto: u8,
    pub remote: u128,
    pub local: u128,
    pub dst_port: u16,
    pub src_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

fn addr_bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6),
    }
}

impl Key {
    /// The key of a packet whose two addresses are of one family (every
    /// packet on the wire; `sgswitch trace` refuses the others).
    pub fn of(p: &Packet) -> Key {
        Key {
            v6: p.remote.is_ipv6(),
            proto: p.proto,
            remote: addr_bits(p.remote),
            local: addr_bits(p.local),
            dst_port: p.dst_port(),
            src_port: p.src_port(),
            icmp_type: p.icmp_type,
            icmp_code: p.icmp_code,
        }
    }

    fn family<A>(&self, addr: impl Fn(u128) -> A) -> FamilyKey<A> {
        FamilyKey {
            remote: addr(self.remote),
            local: addr(self.local),
            proto: u16::from(self.proto),
            dst_port: self.dst_port,
            src_port: self.src_port,
            icmp: u16::from(self.icmp_type) << 8 | u16::from(self.icmp_code),
        }
    }
}

/// The IPv4 view of an address field: its low 32 bits.
#[expect(clippy::cast_possible_truncation, reason = "IPv4 addresses are the low 32 bits of the key")]
fn low32(x: u128) -> u32 {
    x as u32
}

/// One port's policy in one direction, compiled.
#[derive(Clone, Debug)]
pub struct Table {
    /// What each match means, in match order.
    decisions: Vec<Decision>,
    default: Decision,
    v4: Bits<u32>,
    v6: Bits<u128>,
    build_ns: u64,
}

impl Table {
    /// The decision for `k`.
    #[inline]
    pub fn classify(&self, k: &Key) -> Decision {
        self.lookup(k).and_then(|i| self.decisions.get(i as usize).copied()).unwrap_or(self.default)
    }

    /// The index of the matching entry in match order, `None` for the
    /// default.
    #[inline]
    pub fn lookup(&self, k: &Key) -> Option<u32> {
        if k.v6 { self.v6.lookup(&k.family(|x| x)) } else { self.v4.lookup(&k.family(low32)) }
    }

    /// [`Table::classify`] for a batch: `out[i]` is the decision of
    /// `keys[i]`; extra outputs are left alone.
    ///
    /// Per chunk of 64 keys, first every key's rows are located (the
    /// interval searches, independent loads whose cache misses overlap),
    /// then every key's rows are ANDed.
    pub fn classify_batch(&self, keys: &[Key], out: &mut [Decision]) {
        const CHUNK: usize = 64;
        let mut located = [Located::default(); CHUNK];
        for (ks, os) in keys.chunks(CHUNK).zip(out.chunks_mut(CHUNK)) {
            for (l, k) in located.iter_mut().zip(ks) {
                *l = if k.v6 { self.v6.locate(&k.family(|x| x)) } else { self.v4.locate(&k.family(low32)) };
            }
            for ((o, l), k) in os.iter_mut().zip(&located).zip(ks) {
                *o = self.decision(if k.v6 { self.v6.resolve(l) } else { self.v4.resolve(l) });
            }
        }
    }

    /// The decision behind an index [`Table::lookup`] returned.
    pub fn decision(&self, index: Option<u32>) -> Decision {
        index.and_then(|i| self.decisions.get(i as usize).copied()).unwrap_or(self.default)
    }

    /// Entries (rules and intra-group entries) in match order.
    pub fn len(&self) -> usize {
        self.decisions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.decisions.is_empty()
    }

    /// Bytes this table holds on the heap and inline.
    pub fn memory_bytes(&self) -> usize {
        size_of::<Table>() + self.decisions.len() * size_of::<Decision>() + self.v4.memory_bytes() + self.v6.memory_bytes()
    }

    /// How long building took, in nanoseconds.
    pub fn build_ns(&self) -> u64 {
        self.build_ns
    }

    /// Shape of the remote-address fields (IPv4, IPv6): intervals and
    /// distinct rows, for the benchmark report.
    pub fn remote_shape(&self) -> [(usize, usize); 2] {
        [self.v4.remote_shape(), self.v6.remote_shape()]
    }
}

/// A port's two tables.
#[derive(Clone, Debug)]
pub struct PortTables {
    pub ingress: Table,
    pub egress: Table,
}

impl PortTables {
    pub fn get(&self, d: Direction) -> &Table {
        match d {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// One entry of a first-match list before compiling: what it decides and
/// what it matches.
struct Entry<'a> {
    decision: Decision,
    remote: &'a [IpNet],
    rule: Option<&'a Rule>,
}

/// The port's first-match list in direction `d`, per the policy model.
fn entries<'a>(policy: &'a Policy, port: PortIdx, d: Direction) -> Vec<Entry<'a>> {
    let rule_entry = |(id, r): (RuleRef, &'a Rule)| Entry {
        decision: Decision { verdict: id.action.into(), by: By::Rule(id) },
        remote: policy.remote_nets(&r.remote),
        rule: Some(r),
    };
    let rules = policy.port_rules(port, d);
    match policy.config().host.policy_model {
        PolicyModel::Priority => {
            let intra = policy
                .port_groups(port)
                .iter()
                .filter(|&&g| policy.group(g).kind == GroupType::Basic && policy.group(g).intra_group == IntraGroup::Accept)
                .map(|&g| Entry {
                    decision: Decision { verdict: Verdict::Allow, by: By::IntraGroup { group: g } },
                    remote: policy.members(g),
                    rule: None,
                });
            let mut sorted: Vec<(RuleRef, &Rule)> = rules.collect();
            sorted.sort_by_key(|(id, _)| (id.priority, id.action));
            intra.chain(sorted.into_iter().map(rule_entry)).collect()
        }
        PolicyModel::Ordered => rules.map(rule_entry).collect(),
        PolicyModel::Union => rules.filter(|(id, _)| id.action == Action::Allow).map(rule_entry).collect(),
    }
}

/// The full range of a field.
fn any<T: Point>() -> Vec<(T, T)> {
    vec![(T::MIN, T::MAX)]
}

fn opt_range(r: Option<(u16, u16)>) -> Vec<(u16, u16)> {
    r.map_or_else(any, |r| vec![r])
}

/// The intervals of the nets of one family.
fn net_intervals<A: Point>(nets: &[IpNet], v6: bool, bounds: impl Fn(&IpNet) -> (A, A)) -> Vec<(A, A)> {
    nets.iter().filter(|n| matches!(n, IpNet::V6(_)) == v6).map(bounds).collect()
}

fn v4_bounds(n: &IpNet) -> (u32, u32) {
    match n {
        IpNet::V4(n) => (u32::from(n.network()), u32::from(n.broadcast())),
        IpNet::V6(_) => (1, 0),
    }
}

fn v6_bounds(n: &IpNet) -> (u128, u128) {
    match n {
        IpNet::V6(n) => (u128::from(n.network()), u128::from(n.broadcast())),
        IpNet::V4(_) => (1, 0),
    }
}

/// The constraints of `e` in one family; `None` if it can never match a
/// packet of that family.
fn constraints<A: Point>(e: &Entry<'_>, v6: bool, bounds: &dyn Fn(&IpNet) -> (A, A)) -> Option<Constraints<A>> {
    let remote = net_intervals(e.remote, v6, bounds);
    if remote.is_empty() {
        return None;
    }
    let Some(r) = e.rule else {
        return Some(Constraints { remote, local: any(), proto: any(), dst_port: any(), src_port: any(), icmp: any() });
    };
    let local = match r.local {
        None => any(),
        Some(n) if matches!(n, IpNet::V6(_)) == v6 => vec![bounds(&n)],
        Some(_) => return None,
    };
    let icmp = match (r.icmp_type, r.icmp_code) {
        (None, None) => any(),
        (Some(t), None) => vec![(u16::from(t) << 8, u16::from(t) << 8 | 0xff)],
        (Some(t), Some(c)) => {
            let x = u16::from(t) << 8 | u16::from(c);
            vec![(x, x)]
        }
        // A code without a type never loads; matched as written anyway.
        (None, Some(c)) => (0u16..=255).map(|t| (t << 8 | u16::from(c), t << 8 | u16::from(c))).collect(),
    };
    Some(Constraints {
        remote,
        local,
        proto: r.protocol.map_or_else(any, |p| vec![(u16::from(p), u16::from(p))]),
        dst_port: opt_range(r.ports.map(|p| (p.start, p.end))),
        src_port: opt_range(r.source_ports.map(|p| (p.start, p.end))),
        icmp,
    })
}

/// The constraints of the entries of `list` that can match a packet of
/// the family, and their entry indices.
fn family_rules<A: Point>(list: &[Entry<'_>], v6: bool, bounds: &dyn Fn(&IpNet) -> (A, A)) -> (Vec<Constraints<A>>, Vec<u32>) {
    let mut cons = Vec::new();
    let mut entry = Vec::new();
    for (i, e) in (0u32..).zip(list) {
        if let Some(c) = constraints(e, v6, bounds) {
            cons.push(c);
            entry.push(i);
        }
    }
    (cons, entry)
}

/// One family's table of `list`; with `before` (the list the table before
/// was built from, and its table) the fields that did not change are taken
/// from it.
fn family<A: Point>(list: &[Entry<'_>], v6: bool, bounds: &dyn Fn(&IpNet) -> (A, A), before: Option<(&[Entry<'_>], &Bits<A>)>) -> Bits<A> {
    let (cons, entry) = family_rules(list, v6, bounds);
    let old = before.map(|(l, b)| (family_rules(l, v6, bounds).0, b));
    Bits::build_after(&cons, entry, old.as_ref().map(|(c, b)| (c.as_slice(), *b)))
}

/// Clock for build times; the only clock read in this crate, and never on
/// the lookup path.
#[expect(clippy::disallowed_methods, reason = "build time is reported, not used for any decision")]
fn now() -> std::time::Instant {
    std::time::Instant::now()
}

impl Table {
    /// Compiles the policy of `port` in direction `d`.
    pub fn build(policy: &Policy, port: PortIdx, d: Direction) -> Table {
        Table::build_after(policy, port, d, None)
    }

    /// [`Table::build`], taking from `before` (the table of the same group
    /// list under the policy before, at its port there) the fields whose
    /// inputs did not change.
    fn build_after(policy: &Policy, port: PortIdx, d: Direction, before: Option<(&Policy, PortIdx, &Table)>) -> Table {
        let t0 = now();
        let list = entries(policy, port, d);
        let old = before.map(|(p, i, t)| (entries(p, i, d), t));
        let v4 = family(&list, false, &v4_bounds, old.as_ref().map(|(l, t)| (l.as_slice(), &t.v4)));
        let v6 = family(&list, true, &v6_bounds, old.as_ref().map(|(l, t)| (l.as_slice(), &t.v6)));
        let decisions = list.iter().map(|e| e.decision).collect();
        let build_ns = u64::try_from(t0.elapsed().as_nanos()).unwrap_or(u64::MAX);
        Table { decisions, default: policy.default_decision(port, d), v4, v6, build_ns }
    }
}

/// Whether the tables of group list `list` compile to the same thing
/// under `a` and `b`: what [`Table::build`] reads of a policy for it.
fn same_inputs(a: &Policy, b: &Policy, list: &[u16]) -> bool {
    a.config().host.policy_model == b.config().host.policy_model
        && list.iter().all(|&g| {
            let (ga, gb) = (a.group(g), b.group(g));
            ga == gb
                && a.members(g) == b.members(g)
                && ga.ingress.iter().chain(&ga.egress).all(|r| a.remote_nets(&r.remote) == b.remote_nets(&r.remote))
        })
}

/// Every port's tables for one policy: the snapshot the datapath reads.
#[derive(Debug)]
pub struct Compiled {
    policy: Arc<Policy>,
    generation: u64,
    /// Per port (same index as the policy's ports); ports with the same
    /// group list share one `PortTables`.
    ports: Vec<Arc<PortTables>>,
}

impl Compiled {
    /// Compiles every port of `policy`.
    pub fn new(policy: Arc<Policy>, generation: u64) -> Compiled {
        Compiled::reusing(policy, generation, None)
    }

    /// Compiles every port of `policy`, taking from `previous` the tables
    /// of each group list whose inputs are unchanged (the same groups at
    /// the same indices, the same members of each, the same addresses
    /// behind every rule's remote, the same model): a change to one group
    /// recompiles only the lists that hold it or reference it, and in
    /// those, only the fields whose inputs changed.
    pub fn reusing(policy: Arc<Policy>, generation: u64, previous: Option<&Compiled>) -> Compiled {
        let old: HashMap<&[u16], (PortIdx, &Arc<PortTables>)> = previous
            .map(|c| (0..c.policy.ports().len()).filter_map(|p| Some((c.policy.port_groups(p), (p, c.ports.get(p)?)))).collect())
            .unwrap_or_default();
        let mut by_groups: HashMap<&[u16], Arc<PortTables>> = HashMap::new();
        let ports = (0..policy.ports().len())
            .map(|p| {
                let list = policy.port_groups(p);
                by_groups
                    .entry(list)
                    .or_insert_with(|| match (previous, old.get(list)) {
                        (Some(c), Some((_, t))) if same_inputs(&c.policy, &policy, list) => Arc::clone(t),
                        (Some(c), Some((q, t))) => Arc::new(PortTables {
                            ingress: Table::build_after(&policy, p, Direction::Ingress, Some((&c.policy, *q, &t.ingress))),
                            egress: Table::build_after(&policy, p, Direction::Egress, Some((&c.policy, *q, &t.egress))),
                        }),
                        _ => Arc::new(PortTables {
                            ingress: Table::build(&policy, p, Direction::Ingress),
                            egress: Table::build(&policy, p, Direction::Egress),
                        }),
                    })
                    .clone()
            })
            .collect();
        drop(by_groups);
        drop(old);
        Compiled { policy, generation, ports }
    }

    pub fn policy(&self) -> &Arc<Policy> {
        &self.policy
    }

    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// The tables of `port`, if it exists.
    pub fn port(&self, port: PortIdx) -> Option<&PortTables> {
        self.ports.get(port).map(|t| &**t)
    }

    /// The decision for the first packet of a flow at `port`: the same
    /// answer as [`Policy::evaluate`], from the compiled tables. An unknown
    /// port is denied.
    pub fn decide(&self, port: PortIdx, pkt: &Packet) -> Decision {
        self.port(port).map_or(Decision { verdict: Verdict::Deny, by: By::Default }, |t| t.get(pkt.direction).classify(&Key::of(pkt)))
    }

    /// Each distinct `PortTables` once (ports sharing a group list share
    /// one).
    fn distinct(&self) -> Vec<&Arc<PortTables>> {
        let mut seen: Vec<&Arc<PortTables>> = self.ports.iter().collect();
        seen.sort_unstable_by_key(|t| Arc::as_ptr(t));
        seen.dedup_by_key(|t| Arc::as_ptr(t));
        seen
    }

    /// Distinct tables (ports sharing a group list count once).
    pub fn distinct_tables(&self) -> usize {
        self.distinct().len()
    }

    /// Bytes held by all tables, shared ones counted once.
    pub fn memory_bytes(&self) -> usize {
        self.distinct().iter().map(|t| t.ingress.memory_bytes() + t.egress.memory_bytes()).sum()
    }
}
