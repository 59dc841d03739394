//! `disa convert`: official weights (MAR checkpoint + VAE + config) to one disa model file, or a
//! model back to the official layout.

use super::args::ModelArgs;
use super::common::{printable, write_file};
use clap::{Args, ValueEnum};
use disa::defaults::SamplingDefaults;
use disa::weights::{Bundle, DecoderSpec, Storage};
use disa::{DisaError, Result};
use std::path::{Path, PathBuf};

#[derive(Args)]
pub struct ConvertArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// A name shown by the page and the CLI.
    #[arg(long)]
    pub name: Option<String>,
    /// Sampling settings the file suggests (what `generate`, `bench`, `eval` and the page use
    /// where the user sets nothing): a JSON object with any of `arSteps`, `schedule`, `cfg`,
    /// `cfgSchedule`, `temperature`, merged over the source's suggestions, e.g. '{"cfg": 4}'.
    #[arg(long, value_name = "JSON")]
    pub defaults: Option<String>,
    /// Output file: a `.safetensors` file with disa metadata; with `--to official`, a PyTorch
    /// checkpoint (`.pth`, `.pt`, `.ckpt`) or safetensors (`.safetensors`). Never one of the
    /// input files (the weights, the VAE, the configuration): that is refused, not
    /// overwritten.
    #[arg(long)]
    pub out: PathBuf,
    /// Tensor storage of a disa model file.
    #[arg(long, value_enum, ignore_case = true, default_value_t = StorageArg::F32)]
    pub storage: StorageArg,
    /// Output layout.
    #[arg(long, value_enum, ignore_case = true, default_value_t = Layout::Disa)]
    pub to: Layout,
    /// Write a model without an image decoder (tokens only) when no VAE is given or found:
    /// without this, converting official weights with no VAE is an error.
    #[arg(long)]
    pub no_decoder: bool,
}

/// `--storage`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum StorageArg {
    /// Every tensor in f32 (lossless).
    F32,
    /// Matrices in f16, vectors in f32: about half the size.
    F16,
    /// Linear weights in Burn's int8 per-block quantization, other matrices f16.
    #[value(alias = "q8")]
    Int8,
    /// As int8 with int4 Linear weights.
    #[value(alias = "q4")]
    Int4,
}

impl From<StorageArg> for Storage {
    fn from(s: StorageArg) -> Self {
        match s {
            StorageArg::F32 => Self::F32,
            StorageArg::F16 => Self::F16,
            StorageArg::Int8 => Self::Int8,
            StorageArg::Int4 => Self::Int4,
        }
    }
}

/// `--to`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Layout {
    /// One self-describing disa model file (what the CLI and the page load).
    Disa,
    /// The MAR state dict under the official key names: a torch.load-able checkpoint with
    /// `model` and `model_ema` (like checkpoint-last.pth), or safetensors for load_state_dict,
    /// chosen by --out's extension.
    Official,
}

/// What `disa convert` writes.
enum ConvertOutput {
    /// A disa model file with this storage.
    Disa(Storage),
    /// The official layout as a PyTorch checkpoint (`model`, `model_ema`).
    TorchCheckpoint,
    /// The official layout as safetensors.
    OfficialSafetensors,
}

impl ConvertOutput {
    /// Checks `--to`, `--storage` and `--out`'s extension together, before any loading. A
    /// device or pipe that exists (`/dev/stdout`) is written whatever its name; a file must
    /// be named for what it holds.
    fn of(args: &ConvertArgs) -> Result<Self> {
        let extension = args
            .out
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        let special = std::fs::metadata(&args.out).is_ok_and(|m| !m.is_file() && !m.is_dir());
        let out = printable(&args.out.display().to_string());
        match args.to {
            Layout::Disa => match extension.as_deref() {
                Some("safetensors") => Ok(Self::Disa(args.storage.into())),
                _ if special => Ok(Self::Disa(args.storage.into())),
                _ => Err(DisaError::InvalidSetting(format!(
                    "--out {out}: a disa model file is safetensors: name it .safetensors (or \
                     give --to official for a .pth/.pt/.ckpt PyTorch checkpoint)"
                ))),
            },
            Layout::Official if args.storage != StorageArg::F32 => Err(DisaError::InvalidSetting(
                "--to official writes f32 (the official checkpoints' dtype)".into(),
            )),
            Layout::Official => match extension.as_deref() {
                Some("pth" | "pt" | "ckpt") => Ok(Self::TorchCheckpoint),
                Some("safetensors") => Ok(Self::OfficialSafetensors),
                // A device or pipe gets the checkpoint form (what torch.load reads).
                _ if special => Ok(Self::TorchCheckpoint),
                _ => Err(DisaError::InvalidSetting(format!(
                    "--to official --out {out}: name the file .pth, .pt or .ckpt (a PyTorch \
                     checkpoint) or .safetensors"
                ))),
            },
        }
    }
}

/// Whether two paths name the same existing file (the same device and inode on Unix, so a
/// symbolic or hard link counts; the same canonical path elsewhere).
fn same_file(a: &Path, b: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        if let (Ok(x), Ok(y)) = (std::fs::metadata(a), std::fs::metadata(b)) {
            return x.dev() == y.dev() && x.ino() == y.ino();
        }
        false
    }
    #[cfg(not(unix))]
    {
        match (std::fs::canonicalize(a), std::fs::canonicalize(b)) {
            (Ok(x), Ok(y)) => x == y,
            _ => false,
        }
    }
}

/// Refuses an `--out` that is one of the files the conversion reads: the weights, the VAE and
/// the configuration, given or found beside the weights. The write is atomic, so it would
/// replace the input wholesale (an exported checkpoint over the original one).
fn check_out_is_not_an_input(args: &ConvertArgs) -> Result<()> {
    // A path that does not exist yet cannot be an input; nor can a device (`/dev/stdout`).
    if !std::fs::metadata(&args.out).is_ok_and(|m| m.is_file()) {
        return Ok(());
    }
    let Some(weights) = &args.model.weights else {
        // The built-in model: no input file.
        return Ok(());
    };
    let dir = weights.parent().unwrap_or(Path::new("."));
    let mut inputs: Vec<(&str, PathBuf)> = vec![("--weights", weights.clone())];
    match &args.model.vae {
        Some(vae) => inputs.push(("--vae", vae.clone())),
        None => inputs.extend(
            ["vae.safetensors", "vae.ckpt"]
                .map(|n| ("the VAE found beside --weights", dir.join(n))),
        ),
    }
    match &args.model.config {
        Some(config) => inputs.push(("--config", PathBuf::from(config))),
        None => inputs.extend(
            ["manifest.json", "config.json"]
                .map(|n| ("the configuration found beside --weights", dir.join(n))),
        ),
    }
    for (what, input) in inputs {
        if same_file(&args.out, &input) {
            return Err(DisaError::InvalidSetting(format!(
                "--out {} is the same file as {what} ({}): converting would overwrite its own \
                 input; choose another --out",
                printable(&args.out.display().to_string()),
                printable(&input.display().to_string())
            )));
        }
    }
    Ok(())
}

pub fn convert(args: ConvertArgs) -> Result<()> {
    disa::weights::atomic::check_output_file(&args.out, "--out", &[])?;
    let output = ConvertOutput::of(&args)?;
    check_out_is_not_an_input(&args)?;
    let given = args.defaults.as_deref().map(parse_defaults).transpose()?;
    if given.is_some() && !matches!(output, ConvertOutput::Disa(_)) {
        return Err(DisaError::InvalidSetting(
            "--defaults: the official layout has no place for suggested settings (only a disa \
             model file keeps them)"
                .into(),
        ));
    }
    let mut bundle = args.model.bundle()?;
    if let Some(name) = args.name {
        bundle.info.name = name;
    }
    if let Some(given) = given {
        let merged = super::args::suggested(&bundle)?.overridden_by(&given);
        // A suggestion the model cannot run (K above its token count) is refused here, not
        // when someone samples with it.
        merged
            .resolve()
            .request(vec![None], disa::sampler::Clip::default())
            .plan(&bundle.config)
            .map_err(|e| match e {
                DisaError::InvalidSetting(why) => {
                    DisaError::InvalidSetting(format!("--defaults: {why}"))
                }
                other => other,
            })?;
        bundle.info.defaults = merged.to_info();
    }
    if matches!(output, ConvertOutput::Disa(_))
        && bundle.decoder == DecoderSpec::None
        && !args.no_decoder
    {
        return Err(DisaError::InvalidSetting(
            "no VAE was given or found beside the weights, so the model could not make images: \
             give --vae FILE, or --no-decoder to write a tokens-only model on purpose"
                .into(),
        ));
    }
    // Build once on the CPU so a file that cannot run is never written.
    bundle.build(&burn::tensor::Device::flex())?;
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let out = args.out.display();
    match output {
        ConvertOutput::Disa(storage) => {
            let bytes = bundle.to_bytes_as(storage)?;
            write_file(&args.out, &bytes)?;
            println!(
                "wrote {out} ({:.2} MB, {} tensors, decoder {:?}; suggests {})",
                mb(bytes.len() as u64),
                bundle.mar.tensors.len() + bundle.vae.as_ref().map_or(0, |v| v.tensors.len()),
                bundle.decoder,
                bundle.info.defaults
            );
        }
        ConvertOutput::TorchCheckpoint => {
            // The official checkpoint's layout; a disa file holds the weights sampling uses,
            // so both keys name them (one copy on disk).
            disa::weights::save_torch_checkpoint(&args.out, &bundle.mar, &["model", "model_ema"])?;
            let bytes = std::fs::metadata(&args.out).map_or(0, |m| m.len());
            println!(
                "wrote {out} ({:.2} MB, PyTorch checkpoint: 'model' and 'model_ema', {} tensors each{})",
                mb(bytes),
                bundle.mar.tensors.len(),
                vae_note(&bundle)
            );
        }
        ConvertOutput::OfficialSafetensors => {
            let config = serde_json::to_string(&bundle.config).expect("config serializes");
            let bytes = bundle
                .mar
                .to_safetensors_bytes(std::collections::HashMap::from([
                    ("format".to_string(), "pt".to_string()),
                    ("mar_ctor_kwargs".to_string(), config),
                ]))?;
            write_file(&args.out, &bytes)?;
            println!(
                "wrote {out} ({:.2} MB, the MAR state dict: {} tensors{})",
                mb(bytes.len() as u64),
                bundle.mar.tensors.len(),
                vae_note(&bundle)
            );
        }
    }
    Ok(())
}

/// `--defaults`: a JSON object of suggested settings, checked as a model file's are.
fn parse_defaults(text: &str) -> Result<SamplingDefaults> {
    let value: serde_json::Value = serde_json::from_str(text)
        .map_err(|e| DisaError::InvalidSetting(format!("--defaults is not JSON: {e}")))?;
    if !value.is_object() {
        return Err(DisaError::InvalidSetting(format!(
            "--defaults {value}: give a JSON object, e.g. '{{\"cfg\": 4}}'"
        )));
    }
    serde_json::from_value(value).map_err(|e| DisaError::InvalidSetting(format!("--defaults: {e}")))
}

/// Said after an official export of a model that has a VAE.
fn vae_note(bundle: &Bundle) -> &'static str {
    if bundle.vae.is_some() {
        "; the VAE is not part of MAR's checkpoint and keeps its own file"
    } else {
        ""
    }
}
