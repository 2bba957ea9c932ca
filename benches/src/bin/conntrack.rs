//! Connection-table costs, single core, batched as the datapath calls it.
//!
//! `cargo run --release -p sgswitch-benches --bin conntrack -- --json [--quick]`
//! prints one JSON object per line, table size and flow popularity, with
//! `entries`, `distribution` (`uniform` or `zipf`, s = 1.0),
//! `hit_ns_median` and `hit_ns_p99` (per packet, over `track_batch` calls of
//! 64 packets that all hit, state update included), `single_hit_ns_median`
//! (the same packets through `track` one by one), `new_flows_per_sec` (inserting
//! distinct flows into an empty table), `expire_ns_per_entry` (the amortised
//! sweep freeing every entry), `entry_bytes` and `bytes_per_flow` (entry,
//! counters, wheel linkage and index slots at the configured load).
//! `reference_hit_ns_median` calibrates the machine in the same run: the same
//! packets looked up in a `hashbrown` map from a packed IPv4 5-tuple (16
//! bytes, one direction per flow, no state machine, no expiry) to two
//! counters, so `hit_vs_reference` compares the table with a plain hash map
//! lookup on the same cores at the same moment.
//! Sizes: 64k, 1M and 4M entries; `--quick`: 64k and 1M; `--size N`: N only.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use sgswitch_conntrack::{BATCH, Now, Outcome, PacketInfo, Settings, Table, Tuple};

/// xorshift64*: deterministic and dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn flow(i: u32) -> Tuple {
    Tuple {
        zone: u16::try_from(i % 64).expect("< 64"),
        proto: 17,
        src: IpAddr::V4(Ipv4Addr::from(0x0a00_0000 | (i >> 6))),
        dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
        sport: 10_000 + u16::try_from(i % 50_000).expect("< 50000"),
        dport: 53,
    }
}

const PKT: PacketInfo = PacketInfo { tcp_flags: 0, tcp_seq: 0, payload_len: 18, wire_len: 64 };

fn settings(n: usize) -> Settings {
    let cap = u32::try_from(n).expect("fits");
    Settings { capacity: cap, per_zone_capacity: cap, seed: 0x1234_5678, ..Settings::default() }
}

/// Samples of flow indices: uniform, or Zipf(1.0) by inverse CDF.
fn samples(n: usize, count: usize, zipf: bool, rng: &mut Rng) -> Vec<u32> {
    if !zipf {
        return (0..count).map(|_| u32::try_from(rng.next() % n as u64).expect("< n")).collect();
    }
    let mut cdf = Vec::with_capacity(n);
    let mut sum = 0.0;
    for k in 1..=n {
        sum += 1.0 / k as f64;
        cdf.push(sum);
    }
    // Popular ranks are scattered over the table, not the first entries.
    let perm: Vec<u32> = {
        let mut p: Vec<u32> = (0..u32::try_from(n).expect("fits")).collect();
        for i in (1..n).rev() {
            let j = usize::try_from(rng.next() % (i as u64 + 1)).expect("fits");
            p.swap(i, j);
        }
        p
    };
    (0..count)
        .map(|_| {
            let u = rng.unit() * sum;
            perm[cdf.partition_point(|&c| c < u).min(n - 1)]
        })
        .collect()
}

/// A flow's IPv4 5-tuple packed in 16 bytes, as the reference map's key.
fn packed(t: &Tuple) -> u128 {
    let v4 = |a: IpAddr| match a {
        IpAddr::V4(a) => u128::from(a.to_bits()),
        IpAddr::V6(_) => unreachable!("the benchmark's flows are IPv4"),
    };
    v4(t.src) << 96
        | v4(t.dst) << 64
        | u128::from(t.sport) << 48
        | u128::from(t.dport) << 32
        | u128::from(t.zone) << 8
        | u128::from(t.proto)
}

/// ns per packet, per batch of [`BATCH`], of a plain hash map lookup that
/// bumps a packet and a byte counter: each packet is looked up as its flow
/// was inserted (a reply reversed back), so every lookup hits.
fn reference_hits(flows: &[Tuple], packets: &[Tuple]) -> Vec<f64> {
    let mut map: hashbrown::HashMap<u128, [u64; 2]> = hashbrown::HashMap::with_capacity(flows.len());
    for f in flows {
        map.insert(packed(f), [0; 2]);
    }
    let mut per_batch = Vec::with_capacity(packets.len() / BATCH);
    for (k, chunk) in packets.chunks_exact(BATCH).enumerate() {
        let start = Instant::now();
        for (j, tp) in black_box(chunk).iter().enumerate() {
            let key = if (k * BATCH + j) % 2 == 0 { packed(tp) } else { packed(&tp.reversed()) };
            if let Some(c) = map.get_mut(&key) {
                c[0] += 1;
                c[1] += u64::from(PKT.wire_len);
            }
        }
        per_batch.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    black_box(&map);
    per_batch
}

fn run(n: usize, zipf: bool, json: bool) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ n as u64);
    let flows: Vec<Tuple> = (0..u32::try_from(n).expect("fits")).map(flow).collect();

    // New flows per second: fill an empty table.
    let mut t = Table::new(settings(n), 64);
    let start = Instant::now();
    for f in &flows {
        let o = t.track(f, &PKT, Now(1_000), 1, |_| true);
        debug_assert_eq!(o, Outcome::New);
    }
    let fill = start.elapsed().as_secs_f64();
    assert_eq!(t.len(), n, "every flow inserted");
    let new_per_sec = n as f64 / fill;

    // Hits, replies and requests mixed: through track_batch (as the
    // datapath calls it) and one by one, on the same packets, in one run.
    let count = 2_000_000usize.max(n);
    let picks = samples(n, count, zipf, &mut rng);
    let packets: Vec<Tuple> =
        picks.iter().enumerate().map(|(k, &i)| if k % 2 == 0 { flows[i as usize] } else { flows[i as usize].reversed() }).collect();
    let infos = [PKT; BATCH];
    let mut out = [Outcome::Invalid; BATCH];
    let mut batched = Vec::with_capacity(count / BATCH);
    let mut single = Vec::with_capacity(count / BATCH);
    // The clock moves on, but both passes end within 20 s of the flows'
    // creation, well inside the shortest timeout (UDP unreplied, 30 s):
    // every packet hits a live entry (checked below), none finds its
    // flow expired and makes it again.
    let batches = 2 * (count / BATCH);
    let clock = |b: usize| Now(2_000 + (b * 18_000 / batches) as u64);
    let mut missed = 0usize;
    for (b, chunk) in packets.chunks_exact(BATCH).enumerate() {
        let now = clock(b);
        let start = Instant::now();
        t.track_batch(black_box(chunk), &infos, now, 1, |_| true, &mut out);
        batched.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
        missed += black_box(&out).iter().filter(|&&o| o != Outcome::Established).count();
    }
    for (b, chunk) in packets.chunks_exact(BATCH).enumerate() {
        let now = clock(batches / 2 + b);
        let start = Instant::now();
        for tp in chunk {
            let o = t.track(black_box(tp), &PKT, now, 1, |_| true);
            missed += usize::from(black_box(o) != Outcome::Established);
        }
        single.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    assert_eq!(missed, 0, "every measured packet hit an established entry");
    let now = clock(batches).0;
    let mut reference = reference_hits(&flows, &packets);
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    let (b50, b99) = (pct(&mut batched, 50), pct(&mut batched, 99));
    let s50 = pct(&mut single, 50);
    let r50 = pct(&mut reference, 50);

    // Expiry: everything times out; sweep until caught up.
    let later = Now(now + 400_000);
    let start = Instant::now();
    let mut freed = 0;
    while !t.caught_up(later) {
        freed += t.expire(later, 256);
    }
    let expire_ns = start.elapsed().as_nanos() as f64 / freed.max(1) as f64;
    assert_eq!(freed, n, "the sweep freed every flow");

    let dist = if zipf { "zipf" } else { "uniform" };
    if json {
        println!(
            "{{\"entries\":{n},\"distribution\":\"{dist}\",\"hit_ns_median\":{b50:.1},\"hit_ns_p99\":{b99:.1},\"single_hit_ns_median\":{s50:.1},\"new_flows_per_sec\":{:.0},\"expire_ns_per_entry\":{:.1},\"entry_bytes\":{},\"bytes_per_flow\":{},\"reference_hit_ns_median\":{r50:.1},\"hit_vs_reference\":{:.2}}}",
            new_per_sec,
            expire_ns,
            Table::entry_size(),
            t.bytes_per_flow(),
            b50 / r50
        );
    } else {
        println!(
            "{n:>8} {dist:<8} hit {b50:>6.1} ns median {b99:>6.1} ns p99 (one by one {s50:>6.1}, hash map {r50:>5.1}), {:>5.2} M new flows/s, expiry {:>5.1} ns/entry, {} B/flow",
            new_per_sec / 1e6,
            expire_ns,
            t.bytes_per_flow()
        );
    }
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let json = std::env::args().any(|a| a == "--json");
    let args: Vec<String> = std::env::args().collect();
    // `--size N`: one table size only (for profiling).
    let one: Option<usize> = args.iter().position(|a| a == "--size").and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok());
    let sizes: Vec<usize> = match one {
        Some(n) => vec![n],
        None if quick => vec![1 << 16, 1 << 20],
        None => vec![1 << 16, 1 << 20, 1 << 22],
    };
    for &n in &sizes {
        for zipf in [false, true] {
            run(n, zipf, json);
        }
    }
}
