//! End to end, as root: `sgswitch run` on real AF_XDP sockets on the veth
//! topology of `scripts/netns.sh` (namespaces as VMs and an internet host),
//! with a copy of `examples/` it can edit. Allowed and denied traffic in
//! both directions, VM to VM, a reload with a broken file that changes
//! nothing, a reload that closes a port, and a clean shutdown.

use std::process::Command;
use std::time::Duration;

use sgswitch_tests::netns::{Topology, examples, require_root, sh, wait_for};

fn connects(ns: &str, args: &str) -> bool {
    sh(&format!("ip netns exec sgs-{ns} nc -z -w 2 {args}"))
}

fn pings(ns: &str, to: &str) -> bool {
    sh(&format!("ip netns exec sgs-{ns} ping -c 3 -i 0.2 -W 1 {to}"))
}

#[test]
fn the_switch_enforces_the_groups_on_real_interfaces_and_reloads() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19471", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["run", dir.path().to_str().expect("utf-8")])
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start sgswitch run");
    assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    for (ns, port) in [("web1", 80), ("bastion", 22), ("db1", 5432), ("lab2", 8080), ("web2", 80)] {
        assert!(sh(&format!("ip netns exec sgs-{ns} sh -c 'nc -lk -p {port} >/dev/null 2>&1 &'")));
    }
    std::thread::sleep(Duration::from_millis(300));

    assert!(pings("inet", "10.0.0.11"), "ping to web1 is allowed");
    assert!(connects("inet", "10.0.0.11 80"), "http from anywhere");
    assert!(!connects("inet", "-s 203.0.113.9 10.0.0.11 80"), "http from the blocked network");
    assert!(connects("inet", "-s 198.51.100.7 10.0.2.31 22"), "ssh from the office");
    assert!(!connects("inet", "10.0.2.31 22"), "ssh from elsewhere");
    assert!(connects("web1", "10.0.1.21 5432"), "postgres from a web server, VM to VM");
    assert!(!connects("inet", "10.0.1.21 5432"), "postgres from the internet");
    assert!(connects("web1", "10.0.0.12 80"), "intra-group accept between web servers");
    assert!(!connects("lab1", "10.0.3.42 8080"), "lab isolation");
    assert!(!connects("web1", "10.0.255.1 25"), "outbound smtp is blocked");

    // A broken file: refused, the running configuration stays.
    let web = dir.path().join("groups/sg-web.toml");
    let good = std::fs::read_to_string(&web).expect("read");
    std::fs::write(&web, format!("{good}\n[[ingress]]\nprotocol = \"tcp\"\nports = \"99999/1\"\n")).expect("write");
    assert!(wait_for(&log, "refused", 0), "the broken file is refused: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(std::fs::read_to_string(&log).expect("log").contains("sg-web.toml:"), "the refusal names the file");
    assert!(connects("inet", "10.0.0.11 80"), "http still allowed after a refused reload");

    // A valid change that closes http: applied on file change.
    std::fs::write(&web, good.replace("ports = \"80/80\"\nsource = \"0.0.0.0/0\"", "ports = \"81/81\"\nsource = \"0.0.0.0/0\""))
        .expect("write");
    assert!(wait_for(&log, "reloaded", 0), "reload applied: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!connects("inet", "10.0.0.11 80"), "http is closed by the new policy");
    assert!(pings("inet", "10.0.0.11"), "ping still allowed");

    // SIGTERM: clean exit, counters printed, no XDP program left.
    assert!(sh(&format!("kill -TERM {}", child.id())));
    let status = child.wait().expect("wait");
    assert!(status.success(), "exit status {status}");
    let text = std::fs::read_to_string(&log).expect("log");
    assert!(text.contains("counters (packets):") && text.contains("rule sg-web/ingress/0"), "{text}");
    assert!(!sh("ip link show | grep -q ' xdp'"), "an XDP program is left on an interface");
}

#[test]
fn a_missing_interface_is_named() {
    let dir = examples("127.0.0.1:19472", "");
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read").replace("sgs-uplink", "sgs-nosuch0");
    std::fs::write(&host, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_sgswitch")).args(["run", dir.path().to_str().expect("utf-8")]).output().expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("interface sgs-nosuch0: no such network interface"), "{err}");
}
