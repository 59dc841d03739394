//! Random streams. Every draw (generation orders, initial noise, per-step noise) is made on the
//! CPU in one fixed order and then uploaded, so the same seed gives the same image on every
//! backend; and the parity tests can replay draws recorded from the official PyTorch code.

use crate::error::{DisaError, Result};

/// What a draw is for, in the official code's terms (the replay checks it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DrawKind {
    /// `torch.randn(n, C)`: the initial noise of one head sampling loop.
    InitialNoise,
    /// `torch.randn_like(x)`: the noise injected by one `p_sample` step.
    StepNoise,
}

impl DrawKind {
    fn code(self) -> i64 {
        match self {
            Self::InitialNoise => 0,
            Self::StepNoise => 1,
        }
    }
}

/// A source of the sampler's randomness.
pub trait NoiseSource {
    /// A uniformly random permutation of `0..n` (one image's generation order).
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>>;
    /// `rows × cols` standard normal values, row-major.
    fn normal(&mut self, kind: DrawKind, rows: usize, cols: usize) -> Result<Vec<f32>>;
}

/// A seeded stream (xoshiro256** seeded by splitmix64, Box–Muller normals): portable and
/// identical on every platform, native or wasm.
#[derive(Clone, Debug)]
pub struct SeededNoise {
    state: [u64; 4],
    spare: Option<f64>,
}

impl SeededNoise {
    /// A stream for `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut next = || {
            sm = sm.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = sm;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        };
        Self {
            state: [next(), next(), next(), next()],
            spare: None,
        }
    }

    /// The next raw 64-bit output.
    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.state;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Unbiased integer in `0..bound` (Lemire's method without the fast path).
    pub fn below(&mut self, bound: u64) -> u64 {
        let zone = u64::MAX - (u64::MAX % bound);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % bound;
            }
        }
    }

    /// One standard normal draw.
    pub fn standard_normal(&mut self) -> f64 {
        if let Some(v) = self.spare.take() {
            return v;
        }
        // Box–Muller on (0, 1] so the log is finite.
        let u1 = 1.0 - self.uniform();
        let u2 = self.uniform();
        let r = (-2.0 * u1.ln()).sqrt();
        let theta = 2.0 * std::f64::consts::PI * u2;
        self.spare = Some(r * theta.sin());
        r * theta.cos()
    }
}

impl NoiseSource for SeededNoise {
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        let mut p: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            let j = self.below(i as u64 + 1) as usize;
            p.swap(i, j);
        }
        Ok(p)
    }

    fn normal(&mut self, _kind: DrawKind, rows: usize, cols: usize) -> Result<Vec<f32>> {
        Ok((0..rows * cols)
            .map(|_| self.standard_normal() as f32)
            .collect())
    }
}

/// Draws recorded from the official code, replayed in call order. Each request is checked
/// against the recording (kind and shape), so a port that draws in another order fails loudly.
#[derive(Clone, Debug)]
pub struct ReplayNoise {
    /// `(kind, offset, d0, d1)` per draw: kind 2 = permutation (row `offset` of `perms`),
    /// 0/1 = normal draw of shape `[d0, d1]` starting at element `offset` of `normal`.
    events: Vec<[i64; 4]>,
    normal: Vec<f32>,
    perms: Vec<Vec<usize>>,
    cursor: usize,
}

impl ReplayNoise {
    /// A replay of `events` over the flattened `normal` values and permutation rows `perms`.
    pub fn new(events: Vec<[i64; 4]>, normal: Vec<f32>, perms: Vec<Vec<usize>>) -> Self {
        Self {
            events,
            normal,
            perms,
            cursor: 0,
        }
    }

    /// Draws not consumed yet (a finished replay should have none left).
    pub fn remaining(&self) -> usize {
        self.events.len() - self.cursor
    }

    fn next_event(&mut self, what: &str) -> Result<[i64; 4]> {
        let e = self.events.get(self.cursor).copied().ok_or_else(|| {
            DisaError::Replay(format!(
                "asked for {what} after all {} recorded draws",
                self.events.len()
            ))
        })?;
        self.cursor += 1;
        Ok(e)
    }
}

impl NoiseSource for ReplayNoise {
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        let index = self.cursor;
        let [kind, offset, ..] = self.next_event("a permutation")?;
        if kind != 2 {
            return Err(DisaError::Replay(format!(
                "draw {index}: asked for a permutation, the recording has kind {kind}"
            )));
        }
        let row = self.perms.get(offset as usize).ok_or_else(|| {
            DisaError::Replay(format!("draw {index}: no permutation row {offset}"))
        })?;
        if row.len() != n {
            return Err(DisaError::Replay(format!(
                "draw {index}: permutation of {} recorded, {n} asked",
                row.len()
            )));
        }
        Ok(row.clone())
    }

    fn normal(&mut self, kind: DrawKind, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let index = self.cursor;
        let [k, offset, d0, d1] = self.next_event("normal noise")?;
        if k != kind.code() || d0 as usize != rows || d1 as usize != cols {
            return Err(DisaError::Replay(format!(
                "draw {index}: asked for {kind:?} [{rows}, {cols}], the recording has kind {k} \
                 [{d0}, {d1}]"
            )));
        }
        let start = offset as usize;
        let end = start + rows * cols;
        self.normal
            .get(start..end)
            .map(|s| s.to_vec())
            .ok_or_else(|| {
                DisaError::Replay(format!("draw {index}: values {start}..{end} missing"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeded_stream_is_reproducible_and_normal() {
        let mut a = SeededNoise::new(7);
        let mut b = SeededNoise::new(7);
        let va = a.normal(DrawKind::InitialNoise, 100, 100).unwrap();
        assert_eq!(va, b.normal(DrawKind::InitialNoise, 100, 100).unwrap());
        let mean: f64 = va.iter().map(|&v| v as f64).sum::<f64>() / va.len() as f64;
        let var: f64 = va.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / va.len() as f64;
        assert!(mean.abs() < 0.03, "mean {mean}");
        assert!((var - 1.0).abs() < 0.05, "var {var}");
        let mut p = a.permutation(256).unwrap();
        p.sort_unstable();
        assert_eq!(p, (0..256).collect::<Vec<_>>());
    }

    #[test]
    fn replay_checks_kind_and_shape() {
        let mut r = ReplayNoise::new(vec![[0, 0, 1, 2]], vec![1.0, 2.0], vec![]);
        assert!(r.normal(DrawKind::StepNoise, 1, 2).is_err());
        let mut r = ReplayNoise::new(vec![[0, 0, 1, 2]], vec![1.0, 2.0], vec![]);
        assert_eq!(
            r.normal(DrawKind::InitialNoise, 1, 2).unwrap(),
            vec![1.0, 2.0]
        );
        assert!(r.normal(DrawKind::StepNoise, 1, 2).is_err());
    }
}
