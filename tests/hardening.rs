//! What an attacker or an unlucky operator does to a running switch, as
//! root on the namespace topology: hostile HTTP clients on the metrics
//! endpoint, slow and many clients on the control socket, a reload that
//! blocks, interfaces deleted under the switch, a SIGKILL, a file caught
//! half-written, and a large answer while other ports carry traffic.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

use sgswitch_tests::netns::{Kill, Topology, examples, http_get, in_ns, require_root, start_switch, threads};

const BIN: &str = env!("CARGO_BIN_EXE_sgswitch");

/// One raw HTTP exchange: `request` as written, the answer as read (up to
/// five seconds).
fn raw_http(addr: &str, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    s.write_all(request.as_bytes()).expect("write");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

/// Holds `n` TCP connections to `addr` open without a byte sent, from a
/// python3 process (which raises its own open-file limit), until killed.
fn idle_connections(addr: &str, n: usize) -> Kill {
    let (host, port) = addr.split_once(':').expect("host:port");
    let script = format!(
        "import resource,socket,time\nh=resource.getrlimit(resource.RLIMIT_NOFILE)[1]\nresource.setrlimit(resource.RLIMIT_NOFILE,(h,h))\nk=[]\nfor i in range({n}):\n  s=socket.socket()\n  s.setblocking(False)\n  try: s.connect(('{host}',{port}))\n  except BlockingIOError: pass\n  k.append(s)\nprint('held',flush=True)\ntime.sleep(600)\n"
    );
    let mut child = Command::new("python3").args(["-c", &script]).stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
    std::io::BufRead::read_line(&mut out, &mut line).expect("python3 says held");
    assert_eq!(line.trim(), "held", "python3 holds the connections");
    Kill(child)
}

#[test]
fn the_metrics_endpoint_survives_hostile_clients_and_keeps_answering() {
    require_root();
    let _topology = Topology::up();
    let metrics = "127.0.0.1:19481";
    let dir = examples(metrics, "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let switch = start_switch(BIN, dir.path(), &log);
    let pid = switch.0.id();
    let pings = || in_ns("inet", "ping -c 2 -i 0.2 -W 1 10.0.0.11");
    assert!(pings(), "ping before");

    // A declared body of 100 GB: refused without reading or allocating it.
    let answer = raw_http(metrics, "GET /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000000\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    let answer = raw_http(metrics, "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    let answer = raw_http(metrics, "GET / HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    // A head far over the limit.
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Filler: {}\r\n\r\n", "a".repeat(1 << 20));
    let mut s = TcpStream::connect(metrics).expect("connect");
    let _ = s.write_all(huge.as_bytes());
    drop(s);
    assert!(http_get(metrics, "/metrics").is_some_and(|m| m.contains("sgswitch_build_info")), "still answering");

    // 2,000 connections that never send a byte: the switch keeps forwarding
    // and answering, with no thread per connection.
    let before = threads(pid);
    let idle = idle_connections(metrics, 2000);
    std::thread::sleep(Duration::from_millis(500));
    let t = Instant::now();
    let scraped = http_get(metrics, "/metrics");
    assert!(scraped.is_some_and(|m| m.contains("sgswitch_build_info")), "a scrape while 2,000 clients are idle");
    assert!(t.elapsed() < Duration::from_secs(2), "the scrape took {:?}", t.elapsed());
    assert!(pings(), "ping while 2,000 clients are idle");
    assert_eq!(threads(pid), before, "no thread per connection");
    drop(idle);

    // Slow clients: a byte every second on 50 connections.
    let slow = Command::new("python3")
        .args([
            "-c",
            &format!(
                "import socket,time\nk=[socket.create_connection(('127.0.0.1',{}))for i in range(50)]\nfor i in range(8):\n  for s in k:\n    try: s.send(b'G')\n    except OSError: pass\n  time.sleep(1)\n",
                metrics.rsplit(':').next().expect("port")
            ),
        ])
        .spawn()
        .expect("python3");
    let slow = Kill(slow);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(http_get(metrics, "/metrics").is_some(), "a scrape among slow clients");
    assert_eq!(threads(pid), before, "no thread per slow client");
    drop(slow);
    assert!(std::fs::read_to_string(&log).expect("log").lines().all(|l| !l.contains("panicked")), "no panic");
    drop(switch);
}

fn ctl(sock: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String, Duration) {
    let t = Instant::now();
    let o = Command::new(BIN).args(["ctl", "--socket", sock.to_str().expect("utf-8")]).args(args).output().expect("ctl");
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into_owned(), String::from_utf8_lossy(&o.stderr).into_owned(), t.elapsed())
}

fn count(log: &std::path::Path, text: &str) -> usize {
    std::fs::read_to_string(log).unwrap_or_default().matches(text).count()
}

#[test]
fn the_control_socket_serves_everyone_while_clients_stall_and_a_reload_fails_and_sigterm_exits() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19482", "");
    let sock = dir.path().join("control.sock");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let mut switch = start_switch(BIN, dir.path(), &log);
    let pid = switch.0.id();

    // 500 clients that never write, and one that writes a byte every 1.5 s.
    let hold = format!(
        "import resource,socket,time\nh=resource.getrlimit(resource.RLIMIT_NOFILE)[1]\nresource.setrlimit(resource.RLIMIT_NOFILE,(h,h))\nk=[]\nfor i in range(500):\n  s=socket.socket(socket.AF_UNIX)\n  s.connect('{p}')\n  k.append(s)\nslow=socket.socket(socket.AF_UNIX)\nslow.connect('{p}')\nprint('held',flush=True)\nfor i in range(400):\n  try: slow.send(b' ')\n  except OSError: pass\n  time.sleep(1.5)\n",
        p = sock.display()
    );
    let mut child = Command::new("python3").args(["-c", &hold]).stdout(std::process::Stdio::piped()).spawn().expect("python3");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("held");
    assert_eq!(line.trim(), "held", "python3 holds the clients");
    let _clients = Kill(child);
    let threads_before = sgswitch_tests::netns::threads(pid);
    let (code, out, err, took) = ctl(&sock, &["status"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("generation 1"), "{out}");
    assert!(took < Duration::from_secs(2), "status took {took:?} among 501 stalled clients");

    // host.toml replaced by a FIFO: a reload is refused at once, naming it,
    // and status still answers.
    let host = dir.path().join("host.toml");
    let saved = std::fs::read_to_string(&host).expect("read host.toml");
    std::fs::remove_file(&host).expect("rm");
    assert!(Command::new("mkfifo").arg(&host).status().expect("mkfifo").success());
    let (code, _, err, took) = ctl(&sock, &["reload"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("host.toml: is not a regular file"), "{err}");
    assert!(took < Duration::from_secs(5), "the refused reload took {took:?}");
    let (code, out, _, _) = ctl(&sock, &["status"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("generation 1"), "the running configuration stays: {out}");
    assert!(sgswitch_tests::netns::threads(pid) <= threads_before + 4, "no thread per client");
    std::fs::remove_file(&host).expect("rm fifo");
    std::fs::write(&host, saved).expect("restore host.toml");

    // SIGTERM: the process exits within its bound, detaching everything.
    let t = Instant::now();
    assert!(sgswitch_tests::netns::sh(&format!("kill -TERM {pid}")));
    let status = switch.0.wait().expect("wait");
    assert!(t.elapsed() < Duration::from_secs(5), "stopped in {:?}", t.elapsed());
    assert!(status.success(), "{status}");
    assert!(!sgswitch_tests::netns::sh("ip link show | grep -q ' xdp'"), "an XDP program is left on an interface");
    assert!(!sock.exists(), "the control socket is removed");
}

#[test]
fn a_file_caught_half_written_waits_for_the_rest_and_watch_false_waits_for_a_signal() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19483", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let switch = start_switch(BIN, dir.path(), &log);
    let web = dir.path().join("groups/sg-web.toml");
    let full = std::fs::read_to_string(&web).expect("read sg-web").replace("http from anywhere", "http from anywhere (edited)");
    // Cut inside a rule: on its own it does not load.
    let half =
        &full[..full.find("[[ingress]]\npriority = 1\naction = \"allow\"\nprotocol = \"tcp\"\nports = \"443/443\"").expect("a rule") + 40];
    {
        let mut f = std::fs::File::create(&web).expect("open");
        f.write_all(half.as_bytes()).expect("write half");
        f.flush().expect("flush");
        std::thread::sleep(Duration::from_millis(300));
        f.write_all(&full.as_bytes()[half.len()..]).expect("write the rest");
    }
    let t = Instant::now();
    while count(&log, "reloaded") == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(count(&log, "reloaded"), 1, "one reload: {}", std::fs::read_to_string(&log).unwrap_or_default());
    assert_eq!(count(&log, "refused"), 0, "the half-written file was never loaded: {}", std::fs::read_to_string(&log).unwrap_or_default());
    drop(switch);

    // watch = false: a file change waits for SIGHUP.
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    std::fs::write(&host, format!("{text}\n[reload]\nwatch = false\n")).expect("write host.toml");
    let log = logs.path().join("switch2.log");
    let switch = start_switch(BIN, dir.path(), &log);
    std::fs::write(&web, full.replace("(edited)", "(edited again)")).expect("write sg-web");
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(count(&log, "reloaded"), 0, "no reload without a signal");
    assert!(sgswitch_tests::netns::sh(&format!("kill -HUP {}", switch.0.id())));
    let t = Instant::now();
    while count(&log, "reloaded") == 0 && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(count(&log, "reloaded (SIGHUP)"), 1, "{}", std::fs::read_to_string(&log).unwrap_or_default());
}

#[test]
fn after_sigkill_no_program_stays_the_next_start_forwards_and_a_regular_file_is_never_taken_for_the_socket() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19484", "");
    let sock = dir.path().join("control.sock");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let first = start_switch(BIN, dir.path(), &log);
    assert!(sgswitch_tests::netns::sh("ip link show sgs-uplink | grep -q ' xdp'"), "the switch's program is attached");
    // Dropping the handle kills with SIGKILL: the program goes with the
    // process (a BPF link), the socket file stays.
    drop(first);
    let t = Instant::now();
    while sgswitch_tests::netns::sh("ip link show | grep -q ' xdp'") && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!sgswitch_tests::netns::sh("ip link show | grep -q ' xdp'"), "SIGKILL left a program attached");
    assert!(sock.exists(), "the socket file stays");
    let log2 = logs.path().join("switch2.log");
    let mut switch = start_switch(BIN, dir.path(), &log2);
    assert!(in_ns("inet", "ping -c 2 -i 0.2 -W 1 10.0.0.11"), "forwarding after the restart");
    assert!(sgswitch_tests::netns::sh(&format!("kill -TERM {}", switch.0.id())));
    assert!(switch.0.wait().expect("wait").success());
    assert!(!sgswitch_tests::netns::sh("ip link show | grep -q ' xdp'"), "no program left after a clean stop");

    // A regular file where the control socket goes: refused, and kept.
    std::fs::write(&sock, "precious").expect("write");
    let out = Command::new(BIN).args(["run", dir.path().to_str().expect("utf-8")]).output().expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("exists and is not a socket; it is left alone"), "{stderr}");
    assert_eq!(std::fs::read_to_string(&sock).expect("still there"), "precious");
}

/// RTTs in ms of `count` pings from namespace `ns` to `to`, 10 ms apart.
fn rtts(ns: &str, to: &str, count: usize) -> Vec<f64> {
    let out = Command::new("ip")
        .args(["netns", "exec", &format!("sgs-{ns}"), "ping", "-n", "-i", "0.01", "-W", "1", "-c", &count.to_string(), to])
        .output()
        .expect("ping");
    let mut v: Vec<f64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split("time=").nth(1)?.split_whitespace().next()?.parse().ok())
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

fn p99(v: &[f64]) -> f64 {
    v.get(v.len().saturating_sub(1).min(v.len() * 99 / 100)).copied().unwrap_or(f64::MAX)
}

#[test]
fn listing_a_large_connection_table_does_not_stall_other_ports() {
    use sgswitch_tests::frames::{self, Ends, UPLINK_MAC};
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19485", "");
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    std::fs::write(&host, text.replace("per_port_capacity = 65536", "per_port_capacity = 200000")).expect("write host.toml");
    let sock = dir.path().join("control.sock");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _switch = start_switch(BIN, dir.path(), &log);
    // 125,000 SYNs to web1:80 from 125 addresses: 125,000 flows.
    let mut syns = Vec::with_capacity(125_000);
    for a in 0..125u16 {
        let src = format!("192.0.2.{}", a + 1);
        let e = Ends {
            src_mac: UPLINK_MAC,
            dst_mac: [2, 0, 0, 0, 0, 0x11],
            src: src.parse().expect("ip"),
            dst: "10.0.0.11".parse().expect("ip"),
        };
        syns.extend((0..1000u16).map(|i| frames::tcp(&e, 10_000 + i, 80, "S", 1, 0, b"")));
    }
    sgswitch_tests::netns::send_frames("sgs-inet", &syns, 1);
    std::thread::sleep(Duration::from_millis(500));
    let (code, out, err, _) = ctl(&sock, &["conntrack", "list", "--port", "eni-web1", "--limit", "1", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let _ = out;
    let status = ctl(&sock, &["status", "--json"]).1;
    let v: serde_json::Value = serde_json::from_str(&status).expect("status json");
    let flows =
        v["ports"].as_array().and_then(|p| p.iter().find(|p| p["id"] == "eni-web1")).map_or(0, |p| p["flows"].as_u64().unwrap_or(0));
    assert!(flows >= 100_000, "{flows} flows");

    // web2's groups allow all egress; the answers come back by state.
    let quiet = rtts("web2", "10.0.255.1", 200);
    // While web2 pings: whole listings, then short ones in a row (each
    // still counts every flow of the table).
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lister = {
        let (sock, done) = (sock.clone(), std::sync::Arc::clone(&done));
        std::thread::spawn(move || {
            let (code, out, err, took) = ctl(&sock, &["conntrack", "list", "--limit", "200000", "--json"]);
            assert_eq!(code, Some(0), "{err}");
            let listed = out.lines().count();
            eprintln!("listed {listed} flows in {took:?}");
            let mut short = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) {
                let (code, _, err, _) = ctl(&sock, &["conntrack", "list", "--limit", "1"]);
                assert_eq!(code, Some(0), "{err}");
                short += 1;
            }
            eprintln!("and {short} short listings");
            listed
        })
    };
    let busy = rtts("web2", "10.0.255.1", 400);
    done.store(true, std::sync::atomic::Ordering::Relaxed);
    let listed = lister.join().expect("lister");
    assert!(listed >= 100_000, "listed {listed}");
    eprintln!("web2 -> inet ping p99: {:.2} ms quiet, {:.2} ms while listing {flows} flows", p99(&quiet), p99(&busy));
    assert!(quiet.len() >= 190 && busy.len() >= 380, "pings answered: {} quiet, {} busy", quiet.len(), busy.len());
    assert!(p99(&busy) < p99(&quiet) + 5.0, "p99 {:.2} ms while listing against {:.2} ms quiet", p99(&busy), p99(&quiet));
}

fn netns(args: &str) -> bool {
    sgswitch_tests::netns::sh(&format!("{}/scripts/netns.sh {args}", sgswitch_tests::netns::root().display()))
}

/// Pings `to` from `ns` once a tenth of a second until one answers;
/// how long that took, if within `limit`.
fn ping_resumes(ns: &str, to: &str, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    while t.elapsed() < limit {
        if in_ns(ns, &format!("ping -c 1 -W 0.1 {to}")) {
            return Some(t.elapsed());
        }
    }
    None
}

fn status_json(sock: &std::path::Path) -> serde_json::Value {
    let (code, out, err, _) = ctl(sock, &["status", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    serde_json::from_str(&out).expect("status json")
}

fn port_link(v: &serde_json::Value, id: &str) -> (String, String) {
    let p = v["ports"].as_array().and_then(|ps| ps.iter().find(|p| p["id"] == id)).expect("the port");
    (p["link"].as_str().unwrap_or("?").to_owned(), p["reason"].as_str().unwrap_or("?").to_owned())
}

#[test]
fn a_tap_deleted_and_made_again_comes_back_and_so_does_the_uplink() {
    require_root();
    let _topology = Topology::up();
    let metrics = "127.0.0.1:19486";
    let dir = examples(metrics, "");
    let sock = dir.path().join("control.sock");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _switch = start_switch(BIN, dir.path(), &log);
    assert!(ping_resumes("inet", "10.0.0.11", Duration::from_secs(2)).is_some(), "ping before");

    // The VM stops: its tap is gone. The port is down, with the reason,
    // in status and metrics, and the log says so once.
    assert!(sgswitch_tests::netns::sh("ip link del tap-web1"));
    std::thread::sleep(Duration::from_millis(1500));
    let (link, reason) = port_link(&status_json(&sock), "eni-web1");
    assert_eq!(link, "down");
    assert!(reason.contains("tap-web1: no such network interface"), "{reason}");
    let page = http_get(metrics, "/metrics").expect("metrics");
    assert!(page.contains("sgswitch_interface_up{interface=\"tap-web1\",port=\"eni-web1\"} 0"), "{page}");
    assert!(page.contains("sgswitch_interface_up{interface=\"tap-web2\",port=\"eni-web2\"} 1"));
    assert_eq!(count(&log, "tap-web1: down"), 1, "logged once: {}", std::fs::read_to_string(&log).unwrap_or_default());

    // It starts again: a new tap under the same name. Traffic resumes
    // within a second.
    assert!(netns("recreate web1"));
    let t = ping_resumes("inet", "10.0.0.11", Duration::from_secs(3));
    assert!(t.is_some_and(|t| t < Duration::from_secs(1)), "ping resumed after {t:?}");
    assert_eq!(port_link(&status_json(&sock), "eni-web1").0, "up");
    assert_eq!(count(&log, "tap-web1: interface back"), 1);
    assert!(ping_resumes("web2", "10.0.255.1", Duration::from_secs(1)).is_some(), "the other ports carried on");

    // The uplink too: made again, every socket of the loop (whose UMEM the
    // uplink's socket registered) made anew, so within two seconds.
    assert!(netns("recreate uplink"));
    let t = ping_resumes("inet", "10.0.0.11", Duration::from_secs(4));
    eprintln!("ping over the new uplink after {t:?}");
    assert!(t.is_some_and(|t| t < Duration::from_secs(2)), "ping over the new uplink after {t:?}");
    assert!(ping_resumes("inet", "10.0.0.12", Duration::from_secs(1)).is_some());
    let v = status_json(&sock);
    assert_eq!(v["uplink"]["link"], "up");
    // And a VM restart after that still works (the UMEM was made anew).
    assert!(netns("recreate web1"));
    let t = ping_resumes("inet", "10.0.0.11", Duration::from_secs(3));
    assert!(t.is_some_and(|t| t < Duration::from_secs(1)), "ping after a restart on the new uplink: {t:?}");
    assert!(std::fs::read_to_string(&log).expect("log").lines().all(|l| !l.contains("panicked")));
}
