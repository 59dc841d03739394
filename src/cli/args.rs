//! Options several commands share: the model to load, the sampling settings, and the typed
//! values of options with a fixed set of choices (so `--help` lists them).

use super::common::progress_bar;
use clap::{Args, ValueEnum};
use disa::defaults::{Sampling, SamplingDefaults};
use disa::schedule::{CfgSchedule, StepSchedule};
use disa::weights::{Bundle, ModelFiles};
use disa::{DisaError, Result};
use std::path::PathBuf;

/// The Fashion-MNIST MAR trained by this project (`disa train`, see the README), int8 storage.
pub const SHIPPED_MODEL: &[u8] = include_bytes!("../../www/assets/model.safetensors");
/// The classifier `disa eval` scores with (`disa train-classifier`).
pub const SHIPPED_CLASSIFIER: &[u8] = include_bytes!("../../www/assets/classifier.safetensors");

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A disa model file, or official MAR weights (checkpoint .pth or safetensors); default:
    /// the built-in Fashion-MNIST model.
    #[arg(long)]
    pub weights: Option<PathBuf>,
    /// VAE weights (.ckpt or safetensors); default: vae.safetensors or vae.ckpt beside the weights.
    #[arg(long)]
    pub vae: Option<PathBuf>,
    /// Model configuration: a preset (mar_base, mar_large, mar_huge, fashion) or a JSON file of
    /// MAR's constructor arguments (a reference manifest.json works); default: manifest.json or
    /// config.json beside the weights, else inferred from the weights.
    #[arg(long)]
    pub config: Option<String>,
    /// State dict inside a .pth checkpoint: model_ema (default) or model.
    #[arg(long, default_value = "model_ema")]
    pub state_dict: String,
}

impl ModelArgs {
    /// The model these arguments name: files on disk, or the built-in model.
    pub fn bundle(&self) -> Result<Bundle> {
        match &self.weights {
            Some(weights) => {
                // A byte progress bar for files big enough to wait for (official checkpoints).
                let big = std::fs::metadata(weights).is_ok_and(|m| m.len() > 64 << 20);
                let bar = progress_bar(0, "reading weights [{bar:30}] {bytes}/{total_bytes}", !big);
                let bundle = ModelFiles {
                    weights: weights.clone(),
                    vae: self.vae.clone(),
                    config: self.config.clone(),
                    state_dict: self.state_dict.clone(),
                }
                .load_with_progress(&mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                });
                bar.finish_and_clear();
                bundle
            }
            None if self.vae.is_some() || self.config.is_some() => Err(DisaError::InvalidSetting(
                "--vae and --config describe official weights: give --weights too".into(),
            )),
            None => Bundle::from_bytes("built-in Fashion-MNIST model", SHIPPED_MODEL),
        }
    }
}

/// The model's suggested sampling settings (`info.defaults`), typed and checked.
pub fn suggested(bundle: &Bundle) -> Result<SamplingDefaults> {
    SamplingDefaults::from_info(&bundle.info.defaults)
}

/// The settings of one generation. Where a flag is not given, the model's suggestion applies,
/// else the built-in fallback (`disa::defaults`).
#[derive(Args, Clone)]
pub struct SamplingArgs {
    /// AR steps K [default: the model's suggestion, else 64].
    #[arg(long)]
    pub ar_steps: Option<usize>,
    /// Diffusion steps per AR step: constant:N, linear:START:END, cosine:START:END,
    /// two-stage:START:END or custom:N,N,... (one per AR step) [default: the model's
    /// suggestion, else linear:50:5].
    #[arg(long, value_parser = parse_schedule)]
    pub schedule: Option<StepSchedule>,
    /// Timestep clip: default (950 for DiSA schedules, none for constant ones, as the official
    /// code), none (MAR; also off), or a timestep in 1..=1000 (DiSA: 950).
    #[arg(long, default_value = "default", value_parser = parse_clip)]
    pub clip: Clip,
    /// Classifier-free guidance scale in 1..=1000, 1 = off [default: the model's suggestion,
    /// else 1].
    #[arg(long)]
    pub cfg: Option<f32>,
    /// How the CFG scale grows over the AR steps [default: the model's suggestion, else
    /// linear].
    #[arg(long, value_enum, ignore_case = true)]
    pub cfg_schedule: Option<CfgScheduleArg>,
}

impl SamplingArgs {
    /// The flags given, as settings that override a model's suggestions.
    pub fn flags(&self, temperature: Option<f32>) -> SamplingDefaults {
        SamplingDefaults {
            ar_steps: self.ar_steps,
            schedule: self.schedule.clone(),
            cfg: self.cfg,
            cfg_schedule: self.cfg_schedule.map(Into::into),
            temperature,
        }
    }

    /// Checks the flags given before anything is loaded (see [`check_flags`]).
    pub fn check(&self, temperature: Option<f32>) -> Result<()> {
        check_flags(&self.flags(temperature), self.clip)
    }

    /// Every setting: a flag, else the model's suggestion, else the built-in fallback.
    pub fn resolve(&self, suggested: &SamplingDefaults, temperature: Option<f32>) -> Sampling {
        suggested.overridden_by(&self.flags(temperature)).resolve()
    }
}

/// Checks sampling flags before any loading, with the library's checks and messages (the
/// same a request gets when it runs: `disa::sampler::Request::validate`): K ≥ 1, the CFG scale
/// in 1..=1000, the temperature in 0..=100, the clip in 1..=1000, a custom schedule's length
/// against K when both are given. What needs the model (K against its tokens, the classes)
/// is checked once it is loaded.
pub fn check_flags(flags: &SamplingDefaults, clip: Clip) -> Result<()> {
    flags.validate()?;
    clip.validate()
}

/// `--schedule`'s parser: the library's, with its message.
pub fn parse_schedule(text: &str) -> std::result::Result<StepSchedule, String> {
    StepSchedule::parse(text).map_err(message)
}

/// The message of a setting error, without the "invalid setting:" its display adds (clap says
/// "invalid value" already).
fn message(e: DisaError) -> String {
    match e {
        DisaError::InvalidSetting(m) => m,
        other => other.to_string(),
    }
}

/// `--clip`: the library's request field (its range is checked with the rest of the request,
/// so every command says the same).
pub use disa::sampler::Clip;

/// `--clip`'s parser: `default`, `none`/`off`, or a timestep.
pub fn parse_clip(text: &str) -> std::result::Result<Clip, String> {
    text.parse::<Clip>().map_err(|e| match e {
        disa::DisaError::InvalidSetting(m) => m,
        other => other.to_string(),
    })
}

/// `--backend`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The pure-Rust CPU backend (Burn's flex).
    #[value(alias = "flex")]
    Cpu,
    /// Burn's wgpu backend on the best GPU adapter (Vulkan, Metal, DX12).
    #[value(aliases = ["gpu", "webgpu", "vulkan", "metal", "dx12"])]
    Wgpu,
}

impl From<BackendArg> for disa::backend::Backend {
    fn from(b: BackendArg) -> Self {
        match b {
            BackendArg::Cpu => Self::Cpu,
            BackendArg::Wgpu => Self::Wgpu,
        }
    }
}

/// `--kernels`: what runs the diffusion head's sampling loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KernelsArg {
    /// The fused kernels where available (a wgpu device that has them), else tensor ops.
    Auto,
    /// The fused WGSL kernels of shaders/ (wgpu only; an error elsewhere).
    Fused,
    /// The head's fused kernels with Burn's transformer (wgpu only).
    FusedHead,
    /// Burn's tensor operations (every backend).
    Tensor,
}

impl From<KernelsArg> for disa::sampler::Kernels {
    fn from(k: KernelsArg) -> Self {
        match k {
            KernelsArg::Auto => Self::Auto,
            KernelsArg::Fused => Self::Fused,
            KernelsArg::FusedHead => Self::FusedHead,
            KernelsArg::Tensor => Self::Tensor,
        }
    }
}

/// `--cfg-schedule`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CfgScheduleArg {
    /// 1 + (cfg − 1) · revealed / tokens: starts near 1, ends at cfg (MAR's default).
    Linear,
    /// cfg at every AR step.
    Constant,
}

impl From<CfgScheduleArg> for CfgSchedule {
    fn from(c: CfgScheduleArg) -> Self {
        match c {
            CfgScheduleArg::Linear => Self::Linear,
            CfgScheduleArg::Constant => Self::Constant,
        }
    }
}
