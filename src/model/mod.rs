//! The model: MAR's transformer, its diffusion head, and the decoder from tokens to pixels
//! (the KL-16 VAE, or a patch un-embedding for models whose tokens are pixel patches).

pub mod config;
pub mod head;
pub mod host;
pub mod host_head;
pub mod host_transformer;
pub mod layers;
pub mod mar;
pub mod panel_matmul;
pub mod params;
pub mod patch;
pub mod threads;
pub mod vae;

pub use config::MarConfig;
pub use head::DiffusionHead;
pub use mar::{MarTransformer, MaskLayout};
pub use patch::PatchDecoder;
pub use vae::{VaeConfig, VaeDecoder};

use crate::base::WeightMap;
use crate::error::Result;
use burn::module::Module;
use burn::tensor::{Device, Tensor};
use params::{Initializer, ParamBuilder, ParamNames};
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

/// MAR's latent scale: tokens are VAE latents × 0.2325 (`engine_mar.py`).
pub const VAE_LATENT_SCALE: f32 = 0.2325;

/// How tokens become pixels.
// One decoder per model, built once: the size gap between variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum ImageDecoder {
    /// KL-16 VAE: tokens are scaled VAE latents.
    Vae(VaeDecoder),
    /// Tokens are (normalized) pixel patches.
    Patch(PatchDecoder),
}

/// Module paths of the parts [`Model::state_dict`] exports.
const TRANSFORMER: &str = "transformer";
const HEAD: &str = "head";

/// A complete generator.
#[derive(Module, Debug)]
pub struct Model {
    pub transformer: MarTransformer,
    pub head: DiffusionHead,
    pub decoder: Option<ImageDecoder>,
    /// The official names of the transformer's and head's parameters, for export.
    #[module(skip)]
    names: ParamNames,
}

/// Bytes the parameters of the transformer and head take on their device, by how each is
/// held (f32, f16, int8/int4 blocks with their scales), and how many of them are quantized.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WeightBytes {
    pub bytes: u64,
    /// What the same parameters take in f32.
    pub f32_bytes: u64,
    pub quantized_tensors: usize,
}

struct CountBytes(WeightBytes);

impl burn::module::ModuleVisitor for CountBytes {
    fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<D>>) {
        use burn::tensor::DType;
        let n = param.shape().num_elements() as u64;
        let value = param.val();
        self.0.f32_bytes += 4 * n;
        self.0.bytes += match value.dtype() {
            DType::QFloat(scheme) => {
                self.0.quantized_tensors += 1;
                // The values at their width, then one scale per block (per tensor without).
                let values = n * scheme.size_bits_value() as u64 / 8;
                let blocks = scheme
                    .block_size()
                    .map_or(1, |b| n / b.num_elements().max(1) as u64);
                use burn::tensor::quantization::ScaleDtype;
                let scale_bytes = match scheme.scale_dtype() {
                    ScaleDtype::F32 => 4,
                    ScaleDtype::F16 | ScaleDtype::BF16 => 2,
                    ScaleDtype::UE8M0 | ScaleDtype::UE4M3 => 1,
                };
                values + blocks * scale_bytes
            }
            other => n * other.size() as u64,
        };
    }
}

/// Multiply-adds per image of one generation: where the arithmetic goes, for `disa bench`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct MacsPerImage {
    /// The transformer's blocks over every AR step (the encoder over the buffer and known
    /// tokens, the decoder over every position, its last block over the revealed rows).
    pub transformer: u64,
    /// The head's network over every token and diffusion step.
    pub head: u64,
}

impl Model {
    /// [`MacsPerImage`] of a generation following `plan`; `guided` (CFG on) doubles both, as
    /// every sequence runs with its unconditional copy.
    pub fn macs_per_image(&self, plan: &crate::schedule::Plan, guided: bool) -> MacsPerImage {
        let copies = if guided { 2 } else { 1 };
        let tokens = self.transformer.diffusion_pos_embed.dims()[1];
        let mut masked = tokens;
        let mut transformer = 0;
        for step in plan.steps.iter().filter(|s| s.tokens > 0) {
            let known = tokens.saturating_sub(masked);
            transformer += self.transformer.macs(copies, known, step.tokens) as u64;
            masked = step.mask_len_after;
        }
        let head = (copies * plan.token_steps() * self.head.macs_per_row()) as u64;
        MacsPerImage { transformer, head }
    }

    /// What the transformer's and head's parameters take on their device (Burn's modules;
    /// the fused GPU head's own copy is counted by [`crate::gpu::FusedHead`]).
    pub fn weight_bytes(&self) -> WeightBytes {
        let mut count = CountBytes(WeightBytes::default());
        self.transformer.visit(&mut count);
        self.head.visit(&mut count);
        count.0
    }

    /// Builds the transformer and head from MAR weights (official key names), and the decoder
    /// if given.
    pub fn load(
        weights: &mut WeightMap,
        config: &MarConfig,
        decoder: Option<ImageDecoder>,
        device: &Device,
    ) -> Result<Self> {
        Self::build(&mut ParamBuilder::new(weights, device), config, decoder)
    }

    /// [`Model::load`], with Linear weights that `quantized` gives as quantized tensors
    /// ([`params::QuantizedWeights`]: the file formats' business) kept so.
    pub fn load_with_quantized(
        weights: &mut WeightMap,
        quantized: params::QuantizedWeights,
        config: &MarConfig,
        decoder: Option<ImageDecoder>,
        device: &Device,
    ) -> Result<Self> {
        let mut p = ParamBuilder::new(weights, device).with_quantized(quantized);
        Self::build(&mut p, config, decoder)
    }

    /// Builds the transformer and head with the parameters of `p`, and the decoder if given.
    pub fn build(
        p: &mut ParamBuilder,
        config: &MarConfig,
        decoder: Option<ImageDecoder>,
    ) -> Result<Self> {
        config.validate()?;
        let transformer = MarTransformer::build(p, config)?;
        let head = DiffusionHead::build(p, config)?;
        let mut names = ParamNames::default();
        p.name_params(TRANSFORMER, &transformer, &mut names)?;
        p.name_params(HEAD, &head, &mut names)?;
        Ok(Self {
            transformer,
            head,
            decoder,
            names,
        })
    }

    /// The transformer and head tensors under the official state-dict keys (`model_ema` /
    /// `model` layout of `checkpoint-last.pth`, Linear weights `[out, in]`), read back to the
    /// host. The decoder is not included (the VAE has its own file; the patch decoder has no
    /// tensors).
    pub fn state_dict(&self, source_name: &str) -> Result<WeightMap> {
        let mut tensors = BTreeMap::new();
        self.names
            .export(TRANSFORMER, &self.transformer, &mut tensors)?;
        self.names.export(HEAD, &self.head, &mut tensors)?;
        Ok(WeightMap {
            source_name: source_name.to_string(),
            tensors,
        })
    }

    /// Side of the decoded image in pixels (the token grid side without a decoder).
    pub fn image_size(&self, config: &MarConfig) -> usize {
        let tokens = config.grid_size() * config.patch_size;
        match &self.decoder {
            Some(ImageDecoder::Vae(vae)) => tokens * vae.upscale(),
            _ => tokens,
        }
    }

    /// Decodes tokens to images in about [−1, 1].
    ///
    /// # Shapes
    /// `tokens [B, N, C]` (N = grid², C = `vae_embed_dim · p²`) → `[B, 3 or 1, H, W]`,
    /// or `None` when the model has no decoder.
    pub fn decode_tokens(&self, tokens: Tensor<3>, config: &MarConfig) -> Option<Tensor<4>> {
        let decoder = self.decoder.as_ref()?;
        let latents = unpatchify(
            tokens,
            config.grid_size(),
            config.patch_size,
            config.vae_embed_dim,
        );
        Some(match decoder {
            ImageDecoder::Vae(vae) => vae.forward(latents.div_scalar(VAE_LATENT_SCALE)),
            ImageDecoder::Patch(p) => p.forward(latents),
        })
    }
}

impl MarConfig {
    /// Freshly initialized weights for this configuration as an official state dict,
    /// reproducible from `seed`: the initialization each module's builder names (see
    /// [`MarTransformer::build`], [`DiffusionHead::build`]), drawn without building the model.
    pub fn initial_weights(&self, seed: u64) -> WeightMap {
        let mut init = Initializer::new(seed);
        let mut p = ParamBuilder::describe(&mut init);
        // The Initializer fails only for a non-matrix Xavier or a `Pretrained` tensor, which no
        // MAR module asks for: an error here is a bug in a builder.
        let built =
            MarTransformer::build(&mut p, self).and_then(|_| DiffusionHead::build(&mut p, self));
        if let Err(e) = built {
            panic!("initializing {self:?}: {e}");
        }
        WeightMap {
            source_name: format!("fresh initialization (seed {seed})"),
            tensors: p.into_described(),
        }
    }
}

/// The top-level module names of MAR's state dict (`class_emb`, `encoder_blocks`, `diffloss`,
/// …), read from the builders' description of the smallest model, so that a weight file's
/// reader can skip other tensors unread without a name list of its own.
pub fn state_dict_modules() -> &'static BTreeSet<String> {
    static MODULES: OnceLock<BTreeSet<String>> = OnceLock::new();
    MODULES.get_or_init(|| {
        let smallest = MarConfig {
            img_size: 1,
            vae_stride: 1,
            patch_size: 1,
            encoder_embed_dim: 1,
            encoder_depth: 1,
            encoder_num_heads: 1,
            decoder_embed_dim: 1,
            decoder_depth: 1,
            decoder_num_heads: 1,
            mlp_ratio: 1.0,
            vae_embed_dim: 1,
            class_num: 1,
            buffer_size: 1,
            diffloss_d: 1,
            diffloss_w: 1,
        };
        smallest
            .initial_weights(0)
            .tensors
            .keys()
            .filter_map(|k| k.split('.').next())
            .map(str::to_string)
            .collect()
    })
}

/// MAR's `unpatchify`: `[B, g·g, c·p·p]` → `[B, c, g·p, g·p]`, channel order `(c, pi, pj)`.
pub fn unpatchify(x: Tensor<3>, grid: usize, p: usize, c: usize) -> Tensor<4> {
    let [b, _, _] = x.dims();
    x.reshape([b, grid, grid, c, p, p])
        .permute([0, 3, 1, 4, 2, 5])
        .reshape([b, c, grid * p, grid * p])
}

/// MAR's `patchify`: the inverse of [`unpatchify`].
pub fn patchify(x: Tensor<4>, p: usize) -> Tensor<3> {
    let [b, c, h, w] = x.dims();
    let (gh, gw) = (h / p, w / p);
    x.reshape([b, c, gh, p, gw, p])
        .permute([0, 2, 4, 1, 3, 5])
        .reshape([b, gh * gw, c * p * p])
}
