use crate::error::{DisaError, Result};
use std::collections::BTreeMap;

/// A float tensor on the host: row-major f32 values and their shape.
#[derive(Clone, Debug, PartialEq)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub values: Vec<f32>,
}

impl HostTensor {
    /// Element count implied by the shape.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors from one weight file, with the file's name kept for error messages.
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    pub source_name: String,
    pub tensors: BTreeMap<String, HostTensor>,
}

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
    /// Parses a safetensors file held in memory. Non-float tensors are skipped (checkpoints
    /// carry none the model needs); a malformed header or truncated data is an error.
    pub fn from_safetensors_bytes(source_name: &str, bytes: &[u8]) -> Result<Self> {
        let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| {
            format_error(source_name, format!("not a valid safetensors file ({e})"))
        })?;
        Self::from_safetensors(source_name, &st)
    }

    /// The float tensors of a parsed safetensors file (others are skipped).
    pub(crate) fn from_safetensors(
        source_name: &str,
        st: &safetensors::SafeTensors<'_>,
    ) -> Result<Self> {
        let mut tensors = BTreeMap::new();
        for (name, view) in st.tensors() {
            let dtype = format!("{:?}", view.dtype());
            if matches!(dtype.as_str(), "F32" | "F16" | "BF16" | "F64") {
                let values = decode_floats(source_name, &name, &dtype, view.data())?;
                tensors.insert(
                    name,
                    HostTensor {
                        shape: view.shape().to_vec(),
                        values,
                    },
                );
            }
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
        let source_name = path.display().to_string();
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
        let mut tensors = BTreeMap::new();
        for (name, tensor) in reader.into_tensors() {
            let code = match format!("{:?}", tensor.dtype()).as_str() {
                "F32" => "F32",
                "F16" => "F16",
                "BF16" => "BF16",
                "F64" => "F64",
                _ => continue,
            };
            let shape = tensor.shape().to_vec();
            let bytes = tensor.read().map_err(|e| {
                format_error(
                    &source_name,
                    format!("tensor `{name}`: data unreadable ({e})"),
                )
            })?;
            let values = decode_floats(&source_name, &name, code, &bytes)?;
            tensors.insert(name, HostTensor { shape, values });
        }
        if tensors.is_empty() {
            return Err(format_error(
                &source_name,
                "the checkpoint holds no float tensors",
            ));
        }
        Ok(Self {
            source_name,
            tensors,
        })
    }

    /// Whether bytes start like a PyTorch checkpoint (zip container or legacy pickle).
    pub fn looks_like_pytorch(bytes: &[u8]) -> bool {
        bytes.starts_with(b"PK\x03\x04") || bytes.first() == Some(&0x80)
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

    /// Reads a weight file from disk, choosing the format from its first bytes: safetensors or
    /// a PyTorch checkpoint. For a checkpoint, `top_level_key` picks the state dict; `None`
    /// tries `model_ema`, then `model`, then the top level.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn from_path(path: &std::path::Path, top_level_key: Option<&str>) -> Result<Self> {
        use std::io::Read;
        let io = |source| DisaError::Io {
            path: path.display().to_string(),
            source,
        };
        let mut head = [0u8; 8];
        let n = std::fs::File::open(path)
            .and_then(|mut f| f.read(&mut head))
            .map_err(io)?;
        if n < 8 {
            return Err(format_error(
                &path.display().to_string(),
                format!("only {n} bytes: the file is empty or truncated"),
            ));
        }
        if !Self::looks_like_pytorch(&head) {
            let bytes = std::fs::read(path).map_err(io)?;
            return Self::from_safetensors_bytes(&path.display().to_string(), &bytes);
        }
        match top_level_key {
            Some(k) => Self::from_pytorch_path(path, Some(k)),
            None => ["model_ema", "model"]
                .iter()
                .find_map(|k| Self::from_pytorch_path(path, Some(k)).ok())
                .map_or_else(|| Self::from_pytorch_path(path, None), Ok),
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

    /// Whether a tensor is present.
    pub fn contains(&self, key: &str) -> bool {
        self.tensors.contains_key(key)
    }

    /// Shape of a tensor, if present.
    pub fn shape(&self, key: &str) -> Option<&[usize]> {
        self.tensors.get(key).map(|t| t.shape.as_slice())
    }

    /// A tensor by name, checked for presence, exact shape and finiteness.
    pub fn get(&self, key: &str, expected: &[usize]) -> Result<&HostTensor> {
        let t = self.tensors.get(key).ok_or_else(|| {
            let hint = if self.tensors.keys().any(|k| k.starts_with("decoder.up."))
                && !key.starts_with("decoder.")
            {
                " (this looks like a VAE file, not a MAR model)".to_string()
            } else if self.tensors.contains_key("class_emb.weight") && key.starts_with("decoder.up")
            {
                " (this looks like a MAR model, not a VAE)".to_string()
            } else {
                String::new()
            };
            DisaError::MissingTensor {
                source_name: self.source_name.clone(),
                key: key.to_string(),
                hint,
            }
        })?;
        if t.shape != expected {
            return Err(DisaError::ShapeMismatch {
                key: key.to_string(),
                expected: expected.to_vec(),
                found: t.shape.clone(),
            });
        }
        if t.values.len() != t.numel() {
            return Err(format_error(
                &self.source_name,
                format!("tensor `{key}`: data length does not match its shape"),
            ));
        }
        if t.values.iter().any(|v| !v.is_finite()) {
            return Err(DisaError::NonFinite {
                key: key.to_string(),
            });
        }
        Ok(t)
    }

    /// As [`WeightMap::get`], moving the tensor out of the map: a model built by taking its
    /// weights never holds them twice.
    pub fn take(&mut self, key: &str, expected: &[usize]) -> Result<HostTensor> {
        self.get(key, expected)?;
        Ok(self.tensors.remove(key).expect("checked by get"))
    }

    /// Counts the consecutive indexed children `prefix.{0,1,..}.` present.
    pub fn count_indexed(&self, prefix: &str) -> usize {
        (0..)
            .take_while(|i| {
                self.tensors
                    .keys()
                    .any(|k| k.starts_with(&format!("{prefix}.{i}.")))
            })
            .count()
    }
}
