//! Gaussian diffusion tables for MAR's head, computed once in f64 exactly as the official
//! improved-DDPM code does: cosine betas over 1000 timesteps, respacing with Python's
//! round-half-even on an accumulated stride, DiSA's optional timestep clip, and the
//! `p_sample` coefficients of the respaced chain.

use crate::error::{Result, invalid};
use burn::tensor::Tensor;
use std::collections::BTreeSet;

/// Timesteps of the base (training) diffusion.
pub const NUM_BASE_TIMESTEPS: usize = 1000;

/// DiSA's "time-offset correction": retained timesteps above the clip are replaced by the
/// clip, and duplicates collapse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimestepClip(pub Option<usize>);

impl TimestepClip {
    /// No clip: plain MAR (`diff_sampler="default"`).
    pub const NONE: Self = Self(None);
    /// DiSA's default clip at 950.
    pub const DISA: Self = Self(Some(950));
}

/// The cosine `ᾱ(s)` of Nichol & Dhariwal, `s` in [0, 1].
fn alpha_bar(s: f64) -> f64 {
    ((s + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
        .cos()
        .powi(2)
}

/// The 1000 base betas (`betas_for_alpha_bar` with `max_beta = 0.999`).
pub fn base_betas() -> Vec<f64> {
    let n = NUM_BASE_TIMESTEPS as f64;
    (0..NUM_BASE_TIMESTEPS)
        .map(|i| (1.0 - alpha_bar((i + 1) as f64 / n) / alpha_bar(i as f64 / n)).min(0.999))
        .collect()
}

/// `np.cumprod(1 - betas)`.
fn cumprod_alphas(betas: &[f64]) -> Vec<f64> {
    let mut acc = 1.0;
    betas
        .iter()
        .map(|b| {
            acc *= 1.0 - b;
            acc
        })
        .collect()
}

/// `space_timesteps(1000, "S")` for a single section: `S` timesteps taken at
/// `round(m * stride)`, the float index accumulated by repeated addition and rounded half to
/// even, as Python does.
pub fn space_timesteps(count: usize) -> Result<BTreeSet<usize>> {
    if count == 0 || count > NUM_BASE_TIMESTEPS {
        return Err(invalid!(
            "cannot respace {NUM_BASE_TIMESTEPS} timesteps to {count}"
        ));
    }
    let stride = if count <= 1 {
        1.0
    } else {
        (NUM_BASE_TIMESTEPS - 1) as f64 / (count - 1) as f64
    };
    let mut cur = 0.0f64;
    let mut taken = BTreeSet::new();
    for _ in 0..count {
        taken.insert(cur.round_ties_even() as usize);
        cur += stride;
    }
    Ok(taken)
}

/// One respaced diffusion: the timesteps it visits and the f64 coefficients of every reverse
/// step. Index `n = 0..len()` runs from the cleanest (0) to the noisiest timestep.
#[derive(Clone, Debug)]
pub struct SpacedDiffusion {
    /// Original timestep (0..999) the network sees at respaced index `n`.
    pub timestep_map: Vec<usize>,
    pub betas: Vec<f64>,
    pub alphas_cumprod: Vec<f64>,
    pub alphas_cumprod_prev: Vec<f64>,
    pub posterior_variance: Vec<f64>,
    /// `log(post_var)` with index 0 replaced by index 1 (LEARNED_RANGE's lower bound).
    pub posterior_log_variance_clipped: Vec<f64>,
    /// `log(betas)` (LEARNED_RANGE's upper bound).
    pub log_betas: Vec<f64>,
    pub posterior_mean_coef1: Vec<f64>,
    pub posterior_mean_coef2: Vec<f64>,
    pub sqrt_recip_alphas_cumprod: Vec<f64>,
    pub sqrt_recipm1_alphas_cumprod: Vec<f64>,
}

impl SpacedDiffusion {
    /// The timesteps retained for `steps` requested steps under `clip`.
    pub fn timesteps(steps: usize, clip: TimestepClip) -> Result<BTreeSet<usize>> {
        let spaced = space_timesteps(steps)?;
        Ok(match clip.0 {
            None => spaced,
            Some(c) => spaced.into_iter().map(|t| t.min(c)).collect(),
        })
    }

    /// How many reverse steps `steps` requested steps really run after the clip.
    pub fn count_timesteps(steps: usize, clip: TimestepClip) -> Result<usize> {
        Ok(Self::timesteps(steps, clip)?.len())
    }

    /// `create_diffusion(str(steps), "cosine")` (with DiSA's `clip_timesteps` when given).
    pub fn new(steps: usize, clip: TimestepClip) -> Result<Self> {
        let use_timesteps = Self::timesteps(steps, clip)?;
        if use_timesteps.len() < 2 {
            return Err(invalid!(
                "{steps} diffusion steps leave {} distinct timestep(s); at least 2 are needed",
                use_timesteps.len()
            ));
        }
        let base_acp = cumprod_alphas(&base_betas());
        let mut last = 1.0;
        let mut betas = Vec::with_capacity(use_timesteps.len());
        let mut timestep_map = Vec::with_capacity(use_timesteps.len());
        for (i, &acp) in base_acp.iter().enumerate() {
            if use_timesteps.contains(&i) {
                betas.push(1.0 - acp / last);
                last = acp;
                timestep_map.push(i);
            }
        }
        Ok(Self::from_betas(betas, timestep_map))
    }

    /// Every derived array of `GaussianDiffusion.__init__` from (respaced) betas.
    fn from_betas(betas: Vec<f64>, timestep_map: Vec<usize>) -> Self {
        let n = betas.len();
        let acp = cumprod_alphas(&betas);
        let acp_prev: Vec<f64> = (0..n)
            .map(|i| if i == 0 { 1.0 } else { acp[i - 1] })
            .collect();
        let post_var: Vec<f64> = (0..n)
            .map(|i| betas[i] * (1.0 - acp_prev[i]) / (1.0 - acp[i]))
            .collect();
        let post_logvar_clipped: Vec<f64> = (0..n)
            .map(|i| post_var[if i == 0 { 1 } else { i }].ln())
            .collect();
        Self {
            log_betas: betas.iter().map(|b| b.ln()).collect(),
            posterior_mean_coef1: (0..n)
                .map(|i| betas[i] * acp_prev[i].sqrt() / (1.0 - acp[i]))
                .collect(),
            posterior_mean_coef2: (0..n)
                .map(|i| (1.0 - acp_prev[i]) * (1.0 - betas[i]).sqrt() / (1.0 - acp[i]))
                .collect(),
            sqrt_recip_alphas_cumprod: acp.iter().map(|a| (1.0 / a).sqrt()).collect(),
            sqrt_recipm1_alphas_cumprod: acp.iter().map(|a| (1.0 / a - 1.0).sqrt()).collect(),
            posterior_variance: post_var,
            posterior_log_variance_clipped: post_logvar_clipped,
            alphas_cumprod: acp,
            alphas_cumprod_prev: acp_prev,
            betas,
            timestep_map,
        }
    }

    /// Number of reverse steps (network evaluations per token).
    pub fn len(&self) -> usize {
        self.betas.len()
    }

    /// Always false: a diffusion has at least two steps.
    pub fn is_empty(&self) -> bool {
        self.betas.is_empty()
    }

    /// The f32 coefficients of reverse step `n`, cast from f64 at use as
    /// `_extract_into_tensor` does.
    pub fn step_coefficients(&self, n: usize) -> StepCoefficients {
        StepCoefficients {
            timestep: self.timestep_map[n],
            sqrt_recip: self.sqrt_recip_alphas_cumprod[n] as f32,
            sqrt_recipm1: self.sqrt_recipm1_alphas_cumprod[n] as f32,
            coef1: self.posterior_mean_coef1[n] as f32,
            coef2: self.posterior_mean_coef2[n] as f32,
            min_log: self.posterior_log_variance_clipped[n] as f32,
            max_log: self.log_betas[n] as f32,
            add_noise: n != 0,
        }
    }
}

/// What one `p_sample` step needs, in f32.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepCoefficients {
    /// Original timestep fed to the network.
    pub timestep: usize,
    pub sqrt_recip: f32,
    pub sqrt_recipm1: f32,
    pub coef1: f32,
    pub coef2: f32,
    /// Lower bound of the learned log-variance range.
    pub min_log: f32,
    /// Upper bound of the learned log-variance range.
    pub max_log: f32,
    /// False at the last step (n = 0), which adds no noise.
    pub add_noise: bool,
}

/// One `p_sample` step of the improved-DDPM code (LEARNED_RANGE variance, ε prediction, no
/// clipping), in the official operation order.
///
/// # Shapes
/// `x`, `eps`, `v`, `noise`: `[n, C]` → `[n, C]`.
pub fn p_sample(
    x: Tensor<2>,
    eps: Tensor<2>,
    v: Tensor<2>,
    s: &StepCoefficients,
    noise: Tensor<2>,
    temperature: f32,
) -> Tensor<2> {
    let frac = (v + 1.0) / 2.0;
    let log_var = frac.clone() * s.max_log + (frac.neg() + 1.0) * s.min_log;
    let pred_x0 = x.clone() * s.sqrt_recip - eps * s.sqrt_recipm1;
    let mean = pred_x0 * s.coef1 + x * s.coef2;
    if s.add_noise {
        mean + (log_var * 0.5).exp() * noise * temperature
    } else {
        mean
    }
}

/// Respaced diffusions cached by (requested steps, clip), built on first use.
#[derive(Debug, Default)]
pub struct DiffusionCache {
    entries: std::collections::HashMap<(usize, Option<usize>), std::sync::Arc<SpacedDiffusion>>,
}

impl DiffusionCache {
    /// The diffusion for `steps` under `clip`.
    pub fn get(
        &mut self,
        steps: usize,
        clip: TimestepClip,
    ) -> Result<std::sync::Arc<SpacedDiffusion>> {
        if let Some(d) = self.entries.get(&(steps, clip.0)) {
            return Ok(d.clone());
        }
        let d = std::sync::Arc::new(SpacedDiffusion::new(steps, clip)?);
        self.entries.insert((steps, clip.0), d.clone());
        Ok(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_schedule_check_values() {
        let b = base_betas();
        assert!((b[0] - 4.128422e-5).abs() < 1e-10);
        assert!((b[499] - 3.145886e-3).abs() < 1e-9);
        assert!((b[999] - 0.999).abs() < 1e-15);
        let acp = cumprod_alphas(&b);
        assert!((acp[950] - 5.820149e-3).abs() < 1e-8);
        assert!((acp[999] - 2.428767e-9).abs() < 1e-14);
    }

    #[test]
    fn respacing_rounds_half_to_even() {
        let s5: Vec<usize> = space_timesteps(5).unwrap().into_iter().collect();
        assert_eq!(s5, vec![0, 250, 500, 749, 999]);
        let s100: Vec<usize> = space_timesteps(100).unwrap().into_iter().collect();
        assert_eq!(&s100[..7], &[0, 10, 20, 30, 40, 50, 61]);
        assert_eq!(
            SpacedDiffusion::count_timesteps(50, TimestepClip::DISA).unwrap(),
            48
        );
        assert_eq!(
            SpacedDiffusion::count_timesteps(25, TimestepClip::DISA).unwrap(),
            24
        );
        assert_eq!(
            SpacedDiffusion::count_timesteps(30, TimestepClip::DISA).unwrap(),
            29
        );
    }

    #[test]
    fn clipped_five_step_betas_match_spec() {
        let d = SpacedDiffusion::new(5, TimestepClip::DISA).unwrap();
        let expected = [4.1284e-5, 0.15408, 0.41803, 0.70693, 0.95966];
        for (b, e) in d.betas.iter().zip(expected) {
            assert!((b - e).abs() / e < 1e-3, "{b} vs {e}");
        }
    }
}
