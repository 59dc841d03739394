//! Finding and reading model files on disk (native only): a disa bundle, or the official
//! release files (MAR checkpoint, VAE checkpoint, a configuration).

use super::bundle::Fnv1a;
use super::limits;
use super::map::{
    Expect, FileFormat, MAX_SAFETENSORS_HEADER, ReadLimits, detect_format, is_mar_tensor,
    is_vae_decoder_tensor, read_safetensors_streaming, sniff_path, unknown_format,
};
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
/// (the reference manifests). It is validated like every configuration, and refused when a
/// model of it would not fit in memory.
pub fn read_config_json(path: &Path) -> Result<MarConfig> {
    let bytes = super::atomic::read_regular(path, 64 << 20, "a configuration file")?;
    let value: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| DisaError::Format(format!("{}: not JSON ({e})", path.display())))?;
    let kwargs = value.get("mar_ctor_kwargs").cloned().unwrap_or(value);
    let config: MarConfig = serde_json::from_value(kwargs)
        .map_err(|e| DisaError::Format(format!("{}: {e}", path.display())))?;
    config.validate()?;
    limits::check_config(&config, 1.0, &format!("the model of {}", path.display()))?;
    Ok(config)
}

/// The preset names `--config` takes.
pub const PRESETS: &str = "mar_base, mar_large, mar_huge, fashion";

/// A `--config` value: a preset name, or a JSON file. A name that is neither says which
/// presets there are.
pub fn config_from_spec(spec: &str) -> Result<MarConfig> {
    if let Some(preset) = MarConfig::preset(spec) {
        return Ok(preset);
    }
    let path = Path::new(spec);
    if !path.exists() {
        return Err(DisaError::InvalidSetting(format!(
            "--config {spec}: neither a preset ({PRESETS}) nor an existing JSON file"
        )));
    }
    read_config_json(path)
}

/// Whether a safetensors file's header carries the disa bundle marker (reads the header only).
fn is_bundle_file(path: &Path) -> Result<bool> {
    use std::io::Read;
    let io = |source| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let (mut file, len) = super::atomic::open_regular(path)?;
    let mut n = [0u8; 8];
    file.read_exact(&mut n).map_err(io)?;
    let n = u64::from_le_bytes(n);
    if n > MAX_SAFETENSORS_HEADER || n.saturating_add(8) > len {
        return Ok(false);
    }
    let mut header = vec![0u8; n as usize];
    file.read_exact(&mut header).map_err(io)?;
    let value: serde_json::Value = serde_json::from_slice(&header).unwrap_or_default();
    Ok(value["__metadata__"]["format"].as_str() == Some(super::bundle::FORMAT))
}

impl ModelFiles {
    fn dir(&self) -> &Path {
        self.weights.parent().unwrap_or(Path::new("."))
    }

    /// The configuration given (`--config`) or found beside the weights, if any, with where
    /// it came from (for messages).
    fn given_config(&self) -> Result<Option<(MarConfig, String)>> {
        if let Some(spec) = &self.config {
            return config_from_spec(spec).map(|c| Some((c, format!("--config {spec}"))));
        }
        for name in ["manifest.json", "config.json"] {
            let candidate = self.dir().join(name);
            if candidate.exists() {
                let origin = format!("{}, found beside the weights", candidate.display());
                return read_config_json(&candidate).map(|c| Some((c, origin)));
            }
        }
        Ok(None)
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

    /// As [`ModelFiles::load`], reporting `(bytes read, file size)` while a bundle file is read
    /// (in 4 MiB chunks into one buffer, parsed from there). Official weights are read tensor
    /// by tensor, only those the model uses, within what the configuration allows; a file
    /// holding tensors the model would not use (a configuration with fewer blocks than the
    /// weights, another model's file) is refused naming them, before any is read.
    pub fn load_with_progress(&self, progress: &mut dyn FnMut(u64, u64)) -> Result<Bundle> {
        let name = self.weights.display().to_string();
        let (head, len) = sniff_path(&self.weights)?;
        let format = detect_format(&head, len);
        if format == FileFormat::Unknown {
            return Err(unknown_format(&name, &head, len));
        }
        if format == FileFormat::Safetensors && is_bundle_file(&self.weights)? {
            if self.config.is_some() || self.vae.is_some() {
                return Err(DisaError::InvalidSetting(format!(
                    "{name} is a disa model file, which carries its own configuration and \
                     decoder: --config and --vae apply to official weights only; drop them"
                )));
            }
            // The file and the tensors parsed from it.
            limits::check_fits(&format!("reading {name}"), len as f64 * 2.0)?;
            let bytes = read_with_progress(&self.weights, progress)?;
            return Bundle::from_bytes(&name, &bytes);
        }
        let (given, origin) = self.given_config()?.unzip();
        // Every tensor of the file must be one the model takes: the others are refused by
        // name before any is read (a configuration with fewer blocks than the weights, or
        // another model's file, would otherwise draw other images without a word).
        let read_limits = ReadLimits {
            keep: is_mar_tensor,
            max_values: given.as_ref().map(limits::config_params),
            expect: Expect::Mar {
                config: given.clone(),
                origin,
            },
        };
        let mar = match format {
            FileFormat::Safetensors => read_safetensors_streaming(&self.weights, &read_limits)?,
            FileFormat::TorchZip | FileFormat::TorchLegacy => {
                WeightMap::read_path(&self.weights, Some(&self.state_dict), &read_limits)?
            }
            FileFormat::Unknown => return Err(unknown_format(&name, &head, len)),
        };
        progress(len, len);
        let weights_source = fingerprint(&self.weights)?;
        let config = match given {
            Some(c) => c,
            None => MarConfig::infer(&mar, None)?,
        };
        limits::check_config(&config, 1.0, "the model")?;
        let vae_limits = ReadLimits {
            keep: is_vae_decoder_tensor,
            max_values: None,
            expect: Expect::VaeDecoder,
        };
        let vae = self
            .vae_path()
            .map(|p| WeightMap::read_path(&p, Some("model"), &vae_limits))
            .transpose()?;
        if let Some(vae) = &vae {
            super::usage::check_vae_unused(vae)?;
        }
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
            quantized: Default::default(),
        })
    }
}

/// Size and FNV-1a hash of a file, read in 64 KiB chunks.
pub fn fingerprint(path: &Path) -> Result<SourceFile> {
    use std::io::Read;
    let io = |source| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let (mut file, _) = super::atomic::open_regular(path)?;
    let mut buf = vec![0u8; 64 << 10];
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
    let (file, total) = super::atomic::open_regular(path)?;
    // Never more than the size seen when opened (a file that grows is cut there).
    let mut file = file.take(total);
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
