//! Sets of ports as sorted, merged ranges, so that "opens" and "closes" are
//! plain set differences and print as "8000-8100, 9090" whatever way the
//! rules were split or ordered.

use std::fmt;

use portguard_common::PortRange;

use crate::policy::{PortSpec, merge_ranges};

/// A set of ports 1-65535, held as sorted ranges that neither overlap nor
/// touch (so two equal sets always have equal representations).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Ports(Vec<(u16, u16)>);

impl Ports {
    pub(crate) fn new() -> Ports {
        Ports::default()
    }

    pub(crate) fn from_specs(specs: &[PortSpec]) -> Ports {
        Ports::from_ranges(specs.iter().map(|s| (s.first, s.last)).collect())
    }

    pub(crate) fn from_ranges(ranges: Vec<(u16, u16)>) -> Ports {
        let ranges = ranges.into_iter().map(|(first, last)| PortRange { first, last }).collect();
        Ports(merge_ranges(ranges).into_iter().map(|r| (r.first, r.last)).collect())
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub(crate) fn union(&self, other: &Ports) -> Ports {
        Ports::from_ranges(self.0.iter().chain(&other.0).copied().collect())
    }

    pub(crate) fn add(&mut self, other: &Ports) {
        *self = self.union(other);
    }

    /// The ports in `self` that are not in `other`.
    pub(crate) fn minus(&self, other: &Ports) -> Ports {
        let mut out = Vec::new();
        for &(first, last) in &self.0 {
            // Walk `other`'s ranges that overlap [first, last], keeping the gaps.
            let mut next = u32::from(first);
            for &(o_first, o_last) in &other.0 {
                if o_last < first || o_first > last {
                    continue;
                }
                if u32::from(o_first) > next {
                    out.push((next as u16, o_first - 1));
                }
                next = next.max(u32::from(o_last) + 1);
            }
            if next <= u32::from(last) {
                out.push((next as u16, last));
            }
        }
        Ports(out)
    }

    pub(crate) fn intersect(&self, other: &Ports) -> Ports {
        self.minus(&self.minus(other))
    }

    pub(crate) fn is_subset(&self, other: &Ports) -> bool {
        self.minus(other).is_empty()
    }

    pub(crate) fn overlaps(&self, other: &Ports) -> bool {
        !self.intersect(other).is_empty()
    }

    /// The ranges, first and last port of each.
    pub(crate) fn bounds(&self) -> impl Iterator<Item = (u16, u16)> + '_ {
        self.0.iter().copied()
    }

    pub(crate) fn contains(&self, port: u16) -> bool {
        self.0.iter().any(|&(first, last)| (first..=last).contains(&port))
    }

    /// Each range in the policy's own syntax: "9090", "8000-8100".
    pub(crate) fn ranges(&self) -> impl Iterator<Item = String> + '_ {
        self.0.iter().map(|&(first, last)| PortSpec { first, last }.to_string())
    }
}

impl fmt::Display for Ports {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        f.write_str(&self.ranges().collect::<Vec<_>>().join(", "))
    }
}

/// JSON: a list of ranges in the policy's syntax, `["8000-8100", "9090"]`.
impl serde::Serialize for Ports {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.ranges())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(ranges: &[(u16, u16)]) -> Ports {
        Ports::from_ranges(ranges.to_vec())
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        assert_eq!(p(&[(10, 20), (21, 30), (5, 12), (40, 40)]), p(&[(5, 30), (40, 40)]));
        assert_eq!(p(&[(1, 65535), (65535, 65535)]).to_string(), "1-65535");
        assert_eq!(p(&[(9090, 9090), (8000, 8100)]).to_string(), "8000-8100, 9090");
    }

    #[test]
    fn set_operations() {
        let a = p(&[(1, 100), (200, 300)]);
        let b = p(&[(50, 60), (100, 250), (65535, 65535)]);
        assert_eq!(a.minus(&b), p(&[(1, 49), (61, 99), (251, 300)]));
        assert_eq!(a.intersect(&b), p(&[(50, 60), (100, 100), (200, 250)]));
        assert_eq!(b.minus(&a), p(&[(101, 199), (65535, 65535)]));
        assert_eq!(p(&[(1, 65535)]).minus(&p(&[(1, 1), (65535, 65535)])), p(&[(2, 65534)]));
        assert!(p(&[(80, 80)]).is_subset(&a) && !b.is_subset(&a));
        assert!(a.overlaps(&b) && !p(&[(101, 199)]).overlaps(&a));
    }
}
