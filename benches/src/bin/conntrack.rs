//! Connection-table costs, single core, batched as the datapath calls it.
//!
//! `cargo run --release -p sgswitch-benches --bin conntrack -- --json [--quick]`
//! prints one JSON object per line, table size and flow popularity, with
//! `entries`, `distribution` (`uniform` or `zipf`, s = 1.0),
//! `hit_ns_median` and `hit_ns_p99` (per packet, over `track_batch` calls of
//! 64 packets that all hit, state update included), `single_hit_ns_median`
//! (the same packets through `track` one by one), `new_flows_per_sec` (inserting
//! distinct flows into an empty table), `expire_ns_per_entry` (the amortised
//! sweep freeing every entry), `full_new_flows_per_sec` (distinct flows
//! into a table whose two zones are full, alternating between the zones as
//! a frame between two ports does, in batches: each flow evicts its zone's
//! oldest unassured one), `entry_bytes` and `bytes_per_flow` (entry,
//! counters, wheel linkage and index slots at the configured load).
//! `reference_hit_ns_median` calibrates the machine in the same run: the same
//! packets looked up in a `hashbrown` map from a packed IPv4 5-tuple (16
//! bytes, one direction per flow, no state machine, no expiry) to two
//! counters, so `hit_vs_reference` compares the table with a plain hash map
//! lookup on the same cores at the same moment.
//! `probe_hit_ns_median` calibrates it against the structure issue 5 names
//! for its targets ("a tuned open-addressing probe measures 7 and 18 ns
//! here", for 15 and 30 ns): the same lookups, batched as the table's, in an
//! open-addressing array of 32-byte slots (key, two counters; linear
//! probing, load at most 1/2) whose slots are all prefetched before any is
//! probed. `hit_vs_probe` is the table's cost over it; the targets are a
//! ratio of 15/7 (2.14) at 64k entries and 30/18 (1.67) at 1M, whatever the
//! machine. With `--size N`, the ratio of the nearer of the two.
//! Sizes: 64k, 1M and 4M entries; `--quick`: 64k and 1M; `--size N`: N only.

use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr};
use std::time::Instant;

use sgswitch_conntrack::key::fold;
use sgswitch_conntrack::{BATCH, Now, Outcome, PacketInfo, Settings, Table, Tuple, mem};

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

/// The reference map: a plain hash map from each flow's packed key (one
/// direction per flow) to a packet and a byte counter.
fn reference_map(flows: &[Tuple]) -> hashbrown::HashMap<u128, [u64; 2]> {
    let mut map: hashbrown::HashMap<u128, [u64; 2]> = hashbrown::HashMap::with_capacity(flows.len());
    for f in flows {
        map.insert(packed(f), [0; 2]);
    }
    map
}

/// The key a packet is looked up by in the reference map and the probe:
/// its flow's, as the flow was inserted (the measured packets alternate
/// request and reply, so an odd one is reversed back).
fn lookup_key(at: usize, tp: &Tuple) -> u128 {
    if at % 2 == 0 { packed(tp) } else { packed(&tp.reversed()) }
}

/// ns per packet of one batch of a plain hash map lookup that bumps a
/// packet and a byte counter; `at` is the batch's first packet's place
/// in the run. Every lookup hits.
fn reference_batch(map: &mut hashbrown::HashMap<u128, [u64; 2]>, at: usize, chunk: &[Tuple]) -> f64 {
    let start = Instant::now();
    for (j, tp) in black_box(chunk).iter().enumerate() {
        if let Some(c) = map.get_mut(&lookup_key(at + j, tp)) {
            c[0] += 1;
            c[1] += u64::from(PKT.wire_len);
        }
    }
    start.elapsed().as_nanos() as f64 / chunk.len() as f64
}

/// A slot of [`Probe`]: a packed key (0: empty) and two counters.
#[derive(Clone, Copy, Default)]
#[repr(C, align(32))]
struct Slot {
    key: u128,
    counters: [u64; 2],
}

/// The tuned open-addressing probe of issue 5's targets (see the module
/// documentation): no state, no expiry, no second direction.
struct Probe {
    slots: Vec<Slot>,
    mask: usize,
}

impl Probe {
    fn new(keys: impl ExactSizeIterator<Item = u128>) -> Probe {
        let n = (keys.len() * 2).next_power_of_two().max(2);
        let mut p = Probe { slots: mem::filled(n, Slot::default()), mask: n - 1 };
        for k in keys {
            let i = p.seek(p.place(k), k);
            p.slots[i].key = k;
        }
        p
    }

    #[expect(clippy::cast_possible_truncation, reason = "a slot is some bits of the hash")]
    #[inline]
    fn place(&self, k: u128) -> usize {
        let h = fold((k as u64) ^ 0x243f_6a88_85a3_08d3, ((k >> 64) as u64) ^ 0x1319_8a2e_0370_7344);
        (h as usize) & self.mask
    }

    /// The slot of `k`'s probe sequence from `start` that holds `k`, or
    /// else the empty one that ends it (load at most 1/2: there is one).
    #[inline]
    fn seek(&self, start: usize, k: u128) -> usize {
        let mut i = start;
        while self.slots[i].key != 0 && self.slots[i].key != k {
            i = (i + 1) & self.mask;
        }
        i
    }

    /// Looks a batch of keys up, all slots prefetched first; bumps each
    /// hit's counters.
    #[inline]
    fn hit_batch(&mut self, keys: &[u128; BATCH]) {
        let mut at = [0usize; BATCH];
        for (a, &k) in at.iter_mut().zip(keys) {
            *a = self.place(k);
            mem::prefetch(&self.slots[*a]);
        }
        for (&start, &k) in at.iter().zip(keys) {
            if k == 0 {
                continue;
            }
            let i = self.seek(start, k);
            let s = &mut self.slots[i];
            if s.key == k {
                s.counters[0] += 1;
                s.counters[1] += u64::from(PKT.wire_len);
            }
        }
    }
}

/// ns per packet of one batch of the same lookups as [`reference_batch`]
/// in a [`Probe`].
fn probe_batch(probe: &mut Probe, at: usize, chunk: &[Tuple]) -> f64 {
    let start = Instant::now();
    let chunk = black_box(chunk);
    let keys: [u128; BATCH] = std::array::from_fn(|j| chunk.get(j).map_or(0, |tp| lookup_key(at + j, tp)));
    probe.hit_batch(&keys);
    start.elapsed().as_nanos() as f64 / chunk.len() as f64
}

/// Issue 5's target for a table of `n` entries as a ratio over the tuned
/// probe: 15/7 at 64k entries, 30/18 at 1M (the nearer of the two).
fn probe_target(n: usize) -> f64 {
    if n <= 1 << 18 { 15.0 / 7.0 } else { 30.0 / 18.0 }
}

/// New flows per second into full zones: a table of two zones of `n`
/// flows each, filled, then `2 * n` more distinct flows tracked in
/// batches, zones alternating, every one of them evicting.
fn full_table_new_flows(n: usize) -> f64 {
    let cap = u32::try_from(n).expect("fits");
    let mut t = Table::new(Settings { capacity: 2 * cap, per_zone_capacity: cap, seed: 0x1234_5678, ..Settings::default() }, 2);
    let tuple = |i: u32| Tuple {
        zone: u16::from(i & 1 == 1),
        proto: 17,
        src: IpAddr::V4(Ipv4Addr::from(i)),
        dst: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 9)),
        sport: 10_000,
        dport: 53,
    };
    let infos = [PKT; BATCH];
    let mut out = [Outcome::Invalid; BATCH];
    let mut batch = [tuple(0); BATCH];
    let mut next = 0u32;
    let mut run = |t: &mut Table, flows: u32| {
        for _ in 0..flows as usize / BATCH {
            for slot in &mut batch {
                *slot = tuple(next);
                next += 1;
            }
            // The clock moves a millisecond every 64 batches: nothing
            // times out (4M-entry zones take 128k batches per pass).
            t.track_batch(&batch, &infos, Now(1_000 + u64::from(next) / (64 * BATCH) as u64), 1, |_| true, &mut out);
            assert!(out.iter().all(|&o| o == Outcome::New), "every flow made");
        }
    };
    run(&mut t, 2 * cap);
    assert_eq!(t.stats().evicted, 0, "the fill evicts nothing");
    let start = Instant::now();
    run(&mut t, 2 * cap);
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(t.stats().evicted, u64::from(2 * cap), "every measured flow evicted one");
    f64::from(2 * cap) / secs
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
    let full_new_per_sec = full_table_new_flows(n);

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
    // The table's batched pass, the reference map and the probe take turns
    // over eight segments of the packets, so that the ratios compare runs
    // of the same minutes on this shared machine.
    let mut map = reference_map(&flows);
    let mut probe = Probe::new(flows.iter().map(packed));
    let mut reference = Vec::with_capacity(count / BATCH);
    let mut probed = Vec::with_capacity(count / BATCH);
    let segment = (count / BATCH).div_ceil(8);
    let chunks: Vec<&[Tuple]> = packets.chunks_exact(BATCH).collect();
    for (s, seg) in chunks.chunks(segment).enumerate() {
        for (j, chunk) in seg.iter().enumerate() {
            let b = s * segment + j;
            let now = clock(b);
            let start = Instant::now();
            t.track_batch(black_box(chunk), &infos, now, 1, |_| true, &mut out);
            batched.push(start.elapsed().as_nanos() as f64 / BATCH as f64);
            missed += black_box(&out).iter().filter(|&&o| o != Outcome::Established).count();
        }
        for (j, chunk) in seg.iter().enumerate() {
            reference.push(reference_batch(&mut map, (s * segment + j) * BATCH, chunk));
        }
        for (j, chunk) in seg.iter().enumerate() {
            probed.push(probe_batch(&mut probe, (s * segment + j) * BATCH, chunk));
        }
    }
    let hits: u64 = probe.slots.iter().map(|s| s.counters[0]).sum();
    assert_eq!(hits, (chunks.len() * BATCH) as u64, "every probe lookup hit");
    let hits: u64 = map.values().map(|c| c[0]).sum();
    assert_eq!(hits, (chunks.len() * BATCH) as u64, "every reference lookup hit");
    drop((map, probe));
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
    let pct = |v: &mut Vec<f64>, p: usize| {
        v.sort_by(f64::total_cmp);
        v[(v.len() * p / 100).min(v.len() - 1)]
    };
    let (b50, b99) = (pct(&mut batched, 50), pct(&mut batched, 99));
    let s50 = pct(&mut single, 50);
    let r50 = pct(&mut reference, 50);
    let p50 = pct(&mut probed, 50);

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
            "{{\"entries\":{n},\"distribution\":\"{dist}\",\"hit_ns_median\":{b50:.1},\"hit_ns_p99\":{b99:.1},\"single_hit_ns_median\":{s50:.1},\"new_flows_per_sec\":{:.0},\"full_new_flows_per_sec\":{full_new_per_sec:.0},\"expire_ns_per_entry\":{:.1},\"entry_bytes\":{},\"bytes_per_flow\":{},\"reference_hit_ns_median\":{r50:.1},\"hit_vs_reference\":{:.2},\"probe_hit_ns_median\":{p50:.1},\"hit_vs_probe\":{:.2},\"target_vs_probe\":{:.2}}}",
            new_per_sec,
            expire_ns,
            Table::entry_size(),
            t.bytes_per_flow(),
            b50 / r50,
            b50 / p50,
            probe_target(n)
        );
    } else {
        println!(
            "{n:>8} {dist:<8} hit {b50:>6.1} ns median {b99:>6.1} ns p99 (one by one {s50:>6.1}, hash map {r50:>5.1}, tuned probe {p50:>5.1}: {:.2}x, target {:.2}x), {:>5.2} M new flows/s ({:.2} M into full zones), expiry {:>5.1} ns/entry, {} B/flow",
            b50 / p50,
            probe_target(n),
            new_per_sec / 1e6,
            full_new_per_sec / 1e6,
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
