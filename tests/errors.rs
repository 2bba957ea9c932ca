//! One test per class of configuration error: `sgswitch check` exits 1 and
//! prints `<dir>/<file>:<line>:<col>: <message>`, and loading reports every
//! error in one pass.

use sgswitch_config::load_dir;
use sgswitch_tests::write_dir;

fn sgswitch(args: &[&str]) -> std::process::Output {
    sgswitch_tests::run(env!("CARGO_BIN_EXE_sgswitch"), args)
}

const HOST: &str = "policy_model = \"priority\"\n";
const PORT_A: &str = "id = \"eni-a\"\nmac = \"02:00:00:00:00:01\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\"]\n";
const GROUP_A: &str = "id = \"sg-a\"\n";

fn files(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> =
        vec![("host.toml".into(), HOST.into()), ("ports/eni-a.toml".into(), PORT_A.into()), ("groups/sg-a.toml".into(), GROUP_A.into())];
    for (path, text) in extra {
        v.retain(|(p, _)| p != path);
        v.push(((*path).into(), (*text).into()));
    }
    v
}

/// Asserts `check` fails with exit 1 and prints each expected
/// `file:line:col: message` (relative to the directory), in one run.
fn assert_errors(extra: &[(&str, &str)], expected: &[&str]) {
    let dir = write_dir(&files(extra));
    let d = dir.path().to_str().expect("utf-8").to_string();
    let out = sgswitch(&["check", &d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(out.stdout.is_empty(), "nothing on stdout for an invalid configuration");
    for e in expected {
        let line = format!("{d}/{}", e.replace("{dir}", &d));
        assert!(stderr.lines().any(|l| l == line), "expected the line\n  {line}\nin stderr:\n{stderr}");
    }
    let n = expected.len();
    assert!(stderr.contains(&format!("{n} error{}; the configuration was not loaded", if n == 1 { "" } else { "s" })), "{stderr}");
    // The library reports the same errors, with structured positions.
    let errs = load_dir(dir.path()).expect_err("invalid").0;
    assert_eq!(errs.len(), n, "{errs:?}");
}

#[test]
fn port_range_start_above_end_names_file_line_and_column() {
    // The example of the contract: groups/sg-web.toml:14:9.
    let web = "id = \"sg-web\"\nname = \"prod-web-sg\"\n\n[[ingress]]\npriority = 1\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"80/80\"\nsource = \"0.0.0.0/0\"\n\n[[ingress]]\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"200/1\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(&[("groups/sg-web.toml", web)], &["groups/sg-web.toml:14:9: port range 200/1: start is above end"]);
}

#[test]
fn toml_syntax_error_names_its_position() {
    assert_errors(
        &[("groups/sg-a.toml", "id = \"sg-a\"\nname = \"unterminated\n")],
        &["groups/sg-a.toml:2:21: TOML syntax: invalid basic string, expected `\"`"],
    );
}

#[test]
fn unknown_key_is_an_error_with_a_suggestion() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprority = 5\nprotocol = \"tcp\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &["groups/sg-a.toml:3:1: unknown key `prority` in an [[ingress]] rule; did you mean `priority`?"],
    );
}

#[test]
fn unknown_key_in_host_toml_lists_the_keys() {
    assert_errors(
        &[("host.toml", "policy_model = \"priority\"\nturbo = true\n")],
        &[
            "host.toml:2:1: unknown key `turbo` in host.toml; expected one of: policy_model, on_policy_change, blocked_egress, infra_allow, dhcp_server, uplink, datapath, metrics, control, flow_log, conntrack, limits, reload, lint, history, store",
        ],
    );
}

#[test]
fn a_napi_threads_value_that_is_not_a_choice_names_the_choices() {
    assert_errors(
        &[("host.toml", "[datapath]\nnapi_threads = \"lower\"\n")],
        &["host.toml:2:16: `napi_threads` = \"lower\" is not one of \"yield\", \"leave\""],
    );
}

#[test]
fn wrong_type_says_what_was_expected_and_found() {
    let g = "id = \"sg-a\"\n[[ingress]]\npriority = \"high\"\nprotocol = \"tcp\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(&[("groups/sg-a.toml", g)], &["groups/sg-a.toml:3:12: `priority` must be an integer, not a string"]);
}

#[test]
fn file_name_must_equal_id() {
    assert_errors(
        &[("groups/sg-b.toml", "id = \"sg-bee\"\n")],
        &["groups/sg-b.toml:1:6: id \"sg-bee\" differs from the file name \"sg-b.toml\": they must be equal"],
    );
}

#[test]
fn duplicate_ids_name_both_files() {
    let dir = write_dir(&files(&[("groups/sg-a2.toml", GROUP_A)]));
    let d = dir.path().to_str().expect("utf-8");
    let out = sgswitch(&["check", d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("{d}/groups/sg-a2.toml:1:6: id \"sg-a\" differs from the file name \"sg-a2.toml\"")), "{stderr}");
    assert!(stderr.contains("duplicate security group id \"sg-a\""), "{stderr}");
    assert!(stderr.contains(&format!("{d}/groups/sg-a.toml has it too")), "{stderr}");
}

#[test]
fn port_binding_a_missing_group() {
    let p = "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-nope\"]\n";
    assert_errors(
        &[("ports/eni-a.toml", p)],
        &["ports/eni-a.toml:3:28: port binds security group \"sg-nope\", but there is no groups/sg-nope.toml"],
    );
}

#[test]
fn rule_referencing_a_missing_group_or_prefix_list() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"sg-ghost\"\n\n[[egress]]\nprotocol = \"all\"\ndestination = \"pl-ghost\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:5:10: ingress rule references security group \"sg-ghost\", but there is no groups/sg-ghost.toml",
            "groups/sg-a.toml:9:15: egress rule references prefix list \"pl-ghost\", but there is no prefix-lists/pl-ghost.toml",
        ],
    );
}

#[test]
fn bad_cidrs_are_explained() {
    let g = "id = \"sg-a\"\nremote_members = [\"10.0.0.300/24\"]\n[[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"10.0.0.1/24\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:2:19: bad CIDR in `remote_members`: \"10.0.0.300/24\" is not an IP address or CIDR (such as \"10.0.0.0/8\" or \"2001:db8::/32\")",
            "groups/sg-a.toml:6:10: bad CIDR in `source`: \"10.0.0.1/24\" has bits set after the prefix length; did you mean \"10.0.0.0/24\"?",
        ],
    );
}

#[test]
fn port_range_on_a_protocol_without_ports() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"icmp\"\nports = \"22/22\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:4:9: port range 22/22 needs protocol tcp or udp; protocol icmp has no ports (use \"-1/-1\" or leave `ports` out)",
        ],
    );
}

#[test]
fn port_out_of_range() {
    let g = "id = \"sg-a\"\n[[egress]]\nprotocol = \"udp\"\nports = \"0/70000\"\ndestination = \"0.0.0.0/0\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &["groups/sg-a.toml:4:9: port range 0/70000: ports are 1..65535 (\"-1/-1\" means every port)"],
    );
}

#[test]
fn deny_rules_under_union_are_errors() {
    let g = "id = \"sg-a\"\n[[ingress]]\naction = \"deny\"\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(
        &[("host.toml", "policy_model = \"union\"\n"), ("groups/sg-a.toml", g)],
        &["groups/sg-a.toml:3:10: deny rules are not allowed under policy_model = \"union\" (host.toml): that model is allow-only"],
    );
}

#[test]
fn enterprise_group_may_not_reference_a_group() {
    let g = "id = \"sg-a\"\ntype = \"enterprise\"\n[[ingress]]\nprotocol = \"all\"\nsource = \"sg-b\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g), ("groups/sg-b.toml", "id = \"sg-b\"\n")],
        &["groups/sg-a.toml:5:10: an enterprise group may not reference another group (\"sg-b\"); use a CIDR or a prefix list"],
    );
}

#[test]
fn enterprise_group_may_not_be_referenced() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"all\"\nsource = \"sg-ent\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g), ("groups/sg-ent.toml", "id = \"sg-ent\"\ntype = \"enterprise\"\n")],
        &["groups/sg-a.toml:4:10: ingress rule references \"sg-ent\", an enterprise group: enterprise groups cannot be referenced"],
    );
}

#[test]
fn enterprise_group_has_no_intra_group_accept() {
    assert_errors(
        &[("groups/sg-a.toml", "id = \"sg-a\"\ntype = \"enterprise\"\nintra_group = \"accept\"\n")],
        &["groups/sg-a.toml:3:15: enterprise groups have no intra-group allow: `intra_group` is fixed to \"drop\""],
    );
}

#[test]
fn port_mixing_basic_and_enterprise_groups() {
    let p = "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-ent\"]\n";
    assert_errors(
        &[("ports/eni-a.toml", p), ("groups/sg-ent.toml", "id = \"sg-ent\"\ntype = \"enterprise\"\n")],
        &["ports/eni-a.toml:3:28: port mixes basic and enterprise security groups (\"sg-ent\"): a port's groups must all be of one type"],
    );
}

#[test]
fn missing_source_of_an_ingress_rule() {
    let g = "id = \"sg-a\"\n\n[[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:3:1: missing `source` in an [[ingress]] rule: say where the traffic comes from: a CIDR (\"0.0.0.0/0\" is anywhere), an sg-… group or a pl-… prefix list",
        ],
    );
}

#[test]
fn missing_destination_of_an_egress_rule() {
    let g = "id = \"sg-a\"\n[[egress]]\nprotocol = \"tcp\"\nports = \"25/25\"\naction = \"deny\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:2:1: missing `destination` in an [[egress]] rule: say where the traffic goes: a CIDR (\"0.0.0.0/0\" is anywhere), an sg-… group or a pl-… prefix list",
        ],
    );
}

#[test]
fn limit_priority_range() {
    let g = "id = \"sg-a\"\n[[ingress]]\npriority = 101\nprotocol = \"all\"\nsource = \"0.0.0.0/0\"\n";
    assert_errors(&[("groups/sg-a.toml", g)], &["groups/sg-a.toml:3:12: `priority` = 101 is out of range: it must be 1..100"]);
}

fn rules(n: usize, remote: impl Fn(usize) -> String) -> String {
    let mut g = String::from("id = \"sg-a\"\n");
    for i in 0..n {
        g.push_str(&format!("[[ingress]]\nprotocol = \"tcp\"\nports = \"{p}/{p}\"\nsource = \"{}\"\n", remote(i), p = i + 1));
    }
    g
}

#[test]
fn limit_rules_per_group_names_the_limit() {
    let host = "[limits]\nrules_per_group = 3\n";
    let g = rules(4, |_| "0.0.0.0/0".into());
    // The 4th rule's table starts on line 2 + 3*4 = 14.
    assert_errors(
        &[("host.toml", host), ("groups/sg-a.toml", &g)],
        &[
            "groups/sg-a.toml:14:1: group sg-a counts 4 rules (ingress and egress together; a prefix-list rule counts as its max_entries), over the limit rules_per_group = 3",
        ],
    );
}

#[test]
fn limit_a_prefix_list_rule_counts_as_its_max_entries() {
    let host = "[limits]\nrules_per_group = 10\n";
    let g = rules(2, |i| if i == 1 { "pl-big".into() } else { "0.0.0.0/0".into() });
    let pl = "id = \"pl-big\"\nmax_entries = 10\nentries = [\"192.0.2.0/24\"]\n";
    assert_errors(
        &[("host.toml", host), ("groups/sg-a.toml", &g), ("prefix-lists/pl-big.toml", pl)],
        &[
            "groups/sg-a.toml:6:1: group sg-a counts 11 rules (ingress and egress together; a prefix-list rule counts as its max_entries), over the limit rules_per_group = 10",
        ],
    );
}

#[test]
fn limit_groups_per_port() {
    let host = "[limits]\ngroups_per_port = 1\n";
    let p = "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-b\"]\n";
    assert_errors(
        &[("host.toml", host), ("ports/eni-a.toml", p), ("groups/sg-b.toml", "id = \"sg-b\"\n")],
        &["ports/eni-a.toml:3:28: port has 2 security groups, over the limit groups_per_port = 1"],
    );
}

#[test]
fn limit_rules_per_port() {
    let host = "[limits]\nrules_per_port = 5\n";
    let p = "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-b\"]\n";
    let a = rules(3, |_| "0.0.0.0/0".into());
    let b = rules(3, |_| "0.0.0.0/0".into()).replace("sg-a", "sg-b");
    assert_errors(
        &[("host.toml", host), ("ports/eni-a.toml", p), ("groups/sg-a.toml", &a), ("groups/sg-b.toml", &b)],
        &["ports/eni-a.toml:3:20: port eni-a has 6 rules across its groups, over the limit rules_per_port = 5"],
    );
}

#[test]
fn limit_group_references_per_group() {
    let host = "[limits]\ngroup_refs_per_group = 1\n";
    let g = rules(2, |_| "sg-a".into());
    assert_errors(
        &[("host.toml", host), ("groups/sg-a.toml", &g)],
        &["groups/sg-a.toml:9:10: group has 2 rules that reference a group, over the limit group_refs_per_group = 1"],
    );
}

#[test]
fn limit_members_per_group() {
    let host = "[limits]\nmembers_per_group = 2\n";
    assert_errors(
        &[("host.toml", host), ("groups/sg-a.toml", "id = \"sg-a\"\nremote_members = [\"10.1.0.0/24\", \"10.2.0.0/24\"]\n")],
        &[
            "groups/sg-a.toml:1:1: group sg-a has 3 members (addresses of its ports plus remote_members), over the limit members_per_group = 2",
        ],
    );
}

#[test]
fn prefix_list_over_its_max_entries() {
    let pl = "id = \"pl-x\"\nmax_entries = 1\nentries = [\"192.0.2.0/24\", \"198.51.100.0/24\"]\n";
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"all\"\nsource = \"pl-x\"\n";
    assert_errors(
        &[("prefix-lists/pl-x.toml", pl), ("groups/sg-a.toml", g)],
        &["prefix-lists/pl-x.toml:3:28: prefix list has 2 entries, over its max_entries = 1"],
    );
}

#[test]
fn icmp_fields_need_an_icmp_protocol_and_matching_family() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"tcp\"\nports = \"1/2\"\nicmp_type = 8\nsource = \"0.0.0.0/0\"\n[[ingress]]\nprotocol = \"icmp\"\nsource = \"::/0\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g)],
        &[
            "groups/sg-a.toml:5:13: `icmp_type` needs protocol icmp or icmpv6, not tcp",
            "groups/sg-a.toml:9:10: protocol icmp is IPv4 only, but ::/0 is IPv6: use icmpv6",
        ],
    );
}

#[test]
fn port_addresses_and_mac_are_checked() {
    let p = "id = \"eni-a\"\nmac = \"02:00:00:00:00\"\nipv4 = [\"fd00::1\"]\nsecurity_groups = [\"sg-a\"]\n";
    let b = "id = \"eni-b\"\nipv4 = [\"10.0.0.0/24\"]\nsecurity_groups = [\"sg-a\"]\n";
    let c = "id = \"eni-c\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\"]\n";
    assert_errors(
        &[("ports/eni-a.toml", p), ("ports/eni-b.toml", b), ("ports/eni-c.toml", c)],
        &[
            "ports/eni-a.toml:2:7: mac \"02:00:00:00:00\" is not a MAC address such as \"02:00:00:00:00:01\"",
            "ports/eni-a.toml:3:9: \"fd00::1\" in `ipv4` is not an IPv4 address",
            "ports/eni-c.toml:1:1: address 10.0.0.1/32 overlaps 10.0.0.0/24 of port eni-b ({dir}/ports/eni-b.toml)",
        ],
    );
}

#[test]
fn every_error_of_every_file_is_reported_in_one_pass() {
    let g = "id = \"sg-a\"\n[[ingress]]\nprotocol = \"tpc\"\nsource = \"0.0.0.0/0\"\n[[ingress]]\nprotocol = \"tcp\"\nports = \"9/1\"\nsource = \"0.0.0.0/0\"\n[[egress]]\nprotocol = \"all\"\n";
    let p = "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\"]\nspoof_check = \"yes\"\n";
    assert_errors(
        &[("groups/sg-a.toml", g), ("ports/eni-a.toml", p), ("host.toml", "policy_model = \"fastest\"\n")],
        &[
            "groups/sg-a.toml:3:12: `protocol` = \"tpc\" is not all, tcp, udp, icmp, icmpv6, gre or a protocol number 0..255",
            "groups/sg-a.toml:7:9: port range 9/1: start is above end",
            "groups/sg-a.toml:9:1: missing `destination` in an [[egress]] rule: say where the traffic goes: a CIDR (\"0.0.0.0/0\" is anywhere), an sg-… group or a pl-… prefix list",
            "host.toml:1:16: `policy_model` = \"fastest\" is not one of \"priority\", \"ordered\", \"union\"",
            "ports/eni-a.toml:4:15: `spoof_check` must be true or false, not a string",
        ],
    );
}

#[test]
fn a_missing_directory_is_a_configuration_error() {
    let out = sgswitch(&["check", "/nonexistent/sgswitch-config"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/sgswitch-config: not a configuration directory"));
}

#[test]
fn flow_log_and_control_settings_are_checked() {
    let host = "[control]\nsocket = \"\"\n\n[flow_log]\nenabled = \"yes\"\nrate = 0\nsample = 2\nbatch = 4\n";
    let dir = write_dir(&files(&[("host.toml", host)]));
    let out = sgswitch(&["check", dir.path().to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for want in [
        "host.toml:2:10: `socket` = \"\" must be a path of 1 to 107 bytes (a Unix socket address)",
        "host.toml:5:11: `enabled` must be true or false, not a string",
        "host.toml:8:1: unknown key `batch` in [flow_log]",
        "host.toml:6:8: `rate` = 0 is out of range: it must be 1..1000000",
    ] {
        assert!(stderr.contains(want), "missing {want:?} in:\n{stderr}");
    }
    assert!(stderr.contains("4 errors"), "{stderr}");
}

/// `check` on a directory after `setup` changed it: exits 1 within ten
/// seconds (a FIFO must not block it) and names every `expected` part.
fn assert_path_error(setup: impl FnOnce(&std::path::Path), expected: &[&str]) {
    let dir = write_dir(&files(&[]));
    setup(dir.path());
    let d = dir.path().to_str().expect("utf-8").to_string();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["check", &d])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("check");
    let t = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if t.elapsed() > std::time::Duration::from_secs(10) {
            let _ = child.kill();
            panic!("check did not finish in 10 s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&out.stderr).replace(&d, "{dir}");
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for e in expected {
        assert!(stderr.contains(e), "expected {e:?} in:\n{stderr}");
    }
}

#[test]
fn a_dangling_or_looping_host_toml_is_named_not_replaced_by_defaults() {
    assert_path_error(
        |d| {
            std::fs::remove_file(d.join("host.toml")).expect("rm");
            std::os::unix::fs::symlink(d.join("nowhere.toml"), d.join("host.toml")).expect("symlink");
        },
        &["{dir}/host.toml: is a symbolic link to {dir}/nowhere.toml, which cannot be followed"],
    );
    assert_path_error(
        |d| {
            std::fs::remove_file(d.join("host.toml")).expect("rm");
            std::os::unix::fs::symlink(d.join("host.toml"), d.join("host.toml")).expect("symlink");
        },
        &["{dir}/host.toml: is a symbolic link to {dir}/host.toml, which cannot be followed", "in a loop"],
    );
}

#[test]
fn a_fifo_a_folder_or_a_huge_file_in_place_of_a_configuration_file_is_an_error() {
    assert_path_error(
        |d| {
            std::fs::remove_file(d.join("host.toml")).expect("rm");
            assert!(std::process::Command::new("mkfifo").arg(d.join("host.toml")).status().expect("mkfifo").success());
        },
        &["{dir}/host.toml: is not a regular file (a FIFO, socket or device)"],
    );
    assert_path_error(|d| std::fs::create_dir(d.join("ports/eni-b.toml")).expect("mkdir"), &["{dir}/ports/eni-b.toml: is a folder"]);
    assert_path_error(
        |d| {
            std::fs::write(d.join("host.toml"), "[limits]\nmax_file_bytes = 1024\n").expect("host");
            std::fs::write(d.join("groups/sg-a.toml"), format!("id = \"sg-a\"\n{}", "# padding\n".repeat(200))).expect("big");
        },
        &["{dir}/groups/sg-a.toml: is 2012 bytes, over the limit of 1024 bytes ([limits] max_file_bytes in host.toml)"],
    );
}

#[test]
fn a_ports_folder_that_is_not_a_folder_or_cannot_be_listed_is_an_error_not_zero_ports() {
    assert_path_error(
        |d| {
            std::fs::remove_dir_all(d.join("ports")).expect("rm");
            std::fs::write(d.join("ports"), "").expect("file");
        },
        &["{dir}/ports: is not a folder"],
    );
    assert_path_error(
        |d| {
            std::fs::remove_dir_all(d.join("ports")).expect("rm");
            std::os::unix::fs::symlink(d.join("elsewhere"), d.join("ports")).expect("symlink");
        },
        &["{dir}/ports: is a symbolic link to {dir}/elsewhere, which cannot be followed"],
    );
    // Unreadable: as another user (root reads anything).
    let dir = write_dir(&files(&[]));
    let d = dir.path();
    use std::os::unix::fs::PermissionsExt;
    for (p, mode) in [
        (d.to_path_buf(), 0o755),
        (d.join("host.toml"), 0o644),
        (d.join("groups"), 0o755),
        (d.join("groups/sg-a.toml"), 0o644),
        (d.join("ports"), 0o000),
    ] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let bin = env!("CARGO_BIN_EXE_sgswitch");
    // The binary must be reachable by that user too: a copy in the folder.
    let copy = d.join("sgswitch");
    std::fs::copy(bin, &copy).expect("copy the binary");
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", copy.to_str().expect("utf-8"), "check", d.to_str().expect("utf-8")])
        .output()
        .expect("setpriv");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{}/ports: cannot be listed: Permission denied", d.display())), "{stderr}");
}

#[test]
fn an_interface_name_with_a_nul_or_control_character_is_refused() {
    assert_errors(
        &[("ports/eni-a.toml", &format!("{PORT_A}interface = \"\\u0000\"\n"))],
        &["ports/eni-a.toml:5:13: interface \"\0\" is not a Linux interface name (1 to 15 characters, no '/', ':' or spaces)"],
    );
}

#[test]
fn a_capacity_the_machine_cannot_hold_is_refused_by_check_and_replay() {
    let dir = write_dir(&files(&[("host.toml", "[conntrack]\ncapacity = 268435456\n")]));
    let d = dir.path().to_str().expect("utf-8");
    let out = sgswitch(&["check", d]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("[conntrack] capacity = 268435456 needs 31.0 GiB for its connection tables, more than this machine's MemTotal"),
        "{stderr}"
    );
    let pcap = dir.path().join("empty.pcap");
    sgswitch_tests::frames::write_pcap(&pcap, &[]);
    let out = sgswitch(&["replay", d, "--pcap", pcap.to_str().expect("utf-8")]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("needs 31.0 GiB") && stderr.contains("MemAvailable"), "{stderr}");
}

#[test]
fn rule_ids_are_checked_and_unique_in_their_group() {
    let group = "id = \"sg-a\"\n\n[[ingress]]\nid = \"ssh\"\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"0.0.0.0/0\"\n\n\
                 [[egress]]\nid = \"ssh\"\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n\n\
                 [[egress]]\nid = \"42\"\nprotocol = \"all\"\ndestination = \"10.0.0.0/8\"\n\n\
                 [[egress]]\nid = \"has space\"\nprotocol = \"all\"\ndestination = \"10.0.0.0/8\"\n";
    assert_errors(
        &[("groups/sg-a.toml", group)],
        &[
            "groups/sg-a.toml:9:1: rule id \"ssh\" is already the id of the rule at line 3: rule ids are unique in a group",
            "groups/sg-a.toml:15:6: rule id \"42\": a rule id may not be a number: numbers name rules by their position",
            "groups/sg-a.toml:20:6: rule id \"has space\": a rule id is made of letters, digits, '.', '_', '-' and ':'",
        ],
    );
}

#[test]
fn require_rule_ids_lists_every_rule_without_one() {
    let group = "id = \"sg-a\"\n\n[[ingress]]\nid = \"ssh\"\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"0.0.0.0/0\"\n\n\
                 [[egress]]\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n";
    let dir = write_dir(&files(&[("host.toml", "[lint]\nrequire_rule_ids = true\n"), ("groups/sg-a.toml", group)]));
    let out = sgswitch(&["check", dir.path().to_str().expect("utf-8")]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "findings do not stop loading: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("groups/sg-a.toml:9:1: this egress rule has no `id` ([lint] require_rule_ids = true in host.toml)"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("has no `id`").count(), 1, "only the rule without an id: {stdout}");
    let lint = sgswitch(&["lint", dir.path().to_str().expect("utf-8")]);
    let lint = String::from_utf8_lossy(&lint.stdout);
    assert!(lint.contains("groups/sg-a.toml:9: missing-id: rule sg-a/egress/0 has no `id` ([lint] require_rule_ids = true)"), "{lint}");
    assert_eq!(lint.matches("missing-id").count(), 1, "{lint}");
    let out = sgswitch(&["check", write_dir(&files(&[("groups/sg-a.toml", group)])).path().to_str().expect("utf-8")]);
    assert!(!String::from_utf8_lossy(&out.stdout).contains("has no `id`"), "not asked for, not reported");
}

#[test]
fn vhost_user_ports_need_an_absolute_socket_of_their_own_and_no_interface() {
    let vhost = |extra: &str| format!("{PORT_A}kind = \"vhost-user\"\n{extra}");
    assert_errors(
        &[
            ("ports/eni-a.toml", &format!("{PORT_A}kind = \"vhost\"\n")),
            (
                "ports/eni-b.toml",
                &format!("{}socket = \"/run/b.sock\"\n", PORT_A.replace("eni-a", "eni-b").replace(":01", ":02").replace(".1\"", ".2\"")),
            ),
            (
                "ports/eni-c.toml",
                &vhost("socket = \"run/c.sock\"\n").replace("eni-a", "eni-c").replace(":01", ":03").replace(".1\"", ".3\""),
            ),
            (
                "ports/eni-d.toml",
                &vhost("socket = \"/run/d.sock\"\ninterface = \"tap-d\"\nsocket_mode = \"listen\"\n")
                    .replace("eni-a", "eni-d")
                    .replace(":01", ":04")
                    .replace(".1\"", ".4\""),
            ),
        ],
        &[
            "ports/eni-a.toml:5:8: kind \"vhost\" is not a port kind: \"tap\" (the default) or \"vhost-user\"",
            "ports/eni-b.toml:5:10: `socket` and `socket_mode` are for vhost-user ports (`kind = \"vhost-user\"`)",
            "ports/eni-c.toml:6:10: socket \"run/c.sock\" must be an absolute path of at most 107 bytes (a unix socket's limit)",
            "ports/eni-d.toml:7:13: a vhost-user port has no `interface`: the guest's device reaches the switch on its `socket`",
            "ports/eni-d.toml:8:15: socket_mode \"listen\" is not \"server\" (the switch listens) or \"client\" (the switch connects)",
        ],
    );
    // Two ports on one socket.
    assert_errors(
        &[
            ("ports/eni-a.toml", &vhost("socket = \"/run/a.sock\"\n")),
            (
                "ports/eni-e.toml",
                &vhost("socket = \"/run/a.sock\"\n").replace("eni-a", "eni-e").replace(":01", ":05").replace(".1\"", ".5\""),
            ),
        ],
        &["ports/eni-e.toml:1:1: socket /run/a.sock is also the socket of port eni-a ({dir}/ports/eni-a.toml)"],
    );
}
