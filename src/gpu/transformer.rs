//! [`FusedTransformer`]: the MAR encoder and decoder of one AR step as one recording of the
//! kernels in `shaders/transformer.wgsl` (`7 + 5·(encoder + decoder depth)` dispatches, one
//! submit, one read-back of the head's condition rows), with the weights in their stored form.
//!
//! The host uploads only what changes per step: the known tokens and three small gather tables
//! (which rows feed the encoder, the decoder and the head). Class embeddings, position tables
//! and the mask token sit in `vecs` with the biases.

#[cfg(not(target_arch = "wasm32"))]
use super::common::block_on;
use super::common::{
    Format, HostMatrix, Matrix, WEIGHTS_WGSL, WeightPacker, compile, compile_checked, f32_bytes,
    max_binding, read_mapped, storage_buffer, words_bytes,
};
use super::registry::GpuContext;
use crate::error::{DisaError, Result};
use crate::model::MarConfig;
use crate::weights::{StoredForm, WeightMap};
use burn::tensor::wgpu::wgpu;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

const SHADER: &str = include_str!("../../shaders/transformer.wgsl");
/// `Params` in the shader: 20 four-byte fields (the last three pad it to 16 bytes).
const PARAMS_BYTES: u64 = 20 * 4;
/// Threads per workgroup of every kernel (`WG` in the shader); `COLUMNS_PER_THREAD` output
/// columns each in `linear`.
const THREADS: u32 = 64;
/// Activation rows per `linear` workgroup (`RT`).
const ROWS_PER_GROUP: u32 = 8;
/// Output columns per `linear` thread (`COLS` in the shader, whose accumulators are written
/// out for exactly 2): each shared-memory read of the inputs serves both. 2 measured best on
/// lavapipe (transformer 2.1 s against 2.7 s for 1 and 2.3 s for 4, built-in model, K = 16).
const COLUMNS_PER_THREAD: u32 = 2;
/// Widest attention head the attention kernel holds in registers (`MAX_HEAD_DIM`).
const MAX_HEAD_DIM: usize = 128;
/// Sizes of the shared arrays (the shader's `CH`, inputs per `linear` tile, and `KV_VECS`,
/// `vec4`s of keys and of values per attention chunk): a GPU's, and a software adapter's in
/// the browser. Browsers zero-initialize workgroup arrays, and SwiftShader compiles that into
/// code as long as the arrays: with the GPU's sizes it took 0.83–1.1 s to compile each of
/// `linear` and `attention`, with these 0.35–0.54 s (`node tests/e2e/compile-times.mjs`).
/// Natively nothing is zero-initialized (see `compile`), and the larger sizes ran the
/// transformer faster on lavapipe and SwiftShader, so native builds keep them.
const SHARED_SIZES_GPU: SharedSizes = SharedSizes {
    tile_inputs: 256,
    kv_vecs: 256,
};
const SHARED_SIZES_SOFTWARE: SharedSizes = SharedSizes {
    tile_inputs: 64,
    kv_vecs: 64,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SharedSizes {
    tile_inputs: u32,
    kv_vecs: u32,
}

impl SharedSizes {
    /// A browser's software adapter's sizes (`true`) or a GPU's.
    fn for_browser_software(on: bool) -> Self {
        if on {
            SHARED_SIZES_SOFTWARE
        } else {
            SHARED_SIZES_GPU
        }
    }
}
/// A gather code reading `vecs` (else `act`; `IN_VECS` in the shader).
const IN_VECS: u32 = 0x8000_0000;
/// Workgroups per grid dimension the row kernels use before wrapping into `y`.
const GRID_X: u32 = 65_535;

/// What a `linear` dispatch does with its result (the shader's `MODE_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum LinearMode {
    Plain = 0,
    Gelu = 1,
    Residual = 2,
}

/// Which kernel a pipeline runs: one pipeline per kernel and weight format (the linear's
/// mode is a parameter, not a pipeline constant: a browser's software adapter spends about a
/// second compiling each pipeline).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kernel {
    Linear(Format),
    Attention,
    LayerNorm,
    Gather,
}

/// A LayerNorm's affine weight and bias in `vecs`.
#[derive(Clone, Copy, Debug)]
struct Norm {
    w: u32,
    b: u32,
}

/// One timm ViT block.
struct BlockLayers {
    norm1: Norm,
    qkv: Matrix,
    proj: Matrix,
    norm2: Norm,
    fc1: Matrix,
    fc2: Matrix,
    heads: usize,
}

/// The `Params` uniform block of the shader.
#[derive(Clone, Copy, Default)]
struct Params {
    rows: u32,
    in_dim: u32,
    out_dim: u32,
    w_off: u32,
    scale_off: u32,
    bias_off: u32,
    a_off: u32,
    out_off: u32,
    ln_w: u32,
    ln_b: u32,
    ln_on: u32,
    seq_len: u32,
    heads: u32,
    head_dim: u32,
    idx_off: u32,
    scale: f32,
    /// linear: a `LinearMode`.
    mode: u32,
}

impl Params {
    fn bytes(&self) -> [u8; PARAMS_BYTES as usize] {
        let f = [
            self.rows,
            self.in_dim,
            self.out_dim,
            self.w_off,
            self.scale_off,
            self.bias_off,
            self.a_off,
            self.out_off,
            self.ln_w,
            self.ln_b,
            self.ln_on,
            self.seq_len,
            self.heads,
            self.head_dim,
            self.idx_off,
            self.scale.to_bits(),
            self.mode,
            0,
            0,
            0,
        ];
        let mut out = [0u8; PARAMS_BYTES as usize];
        for (chunk, v) in out.chunks_exact_mut(4).zip(f) {
            chunk.copy_from_slice(&v.to_le_bytes());
        }
        out
    }
}

/// One recorded dispatch: its kernel, the weight buffer its bind group uses, its parameters
/// and its grid.
struct Dispatch {
    kernel: Kernel,
    buffer: usize,
    params: Params,
    grid: [u32; 3],
}

/// What one forward pass needs.
pub struct TransformerJob<'a> {
    /// One label per sequence (`None`: the unconditional class), `S`.
    pub labels: &'a [Option<usize>],
    /// Per sequence, `true` where the token is unknown, `[S][N]`; every sequence knows the
    /// same number of tokens.
    pub mask: &'a [Vec<bool>],
    /// Every sequence's tokens, `[S, N, C]` row-major (unknown ones are not read).
    pub tokens: &'a [f32],
    /// The rows to return, as `s·N + position`, in the order the head wants them.
    pub select: &'a [usize],
}

/// A submitted forward pass whose condition rows have not been read yet.
pub struct TransformerSubmitted {
    staging: wgpu::Buffer,
    values: usize,
}

/// Buffers sized for the largest forward pass seen so far.
struct Workspace {
    act: wgpu::Buffer,
    act_floats: u64,
    idx: wgpu::Buffer,
    idx_words: u64,
    params: wgpu::Buffer,
    param_slots: usize,
    bind_groups: Vec<wgpu::BindGroup>,
}

/// The MAR transformer as fused kernels on one GPU.
pub struct FusedTransformer {
    ctx: Arc<GpuContext>,
    enc: usize,
    dec: usize,
    token_dim: usize,
    seq_len: usize,
    buffer_size: usize,
    class_num: usize,
    mats: Vec<wgpu::Buffer>,
    vecs: wgpu::Buffer,
    z_proj: Matrix,
    z_proj_ln: Norm,
    encoder: Vec<BlockLayers>,
    encoder_norm: Norm,
    decoder_embed: Matrix,
    decoder: Vec<BlockLayers>,
    decoder_norm: Norm,
    /// `[class_num + 1, enc]`: the class embeddings, then `fake_latent`.
    class_table: u32,
    encoder_pos: u32,
    mask_token: u32,
    decoder_pos: u32,
    diffusion_pos: u32,
    /// The pipelines a pass runs, compiled for `kernels` (every kernel and weight format the
    /// model needs) with one choice of shared-array sizes.
    pipelines: Mutex<Pipelines>,
    kernels: Vec<Kernel>,
    module: wgpu::ShaderModule,
    pipeline_layout: wgpu::PipelineLayout,
    layout: wgpu::BindGroupLayout,
    workspace: Mutex<Option<Workspace>>,
    uniform_stride: u64,
    weight_bytes: u64,
    dispatches: AtomicU64,
}

impl std::fmt::Debug for FusedTransformer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FusedTransformer")
            .field("enc", &self.enc)
            .field("dec", &self.dec)
            .field("weight_bytes", &self.weight_bytes)
            .finish_non_exhaustive()
    }
}

/// The transformer's pipelines and the shared-array sizes they were compiled for.
struct Pipelines {
    sizes: SharedSizes,
    by_kernel: BTreeMap<Kernel, wgpu::ComputePipeline>,
}

/// One pipeline per kernel of `kernels`, with the shared arrays of `sizes`.
fn compile_kernels(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    layout: &wgpu::PipelineLayout,
    kernels: &[Kernel],
    sizes: SharedSizes,
) -> BTreeMap<Kernel, wgpu::ComputePipeline> {
    kernels
        .iter()
        .map(|&kernel| {
            let (entry, constants) = match kernel {
                Kernel::Linear(format) => (
                    "linear",
                    vec![
                        ("WFMT", format as u32 as f64),
                        ("CH", f64::from(sizes.tile_inputs)),
                    ],
                ),
                Kernel::Attention => ("attention", vec![("KV_VECS", f64::from(sizes.kv_vecs))]),
                Kernel::LayerNorm => ("layer_norm", vec![]),
                Kernel::Gather => ("gather", vec![]),
            };
            (kernel, compile(device, module, layout, entry, &constants))
        })
        .collect()
}

fn gpu_error(what: &str, e: impl std::fmt::Display) -> DisaError {
    DisaError::Device(format!("fused transformer kernels: {what}: {e}"))
}

impl FusedTransformer {
    /// Uploads the transformer's weights (in the form `stored` says the file kept them) and
    /// compiles the kernels.
    pub fn new(
        ctx: Arc<GpuContext>,
        weights: &WeightMap,
        stored: &BTreeMap<String, StoredForm>,
        config: &MarConfig,
    ) -> Result<Self> {
        let (e, d, c, n, b) = (
            config.encoder_embed_dim,
            config.decoder_embed_dim,
            config.token_dim(),
            config.seq_len(),
            config.buffer_size,
        );
        let head_dims = [(e, config.encoder_num_heads), (d, config.decoder_num_heads)];
        let shapes_ok = [e, d, c, config.mlp_hidden(e), config.mlp_hidden(d)]
            .iter()
            .all(|x| x.is_multiple_of(4))
            && head_dims.iter().all(|&(w, h)| {
                h > 0 && w.is_multiple_of(h) && (w / h).is_multiple_of(4) && w / h <= MAX_HEAD_DIM
            });
        if !shapes_ok {
            return Err(gpu_error(
                "unsupported shape",
                format!(
                    "widths {e}/{d} and token dim {c} must be multiples of 4, and attention heads \
                     a multiple of 4 and at most {MAX_HEAD_DIM} wide"
                ),
            ));
        }
        let mut packer = WeightPacker::new(&ctx, 0, "fused transformer kernels");
        let matrix = |p: &mut WeightPacker, name: &str, out: usize, inp: usize| {
            let m = HostMatrix::read(weights, stored, name, out, inp, false)?;
            p.place(&m, true)
        };
        let vector = |p: &mut WeightPacker, key: &str, shape: &[usize]| -> Result<u32> {
            Ok(p.push_vec(&weights.get(key, shape)?.values))
        };
        let norm = |p: &mut WeightPacker, prefix: &str, dim: usize| -> Result<Norm> {
            Ok(Norm {
                w: vector(p, &format!("{prefix}.weight"), &[dim])?,
                b: vector(p, &format!("{prefix}.bias"), &[dim])?,
            })
        };
        let blocks = |p: &mut WeightPacker, prefix: &str, depth: usize, dim: usize, heads| {
            let hidden = config.mlp_hidden(dim);
            (0..depth)
                .map(|i| {
                    let k = format!("{prefix}.{i}");
                    Ok(BlockLayers {
                        norm1: norm(p, &format!("{k}.norm1"), dim)?,
                        qkv: matrix(p, &format!("{k}.attn.qkv"), 3 * dim, dim)?,
                        proj: matrix(p, &format!("{k}.attn.proj"), dim, dim)?,
                        norm2: norm(p, &format!("{k}.norm2"), dim)?,
                        fc1: matrix(p, &format!("{k}.mlp.fc1"), hidden, dim)?,
                        fc2: matrix(p, &format!("{k}.mlp.fc2"), dim, hidden)?,
                        heads,
                    })
                })
                .collect::<Result<Vec<_>>>()
        };
        let encoder = blocks(
            &mut packer,
            "encoder_blocks",
            config.encoder_depth,
            e,
            config.encoder_num_heads,
        )?;
        let decoder = blocks(
            &mut packer,
            "decoder_blocks",
            config.decoder_depth,
            d,
            config.decoder_num_heads,
        )?;
        let z_proj = matrix(&mut packer, "z_proj", e, c)?;
        let decoder_embed = matrix(&mut packer, "decoder_embed", d, e)?;
        let z_proj_ln = norm(&mut packer, "z_proj_ln", e)?;
        let encoder_norm = norm(&mut packer, "encoder_norm", e)?;
        let decoder_norm = norm(&mut packer, "decoder_norm", d)?;
        let class_table = vector(&mut packer, "class_emb.weight", &[config.class_num, e])?;
        vector(&mut packer, "fake_latent", &[1, e])?;
        let encoder_pos = vector(&mut packer, "encoder_pos_embed_learned", &[1, b + n, e])?;
        let mask_token = vector(&mut packer, "mask_token", &[1, 1, d])?;
        let decoder_pos = vector(&mut packer, "decoder_pos_embed_learned", &[1, b + n, d])?;
        let diffusion_pos = vector(&mut packer, "diffusion_pos_embed_learned", &[1, n, d])?;
        packer.check_vecs()?;
        if packer.vecs.len() >= IN_VECS as usize {
            return Err(gpu_error("the vectors are too large", "2³¹ floats or more"));
        }

        let device = &ctx.device;
        #[cfg(not(target_arch = "wasm32"))]
        let scope = device.push_error_scope(wgpu::ErrorFilter::Validation);
        let WeightPacker {
            mat_words, vecs, ..
        } = packer;
        let mats: Vec<wgpu::Buffer> = mat_words
            .iter()
            .map(|w| storage_buffer(&ctx, "disa transformer weights", &words_bytes(w)))
            .collect();
        let vecs_buffer = storage_buffer(&ctx, "disa transformer vectors", &f32_bytes(&vecs));
        let weight_bytes =
            mat_words.iter().map(|w| 4 * w.len() as u64).sum::<u64>() + 4 * vecs.len() as u64;

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
            label: Some("disa transformer"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::COMPUTE,
                    ty: wgpu::BindingType::Buffer {
                        ty: wgpu::BufferBindingType::Uniform,
                        has_dynamic_offset: true,
                        min_binding_size: wgpu::BufferSize::new(PARAMS_BYTES),
                    },
                    count: None,
                },
                storage_entry(1, true),
                storage_entry(2, true),
                storage_entry(3, true),
                storage_entry(4, false),
            ],
        });
        let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("disa transformer"),
            bind_group_layouts: &[Some(&layout)],
            immediate_size: 0,
        });
        let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("shaders/transformer.wgsl"),
            source: wgpu::ShaderSource::Wgsl(format!("{WEIGHTS_WGSL}\n{SHADER}").into()),
        });
        let mut wanted = vec![Kernel::Attention, Kernel::LayerNorm, Kernel::Gather];
        wanted.push(Kernel::Linear(z_proj.format));
        wanted.push(Kernel::Linear(decoder_embed.format));
        for k in encoder.iter().chain(&decoder) {
            for m in [&k.qkv, &k.proj, &k.fc1, &k.fc2] {
                wanted.push(Kernel::Linear(m.format));
            }
        }
        wanted.sort();
        wanted.dedup();
        let sizes =
            SharedSizes::for_browser_software(cfg!(target_arch = "wasm32") && ctx.is_software());
        let pipelines = compile_kernels(device, &module, &pipeline_layout, &wanted, sizes);
        #[cfg(not(target_arch = "wasm32"))]
        if let Some(err) = block_on(&ctx, scope.pop()) {
            return Err(gpu_error("compiling or uploading", err));
        }
        let align = u64::from(device.limits().min_uniform_buffer_offset_alignment).max(1);
        Ok(Self {
            ctx: ctx.clone(),
            enc: e,
            dec: d,
            token_dim: c,
            seq_len: n,
            buffer_size: b,
            class_num: config.class_num,
            mats,
            vecs: vecs_buffer,
            z_proj,
            z_proj_ln,
            encoder,
            encoder_norm,
            decoder_embed,
            decoder,
            decoder_norm,
            class_table,
            encoder_pos,
            mask_token,
            decoder_pos,
            diffusion_pos,
            pipelines: Mutex::new(Pipelines {
                sizes,
                by_kernel: pipelines,
            }),
            kernels: wanted,
            module,
            pipeline_layout,
            layout,
            workspace: Mutex::new(None),
            uniform_stride: PARAMS_BYTES.div_ceil(align) * align,
            weight_bytes,
            dispatches: AtomicU64::new(0),
        })
    }

    /// Runs the kernels with the shared-array sizes a browser uses on a software adapter
    /// (`true`) or with a GPU's (`false`), recompiling them when that changes. Tests: the
    /// page's sizes on a native adapter.
    pub fn use_browser_software_sizes(&self, on: bool) -> Result<()> {
        let sizes = SharedSizes::for_browser_software(on);
        let mut pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
        if pipelines.sizes == sizes {
            return Ok(());
        }
        let by_kernel = compile_checked(&self.ctx, |device| {
            compile_kernels(
                device,
                &self.module,
                &self.pipeline_layout,
                &self.kernels,
                sizes,
            )
        })
        .map_err(|e| gpu_error("compiling", e))?;
        *pipelines = Pipelines { sizes, by_kernel };
        Ok(())
    }

    /// Bytes the transformer's weights take on the GPU (matrices in their stored form, block
    /// scales, biases, embeddings and position tables).
    pub fn weight_bytes(&self) -> u64 {
        self.weight_bytes
    }

    /// Kernel launches of one forward pass (one AR step) with `known` tokens known.
    pub fn dispatches_per_forward(&self, known: usize) -> usize {
        let z_proj = usize::from(known > 0);
        z_proj + 6 + 5 * (self.encoder.len() + self.decoder.len())
    }

    /// Kernel launches recorded so far.
    pub fn dispatches(&self) -> u64 {
        self.dispatches.load(Ordering::Relaxed)
    }

    /// The widest MLP hidden layer and qkv width, for the scratch rows.
    fn scratch_width(&self) -> usize {
        self.encoder
            .iter()
            .chain(&self.decoder)
            .map(|k| (k.fc1.out as usize).max(k.qkv.out as usize))
            .max()
            .unwrap_or(0)
            .max(self.enc.max(self.dec))
    }

    /// Floats of `act` a forward pass over `sequences` sequences with `known` tokens each and
    /// `selected` output rows needs, in the order `submit` lays them out.
    fn layout(&self, sequences: usize, known: usize, selected: usize) -> ActLayout {
        let (s, c, e, d) = (sequences, self.token_dim, self.enc, self.dec);
        let le = self.buffer_size + known;
        let ld = self.buffer_size + self.seq_len;
        let max_rows = s * ld;
        let mut at = 0usize;
        let mut take = |floats: usize| {
            let here = at;
            at += floats;
            here
        };
        let tokens = take(s * known * c);
        let projected = take(s * known * e);
        let x_enc = take(s * le * e);
        let scratch = take(max_rows * self.scratch_width());
        let attended = take(max_rows * e.max(d));
        let x_dec = take(s * ld * d);
        let out = take(selected * d);
        ActLayout {
            tokens,
            projected,
            x_enc,
            scratch,
            attended,
            x_dec,
            out,
            total: at,
        }
    }

    /// Whether a forward pass of this size fits the GPU's binding and grid limits; where not,
    /// the sampler runs Burn's transformer.
    pub fn fits(&self, sequences: usize, known: usize, selected: usize) -> bool {
        let l = self.layout(sequences, known, selected);
        let limits = self.ctx.device.limits();
        let rows = sequences * (self.buffer_size + self.seq_len);
        4 * l.total as u64 <= max_binding(&self.ctx)
            && (rows as u32).div_ceil(ROWS_PER_GROUP) <= limits.max_compute_workgroups_per_dimension
            && sequences as u32 <= limits.max_compute_workgroups_per_dimension
    }

    /// Records and submits one forward pass.
    pub fn submit(&self, job: &TransformerJob<'_>) -> Result<TransformerSubmitted> {
        let (n, c, b, e, d) = (
            self.seq_len,
            self.token_dim,
            self.buffer_size,
            self.enc,
            self.dec,
        );
        let s = job.labels.len();
        if s == 0 || job.mask.len() != s || job.tokens.len() != s * n * c {
            return Err(gpu_error(
                "job shapes",
                "labels, masks and tokens disagree on the number of sequences",
            ));
        }
        if job.mask.iter().any(|m| m.len() != n) {
            return Err(gpu_error("job shapes", "a mask is not one entry per token"));
        }
        let known = job.mask[0].iter().filter(|u| !**u).count();
        if job
            .mask
            .iter()
            .any(|m| m.iter().filter(|u| !**u).count() != known)
        {
            return Err(gpu_error(
                "job shapes",
                "sequences know different token counts",
            ));
        }
        if let Some(bad) = job.select.iter().find(|&&r| r >= s * n) {
            return Err(gpu_error(
                "job shapes",
                format!("selected row {bad} of {}", s * n),
            ));
        }
        if let Some(bad) = job.labels.iter().flatten().find(|&&l| l >= self.class_num) {
            return Err(gpu_error(
                "labels",
                format!("class {bad} of a {}-class model", self.class_num),
            ));
        }
        if !self.fits(s, known, job.select.len()) {
            return Err(gpu_error(
                "too large for this GPU",
                format!("{s} sequences; use --kernels tensor or a smaller batch"),
            ));
        }
        let l = self.layout(s, known, job.select.len());
        let (le, ld) = (b + known, b + n);

        // The known tokens, sequence-major, and the three gather tables.
        let mut tokens = Vec::with_capacity(s * known * c);
        let kept: Vec<Vec<usize>> = job
            .mask
            .iter()
            .map(|m| (0..n).filter(|&p| !m[p]).collect())
            .collect();
        for (i, positions) in kept.iter().enumerate() {
            for &p in positions {
                tokens.extend_from_slice(&job.tokens[(i * n + p) * c..(i * n + p + 1) * c]);
            }
        }
        let vecs_row =
            |base: u32, row: usize, width: usize| IN_VECS | (base + (row * width) as u32);
        let act_row = |base: usize, row: usize, width: usize| (base + row * width) as u32;
        let mut idx: Vec<u32> = Vec::with_capacity(2 * (s * (le + ld) + job.select.len()));
        // Encoder rows: the class embedding in the buffer slots, else the projected token;
        // plus the position embedding of the slot's position.
        let enc_idx = 0u32;
        for (i, label) in job.labels.iter().enumerate() {
            let class_row = label.unwrap_or(self.class_num);
            for slot in 0..le {
                let (source, position) = if slot < b {
                    (vecs_row(self.class_table, class_row, e), slot)
                } else {
                    let j = slot - b;
                    (act_row(l.projected, i * known + j, e), b + kept[i][j])
                };
                idx.extend([source, vecs_row(self.encoder_pos, position, e)]);
            }
        }
        // Decoder rows: the embedded encoder row where the position is kept, else the mask
        // token; plus the decoder position embedding. The embedded rows sit in `attended`.
        let dec_idx = idx.len() as u32;
        for (i, positions) in kept.iter().enumerate() {
            let mut next_kept = 0usize;
            for position in 0..ld {
                let source = if position < b {
                    act_row(l.attended, i * le + position, d)
                } else if next_kept < positions.len() && positions[next_kept] == position - b {
                    next_kept += 1;
                    act_row(l.attended, i * le + b + next_kept - 1, d)
                } else {
                    IN_VECS | self.mask_token
                };
                idx.extend([source, vecs_row(self.decoder_pos, position, d)]);
            }
        }
        // The head's rows: the normalized decoder row of (sequence, position) plus the
        // diffusion position embedding.
        let out_idx = idx.len() as u32;
        for &r in job.select {
            let (i, p) = (r / n, r % n);
            idx.extend([
                act_row(l.x_dec, i * ld + b + p, d),
                vecs_row(self.diffusion_pos, p, d),
            ]);
        }

        let dispatches = self.record(s, known, job.select.len(), &l, [enc_idx, dec_idx, out_idx]);
        let device = &self.ctx.device;
        let queue = &self.ctx.queue;
        let mut guard = self.workspace.lock().unwrap_or_else(|e| e.into_inner());
        let needs_new = guard.as_ref().is_none_or(|ws| {
            ws.act_floats < l.total as u64
                || ws.idx_words < idx.len() as u64
                || ws.param_slots < dispatches.len()
        });
        if needs_new {
            let old = guard.take();
            let grow = |want: u64, had: Option<u64>| want.max(had.unwrap_or(0) * 5 / 4).max(1);
            let act_floats = grow(l.total as u64, old.as_ref().map(|o| o.act_floats))
                .min(max_binding(&self.ctx) / 4)
                .max(l.total as u64);
            let idx_words = grow(idx.len() as u64, old.as_ref().map(|o| o.idx_words));
            *guard = Some(self.workspace_for(act_floats, idx_words, dispatches.len()));
        }
        let ws = guard.as_ref().expect("created above");
        if !tokens.is_empty() {
            queue.write_buffer(&ws.act, 4 * l.tokens as u64, &f32_bytes(&tokens));
        }
        queue.write_buffer(&ws.idx, 0, &words_bytes(&idx));
        let mut param_data = vec![0u8; dispatches.len() * self.uniform_stride as usize];
        for (i, dispatch) in dispatches.iter().enumerate() {
            let at = i * self.uniform_stride as usize;
            param_data[at..at + PARAMS_BYTES as usize].copy_from_slice(&dispatch.params.bytes());
        }
        queue.write_buffer(&ws.params, 0, &param_data);

        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("disa transformer forward"),
        });
        {
            let mut pass = encoder.begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: Some("disa transformer"),
                timestamp_writes: None,
            });
            let pipelines = self.pipelines.lock().unwrap_or_else(|e| e.into_inner());
            for (i, dispatch) in dispatches.iter().enumerate() {
                pass.set_pipeline(&pipelines.by_kernel[&dispatch.kernel]);
                pass.set_bind_group(
                    0,
                    &ws.bind_groups[dispatch.buffer],
                    &[(i as u64 * self.uniform_stride) as u32],
                );
                let [x, y, z] = dispatch.grid;
                pass.dispatch_workgroups(x, y, z);
            }
        }
        let values = job.select.len() * d;
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("disa transformer conditions"),
            size: (4 * values as u64).max(4),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        if values > 0 {
            encoder.copy_buffer_to_buffer(
                &ws.act,
                4 * l.out as u64,
                &staging,
                0,
                4 * values as u64,
            );
        }
        queue.submit([encoder.finish()]);
        self.dispatches
            .fetch_add(dispatches.len() as u64, Ordering::Relaxed);
        Ok(TransformerSubmitted { staging, values })
    }

    /// The dispatches of one forward pass, in order.
    fn record(
        &self,
        s: usize,
        known: usize,
        selected: usize,
        l: &ActLayout,
        [enc_idx, dec_idx, out_idx]: [u32; 3],
    ) -> Vec<Dispatch> {
        let (b, e, d) = (self.buffer_size, self.enc, self.dec);
        let (le, ld) = (b + known, b + self.seq_len);
        let mut out = Vec::new();
        let rows_grid = |rows: usize| {
            let rows = rows as u32;
            [rows.min(GRID_X), rows.div_ceil(GRID_X), 1]
        };
        let linear = |mode: LinearMode,
                      m: &Matrix,
                      rows: usize,
                      a_off: usize,
                      out_off: usize,
                      norm: Option<Norm>| Dispatch {
            kernel: Kernel::Linear(m.format),
            buffer: m.buffer,
            params: Params {
                rows: rows as u32,
                in_dim: m.inp,
                out_dim: m.out,
                w_off: m.w_off,
                scale_off: m.scale_off,
                bias_off: m.bias_off,
                a_off: a_off as u32,
                out_off: out_off as u32,
                ln_w: norm.map_or(0, |n| n.w),
                ln_b: norm.map_or(0, |n| n.b),
                ln_on: u32::from(norm.is_some()),
                mode: mode as u32,
                ..Params::default()
            },
            grid: [
                m.out.div_ceil(THREADS * COLUMNS_PER_THREAD),
                (rows as u32).div_ceil(ROWS_PER_GROUP),
                1,
            ],
        };
        let gather = |rows: usize, width: usize, idx_off: u32, out_off: usize| Dispatch {
            kernel: Kernel::Gather,
            buffer: 0,
            params: Params {
                rows: rows as u32,
                out_dim: width as u32,
                idx_off,
                out_off: out_off as u32,
                ..Params::default()
            },
            grid: rows_grid(rows),
        };
        let layer_norm = |rows: usize, width: usize, norm: Norm, at: usize| Dispatch {
            kernel: Kernel::LayerNorm,
            buffer: 0,
            params: Params {
                rows: rows as u32,
                in_dim: width as u32,
                a_off: at as u32,
                out_off: at as u32,
                ln_w: norm.w,
                ln_b: norm.b,
                ..Params::default()
            },
            grid: rows_grid(rows),
        };
        let blocks =
            |out: &mut Vec<Dispatch>, blocks: &[BlockLayers], x: usize, len: usize, dim| {
                let rows = s * len;
                for k in blocks {
                    let hd = dim / k.heads;
                    out.push(linear(
                        LinearMode::Plain,
                        &k.qkv,
                        rows,
                        x,
                        l.scratch,
                        Some(k.norm1),
                    ));
                    out.push(Dispatch {
                        kernel: Kernel::Attention,
                        buffer: 0,
                        params: Params {
                            a_off: l.scratch as u32,
                            out_off: l.attended as u32,
                            seq_len: len as u32,
                            heads: k.heads as u32,
                            head_dim: hd as u32,
                            scale: (hd as f32).powf(-0.5),
                            ..Params::default()
                        },
                        grid: [(len as u32).div_ceil(THREADS), k.heads as u32, s as u32],
                    });
                    out.push(linear(
                        LinearMode::Residual,
                        &k.proj,
                        rows,
                        l.attended,
                        x,
                        None,
                    ));
                    out.push(linear(
                        LinearMode::Gelu,
                        &k.fc1,
                        rows,
                        x,
                        l.scratch,
                        Some(k.norm2),
                    ));
                    out.push(linear(
                        LinearMode::Residual,
                        &k.fc2,
                        rows,
                        l.scratch,
                        x,
                        None,
                    ));
                }
            };
        if known > 0 {
            out.push(linear(
                LinearMode::Plain,
                &self.z_proj,
                s * known,
                l.tokens,
                l.projected,
                None,
            ));
        }
        out.push(gather(s * le, e, enc_idx, l.x_enc));
        out.push(layer_norm(s * le, e, self.z_proj_ln, l.x_enc));
        blocks(&mut out, &self.encoder, l.x_enc, le, e);
        out.push(linear(
            LinearMode::Plain,
            &self.decoder_embed,
            s * le,
            l.x_enc,
            l.attended,
            Some(self.encoder_norm),
        ));
        out.push(gather(s * ld, d, dec_idx, l.x_dec));
        blocks(&mut out, &self.decoder, l.x_dec, ld, d);
        out.push(layer_norm(s * ld, d, self.decoder_norm, l.x_dec));
        if selected > 0 {
            out.push(gather(selected, d, out_idx, l.out));
        }
        out
    }

    fn workspace_for(&self, act_floats: u64, idx_words: u64, slots: usize) -> Workspace {
        let device = &self.ctx.device;
        let buffer = |label, size, usage| {
            device.create_buffer(&wgpu::BufferDescriptor {
                label: Some(label),
                size,
                usage,
                mapped_at_creation: false,
            })
        };
        use wgpu::BufferUsages as U;
        let act = buffer(
            "disa transformer activations",
            4 * act_floats,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
        );
        let idx = buffer(
            "disa transformer gathers",
            4 * idx_words,
            U::STORAGE | U::COPY_DST,
        );
        let params = buffer(
            "disa transformer params",
            slots as u64 * self.uniform_stride,
            U::UNIFORM | U::COPY_DST,
        );
        let bind_groups = self
            .mats
            .iter()
            .map(|mat| {
                device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("disa transformer"),
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
                            resource: idx.as_entire_binding(),
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
            idx,
            idx_words,
            params,
            param_slots: slots,
            bind_groups,
        }
    }

    /// Waits for a submitted pass and reads the selected condition rows (`[rows, dec]`),
    /// blocking (native).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn read(&self, submitted: TransformerSubmitted) -> Result<Vec<f32>> {
        block_on(&self.ctx, self.read_async(submitted))
    }

    /// Synchronous read-backs are impossible in the browser: use [`Self::read_async`].
    #[cfg(target_arch = "wasm32")]
    pub fn read(&self, _submitted: TransformerSubmitted) -> Result<Vec<f32>> {
        Err(gpu_error(
            "reading results back",
            "use the async read in the browser",
        ))
    }

    /// Waits for a submitted pass and reads the selected condition rows (`[rows, dec]`).
    pub async fn read_async(&self, submitted: TransformerSubmitted) -> Result<Vec<f32>> {
        read_mapped(&self.ctx, &submitted.staging, |view| {
            view[..4 * submitted.values]
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        })
        .await
        .map_err(|e| gpu_error("reading results back", e))
    }
}

/// Where each activation of a forward pass sits in `act`, in floats.
struct ActLayout {
    /// Known tokens, `[S·known, C]`.
    tokens: usize,
    /// `z_proj` of the known tokens, `[S·known, enc]`.
    projected: usize,
    /// The encoder's residual stream, `[S·(buffer + known), enc]`.
    x_enc: usize,
    /// qkv rows or the MLP's hidden rows, `[S·(buffer + N), max(3·width, hidden)]`.
    scratch: usize,
    /// Attention output, and the decoder-embedded encoder rows, `[S·(buffer + N), width]`.
    attended: usize,
    /// The decoder's residual stream, `[S·(buffer + N), dec]`.
    x_dec: usize,
    /// The head's condition rows, `[selected, dec]`.
    out: usize,
    total: usize,
}
