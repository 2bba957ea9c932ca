//! AF_XDP sockets on veth pairs these tests make (root): a sender that
//! keeps its tx ring full gets every frame out, one transmit call sends all
//! it queued, and an idle wait ends when a frame arrives.

use std::time::{Duration, Instant};

use sgswitch::xdp::Memory;
use sgswitch_config::{XdpMode, ZeroCopy};
use sgswitch_tests::netns::sh;
use xsk_rs::FrameDesc;

/// A veth pair `a`-`b` this test makes, removed when dropped. IPv6 is off
/// before the links come up, so the kernel sends no neighbour discovery or
/// MLD of its own: nothing arrives that a test did not send.
struct Pair(&'static str);

impl Pair {
    fn up(a: &'static str, b: &str) -> Pair {
        assert!(sh("[ \"$(id -u)\" -eq 0 ]"), "this test needs root (AF_XDP and veth)");
        sh(&format!("ip link del {a} 2>/dev/null"));
        assert!(sh(&format!(
            "ip link add {a} type veth peer name {b} \
             && sysctl -qw net.ipv6.conf.{a}.disable_ipv6=1 net.ipv6.conf.{b}.disable_ipv6=1 \
             && ip link set {a} up && ip link set {b} up"
        )));
        sgswitch::xdp::quiet_libraries();
        Pair(a)
    }
}

impl Drop for Pair {
    fn drop(&mut self) {
        sh(&format!("ip link del {} 2>/dev/null", self.0));
    }
}

#[test]
fn a_full_tx_ring_is_drained_and_every_frame_completes() {
    let _pair = Pair::up("sgt-xa", "sgt-xb");
    let ring = 64;
    let mut mem = Memory::new(512, ring).expect("UMEM");
    let mut sock = mem.bind("sgt-xa", 0, XdpMode::Auto, ZeroCopy::Auto).expect("an AF_XDP socket");
    let frame = [0xffu8; 60];
    let want = 10 * u64::from(ring);
    let (mut queued, mut completed) = (0u64, 0u64);
    let mut batch: Vec<FrameDesc> = Vec::new();
    let mut scratch = vec![FrameDesc::default(); 512];
    let t = Instant::now();
    // Offer more than the ring has room for, always: the ring is full most
    // of the time, as under load.
    while completed < want && t.elapsed() < Duration::from_secs(5) {
        completed += sock.reclaim(&mut mem.free, &mut mem.ledger, &mut scratch) as u64;
        while queued + (batch.len() as u64) < want && batch.len() < 3 * ring as usize / 2 {
            match mem.copy_in(&frame) {
                Some(d) => batch.push(d),
                None => break,
            }
        }
        let n = sock.transmit(&batch, &mut mem.ledger);
        queued += n as u64;
        batch.drain(..n);
    }
    assert_eq!(completed, want, "{queued} frames queued, {completed} completed in {:?}", t.elapsed());
}

/// Copy mode sends at most 32 frames per kick. A loop that queues a batch
/// and then sleeps (idle, nothing received) must not leave the rest of the
/// batch in the ring until its next turn: one `transmit` call gets every
/// frame it queued out, so later only completions are collected.
#[test]
fn one_transmit_call_sends_everything_it_queued() {
    let _pair = Pair::up("sgt-xc", "sgt-xd");
    let ring = 512;
    let mut mem = Memory::new(1024, ring).expect("UMEM");
    let mut sock = mem.bind("sgt-xc", 0, XdpMode::Auto, ZeroCopy::Auto).expect("an AF_XDP socket");
    let frame = [0xffu8; 60];
    // A full poll-loop batch and more: eight kicks' worth.
    let batch: Vec<FrameDesc> = (0..256).map(|_| mem.copy_in(&frame).expect("a free frame")).collect();
    assert_eq!(sock.transmit(&batch, &mut mem.ledger), batch.len(), "the ring takes the whole batch");
    let mut scratch = vec![FrameDesc::default(); 1024];
    let mut completed = 0;
    let t = Instant::now();
    while completed < batch.len() && t.elapsed() < Duration::from_secs(2) {
        completed += sock.reclaim(&mut mem.free, &mut mem.ledger, &mut scratch);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(completed, batch.len(), "frames completed after one transmit call and {:?} of waiting", t.elapsed());
}

/// An idle loop waits on its sockets: the wait lasts its timeout when
/// nothing comes, and ends when a frame arrives.
#[test]
fn waiting_for_frames_ends_when_one_arrives() {
    let _pair = Pair::up("sgt-xe", "sgt-xf");
    let mut mem = Memory::new(512, 256).expect("UMEM");
    let mut sock = mem.bind("sgt-xe", 0, XdpMode::Auto, ZeroCopy::Auto).expect("an AF_XDP socket");
    sock.refill(&mut mem.free, &mut mem.ledger, 256);
    let mut fds = [sock.poll_fd()];
    let t = Instant::now();
    sgswitch::xdp::wait_for_frames(&mut fds, Duration::from_millis(200));
    let waited = t.elapsed();
    let mut descs = vec![FrameDesc::default(); 8];
    let stray = sock.receive(&mut descs, &mut mem.ledger);
    assert!(waited >= Duration::from_millis(150), "nothing sent: the wait lasts its timeout ({waited:?}, {stray} frames received)");

    // One broadcast frame from the peer, 300 ms from now.
    let send = "import socket,time; time.sleep(0.3); s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('sgt-xf',0)); s.send(b'\\xff'*6+b'\\x02\\0\\0\\0\\0\\x01'+b'\\x88\\xb5'+bytes(46))";
    let mut sender = std::process::Command::new("python3").args(["-c", send]).spawn().expect("python3");
    let t = Instant::now();
    let mut got = 0;
    while got == 0 && t.elapsed() < Duration::from_secs(5) {
        let mut fds = [sock.poll_fd()];
        sgswitch::xdp::wait_for_frames(&mut fds, Duration::from_secs(5));
        got = sock.receive(&mut descs, &mut mem.ledger);
    }
    let waited = t.elapsed();
    let _ = sender.wait();
    assert_eq!(got, 1, "the frame arrived");
    assert!(waited < Duration::from_secs(2), "the wait ended when the frame arrived, not at its 5 s timeout ({waited:?})");
}

/// A socket closed with its fill and tx rings full (its interface went
/// away, say) gives every frame it held back: the UMEM is whole again.
#[test]
fn a_closed_socket_gives_back_the_frames_its_rings_held() {
    let _pair = Pair::up("sgt-xg", "sgt-xh");
    let ring = 64;
    let mut mem = Memory::new(512, ring).expect("UMEM");
    let total = mem.free.len();
    let mut first = mem.bind("sgt-xg", 0, XdpMode::Auto, ZeroCopy::Auto).expect("an AF_XDP socket");
    let mut second = mem.bind("sgt-xh", 0, XdpMode::Auto, ZeroCopy::Auto).expect("an AF_XDP socket");
    second.refill(&mut mem.free, &mut mem.ledger, ring);
    let mut batch: Vec<FrameDesc> = (0..ring).filter_map(|_| mem.copy_in(&[0xffu8; 60])).collect();
    let sent = second.transmit(&batch, &mut mem.ledger);
    batch.drain(..sent);
    mem.free.append(&mut batch);
    assert!(mem.free.len() < total, "the socket holds frames");
    // Not the registering socket: the UMEM stays.
    assert!(!mem.forget(second), "the first socket carries the registration");
    assert_eq!(mem.free.len(), total, "every frame is back");
    first.refill(&mut mem.free, &mut mem.ledger, ring);
    assert!(mem.forget(first), "closing the registering socket asks for a new UMEM");
    assert_eq!(mem.free.len(), total);
    let mut again: Vec<usize> = mem.free.iter().map(FrameDesc::addr).collect();
    again.sort_unstable();
    again.dedup();
    assert_eq!(again.len(), total, "no frame twice");
}
