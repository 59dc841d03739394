//! The fused diffusion-head kernels (`shaders/head.wgsl`, `src/gpu/`) against Burn's tensor
//! path on the same wgpu device (Mesa's lavapipe where no GPU exists): one head call (every
//! kernel once), whole generations with and without CFG, every storage of the project's file,
//! and the figures the fused path promises (launches per head call, weight memory). Small heads
//! run as one `token_loop` launch per AR step; each test also forces the per-layer kernels.

#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use disa::diffusion::p_sample;
use disa::diffusion::{SpacedDiffusion, TimestepClip};
use disa::gpu::{FusedHead, HeadJob, Kernels};
use disa::noise::SeededNoise;
use disa::sampler::{Generation, LoadedModel, Request, StepEvent};
use disa::schedule::{CfgSchedule, StepSchedule};
use disa::weights::{Bundle, Storage};
use std::sync::Arc;

/// Scaled tolerance for the fused path against the tensor path with the same weights: both
/// run f32 arithmetic on the same (dequantized) values; only the summation order differs.
const FUSED_TOLERANCE: f64 = 1e-4;

fn device() -> Device {
    disa::backend::Backend::Wgpu
        .device()
        .expect("a wgpu adapter (lavapipe on CI)")
}

/// The reference model stored as `storage`, built on the GPU with its fused head.
fn generator(storage: Storage) -> Arc<LoadedModel> {
    let bytes = official().to_bytes_as(storage).unwrap();
    let g = Bundle::from_bytes(storage.name(), &bytes)
        .unwrap()
        .into_generator(&device())
        .unwrap();
    assert!(
        g.fused_head().is_some(),
        "{}: no fused head: {}",
        storage.name(),
        g.fused_unavailable()
    );
    Arc::new(g)
}

/// The shipped model's file and the model built from it on the GPU.
fn shipped_on_gpu() -> (Bundle, Arc<LoadedModel>) {
    let bundle =
        Bundle::from_bytes("shipped", include_bytes!("../www/assets/model.safetensors")).unwrap();
    let g = Arc::new(bundle.clone().into_generator(&device()).unwrap());
    (bundle, g)
}

/// A short CFG generation of one image of `label` (K = 4, linear 10→5, CFG 2).
fn short_request(label: usize) -> Request {
    Request {
        labels: vec![Some(label)],
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 10, end: 5 },
        cfg: 2.0,
        ..Request::default()
    }
}

/// Every step event of `request` on `g` with `kernels`, the noise seeded by `seed`.
fn run_events(
    g: &Arc<LoadedModel>,
    request: &Request,
    seed: u64,
    kernels: Kernels,
) -> Vec<StepEvent> {
    Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(seed)))
        .unwrap()
        .kernels(kernels)
        .run_to_end()
        .unwrap()
}

/// Each AR step's tokens in `fused` lie within `FUSED_TOLERANCE` (scaled) of `tensor`'s;
/// `what` names the run in a failure.
fn assert_steps_close(tensor: &[StepEvent], fused: &[StepEvent], what: &str) {
    for (a, b) in tensor.iter().zip(fused) {
        let err = scaled(&b.values, &a.values);
        assert!(err <= FUSED_TOLERANCE, "{what}, step {}: {err:.3e}", a.k);
    }
}

/// Which form of the fused head a test runs.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `token_loop` with this many threads per workgroup: 32 and 64 make every thread take
    /// the tiny model's MLP columns (64) and adaLN columns (512) in pairs, 256 only the
    /// adaLN columns (`tl_dot2`); 64 is what a software adapter runs, 256 a GPU.
    TokenLoop(u32),
    /// `token_loop` reading each matrix's weight format at run time (what a file with mixed
    /// formats runs), not compiled for the format they share.
    TokenLoopAnyFormat(u32),
    /// The per-layer kernels.
    PerLayer,
}

fn use_form(fused: &FusedHead, storage: Storage, form: Form) {
    match form {
        Form::TokenLoop(threads) | Form::TokenLoopAnyFormat(threads) => {
            let any_format = matches!(form, Form::TokenLoopAnyFormat(_));
            fused.force_per_layer(false);
            fused.set_token_loop_threads(threads).unwrap();
            fused.set_token_loop_any_format(any_format);
            assert!(fused.uses_token_loop(), "a small head runs token_loop");
            assert_eq!(fused.token_loop_threads(), threads);
            // f32 and f16 files store every head matrix in one format, so `token_loop` is
            // compiled for it; int8/int4 files keep matrices whose input count is no multiple
            // of 32 in f16, and then the formats are read at run time.
            if any_format {
                assert!(!fused.token_loop_specialized());
            } else if matches!(storage, Storage::F32 | Storage::F16) {
                assert!(fused.token_loop_specialized(), "{}", fused.launch_summary());
            }
            eprintln!("{} ({form:?}): {}", storage.name(), fused.launch_summary());
        }
        Form::PerLayer => {
            fused.force_per_layer(true);
            assert!(!fused.uses_token_loop());
        }
    }
}

fn lcg(seed: u64, n: usize) -> Vec<f32> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// One head call — every kernel (condition embedding, input projection, the stacked adaLN
/// modulations, each block's two MLP kernels, the final layer with CFG and `p_sample`) —
/// against `forward_cfg_embedded` / `forward_embedded` and `p_sample` as tensors, at a
/// timestep with noise and at the last one, with and without guidance.
#[test]
fn one_head_call_matches_the_tensor_path() {
    for (storage, form) in [
        (Storage::F32, Form::TokenLoop(32)),
        (Storage::F32, Form::TokenLoop(64)),
        (Storage::F32, Form::TokenLoop(256)),
        (Storage::F32, Form::TokenLoopAnyFormat(64)),
        (Storage::F32, Form::PerLayer),
        (Storage::F16, Form::TokenLoop(64)),
        (Storage::Int8, Form::TokenLoop(32)),
        (Storage::Int8, Form::TokenLoop(256)),
        (Storage::Int8, Form::TokenLoopAnyFormat(256)),
        (Storage::Int8, Form::PerLayer),
        (Storage::Int4, Form::TokenLoop(64)),
        (Storage::Int4, Form::TokenLoop(256)),
        (Storage::Int4, Form::TokenLoopAnyFormat(64)),
    ] {
        let g = generator(storage);
        let fused = g.fused_head().unwrap();
        use_form(fused, storage, form);
        let time_table: Vec<f32> = g
            .model
            .head
            .time_embedding_table(disa::diffusion::NUM_BASE_TIMESTEPS, &g.device)
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        fused.set_time_table(&time_table).unwrap();
        let (c, dec) = (g.config.token_dim(), g.config.decoder_embed_dim);
        let diffusion = SpacedDiffusion::new(50, TimestepClip::DISA).unwrap();
        for (cfg, idx) in [(Some(3.0f32), 30), (None, 30), (Some(2.0), 0)] {
            let n = 5;
            let rows = if cfg.is_some() { 2 * n } else { n };
            let z = lcg(1, rows * dec);
            let x = lcg(2, n * c);
            let noise = lcg(3, n * c);
            let coeffs = diffusion.step_coefficients(idx);
            let submitted = fused
                .submit(&HeadJob {
                    z: &z,
                    tokens: n,
                    cfg,
                    steps: std::slice::from_ref(&coeffs),
                    init_noise: &x,
                    step_noise: &noise,
                    temperature: 0.9,
                })
                .unwrap();
            let got = fused.read(submitted).unwrap();

            let d = &g.device;
            let t2 = |v: &[f32], r: usize, k: usize| {
                Tensor::<2>::from_data(TensorData::new(v.to_vec(), [r, k]), d)
            };
            let cond = g.model.head.condition(t2(&z, rows, dec));
            let temb = g.time_embedding(coeffs.timestep);
            let (eps, v) = match cfg {
                Some(s) => g
                    .model
                    .head
                    .forward_cfg_embedded(t2(&x, n, c), temb, cond, s),
                None => {
                    let out = g.model.head.forward_embedded(t2(&x, n, c), temb, cond);
                    (out.clone().slice([0..n, 0..c]), out.slice([0..n, c..2 * c]))
                }
            };
            let want: Vec<f32> = p_sample(t2(&x, n, c), eps, v, &coeffs, t2(&noise, n, c), 0.9)
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let err = scaled(&got, &want);
            eprintln!(
                "{} ({form:?}) cfg {cfg:?} step {idx}: scaled error {err:.2e}",
                storage.name()
            );
            assert!(
                err <= FUSED_TOLERANCE,
                "{} ({form:?}): cfg {cfg:?}, step {idx}: {err:.3e}",
                storage.name()
            );
        }
    }
}

/// Every token of whole generations, fused against tensor, for every storage.
#[test]
fn generations_match_the_tensor_path_for_every_storage() {
    let requests = [
        Request {
            labels: vec![Some(1), Some(3)],
            ar_steps: 4,
            schedule: StepSchedule::Linear { start: 20, end: 5 },
            cfg: 3.0,
            cfg_schedule: CfgSchedule::Linear,
            ..Request::default()
        },
        Request {
            labels: vec![None],
            ar_steps: 3,
            schedule: StepSchedule::Constant(10),
            temperature: 0.8,
            ..Request::default()
        },
    ];
    for (storage, form) in [
        (Storage::F32, Form::TokenLoop(32)),
        (Storage::F32, Form::TokenLoop(256)),
        (Storage::F32, Form::PerLayer),
        (Storage::F16, Form::TokenLoop(64)),
        (Storage::Int8, Form::TokenLoop(64)),
        (Storage::Int8, Form::TokenLoop(256)),
        (Storage::Int8, Form::TokenLoopAnyFormat(64)),
        (Storage::Int8, Form::PerLayer),
        (Storage::Int4, Form::TokenLoop(32)),
    ] {
        let g = generator(storage);
        use_form(g.fused_head().unwrap(), storage, form);
        for request in &requests {
            let run = |kernels: Kernels| {
                let mut generation =
                    Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(7)))
                        .unwrap()
                        .kernels(kernels);
                let events = generation.run_to_end().unwrap();
                (events, generation.uses_fused_kernels())
            };
            let (tensor, used_tensor) = run(Kernels::Tensor);
            let (fused, used_fused) = run(Kernels::Fused);
            assert!(!used_tensor && used_fused);
            assert_eq!(tensor.len(), fused.len());
            for (a, b) in tensor.iter().zip(&fused) {
                assert_eq!(a.positions, b.positions);
            }
            assert_steps_close(&tensor, &fused, &format!("{} ({form:?})", storage.name()));
        }
    }
}

/// The built-in model's AR step is one launch (`token_loop`: all of the step's head calls);
/// per layer its head is 2·3 + 2 launches per call; an int8 file's head weights take under
/// 0.35× the f32 file's bytes on the GPU; f16 about half.
#[test]
fn launches_and_weight_memory() {
    let (bundle, g) = shipped_on_gpu();
    let fused = g.fused_head().expect("fused head for the built-in model");
    let request = short_request(2);
    for (per_layer, per_call) in [(false, 1), (true, 8)] {
        fused.force_per_layer(per_layer);
        assert_eq!(fused.dispatches_per_head_call(), per_call);
        let before = fused.dispatches();
        let mut generation =
            Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(1))).unwrap();
        let calls: usize = generation
            .run_to_end()
            .unwrap()
            .iter()
            .map(|e| e.effective_steps)
            .sum();
        let launched = (fused.dispatches() - before) as usize;
        let expected = match per_layer {
            // Per AR step: condition embedding and input projection, then 8 per call.
            true => 2 * request.ar_steps + 8 * calls,
            false => request.ar_steps,
        };
        assert_eq!(
            launched, expected,
            "per layer: {per_layer}, {calls} head calls"
        );
    }
    fused.force_per_layer(false);
    // Every matrix of the built-in int8 head is int8: `token_loop` is compiled for it.
    assert!(fused.token_loop_specialized());
    assert!(
        fused.launch_summary().ends_with("compiled for int8"),
        "{}",
        fused.launch_summary()
    );
    let bytes = |storage: Storage| {
        let b = Bundle::from_bytes("x", &bundle.to_bytes_as(storage).unwrap()).unwrap();
        b.into_generator(&device())
            .unwrap()
            .fused_head()
            .unwrap()
            .weight_bytes() as f64
    };
    let f32 = bytes(Storage::F32);
    let (f16, int8, int4) = (
        bytes(Storage::F16) / f32,
        bytes(Storage::Int8) / f32,
        bytes(Storage::Int4) / f32,
    );
    eprintln!(
        "head weights on the GPU: f32 {f32} B; f16 {f16:.3}, int8 {int8:.3}, int4 {int4:.3} of f32"
    );
    assert!(f16 < 0.55, "f16: {f16:.3}");
    assert!(int8 <= 0.35, "int8: {int8:.3}");
    assert!(int4 < int8, "int4: {int4:.3}");

    // Burn's modules (the transformer and the tensor-path head) keep an int8/int4 file's
    // Linear weights quantized on the GPU, and f32 on the CPU; the whole model's weights on the
    // GPU (modules and the fused head's copy) stay within 0.35× of f32 for int8.
    let module = |storage: Storage, device: &burn::tensor::Device| {
        let b = Bundle::from_bytes("x", &bundle.to_bytes_as(storage).unwrap()).unwrap();
        let g = b.into_generator(device).unwrap();
        let head = g.fused_head().map_or(0, |f| f.weight_bytes());
        (g.model.weight_bytes(), head)
    };
    let (cpu8, _) = module(Storage::Int8, &burn::tensor::Device::flex());
    assert_eq!(cpu8.bytes, cpu8.f32_bytes, "the CPU runs f32 weights");
    assert_eq!(cpu8.quantized_tensors, 0);
    let (f32_modules, f32_head) = module(Storage::F32, &device());
    assert_eq!(f32_modules.bytes, f32_modules.f32_bytes);
    let all_f32 = (f32_modules.bytes + f32_head) as f64;
    for (storage, at_most) in [(Storage::Int8, 0.35), (Storage::Int4, 0.25)] {
        let (m, head) = module(storage, &device());
        let whole = (m.bytes + head) as f64 / all_f32;
        eprintln!(
            "{storage:?} on the GPU: modules {:.3}× f32 ({} quantized tensors), with the fused head {whole:.3}×",
            m.bytes as f64 / m.f32_bytes as f64,
            m.quantized_tensors
        );
        assert!(m.quantized_tensors >= 20, "{storage:?}: {m:?}");
        assert!(whole <= at_most, "{storage:?}: {whole:.3}× f32");
    }
}

/// `token_loop` runs 64 threads per workgroup on a software adapter (lavapipe on CI) and 256
/// on a GPU; counts outside [token size, 256] are refused; and the built-in model (width 128,
/// so 64 threads take its MLP columns in pairs) generates the tensor path's tokens with
/// either count.
#[test]
fn token_loop_threads_follow_the_adapter() {
    let (_, g) = shipped_on_gpu();
    let fused = g.fused_head().expect("fused head for the built-in model");
    let expected = if disa::gpu::is_software(fused.adapter()) {
        64
    } else {
        256
    };
    assert_eq!(
        fused.token_loop_threads(),
        expected,
        "{:?}",
        fused.adapter()
    );
    for bad in [0, g.config.token_dim() as u32 - 1, 257, 1024] {
        let err = fused.set_token_loop_threads(bad).unwrap_err().to_string();
        assert!(err.contains("token_loop threads"), "{bad}: {err}");
    }
    assert_eq!(
        fused.token_loop_threads(),
        expected,
        "a refused count changes nothing"
    );
    let request = Request {
        labels: vec![Some(5), None],
        ..short_request(0)
    };
    let tensor = run_events(&g, &request, 4, Kernels::Tensor);
    for threads in [64, 256] {
        fused.set_token_loop_threads(threads).unwrap();
        let fused_events = run_events(&g, &request, 4, Kernels::Fused);
        assert_steps_close(&tensor, &fused_events, &format!("{threads} threads"));
    }
    fused.set_token_loop_threads(expected).unwrap();
}

/// Where every head matrix shares one format (the built-in model as int8 and as int4),
/// `token_loop` is compiled for that format and for the rows per token (2 with CFG, 1
/// without), and generates the tensor path's tokens either way.
#[test]
fn token_loop_compiled_for_the_shared_format() {
    let (bundle, _) = shipped_on_gpu();
    for storage in [Storage::Int8, Storage::Int4] {
        let bytes = bundle.to_bytes_as(storage).unwrap();
        let g = Arc::new(
            Bundle::from_bytes(storage.name(), &bytes)
                .unwrap()
                .into_generator(&device())
                .unwrap(),
        );
        let fused = g.fused_head().expect("fused head for the built-in model");
        assert!(fused.uses_token_loop() && fused.token_loop_specialized());
        let summary = fused.launch_summary();
        assert!(
            summary.ends_with(&format!("compiled for {}", storage.name())),
            "{summary}"
        );
        for cfg in [2.0, 1.0] {
            let request = Request {
                cfg,
                ..short_request(7)
            };
            let tensor = run_events(&g, &request, 9, Kernels::Tensor);
            let fused_events = run_events(&g, &request, 9, Kernels::Fused);
            assert_eq!(tensor.len(), fused_events.len());
            assert_steps_close(
                &tensor,
                &fused_events,
                &format!("{} cfg {cfg}", storage.name()),
            );
        }
    }
}

/// Timestamp queries around each AR step's pass time the fused head's kernels on the GPU,
/// read back with `x_0` (no extra wait): the GPU time is positive and within the head's
/// host-measured time, which also holds the uploads and the read-back.
#[test]
fn gpu_timestamps_time_the_fused_head() {
    let (_, g) = shipped_on_gpu();
    let fused = g.fused_head().expect("fused head for the built-in model");
    let adapter = fused.adapter().name.to_ascii_lowercase();
    let Some(before) = fused.gpu_time_ns() else {
        // Only adapters without `TIMESTAMP_QUERY` may lack it; lavapipe (CI) has it.
        assert!(
            !adapter.contains("llvmpipe"),
            "lavapipe offers timestamp queries, but the fused head has no timer"
        );
        return;
    };
    let events = Generation::new(g.clone(), short_request(4), Box::new(SeededNoise::new(2)))
        .unwrap()
        .run_to_end()
        .unwrap();
    let host_ms: f64 = events.iter().map(|e| e.timings.head_ms).sum();
    let gpu_ms = (fused.gpu_time_ns().unwrap() - before) as f64 / 1e6;
    eprintln!("fused head: {gpu_ms:.2} ms on the GPU, {host_ms:.2} ms on the host's clock");
    assert!(gpu_ms > 0.0, "no GPU time recorded");
    assert!(
        gpu_ms <= host_ms * 1.05 + 1.0,
        "GPU time {gpu_ms:.2} ms exceeds the host's {host_ms:.2} ms"
    );
}

/// Asking for the fused kernels where there are none is an error that says why, not a
/// silent fallback.
#[test]
fn fused_on_the_cpu_is_a_clear_error() {
    let g = Arc::new(official().into_generator(&Device::flex()).unwrap());
    assert!(g.fused_head().is_none());
    let mut generation = Generation::new(
        g,
        Request {
            labels: vec![Some(0)],
            ar_steps: 2,
            schedule: StepSchedule::Constant(5),
            ..Request::default()
        },
        Box::new(SeededNoise::new(0)),
    )
    .unwrap()
    .kernels(Kernels::Fused);
    let err = generation.step().unwrap_err().to_string();
    // The transformer, which runs first, says so (the head would too).
    assert!(
        err.contains("kernels are not available here") && err.contains("not a GPU"),
        "{err}"
    );
}
