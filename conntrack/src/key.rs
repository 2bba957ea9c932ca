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

/// The normalised key of a flow: the lower (address, port) endpoint first.
/// 40 bytes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Key {
    lo: [u8; 16],
    hi: [u8; 16],
    lo_port: u16,
    hi_port: u16,
    zone: Zone,
    proto: u8,
    v6: bool,
}

impl Key {
    /// The key of `t`, and whether `t`'s source is the key's low endpoint.
    pub fn of(t: &Tuple) -> (Key, bool) {
        let s = (bits(t.src), t.sport);
        let d = (bits(t.dst), t.dport);
        let src_is_lo = s <= d;
        let (lo, hi) = if src_is_lo { (s, d) } else { (d, s) };
        let key = Key {
            lo: lo.0.to_be_bytes(),
            hi: hi.0.to_be_bytes(),
            lo_port: lo.1,
            hi_port: hi.1,
            zone: t.zone,
            proto: t.proto,
            v6: t.src.is_ipv6(),
        };
        (key, src_is_lo)
    }

    /// (low address, high address, low port, high port, zone, protocol, is IPv6).
    pub fn parts(&self) -> ([u8; 16], [u8; 16], u16, u16, Zone, u8, bool) {
        (self.lo, self.hi, self.lo_port, self.hi_port, self.zone, self.proto, self.v6)
    }

    pub fn zone(&self) -> Zone {
        self.zone
    }

    pub fn proto(&self) -> u8 {
        self.proto
    }

    /// A 64-bit hash keyed by `seed`, so that flows chosen by an attacker
    /// cannot be aimed at one bucket without knowing the seed.
    pub fn hash(&self, seed: u64) -> u64 {
        let w = |b: &[u8; 16], i: usize| u64::from_le_bytes(b[i..i + 8].try_into().expect("8 of 16 bytes"));
        let tail = u64::from(self.lo_port) | u64::from(self.hi_port) << 16 | u64::from(self.zone) << 32 | u64::from(self.proto) << 48;
        let mut h = seed ^ 0x9e37_79b9_7f4a_7c15;
        for x in [w(&self.lo, 0), w(&self.lo, 8), w(&self.hi, 0), w(&self.hi, 8), tail] {
            h = (h ^ x).wrapping_mul(0xff51_afd7_ed55_8ccd);
            h ^= h >> 32;
        }
        h
    }
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
    fn a_key_is_40_bytes() {
        assert_eq!(std::mem::size_of::<Key>(), 40);
    }
}
