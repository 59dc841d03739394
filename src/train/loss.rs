//! The diffusion loss of MAR's `DiffLoss.forward`: improved-DDPM `training_losses` on the
//! unrespaced 1000-step cosine schedule with learned variance (`LEARNED_RANGE`): MSE on ε plus
//! the variational bound for the variance with the mean detached (the "hybrid" loss).

use crate::diffusion::{NUM_BASE_TIMESTEPS, SpacedDiffusion, TimestepClip};
use crate::error::Result;
use crate::model::DiffusionHead;
use crate::model::head::{TIME_FREQ_DIM, timestep_frequencies};
use burn::tensor::activation::silu;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Per-timestep tables of the training diffusion, in f32 (computed in f64 as the official code).
#[derive(Clone, Debug)]
pub struct TrainingDiffusion {
    sqrt_alphas_cumprod: Vec<f32>,
    sqrt_one_minus_alphas_cumprod: Vec<f32>,
    posterior_mean_coef1: Vec<f32>,
    posterior_mean_coef2: Vec<f32>,
    posterior_log_variance_clipped: Vec<f32>,
    log_betas: Vec<f32>,
    sqrt_recip_alphas_cumprod: Vec<f32>,
    sqrt_recipm1_alphas_cumprod: Vec<f32>,
    /// `timestep_frequencies(t)` for every t, `[1000 · 256]`.
    frequencies: Vec<f32>,
}

/// The loss terms of one batch (means over rows).
#[derive(Clone, Copy, Debug, Default)]
pub struct LossParts {
    pub mse: f32,
    pub vb: f32,
}

fn f32s(v: &[f64]) -> Vec<f32> {
    v.iter().map(|&x| x as f32).collect()
}

/// `approx_standard_normal_cdf` of the official code (tanh approximation).
fn approx_normal_cdf(x: Tensor<2>) -> Tensor<2> {
    let c = (2.0 / std::f64::consts::PI).sqrt();
    let inner = (x.clone() + x.powi_scalar(3) * 0.044715) * c;
    (inner.tanh() + 1.0) * 0.5
}

impl TrainingDiffusion {
    /// The tables of `create_diffusion(timestep_respacing="")`: all 1000 steps.
    pub fn new() -> Result<Self> {
        let d = SpacedDiffusion::new(NUM_BASE_TIMESTEPS, TimestepClip::NONE)?;
        Ok(Self {
            sqrt_alphas_cumprod: d.alphas_cumprod.iter().map(|a| a.sqrt() as f32).collect(),
            sqrt_one_minus_alphas_cumprod: d
                .alphas_cumprod
                .iter()
                .map(|a| (1.0 - a).sqrt() as f32)
                .collect(),
            posterior_mean_coef1: f32s(&d.posterior_mean_coef1),
            posterior_mean_coef2: f32s(&d.posterior_mean_coef2),
            posterior_log_variance_clipped: f32s(&d.posterior_log_variance_clipped),
            log_betas: f32s(&d.log_betas),
            sqrt_recip_alphas_cumprod: f32s(&d.sqrt_recip_alphas_cumprod),
            sqrt_recipm1_alphas_cumprod: f32s(&d.sqrt_recipm1_alphas_cumprod),
            frequencies: (0..NUM_BASE_TIMESTEPS)
                .flat_map(timestep_frequencies)
                .collect(),
        })
    }

    /// A `[n, 1]` column with `table[t_i]` per row.
    fn column(table: &[f32], t: &[usize], device: &Device) -> Tensor<2> {
        let v: Vec<f32> = t.iter().map(|&i| table[i]).collect();
        Tensor::from_data(TensorData::new(v, [t.len(), 1]), device)
    }

    /// `training_losses` for rows `x0` at timesteps `t` with noise `noise`, conditioned on `z`.
    /// The rows are `n / m` stacked repeats of the `m` tokens whose conditions are `z` (MAR's
    /// `diffusion_batch_mul`). Returns the mean loss over rows (a scalar to differentiate) and
    /// its parts. `mse_weights` (one per row), when given, weight each row's ε MSE in the
    /// loss to differentiate; the reported parts stay unweighted means.
    ///
    /// # Shapes
    /// `x0 [n, C]`, `z [m, dec]`, `t [n]` (values < 1000), `noise [n, C]` → `[1]`.
    pub fn loss(
        &self,
        head: &DiffusionHead,
        x0: Tensor<2>,
        z: Tensor<2>,
        t: &[usize],
        noise: Tensor<2>,
        mse_weights: Option<Vec<f32>>,
    ) -> Result<(Tensor<1>, LossParts)> {
        let device = x0.device();
        let [n, c] = x0.dims();
        let col = |table: &[f32]| Self::column(table, t, &device);
        // q_sample
        let x_t = x0.clone() * col(&self.sqrt_alphas_cumprod)
            + noise.clone() * col(&self.sqrt_one_minus_alphas_cumprod);

        // The time MLP runs once per distinct timestep and the condition embedding once per
        // token before the `diffusion_batch_mul` repeat: the same values, a fraction of the work.
        let mut distinct: Vec<usize> = t.to_vec();
        distinct.sort_unstable();
        distinct.dedup();
        let freqs: Vec<f32> = distinct
            .iter()
            .flat_map(|&i| &self.frequencies[i * TIME_FREQ_DIM..(i + 1) * TIME_FREQ_DIM])
            .copied()
            .collect();
        let freqs = Tensor::<2>::from_data(
            TensorData::new(freqs, [distinct.len(), TIME_FREQ_DIM]),
            &device,
        );
        let rows: Vec<i64> = t
            .iter()
            .map(|i| distinct.binary_search(i).expect("present") as i64)
            .collect();
        let rows = Tensor::<1, Int>::from_data(TensorData::new(rows, [n]), &device);
        let time_emb = head
            .time_mlp_out
            .forward(silu(head.time_mlp_in.forward(freqs)))
            .select(0, rows);
        let [m, _] = z.dims();
        if m == 0 || n % m != 0 {
            return Err(crate::error::DisaError::InvalidSetting(format!(
                "{n} loss rows are not a whole number of repeats of {m} conditions"
            )));
        }
        let cond = Tensor::cat(vec![head.condition(z); n / m], 0);
        let out = head.forward_embedded(x_t.clone(), time_emb, cond);
        let eps = out.clone().slice([0..n, 0..c]);
        let v = out.slice([0..n, c..2 * c]);

        let mse = (noise - eps.clone()).powi_scalar(2).mean_dim(1); // [n, 1]

        // Variational bound on the variance only: the mean uses the detached ε.
        let min_log = col(&self.posterior_log_variance_clipped);
        let frac = (v + 1.0) * 0.5;
        let model_log_var =
            frac.clone() * col(&self.log_betas) + (frac.neg() + 1.0) * min_log.clone();
        let coef1 = col(&self.posterior_mean_coef1);
        let coef2 = col(&self.posterior_mean_coef2);
        let pred_x0 = x_t.clone() * col(&self.sqrt_recip_alphas_cumprod)
            - eps.detach() * col(&self.sqrt_recipm1_alphas_cumprod);
        let model_mean = pred_x0 * coef1.clone() + x_t.clone() * coef2.clone();
        let true_mean = x0.clone() * coef1 + x_t * coef2;
        let ln2 = std::f64::consts::LN_2;
        // normal_kl(true_mean, true_logvar, model_mean, model_logvar), in bits
        let kl = ((model_log_var.clone() - min_log.clone()).add_scalar(-1.0)
            + (min_log - model_log_var.clone()).exp()
            + (true_mean - model_mean.clone()).powi_scalar(2) * model_log_var.clone().neg().exp())
            * 0.5;
        let kl = kl.mean_dim(1) / ln2;

        let at_zero: Vec<f32> = t.iter().map(|&i| (i == 0) as u8 as f32).collect();
        let vb = if at_zero.iter().any(|&m| m > 0.0) {
            // t = 0: the discretized Gaussian decoder NLL (8-bit bins of [-1, 1]).
            let nll = discretized_nll(x0, model_mean, model_log_var * 0.5).mean_dim(1) / ln2;
            let m = Tensor::<2>::from_data(TensorData::new(at_zero, [n, 1]), &device);
            nll * m.clone() + kl * (m.neg() + 1.0)
        } else {
            kl
        };

        // Detached before the reduction: a tracked `mean` that never reaches `backward` would
        // be an orphan node keeping the whole step's graph (and its activations) alive.
        let parts = LossParts {
            mse: scalar(mse.clone().detach().mean())?,
            vb: scalar(vb.clone().detach().mean())?,
        };
        let mse = match mse_weights {
            Some(w) if w.len() == n => {
                mse * Tensor::<2>::from_data(TensorData::new(w, [n, 1]), &device)
            }
            Some(w) => {
                return Err(crate::error::DisaError::InvalidSetting(format!(
                    "{} loss weights for {n} rows",
                    w.len()
                )));
            }
            None => mse,
        };
        Ok(((mse + vb).mean(), parts))
    }
}

/// `-discretized_gaussian_log_likelihood(x, means, log_scales)` per element.
fn discretized_nll(x: Tensor<2>, means: Tensor<2>, log_scales: Tensor<2>) -> Tensor<2> {
    let centered = x.clone() - means;
    let inv_std = log_scales.neg().exp();
    let cdf_plus = approx_normal_cdf((centered.clone() + 1.0 / 255.0) * inv_std.clone());
    let cdf_min = approx_normal_cdf((centered - 1.0 / 255.0) * inv_std);
    let log_cdf_plus = cdf_plus.clone().clamp_min(1e-12).log();
    let log_one_minus_cdf_min = (cdf_min.clone().neg() + 1.0).clamp_min(1e-12).log();
    let log_delta = (cdf_plus - cdf_min).clamp_min(1e-12).log();
    let low = x.clone().lower_elem(-0.999);
    let high = x.greater_elem(0.999);
    let log_probs = log_delta
        .mask_where(high, log_one_minus_cdf_min)
        .mask_where(low, log_cdf_plus);
    log_probs.neg()
}

fn scalar(t: Tensor<1>) -> Result<f32> {
    let v = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| crate::error::DisaError::Device(format!("reading the loss back: {e:?}")))?;
    Ok(v[0])
}
