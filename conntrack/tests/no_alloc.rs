//! The per-packet path allocates nothing: tracking hits, new flows,
//! evictions, refusals and expiry sweeps over thousands of packets, counted
//! by a global allocator.

use sgswitch_conntrack::tcp::flags::{ACK, SYN};
use sgswitch_conntrack::{Now, PacketInfo, Settings, Table, Tuple};

#[path = "../../tests/support/counting_alloc.rs"]
mod counting_alloc;

use counting_alloc::allocs;

#[test]
fn tracking_and_expiry_allocate_nothing() {
    let mut t = Table::new(Settings { capacity: 4096, per_zone_capacity: 1024, ..Settings::default() }, 4);
    let tuples: Vec<Tuple> = (0..8000u32)
        .map(|i| Tuple {
            zone: u16::try_from(i % 4).unwrap(),
            proto: if i % 2 == 0 { 6 } else { 17 },
            src: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i)),
            dst: "192.0.2.9".parse().unwrap(),
            sport: 40000,
            dport: 443,
        })
        .collect();
    let infos = vec![PacketInfo { tcp_flags: ACK, tcp_seq: 1, payload_len: 0, wire_len: 64 }; 64];
    let mut out = [sgswitch_conntrack::Outcome::Invalid; 64];
    let before = allocs();
    let mut now = 0;
    for round in 0..3 {
        for (i, tp) in tuples.iter().enumerate() {
            now += 1;
            let flags = if round == 0 { SYN } else { ACK };
            let p = PacketInfo { tcp_flags: flags, tcp_seq: 1, payload_len: 0, wire_len: 64 };
            let _ = t.track(tp, &p, Now(now), 1, |x| x.sport != 7);
            let _ = t.track(&tp.reversed(), &PacketInfo { tcp_flags: SYN | ACK, ..p }, Now(now), 2, |_| i % 3 != 0);
            t.expire(Now(now), 8);
        }
    }
    // The batch path, with its fixed-size scratch arrays.
    let checked = allocs();
    for chunk in tuples.chunks_exact(64) {
        now += 1;
        t.track_batch(chunk, &infos, Now(now), 3, |_| true, &mut out);
    }
    assert_eq!(allocs() - checked, 0, "allocations in track_batch");
    let after = allocs();
    assert_eq!(after - before, 0, "allocations on the per-packet path");
    assert!(t.stats().created > 0 && t.stats().full + t.stats().evicted > 0, "{:?}", t.stats());
}

#[test]
fn fragment_tracking_allocates_nothing() {
    use sgswitch_conntrack::{FragKey, FragSettings, Fragment, Fragments};
    let mut f = Fragments::new(FragSettings { datagrams: 512, held: 32, ..FragSettings::default() });
    let keys: Vec<FragKey> = (0..4000u32)
        .map(|i| FragKey {
            zone: u16::try_from(i % 3).unwrap(),
            proto: 17,
            src: std::net::IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i % 97)),
            dst: "192.0.2.9".parse().unwrap(),
            id: i,
        })
        .collect();
    let mut released = 0u32;
    let before = allocs();
    for (now, k) in (0u64..).step_by(7).zip(&keys) {
        // Followers before, the first, a follower after: holds, releases,
        // refusals when full, expiry of records and holds.
        let _ = f.follower(&Fragment { key: *k, offset: 1480, len: 100 }, k.id, sgswitch_conntrack::Now(now));
        if k.id % 5 != 0 {
            let _ = f.first(&Fragment { key: *k, offset: 0, len: 1480 }, k.id % 2 == 0, sgswitch_conntrack::Now(now), |_, _| released += 1);
        }
        let _ = f.follower(&Fragment { key: *k, offset: 2960, len: 100 }, k.id, sgswitch_conntrack::Now(now));
        f.expire(sgswitch_conntrack::Now(now), |_, _| released += 1);
    }
    assert_eq!(allocs() - before, 0, "allocations in fragment tracking");
    let s = f.stats();
    assert!(released > 0 && s.timed_out > 0 && s.full > 0, "{s:?}");
}
