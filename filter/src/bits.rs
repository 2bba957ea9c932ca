//! The bit-vector engine: per field, elementary intervals and the set of
//! rules matching each, as bit vectors; a lookup ANDs one row per field and
//! takes the lowest set bit (rules are numbered in match order).
//!
//! # Design
//! - A field is a sorted array of interval starts (the first is the field's
//!   minimum, so every value falls in one interval) and, per interval, the id
//!   of a row. Identical rows are stored once: most intervals of an address
//!   field carry the same few rule sets (the "covered by no specific prefix"
//!   set recurs between every pair of prefixes).
//! - Each row has an *aggregate*: bit `i` says whether word `i` of the row is
//!   non-zero. A lookup first ANDs the aggregates, and only looks at the
//!   words whose aggregate bit survives, in order; the first non-zero AND of
//!   words holds the answer. At 1,000 rules a row is 16 words and its
//!   aggregate one word.
//! - Fields whose every rule is a wildcard are left out of the AND.
//! - Building is a sweep over interval end points with a count per rule
//!   (a rule may cover a field with several, possibly overlapping, intervals:
//!   the members of a group, the entries of a prefix list).

use hashbrown::HashMap;
use std::hash::Hash;

/// A field value: one of the integer types the key is made of.
pub(crate) trait Point: Copy + Ord + Hash + std::fmt::Debug {
    const MIN: Self;
    const MAX: Self;
    const BITS: u32;
    fn succ(self) -> Self;
    /// The value's top bits: `self >> shift`, which fits `usize` for the
    /// shifts [`Field`] uses (at most [`MAX_BUCKET_BITS`] bits remain).
    fn bucket(self, shift: u32) -> usize;
}

macro_rules! point {
    ($($t:ty),*) => {$(
        impl Point for $t {
            const MIN: Self = <$t>::MIN;
            const MAX: Self = <$t>::MAX;
            const BITS: u32 = <$t>::BITS;
            fn succ(self) -> Self {
                self + 1
            }
            #[allow(clippy::cast_possible_truncation, reason = "at most MAX_BUCKET_BITS bits remain after the shift (u128 only)")]
            fn bucket(self, shift: u32) -> usize {
                (self >> shift) as usize
            }
        }
    )*};
}

/// The largest bucket index a field keeps: 2^16 buckets (256 KB) at most.
const MAX_BUCKET_BITS: u32 = 16;
point!(u16, u32, u128);

/// The most starts a bucket's search reads one by one.
const SCAN: usize = 8;

/// One field: interval starts and, per interval, where its row starts in the
/// owning [`Bits`]' row arena.
///
/// Finding the interval of a value is a search among the starts, narrowed
/// first by the value's top bits: `index[b]..index[b + 1]` are the
/// intervals that start in bucket `b`. There are about as many buckets as
/// intervals, so a lookup compares one or two starts instead of a dozen.
#[derive(Clone, Debug)]
pub(crate) struct Field<T> {
    shift: u32,
    index: Vec<u32>,
    /// (interval start, row offset); the first start is `T::MIN`.
    ivs: Vec<(T, u32)>,
    distinct_rows: usize,
    /// Where this field's rows are in the arena (each field appends its
    /// own, one after the other).
    rows: std::ops::Range<u32>,
}

impl<T: Point> Field<T> {
    /// The arena offset of the row of `v`.
    #[inline]
    fn locate(&self, v: T) -> usize {
        let b = v.bucket(self.shift);
        let lo = self.index.get(b).map_or(0, |&x| x as usize);
        let hi = self.index.get(b + 1).map_or(lo, |&x| x as usize);
        // Intervals starting in this bucket at or before `v`; if none, the
        // last one of an earlier bucket (ivs[0] starts at T::MIN, in bucket
        // 0, so there is always one).
        let n = self.ivs.get(lo..hi).map_or(0, |s| {
            // A bucket holds a start or two, more only where starts crowd:
            // a few compares without branches beat a binary search's loop.
            if s.len() <= SCAN { s.iter().map(|&(s, _)| usize::from(s <= v)).sum() } else { s.partition_point(|&(s, _)| s <= v) }
        });
        self.ivs.get((lo + n).saturating_sub(1)).map_or(0, |&(_, off)| off as usize)
    }

    fn memory_bytes(&self) -> usize {
        self.index.len() * 4 + self.ivs.len() * size_of::<(T, u32)>()
    }

    fn intervals(&self) -> usize {
        self.ivs.len()
    }

    /// This field (its rows in `from`) as a field of the arena `to`: its
    /// rows appended there, its offsets moved with them.
    fn moved(&self, from: &[u64], to: &mut Vec<u64>) -> Field<T> {
        let base = u32::try_from(to.len()).expect("row arena under 2^32 words");
        to.extend_from_slice(from.get(self.rows.start as usize..self.rows.end as usize).unwrap_or(&[]));
        let ivs = self.ivs.iter().map(|&(s, off)| (s, off - self.rows.start + base)).collect();
        let end = u32::try_from(to.len()).expect("row arena under 2^32 words");
        Field { shift: self.shift, index: self.index.clone(), ivs, distinct_rows: self.distinct_rows, rows: base..end }
    }
}

/// Builds a [`Field`] from, per rule, the intervals it matches, appending
/// its distinct rows (each `[aggregate words…, words…]`) to `arena`.
fn build_field<T: Point>(per_rule: &[&[(T, T)]], words: usize, agg_words: usize, arena: &mut Vec<u64>) -> Field<T> {
    let first = u32::try_from(arena.len()).expect("row arena under 2^32 words");
    // (position, rule, +1 at a start / -1 after an end)
    let mut events: Vec<(T, u32, i32)> = Vec::new();
    for (rule, ivs) in (0u32..).zip(per_rule) {
        for &(lo, hi) in *ivs {
            events.push((lo, rule, 1));
            if hi < T::MAX {
                events.push((hi.succ(), rule, -1));
            }
        }
    }
    // Stable: the events come as one sorted run per rule (a group's
    // members are sorted), which a merging sort takes in linear time per run.
    events.sort_by_key(|e| e.0);
    let mut counts = vec![0i32; per_rule.len()];
    let mut cur = vec![0u64; words];
    let mut offsets: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut ivs: Vec<(T, u32)> = Vec::new();
    let mut i = 0;
    let mut pos = T::MIN;
    loop {
        while let Some(&(at, rule, d)) = events.get(i)
            && at == pos
        {
            let c = &mut counts[rule as usize];
            *c += d;
            let bit = 1u64 << (rule % 64);
            if *c > 0 {
                cur[rule as usize / 64] |= bit
            } else {
                cur[rule as usize / 64] &= !bit
            }
            i += 1;
        }
        // Most positions repeat a row seen before: looked up without a copy.
        let off = if let Some(&off) = offsets.get(cur.as_slice()) {
            off
        } else {
            let off = u32::try_from(arena.len()).expect("row arena under 2^32 words");
            let mut agg = vec![0u64; agg_words];
            for (w, &x) in cur.iter().enumerate() {
                if x != 0 {
                    agg[w / 64] |= 1 << (w % 64);
                }
            }
            arena.extend_from_slice(&agg);
            arena.extend_from_slice(&cur);
            offsets.insert(cur.clone(), off);
            off
        };
        if ivs.last().map(|l| l.1) != Some(off) {
            ivs.push((pos, off));
        }
        match events.get(i) {
            Some(e) => pos = e.0,
            None => break,
        }
    }
    // About one interval per bucket.
    let bits = (usize::BITS - ivs.len().leading_zeros()).clamp(1, MAX_BUCKET_BITS.min(T::BITS));
    let shift = T::BITS - bits;
    // Bucket b starts at the first interval whose start is in bucket b or
    // later: one walk over the sorted intervals.
    let mut index = Vec::with_capacity((1usize << bits) + 1);
    let mut j = 0;
    for b in 0..=1usize << bits {
        while j < ivs.len() && ivs[j].0.bucket(shift) < b {
            j += 1;
        }
        index.push(u32::try_from(j).expect("intervals fit u32"));
    }
    let rows = first..u32::try_from(arena.len()).expect("row arena under 2^32 words");
    Field { shift, index, ivs, distinct_rows: offsets.len(), rows }
}

/// A field as built before: the rules it was built from, the field, and
/// the arena holding its rows.
type FieldBefore<'a, A, T> = (&'a [Constraints<A>], &'a Field<T>, &'a [u64]);

/// Builds the field `get` picks out of every rule's constraints, or takes
/// it from `before` (the same number of rules, the field of the table
/// before, and that table's arena) when every rule's intervals in it are
/// the same: a field is made of nothing else.
fn field_of<A, T: Point>(
    rules: &[Constraints<A>],
    get: impl Fn(&Constraints<A>) -> &Vec<(T, T)>,
    before: Option<FieldBefore<'_, A, T>>,
    words: usize,
    agg_words: usize,
    arena: &mut Vec<u64>,
) -> Field<T> {
    if let Some((old, field, rows)) = before
        && old.len() == rules.len()
        && old.iter().map(&get).eq(rules.iter().map(&get))
    {
        return field.moved(rows, arena);
    }
    let per: Vec<&[(T, T)]> = rules.iter().map(|c| get(c).as_slice()).collect();
    build_field(&per, words, agg_words, arena)
}

/// The bit-vector table of one IP family: six fields over the same rules.
#[derive(Clone, Debug)]
pub(crate) struct Bits<A> {
    /// Bit `i` is entry `entry[i]` of the owning table.
    pub(crate) entry: Vec<u32>,
    agg_words: usize,
    /// Every field's distinct rows, each `[aggregate words…, words…]`.
    rows: Vec<u64>,
    remote: Field<A>,
    local: Field<A>,
    proto: Field<u16>,
    dst_port: Field<u16>,
    src_port: Field<u16>,
    icmp: Field<u16>,
    /// Which fields take part in the AND (the others are all wildcards):
    /// bits in the order remote, local, proto, dst_port, src_port, icmp.
    active: u8,
}

/// A rule's constraints in one family, each as a list of intervals.
#[derive(Clone, Debug, Default)]
pub(crate) struct Constraints<A> {
    pub(crate) remote: Vec<(A, A)>,
    pub(crate) local: Vec<(A, A)>,
    pub(crate) proto: Vec<(u16, u16)>,
    pub(crate) dst_port: Vec<(u16, u16)>,
    pub(crate) src_port: Vec<(u16, u16)>,
    pub(crate) icmp: Vec<(u16, u16)>,
}

/// A key in one family's terms.
#[derive(Clone, Copy, Debug)]
pub(crate) struct FamilyKey<A> {
    pub(crate) remote: A,
    pub(crate) local: A,
    pub(crate) proto: u16,
    pub(crate) dst_port: u16,
    pub(crate) src_port: u16,
    pub(crate) icmp: u16,
}

/// How many fields a lookup ANDs at most.
pub(crate) const FIELDS: usize = 6;

/// Where a key's rows are: arena offsets of its active fields' rows.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Located {
    offs: [usize; FIELDS],
    n: usize,
}

impl<A: Point> Bits<A> {
    /// `rules[i]` is bit `i`, entry `entry[i]`. Every rule must have at
    /// least one interval in every field (a rule that cannot match is left
    /// out by the caller).
    ///
    /// With `before` (the rules of a table built before, and that table)
    /// every field whose inputs are the same is taken from it: a reload
    /// that changed one rule's ports builds the port fields again, not the
    /// address fields of a group's thousands of members.
    pub(crate) fn build_after(rules: &[Constraints<A>], entry: Vec<u32>, before: Option<(&[Constraints<A>], &Bits<A>)>) -> Bits<A> {
        debug_assert!(rules.iter().all(|c| !c.remote.is_empty() && !c.local.is_empty() && !c.proto.is_empty()));
        let words = rules.len().div_ceil(64).max(1);
        let agg_words = words.div_ceil(64);
        let mut rows = Vec::new();
        let was = |f: fn(&Bits<A>) -> &Field<A>| before.map(|(c, b)| (c, f(b), b.rows.as_slice()));
        let was16 = |f: fn(&Bits<A>) -> &Field<u16>| before.map(|(c, b)| (c, f(b), b.rows.as_slice()));
        let remote = field_of(rules, |c| &c.remote, was(|b| &b.remote), words, agg_words, &mut rows);
        let local = field_of(rules, |c| &c.local, was(|b| &b.local), words, agg_words, &mut rows);
        let proto = field_of(rules, |c| &c.proto, was16(|b| &b.proto), words, agg_words, &mut rows);
        let dst_port = field_of(rules, |c| &c.dst_port, was16(|b| &b.dst_port), words, agg_words, &mut rows);
        let src_port = field_of(rules, |c| &c.src_port, was16(|b| &b.src_port), words, agg_words, &mut rows);
        let icmp = field_of(rules, |c| &c.icmp, was16(|b| &b.icmp), words, agg_words, &mut rows);
        let counts =
            [remote.intervals(), local.intervals(), proto.intervals(), dst_port.intervals(), src_port.intervals(), icmp.intervals()];
        let mut active = 0;
        for (i, n) in counts.into_iter().enumerate() {
            // One interval means one row for every value: every rule in it,
            // or (no rules) none, which the empty `entry` already says.
            if n > 1 {
                active |= 1 << i;
            }
        }
        Bits { entry, agg_words, rows, remote, local, proto, dst_port, src_port, icmp, active }
    }

    /// Finds the rows of `k` in the active fields (the loads of a lookup
    /// that do not depend on each other).
    #[inline]
    pub(crate) fn locate(&self, k: &FamilyKey<A>) -> Located {
        let mut l = Located::default();
        let mut add = |off: usize| {
            if let Some(slot) = l.offs.get_mut(l.n) {
                *slot = off;
                l.n += 1;
            }
        };
        if self.active & 1 != 0 {
            add(self.remote.locate(k.remote));
        }
        if self.active & 2 != 0 {
            add(self.local.locate(k.local));
        }
        if self.active & 4 != 0 {
            add(self.proto.locate(k.proto));
        }
        if self.active & 8 != 0 {
            add(self.dst_port.locate(k.dst_port));
        }
        if self.active & 16 != 0 {
            add(self.src_port.locate(k.src_port));
        }
        if self.active & 32 != 0 {
            add(self.icmp.locate(k.icmp));
        }
        l
    }

    /// The lowest-numbered rule in all the located rows, as an entry index.
    #[inline]
    pub(crate) fn resolve(&self, l: &Located) -> Option<u32> {
        if self.entry.is_empty() {
            return None;
        }
        let offs = l.offs.get(..l.n).unwrap_or(&[]);
        let word = |at: usize| offs.iter().fold(u64::MAX, |x, &o| x & self.rows.get(o + at).copied().unwrap_or(0));
        for a in 0..self.agg_words {
            let mut m = word(a);
            while m != 0 {
                let w = a * 64 + m.trailing_zeros() as usize;
                let x = word(self.agg_words + w);
                if x != 0 {
                    return self.entry.get(w * 64 + x.trailing_zeros() as usize).copied();
                }
                m &= m - 1;
            }
        }
        None
    }

    /// The lowest-numbered rule matching `k`, as an entry index.
    #[inline]
    pub(crate) fn lookup(&self, k: &FamilyKey<A>) -> Option<u32> {
        self.resolve(&self.locate(k))
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.entry.len() * 4
            + self.rows.len() * 8
            + self.remote.memory_bytes()
            + self.local.memory_bytes()
            + self.proto.memory_bytes()
            + self.dst_port.memory_bytes()
            + self.src_port.memory_bytes()
            + self.icmp.memory_bytes()
    }

    /// (intervals, distinct rows) of the remote address field.
    pub(crate) fn remote_shape(&self) -> (usize, usize) {
        (self.remote.intervals(), self.remote.distinct_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::test_runner::TestCaseError;

    /// Builds a field of one rule per range (so that every interval is its
    /// own row) and checks that every start, its successor, the ends of the
    /// type and `extra` find the row a scan of the intervals finds: that of
    /// the last one starting at or before the value.
    fn agrees<T: Point>(ranges: &[(T, T)], extra: &[T]) -> Result<(), TestCaseError> {
        let per: Vec<&[(T, T)]> = ranges.iter().map(std::slice::from_ref).collect();
        let f = build_field(&per, ranges.len().div_ceil(64).max(1), 1, &mut Vec::new());
        let mut vs: Vec<T> = vec![T::MIN, T::MAX];
        for &(s, _) in &f.ivs {
            vs.push(s);
            if s < T::MAX {
                vs.push(s.succ());
            }
        }
        vs.extend_from_slice(extra);
        for v in vs {
            let scan = f.ivs.iter().rev().find(|iv| iv.0 <= v).map_or(usize::MAX, |iv| iv.1 as usize);
            prop_assert_eq!(f.locate(v), scan, "value {:?}", v);
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn a_port_finds_the_interval_it_lies_in(
            ranges in prop::collection::vec((any::<u16>(), any::<u16>()).prop_map(|(a, b)| (a.min(b), a.max(b))), 0..300),
            extra in prop::collection::vec(any::<u16>(), 50),
        ) {
            agrees(&ranges, &extra)?;
        }

        #[test]
        fn a_small_value_range_finds_its_interval(
            // Protocol numbers: every start below 256 of a 16-bit field.
            ranges in prop::collection::vec((0u16..256, 0u16..256).prop_map(|(a, b)| (a.min(b), a.max(b))), 1..20),
            extra in prop::collection::vec(any::<u16>(), 50),
        ) {
            agrees(&ranges, &extra)?;
        }

        #[test]
        fn an_address_finds_the_prefix_it_lies_in(
            v4 in prop::collection::vec((any::<u32>(), 0u32..33), 0..300),
            v6 in prop::collection::vec((any::<u128>(), 0u32..129), 0..100),
            extra4 in prop::collection::vec(any::<u32>(), 50),
            extra6 in prop::collection::vec(any::<u128>(), 50),
        ) {
            let host4 = |len: u32| u32::MAX.checked_shr(len).unwrap_or(0);
            let host6 = |len: u32| u128::MAX.checked_shr(len).unwrap_or(0);
            agrees(&v4.iter().map(|&(a, len)| (a & !host4(len), a | host4(len))).collect::<Vec<_>>(), &extra4)?;
            agrees(&v6.iter().map(|&(a, len)| (a & !host6(len), a | host6(len))).collect::<Vec<_>>(), &extra6)?;
        }
    }
}
