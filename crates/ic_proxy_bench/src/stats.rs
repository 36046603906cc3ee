//! The arithmetic of the report: spreads of repeated runs (min / median /
//! max), latency percentiles, and proxy/direct ratios. Pure functions, no I/O.

use serde::Serialize;

/// min / median / max of the repetitions of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
}

impl Spread {
    /// The spread of `values`; `None` when there are none (or one is NaN).
    /// The median of an even count is the mean of the two middle values.
    pub fn of(values: &[f64]) -> Option<Spread> {
        if values.is_empty() || values.iter().any(|v| v.is_nan()) {
            return None;
        }
        let mut v = values.to_vec();
        v.sort_by(|a, b| a.total_cmp(b));
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Spread {
            min: v[0],
            median,
            max: v[n - 1],
        })
    }
}

/// `proxy / direct`; `None` when the baseline is zero or not a number, so a
/// broken baseline never shows as an infinite ratio.
pub fn ratio(proxy: f64, direct: f64) -> Option<f64> {
    if direct.is_nan() || proxy.is_nan() || direct == 0.0 {
        return None;
    }
    Some(proxy / direct)
}

/// The ratio of each repetition (proxy run i against direct run i of the same
/// repetition), as a spread. `None` unless both lists have the same, non-zero
/// length and every ratio is defined.
pub fn paired_ratios(proxy: &[f64], direct: &[f64]) -> Option<Spread> {
    if proxy.len() != direct.len() {
        return None;
    }
    let r: Option<Vec<f64>> = proxy
        .iter()
        .zip(direct)
        .map(|(p, d)| ratio(*p, *d))
        .collect();
    Spread::of(&r?)
}

/// Nearest-rank percentile of an ascending `sorted` slice: the smallest value
/// with at least `p`% of the values at or below it. `p` in 0..=100; `None`
/// for an empty slice. p = 0 gives the minimum, p = 100 the maximum.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() || !(0.0..=100.0).contains(&p) {
        return None;
    }
    let n = sorted.len();
    // The rank is computed in integers of 1/1000 % so 99.9 is exact.
    let per_mille = (p * 1000.0).round() as u128;
    let rank = (per_mille * n as u128).div_ceil(100_000) as usize;
    Some(sorted[rank.clamp(1, n) - 1])
}

/// p50 / p99 / p99.9 of a set of latency samples, in the samples' unit.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub samples: usize,
}

impl Percentiles {
    /// Sorts `samples` in place; `None` when there are none.
    pub fn of(samples: &mut [u64]) -> Option<Percentiles> {
        samples.sort_unstable();
        Some(Percentiles {
            p50: percentile(samples, 50.0)?,
            p99: percentile(samples, 99.0)?,
            p999: percentile(samples, 99.9)?,
            samples: samples.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spread_of_odd_and_even_counts() {
        let s = Spread::of(&[3.0, 1.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.0, 3.0));
        let s = Spread::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (1.0, 2.5, 4.0));
        let s = Spread::of(&[7.0]).unwrap();
        assert_eq!((s.min, s.median, s.max), (7.0, 7.0, 7.0));
        assert_eq!(Spread::of(&[]), None);
        assert_eq!(Spread::of(&[1.0, f64::NAN]), None);
    }

    #[test]
    fn ratios_refuse_a_zero_baseline() {
        assert_eq!(ratio(50.0, 100.0), Some(0.5));
        assert_eq!(ratio(0.0, 100.0), Some(0.0));
        assert_eq!(ratio(1.0, 0.0), None);
        assert_eq!(ratio(f64::NAN, 1.0), None);
        let r = paired_ratios(&[50.0, 90.0, 60.0], &[100.0, 100.0, 200.0]).unwrap();
        assert_eq!((r.min, r.median, r.max), (0.3, 0.5, 0.9));
        assert_eq!(paired_ratios(&[1.0], &[1.0, 2.0]), None);
        assert_eq!(paired_ratios(&[1.0, 2.0], &[1.0, 0.0]), None);
        assert_eq!(paired_ratios(&[], &[]), None);
    }

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=1000).collect();
        assert_eq!(percentile(&v, 50.0), Some(500));
        assert_eq!(percentile(&v, 99.0), Some(990));
        assert_eq!(percentile(&v, 99.9), Some(999));
        assert_eq!(percentile(&v, 100.0), Some(1000));
        assert_eq!(percentile(&v, 0.0), Some(1));
        // Ten samples: p50 is the 5th, p99 and p99.9 the 10th.
        let t: Vec<u64> = (10..=100).step_by(10).collect();
        assert_eq!(percentile(&t, 50.0), Some(50));
        assert_eq!(percentile(&t, 99.0), Some(100));
        assert_eq!(percentile(&t, 99.9), Some(100));
        assert_eq!(percentile(&[42], 99.9), Some(42));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&v, 101.0), None);
    }

    #[test]
    fn percentiles_sort_their_samples() {
        let mut s = vec![5, 1, 4, 2, 3];
        let p = Percentiles::of(&mut s).unwrap();
        assert_eq!((p.p50, p.p99, p.p999, p.samples), (3, 5, 5, 5));
        assert_eq!(s, vec![1, 2, 3, 4, 5]);
        assert_eq!(Percentiles::of(&mut []), None);
    }
}
