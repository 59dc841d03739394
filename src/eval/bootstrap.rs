//! Bootstrap confidence intervals for the eval table's figures (accuracy, Fréchet distance):
//! the statistic is recomputed on `B` resamples of the images (drawn with replacement, seeded),
//! and the interval is the spread of those values.
//!
//! The interval is the percentile interval recentred on the full-sample value: the
//! `(1 − level)/2` and `(1 + level)/2` quantiles of the resampled values, both moved by the
//! bootstrap's estimate of the statistic's bias (mean of the resampled values − full-sample
//! value). A resample repeats about a third of its images, which inflates a Fréchet distance
//! the way a smaller sample does; without the shift the interval of a small distance would sit
//! above the value it is about. For an accuracy the shift is ~0 and this is the plain
//! percentile interval. The interval describes the sampling noise of the images scored, not the
//! bias every Fréchet distance of `n` images shares (the table's real-image floor shows that).

use crate::error::{DisaError, Result};
use crate::noise::SeededNoise;
use rayon::prelude::*;
use std::fmt;

/// A figure with its confidence interval.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// The statistic on the full sample.
    pub value: f64,
    pub low: f64,
    pub high: f64,
}

impl Estimate {
    /// Whether `x` lies in the interval.
    pub fn contains(&self, x: f64) -> bool {
        self.low <= x && x <= self.high
    }

    /// `high − low`.
    pub fn width(&self) -> f64 {
        self.high - self.low
    }

    /// Every bound multiplied by `k` (percentages).
    pub fn scaled(self, k: f64) -> Self {
        Self {
            value: self.value * k,
            low: self.low * k,
            high: self.high * k,
        }
    }
}

impl fmt::Display for Estimate {
    /// `value [low, high]` with the formatter's precision (3 decimals if none).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = f.precision().unwrap_or(3);
        write!(
            f,
            "{:.p$} [{:.p$}, {:.p$}]",
            self.value, self.low, self.high
        )
    }
}

/// How intervals are drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bootstrap {
    /// Number of resamples `B`.
    pub resamples: usize,
    /// Coverage, e.g. 0.95.
    pub level: f64,
    /// Resample `b` of a sample of `n` draws from a generator seeded by `(seed, b)`, so two
    /// statistics of the same images see the same resamples.
    pub seed: u64,
}

impl Default for Bootstrap {
    fn default() -> Self {
        Self {
            resamples: 500,
            level: 0.95,
            seed: 0,
        }
    }
}

/// The `q`-quantile of sorted values, linearly interpolated.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (i, frac) = (pos.floor() as usize, pos - pos.floor());
    match sorted.get(i + 1) {
        Some(next) => sorted[i] + frac * (next - sorted[i]),
        None => sorted[i],
    }
}

impl Bootstrap {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.resamples < 2 {
            return Err(DisaError::InvalidSetting(format!(
                "{} bootstrap resamples: at least 2 are needed (hundreds for a 95% interval)",
                self.resamples
            )));
        }
        if !(self.level > 0.0 && self.level < 1.0) {
            return Err(DisaError::InvalidSetting(format!(
                "confidence level {} must be between 0 and 1",
                self.level
            )));
        }
        Ok(())
    }

    /// The indices of resample `b` of a sample of `n`.
    pub fn resample(&self, n: usize, b: usize) -> Vec<usize> {
        // Distinct, well-mixed streams per resample (SplitMix-style constants).
        let mut rng = SeededNoise::new(
            self.seed
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                .wrapping_add((b as u64).wrapping_mul(0xBF58_476D_1CE4_E5B9))
                .wrapping_add(1),
        );
        (0..n).map(|_| rng.below(n as u64) as usize).collect()
    }

    /// `statistic` on a sample of `n` items (given the indices of the items to use, repeats
    /// counted) and its interval. Resamples run in parallel; the result does not depend on the
    /// thread count.
    pub fn estimate(
        &self,
        n: usize,
        statistic: impl Fn(&[usize]) -> Result<f64> + Sync,
    ) -> Result<Estimate> {
        self.validate()?;
        if n == 0 {
            return Err(DisaError::InvalidSetting(
                "a bootstrap needs at least one item".into(),
            ));
        }
        let all: Vec<usize> = (0..n).collect();
        let value = statistic(&all)?;
        let mut values = (0..self.resamples)
            .into_par_iter()
            .map(|b| statistic(&self.resample(n, b)))
            .collect::<Result<Vec<f64>>>()?;
        if let Some(bad) = values.iter().find(|v| !v.is_finite()) {
            return Err(DisaError::Internal(format!(
                "a bootstrap resample gave {bad}"
            )));
        }
        values.sort_by(f64::total_cmp);
        let bias = values.iter().sum::<f64>() / values.len() as f64 - value;
        let tail = (1.0 - self.level) / 2.0;
        Ok(Estimate {
            value,
            low: quantile(&values, tail) - bias,
            high: quantile(&values, 1.0 - tail) - bias,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mean(x: &[f64], idx: &[usize]) -> Result<f64> {
        Ok(idx.iter().map(|&i| x[i]).sum::<f64>() / idx.len() as f64)
    }

    #[test]
    fn a_mean_interval_covers_the_mean_and_matches_the_standard_error() {
        let mut rng = SeededNoise::new(1);
        let x: Vec<f64> = (0..2000)
            .map(|_| rng.standard_normal() * 2.0 + 1.0)
            .collect();
        let boot = Bootstrap {
            resamples: 400,
            ..Bootstrap::default()
        };
        let e = boot.estimate(x.len(), |idx| mean(&x, idx)).unwrap();
        assert!(e.contains(e.value), "{e}");
        // 95% normal interval of a mean: ±1.96·σ/√n = ±0.0877; the bootstrap's is close.
        let half = e.width() / 2.0;
        assert!((half - 0.0877).abs() < 0.015, "{e}");
    }

    #[test]
    fn the_same_seed_gives_the_same_interval() {
        let x: Vec<f64> = (0..50).map(|i| (i * i % 17) as f64).collect();
        let boot = Bootstrap {
            resamples: 50,
            level: 0.9,
            seed: 3,
        };
        let a = boot.estimate(50, |idx| mean(&x, idx)).unwrap();
        let b = boot.estimate(50, |idx| mean(&x, idx)).unwrap();
        assert_eq!(a, b);
        let other = Bootstrap { seed: 4, ..boot };
        assert_ne!(a, other.estimate(50, |idx| mean(&x, idx)).unwrap());
        assert_eq!(boot.resample(50, 7), boot.resample(50, 7));
        assert_ne!(boot.resample(50, 7), boot.resample(50, 8));
    }

    #[test]
    fn bad_settings_and_statistics_are_errors() {
        let x = [1.0, 2.0];
        let stat = |idx: &[usize]| mean(&x, idx);
        for boot in [
            Bootstrap {
                resamples: 1,
                ..Bootstrap::default()
            },
            Bootstrap {
                level: 1.0,
                ..Bootstrap::default()
            },
            Bootstrap {
                level: f64::NAN,
                ..Bootstrap::default()
            },
        ] {
            assert!(boot.estimate(2, stat).is_err(), "{boot:?}");
        }
        assert!(Bootstrap::default().estimate(0, stat).is_err());
        let failing = |_: &[usize]| -> Result<f64> { Err(DisaError::Internal("no".into())) };
        assert!(Bootstrap::default().estimate(2, failing).is_err());
        assert!(Bootstrap::default().estimate(2, |_| Ok(f64::NAN)).is_err());
    }

    #[test]
    fn quantiles_interpolate() {
        let v = [0.0, 1.0, 2.0, 3.0, 4.0];
        assert_eq!(quantile(&v, 0.0), 0.0);
        assert_eq!(quantile(&v, 1.0), 4.0);
        assert_eq!(quantile(&v, 0.5), 2.0);
        assert_eq!(quantile(&v, 0.125), 0.5);
        assert_eq!(quantile(&[7.0], 0.3), 7.0);
    }
}
