//! AF_XDP traffic for the end-to-end benchmark (`benches/e2e.sh`), on the
//! same socket code as the switch (`sgswitch::xdp`). Root; each mode runs on
//! one interface pair inside the namespace it is started in.
//!
//! - `xsk tx IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N
//!   [--flows F | --new] --seconds S [--pps R [--burst B | --even]]
//!   [--stamp]`: the frames of `xdpgen send` (its template and flow
//!   counter: F flows in turn, default 1,024, or a new flow each frame),
//!   for S seconds, as fast as the ring takes them or R a second in bursts
//!   of B (default 1; `--even` is 1); with `--stamp`, each frame carries
//!   its send time for `xdpgen sink`'s latency; prints
//!   `{"sent":N,"seconds":S,"mpps":X,"via":"af-xdp"}`. `benches/e2e.sh`'s
//!   generator where the kernel refuses `xdpgen`'s live frames: a copy-mode
//!   transmit, an skb per frame, about 1.9 Mpps flat out on a veth here
//!   (`xdpgen`'s own `AF_PACKET` fallback makes 1.2).
//! - `xsk rx IFACE --seconds S`: counts frames for S seconds from the first
//!   one; prints `{"received":N,"seconds":S,"pps":R}`.
//! - `xsk fwd IFACE_A IFACE_B --seconds S [--core C]`: the ceiling: forwards
//!   every frame from A to B and from B to A by descriptor on one shared
//!   UMEM, with no parsing or policy; prints `{"forwarded":N}`. With
//!   `--core`, the core it is pinned to, it treats the interfaces' NAPI
//!   threads pinned to that core as sgswitch's loop does (`napi_threads =
//!   "yield"`: idle priority while it runs, and a sleep instead of a spin
//!   when idle), so that it is the ceiling of sgswitch's own port path;
//!   without, it spins and the threads compete with it at equal weight.

use std::time::{Duration, Instant};

use sgswitch::engine::napi::NapiThreads;
use sgswitch::port::Rings;
use sgswitch::port::xdp::{BindOptions, Frame, Memory, Socket, sys};
use sgswitch_config::Datapath;
use sgswitch_tests::xdpgen::{self, FRAME_LEN, Traffic};

const BATCH: usize = 64;
const FRAMES: u32 = 8192;
const RING: u32 = 2048;

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn need<'a>(args: &'a [String], name: &str) -> &'a str {
    arg(args, name).unwrap_or_else(|| {
        eprintln!("xsk: {name} is required");
        std::process::exit(1)
    })
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    v.try_into().unwrap_or_else(|_| {
        eprintln!("xsk: {s} is not a MAC address");
        std::process::exit(1)
    })
}

fn bind(mem: &mut Memory, iface: &str) -> Socket {
    // As sgswitch binds by default (busy-polled where the kernel can).
    mem.bind(iface, 0, &BindOptions::of(&Datapath::default())).unwrap_or_else(|e| {
        eprintln!("xsk: {e}");
        std::process::exit(2)
    })
}

fn memory() -> Memory {
    Memory::new(FRAMES, RING).unwrap_or_else(|e| {
        eprintln!("xsk: {e}");
        std::process::exit(2)
    })
}

fn tx(args: &[String]) {
    let iface = &args[2];
    let seconds: f64 = need(args, "--seconds").parse().expect("--seconds N");
    let pps: Option<u64> = arg(args, "--pps").map(|v| v.parse().expect("--pps N"));
    // --even: one frame at a time, each the moment it is due.
    let burst: usize = if args.iter().any(|a| a == "--even") { 1 } else { arg(args, "--burst").unwrap_or("1").parse().expect("--burst N") };
    let traffic = Traffic {
        src_mac: mac(need(args, "--src-mac")),
        dst_mac: mac(need(args, "--dst-mac")),
        src: need(args, "--src").parse().expect("--src IPv4"),
        dst: need(args, "--dst").parse().expect("--dst IPv4"),
        dport: need(args, "--dport").parse().expect("--dport N"),
        flows: if args.iter().any(|a| a == "--new") {
            None
        } else {
            Some(arg(args, "--flows").unwrap_or("1024").parse().expect("--flows N"))
        },
        stamp: args.iter().any(|a| a == "--stamp"),
    };
    // The frames of `xdpgen send` (the same template and flow counter).
    let mut frame: [u8; FRAME_LEN] = xdpgen::template(&traffic).try_into().expect("a 60-byte template");
    let mask = xdpgen::flow_mask(&traffic).unwrap_or_else(|e| {
        eprintln!("xsk: {e}");
        std::process::exit(1)
    });
    let mut mem = memory();
    let mut sock = bind(&mut mem, iface);
    let mut batch: Vec<Frame> = Vec::with_capacity(BATCH);
    let (mut sent, mut next) = (0u64, 0u32);
    let t = Instant::now();
    let end = Duration::from_secs_f64(seconds);
    let mut forgiven = 0u128;
    while t.elapsed() < end {
        sock.reclaim(&mut mem);
        let room = match pps {
            // Paced: what is due, a burst at a time; a sender that fell
            // behind does not catch up in one long burst.
            Some(r) => {
                let due = (t.elapsed().as_nanos() * u128::from(r) / 1_000_000_000).saturating_sub(forgiven);
                let owed = due.saturating_sub(u128::from(sent) + batch.len() as u128);
                if owed > 2 * burst as u128 {
                    forgiven += owed - burst as u128;
                }
                usize::try_from(owed).unwrap_or(usize::MAX).min(burst)
            }
            None => BATCH,
        };
        while batch.len() < room {
            xdpgen::write_frame(&mut frame, next & mask, traffic.stamp.then(xdpgen::monotonic_ns));
            let Some(f) = mem.copy_in(&frame) else { break };
            batch.push(f);
            next = next.wrapping_add(1);
        }
        let n = sock.transmit(&mut mem, &mut batch);
        sent += n as u64;
        if n == 0 {
            std::hint::spin_loop();
        }
    }
    let took = t.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": took, "mpps": (sent as f64 / took / 1e6 * 1000.0).round() / 1000.0, "via": "af-xdp"})
    );
}

fn rx(args: &[String]) {
    let iface = &args[2];
    let seconds: f64 = need(args, "--seconds").parse().expect("--seconds N");
    let mut mem = memory();
    let mut sock = bind(&mut mem, iface);
    let mut got: Vec<Frame> = Vec::with_capacity(BATCH);
    let mut received = 0u64;
    let mut first: Option<Instant> = None;
    let deadline = Instant::now() + Duration::from_secs_f64(seconds + 30.0);
    while Instant::now() < deadline && first.is_none_or(|f| f.elapsed().as_secs_f64() < seconds) {
        sock.refill(&mut mem, RING);
        let n = sock.receive(&mut mem, &mut got, BATCH);
        if n > 0 {
            first.get_or_insert_with(Instant::now);
            received += n as u64;
            for f in got.drain(..) {
                mem.release(f);
            }
        } else {
            std::hint::spin_loop();
        }
    }
    let window = first.map_or(0.0, |f| f.elapsed().as_secs_f64());
    let pps = if window > 0.0 { received as f64 / window } else { 0.0 };
    println!("{}", serde_json::json!({"received": received, "seconds": window, "pps": pps.round()}));
}

fn fwd(args: &[String]) {
    let (a, b) = (&args[2], &args[3]);
    let seconds: u64 = need(args, "--seconds").parse().expect("--seconds N");
    // The core the forwarder is pinned to (`taskset`): the NAPI threads
    // pinned to it alone yield to the forwarder, as to a poll loop.
    let core: Option<usize> = arg(args, "--core").map(|c| c.parse().expect("--core N"));
    let mut mem = memory();
    let mut socks = [bind(&mut mem, a), bind(&mut mem, b)];
    let ifindexes = [socks[0].ifindex(), socks[1].ifindex()];
    let mut napi = core.map(|c| NapiThreads::new(0, c));
    let mut looked = Instant::now();
    if let Some(n) = napi.as_mut() {
        n.refresh(&ifindexes);
    }
    let mut pending: [Vec<Frame>; 2] = [Vec::with_capacity(RING as usize), Vec::with_capacity(RING as usize)];
    let mut forwarded = 0u64;
    let share = (FRAMES - 512) / 4;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(seconds) {
        let mut got = 0;
        for i in 0..2 {
            socks[i].reclaim(&mut mem);
            socks[i].refill(&mut mem, share);
            got += socks[i].receive(&mut mem, &mut pending[1 - i], BATCH);
        }
        for i in 0..2 {
            let sent = socks[i].transmit(&mut mem, &mut pending[i]);
            forwarded += sent as u64;
            for f in pending[i].drain(..) {
                mem.release(f);
            }
        }
        // As sgswitch's loop: with a NAPI thread yielding to it, frames
        // come only when the forwarder lets the thread run, so it sleeps
        // when idle (a spin would starve the thread) and looks at the
        // threads once a second (the bench pins them after the start).
        if let Some(n) = napi.as_mut() {
            if looked.elapsed() >= Duration::from_secs(1) {
                n.refresh(&ifindexes);
                looked = Instant::now();
            }
            if got == 0 && n.any() {
                let mut fds = [socks[0].poll_fd(), socks[1].poll_fd()];
                sys::wait_for_frames(&mut fds, Duration::from_millis(10));
            }
        }
    }
    println!("{}", serde_json::json!({"forwarded": forwarded}));
}

fn main() {
    sgswitch::port::xdp::sys::quiet_libraries();
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("tx") if args.len() > 2 => tx(&args),
        Some("rx") if args.len() > 2 => rx(&args),
        Some("fwd") if args.len() > 3 => fwd(&args),
        _ => {
            eprintln!(
                "usage: xsk tx IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N [--flows F] --seconds S\n       xsk rx IFACE --seconds S\n       xsk fwd IFACE_A IFACE_B --seconds S [--core C]"
            );
            std::process::exit(1);
        }
    }
}
