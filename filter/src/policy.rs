//! A loaded configuration made ready for deciding: group memberships
//! resolved, ports found by id.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use sgswitch_config::{Config, Direction, Group, GroupType, Port, Remote, Rule};

use crate::decision::RuleRef;

/// Index of a port in [`Policy::ports`] (sorted by id).
pub type PortIdx = usize;

/// A validated configuration with everything a decision needs to look up.
///
/// # Invariants
/// Built from a `Config` that loaded: every referenced group and prefix list
/// exists, every port's groups exist and are of one type.
#[derive(Clone, Debug)]
pub struct Policy {
    cfg: Config,
    /// Group id -> index in `cfg.groups`.
    group_idx: HashMap<String, u16>,
    /// Per group (same index as `cfg.groups`): its members, the addresses of
    /// every port bound to it followed by its `remote_members`.
    members: Vec<Vec<IpNet>>,
    /// Prefix-list id -> entries.
    lists: HashMap<String, Vec<IpNet>>,
    /// Per port: indices of its groups, in binding order.
    port_groups: Vec<Vec<u16>>,
}

impl Policy {
    /// Resolves `cfg`.
    ///
    /// # Panics
    /// If `cfg` references groups that do not exist or has more than 65,535
    /// groups, which `sgswitch_config::load_dir` never lets through.
    pub fn new(cfg: Config) -> Policy {
        let group_idx: HashMap<String, u16> =
            cfg.groups.iter().enumerate().map(|(i, g)| (g.id.clone(), u16::try_from(i).expect("fewer than 65,536 groups"))).collect();
        let port_groups: Vec<Vec<u16>> =
            cfg.ports.iter().map(|p| p.security_groups.iter().map(|r| group_idx[r.id.as_str()]).collect()).collect();
        let mut members: Vec<Vec<IpNet>> = vec![Vec::new(); cfg.groups.len()];
        // An address another host claims too is no group's member (see
        // `sgswitch_config::Fleet`).
        let withheld: &[IpNet] = cfg.fleet.as_ref().map_or(&[], |f| f.withheld.as_slice());
        for (p, groups) in cfg.ports.iter().zip(&port_groups) {
            for &g in groups {
                members[usize::from(g)].extend(p.addresses().filter(|a| !withheld.contains(a)).copied());
            }
        }
        for (m, g) in members.iter_mut().zip(&cfg.groups) {
            m.extend(g.remote_members.iter().copied());
        }
        let lists = cfg.prefix_lists.iter().map(|l| (l.id.clone(), l.entries.clone())).collect();
        Policy { cfg, group_idx, members, lists, port_groups }
    }

    pub fn config(&self) -> &Config {
        &self.cfg
    }

    pub fn ports(&self) -> &[Port] {
        &self.cfg.ports
    }

    pub fn port_index(&self, id: &str) -> Option<PortIdx> {
        self.cfg.ports.iter().position(|p| p.id == id)
    }

    /// The port's groups, in binding order, as indices into the groups.
    pub fn port_groups(&self, port: PortIdx) -> &[u16] {
        &self.port_groups[port]
    }

    pub fn group(&self, g: u16) -> &Group {
        &self.cfg.groups[usize::from(g)]
    }

    pub fn group_index(&self, id: &str) -> Option<u16> {
        self.group_idx.get(id).copied()
    }

    /// Members of group `g`: addresses of its ports, then its remote members.
    pub fn members(&self, g: u16) -> &[IpNet] {
        &self.members[usize::from(g)]
    }

    /// The addresses a rule's remote side stands for.
    pub fn remote_nets<'a>(&'a self, remote: &'a Remote) -> &'a [IpNet] {
        match remote {
            Remote::Cidr(n) => std::slice::from_ref(n),
            Remote::Group(id) => self.group_index(id).map_or(&[], |g| self.members(g)),
            Remote::PrefixList(id) => self.lists.get(id).map_or(&[], Vec::as_slice),
        }
    }

    /// Whether `addr` is one of the addresses `remote` stands for.
    pub fn remote_contains(&self, remote: &Remote, addr: IpAddr) -> bool {
        self.remote_nets(remote).iter().any(|n| n.contains(&addr))
    }

    /// Whether the port's groups are enterprise groups (a port's groups are
    /// all of one type).
    pub fn port_is_enterprise(&self, port: PortIdx) -> bool {
        self.port_groups[port].first().is_some_and(|&g| self.group(g).kind == GroupType::Enterprise)
    }

    /// The configuration rule a `RuleRef` names.
    pub fn rule(&self, r: RuleRef) -> &Rule {
        &self.group(r.group).rules(r.direction)[usize::from(r.index)]
    }

    /// How metrics, the flow log, `trace` and `replay` name a rule:
    /// `<group>/<direction>/<id>`, or `<group>/<direction>/<index>` for a
    /// rule without an `id`.
    pub fn rule_name(&self, r: RuleRef) -> String {
        self.group(r.group).rule_name(r.direction, usize::from(r.index))
    }

    /// The identity of rule `index` of group `g` in direction `d`.
    pub fn rule_ref(&self, g: u16, d: Direction, index: usize) -> RuleRef {
        let rule = &self.group(g).rules(d)[index];
        RuleRef {
            group: g,
            direction: d,
            index: u16::try_from(index).expect("a group has fewer than 65,536 rules"),
            priority: rule.priority,
            action: rule.action,
        }
    }
}
