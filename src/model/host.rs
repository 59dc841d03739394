//! Kernels the plain CPU backend runs on the host, on a tensor's own values: branch-free math
//! the compiler vectorizes (GELU's `erf`, SiLU's and softmax's exponential) and multi-head
//! attention straight from the `qkv` rows. flex's versions call scalar libm (`erf`, `expf`)
//! per element and copy `q`, `k`, `v` into head-major layouts first.
//!
//! The builds target baseline CPUs (x86-64 with SSE2, wasm with simd128); on x86-64 the loops
//! are also compiled for AVX2 and chosen at run time ([`map_in_place`], [`attention`]).

use super::layers::{LN_EPS, LayerNorm};
use super::panel_matmul::{self, Panels};
use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::module::Param;
use burn::nn::Linear;
use burn::tensor::{DType, Tensor, TensorData};
use std::ops::{Deref, Range};

/// `a ← f(a)` for every value, in SIMD lanes: `f` is branch-free and inlined, so the loop
/// vectorizes. On x86-64 with AVX2 (checked at run time; the build itself targets baseline
/// x86-64, SSE2) it runs 8 lanes wide; elsewhere at the build's own width (wasm's simd128,
/// NEON, SSE2). Same operations, same order: the lanes change nothing in the results.
pub fn map_in_place(values: &mut [f32], f: impl Fn(f32) -> f32) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above).
        unsafe { map_in_place_avx2(values, f) };
        return;
    }
    values.iter_mut().for_each(|a| *a = f(*a));
}

/// [`map_in_place`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn map_in_place_avx2(values: &mut [f32], f: impl Fn(f32) -> f32) {
    values.iter_mut().for_each(|a| *a = f(*a));
}

/// SiLU, `a·σ(a)`, with σ(a) = 1/(1 + e^−a) for a ≥ 0 and e^a/(1 + e^a) below: e^−|a| never
/// overflows. Inlined into the loops over tensors, which then vectorize.
#[inline(always)]
pub fn silu(a: f32) -> f32 {
    let e = exp_nonpositive(-a.abs());
    let numerator = if a >= 0.0 { 1.0 } else { e };
    a * (numerator / (1.0 + e))
}

/// Exact-erf GELU, `a·(1 + erf(a/√2))/2`. Inlined into the loops over tensors.
#[inline(always)]
pub fn gelu(a: f32) -> f32 {
    0.5 * a * (1.0 + erf(a * std::f32::consts::FRAC_1_SQRT_2))
}

/// `erf(x)` by Abramowitz & Stegun 7.1.26: |error| ≤ 1.5·10⁻⁷, below f32 rounding of GELU's
/// output scale. Inlined into the loops over tensors, which then vectorize.
#[inline(always)]
pub fn erf(x: f32) -> f32 {
    let a = x.abs();
    let t = 1.0 / (1.0 + 0.327_591_1 * a);
    let poly = ((((1.061_405_4 * t - 1.453_152) * t + 1.421_413_7) * t - 0.284_496_74) * t
        + 0.254_829_6)
        * t;
    (1.0 - poly * exp_nonpositive(-a * a)).copysign(x)
}

/// `eˣ` for `x ≤ 0` (all `erf` needs), within about 1 ulp: Cody–Waite reduction by ln 2 and
/// Cephes' `expf` polynomial. Branch-free, so the loop over a tensor vectorizes, where libm's
/// `expf` is a scalar call per element.
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    // Below −87 the result is under f32's smallest normal; erf's term is 0 long before. A
    // compare and select, not `f32::max`: in wasm that is a libm call per lane (its NaN rule
    // differs from wasm's `f32x4.max`), which kept the loops from vectorizing.
    let x = if x < -87.0 { -87.0 } else { x };
    // Round to nearest (even) by the 1.5·2²³ trick: vectorizes, unlike `f32::round`. The sum
    // has ulp 1, so its bits minus ROUND's are k as an integer (an `as i32` would saturate,
    // which does not vectorize).
    const ROUND: f32 = 12_582_912.0;
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let k = shifted - ROUND;
    let k_int = (shifted.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = x - k * 0.693_359_4 - k * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 0.166_666_65)
        * r
        + 0.5;
    let e = p * r * r + r + 1.0;
    e * f32::from_bits((k_int.wrapping_add(127) as u32) << 23)
}

/// Multi-head attention on the host: per sequence and head, `softmax(q·scale·kᵀ)·v` (timm's
/// order: the query is scaled first).
///
/// # Shapes
/// `qkv`: `[B·L, 3·D]` row-major, each row `q | k | v` with head `h` at columns `h·hd..` of
/// each third (timm's `qkv` linear output), `D = width`; `queries`: the rows whose outputs are
/// wanted, sequence-major, the same count in each of the `sequences` sequences →
/// `[queries, D]`, heads side by side as timm's `transpose(1, 2).reshape` lays them out.
pub fn attention(qkv: &[f32], width: usize, shape: AttentionShape, queries: &[usize]) -> Vec<f32> {
    if panel_matmul::PREFERRED {
        return attention_in_panels(qkv, width, shape, queries);
    }
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: this CPU has AVX2 (checked just above).
        return unsafe { attention_avx2(qkv, width, shape, queries) };
    }
    attention_body(qkv, width, shape, queries)
}

/// How [`attention`] splits its rows and columns.
#[derive(Clone, Copy, Debug)]
pub struct AttentionShape {
    /// Sequences of equal length among the rows.
    pub sequences: usize,
    /// Heads among the `D` columns of each third.
    pub heads: usize,
    /// Score scale, `hd^−½`.
    pub scale: f32,
}

/// [`attention`] compiled for AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn attention_avx2(qkv: &[f32], width: usize, shape: AttentionShape, queries: &[usize]) -> Vec<f32> {
    attention_body(qkv, width, shape, queries)
}

/// [`attention`]'s loops: per sequence and head, the scores and the weighted sum are two
/// `gemm` calls reading `k` and `v` in place (strided views of the `qkv` rows), with the
/// softmax between them a vectorizable loop per row.
#[inline(always)]
fn attention_body(qkv: &[f32], d: usize, shape: AttentionShape, queries: &[usize]) -> Vec<f32> {
    let AttentionShape {
        sequences,
        heads,
        scale,
    } = shape;
    let mut out = vec![0.0f32; queries.len() * d];
    let Some(AttentionSizes { l, s, hd }) = AttentionSizes::of(qkv, d, shape, queries) else {
        return out;
    };
    let mut q = vec![0.0f32; s * hd]; // one head's queries, [S, hd]
    let mut p = vec![0.0f32; s * l]; // their scores, then weights, [S, L]
    for seq in 0..sequences {
        let first = seq * l;
        let wanted = &queries[seq * s..(seq + 1) * s];
        for h in 0..heads {
            for (qi, &r) in q.chunks_exact_mut(hd).zip(wanted) {
                let at = r * 3 * d + h * hd;
                qi.copy_from_slice(&qkv[at..at + hd]);
            }
            // SAFETY (both calls): every pointer and stride stays inside its slice: `q`
            // [S, hd] and `p` [S, L] are dense; k and v are `[L, hd]` views of this
            // sequence's rows of `qkv` (row stride 3D, checked above); `out`'s rows of this
            // sequence are [S, D] with the head at column h·hd. Nothing aliases `p` or `out`.
            unsafe {
                // p = scale · q·kᵀ: kᵀ's element (c, j) is k[j][c], at column stride 3D.
                gemm::gemm(
                    s,
                    l,
                    hd,
                    p.as_mut_ptr(),
                    1,
                    l as isize,
                    false,
                    q.as_ptr(),
                    1,
                    hd as isize,
                    qkv.as_ptr().add(first * 3 * d + d + h * hd),
                    (3 * d) as isize,
                    1,
                    0.0f32,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            softmax_rows(&mut p, l);
            unsafe {
                // out[:, h·hd..] = p·v
                gemm::gemm(
                    s,
                    hd,
                    l,
                    out.as_mut_ptr().add(seq * s * d + h * hd),
                    1,
                    d as isize,
                    false,
                    p.as_ptr(),
                    1,
                    l as isize,
                    qkv.as_ptr().add(first * 3 * d + 2 * d + h * hd),
                    1,
                    (3 * d) as isize,
                    0.0f32,
                    1.0f32,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
        }
    }
    out
}

/// [`attention`]'s sizes, shared by its two routes.
struct AttentionSizes {
    /// Keys per sequence.
    l: usize,
    /// Queries per sequence.
    s: usize,
    /// Columns per head.
    hd: usize,
}

impl AttentionSizes {
    /// `None` where there is nothing to compute.
    ///
    /// # Panics
    /// When `qkv` is short of `sequences` equal sequences or a query is out of range.
    fn of(qkv: &[f32], d: usize, shape: AttentionShape, queries: &[usize]) -> Option<Self> {
        let AttentionShape {
            sequences, heads, ..
        } = shape;
        if d == 0 || sequences == 0 || heads == 0 || queries.is_empty() {
            return None;
        }
        let l = qkv.len() / (3 * d) / sequences;
        assert!(
            qkv.len() >= sequences * l * 3 * d && queries.iter().all(|&r| r < sequences * l),
            "attention: qkv rows and queries out of range"
        );
        Some(Self {
            l,
            s: queries.len() / sequences,
            hd: d / heads,
        })
    }
}

/// Softmax of each `l`-wide row of `p`, in place.
#[inline(always)]
fn softmax_rows(p: &mut [f32], l: usize) {
    for row in p.chunks_exact_mut(l) {
        // A compare, not `f32::max` (a libm call in wasm); NaNs are skipped either way.
        let max = row
            .iter()
            .fold(f32::NEG_INFINITY, |m, &v| if v > m { v } else { m });
        row.iter_mut().for_each(|v| *v = exp_nonpositive(*v - max));
        let inv_sum = 1.0 / row.iter().sum::<f32>();
        row.iter_mut().for_each(|v| *v *= inv_sum);
    }
}

/// [`attention`] with [`panel_matmul`]'s matmuls (the page's CPU fallback): per sequence and
/// head, `kᵀ` and `v` packed into panels, the query scaled first as timm does.
fn attention_in_panels(
    qkv: &[f32],
    d: usize,
    shape: AttentionShape,
    queries: &[usize],
) -> Vec<f32> {
    let AttentionShape {
        sequences,
        heads,
        scale,
    } = shape;
    let mut out = vec![0.0f32; queries.len() * d];
    let Some(AttentionSizes { l, s, hd }) = AttentionSizes::of(qkv, d, shape, queries) else {
        return out;
    };
    let mut q = vec![0.0f32; s * hd]; // one head's queries, scaled, [S, hd]
    let mut p = vec![0.0f32; s * l]; // their scores, then weights, [S, L]
    let (mut keys, mut values) = (Panels::default(), Panels::default());
    for seq in 0..sequences {
        let rows = &qkv[seq * l * 3 * d..(seq + 1) * l * 3 * d];
        let wanted = &queries[seq * s..(seq + 1) * s];
        let out_rows = &mut out[seq * s * d..(seq + 1) * s * d];
        for h in 0..heads {
            for (qi, &r) in q.chunks_exact_mut(hd).zip(wanted) {
                let at = r * 3 * d + h * hd;
                for (qi, &v) in qi.iter_mut().zip(&qkv[at..at + hd]) {
                    *qi = v * scale;
                }
            }
            // kᵀ [hd, L]: element (c, j) is key j's column c.
            keys.repack(&rows[d + h * hd..], hd, l, 1, 3 * d);
            p.fill(0.0);
            panel_matmul::matmul_add(&q, hd, s, &keys, &mut p, l);
            softmax_rows(&mut p, l);
            // out[:, h·hd..] = p·v, v [L, hd] the sequence's rows at stride 3D.
            values.repack(&rows[2 * d + h * hd..], l, hd, 3 * d, 1);
            panel_matmul::matmul_add(&p, l, s, &values, &mut out_rows[h * hd..], d);
        }
    }
    out
}

/// A tensor's f32 values, read where the Burn tensor keeps them: flex stores a tensor's bytes
/// behind a reference count and copies before writing to shared storage, so the host kernels
/// read the model's own weights and cost no second copy of them. Values that are not a plain
/// f32 flex tensor (another backend or dtype, a strided view) are copied once instead.
#[derive(Clone)]
pub struct SharedValues {
    storage: FlexTensor,
    /// The tensor's values within `storage`, in elements.
    range: Range<usize>,
}

impl SharedValues {
    /// `t`'s values in row-major order, shared with `t` where it is a contiguous f32 flex
    /// tensor.
    pub fn of<const D: usize>(t: Tensor<D>) -> Self {
        if let Ok(p) = t.clone().try_into_primitive::<Flex>()
            && p.dtype() == DType::F32
            && let Some((start, end)) = p.layout().contiguous_offsets()
        {
            return Self {
                storage: p,
                range: start..end,
            };
        }
        Self::from_vec(values(t))
    }

    /// An optional parameter's values (a bias), or `n` zeros where there is none.
    fn of_or_zeros(param: Option<&Param<Tensor<1>>>, n: usize) -> Self {
        param.map_or_else(|| Self::from_vec(vec![0.0; n]), |p| Self::of(p.val()))
    }

    /// Owned values.
    pub fn from_vec(values: Vec<f32>) -> Self {
        let n = values.len();
        Self {
            storage: FlexTensor::from_data(TensorData::new(values, [n])),
            range: 0..n,
        }
    }

    /// Whether these values are `t`'s own storage (not a copy).
    #[cfg(test)]
    fn is_shared_with<const D: usize>(&self, t: Tensor<D>) -> bool {
        t.try_into_primitive::<Flex>()
            .is_ok_and(|p| std::ptr::eq(p.bytes().as_ptr(), self.storage.bytes().as_ptr()))
    }
}

impl Deref for SharedValues {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // f32 by construction (`of` checks the dtype, `from_vec` makes it).
        &self.storage.storage::<f32>()[self.range.clone()]
    }
}

impl std::fmt::Debug for SharedValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SharedValues({} floats)", self.len())
    }
}

/// A LayerNorm's affine parameters on the host (zeros where it has no bias).
#[derive(Debug)]
pub struct HostLayerNorm {
    /// `[W]`.
    pub weight: SharedValues,
    /// `[W]`.
    pub bias: SharedValues,
}

impl HostLayerNorm {
    pub fn new(n: &LayerNorm) -> Self {
        let weight = SharedValues::of(n.weight.val());
        let bias = SharedValues::of_or_zeros(n.bias.as_ref(), weight.len());
        Self { weight, bias }
    }

    /// LayerNorm (eps 1e-6) of each `W`-wide row of `x` into `out` (resized).
    pub fn forward(&self, x: &[f32], out: &mut Vec<f32>) {
        let (weight, bias) = (&*self.weight, &*self.bias);
        let w = weight.len();
        out.clear();
        out.resize(x.len(), 0.0);
        for (x, o) in x.chunks_exact(w).zip(out.chunks_exact_mut(w)) {
            let (mean, inv) = norm_stats(x);
            for (((o, &x), &g), &b) in o.iter_mut().zip(x).zip(weight).zip(bias) {
                *o = (x - mean) * inv * g + b;
            }
        }
    }
}

/// A row's mean and `1/sqrt(var + 1e-6)` (LayerNorm's eps), the sums in lanes.
#[inline(always)]
pub fn norm_stats(x: &[f32]) -> (f32, f32) {
    let w = x.len() as f32;
    let mean = sum_in_lanes(x, |v| v) / w;
    let var = sum_in_lanes(x, |v| (v - mean) * (v - mean)) / w;
    (mean, 1.0 / (var + LN_EPS as f32).sqrt())
}

/// A linear layer's weights on the host (shared with the model's, see [`SharedValues`]).
#[derive(Debug)]
pub struct HostLinear {
    /// `[in, out]` row-major (Burn's `Linear` layout).
    pub weight: SharedValues,
    /// `[out]` (zeros where the layer has no bias).
    pub bias: SharedValues,
    pub inputs: usize,
    pub outputs: usize,
    /// `weight` packed for [`panel_matmul`], where the build prefers it (a copy: the page's
    /// CPU fallback only).
    panels: Option<Panels>,
}

impl HostLinear {
    pub fn new(linear: &Linear) -> Self {
        let [inputs, outputs] = linear.weight.dims();
        let weight = SharedValues::of(linear.weight.val());
        let panels =
            panel_matmul::PREFERRED.then(|| Panels::pack(&weight, inputs, outputs, outputs, 1));
        Self {
            weight,
            bias: SharedValues::of_or_zeros(linear.bias.as_ref(), outputs),
            inputs,
            outputs,
            panels,
        }
    }

    /// `out = x·W + b` for `rows` rows: `x [rows, in]` → `out [rows, out]` (resized).
    ///
    /// Each row's values do not depend on how many rows come with it, except that `gemm` takes
    /// a different path for a single row (a matrix-vector product, summing in another order):
    /// a lone row runs as two, so a token gives the same values whether the generation, a
    /// thread's part of it or the teaching view's replay computes it. The panels have no such
    /// path.
    pub fn forward(&self, x: &[f32], rows: usize, out: &mut Vec<f32>) {
        if rows == 1 && self.panels.is_none() {
            let twice = [&x[..self.inputs], &x[..self.inputs]].concat();
            self.forward(&twice, 2, out);
            out.truncate(self.outputs);
            return;
        }
        out.clear();
        for _ in 0..rows {
            out.extend_from_slice(&self.bias);
        }
        if rows == 0 || self.inputs == 0 || self.outputs == 0 {
            return;
        }
        if let Some(panels) = &self.panels {
            panel_matmul::matmul_add(x, self.inputs, rows, panels, out, self.outputs);
            return;
        }
        // SAFETY: `out` is `[rows, outputs]`, `x` is at least `[rows, inputs]` and `weight`
        // `[inputs, outputs]`, all row-major with the strides given; none alias.
        unsafe {
            gemm::gemm(
                rows,
                self.outputs,
                self.inputs,
                out.as_mut_ptr(),
                1,
                self.outputs as isize,
                true,
                x.as_ptr(),
                1,
                self.inputs as isize,
                self.weight.as_ptr(),
                1,
                self.outputs as isize,
                1.0f32,
                1.0f32,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    }
}

/// `Σ f(v)` over `x` in 8 running sums: vectorizes, where one running sum (a strict
/// left-to-right order) does not.
#[inline(always)]
pub fn sum_in_lanes(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0.0f32; 8];
    let chunks = x.chunks_exact(8);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A tensor's f32 values.
pub fn values<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attention by the definition, in f64: `softmax(q·kᵀ·scale)·v` per sequence and head.
    fn attention_f64(qkv: &[f32], d: usize, shape: AttentionShape, queries: &[usize]) -> Vec<f64> {
        let (l, hd) = (qkv.len() / (3 * d) / shape.sequences, d / shape.heads);
        let per = queries.len() / shape.sequences;
        let at = |r: usize, c: usize| qkv[r * 3 * d + c] as f64;
        let mut out = vec![0.0; queries.len() * d];
        for (i, &r) in queries.iter().enumerate() {
            let first = (i / per) * l;
            for h in 0..shape.heads {
                let s: Vec<f64> = (0..l)
                    .map(|j| {
                        (0..hd)
                            .map(|c| at(r, h * hd + c) * at(first + j, d + h * hd + c))
                            .sum::<f64>()
                            * shape.scale as f64
                    })
                    .collect();
                let m = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let e: Vec<f64> = s.iter().map(|v| (v - m).exp()).collect();
                let z: f64 = e.iter().sum();
                for c in 0..hd {
                    out[i * d + h * hd + c] = (0..l)
                        .map(|j| e[j] / z * at(first + j, 2 * d + h * hd + c))
                        .sum();
                }
            }
        }
        out
    }

    #[test]
    fn attention_matches_the_definition() {
        // 3 sequences of 7 rows, 4 heads of 5 columns (odd sizes: no lane-sized shortcuts).
        let (sequences, l, heads, hd) = (3, 7, 4, 5);
        let d = heads * hd;
        let qkv: Vec<f32> = (0..sequences * l * 3 * d)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * 2.0)
            .collect();
        let shape = AttentionShape {
            sequences,
            heads,
            scale: (hd as f32).powf(-0.5),
        };
        let all: Vec<usize> = (0..sequences * l).collect();
        // Two query rows per sequence, not in row order within the sequence's block.
        let some = vec![3, 0, 7 + 6, 7 + 2, 14 + 1, 14 + 5];
        for queries in [&all, &some] {
            // Both matmul routes: `gemm` (native builds) and the panels (the page's).
            let want = attention_f64(&qkv, d, shape, queries);
            for got in [
                attention(&qkv, d, shape, queries),
                attention_in_panels(&qkv, d, shape, queries),
            ] {
                assert_eq!(got.len(), queries.len() * d);
                let worst = got
                    .iter()
                    .zip(&want)
                    .fold(0f64, |m, (&g, &w)| m.max((g as f64 - w).abs()));
                assert!(worst < 1e-5, "max |Δ| {worst:e}");
            }
        }
        assert!(attention(&qkv, d, shape, &[]).is_empty());
        assert!(attention_in_panels(&qkv, d, shape, &[]).is_empty());
    }

    #[test]
    fn exp_nonpositive_matches_libm() {
        let mut worst = 0f32;
        for i in 0..=200_000 {
            let x = -(i as f32) * 87.0 / 200_000.0;
            let (got, want) = (exp_nonpositive(x), x.exp());
            worst = worst.max((got - want).abs() / want);
        }
        assert!(worst < 5e-7, "worst relative error {worst:e}");
        assert_eq!(exp_nonpositive(-1000.0), exp_nonpositive(-87.0));
        assert_eq!(exp_nonpositive(0.0), 1.0);
    }

    #[test]
    fn erf_matches_reference_values() {
        // erf at a few points (from tables), and odd symmetry.
        for (x, e) in [
            (0.0f32, 0.0f32),
            (0.1, 0.112_462_92),
            (0.5, 0.520_499_9),
            (1.0, 0.842_700_8),
            (2.0, 0.995_322_3),
            (3.5, 0.999_999_3),
        ] {
            assert!((erf(x) - e).abs() < 3e-7, "erf({x}) = {} vs {e}", erf(x));
            assert!((erf(-x) + e).abs() < 3e-7);
        }
    }

    /// A linear layer gives the same rows through `gemm` and through the panels, for a lone
    /// row and for several.
    #[test]
    fn linear_rows_agree_between_gemm_and_panels() {
        use burn::nn::LinearConfig;
        let device = burn::tensor::Device::flex();
        let linear = LinearConfig::new(13, 21).init(&device);
        let mut by_gemm = HostLinear::new(&linear);
        by_gemm.panels = None;
        let mut by_panels = HostLinear::new(&linear);
        by_panels.panels = Some(Panels::pack(&by_gemm.weight, 13, 21, 21, 1));
        let x: Vec<f32> = (0..5 * 13).map(|i| (i % 11) as f32 / 5.0 - 1.0).collect();
        for rows in [1, 5] {
            let (mut a, mut b) = (Vec::new(), Vec::new());
            by_gemm.forward(&x, rows, &mut a);
            by_panels.forward(&x, rows, &mut b);
            assert_eq!(a.len(), rows * 21);
            assert_eq!(b.len(), rows * 21);
            let worst = a
                .iter()
                .zip(&b)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(worst < 1e-5, "{rows} rows: max |Δ| {worst:e}");
        }
    }

    /// A flex tensor's values are read in place; a strided view is copied, with the same values
    /// in row-major order.
    #[test]
    fn shared_values_borrow_flex_storage_and_copy_otherwise() {
        let device = burn::tensor::Device::flex();
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        let t = Tensor::<2>::from_data(TensorData::new(data.clone(), [3, 4]), &device);
        let shared = SharedValues::of(t.clone());
        assert!(shared.is_shared_with(t.clone()));
        assert_eq!(&*shared, data.as_slice());

        let transposed = t.clone().transpose();
        let copied = SharedValues::of(transposed.clone());
        assert!(!copied.is_shared_with(t.clone()));
        assert_eq!(&*copied, values(transposed).as_slice());
        assert_eq!(copied[1], data[4]);

        // On the autodiff device (it comes with training, a default feature) the values are
        // the same, read in place or not.
        #[cfg(feature = "train")]
        {
            let tracked = t.clone().to_device(&device.clone().autodiff());
            assert_eq!(&*SharedValues::of(tracked), data.as_slice());
        }
    }
}
