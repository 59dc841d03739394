// Weight matrices as the fused kernels read them, shared by every kernel module: the host
// (src/gpu/common.rs) puts this file in front of head.wgsl and transformer.wgsl. It reads two
// storage bindings the module declares: `mat` (array<u32>, the matrices) and `vecs`
// (array<f32>, block scales among other vectors).

// Weight format of the matrix a pipeline reads.
const FMT_F32: u32 = 0u;
const FMT_F16: u32 = 1u;
const FMT_I8: u32 = 2u;
const FMT_I4: u32 = 3u;

// W[i..i+4, o] (i a multiple of 4) of a matrix at word `w_off`, stored input-major in
// quads: the 4 (f32), 2 (f16), 1 (int8) or half a (int4) words holding inputs i..i+4 of output
// o sit at [(i/4)·out + o] (int4: [(i/8)·out + o]), so neighbouring threads (outputs) read
// neighbouring words; block scales sit at [(i/32)·out + o].
fn load_quad(fmt: u32, w_off: u32, scale_off: u32, out_dim: u32, i: u32, o: u32) -> vec4<f32> {
    if fmt == FMT_F16 {
        let b = w_off + ((i / 4u) * out_dim + o) * 2u;
        return vec4<f32>(unpack2x16float(mat[b]), unpack2x16float(mat[b + 1u]));
    }
    if fmt == FMT_I8 {
        let word = bitcast<i32>(mat[w_off + (i / 4u) * out_dim + o]);
        let s = vecs[scale_off + (i / 32u) * out_dim + o];
        return vec4<f32>(f32(extractBits(word, 0u, 8u)) * s, f32(extractBits(word, 8u, 8u)) * s,
                         f32(extractBits(word, 16u, 8u)) * s, f32(extractBits(word, 24u, 8u)) * s);
    }
    if fmt == FMT_I4 {
        let word = bitcast<i32>(mat[w_off + (i / 8u) * out_dim + o]);
        let sh = (i % 8u) * 4u;
        let s = vecs[scale_off + (i / 32u) * out_dim + o];
        return vec4<f32>(f32(extractBits(word, sh, 4u)) * s, f32(extractBits(word, sh + 4u, 4u)) * s,
                         f32(extractBits(word, sh + 8u, 4u)) * s, f32(extractBits(word, sh + 12u, 4u)) * s);
    }
    let b = w_off + ((i / 4u) * out_dim + o) * 4u;
    return vec4<f32>(bitcast<f32>(mat[b]), bitcast<f32>(mat[b + 1u]),
                     bitcast<f32>(mat[b + 2u]), bitcast<f32>(mat[b + 3u]));
}

