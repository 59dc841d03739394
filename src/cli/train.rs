//! `disa train`: a thin shell over `disa::train` (`disa train-classifier` is in
//! `train_classifier.rs`).

use super::args::ModelArgs;
use super::common::{printable, progress_bar};
use clap::Args;
use disa::data::{CLASS_NAMES, DEBIAN_DIR, FashionMnist};
use disa::defaults::SamplingDefaults;
use disa::model::MarConfig;
use disa::schedule::{CfgSchedule, StepSchedule};
use disa::train::{CHECKPOINTS, TrainSettings, Trainer};
use disa::weights::BundleInfo;
use disa::{DisaError, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args)]
pub struct TrainArgs {
    /// Checkpoint directory (model, EMA, optimizer state, step); `--resume` continues from it.
    #[arg(long)]
    pub out: PathBuf,
    /// Continue the run saved in `--out` (its settings are kept).
    #[arg(long, conflicts_with = "init")]
    pub resume: bool,
    /// Start from these weights instead of a fresh initialization (a disa model file, or
    /// `builtin` for the shipped model): continued training with a fresh optimizer and
    /// warm-up. The configuration must be `--config`'s.
    #[arg(long, value_name = "FILE|builtin")]
    pub init: Option<PathBuf>,
    /// Train until this many optimizer steps in total.
    #[arg(long, default_value_t = 4000)]
    pub steps: usize,
    /// Model configuration: a preset name or a JSON file.
    #[arg(long, default_value = "fashion")]
    pub config: String,
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    #[arg(long, default_value_t = 200)]
    pub warmup: usize,
    #[arg(long, default_value_t = 0.999)]
    pub ema: f64,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Save a checkpoint every this many steps (and at the end).
    #[arg(long, default_value_t = 250)]
    pub save_every: usize,
    /// Draw this share of the training timesteps from the tail `[FROM, 999]` instead of all
    /// of `[0, 999]`, and weight the ε MSE of tail rows by WEIGHT (default: no tail, the
    /// official uniform, unweighted objective). E.g. `0.3:980:30`; FROM defaults to 950 and
    /// WEIGHT to 1. The official no-clip sampler starts at t = 999, where ε̂ must be
    /// accurate to about 1e-3; the uniform draw trains there once in a thousand rows.
    #[arg(long, value_name = "FRACTION[:FROM[:WEIGHT]]", value_parser = parse_tail)]
    pub tail_timesteps: Option<(f64, usize, f32)>,
    /// Directory of the Fashion-MNIST idx files.
    #[arg(long, default_value = DEBIAN_DIR)]
    pub data: PathBuf,
}

fn parse_tail(text: &str) -> std::result::Result<(f64, usize, f32), String> {
    let defaults = TrainSettings::default();
    let mut parts = text.split(':');
    let fraction: f64 = parts
        .next()
        .unwrap_or_default()
        .parse()
        .map_err(|e| format!("FRACTION: {e}"))?;
    let from = match parts.next() {
        Some(f) => f.parse::<usize>().map_err(|e| format!("FROM: {e}"))?,
        None => defaults.tail_from,
    };
    let weight = match parts.next() {
        Some(w) => w.parse::<f32>().map_err(|e| format!("WEIGHT: {e}"))?,
        None => defaults.tail_weight,
    };
    if parts.next().is_some() {
        return Err("expected FRACTION[:FROM[:WEIGHT]]".into());
    }
    // The ranges are the settings' own checks (a resumed run's `state.json` meets them too).
    TrainSettings {
        tail_fraction: fraction,
        tail_from: from,
        tail_weight: weight,
        ..defaults
    }
    .validate()
    .map_err(|e| e.to_string())?;
    Ok((fraction, from, weight))
}

/// Timesteps whose ε MSE is logged at every checkpoint: the no-clip sampler's first steps
/// (999, 989), the clip (950) and the middle.
const PROBE_TIMESTEPS: [usize; 5] = [999, 989, 979, 950, 500];

fn info() -> BundleInfo {
    BundleInfo {
        name: "MAR Fashion-MNIST (disa)".into(),
        class_names: CLASS_NAMES.iter().map(|s| s.to_string()).collect(),
        // Read by the page and by the CLI's commands where no flag is given.
        defaults: SamplingDefaults {
            ar_steps: Some(16),
            schedule: Some(StepSchedule::Linear { start: 50, end: 5 }),
            cfg: Some(3.0),
            cfg_schedule: Some(CfgSchedule::Linear),
            temperature: Some(1.0),
        }
        .to_info(),
        ..BundleInfo::default()
    }
}

/// Fingerprints of the training files, recorded in every checkpoint's metadata.
fn dataset_sources(dir: &std::path::Path) -> Result<Vec<disa::weights::SourceFile>> {
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
        .iter()
        .flat_map(|stem| [format!("{stem}.gz"), stem.to_string()])
        .map(|name| dir.join(name))
        .filter(|p| p.is_file())
        .map(|p| disa::weights::fingerprint(&p))
        .collect()
}

fn config(text: &str) -> Result<MarConfig> {
    disa::weights::config_from_spec(text)
}

/// Resumes the run in `out`, warning about every newer checkpoint skipped as damaged (the
/// steps after the one resumed from are trained again) and saying where it resumes from.
fn resume(out: &std::path::Path, device: &burn::tensor::Device) -> Result<Trainer> {
    let resumed = Trainer::resume_reporting(out, device)?;
    for s in &resumed.skipped {
        eprintln!(
            "warning: skipping the damaged checkpoint {} (step {}), removed at the next save: {}",
            printable(&s.path.display().to_string()),
            s.step,
            printable(&s.reason.to_string())
        );
    }
    let newest = resumed.skipped.first().map(|s| s.step);
    eprintln!(
        "resuming from step {} ({}){}",
        resumed.trainer.step,
        printable(&resumed.checkpoint.display().to_string()),
        match newest {
            Some(newest) => format!(
                ", the newest intact checkpoint: the run continues from there, not from step \
                 {newest}"
            ),
            None => String::new(),
        }
    );
    Ok(resumed.trainer)
}

pub fn train(args: TrainArgs) -> Result<()> {
    // The output folder is checked before any work (the first save comes minutes later).
    disa::weights::atomic::check_output_dir(&args.out, "--out")?;
    let device = burn::tensor::Device::flex().autodiff();
    let mut trainer = if args.resume {
        resume(&args.out, &device)?
    } else {
        if args.out.join("state.json").exists() || args.out.join(CHECKPOINTS).exists() {
            return Err(DisaError::InvalidSetting(format!(
                "{} already holds a run: pass --resume to continue it, or choose another --out",
                args.out.display()
            )));
        }
        let defaults = TrainSettings::default();
        let (tail_fraction, tail_from, tail_weight) = args.tail_timesteps.unwrap_or((
            defaults.tail_fraction,
            defaults.tail_from,
            defaults.tail_weight,
        ));
        let settings = TrainSettings {
            batch_size: args.batch,
            learning_rate: args.lr,
            warmup_steps: args.warmup,
            ema_decay: args.ema,
            seed: args.seed,
            tail_fraction,
            tail_from,
            tail_weight,
            ..defaults
        };
        let config = config(&args.config)?;
        match &args.init {
            None => Trainer::new(config, settings, &device)?,
            Some(path) => {
                let start = ModelArgs {
                    weights: (path.as_os_str() != "builtin").then(|| path.clone()),
                    vae: None,
                    config: None,
                    state_dict: "model_ema".into(),
                }
                .bundle()?;
                if start.config != config {
                    return Err(DisaError::InvalidSetting(format!(
                        "--init {} is a model of another configuration than --config {} \
                         (give the matching --config)",
                        path.display(),
                        args.config
                    )));
                }
                eprintln!("starting from the weights of {}", path.display());
                Trainer::from_weights(config, settings, start.mar, &device)?
            }
        }
    };
    eprintln!("loading Fashion-MNIST from {}", args.data.display());
    let data = FashionMnist::load(&args.data)?;
    let s = trainer.settings.clone();
    if args.resume && args.tail_timesteps.is_some() {
        eprintln!("--tail-timesteps is ignored with --resume: the run keeps its saved settings");
    }
    let mut tail = String::new();
    if s.tail_fraction > 0.0 {
        tail += &format!(
            " · {:.0}% of timesteps from [{}, 999]",
            s.tail_fraction * 100.0,
            s.tail_from
        );
    }
    if s.tail_weight != 1.0 {
        tail += &format!(" · ε MSE ×{} from t={}", s.tail_weight, s.tail_from);
    }
    eprintln!(
        "model {:.2}M parameters · batch {} · lr {} (warm-up {}) · EMA {} · seed {}{tail} · from step {}",
        trainer.config.num_params() as f64 / 1e6,
        s.batch_size,
        s.learning_rate,
        s.warmup_steps,
        s.ema_decay,
        s.seed,
        trainer.step
    );
    let probe = |trainer: &Trainer| -> Result<()> {
        let mse = trainer.probe_mse(&data.train, &PROBE_TIMESTEPS)?;
        let text: Vec<String> = PROBE_TIMESTEPS
            .iter()
            .zip(&mse)
            .map(|(t, m)| format!("t={t} {m:.2e}"))
            .collect();
        eprintln!(
            "step {}: ε MSE on a fixed batch · {}",
            trainer.step,
            text.join(" · ")
        );
        Ok(())
    };
    probe(&trainer)?;
    let bar = progress_bar(
        args.steps as u64,
        "step {pos}/{len} [{bar:30}] {msg} · {per_sec} · {elapsed} (eta {eta})",
        false,
    );
    bar.set_position(trainer.step as u64);
    let info = BundleInfo {
        sources: dataset_sources(&args.data)?,
        ..info()
    };
    let start = std::time::Instant::now();
    let first = trainer.step;
    let mut smooth: Option<f32> = None;
    let interactive = std::io::stderr().is_terminal();
    while trainer.step < args.steps {
        let stats = trainer.train_step(&data.train)?;
        let l = smooth.map_or(stats.loss, |m| 0.98 * m + 0.02 * stats.loss);
        smooth = Some(l);
        bar.set_message(format!(
            "loss {l:.4} (mse {:.4}, vb {:.4})",
            stats.parts.mse, stats.parts.vb
        ));
        bar.inc(1);
        if !interactive && (trainer.step % 50 == 0 || trainer.step == args.steps) {
            // Logs (no terminal, no bar): one line every 50 steps.
            let secs = start.elapsed().as_secs_f64();
            eprintln!(
                "step {}/{} loss {l:.4} (mse {:.4}, vb {:.4}) lr {:.2e} · {:.2} steps/s · {secs:.0} s",
                trainer.step,
                args.steps,
                stats.parts.mse,
                stats.parts.vb,
                stats.learning_rate,
                (trainer.step - first) as f64 / secs.max(1e-9)
            );
        }
        if trainer.step % args.save_every.max(1) == 0 {
            trainer.save(&args.out, &info)?;
            bar.suspend(|| probe(&trainer))?;
        }
    }
    trainer.save(&args.out, &info)?;
    // The last checkpoint's probe, unless the loop just printed it (or no step was taken).
    if trainer.step > first && trainer.step % args.save_every.max(1) != 0 {
        bar.suspend(|| probe(&trainer))?;
    }
    bar.finish();
    let secs = start.elapsed().as_secs_f64();
    let steps = trainer.step - first;
    println!(
        "{steps} steps in {secs:.0} s ({:.2} steps/s, {:.1} images/s); EMA model: {}",
        steps as f64 / secs.max(1e-9),
        (steps * s.batch_size) as f64 / secs.max(1e-9),
        args.out.join("ema.safetensors").display()
    );
    Ok(())
}
