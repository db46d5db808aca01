//! Sets of integers (addresses, ports) as sorted inclusive intervals, and their split into
//! prefixes for the policy tables.

/// A set of integers: sorted, disjoint, non-adjacent inclusive intervals.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub(super) struct Ranges(Vec<(u128, u128)>);

impl Ranges {
    /// The empty set.
    pub(super) const EMPTY: Ranges = Ranges(Vec::new());

    /// Every integer from 0 to `max`.
    pub(super) fn full(max: u128) -> Self {
        Self(vec![(0, max)])
    }

    /// One interval.
    pub(super) fn span(lo: u128, hi: u128) -> Self {
        Self(vec![(lo, hi)])
    }

    /// The union of intervals given in any order.
    pub(super) fn from_spans(spans: impl IntoIterator<Item = (u128, u128)>) -> Self {
        let mut spans: Vec<(u128, u128)> = spans.into_iter().collect();
        spans.sort_unstable();
        let mut merged: Vec<(u128, u128)> = Vec::with_capacity(spans.len());
        for (lo, hi) in spans {
            match merged.last_mut() {
                Some(last) if lo <= last.1.saturating_add(1) => last.1 = last.1.max(hi),
                _ => merged.push((lo, hi)),
            }
        }
        Self(merged)
    }

    /// The intervals, in order.
    pub(super) fn spans(&self) -> &[(u128, u128)] {
        &self.0
    }

    pub(super) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(super) fn contains(&self, value: u128) -> bool {
        let after = self.0.partition_point(|&(lo, _)| lo <= value);
        after > 0 && self.0[after - 1].1 >= value
    }

    pub(super) fn union(&self, other: &Ranges) -> Ranges {
        Ranges::from_spans(self.0.iter().chain(&other.0).copied())
    }

    pub(super) fn intersect(&self, other: &Ranges) -> Ranges {
        let (mut i, mut j) = (0, 0);
        let mut out = Vec::new();
        while i < self.0.len() && j < other.0.len() {
            let (a, b) = (self.0[i], other.0[j]);
            let (lo, hi) = (a.0.max(b.0), a.1.min(b.1));
            if lo <= hi {
                out.push((lo, hi));
            }
            if a.1 < b.1 {
                i += 1;
            } else {
                j += 1;
            }
        }
        Ranges(out)
    }

    /// The integers from 0 to `max` not in the set.
    pub(super) fn complement(&self, max: u128) -> Ranges {
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut next = Some(0u128);
        for &(lo, hi) in &self.0 {
            if let Some(start) = next
                && start < lo
            {
                out.push((start, lo - 1));
            }
            next = hi.checked_add(1);
        }
        if let Some(start) = next
            && start <= max
        {
            out.push((start, max));
        }
        Ranges(out)
    }

    /// `self` minus `other`, within 0 to `max`.
    pub(super) fn subtract(&self, other: &Ranges, max: u128) -> Ranges {
        if other.is_empty() {
            self.clone()
        } else {
            self.intersect(&other.complement(max))
        }
    }
}

/// The largest value of a `width`-bit integer.
pub(super) fn max_of(width: u8) -> u128 {
    if width >= 128 {
        u128::MAX
    } else {
        (1u128 << width) - 1
    }
}

/// The prefixes (value, prefix length) that exactly cover `lo..=hi` of a `width`-bit space,
/// fewest first-to-last.
pub(super) fn prefixes(lo: u128, hi: u128, width: u8) -> Vec<(u128, u8)> {
    let mut out = Vec::new();
    let mut start = lo;
    loop {
        // The largest aligned block at `start` that ends at or before `hi`.
        let align = if start == 0 {
            u32::from(width)
        } else {
            start.trailing_zeros().min(u32::from(width))
        };
        let span = hi - start; // block of 2^k fits when 2^k - 1 <= span
        let fit = if span == u128::MAX {
            128
        } else {
            127 - (span + 1).leading_zeros()
        };
        let bits = align.min(fit);
        // `bits` <= width <= 128, so the prefix length fits in a u8.
        out.push((start, width - bits as u8));
        let last = start + (max_of(bits as u8));
        match last.checked_add(1) {
            Some(next) if last < hi => start = next,
            _ => return out,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations() {
        let a = Ranges::from_spans([(5, 9), (0, 1), (2, 3), (20, 30)]);
        assert_eq!(a.spans(), [(0, 3), (5, 9), (20, 30)]);
        assert!(a.contains(0) && a.contains(9) && !a.contains(4) && !a.contains(31));
        let b = Ranges::from_spans([(8, 21), (29, 40)]);
        assert_eq!(a.intersect(&b).spans(), [(8, 9), (20, 21), (29, 30)]);
        assert_eq!(a.union(&b).spans(), [(0, 3), (5, 40)]);
        assert_eq!(a.complement(50).spans(), [(4, 4), (10, 19), (31, 50)]);
        assert_eq!(a.subtract(&b, 50).spans(), [(0, 3), (5, 7), (22, 28)]);
        assert_eq!(
            Ranges::full(u128::MAX).complement(u128::MAX),
            Ranges::default()
        );
        assert_eq!(
            Ranges::span(1, u128::MAX).complement(u128::MAX).spans(),
            [(0, 0)]
        );
    }

    #[test]
    fn prefixes_cover_exactly() {
        assert_eq!(prefixes(0, u128::MAX, 128), [(0, 0)]);
        assert_eq!(prefixes(0, 65535, 16), [(0, 0)]);
        assert_eq!(prefixes(80, 80, 16), [(80, 16)]);
        assert_eq!(
            prefixes(8000, 8080, 16),
            [(8000, 10), (8064, 12), (8080, 16)]
        );
        assert_eq!(prefixes(1, 65535, 16).len(), 16);
        assert_eq!(prefixes(u128::MAX, u128::MAX, 128), [(u128::MAX, 128)]);
        for (lo, hi) in [(3u128, 200u128), (0, 254), (255, 255), (17, 4095)] {
            let blocks = prefixes(lo, hi, 16);
            let mut next = lo;
            for (value, len) in blocks {
                assert_eq!(value, next);
                next = value + (1 << (16 - len));
            }
            assert_eq!(next, hi + 1);
        }
    }
}
