//! The KL-16 VAE decoder of `models/vae.py` (LDM-derived, no attention in the up levels):
//! `post_quant_conv` → `conv_in` → mid (res, attn, res) → up levels (res blocks, nearest ×2 +
//! conv) → GroupNorm → swish → `conv_out`. Its sizes are read from the weights.

use super::params::{Init, ParamBuilder};
use crate::base::WeightMap;
use crate::error::{DisaError, Result};
use burn::module::{Module, Param};
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::module::conv2d;
use burn::tensor::ops::ConvOptions;
use burn::tensor::{Device, Tensor};

/// The VAE's tensors are only ever loaded (it is trained elsewhere).
const PRE: Init = Init::Pretrained;

/// GroupNorm groups and epsilon of the LDM VAE.
const GROUPS: usize = 32;
const GN_EPS: f64 = 1e-6;

/// The VAE decoder's sizes, inferred from its weights.
#[derive(Clone, Debug, PartialEq)]
pub struct VaeConfig {
    /// Latent channels (16 for KL-16).
    pub embed_dim: usize,
    /// Output channels of each up level `i` (`ch · ch_mult[i]`), level 0 first.
    pub level_channels: Vec<usize>,
    /// Res blocks per up level (`num_res_blocks + 1`).
    pub blocks_per_level: usize,
}

impl VaeConfig {
    /// Reads the decoder's sizes from `decoder.*` keys.
    pub fn infer(w: &WeightMap) -> Result<Self> {
        let missing = |key: &str| DisaError::MissingTensor {
            source_name: w.source_name.clone(),
            key: key.to_string(),
            hint: " (needed to infer the VAE decoder's sizes)".into(),
        };
        let pq = w
            .shape("post_quant_conv.weight")
            .ok_or_else(|| missing("post_quant_conv.weight"))?;
        let levels = w.count_indexed("decoder.up");
        if levels == 0 {
            return Err(missing("decoder.up.0.block.0.conv1.weight"));
        }
        let level_channels = (0..levels)
            .map(|i| {
                let key = format!("decoder.up.{i}.block.0.conv2.weight");
                w.shape(&key).map(|s| s[0]).ok_or_else(|| missing(&key))
            })
            .collect::<Result<Vec<_>>>()?;
        let blocks_per_level = w.count_indexed("decoder.up.0.block");
        Ok(Self {
            embed_dim: pq[0],
            level_channels,
            blocks_per_level,
        })
    }

    /// Pixels per latent cell per side (2^(levels−1)).
    pub fn upscale(&self) -> usize {
        1 << (self.level_channels.len() - 1)
    }
}

/// A 2-D convolution with PyTorch's weight layout `[out, in, k, k]` and "same" padding.
#[derive(Module, Debug)]
pub struct Conv {
    pub weight: Param<Tensor<4>>,
    pub bias: Param<Tensor<1>>,
    pub padding: usize,
}

impl Conv {
    fn build(
        p: &mut ParamBuilder,
        prefix: &str,
        c_in: usize,
        c_out: usize,
        k: usize,
    ) -> Result<Self> {
        Ok(Self {
            weight: p.tensor(&format!("{prefix}.weight"), [c_out, c_in, k, k], PRE)?,
            bias: p.tensor(&format!("{prefix}.bias"), [c_out], PRE)?,
            padding: k / 2,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let p = self.padding;
        conv2d(
            x,
            self.weight.val(),
            Some(self.bias.val()),
            ConvOptions::new([1, 1], [p, p], [1, 1], 1),
        )
    }
}

/// GroupNorm(32, eps 1e-6) with affine parameters.
#[derive(Module, Debug)]
pub struct GroupNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Param<Tensor<1>>,
}

impl GroupNorm {
    fn build(p: &mut ParamBuilder, prefix: &str, c: usize) -> Result<Self> {
        if !c.is_multiple_of(GROUPS) {
            return Err(DisaError::Config(format!(
                "{prefix}: {c} channels are not divisible into {GROUPS} groups"
            )));
        }
        Ok(Self {
            weight: p.tensor(&format!("{prefix}.weight"), [c], PRE)?,
            bias: p.tensor(&format!("{prefix}.bias"), [c], PRE)?,
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, wd] = x.dims();
        let g = x.reshape([b, GROUPS, (c / GROUPS) * h * wd]);
        let mean = g.clone().mean_dim(2);
        let centered = g - mean;
        let var = centered.clone().square().mean_dim(2);
        let normed = (centered / (var + GN_EPS).sqrt()).reshape([b, c, h, wd]);
        normed * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

fn swish(x: Tensor<4>) -> Tensor<4> {
    x.clone() * sigmoid(x)
}

/// `ResnetBlock` without timestep embedding.
#[derive(Module, Debug)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv,
    pub norm2: GroupNorm,
    pub conv2: Conv,
    pub nin_shortcut: Option<Conv>,
}

impl ResnetBlock {
    fn build(p: &mut ParamBuilder, prefix: &str, c_in: usize, c_out: usize) -> Result<Self> {
        Ok(Self {
            norm1: GroupNorm::build(p, &format!("{prefix}.norm1"), c_in)?,
            conv1: Conv::build(p, &format!("{prefix}.conv1"), c_in, c_out, 3)?,
            norm2: GroupNorm::build(p, &format!("{prefix}.norm2"), c_out)?,
            conv2: Conv::build(p, &format!("{prefix}.conv2"), c_out, c_out, 3)?,
            nin_shortcut: if c_in != c_out {
                Some(Conv::build(
                    p,
                    &format!("{prefix}.nin_shortcut"),
                    c_in,
                    c_out,
                    1,
                )?)
            } else {
                None
            },
        })
    }

    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let h = self.conv1.forward(swish(self.norm1.forward(x.clone())));
        let h = self.conv2.forward(swish(self.norm2.forward(h)));
        let skip = match &self.nin_shortcut {
            Some(conv) => conv.forward(x),
            None => x,
        };
        skip + h
    }
}

/// Single-head spatial self-attention of the mid block.
#[derive(Module, Debug)]
pub struct AttnBlock {
    pub norm: GroupNorm,
    pub q: Conv,
    pub k: Conv,
    pub v: Conv,
    pub proj_out: Conv,
}

impl AttnBlock {
    fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let [b, c, h, w] = x.dims();
        let n = self.norm.forward(x.clone());
        let q = self
            .q
            .forward(n.clone())
            .reshape([b, c, h * w])
            .swap_dims(1, 2); // [b, hw, c]
        let k = self.k.forward(n.clone()).reshape([b, c, h * w]); // [b, c, hw]
        let v = self.v.forward(n).reshape([b, c, h * w]); // [b, c, hw]
        let attn = softmax(q.matmul(k).mul_scalar((c as f64).powf(-0.5)), 2); // [b, hw_q, hw_k]
        let out = v.matmul(attn.swap_dims(1, 2)).reshape([b, c, h, w]);
        x + self.proj_out.forward(out)
    }
}

/// One up level: res blocks, then (except level 0) nearest ×2 and a conv.
#[derive(Module, Debug)]
pub struct UpLevel {
    pub blocks: Vec<ResnetBlock>,
    pub upsample: Option<Conv>,
}

/// `post_quant_conv` + `Decoder`.
#[derive(Module, Debug)]
pub struct VaeDecoder {
    pub post_quant_conv: Conv,
    pub conv_in: Conv,
    pub mid_block_1: ResnetBlock,
    pub mid_attn: AttnBlock,
    pub mid_block_2: ResnetBlock,
    /// Processed last to first (`up.{L-1}` … `up.0`); stored in that processing order.
    pub up: Vec<UpLevel>,
    pub norm_out: GroupNorm,
    pub conv_out: Conv,
}

impl VaeDecoder {
    /// Loads the decoder from a VAE state dict (`vae.ckpt['model']` or its safetensors).
    pub fn load(w: &mut WeightMap, device: &Device) -> Result<Self> {
        let c = VaeConfig::infer(w)?;
        Self::build(&mut ParamBuilder::new(w, device), &c)
    }

    /// Builds the decoder of sizes `c` (its tensors are only ever loaded).
    pub fn build(p: &mut ParamBuilder, c: &VaeConfig) -> Result<Self> {
        let levels = c.level_channels.len();
        let mut block_in = c.level_channels[levels - 1];
        let z = c.embed_dim;
        let conv_in = Conv::build(p, "decoder.conv_in", z, block_in, 3)?;
        let mid_block_1 = ResnetBlock::build(p, "decoder.mid.block_1", block_in, block_in)?;
        let attn = |p: &mut ParamBuilder, name: &str| {
            Conv::build(
                p,
                &format!("decoder.mid.attn_1.{name}"),
                block_in,
                block_in,
                1,
            )
        };
        let mid_attn = AttnBlock {
            norm: GroupNorm::build(p, "decoder.mid.attn_1.norm", block_in)?,
            q: attn(p, "q")?,
            k: attn(p, "k")?,
            v: attn(p, "v")?,
            proj_out: attn(p, "proj_out")?,
        };
        let mid_block_2 = ResnetBlock::build(p, "decoder.mid.block_2", block_in, block_in)?;
        let mut up = Vec::with_capacity(levels);
        for i in (0..levels).rev() {
            let block_out = c.level_channels[i];
            let mut blocks = Vec::with_capacity(c.blocks_per_level);
            for j in 0..c.blocks_per_level {
                let prefix = format!("decoder.up.{i}.block.{j}");
                blocks.push(ResnetBlock::build(p, &prefix, block_in, block_out)?);
                block_in = block_out;
            }
            let upsample = if i != 0 {
                let prefix = format!("decoder.up.{i}.upsample.conv");
                Some(Conv::build(p, &prefix, block_in, block_in, 3)?)
            } else {
                None
            };
            up.push(UpLevel { blocks, upsample });
        }
        Ok(Self {
            post_quant_conv: Conv::build(p, "post_quant_conv", z, z, 1)?,
            conv_in,
            mid_block_1,
            mid_attn,
            mid_block_2,
            up,
            norm_out: GroupNorm::build(p, "decoder.norm_out", block_in)?,
            conv_out: Conv::build(p, "decoder.conv_out", block_in, 3, 3)?,
        })
    }

    /// Pixels per latent cell per side (2 per upsampling level).
    pub fn upscale(&self) -> usize {
        1 << self.up.iter().filter(|l| l.upsample.is_some()).count()
    }

    /// Decodes VAE latents (already divided by the 0.2325 scale) to images in about [−1, 1].
    ///
    /// # Shapes
    /// `z [B, 16, h, w]` → `[B, 3, h·2^(L−1), w·2^(L−1)]`.
    pub fn forward(&self, z: Tensor<4>) -> Tensor<4> {
        let mut h = self.conv_in.forward(self.post_quant_conv.forward(z));
        h = self
            .mid_block_2
            .forward(self.mid_attn.forward(self.mid_block_1.forward(h)));
        for level in &self.up {
            for block in &level.blocks {
                h = block.forward(h);
            }
            if let Some(conv) = &level.upsample {
                h = conv.forward(upsample_nearest2(h));
            }
        }
        self.conv_out.forward(swish(self.norm_out.forward(h)))
    }
}

/// Nearest-neighbour ×2 upsampling by broadcasting (exact on every backend).
fn upsample_nearest2(x: Tensor<4>) -> Tensor<4> {
    let [b, c, h, w] = x.dims();
    x.reshape([b, c, h, 1, w, 1])
        .expand([b, c, h, 2, w, 2])
        .reshape([b, c, 2 * h, 2 * w])
}
