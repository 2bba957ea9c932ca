//! The flow cache: each poll loop remembers how the last frame of a flow
//! went through the pipeline, so that the next frame of the same flow goes
//! straight to its connection entries instead of through the decision.
//!
//! # Design
//! - **Key**: everything the pipeline's decision reads of an untagged IPv4
//!   TCP, UDP or ICMP echo (request or reply) frame with a 20-byte header
//!   that is not a fragment (read by [`crate::packet::parse::flow_v4`], which
//!   `parse` agrees with), apart from connection state: where the frame
//!   came from (a port or the uplink), both MACs (forwarding,
//!   anti-spoofing), both addresses, the protocol and both ports (for an
//!   echo, its identifier, and its type and code). The rest of such a frame
//!   (TTL, identification, checksums, TCP flags, sequence number, echo
//!   sequence and lengths) changes neither the stages it passes nor where
//!   it goes; the TCP fields and lengths are what the connection update
//!   reads, and the fast path gives them to it. TCP segments without ACK
//!   (mostly first SYNs) are left to the pipeline: they have no route to
//!   take. ICMP errors (judged by the header they carry) and other ICMP
//!   types (judged without state) never pass as established, so they are
//!   not read as this shape at all.
//! - **Route**: the stages the frame passed (the sender's egress and the
//!   receiver's ingress for VM to VM, else one), each as its port, direction
//!   and connection entry ([`EntryAt`]), and where the frame went (a port or
//!   the uplink). A route is recorded only when the pipeline passed the
//!   frame as established at every stage, by conntrack: not as
//!   infrastructure, not as a fragment, not handed to another loop.
//! - **Validity**: a slot holds the id of the plan it was recorded under
//!   (its low half; the cache forgets everything when the high half moves
//!   on), and only that plan's lookups match it, so a reload (a new plan)
//!   starts from an empty cache in effect. Each stage's entry is checked by
//!   [`sgswitch_conntrack::Table::ready_at`] (still holding the flow the
//!   recorded frame reached, by the entry's epoch; live, not past its
//!   deadline, admitted by the current policy generation) before any stage
//!   is updated; if one is not ready, the frame is decided from scratch as
//!   if there were no cache. The key fixes the flow and its direction at
//!   every stage, which is what lets the check skip the connection key.
//! - **Memory**: a fixed number of 64-byte slots, allocated once. A key may
//!   sit in two slots (from its hash's low and high bits; both are warmed
//!   together); a new route takes the slot that holds its key, or one left
//!   by another plan, or else the one recorded longer ago. Two choices keep
//!   flows that share a slot from pushing each other out in turn, as they
//!   would in a direct-mapped cache when they take turns. Nothing on the
//!   per-packet path allocates.

use std::net::{IpAddr, Ipv4Addr};

use sgswitch_config::Direction;

use sgswitch_conntrack::key::fold;
use sgswitch_conntrack::{EntryAt, PacketInfo, Tuple, Zone, mem};

use super::parse::{self, FlowV4, MacAddr};
use crate::datapath::plan::{PortIdx, mac_key};
use crate::datapath::{Source, To};

/// Slots of a pipeline's flow cache (8 MiB): at 65,536 about 6% of the
/// established frames of 42,334 flows missed in steady state (the pipeline
/// benchmark's 1,000-rule case), at 131,072 almost none.
pub const SLOTS: usize = 1 << 17;

/// The source tag of frames from the uplink (ports are below `MAX_PORTS`).
const UPLINK: u16 = u16::MAX;

/// A frame's cache key: four words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowKey {
    w: [u64; 4],
}

impl FlowKey {
    /// The key of a frame of the cache's shape from `src`; `None` for
    /// frames handed over by another loop.
    #[inline]
    pub fn of(src: Source, f: &FlowV4) -> Option<FlowKey> {
        let from = match src {
            Source::Port(p) => p,
            Source::Uplink => UPLINK,
            Source::Peer(_) => return None,
        };
        // An ICMP echo's ports are its identifier twice: the second place
        // holds its type and code instead, which the policy reads.
        let second = if f.proto == parse::ICMP { u16::from_be_bytes([f.icmp_type, f.icmp_code]) } else { f.dport };
        Some(FlowKey {
            w: [
                u64::from(f.saddr.to_bits()) << 32 | u64::from(f.daddr.to_bits()),
                u64::from(f.sport) << 48 | u64::from(second) << 32 | u64::from(f.proto) << 16 | u64::from(from),
                mac_key(&f.dst),
                mac_key(&f.src),
            ],
        })
    }

    /// What conntrack reads of a frame beside its tuple, which
    /// [`FlowKey::flow`] takes back with the key.
    #[inline]
    pub fn info(f: &FlowV4) -> PacketInfo {
        PacketInfo { tcp_flags: f.tcp_flags, tcp_seq: f.tcp_seq, payload_len: f.payload_len, wire_len: f.len }
    }

    /// The frame this key was made of, as [`parse::flow_v4`] read it, given
    /// [`FlowKey::info`] of it: the key holds every other field, so a frame
    /// that misses the cache is not read twice. (An echo's key holds its
    /// type and code where its destination port would be; its ports are
    /// its identifier twice.)
    #[inline]
    pub fn flow(&self, info: &PacketInfo) -> FlowV4 {
        let mac = |k: u64| -> MacAddr {
            let [_, _, m @ ..] = k.to_be_bytes();
            m
        };
        let ([saddr, daddr], sport, second, proto) = self.fields();
        let icmp = proto == parse::ICMP;
        let [icmp_type, icmp_code] = if icmp { second.to_be_bytes() } else { [0, 0] };
        FlowV4 {
            dst: mac(self.w[2]),
            src: mac(self.w[3]),
            saddr,
            daddr,
            proto,
            sport,
            dport: if icmp { sport } else { second },
            icmp_type,
            icmp_code,
            tcp_flags: info.tcp_flags,
            tcp_seq: info.tcp_seq,
            payload_len: info.payload_len,
            len: info.wire_len,
        }
    }

    /// The conntrack tuple of the frame in `zone`, as the pipeline makes
    /// it of the frame [`FlowKey::flow`] gives back.
    #[inline]
    pub fn tuple(&self, zone: Zone) -> Tuple {
        let ([src, dst], sport, second, proto) = self.fields();
        Tuple { zone, proto, src: IpAddr::V4(src), dst: IpAddr::V4(dst), sport, dport: if proto == parse::ICMP { sport } else { second } }
    }

    /// The addresses (source, destination), the source port, the second
    /// place (the destination port, or an echo's type and code) and the
    /// protocol, from where [`FlowKey::of`] put them.
    #[inline]
    #[expect(clippy::cast_possible_truncation, reason = "each field is taken from where `FlowKey::of` put it")]
    fn fields(&self) -> ([Ipv4Addr; 2], u16, u16, u8) {
        let [addrs, rest, ..] = self.w;
        // `rest`: source port, second place, a zero byte, protocol, source.
        (
            [Ipv4Addr::from_bits((addrs >> 32) as u32), Ipv4Addr::from_bits(addrs as u32)],
            (rest >> 48) as u16,
            (rest >> 32) as u16,
            (rest >> 16) as u8,
        )
    }

    /// Whether its frames are UDP (what the XDP fast path takes).
    #[inline]
    pub fn is_udp(&self) -> bool {
        self.fields().3 == parse::UDP
    }

    /// The destination MAC as the number its six bytes spell (how the plan
    /// keys its ports by MAC).
    #[inline]
    pub fn dst_key(&self) -> u64 {
        self.w[2]
    }

    /// A 64-bit hash keyed by `seed` (folded multiplies, as the
    /// connection table's key hash).
    #[inline]
    pub fn hash(&self, seed: u64) -> u64 {
        let w = &self.w;
        let a = fold(w[0] ^ seed ^ 0x243f_6a88_85a3_08d3, w[1] ^ 0x1319_8a2e_0370_7344);
        fold(a ^ w[2], w[3].rotate_left(24) ^ seed.rotate_left(32) ^ 0xa409_3822_299f_31d0)
    }
}

/// How the recorded frame went: its stages and where it went.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Route {
    /// Each stage's connection entry.
    pub at: [EntryAt; 2],
    /// Each stage's port.
    pub ports: [PortIdx; 2],
    /// Bit `i` set: stage `i` is an egress stage.
    egress: u8,
    /// 1 or 2 (0: an empty slot).
    pub stages: u8,
    /// The port the frame went to, or [`UPLINK`].
    to: u16,
}

impl Route {
    /// Stage `i`'s direction.
    pub fn direction(&self, i: usize) -> Direction {
        if self.egress & (1 << i) != 0 { Direction::Egress } else { Direction::Ingress }
    }

    /// Where the frame goes.
    pub fn to(&self) -> To {
        if self.to == UPLINK { To::Uplink } else { To::Port(self.to) }
    }
}

/// Records a frame's stages as the pipeline runs them, for
/// [`FlowCache::insert`].
#[derive(Clone, Copy, Debug, Default)]
pub struct Trace {
    /// Stages run.
    run: u8,
    /// Stages that passed as established, by conntrack, in order.
    route: Route,
}

impl Trace {
    /// A stage starts.
    #[inline]
    pub fn stage(&mut self) {
        self.run = self.run.saturating_add(1);
    }

    /// The stage that started last passed as established on the entry `at`.
    #[inline]
    pub fn established(&mut self, port: PortIdx, direction: Direction, at: EntryAt) {
        let r = &mut self.route;
        let i = usize::from(r.stages);
        if i < 2 && usize::from(self.run) == i + 1 {
            r.at[i] = at;
            r.ports[i] = port;
            if direction == Direction::Egress {
                r.egress |= 1 << i;
            }
            r.stages += 1;
        }
    }

    /// The route, if every stage that ran passed as established and the
    /// frame went to `to`.
    fn route(&self, to: To) -> Option<Route> {
        let to = match to {
            To::Port(q) => q,
            To::Uplink => UPLINK,
            To::Flood { .. } => return None,
        };
        (self.route.stages > 0 && self.run == self.route.stages).then_some(Route { to, ..self.route })
    }
}

/// One slot: a key, the plan it was recorded under, and the route.
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(64))]
struct Slot {
    key: FlowKey,
    /// The low half of the plan's id (the cache holds routes of plans of
    /// one high half only: [`FlowCache::adopt`]); 0 with `route.stages` 0:
    /// empty.
    plan: u32,
    /// When it was recorded, in inserts (wrapping).
    stamp: u32,
    route: Route,
}

/// The half of a plan id a slot keeps.
#[expect(clippy::cast_possible_truncation, reason = "the low half, by design")]
fn low(plan: u64) -> u32 {
    plan as u32
}

/// A poll loop's flow cache (see the module documentation).
#[derive(Debug)]
pub struct FlowCache {
    slots: Vec<Slot>,
    mask: usize,
    seed: u64,
    /// Routes recorded so far (wrapping): the clock of `Slot::stamp`.
    inserts: u32,
    /// The high half of the plan ids the slots were recorded under.
    high: u32,
}

impl FlowCache {
    /// A cache of `slots` slots (rounded up to a power of two, at least 2).
    pub fn new(slots: usize, seed: u64) -> FlowCache {
        let n = slots.max(2).next_power_of_two();
        FlowCache { slots: mem::filled(n, Slot::default()), mask: n - 1, seed, inserts: 0, high: 0 }
    }

    /// The hash of `key` in this cache.
    #[inline]
    pub fn hash(&self, key: &FlowKey) -> u64 {
        key.hash(self.seed)
    }

    /// The two slots a key of hash `h` may sit in: from its low and its
    /// high bits, never the same.
    #[expect(clippy::cast_possible_truncation, reason = "a slot is some bits of the hash")]
    #[inline]
    fn places(&self, h: u64) -> [usize; 2] {
        let a = (h as usize) & self.mask;
        let b = ((h >> 32) as usize) & self.mask;
        [a, if a == b { a ^ 1 } else { b }]
    }

    /// Brings `h`'s slots into the cache, ahead of [`FlowCache::get`].
    #[inline]
    pub fn warm(&self, h: u64) {
        for i in self.places(h) {
            mem::prefetch(&self.slots[i]);
        }
    }

    /// Makes the cache answer for plan `plan` (once per batch, before any
    /// lookup): slots keep only the low half of a plan's id, so when the
    /// high half moves on (once in 2^32 plans) every route is forgotten,
    /// and a slot's plan matches only the plan it was recorded under.
    #[inline]
    pub fn adopt(&mut self, plan: u64) {
        let high = (plan >> 32) as u32;
        if high != self.high {
            self.clear();
            self.high = high;
        }
    }

    /// Whether `s` holds `key`'s route under plan `plan` (a slot's plan is
    /// 0 only when it is empty, or for plan ids that end in 32 zero bits;
    /// an empty slot has no stages).
    #[inline]
    fn holds(s: &Slot, key: &FlowKey, plan: u64) -> bool {
        s.plan == low(plan) && s.route.stages != 0 && s.key == *key
    }

    /// The route recorded for `key` (hash `h`) under plan `plan`.
    #[inline]
    pub fn get(&self, key: &FlowKey, h: u64, plan: u64) -> Option<Route> {
        self.places(h).into_iter().map(|i| &self.slots[i]).find(|s| Self::holds(s, key, plan)).map(|s| s.route)
    }

    /// Records the route `trace` saw for `key` under plan `plan`, if the
    /// frame passed every stage as established and went to `to`: in the
    /// slot that holds the key already, or one of another plan (or empty),
    /// or else the one recorded longer ago. Returns whether it did.
    #[inline]
    pub fn insert(&mut self, key: FlowKey, h: u64, plan: u64, trace: &Trace, to: To) -> bool {
        let Some(route) = trace.route(to) else { return false };
        let [a, b] = self.places(h);
        let free = |s: &Slot| s.plan != low(plan) || s.route.stages == 0 || s.key == key;
        let at = if free(&self.slots[a]) {
            a
        } else if free(&self.slots[b]) {
            b
        } else {
            let age = |s: &Slot| self.inserts.wrapping_sub(s.stamp);
            if age(&self.slots[a]) >= age(&self.slots[b]) { a } else { b }
        };
        self.inserts = self.inserts.wrapping_add(1);
        self.slots[at] = Slot { key, plan: low(plan), stamp: self.inserts, route };
        true
    }

    /// Forgets every route.
    pub fn clear(&mut self) {
        self.slots.fill(Slot::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    /// A TCP ACK from 10.0.0.1:40000 to 192.0.2.9:443, as `flow_v4` reads it.
    fn ack() -> FlowV4 {
        FlowV4 {
            dst: [2, 0, 0, 0, 0, 1],
            src: [2, 0, 0, 0, 0, 2],
            saddr: Ipv4Addr::new(10, 0, 0, 1),
            daddr: Ipv4Addr::new(192, 0, 2, 9),
            proto: parse::TCP,
            sport: 40000,
            dport: 443,
            tcp_flags: 0x10,
            tcp_seq: 1,
            icmp_type: 0,
            icmp_code: 0,
            payload_len: 0,
            len: 60,
        }
    }

    #[test]
    fn a_key_tells_where_its_frame_came_from() {
        let f = ack();
        let k = FlowKey::of(Source::Uplink, &f).expect("from the uplink");
        assert_ne!(Some(k), FlowKey::of(Source::Port(0), &f), "the source is part of the key");
        assert_eq!(FlowKey::of(Source::Peer(0), &f), None, "handed-over frames are not cached");
    }

    #[test]
    fn an_echo_key_holds_its_type_and_code() {
        // An echo request between the same addresses, identifier 77.
        let request = FlowV4 { proto: parse::ICMP, sport: 77, dport: 77, tcp_flags: 0, tcp_seq: 0, icmp_type: 8, ..ack() };
        let key = |f| FlowKey::of(Source::Uplink, &f).expect("from the uplink");
        let reply = FlowV4 { icmp_type: 0, ..request };
        let coded = FlowV4 { icmp_code: 1, ..request };
        let other_id = FlowV4 { sport: 78, dport: 78, ..request };
        assert_ne!(key(request), key(reply), "the type is part of the key");
        assert_ne!(key(request), key(coded), "the code is part of the key");
        assert_ne!(key(request), key(other_id), "the identifier is part of the key");
    }

    proptest::proptest! {
        /// Any frame `flow_v4` reads comes back whole from its key and its
        /// conntrack view, from every source: a frame that misses the
        /// cache is decided on exactly what the reader read.
        #[test]
        fn a_key_and_its_info_give_back_the_frame_read(
            proto in proptest::sample::select(vec![parse::TCP, parse::UDP, parse::ICMP]),
            macs in proptest::array::uniform12(proptest::num::u8::ANY),
            addrs in proptest::array::uniform2(proptest::num::u32::ANY),
            ports in proptest::array::uniform2(proptest::num::u16::ANY),
            tcp in (proptest::num::u8::ANY, proptest::num::u32::ANY),
            icmp in (proptest::sample::select(vec![0u8, 8]), proptest::num::u8::ANY),
            payload_len in 0u32..1500,
            len in 42u32..1600,
            from in proptest::option::of(0u16..1024),
        ) {
            // The fields as the reader fills them for each protocol.
            let (tcp_flags, tcp_seq) = if proto == parse::TCP { tcp } else { (0, 0) };
            let (icmp_type, icmp_code) = if proto == parse::ICMP { icmp } else { (0, 0) };
            let dport = if proto == parse::ICMP { ports[0] } else { ports[1] };
            let x = FlowV4 {
                dst: std::array::from_fn(|i| macs[i]),
                src: std::array::from_fn(|i| macs[6 + i]),
                saddr: Ipv4Addr::from_bits(addrs[0]),
                daddr: Ipv4Addr::from_bits(addrs[1]),
                proto,
                sport: ports[0],
                dport,
                tcp_flags,
                tcp_seq,
                icmp_type,
                icmp_code,
                payload_len: if proto == parse::ICMP { 0 } else { payload_len },
                len,
            };
            let src = from.map_or(Source::Uplink, Source::Port);
            let key = FlowKey::of(src, &x).expect("not handed over");
            proptest::prop_assert_eq!(key.flow(&FlowKey::info(&x)), x);
            proptest::prop_assert_eq!(key.tuple(9), crate::packet::tuple(&x.ip(), 9));
            proptest::prop_assert_eq!(key.dst_key(), mac_key(&x.dst));
        }
    }

    #[test]
    fn a_route_is_taken_only_under_the_plan_it_was_recorded_under() {
        let mut c = FlowCache::new(4, 1);
        let key = FlowKey { w: [1, 2, 3, 4] };
        let h = c.hash(&key);
        let mut t = Trace::default();
        t.stage();
        t.established(3, Direction::Ingress, EntryAt::default());
        let plan = 7;
        c.adopt(plan);
        assert!(c.get(&key, h, plan).is_none(), "empty");
        assert!(c.insert(key, h, plan, &t, To::Port(3)));
        assert_eq!(c.get(&key, h, plan).map(|r| r.to()), Some(To::Port(3)));
        assert!(c.get(&key, h, plan + 1).is_none(), "another plan");
        // A plan whose id has the recording plan's low half.
        let wrapped = plan + (1 << 32);
        c.adopt(wrapped);
        assert!(c.get(&key, h, wrapped).is_none(), "recorded under another plan");
        c.adopt(plan);
        assert!(c.get(&key, h, plan).is_none(), "forgotten when the high half moved");
    }

    #[test]
    fn a_slot_is_one_cache_line() {
        assert_eq!(size_of::<Slot>(), 64);
    }

    #[test]
    fn a_route_is_recorded_only_when_every_stage_passed_as_established() {
        let at = EntryAt::default();
        let mut one = Trace::default();
        one.stage();
        one.established(3, Direction::Ingress, at);
        let r = one.route(To::Port(3)).expect("one stage, established");
        assert_eq!((r.stages, r.ports[0], r.direction(0), r.to()), (1, 3, Direction::Ingress, To::Port(3)));
        assert!(one.route(To::Flood { except: None, uplink: true }).is_none(), "never a flood");

        // VM to VM: the sender's egress passed otherwise (infrastructure),
        // the receiver's ingress as established.
        let mut half = Trace::default();
        half.stage();
        half.stage();
        half.established(4, Direction::Ingress, at);
        assert!(half.route(To::Port(4)).is_none());

        let mut both = Trace::default();
        both.stage();
        both.established(2, Direction::Egress, at);
        both.stage();
        both.established(4, Direction::Ingress, at);
        let r = both.route(To::Port(4)).expect("both established");
        assert_eq!((r.stages, r.ports, r.direction(0), r.direction(1)), (2, [2, 4], Direction::Egress, Direction::Ingress));

        let mut none = Trace::default();
        none.stage();
        assert!(none.route(To::Uplink).is_none(), "a stage that did not pass as established");
    }
}
