//! The in-memory pipeline, single core: parse, anti-spoofing, conntrack,
//! classification and the forwarding decision over 64-byte frames in
//! batches of 64, as a poll loop calls it (one `tick` per batch).
//!
//! `cargo run --release -p sgswitch-benches --bin pipeline -- --json [--quick]`
//! prints one JSON object per line with `case`, `rules`, `mpps`,
//! `ns_per_packet`, `flows` and `packets`. Cases:
//! - `established`: frames of flows already in the table (50,000 flows),
//!   the best of four trials;
//! - `new`: every frame opens a flow the policy allows (an entry is made);
//! - `denied`: every frame is a first packet the policy denies (classified,
//!   nothing stored);
//! - `denied-flow-log`: the same with the flow log on at its defaults (100
//!   lines/s, bursts of 200: a flood is almost all rate-limited), and
//!   `denied-flow-log-unlimited` with no effective limit (every new denied
//!   flow queued until the queue is full). A thread drains the queue and
//!   formats every record, as the writer does. These cases also print
//!   `vs_off`, their rate over `denied`'s, from runs interleaved with it
//!   (best of each), so the ratio is taken within one run on this noisy
//!   machine. The target is at most a 5% fall (`vs_off` >= 0.95).
//! - `established-loops`: the established case on 1 and then 2 poll loops
//!   at once, each a thread pinned to its own core with its own pipeline
//!   (and so its own connection table and flow cache) and its own copy of
//!   the flows, as `sgswitch run` gives each loop its ports: `loops`, the
//!   loops' `mpps` together (all packets over the wall time, best of
//!   three trials), `ns_per_packet` per loop, and `vs_one_loop`, the
//!   2-loop rate over the 1-loop rate measured the same way in the same
//!   run. It shows how the pipeline scales from 1 to 2 cores without the
//!   end-to-end benchmark's generator, which needs a core of its own.
//!
//! The policy is the security-group shape of the `classify` benchmark (three
//! groups, group references with 100-1,000 members, wildcards), with 10 or
//! 1,000 ingress rules; the frames arrive from the uplink for the port.

use std::time::Instant;

use sgswitch::datapath::plan::{Plan, Zones};
use sgswitch::datapath::{Action, Outcome, Reason, Source};
use sgswitch::packet::flowlog::{self, FlowLog, Writer};
use sgswitch::packet::{Pipeline, conntrack_settings};
use sgswitch_benches::sgshape;
use sgswitch_config::Direction;
use sgswitch_config::{Config, Mac};
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_filter::Packet;
use sgswitch_tests::frames::{self, Ends, UPLINK_MAC};

const PORT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 0x10];
const BATCH: usize = 64;
const FRAME: usize = 64;

fn plan(rules: usize) -> Plan {
    let mut cfg: Config = sgshape::config(rules, 42);
    cfg.ports[0].mac = Some(Mac(PORT_MAC));
    cfg.host.conntrack.per_port_capacity = cfg.host.conntrack.capacity;
    Plan::build(cfg, &mut Zones::default(), 1).expect("one port").0
}

/// A 64-byte frame (60 bytes without the FCS, padded) for a packet arriving
/// at the port.
fn frame(p: &Packet) -> [u8; FRAME] {
    let e = Ends { src_mac: UPLINK_MAC, dst_mac: PORT_MAC, src: p.remote, dst: p.local };
    let f = match p.proto {
        6 => frames::tcp(&e, p.remote_port, p.local_port, "A", 1, 1, b""),
        17 => frames::udp(&e, p.remote_port, p.local_port, &[0; 18]),
        1 => frames::echo(&e, p.remote_port, 1, true),
        other => frames::raw_ip(&e, other, &[0; 26]),
    };
    let mut out = [0u8; FRAME];
    let n = f.len().min(FRAME);
    out[..n].copy_from_slice(&f[..n]);
    out
}

fn pipeline(plan: &Plan) -> Pipeline<u32> {
    let mut p = Pipeline::new(conntrack_settings(&plan.policy().config().host, 9), FragSettings::default());
    p.adopt(plan);
    p
}

/// Runs `frames` through `pipe` in batches, `rounds` times; returns ns per
/// packet and how many frames were forwarded.
fn run(pipe: &mut Pipeline<u32>, plan: &Plan, frames: &[[u8; FRAME]], rounds: usize, now: u64) -> (f64, usize) {
    let mut forwarded = 0;
    let t = Instant::now();
    let mut out = [Outcome { action: Action::Drop, reason: Reason::Default, port: None, direction: Direction::Ingress }; BATCH];
    for r in 0..rounds {
        let now = Now(now + r as u64);
        for batch in frames.chunks(BATCH) {
            let items: [(Source, &[u8], u32); BATCH] =
                std::array::from_fn(|i| (Source::Uplink, batch.get(i).map_or(&[][..], |f| &f[..]), 0));
            let n = batch.len();
            pipe.process_batch(plan, &items[..n], now, &mut out[..n]);
            forwarded += out[..n].iter().filter(|o| matches!(o.action, Action::Forward(_))).count();
            pipe.tick(plan, now);
        }
    }
    let ns = t.elapsed().as_nanos() as f64 / (frames.len() * rounds) as f64;
    (ns, forwarded)
}

/// The established case on `loops` threads at once, pinned to cores
/// `0..loops`, each with its own pipeline and flows, warmed as the
/// one-loop case is (the flows made, then their routes recorded): returns
/// the loops' packets per ns together (best of three trials, each timed
/// from the first loop's start to the last one's end).
fn established_loops(plan: &Plan, flows: &[[u8; FRAME]], rounds: usize, loops: usize) -> f64 {
    const TRIALS: usize = 3;
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    let barrier = std::sync::Barrier::new(loops);
    // Per loop, per trial: when it started and ended, and the frames it
    // forwarded (checked here, so that a failing loop cannot leave the
    // others waiting at the barrier).
    let spans: Vec<Vec<(Instant, Instant, usize)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..loops)
            .map(|i| {
                let (barrier, core) = (&barrier, cores.get(i).copied());
                s.spawn(move || {
                    if let Some(c) = core {
                        core_affinity::set_for_current(c);
                    }
                    let mut pipe = pipeline(plan);
                    run(&mut pipe, plan, flows, 1, 1);
                    run(&mut pipe, plan, flows, rounds, 2);
                    (0..TRIALS)
                        .map(|trial| {
                            barrier.wait();
                            let t0 = Instant::now();
                            let (_, fwd) = run(&mut pipe, plan, flows, rounds, 2 + ((trial + 1) * rounds) as u64);
                            (t0, Instant::now(), fwd)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("loop thread")).collect()
    });
    assert!(spans.iter().flatten().all(|&(_, _, fwd)| fwd == flows.len() * rounds), "every established frame forwarded");
    let packets = (flows.len() * rounds * loops) as f64;
    (0..TRIALS)
        .map(|trial| {
            let t0 = spans.iter().map(|l| l[trial].0).min().expect("a loop");
            let t1 = spans.iter().map(|l| l[trial].1).max().expect("a loop");
            packets / t1.duration_since(t0).as_nanos() as f64
        })
        .fold(0.0, f64::max)
}

fn print(json: bool, case: &str, rules: usize, ns: f64, flows: usize, packets: usize) {
    let mpps = 1e3 / ns;
    if json {
        println!(
            "{}",
            serde_json::json!({"case": case, "rules": rules, "mpps": (mpps * 100.0).round() / 100.0,
                "ns_per_packet": (ns * 10.0).round() / 10.0, "flows": flows, "packets": packets})
        );
    } else {
        println!("{case:<12} rules {rules:>5}  {mpps:>6.2} Mpps  {ns:>7.1} ns/packet  ({flows} flows, {packets} packets)");
    }
}

/// `--instructions CASE ROUNDS`: only `established` (20,000 flows made,
/// then ROUNDS passes over them) or `new` (ROUNDS passes, each of 20,000
/// flows not seen before), at 1,000 rules, for `benches/callgrind.sh`,
/// which runs it under callgrind collecting only inside [`measured`]: the
/// setup (random-seeded hash tables of the configuration among it) is not
/// counted, so the count is the same from run to run.
fn instructions(case: &str, rounds: usize) {
    const FLOWS: usize = 20_000;
    const MOST_ROUNDS: usize = 5;
    let plan = plan(1000);
    let cfg = plan.policy().config();
    let mut probe = pipeline(&plan);
    let allowed: Vec<[u8; FRAME]> = sgshape::packets(cfg, 600_000, 7)
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.remote_port = u16::try_from(1024 + i % 60_000).expect("port");
            frame(&p)
        })
        .filter(|f| {
            let o = probe.process(&plan, Source::Uplink, f, Now(0), 0);
            matches!((o.action, o.reason), (Action::Forward(_), Reason::Rule(_) | Reason::Default | Reason::IntraGroup))
        })
        .take(FLOWS * MOST_ROUNDS)
        .collect();
    drop(probe);
    assert_eq!(allowed.len(), FLOWS * MOST_ROUNDS, "enough allowed flows");
    assert!(rounds <= MOST_ROUNDS, "at most {MOST_ROUNDS} rounds");
    let mut pipe = pipeline(&plan);
    let batches: Vec<&[[u8; FRAME]]> = match case {
        "established" => {
            let flows = &allowed[..FLOWS];
            // Made, and their routes recorded, in setup.
            run(&mut pipe, &plan, flows, 2, 1);
            (0..rounds).map(|_| flows).collect()
        }
        "new" => (0..rounds).map(|r| &allowed[r * FLOWS..(r + 1) * FLOWS]).collect(),
        other => panic!("no case {other}: established or new"),
    };
    let forwarded = measured(&mut pipe, &plan, &batches);
    assert_eq!(forwarded, FLOWS * rounds, "every frame forwarded");
    println!("{}", serde_json::json!({"case": case, "frames": FLOWS * rounds}));
}

/// The work `benches/callgrind.sh` counts: each of `passes` through the
/// pipeline in batches, the clock a millisecond on each time.
#[inline(never)]
fn measured(pipe: &mut Pipeline<u32>, plan: &Plan, passes: &[&[[u8; FRAME]]]) -> usize {
    passes.iter().enumerate().map(|(i, frames)| run(pipe, plan, frames, 1, 10 + i as u64).1).sum()
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--instructions") {
        let case = args.get(i + 1).map_or("established", String::as_str);
        let rounds = args.get(i + 2).and_then(|r| r.parse().ok()).unwrap_or(1);
        return instructions(case, rounds);
    }
    let json = args.iter().any(|a| a == "--json");
    let quick = args.iter().any(|a| a == "--quick");
    let (n_packets, rounds) = if quick { (200_000, 3) } else { (1_000_000, 10) };
    for rules in [10, 1000] {
        let plan = plan(rules);
        let cfg = plan.policy().config();
        // First packets, judged once to sort allowed from denied.
        let candidates: Vec<Packet> = sgshape::packets(cfg, n_packets, 7)
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                // Distinct flows: the remote port carries the index.
                p.remote_port = u16::try_from(1024 + i % 60_000).expect("port");
                p
            })
            .collect();
        let mut probe = pipeline(&plan);
        let mut allowed = Vec::new();
        let mut denied = Vec::new();
        for p in &candidates {
            let f = frame(p);
            let o = probe.process(&plan, Source::Uplink, &f, Now(0), 0);
            match (o.action, o.reason) {
                (Action::Forward(_), Reason::Rule(_) | Reason::Default | Reason::IntraGroup) => allowed.push(f),
                (Action::Drop, Reason::Rule(_) | Reason::Default) => denied.push(f),
                _ => {}
            }
        }
        drop(probe);

        // Established: 50,000 flows created, then looked up again and again.
        let flows = &allowed[..allowed.len().min(50_000)];
        // Best of four trials of `rounds` passes (the clock moves on).
        let mut pipe = pipeline(&plan);
        run(&mut pipe, &plan, flows, 1, 1);
        let mut best = f64::MAX;
        for trial in 0..4 {
            let (ns, fwd) = run(&mut pipe, &plan, flows, rounds, 2 + (trial * rounds) as u64);
            assert_eq!(fwd, flows.len() * rounds, "every established frame forwarded");
            best = best.min(ns);
        }
        print(json, "established", rules, best, flows.len(), flows.len() * rounds);
        drop(pipe);

        // The same on 1 and 2 poll loops at once, each on its own core.
        let one = established_loops(&plan, flows, rounds, 1);
        let two = established_loops(&plan, flows, rounds, 2);
        for (loops, rate) in [(1, one), (2, two)] {
            print_loops(json, rules, loops, rate, flows.len(), flows.len() * rounds * loops, rate / one);
        }

        // New: every frame opens a flow (a fresh table each round).
        let mut best = f64::MAX;
        // The table's pages are touched once first (as in a running
        // switch), then emptied: each round inserts into a warm, empty table.
        let mut pipe = pipeline(&plan);
        run(&mut pipe, &plan, &allowed, 1, 1);
        for _ in 0..rounds.min(3) {
            pipe.conntrack.flush(None);
            let (ns, fwd) = run(&mut pipe, &plan, &allowed, 1, 1);
            assert_eq!(fwd, allowed.len(), "every new allowed flow forwarded");
            best = best.min(ns);
        }
        print(json, "new", rules, best, allowed.len(), allowed.len());

        // Denied first packets: classified, dropped, nothing stored; with
        // the flow log off and on, interleaved.
        let settings = [
            ("denied-flow-log", sgswitch_config::FlowLog { enabled: true, ..sgswitch_config::FlowLog::default() }),
            (
                "denied-flow-log-unlimited",
                sgswitch_config::FlowLog { enabled: true, rate: 1_000_000, burst: 1_000_000, ..sgswitch_config::FlowLog::default() },
            ),
        ];
        let mut off = f64::MAX;
        let mut on = [f64::MAX; 2];
        let mut offered = [0u64; 2];
        for _ in 0..3 {
            let mut pipe = pipeline(&plan);
            let (ns, fwd) = run(&mut pipe, &plan, &denied, rounds, 1);
            assert_eq!(fwd, 0);
            off = off.min(ns);
            for (k, (_, cfg)) in settings.iter().enumerate() {
                let mut pipe = pipeline(&plan);
                let (log, writer) = FlowLog::new(cfg);
                let stats = std::sync::Arc::clone(log.stats());
                pipe.flow_log = Some(log);
                let (ns, lines) = with_writer(writer, || run(&mut pipe, &plan, &denied, rounds, 1).0);
                on[k] = on[k].min(ns);
                let st = &stats;
                offered[k] = lines + st.repeat.get() + st.sampled_out.get() + st.rate_limited.get() + st.queue_full.get();
            }
        }
        print(json, "denied", rules, off, denied.len(), denied.len() * rounds);
        for (k, (case, _)) in settings.iter().enumerate() {
            assert_eq!(offered[k], (denied.len() * rounds) as u64, "every denied packet was offered to the log");
            print_vs(json, case, rules, on[k], denied.len(), denied.len() * rounds, off / on[k]);
        }
    }
}

/// Runs `f` while a thread drains and formats the log's records; returns
/// `f`'s result and the lines formatted.
fn with_writer(writer: Writer, f: impl FnOnce() -> f64) -> (f64, u64) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        let drain = s.spawn(|| {
            let mut lines = 0u64;
            let mut sink = std::io::sink();
            loop {
                let finished = done.load(Ordering::Acquire);
                while let Some(r) = writer.pop() {
                    let _ = std::io::Write::write_all(&mut sink, flowlog::line(&r, 0, None).as_bytes());
                    lines += 1;
                }
                if finished {
                    return lines;
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        });
        let ns = f();
        done.store(true, Ordering::Release);
        (ns, drain.join().expect("drain thread"))
    })
}

fn print_vs(json: bool, case: &str, rules: usize, ns: f64, flows: usize, packets: usize, vs_off: f64) {
    let mpps = 1e3 / ns;
    let vs = (vs_off * 1000.0).round() / 1000.0;
    if json {
        println!(
            "{}",
            serde_json::json!({"case": case, "rules": rules, "mpps": (mpps * 100.0).round() / 100.0,
                "ns_per_packet": (ns * 10.0).round() / 10.0, "flows": flows, "packets": packets, "vs_off": vs})
        );
    } else {
        println!(
            "{case:<12} rules {rules:>5}  {mpps:>6.2} Mpps  {ns:>7.1} ns/packet  ({flows} flows, {packets} packets)  {vs:.3} of the rate with the log off"
        );
    }
}

/// One `established-loops` line: `per_ns` is the loops' packets per ns
/// together.
fn print_loops(json: bool, rules: usize, loops: usize, per_ns: f64, flows: usize, packets: usize, vs_one: f64) {
    let mpps = per_ns * 1e3;
    let ns = loops as f64 / per_ns;
    let vs = (vs_one * 1000.0).round() / 1000.0;
    if json {
        println!(
            "{}",
            serde_json::json!({"case": "established-loops", "rules": rules, "loops": loops, "mpps": (mpps * 100.0).round() / 100.0,
                "ns_per_packet": (ns * 10.0).round() / 10.0, "flows": flows, "packets": packets, "vs_one_loop": vs})
        );
    } else {
        println!(
            "established rules {rules:>5}  {loops} loops {mpps:>6.2} Mpps  {ns:>7.1} ns/packet per loop  ({flows} flows each, {packets} packets)  {vs:.3} of one loop"
        );
    }
}
