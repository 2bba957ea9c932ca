//! `sgswitch export`, `import` and `clone`: a group's rules to and from the
//! providers' formats.
//!
//! - **Alibaba**: `DescribeSecurityGroupAttribute`'s response (the group's
//!   id, name, description and `InnerAccessPolicy`, and `Permissions`
//!   with one `Permission` per rule: `Direction`, `Policy`, `Priority`,
//!   `IpProtocol`, `PortRange`, `SourcePortRange`, the IPv4 and IPv6 CIDRs,
//!   groups and prefix lists of each side, `Description`,
//!   `SecurityGroupRuleId`). Import also takes `Permissions` as a bare
//!   list and `Priority` as a number.
//! - **Tencent**: `DescribeSecurityGroupPolicies`'s response
//!   (`SecurityGroupPolicySet` with `Ingress` and `Egress`, each policy's
//!   `PolicyIndex`, `Protocol`, `Port`, `CidrBlock`, `Ipv6CidrBlock`,
//!   `SecurityGroupId`, `Action`, `PolicyDescription`), with or without
//!   the `Response` wrapper. Tencent orders rules by position and has no
//!   priorities, local CIDRs, source ports, ICMP types or rule ids.
//! - **CSV**: one rule per row, the Alibaba permission's keys as columns
//!   (the header row names them), as the ECS console exports a group.
//!
//! Import checks what the consoles check: at most [`MAX_IMPORT`] rules, and
//! a rule whose priority is over 100 is left out with a warning. A
//! construct the target format cannot hold is an error naming the rule,
//! never silently dropped (a rule id has nowhere to go in Tencent's format:
//! that is a warning, since the rule itself is exported whole).

use std::fmt::Write;

use ipnet::IpNet;
use serde_json::{Map, Value, json};
use sgswitch_config::{Action, Direction, Group, GroupType, ICMP, ICMPV6, IntraGroup, PortRange, Remote, Rule, TCP, UDP};

/// Rules one import may bring, as the consoles allow.
pub const MAX_IMPORT: usize = 200;

/// A provider's format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Alibaba,
    Tencent,
    Csv,
}

/// What export or import made, and what the operator should know.
#[derive(Debug, Default)]
pub struct Made {
    pub text: String,
    pub warnings: Vec<String>,
    /// Rules written.
    pub rules: usize,
}

/// The CSV columns: the Alibaba permission's keys.
const COLUMNS: [&str; 16] = [
    "Direction",
    "Policy",
    "Priority",
    "IpProtocol",
    "PortRange",
    "SourcePortRange",
    "SourceCidrIp",
    "Ipv6SourceCidrIp",
    "SourceGroupId",
    "SourcePrefixListId",
    "DestCidrIp",
    "Ipv6DestCidrIp",
    "DestGroupId",
    "DestPrefixListId",
    "Description",
    "SecurityGroupRuleId",
];

fn rules_of(g: &Group) -> impl Iterator<Item = (Direction, usize, &Rule)> {
    Direction::ALL.into_iter().flat_map(move |d| g.rules(d).iter().enumerate().map(move |(i, r)| (d, i, r)))
}

fn name(g: &Group, d: Direction, i: usize, r: &Rule) -> String {
    format!("{} (line {})", g.rule_name(d, i), r.loc.line)
}

fn proto_name(p: Option<u8>) -> Option<&'static str> {
    Some(match p {
        None => "ALL",
        Some(TCP) => "TCP",
        Some(UDP) => "UDP",
        Some(ICMP) => "ICMP",
        Some(ICMPV6) => "ICMPv6",
        Some(47) => "GRE",
        Some(_) => return None,
    })
}

fn range(r: Option<PortRange>) -> String {
    r.map_or_else(|| "-1/-1".to_owned(), |r| format!("{}/{}", r.start, r.end))
}

/// Exports group `g` in `format`.
///
/// # Errors
/// Every rule (or group setting) the format cannot hold, by name.
pub fn export(g: &Group, format: Format) -> Result<Made, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    if !g.remote_members.is_empty() {
        errors.push(format!("{}: remote_members have no place in the providers' rule formats; remove them to export", g.id));
    }
    let mut made = match format {
        Format::Alibaba | Format::Csv => alibaba(g, &mut errors),
        Format::Tencent => tencent(g, &mut errors, &mut warnings),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    if format == Format::Csv {
        made.text = csv_of(&made.text);
    }
    made.warnings = warnings;
    Ok(made)
}

fn alibaba(g: &Group, errors: &mut Vec<String>) -> Made {
    let mut perms = Vec::new();
    for (d, i, r) in rules_of(g) {
        let at = name(g, d, i, r);
        let Some(proto) = proto_name(r.protocol) else {
            errors.push(format!("{at}: protocol {} has no Alibaba name (TCP, UDP, ICMP, ICMPv6, GRE or ALL)", r.protocol.unwrap_or(0)));
            continue;
        };
        if r.icmp_type.is_some() {
            errors.push(format!("{at}: Alibaba rules cannot match an ICMP type or code"));
            continue;
        }
        let mut p = Map::new();
        p.insert("Direction".into(), json!(d.as_str()));
        p.insert("Policy".into(), json!(if r.action == Action::Allow { "Accept" } else { "Drop" }));
        p.insert("Priority".into(), json!(r.priority.to_string()));
        p.insert("IpProtocol".into(), json!(proto));
        p.insert("PortRange".into(), json!(range(r.ports)));
        p.insert("SourcePortRange".into(), json!(r.source_ports.map_or(String::new(), |s| range(Some(s)))));
        let (remote_side, local_side) = if d == Direction::Ingress { ("Source", "Dest") } else { ("Dest", "Source") };
        let cidr_key = |side: &str, n: &IpNet| match n {
            IpNet::V4(_) => format!("{side}CidrIp"),
            IpNet::V6(_) => format!("Ipv6{side}CidrIp"),
        };
        match &r.remote {
            Remote::Cidr(n) => p.insert(cidr_key(remote_side, n), json!(n.to_string())),
            Remote::Group(s) => p.insert(format!("{remote_side}GroupId"), json!(s)),
            Remote::PrefixList(s) => p.insert(format!("{remote_side}PrefixListId"), json!(s)),
        };
        if let Some(l) = &r.local {
            p.insert(cidr_key(local_side, l), json!(l.to_string()));
        }
        p.insert("Description".into(), json!(r.description));
        if let Some(id) = &r.id {
            p.insert("SecurityGroupRuleId".into(), json!(id));
        }
        perms.push(Value::Object(p));
    }
    let rules = perms.len();
    let v = json!({
        "SecurityGroupId": g.id,
        "SecurityGroupName": g.name,
        "Description": g.description,
        "SecurityGroupType": if g.kind == GroupType::Enterprise { "enterprise" } else { "normal" },
        "InnerAccessPolicy": if g.intra_group == IntraGroup::Accept { "Accept" } else { "Drop" },
        "Permissions": {"Permission": perms},
    });
    Made { rules, text: serde_json::to_string_pretty(&v).expect("JSON of strings") + "\n", warnings: Vec::new() }
}

fn tencent(g: &Group, errors: &mut Vec<String>, warnings: &mut Vec<String>) -> Made {
    let mut sets = [Vec::new(), Vec::new()];
    let mut ids = 0;
    for (d, i, r) in rules_of(g) {
        let at = name(g, d, i, r);
        let mut cant = Vec::new();
        if r.priority != 1 {
            cant.push(format!("priority {} (Tencent orders rules by position and has no priorities)", r.priority));
        }
        if r.local.is_some() {
            cant.push("a local CIDR (`destination` of an ingress rule, `source` of an egress rule)".to_owned());
        }
        if r.source_ports.is_some() {
            cant.push("source ports".to_owned());
        }
        if r.icmp_type.is_some() {
            cant.push("an ICMP type or code".to_owned());
        }
        let Some(proto) = proto_name(r.protocol) else {
            errors.push(format!("{at}: protocol {} has no Tencent name (TCP, UDP, ICMP, ICMPv6, GRE or ALL)", r.protocol.unwrap_or(0)));
            continue;
        };
        if !cant.is_empty() {
            errors.push(format!("{at}: Tencent's format cannot hold {}", cant.join(", ")));
            continue;
        }
        ids += usize::from(r.id.is_some());
        let mut p = Map::new();
        let set: &mut Vec<Value> = &mut sets[usize::from(d == Direction::Egress)];
        p.insert("PolicyIndex".into(), json!(set.len()));
        p.insert("Protocol".into(), json!(proto));
        p.insert(
            "Port".into(),
            json!(r.ports.map_or_else(
                || "ALL".to_owned(),
                |p| if p.start == p.end { p.start.to_string() } else { format!("{}-{}", p.start, p.end) }
            )),
        );
        match &r.remote {
            Remote::Cidr(n @ IpNet::V4(_)) => p.insert("CidrBlock".into(), json!(n.to_string())),
            Remote::Cidr(n @ IpNet::V6(_)) => p.insert("Ipv6CidrBlock".into(), json!(n.to_string())),
            Remote::Group(s) => p.insert("SecurityGroupId".into(), json!(s)),
            Remote::PrefixList(s) => {
                errors.push(format!(
                    "{at}: prefix list {s} has no Tencent equivalent here (Tencent's address templates are its own objects)"
                ));
                continue;
            }
        };
        p.insert("Action".into(), json!(if r.action == Action::Allow { "ACCEPT" } else { "DROP" }));
        p.insert("PolicyDescription".into(), json!(r.description));
        set.push(Value::Object(p));
    }
    if ids > 0 {
        warnings.push(format!("{}: {ids} rule ids left out: Tencent's policies have none (they are named by position)", g.id));
    }
    if g.intra_group == IntraGroup::Accept && g.kind == GroupType::Basic {
        warnings.push(format!(
            "{}: intra_group = \"accept\" is not part of Tencent's policy set (Tencent allows nothing implicitly within a group; an import makes it \"drop\")",
            g.id
        ));
    }
    let [ingress, egress] = sets;
    let rules = ingress.len() + egress.len();
    let v = json!({"SecurityGroupPolicySet": {"Version": "1", "Ingress": ingress, "Egress": egress}});
    Made { rules, text: serde_json::to_string_pretty(&v).expect("JSON of strings") + "\n", warnings: Vec::new() }
}

/// The permissions of an Alibaba export as CSV.
fn csv_of(alibaba_json: &str) -> String {
    let v: Value = serde_json::from_str(alibaba_json).expect("our own JSON");
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record(COLUMNS).expect("a record to memory");
    for p in v["Permissions"]["Permission"].as_array().into_iter().flatten() {
        w.write_record(COLUMNS.map(|c| p[c].as_str().unwrap_or("").to_owned())).expect("a record to memory");
    }
    String::from_utf8(w.into_inner().expect("a buffer")).expect("UTF-8 in, UTF-8 out")
}

// ---------------------------------------------------------------- import

/// One imported rule, as a group file's `[[ingress]]`/`[[egress]]` table.
#[derive(Debug, Default)]
struct Spec {
    id: Option<String>,
    priority: Option<u64>,
    action: &'static str,
    protocol: String,
    ports: Option<String>,
    source_ports: Option<String>,
    remote: String,
    local: Option<String>,
    description: String,
}

/// The group an import makes.
#[derive(Debug, Default)]
struct Meta {
    id: String,
    name: Option<String>,
    description: String,
    enterprise: bool,
    intra_drop: bool,
}

/// Imports a provider file as the text of `groups/<id>.toml`; `id` names
/// the group (required for Tencent and CSV, whose files do not).
///
/// # Errors
/// What the file gets wrong, each with the rule's position in it.
pub fn import(text: &str, format: Format, id: Option<&str>) -> Result<(String, Made), Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();
    let (mut meta, rules) = match format {
        Format::Alibaba => {
            let v: Value = serde_json::from_str(text).map_err(|e| vec![format!("not JSON: {e}")])?;
            from_alibaba(&v, &mut errors, &mut warnings)
        }
        Format::Csv => from_csv(text, &mut errors, &mut warnings),
        Format::Tencent => {
            let v: Value = serde_json::from_str(text).map_err(|e| vec![format!("not JSON: {e}")])?;
            from_tencent(&v, &mut errors)
        }
    };
    if let Some(id) = id {
        meta.id = id.to_owned();
    }
    if meta.id.is_empty() {
        errors.push("the file names no group: give one with --id sg-…".to_owned());
    } else if !meta.id.starts_with("sg-") {
        errors.push(format!("group id {:?} must start with \"sg-\" (give another with --id)", meta.id));
    }
    if rules.len() > MAX_IMPORT {
        errors.push(format!("{} rules: one import takes at most {MAX_IMPORT}, as the consoles allow", rules.len()));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let made = Made { text: group_toml(&meta, &rules), warnings, rules: rules.len() };
    Ok((meta.id, made))
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(s) => s.trim().to_owned(),
        Value::Number(n) => n.to_string(),
        _ => String::new(),
    }
}

fn from_alibaba(v: &Value, errors: &mut Vec<String>, warnings: &mut Vec<String>) -> (Meta, Vec<(Direction, Spec)>) {
    let meta = Meta {
        id: s(v, "SecurityGroupId"),
        name: Some(s(v, "SecurityGroupName")).filter(|n| !n.is_empty()),
        description: s(v, "Description"),
        enterprise: s(v, "SecurityGroupType") == "enterprise",
        intra_drop: s(v, "InnerAccessPolicy").eq_ignore_ascii_case("drop"),
    };
    let perms = match &v["Permissions"] {
        Value::Array(a) => a.clone(),
        Value::Object(o) => o.get("Permission").and_then(Value::as_array).cloned().unwrap_or_default(),
        _ => {
            errors.push("no `Permissions` (DescribeSecurityGroupAttribute's list of rules)".to_owned());
            Vec::new()
        }
    };
    let rows: Vec<Map<String, Value>> = perms.into_iter().filter_map(|p| p.as_object().cloned()).collect();
    let rules = permissions(&rows, "Permission", errors, warnings);
    (meta, rules)
}

fn from_csv(text: &str, errors: &mut Vec<String>, warnings: &mut Vec<String>) -> (Meta, Vec<(Direction, Spec)>) {
    let mut r = csv::ReaderBuilder::new().trim(csv::Trim::All).from_reader(text.as_bytes());
    let header: Vec<String> = match r.headers() {
        Ok(h) => h.iter().map(str::to_owned).collect(),
        Err(e) => {
            errors.push(format!("CSV: {e}"));
            return (Meta::default(), Vec::new());
        }
    };
    for need in ["Direction", "Policy", "IpProtocol"] {
        if !header.iter().any(|h| h == need) {
            errors.push(format!("CSV: no `{need}` column (the header names the Alibaba permission keys: {})", COLUMNS.join(",")));
        }
    }
    let mut rows = Vec::new();
    for (i, rec) in r.records().enumerate() {
        match rec {
            Ok(rec) => rows.push(header.iter().zip(rec.iter()).map(|(h, v)| (h.clone(), Value::String(v.to_owned()))).collect()),
            Err(e) => errors.push(format!("CSV row {}: {e}", i + 2)),
        }
    }
    let rules = permissions(&rows, "row", errors, warnings);
    (Meta::default(), rules)
}

/// Alibaba permissions (from JSON or CSV rows) as rules.
fn permissions(rows: &[Map<String, Value>], what: &str, errors: &mut Vec<String>, warnings: &mut Vec<String>) -> Vec<(Direction, Spec)> {
    let mut out = Vec::new();
    for (i, p) in rows.iter().enumerate() {
        let p = Value::Object(p.clone());
        let at = if what == "row" { format!("CSV row {}", i + 2) } else { format!("Permission {i}") };
        let d = match s(&p, "Direction").to_ascii_lowercase().as_str() {
            "ingress" => Direction::Ingress,
            "egress" => Direction::Egress,
            other => {
                errors.push(format!("{at}: Direction {other:?} is not ingress or egress"));
                continue;
            }
        };
        let action = match s(&p, "Policy").to_ascii_lowercase().as_str() {
            "accept" | "" => "allow",
            "drop" => "deny",
            other => {
                errors.push(format!("{at}: Policy {other:?} is not Accept or Drop"));
                continue;
            }
        };
        let priority = match s(&p, "Priority").as_str() {
            "" => None,
            n => match n.parse::<u64>() {
                Ok(n) if n > 100 => {
                    warnings.push(format!("{at}: priority {n} is over 100: the rule is left out, as the console does"));
                    continue;
                }
                Ok(n) => Some(n),
                Err(_) => {
                    errors.push(format!("{at}: Priority {n:?} is not a number"));
                    continue;
                }
            },
        };
        let side = |pre: &str| -> Vec<String> {
            [format!("{pre}CidrIp"), format!("Ipv6{pre}CidrIp"), format!("{pre}GroupId"), format!("{pre}PrefixListId")]
                .iter()
                .map(|k| s(&p, k))
                .filter(|v| !v.is_empty())
                .collect()
        };
        let (remote, local) = if d == Direction::Ingress { (side("Source"), side("Dest")) } else { (side("Dest"), side("Source")) };
        let remote = match remote.as_slice() {
            [one] => one.clone(),
            [] => {
                errors.push(format!("{at}: no remote side (a CIDR, group or prefix list)"));
                continue;
            }
            many => {
                errors.push(format!("{at}: more than one remote side: {}", many.join(", ")));
                continue;
            }
        };
        let local = match local.as_slice() {
            [] => None,
            [one] if one.parse::<IpNet>().is_ok() || one.parse::<std::net::IpAddr>().is_ok() => Some(one.clone()),
            other => {
                errors.push(format!("{at}: the local side must be one CIDR of the instance, not {}", other.join(", ")));
                continue;
            }
        };
        let ports = |k: &str| Some(s(&p, k)).filter(|r| !r.is_empty() && r != "-1/-1");
        out.push((
            d,
            Spec {
                id: Some(s(&p, "SecurityGroupRuleId")).filter(|v| !v.is_empty()),
                priority,
                action,
                protocol: s(&p, "IpProtocol").to_ascii_lowercase(),
                ports: ports("PortRange"),
                source_ports: ports("SourcePortRange"),
                remote,
                local,
                description: s(&p, "Description"),
            },
        ));
    }
    out
}

fn from_tencent(v: &Value, errors: &mut Vec<String>) -> (Meta, Vec<(Direction, Spec)>) {
    let set = if v["Response"].is_object() { &v["Response"]["SecurityGroupPolicySet"] } else { &v["SecurityGroupPolicySet"] };
    if !set.is_object() {
        errors.push("no `SecurityGroupPolicySet` (DescribeSecurityGroupPolicies' answer)".to_owned());
    }
    let mut out = Vec::new();
    for (d, key) in [(Direction::Ingress, "Ingress"), (Direction::Egress, "Egress")] {
        let mut policies: Vec<&Value> = set[key].as_array().into_iter().flatten().collect();
        // Tencent decides by position: PolicyIndex orders them.
        policies.sort_by_key(|p| p["PolicyIndex"].as_u64().unwrap_or(u64::MAX));
        for (i, p) in policies.into_iter().enumerate() {
            let at = format!("{key} policy {i}");
            let action = match s(p, "Action").to_ascii_uppercase().as_str() {
                "ACCEPT" => "allow",
                "DROP" => "deny",
                other => {
                    errors.push(format!("{at}: Action {other:?} is not ACCEPT or DROP"));
                    continue;
                }
            };
            let remotes: Vec<String> =
                ["CidrBlock", "Ipv6CidrBlock", "SecurityGroupId"].iter().map(|k| s(p, k)).filter(|v| !v.is_empty()).collect();
            if !p["AddressTemplate"]["AddressId"].as_str().unwrap_or("").is_empty()
                || !p["AddressTemplate"]["AddressGroupId"].as_str().unwrap_or("").is_empty()
            {
                errors.push(format!("{at}: an address template has no equivalent here; write its addresses as a prefix list first"));
                continue;
            }
            if !p["ServiceTemplate"]["ServiceId"].as_str().unwrap_or("").is_empty()
                || !p["ServiceTemplate"]["ServiceGroupId"].as_str().unwrap_or("").is_empty()
            {
                errors.push(format!("{at}: a service template has no equivalent here; write its protocol and ports out"));
                continue;
            }
            let remote = match remotes.as_slice() {
                [one] => one.clone(),
                _ => {
                    errors.push(format!("{at}: exactly one of CidrBlock, Ipv6CidrBlock and SecurityGroupId is needed"));
                    continue;
                }
            };
            let protocol = s(p, "Protocol").to_ascii_lowercase();
            // "80", "80-90", "80,443" (one rule per entry, in order) or "ALL".
            let port = s(p, "Port");
            let ranges: Vec<Option<String>> = if port.is_empty() || port.eq_ignore_ascii_case("all") {
                vec![None]
            } else {
                port.split(',').map(|e| Some(e.trim().replace('-', "/"))).collect()
            };
            for r in ranges {
                out.push((
                    d,
                    Spec {
                        action,
                        protocol: protocol.clone(),
                        ports: r,
                        remote: remote.clone(),
                        description: s(p, "PolicyDescription"),
                        ..Spec::default()
                    },
                ));
            }
        }
    }
    // Tencent allows nothing implicitly between members of a group.
    (Meta { intra_drop: true, ..Meta::default() }, out)
}

fn quoted(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

/// The group file of an import.
fn group_toml(m: &Meta, rules: &[(Direction, Spec)]) -> String {
    let mut t = format!("id = {}\n", quoted(&m.id));
    if let Some(n) = &m.name {
        let _ = writeln!(t, "name = {}", quoted(n));
    }
    if !m.description.is_empty() {
        let _ = writeln!(t, "description = {}", quoted(&m.description));
    }
    if m.enterprise {
        t.push_str("type = \"enterprise\"\n");
    } else if m.intra_drop {
        t.push_str("intra_group = \"drop\"\n");
    }
    for (d, r) in rules {
        let _ = write!(t, "\n[[{}]]\n", d.as_str());
        if let Some(id) = &r.id {
            let _ = writeln!(t, "id = {}", quoted(id));
        }
        if let Some(p) = r.priority {
            let _ = writeln!(t, "priority = {p}");
        }
        let _ = writeln!(t, "action = \"{}\"", r.action);
        let _ = writeln!(t, "protocol = {}", quoted(&r.protocol));
        if let Some(p) = &r.ports {
            let _ = writeln!(t, "ports = {}", quoted(p));
        }
        if let Some(p) = &r.source_ports {
            let _ = writeln!(t, "source_ports = {}", quoted(p));
        }
        let (remote_key, local_key) = if *d == Direction::Ingress { ("source", "destination") } else { ("destination", "source") };
        let _ = writeln!(t, "{remote_key} = {}", quoted(&r.remote));
        if let Some(l) = &r.local {
            let _ = writeln!(t, "{local_key} = {}", quoted(l));
        }
        if !r.description.is_empty() {
            let _ = writeln!(t, "description = {}", quoted(&r.description));
        }
    }
    t
}

/// The text of `groups/<new_id>.toml` for a copy of `g`: its file with
/// the new id.
///
/// # Errors
/// The file cannot be read, or its `id` line is not where the group's id
/// was read from.
pub fn clone_text(g: &Group, new_id: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(&g.file).map_err(|e| format!("{}: {e}", g.file.display()))?;
    // Top-level keys come before the first table header in TOML: the
    // first `id = …` there is the group's (rule ids are inside tables).
    let mut done = false;
    let mut in_tables = false;
    let out: Vec<String> = text
        .lines()
        .map(|l| {
            let key = l.trim_start();
            in_tables |= key.starts_with('[');
            if !done && !in_tables && key.starts_with("id") && key[2..].trim_start().starts_with('=') {
                done = true;
                format!("id = {}", quoted(new_id))
            } else {
                l.to_owned()
            }
        })
        .collect();
    if !done {
        return Err(format!("{}: no top-level `id` line to rewrite", g.file.display()));
    }
    Ok(out.join("\n") + "\n")
}
