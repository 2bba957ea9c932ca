//! Fragments (`semantics.md`, "State"): the first fragment of a datagram is
//! judged on its ports; later fragments follow its verdict, tracked by zone,
//! source, destination, protocol and IP identification. Followers that arrive
//! before their first fragment are held for a short, bounded time and
//! released (or dropped) when it comes; if it never does they are dropped and
//! counted.
//!
//! The switch does not reassemble: fragments are forwarded as they are, and
//! reassembly is the receiving VM's business. Two rules close the classic
//! fragment attacks on a filter that does not reassemble (RFC 1858, and
//! RFC 5722 for IPv6):
//! - a *tiny* first fragment, too short to hold the transport header the
//!   verdict is computed from (TCP 20 bytes, UDP, ICMP and ICMPv6 8), is
//!   dropped, and so are its followers;
//! - an *overlapping* follower, whose offset falls inside that header, is
//!   dropped: it could rewrite the ports or flags the first was judged on.
//!   A second first fragment for a datagram already judged differently turns
//!   the datagram's verdict into drop.
//!
//! Everything is preallocated: the datagram table never grows past its
//! capacity (a first fragment that finds it full is dropped and counted), and
//! the hold is a fixed array. `H` is the caller's handle for a held frame (a
//! UMEM address, a capture index); this module never sees packet bytes.

use std::collections::VecDeque;
use std::net::IpAddr;

use hashbrown::HashMap;

use crate::key::Zone;
use crate::table::Now;

/// Which datagram a fragment belongs to. The identification is 16 bits in
/// IPv4 and 32 in IPv6.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FragKey {
    pub zone: Zone,
    pub proto: u8,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub id: u32,
}

/// A fragment as read off the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fragment {
    pub key: FragKey,
    /// Offset of this fragment's data in the datagram, in bytes.
    pub offset: u32,
    /// Bytes of datagram data this fragment carries.
    pub len: u32,
}

impl Fragment {
    /// Whether this is the first fragment (offset 0), the one judged.
    pub fn is_first(&self) -> bool {
        self.offset == 0
    }

    /// A first fragment too short to hold the transport header.
    pub fn is_tiny(&self) -> bool {
        self.is_first() && self.len < min_header(self.key.proto)
    }

    /// A follower whose data would land inside the transport header.
    pub fn overlaps_header(&self) -> bool {
        !self.is_first() && self.offset < min_header(self.key.proto)
    }
}

/// The transport header a verdict reads: ports and TCP flags, ICMP type,
/// code and echo identifier. Other protocols are judged on addresses alone.
fn min_header(proto: u8) -> u32 {
    match proto {
        6 => 20,
        17 | 1 | 58 => 8,
        _ => 0,
    }
}

/// Sizes and times; the defaults are what the datapath uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FragSettings {
    /// Datagrams whose verdict is remembered at once.
    pub datagrams: u32,
    /// Followers held at once, waiting for their first fragment.
    pub held: u32,
    /// How long a follower is held (the contract says about 100 ms).
    pub hold_ms: u32,
    /// How long a datagram's verdict is remembered after its first
    /// fragment (Linux keeps an incomplete datagram 30 s).
    pub datagram_ms: u32,
}

impl Default for FragSettings {
    fn default() -> FragSettings {
        FragSettings { datagrams: 8192, held: 256, hold_ms: 100, datagram_ms: 30_000 }
    }
}

/// What happens to a non-first fragment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Follow {
    /// Its datagram's first fragment was allowed: forward it.
    Pass,
    /// Its datagram was denied, it overlaps the header, or there is no room
    /// to hold it: drop and count it as `fragment`.
    Drop,
    /// Held until the first fragment comes or the hold times out; the
    /// handle comes back through the `release` callback.
    Held,
}

/// Counters, all monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragStats {
    pub passed: u64,
    /// Followers dropped because their datagram was denied.
    pub denied: u64,
    pub tiny: u64,
    pub overlapping: u64,
    /// First fragments dropped because the datagram table was full, and
    /// followers dropped because the hold was full.
    pub full: u64,
    pub held: u64,
    /// Held followers dropped because their first fragment never came.
    pub timed_out: u64,
}

impl FragStats {
    /// Every fragment dropped, whatever the cause: the `fragment` reason.
    pub fn dropped(&self) -> u64 {
        self.denied + self.tiny + self.overlapping + self.full + self.timed_out
    }
}

#[derive(Clone, Copy, Debug)]
struct Record {
    allowed: bool,
    since: Now,
}

#[derive(Clone, Copy, Debug)]
struct Held<H> {
    key: FragKey,
    handle: H,
    since: Now,
}

/// The fragment tracker of one poll loop (all its zones).
#[derive(Debug)]
pub struct Fragments<H> {
    s: FragSettings,
    records: HashMap<FragKey, Record>,
    /// Record keys in creation order: records never refresh, so the oldest
    /// is always at the front and expiry pops from there.
    order: VecDeque<(FragKey, Now)>,
    held: Vec<Option<Held<H>>>,
    held_len: usize,
    stats: FragStats,
}

impl<H: Copy> Fragments<H> {
    pub fn new(s: FragSettings) -> Fragments<H> {
        let n = s.datagrams as usize;
        // Twice the room the bound allows: hashbrown then always rehashes
        // in place instead of growing, so inserts never allocate.
        Fragments {
            s,
            records: HashMap::with_capacity(2 * n),
            order: VecDeque::with_capacity(n),
            held: vec![None; s.held as usize],
            held_len: 0,
            stats: FragStats::default(),
        }
    }

    pub fn stats(&self) -> FragStats {
        self.stats
    }

    /// Datagrams whose verdict is remembered now.
    pub fn datagrams(&self) -> usize {
        self.records.len()
    }

    /// Followers held now.
    pub fn held(&self) -> usize {
        self.held_len
    }

    /// Forgets every held follower without releasing it: their handles
    /// are no longer the caller's to pass on (the memory they name was
    /// replaced).
    pub fn forget_held(&mut self) {
        self.held.iter_mut().for_each(|h| *h = None);
        self.held_len = 0;
    }

    /// Records the verdict of a first fragment the caller judged
    /// (`allowed`), and releases the followers held for it through
    /// `release(handle, pass)`. Returns whether the first fragment itself
    /// passes: not if it is tiny, if the table is full, or if an earlier
    /// first fragment of the same datagram was judged otherwise (then the
    /// datagram is dropped from here on).
    pub fn first(&mut self, f: &Fragment, allowed: bool, now: Now, release: impl FnMut(H, bool)) -> bool {
        self.forget_expired(now);
        let allowed = if f.is_tiny() {
            self.stats.tiny += 1;
            false
        } else {
            allowed
        };
        let room = self.records.len() < self.s.datagrams as usize;
        let pass = match self.records.get_mut(&f.key) {
            Some(r) => {
                r.allowed &= allowed;
                r.allowed
            }
            None if room => {
                self.records.insert(f.key, Record { allowed, since: now });
                self.order.push_back((f.key, now));
                allowed
            }
            None => {
                self.stats.full += 1;
                false
            }
        };
        self.sweep_held(now, Some((f.key, pass)), release);
        pass
    }

    /// Decides a non-first fragment; `handle` is kept if it must wait.
    pub fn follower(&mut self, f: &Fragment, handle: H, now: Now) -> Follow {
        if f.overlaps_header() {
            self.stats.overlapping += 1;
            return Follow::Drop;
        }
        if let Some(r) = self.records.get(&f.key)
            && now.0.saturating_sub(r.since.0) < u64::from(self.s.datagram_ms)
        {
            return if r.allowed {
                self.stats.passed += 1;
                Follow::Pass
            } else {
                self.stats.denied += 1;
                Follow::Drop
            };
        }
        match self.held.iter_mut().find(|s| s.is_none()) {
            Some(slot) => {
                *slot = Some(Held { key: f.key, handle, since: now });
                self.held_len += 1;
                self.stats.held += 1;
                Follow::Held
            }
            None => {
                self.stats.full += 1;
                Follow::Drop
            }
        }
    }

    /// Drops held followers whose first fragment did not come within the
    /// hold time (through `release(handle, false)`), and forgets expired
    /// datagrams. Called once per poll-loop iteration; its work is bounded
    /// by the number of held followers plus the records that expire.
    pub fn expire(&mut self, now: Now, release: impl FnMut(H, bool)) {
        self.forget_expired(now);
        self.sweep_held(now, None, release);
    }

    /// Forgets the verdicts of datagrams older than `datagram_ms`.
    fn forget_expired(&mut self, now: Now) {
        while let Some(&(key, since)) = self.order.front() {
            if now.0.saturating_sub(since.0) < u64::from(self.s.datagram_ms) {
                break;
            }
            self.order.pop_front();
            self.records.remove(&key);
        }
    }

    /// One pass over the hold: followers past the hold time are dropped;
    /// with `judged = Some((key, pass))`, the followers of that datagram
    /// are released with its verdict.
    fn sweep_held(&mut self, now: Now, judged: Option<(FragKey, bool)>, mut release: impl FnMut(H, bool)) {
        if self.held_len == 0 {
            return;
        }
        for slot in &mut self.held {
            let Some(h) = slot else { continue };
            let verdict = if now.0.saturating_sub(h.since.0) >= u64::from(self.s.hold_ms) {
                self.stats.timed_out += 1;
                false
            } else if let Some((key, pass)) = judged
                && h.key == key
            {
                if pass {
                    self.stats.passed += 1;
                } else {
                    self.stats.denied += 1;
                }
                pass
            } else {
                continue;
            };
            release(h.handle, verdict);
            *slot = None;
            self.held_len -= 1;
        }
    }
}
