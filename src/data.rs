//! Fashion-MNIST in the MNIST idx format (Debian's `dataset-fashion-mnist` installs it under
//! `/usr/share/datasets/fashion-mnist/`, gzipped), and its conversion to MAR tokens: 28×28
//! images padded to 32×32 and cut into 4×4 patches, an 8×8 grid of 16-channel tokens.

use crate::error::{DisaError, Result};
use std::io::Read;
use std::path::Path;

/// Side of a Fashion-MNIST image in pixels.
pub const IMAGE_SIDE: usize = 28;

/// The largest idx payload read (Fashion-MNIST's training images are 47 MB).
pub const MAX_IDX_BYTES: u64 = 1 << 30;

/// Where Debian's package puts the files.
pub const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// The ten classes, index = label.
pub const CLASS_NAMES: [&str; 10] = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
];

const IMAGES_MAGIC: u32 = 0x0000_0803;
const LABELS_MAGIC: u32 = 0x0000_0801;

fn bad(source: &str, reason: impl Into<String>) -> DisaError {
    DisaError::Dataset {
        source_name: source.to_string(),
        reason: reason.into(),
    }
}

fn be_u32(bytes: &[u8], at: usize, source: &str) -> Result<u32> {
    bytes
        .get(at..at + 4)
        .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| bad(source, format!("truncated header ({} bytes)", bytes.len())))
}

/// What a file holds against what its header declares, as text: data read by
/// [`read_maybe_gz`] stops one byte past the declared size, so a longer file is only known to
/// hold more ([`read_idx_file`] sizes it).
fn found(len: usize, declared: usize) -> String {
    if len > declared {
        format!("more than {declared} (at least {len} bytes; the rest is not read)")
    } else {
        format!("{len}")
    }
}

/// Grayscale images, row-major, one byte per pixel.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Images {
    pub count: usize,
    pub rows: usize,
    pub cols: usize,
    pub pixels: Vec<u8>,
}

impl Images {
    /// Pixels of image `i`.
    pub fn image(&self, i: usize) -> &[u8] {
        let n = self.rows * self.cols;
        &self.pixels[i * n..(i + 1) * n]
    }
}

/// Parses an idx3 image file (already decompressed).
pub fn parse_images(source: &str, bytes: &[u8]) -> Result<Images> {
    let magic = be_u32(bytes, 0, source)?;
    if magic != IMAGES_MAGIC {
        return Err(bad(
            source,
            format!("magic {magic:#010x} is not an idx3 image file ({IMAGES_MAGIC:#010x})"),
        ));
    }
    let (count, rows, cols) = (
        be_u32(bytes, 4, source)? as usize,
        be_u32(bytes, 8, source)? as usize,
        be_u32(bytes, 12, source)? as usize,
    );
    let expected = count
        .checked_mul(rows)
        .and_then(|v| v.checked_mul(cols))
        .ok_or_else(|| bad(source, "image dimensions overflow"))?;
    let data = &bytes[16..];
    if data.len() != expected {
        return Err(bad(
            source,
            format!(
                "{count} images of {rows}×{cols} need {expected} bytes, the file has {}",
                found(data.len(), expected)
            ),
        ));
    }
    Ok(Images {
        count,
        rows,
        cols,
        pixels: data.to_vec(),
    })
}

/// Parses an idx1 label file (already decompressed); labels must be < `num_classes`.
pub fn parse_labels(source: &str, bytes: &[u8], num_classes: usize) -> Result<Vec<u8>> {
    let magic = be_u32(bytes, 0, source)?;
    if magic != LABELS_MAGIC {
        return Err(bad(
            source,
            format!("magic {magic:#010x} is not an idx1 label file ({LABELS_MAGIC:#010x})"),
        ));
    }
    let count = be_u32(bytes, 4, source)? as usize;
    let data = &bytes[8..];
    if data.len() != count {
        return Err(bad(
            source,
            format!(
                "{count} labels declared, the file has {}",
                found(data.len(), count)
            ),
        ));
    }
    if let Some((i, l)) = data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= num_classes)
    {
        return Err(bad(
            source,
            format!("label {l} at index {i} is not below {num_classes}"),
        ));
    }
    Ok(data.to_vec())
}

/// Reads an idx file, gunzipping it when it starts with the gzip magic. The header is read
/// first and the rest only as far as it says (at most [`MAX_IDX_BYTES`]), so a compression
/// bomb or a file that never ends costs no more than a valid file of the size it claims. A
/// file longer than its header says comes back with one byte more than declared, which
/// [`parse_images`] and [`parse_labels`] refuse; [`read_idx_file`] says by how much.
pub fn read_maybe_gz(path: &Path) -> Result<Vec<u8>> {
    read_file(path, false)
}

/// [`read_maybe_gz`], refusing a file longer than its header says with its real size: the
/// rest is counted (never stored) on disk, or through gzip up to [`MAX_IDX_BYTES`] more.
pub fn read_idx_file(path: &Path) -> Result<Vec<u8>> {
    read_file(path, true)
}

/// How much a file holds past its header, when more than the header declares.
enum Surplus {
    /// Exactly this many bytes of data.
    Exactly(u64),
    /// More than this many (counting stopped there).
    MoreThan(u64),
}

fn read_file(path: &Path, size_surplus: bool) -> Result<Vec<u8>> {
    let source = path.display().to_string();
    let (mut file, len) = crate::weights::atomic::open_regular(path)?;
    let mut magic = [0u8; 2];
    let n = file.read(&mut magic).map_err(|e| DisaError::Io {
        path: source.clone(),
        source: e,
    })?;
    let file = std::io::Cursor::new(magic[..n].to_vec()).chain(file);
    let gzip = magic[..n] == [0x1f, 0x8b];
    let (bytes, surplus) = if gzip {
        // Say that the gzip layer is where it went wrong: a damaged download reads as a
        // truncated or garbled idx file otherwise.
        read_idx(
            &source,
            flate2::read::GzDecoder::new(file),
            None,
            size_surplus,
        )
        .map_err(|e| match e {
            DisaError::Dataset {
                source_name,
                reason,
            } => DisaError::Dataset {
                source_name,
                reason: format!(
                    "{reason} after gzip decompression (a corrupt or cut-off .gz file?)"
                ),
            },
            other => other,
        })?
    } else {
        read_idx(&source, file, Some(len), size_surplus)?
    };
    let Some(surplus) = surplus else {
        return Ok(bytes);
    };
    let (header, declared) = if be_u32(&bytes, 0, &source)? == IMAGES_MAGIC {
        let dim = |i: usize| be_u32(&bytes, 4 * i, &source);
        (16, format!("{} images of {}×{}", dim(1)?, dim(2)?, dim(3)?))
    } else {
        (8, format!("{} labels", be_u32(&bytes, 4, &source)?))
    };
    let need = bytes.len() - header - 1;
    let found = match surplus {
        Surplus::Exactly(n) => format!("{n}"),
        Surplus::MoreThan(n) => format!("more than {n}"),
    };
    let (after, what) = if gzip {
        (" once decompressed", ".gz file")
    } else {
        ("", "file")
    };
    Err(bad(
        &source,
        format!(
            "{declared} need {need} bytes after the {header}-byte header, the {what} holds \
             {found}{after}: it is not the file its header describes (damaged, or another file); \
             fetch it again (Debian: reinstall dataset-fashion-mnist)"
        ),
    ))
}

/// Reads one idx file from `input`: its header, then exactly the payload the header declares,
/// and one byte more if there is one. With `size_surplus`, such a surplus is sized: from
/// `file_len` (the whole file's bytes) when known, else by reading on (unstored) up to
/// [`MAX_IDX_BYTES`].
fn read_idx(
    source: &str,
    mut input: impl Read,
    file_len: Option<u64>,
    size_surplus: bool,
) -> Result<(Vec<u8>, Option<Surplus>)> {
    let corrupt = |e: std::io::Error| bad(source, format!("unreadable or corrupt ({e})"));
    let mut head = vec![0u8; 8];
    input
        .read_exact(&mut head)
        .map_err(|_| bad(source, "truncated header"))?;
    let magic = be_u32(&head, 0, source)?;
    let payload: u64 = match magic {
        LABELS_MAGIC => be_u32(&head, 4, source)? as u64,
        IMAGES_MAGIC => {
            head.resize(16, 0);
            input
                .read_exact(&mut head[8..])
                .map_err(|_| bad(source, "truncated header"))?;
            let mut total = 1u64;
            for i in 1..4 {
                total = total.saturating_mul(u64::from(be_u32(&head, 4 * i, source)?));
            }
            total
        }
        other => {
            return Err(bad(
                source,
                format!("magic {other:#010x} is not an idx1 label or idx3 image file"),
            ));
        }
    };
    if payload > MAX_IDX_BYTES {
        return Err(bad(
            source,
            format!(
                "its header declares {payload} bytes of data, more than the {MAX_IDX_BYTES} accepted"
            ),
        ));
    }
    let header = head.len() as u64;
    let mut bytes = head;
    bytes.reserve(payload as usize);
    // One byte more than declared, to notice a file longer than its header says.
    (&mut input)
        .take(payload + 1)
        .read_to_end(&mut bytes)
        .map_err(corrupt)?;
    if !size_surplus || bytes.len() as u64 <= header + payload {
        return Ok((bytes, None));
    }
    let surplus = match file_len {
        Some(len) => Surplus::Exactly(len - header),
        None => {
            let rest = std::io::copy(&mut input.take(MAX_IDX_BYTES), &mut std::io::sink())
                .map_err(corrupt)?;
            if rest == MAX_IDX_BYTES {
                Surplus::MoreThan(payload + MAX_IDX_BYTES)
            } else {
                Surplus::Exactly(payload + 1 + rest)
            }
        }
    };
    Ok((bytes, Some(surplus)))
}

/// One split: images and their labels.
#[derive(Clone, Debug)]
pub struct Split {
    pub images: Images,
    pub labels: Vec<u8>,
}

/// Fashion-MNIST's train (60k) and test (10k) splits.
#[derive(Clone, Debug)]
pub struct FashionMnist {
    pub train: Split,
    pub test: Split,
}

impl FashionMnist {
    /// Loads the four files (`.gz` or plain) from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let split = |prefix: &str| -> Result<Split> {
            let find = |stem: String| -> Result<std::path::PathBuf> {
                [format!("{stem}.gz"), stem.clone()]
                    .iter()
                    .map(|n| dir.join(n))
                    .find(|p| p.exists())
                    .ok_or_else(|| {
                        bad(
                            &dir.display().to_string(),
                            format!(
                                "{stem}(.gz) not found; install Debian's dataset-fashion-mnist"
                            ),
                        )
                    })
            };
            let ip = find(format!("{prefix}-images-idx3-ubyte"))?;
            let lp = find(format!("{prefix}-labels-idx1-ubyte"))?;
            let images = parse_images(&ip.display().to_string(), &read_idx_file(&ip)?)?;
            if (images.rows, images.cols) != (IMAGE_SIDE, IMAGE_SIDE) {
                return Err(bad(
                    &ip.display().to_string(),
                    format!(
                        "images are {}×{}; Fashion-MNIST's are {IMAGE_SIDE}×{IMAGE_SIDE}",
                        images.rows, images.cols
                    ),
                ));
            }
            let labels = parse_labels(
                &lp.display().to_string(),
                &read_idx_file(&lp)?,
                CLASS_NAMES.len(),
            )?;
            if labels.len() != images.count {
                return Err(bad(
                    prefix,
                    format!("{} images but {} labels", images.count, labels.len()),
                ));
            }
            Ok(Split { images, labels })
        };
        Ok(Self {
            train: split("train")?,
            test: split("t10k")?,
        })
    }
}

/// Token layout of the small model: pad to `side` (centred), cut into `patch`×`patch` patches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PatchLayout {
    pub side: usize,
    pub patch: usize,
}

impl PatchLayout {
    /// 32×32 padded images, 4×4 patches: an 8×8 grid of 16-channel tokens.
    pub const FASHION: Self = Self { side: 32, patch: 4 };

    /// Tokens per image.
    pub fn grid(&self) -> usize {
        self.side / self.patch
    }

    /// Tokens of one grayscale image: pixels scaled to [−1, 1] then × `scale`, laid out as
    /// MAR's `patchify` with one channel (`[grid², patch²]`, row-major tokens).
    pub fn tokens(&self, pixels: &[u8], rows: usize, cols: usize, scale: f32) -> Vec<f32> {
        let (g, p) = (self.grid(), self.patch);
        let (oy, ox) = ((self.side - rows) / 2, (self.side - cols) / 2);
        let mut out = Vec::with_capacity(g * g * p * p);
        for gy in 0..g {
            for gx in 0..g {
                for py in 0..p {
                    for px in 0..p {
                        let (y, x) = (gy * p + py, gx * p + px);
                        let v = if (oy..oy + rows).contains(&y) && (ox..ox + cols).contains(&x) {
                            pixels[(y - oy) * cols + (x - ox)]
                        } else {
                            0
                        };
                        out.push((v as f32 / 127.5 - 1.0) * scale);
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn idx3(count: u32, rows: u32, cols: u32, data: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        for x in [IMAGES_MAGIC, count, rows, cols] {
            v.extend_from_slice(&x.to_be_bytes());
        }
        v.extend_from_slice(data);
        v
    }

    #[test]
    fn parses_and_rejects_images() {
        let ok = idx3(2, 2, 2, &[0, 1, 2, 3, 4, 5, 6, 7]);
        let img = parse_images("t", &ok).unwrap();
        assert_eq!((img.count, img.rows, img.cols), (2, 2, 2));
        assert_eq!(img.image(1), &[4, 5, 6, 7]);
        assert!(
            parse_images("t", &ok[..ok.len() - 1]).is_err(),
            "truncated data"
        );
        assert!(parse_images("t", &ok[..10]).is_err(), "truncated header");
        let mut wrong = ok.clone();
        wrong[3] = 0x01;
        assert!(
            parse_images("t", &wrong)
                .unwrap_err()
                .to_string()
                .contains("magic")
        );
        assert!(
            parse_images("t", &idx3(u32::MAX, u32::MAX, u32::MAX, &[])).is_err(),
            "overflow"
        );
    }

    #[test]
    fn parses_and_rejects_labels() {
        let mut ok = Vec::new();
        ok.extend_from_slice(&LABELS_MAGIC.to_be_bytes());
        ok.extend_from_slice(&3u32.to_be_bytes());
        ok.extend_from_slice(&[0, 9, 4]);
        assert_eq!(parse_labels("l", &ok, 10).unwrap(), vec![0, 9, 4]);
        assert!(
            parse_labels("l", &ok, 5)
                .unwrap_err()
                .to_string()
                .contains("label 9")
        );
        assert!(parse_labels("l", &ok[..10], 10).is_err());
    }

    #[test]
    fn tokens_pad_centre_and_patchify() {
        let layout = PatchLayout::FASHION;
        let pixels = vec![255u8; 28 * 28];
        let t = layout.tokens(&pixels, 28, 28, 1.0);
        assert_eq!(t.len(), 64 * 16);
        // Token (0,0) covers rows/cols 0..4: the first two rows and columns are padding.
        assert_eq!(t[0], -1.0); // (0,0) padding
        assert_eq!(t[2 * 4 + 2], 1.0); // (2,2) inside the image
        assert_eq!(t[63 * 16 + 15], -1.0); // bottom-right corner is padding
    }
}
