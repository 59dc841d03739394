//! The project's weight file: one safetensors file holding the MAR tensors under their
//! official names, the decoder's tensors under `vae.`, and metadata that makes it
//! self-describing (model configuration, decoder kind, class names, format version). Both the
//! CLI and the browser load it, from a path or from bytes. Building a runnable model from it is
//! `src/load.rs`' job: the file formats sit below the model and the sampler.

use super::quant::{self, Bits};
use crate::base::{HostTensor, WeightMap};
use crate::error::{DisaError, Result};
use crate::model::MarConfig;
use std::collections::{BTreeMap, HashMap};

/// The `format` metadata value that marks a disa bundle.
pub const FORMAT: &str = "disa";
/// The bundle format version this build writes and reads.
pub const FORMAT_VERSION: u32 = 1;
/// Prefix of the decoder's tensors inside a bundle.
const VAE_PREFIX: &str = "vae.";

/// How a bundle's tokens become pixels.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum DecoderSpec {
    /// KL VAE decoder, tensors under `vae.`.
    Vae,
    /// Pixel patches normalized by `scale`.
    Patch { scale: f32 },
    /// Tokens only.
    None,
}

/// Descriptive metadata carried by a bundle.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BundleInfo {
    /// A short name shown to users.
    pub name: String,
    /// Class names, index = label (may be empty).
    #[serde(default)]
    pub class_names: Vec<String>,
    /// Suggested sampling defaults as a JSON object (AR steps, schedule, cfg, ...).
    #[serde(default)]
    pub defaults: serde_json::Value,
    /// The files this model was converted from, with their sizes and hashes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<SourceFile>,
}

/// One input file of a conversion, fingerprinted so a model can be traced to its origin.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SourceFile {
    /// File name (without directories).
    pub file: String,
    pub bytes: u64,
    /// FNV-1a (64-bit) of the file's bytes, hex.
    pub fnv1a64: String,
}

/// How a bundle stores its tensors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Storage {
    /// Every tensor in f32 (lossless).
    F32,
    /// Matrices and embeddings (2-D and up) in f16, vectors (norms, biases) in f32: about half
    /// the size.
    F16,
    /// Linear weights in Burn's int8 per-block(32) quantization, other matrices in f16,
    /// vectors in f32.
    Int8,
    /// As `Int8` with int4 Linear weights.
    Int4,
}

impl Storage {
    /// Parses `f32`, `f16`, `int8` or `int4`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "int8" | "q8" => Ok(Self::Int8),
            "int4" | "q4" => Ok(Self::Int4),
            _ => Err(DisaError::InvalidSetting(format!(
                "storage `{text}`: use f32, f16, int8 or int4"
            ))),
        }
    }

    /// The name written to the file's metadata.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Int8 => "int8",
            Self::Int4 => "int4",
        }
    }

    fn bits(self) -> Option<Bits> {
        match self {
            Self::Int8 => Some(Bits::Int8),
            Self::Int4 => Some(Bits::Int4),
            _ => None,
        }
    }

    fn halves(self, t: &HostTensor) -> bool {
        self != Self::F32 && t.shape.len() >= 2
    }
}

/// How one quantized tensor is stored (the `quantized` metadata, by tensor name).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct QuantEntry {
    shape: Vec<usize>,
    bits: Bits,
}

/// A model in the project's format, in memory.
#[derive(Clone, Debug)]
pub struct Bundle {
    pub config: MarConfig,
    pub decoder: DecoderSpec,
    pub info: BundleInfo,
    /// MAR tensors (official names).
    pub mar: WeightMap,
    /// Decoder tensors (official VAE names, without the `vae.` prefix).
    pub vae: Option<WeightMap>,
    /// The stored form of the diffusion head's tensors that the file kept in less than f32
    /// (their f32 values are in `mar`): the GPU kernels run them as stored.
    pub stored: BTreeMap<String, StoredForm>,
    /// Every tensor the file stored quantized (official names): on a GPU these Linear weights
    /// are put back into their stored form and stay quantized in Burn's modules.
    pub quantized: BTreeMap<String, Bits>,
}

/// How a file stored a tensor that is not plain f32.
#[derive(Clone, Debug, PartialEq)]
pub enum StoredForm {
    /// f16 values (exactly the f32 values in the map, rounded already).
    F16,
    /// Burn's per-block quantization: the file's bytes (values, then one f32 scale per 32).
    Quantized { bits: Bits, bytes: Vec<u8> },
}

/// Tensors whose stored form is kept: the diffusion head's (small next to the transformer).
const KEEP_STORED_PREFIX: &str = "diffloss.net.";

fn meta_error(source: &str, reason: impl Into<String>) -> DisaError {
    DisaError::WeightFormat {
        source_name: source.to_string(),
        reason: reason.into(),
    }
}

impl Bundle {
    /// Whether safetensors bytes carry the bundle marker (cheap: reads the header only).
    pub fn is_bundle(bytes: &[u8]) -> bool {
        safetensors::SafeTensors::read_metadata(bytes)
            .ok()
            .and_then(|(_, m)| m.metadata().as_ref().and_then(|m| m.get("format").cloned()))
            .is_some_and(|f| f == FORMAT)
    }

    /// Parses a bundle from bytes (the browser's path).
    pub fn from_bytes(source_name: &str, bytes: &[u8]) -> Result<Self> {
        if bytes.len() < 8 {
            return Err(meta_error(
                source_name,
                format!("only {} bytes: the file is empty or truncated", bytes.len()),
            ));
        }
        let (_, header) = safetensors::SafeTensors::read_metadata(bytes)
            .map_err(|e| meta_error(source_name, format!("not a valid safetensors file ({e})")))?;
        let meta: HashMap<String, String> = header.metadata().clone().unwrap_or_default();
        match meta.get("format").map(String::as_str) {
            Some(FORMAT) => {}
            _ => {
                return Err(meta_error(
                    source_name,
                    "not a disa model file (no `format: disa` metadata); convert official \
                     weights with `disa convert`",
                ));
            }
        }
        let version: u32 = meta
            .get("format_version")
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| meta_error(source_name, "missing or unreadable format_version"))?;
        if version != FORMAT_VERSION {
            return Err(meta_error(
                source_name,
                format!("format version {version}; this build reads version {FORMAT_VERSION}"),
            ));
        }
        let json = |key: &str| -> Result<&String> {
            meta.get(key)
                .ok_or_else(|| meta_error(source_name, format!("metadata `{key}` missing")))
        };
        let config: MarConfig = serde_json::from_str(json("config")?)
            .map_err(|e| meta_error(source_name, format!("metadata `config`: {e}")))?;
        config.validate()?;
        // Sizes from the file's metadata are checked before anything is built from them.
        super::limits::check_config(&config, 1.0, &format!("the model of {source_name}"))?;
        let decoder: DecoderSpec = serde_json::from_str(json("decoder")?)
            .map_err(|e| meta_error(source_name, format!("metadata `decoder`: {e}")))?;
        let info: BundleInfo = match meta.get("info") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| meta_error(source_name, format!("metadata `info`: {e}")))?,
            None => BundleInfo::default(),
        };
        let expected_hash = json("content_hash")?.clone();
        // One parse of the header serves the float tensors and the quantized ones.
        let st = safetensors::SafeTensors::deserialize(bytes)
            .map_err(|e| meta_error(source_name, format!("not a valid safetensors file ({e})")))?;
        let entries: BTreeMap<String, QuantEntry> = match meta.get("quantized") {
            Some(text) => serde_json::from_str(text)
                .map_err(|e| meta_error(source_name, format!("metadata `quantized`: {e}")))?,
            None => BTreeMap::new(),
        };
        // The quantized tensors' bytes are decoded below; any other tensor must be a float.
        let mut all =
            WeightMap::from_safetensors(source_name, &st, &|name| entries.contains_key(name))?;
        let mut stored: BTreeMap<String, StoredForm> = st
            .tensors()
            .into_iter()
            .filter(|(name, view)| {
                name.starts_with(KEEP_STORED_PREFIX) && view.dtype() == safetensors::Dtype::F16
            })
            .map(|(name, _)| (name, StoredForm::F16))
            .collect();
        let mut quantized = BTreeMap::new();
        for (name, entry) in entries {
            quantized.insert(name.clone(), entry.bits);
            let view = st.tensor(&name).map_err(|_| {
                meta_error(source_name, format!("quantized tensor `{name}` is missing"))
            })?;
            if view.dtype() != safetensors::Dtype::U8 {
                return Err(meta_error(
                    source_name,
                    format!("quantized tensor `{name}` is not stored as bytes"),
                ));
            }
            let t = quant::decode(view.data(), &entry.shape, entry.bits)
                .map_err(|e| meta_error(source_name, format!("tensor `{name}`: {e}")))?;
            if name.starts_with(KEEP_STORED_PREFIX) {
                stored.insert(
                    name.clone(),
                    StoredForm::Quantized {
                        bits: entry.bits,
                        bytes: view.data().to_vec(),
                    },
                );
            }
            all.tensors.insert(name, t);
        }
        let mut sorted: Vec<(&String, &HostTensor)> = all.tensors.iter().collect();
        sorted.sort_by(|a, b| a.0.cmp(b.0));
        let found_hash = content_hash(sorted.into_iter().map(|(k, t)| (k.as_str(), t)));
        if found_hash != expected_hash {
            return Err(meta_error(
                source_name,
                format!(
                    "tensor data is corrupt (content hash {found_hash}, the file says {expected_hash})"
                ),
            ));
        }
        let mut mar = BTreeMap::new();
        let mut vae = BTreeMap::new();
        for (k, t) in all.tensors {
            match k.strip_prefix(VAE_PREFIX) {
                Some(rest) => vae.insert(rest.to_string(), t),
                None => mar.insert(k, t),
            };
        }
        let vae = (!vae.is_empty()).then(|| WeightMap {
            source_name: source_name.to_string(),
            tensors: vae,
        });
        if decoder == DecoderSpec::Vae && vae.is_none() {
            return Err(meta_error(
                source_name,
                "declares a VAE decoder but holds no `vae.` tensors",
            ));
        }
        if let (false, Some(vae)) = (decoder == DecoderSpec::Vae, &vae) {
            return Err(meta_error(
                source_name,
                format!(
                    "holds {} `vae.` tensor(s) ({}) but declares no VAE decoder: they would be \
                     ignored; the file was edited or mislabelled",
                    vae.tensors.len(),
                    vae.tensors
                        .keys()
                        .take(3)
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            ));
        }
        // Tensors the model or decoder would not take are refused, not ignored.
        super::usage::check_mar_unused(
            source_name,
            mar.iter().map(|(k, t)| (k.as_str(), t.numel() as f64)),
            &config,
            Some("the `config` in the file's metadata"),
        )?;
        if let Some(vae) = &vae {
            super::usage::check_vae_unused(vae)?;
        }
        Ok(Self {
            config,
            decoder,
            info,
            mar: WeightMap {
                source_name: source_name.to_string(),
                tensors: mar,
            },
            vae,
            stored,
            quantized,
        })
    }

    /// Serializes to safetensors bytes, every tensor in f32.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        self.to_bytes_as(Storage::F32)
    }

    /// Serializes to safetensors bytes with the given storage. The content hash covers the
    /// values as they will load (after f16 rounding).
    pub fn to_bytes_as(&self, storage: Storage) -> Result<Vec<u8>> {
        let entries = named_entries(&self.mar, self.vae.as_ref());
        let mut quantized: BTreeMap<String, QuantEntry> = BTreeMap::new();
        let stored: Vec<(String, HostTensor, safetensors::Dtype, Vec<u8>)> = entries
            .into_iter()
            .map(|(k, t)| {
                if let Some(bits) = storage.bits().filter(|_| quant::quantizable(&k, t)) {
                    let (data, loaded) = quant::encode(t, bits)?;
                    quantized.insert(
                        k.clone(),
                        QuantEntry {
                            shape: t.shape.clone(),
                            bits,
                        },
                    );
                    return Ok((k, loaded, safetensors::Dtype::U8, data));
                }
                if storage.halves(t) {
                    if let Some(v) = t
                        .values
                        .iter()
                        .find(|v| v.abs() > f32::from(half::f16::MAX))
                    {
                        return Err(DisaError::InvalidSetting(format!(
                            "tensor `{k}` holds {v}, beyond f16's range: store it as f32"
                        )));
                    }
                    let halves: Vec<half::f16> =
                        t.values.iter().map(|&v| half::f16::from_f32(v)).collect();
                    let rounded = HostTensor {
                        shape: t.shape.clone(),
                        values: halves.iter().map(|h| h.to_f32()).collect(),
                    };
                    let data = halves.iter().flat_map(|h| h.to_le_bytes()).collect();
                    Ok((k, rounded, safetensors::Dtype::F16, data))
                } else {
                    let data = t.values.iter().flat_map(|v| v.to_le_bytes()).collect();
                    Ok((k, t.clone(), safetensors::Dtype::F32, data))
                }
            })
            .collect::<Result<_>>()?;
        let hash = content_hash(stored.iter().map(|(k, t, _, _)| (k.as_str(), t)));
        let bytes: Vec<(String, Vec<usize>, safetensors::Dtype, Vec<u8>)> = stored
            .into_iter()
            .map(|(k, t, dtype, data)| {
                // A quantized tensor is a flat byte array; its shape is in `quantized`.
                let shape = if dtype == safetensors::Dtype::U8 {
                    vec![data.len()]
                } else {
                    t.shape
                };
                (k, shape, dtype, data)
            })
            .collect();
        let views = bytes
            .iter()
            .map(|(k, shape, dtype, data)| {
                safetensors::tensor::TensorView::new(*dtype, shape.clone(), data)
                    .map(|v| (k.clone(), v))
                    .map_err(|e| DisaError::Internal(format!("tensor `{k}`: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), FORMAT.to_string());
        meta.insert("format_version".to_string(), FORMAT_VERSION.to_string());
        meta.insert("config".to_string(), to_json(&self.config));
        meta.insert("decoder".to_string(), to_json(&self.decoder));
        meta.insert("info".to_string(), to_json(&self.info));
        let scheme = match storage.bits() {
            Some(Bits::Int8) => "burn q8f symmetric per-block 32 (linear weights)",
            Some(Bits::Int4) => "burn q4f symmetric per-block 32 (linear weights)",
            None => "none",
        };
        meta.insert("quantization".to_string(), scheme.to_string());
        if !quantized.is_empty() {
            meta.insert("quantized".to_string(), to_json(&quantized));
        }
        meta.insert("storage".to_string(), storage.name().to_string());
        meta.insert("content_hash".to_string(), hash);
        safetensors::serialize(views, Some(meta))
            .map_err(|e| DisaError::Internal(format!("serializing a bundle: {e}")))
    }

    /// A MAR of `config` with the official initialization (seeded) and no decoder: for timing
    /// and sizing, which do not depend on the weights' values.
    pub fn initialized(config: MarConfig, seed: u64) -> Self {
        Self {
            mar: config.initial_weights(seed),
            config,
            decoder: DecoderSpec::None,
            info: BundleInfo::default(),
            vae: None,
            stored: BTreeMap::new(),
            quantized: BTreeMap::new(),
        }
    }
}

/// FNV-1a over every tensor's name, shape and little-endian f32 values, in name
/// order: detects corrupted tensor data, which the format's structure alone cannot.
fn content_hash<'a>(entries: impl Iterator<Item = (&'a str, &'a HostTensor)>) -> String {
    let mut h = Fnv1a::new();
    for (name, t) in entries {
        h.feed(name.as_bytes());
        for d in &t.shape {
            h.feed(&(*d as u64).to_le_bytes());
        }
        for v in &t.values {
            h.feed(&v.to_le_bytes());
        }
    }
    h.hex()
}

/// FNV-1a, 64-bit: the hash of model contents and of source files.
pub(crate) struct Fnv1a(u64);

impl Fnv1a {
    pub(crate) fn new() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }

    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
        }
    }

    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

/// Every tensor of a bundle under its file name (`vae.` prefix for the decoder), sorted.
fn named_entries<'a>(
    mar: &'a WeightMap,
    vae: Option<&'a WeightMap>,
) -> Vec<(String, &'a HostTensor)> {
    let mut entries: Vec<(String, &HostTensor)> =
        mar.tensors.iter().map(|(k, t)| (k.clone(), t)).collect();
    if let Some(vae) = vae {
        entries.extend(
            vae.tensors
                .iter()
                .map(|(k, t)| (format!("{VAE_PREFIX}{k}"), t)),
        );
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    entries
}

/// A metadata value as a JSON string.
fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("metadata serializes")
}
