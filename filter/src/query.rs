//! A question an operator asks ("would this packet get in?") turned into the
//! [`Packet`] the evaluator judges, with the defaults of `sgswitch trace`.

use std::net::IpAddr;

use sgswitch_config::{Direction, ICMP, ICMPV6, TCP, UDP, protocol_name};

use crate::decision::Packet;
use crate::policy::{Policy, PortIdx};

/// The fields of `sgswitch trace` (flags or one line of a batch).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub port: String,
    pub direction: Direction,
    pub proto: u8,
    pub remote: IpAddr,
    /// Defaults to the port's first address of the remote's family.
    pub local: Option<IpAddr>,
    pub remote_port: Option<u16>,
    pub local_port: Option<u16>,
    /// Defaults to echo request (8 for icmp, 128 for icmpv6).
    pub icmp_type: Option<u8>,
    /// Defaults to 0.
    pub icmp_code: Option<u8>,
}

impl Policy {
    /// Resolves a query against this policy's ports.
    ///
    /// Errors (in words for the operator): an unknown port, a port without an
    /// address of the remote's family, sides of different IP versions, a
    /// tcp/udp packet without its destination port, ports on a protocol that
    /// has none, ICMP fields on a non-ICMP protocol. An omitted source port
    /// is 0, which only rules without `source_ports` match.
    pub fn resolve(&self, q: &Query) -> Result<(PortIdx, Packet), String> {
        let port = self.port_index(&q.port).ok_or_else(|| format!("no port \"{}\" in the configuration", q.port))?;
        let p = &self.ports()[port];
        let local = match q.local {
            Some(l) => l,
            None => p.first_address_like(q.remote).ok_or_else(|| {
                format!("port {} has no {} address; give the local address", p.id, if q.remote.is_ipv4() { "IPv4" } else { "IPv6" })
            })?,
        };
        if local.is_ipv4() != q.remote.is_ipv4() {
            return Err(format!("local {local} and remote {} are of different IP versions", q.remote));
        }
        let has_ports = matches!(q.proto, TCP | UDP);
        if !has_ports && (q.remote_port.is_some() || q.local_port.is_some()) {
            return Err(format!("ports apply to tcp and udp only, not {}", protocol_name(Some(q.proto))));
        }
        let (dst_port, which) = match q.direction {
            Direction::Ingress => (q.local_port, "the VM's own port: --local-port (local_port in a batch)"),
            Direction::Egress => (q.remote_port, "the remote service's port: --remote-port (remote_port in a batch)"),
        };
        if has_ports && dst_port.is_none() {
            return Err(format!("an {} {} packet needs its destination port, {which}", q.direction.as_str(), protocol_name(Some(q.proto))));
        }
        let is_icmp = matches!(q.proto, ICMP | ICMPV6);
        if !is_icmp && (q.icmp_type.is_some() || q.icmp_code.is_some()) {
            return Err("icmp_type and icmp_code apply to icmp and icmpv6 only".into());
        }
        let echo = if q.proto == ICMPV6 { 128 } else { 8 };
        Ok((
            port,
            Packet {
                direction: q.direction,
                proto: q.proto,
                remote: q.remote,
                local,
                remote_port: q.remote_port.unwrap_or(0),
                local_port: q.local_port.unwrap_or(0),
                icmp_type: if is_icmp { q.icmp_type.unwrap_or(echo) } else { 0 },
                icmp_code: q.icmp_code.unwrap_or(0),
            },
        ))
    }
}
