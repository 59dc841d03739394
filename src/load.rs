//! From a model file to a runnable [`LoadedModel`]: the one place that joins the file formats
//! ([`crate::weights`]), the model ([`crate::model`]), the fused GPU head ([`crate::gpu`]) and
//! the sampler, so that none of those layers needs one above it.

use crate::error::{DisaError, Result};
use crate::model::{ImageDecoder, Model, PatchDecoder, VaeDecoder};
use crate::sampler::LoadedModel;
use crate::weights::{Bundle, DecoderSpec, StoredForm, quant};
use burn::tensor::Device;
use std::collections::BTreeMap;

impl Bundle {
    /// Builds the model on `device`, keeping this bundle (its weights are copied).
    pub fn build(&self, device: &Device) -> Result<LoadedModel> {
        self.clone().into_generator(device)
    }

    /// Builds the model on `device`, moving each tensor out of the bundle as it is uploaded,
    /// so the weights are never held twice (the browser and the CLI load this way).
    pub fn into_generator(mut self, device: &Device) -> Result<LoadedModel> {
        let decoder = match (&self.decoder, self.vae.as_mut()) {
            (DecoderSpec::Vae, Some(vae)) => {
                Some(ImageDecoder::Vae(VaeDecoder::load(vae, device)?))
            }
            (DecoderSpec::Vae, None) => {
                return Err(DisaError::Config(
                    "the bundle declares a VAE decoder but holds no VAE tensors".into(),
                ));
            }
            (DecoderSpec::Patch { scale }, _) => {
                if !scale.is_finite() || *scale <= 0.0 {
                    return Err(DisaError::Config(format!(
                        "patch decoder scale {scale} must be positive"
                    )));
                }
                Some(ImageDecoder::Patch(PatchDecoder { scale: *scale }))
            }
            (DecoderSpec::None, _) => None,
        };
        // The fused head kernels read the head's weights as the file stored them, so they are
        // uploaded before the model takes the f32 values.
        let fused = crate::gpu::fused_head_for(device, &self.mar, &self.stored, &self.config);
        let fused_transformer =
            crate::gpu::fused_transformer_for(device, &self.mar, &self.stored, &self.config);
        // On a GPU, the Linear weights the file stored quantized stay so: the head's with the
        // file's bytes (kept for the fused kernels), the others with their integers and block
        // scales recovered exactly from the loaded values.
        let stored_bits = std::mem::take(&mut self.quantized);
        let mut head_bytes: BTreeMap<String, Vec<u8>> = std::mem::take(&mut self.stored)
            .into_iter()
            .filter_map(|(key, form)| match form {
                StoredForm::Quantized { bytes, .. } => Some((key, bytes)),
                StoredForm::F16 => None,
            })
            .collect();
        let quantized: crate::model::params::QuantizedWeights = Box::new(move |key, t, device| {
            let (Some(&bits), &[out, inp]) = (stored_bits.get(key), &t.shape[..]) else {
                return Ok(None);
            };
            let bytes = match head_bytes.remove(key) {
                Some(bytes) => Some(bytes),
                None => quant::requantize_exact(t, bits),
            };
            match bytes {
                Some(bytes) => quant::gpu_tensor(bytes, [out, inp], bits, device).map(Some),
                None => Ok(None),
            }
        });
        let model =
            Model::load_with_quantized(&mut self.mar, quantized, &self.config, decoder, device)?;
        Ok(LoadedModel::new(model, self.config, device.clone())
            .with_fused_head(fused)
            .with_fused_transformer(fused_transformer))
    }
}
