//! The snapshot the datapath reads: the compiled policy plus what forwarding
//! and anti-spoofing need per port, built off the hot path by the control
//! plane and published as one immutable value ([`Published`]).
//!
//! Conntrack zones outlive snapshots: a port keeps its zone across reloads
//! (so its flows survive), a removed port's zone is flushed and reused.

use std::collections::HashMap as StdMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use hashbrown::HashMap;
use ipnet::IpNet;
use sgswitch_config::{Config, PortRange};
use sgswitch_conntrack::Zone;
use sgswitch_filter::{Compiled, Policy};

/// An Ethernet address.
pub type MacAddr = [u8; 6];

/// A rule as metrics and the flow log name it: the same group, direction and
/// index (or id) `sgswitch trace` reports. Its hits are carried from one
/// plan to the next by label, so a rule with an `id` keeps its count when
/// rules are inserted before it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleLabel {
    pub group: Arc<str>,
    pub direction: &'static str,
    pub name: RuleName,
    pub action: &'static str,
}

/// What names a rule within its group and direction.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleName {
    /// A rule without an `id`: its 0-based position.
    Index(u16),
    /// The rule's `id`.
    Id(Arc<str>),
}

impl RuleName {
    /// The metric label: `("index", "3")` or `("id", "http")`.
    pub fn label(&self) -> (&'static str, String) {
        match self {
            RuleName::Index(i) => ("index", i.to_string()),
            RuleName::Id(id) => ("id", id.to_string()),
        }
    }
}

impl std::fmt::Display for RuleName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleName::Index(i) => write!(f, "{i}"),
            RuleName::Id(id) => f.write_str(id),
        }
    }
}

/// A configuration ready to publish, with the zones of ports that went
/// away (the loops flush their flows).
#[derive(Debug)]
pub struct Published {
    pub plan: Plan,
    pub gone: Vec<Zone>,
}

/// Why a configuration cannot become a plan.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("{ports} ports: at most {MAX_PORTS} are supported")]
    TooManyPorts { ports: usize },
}

/// Most ports one switch serves (conntrack zones are `u16`; this bounds the
/// per-zone arrays).
pub const MAX_PORTS: usize = 4096;

/// A port's index in the plan (the same as in its policy's ports), as the
/// datapath's per-frame records carry it: two bytes, since a plan has at
/// most [`MAX_PORTS`] ports.
pub type PortIdx = u16;
const _: () = assert!(MAX_PORTS <= PortIdx::MAX as usize);

/// Stable zone numbers by port id, kept by the control thread across
/// reloads.
#[derive(Debug, Default)]
pub struct Zones {
    by_id: StdMap<String, Zone>,
    free: Vec<Zone>,
    next: Zone,
}

impl Zones {
    /// The zone of each port of `cfg` (same order), reusing the zones of
    /// ports that stay; returns the zones of ports that went away (their
    /// flows must be flushed).
    ///
    /// # Errors
    /// More than [`MAX_PORTS`] ports.
    pub fn assign(&mut self, ids: &[&str]) -> Result<(Vec<Zone>, Vec<Zone>), PlanError> {
        if ids.len() > MAX_PORTS {
            return Err(PlanError::TooManyPorts { ports: ids.len() });
        }
        // A set, not `ids.contains`: that made a reload of a host with
        // 1,000 ports a million string compares.
        let staying: std::collections::HashSet<&str> = ids.iter().copied().collect();
        let mut gone: Vec<Zone> = self.by_id.iter().filter(|(id, _)| !staying.contains(id.as_str())).map(|(_, &z)| z).collect();
        gone.sort_unstable();
        self.by_id.retain(|id, _| staying.contains(id.as_str()));
        self.free.extend(gone.iter().rev());
        let zones = ids
            .iter()
            .map(|&id| {
                *self.by_id.entry(id.to_owned()).or_insert_with(|| {
                    self.free.pop().unwrap_or_else(|| {
                        let z = self.next;
                        self.next += 1;
                        z
                    })
                })
            })
            .collect();
        Ok((zones, gone))
    }
}

/// What the datapath knows of one port.
#[derive(Clone, Debug)]
pub struct PortPlan {
    pub id: Arc<str>,
    pub zone: Zone,
    pub interface: Option<String>,
    /// A vhost-user port's socket (then `interface` is `None`).
    pub vhost_user: Option<sgswitch_config::VhostUser>,
    pub mac: Option<MacAddr>,
    pub nets: Vec<IpNet>,
    /// The IPv6 link-local addresses the VM may use: the EUI-64 address of
    /// its MAC, then the port's `link_local` list.
    pub link_local: Vec<Ipv6Addr>,
    pub spoof_check: bool,
    pub allow_blocked_egress: bool,
    /// Connection-tracking timeouts of the port's flows (its own
    /// `[conntrack.timeouts]`, or the host's).
    pub timeouts: sgswitch_config::Timeouts,
}

impl PortPlan {
    /// Whether `a` is one of the port's addresses (or in its prefixes).
    pub fn owns(&self, a: IpAddr) -> bool {
        self.nets.iter().any(|n| n.contains(&a))
    }

    /// Whether `a` is one of the port's own IPv6 link-local addresses.
    pub fn owns_link_local(&self, a: Ipv6Addr) -> bool {
        self.link_local.contains(&a)
    }

    /// Whether `a` is the port's: one of its addresses or one of its
    /// link-local ones. What a frame from the VM may carry as its source.
    pub fn owns_any(&self, a: IpAddr) -> bool {
        match a {
            IpAddr::V6(v6) if is_link_local(v6) => self.owns_link_local(v6),
            a => self.owns(a),
        }
    }
}

/// Whether `a` is an IPv6 link-local unicast address (fe80::/10).
pub fn is_link_local(a: Ipv6Addr) -> bool {
    a.segments()[0] & 0xffc0 == 0xfe80
}

/// The IPv6 link-local address a host derives from its MAC (RFC 4291
/// appendix A: the modified EUI-64 interface identifier under fe80::/64).
pub fn eui64_link_local(m: &MacAddr) -> Ipv6Addr {
    Ipv6Addr::from([0xfe, 0x80, 0, 0, 0, 0, 0, 0, m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]])
}

/// One configuration, ready for the datapath.
#[derive(Debug)]
pub struct Plan {
    pub compiled: Compiled,
    pub ports: Vec<PortPlan>,
    /// Ports by MAC, the address as a number ([`mac_key`]): one word to
    /// hash instead of a six-byte array.
    by_mac: HashMap<u64, PortIdx>,
    by_net: Vec<(IpNet, PortIdx)>,
    /// Ports by their link-local addresses.
    by_link_local: HashMap<Ipv6Addr, PortIdx>,
    pub blocked_egress: Vec<(u8, PortRange)>,
    pub infra_allow: Vec<IpNet>,
    /// `dhcp_server` of `host.toml`.
    pub dhcp_server: Vec<IpNet>,
    /// The generation conntrack entries are stamped with.
    pub generation: u32,
    /// The generation operators see for it: `generation`, or the store
    /// revision it was loaded at (set by the control plane).
    pub shown_generation: u64,
    /// Per group: the flat index of its first ingress rule, and its ingress
    /// rule count (egress rules follow); the last element is the total.
    rule_base: Vec<(u32, u32)>,
    rules_total: u32,
    /// Each rule slot's name, for rule-hit metrics and the flow log.
    pub rule_labels: Arc<[RuleLabel]>,
    /// Highest zone in use + 1.
    pub zones: usize,
    /// This plan's number, unique in the process (from 1).
    id: u64,
}

/// The next plan's id.
static NEXT_ID: AtomicU64 = AtomicU64::new(1);

impl Plan {
    /// Builds the plan of a loaded configuration with the given zones (one
    /// per port, from [`Zones::assign`]). Ports beyond [`MAX_PORTS`] are left
    /// out ([`Plan::build`] refuses them).
    pub fn new(cfg: Config, zones: &[Zone], generation: u32) -> Plan {
        Plan::compile(cfg, zones, generation, None)
    }

    /// [`Plan::new`], reusing the compiled tables of `previous` whose
    /// inputs did not change ([`Compiled::reusing`]).
    fn compile(cfg: Config, zones: &[Zone], generation: u32, previous: Option<&Compiled>) -> Plan {
        let ports: Vec<PortPlan> = cfg
            .ports
            .iter()
            .zip(zones)
            .take(MAX_PORTS)
            .map(|(p, &zone)| PortPlan {
                id: Arc::from(p.id.as_str()),
                zone,
                interface: p.interface.clone(),
                vhost_user: p.vhost_user.clone(),
                mac: p.mac.map(|m| m.0),
                nets: p.addresses().copied().collect(),
                link_local: p.mac.iter().map(|m| eui64_link_local(&m.0)).chain(p.link_local.iter().copied()).collect(),
                spoof_check: p.spoof_check,
                allow_blocked_egress: p.allow_blocked_egress,
                timeouts: p.timeouts(&cfg.host),
            })
            .collect();
        let by_mac = (0..).zip(&ports).filter_map(|(i, p): (PortIdx, &PortPlan)| p.mac.map(|m| (mac_key(&m), i))).collect();
        let by_net = (0..).zip(&ports).flat_map(|(i, p): (PortIdx, &PortPlan)| p.nets.iter().map(move |n| (*n, i))).collect();
        let by_link_local = (0..).zip(&ports).flat_map(|(i, p): (PortIdx, &PortPlan)| p.link_local.iter().map(move |a| (*a, i))).collect();
        let blocked_egress = cfg.host.blocked_egress.iter().map(|b| (b.protocol, b.ports)).collect();
        let infra_allow = cfg.host.infra_allow.clone();
        let dhcp_server = cfg.host.dhcp_server.clone();
        let mut rule_base = Vec::with_capacity(cfg.groups.len());
        let mut total = 0u32;
        for g in &cfg.groups {
            let (i, e) = (u32::try_from(g.ingress.len()).unwrap_or(u32::MAX), u32::try_from(g.egress.len()).unwrap_or(u32::MAX));
            rule_base.push((total, i));
            total = total.saturating_add(i).saturating_add(e);
        }
        let mut rule_labels = Vec::with_capacity(total as usize);
        for g in &cfg.groups {
            let group: Arc<str> = Arc::from(g.id.as_str());
            for d in sgswitch_config::Direction::ALL {
                for (i, r) in g.rules(d).iter().enumerate() {
                    rule_labels.push(RuleLabel {
                        group: Arc::clone(&group),
                        direction: d.as_str(),
                        name: match &r.id {
                            Some(id) => RuleName::Id(Arc::from(id.as_str())),
                            None => RuleName::Index(u16::try_from(i).unwrap_or(u16::MAX)),
                        },
                        action: match r.action {
                            sgswitch_config::Action::Allow => "allow",
                            sgswitch_config::Action::Deny => "deny",
                        },
                    });
                }
            }
        }
        let zones = zones.iter().map(|&z| usize::from(z) + 1).max().unwrap_or(0);
        let compiled = Compiled::reusing(Arc::new(Policy::new(cfg)), u64::from(generation), previous);
        Plan {
            compiled,
            ports,
            by_mac,
            by_net,
            by_link_local,
            blocked_egress,
            infra_allow,
            dhcp_server,
            generation,
            shown_generation: u64::from(generation),
            rule_base,
            rules_total: total,
            rule_labels: rule_labels.into(),
            zones,
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// This plan's number, unique in the process: what the flow cache
    /// records its routes under.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The plan of `cfg` with zones from `zones` (kept across reloads), and
    /// the zones of ports that went away since the last call.
    ///
    /// # Errors
    /// More ports than [`MAX_PORTS`].
    pub fn build(cfg: Config, zones: &mut Zones, generation: u32) -> Result<(Plan, Vec<Zone>), PlanError> {
        Plan::build_after(cfg, zones, generation, None)
    }

    /// [`Plan::build`] of the configuration after `previous`, whose
    /// compiled tables are reused where their inputs did not change.
    ///
    /// # Errors
    /// More ports than [`MAX_PORTS`].
    pub fn build_after(cfg: Config, zones: &mut Zones, generation: u32, previous: Option<&Plan>) -> Result<(Plan, Vec<Zone>), PlanError> {
        let ids: Vec<&str> = cfg.ports.iter().map(|p| p.id.as_str()).collect();
        let (assigned, gone) = zones.assign(&ids)?;
        Ok((Plan::compile(cfg, &assigned, generation, previous.map(|p| &p.compiled)), gone))
    }

    pub fn policy(&self) -> &Policy {
        self.compiled.policy()
    }

    /// Port `p`'s plan.
    #[inline]
    pub fn port(&self, p: PortIdx) -> Option<&PortPlan> {
        self.ports.get(usize::from(p))
    }

    /// The port whose id is `id` (the policy's index, which is the plan's).
    pub fn port_by_id(&self, id: &str) -> Option<PortIdx> {
        self.policy().port_index(id).and_then(|i| PortIdx::try_from(i).ok())
    }

    /// The port whose MAC is `mac`.
    pub fn port_by_mac(&self, mac: &MacAddr) -> Option<PortIdx> {
        self.port_by_mac_key(mac_key(mac))
    }

    /// The port whose MAC's [`mac_key`] is `key`.
    pub(crate) fn port_by_mac_key(&self, key: u64) -> Option<PortIdx> {
        self.by_mac.get(&key).copied()
    }

    /// The port that owns `a` (the most specific of its prefixes wins).
    pub fn port_by_ip(&self, a: IpAddr) -> Option<PortIdx> {
        self.by_net.iter().filter(|(n, _)| n.contains(&a)).max_by_key(|(n, _)| n.prefix_len()).map(|&(_, p)| p)
    }

    /// The port that owns `a`, a link-local address of a port included.
    pub fn port_by_any(&self, a: IpAddr) -> Option<PortIdx> {
        match a {
            IpAddr::V6(v6) if is_link_local(v6) => self.by_link_local.get(&v6).copied(),
            a => self.port_by_ip(a),
        }
    }

    /// Whether `a` is one of the host's `dhcp_server` addresses.
    pub fn is_dhcp_server(&self, a: IpAddr) -> bool {
        self.dhcp_server.iter().any(|n| n.contains(&a))
    }

    /// Whether host `blocked_egress` stops a new flow to `dport` over
    /// `proto` toward the uplink.
    pub fn blocked(&self, proto: u8, dport: u16) -> bool {
        self.blocked_egress.iter().any(|&(p, r)| p == proto && r.start <= dport && dport <= r.end)
    }

    pub fn infra_allowed(&self, a: IpAddr) -> bool {
        self.infra_allow.iter().any(|n| n.contains(&a))
    }

    /// Rules of all groups, ingress and egress: the size of a rule-hit
    /// counter array.
    pub fn rules_total(&self) -> usize {
        self.rules_total as usize
    }

    /// The flat index of a rule in a rule-hit counter array.
    pub fn rule_slot(&self, r: sgswitch_filter::RuleRef) -> usize {
        let (base, n_ingress) = self.rule_base.get(usize::from(r.group)).copied().unwrap_or((0, 0));
        let off = match r.direction {
            sgswitch_config::Direction::Ingress => 0,
            sgswitch_config::Direction::Egress => n_ingress,
        };
        (base + off + u32::from(r.index)) as usize
    }
}

/// A MAC address as the number its six bytes spell.
pub(crate) fn mac_key(m: &MacAddr) -> u64 {
    u64::from_be_bytes([0, 0, m[0], m[1], m[2], m[3], m[4], m[5]])
}

/// Whether the MAC address whose [`mac_key`] is `k` is a broadcast or
/// multicast one (the first byte's low bit).
pub(crate) fn mac_key_is_group(k: u64) -> bool {
    k >> 40 & 1 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_keys_tell_every_byte_apart() {
        let base = [2, 0, 0, 0, 0, 1];
        let mut keys = vec![mac_key(&base)];
        for at in 0..6 {
            let mut m = base;
            m[at] ^= 0x80;
            keys.push(mac_key(&m));
        }
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), 7, "a change in any byte is another key");
        for (m, group) in
            [([0xff; 6], true), ([0x01, 0, 0x5e, 0, 0, 1], true), ([0x33, 0x33, 0, 0, 0, 1], true), (base, false), ([0xfe; 6], false)]
        {
            assert_eq!(mac_key_is_group(mac_key(&m)), group, "{m:02x?}");
        }
    }

    #[test]
    fn the_eui64_link_local_address_flips_the_universal_bit_and_inserts_fffe() {
        assert_eq!(eui64_link_local(&[0x02, 0, 0, 0, 0, 0x11]), "fe80::ff:fe00:11".parse::<Ipv6Addr>().unwrap());
        assert_eq!(eui64_link_local(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]), "fe80::5054:ff:fe12:3456".parse::<Ipv6Addr>().unwrap());
        assert!(is_link_local("fe80::1".parse().unwrap()) && is_link_local("febf::1".parse().unwrap()));
        assert!(!is_link_local("fec0::1".parse().unwrap()) && !is_link_local("fd00::1".parse().unwrap()));
    }

    #[test]
    fn zones_survive_reloads_and_are_reused_after_removal() {
        let mut z = Zones::default();
        assert_eq!(z.assign(&["a", "b", "c"]).unwrap(), (vec![0, 1, 2], vec![]));
        assert_eq!(z.assign(&["a", "c", "d"]).unwrap(), (vec![0, 2, 1], vec![1]));
        assert_eq!(z.assign(&["d"]).unwrap(), (vec![1], vec![0, 2]));
        assert_eq!(z.assign(&["x", "y", "d", "z"]).unwrap(), (vec![0, 2, 1, 3], vec![]));
    }

    /// A plan of one port bound to sg-a, whose ingress rules are `rules`
    /// (TOML tables' bodies).
    fn plan_of(rules: &[&str]) -> Plan {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |rel: &str, text: String| {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().expect("a folder")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("host.toml", String::new());
        write("ports/eni-a.toml", "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\"]\n".into());
        let body: String = rules.iter().map(|r| format!("\n[[ingress]]\n{r}\nsource = \"0.0.0.0/0\"\n")).collect();
        write("groups/sg-a.toml", format!("id = \"sg-a\"\n{body}"));
        let cfg = sgswitch_config::load_dir(dir.path()).expect("a valid configuration");
        Plan::build(cfg, &mut Zones::default(), 1).expect("a plan").0
    }

    #[test]
    fn a_rule_with_an_id_keeps_its_hits_when_a_rule_is_inserted_before_it() {
        use crate::datapath::stats::{Counters, RuleHits};
        let named = "id = \"ssh\"\nprotocol = \"tcp\"\nports = \"22/22\"";
        let plain = "protocol = \"tcp\"\nports = \"80/80\"";
        let before = plan_of(&[named, plain]);
        let after = plan_of(&["protocol = \"udp\"\nports = \"53/53\"", named, plain]);
        let c = Counters::default();
        let first = Arc::new(RuleHits::new(1, Arc::clone(&before.rule_labels)));
        c.publish_rules(Arc::clone(&first));
        first.hits[0].add(3); // ssh
        first.hits[1].add(5); // http, index 1
        let second = Arc::new(RuleHits::new(2, Arc::clone(&after.rule_labels)));
        c.publish_rules(second);
        let t = c.rules.load().totals();
        let ssh = RuleLabel { group: Arc::from("sg-a"), direction: "ingress", name: RuleName::Id(Arc::from("ssh")), action: "allow" };
        assert_eq!(t.get(&ssh), Some(&3), "named by its id, the rule keeps its count: {t:?}");
        assert_eq!(after.rule_labels[1], ssh, "and its label, at its new position");
        // A rule without an id is named by its position: after the insert,
        // index 1 is the ssh rule's place, and the http rule is index 2.
        let at = |i| RuleLabel { group: Arc::from("sg-a"), direction: "ingress", name: RuleName::Index(i), action: "allow" };
        assert_eq!(after.rule_labels[2], at(2));
        assert_eq!(t.get(&at(1)), Some(&5), "the old position keeps the old count");
        // The flow log, `replay` and `trace` name rules the same way.
        let rule = |index| sgswitch_filter::RuleRef {
            group: 0,
            direction: sgswitch_config::Direction::Ingress,
            index,
            priority: 1,
            action: sgswitch_config::Action::Allow,
        };
        assert_eq!(after.policy().rule_name(rule(1)), "sg-a/ingress/ssh");
        assert_eq!(after.policy().rule_name(rule(2)), "sg-a/ingress/2");
        assert_eq!(RuleName::Id(Arc::from("ssh")).label(), ("id", "ssh".to_owned()));
        assert_eq!(RuleName::Index(2).label(), ("index", "2".to_owned()));
    }
}
