//! Latency samples and their percentiles.
//!
//! Every sample is kept (as nanoseconds in a `u32`, saturating at about 4.3 s) up to a cap, then
//! sorted once at the end: exact percentiles, no histogram resolution to reason about, and a
//! sample costs one `Vec::push` of 4 bytes. The cap bounds memory (4 bytes a sample); samples
//! past it are counted as dropped, not recorded.

use std::time::Duration;

/// Most samples one [`Latencies`] keeps: 16 M samples, 64 MiB.
pub(crate) const MAX_SAMPLES: usize = 16 << 20;

/// Latency samples of one task, or of several merged.
#[derive(Debug, Default)]
pub(crate) struct Latencies {
    ns: Vec<u32>,
    dropped: u64,
}

/// What a set of samples says. Times in microseconds.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Summary {
    pub(crate) count: u64,
    pub(crate) mean_us: f64,
    pub(crate) p50_us: f64,
    pub(crate) p90_us: f64,
    pub(crate) p99_us: f64,
    pub(crate) p999_us: f64,
    pub(crate) max_us: f64,
}

impl Latencies {
    /// Room for `n` samples up front (capped at [`MAX_SAMPLES`]).
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self {
            ns: Vec::with_capacity(n.min(MAX_SAMPLES)),
            dropped: 0,
        }
    }

    /// Records one sample.
    pub(crate) fn record(&mut self, d: Duration) {
        if self.ns.len() >= MAX_SAMPLES {
            self.dropped += 1;
            return;
        }
        self.ns
            .push(u32::try_from(d.as_nanos()).unwrap_or(u32::MAX));
    }

    /// Moves `other`'s samples into `self`.
    pub(crate) fn merge(&mut self, mut other: Latencies) {
        let room = MAX_SAMPLES.saturating_sub(self.ns.len());
        let take = other.ns.len().min(room);
        self.dropped += other.dropped + (other.ns.len() - take) as u64;
        other.ns.truncate(take);
        self.ns.append(&mut other.ns);
    }

    /// Samples recorded (dropped ones excluded).
    pub(crate) fn len(&self) -> usize {
        self.ns.len()
    }

    /// Samples not recorded because the cap was reached.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Sorts the samples and summarises them; `None` without samples.
    pub(crate) fn summary(&mut self) -> Option<Summary> {
        if self.ns.is_empty() {
            return None;
        }
        self.ns.sort_unstable();
        let sorted = &self.ns;
        let sum: u64 = sorted.iter().map(|&v| u64::from(v)).sum();
        let us = |ns: u32| f64::from(ns) / 1000.0;
        Some(Summary {
            count: sorted.len() as u64,
            mean_us: sum as f64 / sorted.len() as f64 / 1000.0,
            p50_us: us(percentile(sorted, 0.50)),
            p90_us: us(percentile(sorted, 0.90)),
            p99_us: us(percentile(sorted, 0.99)),
            p999_us: us(percentile(sorted, 0.999)),
            max_us: us(sorted.last().copied().unwrap_or(0)),
        })
    }
}

impl Summary {
    /// The summary as JSON fields, rounded to 0.1 µs.
    pub(crate) fn to_json(&self) -> serde_json::Value {
        let r = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "samples": self.count,
            "mean_us": r(self.mean_us),
            "p50_us": r(self.p50_us),
            "p90_us": r(self.p90_us),
            "p99_us": r(self.p99_us),
            "p999_us": r(self.p999_us),
            "max_us": r(self.max_us),
        })
    }
}

/// The nearest-rank percentile of sorted samples: the smallest sample such that at least
/// `q` of all samples are at most it. `q` in `0.0..=1.0`; 0 for no samples.
pub(crate) fn percentile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let n = sorted.len();
    // ceil(q * n) as a 1-based rank, clamped to 1..=n.
    let rank = (q.clamp(0.0, 1.0) * n as f64).ceil() as usize;
    let index = rank.clamp(1, n) - 1;
    sorted.get(index).copied().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 0.50), 50);
        assert_eq!(percentile(&sorted, 0.99), 99);
        assert_eq!(percentile(&sorted, 0.999), 100);
        assert_eq!(percentile(&sorted, 1.0), 100);
        assert_eq!(percentile(&sorted, 0.0), 1);
        assert_eq!(percentile(&[7], 0.5), 7);
        assert_eq!(percentile(&[], 0.5), 0);
        // 1000 samples: p99.9 is the 999th, not the largest.
        let sorted: Vec<u32> = (1..=1000).collect();
        assert_eq!(percentile(&sorted, 0.999), 999);
    }

    #[test]
    fn summary_of_unsorted_samples() {
        let mut lat = Latencies::default();
        assert_eq!(lat.summary(), None);
        for us in [30, 10, 20, 40] {
            lat.record(Duration::from_micros(us));
        }
        let s = lat.summary().unwrap();
        assert_eq!(s.count, 4);
        assert_eq!(s.p50_us, 20.0);
        assert_eq!(s.p99_us, 40.0);
        assert_eq!(s.max_us, 40.0);
        assert_eq!(s.mean_us, 25.0);
    }

    #[test]
    fn merge_and_saturation() {
        let mut a = Latencies::with_capacity(2);
        a.record(Duration::from_secs(10)); // past u32 nanoseconds: saturates
        let mut b = Latencies::default();
        b.record(Duration::from_nanos(1500));
        a.merge(b);
        assert_eq!(a.len(), 2);
        assert_eq!(a.dropped(), 0);
        let s = a.summary().unwrap();
        assert_eq!(s.p50_us, 1.5);
        assert_eq!(s.max_us, f64::from(u32::MAX) / 1000.0);
    }
}
