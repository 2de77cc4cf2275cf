//! Percentiles of latency samples, kept in microseconds.
//!
//! The volumes are small (a few thousand samples per measurement), so a sorted `Vec` is
//! exact and simpler than a histogram.

use std::time::Duration;

/// Distribution of one set of latency samples, in microseconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl Summary {
    pub fn of(samples: impl IntoIterator<Item = Duration>) -> Self {
        let mut micros: Vec<u64> = samples.into_iter().map(as_micros).collect();
        micros.sort_unstable();
        Self {
            count: micros.len(),
            p50: percentile(&micros, 50.0),
            p90: percentile(&micros, 90.0),
            p99: percentile(&micros, 99.0),
            max: micros.last().copied().unwrap_or(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }
}

/// Nearest-rank percentile of already sorted samples (0 when there are none).
pub fn percentile(sorted: &[u64], pct: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((pct / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Median (nearest rank) of floating-point values, `None` when there are none.
pub fn median(mut values: Vec<f64>) -> Option<f64> {
    values.sort_unstable_by(f64::total_cmp);
    let rank = values.len().div_ceil(2);
    rank.checked_sub(1)
        .and_then(|index| values.get(index).copied())
}

pub fn as_micros(duration: Duration) -> u64 {
    u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)
}

/// Microseconds as milliseconds with three decimals.
pub fn ms(micros: u64) -> String {
    format!("{:.3}", micros as f64 / 1000.0)
}

/// `proxied − direct`, in milliseconds (negative when the proxied run was faster).
pub fn added_ms(proxied: u64, direct: u64) -> f64 {
    (proxied as f64 - direct as f64) / 1000.0
}

/// A signed difference in milliseconds, e.g. `+0.123`.
pub fn signed_ms(value: f64) -> String {
    format!("{value:+.3}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&sorted, 50.0), 50);
        assert_eq!(percentile(&sorted, 99.0), 99);
        assert_eq!(percentile(&sorted, 100.0), 100);
        assert_eq!(percentile(&[7], 1.0), 7);
        assert_eq!(percentile(&[], 50.0), 0);
    }

    #[test]
    fn median_of_floats() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![]), None);
    }
}
