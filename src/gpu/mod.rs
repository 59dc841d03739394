//! Hand-written WGSL kernels (`shaders/`) run on Burn's own wgpu device, for the part of the
//! model where Burn's one-kernel-per-operation graph is launch-bound: the diffusion head's
//! sampling loop ([`FusedHead`]), and the transformer's forward pass ([`FusedTransformer`]),
//! whose ~100 Burn kernels per AR step become `7 + 5·depth` launches in one pass.
//!
//! Burn and these kernels share one `wgpu::Device` and queue (the handles Burn's runtime was
//! initialized with, kept in a small registry by [`register`]). Burn's pending work is flushed
//! by reading its output back before a fused step is submitted, so the two never race.
//!
//! Builds without a wgpu backend (the CPU-only native build) get an uninhabited `FusedHead`, so
//! callers need no `cfg`s.

#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
mod common;
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
mod head;
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
mod registry;
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
mod transformer;

#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub use head::{FusedHead, HeadJob, Submitted};
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub use registry::{GpuContext, context, is_software, register};
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub use transformer::{FusedTransformer, TransformerJob, TransformerSubmitted};

/// Which implementation runs the diffusion head's sampling loop and the transformer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kernels {
    /// The fused WGSL kernels when the device is a GPU that has them, else Burn's tensor ops.
    #[default]
    Auto,
    /// The fused WGSL kernels; an error where they are not available.
    Fused,
    /// The head's fused kernels with Burn's transformer (to compare the two transformers).
    FusedHead,
    /// Burn's tensor operations (every backend).
    Tensor,
}

impl std::str::FromStr for Kernels {
    type Err = crate::DisaError;
    fn from_str(s: &str) -> crate::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "fused" => Ok(Self::Fused),
            "fused-head" => Ok(Self::FusedHead),
            "tensor" => Ok(Self::Tensor),
            _ => Err(crate::error::invalid!(
                "unknown kernels `{s}`: use auto, fused, fused-head or tensor"
            )),
        }
    }
}

impl std::fmt::Display for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Fused => "fused",
            Self::FusedHead => "fused-head",
            Self::Tensor => "tensor",
        })
    }
}

/// Without a wgpu backend there is no fused head.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
#[derive(Debug)]
pub enum FusedHead {}

/// Never built without a wgpu backend.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
#[derive(Debug)]
pub enum Submitted {}

/// Never built without a wgpu backend.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
pub struct HeadJob<'a> {
    pub z: &'a [f32],
    pub tokens: usize,
    pub cfg: Option<f32>,
    pub steps: &'a [crate::diffusion::StepCoefficients],
    pub init_noise: &'a [f32],
    pub step_noise: &'a [f32],
    pub temperature: f32,
}

#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
impl FusedHead {
    pub fn dispatches_per_head_call(&self) -> usize {
        match *self {}
    }
    pub fn weight_bytes(&self) -> u64 {
        match *self {}
    }
    pub fn dispatches(&self) -> u64 {
        match *self {}
    }
    pub fn gpu_time_ns(&self) -> Option<u64> {
        match *self {}
    }
    pub fn has_time_table(&self) -> bool {
        match *self {}
    }
    pub fn fits(&self, _: usize, _: bool, _: usize) -> bool {
        match *self {}
    }
    pub fn set_time_table(&self, _: &[f32]) -> crate::Result<()> {
        match *self {}
    }
    pub fn submit(&self, _: &HeadJob<'_>) -> crate::Result<Submitted> {
        match *self {}
    }
    pub fn read(&self, _: Submitted) -> crate::Result<Vec<f32>> {
        match *self {}
    }
    pub async fn read_async(&self, _: Submitted) -> crate::Result<Vec<f32>> {
        match *self {}
    }
}

/// Builds the fused head for a model being loaded on `device`, when `device` is a registered
/// GPU. `Ok(None)` for every other device.
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub fn fused_head_for(
    device: &burn::tensor::Device,
    weights: &crate::weights::WeightMap,
    stored: &std::collections::BTreeMap<String, crate::weights::StoredForm>,
    config: &crate::model::MarConfig,
) -> crate::Result<Option<FusedHead>> {
    match context(device) {
        Some(ctx) => FusedHead::new(ctx, weights, stored, config).map(Some),
        None => Ok(None),
    }
}

#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
pub fn fused_head_for(
    _device: &burn::tensor::Device,
    _weights: &crate::weights::WeightMap,
    _stored: &std::collections::BTreeMap<String, crate::weights::StoredForm>,
    _config: &crate::model::MarConfig,
) -> crate::Result<Option<FusedHead>> {
    Ok(None)
}

/// Without a wgpu backend there is no fused transformer.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
#[derive(Debug)]
pub enum FusedTransformer {}

/// Never built without a wgpu backend.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
#[derive(Debug)]
pub enum TransformerSubmitted {}

/// Never built without a wgpu backend.
#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
pub struct TransformerJob<'a> {
    pub labels: &'a [Option<usize>],
    pub mask: &'a [Vec<bool>],
    pub tokens: &'a [f32],
    pub select: &'a [usize],
}

#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
impl FusedTransformer {
    pub fn weight_bytes(&self) -> u64 {
        match *self {}
    }
    pub fn dispatches_per_forward(&self, _: usize) -> usize {
        match *self {}
    }
    pub fn dispatches(&self) -> u64 {
        match *self {}
    }
    pub fn fits(&self, _: usize, _: usize, _: usize) -> bool {
        match *self {}
    }
    pub fn submit(&self, _: &TransformerJob<'_>) -> crate::Result<TransformerSubmitted> {
        match *self {}
    }
    pub fn read(&self, _: TransformerSubmitted) -> crate::Result<Vec<f32>> {
        match *self {}
    }
    pub async fn read_async(&self, _: TransformerSubmitted) -> crate::Result<Vec<f32>> {
        match *self {}
    }
}

/// Builds the fused transformer for a model being loaded on `device`, when `device` is a
/// registered GPU. `Ok(None)` for every other device.
#[cfg(any(feature = "wgpu", target_arch = "wasm32"))]
pub fn fused_transformer_for(
    device: &burn::tensor::Device,
    weights: &crate::weights::WeightMap,
    stored: &std::collections::BTreeMap<String, crate::weights::StoredForm>,
    config: &crate::model::MarConfig,
) -> crate::Result<Option<FusedTransformer>> {
    match context(device) {
        Some(ctx) => FusedTransformer::new(ctx, weights, stored, config).map(Some),
        None => Ok(None),
    }
}

#[cfg(not(any(feature = "wgpu", target_arch = "wasm32")))]
pub fn fused_transformer_for(
    _device: &burn::tensor::Device,
    _weights: &crate::weights::WeightMap,
    _stored: &std::collections::BTreeMap<String, crate::weights::StoredForm>,
    _config: &crate::model::MarConfig,
) -> crate::Result<Option<FusedTransformer>> {
    Ok(None)
}
