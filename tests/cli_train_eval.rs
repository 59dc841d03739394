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
    for (args, needle) in [
        (
            vec!["generate", "--config", "mar_base"],
            "give --weights too",
        ),
        (
            vec!["generate", "--scale", "0"],
            "scale 0 must be in 1..=16",
        ),
    ] {
        let o = disa().args(&args).output().unwrap();
        assert!(!o.status.success());
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.starts_with("error: ") && err.contains(needle),
            "{args:?}: {err}"
        );
    }
}

/// Bit-for-bit equality of two state dicts, naming the first tensor that differs.
fn assert_same_tensors(what: &str, original: &WeightMap, exported: &WeightMap) {
    assert_eq!(
        original.tensors.keys().collect::<Vec<_>>(),
        exported.tensors.keys().collect::<Vec<_>>(),
        "{what}: keys"
    );
    for (k, t) in &original.tensors {
        let e = &exported.tensors[k];
        assert_eq!(t.shape, e.shape, "{what}: {k}");
        assert!(
            t.values
                .iter()
                .zip(&e.values)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "{what}: {k} differs"
        );
    }
}

#[test]
fn official_to_disa_to_official_is_lossless() {
    let dir = temp_dir("official");
    let pth = reference_dir().join("checkpoint-last.pth");
    let bundle = dir.join("model.safetensors");
    ok(disa()
        .args(["convert", "--weights", pth.to_str().unwrap()])
        .args(["--out", bundle.to_str().unwrap()])
        .output()
        .unwrap());
    // The bundle records where it came from.
    let b = disa::weights::Bundle::from_bytes("b", &std::fs::read(&bundle).unwrap()).unwrap();
    let source = &b.info.sources[0];
    assert_eq!(source.file, "checkpoint-last.pth");
    assert_eq!(source.bytes, std::fs::metadata(&pth).unwrap().len());
    assert_eq!(source.fnv1a64.len(), 16);
    let export = |name: &str| {
        let out = dir.join(name);
        ok(disa()
            .args(["convert", "--weights", bundle.to_str().unwrap()])
            .args(["--to", "official", "--out", out.to_str().unwrap()])
            .output()
            .unwrap());
        out
    };
    let original = WeightMap::from_path(&pth, Some("model_ema")).unwrap();

    // Safetensors under the official keys.
    let back = export("official.safetensors");
    let exported =
        WeightMap::from_safetensors_bytes("official", &std::fs::read(&back).unwrap()).unwrap();
    assert_same_tensors("safetensors", &original, &exported);

    // A PyTorch checkpoint in checkpoint-last.pth's layout: both keys hold the sampling weights.
    let back_pth = export("checkpoint-last.pth");
    for key in ["model_ema", "model"] {
        let exported = WeightMap::from_path(&back_pth, Some(key)).unwrap();
        assert_same_tensors(key, &original, &exported);
    }
    // CPython's zip and pickle read it as torch.load would (and torch itself where installed).
    let python = std::env::var("DISA_PYTHON").unwrap_or_else(|_| "python3".into());
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/check_torch_checkpoint.py");
    let out = Command::new(&python)
        .arg(&script)
        .args([&back_pth, &back])
        .output()
        .unwrap_or_else(|e| {
            panic!("{python} is needed for this test (scripts/test.sh installs it): {e}")
        });
    let report = ok(out);
    eprintln!("{report}");
    assert!(report.contains("bit-equal"), "{report}");

    // An unknown extension is refused before anything is written.
    let o = disa()
        .args(["convert", "--weights", bundle.to_str().unwrap()])
        .args([
            "--to",
            "official",
            "--out",
            dir.join("x.bin").to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains(".pth"));
    assert!(!dir.join("x.bin").exists());

    // Both exports load again as official weights.
    for file in [&back, &back_pth] {
        ok(disa()
            .args(["convert", "--weights", file.to_str().unwrap()])
            .args([
                "--config",
                reference_dir().join("manifest.json").to_str().unwrap(),
            ])
            // The export holds MAR's state dict only: its VAE comes from its own file.
            .args(["--vae", reference_dir().join("vae.ckpt").to_str().unwrap()])
            .args(["--out", dir.join("again.safetensors").to_str().unwrap()])
            .output()
            .unwrap());
    }
    let _ = std::fs::remove_dir_all(&dir);
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
    // One atomic checkpoint folder, and the EMA model beside it.
    for f in [
        "model.safetensors",
        "ema.safetensors",
        "optimizer.bin",
        "state.json",
        "manifest.json",
    ] {
        assert!(
            dir.join("checkpoints/step-000000001").join(f).exists(),
            "{f}"
        );
    }
    assert!(dir.join("ema.safetensors").exists());
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
fn a_cpu_resume_starts_no_gpu_backend() {
    // Loading the optimizer state once materialized it on Burn's default device (wgpu in
    // this build), which probed the GPU adapters: "error: XDG_RUNTIME_DIR is invalid or not
    // set in the environment." four times from a CPU-only resume.
    let dir = temp_dir("train-quiet").join("run");
    let run = |extra: &[&str]| {
        let out = disa()
            .args(["train", "--out", dir.to_str().unwrap(), "--batch", "2"])
            .args(["--save-every", "1"])
            .args(extra)
            .env_remove("XDG_RUNTIME_DIR")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        ok(out);
        err
    };
    for (what, extra) in [
        ("a new run", &["--steps", "1"][..]),
        ("a resumed run", &["--steps", "2", "--resume"][..]),
    ] {
        let err = run(extra);
        assert!(
            !err.contains("XDG_RUNTIME_DIR") && !err.to_lowercase().contains("vulkan"),
            "{what}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn resuming_past_a_damaged_checkpoint_warns_which_and_why() {
    let dir = temp_dir("train-damaged").join("run");
    let run = |extra: &[&str]| {
        disa()
            .args(["train", "--out", dir.to_str().unwrap(), "--batch", "2"])
            .args(["--save-every", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    ok(run(&["--steps", "2"]));
    let checkpoints = dir.join("checkpoints");
    // A newer checkpoint whose optimizer state is empty (its manifest says otherwise).
    let damaged = checkpoints.join("step-000000099");
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(checkpoints.join("step-000000002")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), damaged.join(entry.file_name())).unwrap();
    }
    std::fs::write(damaged.join("optimizer.bin"), b"").unwrap();
    let out = run(&["--steps", "3", "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    let text = ok(out);
    // It still resumes from the newest intact checkpoint, and says so.
    assert!(text.contains("1 steps in"), "one step from step 2: {text}");
    let warning = err
        .lines()
        .find(|l| l.starts_with("warning:"))
        .unwrap_or_else(|| panic!("no warning: {err}"));
    assert!(
        warning.contains(damaged.to_str().unwrap()) && warning.contains("optimizer.bin"),
        "{warning}"
    );
    assert!(err.contains("resuming from step 2"), "{err}");
    assert!(
        err.contains(checkpoints.join("step-000000002").to_str().unwrap()),
        "{err}"
    );
    // An intact run resumes without a warning.
    let out = run(&["--steps", "4", "--resume"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out);
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("resuming from step 3"), "{err}");
    let _ = std::fs::remove_dir_all(dir.parent().unwrap());
}

#[test]
fn train_can_start_from_the_shipped_model() {
    let dir = temp_dir("train-init").join("run");
    let run = |extra: &[&str]| {
        disa()
            .args(["train", "--out", dir.to_str().unwrap(), "--batch", "4"])
            .args(["--steps", "1"])
            .args(extra)
            .output()
            .unwrap()
    };
    let text = ok(run(&["--init", "builtin"]));
    assert!(text.contains("1 steps in"), "{text}");
    // --init and --resume contradict each other; a model of another configuration is refused.
    let both = run(&["--init", "builtin", "--resume"]);
    assert!(!both.status.success());
    assert!(String::from_utf8_lossy(&both.stderr).contains("--resume"));
    let other = temp_dir("train-init").join("other");
    let wrong = disa()
        .args(["train", "--out", other.to_str().unwrap(), "--steps", "1"])
        .args(["--init", "builtin", "--config", "mar_base"])
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    let err = String::from_utf8_lossy(&wrong.stderr);
    assert!(err.contains("another configuration"), "{err}");
    assert!(!other.exists(), "nothing written");

    // The timestep tail: logged, probed, saved with the run's settings; bad values refused.
    let tail = temp_dir("train-init").join("tail");
    let out = disa()
        .args(["train", "--out", tail.to_str().unwrap(), "--batch", "4"])
        .args([
            "--steps",
            "1",
            "--init",
            "builtin",
            "--tail-timesteps",
            "0.3:980:30",
        ])
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr).to_string();
    ok(out);
    assert!(log.contains("30% of timesteps from [980, 999]"), "{log}");
    assert!(log.contains("ε MSE ×30 from t=980"), "{log}");
    assert!(log.contains("ε MSE on a fixed batch · t=999"), "{log}");
    let state: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            std::fs::read_dir(tail.join("checkpoints"))
                .unwrap()
                .next()
                .unwrap()
                .unwrap()
                .path()
                .join("state.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(state["settings"]["tail_fraction"], 0.3, "{state}");
    assert_eq!(state["settings"]["tail_from"], 980, "{state}");
    assert_eq!(state["settings"]["tail_weight"], 30.0, "{state}");
    for bad in ["1.5", "0.3:1000", "most", "0.3:980:0", "0.3:980:2:1"] {
        let refused = disa()
            .args(["train", "--out", other.to_str().unwrap(), "--steps", "1"])
            .args(["--tail-timesteps", bad])
            .output()
            .unwrap();
        assert!(!refused.status.success(), "{bad} accepted");
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("--tail-timesteps"), "{bad}: {err}");
    }
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
