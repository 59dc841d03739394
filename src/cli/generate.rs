//! `disa generate`: sample images and write them as one PNG (or PPM), with a progress bar per AR
//! step and a per-phase timing table.

use super::args::{BackendArg, KernelsArg, ModelArgs, SamplingArgs, suggested};
use super::common::{IMAGE_EXTENSIONS, check_batch, check_image_count, progress_bar, write_image};
use clap::Args;
use disa::backend::Backend;
use disa::image::{grid, images_from_tensor};
use disa::noise::SeededNoise;
use disa::sampler::{Generation, StepTimings};
use disa::{DisaError, Result};
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Class label(s), comma-separated; omit for unconditional generation.
    #[arg(long = "class", value_delimiter = ',')]
    pub classes: Vec<usize>,
    /// Images per class.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Random seed (orders and noise).
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Noise temperature in 0..=100 [default: the model's suggestion, else 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Compute backend.
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// The diffusion head's sampling loop.
    #[arg(long, value_enum, ignore_case = true, default_value_t = KernelsArg::Auto)]
    pub kernels: KernelsArg,
    /// Output image: PNG, or PPM if the name ends in .ppm (a grid when several images).
    #[arg(long, default_value = "disa.png")]
    pub out: PathBuf,
    /// Enlarge the output by this integer factor (nearest neighbour), e.g. 4 for 32×32 images.
    #[arg(long, default_value_t = 1)]
    pub scale: usize,
    /// No progress bar or table.
    #[arg(long)]
    pub quiet: bool,
}

pub fn generate(args: GenerateArgs) -> Result<()> {
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
    let images = classes.len().saturating_mul(args.batch);
    check_image_count(images)?;
    let backend = Backend::from(args.backend);
    let device = backend.device()?;
    let bundle = args.model.bundle()?;
    let sampling = args
        .sampling
        .resolve(&suggested(&bundle)?, args.temperature);
    check_batch(&bundle.config, images, sampling.cfg)?;
    let generator = Arc::new(bundle.into_generator(&device)?);

    let labels: Vec<Option<usize>> = classes
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, args.batch))
        .collect();
    let request = sampling.request(labels, args.sampling.clip);
    let mut generation = Generation::new(
        generator.clone(),
        request.clone(),
        Box::new(SeededNoise::new(args.seed)),
    )?
    .kernels(args.kernels.into());
    let bar = progress_bar(
        request.ar_steps as u64,
        "{spinner} AR step {pos}/{len} [{bar:30}] {msg} ({elapsed})",
        args.quiet,
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
            "schedule {} · K={} · cfg {} ({}) · temperature {} · backend {backend} · head {}",
            request.schedule,
            request.ar_steps,
            request.cfg,
            request.cfg_schedule,
            request.temperature,
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
