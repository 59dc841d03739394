//! The diffusion head's network on the host, for the plain CPU backend: the same layers as
//! [`DiffusionHead::forward_embedded`] on plain `f32` slices, the matmuls through `gemm` (the
//! crate flex uses) and every other op one vectorizable loop.
//!
//! At sampling time a head call is a handful of rows (4 tokens and their CFG copies at batch 1)
//! through about 30 small ops; as Burn tensor ops each pays an allocation, a dispatch and often a
//! strided copy, which cost more than the arithmetic at these sizes.

use super::head::DiffusionHead;
use super::host::{HostLayerNorm, HostLinear, SharedValues, map_in_place, norm_stats};
use burn::tensor::Tensor;

/// Heads above this many weight floats stay on Burn's tensor path: there the matmuls dominate,
/// which both paths run through gemm, and the host path has not been measured at those sizes.
/// 16 M floats; MAR-B's head (6 blocks, 1024 wide) is 25 M, the built-in model's 0.3 M.
pub const MAX_HOST_HEAD_FLOATS: usize = 16 << 20;

/// One adaLN residual block on the host.
#[derive(Debug)]
struct HostBlock {
    norm: HostLayerNorm,
    mlp_in: HostLinear,
    mlp_out: HostLinear,
    ada_ln: HostLinear,
}

/// [`DiffusionHead`]'s network with its weights read in place (see [`SharedValues`]), and the
/// time-embedding table (`[timesteps, W]`).
pub struct HostHead {
    width: usize,
    token_dim: usize,
    input_proj: HostLinear,
    blocks: Vec<HostBlock>,
    final_ada_ln: HostLinear,
    final_linear: HostLinear,
    time_table: SharedValues,
}

impl std::fmt::Debug for HostHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostHead")
            .field("width", &self.width)
            .field("blocks", &self.blocks.len())
            .finish()
    }
}

/// Scratch rows one forward pass needs, kept between calls.
#[derive(Debug, Default)]
pub struct HostScratch {
    h: Vec<f32>,
    y: Vec<f32>,
    ada: Vec<f32>,
    u: Vec<f32>,
    m: Vec<f32>,
}

impl HostHead {
    /// `head`'s weights and the time table `[timesteps, W]` for the host, shared with the
    /// tensors given; `None` when they pass [`MAX_HOST_HEAD_FLOATS`].
    pub fn new(head: &DiffusionHead, time_table: Tensor<2>) -> Option<Self> {
        let linears = [&head.input_proj, &head.final_ada_ln, &head.final_linear]
            .into_iter()
            .chain(
                head.res_blocks
                    .iter()
                    .flat_map(|b| [&b.mlp_in, &b.mlp_out, &b.ada_ln]),
            );
        let floats: usize = linears
            .map(|l| l.weight.dims().iter().product::<usize>())
            .sum::<usize>()
            + time_table.dims().iter().product::<usize>();
        if floats > MAX_HOST_HEAD_FLOATS {
            return None;
        }
        let [_, width] = head.input_proj.weight.dims();
        Some(Self {
            width,
            token_dim: head.token_dim,
            input_proj: HostLinear::new(&head.input_proj),
            blocks: head
                .res_blocks
                .iter()
                .map(|b| HostBlock {
                    norm: HostLayerNorm::new(&b.in_ln),
                    mlp_in: HostLinear::new(&b.mlp_in),
                    mlp_out: HostLinear::new(&b.mlp_out),
                    ada_ln: HostLinear::new(&b.ada_ln),
                })
                .collect(),
            final_ada_ln: HostLinear::new(&head.final_ada_ln),
            final_linear: HostLinear::new(&head.final_linear),
            time_table: SharedValues::of(time_table),
        })
    }

    /// [`DiffusionHead::forward_embedded`] with the time embedding of original timestep `t`:
    /// `x [R, C]`, `cond [R, W]` (the condition embedding) → `[R, 2C]` (ε, then `v`).
    ///
    /// # Panics
    /// When `t` is outside the time table or the slices are shorter than `R` rows.
    pub fn forward(
        &self,
        x: &[f32],
        t: usize,
        cond: &[f32],
        rows: usize,
        s: &mut HostScratch,
    ) -> Vec<f32> {
        let w = self.width;
        let time = &self.time_table[t * w..(t + 1) * w];
        self.input_proj.forward(x, rows, &mut s.h);
        // y = SiLU(cond + time embedding), shared by every adaLN.
        s.y.clear();
        for row in cond[..rows * w].chunks_exact(w) {
            s.y.extend(row.iter().zip(time).map(|(c, e)| c + e));
        }
        map_in_place(&mut s.y, super::host::silu);
        for block in &self.blocks {
            block.ada_ln.forward(&s.y, rows, &mut s.ada);
            modulated_norm(&s.h, Some(&block.norm), &s.ada, 3, rows, w, &mut s.u);
            block.mlp_in.forward(&s.u, rows, &mut s.m);
            map_in_place(&mut s.m, super::host::silu);
            block.mlp_out.forward(&s.m, rows, &mut s.u);
            // h += gate · u, gate the third chunk of the modulation row.
            for ((h, u), ada) in
                s.h.chunks_exact_mut(w)
                    .zip(s.u.chunks_exact(w))
                    .zip(s.ada.chunks_exact(3 * w))
            {
                for ((h, &u), &g) in h.iter_mut().zip(u).zip(&ada[2 * w..]) {
                    *h += g * u;
                }
            }
        }
        self.final_ada_ln.forward(&s.y, rows, &mut s.ada);
        modulated_norm(&s.h, None, &s.ada, 2, rows, w, &mut s.u);
        let mut out = Vec::new();
        self.final_linear.forward(&s.u, rows, &mut out);
        debug_assert_eq!(out.len(), rows * 2 * self.token_dim);
        out
    }
}

/// `LN(h)·(1 + scale) + shift` per row, `shift` and `scale` the first two `w`-wide chunks of
/// each `chunks·w`-wide modulation row; `LN` with eps 1e-6 and `affine`'s weight and bias
/// (none for the final layer's norm).
fn modulated_norm(
    h: &[f32],
    affine: Option<&HostLayerNorm>,
    ada: &[f32],
    chunks: usize,
    rows: usize,
    w: usize,
    out: &mut Vec<f32>,
) {
    out.clear();
    out.resize(rows * w, 0.0);
    let affine = affine.map(|n| (&*n.weight, &*n.bias));
    for ((x, o), m) in h
        .chunks_exact(w)
        .zip(out.chunks_exact_mut(w))
        .zip(ada.chunks_exact(chunks * w))
    {
        let (mean, inv) = norm_stats(x);
        let (shift, scale) = (&m[..w], &m[w..2 * w]);
        match affine {
            Some((weight, bias)) => {
                for (((o, &x), &g), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                    *o = (x - mean) * inv * g + b;
                }
            }
            None => o
                .iter_mut()
                .zip(x)
                .for_each(|(o, &x)| *o = (x - mean) * inv),
        }
        for ((o, &scale), &shift) in o.iter_mut().zip(scale).zip(shift) {
            *o = *o * (scale + 1.0) + shift;
        }
    }
}
