//! AF_XDP traffic for the end-to-end benchmark (`benches/e2e.sh`), on the
//! same socket code as the switch (`sgswitch::xdp`). Root; each mode runs on
//! one interface pair inside the namespace it is started in.
//!
//! - `xsk tx IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N
//!   --flows F --seconds S [--pps R [--burst B]] [--stamp]`: 64-byte UDP
//!   frames (60 bytes and the FCS), F flows (source ports 10000..), for S
//!   seconds, as fast as the ring takes them or R a second in bursts of B
//!   (default 1); with `--stamp`, each frame carries its send time
//!   (`CLOCK_MONOTONIC`, the clock of `bpf_ktime_get_ns`) at the payload's
//!   start for `xdpgen sink`'s latency (the UDP checksum is left out, as
//!   IPv4 allows); prints `{"sent":N,"seconds":S,"mpps":X}`. The paced
//!   sender of `benches/e2e.sh`'s latency points: one frame costs the
//!   sender about a microsecond, where a BPF_PROG_RUN call costs tens.
//! - `xsk rx IFACE --seconds S`: counts frames for S seconds from the first
//!   one; prints `{"received":N,"seconds":S,"pps":R}`.
//! - `xsk fwd IFACE_A IFACE_B --seconds S`: the ceiling: forwards every frame
//!   from A to B and from B to A by descriptor on one shared UMEM, with no
//!   parsing or policy; prints `{"forwarded":N}`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sgswitch::port::Rings;
use sgswitch::port::xdp::{BindOptions, Frame, Memory, Socket};
use sgswitch_config::Datapath;
use sgswitch_tests::frames::{self, Ends};

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

/// `CLOCK_MONOTONIC` in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid timespec the call writes.
    #[allow(unsafe_code, reason = "clock_gettime writes a timespec")]
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts);
    }
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

fn tx(args: &[String]) {
    let iface = &args[2];
    let seconds: f64 = need(args, "--seconds").parse().expect("--seconds N");
    let flows: u16 = arg(args, "--flows").unwrap_or("1024").parse().expect("--flows N");
    let dport: u16 = need(args, "--dport").parse().expect("--dport N");
    let pps: Option<u64> = arg(args, "--pps").map(|v| v.parse().expect("--pps N"));
    let burst: usize = arg(args, "--burst").unwrap_or("1").parse().expect("--burst N");
    let stamp = args.iter().any(|a| a == "--stamp");
    let ends = Ends {
        src_mac: mac(need(args, "--src-mac")),
        dst_mac: mac(need(args, "--dst-mac")),
        src: need(args, "--src").parse::<Ipv4Addr>().expect("--src IPv4").into(),
        dst: need(args, "--dst").parse::<Ipv4Addr>().expect("--dst IPv4").into(),
    };
    let mut templates: Vec<Vec<u8>> = (0..flows.max(1)).map(|i| frames::udp(&ends, 10_000 + i, dport, &[0; 18])).collect();
    if stamp {
        for t in &mut templates {
            t[40..42].copy_from_slice(&[0, 0]);
        }
    }
    let mut mem = memory();
    let mut sock = bind(&mut mem, iface);
    let mut batch: Vec<Frame> = Vec::with_capacity(BATCH);
    let (mut sent, mut next) = (0u64, 0usize);
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
            let k = next % templates.len();
            let tpl = &mut templates[k];
            if stamp {
                tpl[42..50].copy_from_slice(&monotonic_ns().to_ne_bytes());
            }
            let Some(f) = mem.copy_in(tpl) else { break };
            batch.push(f);
            next += 1;
        }
        let n = sock.transmit(&mut mem, &mut batch);
        sent += n as u64;
        if n == 0 {
            std::hint::spin_loop();
        }
    }
    let took = t.elapsed().as_secs_f64();
    println!("{}", serde_json::json!({"sent": sent, "seconds": took, "mpps": (sent as f64 / took / 1e6 * 1000.0).round() / 1000.0}));
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
    let mut mem = memory();
    let mut socks = [bind(&mut mem, a), bind(&mut mem, b)];
    let mut pending: [Vec<Frame>; 2] = [Vec::with_capacity(RING as usize), Vec::with_capacity(RING as usize)];
    let mut forwarded = 0u64;
    let share = (FRAMES - 512) / 4;
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(seconds) {
        for i in 0..2 {
            socks[i].reclaim(&mut mem);
            socks[i].refill(&mut mem, share);
            socks[i].receive(&mut mem, &mut pending[1 - i], BATCH);
        }
        for i in 0..2 {
            let sent = socks[i].transmit(&mut mem, &mut pending[i]);
            forwarded += sent as u64;
            for f in pending[i].drain(..) {
                mem.release(f);
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
                "usage: xsk tx IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N [--flows F] --seconds S\n       xsk rx IFACE --seconds S\n       xsk fwd IFACE_A IFACE_B --seconds S"
            );
            std::process::exit(1);
        }
    }
}
