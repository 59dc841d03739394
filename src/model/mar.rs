//! The MAR transformer: a sparse MAE-style encoder over the known tokens plus `buffer_size`
//! class-embedding rows, and a decoder over every position (mask tokens where unknown) whose
//! outputs, plus a diffusion position embedding, condition the diffusion head.

use super::config::MarConfig;
use super::host_transformer::HostTransformer;
use super::layers::{Block, LayerNorm};
use super::params::{Init, ParamBuilder};
use super::threads::with_threads_for;
use crate::error::Result;
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

/// A 1-D index tensor.
fn index_1d(idx: Vec<i64>, device: &Device) -> Tensor<1, Int> {
    let n = idx.len();
    Tensor::from_data(TensorData::new(idx, [n]), device)
}

impl MarTransformer {
    /// Builds every backbone tensor of the official checkpoint layout (`MAR.initialize_weights`:
    /// embeddings, mask token and position embeddings ~ N(0, 0.02²), linears Xavier, LayerNorms
    /// (1, 0)).
    pub fn build(p: &mut ParamBuilder, c: &MarConfig) -> Result<Self> {
        let (e, d, n, b, t) = (
            c.encoder_embed_dim,
            c.decoder_embed_dim,
            c.seq_len(),
            c.buffer_size,
            c.token_dim(),
        );
        let normal = Init::Normal(0.02);
        // `prefix.{0..depth}` blocks of width `dim`.
        let blocks =
            |p: &mut ParamBuilder, prefix: &str, depth: usize, dim: usize, heads: usize| {
                (0..depth)
                    .map(|i| {
                        Block::build(p, &format!("{prefix}.{i}"), dim, heads, c.mlp_hidden(dim))
                    })
                    .collect::<Result<Vec<Block>>>()
            };
        Ok(Self {
            class_emb: p.tensor("class_emb.weight", [c.class_num, e], normal)?,
            fake_latent: p.tensor("fake_latent", [1, e], normal)?,
            z_proj: p.linear("z_proj", t, e, Init::Xavier)?,
            z_proj_ln: LayerNorm::build(p, "z_proj_ln", e)?,
            encoder_pos_embed: p.tensor("encoder_pos_embed_learned", [1, b + n, e], normal)?,
            encoder_blocks: blocks(p, "encoder_blocks", c.encoder_depth, e, c.encoder_num_heads)?,
            encoder_norm: LayerNorm::build(p, "encoder_norm", e)?,
            decoder_embed: p.linear("decoder_embed", e, d, Init::Xavier)?,
            mask_token: p.tensor("mask_token", [1, 1, d], normal)?,
            decoder_pos_embed: p.tensor("decoder_pos_embed_learned", [1, b + n, d], normal)?,
            decoder_blocks: blocks(p, "decoder_blocks", c.decoder_depth, d, c.decoder_num_heads)?,
            decoder_norm: LayerNorm::build(p, "decoder_norm", d)?,
            diffusion_pos_embed: p.tensor("diffusion_pos_embed_learned", [1, n, d], normal)?,
            buffer_size: b,
        })
    }

    /// Class embeddings: `class_emb[label]` per label, `fake_latent` for `None`.
    ///
    /// # Shapes
    /// → `[B, enc]`.
    pub fn class_embedding(&self, labels: &[Option<usize>], device: &Device) -> Tensor<2> {
        // One select from [class_emb; fake_latent]: the null class is the last row.
        let [classes, _] = self.class_emb.dims();
        let rows = labels
            .iter()
            .map(|l| l.map_or(classes, |c| c) as i64)
            .collect();
        Tensor::cat(vec![self.class_emb.val(), self.fake_latent.val()], 0)
            .select(0, index_1d(rows, device))
    }

    /// Multiply-adds of the encoder and decoder blocks for `sequences` sequences with `known`
    /// tokens each, of which the decoder's last block keeps `selected` rows per sequence
    /// ([`MarTransformer::decode_at`]; for the CPU's thread policy).
    pub fn macs(&self, sequences: usize, known: usize, selected: usize) -> usize {
        let (buffer, n) = (self.buffer_size, self.diffusion_pos_embed.dims()[1]);
        let enc: usize = self
            .encoder_blocks
            .iter()
            .map(|k| k.macs(sequences * (buffer + known), sequences))
            .sum();
        let rows = sequences * (buffer + n);
        let last = self.decoder_blocks.len().saturating_sub(1);
        let dec: usize = self
            .decoder_blocks
            .iter()
            .enumerate()
            .map(|(i, k)| match i == last {
                true => k.macs_at(rows, sequences, sequences * selected),
                false => k.macs(rows, sequences),
            })
            .sum();
        enc + dec
    }

    /// `forward_mae_encoder` in eval mode. Everything before the blocks acts row by row, so
    /// only the rows the encoder keeps (the buffer and the known tokens) are projected and
    /// normalized: the same values as the official code's project-all-then-drop. The blocks run
    /// on `[B·L, enc]` rows.
    ///
    /// # Shapes
    /// `tokens [B, N, C]`, `class_embedding [B, enc]` → `[B, buffer + n_known, enc]`.
    pub fn encode(
        &self,
        tokens: Tensor<3>,
        layout: &MaskLayout,
        class_embedding: Tensor<2>,
    ) -> Tensor<3> {
        self.encode_with(tokens, layout, class_embedding, None)
    }

    /// [`MarTransformer::encode`] with the blocks on `host` where given (the plain CPU
    /// backend's host path for these blocks, [`HostTransformer`], reading their weights).
    pub fn encode_with(
        &self,
        tokens: Tensor<3>,
        layout: &MaskLayout,
        class_embedding: Tensor<2>,
        host: Option<&HostTransformer>,
    ) -> Tensor<3> {
        let device = tokens.device();
        let [b, n, c] = tokens.dims();
        let [_, e] = class_embedding.dims();
        let buffer = self.buffer_size;
        let l = layout.kept.first().map_or(buffer, |k| k.len());
        let n_known = l - buffer;
        // Rows of `table`: the B class embeddings, then the projected known tokens, image-major.
        let table = if n_known == 0 {
            class_embedding
        } else {
            let known = layout
                .kept
                .iter()
                .enumerate()
                .flat_map(|(i, k)| {
                    k[buffer..]
                        .iter()
                        .map(move |&p| (i * n + p - buffer) as i64)
                })
                .collect();
            let rows = tokens
                .reshape([b * n, c])
                .select(0, index_1d(known, &device));
            Tensor::cat(vec![class_embedding, self.z_proj.forward(rows)], 0)
        };
        // Encoder row (image i, slot j) reads table row i for the buffer, else its token row.
        let source = (0..b)
            .flat_map(|i| {
                (0..l).map(move |j| {
                    if j < buffer {
                        i as i64
                    } else {
                        (b + i * n_known + j - buffer) as i64
                    }
                })
            })
            .collect();
        let positions = layout.kept.iter().flatten().map(|&p| p as i64).collect();
        let pos = self
            .encoder_pos_embed
            .val()
            .reshape([buffer + n, e])
            .select(0, index_1d(positions, &device));
        let x = table.select(0, index_1d(source, &device)) + pos;
        let x = self.z_proj_ln.forward(x);
        let macs = self.encoder_blocks.iter().map(|k| k.macs(b * l, b)).sum();
        let x = with_threads_for(macs, || match host {
            Some(host) => host.encoder(x, b),
            None => self
                .encoder_blocks
                .iter()
                .fold(x, |x, block| block.forward_rows(x, b)),
        });
        self.encoder_norm.forward(x).reshape([b, l, e])
    }

    /// `forward_mae_decoder`: the condition vectors `z` for every position.
    ///
    /// # Shapes
    /// `x [B, buffer + n_known, enc]` → `[B, N, dec]`.
    pub fn decode(&self, x: Tensor<3>, layout: &MaskLayout) -> Tensor<3> {
        let [b, _, _] = x.dims();
        let x = self.decoder_input(x, layout);
        let [rows, d] = x.dims();
        let l = rows / b; // buffer + N
        let macs = self.decoder_blocks.iter().map(|k| k.macs(rows, b)).sum();
        let x = with_threads_for(macs, || {
            self.decoder_blocks
                .iter()
                .fold(x, |x, block| block.forward_rows(x, b))
        });
        let x = self.decoder_norm.forward(x).reshape([b, l, d]);
        x.slice([0..b, self.buffer_size..l, 0..d]) + self.diffusion_pos_embed.val()
    }

    /// [`MarTransformer::decode`] at the given positions only (per sequence, the same count
    /// in each): the rows `z[i, positions[i]]`, sequence-major. Only the decoder's last block
    /// narrows (to the rows the head samples; keys and values still span the sequence), so
    /// the rows equal `decode`'s while the last block's queries, projection and MLP shrink
    /// from `buffer + N` rows per sequence to the few revealed this step.
    ///
    /// # Shapes
    /// `x [B, buffer + n_known, enc]` → `[B·S, dec]`.
    pub fn decode_at(
        &self,
        x: Tensor<3>,
        layout: &MaskLayout,
        positions: &[Vec<usize>],
    ) -> Tensor<2> {
        self.decode_at_with(x, layout, positions, None)
    }

    /// [`MarTransformer::decode_at`] with the blocks on `host` where given.
    pub fn decode_at_with(
        &self,
        x: Tensor<3>,
        layout: &MaskLayout,
        positions: &[Vec<usize>],
        host: Option<&HostTransformer>,
    ) -> Tensor<2> {
        let device = x.device();
        let [b, _, _] = x.dims();
        let d = self.mask_token.dims()[2];
        let s = positions.first().map_or(0, Vec::len);
        if s == 0 {
            return Tensor::zeros([0, d], &device);
        }
        let x = self.decoder_input(x, layout);
        let [rows, _] = x.dims();
        let l = rows / b; // buffer + N
        let buffer = self.buffer_size;
        let kept_rows: Vec<usize> = positions
            .iter()
            .enumerate()
            .flat_map(|(i, ps)| ps.iter().map(move |&p| i * l + buffer + p))
            .collect();
        let x = match self.decoder_blocks.split_last() {
            None => x.select(0, super::layers::index_1d(&kept_rows, &device)),
            Some((last, earlier)) => {
                let macs = earlier.iter().map(|k| k.macs(rows, b)).sum::<usize>()
                    + last.macs_at(rows, b, b * s);
                with_threads_for(macs, || match host {
                    Some(host) => host.decoder(x, b, &kept_rows),
                    None => {
                        let x = earlier.iter().fold(x, |x, block| block.forward_rows(x, b));
                        last.forward_rows_at(x, b, &kept_rows)
                    }
                })
            }
        };
        let flat_positions = positions.iter().flatten().map(|&p| p as i64).collect();
        let n = l - buffer;
        let pos = self
            .diffusion_pos_embed
            .val()
            .reshape([n, d])
            .select(0, index_1d(flat_positions, &device));
        self.decoder_norm.forward(x) + pos
    }

    /// The decoder's input: the kept rows embedded to the decoder width and scattered back to
    /// their positions, the mask token at every other position, plus the position embedding.
    ///
    /// # Shapes
    /// `x [B, buffer + n_known, enc]` → `[B·(buffer + N), dec]`.
    fn decoder_input(&self, x: Tensor<3>, layout: &MaskLayout) -> Tensor<2> {
        let device = x.device();
        let [b, kept, e] = x.dims();
        let x = self.decoder_embed.forward(x.reshape([b * kept, e]));
        let [_, d] = x.dims();
        // One mask-token row after the B·kept embedded rows; masked positions read it.
        let x = Tensor::cat(vec![x, self.mask_token.val().reshape([1, d])], 0);
        let source = layout
            .scatter
            .iter()
            .enumerate()
            .flat_map(|(i, s)| {
                s.iter().map(move |&r| {
                    if r == kept {
                        (b * kept) as i64
                    } else {
                        (i * kept + r) as i64
                    }
                })
            })
            .collect();
        let x = x.select(0, index_1d(source, &device));
        let l = layout.scatter.first().map_or(0, |s| s.len()); // buffer + N
        (x.reshape([b, l, d]) + self.decoder_pos_embed.val()).reshape([b * l, d])
    }
}
