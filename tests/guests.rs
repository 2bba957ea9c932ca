//! sgswitch as its users run it: QEMU guests whose virtio-net NICs are tap
//! devices of the host, switched by `sgswitch run` with the example groups,
//! and an "internet" host behind the uplink (root only). The guests boot
//! once; every check below runs against them.
//!
//! Guests (examples/ports): web1 and web2 (sg-web + sg-ssh), db1 (sg-db +
//! sg-ssh), lab1 and lab2 (sg-lab + sg-ssh; sg-lab isolates its members).
//! web2's NIC has QEMU's default offloads; the others', none
//! (docs/configuration.md, "VM ports on tap").

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use sgswitch_tests::guest::{self, Guest, Spec, Tap};
use sgswitch_tests::netns::{Kill, examples, http_get, require_root, sample, sh, wait_for};

const METRICS: &str = "127.0.0.1:19491";
const INET: &str = "sgq-inet";
const UPLINK: &str = "sgq-uplink";

/// The "internet" namespace behind the uplink, as scripts/netns.sh makes
/// it: the VMs' gateway 10.0.255.1, the office 198.51.100.7 and a blocked
/// network's 203.0.113.9. Removed when dropped.
struct Internet;

impl Internet {
    fn up() -> Internet {
        let script = format!(
            "ip netns add {INET} && ip link add {UPLINK} type veth peer name eth0 netns {INET} \
             && ip -n {INET} link set eth0 address 02:ee:00:00:00:01 \
             && ip -n {INET} addr add 10.0.255.1/16 dev eth0 \
             && ip -n {INET} addr add fd00:ffff::1/32 dev eth0 nodad \
             && ip -n {INET} addr add 198.51.100.7/32 dev eth0 && ip -n {INET} addr add 203.0.113.9/32 dev eth0 \
             && ip -n {INET} link set lo up && ip -n {INET} link set eth0 up \
             && ip netns exec {INET} ethtool -K eth0 tx off >/dev/null \
             && ip link set {UPLINK} up && sysctl -qw net.ipv6.conf.{UPLINK}.disable_ipv6=1"
        );
        Internet::down();
        assert!(sh(&script), "the internet namespace");
        Internet
    }

    fn down() {
        sh(&format!("ip netns del {INET}; ip link del {UPLINK}"));
    }
}

impl Drop for Internet {
    fn drop(&mut self) {
        Internet::down();
    }
}

/// The example configuration but the bastion, its VMs on the guests'
/// taps, the uplink here, and the flow log in `flows`.
fn config(flows: &Path) -> tempfile::TempDir {
    let dir = examples(METRICS, &format!("\n[flow_log]\nenabled = true\npath = \"{}\"\nrepeat_after = 0\n", flows.display()));
    std::fs::remove_file(dir.path().join("ports/eni-bastion.toml")).expect("remove a port");
    for e in std::fs::read_dir(dir.path().join("ports")).expect("ports") {
        let path = e.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("read port");
        std::fs::write(&path, text.replace("interface = \"tap-", "interface = \"sgq-")).expect("write port");
    }
    let host = dir.path().join("host.toml");
    let text = std::fs::read_to_string(&host).expect("host.toml");
    std::fs::write(&host, text.replace("interface = \"sgs-uplink\"", &format!("interface = \"{UPLINK}\""))).expect("write host.toml");
    dir
}

fn spec(name: &str, mac: &str, ipv4: &str, ipv6: &str, offloads: bool) -> Spec {
    Spec {
        name: name.to_owned(),
        tap: format!("sgq-{name}"),
        mac: mac.to_owned(),
        ipv4: format!("{ipv4}/16"),
        ipv6: format!("{ipv6}/48"),
        gateway: "10.0.255.1".to_owned(),
        offloads,
        vhost_user: None,
    }
}

/// A guest on a vhost-user port: its port file in `dir` (bound to
/// `groups`), its socket in `sockets`.
fn vhost_guest(dir: &Path, sockets: &Path, name: &str, mac: &str, ipv4: &str, ipv6: &str, groups: &str) -> Spec {
    let socket = sockets.join(format!("{name}.sock"));
    let port = format!(
        "id = \"eni-{name}\"\nkind = \"vhost-user\"\nsocket = \"{}\"\nmac = \"{mac}\"\nipv4 = [\"{ipv4}\"]\nipv6 = [\"{ipv6}\"]\nsecurity_groups = [{groups}]\n",
        socket.display()
    );
    std::fs::write(dir.join(format!("ports/eni-{name}.toml")), port).expect("write a vhost-user port");
    Spec { tap: String::new(), vhost_user: Some(socket), ..spec(name, mac, ipv4, ipv6, false) }
}

/// TCP throughput from `from` to `to` (at `ip`, port 443, which sg-web
/// allows): reported as a JSON line, not judged (under TCG it is the
/// emulated CPU's rate).
fn throughput(from: &mut Guest, to: &mut Guest, ip: &str, ports: &str) {
    let mb: u32 = 16;
    to.spawn("nc -l -p 443 -e /bin/sink");
    let t = Instant::now();
    let (rc, out) =
        from.sh(&format!("dd if=/dev/zero bs=64k count={} 2>/dev/null | timeout 60 nc {ip} 443", mb * 16), Duration::from_secs(90));
    assert_eq!(rc, 0, "the transfer {} -> {ip}:443: {out}", from.spec.name);
    let got = loop {
        let (_, got) = to.sh("cat /tmp/got 2>/dev/null; rm -f /tmp/got", LONG);
        if !got.trim().is_empty() || t.elapsed() > Duration::from_secs(60) {
            break got.trim().to_owned();
        }
    };
    let secs = t.elapsed().as_secs_f64();
    assert_eq!(got, (mb << 20).to_string(), "bytes {} received of {}'s {mb} MiB", to.spec.name, from.spec.name);
    println!(
        "{{\"case\":\"guest-tcp\",\"ports\":\"{ports}\",\"accel\":\"{}\",\"mbytes\":{mb},\"seconds\":{secs:.2},\"mbit_s\":{:.1}}}",
        guest::accel(),
        f64::from(mb) * 8.0 * 1.048_576 / secs
    );
}

const LONG: Duration = Duration::from_secs(30);

/// `ping` from `g` to `to`: whether an answer came (three tries).
fn pings(g: &mut Guest, to: &str) -> bool {
    let ping = if to.contains(':') { "ping6" } else { "ping" };
    g.sh(&format!("{ping} -c 3 -W 2 -w 4 {to} >/dev/null 2>&1"), LONG).0 == 0
}

/// A line over TCP from `g` to `to:port`, echoed by the one-line echo
/// service there: whether it came back.
fn echoes(g: &mut Guest, to: &str, port: u16) -> bool {
    let (_, out) = g.sh(&format!("echo sg-hello | timeout 5 nc -w 3 {to} {port}"), LONG);
    out.contains("sg-hello")
}

fn metric(cell: &str) -> u64 {
    sample(&http_get(METRICS, "/metrics").expect("GET /metrics"), cell)
}

#[test]
fn guests_on_tap_ports_talk_as_their_groups_say() {
    require_root();
    assert!(sh("command -v qemu-system-x86_64 && command -v busybox"), "needs qemu-system-x86 and busybox-static (scripts/setup.sh)");
    let image = guest::image();
    let _inet = Internet::up();
    let specs = [
        spec("web1", "02:00:00:00:00:11", "10.0.0.11", "fd00::11", false),
        spec("db1", "02:00:00:00:01:21", "10.0.1.21", "fd00:0:0:1::21", false),
        spec("lab1", "02:00:00:00:03:41", "10.0.3.41", "fd00:0:0:3::41", false),
        spec("lab2", "02:00:00:00:03:42", "10.0.3.42", "fd00:0:0:3::42", false),
        // QEMU's default NIC: checksum and segmentation offloads on.
        spec("web2", "02:00:00:00:00:12", "10.0.0.12", "fd00::12", true),
    ];
    let _taps: Vec<Tap> = specs.iter().map(|s| Tap::new(&s.tap)).collect();
    let mut guests: Vec<Guest> = specs.iter().map(|s| Guest::boot(&image, s)).collect();

    let work = tempfile::tempdir().expect("tempdir");
    let flows = work.path().join("flows.log");
    let dir = config(&flows);
    // Two guests on vhost-user ports, beside those on taps: vweb in sg-web,
    // vlab in sg-lab (isolated from lab1 and lab2 as they are from each
    // other).
    let vspecs = [
        vhost_guest(dir.path(), work.path(), "vweb", "02:00:00:00:00:13", "10.0.0.13", "fd00::13", "\"sg-web\", \"sg-ssh\""),
        vhost_guest(dir.path(), work.path(), "vlab", "02:00:00:00:03:43", "10.0.3.43", "fd00:0:0:3::43", "\"sg-lab\", \"sg-ssh\""),
    ];
    let log = work.path().join("switch.log");
    let switch = Command::new(env!("CARGO_BIN_EXE_sgswitch"))
        .arg("run")
        .arg(dir.path())
        .stderr(std::fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start sgswitch run");
    let _switch = Kill(switch);
    assert!(wait_for(&log, "running on", 0), "switch did not start: {}", std::fs::read_to_string(&log).unwrap_or_default());
    // The vhost-user guests connect to the switch's sockets as they boot.
    let mut vguests: Vec<Guest> = vspecs.iter().map(|s| Guest::boot(&image, s)).collect();
    let booted = Instant::now();
    for g in guests.iter_mut().chain(&mut vguests) {
        g.ready(Duration::from_secs(180));
    }
    eprintln!("guests up ({}, vhost-net {}) {:?} after the switch", guest::accel(), guest::vhost_net(), booted.elapsed());
    let [web1, db1, lab1, lab2, web2] = guests.as_mut_slice() else { unreachable!("five guests") };
    let [vweb, vlab] = vguests.as_mut_slice() else { unreachable!("two vhost-user guests") };

    // Services: the one-line echo on db1's postgres port, lab2's UI port
    // and web1's http port.
    db1.spawn("nc -ll -p 5432 -e /bin/echo1");
    lab2.spawn("nc -ll -p 8080 -e /bin/echo1");
    web1.spawn("nc -ll -p 80 -e /bin/echo1");

    // sg-db: postgres from members of sg-web, from no one else.
    assert!(echoes(web1, "10.0.1.21", 5432), "web1 -> db1:5432 (sg-db allows sg-web)\n{}", logs(&log));
    assert!(!echoes(lab1, "10.0.1.21", 5432), "lab1 -> db1:5432 must be denied");
    // sg-web: ping and http from anywhere, over IPv4 and IPv6.
    assert!(pings(lab1, "10.0.0.11"), "lab1 -> web1 ping (sg-web allows icmp echo)");
    assert!(pings(lab1, "fd00::11"), "lab1 -> web1 ping6 (sg-web allows icmpv6 echo)");
    assert!(echoes(lab1, "10.0.0.11", 80), "lab1 -> web1:80");
    // sg-lab isolates its members: lab1 reaches neither lab2's UI nor its
    // ping, which the office reaches through the uplink.
    assert!(!pings(lab1, "10.0.3.42"), "lab1 -> lab2 ping must be denied (intra-group drop)");
    assert!(!echoes(lab1, "10.0.3.42", 8080), "lab1 -> lab2:8080 must be denied (intra-group drop)");
    assert!(inet_echoes("198.51.100.7", "10.0.3.42", 8080), "office -> lab2:8080 (pl-office)");
    assert!(!inet_echoes("203.0.113.9", "10.0.3.42", 8080), "203.0.113.9 -> lab2:8080 must be denied");
    // sg-db's egress denies all but DNS: db1 pings no one, but answers
    // (stateful) what sg-web members open.
    assert!(!pings(db1, "10.0.0.11"), "db1 -> web1 ping must be denied (sg-db egress)");
    // The gateway behind the uplink.
    assert!(pings(web1, "10.0.255.1"), "web1 -> the gateway");

    // What the operator sees: the drops counted on the deciding side, and
    // the flow log naming the port, the addresses and the reason.
    let intra = metric("sgswitch_packets_total{port=\"eni-lab2\",direction=\"ingress\",action=\"drop\",reason=\"rule\"}")
        + metric("sgswitch_packets_total{port=\"eni-lab2\",direction=\"ingress\",action=\"drop\",reason=\"default\"}");
    assert!(intra > 0, "lab1 -> lab2 drops counted on eni-lab2's ingress\n{}", http_get(METRICS, "/metrics").unwrap_or_default());
    assert!(
        metric("sgswitch_packets_total{port=\"eni-db1\",direction=\"ingress\",action=\"forward\",reason=\"rule\"}") > 0,
        "web1 -> db1 allowed by a rule on eni-db1's ingress"
    );
    let denied = flow_line(&flows, "eni-db1", "10.0.3.41", 5432);
    assert_eq!(denied["direction"], "ingress", "{denied}");

    // The guests on vhost-user ports, to each other, to and from guests on
    // taps, and through the uplink, as their groups say.
    vweb.spawn("nc -ll -p 80 -e /bin/echo1");
    vlab.spawn("nc -ll -p 8080 -e /bin/echo1");
    assert!(echoes(vlab, "10.0.0.13", 80), "vlab -> vweb:80 (vhost-user to vhost-user)\n{}", logs(&log));
    assert!(pings(vlab, "10.0.0.13"), "vlab -> vweb ping");
    assert!(pings(vlab, "fd00::13"), "vlab -> vweb ping6");
    assert!(echoes(vweb, "10.0.1.21", 5432), "vweb -> db1:5432 (vhost-user to tap; sg-db allows sg-web)");
    assert!(echoes(lab1, "10.0.0.13", 80), "lab1 -> vweb:80 (tap to vhost-user)");
    assert!(!echoes(vlab, "10.0.1.21", 5432), "vlab -> db1:5432 must be denied");
    assert!(!pings(vlab, "10.0.3.42"), "vlab -> lab2 ping must be denied (intra-group drop)");
    assert!(!echoes(lab1, "10.0.3.43", 8080), "lab1 -> vlab:8080 must be denied (intra-group drop)");
    assert!(inet_echoes("198.51.100.7", "10.0.3.43", 8080), "office -> vlab:8080 (uplink to vhost-user)");
    assert!(pings(vweb, "10.0.255.1"), "vweb -> the gateway");
    assert!(
        metric("sgswitch_packets_total{port=\"eni-vlab\",direction=\"ingress\",action=\"drop\",reason=\"rule\"}")
            + metric("sgswitch_packets_total{port=\"eni-vlab\",direction=\"ingress\",action=\"drop\",reason=\"default\"}")
            > 0,
        "lab1 -> vlab drops counted on eni-vlab's ingress"
    );
    let denied = flow_line(&flows, "eni-vlab", "10.0.3.41", 8080);
    assert_eq!(denied["direction"], "ingress", "{denied}");
    for g in ["vweb", "vlab"] {
        let cell = format!(
            "sgswitch_vhost_user_info{{socket=\"{}\",mode=\"server\",state=\"running\"}}",
            work.path().join(format!("{g}.sock")).display()
        );
        assert_eq!(metric(&cell), 1, "{cell}");
    }

    // TCP throughput between two guests on tap ports (lab1 -> web1:443).
    throughput(lab1, web1, "10.0.0.11", "tap");
    // And between two on vhost-user ports (vlab -> vweb:443).
    throughput(vlab, vweb, "10.0.0.13", "vhost-user");

    // A vhost-user guest that powers off and boots again (the same
    // socket) is switched again, with no switch restart.
    let vspec = vweb.spec.clone();
    drop(vguests.remove(0));
    assert!(wait_for(&log, "eni-vweb: vhost-user guest on", 0), "the switch did not see vweb go:\n{}", logs(&log));
    let mut vweb = Guest::boot(&image, &vspec);
    vweb.ready(Duration::from_secs(180));
    vweb.spawn("nc -ll -p 80 -e /bin/echo1");
    let [vlab] = vguests.as_mut_slice() else { unreachable!("one vhost-user guest left") };
    assert!(echoes(vlab, "10.0.0.13", 80), "vlab -> vweb:80 after vweb's restart\n{}", logs(&log));

    // web2 runs with QEMU's default offloads: its TCP checksums come
    // unfinished, and the switch finishes them (counted, and said once in
    // the log) so its connections work; its large TCP segments cannot
    // enter an AF_XDP socket, and the log says what to change.
    assert!(echoes(web2, "10.0.1.21", 5432), "web2 (default offloads) -> db1:5432\n{}", logs(&log));
    let finished = "sgswitch_xsk_checksums_finished_total{interface=\"sgq-web2\",queue=\"0\"}";
    assert!(metric(finished) > 0, "{finished}");
    assert_eq!(metric("sgswitch_xsk_checksums_finished_total{interface=\"sgq-web1\",queue=\"0\"}"), 0, "web1's NIC finishes its own");
    assert!(wait_for(&log, "sgq-web2: the VM leaves TCP/UDP checksums to the host", 0), "{}", logs(&log));
    web1.spawn("nc -l -p 443 -e /bin/sink");
    web2.sh("dd if=/dev/zero bs=64k count=64 2>/dev/null | timeout 5 nc 10.0.0.11 443", Duration::from_secs(30));
    assert!(wait_for(&log, "sgq-web2: the kernel dropped", 0), "no word of web2's large segments:\n{}", logs(&log));
    assert!(!logs(&log).contains("sgq-web1: the"), "nothing said of web1's NIC:\n{}", logs(&log));
}

/// The flow log's line for `src` -> `port`'s `dport` (waiting up to 5 s for
/// the log to be written).
fn flow_line(flows: &Path, port: &str, src: &str, dport: u16) -> Value {
    let t = Instant::now();
    loop {
        let text = std::fs::read_to_string(flows).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|f| f["port"] == port && f["src"] == src && f["dport"] == dport);
        if let Some(f) = found {
            return f;
        }
        assert!(t.elapsed() < Duration::from_secs(5), "no flow-log line for {src} -> {port}:{dport}:\n{text}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A line over TCP from the internet namespace, from `src`.
fn inet_echoes(src: &str, to: &str, port: u16) -> bool {
    let out = Command::new("ip")
        .args(["netns", "exec", INET, "bash", "-c", &format!("echo sg-hello | timeout 5 nc -N -w 3 -s {src} {to} {port}")])
        .output()
        .expect("nc");
    String::from_utf8_lossy(&out.stdout).contains("sg-hello")
}

fn logs(log: &Path) -> String {
    std::fs::read_to_string(log).unwrap_or_default()
}
