//! The question and the answer: a packet as a port sees it, and a decision.

use std::net::IpAddr;

use sgswitch_config::{Action, Direction};

/// The first packet of a flow, from the point of view of one port.
///
/// `remote` is the packet's source for ingress and its destination for
/// egress; `local` is the port's side. Ports and ICMP type/code are read only
/// when the protocol has them (tcp/udp, icmp/icmpv6).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Packet {
    pub direction: Direction,
    /// IP protocol number (IPv6: the upper-layer protocol).
    pub proto: u8,
    pub remote: IpAddr,
    pub local: IpAddr,
    pub remote_port: u16,
    pub local_port: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
}

impl Packet {
    /// The packet's destination port: the VM's own port for ingress, the
    /// remote service's port for egress. Rule `ports` match this.
    pub fn dst_port(&self) -> u16 {
        match self.direction {
            Direction::Ingress => self.local_port,
            Direction::Egress => self.remote_port,
        }
    }

    /// The packet's source port. Rule `source_ports` match this.
    pub fn src_port(&self) -> u16 {
        match self.direction {
            Direction::Ingress => self.remote_port,
            Direction::Egress => self.local_port,
        }
    }
}

/// Allow or deny.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verdict {
    Allow,
    Deny,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        }
    }
}

impl From<Action> for Verdict {
    fn from(a: Action) -> Self {
        match a {
            Action::Allow => Verdict::Allow,
            Action::Deny => Verdict::Deny,
        }
    }
}

/// The identity of a rule: group (index into the policy's groups, which are
/// sorted by id), direction, 0-based index among that group's rules of that
/// direction as written in the file, and the rule's priority and action.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RuleRef {
    pub group: u16,
    pub direction: Direction,
    pub index: u16,
    pub priority: u8,
    pub action: Action,
}

/// What decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum By {
    /// A rule matched and decided.
    Rule(RuleRef),
    /// The remote address is a member of a basic group with intra-group
    /// policy `accept` that the port belongs to (priority model only).
    IntraGroup { group: u16 },
    /// No rule matched; the model's default applied.
    Default,
}

impl By {
    /// The JSON word: `rule`, `intra-group` or `default`.
    pub fn as_str(self) -> &'static str {
        match self {
            By::Rule(_) => "rule",
            By::IntraGroup { .. } => "intra-group",
            By::Default => "default",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Decision {
    pub verdict: Verdict,
    pub by: By,
}

impl Decision {
    pub fn rule(&self) -> Option<RuleRef> {
        match self.by {
            By::Rule(r) => Some(r),
            _ => None,
        }
    }
}
