//! Traffic outside the groups (`semantics.md`, "Traffic outside the
//! groups"): which frames of the infrastructure protocols (IPv6 neighbour
//! discovery, MLD, DHCP and DHCPv6) pass without group rules, in exactly
//! which shapes, and which are spoofing.
//!
//! # The shapes
//! From a VM (its egress), after its MAC is checked:
//! - **Router advertisements, redirects, DHCP and DHCPv6 server replies**:
//!   `spoof`, whatever their shape: a VM is never a router or a DHCP
//!   server for the segment.
//! - **Neighbour advertisement**: its target must be one of the VM's own
//!   addresses (or its own link-local ones) and its target link-layer
//!   option, if any, the port's MAC, else `spoof`. Infrastructure with hop
//!   limit 255, code 0, from an own (or own link-local) address, to
//!   all-nodes (ff02::1, unsolicited) or to a unicast address.
//! - **Neighbour solicitation**: its source link-layer option, if any, must
//!   be the port's MAC, else `spoof`. Infrastructure with hop limit 255,
//!   code 0, a unicast target, to the target's solicited-node group or the
//!   target itself (unreachability detection), from an own or own
//!   link-local address, or from `::` for duplicate-address detection (then
//!   for an own address, to its solicited-node group, with no link-layer
//!   option; DAD for another's address is `spoof`). The VM asks about
//!   anyone: the target of a solicitation *from* it is the neighbour's.
//! - **Router solicitation**: hop limit 255, code 0, to all-routers
//!   (ff02::2), from an own link-local address or `::` (then with no
//!   link-layer option); a link-layer option other than the port's MAC is
//!   `spoof`.
//! - **MLD reports and done** (131, 132, 143): hop limit 1, from an own
//!   link-local address or `::`; version 2 reports to ff02::16, version 1
//!   reports to a multicast group, done to ff02::2.
//! - **DHCP client**: UDP 68 -> 67 from 0.0.0.0 or an own address, to
//!   255.255.255.255 or a `dhcp_server` address. **DHCPv6 client**: UDP
//!   546 -> 547 from an own link-local address to ff02::1:2.
//!
//! Toward a VM (from the uplink, or from another VM):
//! - **Neighbour solicitation**: hop limit 255, code 0, whose target is one
//!   of the receiving port's addresses, to the target's solicited-node group
//!   or to the port's own address.
//! - **Neighbour advertisement**: hop limit 255, code 0, to the port's own
//!   (or link-local) address, or to all-nodes.
//! - From the uplink only: **router advertisements** (hop limit 255, code
//!   0, from a link-local address, to all-nodes or the port) and
//!   **redirects** (the same, to the port); **DHCP replies** (UDP 67 -> 68)
//!   and **DHCPv6 replies** (547 -> 546) from a `dhcp_server` address, to
//!   the port's MAC or broadcast.
//!
//! Anything else of these protocols is not infrastructure: the groups judge
//! it like any other packet, after the anti-spoofing check of its source.
//!
//! # Where infrastructure frames go
//! By destination MAC when it is unicast. To a multicast group, from a VM:
//! a solicitation to the port that owns its target (else the uplink), an
//! advertisement to all-nodes to every port and the uplink, the rest
//! (router solicitations, MLD, DHCP) to the uplink, where routers and
//! servers are. From the uplink: a solicitation to the port that owns its
//! target, advertisements and DHCP broadcasts to every port.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::parse::{self, Frame, Icmp, Ip, L4, ND_NA, ND_NS, ND_RA, ND_REDIRECT, ND_RS};
use crate::datapath::To;
use crate::datapath::plan::{Plan, PortIdx, PortPlan, is_link_local};

/// What becomes of a frame from a VM of an infrastructure protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FromVm {
    /// Not infrastructure: anti-spoofing, then the groups.
    Judge,
    /// Infrastructure: forwarded to `To` without the groups.
    Pass(To),
    /// Dropped as `spoof`.
    Spoof,
}

/// The infrastructure message a shape check recognised.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Solicit,
    Advert,
    RouterSolicit,
    Mld,
    Dhcp,
}

const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const ALL_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 2);
const MLDV2_ROUTERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 0x16);
const DHCPV6_SERVERS: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 1, 2);
const ND_HOPS: u8 = 255;

/// The solicited-node multicast group of `a` (RFC 4291 section 2.7.1).
pub fn solicited_node(a: Ipv6Addr) -> Ipv6Addr {
    let o = a.octets();
    Ipv6Addr::from([0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

fn v6(a: IpAddr) -> Option<Ipv6Addr> {
    match a {
        IpAddr::V6(a) => Some(a),
        IpAddr::V4(_) => None,
    }
}

/// Whether `a` is the port's: an address or a link-local address of its.
fn own6(port: &PortPlan, a: Ipv6Addr) -> bool {
    port.owns_any(IpAddr::V6(a))
}

/// Whether `a` may be the source of a frame of the VM's that starts on its
/// link: an own link-local address, or `::` when `unspecified_ok`.
fn own_link_source(port: &PortPlan, a: Ipv6Addr, unspecified_ok: bool) -> bool {
    (unspecified_ok && a.is_unspecified()) || (is_link_local(a) && port.owns_link_local(a))
}

/// The ICMPv6 message of an IPv6 packet.
fn icmpv6(ip: &Ip) -> Option<Icmp> {
    match ip.l4 {
        L4::Icmp(i) if ip.proto == parse::ICMPV6 && ip.is_v6() => Some(i),
        _ => None,
    }
}

/// The UDP ports of a packet.
fn udp(ip: &Ip) -> Option<(u16, u16)> {
    match ip.l4 {
        L4::Udp { sport, dport, .. } if ip.proto == parse::UDP => Some((sport, dport)),
        _ => None,
    }
}

/// Judges a frame from port `p` (whose MAC the frame carries) as an
/// infrastructure message, if it is one of those protocols.
pub fn from_vm(plan: &Plan, p: PortIdx, port: &PortPlan, f: &Frame, ip: &Ip) -> FromVm {
    let spoof = if port.spoof_check { FromVm::Spoof } else { FromVm::Judge };
    let kind = match vm_shape(plan, port, ip) {
        Shape::Infra(k) => k,
        Shape::Spoof => return spoof,
        Shape::None => return FromVm::Judge,
    };
    let group = f.dst[0] & 1 != 0;
    let to = if group {
        match kind {
            Kind::Solicit => {
                let target = icmpv6(ip).and_then(|i| i.nd()).map(|n| n.target);
                match target.and_then(|t| plan.port_by_any(IpAddr::V6(t))) {
                    Some(q) if q != p => To::Port(q),
                    _ => To::Uplink,
                }
            }
            Kind::Advert if ip.dst == IpAddr::V6(ALL_NODES) => To::Flood { except: Some(p), uplink: true },
            _ => To::Uplink,
        }
    } else {
        match plan.port_by_mac(&f.dst) {
            // Unicast to another VM: only what that VM accepts as
            // infrastructure toward it.
            Some(q) if q != p => match (kind, plan.port(q)) {
                (Kind::Solicit | Kind::Advert, Some(to)) if toward_shape(to, ip) => To::Port(q),
                _ => return FromVm::Judge,
            },
            // Its own MAC, or no port's: toward the uplink, as any frame.
            _ => To::Uplink,
        }
    };
    match (kind, to) {
        // A DHCP request goes to a server on the uplink.
        (Kind::Dhcp | Kind::RouterSolicit | Kind::Mld, To::Port(_)) => FromVm::Judge,
        _ => FromVm::Pass(to),
    }
}

/// What a frame from a VM is, by its shape alone.
enum Shape {
    None,
    Infra(Kind),
    Spoof,
}

fn vm_shape(plan: &Plan, port: &PortPlan, ip: &Ip) -> Shape {
    let mac_ok = |ll: Option<parse::MacAddr>| ll.is_none_or(|m| port.mac.is_none_or(|own| own == m));
    if let Some(icmp) = icmpv6(ip) {
        let (Some(src), Some(dst)) = (v6(ip.src), v6(ip.dst)) else { return Shape::None };
        let nd_hops = ip.hop_limit == ND_HOPS && icmp.code == 0;
        return match icmp.typ {
            ND_RA | ND_REDIRECT => Shape::Spoof,
            ND_NA => {
                let Some(nd) = icmp.nd() else { return Shape::None };
                if !own6(port, nd.target) || !mac_ok(nd.lladdr) {
                    return Shape::Spoof;
                }
                let to_ok = dst == ALL_NODES || !dst.is_multicast();
                if nd_hops && !src.is_unspecified() && own6(port, src) && to_ok { Shape::Infra(Kind::Advert) } else { Shape::None }
            }
            ND_NS => {
                let Some(nd) = icmp.nd() else { return Shape::None };
                if !mac_ok(nd.lladdr) {
                    return Shape::Spoof;
                }
                let t = nd.target;
                if src.is_unspecified() {
                    // Duplicate-address detection: for an own address only.
                    if !own6(port, t) {
                        return Shape::Spoof;
                    }
                    let ok = nd_hops && dst == solicited_node(t) && nd.lladdr.is_none();
                    return if ok { Shape::Infra(Kind::Solicit) } else { Shape::None };
                }
                let ok = nd_hops && !t.is_multicast() && !t.is_unspecified() && own6(port, src) && (dst == solicited_node(t) || dst == t);
                if ok { Shape::Infra(Kind::Solicit) } else { Shape::None }
            }
            ND_RS => {
                let Some(nd) = icmp.nd() else { return Shape::None };
                if !mac_ok(nd.lladdr) {
                    return Shape::Spoof;
                }
                let ok =
                    nd_hops && dst == ALL_ROUTERS && own_link_source(port, src, true) && !(src.is_unspecified() && nd.lladdr.is_some());
                if ok { Shape::Infra(Kind::RouterSolicit) } else { Shape::None }
            }
            131..=132 | 143 => {
                let to_ok = match icmp.typ {
                    143 => dst == MLDV2_ROUTERS,
                    131 => dst.is_multicast(),
                    _ => dst == ALL_ROUTERS,
                };
                if ip.hop_limit == 1 && own_link_source(port, src, true) && to_ok { Shape::Infra(Kind::Mld) } else { Shape::None }
            }
            _ => Shape::None,
        };
    }
    match (udp(ip), ip.src, ip.dst) {
        // Server replies from a VM.
        (Some((67, 68)), IpAddr::V4(_), _) | (Some((547, 546)), IpAddr::V6(_), _) => Shape::Spoof,
        (Some((68, 67)), IpAddr::V4(s), IpAddr::V4(d)) => {
            let from_ok = s == Ipv4Addr::UNSPECIFIED || port.owns(ip.src);
            let to_ok = d == Ipv4Addr::BROADCAST || plan.is_dhcp_server(ip.dst);
            if from_ok && to_ok { Shape::Infra(Kind::Dhcp) } else { Shape::None }
        }
        (Some((546, 547)), IpAddr::V6(s), IpAddr::V6(d)) => {
            if d == DHCPV6_SERVERS && own_link_source(port, s, false) {
                Shape::Infra(Kind::Dhcp)
            } else {
                Shape::None
            }
        }
        _ => Shape::None,
    }
}

/// Whether an ICMPv6 neighbour solicitation or advertisement is one port
/// `to` accepts as infrastructure toward it (the VM on the other side of a
/// unicast frame from another VM, or a port the uplink's frame names).
fn toward_shape(to: &PortPlan, ip: &Ip) -> bool {
    let (Some(icmp), Some(dst)) = (icmpv6(ip), v6(ip.dst)) else { return false };
    let Some(nd) = icmp.nd() else { return false };
    if ip.hop_limit != ND_HOPS || icmp.code != 0 {
        return false;
    }
    match icmp.typ {
        ND_NS => own6(to, nd.target) && (dst == solicited_node(nd.target) || own6(to, dst)),
        ND_NA => dst == ALL_NODES || own6(to, dst),
        _ => false,
    }
}

/// Judges a frame from the uplink as an infrastructure message toward a
/// VM: where it goes if it is one. `by_mac` is the port its destination
/// MAC names (for a unicast one).
pub fn from_uplink(plan: &Plan, f: &Frame, ip: &Ip, by_mac: Option<PortIdx>) -> Option<To> {
    let group = f.dst[0] & 1 != 0;
    if let Some((sport, dport)) = udp(ip) {
        let reply = matches!((ip.is_v6(), sport, dport), (false, 67, 68) | (true, 547, 546));
        if !reply || !plan.is_dhcp_server(ip.src) {
            return None;
        }
        return match by_mac {
            Some(q) => Some(To::Port(q)),
            None if f.dst == [0xff; 6] || (group && ip.is_v6()) => Some(To::Flood { except: None, uplink: false }),
            None => None,
        };
    }
    let icmp = icmpv6(ip)?;
    let (src, dst) = (v6(ip.src)?, v6(ip.dst)?);
    let nd = icmp.nd()?;
    if ip.hop_limit != ND_HOPS || icmp.code != 0 {
        return None;
    }
    let to = |q: PortIdx| plan.port(q).map(|port| (q, port));
    match (icmp.typ, by_mac.and_then(to)) {
        (ND_NS | ND_NA, Some((q, port))) => toward_shape(port, ip).then_some(To::Port(q)),
        (ND_NS, None) if group => {
            let (q, port) = to(plan.port_by_any(IpAddr::V6(nd.target))?)?;
            toward_shape(port, ip).then_some(To::Port(q))
        }
        (ND_NA | ND_RA, None) if group && dst == ALL_NODES => {
            (icmp.typ == ND_NA || is_link_local(src)).then_some(To::Flood { except: None, uplink: false })
        }
        (ND_RA | ND_REDIRECT, Some((q, port))) => {
            (is_link_local(src) && (own6(port, dst) || (icmp.typ == ND_RA && dst == ALL_NODES))).then_some(To::Port(q))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_solicited_node_group_keeps_the_low_24_bits() {
        let a: Ipv6Addr = "fd00::1234:5678".parse().unwrap();
        assert_eq!(solicited_node(a), "ff02::1:ff34:5678".parse::<Ipv6Addr>().unwrap());
    }
}
