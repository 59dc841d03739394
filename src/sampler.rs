//! `Generation`: MAR's `sample_tokens` as a step-by-step state machine. Each call to
//! [`Generation::step`] runs one AR iteration — transformer, then the diffusion head's DDPM loop
//! for the tokens revealed at that step, with DiSA's step count — and returns a [`StepEvent`]
//! the CLI turns into a progress bar and the page into pixels.

use crate::diffusion::{DiffusionCache, SpacedDiffusion, StepCoefficients, TimestepClip, p_sample};
use crate::error::{DisaError, Result, invalid};
pub use crate::gpu::Kernels;
use crate::gpu::{FusedHead, FusedTransformer, TransformerJob, TransformerSubmitted};
use crate::model::host_head::{HostHead, HostScratch};
use crate::model::host_transformer::HostTransformer;
use crate::model::threads::{parts_here, run_parts, split_ranges};
use crate::model::{MarConfig, MaskLayout, Model};
use crate::noise::{DrawKind, NoiseSource};
use crate::schedule::{self, CfgSchedule, Plan, StepSchedule};
use burn::tensor::{Device, Tensor, TensorData};
use std::sync::Arc;

/// A loaded model with its configuration and device: what generations run on.
#[derive(Debug)]
pub struct LoadedModel {
    pub model: Model,
    pub config: MarConfig,
    pub device: Device,
    /// The head's time embedding of every base timestep, `[1000, W]`: computed once so each
    /// diffusion step only slices a row (DiSA visits many distinct timesteps).
    time_table: Tensor<2>,
    /// The head's sampling loop as fused GPU kernels, on GPU devices that have them.
    fused: Option<Arc<FusedHead>>,
    /// Why there is no fused head (for error messages).
    fused_unavailable: String,
    /// The head's network on the host, on the plain CPU backend (small heads only).
    host_head: Option<HostHead>,
    /// The transformer's blocks on the host, on the plain CPU backend (small models only).
    host_transformer: Option<HostTransformer>,
    /// The transformer's forward pass as fused GPU kernels, on GPU devices that have them.
    fused_transformer: Option<Arc<FusedTransformer>>,
    /// Why there is no fused transformer (for error messages).
    fused_transformer_unavailable: String,
}

impl LoadedModel {
    /// Wraps a built model; precomputes the time-embedding table.
    pub fn new(model: Model, config: MarConfig, device: Device) -> Self {
        let time_table = model
            .head
            .time_embedding_table(crate::diffusion::NUM_BASE_TIMESTEPS, &device);
        let plain_cpu = crate::backend::is_plain_cpu(&device);
        let host_head = plain_cpu
            .then(|| HostHead::new(&model.head, time_table.clone()))
            .flatten();
        let host_transformer = plain_cpu
            .then(|| HostTransformer::new(&model.transformer))
            .flatten();
        Self {
            model,
            config,
            device,
            time_table,
            host_head,
            host_transformer,
            fused: None,
            fused_unavailable: "the device is not a GPU".into(),
            fused_transformer: None,
            fused_transformer_unavailable: "the device is not a GPU".into(),
        }
    }

    /// Attaches the fused head kernels built for this model (see [`crate::gpu`]); an error
    /// leaves the tensor path and is reported when the fused kernels are asked for.
    pub fn with_fused_head(mut self, fused: Result<Option<FusedHead>>) -> Self {
        match fused {
            Ok(Some(f)) => self.fused = Some(Arc::new(f)),
            Ok(None) => {}
            Err(e) => self.fused_unavailable = e.to_string(),
        }
        self
    }

    /// Attaches the fused transformer kernels built for this model; an error leaves Burn's
    /// transformer and is reported when the fused kernels are asked for.
    pub fn with_fused_transformer(mut self, fused: Result<Option<FusedTransformer>>) -> Self {
        match fused {
            Ok(Some(f)) => self.fused_transformer = Some(Arc::new(f)),
            Ok(None) => {}
            Err(e) => self.fused_transformer_unavailable = e.to_string(),
        }
        self
    }

    /// The fused transformer kernels, where this generator has them.
    pub fn fused_transformer(&self) -> Option<&FusedTransformer> {
        self.fused_transformer.as_deref()
    }

    /// Why [`Self::fused_transformer`] is `None` (for a caller that checks `Kernels::Fused`
    /// before it runs anything).
    pub fn fused_transformer_unavailable(&self) -> &str {
        &self.fused_transformer_unavailable
    }

    /// The fused head kernels, where this generator has them.
    pub fn fused_head(&self) -> Option<&FusedHead> {
        self.fused.as_deref()
    }

    /// Why [`Self::fused_head`] is `None`.
    pub fn fused_unavailable(&self) -> &str {
        &self.fused_unavailable
    }

    /// The head at original timestep `t`: guided ε and the variance channels `v`, both
    /// `[n, C]`, for `x [n, C]` and the condition embedding `cond` (`[2n, W]` with CFG: cond
    /// rows, then uncond). The one entry point of every head call outside the fused kernels
    /// (the sampler and the teaching analysis), so both run the same arithmetic: the host
    /// head on the plain CPU backend, Burn's layers elsewhere.
    pub fn head_eps_and_v(
        &self,
        x: Tensor<2>,
        t: usize,
        cond: Tensor<2>,
        cfg: Option<f32>,
    ) -> (Tensor<2>, Tensor<2>) {
        if let Some(host) = &self.host_head {
            return host_eps_and_v(self, host, x, t, cond, cfg);
        }
        let time_emb = self.time_embedding(t);
        match cfg {
            Some(scale) => self
                .model
                .head
                .forward_cfg_embedded(x, time_emb, cond, scale),
            None => {
                let [n, c] = x.dims();
                let out = self.model.head.forward_embedded(x, time_emb, cond);
                (out.clone().slice([0..n, 0..c]), out.slice([0..n, c..2 * c]))
            }
        }
    }

    /// The head's time embedding for an original timestep (`[1, W]`).
    pub fn time_embedding(&self, t: usize) -> Tensor<2> {
        let [_, w] = self.time_table.dims();
        self.time_table.clone().slice([t..t + 1, 0..w])
    }
}

/// Which timestep clip a request asks for (DiSA's time-offset correction, see
/// [`TimestepClip`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Clip {
    /// The schedule's own, as the reference code runs it: 950 for DiSA schedules, none for
    /// constant ones.
    #[default]
    ScheduleDefault,
    /// No clip (plain MAR).
    Off,
    /// Retained timesteps above this one are replaced by it (1..=1000, checked by
    /// [`Clip::validate`], part of [`Request::validate`]).
    At(usize),
}

impl Clip {
    /// Checks a timestep clip's range (1..=1000).
    pub fn validate(self) -> Result<()> {
        match self {
            Self::At(c) if c == 0 || c > crate::diffusion::NUM_BASE_TIMESTEPS => Err(invalid!(
                "timestep clip {c} must be in 1..={}",
                crate::diffusion::NUM_BASE_TIMESTEPS
            )),
            _ => Ok(()),
        }
    }
}

/// The largest classifier-free guidance scale accepted. Published MAR/DiSA settings stay below
/// 10 and the page's slider stops at 10; at 100 the images are already saturated, and far
/// larger scales only push the arithmetic towards overflow, so nothing above this is run.
pub const MAX_CFG: f32 = 1000.0;

/// The largest noise temperature accepted. MAR samples at about 1 (the page's slider stops at
/// 2); at 10 the images are pure noise already, and far larger values only push the
/// arithmetic towards overflow, so nothing above this is run.
pub const MAX_TEMPERATURE: f32 = 100.0;

/// Checks a classifier-free guidance scale: finite, in `1..=`[`MAX_CFG`]. Every reader of
/// the setting (a request, a model file's suggestion, a flag) goes through this one check.
pub fn check_cfg(cfg: f32) -> Result<()> {
    if cfg.is_finite() && (1.0..=MAX_CFG).contains(&cfg) {
        Ok(())
    } else {
        Err(invalid!(
            "cfg {cfg} must be a finite number in 1..={MAX_CFG} (1 turns guidance off; larger \
             scales cannot give meaningful images)"
        ))
    }
}

/// Checks a noise temperature: finite, in `0..=`[`MAX_TEMPERATURE`].
pub fn check_temperature(temperature: f32) -> Result<()> {
    if temperature.is_finite() && (0.0..=MAX_TEMPERATURE).contains(&temperature) {
        Ok(())
    } else {
        Err(invalid!(
            "temperature {temperature} must be a finite number in 0..={MAX_TEMPERATURE} (MAR \
             samples at about 1; larger values cannot give meaningful images)"
        ))
    }
}

impl std::fmt::Display for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ScheduleDefault => f.write_str("default"),
            Self::Off => f.write_str("none"),
            Self::At(t) => write!(f, "{t}"),
        }
    }
}

impl std::str::FromStr for Clip {
    type Err = DisaError;

    /// `default`, `none` / `off`, or a timestep.
    fn from_str(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "default" => Ok(Self::ScheduleDefault),
            "none" | "off" => Ok(Self::Off),
            n => n
                .parse::<usize>()
                .map(Self::At)
                .map_err(|_| invalid!("clip `{text}`: use a timestep (e.g. 950), none or default")),
        }
    }
}

impl From<TimestepClip> for Clip {
    fn from(clip: TimestepClip) -> Self {
        clip.0.map_or(Self::Off, Self::At)
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
    /// DiSA's timestep clip: the schedule's own by default.
    pub clip: Clip,
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
            clip: Clip::ScheduleDefault,
            cfg: 1.0,
            cfg_schedule: CfgSchedule::Linear,
            temperature: 1.0,
        }
    }
}

impl Request {
    /// The clip this request runs with.
    pub fn effective_clip(&self) -> TimestepClip {
        match self.clip {
            Clip::ScheduleDefault => self.schedule.default_clip(),
            Clip::Off => TimestepClip::NONE,
            Clip::At(t) => TimestepClip(Some(t)),
        }
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
        // The same checks as a model file's suggestions and the CLI's flags before loading
        // (`crate::defaults::SamplingDefaults::validate`).
        check_cfg(self.cfg)?;
        check_temperature(self.temperature)?;
        self.clip.validate()?;
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

    /// Whether each image runs with an unconditional copy (CFG scale ≠ 1, as MAR).
    pub fn uses_cfg(&self) -> bool {
        self.cfg != 1.0
    }
}

/// Wall-clock time of one AR step's phases, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepTimings {
    pub transformer_ms: f64,
    pub head_ms: f64,
    /// The fused head's kernels' own time on the GPU (timestamp queries around the step's
    /// pass, read back with its result); `None` on the tensor path and where the adapter has
    /// no timestamp queries.
    pub head_gpu_ms: Option<f64>,
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

/// The clock lives in the base module; re-exported where callers have always found it.
pub use crate::base::now_ms;

/// The head's work for one AR step, before its result is read back.
struct PendingStep {
    to_pred: Vec<Vec<usize>>,
    mask_len: usize,
    nominal: usize,
    effective: usize,
    cfg: f32,
    /// When the transformer was launched; then its time and the head's start, set by
    /// [`Prepared::transformer_done`] once `z` is known to be computed.
    transformer_start: f64,
    transformer_ms: f64,
    head_start: f64,
    /// The fused head's GPU time so far when the step began (`FusedHead::gpu_time_ns`), where
    /// this step runs on the fused kernels of an adapter with timestamp queries.
    gpu_ns_start: Option<u64>,
}

/// One AR step after the transformer: what the head samples and from which conditions.
struct Prepared {
    pending: PendingStep,
    /// Tokens sampled at this step over all images (`n`).
    rows_n: usize,
    use_cfg: bool,
    diffusion: Arc<SpacedDiffusion>,
    /// The head's condition rows `z`, `[n or 2n, dec]` (uncond rows after cond rows).
    z: Conditions,
}

/// Where an AR step's condition rows are.
enum Conditions {
    /// On the device, from Burn's transformer (or read back from the fused one). Boxed: a
    /// tensor handle is far larger than the other variants.
    Device(Box<Tensor<2>>),
    /// Submitted to the fused transformer kernels, not read back yet.
    Submitted(Arc<FusedTransformer>, TransformerSubmitted),
    /// Moved out (while changing form).
    Taken,
}

impl Prepared {
    /// The condition rows as a tensor, once they are on the device.
    fn z_sel(&self) -> Result<Tensor<2>> {
        match &self.z {
            Conditions::Device(t) => Ok((**t).clone()),
            _ => Err(DisaError::Internal(
                "the condition rows are not on the device".into(),
            )),
        }
    }
}

impl Prepared {
    /// Ends the transformer's timing and starts the head's. Called once `z` is computed: on the
    /// fused path after its read-back (which the kernels need anyway, so no wait is added only
    /// for timing); on the tensor path after a device sync when timings are synced.
    fn transformer_done(&mut self) {
        let now = now_ms();
        self.pending.transformer_ms = now - self.pending.transformer_start;
        self.pending.head_start = now;
    }
}

/// The head at one diffusion step ([`LoadedModel::head_eps_and_v`] at the step's timestep).
fn eps_and_v(
    g: &LoadedModel,
    x: Tensor<2>,
    coeffs: &StepCoefficients,
    cond: Tensor<2>,
    cfg: Option<f32>,
) -> (Tensor<2>, Tensor<2>) {
    g.head_eps_and_v(x, coeffs.timestep, cond, cfg)
}

/// [`eps_and_v`] on the host head: the same rows, without a Burn op per layer.
fn host_eps_and_v(
    g: &LoadedModel,
    host: &HostHead,
    x: Tensor<2>,
    t: usize,
    cond: Tensor<2>,
    cfg: Option<f32>,
) -> (Tensor<2>, Tensor<2>) {
    let [n, c] = x.dims();
    let host_values = |t: Tensor<2>| t.into_data().try_into_vec::<f32>().unwrap_or_default();
    let mut x = host_values(x);
    let cond = host_values(cond);
    let rows = match cfg {
        Some(_) => {
            // The conditional rows, then the same tokens' unconditional rows.
            x.extend_from_within(..);
            2 * n
        }
        None => n,
    };
    let out = host.forward(&x, t, &cond, rows, &mut HostScratch::default());
    let (mut eps, mut v) = (Vec::with_capacity(n * c), Vec::with_capacity(n * c));
    for row in 0..n {
        let o = &out[row * 2 * c..(row + 1) * 2 * c];
        match cfg {
            Some(scale) => {
                let u = &out[(n + row) * 2 * c..][..c];
                eps.extend(
                    o[..c]
                        .iter()
                        .zip(u)
                        .map(|(&e_c, &e_u)| e_u + (e_c - e_u) * scale),
                );
            }
            None => eps.extend_from_slice(&o[..c]),
        }
        v.extend_from_slice(&o[c..]);
    }
    let tensor =
        |values: Vec<f32>| Tensor::<2>::from_data(TensorData::new(values, [n, c]), &g.device);
    (tensor(eps), tensor(v))
}

/// The parts' results stacked along the first dimension (one part: itself, not a copy).
fn cat_parts<const D: usize>(mut parts: Vec<Tensor<D>>) -> Tensor<D> {
    match parts.len() {
        1 => parts.pop().expect("one part"),
        _ => Tensor::cat(parts, 0),
    }
}

/// One generation in progress.
pub struct Generation {
    generator: Arc<LoadedModel>,
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
    kernels: Kernels,
}

impl Generation {
    /// Starts a generation: validates the request and draws the generation orders.
    pub fn new(
        generator: Arc<LoadedModel>,
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
            kernels: Kernels::Auto,
            request,
        })
    }

    /// Keeps the head's condition rows in every event (for parity tests and analysis).
    pub fn record_conditions(mut self, on: bool) -> Self {
        self.record_conditions = on;
        self
    }

    /// Chooses the implementation of the head's sampling loop (default: fused where available).
    pub fn kernels(mut self, kernels: Kernels) -> Self {
        self.kernels = kernels;
        self
    }

    /// Whether the transformer runs on the fused kernels (where a step fits them).
    pub fn uses_fused_transformer(&self) -> bool {
        matches!(self.kernels, Kernels::Auto | Kernels::Fused)
            && self.generator.fused_transformer.is_some()
    }

    /// Whether the next step runs on the fused kernels.
    pub fn uses_fused_kernels(&self) -> bool {
        self.kernels != Kernels::Tensor && self.generator.fused.is_some()
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
        let Some(mut prep) = self.prepare()? else {
            return Ok(None);
        };
        let (values, conditions) = match self.fused_head(&prep)? {
            Some(fused) => {
                let z = match std::mem::replace(&mut prep.z, Conditions::Taken) {
                    Conditions::Device(t) => read_f32(*t)?,
                    Conditions::Submitted(ft, s) => ft.read(s)?,
                    Conditions::Taken => return Err(taken()),
                };
                prep.transformer_done();
                if !fused.has_time_table() {
                    fused.set_time_table(&read_f32(self.generator.time_table.clone())?)?;
                }
                let submitted = self.submit_fused(&fused, &prep, &z)?;
                let values = fused.read(submitted)?;
                (values, self.record_conditions.then_some(z))
            }
            None => {
                if let Conditions::Submitted(..) = prep.z {
                    let Conditions::Submitted(ft, s) =
                        std::mem::replace(&mut prep.z, Conditions::Taken)
                    else {
                        return Err(taken());
                    };
                    prep.z = Conditions::Device(Box::new(self.rows_tensor(ft.read(s)?)));
                }
                self.sync()?;
                prep.transformer_done();
                let sampled = self.head_tensor(&prep)?;
                let conditions = match self.record_conditions {
                    true => Some(read_f32(prep.z_sel()?)?),
                    false => None,
                };
                (read_f32(sampled)?, conditions)
            }
        };
        Ok(Some(self.complete(prep.pending, values, conditions)))
    }

    /// Runs one AR step, reading results back asynchronously (required on WebGPU).
    pub async fn step_async(&mut self) -> Result<Option<StepEvent>> {
        self.step_async_interruptible(&|| false).await
    }

    /// [`Self::step_async`] that gives the caller's event loop a turn between diffusion steps
    /// (Burn's tensor path) and before the read-back (fused kernels), and ends the step with
    /// [`DisaError::Cancelled`] once `stop` returns true. The generation must not be stepped
    /// again after a cancellation (its random stream is part-way through the step).
    pub async fn step_async_interruptible(
        &mut self,
        stop: &dyn Fn() -> bool,
    ) -> Result<Option<StepEvent>> {
        if stop() {
            return Err(DisaError::Cancelled);
        }
        let Some(mut prep) = self.prepare()? else {
            return Ok(None);
        };
        let (values, conditions) = match self.fused_head(&prep)? {
            Some(fused) => {
                let z = match std::mem::replace(&mut prep.z, Conditions::Taken) {
                    Conditions::Device(t) => read_f32_async(*t).await?,
                    Conditions::Submitted(ft, s) => ft.read_async(s).await?,
                    Conditions::Taken => return Err(taken()),
                };
                prep.transformer_done();
                if !fused.has_time_table() {
                    let table = read_f32_async(self.generator.time_table.clone()).await?;
                    fused.set_time_table(&table)?;
                }
                if stop() {
                    return Err(DisaError::Cancelled);
                }
                let submitted = self.submit_fused(&fused, &prep, &z)?;
                let values = fused.read_async(submitted).await?;
                (values, self.record_conditions.then_some(z))
            }
            None => {
                if let Conditions::Submitted(..) = prep.z {
                    let Conditions::Submitted(ft, s) =
                        std::mem::replace(&mut prep.z, Conditions::Taken)
                    else {
                        return Err(taken());
                    };
                    prep.z =
                        Conditions::Device(Box::new(self.rows_tensor(ft.read_async(s).await?)));
                }
                self.sync()?;
                prep.transformer_done();
                let sampled = self.head_tensor_async(&prep, stop).await?;
                let conditions = match self.record_conditions {
                    true => Some(read_f32_async(prep.z_sel()?).await?),
                    false => None,
                };
                (read_f32_async(sampled).await?, conditions)
            }
        };
        Ok(Some(self.complete(prep.pending, values, conditions)))
    }

    /// Runs every remaining step; returns the events.
    pub fn run_to_end(&mut self) -> Result<Vec<StepEvent>> {
        let mut events = Vec::new();
        while let Some(e) = self.step()? {
            events.push(e);
        }
        Ok(events)
    }

    /// Whether this step runs on the fused kernels: per [`Kernels`], where the generator has
    /// them and there are tokens to sample.
    fn fused_head(&self, prep: &Prepared) -> Result<Option<Arc<FusedHead>>> {
        let available = self.generator.fused.clone();
        match self.kernels {
            Kernels::Tensor => Ok(None),
            _ if prep.rows_n == 0 => Ok(None),
            // Steps too large for the GPU's bindings fall back to the tensor path.
            Kernels::Auto => {
                Ok(available.filter(|f| f.fits(prep.rows_n, prep.use_cfg, prep.diffusion.len())))
            }
            Kernels::Fused | Kernels::FusedHead => match available {
                Some(f) => Ok(Some(f)),
                None => Err(DisaError::Device(format!(
                    "the fused head kernels are not available here: {}",
                    self.generator.fused_unavailable()
                ))),
            },
        }
    }

    /// The transformer for step `k` and the choice of tokens; leaves `z` on the device.
    fn prepare(&mut self) -> Result<Option<Prepared>> {
        if self.is_done() {
            return Ok(None);
        }
        let (k, ar_steps) = (self.k, self.request.ar_steps);
        let planned = self.plan.steps[k].clone();
        let use_cfg = self.request.uses_cfg();
        let t0 = now_ms();
        let mask_len = planned.mask_len_after;
        let to_pred = self.positions_to_reveal(mask_len, k + 1 == ar_steps)?;
        let rows_n = to_pred.iter().map(Vec::len).sum();
        let select = self.revealed_index(&to_pred, use_cfg);
        let z = match self.fused_transformer_for(use_cfg, select.len())? {
            Some(ft) => {
                let (labels, mask, tokens) = self.sequences(use_cfg);
                let submitted = ft.submit(&TransformerJob {
                    labels: &labels,
                    mask: &mask,
                    tokens: &tokens,
                    select: &select,
                })?;
                Conditions::Submitted(ft, submitted)
            }
            // The revealed rows, in `select`'s order
            None => Conditions::Device(Box::new(self.transformer(use_cfg, &to_pred))),
        };

        let diffusion = self
            .diffusions
            .get(planned.nominal_steps, self.request.effective_clip())?;
        Ok(Some(Prepared {
            pending: PendingStep {
                to_pred,
                mask_len,
                nominal: planned.nominal_steps,
                effective: diffusion.len(),
                cfg: planned.cfg,
                transformer_start: t0,
                transformer_ms: 0.0,
                head_start: t0,
                gpu_ns_start: self
                    .generator
                    .fused
                    .as_ref()
                    .filter(|_| self.uses_fused_kernels())
                    .and_then(|f| f.gpu_time_ns()),
            },
            rows_n,
            use_cfg,
            diffusion,
            z,
        }))
    }

    /// The transformer over the current tokens: the condition rows `z` of the positions
    /// `to_pred` reveals, `[rows, dec]` in [`Self::revealed_index`]'s order, for the B images
    /// and, when guiding, their unconditional copies after them (sequences B..2B: no label,
    /// same mask and tokens), as `MAR.sample_tokens` concatenates them.
    fn transformer(&self, use_cfg: bool, to_pred: &[Vec<usize>]) -> Tensor<2> {
        let g = &self.generator;
        let (n, c) = (g.config.seq_len(), g.config.token_dim());
        let (labels, mask, tokens) = self.sequences(use_cfg);
        let rows_b = labels.len();
        // Sequence j reveals the positions of image j mod B (its CFG copy reveals the same).
        let positions: Vec<Vec<usize>> = (0..rows_b)
            .map(|j| to_pred[j % to_pred.len()].clone())
            .collect();
        let selected = positions.first().map_or(0, Vec::len);
        // On the CPU the sequences are independent parts: each runs on its own thread.
        let known = n - mask.first().map_or(0, |m| m.iter().filter(|&&u| u).count());
        let parts = match crate::backend::is_plain_cpu(&g.device) {
            true => parts_here(g.model.transformer.macs(rows_b, known, selected), rows_b),
            false => 1,
        };
        let zs = run_parts(split_ranges(rows_b, parts), |r| {
            let tokens = tokens[r.start * n * c..r.end * n * c].to_vec();
            Self::transformer_over(
                g,
                &labels[r.clone()],
                &mask[r.clone()],
                tokens,
                &positions[r],
            )
        });
        cat_parts(zs)
    }

    /// The transformer's sequences: labels, masks and tokens (`[rows_b, N, C]`) of the B
    /// images and, when guiding, their unconditional copies after them.
    fn sequences(&self, use_cfg: bool) -> (Vec<Option<usize>>, Vec<Vec<bool>>, Vec<f32>) {
        let mut labels = self.request.labels.clone();
        let mut mask = self.mask.clone();
        let mut tokens = self.tokens.clone();
        if use_cfg {
            labels.extend(std::iter::repeat_n(None, self.request.labels.len()));
            mask.extend(self.mask.iter().cloned());
            tokens.extend_from_slice(&self.tokens);
        }
        (labels, mask, tokens)
    }

    /// Whether this step's transformer runs on the fused kernels: per [`Kernels`], where the
    /// generator has them (and, for `auto`, where the pass fits the GPU's limits).
    fn fused_transformer_for(
        &self,
        use_cfg: bool,
        selected: usize,
    ) -> Result<Option<Arc<FusedTransformer>>> {
        let available = self.generator.fused_transformer.clone();
        let sequences = self.request.labels.len() * if use_cfg { 2 } else { 1 };
        let n = self.generator.config.seq_len();
        let known = n - self
            .mask
            .first()
            .map_or(0, |m| m.iter().filter(|&&u| u).count());
        match self.kernels {
            Kernels::Tensor | Kernels::FusedHead => Ok(None),
            Kernels::Auto => Ok(available.filter(|f| f.fits(sequences, known, selected))),
            Kernels::Fused => match available {
                Some(f) => Ok(Some(f)),
                None => Err(DisaError::Device(format!(
                    "the fused transformer kernels are not available here: {}",
                    self.generator.fused_transformer_unavailable
                ))),
            },
        }
    }

    /// Condition rows read back from the fused transformer as a tensor, `[rows, dec]`.
    fn rows_tensor(&self, values: Vec<f32>) -> Tensor<2> {
        let g = &self.generator;
        let dec = g.config.decoder_embed_dim;
        let rows = values.len() / dec;
        Tensor::from_data(TensorData::new(values, [rows, dec]), &g.device)
    }

    /// The transformer over the sequences given (labels, masks, tokens `[rows, N, C]`
    /// row-major) at the positions given per sequence: `z` rows, `[Σ positions, dec]`.
    fn transformer_over(
        g: &LoadedModel,
        labels: &[Option<usize>],
        mask: &[Vec<bool>],
        tokens: Vec<f32>,
        positions: &[Vec<usize>],
    ) -> Tensor<2> {
        let (n, c) = (g.config.seq_len(), g.config.token_dim());
        let layout = MaskLayout::new(mask, g.config.buffer_size);
        let tokens =
            Tensor::<3>::from_data(TensorData::new(tokens, [labels.len(), n, c]), &g.device);
        let class_emb = g.model.transformer.class_embedding(labels, &g.device);
        let host = g.host_transformer.as_ref();
        let t = &g.model.transformer;
        let encoded = t.encode_with(tokens, &layout, class_emb, host);
        t.decode_at_with(encoded, &layout, positions, host)
    }

    /// Per image, the masked positions this step reveals: every one at the last step, else
    /// those outside the first `mask_len` of the image's random order (which stay masked).
    /// Every image reveals the same count (the mask schedule is shared).
    fn positions_to_reveal(&self, mask_len: usize, last: bool) -> Result<Vec<Vec<usize>>> {
        let n = self.generator.config.seq_len();
        let to_pred: Vec<Vec<usize>> = self
            .orders
            .iter()
            .zip(&self.mask)
            .map(|(order, mask)| {
                let still_masked: std::collections::HashSet<usize> = if last {
                    Default::default()
                } else {
                    order[..mask_len].iter().copied().collect()
                };
                (0..n)
                    .filter(|&p| mask[p] && !still_masked.contains(&p))
                    .collect()
            })
            .collect();
        if to_pred.windows(2).any(|w| w[0].len() != w[1].len()) {
            return Err(DisaError::Internal(
                "images revealed different token counts".into(),
            ));
        }
        Ok(to_pred)
    }

    /// The head's condition rows as `sequence·N + position`: the revealed positions in
    /// (image, position) order, then (guiding) the same positions of the unconditional copies.
    fn revealed_index(&self, to_pred: &[Vec<usize>], use_cfg: bool) -> Vec<usize> {
        let n = self.generator.config.seq_len();
        let b = to_pred.len();
        let rows_b = if use_cfg { 2 * b } else { b };
        (0..rows_b)
            .flat_map(|r| to_pred[r % b].iter().map(move |&p| r * n + p))
            .collect()
    }

    /// Draws this step's head noise in the official order: `x_T`, then each step's noise
    /// (`[2n, C]` with CFG, of which the first `n` rows are used). Returns `(x_T, [steps, n, C])`.
    fn draw_head_noise(&mut self, prep: &Prepared) -> Result<(Vec<f32>, Vec<f32>)> {
        let c = self.generator.config.token_dim();
        let rows = prep.rows_n;
        let draw_rows = if prep.use_cfg { 2 * rows } else { rows };
        let init = self.noise.normal(DrawKind::InitialNoise, rows, c)?;
        let mut steps = Vec::with_capacity(prep.diffusion.len() * rows * c);
        for _ in 0..prep.diffusion.len() {
            let drawn = self.noise.normal(DrawKind::StepNoise, draw_rows, c)?;
            steps.extend_from_slice(&drawn[..rows * c]);
        }
        Ok((init, steps))
    }

    /// Records and submits this step's sampling loop on the fused kernels.
    fn submit_fused(
        &mut self,
        fused: &FusedHead,
        prep: &Prepared,
        z: &[f32],
    ) -> Result<crate::gpu::Submitted> {
        let (init, step_noise) = self.draw_head_noise(prep)?;
        let steps: Vec<StepCoefficients> = (0..prep.diffusion.len())
            .rev()
            .map(|idx| prep.diffusion.step_coefficients(idx))
            .collect();
        fused.submit(&crate::gpu::HeadJob {
            z,
            tokens: prep.rows_n,
            cfg: prep.use_cfg.then_some(prep.pending.cfg),
            steps: &steps,
            init_noise: &init,
            step_noise: &step_noise,
            temperature: self.request.temperature,
        })
    }

    /// This step's sampling loop as Burn tensor operations, left on the device. The token rows
    /// are independent in the head: on the CPU they are cut into parts, each running the whole
    /// loop on its own thread (elsewhere, and for small steps, one part). The noise is drawn
    /// first, in the official order (as for the fused kernels), so every row sees the draws of
    /// the one-piece loop.
    fn head_tensor(&mut self, prep: &Prepared) -> Result<Tensor<2>> {
        if prep.rows_n == 0 {
            // Nothing to sample; head_tensor_start makes the official code's draws.
            return Ok(self.head_tensor_start(prep)?.0);
        }
        let g = &self.generator;
        let parts = match crate::backend::is_plain_cpu(&g.device) {
            true => {
                let rows = if prep.use_cfg { 2 } else { 1 } * prep.rows_n;
                let macs = rows * prep.diffusion.len() * g.model.head.macs_per_row();
                parts_here(macs, prep.rows_n)
            }
            false => 1,
        };
        self.head_in_parts(prep, parts)
    }

    /// [`Self::head_tensor`] with the token rows cut into `parts`.
    fn head_in_parts(&mut self, prep: &Prepared, parts: usize) -> Result<Tensor<2>> {
        let (init, step_noise) = self.draw_head_noise(prep)?;
        let g = &self.generator;
        let (n, c) = (prep.rows_n, g.config.token_dim());
        let cfg = prep.use_cfg.then_some(prep.pending.cfg);
        let temperature = self.request.temperature;
        let z_all = prep.z_sel()?;
        let [_, dec] = z_all.dims();
        let rows = run_parts(split_ranges(n, parts), |r| {
            // This part's conditional rows, then (guiding) the same tokens' unconditional rows.
            let z = if r.len() == n {
                z_all.clone()
            } else {
                let rows = |at: usize| z_all.clone().slice([at + r.start..at + r.end, 0..dec]);
                match cfg {
                    Some(_) => Tensor::cat(vec![rows(0), rows(n)], 0),
                    None => rows(0),
                }
            };
            let cond = g.model.head.condition(z);
            let take = |values: &[f32], offset: usize| {
                let v = values[(offset + r.start) * c..(offset + r.end) * c].to_vec();
                Tensor::<2>::from_data(TensorData::new(v, [r.len(), c]), &g.device)
            };
            let mut x = take(&init, 0);
            for (s, idx) in (0..prep.diffusion.len()).rev().enumerate() {
                let coeffs = prep.diffusion.step_coefficients(idx);
                let (eps, v) = eps_and_v(g, x.clone(), &coeffs, cond.clone(), cfg);
                x = p_sample(x, eps, v, &coeffs, take(&step_noise, s * n), temperature);
            }
            x
        });
        Ok(cat_parts(rows))
    }

    /// [`Self::head_tensor`] with a turn for the event loop (and a `stop` check) after every
    /// diffusion step.
    async fn head_tensor_async(
        &mut self,
        prep: &Prepared,
        stop: &dyn Fn() -> bool,
    ) -> Result<Tensor<2>> {
        let (mut x, cond) = self.head_tensor_start(prep)?;
        for idx in (0..prep.diffusion.len()).rev() {
            x = self.head_tensor_step(prep, x, &cond, idx)?;
            if prep.rows_n > 0 && idx > 0 {
                // A one-value read-back waits for the GPU and yields to the caller's loop.
                read_f32_async(x.clone().slice([0..1, 0..1])).await?;
                if stop() {
                    return Err(DisaError::Cancelled);
                }
            }
        }
        Ok(x)
    }

    /// `x_T` and the head's condition embedding (constant over the loop) on the device; for an
    /// empty step, the draws the official code makes.
    fn head_tensor_start(&mut self, prep: &Prepared) -> Result<(Tensor<2>, Option<Tensor<2>>)> {
        let g = self.generator.clone();
        let c = g.config.token_dim();
        if prep.rows_n == 0 {
            // Nothing revealed (only possible when K is close to N): draw as the official code does.
            self.noise.normal(DrawKind::InitialNoise, 0, c)?;
            for _ in 0..prep.diffusion.len() {
                self.noise.normal(DrawKind::StepNoise, 0, c)?;
            }
            return Ok((Tensor::<2>::zeros([0, c], &g.device), None));
        }
        let cond = g.model.head.condition(prep.z_sel()?);
        let init = self.noise.normal(DrawKind::InitialNoise, prep.rows_n, c)?;
        let x = Tensor::<2>::from_data(TensorData::new(init, [prep.rows_n, c]), &g.device);
        Ok((x, Some(cond)))
    }

    /// One diffusion step (`p_sample` at respaced index `idx`) on the tensor path.
    fn head_tensor_step(
        &mut self,
        prep: &Prepared,
        x: Tensor<2>,
        cond: &Option<Tensor<2>>,
        idx: usize,
    ) -> Result<Tensor<2>> {
        let rows_n = prep.rows_n;
        let Some(cond) = cond.clone() else {
            return Ok(x);
        };
        let g = self.generator.clone();
        let c = g.config.token_dim();
        let coeffs = prep.diffusion.step_coefficients(idx);
        let cfg = prep.use_cfg.then_some(prep.pending.cfg);
        let (eps, v) = eps_and_v(&g, x.clone(), &coeffs, cond, cfg);
        let draw_rows = if prep.use_cfg { 2 * rows_n } else { rows_n };
        let mut drawn = self.noise.normal(DrawKind::StepNoise, draw_rows, c)?;
        drawn.truncate(rows_n * c); // with CFG only the kept half matters
        let step_noise = Tensor::<2>::from_data(TensorData::new(drawn, [rows_n, c]), &g.device);
        Ok(p_sample(
            x,
            eps,
            v,
            &coeffs,
            step_noise,
            self.request.temperature,
        ))
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
                head_gpu_ms: p.gpu_ns_start.and_then(|start| {
                    let now = self.generator.fused.as_ref()?.gpu_time_ns()?;
                    Some(now.saturating_sub(start) as f64 / 1e6)
                }),
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

fn taken() -> DisaError {
    DisaError::Internal("an AR step's condition rows were used twice".into())
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
