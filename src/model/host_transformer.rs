//! The MAR transformer's blocks on the host, for the plain CPU backend: timm's ViT block
//! (LayerNorm, `qkv`, attention, projection, LayerNorm, MLP with exact GELU, both residuals) on
//! plain `f32` rows, the matmuls through `gemm` and everything else one loop. As Burn ops each
//! of a block's dozen steps allocated its output and several copied a whole sequence.

use super::host::{self, AttentionShape, HostLayerNorm, HostLinear, map_in_place};
use super::layers::Block;
use super::mar::MarTransformer;
use burn::tensor::{Device, Tensor, TensorData};

/// Transformers above this many block weight floats stay on Burn's tensor path: there the
/// matmuls dominate, which both paths run through gemm, and the host path has not been
/// measured at those sizes. 16 M floats; the built-in model's blocks are 0.8 M, MAR-B's 170 M.
pub const MAX_HOST_TRANSFORMER_FLOATS: usize = 16 << 20;

/// One ViT block ([`Block`]) on the host.
#[derive(Debug)]
pub struct HostBlock {
    norm1: HostLayerNorm,
    qkv: HostLinear,
    proj: HostLinear,
    norm2: HostLayerNorm,
    fc1: HostLinear,
    fc2: HostLinear,
    heads: usize,
}

/// Rows one block needs between its steps, kept between blocks.
#[derive(Debug, Default)]
pub struct BlockScratch {
    normed: Vec<f32>,
    qkv: Vec<f32>,
    hidden: Vec<f32>,
    out: Vec<f32>,
}

impl HostBlock {
    fn new(b: &Block) -> Self {
        Self {
            norm1: HostLayerNorm::new(&b.norm1),
            qkv: HostLinear::new(&b.qkv),
            proj: HostLinear::new(&b.proj),
            norm2: HostLayerNorm::new(&b.norm2),
            fc1: HostLinear::new(&b.fc1),
            fc2: HostLinear::new(&b.fc2),
            heads: b.num_heads,
        }
    }

    fn floats(&self) -> usize {
        [&self.qkv, &self.proj, &self.fc1, &self.fc2]
            .iter()
            .map(|l| l.weight.len())
            .sum()
    }

    /// [`Block::forward_rows_at`] (`kept = Some`) or [`Block::forward_rows`] (`None`):
    /// `x [B·L, D]` over `b` sequences → the kept rows `[B·S, D]` (every row for `None`).
    pub fn forward(
        &self,
        x: &[f32],
        b: usize,
        kept: Option<&[usize]>,
        s: &mut BlockScratch,
    ) -> Vec<f32> {
        let d = self.qkv.inputs;
        let rows = x.len() / d.max(1);
        let all: Vec<usize>;
        let kept = match kept {
            Some(k) => k,
            None => {
                all = (0..rows).collect();
                &all
            }
        };
        let out_rows = kept.len();
        self.norm1.forward(x, &mut s.normed);
        self.qkv.forward(&s.normed, rows, &mut s.qkv);
        let shape = AttentionShape {
            sequences: b,
            heads: self.heads,
            scale: ((d / self.heads.max(1)) as f32).powf(-0.5),
        };
        let attended = host::attention(&s.qkv, d, shape, kept);
        self.proj.forward(&attended, out_rows, &mut s.out);
        // x (kept rows) + attention
        let mut y: Vec<f32> = Vec::with_capacity(out_rows * d);
        for (&r, a) in kept.iter().zip(s.out.chunks_exact(d)) {
            y.extend(x[r * d..(r + 1) * d].iter().zip(a).map(|(x, a)| x + a));
        }
        self.norm2.forward(&y, &mut s.normed);
        self.fc1.forward(&s.normed, out_rows, &mut s.hidden);
        map_in_place(&mut s.hidden, host::gelu);
        self.fc2.forward(&s.hidden, out_rows, &mut s.out);
        for (y, h) in y.iter_mut().zip(&s.out) {
            *y += h;
        }
        y
    }
}

/// The encoder's and decoder's blocks on the host.
#[derive(Debug)]
pub struct HostTransformer {
    encoder: Vec<HostBlock>,
    decoder: Vec<HostBlock>,
}

impl HostTransformer {
    /// `t`'s blocks for the host, their weights shared with `t`'s; `None` above
    /// [`MAX_HOST_TRANSFORMER_FLOATS`].
    pub fn new(t: &MarTransformer) -> Option<Self> {
        let floats: usize = t
            .encoder_blocks
            .iter()
            .chain(&t.decoder_blocks)
            .map(|b| {
                [&b.qkv, &b.proj, &b.fc1, &b.fc2]
                    .iter()
                    .map(|l| l.weight.dims().iter().product::<usize>())
                    .sum::<usize>()
            })
            .sum();
        if floats > MAX_HOST_TRANSFORMER_FLOATS {
            return None;
        }
        let host = Self {
            encoder: t.encoder_blocks.iter().map(HostBlock::new).collect(),
            decoder: t.decoder_blocks.iter().map(HostBlock::new).collect(),
        };
        debug_assert_eq!(
            host.encoder
                .iter()
                .chain(&host.decoder)
                .map(HostBlock::floats)
                .sum::<usize>(),
            floats
        );
        Some(host)
    }

    /// The encoder's blocks over `x [B·L, D]`.
    pub fn encoder(&self, x: Tensor<2>, b: usize) -> Tensor<2> {
        run_blocks(&self.encoder, x, b, None)
    }

    /// The decoder's blocks over `x [B·L, D]`, the last one for the rows `kept` only.
    pub fn decoder(&self, x: Tensor<2>, b: usize, kept: &[usize]) -> Tensor<2> {
        run_blocks(&self.decoder, x, b, Some(kept))
    }
}

/// Rows one group of sequences brings through the blocks together: enough for efficient
/// matmuls, few enough that a block's activations (`qkv` is 3·D floats a row) stay in the
/// core's cache. Batch 8 with CFG is 16 sequences of 72 rows for the built-in model; as one
/// group its activations outgrew the cache and a batch-8 image cost more than a batch-1 one.
const GROUP_ROWS: usize = 256;

/// `blocks` in turn over the rows of `x`, the last one keeping `last_kept` (all for `None`).
/// Sequences are independent, so they go through in groups of about [`GROUP_ROWS`] rows.
fn run_blocks(
    blocks: &[HostBlock],
    x: Tensor<2>,
    b: usize,
    last_kept: Option<&[usize]>,
) -> Tensor<2> {
    let device: Device = x.device();
    let [rows, d] = x.dims();
    let values = host::values(x);
    let b = b.max(1);
    let l = rows / b; // rows per sequence
    let kept_per_sequence = last_kept.map(|k| k.len() / b);
    let group = (GROUP_ROWS / l.max(1)).clamp(1, b);
    let mut scratch = BlockScratch::default();
    let mut out = Vec::new();
    for first in (0..b).step_by(group) {
        let seqs = group.min(b - first);
        let mut x = values[first * l * d..(first + seqs) * l * d].to_vec();
        // This group's kept rows, renumbered from its first row.
        let kept: Option<Vec<usize>> = kept_per_sequence.zip(last_kept).map(|(s, k)| {
            k[first * s..(first + seqs) * s]
                .iter()
                .map(|&r| r - first * l)
                .collect()
        });
        for (i, block) in blocks.iter().enumerate() {
            let last = i + 1 == blocks.len();
            x = block.forward(&x, seqs, kept.as_deref().filter(|_| last), &mut scratch);
        }
        if let (true, Some(kept)) = (blocks.is_empty(), &kept) {
            x = kept
                .iter()
                .flat_map(|&r| x[r * d..(r + 1) * d].to_vec())
                .collect();
        }
        out.extend_from_slice(&x);
    }
    let out_rows = out.len() / d.max(1);
    Tensor::from_data(TensorData::new(out, [out_rows, d]), &device)
}
