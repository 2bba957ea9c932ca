//! `sgswitch diagnose` and `ctl diagnose`: both sides of a path between two
//! endpoints (ports, or addresses outside the host), as the providers'
//! "diagnose" tools show it.
//!
//! For each path: the sender's egress decision (when the sender is a port),
//! the receiver's ingress decision (when the receiver is a port), each with
//! its deciding rule, as `trace` gives them; and the datapath's verdict: the
//! first packet's frame run through a probe pipeline ([`super::probe`]),
//! which adds what the rules of one side do not see (spoofing, blocked
//! egress toward the uplink, infrastructure traffic) and is what `run`
//! does. The path's verdict is the datapath's.
//!
//! Without a protocol, the usual services are checked in both directions:
//! ssh, http, https, rdp, 8080 and ICMP echo.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sgswitch_config::{Direction, ICMP, ICMPV6, TCP, UDP, parse_protocol, protocol_name};
use sgswitch_conntrack::Now;
use sgswitch_filter::{Packet, Query};

use super::probe::{self, Datapath};
use super::request::decision_value;
use crate::datapath::Action;
use crate::datapath::plan::{Plan, PortIdx};

/// A diagnose request: the flags of `sgswitch diagnose`, the body of
/// `ctl diagnose`.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ask {
    /// A port id, or an address (a port's, or one outside the host).
    pub from: String,
    pub to: String,
    /// A protocol name or number; none: the usual services.
    #[serde(default)]
    pub proto: Option<String>,
    /// The destination port (tcp and udp).
    #[serde(default)]
    pub port: Option<u16>,
    /// The source port (tcp and udp; default an ephemeral 49152).
    #[serde(default)]
    pub source_port: Option<u16>,
    /// ICMP type and code (icmp and icmpv6; default an echo request).
    #[serde(default)]
    pub icmp_type: Option<u8>,
    #[serde(default)]
    pub icmp_code: Option<u8>,
}

/// The services checked when no protocol is given: name, protocol (ICMP
/// means echo, ICMPv6 for IPv6 paths) and port.
pub const SERVICES: [(&str, u8, u16); 6] =
    [("ssh", TCP, 22), ("http", TCP, 80), ("https", TCP, 443), ("rdp", TCP, 3389), ("http-alt", TCP, 8080), ("ping", ICMP, 0)];

/// One end of a path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    Port(PortIdx, IpAddr),
    Outside(IpAddr),
}

impl End {
    fn addr(self) -> IpAddr {
        match self {
            End::Port(_, a) | End::Outside(a) => a,
        }
    }

    fn json(self, plan: &Plan) -> Value {
        match self {
            End::Port(p, a) => json!({"port": plan.policy().ports()[usize::from(p)].id, "address": a.to_string()}),
            End::Outside(a) => json!({"port": null, "address": a.to_string()}),
        }
    }
}

/// Every path of `ask`, one JSON object each:
/// `{"from":{"port","address"},"to":{…},"service","proto","port","verdict",
/// "egress":<trace decision>|null,"ingress":<trace decision>|null,
/// "datapath":<replay line>}`.
pub fn diagnose(plan: &Plan, ask: &Ask) -> Result<Vec<Value>, String> {
    let proto = match ask.proto.as_deref() {
        None if ask.port.is_some() => return Err("--port needs --proto".into()),
        None => None,
        Some(p) => match parse_protocol(p) {
            Some(Some(n)) => Some(n),
            Some(None) => return Err("a packet has one protocol: \"all\" is for rules".into()),
            None => return Err(format!("protocol \"{p}\" is not tcp, udp, icmp, icmpv6, gre or a number 0..255")),
        },
    };
    match proto {
        None if ask.source_port.is_some() || ask.icmp_type.is_some() || ask.icmp_code.is_some() => {
            return Err("--source-port, --icmp-type and --icmp-code need --proto".into());
        }
        Some(TCP | UDP) if ask.port.is_none() => return Err(format!("{} needs --port", protocol_name(proto))),
        Some(p) if !matches!(p, TCP | UDP) && (ask.port.is_some() || ask.source_port.is_some()) => {
            return Err(format!("ports apply to tcp and udp only, not {}", protocol_name(proto)));
        }
        Some(p) if !matches!(p, ICMP | ICMPV6) && (ask.icmp_type.is_some() || ask.icmp_code.is_some()) => {
            return Err(format!("--icmp-type and --icmp-code apply to icmp and icmpv6 only, not {}", protocol_name(proto)));
        }
        _ => {}
    }
    let v6 = family(plan, ask, proto)?;
    let from = end(plan, &ask.from, v6)?;
    let to = end(plan, &ask.to, v6)?;
    match (from, to) {
        (End::Outside(_), End::Outside(_)) => return Err("neither end is a port of this host".into()),
        (End::Port(a, _), End::Port(b, _)) if a == b => return Err("both ends are the same port".into()),
        _ => {}
    }
    let mut pipe = probe::pipeline(plan);
    let mut out = Vec::new();
    match proto {
        Some(proto) => {
            let probe = Probe {
                service: None,
                proto,
                port: ask.port.unwrap_or(0),
                source_port: ask.source_port.unwrap_or(SOURCE_PORT),
                icmp: (ask.icmp_type, ask.icmp_code),
            };
            out.push(path(plan, &mut pipe, from, to, &probe)?);
        }
        None => {
            for (name, p, port) in SERVICES {
                let proto = if p == ICMP && v6 { ICMPV6 } else { p };
                let probe = Probe { service: Some(name), proto, port, source_port: SOURCE_PORT, icmp: (None, None) };
                out.push(path(plan, &mut pipe, from, to, &probe)?);
                out.push(path(plan, &mut pipe, to, from, &probe)?);
            }
        }
    }
    Ok(out)
}

/// Whether the paths are IPv6: what an address given, or the protocol,
/// says; between two ports, IPv4 if both have it, else IPv6.
fn family(plan: &Plan, ask: &Ask, proto: Option<u8>) -> Result<bool, String> {
    for s in [&ask.from, &ask.to] {
        if s.parse::<IpAddr>().is_err() && plan.port_by_id(s).is_none() {
            return Err(format!("\"{s}\" is neither a port of the configuration nor an IP address"));
        }
    }
    let literal = |s: &str| s.parse::<IpAddr>().ok().map(|a| a.is_ipv6());
    let by_proto = match proto {
        Some(ICMP) => Some(false),
        Some(ICMPV6) => Some(true),
        _ => None,
    };
    let given: Vec<bool> = [literal(&ask.from), literal(&ask.to), by_proto].into_iter().flatten().collect();
    if let Some(&first) = given.first() {
        return if given.iter().all(|&v| v == first) {
            Ok(first)
        } else {
            Err(format!("{} and {} are of different IP versions", ask.from, ask.to))
        };
    }
    let has = |s: &str, v6: bool| {
        plan.policy()
            .port_index(s)
            .map(|i| &plan.policy().ports()[i])
            .is_some_and(|p| if v6 { !p.ipv6.is_empty() } else { !p.ipv4.is_empty() })
    };
    if has(&ask.from, false) && has(&ask.to, false) {
        Ok(false)
    } else if has(&ask.from, true) && has(&ask.to, true) {
        Ok(true)
    } else {
        Err(format!("{} and {} have no IP version in common", ask.from, ask.to))
    }
}

fn end(plan: &Plan, s: &str, v6: bool) -> Result<End, String> {
    if let Ok(a) = s.parse::<IpAddr>() {
        return Ok(plan.port_by_any(a).map_or(End::Outside(a), |p| End::Port(p, a)));
    }
    let idx = plan.port_by_id(s).ok_or_else(|| format!("no port \"{s}\""))?;
    let port = &plan.policy().ports()[usize::from(idx)];
    let like = if v6 { IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED) } else { IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED) };
    let a = port.first_address_like(like).ok_or_else(|| format!("port {s} has no IPv{} address", if v6 { 6 } else { 4 }))?;
    Ok(End::Port(idx, a))
}

/// The source port of the probes unless asked: an ephemeral one.
const SOURCE_PORT: u16 = 49152;

/// The packet of one path.
struct Probe<'a> {
    service: Option<&'a str>,
    proto: u8,
    port: u16,
    source_port: u16,
    icmp: (Option<u8>, Option<u8>),
}

fn path(plan: &Plan, pipe: &mut crate::packet::Pipeline<u32>, from: End, to: End, probe: &Probe<'_>) -> Result<Value, String> {
    let &Probe { service, proto, port, source_port, icmp } = probe;
    let policy = plan.policy();
    let ports = matches!(proto, TCP | UDP);
    let side = |at: End, direction: Direction, remote: End| -> Result<Option<(PortIdx, Packet)>, String> {
        let End::Port(p, local) = at else { return Ok(None) };
        let (remote_port, local_port) = match direction {
            Direction::Egress => (Some(port), Some(source_port)),
            Direction::Ingress => (Some(source_port), Some(port)),
        };
        let q = Query {
            port: policy.ports()[usize::from(p)].id.clone(),
            direction,
            proto,
            remote: remote.addr(),
            local: Some(local),
            remote_port: remote_port.filter(|_| ports),
            local_port: local_port.filter(|_| ports),
            icmp_type: icmp.0,
            icmp_code: icmp.1,
        };
        let (_, pkt) = policy.resolve(&q)?;
        Ok(Some((p, pkt)))
    };
    let egress = side(from, Direction::Egress, to)?;
    let ingress = side(to, Direction::Ingress, from)?;
    let decide =
        |s: &Option<(PortIdx, Packet)>| s.as_ref().map(|(p, pkt)| decision_value(policy, &plan.compiled.decide(usize::from(*p), pkt)));
    // The frame as it enters the switch: the sender's egress packet, or
    // from the uplink, the receiver's ingress one.
    let (p, pkt) = egress.as_ref().or(ingress.as_ref()).ok_or("neither end is a port")?;
    let (src, frame) = probe::frame(plan, *p, pkt);
    pipe.conntrack.flush(None);
    let outcome = pipe.process(plan, src, &frame, Now(0), 0);
    let allowed = matches!(outcome.action, Action::Forward(_) | Action::Handover(_));
    Ok(json!({
        "from": from.json(plan),
        "to": to.json(plan),
        "service": service,
        "proto": protocol_name(Some(proto)),
        "port": if ports { Some(port) } else { None },
        "verdict": if allowed { "allow" } else { "deny" },
        "egress": decide(&egress),
        "ingress": decide(&ingress),
        "datapath": Datapath { outcome }.json(plan),
    }))
}
