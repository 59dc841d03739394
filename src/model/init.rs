//! Fresh weights for training, drawn as the official code initializes MAR
//! (`MAR.initialize_weights`, `SimpleMLPAdaLN.initialize_weights`) and laid out as an official
//! state dict, so a new model goes through the same loader as a checkpoint.

use super::config::MarConfig;
use super::head::TIME_FREQ_DIM;
use crate::noise::SeededNoise;
use crate::weights::{HostTensor, WeightMap};
use std::collections::BTreeMap;

struct Init {
    rng: SeededNoise,
    tensors: BTreeMap<String, HostTensor>,
}

impl Init {
    fn put(&mut self, key: String, shape: Vec<usize>, values: Vec<f32>) {
        self.tensors.insert(key, HostTensor { shape, values });
    }

    fn constant(&mut self, key: String, shape: Vec<usize>, value: f32) {
        let n = shape.iter().product();
        self.put(key, shape, vec![value; n]);
    }

    /// `torch.nn.init.normal_(std)`.
    fn normal(&mut self, key: String, shape: Vec<usize>, std: f64) {
        let n: usize = shape.iter().product();
        let v = (0..n)
            .map(|_| (self.rng.standard_normal() * std) as f32)
            .collect();
        self.put(key, shape, v);
    }

    /// `nn.Linear(d_in, d_out)` with `xavier_uniform_` weight and zero bias (MAR's
    /// `_init_weights`).
    fn xavier(&mut self, prefix: &str, d_in: usize, d_out: usize) {
        let bound = (6.0 / (d_in + d_out) as f64).sqrt();
        let v = (0..d_in * d_out)
            .map(|_| ((self.rng.uniform() * 2.0 - 1.0) * bound) as f32)
            .collect();
        self.put(format!("{prefix}.weight"), vec![d_out, d_in], v);
        self.constant(format!("{prefix}.bias"), vec![d_out], 0.0);
    }

    /// A linear with weight and bias drawn from N(0, std²) (the head's time MLP) or zero.
    fn linear_normal(&mut self, prefix: &str, d_in: usize, d_out: usize, std: f64) {
        self.normal(format!("{prefix}.weight"), vec![d_out, d_in], std);
        self.constant(format!("{prefix}.bias"), vec![d_out], 0.0);
    }

    fn zero_linear(&mut self, prefix: &str, d_in: usize, d_out: usize) {
        self.constant(format!("{prefix}.weight"), vec![d_out, d_in], 0.0);
        self.constant(format!("{prefix}.bias"), vec![d_out], 0.0);
    }

    fn layer_norm(&mut self, prefix: &str, dim: usize) {
        self.constant(format!("{prefix}.weight"), vec![dim], 1.0);
        self.constant(format!("{prefix}.bias"), vec![dim], 0.0);
    }

    fn block(&mut self, prefix: &str, dim: usize, hidden: usize) {
        self.layer_norm(&format!("{prefix}.norm1"), dim);
        self.xavier(&format!("{prefix}.attn.qkv"), dim, 3 * dim);
        self.xavier(&format!("{prefix}.attn.proj"), dim, dim);
        self.layer_norm(&format!("{prefix}.norm2"), dim);
        self.xavier(&format!("{prefix}.mlp.fc1"), dim, hidden);
        self.xavier(&format!("{prefix}.mlp.fc2"), hidden, dim);
    }
}

impl MarConfig {
    /// Freshly initialized weights for this configuration, reproducible from `seed`:
    /// embeddings, mask token and position embeddings ~ N(0, 0.02²); linears Xavier-uniform with
    /// zero bias; LayerNorms (1, 0); in the head, the time MLP ~ N(0, 0.02²) and every adaLN
    /// modulation plus the final linear zero, so the head starts as the identity residual.
    pub fn initial_weights(&self, seed: u64) -> WeightMap {
        let (e, d, n, b, t) = (
            self.encoder_embed_dim,
            self.decoder_embed_dim,
            self.seq_len(),
            self.buffer_size,
            self.token_dim(),
        );
        let mut s = Init {
            rng: SeededNoise::new(seed),
            tensors: BTreeMap::new(),
        };
        s.normal("class_emb.weight".into(), vec![self.class_num, e], 0.02);
        s.normal("fake_latent".into(), vec![1, e], 0.02);
        s.xavier("z_proj", t, e);
        s.layer_norm("z_proj_ln", e);
        s.normal("encoder_pos_embed_learned".into(), vec![1, b + n, e], 0.02);
        for i in 0..self.encoder_depth {
            s.block(&format!("encoder_blocks.{i}"), e, self.mlp_hidden(e));
        }
        s.layer_norm("encoder_norm", e);
        s.xavier("decoder_embed", e, d);
        s.normal("mask_token".into(), vec![1, 1, d], 0.02);
        s.normal("decoder_pos_embed_learned".into(), vec![1, b + n, d], 0.02);
        for i in 0..self.decoder_depth {
            s.block(&format!("decoder_blocks.{i}"), d, self.mlp_hidden(d));
        }
        s.layer_norm("decoder_norm", d);
        s.normal("diffusion_pos_embed_learned".into(), vec![1, n, d], 0.02);

        let p = "diffloss.net";
        let w = self.diffloss_w;
        s.linear_normal(&format!("{p}.time_embed.mlp.0"), TIME_FREQ_DIM, w, 0.02);
        s.linear_normal(&format!("{p}.time_embed.mlp.2"), w, w, 0.02);
        s.xavier(&format!("{p}.cond_embed"), d, w);
        s.xavier(&format!("{p}.input_proj"), t, w);
        for j in 0..self.diffloss_d {
            let r = format!("{p}.res_blocks.{j}");
            s.layer_norm(&format!("{r}.in_ln"), w);
            s.xavier(&format!("{r}.mlp.0"), w, w);
            s.xavier(&format!("{r}.mlp.2"), w, w);
            s.zero_linear(&format!("{r}.adaLN_modulation.1"), w, 3 * w);
        }
        s.zero_linear(&format!("{p}.final_layer.adaLN_modulation.1"), w, 2 * w);
        s.zero_linear(&format!("{p}.final_layer.linear"), w, 2 * t);
        WeightMap {
            source_name: format!("fresh initialization (seed {seed})"),
            tensors: s.tensors,
        }
    }
}
