//! AF_XDP traffic for the end-to-end benchmark (`benches/e2e.sh`), on the
//! same socket code as the switch (`sgswitch::xdp`). Root; each mode runs on
//! one interface pair inside the namespace it is started in.
//!
//! - `xsk tx IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N
//!   --flows F --seconds S`: 64-byte UDP frames (60 bytes and the FCS) as
//!   fast as the ring takes them, F flows (source ports 10000..), for S
//!   seconds; prints `{"sent":N,"seconds":S}`.
//! - `xsk rx IFACE --seconds S`: counts frames for S seconds from the first
//!   one; prints `{"received":N,"seconds":S,"pps":R}`.
//! - `xsk fwd IFACE_A IFACE_B --seconds S`: the ceiling: forwards every frame
//!   from A to B and from B to A by descriptor on one shared UMEM, with no
//!   parsing or policy; prints `{"forwarded":N}`.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sgswitch::port::Rings;
use sgswitch::port::xdp::{Frame, Memory, Socket};
use sgswitch_config::{XdpMode, ZeroCopy};
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
    mem.bind(iface, 0, XdpMode::Auto, ZeroCopy::Auto).unwrap_or_else(|e| {
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
    let seconds: u64 = need(args, "--seconds").parse().expect("--seconds N");
    let flows: u16 = arg(args, "--flows").unwrap_or("1024").parse().expect("--flows N");
    let dport: u16 = need(args, "--dport").parse().expect("--dport N");
    let ends = Ends {
        src_mac: mac(need(args, "--src-mac")),
        dst_mac: mac(need(args, "--dst-mac")),
        src: need(args, "--src").parse::<Ipv4Addr>().expect("--src IPv4").into(),
        dst: need(args, "--dst").parse::<Ipv4Addr>().expect("--dst IPv4").into(),
    };
    let templates: Vec<Vec<u8>> = (0..flows.max(1)).map(|i| frames::udp(&ends, 10_000 + i, dport, &[0; 18])).collect();
    let mut mem = memory();
    let mut sock = bind(&mut mem, iface);
    let mut batch: Vec<Frame> = Vec::with_capacity(BATCH);
    let (mut sent, mut next) = (0u64, 0usize);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(seconds) {
        sock.reclaim(&mut mem);
        while batch.len() < BATCH {
            let Some(f) = mem.copy_in(&templates[next % templates.len()]) else { break };
            batch.push(f);
            next += 1;
        }
        let n = sock.transmit(&mut mem, &mut batch);
        sent += n as u64;
        if n == 0 {
            std::hint::spin_loop();
        }
    }
    println!("{}", serde_json::json!({"sent": sent, "seconds": seconds}));
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
