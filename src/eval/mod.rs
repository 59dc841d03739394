//! The quality yardstick: generate images per class, then score them with the project's
//! Fashion-MNIST classifier — accuracy against the conditioning class and the Fréchet distance to
//! the test set in the classifier's feature space — next to the cost (head calls, token·steps,
//! wall time).

pub mod classifier;
pub mod frechet;

use crate::error::{DisaError, Result};
use crate::image::to_u8;
use crate::noise::SeededNoise;
use crate::sampler::{Generation, Generator, Request};
use classifier::{Classifier, SIDE};
use frechet::{Gaussian, frechet_distance};
use std::sync::Arc;

/// One row of the eval table.
#[derive(Clone, Debug)]
pub struct EvalRow {
    pub schedule: String,
    pub ar_steps: usize,
    pub images: usize,
    pub head_calls: usize,
    pub token_steps: usize,
    /// Wall time of sampling and decoding, seconds, all images.
    pub seconds: f64,
    /// Fraction of images the classifier assigns to their conditioning class.
    pub accuracy: f64,
    /// Fréchet distance to the reference features.
    pub frechet: f64,
}

/// Generates with `request` (one image per label), returns the images as 28×28 `u8` crops
/// (the centre of the 32×32 padded canvas, as the classifier was trained).
pub fn generate_crops(generator: &Arc<Generator>, request: Request, seed: u64) -> Result<Vec<u8>> {
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
    generator: &Arc<Generator>,
    classifier: &Classifier,
    reference: &Gaussian,
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
    let (predicted, features) = classifier.predict(&pixels, &device)?;
    let right = predicted
        .iter()
        .zip(&labels)
        .filter(|(p, l)| p == l)
        .count();
    let generated = Gaussian::fit(&features, classifier::FEATURES)?;
    Ok(EvalRow {
        schedule: template.schedule.to_string(),
        ar_steps: template.ar_steps,
        images: labels.len(),
        head_calls: plan.head_calls(),
        token_steps: plan.token_steps(),
        seconds,
        accuracy: right as f64 / labels.len() as f64,
        frechet: frechet_distance(&generated, reference)?,
    })
}
