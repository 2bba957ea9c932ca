//! Synthetic policies of realistic security-group shape, and packets drawn
//! from them, for the classifier benchmark.
//!
//! A port binds three groups that share `rules` ingress rules (priority
//! model): mostly tcp, single well-known ports and ranges, remote CIDRs from
//! /32 to /8 with a few /0, about 3% of rules referencing one of three
//! groups of 100 to 1,000 members, 15% deny rules, priorities 1 to 100.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnet::{IpNet, Ipv4Net};
use sgswitch_config::{
    Action, Config, Direction, Group, GroupType, Host, IdRef, IntraGroup, Limits, PolicyModel, Port, PortRange, Remote, Rule,
};
use sgswitch_filter::Packet;

/// A small, fast, seeded generator (splitmix64): the benchmark's inputs are
/// the same on every run.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    pub fn u16_in(&mut self, lo: u16, hi: u16) -> u16 {
        lo + u16::try_from(self.below(u64::from(hi - lo) + 1)).expect("below a u16 span")
    }

    pub fn u32(&mut self) -> u32 {
        u32::try_from(self.next_u64() >> 32).expect("32 bits")
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// The port's own address.
pub const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const SERVICES: [u16; 12] = [22, 80, 443, 3306, 5432, 6379, 8080, 8443, 9000, 9100, 27017, 53];

/// A random address inside `n`.
pub fn addr_in(rng: &mut Rng, n: Ipv4Net) -> Ipv4Addr {
    let host_bits = 32 - u32::from(n.prefix_len());
    let offset = if host_bits == 0 { 0 } else { rng.u32() & (u32::MAX >> (32 - host_bits)) };
    Ipv4Addr::from(u32::from(n.network()) | offset)
}

fn cidr(rng: &mut Rng) -> Ipv4Net {
    let len = match rng.below(100) {
        0..40 => 32,
        40..65 => 24,
        65..80 => 16,
        80..90 => 12,
        90..97 => 8,
        _ => 0,
    };
    Ipv4Net::new(Ipv4Addr::from(rng.u32()), len).expect("length <= 32").trunc()
}

fn rule(rng: &mut Rng, refs: usize) -> Rule {
    let protocol = match rng.below(100) {
        0..70 => Some(6),
        70..90 => Some(17),
        90..95 => Some(1),
        _ => None,
    };
    let ports = matches!(protocol, Some(6 | 17))
        .then(|| match rng.below(100) {
            0..60 => {
                let p = SERVICES[usize::try_from(rng.below(SERVICES.len() as u64)).expect("small")];
                Some(PortRange { start: p, end: p })
            }
            60..90 => {
                let start = rng.u16_in(1024, 60000);
                Some(PortRange { start, end: start + rng.u16_in(0, 1000) })
            }
            _ => None,
        })
        .flatten();
    let remote = if refs > 0 && rng.chance(3) {
        Remote::Group(format!("sg-ref{}", rng.below(refs as u64)))
    } else {
        Remote::Cidr(IpNet::V4(cidr(rng)))
    };
    Rule {
        priority: u8::try_from(rng.u16_in(1, 100)).expect("1..=100"),
        action: if rng.chance(15) { Action::Deny } else { Action::Allow },
        protocol,
        ports,
        remote,
        ..Rule::default()
    }
}

fn group(id: String, ingress: Vec<Rule>, members: Vec<IpNet>) -> Group {
    Group {
        id,
        file: PathBuf::new(),
        name: String::new(),
        description: String::new(),
        kind: GroupType::Basic,
        intra_group: IntraGroup::Drop,
        remote_members: members,
        ingress,
        egress: Vec::new(),
    }
}

/// Port `id` with address `addr` bound to `groups`.
pub fn port(id: String, addr: Ipv4Addr, groups: Vec<String>) -> Port {
    Port {
        id,
        file: PathBuf::new(),
        interface: None,
        vhost_user: None,
        mac: None,
        ipv4: vec![IpNet::V4(Ipv4Net::from(addr))],
        ipv6: Vec::new(),
        security_groups: groups.into_iter().map(|id| IdRef { id, loc: Default::default() }).collect(),
        spoof_check: true,
        allow_blocked_egress: false,
        link_local: Vec::new(),
        conntrack_timeouts: None,
    }
}

/// The three referenced groups (100, 300 and 1,000 members).
fn referenced(rng: &mut Rng) -> Vec<Group> {
    [100, 300, 1000]
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let members = (0..n).map(|_| IpNet::V4(Ipv4Net::from(Ipv4Addr::from(rng.u32())))).collect();
            group(format!("sg-ref{i}"), Vec::new(), members)
        })
        .collect()
}

fn host() -> Host {
    let limits = Limits { rules_per_group: u32::MAX, rules_per_port: u32::MAX, members_per_group: u32::MAX, ..Limits::default() };
    Host { policy_model: PolicyModel::Priority, limits, ..Host::default() }
}

/// One port whose three groups hold `rules` ingress rules together.
pub fn config(rules: usize, seed: u64) -> Config {
    let mut rng = Rng::new(seed);
    let mut groups = referenced(&mut rng);
    let refs = groups.len();
    let mut bound = Vec::new();
    for g in 0..3 {
        let n = rules / 3 + usize::from(g < rules % 3);
        let ingress = (0..n).map(|_| rule(&mut rng, refs)).collect();
        bound.push(format!("sg-app{g}"));
        groups.push(group(format!("sg-app{g}"), ingress, Vec::new()));
    }
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    Config { host: host(), groups, ports: vec![port("eni-sg".into(), LOCAL, bound)], ..Config::default() }
}

/// A host of `ports` ports, each bound to five groups of its own holding
/// `rules` rules together (no two ports share a table: the worst case for
/// recompiling).
pub fn host_config(ports: usize, rules: usize, seed: u64) -> Config {
    let mut rng = Rng::new(seed);
    let mut groups = referenced(&mut rng);
    let refs = groups.len();
    let mut all_ports = Vec::new();
    for p in 0..ports {
        let mut bound = Vec::new();
        for g in 0..5 {
            let id = format!("sg-p{p}-{g}");
            let ingress = (0..rules / 5).map(|_| rule(&mut rng, refs)).collect();
            groups.push(group(id.clone(), ingress, Vec::new()));
            bound.push(id);
        }
        let addr = Ipv4Addr::from(0x0a01_0000 + u32::try_from(p).expect("few ports"));
        all_ports.push(port(format!("eni-{p:03}"), addr, bound));
    }
    groups.sort_by(|a, b| a.id.cmp(&b.id));
    Config { host: host(), groups, ports: all_ports, ..Config::default() }
}

/// `n` first packets toward the port of [`config`]: nine in ten drawn from
/// a random rule (inside its remote set, ports and protocol), one in ten
/// from anywhere.
pub fn packets(cfg: &Config, n: usize, seed: u64) -> Vec<Packet> {
    let mut rng = Rng::new(seed);
    let rules: Vec<&Rule> =
        cfg.ports[0].security_groups.iter().filter_map(|g| cfg.group(&g.id)).flat_map(|g| g.rules(Direction::Ingress)).collect();
    (0..n)
        .map(|_| {
            let mut p = Packet {
                direction: Direction::Ingress,
                proto: 6,
                remote: IpAddr::V4(Ipv4Addr::from(rng.u32())),
                local: IpAddr::V4(LOCAL),
                remote_port: rng.u16_in(1024, 65535),
                local_port: rng.u16_in(1, 65535),
                icmp_type: 8,
                icmp_code: 0,
            };
            if rules.is_empty() || rng.chance(10) {
                return p;
            }
            let r = rules[usize::try_from(rng.below(rules.len() as u64)).expect("index")];
            p.proto = r.protocol.unwrap_or(17);
            if let Some(ports) = r.ports {
                p.local_port = rng.u16_in(ports.start, ports.end);
            }
            let nets: &[IpNet] = match &r.remote {
                Remote::Cidr(n) => std::slice::from_ref(n),
                Remote::Group(id) => cfg.group(id).map_or(&[], |g| g.remote_members.as_slice()),
                Remote::PrefixList(_) => &[],
            };
            if !nets.is_empty()
                && let IpNet::V4(n) = nets[usize::try_from(rng.below(nets.len() as u64)).expect("index")]
            {
                p.remote = IpAddr::V4(addr_in(&mut rng, n));
            }
            p
        })
        .collect()
}
