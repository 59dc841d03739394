//! What the fused kernels share: weight matrices in their GPU form ([`HostMatrix`],
//! [`Matrix`], packed into binding-sized buffers by [`WeightPacker`]), pipeline compilation and
//! the read-back of a staging buffer.

use super::registry::GpuContext;
use crate::error::{DisaError, Result};
use crate::weights::quant::{BLOCK, Bits};
use crate::weights::{StoredForm, WeightMap};
use burn::tensor::wgpu::wgpu;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// `shaders/weights.wgsl`: the bindings-agnostic weight reader (`load_quad`) every kernel
/// source starts with.
pub(super) const WEIGHTS_WGSL: &str = include_str!("../../shaders/weights.wgsl");

/// How a matrix sits in the `mat` buffer (the shader's `FMT_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum Format {
    F32 = 0,
    F16 = 1,
    Int8 = 2,
    Int4 = 3,
}

impl Format {
    /// The format's name as `disa bench` and the page print it.
    pub(super) fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }
}

/// One weight matrix `[out, in]` in its GPU form, before upload.
pub(super) struct HostMatrix {
    pub(super) format: Format,
    pub(super) out: usize,
    pub(super) inp: usize,
    pub(super) words: Vec<u32>,
    /// One per 32 inputs for int8/int4, row-major.
    pub(super) scales: Vec<f32>,
    pub(super) bias: Vec<f32>,
}

impl HostMatrix {
    /// `prefix.weight` (`[out, in]`) and `prefix.bias` in the form the file stored them.
    pub(super) fn read(
        w: &WeightMap,
        stored: &BTreeMap<String, StoredForm>,
        prefix: &str,
        out: usize,
        inp: usize,
        force_f32: bool,
    ) -> Result<Self> {
        let key = format!("{prefix}.weight");
        let weight = w.get(&key, &[out, inp])?;
        let bias = w.get(&format!("{prefix}.bias"), &[out])?.values.clone();
        let (format, words, scales) = match stored.get(&key) {
            _ if force_f32 => (Format::F32, f32_words(&weight.values), vec![]),
            Some(StoredForm::Quantized { bits, bytes }) => {
                let numel = out * inp;
                let value_bytes = bits.stored_len(numel) - 4 * numel / BLOCK;
                let (values, scale_bytes) = bytes.split_at(value_bytes);
                let format = match bits {
                    Bits::Int8 => Format::Int8,
                    Bits::Int4 => Format::Int4,
                };
                let scales = scale_bytes
                    .chunks_exact(4)
                    .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                    .collect();
                (format, le_words(values), scales)
            }
            Some(StoredForm::F16) if inp.is_multiple_of(2) => {
                let halves: Vec<u8> = weight
                    .values
                    .iter()
                    .flat_map(|&v| half::f16::from_f32(v).to_le_bytes())
                    .collect();
                (Format::F16, le_words(&halves), vec![])
            }
            _ => (Format::F32, f32_words(&weight.values), vec![]),
        };
        Ok(Self {
            format,
            out,
            inp,
            words,
            scales,
            bias,
        })
    }

    /// Stacks matrices of one format and width along the output dimension.
    pub(super) fn stack(parts: Vec<HostMatrix>) -> HostMatrix {
        let mut it = parts.into_iter();
        let mut first = it.next().expect("at least one matrix");
        for m in it {
            first.out += m.out;
            first.words.extend(m.words);
            first.scales.extend(m.scales);
            first.bias.extend(m.bias);
        }
        first
    }

    pub(super) fn bytes(&self) -> u64 {
        4 * (self.words.len() + self.scales.len()) as u64
    }

    /// The words and scales input-major, as the kernels read them (`load_quad` in the shader):
    /// the words holding a unit of consecutive inputs of one output (4 inputs: 4 f32 words,
    /// 2 f16 words or 1 int8 word; 8 inputs: 1 int4 word) at `[(unit·out + o)·g + k]`, and the
    /// block scales at `[(i/32)·out + o]`. Exact: only the order changes.
    pub(super) fn input_major(&self) -> (Vec<u32>, Vec<f32>) {
        let (out, inp) = (self.out, self.inp);
        let per_word = match self.format {
            Format::F32 => 1,
            Format::F16 => 2,
            Format::Int8 => 4,
            Format::Int4 => 8,
        };
        let words_per_row = inp / per_word;
        let group = match self.format {
            Format::F32 => 4,
            Format::F16 => 2,
            Format::Int8 | Format::Int4 => 1,
        };
        let units = words_per_row / group;
        let mut words = vec![0u32; self.words.len()];
        for o in 0..out {
            for u in 0..units {
                for k in 0..group {
                    words[(u * out + o) * group + k] =
                        self.words[o * words_per_row + u * group + k];
                }
            }
        }
        let blocks = if self.scales.is_empty() {
            0
        } else {
            inp / BLOCK
        };
        let mut scales = vec![0f32; self.scales.len()];
        for o in 0..out {
            for b in 0..blocks {
                scales[b * out + o] = self.scales[o * blocks + b];
            }
        }
        (words, scales)
    }
}

pub(super) fn f32_words(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

pub(super) fn le_words(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks(4)
        .map(|c| {
            let mut b = [0u8; 4];
            b[..c.len()].copy_from_slice(c);
            u32::from_le_bytes(b)
        })
        .collect()
}

/// Where an uploaded matrix lives.
#[derive(Clone, Copy, Debug)]
pub(super) struct Matrix {
    pub(super) buffer: usize,
    pub(super) format: Format,
    pub(super) w_off: u32,
    pub(super) scale_off: u32,
    pub(super) bias_off: u32,
    pub(super) out: u32,
    pub(super) inp: u32,
}

/// Runs `compile` (pipeline creation) on the device and returns its result, or natively the
/// validation error it raised, as text (the browser reports such errors on its console).
pub(super) fn compile_checked<T>(
    ctx: &GpuContext,
    compile: impl FnOnce(&wgpu::Device) -> T,
) -> std::result::Result<T, String> {
    #[cfg(not(target_arch = "wasm32"))]
    let scope = ctx.device.push_error_scope(wgpu::ErrorFilter::Validation);
    let compiled = compile(&ctx.device);
    #[cfg(not(target_arch = "wasm32"))]
    if let Some(e) = block_on(ctx, scope.pop()) {
        return Err(e.to_string());
    }
    Ok(compiled)
}

/// Compiles entry point `entry` of a kernel module with its override constants.
pub(super) fn compile(
    device: &wgpu::Device,
    module: &wgpu::ShaderModule,
    layout: &wgpu::PipelineLayout,
    entry: &str,
    constants: &[(&str, f64)],
) -> wgpu::ComputePipeline {
    device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
        label: Some(entry),
        layout: Some(layout),
        module,
        entry_point: Some(entry),
        compilation_options: wgpu::PipelineCompilationOptions {
            constants,
            // Every workgroup variable is written before it is read. (Natively only: browsers
            // zero-initialize workgroup memory whatever this says, which is why the kernels'
            // shared arrays are sized to the model and, on a software adapter, kept small.)
            zero_initialize_workgroup_memory: false,
        },
        cache: None,
    })
}

pub(super) fn words_bytes(words: &[u32]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

#[derive(Default)]
pub(super) struct MapState {
    pub(super) result: Option<std::result::Result<(), String>>,
    pub(super) waker: Option<std::task::Waker>,
}

/// Resolves when a buffer's `map_async` callback has run.
pub(super) struct MapFuture {
    pub(super) state: Arc<Mutex<MapState>>,
}

impl std::future::Future for MapFuture {
    type Output = std::result::Result<(), String>;
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match s.result.take() {
            Some(r) => std::task::Poll::Ready(r),
            None => {
                s.waker = Some(cx.waker().clone());
                std::task::Poll::Pending
            }
        }
    }
}

/// Drives a future whose progress comes from polling the device (native wgpu resolves map
/// and error-scope futures inside `Device::poll`).
#[cfg(not(target_arch = "wasm32"))]
pub(super) fn block_on<F: std::future::Future>(ctx: &GpuContext, fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    loop {
        if let std::task::Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
        let _ = ctx.device.poll(wgpu::PollType::wait_indefinitely());
        std::thread::yield_now();
    }
}

/// Packs weight matrices into `mat` buffers of at most one binding each and their block scales,
/// biases and other vectors into one `vecs` array.
pub(super) struct WeightPacker {
    pub(super) mat_words: Vec<Vec<u32>>,
    pub(super) vecs: Vec<f32>,
    max_binding: u64,
    what: &'static str,
}

impl WeightPacker {
    /// `vecs` starts with `reserved` floats (filled later, e.g. the head's time table).
    pub(super) fn new(ctx: &GpuContext, reserved: usize, what: &'static str) -> Self {
        Self {
            mat_words: Vec::new(),
            vecs: vec![0.0; reserved],
            max_binding: max_binding(ctx),
            what,
        }
    }

    /// Places `m`, input-major (as `load_quad` reads it) or as stored, in the last `mat`
    /// buffer where it fits, else in a new one.
    pub(super) fn place(&mut self, m: &HostMatrix, input_major: bool) -> Result<Matrix> {
        let (words, scales) = if input_major {
            m.input_major()
        } else {
            (m.words.clone(), m.scales.clone())
        };
        let bytes = 4 * m.words.len() as u64;
        if bytes > self.max_binding {
            return Err(DisaError::Device(format!(
                "{}: a weight matrix is too large: {bytes} bytes; this GPU binds at most {}",
                self.what, self.max_binding
            )));
        }
        let fits = self
            .mat_words
            .last()
            .is_some_and(|w| 4 * (w.len() as u64) + bytes <= self.max_binding);
        if !fits {
            self.mat_words.push(Vec::new());
        }
        let buffer = self.mat_words.len() - 1;
        let buffer_words = self.mat_words.last_mut().expect("pushed");
        let w_off = buffer_words.len() as u32;
        buffer_words.extend_from_slice(&words);
        let scale_off = self.push_vec(&scales);
        let bias_off = self.push_vec(&m.bias);
        Ok(Matrix {
            buffer,
            format: m.format,
            w_off,
            scale_off,
            bias_off,
            out: m.out as u32,
            inp: m.inp as u32,
        })
    }

    /// Appends `v` to `vecs`; returns its offset.
    pub(super) fn push_vec(&mut self, v: &[f32]) -> u32 {
        let at = self.vecs.len() as u32;
        self.vecs.extend_from_slice(v);
        at
    }

    /// Checks that `vecs` fits one binding.
    pub(super) fn check_vecs(&self) -> Result<()> {
        let bytes = 4 * self.vecs.len() as u64;
        if bytes > self.max_binding {
            return Err(DisaError::Device(format!(
                "{}: the vectors are too large: {bytes} bytes; this GPU binds at most {}",
                self.what, self.max_binding
            )));
        }
        Ok(())
    }
}

/// The largest storage buffer this device binds.
pub(super) fn max_binding(ctx: &GpuContext) -> u64 {
    let limits = ctx.device.limits();
    limits
        .max_storage_buffer_binding_size
        .min(limits.max_buffer_size)
}

/// A storage buffer holding `contents`.
pub(super) fn storage_buffer(ctx: &GpuContext, label: &str, contents: &[u8]) -> wgpu::Buffer {
    use wgpu::util::DeviceExt;
    ctx.device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some(label),
            contents,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_DST,
        })
}

/// Little-endian bytes of f32 values.
pub(super) fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Maps a submitted staging buffer for reading, waits for it, and hands its bytes to `f`.
pub(super) async fn read_mapped<T>(
    ctx: &GpuContext,
    staging: &wgpu::Buffer,
    f: impl FnOnce(&[u8]) -> T,
) -> std::result::Result<T, String> {
    let state = Arc::new(Mutex::new(MapState::default()));
    let signal = state.clone();
    staging
        .slice(..)
        .map_async(wgpu::MapMode::Read, move |result| {
            let mut s = signal.lock().unwrap_or_else(|e| e.into_inner());
            s.result = Some(result.map_err(|e| e.to_string()));
            if let Some(w) = s.waker.take() {
                w.wake();
            }
        });
    #[cfg(not(target_arch = "wasm32"))]
    ctx.device
        .poll(wgpu::PollType::wait_indefinitely())
        .map_err(|e| format!("waiting for the GPU: {e}"))?;
    #[cfg(target_arch = "wasm32")]
    let _ = ctx;
    MapFuture { state }.await?;
    let out = {
        let view = staging
            .slice(..)
            .get_mapped_range()
            .map_err(|e| e.to_string())?;
        f(&view)
    };
    staging.unmap();
    Ok(out)
}
