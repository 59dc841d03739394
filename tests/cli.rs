//! The `disa` program as a user runs it, and the same-seed-same-image promise across backends.

mod common;

use common::*;
use disa::noise::SeededNoise;
use disa::sampler::{Generation, Request};
use disa::schedule::StepSchedule;
use std::process::Command;

fn disa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_disa"))
}

#[test]
fn schedule_totals_match_the_official_code() {
    // DiSA's defaults, K = 64 and 256 tokens: step counts from Qinyu-Allen-Zhao/DiSA
    // `MAR_DiSA/models/diffloss.py`, `DiffLoss.sample`, with the 950 clip of
    // `MAR_DiSA/diffusion/__init__.py`, `create_diffusion`; tokens per step from LTH14/mar
    // `models/mar.py`, `MAR.sample_tokens`. The totals are that code's.
    for (schedule, calls, token_steps) in [
        ("linear:50:5", 1681, 5246),
        ("cosine:50:5", 1674, 4891),
        ("two-stage:50:5", 1696, 4505),
    ] {
        let out = disa()
            .args([
                "schedule",
                "--ar-steps",
                "64",
                "--tokens",
                "256",
                "--schedule",
                schedule,
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            text.contains(&format!("sequential head calls: {calls}")),
            "{schedule}:\n{text}"
        );
        assert!(
            text.contains(&format!("token·steps: {token_steps} ")),
            "{schedule}:\n{text}"
        );
    }
}

#[test]
fn bad_settings_exit_with_a_message() {
    // Each with what the message must say: the value and the rule, or the accepted choices.
    for (args, needles) in [
        (
            vec!["schedule", "--schedule", "linear:5:50"],
            vec![
                "linear:5:50",
                "end steps (50) must not exceed start steps (5)",
            ],
        ),
        (
            vec!["schedule", "--ar-steps", "0"],
            vec!["AR steps must be at least 1"],
        ),
        (
            vec!["schedule", "--ar-steps", "300", "--tokens", "256"],
            vec!["300 AR steps for 256 tokens", "K ≤ 256"],
        ),
        (
            vec!["schedule", "--schedule", "constant:0"],
            vec!["0 diffusion steps", "at least 2"],
        ),
        (
            vec!["schedule", "--schedule", "fast"],
            vec!["unknown schedule `fast`", "linear:START:END"],
        ),
        (
            vec!["schedule", "--clip", "soon"],
            vec!["clip `soon`", "none or default"],
        ),
        (
            vec!["schedule", "--cfg-schedule", "cubic"],
            vec!["cubic", "linear", "constant"],
        ),
        (
            vec!["generate", "--backend", "tpu"],
            vec!["tpu", "cpu", "wgpu"],
        ),
        (
            vec!["convert", "--storage", "int2", "--out", "x.safetensors"],
            vec!["int2", "f32", "f16", "int8", "int4"],
        ),
        (
            vec!["convert", "--to", "onnx", "--out", "x.safetensors"],
            vec!["onnx", "disa", "official"],
        ),
        (
            vec!["generate", "--weights", "/nonexistent/model.safetensors"],
            vec!["/nonexistent/model.safetensors"],
        ),
        // Counts that would run for ever or exhaust memory have an upper limit, said in the
        // message.
        (
            vec!["bench", "--repeats", "1000000000000"],
            vec!["--repeats 1000000000000", "at most 10000"],
        ),
        (
            vec!["bench", "--batch", "100000000"],
            vec!["100000000 images", "1048576", "lower --batch"],
        ),
        (
            vec!["eval", "--quick", "--bootstrap", "1000000000000"],
            vec!["--bootstrap 1000000000000", "at most 100000"],
        ),
        (
            vec![
                "schedule",
                "--tokens",
                "100000000",
                "--ar-steps",
                "100000000",
                "--schedule",
                "constant:2",
            ],
            vec!["--tokens 100000000", "at most 1048576"],
        ),
        (
            // (2^32 − 1)², which wrapped the token·steps total around.
            vec![
                "schedule",
                "--tokens",
                "18446744065119617025",
                "--ar-steps",
                "4",
            ],
            vec!["--tokens 18446744065119617025", "at most 1048576"],
        ),
        // Sampling settings too large for a meaningful image are refused by every command, with
        // the bound (the shared check of the library's request).
        (
            vec![
                "schedule",
                "--tokens",
                "16",
                "--ar-steps",
                "4",
                "--cfg",
                "1e38",
            ],
            vec!["cfg 1", "1..=1000"],
        ),
        (
            vec!["bench", "--ar-steps", "2", "--temperature", "1e38"],
            vec!["temperature 1", "0..=100"],
        ),
        (
            vec!["bench", "--ar-steps", "2", "--cfg", "1001"],
            vec!["cfg 1001", "1..=1000"],
        ),
        (
            vec!["eval", "--quick", "--temperature", "101"],
            vec!["temperature 101", "0..=100"],
        ),
        // `convert` names its output for what it holds.
        (
            vec!["convert", "--out", "cv.txt"],
            vec!["--out cv.txt", ".safetensors"],
        ),
        (
            vec!["convert", "--out", "x.ckpt"],
            vec!["--out x.ckpt", ".safetensors", "--to official"],
        ),
        (
            vec!["convert", "--to", "official", "--out", "x.bin"],
            vec!["x.bin", ".pth", ".pt", ".ckpt", ".safetensors"],
        ),
    ] {
        let out = disa().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        for needle in needles {
            assert!(err.contains(needle), "{args:?}: `{needle}` not in: {err}");
        }
    }
    // A value quoted back in a message reaches the terminal without its escape sequences.
    let out = disa()
        .args(["schedule", "--schedule", "\u{1b}]0;title\u{7}fast\u{1b}[2J"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "a usage error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: ") && err.contains("fast"), "{err}");
    assert!(!err.contains('\u{1b}') && !err.contains('\u{7}'), "{err:?}");
}

#[test]
fn help_lists_the_choices_of_fixed_value_options() {
    // `--help` lists each choice as "- NAME: what it does"; `-h` as "[possible values: …]".
    for (command, choices) in [
        (
            "generate",
            &[
                "- cpu:",
                "- wgpu:",
                "- auto:",
                "- fused:",
                "- tensor:",
                "- linear:",
                "- constant:",
            ][..],
        ),
        (
            "convert",
            &[
                "- f32:",
                "- f16:",
                "- int8:",
                "- int4:",
                "- disa:",
                "- official:",
            ],
        ),
        (
            "bench",
            &[
                "[possible values: mar_base, mar_large, mar_huge, fashion]",
                "--json",
            ],
        ),
    ] {
        let out = disa().args([command, "--help"]).output().unwrap();
        assert!(out.status.success());
        let text = String::from_utf8(out.stdout).unwrap();
        for choice in choices {
            assert!(
                text.contains(choice),
                "{command} --help lacks `{choice}`:\n{text}"
            );
        }
    }
    let out = disa().args(["generate", "-h"]).output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("[possible values: cpu, wgpu]"),
        "generate -h:\n{text}"
    );
}

/// Runs `disa generate` with the built-in model (or `weights`) and returns its summary line.
fn summary_line(weights: Option<&std::path::Path>, flags: &[&str]) -> String {
    let dir = std::env::temp_dir().join(format!("disa-cli-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cmd = disa();
    cmd.args(["generate", "--class", "1", "--out"])
        .arg(dir.join("x.ppm"))
        .args(flags);
    if let Some(w) = weights {
        cmd.arg("--weights").arg(w);
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines()
        .find(|l| l.starts_with("schedule "))
        .unwrap_or_else(|| panic!("no summary line:\n{text}"))
        .to_string()
}

#[test]
fn model_defaults_apply_unless_a_flag_overrides_them() {
    // The built-in model suggests K = 16, linear 50→5, cfg 5 (linear), temperature 1.
    let line = summary_line(None, &["--ar-steps", "2"]);
    assert!(
        line.contains("schedule linear:50:5 · K=2 · cfg 5 (linear) · temperature 1 ·"),
        "{line}"
    );
    // A model that suggests every field: each is used, and each flag wins over it.
    let shipped = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("www/assets/model.safetensors"),
    )
    .unwrap();
    let mut bundle = disa::weights::Bundle::from_bytes("shipped", &shipped).unwrap();
    let dir = std::env::temp_dir().join(format!("disa-cli-suggest-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut write = |defaults: serde_json::Value, name: &str| {
        bundle.info.defaults = defaults;
        let path = dir.join(name);
        std::fs::write(&path, bundle.to_bytes().unwrap()).unwrap();
        path
    };
    let suggesting = write(
        serde_json::json!({"arSteps": 3, "schedule": "cosine:20:4", "cfg": 2.5,
                           "cfgSchedule": "constant", "temperature": 0.75}),
        "suggesting.safetensors",
    );
    let line = summary_line(Some(&suggesting), &[]);
    assert!(
        line.contains("schedule cosine:20:4 · K=3 · cfg 2.5 (constant) · temperature 0.75 ·"),
        "{line}"
    );
    let line = summary_line(
        Some(&suggesting),
        &[
            "--ar-steps",
            "2",
            "--schedule",
            "constant:8",
            "--cfg",
            "1.5",
            "--cfg-schedule",
            "linear",
            "--temperature",
            "1.25",
        ],
    );
    assert!(
        line.contains("schedule constant:8 · K=2 · cfg 1.5 (linear) · temperature 1.25 ·"),
        "{line}"
    );
    // A misspelt or invalid suggestion is an error naming it, not silently ignored.
    for (defaults, needle) in [
        (serde_json::json!({"ar_steps": 3}), "ar_steps"),
        (serde_json::json!({"cfg": 0.5}), "cfg"),
    ] {
        let bad = write(defaults, "bad.safetensors");
        let out = disa()
            .args(["generate", "--out"])
            .arg(dir.join("never.ppm"))
            .arg("--weights")
            .arg(&bad)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("defaults") && err.contains(needle),
            "{needle}: {err}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `disa convert --defaults` merges suggested settings over the source's: the keys given win,
/// the others stay; a bad value is refused and nothing is written.
#[test]
fn convert_sets_the_suggested_settings() {
    let dir =
        std::env::temp_dir().join(format!("disa-cli-convert-defaults-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("suggests.safetensors");
    let run = |defaults: &str, out: &std::path::Path| {
        disa()
            .args([
                "convert",
                "--storage",
                "int8",
                "--defaults",
                defaults,
                "--out",
            ])
            .arg(out)
            .output()
            .unwrap()
    };
    let done = run(r#"{"cfg": 4.5, "temperature": 0.9}"#, &out);
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let line = summary_line(Some(&out), &["--ar-steps", "2"]);
    assert!(
        line.contains("schedule linear:50:5 · K=2 · cfg 4.5 (linear) · temperature 0.9 ·"),
        "{line}"
    );
    for (defaults, needle) in [
        (r#"{"cfg": 0.5}"#, "cfg"),
        (r#"{"arSteps": 65}"#, "K ≤ 64"),
        (r#"{"ar_steps": 4}"#, "ar_steps"),
        ("[4]", "JSON object"),
        ("cfg=4", "not JSON"),
    ] {
        let never = dir.join("never.safetensors");
        let refused = run(defaults, &never);
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(!refused.status.success(), "{defaults} was accepted");
        assert!(
            err.contains("--defaults") && err.contains(needle),
            "{defaults}: {err}"
        );
        assert!(!never.exists(), "{defaults}: a file was written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn generate_writes_a_png() {
    let dir = std::env::temp_dir().join(format!("disa-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("img.png");
    let weights = reference_dir().join("checkpoint-last.pth");
    let status = disa()
        .args([
            "generate",
            "--weights",
            weights.to_str().unwrap(),
            "--class",
            "3",
            "--seed",
            "7",
        ])
        .args([
            "--ar-steps",
            "4",
            "--schedule",
            "linear:20:5",
            "--cfg",
            "2.0",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let bytes = std::fs::read(&out).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    let decoder = png::Decoder::new(std::io::Cursor::new(bytes));
    let reader = decoder.read_info().unwrap();
    let info = reader.info();
    let side = config().grid_size() * 16;
    assert_eq!((info.width as usize, info.height as usize), (side, side));
    let stdout = String::from_utf8_lossy(&status.stdout);
    assert!(
        stdout.contains("diffusion head"),
        "timing table printed:\n{stdout}"
    );
}

/// What the README promises for the same seed across backends, as a user sees it: `disa
/// generate --backend cpu` and `--backend wgpu` write images whose 8-bit values are at most 1
/// level apart, in at most 1% of the values.
#[cfg(feature = "wgpu")]
#[test]
fn same_seed_same_image_on_cpu_and_wgpu() {
    let dir = std::env::temp_dir().join(format!("disa-cli-backends-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let weights = reference_dir().join("checkpoint-last.pth");
    let run = |backend: &str| {
        let out = dir.join(format!("{backend}.ppm"));
        let o = disa()
            .args(["generate", "--backend", backend, "--weights"])
            .arg(&weights)
            .args(["--class", "3,7", "--seed", "11", "--ar-steps", "4"])
            .args([
                "--schedule",
                "linear:30:5",
                "--cfg",
                "2",
                "--quiet",
                "--out",
            ])
            .arg(&out)
            .output()
            .unwrap();
        (o, out)
    };
    let (cpu, cpu_path) = run("cpu");
    assert!(
        cpu.status.success(),
        "{}",
        String::from_utf8_lossy(&cpu.stderr)
    );
    let (gpu, gpu_path) = run("wgpu");
    let err = String::from_utf8_lossy(&gpu.stderr);
    if !gpu.status.success() && err.contains("no usable GPU adapter") {
        eprintln!("no wgpu adapter on this machine: nothing to compare ({err})");
        return;
    }
    assert!(gpu.status.success(), "{err}");
    let (a, b) = (
        std::fs::read(&cpu_path).unwrap(),
        std::fs::read(&gpu_path).unwrap(),
    );
    let header = b"P6\n".len() + a[3..].iter().position(|&c| c == b'\n').unwrap() + 1;
    let header = header + a[header..].iter().position(|&c| c == b'\n').unwrap() + 1;
    assert_eq!(a.len(), b.len(), "same image size");
    assert_eq!(a[..header], b[..header], "same PPM header");
    let (a, b) = (&a[header..], &b[header..]);
    let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    eprintln!(
        "{differing} of {} 8-bit values differ, by at most {worst}",
        a.len()
    );
    assert!(worst <= 1, "values {worst} levels apart");
    assert!(
        differing * 100 <= a.len(),
        "{differing} of {} values differ",
        a.len()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same promise in the library: the same tokens within float tolerance, and decoded 8-bit
/// pixels at most 1 level apart.
#[cfg(feature = "wgpu")]
#[test]
fn same_seed_same_tokens_and_pixels_within_one_level_on_cpu_and_wgpu() {
    let request = Request {
        labels: vec![Some(3), Some(7)],
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 30, end: 5 },
        cfg: 2.0,
        ..Request::default()
    };
    let run = |device: burn::tensor::Device| {
        let g = generator(&device);
        let mut generation =
            Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(11))).unwrap();
        generation.run_to_end().unwrap();
        let tokens = generation.tokens().to_vec();
        let pixels = generation
            .decode()
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        (tokens, pixels)
    };
    let Ok(gpu_device) = disa::backend::Backend::Wgpu.device() else {
        eprintln!("no wgpu adapter on this machine: nothing to compare");
        return;
    };
    let (cpu_tokens, cpu) = run(burn::tensor::Device::flex());
    let (gpu_tokens, gpu) = run(gpu_device);
    let worst = |a: &[f32], b: &[f32]| {
        let absmax = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a.iter().zip(b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        (diff, absmax)
    };
    let (diff, absmax) = worst(&cpu_tokens, &gpu_tokens);
    assert!(
        diff <= 1e-3 * absmax.max(1.0),
        "tokens: max diff {diff} (absmax {absmax})"
    );
    let levels: Vec<i32> = cpu
        .iter()
        .zip(&gpu)
        .map(|(a, b)| (disa::image::to_u8(*a) as i32 - disa::image::to_u8(*b) as i32).abs())
        .collect();
    let worst_level = levels.iter().copied().max().unwrap_or(0);
    assert!(worst_level <= 1, "pixels {worst_level} levels apart");
    eprintln!(
        "tokens max diff {diff:.2e}; {} of {} 8-bit values differ (by at most 1)",
        levels.iter().filter(|&&l| l > 0).count(),
        cpu.len()
    );
}

/// `disa bench --json`'s document.
fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = disa()
        .arg("bench")
        .arg("--json")
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not one JSON document ({e}):\n{}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

#[test]
fn bench_reports_ratios_against_the_first_schedule() {
    let weights = reference_dir().join("checkpoint-last.pth");
    let report = bench_json(&[
        "--weights",
        weights.to_str().unwrap(),
        "--schedules",
        "constant:20;linear:20:5",
        "--ar-steps",
        "4",
        "--repeats",
        "1",
    ]);
    assert_eq!(report["arSteps"], 4);
    assert_eq!(report["backend"], "cpu");
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{report:#}");
    assert_eq!(rows[0]["schedule"], "constant:20");
    assert_eq!(rows[1]["schedule"], "linear:20:5");
    // The baseline compares with itself; K=4 linear 20→5 runs 20+15+10+5 = 50 calls vs 80
    // (constant schedules keep all 20 timesteps: no clip by default).
    assert_eq!(rows[0]["headCalls"], 80);
    assert_eq!(rows[0]["speedUp"], 1.0);
    assert_eq!(rows[0]["headCallRatio"], 1.0);
    assert_eq!(rows[1]["headCalls"], 50);
    assert_eq!(rows[1]["headCallRatio"], 1.6);
    for row in rows {
        assert_eq!(row["kernels"], "auto");
        assert_eq!(row["head"], "tensor", "no fused head on the CPU");
        assert!(row["launches"].is_null(), "{row}");
        let seconds = row["secondsPerImage"].as_f64().unwrap();
        let head = row["headSecondsPerImage"].as_f64().unwrap();
        assert!(seconds > 0.0 && head > 0.0 && head <= seconds, "{row}");
        let speed_up = row["speedUp"].as_f64().unwrap();
        let base = rows[0]["secondsPerImage"].as_f64().unwrap();
        assert!((speed_up - base / seconds).abs() < 1e-9, "{row}");
        let head_speed_up = row["headSpeedUp"].as_f64().unwrap();
        let base_head = rows[0]["headSecondsPerImage"].as_f64().unwrap();
        assert!((head_speed_up - base_head / head).abs() < 1e-9, "{row}");
    }
    // The head's arithmetic follows the token·steps; the transformer's the AR steps alone.
    let macs = |i: usize, part: &str| rows[i]["macsPerImage"][part].as_u64().unwrap();
    let token_steps = |i: usize| rows[i]["tokenSteps"].as_u64().unwrap();
    assert!(
        macs(0, "transformer") > 0 && macs(1, "head") > 0,
        "{report:#}"
    );
    assert_eq!(macs(0, "transformer"), macs(1, "transformer"));
    assert_eq!(
        macs(0, "head") * token_steps(1),
        macs(1, "head") * token_steps(0),
        "{report:#}"
    );
    assert!(report["moduleWeightBytes"].as_u64().unwrap() > 0);
    assert!(report["fusedHeadWeightBytes"].is_null());
}

#[test]
fn bench_times_preset_shapes_and_takes_a_clip() {
    let report = bench_json(&[
        "--shapes",
        "fashion",
        "--clip",
        "950",
        "--schedules",
        "constant:50",
        "--ar-steps",
        "4",
        "--repeats",
        "1",
    ]);
    assert_eq!(report["model"], "fashion (random weights)");
    assert_eq!(report["clip"], "950");
    // 50 respaced steps keep 48 distinct timesteps under the 950 clip: 4 × 48 head calls.
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{report:#}");
    assert_eq!(rows[0]["headCalls"], 192);
    // The table is the same run's numbers, for people.
    let out = disa()
        .args(["bench", "--shapes", "fashion", "--schedules", "constant:4"])
        .args(["--ar-steps", "2", "--repeats", "1"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fashion (random weights)"), "{text}");
    assert!(text.contains("head calls"), "{text}");
    for (bad, needle) in [
        (vec!["--shapes", "mar_tiny"], "mar_tiny"),
        (
            vec!["--shapes", "fashion", "--weights", "x.safetensors"],
            "--weights",
        ),
        (vec!["--clip", "soon"], "soon"),
    ] {
        let o = disa().arg("bench").args(&bad).output().unwrap();
        assert!(!o.status.success(), "{bad:?} accepted");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{bad:?}: {err}");
    }
}

/// On a GPU, `--kernels tensor,fused` times both heads in one run: the fused rows count their
/// launches and the report gives the fused head's weight bytes; `--token-loop-threads 64,128`
/// gives the fused head one row per workgroup size, and asks for a fused head.
#[cfg(feature = "wgpu")]
#[test]
fn bench_json_reports_fused_launches_on_wgpu() {
    let out = disa()
        .args([
            "bench",
            "--json",
            "--backend",
            "wgpu",
            "--shapes",
            "fashion",
        ])
        .args([
            "--schedules",
            "constant:4",
            "--ar-steps",
            "2",
            "--repeats",
            "1",
        ])
        .args([
            "--kernels",
            "tensor,fused",
            "--token-loop-threads",
            "64,128",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() && err.contains("no usable GPU adapter") {
        eprintln!("no wgpu adapter on this machine: nothing to time ({err})");
        return;
    }
    assert!(out.status.success(), "{err}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["backend"], "wgpu");
    assert!(
        report["fusedHeadWeightBytes"].as_u64().unwrap() > 0,
        "{report:#}"
    );
    let rows = report["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{report:#}");
    assert_eq!(
        (&rows[0]["kernels"], &rows[0]["head"]),
        (&"tensor".into(), &"tensor".into())
    );
    assert!(rows[0]["launches"].is_null(), "{report:#}");
    assert!(rows[0]["tokenLoopThreads"].is_null(), "{report:#}");
    for (row, threads) in rows[1..].iter().zip([64, 128]) {
        assert_eq!(
            (&row["kernels"], &row["head"], &row["tokenLoopThreads"]),
            (&"fused".into(), &"fused".into(), &threads.into()),
            "{report:#}"
        );
        // Counted, not guessed: the fused head's dispatches during the run.
        assert!(row["launches"].as_u64().unwrap() > 0, "{report:#}");
    }

    for (kernels, threads, needle) in [
        ("tensor", "64", "add --kernels fused"),
        ("fused", "8", "token_loop threads 8"),
        ("fused", "300", "token_loop threads 300"),
    ] {
        let out = disa()
            .args(["bench", "--backend", "wgpu", "--shapes", "fashion"])
            .args([
                "--schedules",
                "constant:2",
                "--ar-steps",
                "2",
                "--repeats",
                "1",
            ])
            .args(["--kernels", kernels, "--token-loop-threads", threads])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && !err.contains("panicked"), "{err}");
        assert!(err.contains(needle), "{kernels} {threads}: {err}");
    }
}

/// A fresh, empty folder under the system's temporary folder.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("disa-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Asserts a run failed with a message holding every needle, and printed nothing on stdout
/// (no table header: the settings were refused before any work).
fn refused(out: &std::process::Output, what: &str, needles: &[&str]) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{what}: succeeded");
    assert!(err.starts_with("error: "), "{what}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{what}: `{needle}` not in: {err}");
    }
    assert!(
        out.stdout.is_empty(),
        "{what}: printed before refusing:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// `disa convert` never writes over one of its inputs: the weights (also through a link), the
/// VAE given or found beside them. Run on copies of the reference files, which must stay
/// byte-identical.
#[test]
fn convert_refuses_to_overwrite_its_inputs() {
    let dir = fresh_dir("convert-inputs");
    let reference = reference_dir();
    for name in ["checkpoint-last.pth", "manifest.json", "vae.ckpt"] {
        std::fs::copy(reference.join(name), dir.join(name)).unwrap();
    }
    let weights = dir.join("checkpoint-last.pth");
    let vae = dir.join("vae.ckpt");
    let original = std::fs::read(&weights).unwrap();
    let original_vae = std::fs::read(&vae).unwrap();
    let link = dir.join("link.pth");
    #[cfg(unix)]
    std::os::unix::fs::symlink(&weights, &link).unwrap();
    #[cfg(not(unix))]
    std::fs::copy(&weights, &link).unwrap();
    let convert = |extra: &[&str], out: &std::path::Path| {
        disa()
            .arg("convert")
            .arg("--weights")
            .arg(&weights)
            .args(extra)
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let mut cases: Vec<(Vec<&str>, std::path::PathBuf, &str)> = vec![
        (vec!["--to", "official"], weights.clone(), "--weights"),
        (
            vec!["--to", "official"],
            vae.clone(),
            "the VAE found beside --weights",
        ),
        (
            vec!["--to", "official", "--vae", vae.to_str().unwrap()],
            // The same file under another spelling.
            dir.join(".").join("vae.ckpt"),
            "--vae",
        ),
    ];
    if cfg!(unix) {
        cases.push((vec!["--to", "official"], link.clone(), "--weights"));
    }
    for (extra, out, what) in cases {
        let o = convert(&extra, &out);
        refused(
            &o,
            &format!("{extra:?} --out {}", out.display()),
            &["is the same file as", what, "choose another --out"],
        );
        assert_eq!(
            std::fs::read(&weights).unwrap(),
            original,
            "the weights changed"
        );
        assert_eq!(
            std::fs::read(&vae).unwrap(),
            original_vae,
            "the VAE changed"
        );
    }
    // The same conversion to a new file works (the copies are a valid model).
    let fresh = dir.join("exported.pth");
    let o = convert(&["--to", "official"], &fresh);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(fresh.exists());
    assert_eq!(std::fs::read(&weights).unwrap(), original);
    let _ = std::fs::remove_dir_all(&dir);
}

/// `disa analyze --out` is a file prefix: a folder (`runs/`, or an existing folder's name)
/// would make hidden files (`runs/.csv`), so it is refused before any work, with an example.
#[test]
fn analyze_refuses_an_out_without_a_file_name() {
    let dir = fresh_dir("analyze-out");
    let slash = format!("{}/", dir.display());
    let dot = format!("{}/.", dir.display());
    for out in [slash.as_str(), dot.as_str(), dir.to_str().unwrap()] {
        let o = disa()
            .args(["analyze", "--ar-steps", "2", "--samples", "2", "--out", out])
            .output()
            .unwrap();
        refused(&o, out, &["--out", "file prefix", "analysis.csv"]);
    }
    let written: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(written.is_empty(), "files written: {written:?}");
    // A prefix inside the folder writes the three files there.
    let prefix = dir.join("a");
    let o = disa()
        .args([
            "analyze",
            "--ar-steps",
            "2",
            "--samples",
            "2",
            "--quiet",
            "--out",
        ])
        .arg(&prefix)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for name in ["a.csv", "a-tokens.csv", "a.svg"] {
        assert!(dir.join(name).exists(), "{name} not written");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench`, `analyze` and `eval` check what they can before loading the model: with weights
/// that do not exist, the bad setting is what they report, and `bench` prints no table header.
#[test]
fn settings_are_checked_before_the_model_is_loaded() {
    let missing = "/nonexistent/model.safetensors";
    let dir = fresh_dir("before-loading");
    let prefix = dir.join("a");
    let prefix = prefix.to_str().unwrap();
    for (args, needles) in [
        (
            vec!["bench", "--clip", "0"],
            vec!["timestep clip 0", "1..=1000"],
        ),
        (
            vec!["bench", "--schedules", "custom:5,4,3", "--ar-steps", "4"],
            vec!["custom schedule lists 3 step counts", "4 AR steps"],
        ),
        (
            vec!["bench", "--kernels", "fused"],
            vec!["--kernels fused", "--backend wgpu"],
        ),
        (
            vec!["bench", "--token-loop-threads", "64"],
            vec!["--token-loop-threads", "--backend wgpu"],
        ),
        (
            vec!["bench", "--repeats", "10001"],
            vec!["--repeats 10001", "at most 10000"],
        ),
        (
            vec!["bench", "--batch", "2000000"],
            vec!["2000000 images", "lower --batch"],
        ),
        (vec!["bench", "--cfg", "1e38"], vec!["cfg 1", "1..=1000"]),
        (
            vec!["analyze", "--out", prefix, "--temperature", "1e38"],
            vec!["temperature 1", "0..=100"],
        ),
        (
            vec!["analyze", "--out", prefix, "--class", "1", "--cfg", "1e38"],
            vec!["cfg 1", "1..=1000"],
        ),
        (
            vec!["analyze", "--out", prefix, "--batch", "100000000"],
            vec!["100000000 images", "1048576", "lower --batch"],
        ),
        (
            vec!["analyze", "--out", prefix, "--clip", "1001"],
            vec!["timestep clip 1001", "1..=1000"],
        ),
        (
            vec!["analyze", "--out", prefix, "--samples", "1"],
            vec!["at least 2 re-samples"],
        ),
        (
            vec!["analyze", "--out", prefix, "--batch", "2000000"],
            vec!["2000000 images", "lower --batch"],
        ),
        (
            vec![
                "analyze",
                "--out",
                prefix,
                "--schedule",
                "custom:5,4",
                "--ar-steps",
                "3",
            ],
            vec!["custom schedule lists 2 step counts", "3 AR steps"],
        ),
        (
            vec!["eval", "--quick", "--cfg", "1e38"],
            vec!["cfg 1", "1..=1000"],
        ),
        (
            vec!["eval", "--quick", "--schedules", "linear:50:5@0"],
            vec!["timestep clip 0", "1..=1000"],
        ),
        (
            vec![
                "eval",
                "--quick",
                "--schedules",
                "custom:3,2",
                "--ar-steps",
                "4",
            ],
            vec!["custom schedule lists 2 step counts", "4 AR steps"],
        ),
    ] {
        let o = disa()
            .args(&args)
            .args(["--weights", missing])
            .output()
            .unwrap();
        refused(&o, &format!("{args:?}"), &needles);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!err.contains(missing), "{args:?}: loaded first: {err}");
    }
    let written: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
    assert!(written.is_empty(), "files written: {written:?}");
    // What needs the model (a custom schedule against the model's K) still fails before the
    // table: the built-in model suggests K = 16.
    let o = disa()
        .args(["bench", "--schedules", "constant:4;custom:5,4,3"])
        .output()
        .unwrap();
    refused(
        &o,
        "custom:5,4,3 at K=16",
        &["3 step counts", "16 AR steps"],
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// `disa schedule`'s table: the masked column counts the tokens still masked after each step,
/// so the last row, which reveals every token left (as the official code's last step does),
/// shows 0; the totals stay the official code's.
#[test]
fn schedule_table_counts_the_tokens_left_masked() {
    for (k, tokens) in [(4, 16), (64, 256), (1, 16), (16, 16)] {
        let out = disa()
            .args(["schedule", "--ar-steps", &k.to_string()])
            .args(["--tokens", &tokens.to_string(), "--cfg", "3"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8(out.stdout).unwrap();
        let rows: Vec<Vec<f64>> = text
            .lines()
            .skip(2)
            .take(k)
            .map(|l| l.split_whitespace().map(|v| v.parse().unwrap()).collect())
            .collect();
        assert_eq!(rows.len(), k, "{text}");
        let mut masked = tokens as f64;
        for row in &rows {
            masked -= row[1];
            assert_eq!(
                row[2], masked,
                "K={k}, N={tokens}, step {}:\n{text}",
                row[0]
            );
        }
        assert_eq!(rows.last().unwrap()[2], 0.0, "{text}");
    }
}

/// The linear CFG scale multiplies before it divides, as the official code does, so every
/// accepted scale rounds the same; a scale whose product alone would overflow gives a finite
/// result instead of infinity.
#[test]
fn linear_cfg_scale_keeps_the_official_rounding_and_never_overflows() {
    use disa::schedule::CfgSchedule;
    for cfg in [1.0f32, 1.1, 1.5, 2.0, 3.0, 4.5, 7.3, 1000.0] {
        for (mask_len, n) in [
            (255, 256),
            (128, 256),
            (1, 256),
            (0, 256),
            (13, 64),
            (1, 16),
        ] {
            let official = 1.0 + (cfg - 1.0) * (n as f32 - mask_len as f32) / n as f32;
            let ours = CfgSchedule::Linear.scale(cfg, mask_len, n);
            assert_eq!(
                ours.to_bits(),
                official.to_bits(),
                "cfg {cfg}, {mask_len}/{n}"
            );
        }
    }
    for cfg in [1e38f32, f32::MAX] {
        for mask_len in [0, 1, 128, 255] {
            let scale = CfgSchedule::Linear.scale(cfg, mask_len, 256);
            assert!(
                scale.is_finite() && scale <= cfg,
                "cfg {cfg}, {mask_len}: {scale}"
            );
        }
    }
}
