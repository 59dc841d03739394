//! Size checks made before allocating: a configuration, a batch or a file that would not fit
//! in this machine's memory is refused with the number, instead of aborting part-way.

use crate::error::{DisaError, Result};
use crate::model::MarConfig;

/// Bytes of memory this machine has (`MemTotal`), or `None` where it cannot be read.
pub fn machine_memory() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        let text = std::fs::read_to_string("/proc/meminfo").ok()?;
        let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

/// The memory budget checks compare against: the machine's memory, or 16 GiB where unknown.
pub fn memory_budget() -> u64 {
    machine_memory().unwrap_or(16 << 30)
}

/// Bytes as text (`1.2 GB`).
pub fn human(bytes: f64) -> String {
    if bytes >= 1e12 {
        format!("{:.3e} bytes", bytes)
    } else if bytes >= 1e9 {
        format!("{:.1} GB", bytes / 1e9)
    } else {
        format!("{:.1} MB", bytes / 1e6)
    }
}

/// Refuses `bytes` (an estimate for `what`) when it exceeds the memory budget; NaN and
/// infinite estimates are refused too.
pub fn check_fits(what: &str, bytes: f64) -> Result<()> {
    let budget = memory_budget();
    if bytes.is_nan() || bytes > budget as f64 {
        return Err(DisaError::InvalidSetting(format!(
            "{what} needs about {}, more than this machine's {} of memory",
            human(bytes),
            human(budget as f64)
        )));
    }
    Ok(())
}

/// Parameter count of a configuration in floating point: never overflows, whatever the sizes
/// (the same terms as [`MarConfig::num_params`]).
pub fn config_params(c: &MarConfig) -> f64 {
    let f = |v: usize| v as f64;
    let (e, d, w) = (
        f(c.encoder_embed_dim),
        f(c.decoder_embed_dim),
        f(c.diffloss_w),
    );
    let tc = f(c.vae_embed_dim) * f(c.patch_size) * f(c.patch_size);
    let grid = if c.vae_stride == 0 || c.patch_size == 0 {
        0.0
    } else {
        f(c.img_size / c.vae_stride / c.patch_size)
    };
    let (n, b) = (grid * grid, f(c.buffer_size));
    let block = |dim: f64| {
        let h = (dim * c.mlp_ratio).floor();
        4.0 * dim + (3.0 * dim * dim + 3.0 * dim) + (dim * dim + dim) + 2.0 * dim * h + h + dim
    };
    let backbone = f(c.class_num) * e
        + e
        + (tc * e + e)
        + 2.0 * e
        + (n + b) * e
        + f(c.encoder_depth) * block(e)
        + 2.0 * e
        + (e * d + d)
        + d
        + (n + b) * d
        + f(c.decoder_depth) * block(d)
        + 2.0 * d
        + n * d;
    let head = (256.0 * w + w)
        + (w * w + w)
        + (d * w + w)
        + (tc * w + w)
        + f(c.diffloss_d) * (2.0 * w + 2.0 * (w * w + w) + (w * 3.0 * w + 3.0 * w))
        + (w * 2.0 * tc + 2.0 * tc)
        + (w * 2.0 * w + 2.0 * w);
    backbone + head
}

/// Refuses a configuration whose weights (f32) alone do not fit in memory, or whose MLP ratio
/// is not a positive finite number; `copies` is how many model-sized buffers the use holds
/// (about 1 to sample, 5 to train: weights, gradients, two AdamW moments, EMA).
pub fn check_config(config: &MarConfig, copies: f64, what: &str) -> Result<()> {
    if !(config.mlp_ratio > 0.0 && config.mlp_ratio.is_finite()) {
        return Err(DisaError::Config(format!(
            "mlp_ratio {} must be a positive number",
            config.mlp_ratio
        )));
    }
    let params = config_params(config);
    check_fits(
        &format!("{what} ({:.3e} parameters)", params),
        params * 4.0 * copies,
    )
}

/// Activation memory of sampling `images` images with `config` at once (transformer
/// activations for the sequence, attention scores, doubled for classifier-free guidance):
/// a deliberately generous estimate, used only to refuse batches that cannot fit.
pub fn sampling_bytes(config: &MarConfig, images: f64, cfg: bool) -> f64 {
    let grid = if config.vae_stride == 0 || config.patch_size == 0 {
        0.0
    } else {
        (config.img_size / config.vae_stride / config.patch_size) as f64
    };
    let seq = grid * grid + config.buffer_size as f64;
    let width = config.encoder_embed_dim.max(config.decoder_embed_dim) as f64;
    let heads = config
        .encoder_num_heads
        .max(config.decoder_num_heads)
        .max(1) as f64;
    let per_image = seq * width * (8.0 + 2.0 * config.mlp_ratio) + heads * seq * seq * 2.0;
    let rows = images * if cfg { 2.0 } else { 1.0 };
    config_params(config) * 4.0 + rows * per_image * 4.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_float_count_matches_the_exact_one() {
        for c in [
            MarConfig::fashion(),
            MarConfig::mar_base(),
            MarConfig::mar_huge(),
        ] {
            assert_eq!(config_params(&c), c.num_params() as f64);
        }
    }

    #[test]
    fn absurd_configurations_are_refused_with_the_number() {
        let huge = MarConfig {
            encoder_depth: 100_000,
            ..MarConfig::mar_huge()
        };
        let e = check_config(&huge, 1.0, "the model")
            .unwrap_err()
            .to_string();
        assert!(e.contains("parameters") && e.contains("memory"), "{e}");
        let ratio = MarConfig {
            mlp_ratio: 1e15,
            ..MarConfig::fashion()
        };
        assert!(check_config(&ratio, 1.0, "m").is_err());
        let nan = MarConfig {
            mlp_ratio: f64::NAN,
            ..MarConfig::fashion()
        };
        assert!(check_config(&nan, 1.0, "m").is_err());
        check_config(&MarConfig::fashion(), 5.0, "m").unwrap();
    }
}
