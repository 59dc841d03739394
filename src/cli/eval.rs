//! `disa eval`: the quality-vs-cost table. One row per K and schedule (with its clip), every
//! accuracy and Fréchet distance with a bootstrap confidence interval, and the real test
//! images' own figures at the same sample size as the floor.

use super::args::{
    CfgScheduleArg, Clip, ModelArgs, SHIPPED_CLASSIFIER, check_flags, parse_clip, suggested,
};
use super::common::{MAX_IMAGES, check_batch, printable, progress_bar};
use clap::Args;
use disa::data::{DEBIAN_DIR, FashionMnist};
use disa::defaults::{Sampling, SamplingDefaults};
use disa::eval::bootstrap::Bootstrap;
use disa::eval::classifier::{self, Classifier};
use disa::eval::{EvalRow, EvalSettings, Yardstick, balanced_subset, evaluate, gather};
use disa::schedule::StepSchedule;
use disa::{DisaError, Result};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

/// The rows of a full evaluation: both baselines (the official code's constant 100 without a
/// clip, and the same clipped at 950 like DiSA), then DiSA's schedules.
pub const DEFAULT_ROWS: &str = "constant:100@none;constant:100@950;linear:50:5;cosine:50:5;\
                                two-stage:50:5;linear:25:5;cosine:25:5;two-stage:25:5";
/// The rows of `--quick`.
pub const QUICK_ROWS: &str = "constant:100@none;constant:100@950;linear:50:5";
/// K values evaluated besides the model's default.
const DEFAULT_KS: [usize; 3] = [8, 16, 32];

/// One row's schedule and clip: `SCHEDULE[@CLIP]`.
#[derive(Clone, Debug)]
pub struct RowSpec {
    pub schedule: StepSchedule,
    /// `None`: `--clip`.
    pub clip: Option<Clip>,
}

impl fmt::Display for RowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.clip {
            Some(c) => write!(f, "{}@{c}", self.schedule),
            None => write!(f, "{}", self.schedule),
        }
    }
}

/// `--schedules`' parser: a schedule, optionally `@` a clip (`none`, `default` or a timestep).
pub fn parse_row(text: &str) -> std::result::Result<RowSpec, String> {
    let (schedule, clip) = match text.split_once('@') {
        Some((s, c)) => (s, Some(parse_clip(c)?)),
        None => (text, None),
    };
    Ok(RowSpec {
        schedule: super::args::parse_schedule(schedule.trim())?,
        clip,
    })
}

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Classifier weights (from `disa train-classifier`); default: the shipped CNN.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images generated per class for every row [default: 100, i.e. 1,000 images; --quick:
    /// 10].
    #[arg(long)]
    pub per_class: Option<usize>,
    /// Images per generation call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// AR step counts K, comma-separated (one block of rows each) [default: the model's
    /// default K, then 8, 16, 32; --quick: the model's default].
    #[arg(long, value_delimiter = ',')]
    pub ar_steps: Option<Vec<usize>>,
    /// Rows, separated by `;`: a schedule with an optional `@clip` (`@none`, `@950`,
    /// `@default`; without one, --clip). Constant-step rows are the baselines: every one gets
    /// an FD-ratio column, and the speed-up is against the first [default: both baselines
    /// (constant:100@none, constant:100@950), then linear, cosine and two-stage at 50→5 and
    /// 25→5; --quick: the baselines and linear:50:5].
    #[arg(long, value_delimiter = ';', value_parser = parse_row)]
    pub schedules: Option<Vec<RowSpec>>,
    /// Classifier-free guidance scale in 1..=1000, 1 = off [default: the model's suggestion,
    /// else 1].
    #[arg(long)]
    pub cfg: Option<f32>,
    /// How the CFG scale grows over the AR steps [default: the model's suggestion, else
    /// linear].
    #[arg(long, value_enum, ignore_case = true)]
    pub cfg_schedule: Option<CfgScheduleArg>,
    /// Noise temperature in 0..=100 [default: the model's suggestion, else 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Timestep clip of rows without `@clip`: default (950 for DiSA schedules, none for
    /// constant ones, as the official code), none, or a timestep (950).
    #[arg(long, default_value = "default", value_parser = parse_clip)]
    pub clip: Clip,
    /// Bootstrap resamples per figure, in 2..=100000 [default: 500; --quick: 100].
    #[arg(long)]
    pub bootstrap: Option<usize>,
    /// Confidence level of the intervals.
    #[arg(long, default_value_t = 0.95)]
    pub level: f64,
    /// Training images (class-balanced, seeded) whose features are the Fréchet reference
    /// [default: 10000; --quick: 2000].
    #[arg(long)]
    pub reference: Option<usize>,
    /// Small defaults for a quick look (and tests): 10 images per class, the model's K only,
    /// three rows, 100 resamples, 2,000 reference images. Explicit flags still win.
    #[arg(long)]
    pub quick: bool,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the Fashion-MNIST idx files (training images: the reference; test
    /// images: the floor).
    #[arg(long, default_value = DEBIAN_DIR)]
    pub data: PathBuf,
}

/// The most bootstrap resamples `--bootstrap` accepts: intervals settle within a few thousand,
/// and each resample recomputes every figure (a Fréchet distance's matrix square root).
pub const MAX_BOOTSTRAP: usize = 100_000;

/// `K` values in order, repeats dropped.
fn distinct(ks: impl IntoIterator<Item = usize>) -> Vec<usize> {
    let mut out: Vec<usize> = Vec::new();
    for k in ks {
        if !out.contains(&k) {
            out.push(k);
        }
    }
    out
}

/// A fraction with its interval as percentages, one decimal.
fn percent(e: disa::eval::bootstrap::Estimate) -> String {
    format!("{:.1}", e.scaled(100.0))
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let cpu = burn::tensor::Device::flex();
    let quick = args.quick;
    let per_class = args.per_class.unwrap_or(if quick { 10 } else { 100 });
    let bootstrap = Bootstrap {
        resamples: args.bootstrap.unwrap_or(if quick { 100 } else { 500 }),
        level: args.level,
        seed: args.seed,
    };
    bootstrap.validate()?;
    if bootstrap.resamples > MAX_BOOTSTRAP {
        return Err(DisaError::InvalidSetting(format!(
            "--bootstrap {}: at most {MAX_BOOTSTRAP} resamples (a few thousand already give \
             steady intervals)",
            bootstrap.resamples
        )));
    }
    let reference_images = args.reference.unwrap_or(if quick { 2000 } else { 10_000 });
    let classes = classifier::CLASSES;
    if reference_images < classes || !reference_images.is_multiple_of(classes) {
        return Err(DisaError::InvalidSetting(format!(
            "--reference {reference_images}: give a multiple of the {classes} classes"
        )));
    }
    if per_class < 1 || args.batch == 0 {
        return Err(DisaError::InvalidSetting(
            "--per-class and --batch must be at least 1".into(),
        ));
    }
    if args.batch > MAX_IMAGES {
        return Err(DisaError::InvalidSetting(format!(
            "--batch {} is more than the {MAX_IMAGES} images accepted at once",
            args.batch
        )));
    }
    let rows = match &args.schedules {
        Some(r) if r.is_empty() => {
            return Err(DisaError::InvalidSetting(
                "--schedules lists no rows".into(),
            ));
        }
        Some(r) => r.clone(),
        None => (if quick { QUICK_ROWS } else { DEFAULT_ROWS })
            .split(';')
            .map(|r| parse_row(r).map_err(DisaError::InvalidSetting))
            .collect::<Result<_>>()?,
    };
    // Every row's K and schedule come from --ar-steps and --schedules; the other settings as
    // in `generate`. The flags given are checked before anything is loaded: each row's with
    // each K given.
    let flags = SamplingDefaults {
        cfg: args.cfg,
        cfg_schedule: args.cfg_schedule.map(Into::into),
        temperature: args.temperature,
        ..SamplingDefaults::default()
    };
    check_flags(&flags, args.clip)?;
    let given_ks: Vec<Option<usize>> = match &args.ar_steps {
        Some(ks) => ks.iter().map(|&k| Some(k)).collect(),
        None => vec![None],
    };
    for k in given_ks {
        for row in &rows {
            let row_flags = SamplingDefaults {
                ar_steps: k,
                schedule: Some(row.schedule.clone()),
                ..flags.clone()
            };
            check_flags(&row_flags, row.clip.unwrap_or(args.clip))?;
        }
    }
    let bundle = args.model.bundle()?;
    let model_name = printable(&bundle.info.name);
    let sampling = suggested(&bundle)?.overridden_by(&flags).resolve();
    let ks = match &args.ar_steps {
        Some(ks) if ks.is_empty() => {
            return Err(DisaError::InvalidSetting("--ar-steps lists no K".into()));
        }
        Some(ks) => distinct(ks.iter().copied()),
        None if quick => vec![sampling.ar_steps],
        None => distinct(std::iter::once(sampling.ar_steps).chain(DEFAULT_KS)),
    };
    // Every image of a row is kept for the Fréchet distance: its count and the batch are
    // checked against memory before any is generated.
    let total = per_class
        .checked_mul(bundle.config.class_num)
        .filter(|&n| n <= MAX_IMAGES)
        .ok_or_else(|| {
            DisaError::InvalidSetting(format!(
                "--per-class {per_class} × {} classes is more than the {MAX_IMAGES} images \
                 accepted",
                bundle.config.class_num,
            ))
        })?;
    if total < 2 {
        return Err(DisaError::InvalidSetting(
            "a Fréchet distance needs at least two images per row: raise --per-class".into(),
        ));
    }
    check_batch(&bundle.config, args.batch.min(total), sampling.cfg)?;
    // Every row's request is checked before the first is generated (a bad K or clip fails
    // now, not an hour in).
    let templates: Vec<(usize, &RowSpec, disa::Request)> = ks
        .iter()
        .flat_map(|&k| rows.iter().map(move |row| (k, row)))
        .map(|(k, row)| {
            let template = Sampling {
                ar_steps: k,
                schedule: row.schedule.clone(),
                ..sampling.clone()
            }
            .request(vec![Some(0)], row.clip.unwrap_or(args.clip));
            template
                .validate(&bundle.config)
                .map(|_| (k, row, template))
        })
        .collect::<Result<_>>()?;
    let generator = Arc::new(bundle.into_generator(&cpu)?);
    if generator.config.class_num != classes {
        return Err(DisaError::Config(format!(
            "eval scores Fashion-MNIST's {classes} classes; this model has {}",
            generator.config.class_num
        )));
    }
    let classifier = match &args.classifier {
        Some(p) => {
            let bytes = disa::weights::atomic::read_regular(p, 1 << 30, "a classifier file")?;
            Classifier::from_bytes(&p.display().to_string(), &bytes, &cpu)?
        }
        None => Classifier::from_bytes("built-in classifier", SHIPPED_CLASSIFIER, &cpu)?,
    };
    let data = FashionMnist::load(&args.data)?;
    let test_acc = classifier.accuracy(&data.test.images.pixels, &data.test.labels, &cpu)?;
    let chosen = balanced_subset(
        &data.train.labels,
        classes,
        reference_images / classes,
        args.seed,
    )?;
    let yardstick = Yardstick::new(
        classifier,
        &gather(&data.train.images.pixels, &chosen),
        bootstrap,
        &cpu,
    )?;
    // The floor: real test images, as many per class as each row generates.
    let floor_idx = balanced_subset(&data.test.labels, classes, per_class, args.seed)?;
    let floor_labels: Vec<usize> = floor_idx
        .iter()
        .map(|&i| data.test.labels[i] as usize)
        .collect();
    let floor = yardstick.score(
        &gather(&data.test.images.pixels, &floor_idx),
        &floor_labels,
        &cpu,
    )?;
    println!(
        "model {model_name} · {per_class} images per class ({total} per row) · cfg {} ({}) · \
         temperature {} · seed {}",
        sampling.cfg, sampling.cfg_schedule, sampling.temperature, args.seed
    );
    let widths = yardstick.classifier.widths();
    println!(
        "classifier test accuracy {:.2}% (CNN {}→{} channels, all 10,000 test images) · \
         Fréchet distance in its {}-d penultimate features to {} training images · {:.0}% \
         bootstrap intervals over {} resamples (seed {})",
        100.0 * test_acc,
        widths.conv1,
        widths.conv2,
        classifier::FEATURES,
        yardstick.reference_images,
        100.0 * bootstrap.level,
        bootstrap.resamples,
        bootstrap.seed
    );
    println!();
    // Baselines: the constant-step rows (the first row if there is none).
    let baselines: Vec<usize> = {
        let constant: Vec<usize> = (0..rows.len())
            .filter(|&i| matches!(rows[i].schedule, StepSchedule::Constant(_)))
            .collect();
        if constant.is_empty() {
            vec![0]
        } else {
            constant
        }
    };
    let level = format!("{:.0}% CI", 100.0 * bootstrap.level);
    let mut header = format!(
        "| K | schedule | clip | head calls | token·steps | s / image | speed-up | accuracy % \
         [{level}] | Fréchet [{level}] |"
    );
    for &b in &baselines {
        header.push_str(&format!(" FD ÷ {} |", rows[b]));
    }
    println!("{header}");
    println!("|{}", "---|".repeat(9 + baselines.len()));
    let dash = " – |".repeat(baselines.len());
    println!(
        "| – | real test images (floor) | – | – | – | – | – | {} | {:.3} |{dash}",
        percent(floor.accuracy),
        floor.frechet
    );
    for block in templates.chunks(rows.len()) {
        let mut done: Vec<EvalRow> = Vec::with_capacity(rows.len());
        for (k, row, template) in block {
            let clip = match template.effective_clip().0 {
                Some(t) => t.to_string(),
                None => "none".to_string(),
            };
            let bar = progress_bar(
                total as u64,
                &format!("K={k} {row} [{{bar:30}}] {{pos}}/{{len}} images ({{elapsed}})"),
                false,
            );
            let settings = EvalSettings {
                per_class,
                batch: args.batch,
                seed: args.seed,
            };
            let result = evaluate(&generator, &yardstick, template, &settings, |d, _| {
                bar.set_position(d as u64)
            })?;
            bar.finish_and_clear();
            done.push(result);
            let r = done.last().expect("just pushed");
            // Baselines are listed before they are used only if they come first; a ratio to a
            // later baseline is filled in from its own row once it exists.
            let first = baselines[0];
            let speed = done.get(first).map_or("–".to_string(), |b| {
                format!("{:.2}×", b.seconds / r.seconds)
            });
            let mut line = format!(
                "| {k} | {} | {clip} | {} | {} | {:.3} | {speed} | {} | {:.3} |",
                r.schedule,
                r.head_calls,
                r.token_steps,
                r.seconds / r.score.images as f64,
                percent(r.score.accuracy),
                r.score.frechet,
            );
            for &b in &baselines {
                match done.get(b) {
                    Some(base) => line.push_str(&format!(
                        " {:.3} |",
                        r.score.frechet.value / base.score.frechet.value
                    )),
                    None => line.push_str(" – |"),
                }
            }
            println!("{line}");
        }
    }
    Ok(())
}
