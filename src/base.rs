//! Base types every layer shares, and nothing above them: named host tensors ([`HostTensor`],
//! [`WeightMap`]) and the clock ([`now_ms`]). The model builds from a `WeightMap`, the weight
//! file formats (`weights`) fill one, and neither needs the other for it.

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

/// Named tensors (official state-dict names), with the name of the file they came from kept
/// for error messages. Reading and writing files is `weights`' business (`WeightMap::from_path`
/// and friends are defined there).
#[derive(Clone, Debug, Default)]
pub struct WeightMap {
    pub source_name: String,
    pub tensors: BTreeMap<String, HostTensor>,
}

impl WeightMap {
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
            return Err(DisaError::WeightFormat {
                source_name: self.source_name.clone(),
                reason: format!("tensor `{key}`: data length does not match its shape"),
            });
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
        self.tensors
            .remove(key)
            .ok_or_else(|| DisaError::Internal(format!("`{key}` vanished between get and take")))
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

/// Monotonic clock in milliseconds that works natively and in the browser.
pub fn now_ms() -> f64 {
    #[cfg(target_arch = "wasm32")]
    {
        js_sys::Date::now()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        use std::sync::OnceLock;
        use std::time::Instant;
        static START: OnceLock<Instant> = OnceLock::new();
        START.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3
    }
}
