//! vhost-user ports, driven by the in-process virtio-net driver
//! (`sgswitch_tests::vguest`) as a guest's NIC is by its VMM: frames
//! between guests as their groups say, a guest that stops reading, a
//! guest that posts broken descriptors, and one that goes away and comes
//! back (root only: the switch's uplink is a veth).
//! QEMU guests on vhost-user ports are in `guests.rs`.

use std::path::Path;
use std::time::{Duration, Instant};

use sgswitch_tests::frames::{Ends, udp};
use sgswitch_tests::netns::{Kill, http_get, require_root, sample, sh, start_switch, wait_for};
use sgswitch_tests::vguest::Driver;

const METRICS: &str = "127.0.0.1:19496";
const UPLINK: &str = "sgv-uplink";

struct Veth;

impl Veth {
    fn up() -> Veth {
        sh(&format!("ip link del {UPLINK} 2>/dev/null"));
        assert!(sh(&format!(
            "ip link add {UPLINK} type veth peer name {UPLINK}-p && ip link set {UPLINK} up && ip link set {UPLINK}-p up"
        )));
        Veth
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        sh(&format!("ip link del {UPLINK}"));
    }
}

/// Three vhost-user ports, va, vb and vc (10.1.0.1-3): va in sg-out (out
/// to anywhere, nothing in), vb and vc in sg-v (in: UDP to port 7000 only;
/// out: anywhere); their sockets in `dir`.
fn config(dir: &Path) {
    std::fs::create_dir_all(dir.join("ports")).expect("ports");
    std::fs::create_dir_all(dir.join("groups")).expect("groups");
    std::fs::write(
        dir.join("host.toml"),
        format!("[uplink]\ninterface = \"{UPLINK}\"\n[datapath]\ncores = [0]\n[metrics]\nlisten = \"{METRICS}\"\n[conntrack]\ncapacity = 65536\n"),
    )
    .expect("host.toml");
    std::fs::write(
        dir.join("groups/sg-v.toml"),
        "id = \"sg-v\"\n[[ingress]]\nprotocol = \"udp\"\nports = \"7000/7000\"\nsource = \"0.0.0.0/0\"\n[[egress]]\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n",
    )
    .expect("group");
    std::fs::write(dir.join("groups/sg-out.toml"), "id = \"sg-out\"\n[[egress]]\nprotocol = \"all\"\ndestination = \"0.0.0.0/0\"\n")
        .expect("group");
    for (i, name) in ["va", "vb", "vc"].iter().enumerate() {
        let port = format!(
            "id = \"eni-{name}\"\nkind = \"vhost-user\"\nsocket = \"{}\"\nmac = \"02:00:00:00:10:0{}\"\nipv4 = [\"10.1.0.{}\"]\nsecurity_groups = [\"{}\"]\n",
            dir.join(format!("{name}.sock")).display(),
            i + 1,
            i + 1,
            if i == 0 { "sg-out" } else { "sg-v" }
        );
        std::fs::write(dir.join(format!("ports/eni-{name}.toml")), port).expect("port");
    }
    // vd: the switch connects to a socket the "VMM" listens on.
    let port = format!(
        "id = \"eni-vd\"\nkind = \"vhost-user\"\nsocket = \"{}\"\nsocket_mode = \"client\"\nmac = \"02:00:00:00:10:04\"\nipv4 = [\"10.1.0.4\"]\nsecurity_groups = [\"sg-v\"]\n",
        dir.join("vd.sock").display()
    );
    std::fs::write(dir.join("ports/eni-vd.toml"), port).expect("port");
}

fn ends(from: u8, to: u8) -> Ends {
    Ends {
        src_mac: [2, 0, 0, 0, 0x10, from],
        dst_mac: [2, 0, 0, 0, 0x10, to],
        src: format!("10.1.0.{from}").parse().expect("ip"),
        dst: format!("10.1.0.{to}").parse().expect("ip"),
    }
}

/// Sends `n` copies of `frame` from `d`, waiting for room as needed.
fn send(d: &mut Driver, frame: &[u8], n: usize) {
    let t = Instant::now();
    let mut sent = 0;
    while sent < n {
        sent += d.send(frame, (n - sent).min(64));
        assert!(t.elapsed() < Duration::from_secs(10), "the switch took {sent} of {n} frames in 10 s");
    }
}

/// Frames `d` receives until `want` came or `within` passed; the first
/// one's bytes.
fn receive(d: &mut Driver, want: usize, within: Duration) -> (usize, Vec<u8>) {
    let t = Instant::now();
    let (mut n, mut first) = (0, Vec::new());
    while n < want && t.elapsed() < within {
        n += d.receive(|f| {
            if first.is_empty() {
                first = f.to_vec();
            }
        });
        std::thread::yield_now();
    }
    (n, first)
}

fn metric(cell: &str) -> u64 {
    sample(&http_get(METRICS, "/metrics").expect("GET /metrics"), cell)
}

/// Asserts that `cell` reaches `want`, waiting up to 2 s (the loop
/// publishes its rings' counts a few times a second).
fn wait_metric(cell: &str, want: u64) {
    let t = Instant::now();
    while metric(cell) < want && t.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(metric(cell), want, "{cell}");
}

/// Waits (5 s at most) until the port on `socket` says its rings run.
fn wait_running(socket: &str, mode: &str, what: &str, logs: &dyn Fn() -> String) {
    let cell = format!("sgswitch_vhost_user_info{{socket=\"{socket}\",mode=\"{mode}\",state=\"running\"}}");
    let t = Instant::now();
    while metric(&cell) != 1 {
        assert!(t.elapsed() < Duration::from_secs(5), "{what}: the rings never ran:\n{}", logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn connect(dir: &Path, name: &str) -> Driver {
    Driver::connect(&dir.join(format!("{name}.sock")), Duration::from_secs(5)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn vhost_user_guests_are_switched_as_their_groups_say_and_a_bad_or_gone_guest_costs_the_others_nothing() {
    require_root();
    let _veth = Veth::up();
    let work = tempfile::tempdir().expect("tempdir");
    config(work.path());
    let log = work.path().join("switch.log");
    let _switch: Kill = start_switch(env!("CARGO_BIN_EXE_sgswitch"), work.path(), &log);
    let logs = || std::fs::read_to_string(&log).unwrap_or_default();
    let (mut a, mut b, mut c) = (connect(work.path(), "va"), connect(work.path(), "vb"), connect(work.path(), "vc"));
    let sock = |n: &str| work.path().join(format!("{n}.sock")).display().to_string();
    wait_running(&sock("vc"), "server", "vc", &logs);
    // The connected ports' control threads sleep until their guest writes
    // (or the port goes): none woke in a second of nothing. They used to
    // look at their stop every 50 ms.
    let pid = _switch.0.id().to_string();
    let before = sgswitch_tests::netns::thread_switches(&pid);
    std::thread::sleep(Duration::from_secs(1));
    let woke: Vec<(String, u64)> = sgswitch_tests::netns::thread_switches(&pid)
        .into_iter()
        .filter(|(_, (name, _))| ["vhost-eni-va", "vhost-eni-vb", "vhost-eni-vc"].contains(&name.as_str()))
        .map(|(tid, (name, n))| (name, n - before.get(&tid).map_or(0, |b| b.1)))
        .collect();
    assert_eq!(woke.len(), 3, "the three control threads: {woke:?}");
    assert!(woke.iter().all(|(_, d)| *d <= 1), "control threads woke in a second of nothing: {woke:?}");

    // Allowed: a -> b:7000, every frame, unchanged.
    let allowed = udp(&ends(1, 2), 5000, 7000, b"over vhost-user");
    send(&mut a, &allowed, 500);
    let (n, first) = receive(&mut b, 500, Duration::from_secs(5));
    assert_eq!(n, 500, "b received {n} of a's 500 allowed frames\n{}", logs());
    assert_eq!(first, allowed, "the frame as a sent it");
    // The VMMs send their memory tables again with the rings running: the
    // switch takes the rings back and carries on where they were.
    a.resend_memory().expect("a's memory table again");
    b.resend_memory().expect("b's memory table again");
    send(&mut a, &allowed, 300);
    assert_eq!(receive(&mut b, 300, Duration::from_secs(5)).0, 300, "b after the new memory tables\n{}", logs());
    // A receive buffer b made read-only: given back empty, the frame for
    // it dropped and counted, the frames after it delivered.
    b.break_next_rx();
    send(&mut a, &allowed, 10);
    let t = Instant::now();
    let (mut back, mut frames) = (0, 0);
    while back < 10 && t.elapsed() < Duration::from_secs(5) {
        back += b.receive(|f| frames += usize::from(!f.is_empty()));
    }
    assert_eq!((back, frames), (10, 9), "b's buffers back and frames in them, after a broken buffer\n{}", logs());
    wait_metric(&format!("sgswitch_vhost_user_drops_total{{socket=\"{}\",reason=\"malformed\"}}", sock("vb")), 1);
    // Denied by b's ingress: a -> b:7001, counted there.
    send(&mut a, &udp(&ends(1, 2), 5000, 7001, b"denied"), 200);
    let (n, stray) = receive(&mut b, 1, Duration::from_millis(500));
    assert_eq!(n, 0, "b received frames its group denies: {stray:02x?}");
    let denied = metric("sgswitch_packets_total{port=\"eni-vb\",direction=\"ingress\",action=\"drop\",reason=\"default\"}");
    assert_eq!(denied, 200, "a -> b:7001 drops on eni-vb's ingress");

    // b stops reading: its queue fills and drops, counted; c, sent to in
    // the same batches, gets every frame.
    let to_b = udp(&ends(1, 2), 5001, 7000, b"to a guest that does not read");
    let to_c = udp(&ends(1, 3), 5001, 7000, b"to a guest that does");
    let mut got = 0;
    for _ in 0..40 {
        send(&mut a, &to_b, 100);
        send(&mut a, &to_c, 25);
        got += receive(&mut c, 25, Duration::from_secs(2)).0;
    }
    assert_eq!(got, 1000, "c received {got} of 1000 while b did not read");
    let full = metric(&format!("sgswitch_vhost_user_drops_total{{socket=\"{}\",reason=\"guest_rx_full\"}}", sock("vb")));
    assert!(full >= 4000 - 1024, "b's full queue dropped {full} frames, counted");
    b.drain();

    // A descriptor outside a's memory, and one the switch should not have
    // to write: dropped and counted; the switch goes on.
    assert!(a.post_raw(1 << 40, 64, 0), "room for a broken descriptor");
    assert!(a.post_raw(0x40_0000 + 1024 * 2048 + 64, 64, 2), "room for a writable one");
    send(&mut a, &to_c, 1);
    assert_eq!(receive(&mut c, 1, Duration::from_secs(2)).0, 1, "c after a's broken descriptors\n{}", logs());
    wait_metric(&format!("sgswitch_vhost_user_drops_total{{socket=\"{}\",reason=\"malformed\"}}", sock("va")), 2);

    // The VMM stops a's send ring (as it does when the guest stops): the
    // switch gives it back at the position a has reached.
    let posted = 500 + 300 + 10 + 200 + 40 * 125 + 2 + 1;
    assert_eq!(a.stop_tx().expect("GET_VRING_BASE"), posted, "where a's send ring stopped");
    drop(a);

    // b goes away and comes back on the same socket: switched again, with
    // no switch restart.
    drop(b);
    assert!(wait_for(&log, "eni-vb: vhost-user guest on", 0), "the switch did not see b go:\n{}", logs());
    let mut b = connect(work.path(), "vb");
    let mut a = connect(work.path(), "va");
    wait_running(&sock("vb"), "server", "vb, back", &logs);
    send(&mut c, &udp(&ends(3, 2), 5002, 7000, b"after b came back"), 100);
    assert_eq!(receive(&mut b, 100, Duration::from_secs(5)).0, 100, "b after it came back\n{}", logs());
    send(&mut a, &allowed, 10);
    assert_eq!(receive(&mut b, 10, Duration::from_secs(5)).0, 10, "b from a's new connection\n{}", logs());

    // A client-mode port: the switch connects to the VMM's socket when it
    // appears, and again after the VMM restarts.
    for round in 0..2 {
        let mut d = Driver::accept(&work.path().join("vd.sock"), Duration::from_secs(5)).unwrap_or_else(|e| panic!("vd: {e}\n{}", logs()));
        wait_running(&sock("vd"), "client", &format!("vd, round {round}"), &logs);
        send(&mut a, &udp(&ends(1, 4), 5003, 7000, b"to a client-mode port"), 20);
        assert_eq!(receive(&mut d, 20, Duration::from_secs(5)).0, 20, "vd (round {round})\n{}", logs());
    }
}
