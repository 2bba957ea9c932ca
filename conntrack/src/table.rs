//! The connection table: preallocated, bounded, one owner per set of zones.
//!
//! # Design
//! - **Entries** live in a slab (`Vec<Entry>`) allocated once at its full
//!   capacity, one cache line each with the flow's counters; IPv6 keys'
//!   addresses and the wheel links live in parallel arrays; free entries are
//!   chained through their links.
//! - **Index** (`index`): entry numbers in groups of eight slots, one
//!   cache line each, with a one-byte tag of the hash per slot; at most half
//!   the slots used; deletion shifts followers back, so there are no
//!   tombstones. A lookup compares a group's eight tags at once, then the
//!   key in the entry. A batch guesses every packet's entry from its home
//!   group while warming, and tracking takes the guess when the entry is
//!   live and holds the packet's key, without searching the index again.
//! - **Expiry**: a timer wheel of [`WHEEL_SLOTS`] one-second slots, each a
//!   doubly linked list. An entry sits in the slot of the second its deadline
//!   (last seen + the timeout of its zone and state) falls in, as computed
//!   when it was placed, so never after its deadline. The per-packet path
//!   only stamps `last_seen`; it re-places an entry only when its state
//!   class changes to a shorter timeout (ESTABLISHED -> FIN_WAIT), not to a
//!   longer one (a UDP flow's first reply, a completed handshake), which
//!   would touch three entries' wheel links per change. [`Table::expire`]
//!   walks past seconds slot by slot: an expired entry is freed; one seen
//!   since it was placed, or moved to a longer timeout (or placed a wheel
//!   turn ahead), moves to the slot of its current deadline. So an entry
//!   is freed within a second of its deadline, each live entry is looked at
//!   about once per timeout, and every call does a bounded amount of work.
//!   Lookups never use an entry past its deadline, swept or not.
//! - **Capacity**: a global bound and a per-zone bound. A new flow that finds
//!   either full may evict the oldest *unassured* entry (half-open TCP,
//!   unreplied UDP/ICMP/other) of its own zone, found within
//!   [`EVICT_SCAN`] list heads (entries met before their deadline's slot
//!   are moved there on the way, as the sweep does); assured entries are
//!   never evicted, and a zone never evicts another zone's entries.
//!   Otherwise the new flow is refused ([`Outcome::Full`]).
//! - **Policy generation**: every entry records the generation of the policy
//!   that admitted it. With `revalidate`, the first packet that meets an entry
//!   of an older generation re-judges the flow's original first packet through
//!   the caller's closure; denied, the entry is removed and the packet judged
//!   as new. No table-wide scan happens on reload.
//!
//! # Invariants
//! `len() <= capacity`, each zone's count `<= per_zone_capacity`; the index
//! is at most half full; every live entry is in exactly one expiry list and
//! one index slot. Nothing on the per-packet path allocates.

use std::net::IpAddr;

use crate::index::Index;
use crate::key::{self, Key, Tuple, Zone};
use crate::mem;
use crate::tcp::{self, Segment, Side, Step, TcpState};

/// Milliseconds on the caller's clock (capture timestamps in `replay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Now(pub u64);

impl Now {
    fn ms32(self) -> u32 {
        // Wrapping on purpose: ages are computed with wrapping_sub, correct
        // for ages under 2^31 ms (24 days), far above any timeout.
        u32::try_from(self.0 & 0xffff_ffff).expect("masked to 32 bits")
    }
}

/// Timeouts in seconds (the `[conntrack.timeouts]` of `host.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Timeouts {
    pub tcp_syn: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
    pub udp_stream: u32,
    pub icmp: u32,
    pub other: u32,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { tcp_syn: 120, tcp_established: 910, tcp_closing: 120, udp: 30, udp_stream: 180, icmp: 30, other: 600 }
    }
}

impl Timeouts {
    /// Milliseconds per [`Class`], indexed by the class: what the
    /// per-packet expiry check reads.
    fn ms_by_class(&self) -> [u32; CLASSES] {
        [self.tcp_syn, self.tcp_established, self.tcp_closing, self.udp, self.udp_stream, self.icmp, self.other]
            .map(|s| s.saturating_mul(1000))
    }
}

/// Table settings. `capacity` and `seed` are fixed at construction; the
/// others may change while the table runs ([`Table::reconfigure`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub capacity: u32,
    pub per_zone_capacity: u32,
    /// Timeouts per zone; zones beyond the list use `default_timeouts`.
    pub zone_timeouts: Vec<Timeouts>,
    pub default_timeouts: Timeouts,
    pub tcp_strict: bool,
    /// `on_policy_change = "revalidate"`; false is `keep`.
    pub revalidate: bool,
    /// Hash seed; pass a random value so flows cannot be aimed at one bucket.
    pub seed: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            capacity: 1 << 20,
            per_zone_capacity: 1 << 16,
            zone_timeouts: Vec::new(),
            default_timeouts: Timeouts::default(),
            tcp_strict: false,
            revalidate: true,
            seed: 0x5eed,
        }
    }
}

/// Timeout classes, one expiry list each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Class {
    TcpSyn,
    TcpEstablished,
    TcpClosing,
    Udp,
    UdpStream,
    Icmp,
    Other,
}

/// How many timeout classes there are.
const CLASSES: usize = 7;

/// How many entries a new flow looks at (soonest deadline first) to find an
/// expired entry or an unassured entry of its own zone to evict.
pub const EVICT_SCAN: usize = 64;

/// How many entries found before their deadline's slot a new flow's
/// eviction scan moves to it, besides the [`EVICT_SCAN`] it looks at.
pub const EVICT_MOVES: usize = 4 * EVICT_SCAN;

/// Slots of the timer wheel, one second each.
pub const WHEEL_SLOTS: usize = 4096;

/// Empty slots `expire` may step over in one call.
pub const MAX_EMPTY_SLOTS: usize = 64;

const NIL: u32 = u32::MAX;

/// The protocol state of an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    Tcp(TcpState),
    /// UDP, ICMP echo and other protocols: whether the reply side was seen.
    Pseudo {
        replied: bool,
    },
    /// A TCP flow a policy change revoked (revalidation denied it). It is
    /// kept as a marker while its packets keep coming, so that neither side
    /// can pick it up mid-stream again; only a new SYN starts the 5-tuple
    /// afresh. It lives the `tcp_closing` timeout after its last packet.
    Revoked,
}

/// One tracked flow: everything a packet of the flow reads and writes, in
/// one 64-byte cache line (63 bytes used). The key is kept compact
/// ([`Key::compact`]): an IPv4 key whole, an IPv6 key's addresses in a
/// parallel array. The wheel linkage lives in another ([`Link`]): only
/// expiry and state-class changes touch it.
#[derive(Clone, Copy, Debug)]
#[repr(align(64))]
struct Entry {
    key: [u64; 2],
    last_seen: u32,
    generation: u32,
    /// Per side (orig, reply): the sequence number that side sends next.
    next_seq: [u32; 2],
    /// Per side (orig, reply).
    packets: [u32; 2],
    bytes: [u64; 2],
    state: State,
    class: Class,
    /// [`LIVE`], [`ORIG_IS_LO`] (the opener is the key's low endpoint) and
    /// [`CLOSER_IS_REPLY`] (the reply side sent the first FIN).
    flags: u8,
    /// How many flows this entry has held (wrapping): kept when the entry
    /// is freed, moved on when it is taken again, so that an [`EntryAt`]
    /// names one flow's time in the entry.
    epoch: u32,
}

const LIVE: u8 = 1;
const ORIG_IS_LO: u8 = 2;
const CLOSER_IS_REPLY: u8 = 4;

impl Entry {
    fn live(&self) -> bool {
        self.flags & LIVE != 0
    }

    fn orig_is_lo(&self) -> bool {
        self.flags & ORIG_IS_LO != 0
    }

    fn closer(&self) -> Side {
        if self.flags & CLOSER_IS_REPLY != 0 { Side::Reply } else { Side::Orig }
    }

    fn zone(&self) -> Zone {
        key::tail_zone(self.key[1])
    }

    fn counters(&self) -> Counters {
        Counters { packets: self.packets, bytes: self.bytes }
    }
}

impl Default for Entry {
    fn default() -> Self {
        Entry {
            key: [0; 2],
            last_seen: 0,
            generation: 0,
            next_seq: [0; 2],
            packets: [0; 2],
            bytes: [0; 2],
            state: State::Pseudo { replied: false },
            class: Class::Other,
            flags: 0,
            epoch: 0,
        }
    }
}

/// Where an entry is linked: the wheel slot and its neighbours there (a
/// free entry's `next` chains the free list).
#[derive(Clone, Copy, Debug)]
struct Link {
    slot: u32,
    prev: u32,
    next: u32,
}

const UNLINKED: Link = Link { slot: 0, prev: NIL, next: NIL };

/// Per-direction packet and byte counts of an entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub packets: [u32; 2],
    pub bytes: [u64; 2],
}

/// What the table knows of a packet beyond its tuple.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketInfo {
    /// TCP flags byte (0 for other protocols).
    pub tcp_flags: u8,
    pub tcp_seq: u32,
    /// Transport payload length (for TCP's next sequence number).
    pub payload_len: u32,
    /// Bytes on the wire, for the counters.
    pub wire_len: u32,
}

/// The outcome for one packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Part of a tracked flow: pass without rule evaluation.
    Established,
    /// A new flow the policy allowed; an entry was created.
    New,
    /// The policy denied the first packet (no entry).
    Denied,
    /// Makes no sense for the flow's state: drop, count `invalid`.
    Invalid,
    /// Allowed, but no room: drop, count `conntrack-full`.
    Full,
}

/// Table-wide event counts (summed into metrics by the caller).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub created: u64,
    pub expired: u64,
    pub evicted: u64,
    pub full: u64,
    pub invalid: u64,
    pub revalidated: u64,
    pub revalidation_removed: u64,
}

/// A bounded connection table.
#[derive(Debug)]
pub struct Table {
    s: Settings,
    entries: Vec<Entry>,
    links: Vec<Link>,
    /// The addresses of IPv6 entries' keys, by entry.
    v6: Vec<[u64; 4]>,
    /// Timeouts in ms by class, per zone, then for zones beyond the list.
    zone_ms: Vec<[u32; CLASSES]>,
    default_ms: [u32; CLASSES],
    index: Index,
    free: u32,
    len: u32,
    zone_len: Vec<u32>,
    heads: Vec<u32>,
    tails: Vec<u32>,
    /// The next second the sweep will process (None before the first flow).
    cursor: Option<u64>,
    /// No entry is linked in the slots of the seconds from the cursor up to
    /// this one: where an eviction scan starts (it is at most the first
    /// occupied second; linking an entry earlier lowers it).
    evict_from: u64,
    stats: Stats,
    /// The entry the last `Established` outcome of a lookup updated.
    last_hit: EntryAt,
}

/// A flow's entry as one of its packets reached it: what
/// [`Table::last_hit`] reports, for a caller that keeps it beside its own
/// key of the packet (the flow and the packet's direction in it) and comes
/// back through [`Table::ready_at`] with the next packet of that key.
///
/// It names the entry's place, the flow's time in it (the entry's epoch)
/// and which endpoint of the key the packet came from. Only a hint: the
/// flow may since have ended and the entry been taken by another, which
/// `ready_at` sees from the epoch without reading the key.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct EntryAt {
    /// The entry's index, and [`AT_SRC_IS_LO`].
    idx: u32,
    epoch: u32,
}

/// In [`EntryAt::idx`]: the packet's source is the key's low endpoint
/// (indices are below 2^30).
const AT_SRC_IS_LO: u32 = 1 << 31;

impl EntryAt {
    /// The entry's index.
    fn index(self) -> u32 {
        self.idx & !AT_SRC_IS_LO
    }

    /// Whether the packet's source was the key's low endpoint.
    fn src_is_lo(self) -> bool {
        self.idx & AT_SRC_IS_LO != 0
    }
}

/// A packet [`Table::ready_at`] found on its flow's entry, for
/// [`Table::update_at`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    idx: u32,
    src_is_lo: bool,
}

/// A packet's key, hash and side, computed once per packet: by
/// [`Table::prepare`] for a caller that warms a batch and then tracks its
/// packets one by one ([`Table::warm_prepared`], [`Table::track_prepared`]).
///
/// It holds the key as an entry stores it (`Key::compact`): an IPv4
/// key whole, in two words, so that a batch stores and reloads little per
/// packet; an IPv6 key's addresses are read again from the tuple. Warming
/// adds a guess of the flow's entry from its home index group, which tracking
/// confirms from the entry's key before it skips the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Prepared {
    c: [u64; 2],
    h: u64,
    /// The entry warming guessed, or [`NIL`].
    guess: u32,
    /// Whether the packet's source is the key's low endpoint.
    src_is_lo: bool,
}

impl Default for Prepared {
    fn default() -> Self {
        Prepared { c: [0; 2], h: 0, guess: NIL, src_is_lo: false }
    }
}

/// The flags that tell a plain ACK (ACK set, no SYN, FIN or RST) from
/// the other segments.
const PLAIN_MASK: u8 = tcp::flags::ACK | tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST;

/// The most packets `track_batch` works on together.
pub const BATCH: usize = 64;

fn class_of(state: State, proto: u8) -> Class {
    match state {
        State::Tcp(TcpState::SynSent | TcpState::SynRecv) => Class::TcpSyn,
        State::Tcp(TcpState::Established) => Class::TcpEstablished,
        State::Tcp(_) | State::Revoked => Class::TcpClosing,
        State::Pseudo { replied } => match proto {
            17 if replied => Class::UdpStream,
            17 => Class::Udp,
            1 | 58 => Class::Icmp,
            _ => Class::Other,
        },
    }
}

fn assured(state: State) -> bool {
    match state {
        State::Tcp(s) => !matches!(s, TcpState::SynSent | TcpState::SynRecv),
        State::Pseudo { replied } => replied,
        State::Revoked => false,
    }
}

/// A SYN without ACK: the only segment that may start a TCP flow on the
/// 5-tuple of a revoked one.
fn is_opening_syn(flags: u8) -> bool {
    flags & (tcp::flags::SYN | tcp::flags::ACK | tcp::flags::RST) == tcp::flags::SYN
}

fn side_ix(s: Side) -> usize {
    match s {
        Side::Orig => 0,
        Side::Reply => 1,
    }
}

impl Table {
    /// Allocates the whole table. Zones are numbered `0..zones`.
    ///
    /// # Panics
    /// If `capacity` is 0 or above 2^30.
    pub fn new(s: Settings, zones: usize) -> Table {
        assert!(s.capacity > 0 && s.capacity <= 1 << 30, "capacity must be 1..2^30");
        let cap = s.capacity as usize;
        let mut links = mem::filled(cap, UNLINKED);
        for (i, l) in links.iter_mut().enumerate() {
            l.next = if i + 1 < cap { u32::try_from(i + 1).expect("capacity <= 2^30") } else { NIL };
        }
        Table {
            entries: mem::filled(cap, Entry::default()),
            links,
            v6: mem::filled(cap, [0; 4]),
            zone_ms: s.zone_timeouts.iter().map(Timeouts::ms_by_class).collect(),
            default_ms: s.default_timeouts.ms_by_class(),
            index: Index::new(cap * 2),
            free: 0,
            len: 0,
            zone_len: vec![0; zones],
            heads: vec![NIL; WHEEL_SLOTS],
            tails: vec![NIL; WHEEL_SLOTS],
            cursor: None,
            evict_from: 0,
            stats: Stats::default(),
            last_hit: EntryAt::default(),
            s,
        }
    }

    /// Takes `s`'s bounds and policy for the next packet on: the per-zone
    /// capacity, the timeouts (the host's and each zone's), `tcp_strict`
    /// and `revalidate`. `capacity` and `seed` stay as constructed (the
    /// table is allocated for them). Call between batches: this allocates
    /// the per-zone timeout table.
    ///
    /// Live entries keep their place in the expiry wheel: a shorter timeout
    /// applies to them at once (a lookup treats an entry past its new
    /// deadline as gone, and eviction frees it), but the sweep frees their
    /// memory when it reaches the slot of their old deadline; a longer one
    /// applies when the sweep meets them, which moves them on. A zone over a
    /// lowered per-zone capacity admits no new flow until enough of its
    /// flows end; none is removed for it.
    pub fn reconfigure(&mut self, s: &Settings) {
        self.zone_ms = s.zone_timeouts.iter().map(Timeouts::ms_by_class).collect();
        self.default_ms = s.default_timeouts.ms_by_class();
        self.s = Settings { capacity: self.s.capacity, seed: self.s.seed, ..s.clone() };
    }

    /// The settings in force.
    pub fn settings(&self) -> &Settings {
        &self.s
    }

    /// The timeout in ms of `class` in `zone`.
    #[inline]
    fn timeout_ms(&self, zone: Zone, class: Class) -> u32 {
        self.zone_ms.get(usize::from(zone)).unwrap_or(&self.default_ms)[class as usize]
    }

    pub fn len(&self) -> usize {
        self.len as usize
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn zone_len(&self, zone: Zone) -> usize {
        self.zone_len.get(usize::from(zone)).map_or(0, |&n| n as usize)
    }

    pub fn stats(&self) -> Stats {
        self.stats
    }

    /// Bytes the table holds per flow at full capacity: entry, IPv6
    /// addresses, wheel linkage and index slots.
    pub fn bytes_per_flow(&self) -> usize {
        let per = std::mem::size_of::<Entry>() + std::mem::size_of::<[u64; 4]>() + std::mem::size_of::<Link>();
        per + self.index.bytes() / self.entries.len()
    }

    /// Bytes a table of `capacity` flows allocates (entries, IPv6
    /// addresses, wheel links and index), before it is built: what a
    /// caller checks against the machine's memory.
    pub fn bytes_for(capacity: u32) -> u64 {
        let cap = u64::from(capacity);
        let per = (std::mem::size_of::<Entry>() + std::mem::size_of::<[u64; 4]>() + std::mem::size_of::<Link>()) as u64;
        cap * per + Index::bytes_for(capacity as usize * 2) as u64
    }

    /// The size of one entry in bytes.
    pub fn entry_size() -> usize {
        std::mem::size_of::<Entry>()
    }

    // ------------------------------------------------------------ index

    #[inline]
    fn find(&self, c: [u64; 2], v6: impl Fn() -> [u64; 4], h: u64) -> Option<usize> {
        self.index.find(h, |id| self.holds(id as usize, c, &v6)).map(|id| id as usize)
    }

    /// Whether entry `idx` is the key's whose compact words are `c` (and,
    /// for an IPv6 key, whose addresses `v6` gives: read only then).
    #[inline]
    fn holds(&self, idx: usize, c: [u64; 2], v6: &impl Fn() -> [u64; 4]) -> bool {
        self.entries[idx].key == c && (!key::compact_is_v6(c) || self.v6[idx] == v6())
    }

    /// `key`'s [`Table::find`].
    fn find_key(&self, key: &Key) -> Option<usize> {
        self.find(key.compact(), || key.v6_addrs(), key.hash(self.s.seed))
    }

    /// The whole key of entry `idx`.
    fn key_at(&self, idx: usize) -> Key {
        Key::from_compact(self.entries[idx].key, &self.v6[idx])
    }

    fn index_insert(&mut self, h: u64, idx: usize) {
        self.index.insert(h, u32::try_from(idx).expect("capacity <= 2^30"));
    }

    fn index_remove(&mut self, h: u64, idx: usize) {
        let (entries, v6, seed) = (&self.entries, &self.v6, self.s.seed);
        let hash_of = |id: u32| entry_hash(entries, v6, id as usize, seed);
        self.index.remove(h, u32::try_from(idx).expect("capacity <= 2^30"), hash_of);
    }

    /// The hash of entry `idx`'s key.
    fn hash_at(&self, idx: usize) -> u64 {
        entry_hash(&self.entries, &self.v6, idx, self.s.seed)
    }

    // ------------------------------------------------------------ lists

    fn unlink(&mut self, idx: usize) {
        let Link { slot, prev, next } = self.links[idx];
        let slot = slot as usize;
        if prev == NIL {
            self.heads[slot] = next
        } else {
            self.links[prev as usize].next = next
        }
        if next == NIL { self.tails[slot] = prev } else { self.links[next as usize].prev = prev }
    }

    fn link(&mut self, idx: usize, slot: usize) {
        if let Some(cursor) = self.cursor {
            // The slot's second within the wheel's turn from the cursor (in
            // a sweep the cursor may lag behind: then this second is earlier
            // than the true one, which only lowers the bound).
            let sec = cursor + ((slot as u64).wrapping_sub(cursor) & (WHEEL_SLOTS as u64 - 1));
            self.evict_from = self.evict_from.min(sec);
        }
        let i32 = u32::try_from(idx).expect("capacity <= 2^30");
        let tail = self.tails[slot];
        self.links[idx] = Link { slot: u32::try_from(slot).expect("WHEEL_SLOTS fits u32"), prev: tail, next: NIL };
        if tail == NIL {
            self.heads[slot] = i32
        } else {
            self.links[tail as usize].next = i32
        }
        self.tails[slot] = i32;
    }

    /// The absolute second of the entry's deadline, given the full clock.
    fn deadline_sec(&self, idx: usize, now: Now) -> u64 {
        let e = &self.entries[idx];
        let age = u64::from(now.ms32().wrapping_sub(e.last_seen));
        let timeout = u64::from(self.timeout_ms(e.zone(), e.class));
        (now.0.saturating_sub(age) + timeout) / 1000
    }

    /// Links the entry into the slot of its deadline (never a slot the
    /// sweep has already passed).
    #[expect(clippy::cast_possible_truncation, reason = "a slot is the deadline second modulo the wheel size")]
    fn place(&mut self, idx: usize, now: Now) {
        let cursor = *self.cursor.get_or_insert(now.0 / 1000);
        let sec = self.deadline_sec(idx, now).max(cursor);
        self.link(idx, (sec as usize) & (WHEEL_SLOTS - 1));
    }

    fn release(&mut self, idx: usize) {
        self.unlink(idx);
        self.free_entry(idx);
    }

    /// Frees an entry already unlinked from the wheel.
    fn free_entry(&mut self, idx: usize) {
        self.index_remove(self.hash_at(idx), idx);
        self.entries[idx].flags &= !LIVE;
        self.links[idx].next = self.free;
        self.free = u32::try_from(idx).expect("capacity <= 2^30");
        self.len -= 1;
        if let Some(n) = self.zone_len.get_mut(usize::from(self.entries[idx].zone())) {
            *n -= 1;
        }
    }

    fn expired(&self, idx: usize, now: u32) -> bool {
        let e = &self.entries[idx];
        now.wrapping_sub(e.last_seen) >= self.timeout_ms(e.zone(), e.class)
    }

    // ------------------------------------------------------------ expiry

    /// Frees expired entries, at most `budget` of them, looking at most at
    /// `2 * budget` entries and [`MAX_EMPTY_SLOTS`] empty slots. Call once per
    /// poll-loop iteration. Returns how many entries were freed.
    #[expect(clippy::cast_possible_truncation, reason = "a slot is a second modulo the wheel size")]
    pub fn expire(&mut self, now: Now, budget: usize) -> usize {
        let Some(mut cursor) = self.cursor else { return 0 };
        let now_sec = now.0 / 1000;
        // After a long gap every slot is due once; older seconds add nothing.
        cursor = cursor.max(now_sec.saturating_sub(WHEEL_SLOTS as u64));
        let (mut freed, mut looked, mut empty) = (0, 0, 0);
        let now32 = now.ms32();
        // Only whole past seconds are swept, so a slot is never revisited
        // within the second it is due.
        while cursor < now_sec && freed < budget && looked < 2 * budget && empty < MAX_EMPTY_SLOTS {
            let slot = (cursor as usize) & (WHEEL_SLOTS - 1);
            let h = self.heads[slot];
            if h == NIL {
                empty += 1;
                cursor += 1;
                continue;
            }
            let idx = h as usize;
            looked += 1;
            self.unlink(idx);
            // The entries after this one in the slot are most often freed
            // next: bring in what freeing them reads.
            self.prefetch_victims(self.heads[slot]);
            if self.expired(idx, now32) {
                self.free_entry(idx);
                self.stats.expired += 1;
                freed += 1;
            } else {
                // Seen since it was placed, or a wheel turn ahead: re-place
                // by its current deadline, which is after this second.
                let sec = self.deadline_sec(idx, now).max(cursor + 1);
                self.link(idx, (sec as usize) & (WHEEL_SLOTS - 1));
            }
        }
        self.cursor = Some(cursor);
        freed
    }

    /// Whether the sweep has reached `now`: every entry whose deadline is
    /// before the current second has been freed.
    pub fn caught_up(&self, now: Now) -> bool {
        self.cursor.is_none_or(|c| c >= now.0 / 1000)
    }

    /// Makes room for a new flow of `zone`: frees the first entry, soonest
    /// deadline first within [`EVICT_SCAN`] entries, that is of `zone` and
    /// expired or unassured, or, when only the table is full and `zone` has
    /// room (`zone_full` false), expired in any zone (it is dead; freeing
    /// another zone's flow makes no room in a full zone, which must stay
    /// within its share). An entry met before its
    /// deadline's slot (seen again, or moved to a longer timeout, since it
    /// was placed) is moved there, as the sweep would move it, without
    /// counting as looked at, up to [`EVICT_MOVES`] of them: otherwise flows
    /// that turned assured after they were placed would hide the unassured
    /// ones behind them.
    ///
    /// The scan starts at the first second that may hold an entry
    /// (`evict_from`), not at the cursor: with every flow on one timeout,
    /// the empty seconds between them are otherwise walked by every new
    /// flow. And a flood of new flows into a full zone evicts one entry
    /// after another from the head of the same slot: each eviction brings
    /// in what the next ones will read ([`Table::prefetch_victims`]; with
    /// it, 64k-flow zones take about 1.8 times the new flows a second they
    /// took without, 1M-flow zones 2.5 times: `benches/src/bin/conntrack.rs`).
    ///
    /// An expired entry goes before any live one. Only the current
    /// second's slot holds both (a slot is its entries' deadline second):
    /// there the first live candidate waits until the slot is scanned (or
    /// the scan's limit is reached) in case an entry after it has expired.
    #[expect(clippy::cast_possible_truncation, reason = "a slot is a second modulo the wheel size")]
    fn evict_for(&mut self, zone: Zone, zone_full: bool, now: Now) -> bool {
        let Some(cursor) = self.cursor else { return false };
        let now32 = now.ms32();
        let now_sec = now.0 / 1000;
        let (mut scanned, mut moved) = (0, 0);
        // A live candidate of the current second, kept in case an entry
        // after it in the slot has expired.
        let mut live = None;
        let start = cursor.max(self.evict_from);
        'slots: for sec in start..cursor + WHEEL_SLOTS as u64 {
            let mut i = self.heads[(sec as usize) & (WHEEL_SLOTS - 1)];
            if i == NIL && scanned == 0 && moved == 0 {
                self.evict_from = sec + 1;
            }
            while i != NIL {
                let idx = i as usize;
                let (next, ezone, estate) = (self.links[idx].next, self.entries[idx].zone(), self.entries[idx].state);
                i = next;
                if self.expired(idx, now32) && (ezone == zone || !zone_full) {
                    self.release(idx);
                    self.prefetch_victims(next);
                    self.stats.expired += 1;
                    return true;
                }
                let due = self.deadline_sec(idx, now);
                if due > sec && due - sec < WHEEL_SLOTS as u64 && moved < EVICT_MOVES {
                    // To its deadline's slot (`due`, after the cursor).
                    self.unlink(idx);
                    self.place(idx, now);
                    moved += 1;
                    continue;
                }
                if ezone == zone && !assured(estate) {
                    if sec != now_sec {
                        self.release(idx);
                        self.prefetch_victims(next);
                        self.stats.evicted += 1;
                        return true;
                    }
                    live.get_or_insert(idx);
                }
                scanned += 1;
                if scanned >= EVICT_SCAN {
                    break 'slots;
                }
            }
            if live.is_some() {
                break;
            }
        }
        let Some(idx) = live else { return false };
        let next = self.links[idx].next;
        self.release(idx);
        self.prefetch_victims(next);
        self.stats.evicted += 1;
        true
    }

    /// After an entry is taken from its slot (evicted, or freed by the
    /// sweep), brings in what freeing the next ones from the same slot will
    /// read. `next` is its successor, most often the next to go. The one
    /// after `next` has its index group fetched, from its key, which the
    /// previous call fetched with its link; the one after that has its
    /// entry and link fetched. So each line is asked for one or two frees
    /// before it is read, and a run of frees finds them in the cache
    /// instead of waiting, one after another, on a miss for each (the index
    /// group most: a random line of the largest array).
    fn prefetch_victims(&self, next: u32) {
        let link = |i: u32| self.links.get(i as usize);
        let Some(after) = link(next).map(|l| l.next) else { return };
        let Some(third) = link(after).map(|l| l.next) else { return };
        self.index.prefetch(self.hash_at(after as usize));
        if let (Some(e), Some(l)) = (self.entries.get(third as usize), link(third)) {
            mem::prefetch(e);
            mem::prefetch(l);
        }
    }

    // ------------------------------------------------------------ packets

    /// Tracks one packet.
    ///
    /// `generation` is the current policy's. `judge(original)` asks the
    /// policy whether a flow's first packet (given as its tuple from the
    /// opener's side) is allowed: for a new flow, and for revalidating a flow
    /// admitted under an older generation.
    pub fn track(&mut self, t: &Tuple, p: &PacketInfo, now: Now, generation: u32, judge: impl FnMut(&Tuple) -> bool) -> Outcome {
        let probe = self.probe(t);
        self.track_probe(t, probe, p, now, generation, judge)
    }

    /// The key and hash of `t`, for [`Table::warm_prepared`] and
    /// [`Table::track_prepared`].
    #[inline]
    pub fn prepare(&self, t: &Tuple) -> Prepared {
        self.probe(t)
    }

    /// [`Table::track`] with `t`'s key and hash already computed.
    ///
    /// `prepared` must be `self.prepare(t)` (checked in debug builds).
    #[inline]
    pub fn track_prepared(
        &mut self,
        t: &Tuple,
        prepared: Prepared,
        p: &PacketInfo,
        now: Now,
        generation: u32,
        judge: impl FnMut(&Tuple) -> bool,
    ) -> Outcome {
        debug_assert_eq!(Prepared { guess: NIL, ..prepared }, self.probe(t), "prepared for another tuple");
        self.track_probe(t, prepared, p, now, generation, judge)
    }

    /// [`Table::warm`] for tuples already prepared; each keeps the guess of
    /// its entry that warming made, for [`Table::track_prepared`].
    pub fn warm_prepared(&self, prepared: &mut [Prepared]) {
        let n = prepared.len().min(BATCH);
        self.warm_probes(&mut prepared[..n]);
    }

    #[inline(always)]
    fn probe(&self, t: &Tuple) -> Prepared {
        if let Some((c, src_is_lo)) = Key::compact_of_v4(t) {
            return Prepared { c, h: key::hash_v4(c, self.s.seed), guess: NIL, src_is_lo };
        }
        // IPv6: the whole key is needed for its hash.
        let (key, src_is_lo) = Key::of(t);
        Prepared { c: key.compact(), h: key.hash(self.s.seed), guess: NIL, src_is_lo }
    }

    /// [`Table::track`] for a batch: `out[i]` is the outcome of `tuples[i]`
    /// with `infos[i]`, exactly as if tracked one by one in order.
    ///
    /// # Design
    /// Per chunk of [`BATCH`] packets: hash all keys, then prefetch every
    /// home index group, then guess every entry from its group and prefetch
    /// it, and only then run the per-packet logic. The prefetches of one
    /// phase do not depend on each other, so their cache misses overlap
    /// instead of queueing; by the last phase the lines are in cache. (Later
    /// packets of a batch may change what the warming saw; the last phase
    /// takes a guess only from a live entry holding the packet's key, and
    /// else searches the index afresh, so a stale guess only costs a miss,
    /// never a wrong answer.)
    ///
    /// # Panics
    /// If the three slices differ in length.
    pub fn track_batch(
        &mut self,
        tuples: &[Tuple],
        infos: &[PacketInfo],
        now: Now,
        generation: u32,
        mut judge: impl FnMut(&Tuple) -> bool,
        out: &mut [Outcome],
    ) {
        assert!(tuples.len() == infos.len() && infos.len() == out.len(), "one info and one outcome per tuple");
        let mut probes = [Prepared::default(); BATCH];
        for ((ts, ps), os) in tuples.chunks(BATCH).zip(infos.chunks(BATCH)).zip(out.chunks_mut(BATCH)) {
            let probes = &mut probes[..ts.len()];
            for (probe, t) in probes.iter_mut().zip(ts) {
                *probe = self.probe(t);
            }
            self.warm_probes(probes);
            for (((o, &probe), t), p) in os.iter_mut().zip(&*probes).zip(ts).zip(ps) {
                *o = self.track_probe(t, probe, p, now, generation, &mut judge);
            }
        }
    }

    /// Brings the index groups and entries of `tuples` (at most [`BATCH`])
    /// into the cache, their misses overlapped, ahead of tracking them one
    /// by one: what [`Table::track_batch`] does first, for a caller that
    /// must interleave other work between the packets of a batch.
    pub fn warm(&self, tuples: &[Tuple]) {
        let tuples = &tuples[..tuples.len().min(BATCH)];
        let mut probes = [Prepared::default(); BATCH];
        for (probe, t) in probes.iter_mut().zip(tuples) {
            *probe = self.probe(t);
        }
        self.warm_probes(&mut probes[..tuples.len()]);
    }

    /// Prefetches the home index group of every probe, then guesses each
    /// probe's entry from its group ([`Index::guess`]: right for nearly
    /// every flow that has one) and prefetches it. Prefetches retire at
    /// once, so the misses of a phase are all in flight together; by the
    /// time the second phase reads a group, its line has mostly arrived.
    fn warm_probes(&self, probes: &mut [Prepared]) {
        for probe in &*probes {
            self.index.prefetch(probe.h);
        }
        for probe in probes {
            probe.guess = NIL;
            if let Some(id) = self.index.guess(probe.h)
                && let Some(e) = self.entries.get(id as usize)
            {
                mem::prefetch(e);
                probe.guess = id;
            }
        }
    }

    #[inline]
    fn track_probe(
        &mut self,
        t: &Tuple,
        probe: Prepared,
        p: &PacketInfo,
        now: Now,
        generation: u32,
        mut judge: impl FnMut(&Tuple) -> bool,
    ) -> Outcome {
        let Prepared { c, h, guess, src_is_lo } = probe;
        let v6 = || v6_addrs(c, t);
        let guessed = self.entries.get(guess as usize).is_some_and(Entry::live) && self.holds(guess as usize, c, &v6);
        if let Some(idx) = if guessed { Some(guess as usize) } else { self.find(c, v6, h) } {
            let e = &self.entries[idx];
            let (state, admitted) = (e.state, e.generation);
            if self.expired(idx, now.ms32()) {
                self.release(idx);
                self.stats.expired += 1;
            } else if state == State::Revoked {
                if !is_opening_syn(p.tcp_flags) {
                    self.entries[idx].last_seen = now.ms32();
                    return Outcome::Denied;
                }
                self.release(idx);
            } else if admitted != generation && self.s.revalidate {
                self.stats.revalidated += 1;
                let original = if key::side(src_is_lo, e.orig_is_lo()) == Side::Orig { *t } else { t.reversed() };
                if judge(&original) {
                    self.entries[idx].generation = generation;
                    self.last_hit = self.entry_at(idx, src_is_lo);
                    return self.update(idx, src_is_lo, p, now);
                }
                self.stats.revalidation_removed += 1;
                if key::tail_proto(c[1]) != 6 || is_opening_syn(p.tcp_flags) {
                    self.release(idx);
                } else {
                    self.revoke(idx, now);
                    return Outcome::Denied;
                }
            } else {
                self.last_hit = self.entry_at(idx, src_is_lo);
                return self.update(idx, src_is_lo, p, now);
            }
        }
        self.create(t, probe, p, now, generation, judge)
    }

    /// The entry that the last lookup with the outcome
    /// [`Outcome::Established`] updated (meaningless after other outcomes).
    pub fn last_hit(&self) -> EntryAt {
        self.last_hit
    }

    /// Entry `idx` as a packet from the key's low endpoint (or not) reached it.
    #[inline]
    fn entry_at(&self, idx: usize, src_is_lo: bool) -> EntryAt {
        let i = u32::try_from(idx).expect("capacity <= 2^30");
        EntryAt { idx: i | if src_is_lo { AT_SRC_IS_LO } else { 0 }, epoch: self.entries[idx].epoch }
    }

    /// Whether tracking a packet of the key `at` was reached by (the same
    /// flow, in the same direction) would find the entry at `at` and update
    /// it: the entry still holds the flow `at` saw (live, same epoch), not
    /// past its deadline, not revoked, and admitted under `generation` (or
    /// the table keeps entries across policy changes). Then
    /// [`Table::update_at`] does exactly what `track` would, without hashing,
    /// probing the index or comparing keys; otherwise `None`, and the caller
    /// tracks the packet as usual.
    ///
    /// The caller answers for the packet's key: `at` says nothing of a
    /// packet of another flow, or of the same flow's other direction.
    #[inline]
    pub fn ready_at(&self, at: EntryAt, now: Now, generation: u32) -> Option<Ready> {
        let idx = at.index() as usize;
        let e = self.entries.get(idx)?;
        let ok = e.live()
            && e.epoch == at.epoch
            && e.state != State::Revoked
            && !self.expired(idx, now.ms32())
            && (e.generation == generation || !self.s.revalidate);
        ok.then_some(Ready { idx: at.index(), src_is_lo: at.src_is_lo() })
    }

    /// Tracks the packet [`Table::ready_at`] found ready, with nothing but
    /// other `update_at` calls in between: the outcome `track` would give
    /// ([`Outcome::Established`], or [`Outcome::Invalid`] for a TCP segment
    /// that makes no sense in the connection's state), and the entry
    /// updated as `track` would.
    #[inline]
    pub fn update_at(&mut self, r: Ready, p: &PacketInfo, now: Now) -> Outcome {
        self.update(r.idx as usize, r.src_is_lo, p, now)
    }

    /// Brings the entry at `at` into the cache, ahead of
    /// [`Table::ready_at`].
    #[inline]
    pub fn warm_at(&self, at: EntryAt) {
        if let Some(e) = self.entries.get(at.index() as usize) {
            mem::prefetch(e);
        }
    }

    /// Entry `idx` moved from class `old` to its current class. The wheel
    /// keeps every entry in a slot at or before its deadline (the sweep
    /// re-places an entry it finds not yet due), so only a shorter timeout
    /// needs the entry moved now; a longer one (a UDP flow's first reply,
    /// a handshake completed) leaves the wheel alone, and the per-packet
    /// path touches no wheel links.
    #[inline]
    fn reclassed(&mut self, idx: usize, old: Class, now: Now) {
        let e = &self.entries[idx];
        let zone = e.zone();
        if self.timeout_ms(zone, e.class) < self.timeout_ms(zone, old) {
            self.unlink(idx);
            self.place(idx, now);
        }
    }

    /// Turns a TCP entry into a [`State::Revoked`] marker (see there).
    fn revoke(&mut self, idx: usize, now: Now) {
        self.unlink(idx);
        let e = &mut self.entries[idx];
        e.state = State::Revoked;
        e.class = Class::TcpClosing;
        e.last_seen = now.ms32();
        self.place(idx, now);
    }

    #[inline(always)]
    fn update(&mut self, idx: usize, src_is_lo: bool, p: &PacketInfo, now: Now) -> Outcome {
        let e = &mut self.entries[idx];
        let side = key::side(src_is_lo, e.orig_is_lo());
        let new_state = match e.state {
            State::Pseudo { replied } => State::Pseudo { replied: replied || side == Side::Reply },
            // Most packets: an ACK (with or without data) on an established
            // connection, which stays established (`tcp::step`); only the
            // side's next sequence number moves.
            State::Tcp(TcpState::Established) if p.tcp_flags & PLAIN_MASK == tcp::flags::ACK => {
                e.next_seq[side_ix(side)] = p.tcp_seq.wrapping_add(p.payload_len);
                State::Tcp(TcpState::Established)
            }
            State::Tcp(st) => match tcp_update(e, st, side, p, self.s.tcp_strict) {
                Some(next) => State::Tcp(next),
                None => {
                    self.stats.invalid += 1;
                    return Outcome::Invalid;
                }
            },
            State::Revoked => return Outcome::Denied,
        };
        let class = class_of(new_state, key::tail_proto(e.key[1]));
        let old_class = e.class;
        e.state = new_state;
        e.class = class;
        e.last_seen = now.ms32();
        let i = side_ix(side);
        e.packets[i] = e.packets[i].wrapping_add(1);
        e.bytes[i] = e.bytes[i].wrapping_add(u64::from(p.wire_len));
        if class != old_class {
            self.reclassed(idx, old_class, now);
        }
        Outcome::Established
    }

    fn create(
        &mut self,
        t: &Tuple,
        probe: Prepared,
        p: &PacketInfo,
        now: Now,
        generation: u32,
        mut judge: impl FnMut(&Tuple) -> bool,
    ) -> Outcome {
        let Prepared { c, h, src_is_lo, .. } = probe;
        let state = match t.proto {
            6 => match tcp::first(Segment::from_flags(p.tcp_flags), self.s.tcp_strict) {
                Some(s) => State::Tcp(s),
                None => {
                    self.stats.invalid += 1;
                    return Outcome::Invalid;
                }
            },
            _ => State::Pseudo { replied: false },
        };
        if !judge(t) {
            return Outcome::Denied;
        }
        let zone_full = self.zone_len(t.zone) >= self.s.per_zone_capacity as usize;
        if (self.len >= self.s.capacity || zone_full) && !self.evict_for(t.zone, zone_full, now) {
            self.stats.full += 1;
            return Outcome::Full;
        }
        if usize::from(t.zone) >= self.zone_len.len() || self.free == NIL {
            // An unknown zone has no share; a full slab cannot happen below
            // capacity, but is refused rather than trusted.
            self.stats.full += 1;
            return Outcome::Full;
        }
        let idx = self.free as usize;
        self.free = self.links[idx].next;
        let syn = u32::from(p.tcp_flags & tcp::flags::SYN != 0);
        let epoch = self.entries[idx].epoch.wrapping_add(1);
        self.entries[idx] = Entry {
            key: c,
            last_seen: now.ms32(),
            generation,
            next_seq: [p.tcp_seq.wrapping_add(p.payload_len).wrapping_add(syn), 0],
            packets: [1, 0],
            bytes: [u64::from(p.wire_len), 0],
            state,
            class: class_of(state, t.proto),
            flags: LIVE | if src_is_lo { ORIG_IS_LO } else { 0 },
            epoch,
        };
        if key::compact_is_v6(c) {
            self.v6[idx] = v6_addrs(c, t);
        }
        self.place(idx, now);
        self.index_insert(h, idx);
        self.len += 1;
        self.zone_len[usize::from(t.zone)] += 1;
        self.stats.created += 1;
        Outcome::New
    }

    /// Whether an ICMP or ICMPv6 error (destination unreachable, packet too
    /// big, time exceeded, parameter problem) is *related* to a tracked flow:
    /// `inner` is the tuple of the header embedded in the error, as the
    /// flow's own packet was sent, in the zone of the port that receives the
    /// error. A related error passes; otherwise the caller judges it as a new
    /// packet. Related errors do not refresh the flow.
    pub fn related(&self, inner: &Tuple, now: Now) -> bool {
        let (key, _) = Key::of(inner);
        self.find_key(&key).is_some_and(|i| !self.expired(i, now.ms32()))
    }

    /// Looks a flow up without changing it: its state and counters.
    pub fn get(&self, t: &Tuple) -> Option<(State, Counters)> {
        let (key, _) = Key::of(t);
        self.find_key(&key).map(|i| (self.entries[i].state, self.entries[i].counters()))
    }

    /// Every live flow as (original tuple, state, counters): for listing.
    pub fn flows(&self) -> impl Iterator<Item = (Tuple, State, Counters)> + '_ {
        self.flows_in(0..self.entries.len())
    }

    /// The live flows among entries `range` (clamped to the table): for
    /// listing a large table in steps, a range at a time, between batches.
    pub fn flows_in(&self, range: std::ops::Range<usize>) -> impl Iterator<Item = (Tuple, State, Counters)> + '_ {
        let range = range.start.min(self.entries.len())..range.end.min(self.entries.len());
        range
            .filter(|&i| self.entries[i].live())
            .map(|i| (original_tuple(&self.key_at(i), self.entries[i].orig_is_lo()), self.entries[i].state, self.entries[i].counters()))
    }

    /// How many entries the table has room for: the end of the ranges of
    /// [`Table::flows_in`] and [`Table::flush_in`].
    pub fn slots(&self) -> usize {
        self.entries.len()
    }

    /// Removes every flow of `zone` (all zones with `None`). Not for the
    /// per-packet path: it scans the slab.
    pub fn flush(&mut self, zone: Option<Zone>) -> usize {
        self.flush_in(zone, 0..self.entries.len())
    }

    /// Removes the flows of `zone` (all zones with `None`) among entries
    /// `range`: a large table flushed in steps, between batches.
    pub fn flush_in(&mut self, zone: Option<Zone>, range: std::ops::Range<usize>) -> usize {
        let range = range.start.min(self.entries.len())..range.end.min(self.entries.len());
        let mut n = 0;
        for i in range {
            if self.entries[i].live() && zone.is_none_or(|z| self.entries[i].zone() == z) {
                self.release(i);
                n += 1;
            }
        }
        n
    }
}

/// A TCP segment on an entry in state `st`: the next state, with the
/// entry's sequence numbers and closer recorded, or `None` if the segment
/// is invalid (out-of-window RST, or no transition). Out of line, so that
/// the common path of [`Table::update`] stays small enough to inline.
#[inline(never)]
fn tcp_update(e: &mut Entry, st: TcpState, side: Side, p: &PacketInfo, strict: bool) -> Option<TcpState> {
    let seg = Segment::from_flags(p.tcp_flags);
    if seg == Segment::Rst && !tcp::rst_in_window(p.tcp_seq, e.next_seq[side_ix(side)]) {
        return None;
    }
    match tcp::step(st, side, seg, e.closer(), p.payload_len > 0, strict) {
        Step::Invalid => None,
        Step::To(next) => {
            if seg == Segment::Fin && matches!(st, TcpState::SynRecv | TcpState::Established) {
                e.flags = (e.flags & !CLOSER_IS_REPLY) | if side == Side::Reply { CLOSER_IS_REPLY } else { 0 };
            }
            let syn_fin = u32::from(p.tcp_flags & (tcp::flags::SYN | tcp::flags::FIN) != 0);
            e.next_seq[side_ix(side)] = p.tcp_seq.wrapping_add(p.payload_len).wrapping_add(syn_fin);
            Some(next)
        }
    }
}

/// The hash of entry `idx`'s key (an IPv4 key's from its compact words).
#[inline]
fn entry_hash(entries: &[Entry], v6: &[[u64; 4]], idx: usize, seed: u64) -> u64 {
    let c = entries[idx].key;
    if key::compact_is_v6(c) { Key::from_compact(c, &v6[idx]).hash(seed) } else { key::hash_v4(c, seed) }
}

/// The addresses of `t`'s key if it is an IPv6 key (compact words `c`),
/// which the compact words leave out; zeros for an IPv4 key, whose compact
/// words are the whole key. Read again from the tuple: the IPv6 path is
/// rare enough.
#[inline]
fn v6_addrs(c: [u64; 2], t: &Tuple) -> [u64; 4] {
    if key::compact_is_v6(c) { Key::of(t).0.v6_addrs() } else { [0; 4] }
}

/// A flow's tuple as its opener sent it.
fn original_tuple(key: &Key, orig_is_lo: bool) -> Tuple {
    let (lo, hi, lo_port, hi_port, zone, proto, v6) = key.parts();
    let addr = |b: [u8; 16]| {
        let v6a = std::net::Ipv6Addr::from(b);
        match (v6, v6a.to_ipv4_mapped()) {
            (false, Some(v4)) => IpAddr::V4(v4),
            _ => IpAddr::V6(v6a),
        }
    };
    let (src, sport, dst, dport) = if orig_is_lo { (lo, lo_port, hi, hi_port) } else { (hi, hi_port, lo, lo_port) };
    Tuple { zone, proto, src: addr(src), dst: addr(dst), sport, dport }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shortcut for ACKs on an established connection in
    /// [`Table::update`] does what the state machine does with them, for
    /// every flags byte, side, payload and mode.
    #[test]
    fn the_established_ack_shortcut_is_the_state_machine() {
        let flow = Tuple { zone: 0, proto: 6, src: "10.0.0.1".parse().unwrap(), dst: "10.0.0.2".parse().unwrap(), sport: 1000, dport: 22 };
        for strict in [false, true] {
            let mut t = Table::new(Settings { capacity: 4, per_zone_capacity: 4, tcp_strict: strict, ..Settings::default() }, 1);
            let syn = PacketInfo { tcp_flags: tcp::flags::SYN, tcp_seq: 1, payload_len: 0, wire_len: 60 };
            let synack = PacketInfo { tcp_flags: tcp::flags::SYN | tcp::flags::ACK, tcp_seq: 9, payload_len: 0, wire_len: 60 };
            let ack = PacketInfo { tcp_flags: tcp::flags::ACK, tcp_seq: 2, payload_len: 0, wire_len: 60 };
            assert_eq!(t.track(&flow, &syn, Now(1), 1, |_| true), Outcome::New);
            assert_eq!(t.track(&flow.reversed(), &synack, Now(2), 1, |_| true), Outcome::Established);
            assert_eq!(t.track(&flow, &ack, Now(3), 1, |_| true), Outcome::Established);
            let (key, _) = Key::of(&flow);
            let idx = t.find_key(&key).expect("tracked");
            let start = t.entries[idx];
            assert_eq!(start.state, State::Tcp(TcpState::Established));
            for flags in 0..=u8::MAX {
                for src_is_lo in [false, true] {
                    for payload_len in [0, 7] {
                        let p = PacketInfo { tcp_flags: flags, tcp_seq: 5000, payload_len, wire_len: 80 };
                        t.entries[idx] = start;
                        let got = t.update(idx, src_is_lo, &p, Now(4));
                        let mut want = start;
                        let side = key::side(src_is_lo, start.orig_is_lo());
                        let next = tcp_update(&mut want, TcpState::Established, side, &p, strict);
                        let e = t.entries[idx];
                        let what = format!("flags {flags:#04x}, lo {src_is_lo}, payload {payload_len}, strict {strict}");
                        match next {
                            None => assert_eq!(got, Outcome::Invalid, "{what}"),
                            Some(st) => {
                                assert_eq!(got, Outcome::Established, "{what}");
                                assert_eq!(e.state, State::Tcp(st), "{what}");
                                assert_eq!((e.next_seq, e.flags), (want.next_seq, want.flags), "{what}");
                            }
                        }
                        // Put the entry back on its wheel slot for the next round.
                        if t.entries[idx].class != start.class {
                            t.entries[idx] = start;
                            t.unlink(idx);
                            t.place(idx, Now(4));
                        }
                    }
                }
            }
        }
    }
}
