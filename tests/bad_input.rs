//! Bad input gets a clear error, never a panic: corrupt, truncated and mismatched weight files,
//! and out-of-range settings.

mod common;

use burn::tensor::Device;
use common::*;
use disa::DisaError;
use disa::model::{MarConfig, Model, VaeDecoder};
use disa::noise::SeededNoise;
use disa::sampler::{Generation, Request};
use disa::schedule::StepSchedule;
use disa::weights::WeightMap;

fn model_bytes() -> Vec<u8> {
    std::fs::read(reference_dir().join("model.safetensors")).unwrap()
}

/// Re-serializes a weight map with `edit` applied (to make mismatched files).
fn edited(
    edit: impl Fn(&mut std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)>),
) -> Vec<u8> {
    let w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    let mut map: std::collections::BTreeMap<String, (Vec<usize>, Vec<f32>)> = w
        .tensors
        .into_iter()
        .map(|(k, t)| (k, (t.shape, t.values)))
        .collect();
    edit(&mut map);
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = map
        .into_iter()
        .map(|(k, (s, v))| (k, s, v.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = bytes
        .iter()
        .map(|(k, s, b)| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

fn build(bytes: &[u8]) -> Result<Model, DisaError> {
    let mut w = WeightMap::from_bytes("test.safetensors", bytes)?;
    Model::load(&mut w, &config(), None, &Device::flex())
}

#[test]
fn the_untouched_file_builds() {
    build(&model_bytes()).expect("reference weights build");
}

#[test]
fn truncated_files_are_format_errors() {
    let bytes = model_bytes();
    for cut in [0, 4, 7, 8, 100, bytes.len() / 2, bytes.len() - 1] {
        let err = build(&bytes[..cut])
            .err()
            .unwrap_or_else(|| panic!("cut at {cut} accepted"));
        assert!(
            matches!(err, DisaError::WeightFormat { .. }),
            "cut at {cut}: {err}"
        );
    }
    // Checkpoints are read from files: cut copies must fail cleanly too.
    let pth = std::fs::read(reference_dir().join("checkpoint-last.pth")).unwrap();
    let dir = std::env::temp_dir().join(format!("disa-trunc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for cut in [10, 1000, pth.len() / 2, pth.len() - 10] {
        let path = dir.join(format!("cut{cut}.pth"));
        std::fs::write(&path, &pth[..cut]).unwrap();
        let r = WeightMap::from_path(&path, Some("model_ema"));
        assert!(
            matches!(r, Err(DisaError::WeightFormat { .. })),
            "a .pth cut at {cut}: {r:?}"
        );
    }
    // And a checkpoint handed over as bytes gets a pointer, not garbage.
    let err = WeightMap::from_bytes("checkpoint-last.pth", &pth)
        .err()
        .unwrap();
    assert!(err.to_string().contains("PyTorch checkpoint"), "{err}");
}

#[test]
fn garbage_is_a_format_error() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    assert!(matches!(
        build(&garbage).err().unwrap(),
        DisaError::WeightFormat { .. }
    ));
}

#[test]
fn a_missing_tensor_is_named() {
    let bytes = edited(|m| {
        m.remove("diffloss.net.final_layer.linear.weight");
    });
    match build(&bytes).err().unwrap() {
        DisaError::MissingTensor { key, .. } => {
            assert_eq!(key, "diffloss.net.final_layer.linear.weight")
        }
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn a_wrong_shape_is_named() {
    let bytes = edited(|m| {
        let t = m.get_mut("mask_token").unwrap();
        t.0.push(1);
    });
    match build(&bytes).err().unwrap() {
        DisaError::ShapeMismatch { key, .. } => assert_eq!(key, "mask_token"),
        e => panic!("unexpected {e}"),
    }
}

#[test]
fn non_finite_weights_are_rejected() {
    for bad in [f32::NAN, f32::INFINITY] {
        let bytes = edited(|m| m.get_mut("z_proj.weight").unwrap().1[3] = bad);
        assert!(matches!(
            build(&bytes).err().unwrap(),
            DisaError::NonFinite { .. }
        ));
    }
}

#[test]
fn a_config_for_another_model_is_a_shape_error() {
    let mut w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    let err = Model::load(&mut w, &MarConfig::mar_base(), None, &Device::flex())
        .err()
        .unwrap();
    assert!(matches!(err, DisaError::ShapeMismatch { .. }), "{err}");
}

#[test]
fn a_vae_file_is_not_a_model_and_vice_versa() {
    let vae = std::fs::read(reference_dir().join("vae.safetensors")).unwrap();
    let err = build(&vae).err().unwrap();
    assert!(err.to_string().contains("VAE"), "{err}");
    let mut w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    assert!(VaeDecoder::load(&mut w, &Device::flex()).is_err());
}

#[test]
fn head_counts_cannot_be_guessed_for_unknown_widths() {
    let w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    let err = MarConfig::infer(&w, None).err().unwrap();
    assert!(err.to_string().contains("head"), "{err}");
    let c = MarConfig::infer(&w, Some((4, 4))).unwrap();
    assert_eq!(c, config(), "inferred configuration equals the manifest's");
}

#[test]
fn invalid_settings_are_rejected_with_a_message() {
    let device = Device::flex();
    let g = generator(&device);
    let n = g.config.seq_len();
    let base = Request {
        labels: vec![Some(0)],
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 50, end: 5 },
        ..Request::default()
    };
    let classes = g.config.class_num;
    // Each case with what its message must say: the offending value and the rule it breaks.
    let cases: Vec<(&str, Request, Vec<String>)> = vec![
        (
            "K = 0",
            Request {
                ar_steps: 0,
                ..base.clone()
            },
            vec!["AR steps must be at least 1".into()],
        ),
        (
            "K > tokens",
            Request {
                ar_steps: n + 1,
                ..base.clone()
            },
            vec![
                format!("{} AR steps for {n} tokens", n + 1),
                format!("K ≤ {n}"),
            ],
        ),
        (
            "end > start",
            Request {
                schedule: StepSchedule::Linear { start: 5, end: 50 },
                ..base.clone()
            },
            vec!["end steps (50) must not exceed start steps (5)".into()],
        ),
        (
            "0 steps",
            Request {
                schedule: StepSchedule::Constant(0),
                ..base.clone()
            },
            vec!["0 diffusion steps".into(), "at least 2".into()],
        ),
        (
            "too many steps",
            Request {
                schedule: StepSchedule::Constant(1001),
                ..base.clone()
            },
            vec!["1001 diffusion steps".into(), "only 1000 timesteps".into()],
        ),
        (
            "custom list length",
            Request {
                schedule: StepSchedule::Custom(vec![10, 5]),
                ..base.clone()
            },
            vec!["lists 2 step counts but there are 4 AR steps".into()],
        ),
        (
            "class out of range",
            Request {
                labels: vec![Some(classes)],
                ..base.clone()
            },
            vec![
                format!("class {classes} out of range"),
                format!("{classes} classes"),
            ],
        ),
        (
            "empty batch",
            Request {
                labels: vec![],
                ..base.clone()
            },
            vec!["batch size must be at least 1".into()],
        ),
        (
            "cfg < 1",
            Request {
                cfg: 0.5,
                ..base.clone()
            },
            vec!["cfg 0.5".into(), "≥ 1".into()],
        ),
        (
            "cfg NaN",
            Request {
                cfg: f32::NAN,
                ..base.clone()
            },
            vec!["cfg NaN".into(), "finite".into()],
        ),
        (
            "negative temperature",
            Request {
                temperature: -1.0,
                ..base.clone()
            },
            vec!["temperature -1".into(), "≥ 0".into()],
        ),
    ];
    for (what, request, needles) in cases {
        let err = Generation::new(g.clone(), request, Box::new(SeededNoise::new(0)))
            .err()
            .unwrap_or_else(|| panic!("{what} accepted"));
        assert!(matches!(err, DisaError::InvalidSetting(_)), "{what}: {err}");
        let message = err.to_string();
        for needle in &needles {
            assert!(
                message.contains(needle.as_str()),
                "{what}: `{needle}` not in: {message}"
            );
        }
    }
    Generation::new(g.clone(), base, Box::new(SeededNoise::new(0))).expect("valid request");
}
