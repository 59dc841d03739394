//! The Fréchet distance between two Gaussians fitted to feature sets (the FID formula, here in
//! the project classifier's feature space):
//! `‖μ₁ − μ₂‖² + tr(Σ₁) + tr(Σ₂) − 2·tr((Σ₁^½ Σ₂ Σ₁^½)^½)`, all in f64.

use crate::error::{DisaError, Result};

/// Mean and covariance (unbiased, `n − 1`) of `rows × dim` features.
#[derive(Clone, Debug)]
pub struct Gaussian {
    pub mean: Vec<f64>,
    /// Row-major `dim × dim`.
    pub cov: Vec<f64>,
    pub dim: usize,
}

impl Gaussian {
    /// Fits `features` (row-major, `dim` per row; at least two rows).
    pub fn fit(features: &[f32], dim: usize) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(DisaError::InvalidSetting(format!(
                "{} feature values do not make rows of {dim}",
                features.len()
            )));
        }
        let n = features.len() / dim;
        if n < 2 {
            return Err(DisaError::InvalidSetting(
                "a covariance needs at least two feature rows".into(),
            ));
        }
        let mut mean = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for (m, &v) in mean.iter_mut().zip(row) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; dim * dim];
        let mut centered = vec![0.0f64; dim];
        for row in features.chunks_exact(dim) {
            for (c, (&v, m)) in centered.iter_mut().zip(row.iter().zip(&mean)) {
                *c = v as f64 - m;
            }
            for i in 0..dim {
                let ci = centered[i];
                for j in i..dim {
                    cov[i * dim + j] += ci * centered[j];
                }
            }
        }
        for i in 0..dim {
            for j in i..dim {
                let v = cov[i * dim + j] / (n - 1) as f64;
                cov[i * dim + j] = v;
                cov[j * dim + i] = v;
            }
        }
        Ok(Self { mean, cov, dim })
    }
}

/// Eigenvalues and eigenvectors (columns of `v`, row-major) of a symmetric matrix by cyclic
/// Jacobi rotations.
fn symmetric_eigen(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j] * a[i * n + j])
            .sum();
        let scale: f64 = (0..n).map(|i| a[i * n + i] * a[i * n + i]).sum::<f64>();
        if off <= 1e-30 * scale.max(1e-300) {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() < 1e-300 {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = c * vkp - s * vkq;
                    v[k * n + q] = s * vkp + c * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

/// The symmetric square root of a positive semi-definite matrix (negative eigenvalues from
/// rounding are treated as 0).
fn sqrt_psd(a: &[f64], n: usize) -> Vec<f64> {
    let (w, v) = symmetric_eigen(a, n);
    let mut out = vec![0.0; n * n];
    for k in 0..n {
        let s = w[k].max(0.0).sqrt();
        for i in 0..n {
            let vik = v[i * n + k] * s;
            for j in 0..n {
                out[i * n + j] += vik * v[j * n + k];
            }
        }
    }
    out
}

fn matmul(a: &[f64], b: &[f64], n: usize) -> Vec<f64> {
    let mut out = vec![0.0; n * n];
    for i in 0..n {
        for k in 0..n {
            let aik = a[i * n + k];
            for j in 0..n {
                out[i * n + j] += aik * b[k * n + j];
            }
        }
    }
    out
}

/// The Fréchet distance between two fitted Gaussians of the same dimension.
pub fn frechet_distance(x: &Gaussian, y: &Gaussian) -> Result<f64> {
    if x.dim != y.dim {
        return Err(DisaError::InvalidSetting(format!(
            "feature dimensions differ: {} vs {}",
            x.dim, y.dim
        )));
    }
    let n = x.dim;
    let mean_term: f64 = x
        .mean
        .iter()
        .zip(&y.mean)
        .map(|(a, b)| (a - b) * (a - b))
        .sum();
    let trace = |m: &[f64]| (0..n).map(|i| m[i * n + i]).sum::<f64>();
    let root_x = sqrt_psd(&x.cov, n);
    let middle = matmul(&matmul(&root_x, &y.cov, n), &root_x, n);
    // Symmetrize against rounding before the second root.
    let middle: Vec<f64> = (0..n * n)
        .map(|k| 0.5 * (middle[k] + middle[(k % n) * n + k / n]))
        .collect();
    let cross = trace(&sqrt_psd(&middle, n));
    Ok((mean_term + trace(&x.cov) + trace(&y.cov) - 2.0 * cross).max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::noise::SeededNoise;

    fn sample(n: usize, dim: usize, shift: f64, scale: f64, seed: u64) -> Vec<f32> {
        let mut rng = SeededNoise::new(seed);
        (0..n * dim)
            .map(|_| (rng.standard_normal() * scale + shift) as f32)
            .collect()
    }

    #[test]
    fn identical_sets_are_at_distance_zero() {
        let f = sample(500, 8, 0.0, 1.0, 1);
        let g = Gaussian::fit(&f, 8).unwrap();
        let d = frechet_distance(&g, &g).unwrap();
        assert!(d.abs() < 1e-9, "{d}");
    }

    #[test]
    fn known_gaussians_give_the_closed_form() {
        // Diagonal covariances: FD = ‖Δμ‖² + Σ (σ₁ − σ₂)², computed from the fitted moments.
        let (a, b) = (sample(4000, 4, 0.0, 1.0, 2), sample(4000, 4, 0.5, 2.0, 3));
        let (ga, gb) = (Gaussian::fit(&a, 4).unwrap(), Gaussian::fit(&b, 4).unwrap());
        let d = frechet_distance(&ga, &gb).unwrap();
        // Population value: 4·0.25 + 4·(2 − 1)² = 5; the sample moments are within a few %.
        assert!((d - 5.0).abs() < 0.4, "{d}");
        // Exact check against a diagonal fit: zero out the fitted off-diagonals.
        let diag = |g: &Gaussian| {
            let mut g = g.clone();
            for i in 0..4 {
                for j in 0..4 {
                    if i != j {
                        g.cov[i * 4 + j] = 0.0;
                    }
                }
            }
            g
        };
        let (da, db) = (diag(&ga), diag(&gb));
        let expected: f64 = (0..4)
            .map(|i| {
                (da.mean[i] - db.mean[i]).powi(2)
                    + (da.cov[i * 5].sqrt() - db.cov[i * 5].sqrt()).powi(2)
            })
            .sum();
        let got = frechet_distance(&da, &db).unwrap();
        assert!((got - expected).abs() < 1e-9, "{got} vs {expected}");
    }

    #[test]
    fn distance_is_symmetric_and_grows_with_the_shift() {
        let base = Gaussian::fit(&sample(800, 6, 0.0, 1.0, 4), 6).unwrap();
        let near = Gaussian::fit(&sample(800, 6, 0.2, 1.0, 5), 6).unwrap();
        let far = Gaussian::fit(&sample(800, 6, 1.0, 1.0, 6), 6).unwrap();
        let d1 = frechet_distance(&base, &near).unwrap();
        let d2 = frechet_distance(&near, &base).unwrap();
        assert!((d1 - d2).abs() < 1e-8 * d1.max(1.0));
        assert!(frechet_distance(&base, &far).unwrap() > 3.0 * d1);
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(Gaussian::fit(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(Gaussian::fit(&[1.0, 2.0], 2).is_err());
        let a = Gaussian::fit(&sample(10, 2, 0.0, 1.0, 7), 2).unwrap();
        let b = Gaussian::fit(&sample(10, 3, 0.0, 1.0, 8), 3).unwrap();
        assert!(frechet_distance(&a, &b).is_err());
    }
}
