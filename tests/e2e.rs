//! End to end, as root: `sgswitch run` on real AF_XDP sockets on the veth
//! topology of `scripts/netns.sh` (namespaces as VMs and an internet host),
//! with a copy of `examples/` it can edit. Allowed and denied traffic in
//! both directions, VM to VM, a reload with a broken file that changes
//! nothing, a reload that closes a port, and a clean shutdown.

use std::process::Command;
use std::time::{Duration, Instant};

use sgswitch_tests::netns::{Kill, Topology, examples, http_get, require_root, sample, sh, start_switch, thread_switches, wait_for};

fn connects(ns: &str, args: &str) -> bool {
    sh(&format!("ip netns exec sgs-{ns} nc -z -w 2 {args}"))
}

fn pings(ns: &str, to: &str) -> bool {
    sh(&format!("ip netns exec sgs-{ns} ping -c 3 -i 0.2 -W 1 {to}"))
}

/// The average round trip of `n` pings from `ns` to `to`, in ms (`None` if
/// ping did not say).
fn ping_avg_ms(ns: &str, to: &str, n: u32) -> Option<f64> {
    let o = Command::new("ip")
        .args(["netns", "exec", &format!("sgs-{ns}"), "ping", "-q", "-c", &n.to_string(), "-i", "0.05", "-W", "1", to])
        .output()
        .ok()?;
    // "rtt min/avg/max/mdev = 0.052/0.070/0.101/0.010 ms"
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    text.lines().find_map(|l| l.split_once(" = ")?.1.split('/').nth(1)?.parse().ok())
}

/// Frames loop `l` handed to the other loops, as the metrics say (0 if
/// absent).
fn handed_over(metrics: &str, l: &str) -> u64 {
    sample(metrics, &format!("sgswitch_loop_handover_total{{loop=\"{l}\",outcome=\"sent\"}}"))
}

/// A threaded TCP echo server on port 443 (python3, inside a namespace).
const ECHO_SERVER: &str = "import socket,threading\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',443));s.listen()\ndef h(c):\n  while True:\n    d=c.recv(4096)\n    if not d: break\n    c.sendall(d)\nwhile True:\n  c,_=s.accept();threading.Thread(target=h,args=(c,),daemon=True).start()";

/// One TCP connection from the internet host to web1:443, held open; each
/// line written is sent and must come back within two seconds.
const ECHO_CLIENT: &str = r#"
import socket, sys
c = socket.create_connection(('10.0.0.11', 443), timeout=3)
c.settimeout(2)
print('connected', flush=True)
for line in sys.stdin:
    try:
        c.sendall(line.encode())
        d = c.recv(4096)
        print('ok' if d == line.encode() else 'bad', flush=True)
    except socket.timeout:
        print('timeout', flush=True)
    except OSError as e:
        print('error', e, flush=True)
"#;

struct Echo {
    child: std::process::Child,
    out: std::io::BufReader<std::process::ChildStdout>,
}

impl Echo {
    fn connect() -> Echo {
        let mut child = Command::new("ip")
            .args(["netns", "exec", "sgs-inet", "python3", "-c", ECHO_CLIENT])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("echo client");
        let out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut e = Echo { child, out };
        assert_eq!(e.line(), "connected", "the echo client connects");
        e
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        let _ = std::io::BufRead::read_line(&mut self.out, &mut l);
        l.trim().to_owned()
    }

    fn say(&mut self, text: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        std::io::Write::write_all(stdin, format!("{text}\n").as_bytes()).expect("write to the client");
        self.line()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn reloads(log: &std::path::Path) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches("reloaded").count()
}

#[test]
fn the_switch_enforces_the_groups_on_real_interfaces_and_reloads() {
    require_root();
    // One poll loop, then two: with two, ports alternate between the loops,
    // so VM-to-VM and uplink traffic crosses from one loop to the other.
    for cores in ["[0]", "[0, 1]"] {
        scenario(cores);
    }
}

fn scenario(cores: &str) {
    eprintln!("== cores = {cores}");
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19471", "");
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    assert!(text.contains("cores = [0]"), "examples/host.toml names its cores");
    std::fs::write(&host, text.replace("cores = [0]", &format!("cores = {cores}"))).expect("write host.toml");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let mut child = Kill(
        Command::new(env!("CARGO_BIN_EXE_sgswitch"))
            .args(["run", dir.path().to_str().expect("utf-8")])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start sgswitch run"),
    );
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
    // Every queue of the two-queue uplink has its socket; with two loops,
    // frames cross between them both ways.
    let metrics = http_get("127.0.0.1:19471", "/metrics").expect("GET /metrics");
    for q in ["0", "1"] {
        assert!(metrics.contains(&format!("sgswitch_xsk_info{{interface=\"sgs-uplink\",queue=\"{q}\"")), "uplink queue {q}: {metrics}");
    }
    // Each loop's core polls when idle while the switch runs (on bare
    // metal, where the kernel has a polling idle state: `core_idle` is
    // `auto`), and says so.
    let loop_cores: Vec<usize> = if cores == "[0]" { vec![0] } else { vec![0, 1] };
    let in_a_vm = sgswitch_tests::cpu::in_a_vm();
    for (l, c) in loop_cores.iter().enumerate() {
        let polls = !in_a_vm && sgswitch_tests::cpu::has_polling_state(*c);
        let idle = if polls { "poll" } else { "halt" };
        assert!(
            metrics.contains(&format!("sgswitch_loop_core_idle_info{{loop=\"{l}\",core=\"{c}\",idle=\"{idle}\"")),
            "loop {l} on core {c}: {metrics}"
        );
        if polls {
            assert_eq!(sgswitch_tests::cpu::resume_latency(*c), "n/a", "core {c} is asked to poll");
        }
    }
    if cores != "[0]" {
        for l in ["0", "1"] {
            let sent = handed_over(&metrics, l);
            assert!(sent > 0, "loop {l} handed frames over: {sent}");
        }
        // A quiet loop sleeps up to 10 ms, but a frame handed to it rings
        // its doorbell: pings whose frames cross from one loop to the
        // other take no sleep's length (without the ring, 5 ms on average
        // per crossing).
        let before: u64 = ["0", "1"].iter().map(|l| handed_over(&metrics, l)).sum();
        for to in ["10.0.0.11", "10.0.0.12"] {
            std::thread::sleep(Duration::from_millis(100));
            let avg = ping_avg_ms("inet", to, 30);
            eprintln!("pings to {to}: {avg:?} ms on average");
            assert!(avg.is_some_and(|ms| ms < 2.5), "pings to {to} took {avg:?} ms on average: a sleeping loop was not woken for them");
        }
        let metrics = http_get("127.0.0.1:19471", "/metrics").expect("GET /metrics");
        let after: u64 = ["0", "1"].iter().map(|l| handed_over(&metrics, l)).sum();
        assert!(after >= before + 30, "the pings crossed between the loops: {before} frames handed over before, {after} after");
    }

    // An established connection lives through ten reloads that keep its
    // verdict, and a reload that denies it cuts it (revalidate).
    let _server = Kill(Command::new("ip").args(["netns", "exec", "sgs-web1", "python3", "-c", ECHO_SERVER]).spawn().expect("echo server"));
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Echo::connect();
    assert_eq!(client.say("hello"), "ok", "https echo through the switch");
    // The connection's later segments take the flow cache's recorded routes.
    for i in 0..5 {
        assert_eq!(client.say(&format!("again {i}")), "ok");
    }
    let metrics = http_get("127.0.0.1:19471", "/metrics").expect("GET /metrics");
    let hits: u64 = metrics
        .lines()
        .filter(|m| m.starts_with("sgswitch_loop_flow_cache_total{") && m.contains("result=\"hit\""))
        .filter_map(|m| m.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert!(hits > 0, "no frame took a recorded route: {metrics}");
    let db = dir.path().join("groups/sg-db.toml");
    let db_text = std::fs::read_to_string(&db).expect("read sg-db");
    for i in 0..10 {
        let before = reloads(&log);
        std::fs::write(&db, db_text.replace("no internet\"", &format!("no internet (edit {i})\""))).expect("write sg-db");
        assert!(wait_for(&log, "reloaded", before), "reload {i} applied: {}", std::fs::read_to_string(&log).unwrap_or_default());
        assert_eq!(client.say(&format!("after reload {i}")), "ok", "the connection survives reload {i}");
    }
    // `keep` written while the switch runs: a reload that closes https
    // leaves the connection alone; `revalidate` again: the next reload
    // judges it by the policy in force, which cuts it.
    let host_text = std::fs::read_to_string(&host).expect("read host.toml");
    assert!(host_text.contains("on_policy_change = \"revalidate\""), "examples/host.toml revalidates");
    let before = reloads(&log);
    std::fs::write(&host, host_text.replace("on_policy_change = \"revalidate\"", "on_policy_change = \"keep\"")).expect("write host");
    assert!(wait_for(&log, "reloaded", before), "the keep reload applied");
    let web = dir.path().join("groups/sg-web.toml");
    let before = reloads(&log);
    let web_text = std::fs::read_to_string(&web).expect("read sg-web");
    std::fs::write(&web, web_text.replacen("ports = \"443/443\"", "ports = \"4443/4443\"", 1)).expect("write sg-web");
    assert!(wait_for(&log, "reloaded", before), "the closing reload applied");
    assert_eq!(client.say("after https is closed, keep"), "ok", "keep: the connection outlives the reload that denies it");
    let before = reloads(&log);
    std::fs::write(&host, &host_text).expect("write host");
    assert!(wait_for(&log, "reloaded", before), "the revalidate reload applied");
    assert_eq!(client.say("after https is closed, revalidate"), "timeout", "revalidate: the connection is cut");
    drop(client);
    let before = reloads(&log);

    // A broken file: refused, the running configuration stays.
    let good = std::fs::read_to_string(&web).expect("read");
    std::fs::write(&web, format!("{good}\n[[ingress]]\nprotocol = \"tcp\"\nports = \"99999/1\"\n")).expect("write");
    assert!(wait_for(&log, "refused", 0), "the broken file is refused: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(std::fs::read_to_string(&log).expect("log").contains("sg-web.toml:"), "the refusal names the file");
    assert!(connects("inet", "10.0.0.11 80"), "http still allowed after a refused reload");

    // A valid change that closes http: applied on file change.
    std::fs::write(&web, good.replace("ports = \"80/80\"\nsource = \"0.0.0.0/0\"", "ports = \"81/81\"\nsource = \"0.0.0.0/0\""))
        .expect("write");
    assert!(wait_for(&log, "reloaded", before), "reload applied: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!connects("inet", "10.0.0.11 80"), "http is closed by the new policy");
    assert!(pings("inet", "10.0.0.11"), "ping still allowed");

    // SIGTERM: clean exit, counters printed, no XDP program left.
    assert!(sh(&format!("kill -TERM {}", child.0.id())));
    let status = child.0.wait().expect("wait");
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

/// The rows of "Traffic outside the groups" (`tests/src/infra.rs`) through
/// `sgswitch run`: each frame sent from its namespace (a VM's eth0, or the
/// internet host's behind the uplink), and the switch's counter of the
/// expected port, direction, action and reason goes up. (Once: a second
/// copy of an allowed first packet would count as established.)
#[test]
fn traffic_outside_the_groups_takes_the_contracts_shapes_on_real_interfaces() {
    use sgswitch_tests::infra;
    use sgswitch_tests::netns::send_frames;
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19473", "");
    infra::configure(dir.path());
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_sgswitch"))
            .args(["run", dir.path().to_str().expect("utf-8")])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start sgswitch run"),
    );
    assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    let mut wrong = Vec::new();
    for r in infra::rows() {
        let e = &r.expect;
        let reason = if e.reason.starts_with("rule:") { "rule" } else { e.reason };
        let cell = format!(
            "sgswitch_packets_total{{port=\"{}\",direction=\"{}\",action=\"{}\",reason=\"{reason}\"}}",
            e.port.unwrap_or("none"),
            e.direction,
            e.action
        );
        let before = sample(&http_get("127.0.0.1:19473", "/metrics").expect("metrics"), &cell);
        let ns = match r.from {
            infra::Side::Vm(name) => format!("sgs-{name}"),
            infra::Side::Uplink => "sgs-inet".to_owned(),
        };
        send_frames(&ns, std::slice::from_ref(&r.frame), 1);
        let t = std::time::Instant::now();
        let mut now = before;
        while now == before && t.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
            now = sample(&http_get("127.0.0.1:19473", "/metrics").expect("metrics"), &cell);
        }
        if now == before {
            wrong.push(format!("{}: {cell} went from {before} to {now}", r.name));
        }
    }
    assert!(wrong.is_empty(), "{} rows:\n{}", wrong.len(), wrong.join("\n"));
}

/// `[conntrack] capacity` is the host's: two poll loops share it (each
/// gets half), the metric shows the real total, and a flood of new flows
/// into ports of both loops is held to it.
#[test]
fn the_connection_capacity_is_the_hosts_shared_by_the_poll_loops() {
    use sgswitch_tests::frames::{self, Ends, UPLINK_MAC};
    use sgswitch_tests::netns::send_frames;
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19474", "");
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    let text = text.replace("cores = [0]", "cores = [0, 1]").replace("capacity = 1048576", "capacity = 1500");
    std::fs::write(&host, text.replace("per_port_capacity = 65536", "per_port_capacity = 1500")).expect("write host.toml");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _child = Kill(
        Command::new(env!("CARGO_BIN_EXE_sgswitch"))
            .args(["run", dir.path().to_str().expect("utf-8")])
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("start sgswitch run"),
    );
    assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    // web1 and web2 are in different loops (zones 4 and 5 of two loops).
    let mut syns = Vec::new();
    for (mac, ip) in [([2, 0, 0, 0, 0, 0x11], "10.0.0.11"), ([2, 0, 0, 0, 0, 0x12], "10.0.0.12")] {
        let e = Ends { src_mac: UPLINK_MAC, dst_mac: mac, src: "192.0.2.7".parse().expect("ip"), dst: ip.parse().expect("ip") };
        syns.extend((0..1000u16).map(|i| frames::tcp(&e, 20_000 + i, 80, "S", 1, 0, b"")));
    }
    send_frames("sgs-inet", &syns, 1);
    std::thread::sleep(Duration::from_millis(1000));
    let page = http_get("127.0.0.1:19474", "/metrics").expect("metrics");
    assert_eq!(sample(&page, "sgswitch_conntrack_capacity"), 1500, "the host's capacity, summed over the loops");
    let entries: u64 = ["eni-web1", "eni-web2"].iter().map(|p| sample(&page, &format!("sgswitch_conntrack_entries{{port=\"{p}\"}}"))).sum();
    // Beyond the capacity, a new flow evicts a half-open one or is refused.
    let turned_away = sample(&page, "sgswitch_conntrack_refused_full_total") + sample(&page, "sgswitch_conntrack_evicted_total");
    assert!(entries <= 1500, "{entries} flows tracked, over the capacity of 1500");
    let datapath = || {
        page.lines()
            .filter(|l| l.starts_with("sgswitch_xsk") || l.starts_with("sgswitch_loop"))
            .filter(|l| !l.ends_with(" 0"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert!(entries >= 1400, "each loop fills its share: {entries}\n{}", datapath());
    assert!(turned_away >= 300, "the flows beyond the capacity evict or are refused: {turned_away}\n{}", datapath());
}

fn history(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .arg("history")
        .args([args[0], dir.to_str().expect("utf-8")])
        .args(&args[1..])
        .output()
        .expect("history");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn records(dir: &std::path::Path) -> Vec<serde_json::Value> {
    let (code, out, err) = history(dir, &["list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    out.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect()
}

/// The history under `run`: every applied configuration recorded, edits
/// close together coalesced, a diff between records, and a restore that
/// the running switch applies (a flow denied by an edit passes again).
#[test]
fn the_history_records_coalesces_diffs_and_restores_under_run() {
    require_root();
    let _topology = Topology::up();
    let work = tempfile::tempdir().expect("tempdir");
    let db = work.path().join("history.sqlite");
    let dir = examples("127.0.0.1:19475", &format!("\n[history]\npath = \"{}\"\ncoalesce_seconds = 3\n", db.display()));
    let log = work.path().join("switch.log");
    let _switch = sgswitch_tests::netns::start_switch(env!("CARGO_BIN_EXE_sgswitch"), dir.path(), &log);
    let _server = Kill(Command::new("ip").args(["netns", "exec", "sgs-web1", "nc", "-lk", "-p", "80"]).spawn().expect("listener"));
    std::thread::sleep(Duration::from_millis(300));
    assert!(connects("inet", "10.0.0.11 80"), "http to web1 before any edit");
    let first = records(dir.path());
    assert_eq!(first.len(), 1, "the configuration the switch started with: {first:?}");
    assert_eq!(first[0]["generation"], 1);

    // An edit that denies http, and a second one soon after: one record.
    std::thread::sleep(Duration::from_millis(3200));
    let web = dir.path().join("groups/sg-web.toml");
    let before = std::fs::read_to_string(&web).expect("sg-web");
    let denied = before.replacen(
        "action = \"allow\"\nprotocol = \"tcp\"\nports = \"80/80\"",
        "action = \"deny\"\nprotocol = \"tcp\"\nports = \"80/80\"",
        1,
    );
    assert_ne!(denied, before, "the http rule is where the test expects it");
    std::fs::write(&web, &denied).expect("write");
    assert!(wait_for(&log, "reloaded (", 0), "the edit is applied: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!connects("inet", "10.0.0.11 80"), "http to web1 denied by the edit");
    std::fs::write(&web, denied.replacen("public web tier", "public web tier, edited", 1)).expect("write");
    assert!(wait_for(&log, "reloaded (", 1), "the second edit is applied");
    let after = records(dir.path());
    assert_eq!(after.len(), 2, "two edits within 3 s are one record: {after:?}");
    assert_eq!(after[1]["generation"], 3, "the record holds where the edits ended: {after:?}");
    assert!(after[1]["last_ms"].as_i64() > after[1]["first_ms"].as_i64(), "{after:?}");

    // The diff says what changed, and nothing else.
    let (id1, id2) = (first[0]["id"].to_string(), after[1]["id"].to_string());
    let (code, diff, err) = history(dir.path(), &["diff", &id1, &id2]);
    assert_eq!(code, Some(0), "{err}");
    assert!(diff.contains(&format!("--- record-{id1}/groups/sg-web.toml")), "{diff}");
    assert!(diff.contains("-action = \"allow\"") && diff.contains("+action = \"deny\""), "{diff}");
    assert!(diff.contains("+description = \"public web tier, edited\""), "{diff}");
    assert_eq!(diff.matches("--- ").count(), 1, "one file changed: {diff}");
    let (_, now, _) = history(dir.path(), &["diff", &id2]);
    assert_eq!(now, "", "record {id2} is what the directory holds");

    // Restore the first record: the switch reloads it, http passes again,
    // and the restore is itself a record (identical to the first).
    std::thread::sleep(Duration::from_millis(3200));
    let (code, out, err) = history(dir.path(), &["restore", &id1]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out, format!("restored record {id1}: 1 files written or removed\n"));
    assert!(wait_for(&log, "reloaded (", 2), "the restore is applied");
    assert!(connects("inet", "10.0.0.11 80"), "http to web1 passes again");
    let last = records(dir.path());
    assert_eq!(last.len(), 3, "{last:?}");
    let (_, same, _) = history(dir.path(), &["diff", &id1, &last[2]["id"].to_string()]);
    assert_eq!(same, "", "the restored configuration is the first one");
    let (code, _, err) = history(dir.path(), &["restore", "999"]);
    assert_eq!(code, Some(1));
    assert!(err.contains("no record 999"), "{err}");
}

/// The cores of a `Cpus_allowed_list` ("0-2,5").
fn core_list(text: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.trim().parse::<usize>().expect("a core")..=b.trim().parse::<usize>().expect("a core"));
    }
    out
}

/// Each thread's name and the cores it may run on
/// (`/proc/PID/task/*/status`).
fn thread_cores(pid: &str) -> Vec<(String, Vec<usize>)> {
    let mut out = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks").flatten() {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default().trim().to_owned();
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        let cores = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).unwrap_or("").trim().to_owned();
        out.push((name, core_list(&cores)));
    }
    out
}

/// An idle switch's threads other than its poll loop sleep until they have
/// work (a request, a file event, a signal, the stop): on a core they share
/// with the loop, each wake is time the loop's interfaces' receive work
/// waits. They used to wake every 50-100 ms to look at the stop flag,
/// about 80 times a second between them. And the stop still ends them at
/// once.
#[test]
fn the_switchs_other_threads_sleep_while_it_is_idle() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19476", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let mut child = start_switch(env!("CARGO_BIN_EXE_sgswitch"), dir.path(), &log);
    let pid = child.0.id().to_string();
    std::thread::sleep(Duration::from_secs(1));
    let before = thread_switches(&pid);
    std::thread::sleep(Duration::from_secs(2));
    let after = thread_switches(&pid);
    let woke: Vec<(String, u64)> = after
        .iter()
        .filter(|(_, (name, _))| !name.starts_with("sgswitch-loop"))
        .map(|(tid, (name, n))| (name.clone(), n - before.get(tid).map_or(0, |b| b.1)))
        .filter(|(_, d)| *d > 0)
        .collect();
    let total: u64 = woke.iter().map(|(_, d)| d).sum();
    assert!(after.values().any(|(n, _)| n == "sgswitch-metric"), "the endpoints' threads are there: {after:?}");
    assert!(total <= 4, "the other threads woke {total} times in 2 s of nothing: {woke:?}");
    // SIGTERM ends them all promptly, as before.
    let stopping = Instant::now();
    assert!(sh(&format!("kill -TERM {pid}")));
    let status = child.0.wait().expect("exit");
    assert!(status.success(), "{status:?}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(stopping.elapsed() < Duration::from_secs(2), "stopped in {:?}", stopping.elapsed());
}

/// The switch's threads other than its poll loop keep off the loop's core
/// (0) where the process may run on others: the loop alone is on core 0,
/// and every other thread (metrics, control, reloads, link events) is on
/// the rest of the cores the process may use. Where it may use core 0
/// only, they all share it.
#[test]
fn the_switchs_other_threads_keep_off_the_loops_core() {
    require_root();
    let _topology = Topology::up();
    // What the switch may use: what this test may use.
    let mine = thread_cores("self").into_iter().map(|(_, c)| c).next().expect("this thread's cores");
    assert!(mine.contains(&0), "the examples' loop is on core 0: {mine:?}");
    for pinned in [false, true] {
        let dir = examples("127.0.0.1:19475", "");
        let logs = tempfile::tempdir().expect("tempdir");
        let log = logs.path().join("switch.log");
        let mut cmd = if pinned { Command::new("taskset") } else { Command::new(env!("CARGO_BIN_EXE_sgswitch")) };
        if pinned {
            cmd.args(["-c", "0", env!("CARGO_BIN_EXE_sgswitch")]);
        }
        let child = Kill(
            cmd.args(["run", dir.path().to_str().expect("utf-8")])
                .stderr(std::fs::File::create(&log).expect("log"))
                .spawn()
                .expect("start"),
        );
        assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
        let threads = thread_cores(&child.0.id().to_string());
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        drop(child);
        assert!(threads.iter().any(|(n, c)| n == "sgswitch-loop-0" && *c == [0]), "the loop on core 0: {threads:?}");
        assert!(threads.iter().any(|(n, _)| n == "sgswitch-metric"), "the metrics thread: {threads:?}");
        let others: Vec<_> = threads.iter().filter(|(n, _)| !n.starts_with("sgswitch-loop")).collect();
        let rest: Vec<usize> = mine.iter().copied().filter(|&c| c != 0).collect();
        if pinned || rest.is_empty() {
            assert!(others.iter().all(|(_, c)| *c == [0]), "all on core 0, the only one: {others:?}");
            assert!(text.contains("share the loops' cores [0]"), "{text}");
        } else {
            assert!(others.iter().all(|(_, c)| *c == rest), "every other thread on cores {rest:?}: {others:?}");
            assert!(text.contains("off the loops' [0]"), "{text}");
        }
    }
}
