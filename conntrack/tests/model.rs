//! Random packet sequences against a plain model of the table: a map from
//! flow to (last seen, replied), with the timeouts of `semantics.md`.
//! Exercises creation, replies, staleness, expiry, index deletion and
//! revalidation after policy changes.

use std::collections::HashMap;

use proptest::prelude::*;
use sgswitch_conntrack::{Counters, Now, Outcome, PacketInfo, Settings, State, Table, Tuple};

const PKT: PacketInfo = PacketInfo { tcp_flags: 0, tcp_seq: 0, payload_len: 1, wire_len: 60 };

#[derive(Clone, Debug)]
enum Op {
    /// Flow number, from the reply side?, milliseconds to wait first.
    Packet(u8, bool, u32),
    /// Sweep with a budget.
    Expire(u8),
    /// A new policy generation.
    Policy,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0u8..40, any::<bool>(), prop_oneof![Just(0u32), 0u32..5_000, 25_000u32..40_000]).prop_map(|(f, r, w)| Op::Packet(f, r, w)),
        1 => (1u8..20).prop_map(Op::Expire),
        1 => Just(Op::Policy),
    ]
}

fn flow(f: u8) -> Tuple {
    let proto = if f % 3 == 0 { 1 } else { 17 };
    // One flow in five is IPv6 (the table keeps its addresses apart from
    // the entry), some of those v4-mapped twins of IPv4 flows.
    let (src, dst) = match f % 10 {
        4 => (format!("fd00::{}:1", f % 4), "2001:db8::9".to_string()),
        9 => (format!("::ffff:10.0.{}.1", f % 4), "::ffff:192.0.2.9".to_string()),
        _ => (format!("10.0.{}.1", f % 4), "192.0.2.9".to_string()),
    };
    Tuple {
        zone: u16::from(f % 2),
        proto: if src.contains(':') && proto == 1 { 58 } else { proto },
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        sport: 1000 + u16::from(f),
        dport: if proto == 1 { 1000 + u16::from(f) } else { 53 },
    }
}

/// The policy: flows whose number is a multiple of 7 are denied.
fn allowed(t: &Tuple) -> bool {
    allowed_in(0, t)
}

/// Policy generation `g`: flows whose number is a multiple of 7, 6 or 5
/// are denied, so each change flips some verdicts both ways.
fn allowed_in(g: u32, t: &Tuple) -> bool {
    (t.sport.max(t.dport) - 1000) % (7 - u16::try_from(g % 3).unwrap()) != 0
}

/// Every flow of a table, by its tuple's text: for comparing two tables.
fn sorted_flows(t: &Table) -> Vec<(String, State, Counters)> {
    let mut v: Vec<_> = t.flows().map(|(tp, s, c)| (format!("{tp:?}"), s, c)).collect();
    v.sort_by(|x, y| x.0.cmp(&y.0));
    v
}

fn timeout_ms(proto: u8, replied: bool) -> u64 {
    match (proto, replied) {
        (17, false) => 30_000,
        (17, true) => 180_000,
        _ => 30_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn table_agrees_with_a_plain_model(ops in prop::collection::vec(op(), 1..300)) {
        let mut t = Table::new(Settings { capacity: 64, per_zone_capacity: 64, ..Settings::default() }, 2);
        // Model: canonical flow -> (orig tuple, last seen ms, replied,
        // generation that admitted or last revalidated it).
        let mut model: HashMap<u8, (Tuple, u64, bool, u32)> = HashMap::new();
        let mut now = 0u64;
        let mut g = 0u32;
        for op in ops {
            match op {
                Op::Packet(f, reply, wait) => {
                    now += u64::from(wait);
                    let base = flow(f);
                    let tp = if reply { base.reversed() } else { base };
                    let live = model
                        .get(&f)
                        .filter(|(_, seen, rep, _)| now - seen < timeout_ms(base.proto, *rep))
                        .filter(|(orig, _, _, admitted)| *admitted == g || allowed_in(g, orig))
                        .copied();
                    let want = match live {
                        Some((orig, _, rep, _)) => {
                            let from_reply = tp != orig;
                            model.insert(f, (orig, now, rep || from_reply, g));
                            Outcome::Established
                        }
                        None => {
                            model.remove(&f);
                            if allowed_in(g, &tp) {
                                model.insert(f, (tp, now, false, g));
                                Outcome::New
                            } else {
                                Outcome::Denied
                            }
                        }
                    };
                    let got = t.track(&tp, &PKT, Now(now), g, |x| allowed_in(g, x));
                    prop_assert_eq!(got, want, "flow {} reply {} at {} ms", f, reply, now);
                }
                Op::Expire(budget) => {
                    t.expire(Now(now), usize::from(budget));
                }
                Op::Policy => g += 1,
            }
            prop_assert!(t.len() >= model.values().filter(|(o, seen, rep, _)| now - seen < timeout_ms(o.proto, *rep)).count());
            prop_assert!(t.len() <= model.len());
        }
        // A full sweep frees every flow whose deadline is before the current
        // second (the wheel's granularity) and keeps every live one; flows
        // that expired within this second may be either.
        while !t.caught_up(Now(now)) {
            t.expire(Now(now), 64);
        }
        let second = now / 1000 * 1000;
        let at_most = model.values().filter(|(o, seen, rep, _)| seen + timeout_ms(o.proto, *rep) >= second).count();
        let live: Vec<_> = model.values().filter(|(o, seen, rep, _)| now - seen < timeout_ms(o.proto, *rep)).collect();
        prop_assert!(live.len() <= t.len() && t.len() <= at_most, "{} live, {} in the table, {} at most", live.len(), t.len(), at_most);
        for (orig, _, _, _) in live {
            prop_assert!(t.get(orig).is_some());
            prop_assert!(t.get(&orig.reversed()).is_some());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    /// `track_batch` gives the same outcomes and leaves the same table as
    /// tracking the same packets one by one, including flows that repeat
    /// within a batch and flows created by an earlier packet of the batch.
    #[test]
    fn a_batch_is_the_same_as_one_by_one(batches in prop::collection::vec(prop::collection::vec((0u8..40, any::<bool>()), 1..100), 1..8)) {
        let settings = Settings { capacity: 32, per_zone_capacity: 20, ..Settings::default() };
        let mut one = Table::new(settings.clone(), 2);
        let mut many = Table::new(settings, 2);
        for (b, batch) in batches.iter().enumerate() {
            let now = Now(b as u64 * 7_000);
            let tuples: Vec<Tuple> = batch.iter().map(|&(f, r)| if r { flow(f).reversed() } else { flow(f) }).collect();
            let infos = vec![PKT; tuples.len()];
            let want: Vec<Outcome> = tuples.iter().map(|tp| one.track(tp, &PKT, now, 1, allowed)).collect();
            let mut got = vec![Outcome::Invalid; tuples.len()];
            many.track_batch(&tuples, &infos, now, 1, allowed, &mut got);
            prop_assert_eq!(&got, &want);
            one.expire(now, 4);
            many.expire(now, 4);
        }
        prop_assert_eq!(one.len(), many.len());
        prop_assert_eq!(one.stats(), many.stats());
        prop_assert_eq!(sorted_flows(&one), sorted_flows(&many));
    }
}

/// A flow for [`entry_reached_by_its_place_tracks_as_a_lookup_does`]:
/// TCP, UDP or ICMP echo, IPv4 or IPv6, in one of two zones.
fn mixed_flow(f: u8) -> Tuple {
    let mut t = flow(f);
    if f % 3 == 1 {
        t.proto = 6;
        t.dport = 22;
    }
    t
}

/// TCP flags bytes a connection sees, plain ACKs most often.
fn tcp_flags() -> impl Strategy<Value = u8> {
    prop_oneof![6 => Just(0x10u8), 1 => Just(0x02), 1 => Just(0x12), 1 => Just(0x11), 1 => Just(0x04), 1 => Just(0x18), 1 => any::<u8>()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A caller that remembers where a flow's entry is, per direction
    /// ([`Table::last_hit`]), and comes back through `ready_at` and
    /// `update_at` when it is ready,
    /// tracking as usual otherwise, gets the outcomes and leaves the table
    /// that tracking every packet gives: across TCP states, expiry, entries
    /// freed and reused by other flows (a small table), and policy changes,
    /// with `revalidate` and with `keep`.
    #[test]
    fn an_entry_reached_by_its_place_tracks_as_a_lookup_does(
        revalidate in any::<bool>(),
        ops in prop::collection::vec(
            prop_oneof![
                8 => (0u8..40, any::<bool>(), tcp_flags(), prop_oneof![Just(0u32), 0u32..5_000, 25_000u32..40_000])
                    .prop_map(|(f, r, fl, w)| (Some((f, r, fl)), w)),
                1 => Just((None, 0u32)),
            ],
            1..300,
        ),
    ) {
        let settings = Settings { capacity: 12, per_zone_capacity: 8, revalidate, ..Settings::default() };
        let (mut plain, mut placed) = (Table::new(settings.clone(), 2), Table::new(settings, 2));
        let mut at: HashMap<(u8, bool), sgswitch_conntrack::EntryAt> = HashMap::new();
        let (mut now, mut g) = (0u64, 0u32);
        for (step, (packet, wait)) in ops.into_iter().enumerate() {
            now += u64::from(wait);
            let Some((f, reply, flags)) = packet else {
                g += 1;
                continue;
            };
            let base = mixed_flow(f);
            let tp = if reply { base.reversed() } else { base };
            let flags = if tp.proto == 6 { flags } else { 0 };
            let p = PacketInfo { tcp_flags: flags, tcp_seq: u32::try_from(step).unwrap() * 10, payload_len: 1, wire_len: 60 };
            let judge = |x: &Tuple| allowed_in(g, x);
            let want = plain.track(&tp, &p, Now(now), g, judge);
            let ready = at.get(&(f, reply)).and_then(|&a| placed.ready_at(a, Now(now), g));
            let got = match ready {
                Some(r) => placed.update_at(r, &p, Now(now)),
                None => placed.track(&tp, &p, Now(now), g, judge),
            };
            prop_assert_eq!(got, want, "step {} flow {} reply {} flags {:#x} ready {}", step, f, reply, flags, ready.is_some());
            // `last_hit` tells of lookups, not of `update_at`.
            if got == Outcome::Established && ready.is_none() {
                at.insert((f, reply), placed.last_hit());
            }
            if step % 16 == 0 {
                plain.expire(Now(now), 4);
                placed.expire(Now(now), 4);
            }
        }
        prop_assert_eq!(plain.stats(), placed.stats());
        prop_assert_eq!(sorted_flows(&plain), sorted_flows(&placed));
    }
}

/// A UDP flow for [`a_full_zone_evicts_as_the_contract_says`]: flow `f` in
/// zone `f % 2`.
fn udp_flow(f: u8) -> Tuple {
    Tuple {
        zone: u16::from(f % 2),
        proto: 17,
        src: "10.0.0.1".parse().unwrap(),
        dst: "192.0.2.9".parse().unwrap(),
        sport: 1000 + u16::from(f),
        dport: 53,
    }
}

/// The UDP timeouts (unreplied, replied) of [`udp_flow`]'s zones, in ms.
fn udp_timeout_ms(zone: u16, replied: bool) -> u64 {
    match (zone, replied) {
        (0, false) => 30_000,
        (0, true) => 180_000,
        (_, false) => 5_000,
        (_, true) => 12_000,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Small zones, filled over and over, with timeouts that differ by
    /// zone (so flows sit in seconds on both sides of where earlier
    /// eviction scans began): a new flow in a full zone is admitted exactly
    /// when a flow of its zone is expired or unreplied, and then exactly
    /// one such flow goes, one due no later than any other (an expired one
    /// before any live one); a flow of another zone never makes room.
    #[test]
    fn a_full_zone_evicts_as_the_contract_says(
        ops in prop::collection::vec(
            prop_oneof![
                8 => (0u8..12, any::<bool>(), prop_oneof![Just(0u64), 0u64..3_000, 4_000u64..40_000]).prop_map(|(f, r, w)| (Some((f, r)), w)),
                1 => (1u64..60_000).prop_map(|w| (None, w)),
            ],
            1..300,
        ),
    ) {
        let zone_timeouts = vec![
            sgswitch_conntrack::Timeouts::default(),
            sgswitch_conntrack::Timeouts { udp: 5, udp_stream: 12, ..sgswitch_conntrack::Timeouts::default() },
        ];
        let cap = 3;
        let mut t = Table::new(Settings { capacity: 100, per_zone_capacity: cap, zone_timeouts, ..Settings::default() }, 2);
        // Flow -> (last seen ms, replied), for the flows the table holds.
        let mut model: HashMap<u8, (u64, bool)> = HashMap::new();
        let mut now = 0u64;
        for (step, (packet, wait)) in ops.into_iter().enumerate() {
            now += wait;
            let Some((f, reply)) = packet else {
                t.expire(Now(now), 3);
                model.retain(|&g, _| t.get(&udp_flow(g)).is_some());
                continue;
            };
            let base = udp_flow(f);
            let expired = |g: u8, (seen, rep): (u64, bool)| now - seen >= udp_timeout_ms(udp_flow(g).zone, rep);
            let live = model.get(&f).copied().filter(|&m| !expired(f, m));
            if let Some((_, rep)) = live {
                prop_assert_eq!(t.track(&if reply { base.reversed() } else { base }, &PKT, Now(now), 1, allowed_all), Outcome::Established);
                model.insert(f, (now, rep || reply));
                continue;
            }
            // A new flow (its expired entry, if any, goes first and leaves
            // room). The candidates, ranked: expired ones first, then by
            // the second of their deadline.
            let full = model.remove(&f).is_none() && model.keys().filter(|&&g| udp_flow(g).zone == base.zone).count() >= cap as usize;
            let rank = |g: u8, m: (u64, bool)| if expired(g, m) { 0 } else { (m.0 + udp_timeout_ms(udp_flow(g).zone, m.1)) / 1000 };
            let candidates: Vec<(u8, u64)> = model
                .iter()
                .filter(|&(&g, &m)| udp_flow(g).zone == base.zone && (expired(g, m) || !m.1))
                .map(|(&g, &m)| (g, rank(g, m)))
                .collect();
            let got = t.track(&base, &PKT, Now(now), 1, allowed_all);
            let gone: Vec<u8> = model.keys().copied().filter(|&g| t.get(&udp_flow(g)).is_none()).collect();
            if full && candidates.is_empty() {
                prop_assert_eq!(got, Outcome::Full, "step {}: flow {} with no flow to evict", step, f);
                prop_assert!(gone.is_empty());
                continue;
            }
            prop_assert_eq!(got, Outcome::New, "step {}: flow {}, candidates {:?}", step, f, candidates);
            if full {
                prop_assert_eq!(gone.len(), 1, "step {}: one flow evicted for flow {}", step, f);
                let best = candidates.iter().map(|&(_, r)| r).min();
                let victim = candidates.iter().find(|&&(g, _)| g == gone[0]);
                prop_assert!(victim.is_some_and(|&(_, r)| Some(r) == best), "step {}: evicted {:?}, candidates {:?}", step, gone, candidates);
            } else {
                prop_assert!(gone.is_empty(), "step {}: nothing evicted below capacity", step);
            }
            model.remove(&gone.first().copied().unwrap_or(u8::MAX));
            model.insert(f, (now, false));
        }
    }
}

fn allowed_all(_: &Tuple) -> bool {
    true
}
