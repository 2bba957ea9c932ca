//! Words for people: rules, packets and decisions as plain text.

use std::fmt::Write;
use std::net::{IpAddr, SocketAddr};

use sgswitch_config::{Direction, ICMP, ICMPV6, PolicyModel, Rule, TCP, UDP, protocol_name};
use sgswitch_filter::{By, Decision, Packet, Policy, PortIdx};

/// `allow tcp 22/22 from pl-office`, with the optional fields that narrow it.
pub(crate) fn rule(r: &Rule, d: Direction) -> String {
    let mut s = format!("{} {}", r.action.as_str(), protocol_name(r.protocol));
    if let Some(p) = r.ports {
        let _ = write!(s, " {p}");
    }
    if let Some(t) = r.icmp_type {
        let _ = write!(s, " type {t}");
        if let Some(c) = r.icmp_code {
            let _ = write!(s, " code {c}");
        }
    }
    let (from_to, local_word) = match d {
        Direction::Ingress => ("from", "to"),
        Direction::Egress => ("to", "from"),
    };
    let _ = write!(s, " {from_to} {}", r.remote);
    if let Some(sp) = r.source_ports {
        let _ = write!(s, " source ports {sp}");
    }
    if let Some(l) = r.local {
        let _ = write!(s, " {local_word} {l}");
    }
    s
}

fn endpoint(addr: IpAddr, port: Option<u16>) -> String {
    match port {
        Some(p) => SocketAddr::new(addr, p).to_string(),
        None => addr.to_string(),
    }
}

/// `tcp 198.51.100.7:40000 -> 10.0.0.11:22`: the packet as it travels.
pub(crate) fn packet(p: &Packet) -> String {
    let ports = matches!(p.proto, TCP | UDP);
    let (src, sport, dst, dport) = match p.direction {
        Direction::Ingress => (p.remote, p.remote_port, p.local, p.local_port),
        Direction::Egress => (p.local, p.local_port, p.remote, p.remote_port),
    };
    let mut s =
        format!("{} {} -> {}", protocol_name(Some(p.proto)), endpoint(src, ports.then_some(sport)), endpoint(dst, ports.then_some(dport)));
    if matches!(p.proto, ICMP | ICMPV6) {
        let _ = write!(s, " type {} code {}", p.icmp_type, p.icmp_code);
    }
    s
}

/// One line: which rule (or default, or intra-group) decided, and why.
pub(crate) fn why(policy: &Policy, port: PortIdx, pkt: &Packet, d: &Decision) -> String {
    match d.by {
        By::Rule(r) => {
            let rule_ref = policy.rule(r);
            let mut s = format!("rule {}: {}, priority {}", policy.rule_name(r), rule(rule_ref, r.direction), r.priority);
            if !rule_ref.description.is_empty() {
                let _ = write!(s, " ({:?})", rule_ref.description);
            }
            s
        }
        By::IntraGroup { group } => {
            format!("intra-group: {} is a member of {}, whose intra_group is \"accept\"", pkt.remote, policy.group(group).id)
        }
        By::Default => {
            let model = policy.config().host.policy_model;
            let tail = match (model, pkt.direction) {
                (PolicyModel::Priority, Direction::Ingress) => "ingress is denied by default".to_string(),
                (PolicyModel::Priority, Direction::Egress) if policy.port_is_enterprise(port) => {
                    "egress is denied by default for enterprise groups".to_string()
                }
                (PolicyModel::Priority, Direction::Egress) => "egress is allowed by default for basic groups".to_string(),
                (m, _) => format!("the implicit deny at the bottom ({} model)", m.as_str()),
            };
            format!("default: no rule matched; {tail}")
        }
    }
}

/// Pads each column to its widest cell, two spaces apart; the last column is
/// not padded.
pub(crate) fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let mut width = vec![0; cols];
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            width[i] = width[i].max(cell.chars().count());
        }
    }
    let mut s = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = width[i]);
            }
        }
        s.push_str(line.trim_end());
        s.push('\n');
    }
    s
}
