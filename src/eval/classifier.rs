//! The quality yardstick's eyes: a small Fashion-MNIST classifier (an MLP 784 → 256 → 128 → 10
//! with ReLU) trained by the project. Its accuracy on generated images says whether they look
//! like their class; its 128-wide penultimate layer is the feature space of the Fréchet distance.

use crate::error::{DisaError, Result};
use crate::noise::SeededNoise;
use crate::weights::{HostTensor, WeightMap};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::HashMap;

/// Input side: the classifier sees the original 28×28 images.
pub const SIDE: usize = 28;
/// Input width (`28 · 28`).
pub const INPUT: usize = SIDE * SIDE;
/// Width of the feature layer.
pub const FEATURES: usize = 128;
const HIDDEN: usize = 256;
/// Number of classes.
pub const CLASSES: usize = 10;
const FORMAT: &str = "disa-classifier";

/// The MLP.
#[derive(Module, Debug)]
pub struct Classifier {
    pub fc1: Linear,
    pub fc2: Linear,
    pub fc3: Linear,
}

fn layer(rng: &mut SeededNoise, d_in: usize, d_out: usize, device: &Device) -> Linear {
    // Kaiming-uniform for ReLU layers.
    let bound = (6.0 / d_in as f64).sqrt();
    let w: Vec<f32> = (0..d_in * d_out)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
        .collect();
    Linear {
        weight: Param::from_tensor(Tensor::from_data(TensorData::new(w, [d_in, d_out]), device)),
        bias: Some(Param::from_tensor(Tensor::zeros([d_out], device))),
    }
}

/// Pixels (`u8`, row-major 28×28 per image) → `[N, 784]` inputs in [−1, 1].
pub fn inputs(pixels: &[u8], device: &Device) -> Result<Tensor<2>> {
    if pixels.is_empty() || !pixels.len().is_multiple_of(INPUT) {
        return Err(DisaError::InvalidSetting(format!(
            "{} pixels do not make whole 28×28 images",
            pixels.len()
        )));
    }
    let v: Vec<f32> = pixels.iter().map(|&p| p as f32 / 127.5 - 1.0).collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [pixels.len() / INPUT, INPUT]),
        device,
    ))
}

fn read(t: Tensor<2>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading classifier output: {e:?}")))
}

impl Classifier {
    /// A freshly initialized classifier.
    pub fn new(seed: u64, device: &Device) -> Self {
        let mut rng = SeededNoise::new(seed);
        Self {
            fc1: layer(&mut rng, INPUT, HIDDEN, device),
            fc2: layer(&mut rng, HIDDEN, FEATURES, device),
            fc3: layer(&mut rng, FEATURES, CLASSES, device),
        }
    }

    /// # Shapes
    /// `x [N, 784]` → `[N, 128]`.
    pub fn features(&self, x: Tensor<2>) -> Tensor<2> {
        relu(self.fc2.forward(relu(self.fc1.forward(x))))
    }

    /// # Shapes
    /// `x [N, 784]` → logits `[N, 10]`.
    pub fn forward(&self, x: Tensor<2>) -> Tensor<2> {
        self.fc3.forward(self.features(x))
    }

    /// Predicted classes and features of 28×28 `u8` images, in batches.
    pub fn predict(&self, pixels: &[u8], device: &Device) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut classes = Vec::new();
        let mut features = Vec::new();
        for chunk in pixels.chunks(INPUT * 1000) {
            let f = self.features(inputs(chunk, device)?);
            let logits = read(self.fc3.forward(f.clone()))?;
            classes.extend(logits.chunks_exact(CLASSES).map(|row| {
                row.iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                        if v > best.1 { (i, v) } else { best }
                    })
                    .0
            }));
            features.extend(read(f)?);
        }
        Ok((classes, features))
    }

    /// Fraction of images classified as their label.
    pub fn accuracy(&self, pixels: &[u8], labels: &[u8], device: &Device) -> Result<f64> {
        let (pred, _) = self.predict(pixels, device)?;
        if pred.len() != labels.len() {
            return Err(DisaError::InvalidSetting(format!(
                "{} images but {} labels",
                pred.len(),
                labels.len()
            )));
        }
        let right = pred
            .iter()
            .zip(labels)
            .filter(|(p, l)| **p == **l as usize)
            .count();
        Ok(right as f64 / labels.len() as f64)
    }

    /// Serializes to safetensors (Burn's `[in, out]` layout), marked `format: disa-classifier`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors = std::collections::BTreeMap::new();
        for (name, l) in [("fc1", &self.fc1), ("fc2", &self.fc2), ("fc3", &self.fc3)] {
            let w = l.weight.val();
            let shape = w.dims().to_vec();
            let values = read(w)?;
            tensors.insert(format!("{name}.weight"), HostTensor { shape, values });
            let b = l
                .bias
                .as_ref()
                .expect("classifier layers have biases")
                .val();
            let len = b.dims()[0];
            let values = read(b.reshape([1, len]))?;
            tensors.insert(
                format!("{name}.bias"),
                HostTensor {
                    shape: vec![len],
                    values,
                },
            );
        }
        let map = WeightMap {
            source_name: "classifier".into(),
            tensors,
        };
        map.to_safetensors_bytes(HashMap::from([("format".to_string(), FORMAT.to_string())]))
    }

    /// Loads a classifier written by [`Classifier::to_bytes`].
    pub fn from_bytes(source_name: &str, bytes: &[u8], device: &Device) -> Result<Self> {
        let bad = |reason: String| DisaError::WeightFormat {
            source_name: source_name.to_string(),
            reason,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let format = meta.metadata().as_ref().and_then(|m| m.get("format"));
        if format.map(String::as_str) != Some(FORMAT) {
            return Err(bad(format!("not a {FORMAT} file")));
        }
        let w = WeightMap::from_safetensors_bytes(source_name, bytes)?;
        let lin = |name: &str, d_in: usize, d_out: usize| -> Result<Linear> {
            let weight = w.get(&format!("{name}.weight"), &[d_in, d_out])?;
            let bias = w.get(&format!("{name}.bias"), &[d_out])?;
            Ok(Linear {
                weight: Param::from_tensor(Tensor::from_data(
                    TensorData::new(weight.values.clone(), [d_in, d_out]),
                    device,
                )),
                bias: Some(Param::from_tensor(Tensor::from_data(
                    TensorData::new(bias.values.clone(), [d_out]),
                    device,
                ))),
            })
        };
        Ok(Self {
            fc1: lin("fc1", INPUT, HIDDEN)?,
            fc2: lin("fc2", HIDDEN, FEATURES)?,
            fc3: lin("fc3", FEATURES, CLASSES)?,
        })
    }
}

/// Trains a classifier with Adam and cross-entropy on shuffled mini-batches. `device` must have
/// autodiff enabled. `progress(epoch, batch, batches, loss)` is called after every batch.
#[cfg(feature = "train")]
pub fn train(
    pixels: &[u8],
    labels: &[u8],
    epochs: usize,
    batch: usize,
    seed: u64,
    device: &Device,
    mut progress: impl FnMut(usize, usize, usize, f32),
) -> Result<Classifier> {
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::activation::log_softmax;
    let n = labels.len();
    if n == 0 || pixels.len() != n * INPUT || batch == 0 {
        return Err(DisaError::InvalidSetting(
            "classifier training needs 28×28 images, one label each, batch ≥ 1".into(),
        ));
    }
    let mut model = Classifier::new(seed, device);
    let mut optim = AdamConfig::new().init();
    let mut rng = SeededNoise::new(seed ^ 0xC1A5);
    let batches = n.div_ceil(batch);
    for epoch in 0..epochs {
        let order = crate::noise::NoiseSource::permutation(&mut rng, n)?;
        for (bi, idx) in order.chunks(batch).enumerate() {
            let px: Vec<u8> = idx
                .iter()
                .flat_map(|&i| &pixels[i * INPUT..(i + 1) * INPUT])
                .copied()
                .collect();
            let mut onehot = vec![0.0f32; idx.len() * CLASSES];
            for (r, &i) in idx.iter().enumerate() {
                onehot[r * CLASSES + labels[i] as usize] = 1.0;
            }
            let target =
                Tensor::<2>::from_data(TensorData::new(onehot, [idx.len(), CLASSES]), device);
            let logp = log_softmax(model.forward(inputs(&px, device)?), 1);
            let loss = (logp * target).sum_dim(1).mean().neg();
            let value = loss.clone().detach().into_data().try_to_vec::<f32>();
            let value = value.map_err(|e| DisaError::Device(format!("{e:?}")))?[0];
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(1e-3, model, grads);
            progress(epoch, bi + 1, batches, value);
        }
    }
    Ok(model)
}
