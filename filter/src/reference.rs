//! The reference evaluator: `semantics.md`, read literally.
//!
//! # Design
//! Each model is a loop over the port's groups in binding order and their
//! rules in file order, with the model's tie-breaks spelled out. Nothing is
//! precomputed beyond group memberships. This is the oracle: when a faster
//! classifier disagrees with it, the faster one is wrong.

use sgswitch_config::{Action, Direction, GroupType, IntraGroup, PolicyModel, Rule};

use crate::decision::{By, Decision, Packet, RuleRef, Verdict};
use crate::policy::{Policy, PortIdx};

impl Policy {
    /// Whether `rule` (of the packet's direction) matches `pkt`.
    ///
    /// The fields are read off the packet as written: the remote side is the
    /// source for ingress and the destination for egress; `ports` is always
    /// the destination port and `source_ports` the source port. A CIDR of one
    /// IP version never matches an address of the other.
    pub fn rule_matches(&self, rule: &Rule, pkt: &Packet) -> bool {
        if rule.protocol.is_some_and(|p| p != pkt.proto) {
            return false;
        }
        if !self.remote_contains(&rule.remote, pkt.remote) {
            return false;
        }
        if rule.local.is_some_and(|n| !n.contains(&pkt.local)) {
            return false;
        }
        if rule.ports.is_some_and(|r| !r.contains(pkt.dst_port())) {
            return false;
        }
        if rule.source_ports.is_some_and(|r| !r.contains(pkt.src_port())) {
            return false;
        }
        if rule.icmp_type.is_some_and(|t| t != pkt.icmp_type) {
            return false;
        }
        if rule.icmp_code.is_some_and(|c| c != pkt.icmp_code) {
            return false;
        }
        true
    }

    /// The decision for the first packet of a flow at `port`.
    pub fn evaluate(&self, port: PortIdx, pkt: &Packet) -> Decision {
        match self.config().host.policy_model {
            PolicyModel::Priority => self.evaluate_priority(port, pkt),
            PolicyModel::Ordered => self.evaluate_ordered(port, pkt),
            PolicyModel::Union => self.evaluate_union(port, pkt),
        }
    }

    /// Every rule of the port's groups in the packet's direction, in group
    /// binding order then file order.
    pub fn port_rules<'a>(&'a self, port: PortIdx, d: Direction) -> impl Iterator<Item = (RuleRef, &'a Rule)> + 'a {
        self.port_groups(port)
            .iter()
            .flat_map(move |&g| self.group(g).rules(d).iter().enumerate().map(move |(i, r)| (self.rule_ref(g, d, i), r)))
    }

    /// Alibaba ECS, steps 1 to 5 of `semantics.md`.
    fn evaluate_priority(&self, port: PortIdx, pkt: &Packet) -> Decision {
        // 1. Intra-group allow first, in either direction.
        for &g in self.port_groups(port) {
            let group = self.group(g);
            if group.kind == GroupType::Basic
                && group.intra_group == IntraGroup::Accept
                && self.members(g).iter().any(|n| n.contains(&pkt.remote))
            {
                return Decision { verdict: Verdict::Allow, by: By::IntraGroup { group: g } };
            }
        }
        // 2-4. All rules of the direction merged; the matching rule with the
        // lowest priority number wins, deny before allow at equal priority,
        // then group order, then file order (the iteration order, so only a
        // strictly better rule replaces the one held).
        let mut best: Option<RuleRef> = None;
        for (id, rule) in self.port_rules(port, pkt.direction) {
            if !self.rule_matches(rule, pkt) {
                continue;
            }
            let better = match best {
                None => true,
                Some(b) => (id.priority, id.action) < (b.priority, b.action),
            };
            if better {
                best = Some(id);
            }
        }
        if let Some(r) = best {
            return Decision { verdict: r.action.into(), by: By::Rule(r) };
        }
        // 5. Defaults.
        self.default_decision(port, pkt.direction)
    }

    /// The decision when nothing matched (`semantics.md`): under `priority`,
    /// ingress deny and egress allow for basic groups, deny for enterprise
    /// groups; under `ordered` and `union`, deny both ways.
    pub fn default_decision(&self, port: PortIdx, d: Direction) -> Decision {
        let verdict = match (self.config().host.policy_model, d) {
            (PolicyModel::Priority, Direction::Egress) if !self.port_is_enterprise(port) => Verdict::Allow,
            _ => Verdict::Deny,
        };
        Decision { verdict, by: By::Default }
    }

    /// Tencent CVM: first match across the groups in binding order; the
    /// implicit deny at the bottom.
    fn evaluate_ordered(&self, port: PortIdx, pkt: &Packet) -> Decision {
        for (id, rule) in self.port_rules(port, pkt.direction) {
            if self.rule_matches(rule, pkt) {
                return Decision { verdict: id.action.into(), by: By::Rule(id) };
            }
        }
        self.default_decision(port, pkt.direction)
    }

    /// AWS / OpenStack: allowed if any (allow) rule matches; the first in
    /// group order then file order is reported.
    fn evaluate_union(&self, port: PortIdx, pkt: &Packet) -> Decision {
        for (id, rule) in self.port_rules(port, pkt.direction) {
            if id.action == Action::Allow && self.rule_matches(rule, pkt) {
                return Decision { verdict: Verdict::Allow, by: By::Rule(id) };
            }
        }
        self.default_decision(port, pkt.direction)
    }
}
