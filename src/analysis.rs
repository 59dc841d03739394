//! DiSA's evidence, measured on a generation: why late tokens need fewer diffusion steps.
//!
//! The DiSA paper (arXiv 2505.20297; its repository Qinyu-Allen-Zhao/DiSA ships no analysis code,
//! only the figure `assets/evidence1.png`) argues with three measurements, all plotted against the
//! AR step; the exact metrics below are this module's choice:
//! 1. **spread** of the next-token distribution: re-sample the head `M` times from the same
//!    condition rows and average the per-channel variance;
//! 2. **straightness** of each token's DDPM chain `x_T … x_0`:
//!    `S = ‖x_0 − x_T‖ / Σ‖x_{t−1} − x_t‖` (1 = straight), with a 2-D PCA view of a few chains;
//! 3. **predictability**: the head's one-shot estimate of `x_0` at the first (noisiest)
//!    denoising step against the token finally sampled, and a "completed image" where the tokens
//!    not generated yet are filled with that estimate.
//!
//! A [`Recorder`] runs a [`Generation`] with its condition rows and random draws kept. An
//! [`Analyzer`] then replays each step's head loop from those rows with the *same* draws, so the
//! chain it records ends at exactly the token the generation produced (checked per step:
//! [`StepAnalysis::replay_error`]). Nothing in [`Generation`]'s own loop changes; the analysis
//! costs nothing unless it is asked for.

use crate::diffusion::p_sample;
use crate::diffusion::{DiffusionCache, SpacedDiffusion, StepCoefficients};
use crate::error::{DisaError, Result, invalid};
use crate::model::MaskLayout;
use crate::noise::{DrawKind, NoiseSource, SeededNoise};
use crate::sampler::{Generation, LoadedModel, Request, StepEvent};
use burn::tensor::{Int, Tensor, TensorData};
use serde::Serialize;
use std::sync::{Arc, Mutex};

// ───────────────────────────── pure measurements ─────────────────────────────

/// Mean over channels of the unbiased variance across `m` samples, per row.
///
/// # Shapes
/// `samples [m, n, c]` (sample-major, row-major) → `[n]`. Needs `m ≥ 2`.
pub fn sample_variance(samples: &[f32], m: usize, n: usize, c: usize) -> Result<Vec<f64>> {
    if m < 2 {
        return Err(invalid!("variance needs at least 2 samples, got {m}"));
    }
    if samples.len() != m * n * c {
        return Err(invalid!(
            "{} sample values, expected {m}×{n}×{c}",
            samples.len()
        ));
    }
    Ok((0..n)
        .map(|row| {
            let mut total = 0.0;
            for ch in 0..c {
                let at = |s: usize| samples[(s * n + row) * c + ch] as f64;
                let mean = (0..m).map(at).sum::<f64>() / m as f64;
                total += (0..m).map(|s| (at(s) - mean).powi(2)).sum::<f64>() / (m - 1) as f64;
            }
            total / c as f64
        })
        .collect())
}

fn distance(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        .sqrt()
}

/// Length of a polyline: `Σ ‖p_{i+1} − p_i‖`.
///
/// # Shapes
/// `points [P, c]` row-major.
pub fn path_length(points: &[f32], c: usize) -> f64 {
    points
        .chunks_exact(c)
        .zip(points.chunks_exact(c).skip(1))
        .map(|(a, b)| distance(a, b))
        .sum()
}

/// Straightness `‖p_last − p_first‖ / Σ‖p_{i+1} − p_i‖` of a path: 1 for a straight path
/// walked in one direction, smaller the more it wanders. `None` for a path of zero length.
///
/// # Shapes
/// `points [P, c]` row-major, `P ≥ 2`.
pub fn straightness(points: &[f32], c: usize) -> Option<f64> {
    let p = points.len() / c.max(1);
    if c == 0 || p < 2 {
        return None;
    }
    let length = path_length(points, c);
    if length <= 0.0 {
        return None;
    }
    Some(distance(&points[..c], &points[(p - 1) * c..p * c]) / length)
}

/// Mean squared difference per channel.
pub fn mean_squared_error(a: &[f32], b: &[f32]) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    a.iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len() as f64
}

/// The one-shot estimate of the clean token from a noisy one and the predicted noise, as
/// `p_sample` computes it: `x̂₀ = sqrt(1/ᾱ)·x − sqrt(1/ᾱ − 1)·ε̂`.
///
/// # Shapes
/// `x`, `eps`: `[n, C]` → `[n, C]`.
pub fn predict_x0(x: Tensor<2>, eps: Tensor<2>, s: &StepCoefficients) -> Tensor<2> {
    x * s.sqrt_recip - eps * s.sqrt_recipm1
}

/// A 2-D principal-component basis of a point cloud.
#[derive(Clone, Debug, Serialize)]
pub struct Pca {
    pub mean: Vec<f64>,
    /// The two leading unit axes (eigenvectors of the covariance), largest variance first.
    pub axes: [Vec<f64>; 2],
    /// The variance along each axis.
    pub variances: [f64; 2],
}

impl Pca {
    /// Fits the two leading components of `points [P, c]` (Jacobi eigen-decomposition of the
    /// `c × c` covariance, in f64).
    pub fn fit(points: &[f32], c: usize) -> Result<Self> {
        if c == 0 || points.is_empty() || !points.len().is_multiple_of(c) {
            return Err(invalid!(
                "PCA needs points of {c} channels, got {} values",
                points.len()
            ));
        }
        let p = points.len() / c;
        let mut mean = vec![0.0; c];
        for row in points.chunks_exact(c) {
            for (m, v) in mean.iter_mut().zip(row) {
                *m += *v as f64 / p as f64;
            }
        }
        let mut cov = vec![0.0; c * c];
        for row in points.chunks_exact(c) {
            for i in 0..c {
                let di = row[i] as f64 - mean[i];
                for j in 0..c {
                    cov[i * c + j] += di * (row[j] as f64 - mean[j]) / p as f64;
                }
            }
        }
        let (values, vectors) = jacobi_eigen(cov, c);
        let mut order: Vec<usize> = (0..c).collect();
        order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
        let axis = |k: usize| -> Vec<f64> {
            let j = order[k.min(c - 1)];
            let mut v: Vec<f64> = (0..c).map(|i| vectors[i * c + j]).collect();
            // A fixed sign: the largest entry positive, so plots do not flip between runs.
            let big = v
                .iter()
                .copied()
                .fold(0.0f64, |a, x| if x.abs() > a.abs() { x } else { a });
            if big < 0.0 {
                v.iter_mut().for_each(|x| *x = -*x);
            }
            v
        };
        let variance = |k: usize| values[order[k.min(c - 1)]].max(0.0);
        Ok(Self {
            axes: [axis(0), if c > 1 { axis(1) } else { vec![0.0] }],
            variances: [variance(0), if c > 1 { variance(1) } else { 0.0 }],
            mean,
        })
    }

    /// Coordinates of one point on the two axes.
    pub fn project(&self, point: &[f32]) -> [f64; 2] {
        let dot = |axis: &[f64]| {
            point
                .iter()
                .zip(&self.mean)
                .zip(axis)
                .map(|((x, m), a)| (*x as f64 - m) * a)
                .sum::<f64>()
        };
        [dot(&self.axes[0]), dot(&self.axes[1])]
    }

    /// Coordinates of every point of `points [P, c]`.
    pub fn project_all(&self, points: &[f32]) -> Vec<[f64; 2]> {
        points
            .chunks_exact(self.mean.len())
            .map(|p| self.project(p))
            .collect()
    }
}

/// Eigen-decomposition of a symmetric `n × n` matrix by cyclic Jacobi rotations.
/// Returns (eigenvalues, eigenvectors as columns of a row-major matrix).
fn jacobi_eigen(mut a: Vec<f64>, n: usize) -> (Vec<f64>, Vec<f64>) {
    let mut v = vec![0.0; n * n];
    for i in 0..n {
        v[i * n + i] = 1.0;
    }
    let scale: f64 = a
        .iter()
        .map(|x| x * x)
        .sum::<f64>()
        .sqrt()
        .max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[i * n + j].powi(2))
            .sum::<f64>()
            .sqrt();
        if off <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq.abs() <= f64::MIN_POSITIVE {
                    continue;
                }
                let theta = (a[q * n + q] - a[p * n + p]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let cs = 1.0 / (t * t + 1.0).sqrt();
                let sn = t * cs;
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = cs * akp - sn * akq;
                    a[k * n + q] = sn * akp + cs * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = cs * apk - sn * aqk;
                    a[q * n + k] = sn * apk + cs * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[k * n + p], v[k * n + q]);
                    v[k * n + p] = cs * vkp - sn * vkq;
                    v[k * n + q] = sn * vkp + cs * vkq;
                }
            }
        }
    }
    ((0..n).map(|i| a[i * n + i]).collect(), v)
}

// ───────────────────────────── recording ─────────────────────────────

type DrawLog = Arc<Mutex<Vec<(DrawKind, Vec<f32>)>>>;

/// A noise source that passes every draw through and keeps a copy of the normal draws.
struct RecordingNoise {
    inner: Box<dyn NoiseSource>,
    log: DrawLog,
}

impl NoiseSource for RecordingNoise {
    fn permutation(&mut self, n: usize) -> Result<Vec<usize>> {
        self.inner.permutation(n)
    }

    fn normal(&mut self, kind: DrawKind, rows: usize, cols: usize) -> Result<Vec<f32>> {
        let values = self.inner.normal(kind, rows, cols)?;
        self.log
            .lock()
            .map_err(|_| DisaError::Device("noise log poisoned".into()))?
            .push((kind, values.clone()));
        Ok(values)
    }
}

/// The random draws one AR step's head loop used.
#[derive(Clone, Debug, Default)]
pub struct StepDraws {
    /// `x_T`: `[rows, C]` (rows = tokens revealed over the batch).
    pub initial: Vec<f32>,
    /// The noise of each reverse step, noisiest first: `[draw_rows, C]` each (with CFG the
    /// draw also covers the discarded uncond half; only its first `rows × C` values matter).
    pub steps: Vec<Vec<f32>>,
}

/// One AR step of a recorded generation.
#[derive(Clone, Debug)]
pub struct RecordedStep {
    /// The step's event, with its condition rows.
    pub event: StepEvent,
    pub draws: StepDraws,
}

/// A generation with everything the analysis needs: the request, the orders, and per AR step
/// the event (revealed positions, tokens, condition rows) and the random draws.
#[derive(Clone, Debug)]
pub struct Recording {
    pub request: Request,
    pub orders: Vec<Vec<usize>>,
    pub seq_len: usize,
    pub token_dim: usize,
    pub steps: Vec<RecordedStep>,
}

impl Recording {
    /// Batch size.
    pub fn batch(&self) -> usize {
        self.request.labels.len()
    }

    /// Whether every AR step was recorded.
    pub fn is_complete(&self) -> bool {
        self.steps.len() == self.request.ar_steps
    }

    /// Tokens `[B, N, C]` and mask (`true` = unknown) after the first `k` recorded steps.
    pub fn state_after(&self, k: usize) -> (Vec<f32>, Vec<Vec<bool>>) {
        let (b, n, c) = (self.batch(), self.seq_len, self.token_dim);
        let mut tokens = vec![0.0; b * n * c];
        let mut mask = vec![vec![true; n]; b];
        for step in self.steps.iter().take(k) {
            let mut row = 0;
            for (i, positions) in step.event.positions.iter().enumerate() {
                for &p in positions {
                    tokens[(i * n + p) * c..(i * n + p + 1) * c]
                        .copy_from_slice(&step.event.values[row * c..(row + 1) * c]);
                    mask[i][p] = false;
                    row += 1;
                }
            }
        }
        (tokens, mask)
    }
}

/// Runs a [`Generation`] while recording its condition rows and random draws. Stop at any
/// step: [`Recorder::finish`] returns what was recorded so far.
pub struct Recorder {
    generation: Generation,
    log: DrawLog,
    recording: Recording,
}

impl Recorder {
    /// Starts a generation of `request` drawing from `noise`.
    pub fn new(
        generator: Arc<LoadedModel>,
        request: Request,
        noise: Box<dyn NoiseSource>,
    ) -> Result<Self> {
        let log: DrawLog = Arc::default();
        let (seq_len, token_dim) = (generator.config.seq_len(), generator.config.token_dim());
        let generation = Generation::new(
            generator,
            request.clone(),
            Box::new(RecordingNoise {
                inner: noise,
                log: log.clone(),
            }),
        )?
        .record_conditions(true)
        .sync_timings(false);
        let recording = Recording {
            orders: generation.orders().to_vec(),
            request,
            seq_len,
            token_dim,
            steps: Vec::new(),
        };
        Ok(Self {
            generation,
            log,
            recording,
        })
    }

    /// The generation being recorded.
    pub fn generation(&self) -> &Generation {
        &self.generation
    }

    /// Runs one AR step (native). `None` once finished.
    pub fn step(&mut self) -> Result<Option<&StepEvent>> {
        match self.generation.step()? {
            Some(event) => self.keep(event).map(Some),
            None => Ok(None),
        }
    }

    /// Runs one AR step with asynchronous read-back (WebGPU).
    pub async fn step_async(&mut self) -> Result<Option<&StepEvent>> {
        match self.generation.step_async().await? {
            Some(event) => self.keep(event).map(Some),
            None => Ok(None),
        }
    }

    fn keep(&mut self, event: StepEvent) -> Result<&StepEvent> {
        let drawn: Vec<(DrawKind, Vec<f32>)> = std::mem::take(
            &mut *self
                .log
                .lock()
                .map_err(|_| DisaError::Device("noise log poisoned".into()))?,
        );
        let mut draws = drawn.into_iter();
        let initial = match draws.next() {
            Some((DrawKind::InitialNoise, v)) => v,
            _ => {
                return Err(DisaError::Replay(format!(
                    "AR step {}: the head loop did not start with its initial noise",
                    event.k
                )));
            }
        };
        let mut steps = Vec::new();
        for (kind, values) in draws {
            if kind != DrawKind::StepNoise {
                return Err(DisaError::Replay(format!(
                    "AR step {}: two initial-noise draws in one step",
                    event.k
                )));
            }
            steps.push(values);
        }
        if event.conditions.is_none() {
            return Err(DisaError::Replay("condition rows were not recorded".into()));
        }
        self.recording.steps.push(RecordedStep {
            event,
            draws: StepDraws { initial, steps },
        });
        Ok(&self.recording.steps.last().expect("just pushed").event)
    }

    /// The recording so far (the generation may be finished or not).
    pub fn recording(&self) -> &Recording {
        &self.recording
    }

    /// Ends the recording.
    pub fn finish(self) -> Recording {
        self.recording
    }
}

// ───────────────────────────── analysis ─────────────────────────────

/// How much to measure.
#[derive(Clone, Debug, PartialEq)]
pub struct AnalysisOptions {
    /// Re-samples of the head per condition row for the spread (`M`, ≥ 2).
    pub samples: usize,
    /// Seed of the analysis's own draws (re-samples; `x_T` of tokens never generated).
    pub seed: u64,
    /// Compute the completed image at every step (one transformer pass per AR step).
    pub completed: bool,
    /// Chains shown in the shared PCA view, half early and half late tokens.
    pub pca_paths: usize,
}

impl AnalysisOptions {
    /// The largest `samples` (`M`) accepted.
    pub const MAX_SAMPLES: usize = 4096;

    /// Checks the options on their own ([`Analyzer::new`] does; a caller can before it
    /// generates anything to analyse): `samples` in `2..=`[`Self::MAX_SAMPLES`].
    pub fn validate(&self) -> Result<()> {
        if self.samples < 2 {
            return Err(invalid!(
                "the spread needs at least 2 re-samples per token (got {})",
                self.samples
            ));
        }
        if self.samples > Self::MAX_SAMPLES {
            return Err(invalid!(
                "{} re-samples per token is too many (at most {})",
                self.samples,
                Self::MAX_SAMPLES
            ));
        }
        Ok(())
    }
}

impl Default for AnalysisOptions {
    fn default() -> Self {
        Self {
            samples: 32,
            seed: 0x5eed_d15a,
            completed: true,
            pca_paths: 6,
        }
    }
}

/// What the analysis measured at one AR step. Per-token vectors follow the event's row
/// order (image by image, positions ascending).
#[derive(Clone, Debug, Serialize)]
pub struct StepAnalysis {
    pub k: usize,
    /// Tokens revealed per image.
    pub tokens: usize,
    pub nominal_steps: usize,
    pub effective_steps: usize,
    pub cfg: f32,
    /// Positions revealed at this step, per image.
    pub positions: Vec<Vec<usize>>,
    /// Spread: mean per-channel variance over the `M` re-samples (mean over tokens; NaN when
    /// the step revealed nothing).
    pub variance: f64,
    pub token_variance: Vec<f64>,
    /// Mean straightness `S` of the tokens' chains.
    pub straightness: f64,
    pub token_straightness: Vec<f64>,
    /// Mean chain length `Σ‖x_{t−1} − x_t‖`.
    pub path_length: f64,
    pub token_path_length: Vec<f64>,
    /// Predictability: mean squared error per channel of the first-step one-shot estimate
    /// against the token finally sampled.
    pub one_shot_error: f64,
    pub token_one_shot_error: Vec<f64>,
    /// Mean squared value per channel of the tokens (the scale the errors compare to).
    pub token_power: f64,
    /// Largest |chain end − generated token| (0 when the replay is exact).
    pub replay_error: f64,
    /// Every token's chain `x_T … x_0`: `[rows][(T+1)·C]`.
    #[serde(skip)]
    pub chains: Vec<Vec<f32>>,
    /// The first-step one-shot estimates `[rows, C]`.
    #[serde(skip)]
    pub one_shot: Vec<f32>,
    /// Tokens known before this step with every unknown token filled with its one-shot
    /// estimate from this step's context: `[B, N, C]` (empty unless asked for).
    #[serde(skip)]
    pub completed: Vec<f32>,
}

/// One chain in the shared PCA view.
#[derive(Clone, Debug, Serialize)]
pub struct ProjectedPath {
    pub k: usize,
    pub position: usize,
    pub points: Vec<[f64; 2]>,
}

/// The analysis of a whole recording.
#[derive(Clone, Debug, Serialize)]
pub struct Analysis {
    pub steps: Vec<StepAnalysis>,
    /// Per step: mean squared error per channel of the completed image against the final
    /// tokens, over the tokens unknown before the step (needs a complete recording).
    pub completed_error: Vec<f64>,
    /// A few chains (early and late tokens, image 0) on one common PCA basis.
    pub pca_paths: Vec<ProjectedPath>,
    pub pca_variances: [f64; 2],
}

impl Analysis {
    /// Mean of a per-step curve over the steps that have a value.
    pub fn finite_mean(values: impl Iterator<Item = f64>) -> f64 {
        let v: Vec<f64> = values.filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    }
}

/// The device work of one analysed step, before read-back.
struct PendingAnalysis {
    k: usize,
    rows: usize,
    chain_len: usize,
    samples: usize,
    /// `(image, position)` of each completion row.
    completion_rows: Vec<(usize, usize)>,
}

/// Analyses a recording step by step (so callers can show progress).
pub struct Analyzer {
    generator: Arc<LoadedModel>,
    recording: Arc<Recording>,
    options: AnalysisOptions,
    diffusions: DiffusionCache,
    noise: SeededNoise,
    /// Per `(image, position)`: the `x_T` the generation drew for it.
    initial_noise: Vec<Option<Vec<f32>>>,
    results: Vec<StepAnalysis>,
}

impl Analyzer {
    /// Prepares the analysis of `recording` (made on `generator`'s model).
    pub fn new(
        generator: Arc<LoadedModel>,
        recording: Arc<Recording>,
        options: AnalysisOptions,
    ) -> Result<Self> {
        options.validate()?;
        let (n, c) = (generator.config.seq_len(), generator.config.token_dim());
        if recording.seq_len != n || recording.token_dim != c {
            return Err(invalid!(
                "the recording has {}×{} tokens, the model {n}×{c}",
                recording.seq_len,
                recording.token_dim
            ));
        }
        let mut initial_noise = vec![None; recording.batch() * n];
        for step in &recording.steps {
            let mut row = 0;
            for (i, positions) in step.event.positions.iter().enumerate() {
                for &p in positions {
                    initial_noise[i * n + p] =
                        Some(step.draws.initial[row * c..(row + 1) * c].to_vec());
                    row += 1;
                }
            }
        }
        Ok(Self {
            noise: SeededNoise::new(options.seed),
            generator,
            recording,
            options,
            diffusions: DiffusionCache::default(),
            initial_noise,
            results: Vec::new(),
        })
    }

    /// AR steps analysed so far, and the total.
    pub fn progress(&self) -> (usize, usize) {
        (self.results.len(), self.recording.steps.len())
    }

    /// The steps analysed so far.
    pub fn results(&self) -> &[StepAnalysis] {
        &self.results
    }

    /// Analyses the next step (native). `None` once every recorded step is done.
    pub fn step(&mut self) -> Result<Option<&StepAnalysis>> {
        let Some((pending, tensor)) = self.launch()? else {
            return Ok(None);
        };
        let values = tensor
            .into_data()
            .try_to_vec::<f32>()
            .map_err(|e| DisaError::Device(format!("reading the analysis back: {e:?}")))?;
        self.complete(pending, values).map(Some)
    }

    /// Analyses the next step with asynchronous read-back (WebGPU).
    pub async fn step_async(&mut self) -> Result<Option<&StepAnalysis>> {
        let Some((pending, tensor)) = self.launch()? else {
            return Ok(None);
        };
        let values = tensor
            .into_data_async()
            .await
            .map_err(|e| DisaError::Device(format!("reading the analysis back: {e:?}")))?
            .try_to_vec::<f32>()
            .map_err(|e| DisaError::Device(format!("reading the analysis back: {e:?}")))?;
        self.complete(pending, values).map(Some)
    }

    /// Runs every remaining step and summarizes (native).
    pub fn run_to_end(mut self) -> Result<Analysis> {
        while self.step()?.is_some() {}
        self.finish()
    }

    /// The head's `(ε̂, v)` with or without CFG, as the generation runs it.
    ///
    /// # Shapes
    /// `x [rows, C]`, `cond [rows or 2·rows, W]` → `([rows, C], [rows, C])`.
    fn head(&self, x: Tensor<2>, t: usize, cond: Tensor<2>, cfg: f32) -> (Tensor<2>, Tensor<2>) {
        let guided = (self.recording.request.cfg != 1.0).then_some(cfg);
        self.generator.head_eps_and_v(x, t, cond, guided)
    }

    fn upload(&self, values: Vec<f32>, shape: [usize; 2]) -> Tensor<2> {
        Tensor::from_data(TensorData::new(values, shape), &self.generator.device)
    }

    fn index_tensor(&self, index: Vec<i64>) -> Tensor<1, Int> {
        let len = index.len();
        Tensor::from_data(TensorData::new(index, [len]), &self.generator.device)
    }

    /// Builds step `k`'s device work: the replayed chain, the re-samples and the completion.
    fn launch(&mut self) -> Result<Option<(PendingAnalysis, Tensor<2>)>> {
        let k = self.results.len();
        let recording = self.recording.clone();
        let Some(step) = recording.steps.get(k) else {
            return Ok(None);
        };
        let g = self.generator.clone();
        let (n, c, b) = (g.config.seq_len(), g.config.token_dim(), recording.batch());
        let event = &step.event;
        let rows = event.values.len() / c;
        let use_cfg = recording.request.cfg != 1.0;
        let temperature = recording.request.temperature;
        let diffusion: Arc<SpacedDiffusion> = self
            .diffusions
            .get(event.nominal_steps, recording.request.effective_clip())?;
        if step.draws.steps.len() != diffusion.len() || step.draws.initial.len() != rows * c {
            return Err(DisaError::Replay(format!(
                "AR step {k}: {} step draws and {} initial values recorded, the head loop needs \
                 {} and {}",
                step.draws.steps.len(),
                step.draws.initial.len(),
                diffusion.len(),
                rows * c
            )));
        }
        let m = self.options.samples;
        let mut parts: Vec<Tensor<2>> = Vec::new();
        if rows > 0 {
            let dec = g.config.decoder_embed_dim;
            let z_values = event
                .conditions
                .clone()
                .ok_or_else(|| DisaError::Replay("condition rows were not recorded".into()))?;
            let cond_rows = if use_cfg { 2 * rows } else { rows };
            if z_values.len() != cond_rows * dec {
                return Err(DisaError::Replay(format!(
                    "AR step {k}: {} condition values recorded, expected {cond_rows}×{dec}",
                    z_values.len()
                )));
            }
            let cond = g
                .model
                .head
                .condition(self.upload(z_values, [cond_rows, dec]));

            // The generation's own chain, replayed with its draws.
            let mut x = self.upload(step.draws.initial.clone(), [rows, c]);
            parts.push(x.clone());
            let mut first_estimate = None;
            for (j, idx) in (0..diffusion.len()).rev().enumerate() {
                let s = diffusion.step_coefficients(idx);
                let (eps, v) = self.head(x.clone(), s.timestep, cond.clone(), event.cfg);
                if j == 0 {
                    first_estimate = Some(predict_x0(x.clone(), eps.clone(), &s));
                }
                let mut drawn = step.draws.steps[j].clone();
                drawn.truncate(rows * c); // with CFG only the kept half matters
                let noise = self.upload(drawn, [rows, c]);
                x = p_sample(x, eps, v, &s, noise, temperature);
                parts.push(x.clone());
            }
            parts.push(first_estimate.expect("a diffusion has at least two steps"));

            // M fresh samples per condition row: rows (sample, token), uncond copies after.
            let copies = if use_cfg { 2 } else { 1 };
            let index: Vec<i64> = (0..copies)
                .flat_map(|half| (0..m).flat_map(move |_| half * rows..(half + 1) * rows))
                .map(|r| r as i64)
                .collect();
            let cond_m = cond.select(0, self.index_tensor(index));
            let init = self.noise.normal(DrawKind::InitialNoise, m * rows, c)?;
            let mut xs = self.upload(init, [m * rows, c]);
            for idx in (0..diffusion.len()).rev() {
                let s = diffusion.step_coefficients(idx);
                let (eps, v) = self.head(xs.clone(), s.timestep, cond_m.clone(), event.cfg);
                let drawn = self.noise.normal(DrawKind::StepNoise, m * rows, c)?;
                let noise = self.upload(drawn, [m * rows, c]);
                xs = p_sample(xs, eps, v, &s, noise, temperature);
            }
            parts.push(xs);
        }

        // The completed image: every unknown token's one-shot estimate from this step's context.
        let mut completion_rows = Vec::new();
        if self.options.completed {
            let (tokens, mask) = recording.state_after(k);
            completion_rows = (0..b)
                .flat_map(|i| {
                    let mask = &mask[i];
                    (0..n).filter(move |&p| mask[p]).map(move |p| (i, p))
                })
                .collect();
            if !completion_rows.is_empty() {
                let mut labels = recording.request.labels.clone();
                let mut mask2 = mask.clone();
                let mut tokens2 = tokens.clone();
                if use_cfg {
                    labels.extend(std::iter::repeat_n(None, b));
                    mask2.extend(mask.iter().cloned());
                    tokens2.extend_from_slice(&tokens);
                }
                let rows_b = labels.len();
                let device = &g.device;
                let layout = MaskLayout::new(&mask2, g.config.buffer_size);
                let tokens_t =
                    Tensor::<3>::from_data(TensorData::new(tokens2, [rows_b, n, c]), device);
                let class_emb = g.model.transformer.class_embedding(&labels, device);
                let encoded = g.model.transformer.encode(tokens_t, &layout, class_emb);
                let z = g.model.transformer.decode(encoded, &layout);
                let dec = g.config.decoder_embed_dim;
                let index: Vec<i64> = (0..rows_b / b)
                    .flat_map(|copy| {
                        completion_rows
                            .iter()
                            .map(move |&(i, p)| ((copy * b + i) * n + p) as i64)
                    })
                    .collect();
                let z_sel = z
                    .reshape([rows_b * n, dec])
                    .select(0, self.index_tensor(index));
                let cond = g.model.head.condition(z_sel);
                let mut x_t = Vec::with_capacity(completion_rows.len() * c);
                for &(i, p) in &completion_rows {
                    match &self.initial_noise[i * n + p] {
                        Some(v) => x_t.extend_from_slice(v),
                        None => x_t.extend(self.noise.normal(DrawKind::InitialNoise, 1, c)?),
                    }
                }
                let x_t = self.upload(x_t, [completion_rows.len(), c]);
                let s = diffusion.step_coefficients(diffusion.len() - 1);
                let (eps, _) = self.head(x_t.clone(), s.timestep, cond, event.cfg);
                parts.push(predict_x0(x_t, eps, &s));
            }
        }
        if parts.is_empty() {
            parts.push(Tensor::zeros([0, c], &g.device));
        }
        let pending = PendingAnalysis {
            k,
            rows,
            chain_len: if rows > 0 { diffusion.len() + 1 } else { 0 },
            samples: m,
            completion_rows,
        };
        Ok(Some((pending, Tensor::cat(parts, 0))))
    }

    /// Turns step `k`'s read-back values into its measurements.
    fn complete(&mut self, p: PendingAnalysis, values: Vec<f32>) -> Result<&StepAnalysis> {
        let recording = self.recording.clone();
        let step = &recording.steps[p.k];
        let event = &step.event;
        let (n, c) = (recording.seq_len, recording.token_dim);
        let (rows, t1) = (p.rows, p.chain_len);
        let expected =
            (t1 * rows + rows + p.samples * rows * usize::from(rows > 0) + p.completion_rows.len())
                * c;
        if values.len() != expected {
            return Err(DisaError::Device(format!(
                "analysis read back {} values, expected {expected}",
                values.len()
            )));
        }
        let (chain_part, rest) = values.split_at(t1 * rows * c);
        let (first, rest) = rest.split_at(rows * c);
        let (samples, completion) = rest.split_at(if rows > 0 { p.samples * rows * c } else { 0 });

        let chains: Vec<Vec<f32>> = (0..rows)
            .map(|r| {
                (0..t1)
                    .flat_map(|j| chain_part[(j * rows + r) * c..(j * rows + r + 1) * c].to_vec())
                    .collect()
            })
            .collect();
        let token = |r: usize| &event.values[r * c..(r + 1) * c];
        let replay_error = chains
            .iter()
            .enumerate()
            .flat_map(|(r, chain)| {
                chain[(t1 - 1) * c..]
                    .iter()
                    .zip(token(r))
                    .map(|(a, b)| (*a as f64 - *b as f64).abs())
            })
            .fold(0.0, f64::max);
        let token_variance = if rows > 0 {
            sample_variance(samples, p.samples, rows, c)?
        } else {
            Vec::new()
        };
        let token_straightness: Vec<f64> = chains
            .iter()
            .map(|ch| straightness(ch, c).unwrap_or(f64::NAN))
            .collect();
        let token_path_length: Vec<f64> = chains.iter().map(|ch| path_length(ch, c)).collect();
        let token_one_shot_error: Vec<f64> = (0..rows)
            .map(|r| mean_squared_error(&first[r * c..(r + 1) * c], token(r)))
            .collect();
        let mean = |v: &[f64]| Analysis::finite_mean(v.iter().copied());

        let completed = if self.options.completed {
            let (mut tokens, _) = recording.state_after(p.k);
            for (j, &(i, pos)) in p.completion_rows.iter().enumerate() {
                tokens[(i * n + pos) * c..(i * n + pos + 1) * c]
                    .copy_from_slice(&completion[j * c..(j + 1) * c]);
            }
            tokens
        } else {
            Vec::new()
        };
        self.results.push(StepAnalysis {
            k: p.k,
            tokens: event.tokens_per_image(),
            nominal_steps: event.nominal_steps,
            effective_steps: event.effective_steps,
            cfg: event.cfg,
            positions: event.positions.clone(),
            variance: mean(&token_variance),
            straightness: mean(&token_straightness),
            path_length: mean(&token_path_length),
            one_shot_error: mean(&token_one_shot_error),
            token_power: if rows > 0 {
                event
                    .values
                    .iter()
                    .map(|v| (*v as f64).powi(2))
                    .sum::<f64>()
                    / event.values.len() as f64
            } else {
                f64::NAN
            },
            token_variance,
            token_straightness,
            token_path_length,
            token_one_shot_error,
            replay_error,
            chains,
            one_shot: first.to_vec(),
            completed,
        });
        Ok(self.results.last().expect("just pushed"))
    }

    /// Summarizes the steps analysed: the completed image's error and the shared PCA view.
    pub fn finish(self) -> Result<Analysis> {
        let recording = &self.recording;
        let (n, c) = (recording.seq_len, recording.token_dim);
        let completed_error = if recording.is_complete() {
            let (final_tokens, _) = recording.state_after(recording.steps.len());
            self.results
                .iter()
                .map(|s| {
                    if s.completed.is_empty() {
                        return f64::NAN;
                    }
                    let (_, mask) = recording.state_after(s.k);
                    let (mut se, mut count) = (0.0, 0usize);
                    for (i, row) in mask.iter().enumerate() {
                        for p in (0..n).filter(|&p| row[p]) {
                            let at = (i * n + p) * c..(i * n + p + 1) * c;
                            se += mean_squared_error(&s.completed[at.clone()], &final_tokens[at])
                                * c as f64;
                            count += c;
                        }
                    }
                    if count == 0 {
                        f64::NAN
                    } else {
                        se / count as f64
                    }
                })
                .collect()
        } else {
            vec![f64::NAN; self.results.len()]
        };

        // Image 0's tokens in generation order, then the first and last few of them.
        let ordered: Vec<(usize, usize, usize)> = self
            .results
            .iter()
            .flat_map(|s| {
                let k = s.k;
                s.positions
                    .first()
                    .into_iter()
                    .flatten()
                    .enumerate()
                    .map(move |(r, &p)| (k, r, p))
            })
            .collect();
        let early = self.options.pca_paths.div_ceil(2).min(ordered.len());
        let late = (self.options.pca_paths - early).min(ordered.len() - early);
        let chosen: Vec<(usize, usize, usize)> = ordered[..early]
            .iter()
            .chain(&ordered[ordered.len() - late..])
            .copied()
            .collect();
        let (pca_paths, pca_variances) = if chosen.is_empty() {
            (Vec::new(), [0.0, 0.0])
        } else {
            let pooled: Vec<f32> = chosen
                .iter()
                .flat_map(|&(k, r, _)| self.results[k].chains[r].iter().copied())
                .collect();
            let pca = Pca::fit(&pooled, c)?;
            let paths = chosen
                .iter()
                .map(|&(k, r, position)| ProjectedPath {
                    k,
                    position,
                    points: pca.project_all(&self.results[k].chains[r]),
                })
                .collect();
            (paths, pca.variances)
        };
        Ok(Analysis {
            steps: self.results,
            completed_error,
            pca_paths,
            pca_variances,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn straight_path_has_straightness_one() {
        // Five points along one direction in 3-D, unevenly spaced.
        let d = [0.3f32, -1.2, 2.0];
        let points: Vec<f32> = [0.0f32, 0.5, 0.7, 2.0, 3.5]
            .iter()
            .flat_map(|s| d.iter().map(move |x| 1.0 + s * x))
            .collect();
        assert!((straightness(&points, 3).unwrap() - 1.0).abs() < 1e-6);
        // A right angle: √2 / 2.
        let corner = [0.0f32, 0.0, 1.0, 0.0, 1.0, 1.0];
        assert!((straightness(&corner, 2).unwrap() - 0.5f64.sqrt()).abs() < 1e-9);
        // Going and coming back: 0.
        let back = [0.0f32, 1.0, 0.0];
        assert_eq!(straightness(&back, 1).unwrap(), 0.0);
        assert_eq!(straightness(&[1.0, 1.0], 1), None);
    }

    #[test]
    fn identical_samples_have_zero_variance() {
        // m = 4 samples of n = 2 rows of c = 3 channels, all the same.
        let row = [0.5f32, -1.0, 2.0, 7.0, 7.0, 7.0];
        let samples: Vec<f32> = (0..4).flat_map(|_| row).collect();
        assert_eq!(sample_variance(&samples, 4, 2, 3).unwrap(), vec![0.0, 0.0]);
        // Known answer: samples {0, 2} → unbiased variance 2.
        let v = sample_variance(&[0.0, 2.0], 2, 1, 1).unwrap();
        assert!((v[0] - 2.0).abs() < 1e-12);
        assert!(sample_variance(&[1.0], 1, 1, 1).is_err());
    }

    #[test]
    fn pca_of_points_on_a_line_is_that_line() {
        let d = [1.0f64, 2.0, -2.0, 0.0]; // |d| = 3
        let s = [-2.0f64, -0.5, 0.0, 1.0, 4.0];
        let points: Vec<f32> = s
            .iter()
            .flat_map(|t| {
                d.iter()
                    .enumerate()
                    .map(move |(i, x)| (i as f64 + t * x) as f32)
            })
            .collect();
        let pca = Pca::fit(&points, 4).unwrap();
        let unit: Vec<f64> = d.iter().map(|x| x / 3.0).collect();
        let dot: f64 = pca.axes[0].iter().zip(&unit).map(|(a, b)| a * b).sum();
        assert!((dot.abs() - 1.0).abs() < 1e-6, "axis {:?}", pca.axes[0]);
        assert!(pca.variances[1] < 1e-9 * pca.variances[0]);
        let mean_s = s.iter().sum::<f64>() / s.len() as f64;
        for (t, xy) in s.iter().zip(pca.project_all(&points)) {
            assert!(
                (xy[0].abs() - (3.0 * (t - mean_s)).abs()).abs() < 1e-4,
                "{xy:?}"
            );
            assert!(xy[1].abs() < 1e-4, "{xy:?}");
        }
    }

    #[test]
    fn one_shot_estimate_with_no_noise_left_is_the_token() {
        let device = burn::tensor::Device::flex();
        let x = Tensor::<2>::from_data(
            TensorData::new(vec![0.3f32, -1.5, 2.0, 0.0], [2, 2]),
            &device,
        );
        let eps = Tensor::<2>::from_data(
            TensorData::new(vec![9.0f32, -4.0, 1.0, 3.0], [2, 2]),
            &device,
        );
        // ᾱ = 1 (t = 0 of the continuous process): the estimate is the input, whatever ε̂ is.
        let clean = StepCoefficients {
            timestep: 0,
            sqrt_recip: 1.0,
            sqrt_recipm1: 0.0,
            coef1: 1.0,
            coef2: 0.0,
            min_log: 0.0,
            max_log: 0.0,
            add_noise: false,
        };
        let out = predict_x0(x.clone(), eps.clone(), &clean)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        assert_eq!(out, vec![0.3, -1.5, 2.0, 0.0]);
        // The last reverse step (n = 0) of a real diffusion returns its one-shot estimate as the
        // token: coef1 = 1, coef2 = 0, no noise.
        let d = SpacedDiffusion::new(50, crate::diffusion::TimestepClip::DISA).unwrap();
        let s = d.step_coefficients(0);
        let v = Tensor::<2>::zeros([2, 2], &device);
        let noise = Tensor::<2>::ones([2, 2], &device);
        let token = p_sample(x.clone(), eps.clone(), v, &s, noise, 1.0)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let estimate = predict_x0(x, eps, &s)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (a, b) in token.iter().zip(&estimate) {
            assert!((a - b).abs() < 1e-6, "{a} vs {b}");
        }
    }
}
