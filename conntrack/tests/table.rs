//! Behaviour of the connection table with a fake clock.

use std::cell::Cell;

use sgswitch_conntrack::tcp::flags::{ACK, FIN, RST, SYN};
use sgswitch_conntrack::{EVICT_SCAN, Key, Now, Outcome, PacketInfo, Settings, State, Table, TcpState, Timeouts, Tuple};

fn tuple(zone: u16, proto: u8, src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
    Tuple { zone, proto, src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport, dport }
}

fn tcp(flags: u8, seq: u32) -> PacketInfo {
    PacketInfo { tcp_flags: flags, tcp_seq: seq, payload_len: 0, wire_len: 64 }
}

fn data(flags: u8, seq: u32, len: u32) -> PacketInfo {
    PacketInfo { tcp_flags: flags, tcp_seq: seq, payload_len: len, wire_len: 64 + len }
}

const UDP: PacketInfo = PacketInfo { tcp_flags: 0, tcp_seq: 0, payload_len: 10, wire_len: 80 };

fn s(secs: u64) -> Now {
    Now(secs * 1000)
}

fn table(zones: usize) -> Table {
    Table::new(Settings { capacity: 64, per_zone_capacity: 32, ..Settings::default() }, zones)
}

/// Runs the amortised sweep until it has reached `now`; returns how many
/// flows it freed. A flow is freed within a second after its deadline.
fn sweep(t: &mut Table, now: Now) -> usize {
    let mut freed = 0;
    while !t.caught_up(now) {
        freed += t.expire(now, 100);
    }
    freed
}

fn allow(_: &Tuple) -> bool {
    true
}

fn deny(_: &Tuple) -> bool {
    false
}

fn state(t: &Table, tp: &Tuple) -> Option<State> {
    t.get(tp).map(|(s, _)| s)
}

#[test]
fn a_handshake_creates_one_entry_and_replies_pass_without_judging() {
    let mut t = table(1);
    let c = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    let r = c.reversed();
    let judged = Cell::new(0);
    let judge = |_: &Tuple| {
        judged.set(judged.get() + 1);
        true
    };
    assert_eq!(t.track(&c, &tcp(SYN, 100), s(0), 1, judge), Outcome::New);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::SynSent)));
    assert_eq!(t.track(&r, &tcp(SYN | ACK, 900), s(0), 1, judge), Outcome::Established);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::SynRecv)));
    assert_eq!(t.track(&c, &tcp(ACK, 101), s(0), 1, judge), Outcome::Established);
    assert_eq!(state(&t, &r), Some(State::Tcp(TcpState::Established)));
    assert_eq!(t.track(&r, &data(ACK, 901, 500), s(1), 1, judge), Outcome::Established);
    assert_eq!(judged.get(), 1, "only the first packet is judged");
    assert_eq!(t.len(), 1);
    let (_, counters) = t.get(&c).unwrap();
    assert_eq!(counters.packets, [2, 2]);
    assert_eq!(counters.bytes, [128, 64 + 564]);
}

#[test]
fn a_syn_ack_with_no_syn_seen_is_invalid_and_not_judged() {
    let mut t = table(1);
    let r = tuple(0, 6, "192.0.2.9", 22, "10.0.0.1", 40000);
    assert_eq!(t.track(&r, &tcp(SYN | ACK, 1), s(0), 1, |_| panic!("not judged")), Outcome::Invalid);
    assert!(t.is_empty());
    assert_eq!(t.stats().invalid, 1);
}

#[test]
fn mid_stream_pick_up_is_allowed_when_the_policy_allows_unless_strict() {
    let c = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    let mut t = table(1);
    assert_eq!(t.track(&c, &tcp(ACK, 5000), s(0), 1, allow), Outcome::New);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::Established)));
    assert_eq!(t.track(&c.reversed(), &tcp(ACK, 7000), s(0), 1, allow), Outcome::Established);

    let mut t = table(1);
    assert_eq!(t.track(&c, &tcp(ACK, 5000), s(0), 1, deny), Outcome::Denied);
    assert!(t.is_empty());

    let mut strict = Table::new(Settings { capacity: 8, per_zone_capacity: 8, tcp_strict: true, ..Settings::default() }, 1);
    assert_eq!(strict.track(&c, &tcp(ACK, 5000), s(0), 1, allow), Outcome::Invalid);
}

#[test]
fn a_denied_first_packet_creates_nothing() {
    let mut t = table(1);
    let c = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    assert_eq!(t.track(&c, &UDP, s(0), 1, deny), Outcome::Denied);
    assert_eq!(t.track(&c.reversed(), &UDP, s(0), 1, deny), Outcome::Denied, "no entry lets the reply in");
    assert!(t.is_empty());
}

#[test]
fn udp_unreplied_times_out_at_30s_and_a_stream_at_180s() {
    let mut t = table(1);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    let b = tuple(0, 17, "10.0.0.1", 5001, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    t.track(&b, &UDP, s(0), 1, allow);
    t.track(&b.reversed(), &UDP, s(1), 1, allow);
    assert_eq!(state(&t, &b), Some(State::Pseudo { replied: true }));
    assert_eq!(sweep(&mut t, s(29)), 0);
    assert_eq!(sweep(&mut t, s(31)), 1, "the unreplied flow goes at 30 s");
    assert!(t.get(&a).is_none());
    assert_eq!(sweep(&mut t, s(180)), 0);
    assert_eq!(sweep(&mut t, s(182)), 1, "the stream goes 180 s after its last packet");
    assert!(t.is_empty());
    assert_eq!(t.stats().expired, 2);
}

#[test]
fn activity_keeps_a_flow_alive_past_its_timeout() {
    let mut t = table(1);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    for sec in (20..200).step_by(20) {
        t.track(&a, &UDP, s(sec), 1, allow);
        sweep(&mut t, s(sec));
        assert_eq!(t.len(), 1, "at {sec} s");
    }
    assert_eq!(sweep(&mut t, s(212)), 1);
}

#[test]
fn tcp_timeouts_follow_the_state() {
    let mut t = table(1);
    let half = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    let est = tuple(0, 6, "10.0.0.1", 40001, "192.0.2.9", 22);
    t.track(&half, &tcp(SYN, 1), s(0), 1, allow);
    t.track(&est, &tcp(SYN, 1), s(0), 1, allow);
    t.track(&est.reversed(), &tcp(SYN | ACK, 1), s(0), 1, allow);
    t.track(&est, &tcp(ACK, 2), s(0), 1, allow);
    assert_eq!(sweep(&mut t, s(119)), 0);
    assert_eq!(sweep(&mut t, s(121)), 1, "SYN_SENT: 120 s");
    assert!(t.get(&half).is_none());
    assert_eq!(sweep(&mut t, s(909)), 0);
    assert_eq!(sweep(&mut t, s(911)), 1, "ESTABLISHED: 910 s");
}

#[test]
fn a_packet_meeting_an_expired_entry_starts_a_new_flow() {
    let mut t = table(1);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    // No sweep ran; the packet itself finds the entry stale.
    assert_eq!(t.track(&a.reversed(), &UDP, s(31), 1, deny), Outcome::Denied);
    assert!(t.is_empty());
}

#[test]
fn per_zone_timeouts_override_the_host_defaults() {
    let short = Timeouts { udp: 5, ..Timeouts::default() };
    let mut t = Table::new(
        Settings { capacity: 8, per_zone_capacity: 8, zone_timeouts: vec![Timeouts::default(), short], ..Settings::default() },
        2,
    );
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    let b = tuple(1, 17, "10.0.0.2", 5000, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    t.track(&b, &UDP, s(0), 1, allow);
    assert_eq!(sweep(&mut t, s(4)), 0);
    assert_eq!(sweep(&mut t, s(6)), 1);
    assert!(t.get(&b).is_none() && t.get(&a).is_some());
}

#[test]
fn expiry_work_per_call_is_bounded() {
    let mut t = Table::new(Settings { capacity: 2000, per_zone_capacity: 2000, ..Settings::default() }, 1);
    for port in 0..1000u16 {
        t.track(&tuple(0, 17, "10.0.0.1", port, "192.0.2.9", 53), &UDP, s(0), 1, allow);
    }
    assert_eq!(t.expire(s(60), 10), 10);
    assert_eq!(t.len(), 990);
    while !t.caught_up(s(60)) {
        t.expire(s(60), 64);
    }
    assert!(t.is_empty());
}

#[test]
fn a_full_zone_evicts_its_oldest_unassured_flow_but_never_an_assured_one() {
    let mut t = Table::new(Settings { capacity: 100, per_zone_capacity: 2, ..Settings::default() }, 2);
    let f = |p: u16| tuple(0, 17, "10.0.0.1", p, "192.0.2.9", 53);
    t.track(&f(1), &UDP, s(0), 1, allow);
    t.track(&f(2), &UDP, s(1), 1, allow);
    assert_eq!(t.track(&f(3), &UDP, s(2), 1, allow), Outcome::New, "evicts an unreplied flow");
    assert!(t.get(&f(1)).is_none(), "the oldest one");
    assert_eq!(t.stats().evicted, 1);
    // Both left become assured (replied).
    t.track(&f(2).reversed(), &UDP, s(3), 1, allow);
    t.track(&f(3).reversed(), &UDP, s(3), 1, allow);
    assert_eq!(t.track(&f(4), &UDP, s(4), 1, allow), Outcome::Full);
    assert_eq!(t.stats().full, 1);
    assert_eq!(t.zone_len(0), 2);
    // The other zone still has its share.
    let g = |p: u16| tuple(1, 17, "10.0.0.2", p, "192.0.2.9", 53);
    assert_eq!(t.track(&g(1), &UDP, s(4), 1, allow), Outcome::New);
    assert_eq!(t.track(&g(2), &UDP, s(4), 1, allow), Outcome::New);
}

#[test]
fn eviction_sees_past_flows_that_became_assured_after_they_were_placed() {
    // More flows than one eviction scan looks at turn assured (replied)
    // after the wheel placed them by their unreplied deadline; newer
    // unreplied flows are behind them in the wheel's order.
    let mut t = Table::new(Settings { capacity: 1000, per_zone_capacity: 200, ..Settings::default() }, 1);
    let old = |p: u16| tuple(0, 17, "10.0.0.1", p, "192.0.2.9", 53);
    let new = |p: u16| tuple(0, 17, "10.0.0.2", p, "192.0.2.9", 53);
    let many = u16::try_from(2 * EVICT_SCAN).expect("small");
    for p in 0..many {
        assert_eq!(t.track(&old(p), &UDP, s(0), 1, allow), Outcome::New);
    }
    for p in 0..many {
        assert_eq!(t.track(&old(p).reversed(), &UDP, s(1), 1, allow), Outcome::Established);
    }
    for p in 0..200 - many {
        assert_eq!(t.track(&new(p), &UDP, s(2), 1, allow), Outcome::New);
    }
    assert_eq!(t.zone_len(0), 200);
    assert_eq!(t.track(&new(1000), &UDP, s(3), 1, allow), Outcome::New, "an unreplied flow makes room");
    assert_eq!(t.stats().evicted, 1);
    assert!((0..many).all(|p| t.get(&old(p)).is_some()), "no assured flow was taken");
    assert!(t.get(&new(0)).is_none(), "the oldest unreplied flow was");
}

#[test]
fn a_flow_placed_before_where_the_last_eviction_scan_began_is_still_found() {
    // Zone 1 times UDP out after 5 s, zone 0 after 30 s. A zone-0 eviction
    // scan steps over the empty seconds before zone 0's flows, and later
    // scans start past them; a zone-1 flow placed after that, in one of
    // those seconds, is still the one zone 1 evicts.
    let zone_timeouts = vec![Timeouts::default(), Timeouts { udp: 5, ..Timeouts::default() }];
    let mut t = Table::new(Settings { capacity: 100, per_zone_capacity: 2, zone_timeouts, ..Settings::default() }, 2);
    let f = |zone: u16, p: u16| tuple(zone, 17, "10.0.0.1", p, "192.0.2.9", 53);
    t.track(&f(0, 1), &UDP, s(0), 1, allow);
    t.track(&f(0, 2), &UDP, s(0), 1, allow);
    assert_eq!(t.track(&f(0, 3), &UDP, s(1), 1, allow), Outcome::New, "zone 0 evicts its oldest");
    assert!(t.get(&f(0, 1)).is_none());
    t.track(&f(1, 1), &UDP, s(1), 1, allow);
    t.track(&f(1, 2), &UDP, s(1), 1, allow);
    assert_eq!(t.track(&f(1, 3), &UDP, s(2), 1, allow), Outcome::New, "zone 1 evicts its own, due at second 6");
    assert!(t.get(&f(1, 1)).is_none(), "the oldest of zone 1");
    assert!(t.get(&f(0, 2)).is_some() && t.get(&f(0, 3)).is_some(), "zone 0's flows stay");
    assert_eq!(t.stats().evicted, 2);
    // The sweep frees zone 1's flows at their deadline, before zone 0's.
    assert_eq!(sweep(&mut t, s(8)), 2);
    assert_eq!((t.zone_len(0), t.zone_len(1)), (2, 0));
}

#[test]
fn a_run_of_evictions_takes_the_oldest_flows_in_order_across_zones() {
    // A flood of new flows into two full zones, alternating as a frame
    // between two ports makes them: each evicts the oldest flow of its own
    // zone (what the eviction's prefetching looks ahead at is only read).
    let mut t = Table::new(Settings { capacity: 1000, per_zone_capacity: 100, ..Settings::default() }, 2);
    let f = |i: u16| tuple(i % 2, 17, "10.0.0.1", i, "192.0.2.9", 53);
    for i in 0..200 {
        assert_eq!(t.track(&f(i), &UDP, s(u64::from(i / 50)), 1, allow), Outcome::New);
    }
    for i in 200..600 {
        assert_eq!(t.track(&f(i), &UDP, s(5), 1, allow), Outcome::New);
        let gone = i - 200;
        assert!(t.get(&f(gone)).is_none(), "flow {gone} evicted");
        assert!(t.get(&f(gone + 1)).is_some(), "flow {} kept", gone + 1);
    }
    assert_eq!(t.stats().evicted, 400);
    assert!((400..600).all(|i| t.get(&f(i)).is_some()));
}

#[test]
fn a_full_zone_does_not_grow_past_its_share_by_evicting_another_zones_expired_flow() {
    // Zone 1's flow is expired (not yet swept); zone 0 is full of
    // replied flows. Freeing zone 1's dead flow makes room in the table,
    // not in zone 0: a new zone-0 flow is refused, and zone 0 stays at its
    // share however often it is asked.
    let mut t = Table::new(Settings { capacity: 100, per_zone_capacity: 2, ..Settings::default() }, 2);
    let f = |zone: u16, p: u16| tuple(zone, 17, "10.0.0.1", p, "192.0.2.9", 53);
    t.track(&f(1, 1), &UDP, s(0), 1, allow);
    for p in 1..=2 {
        t.track(&f(0, p), &UDP, s(20), 1, allow);
        t.track(&f(0, p).reversed(), &UDP, s(20), 1, allow);
    }
    for p in 3..6 {
        assert_eq!(t.track(&f(0, p), &UDP, s(40), 1, allow), Outcome::Full, "zone 0 has no room");
        assert_eq!(t.zone_len(0), 2);
    }
}

#[test]
fn a_full_table_never_takes_room_from_another_zone() {
    let mut t = Table::new(Settings { capacity: 3, per_zone_capacity: 3, ..Settings::default() }, 2);
    for p in 1..=3 {
        assert_eq!(t.track(&tuple(0, 17, "10.0.0.1", p, "192.0.2.9", 53), &UDP, s(0), 1, allow), Outcome::New);
    }
    assert_eq!(t.track(&tuple(1, 17, "10.0.0.2", 1, "192.0.2.9", 53), &UDP, s(1), 1, allow), Outcome::Full);
    assert_eq!(t.zone_len(0), 3);
}

#[test]
fn revalidation_removes_exactly_the_flows_the_new_policy_denies() {
    let mut t = table(1);
    let ssh = tuple(0, 6, "192.0.2.9", 40000, "10.0.0.1", 22);
    let web = tuple(0, 6, "192.0.2.9", 40001, "10.0.0.1", 80);
    for c in [ssh, web] {
        t.track(&c, &tcp(SYN, 1), s(0), 1, allow);
        t.track(&c.reversed(), &tcp(SYN | ACK, 1), s(0), 1, allow);
        t.track(&c, &tcp(ACK, 2), s(0), 1, allow);
    }
    // Generation 2 denies SSH (either way). The judge sees each flow's
    // original first packet, even when the packet that meets the entry is a
    // reply; a revoked TCP flow's non-SYN packet is dropped without a
    // second judgement (no mid-stream pick-up of a revoked flow).
    let seen = std::cell::RefCell::new(Vec::new());
    let policy2 = |o: &Tuple| {
        seen.borrow_mut().push(*o);
        o.dport != 22 && o.sport != 22
    };
    assert_eq!(t.track(&web.reversed(), &tcp(ACK, 2), s(1), 2, policy2), Outcome::Established);
    assert_eq!(t.track(&ssh.reversed(), &tcp(ACK, 2), s(1), 2, policy2), Outcome::Denied);
    assert_eq!(*seen.borrow(), vec![web, ssh]);
    assert_eq!(state(&t, &ssh), Some(State::Revoked));
    assert_eq!(t.stats().revalidated, 2);
    assert_eq!(t.stats().revalidation_removed, 1);
    // Revalidated once: later packets of the surviving flow are not judged.
    assert_eq!(t.track(&web, &tcp(ACK, 3), s(2), 2, |_| panic!("already revalidated")), Outcome::Established);
}

#[test]
fn keep_leaves_existing_flows_alone_after_a_policy_change() {
    let mut t = Table::new(Settings { capacity: 8, per_zone_capacity: 8, revalidate: false, ..Settings::default() }, 1);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    assert_eq!(t.track(&a.reversed(), &UDP, s(1), 2, |_| panic!("keep never re-judges")), Outcome::Established);
}

#[test]
fn an_rst_out_of_window_is_invalid_and_one_in_window_closes() {
    let mut t = table(1);
    let c = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    t.track(&c, &tcp(SYN, 1000), s(0), 1, allow);
    t.track(&c.reversed(), &tcp(SYN | ACK, 5000), s(0), 1, allow);
    t.track(&c, &tcp(ACK, 1001), s(0), 1, allow);
    assert_eq!(t.track(&c.reversed(), &tcp(RST, 5001 + (1 << 30)), s(1), 1, allow), Outcome::Invalid);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::Established)));
    assert_eq!(t.track(&c.reversed(), &tcp(RST, 5001), s(1), 1, allow), Outcome::Established);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::Close)));
}

#[test]
fn a_full_close_walks_fin_wait_close_wait_last_ack_time_wait() {
    let mut t = table(1);
    let c = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    let r = c.reversed();
    t.track(&c, &tcp(SYN, 0), s(0), 1, allow);
    t.track(&r, &tcp(SYN | ACK, 0), s(0), 1, allow);
    t.track(&c, &tcp(ACK, 1), s(0), 1, allow);
    let steps = [
        (c, FIN | ACK, TcpState::FinWait),
        (r, ACK, TcpState::CloseWait),
        (r, ACK, TcpState::CloseWait), // half-closed: the server still sends
        (r, FIN | ACK, TcpState::LastAck),
        (c, ACK, TcpState::TimeWait),
    ];
    for (tp, fl, want) in steps {
        assert_eq!(t.track(&tp, &tcp(fl, 1), s(1), 1, allow), Outcome::Established);
        assert_eq!(state(&t, &c), Some(State::Tcp(want)));
    }
    assert_eq!(sweep(&mut t, s(120)), 0);
    assert_eq!(sweep(&mut t, s(1 + 121)), 1, "closing states: 120 s");
}

#[test]
fn icmp_echo_is_tracked_by_identifier() {
    let mut t = table(1);
    let req = tuple(0, 1, "10.0.0.1", 77, "192.0.2.9", 77);
    assert_eq!(t.track(&req, &UDP, s(0), 1, allow), Outcome::New);
    assert_eq!(t.track(&req.reversed(), &UDP, s(0), 1, deny), Outcome::Established);
    let other_id = tuple(0, 1, "192.0.2.9", 78, "10.0.0.1", 78);
    assert_eq!(t.track(&other_id, &UDP, s(0), 1, deny), Outcome::Denied);
}

#[test]
fn flows_are_listed_from_the_openers_side_and_flushed_per_zone() {
    let mut t = table(2);
    let a = tuple(0, 17, "10.0.0.9", 5000, "10.0.0.1", 53);
    let b = tuple(1, 17, "fd00::1", 5000, "fd00::9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    t.track(&b, &UDP, s(0), 1, allow);
    let mut listed: Vec<Tuple> = t.flows().map(|(tp, _, _)| tp).collect();
    listed.sort_by_key(|tp| tp.zone);
    assert_eq!(listed, vec![a, b]);
    assert_eq!(t.flush(Some(0)), 1);
    assert!(t.get(&a).is_none() && t.get(&b).is_some());
    assert_eq!(t.flush(None), 1);
    assert!(t.is_empty());
}

#[test]
fn memory_per_flow_is_reported_and_bounded() {
    let t = Table::new(Settings { capacity: 1 << 16, per_zone_capacity: 1 << 16, ..Settings::default() }, 1);
    println!("entry {} bytes, {} bytes per flow all-in", Table::entry_size(), t.bytes_per_flow());
    assert_eq!(Table::entry_size(), 64, "an entry is one cache line");
    assert!(t.bytes_per_flow() <= 128);
}

#[test]
fn icmp_errors_about_a_tracked_flow_are_related_in_v4_and_v6() {
    let mut t = table(2);
    // The VM (zone 0) sent UDP to a server; a router answers "fragmentation
    // needed" quoting that datagram.
    let out = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    t.track(&out, &UDP, s(0), 1, allow);
    assert!(t.related(&out, s(1)));
    // Either direction of the quoted header belongs to the flow.
    assert!(t.related(&out.reversed(), s(1)));
    // Another flow, another zone or an expired flow is not related.
    assert!(!t.related(&tuple(0, 17, "10.0.0.1", 5001, "192.0.2.9", 53), s(1)));
    assert!(!t.related(&Tuple { zone: 1, ..out }, s(1)));
    assert!(!t.related(&out, s(31)));

    let v6 = tuple(0, 6, "fd00::1", 40000, "2001:db8::9", 443);
    t.track(&v6, &tcp(SYN, 1), s(40), 1, allow);
    assert!(t.related(&v6, s(41)), "ICMPv6 packet too big for a TCP flow");
    assert!(!t.related(&tuple(0, 6, "fd00::1", 40000, "2001:db8::9", 80), s(41)));
}

#[test]
fn a_revoked_tcp_flow_stays_cut_even_when_the_other_side_could_pick_it_up() {
    // Inbound SSH admitted under generation 1. Generation 2 denies inbound
    // SSH but still allows everything outbound: the VM's next segment must
    // not pick the connection up again as a flow the VM opened.
    let mut t = table(1);
    let client = tuple(0, 6, "198.51.100.7", 40000, "10.0.0.11", 22);
    let vm = client.reversed();
    let inbound_ssh_denied = |x: &Tuple| !(x.dport == 22 && x.dst == client.dst);
    assert_eq!(t.track(&client, &tcp(SYN, 1), s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&vm, &tcp(SYN | ACK, 100), s(1), 1, allow), Outcome::Established);
    assert_eq!(t.track(&client, &tcp(ACK, 2), s(1), 1, allow), Outcome::Established);
    // The client speaks first after the change: revalidated, denied.
    assert_eq!(t.track(&client, &data(ACK, 2, 10), s(2), 2, inbound_ssh_denied), Outcome::Denied);
    assert_eq!(t.stats().revalidation_removed, 1);
    // The VM answers; the egress policy would allow a mid-stream pick-up.
    assert_eq!(t.track(&vm, &data(ACK, 101, 10), s(3), 2, inbound_ssh_denied), Outcome::Denied);
    assert_eq!(t.track(&client, &data(ACK, 12, 10), s(4), 2, inbound_ssh_denied), Outcome::Denied);
    // The same when the VM is the first to speak after the change.
    let client2 = tuple(0, 6, "198.51.100.7", 40001, "10.0.0.11", 22);
    assert_eq!(t.track(&client2, &tcp(SYN, 1), s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&client2.reversed(), &tcp(SYN | ACK, 100), s(1), 1, allow), Outcome::Established);
    assert_eq!(t.track(&client2.reversed(), &data(ACK, 101, 10), s(5), 2, inbound_ssh_denied), Outcome::Denied);
    assert_eq!(t.track(&client2, &data(ACK, 2, 10), s(5), 2, inbound_ssh_denied), Outcome::Denied);
    // A new connection on the same ports is judged afresh: the VM may open
    // one (egress allows it); the client may not.
    assert_eq!(t.track(&vm, &tcp(SYN, 500), s(6), 2, inbound_ssh_denied), Outcome::New);
    assert_eq!(t.track(&client2, &tcp(SYN, 9), s(6), 2, inbound_ssh_denied), Outcome::Denied);
}

#[test]
fn a_revoked_udp_flow_is_judged_as_new_from_either_side() {
    // The contract's plain reading for protocols without a handshake: the
    // VM may start the flow again under its egress rules.
    let mut t = table(1);
    let client = tuple(0, 17, "198.51.100.7", 5000, "10.0.0.11", 53);
    let vm = client.reversed();
    let inbound_dns_denied = |x: &Tuple| !(x.dport == 53 && x.dst == client.dst);
    assert_eq!(t.track(&client, &UDP, s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&client, &UDP, s(2), 2, inbound_dns_denied), Outcome::Denied);
    assert_eq!(t.track(&vm, &UDP, s(3), 2, inbound_dns_denied), Outcome::New);
}

#[test]
fn flows_that_differ_only_in_their_ipv6_addresses_are_different_entries() {
    // An IPv6 entry keeps its addresses beside the entry; a lookup must
    // compare them, not just the ports, zone and protocol stored inline.
    let mut t = table(1);
    let udp = PacketInfo { wire_len: 100, ..PacketInfo::default() };
    let flows: Vec<Tuple> = ["fd00::1", "fd00::2", "fd00:1::1", "::ffff:10.0.0.1", "10.0.0.1"]
        .iter()
        .map(|src| {
            let dst = if src.contains(':') { "2001:db8::9" } else { "192.0.2.9" };
            tuple(0, 17, src, 5000, dst, 53)
        })
        .collect();
    for f in &flows {
        assert_eq!(t.track(f, &udp, s(1), 1, |_| true), Outcome::New, "{f:?}");
    }
    assert_eq!(t.len(), flows.len());
    // Each reply finds its own flow, and only that one's counters move.
    assert_eq!(t.track(&flows[1].reversed(), &udp, s(2), 1, |_| false), Outcome::Established);
    for (i, f) in flows.iter().enumerate() {
        let (_, c) = t.get(f).expect("tracked");
        assert_eq!(c.packets, [1, u32::from(i == 1)], "{f:?}");
    }
    let mut listed: Vec<Tuple> = t.flows().map(|(tp, _, _)| tp).collect();
    listed.sort_by_key(|tp| format!("{tp:?}"));
    let mut want = flows.clone();
    want.sort_by_key(|tp| format!("{tp:?}"));
    assert_eq!(listed, want, "listing gives every flow's addresses back");
    assert_eq!(t.flush(None), flows.len());
    assert!(flows.iter().all(|f| t.get(f).is_none()));
}

#[test]
fn an_ipv6_flow_whose_hash_bits_collide_is_still_another_flow() {
    // The index keeps of a hash only its home group (its low bits) and a
    // 7-bit tag (its top bits), so a lookup compares keys when those
    // collide. Find two IPv6 flows, same ports, zone and protocol, whose
    // low 16 and top 7 hash bits are equal: only the addresses kept beside
    // the entries tell them apart.
    let seed = Settings::default().seed;
    let flow = |i: u32| tuple(0, 17, &format!("fd00::{:x}:{:x}", i >> 16, i & 0xffff), 5000, "2001:db8::9", 53);
    let mut seen = std::collections::HashMap::new();
    let (a, b) = (0..1_000_000u32)
        .find_map(|i| {
            let h = Key::of(&flow(i)).0.hash(seed);
            seen.insert((h & 0xffff, h >> 57), i).map(|j| (flow(j), flow(i)))
        })
        .expect("a 23-bit collision among 1M flows");
    let mut t = table(1);
    let udp = PacketInfo { wire_len: 100, ..PacketInfo::default() };
    assert_eq!(t.track(&a, &udp, s(1), 1, |_| true), Outcome::New);
    assert!(t.get(&b).is_none(), "{b:?} found {a:?}'s entry");
    assert_eq!(t.track(&b, &udp, s(1), 1, |_| true), Outcome::New);
    assert_eq!(t.len(), 2);
    // In one batch, each guessed from its home group before either is
    // tracked, both pass on their own entries.
    let mut out = [Outcome::Invalid; 4];
    t.track_batch(&[a, b, b.reversed(), a.reversed()], &[udp; 4], s(2), 1, |_| panic!("both tracked"), &mut out);
    assert_eq!(out, [Outcome::Established; 4]);
    assert_eq!(t.get(&a).expect("a").1.packets, [2, 1]);
    assert_eq!(t.get(&b).expect("b").1.packets, [2, 1]);
}

#[test]
fn a_batch_never_passes_a_packet_on_an_entry_an_earlier_packet_removed() {
    // Warming guesses every packet's entry before any is tracked. Here the
    // first packet meets its flow admitted under the old policy, which the
    // new one denies: the entry is removed and the packet judged as new. The
    // second, the reply, was guessed the removed entry; it must be judged as
    // new too, and the table stay whole.
    let mut t = table(1);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    assert_eq!(t.track(&a, &UDP, s(0), 1, allow), Outcome::New);
    let judged = Cell::new(0);
    let mut out = [Outcome::Invalid; 2];
    t.track_batch(
        &[a, a.reversed()],
        &[UDP; 2],
        s(1),
        2,
        |_| {
            judged.set(judged.get() + 1);
            false
        },
        &mut out,
    );
    assert_eq!(out, [Outcome::Denied; 2]);
    assert_eq!(judged.get(), 3, "revalidated once, then each packet judged as new");
    assert_eq!((t.len(), t.stats().revalidation_removed), (0, 1));
    assert_eq!(t.track(&a, &UDP, s(1), 2, allow), Outcome::New);
    assert_eq!(t.track(&a.reversed(), &UDP, s(1), 2, deny), Outcome::Established);
}

#[test]
fn an_entry_is_ready_at_its_place_only_while_it_holds_its_flow() {
    let mut t = Table::new(Settings { capacity: 1, per_zone_capacity: 1, ..Settings::default() }, 2);
    let c = tuple(0, 6, "10.0.0.1", 1000, "192.0.2.9", 22);
    assert_eq!(t.track(&c, &tcp(SYN, 1), s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&c.reversed(), &tcp(SYN | ACK, 9), s(1), 1, allow), Outcome::Established);
    let reply = t.last_hit();
    assert_eq!(t.track(&c, &tcp(ACK, 2), s(1), 1, allow), Outcome::Established);
    let orig = t.last_hit();
    assert_ne!(orig, reply, "the place says which side the packet came from");
    let r = t.ready_at(orig, s(1), 1).expect("the opener's side");
    assert_eq!(t.update_at(r, &tcp(ACK, 2), s(1)), Outcome::Established);
    assert_eq!(state(&t, &c), Some(State::Tcp(TcpState::Established)));
    let r = t.ready_at(reply, s(2), 1).expect("the reply side");
    assert_eq!(t.update_at(r, &tcp(ACK, 10), s(2)), Outcome::Established);
    assert_eq!(t.get(&c).expect("tracked").1.packets, [3, 2], "counted per side");
    // The state machine still judges: an RST far out of the window.
    let r = t.ready_at(orig, s(2), 1).expect("ready");
    assert_eq!(t.update_at(r, &tcp(RST, 3 + (1 << 30)), s(2)), Outcome::Invalid);
    assert!(t.ready_at(orig, s(2), 2).is_none(), "admitted under an older policy: revalidate first");
    assert!(t.ready_at(orig, s(2 + 910), 1).is_none(), "past its deadline");
    // The one entry freed and taken by another flow: its old place is not
    // the first flow's any more.
    assert_eq!(t.flush(None), 1);
    assert!(t.ready_at(orig, s(3), 1).is_none(), "freed");
    let u = tuple(0, 17, "10.0.0.1", 1000, "192.0.2.9", 53);
    assert_eq!(t.track(&u, &UDP, s(3), 1, allow), Outcome::New);
    assert!(t.ready_at(orig, s(3), 1).is_none(), "reused by another flow");
    assert_eq!(t.track(&u, &UDP, s(3), 1, allow), Outcome::Established);
    let first = t.last_hit();
    assert!(t.ready_at(first, s(3), 1).is_some(), "the new flow's, replied or not");
    // The same flow again, after it ended, in the same entry: a new epoch.
    assert_eq!(t.flush(None), 1);
    assert_eq!(t.track(&u, &UDP, s(4), 1, allow), Outcome::New);
    assert!(t.ready_at(first, s(4), 1).is_none(), "the flow's earlier time in the entry");
}

#[test]
fn a_revoked_flow_is_not_ready_at_its_place() {
    let mut t = table(1);
    let c = tuple(0, 6, "10.0.0.1", 1000, "192.0.2.9", 22);
    assert_eq!(t.track(&c, &tcp(ACK, 1), s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&c, &tcp(ACK, 1), s(1), 1, allow), Outcome::Established);
    let at = t.last_hit();
    assert_eq!(t.track(&c, &tcp(ACK, 1), s(2), 2, deny), Outcome::Denied, "revoked by the new policy");
    assert!(t.ready_at(at, s(2), 2).is_none());
}

#[test]
fn keep_lets_an_entry_of_an_older_policy_be_ready_at_its_place() {
    let mut t = Table::new(Settings { capacity: 4, per_zone_capacity: 4, revalidate: false, ..Settings::default() }, 1);
    let u = tuple(0, 17, "10.0.0.1", 1000, "192.0.2.9", 53);
    assert_eq!(t.track(&u, &UDP, s(1), 1, allow), Outcome::New);
    assert_eq!(t.track(&u, &UDP, s(1), 1, allow), Outcome::Established);
    assert!(t.ready_at(t.last_hit(), s(2), 5).is_some());
}

#[test]
fn reconfigured_timeouts_strictness_and_revalidation_apply_to_the_next_packet() {
    let mut t = table(2);
    let a = tuple(0, 17, "10.0.0.1", 5000, "192.0.2.9", 53);
    let b = tuple(1, 17, "10.0.0.2", 5000, "192.0.2.9", 53);
    t.track(&a, &UDP, s(0), 1, allow);
    t.track(&b, &UDP, s(0), 1, allow);
    // Zone 0's UDP timeout drops to 5 s; zone 1 keeps the default 30.
    let short = Timeouts { udp: 5, ..Timeouts::default() };
    let base = t.settings().clone();
    t.reconfigure(&Settings { zone_timeouts: vec![short], ..base.clone() });
    assert_eq!(t.track(&a.reversed(), &UDP, s(6), 1, deny), Outcome::Denied, "zone 0's flow is gone after 5 s");
    assert_eq!(t.track(&b.reversed(), &UDP, s(6), 1, deny), Outcome::Established, "zone 1's flow lives on");
    // A longer timeout keeps a flow alive past its old deadline.
    let c = tuple(1, 17, "10.0.0.2", 5001, "192.0.2.9", 53);
    t.track(&c, &UDP, s(10), 1, allow);
    t.reconfigure(&Settings { default_timeouts: Timeouts { udp: 100, ..Timeouts::default() }, ..base.clone() });
    assert_eq!(sweep(&mut t, s(50)), 0, "nothing times out before 100 s");
    assert_eq!(t.track(&c.reversed(), &UDP, s(50), 1, deny), Outcome::Established);

    // `keep`: a flow admitted under generation 1 passes under 2 unjudged;
    // `revalidate` again: it is judged, and denied.
    let tc = tuple(0, 6, "10.0.0.1", 40000, "192.0.2.9", 22);
    let mut t = table(1);
    assert_eq!(t.track(&tc, &tcp(SYN, 1), s(0), 1, allow), Outcome::New);
    t.reconfigure(&Settings { revalidate: false, ..t.settings().clone() });
    assert_eq!(t.track(&tc.reversed(), &tcp(SYN | ACK, 9), s(0), 2, |_| panic!("kept, not judged")), Outcome::Established);
    t.reconfigure(&Settings { revalidate: true, ..t.settings().clone() });
    assert_eq!(t.track(&tc, &tcp(ACK, 2), s(0), 3, deny), Outcome::Denied, "revalidated under the new policy");

    // Strictness: mid-stream pick-up refused once `tcp_strict` is on.
    let mut t = table(1);
    t.reconfigure(&Settings { tcp_strict: true, ..t.settings().clone() });
    assert_eq!(t.track(&tc, &tcp(ACK, 5000), s(0), 1, allow), Outcome::Invalid);
    // The capacity and seed stay as built.
    t.reconfigure(&Settings { capacity: 1 << 20, seed: 99, ..t.settings().clone() });
    assert_eq!((t.settings().capacity, t.settings().seed), (64, Settings::default().seed));
}

#[test]
fn an_expired_flow_goes_before_a_live_one_due_in_the_same_second() {
    // Two unreplied flows of a full zone, both due in second 30: one at
    // 30.0 s (expired at 30.6 s, not yet swept), one at 30.768 s (live).
    // A new flow at 30.6 s takes the expired one's place, whichever of the
    // two the wheel's slot lists first.
    for expired_first in [true, false] {
        let mut t = Table::new(Settings { capacity: 100, per_zone_capacity: 2, ..Settings::default() }, 1);
        let f = |p: u16| tuple(0, 17, "10.0.0.1", p, "192.0.2.9", 53);
        let (dead, live) = (f(1), f(2));
        if expired_first {
            t.track(&dead, &UDP, Now(0), 1, allow);
            t.track(&live, &UDP, Now(768), 1, allow);
        } else {
            // Placed first, by its first frame; seen again later.
            t.track(&live, &UDP, Now(0), 1, allow);
            t.track(&dead, &UDP, Now(0), 1, allow);
            t.track(&live, &UDP, Now(768), 1, allow);
        }
        assert_eq!(t.track(&f(3), &UDP, Now(30_600), 1, allow), Outcome::New);
        assert!(t.get(&dead).is_none(), "the expired flow went (listed first: {expired_first})");
        assert!(t.get(&live).is_some(), "the live one stayed (listed first: {})", !expired_first);
        assert_eq!((t.stats().expired, t.stats().evicted), (1, 0));
    }
}
