//! The model's tensors back in the official PyTorch layout (`models/mar.py` state-dict keys,
//! `nn.Linear` weights as `[out, in]`): the inverse of the loaders, used to save trained
//! weights, to keep EMA weights on the host, and to export to the official code.

use super::Model;
use super::head::DiffusionHead;
use super::layers::{Block, LayerNorm};
use super::mar::MarTransformer;
use crate::error::{DisaError, Result};
use crate::weights::{HostTensor, WeightMap};
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::Tensor;
use std::collections::BTreeMap;

/// Collects named host tensors.
struct Collector {
    tensors: BTreeMap<String, HostTensor>,
}

fn host<const D: usize>(t: Tensor<D>) -> Result<HostTensor> {
    let shape = t.dims().to_vec();
    let values = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading a parameter back: {e:?}")))?;
    Ok(HostTensor { shape, values })
}

impl Collector {
    fn param<const D: usize>(&mut self, key: &str, p: &Param<Tensor<D>>) -> Result<()> {
        self.tensors.insert(key.to_string(), host(p.val())?);
        Ok(())
    }

    /// Burn's `[in, out]` weight as PyTorch's `[out, in]`.
    fn linear(&mut self, prefix: &str, l: &Linear) -> Result<()> {
        let w = host(l.weight.val())?;
        let (d_in, d_out) = (w.shape[0], w.shape[1]);
        let mut t = vec![0.0f32; d_in * d_out];
        for i in 0..d_in {
            for o in 0..d_out {
                t[o * d_in + i] = w.values[i * d_out + o];
            }
        }
        self.tensors.insert(
            format!("{prefix}.weight"),
            HostTensor {
                shape: vec![d_out, d_in],
                values: t,
            },
        );
        match &l.bias {
            Some(b) => self.param(&format!("{prefix}.bias"), b),
            None => Err(DisaError::Config(format!(
                "`{prefix}` has no bias; MAR's linears all have one"
            ))),
        }
    }

    fn layer_norm(&mut self, prefix: &str, n: &LayerNorm) -> Result<()> {
        self.param(&format!("{prefix}.weight"), &n.weight)?;
        match &n.bias {
            Some(b) => self.param(&format!("{prefix}.bias"), b),
            None => Ok(()),
        }
    }

    fn block(&mut self, prefix: &str, b: &Block) -> Result<()> {
        self.layer_norm(&format!("{prefix}.norm1"), &b.norm1)?;
        self.linear(&format!("{prefix}.attn.qkv"), &b.qkv)?;
        self.linear(&format!("{prefix}.attn.proj"), &b.proj)?;
        self.layer_norm(&format!("{prefix}.norm2"), &b.norm2)?;
        self.linear(&format!("{prefix}.mlp.fc1"), &b.fc1)?;
        self.linear(&format!("{prefix}.mlp.fc2"), &b.fc2)
    }

    fn transformer(&mut self, m: &MarTransformer) -> Result<()> {
        self.param("class_emb.weight", &m.class_emb)?;
        self.param("fake_latent", &m.fake_latent)?;
        self.linear("z_proj", &m.z_proj)?;
        self.layer_norm("z_proj_ln", &m.z_proj_ln)?;
        self.param("encoder_pos_embed_learned", &m.encoder_pos_embed)?;
        for (i, b) in m.encoder_blocks.iter().enumerate() {
            self.block(&format!("encoder_blocks.{i}"), b)?;
        }
        self.layer_norm("encoder_norm", &m.encoder_norm)?;
        self.linear("decoder_embed", &m.decoder_embed)?;
        self.param("mask_token", &m.mask_token)?;
        self.param("decoder_pos_embed_learned", &m.decoder_pos_embed)?;
        for (i, b) in m.decoder_blocks.iter().enumerate() {
            self.block(&format!("decoder_blocks.{i}"), b)?;
        }
        self.layer_norm("decoder_norm", &m.decoder_norm)?;
        self.param("diffusion_pos_embed_learned", &m.diffusion_pos_embed)
    }

    fn head(&mut self, h: &DiffusionHead) -> Result<()> {
        let p = "diffloss.net";
        self.linear(&format!("{p}.time_embed.mlp.0"), &h.time_mlp_in)?;
        self.linear(&format!("{p}.time_embed.mlp.2"), &h.time_mlp_out)?;
        self.linear(&format!("{p}.cond_embed"), &h.cond_embed)?;
        self.linear(&format!("{p}.input_proj"), &h.input_proj)?;
        for (j, b) in h.res_blocks.iter().enumerate() {
            let r = format!("{p}.res_blocks.{j}");
            self.layer_norm(&format!("{r}.in_ln"), &b.in_ln)?;
            self.linear(&format!("{r}.mlp.0"), &b.mlp_in)?;
            self.linear(&format!("{r}.mlp.2"), &b.mlp_out)?;
            self.linear(&format!("{r}.adaLN_modulation.1"), &b.ada_ln)?;
        }
        // `final_layer.norm_final` has no affine parameters: nothing to export.
        self.linear(
            &format!("{p}.final_layer.adaLN_modulation.1"),
            &h.final_ada_ln,
        )?;
        self.linear(&format!("{p}.final_layer.linear"), &h.final_linear)
    }
}

impl Model {
    /// The transformer and head tensors under the official state-dict keys (`model_ema` /
    /// `model` layout of `checkpoint-last.pth`), read back to the host. The decoder is not
    /// included (the VAE has its own file; the patch decoder has no tensors).
    pub fn state_dict(&self, source_name: &str) -> Result<WeightMap> {
        let mut c = Collector {
            tensors: BTreeMap::new(),
        };
        c.transformer(&self.transformer)?;
        c.head(&self.head)?;
        Ok(WeightMap {
            source_name: source_name.to_string(),
            tensors: c.tensors,
        })
    }
}
