//! Reading a golden reference set (`manifest.json` + `case_*.safetensors`) produced by the
//! official PyTorch code. The folder comes from `DISA_REFERENCE`, defaulting to the copy of
//! `mar-tiny` committed under `tests/reference/`. Nothing here assumes that set's sizes.

#![allow(dead_code)]

use disa::model::{ImageDecoder, MarConfig, Model, VaeDecoder};
use disa::sampler::LoadedModel;
use disa::weights::WeightMap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The reference folder under test.
pub fn reference_dir() -> PathBuf {
    match std::env::var_os("DISA_REFERENCE") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/mar-tiny"),
    }
}

/// The parsed manifest.
pub fn manifest() -> serde_json::Value {
    let path = reference_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).expect("manifest.json is JSON")
}

/// A reference tensor of any dtype, with values widened to f64.
#[derive(Clone, Debug)]
pub struct RefTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f64>,
}

impl RefTensor {
    pub fn f32s(&self) -> Vec<f32> {
        self.values.iter().map(|&v| v as f32).collect()
    }
    pub fn i64s(&self) -> Vec<i64> {
        self.values.iter().map(|&v| v as i64).collect()
    }
    pub fn absmax(&self) -> f64 {
        self.values.iter().fold(0.0f64, |m, v| m.max(v.abs()))
    }
}

/// All tensors of one case file.
pub struct Case {
    pub name: String,
    pub tensors: BTreeMap<String, RefTensor>,
}

impl Case {
    pub fn load(file: &str) -> Self {
        let path = reference_dir().join(file);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let st = safetensors::SafeTensors::deserialize(&bytes).expect("valid safetensors");
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let d = view.data();
            let values: Vec<f64> = match format!("{:?}", view.dtype()).as_str() {
                "F32" => d
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                "F64" => d
                    .chunks_exact(8)
                    .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                "I64" => d
                    .chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()) as f64)
                    .collect(),
                "U8" | "BOOL" => d.iter().map(|&b| b as f64).collect(),
                other => panic!("{file}: tensor {name} has unsupported dtype {other}"),
            };
            tensors.insert(
                name,
                RefTensor {
                    shape: view.shape().to_vec(),
                    values,
                },
            );
        }
        Self {
            name: file.to_string(),
            tensors,
        }
    }

    pub fn get(&self, key: &str) -> &RefTensor {
        self.tensors
            .get(key)
            .unwrap_or_else(|| panic!("{}: no tensor {key}", self.name))
    }

    pub fn has(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }
}

/// Case files of a given `kind` in the manifest, with their metadata.
pub fn cases_of_kind(kind: &str) -> Vec<(String, serde_json::Value)> {
    let m = manifest();
    let files = m["files"].as_object().expect("manifest.files");
    files
        .iter()
        .filter(|(_, v)| v["kind"].as_str() == Some(kind))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// The model configuration of the set.
pub fn config() -> MarConfig {
    serde_json::from_value(manifest()["mar_ctor_kwargs"].clone()).expect("mar_ctor_kwargs")
}

/// The set's MAR weights (`model_ema` of the official checkpoint layout).
pub fn mar_weights() -> WeightMap {
    WeightMap::from_path(
        &reference_dir().join("checkpoint-last.pth"),
        Some("model_ema"),
    )
    .expect("checkpoint loads")
}

/// The set's official files (checkpoint, VAE and manifest beside it) as a bundle.
pub fn official() -> disa::weights::Bundle {
    disa::weights::ModelFiles {
        weights: reference_dir().join("checkpoint-last.pth"),
        state_dict: "model_ema".into(),
        ..Default::default()
    }
    .load()
    .expect("official files load")
}

/// The set's VAE weights.
pub fn vae_weights() -> WeightMap {
    WeightMap::from_path(&reference_dir().join("vae.ckpt"), Some("model")).expect("vae.ckpt loads")
}

/// A generator on `device` with the set's model and VAE.
pub fn generator(device: &burn::tensor::Device) -> std::sync::Arc<LoadedModel> {
    let config = config();
    let vae = VaeDecoder::load(&mut vae_weights(), device).expect("VAE builds");
    let model = Model::load(
        &mut mar_weights(),
        &config,
        Some(ImageDecoder::Vae(vae)),
        device,
    )
    .expect("model builds");
    std::sync::Arc::new(LoadedModel::new(model, config, device.clone()))
}

/// [`generator`] with the fused GPU kernels attached (wgpu devices), so generations run the
/// head's sampling loop on `shaders/head.wgsl` and the transformer on
/// `shaders/transformer.wgsl`.
pub fn generator_fused(device: &burn::tensor::Device) -> std::sync::Arc<LoadedModel> {
    let config = config();
    let vae = VaeDecoder::load(&mut vae_weights(), device).expect("VAE builds");
    let mut weights = mar_weights();
    let fused = disa::gpu::fused_head_for(device, &weights, &Default::default(), &config);
    let transformer =
        disa::gpu::fused_transformer_for(device, &weights, &Default::default(), &config);
    let model = Model::load(&mut weights, &config, Some(ImageDecoder::Vae(vae)), device)
        .expect("model builds");
    let g = LoadedModel::new(model, config, device.clone())
        .with_fused_head(fused)
        .with_fused_transformer(transformer);
    assert!(
        g.fused_head().is_some(),
        "no fused head: {}",
        g.fused_unavailable()
    );
    assert!(g.fused_transformer().is_some(), "no fused transformer");
    std::sync::Arc::new(g)
}

/// Max |a − b| over max |reference|: the scaled error the reference README asks for.
pub fn scaled_error(actual: &[f32], reference: &RefTensor) -> f64 {
    assert_eq!(actual.len(), reference.values.len(), "element count");
    let max_diff = actual
        .iter()
        .zip(&reference.values)
        .fold(0.0f64, |m, (&a, &r)| m.max((a as f64 - r).abs()));
    max_diff / reference.absmax().max(f64::MIN_POSITIVE)
}

/// Scaled tolerance for f32 outputs: the upper end of the manifest's hint
/// ("a port in f32 should match within ~1e-5..1e-4 · max|ref|").
pub const TOLERANCE: f64 = 1e-4;

/// Judges compared outputs: asserts each within [`TOLERANCE`] (parity), or records the worst
/// scaled error and the decoded images of every case (the storage report, where reduced
/// precision is expected to add error and the point is to measure how much).
#[derive(Default)]
pub struct Checker {
    record_only: bool,
    /// Case file → worst max|diff|/max|ref| over everything compared in it.
    pub worst: BTreeMap<String, f64>,
    /// Case (file, and sub-case where there are several) → decoded images, values in [−1, 1].
    pub images: BTreeMap<String, Vec<f32>>,
}

impl Checker {
    /// Parity: every comparison must be within [`TOLERANCE`].
    pub fn asserting() -> Self {
        Self::default()
    }

    /// Measurement: comparisons are recorded, never asserted; images are kept.
    pub fn recording() -> Self {
        Self {
            record_only: true,
            ..Self::default()
        }
    }

    /// Whether decoded images are wanted (only when measuring).
    pub fn wants_images(&self) -> bool {
        self.record_only
    }

    /// Compares `actual` with `reference` (scaled error) for `case`, naming `what`.
    pub fn close(&mut self, case: &str, what: &str, actual: &[f32], reference: &RefTensor) {
        let err = scaled_error(actual, reference);
        self.scaled(case, what, err, reference.absmax());
    }

    /// Takes a scaled error computed by the caller.
    pub fn scaled(&mut self, case: &str, what: &str, err: f64, absmax: f64) {
        let worst = self.worst.entry(case.to_string()).or_insert(0.0);
        *worst = worst.max(err);
        if self.record_only {
            return;
        }
        assert!(
            err <= TOLERANCE,
            "{case}: {what}: max|diff|/max|ref| = {err:.3e} > {TOLERANCE:e} (max|ref| = {absmax:.4e})"
        );
        eprintln!("{what}: scaled error {err:.2e}");
    }

    /// Keeps a decoded image of `case` (measurement only).
    pub fn image(&mut self, case: &str, values: Vec<f32>) {
        if self.record_only {
            self.images.insert(case.to_string(), values);
        }
    }
}

/// PSNR in dB between two images with values in [−1, 1] (mapped to [0, 1]); infinite when
/// they are identical.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "image sizes");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| ((x - y) as f64 / 2.0).powi(2))
        .sum::<f64>()
        / a.len() as f64;
    10.0 * (1.0 / mse).log10()
}

/// Runs a parity check once per backend, with the reference set's model and an asserting
/// [`Checker`]: `NAME_cpu` on Burn's CPU backend and, when the `wgpu` feature is on,
/// `NAME_wgpu` on the wgpu backend (Mesa lavapipe where no GPU exists).
#[macro_export]
macro_rules! on_every_backend {
    ($($name:ident => $check:ident;)*) => {
        mod cpu {
            $(#[test] fn $name() {
                let device = burn::tensor::Device::flex();
                let g = $crate::common::generator(&device);
                super::$check(&g, &device, &mut $crate::common::Checker::asserting());
            })*
        }
        #[cfg(feature = "wgpu")]
        mod wgpu {
            $(#[test] fn $name() {
                let device = disa::backend::Backend::Wgpu.device().expect("wgpu device");
                let g = $crate::common::generator(&device);
                super::$check(&g, &device, &mut $crate::common::Checker::asserting());
            })*
        }
    };
}

/// max|actual − reference| over max|reference| for two plain slices (the fused-kernel tests'
/// comparisons against Burn's tensor path).
pub fn scaled(actual: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(actual.len(), reference.len());
    let absmax = reference.iter().fold(0f32, |m, v| m.max(v.abs())) as f64;
    let diff = actual
        .iter()
        .zip(reference)
        .fold(0f64, |m, (a, b)| m.max((a - b).abs() as f64));
    diff / absmax.max(f64::MIN_POSITIVE)
}
