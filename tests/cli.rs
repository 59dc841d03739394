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
fn schedule_totals_match_the_spec() {
    // SPEC §1.5: K = 64, 256 tokens.
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
    for args in [
        vec!["schedule", "--schedule", "linear:5:50"],
        vec!["schedule", "--ar-steps", "0"],
        vec!["schedule", "--ar-steps", "300", "--tokens", "256"],
        vec!["schedule", "--schedule", "constant:0"],
        vec!["generate", "--weights", "/nonexistent/model.safetensors"],
    ] {
        let out = disa().args(&args).output().unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.starts_with("error: "), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
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

/// What the README promises for the same seed across backends: the same tokens within float
/// tolerance, and decoded 8-bit pixels at most 1 level apart.
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

#[test]
fn bench_reports_ratios_against_the_first_schedule() {
    let weights = reference_dir().join("checkpoint-last.pth");
    let out = disa()
        .args([
            "bench",
            "--weights",
            weights.to_str().unwrap(),
            "--schedules",
            "constant:20;linear:20:5",
        ])
        .args(["--ar-steps", "4", "--repeats", "1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("constant:") || l.starts_with("linear:"))
        .collect();
    assert_eq!(rows.len(), 2, "{text}");
    // The baseline row compares with itself; K=4 linear 20→5 runs 20+15+10+5 = 50 calls vs 80.
    assert!(
        rows[0].contains("1.00×") && rows[0].contains(" 80 "),
        "{}",
        rows[0]
    );
    assert!(
        rows[1].contains(" 50 ") && rows[1].contains("1.60×"),
        "{}",
        rows[1]
    );
}

#[test]
fn bench_times_preset_shapes_and_takes_a_clip() {
    let run = |args: &[&str]| disa().arg("bench").args(args).output().unwrap();
    let out = run(&[
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
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("fashion (random weights)"), "{text}");
    // 50 respaced steps keep 48 distinct timesteps under the 950 clip: 4 × 48 head calls.
    let row = text.lines().find(|l| l.starts_with("constant:50")).unwrap();
    assert!(row.contains(" 192 "), "{row}");
    for bad in [
        vec!["--shapes", "mar_tiny"],
        vec!["--shapes", "fashion", "--weights", "x.safetensors"],
        vec!["--clip", "soon"],
    ] {
        let o = run(&bad);
        assert!(!o.status.success(), "{bad:?} accepted");
        assert!(!String::from_utf8_lossy(&o.stderr).contains("panicked"));
    }
}
