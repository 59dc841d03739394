//! Training a MAR with the official objective (LTH14/mar `models/mar.py`, `MAR.forward` and
//! `MAR.random_masking`; `engine_mar.py`, `train_one_epoch`) on the project's own
//! model code: random generation orders, a mask ratio from the truncated normal on
//! [`mask_ratio_min`, 1], the diffusion loss on the masked tokens with each token repeated
//! `diffusion_batch_mul` times, label drop for CFG, AdamW with warm-up, and EMA weights.
//!
//! Differences from the official recipe, all for a small model trained briefly on a CPU: no
//! attention/projection dropout; weight decay on every parameter (Burn's AdamW has one group);
//! gradient clipping per parameter tensor (Burn's `GradientClipping::Norm`) rather than on the
//! global norm; EMA decay chosen for thousands, not hundreds of thousands, of steps.

mod loss;

pub use loss::{LossParts, TrainingDiffusion};

use crate::data::{PatchLayout, Split};
use crate::diffusion::NUM_BASE_TIMESTEPS;
use crate::error::{DisaError, Result};
use crate::model::{ImageDecoder, MarConfig, MaskLayout, Model, PatchDecoder};
use crate::noise::{NoiseSource, SeededNoise};
use crate::weights::{Bundle, BundleInfo, DecoderSpec, HostTensor, WeightMap};
use burn::module::{Module, ModuleMapper, Param, ParamId};
use burn::optim::grad_clipping::GradientClippingConfig;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, GradientsParams, LearningRate, ModuleOptimizer, Optimizer,
    RecordState, StateSink, StateSource,
};
use burn::tensor::{Device, Int, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Hyper-parameters of a training run (saved with every checkpoint).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TrainSettings {
    pub batch_size: usize,
    pub learning_rate: f64,
    /// Linear warm-up from 0 over this many steps, then constant (as the official schedule).
    pub warmup_steps: usize,
    pub weight_decay: f32,
    pub grad_clip: f32,
    pub ema_decay: f64,
    pub label_drop: f64,
    pub mask_ratio_min: f64,
    pub diffusion_batch_mul: usize,
    pub seed: u64,
    /// Pixels in [−1, 1] are multiplied by this to make tokens.
    pub token_scale: f32,
    /// Share of the loss rows whose timestep is drawn from the tail `[tail_from, 999]` instead
    /// of all of `[0, 999]` (0 = the official uniform draw, the same random stream as before).
    /// The sampler's first reverse step from t = 999 (no clip) multiplies the error of ε̂ by
    /// about 350, so the official baseline needs ε̂ far more accurate there than the uniform
    /// draw (1 row in 1000 at t ≥ 999) trains it to be.
    pub tail_fraction: f64,
    /// First timestep of the tail (`tail_fraction`'s draws are uniform over `[tail_from, 999]`).
    pub tail_from: usize,
    /// Weight of the ε MSE of rows at timesteps in the tail (1 = the official unweighted
    /// mean). Sampling alone leaves the tail a sliver of the gradient: its error is already
    /// ~200× below the middle's, yet must fall ~300× more.
    pub tail_weight: f32,
}

impl Default for TrainSettings {
    fn default() -> Self {
        Self {
            batch_size: 64,
            learning_rate: 1e-3,
            warmup_steps: 200,
            weight_decay: 0.02,
            grad_clip: 3.0,
            ema_decay: 0.999,
            label_drop: 0.1,
            mask_ratio_min: 0.7,
            diffusion_batch_mul: 4,
            seed: 0,
            token_scale: 1.0,
            tail_fraction: 0.0,
            tail_from: 950,
            tail_weight: 1.0,
        }
    }
}

impl TrainSettings {
    /// Rejects settings that cannot train.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: &str| Err(DisaError::InvalidSetting(m.to_string()));
        if self.batch_size == 0 {
            return bad("batch size must be at least 1");
        }
        if !(self.learning_rate > 0.0 && self.learning_rate.is_finite()) {
            return bad("learning rate must be positive");
        }
        if !(0.0..1.0).contains(&self.ema_decay) {
            return bad("EMA decay must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&self.label_drop) {
            return bad("label drop must be in [0, 1)");
        }
        if !(0.0..=1.0).contains(&self.mask_ratio_min) {
            return bad("minimum mask ratio must be in [0, 1]");
        }
        if self.diffusion_batch_mul == 0 {
            return bad("diffusion batch multiplier must be at least 1");
        }
        if !(self.token_scale > 0.0 && self.token_scale.is_finite()) {
            return bad("token scale must be positive");
        }
        if !(self.weight_decay >= 0.0 && self.weight_decay.is_finite()) {
            return bad("weight decay must be a finite number ≥ 0");
        }
        if !(self.grad_clip > 0.0 && self.grad_clip.is_finite()) {
            return bad("gradient clip must be positive");
        }
        if !(0.0..=1.0).contains(&self.tail_fraction) {
            return bad("tail fraction of the timestep draw must be in [0, 1]");
        }
        if self.tail_from >= NUM_BASE_TIMESTEPS {
            return bad("the timestep tail must start below 1000");
        }
        if !(self.tail_weight > 0.0 && self.tail_weight <= 1e4) {
            return bad("the tail's loss weight must be in (0, 10000]");
        }
        Ok(())
    }

    /// [`TrainSettings::validate`], then the sizes a run of `config` with these settings
    /// needs, against this machine's memory: the one check for settings from the command line
    /// and from a checkpoint's `state.json` alike.
    pub fn validate_for(&self, config: &MarConfig) -> Result<()> {
        self.validate()?;
        config.validate()?;
        Trainer::check_layout(config)?;
        if self.batch_size > MAX_BATCH {
            return Err(DisaError::InvalidSetting(format!(
                "batch size {} is more than the {MAX_BATCH} accepted",
                self.batch_size
            )));
        }
        if self.diffusion_batch_mul > 64 {
            return Err(DisaError::InvalidSetting(format!(
                "diffusion batch multiplier {} is more than the 64 accepted",
                self.diffusion_batch_mul
            )));
        }
        // Weights, gradients, two AdamW moments and the EMA; activations kept for the backward
        // pass, a few times the forward's.
        crate::weights::limits::check_config(config, 5.0, "training this model")?;
        let rows = self.batch_size as f64 * 4.0 * self.diffusion_batch_mul as f64;
        crate::weights::limits::check_fits(
            &format!("training with batch size {}", self.batch_size),
            crate::weights::limits::sampling_bytes(config, rows, false),
        )
    }

    /// One training timestep in `[0, 1000)`: uniform as the official code, or with
    /// probability `tail_fraction` uniform over `[tail_from, 999]`. With no tail the stream
    /// draws exactly as the official-uniform runs always did (resumed runs continue exactly).
    fn draw_timestep(&self, rng: &mut SeededNoise) -> usize {
        let all = NUM_BASE_TIMESTEPS as u64;
        if self.tail_fraction > 0.0 && rng.uniform() < self.tail_fraction {
            let from = self.tail_from as u64;
            (from + rng.below(all - from)) as usize
        } else {
            rng.below(all) as usize
        }
    }
}

/// One batch's images as tokens (`[B · N · C]`), labels, CFG label drops (1 = dropped), masks
/// (`[B][N]`, true = masked) and the masked rows (`image · N + position`, sorted per image).
struct Batch {
    tokens: Vec<f32>,
    labels: Vec<i64>,
    dropped: Vec<f32>,
    mask: Vec<Vec<bool>>,
    masked_rows: Vec<usize>,
    mask_ratio: f64,
    token_dim: usize,
}

/// The largest batch size accepted before memory is estimated at all.
pub const MAX_BATCH: usize = 1 << 16;

/// What one optimizer step reports.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub step: usize,
    pub loss: f32,
    pub parts: LossParts,
    pub learning_rate: f64,
    pub mask_ratio: f64,
}

/// The state saved between runs (`state.json` in a checkpoint directory).
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SavedState {
    step: usize,
    config: MarConfig,
    settings: TrainSettings,
}

/// Gives every parameter an id from its position in the module, so optimizer state saved
/// by one process matches the parameters rebuilt by the next.
struct NumberParams(u64);

impl ModuleMapper for NumberParams {
    fn map_float<const D: usize>(&mut self, mut param: Param<Tensor<D>>) -> Param<Tensor<D>> {
        param.id = ParamId::from(self.0);
        self.0 += 1;
        param
    }
}

/// What [`Trainer::resume_reporting`] resumed, and what it skipped on the way.
pub struct Resumed {
    pub trainer: Trainer,
    /// The checkpoint folder resumed from (`OUT/checkpoints/step-N`).
    pub checkpoint: std::path::PathBuf,
    /// The newer checkpoints that could not be loaded, newest first.
    pub skipped: Vec<SkippedCheckpoint>,
}

/// A checkpoint [`Trainer::resume_reporting`] passed over, and why.
#[derive(Debug)]
pub struct SkippedCheckpoint {
    /// The step its folder name gives.
    pub step: usize,
    /// Its folder.
    pub path: std::path::PathBuf,
    /// What is wrong with it (a file missing, or not matching the manifest, ...).
    pub reason: DisaError,
}

/// The skipped checkpoints in one line: `step N: reason; ...`.
fn describe(skipped: &[SkippedCheckpoint]) -> String {
    skipped
        .iter()
        .map(|s| format!("step {}: {}", s.step, s.reason))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A MAR being trained, with its optimizer and EMA weights.
pub struct Trainer {
    pub config: MarConfig,
    pub settings: TrainSettings,
    /// Always `Some` between calls (taken while the optimizer steps).
    model: Option<Model>,
    optim: ModuleOptimizer,
    /// EMA of the weights, official layout, on the host.
    ema: WeightMap,
    /// Optimizer steps taken.
    pub step: usize,
    diffusion: TrainingDiffusion,
    device: Device,
}

/// The token layout every trainer uses (the Fashion-MNIST patches).
pub const LAYOUT: PatchLayout = PatchLayout::FASHION;

fn optimizer(s: &TrainSettings) -> ModuleOptimizer {
    let adamw = AdamWConfig::new()
        .with_beta_1(0.9)
        .with_beta_2(0.95)
        .with_weight_decay(s.weight_decay)
        .build();
    // `AdamWConfig::init` is `ModuleOptimizer::from(build())` plus this clipping.
    ModuleOptimizer::from(HostLoadedAdamW(adamw))
        .with_grad_clipping(GradientClippingConfig::Norm(s.grad_clip).init())
}

/// Burn's AdamW, except that its saved state loads onto the CPU (Burn's `flex` device).
///
/// `ModuleOptimizer::from_bytes` materializes every state tensor on `Device::default()`,
/// which in a build with the `wgpu` feature is the wgpu device: resuming a CPU run then
/// started wgpu, which probed every GPU adapter (Vulkan, GL, ...; "error: XDG_RUNTIME_DIR is
/// invalid or not set" four times on a machine without a display) and uploaded the whole
/// optimizer state to a GPU only to copy it back at the first step. The host is always a
/// valid place for the loaded state: the optimizer moves each state to its parameter's
/// device at the next step (`Optimizer::to_device`). The steps and the saved format (the
/// tensor names under each parameter) are AdamW's own, so runs resume bit for bit and old
/// checkpoints load.
#[derive(Clone)]
struct HostLoadedAdamW(AdamW);

/// [`AdamWState`], loaded onto the CPU (see [`HostLoadedAdamW`]).
#[derive(Clone)]
struct HostLoadedState<const D: usize>(AdamWState<D>);

impl<const D: usize> RecordState for HostLoadedState<D> {
    fn state_flatten(&self, prefix: &str, out: &mut StateSink) {
        self.0.state_flatten(prefix, out)
    }

    fn state_unflatten(prefix: &str, src: &mut StateSource, _device: &Device) -> Option<Self> {
        AdamWState::state_unflatten(prefix, src, &Device::flex()).map(Self)
    }
}

impl Optimizer for HostLoadedAdamW {
    type State<const D: usize> = HostLoadedState<D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<D>,
        grad: Tensor<D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<D>, Option<Self::State<D>>) {
        let (tensor, state) = self.0.step(lr, tensor, grad, state.map(|s| s.0));
        (tensor, state.map(HostLoadedState))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &Device) -> Self::State<D> {
        HostLoadedState(AdamW::to_device(state.0, device))
    }
}

fn io_error(path: &Path, source: std::io::Error) -> DisaError {
    DisaError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// Folder of the checkpoints inside a run's folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The files of one checkpoint; the manifest that names and hashes them is written last.
const CHECKPOINT_FILES: [&str; 4] = [
    "model.safetensors",
    "ema.safetensors",
    "optimizer.bin",
    "state.json",
];
const MANIFEST: &str = "manifest.json";

/// One file of a checkpoint as the manifest records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ManifestEntry {
    file: String,
    bytes: u64,
    fnv1a64: String,
}

/// `manifest.json`: the step and every file with its size and hash.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Manifest {
    step: usize,
    files: Vec<ManifestEntry>,
}

fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// A checkpoint folder's name: the step, zero-padded so names sort by step.
fn step_folder(step: usize) -> String {
    format!("step-{step:09}")
}

/// Syncs a folder, so the renames in it survive a power cut.
fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(dir, e))
}

/// Reads a checkpoint folder's files, checked against its manifest: all present, with the
/// sizes and hashes it names.
fn read_checkpoint(dir: &Path) -> Result<std::collections::HashMap<String, Vec<u8>>> {
    let read = |name: &str| {
        let p = dir.join(name);
        crate::weights::atomic::read_regular(&p, 1 << 40, "a checkpoint file")
    };
    let manifest: Manifest = serde_json::from_slice(&read(MANIFEST)?)
        .map_err(|e| DisaError::Format(format!("{}: {e}", dir.join(MANIFEST).display())))?;
    let mut files = std::collections::HashMap::new();
    for name in CHECKPOINT_FILES {
        let entry = manifest
            .files
            .iter()
            .find(|e| e.file == name)
            .ok_or_else(|| DisaError::Format(format!("{}: {name} missing", dir.display())))?;
        let bytes = read(name)?;
        if bytes.len() as u64 != entry.bytes || fnv1a64(&bytes) != entry.fnv1a64 {
            return Err(DisaError::Format(format!(
                "{}: {name} does not match the manifest (changed or damaged)",
                dir.display()
            )));
        }
        files.insert(name.to_string(), bytes);
    }
    Ok(files)
}

impl Trainer {
    /// A fresh model initialized from `settings.seed`. `device` must have autodiff enabled
    /// (`Device::flex().autodiff()`).
    pub fn new(config: MarConfig, settings: TrainSettings, device: &Device) -> Result<Self> {
        settings.validate_for(&config)?;
        let weights = config.initial_weights(settings.seed);
        Self::from_parts(config, settings, weights.clone(), weights, 0, None, device)
    }

    /// A run that starts from trained weights (a model file's): the model and the EMA both
    /// begin as `weights`, with a fresh optimizer (warm-up included) at step 0. Continued
    /// training, e.g. from the shipped int8 model, whose training checkpoint is not kept.
    pub fn from_weights(
        config: MarConfig,
        settings: TrainSettings,
        weights: WeightMap,
        device: &Device,
    ) -> Result<Self> {
        // Only MAR's own tensors are kept (a file may carry more, e.g. a VAE); a missing or
        // misshapen one is refused by `Model::load` in `from_parts`.
        let start = WeightMap {
            tensors: weights
                .tensors
                .into_iter()
                .filter(|(k, _)| crate::weights::is_mar_tensor(k))
                .collect(),
            ..weights
        };
        Self::from_parts(config, settings, start.clone(), start, 0, None, device)
    }

    fn check_layout(config: &MarConfig) -> Result<()> {
        let tokens = LAYOUT.grid() * LAYOUT.grid();
        let dim = LAYOUT.patch * LAYOUT.patch;
        if config.seq_len() != tokens || config.token_dim() != dim {
            return Err(DisaError::Config(format!(
                "training uses {tokens} tokens of {dim} values (Fashion-MNIST patches); this \
                 configuration has {} tokens of {}",
                config.seq_len(),
                config.token_dim()
            )));
        }
        Ok(())
    }

    fn from_parts(
        config: MarConfig,
        settings: TrainSettings,
        mut weights: WeightMap,
        ema: WeightMap,
        step: usize,
        optim_bytes: Option<Vec<u8>>,
        device: &Device,
    ) -> Result<Self> {
        // Settings read back from a checkpoint are checked exactly as new ones.
        settings.validate_for(&config)?;
        let decoder = Some(ImageDecoder::Patch(PatchDecoder {
            scale: settings.token_scale,
        }));
        let model = Model::load(&mut weights, &config, decoder, device)?.map(&mut NumberParams(0));
        let mut optim = optimizer(&settings);
        if let Some(bytes) = optim_bytes {
            optim = optim
                .from_bytes(burn::tensor::Bytes::from_bytes_vec(bytes))
                .map_err(|e| DisaError::Format(format!("optimizer state does not load: {e:?}")))?;
        }
        Ok(Self {
            config,
            settings,
            model: Some(model),
            optim,
            ema,
            step,
            diffusion: TrainingDiffusion::new()?,
            device: device.clone(),
        })
    }

    /// The model as it trains.
    pub fn model(&self) -> &Model {
        self.model.as_ref().expect("model present between steps")
    }

    /// The EMA weights (official layout).
    pub fn ema_weights(&self) -> &WeightMap {
        &self.ema
    }

    /// The current learning rate (linear warm-up, then constant).
    pub fn learning_rate(&self) -> f64 {
        let warm = self.settings.warmup_steps;
        let scale = if warm == 0 {
            1.0
        } else {
            ((self.step + 1) as f64 / warm as f64).min(1.0)
        };
        self.settings.learning_rate * scale
    }

    /// One optimizer step on a random batch of `data`. The batch, orders, masks, timesteps
    /// and noise come from a stream seeded by (seed, step), so a resumed run continues exactly.
    pub fn train_step(&mut self, data: &Split) -> Result<StepStats> {
        let mut rng =
            SeededNoise::new(self.settings.seed ^ (self.step as u64).wrapping_mul(0x9E37_79B9));
        let batch = self.draw_batch(data, &mut rng)?;
        let s = &self.settings;
        let rows = s.diffusion_batch_mul * batch.masked_rows.len();
        let t: Vec<usize> = (0..rows).map(|_| s.draw_timestep(&mut rng)).collect();
        let noise = rng.normal(crate::noise::DrawKind::InitialNoise, rows, batch.token_dim)?;
        let model = self.model();
        let z = self.batch_conditions(model, &self.device, &batch);
        let (loss, parts) = self.batch_loss(model, &batch, z, &t, noise)?;
        let loss_value = parts.mse + parts.vb;
        if !loss_value.is_finite() {
            return Err(DisaError::InvalidSetting(format!(
                "loss became {loss_value} at step {}: lower the learning rate",
                self.step
            )));
        }
        let model = self.model.take().expect("model present between steps");
        let grads = GradientsParams::from_grads(loss.backward(), &model);
        let lr = self.learning_rate();
        let model = self.optim.step(lr, model, grads);
        let current = model.state_dict("training")?;
        self.model = Some(model);
        self.update_ema(&current);
        self.step += 1;
        Ok(StepStats {
            step: self.step,
            loss: loss_value,
            parts,
            learning_rate: lr,
            mask_ratio: batch.mask_ratio,
        })
    }

    /// The images, labels, label drops and masks of one batch, drawn from `rng` in the
    /// order every run has used (the timesteps and noise are drawn after it).
    fn draw_batch(&self, data: &Split, rng: &mut SeededNoise) -> Result<Batch> {
        let s = &self.settings;
        let (b, n, c) = (s.batch_size, self.config.seq_len(), self.config.token_dim());
        let count = data.images.count;
        if count == 0 {
            return Err(DisaError::InvalidSetting("no training images".into()));
        }
        let side = crate::data::IMAGE_SIDE;
        if (data.images.rows, data.images.cols) != (side, side) {
            // Larger images would not fit the token grid, smaller ones would train on padding.
            return Err(DisaError::InvalidSetting(format!(
                "training images must be {side}×{side} (Fashion-MNIST); these are {}×{}",
                data.images.rows, data.images.cols
            )));
        }
        if data.labels.len() < count || data.images.pixels.len() < count * side * side {
            return Err(DisaError::InvalidSetting(
                "fewer labels or pixels than images".into(),
            ));
        }
        let mut tokens = Vec::with_capacity(b * n * c);
        let mut labels = Vec::with_capacity(b);
        let mut dropped = Vec::with_capacity(b);
        for _ in 0..b {
            let i = rng.below(count as u64) as usize;
            tokens.extend(LAYOUT.tokens(
                data.images.image(i),
                data.images.rows,
                data.images.cols,
                s.token_scale,
            ));
            labels.push(data.labels[i] as i64);
            dropped.push((rng.uniform() < s.label_drop) as u8 as f32);
        }
        // Mask ratio ~ truncated normal (loc 1, scale 0.25) on [mask_ratio_min, 1].
        let ratio = loop {
            let r = 1.0 + 0.25 * rng.standard_normal();
            if (s.mask_ratio_min..=1.0).contains(&r) {
                break r;
            }
        };
        let masked = ((n as f64 * ratio).ceil() as usize).clamp(1, n);
        let mut mask = vec![vec![false; n]; b];
        let mut masked_rows = Vec::with_capacity(b * masked);
        for (img, row) in mask.iter_mut().enumerate() {
            let order = rng.permutation(n)?;
            let mut positions: Vec<usize> = order[..masked].to_vec();
            positions.sort_unstable();
            for &p in &positions {
                row[p] = true;
                masked_rows.push(img * n + p);
            }
        }
        Ok(Batch {
            tokens,
            labels,
            dropped,
            mask,
            masked_rows,
            mask_ratio: masked as f64 / n as f64,
            token_dim: c,
        })
    }

    /// The condition rows `z` of `batch`'s masked tokens (`[masked rows, dec]`): the
    /// transformer of `model` (on `dev`) over the batch with its masks and label drops.
    fn batch_conditions(&self, model: &Model, dev: &Device, batch: &Batch) -> Tensor<2> {
        let (b, n, c) = (batch.labels.len(), batch.mask[0].len(), batch.token_dim);
        let tr = &model.transformer;
        let tokens = Tensor::<3>::from_data(TensorData::new(batch.tokens.clone(), [b, n, c]), dev);
        let idx = Tensor::<1, Int>::from_data(TensorData::new(batch.labels.clone(), [b]), dev);
        let drop = Tensor::<2>::from_data(TensorData::new(batch.dropped.clone(), [b, 1]), dev);
        let e = self.config.encoder_embed_dim;
        let class = tr.class_emb.val().select(0, idx) * (drop.clone().neg() + 1.0)
            + tr.fake_latent.val().expand([b, e]) * drop;
        let layout = MaskLayout::new(&batch.mask, self.config.buffer_size);
        let z = tr.decode(tr.encode(tokens, &layout, class), &layout);
        let d = self.config.decoder_embed_dim;
        let m = batch.masked_rows.len();
        let rows = Tensor::<1, Int>::from_data(
            TensorData::new(batch.masked_rows.iter().map(|&r| r as i64).collect(), [m]),
            dev,
        );
        z.reshape([b * n, d]).select(0, rows)
    }

    /// The diffusion loss of `model`'s head on `batch` given its conditions `z`
    /// ([`Trainer::batch_conditions`]), with one timestep per loss row (`t`, the
    /// `diffusion_batch_mul` repeats of the masked tokens) and its noise (`[rows · C]`).
    fn batch_loss(
        &self,
        model: &Model,
        batch: &Batch,
        z: Tensor<2>,
        t: &[usize],
        noise: Vec<f32>,
    ) -> Result<(Tensor<1>, LossParts)> {
        let c = batch.token_dim;
        let m = batch.masked_rows.len();
        let mul = self.settings.diffusion_batch_mul;
        let x0: Vec<f32> = (0..mul)
            .flat_map(|_| batch.masked_rows.iter())
            .flat_map(|&r| batch.tokens[r * c..(r + 1) * c].iter().copied())
            .collect();
        let dev = z.device();
        let x0 = Tensor::<2>::from_data(TensorData::new(x0, [mul * m, c]), &dev);
        let noise = Tensor::<2>::from_data(TensorData::new(noise, [mul * m, c]), &dev);
        let weights = (self.settings.tail_weight != 1.0).then(|| {
            t.iter()
                .map(|&t| match t >= self.settings.tail_from {
                    true => self.settings.tail_weight,
                    false => 1.0,
                })
                .collect()
        });
        self.diffusion.loss(&model.head, x0, z, t, noise, weights)
    }

    /// The ε-prediction MSE of the model as it trains at each of `timesteps`, on one fixed
    /// batch of `data` (the same images, masks and noise for every timestep and every call,
    /// so successive probes of a run compare). A diagnostic: the official no-clip sampler
    /// needs it near 1e-6 at t = 999 (see [`TrainSettings::tail_fraction`]).
    pub fn probe_mse(&self, data: &Split, timesteps: &[usize]) -> Result<Vec<f32>> {
        let mut rng = SeededNoise::new(self.settings.seed ^ 0x5052_4f42_4521);
        let batch = self.draw_batch(data, &mut rng)?;
        let rows = self.settings.diffusion_batch_mul * batch.masked_rows.len();
        let noise = rng.normal(crate::noise::DrawKind::InitialNoise, rows, batch.token_dim)?;
        // Without autodiff: a forward whose graph is never consumed would be kept alive.
        let model = self.model().clone().valid();
        let dev = self.device.clone().inner();
        if let Some(t) = timesteps.iter().find(|&&t| t >= NUM_BASE_TIMESTEPS) {
            return Err(DisaError::InvalidSetting(format!(
                "probe timestep {t} is not below 1000"
            )));
        }
        // The conditions do not depend on the timestep: one transformer pass for all.
        let z = self.batch_conditions(&model, &dev, &batch);
        timesteps
            .iter()
            .map(|&t| {
                let parts =
                    self.batch_loss(&model, &batch, z.clone(), &vec![t; rows], noise.clone())?;
                Ok(parts.1.mse)
            })
            .collect()
    }

    fn update_ema(&mut self, current: &WeightMap) {
        let decay = self.settings.ema_decay as f32;
        for (key, ema) in self.ema.tensors.iter_mut() {
            if let Some(cur) = current.tensors.get(key) {
                for (e, &v) in ema.values.iter_mut().zip(&cur.values) {
                    *e = decay * *e + (1.0 - decay) * v;
                }
            }
        }
    }

    /// A bundle of `weights` with this trainer's configuration and the patch decoder.
    pub fn bundle(&self, weights: WeightMap, info: BundleInfo) -> Bundle {
        Bundle {
            config: self.config.clone(),
            decoder: DecoderSpec::Patch {
                scale: self.settings.token_scale,
            },
            info,
            mar: weights,
            vae: None,
            stored: Default::default(),
            quantized: Default::default(),
        }
    }

    /// Saves everything needed to resume as one atomic unit: the files (`model.safetensors`
    /// current weights, `ema.safetensors`, `optimizer.bin`, `state.json`) and last a
    /// `manifest.json` naming and hashing them go into a fresh folder, which is renamed into
    /// place as `dir/checkpoints/step-N`; then the EMA model is copied to
    /// `dir/ema.safetensors` (the model to ship) and older checkpoints are removed. A save
    /// interrupted at any point leaves the previous checkpoint complete.
    pub fn save(&self, dir: &Path, info: &BundleInfo) -> Result<()> {
        use crate::weights::atomic::{fault_point, write_atomic};
        let root = dir.join(CHECKPOINTS);
        std::fs::create_dir_all(&root).map_err(|e| io_error(&root, e))?;
        let name = step_folder(self.step);
        let target = root.join(&name);
        let ema_bytes = self.bundle(self.ema.clone(), info.clone()).to_bytes()?;
        if !(target.is_dir() && read_checkpoint(&target).is_ok()) {
            let current = self.model().state_dict("training")?;
            let optim = self
                .optim
                .into_bytes()
                .map_err(|e| DisaError::Internal(format!("serializing optimizer state: {e:?}")))?;
            let state = SavedState {
                step: self.step,
                config: self.config.clone(),
                settings: self.settings.clone(),
            };
            let files: [(&str, Vec<u8>); 4] = [
                (
                    CHECKPOINT_FILES[0],
                    self.bundle(current, info.clone()).to_bytes()?,
                ),
                (CHECKPOINT_FILES[1], ema_bytes.clone()),
                (CHECKPOINT_FILES[2], optim.to_vec()),
                (
                    CHECKPOINT_FILES[3],
                    serde_json::to_vec_pretty(&state).expect("state serializes"),
                ),
            ];
            let partial = root.join(format!(".partial-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&partial);
            std::fs::create_dir(&partial).map_err(|e| io_error(&partial, e))?;
            let mut manifest = Manifest {
                step: self.step,
                files: Vec::new(),
            };
            for (file, bytes) in &files {
                write_atomic(&partial.join(file), bytes)?;
                manifest.files.push(ManifestEntry {
                    file: file.to_string(),
                    bytes: bytes.len() as u64,
                    fnv1a64: fnv1a64(bytes),
                });
            }
            let manifest = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
            write_atomic(&partial.join(MANIFEST), &manifest)?;
            sync_dir(&partial)?;
            // An incomplete folder of this step (damaged) makes way; a complete one was kept.
            if target.exists() {
                std::fs::remove_dir_all(&target).map_err(|e| io_error(&target, e))?;
            }
            fault_point().map_err(|e| io_error(&target, e))?;
            std::fs::rename(&partial, &target).map_err(|e| io_error(&target, e))?;
            sync_dir(&root)?;
        }
        write_atomic(&dir.join("ema.safetensors"), &ema_bytes)?;
        fault_point().map_err(|e| io_error(&root, e))?;
        // Older checkpoints and leftovers of interrupted saves.
        let entries = std::fs::read_dir(&root).map_err(|e| io_error(&root, e))?;
        for entry in entries.flatten() {
            let n = entry.file_name().to_string_lossy().into_owned();
            if n != name && (n.starts_with("step-") || n.starts_with(".partial-")) {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
        Ok(())
    }

    /// Resumes from the newest complete checkpoint of a run folder written by
    /// [`Trainer::save`]. A checkpoint whose files do not match its manifest is skipped (rolled
    /// back to the one before); settings are validated as from the command line. Which
    /// checkpoints were skipped, and why, is not told: [`Trainer::resume_reporting`] does.
    pub fn resume(dir: &Path, device: &Device) -> Result<Self> {
        Self::resume_reporting(dir, device).map(|r| r.trainer)
    }

    /// [`Trainer::resume`], also telling which checkpoint it resumed from and every newer one
    /// it skipped as damaged, with the reason (for the caller to warn about: a silent
    /// roll-back loses steps unseen).
    pub fn resume_reporting(dir: &Path, device: &Device) -> Result<Resumed> {
        let root = dir.join(CHECKPOINTS);
        if !root.is_dir() {
            return Err(DisaError::InvalidSetting(
                if dir.join("state.json").exists() {
                    format!(
                        "{} holds a checkpoint of an older disa (loose files, not an atomic \
                         checkpoint) whose files cannot be checked to belong together; start a \
                         new run with another --out",
                        dir.display()
                    )
                } else {
                    format!("{} holds no checkpoint to resume", dir.display())
                },
            ));
        }
        let mut steps: Vec<(usize, std::path::PathBuf)> = std::fs::read_dir(&root)
            .map_err(|e| io_error(&root, e))?
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                let step = n.strip_prefix("step-")?.parse().ok()?;
                Some((step, e.path()))
            })
            .collect();
        steps.sort_by_key(|s| std::cmp::Reverse(s.0));
        let mut skipped = Vec::new();
        for (step, path) in steps {
            match Self::load_checkpoint(&path, step, device) {
                Ok(trainer) => {
                    return Ok(Resumed {
                        trainer,
                        checkpoint: path,
                        skipped,
                    });
                }
                // Settings that cannot train are final, whichever checkpoint holds them (the
                // newer ones skipped on the way are named too).
                Err(DisaError::InvalidSetting(m)) if !skipped.is_empty() => {
                    return Err(DisaError::InvalidSetting(format!(
                        "{m} (in the checkpoint of step {step}, tried because the newer ones are \
                         damaged: {})",
                        describe(&skipped)
                    )));
                }
                Err(e @ DisaError::InvalidSetting(_)) => return Err(e),
                Err(reason) => skipped.push(SkippedCheckpoint { step, path, reason }),
            }
        }
        Err(DisaError::InvalidSetting(format!(
            "{} holds no complete checkpoint{}",
            dir.display(),
            if skipped.is_empty() {
                String::new()
            } else {
                format!(" ({})", describe(&skipped))
            }
        )))
    }

    /// Loads one checkpoint folder, checked against its manifest.
    fn load_checkpoint(path: &Path, step: usize, device: &Device) -> Result<Self> {
        let mut files = read_checkpoint(path)?;
        let mut take = |name: &str| files.remove(name).expect("read_checkpoint has every file");
        let state: SavedState = serde_json::from_slice(&take("state.json")).map_err(|e| {
            DisaError::Format(format!("{}: {e}", path.join("state.json").display()))
        })?;
        if state.step != step {
            return Err(DisaError::Format(format!(
                "{}: state.json says step {}",
                path.display(),
                state.step
            )));
        }
        let model = Bundle::from_bytes("model.safetensors", &take("model.safetensors"))?;
        let ema = Bundle::from_bytes("ema.safetensors", &take("ema.safetensors"))?;
        if model.config != state.config || ema.config != state.config {
            return Err(DisaError::Format(
                "checkpoint files disagree on the model configuration".into(),
            ));
        }
        Self::from_parts(
            state.config,
            state.settings,
            model.mar,
            ema.mar,
            state.step,
            Some(take("optimizer.bin")),
            device,
        )
    }
}

/// Maximum absolute difference between two weight maps with the same keys (for tests and
/// checks); `None` if the keys or shapes differ.
pub fn max_abs_difference(a: &WeightMap, b: &WeightMap) -> Option<f32> {
    if a.tensors.len() != b.tensors.len() {
        return None;
    }
    let mut worst = 0.0f32;
    for (k, ta) in &a.tensors {
        let tb: &HostTensor = b.tensors.get(k)?;
        if ta.shape != tb.shape {
            return None;
        }
        for (x, y) in ta.values.iter().zip(&tb.values) {
            worst = worst.max((x - y).abs());
        }
    }
    Some(worst)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn draws(settings: &TrainSettings, n: usize) -> Vec<usize> {
        let mut rng = SeededNoise::new(7);
        (0..n).map(|_| settings.draw_timestep(&mut rng)).collect()
    }

    #[test]
    fn no_tail_draws_the_official_uniform_stream() {
        let mut rng = SeededNoise::new(7);
        let uniform: Vec<usize> = (0..2000).map(|_| rng.below(1000) as usize).collect();
        assert_eq!(draws(&TrainSettings::default(), 2000), uniform);
    }

    #[test]
    fn the_tail_gets_its_share_of_the_draws() {
        let all_tail = TrainSettings {
            tail_fraction: 1.0,
            tail_from: 990,
            ..TrainSettings::default()
        };
        let d = draws(&all_tail, 5000);
        assert!(d.iter().all(|&t| (990..1000).contains(&t)));
        // Every tail timestep is reached, 999 included.
        assert!((990..1000).all(|t| d.contains(&t)));

        let some = TrainSettings {
            tail_fraction: 0.3,
            tail_from: 980,
            ..TrainSettings::default()
        };
        let n = 20_000;
        let in_tail = draws(&some, n).iter().filter(|&&t| t >= 980).count() as f64 / n as f64;
        // 0.3 from the tail plus the uniform draws' own 2% of the other 70%.
        let want = 0.3 + 0.7 * 0.02;
        assert!((in_tail - want).abs() < 0.015, "{in_tail} vs {want}");
    }
}
