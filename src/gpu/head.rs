//! [`FusedHead`]: the diffusion head's whole sampling loop for one AR step as one recording of
//! the kernels in `shaders/head.wgsl`, with the weights in their stored form (f32, f16, int8 or
//! int4 blocks) on the GPU.
//!
//! Per AR step the host uploads the condition rows `z`, the initial noise and every step's
//! noise, and the per-step coefficients, records `2 + steps · (ada segments + 2·depth + 1)`
//! dispatches in one compute pass, submits once and reads `x_0` back once.

#[cfg(not(target_arch = "wasm32"))]
use super::common::block_on;
use super::common::{
    Format, HostMatrix, Matrix, WEIGHTS_WGSL, WeightPacker, compile, compile_checked, f32_bytes,
    max_binding, read_mapped, storage_buffer, words_bytes,
};
use super::registry::GpuContext;
use crate::diffusion::{NUM_BASE_TIMESTEPS, StepCoefficients};
use crate::error::{DisaError, Result};
use crate::model::MarConfig;
use crate::weights::{StoredForm, WeightMap};
use burn::tensor::wgpu::wgpu;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

const SHADER: &str = include_str!("../../shaders/head.wgsl");
/// Activation rows per `gemm` workgroup (`RT` in the shader).
const ROWS_PER_GROUP: u32 = 8;
/// Threads (output columns) per `gemm` workgroup (`WG` in the shader).
const GEMM_THREADS: u32 = 64;
/// Widest head and largest token the final kernel's shared memory holds.
const MAX_WIDTH: usize = 1536;
const MAX_TOKEN_DIM: usize = 64;
/// `Params` and `Step` in the shader: 32 and 12 four-byte fields.
const PARAMS_BYTES: u64 = 32 * 4;
/// Widest head (and condition) `token_loop` holds in shared memory (`TLW` in the shader).
const TOKEN_LOOP_MAX_WIDTH: usize = 256;
/// Threads per `token_loop` workgroup (`TL` in the shader) on a GPU, and the most allowed.
const TOKEN_LOOP_THREADS_GPU: u32 = 256;
/// The same on a software adapter (lavapipe, SwiftShader), which runs a workgroup's threads as
/// a loop on one core, so threads beyond the work only add lanes to step through at every
/// barrier. On lavapipe, built-in model, K = 16, linear 50→5, one run (`disa bench --backend
/// wgpu --kernels fused --token-loop-threads 64,128,256,64`): head 638 ms per image with 64,
/// 797 with 128, 902 with 256, 638 with 64 again.
const TOKEN_LOOP_THREADS_SOFTWARE: u32 = 64;
const STEP_BYTES: u64 = 12 * 4;
const PREFIX: &str = "diffloss.net";

/// The `Params` uniform block of the shader.
#[derive(Clone, Copy, Default)]
struct Params {
    rows: u32,
    in_dim: u32,
    out_dim: u32,
    width: u32,
    w_off: u32,
    scale_off: u32,
    bias_off: u32,
    a_off: u32,
    out_off: u32,
    out_stride: u32,
    col_base: u32,
    temb_off: u32,
    ln_w: u32,
    ln_b: u32,
    mod_off: u32,
    mod_stride: u32,
    fl_w_off: u32,
    fl_scale_off: u32,
    fl_bias: u32,
    tok_dim: u32,
    ip_w_off: u32,
    ip_bias: u32,
    x_off: u32,
    h_off: u32,
    n_tok: u32,
    cfg_on: u32,
    y_off: u32,
    cond_off: u32,
    depth: u32,
    steps: u32,
    table_off: u32,
    steps_off: u32,
}

impl Params {
    fn bytes(&self) -> [u8; PARAMS_BYTES as usize] {
        let f = [
            self.rows,
            self.in_dim,
            self.out_dim,
            self.width,
            self.w_off,
            self.scale_off,
            self.bias_off,
            self.a_off,
            self.out_off,
            self.out_stride,
            self.col_base,
            self.temb_off,
            self.ln_w,
            self.ln_b,
            self.mod_off,
            self.mod_stride,
            self.fl_w_off,
            self.fl_scale_off,
            self.fl_bias,
            self.tok_dim,
            self.ip_w_off,
            self.ip_bias,
            self.x_off,
            self.h_off,
            self.n_tok,
            self.cfg_on,
            self.y_off,
            self.cond_off,
            self.depth,
            self.steps,
            self.table_off,
            self.steps_off,
        ];
        let mut out = [0u8; PARAMS_BYTES as usize];
        for (chunk, v) in out.chunks_exact_mut(4).zip(f) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }

    fn with_matrix(mut self, m: &Matrix) -> Self {
        self.w_off = m.w_off;
        self.scale_off = m.scale_off;
        self.bias_off = m.bias_off;
        self.in_dim = m.inp;
        self.out_dim = m.out;
        self
    }
}

/// The `Step` uniform block of the shader.
fn step_bytes(
    s: &StepCoefficients,
    next_t: usize,
    noise_off: u32,
    cfg: f32,
    temperature: f32,
) -> [u8; STEP_BYTES as usize] {
    let words: [u32; 12] = [
        s.timestep as u32,
        u32::from(s.add_noise),
        noise_off,
        next_t as u32,
        s.sqrt_recip.to_bits(),
        s.sqrt_recipm1.to_bits(),
        s.coef1.to_bits(),
        s.coef2.to_bits(),
        s.min_log.to_bits(),
        s.max_log.to_bits(),
        cfg.to_bits(),
        temperature.to_bits(),
    ];
    let mut out = [0u8; STEP_BYTES as usize];
    for (chunk, v) in out.chunks_exact_mut(4).zip(words) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Which kernel a pipeline runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Kernel {
    Gemm(GemmMode),
    InputInit,
    FinalStep,
}

/// The step table `token_loop` reads from `act`: `Step`'s twelve fields as floats (the
/// integer ones are exact small integers; the noise offset follows from the step's index).
fn step_floats(s: &StepCoefficients, next_t: usize, cfg: f32, temperature: f32) -> [f32; 12] {
    [
        s.timestep as f32,
        f32::from(u8::from(s.add_noise)),
        0.0,
        next_t as f32,
        s.sqrt_recip,
        s.sqrt_recipm1,
        s.coef1,
        s.coef2,
        s.min_log,
        s.max_log,
        cfg,
        temperature,
    ]
}

/// The shader's `MODE_*` for `gemm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum GemmMode {
    Plain = 0,
    Ada = 1,
    MlpIn = 2,
    MlpOut = 3,
}

/// One residual block's layers.
struct BlockLayers {
    mlp_in: Matrix,
    mlp_out: Matrix,
    ln_w: u32,
    ln_b: u32,
}

/// Buffers sized for the largest AR step seen so far.
struct Workspace {
    act: wgpu::Buffer,
    act_floats: u64,
    params: wgpu::Buffer,
    steps: wgpu::Buffer,
    step_capacity: usize,
    bind_groups: Vec<wgpu::BindGroup>,
}

/// What one AR step's head sampling needs.
pub struct HeadJob<'a> {
    /// Condition rows `z`, `[rows, dec]`: the n tokens' rows, then (with CFG) their
    /// unconditional copies.
    pub z: &'a [f32],
    /// Tokens sampled, `n`.
    pub tokens: usize,
    /// Guidance scale when `z` holds `2n` rows.
    pub cfg: Option<f32>,
    /// The diffusion steps in the order they run.
    pub steps: &'a [StepCoefficients],
    /// `x_T`, `[n, C]`.
    pub init_noise: &'a [f32],
    /// Each step's noise, `[steps, n, C]`.
    pub step_noise: &'a [f32],
    pub temperature: f32,
}

/// A submitted AR step whose `x_0` has not been read yet.
pub struct Submitted {
    /// `x_0` (`values` floats), then, when the adapter has timestamp queries, the begin and
    /// end ticks of the step's compute pass (two u64 at [`GpuTimer::ticks_at`]).
    staging: wgpu::Buffer,
    values: usize,
}

/// GPU timestamps around each AR step's compute pass (where the adapter has
/// `TIMESTAMP_QUERY`): the kernels' own time, read back with `x_0`, so timing adds no wait.
struct GpuTimer {
    queries: wgpu::QuerySet,
    /// The two resolved ticks, copied into each step's staging buffer.
    resolved: wgpu::Buffer,
    /// Nanoseconds per tick.
    period_ns: f64,
}

impl GpuTimer {
    fn new(ctx: &GpuContext) -> Option<Self> {
        if !ctx
            .device
            .features()
            .contains(wgpu::Features::TIMESTAMP_QUERY)
        {
            return None;
        }
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("disa head timestamps"),
            ty: wgpu::QueryType::Timestamp,
            count: 2,
        });
        let resolved = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("disa head timestamps"),
            size: 16,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        Some(Self {
            queries,
            resolved,
            period_ns: f64::from(ctx.queue.get_timestamp_period()),
        })
    }

    /// Byte offset of the two ticks in a staging buffer after `values` floats (u64-aligned).
    fn ticks_at(values: usize) -> u64 {
        (4 * values as u64).next_multiple_of(8)
    }

    /// Timestamp writes at the beginning and end of a compute pass.
    fn pass_writes(&self) -> wgpu::ComputePassTimestampWrites<'_> {
        wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(0),
            end_of_pass_write_index: Some(1),
        }
    }
}

/// The diffusion head as fused kernels on one GPU.
pub struct FusedHead {
    ctx: Arc<GpuContext>,
    width: usize,
    depth: usize,
    token_dim: usize,
    cond_dim: usize,
    mats: Vec<wgpu::Buffer>,
    vecs: wgpu::Buffer,
    /// The time-embedding table `[1000, W]` at offset 0 of `vecs`, filled on first use
    /// (computing it needs a read-back, which must be async in the browser).
    time_table_ready: AtomicBool,
    cond: Matrix,
    ada: Vec<Matrix>,
    /// Where each ada segment's columns start in the modulation rows.
    ada_cols: Vec<u32>,
    blocks: Vec<BlockLayers>,
    final_linear: Matrix,
    input_proj: Matrix,
    /// Where `token_loop`'s layer table starts in `mat` (word offset), when this head is small
    /// enough for it (width ≤ 256, one weight buffer).
    token_loop_table: Option<u32>,
    /// Tests and benchmarks: record the per-layer kernels even where `token_loop` applies.
    per_layer_only: AtomicBool,
    /// The per-layer form's pipelines by kernel and weight format (`per_layer_keys`),
    /// compiled at load where `token_loop` does not apply and on first use where it does: a
    /// browser's software adapter spends about 5 s compiling them, for a form the built-in
    /// model never runs.
    per_layer_pipelines: OnceLock<BTreeMap<(Kernel, Format), wgpu::ComputePipeline>>,
    per_layer_keys: Vec<(Kernel, Format)>,
    /// The weight format every matrix of `token_loop`'s layer table shares, which its
    /// pipeline is compiled for (the shader's `TFMT`); `None` where they differ, so the shader
    /// reads each matrix's format at run time.
    token_loop_format: Option<Format>,
    /// Tests: run the run-time-format `token_loop` even where every matrix shares a format.
    token_loop_any_format: AtomicBool,
    /// `token_loop`'s threads per workgroup, and its pipelines by `TokenLoopKey`, each
    /// compiled when an AR step first needs it.
    token_loop_threads: AtomicU32,
    token_loop_pipelines: Mutex<BTreeMap<TokenLoopKey, wgpu::ComputePipeline>>,
    module: wgpu::ShaderModule,
    pipeline_layout: wgpu::PipelineLayout,
    layout: wgpu::BindGroupLayout,
    workspace: Mutex<Option<Workspace>>,
    uniform_stride: u64,
    weight_bytes: u64,
    dispatches: AtomicU64,
    timer: Option<GpuTimer>,
    /// GPU nanoseconds of the AR steps read so far (timestamp queries).
    gpu_ns: AtomicU64,
}

impl std::fmt::Debug for FusedHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedHead")
            .field("width", &self.width)
            .field("depth", &self.depth)
            .field("weight_bytes", &self.weight_bytes)
            .finish_non_exhaustive()
    }
}

fn gpu_error(what: &str, e: impl std::fmt::Display) -> DisaError {
    DisaError::Device(format!("fused head kernels: {what}: {e}"))
}

impl FusedHead {
    /// Uploads the head's weights (`diffloss.net.*` of `weights`, in the form `stored` says the
    /// file kept them) and compiles the kernels.
    pub fn new(
        ctx: Arc<GpuContext>,
        weights: &WeightMap,
        stored: &BTreeMap<String, StoredForm>,
        config: &MarConfig,
    ) -> Result<Self> {
        let (width, depth, token_dim, cond_dim) = (
            config.diffloss_w,
            config.diffloss_d,
            config.token_dim(),
            config.decoder_embed_dim,
        );
        if width > MAX_WIDTH
            || token_dim > MAX_TOKEN_DIM
            || !width.is_multiple_of(8)
            || !cond_dim.is_multiple_of(8)
            || !token_dim.is_multiple_of(4)
        {
            return Err(gpu_error(
                "unsupported shape",
                format!(
                    "head width {width} (≤ {MAX_WIDTH}, a multiple of 8), token dim {token_dim} \
                     (≤ {MAX_TOKEN_DIM}, a multiple of 4), condition dim {cond_dim} (a multiple of 8)"
                ),
            ));
        }
        let read = |name: &str, out: usize, inp: usize, force_f32: bool| {
            HostMatrix::read(
                weights,
                stored,
                &format!("{PREFIX}.{name}"),
                out,
                inp,
                force_f32,
            )
        };
        let limits = ctx.device.limits();
        let max_binding = max_binding(&ctx);

        // The adaLN modulations of every block and of the final layer, stacked so one dispatch
        // computes them all (split where a stack would outgrow one binding).
        let mut ada_parts: Vec<HostMatrix> = (0..depth)
            .map(|j| {
                read(
                    &format!("res_blocks.{j}.adaLN_modulation.1"),
                    3 * width,
                    width,
                    false,
                )
            })
            .collect::<Result<_>>()?;
        ada_parts.push(read(
            "final_layer.adaLN_modulation.1",
            2 * width,
            width,
            false,
        )?);
        let mut ada_stacks: Vec<Vec<HostMatrix>> = Vec::new();
        for m in ada_parts {
            let fits = ada_stacks.last().is_some_and(|s: &Vec<HostMatrix>| {
                s[0].format == m.format
                    && s.iter().map(HostMatrix::bytes).sum::<u64>() + m.bytes() <= max_binding
            });
            if fits {
                ada_stacks.last_mut().expect("checked").push(m);
            } else {
                ada_stacks.push(vec![m]);
            }
        }
        let ada_host: Vec<HostMatrix> = ada_stacks.into_iter().map(HostMatrix::stack).collect();
        let cond_host = read("cond_embed", width, cond_dim, false)?;
        let mut block_host = Vec::new();
        for j in 0..depth {
            block_host.push((
                read(&format!("res_blocks.{j}.mlp.0"), width, width, false)?,
                read(&format!("res_blocks.{j}.mlp.2"), width, width, false)?,
                weights
                    .get(&format!("{PREFIX}.res_blocks.{j}.in_ln.weight"), &[width])?
                    .values
                    .clone(),
                weights
                    .get(&format!("{PREFIX}.res_blocks.{j}.in_ln.bias"), &[width])?
                    .values
                    .clone(),
            ));
        }
        let final_host = read("final_layer.linear", 2 * token_dim, width, false)?;
        // Read per element by the input projection: kept in f32 (it is W·C values).
        let input_host = read("input_proj", width, token_dim, true)?;

        // `vecs`: the time table, then every bias, block scale and LayerNorm vector. Every
        // matrix but the input projection is read input-major (`gemm`, `final_step`); the
        // input projection is read per output row and stays as it is.
        let mut packer = WeightPacker::new(&ctx, NUM_BASE_TIMESTEPS * width, "fused head kernels");
        let ada: Vec<Matrix> = ada_host
            .iter()
            .map(|m| packer.place(m, true))
            .collect::<Result<_>>()?;
        let cond = packer.place(&cond_host, true)?;
        let mut blocks = Vec::new();
        for (mlp_in, mlp_out, ln_w, ln_b) in &block_host {
            let mlp_in = packer.place(mlp_in, true)?;
            let mlp_out = packer.place(mlp_out, true)?;
            let ln_w_off = packer.push_vec(ln_w);
            let ln_b_off = packer.push_vec(ln_b);
            blocks.push(BlockLayers {
                mlp_in,
                mlp_out,
                ln_w: ln_w_off,
                ln_b: ln_b_off,
            });
        }
        let final_linear = packer.place(&final_host, true)?;
        let input_proj = packer.place(&input_host, false)?;
        // `token_loop` for small heads: every matrix it reads in one buffer, and its layer
        // table after them (each matrix's format read at run time, so mixed files qualify).
        let mut token_loop_format = None;
        let token_loop_table = if width <= TOKEN_LOOP_MAX_WIDTH
            && width.is_multiple_of(4)
            && cond_dim.is_multiple_of(4)
            && ada.len() == 1
            && packer.mat_words.len() == 1
        {
            let entry = |m: &Matrix| [m.w_off, m.scale_off, m.bias_off, m.format as u32];
            let mut table = Vec::new();
            for m in [&cond, &ada[0], &final_linear] {
                table.extend(entry(m));
            }
            for b in &blocks {
                table.extend(entry(&b.mlp_in));
                table.extend(entry(&b.mlp_out));
                table.extend([b.ln_w, b.ln_b]);
            }
            let mut formats = [&cond, &ada[0], &final_linear]
                .into_iter()
                .chain(blocks.iter().flat_map(|b| [&b.mlp_in, &b.mlp_out]))
                .map(|m| m.format);
            let first = formats.next();
            token_loop_format = first.filter(|&f| formats.all(|g| g == f));
            let words = &mut packer.mat_words[0];
            let at = words.len() as u32;
            words.extend(table);
            Some(at)
        } else {
            None
        };
        packer.check_vecs()?;
        let mut ada_cols = Vec::new();
        let mut col = 0u32;
        for m in &ada {
            ada_cols.push(col);
            col += m.out;
        }

        let device = &ctx.device;
        #[cfg(not(target_arch = "wasm32"))]
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let WeightPacker {
            mat_words, vecs, ..
        } = packer;
        let mats: Vec<wgpu::Buffer> = mat_words
            .iter()
            .map(|w| storage_buffer(&ctx, "disa head weights", &words_bytes(w)))
            .collect();
        let vecs_buffer = storage_buffer(&ctx, "disa head vectors", &f32_bytes(&vecs));
        let weight_bytes = mat_words.iter().map(|w| 4 * w.len() as u64).sum::<u64>()
            + 4 * (vecs.len() - NUM_BASE_TIMESTEPS * width) as u64;

        let uniform = |binding, size| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Uniform,
                has_dynamic_offset: true,
                min_binding_size: wgpu::BufferSize::new(size),
            },
            count: None,
        };
        let storage_entry = |binding, read_only| wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty: wgpu::BufferBindingType::Storage { read_only },
                has_dynamic_offset: false,
                min_binding_size: None,
            },
            count: None,
        };
        let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("disa head"),
            entries: &[
                uniform(0, PARAMS_BYTES),
                uniform(1, STEP_BYTES),
                storage_entry(2, true),
                storage_entry(3, true),
                storage_entry(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("disa head"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("shaders/head.wgsl"),
            source: wgpu::ShaderSource::Wgsl(format!("{WEIGHTS_WGSL}\n{SHADER}").into()),
        });
        let mut wanted = vec![
            pipeline_key(Kernel::Gemm(GemmMode::Plain), &cond),
            pipeline_key(Kernel::InputInit, &input_proj),
            pipeline_key(Kernel::FinalStep, &final_linear),
        ];
        wanted.extend(
            ada.iter()
                .map(|m| pipeline_key(Kernel::Gemm(GemmMode::Ada), m)),
        );
        for b in &blocks {
            wanted.push(pipeline_key(Kernel::Gemm(GemmMode::MlpIn), &b.mlp_in));
            wanted.push(pipeline_key(Kernel::Gemm(GemmMode::MlpOut), &b.mlp_out));
        }
        let per_layer_pipelines = OnceLock::new();
        if token_loop_table.is_none() {
            let _ = per_layer_pipelines.set(compile_per_layer(
                device,
                &module,
                &pipeline_layout,
                &wanted,
            ));
        }
        let token_loop_threads = if ctx.is_software() {
            TOKEN_LOOP_THREADS_SOFTWARE
        } else {
            TOKEN_LOOP_THREADS_GPU
        };
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(e) = block_on(&ctx, scope.pop()) {
            return Err(gpu_error("compiling or uploading", e));
        }
        let align = u64::from(limits.min_uniform_buffer_offset_alignment).max(1);
        let uniform_stride = PARAMS_BYTES.max(STEP_BYTES).div_ceil(align) * align;
        Ok(Self {
            ctx: ctx.clone(),
            width,
            depth,
            token_dim,
            cond_dim,
            mats,
            vecs: vecs_buffer,
            time_table_ready: AtomicBool::new(false),
            cond,
            ada,
            ada_cols,
            blocks,
            final_linear,
            input_proj,
            token_loop_table,
            per_layer_only: AtomicBool::new(false),
            per_layer_pipelines,
            per_layer_keys: wanted,
            token_loop_format,
            token_loop_any_format: AtomicBool::new(false),
            token_loop_threads: AtomicU32::new(token_loop_threads),
            token_loop_pipelines: Mutex::new(BTreeMap::new()),
            module,
            pipeline_layout,
            layout,
            workspace: Mutex::new(None),
            uniform_stride,
            weight_bytes,
            dispatches: AtomicU64::new(0),
            timer: GpuTimer::new(&ctx),
            gpu_ns: AtomicU64::new(0),
        })
    }

    /// Bytes the head's weights take on the GPU (matrices in their stored form, their block
    /// scales, biases and LayerNorm vectors; not the 1000-row time-embedding table).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Kernel launches per head call (one diffusion step): at most 1 where `token_loop`
    /// runs (one launch for all of an AR step's head calls), else `2·depth + 2` or so.
    pub fn dispatches_per_head_call(&self) -> usize {
        if self.uses_token_loop() {
            1
        } else {
            self.ada.len() + 2 * self.depth + 1
        }
    }

    /// How the kernels launch, in words (for `disa bench` and the page).
    pub fn launch_summary(&self) -> String {
        if self.uses_token_loop() {
            format!(
                "one launch per AR step: token_loop, {} threads per workgroup, {}",
                self.token_loop_threads(),
                match self.token_loop_compiled_format() {
                    Some(f) => format!("compiled for {}", f.name()),
                    None => "weight formats read at run time".to_string(),
                }
            )
        } else {
            format!(
                "{} launches per head call + 2 per AR step",
                self.dispatches_per_head_call()
            )
        }
    }

    /// Whether AR steps run as one `token_loop` launch (a small head), not per layer.
    pub fn uses_token_loop(&self) -> bool {
        self.token_loop_table.is_some() && !self.per_layer_only.load(Ordering::Relaxed)
    }

    /// Records the per-layer kernels even where `token_loop` applies (to test and measure
    /// them); `false` restores the default.
    pub fn force_per_layer(&self, on: bool) {
        self.per_layer_only.store(on, Ordering::Relaxed);
    }

    /// Threads per `token_loop` workgroup: 64 on a software adapter, 256 on a GPU.
    pub fn token_loop_threads(&self) -> u32 {
        self.token_loop_threads.load(Ordering::Relaxed)
    }

    /// Runs `token_loop` with `threads` per workgroup from now on (tests and measurements:
    /// both counts on one adapter). `threads` must lie in
    /// `[token size, 256]`: each of the token's values gets a thread in `p_sample`.
    pub fn set_token_loop_threads(&self, threads: u32) -> Result<()> {
        if !(self.token_dim as u32..=TOKEN_LOOP_THREADS_GPU).contains(&threads) {
            return Err(crate::error::invalid!(
                "token_loop threads {threads}: must lie in [{}, {TOKEN_LOOP_THREADS_GPU}] \
                 (the token size and the most a workgroup may have)",
                self.token_dim
            ));
        }
        self.token_loop_threads.store(threads, Ordering::Relaxed);
        Ok(())
    }

    /// Runs the `token_loop` that reads each matrix's weight format at run time (`true`, what
    /// a file with mixed formats runs) or the one compiled for the format they share
    /// (`false`, the default). Tests: both forms on one file.
    pub fn set_token_loop_any_format(&self, on: bool) {
        self.token_loop_any_format.store(on, Ordering::Relaxed);
    }

    /// Whether `token_loop` runs compiled for one weight format (every matrix of the layer
    /// table shares it), not reading formats at run time.
    pub fn token_loop_specialized(&self) -> bool {
        self.token_loop_compiled_format().is_some()
    }

    /// The weight format `token_loop` runs compiled for (`TFMT`); `None`: formats read at run
    /// time.
    fn token_loop_compiled_format(&self) -> Option<Format> {
        self.token_loop_format
            .filter(|_| !self.token_loop_any_format.load(Ordering::Relaxed))
    }

    /// The `token_loop` pipeline an AR step with `rows` rows per token (2 with CFG) runs now,
    /// compiled on first use.
    fn token_loop_pipeline(&self, rows: u32) -> Result<wgpu::ComputePipeline> {
        let key = TokenLoopKey {
            threads: self.token_loop_threads(),
            format: self.token_loop_compiled_format(),
            rows,
        };
        let mut pipelines = self
            .token_loop_pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let Some(pipeline) = pipelines.get(&key) {
            return Ok(pipeline.clone());
        }
        let ada = ((3 * self.depth + 2) * self.width) as u32;
        let pipeline = self.compile_checked("compiling token_loop", |device| {
            compile_token_loop(
                device,
                &self.module,
                &self.pipeline_layout,
                key,
                [ada, self.width as u32, self.token_dim as u32],
            )
        })?;
        Ok(pipelines.entry(key).or_insert(pipeline).clone())
    }

    /// The per-layer form's pipelines, compiled on first use.
    fn per_layer_pipelines(&self) -> Result<&BTreeMap<(Kernel, Format), wgpu::ComputePipeline>> {
        if let Some(pipelines) = self.per_layer_pipelines.get() {
            return Ok(pipelines);
        }
        let pipelines = self.compile_checked("compiling the per-layer kernels", |device| {
            compile_per_layer(
                device,
                &self.module,
                &self.pipeline_layout,
                &self.per_layer_keys,
            )
        })?;
        Ok(self.per_layer_pipelines.get_or_init(|| pipelines))
    }

    /// [`compile_checked`] on this head's device, its error reported as `what`.
    fn compile_checked<T>(
        &self,
        what: &str,
        compile: impl FnOnce(&wgpu::Device) -> T,
    ) -> Result<T> {
        compile_checked(&self.ctx, compile).map_err(|e| gpu_error(what, e))
    }

    /// Kernel launches recorded so far.
    pub fn dispatches(&self) -> u64 {
        self.dispatches.load(Ordering::Relaxed)
    }

    /// GPU time of the AR steps read back so far, in nanoseconds, from timestamp queries
    /// around each step's compute pass; `None` where the adapter has no timestamp queries.
    pub fn gpu_time_ns(&self) -> Option<u64> {
        self.timer
            .as_ref()
            .map(|_| self.gpu_ns.load(Ordering::Relaxed))
    }

    /// The adapter the kernels run on.
    pub fn adapter(&self) -> &wgpu::AdapterInfo {
        &self.ctx.adapter
    }

    /// Whether the time-embedding table has been uploaded.
    pub fn has_time_table(&self) -> bool {
        self.time_table_ready.load(Ordering::Acquire)
    }

    /// Uploads the head's time embedding of every base timestep, `[1000, W]`.
    pub fn set_time_table(&self, table: &[f32]) -> Result<()> {
        if table.len() != NUM_BASE_TIMESTEPS * self.width {
            return Err(gpu_error(
                "time table",
                format!(
                    "{} values, expected {}",
                    table.len(),
                    NUM_BASE_TIMESTEPS * self.width
                ),
            ));
        }
        let bytes: Vec<u8> = table.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.ctx.queue.write_buffer(&self.vecs, 0, &bytes);
        self.time_table_ready.store(true, Ordering::Release);
        Ok(())
    }

    /// Floats of activations an AR step of `n` tokens (`rows` head rows) and `steps` diffusion
    /// steps needs (the layout `submit` lays out).
    fn activation_floats(&self, n: usize, rows: usize, steps: usize) -> usize {
        let (w, c) = (self.width, self.token_dim);
        rows * (self.cond_dim + w * (4 + 3 * self.depth + 2)) + n * c * (1 + steps) + 12 * steps
    }

    /// Whether an AR step of `tokens` tokens (doubled with CFG) and `steps` diffusion steps fits
    /// this GPU's binding and dispatch limits; where not, `Kernels::Auto` takes the tensor path.
    pub fn fits(&self, tokens: usize, cfg: bool, steps: usize) -> bool {
        let rows = if cfg { 2 * tokens } else { tokens };
        let limits = self.ctx.device.limits();
        let max_binding = max_binding(&self.ctx);
        4 * self.activation_floats(tokens, rows, steps) as u64 <= max_binding
            && tokens <= limits.max_compute_workgroups_per_dimension as usize
    }

    /// Records and submits one AR step's sampling loop.
    pub fn submit(&self, job: &HeadJob<'_>) -> Result<Submitted> {
        if !self.has_time_table() {
            return Err(gpu_error("time table", "not uploaded yet"));
        }
        let (n, c, w, d) = (job.tokens, self.token_dim, self.width, self.depth);
        let rows = if job.cfg.is_some() { 2 * n } else { n };
        let steps = job.steps.len();
        if n == 0 || steps == 0 {
            return Err(gpu_error("empty job", "no tokens or no steps"));
        }
        if job.z.len() != rows * self.cond_dim
            || job.init_noise.len() != n * c
            || job.step_noise.len() != steps * n * c
        {
            return Err(gpu_error(
                "job shapes",
                "z, noise and token counts disagree",
            ));
        }
        // Activation layout, in floats.
        let ada_cols = (3 * d + 2) * w;
        let z_off = 0;
        let cond_off = z_off + rows * self.cond_dim;
        let y_off = cond_off + rows * w;
        let ada_off = y_off + rows * w;
        let h_off = ada_off + rows * ada_cols;
        let u_off = h_off + rows * w;
        let x_off = u_off + rows * w;
        let noise_off = x_off + n * c;
        let steps_off = noise_off + steps * n * c;
        let total = steps_off + 12 * steps;
        debug_assert_eq!(total, self.activation_floats(n, rows, steps));
        let max_binding = max_binding(&self.ctx);
        if !self.fits(n, job.cfg.is_some(), steps) {
            return Err(gpu_error(
                "too many tokens at once",
                format!(
                    "{rows} rows need {} MB of activations; this GPU binds at most {} MB \
                     (use --kernels tensor or a smaller batch)",
                    4 * total as u64 / 1_000_000,
                    max_binding / 1_000_000
                ),
            ));
        }
        let device = &self.ctx.device;
        let queue = &self.ctx.queue;
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let dispatch_kinds = 3 + self.ada.len() + 2 * d;
        let needs_new = guard
            .as_ref()
            .is_none_or(|ws| ws.act_floats < total as u64 || ws.step_capacity < steps);
        if needs_new {
            let old = guard.take();
            let act_floats = (total as u64).max(old.as_ref().map_or(0, |o| o.act_floats)) * 5 / 4;
            let act_floats = act_floats.min(max_binding / 4).max(total as u64);
            let step_capacity = steps.max(old.as_ref().map_or(0, |o| o.step_capacity));
            *guard = Some(self.workspace_for(act_floats, step_capacity, dispatch_kinds));
        }
        let ws = guard.as_ref().expect("created above");

        // Uploads: activations' inputs, per-dispatch parameters, per-step coefficients.
        queue.write_buffer(&ws.act, 4 * z_off as u64, &f32_bytes(job.z));
        queue.write_buffer(&ws.act, 4 * x_off as u64, &f32_bytes(job.init_noise));
        queue.write_buffer(&ws.act, 4 * noise_off as u64, &f32_bytes(job.step_noise));
        let cfg_scale = job.cfg.unwrap_or(1.0);
        let mut step_data = vec![0u8; steps * self.uniform_stride as usize];
        for (i, s) in job.steps.iter().enumerate() {
            let at = i * self.uniform_stride as usize;
            let noise = (noise_off + i * n * c) as u32;
            let next_t = job.steps.get(i + 1).unwrap_or(s).timestep;
            step_data[at..at + STEP_BYTES as usize].copy_from_slice(&step_bytes(
                s,
                next_t,
                noise,
                cfg_scale,
                job.temperature,
            ));
        }
        queue.write_buffer(&ws.steps, 0, &step_data);

        if let Some(table_off) = self.token_loop_table.filter(|_| self.uses_token_loop()) {
            // One launch: each workgroup runs its token's whole loop.
            let pipeline = self.token_loop_pipeline(if job.cfg.is_some() { 2 } else { 1 })?;
            let table: Vec<f32> = job
                .steps
                .iter()
                .enumerate()
                .flat_map(|(i, s)| {
                    let next_t = job.steps.get(i + 1).unwrap_or(s).timestep;
                    step_floats(s, next_t, cfg_scale, job.temperature)
                })
                .collect();
            queue.write_buffer(&ws.act, 4 * steps_off as u64, &f32_bytes(&table));
            let params = Params {
                rows: rows as u32,
                in_dim: self.cond_dim as u32,
                width: w as u32,
                a_off: z_off as u32,
                cond_off: cond_off as u32,
                temb_off: 0,
                mod_off: ada_off as u32,
                mod_stride: ada_cols as u32,
                tok_dim: c as u32,
                ip_w_off: self.input_proj.w_off,
                ip_bias: self.input_proj.bias_off,
                x_off: x_off as u32,
                n_tok: n as u32,
                cfg_on: u32::from(job.cfg.is_some()),
                depth: d as u32,
                steps: steps as u32,
                table_off,
                steps_off: steps_off as u32,
                ..Params::default()
            };
            queue.write_buffer(&ws.params, 0, &params.bytes());
            let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("disa head AR step (token loop)"),
            });
            {
                let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                    label: Some("disa head token loop"),
                    timestamp_writes: self.timer.as_ref().map(GpuTimer::pass_writes),
                });
                pass.set_pipeline(&pipeline);
                pass.set_bind_group(0, &ws.bind_groups[self.cond.buffer], &[0, 0]);
                pass.dispatch_workgroups(n as u32, 1, 1);
            }
            return Ok(self.finish_step(encoder, &ws.act, x_off, n * c, 1));
        }

        let base = Params {
            rows: rows as u32,
            width: w as u32,
            temb_off: 0,
            tok_dim: c as u32,
            x_off: x_off as u32,
            h_off: h_off as u32,
            n_tok: n as u32,
            cfg_on: u32::from(job.cfg.is_some()),
            mod_stride: ada_cols as u32,
            y_off: y_off as u32,
            cond_off: cond_off as u32,
            ..Params::default()
        };
        // One parameter block per dispatch kind, in a fixed order.
        let mut params: Vec<(Kernel, Matrix, Params, [u32; 2])> = Vec::new();
        let groups = |m: &Matrix| {
            [
                m.out.div_ceil(GEMM_THREADS),
                (rows as u32).div_ceil(ROWS_PER_GROUP),
            ]
        };
        params.push((
            Kernel::Gemm(GemmMode::Plain),
            self.cond,
            Params {
                a_off: z_off as u32,
                out_off: cond_off as u32,
                out_stride: w as u32,
                ..base
            }
            .with_matrix(&self.cond),
            groups(&self.cond),
        ));
        params.push((
            Kernel::InputInit,
            self.input_proj,
            Params {
                ip_w_off: self.input_proj.w_off,
                ip_bias: self.input_proj.bias_off,
                ..base
            },
            [n as u32, 1],
        ));
        for (m, col) in self.ada.iter().zip(&self.ada_cols) {
            params.push((
                Kernel::Gemm(GemmMode::Ada),
                *m,
                Params {
                    a_off: y_off as u32,
                    out_off: ada_off as u32,
                    out_stride: ada_cols as u32,
                    col_base: *col,
                    ..base
                }
                .with_matrix(m),
                groups(m),
            ));
        }
        for (j, b) in self.blocks.iter().enumerate() {
            let mod_off = (ada_off + 3 * j * w) as u32;
            params.push((
                Kernel::Gemm(GemmMode::MlpIn),
                b.mlp_in,
                Params {
                    a_off: h_off as u32,
                    out_off: u_off as u32,
                    out_stride: w as u32,
                    ln_w: b.ln_w,
                    ln_b: b.ln_b,
                    mod_off,
                    ..base
                }
                .with_matrix(&b.mlp_in),
                groups(&b.mlp_in),
            ));
            params.push((
                Kernel::Gemm(GemmMode::MlpOut),
                b.mlp_out,
                Params {
                    a_off: u_off as u32,
                    out_off: h_off as u32,
                    out_stride: w as u32,
                    mod_off,
                    ..base
                }
                .with_matrix(&b.mlp_out),
                groups(&b.mlp_out),
            ));
        }
        params.push((
            Kernel::FinalStep,
            self.final_linear,
            Params {
                mod_off: (ada_off + 3 * d * w) as u32,
                fl_w_off: self.final_linear.w_off,
                fl_scale_off: self.final_linear.scale_off,
                fl_bias: self.final_linear.bias_off,
                ip_w_off: self.input_proj.w_off,
                ip_bias: self.input_proj.bias_off,
                ..base
            },
            [n as u32, 1],
        ));
        let mut param_data = vec![0u8; params.len() * self.uniform_stride as usize];
        for (i, (_, _, p, _)) in params.iter().enumerate() {
            let at = i * self.uniform_stride as usize;
            param_data[at..at + PARAMS_BYTES as usize].copy_from_slice(&p.bytes());
        }
        queue.write_buffer(&ws.params, 0, &param_data);

        // The input projection and the final step read the input projection's matrix from
        // the final linear's buffer: they must share one (checked at placement).
        if params
            .iter()
            .any(|(k, m, _, _)| *k == Kernel::FinalStep && m.buffer != self.input_proj.buffer)
        {
            return Err(gpu_error(
                "layout",
                "the final layer and the input projection ended up in different buffers",
            ));
        }

        let pipelines = self.per_layer_pipelines()?;
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("disa head AR step"),
        });
        let mut launched = 0u64;
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("disa head"),
                timestamp_writes: self.timer.as_ref().map(GpuTimer::pass_writes),
            });
            let stride = self.uniform_stride as u32;
            let mut run = |index: usize, step: usize, pass: &mut wgpu::ComputePass<'_>| {
                let (kernel, m, _, [gx, gy]) = &params[index];
                let pipeline = &pipelines[&pipeline_key(*kernel, m)];
                pass.set_pipeline(pipeline);
                let bind_group = match kernel {
                    Kernel::InputInit => &ws.bind_groups[self.input_proj.buffer],
                    _ => &ws.bind_groups[m.buffer],
                };
                pass.set_bind_group(
                    0,
                    bind_group,
                    &[index as u32 * stride, step as u32 * stride],
                );
                pass.dispatch_workgroups(*gx, *gy, 1);
                launched += 1;
            };
            run(0, 0, &mut pass);
            run(1, 0, &mut pass);
            let per_step = 2..params.len();
            for s in 0..steps {
                for i in per_step.clone() {
                    run(i, s, &mut pass);
                }
            }
        }
        Ok(self.finish_step(encoder, &ws.act, x_off, n * c, launched))
    }

    /// Copies `x_0` (`len` floats at `x_off` of `act`) and the pass's timestamps to a staging
    /// buffer after the recorded work, and submits it all.
    fn finish_step(
        &self,
        mut encoder: wgpu::CommandEncoder,
        act: &wgpu::Buffer,
        x_off: usize,
        len: usize,
        launched: u64,
    ) -> Submitted {
        let values_bytes = 4 * len as u64;
        let staging = self.ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("disa head x0"),
            size: match self.timer {
                Some(_) => GpuTimer::ticks_at(len) + 16,
                None => values_bytes,
            },
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        encoder.copy_buffer_to_buffer(act, 4 * x_off as u64, &staging, 0, values_bytes);
        if let Some(timer) = &self.timer {
            encoder.resolve_query_set(&timer.queries, 0..2, &timer.resolved, 0);
            let at = GpuTimer::ticks_at(len);
            encoder.copy_buffer_to_buffer(&timer.resolved, 0, &staging, at, 16);
        }
        self.ctx.queue.submit([encoder.finish()]);
        self.dispatches.fetch_add(launched, Ordering::Relaxed);
        Submitted {
            staging,
            values: len,
        }
    }

    fn workspace_for(&self, act_floats: u64, step_capacity: usize, kinds: usize) -> Workspace {
        let device = &self.ctx.device;
        let act = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("disa head activations"),
            size: 4 * act_floats,
            usage: wgpu::BufferUsages::STORAGE
                | wgpu::BufferUsages::COPY_DST
                | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let uniform = |label, count: usize| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size: count as u64 * self.uniform_stride,
                usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            })
        };
        let params = uniform("disa head params", kinds);
        let steps = uniform("disa head steps", step_capacity);
        let bind_groups = self
            .mats
            .iter()
            .map(|mat| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("disa head"),
                    layout: &self.layout,
                    entries: &[
                        wgpu::BindGroupEntry {
                            binding: 0,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &params,
                                offset: 0,
                                size: wgpu::BufferSize::new(PARAMS_BYTES),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 1,
                            resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                                buffer: &steps,
                                offset: 0,
                                size: wgpu::BufferSize::new(STEP_BYTES),
                            }),
                        },
                        wgpu::BindGroupEntry {
                            binding: 2,
                            resource: mat.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 3,
                            resource: self.vecs.as_entire_binding(),
                        },
                        wgpu::BindGroupEntry {
                            binding: 4,
                            resource: act.as_entire_binding(),
                        },
                    ],
                })
            })
            .collect();
        Workspace {
            act,
            act_floats,
            params,
            steps,
            step_capacity,
            bind_groups,
        }
    }

    /// Waits for a submitted step and reads `x_0` (`[n, C]`), blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, submitted: Submitted) -> Result<Vec<f32>> {
        block_on(&self.ctx, self.read_async(submitted))
    }

    /// Synchronous read-backs are impossible in the browser: use [`Self::read_async`].
    #[cfg(target_arch = "wasm32")]
    pub fn read(&self, _submitted: Submitted) -> Result<Vec<f32>> {
        Err(gpu_error(
            "reading results back",
            "use the async read in the browser",
        ))
    }

    /// Waits for a submitted step and reads `x_0` (`[n, C]`).
    pub async fn read_async(&self, submitted: Submitted) -> Result<Vec<f32>> {
        read_mapped(&self.ctx, &submitted.staging, |view| {
            if let Some(timer) = &self.timer {
                let at = GpuTimer::ticks_at(submitted.values) as usize;
                let tick = |k: usize| {
                    let b = &view[at + 8 * k..at + 8 * k + 8];
                    u64::from_le_bytes(b.try_into().expect("8 bytes"))
                };
                // A pass the implementation did not time reads as 0 → 0 (adds nothing).
                let ns = tick(1).saturating_sub(tick(0)) as f64 * timer.period_ns;
                self.gpu_ns.fetch_add(ns.round() as u64, Ordering::Relaxed);
            }
            view[..4 * submitted.values]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .await
        .map_err(|e| gpu_error("reading results back", e))
    }
}

/// What a `token_loop` pipeline is compiled for (the shader's override constants): a software
/// adapter pays for a branch on a value fixed for the whole launch as for a divergent one, so
/// such values are settled when compiling.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct TokenLoopKey {
    /// Threads per workgroup (`TL`).
    threads: u32,
    /// The weight format every matrix of the layer table shares (`TFMT`); `None`:
    /// `FMT_MIXED`, each matrix's format read from the table at run time.
    format: Option<Format>,
    /// Rows per token (`ROWS`): 2 with CFG (the token and its unconditional copy), else 1.
    rows: u32,
}

/// `TFMT` in the shader where `token_loop` reads each matrix's weight format at run time.
const FMT_MIXED: u32 = 4;

/// `token_loop` compiled for `key`, for a head whose stacked adaLN modulations and MLP have
/// `[ada, width]` output columns (a thread takes a layer's columns in pairs where it has at
/// least two, and their count is even: `PAIR_ADA`, `PAIR_W`) and whose tokens have
/// `token_dim` values. The shared arrays are sized to `width` and `token_dim` (`TLW`, `TLC`):
/// a browser zero-initializes them, which a software adapter compiles into code as long as
/// the arrays.
fn compile_token_loop(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    layout: &wgpu::PipelineLayout,
    key: TokenLoopKey,
    [ada, width, token_dim]: [u32; 3],
) -> wgpu::ComputePipeline {
    let tfmt = key.format.map_or(FMT_MIXED, |f| f as u32);
    let paired = |cols: u32| f64::from(u8::from(cols >= 2 * key.threads && cols.is_multiple_of(2)));
    compile(
        device,
        module,
        layout,
        "token_loop",
        &[
            ("TL", f64::from(key.threads)),
            ("TFMT", f64::from(tfmt)),
            ("ROWS", f64::from(key.rows)),
            ("PAIR_ADA", paired(ada)),
            ("PAIR_W", paired(width)),
            ("TLW", f64::from(width)),
            ("TLC", f64::from(token_dim)),
        ],
    )
}

/// The per-layer form's pipelines for `keys` (kernel, weight format).
fn compile_per_layer(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    layout: &wgpu::PipelineLayout,
    keys: &[(Kernel, Format)],
) -> BTreeMap<(Kernel, Format), wgpu::ComputePipeline> {
    let mut pipelines = BTreeMap::new();
    for &(kernel, format) in keys {
        pipelines.entry((kernel, format)).or_insert_with(|| {
            let (entry, mode) = match kernel {
                Kernel::Gemm(m) => ("gemm", m as u32),
                Kernel::InputInit => ("input_init", 0),
                Kernel::FinalStep => ("final_step", 0),
            };
            let constants = [("WFMT", format as u32 as f64), ("MODE", mode as f64)];
            compile(device, module, layout, entry, &constants)
        });
    }
    pipelines
}

/// The pipeline a dispatch of `kernel` over matrix `m` runs.
fn pipeline_key(kernel: Kernel, m: &Matrix) -> (Kernel, Format) {
    (kernel, m.format)
}
