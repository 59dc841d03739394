// The MAR transformer's forward pass (`forward_mae_encoder` + `forward_mae_decoder` of the
// official `models/mar.py`, eval mode) as a few kernels, recorded by src/gpu/transformer.rs
// as one compute pass per AR step:
//
//   linear   (MODE_PLAIN)     z_proj of the known tokens
//   gather                    encoder rows: class embedding or projected token, + position
//   layer_norm                z_proj_ln, in place
//   per encoder block:
//     linear (MODE_PLAIN, LN) qkv = LN₁(x)·W_qkvᵀ + b
//     attention               softmax(q·kᵀ/√d)·v per sequence and head
//     linear (MODE_RESIDUAL)  x += att·W_projᵀ + b
//     linear (MODE_GELU, LN)  u = gelu(LN₂(x)·W_fc1ᵀ + b)
//     linear (MODE_RESIDUAL)  x += u·W_fc2ᵀ + b
//   linear   (MODE_PLAIN, LN) decoder_embed(encoder_norm(x))
//   gather                    decoder rows: embedded row or mask token, + position
//   per decoder block: the same five
//   layer_norm                decoder_norm, in place
//   gather                    the rows the head samples, + diffusion position embedding
//
// Buffers: `mat` and `vecs` as in weights.wgsl (matrices input-major; biases, LayerNorm
// vectors, embeddings and position tables in `vecs`), `idx` the gather tables of this pass,
// `act` every activation. Offsets come from `p`, one uniform block per dispatch.

struct Params {
    rows: u32,       // activation rows
    in_dim: u32,
    out_dim: u32,
    w_off: u32,      // linear: matrix word offset in `mat`
    scale_off: u32,  // linear: block scales in `vecs` (int8/int4)
    bias_off: u32,   // linear: bias in `vecs`
    a_off: u32,      // input rows in `act` (row stride in_dim; attention: 3·heads·head_dim)
    out_off: u32,    // output rows in `act` (row stride out_dim)
    ln_w: u32,       // LayerNorm weight and bias in `vecs`
    ln_b: u32,
    ln_on: u32,      // linear: 1 = LayerNorm the input rows first
    seq_len: u32,    // attention: rows per sequence
    heads: u32,
    head_dim: u32,
    idx_off: u32,    // gather: this dispatch's table in `idx`, two codes per row
    scale: f32,      // attention: head_dim^(-1/2)
    mode: u32,       // linear: MODE_*
    pad0: u32,
    pad1: u32,
    pad2: u32,
}

@group(0) @binding(0) var<uniform> p: Params;
@group(0) @binding(1) var<storage, read> idx: array<u32>;
@group(0) @binding(2) var<storage, read> mat: array<u32>;
@group(0) @binding(3) var<storage, read> vecs: array<f32>;
@group(0) @binding(4) var<storage, read_write> act: array<f32>;

override WFMT: u32 = 0u;

// What a `linear` dispatch does with its result.
const MODE_PLAIN: u32 = 0u;    // out = v
const MODE_GELU: u32 = 1u;     // out = gelu(v), exact-erf GELU
const MODE_RESIDUAL: u32 = 2u; // out += v
// linear: output columns per thread (COLUMNS_PER_THREAD in src/gpu/transformer.rs), held
// with the workgroup's RT rows in four named vec4s.
const COLS: u32 = 2u;

const LN_EPS: f32 = 1e-6;
const WG: u32 = 64u;       // threads per workgroup of every kernel here
const RT: u32 = 8u;        // linear: activation rows per workgroup
// The shared arrays' sizes are override constants, set by the host per adapter: a browser
// zero-initializes every workgroup array, and a software adapter (SwiftShader) compiles that
// into code as long as the arrays (about 0.5 ms per float), so there they are a quarter of a
// GPU's (compiling `linear` and `attention` took it 1.0 to 1.1 s each with the GPU's sizes).
override CH: u32 = 256u;       // linear: inputs per shared-memory tile (a multiple of 4)
override T1: u32 = CH / 4u;    // linear: vec4s per row of the tile
// The tile's length, RT · T1 (an array's length must name an override for naga 30).
override TILE_VECS: u32 = RT * T1;
const MAX_HEAD_DIM: u32 = 128u; // attention: widest head (a multiple of 4)
override KV_VECS: u32 = 256u;  // attention: vec4s of keys (and of values) per chunk, ≥ MAX_HEAD_DIM / 4
const MAX_CHUNK: u32 = 32u;    // attention: keys per chunk at most
const NONE: u32 = 0xffffffffu;
const IN_VECS: u32 = 0x80000000u;

var<workgroup> tile: array<vec4<f32>, TILE_VECS>; // linear: RT × CH inputs as vec4s
var<workgroup> stats: array<vec2<f32>, 8>;    // linear: per row mean, 1/sqrt(var + eps)
var<workgroup> kt: array<vec4<f32>, KV_VECS>; // attention: a chunk of keys
var<workgroup> vt: array<vec4<f32>, KV_VECS>; // attention: their values
var<workgroup> red: array<f32, 64>;

// erf by Abramowitz & Stegun 7.1.26 (|error| ≤ 1.5e-7), as the CPU path.
fn erf(x: f32) -> f32 {
    let a = abs(x);
    let t = 1.0 / (1.0 + 0.3275911 * a);
    let poly = ((((1.0614054 * t - 1.4531520) * t + 1.4214138) * t - 0.28449672) * t
        + 0.2548296) * t;
    return sign(x) * (1.0 - poly * exp(-a * a));
}

fn gelu(x: f32) -> f32 {
    return 0.5 * x * (1.0 + erf(x * 0.70710678118654752));
}

// Sum (`op` 0) or max (`op` 1) of one value per thread over the workgroup.
fn reduce(lid: u32, v: f32, op: u32) -> f32 {
    workgroupBarrier();
    red[lid] = v;
    workgroupBarrier();
    for (var s = WG / 2u; s > 0u; s = s >> 1u) {
        if lid < s {
            if op == 0u {
                red[lid] += red[lid + s];
            } else {
                red[lid] = max(red[lid], red[lid + s]);
            }
        }
        workgroupBarrier();
    }
    let r = red[0];
    workgroupBarrier();
    return r;
}

// Row index of a workgroup in a (x, y) grid of up to 65535 × 65535.
fn row_of(wg: vec3<u32>) -> u32 {
    return wg.y * 65535u + wg.x;
}

// out[r, o] = epilogue(LN?(a[r]) · W[o]ᵀ + b[o]) for rows r0..r0+RT and COLS output columns
// per thread (o = lid, lid + WG, …: neighbouring threads read neighbouring weight words, the
// weights being input-major); the (normalized) inputs are staged in shared memory CH at a
// time and every thread reads them at the same address, each read serving COLS columns.
@compute @workgroup_size(64)
fn linear(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let o0 = wg.x * WG * COLS + lid;
    let r0 = wg.y * RT;
    let nrows = min(RT, p.rows - r0);
    let ln = p.ln_on == 1u;
    if ln && lid < nrows {
        // Two passes, as PyTorch's LayerNorm.
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
    // Rows 0..4 and 4..8 of column o0 (acc0, acc1) and of column o0 + WG (acc2, acc3). Named
    // vectors, not an array indexed in loops: a software adapter (SwiftShader) kept the array
    // in memory, and this form made the built-in model's transformer 2.75× faster there.
    var acc0 = vec4<f32>(0.0);
    var acc1 = vec4<f32>(0.0);
    var acc2 = vec4<f32>(0.0);
    var acc3 = vec4<f32>(0.0);
    // Columns past the matrix read its last column (in bounds) and are not stored.
    let c0 = min(o0, p.out_dim - 1u);
    let c1 = min(o0 + WG, p.out_dim - 1u);
    for (var base = 0u; base < p.in_dim; base += CH) {
        let len = min(CH, p.in_dim - base);
        let quads = len / 4u;
        workgroupBarrier();
        for (var k = lid; k < RT * quads; k += WG) {
            let r = k / quads;
            let i = base + 4u * (k % quads);
            var a = vec4<f32>(0.0);
            if r < nrows {
                let at = p.a_off + (r0 + r) * p.in_dim + i;
                a = vec4<f32>(act[at], act[at + 1u], act[at + 2u], act[at + 3u]);
                if ln {
                    let s = stats[r];
                    a = (a - s.x) * s.y * vec4<f32>(vecs[p.ln_w + i], vecs[p.ln_w + i + 1u],
                        vecs[p.ln_w + i + 2u], vecs[p.ln_w + i + 3u])
                        + vec4<f32>(vecs[p.ln_b + i], vecs[p.ln_b + i + 1u],
                        vecs[p.ln_b + i + 2u], vecs[p.ln_b + i + 3u]);
                }
            }
            tile[r * T1 + k % quads] = a;
        }
        workgroupBarrier();
        for (var q = 0u; q < quads; q++) {
            let w0 = load_quad(WFMT, p.w_off, p.scale_off, p.out_dim, base + 4u * q, c0);
            let w1 = load_quad(WFMT, p.w_off, p.scale_off, p.out_dim, base + 4u * q, c1);
            let a0 = tile[q];
            let a1 = tile[T1 + q];
            let a2 = tile[2u * T1 + q];
            let a3 = tile[3u * T1 + q];
            let a4 = tile[4u * T1 + q];
            let a5 = tile[5u * T1 + q];
            let a6 = tile[6u * T1 + q];
            let a7 = tile[7u * T1 + q];
            acc0 += vec4<f32>(dot(a0, w0), dot(a1, w0), dot(a2, w0), dot(a3, w0));
            acc1 += vec4<f32>(dot(a4, w0), dot(a5, w0), dot(a6, w0), dot(a7, w0));
            acc2 += vec4<f32>(dot(a0, w1), dot(a1, w1), dot(a2, w1), dot(a3, w1));
            acc3 += vec4<f32>(dot(a4, w1), dot(a5, w1), dot(a6, w1), dot(a7, w1));
        }
    }
    for (var c = 0u; c < COLS; c++) {
        let o = o0 + c * WG;
        if o >= p.out_dim {
            break;
        }
        let bias = vecs[p.bias_off + o];
        for (var r = 0u; r < nrows; r++) {
            var v = bias;
            if c == 0u {
                v += select(acc1[r % 4u], acc0[r % 4u], r < 4u);
            } else {
                v += select(acc3[r % 4u], acc2[r % 4u], r < 4u);
            }
            let dst = p.out_off + (r0 + r) * p.out_dim + o;
            if p.mode == MODE_GELU {
                act[dst] = gelu(v);
            } else if p.mode == MODE_RESIDUAL {
                act[dst] = act[dst] + v;
            } else {
                act[dst] = v;
            }
        }
    }
}

// softmax(q·Kᵀ·scale)·V for up to WG query rows of one head of one sequence per workgroup
// (grid: query block, head, sequence), one query per thread, reading q, k and v from the qkv
// rows ([q | k | v], each heads × head_dim, timm's layout). Keys and values are staged in
// shared memory KV_VECS vec4s at a time, and each thread keeps a running softmax over them
// (the running maximum rescales the sum and the output when it grows): no reductions across
// threads, two barriers per chunk of keys.
@compute @workgroup_size(64)
fn attention(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let hd4 = p.head_dim / 4u;
    let d = p.heads * p.head_dim;
    let stride = 3u * d;
    let row0 = wg.z * p.seq_len;
    let col = wg.y * p.head_dim;
    let query = wg.x * WG + lid;
    let live = query < p.seq_len;
    // Keys per chunk: as many as the shared arrays hold, at most MAX_CHUNK.
    let chunk = min(KV_VECS / hd4, MAX_CHUNK);
    var q: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
    var o: array<vec4<f32>, MAX_HEAD_DIM / 4u>;
    var s: array<f32, MAX_CHUNK>;
    if live {
        let q_at = p.a_off + (row0 + query) * stride + col;
        for (var c = 0u; c < hd4; c++) {
            let at = q_at + 4u * c;
            q[c] = vec4<f32>(act[at], act[at + 1u], act[at + 2u], act[at + 3u]) * p.scale;
            o[c] = vec4<f32>(0.0);
        }
    }
    var m = -3.4e38;
    var l = 0.0;
    for (var k0 = 0u; k0 < p.seq_len; k0 += chunk) {
        let n = min(chunk, p.seq_len - k0);
        workgroupBarrier();
        for (var t = lid; t < n * hd4; t += WG) {
            let at = p.a_off + (row0 + k0 + t / hd4) * stride + d + col + 4u * (t % hd4);
            kt[t] = vec4<f32>(act[at], act[at + 1u], act[at + 2u], act[at + 3u]);
            vt[t] = vec4<f32>(act[at + d], act[at + d + 1u], act[at + d + 2u], act[at + d + 3u]);
        }
        workgroupBarrier();
        if live {
            var cm = m;
            for (var j = 0u; j < n; j++) {
                var dotp = 0.0;
                for (var c = 0u; c < hd4; c++) {
                    dotp += dot(q[c], kt[j * hd4 + c]);
                }
                s[j] = dotp;
                cm = max(cm, dotp);
            }
            let corr = exp(m - cm);
            l *= corr;
            for (var c = 0u; c < hd4; c++) {
                o[c] *= corr;
            }
            for (var j = 0u; j < n; j++) {
                let e = exp(s[j] - cm);
                l += e;
                for (var c = 0u; c < hd4; c++) {
                    o[c] += e * vt[j * hd4 + c];
                }
            }
            m = cm;
        }
    }
    if live {
        let out_at = p.out_off + (row0 + query) * d + col;
        for (var c = 0u; c < hd4; c++) {
            let v = o[c] / l;
            act[out_at + 4u * c] = v.x;
            act[out_at + 4u * c + 1u] = v.y;
            act[out_at + 4u * c + 2u] = v.z;
            act[out_at + 4u * c + 3u] = v.w;
        }
    }
}

// LayerNorm with affine weight and bias of each row, in place or not; one row per workgroup.
@compute @workgroup_size(64)
fn layer_norm(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r = row_of(wg);
    if r >= p.rows {
        return;
    }
    let a = p.a_off + r * p.in_dim;
    var sum = 0.0;
    for (var i = lid; i < p.in_dim; i += WG) {
        sum += act[a + i];
    }
    let mean = reduce(lid, sum, 0u) / f32(p.in_dim);
    var sq = 0.0;
    for (var i = lid; i < p.in_dim; i += WG) {
        let d = act[a + i] - mean;
        sq += d * d;
    }
    let inv = 1.0 / sqrt(reduce(lid, sq, 0u) / f32(p.in_dim) + LN_EPS);
    let out = p.out_off + r * p.in_dim;
    for (var i = lid; i < p.in_dim; i += WG) {
        act[out + i] = (act[a + i] - mean) * inv * vecs[p.ln_w + i] + vecs[p.ln_b + i];
    }
}

// One term of a gathered row: a row of `act` (code = its offset), of `vecs` (code | IN_VECS)
// or nothing (NONE).
fn term(code: u32, j: u32) -> f32 {
    if code == NONE {
        return 0.0;
    }
    if (code & IN_VECS) != 0u {
        return vecs[(code & ~IN_VECS) + j];
    }
    return act[code + j];
}

// out[r] = term(idx[2r]) + term(idx[2r + 1]) over out_dim columns, one row per workgroup: the
// transformer's row selections, embeddings and position tables in one kernel.
@compute @workgroup_size(64)
fn gather(@builtin(local_invocation_index) lid: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let r = row_of(wg);
    if r >= p.rows {
        return;
    }
    let a = idx[p.idx_off + 2u * r];
    let b = idx[p.idx_off + 2u * r + 1u];
    let out = p.out_off + r * p.out_dim;
    for (var j = lid; j < p.out_dim; j += WG) {
        act[out + j] = term(a, j) + term(b, j);
    }
}
