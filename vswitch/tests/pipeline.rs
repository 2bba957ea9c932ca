//! The pipeline as a library: any bytes are handled without panic, and
//! deciding frames (new flows, established flows, fragments, ICMP errors,
//! drops of every kind) allocates nothing.

use std::path::Path;

use sgswitch::datapath::plan::{Plan, PortIdx, Zones};
use sgswitch::datapath::{Action, Reason, Source, To};
use sgswitch::packet::flowlog::{self, FlowLog, Writer};
use sgswitch::packet::{Pipeline, conntrack_settings};
use sgswitch_conntrack::{FragSettings, Now};
use sgswitch_tests::frames::{self, Ends, UPLINK_MAC};

#[path = "../../tests/support/counting_alloc.rs"]
mod counting_alloc;

fn examples() -> Plan {
    let cfg = sgswitch_config::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).expect("examples load");
    Plan::build(cfg, &mut Zones::default(), 1).expect("zones").0
}

/// An outcome to fill output arrays with before a batch.
fn no_outcome() -> sgswitch::datapath::Outcome {
    sgswitch::datapath::Outcome {
        action: Action::Drop,
        reason: Reason::Default,
        port: None,
        direction: sgswitch_config::Direction::Ingress,
    }
}

fn pipeline(plan: &Plan) -> Pipeline<u32> {
    let mut p = Pipeline::new(conntrack_settings(&plan.policy().config().host, 7), FragSettings::default());
    p.adopt(plan);
    p
}

/// A few valid frames of every kind the pipeline handles, for mutation.
fn corpus(plan: &Plan) -> Vec<(Source, Vec<u8>)> {
    let web = plan.port_by_id("eni-web1").expect("eni-web1");
    let mac = plan.port(web).expect("web").mac.expect("mac");
    let ip = |s: &str| s.parse().expect("ip");
    let out = Ends { src_mac: mac, dst_mac: UPLINK_MAC, src: ip("10.0.0.11"), dst: ip("192.0.2.9") };
    let out6 = Ends { src_mac: mac, dst_mac: UPLINK_MAC, src: ip("fd00::11"), dst: ip("2001:db8::9") };
    let syn = frames::tcp(&out, 40000, 443, "S", 1, 0, b"");
    let udp = frames::udp(&out6, 5000, 53, &[1; 40]);
    let mut v = vec![
        (Source::Port(web), syn.clone()),
        (Source::Uplink, frames::tcp(&out.reversed(), 443, 40000, "SA", 9, 2, b"")),
        (Source::Port(web), udp.clone()),
        (Source::Uplink, frames::icmp(&out6.reversed(), 1, 4, [0; 4], &frames::ip_part(&udp)[..48])),
        (Source::Uplink, frames::icmp(&out.reversed(), 3, 3, [0; 4], &frames::ip_part(&syn)[..28])),
        (Source::Port(web), frames::echo(&out, 3, 1, true)),
        (Source::Port(web), frames::arp(mac, [0xff; 6], 1, mac, [10, 0, 0, 11], [10, 0, 0, 1])),
        (Source::Port(web), frames::raw_ip(&out, 47, &[0; 24])),
    ];
    let big = frames::tcp(&out.reversed(), 443, 40000, "A", 9, 2, &[5; 120]);
    v.extend(frames::fragment_v4(&big, 48, 77).into_iter().rev().map(|f| (Source::Uplink, f)));
    v
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).expect("small")
    }
}

#[test]
fn random_and_mutated_frames_never_panic() {
    let plan = examples();
    let mut pipe = pipeline(&plan);
    let corpus = corpus(&plan);
    let mut rng = Rng(1);
    let mut buf = Vec::with_capacity(2048);
    let mut dropped = 0;
    for i in 0..200_000u32 {
        buf.clear();
        let src = match rng.below(4) {
            0 => Source::Uplink,
            // Out-of-range port indexes included.
            _ => Source::Port(u16::try_from(rng.below(plan.ports.len() + 2)).expect("few ports")),
        };
        if i % 3 == 0 {
            let n = rng.below(160);
            buf.extend((0..n).map(|_| rng.next().to_le_bytes()[0]));
        } else {
            let (_, base) = &corpus[rng.below(corpus.len())];
            buf.extend_from_slice(base);
            for _ in 0..=rng.below(6) {
                let at = rng.below(buf.len());
                buf[at] = rng.next().to_le_bytes()[0];
            }
            if rng.below(4) == 0 {
                buf.truncate(rng.below(buf.len() + 1));
            }
        }
        let now = Now(u64::from(i));
        let o = pipe.process(&plan, src, &buf, now, i);
        dropped += usize::from(o.action == Action::Drop);
        pipe.tick(&plan, now);
        pipe.take_released().for_each(drop);
    }
    assert!(dropped > 100_000, "mostly garbage is mostly dropped: {dropped}");
}

#[test]
fn deciding_frames_allocates_nothing() {
    let plan = examples();
    let mut pipe = pipeline(&plan);
    let corpus = corpus(&plan);
    let web = plan.port_by_id("eni-web1").expect("eni-web1");
    let mac = plan.port(web).expect("web").mac.expect("mac");
    let ip = |s: &str| s.parse().expect("ip");
    // Many new flows, then the same flows again (established).
    let flows: Vec<Vec<u8>> = (0..2000u16)
        .map(|i| {
            let e = Ends { src_mac: mac, dst_mac: UPLINK_MAC, src: ip("10.0.0.11"), dst: ip(&format!("192.0.2.{}", i % 200)) };
            frames::udp(&e, 10_000 + i, 53, b"q")
        })
        .collect();
    let mut mutated = corpus[0].1.clone();
    mutated[14] = 0x4f;
    // Warm up once (first-touch of lazily initialised statics).
    let _ = pipe.process(&plan, corpus[0].0, &corpus[0].1, Now(0), 0);
    let before = counting_alloc::allocs();
    let mut reasons = [0usize; sgswitch::datapath::Kind::COUNT];
    for round in 0..3u64 {
        for (i, f) in flows.iter().enumerate() {
            let o = pipe.process(&plan, Source::Port(web), f, Now(1000 + round), u32::try_from(i).expect("small"));
            reasons[o.reason.kind().index()] += 1;
        }
        for (i, (src, f)) in corpus.iter().enumerate() {
            let o = pipe.process(&plan, *src, f, Now(1000 + round), u32::try_from(i).expect("small"));
            reasons[o.reason.kind().index()] += 1;
        }
        let o = pipe.process(&plan, Source::Uplink, &mutated, Now(1000 + round), 0);
        reasons[o.reason.kind().index()] += 1;
        pipe.tick(&plan, Now(2000 + round * 1000));
        reasons[Reason::Fragment.kind().index()] += pipe.take_released().count();
    }
    // The same flows in batches: the flow cache's routes recorded, then taken.
    let none = no_outcome();
    let mut out = [none; 64];
    for round in 0..3u64 {
        for chunk in flows.chunks(64) {
            let mut items = [(Source::Port(web), &[][..], 0u32); 64];
            for (it, f) in items.iter_mut().zip(chunk) {
                it.1 = &f[..];
            }
            pipe.process_batch(&plan, &items[..chunk.len()], Now(1010 + round), &mut out[..chunk.len()]);
            reasons[Reason::Established.kind().index()] += out[..chunk.len()].iter().filter(|o| o.reason == Reason::Established).count();
        }
    }
    assert_eq!(counting_alloc::allocs() - before, 0, "the pipeline allocated");
    assert!(pipe.counters.flow_cache_hits.get() >= 2000, "routes taken: {}", pipe.counters.flow_cache_hits.get());
    assert!(reasons[Reason::Established.kind().index()] >= 10_000, "{reasons:?}");
    assert!(reasons[Reason::Malformed.kind().index()] >= 3, "{reasons:?}");
    assert!(reasons[Reason::Fragment.kind().index()] > 0, "{reasons:?}");
}

#[test]
fn a_batch_decides_exactly_as_frames_one_by_one() {
    let plan = examples();
    let corpus = corpus(&plan);
    let mut rng = Rng(5);
    // Mutated frames too: batches mix every outcome.
    let frames: Vec<(sgswitch::datapath::Source, Vec<u8>)> = (0..5000)
        .map(|_| {
            let (src, f) = &corpus[rng.below(corpus.len())];
            let mut f = f.clone();
            if rng.below(3) == 0 {
                let at = rng.below(f.len());
                f[at] ^= rng.next().to_le_bytes()[0];
            }
            (*src, f)
        })
        .collect();
    let (mut one, mut many) = (pipeline(&plan), pipeline(&plan));
    let none = no_outcome();
    let mut out = vec![none; 64];
    for (b, chunk) in frames.chunks(64).enumerate() {
        let now = Now(b as u64 * 10);
        let items: Vec<(Source, &[u8], u32)> = chunk.iter().map(|(s, f)| (*s, &f[..], 0)).collect();
        many.process_batch(&plan, &items, now, &mut out[..chunk.len()]);
        for (i, (s, f)) in chunk.iter().enumerate() {
            assert_eq!(one.process(&plan, *s, f, now, 0), out[i], "batch {b} frame {i}");
        }
    }
}

fn flow_log_settings(rate: u32, burst: u32, sample: u32) -> sgswitch_config::FlowLog {
    sgswitch_config::FlowLog { enabled: true, rate, burst, sample, ..sgswitch_config::FlowLog::default() }
}

/// A pipeline of the examples logging into a flow log of these settings,
/// the log's writer side and its counters.
fn logged(plan: &Plan, rate: u32, burst: u32, sample: u32) -> (Pipeline<u32>, Writer, std::sync::Arc<flowlog::Stats>) {
    let mut pipe = pipeline(plan);
    let (log, writer) = FlowLog::new(&flow_log_settings(rate, burst, sample));
    let stats = std::sync::Arc::clone(log.stats());
    pipe.flow_log = Some(log);
    (pipe, writer, stats)
}

/// A SYN from the uplink (`src`) to eni-web1's port `dport`.
fn syn_to_web1(plan: &Plan, src: &str, sport: u16, dport: u16) -> Vec<u8> {
    let web = plan.port_by_id("eni-web1").expect("eni-web1");
    let ip = |s: &str| s.parse().expect("ip");
    let e = Ends { src_mac: UPLINK_MAC, dst_mac: plan.port(web).expect("web").mac.expect("mac"), src: ip(src), dst: ip("10.0.0.11") };
    frames::tcp(&e, sport, dport, "S", 1, 0, b"")
}

/// A SYN from the uplink to eni-web1's port 9999 (denied by default).
fn denied_syn(plan: &Plan, sport: u16) -> Vec<u8> {
    syn_to_web1(plan, "192.0.2.77", sport, 9999)
}

#[test]
fn a_flood_of_denied_flows_is_logged_within_the_rate_and_allocates_nothing() {
    let plan = examples();
    let (mut pipe, writer, stats) = logged(&plan, 10, 5, 1);
    let syns: Vec<Vec<u8>> = (0..2000u16).map(|i| denied_syn(&plan, 20_000 + i)).collect();
    let _ = pipe.process(&plan, Source::Uplink, &syns[0], Now(0), 0);
    let before = counting_alloc::allocs();
    for f in &syns[1..1000] {
        assert_eq!(pipe.process(&plan, Source::Uplink, f, Now(0), 0).reason, Reason::Default);
    }
    // One second later: the bucket refilled to its burst, not beyond; the
    // first flow again is a repeat.
    for f in &syns[1000..] {
        let _ = pipe.process(&plan, Source::Uplink, f, Now(1000), 0);
    }
    let _ = pipe.process(&plan, Source::Uplink, &syns[0], Now(1000), 0);
    assert_eq!(counting_alloc::allocs() - before, 0, "offering to the flow log allocated");
    let mut records = Vec::new();
    while let Some(r) = writer.pop() {
        records.push(r);
    }
    assert_eq!(records.len(), 10, "a burst of 5 at t=0 and 5 more after a second");
    assert_eq!(stats.rate_limited.get(), 1990);
    assert_eq!(stats.repeat.get(), 1);
    assert_eq!(stats.queue_full.get(), 0);
    let web = plan.port_by_id("eni-web1");
    let r = records[0];
    assert_eq!(
        (r.port, r.direction, r.proto, r.sport, r.dport, r.reason),
        (web, sgswitch_config::Direction::Ingress, 6, 20_000, 9999, Reason::Default)
    );
    assert_eq!(r.src, "192.0.2.77".parse::<std::net::IpAddr>().unwrap());
    let line: serde_json::Value = serde_json::from_str(&flowlog::line(&r, 0, None)).expect("JSON");
    assert_eq!(
        (line["direction"].as_str(), line["proto"].as_str(), line["reason"].as_str()),
        (Some("ingress"), Some("tcp"), Some("default"))
    );
    assert_eq!(line["time"], "1970-01-01T00:00:00.000Z");
}

#[test]
fn sampling_keeps_one_denied_flow_in_n_and_allowed_packets_are_never_logged() {
    let plan = examples();
    let (mut pipe, writer, stats) = logged(&plan, 1_000_000, 1_000_000, 4);
    for i in 0..100u16 {
        let _ = pipe.process(&plan, Source::Uplink, &denied_syn(&plan, 30_000 + i), Now(0), 0);
    }
    // An allowed flow (http to web1) is not offered at all.
    let http = syn_to_web1(&plan, "192.0.2.78", 1234, 80);
    assert!(matches!(pipe.process(&plan, Source::Uplink, &http, Now(0), 0).action, Action::Forward(_)));
    let mut n = 0;
    while writer.pop().is_some() {
        n += 1;
    }
    assert_eq!((n, stats.sampled_out.get()), (25, 75));
}

/// eni-web1's and eni-db1's ports and the endpoints of web1 -> db1 traffic.
fn web1_to_db1(plan: &Plan) -> (PortIdx, PortIdx, Ends) {
    let idx = |id: &str| plan.port_by_id(id).expect("port");
    let (web, db) = (idx("eni-web1"), idx("eni-db1"));
    let ip = |s: &str| s.parse().expect("ip");
    let e = Ends {
        src_mac: plan.port(web).expect("web").mac.expect("mac"),
        dst_mac: plan.port(db).expect("db").mac.expect("mac"),
        src: ip("10.0.0.11"),
        dst: ip("10.0.1.21"),
    };
    (web, db, e)
}

#[test]
fn two_loops_hand_a_vm_to_vm_flow_over_and_each_judges_its_own_ports() {
    let plan = examples();
    let (web, db, e) = web1_to_db1(&plan);
    let loop_of = |p: PortIdx| sgswitch::datapath::owner_of(plan.port(p).expect("port").zone, 2);
    assert_ne!(loop_of(web), loop_of(db), "the example's zones put web1 and db1 on different loops");
    let mut loops = [pipeline(&plan), pipeline(&plan)];
    for (i, l) in loops.iter_mut().enumerate() {
        l.set_owner(sgswitch::datapath::Owner { index: i, loops: 2 });
    }
    let syn = frames::tcp(&e, 40000, 5432, "S", 1, 0, b"");
    let synack = frames::tcp(&e.reversed(), 5432, 40000, "SA", 9, 2, b"");
    let ack = frames::tcp(&e, 40000, 5432, "A", 2, 10, b"");
    let (a, b) = (loop_of(web), loop_of(db));
    // web1's egress where its frame arrives; db1's ingress in db1's loop.
    let o = loops[a].process(&plan, Source::Port(web), &syn, Now(0), 0);
    assert_eq!(o.action, Action::Handover(db), "{o:?}");
    let o = loops[b].process(&plan, Source::Peer(db), &syn, Now(0), 0);
    assert_eq!(o.action, Action::Forward(sgswitch::datapath::To::Port(db)));
    assert!(matches!(o.reason, Reason::Rule(_)), "{o:?}");
    let o = loops[b].process(&plan, Source::Port(db), &synack, Now(1), 0);
    assert_eq!(o.action, Action::Handover(web));
    let o = loops[a].process(&plan, Source::Peer(web), &synack, Now(1), 0);
    assert_eq!((o.action, o.reason), (Action::Forward(sgswitch::datapath::To::Port(web)), Reason::Established));
    assert_eq!(loops[a].process(&plan, Source::Port(web), &ack, Now(2), 0).action, Action::Handover(db));
    assert_eq!(loops[b].process(&plan, Source::Peer(db), &ack, Now(2), 0).reason, Reason::Established);
    // Each zone's flow lives in its owner only.
    assert_eq!(
        (loops[a].conntrack.zone_len(plan.port(web).expect("web").zone), loops[b].conntrack.zone_len(plan.port(web).expect("web").zone)),
        (1, 0)
    );
    assert_eq!(
        (loops[b].conntrack.zone_len(plan.port(db).expect("db").zone), loops[a].conntrack.zone_len(plan.port(db).expect("db").zone)),
        (1, 0)
    );
    // An uplink frame for db1 arriving in web1's loop is handed over unjudged.
    let from_net = Ends {
        src_mac: UPLINK_MAC,
        dst_mac: plan.port(db).expect("db").mac.expect("mac"),
        src: "192.0.2.5".parse().expect("ip"),
        dst: "10.0.1.21".parse().expect("ip"),
    };
    let o = loops[a].process(&plan, Source::Uplink, &frames::tcp(&from_net, 1234, 5432, "S", 1, 0, b""), Now(3), 0);
    assert_eq!(o.action, Action::Handover(db));
    // A handed-over frame is counted once, by the loop that finished it.
    let total =
        |l: &Pipeline<u32>| -> u64 { l.counters.ports.iter().flat_map(|p| p.by.iter().flatten().flatten()).map(|c| c.packets.get()).sum() };
    assert_eq!(total(&loops[a]) + total(&loops[b]), 3, "syn, syn-ack and ack each counted once");
}

#[test]
fn loops_share_the_flow_log_rate_and_feed_one_writer() {
    let plan = examples();
    // Bursts of 6 for the host: 3 per loop.
    let (logs, writer) = FlowLog::per_loop(&flow_log_settings(10, 6, 1), 2);
    let mut loops: Vec<(Pipeline<u32>, std::sync::Arc<flowlog::Stats>)> = logs
        .into_iter()
        .map(|log| {
            let mut pipe = pipeline(&plan);
            let stats = std::sync::Arc::clone(log.stats());
            pipe.flow_log = Some(log);
            (pipe, stats)
        })
        .collect();
    for (k, (pipe, _)) in loops.iter_mut().enumerate() {
        for i in 0..100u16 {
            let _ = pipe.process(&plan, Source::Uplink, &denied_syn(&plan, 40_000 + 100 * u16::try_from(k).unwrap() + i), Now(0), 0);
        }
    }
    let mut n = 0;
    while writer.pop().is_some() {
        n += 1;
    }
    assert_eq!(n, 6, "one writer sees both loops' records, each within its share");
    for (_, stats) in &loops {
        assert_eq!(stats.rate_limited.get(), 97);
    }
}

#[test]
fn a_batch_keeps_each_stage_to_its_own_zone() {
    // web1 -> db1 with db1's address on the host's infra_allow list: the
    // sender's egress stage passes as infrastructure without looking up a
    // flow, so the receiver's ingress stage is the first to track it, in
    // db1's zone. What the batch prepared for web1's zone must not be used
    // there (debug builds check every prepared key).
    let mut cfg = sgswitch_config::load_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")).expect("examples load");
    cfg.host.infra_allow = vec!["10.0.1.21/32".parse().expect("cidr")];
    let plan = Plan::build(cfg, &mut Zones::default(), 1).expect("zones").0;
    let (web, db, e) = web1_to_db1(&plan);
    let syn = frames::tcp(&e, 40000, 5432, "S", 1, 0, b"");
    let (mut one, mut many) = (pipeline(&plan), pipeline(&plan));
    let expected = one.process(&plan, Source::Port(web), &syn, Now(10), 0);
    let none = no_outcome();
    let mut out = [none];
    many.process_batch(&plan, &[(Source::Port(web), &syn[..], 0)], Now(10), &mut out);
    assert_eq!(out[0], expected);
    assert_eq!(expected.port, Some(db), "decided by the receiver's stage: {expected:?}");
    assert_eq!(many.conntrack.len(), one.conntrack.len());
}

/// Every counter of a pipeline, flattened: packets and bytes per port,
/// direction, action and reason.
fn all_counts(p: &Pipeline<u32>) -> Vec<u64> {
    p.counters.ports.iter().flat_map(|c| c.by.iter().flatten().flatten()).flat_map(|cell| [cell.packets.get(), cell.bytes.get()]).collect()
}

/// Every tracked flow, sorted, as text (state and counters included).
fn all_flows(p: &Pipeline<u32>) -> Vec<String> {
    let mut v: Vec<String> = p.conntrack.flows().map(|f| format!("{f:?}")).collect();
    v.sort();
    v
}

#[test]
fn the_flow_cache_decides_exactly_as_the_pipeline_does_without_it() {
    for on_change in [sgswitch_config::OnPolicyChange::Revalidate, sgswitch_config::OnPolicyChange::Keep] {
        flow_cache_against_no_cache(on_change);
    }
}

/// Random traffic of established, new, denied, spoofed and closing flows,
/// with reloads and long pauses, through pipelines with and without the
/// flow cache: the same outcome for every frame, the same counters and the
/// same connection table.
fn flow_cache_against_no_cache(on_change: sgswitch_config::OnPolicyChange) {
    // Plans to reload between: the examples; the examples with postgres
    // from the web tier denied (revalidation cuts web1 -> db1); the
    // examples with the resolver and db1 as infrastructure (their flows
    // pass without conntrack); the examples again, a new plan of the same
    // policy.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let mut zones = Zones::default();
    let cfg = || {
        let mut c = sgswitch_config::load_dir(&dir).expect("examples load");
        c.host.on_policy_change = on_change;
        c
    };
    let mut no_pg = cfg();
    let db = no_pg.groups.iter_mut().find(|g| g.id == "sg-db").expect("sg-db");
    db.ingress[0].action = sgswitch_config::Action::Deny;
    let mut infra = cfg();
    infra.host.infra_allow = vec!["192.0.2.9/32".parse().expect("cidr"), "10.0.1.21/32".parse().expect("cidr")];
    let plans = [
        Plan::build(cfg(), &mut zones, 1).expect("plan").0,
        Plan::build(no_pg, &mut zones, 2).expect("plan").0,
        Plan::build(infra, &mut zones, 3).expect("plan").0,
        Plan::build(cfg(), &mut zones, 4).expect("plan").0,
    ];
    let p0 = &plans[0];
    let (web, dbp, w2d) = web1_to_db1(p0);
    let web_mac = p0.port(web).expect("web").mac.expect("mac");
    let db_mac = p0.port(dbp).expect("db").mac.expect("mac");
    let ip = |s: &str| s.parse().expect("ip");
    // (source of the opener's frames, of the replies, the opener's ends,
    // protocol, opener's port, server's port)
    let mut flows: Vec<(Source, Source, Ends, u8, u16, u16)> = Vec::new();
    for c in 0..4u16 {
        let client = Ends { src_mac: UPLINK_MAC, dst_mac: web_mac, src: ip(&format!("198.51.100.{}", c + 1)), dst: ip("10.0.0.11") };
        flows.push((Source::Uplink, Source::Port(web), client, 6, 40_000 + c, 80));
        flows.push((Source::Port(web), Source::Port(dbp), w2d, 6, 41_000 + c, 5432));
        let out = Ends { src_mac: web_mac, dst_mac: UPLINK_MAC, src: ip("10.0.0.11"), dst: ip("192.0.2.9") };
        flows.push((Source::Port(web), Source::Uplink, out, 17, 42_000 + c, 53));
    }
    let resolver = Ends { src_mac: db_mac, dst_mac: UPLINK_MAC, src: ip("10.0.1.21"), dst: ip("10.0.0.2") };
    flows.push((Source::Port(dbp), Source::Uplink, resolver, 17, 43_000, 53));
    let abusive = Ends { src_mac: UPLINK_MAC, dst_mac: web_mac, src: ip("203.0.113.5"), dst: ip("10.0.0.11") };
    flows.push((Source::Uplink, Source::Port(web), abusive, 6, 44_000, 80));
    let spoofed = Ends { src_mac: web_mac, dst_mac: UPLINK_MAC, src: ip("10.9.9.9"), dst: ip("192.0.2.9") };
    flows.push((Source::Port(web), Source::Uplink, spoofed, 17, 45_000, 53));
    // To web1's address but not its MAC (the uplink's frames go by address
    // then).
    let by_ip = Ends { src_mac: UPLINK_MAC, dst_mac: [2, 0xee, 0, 0, 0, 2], src: ip("198.51.100.9"), dst: ip("10.0.0.11") };
    flows.push((Source::Uplink, Source::Port(web), by_ip, 6, 46_000, 443));
    // Pings (the echo id as both ports): from the internet to web1 (sg-web
    // allows echo requests), and from web1 to db1 (sg-db does not).
    for c in 0..2u16 {
        let pinger = Ends { src_mac: UPLINK_MAC, dst_mac: web_mac, src: ip(&format!("198.51.100.{}", c + 20)), dst: ip("10.0.0.11") };
        flows.push((Source::Uplink, Source::Port(web), pinger, 1, 7_000 + c, 7_000 + c));
    }
    flows.push((Source::Port(web), Source::Port(dbp), w2d, 1, 7_100, 7_100));

    let mut rng = Rng(11);
    let flags = ["A", "A", "A", "A", "A", "A", "PA", "S", "SA", "FA", "R"];
    let mut frames: Vec<(Source, Vec<u8>)> = Vec::new();
    let mut seq = 1u32;
    for _ in 0..20_000 {
        let (osrc, rsrc, e, proto, sport, dport) = flows[rng.below(flows.len())];
        let reply = rng.below(2) == 0;
        let (src, mut ends, sp, dp) = if reply { (rsrc, e.reversed(), dport, sport) } else { (osrc, e, sport, dport) };
        // Now and then a VM's frame of a tracked flow from another MAC, or
        // to another (the router's, for a VM-to-VM flow), or arriving on
        // the uplink instead.
        let mut src = src;
        if matches!(src, Source::Port(_)) {
            match rng.below(40) {
                0 | 1 => ends.src_mac = [2, 0, 0, 0, 0, 0x99],
                2 | 3 => ends.dst_mac = UPLINK_MAC,
                4 => src = Source::Uplink,
                _ => {}
            }
        }
        seq = seq.wrapping_add(7);
        let f = match proto {
            6 => {
                let fl = flags[rng.below(flags.len())];
                let payload: &[u8] = if fl == "PA" { b"data" } else { b"" };
                frames::tcp(&ends, sp, dp, fl, seq, 1, payload)
            }
            // Mostly an echo request from the pinger and a reply from the
            // other side; now and then the other type (a reply from the
            // pinger), or a timestamp request (not echo: judged without
            // state, never cached).
            1 => match rng.below(8) {
                0 => {
                    let [hi, lo] = sp.to_be_bytes();
                    frames::icmp(&ends, 13, 0, [hi, lo, 0, 1], &[0; 12])
                }
                k => {
                    let request = if k == 1 { reply } else { !reply };
                    frames::echo(&ends, sp, u16::try_from(seq & 0xffff).expect("16 bits"), request)
                }
            },
            _ => frames::udp(&ends, sp, dp, &[0; 12]),
        };
        frames.push((src, f));
    }
    let mut plain = pipeline(p0);
    plain.set_flow_cache(0);
    // A default cache, and one of two slots that its flows keep taking
    // from each other.
    let mut cached = [pipeline(p0), pipeline(p0)];
    cached[1].set_flow_cache(2);
    // Every drop logged (invalid segments too, which a route can meet).
    let log = |p: &mut Pipeline<u32>| {
        let (log, writer) = FlowLog::new(&flow_log_settings(1_000_000, 1_000_000, 1));
        p.flow_log = Some(log);
        writer
    };
    let (plain_log, cached_log) = (log(&mut plain), log(&mut cached[0]));
    let none = no_outcome();
    let (mut want, mut got) = (vec![none; 64], vec![none; 64]);
    let (mut now, mut plan, mut at) = (0u64, 0usize, 0usize);
    let mut b = 0;
    while at < frames.len() {
        let n = (1 + rng.below(64)).min(frames.len() - at);
        // Mostly milliseconds apart; now and then past the UDP (30 s) or
        // the established TCP timeout (910 s); now and then a reload.
        now += match rng.below(100) {
            0 => 40_000,
            1 => 1_000_000,
            _ => rng.below(50) as u64,
        };
        if rng.below(40) == 0 {
            plan = rng.below(plans.len());
        }
        let p = &plans[plan];
        for pipe in std::iter::once(&mut plain).chain(cached.iter_mut()) {
            pipe.adopt(p);
        }
        let items: Vec<(Source, &[u8], u32)> = frames[at..at + n].iter().map(|(s, f)| (*s, &f[..], 0)).collect();
        plain.process_batch(p, &items, Now(now), &mut want[..n]);
        for c in &mut cached {
            c.process_batch(p, &items, Now(now), &mut got[..n]);
            assert_eq!(got[..n], want[..n], "{on_change:?}: batch {b} at {now} ms under plan {plan}");
        }
        for pipe in std::iter::once(&mut plain).chain(cached.iter_mut()) {
            pipe.tick(p, Now(now));
        }
        at += n;
        b += 1;
    }
    for c in &cached {
        assert_eq!(all_counts(c), all_counts(&plain), "the same counters");
        assert_eq!(all_flows(c), all_flows(&plain), "the same flows, states and per-flow counters");
        assert_eq!(c.conntrack.stats(), plain.conntrack.stats());
    }
    let drain = |w: &Writer| std::iter::from_fn(|| w.pop()).collect::<Vec<_>>();
    let logged = drain(&plain_log);
    assert!(!logged.is_empty(), "drops were logged");
    assert_eq!(drain(&cached_log), logged, "the same flow log");
    let hits = |p: &Pipeline<u32>| (p.counters.flow_cache_hits.get(), p.counters.flow_cache_misses.get());
    assert_eq!(hits(&plain), (0, 0), "no cache, no lookups");
    let (h, m) = hits(&cached[0]);
    assert!(h > 5_000, "most established frames took their recorded route: {h} hits, {m} misses");
    let (h2, _) = hits(&cached[1]);
    assert!(h2 > 0 && h2 < h, "two slots hold fewer routes: {h2} hits");
}

#[test]
fn a_ping_takes_its_recorded_route_and_other_icmp_never_does() {
    let plan = examples();
    let web = plan.port_by_id("eni-web1").expect("eni-web1");
    let web_mac = plan.port(web).expect("web").mac.expect("mac");
    let ip = |s: &str| s.parse().expect("ip");
    let pinger = Ends { src_mac: UPLINK_MAC, dst_mac: web_mac, src: ip("198.51.100.20"), dst: ip("10.0.0.11") };
    let mut pipe = pipeline(&plan);
    let mut out = [no_outcome()];
    let mut send = |pipe: &mut Pipeline<u32>, src, f: &[u8]| {
        pipe.process_batch(&plan, &[(src, f, 0)], Now(1), &mut out);
        out[0]
    };
    let hits = |p: &Pipeline<u32>| p.counters.flow_cache_hits.get();
    for seq in 1..=5u16 {
        let request = send(&mut pipe, Source::Uplink, &frames::echo(&pinger, 7, seq, true));
        assert_eq!(request.action, Action::Forward(To::Port(web)), "request {seq}");
        let reply = send(&mut pipe, Source::Port(web), &frames::echo(&pinger.reversed(), 7, seq, false));
        assert_eq!((reply.action, reply.reason), (Action::Forward(To::Uplink), Reason::Established), "reply {seq}");
    }
    // The first request opened the flow (no route: not established yet),
    // the first reply recorded the way out and the second request the way
    // in; every frame after those took its route: replies 2-5, requests 3-5.
    assert_eq!(hits(&pipe), 7, "pings that took their recorded route");
    // A timestamp request on the echo's identifier: judged by the rules
    // (sg-web allows echo requests only), never by a route.
    let timestamp = frames::icmp(&pinger, 13, 0, [0, 7, 0, 1], &[0; 12]);
    for _ in 0..3 {
        assert_eq!(send(&mut pipe, Source::Uplink, &timestamp).action, Action::Drop);
    }
    assert_eq!(hits(&pipe), 7, "no route for ICMP other than echo");
}

#[test]
fn a_new_owner_takes_no_route_recorded_under_the_old_one() {
    let plan = examples();
    let (web, db, e) = web1_to_db1(&plan);
    let mut pipe = pipeline(&plan);
    let none = no_outcome();
    let mut out = [none];
    let mut send = |pipe: &mut Pipeline<u32>, src, f: &[u8]| {
        pipe.process_batch(&plan, &[(src, f, 0)], Now(1), &mut out);
        out[0]
    };
    send(&mut pipe, Source::Port(web), &frames::tcp(&e, 40000, 5432, "S", 1, 0, b""));
    send(&mut pipe, Source::Port(db), &frames::tcp(&e.reversed(), 5432, 40000, "SA", 9, 2, b""));
    let ack = frames::tcp(&e, 40000, 5432, "A", 2, 10, b"");
    for _ in 0..3 {
        assert_eq!(send(&mut pipe, Source::Port(web), &ack).reason, Reason::Established);
    }
    assert!(pipe.counters.flow_cache_hits.get() > 0, "the route was recorded and taken");
    // The loop that owns web1 but not db1: db1's ingress is the other
    // loop's to judge.
    let loop_of = |p: PortIdx| sgswitch::datapath::owner_of(plan.port(p).expect("port").zone, 2);
    pipe.set_owner(sgswitch::datapath::Owner { index: loop_of(web), loops: 2 });
    assert_eq!(send(&mut pipe, Source::Port(web), &ack).action, Action::Handover(db));
}

/// A copy of `examples/` to edit, and the zones its plans keep across
/// reloads.
struct Reloads {
    dir: tempfile::TempDir,
    zones: Zones,
    generation: u32,
}

impl Reloads {
    fn new() -> Reloads {
        let dir = tempfile::tempdir().expect("tempdir");
        sgswitch_tests::netns::copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples"), dir.path());
        Reloads { dir, zones: Zones::default(), generation: 0 }
    }

    fn edit(&self, file: &str, from: &str, to: &str) {
        let path = self.dir.path().join(file);
        let text = std::fs::read_to_string(&path).expect("read");
        assert!(text.contains(from), "{file} has {from:?}");
        std::fs::write(&path, text.replacen(from, to, 1)).expect("write");
    }

    fn plan(&mut self) -> Plan {
        self.generation += 1;
        let cfg = sgswitch_config::load_dir(self.dir.path()).expect("loads");
        Plan::build(cfg, &mut self.zones, self.generation).expect("zones").0
    }
}

#[test]
fn on_policy_change_timeouts_and_strictness_apply_from_the_reload_on() {
    let mut r = Reloads::new();
    let first = r.plan();
    let mut pipe = pipeline(&first);
    let web = first.port_by_id("eni-web1").expect("eni-web1");
    let mac = first.port(web).expect("web").mac.expect("mac");
    let ip = |s: &str| s.parse().expect("ip");
    let inet = Ends { src_mac: UPLINK_MAC, dst_mac: mac, src: ip("192.0.2.7"), dst: ip("10.0.0.11") };
    let back = inet.reversed();
    let go = |pipe: &mut Pipeline<u32>, plan: &Plan, src: Source, f: Vec<u8>, ms: u64| pipe.process(plan, src, &f, Now(ms), 0);
    assert_eq!(go(&mut pipe, &first, Source::Uplink, frames::tcp(&inet, 40000, 443, "S", 1, 0, b""), 0).reason.as_str(), "rule");
    assert_eq!(go(&mut pipe, &first, Source::Port(web), frames::tcp(&back, 443, 40000, "SA", 9, 2, b""), 0).reason, Reason::Established);

    // `keep`, and https closed: the connection lives on.
    r.edit("host.toml", "on_policy_change = \"revalidate\"", "on_policy_change = \"keep\"");
    r.edit("groups/sg-web.toml", "ports = \"443/443\"", "ports = \"4443/4443\"");
    let kept = r.plan();
    pipe.adopt(&kept);
    let ack = |n: u32| frames::tcp(&inet, 40000, 443, "A", 1 + n, 10, b"data");
    assert_eq!(go(&mut pipe, &kept, Source::Uplink, ack(1), 10).reason, Reason::Established, "kept");
    // `revalidate` again: the flow is judged by the policy in force, which
    // denies it.
    r.edit("host.toml", "on_policy_change = \"keep\"", "on_policy_change = \"revalidate\"");
    let revalidating = r.plan();
    pipe.adopt(&revalidating);
    let o = go(&mut pipe, &revalidating, Source::Uplink, ack(2), 20);
    assert_eq!((o.action, o.reason), (Action::Drop, Reason::Default), "revalidated and cut");

    // A per-port UDP timeout of 2 s: an answer 3 s after the request is a
    // new packet, judged by eni-web1's ingress (no UDP rule: denied).
    let dns = |pipe: &mut Pipeline<u32>, plan: &Plan, sport: u16, at: u64| {
        let out = go(pipe, plan, Source::Port(web), frames::udp(&back, sport, 53, b"q"), at);
        assert_eq!(out.action, Action::Forward(To::Uplink));
        go(pipe, plan, Source::Uplink, frames::udp(&inet, 53, sport, b"a"), at + 3000).reason
    };
    assert_eq!(dns(&mut pipe, &revalidating, 5000, 100_000), Reason::Established, "30 s by default");
    let path = r.dir.path().join("ports/eni-web1.toml");
    let text = std::fs::read_to_string(&path).expect("read");
    std::fs::write(&path, format!("{text}[conntrack.timeouts]\nudp = 2\n")).expect("write");
    let short = r.plan();
    pipe.adopt(&short);
    assert_eq!(dns(&mut pipe, &short, 5001, 200_000), Reason::Default, "2 s for eni-web1's flows");
    // The host's own timeouts apply on reload too (eni-web2 has none of its own).
    let web2 = short.port_by_id("eni-web2").expect("eni-web2");
    assert_eq!(short.port(web2).expect("web2").timeouts.udp, 30);

    // tcp_strict: mid-stream pick-up refused from the reload on.
    let mid = frames::tcp(&inet, 41000, 80, "A", 7, 7, b"mid-stream");
    assert_eq!(go(&mut pipe, &short, Source::Uplink, mid.clone(), 300_000).reason.as_str(), "rule");
    r.edit("host.toml", "per_port_capacity = 65536", "per_port_capacity = 65536\ntcp_strict = true");
    let strict = r.plan();
    pipe.adopt(&strict);
    let mid2 = frames::tcp(&inet, 41001, 80, "A", 7, 7, b"mid-stream");
    assert_eq!(go(&mut pipe, &strict, Source::Uplink, mid2, 300_100).reason, Reason::Invalid);
}
