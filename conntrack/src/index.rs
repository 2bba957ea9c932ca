//! The connection table's index: entry numbers by key hash.
//!
//! # Design
//! Open addressing over *groups* of eight slots, one 64-byte cache line
//! each, probed linearly a group at a time (the layout of SwissTable and
//! hashbrown, with the bit tricks of hashbrown's portable version instead of
//! SIMD). A hash's low bits choose its home group; its top seven bits, with
//! the high bit set, are its one-byte *tag*. A group holds its eight tags in
//! one word (0: empty slot), so a lookup compares all eight with a handful
//! of word operations and no branch, and the first candidate's entry number
//! is in the same line. The key itself lives in the entry; the caller
//! confirms a candidate there.
//!
//! Why groups: with one slot per position, a lookup at half load finds its
//! key past the home slot about one time in three, and the branch that
//! decides it cannot be predicted: a batched hit with the table in cache
//! took 27.5 ns that way and takes 15.2 ns this way (`docs/design.md`).
//! Here a hit reads the home line and takes the same branches whatever the
//! neighbours, and a batch can guess every packet's entry from the home
//! line alone ([`Index::guess`]). One cost: a lookup made alone, not warmed
//! in a batch, is slower at a million entries than it was with one slot
//! per position, though it reads as many lines and runs as many
//! instructions; the datapath tracks in batches.
//!
//! # Invariants
//! - An entry sits in the first group, from its home on, that had a free
//!   slot when it was placed, and every group from its home up to its own is
//!   full. So a lookup stops at the first group with an empty slot.
//! - At most half the slots are used (the table's capacity is half the
//!   index; checked in debug builds), so every probe meets a group with an
//!   empty slot.
//! - Removal shifts back, a group at a time, the entries whose probe
//!   sequence crossed the freed slot's group (the group-wise form of the
//!   backward-shift deletion of linear probing), so there are no tombstones
//!   and nothing degrades as flows come and go.
//! - Each slot records how many groups past its home it sits (up to 254;
//!   255 means "at least that far", and the caller's hash of the entry tells
//!   the home): removal needs the homes of the entries it may shift.

use crate::mem;

/// Slots per group.
const WIDTH: usize = 8;

/// The displacement stored for entries [`SAT`] or more groups from home.
const SAT: u8 = u8::MAX;

const LO7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
const HI: u64 = 0x8080_8080_8080_8080;
const ONES: u64 = 0x0101_0101_0101_0101;

/// Eight slots in one cache line.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Group {
    /// Slot `k`'s tag: 0 for an empty slot, else 0x80 | the hash's top
    /// seven bits. Read as one little-endian word ([`Group::word`]).
    tags: [u8; WIDTH],
    /// Slot `k`: groups past its home, [`SAT`] for that many or more.
    disp: [u8; WIDTH],
    /// Slot `k`'s entry number.
    ids: [u32; WIDTH],
}

impl Group {
    /// The eight tags as one word, slot `k` in byte `k`.
    #[inline]
    fn word(&self) -> u64 {
        u64::from_le_bytes(self.tags)
    }
}

/// The tag of a hash: its top seven bits, high bit set (never 0).
fn tag_of(h: u64) -> u8 {
    0x80 | (h >> 57) as u8
}

/// The high bit of each byte of `tags` that equals `tag`, exactly (no false
/// positives, unlike the borrowing zero-byte test, because each byte's low
/// seven bits are added without carrying into the next).
fn matches(tags: u64, tag: u8) -> u64 {
    let x = tags ^ (ONES * u64::from(tag));
    !(((x & LO7) + LO7) | x) & HI
}

/// The high bit of each empty slot's byte (occupied tags have it set).
fn empties(tags: u64) -> u64 {
    !tags & HI
}

/// The slot of the lowest byte whose high bit is set in `bits` (not 0; the
/// mask only tells the compiler the slot is below [`WIDTH`]).
fn lowest(bits: u64) -> usize {
    (bits.trailing_zeros() / 8) as usize & (WIDTH - 1)
}

/// The bounded index (see the module documentation).
#[derive(Debug)]
pub(crate) struct Index {
    groups: Vec<Group>,
    mask: usize,
    len: usize,
}

impl Index {
    /// An empty index of at least `slots` slots (a power of two groups, at
    /// least two).
    pub(crate) fn new(slots: usize) -> Index {
        let n = slots.div_ceil(WIDTH).max(2).next_power_of_two();
        Index { groups: mem::filled(n, Group::default()), mask: n - 1, len: 0 }
    }

    /// Bytes an index of at least `slots` slots holds.
    pub(crate) fn bytes_for(slots: usize) -> usize {
        slots.div_ceil(WIDTH).max(2).next_power_of_two() * size_of::<Group>()
    }

    /// How many slots there are.
    pub(crate) fn slots(&self) -> usize {
        self.groups.len() * WIDTH
    }

    /// Bytes of memory the index holds.
    pub(crate) fn bytes(&self) -> usize {
        self.groups.len() * size_of::<Group>()
    }

    #[expect(clippy::cast_possible_truncation, reason = "the home group is the low bits of the hash")]
    fn home(&self, h: u64) -> usize {
        (h as usize) & self.mask
    }

    /// Groups from `a` forward to `b`.
    fn dist(&self, a: usize, b: usize) -> usize {
        b.wrapping_sub(a) & self.mask
    }

    /// Brings `h`'s home group into the cache.
    #[inline]
    pub(crate) fn prefetch(&self, h: u64) {
        mem::prefetch(&self.groups[self.home(h)]);
    }

    /// The entry of the first slot of `h`'s home group with `h`'s tag: most
    /// often `h`'s entry, if it has one, but only a guess (another hash's
    /// entry with the same tag, or none when the entry overflowed its home
    /// group). One line read, no branch on the neighbours.
    #[inline]
    pub(crate) fn guess(&self, h: u64) -> Option<u32> {
        let g = &self.groups[self.home(h)];
        let m = matches(g.word(), tag_of(h));
        (m != 0).then(|| g.ids[lowest(m)])
    }

    /// The entry, among those indexed under `h`, that `is` accepts.
    #[inline]
    pub(crate) fn find(&self, h: u64, is: impl FnMut(u32) -> bool) -> Option<u32> {
        self.locate(h, is).map(|(g, k)| self.groups[g].ids[k])
    }

    /// The slot (group, slot in it) of the entry, among those indexed under
    /// `h`, that `is` accepts.
    #[inline]
    fn locate(&self, h: u64, mut is: impl FnMut(u32) -> bool) -> Option<(usize, usize)> {
        let tag = tag_of(h);
        let mut g = self.home(h);
        loop {
            let grp = &self.groups[g];
            let mut m = matches(grp.word(), tag);
            while m != 0 {
                let k = lowest(m);
                if is(grp.ids[k]) {
                    return Some((g, k));
                }
                m &= m - 1;
            }
            if empties(grp.word()) != 0 {
                return None;
            }
            g = (g + 1) & self.mask;
        }
    }

    /// Indexes entry `id` under `h`. The caller keeps at most half the slots
    /// in use (the table's capacity is half its index), so a group with an
    /// empty slot ends the search.
    pub(crate) fn insert(&mut self, h: u64, id: u32) {
        debug_assert!(self.len < self.slots() / 2, "the index is at most half full");
        let mut g = self.home(h);
        let mut d = 0usize;
        loop {
            let e = empties(self.groups[g].word());
            if e != 0 {
                self.set(g, lowest(e), tag_of(h), d, id);
                self.len += 1;
                return;
            }
            g = (g + 1) & self.mask;
            d += 1;
        }
    }

    /// Writes slot `k` of group `g`: `tag`, `d` groups from home, entry `id`.
    fn set(&mut self, g: usize, k: usize, tag: u8, d: usize, id: u32) {
        let grp = &mut self.groups[g];
        grp.tags[k] = tag;
        grp.disp[k] = u8::try_from(d).unwrap_or(SAT);
        grp.ids[k] = id;
    }

    /// The home group of the entry in slot `k` of group `g`.
    fn home_at(&self, g: usize, k: usize, hash_of: &impl Fn(u32) -> u64) -> usize {
        let grp = &self.groups[g];
        match grp.disp[k] {
            SAT => self.home(hash_of(grp.ids[k])),
            d => g.wrapping_sub(usize::from(d)) & self.mask,
        }
    }

    /// Removes entry `id`, indexed under `h`; `hash_of` gives the hash of
    /// any indexed entry (asked only for entries [`SAT`] or more groups from
    /// home). An entry that is not indexed is left alone.
    pub(crate) fn remove(&mut self, h: u64, id: u32, hash_of: impl Fn(u32) -> u64) {
        let Some((mut g, mut k)) = self.locate(h, |x| x == id) else {
            debug_assert!(false, "entry {id} is not indexed");
            return;
        };
        // The hole is (g, k), still holding what it held. If its group has
        // another empty slot, no entry's probe sequence relies on the group
        // being full; otherwise the first later entry whose sequence crosses
        // the group moves into the hole, and its own slot is the new hole.
        'hole: while empties(self.groups[g].word()) == 0 {
            let mut j = g;
            loop {
                j = (j + 1) & self.mask;
                let tags = self.groups[j].word();
                let mut occupied = tags & HI;
                while occupied != 0 {
                    let s = lowest(occupied);
                    let home = self.home_at(j, s, &hash_of);
                    if self.dist(home, j) >= self.dist(g, j) {
                        let (tag, id) = (self.groups[j].tags[s], self.groups[j].ids[s]);
                        self.set(g, k, tag, self.dist(home, g), id);
                        (g, k) = (j, s);
                        continue 'hole;
                    }
                    occupied &= occupied - 1;
                }
                if empties(tags) != 0 {
                    break 'hole;
                }
            }
        }
        self.set(g, k, 0, 0, 0);
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Checks the invariants against `model` (entry -> hash): every entry
    /// is found, sits where its probe sequence allows, with its true
    /// displacement; nothing else is indexed.
    fn check(ix: &Index, model: &HashMap<u32, u64>) {
        let mut seen = 0;
        for g in 0..ix.groups.len() {
            let grp = &ix.groups[g];
            for k in 0..WIDTH {
                if grp.tags[k] & 0x80 == 0 {
                    assert_eq!(grp.tags[k], 0, "an empty slot's byte is 0");
                    continue;
                }
                seen += 1;
                let id = grp.ids[k];
                let h = *model.get(&id).unwrap_or_else(|| panic!("entry {id} indexed but removed"));
                assert_eq!(grp.tags[k], tag_of(h));
                let home = ix.home(h);
                let d = ix.dist(home, g);
                assert_eq!(grp.disp[k], u8::try_from(d).unwrap_or(SAT), "entry {id}'s displacement");
                for between in 0..d {
                    let b = (home + between) & ix.mask;
                    assert_eq!(empties(ix.groups[b].word()), 0, "entry {id}: group {b} on its way from home {home} to {g} has room");
                }
            }
        }
        assert_eq!(seen, model.len());
        assert_eq!(ix.len, model.len());
        for (&id, &h) in model {
            assert_eq!(ix.find(h, |x| x == id), Some(id), "entry {id} not found");
        }
    }

    #[test]
    fn matches_finds_exactly_the_equal_bytes() {
        // Every tag against words built to tempt the carry: neighbours
        // equal to the tag, its xor with 1, 0 and 0x80.
        for tag in 0x80..=0xffu8 {
            for pattern in 0..4u32.pow(4) {
                let mut bytes = [0u8; 8];
                for (i, b) in bytes.iter_mut().enumerate() {
                    *b = match (pattern >> (2 * (i % 4))) & 3 {
                        0 => tag,
                        1 => tag ^ 1,
                        2 => 0,
                        _ => 0x80,
                    };
                }
                let want = bytes.iter().enumerate().fold(0u64, |m, (i, &b)| if b == tag { m | 0x80 << (8 * i) } else { m });
                assert_eq!(matches(u64::from_le_bytes(bytes), tag), want, "tag {tag:#x} in {bytes:x?}");
            }
        }
    }

    #[test]
    fn entries_found_past_a_full_home_group_and_kept_after_removals() {
        let mut ix = Index::new(64);
        let mut model = HashMap::new();
        // Ten entries with home group 0 (low bits 0): the eleventh slot is
        // in group 1; two more with home 1 land after them.
        for id in 0..10u32 {
            let h = u64::from(id) << 57 | 0x100;
            ix.insert(h, id);
            model.insert(id, h);
        }
        for id in 10..12u32 {
            let h = u64::from(id) << 57 | 0x101;
            ix.insert(h, id);
            model.insert(id, h);
        }
        check(&ix, &model);
        // Removing from the full home group pulls an overflowed entry back.
        for id in [3, 0, 9, 10] {
            ix.remove(model[&id], id, |x| model[&x]);
            model.remove(&id);
            check(&ix, &model);
        }
        assert_eq!(ix.find(5 << 57 | 0x100, |x| x == 3), None);
    }

    #[test]
    fn entries_hundreds_of_groups_from_home_still_find_their_home_on_removal() {
        // One home for all: a run of 2,400 entries over 300 groups, most of
        // them past the displacement a slot can record.
        let mut ix = Index::new(8 * 1024);
        let mut model = HashMap::new();
        for id in 0..2_400u32 {
            let h = u64::from(id) << 40 | 0x3fc; // home group 1020, wrapping
            ix.insert(h, id);
            model.insert(id, h);
        }
        check(&ix, &model);
        for id in (0..2_400u32).step_by(7) {
            ix.remove(model[&id], id, |x| model[&x]);
            model.remove(&id);
        }
        check(&ix, &model);
    }

    proptest! {
        /// Random insertions and removals, hashes crowded onto a few homes
        /// or spread, against a map: the invariants hold after every step.
        #[test]
        fn the_index_agrees_with_a_map(ops in proptest::collection::vec((any::<bool>(), 0u32..200, any::<u64>(), 0u64..6), 1..400)) {
            let mut ix = Index::new(512);
            let mut model: HashMap<u32, u64> = HashMap::new();
            for (insert, id, h, home) in ops {
                if insert && !model.contains_key(&id) {
                    // Half the hashes share six home groups (long runs).
                    let h = if h & 1 == 0 { h & !0x3f | home } else { h };
                    ix.insert(h, id);
                    model.insert(id, h);
                } else if let Some(h) = model.remove(&id) {
                    ix.remove(h, id, |x| model[&x]);
                }
                check(&ix, &model);
            }
        }
    }
}
