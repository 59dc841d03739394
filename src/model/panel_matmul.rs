//! The host path's matmul for the browser's CPU fallback: `c += a·B` with `B`'s columns packed
//! in panels of eight, four rows of `a` per tile, the products summed over `k` in order.
//!
//! Why not `gemm` there: its simd128 kernel (12×4, packing both operands on every call) ran at
//! about 11.5 GMAC/s in V8 on this project's shapes, where this tile runs at about 15 (1.3×;
//! a throwaway wasm bench in node over the transformer's and the head's shapes, recorded in the
//! README's *CPU speed*). Natively `gemm`'s AVX2/AVX-512 FMA kernels stay: they are faster there.
//!
//! Each output element is `c + a[i][0]·B[0][j] + a[i][1]·B[1][j] + …` in that order, one multiply
//! and one add each, whatever the tile: a row's values never depend on which rows come with it.
//!
//! The loops are written once over four-lane vectors ([`lanes`]): wasm's `v128` where the build
//! has simd128, plain `[f32; 4]` elsewhere (so native tests run the same tiling).

/// Whether the host path's matmuls run here rather than through `gemm`: in builds with wasm's
/// simd128 (the page's CPU fallback).
pub const PREFERRED: bool = cfg!(all(target_arch = "wasm32", target_feature = "simd128"));

/// Columns per panel: two four-lane vectors.
pub const PANEL: usize = 8;
/// Rows of `a` per tile: 4 rows × 2 vectors = 8 accumulators, within the 16 vector registers
/// V8 has on x86-64 and ARM64 with the panel's two vectors and a broadcast beside them.
const TILE_ROWS: usize = 4;

/// `B [k, n]` in panels: `[⌈n/8⌉, k, 8]`, the last panel's missing columns zero.
#[derive(Clone, Debug, Default)]
pub struct Panels {
    values: Vec<f32>,
    k: usize,
    n: usize,
}

impl Panels {
    /// Panels of `B`, whose element `(p, j)` is `b[p·row_stride + j·col_stride]`: a row-major
    /// matrix has `(row_stride, col_stride) = (n, 1)`, the transpose of one `(1, k)`.
    ///
    /// # Panics
    /// When `b` is too short for those strides.
    pub fn pack(b: &[f32], k: usize, n: usize, row_stride: usize, col_stride: usize) -> Self {
        let mut panels = Self::default();
        panels.repack(b, k, n, row_stride, col_stride);
        panels
    }

    /// [`Panels::pack`] into this allocation (the attention packs each head's keys and values).
    pub fn repack(&mut self, b: &[f32], k: usize, n: usize, row_stride: usize, col_stride: usize) {
        if k > 0 && n > 0 {
            let last = (k - 1) * row_stride + (n - 1) * col_stride;
            assert!(last < b.len(), "Panels::pack: B [{k}, {n}] out of range");
        }
        let count = n.div_ceil(PANEL);
        self.values.clear();
        self.values.resize(count * k * PANEL, 0.0);
        for (panel, out) in self.values.chunks_exact_mut((k * PANEL).max(1)).enumerate() {
            let j0 = panel * PANEL;
            let width = PANEL.min(n - j0);
            for (p, row) in out.chunks_exact_mut(PANEL).enumerate() {
                for (j, v) in row[..width].iter_mut().enumerate() {
                    *v = b[p * row_stride + (j0 + j) * col_stride];
                }
            }
        }
        (self.k, self.n) = (k, n);
    }
}

/// `c[i][j] += Σₚ a[i][p]·B[p][j]` for `m` rows: `a [m, k]` at row stride `lda`, `c [m, n]` at
/// row stride `ldc` (columns `0..n` of each row; the rest of a row is left alone).
///
/// # Panics
/// When `a` or `c` is too short for `m` rows at their strides.
pub fn matmul_add(a: &[f32], lda: usize, m: usize, b: &Panels, c: &mut [f32], ldc: usize) {
    let (k, n) = (b.k, b.n);
    if m == 0 || n == 0 {
        return;
    }
    assert!(
        lda >= k && ldc >= n && a.len() >= (m - 1) * lda + k && c.len() >= (m - 1) * ldc + n,
        "matmul_add: a [{m}, {k}] or c [{m}, {n}] out of range"
    );
    for (panel, values) in b.values.chunks_exact((k * PANEL).max(1)).enumerate() {
        let j0 = panel * PANEL;
        let width = PANEL.min(n - j0);
        let mut i = 0;
        while i < m {
            let rows = TILE_ROWS.min(m - i);
            let a_rows = &a[i * lda..];
            let c_rows = &mut c[i * ldc + j0..];
            // A full panel's tile writes straight into `c`; the last, narrower one goes through
            // a full-width copy of its rows.
            let full = width == PANEL;
            let mut tmp = [0.0f32; TILE_ROWS * PANEL];
            if !full {
                for r in 0..rows {
                    tmp[r * PANEL..r * PANEL + width]
                        .copy_from_slice(&c_rows[r * ldc..r * ldc + width]);
                }
            }
            let (dst, ld) = if full {
                (c_rows.as_mut_ptr(), ldc)
            } else {
                (tmp.as_mut_ptr(), PANEL)
            };
            // SAFETY: `a_rows` holds `rows` rows of `k` at stride `lda`, `values` is `[k, 8]`
            // (both checked above); `dst` holds `rows` rows of 8 writable floats at stride
            // `ld`: `c`'s, for a full panel (checked above), else `tmp`'s.
            unsafe {
                match rows {
                    4 => tile::<4>(k, a_rows, lda, values, dst, ld),
                    3 => tile::<3>(k, a_rows, lda, values, dst, ld),
                    2 => tile::<2>(k, a_rows, lda, values, dst, ld),
                    _ => tile::<1>(k, a_rows, lda, values, dst, ld),
                }
            }
            if !full {
                for r in 0..rows {
                    c_rows[r * ldc..r * ldc + width]
                        .copy_from_slice(&tmp[r * PANEL..r * PANEL + width]);
                }
            }
            i += rows;
        }
    }
}

/// One tile: `R` rows × 8 columns of `c`, accumulated over all `k` in order.
///
/// In the `relaxed-simd` wasm build it is compiled for relaxed SIMD (not inlined into the
/// caller, which is not: one call per tile, each a loop over all of `k`).
///
/// # Safety
/// `a` holds `R` rows of `k` at stride `lda`; `panel` is `[k, 8]`; `c` points at `R` rows of 8
/// writable floats at stride `ldc`.
#[cfg_attr(
    not(all(
        target_arch = "wasm32",
        target_feature = "simd128",
        feature = "relaxed-simd"
    )),
    inline(always)
)]
#[cfg_attr(
    all(
        target_arch = "wasm32",
        target_feature = "simd128",
        feature = "relaxed-simd"
    ),
    inline,
    target_feature(enable = "relaxed-simd")
)]
unsafe fn tile<const R: usize>(
    k: usize,
    a: &[f32],
    lda: usize,
    panel: &[f32],
    c: *mut f32,
    ldc: usize,
) {
    use lanes::*;
    debug_assert!(panel.len() >= k * PANEL && (R == 0 || a.len() >= (R - 1) * lda + k));
    unsafe {
        let mut acc = [[zero(); 2]; R];
        for (r, acc) in acc.iter_mut().enumerate() {
            acc[0] = load(c.add(r * ldc));
            acc[1] = load(c.add(r * ldc + 4));
        }
        let (a, mut b) = (a.as_ptr(), panel.as_ptr());
        for p in 0..k {
            let (b0, b1) = (load(b), load(b.add(4)));
            for (r, acc) in acc.iter_mut().enumerate() {
                let x = splat(a.add(r * lda + p));
                acc[0] = mul_add(acc[0], x, b0);
                acc[1] = mul_add(acc[1], x, b1);
            }
            b = b.add(PANEL);
        }
        for (r, acc) in acc.iter().enumerate() {
            store(c.add(r * ldc), acc[0]);
            store(c.add(r * ldc + 4), acc[1]);
        }
    }
}

/// Four-lane vectors: wasm simd128.
#[cfg(all(target_arch = "wasm32", target_feature = "simd128"))]
mod lanes {
    use core::arch::wasm32::*;
    pub type F32x4 = v128;

    #[inline(always)]
    pub fn zero() -> F32x4 {
        f32x4_splat(0.0)
    }
    /// # Safety
    /// Four readable floats at `p` (any alignment: wasm's loads take a hint only).
    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> F32x4 {
        unsafe { v128_load(p as *const v128) }
    }
    /// # Safety
    /// Four writable floats at `p`.
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: F32x4) {
        unsafe { v128_store(p as *mut v128, v) }
    }
    /// # Safety
    /// A readable float at `p`.
    #[inline(always)]
    pub unsafe fn splat(p: *const f32) -> F32x4 {
        unsafe { v128_load32_splat(p as *const u32) }
    }
    /// `acc + x·b`, rounded twice (no fused multiply-add in plain simd128).
    #[cfg(not(feature = "relaxed-simd"))]
    #[inline(always)]
    pub fn mul_add(acc: F32x4, x: F32x4, b: F32x4) -> F32x4 {
        f32x4_add(acc, f32x4_mul(x, b))
    }
    /// `acc + x·b` by relaxed SIMD's multiply-add: fused (rounded once) where the CPU has
    /// FMA, as on x86-64 with FMA3 and on ARM64, else rounded twice.
    #[cfg(feature = "relaxed-simd")]
    #[inline]
    #[target_feature(enable = "relaxed-simd")]
    pub fn mul_add(acc: F32x4, x: F32x4, b: F32x4) -> F32x4 {
        f32x4_relaxed_madd(x, b, acc)
    }
}

/// Four-lane vectors as arrays: the same arithmetic, for builds without wasm's simd128.
#[cfg(not(all(target_arch = "wasm32", target_feature = "simd128")))]
mod lanes {
    pub type F32x4 = [f32; 4];

    #[inline(always)]
    pub fn zero() -> F32x4 {
        [0.0; 4]
    }
    /// # Safety
    /// Four readable floats at `p`.
    #[inline(always)]
    pub unsafe fn load(p: *const f32) -> F32x4 {
        unsafe { (p as *const F32x4).read_unaligned() }
    }
    /// # Safety
    /// Four writable floats at `p`.
    #[inline(always)]
    pub unsafe fn store(p: *mut f32, v: F32x4) {
        unsafe { (p as *mut F32x4).write_unaligned(v) }
    }
    /// # Safety
    /// A readable float at `p`.
    #[inline(always)]
    pub unsafe fn splat(p: *const f32) -> F32x4 {
        unsafe { [*p; 4] }
    }
    /// `acc + x·b`, rounded twice, as in the simd128 build.
    #[inline(always)]
    pub fn mul_add(acc: F32x4, x: F32x4, b: F32x4) -> F32x4 {
        std::array::from_fn(|l| acc[l] + x[l] * b[l])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len)
            .map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0)
            .collect()
    }

    /// Every size class: rows below, at and above a tile, columns below, at and off a panel,
    /// and strided operands, against the sum in f64.
    #[test]
    fn matches_the_definition() {
        for (m, n, k) in [
            (1, 8, 5),
            (3, 3, 7),
            (4, 16, 33),
            (9, 21, 16),
            (13, 8, 1),
            (6, 40, 0),
        ] {
            let (lda, ldc) = (k + 3, n + 5);
            let a = values(m * lda, 1);
            let b = values(k * n, 2);
            let c0 = values(m * ldc, 3);
            for transposed in [false, true] {
                // B stored row-major, or as its transpose [n, k] read column-wise.
                let (stored, rs, cs) = if transposed {
                    let t: Vec<f32> = (0..n * k).map(|x| b[(x % k) * n + x / k]).collect();
                    (t, 1, k)
                } else {
                    (b.clone(), n, 1)
                };
                let panels = Panels::pack(&stored, k, n, rs, cs);
                let mut c = c0.clone();
                matmul_add(&a, lda, m, &panels, &mut c, ldc);
                for i in 0..m {
                    for j in 0..ldc {
                        let want = if j < n {
                            c0[i * ldc + j] as f64
                                + (0..k)
                                    .map(|p| a[i * lda + p] as f64 * b[p * n + j] as f64)
                                    .sum::<f64>()
                        } else {
                            c0[i * ldc + j] as f64 // beyond n: untouched
                        };
                        let got = c[i * ldc + j] as f64;
                        assert!(
                            (got - want).abs() < 1e-5 * (1.0 + k as f64),
                            "m {m} n {n} k {k} transposed {transposed}: ({i}, {j}) {got} vs {want}"
                        );
                    }
                }
            }
        }
    }

    /// A row's values are bit-for-bit the same alone, in a full tile or in a remainder tile.
    #[test]
    fn rows_do_not_depend_on_their_neighbours() {
        let (n, k) = (20, 37);
        let panels = Panels::pack(&values(k * n, 4), k, n, n, 1);
        let a = values(7 * k, 5);
        let mut all = vec![0.5f32; 7 * n];
        matmul_add(&a, k, 7, &panels, &mut all, n);
        for i in 0..7 {
            let mut alone = vec![0.5f32; n];
            matmul_add(&a[i * k..(i + 1) * k], k, 1, &panels, &mut alone, n);
            assert_eq!(alone, all[i * n..(i + 1) * n], "row {i}");
        }
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn short_operands_are_refused() {
        let panels = Panels::pack(&values(6, 0), 2, 3, 3, 1);
        let mut c = vec![0.0; 5];
        matmul_add(&values(4, 0), 2, 2, &panels, &mut c, 3);
    }
}
