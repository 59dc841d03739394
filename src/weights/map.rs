// The map and its tensors are base types; reading and writing them as files is this module's.
pub use crate::base::{HostTensor, WeightMap};
use crate::error::{DisaError, Result};
use std::collections::BTreeMap;

fn format_error(source_name: &str, reason: impl Into<String>) -> DisaError {
    DisaError::WeightFormat {
        source_name: source_name.to_string(),
        reason: reason.into(),
    }
}

/// Decodes little-endian values of a float dtype to f32.
fn decode_floats(source_name: &str, key: &str, dtype: &str, bytes: &[u8]) -> Result<Vec<f32>> {
    let width = match dtype {
        "F32" => 4,
        "F16" | "BF16" => 2,
        "F64" => 8,
        other => {
            return Err(format_error(
                source_name,
                format!("tensor `{key}` has dtype {other}; weights must be F32, F16, BF16 or F64"),
            ));
        }
    };
    if !bytes.len().is_multiple_of(width) {
        return Err(format_error(
            source_name,
            format!("tensor `{key}`: byte length not a multiple of {width}"),
        ));
    }
    Ok(match dtype {
        "F32" => bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        "F16" => bytes
            .chunks_exact(2)
            .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        "BF16" => bytes
            .chunks_exact(2)
            .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
        _ => bytes
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")) as f32)
            .collect(),
    })
}

impl WeightMap {
    /// Parses a safetensors file held in memory. Every tensor must be of a float type: one
    /// stored as an integer or bool is an error that names it (a model never takes one); a
    /// malformed header or truncated data is an error.
    pub fn from_safetensors_bytes(source_name: &str, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            format_error(source_name, format!("not a valid safetensors file ({e})"))
        })?;
        Self::from_safetensors(source_name, &st, &|_| false)
    }

    /// The float tensors of a parsed safetensors file. Tensors of other types are an error
    /// ([`not_float_error`]), except those `skip` names (a bundle's quantized bytes, which its
    /// reader decodes itself).
    pub(crate) fn from_safetensors(
        source_name: &str,
        st: &safetensors::SafeTensors<'_>,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        let mut others = Vec::new();
        for (name, view) in st.tensors() {
            let dtype = format!("{:?}", view.dtype());
            if is_float(&dtype) {
                let values = decode_floats(source_name, &name, &dtype, view.data())?;
                tensors.insert(
                    name,
                    HostTensor {
                        shape: view.shape().to_vec(),
                        values,
                    },
                );
            } else if !skip(&name) && !is_counter(&name) {
                others.push(Listed {
                    name,
                    dtype,
                    shape: view.shape().to_vec(),
                });
            }
        }
        if !others.is_empty() {
            others.sort_by(|a, b| a.name.cmp(&b.name));
            let refs: Vec<&Listed> = others.iter().collect();
            return Err(not_float_error(source_name, "", &refs));
        }
        Ok(Self {
            source_name: source_name.to_string(),
            tensors,
        })
    }

    /// Reads a PyTorch checkpoint (`torch.save` zip or legacy format) from disk, taking the state
    /// dict under `top_level_key` (e.g. `model_ema`, `model`) when given. PyTorch keeps tensor
    /// data outside the pickle, so checkpoints are read from a path, never from bytes.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_pytorch_path(path: &std::path::Path, top_level_key: Option<&str>) -> Result<Self> {
        Self::read_pytorch(path, top_level_key, &ReadLimits::default())
    }

    /// [`WeightMap::from_pytorch_path`] reading only the tensors `limits` keeps, within its
    /// budget: tensor data is read after the pickle is parsed and the claimed sizes are checked.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn read_pytorch(
        path: &std::path::Path,
        top_level_key: Option<&str>,
        limits: &ReadLimits,
    ) -> Result<Self> {
        let source_name = path.display().to_string();
        // Messages name the state dict asked for (an alias reads the same dict).
        let place = top_level_key
            .map(|k| format!(" under `{k}`"))
            .unwrap_or_default();
        check_pickle_size(path)?;
        // A key whose state dict is the same object as another's is read as that one.
        let aliased = top_level_key.and_then(|k| pickle_aliases(path).remove(k));
        let top_level_key = aliased.as_deref().or(top_level_key);
        let open = || match top_level_key {
            Some(k) => pytorch_reader::PytorchReader::with_top_level_key(path, k),
            None => pytorch_reader::PytorchReader::new(path),
        };
        // The reader is third-party code fed untrusted bytes: a panic inside it must still
        // become an error.
        let reader = std::panic::catch_unwind(open)
            .map_err(|_| {
                format_error(
                    &source_name,
                    "the PyTorch reader crashed on this file (corrupt?)",
                )
            })?
            .map_err(|e| {
                let hint = match top_level_key {
                    Some(k) => format!(" (looked for the state dict under `{k}`)"),
                    None => String::new(),
                };
                format_error(
                    &source_name,
                    format!("not a readable PyTorch checkpoint{hint}: {e}"),
                )
            })?;
        let mut all: Vec<(Listed, pytorch_reader::Tensor)> = reader
            .into_tensors()
            .into_iter()
            .map(|(name, tensor)| {
                let dtype = match tensor.dtype() {
                    pytorch_reader::DType::Bool => "BOOL".to_string(),
                    other => format!("{other:?}"),
                };
                let shape = tensor.shape().to_vec();
                (Listed { name, dtype, shape }, tensor)
            })
            .collect();
        all.sort_by(|a, b| a.0.name.cmp(&b.0.name));
        let listed: Vec<&Listed> = all.iter().map(|(l, _)| l).collect();
        // Names, types and claimed sizes first: nothing is read from a file refused here.
        let wanted = limits.select(&source_name, &place, &listed)?;
        let mut tensors = BTreeMap::new();
        for i in wanted {
            let (Listed { name, dtype, shape }, tensor) = &all[i];
            let bytes = tensor.read().map_err(|e| {
                format_error(
                    &source_name,
                    format!("tensor `{name}`: data unreadable ({e})"),
                )
            })?;
            let values = decode_floats(&source_name, name, dtype, &bytes)?;
            tensors.insert(
                name.clone(),
                HostTensor {
                    shape: shape.clone(),
                    values,
                },
            );
        }
        if tensors.is_empty() {
            return Err(format_error(
                &source_name,
                format!("the checkpoint holds no float tensors{place}"),
            ));
        }
        Ok(Self {
            source_name,
            tensors,
        })
    }

    /// Whether bytes start like a PyTorch checkpoint (zip container or legacy pickle with
    /// PyTorch's magic number), and not like safetensors. `file_len` is the whole file's size.
    pub fn looks_like_pytorch(bytes: &[u8]) -> bool {
        matches!(
            detect_format(bytes, bytes.len() as u64),
            FileFormat::TorchZip | FileFormat::TorchLegacy
        )
    }

    /// Parses weights held in memory (the browser's path): safetensors. A PyTorch checkpoint is
    /// recognized and refused with a pointer to reading it from a file.
    pub fn from_bytes(source_name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 {
            return Err(format_error(
                source_name,
                format!("only {} bytes: the file is empty or truncated", bytes.len()),
            ));
        }
        if Self::looks_like_pytorch(bytes) {
            return Err(format_error(
                source_name,
                "this is a PyTorch checkpoint: read it from a file path (natively), or convert it \
                 to safetensors first",
            ));
        }
        Self::from_safetensors_bytes(source_name, bytes)
    }

    /// Reads a weight file from disk, choosing the format from what only that format can start
    /// with: safetensors or a PyTorch checkpoint. For a checkpoint, `top_level_key` picks the
    /// state dict; `None` tries `model_ema`, then `model`, then the top level.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_path(path: &std::path::Path, top_level_key: Option<&str>) -> Result<Self> {
        Self::read_path(path, top_level_key, &ReadLimits::default())
    }

    /// [`WeightMap::from_path`] reading only the tensors `limits` keeps, within its budget.
    /// Safetensors files are read tensor by tensor after their header is checked against the
    /// file's size, never whole.
    #[cfg(not(target_arch = "wasm32"))]
    pub(crate) fn read_path(
        path: &std::path::Path,
        top_level_key: Option<&str>,
        limits: &ReadLimits,
    ) -> Result<Self> {
        let name = path.display().to_string();
        let (head, len) = sniff_path(path)?;
        match detect_format(&head, len) {
            FileFormat::Safetensors => read_safetensors_streaming(path, limits),
            FileFormat::TorchZip | FileFormat::TorchLegacy => match top_level_key {
                Some(k) => Self::read_pytorch(path, Some(k), limits),
                None => {
                    let mut first_error = None;
                    for k in ["model_ema", "model"] {
                        match Self::read_pytorch(path, Some(k), limits) {
                            Ok(w) => return Ok(w),
                            // Sizes over budget are final: another key would not help.
                            Err(e @ DisaError::InvalidSetting(_)) => return Err(e),
                            Err(e) => {
                                first_error.get_or_insert(e);
                            }
                        }
                    }
                    // The top level, else the first key's error (the likelier intent).
                    Self::read_pytorch(path, None, limits).map_err(|e| match e {
                        DisaError::InvalidSetting(_) => e,
                        _ => first_error.unwrap_or(e),
                    })
                }
            },
            FileFormat::Unknown => Err(unknown_format(&name, &head, len)),
        }
    }

    /// Serializes every tensor as f32 safetensors under its own name, with `metadata`: the
    /// official state-dict layout when the names are official (`disa convert --to official`).
    pub fn to_safetensors_bytes(
        &self,
        metadata: std::collections::HashMap<String, String>,
    ) -> Result<Vec<u8>> {
        let data: Vec<(&String, &HostTensor, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                (
                    k,
                    t,
                    t.values.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = data
            .iter()
            .map(|(k, t, bytes)| {
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytes,
                )
                .map(|v| ((*k).clone(), v))
                .map_err(|e| format_error(&self.source_name, format!("tensor `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        safetensors::serialize(views, Some(metadata))
            .map_err(|e| format_error(&self.source_name, format!("serializing: {e}")))
    }
}

/// What a weight file is, judged only by what can belong to that format alone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileFormat {
    /// An 8-byte little-endian header length whose header starts with `{` and fits the file.
    Safetensors,
    /// A `torch.save` zip archive (`PK\x03\x04`).
    TorchZip,
    /// A legacy `torch.save` file: a pickle holding PyTorch's magic number.
    TorchLegacy,
    /// None of these.
    Unknown,
}

/// Bytes [`detect_format`] looks at.
pub const SNIFF_LEN: usize = 64;

/// PyTorch's legacy magic number 0x1950a86a20f9469cfc6c as a pickled LONG1 (little-endian).
const LEGACY_MAGIC: [u8; 10] = [0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19];
/// The same number as protocol 0 writes it (decimal text).
const LEGACY_MAGIC_TEXT: &[u8] = b"119547037146038801333356";
/// The safetensors format's limit on its header.
pub(crate) const MAX_SAFETENSORS_HEADER: u64 = 100_000_000;

/// Detects the format of a file from its first bytes (up to [`SNIFF_LEN`]) and its length.
/// The first byte alone decides nothing: in safetensors it is the low byte of the header
/// length, any value at all.
pub fn detect_format(head: &[u8], file_len: u64) -> FileFormat {
    if head.len() >= 9 {
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if (2..=MAX_SAFETENSORS_HEADER).contains(&n)
            && n <= file_len.saturating_sub(8)
            && head[8] == b'{'
        {
            return FileFormat::Safetensors;
        }
    }
    if head.starts_with(b"PK\x03\x04") || head.starts_with(b"PK\x05\x06") {
        return FileFormat::TorchZip;
    }
    let window = &head[..head.len().min(SNIFF_LEN)];
    let pickle_start = matches!(window.first(), Some(0x80 | b'(' | b'L' | b'I' | b'\x8a'));
    if pickle_start
        && (window
            .windows(LEGACY_MAGIC.len())
            .any(|w| w == LEGACY_MAGIC)
            || window
                .windows(LEGACY_MAGIC_TEXT.len())
                .any(|w| w == LEGACY_MAGIC_TEXT))
    {
        return FileFormat::TorchLegacy;
    }
    FileFormat::Unknown
}

/// The error for a file of no known format, saying what was expected.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn unknown_format(source_name: &str, head: &[u8], len: u64) -> DisaError {
    let detail = if len < 8 {
        format!("only {len} bytes: the file is empty or truncated")
    } else {
        let n = u64::from_le_bytes(head[..8].try_into().expect("8 bytes"));
        if head.get(8) == Some(&b'{') && n.saturating_add(8) > len {
            format!(
                "a safetensors header of {n} bytes does not fit the file's {len} bytes \
                 (truncated?)"
            )
        } else {
            "not safetensors (8-byte header length, then a JSON header), nor a PyTorch \
             checkpoint (zip, or a legacy pickle with PyTorch's magic number)"
                .to_string()
        }
    };
    format_error(source_name, detail)
}

/// The first [`SNIFF_LEN`] bytes of a regular file, and its size.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn sniff_path(path: &std::path::Path) -> Result<(Vec<u8>, u64)> {
    use std::io::Read;
    let (file, len) = super::atomic::open_regular(path)?;
    let mut head = Vec::with_capacity(SNIFF_LEN);
    file.take(SNIFF_LEN as u64)
        .read_to_end(&mut head)
        .map_err(|source| DisaError::Io {
            path: path.display().to_string(),
            source,
        })?;
    Ok((head, len))
}

/// Float dtypes (safetensors' names, which the PyTorch reader's match).
fn is_float(dtype: &str) -> bool {
    matches!(dtype, "F32" | "F16" | "BF16" | "F64")
}

/// A BatchNorm's step counter (an integer buffer, never a weight): skipped by readers that
/// take every tensor, so a state dict of such a model still reads.
fn is_counter(name: &str) -> bool {
    name.ends_with("num_batches_tracked")
}

/// One tensor as a file lists it, before any of its data is read.
pub(crate) struct Listed {
    pub name: String,
    /// Safetensors' dtype name (`F32`, `I64`, `BOOL`, …).
    pub dtype: String,
    pub shape: Vec<usize>,
}

/// Values a claimed shape holds, in floating point (a file's product may overflow `usize`).
#[cfg(not(target_arch = "wasm32"))]
fn claimed_values(shape: &[usize]) -> f64 {
    shape.iter().map(|&d| d as f64).product()
}

/// The error for tensors a reader would take that are not of a float type (`others`, sorted),
/// naming the first with its type and shape. `place` says where in the file (` under
/// `model_ema``).
pub(crate) fn not_float_error(source_name: &str, place: &str, others: &[&Listed]) -> DisaError {
    let first = others[0];
    let more = match others.len() {
        1 => String::new(),
        n => format!(
            " (and {} more not of a float type: {})",
            n - 1,
            super::usage::some_keys(others[1..].iter().map(|l| l.name.as_str()), n - 1)
        ),
    };
    let (kind, origin) = if first.dtype.starts_with("F8") {
        (
            "an 8-bit float type disa does not read",
            "saved in 8-bit floats",
        )
    } else {
        ("not a float type", "saved from an integer or bool tensor")
    };
    format_error(
        source_name,
        format!(
            "tensor `{}`{place} (shape {:?}) is there but stored as {}, {kind}{more}: weights \
             must be F32, F16, BF16 or F64. It was {origin} (or the file was edited); save the \
             model's float weights and convert again",
            first.name, first.shape, first.dtype
        ),
    )
}

/// What a file read with [`ReadLimits`] must hold.
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug, Default)]
pub(crate) enum Expect {
    /// Any float tensors.
    #[default]
    Any,
    /// A MAR model. The kept tensors must outline one: a configuration is inferred from the
    /// claimed shapes before any data is read, so a file that cannot be one is refused
    /// unread, and with no `max_values` given the tensors are held to the inferred model's
    /// size. Every tensor of the file (kept or not) must be one that a model of `config`
    /// (given, else the inferred one) takes: the others are refused by name, unread.
    Mar {
        config: Option<crate::model::MarConfig>,
        /// Where `config` came from, for messages (`--config x.json`).
        origin: Option<String>,
    },
    /// A VAE whose decoder is read: a file without one is refused saying what it holds.
    VaeDecoder,
}

/// Which tensors of a file to read, and how many values they may hold (reading files from
/// disk: native only).
#[cfg(not(target_arch = "wasm32"))]
#[derive(Clone, Debug)]
pub(crate) struct ReadLimits {
    /// Tensors (by name) the model uses; the others are never read.
    pub keep: fn(&str) -> bool,
    /// The values a model of the known configuration has (tensors kept must not hold more).
    pub max_values: Option<f64>,
    /// What the file must hold.
    pub expect: Expect,
}

#[cfg(not(target_arch = "wasm32"))]
impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            keep: |_| true,
            max_values: None,
            expect: Expect::Any,
        }
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl ReadLimits {
    /// The tensors to read among those a file lists (`listed`, all of them, with the types
    /// and shapes the file declares), as indices into `listed`, after refusing, before any is
    /// read: a kept tensor of no float type, a file without what [`Expect`] asks for, tensors
    /// the model would not use, and claimed sizes over the budget. `place` says where in the
    /// file the tensors are (` under `model``), for messages.
    pub fn select(&self, source_name: &str, place: &str, listed: &[&Listed]) -> Result<Vec<usize>> {
        let kept: Vec<usize> = (0..listed.len())
            .filter(|&i| (self.keep)(&listed[i].name))
            .collect();
        let others: Vec<&Listed> = kept
            .iter()
            .map(|&i| listed[i])
            .filter(|l| !is_float(&l.dtype) && !is_counter(&l.name))
            .collect();
        if !others.is_empty() {
            return Err(not_float_error(source_name, place, &others));
        }
        let kept: Vec<usize> = kept
            .into_iter()
            .filter(|&i| is_float(&listed[i].dtype))
            .collect();
        if kept.is_empty() {
            match &self.expect {
                Expect::VaeDecoder => return Err(no_vae_error(source_name, place, listed)),
                Expect::Mar { .. } if listed.iter().any(|l| is_vae_decoder_tensor(&l.name)) => {
                    return Err(DisaError::MissingTensor {
                        source_name: source_name.to_string(),
                        key: "z_proj.weight".into(),
                        hint: format!(
                            " (its tensors{place} are a VAE's decoder: this looks like a VAE \
                             file, not a MAR model; give the MAR weights, and the VAE as --vae)"
                        ),
                    });
                }
                _ => {}
            }
        }
        let shapes = kept
            .iter()
            .map(|&i| (listed[i].name.as_str(), listed[i].shape.as_slice()));
        self.check(source_name, listed, shapes)?;
        Ok(kept)
    }

    /// Refuses the kept tensors' claimed shapes (`(name, shape)` as the file declares them)
    /// over the budget, and for a MAR model the file's tensors (`listed`) it would not use,
    /// before any is read.
    fn check<'a>(
        &self,
        source_name: &str,
        listed: &[&Listed],
        shapes: impl Iterator<Item = (&'a str, &'a [usize])> + Clone,
    ) -> Result<()> {
        let claimed: f64 = shapes.clone().map(|(_, s)| claimed_values(s)).sum();
        let mut max_values = self.max_values;
        if let Expect::Mar { config, origin } = &self.expect {
            let outline = WeightMap {
                source_name: source_name.to_string(),
                tensors: shapes
                    .map(|(name, shape)| {
                        let tensor = HostTensor {
                            shape: shape.to_vec(),
                            values: Vec::new(),
                        };
                        (name.to_string(), tensor)
                    })
                    .collect(),
            };
            // Head counts do not change the size; one head always divides the width.
            let inferred = crate::model::MarConfig::infer(&outline, Some((1, 1)))?;
            max_values = max_values.or(Some(super::limits::config_params(&inferred)));
            // Names before sizes: a surplus of blocks says what it is, whatever its size.
            let model = config.as_ref().unwrap_or(&inferred);
            let origin = config.as_ref().and(origin.as_deref());
            super::usage::check_mar_unused(
                source_name,
                listed
                    .iter()
                    .map(|l| (l.name.as_str(), claimed_values(&l.shape))),
                model,
                origin,
            )?;
        }
        if let Some(max) = max_values {
            // A little slack for extra small buffers a state dict may carry.
            if claimed > max * 1.01 + 65536.0 {
                return Err(DisaError::InvalidSetting(format!(
                    "{source_name}: its tensors declare {claimed:.3e} values, more than the \
                     {max:.3e} of a model of its configuration; refusing to read them"
                )));
            }
        }
        super::limits::check_fits(
            &format!("reading the tensors of {source_name}"),
            claimed * 4.0,
        )?;
        Ok(())
    }
}

/// The error for a file read as a VAE that holds no VAE decoder tensor: what it holds instead.
#[cfg(not(target_arch = "wasm32"))]
fn no_vae_error(source_name: &str, place: &str, listed: &[&Listed]) -> DisaError {
    let wanted = "VAE decoder tensors (`decoder.*`, `post_quant_conv.*`)";
    let reason = if listed.is_empty() {
        format!("it holds no tensors{place}, where a VAE file holds {wanted}")
    } else if listed.iter().any(|l| {
        matches!(l.name.as_str(), "class_emb.weight" | "z_proj.weight")
            || l.name.starts_with("diffloss.")
    }) {
        format!(
            "this looks like a MAR checkpoint, not a VAE: its {} tensors{place} ({}) are a \
             MAR model's, and it holds no {wanted}. Give --vae the VAE's file (e.g. \
             `vae.ckpt` or `vae.safetensors`), and the MAR checkpoint as --weights",
            listed.len(),
            super::usage::some_keys(listed.iter().map(|l| l.name.as_str()), listed.len())
        )
    } else {
        format!(
            "it holds no {wanted}: its {} tensors{place} are {}. Give the KL VAE the model \
             was trained with",
            listed.len(),
            super::usage::some_keys(listed.iter().map(|l| l.name.as_str()), listed.len())
        )
    };
    format_error(source_name, reason)
}

/// Names of a MAR state dict's tensors (under one of the official top-level modules the
/// model's builders name): the tensors of a MAR file that are read. Others are never read;
/// loading a model from files refuses them by name, unread.
pub fn is_mar_tensor(name: &str) -> bool {
    let module = name.split('.').next().unwrap_or(name);
    crate::model::state_dict_modules().contains(module)
}

/// Names of the VAE tensors the decoder uses (the encoder and loss are skipped unread).
pub fn is_vae_decoder_tensor(name: &str) -> bool {
    name.starts_with("decoder.") || name.starts_with("post_quant_conv.")
}

/// Width in bytes of a safetensors dtype name, `None` for unknown ones.
#[cfg(not(target_arch = "wasm32"))]
fn dtype_width(dtype: &str) -> Option<u64> {
    Some(match dtype {
        "BOOL" | "U8" | "I8" | "F8_E5M2" | "F8_E4M3" | "F8_E8M0" => 1,
        "I16" | "U16" | "F16" | "BF16" => 2,
        "I32" | "U32" | "F32" => 4,
        "I64" | "U64" | "F64" => 8,
        _ => return None,
    })
}

/// Reads a safetensors file tensor by tensor: the header (at most the format's 100 MB) is read
/// and checked against the file's size first, then only the float tensors `limits` keeps, each
/// exactly as long as the header says.
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn read_safetensors_streaming(
    path: &std::path::Path,
    limits: &ReadLimits,
) -> Result<WeightMap> {
    use std::io::{Read, Seek, SeekFrom};
    let source_name = path.display().to_string();
    let bad = |reason: String| format_error(&source_name, reason);
    let io = |source| DisaError::Io {
        path: source_name.clone(),
        source,
    };
    let (mut file, len) = super::atomic::open_regular(path)?;
    let mut n_bytes = [0u8; 8];
    file.read_exact(&mut n_bytes)
        .map_err(|_| bad(format!("only {len} bytes: the file is empty or truncated")))?;
    let n = u64::from_le_bytes(n_bytes);
    if n > MAX_SAFETENSORS_HEADER || n.saturating_add(8) > len {
        return Err(bad(format!(
            "a safetensors header of {n} bytes does not fit the file's {len} bytes"
        )));
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|e| bad(format!("not a valid safetensors file (header: {e})")))?;
    struct Entry {
        listed: Listed,
        start: u64,
        end: u64,
    }
    let mut entries = Vec::new();
    for (name, value) in header {
        if name == "__metadata__" {
            continue;
        }
        let field = |key: &str| value.get(key).cloned().unwrap_or_default();
        let dtype = field("dtype").as_str().unwrap_or_default().to_string();
        let shape: Vec<usize> = serde_json::from_value(field("shape"))
            .map_err(|e| bad(format!("tensor `{name}`: shape ({e})")))?;
        let (start, end): (u64, u64) = serde_json::from_value(field("data_offsets"))
            .map_err(|e| bad(format!("tensor `{name}`: data_offsets ({e})")))?;
        let width = dtype_width(&dtype)
            .ok_or_else(|| bad(format!("tensor `{name}`: unknown dtype `{dtype}`")))?;
        let bytes = shape
            .iter()
            .try_fold(width, |acc, &d| acc.checked_mul(d as u64));
        if end < start || bytes != Some(end - start) {
            return Err(bad(format!(
                "tensor `{name}`: data_offsets {start}..{end} do not match its shape {shape:?}"
            )));
        }
        entries.push(Entry {
            listed: Listed { name, dtype, shape },
            start,
            end,
        });
    }
    entries.sort_by_key(|e| (e.start, e.end));
    let mut at = 0u64;
    for e in &entries {
        if e.start != at {
            return Err(bad(format!(
                "tensor `{}`: data does not follow the previous tensor's (offset {} ≠ {at})",
                e.listed.name, e.start
            )));
        }
        at = e.end;
    }
    if at.checked_add(8 + n) != Some(len) {
        return Err(bad(format!(
            "the header describes {at} bytes of data, the file holds {} (truncated or padded)",
            len - 8 - n
        )));
    }
    entries.sort_by(|a, b| a.listed.name.cmp(&b.listed.name));
    let listed: Vec<&Listed> = entries.iter().map(|e| &e.listed).collect();
    let wanted: Vec<&Entry> = limits
        .select(&source_name, "", &listed)?
        .into_iter()
        .map(|i| &entries[i])
        .collect();
    let mut tensors = BTreeMap::new();
    let data_start = 8 + n;
    for e in wanted {
        file.seek(SeekFrom::Start(data_start + e.start))
            .map_err(io)?;
        let mut bytes = vec![0u8; (e.end - e.start) as usize];
        file.read_exact(&mut bytes).map_err(io)?;
        let Listed { name, dtype, shape } = &e.listed;
        let values = decode_floats(&source_name, name, dtype, &bytes)?;
        tensors.insert(
            name.clone(),
            HostTensor {
                shape: shape.clone(),
                values,
            },
        );
    }
    Ok(WeightMap {
        source_name,
        tensors,
    })
}

/// The largest pickle a state dict plausibly has: PyTorch's own checkpoints of MAR-H with the
/// optimizer state take well under 1 MB. A pickle's objects take many times its size in
/// memory, so a bigger one is refused before it is parsed.
#[cfg(not(target_arch = "wasm32"))]
pub const MAX_PICKLE_BYTES: u64 = 8 << 20;

/// Refuses a checkpoint whose pickle is over [`MAX_PICKLE_BYTES`]: in a zip, reading only the
/// archive's directory; in a legacy file, walking the opcodes of its leading pickles (no
/// object is built) up to that many bytes.
#[cfg(not(target_arch = "wasm32"))]
fn check_pickle_size(path: &std::path::Path) -> Result<()> {
    use super::pickle_scan::{LEGACY_PICKLES, PickleExtent, pickles_extent};
    let (file, _) = super::atomic::open_regular(path)?;
    let Ok(mut archive) = zip::ZipArchive::new(std::io::BufReader::new(file)) else {
        let (file, _) = super::atomic::open_regular(path)?;
        return match pickles_extent(
            std::io::BufReader::new(file),
            LEGACY_PICKLES,
            MAX_PICKLE_BYTES,
        ) {
            PickleExtent::Exceeds(limit) => Err(format_error(
                &path.display().to_string(),
                format!(
                    "its pickles run past {limit} bytes; a state dict's are far smaller \
                     (refusing to parse them)"
                ),
            )),
            // Within bounds, or not a well-formed legacy file: the reader says what is wrong.
            PickleExtent::Ends(_) | PickleExtent::Malformed => Ok(()),
        };
    };
    for i in 0..archive.len() {
        let Ok(entry) = archive.by_index_raw(i) else {
            continue;
        };
        let name = entry.name().map(|n| n.into_owned()).unwrap_or_default();
        if name.ends_with(".pkl") && entry.size() > MAX_PICKLE_BYTES {
            return Err(format_error(
                &path.display().to_string(),
                format!(
                    "its pickle `{}` is {} bytes; a state dict's is far smaller (at most {} \
                     accepted)",
                    name,
                    entry.size(),
                    MAX_PICKLE_BYTES
                ),
            ));
        }
    }
    Ok(())
}

/// The checkpoint's top-level keys that are memo references to another key's value
/// ([`super::pickle_scan::top_level_aliases`]), read from its pickle (which
/// [`check_pickle_size`] has bounded). Unreadable files have none: the reader reports them.
#[cfg(not(target_arch = "wasm32"))]
fn pickle_aliases(path: &std::path::Path) -> BTreeMap<String, String> {
    use super::pickle_scan::{PickleExtent, pickles_extent, top_level_aliases};
    use std::io::Read;
    let Ok((file, _)) = super::atomic::open_regular(path) else {
        return BTreeMap::new();
    };
    let mut pickle = Vec::new();
    match zip::ZipArchive::new(std::io::BufReader::new(file)) {
        Ok(mut archive) => {
            let Some(name) = archive
                .file_names()
                .filter_map(|n| n.ok())
                .find(|n| n.ends_with("data.pkl"))
                .map(|n| n.into_owned())
            else {
                return BTreeMap::new();
            };
            let Ok(entry) = archive.by_name(&name) else {
                return BTreeMap::new();
            };
            if entry
                .take(MAX_PICKLE_BYTES)
                .read_to_end(&mut pickle)
                .is_err()
            {
                return BTreeMap::new();
            }
        }
        Err(_) => {
            // Legacy: the state dict is the fourth pickle. One walk on disk finds its end; the
            // bytes up to there are read once, and its start is found in them.
            let open = || super::atomic::open_regular(path).ok().map(|(f, _)| f);
            let Some(PickleExtent::Ends(end)) =
                open().map(|f| pickles_extent(std::io::BufReader::new(f), 4, MAX_PICKLE_BYTES))
            else {
                return BTreeMap::new();
            };
            let mut bytes = Vec::new();
            if open().is_none_or(|f| f.take(end).read_to_end(&mut bytes).is_err()) {
                return BTreeMap::new();
            }
            let PickleExtent::Ends(start) = pickles_extent(&bytes[..], 3, end) else {
                return BTreeMap::new();
            };
            pickle = bytes.split_off(start as usize);
        }
    }
    top_level_aliases(&pickle)
}

#[cfg(test)]
mod format_tests {
    use super::*;

    #[test]
    fn the_filter_keeps_every_tensor_a_model_uses() {
        let w = crate::model::MarConfig::fashion().initial_weights(0);
        for k in w.tensors.keys() {
            assert!(is_mar_tensor(k), "{k}");
        }
        // MAR's 14 top-level modules (`models/mar.py`), nothing of the VAE or the optimizer.
        let modules = crate::model::state_dict_modules();
        assert_eq!(modules.len(), 14, "{modules:?}");
        assert!(modules.contains("diffloss") && modules.contains("fake_latent"));
        assert!(!is_mar_tensor("optimizer.state"));
        assert!(!is_mar_tensor("decoder.up.0.block.0.conv1.weight"));
    }

    #[test]
    fn a_first_byte_of_0x80_is_not_a_pickle_when_the_header_parses() {
        let mut head = vec![0x80, 0, 0, 0, 0, 0, 0, 0, b'{'];
        head.extend_from_slice(&[b' '; 20]);
        assert_eq!(detect_format(&head, 1000), FileFormat::Safetensors);
        let legacy = [
            0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19,
            b'.',
        ];
        assert_eq!(detect_format(&legacy, 1000), FileFormat::TorchLegacy);
        assert_eq!(detect_format(b"PK\x03\x04rest", 1000), FileFormat::TorchZip);
        assert_eq!(detect_format(&[0x80, 2, 0, 0], 1000), FileFormat::Unknown);
        assert_eq!(detect_format(&[0u8; 64], 1 << 35), FileFormat::Unknown);
    }
}
