//! `disa schedule`: the per-step plan of a schedule (tokens revealed, diffusion steps, CFG
//! scale) and its totals, without a model.

use super::args::SamplingArgs;
use super::common::print_out;
use clap::Args;
use disa::defaults::SamplingDefaults;
use disa::{DisaError, Result, schedule};
use std::fmt::Write;

/// The shared sampling flags, with this command's defaults (there is no model to suggest any).
#[derive(Args)]
#[command(
    mut_arg("ar_steps", |a| a.help("AR steps K [default: 64]")),
    mut_arg("schedule", |a| a.help(
        "Diffusion steps per AR step: constant:N, linear:START:END, cosine:START:END, \
         two-stage:START:END or custom:N,N,... (one per AR step) [default: linear:50:5]"
    )),
    mut_arg("cfg", |a| a.help("Classifier-free guidance scale in 1..=1000, 1 = off [default: 1]")),
    mut_arg("cfg_schedule", |a| a.help("How the CFG scale grows over the AR steps [default: linear]")),
)]
pub struct ScheduleArgs {
    /// Tokens per image, a square number of at most 1048576 (= 1024×1024; 256 for MAR at
    /// 256×256).
    #[arg(long, default_value_t = 256)]
    pub tokens: usize,
    #[command(flatten)]
    pub sampling: SamplingArgs,
}

pub fn print_schedule(args: ScheduleArgs) -> Result<()> {
    // No model here: flags, else the built-in fallback.
    let sampling = args.sampling.resolve(&SamplingDefaults::default(), None);
    // The settings go through the same validation as `generate`'s, on a model with this many
    // tokens (MAR's token grid is square).
    if args.tokens > schedule::MAX_TOKENS {
        return Err(DisaError::InvalidSetting(format!(
            "--tokens {}: at most {} (a 1024×1024 token grid) tokens per image are planned",
            args.tokens,
            schedule::MAX_TOKENS
        )));
    }
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
    let request = sampling.request(vec![None], args.sampling.clip);
    request.validate(&config)?;
    let clip = request.effective_clip();
    let plan = schedule::plan(
        request.ar_steps,
        args.tokens,
        &request.schedule,
        clip,
        request.cfg,
        request.cfg_schedule,
    )?;
    let clip_text = clip.0.map_or("none".to_string(), |c| c.to_string());
    let mut text = String::new();
    let _ = writeln!(
        text,
        "schedule {} · K={} · {} tokens · timestep clip {clip_text}",
        request.schedule, request.ar_steps, args.tokens
    );
    let _ = writeln!(
        text,
        "{:>4} {:>7} {:>9} {:>8} {:>10} {:>6}",
        "k", "tokens", "masked", "nominal", "effective", "cfg"
    );
    for st in &plan.steps {
        // The last step reveals every token left, as the official code's does: none stay
        // masked, although its `mask_len` (which the linear CFG scale still reads) is clamped
        // to 1.
        let masked = if st.k + 1 == plan.steps.len() {
            0
        } else {
            st.mask_len_after
        };
        let _ = writeln!(
            text,
            "{:>4} {:>7} {:>9} {:>8} {:>10} {:>6.3}",
            st.k, st.tokens, masked, st.nominal_steps, st.effective_steps, st.cfg
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
