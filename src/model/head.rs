//! The diffusion head `SimpleMLPAdaLN` of `models/diffloss.py`: an MLP over one token with
//! adaLN-modulated residual blocks, conditioned on the timestep and the transformer's `z`.
//! It predicts ε (first `C` channels) and the variance interpolation `v` (last `C`).

use super::config::MarConfig;
use super::layers::{LayerNorm, silu};
use super::params::{Init, ParamBuilder};
use crate::error::Result;
use burn::module::Module;
use burn::nn::Linear;
use burn::tensor::{Device, Tensor, TensorData};

/// Frequencies of the sinusoidal timestep embedding (`dim = 256`, half = 128).
pub const TIME_FREQ_DIM: usize = 256;

/// `TimestepEmbedder.timestep_embedding(t, 256)` for one timestep, computed in f32 as PyTorch
/// does: `[cos(t·f), sin(t·f)]` with `f_j = exp(-ln(10000)·j/128)`.
pub fn timestep_frequencies(t: usize) -> Vec<f32> {
    let half = TIME_FREQ_DIM / 2;
    let ln = -(10000f64.ln()) as f32;
    let args: Vec<f32> = (0..half)
        .map(|j| t as f32 * (ln * j as f32 / half as f32).exp())
        .collect();
    args.iter()
        .map(|a| a.cos())
        .chain(args.iter().map(|a| a.sin()))
        .collect()
}

/// One adaLN residual block.
#[derive(Module, Debug)]
pub struct ResBlock {
    pub in_ln: LayerNorm,
    pub mlp_in: Linear,
    pub mlp_out: Linear,
    pub ada_ln: Linear,
}

impl ResBlock {
    fn forward(&self, h: Tensor<2>, y_act: Tensor<2>) -> Tensor<2> {
        let [shift, scale, gate] = chunk::<3>(self.ada_ln.forward(y_act));
        let u = self.in_ln.forward(h.clone()) * (scale + 1.0) + shift;
        let u = self.mlp_out.forward(silu(self.mlp_in.forward(u)));
        h + gate * u
    }
}

/// Splits `[n, k·w]` into `k` chunks `[n, w]` along the last dimension.
fn chunk<const K: usize>(x: Tensor<2>) -> [Tensor<2>; K] {
    let [n, kw] = x.dims();
    let w = kw / K;
    std::array::from_fn(|i| x.clone().slice([0..n, i * w..(i + 1) * w]))
}

/// `SimpleMLPAdaLN(in=C, model_channels=W, out=2C, z_channels=dec, num_res_blocks=d)`.
#[derive(Module, Debug)]
pub struct DiffusionHead {
    pub time_mlp_in: Linear,
    pub time_mlp_out: Linear,
    pub cond_embed: Linear,
    pub input_proj: Linear,
    pub res_blocks: Vec<ResBlock>,
    pub final_norm: LayerNorm,
    pub final_ada_ln: Linear,
    pub final_linear: Linear,
    pub token_dim: usize,
}

impl DiffusionHead {
    /// Builds the `diffloss.net.*` tensors (`SimpleMLPAdaLN.initialize_weights`: linears
    /// Xavier, the time MLP ~ N(0, 0.02²), every adaLN modulation and the final linear zero, so
    /// a fresh head starts as the identity residual). Built in the official initialization's
    /// order, which fixes the seeded draws.
    pub fn build(p: &mut ParamBuilder, c: &MarConfig) -> Result<Self> {
        let net = "diffloss.net";
        let (width, t, dec) = (c.diffloss_w, c.token_dim(), c.decoder_embed_dim);
        let time = Init::Normal(0.02);
        let time_mlp_in = p.linear(
            &format!("{net}.time_embed.mlp.0"),
            TIME_FREQ_DIM,
            width,
            time,
        )?;
        let time_mlp_out = p.linear(&format!("{net}.time_embed.mlp.2"), width, width, time)?;
        let cond_embed = p.linear(&format!("{net}.cond_embed"), dec, width, Init::Xavier)?;
        let input_proj = p.linear(&format!("{net}.input_proj"), t, width, Init::Xavier)?;
        let res_blocks = (0..c.diffloss_d)
            .map(|j| {
                let b = format!("{net}.res_blocks.{j}");
                Ok(ResBlock {
                    in_ln: LayerNorm::build(p, &format!("{b}.in_ln"), width)?,
                    mlp_in: p.linear(&format!("{b}.mlp.0"), width, width, Init::Xavier)?,
                    mlp_out: p.linear(&format!("{b}.mlp.2"), width, width, Init::Xavier)?,
                    ada_ln: p.linear(
                        &format!("{b}.adaLN_modulation.1"),
                        width,
                        3 * width,
                        Init::Zeros,
                    )?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            time_mlp_in,
            time_mlp_out,
            cond_embed,
            input_proj,
            res_blocks,
            // `final_layer.norm_final` has no affine parameters.
            final_norm: LayerNorm::plain(p, width),
            final_ada_ln: p.linear(
                &format!("{net}.final_layer.adaLN_modulation.1"),
                width,
                2 * width,
                Init::Zeros,
            )?,
            final_linear: p.linear(
                &format!("{net}.final_layer.linear"),
                width,
                2 * t,
                Init::Zeros,
            )?,
            token_dim: t,
        })
    }

    /// Multiply-adds of one row through the network (input projection, the blocks with their
    /// adaLN, the final layer), for the CPU's thread policy.
    pub fn macs_per_row(&self) -> usize {
        let [c, w] = self.input_proj.weight.dims();
        let blocks = self.res_blocks.len();
        c * w + blocks * (3 * w * w + 2 * w * w) + 2 * w * w + w * 2 * c
    }

    /// `TimestepEmbedder(t)` for one timestep.
    ///
    /// # Shapes
    /// → `[1, W]`.
    pub fn time_embedding(&self, t: usize, device: &Device) -> Tensor<2> {
        let f = Tensor::<2>::from_data(
            TensorData::new(timestep_frequencies(t), [1, TIME_FREQ_DIM]),
            device,
        );
        self.time_mlp_out.forward(silu(self.time_mlp_in.forward(f)))
    }

    /// `TimestepEmbedder(t)` for every `t` in `0..count`, in one batched call.
    ///
    /// # Shapes
    /// → `[count, W]`.
    pub fn time_embedding_table(&self, count: usize, device: &Device) -> Tensor<2> {
        let freqs: Vec<f32> = (0..count).flat_map(timestep_frequencies).collect();
        let f = Tensor::<2>::from_data(TensorData::new(freqs, [count, TIME_FREQ_DIM]), device);
        self.time_mlp_out.forward(silu(self.time_mlp_in.forward(f)))
    }

    /// The head's condition embedding `cond_embed(z)`, constant over a sampling loop.
    ///
    /// # Shapes
    /// `z [n, dec]` → `[n, W]`.
    pub fn condition(&self, z: Tensor<2>) -> Tensor<2> {
        self.cond_embed.forward(z)
    }

    /// The network given a precomputed time embedding and condition embedding.
    ///
    /// # Shapes
    /// `x [n, C]`, `time_emb [1, W]` (broadcast) or `[n, W]`, `cond [n, W]` → `[n, 2C]`.
    pub fn forward_embedded(
        &self,
        x: Tensor<2>,
        time_emb: Tensor<2>,
        cond: Tensor<2>,
    ) -> Tensor<2> {
        let mut h = self.input_proj.forward(x);
        let y_act = silu(cond + time_emb);
        for block in &self.res_blocks {
            h = block.forward(h, y_act.clone());
        }
        let [shift, scale] = chunk::<2>(self.final_ada_ln.forward(y_act));
        let h = self.final_norm.forward(h) * (scale + 1.0) + shift;
        self.final_linear.forward(h)
    }

    /// `SimpleMLPAdaLN.forward(x, t, c)` with one timestep for every row.
    ///
    /// # Shapes
    /// `x [n, C]`, `z [n, dec]` → `[n, 2C]`.
    pub fn forward(&self, x: Tensor<2>, t: usize, z: Tensor<2>) -> Tensor<2> {
        let device = x.device();
        self.forward_embedded(x, self.time_embedding(t, &device), self.condition(z))
    }

    /// `forward_with_cfg`: rows `[:n]` of `x` are used for both halves; ε is guided
    /// (`ε_u + s·(ε_c − ε_u)`) and duplicated, the variance channels are not guided.
    ///
    /// # Shapes
    /// `x_half [n, C]`, `time_emb [1, W]`, `cond [2n, W]` (cond rows, then uncond) →
    /// `(eps [n, C], v_cond [n, C])`.
    pub fn forward_cfg_embedded(
        &self,
        x_half: Tensor<2>,
        time_emb: Tensor<2>,
        cond: Tensor<2>,
        scale: f32,
    ) -> (Tensor<2>, Tensor<2>) {
        let [n, c] = x_half.dims();
        let out =
            self.forward_embedded(Tensor::cat(vec![x_half.clone(), x_half], 0), time_emb, cond);
        let eps_c = out.clone().slice([0..n, 0..c]);
        let eps_u = out.clone().slice([n..2 * n, 0..c]);
        let v_c = out.slice([0..n, c..2 * c]);
        let eps = eps_u.clone() + (eps_c - eps_u) * scale;
        (eps, v_c)
    }
}
