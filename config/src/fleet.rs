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
use crate::model::{Config, Conflict, Fleet, GroupType, Host, Overlay, Port, Stored};

/// Reads another host's published port as `ports/<id>.toml` would be read
/// under `host`'s limits.
///
/// # Errors
/// Its messages, named by its key.
pub fn parse_remote_port(s: &Stored, host: &Host) -> Result<Port, Vec<ConfigError>> {
    crate::load::parse_port_text(s, host)
}

/// An address claim: the interval it covers and who claims it.
struct Claim {
    family: u8,
    start: u128,
    end: u128,
    net: IpNet,
    owner: usize,
}

fn claim(net: IpNet, owner: usize) -> Claim {
    let (family, start, end) = match net {
        IpNet::V4(n) => (4, u128::from(u32::from(n.network())), u128::from(u32::from(n.broadcast()))),
        IpNet::V6(n) => (6, u128::from(n.network()), u128::from(n.broadcast())),
    };
    Claim { family, start, end, net, owner }
}

/// Adds the other hosts' ports of `o` to the groups of `cfg` (as members,
/// in `remote_members`) and says what it did.
pub(crate) fn join(cfg: &mut Config, o: &Overlay, warnings: &mut Vec<ConfigError>) -> Fleet {
    // Owners: this host's ports first, then every other host's that reads.
    let mut owners: Vec<String> = cfg.ports.iter().map(|p| format!("{}/{}", o.host, p.id)).collect();
    let local = owners.len();
    let mut remote: Vec<(PathBuf, Port)> = Vec::new();
    for (host, s) in o.remote_ports.iter().filter(|(h, _)| *h != o.host) {
        match parse_remote_port(s, &cfg.host) {
            Ok(p) => {
                owners.push(format!("{host}/{}", p.id));
                remote.push((PathBuf::from(&s.key), p));
            }
            Err(errs) => {
                let first = errs.first().map_or_else(String::new, |e| format!(": {}:{}: {}", e.line, e.col, e.msg));
                warnings.push(ConfigError {
                    file: PathBuf::from(&s.key),
                    line: 0,
                    col: 0,
                    msg: format!("host {host}'s port does not load and is left out of its groups{first}"),
                });
            }
        }
    }
    let mut claims: Vec<Claim> = cfg.ports.iter().enumerate().flat_map(|(i, p)| p.addresses().map(move |a| claim(*a, i))).collect();
    for (i, (_, p)) in remote.iter().enumerate() {
        claims.extend(p.addresses().map(|a| claim(*a, local + i)));
    }
    claims.sort_by_key(|c| (c.family, c.start, c.end));

    // Runs of overlapping claims; a run with more than one owner is a
    // conflict, and all its claims are withheld.
    let mut withheld: BTreeSet<(usize, IpNet)> = BTreeSet::new();
    let mut conflicts = Vec::new();
    let mut i = 0;
    while i < claims.len() {
        let mut j = i + 1;
        let mut end = claims[i].end;
        while j < claims.len() && claims[j].family == claims[i].family && claims[j].start <= end {
            end = end.max(claims[j].end);
            j += 1;
        }
        let run = &claims[i..j];
        let who: BTreeSet<usize> = run.iter().map(|c| c.owner).collect();
        if who.len() > 1 {
            withheld.extend(run.iter().map(|c| (c.owner, c.net)));
            let claims: Vec<String> = who.iter().map(|&w| owners[w].clone()).collect();
            conflicts.push(Conflict { address: run[0].net, claims });
        }
        i = j;
    }

    // Unwithheld claims of other hosts' ports join their groups.
    let index: BTreeMap<String, usize> = cfg.groups.iter().enumerate().map(|(i, g)| (g.id.clone(), i)).collect();
    let mut missing: BTreeMap<String, (usize, PathBuf)> = BTreeMap::new();
    for (k, (key, p)) in remote.iter().enumerate() {
        let owner = local + k;
        let addrs: Vec<IpNet> = p.addresses().filter(|a| !withheld.contains(&(owner, **a))).copied().collect();
        for g in &p.security_groups {
            match index.get(g.id.as_str()) {
                Some(&gi) if cfg.groups[gi].kind == GroupType::Basic => cfg.groups[gi].remote_members.extend(addrs.iter().copied()),
                Some(_) => {}
                None => missing.entry(g.id.clone()).or_insert((0, key.clone())).0 += 1,
            }
        }
    }
    for (g, (n, key)) in missing {
        warnings.push(ConfigError {
            file: key,
            line: 0,
            col: 0,
            msg: format!("{n} port(s) of other hosts are bound to security group \"{g}\", which the store does not hold"),
        });
    }
    let withheld_local: Vec<IpNet> = withheld.iter().filter(|(o, _)| *o < local).map(|(_, a)| *a).collect();
    Fleet { remote_ports: remote.len(), conflicts, withheld: withheld_local }
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
            remote_ports: remote.iter().map(|(h, id, t)| ((*h).to_owned(), stored(&format!("/s/hosts/{h}/ports/{id}"), t))).collect(),
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
                ("10.0.0.0/30".to_owned(), vec!["here/mine".to_owned(), "h2/p2".to_owned()]),
                ("10.0.1.7/32".into(), vec!["h3/p3".into(), "h4/p4".into()])
            ]
        );
        // This host's own claim is withheld from its group's members too.
        assert_eq!(f.withheld, ["10.0.0.1/32".parse::<IpNet>().expect("net")]);
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
}
