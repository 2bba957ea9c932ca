//! A host's configuration joined with its fleet's: the ports every other
//! host published make their addresses members of the groups they are
//! bound to, unless two hosts claim one address.
//!
//! # Design
//! The members of a group are the addresses of every port bound to it on
//! any host. Another host's port is read from its published text, as a
//! file would be; one that does not read is left out with a warning (it is
//! its host's to mend). Two hosts claiming overlapping addresses is a
//! conflict: neither claim makes the address a member of any group until
//! one of them is withdrawn, so a host cannot widen another's groups by
//! claiming an address it does not own. Overlaps are found by sorting the
//! claims as address intervals, in O(n log n) for 10,000s of ports.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use ipnet::IpNet;

use crate::error::ConfigError;
use crate::model::{Claimed, Config, Conflict, Fleet, GroupType, Host, Overlay, Port, RemotePort, Stored};

/// Reads another host's published port as `ports/<id>.toml` would be read
/// under `host`'s limits.
///
/// # Errors
/// Its messages, named by its key.
pub fn parse_remote_port(s: &Stored, host: &Host) -> Result<Port, Vec<ConfigError>> {
    crate::load::parse_port_text(s, host)
}

/// Reads another host's published port once, when it arrives, for every
/// load after: under the default limits (its own host checked it under
/// its own), keeping what it adds to groups, or the first reason it does
/// not read.
pub fn read_remote_port(host: &str, s: &Stored) -> RemotePort {
    let read = match parse_remote_port(s, &Host::default()) {
        Ok(p) => Ok(Claimed {
            id: p.id.clone(),
            addresses: p.addresses().copied().collect(),
            groups: p.security_groups.iter().map(|g| g.id.clone()).collect(),
        }),
        Err(errs) => Err(errs.first().map_or_else(String::new, |e| format!("{}:{}: {}", e.line, e.col, e.msg))),
    };
    RemotePort { host: host.to_owned(), key: s.key.clone(), read }
}

/// An address claim: the interval it covers and who claims it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Claim {
    family: u8,
    start: u128,
    end: u128,
    net: IpNet,
    /// The index of the claiming port in [`OtherHosts::ports`].
    owner: u32,
}

/// A prefix as an interval of addresses: (family, first, last).
pub(crate) fn interval(net: &IpNet) -> (u8, u128, u128) {
    match net {
        IpNet::V4(n) => (4, u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
        IpNet::V6(n) => (6, u128::from(n.network()), u128::from(n.broadcast())),
    }
}

fn claim(net: IpNet, owner: u32) -> Claim {
    let (family, start, end) = interval(&net);
    Claim { family, start, end, net, owner }
}

/// Every other host's ports, indexed once when they change and shared by
/// every load until they change again: a group change in a fleet of
/// 10,000 ports costs each host a merge of its own ports, not a sort of
/// everyone's.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OtherHosts {
    pub ports: Vec<std::sync::Arc<RemotePort>>,
    /// The claims of the ports that read, sorted by (family, start).
    claims: Vec<Claim>,
    /// `max_end[i]`: the greatest `end` of `claims[..=i]` of its family,
    /// which bounds the search for claims that cover an address.
    max_end: Vec<u128>,
    /// Claims two other hosts make of one address.
    conflicts: Vec<Conflict>,
    /// Per group id: the unconflicted claims of the ports bound to it.
    by_group: BTreeMap<String, Vec<Claim>>,
}

impl OtherHosts {
    /// Indexes `ports` (another host's each).
    pub fn new(ports: Vec<std::sync::Arc<RemotePort>>) -> OtherHosts {
        let mut claims = Vec::new();
        for (i, r) in ports.iter().enumerate() {
            if let Ok(c) = &r.read {
                let owner = u32::try_from(i).unwrap_or(u32::MAX);
                claims.extend(c.addresses.iter().map(|a| claim(*a, owner)));
            }
        }
        claims.sort_unstable_by_key(|c| (c.family, c.start, c.end, c.owner));
        let mut max_end = Vec::with_capacity(claims.len());
        let mut conflicts = Vec::new();
        let mut withheld: BTreeSet<(u32, IpNet)> = BTreeSet::new();
        let name = |o: u32| {
            let r = &ports[o as usize];
            format!("{}/{}", r.host, r.read.as_ref().map_or("?", |c| c.id.as_str()))
        };
        let mut i = 0;
        while i < claims.len() {
            // A run of overlapping claims; more than one owner is a conflict.
            let mut j = i + 1;
            let mut end = claims[i].end;
            while j < claims.len() && claims[j].family == claims[i].family && claims[j].start <= end {
                end = end.max(claims[j].end);
                j += 1;
            }
            let run = &claims[i..j];
            let mut top = 0;
            for c in run {
                top = top.max(c.end);
                max_end.push(top);
            }
            if run.iter().any(|c| c.owner != run[0].owner) {
                withheld.extend(run.iter().map(|c| (c.owner, c.net)));
                let who: BTreeSet<String> = run.iter().map(|c| name(c.owner)).collect();
                conflicts.push(Conflict { address: widest(run.iter().map(|c| c.net)), claims: who.into_iter().collect() });
            }
            i = j;
        }
        let mut by_group: BTreeMap<String, Vec<Claim>> = BTreeMap::new();
        for c in claims.iter().filter(|c| withheld.is_empty() || !withheld.contains(&(c.owner, c.net))) {
            if let Ok(read) = &ports[c.owner as usize].read {
                for g in &read.groups {
                    by_group.entry(g.clone()).or_default().push(*c);
                }
            }
        }
        OtherHosts { ports, claims, max_end, conflicts, by_group }
    }

    /// The claims that overlap `c` (a run's `max_end` is the greatest end
    /// of the claims before, so the walk back stops at the first run that
    /// cannot reach `c`).
    fn overlapping(&self, c: &Claim) -> impl Iterator<Item = &Claim> {
        let after = self.claims.partition_point(|x| (x.family, x.start) <= (c.family, c.end));
        let mut first = after;
        while first > 0 && self.claims[first - 1].family == c.family && self.max_end[first - 1] >= c.start {
            first -= 1;
        }
        self.claims[first..after].iter().filter(move |x| x.family == c.family && x.end >= c.start && x.start <= c.end)
    }
}

/// The widest of some nets (the one with the shortest prefix).
fn widest(nets: impl Iterator<Item = IpNet>) -> IpNet {
    nets.min_by_key(|n| (n.prefix_len(), *n)).unwrap_or_default()
}

/// Adds the other hosts' ports of `o` to the groups of `cfg` (as members,
/// in `remote_members`) and says what it did.
pub(crate) fn join(cfg: &mut Config, o: &Overlay, warnings: &mut Vec<ConfigError>) -> Fleet {
    let remote = &o.remote;
    for r in remote.ports.iter() {
        if let Err(first) = &r.read {
            warnings.push(ConfigError {
                file: PathBuf::from(&r.key),
                line: 0,
                col: 0,
                msg: format!("host {}'s port does not load and is left out of its groups: {first}", r.host),
            });
        }
    }
    // This host's claims against the others'.
    let mut conflicts = remote.conflicts.clone();
    let mut withheld_local = Vec::new();
    let mut withheld_remote: BTreeSet<(u32, IpNet)> = BTreeSet::new();
    for p in &cfg.ports {
        for a in p.addresses() {
            let mine = claim(*a, u32::MAX);
            let others: Vec<&Claim> = remote.overlapping(&mine).collect();
            if others.is_empty() {
                continue;
            }
            withheld_local.push(*a);
            withheld_remote.extend(others.iter().map(|c| (c.owner, c.net)));
            let mut who: BTreeSet<String> = others
                .iter()
                .map(|c| {
                    let r = &remote.ports[c.owner as usize];
                    format!("{}/{}", r.host, r.read.as_ref().map_or("?", |x| x.id.as_str()))
                })
                .collect();
            who.insert(format!("{}/{}", o.host, p.id));
            let address = widest(others.iter().map(|c| c.net).chain([*a]));
            conflicts.push(Conflict { address, claims: who.into_iter().collect() });
        }
    }
    conflicts.sort_by(|a, b| (a.address, &a.claims).cmp(&(b.address, &b.claims)));

    // Unwithheld claims of other hosts' ports join their groups.
    let mut missing = Vec::new();
    for (g, claims) in &remote.by_group {
        let kept = |c: &&Claim| withheld_remote.is_empty() || !withheld_remote.contains(&(c.owner, c.net));
        match cfg.groups.iter_mut().find(|x| x.id == *g) {
            Some(group) if group.kind == GroupType::Basic => group.remote_members.extend(claims.iter().filter(kept).map(|c| c.net)),
            Some(_) => {}
            None => {
                let ports: BTreeSet<u32> = claims.iter().map(|c| c.owner).collect();
                let key = remote.ports[claims[0].owner as usize].key.clone();
                missing.push((g.clone(), ports.len(), key));
            }
        }
    }
    for (g, n, key) in missing {
        warnings.push(ConfigError {
            file: PathBuf::from(key),
            line: 0,
            col: 0,
            msg: format!("{n} port(s) of other hosts are bound to security group \"{g}\", which the store does not hold"),
        });
    }
    let readable = remote.ports.iter().filter(|r| r.read.is_ok()).count();
    Fleet { remote_ports: readable, conflicts, withheld: withheld_local }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::load_dir_with;

    fn stored(key: &str, text: &str) -> Stored {
        let id = key.rsplit('/').next().unwrap_or_default().to_owned();
        Stored { key: key.into(), id, text: text.into() }
    }

    fn port(id: &str, addr: &str, groups: &[&str]) -> String {
        let gs: Vec<String> = groups.iter().map(|g| format!("\"{g}\"")).collect();
        format!("id = \"{id}\"\nipv4 = [\"{addr}\"]\nsecurity_groups = [{}]\n", gs.join(", "))
    }

    /// A directory with this host's port `mine` (10.0.0.1 in sg-a).
    fn dir() -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("ports")).expect("ports");
        std::fs::write(d.path().join("ports/mine.toml"), port("mine", "10.0.0.1", &["sg-a"])).expect("port");
        d
    }

    fn overlay(remote: &[(&str, &str, String)]) -> Overlay {
        Overlay {
            groups: vec![stored("/s/groups/sg-a", "id = \"sg-a\"\n"), stored("/s/groups/sg-e", "id = \"sg-e\"\ntype = \"enterprise\"\n")],
            prefix_lists: Vec::new(),
            remote: std::sync::Arc::new(OtherHosts::new(
                remote
                    .iter()
                    .filter(|(h, _, _)| *h != "here")
                    .map(|(h, id, t)| std::sync::Arc::new(read_remote_port(h, &stored(&format!("/s/hosts/{h}/ports/{id}"), t))))
                    .collect(),
            )),
            host: "here".into(),
        }
    }

    fn members(cfg: &Config, g: &str) -> Vec<String> {
        cfg.group(g).expect("group").remote_members.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn other_hosts_ports_join_their_groups_and_this_hosts_own_are_not_read_twice() {
        let d = dir();
        let o = overlay(&[
            ("h2", "p2", port("p2", "10.0.0.2", &["sg-a"])),
            ("h3", "p3", port("p3", "10.0.0.4/31", &["sg-a", "sg-gone"])),
            // This host's own publication is its directory's business.
            ("here", "mine", port("mine", "10.0.0.9", &["sg-a"])),
        ]);
        let cfg = load_dir_with(d.path(), Some(&o)).expect("loads");
        assert_eq!(members(&cfg, "sg-a"), ["10.0.0.2/32", "10.0.0.4/31"]);
        let f = cfg.fleet.as_ref().expect("fleet");
        assert_eq!((f.remote_ports, f.conflicts.len()), (2, 0));
        let w: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert!(w.iter().any(|w| w.contains("bound to security group \"sg-gone\", which the store does not hold")), "{w:?}");
    }

    #[test]
    fn an_address_two_hosts_claim_is_no_members_and_the_conflict_names_both() {
        let d = dir();
        // h2 claims this host's own address (inside a prefix); h3 and h4 claim
        // one address between them; h5 is alone.
        let o = overlay(&[
            ("h2", "p2", port("p2", "10.0.0.0/30", &["sg-a"])),
            ("h3", "p3", port("p3", "10.0.1.7", &["sg-a"])),
            ("h4", "p4", port("p4", "10.0.1.7", &["sg-a"])),
            ("h5", "p5", port("p5", "10.0.2.1", &["sg-a"])),
        ]);
        let cfg = load_dir_with(d.path(), Some(&o)).expect("loads");
        assert_eq!(members(&cfg, "sg-a"), ["10.0.2.1/32"]);
        let f = cfg.fleet.as_ref().expect("fleet");
        let c: Vec<(String, Vec<String>)> = f.conflicts.iter().map(|c| (c.address.to_string(), c.claims.clone())).collect();
        assert_eq!(
            c,
            [
                ("10.0.0.0/30".to_owned(), vec!["h2/p2".to_owned(), "here/mine".to_owned()]),
                ("10.0.1.7/32".into(), vec!["h3/p3".into(), "h4/p4".into()])
            ]
        );
        // This host's own claim is withheld from its group's members too.
        assert_eq!(f.withheld, ["10.0.0.1/32".parse::<IpNet>().expect("net")]);
    }

    #[test]
    fn a_wide_claim_far_before_this_hosts_address_is_found() {
        let d = dir();
        // h2's /8 starts long before 10.0.0.1 and many claims lie between.
        let mut remote = vec![("h2", "wide".to_owned(), port("wide", "10.0.0.0/8", &["sg-a"]))];
        remote.extend((0..50).map(|i| ("h3", format!("n{i}"), port(&format!("n{i}"), &format!("9.0.0.{i}"), &["sg-a"]))));
        remote.push(("h4", "far".into(), port("far", "11.0.0.1", &["sg-a"])));
        let refs: Vec<(&str, &str, String)> = remote.iter().map(|(h, id, t)| (*h, id.as_str(), t.clone())).collect();
        let cfg = load_dir_with(d.path(), Some(&overlay(&refs))).expect("loads");
        let f = cfg.fleet.as_ref().expect("fleet");
        let c: Vec<(String, Vec<String>)> = f.conflicts.iter().map(|c| (c.address.to_string(), c.claims.clone())).collect();
        assert_eq!(c, [("10.0.0.0/8".to_owned(), vec!["h2/wide".to_owned(), "here/mine".to_owned()])]);
        let m = members(&cfg, "sg-a");
        assert_eq!(m.len(), 51, "{m:?}");
        assert!(!m.contains(&"10.0.0.0/8".to_owned()) && m.contains(&"11.0.0.1/32".to_owned()));
    }

    #[test]
    fn a_broken_remote_port_is_left_out_with_a_warning_and_breaks_nothing() {
        let d = dir();
        let o = overlay(&[("h2", "p2", "id = \"p2\"\nipv4 = [\"not an address\"]\nsecurity_groups = [\"sg-a\"]\n".into())]);
        let cfg = load_dir_with(d.path(), Some(&o)).expect("loads");
        assert!(members(&cfg, "sg-a").is_empty());
        let w: Vec<String> = cfg.warnings.iter().map(ToString::to_string).collect();
        assert!(w.iter().any(|w| w.starts_with("/s/hosts/h2/ports/p2") && w.contains("host h2's port does not load")), "{w:?}");
    }

    #[test]
    fn a_stored_group_is_named_by_its_key_and_must_carry_its_keys_id() {
        let d = dir();
        let mut o = overlay(&[]);
        o.groups[0] = stored("/s/groups/sg-a", "id = \"sg-b\"\n[[ingress]]\naction = \"maybe\"\n");
        let e = load_dir_with(d.path(), Some(&o)).expect_err("refused").to_string();
        assert!(e.contains("/s/groups/sg-a:1:6: id \"sg-b\" differs from the key it is stored under (\"sg-a\")"), "{e}");
        assert!(e.contains("/s/groups/sg-a:3:"), "{e}");
    }

    #[test]
    fn with_a_store_the_directorys_own_groups_are_not_read_and_that_is_said() {
        let d = dir();
        std::fs::create_dir_all(d.path().join("groups")).expect("groups");
        std::fs::write(d.path().join("groups/sg-local.toml"), "id = \"sg-local\"\n").expect("group");
        let cfg = load_dir_with(d.path(), Some(&overlay(&[]))).expect("loads");
        assert!(cfg.group("sg-local").is_none());
        assert!(cfg.warnings.iter().any(|w| w.msg.contains("with [store], groups and prefix lists come from the store")));
    }

    #[test]
    fn store_settings_are_read_with_defaults_and_their_mistakes_named() {
        let d = tempfile::tempdir().expect("tempdir");
        let host = |text: &str| {
            std::fs::write(d.path().join("host.toml"), text).expect("host.toml");
            crate::load_host(d.path())
        };
        let s = host("[store]\nkind = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]\nhost = \"h1\"\n")
            .expect("loads")
            .store
            .expect("store");
        assert_eq!((s.prefix.as_str(), s.host.as_str(), s.lease_ttl_seconds, s.timeout_ms), ("/sgswitch", "h1", 10, 2000));
        let e = host("[store]\nkind = \"consul\"\nendpoints = [\"127.0.0.1:2379\"]\nprefix = \"/x/\"\nlease_ttl_seconds = 1\ncert_file = \"c.pem\"\n")
            .expect_err("refused")
            .to_string();
        for want in [
            "host.toml:2:8: `kind` = \"consul\" is not one of \"etcd\"",
            "host.toml:3:14: endpoint \"127.0.0.1:2379\" is not of the form",
            "host.toml:4:10: `prefix` is a key prefix",
            "host.toml:5:",
            "cert_file and key_file go together",
        ] {
            assert!(e.contains(want), "{want} not in:\n{e}");
        }
    }

    #[test]
    fn a_new_store_revision_takes_the_directorys_files_from_the_last_load_until_one_changes() {
        let d = dir();
        let o = overlay(&[]);
        let path = d.path().join("ports/mine.toml");
        let mut local = None;
        let first = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(first.ports[0].ipv4[0].to_string(), "10.0.0.1/32");
        assert!(local.is_some());
        // The same size and modification time: taken from the last load.
        let when = std::fs::metadata(&path).and_then(|m| m.modified()).expect("mtime");
        std::fs::write(&path, port("mine", "10.0.0.2", &["sg-a"])).expect("port");
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(when)).expect("set mtime");
        let again = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(again.ports[0].ipv4[0].to_string(), "10.0.0.1/32");
        assert_eq!(again.sources, first.sources);
        // Touched: read again.
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(std::time::SystemTime::now())).expect("touch");
        let touched = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(touched.ports[0].ipv4[0].to_string(), "10.0.0.2/32");
        // Said unchanged (a watcher saw nothing): taken without a look,
        // once.
        std::fs::write(&path, port("mine", "10.0.0.5", &["sg-a"])).expect("port");
        local.as_mut().expect("local").unchanged();
        let told = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(told.ports[0].ipv4[0].to_string(), "10.0.0.2/32");
        let looked = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(looked.ports[0].ipv4[0].to_string(), "10.0.0.5/32");
        // A port added: read again.
        std::fs::write(d.path().join("ports/two.toml"), port("two", "10.0.0.3", &["sg-a"])).expect("port");
        let added = crate::load_dir_reusing(d.path(), Some(&o), &mut local).expect("loads");
        assert_eq!(added.ports.len(), 2);
        // Without a store the files are always read.
        std::fs::write(&path, port("mine", "10.0.0.4", &["sg-a"])).expect("port");
        std::fs::File::options().write(true).open(&path).and_then(|f| f.set_modified(when)).expect("set mtime");
        std::fs::create_dir_all(d.path().join("groups")).expect("groups");
        std::fs::write(d.path().join("groups/sg-a.toml"), "id = \"sg-a\"\n").expect("group");
        let plain = crate::load_dir_reusing(d.path(), None, &mut local).expect("loads");
        assert_eq!(plain.port("mine").expect("mine").ipv4[0].to_string(), "10.0.0.4/32");
    }

    #[test]
    fn overlapping_addresses_of_this_hosts_ports_are_each_named_on_the_later_port() {
        let d = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(d.path().join("ports")).expect("ports");
        std::fs::create_dir_all(d.path().join("groups")).expect("groups");
        std::fs::write(d.path().join("groups/sg-a.toml"), "id = \"sg-a\"\n").expect("group");
        let port2 = |id: &str, a: &str, b: &str| format!("id = \"{id}\"\nipv4 = [\"{a}\", \"{b}\"]\nsecurity_groups = [\"sg-a\"]\n");
        std::fs::write(d.path().join("ports/a.toml"), port2("a", "10.0.0.0/24", "10.9.0.1")).expect("a");
        std::fs::write(d.path().join("ports/b.toml"), port2("b", "10.0.0.5", "10.1.0.0/16")).expect("b");
        std::fs::write(d.path().join("ports/c.toml"), port2("c", "10.0.0.0/25", "10.1.2.3")).expect("c");
        std::fs::write(d.path().join("ports/e.toml"), port2("e", "10.2.0.0/16", "10.9.0.2")).expect("e");
        let e = crate::load_dir(d.path()).expect_err("overlaps").to_string();
        let lines: Vec<&str> = e.lines().filter(|l| l.contains(" overlaps ")).collect();
        let want = [
            "ports/b.toml:1:1: address 10.0.0.5/32 overlaps 10.0.0.0/24 of port a",
            "ports/c.toml:1:1: address 10.0.0.0/25 overlaps 10.0.0.0/24 of port a",
            "ports/c.toml:1:1: address 10.1.2.3/32 overlaps 10.1.0.0/16 of port b",
        ];
        assert_eq!(lines.len(), want.len(), "{e}");
        for (l, w) in lines.iter().zip(want) {
            assert!(l.contains(w), "{l} does not say {w}");
        }
    }
}
