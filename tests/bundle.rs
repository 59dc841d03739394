//! The project's model file: official files in, one self-describing file out, loaded back
//! identically; malformed files give distinct errors.

mod common;

use common::*;
use disa::DisaError;
use disa::noise::SeededNoise;
use disa::sampler::{Generation, Request};
use disa::schedule::StepSchedule;
use disa::weights::{Bundle, DecoderSpec, Storage};
use std::sync::Arc;

#[test]
fn round_trip_keeps_every_tensor_and_the_config() {
    let bundle = official();
    assert_eq!(bundle.decoder, DecoderSpec::Vae);
    assert_eq!(
        bundle.config,
        config(),
        "config read from the manifest beside the weights"
    );
    let bytes = bundle.to_bytes().unwrap();
    assert!(Bundle::is_bundle(&bytes));
    let back = Bundle::from_bytes("bundle", &bytes).unwrap();
    assert_eq!(back.config, bundle.config);
    assert_eq!(back.decoder, bundle.decoder);
    assert_eq!(
        back.mar.tensors, bundle.mar.tensors,
        "MAR tensors bit-identical"
    );
    assert_eq!(
        back.vae.as_ref().unwrap().tensors,
        bundle.vae.as_ref().unwrap().tensors,
        "VAE tensors bit-identical"
    );
}

#[test]
fn a_bundle_generates_the_same_tokens_as_the_official_files() {
    let device = burn::tensor::Device::flex();
    let from_official = Arc::new(official().build(&device).unwrap());
    let bytes = official().to_bytes().unwrap();
    let from_bundle = Arc::new(
        Bundle::from_bytes("bundle", &bytes)
            .unwrap()
            .build(&device)
            .unwrap(),
    );
    let request = Request {
        labels: vec![Some(1)],
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 20, end: 5 },
        cfg: 1.5,
        ..Request::default()
    };
    let run = |g: Arc<disa::LoadedModel>| {
        let mut generation =
            Generation::new(g, request.clone(), Box::new(SeededNoise::new(3))).unwrap();
        generation.run_to_end().unwrap();
        generation.tokens().to_vec()
    };
    assert_eq!(run(from_official), run(from_bundle));
}

#[test]
fn plain_safetensors_are_not_bundles() {
    let bytes = std::fs::read(reference_dir().join("model.safetensors")).unwrap();
    let err = Bundle::from_bytes("model.safetensors", &bytes)
        .err()
        .unwrap();
    assert!(err.to_string().contains("disa convert"), "{err}");
}

#[test]
fn another_format_version_is_refused_by_name() {
    let mut bundle = official();
    bundle.vae = None;
    bundle.decoder = DecoderSpec::None;
    let bytes = bundle.to_bytes().unwrap();
    // Rewrite the version inside the JSON header (same length, so offsets stay valid).
    let needle = br#""format_version":"1""#;
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("version in header");
    let mut edited = bytes.clone();
    edited[at + "\"format_version\":\"".len()] = b'7';
    let err = Bundle::from_bytes("v7", &edited).err().unwrap();
    assert!(err.to_string().contains("version 7"), "{err}");
}

#[test]
fn vae_tensors_in_a_model_without_a_vae_are_refused() {
    // The official bundle with its VAE, relabelled as a tokens-only model: the `vae.` tensors
    // would be ignored, so the file is refused (the content hash is right: it is written so).
    let mut bundle = official();
    bundle.decoder = DecoderSpec::None;
    let bytes = bundle.to_bytes().unwrap();
    let err = Bundle::from_bytes("relabelled", &bytes).err().unwrap();
    assert!(err.to_string().contains("declares no VAE decoder"), "{err}");
}

#[test]
fn truncated_bundles_are_format_errors() {
    let bytes = official().to_bytes().unwrap();
    for cut in [0, 5, 9, 200, bytes.len() / 2, bytes.len() - 1] {
        let err = Bundle::from_bytes("cut", &bytes[..cut])
            .err()
            .unwrap_or_else(|| panic!("cut {cut} accepted"));
        assert!(
            matches!(err, DisaError::WeightFormat { .. }),
            "cut {cut}: {err}"
        );
    }
}

#[test]
fn a_flipped_bit_in_tensor_data_is_caught_by_the_content_hash() {
    let bytes = official().to_bytes().unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8;
    for at in [header, header + (bytes.len() - header) / 2, bytes.len() - 1] {
        let mut bad = bytes.clone();
        bad[at] ^= 0x01; // a low mantissa bit: the value stays finite and plausible
        let err = Bundle::from_bytes("flipped", &bad)
            .err()
            .unwrap_or_else(|| panic!("flip at {at} accepted"));
        assert!(err.to_string().contains("corrupt"), "{err}");
    }
}

/// Runs `request` to the end on a model file's bytes, with seeded noise.
fn run_file(
    bytes: &[u8],
    device: &burn::tensor::Device,
    request: &Request,
    seed: u64,
) -> Generation {
    let g = Arc::new(
        Bundle::from_bytes("model", bytes)
            .unwrap()
            .into_generator(device)
            .unwrap(),
    );
    let mut generation =
        Generation::new(g, request.clone(), Box::new(SeededNoise::new(seed))).unwrap();
    generation.run_to_end().unwrap();
    generation
}

/// File size relative to f32, DiSA token error (max |diff| / max |f32 token|) and decoded
/// image PSNR against f32 (images in [−1, 1] mapped to [0, 1]) for one storage.
fn storage_report(bundle: &Bundle, storage: Storage) -> (f64, f32, f64) {
    let f32_bytes = bundle.to_bytes().unwrap();
    let bytes = bundle.to_bytes_as(storage).unwrap();
    let ratio = bytes.len() as f64 / f32_bytes.len() as f64;
    let device = burn::tensor::Device::flex();
    let request = Request {
        labels: vec![Some(3), Some(7)],
        ar_steps: 8,
        schedule: StepSchedule::Linear { start: 50, end: 5 },
        cfg: 2.0,
        ..Request::default()
    };
    let decoded = |bytes: &[u8]| {
        let generation = run_file(bytes, &device, &request, 5);
        let tokens = generation.tokens().to_vec();
        let image = generation
            .decode()
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        (tokens, image)
    };
    let (t32, i32_) = decoded(&f32_bytes);
    let (tq, iq) = decoded(&bytes);
    assert!(tq.iter().all(|v| v.is_finite()));
    let absmax = t32.iter().fold(0f32, |m, v| m.max(v.abs()));
    let tok_err = t32
        .iter()
        .zip(&tq)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs()))
        / absmax;
    let mse: f64 = i32_
        .iter()
        .zip(&iq)
        .map(|(a, b)| ((a - b) as f64 / 2.0).powi(2))
        .sum::<f64>()
        / i32_.len() as f64;
    let psnr = 10.0 * (1.0 / mse.max(1e-20)).log10();
    eprintln!(
        "{} storage: file {ratio:.3} of f32; DiSA tokens max err {tok_err:.2e}·max|f32|; image PSNR vs f32 {psnr:.1} dB",
        storage.name()
    );
    (ratio, tok_err, psnr)
}

#[test]
fn the_shipped_model_is_small_int8_and_requantizes_stably() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/www/assets/model.safetensors");
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() <= 5_000_000,
        "the page's model is {} bytes",
        bytes.len()
    );
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let meta = header.metadata().clone().unwrap();
    assert_eq!(meta["storage"], "int8");
    let shipped = Bundle::from_bytes("shipped", &bytes).unwrap();
    // Its values already lie on int8 grids: int8 again changes almost nothing, int4 more.
    let (r8, e8, p8) = storage_report(&shipped, Storage::Int8);
    let (r4, e4, p4) = storage_report(&shipped, Storage::Int4);
    assert!(r4 < r8 && r8 < 0.5, "int8 {r8:.3}, int4 {r4:.3} of f32");
    assert!(
        e8 < e4 && p8 > p4,
        "int8 is the closer one: {e8} vs {e4}, {p8} vs {p4} dB"
    );
    assert!(p8 > 40.0, "int8 re-encoding PSNR {p8:.1} dB");
}

#[test]
fn quantized_files_reject_damaged_quantized_tensors() {
    let bytes = official().to_bytes_as(Storage::Int8).unwrap();
    // Truncating inside the data, and a flipped data bit, are caught.
    assert!(Bundle::from_bytes("q", &bytes[..bytes.len() - 3]).is_err());
    let mut flipped = bytes.clone();
    let at = flipped.len() - 100;
    flipped[at] ^= 0x10;
    let err = Bundle::from_bytes("q", &flipped).unwrap_err().to_string();
    assert!(
        err.contains("corrupt") || err.contains("non-finite"),
        "{err}"
    );
}

/// A quantized file runs on wgpu (lavapipe here) and gives the CPU's tokens.
#[cfg(feature = "wgpu")]
#[test]
fn an_int8_file_runs_on_wgpu_like_on_the_cpu() {
    let bytes = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/www/assets/model.safetensors"
    ))
    .unwrap();
    let int8 = Bundle::from_bytes("shipped", &bytes)
        .unwrap()
        .to_bytes_as(Storage::Int8)
        .unwrap();
    let request = Request {
        labels: vec![Some(1)],
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 10, end: 5 },
        cfg: 3.0,
        ..Request::default()
    };
    let tokens =
        |device: burn::tensor::Device| run_file(&int8, &device, &request, 2).tokens().to_vec();
    let cpu = tokens(burn::tensor::Device::flex());
    let gpu = tokens(
        "wgpu"
            .parse::<disa::backend::Backend>()
            .unwrap()
            .device()
            .unwrap(),
    );
    let absmax = cpu.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = cpu
        .iter()
        .zip(&gpu)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(err <= 1e-3 * absmax, "wgpu vs cpu: {err} (max {absmax})");
}

/// File sizes at MAR-B's shapes (freshly initialized weights: sizes do not depend on values).
/// Heavy (208M parameters, several GB of RAM), so run by hand:
/// `cargo test --release --test bundle mar_b -- --ignored --nocapture`.
#[test]
#[ignore]
fn mar_b_sized_files_shrink_as_documented() {
    let bundle = Bundle::initialized(disa::model::MarConfig::mar_base(), 0);
    let f32_len = bundle.to_bytes().unwrap().len() as f64;
    let mut last = 1.0;
    for storage in [Storage::F16, Storage::Int8, Storage::Int4] {
        let ratio = bundle.to_bytes_as(storage).unwrap().len() as f64 / f32_len;
        eprintln!(
            "MAR-B {}: {:.1} MB, {ratio:.3} of f32 ({:.1} MB)",
            storage.name(),
            ratio * f32_len / 1e6,
            f32_len / 1e6
        );
        assert!(ratio < last, "{} is not smaller", storage.name());
        last = ratio;
    }
    assert!(last < 0.2, "int4 at MAR-B shapes: {last:.3} of f32");
}

#[test]
fn reading_reports_progress_up_to_the_file_size() {
    let dir = std::env::temp_dir().join(format!("disa-progress-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("big.bin");
    let data: Vec<u8> = (0..(9usize << 20)).map(|i| (i % 251) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    let mut calls = Vec::new();
    let read =
        disa::weights::read_with_progress(&path, &mut |done, total| calls.push((done, total)))
            .unwrap();
    assert_eq!(read, data);
    assert!(calls.len() >= 3, "{calls:?}");
    assert!(calls.windows(2).all(|w| w[0].0 < w[1].0));
    assert_eq!(
        *calls.last().unwrap(),
        (data.len() as u64, data.len() as u64)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
