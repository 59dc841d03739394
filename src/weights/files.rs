//! Finding and reading model files on disk (native only): a disa bundle, or the official
//! release files (MAR checkpoint, VAE checkpoint, a configuration).

use super::bundle::Fnv1a;
use super::{Bundle, BundleInfo, DecoderSpec, SourceFile, WeightMap};
use crate::error::{DisaError, Result};
use crate::model::MarConfig;
use std::path::{Path, PathBuf};

/// Where a model comes from.
#[derive(Clone, Debug, Default)]
pub struct ModelFiles {
    /// A disa bundle, or official MAR weights (`.pth` or safetensors).
    pub weights: PathBuf,
    /// The VAE (`.ckpt` or safetensors); default: `vae.safetensors` or `vae.ckpt` beside the
    /// weights. Ignored for bundles.
    pub vae: Option<PathBuf>,
    /// A preset name or a JSON file of MAR's constructor arguments; default: `manifest.json`
    /// or `config.json` beside the weights, else inferred from the weights. Ignored for bundles.
    pub config: Option<String>,
    /// State dict inside a `.pth` checkpoint (`model_ema` or `model`).
    pub state_dict: String,
}

/// Reads a JSON configuration: MAR's constructor arguments, possibly under `mar_ctor_kwargs`
/// (the reference manifests).
pub fn read_config_json(path: &Path) -> Result<MarConfig> {
    let text = std::fs::read_to_string(path).map_err(|source| DisaError::Io {
        path: path.display().to_string(),
        source,
    })?;
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| DisaError::Config(format!("{}: not JSON ({e})", path.display())))?;
    let kwargs = value.get("mar_ctor_kwargs").cloned().unwrap_or(value);
    let config: MarConfig = serde_json::from_value(kwargs)
        .map_err(|e| DisaError::Config(format!("{}: {e}", path.display())))?;
    config.validate()?;
    Ok(config)
}

impl ModelFiles {
    fn dir(&self) -> &Path {
        self.weights.parent().unwrap_or(Path::new("."))
    }

    fn config_for(&self, weights: &WeightMap) -> Result<MarConfig> {
        if let Some(spec) = &self.config {
            return match MarConfig::preset(spec) {
                Some(preset) => Ok(preset),
                None => read_config_json(Path::new(spec)),
            };
        }
        for name in ["manifest.json", "config.json"] {
            let candidate = self.dir().join(name);
            if candidate.exists() {
                return read_config_json(&candidate);
            }
        }
        MarConfig::infer(weights, None)
    }

    fn vae_path(&self) -> Option<PathBuf> {
        if let Some(p) = &self.vae {
            return Some(p.clone());
        }
        ["vae.safetensors", "vae.ckpt"]
            .iter()
            .map(|n| self.dir().join(n))
            .find(|p| p.exists())
    }

    /// Loads the model as a bundle, converting official files on the fly.
    pub fn load(&self) -> Result<Bundle> {
        self.load_with_progress(&mut |_, _| {})
    }

    /// As [`ModelFiles::load`], reporting `(bytes read, file size)` while a safetensors or
    /// bundle file is read (in 4 MiB chunks into one buffer, parsed from there).
    pub fn load_with_progress(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Bundle> {
        let io = |source| DisaError::Io {
            path: self.weights.display().to_string(),
            source,
        };
        let name = self.weights.display().to_string();
        // Sniff the first bytes; a safetensors file is then read once and parsed from memory.
        let head = {
            use std::io::Read;
            let mut buf = [0u8; 8];
            let n = std::fs::File::open(&self.weights)
                .and_then(|mut f| f.read(&mut buf))
                .map_err(io)?;
            buf[..n].to_vec()
        };
        // The weights file is hashed from the bytes already read when it is safetensors.
        let (mar, weights_source) = if head.len() == 8 && !WeightMap::looks_like_pytorch(&head) {
            let bytes = read_with_progress(&self.weights, progress)?;
            if Bundle::is_bundle(&bytes) {
                return Bundle::from_bytes(&name, &bytes);
            }
            (
                WeightMap::from_safetensors_bytes(&name, &bytes)?,
                fingerprint_bytes(&self.weights, &bytes),
            )
        } else {
            (
                WeightMap::from_path(&self.weights, Some(&self.state_dict))?,
                fingerprint(&self.weights)?,
            )
        };
        let config = self.config_for(&mar)?;
        let vae = self
            .vae_path()
            .map(|p| WeightMap::from_path(&p, Some("model")))
            .transpose()?;
        let decoder = if vae.is_some() {
            DecoderSpec::Vae
        } else {
            DecoderSpec::None
        };
        let name = self
            .weights
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let mut sources = vec![weights_source];
        if let Some(p) = self.vae_path() {
            sources.push(fingerprint(&p)?);
        }
        if let Some(p) = self
            .config
            .as_deref()
            .map(Path::new)
            .filter(|p| p.is_file())
        {
            sources.push(fingerprint(p)?);
        }
        Ok(Bundle {
            config,
            decoder,
            info: BundleInfo {
                name,
                sources,
                ..BundleInfo::default()
            },
            mar,
            vae,
            stored: Default::default(),
        })
    }
}

/// Size and FNV-1a hash of a file, read in 1 MiB chunks.
pub fn fingerprint(path: &Path) -> Result<SourceFile> {
    use std::io::Read;
    let io = |source| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut buf = vec![0u8; 1 << 20];
    let (mut h, mut total) = (Fnv1a::new(), 0u64);
    loop {
        let n = file.read(&mut buf).map_err(io)?;
        if n == 0 {
            break;
        }
        h.feed(&buf[..n]);
        total += n as u64;
    }
    Ok(source_file(path, total, h))
}

/// The fingerprint of a file already in memory.
fn fingerprint_bytes(path: &Path, bytes: &[u8]) -> SourceFile {
    let mut h = Fnv1a::new();
    h.feed(bytes);
    source_file(path, bytes.len() as u64, h)
}

fn source_file(path: &Path, bytes: u64, hash: Fnv1a) -> SourceFile {
    SourceFile {
        file: path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        bytes,
        fnv1a64: hash.hex(),
    }
}

/// Reads a whole file into one buffer, calling `progress(read, total)` after every 4 MiB.
pub fn read_with_progress(path: &Path, progress: &mut dyn FnMut(u64, u64)) -> Result<Vec<u8>> {
    use std::io::Read;
    let io = |source| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let total = file.metadata().map_err(io)?.len();
    let mut bytes = Vec::with_capacity(total as usize);
    let mut chunk = vec![0u8; 4 << 20];
    loop {
        let n = file.read(&mut chunk).map_err(io)?;
        if n == 0 {
            break;
        }
        bytes.extend_from_slice(&chunk[..n]);
        progress(bytes.len() as u64, total);
    }
    Ok(bytes)
}
