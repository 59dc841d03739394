//! The browser surface (wasm only): a handful of functions the page's Web Worker calls. All
//! state lives here, in the worker's single thread; every call returns a `Result` so failures
//! become JS exceptions with a message instead of a dead module.

use crate::diffusion::TimestepClip;
use crate::error::DisaError;
use crate::noise::SeededNoise;
use crate::sampler::{Generation, Generator, Request, StepEvent};
use crate::schedule::{CfgSchedule, StepSchedule};
use crate::weights::{Bundle, BundleInfo};
use burn::tensor::Device;
use serde::Deserialize;
use std::cell::RefCell;
use std::sync::Arc;
use wasm_bindgen::prelude::*;

/// The worker's state: the device, the loaded model and the generation in progress.
#[derive(Default)]
struct State {
    device: Option<Device>,
    backend: String,
    generator: Option<Arc<Generator>>,
    info: BundleInfo,
    generation: Option<Generation>,
    /// Bumped by every start and cancel: a step that finishes after either must not put its
    /// (stale) generation back, or the next run would continue the old one.
    run_serial: u64,
    run_start_ms: f64,
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new(State::default());
    /// Set by wgpu's device-lost callback.
    static DEVICE_LOST: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Whether a cancel may stop an AR step part-way (see [`set_interruptible`]).
    static INTERRUPTIBLE: std::cell::Cell<bool> = const { std::cell::Cell::new(true) };
}

fn js_err(e: DisaError) -> JsError {
    JsError::new(&e.to_string())
}

/// Installs a panic hook that reports to the page before the module dies.
#[wasm_bindgen(start)]
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("internal error (the model worker must restart): {info}");
        web_sys_log(&message);
        let global = js_sys::global();
        if let Ok(post) = js_sys::Reflect::get(&global, &"postMessage".into()) {
            if let Ok(post) = post.dyn_into::<js_sys::Function>() {
                let msg = js_sys::Object::new();
                let _ = js_sys::Reflect::set(&msg, &"type".into(), &"error".into());
                let _ = js_sys::Reflect::set(&msg, &"where".into(), &"panic".into());
                let _ = js_sys::Reflect::set(&msg, &"message".into(), &message.into());
                let _ = post.call1(&global, &msg);
            }
        }
    }));
}

fn web_sys_log(message: &str) {
    let console = js_sys::Reflect::get(&js_sys::global(), &"console".into()).ok();
    if let Some(error) = console.and_then(|c| js_sys::Reflect::get(&c, &"error".into()).ok()) {
        if let Ok(f) = error.dyn_into::<js_sys::Function>() {
            let _ = f.call1(&JsValue::NULL, &message.into());
        }
    }
}

/// Picks the backend: WebGPU unless `force_cpu`, else (or when WebGPU fails) the CPU backend.
/// Returns JSON `{backend, adapter, software, notice?, reason?, detail?}`: `notice` is a sentence
/// for people, `reason` one of `forced`, `unavailable`, `failed` (why the CPU is used), and
/// `detail` the technical error behind it. The GPU is initialized once per worker.
#[wasm_bindgen(js_name = initBackend)]
pub async fn init_backend(force_cpu: bool) -> Result<String, JsError> {
    let mut notice = None;
    let mut reason = None;
    let mut detail = None;
    let mut adapter = "CPU (Burn flex, WebAssembly)".to_string();
    let mut software = false;
    let device = if force_cpu {
        notice = Some("The CPU backend was chosen for this page, so WebGPU is off.".to_string());
        reason = Some("forced");
        Device::flex()
    } else {
        match Device::wgpu_options().init_with_setup_async().await {
            Ok((device, setup)) => {
                let info = setup.adapter.get_info();
                software = matches!(info.device_type, burn::tensor::wgpu::wgpu::DeviceType::Cpu)
                    || info.name.to_ascii_lowercase().contains("swiftshader")
                    || info.name.to_ascii_lowercase().contains("llvmpipe");
                // Browsers often hide the adapter's name; say what is known.
                let name = if info.name.trim().is_empty() {
                    "unnamed adapter".to_string()
                } else {
                    info.name.clone()
                };
                let kind = match info.device_type {
                    burn::tensor::wgpu::wgpu::DeviceType::Cpu => "software, runs on the CPU",
                    burn::tensor::wgpu::wgpu::DeviceType::DiscreteGpu => "discrete GPU",
                    burn::tensor::wgpu::wgpu::DeviceType::IntegratedGpu => "integrated GPU",
                    burn::tensor::wgpu::wgpu::DeviceType::VirtualGpu => "virtual GPU",
                    burn::tensor::wgpu::wgpu::DeviceType::Other => "GPU",
                };
                adapter = format!("{name} ({kind})");
                // The fused head kernels run on the same device and queue as Burn.
                crate::gpu::register(&device, &setup);
                setup.device.set_device_lost_callback(|reason, message| {
                    DEVICE_LOST.with(|l| l.set(true));
                    web_sys_log(&format!("WebGPU device lost ({reason:?}): {message}"));
                });
                // A tiny round trip proves the device really computes.
                let probe = burn::tensor::Tensor::<1>::from_floats([1.0, 2.0], &device).sum();
                match probe.into_data_async().await {
                    Ok(_) => device,
                    Err(e) => {
                        notice = Some(format!(
                            "This browser offers WebGPU, but the GPU “{name}” failed a test \
                             computation, so the demo runs on the CPU instead (slower)."
                        ));
                        reason = Some("failed");
                        detail = Some(format!("{e:?}"));
                        software = false;
                        adapter = "CPU (Burn flex, WebAssembly)".to_string();
                        Device::flex()
                    }
                }
            }
            Err(e) => {
                notice = Some(
                    "WebGPU is not available in this browser, so the demo runs on the CPU \
                     instead (slower)."
                        .to_string(),
                );
                reason = Some("unavailable");
                detail = Some(e.to_string());
                Device::flex()
            }
        }
    };
    let backend = if reason.is_none() { "webgpu" } else { "cpu" };
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.device = Some(device);
        s.backend = backend.to_string();
        s.generation = None;
        s.run_serial += 1;
    });
    Ok(serde_json::json!({
        "backend": backend,
        "adapter": adapter,
        "software": software,
        "notice": notice,
        "reason": reason,
        "detail": detail,
    })
    .to_string())
}

/// Whether the GPU device was lost since the backend was initialized.
#[wasm_bindgen(js_name = deviceLost)]
pub fn device_lost() -> bool {
    DEVICE_LOST.with(|l| l.get())
}

/// Switches to the CPU backend (after a lost GPU), keeping the model bytes the caller
/// passes back in with [`load_model`].
#[wasm_bindgen(js_name = useCpuBackend)]
pub fn use_cpu_backend() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.device = Some(Device::flex());
        s.backend = "cpu".into();
        s.generator = None;
        s.generation = None;
        s.run_serial += 1;
    });
}

/// Loads a disa model file. On success the new model replaces the old one and its info is
/// returned as JSON; on failure the old model stays.
#[wasm_bindgen(js_name = loadModel)]
pub fn load_model(name: &str, bytes: &[u8]) -> Result<String, JsError> {
    let device = STATE
        .with(|s| s.borrow().device.clone())
        .ok_or_else(|| JsError::new("initBackend must run before loadModel"))?;
    let bundle = Bundle::from_bytes(name, bytes).map_err(js_err)?;
    let mut info = bundle.info.clone();
    // Each tensor moves from the parsed file into the model: the weights are never held twice.
    let generator = bundle.into_generator(&device).map_err(js_err)?;
    let c = &generator.config;
    if info.name.is_empty() {
        info.name = name.to_string();
    }
    let json = serde_json::json!({
        "name": info.name,
        "numClasses": c.class_num,
        "classNames": info.class_names,
        "grid": c.grid_size(),
        "imageSize": generator.model.image_size(c),
        "seqLen": c.seq_len(),
        "tokenDim": c.token_dim(),
        "defaults": info.defaults,
        // The head's fused WebGPU kernels, when the device has them: the bytes its weights
        // take on the GPU (as the file stores them) and its kernel launches per head call.
        "fusedHead": generator.fused_head().map(|f| serde_json::json!({
            "weightBytes": f.weight_bytes(),
            "launchesPerHeadCall": f.dispatches_per_head_call(),
        })),
        "modelWeightBytes": 4 * c.num_params() as u64,
    })
    .to_string();
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.generator = Some(Arc::new(generator));
        s.info = info;
        s.generation = None;
        s.run_serial += 1;
    });
    Ok(json)
}

/// A request as the page sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WebRequest {
    class_label: Option<usize>,
    seed: u64,
    ar_steps: usize,
    schedule: String,
    cfg: f32,
    cfg_schedule: String,
    temperature: f32,
    /// Clip timesteps above this one; absent: the schedule's own (950 for DiSA, none for
    /// constant, as in the reference code). The A/B card sends 950 for a clip-matched baseline.
    #[serde(default)]
    clip: Option<usize>,
    /// The head's implementation: `fused` (WGSL kernels, WebGPU only), `tensor` (Burn's
    /// operations) or `auto` (fused where available; the default).
    #[serde(default)]
    kernels: crate::gpu::Kernels,
}

impl WebRequest {
    fn parse(json: &str) -> Result<(Request, u64), JsError> {
        let r: WebRequest =
            serde_json::from_str(json).map_err(|e| JsError::new(&format!("bad request: {e}")))?;
        let request = Request {
            labels: vec![r.class_label],
            ar_steps: r.ar_steps,
            schedule: StepSchedule::parse(&r.schedule).map_err(js_err)?,
            clip: r.clip.map(|t| TimestepClip(Some(t))),
            cfg: r.cfg,
            cfg_schedule: CfgSchedule::parse(&r.cfg_schedule).map_err(js_err)?,
            temperature: r.temperature,
        };
        Ok((request, r.seed))
    }
}

fn generator() -> Result<Arc<Generator>, JsError> {
    STATE
        .with(|s| s.borrow().generator.clone())
        .ok_or_else(|| JsError::new("no model loaded"))
}

/// The per-step plan of a request, as JSON `{steps: [...], headCalls, tokenSteps}`.
#[wasm_bindgen]
pub fn plan(request_json: &str) -> Result<String, JsError> {
    let g = generator()?;
    let (request, _) = WebRequest::parse(request_json)?;
    request.validate(&g.config).map_err(js_err)?;
    let plan = request.plan(&g.config).map_err(js_err)?;
    let steps: Vec<_> = plan
        .steps
        .iter()
        .map(|s| {
            serde_json::json!({
                "k": s.k, "tokens": s.tokens, "maskLenAfter": s.mask_len_after,
                "nominalSteps": s.nominal_steps, "effectiveSteps": s.effective_steps, "cfg": s.cfg,
            })
        })
        .collect();
    Ok(serde_json::json!({ "steps": steps, "headCalls": plan.head_calls(), "tokenSteps": plan.token_steps() }).to_string())
}

/// Starts a generation (cancelling any in progress).
#[wasm_bindgen(js_name = startGeneration)]
pub fn start_generation(request_json: &str) -> Result<(), JsError> {
    let g = generator()?;
    let (request, seed) = WebRequest::parse(request_json)?;
    let kernels = serde_json::from_str::<WebRequest>(request_json)
        .map(|r| r.kernels)
        .unwrap_or_default();
    let generation = Generation::new(g, request, Box::new(SeededNoise::new(seed)))
        .map_err(js_err)?
        .kernels(kernels);
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.generation = Some(generation);
        s.run_serial += 1;
        s.run_start_ms = crate::sampler::now_ms();
    });
    Ok(())
}

/// Drops the generation in progress.
#[wasm_bindgen]
pub fn cancel() {
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        s.generation = None;
        s.run_serial += 1;
    });
}

fn event_json(e: &StepEvent) -> String {
    serde_json::json!({
        "k": e.k, "arSteps": e.ar_steps, "positions": e.positions.first().cloned().unwrap_or_default(),
        "nominalSteps": e.nominal_steps, "effectiveSteps": e.effective_steps, "cfg": e.cfg,
        "transformerMs": e.timings.transformer_ms, "headMs": e.timings.head_ms,
    })
    .to_string()
}

/// Whether a cancel may stop an AR step between diffusion steps (the default). The end-to-end
/// test turns it off to measure, in the same build, the cancel latency the page had when a
/// cancel waited for the whole AR step.
#[wasm_bindgen(js_name = setInterruptible)]
pub fn set_interruptible(on: bool) {
    INTERRUPTIBLE.with(|c| c.set(on));
}

/// Runs one AR step. Resolves to `{event: JSON string, preview: {width, height, pixels}}`, or
/// `null` when the generation is finished or was cancelled (also part-way through the step).
#[wasm_bindgen]
pub async fn step() -> Result<JsValue, JsError> {
    // Take the generation out so no borrow is held across the await.
    let Some((mut generation, serial)) = STATE.with(|s| {
        let mut s = s.borrow_mut();
        let serial = s.run_serial;
        s.generation.take().map(|g| (g, serial))
    }) else {
        return Ok(JsValue::NULL);
    };
    // A cancel or a new start (handled by the worker while this step awaits the GPU) stops the
    // step between diffusion steps, so a changed setting takes effect within one head call.
    let interruptible = INTERRUPTIBLE.with(|c| c.get());
    let stop = || interruptible && STATE.with(|s| s.borrow().run_serial != serial);
    let event = match generation.step_async_interruptible(&stop).await {
        Ok(Some(e)) => e,
        Ok(None) | Err(DisaError::Cancelled) => return Ok(JsValue::NULL),
        Err(e) => return Err(device_aware(e)),
    };
    let preview = decode_rgba(&generation).await.map_err(device_aware)?;
    let out = js_sys::Object::new();
    set(&out, "event", &event_json(&event).into());
    set(&out, "preview", &preview);
    set(
        &out,
        "elapsedMs",
        &(crate::sampler::now_ms() - STATE.with(|s| s.borrow().run_start_ms)).into(),
    );
    // Put it back unless a cancel or a new start happened meanwhile (on WebGPU the worker
    // handles messages while this step awaits the GPU).
    STATE.with(|s| {
        let mut s = s.borrow_mut();
        if s.run_serial == serial && s.generation.is_none() {
            s.generation = Some(generation);
        }
    });
    Ok(out.into())
}

fn device_aware(e: DisaError) -> JsError {
    if device_lost() {
        JsError::new(&format!("GPU device lost: {e}"))
    } else {
        js_err(e)
    }
}

fn set(obj: &js_sys::Object, key: &str, value: &JsValue) {
    let _ = js_sys::Reflect::set(obj, &key.into(), value);
}

/// Decodes the tokens known so far to an RGBA image `{width, height, pixels}` (first image).
async fn decode_rgba(generation: &Generation) -> Result<JsValue, DisaError> {
    let Some(decoded) = generation.decode() else {
        return Ok(JsValue::NULL);
    };
    let [_, ch, h, w] = decoded.dims();
    let values = decoded
        .into_data_async()
        .await
        .map_err(|e| DisaError::Device(format!("{e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("{e:?}")))?;
    let images = crate::image::images_from_values(&values, [1, ch, h, w])?;
    let rgb = &images[0].pixels;
    let mut rgba = Vec::with_capacity(w * h * 4);
    for px in rgb.chunks_exact(3) {
        rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
    }
    let out = js_sys::Object::new();
    set(&out, "width", &(w as u32).into());
    set(&out, "height", &(h as u32).into());
    set(
        &out,
        "pixels",
        &js_sys::Uint8ClampedArray::from(rgba.as_slice()).into(),
    );
    Ok(out.into())
}
// ───────────────────────── teaching view (DiSA's evidence, issue 13) ─────────────────────────
// Runs only when the page's teaching view asks: a recorded generation of the request, then the
// analysis step by step (`crate::analysis`), then the cached states the page scrubs through.

use crate::analysis::{Analysis, AnalysisOptions, Analyzer, Pca, Recorder, Recording};

enum TeachPhase {
    Recording(Recorder),
    Analysing(Analyzer, Arc<Recording>),
}

struct Teach {
    generator: Arc<Generator>,
    phase: Option<TeachPhase>,
    options: AnalysisOptions,
    ar_steps: usize,
}

thread_local! {
    static TEACH: RefCell<Option<Teach>> = const { RefCell::new(None) };
}

/// Starts a teaching analysis of `request_json` (the page's request: same seed, same image)
/// with `samples` re-samples per token for the spread. Cancels any analysis in progress.
#[wasm_bindgen(js_name = teachStart)]
pub fn teach_start(request_json: &str, samples: usize) -> Result<(), JsError> {
    let g = generator()?;
    let (request, seed) = WebRequest::parse(request_json)?;
    let ar_steps = request.ar_steps;
    let options = AnalysisOptions {
        samples,
        ..AnalysisOptions::default()
    };
    if !(2..=4096).contains(&samples) {
        return Err(JsError::new(&format!(
            "re-samples per token must be in 2..=4096, got {samples}"
        )));
    }
    let recorder =
        Recorder::new(g.clone(), request, Box::new(SeededNoise::new(seed))).map_err(js_err)?;
    TEACH.with(|t| {
        *t.borrow_mut() = Some(Teach {
            generator: g,
            phase: Some(TeachPhase::Recording(recorder)),
            options,
            ar_steps,
        })
    });
    Ok(())
}

/// Drops the teaching analysis in progress.
#[wasm_bindgen(js_name = teachCancel)]
pub fn teach_cancel() {
    TEACH.with(|t| *t.borrow_mut() = None);
}

/// Advances the teaching analysis by one AR step. Resolves to `{phase, done, total}` with
/// `phase` `generate` or `analyze` while it runs, and finally to
/// `{phase: 'done', result: JSON string, images: [{width, height, pixels}…]}` (see
/// `teach_result_json`); `null` when nothing runs (cancelled).
#[wasm_bindgen(js_name = teachStep)]
pub async fn teach_step() -> Result<JsValue, JsError> {
    let Some(mut teach) = TEACH.with(|t| t.borrow_mut().take()) else {
        return Ok(JsValue::NULL);
    };
    let out = js_sys::Object::new();
    let total = teach.ar_steps;
    match teach.phase.take() {
        Some(TeachPhase::Recording(mut recorder)) => {
            let more = recorder.step_async().await.map_err(device_aware)?.is_some();
            let done = recorder.recording().steps.len();
            set(&out, "phase", &"generate".into());
            set(&out, "done", &(done as u32).into());
            set(&out, "total", &(total as u32).into());
            teach.phase = Some(if more && done < total {
                TeachPhase::Recording(recorder)
            } else {
                let recording = Arc::new(recorder.finish());
                let analyzer = Analyzer::new(
                    teach.generator.clone(),
                    recording.clone(),
                    teach.options.clone(),
                )
                .map_err(js_err)?;
                TeachPhase::Analysing(analyzer, recording)
            });
        }
        Some(TeachPhase::Analysing(mut analyzer, recording)) => {
            let more = analyzer.step_async().await.map_err(device_aware)?.is_some();
            let (done, total) = analyzer.progress();
            if more && done < total {
                set(&out, "phase", &"analyze".into());
                set(&out, "done", &(done as u32).into());
                set(&out, "total", &(total as u32).into());
                teach.phase = Some(TeachPhase::Analysing(analyzer, recording));
            } else {
                let analysis = analyzer.finish().map_err(js_err)?;
                let json = teach_result_json(&teach, &recording, &analysis).map_err(js_err)?;
                let images = teach_images(&teach.generator, &recording, &analysis)
                    .await
                    .map_err(device_aware)?;
                set(&out, "phase", &"done".into());
                set(&out, "result", &json.into());
                set(&out, "images", &images);
                return Ok(out.into()); // finished: nothing to put back
            }
        }
        None => return Ok(JsValue::NULL),
    }
    // Put it back unless a cancel or a new start happened meanwhile.
    TEACH.with(|t| {
        let mut t = t.borrow_mut();
        if t.is_none() {
            *t = Some(teach);
        }
    });
    Ok(out.into())
}

/// The analysis as the page reads it: per-step curves, per-token facts of image 0 (its
/// generation order, AR step, steps, spread, straightness, one-shot error and its own chain in
/// 2-D), the shared PCA view and the final tokens.
fn teach_result_json(
    teach: &Teach,
    recording: &Recording,
    analysis: &Analysis,
) -> Result<String, DisaError> {
    let (n, c) = (recording.seq_len, recording.token_dim);
    let rank: Vec<usize> = {
        // Tokens at the end of the order are revealed first (MAR keeps the first mask_len masked).
        let mut r = vec![0; n];
        for (i, &p) in recording.orders[0].iter().enumerate() {
            r[p] = n - 1 - i;
        }
        r
    };
    let mut tokens = Vec::new();
    for s in &analysis.steps {
        for (row, &p) in s.positions.first().into_iter().flatten().enumerate() {
            let path = Pca::fit(&s.chains[row], c)?.project_all(&s.chains[row]);
            tokens.push(serde_json::json!({
                "position": p, "k": s.k, "order": rank[p], "steps": s.effective_steps,
                "variance": s.token_variance[row], "straightness": s.token_straightness[row],
                "pathLength": s.token_path_length[row], "oneShotError": s.token_one_shot_error[row],
                "path": path,
            }));
        }
    }
    let (final_tokens, _) = recording.state_after(recording.steps.len());
    let replay_error = analysis
        .steps
        .iter()
        .map(|s| s.replay_error)
        .fold(0.0, f64::max);
    Ok(serde_json::json!({
        "arSteps": teach.ar_steps,
        "samples": teach.options.samples,
        "seqLen": n,
        "tokenDim": c,
        "grid": (n as f64).sqrt().round() as usize,
        "schedule": recording.request.schedule.to_string(),
        "steps": analysis.steps,
        "completedError": analysis.completed_error,
        "pcaPaths": analysis.pca_paths,
        "pcaVariances": analysis.pca_variances,
        "tokens": tokens,
        "finalTokens": &final_tokens[..n * c],
        "replayError": replay_error,
    })
    .to_string())
}

/// The cached states the scrubber shows, image 0: for `j = 0..=K` steps done, the image so far
/// (`2j`) and the completed image from that context (`2j + 1`; the final image at `j = K`).
async fn teach_images(
    g: &Generator,
    recording: &Recording,
    analysis: &Analysis,
) -> Result<JsValue, DisaError> {
    let (n, c) = (recording.seq_len, recording.token_dim);
    let steps = recording.steps.len();
    let (final_tokens, _) = recording.state_after(steps);
    let mut grids: Vec<f32> = Vec::with_capacity(2 * (steps + 1) * n * c);
    for j in 0..=steps {
        grids.extend_from_slice(&recording.state_after(j).0[..n * c]);
        match analysis.steps.get(j) {
            Some(s) if !s.completed.is_empty() => grids.extend_from_slice(&s.completed[..n * c]),
            _ => grids.extend_from_slice(&final_tokens[..n * c]),
        }
    }
    let count = 2 * (steps + 1);
    let out = js_sys::Array::new();
    const CHUNK: usize = 16; // images per decoder call: bounded memory for VAE models
    for start in (0..count).step_by(CHUNK) {
        let m = CHUNK.min(count - start);
        let tokens = burn::tensor::Tensor::<3>::from_data(
            burn::tensor::TensorData::new(
                grids[start * n * c..(start + m) * n * c].to_vec(),
                [m, n, c],
            ),
            &g.device,
        );
        let Some(decoded) = g.model.decode_tokens(tokens, &g.config) else {
            return Ok(JsValue::NULL);
        };
        let [_, ch, h, w] = decoded.dims();
        let values = decoded
            .into_data_async()
            .await
            .map_err(|e| DisaError::Device(format!("{e:?}")))?
            .try_to_vec::<f32>()
            .map_err(|e| DisaError::Device(format!("{e:?}")))?;
        for image in crate::image::images_from_values(&values, [m, ch, h, w])? {
            let mut rgba = Vec::with_capacity(w * h * 4);
            for px in image.pixels.chunks_exact(3) {
                rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
            }
            let o = js_sys::Object::new();
            set(&o, "width", &(w as u32).into());
            set(&o, "height", &(h as u32).into());
            set(
                &o,
                "pixels",
                &js_sys::Uint8ClampedArray::from(rgba.as_slice()).into(),
            );
            out.push(&o);
        }
    }
    Ok(out.into())
}
