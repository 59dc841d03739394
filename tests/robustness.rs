//! Nothing lost, nothing misread (issue 12): one test per class of failure, each varied over
//! its examples. Valid files whose safetensors header length has any low byte load; every
//! output is written atomically and a failed write is an error; a training checkpoint
//! interrupted at any write or rename resumes to the same run bit for bit; absurd sizes are
//! errors, not aborts; input that is not a regular file is refused; output paths are checked
//! before work; silent wrong results are errors.

mod common;

use burn::tensor::Device;
use common::reference_dir;
use disa::data::{Images, Split};
use disa::model::MarConfig;
use disa::train::{CHECKPOINTS, TrainSettings, Trainer, max_abs_difference};
use disa::weights::{Bundle, BundleInfo, ModelFiles, WeightMap};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn disa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_disa"))
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("disa-robust-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A command that must fail with a message (not a panic) containing every one of `needles`.
fn fails_with(o: Output, needles: &[&str]) -> String {
    let err = stderr(&o);
    assert!(!o.status.success(), "succeeded: {}{err}", stdout(&o));
    assert!(!err.contains("panicked"), "panic: {err}");
    assert!(err.starts_with("error: "), "a clear error: {err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` not in: {err}");
    }
    err
}

/// Rewrites a safetensors file with its JSON header padded by spaces (which the format allows)
/// so the header length's low byte is `low`.
fn with_header_low_byte(bytes: &[u8], low: u8) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = &bytes[8..8 + n];
    let pad = (low as usize + 256 - n % 256) % 256;
    let m = n + pad;
    let mut out = (m as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.extend_from_slice(&bytes[8 + n..]);
    assert_eq!(out[0], low);
    out
}

#[test]
fn files_whose_header_length_has_any_low_byte_load() {
    let dir = temp_dir("lowbyte");
    let reference = reference_dir();
    let model = std::fs::read(reference.join("model.safetensors")).unwrap();
    let vae = std::fs::read(reference.join("vae.safetensors")).unwrap();
    let bundle = ModelFiles {
        weights: reference.join("model.safetensors"),
        vae: Some(reference.join("vae.safetensors")),
        config: Some(reference.join("manifest.json").display().to_string()),
        state_dict: "model_ema".into(),
    }
    .load()
    .unwrap();
    let disa_file = bundle.to_bytes().unwrap();
    let expected = WeightMap::from_bytes("m", &model).unwrap();
    for low in 0..=255u8 {
        // Official MAR weights and VAE, read from disk as --weights and --vae.
        let m = dir.join("model.safetensors");
        let v = dir.join("vae.safetensors");
        std::fs::write(&m, with_header_low_byte(&model, low)).unwrap();
        std::fs::write(&v, with_header_low_byte(&vae, low)).unwrap();
        let read =
            WeightMap::from_path(&m, None).unwrap_or_else(|e| panic!("low byte {low:#04x}: {e}"));
        assert_eq!(read.tensors, expected.tensors, "low byte {low:#04x}");
        let files = ModelFiles {
            weights: m.clone(),
            vae: Some(v.clone()),
            config: Some(reference.join("manifest.json").display().to_string()),
            state_dict: "model_ema".into(),
        };
        let loaded = files
            .load()
            .unwrap_or_else(|e| panic!("low byte {low:#04x}: {e}"));
        assert!(loaded.vae.is_some());
        // A disa model file, from bytes (the page) and from disk (the CLI).
        let padded = with_header_low_byte(&disa_file, low);
        Bundle::from_bytes("d", &padded).unwrap_or_else(|e| panic!("low byte {low:#04x}: {e}"));
        let d = dir.join("disa.safetensors");
        std::fs::write(&d, &padded).unwrap();
        ModelFiles {
            weights: d,
            ..ModelFiles::default()
        }
        .load()
        .unwrap_or_else(|e| panic!("low byte {low:#04x}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_cli_converts_and_reads_back_files_of_every_storage() {
    // Files `disa convert` writes are read back whatever their header length.
    let dir = temp_dir("convert-all");
    for storage in ["f32", "f16", "int8", "int4"] {
        for name in ["m", "a longer model name", "x"] {
            let out = dir.join(format!("{storage}-{}.safetensors", name.len()));
            let o = disa()
                .args(["convert", "--storage", storage, "--name", name, "--out"])
                .arg(&out)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}", stderr(&o));
            let o = disa()
                .args(["schedule", "--ar-steps", "2", "--tokens", "64"])
                .output()
                .unwrap();
            assert!(o.status.success());
            ModelFiles {
                weights: out.clone(),
                ..ModelFiles::default()
            }
            .load()
            .unwrap_or_else(|e| panic!("{storage} {name}: {e}"));
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn failed_writes_are_errors_and_unknown_image_types_are_refused() {
    let dir = temp_dir("writes");
    // A full device: an error naming it, no "wrote".
    let o = disa()
        .args(["generate", "--ar-steps", "2", "--out", "/dev/full"])
        .output()
        .unwrap();
    let err = fails_with(o.clone(), &["/dev/full"]);
    assert!(!stdout(&o).contains("wrote"), "{err}");
    for bad in ["x.jpg", "x.JPEG", "x", "x.png.tmp"] {
        let out = dir.join(bad);
        let o = disa()
            .args(["generate", "--ar-steps", "2", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        fails_with(o, &[".png, .ppm"]);
        assert!(!out.exists(), "{bad} written");
    }
    // A model conversion to a full device fails too, and an existing output is kept whole
    // when a later write fails.
    let o = disa()
        .args(["convert", "--out", "/dev/full"])
        .output()
        .unwrap();
    fails_with(o, &["/dev/full"]);
    let png = dir.join("x.png");
    let ok = disa()
        .args(["generate", "--ar-steps", "2", "--quiet", "--out"])
        .arg(&png)
        .output()
        .unwrap();
    assert!(ok.status.success(), "{}", stderr(&ok));
    let before = std::fs::read(&png).unwrap();
    assert!(before.starts_with(b"\x89PNG"));
    let left: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A very small configuration with the Fashion-MNIST token layout.
fn tiny() -> MarConfig {
    MarConfig {
        encoder_embed_dim: 16,
        encoder_depth: 1,
        encoder_num_heads: 2,
        decoder_embed_dim: 16,
        decoder_depth: 1,
        decoder_num_heads: 2,
        buffer_size: 4,
        diffloss_d: 1,
        diffloss_w: 16,
        ..MarConfig::fashion()
    }
}

/// `count` random `side`×`side` images with labels.
fn synthetic(count: usize, side: usize) -> Split {
    let mut rng = disa::noise::SeededNoise::new(7);
    Split {
        images: Images {
            count,
            rows: side,
            cols: side,
            pixels: (0..count * side * side)
                .map(|_| rng.below(256) as u8)
                .collect(),
        },
        labels: (0..count).map(|i| (i % 10) as u8).collect(),
    }
}

fn settings() -> TrainSettings {
    TrainSettings {
        batch_size: 2,
        warmup_steps: 1,
        ..TrainSettings::default()
    }
}

fn train_to(t: &mut Trainer, data: &Split, steps: usize) {
    while t.step < steps {
        t.train_step(data).unwrap();
    }
}

#[test]
fn a_checkpoint_interrupted_anywhere_resumes_bit_for_bit() {
    let device = Device::flex().autodiff();
    let data = synthetic(8, 28);
    let info = BundleInfo::default();
    // The uninterrupted run: 3 steps, then 2 more.
    let mut reference = Trainer::new(tiny(), settings(), &device).unwrap();
    train_to(&mut reference, &data, 5);
    let want_model = reference.model().state_dict("ref").unwrap();
    let want_ema = reference.ema_weights().clone();

    let mut points = 0;
    for n in 1.. {
        let dir = temp_dir(&format!("fault-{n}"));
        let mut t = Trainer::new(tiny(), settings(), &device).unwrap();
        train_to(&mut t, &data, 2);
        t.save(&dir, &info).unwrap();
        train_to(&mut t, &data, 3);
        disa::weights::atomic::arm_fault(Some(n));
        let saved = t.save(&dir, &info);
        let fired = disa::weights::atomic::arm_fault(None);
        if !fired {
            saved.unwrap();
            let _ = std::fs::remove_dir_all(&dir);
            break;
        }
        assert!(saved.is_err(), "point {n}: the interrupted save reports it");
        points += 1;
        // Resume from whatever the interrupted save left: the last complete checkpoint.
        let mut resumed = Trainer::resume(&dir, &device)
            .unwrap_or_else(|e| panic!("point {n}: resume refused: {e}"));
        assert!(
            resumed.step == 2 || resumed.step == 3,
            "point {n}: step {}",
            resumed.step
        );
        train_to(&mut resumed, &data, 5);
        let got = resumed.model().state_dict("got").unwrap();
        assert_eq!(
            max_abs_difference(&want_model, &got),
            Some(0.0),
            "point {n}: model differs from the uninterrupted run"
        );
        assert_eq!(
            max_abs_difference(&want_ema, resumed.ema_weights()),
            Some(0.0),
            "point {n}: EMA differs"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
    // Four files and a manifest (3 points each), the folder rename, the EMA copy, clean-up.
    assert!(points >= 15, "only {points} fault points exercised");
}

/// FNV-1a 64 as the checkpoint manifest records it.
fn fnv(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// Edits a saved checkpoint's `state.json` (keeping its manifest consistent).
fn edit_state(dir: &Path, edit: impl Fn(&mut serde_json::Value)) {
    let step = std::fs::read_dir(dir.join(CHECKPOINTS))
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("step-")
        })
        .unwrap();
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step.join("state.json")).unwrap()).unwrap();
    edit(&mut state);
    let bytes = serde_json::to_vec(&state).unwrap();
    std::fs::write(step.join("state.json"), &bytes).unwrap();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(step.join("manifest.json")).unwrap()).unwrap();
    for f in manifest["files"].as_array_mut().unwrap() {
        if f["file"] == "state.json" {
            f["bytes"] = bytes.len().into();
            f["fnv1a64"] = fnv(&bytes).into();
        }
    }
    std::fs::write(
        step.join("manifest.json"),
        serde_json::to_vec(&manifest).unwrap(),
    )
    .unwrap();
}

#[test]
fn settings_read_back_on_resume_are_validated_like_new_ones() {
    let device = Device::flex().autodiff();
    let data = synthetic(4, 28);
    let dir = temp_dir("state");
    let mut t = Trainer::new(tiny(), settings(), &device).unwrap();
    train_to(&mut t, &data, 1);
    t.save(&dir, &BundleInfo::default()).unwrap();
    let original = std::fs::read(
        std::fs::read_dir(dir.join(CHECKPOINTS))
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| {
                p.file_name()
                    .unwrap()
                    .to_string_lossy()
                    .starts_with("step-")
            })
            .unwrap()
            .join("state.json"),
    )
    .unwrap();
    let cases: [(&str, serde_json::Value, &str); 6] = [
        ("batch_size", 0.into(), "batch"),
        ("batch_size", 1_000_000_000u64.into(), "batch"),
        ("learning_rate", (-1.0).into(), "learning rate"),
        ("learning_rate", 0.0.into(), "learning rate"),
        ("ema_decay", 1.5.into(), "EMA"),
        ("diffusion_batch_mul", 100_000.into(), "multiplier"),
    ];
    for (key, value, needle) in cases {
        edit_state(&dir, |s| s["settings"][key] = value.clone());
        let err = Trainer::resume(&dir, &device)
            .err()
            .unwrap_or_else(|| panic!("{key} = {value} accepted"))
            .to_string();
        assert!(err.contains(needle), "{key} = {value}: {err}");
        // The same value is refused when given to a new run.
        let mut s: serde_json::Value = serde_json::to_value(settings()).unwrap();
        s[key] = value.clone();
        let s: TrainSettings = serde_json::from_value(s).unwrap();
        assert!(
            s.validate_for(&tiny()).is_err(),
            "{key} = {value} for a new run"
        );
        edit_state(&dir, |s| {
            *s = serde_json::from_slice(&original).unwrap();
        });
    }
    // Absurd model sizes in the checkpoint's configuration: an error with the number.
    for (key, value) in [
        ("encoder_depth", serde_json::Value::from(100_000)),
        ("mlp_ratio", 1e15.into()),
        ("encoder_embed_dim", 1_000_000_000u64.into()),
        ("buffer_size", 1_000_000_000_000u64.into()),
    ] {
        edit_state(&dir, |s| s["config"][key] = value.clone());
        let err = Trainer::resume(&dir, &device).err().map(|e| e.to_string());
        assert!(err.is_some(), "{key} = {value} accepted");
        edit_state(&dir, |s| {
            *s = serde_json::from_slice(&original).unwrap();
        });
    }
    Trainer::resume(&dir, &device).expect("the untouched checkpoint resumes");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn training_images_must_be_28_by_28() {
    let device = Device::flex().autodiff();
    let mut t = Trainer::new(tiny(), settings(), &device).unwrap();
    for side in [40, 8, 27, 32] {
        let err = t.train_step(&synthetic(4, side)).unwrap_err().to_string();
        assert!(err.contains("28×28"), "{side}: {err}");
    }
    t.train_step(&synthetic(4, 28)).unwrap();
}

#[test]
fn absurd_sizes_are_errors_not_aborts() {
    let dir = temp_dir("sizes");
    for batch in ["100000", "1000000000000", "18446744073709551615"] {
        let o = disa()
            .args(["generate", "--ar-steps", "2", "--batch", batch, "--out"])
            .arg(dir.join("x.png"))
            .output()
            .unwrap();
        fails_with(o, &["batch"]);
    }
    let o = disa()
        .args(["eval", "--per-class", "1000000000000", "--data"])
        .arg(&dir)
        .output()
        .unwrap();
    fails_with(o, &["per-class"]);
    for (key, value) in [
        ("encoder_depth", "100000"),
        ("mlp_ratio", "1e15"),
        ("encoder_embed_dim", "1000000000"),
        ("decoder_embed_dim", "4294967296"),
        ("buffer_size", "1000000000000"),
        ("diffloss_w", "10000000"),
    ] {
        let config = dir.join("config.json");
        let mut c = serde_json::to_value(MarConfig::fashion()).unwrap();
        c[key] = serde_json::from_str(value).unwrap();
        std::fs::write(&config, serde_json::to_vec(&c).unwrap()).unwrap();
        let o = disa()
            .args(["train", "--steps", "1", "--out"])
            .arg(dir.join(format!("run-{key}")))
            .arg("--config")
            .arg(&config)
            .arg("--data")
            .arg(&dir)
            .output()
            .unwrap();
        let err = fails_with(o, &[]);
        assert!(
            err.contains("memory") || err.contains("mlp_ratio") || err.contains("divisible"),
            "{key} = {value}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_closed_stdout_ends_the_output_normally() {
    for args in [
        vec!["schedule"],
        vec!["schedule", "--ar-steps", "256", "--tokens", "1024"],
    ] {
        let mut child = disa()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // The reader goes away before anything is written, as `| head` does after its lines.
        drop(child.stdout.take());
        let o = child.wait_with_output().unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {:?} {}",
            o.status,
            stderr(&o)
        );
        assert!(stderr(&o).is_empty(), "{args:?}: {}", stderr(&o));
    }
}

#[test]
fn inputs_that_are_not_regular_files_are_refused() {
    let dir = temp_dir("irregular");
    let fifo = dir.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status();
    let mut inputs: Vec<PathBuf> = vec!["/dev/zero".into(), dir.clone()];
    if made.is_ok_and(|s| s.success()) {
        inputs.push(fifo);
    }
    for input in &inputs {
        for flag in ["--weights", "--vae", "--config"] {
            let mut cmd = disa();
            cmd.args(["generate", "--ar-steps", "2", "--out"])
                .arg(dir.join("x.png"));
            if flag != "--weights" {
                cmd.arg("--weights")
                    .arg(reference_dir().join("model.safetensors"));
            }
            let mut child = cmd
                .arg(flag)
                .arg(input)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            // Never a hang: a FIFO nobody writes to would block a reader forever.
            let start = std::time::Instant::now();
            while child.try_wait().unwrap().is_none() {
                if start.elapsed().as_secs() > 30 {
                    let _ = child.kill();
                    panic!("{flag} {} hangs", input.display());
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let o = child.wait_with_output().unwrap();
            fails_with(o, &[]);
        }
        let err = disa::data::FashionMnist::load(input).err();
        assert!(err.is_some(), "--data {}", input.display());
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn output_paths_are_checked_before_any_work() {
    let dir = temp_dir("outputs");
    std::fs::write(dir.join("file"), b"").unwrap();
    // The weights do not exist either: an error about --out shows it was checked first.
    let missing = dir.join("no-such-weights.safetensors");
    for out in [
        dir.join("missing/x.png"),
        dir.join("file/x.png"),
        PathBuf::from("/proc/x.png"),
        dir.clone(),
    ] {
        let o = disa()
            .args(["generate", "--weights"])
            .arg(&missing)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        fails_with(o, &["--out"]);
        let o = disa()
            .args(["convert", "--weights"])
            .arg(&missing)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        fails_with(o, &["--out"]);
    }
    for out in [
        dir.join("missing/run"),
        dir.join("file"),
        "/proc/run".into(),
    ] {
        let o = disa()
            .args(["train", "--config", "no-such-config.json", "--data"])
            .arg(&missing)
            .arg("--out")
            .arg(&out)
            .output()
            .unwrap();
        fails_with(o, &["--out"]);
        let o = disa()
            .args(["train-classifier", "--data"])
            .arg(&missing)
            .arg("--out")
            .arg(out.join("c.safetensors"))
            .output()
            .unwrap();
        fails_with(o, &["--out"]);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn converting_official_weights_without_a_vae_needs_no_decoder() {
    let dir = temp_dir("novae");
    // Official weights alone in a folder (no VAE beside them).
    std::fs::copy(
        reference_dir().join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let config = reference_dir().join("manifest.json");
    let out = dir.join("m.safetensors");
    let run = |extra: &[&str]| {
        disa()
            .args(["convert", "--weights"])
            .arg(dir.join("model.safetensors"))
            .arg("--config")
            .arg(&config)
            .arg("--out")
            .arg(&out)
            .args(extra)
            .output()
            .unwrap()
    };
    fails_with(run(&[]), &["--no-decoder", "--vae"]);
    assert!(!out.exists());
    let o = run(&["--no-decoder"]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The tokens-only model says what to do when asked for images.
    let o = disa()
        .args(["generate", "--ar-steps", "2", "--weights"])
        .arg(&out)
        .arg("--out")
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    fails_with(o, &["decoder", "--vae"]);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_model_that_overflows_is_an_error_not_a_black_image() {
    let dir = temp_dir("overflow");
    let shipped = ModelFiles::default();
    let _ = shipped;
    let bytes = {
        let o = disa()
            .args(["convert", "--out"])
            .arg(dir.join("base.safetensors"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        std::fs::read(dir.join("base.safetensors")).unwrap()
    };
    // Finite weights whose products overflow f32: the head's output bias, the class embedding.
    for key in ["diffloss.net.final_layer.linear.bias", "class_emb.weight"] {
        let mut bundle = Bundle::from_bytes("m", &bytes).unwrap();
        let t = bundle.mar.tensors.get_mut(key).unwrap();
        for v in &mut t.values {
            *v = 3e38;
        }
        let file = dir.join("huge.safetensors");
        std::fs::write(&file, bundle.to_bytes().unwrap()).unwrap();
        let png = dir.join("x.png");
        let o = disa()
            .args(["generate", "--ar-steps", "2", "--class", "1", "--weights"])
            .arg(&file)
            .arg("--out")
            .arg(&png)
            .output()
            .unwrap();
        fails_with(o, &["non-finite"]);
        assert!(!png.exists(), "{key}: an image was written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn schedule_validates_like_generate() {
    for (flag, value) in [
        ("--cfg", "NaN"),
        ("--cfg", "0"),
        ("--cfg", "inf"),
        ("--cfg", "0.5"),
        ("--clip", "0"),
        ("--clip", "1001"),
    ] {
        let s = disa()
            .args(["schedule", "--ar-steps", "4", "--tokens", "64", flag, value])
            .output()
            .unwrap();
        let s = fails_with(s, &[]);
        let g = disa()
            .args([
                "generate",
                "--ar-steps",
                "4",
                "--out",
                "/tmp/never.png",
                flag,
                value,
            ])
            .output()
            .unwrap();
        let g = fails_with(g, &[]);
        assert_eq!(s, g, "{flag} {value}: the same validation");
    }
}

#[test]
fn config_names_vae_and_model_names_are_handled_plainly() {
    let dir = temp_dir("smaller");
    // An unknown preset lists the presets.
    let o = disa()
        .args(["generate", "--weights"])
        .arg(reference_dir().join("model.safetensors"))
        .args(["--config", "mar_gigantic", "--out"])
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    fails_with(o, &["mar_base", "mar_large", "mar_huge"]);
    // --config / --vae with a disa model file are errors, not silently ignored.
    let model = dir.join("m.safetensors");
    let name = "evil\u{1b}[2J\u{1b}]0;title\u{7}name";
    let o = disa()
        .args(["convert", "--name", name, "--out"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for (flag, value) in [
        ("--config", "mar_base".to_string()),
        (
            "--vae",
            reference_dir()
                .join("vae.safetensors")
                .display()
                .to_string(),
        ),
    ] {
        let o = disa()
            .args(["generate", "--weights"])
            .arg(&model)
            .args([flag, &value, "--out"])
            .arg(dir.join("x.png"))
            .output()
            .unwrap();
        fails_with(o, &["disa model file", flag]);
    }
    // Names from files reach the terminal without their escape sequences.
    let o = disa()
        .args(["bench", "--ar-steps", "2", "--repeats", "1", "--schedules"])
        .args(["constant:2", "--weights"])
        .arg(&model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("evil"), "{}", stdout(&o));
    assert!(!o.stdout.contains(&0x1b) && !o.stdout.contains(&0x07));
    let odd = dir.join("bad\u{1b}[31mname.safetensors");
    let o = disa()
        .args(["generate", "--weights"])
        .arg(&odd)
        .arg("--out")
        .arg(dir.join("x.png"))
        .output()
        .unwrap();
    let err = fails_with(o, &[]);
    assert!(!err.contains('\u{1b}'), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn cpu_commands_print_no_gpu_loader_noise() {
    let dir = temp_dir("quiet");
    for args in [
        vec!["schedule", "--ar-steps", "2", "--tokens", "64"],
        vec!["generate", "--ar-steps", "2", "--quiet", "--out"],
    ] {
        let mut cmd = disa();
        cmd.args(&args).env_remove("XDG_RUNTIME_DIR");
        if args[0] == "generate" {
            cmd.arg(dir.join("x.png"));
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let err = stderr(&o);
        assert!(
            !err.contains("XDG_RUNTIME_DIR") && !err.to_lowercase().contains("vulkan"),
            "{args:?}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_checkpoint_whose_ema_is_the_same_dict_as_its_model_loads() {
    // `convert --to official` writes `model_ema` as a memo reference to `model`, as
    // `torch.save({'model': sd, 'model_ema': sd})` does.
    let dir = temp_dir("memo");
    let pth = dir.join("c.pth");
    let o = disa()
        .args(["convert", "--to", "official", "--out"])
        .arg(&pth)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let bytes = std::fs::read(&pth).unwrap();
    // The key `model_ema`, then BINGET 0 (the memo of the first dict).
    assert!(
        bytes.windows(11).any(|w| w == b"model_emah\x00"),
        "model_ema is a memo reference"
    );
    let model = WeightMap::from_path(&pth, Some("model")).unwrap();
    let ema = WeightMap::from_path(&pth, Some("model_ema")).unwrap();
    assert_eq!(model.tensors, ema.tensors);
    for key in ["model_ema", "model"] {
        ModelFiles {
            weights: pth.clone(),
            state_dict: key.into(),
            config: Some("fashion".into()),
            ..ModelFiles::default()
        }
        .load()
        .unwrap_or_else(|e| panic!("{key}: {e}"));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
