//! Decoded images to 8-bit RGB, with the official rounding:
//! `round(clip((x + 1) / 2 · 255, 0, 255))`.

use crate::error::{DisaError, Result};
use burn::tensor::Tensor;

/// An 8-bit RGB image, row-major, 3 bytes per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    pub width: usize,
    pub height: usize,
    pub pixels: Vec<u8>,
}

/// One value in [−1, 1] to a byte (round half to even, as `np.round`).
pub fn to_u8(x: f32) -> u8 {
    ((x + 1.0) / 2.0 * 255.0)
        .clamp(0.0, 255.0)
        .round_ties_even() as u8
}

/// Converts decoded images `[B, ch, H, W]` (ch = 3, or 1 for grayscale) in about [−1, 1] from
/// host values to RGB images.
pub fn images_from_values(values: &[f32], shape: [usize; 4]) -> Result<Vec<RgbImage>> {
    let [b, ch, h, w] = shape;
    if ch != 1 && ch != 3 {
        return Err(DisaError::Config(format!(
            "decoded images have {ch} channels; expected 1 or 3"
        )));
    }
    if Some(values.len()) != b.checked_mul(ch * h * w) {
        return Err(DisaError::Internal(format!(
            "{} decoded values for images of shape {shape:?}",
            values.len()
        )));
    }
    // NaN would become black and ±Inf saturated pixels: a silent wrong image.
    check_finite(values, "in the decoded images")?;
    Ok((0..b)
        .map(|i| {
            let mut pixels = Vec::with_capacity(h * w * 3);
            for y in 0..h {
                for x in 0..w {
                    for c in 0..3 {
                        let cc = if ch == 1 { 0 } else { c };
                        pixels.push(to_u8(values[((i * ch + cc) * h + y) * w + x]));
                    }
                }
            }
            RgbImage {
                width: w,
                height: h,
                pixels,
            }
        })
        .collect())
}

/// Refuses values that are not all finite; `at` says where they come from.
pub fn check_finite(values: &[f32], at: &str) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        Some(i) => Err(DisaError::NonFiniteOutput(format!(
            "{at} ({} at index {i})",
            values[i]
        ))),
        None => Ok(()),
    }
}

/// Reads decoded images back from the device (native).
pub fn images_from_tensor(t: Tensor<4>) -> Result<Vec<RgbImage>> {
    let shape = t.dims();
    let values = t
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| DisaError::Device(format!("reading the image back: {e:?}")))?;
    images_from_values(&values, shape)
}

/// Places images side by side in a grid of `columns` (for batch output).
pub fn grid(images: &[RgbImage], columns: usize) -> Option<RgbImage> {
    let first = images.first()?;
    let (w, h) = (first.width, first.height);
    let columns = columns.max(1).min(images.len());
    let rows = images.len().div_ceil(columns);
    let (gw, gh) = (w * columns, h * rows);
    let mut pixels = vec![0u8; gw * gh * 3];
    for (i, img) in images.iter().enumerate() {
        let (ox, oy) = ((i % columns) * w, (i / columns) * h);
        for y in 0..h {
            let src = &img.pixels[y * w * 3..(y + 1) * w * 3];
            let dst = ((oy + y) * gw + ox) * 3;
            pixels[dst..dst + w * 3].copy_from_slice(src);
        }
    }
    Some(RgbImage {
        width: gw,
        height: gh,
        pixels,
    })
}

impl RgbImage {
    /// Nearest-neighbour enlargement by an integer `factor` (small images for viewing).
    pub fn upscaled(&self, factor: usize) -> RgbImage {
        let f = factor.max(1);
        let (w, h) = (self.width * f, self.height * f);
        let mut pixels = Vec::with_capacity(w * h * 3);
        for y in 0..h {
            for x in 0..w {
                let src = ((y / f) * self.width + x / f) * 3;
                pixels.extend_from_slice(&self.pixels[src..src + 3]);
            }
        }
        RgbImage {
            width: w,
            height: h,
            pixels,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upscaling_repeats_pixels() {
        let img = RgbImage {
            width: 2,
            height: 1,
            pixels: vec![1, 2, 3, 4, 5, 6],
        };
        let big = img.upscaled(2);
        assert_eq!((big.width, big.height), (4, 2));
        assert_eq!(&big.pixels[..12], &[1, 2, 3, 1, 2, 3, 4, 5, 6, 4, 5, 6]);
        assert_eq!(&big.pixels[12..], &big.pixels[..12]);
        assert_eq!(img.upscaled(1), img);
    }
}
