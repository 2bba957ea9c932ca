//! Flow keys: both directions of a flow normalise to one [`Key`].

use std::net::IpAddr;

use crate::tcp::Side;

/// Which port's table a flow belongs to (a conntrack *zone* per ENI).
pub type Zone = u16;

/// A packet's flow fields as read off the wire. For ICMP and ICMPv6 echo
/// both ports carry the echo identifier; for protocols without ports both
/// are 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Tuple {
    pub zone: Zone,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
}

impl Tuple {
    /// The same flow seen from the other side.
    pub fn reversed(&self) -> Tuple {
        Tuple { src: self.dst, dst: self.src, sport: self.dport, dport: self.sport, ..*self }
    }
}

/// An address as a number whose big-endian bytes are its octets (IPv4
/// v4-mapped): comparing two is comparing their octets, in a few
/// instructions instead of a byte-wise loop.
fn bits(a: IpAddr) -> u128 {
    match a {
        IpAddr::V4(v4) => 0xffff_u128 << 32 | u128::from(v4.to_bits()),
        IpAddr::V6(v6) => v6.to_bits(),
    }
}

/// The high and low halves of an address's bits.
#[expect(clippy::cast_possible_truncation, reason = "splitting 128 bits into two 64-bit halves")]
fn halves(a: u128) -> [u64; 2] {
    [(a >> 64) as u64, a as u64]
}

/// The normalised key of a flow: the lower (address, port) endpoint first.
/// Five words, 40 bytes: the low endpoint's address (high half, low half),
/// the high endpoint's, then ports, zone, protocol and family packed in one
/// word. Words make equality five compares and feed the hash directly.
#[derive(Clone, Copy, Debug, Default, Eq)]
pub struct Key {
    w: [u64; 5],
}

impl PartialEq for Key {
    /// Word by word without branches: the derived comparison of the array
    /// calls `memcmp`, and a probe compares keys on every lookup.
    #[inline]
    fn eq(&self, other: &Key) -> bool {
        let (a, b) = (&self.w, &other.w);
        (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) == 0
    }
}

impl std::hash::Hash for Key {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.w.hash(state);
    }
}

const V6_BIT: u64 = 1 << 56;

/// The high bits of an IPv4 address's low word, v4-mapped (`::ffff:a.b.c.d`).
const V4_MAPPED: u64 = 0xffff << 32;

impl Key {
    /// The key of `t`, and whether `t`'s source is the key's low endpoint.
    #[inline]
    pub fn of(t: &Tuple) -> (Key, bool) {
        match Key::compact_of_v4(t) {
            Some((c, src_is_lo)) => (Key::from_compact(c, &[0; 4]), src_is_lo),
            None => Key::of_any(t),
        }
    }

    /// An IPv4 tuple's key as an entry stores it ([`Key::compact`]), and
    /// whether `t`'s source is the key's low endpoint; `None` for other
    /// tuples. The per-packet path needs no more of an IPv4 key.
    #[inline]
    pub(crate) fn compact_of_v4(t: &Tuple) -> Option<([u64; 2], bool)> {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (t.src, t.dst) else { return None };
        // An endpoint is one number, address then port, so the order below
        // is one comparison (the same order as the general case's).
        let s = u64::from(src.to_bits()) << 16 | u64::from(t.sport);
        let d = u64::from(dst.to_bits()) << 16 | u64::from(t.dport);
        let (lo, hi) = (s.min(d), s.max(d));
        #[expect(clippy::cast_possible_truncation, reason = "an endpoint's low 16 bits are its port")]
        let tail = pack_tail(lo as u16, hi as u16, t, false);
        Some(([(lo >> 16) << 32 | hi >> 16, tail], s <= d))
    }

    /// [`Key::of`] for any tuple (the general case: IPv6, v4-mapped).
    fn of_any(t: &Tuple) -> (Key, bool) {
        let s = (bits(t.src), t.sport);
        let d = (bits(t.dst), t.dport);
        let src_is_lo = s <= d;
        let (lo, hi) = if src_is_lo { (s, d) } else { (d, s) };
        let [l0, l1] = halves(lo.0);
        let [h0, h1] = halves(hi.0);
        (Key { w: [l0, l1, h0, h1, pack_tail(lo.1, hi.1, t, t.src.is_ipv6())] }, src_is_lo)
    }

    /// (low address, high address, low port, high port, zone, protocol, is IPv6).
    #[expect(clippy::cast_possible_truncation, reason = "unpacking the fields packed in the tail word")]
    pub fn parts(&self) -> ([u8; 16], [u8; 16], u16, u16, Zone, u8, bool) {
        let addr = |a: u64, b: u64| (u128::from(a) << 64 | u128::from(b)).to_be_bytes();
        let tail = self.w[4];
        (
            addr(self.w[0], self.w[1]),
            addr(self.w[2], self.w[3]),
            tail as u16,
            (tail >> 16) as u16,
            (tail >> 32) as u16,
            (tail >> 48) as u8,
            tail & V6_BIT != 0,
        )
    }

    pub fn zone(&self) -> Zone {
        tail_zone(self.w[4])
    }

    pub fn proto(&self) -> u8 {
        tail_proto(self.w[4])
    }

    /// A 64-bit hash keyed by `seed`, so that flows chosen by an attacker
    /// cannot be aimed at one bucket without knowing the seed.
    ///
    /// Folded multiplies (the 128-bit product's halves xored, as foldhash
    /// and wyhash do). An IPv4 key's two compact words take one; an IPv6
    /// key's two addresses are mixed independently, then with the tail,
    /// three in all, two of them in parallel.
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        if !self.is_v6() {
            return hash_v4(self.compact(), seed);
        }
        let w = &self.w;
        let a = fold(w[0] ^ seed ^ HASH_K[0], w[1] ^ HASH_K[1]);
        let b = fold(w[2] ^ seed.rotate_left(21) ^ HASH_K[2], w[3] ^ HASH_K[3]);
        fold(w[4] ^ seed.rotate_left(42) ^ HASH_K[4], a ^ b.rotate_left(32) ^ HASH_K[5])
    }
}

/// A key as a connection entry stores it: IPv4 keys whole in two words
/// (both addresses in one, then the tail), IPv6 keys as the tail with the
/// addresses kept beside the entry ([`Key::v6_addrs`]).
impl Key {
    pub(crate) fn is_v6(&self) -> bool {
        self.w[4] & V6_BIT != 0
    }

    /// The entry's two words: an IPv4 key's low and high addresses in one
    /// and its tail (ports, zone, protocol, family); an IPv6 key's 0 and
    /// tail.
    #[inline]
    pub(crate) fn compact(&self) -> [u64; 2] {
        if self.is_v6() { [0, self.w[4]] } else { [(self.w[1] & 0xffff_ffff) << 32 | (self.w[3] & 0xffff_ffff), self.w[4]] }
    }

    /// The address words of an IPv6 key (what [`Key::compact`] leaves out).
    pub(crate) fn v6_addrs(&self) -> [u64; 4] {
        [self.w[0], self.w[1], self.w[2], self.w[3]]
    }

    /// The key [`Key::compact`] came from, with its IPv6 addresses.
    pub(crate) fn from_compact(c: [u64; 2], v6: &[u64; 4]) -> Key {
        if c[1] & V6_BIT != 0 {
            Key { w: [v6[0], v6[1], v6[2], v6[3], c[1]] }
        } else {
            Key { w: [0, V4_MAPPED | c[0] >> 32, 0, V4_MAPPED | (c[0] & 0xffff_ffff), c[1]] }
        }
    }
}

/// A key's tail word: the low and high endpoints' ports, the zone, the
/// protocol and the family ([`tail_zone`], [`tail_proto`], [`Key::parts`]
/// read it back).
fn pack_tail(lo_port: u16, hi_port: u16, t: &Tuple, v6: bool) -> u64 {
    u64::from(lo_port) | u64::from(hi_port) << 16 | u64::from(t.zone) << 32 | u64::from(t.proto) << 48 | if v6 { V6_BIT } else { 0 }
}

/// The zone in a key's tail word.
#[expect(clippy::cast_possible_truncation, reason = "the zone's 16 bits of the tail word")]
pub(crate) fn tail_zone(tail: u64) -> Zone {
    (tail >> 32) as u16
}

/// The hash's constants (digits of pi, as in Blowfish).
const HASH_K: [u64; 6] = [
    0x243f_6a88_85a3_08d3,
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
];

/// [`Key::hash`] of an IPv4 key, from its two compact words: one multiply.
#[inline]
pub(crate) fn hash_v4(c: [u64; 2], seed: u64) -> u64 {
    fold(c[0] ^ seed ^ HASH_K[0], c[1] ^ seed.rotate_left(21) ^ HASH_K[1])
}

/// Whether a key's compact words ([`Key::compact`]) are an IPv6 key's.
pub(crate) fn compact_is_v6(c: [u64; 2]) -> bool {
    c[1] & V6_BIT != 0
}

/// The protocol in a key's tail word.
#[expect(clippy::cast_possible_truncation, reason = "the protocol's 8 bits of the tail word")]
pub(crate) fn tail_proto(tail: u64) -> u8 {
    (tail >> 48) as u8
}

/// The 128-bit product of `a` and `b`, its halves xored: the mixing step
/// of this crate's hashes (and the datapath's flow cache's).
#[expect(clippy::cast_possible_truncation, reason = "taking the low half of the product")]
#[inline]
pub fn fold(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    (p as u64) ^ ((p >> 64) as u64)
}

/// The side of a packet relative to a stored flow: `orig_is_lo` says whether
/// the flow's opener is the key's low endpoint.
pub fn side(src_is_lo: bool, orig_is_lo: bool) -> Side {
    if src_is_lo == orig_is_lo { Side::Orig } else { Side::Reply }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(src: &str, sport: u16, dst: &str, dport: u16) -> Tuple {
        Tuple { zone: 3, proto: 6, src: src.parse().unwrap(), dst: dst.parse().unwrap(), sport, dport }
    }

    #[test]
    fn both_directions_of_a_flow_have_one_key() {
        let a = t("10.0.0.1", 40000, "192.0.2.9", 443);
        let (k1, lo1) = Key::of(&a);
        let (k2, lo2) = Key::of(&a.reversed());
        assert_eq!(k1, k2);
        assert_ne!(lo1, lo2);
        assert_eq!(side(lo1, lo1), Side::Orig);
        assert_eq!(side(lo2, lo1), Side::Reply);
        assert_eq!(k1.hash(7), k2.hash(7));
    }

    #[test]
    fn zone_protocol_ports_and_family_tell_flows_apart() {
        let a = t("10.0.0.1", 40000, "192.0.2.9", 443);
        let base = Key::of(&a).0;
        assert_ne!(base, Key::of(&Tuple { zone: 4, ..a }).0);
        assert_ne!(base, Key::of(&Tuple { proto: 17, ..a }).0);
        assert_ne!(base, Key::of(&Tuple { sport: 40001, ..a }).0);
        let mapped = t("::ffff:10.0.0.1", 40000, "::ffff:192.0.2.9", 443);
        assert_ne!(base, Key::of(&mapped).0, "IPv4 and v4-mapped IPv6 are different flows");
    }

    #[test]
    fn the_low_endpoint_is_the_one_with_the_lower_octets_then_port() {
        // The order the table relies on: octets first (v4 as v4-mapped),
        // then the port, as the byte-wise comparison had it.
        let (_, lo) = Key::of(&t("10.0.0.2", 1, "10.0.0.10", 1));
        assert!(lo);
        let (_, lo) = Key::of(&t("10.0.0.2", 9, "10.0.0.2", 8));
        assert!(!lo);
        let (k, lo) = Key::of(&t("2001:db8::1", 5, "::ffff:10.0.0.1", 5));
        assert!(!lo, "::ffff:10.0.0.1 sorts below 2001:db8::1");
        assert_eq!(k.parts().0, "::ffff:10.0.0.1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    }

    #[test]
    fn the_hash_spreads_sequential_flows_over_the_index() {
        // The table's index: 2^17 slots for 2^16 flows, position = the low
        // bits. Flows that differ by one in an address or a port, as a
        // host's flows do, must land as randomly placed keys would: about
        // (1 - e^-0.5) of the slots distinct.
        let slots = 1u64 << 17;
        for seed in [0, 0x5eed, u64::MAX] {
            let mut seen = std::collections::HashSet::new();
            for i in 0..1u32 << 16 {
                let f = Tuple {
                    zone: (i % 64) as u16,
                    proto: 17,
                    src: IpAddr::V4((0x0a00_0000 | (i >> 6)).into()),
                    dst: IpAddr::V4([192, 0, 2, 9].into()),
                    sport: 10_000 + (i % 50_000) as u16,
                    dport: 53,
                };
                seen.insert(Key::of(&f).0.hash(seed) & (slots - 1));
            }
            let expected = (1.0 - (-0.5f64).exp()) * slots as f64;
            assert!(seen.len() as f64 > 0.98 * expected, "seed {seed:#x}: {} distinct positions, {expected:.0} expected", seen.len());
        }
    }

    #[test]
    fn the_seed_changes_every_position() {
        let flows: Vec<Key> = (0..1000u16).map(|p| Key::of(&t("10.0.0.1", p, "192.0.2.9", 443)).0).collect();
        let moved = flows.iter().filter(|k| k.hash(1) & 0xffff != k.hash(2) & 0xffff).count();
        assert!(moved > 990, "only {moved} of 1000 positions depend on the seed");
    }

    #[test]
    fn the_compact_form_gives_the_key_back() {
        for (a, b) in [("10.0.0.1", "192.0.2.9"), ("255.255.255.255", "0.0.0.0"), ("2001:db8::1", "fe80::2"), ("::ffff:10.0.0.1", "::")] {
            let (k, _) = Key::of(&t(a, 40000, b, 443));
            let v6 = if k.is_v6() { k.v6_addrs() } else { [0; 4] };
            assert_eq!(Key::from_compact(k.compact(), &v6), k, "{a} {b}");
        }
        let (v4, _) = Key::of(&t("10.0.0.1", 1, "10.0.0.2", 2));
        let (other, _) = Key::of(&t("10.0.0.2", 1, "10.0.0.1", 2));
        assert_ne!(v4.compact(), other.compact(), "both addresses are in the compact word");
    }

    proptest::proptest! {
        /// The IPv4 shortcut gives the general case's key and side.
        #[test]
        fn ipv4_keys_are_the_general_keys(src: u32, dst in proptest::prop_oneof![proptest::num::u32::ANY, 0u32..4],
            sport: u16, dport in proptest::prop_oneof![proptest::num::u16::ANY, 0u16..4], zone: u16, proto: u8, same: bool) {
            // `same`: both ends share the address, so the ports decide.
            let dst = if same { src } else { dst };
            let t = Tuple { zone, proto, src: IpAddr::V4(src.into()), dst: IpAddr::V4(dst.into()), sport, dport };
            proptest::prop_assert_eq!(Key::of(&t), Key::of_any(&t));
            proptest::prop_assert_eq!(Key::of(&t.reversed()), Key::of_any(&t.reversed()));
        }
    }

    #[test]
    fn a_key_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }
}
