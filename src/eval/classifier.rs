//! The quality yardstick's eyes: a small Fashion-MNIST CNN trained by the project
//! (`disa train-classifier`). Two 3×3 convolutions with ReLU and 2×2 max pooling, a ReLU linear
//! layer of [`FEATURES`] units, and a linear layer to the ten classes:
//!
//! `[N,1,28,28] → conv 3×3 (c₁) → pool → [N,c₁,14,14] → conv 3×3 (c₂) → pool → [N,c₂,7,7]
//! → linear (FEATURES) → linear (10)`.
//!
//! Its accuracy on generated images says whether they look like their class; its penultimate
//! layer (the [`FEATURES`]-wide ReLU layer) is the feature space of the Fréchet distance. The
//! channel widths are read from the file, so wider variants load with the same code.

use crate::error::{DisaError, Result};
use crate::noise::SeededNoise;
use crate::weights::{HostTensor, WeightMap};
use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::tensor::activation::relu;
use burn::tensor::module::max_pool2d;
use burn::tensor::ops::MaxPoolOptions;
use burn::tensor::{Device, Tensor, TensorData};
use std::collections::HashMap;

/// Input side: the classifier sees the original 28×28 images.
pub const SIDE: usize = 28;
/// Pixels per image (`28 · 28`).
pub const INPUT: usize = SIDE * SIDE;
/// Width of the feature (penultimate) layer.
pub const FEATURES: usize = 128;
/// Number of classes.
pub const CLASSES: usize = 10;
/// Side of the maps after the two poolings (28 → 14 → 7).
const POOLED: usize = SIDE / 4;
/// The `format` metadata of a classifier file. The earlier MLP's files (`disa-classifier`)
/// are refused with a message saying so.
const FORMAT: &str = "disa-classifier-cnn";
const OLD_FORMAT: &str = "disa-classifier";
/// Fashion-MNIST's pixel mean and standard deviation (training set, pixels in [0, 1]):
/// inputs are standardized with them.
const PIXEL_MEAN: f32 = 0.2860;
const PIXEL_STD: f32 = 0.3530;

/// Channel widths of the two convolutions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Widths {
    pub conv1: usize,
    pub conv2: usize,
}

impl Default for Widths {
    /// The shipped classifier's widths.
    fn default() -> Self {
        Self {
            conv1: 16,
            conv2: 32,
        }
    }
}

/// The CNN.
#[derive(Module, Debug)]
pub struct Classifier {
    pub conv1: Conv2d,
    pub conv2: Conv2d,
    /// `[c₂·7·7, FEATURES]`: the feature layer.
    pub fc1: Linear,
    /// `[FEATURES, 10]`: the logits.
    pub fc2: Linear,
}

/// Uniform values in ±√(gain / fan_in): gain 6 is Kaiming-uniform for layers followed by a
/// ReLU; the logits layer takes gain 1 so the first losses are near ln 10.
fn kaiming(rng: &mut SeededNoise, count: usize, fan_in: usize, gain: f64) -> Vec<f32> {
    let bound = (gain / fan_in as f64).sqrt();
    (0..count)
        .map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32)
        .collect()
}

fn linear(weight: Vec<f32>, bias: Vec<f32>, d_in: usize, d_out: usize, device: &Device) -> Linear {
    Linear {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [d_in, d_out]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [d_out]),
            device,
        ))),
    }
}

/// A 3×3 convolution with padding 1 (the side is kept); `weight` is `[c_out, c_in, 3, 3]`.
fn conv(weight: Vec<f32>, bias: Vec<f32>, c_in: usize, c_out: usize, device: &Device) -> Conv2d {
    Conv2d {
        weight: Param::from_tensor(Tensor::from_data(
            TensorData::new(weight, [c_out, c_in, 3, 3]),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::from_data(
            TensorData::new(bias, [c_out]),
            device,
        ))),
        stride: [1, 1],
        kernel_size: [3, 3],
        dilation: [1, 1],
        groups: 1,
        padding: PaddingConfig2d::Explicit(1, 1, 1, 1),
    }
}

/// Pixels (`u8`, row-major 28×28 per image) → `[N, 1, 28, 28]` standardized inputs.
pub fn inputs(pixels: &[u8], device: &Device) -> Result<Tensor<4>> {
    if pixels.is_empty() || !pixels.len().is_multiple_of(INPUT) {
        return Err(DisaError::InvalidSetting(format!(
            "{} pixels do not make whole 28×28 images",
            pixels.len()
        )));
    }
    let v: Vec<f32> = pixels
        .iter()
        .map(|&p| (p as f32 / 255.0 - PIXEL_MEAN) / PIXEL_STD)
        .collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [pixels.len() / INPUT, 1, SIDE, SIDE]),
        device,
    ))
}

fn read<const D: usize>(t: Tensor<D>) -> Result<Vec<f32>> {
    t.into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading classifier output: {e:?}")))
}

/// The index of the largest value of each row of `CLASSES` logits.
fn argmax_rows(logits: &[f32]) -> Vec<usize> {
    logits
        .chunks_exact(CLASSES)
        .map(|row| {
            row.iter()
                .enumerate()
                .fold((0, f32::NEG_INFINITY), |best, (i, &v)| {
                    if v > best.1 { (i, v) } else { best }
                })
                .0
        })
        .collect()
}

impl Classifier {
    /// A freshly initialized classifier (seeded Kaiming-uniform weights, zero biases).
    pub fn new(seed: u64, widths: Widths, device: &Device) -> Self {
        let mut rng = SeededNoise::new(seed);
        let Widths {
            conv1: c1,
            conv2: c2,
        } = widths;
        let flat = c2 * POOLED * POOLED;
        Self {
            conv1: conv(
                kaiming(&mut rng, c1 * 9, 9, 6.0),
                vec![0.0; c1],
                1,
                c1,
                device,
            ),
            conv2: conv(
                kaiming(&mut rng, c2 * c1 * 9, c1 * 9, 6.0),
                vec![0.0; c2],
                c1,
                c2,
                device,
            ),
            fc1: linear(
                kaiming(&mut rng, flat * FEATURES, flat, 6.0),
                vec![0.0; FEATURES],
                flat,
                FEATURES,
                device,
            ),
            fc2: linear(
                kaiming(&mut rng, FEATURES * CLASSES, FEATURES, 1.0),
                vec![0.0; CLASSES],
                FEATURES,
                CLASSES,
                device,
            ),
        }
    }

    /// The channel widths.
    pub fn widths(&self) -> Widths {
        let [c1, ..] = self.conv1.weight.dims();
        let [c2, ..] = self.conv2.weight.dims();
        Widths {
            conv1: c1,
            conv2: c2,
        }
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.num_params()
    }

    /// The penultimate layer.
    ///
    /// # Shapes
    /// `x [N, 1, 28, 28]` → `[N, FEATURES]`.
    pub fn features(&self, x: Tensor<4>) -> Tensor<2> {
        let pool = || MaxPoolOptions::new([2, 2]);
        let x = max_pool2d(relu(self.conv1.forward(x)), pool());
        let x = max_pool2d(relu(self.conv2.forward(x)), pool());
        relu(self.fc1.forward(x.flatten(1, 3)))
    }

    /// # Shapes
    /// `x [N, 1, 28, 28]` → logits `[N, 10]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<2> {
        self.fc2.forward(self.features(x))
    }

    /// Predicted classes and features (`FEATURES` per image, row-major) of 28×28 `u8` images,
    /// in batches of 500.
    pub fn predict(&self, pixels: &[u8], device: &Device) -> Result<(Vec<usize>, Vec<f32>)> {
        let mut classes = Vec::new();
        let mut features = Vec::new();
        if pixels.is_empty() {
            return Err(DisaError::InvalidSetting("no images to classify".into()));
        }
        for chunk in pixels.chunks(INPUT * 500) {
            let f = self.features(inputs(chunk, device)?);
            classes.extend(argmax_rows(&read(self.fc2.forward(f.clone()))?));
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

    /// Serializes to safetensors (convolutions `[c_out, c_in, 3, 3]` as PyTorch, linear layers
    /// in Burn's `[in, out]`), marked `format: disa-classifier-cnn`.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut tensors = std::collections::BTreeMap::new();
        let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
            tensors.insert(name, HostTensor { shape, values });
        };
        for (name, c) in [("conv1", &self.conv1), ("conv2", &self.conv2)] {
            let w = c.weight.val();
            put(format!("{name}.weight"), w.dims().to_vec(), read(w)?);
            let b = c
                .bias
                .as_ref()
                .expect("classifier layers have biases")
                .val();
            put(format!("{name}.bias"), b.dims().to_vec(), read(b)?);
        }
        for (name, l) in [("fc1", &self.fc1), ("fc2", &self.fc2)] {
            let w = l.weight.val();
            put(format!("{name}.weight"), w.dims().to_vec(), read(w)?);
            let b = l
                .bias
                .as_ref()
                .expect("classifier layers have biases")
                .val();
            put(format!("{name}.bias"), b.dims().to_vec(), read(b)?);
        }
        let map = WeightMap {
            source_name: "classifier".into(),
            tensors,
        };
        map.to_safetensors_bytes(HashMap::from([("format".to_string(), FORMAT.to_string())]))
    }

    /// Loads a classifier written by [`Classifier::to_bytes`]; the widths come from the file.
    pub fn from_bytes(source_name: &str, bytes: &[u8], device: &Device) -> Result<Self> {
        let bad = |reason: String| DisaError::WeightFormat {
            source_name: source_name.to_string(),
            reason,
        };
        let (_, meta) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| bad(format!("not a safetensors file ({e})")))?;
        let format = meta.metadata().as_ref().and_then(|m| m.get("format"));
        match format.map(String::as_str) {
            Some(FORMAT) => {}
            Some(OLD_FORMAT) => {
                return Err(bad(format!(
                    "an MLP classifier from an earlier version; `disa eval` now scores with the \
                     CNN ({FORMAT}): train one with `disa train-classifier`"
                )));
            }
            _ => return Err(bad(format!("not a {FORMAT} file"))),
        }
        let w = WeightMap::from_safetensors_bytes(source_name, bytes)?;
        let channels = |name: &str| -> Result<usize> {
            match w.shape(&format!("{name}.weight")) {
                Some(&[c_out, _, 3, 3]) if (1..=1024).contains(&c_out) => Ok(c_out),
                Some(s) => Err(bad(format!(
                    "{name}.weight has shape {s:?}, not [channels (1..=1024), in, 3, 3]"
                ))),
                None => Err(bad(format!("{name}.weight is missing"))),
            }
        };
        let (c1, c2) = (channels("conv1")?, channels("conv2")?);
        let values = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            Ok(w.get(name, shape)?.values.clone())
        };
        let flat = c2 * POOLED * POOLED;
        Ok(Self {
            conv1: conv(
                values("conv1.weight", &[c1, 1, 3, 3])?,
                values("conv1.bias", &[c1])?,
                1,
                c1,
                device,
            ),
            conv2: conv(
                values("conv2.weight", &[c2, c1, 3, 3])?,
                values("conv2.bias", &[c2])?,
                c1,
                c2,
                device,
            ),
            fc1: linear(
                values("fc1.weight", &[flat, FEATURES])?,
                values("fc1.bias", &[FEATURES])?,
                flat,
                FEATURES,
                device,
            ),
            fc2: linear(
                values("fc2.weight", &[FEATURES, CLASSES])?,
                values("fc2.bias", &[CLASSES])?,
                FEATURES,
                CLASSES,
                device,
            ),
        })
    }
}

/// How [`train_with`] trains.
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub epochs: usize,
    pub batch: usize,
    /// Adam's peak learning rate; it decays to 0 along a cosine over the run.
    pub learning_rate: f64,
    pub seed: u64,
    /// Random horizontal flips (garments are near-symmetric) and shifts of up to 2 pixels of
    /// the training images.
    pub augment: bool,
    pub widths: Widths,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            epochs: 8,
            batch: 128,
            learning_rate: 1e-3,
            seed: 0,
            augment: false,
            widths: Widths::default(),
        }
    }
}

/// What [`train_with`] reports after every batch.
#[derive(Clone, Copy, Debug)]
pub struct TrainProgress {
    pub epoch: usize,
    /// Batches done in this epoch.
    pub batch: usize,
    pub batches: usize,
    pub loss: f32,
    pub learning_rate: f64,
}

/// `image` (28×28), flipped left–right if `flip`, shifted by `(dy, dx)` with zero fill.
fn augmented(image: &[u8], flip: bool, dy: isize, dx: isize, out: &mut Vec<u8>) {
    let side = SIDE as isize;
    for y in 0..side {
        for x in 0..side {
            let (sy, sx) = (y - dy, x - dx);
            let sx = if flip { side - 1 - sx } else { sx };
            let inside = (0..side).contains(&sy) && (0..side).contains(&sx);
            out.push(if inside {
                image[(sy * side + sx) as usize]
            } else {
                0
            });
        }
    }
}

/// Trains a classifier with the defaults of [`TrainConfig`] (no augmentation) for `epochs`.
/// `device` must have autodiff enabled. `progress(epoch, batch, batches, loss)` is called
/// after every batch.
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
    let config = TrainConfig {
        epochs,
        batch,
        seed,
        ..TrainConfig::default()
    };
    train_with(pixels, labels, &config, None, device, |p, _| {
        progress(p.epoch, p.batch, p.batches, p.loss)
    })
}

/// Trains with Adam and cross-entropy on shuffled mini-batches, the learning rate on a cosine
/// from `config.learning_rate` to 0. Starts from `start` if given (fine-tuning a saved
/// classifier: the optimizer's moments start fresh), else from a seeded initialization.
/// `device` must have autodiff enabled. `progress` is called after every batch, with the model
/// after the last batch of each epoch.
#[cfg(feature = "train")]
pub fn train_with(
    pixels: &[u8],
    labels: &[u8],
    config: &TrainConfig,
    start: Option<Classifier>,
    device: &Device,
    mut progress: impl FnMut(TrainProgress, Option<&Classifier>),
) -> Result<Classifier> {
    use burn::optim::{AdamConfig, GradientsParams};
    use burn::tensor::activation::log_softmax;
    let n = labels.len();
    if n == 0 || pixels.len() != n * INPUT || config.batch == 0 {
        return Err(DisaError::InvalidSetting(
            "classifier training needs 28×28 images, one label each, batch ≥ 1".into(),
        ));
    }
    if let Some((i, l)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= CLASSES)
    {
        return Err(DisaError::InvalidSetting(format!(
            "label {l} of image {i} is not one of the {CLASSES} classes"
        )));
    }
    if !(config.learning_rate.is_finite() && config.learning_rate > 0.0) {
        return Err(DisaError::InvalidSetting(format!(
            "learning rate {} must be a positive number",
            config.learning_rate
        )));
    }
    let mut model = match start {
        // Rebuilt on the training device so its parameters are tracked leaves (moving the
        // module keeps them untracked).
        Some(m) => Classifier::from_bytes("the starting classifier", &m.to_bytes()?, device)?,
        None => Classifier::new(config.seed, config.widths, device),
    };
    let mut optim = AdamConfig::new().init();
    let mut rng = SeededNoise::new(config.seed ^ 0xC1A5);
    let batches = n.div_ceil(config.batch);
    let total = (config.epochs * batches).max(1);
    let mut px = Vec::with_capacity(config.batch * INPUT);
    for epoch in 0..config.epochs {
        let order = crate::noise::NoiseSource::permutation(&mut rng, n)?;
        for (bi, idx) in order.chunks(config.batch).enumerate() {
            px.clear();
            for &i in idx {
                let image = &pixels[i * INPUT..(i + 1) * INPUT];
                if config.augment {
                    let flip = rng.below(2) == 1;
                    let dy = rng.below(5) as isize - 2;
                    let dx = rng.below(5) as isize - 2;
                    augmented(image, flip, dy, dx, &mut px);
                } else {
                    px.extend_from_slice(image);
                }
            }
            let mut onehot = vec![0.0f32; idx.len() * CLASSES];
            for (r, &i) in idx.iter().enumerate() {
                onehot[r * CLASSES + labels[i] as usize] = 1.0;
            }
            let target =
                Tensor::<2>::from_data(TensorData::new(onehot, [idx.len(), CLASSES]), device);
            let logp = log_softmax(model.forward(inputs(&px, device)?), 1);
            let loss = (logp * target).sum_dim(1).mean().neg();
            let value = read(loss.clone().detach())?[0];
            if !value.is_finite() {
                return Err(DisaError::Internal(format!(
                    "classifier training diverged (loss {value} at epoch {}, batch {})",
                    epoch + 1,
                    bi + 1
                )));
            }
            let step = epoch * batches + bi;
            let lr = config.learning_rate
                * 0.5
                * (1.0 + (std::f64::consts::PI * step as f64 / total as f64).cos());
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            model = optim.step(lr, model, grads);
            let report = TrainProgress {
                epoch,
                batch: bi + 1,
                batches,
                loss: value,
                learning_rate: lr,
            };
            progress(report, (bi + 1 == batches).then_some(&model));
        }
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_round_trip() {
        let cpu = Device::flex();
        let model = Classifier::new(3, Widths { conv1: 4, conv2: 6 }, &cpu);
        let pixels: Vec<u8> = (0..3 * INPUT).map(|i| (i * 7 % 256) as u8).collect();
        let (classes, features) = model.predict(&pixels, &cpu).unwrap();
        assert_eq!(classes.len(), 3);
        assert_eq!(features.len(), 3 * FEATURES);
        assert!(features.iter().all(|f| f.is_finite() && *f >= 0.0));
        let back = Classifier::from_bytes("c", &model.to_bytes().unwrap(), &cpu).unwrap();
        assert_eq!(back.widths(), Widths { conv1: 4, conv2: 6 });
        assert_eq!(back.predict(&pixels, &cpu).unwrap(), (classes, features));
    }

    #[test]
    fn bad_inputs_are_errors() {
        let cpu = Device::flex();
        let model = Classifier::new(0, Widths { conv1: 2, conv2: 2 }, &cpu);
        assert!(model.predict(&[0; INPUT + 1], &cpu).is_err());
        assert!(model.predict(&[], &cpu).is_err());
        assert!(model.accuracy(&[0; INPUT], &[0, 1], &cpu).is_err());
        let bytes = model.to_bytes().unwrap();
        assert!(Classifier::from_bytes("c", &bytes[..bytes.len() - 1], &cpu).is_err());
        // A file of the old MLP format is named as such.
        let old = WeightMap::default()
            .to_safetensors_bytes(HashMap::from([(
                "format".to_string(),
                OLD_FORMAT.to_string(),
            )]))
            .unwrap();
        let err = Classifier::from_bytes("c", &old, &cpu).err().unwrap();
        assert!(err.to_string().contains("MLP"), "{err}");
    }

    #[test]
    fn augmentation_flips_and_shifts() {
        let image: Vec<u8> = (0..INPUT).map(|i| (i % 251) as u8).collect();
        let mut out = Vec::new();
        augmented(&image, false, 0, 0, &mut out);
        assert_eq!(out, image);
        out.clear();
        augmented(&image, true, 0, 0, &mut out);
        assert_eq!(out[0], image[SIDE - 1]);
        out.clear();
        augmented(&image, false, 1, 2, &mut out);
        assert_eq!(out[SIDE + 2], image[0]);
        assert_eq!(out[0], 0);
    }
}
