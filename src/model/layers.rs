//! Small building blocks shared by the MAR transformer, the diffusion head and the VAE, each
//! built through a [`ParamBuilder`] under its PyTorch key names.

use super::host::{self, map_in_place};
use super::params::{Init, ParamBuilder};
use crate::error::Result;
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::{gelu, softmax};
use burn::tensor::{DType, Device, Int, Tensor, TensorData};

/// LayerNorm epsilon used everywhere in MAR (`partial(nn.LayerNorm, eps=1e-6)`).
pub const LN_EPS: f64 = 1e-6;

/// LayerNorm with optional affine parameters, eps 1e-6.
#[derive(Module, Debug)]
pub struct LayerNorm {
    pub weight: Param<Tensor<1>>,
    pub bias: Option<Param<Tensor<1>>>,
}

impl LayerNorm {
    /// An affine LayerNorm, `prefix.weight` (ones when initialized) and `prefix.bias` (zeros).
    pub fn build(p: &mut ParamBuilder, prefix: &str, dim: usize) -> Result<Self> {
        Ok(Self {
            weight: p.tensor(&format!("{prefix}.weight"), [dim], Init::Ones)?,
            bias: Some(p.tensor(&format!("{prefix}.bias"), [dim], Init::Zeros)?),
        })
    }

    /// A LayerNorm without affine parameters (`elementwise_affine=False`).
    pub fn plain(p: &mut ParamBuilder, dim: usize) -> Self {
        Self {
            // A constant, not a parameter: training must not move it.
            weight: p.constant_ones([dim]),
            bias: None,
        }
    }

    /// Normalizes over the last dimension.
    pub fn forward<const D: usize>(&self, x: Tensor<D>) -> Tensor<D> {
        burn::tensor::module::layer_norm(
            x,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            LN_EPS,
        )
    }
}

/// timm's ViT `Block`: `x + Attn(LN(x))`, then `x + MLP(LN(x))`; full bidirectional attention,
/// exact-erf GELU.
#[derive(Module, Debug)]
pub struct Block {
    pub norm1: LayerNorm,
    pub qkv: Linear,
    pub proj: Linear,
    pub norm2: LayerNorm,
    pub fc1: Linear,
    pub fc2: Linear,
    pub num_heads: usize,
}

impl Block {
    /// `prefix.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}`; linears Xavier-initialized.
    pub fn build(
        p: &mut ParamBuilder,
        prefix: &str,
        dim: usize,
        heads: usize,
        hidden: usize,
    ) -> Result<Self> {
        Ok(Self {
            norm1: LayerNorm::build(p, &format!("{prefix}.norm1"), dim)?,
            qkv: p.linear(&format!("{prefix}.attn.qkv"), dim, 3 * dim, Init::Xavier)?,
            proj: p.linear(&format!("{prefix}.attn.proj"), dim, dim, Init::Xavier)?,
            norm2: LayerNorm::build(p, &format!("{prefix}.norm2"), dim)?,
            fc1: p.linear(&format!("{prefix}.mlp.fc1"), dim, hidden, Init::Xavier)?,
            fc2: p.linear(&format!("{prefix}.mlp.fc2"), hidden, dim, Init::Xavier)?,
            num_heads: heads,
        })
    }

    /// # Shapes
    /// `x`: `[B, L, D]` → `[B, L, D]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [b, l, d] = x.dims();
        self.forward_rows(x.reshape([b * l, d]), b)
            .reshape([b, l, d])
    }

    /// Multiply-adds of [`Block::forward_rows`] over `b` sequences of `rows / b` rows each.
    pub fn macs(&self, rows: usize, b: usize) -> usize {
        let [d, hidden] = self.fc1.weight.dims();
        let l = rows / b.max(1);
        rows * (4 * d * d + 2 * d * hidden) + b * 2 * l * l * d
    }

    /// The block over `B` sequences of equal length stored as rows: every linear layer is one
    /// `[B·L, D] @ [D, ·]` matmul shared by all images and CFG rows; only attention needs the
    /// sequence boundaries.
    ///
    /// # Shapes
    /// `x`: `[B·L, D]` → `[B·L, D]`.
    pub fn forward_rows(&self, x: Tensor<2>, b: usize) -> Tensor<2> {
        let x = x.clone() + self.attention(self.norm1.forward(x), b);
        let h = self
            .fc2
            .forward(gelu_erf(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + h
    }

    /// Multiply-adds of [`Block::forward_rows_at`]: `b` sequences of `rows / b` rows, of which
    /// `kept` rows in all leave the block.
    pub fn macs_at(&self, rows: usize, b: usize, kept: usize) -> usize {
        let [d, hidden] = self.fc1.weight.dims();
        let l = rows / b.max(1);
        rows * 3 * d * d + kept * (d * d + 2 * d * hidden) + 2 * kept * l * d
    }

    /// [`Block::forward_rows`] for the rows `kept` only (indices into the `B·L` rows, the same
    /// count in every sequence, sequence-major): keys and values still come from every row,
    /// but queries, the attention output, the projection and the MLP run on the kept rows.
    /// Every op but attention acts row by row, so the kept rows equal those of the full block.
    /// The decoder's last block uses it for the positions the head samples this step.
    ///
    /// # Shapes
    /// `x`: `[B·L, D]`, `kept`: `B·S` rows → `[B·S, D]`.
    pub fn forward_rows_at(&self, x: Tensor<2>, b: usize, kept: &[usize]) -> Tensor<2> {
        let index = index_1d(kept, &x.device());
        let x_kept = x.clone().select(0, index);
        let x = x_kept + self.attention_at(self.norm1.forward(x), b, Some(kept));
        let h = self
            .fc2
            .forward(gelu_erf(self.fc1.forward(self.norm2.forward(x.clone()))));
        x + h
    }

    /// Multi-head self-attention over each of the `b` sequences.
    ///
    /// # Shapes
    /// `x`: `[B·L, D]` → `[B·L, D]`.
    fn attention(&self, x: Tensor<2>, b: usize) -> Tensor<2> {
        self.attention_at(x, b, None)
    }

    /// Self-attention whose queries are the rows `queries` (all rows for `None`; the same
    /// count in every sequence, sequence-major); keys and values are every row of the sequence.
    ///
    /// # Shapes
    /// `x`: `[B·L, D]`, `queries`: `B·S` rows → `[B·S, D]`.
    fn attention_at(&self, x: Tensor<2>, b: usize, queries: Option<&[usize]>) -> Tensor<2> {
        let device = x.device();
        let [rows, d] = x.dims();
        let (l, h) = (rows / b, self.num_heads);
        let hd = d / h;
        let scale = (hd as f64).powf(-0.5);
        let qkv_rows = self.qkv.forward(x);
        let out_rows = queries.map_or(rows, <[usize]>::len);
        if crate::backend::is_plain_cpu(&device) && qkv_rows.dtype() == DType::F32 {
            // On the host, straight from the qkv rows: no head-major copies of q, k and v,
            // and softmax's exponential vectorizes (flex calls libm's scalar `expf`).
            let data = qkv_rows.into_data();
            let values = data.as_slice::<f32>().expect("f32 tensor data");
            let all: Vec<usize>;
            let queries = match queries {
                Some(q) => q,
                None => {
                    all = (0..rows).collect();
                    &all
                }
            };
            let shape = host::AttentionShape {
                sequences: b,
                heads: h,
                scale: scale as f32,
            };
            let out = host::attention(values, d, shape, queries);
            let out = Tensor::from_data(TensorData::new(out, [out_rows, d]), &device);
            return self.proj.forward(out);
        }
        // Elsewhere (wgpu, autodiff) the explicit form, as validated by the parity tests.
        // [B·L, 3D] -> [B, L, 3, H, hd] -> [3, B, H, L, hd] (a strided view, no copy yet)
        let heads = |t: Tensor<2>, l: usize| t.reshape([b, l, 3, h, hd]).permute([2, 0, 3, 1, 4]);
        let q_rows = queries.map(|q| qkv_rows.clone().select(0, index_1d(q, &device)));
        let qkv: Tensor<5> = heads(qkv_rows, l);
        let q: Tensor<4> = match q_rows {
            None => qkv.clone().slice(0..1).squeeze_dim(0),
            Some(t) => heads(t, out_rows / b).slice(0..1).squeeze_dim(0),
        };
        let k: Tensor<4> = qkv.clone().slice(1..2).squeeze_dim(0);
        let v: Tensor<4> = qkv.slice(2..3).squeeze_dim(0);
        let out = softmax(q.mul_scalar(scale).matmul(k.swap_dims(2, 3)), 3).matmul(v);
        // [B, H, S, hd] -> [B, S, H, hd] -> [B·S, D]
        self.proj
            .forward(out.swap_dims(1, 2).reshape([out_rows, d]))
    }
}

/// A 1-D index tensor of `rows`.
pub fn index_1d(rows: &[usize], device: &Device) -> Tensor<1, Int> {
    let idx: Vec<i64> = rows.iter().map(|&r| r as i64).collect();
    Tensor::from_data(TensorData::new(idx, [rows.len()]), device)
}

/// Exact-erf GELU, `x·(1 + erf(x/√2))/2`. On the CPU backend it is computed on the host with
/// [`erf`] (a short polynomial the compiler vectorizes) instead of flex's scalar libm `erf`
/// per element, which was a fifth of the transformer's CPU time; elsewhere Burn's `gelu`.
pub fn gelu_erf(x: Tensor<2>) -> Tensor<2> {
    map_on_cpu(x, host::gelu, gelu)
}

/// SiLU, `x·σ(x)`. On the CPU backend computed on the host with [`exp_nonpositive`] (the
/// loop vectorizes), where flex's sigmoid calls libm's scalar `expf` per element (the diffusion
/// head's two SiLUs per block were most of the `expf` time in a batch-8 profile); elsewhere
/// Burn's `silu` (autodiff included).
pub fn silu(x: Tensor<2>) -> Tensor<2> {
    map_on_cpu(x, host::silu, burn::tensor::activation::silu)
}

/// Applies `f` to every value of an f32 tensor on the plain CPU backend, on its own buffer
/// (taken, not cloned: the activation's only owner hands it over without a copy). Any other
/// device (wgpu, autodiff) or dtype gets Burn's op, `fallback`.
fn map_on_cpu(
    x: Tensor<2>,
    f: impl Fn(f32) -> f32,
    fallback: impl FnOnce(Tensor<2>) -> Tensor<2>,
) -> Tensor<2> {
    if !crate::backend::is_plain_cpu(&x.device()) || x.dtype() != burn::tensor::DType::F32 {
        return fallback(x);
    }
    let device = x.device();
    let mut data = x.into_data();
    match data.as_mut_slice::<f32>() {
        Ok(values) => {
            map_in_place(values, f);
            Tensor::from_data(data, &device)
        }
        Err(_) => fallback(Tensor::from_data(data, &device)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn cpu_silu_matches_burns() {
        let device = burn::tensor::Device::flex();
        let values: Vec<f32> = (0..400).map(|i| (i as f32 - 200.0) * 0.11).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values.clone(), [8, 50]), &device);
        let ours = silu(x.clone()).into_data().try_to_vec::<f32>().unwrap();
        for (a, got) in values.iter().zip(ours) {
            let want = (*a as f64) / (1.0 + (-*a as f64).exp());
            assert!(
                (got as f64 - want).abs() <= 1e-6 * want.abs().max(1e-3),
                "silu({a}) = {got}, want {want}"
            );
        }
        // Far tails: no overflow, exact limits.
        let tails =
            Tensor::<2>::from_data(TensorData::new(vec![-200.0f32, 200.0], [1, 2]), &device);
        let tails = silu(tails).into_data().try_to_vec::<f32>().unwrap();
        assert!(
            tails[0] <= 0.0 && tails[0] > -1e-30,
            "silu(-200) = {}",
            tails[0]
        );
        assert_eq!(tails[1], 200.0);
    }

    #[test]
    fn cpu_gelu_matches_burns() {
        let device = burn::tensor::Device::flex();
        let values: Vec<f32> = (0..200).map(|i| (i as f32 - 100.0) * 0.07).collect();
        let x = Tensor::<2>::from_data(TensorData::new(values, [4, 50]), &device);
        let ours = gelu_erf(x.clone())
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        let burn = gelu(x).into_data().try_into_vec::<f32>().unwrap();
        for (a, b) in ours.iter().zip(&burn) {
            assert!((a - b).abs() <= 1e-6 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
