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
            vec!["cfg 0.5".into(), "1 turns guidance off".into()],
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
            vec!["temperature -1".into(), "must be a finite number".into()],
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

/// A fresh temporary folder for one test.
fn temp_dir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("disa-bad-{what}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The reference checkpoint (or `weights`) with `config` (a path) and an optional VAE.
fn files(
    weights: std::path::PathBuf,
    config: Option<&std::path::Path>,
    vae: Option<std::path::PathBuf>,
) -> disa::weights::ModelFiles {
    disa::weights::ModelFiles {
        weights,
        vae,
        config: config.map(|p| p.display().to_string()),
        state_dict: "model_ema".into(),
    }
}

/// The message of a load that must fail.
fn load_error(files: &disa::weights::ModelFiles) -> String {
    match files.load() {
        Ok(_) => panic!("{} loaded", files.weights.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_config_with_fewer_blocks_than_the_weights_names_the_unused_tensors() {
    let dir = temp_dir("fewer");
    let pth = reference_dir().join("checkpoint-last.pth");
    let kwargs = manifest()["mar_ctor_kwargs"].clone();
    // The configuration as given loads.
    let same = dir.join("same.json");
    std::fs::write(&same, kwargs.to_string()).unwrap();
    files(pth.clone(), Some(&same), None)
        .load()
        .expect("the matching configuration loads");
    for (field, prefix) in [
        ("encoder_depth", "encoder_blocks"),
        ("decoder_depth", "decoder_blocks"),
        ("diffloss_d", "diffloss.net.res_blocks"),
    ] {
        let held = kwargs[field].as_u64().unwrap();
        assert!(held >= 2, "{field}: the reference has {held}");
        let mut fewer = kwargs.clone();
        fewer[field] = serde_json::json!(1);
        let path = dir.join(format!("{field}.json"));
        std::fs::write(&path, fewer.to_string()).unwrap();
        let err = load_error(&files(pth.clone(), Some(&path), None));
        for needle in [
            format!("`{prefix}.1."),
            "the model does not use".to_string(),
            format!("{field} is 1 but the weights hold {held} `{prefix}`"),
            format!("--config {}", path.display()),
            "configuration these weights were trained with".to_string(),
        ] {
            assert!(err.contains(&needle), "{field}: `{needle}` not in: {err}");
        }
        // The first few keys by name, then a count.
        assert!(err.contains(" more."), "{field}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_unknown_tensor_in_a_weight_file_is_refused_by_name() {
    let dir = temp_dir("unknown");
    let manifest = reference_dir().join("manifest.json");
    let plain = dir.join("plain.safetensors");
    std::fs::write(&plain, edited(|_| {})).unwrap();
    files(plain, Some(&manifest), None)
        .load()
        .expect("the reference weights re-serialized load");
    let with_foo = dir.join("foo.safetensors");
    std::fs::write(
        &with_foo,
        edited(|m| {
            m.insert("foo".into(), (vec![3], vec![1.0, 2.0, 3.0]));
        }),
    )
    .unwrap();
    for config in [Some(manifest.as_path()), None] {
        let err = load_error(&files(with_foo.clone(), config, None));
        assert!(
            err.contains("holds 1 tensor (3.000e0 values) that the model does not use: `foo`"),
            "config {config:?}: {err}"
        );
        assert!(err.contains("another model's"), "config {config:?}: {err}");
    }
    // A disa model file with a tensor its configuration has no place for: refused too.
    let mut bundle = official();
    let extra = bundle.mar.tensors["encoder_blocks.0.norm1.weight"].clone();
    bundle
        .mar
        .tensors
        .insert("encoder_blocks.7.norm1.weight".into(), extra);
    let bytes = bundle.to_bytes().unwrap();
    let err = disa::weights::Bundle::from_bytes("extra.safetensors", &bytes)
        .expect_err("a bundle with an extra block is refused")
        .to_string();
    assert!(err.contains("`encoder_blocks.7.norm1.weight`"), "{err}");
    assert!(err.contains("metadata"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_legitimate_model_file_has_no_unused_tensor() {
    // Official checkpoint under either key, its safetensors, and the VAE in both formats.
    let reference = reference_dir();
    let manifest = reference.join("manifest.json");
    for (weights, key) in [
        ("checkpoint-last.pth", "model_ema"),
        ("checkpoint-last.pth", "model"),
        ("model.safetensors", "model_ema"),
    ] {
        for vae in ["vae.ckpt", "vae.safetensors"] {
            let mut f = files(
                reference.join(weights),
                Some(&manifest),
                Some(reference.join(vae)),
            );
            f.state_dict = key.into();
            f.load()
                .unwrap_or_else(|e| panic!("{weights} ({key}) with {vae}: {e}"));
        }
    }
    // Files written by `disa convert` in every storage, quantization scales included.
    let bundle = official();
    for storage in ["f32", "f16", "int8", "int4"] {
        let bytes = bundle
            .to_bytes_as(disa::weights::Storage::parse(storage).unwrap())
            .unwrap();
        let back = disa::weights::Bundle::from_bytes(storage, &bytes)
            .unwrap_or_else(|e| panic!("{storage}: {e}"));
        back.build(&Device::flex())
            .unwrap_or_else(|e| panic!("{storage} builds: {e}"));
    }
    // The model built into the CLI.
    let shipped = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www/assets/model.safetensors"),
    )
    .unwrap();
    disa::weights::Bundle::from_bytes("built-in", &shipped).expect("the built-in model loads");
}

/// Safetensors bytes of the reference model with `key` stored as `dtype` (4 bytes per value
/// for I32, 1 for U8 and BOOL).
fn with_integer_tensor(key: &str, dtype: safetensors::Dtype) -> Vec<u8> {
    let w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    let data: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = w
        .tensors
        .into_iter()
        .map(|(k, t)| {
            if k == key {
                let bytes = match dtype {
                    safetensors::Dtype::I32 => t
                        .values
                        .iter()
                        .flat_map(|v| (*v as i32).to_le_bytes())
                        .collect(),
                    _ => t.values.iter().map(|v| (*v > 0.0) as u8).collect(),
                };
                (k, t.shape, dtype, bytes)
            } else {
                let bytes = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                (k, t.shape, safetensors::Dtype::F32, bytes)
            }
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .map(|(k, s, d, b)| {
            let view = safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap();
            (k.clone(), view)
        })
        .collect();
    safetensors::serialize(views, None).unwrap()
}

#[test]
fn a_tensor_of_an_integer_type_is_named_with_its_type() {
    let dir = temp_dir("int-dtype");
    let manifest = reference_dir().join("manifest.json");
    for (dtype, name) in [
        (safetensors::Dtype::I32, "I32"),
        (safetensors::Dtype::U8, "U8"),
        (safetensors::Dtype::BOOL, "BOOL"),
    ] {
        let bytes = with_integer_tensor("z_proj.weight", dtype);
        let path = dir.join(format!("{name}.safetensors"));
        std::fs::write(&path, &bytes).unwrap();
        let from_file = load_error(&files(path, Some(&manifest), None));
        let from_bytes = WeightMap::from_bytes("m.safetensors", &bytes)
            .expect_err("an integer tensor is refused")
            .to_string();
        for err in [from_file, from_bytes] {
            assert!(!err.contains("lacks"), "{name}: {err}");
            for needle in [
                "tensor `z_proj.weight`",
                &format!("is there but stored as {name}, not a float type"),
                "F32, F16, BF16 or F64",
            ] {
                assert!(err.contains(needle), "{name}: `{needle}` not in: {err}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A PyTorch checkpoint of the reference model whose `key` is stored in a `storage`
/// (`LongStorage`: 8 bytes a value, `BoolStorage`: 1), as `torch.save` writes integer tensors.
fn checkpoint_with_storage(path: &std::path::Path, key: &str, storage: &str) {
    use std::io::{Read, Write};
    let mut w = WeightMap::from_bytes("model", &model_bytes()).unwrap();
    let index = w.tensors.keys().position(|k| k == key).unwrap();
    // Storage data of the right size: the writer writes the values it is given (f32), so
    // twice the values for 8-byte integers, and for 1-byte bools a quarter of the bytes (the
    // data entry is cut below).
    let width = if storage == "LongStorage" { 2 } else { 1 };
    let t = w.tensors.get_mut(key).unwrap();
    t.values = vec![0.0; t.numel() * width];
    let mut plain = Vec::new();
    disa::weights::write_torch_checkpoint(
        std::io::Cursor::new(&mut plain),
        &w,
        &["model", "model_ema"],
    )
    .unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(plain)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for i in 0..archive.len() {
        let mut entry = archive.by_index(i).unwrap();
        let name = entry.name().unwrap().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        if name.ends_with("data.pkl") {
            // The `index`-th storage's type (the pickle names them in the tensors' order).
            let needle = b"ctorch\nFloatStorage\n";
            let at = (0..bytes.len())
                .filter(|&i| bytes[i..].starts_with(needle))
                .nth(index)
                .unwrap();
            let replacement = format!("ctorch\n{storage}\n");
            bytes.splice(at..at + needle.len(), replacement.bytes());
        }
        if name.ends_with(&format!("data/{index}")) && storage == "BoolStorage" {
            bytes.truncate(bytes.len() / 4);
        }
        out.start_file(name, options).unwrap();
        out.write_all(&bytes).unwrap();
    }
    std::fs::write(path, out.finish().unwrap().into_inner()).unwrap();
}

#[test]
fn a_checkpoint_tensor_of_long_or_bool_storage_is_named_with_its_type() {
    let dir = temp_dir("int-pth");
    let manifest = reference_dir().join("manifest.json");
    for (storage, name) in [("LongStorage", "I64"), ("BoolStorage", "BOOL")] {
        let path = dir.join(format!("{storage}.pth"));
        checkpoint_with_storage(&path, "z_proj.weight", storage);
        let from_files = load_error(&files(path.clone(), Some(&manifest), None));
        let from_path = WeightMap::from_path(&path, Some("model_ema"))
            .expect_err("an integer tensor is refused")
            .to_string();
        for err in [from_files, from_path] {
            assert!(!err.contains("lacks"), "{storage}: {err}");
            for needle in [
                "tensor `z_proj.weight` under `model_ema`",
                &format!("is there but stored as {name}, not a float type"),
            ] {
                assert!(err.contains(needle), "{storage}: `{needle}` not in: {err}");
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_mar_checkpoint_given_as_the_vae_is_named_for_what_it_is() {
    let pth = reference_dir().join("checkpoint-last.pth");
    let err = load_error(&files(pth.clone(), None, Some(pth.clone())));
    for needle in [
        "looks like a MAR checkpoint, not a VAE",
        "under `model`",
        "`class_emb.weight`",
        "Give --vae the VAE's file",
    ] {
        assert!(err.contains(needle), "`{needle}` not in: {err}");
    }
    assert!(!err.contains("no float tensors"), "{err}");
    // The same for its safetensors form.
    let st = reference_dir().join("model.safetensors");
    let err = load_error(&files(pth, None, Some(st)));
    assert!(
        err.contains("looks like a MAR checkpoint, not a VAE"),
        "{err}"
    );
}

/// An idx file: `magic`, the `dims`, then `data`.
fn idx(magic: u32, dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut v = magic.to_be_bytes().to_vec();
    for d in dims {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(data);
    v
}

fn gzipped(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

#[test]
fn a_dataset_file_longer_than_its_header_says_reports_its_real_size() {
    use disa::data::{FashionMnist, parse_images, read_idx_file, read_maybe_gz};
    let dir = temp_dir("idx-long");
    // Two 28×28 images declared (1568 bytes), 1000 bytes more stored.
    let long = idx(0x0803, &[2, 28, 28], &vec![7u8; 2 * 28 * 28 + 1000]);
    let needle = "2 images of 28×28 need 1568 bytes after the 16-byte header, the";
    for gz in [false, true] {
        let split = dir.join(format!("gz-{gz}"));
        std::fs::create_dir_all(&split).unwrap();
        let (name, bytes) = if gz {
            ("train-images-idx3-ubyte.gz", gzipped(&long))
        } else {
            ("train-images-idx3-ubyte", long.clone())
        };
        let path = split.join(name);
        std::fs::write(&path, bytes).unwrap();
        std::fs::write(
            split.join("train-labels-idx1-ubyte"),
            idx(0x0801, &[2], &[0, 1]),
        )
        .unwrap();
        let held = if gz {
            ".gz file holds 2568 once decompressed"
        } else {
            "file holds 2568"
        };
        let err = FashionMnist::load(&split).unwrap_err().to_string();
        for text in [needle, held, "fetch it again"] {
            assert!(err.contains(text), "gz {gz}: `{text}` not in: {err}");
        }
        assert_eq!(read_idx_file(&path).unwrap_err().to_string(), err);
        // Read without sizing, the parse knows only that there is more, and says so.
        let err = parse_images("t", &read_maybe_gz(&path).unwrap())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("need 1568 bytes, the file has more than 1568 (at least 1569 bytes"),
            "gz {gz}: {err}"
        );
        assert!(!err.contains("has 1569"), "{err}");
    }
    // Labels: 3 declared, 50 stored (beside valid images).
    let split = dir.join("labels");
    std::fs::create_dir_all(&split).unwrap();
    std::fs::write(
        split.join("train-images-idx3-ubyte"),
        idx(0x0803, &[3, 28, 28], &[0; 3 * 28 * 28]),
    )
    .unwrap();
    std::fs::write(
        split.join("train-labels-idx1-ubyte"),
        idx(0x0801, &[3], &[1; 50]),
    )
    .unwrap();
    let err = FashionMnist::load(&split).unwrap_err().to_string();
    assert!(
        err.contains("3 labels need 3 bytes after the 8-byte header, the file holds 50"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
