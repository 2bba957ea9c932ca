//! The guest side of the vhost-user benchmark (`benches/vhost.sh`): two
//! virtio-net NICs driven from one thread, as poll-mode drivers in guests
//! drive theirs (`sgswitch_tests::vguest`). One sends 64-byte UDP frames
//! through the switch under test as fast as its send ring takes them; the
//! other takes every frame the switch writes into its receive ring. Each
//! second it prints what was sent and received; at the end one JSON line
//! with the median received rate.
//!
//! ```text
//! vhostgen --tx SOCK --rx SOCK --case established|new [--flows N]
//!          [--seconds S] [--core C] [--src-mac M --dst-mac M]
//!          [--src 10.2.0.0 --dst 10.3.0.2 --dport 5001]
//! ```
//!
//! `established`: `--flows` flows (source ports 1024.., one source
//! address), over and over. `new`: a new flow every frame (source address
//! and port counted up from `--src`, 2^31 frames before one repeats): the
//! switch's send port must own `--src`/16.

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use sgswitch_tests::vguest::Driver;

struct Args {
    tx: PathBuf,
    rx: PathBuf,
    new_flows: bool,
    flows: u32,
    seconds: u64,
    core: usize,
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    dport: u16,
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').map(|p| u8::from_str_radix(p, 16).expect("a MAC such as 02:00:00:00:00:01")).collect();
    v.try_into().expect("six bytes")
}

fn parse() -> Args {
    let mut a = Args {
        tx: PathBuf::new(),
        rx: PathBuf::new(),
        new_flows: false,
        flows: 1,
        seconds: 5,
        core: 1,
        src_mac: mac("02:00:00:00:20:01"),
        dst_mac: mac("02:00:00:00:20:02"),
        src: Ipv4Addr::new(10, 2, 0, 0),
        dst: Ipv4Addr::new(10, 3, 0, 2),
        dport: 5001,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut it = args.iter();
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--tx" => a.tx = v.into(),
            "--rx" => a.rx = v.into(),
            "--case" => a.new_flows = v == "new",
            "--flows" => a.flows = v.parse().expect("--flows N"),
            "--seconds" => a.seconds = v.parse().expect("--seconds S"),
            "--core" => a.core = v.parse().expect("--core C"),
            "--src-mac" => a.src_mac = mac(v),
            "--dst-mac" => a.dst_mac = mac(v),
            "--src" => a.src = v.parse().expect("--src IPv4"),
            "--dst" => a.dst = v.parse().expect("--dst IPv4"),
            "--dport" => a.dport = v.parse().expect("--dport N"),
            _ => panic!("unknown argument {k}"),
        }
    }
    a
}

/// A 60-byte Ethernet/IPv4/UDP frame (64 on the wire with the FCS).
fn template(a: &Args) -> [u8; 60] {
    let mut f = [0u8; 60];
    f[0..6].copy_from_slice(&a.dst_mac);
    f[6..12].copy_from_slice(&a.src_mac);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // IPv4: 20-byte header, total length 46 (to the frame's end), UDP.
    f[14] = 0x45;
    f[16..18].copy_from_slice(&46u16.to_be_bytes());
    f[22] = 64;
    f[23] = 17;
    f[26..30].copy_from_slice(&a.src.octets());
    f[30..34].copy_from_slice(&a.dst.octets());
    f[34..36].copy_from_slice(&1024u16.to_be_bytes());
    f[36..38].copy_from_slice(&a.dport.to_be_bytes());
    f[38..40].copy_from_slice(&26u16.to_be_bytes());
    // UDP checksum 0: none (IPv4 allows it).
    ip_checksum(&mut f);
    f
}

fn ip_checksum(f: &mut [u8; 60]) {
    f[24] = 0;
    f[25] = 0;
    let mut sum = 0u32;
    for w in f[14..34].chunks_exact(2) {
        sum += u32::from(u16::from_be_bytes([w[0], w[1]]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    f[24..26].copy_from_slice(&(!u16::try_from(sum).unwrap_or(0)).to_be_bytes());
}

fn main() {
    let a = parse();
    if !core_affinity::set_for_current(core_affinity::CoreId { id: a.core }) {
        eprintln!("vhostgen: could not pin to core {}", a.core);
    }
    let mut tx = Driver::connect(&a.tx, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{}: {e}", a.tx.display()));
    let mut rx = Driver::connect(&a.rx, Duration::from_secs(10)).unwrap_or_else(|e| panic!("{}: {e}", a.rx.display()));
    let base = template(&a);
    let src = u32::from(a.src);
    let mut k: u32 = 0;
    let (mut sent, mut received) = (0u64, 0u64);
    let mut per_second: Vec<(f64, f64)> = Vec::new();
    let start = Instant::now();
    let mut mark = (start, 0u64, 0u64);
    let mut iterations = 0u64;
    let mut full = 0u64;
    // A second of warm-up (rings filling, the first flows made), then
    // `seconds` measured.
    let end = start + Duration::from_secs(a.seconds + 1);
    loop {
        let flows = a.flows.clamp(1, 60_000);
        let new_flows = a.new_flows;
        let took = tx.send_with(32, base.len(), |_, f| {
            f.copy_from_slice(&base);
            if new_flows {
                // 2^15 source ports per source address.
                let ip = src.wrapping_add(k >> 15);
                f[26..30].copy_from_slice(&ip.to_be_bytes());
                f[34..36].copy_from_slice(&(1024 + (k & 0x7fff) as u16).to_be_bytes());
                let frame: &mut [u8; 60] = f.try_into().expect("60 bytes");
                ip_checksum(frame);
            } else {
                f[34..36].copy_from_slice(&(1024 + u16::try_from(k % flows).unwrap_or(0)).to_be_bytes());
            }
            k = k.wrapping_add(1);
        });
        sent += took as u64;
        // The send ring had no room: the switch, not this thread, is behind.
        full += u64::from(took == 0);
        received += rx.drain() as u64;
        iterations += 1;
        if iterations % 256 != 0 {
            continue;
        }
        let now = Instant::now();
        if now.duration_since(mark.0) >= Duration::from_secs(1) {
            let secs = now.duration_since(mark.0).as_secs_f64();
            let (s, r) = ((sent - mark.1) as f64 / secs / 1e6, (received - mark.2) as f64 / secs / 1e6);
            eprintln!("{{\"t\":{:.1},\"sent_mpps\":{s:.3},\"received_mpps\":{r:.3}}}", now.duration_since(start).as_secs_f64());
            if now.duration_since(start) > Duration::from_millis(1500) {
                per_second.push((s, r));
            }
            mark = (now, sent, received);
        }
        if now >= end {
            break;
        }
    }
    let mut r: Vec<f64> = per_second.iter().map(|p| p.1).collect();
    let mut s: Vec<f64> = per_second.iter().map(|p| p.0).collect();
    r.sort_by(f64::total_cmp);
    s.sort_by(f64::total_cmp);
    let median = |v: &[f64]| v.get(v.len() / 2).copied().unwrap_or(0.0);
    // `ring_full`: the share of send attempts that found the send ring
    // full (near 1: the switch is the bound, not this generator).
    println!(
        "{{\"case\":\"{}\",\"offered_mpps\":{:.3},\"mpps\":{:.3},\"ring_full\":{:.2},\"kicks\":{}}}",
        if a.new_flows { "new" } else { "established" },
        median(&s),
        median(&r),
        full as f64 / iterations.max(1) as f64,
        tx.kicks
    );
}
