//! A lock-free latency histogram. The voice loop records into it every tick with a couple of
//! atomic adds; readers (the API, `/metrics`, benchmarks) compute percentiles from the same
//! buckets without ever making the loop wait.
//!
//! Buckets are log-linear over microseconds: exact below 32 µs, then 16 buckets per
//! doubling, so any reported percentile is within about 6 % of the true value.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;

const SUB_BITS: u32 = 4;
const SUB: u64 = 1 << SUB_BITS;
const LINEAR: u64 = 2 * SUB;
/// Covers up to 2^40 µs (about 12 days), far past anything a tick can take.
const OCTAVES: usize = 36;
const BUCKETS: usize = LINEAR as usize + OCTAVES * SUB as usize;

/// Percentiles of a histogram, in milliseconds, as the API and benchmarks report them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// A histogram of durations, safe to record into and read from any thread at once.
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
    count: AtomicU64,
    sum_us: AtomicU64,
    max_us: AtomicU64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for LatencyHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyHistogram")
            .field("summary", &self.percentiles())
            .finish()
    }
}

fn bucket_of(us: u64) -> usize {
    if us < LINEAR {
        return us as usize;
    }
    // `us` >= 2^(SUB_BITS+1): keep the top SUB_BITS+1 bits.
    let magnitude = 63 - us.leading_zeros(); // >= SUB_BITS + 1
    let shift = magnitude - SUB_BITS;
    let octave = (shift - 1) as usize;
    let sub = ((us >> shift) - SUB) as usize; // 0..SUB
    (LINEAR as usize + octave * SUB as usize + sub).min(BUCKETS - 1)
}

/// The smallest value that lands in `bucket` and the width of the bucket.
fn bucket_range(bucket: usize) -> (u64, u64) {
    if (bucket as u64) < LINEAR {
        return (bucket as u64, 1);
    }
    let rel = bucket - LINEAR as usize;
    let octave = (rel / SUB as usize) as u32;
    let sub = (rel % SUB as usize) as u64;
    let shift = octave + 1;
    ((SUB + sub) << shift, 1 << shift)
}

impl LatencyHistogram {
    pub fn new() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_us: AtomicU64::new(0),
            max_us: AtomicU64::new(0),
        }
    }

    /// Record one duration.
    pub fn record(&self, value: Duration) {
        let us = u64::try_from(value.as_micros()).unwrap_or(u64::MAX);
        self.record_us(us);
    }

    /// Record one value in microseconds.
    pub fn record_us(&self, us: u64) {
        self.buckets[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
        self.max_us.fetch_max(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Sum of every recorded value, in seconds (for Prometheus `_sum`).
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
    }

    pub fn max(&self) -> Duration {
        Duration::from_micros(self.max_us.load(Ordering::Relaxed))
    }

    /// The value below which fraction `q` (0..=1) of the recordings fall, in microseconds.
    pub fn quantile_us(&self, q: f64) -> u64 {
        self.snapshot().quantile_us(q)
    }

    pub fn percentiles(&self) -> Percentiles {
        self.snapshot().percentiles()
    }

    /// A copy of the counts, to report on later or to subtract from a later copy.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: self
                .buckets
                .iter()
                .map(|b| b.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
            max_us: self.max_us.load(Ordering::Relaxed),
        }
    }
}

/// The counts of a histogram at one moment.
#[derive(Debug, Clone)]
pub struct HistogramSnapshot {
    buckets: Vec<u64>,
    sum_us: u64,
    max_us: u64,
}

impl HistogramSnapshot {
    /// What was recorded between `earlier` and this snapshot. The maximum of the window is
    /// the top of its highest non-empty bucket (never above the overall maximum).
    pub fn since(&self, earlier: &HistogramSnapshot) -> HistogramSnapshot {
        let buckets: Vec<u64> = self
            .buckets
            .iter()
            .zip(&earlier.buckets)
            .map(|(a, b)| a.saturating_sub(*b))
            .collect();
        let max_us = buckets
            .iter()
            .rposition(|&n| n > 0)
            .map(|b| {
                let (low, width) = bucket_range(b);
                (low + width - 1).min(self.max_us)
            })
            .unwrap_or(0);
        HistogramSnapshot {
            buckets,
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            max_us,
        }
    }

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// How many recordings were at most `us` microseconds, counting whole buckets (those
    /// that end at or below `us`): a Prometheus histogram's cumulative `le` bucket.
    pub fn count_at_most_us(&self, us: u64) -> u64 {
        self.buckets
            .iter()
            .enumerate()
            .take_while(|(b, _)| {
                let (low, width) = bucket_range(*b);
                low + width - 1 <= us
            })
            .map(|(_, n)| n)
            .sum()
    }

    /// Sum of the recordings, in seconds.
    pub fn sum_seconds(&self) -> f64 {
        self.sum_us as f64 / 1e6
    }

    /// The value below which fraction `q` (0..=1) of the recordings fall, in microseconds.
    /// Reported as the middle of its bucket, and never above the true maximum.
    pub fn quantile_us(&self, q: f64) -> u64 {
        let total = self.count();
        if total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (bucket, &n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (low, width) = bucket_range(bucket);
                return (low + width / 2).min(self.max_us).max(low);
            }
        }
        self.max_us
    }

    pub fn percentiles(&self) -> Percentiles {
        let count = self.count();
        let ms = |us: u64| us as f64 / 1000.0;
        Percentiles {
            count,
            p50_ms: ms(self.quantile_us(0.50)),
            p90_ms: ms(self.quantile_us(0.90)),
            p99_ms: ms(self.quantile_us(0.99)),
            p999_ms: ms(self.quantile_us(0.999)),
            max_ms: ms(self.max_us),
            mean_ms: if count == 0 {
                0.0
            } else {
                ms(self.sum_us) / count as f64
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range_without_gaps() {
        let mut expected_low = 0;
        for bucket in 0..BUCKETS - 1 {
            let (low, width) = bucket_range(bucket);
            assert_eq!(low, expected_low, "bucket {bucket}");
            assert_eq!(bucket_of(low), bucket);
            assert_eq!(bucket_of(low + width - 1), bucket);
            expected_low = low + width;
        }
    }

    #[test]
    fn percentiles_are_within_the_stated_error() {
        let h = LatencyHistogram::new();
        // 1..=10_000 µs uniformly: p50 = 5 ms, p99 = 9.9 ms.
        for us in 1..=10_000u64 {
            h.record_us(us);
        }
        let p = h.percentiles();
        assert_eq!(p.count, 10_000);
        assert!((p.p50_ms - 5.0).abs() / 5.0 < 0.06, "p50 {}", p.p50_ms);
        assert!((p.p99_ms - 9.9).abs() / 9.9 < 0.06, "p99 {}", p.p99_ms);
        assert_eq!(p.max_ms, 10.0);
        assert!((p.mean_ms - 5.0005).abs() < 0.001);
    }

    #[test]
    fn an_outlier_shows_in_max_and_p999_but_not_p50() {
        let h = LatencyHistogram::new();
        for _ in 0..999 {
            h.record(Duration::from_micros(300));
        }
        h.record(Duration::from_millis(200));
        let p = h.percentiles();
        assert!(p.p50_ms < 0.32 && p.p50_ms > 0.28, "{p:?}");
        assert_eq!(p.max_ms, 200.0);
        assert!(
            p.p999_ms < 0.32,
            "the single outlier is exactly the 1000th of 1000: {p:?}"
        );
        assert!((h.quantile_us(1.0) as f64 - 200_000.0).abs() / 200_000.0 < 0.07);
    }

    #[test]
    fn a_window_reports_only_what_happened_in_it() {
        let h = LatencyHistogram::new();
        for _ in 0..100 {
            h.record(Duration::from_millis(50));
        }
        let before = h.snapshot();
        for _ in 0..100 {
            h.record(Duration::from_micros(500));
        }
        let window = h.snapshot().since(&before);
        let p = window.percentiles();
        assert_eq!(p.count, 100);
        assert!(
            p.max_ms < 0.53,
            "the 50 ms values came before the window: {p:?}"
        );
        assert!((p.mean_ms - 0.5).abs() < 1e-9);
    }

    #[test]
    fn empty_histogram_reports_zeros() {
        let p = LatencyHistogram::new().percentiles();
        assert_eq!(p, Percentiles::default());
    }
}
