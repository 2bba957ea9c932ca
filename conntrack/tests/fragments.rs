//! Fragments follow their first fragment: in order, out of order, tiny,
//! overlapping, with a bounded hold and bounded tables.

use std::net::IpAddr;

use sgswitch_conntrack::{Follow, FragKey, FragSettings, Fragment, Fragments, Now};

fn key(proto: u8, id: u32) -> FragKey {
    let src: IpAddr = "198.51.100.7".parse().expect("addr");
    let dst: IpAddr = "10.0.0.11".parse().expect("addr");
    FragKey { zone: 1, proto, src, dst, id }
}

fn frag(key: FragKey, offset: u32, len: u32) -> Fragment {
    Fragment { key, offset, len }
}

/// Collects what the tracker releases.
#[derive(Default)]
struct Released(Vec<(u32, bool)>);

impl Released {
    fn sink(&mut self) -> impl FnMut(u32, bool) + '_ {
        |h, pass| self.0.push((h, pass))
    }
}

#[test]
fn in_order_followers_take_the_first_fragments_verdict() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let (allowed, denied) = (key(17, 1), key(17, 2));
    assert!(f.first(&frag(allowed, 0, 1480), true, Now(0), out.sink()));
    assert!(!f.first(&frag(denied, 0, 1480), false, Now(0), out.sink()));
    assert_eq!(f.follower(&frag(allowed, 1480, 1480), 10, Now(1)), Follow::Pass);
    assert_eq!(f.follower(&frag(allowed, 2960, 100), 11, Now(2)), Follow::Pass);
    assert_eq!(f.follower(&frag(denied, 1480, 1480), 12, Now(1)), Follow::Drop);
    assert!(out.0.is_empty());
    let s = f.stats();
    assert_eq!((s.passed, s.denied, s.dropped()), (2, 1, 1));
}

#[test]
fn followers_that_come_first_are_held_and_released_with_the_verdict() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let (a, d) = (key(6, 7), key(6, 8));
    assert_eq!(f.follower(&frag(a, 2960, 500), 1, Now(0)), Follow::Held);
    assert_eq!(f.follower(&frag(a, 1480, 1480), 2, Now(5)), Follow::Held);
    assert_eq!(f.follower(&frag(d, 1480, 1480), 3, Now(5)), Follow::Held);
    assert_eq!(f.held(), 3);
    assert!(f.first(&frag(a, 0, 1480), true, Now(20), out.sink()));
    out.0.sort_unstable();
    assert_eq!(out.0, vec![(1, true), (2, true)]);
    out.0.clear();
    assert!(!f.first(&frag(d, 0, 1480), false, Now(30), out.sink()));
    assert_eq!(out.0, vec![(3, false)]);
    assert_eq!(f.held(), 0);
}

#[test]
fn a_held_follower_whose_first_never_comes_is_dropped_after_the_hold() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let k = key(17, 9);
    assert_eq!(f.follower(&frag(k, 1480, 100), 4, Now(1000)), Follow::Held);
    f.expire(Now(1099), out.sink());
    assert!(out.0.is_empty(), "still inside the 100 ms hold");
    f.expire(Now(1100), out.sink());
    assert_eq!(out.0, vec![(4, false)]);
    assert_eq!(f.stats().timed_out, 1);
    assert_eq!(f.stats().dropped(), 1);
    // The first fragment, late, is still judged; nothing is left to release.
    out.0.clear();
    assert!(f.first(&frag(k, 0, 1480), true, Now(1200), out.sink()));
    assert!(out.0.is_empty());
}

#[test]
fn a_tiny_first_fragment_is_dropped_and_so_are_its_followers() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    // 16 bytes of TCP: the ports, but not the flags.
    let k = key(6, 3);
    assert!(!f.first(&frag(k, 0, 16), true, Now(0), out.sink()));
    assert_eq!(f.follower(&frag(k, 16, 1000), 1, Now(1)), Follow::Drop);
    // UDP needs only its 8-byte header.
    let u = key(17, 3);
    assert!(!f.first(&frag(u, 0, 7), true, Now(0), out.sink()));
    assert!(f.first(&frag(key(17, 4), 0, 8), true, Now(0), out.sink()));
    assert_eq!(f.stats().tiny, 2);
}

#[test]
fn a_follower_overlapping_the_transport_header_is_dropped() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let k = key(6, 5);
    assert!(f.first(&frag(k, 0, 1480), true, Now(0), out.sink()));
    // IPv4 offset 1 (8 bytes) would rewrite the TCP flags (RFC 1858).
    assert_eq!(f.follower(&frag(k, 8, 1480), 1, Now(1)), Follow::Drop);
    assert_eq!(f.stats().overlapping, 1);
    // An overlap past the header is the receiver's business.
    assert_eq!(f.follower(&frag(k, 24, 1480), 2, Now(1)), Follow::Pass);
    // For UDP, offset 8 is past the header.
    let u = key(17, 5);
    assert!(f.first(&frag(u, 0, 1480), true, Now(0), out.sink()));
    assert_eq!(f.follower(&frag(u, 8, 1480), 3, Now(1)), Follow::Pass);
}

#[test]
fn a_second_first_fragment_judged_otherwise_turns_the_datagram_to_drop() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let k = key(6, 11);
    assert!(f.first(&frag(k, 0, 1480), true, Now(0), out.sink()));
    // Same datagram, rewritten ports the policy denies.
    assert!(!f.first(&frag(k, 0, 1480), false, Now(1), out.sink()));
    assert_eq!(f.follower(&frag(k, 1480, 10), 1, Now(2)), Follow::Drop);
    // And it does not flip back.
    assert!(!f.first(&frag(k, 0, 1480), true, Now(3), out.sink()));
}

#[test]
fn datagrams_are_told_apart_by_zone_addresses_protocol_and_id() {
    let mut f = Fragments::new(FragSettings::default());
    let mut out = Released::default();
    let k = key(17, 0x1_0000); // IPv6 identifications are 32 bits
    assert!(!f.first(&frag(k, 0, 1480), false, Now(0), out.sink()));
    let others = [
        FragKey { zone: 2, ..k },
        FragKey { proto: 6, ..k },
        FragKey { id: 0, ..k },
        FragKey { src: k.dst, dst: k.src, ..k },
        FragKey { src: "2001:db8::7".parse().expect("addr"), dst: "fd00::11".parse().expect("addr"), ..k },
    ];
    for (i, o) in (0u32..).zip(others) {
        assert_eq!(f.follower(&frag(o, 1480, 10), i, Now(1)), Follow::Held, "{o:?}");
    }
}

#[test]
fn remembered_verdicts_expire() {
    let s = FragSettings { datagram_ms: 1000, ..FragSettings::default() };
    let mut f = Fragments::new(s);
    let mut out = Released::default();
    let k = key(17, 12);
    assert!(f.first(&frag(k, 0, 1480), true, Now(0), out.sink()));
    assert_eq!(f.follower(&frag(k, 1480, 10), 1, Now(999)), Follow::Pass);
    // Past the record's life a follower is an orphan again.
    assert_eq!(f.follower(&frag(k, 1480, 10), 2, Now(1000)), Follow::Held);
    f.expire(Now(1000), out.sink());
    assert_eq!(f.datagrams(), 0);
}

#[test]
fn both_tables_are_bounded() {
    let s = FragSettings { datagrams: 4, held: 2, ..FragSettings::default() };
    let mut f = Fragments::new(s);
    let mut out = Released::default();
    for id in 0..4 {
        assert!(f.first(&frag(key(17, id), 0, 100), true, Now(0), out.sink()));
    }
    assert!(!f.first(&frag(key(17, 4), 0, 100), true, Now(0), out.sink()), "table full");
    assert_eq!(f.datagrams(), 4);
    assert_eq!(f.follower(&frag(key(17, 50), 100, 10), 1, Now(0)), Follow::Held);
    assert_eq!(f.follower(&frag(key(17, 51), 100, 10), 2, Now(0)), Follow::Held);
    assert_eq!(f.follower(&frag(key(17, 52), 100, 10), 3, Now(0)), Follow::Drop, "hold full");
    assert_eq!(f.stats().full, 2);
    // Once the records expire there is room again.
    assert!(f.first(&frag(key(17, 4), 0, 100), true, Now(30_000), out.sink()));
}
