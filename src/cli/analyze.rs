//! `disa analyze`: DiSA's three measurements (spread, straightness, predictability) per AR step
//! of one generation, as a CSV table and an SVG plot for slides.

use super::args::{BackendArg, ModelArgs, SamplingArgs, suggested};
use super::common::{check_batch, check_image_count, printable, progress_bar, write_file};
use clap::Args;
use disa::analysis::{Analysis, AnalysisOptions, Analyzer, Recorder};
use disa::backend::Backend;
use disa::noise::SeededNoise;
use disa::{DisaError, Result};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Args)]
pub struct AnalyzeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Class label(s), comma-separated; omit for unconditional generation.
    #[arg(long = "class", value_delimiter = ',')]
    pub classes: Vec<usize>,
    /// Images per class: the curves average over every token of every image (at most
    /// 1048576 images in all, and what fits in memory).
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Seed of the generation (orders and noise): the same seed as `disa generate` or the page
    /// analyses the same image.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Noise temperature in 0..=100 [default: the model's suggestion, else 1].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Re-samples of the head per token for the spread (M), in 2..=4096.
    #[arg(long, default_value_t = 32)]
    pub samples: usize,
    /// Compute backend.
    #[arg(long, value_enum, ignore_case = true, default_value_t = BackendArg::Cpu)]
    pub backend: BackendArg,
    /// Output prefix: writes PREFIX.csv (one row per AR step), PREFIX-tokens.csv (one row per
    /// token) and PREFIX.svg (the curves). It must end in a file name: for files in a folder
    /// give `DIR/NAME` (`runs/a` writes runs/a.csv, …); a folder (`runs/`) is refused.
    #[arg(long, default_value = "analysis")]
    pub out: PathBuf,
    /// No progress bar or table.
    #[arg(long)]
    pub quiet: bool,
}

/// The three files `--out PREFIX` names, checked before any work: PREFIX must end in a file
/// name (not `runs/`, `.` or `..`, and not an existing folder: that would write hidden files
/// such as `runs/.csv`), in an existing, writable folder.
pub fn output_files(prefix: &Path) -> Result<[PathBuf; 3]> {
    let text = prefix.to_string_lossy();
    let last = text.rsplit(std::path::is_separator).next().unwrap_or("");
    if last.is_empty() || last == "." || last == ".." || prefix.is_dir() {
        let example = printable(&prefix.join("analysis").to_string_lossy());
        return Err(DisaError::InvalidSetting(format!(
            "--out {}: give a file prefix, not a folder (e.g. --out {example} writes \
             {example}.csv, {example}-tokens.csv and {example}.svg)",
            printable(&text),
        )));
    }
    let files = [".csv", "-tokens.csv", ".svg"].map(|suffix| with_suffix(prefix, suffix));
    for file in &files {
        disa::weights::atomic::check_output_file(file, "--out", &[])?;
    }
    Ok(files)
}

fn with_suffix(prefix: &Path, suffix: &str) -> PathBuf {
    let mut s = prefix.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// A CSV number: NaN (a step that revealed nothing) as an empty cell.
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.6e}")
    } else {
        String::new()
    }
}

/// The per-step table.
pub fn steps_csv(a: &Analysis) -> String {
    let mut out = String::from(
        "k,tokens,nominal_steps,effective_steps,cfg,variance,straightness,path_length,\
         one_shot_error,completed_error,token_power,replay_error\n",
    );
    for (s, completed) in a.steps.iter().zip(&a.completed_error) {
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            s.k,
            s.tokens,
            s.nominal_steps,
            s.effective_steps,
            s.cfg,
            num(s.variance),
            num(s.straightness),
            num(s.path_length),
            num(s.one_shot_error),
            num(*completed),
            num(s.token_power),
            num(s.replay_error)
        );
    }
    out
}

/// The per-token table (image 0 first, then the others).
pub fn tokens_csv(a: &Analysis) -> String {
    let mut out = String::from(
        "image,position,k,effective_steps,variance,straightness,path_length,one_shot_error\n",
    );
    for s in &a.steps {
        let mut r = 0;
        for (i, positions) in s.positions.iter().enumerate() {
            for &p in positions {
                let _ = writeln!(
                    out,
                    "{i},{p},{},{},{},{},{},{}",
                    s.k,
                    s.effective_steps,
                    num(s.token_variance[r]),
                    num(s.token_straightness[r]),
                    num(s.token_path_length[r]),
                    num(s.token_one_shot_error[r])
                );
                r += 1;
            }
        }
    }
    out
}

/// One plot: a title and its series (label, colour, one value per AR step).
type Panel<'a> = (&'a str, Vec<(&'a str, &'a str, Vec<f64>)>);

/// Four small line plots (spread, straightness, path length, one-shot and completed-image
/// errors) against the AR step, in one SVG.
pub fn curves_svg(a: &Analysis, title: &str) -> String {
    let ks: Vec<f64> = a.steps.iter().map(|s| s.k as f64 + 1.0).collect();
    let panels: [Panel; 4] = [
        (
            "1 · spread: mean per-channel variance of M re-samples",
            vec![(
                "variance",
                "#1f6feb",
                a.steps.iter().map(|s| s.variance).collect(),
            )],
        ),
        (
            "2 · straightness S = ‖x₀ − x_T‖ / path length (1 = straight)",
            vec![(
                "S",
                "#2da44e",
                a.steps.iter().map(|s| s.straightness).collect(),
            )],
        ),
        (
            "2 · path length Σ‖x_{t−1} − x_t‖",
            vec![(
                "length",
                "#8250df",
                a.steps.iter().map(|s| s.path_length).collect(),
            )],
        ),
        (
            "3 · error of the one-shot x₀ estimate (MSE per channel)",
            vec![
                (
                    "revealed tokens",
                    "#d1242f",
                    a.steps.iter().map(|s| s.one_shot_error).collect(),
                ),
                (
                    "completed image vs final",
                    "#bf8700",
                    a.completed_error.clone(),
                ),
            ],
        ),
    ];
    let (pw, ph, margin_l, margin_t, gap) = (340.0, 190.0, 64.0, 36.0, 30.0);
    let (cols, rows) = (2usize, 2usize);
    let width = cols as f64 * (pw + margin_l + gap) + gap;
    let height = rows as f64 * (ph + margin_t + 50.0) + 40.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" \
         viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{gap}\" y=\"22\" font-size=\"14\" font-weight=\"bold\">{}</text>\n",
        xml(title)
    );
    let k_max = ks.last().copied().unwrap_or(1.0).max(2.0);
    for (index, (name, series)) in panels.iter().enumerate() {
        let x0 = gap + (index % cols) as f64 * (pw + margin_l + gap) + margin_l;
        let y0 = 40.0 + (index / cols) as f64 * (ph + margin_t + 50.0) + margin_t;
        let finite = series
            .iter()
            .flat_map(|(_, _, v)| v.iter().copied())
            .filter(|v| v.is_finite());
        let (lo, hi) = finite.fold((f64::INFINITY, f64::NEG_INFINITY), |(l, h), v| {
            (l.min(v), h.max(v))
        });
        let (lo, hi) = if lo.is_finite() {
            let lo = lo.min(0.0);
            (lo, if hi > lo { hi * 1.05 } else { lo + 1.0 })
        } else {
            (0.0, 1.0)
        };
        let sx = |k: f64| x0 + (k - 1.0) / (k_max - 1.0) * pw;
        let sy = |v: f64| y0 + ph - (v - lo) / (hi - lo) * ph;
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" font-weight=\"bold\">{}</text>\n\
             <rect x=\"{x0:.1}\" y=\"{y0:.1}\" width=\"{pw}\" height=\"{ph}\" fill=\"none\" stroke=\"#888\"/>",
            x0 - margin_l + 4.0,
            y0 - 10.0,
            xml(name)
        );
        for tick in 0..=4 {
            let v = lo + (hi - lo) * tick as f64 / 4.0;
            let _ = writeln!(
                svg,
                "<line x1=\"{:.1}\" x2=\"{x0:.1}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#888\"/>\
                 <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 - 4.0,
                x0 - 6.0,
                sy(v) + 4.0,
                short(v),
                y = sy(v)
            );
        }
        let kticks = [1.0, (k_max / 2.0).round(), k_max];
        for k in kticks {
            let _ = writeln!(
                svg,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{k}</text>",
                sx(k),
                y0 + ph + 14.0
            );
        }
        let _ = writeln!(
            svg,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">AR step</text>",
            x0 + pw / 2.0,
            y0 + ph + 28.0
        );
        for (j, (label, colour, values)) in series.iter().enumerate() {
            let points: Vec<String> = ks
                .iter()
                .zip(values)
                .filter(|(_, v)| v.is_finite())
                .map(|(k, v)| format!("{:.1},{:.1}", sx(*k), sy(*v)))
                .collect();
            let _ = writeln!(
                svg,
                "<polyline fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\" points=\"{}\"/>",
                points.join(" ")
            );
            for p in &points {
                let (x, y) = p.split_once(',').expect("x,y");
                let _ = writeln!(
                    svg,
                    "<circle cx=\"{x}\" cy=\"{y}\" r=\"2.2\" fill=\"{colour}\"/>"
                );
            }
            if series.len() > 1 {
                let ly = y0 + 12.0 + 14.0 * j as f64;
                let _ = writeln!(
                    svg,
                    "<line x1=\"{:.1}\" x2=\"{:.1}\" y1=\"{ly:.1}\" y2=\"{ly:.1}\" stroke=\"{colour}\" stroke-width=\"2\"/>\
                     <text x=\"{:.1}\" y=\"{:.1}\">{}</text>",
                    x0 + pw - 150.0,
                    x0 + pw - 134.0,
                    x0 + pw - 130.0,
                    ly + 4.0,
                    xml(label)
                );
            }
        }
    }
    svg.push_str("</svg>\n");
    svg
}

fn short(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.abs() < 0.01 {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// First-step value over last-step value of a curve (over steps that have one).
fn first_last(values: &[f64]) -> (f64, f64) {
    let mut finite = values.iter().copied().filter(|v| v.is_finite());
    let first = finite.next().unwrap_or(f64::NAN);
    let last = finite.next_back().unwrap_or(first);
    (first, last)
}

pub fn analyze(args: AnalyzeArgs) -> Result<()> {
    // Everything that can be checked without the model is, before it is loaded.
    let [csv_path, tokens_path, svg_path] = output_files(&args.out)?;
    args.sampling.check(args.temperature)?;
    let options = AnalysisOptions {
        samples: args.samples,
        ..AnalysisOptions::default()
    };
    options.validate()?;
    if args.batch == 0 {
        return Err(DisaError::InvalidSetting("batch must be at least 1".into()));
    }
    let classes: Vec<Option<usize>> = if args.classes.is_empty() {
        vec![None]
    } else {
        args.classes.iter().map(|&c| Some(c)).collect()
    };
    let images = classes.len().saturating_mul(args.batch);
    check_image_count(images)?;
    let device = Backend::from(args.backend).device()?;
    let bundle = args.model.bundle()?;
    let sampling = args
        .sampling
        .resolve(&suggested(&bundle)?, args.temperature);
    let labels = classes
        .iter()
        .flat_map(|c| std::iter::repeat_n(*c, args.batch))
        .collect();
    let request = sampling.request(labels, args.sampling.clip);
    // The whole request (classes, K against the model's tokens) and its memory, as `generate`
    // checks them, before the model is built.
    request.validate(&bundle.config)?;
    check_batch(&bundle.config, images, sampling.cfg)?;
    let model_name = bundle.info.name.clone();
    let generator = Arc::new(bundle.into_generator(&device)?);
    let k = request.ar_steps as u64;
    let bar = progress_bar(
        2 * k,
        "{spinner} {msg} [{bar:30}] {pos}/{len} ({elapsed})",
        args.quiet,
    );
    bar.set_message("generating (recording)");
    let mut recorder = Recorder::new(
        generator.clone(),
        request.clone(),
        Box::new(SeededNoise::new(args.seed)),
    )?;
    while recorder.step()?.is_some() {
        // As in `generate`: a generation that overflows stops at the step it does, instead of
        // curves of NaN.
        let generation = recorder.generation();
        disa::image::check_finite(
            generation.tokens(),
            &format!("at AR step {}", generation.steps_done()),
        )?;
        bar.inc(1);
    }
    let recording = Arc::new(recorder.finish());
    bar.set_message(format!("analysing (M = {})", options.samples));
    let mut analyzer = Analyzer::new(generator, recording, options)?;
    while analyzer.step()?.is_some() {
        bar.inc(1);
    }
    let analysis = analyzer.finish()?;
    bar.finish_and_clear();

    let worst_replay = analysis
        .steps
        .iter()
        .map(|s| s.replay_error)
        .fold(0.0, f64::max);
    if worst_replay > 1e-4 {
        // The generation's head loop ran other kernels than the replay (fused GPU kernels):
        // say so rather than hide it; the curves are still the replayed chains'.
        eprintln!(
            "warning: the replayed chains end up to {worst_replay:.2e} away from the generated tokens"
        );
    }
    let class = if args.classes.is_empty() {
        "none".to_string()
    } else {
        args.classes
            .iter()
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let title = format!(
        "{model_name} · class {class} × {} · seed {} · K={} · {} · cfg {} · M={}",
        args.batch, args.seed, request.ar_steps, request.schedule, request.cfg, args.samples
    );
    write_file(&csv_path, steps_csv(&analysis).as_bytes())?;
    write_file(&tokens_path, tokens_csv(&analysis).as_bytes())?;
    write_file(&svg_path, curves_svg(&analysis, &title).as_bytes())?;
    if !args.quiet {
        println!("{title}");
        println!(
            "{:>4} {:>6} {:>6} {:>11} {:>9} {:>10} {:>11} {:>11}",
            "k", "tokens", "steps", "variance", "S", "length", "one-shot", "completed"
        );
        for (s, completed) in analysis.steps.iter().zip(&analysis.completed_error) {
            println!(
                "{:>4} {:>6} {:>6} {:>11.4e} {:>9.4} {:>10.3} {:>11.4e} {:>11.4e}",
                s.k + 1,
                s.tokens,
                s.effective_steps,
                s.variance,
                s.straightness,
                s.path_length,
                s.one_shot_error,
                completed
            );
        }
        let ratio = |name: &str, values: Vec<f64>| {
            let (first, last) = first_last(&values);
            println!(
                "{name:<34} first {first:.4e} → last {last:.4e} (last/first {:.3})",
                last / first
            );
        };
        ratio(
            "spread (variance)",
            analysis.steps.iter().map(|s| s.variance).collect(),
        );
        ratio(
            "straightness S",
            analysis.steps.iter().map(|s| s.straightness).collect(),
        );
        ratio(
            "path length",
            analysis.steps.iter().map(|s| s.path_length).collect(),
        );
        ratio(
            "one-shot error",
            analysis.steps.iter().map(|s| s.one_shot_error).collect(),
        );
        ratio("completed-image error", analysis.completed_error.clone());
        println!(
            "replay: chains end within {worst_replay:.1e} of the generated tokens · wrote {}, {}, {}",
            csv_path.display(),
            tokens_path.display(),
            svg_path.display()
        );
    }
    Ok(())
}
