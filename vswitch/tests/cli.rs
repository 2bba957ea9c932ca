//! The command-line contract of `interfaces.md`: exit statuses, the exact
//! `trace --json` shape, batch handling, and output meant for people.

use std::io::Write;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");
const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");

fn sgswitch(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run sgswitch")
}

fn stdout(o: &Output) -> String {
    String::from_utf8(o.stdout.clone()).expect("utf-8")
}

fn stderr(o: &Output) -> String {
    String::from_utf8(o.stderr.clone()).expect("utf-8")
}

/// `sgswitch <verb> examples/ <flags>`, the flags as one
/// whitespace-separated string.
fn on_examples(verb: &str, flags: &str) -> Output {
    let mut args = vec![verb, EXAMPLES];
    args.extend(flags.split_whitespace());
    sgswitch(&args)
}

fn trace(flags: &str) -> Output {
    on_examples("trace", flags)
}

#[test]
fn check_accepts_the_examples_and_summarises_them() {
    let o = sgswitch(&["check", EXAMPLES]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = stdout(&o);
    assert!(out.contains("valid, policy model \"priority\""), "{out}");
    assert!(out.contains("6 ports, 5 security groups, 1 prefix list"), "{out}");
    let web1 = out.lines().find(|l| l.starts_with("eni-web1 ")).expect("a row per port");
    assert_eq!(web1.split_whitespace().collect::<Vec<_>>(), ["eni-web1", "sg-web,sg-ssh", "7", "0", "7/1000"]);
    // The bastion's one rule references a 10-entry prefix list: it counts 10.
    let bastion = out.lines().find(|l| l.starts_with("eni-bastion ")).expect("bastion row");
    assert!(bastion.ends_with("10/1000"), "{bastion}");
    assert!(out.contains("no findings"), "{out}");
}

#[test]
fn trace_json_is_exactly_the_contract_for_a_rule_decision() {
    let o = trace("--port eni-bastion --direction ingress --proto tcp --remote 198.51.100.7 --local-port 22 --json");
    assert_eq!(o.status.code(), Some(0));
    assert_eq!(
        stdout(&o),
        "{\"verdict\":\"allow\",\"by\":\"rule\",\"rule\":{\"group\":\"sg-bastion\",\"direction\":\"ingress\",\"index\":0,\"priority\":1,\"action\":\"allow\"}}\n"
    );
}

#[test]
fn trace_json_has_a_null_rule_for_defaults_and_intra_group() {
    let o = trace("--port eni-bastion --direction ingress --proto tcp --remote 192.0.2.1 --local-port 22 --json");
    assert_eq!(stdout(&o), "{\"verdict\":\"deny\",\"by\":\"default\",\"rule\":null}\n");
    let o = trace("--port eni-web2 --direction ingress --proto udp --remote 10.0.0.11 --local-port 9000 --json");
    assert_eq!(stdout(&o), "{\"verdict\":\"allow\",\"by\":\"intra-group\",\"rule\":null}\n");
}

#[test]
fn trace_reports_a_deny_rule_with_its_priority() {
    let o = trace("--port eni-db1 --direction egress --proto tcp --remote 192.0.2.80 --remote-port 443 --json");
    assert_eq!(
        stdout(&o),
        "{\"verdict\":\"deny\",\"by\":\"rule\",\"rule\":{\"group\":\"sg-db\",\"direction\":\"egress\",\"index\":1,\"priority\":100,\"action\":\"deny\"}}\n"
    );
}

#[test]
fn trace_plain_says_in_one_line_which_rule_decided_and_why() {
    let o = trace("--port eni-web1 --direction ingress --proto tcp --remote 203.0.113.9 --remote-port 40000 --local-port 80");
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    for part in [
        "eni-web1",
        "ingress",
        "tcp 203.0.113.9:40000 -> 10.0.0.11:80",
        "DENY",
        "rule sg-web/ingress/0",
        "deny tcp 80/80 from 203.0.113.0/24",
        "priority 1",
        "abusive network",
    ] {
        assert!(out.contains(part), "missing {part:?} in {out}");
    }
}

fn batch_file(lines: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(lines.as_bytes()).expect("write");
    f
}

const BATCH: &str = r#"{"port":"eni-web1","direction":"ingress","proto":"tcp","remote":"2001:db8:7::1","remote_port":50000,"local_port":443}
{"port":"eni-web1","direction":"ingress","proto":"icmp","remote":"192.0.2.50"}

{"port":"eni-db1","direction":"ingress","proto":6,"remote":"10.0.0.11","local_port":5432}
{"port":"eni-lab2","direction":"ingress","proto":"tcp","remote":"10.0.3.41","local_port":8080}
"#;

#[test]
fn batch_gives_one_result_per_request_in_order() {
    let f = batch_file(BATCH);
    let o = trace(&format!("--batch {} --json", f.path().display()));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let lines: Vec<String> = stdout(&o).lines().map(String::from).collect();
    assert_eq!(
        lines,
        [
            r#"{"verdict":"allow","by":"rule","rule":{"group":"sg-web","direction":"ingress","index":3,"priority":1,"action":"allow"}}"#,
            r#"{"verdict":"allow","by":"rule","rule":{"group":"sg-web","direction":"ingress","index":4,"priority":10,"action":"allow"}}"#,
            r#"{"verdict":"allow","by":"rule","rule":{"group":"sg-db","direction":"ingress","index":0,"priority":1,"action":"allow"}}"#,
            r#"{"verdict":"deny","by":"default","rule":null}"#,
        ]
    );
}

#[test]
fn batch_reads_standard_input_and_aligns_plain_columns() {
    let mut child =
        Command::new(BIN).args(["trace", EXAMPLES, "--batch", "-"]).stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().expect("stdin").write_all(BATCH.as_bytes()).expect("write");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4);
    // The verdict column starts at the same place on every line.
    let cols: Vec<usize> = lines.iter().map(|l| l.find(" ALLOW ").or_else(|| l.find(" DENY ")).expect("verdict")).collect();
    assert!(cols.windows(2).all(|w| w[0] == w[1]), "{out}");
}

#[test]
fn batch_errors_name_every_bad_line_and_print_no_results() {
    let f = batch_file(
        "{\"port\":\"eni-web1\",\"direction\":\"ingress\",\"proto\":\"icmp\",\"remote\":\"192.0.2.1\"}\n{\"port\":\"eni-nope\",\"direction\":\"ingress\",\"proto\":\"icmp\",\"remote\":\"192.0.2.1\"}\nnot json\n",
    );
    let path = f.path().to_str().expect("utf-8");
    let o = trace(&format!("--batch {path} --json"));
    assert_eq!(o.status.code(), Some(1));
    assert!(o.stdout.is_empty());
    let err = stderr(&o);
    assert!(err.contains(&format!("{path}:2: no port \"eni-nope\" in the configuration")), "{err}");
    assert!(err.contains(&format!("{path}:3: ")), "{err}");
}

#[test]
fn usage_errors_exit_1_and_help_exits_0() {
    let o = sgswitch(&["trace", EXAMPLES, "--port", "eni-web1"]);
    assert_eq!(o.status.code(), Some(1), "missing required flags");
    let o = trace("--port eni-web1 --direction sideways --proto tcp --remote 1.2.3.4");
    assert_eq!(o.status.code(), Some(1), "bad direction");
    let o = sgswitch(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(1), "unknown subcommand");
    let o = sgswitch(&["--help"]);
    assert_eq!(o.status.code(), Some(0));
    assert!(stdout(&o).contains("trace"));
    let o = sgswitch(&["--version"]);
    assert_eq!(o.status.code(), Some(0));
}

#[test]
fn trace_refuses_questions_it_cannot_answer() {
    let cases: &[(&str, &str)] = &[
        ("--port eni-x --direction ingress --proto icmp --remote 1.2.3.4", "no port \"eni-x\""),
        ("--port eni-web1 --direction ingress --proto tcp --remote 1.2.3.4", "needs its destination port"),
        ("--port eni-web1 --direction ingress --proto all --remote 1.2.3.4", "\"all\" is for rules"),
        ("--port eni-web1 --direction ingress --proto icmp --remote 1.2.3.4 --local-port 1", "ports apply to tcp and udp only"),
        ("--port eni-web1 --direction ingress --proto udp --remote 1.2.3.4 --local-port 1 --icmp-type 3", "icmp and icmpv6 only"),
        ("--port eni-web1 --direction ingress --proto icmp --remote 1.2.3.4 --local fd00::11", "different IP versions"),
        ("--port eni-web1 --direction ingress --proto icmp --remote 1.2.3", "not an IP address"),
        ("--port eni-web1 --direction ingress --proto udp --remote 1.2.3.4 --local-port 65536", "out of range"),
    ];
    for (args, msg) in cases {
        let o = trace(args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(stderr(&o).contains(msg), "{args:?}: {}", stderr(&o));
        assert!(o.stdout.is_empty());
    }
}

#[test]
fn an_invalid_configuration_fails_trace_with_exit_1() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("groups")).expect("mkdir");
    std::fs::write(dir.path().join("groups/sg-a.toml"), "id = \"sg-b\"\n").expect("write");
    let o = sgswitch(&[
        "trace",
        dir.path().to_str().expect("utf-8"),
        "--port",
        "p",
        "--direction",
        "ingress",
        "--proto",
        "icmp",
        "--remote",
        "1.2.3.4",
    ]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("groups/sg-a.toml:1:6: id \"sg-b\" differs from the file name"), "{}", stderr(&o));
}

#[test]
fn check_lists_findings_that_do_not_stop_loading() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir_all(dir.path().join("groups")).expect("mkdir");
    std::fs::write(dir.path().join("groups/sg-unused.toml"), "id = \"sg-unused\"\n").expect("write");
    let o = sgswitch(&["check", dir.path().to_str().expect("utf-8")]);
    assert_eq!(o.status.code(), Some(0));
    let out = stdout(&o);
    assert!(out.contains("1 finding:"), "{out}");
    assert!(out.contains("groups/sg-unused.toml:1:1: security group sg-unused is bound to no port and referenced by no rule"), "{out}");
}

#[test]
fn trace_decides_with_the_compiled_tables_and_the_reference_alike() {
    // The default path is the compiled classifier (with the cross-check in
    // debug builds); --reference is the oracle; --cross-check runs both.
    let f = batch_file(BATCH);
    let path = f.path().display().to_string();
    let compiled = trace(&format!("--batch {path} --json"));
    let reference = trace(&format!("--batch {path} --json --reference"));
    let checked = trace(&format!("--batch {path} --json --cross-check"));
    for o in [&compiled, &reference, &checked] {
        assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    }
    assert_eq!(stdout(&compiled), stdout(&reference));
    assert_eq!(stdout(&compiled), stdout(&checked));
    assert_eq!(stdout(&compiled).lines().count(), 4);
    let both = trace(&format!("--batch {path} --reference --cross-check"));
    assert_eq!(both.status.code(), Some(1), "the two switches exclude each other");
}

fn json(o: &Output) -> serde_json::Value {
    assert_eq!(o.status.code(), Some(0), "{}", stderr(o));
    serde_json::from_str(&stdout(o)).expect("one JSON line")
}

#[test]
fn trace_names_the_datapaths_verdict_where_it_differs_from_the_rules() {
    // Blocked egress: the rules allow outbound SMTP, the host does not.
    let v = json(&trace("--port eni-web1 --direction egress --proto tcp --remote 192.0.2.1 --remote-port 25 --json"));
    assert_eq!((v["verdict"].as_str(), v["by"].as_str()), (Some("allow"), Some("default")));
    assert_eq!(
        v["datapath"],
        serde_json::json!({"action": "drop", "to": null, "reason": "blocked-egress", "port": "eni-web1", "direction": "egress"})
    );
    // Spoofing: a source address that is not the port's.
    let v = json(&trace("--port eni-web1 --direction egress --proto udp --remote 192.0.2.1 --remote-port 53 --local 10.0.0.99 --json"));
    assert_eq!(v["datapath"]["reason"], "spoof");
    // Infrastructure: a DHCP request passes a group that denies all egress.
    let v = json(&trace("--port eni-db1 --direction egress --proto udp --remote 255.255.255.255 --remote-port 67 --local-port 68 --json"));
    assert_eq!(v["verdict"], "deny");
    assert_eq!((v["datapath"]["action"].as_str(), v["datapath"]["reason"].as_str()), (Some("forward"), Some("infrastructure")));
    // VM to VM: web1's egress allows postgres to db1, and db1's ingress
    // allows it from sg-web: no difference, no key. ssh is refused by db1.
    let v = json(&trace("--port eni-web1 --direction egress --proto tcp --remote 10.0.1.21 --remote-port 5432 --json"));
    assert!(v.get("datapath").is_none(), "{v}");
    let v = json(&trace("--port eni-web1 --direction egress --proto tcp --remote 10.0.1.21 --remote-port 22 --json"));
    assert_eq!((v["datapath"]["port"].as_str(), v["datapath"]["direction"].as_str()), (Some("eni-db1"), Some("ingress")));
    // In words.
    let o = trace("--port eni-web1 --direction egress --proto tcp --remote 192.0.2.1 --remote-port 25");
    assert!(stdout(&o).contains("datapath: drop at eni-web1 egress (blocked-egress)"), "{}", stdout(&o));
}

fn diagnose(flags: &str) -> Output {
    on_examples("diagnose", flags)
}

#[test]
fn diagnose_shows_both_sides_of_a_path_with_the_deciding_rules() {
    // web1 -> db1:5432: web1's egress allows by default, sg-db's first
    // ingress rule (postgres from sg-web) allows on db1's side.
    let o = diagnose("--from eni-web1 --to eni-db1 --proto tcp --port 5432 --json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
    assert_eq!(v["verdict"], "allow");
    assert_eq!(v["from"], serde_json::json!({"port": "eni-web1", "address": "10.0.0.11"}));
    assert_eq!(v["to"], serde_json::json!({"port": "eni-db1", "address": "10.0.1.21"}));
    assert_eq!((v["proto"].as_str(), v["port"].as_u64()), (Some("tcp"), Some(5432)));
    assert_eq!(v["egress"], serde_json::json!({"verdict": "allow", "by": "default", "rule": null}));
    assert_eq!(
        v["ingress"]["rule"],
        serde_json::json!({"group": "sg-db", "direction": "ingress", "index": 0, "priority": 1, "action": "allow"})
    );
    assert_eq!(v["datapath"]["action"], "forward");

    // The other way, db1's own egress stops it (deny all but DNS).
    let o = diagnose("--from 10.0.1.21 --to eni-web1 --proto tcp --port 80");
    let out = stdout(&o);
    assert!(out.contains("DENY") && out.contains("egress of eni-db1: deny by rule sg-db/egress/1 (priority 100)"), "{out}");
    assert!(out.contains("ingress of eni-web1: allow by rule sg-web/ingress/1"), "{out}");

    // Toward the uplink: the rules allow SMTP, the host's blocked egress
    // does not, and the datapath says so.
    let o = diagnose("--from eni-web1 --to 198.51.100.7 --proto tcp --port 25");
    let out = stdout(&o);
    assert!(out.contains("DENY") && out.contains("datapath: drop (blocked-egress)"), "{out}");

    // Isolated sandboxes: no rule lets lab1 reach lab2, and intra-group
    // does not either.
    let o = diagnose("--from eni-lab1 --to eni-lab2 --proto icmp --json");
    let v: serde_json::Value = serde_json::from_str(stdout(&o).trim()).expect("one JSON line");
    assert_eq!((v["verdict"].as_str(), v["ingress"]["by"].as_str()), (Some("deny"), Some("default")), "{v}");
}

#[test]
fn diagnose_without_a_protocol_checks_the_usual_services_both_ways() {
    let o = diagnose("--from 203.0.113.9 --to eni-web1 --json");
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let paths: Vec<serde_json::Value> = stdout(&o).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let seen: Vec<(String, String, String)> = paths
        .iter()
        .map(|p| {
            let end = |e: &serde_json::Value| e["port"].as_str().or(e["address"].as_str()).unwrap_or("?").to_owned();
            (p["service"].as_str().unwrap_or("?").to_owned(), end(&p["from"]), p["verdict"].as_str().unwrap_or("?").to_owned())
        })
        .collect();
    let row = |s: &str, from: &str, v: &str| (s.to_owned(), from.to_owned(), v.to_owned());
    assert_eq!(seen.len(), 12, "six services, both ways: {seen:?}");
    // Plain http from the abusive network is denied by its own rule; https
    // and ping are allowed from anywhere; web1 may reach it on anything.
    for want in [
        row("http", "203.0.113.9", "deny"),
        row("https", "203.0.113.9", "allow"),
        row("ping", "203.0.113.9", "allow"),
        row("ssh", "203.0.113.9", "deny"),
        row("ssh", "eni-web1", "allow"),
        row("rdp", "eni-web1", "allow"),
    ] {
        assert!(seen.contains(&want), "{want:?} not in {seen:?}");
    }
    let http = paths.iter().find(|p| p["service"] == "http" && p["to"]["port"] == "eni-web1").expect("http in");
    assert_eq!(http["ingress"]["rule"]["index"], 0, "the deny rule for 203.0.113.0/24 decides: {http}");
    // The table for people: a header and a row per path.
    let o = diagnose("--from 203.0.113.9 --to eni-web1");
    assert_eq!(stdout(&o).lines().count(), 13, "{}", stdout(&o));
}

#[test]
fn diagnose_refuses_questions_it_cannot_answer() {
    for (flags, says) in [
        ("--from eni-nope --to eni-web1", "\"eni-nope\" is neither a port of the configuration nor an IP address"),
        ("--from eni-web1 --to eni-db1 --proto tcp", "tcp needs --port"),
        ("--from eni-web1 --to eni-db1 --port 22", "--port needs --proto"),
        ("--from eni-web1 --to eni-db1 --proto icmp --port 1", "ports apply to tcp and udp only"),
        ("--from 198.51.100.7 --to 203.0.113.9", "neither end is a port of this host"),
        ("--from eni-web1 --to 10.0.0.11", "both ends are the same port"),
        ("--from eni-web1 --to fd00::21 --proto icmp", "are of different IP versions"),
        ("--from eni-web1 --to eni-db1 --source-port 5", "--source-port, --icmp-type and --icmp-code need --proto"),
        (
            "--from eni-web1 --to eni-db1 --proto tcp --port 22 --icmp-type 3",
            "--icmp-type and --icmp-code apply to icmp and icmpv6 only, not tcp",
        ),
        ("--from eni-web1 --to eni-db1 --proto icmp --source-port 5", "ports apply to tcp and udp only, not icmp"),
    ] {
        let o = diagnose(flags);
        assert_eq!(o.status.code(), Some(1), "{flags}: {}", stdout(&o));
        assert!(stderr(&o).contains(says), "{flags}: {}", stderr(&o));
    }
}

#[test]
fn lint_finds_rules_that_cannot_match_duplicates_and_limits_near_their_end() {
    let dir = tempfile::tempdir().expect("tempdir");
    let write = |rel: &str, text: &str| {
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().expect("folder")).expect("mkdir");
        std::fs::write(p, text).expect("write");
    };
    write("host.toml", "[limits]\nrules_per_group = 5\ngroups_per_port = 2\n");
    write("ports/eni-a.toml", "id = \"eni-a\"\nipv4 = [\"10.0.0.1\"]\nsecurity_groups = [\"sg-a\", \"sg-b\"]\n");
    write(
        "groups/sg-a.toml",
        "id = \"sg-a\"\n\
         [[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"0.0.0.0/0\"\n\
         [[ingress]]\nprotocol = \"tcp\"\nports = \"22/22\"\nsource = \"0.0.0.0/0\"\ndescription = \"ssh again\"\n\
         [[ingress]]\nid = \"v6\"\nprotocol = \"tcp\"\nports = \"80/80\"\nsource = \"::/0\"\n\
         [[ingress]]\nprotocol = \"tcp\"\nports = \"443/443\"\nsource = \"0.0.0.0/0\"\ndestination = \"10.9.0.0/24\"\n",
    );
    write(
        "groups/sg-b.toml",
        "id = \"sg-b\"\n[[egress]]\nprotocol = \"icmpv6\"\ndestination = \"::/0\"\n[[egress]]\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n",
    );
    let d = dir.path().to_str().expect("utf-8");
    let o = sgswitch(&["lint", d]);
    assert_eq!(o.status.code(), Some(0), "findings are not failures: {}", stderr(&o));
    let out = stdout(&o);
    for want in [
        format!("{d}/groups/sg-a.toml:1: quota: sg-a counts 4 rules of rules_per_group = 5"),
        format!(
            "{d}/groups/sg-a.toml:6: duplicate: rule sg-a/ingress/1 matches what rule sg-a/ingress/0 (line 2) does, with the same action and priority"
        ),
        format!("{d}/groups/sg-a.toml:11: never-matches: rule sg-a/ingress/v6 is IPv6 only, and no port bound to sg-a has an IPv6 address"),
        format!(
            "{d}/groups/sg-a.toml:16: never-matches: rule sg-a/ingress/3: its destination 10.9.0.0/24 is outside every address of the ports bound to sg-a"
        ),
        format!("{d}/groups/sg-b.toml:2: never-matches: rule sg-b/egress/0 is IPv6 only, and no port bound to sg-b has an IPv6 address"),
        format!("{d}/ports/eni-a.toml:1: quota: eni-a is bound to 2 groups of groups_per_port = 2"),
        // Over the port's merged policy: of two equal rules one decides,
        // the other never does; an egress allow-all says what the
        // default says.
        format!(
            "{d}/groups/sg-a.toml:2: redundant: removing rule sg-a/ingress/0 changes no verdict (where it decides, rule sg-a/ingress/1 decides the same) of port eni-a"
        ),
        format!(
            "{d}/groups/sg-a.toml:6: shadowed: rule sg-a/ingress/1 never decides a packet (covered by the intra-group allow of sg-a, rule sg-a/ingress/0) of port eni-a"
        ),
        format!(
            "{d}/groups/sg-b.toml:5: redundant: removing rule sg-b/egress/1 changes no verdict (where it decides, the default decides the same) of port eni-a"
        ),
        "9 findings".to_owned(),
    ] {
        assert!(out.lines().any(|l| l == want), "missing {want:?} in:\n{out}");
    }
    let o = sgswitch(&["lint", d, "--json"]);
    let first: serde_json::Value = serde_json::from_str(stdout(&o).lines().next().expect("a line")).expect("JSON");
    assert_eq!(
        (first["kind"].as_str(), first["object"].as_str(), first["line"].as_u64()),
        (Some("quota"), Some("sg-a"), Some(1)),
        "{first}"
    );
    let o = sgswitch(&["lint", d, "--strict"]);
    assert_eq!(o.status.code(), Some(1), "--strict fails on findings");
    let o = sgswitch(&["check", d]);
    assert!(stdout(&o).contains(&format!("lint: 9 findings; `sgswitch lint {d}` lists them")), "{}", stdout(&o));
    // The examples block an abusive network's http with a deny at the
    // priority of the allow: the tie decides, and lint says so.
    let o = sgswitch(&["lint", EXAMPLES, "--strict"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stdout(&o),
        format!(
            "{EXAMPLES}/groups/sg-web.toml:7: overlap: rule sg-web/ingress/0 and rule sg-web/ingress/1 match some of the same packets with different actions; rule sg-web/ingress/0 wins by the tie at priority 1 (deny first), on ports eni-web1, eni-web2\n1 finding\n"
        )
    );
}
