//! Small statistics helpers (nearest-rank percentiles).

use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Median, min and max of a set of durations, in milliseconds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spread {
    /// Samples.
    pub n: usize,
    /// Median.
    pub median: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// Every sample, in measurement order.
    #[serde(default)]
    pub samples: Vec<f64>,
}

impl Spread {
    /// Summarises `samples`, scaled by `unit` (e.g. 1e3 for milliseconds).
    pub fn of(samples: &[Duration], unit: f64) -> Option<Spread> {
        if samples.is_empty() {
            return None;
        }
        let raw: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * unit).collect();
        let mut v = raw.clone();
        v.sort_by(f64::total_cmp);
        Some(Spread { n: v.len(), median: median(&v), min: v[0], max: v[v.len() - 1], samples: raw })
    }
}

/// Median of sorted values (mean of the middle two for an even count).
pub fn median(sorted: &[f64]) -> f64 {
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

/// Nearest-rank percentile of sorted values, `p` in 0..=100.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(median(&[1.0, 2.0, 3.0, 10.0]), 2.5);
    }
}
