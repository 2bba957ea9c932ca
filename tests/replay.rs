//! The pipeline through `sgswitch replay` on captures built here: the
//! conformance table with real frames, stateful sequences, related ICMP,
//! fragments, anti-spoofing, infrastructure traffic, blocked egress,
//! VM-to-VM traffic and malformed frames.

use std::net::IpAddr;

use serde_json::Value;
use sgswitch_config::{Direction, load_dir};
use sgswitch_filter::Policy;
use sgswitch_tests::frames::{self, BROADCAST, Ends, Mac, UPLINK_MAC};
use sgswitch_tests::{Expected, conformance_cases, infra, write_dir};

fn sgswitch(args: &[&str]) -> std::process::Output {
    sgswitch_tests::run(env!("CARGO_BIN_EXE_sgswitch"), args)
}

/// Replays `frames` (time in ms, frame) against the configuration in
/// `dir`; one JSON object per frame.
fn replay(dir: &std::path::Path, frames: &[(u64, Vec<u8>)]) -> Vec<Value> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let pcap = tmp.path().join("in.pcap");
    frames::write_pcap(&pcap, frames);
    let out = sgswitch(&["replay", dir.to_str().expect("utf-8"), "--pcap", pcap.to_str().expect("utf-8"), "--json"]);
    assert!(out.status.success(), "replay failed: {}", String::from_utf8_lossy(&out.stderr));
    let lines: Vec<Value> =
        String::from_utf8(out.stdout).expect("utf-8").lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    assert_eq!(lines.len(), frames.len(), "one line per packet");
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l["index"], i, "lines in capture order");
    }
    lines
}

/// Frames one second apart.
fn timed(frames: Vec<Vec<u8>>) -> Vec<(u64, Vec<u8>)> {
    frames.into_iter().enumerate().map(|(i, f)| (1000 * i as u64, f)).collect()
}

/// (action, to, reason) of each line.
fn summary(lines: &[Value]) -> Vec<(String, String, String)> {
    lines
        .iter()
        .map(|l| {
            let s = |k: &str| l[k].as_str().unwrap_or("null").to_owned();
            (s("action"), s("to"), s("reason"))
        })
        .collect()
}

fn row(action: &str, to: &str, reason: &str) -> (String, String, String) {
    (action.into(), to.into(), reason.into())
}

fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

// ---------------------------------------------------------------- conformance

fn port_mac(i: usize) -> Mac {
    [0x02, 0, 0, 0, 0x01, u8::try_from(i).expect("few ports")]
}

/// Every row of the conformance table, as a real frame from the uplink
/// (ingress) or from the port (egress), through the whole pipeline.
#[test]
fn conformance_rows_with_real_frames() {
    let mut fails = Vec::new();
    let mut rows = 0;
    for (file, case) in conformance_cases() {
        let mut files = case.files();
        for (path, text) in &mut files {
            if path == "host.toml" {
                // Host-level blocked egress is not what the table is about.
                text.insert_str(0, "blocked_egress = []\n");
            }
        }
        let port_ids: Vec<String> =
            files.iter().filter(|(p, _)| p.starts_with("ports/")).map(|(p, _)| p[6..p.len() - 5].to_owned()).collect();
        for (path, text) in &mut files {
            if let Some(i) = port_ids.iter().position(|id| *path == format!("ports/{id}.toml")) {
                let [a, b, c, d, e, f] = port_mac(i);
                // The table's local addresses are not always the port's own.
                text.push_str(&format!("mac = \"{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}\"\nspoof_check = false\n"));
            }
        }
        let dir = write_dir(&files);
        let policy = Policy::new(load_dir(dir.path()).unwrap_or_else(|e| panic!("{file}: {}: {e}", case.name)));
        let mut frames_in = Vec::new();
        for p in &case.packets {
            let q = p.query();
            let (proto, direction) = (q.proto, q.direction);
            let (_, pkt) = policy.resolve(&q).expect("resolvable packet");
            let mac = port_mac(port_ids.iter().position(|id| *id == p.port).expect("port"));
            let (e, sport, dport) = match direction {
                Direction::Ingress => {
                    (Ends { src_mac: UPLINK_MAC, dst_mac: mac, src: pkt.remote, dst: pkt.local }, pkt.remote_port, pkt.local_port)
                }
                Direction::Egress => {
                    (Ends { src_mac: mac, dst_mac: UPLINK_MAC, src: pkt.local, dst: pkt.remote }, pkt.local_port, pkt.remote_port)
                }
            };
            let frame = match proto {
                6 => frames::tcp(&e, sport, dport, "S", 1, 0, b""),
                17 => frames::udp(&e, sport, dport, b"x"),
                1 | 58 if matches!(pkt.icmp_type, 8 | 0 | 128 | 129) => {
                    let request = matches!(pkt.icmp_type, 8 | 128);
                    frames::echo(&e, 7, 1, request)
                }
                1 | 58 => frames::icmp(&e, pkt.icmp_type, pkt.icmp_code, [0; 4], b""),
                other => frames::raw_ip(&e, other, b"payload!"),
            };
            frames_in.push(frame);
        }
        // An hour apart: every flow has expired before the next packet.
        let timed: Vec<(u64, Vec<u8>)> = frames_in.into_iter().enumerate().map(|(i, f)| (3_600_000 * i as u64, f)).collect();
        let lines = replay(dir.path(), &timed);
        for (i, (p, l)) in case.packets.iter().zip(&lines).enumerate() {
            rows += 1;
            let want = Expected::parse(&p.expect);
            let want_action = if want.verdict == "allow" { "forward" } else { "drop" };
            let want_reason = match &want.rule {
                Some((g, d, n)) => format!("rule:{g}/{d}/{n}"),
                None => want.by.clone(),
            };
            if l["action"] != want_action || l["reason"] != want_reason.as_str() {
                fails.push(format!("{file}: {:?} packet {i}: want {want_action} {want_reason}, got {l}", case.name));
            }
        }
    }
    assert!(rows >= 140, "only {rows} rows ran");
    assert!(fails.is_empty(), "{} of {rows} rows differ:\n{}", fails.len(), fails.join("\n"));
}

// ---------------------------------------------------------------- a host

const WEB: Mac = [2, 0, 0, 0, 0, 0x11];
const WEB2: Mac = [2, 0, 0, 0, 0, 0x12];
const DB: Mac = [2, 0, 0, 0, 0, 0x21];

/// web1 and web2 share sg-web (intra-group accept; ssh and http in; all
/// egress allowed except to 203.0.113.0/24); db has sg-db (postgres from
/// sg-web only, egress deny-all: replies pass by state only); web2 may send
/// mail.
fn host(extra_host: &str) -> tempfile::TempDir {
    write_dir(&[
        ("host.toml".into(), extra_host.into()),
        (
            "ports/eni-web1.toml".into(),
            "id = \"eni-web1\"\nmac = \"02:00:00:00:00:11\"\nipv4 = [\"10.0.0.11\"]\nipv6 = [\"fd00::11\"]\nsecurity_groups = [\"sg-web\"]\n".into(),
        ),
        (
            "ports/eni-web2.toml".into(),
            "id = \"eni-web2\"\nmac = \"02:00:00:00:00:12\"\nipv4 = [\"10.0.0.12\"]\nsecurity_groups = [\"sg-web\"]\nallow_blocked_egress = true\n".into(),
        ),
        (
            "ports/eni-db1.toml".into(),
            "id = \"eni-db1\"\nmac = \"02:00:00:00:00:21\"\nipv4 = [\"10.0.1.21\"]\nipv6 = [\"fd00:1::21\"]\nsecurity_groups = [\"sg-db\"]\n".into(),
        ),
        (
            "groups/sg-web.toml".into(),
            r#"id = "sg-web"
[[ingress]]
protocol = "tcp"
ports = "22/22"
source = "198.51.100.0/24"
[[ingress]]
protocol = "tcp"
ports = "80/80"
source = "0.0.0.0/0"
[[egress]]
action = "deny"
protocol = "all"
destination = "203.0.113.0/24"
[[egress]]
protocol = "all"
destination = "0.0.0.0/0"
[[egress]]
protocol = "all"
destination = "::/0"
"#
            .into(),
        ),
        (
            "groups/sg-db.toml".into(),
            r#"id = "sg-db"
intra_group = "drop"
[[ingress]]
protocol = "tcp"
ports = "5432/5432"
source = "sg-web"
[[ingress]]
protocol = "udp"
ports = "53/53"
source = "10.0.0.0/8"
[[egress]]
action = "deny"
protocol = "all"
destination = "0.0.0.0/0"
[[egress]]
action = "deny"
protocol = "all"
destination = "::/0"
"#
            .into(),
        ),
    ])
}

fn from_uplink(dst_mac: Mac, src: &str, dst: &str) -> Ends {
    Ends { src_mac: UPLINK_MAC, dst_mac, src: ip(src), dst: ip(dst) }
}

fn from_vm(src_mac: Mac, src: &str, dst_mac: Mac, dst: &str) -> Ends {
    Ends { src_mac, dst_mac, src: ip(src), dst: ip(dst) }
}

#[test]
fn inbound_tcp_handshake_passes_and_replies_go_out_through_an_egress_deny_all() {
    let dir = host("");
    let c = from_uplink(DB, "10.0.0.11", "10.0.1.21");
    // db1 may only be reached from sg-web members; 10.0.0.11 is web1,
    // arriving from the uplink (as if from another host).
    let s = c.reversed();
    let lines = replay(
        dir.path(),
        &timed(vec![
            frames::tcp(&c, 40000, 5432, "S", 100, 0, b""),
            frames::tcp(&s, 5432, 40000, "SA", 900, 101, b""),
            frames::tcp(&c, 40000, 5432, "A", 101, 901, b""),
            frames::tcp(&c, 40000, 5432, "PA", 101, 901, b"query"),
            frames::tcp(&s, 5432, 40000, "PA", 901, 106, b"rows"),
            // The same server starting a connection out: egress deny-all.
            frames::tcp(&s, 5433, 40001, "S", 5000, 0, b""),
            // A bare SYN-ACK nobody asked for: invalid.
            frames::tcp(&c, 40002, 5432, "SA", 1, 1, b""),
            // From a non-member: denied by default.
            frames::tcp(&from_uplink(DB, "192.0.2.9", "10.0.1.21"), 40000, 5432, "S", 1, 0, b""),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "eni-db1", "rule:sg-db/ingress/0"),
            row("forward", "uplink", "established"),
            row("forward", "eni-db1", "established"),
            row("forward", "eni-db1", "established"),
            row("forward", "uplink", "established"),
            row("drop", "null", "rule:sg-db/egress/0"),
            row("drop", "null", "invalid"),
            row("drop", "null", "default"),
        ]
    );
    assert_eq!(lines[1]["port"], "eni-db1");
    assert_eq!(lines[1]["direction"], "egress");
}

#[test]
fn udp_request_response_and_icmp_echo_are_tracked_both_ways() {
    let dir = host("");
    let q = from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.53");
    let lines = replay(
        dir.path(),
        &timed(vec![
            frames::udp(&q, 33000, 53, b"query"),
            frames::udp(&q.reversed(), 53, 33000, b"answer"),
            // Another source port of the same server: a new flow, denied.
            frames::udp(&q.reversed(), 54, 33000, b"spoofed answer"),
            frames::echo(&q, 9, 1, true),
            frames::echo(&q.reversed(), 9, 1, false),
            // An echo reply for an id never asked: judged as new.
            frames::echo(&q.reversed(), 10, 1, false),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "uplink", "rule:sg-web/egress/1"),
            row("forward", "eni-web1", "established"),
            row("drop", "null", "default"),
            row("forward", "uplink", "rule:sg-web/egress/1"),
            row("forward", "eni-web1", "established"),
            row("drop", "null", "default"),
        ]
    );
}

#[test]
fn icmp_errors_about_tracked_flows_are_related_others_are_judged() {
    let dir = host("");
    let q = from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.53");
    let query = frames::udp(&q, 33000, 53, b"query");
    let router = from_uplink(WEB, "192.0.2.1", "10.0.0.11");
    let unrelated = frames::udp(&q, 33001, 53, b"never sent");
    let q6 = from_vm(WEB, "fd00::11", UPLINK_MAC, "2001:db8::53");
    let query6 = frames::udp(&q6, 33000, 53, &[0u8; 64]);
    let router6 = from_uplink(WEB, "2001:db8::1", "fd00::11");
    let lines = replay(
        dir.path(),
        &timed(vec![
            query.clone(),
            // Port unreachable about the query: related.
            frames::icmp(&router, 3, 3, [0; 4], &frames::ip_part(&query)[..28]),
            // Fragmentation needed (path MTU): related.
            frames::icmp(&router, 3, 4, [0, 0, 5, 0xdc], &frames::ip_part(&query)[..28]),
            // About a flow never seen: judged as new, denied by default.
            frames::icmp(&router, 3, 3, [0; 4], &frames::ip_part(&unrelated)[..28]),
            query6.clone(),
            // ICMPv6 packet too big about the v6 query: related.
            frames::icmp(&router6, 2, 0, [0, 0, 5, 0], &frames::ip_part(&query6)[..48]),
            // Time exceeded about the v4 flow: related.
            frames::icmp(&router, 11, 0, [0; 4], &frames::ip_part(&query)[..28]),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "uplink", "rule:sg-web/egress/1"),
            row("forward", "eni-web1", "related"),
            row("forward", "eni-web1", "related"),
            row("drop", "null", "default"),
            row("forward", "uplink", "rule:sg-web/egress/2"),
            row("forward", "eni-web1", "related"),
            row("forward", "eni-web1", "related"),
        ]
    );
}

#[test]
fn fragments_follow_their_first_fragment() {
    let dir = host("");
    let allowed = from_uplink(WEB, "192.0.2.7", "10.0.0.11");
    let big = frames::tcp(&allowed, 40000, 80, "S", 1, 0, &[7u8; 100]);
    let denied = frames::tcp(&allowed, 40000, 81, "S", 1, 0, &[7u8; 100]);
    let a = frames::fragment_v4(&big, 48, 1);
    let big2 = frames::tcp(&allowed, 40001, 80, "S", 1, 0, &[7u8; 100]);
    let b = frames::fragment_v4(&big2, 48, 2);
    let d = frames::fragment_v4(&denied, 48, 3);
    let lonely = frames::fragment_v4(&big, 48, 4);
    let tiny = frames::fragment_v4(&big, 8, 5);
    let frames_in = vec![
        // In order: first allowed, the rest follow.
        (0, a[0].clone()),
        (1, a[1].clone()),
        (2, a[2].clone()),
        // Out of order: the followers wait for the first (within 100 ms).
        (10, b[2].clone()),
        (11, b[1].clone()),
        (20, b[0].clone()),
        // A denied first fragment: its followers are dropped.
        (30, d[0].clone()),
        (31, d[1].clone()),
        // A follower whose first never comes: dropped when the hold ends.
        (40, lonely[1].clone()),
        // A tiny first fragment (8 bytes: no room for the TCP header).
        (500, tiny[0].clone()),
        (501, tiny[3].clone()),
    ];
    let lines = replay(dir.path(), &frames_in);
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "eni-web1", "rule:sg-web/ingress/1"),
            row("forward", "eni-web1", "fragment"),
            row("forward", "eni-web1", "fragment"),
            row("forward", "eni-web1", "fragment"),
            row("forward", "eni-web1", "fragment"),
            row("forward", "eni-web1", "rule:sg-web/ingress/1"),
            row("drop", "null", "default"),
            row("drop", "null", "fragment"),
            row("drop", "null", "fragment"),
            row("drop", "null", "fragment"),
            row("drop", "null", "fragment"),
        ]
    );
}

#[test]
fn frames_from_vms_must_carry_their_own_mac_and_addresses() {
    let dir = host("");
    let good = from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.80");
    let lines = replay(
        dir.path(),
        &timed(vec![
            frames::tcp(&good, 40000, 443, "S", 1, 0, b""),
            // Another port's address from web1's port.
            frames::tcp(&from_vm(WEB, "10.0.0.12", UPLINK_MAC, "192.0.2.80"), 40000, 443, "S", 1, 0, b""),
            // The link-local IPv6 source of the port's MAC is its own.
            frames::udp(&from_vm(WEB, &frames::eui64(WEB).to_string(), UPLINK_MAC, "2001:db8::1"), 5000, 5000, b"x"),
            // Any other is not.
            frames::udp(&from_vm(WEB, "fe80::1", UPLINK_MAC, "2001:db8::1"), 5000, 5000, b"x"),
            // ARP announcing another VM's address.
            frames::arp(WEB, BROADCAST, 1, WEB, [10, 0, 0, 12], [10, 0, 0, 1]),
            // ARP for its own address: infrastructure, broadcast.
            frames::arp(WEB, BROADCAST, 1, WEB, [10, 0, 0, 11], [10, 0, 0, 1]),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "uplink", "rule:sg-web/egress/1"),
            row("drop", "null", "spoof"),
            row("forward", "uplink", "rule:sg-web/egress/2"),
            row("drop", "null", "spoof"),
            row("drop", "null", "spoof"),
            row("forward", "broadcast", "infrastructure"),
        ]
    );
}

#[test]
fn a_frame_with_an_unknown_source_mac_is_uplink_traffic() {
    // A VM using a MAC that is not its port's is indistinguishable, in a
    // capture, from uplink traffic: replay says so. On a live port the
    // switch knows the interface; `run` checks the MAC (spoof).
    let dir = host("");
    let f = frames::tcp(&from_vm([2, 0, 0, 0, 0, 0x99], "10.0.0.11", DB, "10.0.1.21"), 40000, 22, "S", 1, 0, b"");
    let lines = replay(dir.path(), &[(0, f)]);
    assert_eq!(summary(&lines), vec![row("drop", "null", "default")]);
    assert_eq!(lines[0]["direction"], "ingress");
}

/// The rows of "Traffic outside the groups" (`tests/src/infra.rs`), every
/// frame of its own capture, against `examples/` as the rows configure it.
#[test]
fn traffic_outside_the_groups_takes_exactly_the_contracts_shapes() {
    let dir = tempfile::tempdir().expect("tempdir");
    sgswitch_tests::netns::copy_dir(&sgswitch_tests::netns::root().join("examples"), dir.path());
    infra::configure(dir.path());
    let rows = infra::rows();
    let mut wrong = Vec::new();
    for r in &rows {
        let line = &replay(dir.path(), &[(0, r.frame.clone())])[0];
        let got = (
            line["action"].as_str().unwrap_or("?"),
            line["to"].as_str(),
            line["reason"].as_str().unwrap_or("?"),
            line["port"].as_str(),
            line["direction"].as_str().unwrap_or("?"),
        );
        let e = &r.expect;
        if got != (e.action, e.to, e.reason, e.port, e.direction) {
            wrong.push(format!("{}: expected {e:?}, got {got:?}", r.name));
        }
    }
    assert!(wrong.is_empty(), "{} of {} rows differ:\n{}", wrong.len(), rows.len(), wrong.join("\n"));
}

#[test]
fn infra_allow_addresses_bypass_the_groups() {
    let dir = host("infra_allow = [\"169.254.169.254/32\"]\n");
    let meta = from_vm(DB, "10.0.1.21", UPLINK_MAC, "169.254.169.254");
    let lines = replay(
        dir.path(),
        &timed(vec![frames::tcp(&meta, 40000, 80, "S", 1, 0, b""), frames::tcp(&meta.reversed(), 80, 40000, "SA", 1, 2, b"")]),
    );
    assert_eq!(summary(&lines), vec![row("forward", "uplink", "infrastructure"), row("forward", "eni-db1", "infrastructure")]);
}

#[test]
fn blocked_egress_applies_toward_the_uplink_only_and_can_be_lifted_per_port() {
    let dir = host("");
    let lines = replay(
        dir.path(),
        &timed(vec![
            frames::tcp(&from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.25"), 40000, 25, "S", 1, 0, b""),
            // web2 has allow_blocked_egress.
            frames::tcp(&from_vm(WEB2, "10.0.0.12", UPLINK_MAC, "192.0.2.25"), 40000, 25, "S", 1, 0, b""),
            // To a local VM: not blocked (web2's ingress has no port 25: default).
            frames::tcp(&from_vm(WEB, "10.0.0.11", WEB2, "10.0.0.12"), 40000, 25, "S", 1, 0, b""),
            // A flow a remote host opened from its port 25 is not blocked.
            frames::tcp(&from_uplink(WEB, "192.0.2.25", "10.0.0.11"), 25, 80, "S", 1, 0, b""),
            frames::tcp(&from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.25"), 80, 25, "SA", 1, 2, b""),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("drop", "null", "blocked-egress"),
            row("forward", "uplink", "rule:sg-web/egress/1"),
            row("forward", "eni-web2", "intra-group"),
            row("forward", "eni-web1", "rule:sg-web/ingress/1"),
            row("forward", "uplink", "established"),
        ]
    );
}

#[test]
fn vm_to_vm_traffic_passes_the_senders_egress_and_the_receivers_ingress() {
    let dir = host("");
    let web_to_db = from_vm(WEB, "10.0.0.11", DB, "10.0.1.21");
    let lines = replay(
        dir.path(),
        &timed(vec![
            // web1 -> db1:5432: web1's egress allows, db1's ingress allows (sg-web member).
            frames::tcp(&web_to_db, 40000, 5432, "S", 1, 0, b""),
            frames::tcp(&web_to_db.reversed(), 5432, 40000, "SA", 9, 2, b""),
            // web1 -> db1:22: db1's ingress denies.
            frames::tcp(&web_to_db, 40001, 22, "S", 1, 0, b""),
            // db1 -> web1:80: db1's egress deny-all stops it first.
            frames::tcp(&web_to_db.reversed(), 40002, 80, "S", 1, 0, b""),
            // web1 -> web2 any port: intra-group accept on both sides.
            frames::udp(&from_vm(WEB, "10.0.0.11", WEB2, "10.0.0.12"), 7000, 7001, b"x"),
        ]),
    );
    assert_eq!(
        summary(&lines),
        vec![
            row("forward", "eni-db1", "rule:sg-db/ingress/0"),
            row("forward", "eni-web1", "established"),
            row("drop", "null", "default"),
            row("drop", "null", "rule:sg-db/egress/0"),
            row("forward", "eni-web2", "intra-group"),
        ]
    );
    assert_eq!((&lines[2]["port"], &lines[2]["direction"]), (&Value::from("eni-db1"), &Value::from("ingress")));
    assert_eq!((&lines[3]["port"], &lines[3]["direction"]), (&Value::from("eni-db1"), &Value::from("egress")));
}

#[test]
fn malformed_frames_are_dropped_and_counted() {
    let dir = host("");
    let good = frames::tcp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 40000, 80, "S", 1, 0, b"");
    let mut bad_ihl = good.clone();
    bad_ihl[14] = 0x4f;
    let mut bad_len = good.clone();
    bad_len[16..18].copy_from_slice(&9000u16.to_be_bytes());
    let lines = replay(dir.path(), &timed(vec![good[..9].to_vec(), good[..20].to_vec(), bad_ihl, bad_len, good[..40].to_vec()]));
    for l in &lines {
        assert_eq!((l["action"].as_str(), l["reason"].as_str()), (Some("drop"), Some("malformed")), "{l}");
    }
    // A broken frame from a VM's MAC is that port's egress (the capture
    // rule of the contract), counted there.
    let mut from_vm_bad = frames::tcp(&from_vm(WEB, "10.0.0.11", UPLINK_MAC, "192.0.2.7"), 40000, 80, "S", 1, 0, b"");
    from_vm_bad[14] = 0x4f;
    let lines = replay(dir.path(), &[(0, from_vm_bad)]);
    assert_eq!(
        (lines[0]["reason"].as_str(), lines[0]["port"].as_str(), lines[0]["direction"].as_str()),
        (Some("malformed"), Some("eni-web1"), Some("egress"))
    );
    let out = sgswitch(&["replay", dir.path().to_str().expect("utf-8"), "--pcap", "/nonexistent/capture.pcap"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/capture.pcap"));
}

#[test]
fn out_writes_the_forwarded_frames_and_the_table_summarises() {
    let dir = host("");
    let frames_in = timed(vec![
        frames::tcp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 40000, 80, "S", 1, 0, b""),
        frames::tcp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 40000, 81, "S", 1, 0, b""),
    ]);
    let tmp = tempfile::tempdir().expect("tempdir");
    let (pin, pout) = (tmp.path().join("in.pcap"), tmp.path().join("out.pcap"));
    frames::write_pcap(&pin, &frames_in);
    let args =
        ["replay", dir.path().to_str().expect("utf-8"), "--pcap", pin.to_str().expect("utf-8"), "--out", pout.to_str().expect("utf-8")];
    let out = sgswitch(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("2 packets: 1 forwarded, 1 dropped"), "{text}");
    assert!(text.contains("dropped: default 1"), "{text}");
    // Replaying the output: only the forwarded frame is in it.
    let lines = replay(dir.path(), &[]);
    assert!(lines.is_empty());
    let again = sgswitch(&["replay", dir.path().to_str().expect("utf-8"), "--pcap", pout.to_str().expect("utf-8"), "--json"]);
    let n = String::from_utf8_lossy(&again.stdout).lines().count();
    assert_eq!(n, 1);
}

/// A copy of `examples/` (ports with interfaces, the uplink sgs-uplink).
fn examples_copy() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    sgswitch_tests::netns::copy_dir(&sgswitch_tests::netns::root().join("examples"), dir.path());
    dir
}

fn replay_path(dir: &std::path::Path, capture: &std::path::Path) -> (Vec<Value>, String, Option<i32>) {
    let out = sgswitch(&["replay", dir.to_str().expect("utf-8"), "--pcap", capture.to_str().expect("utf-8"), "--json"]);
    let lines = String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("json line")).collect();
    (lines, String::from_utf8_lossy(&out.stderr).into_owned(), out.status.code())
}

#[test]
fn pcapng_interfaces_say_where_a_frame_came_in_and_the_mac_check_runs() {
    let dir = examples_copy();
    let tmp = tempfile::tempdir().expect("tempdir");
    let web1: Mac = [2, 0, 0, 0, 0, 0x11];
    let web2: Mac = [2, 0, 0, 0, 0, 0x12];
    let out = |mac: Mac| from_vm(mac, "10.0.0.11", UPLINK_MAC, "192.0.2.80");
    let frames_in = vec![
        // On web1's tap, as web1: its egress.
        (0, 0, frames::tcp(&out(web1), 40000, 443, "S", 1, 0, b"")),
        // On web1's tap with a MAC no port has: in a pcap this would pass
        // for uplink traffic.
        (1000, 0, frames::tcp(&out([2, 0, 0, 0, 0, 0x99]), 40001, 443, "S", 1, 0, b"")),
        // On web1's tap with web2's MAC: web1's port checks its own MAC.
        (2000, 0, frames::tcp(&out(web2), 40002, 443, "S", 1, 0, b"")),
        // On the uplink, to web1: ingress, whatever its source MAC says.
        (3000, 1, frames::tcp(&from_uplink(web1, "192.0.2.7", "10.0.0.11"), 40003, 80, "S", 1, 0, b"")),
        // On an interface without a name: inferred from the MAC (web1's).
        (4000, 2, frames::tcp(&out(web1), 40004, 443, "S", 1, 0, b"")),
    ];
    let path = tmp.path().join("in.pcapng");
    frames::write_pcapng(&path, &[Some("tap-web1"), Some("sgs-uplink"), None], &frames_in);
    let (lines, stderr, code) = replay_path(dir.path(), &path);
    assert_eq!(code, Some(0), "{stderr}");
    let got: Vec<(String, String, String)> = summary(&lines);
    assert_eq!(
        got,
        vec![
            row("forward", "uplink", "default"),
            row("drop", "null", "spoof"),
            row("drop", "null", "spoof"),
            row("forward", "eni-web1", "rule:sg-web/ingress/1"),
            row("forward", "uplink", "default"),
        ]
    );
    assert_eq!(lines[1]["port"], "eni-web1");

    // A name that is no port's and not the uplink's is an error.
    let bad = tmp.path().join("bad.pcapng");
    frames::write_pcapng(&bad, &[Some("eth7")], &[(0, 0, frames::tcp(&out(web1), 1, 2, "S", 1, 0, b""))]);
    let (_, stderr, code) = replay_path(dir.path(), &bad);
    assert_eq!(code, Some(1));
    assert!(stderr.contains("interface \"eth7\" is neither a port's interface nor the uplink's"), "{stderr}");
    assert!(stderr.contains("sgs-uplink (uplink)"), "{stderr}");
}

#[test]
fn a_capture_with_a_small_snaplen_replays() {
    let dir = host("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp.path().join("short.pcap");
    let syn = frames::tcp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 40000, 80, "S", 1, 0, &[7; 400]);
    let udp = frames::udp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 53, 5000, &[1; 600]);
    frames::write_pcap_snaplen(&path, 64, &[(0, syn), (1000, udp)]);
    let (lines, stderr, code) = replay_path(dir.path(), &path);
    assert_eq!(code, Some(0), "{stderr}");
    assert_eq!(summary(&lines), vec![row("forward", "eni-web1", "rule:sg-web/ingress/1"), row("drop", "null", "default")]);
}

#[test]
fn a_capture_cut_inside_its_last_record_replays_the_records_before_it() {
    let dir = host("");
    let tmp = tempfile::tempdir().expect("tempdir");
    let syn = |sport| frames::tcp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), sport, 80, "S", 1, 0, b"");
    for (name, ng) in [("cut.pcap", false), ("cut.pcapng", true)] {
        let path = tmp.path().join(name);
        if ng {
            frames::write_pcapng(&path, &[Some("nosuch0"), None], &[(0, 1, syn(1)), (1, 1, syn(2)), (2, 1, syn(3))]);
        } else {
            frames::write_pcap(&path, &[(0, syn(1)), (1, syn(2)), (2, syn(3))]);
        }
        let full = std::fs::read(&path).expect("read");
        std::fs::write(&path, &full[..full.len() - 10]).expect("cut");
        let (lines, stderr, code) = replay_path(dir.path(), &path);
        assert_eq!(code, Some(0), "{name}: {stderr}");
        assert_eq!(lines.len(), 2, "{name}: the two whole records");
        // pcap: a 24-byte header and two records of 16 + 58 bytes.
        let at = if ng { "at byte " } else { "at byte 172" };
        assert!(
            stderr.contains("warning:") && stderr.contains("the capture ends inside the record") && stderr.contains(at),
            "{name}: {stderr}"
        );
    }
}

#[test]
fn a_large_capture_is_streamed_in_bounded_memory() {
    use std::io::Write;
    let dir = host("");
    // 400 MB of 1,400-byte frames through a pipe: read whole, they would
    // take more than that.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["replay", dir.path().to_str().expect("utf-8"), "--pcap", "/dev/stdin", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("replay");
    let pid = child.id();
    let mut stdin = child.stdin.take().expect("stdin");
    let frame = frames::udp(&from_uplink(WEB, "192.0.2.7", "10.0.0.11"), 53, 5000, &[9; 1358]);
    let mut chunk = Vec::new();
    for v in [0xa1b2_c3d4_u32, 0x0004_0002, 0, 0, 65535, 1] {
        chunk.extend_from_slice(&v.to_le_bytes());
    }
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watch = {
        let peak = std::sync::Arc::clone(&peak);
        std::thread::spawn(move || {
            while let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
                if let Some(kb) =
                    s.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().trim_end_matches(" kB").parse::<u64>().ok())
                {
                    peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        })
    };
    let n = 400_000_000 / (16 + frame.len());
    for i in 0..n {
        let ms = i as u64;
        for v in [ms / 1000, (ms % 1000) * 1000, frame.len() as u64, frame.len() as u64] {
            chunk.extend_from_slice(&u32::try_from(v).expect("field").to_le_bytes());
        }
        chunk.extend_from_slice(&frame);
        if chunk.len() > 1 << 20 {
            stdin.write_all(&chunk).expect("write to replay");
            chunk.clear();
        }
    }
    stdin.write_all(&chunk).expect("write to replay");
    drop(stdin);
    let out = child.wait_with_output().expect("replay ends");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    watch.join().expect("watcher");
    let peak_mb = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    // The table of one loop's conntrack (capacity 1 M) and the flow cache
    // dominate; the capture adds nothing that grows with it.
    eprintln!("replay of a 400 MB capture peaked at {peak_mb} MB");
    assert!(peak_mb > 0 && peak_mb < 400, "replay of a 400 MB capture peaked at {peak_mb} MB");
}

#[test]
fn a_rule_with_an_id_is_named_by_it() {
    let dir = host("");
    let g = dir.path().join("groups/sg-web.toml");
    let text = std::fs::read_to_string(&g).expect("sg-web");
    std::fs::write(
        &g,
        text.replacen(
            "[[ingress]]\nprotocol = \"tcp\"\nports = \"80/80\"",
            "[[ingress]]\nid = \"http\"\nprotocol = \"tcp\"\nports = \"80/80\"",
            1,
        ),
    )
    .expect("write");
    let c = from_uplink(WEB, "192.0.2.1", "10.0.0.11");
    let web = replay(dir.path(), &timed(vec![frames::tcp(&c, 40000, 80, "S", 1, 0, b""), frames::tcp(&c, 40001, 22, "S", 1, 0, b"")]));
    assert_eq!(summary(&web), [row("forward", "eni-web1", "rule:sg-web/ingress/http"), row("drop", "null", "default")]);
    let trace = sgswitch(&[
        "trace",
        dir.path().to_str().expect("utf-8"),
        "--port",
        "eni-web1",
        "--direction",
        "ingress",
        "--proto",
        "tcp",
        "--remote",
        "192.0.2.1",
        "--local-port",
        "80",
        "--json",
    ]);
    let v: Value = serde_json::from_slice(&trace.stdout).expect("trace --json");
    assert_eq!(
        v["rule"],
        serde_json::json!({"group": "sg-web", "direction": "ingress", "index": 1, "id": "http", "priority": 1, "action": "allow"})
    );
}
