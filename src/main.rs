//! The `disa` command-line program: a thin shell over the library.

mod cli;

use clap::{Args, Parser, Subcommand};
use disa::backend::Backend;
use disa::diffusion::TimestepClip;
use disa::image::{RgbImage, grid, images_from_tensor};
use disa::noise::SeededNoise;
use disa::sampler::{Generation, Kernels, Request, StepTimings};
use disa::schedule::{self, CfgSchedule, StepSchedule};
use disa::weights::ModelFiles;
use disa::{DisaError, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "disa",
    version,
    about = "MAR image generation with DiSA diffusion step annealing"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate images and write a PNG.
    Generate(GenerateArgs),
    /// Print the per-step plan of a schedule: tokens revealed, diffusion steps, totals.
    Schedule(ScheduleArgs),
    /// Convert official weights (MAR checkpoint + VAE + config) to one disa model file (f32, f16,
    /// int8, int4), or a model back to the official layout (`--to official`).
    Convert(ConvertArgs),
    /// Time schedules against a baseline in one run: ms per image and speed-up ratios.
    Bench(BenchArgs),
    /// Train a MAR on Fashion-MNIST with the official objective (checkpoints, resume).
    Train(cli::train::TrainArgs),
    /// Train the Fashion-MNIST classifier that `disa eval` scores samples with.
    TrainClassifier(cli::train::ClassifierArgs),
    /// Score schedules: classifier accuracy and Fréchet distance of generated images, with cost.
    Eval(cli::eval::EvalArgs),
    /// DiSA's evidence on one generation: spread, straightness and predictability of the
    /// tokens per AR step, as CSV and an SVG plot.
    Analyze(cli::analyze::AnalyzeArgs),
}

#[derive(Args)]
struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Time a preset's shapes (mar_base, mar_large, mar_huge, fashion) with freshly initialized
    /// weights instead of a model file: speed does not depend on the weights' values.
    #[arg(long, conflicts_with = "weights")]
    shapes: Option<String>,
    /// Schedules to time; the first is the baseline the ratios refer to.
    #[arg(
        long,
        value_delimiter = ';',
        default_value = "constant:100;constant:50;linear:50:5;cosine:50:5;two-stage:50:5"
    )]
    schedules: Vec<String>,
    /// AR steps K.
    #[arg(long, default_value_t = 64)]
    ar_steps: usize,
    /// Classifier-free guidance scale.
    #[arg(long, default_value_t = 1.0)]
    cfg: f32,
    /// Images per generation.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Timed repetitions per schedule (after one untimed warm-up); the median is reported.
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Compute backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// Head implementations to time, comma-separated (each schedule runs with each, in one
    /// run): fused (WGSL kernels, wgpu only), tensor (Burn's operations), auto.
    #[arg(long, value_delimiter = ',', default_value = "auto")]
    kernels: Vec<Kernels>,
    /// Timestep clip for every schedule: 950 (DiSA), none (MAR), default (950 for DiSA
    /// schedules, none for constant ones, as their reference code).
    #[arg(long, default_value = "default")]
    clip: String,
}

#[derive(Args)]
struct ConvertArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// A name shown by the page and the CLI.
    #[arg(long)]
    name: Option<String>,
    /// Output file: safetensors with disa metadata; with `--to official`, a PyTorch checkpoint
    /// (`.pth`, `.pt`, `.ckpt`) or safetensors (`.safetensors`).
    #[arg(long)]
    out: PathBuf,
    /// Tensor storage: f32 (lossless), f16 (matrices in f16, about half the size), int8 or int4
    /// (Linear weights in Burn's per-block quantization, other matrices f16).
    #[arg(long, default_value = "f32")]
    storage: String,
    /// Output layout: disa (one self-describing file) or official (the MAR state dict under the
    /// official key names: a `torch.load`-able checkpoint with `model` and `model_ema`, like
    /// `checkpoint-last.pth`, or safetensors for `load_state_dict`, chosen by `--out`'s extension).
    #[arg(long, default_value = "disa")]
    to: String,
    /// Write a model without an image decoder (tokens only) when no VAE is given or found:
    /// without this, converting official weights with no VAE is an error.
    #[arg(long)]
    no_decoder: bool,
}

/// K when neither the command line nor the model says.
const DEFAULT_AR_STEPS: usize = 64;

/// Sampling settings a model file suggests (`info.defaults`, also read by the page).
#[derive(Default)]
struct Suggested {
    ar_steps: Option<usize>,
    cfg: Option<f32>,
}

impl From<&serde_json::Value> for Suggested {
    fn from(v: &serde_json::Value) -> Self {
        Self {
            ar_steps: v["arSteps"].as_u64().map(|k| k as usize),
            cfg: v["cfg"].as_f64().map(|c| c as f32),
        }
    }
}

#[derive(Args, Clone)]
struct SamplingArgs {
    /// AR steps K [default: the model's suggestion, else 64].
    #[arg(long)]
    ar_steps: Option<usize>,
    /// Diffusion steps per AR step: constant:N, linear:START:END, cosine:START:END,
    /// two-stage:START:END or custom:N,N,...
    #[arg(long, default_value = "linear:50:5")]
    schedule: String,
    /// Timestep clip: 950 (DiSA), none (MAR), or default (950 for DiSA schedules, none for constant).
    #[arg(long, default_value = "default")]
    clip: String,
    /// Classifier-free guidance scale, 1 = off [default: the model's suggestion, else 1].
    #[arg(long)]
    cfg: Option<f32>,
    /// How the CFG scale grows over the AR steps: linear or constant.
    #[arg(long, default_value = "linear")]
    cfg_schedule: String,
}

#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A disa model file, or official MAR weights (checkpoint .pth or safetensors); default:
    /// the built-in Fashion-MNIST model.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// VAE weights (.ckpt or safetensors); default: vae.safetensors or vae.ckpt beside the weights.
    #[arg(long)]
    vae: Option<PathBuf>,
    /// Model configuration: a preset (mar_base, mar_large, mar_huge) or a JSON file of MAR's
    /// constructor arguments (a reference manifest.json works); default: manifest.json or
    /// config.json beside the weights, else inferred from the weights.
    #[arg(long)]
    config: Option<String>,
    /// State dict inside a .pth checkpoint: model_ema (default) or model.
    #[arg(long, default_value = "model_ema")]
    state_dict: String,
}

/// The Fashion-MNIST MAR trained by this project (`disa train`, see the README), int8 storage.
pub const SHIPPED_MODEL: &[u8] = include_bytes!("../www/assets/model.safetensors");
/// The classifier `disa eval` scores with (`disa train-classifier`).
pub const SHIPPED_CLASSIFIER: &[u8] = include_bytes!("../www/assets/classifier.safetensors");

impl ModelArgs {
    /// The model these arguments name: files on disk, or the built-in model.
    fn bundle(&self) -> Result<disa::weights::Bundle> {
        match &self.weights {
            Some(weights) => {
                // A byte progress bar for files big enough to wait for (official checkpoints).
                let big = std::fs::metadata(weights).is_ok_and(|m| m.len() > 64 << 20);
                let bar = if big {
                    ProgressBar::new(0)
                } else {
                    ProgressBar::hidden()
                };
                bar.set_style(
                    ProgressStyle::with_template(
                        "reading weights [{bar:30}] {bytes}/{total_bytes}",
                    )
                    .expect("valid template")
                    .progress_chars("=> "),
                );
                let bundle = ModelFiles {
                    weights: weights.clone(),
                    vae: self.vae.clone(),
                    config: self.config.clone(),
                    state_dict: self.state_dict.clone(),
                }
                .load_with_progress(&mut |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                });
                bar.finish_and_clear();
                bundle
            }
            None if self.vae.is_some() || self.config.is_some() => Err(DisaError::InvalidSetting(
                "--vae and --config describe official weights: give --weights too".into(),
            )),
            None => {
                disa::weights::Bundle::from_bytes("built-in Fashion-MNIST model", SHIPPED_MODEL)
            }
        }
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Class label(s), comma-separated; omit for unconditional generation.
    #[arg(long = "class", value_delimiter = ',')]
    classes: Vec<usize>,
    /// Images per class.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Random seed (orders and noise).
    #[arg(long, default_value_t = 0)]
    seed: u64,
    #[command(flatten)]
    sampling: SamplingArgs,
    /// Noise temperature.
    #[arg(long, default_value_t = 1.0)]
    temperature: f32,
    /// Compute backend: cpu or wgpu.
    #[arg(long, default_value = "cpu")]
    backend: String,
    /// The diffusion head's sampling loop: fused (the WGSL kernels of shaders/, wgpu only),
    /// tensor (Burn's operations), or auto (fused where available).
    #[arg(long, default_value = "auto")]
    kernels: Kernels,
    /// Output image: PNG, or PPM if the name ends in .ppm (a grid when several images).
    #[arg(long, default_value = "disa.png")]
    out: PathBuf,
    /// Enlarge the output by this integer factor (nearest neighbour), e.g. 4 for 32×32 images.
    #[arg(long, default_value_t = 1)]
    scale: usize,
    /// No progress bar or table.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args)]
struct ScheduleArgs {
    /// Tokens per image (256 for MAR at 256×256).
    #[arg(long, default_value_t = 256)]
    tokens: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
}

fn parse_clip(text: &str) -> Result<Option<TimestepClip>> {
    match text.trim().to_ascii_lowercase().as_str() {
        "default" => Ok(None),
        "none" | "off" => Ok(Some(TimestepClip::NONE)),
        n => n
            .parse::<usize>()
            .map(|c| Some(TimestepClip(Some(c))))
            .map_err(|_| {
                DisaError::InvalidSetting(format!("clip `{text}`: use a timestep, none or default"))
            }),
    }
}

/// Writes a file atomically (temporary file, flush, sync, rename), naming it in the error.
fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    disa::weights::write_atomic(path, bytes)
}

/// The image types `generate --out` writes.
const IMAGE_EXTENSIONS: &[&str] = &["png", "ppm"];

/// Text from a file or the command line made safe for a terminal: control characters (escape
/// sequences) are shown escaped instead of being sent to it.
fn printable(text: &str) -> String {
    text.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\n' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Images a request may hold before its memory is estimated at all.
const MAX_IMAGES: usize = 1 << 20;

/// Refuses `images` images of `config` (doubled rows with guidance) that would not fit in
/// memory, before anything is allocated for them.
fn check_batch(config: &disa::model::MarConfig, images: usize, cfg: f32) -> Result<()> {
    if images > MAX_IMAGES {
        return Err(DisaError::InvalidSetting(format!(
            "{images} images at once is more than the {MAX_IMAGES} accepted: lower --batch"
        )));
    }
    disa::weights::limits::check_fits(
        &format!("generating {images} images at once (lower --batch)"),
        disa::weights::limits::sampling_bytes(config, images as f64, cfg != 1.0),
    )
}

/// Writes a PNG, or a binary PPM when the name ends in `.ppm` (handy for scripts and tests).
fn write_image(path: &Path, img: &RgbImage) -> Result<()> {
    let io = |source: std::io::Error| DisaError::Io {
        path: path.display().to_string(),
        source,
    };
    let extension = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match extension.as_deref() {
        Some("ppm") => {
            let mut bytes = format!("P6\n{} {}\n255\n", img.width, img.height).into_bytes();
            bytes.extend_from_slice(&img.pixels);
            return write_file(path, &bytes);
        }
        Some("png") => {}
        _ => {
            return Err(DisaError::InvalidSetting(format!(
                "--out {}: unknown image type; accepted: .png, .ppm",
                path.display()
            )));
        }
    }
    // Encoded in memory (images are small), then written atomically.
    let mut png_bytes = Vec::new();
    let mut encoder = png::Encoder::new(&mut png_bytes, img.width as u32, img.height as u32);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder
        .write_header()
        .map_err(|e| io(std::io::Error::other(e)))?;
    writer
        .write_image_data(&img.pixels)
        .map_err(|e| io(std::io::Error::other(e)))?;
    writer.finish().map_err(|e| io(std::io::Error::other(e)))?;
    write_file(path, &png_bytes)
}

fn generate(args: GenerateArgs) -> Result<()> {
    if !(1..=16).contains(&args.scale) {
        return Err(DisaError::InvalidSetting(format!(
            "scale {} must be in 1..=16",
            args.scale
        )));
    }
    // Settings and the output path are checked before any loading or sampling.
    disa::weights::atomic::check_output_file(&args.out, "--out", IMAGE_EXTENSIONS)?;
    let classes: Vec<Option<usize>> = if args.classes.is_empty() {
        vec![None]
    } else {
        args.classes.iter().map(|&c| Some(c)).collect()
    };
    if args.batch == 0 {
        return Err(DisaError::InvalidSetting("batch must be at least 1".into()));
    }
    let images = classes.len().checked_mul(args.batch).unwrap_or(usize::MAX);
    if images > MAX_IMAGES {
        return Err(DisaError::InvalidSetting(format!(
            "{} images at once is more than the {MAX_IMAGES} accepted: lower --batch",
            images
        )));
    }
    let backend: Backend = args.backend.parse()?;
    let device = backend.device()?;
    let bundle = args.model.bundle()?;
    let suggested = Suggested::from(&bundle.info.defaults);
    check_batch(
        &bundle.config,
        images,
        args.sampling.cfg.or(suggested.cfg).unwrap_or(1.0),
    )?;
    let generator = Arc::new(bundle.into_generator(&device)?);

    let labels: Vec<Option<usize>> = classes
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, args.batch))
        .collect();
    let request = Request {
        labels,
        ar_steps: args
            .sampling
            .ar_steps
            .or(suggested.ar_steps)
            .unwrap_or(DEFAULT_AR_STEPS),
        schedule: StepSchedule::parse(&args.sampling.schedule)?,
        clip: parse_clip(&args.sampling.clip)?,
        cfg: args.sampling.cfg.or(suggested.cfg).unwrap_or(1.0),
        cfg_schedule: CfgSchedule::parse(&args.sampling.cfg_schedule)?,
        temperature: args.temperature,
    };
    let mut generation = Generation::new(
        generator.clone(),
        request.clone(),
        Box::new(SeededNoise::new(args.seed)),
    )?
    .kernels(args.kernels);
    let bar = if args.quiet {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(request.ar_steps as u64)
    };
    bar.set_style(
        ProgressStyle::with_template("{spinner} AR step {pos}/{len} [{bar:30}] {msg} ({elapsed})")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let start = disa::sampler::now_ms();
    let mut totals = StepTimings::default();
    while let Some(event) = generation.step()? {
        // A model that overflows is stopped at the step it does, not found black at the end.
        disa::image::check_finite(
            generation.tokens(),
            &format!("at AR step {}", generation.steps_done()),
        )?;
        totals.transformer_ms += event.timings.transformer_ms;
        totals.head_ms += event.timings.head_ms;
        bar.set_message(format!(
            "{} tokens × {} steps",
            event.tokens_per_image(),
            event.effective_steps
        ));
        bar.inc(1);
    }
    bar.finish_and_clear();
    let t_decode = disa::sampler::now_ms();
    let decoded = generation.decode().ok_or_else(|| {
        DisaError::Config(
            "this model has no image decoder (it was converted with --no-decoder, or without a \
             VAE): convert the official weights again with --vae"
                .into(),
        )
    })?;
    let images = images_from_tensor(decoded)?;
    let decode_ms = disa::sampler::now_ms() - t_decode;
    let total_ms = disa::sampler::now_ms() - start;
    let columns = if args.batch > 1 {
        args.batch
    } else {
        images.len()
    };
    let sheet = grid(&images, columns)
        .expect("at least one image")
        .upscaled(args.scale);
    write_image(&args.out, &sheet)?;
    if !args.quiet {
        println!(
            "wrote {} ({} image(s), {}×{} each)",
            args.out.display(),
            images.len(),
            images[0].width,
            images[0].height
        );
        println!(
            "schedule {} · K={} · cfg {} ({}) · backend {backend} · head {}",
            request.schedule,
            request.ar_steps,
            request.cfg,
            request.cfg_schedule,
            if generation.uses_fused_kernels() {
                "fused kernels"
            } else {
                "tensor ops"
            }
        );
        println!("{:<14}{:>10}{:>8}", "phase", "ms", "share");
        for (name, ms) in [
            ("transformer", totals.transformer_ms),
            ("diffusion head", totals.head_ms),
            ("decode", decode_ms),
        ] {
            println!("{name:<14}{ms:>10.1}{:>7.1}%", 100.0 * ms / total_ms);
        }
        println!("{:<14}{total_ms:>10.1}", "total");
        let plan = generation.plan();
        println!(
            "sequential head calls {} · token·steps per image {}",
            plan.head_calls(),
            plan.token_steps()
        );
    }
    Ok(())
}

fn bench(args: BenchArgs) -> Result<()> {
    let backend: Backend = args.backend.parse()?;
    if args.repeats == 0 || args.batch == 0 {
        return Err(DisaError::InvalidSetting(
            "repeats and batch must be at least 1".into(),
        ));
    }
    let device = backend.device()?;
    let bundle = match &args.shapes {
        Some(name) => {
            let config = disa::model::MarConfig::preset(name).ok_or_else(|| {
                DisaError::InvalidSetting(format!(
                    "--shapes {name}: use mar_base, mar_large, mar_huge or fashion"
                ))
            })?;
            eprintln!(
                "initializing {name} ({:.0}M parameters) with random weights…",
                config.num_params() as f64 / 1e6
            );
            let mut bundle = disa::weights::Bundle::initialized(config, 0);
            bundle.info.name = format!("{name} (random weights)");
            bundle
        }
        None => args.model.bundle()?,
    };
    println!("model {}", printable(&bundle.info.name));
    let generator = Arc::new(bundle.into_generator(&device)?);
    let classes = generator.config.class_num;
    println!(
        "backend {backend} · K={} · cfg {} · clip {} · batch {} · median of {} (after a warm-up)",
        args.ar_steps, args.cfg, args.clip, args.batch, args.repeats
    );
    let param_bytes = 4 * generator.config.num_params() as u64;
    match generator.fused_head() {
        Some(fused) => println!(
            "GPU weights: {:.2} MB for Burn's modules (f32) + {:.2} MB for the fused head \
             (as stored; {} dispatches per head call)",
            param_bytes as f64 / 1e6,
            fused.weight_bytes() as f64 / 1e6,
            fused.dispatches_per_head_call()
        ),
        None if backend == Backend::Wgpu => println!(
            "GPU weights: {:.2} MB (f32) · no fused head: {}",
            param_bytes as f64 / 1e6,
            generator.fused_unavailable()
        ),
        None => {}
    }
    println!(
        "{:<18}{:>8}{:>12}{:>12}{:>12}{:>12}{:>10}{:>12}",
        "schedule",
        "head",
        "ms/image",
        "head ms",
        "head calls",
        "launches",
        "speed-up",
        "head-call ×"
    );
    let mut baseline: Option<(f64, usize)> = None;
    for text in &args.schedules {
        let request = Request {
            labels: (0..args.batch).map(|i| Some(i % classes)).collect(),
            ar_steps: args.ar_steps,
            schedule: StepSchedule::parse(text)?,
            clip: parse_clip(&args.clip)?,
            cfg: args.cfg,
            cfg_schedule: CfgSchedule::Linear,
            temperature: 1.0,
        };
        let head_calls = request.plan(&generator.config)?.head_calls();
        for &kernels in &args.kernels {
            let mut times = Vec::new();
            let mut head_times = Vec::new();
            let mut fused = false;
            let before = generator.fused_head().map_or(0, |f| f.dispatches());
            for rep in 0..=args.repeats {
                let start = disa::sampler::now_ms();
                let mut generation = Generation::new(
                    generator.clone(),
                    request.clone(),
                    Box::new(SeededNoise::new(rep as u64)),
                )?
                .kernels(kernels);
                fused = generation.uses_fused_kernels();
                let events = generation.run_to_end()?;
                if rep > 0 {
                    times.push((disa::sampler::now_ms() - start) / args.batch as f64);
                    head_times.push(
                        events.iter().map(|e| e.timings.head_ms).sum::<f64>() / args.batch as f64,
                    );
                }
            }
            // Fused launches are counted exactly; Burn's are not visible from here.
            let launches = match generator.fused_head() {
                Some(f) if fused => {
                    format!("{}", (f.dispatches() - before) / (args.repeats as u64 + 1))
                }
                _ => "-".to_string(),
            };
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (ms, head_ms) = (median(&mut times), median(&mut head_times));
            let (base_ms, base_calls) = *baseline.get_or_insert((ms, head_calls));
            let head = if fused { "fused" } else { "tensor" };
            println!(
                "{text:<18}{head:>8}{ms:>12.1}{head_ms:>12.1}{head_calls:>12}{launches:>12}{:>9.2}×{:>11.2}×",
                base_ms / ms,
                base_calls as f64 / head_calls as f64
            );
        }
    }
    println!("(sampling only: transformer + diffusion head; decoding is not timed)");
    Ok(())
}

/// What `disa convert` writes.
enum ConvertOutput {
    /// A disa model file with this storage.
    Disa(disa::weights::Storage),
    /// The official layout as a PyTorch checkpoint (`model`, `model_ema`).
    TorchCheckpoint,
    /// The official layout as safetensors.
    OfficialSafetensors,
}

impl ConvertOutput {
    /// Checks `--to`, `--storage` and `--out`'s extension together, before any loading.
    fn of(args: &ConvertArgs) -> Result<Self> {
        match args.to.to_ascii_lowercase().as_str() {
            "disa" => Ok(Self::Disa(disa::weights::Storage::parse(&args.storage)?)),
            "official" if args.storage != "f32" => Err(DisaError::InvalidSetting(
                "--to official writes f32 (the official checkpoints' dtype)".into(),
            )),
            "official" => {
                let extension = args
                    .out
                    .extension()
                    .map(|e| e.to_string_lossy().to_ascii_lowercase());
                match extension.as_deref() {
                    Some("pth" | "pt" | "ckpt") => Ok(Self::TorchCheckpoint),
                    Some("safetensors") => Ok(Self::OfficialSafetensors),
                    _ => Err(DisaError::InvalidSetting(format!(
                        "--to official --out {}: name the file .pth (a PyTorch checkpoint) or \
                         .safetensors",
                        args.out.display()
                    ))),
                }
            }
            other => Err(DisaError::InvalidSetting(format!(
                "--to {other}: use disa or official"
            ))),
        }
    }
}

fn convert(args: ConvertArgs) -> Result<()> {
    let output = ConvertOutput::of(&args)?;
    disa::weights::atomic::check_output_file(&args.out, "--out", &[])?;
    let mut bundle = args.model.bundle()?;
    if let Some(name) = args.name {
        bundle.info.name = name;
    }
    if matches!(output, ConvertOutput::Disa(_))
        && bundle.decoder == disa::weights::DecoderSpec::None
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
                "wrote {out} ({:.2} MB, {} tensors, decoder {:?})",
                mb(bytes.len() as u64),
                bundle.mar.tensors.len() + bundle.vae.as_ref().map_or(0, |v| v.tensors.len()),
                bundle.decoder
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

/// Said after an official export of a model that has a VAE.
fn vae_note(bundle: &disa::weights::Bundle) -> &'static str {
    if bundle.vae.is_some() {
        "; the VAE is not part of MAR's checkpoint and keeps its own file"
    } else {
        ""
    }
}

/// Writes to standard output; a closed one (`disa schedule | head -2`) ends the output
/// normally instead of failing.
fn print_out(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DisaError::Io {
            path: "standard output".into(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn print_schedule(args: ScheduleArgs) -> Result<()> {
    use std::fmt::Write;
    let s = &args.sampling;
    let sched = StepSchedule::parse(&s.schedule)?;
    let ar_steps = s.ar_steps.unwrap_or(DEFAULT_AR_STEPS);
    // The settings go through the same validation as `generate`'s, on a model with this many
    // tokens (MAR's token grid is square).
    let side = (args.tokens as f64).sqrt().round() as usize;
    if args.tokens == 0 || side * side != args.tokens {
        return Err(DisaError::InvalidSetting(format!(
            "--tokens {}: MAR's token grid is square; give a square number (256 = 16×16)",
            args.tokens
        )));
    }
    let config = disa::model::MarConfig {
        img_size: side,
        vae_stride: 1,
        patch_size: 1,
        ..disa::model::MarConfig::fashion()
    };
    let request = Request {
        labels: vec![None],
        ar_steps,
        schedule: sched.clone(),
        clip: parse_clip(&s.clip)?,
        cfg: s.cfg.unwrap_or(1.0),
        cfg_schedule: CfgSchedule::parse(&s.cfg_schedule)?,
        temperature: 1.0,
    };
    request.validate(&config)?;
    let clip = request.effective_clip();
    let plan = schedule::plan(
        ar_steps,
        args.tokens,
        &sched,
        clip,
        request.cfg,
        request.cfg_schedule,
    )?;
    let clip_text = clip.0.map_or("none".to_string(), |c| c.to_string());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "schedule {sched} · K={ar_steps} · {} tokens · timestep clip {clip_text}",
        args.tokens
    );
    let _ = writeln!(
        text,
        "{:>4} {:>7} {:>9} {:>8} {:>10} {:>6}",
        "k", "tokens", "masked", "nominal", "effective", "cfg"
    );
    for st in &plan.steps {
        let _ = writeln!(
            text,
            "{:>4} {:>7} {:>9} {:>8} {:>10} {:>6.3}",
            st.k, st.tokens, st.mask_len_after, st.nominal_steps, st.effective_steps, st.cfg
        );
    }
    let tokens: usize = plan.steps.iter().map(|s| s.tokens).sum();
    let _ = writeln!(text, "sequential head calls: {}", plan.head_calls());
    let _ = writeln!(
        text,
        "token·steps: {} (mean {:.1} steps per token)",
        plan.token_steps(),
        plan.token_steps() as f64 / tokens as f64
    );
    print_out(&text)
}

/// A closed standard output (`| head`) ends any command quietly with success: `println!`
/// panics on it, and this hook turns that one panic into a normal exit.
fn exit_quietly_on_closed_stdout() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let message = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default_hook(info)
    }));
}

fn main() -> ExitCode {
    exit_quietly_on_closed_stdout();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Generate(a) => generate(a),
        Command::Schedule(a) => print_schedule(a),
        Command::Convert(a) => convert(a),
        Command::Bench(a) => bench(a),
        Command::Train(a) => cli::train::train(a),
        Command::TrainClassifier(a) => cli::train::train_classifier(a),
        Command::Eval(a) => cli::eval::eval(a),
        Command::Analyze(a) => cli::analyze::analyze(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", printable(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}
