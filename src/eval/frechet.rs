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
        let rows: Vec<usize> = (0..features.len() / dim).collect();
        Self::fit_rows(features, dim, &rows)
    }

    /// Fits the rows `rows` of `features` (row-major, `dim` per row), repeats counted as often
    /// as they appear (a bootstrap resample); at least two rows.
    pub fn fit_rows(features: &[f32], dim: usize, rows: &[usize]) -> Result<Self> {
        if dim == 0 || !features.len().is_multiple_of(dim) {
            return Err(DisaError::InvalidSetting(format!(
                "{} feature values do not make rows of {dim}",
                features.len()
            )));
        }
        let available = features.len() / dim;
        if let Some(&r) = rows.iter().find(|&&r| r >= available) {
            return Err(DisaError::InvalidSetting(format!(
                "feature row {r} of {available}"
            )));
        }
        let n = rows.len();
        if n < 2 {
            return Err(DisaError::InvalidSetting(
                "a covariance needs at least two feature rows".into(),
            ));
        }
        let row = |r: usize| &features[r * dim..(r + 1) * dim];
        let mut mean = vec![0.0f64; dim];
        for &r in rows {
            for (m, &v) in mean.iter_mut().zip(row(r)) {
                *m += v as f64;
            }
        }
        mean.iter_mut().for_each(|m| *m /= n as f64);
        let mut cov = vec![0.0f64; dim * dim];
        let mut centered = vec![0.0f64; dim];
        for &r in rows {
            for (c, (&v, m)) in centered.iter_mut().zip(row(r).iter().zip(&mean)) {
                *c = v as f64 - m;
            }
            for i in 0..dim {
                let ci = centered[i];
                if ci == 0.0 {
                    // ReLU features are often exactly at their mean (dead units): nothing to add.
                    continue;
                }
                for (out, &cj) in cov[i * dim + i..(i + 1) * dim]
                    .iter_mut()
                    .zip(&centered[i..])
                {
                    *out += ci * cj;
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
    let mean_term = mean_term(x, y)?;
    let n = x.dim;
    let root_x = sqrt_psd(&x.cov, n);
    let middle = symmetrized(&matmul(&matmul(&root_x, &y.cov, n), &root_x, n), n);
    let cross = trace(&sqrt_psd(&middle, n), n);
    Ok((mean_term + trace(&x.cov, n) + trace(&y.cov, n) - 2.0 * cross).max(0.0))
}

/// `‖μₓ − μᵧ‖²`, after checking the two Gaussians have the same dimension.
fn mean_term(x: &Gaussian, y: &Gaussian) -> Result<f64> {
    if x.dim != y.dim {
        return Err(DisaError::InvalidSetting(format!(
            "feature dimensions differ: {} vs {}",
            x.dim, y.dim
        )));
    }
    Ok(x.mean
        .iter()
        .zip(&y.mean)
        .map(|(a, b)| (a - b) * (a - b))
        .sum())
}

/// Trace of an `n × n` row-major matrix.
fn trace(m: &[f64], n: usize) -> f64 {
    (0..n).map(|i| m[i * n + i]).sum()
}

/// `(M + Mᵀ)/2`: a product that is symmetric in exact arithmetic, made so against rounding
/// before a square root or an eigenvalue problem.
fn symmetrized(m: &[f64], n: usize) -> Vec<f64> {
    (0..n * n)
        .map(|k| 0.5 * (m[k] + m[(k % n) * n + k / n]))
        .collect()
}

/// Eigenvalues (ascending) of a symmetric `n × n` matrix: Householder reflections reduce it to
/// a tridiagonal matrix with the same eigenvalues, whose eigenvalues bisection on Sturm counts
/// then finds, each to within a few units of the last place of the matrix's norm. About `n³`
/// operations, several times fewer than the Jacobi sweeps (which also build eigenvectors),
/// which matters when a bootstrap takes a distance hundreds of times.
pub fn symmetric_eigenvalues(a: &[f64], n: usize) -> Vec<f64> {
    let (diag, off) = tridiagonal(a, n);
    let bound = (0..n)
        .map(|i| {
            let left = if i > 0 { off[i - 1].abs() } else { 0.0 };
            let right = if i + 1 < n { off[i].abs() } else { 0.0 };
            diag[i].abs() + left + right
        })
        .fold(0.0f64, f64::max);
    // Gershgorin: every eigenvalue lies in [−bound, bound].
    let (lo, hi) = (-bound - f64::MIN_POSITIVE, bound + f64::MIN_POSITIVE);
    let tiny = f64::EPSILON * bound.max(f64::MIN_POSITIVE);
    // Number of eigenvalues below x (the negative pivots of T − xI).
    let below = |x: f64| -> usize {
        let mut count = 0;
        let mut q = 1.0f64;
        for i in 0..n {
            let coupling = if i > 0 { off[i - 1] * off[i - 1] } else { 0.0 };
            q = diag[i] - x - if i > 0 { coupling / q } else { 0.0 };
            if q == 0.0 {
                q = -tiny;
            }
            if q < 0.0 {
                count += 1;
            }
        }
        count
    };
    (0..n)
        .map(|k| {
            // The (k+1)-th smallest eigenvalue: the least x with more than k eigenvalues below.
            let (mut a, mut b) = (lo, hi);
            for _ in 0..200 {
                let mid = 0.5 * (a + b);
                if mid <= a || mid >= b || b - a <= 2.0 * tiny {
                    break;
                }
                if below(mid) > k {
                    b = mid;
                } else {
                    a = mid;
                }
            }
            0.5 * (a + b)
        })
        .collect()
}

/// Householder reduction of a symmetric matrix to tridiagonal form: its diagonal (`n`) and
/// off-diagonal (`n − 1`).
fn tridiagonal(a: &[f64], n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut a = a.to_vec();
    let mut off = vec![0.0; n.saturating_sub(1)];
    let mut v = vec![0.0; n];
    let mut p = vec![0.0; n];
    for k in 0..n.saturating_sub(2) {
        // Reflect the column below the diagonal onto its first entry.
        let m = k + 1;
        let norm = (m..n)
            .map(|i| a[i * n + k] * a[i * n + k])
            .sum::<f64>()
            .sqrt();
        if norm == 0.0 {
            continue;
        }
        let alpha = if a[m * n + k] > 0.0 { -norm } else { norm };
        for i in m..n {
            v[i] = a[i * n + k];
        }
        v[m] -= alpha;
        let vnorm = (m..n).map(|i| v[i] * v[i]).sum::<f64>().sqrt();
        if vnorm == 0.0 {
            off[k] = a[m * n + k];
            continue;
        }
        for x in &mut v[m..n] {
            *x /= vnorm;
        }
        // H S H = S − v wᵀ − w vᵀ for the trailing block S, with p = S v, w = 2p − 2(vᵀp) v.
        for i in m..n {
            p[i] = (m..n).map(|j| a[i * n + j] * v[j]).sum();
        }
        let vp: f64 = (m..n).map(|i| v[i] * p[i]).sum();
        for i in m..n {
            p[i] = 2.0 * p[i] - 2.0 * vp * v[i];
        }
        for i in m..n {
            for j in m..n {
                a[i * n + j] -= v[i] * p[j] + p[i] * v[j];
            }
        }
        off[k] = alpha;
    }
    if n >= 2 {
        off[n - 2] = a[(n - 1) * n + n - 2];
    }
    ((0..n).map(|i| a[i * n + i]).collect(), off)
}

/// A fixed reference set for many distances (every row of an eval table, every bootstrap
/// resample): its Gaussian and the square root of its covariance, computed once.
#[derive(Clone, Debug)]
pub struct FrechetReference {
    pub gaussian: Gaussian,
    /// `Σ_ref^½`, row-major.
    root: Vec<f64>,
}

impl FrechetReference {
    pub fn new(gaussian: Gaussian) -> Self {
        let n = gaussian.dim;
        let root = sqrt_psd(&gaussian.cov, n);
        Self { gaussian, root }
    }

    /// The Fréchet distance from `x` to the reference; the same value as
    /// [`frechet_distance`] (`tr((Σ₁^½ Σ₂ Σ₁^½)^½)` is symmetric in the two), with one
    /// eigenvalue problem instead of two eigen-decompositions.
    pub fn distance(&self, x: &Gaussian) -> Result<f64> {
        let mean_term = mean_term(x, &self.gaussian)?;
        let n = x.dim;
        let middle = symmetrized(&matmul(&matmul(&self.root, &x.cov, n), &self.root, n), n);
        let cross: f64 = symmetric_eigenvalues(&middle, n)
            .iter()
            .map(|&l| l.max(0.0).sqrt())
            .sum();
        Ok((mean_term + trace(&x.cov, n) + trace(&self.gaussian.cov, n) - 2.0 * cross).max(0.0))
    }
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

    #[test]
    fn eigenvalues_match_the_jacobi_sweeps() {
        // A random symmetric matrix, a rank-deficient covariance, and tiny/diagonal cases.
        let mut rng = SeededNoise::new(9);
        let n = 17;
        let m: Vec<f64> = (0..n * n).map(|_| rng.standard_normal()).collect();
        let sym: Vec<f64> = (0..n * n).map(|k| m[k] + m[(k % n) * n + k / n]).collect();
        let low_rank = Gaussian::fit(&sample(5, n, 0.0, 1.0, 10), n).unwrap().cov;
        for (a, size) in [
            (sym, n),
            (low_rank, n),
            (vec![4.0], 1),
            (vec![2.0, 1.0, 1.0, 2.0], 2),
            (vec![0.0; 9], 3),
        ] {
            let mut expected = symmetric_eigen(&a, size).0;
            expected.sort_by(f64::total_cmp);
            let got = symmetric_eigenvalues(&a, size);
            let scale = expected.iter().fold(1.0f64, |m, v| m.max(v.abs()));
            for (g, e) in got.iter().zip(&expected) {
                assert!((g - e).abs() < 1e-10 * scale, "{got:?} vs {expected:?}");
            }
        }
    }

    #[test]
    fn the_reference_gives_the_same_distance() {
        let a = Gaussian::fit(&sample(300, 12, 0.0, 1.0, 11), 12).unwrap();
        let b = Gaussian::fit(&sample(200, 12, 0.3, 1.5, 12), 12).unwrap();
        let direct = frechet_distance(&a, &b).unwrap();
        let via = FrechetReference::new(b.clone()).distance(&a).unwrap();
        assert!(
            (direct - via).abs() < 1e-9 * direct.max(1.0),
            "{direct} vs {via}"
        );
        // A set against itself is ~0, through the reference too.
        let same = FrechetReference::new(a.clone()).distance(&a).unwrap();
        assert!(same < 1e-8, "{same}");
        let c = Gaussian::fit(&sample(10, 3, 0.0, 1.0, 13), 3).unwrap();
        assert!(FrechetReference::new(b).distance(&c).is_err());
    }

    #[test]
    fn fitting_rows_counts_repeats() {
        let f = sample(6, 3, 0.0, 1.0, 14);
        let repeated: Vec<f32> = [0, 0, 2, 5]
            .iter()
            .flat_map(|&r| f[r * 3..(r + 1) * 3].to_vec())
            .collect();
        let by_rows = Gaussian::fit_rows(&f, 3, &[0, 0, 2, 5]).unwrap();
        let copied = Gaussian::fit(&repeated, 3).unwrap();
        for (x, y) in by_rows.cov.iter().zip(&copied.cov) {
            assert!((x - y).abs() < 1e-12);
        }
        assert_eq!(by_rows.mean, copied.mean);
        assert!(Gaussian::fit_rows(&f, 3, &[0, 6]).is_err());
        assert!(Gaussian::fit_rows(&f, 3, &[1]).is_err());
    }
}
