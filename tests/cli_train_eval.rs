//! The commands around the shipped model: `generate` with the built-in model, `convert --to
//! official` round trips, `train` and `eval` as a user runs them.

mod common;

use common::*;
use disa::weights::WeightMap;
use std::path::PathBuf;
use std::process::{Command, Output};

fn disa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_disa"))
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("disa-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn ok(out: Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn generate_without_weights_uses_the_built_in_model() {
    let dir = temp_dir("builtin");
    let out = dir.join("coat.ppm");
    ok(disa()
        .args(["generate", "--class", "4", "--ar-steps", "8", "--cfg", "3"])
        .args(["--scale", "2", "--out", out.to_str().unwrap()])
        .output()
        .unwrap());
    let bytes = std::fs::read(&out).unwrap();
    // 32×32 grayscale tokens decoded by the patch decoder, enlarged 2×.
    assert!(bytes.starts_with(b"P6\n64 64\n255\n"), "{:?}", &bytes[..12]);
    // --vae or --config without --weights, and a bad scale, are clear errors.
    for args in [
        vec!["generate", "--config", "mar_base"],
        vec!["generate", "--scale", "0"],
    ] {
        let o = disa().args(&args).output().unwrap();
        assert!(!o.status.success());
        assert!(String::from_utf8_lossy(&o.stderr).starts_with("error: "));
    }
}

#[test]
fn official_to_disa_to_official_is_lossless() {
    let dir = temp_dir("official");
    let pth = reference_dir().join("checkpoint-last.pth");
    let (bundle, back) = (
        dir.join("model.safetensors"),
        dir.join("official.safetensors"),
    );
    ok(disa()
        .args(["convert", "--weights", pth.to_str().unwrap()])
        .args(["--out", bundle.to_str().unwrap()])
        .output()
        .unwrap());
    ok(disa()
        .args([
            "convert",
            "--weights",
            bundle.to_str().unwrap(),
            "--to",
            "official",
        ])
        .args(["--out", back.to_str().unwrap()])
        .output()
        .unwrap());
    // The bundle records where it came from.
    let b = disa::weights::Bundle::from_bytes("b", &std::fs::read(&bundle).unwrap()).unwrap();
    let source = &b.info.sources[0];
    assert_eq!(source.file, "checkpoint-last.pth");
    assert_eq!(source.bytes, std::fs::metadata(&pth).unwrap().len());
    assert_eq!(source.fnv1a64.len(), 16);
    let original = WeightMap::from_path(&pth, Some("model_ema")).unwrap();
    let exported =
        WeightMap::from_safetensors_bytes("official", &std::fs::read(&back).unwrap()).unwrap();
    assert_eq!(
        original.tensors.keys().collect::<Vec<_>>(),
        exported.tensors.keys().collect::<Vec<_>>()
    );
    for (k, t) in &original.tensors {
        let e = &exported.tensors[k];
        assert_eq!(t.shape, e.shape, "{k}");
        assert!(
            t.values
                .iter()
                .zip(&e.values)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{k} differs"
        );
    }
    // The exported file loads again as official weights.
    ok(disa()
        .args(["convert", "--weights", back.to_str().unwrap()])
        .args([
            "--config",
            reference_dir().join("manifest.json").to_str().unwrap(),
        ])
        .args(["--out", dir.join("again.safetensors").to_str().unwrap()])
        .output()
        .unwrap());
}

#[test]
fn train_makes_a_resumable_checkpoint() {
    let dir = temp_dir("train").join("run");
    let run = |extra: &[&str]| {
        disa()
            .args(["train", "--out", dir.to_str().unwrap(), "--batch", "4"])
            .args(["--save-every", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let text = ok(run(&["--steps", "1"]));
    assert!(text.contains("1 steps in"), "{text}");
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.bin",
        "state.json",
    ] {
        assert!(dir.join(f).exists(), "{f}");
    }
    // Training again into the same folder without --resume is refused.
    let again = run(&["--steps", "2"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--resume"));
    let text = ok(run(&["--steps", "2", "--resume"]));
    assert!(text.contains("1 steps in"), "one more step: {text}");
    // The EMA checkpoint is a model the other commands take.
    ok(disa()
        .args(["generate", "--weights"])
        .arg(dir.join("ema.safetensors"))
        .args(["--ar-steps", "2", "--class", "1", "--quiet", "--out"])
        .arg(dir.join("x.ppm"))
        .output()
        .unwrap());
}

#[test]
fn eval_prints_one_row_per_schedule_and_k() {
    let text = ok(disa()
        .args([
            "eval",
            "--per-class",
            "2",
            "--batch",
            "20",
            "--ar-steps",
            "4,2",
        ])
        .args(["--schedules", "constant:10;linear:10:2"])
        .output()
        .unwrap());
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("| 4 |") || l.starts_with("| 2 |"))
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    // The baseline row's ratios are 1 by construction; each row has an accuracy and a distance.
    assert!(
        rows[0].contains("1.00×") && rows[0].ends_with("| 1.000 |"),
        "{}",
        rows[0]
    );
    assert!(text.contains("classifier test accuracy"), "{text}");
}
