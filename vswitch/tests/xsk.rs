//! AF_XDP sockets on veth pairs these tests make (root): a sender that
//! keeps its tx ring full gets every frame out, one transmit call sends all
//! it queued, an idle wait ends when a frame arrives, the interface
//! settings busy polling needs are applied and restored, and a NAPI thread
//! on a loop's core yields to it and is put back; a loop's core polls when
//! idle and is put back after the last switch on it, or by the next when
//! one is killed.

use std::time::{Duration, Instant};

use sgswitch::engine::napi::NapiThreads;
use sgswitch::port::Rings;
use sgswitch::port::xdp::{BUSY_WAIT, BindOptions, Frame, Memory, napi, sys};
use sgswitch_config::{XdpMode, ZeroCopy};
use sgswitch_tests::cpu::{has_polling_state, in_a_vm, resume_latency};
use sgswitch_tests::netns::sh;

const PLAIN: BindOptions =
    BindOptions { mode: XdpMode::Auto, zero_copy: ZeroCopy::Auto, busy_poll: None, busy_wait: BUSY_WAIT, fast: false };

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
        sys::quiet_libraries();
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
    let mut sock = mem.bind("sgt-xa", 0, &PLAIN).expect("an AF_XDP socket");
    let frame = [0xffu8; 60];
    let want = 10 * u64::from(ring);
    let (mut queued, mut completed) = (0u64, 0u64);
    let mut batch: Vec<Frame> = Vec::new();
    let t = Instant::now();
    // Offer more than the ring has room for, always: the ring is full most
    // of the time, as under load.
    while completed < want && t.elapsed() < Duration::from_secs(5) {
        completed += sock.reclaim(&mut mem) as u64;
        while queued + (batch.len() as u64) < want && batch.len() < 3 * ring as usize / 2 {
            match mem.copy_in(&frame) {
                Some(f) => batch.push(f),
                None => break,
            }
        }
        let n = sock.transmit(&mut mem, &mut batch);
        queued += n as u64;
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
    let mut sock = mem.bind("sgt-xc", 0, &PLAIN).expect("an AF_XDP socket");
    let frame = [0xffu8; 60];
    // A full poll-loop batch and more: eight kicks' worth.
    let mut batch: Vec<Frame> = (0..256).map(|_| mem.copy_in(&frame).expect("a free frame")).collect();
    assert_eq!(sock.transmit(&mut mem, &mut batch), 256, "the ring takes the whole batch");
    assert!(batch.is_empty(), "the frames moved to the ring");
    let mut completed = 0;
    let t = Instant::now();
    while completed < 256 && t.elapsed() < Duration::from_secs(2) {
        completed += sock.reclaim(&mut mem);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(completed, 256, "frames completed after one transmit call and {:?} of waiting", t.elapsed());
}

/// An idle loop waits on its sockets: the wait lasts its timeout when
/// nothing comes, and ends when a frame arrives.
#[test]
fn waiting_for_frames_ends_when_one_arrives() {
    let _pair = Pair::up("sgt-xe", "sgt-xf");
    let mut mem = Memory::new(512, 256).expect("UMEM");
    let mut sock = mem.bind("sgt-xe", 0, &PLAIN).expect("an AF_XDP socket");
    sock.refill(&mut mem, 256);
    let mut fds = [sock.poll_fd()];
    let t = Instant::now();
    sys::wait_for_frames(&mut fds, Duration::from_millis(200));
    let waited = t.elapsed();
    let mut got: Vec<Frame> = Vec::new();
    let stray = sock.receive(&mut mem, &mut got, 8);
    assert!(waited >= Duration::from_millis(150), "nothing sent: the wait lasts its timeout ({waited:?}, {stray} frames received)");

    // One broadcast frame from the peer, 300 ms from now.
    let send = "import socket,time; time.sleep(0.3); s=socket.socket(socket.AF_PACKET,socket.SOCK_RAW); s.bind(('sgt-xf',0)); s.send(b'\\xff'*6+b'\\x02\\0\\0\\0\\0\\x01'+b'\\x88\\xb5'+bytes(46))";
    let mut sender = std::process::Command::new("python3").args(["-c", send]).spawn().expect("python3");
    let t = Instant::now();
    got.clear();
    while got.is_empty() && t.elapsed() < Duration::from_secs(5) {
        let mut fds = [sock.poll_fd()];
        sys::wait_for_frames(&mut fds, Duration::from_secs(5));
        sock.receive(&mut mem, &mut got, 8);
    }
    let waited = t.elapsed();
    let _ = sender.wait();
    assert_eq!(got.len(), 1, "the frame arrived");
    assert!(waited < Duration::from_secs(2), "the wait ended when the frame arrived, not at its 5 s timeout ({waited:?})");
}

/// A socket closed with its fill and tx rings full (its interface went
/// away, say) gives every frame it held back: the UMEM is whole again.
#[test]
fn a_closed_socket_gives_back_the_frames_its_rings_held() {
    let _pair = Pair::up("sgt-xg", "sgt-xh");
    let ring = 64;
    let mut mem = Memory::new(512, ring).expect("UMEM");
    let total = mem.free_frames();
    let mut first = mem.bind("sgt-xg", 0, &PLAIN).expect("an AF_XDP socket");
    let mut second = mem.bind("sgt-xh", 0, &PLAIN).expect("an AF_XDP socket");
    second.refill(&mut mem, ring);
    let mut batch: Vec<Frame> = (0..ring).filter_map(|_| mem.copy_in(&[0xffu8; 60])).collect();
    second.transmit(&mut mem, &mut batch);
    for f in batch {
        mem.release(f);
    }
    assert!(mem.free_frames() < total, "the socket holds frames");
    // Not the registering socket: the UMEM stays.
    assert!(!mem.forget(second), "the first socket carries the registration");
    assert_eq!(mem.free_frames(), total, "every frame is back");
    first.refill(&mut mem, ring);
    assert!(mem.forget(first), "closing the registering socket asks for a new UMEM");
    assert_eq!(mem.free_frames(), total);
    let mut numbers: Vec<u32> = (0..total).map(|_| mem.copy_in(&[1]).expect("a frame").number()).collect();
    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), total, "no frame twice");
}

fn napi_settings(iface: &str) -> [String; 3] {
    ["napi_defer_hard_irqs", "gro_flush_timeout", "threaded"]
        .map(|f| std::fs::read_to_string(format!("/sys/class/net/{iface}/{f}")).expect("a NAPI setting").trim().to_owned())
}

#[test]
fn busy_polling_tunes_the_interface_and_restores_it_when_let_go() {
    let _pair = Pair::up("sgt-bpa", "sgt-bpb");
    // NAPI (GRO on a veth) in a kthread, as an operator may have set it.
    assert!(sh("ethtool -K sgt-bpa gro on >/dev/null && echo 1 > /sys/class/net/sgt-bpa/threaded"));
    let before = napi_settings("sgt-bpa");
    assert_eq!(before[2], "1");
    let first = sys::tune("sgt-bpa", 2, 20_000).expect("tuned");
    let second = sys::tune("sgt-bpa", 2, 20_000).expect("tuned again");
    assert_eq!(napi_settings("sgt-bpa"), ["2", "20000", "0"], "deferred interrupts, the timeout, no kthread");
    drop(first);
    assert_eq!(napi_settings("sgt-bpa"), ["2", "20000", "0"], "kept while a socket still busy polls");
    drop(second);
    assert_eq!(napi_settings("sgt-bpa"), before, "restored when the last one lets go");
}

#[test]
fn settings_a_killed_switch_changed_are_restored_by_the_next() {
    let _pair = Pair::up("sgt-bpc", "sgt-bpd");
    assert!(sh("ethtool -K sgt-bpc gro on >/dev/null && echo 1 > /sys/class/net/sgt-bpc/threaded"));
    let before = napi_settings("sgt-bpc");
    // A switch that dies holding the settings never restores them.
    std::mem::forget(sys::tune("sgt-bpc", 2, 20_000).expect("tuned"));
    assert_eq!(napi_settings("sgt-bpc"), ["2", "20000", "0"]);
    // The next claims the interface and finds what to restore.
    assert!(sys::claim("sgt-bpc").expect("claimed"), "newly claimed");
    assert_eq!(napi_settings("sgt-bpc"), before, "the previous values are back");
}

/// A queue another socket still holds (a switch killed a moment ago, whose
/// sockets the kernel releases in the background; a restart by systemd
/// comes that soon) is waited for, briefly, rather than refused at once;
/// one held for good is refused after the wait, with the kernel's reason.
#[test]
fn a_queue_held_a_moment_longer_is_waited_for() {
    let _pair = Pair::up("sgt-xi", "sgt-xj");
    let mut holder_mem = Memory::new(512, 64).expect("UMEM");
    let holder = holder_mem.bind("sgt-xi", 0, &PLAIN).expect("an AF_XDP socket");
    let bind_again = || {
        std::thread::spawn(|| {
            let mut mem = Memory::new(512, 64).expect("UMEM");
            let t = Instant::now();
            let r = mem.bind("sgt-xi", 0, &PLAIN).map(|_| ()).map_err(|e| e.to_string());
            (r, t.elapsed())
        })
    };
    let waiting = bind_again();
    std::thread::sleep(Duration::from_millis(300));
    drop(holder);
    drop(holder_mem);
    let (r, took) = waiting.join().expect("the binding thread");
    assert!(r.is_ok(), "bound once the holder let go: {r:?}");
    assert!(took >= Duration::from_millis(250), "it waited for the holder ({took:?})");

    let mut holder_mem = Memory::new(512, 64).expect("UMEM");
    let _holder = holder_mem.bind("sgt-xi", 0, &PLAIN).expect("an AF_XDP socket");
    let (r, took) = bind_again().join().expect("the binding thread");
    let e = r.expect_err("a queue held for good is refused");
    assert!(e.contains("busy"), "{e}");
    assert!(took < Duration::from_secs(5), "refused after a bounded wait ({took:?})");
}

/// The switch's program goes on an interface through a BPF link: it is
/// there while a socket is, gone when the last closes; and an interface
/// that runs someone else's program is refused with the way to remove it,
/// that program left alone.
#[test]
fn the_program_lives_with_the_sockets_and_another_program_is_refused_and_left_alone() {
    let _pair = Pair::up("sgt-pa", "sgt-pb");
    let attached = || sh("ip link show sgt-pa | grep -q ' xdp'");
    let mut mem = Memory::new(512, 64).expect("UMEM");
    let socket = mem.bind("sgt-pa", 0, &PLAIN).expect("an AF_XDP socket");
    assert!(sh("ip -d link show sgt-pa | grep -q 'name sgswitch_xsk'"), "the switch's program is attached");
    drop(socket);
    assert!(!attached(), "detached with the last socket");

    let _other = sgswitch_tests::xdpgen::Sink::attach("sgt-pa").expect("another program");
    let e = mem.bind("sgt-pa", 0, &PLAIN).map(|_| ()).expect_err("refused");
    assert!(e.to_string().contains("another XDP program is attached to sgt-pa (`ip link set dev sgt-pa xdp off` removes it)"), "{e}");
    assert!(sh("ip -d link show sgt-pa | grep -q 'name sgb_sink'"), "the other program stays");
}

/// With the fast path, the interface's program (its flow lookup first)
/// passes the kernel's verifier and still brings frames to the socket.
#[test]
fn the_fast_path_program_loads_and_frames_without_a_flow_reach_the_socket() {
    let _pair = Pair::up("sgt-fa", "sgt-fb");
    let mut mem = Memory::new(512, 64).expect("UMEM");
    let mut socket = mem.bind("sgt-fa", 0, &BindOptions { fast: true, ..PLAIN }).expect("an AF_XDP socket with the fast path");
    socket.refill(&mut mem, 256);
    // A UDP frame into sgt-fb arrives on sgt-fa.
    let mut frame = vec![0u8; 60];
    frame[..6].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
    frame[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
    frame[12..14].copy_from_slice(&[8, 0]);
    frame[14] = 0x45;
    frame[23] = 17;
    let mut sender = Memory::new(512, 64).expect("UMEM");
    let mut out = sender.bind("sgt-fb", 0, &PLAIN).expect("the sender's socket");
    let f = sender.copy_in(&frame).expect("a frame");
    let mut pending = vec![f];
    assert_eq!(out.transmit(&mut sender, &mut pending), 1);
    let mut got = Vec::new();
    let t = Instant::now();
    while got.is_empty() && t.elapsed() < Duration::from_secs(2) {
        socket.receive(&mut mem, &mut got, 8);
    }
    assert_eq!(got.len(), 1, "the frame reached the socket");
}

/// The pid of the NAPI thread of `iface` (threaded NAPI), as the kernel's
/// `netdev` family names it.
fn napi_thread(iface: &str) -> i32 {
    let netdev = napi::Netdev::open().expect("the netdev generic netlink family (Linux 6.9 and later)");
    let ifindex = sys::ifindex(iface);
    let contexts = netdev.contexts(Some(ifindex)).expect("napi-get");
    assert!(contexts.iter().all(|c| c.ifindex == ifindex), "the interface's contexts only: {contexts:?}");
    let all = netdev.contexts(None).expect("napi-get, every interface");
    assert!(contexts.iter().all(|c| all.contains(c)), "the namespace's dump holds them: {all:?}");
    let pids: Vec<i32> = contexts.iter().map(|c| c.pid).filter(|&p| p != 0).collect();
    assert_eq!(pids.len(), 1, "one NAPI thread for a one-queue veth: {contexts:?}");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", pids[0])).expect("its name");
    assert!(comm.starts_with(&format!("napi/{iface}-")), "the thread named is the interface's: {comm}");
    pids[0]
}

fn pin(pid: i32, cpus: &str) {
    assert!(sh(&format!("taskset -pc {cpus} {pid}")), "taskset {cpus} {pid}");
}

/// A NAPI thread pinned to a loop's core runs at idle priority while the
/// loop holds it, and is put back when it moves away or the loop lets go;
/// one under a policy someone chose (real time) is left as it is.
#[test]
fn a_napi_thread_on_the_loops_core_yields_and_is_put_back() {
    let _pair = Pair::up("sgt-npa", "sgt-npb");
    assert!(sh("ethtool -K sgt-npa gro on >/dev/null && echo 1 > /sys/class/net/sgt-npa/threaded"));
    let pid = napi_thread("sgt-npa");
    let ifindex = sys::ifindex("sgt-npa");
    let all = std::fs::read_to_string("/sys/devices/system/cpu/online").expect("online CPUs").trim().to_owned();
    let policy = || napi::policy(pid).expect("the thread's policy");
    assert_eq!(policy(), libc::SCHED_OTHER, "the kernel's default");

    let mut threads = NapiThreads::new(0, 0);
    // Free to run anywhere: not the loop's to take.
    pin(pid, &all);
    let single = all == "0";
    if !single {
        assert!(!threads.refresh(&[ifindex]));
        assert_eq!(policy(), libc::SCHED_OTHER, "a thread not pinned to the loop's core is left");
    }
    pin(pid, "0");
    assert!(threads.refresh(&[ifindex]), "taken");
    assert_eq!(policy(), libc::SCHED_IDLE);
    assert!(threads.any());
    assert_eq!(threads.names(), vec![std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap().trim().to_owned()]);
    assert!(!threads.refresh(&[ifindex]), "held already: nothing changes");
    // The interface is no longer the loop's.
    assert!(threads.refresh(&[]));
    assert_eq!(policy(), libc::SCHED_OTHER, "put back when the loop no longer has the interface");
    assert!(threads.refresh(&[ifindex]));
    if !single {
        pin(pid, &all);
        assert!(threads.refresh(&[ifindex]), "moved away");
        assert_eq!(policy(), libc::SCHED_OTHER, "put back when it moved away");
        pin(pid, "0");
        assert!(threads.refresh(&[ifindex]));
    }
    drop(threads);
    assert_eq!(policy(), libc::SCHED_OTHER, "put back when the loop lets go");

    // Real time, chosen by someone: left.
    assert!(sh(&format!("chrt -f -p 10 {pid}")));
    let mut threads = NapiThreads::new(0, 0);
    assert!(!threads.refresh(&[ifindex]));
    assert_eq!(policy(), libc::SCHED_FIFO, "a real-time thread is left as it is");
    drop(threads);
    assert_eq!(policy(), libc::SCHED_FIFO);
    assert!(sh(&format!("chrt -o -p 0 {pid}")));
}

/// A switch killed while a NAPI thread yielded to it leaves the thread at
/// idle priority: the next takes it, and puts it back to the kernel's
/// default when it lets go.
#[test]
fn a_napi_thread_a_killed_switch_left_idle_is_put_back_by_the_next() {
    let _pair = Pair::up("sgt-npc", "sgt-npd");
    assert!(sh("ethtool -K sgt-npc gro on >/dev/null && echo 1 > /sys/class/net/sgt-npc/threaded"));
    let pid = napi_thread("sgt-npc");
    pin(pid, "0");
    std::mem::forget(napi::yield_thread(pid).expect("yielded"));
    assert_eq!(napi::policy(pid), Some(libc::SCHED_IDLE));
    let mut threads = NapiThreads::new(0, 0);
    assert!(threads.refresh(&[sys::ifindex("sgt-npc")]));
    drop(threads);
    assert_eq!(napi::policy(pid), Some(libc::SCHED_OTHER), "the kernel's default again");
}

/// The core the idle tests use: the last, which the machine's other tests
/// leave alone (their switches run on core 0).
fn idle_core() -> usize {
    (0..4096).take_while(|c| std::path::Path::new(&format!("/sys/devices/system/cpu/cpu{c}")).exists()).last().unwrap_or(0)
}

/// The idle tests share a core: one at a time.
static IDLE_CORE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A loop's core polls when idle while a switch runs on it, kept so while
/// any switch on it still runs, and is put back as it was after the last;
/// `core_idle = "leave"` changes nothing.
#[test]
fn a_loops_core_polls_when_idle_and_is_put_back_after_the_last_switch() {
    use sgswitch::port::xdp::idle::keep_polling;
    use sgswitch_config::CoreIdle;
    let _one = IDLE_CORE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let core = idle_core();
    let before = resume_latency(core);
    assert_ne!(before, "n/a", "core {core} is left polling by something else");
    let (left, said) = keep_polling(&[core], CoreIdle::Leave);
    assert!(!said[0].polls && said[0].why.contains("leave"), "{said:?}");
    assert_eq!(resume_latency(core), before, "left as it was");
    drop(left);
    // `auto`: polling on bare metal, the kernel's idle on a VM.
    let (auto, said) = keep_polling(&[core], CoreIdle::Auto);
    if in_a_vm() {
        assert!(!said[0].polls && said[0].why.contains("virtual machine"), "{said:?}");
        assert_eq!(resume_latency(core), before, "left as it was on a VM");
    } else if has_polling_state(core) {
        assert!(said[0].polls, "{said:?}");
        assert_eq!(resume_latency(core), "n/a", "polling on bare metal");
    }
    drop(auto);
    assert_eq!(resume_latency(core), before);
    let (first, said) = keep_polling(&[core], CoreIdle::Poll);
    if !has_polling_state(core) {
        // The machine's idle driver cannot poll: the reason is given, and
        // nothing changes.
        assert!(!said[0].polls && said[0].why.contains("halts"), "{said:?}");
        assert_eq!(resume_latency(core), before);
        return;
    }
    assert!(said[0].polls, "{said:?}");
    assert!(said[0].why.contains(&format!("it was {before}")), "{said:?}");
    assert_eq!(resume_latency(core), "n/a", "a resume latency of 0: the polling idle state");
    let (second, said) = keep_polling(&[core], CoreIdle::Poll);
    assert!(said[0].polls && said[0].why.contains("another sgswitch"), "{said:?}");
    drop(first);
    assert_eq!(resume_latency(core), "n/a", "kept while another switch still runs on it");
    drop(second);
    assert_eq!(resume_latency(core), before, "put back after the last");
}

/// Run by the next test in a process of its own: takes the core and dies
/// holding it, as a killed switch does.
#[test]
#[ignore = "a helper: a_core_a_killed_switch_left_polling_is_put_back_by_the_next runs it"]
fn keep_a_core_polling_and_die() {
    let core: usize = std::env::var("SGT_CORE").expect("SGT_CORE").parse().expect("a core");
    let (held, said) = sgswitch::port::xdp::idle::keep_polling(&[core], sgswitch_config::CoreIdle::Poll);
    assert!(said[0].polls, "{said:?}");
    std::mem::forget(held);
    std::process::exit(0);
}

/// A switch killed while it kept its core polling leaves it so: the next
/// switch to look at the core puts the value back, even one told to leave
/// the core alone.
#[test]
fn a_core_a_killed_switch_left_polling_is_put_back_by_the_next() {
    use sgswitch::port::xdp::idle::keep_polling;
    use sgswitch_config::CoreIdle;
    let _one = IDLE_CORE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let core = idle_core();
    if !has_polling_state(core) {
        return;
    }
    let before = resume_latency(core);
    let out = std::process::Command::new(std::env::current_exe().expect("this test's binary"))
        .args(["--ignored", "--exact", "keep_a_core_polling_and_die"])
        .env("SGT_CORE", core.to_string())
        .output()
        .expect("the helper runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(resume_latency(core), "n/a", "the dead switch left its core polling");
    let (next, said) = keep_polling(&[core], CoreIdle::Leave);
    assert!(!said[0].polls);
    assert_eq!(resume_latency(core), before, "the next switch put it back");
    drop(next);
    let (next, said) = keep_polling(&[core], CoreIdle::Poll);
    assert!(said[0].why.contains(&format!("it was {before}")), "the value found is the one before the dead switch: {said:?}");
    drop(next);
    assert_eq!(resume_latency(core), before);
}
