// The diffusion head's sampling loop (`SimpleMLPAdaLN` + `p_sample` of the official
// `models/diffloss.py` / `diffusion/gaussian_diffusion.py`) as a few fused kernels.
//
// One AR step runs as a single recording on the host side (src/gpu/head.rs):
//
//   cond_embed            (gemm, MODE_PLAIN)   cond = z · W_cᵀ + b                   once
//   input_init            (input_init)         h = x_T · W_ipᵀ + b                   once
//   per diffusion step:
//     ada                 (gemm, MODE_ADA)     every adaLN modulation at once:
//                                              [shift|scale|gate]ⱼ, [shift|scale]_final
//                                              = y · W_adaᵀ + b, y = silu(cond + temb[t])
//     per residual block: (gemm, MODE_MLP_IN)  u = silu(mod(LN(h)) · W_inᵀ + b)
//                         (gemm, MODE_MLP_OUT) h += gate ⊙ (u · W_outᵀ + b)
//     final_step          (final_step)         out = mod(LN(h)) · W_flᵀ + b, CFG, p_sample,
//                                              and the next step's h = x · W_ipᵀ + b and y
//
// so a head call is 2·depth + 2 dispatches, with no host round trip inside an AR step.
//
// Small heads (width ≤ 256, weights in one buffer) take `token_loop` instead: one workgroup per
// token runs the condition embedding, the input projection and every diffusion step of the AR
// step for the token's rows (the token and, with CFG, its unconditional copy), keeping h, y,
// the MLP activations and the condition in shared memory. Tokens are independent in the
// head, so no workgroup waits for another: one dispatch per AR step.
// y = silu(cond + temb[t]) is made once per row and call (at the end of the previous call),
// not once per output column.
//
// Buffers: `mat` holds weight matrices in PyTorch's [out, in] layout in one of four formats
// (f32; f16 pairs; int8 or int4 with one f32 scale per 32 inputs, Burn's Q8F/Q4F blocks,
// dequantized here in registers as q·scale, exactly as Burn dequantizes); `vecs` holds f32
// vectors (biases, LayerNorm weights, block scales, the time-embedding table); `act` holds
// every activation of the AR step. Offsets come from `p` (per dispatch) and `st` (per
// diffusion step), both uniform blocks bound with dynamic offsets.

struct Params {
    rows: u32,        // activation rows R (2n with CFG, else n)
    in_dim: u32,
    out_dim: u32,
    width: u32,       // head width W
    w_off: u32,       // matrix: word offset in `mat`
    scale_off: u32,   // matrix: block scales in `vecs` (int8/int4)
    bias_off: u32,    // bias in `vecs`
    a_off: u32,       // input rows in `act` (row stride in_dim)
    out_off: u32,     // output rows in `act`
    out_stride: u32,
    col_base: u32,    // first output column (an `ada` segment's place in the modulation rows)
    temb_off: u32,    // time-embedding table [1000, W] in `vecs`
    ln_w: u32,        // affine LayerNorm weight / bias in `vecs`
    ln_b: u32,
    mod_off: u32,     // this layer's modulation [shift|scale|gate] in `act`
    mod_stride: u32,  // row stride of the modulation rows
    fl_w_off: u32,    // final linear [2C, W]
    fl_scale_off: u32,
    fl_bias: u32,
    tok_dim: u32,     // C
    ip_w_off: u32,    // input projection [W, C], always f32
    ip_bias: u32,
    x_off: u32,       // x [n, C] in `act`
    h_off: u32,       // h [R, W] in `act`
    n_tok: u32,       // tokens n
    cfg_on: u32,      // 1: rows n..2n are the unconditional copies
    y_off: u32,       // y = silu(cond + temb[t]) [R, W] in `act`
    cond_off: u32,    // cond [R, W] in `act`
    depth: u32,       // token_loop: residual blocks
    steps: u32,       // token_loop: diffusion steps of this AR step
    table_off: u32,   // token_loop: the layer table in `mat` (see `table`)
    steps_off: u32,   // token_loop: the step table in `act` (see `step_f32`)
}

struct Step {
    t: u32,           // original timestep (row of the time table)
    add_noise: u32,   // 0 at the last step
    noise_off: u32,   // this step's noise [n, C] in `act`
    next_t: u32,      // the next step's timestep (y for the next call is made at the end of this one)
    sqrt_recip: f32,  // sqrt(1/ᾱ_t)
    sqrt_recipm1: f32,// sqrt(1/ᾱ_t − 1)
    coef1: f32,       // posterior mean coefficients
    coef2: f32,
    min_log: f32,     // log β̃_t (clipped)
    max_log: f32,     // log β_t
    cfg: f32,         // guidance scale
    temperature: f32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<uniform> st: Step;
@group(0) @binding(2) var<storage, read> mat: array<u32>;
@group(0) @binding(3) var<storage, read> vecs: array<f32>;
@group(0) @binding(4) var<storage, read_write> act: array<f32>;

// Weight format of the matrix a pipeline reads (`FMT_*` in weights.wgsl).
override WFMT: u32 = 0u;

// What a `gemm` dispatch computes around its matrix product.
const MODE_PLAIN: u32 = 0u;   // out = a·Wᵀ + b
const MODE_ADA: u32 = 1u;     // a = silu(cond + temb[t])
const MODE_MLP_IN: u32 = 2u;  // a = LN(h)·(1 + scale) + shift, out = silu(·)
const MODE_MLP_OUT: u32 = 3u; // h += gate ⊙ (a·Wᵀ + b)
override MODE: u32 = 0u;

const LN_EPS: f32 = 1e-6;
const WG: u32 = 64u;      // gemm threads per workgroup: one output column each
const RT: u32 = 8u;       // activation rows per workgroup
const CH: u32 = 256u;     // inputs per shared-memory tile of the left operand
const MAXW: u32 = 1536u;  // widest head the final kernel holds in shared memory (MAR-H)

var<workgroup> tile: array<f32, 2048>;      // gemm: the left operand's RT × CH tile
var<workgroup> red: array<vec2<f32>, 256>;  // final kernel: workgroup-wide sums of two rows
var<workgroup> stats: array<vec2<f32>, 8>;  // per row: mean, 1/sqrt(var + eps)
var<workgroup> rowbuf: array<f32, 3072>;    // final kernel: 2 modulated rows of ≤ MAXW
// The token size C the next two arrays hold, at most 64: the host sets it to C for token_loop
// (a browser zero-initializes every workgroup array, and a software adapter compiles that
// into code as long as the array, so token_loop's arrays are sized to the model).
// (Array lengths name an override: naga 30 cannot size an array by an override expression.)
override TLC: u32 = 64u;
override OUTS_LEN: u32 = 4u * TLC;
var<workgroup> outs: array<f32, OUTS_LEN>;  // final kernel and token_loop: [rows][2C]
var<workgroup> xs: array<f32, TLC>;         // final kernel and token_loop: the token's new x

fn silu(x: f32) -> f32 {
    return x / (1.0 + exp(-x));
}

fn act4(b: u32) -> vec4<f32> {
    return vec4<f32>(act[b], act[b + 1u], act[b + 2u], act[b + 3u]);
}

// The matrix product's left operand a[r, i], with this MODE's prologue (`y` is precomputed
// for MODE_ADA, so it reads like MODE_PLAIN).
fn a_value(r: u32, local_r: u32, i: u32) -> f32 {
    let raw = act[p.a_off + r * p.in_dim + i];
    if MODE == MODE_MLP_IN {
        let s = stats[local_r];
        let m = p.mod_off + r * p.mod_stride + i;
        let ln = (raw - s.x) * s.y * vecs[p.ln_w + i] + vecs[p.ln_b + i];
        return ln * (act[m + p.width] + 1.0) + act[m];
    }
    return raw;
}

// Sums two values over the whole workgroup (256 threads).
fn block_sum2(lid: u32, v: vec2<f32>) -> vec2<f32> {
    workgroupBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s = s >> 1u) {
        if lid < s {
            red[lid] += red[lid + s];
        }
        workgroupBarrier();
    }
    return red[0];
}

fn tile4(r: u32, i: u32) -> vec4<f32> {
    let t = r * CH + i;
    return vec4<f32>(tile[t], tile[t + 1u], tile[t + 2u], tile[t + 3u]);
}

// Writes out[row, col_base + o] = epilogue(v + b[o]).
fn emit(row: u32, o: u32, acc: f32) {
    let v = acc + vecs[p.bias_off + o];
    let dst = p.out_off + row * p.out_stride + p.col_base + o;
    if MODE == MODE_MLP_IN {
        act[dst] = silu(v);
    } else if MODE == MODE_MLP_OUT {
        let gate = act[p.mod_off + row * p.mod_stride + 2u * p.width + o];
        act[dst] = act[dst] + gate * v;
    } else {
        act[dst] = v;
    }
}

// out[r, col_base + o] for rows r0..r0+RT: one thread per output column o runs its whole dot
// product for all RT rows (no cross-thread reduction). The left operand is staged in shared
// memory one tile of CH inputs at a time, its prologue computed once per workgroup, and read
// at the same address by every thread; the weights are read input-major, so neighbouring
// threads read neighbouring words.
@compute @workgroup_size(64)
fn gemm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let o = wg.x * WG + lid;
    let r0 = wg.y * RT;
    let nrows = min(RT, p.rows - r0);

    if MODE == MODE_MLP_IN {
        // LayerNorm statistics, two passes as PyTorch: thread r handles row r0 + r.
        if lid < nrows {
            let b = p.a_off + (r0 + lid) * p.in_dim;
            var sum = 0.0;
            for (var i = 0u; i < p.in_dim; i++) {
                sum += act[b + i];
            }
            let mean = sum / f32(p.in_dim);
            var sq = 0.0;
            for (var i = 0u; i < p.in_dim; i++) {
                let d = act[b + i] - mean;
                sq += d * d;
            }
            stats[lid] = vec2<f32>(mean, 1.0 / sqrt(sq / f32(p.in_dim) + LN_EPS));
        }
    }

    var a0 = 0.0;
    var a1 = 0.0;
    var a2 = 0.0;
    var a3 = 0.0;
    var a4 = 0.0;
    var a5 = 0.0;
    var a6 = 0.0;
    var a7 = 0.0;
    for (var base = 0u; base < p.in_dim; base += CH) {
        let len = min(CH, p.in_dim - base);
        workgroupBarrier();
        for (var k = lid; k < RT * len; k += WG) {
            let r = k / len;
            let i = k % len;
            var a = 0.0;
            if r < nrows {
                a = a_value(r0 + r, r, base + i);
            }
            tile[r * CH + i] = a;
        }
        workgroupBarrier();
        if o < p.out_dim {
            for (var i = 0u; i < len; i += 4u) {
                let w = load_quad(WFMT, p.w_off, p.scale_off, p.out_dim, base + i, o);
                a0 += dot(tile4(0u, i), w);
                a1 += dot(tile4(1u, i), w);
                a2 += dot(tile4(2u, i), w);
                a3 += dot(tile4(3u, i), w);
                a4 += dot(tile4(4u, i), w);
                a5 += dot(tile4(5u, i), w);
                a6 += dot(tile4(6u, i), w);
                a7 += dot(tile4(7u, i), w);
            }
        }
    }
    if o < p.out_dim {
        emit(r0, o, a0);
        if nrows > 1u { emit(r0 + 1u, o, a1); }
        if nrows > 2u { emit(r0 + 2u, o, a2); }
        if nrows > 3u { emit(r0 + 3u, o, a3); }
        if nrows > 4u { emit(r0 + 4u, o, a4); }
        if nrows > 5u { emit(r0 + 5u, o, a5); }
        if nrows > 6u { emit(r0 + 6u, o, a6); }
        if nrows > 7u { emit(r0 + 7u, o, a7); }
    }
}

// h[tok] (and h[n + tok] with CFG) = xs · W_ipᵀ + b, for the token's new x in `xs`.
fn input_projection(lid: u32, tok: u32) {
    let w = p.width;
    let cdim = p.tok_dim;
    for (var i = lid; i < w; i += 256u) {
        var v = 0.0;
        for (var k = 0u; k < cdim; k++) {
            v += xs[k] * bitcast<f32>(mat[p.ip_w_off + i * cdim + k]);
        }
        v += vecs[p.ip_bias + i];
        act[p.h_off + tok * w + i] = v;
        if p.cfg_on == 1u {
            act[p.h_off + (p.n_tok + tok) * w + i] = v;
        }
    }
}

// y = silu(cond + temb[t]) for the token's rows: the adaLN input of the head call at `t`.
fn time_condition(lid: u32, tok: u32, t: u32) {
    let w = p.width;
    let nr = select(1u, 2u, p.cfg_on == 1u);
    for (var j = 0u; j < nr; j++) {
        let r = tok + j * p.n_tok;
        for (var i = lid; i < w; i += 256u) {
            act[p.y_off + r * w + i] = silu(act[p.cond_off + r * w + i] + vecs[p.temb_off + t * w + i]);
        }
    }
}

// Start of an AR step: h from the initial noise x_T, and y for the first head call. One
// workgroup per token.
@compute @workgroup_size(256)
fn input_init(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tok = wg.x;
    if lid < p.tok_dim {
        xs[lid] = act[p.x_off + tok * p.tok_dim + lid];
    }
    workgroupBarrier();
    input_projection(lid, tok);
    time_condition(lid, tok, st.t);
}

// End of a diffusion step, one workgroup per token: the final adaLN layer and linear for the
// token's rows, the CFG combination, `p_sample`, and the next step's input projection.
@compute @workgroup_size(256)
fn final_step(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tok = wg.x;
    let w = p.width;
    let cdim = p.tok_dim;
    let nr = select(1u, 2u, p.cfg_on == 1u);

    // Modulated LayerNorm (no affine) of the token's rows into shared memory; both rows'
    // statistics in one pass of sums each.
    let r0 = tok;
    let r1 = tok + p.n_tok;
    var sum = vec2<f32>(0.0);
    for (var i = lid; i < w; i += 256u) {
        sum.x += act[p.h_off + r0 * w + i];
        if nr == 2u {
            sum.y += act[p.h_off + r1 * w + i];
        }
    }
    let mean = block_sum2(lid, sum) / f32(w);
    var sq = vec2<f32>(0.0);
    for (var i = lid; i < w; i += 256u) {
        let d0 = act[p.h_off + r0 * w + i] - mean.x;
        sq.x += d0 * d0;
        if nr == 2u {
            let d1 = act[p.h_off + r1 * w + i] - mean.y;
            sq.y += d1 * d1;
        }
    }
    let rstd = vec2<f32>(1.0) / sqrt(block_sum2(lid, sq) / f32(w) + vec2<f32>(LN_EPS));
    for (var j = 0u; j < nr; j++) {
        let r = tok + j * p.n_tok;
        for (var i = lid; i < w; i += 256u) {
            let m = p.mod_off + r * p.mod_stride + i;
            let ln = (act[p.h_off + r * w + i] - mean[j]) * rstd[j];
            rowbuf[j * w + i] = ln * (act[m + w] + 1.0) + act[m];
        }
    }
    workgroupBarrier();

    // out[j, o] = rowbuf[j] · W_fl[o] + b.
    let nout = 2u * cdim;
    for (var k = lid; k < nr * nout; k += 256u) {
        let j = k / nout;
        let o = k % nout;
        var acc = 0.0;
        for (var i = 0u; i < w; i += 4u) {
            let a = vec4<f32>(rowbuf[j * w + i], rowbuf[j * w + i + 1u], rowbuf[j * w + i + 2u],
                              rowbuf[j * w + i + 3u]);
            acc += dot(a, load_quad(WFMT, p.fl_w_off, p.fl_scale_off, nout, i, o));
        }
        outs[k] = acc + vecs[p.fl_bias + o];
    }
    workgroupBarrier();

    // Guidance on ε only, then p_sample in the official operation order.
    if lid < cdim {
        let xi = p.x_off + tok * cdim + lid;
        let x = act[xi];
        var eps = outs[lid];
        if p.cfg_on == 1u {
            let eps_u = outs[nout + lid];
            eps = eps_u + (eps - eps_u) * st.cfg;
        }
        let frac = (outs[cdim + lid] + 1.0) / 2.0;
        let log_var = frac * st.max_log + (1.0 - frac) * st.min_log;
        let pred_x0 = x * st.sqrt_recip - eps * st.sqrt_recipm1;
        var x_new = pred_x0 * st.coef1 + x * st.coef2;
        if st.add_noise == 1u {
            x_new = x_new + exp(log_var * 0.5) * act[st.noise_off + tok * cdim + lid] * st.temperature;
        }
        act[xi] = x_new;
        xs[lid] = x_new;
    }
    workgroupBarrier();
    input_projection(lid, tok);
    time_condition(lid, tok, st.next_t);
}

// ───────────────────────────── token_loop: small heads ─────────────────────────────

// token_loop threads per workgroup, set per adapter by the host (src/gpu/head.rs): 256 on a
// GPU; 64 on a software adapter (lavapipe, SwiftShader), which runs a workgroup's invocations
// as a loop on one CPU core, so threads beyond the work only add lanes to schedule at every
// barrier. At least the token size (p_sample gives each value a thread).
override TL: u32 = 256u;
// The weight format every matrix of the layer table shares (`FMT_*`), set by the host when
// they all share one, so each dot product compiles for that format alone; FMT_MIXED: read
// each matrix's format from its table entry at run time. With ROWS below, this settles every
// branch on a per-launch value when compiling: a software adapter pays for such a branch as
// for a divergent one (SwiftShader ran the head 2.37× faster with both constants set).
const FMT_MIXED: u32 = 4u;
override TFMT: u32 = FMT_MIXED;
// Rows per token: 2 with CFG (the token and its unconditional copy, `p.cfg_on`), else 1.
override ROWS: u32 = 2u;
// Whether threads take the adaLN modulations' columns (PAIR_ADA) and the MLP's (PAIR_W) in
// pairs: the layer has at least 2·TL columns, an even number (see `tl_columns`).
override PAIR_ADA: bool = false;
override PAIR_W: bool = false;
// The head width W, at most 256 (the host sets it). Browsers zero-initialize every workgroup
// array, and SwiftShader compiles that into code as long as the arrays (about 0.5 ms per
// float): arrays sized for 256 took 1.8 s of the 2.0 s it spent compiling token_loop for the
// built-in model (W = 128), so they are sized to the model, and the condition rows live in
// `act`.
override TLW: u32 = 256u;
override TH_LEN: u32 = 2u * TLW;

var<workgroup> th: array<f32, TH_LEN>;   // h, [2][W]
// The gemms' left operands, two row pairs [2][TLW] in one array (WGSL functions take no
// pointers to workgroup memory, so one `tl_dot2` indexes them by offset): at T_Y,
// y = silu(cond + temb[t]), read by the adaLN phase only, so the MLP's hidden (T_U) reuses
// its place until the next step's y; at T_A, a modulated LayerNorm.
// Stored as vec4s, so the dot products read four inputs with one load (a software adapter
// emulates each shared-memory load per lane: scalar loads made its dot products 1.6× slower).
var<workgroup> tops: array<vec4<f32>, TLW>;
const T_Y: u32 = 0u;
const T_U: u32 = 0u;
override T_A: u32 = 2u * TLW;
var<workgroup> tstats: array<vec2<f32>, 2>;

// Operand values k..k+4 (k a multiple of 4).
fn tops4(k: u32) -> vec4<f32> {
    return tops[k / 4u];
}

fn tops_set(k: u32, v: f32) {
    tops[k / 4u][k % 4u] = v;
}

// A word of the layer table, stored in `mat` after the matrices: four words per matrix (word
// offset, scale offset, bias offset, `FMT_*`) for the condition embedding (entry 0), the
// stacked adaLN modulations (4) and the final linear (8); then per block b from entry
// 12 + 10·b: mlp.0's four, mlp.2's four, in_ln's weight and bias offsets.
fn table(k: u32) -> u32 {
    return mat[p.table_off + k];
}

// The weight format of the matrix at table entry `m`.
fn tl_format(m: u32) -> u32 {
    if TFMT != FMT_MIXED {
        return TFMT;
    }
    return table(m + 3u);
}

// Field `field` of step `s` in the step table (12 floats per step in `Step`'s order; the
// integer fields hold exact small integers, the noise offset is unused: it follows from `s`).
fn step_f32(s: u32, field: u32) -> f32 {
    return act[p.steps_off + s * 12u + field];
}

fn step_u32(s: u32, field: u32) -> u32 {
    return u32(step_f32(s, field));
}

// The integers q of W[i..i+4, o] for the int8 / int4 formats (see `load_quad`), unscaled.
fn load_quad_raw(fmt: u32, w_off: u32, out_dim: u32, i: u32, o: u32) -> vec4<f32> {
    if fmt == FMT_I4 {
        let word = bitcast<i32>(mat[w_off + (i / 8u) * out_dim + o]);
        let sh = (i % 8u) * 4u;
        return vec4<f32>(f32(extractBits(word, sh, 4u)), f32(extractBits(word, sh + 4u, 4u)),
                         f32(extractBits(word, sh + 8u, 4u)), f32(extractBits(word, sh + 12u, 4u)));
    }
    let word = bitcast<i32>(mat[w_off + (i / 4u) * out_dim + o]);
    return vec4<f32>(f32(extractBits(word, 0u, 8u)), f32(extractBits(word, 8u, 8u)),
                     f32(extractBits(word, 16u, 8u)), f32(extractBits(word, 24u, 8u)));
}

// Σ_i tops[src + j·TLW + i] · M[i, o] over i < in_dim for both rows j (the second only with
// CFG) and two output columns o0 and o1, a 2 × 2 tile, of the matrix at table entry `m`: each
// operand read serves both columns and each weight read both rows. Returns (row 0 · o0,
// row 1 · o0, row 0 · o1, row 1 · o1). `src` is one of the operand pairs `T_Y`, `T_A`, `T_U`
// in `tops`.
fn tl_dot2(src: u32, nr: u32, m: u32, in_dim: u32, out_dim: u32, o0: u32, o1: u32) -> vec4<f32> {
    var acc = vec4<f32>(0.0);
    let w_off = table(m);
    let scale_off = table(m + 1u);
    let fmt = tl_format(m);
    if fmt == FMT_I8 || fmt == FMT_I4 {
        for (var blk = 0u; blk < in_dim; blk += 32u) {
            var part = vec4<f32>(0.0);
            for (var i = blk; i < blk + 32u; i += 4u) {
                let q0 = load_quad_raw(fmt, w_off, out_dim, i, o0);
                let q1 = load_quad_raw(fmt, w_off, out_dim, i, o1);
                let a0 = tops4(src + i);
                part.x += dot(a0, q0);
                part.z += dot(a0, q1);
                if nr == 2u {
                    let a1 = tops4(src + TLW + i);
                    part.y += dot(a1, q0);
                    part.w += dot(a1, q1);
                }
            }
            let sb = scale_off + (blk / 32u) * out_dim;
            acc += part * vec4<f32>(vecs[sb + o0], vecs[sb + o0], vecs[sb + o1], vecs[sb + o1]);
        }
        return acc;
    }
    for (var i = 0u; i < in_dim; i += 4u) {
        let w0 = load_quad(fmt, w_off, scale_off, out_dim, i, o0);
        let w1 = load_quad(fmt, w_off, scale_off, out_dim, i, o1);
        let a0 = tops4(src + i);
        acc.x += dot(a0, w0);
        acc.z += dot(a0, w1);
        if nr == 2u {
            let a1 = tops4(src + TLW + i);
            acc.y += dot(a1, w0);
            acc.w += dot(a1, w1);
        }
    }
    return acc;
}

// A thread's columns of a layer with `out_dim` outputs: where a thread has at least two
// (out_dim ≥ 2·TL, even: `paired`, set by the host per layer kind as PAIR_ADA and PAIR_W) it
// takes them in pairs (o, o + out_dim / 2), so `o` runs over half of them; else one at a time.
fn tl_columns(out_dim: u32, paired: bool) -> u32 {
    return select(out_dim, out_dim / 2u, paired);
}

// LayerNorm statistics of the shared h rows, two passes as PyTorch (thread j: row j).
fn tl_stats(lid: u32, nr: u32) {
    if lid < nr {
        let w = p.width;
        var sum = 0.0;
        for (var i = 0u; i < w; i++) {
            sum += th[lid * TLW + i];
        }
        let mean = sum / f32(w);
        var sq = 0.0;
        for (var i = 0u; i < w; i++) {
            let d = th[lid * TLW + i] - mean;
            sq += d * d;
        }
        tstats[lid] = vec2<f32>(mean, 1.0 / sqrt(sq / f32(w) + LN_EPS));
    }
    workgroupBarrier();
}

// h = x · W_ipᵀ + b for the token's x (in `xs`), into both shared rows, and
// y = silu(cond + temb[t]) from the token's condition rows in `act`.
fn tl_project(lid: u32, tok: u32, nr: u32, t: u32) {
    let w = p.width;
    let cdim = p.tok_dim;
    for (var i = lid; i < w; i += TL) {
        var v = 0.0;
        for (var k = 0u; k < cdim; k++) {
            v += xs[k] * bitcast<f32>(mat[p.ip_w_off + i * cdim + k]);
        }
        v += vecs[p.ip_bias + i];
        th[i] = v;
        th[TLW + i] = v;
    }
    for (var k = lid; k < nr * w; k += TL) {
        let j = k / w;
        let i = k % w;
        let cond = act[p.cond_off + (tok + j * p.n_tok) * w + i];
        tops_set(T_Y + j * TLW + i, silu(cond + vecs[p.temb_off + t * w + i]));
    }
    workgroupBarrier();
}

// One workgroup per token: the whole sampling loop of an AR step for the token's rows
// (row `tok` and, with CFG, row `n + tok`). The adaLN modulations and the condition go to
// the token's rows of `act` (the modulations are too many for shared memory; the condition is
// read once per step), everything else stays in shared memory.
@compute @workgroup_size(TL)
fn token_loop(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let tok = wg.x;
    let w = p.width;
    let cdim = p.tok_dim;
    let nr = ROWS;
    let ada_n = p.mod_stride;          // (3·depth + 2)·W modulation columns per row
    let nout = 2u * cdim;

    // cond = z · W_cᵀ + b (table entry 0), from the token's z rows in `act`.
    for (var k = lid; k < nr * w; k += TL) {
        let j = k / w;
        let o = k % w;
        let zrow = p.a_off + (tok + j * p.n_tok) * p.in_dim;
        var acc = 0.0;
        for (var i = 0u; i < p.in_dim; i += 4u) {
            acc += dot(act4(zrow + i), load_quad(tl_format(0u), table(0u), table(1u), w, i, o));
        }
        act[p.cond_off + (tok + j * p.n_tok) * w + o] = acc + vecs[table(2u) + o];
    }
    if lid < cdim {
        xs[lid] = act[p.x_off + tok * cdim + lid];
    }
    storageBarrier();
    workgroupBarrier();
    tl_project(lid, tok, nr, step_u32(0u, 0u));

    let phases = 2u * p.depth + 2u;
    let row0 = p.mod_off + tok * ada_n;          // the token's modulation rows in `act`
    let row1 = p.mod_off + (tok + p.n_tok) * ada_n;
    for (var s = 0u; s < p.steps; s++) {
        // One matrix product per phase: phase 0 every adaLN modulation at once (table entry 4:
        // [shift|scale|gate] per block, then [shift|scale] of the final layer), then per block
        // mlp.0 and mlp.2, then the final linear (entry 8). All phases share one call site of
        // `tl_dot2`: the browser compiles each call site's copy of the dot product (for the
        // built-in model, SwiftShader compiled four call sites in 1.6–1.9 s, one in 0.7–0.95 s).
        for (var ph = 0u; ph < phases; ph++) {
            let b = (ph - 1u) / 2u;            // the block of an MLP phase
            let e = 12u + 10u * b;             // its table entries
            let is_ada = ph == 0u;
            let is_final = ph + 1u == phases;
            let is_in = !is_ada && !is_final && (ph % 2u) == 1u;
            let is_out = !is_ada && !is_final && !is_in;
            if is_in || is_final {
                // Modulated LayerNorm of h into T_A (the blocks' LN is affine, the final's not).
                tl_stats(lid, nr);
                let mcol = select(3u * b * w, 3u * p.depth * w, is_final);
                for (var k = lid; k < nr * w; k += TL) {
                    let j = k / w;
                    let i = k % w;
                    let m = select(row0, row1, j == 1u) + mcol + i;
                    let st2 = tstats[j];
                    var ln = (th[j * TLW + i] - st2.x) * st2.y;
                    if is_in {
                        ln = ln * vecs[table(e + 8u) + i] + vecs[table(e + 9u) + i];
                    }
                    tops_set(T_A + j * TLW + i, ln * (act[m + w] + 1.0) + act[m]);
                }
                workgroupBarrier();
            }
            var src = T_A;
            var m = e;
            var out_dim = w;
            var paired = PAIR_W;
            if is_ada {
                src = T_Y;
                m = 4u;
                out_dim = ada_n;
                paired = PAIR_ADA;
            } else if is_out {
                src = T_U;
                m = e + 4u;
            } else if is_final {
                m = 8u;
                out_dim = nout;
                paired = false;
            }
            let half = select(0u, out_dim / 2u, paired);
            let gate = row0 + 3u * b * w + 2u * w;
            for (var o = lid; o < tl_columns(out_dim, paired); o += TL) {
                // An unpaired layer computes its column twice (o1 = o) rather than compile a
                // second dot product.
                let o1 = o + half;
                let v = tl_dot2(src, nr, m, w, out_dim, o, o1);
                let bias = table(m + 2u);
                let b0 = vecs[bias + o];
                let b1 = vecs[bias + o1];
                if is_ada {
                    act[row0 + o] = v.x + b0;
                    act[row0 + o1] = v.z + b1;
                    if nr == 2u {
                        act[row1 + o] = v.y + b0;
                        act[row1 + o1] = v.w + b1;
                    }
                } else if is_in {
                    tops_set(T_U + o, silu(v.x + b0));
                    tops_set(T_U + TLW + o, silu(v.y + b0));
                    tops_set(T_U + o1, silu(v.z + b1));
                    tops_set(T_U + TLW + o1, silu(v.w + b1));
                } else if is_out {
                    if paired {
                        th[o1] += act[gate + o1] * (v.z + b1);
                        if nr == 2u {
                            th[TLW + o1] += act[gate + p.n_tok * ada_n + o1] * (v.w + b1);
                        }
                    }
                    th[o] += act[gate + o] * (v.x + b0);
                    if nr == 2u {
                        th[TLW + o] += act[gate + p.n_tok * ada_n + o] * (v.y + b0);
                    }
                } else {
                    outs[o] = v.x + b0;
                    outs[nout + o] = v.y + b0;
                }
            }
            if is_ada {
                storageBarrier();
            }
            workgroupBarrier();
        }

        // Guidance on ε only, then p_sample in the official operation order (as final_step).
        if lid < cdim {
            let xi = p.x_off + tok * cdim + lid;
            let x = act[xi];
            var eps = outs[lid];
            if nr == 2u {
                let eps_u = outs[nout + lid];
                eps = eps_u + (eps - eps_u) * step_f32(s, 10u);
            }
            let frac = (outs[cdim + lid] + 1.0) / 2.0;
            let log_var = frac * step_f32(s, 9u) + (1.0 - frac) * step_f32(s, 8u);
            let pred_x0 = x * step_f32(s, 4u) - eps * step_f32(s, 5u);
            var x_new = pred_x0 * step_f32(s, 6u) + x * step_f32(s, 7u);
            if step_u32(s, 1u) == 1u {
                // Step s's noise [n, C] follows x (as in `submit`'s layout).
                let noise = p.x_off + (1u + s) * p.n_tok * cdim;
                x_new = x_new + exp(log_var * 0.5) * act[noise + tok * cdim + lid] * step_f32(s, 11u);
            }
            act[xi] = x_new;
            xs[lid] = x_new;
        }
        workgroupBarrier();
        if s + 1u < p.steps {
            tl_project(lid, tok, nr, step_u32(s, 3u));
        }
    }
}
