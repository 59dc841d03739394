//! `disa bench`: schedules (and head implementations) timed against a baseline in one run, as
//! a table or, with `--json`, one JSON document.

use super::args::{
    BackendArg, CfgScheduleArg, Clip, KernelsArg, ModelArgs, check_flags, parse_clip, suggested,
};
use super::common::{check_batch, check_image_count, printable};
use clap::Args;
use disa::backend::Backend;
use disa::defaults::SamplingDefaults;
use disa::noise::SeededNoise;
use disa::sampler::Generation;
use disa::schedule::StepSchedule;
use disa::{DisaError, Result};
use std::sync::Arc;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Time a preset's shapes with freshly initialized weights instead of a model file: speed
    /// does not depend on the weights' values.
    #[arg(long, conflicts_with = "weights", value_parser = ["mar_base", "mar_large", "mar_huge", "fashion"])]
    pub shapes: Option<String>,
    /// Schedules to time, separated by `;`; the first is the baseline the ratios refer to.
    #[arg(
        long,
        value_delimiter = ';',
        value_parser = super::args::parse_schedule,
        default_value = "constant:100;constant:50;linear:50:5;cosine:50:5;two-stage:50:5"
    )]
    pub schedules: Vec<StepSchedule>,
    /// AR steps K [default: the model's suggestion, else 64].
    #[arg(long)]
    pub ar_steps: Option<usize>,
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
    /// Images per generation (at most 1048576, and what fits in memory).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Timed repetitions per schedule (after one untimed warm-up), in 1..=10000; the median
    /// is reported.
    #[arg(long, default_value_t = 3)]
    pub repeats: usize,
    /// Compute backend.
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Head implementations to time, comma-separated: each schedule runs with each, in one run.
    #[arg(
        long,
        value_enum,
        ignore_case = true,
        value_delimiter = ',',
        default_value = "auto"
    )]
    pub kernels: Vec<KernelsArg>,
    /// Threads per workgroup of the fused head's one-launch form (`token_loop`, small heads),
    /// comma-separated: each fused row runs once per count, in one run [default: the
    /// adapter's, 64 on a software adapter and 256 on a GPU]. Each count lies in [token size,
    /// 256].
    #[arg(long, value_delimiter = ',')]
    pub token_loop_threads: Vec<u32>,
    /// Timestep clip for every schedule: default (950 for DiSA schedules, none for constant
    /// ones, as their reference code), none (MAR), or a timestep (950 gives every schedule
    /// DiSA's clip).
    #[arg(long, default_value = "default", value_parser = parse_clip)]
    pub clip: Clip,
    /// Print one JSON document (settings, weight bytes, one object per schedule and head)
    /// instead of the table.
    #[arg(long)]
    pub json: bool,
}

/// `disa bench --json`: the whole run.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Report {
    model: String,
    backend: String,
    ar_steps: usize,
    cfg: f32,
    cfg_schedule: String,
    temperature: f32,
    /// `default`, `none` or a timestep.
    clip: String,
    batch: usize,
    repeats: usize,
    /// Bytes of the weights Burn's modules hold on the device (quantized Linear weights stay
    /// quantized on a GPU), and what they would take in f32.
    module_weight_bytes: u64,
    module_weight_f32_bytes: u64,
    /// Bytes of the fused head's weights as stored on the GPU; absent without a fused head.
    fused_head_weight_bytes: Option<u64>,
    /// Why there is no fused head on a wgpu device.
    fused_unavailable: Option<String>,
    rows: Vec<Row>,
}

/// One schedule with one head implementation.
#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct Row {
    schedule: String,
    /// The `--kernels` value this row asked for.
    kernels: String,
    /// `fused` or `tensor`: what ran the head (auto resolves to one of them).
    head: &'static str,
    /// `fused` or `tensor`: what ran the transformer.
    transformer: &'static str,
    /// Median transformer time per image.
    transformer_seconds_per_image: f64,
    /// Threads per `token_loop` workgroup where the fused head ran as one launch per AR step.
    token_loop_threads: Option<u32>,
    /// Median wall time per image of sampling (transformer + head; decoding is not timed).
    seconds_per_image: f64,
    /// Median head time per image.
    head_seconds_per_image: f64,
    /// Median GPU time per image of the fused head's kernels, from timestamp queries around
    /// each AR step's pass (absent on the tensor path and where the adapter has none).
    head_gpu_seconds_per_image: Option<f64>,
    /// Sequential head calls per image (the plan's).
    head_calls: usize,
    /// Token·steps per image (the plan's).
    token_steps: usize,
    /// GPU dispatches per generation (per batch) of the fused head and transformer (counted
    /// exactly); absent where Burn's tensor ops ran a part, whose launches are not visible
    /// from here.
    launches: Option<u64>,
    /// Baseline seconds per image over this row's.
    speed_up: f64,
    /// Baseline head calls over this row's.
    head_call_ratio: f64,
    /// Baseline head time over this row's: the end-to-end speed-up were the transformer free.
    head_speed_up: f64,
    /// Multiply-adds per image of the transformer's blocks and of the head's network.
    macs_per_image: disa::model::MacsPerImage,
}

/// The most timed repetitions `--repeats` accepts: a median of 10,000 runs is as steady as a
/// timing gets, and more only keeps the machine busy.
pub const MAX_REPEATS: usize = 10_000;

/// What `bench` checks before it loads anything: counts, the sampling flags (with the
/// library's checks, as `generate`), and the head implementations against the backend.
fn check_before_loading(args: &BenchArgs, flags: &SamplingDefaults) -> Result<()> {
    if !args.token_loop_threads.is_empty()
        && args.kernels.iter().all(|k| matches!(k, KernelsArg::Tensor))
    {
        return Err(DisaError::InvalidSetting(
            "--token-loop-threads sets the fused head's workgroups: add --kernels fused".into(),
        ));
    }
    if args.repeats == 0 || args.batch == 0 {
        return Err(DisaError::InvalidSetting(
            "repeats and batch must be at least 1".into(),
        ));
    }
    if args.repeats > MAX_REPEATS {
        return Err(DisaError::InvalidSetting(format!(
            "--repeats {}: at most {MAX_REPEATS} timed repetitions per schedule",
            args.repeats
        )));
    }
    check_image_count(args.batch)?;
    // Each row's settings as its request will have them (a custom schedule against --ar-steps
    // where K is given; against the model's K once it is loaded).
    check_flags(flags, args.clip)?;
    for schedule in &args.schedules {
        check_flags(
            &SamplingDefaults {
                schedule: Some(schedule.clone()),
                ..flags.clone()
            },
            args.clip,
        )?;
    }
    if args.backend == BackendArg::Cpu {
        if !args.token_loop_threads.is_empty() {
            return Err(DisaError::InvalidSetting(
                "--token-loop-threads sets the fused head's workgroups, which run on a GPU: add \
                 --backend wgpu"
                    .into(),
            ));
        }
        let fused = args
            .kernels
            .iter()
            .find(|k| matches!(k, KernelsArg::Fused | KernelsArg::FusedHead));
        if let Some(k) = fused {
            return Err(DisaError::InvalidSetting(format!(
                "--kernels {}: the fused kernels run on a GPU; add --backend wgpu",
                disa::sampler::Kernels::from(*k)
            )));
        }
    }
    Ok(())
}

pub fn bench(args: BenchArgs) -> Result<()> {
    let backend = Backend::from(args.backend);
    let flags = SamplingDefaults {
        ar_steps: args.ar_steps,
        schedule: None,
        cfg: args.cfg,
        cfg_schedule: args.cfg_schedule.map(Into::into),
        temperature: args.temperature,
    };
    check_before_loading(&args, &flags)?;
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
    // Every row's schedule comes from --schedules; the other settings as in `generate`.
    let sampling = suggested(&bundle)?.overridden_by(&flags).resolve();
    let classes = bundle.config.class_num;
    let labels: Vec<Option<usize>> = (0..args.batch).map(|i| Some(i % classes)).collect();
    // Every row's request is checked, and the batch against memory, before the model is built
    // and before the table starts.
    let requests = args
        .schedules
        .iter()
        .map(|schedule| {
            let request = disa::defaults::Sampling {
                schedule: schedule.clone(),
                ..sampling.clone()
            }
            .request(labels.clone(), args.clip);
            request.validate(&bundle.config).map(|()| request)
        })
        .collect::<Result<Vec<_>>>()?;
    check_batch(&bundle.config, args.batch, sampling.cfg)?;
    let model = printable(&bundle.info.name);
    let generator = Arc::new(bundle.into_generator(&device)?);
    // The fused kernels asked for, where the device has none, and each --token-loop-threads
    // count (whose range depends on the model's token size) fail now, not after a row.
    for &kernels in &args.kernels {
        let name = disa::sampler::Kernels::from(kernels);
        let fused = matches!(kernels, KernelsArg::Fused | KernelsArg::FusedHead);
        if fused && generator.fused_head().is_none() {
            return Err(DisaError::Device(format!(
                "--kernels {name}: the fused head kernels are not available here: {}",
                generator.fused_unavailable()
            )));
        }
        if kernels == KernelsArg::Fused && generator.fused_transformer().is_none() {
            return Err(DisaError::Device(format!(
                "--kernels {name}: the fused transformer kernels are not available here: {}",
                generator.fused_transformer_unavailable()
            )));
        }
    }
    if !args.token_loop_threads.is_empty() {
        match generator.fused_head() {
            Some(f) if f.uses_token_loop() => {
                for &threads in &args.token_loop_threads {
                    f.set_token_loop_threads(threads)?;
                }
            }
            _ => {
                return Err(DisaError::InvalidSetting(format!(
                    "--token-loop-threads: this model's head does not run token_loop here ({})",
                    generator.fused_head().map_or_else(
                        || generator.fused_unavailable().to_string(),
                        |f| f.launch_summary()
                    )
                )));
            }
        }
    }
    let module_weights = generator.model.weight_bytes();
    let module_weight_bytes = module_weights.bytes;
    let module_weight_f32_bytes = module_weights.f32_bytes;
    let mut report = Report {
        model,
        backend: backend.to_string(),
        ar_steps: sampling.ar_steps,
        cfg: sampling.cfg,
        cfg_schedule: sampling.cfg_schedule.to_string(),
        temperature: sampling.temperature,
        clip: args.clip.to_string(),
        batch: args.batch,
        repeats: args.repeats,
        module_weight_bytes,
        module_weight_f32_bytes,
        fused_head_weight_bytes: generator.fused_head().map(|f| f.weight_bytes()),
        fused_unavailable: (backend == Backend::Wgpu && generator.fused_head().is_none())
            .then(|| generator.fused_unavailable().to_string()),
        rows: Vec::new(),
    };
    if !args.json {
        print_header(&report, &generator);
    }
    let mut baseline: Option<(f64, usize, f64)> = None;
    for (schedule, request) in args.schedules.iter().zip(&requests) {
        let plan = request.plan(&generator.config)?;
        let head_calls = plan.head_calls();
        let macs_per_image = generator.model.macs_per_image(&plan, request.uses_cfg());
        // Each head implementation, and for the fused head each `token_loop` thread count asked.
        let mut variants = Vec::new();
        for &kernels in &args.kernels {
            if matches!(kernels, KernelsArg::Tensor) || args.token_loop_threads.is_empty() {
                variants.push((kernels, None));
            } else {
                variants.extend(args.token_loop_threads.iter().map(|&t| (kernels, Some(t))));
            }
        }
        for (kernels, threads) in variants {
            if let Some(threads) = threads {
                match generator.fused_head() {
                    Some(f) if f.uses_token_loop() => f.set_token_loop_threads(threads)?,
                    _ => {
                        return Err(DisaError::InvalidSetting(format!(
                            "--token-loop-threads: this model's head does not run token_loop \
                             here ({})",
                            generator.fused_head().map_or_else(
                                || generator.fused_unavailable().to_string(),
                                |f| f.launch_summary()
                            )
                        )));
                    }
                }
            }
            let mut times = Vec::new();
            let mut head_times = Vec::new();
            let mut transformer_times = Vec::new();
            let mut gpu_times = Vec::new();
            let mut fused = false;
            let mut fused_transformer = false;
            let launched = || {
                generator.fused_head().map_or(0, |f| f.dispatches())
                    + generator.fused_transformer().map_or(0, |f| f.dispatches())
            };
            let before = launched();
            for rep in 0..=args.repeats {
                let gpu_before = generator.fused_head().and_then(|f| f.gpu_time_ns());
                let start = disa::sampler::now_ms();
                let mut generation = Generation::new(
                    generator.clone(),
                    request.clone(),
                    Box::new(SeededNoise::new(rep as u64)),
                )?
                .kernels(kernels.into());
                fused = generation.uses_fused_kernels();
                fused_transformer = generation.uses_fused_transformer();
                let events = generation.run_to_end()?;
                if rep > 0 {
                    times.push((disa::sampler::now_ms() - start) / args.batch as f64);
                    let per_image = |f: fn(&disa::sampler::StepTimings) -> f64| {
                        events.iter().map(|e| f(&e.timings)).sum::<f64>() / args.batch as f64
                    };
                    head_times.push(per_image(|t| t.head_ms));
                    transformer_times.push(per_image(|t| t.transformer_ms));
                    let gpu_after = generator.fused_head().and_then(|f| f.gpu_time_ns());
                    if let (true, Some(a), Some(b)) = (fused, gpu_before, gpu_after) {
                        gpu_times.push((b - a) as f64 / 1e6 / args.batch as f64);
                    }
                }
            }
            // Fused launches are counted exactly; Burn's are not visible from here.
            let launches = (fused
                && (fused_transformer || generator.fused_transformer().is_none()))
            .then(|| (launched() - before) / (args.repeats as u64 + 1));
            let median = |v: &mut Vec<f64>| {
                v.sort_by(f64::total_cmp);
                v[v.len() / 2]
            };
            let (ms, head_ms) = (median(&mut times), median(&mut head_times));
            let transformer_ms = median(&mut transformer_times);
            let head_gpu_ms = (!gpu_times.is_empty()).then(|| median(&mut gpu_times));
            let (base_ms, base_calls, base_head_ms) =
                *baseline.get_or_insert((ms, head_calls, head_ms));
            let row = Row {
                schedule: schedule.to_string(),
                kernels: disa::sampler::Kernels::from(kernels).to_string(),
                head: if fused { "fused" } else { "tensor" },
                transformer: if fused_transformer { "fused" } else { "tensor" },
                transformer_seconds_per_image: transformer_ms / 1e3,
                token_loop_threads: generator
                    .fused_head()
                    .filter(|f| fused && f.uses_token_loop())
                    .map(|f| f.token_loop_threads()),
                seconds_per_image: ms / 1e3,
                head_seconds_per_image: head_ms / 1e3,
                head_gpu_seconds_per_image: head_gpu_ms.map(|ms| ms / 1e3),
                head_calls,
                token_steps: plan.token_steps(),
                launches,
                speed_up: base_ms / ms,
                head_call_ratio: base_calls as f64 / head_calls as f64,
                head_speed_up: base_head_ms / head_ms,
                macs_per_image,
            };
            if !args.json {
                print_row(&row);
            }
            report.rows.push(row);
        }
    }
    if args.json {
        let text = serde_json::to_string_pretty(&report).expect("the report serializes");
        super::common::print_out(&(text + "\n"))?;
    } else {
        println!("(sampling only: transformer + diffusion head; decoding is not timed)");
        print_work(&report.rows);
    }
    Ok(())
}

/// Where each row's arithmetic goes and how fast it ran: the end-to-end speed-up is
/// `(T + H_baseline) / (T + H)` for transformer time T and head times H, so it stays below
/// the head's own (`head ×`) by as much as the transformer's share.
fn print_work(rows: &[Row]) {
    println!("multiply-adds per image (G) and their rate (G/s):");
    for r in rows {
        // Three significant digits: a software adapter runs at hundredths of a G/s.
        let rate = |macs: u64, seconds: f64| {
            let g = macs as f64 / 1e9 / seconds.max(1e-12);
            let decimals = (2 - g.abs().max(1e-9).log10().floor() as i32).clamp(0, 4);
            format!("{g:.*}", decimals as usize)
        };
        let m = r.macs_per_image;
        println!(
            "  {:<18}transformer blocks {:.2} G at {} G/s · head {:.2} G at {} G/s · \
             transformer {:.0}% of the time",
            r.schedule,
            m.transformer as f64 / 1e9,
            rate(m.transformer, r.transformer_seconds_per_image),
            m.head as f64 / 1e9,
            rate(m.head, r.head_seconds_per_image),
            100.0 * r.transformer_seconds_per_image
                / (r.transformer_seconds_per_image + r.head_seconds_per_image).max(1e-12),
        );
    }
}

fn print_header(r: &Report, generator: &disa::LoadedModel) {
    println!("model {}", r.model);
    println!(
        "backend {} · K={} · cfg {} ({}) · temperature {} · clip {} · batch {} · median of {} \
         (after a warm-up)",
        r.backend, r.ar_steps, r.cfg, r.cfg_schedule, r.temperature, r.clip, r.batch, r.repeats
    );
    let mb = |bytes: u64| bytes as f64 / 1e6;
    let modules = format!(
        "{:.2} MB ({:.3}× their f32 {:.2} MB)",
        mb(r.module_weight_bytes),
        r.module_weight_bytes as f64 / r.module_weight_f32_bytes.max(1) as f64,
        mb(r.module_weight_f32_bytes)
    );
    match (generator.fused_head(), &r.fused_unavailable) {
        (Some(fused), _) => println!(
            "GPU weights: {modules} for Burn's modules + {:.2} MB for the fused head (as \
             stored; {})",
            mb(fused.weight_bytes()),
            fused.launch_summary()
        ),
        (None, Some(why)) => println!("GPU weights: {modules} · no fused head: {why}"),
        (None, None) => {}
    }
    if let Some(t) = generator.fused_transformer() {
        println!(
            "fused transformer: {:.2} MB of weights (as stored), {} launches per AR step \
             with every token known, in one pass",
            mb(t.weight_bytes()),
            t.dispatches_per_forward(generator.config.seq_len())
        );
    }
    println!(
        "{:<18}{:>12}{:>10}{:>12}{:>12}{:>12}{:>14}{:>12}{:>12}{:>10}{:>9}{:>12}",
        "schedule",
        "transformer",
        "head",
        "ms/image",
        "transf. ms",
        "head ms",
        "head GPU ms",
        "head calls",
        "launches",
        "speed-up",
        "head ×",
        "head-call ×"
    );
}

fn print_row(r: &Row) {
    let launches = r.launches.map_or("-".to_string(), |n| n.to_string());
    let gpu = r
        .head_gpu_seconds_per_image
        .map_or("-".to_string(), |s| format!("{:.1}", s * 1e3));
    let head = match r.token_loop_threads {
        Some(t) => format!("{}/{t}", r.head),
        None => r.head.to_string(),
    };
    println!(
        "{:<18}{:>12}{head:>10}{:>12.1}{:>12.1}{:>12.1}{gpu:>14}{:>12}{launches:>12}{:>9.2}×{:>8.2}×{:>11.2}×",
        r.schedule,
        r.transformer,
        r.seconds_per_image * 1e3,
        r.transformer_seconds_per_image * 1e3,
        r.head_seconds_per_image * 1e3,
        r.head_calls,
        r.speed_up,
        r.head_speed_up,
        r.head_call_ratio
    );
}
