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

use std::collections::HashMap;
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

/// One field: interval starts, their rows, the rows and their aggregates.
///
/// Finding the interval of a value is a search among the starts, narrowed
/// first by the value's top bits: `index[b]..index[b + 1]` are the
/// intervals that start in bucket `b`. There are about as many buckets as
/// intervals, so a lookup compares one or two starts instead of a dozen.
#[derive(Clone, Debug)]
pub(crate) struct Field<T> {
    shift: u32,
    index: Vec<u32>,
    starts: Vec<T>,
    row_of: Vec<u32>,
    /// Row `r` is `rows[r * words..(r + 1) * words]`.
    rows: Vec<u64>,
    /// Aggregate of row `r` is `aggs[r * agg_words..(r + 1) * agg_words]`.
    aggs: Vec<u64>,
}

impl<T: Point> Field<T> {
    /// The row of `v`: its words and its aggregate.
    #[inline]
    fn row(&self, v: T, words: usize, agg_words: usize) -> (&[u64], &[u64]) {
        let b = v.bucket(self.shift);
        let lo = self.index.get(b).map_or(0, |&x| x as usize);
        let hi = self.index.get(b + 1).map_or(lo, |&x| x as usize);
        // Intervals starting in this bucket at or before `v`; if none, the
        // last one of an earlier bucket (starts[0] == T::MIN, bucket 0, so
        // there is always one).
        let n = self.starts.get(lo..hi).map_or(0, |s| s.partition_point(|&s| s <= v));
        let i = (lo + n).saturating_sub(1);
        let r = self.row_of.get(i).map_or(0, |&r| r as usize);
        let w = self.rows.get(r * words..(r + 1) * words).unwrap_or(&[]);
        let a = self.aggs.get(r * agg_words..(r + 1) * agg_words).unwrap_or(&[]);
        (w, a)
    }

    fn memory_bytes(&self) -> usize {
        self.index.len() * 4 + self.starts.len() * size_of::<T>() + self.row_of.len() * 4 + (self.rows.len() + self.aggs.len()) * 8
    }

    fn intervals(&self) -> usize {
        self.starts.len()
    }

    fn distinct_rows(&self) -> usize {
        self.row_of.iter().copied().max().map_or(0, |m| m as usize + 1)
    }
}

/// Builds a [`Field`] from, per rule, the intervals it matches.
pub(crate) fn build_field<T: Point>(per_rule: &[&[(T, T)]], words: usize, agg_words: usize) -> Field<T> {
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
    events.sort_unstable_by_key(|e| e.0);
    let mut counts = vec![0i32; per_rule.len()];
    let mut cur = vec![0u64; words];
    let mut ids: HashMap<Vec<u64>, u32> = HashMap::new();
    let mut f = Field { shift: 0, index: Vec::new(), starts: Vec::new(), row_of: Vec::new(), rows: Vec::new(), aggs: Vec::new() };
    let mut i = 0;
    let mut pos = T::MIN;
    loop {
        while i < events.len() && events[i].0 == pos {
            let (_, rule, d) = events[i];
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
        let next_id = u32::try_from(ids.len()).expect("fewer rows than intervals");
        let id = *ids.entry(cur.clone()).or_insert_with(|| {
            f.rows.extend_from_slice(&cur);
            let mut agg = vec![0u64; agg_words];
            for (w, &x) in cur.iter().enumerate() {
                if x != 0 {
                    agg[w / 64] |= 1 << (w % 64);
                }
            }
            f.aggs.extend_from_slice(&agg);
            next_id
        });
        if f.row_of.last() != Some(&id) {
            f.starts.push(pos);
            f.row_of.push(id);
        }
        match events.get(i) {
            Some(e) => pos = e.0,
            None => break,
        }
    }
    // About one interval per bucket.
    let bits = (usize::BITS - f.starts.len().leading_zeros()).clamp(1, MAX_BUCKET_BITS.min(T::BITS));
    f.shift = T::BITS - bits;
    let buckets = 1usize << bits;
    f.index =
        (0..=buckets).map(|b| u32::try_from(f.starts.partition_point(|s| s.bucket(f.shift) < b)).expect("intervals fit u32")).collect();
    f
}

/// Builds the field `get` picks out of every rule's constraints.
fn field_of<A, T: Point>(
    rules: &[Constraints<A>],
    get: impl Fn(&Constraints<A>) -> &Vec<(T, T)>,
    words: usize,
    agg_words: usize,
) -> Field<T> {
    let per: Vec<&[(T, T)]> = rules.iter().map(|c| get(c).as_slice()).collect();
    build_field(&per, words, agg_words)
}

/// The bit-vector table of one IP family: six fields over the same rules.
#[derive(Clone, Debug)]
pub(crate) struct Bits<A> {
    /// Bit `i` is entry `entry[i]` of the owning table.
    pub(crate) entry: Vec<u32>,
    words: usize,
    agg_words: usize,
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
const FIELDS: usize = 6;

impl<A: Point> Bits<A> {
    /// `rules[i]` is bit `i`, entry `entry[i]`.
    pub(crate) fn build(rules: &[Constraints<A>], entry: Vec<u32>) -> Bits<A> {
        let words = rules.len().div_ceil(64).max(1);
        let agg_words = words.div_ceil(64);
        let remote = field_of(rules, |c| &c.remote, words, agg_words);
        let local = field_of(rules, |c| &c.local, words, agg_words);
        let proto = field_of(rules, |c| &c.proto, words, agg_words);
        let dst_port = field_of(rules, |c| &c.dst_port, words, agg_words);
        let src_port = field_of(rules, |c| &c.src_port, words, agg_words);
        let icmp = field_of(rules, |c| &c.icmp, words, agg_words);
        let mut b = Bits { entry, words, agg_words, remote, local, proto, dst_port, src_port, icmp, active: 0 };
        let counts = [
            b.remote.intervals(),
            b.local.intervals(),
            b.proto.intervals(),
            b.dst_port.intervals(),
            b.src_port.intervals(),
            b.icmp.intervals(),
        ];
        for (i, n) in counts.into_iter().enumerate() {
            // One interval means one row for every value: every rule in it,
            // or (no rules) none, which the empty `entry` already says.
            if n > 1 {
                b.active |= 1 << i;
            }
        }
        b
    }

    /// The rows of `k` in the active fields.
    #[inline]
    fn rows(&self, k: &FamilyKey<A>) -> ([&[u64]; FIELDS], [&[u64]; FIELDS], usize) {
        let (w, a) = (self.words, self.agg_words);
        let found: [Option<(&[u64], &[u64])>; FIELDS] = [
            (self.active & 1 != 0).then(|| self.remote.row(k.remote, w, a)),
            (self.active & 2 != 0).then(|| self.local.row(k.local, w, a)),
            (self.active & 4 != 0).then(|| self.proto.row(k.proto, w, a)),
            (self.active & 8 != 0).then(|| self.dst_port.row(k.dst_port, w, a)),
            (self.active & 16 != 0).then(|| self.src_port.row(k.src_port, w, a)),
            (self.active & 32 != 0).then(|| self.icmp.row(k.icmp, w, a)),
        ];
        let mut rows: [&[u64]; FIELDS] = [&[]; FIELDS];
        let mut aggs: [&[u64]; FIELDS] = [&[]; FIELDS];
        let mut n = 0;
        for (r, g) in found.into_iter().flatten() {
            rows[n] = r;
            aggs[n] = g;
            n += 1;
        }
        (rows, aggs, n)
    }

    /// The lowest-numbered rule matching `k`, as an entry index.
    #[inline]
    pub(crate) fn lookup(&self, k: &FamilyKey<A>) -> Option<u32> {
        if self.entry.is_empty() {
            return None;
        }
        let (rows, aggs, n) = self.rows(k);
        let (rows, aggs) = (&rows[..n], &aggs[..n]);
        for a in 0..self.agg_words {
            let mut m = aggs.iter().fold(u64::MAX, |m, g| m & g.get(a).copied().unwrap_or(0));
            while m != 0 {
                let w = a * 64 + m.trailing_zeros() as usize;
                let x = rows.iter().fold(u64::MAX, |x, r| x & r.get(w).copied().unwrap_or(0));
                if x != 0 {
                    let bit = w * 64 + x.trailing_zeros() as usize;
                    return self.entry.get(bit).copied();
                }
                m &= m - 1;
            }
        }
        None
    }

    pub(crate) fn memory_bytes(&self) -> usize {
        self.entry.len() * 4
            + self.remote.memory_bytes()
            + self.local.memory_bytes()
            + self.proto.memory_bytes()
            + self.dst_port.memory_bytes()
            + self.src_port.memory_bytes()
            + self.icmp.memory_bytes()
    }

    /// (intervals, distinct rows) of the remote address field.
    pub(crate) fn remote_shape(&self) -> (usize, usize) {
        (self.remote.intervals(), self.remote.distinct_rows())
    }
}
