//! `Generation`: MAR's `sample_tokens` as a step-by-step state machine. Each call to
//! [`Generation::step`] runs one AR iteration — transformer, then the diffusion head's DDPM loop
//! for the tokens revealed at that step, with DiSA's step count — and returns a [`StepEvent`]
//! the CLI turns into a progress bar and the page into pixels.

use crate::diffusion::{DiffusionCache, StepCoefficients, TimestepClip};
use crate::error::{DisaError, Result, invalid};
use crate::model::{MarConfig, MaskLayout, Model};
use crate::noise::{DrawKind, NoiseSource};
use crate::schedule::{self, CfgSchedule, Plan, StepSchedule};
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// A loaded model with its configuration and device: what generations run on.
#[derive(Debug)]
pub struct Generator {
    pub model: Model,
    pub config: MarConfig,
    pub device: Device,
    /// The head's time embedding of every base timestep, `[1000, W]`: computed once so each
    /// diffusion step only slices a row (DiSA visits many distinct timesteps).
    time_table: Tensor<2>,
}

impl Generator {
    /// Wraps a built model; precomputes the time-embedding table.
    pub fn new(model: Model, config: MarConfig, device: Device) -> Self {
        let time_table = model
            .head
            .time_embedding_table(crate::diffusion::NUM_BASE_TIMESTEPS, &device);
        Self {
            model,
            config,
            device,
            time_table,
        }
    }

    /// The head's time embedding for an original timestep (`[1, W]`).
    pub fn time_embedding(&self, t: usize) -> Tensor<2> {
        let [_, w] = self.time_table.dims();
        self.time_table.clone().slice([t..t + 1, 0..w])
    }
}

/// What to generate and how.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// One entry per image: a class, or `None` for unconditional.
    pub labels: Vec<Option<usize>>,
    /// AR steps `K`.
    pub ar_steps: usize,
    /// Diffusion steps per AR step.
    pub schedule: StepSchedule,
    /// Timestep clip; `None` takes the schedule's own default (950 for DiSA, none for constant).
    pub clip: Option<TimestepClip>,
    /// Classifier-free guidance scale (1 = off).
    pub cfg: f32,
    pub cfg_schedule: CfgSchedule,
    /// Scales the noise injected at each diffusion step.
    pub temperature: f32,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            labels: vec![Some(0)],
            ar_steps: 64,
            schedule: StepSchedule::Linear { start: 50, end: 5 },
            clip: None,
            cfg: 1.0,
            cfg_schedule: CfgSchedule::Linear,
            temperature: 1.0,
        }
    }
}

impl Request {
    /// The clip this request runs with.
    pub fn effective_clip(&self) -> TimestepClip {
        self.clip.unwrap_or_else(|| self.schedule.default_clip())
    }

    /// Checks every setting against a model configuration.
    pub fn validate(&self, config: &MarConfig) -> Result<()> {
        if self.labels.is_empty() {
            return Err(invalid!("batch size must be at least 1"));
        }
        for l in self.labels.iter().flatten() {
            if *l >= config.class_num {
                return Err(invalid!(
                    "class {l} out of range: this model has {} classes (0..{})",
                    config.class_num,
                    config.class_num - 1
                ));
            }
        }
        if !self.cfg.is_finite() || self.cfg < 1.0 {
            return Err(invalid!(
                "cfg {} must be a finite number ≥ 1 (1 turns guidance off)",
                self.cfg
            ));
        }
        if !self.temperature.is_finite() || self.temperature < 0.0 {
            return Err(invalid!(
                "temperature {} must be a finite number ≥ 0",
                self.temperature
            ));
        }
        if let Some(TimestepClip(Some(c))) = self.clip
            && (c == 0 || c > crate::diffusion::NUM_BASE_TIMESTEPS)
        {
            return Err(invalid!("timestep clip {c} must be in 1..=1000"));
        }
        schedule::validate_ar_steps(self.ar_steps, config.seq_len())?;
        // Builds the plan, which checks the schedule against K.
        self.plan(config).map(|_| ())
    }

    /// The per-step plan for a model configuration.
    pub fn plan(&self, config: &MarConfig) -> Result<Plan> {
        schedule::plan(
            self.ar_steps,
            config.seq_len(),
            &self.schedule,
            self.effective_clip(),
            self.cfg,
            self.cfg_schedule,
        )
    }

    fn uses_cfg(&self) -> bool {
        self.cfg != 1.0
    }
}

/// Wall-clock time of one AR step's phases, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub transformer_ms: f64,
    pub head_ms: f64,
}

/// What one AR step did.
#[derive(Clone, Debug)]
pub struct StepEvent {
    /// AR step index (0-based) and the total.
    pub k: usize,
    pub ar_steps: usize,
    /// Per image: positions revealed at this step, ascending (the row order of `values`).
    pub positions: Vec<Vec<usize>>,
    /// Diffusion steps requested and actually run (distinct timesteps).
    pub nominal_steps: usize,
    pub effective_steps: usize,
    /// CFG scale used.
    pub cfg: f32,
    /// Tokens still masked after this step.
    pub mask_len_after: usize,
    /// The revealed token values: `[sum of positions, C]`, images in order.
    pub values: Vec<f32>,
    /// Condition rows `z` passed to the head (`[rows, dec]`, uncond rows after cond rows),
    /// when recording was asked for (tests, analysis).
    pub conditions: Option<Vec<f32>>,
    pub timings: StepTimings,
}

impl StepEvent {
    /// Tokens revealed per image at this step.
    pub fn tokens_per_image(&self) -> usize {
        self.positions.first().map_or(0, |p| p.len())
    }
}

/// Monotonic clock in milliseconds that works natively and in the browser.
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
}

/// The head's work for one AR step, before its result is read back.
struct PendingStep {
    to_pred: Vec<Vec<usize>>,
    mask_len: usize,
    nominal: usize,
    effective: usize,
    cfg: f32,
    conditions: Option<Tensor<2>>,
    transformer_ms: f64,
    head_start: f64,
}

/// One generation in progress.
pub struct Generation {
    generator: Arc<Generator>,
    request: Request,
    plan: Plan,
    noise: Box<dyn NoiseSource>,
    /// Per image, the generation order (a permutation of positions).
    orders: Vec<Vec<usize>>,
    /// Per image, `true` where the token is still unknown.
    mask: Vec<Vec<bool>>,
    /// `[B, N, C]` row-major, zeros where unknown.
    tokens: Vec<f32>,
    k: usize,
    diffusions: DiffusionCache,
    record_conditions: bool,
    sync_timings: bool,
}

impl Generation {
    /// Starts a generation: validates the request and draws the generation orders.
    pub fn new(
        generator: Arc<Generator>,
        request: Request,
        mut noise: Box<dyn NoiseSource>,
    ) -> Result<Self> {
        let config = &generator.config;
        request.validate(config)?;
        let plan = request.plan(config)?;
        let (b, n, c) = (request.labels.len(), config.seq_len(), config.token_dim());
        let orders = (0..b)
            .map(|_| noise.permutation(n))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            generator,
            plan,
            noise,
            orders,
            mask: vec![vec![true; n]; b],
            tokens: vec![0.0; b * n * c],
            k: 0,
            diffusions: DiffusionCache::default(),
            record_conditions: false,
            sync_timings: !cfg!(target_arch = "wasm32"),
            request,
        })
    }

    /// Keeps the head's condition rows in every event (for parity tests and analysis).
    pub fn record_conditions(mut self, on: bool) -> Self {
        self.record_conditions = on;
        self
    }

    /// Waits for the device between phases so per-phase timings are real (default natively).
    pub fn sync_timings(mut self, on: bool) -> Self {
        self.sync_timings = on;
        self
    }

    /// The plan being executed.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The request being executed.
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// The generation orders drawn at the start.
    pub fn orders(&self) -> &[Vec<usize>] {
        &self.orders
    }

    /// Whether every AR step has run.
    pub fn is_done(&self) -> bool {
        self.k >= self.request.ar_steps
    }

    /// AR steps done so far.
    pub fn steps_done(&self) -> usize {
        self.k
    }

    /// Current tokens `[B, N, C]` (zeros where unknown).
    pub fn tokens(&self) -> &[f32] {
        &self.tokens
    }

    /// Per image, which positions are still unknown.
    pub fn mask(&self) -> &[Vec<bool>] {
        &self.mask
    }

    /// Changes the schedule for the AR steps not run yet (the page's live slider).
    pub fn set_schedule(&mut self, schedule: StepSchedule) -> Result<()> {
        let mut request = self.request.clone();
        request.schedule = schedule;
        let plan = request.plan(&self.generator.config)?;
        self.request = request;
        self.plan = plan;
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        if self.sync_timings {
            self.generator
                .device
                .sync()
                .map_err(|e| DisaError::Device(format!("{e:?}")))?;
        }
        Ok(())
    }

    /// Runs one AR step synchronously (native). `None` once finished.
    pub fn step(&mut self) -> Result<Option<StepEvent>> {
        let Some((pending, sampled)) = self.launch()? else {
            return Ok(None);
        };
        let values = read_f32(sampled)?;
        let conditions = pending.conditions.clone().map(read_f32).transpose()?;
        Ok(Some(self.complete(pending, values, conditions)))
    }

    /// Runs one AR step, reading results back asynchronously (required on WebGPU).
    pub async fn step_async(&mut self) -> Result<Option<StepEvent>> {
        let Some((pending, sampled)) = self.launch()? else {
            return Ok(None);
        };
        let values = read_f32_async(sampled).await?;
        let conditions = match pending.conditions.clone() {
            Some(t) => Some(read_f32_async(t).await?),
            None => None,
        };
        Ok(Some(self.complete(pending, values, conditions)))
    }

    /// Runs every remaining step; returns the events.
    pub fn run_to_end(&mut self) -> Result<Vec<StepEvent>> {
        let mut events = Vec::new();
        while let Some(e) = self.step()? {
            events.push(e);
        }
        Ok(events)
    }

    /// Transformer + head for step `k`, leaving the result on the device.
    fn launch(&mut self) -> Result<Option<(PendingStep, Tensor<2>)>> {
        if self.is_done() {
            return Ok(None);
        }
        let g = self.generator.clone();
        let (config, device) = (&g.config, &g.device);
        let (b, n, c) = (
            self.request.labels.len(),
            config.seq_len(),
            config.token_dim(),
        );
        let (k, ar_steps) = (self.k, self.request.ar_steps);
        let planned = self.plan.steps[k].clone();
        let use_cfg = self.request.uses_cfg();
        let t0 = now_ms();

        // Transformer over [cond; uncond] images when guiding.
        let mut labels = self.request.labels.clone();
        let mut mask = self.mask.clone();
        let mut tokens = self.tokens.clone();
        if use_cfg {
            labels.extend(std::iter::repeat_n(None, b));
            mask.extend(self.mask.iter().cloned());
            tokens.extend_from_slice(&self.tokens);
        }
        let rows_b = labels.len();
        let layout = MaskLayout::new(&mask, config.buffer_size);
        let tokens_t = Tensor::<3>::from_data(TensorData::new(tokens, [rows_b, n, c]), device);
        let class_emb = g.model.transformer.class_embedding(&labels, device);
        let encoded = g.model.transformer.encode(tokens_t, &layout, class_emb);
        let z = g.model.transformer.decode(encoded, &layout); // [rows_b, N, dec]

        // Which positions this step reveals.
        let mask_len = planned.mask_len_after;
        let last = k + 1 == ar_steps;
        let to_pred: Vec<Vec<usize>> = (0..b)
            .map(|i| {
                let still_masked: std::collections::HashSet<usize> = if last {
                    Default::default()
                } else {
                    self.orders[i][..mask_len].iter().copied().collect()
                };
                (0..n)
                    .filter(|&p| self.mask[i][p] && !still_masked.contains(&p))
                    .collect()
            })
            .collect();
        let per_image = to_pred[0].len();
        if to_pred.iter().any(|p| p.len() != per_image) {
            return Err(DisaError::Config(
                "images revealed different token counts".into(),
            ));
        }
        let rows_n = per_image * b;

        // z rows in (image, position) order, then the uncond copies.
        let flat_index: Vec<i64> = (0..rows_b)
            .flat_map(|r| to_pred[r % b].iter().map(move |&p| (r * n + p) as i64))
            .collect();
        let dec = config.decoder_embed_dim;
        let z_sel = if flat_index.is_empty() {
            Tensor::<2>::zeros([0, dec], device)
        } else {
            let idx = Tensor::from_data(TensorData::new(flat_index, [rows_b * per_image]), device);
            z.reshape([rows_b * n, dec]).select(0, idx)
        };
        self.sync()?;
        let t1 = now_ms();

        let diffusion = self
            .diffusions
            .get(planned.nominal_steps, self.request.effective_clip())?;
        let cfg_scale = planned.cfg;
        let sampled = if rows_n == 0 {
            // Nothing revealed (only possible when K is close to N): draw as the official code does.
            self.noise.normal(DrawKind::InitialNoise, 0, c)?;
            for _ in 0..diffusion.len() {
                self.noise.normal(DrawKind::StepNoise, 0, c)?;
            }
            Tensor::<2>::zeros([0, c], device)
        } else {
            let cond = g.model.head.condition(z_sel.clone());
            let init = self.noise.normal(DrawKind::InitialNoise, rows_n, c)?;
            let mut x = Tensor::<2>::from_data(TensorData::new(init, [rows_n, c]), device);
            let draw_rows = if use_cfg { 2 * rows_n } else { rows_n };
            for idx in (0..diffusion.len()).rev() {
                let coeffs = diffusion.step_coefficients(idx);
                let time_emb = g.time_embedding(coeffs.timestep);
                let (eps, v) = if use_cfg {
                    g.model
                        .head
                        .forward_cfg_embedded(x.clone(), time_emb, cond.clone(), cfg_scale)
                } else {
                    let out = g
                        .model
                        .head
                        .forward_embedded(x.clone(), time_emb, cond.clone());
                    (
                        out.clone().slice([0..rows_n, 0..c]),
                        out.slice([0..rows_n, c..2 * c]),
                    )
                };
                let mut drawn = self.noise.normal(DrawKind::StepNoise, draw_rows, c)?;
                drawn.truncate(rows_n * c); // with CFG only the kept half matters
                let step_noise =
                    Tensor::<2>::from_data(TensorData::new(drawn, [rows_n, c]), device);
                x = p_sample(x, eps, v, &coeffs, step_noise, self.request.temperature);
            }
            x
        };
        let pending = PendingStep {
            to_pred,
            mask_len,
            nominal: planned.nominal_steps,
            effective: diffusion.len(),
            cfg: cfg_scale,
            conditions: self.record_conditions.then_some(z_sel),
            transformer_ms: t1 - t0,
            head_start: t1,
        };
        Ok(Some((pending, sampled)))
    }

    /// Writes the sampled tokens back and advances.
    fn complete(
        &mut self,
        p: PendingStep,
        values: Vec<f32>,
        conditions: Option<Vec<f32>>,
    ) -> StepEvent {
        let config = &self.generator.config;
        let (n, c) = (config.seq_len(), config.token_dim());
        let mut row = 0;
        for (i, positions) in p.to_pred.iter().enumerate() {
            for &pos in positions {
                let dst = (i * n + pos) * c;
                self.tokens[dst..dst + c].copy_from_slice(&values[row * c..(row + 1) * c]);
                self.mask[i][pos] = false;
                row += 1;
            }
        }
        let event = StepEvent {
            k: self.k,
            ar_steps: self.request.ar_steps,
            positions: p.to_pred,
            nominal_steps: p.nominal,
            effective_steps: p.effective,
            cfg: p.cfg,
            mask_len_after: p.mask_len,
            values,
            conditions,
            timings: StepTimings {
                transformer_ms: p.transformer_ms,
                head_ms: now_ms() - p.head_start,
            },
        };
        self.k += 1;
        event
    }

    /// Decodes the current tokens to images in about [−1, 1] (`[B, ch, H, W]`), if the model
    /// has a decoder.
    pub fn decode(&self) -> Option<Tensor<4>> {
        let g = &self.generator;
        let (b, n, c) = (
            self.request.labels.len(),
            g.config.seq_len(),
            g.config.token_dim(),
        );
        let tokens =
            Tensor::<3>::from_data(TensorData::new(self.tokens.clone(), [b, n, c]), &g.device);
        g.model.decode_tokens(tokens, &g.config)
    }
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

fn read_f32(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading results back: {e:?}")))
}

async fn read_f32_async(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data_async()
        .await
        .map_err(|e| DisaError::Device(format!("reading results back: {e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading results back: {e:?}")))
}
