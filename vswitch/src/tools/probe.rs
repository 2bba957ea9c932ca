//! The datapath's verdict on a traced packet: `trace` and `ctl trace`
//! build the frame the packet would be on the wire and run it through a
//! fresh [`Pipeline`] (no connection state), so that what they print agrees
//! with what `replay` and `run` do: anti-spoofing, infrastructure traffic,
//! blocked egress and, VM to VM, the receiver's ingress, which the policy's
//! decision for one port and direction does not see.
//!
//! # The frame
//! Egress: from the port's MAC, to the MAC of the port that owns the remote
//! address (VM to VM) or else to a router MAC on the uplink side (a
//! locally administered address no port has); a multicast or broadcast
//! remote gets its group MAC. Ingress: from the uplink's router MAC to the
//! port's MAC. The IPv6 hop limit is what the protocol sends with: 255 for
//! neighbour discovery (133..=137), 1 for MLD (130..=132, 143), 64
//! otherwise. A neighbour solicitation's target is the address it asks
//! about (the local address toward the port, the remote from it), an
//! advertisement's the address it announces (the sender's), with the
//! sender's MAC as link-layer option; a TCP packet is a SYN, a UDP one
//! carries a DHCP-sized payload, an ICMP echo uses identifier 1.

use std::net::{IpAddr, Ipv6Addr};

use etherparse::PacketBuilder;
use sgswitch_config::Direction;
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_filter::{Decision, Packet, Verdict};

use crate::datapath::plan::{Plan, PortIdx};
use crate::datapath::{Action, MacAddr, Outcome, Source};
use crate::packet::{Pipeline, conntrack_settings};

/// What the pipeline did with a traced packet, when it is not what the
/// policy's decision alone says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Datapath {
    pub outcome: Outcome,
}

impl Datapath {
    /// The `datapath` object of `trace --json` and `ctl trace`: the keys of
    /// a `replay --json` line but `index`.
    pub fn json(&self, plan: &Plan) -> serde_json::Value {
        let mut v: serde_json::Value = serde_json::from_str(&super::replay::json_line(plan, 0, &self.outcome)).expect("a JSON line");
        if let Some(m) = v.as_object_mut() {
            m.shift_remove("index");
        }
        v
    }

    /// `datapath: drop at <port> <direction> (<reason>)`.
    pub fn text(&self, plan: &Plan) -> String {
        let o = &self.outcome;
        let action = if matches!(o.action, Action::Forward(_)) { "forward" } else { "drop" };
        let at = o.port.and_then(|p| plan.port(p)).map_or(String::new(), |p| format!(" at {} {}", p.id, o.direction.as_str()));
        format!("datapath: {action}{at} ({})", super::replay::reason_text(plan.policy(), o.reason))
    }
}

/// The frame `pkt` of port `port` would be, and where it enters the switch.
pub fn frame(plan: &Plan, port: PortIdx, pkt: &Packet) -> (Source, Vec<u8>) {
    let own = plan.port(port).and_then(|p| p.mac).unwrap_or_else(|| unused_mac(plan, 0x10));
    let router = unused_mac(plan, 0xee);
    let group_mac = |a: IpAddr| -> Option<MacAddr> {
        match a {
            IpAddr::V4(v4) if v4.is_broadcast() => Some([0xff; 6]),
            IpAddr::V4(v4) if v4.is_multicast() => {
                let o = v4.octets();
                Some([0x01, 0x00, 0x5e, o[1] & 0x7f, o[2], o[3]])
            }
            IpAddr::V6(v6) if v6.is_multicast() => {
                let o = v6.octets();
                Some([0x33, 0x33, o[12], o[13], o[14], o[15]])
            }
            _ => None,
        }
    };
    let (src, dst, sport, dport, src_mac, dst_mac, source) = match pkt.direction {
        Direction::Egress => {
            let to = group_mac(pkt.remote)
                .or_else(|| plan.port_by_any(pkt.remote).filter(|&q| q != port).and_then(|q| plan.port(q)?.mac))
                .unwrap_or(router);
            (pkt.local, pkt.remote, pkt.local_port, pkt.remote_port, own, to, Source::Port(port))
        }
        Direction::Ingress => {
            let to = group_mac(pkt.local).unwrap_or(own);
            (pkt.remote, pkt.local, pkt.remote_port, pkt.local_port, router, to, Source::Uplink)
        }
    };
    let hops = match (pkt.proto, pkt.icmp_type) {
        (58, 133..=137) => 255,
        (58, 130..=132 | 143) => 1,
        _ => 64,
    };
    let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
    let ip = match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), hops),
        (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), hops),
        // `Policy::resolve` refuses mixed families; nothing to build.
        _ => return (source, Vec::new()),
    };
    let mut out = Vec::with_capacity(300);
    let written = match pkt.proto {
        6 => ip.tcp(sport, dport, 1, 64240).syn().write(&mut out, &[]),
        17 => ip.udp(sport, dport).write(&mut out, &[0; 240]),
        1 => ip.icmpv4_raw(pkt.icmp_type, pkt.icmp_code, [0, 1, 0, 1]).write(&mut out, b"sgswitch trace"),
        58 => {
            let (rest, body) = nd_body(pkt, src, dst, src_mac);
            ip.icmpv6_raw(pkt.icmp_type, pkt.icmp_code, rest).write(&mut out, &body)
        }
        p => ip.write(&mut out, etherparse::IpNumber(p), &[0; 8]),
    };
    if written.is_err() {
        out.clear();
    }
    (source, out)
}

/// Bytes 4..8 and the rest of an ICMPv6 message of `pkt`'s type, from
/// `src` to `dst` sent by `mac`.
fn nd_body(pkt: &Packet, src: IpAddr, dst: IpAddr, mac: MacAddr) -> ([u8; 4], Vec<u8>) {
    let v6 = |a: IpAddr| match a {
        IpAddr::V6(a) => a,
        IpAddr::V4(_) => Ipv6Addr::UNSPECIFIED,
    };
    let ll = |kind: u8| -> [u8; 8] { [kind, 1, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]] };
    let mut body = Vec::new();
    let rest = match pkt.icmp_type {
        128 | 129 => [0, 1, 0, 1],
        133 => {
            body.extend_from_slice(&ll(1));
            [0; 4]
        }
        134 => {
            body.extend_from_slice(&[0; 8]);
            body.extend_from_slice(&ll(1));
            [64, 0, 0x07, 0x08]
        }
        135 => {
            // A solicitation asks about the address it is sent for.
            body.extend_from_slice(&v6(dst).octets());
            body.extend_from_slice(&ll(1));
            [0; 4]
        }
        136 => {
            // An advertisement announces its sender's address.
            body.extend_from_slice(&v6(src).octets());
            body.extend_from_slice(&ll(2));
            [0x60, 0, 0, 0]
        }
        137 => {
            body.extend_from_slice(&v6(dst).octets());
            body.extend_from_slice(&v6(dst).octets());
            body.extend_from_slice(&ll(2));
            [0; 4]
        }
        _ => {
            body.extend_from_slice(&[0; 8]);
            [0; 4]
        }
    };
    (rest, body)
}

/// A locally administered unicast MAC no port of `plan` has.
fn unused_mac(plan: &Plan, first: u8) -> MacAddr {
    (0..=u8::MAX)
        .map(|i| [0x02, first, 0x5e, 0x00, 0x00, i])
        .find(|m| plan.port_by_mac(m).is_none())
        .unwrap_or([0x02, first, 0x5e, 0xff, 0xff, 0xff])
}

/// A pipeline for probes: no flow cache, a small table.
pub fn pipeline(plan: &Plan) -> Pipeline<u32> {
    let mut settings = conntrack_settings(&plan.policy().config().host, 0x5eed);
    settings.capacity = 64;
    settings.per_zone_capacity = 64;
    let mut p = Pipeline::new(settings, FragSettings::default());
    p.set_flow_cache(0);
    p.adopt(plan);
    p
}

/// The datapath's outcome for `pkt` of port `port` as a first packet,
/// when its verdict differs from `decision`'s, the policy's for that port
/// and direction: a drop where the rules allow (spoofing, blocked egress,
/// the receiving VM's ingress after the sender's egress, a frame of no
/// port), or a pass where they deny (infrastructure). A drop for another
/// reason than the rules' is the same verdict, and not reported.
pub fn datapath(pipe: &mut Pipeline<u32>, plan: &Plan, port: PortIdx, pkt: &Packet, decision: &Decision) -> Option<Datapath> {
    let (src, frame) = frame(plan, port, pkt);
    if frame.is_empty() {
        return None;
    }
    pipe.conntrack.flush(None);
    let o = pipe.process(plan, src, &frame, Now(0), 0);
    let passes = matches!(o.action, Action::Forward(_) | Action::Handover(_));
    (passes != (decision.verdict == Verdict::Allow)).then_some(Datapath { outcome: o })
}
