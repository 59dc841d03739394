//! The quality yardstick: generate images per class, then score them with the project's
//! Fashion-MNIST CNN — accuracy against the conditioning class and the Fréchet distance to real
//! training images in the CNN's penultimate-layer feature space, each with a bootstrap
//! confidence interval — next to the cost (head calls, token·steps, wall time). The same
//! scoring of real test images gives the floor a generator can reach at that sample size.

pub mod bootstrap;
pub mod classifier;
pub mod frechet;

use crate::error::{DisaError, Result};
use crate::image::to_u8;
use crate::noise::SeededNoise;
use crate::sampler::{Generation, LoadedModel, Request};
use bootstrap::{Bootstrap, Estimate};
use classifier::{Classifier, FEATURES, INPUT, SIDE};
use frechet::{FrechetReference, Gaussian};
use std::sync::Arc;

/// The classifier, the reference feature statistics and the bootstrap: everything that scores
/// a set of images.
pub struct Yardstick {
    pub classifier: Classifier,
    /// The Gaussian of the reference images' features (real training images).
    pub reference: FrechetReference,
    /// Number of reference images.
    pub reference_images: usize,
    pub bootstrap: Bootstrap,
}

/// Accuracy and Fréchet distance of a set of images, with their intervals.
#[derive(Clone, Copy, Debug)]
pub struct Score {
    pub images: usize,
    /// Fraction of images the classifier assigns to their label.
    pub accuracy: Estimate,
    /// Fréchet distance to the reference features.
    pub frechet: Estimate,
}

impl Yardstick {
    /// Fits the reference Gaussian to the features of `reference` (28×28 `u8` images).
    pub fn new(
        classifier: Classifier,
        reference: &[u8],
        bootstrap: Bootstrap,
        device: &burn::tensor::Device,
    ) -> Result<Self> {
        bootstrap.validate()?;
        let (_, features) = classifier.predict(reference, device)?;
        let gaussian = Gaussian::fit(&features, FEATURES)?;
        Ok(Self {
            classifier,
            reference: FrechetReference::new(gaussian),
            reference_images: reference.len() / INPUT,
            bootstrap,
        })
    }

    /// Scores 28×28 `u8` images against their labels. Both figures are bootstrapped over the
    /// same resamples of the images; the reference stays fixed.
    pub fn score(
        &self,
        pixels: &[u8],
        labels: &[usize],
        device: &burn::tensor::Device,
    ) -> Result<Score> {
        let (predicted, features) = self.classifier.predict(pixels, device)?;
        if predicted.len() != labels.len() {
            return Err(DisaError::InvalidSetting(format!(
                "{} images but {} labels",
                predicted.len(),
                labels.len()
            )));
        }
        if labels.len() < 2 {
            return Err(DisaError::InvalidSetting(
                "scoring needs at least two images (a covariance)".into(),
            ));
        }
        let right: Vec<f64> = predicted
            .iter()
            .zip(labels)
            .map(|(p, l)| f64::from(u8::from(p == l)))
            .collect();
        let n = labels.len();
        let accuracy = self.bootstrap.estimate(n, |idx| {
            Ok(idx.iter().map(|&i| right[i]).sum::<f64>() / idx.len() as f64)
        })?;
        // The bias shift can carry a bound a hair past 0 or 1; a fraction stays a fraction.
        let accuracy = Estimate {
            low: accuracy.low.max(0.0),
            high: accuracy.high.min(1.0),
            ..accuracy
        };
        let frechet = self.bootstrap.estimate(n, |idx| {
            self.reference
                .distance(&Gaussian::fit_rows(&features, FEATURES, idx)?)
        })?;
        Ok(Score {
            images: n,
            accuracy,
            frechet,
        })
    }
}

/// `per_class` images of every class, chosen at random (seeded) among those labelled so: their
/// indices, grouped by class in class order. An error if a class has too few.
pub fn balanced_subset(
    labels: &[u8],
    classes: usize,
    per_class: usize,
    seed: u64,
) -> Result<Vec<usize>> {
    let mut rng = SeededNoise::new(seed);
    let mut out = Vec::with_capacity(classes * per_class);
    for c in 0..classes {
        let mut members: Vec<usize> = (0..labels.len())
            .filter(|&i| labels[i] as usize == c)
            .collect();
        if members.len() < per_class {
            return Err(DisaError::InvalidSetting(format!(
                "{per_class} images of class {c} asked for, the set has {}",
                members.len()
            )));
        }
        // A partial Fisher–Yates shuffle picks per_class of them.
        for k in 0..per_class {
            let j = k + rng.below((members.len() - k) as u64) as usize;
            members.swap(k, j);
        }
        out.extend_from_slice(&members[..per_class]);
    }
    Ok(out)
}

/// The pixels of the images `indices` of a set of 28×28 images.
pub fn gather(pixels: &[u8], indices: &[usize]) -> Vec<u8> {
    indices
        .iter()
        .flat_map(|&i| &pixels[i * INPUT..(i + 1) * INPUT])
        .copied()
        .collect()
}

/// One row of the eval table.
#[derive(Clone, Debug)]
pub struct EvalRow {
    pub schedule: String,
    pub ar_steps: usize,
    pub head_calls: usize,
    pub token_steps: usize,
    /// Wall time of sampling and decoding, seconds, all images.
    pub seconds: f64,
    pub score: Score,
}

/// Generates with `request` (one image per label), returns the images as 28×28 `u8` crops
/// (the centre of the 32×32 padded canvas, as the classifier was trained).
pub fn generate_crops(
    generator: &Arc<LoadedModel>,
    request: Request,
    seed: u64,
) -> Result<Vec<u8>> {
    let mut generation =
        Generation::new(generator.clone(), request, Box::new(SeededNoise::new(seed)))?;
    generation.run_to_end()?;
    let decoded = generation
        .decode()
        .ok_or_else(|| DisaError::Config("the model has no image decoder".into()))?;
    let [b, ch, h, w] = decoded.dims();
    if ch != 1 || h < SIDE || w < SIDE {
        return Err(DisaError::Config(format!(
            "eval needs grayscale images of at least 28×28; this model makes {ch}×{h}×{w}"
        )));
    }
    let values = decoded
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading images back: {e:?}")))?;
    let (oy, ox) = ((h - SIDE) / 2, (w - SIDE) / 2);
    let mut out = Vec::with_capacity(b * SIDE * SIDE);
    for img in values.chunks_exact(h * w) {
        for y in 0..SIDE {
            for x in 0..SIDE {
                out.push(to_u8(img[(y + oy) * w + x + ox]));
            }
        }
    }
    Ok(out)
}

/// Settings shared by every row of an evaluation.
#[derive(Clone, Debug)]
pub struct EvalSettings {
    /// Images per class.
    pub per_class: usize,
    /// Images per generation call.
    pub batch: usize,
    pub seed: u64,
}

/// Generates `per_class` images of every class with `template` (its labels are replaced),
/// then scores them. `progress(done, total)` is called after every batch.
pub fn evaluate(
    generator: &Arc<LoadedModel>,
    yardstick: &Yardstick,
    template: &Request,
    settings: &EvalSettings,
    mut progress: impl FnMut(usize, usize),
) -> Result<EvalRow> {
    if settings.per_class == 0 || settings.batch == 0 {
        return Err(DisaError::InvalidSetting(
            "images per class and batch must be at least 1".into(),
        ));
    }
    let classes = generator.config.class_num;
    let labels: Vec<usize> = (0..classes)
        .flat_map(|c| std::iter::repeat_n(c, settings.per_class))
        .collect();
    let plan = template.plan(&generator.config)?;
    let start = crate::sampler::now_ms();
    let mut pixels = Vec::with_capacity(labels.len() * SIDE * SIDE);
    for (i, chunk) in labels.chunks(settings.batch).enumerate() {
        let request = Request {
            labels: chunk.iter().map(|&c| Some(c)).collect(),
            ..template.clone()
        };
        pixels.extend(generate_crops(
            generator,
            request,
            settings.seed.wrapping_add(i as u64),
        )?);
        progress(
            (i * settings.batch + chunk.len()).min(labels.len()),
            labels.len(),
        );
    }
    let seconds = (crate::sampler::now_ms() - start) / 1000.0;
    let device = burn::tensor::Device::flex();
    Ok(EvalRow {
        schedule: template.schedule.to_string(),
        ar_steps: template.ar_steps,
        head_calls: plan.head_calls(),
        token_steps: plan.token_steps(),
        seconds,
        score: yardstick.score(&pixels, &labels, &device)?,
    })
}
