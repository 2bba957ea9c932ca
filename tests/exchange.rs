//! `export`, `import` and `clone`: round trips through each provider
//! format, the provider-shaped samples of `tests/exchange/` (written from
//! the public API documentation of Alibaba's DescribeSecurityGroupAttribute
//! and Tencent's DescribeSecurityGroupPolicies, and the ECS console's CSV),
//! the consoles' import limits, and an error for everything a format
//! cannot hold.

use std::path::Path;
use std::process::Output;

use sgswitch_config::{Group, Loc, load_dir};
use sgswitch_tests::{netns::copy_dir, write_dir};

fn sgswitch(args: &[&str]) -> Output {
    sgswitch_tests::run(env!("CARGO_BIN_EXE_sgswitch"), args)
}

fn text(o: &Output) -> (String, String) {
    (String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn sample(name: &str) -> String {
    format!("{}/../tests/exchange/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The group as loaded, without where it was read from.
fn group(dir: &Path, id: &str) -> Group {
    let cfg = load_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let mut g = cfg.groups.into_iter().find(|g| g.id == id).unwrap_or_else(|| panic!("no {id}"));
    g.file = Default::default();
    for r in g.ingress.iter_mut().chain(g.egress.iter_mut()) {
        r.loc = Loc::default();
        r.remote_loc = Loc::default();
    }
    g
}

/// A directory with a port in `sg-x` (its rules `rules`), `sg-peer` and
/// `pl-office`, so every kind of remote resolves.
fn dir_with(rules: &str, head: &str) -> tempfile::TempDir {
    write_dir(&[
        ("host.toml".into(), String::new()),
        ("ports/eni-a.toml".into(), "id = \"eni-a\"\nipv4 = [\"10.0.0.11\"]\nipv6 = [\"fd00::11\"]\nsecurity_groups = [\"sg-x\"]\n".into()),
        ("groups/sg-peer.toml".into(), "id = \"sg-peer\"\n".into()),
        ("prefix-lists/pl-office.toml".into(), "id = \"pl-office\"\nmax_entries = 5\nentries = [\"198.51.100.0/24\"]\n".into()),
        ("groups/sg-x.toml".into(), format!("id = \"sg-x\"\n{head}{rules}")),
    ])
}

/// Everything the Alibaba format holds.
const ALIBABA_RULES: &str = r#"
[[ingress]]
id = "http"
priority = 3
action = "allow"
protocol = "tcp"
ports = "80/80"
source = "0.0.0.0/0"
description = "web \"quoted\", ünïcode"

[[ingress]]
action = "deny"
protocol = "tcp"
ports = "22/22"
source_ports = "1024/65535"
source = "203.0.113.0/24"
destination = "10.0.0.11/32"

[[ingress]]
id = "v6"
priority = 100
protocol = "udp"
ports = "5000/6000"
source = "2001:db8::/32"
destination = "fd00::11/128"

[[ingress]]
protocol = "icmp"
source = "sg-peer"

[[ingress]]
protocol = "all"
source = "pl-office"

[[egress]]
id = "gre:1"
action = "deny"
protocol = "gre"
destination = "192.0.2.0/24"
source = "10.0.0.11/32"

[[egress]]
protocol = "icmpv6"
destination = "::/0"
"#;

/// Exports sg-x of `dir` in `format`, imports it into a copy under sg-x
/// again (replacing it), and returns the group before and after.
fn round_trip(dir: &Path, format: &str) -> (Group, Group, String) {
    let exported = sgswitch(&["export", dir.to_str().expect("utf-8"), "sg-x", "--format", format]);
    let (out, err) = text(&exported);
    assert_eq!(exported.status.code(), Some(0), "export {format}: {err}");
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir, copy.path());
    let file = copy.path().join(format!("sg-x.{format}"));
    std::fs::write(&file, &out).expect("write the export");
    let imported = sgswitch(&[
        "import",
        copy.path().to_str().expect("utf-8"),
        file.to_str().expect("utf-8"),
        "--format",
        format,
        "--id",
        "sg-x",
        "--replace",
    ]);
    let (_, ierr) = text(&imported);
    assert_eq!(imported.status.code(), Some(0), "import {format}: {ierr}\n{out}");
    (group(dir, "sg-x"), group(copy.path(), "sg-x"), err + &ierr)
}

#[test]
fn alibaba_and_csv_round_trips_are_exact() {
    for intra in ["", "intra_group = \"drop\"\n"] {
        let dir = dir_with(ALIBABA_RULES, &format!("name = \"the x tier\"\ndescription = \"for the round trip\"\n{intra}"));
        let (before, after, warnings) = round_trip(dir.path(), "alibaba");
        assert_eq!(before, after, "alibaba");
        assert_eq!(warnings, "", "nothing lost, nothing to say");
        // CSV holds the rules, not the group's name or description.
        let (mut before, after, _) = round_trip(dir.path(), "csv");
        before.name = before.id.clone();
        before.description = String::new();
        before.intra_group = after.intra_group;
        assert_eq!(before, after, "csv");
    }
}

#[test]
fn a_tencent_round_trip_is_exact_for_what_tencent_holds() {
    let rules = r#"
[[ingress]]
protocol = "tcp"
ports = "443/443"
source = "0.0.0.0/0"
description = "https"

[[ingress]]
action = "deny"
protocol = "udp"
source = "2001:db8::/32"

[[ingress]]
protocol = "icmp"
source = "sg-peer"

[[egress]]
protocol = "all"
destination = "0.0.0.0/0"
"#;
    let dir = dir_with(rules, "intra_group = \"drop\"\n");
    let (mut before, after, warnings) = round_trip(dir.path(), "tencent");
    before.name = before.id.clone();
    assert_eq!(before, after);
    assert_eq!(warnings, "");
    // Rule ids have nowhere to go: exported without them, with a warning.
    let dir = dir_with(&rules.replacen("[[ingress]]\n", "[[ingress]]\nid = \"https\"\n", 1), "intra_group = \"drop\"\n");
    let (_, after, warnings) = round_trip(dir.path(), "tencent");
    assert!(warnings.contains("warning: sg-x: 1 rule ids left out: Tencent's policies have none"), "{warnings}");
    assert_eq!(after.ingress[0].id, None);
}

#[test]
fn what_a_format_cannot_hold_is_an_error_naming_the_rule() {
    let dir = dir_with(
        r#"
[[ingress]]
priority = 5
protocol = "icmp"
icmp_type = 8
source = "0.0.0.0/0"

[[ingress]]
protocol = "tcp"
ports = "22/22"
source = "pl-office"
destination = "10.0.0.11/32"

[[ingress]]
protocol = "132"
source = "0.0.0.0/0"
"#,
        "remote_members = [\"10.9.0.0/24\"]\n",
    );
    let d = dir.path().to_str().expect("utf-8");
    let o = sgswitch(&["export", d, "sg-x", "--format", "alibaba"]);
    let (out, err) = text(&o);
    assert_eq!((o.status.code(), out.as_str()), (Some(1), ""), "{err}");
    for want in [
        "error: sg-x: remote_members have no place in the providers' rule formats",
        "sg-x/ingress/0 (line 4): Alibaba rules cannot match an ICMP type or code",
        "sg-x/ingress/2 (line 16): protocol 132 has no Alibaba name",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let o = sgswitch(&["export", d, "sg-x", "--format", "tencent"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    for want in [
        "sg-x/ingress/0 (line 4): Tencent's format cannot hold priority 5 (Tencent orders rules by position and has no priorities), an ICMP type or code",
        "sg-x/ingress/1 (line 10): Tencent's format cannot hold a local CIDR",
        "sg-x/ingress/2 (line 16): protocol 132 has no Tencent name",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
    let dir = dir_with("\n[[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"pl-office\"\n", "");
    let o = sgswitch(&["export", dir.path().to_str().expect("utf-8"), "sg-x", "--format", "tencent"]);
    assert!(text(&o).1.contains("prefix list pl-office has no Tencent equivalent here"), "{}", text(&o).1);
}

#[test]
fn provider_samples_import_as_their_documentation_says() {
    let dir = tempfile::tempdir().expect("tempdir");
    copy_dir(&std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples")), dir.path());
    let d = dir.path().to_str().expect("utf-8");

    // Alibaba: a priority over 100 leaves its rule out, with a warning.
    let o = sgswitch(&["import", d, &sample("alibaba-describe.json"), "--format", "alibaba"]);
    let (out, err) = text(&o);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert_eq!(out, "imported 7 rules into groups/sg-bp1gxw6bznjjvhu3a1b2.toml\n");
    assert!(err.contains("warning: ") && err.contains("Permission 5: priority 101 is over 100: the rule is left out"), "{err}");
    let g = group(dir.path(), "sg-bp1gxw6bznjjvhu3a1b2");
    assert_eq!((g.name.as_str(), g.ingress.len(), g.egress.len()), ("web-sg", 5, 2));
    assert_eq!(g.ingress[1].id.as_deref(), Some("sgr-bp1deny22fwrdia1b2"));
    assert_eq!(
        (g.ingress[1].action, g.ingress[1].local.map(|l| l.to_string())),
        (sgswitch_config::Action::Deny, Some("10.0.0.11/32".into()))
    );
    assert_eq!(g.ingress[2].priority, 5, "a Priority given as a number");
    // An import does not replace a group unless asked.
    let o = sgswitch(&["import", d, &sample("alibaba-describe.json"), "--format", "alibaba"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("sg-bp1gxw6bznjjvhu3a1b2.toml exists (--replace replaces it)"), "{}", text(&o).1);

    // Tencent: needs an id; the policy it references must exist; a port
    // list becomes one rule per port, in PolicyIndex order.
    let o = sgswitch(&["import", d, &sample("tencent-policies.json"), "--format", "tencent"]);
    assert!(text(&o).1.contains("the file names no group: give one with --id sg-"), "{}", text(&o).1);
    let o = sgswitch(&["import", d, &sample("tencent-policies.json"), "--format", "tencent", "--id", "sg-tc"]);
    let (_, err) = text(&o);
    assert_eq!(o.status.code(), Some(1));
    assert!(err.contains("would not load; nothing was written") && err.contains("references security group \"sg-app\""), "{err}");
    assert!(err.contains(d), "the message names the real directory: {err}");
    assert!(!dir.path().join("groups/sg-tc.toml").exists());
    std::fs::write(dir.path().join("groups/sg-app.toml"), "id = \"sg-app\"\n").expect("write");
    let o = sgswitch(&["import", d, &sample("tencent-policies.json"), "--format", "tencent", "--id", "sg-tc"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let g = group(dir.path(), "sg-tc");
    let ports: Vec<String> = g.ingress.iter().map(|r| r.ports.map_or("all".into(), |p| p.to_string())).collect();
    assert_eq!(ports, ["80/80", "443/443", "53/53", "3000/4000", "all"]);
    assert_eq!(g.egress.len(), 2);

    // CSV, as the console exports it.
    let o = sgswitch(&["import", d, &sample("console.csv"), "--format", "csv", "--id", "sg-csv"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let g = group(dir.path(), "sg-csv");
    assert_eq!(g.ingress[0].description, "ssh, from the office");
    assert_eq!(g.egress[0].id.as_deref(), Some("sgr-ntp"));
    // What the imported group decides, through trace.
    let o = sgswitch(&["check", d]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
}

#[test]
fn an_import_takes_at_most_200_rules() {
    let rules: Vec<String> = (0..201)
        .map(|i| format!("{{\"Direction\":\"ingress\",\"Policy\":\"Accept\",\"Priority\":\"1\",\"IpProtocol\":\"TCP\",\"PortRange\":\"{p}/{p}\",\"SourceCidrIp\":\"0.0.0.0/0\"}}", p = i + 1))
        .collect();
    let file = tempfile::NamedTempFile::new().expect("tempfile");
    std::fs::write(file.path(), format!("{{\"SecurityGroupId\":\"sg-big\",\"Permissions\":{{\"Permission\":[{}]}}}}", rules.join(",")))
        .expect("write");
    let dir = dir_with("", "");
    let o = sgswitch(&["import", dir.path().to_str().expect("utf-8"), file.path().to_str().expect("utf-8"), "--format", "alibaba"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).1.contains("201 rules: one import takes at most 200, as the consoles allow"), "{}", text(&o).1);
}

#[test]
fn clone_copies_a_group_under_a_new_id() {
    let dir = dir_with(ALIBABA_RULES, "name = \"the x tier\"\n");
    let d = dir.path().to_str().expect("utf-8");
    let o = sgswitch(&["clone", d, "sg-x", "sg-y"]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o).1);
    let (x, mut y) = (group(dir.path(), "sg-x"), group(dir.path(), "sg-y"));
    y.id = x.id.clone();
    assert_eq!(x, y, "the same group but its id");
    let o = sgswitch(&["clone", d, "sg-x", "sg-y"]);
    assert!(text(&o).1.contains("sg-y.toml exists"), "{}", text(&o).1);
    let o = sgswitch(&["clone", d, "sg-nope", "sg-z"]);
    assert!(text(&o).1.contains("no group \"sg-nope\""), "{}", text(&o).1);
}
