//! The port path under the conditions that judge a switch, as root, on the
//! veth topology of `scripts/netns.sh`: the first frames after the switch
//! says it runs, and a flood on the uplink at the generator's full rate
//! while VMs keep talking.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sgswitch_tests::netns::{Kill, Topology, examples, http_get, require_root, sample, sh};
use sgswitch_tests::xdpgen::{Generator, Traffic, Via};

/// Starts the switch on `dir` and returns once its log says it runs,
/// looking every millisecond (the test is about what comes right after).
fn start(dir: &std::path::Path, log: &std::path::Path) -> Kill {
    let child = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["run", dir.to_str().expect("utf-8")])
        .stderr(std::fs::File::create(log).expect("log"))
        .spawn()
        .expect("start sgswitch run");
    let k = Kill(child);
    let t = Instant::now();
    while !std::fs::read_to_string(log).is_ok_and(|s| s.contains("running on")) {
        assert!(t.elapsed() < Duration::from_secs(20), "switch did not start: {}", std::fs::read_to_string(log).unwrap_or_default());
        std::thread::sleep(Duration::from_millis(1));
    }
    k
}

/// The round-trip time `ping` reports for one echo, in ms.
fn ping_ms(ns: &str, to: &str) -> Option<f64> {
    let out = Command::new("ip").args(["netns", "exec", ns, "ping", "-n", "-c", "1", "-W", "1", to]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("time=")? + 5;
    text[at..].split_whitespace().next()?.parse().ok()
}

#[test]
fn the_first_ping_after_running_is_answered_within_50_ms() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19481", "");
    // A table of four million flows (500 MB) is made and faulted in before
    // the line, not after.
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    assert!(text.contains("capacity = 1048576"), "examples/host.toml sets a capacity");
    std::fs::write(&host, text.replace("capacity = 1048576", "capacity = 4194304")).expect("write host.toml");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _switch = start(dir.path(), &log);
    // The VM resolves its gateway (ARP through the switch) and pings it.
    let ms = ping_ms("sgs-web1", "10.0.255.1");
    assert!(
        ms.is_some_and(|m| m < 50.0),
        "first ping after \"running on\": {ms:?} ms\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
}

/// One TCP connection from web1 to db1:5432 (an echo server there), held
/// open; each line written must come back. Prints one line per exchange:
/// `ok <ms>`, `timeout` or `error`.
const VM_CLIENT: &str = r#"
import socket, sys, time
c = socket.create_connection(('10.0.1.21', 5432), timeout=3)
c.settimeout(1)
print('connected', flush=True)
for line in sys.stdin:
    t = time.monotonic()
    try:
        c.sendall(line.encode())
        d = c.recv(4096)
        print('ok %.1f' % ((time.monotonic() - t) * 1000) if d == line.encode() else 'bad', flush=True)
    except socket.timeout:
        print('timeout', flush=True)
    except OSError as e:
        print('error', e, flush=True)
"#;

const ECHO_SERVER: &str = "import socket,threading\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',5432));s.listen()\ndef h(c):\n  while True:\n    d=c.recv(4096)\n    if not d: break\n    c.sendall(d)\nwhile True:\n  c,_=s.accept();threading.Thread(target=h,args=(c,),daemon=True).start()";

/// A flood for 4 s from `eth0` of namespace `ns`, on core 1 (the one the
/// switch's loop does not use): UDP to port 9999, a new flow every frame;
/// the thread returns the frames sent and how the generator sent them.
///
/// The flooding host's `eth0` gets a FIFO queue, as a host's NIC has
/// (veth has none): where the kernel refuses live frames, the generator
/// sends skbs, a veth whose peer's ring is full stops its queue, and
/// without a qdisc the host's own packets (the pings) would be dropped
/// before they reach the wire, whatever the switch does.
fn flood_from(ns: &str, dst_mac: [u8; 6], src: &str, dst: &str) -> std::thread::JoinHandle<(u64, Via)> {
    assert!(sh(&format!("ip netns exec {ns} tc qdisc replace dev eth0 root pfifo limit 1000")), "a queue on {ns}'s eth0");
    let (src, dst) = (src.parse().expect("ip"), dst.parse().expect("ip"));
    in_namespace(ns, 1, move || {
        let mac = std::fs::read_to_string("/sys/class/net/eth0/address").expect("eth0's address");
        let src_mac: Vec<u8> = mac.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect();
        let t = Traffic { src_mac: src_mac.try_into().expect("a MAC"), dst_mac, src, dst, dport: 9999, flows: None, stamp: false };
        let g = Generator::new("eth0", &t).expect("a generator");
        (g.flood(Duration::from_secs(4)).expect("flood"), g.sends_via())
    })
}

/// How many replies `ping -q` says it received.
fn ping_received(text: &str) -> u32 {
    text.split(", ").find(|p| p.ends_with("received")).and_then(|p| p.split_whitespace().next()).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// Runs `f` on a thread inside network namespace `ns`, pinned to `core`.
fn in_namespace<T: Send + 'static>(ns: &str, core: usize, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("the namespace");
        // SAFETY: setns on this thread only, with a namespace descriptor
        // that stays open across the call.
        #[allow(unsafe_code, reason = "setns and sched_setaffinity on the calling thread")]
        unsafe {
            assert_eq!(libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET), 0, "setns {path}");
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set);
        }
        f()
    })
}

/// The link watcher calls its prompt (which rings every poll loop's
/// doorbell, so that a quiet loop looks at its interfaces at once rather
/// than at its next timer) on each link event: a veth pair made in a
/// namespace of the test's own prompts it, and counts. The stop ends it.
#[test]
fn a_link_event_prompts_the_watcher_at_once() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};
    require_root();
    let ns = "sgs-links";
    assert!(sh(&format!("ip netns del {ns} 2>/dev/null; ip netns add {ns}")), "namespace");
    let (stop, events) = (Arc::new(sgswitch::control::stop::Stop::new()), Arc::new(AtomicU64::new(0)));
    let (tx, rx) = std::sync::mpsc::channel();
    let watcher = {
        let (stop, events) = (Arc::clone(&stop), Arc::clone(&events));
        in_namespace(ns, 0, move || {
            let prompt = || {
                let _ = tx.send(Instant::now());
            };
            sgswitch::port::xdp::sys::watch_links(stop.halt(), &events, &prompt).map_err(|e| e.to_string())
        })
    };
    // The watcher's socket is bound once it has been prompted by nothing
    // for a moment; an interface made before would go unseen.
    std::thread::sleep(Duration::from_millis(300));
    let made = Instant::now();
    assert!(sh(&format!("ip -n {ns} link add sgs-l0 type veth peer name sgs-l1")), "a veth pair");
    let prompted = rx.recv_timeout(Duration::from_secs(5));
    let stopping = Instant::now();
    stop.set();
    let ended = watcher.join().expect("the watcher");
    let took = stopping.elapsed();
    sh(&format!("ip netns del {ns}"));
    assert_eq!(ended, Ok(()), "the watcher ran");
    let at = prompted.expect("a prompt for the new interface");
    assert!(at >= made, "prompted by the event, not before it");
    assert!(events.load(Ordering::Relaxed) >= 1, "and counted");
    assert!(took < Duration::from_secs(1), "the stop ended the watcher's wait: {took:?}");
}

#[test]
fn a_flood_on_the_uplink_leaves_vm_traffic_and_allowed_flows_working() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19482", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let switch = start(dir.path(), &log);
    flood_leaves_traffic_working("127.0.0.1:19482");
    drop(switch);
}

/// The scheduling policy of thread `pid`.
fn policy(pid: &str) -> Option<i32> {
    sgswitch::port::xdp::napi::policy(pid.parse().expect("a pid"))
}

/// The same flood with the uplink's receive work in NAPI threads pinned to
/// the loop's core, as a fair measurement (and a host that isolates the
/// switch's core) has it: they yield to the loop (`napi_threads = "yield"`,
/// the default), which gives them their turn, and the VMs' traffic and the
/// allowed flow get through as before. The threads' scheduling is put
/// back when the switch stops.
#[test]
fn a_flood_with_the_uplinks_napi_threads_on_the_loops_core() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19483", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let (mut switch, pids) = start_with_yielding_uplink(dir.path(), &log, "127.0.0.1:19483");
    flood_leaves_traffic_working("127.0.0.1:19483");

    // A clean stop puts the threads back.
    assert!(sh(&format!("kill -TERM {}", switch.0.id())));
    let status = switch.0.wait().expect("the switch stops");
    assert!(status.success(), "{status:?}");
    for p in &pids {
        assert_eq!(policy(p), Some(libc::SCHED_OTHER), "thread {p} is put back when the switch stops");
    }
}

/// The uplink's NAPI threads, pinned to the loop's core right after the
/// start, are taken before any frame comes: a socket waiting for frames to
/// name its NAPI context (to be busy polled) leaves its receive work to
/// the kernel's own context meanwhile. The loop used to wait for the
/// frames, then for its next second; a flood from the start meanwhile
/// found the threads at equal weight with the loop, taking most of the
/// core to drop what the loop had no time for (300,000-465,000 frames lost
/// to empty fill rings in the bench's new-flow point; 0-7,000 now).
#[test]
fn the_uplinks_napi_threads_are_taken_before_the_first_frame() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19485", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let (_switch, pids) = start_with_pinned_uplink_napi(dir.path(), &log);
    let page = metrics_when_both_yield("127.0.0.1:19485", Duration::from_secs(3));
    let pending = page.lines().filter(|l| l.starts_with("sgswitch_xsk_info{") && l.contains("sgs-uplink")).collect::<Vec<_>>();
    assert_eq!(
        page.matches("sgswitch_napi_thread_yielded_info{").count(),
        2,
        "both threads taken within 3 s, no frame sent (the uplink's sockets: {pending:?}):\n{}",
        std::fs::read_to_string(&log).unwrap_or_default()
    );
    for p in &pids {
        assert_eq!(policy(p), Some(libc::SCHED_IDLE), "thread {p}");
    }
}

/// The metrics page once both of the uplink's NAPI threads yield to the
/// loop, or as it is after `within`.
fn metrics_when_both_yield(metrics: &str, within: Duration) -> String {
    let t = Instant::now();
    loop {
        let page = http_get(metrics, "/metrics").unwrap_or_default();
        if page.matches("sgswitch_napi_thread_yielded_info{").count() == 2 || t.elapsed() >= within {
            return page;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Starts the switch with the uplink in threaded NAPI and pins the
/// uplink's NAPI threads (at the kernel's default scheduling) to the
/// loop's core; returns their pids.
fn start_with_pinned_uplink_napi(dir: &std::path::Path, log: &std::path::Path) -> (Kill, Vec<String>) {
    assert!(sh("ethtool -K sgs-uplink gro on >/dev/null && echo 1 > /sys/class/net/sgs-uplink/threaded"), "threaded NAPI on the uplink");
    let switch = start(dir, log);
    let out = Command::new("pgrep").arg("^napi/sgs-uplink-").output().expect("pgrep");
    let pids: Vec<String> = String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_owned).collect();
    assert_eq!(pids.len(), 2, "a NAPI thread per queue of the uplink: {pids:?}");
    for p in &pids {
        assert_eq!(policy(p), Some(libc::SCHED_OTHER));
        assert!(sh(&format!("taskset -pc 0 {p}")), "pinned to the loop's core");
    }
    (switch, pids)
}

/// Starts the switch with the uplink in threaded NAPI, pins the uplink's
/// NAPI threads to the loop's core, and returns once both yield to the loop
/// (with their pids).
fn start_with_yielding_uplink(dir: &std::path::Path, log: &std::path::Path, metrics: &str) -> (Kill, Vec<String>) {
    let (switch, pids) = start_with_pinned_uplink_napi(dir, log);
    // The loop takes them at its next second, no frame needed.
    let page = metrics_when_both_yield(metrics, Duration::from_secs(10));
    let yielded: Vec<&str> = page.lines().filter(|l| l.starts_with("sgswitch_napi_thread_yielded_info{")).collect();
    assert_eq!(yielded.len(), 2, "both threads yield to the loop:\n{}", std::fs::read_to_string(log).unwrap_or_default());
    for p in &pids {
        assert_eq!(policy(p), Some(libc::SCHED_IDLE), "thread {p}");
    }
    assert!(std::fs::read_to_string(log).unwrap_or_default().contains("runs at idle priority"), "the log says so");

    (switch, pids)
}

/// A flood from a VM (web1) keeps the loop busy without a break; the
/// uplink's NAPI threads, which yield to the loop, still get their turn
/// (the loop steps aside after a millisecond busy, counted): pings from
/// the uplink to another VM (web2) are answered. Here the loop also idles
/// now and then (web1's frames reach it through the generator's core), so
/// the pings alone would get through without the step aside too; the count
/// shows it happens. Where the kernel refuses live frames, the AF_PACKET
/// generator's frames are received on its own core, which cannot make them
/// as fast as the loop takes them: the loop idles between them and need
/// not step aside (one run in three here). There the count is printed, not
/// asserted; the engine's unit test covers when the loop steps aside.
#[test]
fn a_loop_kept_busy_by_a_vm_still_gives_the_uplinks_napi_threads_their_turn() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19484", "");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let (_switch, _pids) = start_with_yielding_uplink(dir.path(), &log, "127.0.0.1:19484");
    let flood = flood_from("sgs-web1", [2, 0xee, 0, 0, 0, 1], "10.0.0.11", "198.51.100.1");
    std::thread::sleep(Duration::from_millis(500));
    let ping = Command::new("ip")
        .args(["netns", "exec", "sgs-inet", "ping", "-n", "-q", "-c", "20", "-i", "0.1", "-W", "1", "10.0.0.12"])
        .output()
        .expect("ping");
    let (sent, via) = flood.join().expect("the flood");
    let text = String::from_utf8_lossy(&ping.stdout);
    let received = ping_received(&text);
    let page = http_get("127.0.0.1:19484", "/metrics").expect("metrics");
    let stepped = sample(&page, "sgswitch_loop_stepped_aside_total{loop=\"0\"}");
    let busy = sample(&page, "sgswitch_loop_iterations_total{loop=\"0\",state=\"busy\"}");
    eprintln!("vm flood: {sent} frames offered ({via:?}); loop busy {busy} iterations, stepped aside {stepped} times; pings: {text}");
    assert!(sent > 1_000_000, "the generator flooded: {sent} frames");
    if via == Via::LiveFrames {
        assert!(stepped > 0, "the loop, busy without a break, stepped aside: {stepped}");
    }
    assert!(received >= 16, "pings from the uplink kept getting answers: {received} of 20\n{text}");
}

/// A new-flow flood toward web1 from the uplink (denied, so every frame is
/// judged), while web1 and db1 keep a TCP connection echoing and pings
/// from the uplink to web1 keep being answered.
fn flood_leaves_traffic_working(metrics: &str) {
    let _server = Kill(Command::new("ip").args(["netns", "exec", "sgs-db1", "python3", "-c", ECHO_SERVER]).spawn().expect("echo server"));
    std::thread::sleep(Duration::from_millis(300));
    let mut client = Command::new("ip")
        .args(["netns", "exec", "sgs-web1", "python3", "-c", VM_CLIENT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("client");
    let mut out = BufReader::new(client.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "connected", "web1 connects to db1");

    // The flood: a new flow every frame toward web1 from the internet, UDP
    // that web1's groups deny, so every frame is judged by the rules: what
    // an attacker sends. The generator runs in the internet host's
    // namespace on the core the switch's loop does not use.
    let flood = flood_from("sgs-inet", [2, 0, 0, 0, 0, 0x11], "198.51.100.1", "10.0.0.11");
    std::thread::sleep(Duration::from_millis(500));
    // During the flood: the VMs' connection keeps echoing, and pings from
    // the internet to web1 (allowed) keep being answered.
    let pinger = Command::new("ip")
        .args(["netns", "exec", "sgs-inet", "ping", "-n", "-q", "-c", "20", "-i", "0.1", "-W", "1", "10.0.0.11"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("ping");
    let stdin = client.stdin.as_mut().expect("stdin");
    let mut answers = Vec::new();
    for i in 0..20 {
        writeln!(stdin, "exchange {i}").expect("write");
        line.clear();
        out.read_line(&mut line).expect("read");
        answers.push(line.trim().to_owned());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ping = pinger.wait_with_output().expect("ping");
    let (sent, _) = flood.join().expect("the flood");
    let _ = client.kill();
    let _ = client.wait();
    let ping_text = String::from_utf8_lossy(&ping.stdout);
    let received = ping_received(&ping_text);
    let page = http_get(metrics, "/metrics").expect("metrics");
    let dropped = sample(&page, "sgswitch_packets_total{port=\"eni-web1\",direction=\"ingress\",action=\"drop\",reason=\"default\"}");
    eprintln!("flood: {sent} frames offered, {dropped} judged and dropped; echoes {answers:?}; pings: {ping_text}");
    assert!(sent > 1_000_000, "the generator flooded: {sent} frames");
    assert!(dropped > 100_000, "the switch judged the flood: {dropped} dropped");
    let ok = answers.iter().filter(|a| a.starts_with("ok")).count();
    assert!(ok >= 19, "the VMs' connection kept working through the flood: {answers:?}");
    assert!(received >= 16, "pings from the uplink kept getting answers: {received} of 20\n{ping_text}");
}

/// Counts UDP datagrams to port 7000 (the first awaited for 5 s) until
/// half a second passes without one, then prints the count.
const UDP_COUNTER: &str = "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.setsockopt(socket.SOL_SOCKET,socket.SO_RCVBUF,8<<20)\ns.bind(('0.0.0.0',7000))\ns.settimeout(5)\nn=0\nprint('ready',flush=True)\ntry:\n  while True:\n    s.recv(2048); n+=1; s.settimeout(0.5)\nexcept socket.timeout:\n  pass\nprint(n,flush=True)";

/// Sends `argv[1]` datagrams from 198.51.100.7:40000 to web1:7000, one
/// every 0.5 ms.
const UDP_SENDER: &str = "import socket,sys,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('198.51.100.7',40000))\nfor i in range(int(sys.argv[1])):\n  s.sendto(b'x'*32,('10.0.0.11',7000)); time.sleep(0.0005)";

/// `n` datagrams of one flow from the internet to web1:7000: how many web1
/// received.
fn udp_flow(n: usize) -> usize {
    let mut counter = Command::new("ip")
        .args(["netns", "exec", "sgs-web1", "python3", "-c", UDP_COUNTER])
        .stdout(Stdio::piped())
        .spawn()
        .expect("counter");
    let mut out = BufReader::new(counter.stdout.take().expect("stdout"));
    let mut line = String::new();
    out.read_line(&mut line).expect("read");
    assert_eq!(line.trim(), "ready");
    let sent =
        Command::new("ip").args(["netns", "exec", "sgs-inet", "python3", "-c", UDP_SENDER, &n.to_string()]).status().expect("sender");
    assert!(sent.success());
    line.clear();
    out.read_line(&mut line).expect("read");
    let _ = counter.wait();
    line.trim().parse().expect("a count")
}

/// The XDP fast path on the veth topology (`fast_path = "on"`: web1's
/// namespace runs GRO on its end, so its veth takes redirected frames),
/// with a UDP timeout of 3 s. An allowed UDP flow from the uplink for
/// longer than that: every datagram arrives, all but the first few by the
/// interfaces' programs, the port's counters count every one, and the
/// flow's connection entry lives on throughout (the first datagram alone
/// is judged by a rule). Idle past its timeout, the flow leaves the
/// programs and the table. Sent again, then again after web1's veth was
/// deleted and made again (a new index): every datagram arrives. Then the
/// rule is taken away by a reload: the flow stops at once, though its
/// frames were the programs' a moment before.
#[test]
fn an_established_udp_flow_takes_the_fast_path_and_a_reload_that_denies_it_stops_it() {
    require_root();
    let _topology = Topology::up();
    let dir = examples("127.0.0.1:19483", "\n[conntrack.timeouts]\nudp = 3\n");
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("read host.toml");
    std::fs::write(&host, text.replace("busy_poll = false", "busy_poll = false\nfast_path = \"on\"")).expect("write host.toml");
    let web = dir.path().join("groups/sg-web.toml");
    let groups = std::fs::read_to_string(&web).expect("sg-web");
    let rule = "\n[[ingress]]\npriority = 1\naction = \"allow\"\nprotocol = \"udp\"\nports = \"7000/7000\"\nsource = \"198.51.100.0/24\"\n";
    std::fs::write(&web, format!("{groups}{rule}")).expect("sg-web with udp");
    assert!(sgswitch_tests::netns::sh("ip netns exec sgs-web1 ethtool -K eth0 gro on >/dev/null"), "GRO on web1's end");
    let logs = tempfile::tempdir().expect("tempdir");
    let log = logs.path().join("switch.log");
    let _switch = start(dir.path(), &log);
    let metric = |name: &str| sample(&http_get("127.0.0.1:19483", "/metrics").expect("metrics"), name);
    let established = "sgswitch_packets_total{port=\"eni-web1\",direction=\"ingress\",action=\"forward\",reason=\"established\"}";

    let n: usize = 7000;
    let n64 = n as u64;
    let t = Instant::now();
    let got = udp_flow(n);
    assert!(t.elapsed() > Duration::from_millis(3500), "the flow outlasted its timeout ({:?})", t.elapsed());
    // Two syncs.
    std::thread::sleep(Duration::from_millis(600));
    let fast = metric("sgswitch_fastpath_packets_total{loop=\"0\"}");
    let counted = metric(established);
    eprintln!("received {got} of {n}; by the fast path {fast}; counted established {counted}");
    assert_eq!(got, n, "every datagram arrived\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    assert!(fast >= n64 * 9 / 10, "the programs forwarded most of them: {fast}");
    assert!(fast <= n64, "{fast}");
    assert_eq!(counted, n64 - 1, "the port counts every datagram but the first (a rule's) as established");
    assert_eq!(metric("sgswitch_fastpath_flows{loop=\"0\"}"), 1, "one flow in the programs");
    // Idle: out of the programs before its entry lapses, then out of the
    // table.
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(metric("sgswitch_fastpath_flows{loop=\"0\"}"), 0, "the idle flow left the programs");
    assert_eq!(metric("sgswitch_conntrack_entries{port=\"eni-web1\"}"), 0, "and the table");
    // Again: a new flow (a rule's), in the programs once more.
    assert_eq!(udp_flow(500), 500);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric("sgswitch_fastpath_flows{loop=\"0\"}"), 1, "back in the programs");
    // web1's veth deleted and made again (a VM restart): the flow's frames
    // must not go to the index that died with it.
    let netns = format!("{}/scripts/netns.sh recreate web1", sgswitch_tests::netns::root().display());
    assert!(sgswitch_tests::netns::sh(&netns), "recreate web1");
    assert!(sgswitch_tests::netns::sh("ip netns exec sgs-web1 ethtool -K eth0 gro on >/dev/null"), "GRO on web1's new end");
    let t = Instant::now();
    while !sgswitch_tests::netns::sh("ip link show tap-web1 | grep -q ' xdp'") {
        assert!(t.elapsed() < Duration::from_secs(10), "the switch did not reopen tap-web1");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(udp_flow(500), 500, "every datagram reached the new veth");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(metric("sgswitch_fastpath_flows{loop=\"0\"}"), 1, "in the programs again, toward the new index");
    let fast = metric("sgswitch_fastpath_packets_total{loop=\"0\"}");

    // The rule goes: the flow's next datagrams are judged by the new
    // policy, none by the programs.
    std::fs::write(&web, &groups).expect("sg-web without udp");
    let reload = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .args(["ctl", "--socket"])
        .arg(dir.path().join("control.sock"))
        .arg("reload")
        .output()
        .expect("ctl reload");
    assert!(reload.status.success(), "{}", String::from_utf8_lossy(&reload.stderr));
    let got = udp_flow(200);
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(got, 0, "the denied flow stopped at once");
    assert_eq!(metric("sgswitch_fastpath_packets_total{loop=\"0\"}"), fast, "the programs forwarded none after the reload");
    assert_eq!(metric("sgswitch_fastpath_flows{loop=\"0\"}"), 0);
}
