//! Int8 / int4 storage of Linear weights with Burn's own quantization: symmetric, one f32 scale
//! per block of 32 values along the input dimension (`QuantScheme` Q8F / Q4F, per-block 32),
//! computed by Burn's `quantize_dynamic` on the CPU backend. A file stores Burn's quantized
//! bytes (values, then scales); int4 values are packed two per byte in the file only. Loading
//! dequantizes with Burn on the CPU, where the model runs in f32; on a GPU the Linear weights
//! are put back into their stored form ([`requantize_exact`]) and stay int8 / int4 there
//! ([`gpu_tensor`]).

use super::map::HostTensor;
use crate::error::{DisaError, Result};
use burn::tensor::quantization::{QuantScheme, QuantStore, QuantValue, ScaleDtype};
use burn::tensor::{DType, Device, Tensor, TensorData};

/// Values per scale.
pub const BLOCK: usize = 32;

/// The integer width of a quantized tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Bits {
    #[serde(rename = "int8")]
    Int8,
    #[serde(rename = "int4")]
    Int4,
}

impl Bits {
    /// The integers a value takes: Burn's symmetric scale is 2·max|block| / (2^bits − 1), so
    /// the block's largest magnitude lands on −2^(bits−1) or 2^(bits−1) − 1.
    fn levels(self) -> (f32, f32) {
        match self {
            Bits::Int8 => (-128.0, 127.0),
            Bits::Int4 => (-8.0, 7.0),
        }
    }

    fn scheme(self) -> QuantScheme {
        let value = match self {
            Bits::Int8 => QuantValue::Q8F,
            Bits::Int4 => QuantValue::Q4F,
        };
        QuantScheme::default()
            .with_value(value)
            .with_store(QuantStore::Native)
            .per_block([BLOCK as u8], ScaleDtype::F32)
    }

    /// Bytes a tensor of `numel` values takes in a file.
    pub fn stored_len(self, numel: usize) -> usize {
        let values = match self {
            Bits::Int8 => numel,
            Bits::Int4 => numel.div_ceil(2),
        };
        values + 4 * numel / BLOCK
    }
}

/// Whether a tensor of this name and shape is stored quantized: Linear weights (2-D
/// `*.weight`, not the class embedding) whose input width is a whole number of blocks.
pub fn quantizable(name: &str, t: &HostTensor) -> bool {
    t.shape.len() == 2
        && name.ends_with(".weight")
        && name != "class_emb.weight"
        && t.shape[1].is_multiple_of(BLOCK)
}

fn burn_error(what: &str, e: impl std::fmt::Debug) -> DisaError {
    DisaError::Internal(format!("{what}: {e:?}"))
}

/// Quantizes `t` (row-major `[out, in]`): the file bytes, and the values as they will load.
pub fn encode(t: &HostTensor, bits: Bits) -> Result<(Vec<u8>, HostTensor)> {
    let device = Device::flex();
    let shape = [t.shape[0], t.shape[1]];
    let q = Tensor::<2>::from_data(TensorData::new(t.values.clone(), shape), &device)
        .quantize_dynamic(&bits.scheme());
    let (bytes, _, _) = q.clone().into_data().into_parts();
    let mut bytes = bytes.to_vec();
    let numel = t.numel();
    if bits == Bits::Int4 {
        // Burn keeps int4 values one per byte (−7..7); pack two per byte for the file.
        let (values, scales) = bytes.split_at(numel);
        let mut packed = pack_int4(values);
        packed.extend_from_slice(scales);
        bytes = packed;
    }
    let values = q
        .dequantize()
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| burn_error("dequantizing", e))?;
    Ok((
        bytes,
        HostTensor {
            shape: t.shape.clone(),
            values,
        },
    ))
}

/// int4 values (one two's-complement value per byte, −8..7) packed two per byte, the first in
/// the low nibble: the file's layout, and Burn's `PackedU32` word layout read as bytes.
fn pack_int4(values: &[u8]) -> Vec<u8> {
    values
        .chunks(2)
        .map(|p| (p[0] & 0x0f) | (p.get(1).copied().unwrap_or(0) << 4))
        .collect()
}

/// Decodes file bytes written by [`encode`] back to f32 values of `shape`.
pub fn decode(bytes: &[u8], shape: &[usize], bits: Bits) -> Result<HostTensor> {
    let bad = |m: String| DisaError::Format(m);
    // A shape from a file: its size must not overflow (nor the bytes it would need, 5 per value
    // at most), whatever the file claims.
    let numel = shape
        .iter()
        .try_fold(1usize, |n, &d| n.checked_mul(d))
        .filter(|n| n.checked_mul(5).is_some())
        .ok_or_else(|| bad(format!("quantized tensor shape {shape:?} is too large")))?;
    // Blocks run along each row, as `quantizable` requires of what `encode` is given.
    if shape.len() != 2 || !shape[1].is_multiple_of(BLOCK) || numel == 0 {
        return Err(bad(format!(
            "quantized tensor shape {shape:?} is not a matrix of rows of whole {BLOCK}-value blocks"
        )));
    }
    if bytes.len() != bits.stored_len(numel) {
        return Err(bad(format!(
            "quantized tensor holds {} bytes; {shape:?} in {bits:?} needs {}",
            bytes.len(),
            bits.stored_len(numel)
        )));
    }
    let raw = match bits {
        Bits::Int8 => bytes.to_vec(),
        Bits::Int4 => {
            let split = numel.div_ceil(2);
            let mut v: Vec<u8> = Vec::with_capacity(numel + bytes.len() - split);
            for (i, b) in bytes[..split].iter().enumerate() {
                // Sign-extend each nibble.
                v.push((((b & 0x0f) << 4) as i8 >> 4) as u8);
                if 2 * i + 1 < numel {
                    v.push(((b & 0xf0) as i8 >> 4) as u8);
                }
            }
            v.extend_from_slice(&bytes[split..]);
            v
        }
    };
    let data = TensorData::try_from_bytes_vec(raw, shape.to_vec(), DType::QFloat(bits.scheme()))
        .map_err(|e| burn_error("quantized tensor", e))?;
    let device = Device::flex();
    // Sizes are checked above; this guards against anything Burn still rejects by panicking.
    let values = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        Tensor::<2>::from_data(data, &device)
            .dequantize()
            .into_data()
            .try_to_vec::<f32>()
    }))
    .map_err(|_| bad("the quantized tensor could not be decoded".into()))?
    .map_err(|e| burn_error("dequantizing", e))?;
    Ok(HostTensor {
        shape: shape.to_vec(),
        values,
    })
}

/// Recovers the stored form of a tensor that [`decode`] produced, bit for bit: the file's
/// bytes ([`encode`]'s layout: int8 values, or int4 values two per byte, then one f32 scale per
/// block). Each block's scale is the one whose products with the integers give back every
/// value exactly (searched next to max|block| / 127 and / 128 for int8, / 7 and / 8 for int4:
/// the block's largest value is one of those multiples); `None` when the values are not such
/// a product (e.g. a tensor that was never quantized).
pub fn requantize_exact(t: &HostTensor, bits: Bits) -> Option<Vec<u8>> {
    let [_, cols] = t.shape[..] else {
        return None;
    };
    if cols == 0 || !cols.is_multiple_of(BLOCK) {
        return None;
    }
    let (low, high) = bits.levels();
    let mut ints: Vec<i8> = Vec::with_capacity(t.numel());
    let mut scales: Vec<f32> = Vec::with_capacity(t.numel() / BLOCK);
    for block in t.values.chunks(BLOCK) {
        let max = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        if !max.is_finite() {
            return None;
        }
        if max == 0.0 {
            // Any scale decodes zeros (so the file's may differ from this 1).
            ints.extend(std::iter::repeat_n(0, BLOCK));
            scales.push(1.0);
            continue;
        }
        let candidates = [high, -low].into_iter().flat_map(|level| {
            let guess = (max / level).to_bits() as i32;
            [0, 1, -1, 2, -2].map(|d| f32::from_bits((guess + d) as u32))
        });
        let fits = |scale: f32| -> Option<Vec<i8>> {
            block
                .iter()
                .map(|&v| {
                    let q = (v / scale).round();
                    ((low..=high).contains(&q) && q * scale == v).then_some(q as i8)
                })
                .collect()
        };
        let (scale, q) = candidates
            .into_iter()
            .find_map(|s| fits(s).map(|q| (s, q)))?;
        ints.extend(q);
        scales.push(scale);
    }
    let ints: Vec<u8> = ints.iter().map(|&q| q as u8).collect();
    let mut bytes = match bits {
        Bits::Int8 => ints,
        Bits::Int4 => pack_int4(&ints),
    };
    bytes.extend(scales.iter().flat_map(|s| s.to_le_bytes()));
    Some(bytes)
}

/// A Linear weight `[out, in]` as a quantized tensor on `device` (a GPU), from its stored
/// bytes ([`requantize_exact`]): the integers packed into 32-bit words along the input
/// dimension (`QuantStore::PackedU32`, which WGSL can read; the file's byte order is already
/// that packing) and one f32 scale per block of 32 inputs. Burn's matmul dequantizes it as
/// `q · scale`, the values the CPU runs.
pub fn gpu_tensor(
    bytes: Vec<u8>,
    shape: [usize; 2],
    bits: Bits,
    device: &Device,
) -> Result<Tensor<2>> {
    let scheme = bits.scheme().with_store(QuantStore::PackedU32(0));
    let data = TensorData::try_from_bytes_vec(bytes, shape.to_vec(), DType::QFloat(scheme))
        .map_err(|e| burn_error("quantized tensor", e))?;
    Ok(Tensor::<2>::from_data(data, device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shape_too_large_to_count_is_an_error() {
        for shape in [[usize::MAX, 64], [usize::MAX / 4, 64]] {
            let err = decode(&[], &shape, Bits::Int8).unwrap_err().to_string();
            assert!(err.contains("too large"), "{shape:?}: {err}");
        }
    }

    #[test]
    fn requantizing_gives_back_the_stored_bytes() {
        // Rows with a zero block, tiny and large magnitudes.
        let mut t = matrix(6, 96);
        t.values[32..64].iter_mut().for_each(|v| *v = 0.0);
        t.values[96..128].iter_mut().for_each(|v| *v *= 1e-6);
        t.values[128..160].iter_mut().for_each(|v| *v *= 3e4);
        for bits in [Bits::Int8, Bits::Int4] {
            let (bytes, loaded) = encode(&t, bits).unwrap();
            let again = requantize_exact(&loaded, bits).expect("a dequantized tensor");
            // The zero block's scale may differ; its integers are all zero either way.
            let scales_at = bytes.len() - 4 * t.numel() / BLOCK;
            assert_eq!(
                again[..scales_at],
                bytes[..scales_at],
                "{bits:?}: the integers"
            );
            let scale = |b: &[u8], k: usize| {
                f32::from_le_bytes(
                    b[scales_at + 4 * k..scales_at + 4 * k + 4]
                        .try_into()
                        .unwrap(),
                )
            };
            for k in (0..t.numel() / BLOCK).filter(|&k| k != 1) {
                assert_eq!(
                    scale(&again, k),
                    scale(&bytes, k),
                    "{bits:?}: block {k}'s scale"
                );
            }
            assert_eq!(decode(&again, &t.shape, bits).unwrap(), loaded, "{bits:?}");
        }
        // Values that were never quantized have no stored form.
        assert!(requantize_exact(&t, Bits::Int8).is_none());
        assert!(requantize_exact(&matrix(2, 30), Bits::Int8).is_none());
    }

    fn matrix(rows: usize, cols: usize) -> HostTensor {
        HostTensor {
            shape: vec![rows, cols],
            values: (0..rows * cols)
                .map(|i| ((i * 7919) % 1000) as f32 / 1000.0 - 0.5)
                .collect(),
        }
    }

    #[test]
    fn round_trips_within_the_step_size() {
        let t = matrix(8, 64);
        for (bits, levels) in [(Bits::Int8, 127.0), (Bits::Int4, 7.0)] {
            let (bytes, loaded) = encode(&t, bits).unwrap();
            assert_eq!(bytes.len(), bits.stored_len(t.numel()));
            let decoded = decode(&bytes, &t.shape, bits).unwrap();
            assert_eq!(
                decoded, loaded,
                "{bits:?}: decoding gives what encoding promised"
            );
            // Symmetric per-block: error at most half a step of max|block| / levels.
            let worst = t
                .values
                .iter()
                .zip(&decoded.values)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 0.5 / levels * 0.5 + 1e-6, "{bits:?}: {worst}");
            assert!(worst > 0.0);
        }
    }

    #[test]
    fn an_all_zero_matrix_stays_zero() {
        // Zero-initialized layers (adaLN) have zero-range blocks.
        let t = HostTensor {
            shape: vec![4, 32],
            values: vec![0.0; 128],
        };
        for bits in [Bits::Int8, Bits::Int4] {
            let (bytes, loaded) = encode(&t, bits).unwrap();
            assert_eq!(loaded.values, t.values, "{bits:?}");
            assert_eq!(decode(&bytes, &t.shape, bits).unwrap(), t);
        }
    }

    #[test]
    fn bad_sizes_are_errors() {
        let (bytes, _) = encode(&matrix(2, 32), Bits::Int8).unwrap();
        assert!(decode(&bytes[..bytes.len() - 1], &[2, 32], Bits::Int8).is_err());
        assert!(decode(&bytes, &[2, 33], Bits::Int8).is_err());
        assert!(decode(&bytes, &[64], Bits::Int8).is_err());
        assert!(decode(&bytes, &[2, 32], Bits::Int4).is_err());
    }
}
