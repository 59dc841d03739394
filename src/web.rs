//! The browser surface (wasm only): one [`Session`] object that the page's Web Worker owns. It
//! holds the device, the model, the generation in progress and the teaching analysis; its
//! methods take and return typed objects (the camelCase DTOs below, converted by
//! `serde-wasm-bindgen`), and every fallible one returns a `Result`, so failures become JS
//! exceptions with a message instead of a dead module. The messages the worker builds from
//! them are described in `www/worker-protocol.md`.

use crate::analysis::{Analysis, AnalysisOptions, Analyzer, Pca, Recorder, Recording};
use crate::defaults::SamplingDefaults;
use crate::diffusion::TimestepClip;
use crate::error::DisaError;
use crate::gpu::Kernels;
use crate::noise::SeededNoise;
use crate::sampler::{Clip, Generation, LoadedModel, Request, StepEvent};
use crate::schedule::{CfgSchedule, Plan, PlannedStep, StepSchedule};
use crate::weights::Bundle;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};
use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use wasm_bindgen::prelude::*;

fn js_err(e: DisaError) -> JsError {
    JsError::new(&e.to_string())
}

/// Converts a DTO to a plain JS object (`null` for `None`, objects for maps).
fn to_js<T: Serialize>(value: &T) -> Result<JsValue, JsError> {
    value
        .serialize(&serde_wasm_bindgen::Serializer::json_compatible())
        .map_err(|e| {
            JsError::new(&format!(
                "internal error: cannot convert a result for JS: {e}"
            ))
        })
}

unsafe extern "C" {
    /// Synthesized by wasm-ld: runs the static constructors (the `inventory` registrations
    /// in Burn's dependencies).
    fn __wasm_call_ctors();
}

/// Runs once when the module is instantiated: the static constructors, then the panic hook.
///
/// The constructors are called here explicitly because wasm-ld treats a module that never
/// calls `__wasm_call_ctors` itself as a "command" and re-runs every constructor at the top of
/// every export — including the small ones wasm-bindgen's glue calls for each JS value passed
/// in. That was over a quarter of the page's CPU time in a profile of the CPU fallback.
#[wasm_bindgen(start)]
pub fn start() {
    // SAFETY: wasm-ld's constructor function, called once, before any other export runs
    // (wasm-bindgen calls the start function right after instantiation).
    unsafe { __wasm_call_ctors() };
    install_panic_hook();
}

/// Installs a panic hook that reports to the page before the module dies.
fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let message = format!("internal error (the model worker must restart): {info}");
        console_error(&message);
        let global = js_sys::global();
        if let Ok(post) = js_sys::Reflect::get(&global, &"postMessage".into())
            && let Ok(post) = post.dyn_into::<js_sys::Function>()
        {
            let msg = js_sys::Object::new();
            let _ = js_sys::Reflect::set(&msg, &"type".into(), &"error".into());
            let _ = js_sys::Reflect::set(&msg, &"where".into(), &"panic".into());
            let _ = js_sys::Reflect::set(&msg, &"message".into(), &message.into());
            let _ = post.call1(&global, &msg);
        }
    }));
}

fn console_error(message: &str) {
    let console = js_sys::Reflect::get(&js_sys::global(), &"console".into()).ok();
    if let Some(error) = console.and_then(|c| js_sys::Reflect::get(&c, &"error".into()).ok())
        && let Ok(f) = error.dyn_into::<js_sys::Function>()
    {
        let _ = f.call1(&JsValue::NULL, &message.into());
    }
}

// ───────────────────────────── DTOs: what crosses the boundary ─────────────────────────────

/// The backend in use (`initBackend`, `useCpuBackend`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BackendInfo {
    /// `webgpu` or `cpu`.
    backend: &'static str,
    adapter: String,
    /// A software WebGPU adapter (SwiftShader, llvmpipe): usually slower than the CPU backend.
    software: bool,
    /// A sentence for people: why the CPU runs.
    notice: Option<String>,
    /// Why the CPU runs: `forced`, `unavailable`, `failed`, or what the worker passed to
    /// `useCpuBackend` (`lost`, `software`, `chosen`).
    reason: Option<String>,
    /// The technical error behind `reason`.
    detail: Option<String>,
}

/// The CPU backend's name, with the build's SIMD: the page loads the `relaxed-simd` build where
/// the browser has relaxed SIMD (www/worker.js).
const CPU_ADAPTER: &str = if cfg!(feature = "relaxed-simd") {
    "CPU (Burn flex, WebAssembly relaxed SIMD)"
} else {
    "CPU (Burn flex, WebAssembly SIMD)"
};

/// A loaded model (`loadModel`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ModelInfo {
    name: String,
    num_classes: usize,
    class_names: Vec<String>,
    /// Tokens per side: the token grid is `grid × grid`.
    grid: usize,
    /// Image side in pixels.
    image_size: usize,
    seq_len: usize,
    token_dim: usize,
    /// The file's suggested settings (camelCase, schedules as text, absent fields left out).
    defaults: SamplingDefaults,
    /// `defaults.schedule` taken apart for the page's schedule editor.
    default_schedule: Option<ScheduleParts>,
    /// The head's fused WebGPU kernels, when the device has them.
    fused_head: Option<FusedHeadInfo>,
    /// The transformer's fused WebGPU kernels, when the device has them.
    fused_transformer: Option<FusedTransformerInfo>,
    /// Bytes the weights of Burn's modules take on the device (as the file stores them).
    model_weight_bytes: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FusedTransformerInfo {
    /// Bytes its copy of the transformer's weights takes on the GPU (as the file stores them).
    weight_bytes: u64,
    /// Launches of an AR step with some tokens known (one fewer at the first step).
    launches_per_ar_step: usize,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct FusedHeadInfo {
    /// Bytes its weights take on the GPU (as the file stores them).
    weight_bytes: u64,
    launches_per_head_call: usize,
    /// How the kernels launch, in words.
    launches: String,
}

/// A step schedule as the page's editor holds it: a preset `kind` with `start`/`end`, or the
/// `custom` list. `end` is absent for `constant`, both are absent for `custom`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ScheduleParts {
    /// `constant`, `linear`, `cosine`, `two-stage` or `custom`.
    kind: &'static str,
    start: Option<usize>,
    end: Option<usize>,
    /// The custom list (empty for presets).
    custom: Vec<usize>,
}

impl From<&StepSchedule> for ScheduleParts {
    fn from(s: &StepSchedule) -> Self {
        let preset = |kind, start: usize, end: usize| Self {
            kind,
            start: Some(start),
            end: Some(end),
            custom: Vec::new(),
        };
        match s {
            StepSchedule::Constant(n) => Self {
                kind: "constant",
                start: Some(*n),
                end: None,
                custom: Vec::new(),
            },
            StepSchedule::Linear { start, end } => preset("linear", *start, *end),
            StepSchedule::Cosine { start, end } => preset("cosine", *start, *end),
            StepSchedule::TwoStage { start, end } => preset("two-stage", *start, *end),
            StepSchedule::Custom(steps) => Self {
                kind: "custom",
                start: None,
                end: None,
                custom: steps.clone(),
            },
        }
    }
}

/// A request as the page sends it.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct WebRequest {
    class_label: Option<usize>,
    seed: u64,
    ar_steps: usize,
    /// A schedule in its text form (`linear:50:5`, `custom:50,40,…`).
    schedule: String,
    cfg: f32,
    /// `linear` or `constant`.
    cfg_schedule: String,
    temperature: f32,
    /// Clip timesteps above this one; absent: the schedule's own (950 for DiSA, none for
    /// constant, as in the reference code). The A/B card sends 950 for a clip-matched baseline.
    #[serde(default)]
    clip: Option<usize>,
    /// The kernels: `fused` (the WGSL kernels of shaders/ for the transformer and the head,
    /// WebGPU only), `fused-head` (WGSL head, Burn's transformer), `tensor` (Burn's operations)
    /// or `auto` (fused where available; the default).
    #[serde(default)]
    kernels: Kernels,
    /// Decode a preview after every AR step (the default) or, `false`, only after the last:
    /// the bench harness (`tests/e2e/bench-page.mjs`) times generation without the decodes.
    #[serde(default = "yes")]
    previews: bool,
}

fn yes() -> bool {
    true
}

/// A page request, checked and typed.
struct Parsed {
    request: Request,
    seed: u64,
    kernels: Kernels,
    previews: bool,
}

impl Parsed {
    fn from_js(value: JsValue) -> Result<Self, JsError> {
        check_request_keys(&value)?;
        let r: WebRequest = serde_wasm_bindgen::from_value(value)
            .map_err(|e| JsError::new(&format!("bad request: {e}")))?;
        let request = Request {
            labels: vec![r.class_label],
            ar_steps: r.ar_steps,
            schedule: StepSchedule::parse(&r.schedule).map_err(js_err)?,
            clip: r.clip.map_or(Clip::ScheduleDefault, Clip::At),
            cfg: r.cfg,
            cfg_schedule: CfgSchedule::parse(&r.cfg_schedule).map_err(js_err)?,
            temperature: r.temperature,
        };
        Ok(Self {
            request,
            seed: r.seed,
            kernels: r.kernels,
            previews: r.previews,
        })
    }
}

/// [`WebRequest`]'s fields as JavaScript spells them.
const REQUEST_FIELDS: [&str; 10] = [
    "classLabel",
    "seed",
    "arSteps",
    "schedule",
    "cfg",
    "cfgSchedule",
    "temperature",
    "clip",
    "kernels",
    "previews",
];

/// A request's keys, checked before serde reads it: `serde_wasm_bindgen` looks up only the
/// fields it knows, so `deny_unknown_fields` never sees a misspelt one (`kernel`, `clips`),
/// and a missing `classLabel` (an `Option`) would silently mean "unconditional".
fn check_request_keys(value: &JsValue) -> Result<(), JsError> {
    let Some(object) = value.dyn_ref::<js_sys::Object>() else {
        return Ok(()); // not an object: serde's own error names the type
    };
    for key in js_sys::Object::keys(object).iter() {
        let key = key.as_string().unwrap_or_default();
        if !REQUEST_FIELDS.contains(&key.as_str()) {
            return Err(JsError::new(&format!(
                "bad request: unknown field `{key}`, expected one of {}",
                REQUEST_FIELDS.join(", ")
            )));
        }
    }
    if !js_sys::Reflect::has(object, &"classLabel".into()).unwrap_or(false) {
        return Err(JsError::new(
            "bad request: missing field `classLabel` (a class index, or null for an \
             unconditional image)",
        ));
    }
    Ok(())
}

/// One AR step of a plan.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanStepDto {
    k: usize,
    tokens: usize,
    mask_len_after: usize,
    nominal_steps: usize,
    effective_steps: usize,
    cfg: f32,
}

impl From<&PlannedStep> for PlanStepDto {
    fn from(s: &PlannedStep) -> Self {
        Self {
            k: s.k,
            tokens: s.tokens,
            mask_len_after: s.mask_len_after,
            nominal_steps: s.nominal_steps,
            effective_steps: s.effective_steps,
            cfg: s.cfg,
        }
    }
}

/// The cost of a plan, per image.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Totals {
    /// Sequential head calls ([`Plan::head_calls`]).
    head_calls: usize,
    /// Token·steps ([`Plan::token_steps`]).
    token_steps: usize,
}

impl From<&Plan> for Totals {
    fn from(p: &Plan) -> Self {
        Self {
            head_calls: p.head_calls(),
            token_steps: p.token_steps(),
        }
    }
}

/// Everything the page shows about a request before running it (`plan`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PlanDto {
    steps: Vec<PlanStepDto>,
    #[serde(flatten)]
    totals: Totals,
    /// The largest requested step count (the heat map's top).
    max_steps: usize,
    /// The timestep clip the request runs with (`null`: none).
    clip: Option<usize>,
    /// The A/B card's plain-MAR baseline for this request.
    baseline: BaselinePlan,
}

/// Plain MAR at the request's largest step count, with the same K, CFG and seed: with no clip
/// (as the official code runs it) and with DiSA's clip (so only the step schedule differs).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BaselinePlan {
    /// Diffusion steps at every AR step.
    steps: usize,
    /// Its schedule, as a request's `schedule` (`constant:N`).
    schedule: String,
    /// DiSA's clip, the value a clip-matched baseline request sends as `clip`.
    disa_clip: usize,
    /// Its cost with no clip.
    official: Totals,
    /// Its cost with DiSA's clip.
    clipped: Totals,
}

/// An RGBA image (`width * height * 4` bytes).
#[derive(Serialize)]
struct Image {
    width: u32,
    height: u32,
    #[serde(with = "serde_wasm_bindgen::preserve")]
    pixels: js_sys::Uint8ClampedArray,
}

/// One AR step of a generation (`step`).
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepUpdate {
    event: StepDto,
    /// The tokens known so far, decoded (absent for a model without a decoder).
    preview: Option<Image>,
    /// Wall time since `startGeneration`.
    elapsed_ms: f64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct StepDto {
    /// AR step, 0-based, of `ar_steps`.
    k: usize,
    ar_steps: usize,
    /// Token positions revealed, row-major in the `grid × grid` token grid.
    positions: Vec<usize>,
    nominal_steps: usize,
    effective_steps: usize,
    cfg: f32,
    transformer_ms: f64,
    head_ms: f64,
    /// The fused head's kernels' time on the GPU (timestamp queries), where measured.
    #[serde(skip_serializing_if = "Option::is_none")]
    head_gpu_ms: Option<f64>,
    /// Head calls and token·steps of the AR steps run so far (the plan's prefix sums).
    #[serde(flatten)]
    so_far: Totals,
    /// Σ transformer + head time so far: the sampling work, without the preview decodes.
    sampling_ms: f64,
}

/// The teaching analysis after one call of `teachStep`.
#[derive(Serialize)]
#[serde(tag = "phase", rename_all = "lowercase")]
enum TeachUpdate {
    /// Recording the generation: `done` of `total` AR steps.
    Generate { done: usize, total: usize },
    /// Measuring: `done` of `total` AR steps.
    Analyze { done: usize, total: usize },
    /// The result, and for `j = 0..=K` steps done the image so far (`2j`) and the completed
    /// image from that context (`2j + 1`).
    Done {
        result: Box<TeachResult>,
        images: Vec<Image>,
    },
}

/// The analysis as the page reads it: per-step curves (snake_case fields of
/// [`crate::analysis::StepAnalysis`]), per-token facts of image 0, the shared PCA view and the
/// final tokens.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TeachResult {
    ar_steps: usize,
    samples: usize,
    seq_len: usize,
    token_dim: usize,
    grid: usize,
    schedule: String,
    steps: Vec<crate::analysis::StepAnalysis>,
    completed_error: Vec<f64>,
    pca_paths: Vec<crate::analysis::ProjectedPath>,
    pca_variances: [f64; 2],
    tokens: Vec<TeachToken>,
    final_tokens: Vec<f32>,
    replay_error: f64,
    /// For `j = 0..=K` AR steps done: tokens revealed and token·steps spent so far (the
    /// timeline scrubber's caption).
    done_after: Vec<DoneAfter>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct DoneAfter {
    tokens: usize,
    token_steps: usize,
}

/// One token of image 0: its generation order, AR step, steps, spread, straightness, one-shot
/// error and its own chain in 2-D.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct TeachToken {
    position: usize,
    k: usize,
    order: usize,
    steps: usize,
    variance: f64,
    straightness: f64,
    path_length: f64,
    one_shot_error: f64,
    path: Vec<[f64; 2]>,
}

// ───────────────────────────── the session ─────────────────────────────

/// Something that runs one AR step per call and is cancelled by replacing or clearing it. A
/// step takes the value out (no borrow is held across an await) and puts it back only if no
/// cancel or new start happened meanwhile (`serial` unchanged), so a stale step never
/// re-installs its run.
struct Slot<T> {
    value: Option<T>,
    serial: u64,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            value: None,
            serial: 0,
        }
    }
}

impl<T> Slot<T> {
    fn set(&mut self, value: Option<T>) {
        self.value = value;
        self.serial += 1;
    }
    fn take(&mut self) -> Option<(T, u64)> {
        self.value.take().map(|v| (v, self.serial))
    }
    fn put_back(&mut self, value: T, serial: u64) {
        if self.serial == serial && self.value.is_none() {
            self.value = Some(value);
        }
    }
}

/// A generation in progress and what its events report.
struct Run {
    generation: Generation,
    started_ms: f64,
    sampling_ms: f64,
    /// Whether every AR step decodes a preview (else only the last).
    previews: bool,
}

enum TeachPhase {
    Recording(Recorder),
    Analysing(Analyzer, Arc<Recording>),
}

struct Teach {
    generator: Arc<LoadedModel>,
    phase: TeachPhase,
    options: AnalysisOptions,
    ar_steps: usize,
}

struct Inner {
    device: Option<Device>,
    generator: Option<Arc<LoadedModel>>,
    run: Slot<Run>,
    teach: Slot<Teach>,
    /// Whether a cancel may stop an AR step part-way (see [`Session::set_interruptible`]).
    interruptible: bool,
}

/// The worker's model session: backend, model, generation and teaching analysis.
#[wasm_bindgen]
pub struct Session {
    inner: Rc<RefCell<Inner>>,
    /// Set by wgpu's device-lost callback.
    device_lost: Arc<AtomicBool>,
}

impl Default for Session {
    fn default() -> Self {
        Self::new()
    }
}

#[wasm_bindgen]
impl Session {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Session {
        Session {
            inner: Rc::new(RefCell::new(Inner {
                device: None,
                generator: None,
                run: Slot::default(),
                teach: Slot::default(),
                interruptible: true,
            })),
            device_lost: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Picks the backend: WebGPU unless `force_cpu`, else (or when WebGPU fails) the CPU
    /// backend. Resolves to a [`BackendInfo`]. The GPU is initialized once per worker.
    #[wasm_bindgen(js_name = initBackend)]
    pub async fn init_backend(&self, force_cpu: bool) -> Result<JsValue, JsError> {
        let mut info = BackendInfo {
            backend: "cpu",
            adapter: CPU_ADAPTER.into(),
            software: false,
            notice: None,
            reason: None,
            detail: None,
        };
        let cpu = |info: &mut BackendInfo, reason: &str, notice: String, detail| {
            info.reason = Some(reason.into());
            info.notice = Some(notice);
            info.detail = detail;
            info.software = false;
            info.adapter = CPU_ADAPTER.into();
            Device::flex()
        };
        let device = if force_cpu {
            cpu(
                &mut info,
                "forced",
                "The CPU backend was chosen for this page, so WebGPU is off.".into(),
                None,
            )
        } else {
            match Device::wgpu_options().init_with_setup_async().await {
                Ok((device, setup)) => {
                    use burn::tensor::wgpu::wgpu::DeviceType;
                    let adapter = setup.adapter.get_info();
                    info.software = crate::gpu::is_software(&adapter);
                    // Browsers often hide the adapter's name; say what is known.
                    let name = if adapter.name.trim().is_empty() {
                        "unnamed adapter".to_string()
                    } else {
                        adapter.name.clone()
                    };
                    let kind = match adapter.device_type {
                        DeviceType::Cpu => "software, runs on the CPU",
                        DeviceType::DiscreteGpu => "discrete GPU",
                        DeviceType::IntegratedGpu => "integrated GPU",
                        DeviceType::VirtualGpu => "virtual GPU",
                        DeviceType::Other => "GPU",
                    };
                    info.adapter = format!("{name} ({kind})");
                    // The fused head kernels run on the same device and queue as Burn.
                    crate::gpu::register(&device, &setup);
                    let lost = self.device_lost.clone();
                    setup
                        .device
                        .set_device_lost_callback(move |reason, message| {
                            lost.store(true, Ordering::Relaxed);
                            console_error(&format!("WebGPU device lost ({reason:?}): {message}"));
                        });
                    // A tiny round trip proves the device really computes.
                    let probe = Tensor::<1>::from_floats([1.0, 2.0], &device).sum();
                    match probe.into_data_async().await {
                        Ok(_) => {
                            info.backend = "webgpu";
                            device
                        }
                        Err(e) => cpu(
                            &mut info,
                            "failed",
                            format!(
                                "This browser offers WebGPU, but the GPU “{name}” failed a test \
                                 computation, so the demo runs on the CPU instead (slower)."
                            ),
                            Some(format!("{e:?}")),
                        ),
                    }
                }
                Err(e) => cpu(
                    &mut info,
                    "unavailable",
                    "WebGPU is not available in this browser, so the demo runs on the CPU \
                     instead (slower)."
                        .into(),
                    Some(e.to_string()),
                ),
            }
        };
        let mut s = self.inner.borrow_mut();
        s.device = Some(device);
        s.run.set(None);
        s.teach.set(None);
        to_js(&info)
    }

    /// Whether the GPU device was lost since the backend was initialized.
    #[wasm_bindgen(js_name = deviceLost)]
    pub fn device_lost(&self) -> bool {
        self.device_lost.load(Ordering::Relaxed)
    }

    /// Switches to the CPU backend (after a lost GPU, or when the reader asks), dropping the
    /// model: the caller loads its bytes again with `loadModel`. Returns the [`BackendInfo`]
    /// with `reason` and `notice` as given.
    #[wasm_bindgen(js_name = useCpuBackend)]
    pub fn use_cpu_backend(&self, reason: String, notice: String) -> Result<JsValue, JsError> {
        // The GPU is no longer used: later errors are the CPU's, not a lost device's.
        self.device_lost.store(false, Ordering::Relaxed);
        let mut s = self.inner.borrow_mut();
        s.device = Some(Device::flex());
        s.generator = None;
        s.run.set(None);
        s.teach.set(None);
        to_js(&BackendInfo {
            backend: "cpu",
            adapter: CPU_ADAPTER.into(),
            software: false,
            notice: Some(notice),
            reason: Some(reason),
            detail: None,
        })
    }

    /// Loads a disa model file. On success the new model replaces the old one and its
    /// [`ModelInfo`] is returned; on failure the old model stays.
    #[wasm_bindgen(js_name = loadModel)]
    pub fn load_model(&self, name: &str, bytes: &[u8]) -> Result<JsValue, JsError> {
        let device = self
            .inner
            .borrow()
            .device
            .clone()
            .ok_or_else(|| JsError::new("initBackend must run before loadModel"))?;
        let bundle = Bundle::from_bytes(name, bytes).map_err(js_err)?;
        let defaults = SamplingDefaults::from_info(&bundle.info.defaults).map_err(js_err)?;
        let class_names = bundle.info.class_names.clone();
        let model_name = if bundle.info.name.is_empty() {
            name.to_string()
        } else {
            bundle.info.name.clone()
        };
        // Each tensor moves from the parsed file into the model: the weights are never held twice.
        let generator = bundle.into_generator(&device).map_err(js_err)?;
        let c = &generator.config;
        let info = ModelInfo {
            name: model_name,
            num_classes: c.class_num,
            class_names,
            grid: c.grid_size(),
            image_size: generator.model.image_size(c),
            seq_len: c.seq_len(),
            token_dim: c.token_dim(),
            default_schedule: defaults.schedule.as_ref().map(ScheduleParts::from),
            defaults,
            fused_head: generator.fused_head().map(|f| FusedHeadInfo {
                weight_bytes: f.weight_bytes(),
                launches_per_head_call: f.dispatches_per_head_call(),
                launches: f.launch_summary(),
            }),
            fused_transformer: generator.fused_transformer().map(|f| FusedTransformerInfo {
                weight_bytes: f.weight_bytes(),
                launches_per_ar_step: f.dispatches_per_forward(1),
            }),
            model_weight_bytes: generator.model.weight_bytes().bytes,
        };
        let out = to_js(&info)?;
        let mut s = self.inner.borrow_mut();
        s.generator = Some(Arc::new(generator));
        s.run.set(None);
        s.teach.set(None);
        Ok(out)
    }

    fn generator(&self) -> Result<Arc<LoadedModel>, JsError> {
        self.inner
            .borrow()
            .generator
            .clone()
            .ok_or_else(|| JsError::new("no model loaded"))
    }

    /// The plan of a request ([`PlanDto`]): per AR step the tokens revealed and the requested
    /// and run diffusion steps, the totals, and the A/B baseline's plan.
    pub fn plan(&self, request: JsValue) -> Result<JsValue, JsError> {
        let g = self.generator()?;
        let Parsed { request, .. } = Parsed::from_js(request)?;
        request.validate(&g.config).map_err(js_err)?;
        let plan = request.plan(&g.config).map_err(js_err)?;
        let max_steps = plan
            .steps
            .iter()
            .map(|s| s.nominal_steps)
            .max()
            .unwrap_or(0);
        let baseline = |clip| {
            Request {
                schedule: StepSchedule::Constant(max_steps),
                clip: Clip::from(clip),
                ..request.clone()
            }
            .plan(&g.config)
            .map(|p| Totals::from(&p))
            .map_err(js_err)
        };
        let disa_clip = TimestepClip::DISA.0.expect("DiSA clips");
        let dto = PlanDto {
            steps: plan.steps.iter().map(PlanStepDto::from).collect(),
            totals: Totals::from(&plan),
            max_steps,
            clip: request.effective_clip().0,
            baseline: BaselinePlan {
                steps: max_steps,
                schedule: StepSchedule::Constant(max_steps).to_string(),
                disa_clip,
                official: baseline(TimestepClip::NONE)?,
                clipped: baseline(TimestepClip::DISA)?,
            },
        };
        to_js(&dto)
    }

    /// Starts a generation of `request` (cancelling any in progress).
    #[wasm_bindgen(js_name = startGeneration)]
    pub fn start_generation(&self, request: JsValue) -> Result<(), JsError> {
        let g = self.generator()?;
        let Parsed {
            request,
            seed,
            kernels,
            previews,
        } = Parsed::from_js(request)?;
        let generation = Generation::new(g, request, Box::new(SeededNoise::new(seed)))
            .map_err(js_err)?
            .kernels(kernels);
        self.inner.borrow_mut().run.set(Some(Run {
            generation,
            started_ms: crate::sampler::now_ms(),
            sampling_ms: 0.0,
            previews,
        }));
        Ok(())
    }

    /// Drops the generation in progress (a step awaiting the GPU stops at its next diffusion
    /// step, see [`Self::set_interruptible`]).
    pub fn cancel(&self) {
        self.inner.borrow_mut().run.set(None);
    }

    /// Whether a cancel may stop an AR step between diffusion steps (the default). The
    /// end-to-end test turns it off to measure, in the same build, the cancel latency the page
    /// had when a cancel waited for the whole AR step.
    #[wasm_bindgen(js_name = setInterruptible)]
    pub fn set_interruptible(&self, on: bool) {
        self.inner.borrow_mut().interruptible = on;
    }

    /// Runs one AR step. Resolves to a [`StepUpdate`], or `null` when the generation is
    /// finished or was cancelled (also part-way through the step).
    pub async fn step(&self) -> Result<JsValue, JsError> {
        let inner = self.inner.clone();
        let Some((mut run, serial)) = inner.borrow_mut().run.take() else {
            return Ok(JsValue::NULL);
        };
        // A cancel or a new start (handled by the worker while this step awaits the GPU) stops
        // the step between diffusion steps, so a changed setting takes effect within one head
        // call.
        let interruptible = inner.borrow().interruptible;
        let stop = || interruptible && inner.borrow().run.serial != serial;
        let event = match run.generation.step_async_interruptible(&stop).await {
            Ok(Some(e)) => e,
            Ok(None) | Err(DisaError::Cancelled) => return Ok(JsValue::NULL),
            Err(e) => return Err(self.device_aware(e)),
        };
        let last = event.k + 1 == event.ar_steps;
        let preview = match (run.previews || last)
            .then(|| run.generation.decode())
            .flatten()
        {
            Some(decoded) => rgba_images(decoded)
                .await
                .map_err(|e| self.device_aware(e))?
                .into_iter()
                .next(),
            None => None,
        };
        run.sampling_ms += event.timings.transformer_ms + event.timings.head_ms;
        let update = StepUpdate {
            event: step_dto(&event, run.generation.plan(), run.sampling_ms),
            preview,
            elapsed_ms: crate::sampler::now_ms() - run.started_ms,
        };
        inner.borrow_mut().run.put_back(run, serial);
        to_js(&update)
    }

    fn device_aware(&self, e: DisaError) -> JsError {
        if self.device_lost() {
            JsError::new(&format!("GPU device lost: {e}"))
        } else {
            js_err(e)
        }
    }

    // ─────────────── teaching view (DiSA's evidence): the analysis one AR step per call ───────────────

    /// Starts a teaching analysis of `request` (the page's request: same seed, same image) with
    /// `samples` re-samples per token for the spread. Cancels any analysis in progress.
    #[wasm_bindgen(js_name = teachStart)]
    pub fn teach_start(&self, request: JsValue, samples: f64) -> Result<(), JsError> {
        let g = self.generator()?;
        let Parsed { request, seed, .. } = Parsed::from_js(request)?;
        // A JS number: a `usize` parameter would wrap 2³² + 3 to 3 and truncate 1.5 to 1.
        if !(samples.fract() == 0.0 && samples >= 0.0) {
            return Err(JsError::new(&format!(
                "re-samples per token must be a whole number, got {samples}"
            )));
        }
        let options = AnalysisOptions {
            // Saturated: anything past u32 is refused as too many below.
            samples: samples.min(u32::MAX as f64) as usize,
            ..AnalysisOptions::default()
        };
        options.validate().map_err(js_err)?;
        let ar_steps = request.ar_steps;
        let recorder =
            Recorder::new(g.clone(), request, Box::new(SeededNoise::new(seed))).map_err(js_err)?;
        self.inner.borrow_mut().teach.set(Some(Teach {
            generator: g,
            phase: TeachPhase::Recording(recorder),
            options,
            ar_steps,
        }));
        Ok(())
    }

    /// Drops the teaching analysis in progress.
    #[wasm_bindgen(js_name = teachCancel)]
    pub fn teach_cancel(&self) {
        self.inner.borrow_mut().teach.set(None);
    }

    /// Advances the teaching analysis by one AR step. Resolves to a [`TeachUpdate`], or `null`
    /// when nothing runs (cancelled).
    #[wasm_bindgen(js_name = teachStep)]
    pub async fn teach_step(&self) -> Result<JsValue, JsError> {
        let inner = self.inner.clone();
        let Some((mut teach, serial)) = inner.borrow_mut().teach.take() else {
            return Ok(JsValue::NULL);
        };
        let total = teach.ar_steps;
        let update = match teach.phase {
            TeachPhase::Recording(mut recorder) => {
                let more = recorder
                    .step_async()
                    .await
                    .map_err(|e| self.device_aware(e))?
                    .is_some();
                let done = recorder.recording().steps.len();
                teach.phase = if more && done < total {
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
                };
                TeachUpdate::Generate { done, total }
            }
            TeachPhase::Analysing(mut analyzer, recording) => {
                let more = analyzer
                    .step_async()
                    .await
                    .map_err(|e| self.device_aware(e))?
                    .is_some();
                let (done, total) = analyzer.progress();
                if more && done < total {
                    teach.phase = TeachPhase::Analysing(analyzer, recording);
                    TeachUpdate::Analyze { done, total }
                } else {
                    let analysis = analyzer.finish().map_err(js_err)?;
                    let result = teach_result(
                        &teach.generator,
                        teach.options.samples,
                        &recording,
                        &analysis,
                    )
                    .map_err(js_err)?;
                    let images = teach_images(&teach.generator, &recording, &analysis)
                        .await
                        .map_err(|e| self.device_aware(e))?;
                    // Finished: nothing to put back.
                    return to_js(&TeachUpdate::Done {
                        result: Box::new(result),
                        images,
                    });
                }
            }
        };
        inner.borrow_mut().teach.put_back(teach, serial);
        to_js(&update)
    }
}

/// The page's view of an event (image 0), with the totals of the plan's steps `0..=k`.
fn step_dto(e: &StepEvent, plan: &Plan, sampling_ms: f64) -> StepDto {
    let so_far = Plan {
        steps: plan.steps[..(e.k + 1).min(plan.steps.len())].to_vec(),
    };
    StepDto {
        k: e.k,
        ar_steps: e.ar_steps,
        positions: e.positions.first().cloned().unwrap_or_default(),
        nominal_steps: e.nominal_steps,
        effective_steps: e.effective_steps,
        cfg: e.cfg,
        transformer_ms: e.timings.transformer_ms,
        head_ms: e.timings.head_ms,
        head_gpu_ms: e.timings.head_gpu_ms,
        so_far: Totals::from(&so_far),
        sampling_ms,
    }
}

/// Reads decoded images (`[B, ch, H, W]`, about [−1, 1]) back as RGBA images.
async fn rgba_images(decoded: Tensor<4>) -> Result<Vec<Image>, DisaError> {
    let [b, ch, h, w] = decoded.dims();
    let values = decoded
        .into_data_async()
        .await
        .map_err(|e| DisaError::Device(format!("{e:?}")))?
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("{e:?}")))?;
    let images = crate::image::images_from_values(&values, [b, ch, h, w])?;
    Ok(images
        .iter()
        .map(|image| {
            let mut rgba = Vec::with_capacity(w * h * 4);
            for px in image.pixels.chunks_exact(3) {
                rgba.extend_from_slice(&[px[0], px[1], px[2], 255]);
            }
            Image {
                width: w as u32,
                height: h as u32,
                pixels: js_sys::Uint8ClampedArray::from(rgba.as_slice()),
            }
        })
        .collect())
}

fn teach_result(
    g: &LoadedModel,
    samples: usize,
    recording: &Recording,
    analysis: &Analysis,
) -> Result<TeachResult, DisaError> {
    let plan = recording.request.plan(&g.config)?;
    let done_after = (0..=plan.steps.len())
        .map(|j| {
            let prefix = Plan {
                steps: plan.steps[..j].to_vec(),
            };
            DoneAfter {
                tokens: prefix.steps.iter().map(|s| s.tokens).sum(),
                token_steps: prefix.token_steps(),
            }
        })
        .collect();
    let (n, c) = (recording.seq_len, recording.token_dim);
    // Tokens at the end of the order are revealed first (MAR keeps the first mask_len masked).
    let mut rank = vec![0; n];
    for (i, &p) in recording.orders[0].iter().enumerate() {
        rank[p] = n - 1 - i;
    }
    let mut tokens = Vec::new();
    for s in &analysis.steps {
        for (row, &p) in s.positions.first().into_iter().flatten().enumerate() {
            tokens.push(TeachToken {
                position: p,
                k: s.k,
                order: rank[p],
                steps: s.effective_steps,
                variance: s.token_variance[row],
                straightness: s.token_straightness[row],
                path_length: s.token_path_length[row],
                one_shot_error: s.token_one_shot_error[row],
                path: Pca::fit(&s.chains[row], c)?.project_all(&s.chains[row]),
            });
        }
    }
    let (final_tokens, _) = recording.state_after(recording.steps.len());
    Ok(TeachResult {
        ar_steps: recording.request.ar_steps,
        samples,
        seq_len: n,
        token_dim: c,
        grid: (n as f64).sqrt().round() as usize,
        schedule: recording.request.schedule.to_string(),
        steps: analysis.steps.clone(),
        completed_error: analysis.completed_error.clone(),
        pca_paths: analysis.pca_paths.clone(),
        pca_variances: analysis.pca_variances,
        tokens,
        final_tokens: final_tokens[..n * c].to_vec(),
        replay_error: analysis
            .steps
            .iter()
            .map(|s| s.replay_error)
            .fold(0.0, f64::max),
        done_after,
    })
}

/// The cached states the scrubber shows, image 0: for `j = 0..=K` steps done, the image so far
/// (`2j`) and the completed image from that context (`2j + 1`; the final image at `j = K`).
/// Empty for a model without a decoder.
async fn teach_images(
    g: &LoadedModel,
    recording: &Recording,
    analysis: &Analysis,
) -> Result<Vec<Image>, DisaError> {
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
    let mut out = Vec::with_capacity(count);
    const CHUNK: usize = 16; // images per decoder call: bounded memory for VAE models
    for start in (0..count).step_by(CHUNK) {
        let m = CHUNK.min(count - start);
        let tokens = Tensor::<3>::from_data(
            TensorData::new(
                grids[start * n * c..(start + m) * n * c].to_vec(),
                [m, n, c],
            ),
            &g.device,
        );
        let Some(decoded) = g.model.decode_tokens(tokens, &g.config) else {
            return Ok(Vec::new());
        };
        out.extend(rgba_images(decoded).await?);
    }
    Ok(out)
}
