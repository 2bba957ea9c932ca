//! A property of "Traffic outside the groups" (`semantics.md`): random DHCP,
//! DHCPv6, neighbour-discovery, MLD and router-advertisement frames (any
//! addresses, any ports, any hop limit, any link-layer option), from a VM or
//! from the uplink, are passed as `infrastructure` exactly when the
//! contract's shape holds (an oracle here, written from the contract's
//! text); any other is `spoof` or gets the verdict of the port's groups.

use std::net::{IpAddr, Ipv6Addr};

use proptest::prelude::*;
use sgswitch::datapath::plan::{Plan, PortIdx, Zones};
use sgswitch::datapath::{Action, Outcome, Reason, Source};
use sgswitch::packet::{Pipeline, conntrack_settings};
use sgswitch_config::Direction;
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_filter::{By, Packet, Verdict};
use sgswitch_tests::frames::{self, BROADCAST, Ends, Mac, UPLINK_MAC, eui64, mcast_mac};
use sgswitch_tests::infra::{DB1, WEB1, configure};

fn plan() -> Plan {
    let dir = tempfile::tempdir().expect("tempdir");
    sgswitch_tests::netns::copy_dir(&sgswitch_tests::netns::root().join("examples"), dir.path());
    configure(dir.path());
    let cfg = sgswitch_config::load_dir(dir.path()).expect("examples load");
    Plan::build(cfg, &mut Zones::default(), 1).expect("zones").0
}

/// The frame's fields, drawn from pools that hit every condition of the
/// shapes often.
#[derive(Clone, Debug)]
struct Case {
    from_vm: bool,
    kind: u8,
    src: IpAddr,
    dst: IpAddr,
    dst_mac: Mac,
    hops: u8,
    target: Ipv6Addr,
    ll: Option<Mac>,
    ports: (u16, u16),
}

const DB_V6: &str = "fd00:0:0:1::21";

fn v6_pool() -> Vec<Ipv6Addr> {
    let p = |s: &str| s.parse::<Ipv6Addr>().expect("v6");
    vec![
        Ipv6Addr::UNSPECIFIED,
        eui64(DB1),
        eui64(WEB1),
        p("fe80::1"),
        p("fe80::254"),
        p(DB_V6),
        p("fd00::11"),
        p("fd00:0:0:1::1"),
        p("2001:db8::1"),
        p("ff02::1"),
        p("ff02::2"),
        p("ff02::16"),
        p("ff02::1:2"),
        p("ff02::1:ff00:21"),
        p("ff02::1:ff00:11"),
        p("ff05::1"),
    ]
}

fn v4_pool() -> Vec<IpAddr> {
    ["0.0.0.0", "255.255.255.255", "10.0.1.21", "10.0.0.11", "10.0.255.254", "1.1.1.1"].iter().map(|s| s.parse().expect("v4")).collect()
}

fn case() -> impl Strategy<Value = Case> {
    let v6 = v6_pool();
    let v4 = v4_pool();
    let macs = vec![
        BROADCAST,
        UPLINK_MAC,
        DB1,
        WEB1,
        mcast_mac("ff02::1".parse().expect("v6")),
        mcast_mac("ff02::1:ff00:21".parse().expect("v6")),
    ];
    (
        any::<bool>(),
        0u8..9,
        (proptest::sample::select(v6.clone()), proptest::sample::select(v6.clone()), proptest::sample::select(v6)),
        (proptest::sample::select(v4.clone()), proptest::sample::select(v4)),
        proptest::sample::select(macs),
        prop_oneof![Just(1u8), Just(64), Just(255), any::<u8>()],
        proptest::option::of(proptest::sample::select(vec![DB1, WEB1, UPLINK_MAC])),
        (
            prop_oneof![Just(67u16), Just(68), Just(546), Just(547), any::<u16>()],
            prop_oneof![Just(67u16), Just(68), Just(546), Just(547), any::<u16>()],
        ),
    )
        .prop_map(|(from_vm, kind, (s6, d6, target), (s4, d4), dst_mac, hops, ll, ports)| {
            // Kinds 0..=6: ICMPv6 133, 134, 135, 136, 137, 143, 131; 7: UDP
            // over IPv6; 8: UDP over IPv4.
            let (src, dst) = if kind == 8 { (s4, d4) } else { (IpAddr::V6(s6), IpAddr::V6(d6)) };
            Case { from_vm, kind, src, dst, dst_mac, hops, target, ll, ports }
        })
}

fn frame(c: &Case) -> Vec<u8> {
    let src_mac = if c.from_vm { DB1 } else { UPLINK_MAC };
    let e = Ends { src_mac, dst_mac: c.dst_mac, src: c.src, dst: c.dst };
    match c.kind {
        0..=4 => {
            let typ = 133 + c.kind;
            frames::nd(&e, c.hops, typ, matches!(typ, 135..=137).then_some(c.target), c.ll)
        }
        5 => frames::mld2_report(&e, c.hops),
        6 => frames::icmp6(&e, c.hops, 131, 0, [0; 4], &c.target.octets()),
        _ => frames::udp(&e, c.ports.0, c.ports.1, &[0; 240]),
    }
}

fn sol(t: Ipv6Addr) -> Ipv6Addr {
    let o = t.octets();
    Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, o[13], o[14], o[15]])
}

/// What the contract says of a frame from eni-db1 (MAC DB1): `Some(true)`
/// infrastructure, `Some(false)` spoof, `None` neither (the groups judge).
/// Unicast to another VM (eni-web1), only a neighbour solicitation or
/// advertisement that VM takes as one toward it stays infrastructure: the
/// rest is for routers and servers on the uplink.
fn oracle_from_vm(c: &Case, plan: &Plan) -> Option<bool> {
    let shape = oracle_vm_shape(c, plan);
    if shape != Some(true) || c.dst_mac != WEB1 {
        return shape;
    }
    let web = plan.port(plan.port_by_id("eni-web1").expect("web1")).expect("web1");
    let (IpAddr::V6(dst), 2 | 3) = (c.dst, c.kind) else { return None };
    let own = |a: Ipv6Addr| web.owns_any(IpAddr::V6(a));
    let toward = match c.kind {
        2 => own(c.target) && (dst == sol(c.target) || own(dst)),
        _ => dst == "ff02::1".parse::<Ipv6Addr>().expect("v6") || own(dst),
    };
    toward.then_some(true)
}

fn oracle_vm_shape(c: &Case, plan: &Plan) -> Option<bool> {
    let db = plan.port(plan.port_by_id("eni-db1").expect("db1")).expect("db1");
    let own = |a: IpAddr| db.owns_any(a);
    let own6 = |a: Ipv6Addr| own(IpAddr::V6(a));
    let db_ll = eui64(DB1);
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (c.src, c.dst) else {
        // UDP over IPv4.
        return match c.ports {
            (67, 68) => Some(false),
            (68, 67) => {
                let from = c.src == IpAddr::from([0, 0, 0, 0]) || own(c.src);
                let to = c.dst == IpAddr::from([255, 255, 255, 255]) || c.dst == IpAddr::from([10, 0, 255, 254]);
                (from && to).then_some(true)
            }
            _ => None,
        };
    };
    let ll_ok = c.ll.is_none_or(|m| m == DB1);
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("v6");
    let all_routers: Ipv6Addr = "ff02::2".parse().expect("v6");
    match c.kind {
        1 | 4 => Some(false),
        3 => {
            if !own6(c.target) || !ll_ok {
                return Some(false);
            }
            (c.hops == 255 && !src.is_unspecified() && own6(src) && (dst == all_nodes || !dst.is_multicast())).then_some(true)
        }
        2 => {
            if !ll_ok {
                return Some(false);
            }
            if src.is_unspecified() {
                if !own6(c.target) {
                    return Some(false);
                }
                return (c.hops == 255 && dst == sol(c.target) && c.ll.is_none()).then_some(true);
            }
            let t = c.target;
            (c.hops == 255 && !t.is_multicast() && !t.is_unspecified() && own6(src) && (dst == sol(t) || dst == t)).then_some(true)
        }
        0 => {
            if !ll_ok {
                return Some(false);
            }
            let from = src == db_ll || (src.is_unspecified() && c.ll.is_none());
            (c.hops == 255 && dst == all_routers && from).then_some(true)
        }
        5 => (c.hops == 1 && (src == db_ll || src.is_unspecified()) && dst == "ff02::16".parse::<Ipv6Addr>().expect("v6")).then_some(true),
        6 => (c.hops == 1 && (src == db_ll || src.is_unspecified()) && dst.is_multicast()).then_some(true),
        _ => match c.ports {
            (547, 546) => Some(false),
            (546, 547) => (src == db_ll && dst == "ff02::1:2".parse::<Ipv6Addr>().expect("v6")).then_some(true),
            _ => None,
        },
    }
}

/// Whether a frame from the uplink to eni-db1 (or a group) is
/// infrastructure by the contract.
fn oracle_from_uplink(c: &Case, plan: &Plan) -> bool {
    let db = plan.port(plan.port_by_id("eni-db1").expect("db1")).expect("db1");
    let to_db = c.dst_mac == DB1;
    let group = c.dst_mac[0] & 1 != 0;
    let (IpAddr::V6(src), IpAddr::V6(dst)) = (c.src, c.dst) else {
        let server = c.src == IpAddr::from([10, 0, 255, 254]);
        return c.ports == (67, 68) && server && (to_db || c.dst_mac == BROADCAST);
    };
    let all_nodes: Ipv6Addr = "ff02::1".parse().expect("v6");
    let nd_ok = c.hops == 255;
    let own6 = |a: Ipv6Addr| db.owns_any(IpAddr::V6(a));
    match c.kind {
        // A solicitation for eni-db1's address, to it by MAC, or to the
        // group of the target (which no other port has here).
        2 => nd_ok && own6(c.target) && (dst == sol(c.target) || own6(dst)) && (to_db || (group && own6(c.target))),
        3 => nd_ok && ((to_db && (dst == all_nodes || own6(dst))) || (group && dst == all_nodes)),
        1 => nd_ok && (src.segments()[0] & 0xffc0 == 0xfe80) && ((to_db && (own6(dst) || dst == all_nodes)) || (group && dst == all_nodes)),
        4 => nd_ok && (src.segments()[0] & 0xffc0 == 0xfe80) && to_db && own6(dst),
        7 => c.ports == (547, 546) && c.src == IpAddr::V6("fe80::254".parse().expect("v6")) && (to_db || group),
        _ => false,
    }
}

/// The verdict the port's groups give the packet in `direction`.
fn groups(plan: &Plan, port: PortIdx, c: &Case, direction: Direction) -> Outcome {
    let (proto, icmp_type, sport, dport) = match c.kind {
        0..=4 => (58, 133 + c.kind, 0, 0),
        5 => (58, 143, 0, 0),
        6 => (58, 131, 0, 0),
        _ => (17, 0, c.ports.0, c.ports.1),
    };
    let (remote, local, remote_port, local_port) = match direction {
        Direction::Egress => (c.dst, c.src, dport, sport),
        Direction::Ingress => (c.src, c.dst, sport, dport),
    };
    let pkt = Packet { direction, proto, remote, local, remote_port, local_port, icmp_type, icmp_code: 0 };
    let d = plan.compiled.decide(usize::from(port), &pkt);
    let reason = match d.by {
        By::Rule(r) => Reason::Rule(r),
        By::IntraGroup { .. } => Reason::IntraGroup,
        By::Default => Reason::Default,
    };
    let action = if d.verdict == Verdict::Allow { Action::Forward(sgswitch::datapath::To::Uplink) } else { Action::Drop };
    Outcome { action, reason, port: Some(port), direction }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn infrastructure_only_in_the_contracts_shapes(c in case()) {
        thread_local! {
            static PLAN: Plan = plan();
            static PIPE: std::cell::RefCell<Option<Pipeline<u32>>> = const { std::cell::RefCell::new(None) };
        }
        PLAN.with(|plan| -> Result<(), TestCaseError> {
            let db = plan.port_by_id("eni-db1").expect("db1");
            let mut pipe = PIPE.with(|p| p.borrow_mut().take()).unwrap_or_else(|| {
                let mut settings = conntrack_settings(&plan.policy().config().host, 1);
                settings.capacity = 1024;
                settings.per_zone_capacity = 1024;
                let mut pipe: Pipeline<u32> = Pipeline::new(settings, FragSettings::default());
                pipe.adopt(plan);
                pipe
            });
            // Every case is a first packet.
            pipe.conntrack.flush(None);
            let src = if c.from_vm { Source::Port(db) } else { Source::Uplink };
            let o = pipe.process(plan, src, &frame(&c), Now(0), 0);
            let infra = o.reason == Reason::Infrastructure;
            if c.from_vm {
                let want = oracle_from_vm(&c, plan);
                prop_assert_eq!(infra, want == Some(true), "{:?} -> {:?}", c, o);
                if want == Some(false) {
                    prop_assert_eq!(o.reason, Reason::Spoof, "{:?}", c);
                }
                if want.is_none() {
                    if db_owns(plan, db, c.src) {
                        let mut g = groups(plan, db, &c, Direction::Egress);
                        // To another VM: that VM's ingress follows an allow.
                        if c.dst_mac == WEB1 && g.action != Action::Drop {
                            g = groups(plan, plan.port_by_id("eni-web1").expect("web1"), &c, Direction::Ingress);
                        }
                        prop_assert_eq!((o.action == Action::Drop, o.reason), (g.action == Action::Drop, g.reason), "{:?}", c);
                    } else {
                        prop_assert_eq!(o.reason, Reason::Spoof, "{:?}", c);
                    }
                }
            } else {
                let want = oracle_from_uplink(&c, plan);
                // Frames to eni-db1 only: a group-addressed frame whose shape
                // names another port is that port's business.
                if c.dst_mac == DB1 || want {
                    prop_assert_eq!(infra, want, "{:?} -> {:?}", c, o);
                }
                if !infra && c.dst_mac == DB1 {
                    let g = groups(plan, db, &c, Direction::Ingress);
                    prop_assert_eq!((o.action == Action::Drop, o.reason), (g.action == Action::Drop, g.reason), "{:?}", c);
                }
            }
            PIPE.with(|p| *p.borrow_mut() = Some(pipe));
            Ok(())
        })?;
    }
}

fn db_owns(plan: &Plan, db: PortIdx, a: IpAddr) -> bool {
    plan.port(db).is_some_and(|p| p.owns_any(a))
}
