//! The MAR transformer: a sparse MAE-style encoder over the known tokens plus `buffer_size`
//! class-embedding rows, and a decoder over every position (mask tokens where unknown) whose
//! outputs, plus a diffusion position embedding, condition the diffusion head.

use super::config::MarConfig;
use super::layers::{Block, LayerNorm, linear, param};
use crate::error::Result;
use crate::weights::WeightMap;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::{Device, Int, Tensor, TensorData};

/// Encoder + decoder of `models/mar.py::MAR` (inference path).
#[derive(Module, Debug)]
pub struct MarTransformer {
    /// `class_emb.weight`: `[class_num, enc]`.
    pub class_emb: Param<Tensor<2>>,
    /// `fake_latent`: `[1, enc]`, the unconditional (CFG null) class.
    pub fake_latent: Param<Tensor<2>>,
    pub z_proj: Linear,
    pub z_proj_ln: LayerNorm,
    /// `[1, buffer + seq_len, enc]`.
    pub encoder_pos_embed: Param<Tensor<3>>,
    pub encoder_blocks: Vec<Block>,
    pub encoder_norm: LayerNorm,
    pub decoder_embed: Linear,
    /// `[1, 1, dec]`.
    pub mask_token: Param<Tensor<3>>,
    /// `[1, buffer + seq_len, dec]`.
    pub decoder_pos_embed: Param<Tensor<3>>,
    pub decoder_blocks: Vec<Block>,
    pub decoder_norm: LayerNorm,
    /// `[1, seq_len, dec]`.
    pub diffusion_pos_embed: Param<Tensor<3>>,
    pub buffer_size: usize,
}

/// Which rows of the encoder input survive (per image, ascending positions incl. the buffer),
/// and for every decoder position the row of the kept set it reads (or the mask token).
#[derive(Clone, Debug)]
pub struct MaskLayout {
    /// `[B, buffer + n_known]` indices into the `buffer + seq_len` positions.
    pub kept: Vec<Vec<usize>>,
    /// `[B, buffer + seq_len]`: index into kept rows, or `n_kept` for "mask token".
    pub scatter: Vec<Vec<usize>>,
}

impl MaskLayout {
    /// Builds the layout from a per-image mask (`true` = unknown). Every image must have the
    /// same number of known tokens (always true while sampling).
    pub fn new(mask: &[Vec<bool>], buffer: usize) -> Self {
        let mut kept = Vec::with_capacity(mask.len());
        let mut scatter = Vec::with_capacity(mask.len());
        for row in mask {
            let mut k: Vec<usize> = (0..buffer).collect();
            k.extend(
                row.iter()
                    .enumerate()
                    .filter(|(_, m)| !**m)
                    .map(|(i, _)| i + buffer),
            );
            let n_kept = k.len();
            let mut s = vec![n_kept; buffer + row.len()];
            for (j, &pos) in k.iter().enumerate() {
                s[pos] = j;
            }
            kept.push(k);
            scatter.push(s);
        }
        Self { kept, scatter }
    }
}

fn index_tensor(rows: &[Vec<usize>], device: &Device) -> Tensor<2, Int> {
    let b = rows.len();
    let l = rows.first().map_or(0, |r| r.len());
    let flat: Vec<i64> = rows
        .iter()
        .flat_map(|r| r.iter().map(|&i| i as i64))
        .collect();
    Tensor::from_data(TensorData::new(flat, [b, l]), device)
}

/// Gathers rows `idx [B, L]` of `x [B, N, D]` → `[B, L, D]`.
fn gather_rows(x: Tensor<3>, idx: Tensor<2, Int>) -> Tensor<3> {
    let [b, _, d] = x.dims();
    let [_, l] = idx.dims();
    let idx = idx.reshape([b, l, 1]).expand([b, l, d]);
    x.gather(1, idx)
}

impl MarTransformer {
    /// Loads every backbone tensor of the official checkpoint layout.
    pub fn load(w: &mut WeightMap, c: &MarConfig, device: &Device) -> Result<Self> {
        let (e, d, n, b, t) = (
            c.encoder_embed_dim,
            c.decoder_embed_dim,
            c.seq_len(),
            c.buffer_size,
            c.token_dim(),
        );
        // `prefix.{0..depth}` blocks of width `dim`.
        let blocks = |w: &mut WeightMap, prefix: &str, depth: usize, dim: usize, heads: usize| {
            (0..depth)
                .map(|i| {
                    let hidden = c.mlp_hidden(dim);
                    Block::load(w, &format!("{prefix}.{i}"), dim, heads, hidden, device)
                })
                .collect::<Result<Vec<Block>>>()
        };
        Ok(Self {
            class_emb: param(w, "class_emb.weight", [c.class_num, e], device)?,
            fake_latent: param(w, "fake_latent", [1, e], device)?,
            z_proj: linear(w, "z_proj", t, e, device)?,
            z_proj_ln: LayerNorm::load(w, "z_proj_ln", e, device)?,
            encoder_pos_embed: param(w, "encoder_pos_embed_learned", [1, b + n, e], device)?,
            encoder_blocks: blocks(w, "encoder_blocks", c.encoder_depth, e, c.encoder_num_heads)?,
            encoder_norm: LayerNorm::load(w, "encoder_norm", e, device)?,
            decoder_embed: linear(w, "decoder_embed", e, d, device)?,
            mask_token: param(w, "mask_token", [1, 1, d], device)?,
            decoder_pos_embed: param(w, "decoder_pos_embed_learned", [1, b + n, d], device)?,
            decoder_blocks: blocks(w, "decoder_blocks", c.decoder_depth, d, c.decoder_num_heads)?,
            decoder_norm: LayerNorm::load(w, "decoder_norm", d, device)?,
            diffusion_pos_embed: param(w, "diffusion_pos_embed_learned", [1, n, d], device)?,
            buffer_size: b,
        })
    }

    /// Class embeddings: `class_emb[label]` per label, `fake_latent` for `None`.
    ///
    /// # Shapes
    /// → `[B, enc]`.
    pub fn class_embedding(&self, labels: &[Option<usize>], device: &Device) -> Tensor<2> {
        let rows: Vec<Tensor<2>> = labels
            .iter()
            .map(|l| match l {
                Some(c) => {
                    let idx =
                        Tensor::<1, Int>::from_data(TensorData::new(vec![*c as i64], [1]), device);
                    self.class_emb.val().select(0, idx)
                }
                None => self.fake_latent.val(),
            })
            .collect();
        Tensor::cat(rows, 0)
    }

    /// `forward_mae_encoder` in eval mode.
    ///
    /// # Shapes
    /// `tokens [B, N, C]`, `class_embedding [B, enc]` → `[B, buffer + n_known, enc]`.
    pub fn encode(
        &self,
        tokens: Tensor<3>,
        layout: &MaskLayout,
        class_embedding: Tensor<2>,
    ) -> Tensor<3> {
        let device = tokens.device();
        let x = self.z_proj.forward(tokens);
        let [b, _, e] = x.dims();
        let buffer = class_embedding
            .unsqueeze_dim::<3>(1)
            .expand([b, self.buffer_size, e]);
        let x = Tensor::cat(vec![buffer, x], 1) + self.encoder_pos_embed.val();
        let x = self.z_proj_ln.forward(x);
        let mut x = gather_rows(x, index_tensor(&layout.kept, &device));
        for block in &self.encoder_blocks {
            x = block.forward(x);
        }
        self.encoder_norm.forward(x)
    }

    /// `forward_mae_decoder`: the condition vectors `z` for every position.
    ///
    /// # Shapes
    /// `x [B, buffer + n_known, enc]` → `[B, N, dec]`.
    pub fn decode(&self, x: Tensor<3>, layout: &MaskLayout) -> Tensor<3> {
        let device = x.device();
        let x = self.decoder_embed.forward(x);
        let [b, _, d] = x.dims();
        // Append one mask-token row; masked positions gather it.
        let x = Tensor::cat(vec![x, self.mask_token.val().expand([b, 1, d])], 1);
        let x = gather_rows(x, index_tensor(&layout.scatter, &device));
        let mut x = x + self.decoder_pos_embed.val();
        for block in &self.decoder_blocks {
            x = block.forward(x);
        }
        let x = self.decoder_norm.forward(x);
        let [_, l, _] = x.dims();
        x.slice([0..b, self.buffer_size..l, 0..d]) + self.diffusion_pos_embed.val()
    }
}
