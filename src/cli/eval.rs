//! `disa eval`: the quality-vs-cost table, one row per schedule and K.

use super::args::{CfgScheduleArg, Clip, ModelArgs, SHIPPED_CLASSIFIER, parse_clip, suggested};
use super::common::{MAX_IMAGES, check_batch, printable, progress_bar};
use clap::Args;
use disa::data::{DEBIAN_DIR, FashionMnist};
use disa::defaults::{Sampling, SamplingDefaults};
use disa::eval::classifier::{self, Classifier};
use disa::eval::frechet::Gaussian;
use disa::eval::{EvalRow, EvalSettings, evaluate};
use disa::schedule::StepSchedule;
use disa::{DisaError, Result};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Classifier weights (from `disa train-classifier`); default: the shipped one.
    #[arg(long)]
    pub classifier: Option<PathBuf>,
    /// Images generated per class for every row.
    #[arg(long, default_value_t = 100)]
    pub per_class: usize,
    /// Images per generation call.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// AR step counts K to compare, comma-separated (one block of rows each).
    #[arg(long, value_delimiter = ',', default_value = "16,8")]
    pub ar_steps: Vec<usize>,
    /// Schedules to compare, separated by `;`; the first is the baseline of the ratio columns.
    #[arg(
        long,
        value_delimiter = ';',
        value_parser = super::args::parse_schedule,
        default_value = "constant:100;constant:50;linear:50:5;cosine:50:5;two-stage:50:5"
    )]
    pub schedules: Vec<StepSchedule>,
    /// Classifier-free guidance scale, 1 = off [default: the model's suggestion, else 1].
    #[arg(long)]
    pub cfg: Option<f32>,
    /// How the CFG scale grows over the AR steps [default: the model's suggestion, else
    /// linear].
    #[arg(long, value_enum, ignore_case = true)]
    pub cfg_schedule: Option<CfgScheduleArg>,
    /// Noise temperature [default: the model's suggestion, else 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Timestep clip for every row: default (950 for DiSA schedules, none for constant ones, as
    /// the official code), none, or a timestep (950).
    #[arg(long, default_value = "default", value_parser = parse_clip)]
    pub clip: Clip,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the Fashion-MNIST idx files (the test split is the reference).
    #[arg(long, default_value = DEBIAN_DIR)]
    pub data: PathBuf,
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let cpu = burn::tensor::Device::flex();
    if args.per_class == 0 || args.batch == 0 {
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
    let bundle = args.model.bundle()?;
    let model_name = printable(&bundle.info.name);
    // Every row's K and schedule come from --ar-steps and --schedules; the other settings as
    // in `generate`.
    let flags = SamplingDefaults {
        cfg: args.cfg,
        cfg_schedule: args.cfg_schedule.map(Into::into),
        temperature: args.temperature,
        ..SamplingDefaults::default()
    };
    let sampling = suggested(&bundle)?.overridden_by(&flags).resolve();
    // Every image is kept for the Fréchet distance: its count and the batch are checked
    // against memory before any is generated.
    let total = args
        .per_class
        .checked_mul(bundle.config.class_num)
        .filter(|&n| n <= MAX_IMAGES)
        .ok_or_else(|| {
            DisaError::InvalidSetting(format!(
                "--per-class {} × {} classes is more than the {MAX_IMAGES} images accepted",
                args.per_class, bundle.config.class_num,
            ))
        })?;
    check_batch(&bundle.config, args.batch.min(total), sampling.cfg)?;
    let generator = Arc::new(bundle.into_generator(&cpu)?);
    let classifier = match &args.classifier {
        Some(p) => {
            let bytes = disa::weights::atomic::read_regular(p, 1 << 30, "a classifier file")?;
            Classifier::from_bytes(&p.display().to_string(), &bytes, &cpu)?
        }
        None => Classifier::from_bytes("built-in classifier", SHIPPED_CLASSIFIER, &cpu)?,
    };
    let data = FashionMnist::load(&args.data)?;
    let (_, test_features) = classifier.predict(&data.test.images.pixels, &cpu)?;
    let reference = Gaussian::fit(&test_features, classifier::FEATURES)?;
    let test_acc = classifier.accuracy(&data.test.images.pixels, &data.test.labels, &cpu)?;
    let settings = EvalSettings {
        per_class: args.per_class,
        batch: args.batch,
        seed: args.seed,
    };
    println!(
        "model {model_name} · {} images per class · cfg {} ({}) · temperature {} · clip {} · seed {}",
        args.per_class,
        sampling.cfg,
        sampling.cfg_schedule,
        sampling.temperature,
        args.clip,
        args.seed
    );
    println!(
        "classifier test accuracy {:.2}% · Fréchet distance in its {}-d feature space to the \
         10k test images",
        100.0 * test_acc,
        classifier::FEATURES
    );
    println!();
    println!(
        "| K | schedule | head calls | token·steps | s / image | speed-up | accuracy | Fréchet | FD ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &k in &args.ar_steps {
        let mut baseline: Option<EvalRow> = None;
        for schedule in &args.schedules {
            let template = Sampling {
                ar_steps: k,
                schedule: schedule.clone(),
                ..sampling.clone()
            }
            .request(vec![Some(0)], args.clip.to_request());
            let bar = progress_bar(
                total as u64,
                &format!("K={k} {schedule} [{{bar:30}}] {{pos}}/{{len}} images ({{elapsed}})"),
                false,
            );
            let row = evaluate(
                &generator,
                &classifier,
                &reference,
                &template,
                &settings,
                |done, _| bar.set_position(done as u64),
            )?;
            bar.finish_and_clear();
            let base = baseline.get_or_insert_with(|| row.clone());
            let per_image = row.seconds / row.images as f64;
            println!(
                "| {k} | {} | {} | {} | {:.3} | {:.2}× | {:.1}% | {:.3} | {:.3} |",
                row.schedule,
                row.head_calls,
                row.token_steps,
                per_image,
                base.seconds / row.seconds,
                100.0 * row.accuracy,
                row.frechet,
                row.frechet / base.frechet
            );
        }
    }
    Ok(())
}
