//! Operating the switch, end to end as root on the namespace topology: a
//! real Prometheus server (Debian's `prometheus`) on loopback scrapes a
//! running switch, and the counters it stores must match the traffic the
//! test generates; `promtool` checks the exposition and the example scrape
//! configuration; every query of the Grafana dashboard runs against it. The
//! switch runs with exactly the capabilities the systemd unit grants. The
//! control socket's permissions and every `ctl` verb are exercised, and the
//! flow log's rate limit holds under a flood of denied packets.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sgswitch_tests::netns::{Kill, Topology, examples, http_get, require_root, root, sh, url_encode, wait_for};

const METRICS: &str = "127.0.0.1:19469";
const PROMETHEUS: &str = "127.0.0.1:19090";
const BURST: u64 = 20;
const RATE: u64 = 20;

/// Sends `n` bare TCP SYNs (source ports 40000..) from `src` to `dst:dport`
/// through a raw socket, so that exactly `n` first packets reach the switch.
const SYNS: &str = r#"
import socket, struct, sys
src, dst, dport, n = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
def csum(b):
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)
s.bind((src, 0))
for i in range(n):
    h = struct.pack('!HHIIBBHHH', 40000 + i, dport, 1000 + i, 0, 5 << 4, 0x02, 64240, 0, 0)
    c = csum(socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack('!BBH', 0, 6, len(h)) + h)
    s.sendto(h[:16] + struct.pack('!H', c) + h[18:], (dst, 0))
"#;

/// Sends one UDP datagram from each of `n` source ports to `dst:dport`.
const UDP_FLOOD: &str = r#"
import socket, sys
dst, dport, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(('0.0.0.0', 20000 + i))
    s.sendto(b'x', (dst, dport))
    s.close()
"#;

fn python(ns: &str, script: &str, args: &[&str]) {
    let ok = Command::new("ip")
        .args(["netns", "exec", &format!("sgs-{ns}"), "python3", "-c", script])
        .args(args)
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "python3 in sgs-{ns} failed");
}

fn ctl(sock: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let o = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["ctl", "--socket", sock.to_str().expect("utf-8")])
        .args(args)
        .output()
        .expect("run sgswitch ctl");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned())
}

fn ctl_json(sock: &Path, args: &[&str]) -> Value {
    let (code, out, err) = ctl(sock, args);
    assert_eq!(code, Some(0), "ctl {args:?}: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("ctl {args:?} printed no JSON ({e}): {out}"))
}

/// `ctl trace --json` of a TCP packet from `remote` to eni-web1's port 80.
fn http_trace(sock: &Path, remote: &str, extra: &[&str]) -> Value {
    let mut args =
        vec!["trace", "--port", "eni-web1", "--direction", "ingress", "--proto", "tcp", "--remote", remote, "--local-port", "80", "--json"];
    args.extend_from_slice(extra);
    ctl_json(sock, &args)
}

/// An instant query through Prometheus' HTTP API: the result vector.
fn query(q: &str) -> Vec<Value> {
    let body = http_get(PROMETHEUS, &format!("/api/v1/query?query={}", url_encode(q))).unwrap_or_else(|| panic!("query {q} failed"));
    let v: Value = serde_json::from_str(&body).expect("Prometheus answers JSON");
    assert_eq!(v["status"], "success", "query {q}: {body}");
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

/// The single value of `q`, if Prometheus has one.
fn value(q: &str) -> Option<f64> {
    let r = query(q);
    r.first().and_then(|s| s["value"][1].as_str()).and_then(|v| v.parse().ok())
}

/// Waits (up to 20 s, a few scrapes) until `q` is `want`; returns what it
/// last was.
fn settle(q: &str, want: f64) -> Option<f64> {
    settle_until(q, |v| v == want)
}

fn settle_until(q: &str, done: impl Fn(f64) -> bool) -> Option<f64> {
    let t = Instant::now();
    let mut last = None;
    while t.elapsed() < Duration::from_secs(20) {
        last = value(q);
        if last.is_some_and(&done) {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    last
}

/// The capabilities the systemd unit grants (`CapabilityBoundingSet=`), as
/// `setpriv --bounding-set` wants them.
fn unit_capabilities() -> String {
    let unit = std::fs::read_to_string(root().join("contrib/systemd/sgswitch.service")).expect("read the unit");
    let line = unit.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("the unit sets CapabilityBoundingSet");
    let caps: Vec<String> = line.split_whitespace().map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase())).collect();
    format!("-all,{}", caps.join(","))
}

#[test]
fn prometheus_sees_the_traffic_the_control_socket_answers_and_the_flow_log_holds_its_rate() {
    require_root();
    assert!(
        sh("command -v prometheus && command -v promtool && command -v python3 && command -v setpriv"),
        "needs prometheus, promtool, python3, setpriv"
    );
    let _topology = Topology::up();
    let work = tempfile::tempdir().expect("tempdir");
    let flows = work.path().join("flows.log");
    let dir = examples(METRICS, &format!("\n[flow_log]\nenabled = true\npath = \"{}\"\nrate = {RATE}\nburst = {BURST}\n", flows.display()));
    let sock = dir.path().join("control.sock");
    let log = work.path().join("switch.log");

    // The switch, with the unit's capabilities only.
    let started = Instant::now();
    let switch = Command::new("setpriv")
        .args(["--bounding-set", &unit_capabilities(), "--inh-caps=-all", "--", env!("CARGO_BIN_EXE_sgswitch"), "run"])
        .arg(dir.path())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start sgswitch run");
    let mut switch = Kill(switch);
    assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(std::fs::metadata(&sock).expect("control socket").permissions().mode() & 0o777, 0o600, "control socket mode");

    // Prometheus, scraping it every second.
    let prom_cfg = work.path().join("prometheus.yml");
    std::fs::write(
        &prom_cfg,
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sgswitch\n    static_configs:\n      - targets: [\"{METRICS}\"]\n"),
    )
    .expect("write prometheus.yml");
    let prom = Command::new("prometheus")
        .arg(format!("--config.file={}", prom_cfg.display()))
        .arg(format!("--storage.tsdb.path={}", work.path().join("tsdb").display()))
        .arg(format!("--web.listen-address={PROMETHEUS}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.path().join("prometheus.log")).expect("log"))
        .spawn()
        .expect("start prometheus");
    let _prom = Kill(prom);
    let t = Instant::now();
    while http_get(PROMETHEUS, "/-/ready").is_none() {
        assert!(t.elapsed() < Duration::from_secs(30), "prometheus did not become ready");
        std::thread::sleep(Duration::from_millis(200));
    }

    // The exposition passes promtool's checks and lints.
    let text = http_get(METRICS, "/metrics").expect("GET /metrics");
    let mut check = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    std::io::Write::write_all(&mut check.stdin.take().expect("stdin"), text.as_bytes()).expect("write");
    let out = check.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        sh(&format!("promtool check config {}/contrib/prometheus/prometheus.yml", root().display())),
        "the example scrape config is valid"
    );

    // Exactly N denied SYNs, counted on the rule `sgswitch trace` names.
    const N: u64 = 7; // wait_for below counts N - 1 = 6 earlier lines
    let trace = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .arg("trace")
        .arg(dir.path())
        .args(["--port", "eni-web1", "--direction", "ingress", "--proto", "tcp", "--remote", "203.0.113.9", "--local-port", "80", "--json"])
        .output()
        .expect("trace");
    let traced: Value = serde_json::from_slice(&trace.stdout).expect("trace --json");
    assert_eq!(traced["verdict"], "deny");
    let rule = &traced["rule"];
    let selector = format!(
        "group=\"{}\",direction=\"{}\",index=\"{}\"",
        rule["group"].as_str().unwrap(),
        rule["direction"].as_str().unwrap(),
        rule["index"]
    );
    assert_eq!(value(&format!("sgswitch_rule_hits_total{{{selector}}}")).unwrap_or(0.0), 0.0, "the rule starts at zero");
    python("inet", SYNS, &["203.0.113.9", "10.0.0.11", "80", &N.to_string()]);
    assert_eq!(settle(&format!("sgswitch_rule_hits_total{{{selector}}}"), N as f64), Some(N as f64), "rule hits of {selector}");
    let drops = "sgswitch_packets_total{port=\"eni-web1\",direction=\"ingress\",action=\"drop\",reason=\"rule\"}";
    assert_eq!(settle(drops, N as f64), Some(N as f64), "{drops}");
    assert_eq!(value("count(sgswitch_xsk_info)"), Some(8.0), "one socket per port and per uplink queue (two)");
    assert_eq!(value("sgswitch_config_generation"), Some(1.0));

    // The flow log names them.
    assert!(wait_for(&flows, "\"reason\":\"rule\"", 6), "flow log: {}", std::fs::read_to_string(&flows).unwrap_or_default());
    let first: Value =
        serde_json::from_str(std::fs::read_to_string(&flows).expect("flow log").lines().next().expect("a line")).expect("JSON line");
    assert_eq!(first["port"], "eni-web1");
    assert_eq!(first["direction"], "ingress");
    assert_eq!(first["src"], "203.0.113.9");
    assert_eq!(first["dport"], 80);
    assert_eq!(first["rule"], format!("{}/{}/{}", rule["group"].as_str().unwrap(), rule["direction"].as_str().unwrap(), rule["index"]));

    // The control socket: status, a live flow, trace against it, flush.
    let status = ctl_json(&sock, &["status", "--json"]);
    assert_eq!(status["generation"], 1);
    assert_eq!(status["ports"].as_array().map(Vec::len), Some(6));
    assert_eq!(status["loops"][0]["sockets"].as_array().map(Vec::len), Some(8), "six ports and two uplink queues");
    assert!(sh("ip netns exec sgs-web1 sh -c 'nc -lk -p 80 >/dev/null 2>&1 &'"));
    std::thread::sleep(Duration::from_millis(300));
    let held = Kill(
        Command::new("ip")
            .args(["netns", "exec", "sgs-inet", "bash", "-c", "exec 3<>/dev/tcp/10.0.0.11/80; sleep 20"])
            .spawn()
            .expect("connect"),
    );
    let t = Instant::now();
    let flow = loop {
        let (code, out, err) = ctl(&sock, &["conntrack", "list", "--port", "eni-web1", "--json"]);
        assert_eq!(code, Some(0), "{err}");
        let found = out
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .find(|f| f["dport"] == 80 && f["state"] == "ESTABLISHED");
        if let Some(f) = found {
            break f;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "no established http flow listed: {out}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(flow["src"], "10.0.255.1");
    let sport = flow["sport"].to_string();
    let live = http_trace(&sock, "10.0.255.1", &["--remote-port", &sport]);
    assert_eq!((live["verdict"].as_str(), live["by"].as_str()), (Some("allow"), Some("established")), "{live}");
    assert_eq!(live["conntrack"]["state"], "ESTABLISHED");
    assert_eq!(live["policy"]["verdict"], "allow");
    let denied = http_trace(&sock, "203.0.113.9", &[]);
    assert_eq!((denied["verdict"].as_str(), denied["by"].as_str()), (Some("deny"), Some("rule")), "{denied}");
    assert_eq!(denied["rule"], traced["rule"], "ctl trace and trace name the same rule");
    assert!(denied["conntrack"].is_null());
    let entries = settle_until("sgswitch_conntrack_entries{port=\"eni-web1\"}", |v| v >= 1.0);
    assert!(entries.is_some_and(|v| v >= 1.0), "tracked flows of eni-web1: {entries:?}");
    let (code, out, err) = ctl(&sock, &["conntrack", "flush", "--port", "eni-web1"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(!out.starts_with("flushed 0 "), "{out}");
    let (_, out, _) = ctl(&sock, &["conntrack", "list", "--port", "eni-web1", "--json"]);
    assert_eq!(out, "", "no flows after the flush");
    drop(held);
    let (code, _, err) = ctl(&sock, &["conntrack", "list", "--port", "eni-nosuch"]);
    assert_eq!(code, Some(1), "an unknown port is refused");
    assert!(err.contains("no port \"eni-nosuch\""), "{err}");

    // ctl diagnose: the live policy's answer, the same as the directory's.
    for flags in [
        &["--from", "eni-web1", "--to", "eni-db1", "--proto", "tcp", "--port", "5432", "--json"][..],
        &["--from", "203.0.113.9", "--to", "eni-web1"],
    ] {
        let (code, live, err) = ctl(&sock, &[&["diagnose"][..], flags].concat());
        assert_eq!(code, Some(0), "{err}");
        let offline = Command::new(env!("CARGO_BIN_EXE_sgswitch")).arg("diagnose").arg(dir.path()).args(flags).output().expect("diagnose");
        assert_eq!(live, String::from_utf8_lossy(&offline.stdout), "ctl diagnose {flags:?}");
    }
    let (code, _, err) = ctl(&sock, &["diagnose", "--from", "eni-nosuch", "--to", "eni-web1"]);
    assert_eq!(code, Some(1), "an unknown port is refused");
    assert!(err.contains("\"eni-nosuch\" is neither a port"), "{err}");

    // ctl reload: a new generation, counted.
    let (code, out, err) = ctl(&sock, &["reload"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim(), "reloaded: generation 2");
    assert_eq!(settle("sgswitch_config_generation", 2.0), Some(2.0));
    assert_eq!(settle("sgswitch_config_reloads_total{result=\"success\"}", 1.0), Some(1.0));
    assert_eq!(settle(&format!("sgswitch_rule_hits_total{{{selector}}}"), N as f64), Some(N as f64), "rule hits survive a reload");

    // A flood of denied flows: the log holds its rate; the rest is counted.
    const FLOOD: u64 = 3000;
    python("inet", UDP_FLOOD, &["10.0.0.11", "9999", &FLOOD.to_string()]);
    std::thread::sleep(Duration::from_millis(1500));
    let lines = std::fs::read_to_string(&flows).expect("flow log").lines().count() as u64;
    let allowed = BURST + RATE * (started.elapsed().as_secs() + 1);
    assert!(lines <= allowed, "{lines} flow-log lines in {:?}; the limit allows {allowed}", started.elapsed());
    assert!(lines > N, "some of the flood is logged ({lines} lines)");
    let want = (FLOOD - allowed) as f64 * 0.9;
    let limited = settle_until("sgswitch_flow_log_records_total{outcome=\"rate-limited\"}", |v| v >= want).unwrap_or(0.0);
    assert!(limited >= want, "rate-limited records: {limited}");

    // Every query of the Grafana dashboard is valid here, and the drop
    // panels have data.
    let dash: Value = serde_json::from_str(&std::fs::read_to_string(root().join("contrib/grafana/sgswitch.json")).expect("dashboard"))
        .expect("dashboard JSON");
    for p in dash["panels"].as_array().expect("panels") {
        for target in p["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr").replace("$__rate_interval", "15s");
            let r = query(&expr);
            if p["title"] == "Drops by reason" || p["title"] == "Top denied rules" {
                assert!(!r.is_empty(), "panel {} has no data: {expr}", p["title"]);
            }
        }
    }

    // SIGTERM: clean exit; the control socket is gone.
    assert!(sh(&format!("kill -TERM {}", switch.0.id())));
    let status = switch.0.wait().expect("wait");
    assert!(status.success(), "exit status {status}: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(!sock.exists(), "the control socket is removed at exit");
    let (code, _, err) = ctl(&sock, &["status"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("cannot reach the switch"), "{err}");
}

#[test]
fn ctl_without_a_running_switch_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("nothing.sock");
    for verb in [
        &["status"][..],
        &["reload"],
        &["conntrack", "list"],
        &["conntrack", "flush"],
        &["trace", "--port", "p", "--direction", "ingress", "--proto", "tcp", "--remote", "192.0.2.1", "--local-port", "22"],
    ] {
        let (code, out, err) = ctl(&sock, verb);
        assert_eq!(code, Some(2), "ctl {verb:?}");
        assert_eq!(out, "");
        assert!(
            err.contains(&format!("cannot reach the switch at {}", sock.display())) && err.contains("is `sgswitch run` running?"),
            "{err}"
        );
    }
}

#[test]
fn the_systemd_unit_passes_systemd_analyze() {
    assert!(sh("command -v systemd-analyze"), "needs systemd-analyze (Debian's systemd; scripts/setup.sh installs it)");
    // The unit names the installed paths; verify a copy that points at the
    // binary cargo built (verify checks that ExecStart exists).
    let unit = std::fs::read_to_string(root().join("contrib/systemd/sgswitch.service")).expect("read the unit");
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = dir.path().join("sgswitch.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/sgswitch", env!("CARGO_BIN_EXE_sgswitch"))).expect("write");
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&copy).env("SYSTEMD_LOG_LEVEL", "warning").output().expect("systemd-analyze");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {text}");
}
