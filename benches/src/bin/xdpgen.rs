//! The end-to-end benchmark's generator and sink (`sgswitch_tests::xdpgen`),
//! frames made and counted in XDP. Root; run inside the namespace of the
//! interface.
//!
//! - `xdpgen send IFACE --src-mac M --dst-mac M --src IP --dst IP --dport N
//!   [--flows F | --new] [--pps R [--burst B | --even]] [--stamp] [--af-packet]
//!   --seconds S`:
//!   64-byte UDP frames out of IFACE (on veth: into its peer), F flows in
//!   turn (a power of two; default 1,024) or a new flow each frame, as fast
//!   as the kernel makes them or R a second: in bursts of B paced from user
//!   space, or with `--even` one by one, each the moment it is due, paced
//!   by the program itself (`Generator::with_pace`); prints
//!   `{"sent":N,"seconds":S,"mpps":X,"via":V}`, V how the frames were
//!   sent: `live-frames` (`BPF_PROG_RUN`), or `af-packet` where the
//!   kernel refuses live frames or `--af-packet` asks for it (see
//!   `xdpgen::Via`).
//! - `xdpgen live`: exits 0 where the kernel runs `BPF_PROG_RUN` live
//!   frames, 3 where it refuses them (`benches/e2e.sh` then sends with
//!   `xsk tx`, the same frames through an AF_XDP socket).
//! - `xdpgen redirect IN OUT --seconds S`: sends every frame arriving on
//!   IN out of OUT in XDP (`bpf_redirect`), for S seconds: the cost of an
//!   XDP-level fast path with no lookup.
//! - `xdpgen sink IFACE --warmup W --seconds S`: counts and drops what
//!   arrives on IFACE; after W seconds, counts for S; prints
//!   `{"frames":N,"seconds":S,"mpps":X,"stamped":K,"p50_us":..,"p99_us":..}`
//!   (latencies of stamped frames, null without).

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use sgswitch_tests::xdpgen::{Generator, Redirect, Sink, Traffic, Via};

fn arg<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn fail(msg: &str) -> ! {
    eprintln!("xdpgen: {msg}");
    std::process::exit(1)
}

fn need<T: std::str::FromStr>(args: &[String], name: &str) -> T {
    arg(args, name).and_then(|v| v.parse().ok()).unwrap_or_else(|| fail(&format!("{name}: a value is required")))
}

fn mac(s: &str) -> [u8; 6] {
    let v: Vec<u8> = s.split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    v.try_into().unwrap_or_else(|_| fail(&format!("{s} is not a MAC address")))
}

fn send(iface: &str, args: &[String]) {
    let t = Traffic {
        src_mac: mac(&need::<String>(args, "--src-mac")),
        dst_mac: mac(&need::<String>(args, "--dst-mac")),
        src: need::<Ipv4Addr>(args, "--src"),
        dst: need::<Ipv4Addr>(args, "--dst"),
        dport: need(args, "--dport"),
        flows: if args.iter().any(|a| a == "--new") {
            None
        } else {
            Some(arg(args, "--flows").map_or(1024, |v| v.parse().unwrap_or_else(|_| fail("--flows"))))
        },
        stamp: args.iter().any(|a| a == "--stamp"),
    };
    let seconds: f64 = need(args, "--seconds");
    let pps: Option<u64> = arg(args, "--pps").map(|r| r.parse().unwrap_or_else(|_| fail("--pps")));
    let in_kernel = args.iter().any(|a| a == "--even");
    let g = match pps {
        _ if args.iter().any(|a| a == "--af-packet") => Generator::via(Via::Packet, iface, &t, pps.filter(|_| in_kernel)),
        Some(r) if in_kernel => Generator::with_pace(iface, &t, r),
        _ => Generator::new(iface, &t),
    }
    .unwrap_or_else(|e| fail(&e.to_string()));
    let d = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    let sent = match pps {
        Some(_) if in_kernel => g.run_paced(d),
        Some(r) => g.paced(r, d, arg(args, "--burst").map_or(4, |b| b.parse().unwrap_or(4))),
        None => g.flood(d),
    }
    .unwrap_or_else(|e| fail(&e.to_string()));
    let took = start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"sent": sent, "seconds": took, "mpps": (sent as f64 / took / 1e6 * 1000.0).round() / 1000.0, "via": g.sends_via().name()})
    );
}

fn sink(iface: &str, args: &[String]) {
    let warmup: f64 = need(args, "--warmup");
    let seconds: f64 = need(args, "--seconds");
    let s = Sink::attach(iface).unwrap_or_else(|e| fail(&e.to_string()));
    // Ready: the script starts the traffic once this line is out.
    println!("{}", serde_json::json!({"attached": iface}));
    std::thread::sleep(Duration::from_secs_f64(warmup));
    let a = s.seen().unwrap_or_else(|e| fail(&e.to_string()));
    let t = Instant::now();
    std::thread::sleep(Duration::from_secs_f64(seconds));
    let b = s.seen().unwrap_or_else(|e| fail(&e.to_string()));
    let took = t.elapsed().as_secs_f64();
    let w = b.since(&a);
    let stamped: u64 = w.latency.iter().sum();
    println!(
        "{}",
        serde_json::json!({
            "frames": w.frames,
            "seconds": took,
            "mpps": (w.frames as f64 / took / 1e6 * 1000.0).round() / 1000.0,
            "stamped": stamped,
            "p50_us": w.quantile(500_000),
            "p99_us": w.quantile(990_000),
        })
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match (args.first().map(String::as_str), args.get(1)) {
        (Some("send"), Some(iface)) => send(iface, &args[2..]),
        (Some("sink"), Some(iface)) => sink(iface, &args[2..]),
        (Some("live"), None) => match Generator::live_frames_run_here() {
            Ok(true) => {}
            Ok(false) => {
                eprintln!("xdpgen: this kernel refuses BPF_PROG_RUN live frames");
                std::process::exit(3)
            }
            Err(e) => fail(&e.to_string()),
        },
        (Some("redirect"), Some(from)) => {
            let to = args.get(2).unwrap_or_else(|| fail("redirect IN OUT"));
            let seconds: f64 = need(&args[3..], "--seconds");
            let _r = Redirect::attach(from, to).unwrap_or_else(|e| fail(&e.to_string()));
            std::thread::sleep(Duration::from_secs_f64(seconds));
        }
        _ => fail(
            "usage: xdpgen send IFACE ... | xdpgen sink IFACE --warmup W --seconds S | xdpgen live | xdpgen redirect IN OUT --seconds S",
        ),
    }
}
