// SPDX-License-Identifier: MIT OR Apache-2.0
//! The lookup speed-up of [`BusArray`](super::BusArray): each entry's comparison key, precomputed,
//! and, for arrays of [`TABLE_MIN_DEVS`] entries or more, tables of what
//! `kvm_io_bus_get_first_dev` answers for every address at the access lengths guests use. None
//! of this is in the kernel, which runs its probes on every access; the answers are the same
//! (`tests::answer_tables_give_the_probed_answer` in the parent module), so the code that mirrors
//! the kernel can read as the kernel's does.

use super::linux_bsearch;

/// An entry's side of `kvm_io_bus_cmp(access, entry)`, precomputed: its start, the value the
/// access's end is compared with (its end, or its start for a len-0 entry), and whether the
/// access's len counts (not for a len-0 entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct CmpKey {
    pub(super) addr: u64,
    pub(super) bound: u64,
    pub(super) len_mask: u64,
}

impl CmpKey {
    pub(super) fn new(addr: u64, len: i32) -> Self {
        if len != 0 {
            CmpKey { addr, bound: addr.wrapping_add(len as i64 as u64), len_mask: u64::MAX }
        } else {
            CmpKey { addr, bound: addr, len_mask: 0 }
        }
    }

    /// `kvm_io_bus_cmp((addr, len), entry)` with `ext` the access's len sign-extended.
    #[inline]
    pub(super) fn cmp_access(&self, addr: u64, ext: u64) -> i32 {
        let below = (addr < self.addr) as i32;
        let above = (addr.wrapping_add(ext & self.len_mask) > self.bound) as i32;
        above - (below * (1 + above))
    }
}

/// `kvm_io_bus_get_first_dev` over the entries' keys: Linux's bsearch, then the walk back.
pub(super) fn probe_first_dev(keys: &[CmpKey], addr: u64, len: i32) -> Option<usize> {
    let ext = len as i64 as u64;
    let mut off = linux_bsearch(keys.len(), |i| keys[i].cmp_access(addr, ext))?;
    while off > 0 && keys[off - 1].cmp_access(addr, ext) == 0 {
        off -= 1;
    }
    Some(off)
}

/// The access lengths [`BusArray::get_first_dev`](super::BusArray::get_first_dev) answers from a table: FAST_MMIO's 0 and the
/// lengths of x86 MMIO and PIO accesses.
pub const TABLED_LENS: [i32; 5] = [0, 1, 2, 4, 8];

/// The fewest entries for which an array builds its answer tables. Building costs a probed lookup
/// at up to three points per entry and length on every publication; below this size the probes
/// take at most four steps, and the arrays the checkers build (a few entries, published on every
/// registration) would pay the building for nothing.
pub const TABLE_MIN_DEVS: usize = 16;

/// The answers of [`BusArray::get_first_dev_probed`](super::BusArray::get_first_dev_probed) for one access length over the whole
/// address space: `answers[i]` holds for every address from `starts[i]` up to the next start.
/// A bucket index over the span where the starts lie (below 2^63; above lie the points where an
/// access's end wraps) narrows the search for an address to the few starts of its bucket.
///
/// The answer can change only where one of the comparisons the probes make changes: where the
/// address reaches an entry's start, where the access's end passes an entry's bound, and where the
/// access's end wraps around. Between two such points every comparison, and so every probe and
/// the walk back, comes out the same, so the probed answer at each point is the answer of the
/// whole interval it starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct AnswerTable {
    pub(super) starts: Vec<u64>,
    /// The entry index, or `u32::MAX` for none.
    answers: Vec<u32>,
    /// Bucket `b` covers the addresses from `lo + (b << shift)` up to the next bucket's; its
    /// first address lies in interval `index[b]`, its last in interval `index[b + 1]` or before.
    index: Vec<u32>,
    lo: u64,
    hi: u64,
    shift: u32,
}

impl AnswerTable {
    pub(super) fn build(keys: &[CmpKey], len: i32) -> Self {
        let ext = len as i64 as u64;
        let mut points = Vec::with_capacity(3 * keys.len() + 1);
        points.push(0);
        for k in keys {
            let e = ext & k.len_mask;
            points.push(k.addr);
            points.push(k.bound.wrapping_add(1).wrapping_sub(e));
            points.push(e.wrapping_neg());
        }
        points.sort_unstable();
        points.dedup();
        let mut table =
            AnswerTable { starts: Vec::new(), answers: Vec::new(), index: Vec::new(), lo: 0, hi: 0, shift: 0 };
        for p in points {
            let answer = probe_first_dev(keys, p, len).map_or(u32::MAX, |i| i as u32);
            if table.answers.last() != Some(&answer) {
                table.starts.push(p);
                table.answers.push(answer);
            }
        }
        table.build_index();
        table
    }

    /// The interval holding `addr`, by binary search over every start.
    fn interval(&self, addr: u64) -> usize {
        // starts[0] is 0, so at least one start is <= addr
        self.starts.partition_point(|&s| s <= addr) - 1
    }

    fn build_index(&mut self) {
        let n = self.starts.len();
        self.lo = self.starts.get(1).copied().unwrap_or(0);
        self.hi = self.starts.iter().copied().filter(|&s| s < 1 << 63).max().unwrap_or(0).max(self.lo);
        let buckets = n.next_power_of_two() as u64;
        self.shift = (0..64).find(|&s| (self.hi - self.lo) >> s < buckets).unwrap_or(63);
        let count = ((self.hi - self.lo) >> self.shift) as usize + 1;
        self.index =
            (0..=count).map(|b| self.interval(self.lo.saturating_add((b as u64) << self.shift)) as u32).collect();
    }

    #[inline]
    pub(super) fn answer(&self, addr: u64) -> Option<usize> {
        let i = if addr < self.lo {
            0
        } else if addr <= self.hi {
            let b = ((addr - self.lo) >> self.shift) as usize;
            let (first, last) = (self.index[b] as usize, self.index[b + 1] as usize);
            first + self.starts[first + 1..=last].partition_point(|&s| s <= addr)
        } else {
            self.interval(addr)
        };
        let a = self.answers[i];
        (a != u32::MAX).then_some(a as usize)
    }
}
