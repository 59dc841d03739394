//! Step schedules: how many diffusion steps each AR step uses (DiSA), how many tokens each AR
//! step reveals (MAR's cosine mask schedule) and the CFG scale per step. Pure arithmetic, no
//! tensors, so the CLI, the page and the tests all read the same numbers.

use crate::diffusion::{SpacedDiffusion, TimestepClip};
use crate::error::{Result, invalid};
use std::fmt;

/// The largest step count a diffusion over 1000 base timesteps can be respaced to.
pub const MAX_DIFFUSION_STEPS: usize = crate::diffusion::NUM_BASE_TIMESTEPS;

/// How the number of diffusion steps changes over the AR steps.
///
/// `Linear`, `Cosine` and `TwoStage` follow `MAR_DiSA/models/diffloss.py::DiffLoss.sample`
/// exactly: one respaced diffusion per step count in `end..=start`, indexed by a truncated
/// function of `k / (K - 1)`. `Constant(n)` is plain MAR (every AR step `n` steps). `Custom` lists
/// the requested step count of every AR step (what the page's editable curve produces).
#[derive(Clone, Debug, PartialEq)]
pub enum StepSchedule {
    /// Every AR step uses the same number of steps (the MAR baseline).
    Constant(usize),
    /// DiSA linear annealing from `start` (first AR step) to `end` (last AR step).
    Linear { start: usize, end: usize },
    /// DiSA cosine annealing: stays high longer, then falls faster.
    Cosine { start: usize, end: usize },
    /// DiSA two-stage: `start` for the first half of the AR steps, `end` after.
    TwoStage { start: usize, end: usize },
    /// An explicit step count per AR step.
    Custom(Vec<usize>),
}

impl StepSchedule {
    /// Parses `constant:100`, `linear:50:5`, `cosine:50:5`, `two-stage:50:5` or
    /// `custom:50,40,30,20`.
    pub fn parse(text: &str) -> Result<Self> {
        let mut parts = text.trim().splitn(2, ':');
        let kind = parts.next().unwrap_or_default().to_ascii_lowercase();
        let rest = parts.next().unwrap_or("");
        let number = |s: &str| -> Result<usize> {
            s.trim().parse::<usize>().map_err(|_| {
                invalid!("schedule `{text}`: `{s}` is not a whole number of diffusion steps")
            })
        };
        let pair = || -> Result<(usize, usize)> {
            let v: Vec<&str> = rest.split(':').collect();
            if v.len() != 2 {
                return Err(invalid!(
                    "schedule `{text}`: expected `{kind}:START:END`, e.g. `{kind}:50:5`"
                ));
            }
            Ok((number(v[0])?, number(v[1])?))
        };
        let schedule = match kind.as_str() {
            "constant" => Self::Constant(number(rest)?),
            "linear" => {
                let (start, end) = pair()?;
                Self::Linear { start, end }
            }
            "cosine" => {
                let (start, end) = pair()?;
                Self::Cosine { start, end }
            }
            "two-stage" | "twostage" | "two_stage" => {
                let (start, end) = pair()?;
                Self::TwoStage { start, end }
            }
            "custom" => Self::Custom(rest.split(',').map(number).collect::<Result<_>>()?),
            _ => {
                return Err(invalid!(
                    "unknown schedule `{text}`: use constant:N, linear:START:END, \
                     cosine:START:END, two-stage:START:END or custom:N,N,..."
                ));
            }
        };
        schedule.validate()?;
        Ok(schedule)
    }

    /// Checks the step counts themselves (independent of K).
    pub fn validate(&self) -> Result<()> {
        let check = |n: usize| -> Result<()> {
            if n < 2 {
                return Err(invalid!(
                    "{n} diffusion steps: at least 2 are needed (the official respacing cannot \
                     build a 1-step diffusion)"
                ));
            }
            if n > MAX_DIFFUSION_STEPS {
                return Err(invalid!(
                    "{n} diffusion steps: the diffusion has only {MAX_DIFFUSION_STEPS} timesteps"
                ));
            }
            Ok(())
        };
        match self {
            Self::Constant(n) => check(*n),
            Self::Linear { start, end }
            | Self::Cosine { start, end }
            | Self::TwoStage { start, end } => {
                check(*start)?;
                check(*end)?;
                if end > start {
                    return Err(invalid!(
                        "DiSA anneals downwards: end steps ({end}) must not exceed start steps ({start})"
                    ));
                }
                Ok(())
            }
            Self::Custom(steps) => {
                if steps.is_empty() {
                    return Err(invalid!("custom schedule lists no step counts"));
                }
                steps.iter().try_for_each(|&n| check(n))
            }
        }
    }

    /// Whether this is a DiSA schedule (by default these clip timesteps at 950 as DiSA's code does).
    pub fn is_disa(&self) -> bool {
        !matches!(self, Self::Constant(_))
    }

    /// The timestep clip each schedule uses in its reference code: DiSA's 950 for DiSA
    /// schedules, none for plain MAR.
    pub fn default_clip(&self) -> TimestepClip {
        if self.is_disa() {
            TimestepClip::DISA
        } else {
            TimestepClip::NONE
        }
    }

    /// The requested (nominal) step count at AR step `k` of `num_ar_steps`.
    ///
    /// # Errors
    /// A custom list whose length differs from `num_ar_steps`, or `k >= num_ar_steps`.
    pub fn steps_at(&self, k: usize, num_ar_steps: usize) -> Result<usize> {
        if k >= num_ar_steps {
            return Err(invalid!("AR step {k} out of range 0..{num_ar_steps}"));
        }
        // `upper_step` in DiSA's code; a single AR step uses the first (largest) entry.
        let upper = (num_ar_steps - 1) as f64;
        let index = |len: usize, f: f64| -> usize { (f * (len - 1) as f64).trunc() as usize };
        Ok(match self {
            Self::Constant(n) => *n,
            Self::Linear { start, end } => {
                let len = start - end + 1;
                let f = if num_ar_steps == 1 {
                    1.0
                } else {
                    (upper - k as f64) / upper
                };
                end + index(len, f)
            }
            Self::Cosine { start, end } => {
                let len = start - end + 1;
                let f = if num_ar_steps == 1 {
                    1.0
                } else {
                    ((std::f64::consts::PI * k as f64 / upper).cos() + 1.0) / 2.0
                };
                end + index(len, f)
            }
            Self::TwoStage { start, end } => {
                if (k as f64) < upper / 2.0 || num_ar_steps == 1 {
                    *start
                } else {
                    *end
                }
            }
            Self::Custom(steps) => {
                if steps.len() != num_ar_steps {
                    return Err(invalid!(
                        "custom schedule lists {} step counts but there are {num_ar_steps} AR steps",
                        steps.len()
                    ));
                }
                steps[k]
            }
        })
    }
}

impl fmt::Display for StepSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Constant(n) => write!(f, "constant:{n}"),
            Self::Linear { start, end } => write!(f, "linear:{start}:{end}"),
            Self::Cosine { start, end } => write!(f, "cosine:{start}:{end}"),
            Self::TwoStage { start, end } => write!(f, "two-stage:{start}:{end}"),
            Self::Custom(v) => {
                let list: Vec<String> = v.iter().map(|n| n.to_string()).collect();
                write!(f, "custom:{}", list.join(","))
            }
        }
    }
}

/// How the CFG scale grows over the AR steps (MAR's `cfg_schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CfgSchedule {
    /// `1 + (cfg - 1) * revealed_after_step / num_tokens`: starts near 1, ends at `cfg`.
    Linear,
    /// `cfg` at every step.
    Constant,
}

impl CfgSchedule {
    /// Parses `linear` or `constant`.
    pub fn parse(text: &str) -> Result<Self> {
        match text.trim().to_ascii_lowercase().as_str() {
            "linear" => Ok(Self::Linear),
            "constant" => Ok(Self::Constant),
            _ => Err(invalid!(
                "unknown cfg schedule `{text}`: use linear or constant"
            )),
        }
    }

    /// The CFG scale at a step after which `mask_len` of `num_tokens` stay masked, computed in
    /// f32 as the official code does with its f32 `mask_len` tensor:
    /// `1 + (cfg − 1) · (N − mask_len) / N`, multiplied before dividing, so every scale a
    /// request accepts is bit-identical to the official code's. Where that product alone would
    /// overflow (a scale near `f32::MAX`) the fraction is taken first instead, which cannot
    /// exceed `cfg`: no finite input gives an infinite scale.
    pub fn scale(self, cfg: f32, mask_len: usize, num_tokens: usize) -> f32 {
        match self {
            Self::Constant => cfg,
            Self::Linear => {
                let (revealed, n) = (num_tokens as f32 - mask_len as f32, num_tokens as f32);
                let product = (cfg - 1.0) * revealed;
                if product.is_finite() {
                    1.0 + product / n
                } else {
                    1.0 + (cfg - 1.0) * (revealed / n)
                }
            }
        }
    }
}

impl fmt::Display for CfgSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Linear => "linear",
            Self::Constant => "constant",
        })
    }
}

/// MAR's mask schedule: the number of tokens still masked after AR step `k`, clamped as in
/// `sample_tokens` so that every step but the last keeps at least one token masked and
/// predicts at least one (when it can).
///
/// `masked_before` is the number of masked tokens before the step.
pub fn mask_len_after(
    k: usize,
    num_ar_steps: usize,
    num_tokens: usize,
    masked_before: usize,
) -> usize {
    let ratio = (std::f64::consts::FRAC_PI_2 * (k + 1) as f64 / num_ar_steps as f64).cos();
    let target = (num_tokens as f64 * ratio).floor().max(0.0) as usize;
    target.min(masked_before.saturating_sub(1)).max(1)
}

/// One row of a schedule table: what AR step `k` does.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedStep {
    /// AR step index, 0-based.
    pub k: usize,
    /// Tokens revealed (sampled by the head) at this step, per image.
    pub tokens: usize,
    /// Tokens still masked after this step (MAR's clamped `mask_len`).
    pub mask_len_after: usize,
    /// Diffusion steps requested by the schedule.
    pub nominal_steps: usize,
    /// Diffusion steps actually run (distinct timesteps after the clip).
    pub effective_steps: usize,
    /// CFG scale used at this step.
    pub cfg: f32,
}

/// A whole generation plan: every AR step and the totals that decide the cost.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    pub steps: Vec<PlannedStep>,
}

impl Plan {
    /// Sequential head calls per image: the sum of effective steps (the latency driver).
    pub fn head_calls(&self) -> usize {
        self.steps
            .iter()
            .filter(|s| s.tokens > 0)
            .map(|s| s.effective_steps)
            .sum()
    }

    /// Token·steps per image: every token's diffusion steps summed (the arithmetic driver).
    pub fn token_steps(&self) -> usize {
        self.steps
            .iter()
            .map(|s| s.tokens * s.effective_steps)
            .sum()
    }
}

/// The most tokens per image a plan is made for: 1,048,576 (a 1024×1024 token grid; MAR at
/// 256×256 pixels has 256, at 512×512 1,024). Keeps a plan's table and its totals
/// (`tokens × steps`) far from memory and integer limits.
pub const MAX_TOKENS: usize = 1 << 20;

/// Checks `K` against the token count.
pub fn validate_ar_steps(num_ar_steps: usize, num_tokens: usize) -> Result<()> {
    if num_tokens > MAX_TOKENS {
        return Err(invalid!(
            "{num_tokens} tokens per image is more than the {MAX_TOKENS} a plan is made for"
        ));
    }
    if num_ar_steps < 1 {
        return Err(invalid!("AR steps must be at least 1"));
    }
    if num_ar_steps > num_tokens {
        return Err(invalid!(
            "{num_ar_steps} AR steps for {num_tokens} tokens: each AR step must reveal at least \
             one token, so K ≤ {num_tokens}"
        ));
    }
    Ok(())
}

/// Plans a generation: tokens per step, step counts and CFG scales, exactly as the sampler
/// will run them.
pub fn plan(
    num_ar_steps: usize,
    num_tokens: usize,
    schedule: &StepSchedule,
    clip: TimestepClip,
    cfg: f32,
    cfg_schedule: CfgSchedule,
) -> Result<Plan> {
    validate_ar_steps(num_ar_steps, num_tokens)?;
    schedule.validate()?;
    let mut masked = num_tokens;
    let mut steps = Vec::with_capacity(num_ar_steps);
    for k in 0..num_ar_steps {
        let mask_len = mask_len_after(k, num_ar_steps, num_tokens, masked);
        let tokens = if k + 1 == num_ar_steps {
            masked
        } else {
            masked - mask_len.min(masked)
        };
        let nominal = schedule.steps_at(k, num_ar_steps)?;
        let effective = SpacedDiffusion::count_timesteps(nominal, clip)?;
        steps.push(PlannedStep {
            k,
            tokens,
            mask_len_after: mask_len,
            nominal_steps: nominal,
            effective_steps: effective,
            cfg: cfg_schedule.scale(cfg, mask_len, num_tokens),
        });
        masked = if k + 1 == num_ar_steps { 0 } else { mask_len };
    }
    Ok(Plan { steps })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_endpoints_follow_disa() {
        let s = StepSchedule::Linear { start: 50, end: 5 };
        assert_eq!(s.steps_at(0, 64).unwrap(), 50);
        assert_eq!(s.steps_at(63, 64).unwrap(), 5);
        assert_eq!(s.steps_at(1, 64).unwrap(), 49);
        assert_eq!(s.steps_at(4, 64).unwrap(), 47);
    }

    #[test]
    fn parse_rejects_bad_settings() {
        assert!(StepSchedule::parse("linear:5:50").is_err());
        assert!(StepSchedule::parse("linear:50:0").is_err());
        assert!(StepSchedule::parse("constant:1").is_err());
        assert!(StepSchedule::parse("constant:1001").is_err());
        assert!(StepSchedule::parse("wobbly:3").is_err());
        assert!(StepSchedule::parse("linear:50").is_err());
        assert!(StepSchedule::parse("custom:").is_err());
        assert_eq!(
            StepSchedule::parse("two-stage:50:5").unwrap(),
            StepSchedule::TwoStage { start: 50, end: 5 }
        );
    }

    #[test]
    fn mask_schedule_k16_matches_spec() {
        // MAR's cosine mask schedule (LTH14/mar `models/mar.py`, `MAR.sample_tokens`, with
        // `mask_by_order`): K=16, N=256 -> tokens per step.
        let p = plan(
            16,
            256,
            &StepSchedule::Constant(2),
            TimestepClip::NONE,
            1.0,
            CfgSchedule::Linear,
        )
        .unwrap();
        let tokens: Vec<usize> = p.steps.iter().map(|s| s.tokens).collect();
        assert_eq!(
            tokens,
            vec![2, 3, 7, 8, 11, 13, 15, 16, 19, 20, 22, 23, 23, 25, 24, 25]
        );
    }
}
