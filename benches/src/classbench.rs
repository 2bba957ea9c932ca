//! ClassBench rule sets and traces as sgswitch policies and packets.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};

use ipnet::{IpNet, Ipv4Net};
use sgswitch_config::{Action, Config, Direction, Group, GroupType, Host, IdRef, IntraGroup, PolicyModel, Port, PortRange, Remote, Rule};
use sgswitch_filter::Packet;

/// One ClassBench rule, as written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbRule {
    pub src: Ipv4Net,
    pub dst: Ipv4Net,
    pub sport: (u16, u16),
    pub dport: (u16, u16),
    /// `None` for `0x00/0x00` (any protocol).
    pub proto: Option<u8>,
}

impl CbRule {
    /// ClassBench's own first-match test on the five fields, written
    /// independently of sgswitch's evaluator.
    pub fn matches(&self, t: &CbPacket) -> bool {
        self.src.contains(&t.src)
            && self.dst.contains(&t.dst)
            && (self.sport.0..=self.sport.1).contains(&t.sport)
            && (self.dport.0..=self.dport.1).contains(&t.dport)
            && self.proto.is_none_or(|p| p == t.proto)
    }
}

/// One trace line: the header and the rule it was generated from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CbPacket {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Column 7: the rule the generator started from (not always the first
    /// match).
    pub from_rule: usize,
}

/// The sets and traces in the repository (gzipped): the twelve 1k ones,
/// the twelve 10k sets with three 10k traces, and `ipc1_50k`.
pub fn repo_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("data/classbench")
}

/// A folder of further sets (plain files), if `$SGSWITCH_CLASSBENCH`
/// names one: the benchmarks and tests read them beside the repository's.
pub fn data_dir() -> Option<PathBuf> {
    std::env::var_os("SGSWITCH_CLASSBENCH").map(PathBuf::from)
}

/// The traces there are: every `<set>_trace.gz` in the repository, and
/// those of [`data_dir`] beside them.
pub fn traces() -> Vec<String> {
    let names_in = |dir: PathBuf, suffix: &'static str| -> Vec<String> {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter_map(|n| n.strip_suffix(suffix).map(str::to_owned))
            .collect()
    };
    let mut names = names_in(repo_dir(), "_trace.gz");
    if let Some(dir) = data_dir() {
        names.extend(names_in(dir, "_trace"));
    }
    names.sort();
    names.dedup();
    names
}

/// The twelve families (`acl1`..`acl5`, `fw1`..`fw5`, `ipc1`, `ipc2`).
pub const FAMILIES: [&str; 12] = ["acl1", "acl2", "acl3", "acl4", "acl5", "fw1", "fw2", "fw3", "fw4", "fw5", "ipc1", "ipc2"];

fn range(s: &str) -> Result<(u16, u16), String> {
    let (a, b) = s.split_once(':').ok_or_else(|| format!("port range {s:?}"))?;
    let p = |x: &str| x.trim().parse::<u16>().map_err(|e| format!("port {x:?}: {e}"));
    Ok((p(a)?, p(b)?))
}

/// Parses a rule file.
pub fn parse_rules(text: &str) -> Result<Vec<CbRule>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<&str> = line.trim_start_matches('@').split('\t').collect();
        let err = |m: String| format!("line {}: {m}", i + 1);
        if f.len() < 5 {
            return Err(err(format!("{} fields", f.len())));
        }
        let net = |s: &str| s.trim().parse::<Ipv4Net>().map(|n| n.trunc()).map_err(|e| err(format!("{s:?}: {e}")));
        let (pv, pm) = f[4].split_once('/').ok_or_else(|| err(format!("protocol {:?}", f[4])))?;
        let hex = |s: &str| u8::from_str_radix(s.trim().trim_start_matches("0x"), 16).map_err(|e| err(format!("{s:?}: {e}")));
        let proto = if hex(pm)? == 0 { None } else { Some(hex(pv)?) };
        out.push(CbRule { src: net(f[0])?, dst: net(f[1])?, sport: range(f[2]).map_err(err)?, dport: range(f[3]).map_err(err)?, proto });
    }
    Ok(out)
}

/// Parses a trace file.
pub fn parse_trace(text: &str) -> Result<Vec<CbPacket>, String> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let f: Vec<u64> = line.split_whitespace().map(str::parse).collect::<Result<_, _>>().map_err(|e| format!("line {}: {e}", i + 1))?;
        let [src, dst, sport, dport, proto, _flags, rule] = f.as_slice() else {
            return Err(format!("line {}: {} columns", i + 1, f.len()));
        };
        let c = |v: u64, what: &str| format!("line {}: {what} {v} out of range", i + 1);
        out.push(CbPacket {
            src: Ipv4Addr::from(u32::try_from(*src).map_err(|_| c(*src, "source"))?),
            dst: Ipv4Addr::from(u32::try_from(*dst).map_err(|_| c(*dst, "destination"))?),
            sport: u16::try_from(*sport).map_err(|_| c(*sport, "source port"))?,
            dport: u16::try_from(*dport).map_err(|_| c(*dport, "destination port"))?,
            proto: u8::try_from(*proto).map_err(|_| c(*proto, "protocol"))?,
            from_rule: usize::try_from(*rule).map_err(|_| c(*rule, "rule"))?,
        });
    }
    Ok(out)
}

/// Reads the set or trace `name`: from the repository (`<name>.gz` in
/// [`repo_dir`]), else from [`data_dir`].
pub fn read(name: &str) -> Result<String, String> {
    let gz = repo_dir().join(format!("{name}.gz"));
    if gz.is_file() {
        let mut text = String::new();
        let f = std::fs::File::open(&gz).map_err(|e| format!("{}: {e}", gz.display()))?;
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(f), &mut text).map_err(|e| format!("{}: {e}", gz.display()))?;
        return Ok(text);
    }
    let Some(dir) = data_dir() else {
        return Err(format!(
            "ClassBench {name}: not in the repository ({}); set SGSWITCH_CLASSBENCH to a folder holding it",
            repo_dir().display()
        ));
    };
    let p = dir.join(name);
    std::fs::read_to_string(&p).map_err(|e| format!("{}: {e} (set SGSWITCH_CLASSBENCH to the data folder)", p.display()))
}

/// The port and group ids of the generated configuration.
pub const PORT: &str = "eni-cb";
pub const GROUP: &str = "sg-cb";

fn port_range(r: (u16, u16)) -> Option<PortRange> {
    (r != (0, 65535)).then_some(PortRange { start: r.0, end: r.1 })
}

/// The rules as the ingress rules of one port, in the `ordered` model.
pub fn config(rules: &[CbRule]) -> Config {
    let ingress = rules
        .iter()
        .map(|r| Rule {
            action: Action::Allow,
            protocol: r.proto,
            ports: port_range(r.dport),
            source_ports: port_range(r.sport),
            remote: Remote::Cidr(IpNet::V4(r.src)),
            local: (r.dst.prefix_len() > 0).then_some(IpNet::V4(r.dst)),
            priority: 1,
            ..Rule::default()
        })
        .collect();
    let group = Group {
        id: GROUP.into(),
        file: PathBuf::new(),
        name: GROUP.into(),
        description: String::new(),
        kind: GroupType::Basic,
        intra_group: IntraGroup::Drop,
        remote_members: Vec::new(),
        ingress,
        egress: Vec::new(),
    };
    let port = Port {
        id: PORT.into(),
        file: PathBuf::new(),
        interface: None,
        vhost_user: None,
        mac: None,
        ipv4: Vec::new(),
        ipv6: Vec::new(),
        security_groups: vec![IdRef { id: GROUP.into(), loc: Default::default() }],
        spoof_check: true,
        allow_blocked_egress: false,
        link_local: Vec::new(),
        conntrack_timeouts: None,
    };
    let limits = sgswitch_config::Limits { rules_per_group: u32::MAX, rules_per_port: u32::MAX, ..Default::default() };
    let host = Host { policy_model: PolicyModel::Ordered, limits, ..Host::default() };
    Config { host, groups: vec![group], ports: vec![port], ..Config::default() }
}

/// A trace line as the first packet of a flow arriving at the port.
pub fn packet(t: &CbPacket) -> Packet {
    Packet {
        direction: Direction::Ingress,
        proto: t.proto,
        remote: IpAddr::V4(t.src),
        local: IpAddr::V4(t.dst),
        remote_port: t.sport,
        local_port: t.dport,
        icmp_type: 0,
        icmp_code: 0,
    }
}

/// `n` packets drawn from random rules (inside both prefixes, both port
/// ranges, the rule's protocol or tcp/udp for a wildcard), for the sets
/// that come without a trace.
pub fn synthetic(rules: &[CbRule], n: usize, seed: u64) -> Vec<CbPacket> {
    let mut rng = crate::sgshape::Rng::new(seed);
    (0..n)
        .map(|_| {
            let i = usize::try_from(rng.below(rules.len().max(1) as u64)).expect("index");
            let Some(r) = rules.get(i) else {
                return CbPacket {
                    src: Ipv4Addr::from(rng.u32()),
                    dst: Ipv4Addr::from(rng.u32()),
                    sport: 0,
                    dport: 0,
                    proto: 6,
                    from_rule: 0,
                };
            };
            CbPacket {
                src: crate::sgshape::addr_in(&mut rng, r.src),
                dst: crate::sgshape::addr_in(&mut rng, r.dst),
                sport: rng.u16_in(r.sport.0, r.sport.1),
                dport: rng.u16_in(r.dport.0, r.dport.1),
                proto: r.proto.unwrap_or(if rng.chance(50) { 6 } else { 17 }),
                from_rule: i,
            }
        })
        .collect()
}
