//! Model configurations: the official constructor arguments of `models/mar.py`, presets for the
//! published MAR-B/L/H, and the shape checks that tie a configuration to a weight file.

use crate::base::WeightMap;
use crate::error::{DisaError, Result};
use serde::{Deserialize, Serialize};

/// MAR's constructor arguments, named as in the official code so a `mar_ctor_kwargs` JSON
/// (e.g. a reference manifest) deserializes directly. Missing fields take MAR-B's values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct MarConfig {
    pub img_size: usize,
    pub vae_stride: usize,
    pub patch_size: usize,
    pub encoder_embed_dim: usize,
    pub encoder_depth: usize,
    pub encoder_num_heads: usize,
    pub decoder_embed_dim: usize,
    pub decoder_depth: usize,
    pub decoder_num_heads: usize,
    pub mlp_ratio: f64,
    pub vae_embed_dim: usize,
    pub class_num: usize,
    pub buffer_size: usize,
    pub diffloss_d: usize,
    pub diffloss_w: usize,
}

impl Default for MarConfig {
    fn default() -> Self {
        Self::mar_base()
    }
}

impl MarConfig {
    /// MAR-B (208M parameters with its 6×1024 head); `mar_base` in `models/mar.py`.
    pub fn mar_base() -> Self {
        Self {
            img_size: 256,
            vae_stride: 16,
            patch_size: 1,
            encoder_embed_dim: 768,
            encoder_depth: 12,
            encoder_num_heads: 12,
            decoder_embed_dim: 768,
            decoder_depth: 12,
            decoder_num_heads: 12,
            mlp_ratio: 4.0,
            vae_embed_dim: 16,
            class_num: 1000,
            buffer_size: 64,
            diffloss_d: 6,
            diffloss_w: 1024,
        }
    }

    /// MAR-L (479M parameters, 8×1280 head).
    pub fn mar_large() -> Self {
        Self {
            encoder_embed_dim: 1024,
            encoder_depth: 16,
            encoder_num_heads: 16,
            decoder_embed_dim: 1024,
            decoder_depth: 16,
            decoder_num_heads: 16,
            diffloss_d: 8,
            diffloss_w: 1280,
            ..Self::mar_base()
        }
    }

    /// MAR-H (943M parameters, 12×1536 head).
    pub fn mar_huge() -> Self {
        Self {
            encoder_embed_dim: 1280,
            encoder_depth: 20,
            encoder_num_heads: 16,
            decoder_embed_dim: 1280,
            decoder_depth: 20,
            decoder_num_heads: 16,
            diffloss_d: 12,
            diffloss_w: 1536,
            ..Self::mar_base()
        }
    }

    /// The project's small Fashion-MNIST model: 32×32 grayscale images as an 8×8 grid of 4×4
    /// pixel patches (16 values per token, like MAR's KL-16 latents), 10 classes, a narrow
    /// transformer and head sized to train on a CPU.
    pub fn fashion() -> Self {
        Self {
            img_size: 32,
            vae_stride: 1,
            patch_size: 4,
            encoder_embed_dim: 128,
            encoder_depth: 2,
            encoder_num_heads: 4,
            decoder_embed_dim: 128,
            decoder_depth: 2,
            decoder_num_heads: 4,
            mlp_ratio: 4.0,
            vae_embed_dim: 1,
            class_num: 10,
            buffer_size: 8,
            diffloss_d: 3,
            diffloss_w: 128,
        }
    }

    /// A preset by name (`mar_base`, `mar_large`, `mar_huge`, or `b`/`l`/`h`; `fashion`).
    pub fn preset(name: &str) -> Option<Self> {
        match name.to_ascii_lowercase().as_str() {
            "mar_base" | "mar-b" | "b" | "base" => Some(Self::mar_base()),
            "mar_large" | "mar-l" | "l" | "large" => Some(Self::mar_large()),
            "mar_huge" | "mar-h" | "h" | "huge" => Some(Self::mar_huge()),
            "fashion" => Some(Self::fashion()),
            _ => None,
        }
    }

    /// Token grid side (`seq_h = seq_w`).
    pub fn grid_size(&self) -> usize {
        self.img_size / self.vae_stride / self.patch_size
    }

    /// Tokens per image (`seq_len`).
    pub fn seq_len(&self) -> usize {
        self.grid_size() * self.grid_size()
    }

    /// Channels per token (`vae_embed_dim · patch_size²`).
    pub fn token_dim(&self) -> usize {
        self.vae_embed_dim * self.patch_size * self.patch_size
    }

    /// Hidden width of the transformer MLPs for a block width.
    pub fn mlp_hidden(&self, dim: usize) -> usize {
        (dim as f64 * self.mlp_ratio) as usize
    }

    /// Checks internal consistency (divisibility, non-zero sizes).
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(DisaError::Config(m));
        if self.vae_stride == 0
            || self.patch_size == 0
            || !self
                .img_size
                .is_multiple_of(self.vae_stride * self.patch_size)
        {
            return bad(format!(
                "img_size {} is not a multiple of vae_stride {} × patch_size {}",
                self.img_size, self.vae_stride, self.patch_size
            ));
        }
        if self.grid_size() == 0 {
            return bad("the token grid is empty".into());
        }
        for (name, dim, heads) in [
            ("encoder", self.encoder_embed_dim, self.encoder_num_heads),
            ("decoder", self.decoder_embed_dim, self.decoder_num_heads),
        ] {
            if heads == 0 || dim % heads != 0 {
                return bad(format!(
                    "{name} width {dim} is not divisible by its {heads} heads"
                ));
            }
        }
        if self.class_num == 0 || self.diffloss_w == 0 || self.diffloss_d == 0 {
            return bad("class_num, diffloss_d and diffloss_w must be positive".into());
        }
        Ok(())
    }

    /// Derives a configuration from a weight file's shapes. Head counts cannot be read from
    /// weights: they come from `heads` if given, else from a published preset of the same width
    /// (head width 64 for MAR-B/L, 80 for MAR-H), else this is an error that says what to pass.
    pub fn infer(weights: &WeightMap, heads: Option<(usize, usize)>) -> Result<Self> {
        // Anchor keys, read by name rather than by the builders' walk: the walk needs a
        // configuration (depths, widths) to know what to ask for, and this derives one.
        let shape = |key: &str| -> Result<Vec<usize>> {
            weights
                .shape(key)
                .map(|s| s.to_vec())
                .ok_or_else(|| DisaError::MissingTensor {
                    source_name: weights.source_name.clone(),
                    key: key.to_string(),
                    hint: " (needed to infer the model configuration)".to_string(),
                })
        };
        let z_proj = shape("z_proj.weight")?;
        let enc_pos = shape("encoder_pos_embed_learned")?;
        let diff_pos = shape("diffusion_pos_embed_learned")?;
        let dec_embed = shape("decoder_embed.weight")?;
        let class_emb = shape("class_emb.weight")?;
        let head_in = shape("diffloss.net.input_proj.weight")?;
        let fc1 = shape("encoder_blocks.0.mlp.fc1.weight")?;
        if z_proj.len() != 2 || enc_pos.len() != 3 || diff_pos.len() != 3 || dec_embed.len() != 2 {
            return Err(DisaError::Config(
                "unexpected tensor ranks in the MAR weights".into(),
            ));
        }
        let enc = z_proj[0];
        let dec = dec_embed[0];
        let seq_len = diff_pos[1];
        let grid = (seq_len as f64).sqrt().round() as usize;
        if grid * grid != seq_len {
            return Err(DisaError::Config(format!(
                "{seq_len} tokens do not form a square grid"
            )));
        }
        let preset_heads = |dim: usize| match dim {
            768 => Some(12),
            1024 | 1280 => Some(16),
            _ => None,
        };
        let (enc_heads, dec_heads) = match heads {
            Some(h) => h,
            None => match (preset_heads(enc), preset_heads(dec)) {
                (Some(a), Some(b)) => (a, b),
                _ => {
                    return Err(DisaError::Config(format!(
                        "the attention head counts of a {enc}/{dec}-wide model cannot be read from \
                         its weights; give a config (JSON of MAR's constructor arguments) or heads"
                    )));
                }
            },
        };
        let token_dim = z_proj[1];
        let config = Self {
            img_size: grid * 16,
            vae_stride: 16,
            patch_size: 1,
            encoder_embed_dim: enc,
            encoder_depth: weights.count_indexed("encoder_blocks"),
            encoder_num_heads: enc_heads,
            decoder_embed_dim: dec,
            decoder_depth: weights.count_indexed("decoder_blocks"),
            decoder_num_heads: dec_heads,
            mlp_ratio: fc1[0] as f64 / enc as f64,
            vae_embed_dim: token_dim,
            class_num: class_emb[0],
            buffer_size: enc_pos[1].saturating_sub(seq_len),
            diffloss_d: weights.count_indexed("diffloss.net.res_blocks"),
            diffloss_w: head_in[0],
        };
        config.validate()?;
        Ok(config)
    }

    /// Parameter count of this configuration (backbone + head), for presets and reports.
    pub fn num_params(&self) -> usize {
        let (e, d, w, c) = (
            self.encoder_embed_dim,
            self.decoder_embed_dim,
            self.diffloss_w,
            self.token_dim(),
        );
        let (n, b) = (self.seq_len(), self.buffer_size);
        let block = |dim: usize| {
            let h = self.mlp_hidden(dim);
            4 * dim
                + (3 * dim * dim + 3 * dim)
                + (dim * dim + dim)
                + (dim * h + h)
                + (h * dim + dim)
        };
        let backbone = self.class_num * e
            + e
            + (c * e + e)
            + 2 * e
            + (n + b) * e
            + self.encoder_depth * block(e)
            + 2 * e
            + (e * d + d)
            + d
            + (n + b) * d
            + self.decoder_depth * block(d)
            + 2 * d
            + n * d;
        let head = (256 * w + w)
            + (w * w + w)
            + (d * w + w)
            + (c * w + w)
            + self.diffloss_d * (2 * w + 2 * (w * w + w) + (w * 3 * w + 3 * w))
            + (w * 2 * c + 2 * c)
            + (w * 2 * w + 2 * w);
        backbone + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_match_published_parameter_counts() {
        // The parameter counts of the official MAR-B/L/H (mar/models/mar.py, mar_base /
        // mar_large / mar_huge), counted from their state dicts: 207.9M / 478.3M / 942.4M.
        let m = |c: MarConfig| c.num_params() as f64 / 1e6;
        assert!(
            (m(MarConfig::mar_base()) - 207.9).abs() < 0.1,
            "{}",
            m(MarConfig::mar_base())
        );
        assert!(
            (m(MarConfig::mar_large()) - 478.3).abs() < 0.1,
            "{}",
            m(MarConfig::mar_large())
        );
        assert!(
            (m(MarConfig::mar_huge()) - 942.4).abs() < 0.1,
            "{}",
            m(MarConfig::mar_huge())
        );
    }
}
