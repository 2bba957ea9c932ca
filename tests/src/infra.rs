//! The conformance rows of "Traffic outside the groups" (`semantics.md`):
//! real frames of every infrastructure shape and every spoofing case, in
//! both directions, allowed and not, with the outcome the contract gives.
//! `tests/replay.rs` replays them; `tests/e2e.rs` sends them through `sgswitch
//! run` on the namespace topology and reads the switch's counters.
//!
//! The configuration is `examples/` with [`HOST_EXTRA`] at the top of its
//! `host.toml` and [`WEB1_EXTRA`] in `ports/eni-web1.toml`. eni-db1's groups
//! deny all egress and allow no ingress but postgres from sg-web; eni-web1's
//! allow all egress.

use std::net::{IpAddr, Ipv6Addr};

use crate::frames::{self, BROADCAST, Ends, Mac, UPLINK_MAC, eui64, mcast_mac};

/// Keys the rows need at the top of `host.toml`.
pub const HOST_EXTRA: &str = "dhcp_server = [\"10.0.255.254\", \"fe80::254\"]\n";
/// What the rows need in eni-web1's port file: a second link-local address.
pub const WEB1_EXTRA: &str = "link_local = [\"fe80::beef\"]\n";

pub const WEB1: Mac = [2, 0, 0, 0, 0, 0x11];
pub const WEB2: Mac = [2, 0, 0, 0, 0, 0x12];
pub const DB1: Mac = [2, 0, 0, 0, 1, 0x21];

/// Where a row's frame enters the switch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// From a VM: the namespace name of `scripts/netns.sh` (web1, db1, ...).
    Vm(&'static str),
    Uplink,
}

/// The outcome a row expects, as `replay --json` prints it: the action, where
/// it goes, why, and whose counters (port id, or none) in which direction.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expect {
    pub action: &'static str,
    pub to: Option<&'static str>,
    pub reason: &'static str,
    pub port: Option<&'static str>,
    pub direction: &'static str,
}

#[derive(Clone, Debug)]
pub struct Row {
    pub name: &'static str,
    pub from: Side,
    pub frame: Vec<u8>,
    pub expect: Expect,
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

fn v6(s: &str) -> Ipv6Addr {
    s.parse().expect("IPv6 address")
}

fn ends(src_mac: Mac, src: &str, dst_mac: Mac, dst: &str) -> Ends {
    Ends { src_mac, dst_mac, src: ip(src), dst: ip(dst) }
}

fn sol(target: &str) -> (Mac, String) {
    let t = v6(target).octets();
    let g = Ipv6Addr::from([0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0xff, t[13], t[14], t[15]]);
    (mcast_mac(g), g.to_string())
}

fn fwd(to: &'static str, port: Option<&'static str>, direction: &'static str) -> Expect {
    Expect { action: "forward", to: Some(to), reason: "infrastructure", port, direction }
}

fn drop(reason: &'static str, port: Option<&'static str>, direction: &'static str) -> Expect {
    Expect { action: "drop", to: None, reason, port, direction }
}

/// Every row, in order.
pub fn rows() -> Vec<Row> {
    let db_ll = eui64(DB1).to_string();
    let web1_ll = eui64(WEB1).to_string();
    let web2_ll = eui64(WEB2).to_string();
    let db_ll = db_ll.as_str();
    let (web1_ll, web2_ll) = (web1_ll.as_str(), web2_ll.as_str());
    let egress = "egress";
    let ingress = "ingress";
    let db = Some("eni-db1");
    let web1 = Some("eni-web1");
    let deny_v4 = "rule:sg-db/egress/1";
    let deny_v6 = "rule:sg-db/egress/2";
    let bootp = [0u8; 240];
    let (all_nodes_mac, all_routers_mac) = (mcast_mac(v6("ff02::1")), mcast_mac(v6("ff02::2")));
    let (db_sol_mac, db_sol) = sol("fd00:0:0:1::21");
    let (gw_sol_mac, gw_sol) = sol("fd00:0:0:1::1");
    let (web2_sol_mac, web2_sol) = sol("fd00::12");
    let other = [2, 0, 0, 0, 0xee, 0xee];
    let row = |name, from, frame, expect| Row { name, from, frame, expect };
    let vm = Side::Vm;
    let up = Side::Uplink;
    vec![
        // DHCP from a VM whose groups deny all egress.
        row(
            "dhcp discover to broadcast",
            vm("db1"),
            frames::udp(&ends(DB1, "0.0.0.0", BROADCAST, "255.255.255.255"), 68, 67, &bootp),
            fwd("uplink", db, egress),
        ),
        row(
            "dhcp request to a configured dhcp_server",
            vm("db1"),
            frames::udp(&ends(DB1, "10.0.1.21", UPLINK_MAC, "10.0.255.254"), 68, 67, &bootp),
            fwd("uplink", db, egress),
        ),
        row(
            "dhcp port numbers to any other address are judged by the groups",
            vm("db1"),
            frames::udp(&ends(DB1, "10.0.1.21", UPLINK_MAC, "1.1.1.1"), 68, 67, &bootp),
            drop(deny_v4, db, egress),
        ),
        row(
            "a dhcp request from another's address is spoofing",
            vm("db1"),
            frames::udp(&ends(DB1, "10.0.1.99", BROADCAST, "255.255.255.255"), 68, 67, &bootp),
            drop("spoof", db, egress),
        ),
        row(
            "a dhcp server reply from a vm is spoofing",
            vm("db1"),
            frames::udp(&ends(DB1, "10.0.1.21", BROADCAST, "255.255.255.255"), 67, 68, &bootp),
            drop("spoof", db, egress),
        ),
        row(
            "dhcpv6 solicit to all dhcp servers",
            vm("db1"),
            frames::udp(&ends(DB1, db_ll, mcast_mac(v6("ff02::1:2")), "ff02::1:2"), 546, 547, &[1, 0, 0, 1]),
            fwd("uplink", db, egress),
        ),
        row(
            "dhcpv6 ports to a unicast address are judged by the groups",
            vm("db1"),
            frames::udp(&ends(DB1, "fd00:0:0:1::21", UPLINK_MAC, "2001:db8::1"), 546, 547, &[1, 0, 0, 1]),
            drop(deny_v6, db, egress),
        ),
        row(
            "a dhcpv6 server reply from a vm is spoofing",
            vm("db1"),
            frames::udp(&ends(DB1, db_ll, UPLINK_MAC, "fe80::1"), 547, 546, &[7, 0, 0, 1]),
            drop("spoof", db, egress),
        ),
        // Neighbour discovery from a VM.
        row(
            "neighbour solicitation for the gateway",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, gw_sol_mac, &gw_sol), 255, 135, Some(v6("fd00:0:0:1::1")), Some(DB1)),
            fwd("uplink", db, egress),
        ),
        row(
            "a neighbour solicitation with hop limit 64 is judged by the groups",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, gw_sol_mac, &gw_sol), 64, 135, Some(v6("fd00:0:0:1::1")), Some(DB1)),
            drop(deny_v6, db, egress),
        ),
        row(
            "a solicitation with another's link-layer address is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, gw_sol_mac, &gw_sol), 255, 135, Some(v6("fd00:0:0:1::1")), Some(other)),
            drop("spoof", db, egress),
        ),
        row(
            "duplicate-address detection for an own address",
            vm("db1"),
            frames::nd(&ends(DB1, "::", db_sol_mac, &db_sol), 255, 135, Some(v6("fd00:0:0:1::21")), None),
            fwd("uplink", db, egress),
        ),
        row(
            "duplicate-address detection for another vm's address is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, "::", web2_sol_mac, &web2_sol), 255, 135, Some(v6("fd00::12")), None),
            drop("spoof", db, egress),
        ),
        row(
            "unsolicited neighbour advertisement of an own address",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, all_nodes_mac, "ff02::1"), 255, 136, Some(v6("fd00:0:0:1::21")), Some(DB1)),
            fwd("broadcast", db, egress),
        ),
        row(
            "a neighbour advertisement claiming another vm's address is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, all_nodes_mac, "ff02::1"), 255, 136, Some(v6("fd00::11")), Some(DB1)),
            drop("spoof", db, egress),
        ),
        row(
            "a neighbour advertisement with another's link-layer address is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, all_nodes_mac, "ff02::1"), 255, 136, Some(v6("fd00:0:0:1::21")), Some(other)),
            drop("spoof", db, egress),
        ),
        row(
            "router solicitation",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, all_routers_mac, "ff02::2"), 255, 133, None, Some(DB1)),
            fwd("uplink", db, egress),
        ),
        row(
            "a router advertisement from a vm is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, all_nodes_mac, "ff02::1"), 255, 134, None, Some(DB1)),
            drop("spoof", db, egress),
        ),
        row(
            "a redirect from a vm is spoofing",
            vm("db1"),
            frames::nd(&ends(DB1, db_ll, UPLINK_MAC, "fe80::1"), 255, 137, Some(v6("fd00::12")), Some(DB1)),
            drop("spoof", db, egress),
        ),
        row(
            "mld report",
            vm("db1"),
            frames::mld2_report(&ends(DB1, db_ll, mcast_mac(v6("ff02::16")), "ff02::16"), 1),
            fwd("uplink", db, egress),
        ),
        row(
            "an mld report with hop limit 64 is judged by the groups",
            vm("db1"),
            frames::mld2_report(&ends(DB1, db_ll, mcast_mac(v6("ff02::16")), "ff02::16"), 64),
            drop(deny_v6, db, egress),
        ),
        // ARP and other ethertypes.
        row(
            "arp for its own address",
            vm("db1"),
            frames::arp(DB1, BROADCAST, 1, DB1, [10, 0, 1, 21], [10, 0, 1, 1]),
            fwd("broadcast", db, egress),
        ),
        row(
            "arp announcing another vm's address is spoofing",
            vm("db1"),
            frames::arp(DB1, BROADCAST, 2, DB1, [10, 0, 0, 11], [10, 0, 1, 1]),
            drop("spoof", db, egress),
        ),
        row(
            "arp from the uplink, broadcast",
            up,
            frames::arp(UPLINK_MAC, BROADCAST, 1, UPLINK_MAC, [10, 0, 255, 1], [10, 0, 1, 21]),
            fwd("broadcast", None, ingress),
        ),
        row(
            "an ipx frame is not ip",
            vm("db1"),
            {
                let mut f = frames::udp(&ends(DB1, "10.0.1.21", UPLINK_MAC, "192.0.2.1"), 1, 1, b"");
                f[12..14].copy_from_slice(&0x8137u16.to_be_bytes());
                f
            },
            drop("non-ip", db, egress),
        ),
        // Link-local sources.
        row(
            "a link-local source that is not the port's is spoofing",
            vm("web1"),
            frames::udp(&ends(WEB1, "fe80::1", UPLINK_MAC, "fe80::2"), 5000, 5000, b"x"),
            drop("spoof", web1, egress),
        ),
        row(
            "the eui-64 link-local address of the port's mac",
            vm("web1"),
            frames::udp(&ends(WEB1, web1_ll, UPLINK_MAC, "fe80::2"), 5000, 5000, b"x"),
            Expect { action: "forward", to: Some("uplink"), reason: "default", port: web1, direction: egress },
        ),
        row(
            "a link-local address listed in the port's link_local",
            vm("web1"),
            frames::udp(&ends(WEB1, "fe80::beef", UPLINK_MAC, "fe80::2"), 5001, 5001, b"x"),
            Expect { action: "forward", to: Some("uplink"), reason: "default", port: web1, direction: egress },
        ),
        // Tags.
        row(
            "an 802.1q tagged frame from a vm",
            vm("web1"),
            frames::tagged(&frames::udp(&ends(WEB1, "10.0.0.11", UPLINK_MAC, "192.0.2.1"), 5000, 53, b"x"), &[7]),
            drop("tagged", web1, egress),
        ),
        row(
            "a qinq tagged frame from a vm",
            vm("web1"),
            frames::tagged(&frames::udp(&ends(WEB1, "10.0.0.11", UPLINK_MAC, "192.0.2.1"), 5000, 53, b"x"), &[100, 7]),
            drop("tagged", web1, egress),
        ),
        row(
            "a tagged frame from the uplink",
            up,
            frames::tagged(&frames::udp(&ends(UPLINK_MAC, "192.0.2.1", WEB1, "10.0.0.11"), 53, 5000, b"x"), &[7]),
            drop("tagged", None, ingress),
        ),
        // From the uplink.
        row(
            "a dhcp reply from a configured dhcp_server, broadcast",
            up,
            frames::udp(&ends(UPLINK_MAC, "10.0.255.254", BROADCAST, "255.255.255.255"), 67, 68, &bootp),
            fwd("broadcast", None, ingress),
        ),
        row(
            "a dhcp reply from another address is judged by the groups",
            up,
            frames::udp(&ends(UPLINK_MAC, "1.2.3.4", DB1, "10.0.1.21"), 67, 68, &bootp),
            drop("default", db, ingress),
        ),
        row(
            "a dhcpv6 reply from a configured dhcp_server",
            up,
            frames::udp(&ends(UPLINK_MAC, "fe80::254", DB1, db_ll), 547, 546, &[7, 0, 0, 1]),
            fwd("eni-db1", db, ingress),
        ),
        row(
            "a neighbour solicitation for the port's address",
            up,
            frames::nd(&ends(UPLINK_MAC, "fe80::1", db_sol_mac, &db_sol), 255, 135, Some(v6("fd00:0:0:1::21")), Some(UPLINK_MAC)),
            fwd("eni-db1", db, ingress),
        ),
        row(
            "a neighbour solicitation for an address the port does not have",
            up,
            frames::nd(&ends(UPLINK_MAC, "fe80::1", DB1, "fd00:0:0:1::21"), 255, 135, Some(v6("fd00::11")), Some(UPLINK_MAC)),
            drop("default", db, ingress),
        ),
        row(
            "a neighbour solicitation with hop limit 64",
            up,
            frames::nd(&ends(UPLINK_MAC, "fe80::1", DB1, "fd00:0:0:1::21"), 64, 135, Some(v6("fd00:0:0:1::21")), Some(UPLINK_MAC)),
            drop("default", db, ingress),
        ),
        row(
            "a neighbour advertisement answering the port",
            up,
            frames::nd(&ends(UPLINK_MAC, "fe80::1", DB1, db_ll), 255, 136, Some(v6("fd00:0:0:1::1")), Some(UPLINK_MAC)),
            fwd("eni-db1", db, ingress),
        ),
        row(
            "a router advertisement to all nodes",
            up,
            frames::nd(&ends(UPLINK_MAC, "fe80::1", all_nodes_mac, "ff02::1"), 255, 134, None, Some(UPLINK_MAC)),
            fwd("broadcast", None, ingress),
        ),
        row(
            "a router advertisement from a global address is not one",
            up,
            frames::nd(&ends(UPLINK_MAC, "2001:db8::1", all_nodes_mac, "ff02::1"), 255, 134, None, Some(UPLINK_MAC)),
            drop("no-port", None, ingress),
        ),
        // VM to VM.
        row(
            "a solicitation for a neighbour vm goes to that vm only",
            vm("web1"),
            frames::nd(&ends(WEB1, web1_ll, web2_sol_mac, &web2_sol), 255, 135, Some(v6("fd00::12")), Some(WEB1)),
            fwd("eni-web2", web1, egress),
        ),
        row(
            "the neighbour vm's advertisement back",
            vm("web2"),
            frames::nd(&ends(WEB2, web2_ll, WEB1, web1_ll), 255, 136, Some(v6("fd00::12")), Some(WEB2)),
            fwd("eni-web1", Some("eni-web2"), egress),
        ),
    ]
}

/// Adds what the rows need to a copy of `examples/` at `dir`: [`HOST_EXTRA`]
/// at the top of `host.toml`, [`WEB1_EXTRA`] in eni-web1's port file.
pub fn configure(dir: &std::path::Path) {
    let host = dir.join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    std::fs::write(&host, format!("{HOST_EXTRA}{text}")).expect("write host.toml");
    let web1 = dir.join("ports/eni-web1.toml");
    let text = std::fs::read_to_string(&web1).expect("read eni-web1.toml");
    std::fs::write(&web1, format!("{text}{WEB1_EXTRA}")).expect("write eni-web1.toml");
}
