//! Which tensors a model uses, so that a file's others are refused by name instead of being
//! ignored: a configuration with fewer blocks than the weights (`--config` with
//! `encoder_depth` 1 for two-block weights), or another model's file, would otherwise load and
//! draw different images without a word. Names and shapes come from the model's own builders
//! (describing only: no value is drawn or allocated), so there is no name list to keep in step.

use crate::base::{HostTensor, WeightMap};
use crate::error::{DisaError, Result};
use crate::model::params::{Init, ParamBuilder, TensorSource};
use crate::model::{DiffusionHead, MarConfig, MarTransformer, VaeConfig, VaeDecoder};
use std::collections::BTreeMap;

/// Keys named in full in an unused-tensor error; the rest are counted.
const NAMED: usize = 5;

/// A tensor source that gives every tensor its shape and no values: the builders' walk names
/// every tensor a model of a configuration takes, at no cost.
struct ShapesOnly;

impl TensorSource for ShapesOnly {
    fn tensor(&mut self, _key: &str, shape: &[usize], _init: Init) -> Result<HostTensor> {
        Ok(HostTensor {
            shape: shape.to_vec(),
            values: Vec::new(),
        })
    }
}

fn shapes(described: BTreeMap<String, HostTensor>) -> BTreeMap<String, Vec<usize>> {
    described.into_iter().map(|(k, t)| (k, t.shape)).collect()
}

/// The official names and shapes of every tensor a MAR model of `config` takes (transformer
/// and diffusion head; the decoder has its own file).
pub fn mar_tensor_shapes(config: &MarConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    config.validate()?;
    let mut source = ShapesOnly;
    let mut p = ParamBuilder::describe(&mut source);
    MarTransformer::build(&mut p, config)?;
    DiffusionHead::build(&mut p, config)?;
    Ok(shapes(p.into_described()))
}

/// The names and shapes of every tensor the VAE decoder of sizes `config` takes.
pub fn vae_tensor_shapes(config: &VaeConfig) -> Result<BTreeMap<String, Vec<usize>>> {
    let mut source = ShapesOnly;
    let mut p = ParamBuilder::describe(&mut source);
    VaeDecoder::build(&mut p, config)?;
    Ok(shapes(p.into_described()))
}

/// `count` keys as text: the first [`NAMED`] quoted, then how many more.
pub(crate) fn some_keys<'a>(keys: impl IntoIterator<Item = &'a str>, count: usize) -> String {
    let mut text = keys
        .into_iter()
        .take(NAMED)
        .map(|k| format!("`{k}`"))
        .collect::<Vec<_>>()
        .join(", ");
    if count > NAMED {
        text.push_str(&format!(" and {} more", count - NAMED));
    }
    text
}

/// Says how many of `unused` tensors sit under no MAR module at all.
fn foreign_note(foreign: usize, unused: usize) -> String {
    match foreign {
        0 => String::new(),
        n if n == unused => ", nor of any of MAR's modules".to_string(),
        n => format!(", and {n} of them of none of MAR's modules"),
    }
}

/// The highest `prefix.<i>.` index among `names`, plus one (0 if none).
fn indexed_extent<'a>(names: impl Iterator<Item = &'a str>, prefix: &str) -> usize {
    names
        .filter_map(|k| k.strip_prefix(prefix)?.strip_prefix('.'))
        .filter_map(|rest| rest.split('.').next()?.parse::<usize>().ok())
        .map(|i| i + 1)
        .max()
        .unwrap_or(0)
}

/// Refuses the tensors of `listed` (`(name, values)` of every tensor in the file, whether read
/// or not) that a MAR model of `config` does not take. `origin` says where the configuration
/// came from (`None`: inferred from the weights), for the message.
pub(crate) fn check_mar_unused<'a>(
    source_name: &str,
    listed: impl Iterator<Item = (&'a str, f64)> + Clone,
    config: &MarConfig,
    origin: Option<&str>,
) -> Result<()> {
    let expected = mar_tensor_shapes(config)?;
    let unused: Vec<(&str, f64)> = listed
        .clone()
        .filter(|(k, _)| !expected.contains_key(*k))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    let values: f64 = unused.iter().map(|(_, v)| v).sum();
    let mut cause = Vec::new();
    for (prefix, field, depth) in [
        ("encoder_blocks", "encoder_depth", config.encoder_depth),
        ("decoder_blocks", "decoder_depth", config.decoder_depth),
        ("diffloss.net.res_blocks", "diffloss_d", config.diffloss_d),
    ] {
        let held = indexed_extent(listed.clone().map(|(k, _)| k), prefix);
        if held > depth {
            cause.push(format!(
                "{field} is {depth} but the weights hold {held} `{prefix}`"
            ));
        }
    }
    let foreign = unused
        .iter()
        .filter(|(k, _)| !super::map::is_mar_tensor(k))
        .count();
    let they = if unused.len() == 1 {
        "It is"
    } else {
        "They are"
    };
    let advice = match (origin, cause.is_empty()) {
        (Some(origin), false) => format!(
            "The configuration ({origin}) has fewer blocks than the weights: {}. Give the \
             configuration these weights were trained with, or leave it out to infer it from \
             the weights.",
            cause.join(", ")
        ),
        (Some(origin), true) => format!(
            "{they} no part of a MAR model of the configuration ({origin}){}: the file is \
             likely another model's, or was edited. Use this model's own weights, or the \
             configuration they were trained with.",
            foreign_note(foreign, unused.len())
        ),
        (None, _) => format!(
            "{they} no part of a MAR model of the configuration the weights outline{}: the \
             file is likely another model's, or was edited (a tensor added, or a block's \
             numbering broken). Use the model's own weights.",
            foreign_note(foreign, unused.len())
        ),
    };
    Err(DisaError::Config(format!(
        "weight file {source_name} holds {} tensor{} ({values:.3e} values) that the model does \
         not use: {}. {advice}",
        unused.len(),
        if unused.len() == 1 { "" } else { "s" },
        some_keys(unused.iter().map(|(k, _)| *k), unused.len()),
    )))
}

/// Refuses VAE decoder tensors of `weights` that the decoder of the sizes they outline does
/// not take. Weights that outline no decoder are left to the decoder's builder, which says
/// what is missing.
pub(crate) fn check_vae_unused(weights: &WeightMap) -> Result<()> {
    let Ok(config) = VaeConfig::infer(weights) else {
        return Ok(());
    };
    let Ok(expected) = vae_tensor_shapes(&config) else {
        return Ok(());
    };
    let unused: Vec<&str> = weights
        .tensors
        .keys()
        .map(String::as_str)
        .filter(|k| !expected.contains_key(*k))
        .collect();
    if unused.is_empty() {
        return Ok(());
    }
    Err(DisaError::Config(format!(
        "VAE file {} holds {} decoder tensor{} that the decoder its weights outline ({} up \
         levels of {} blocks) does not use: {}. It is not a VAE of the official KL kind, or was \
         edited (a block's numbering broken); use the VAE the model was trained with.",
        weights.source_name,
        unused.len(),
        if unused.len() == 1 { "" } else { "s" },
        config.level_channels.len(),
        config.blocks_per_level,
        some_keys(unused.iter().copied(), unused.len()),
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_described_names_are_those_of_the_initial_weights() {
        let c = MarConfig::fashion();
        let described = mar_tensor_shapes(&c).unwrap();
        let initial = c.initial_weights(0);
        assert_eq!(described.len(), initial.tensors.len());
        for (k, t) in &initial.tensors {
            assert_eq!(described.get(k), Some(&t.shape), "{k}");
        }
    }

    #[test]
    fn a_shallower_configuration_names_the_surplus_blocks() {
        let c = MarConfig::fashion();
        let weights = c.initial_weights(0);
        let listed = || {
            weights
                .tensors
                .iter()
                .map(|(k, t)| (k.as_str(), t.numel() as f64))
        };
        check_mar_unused("m", listed(), &c, Some("--config x")).unwrap();
        let shallow = MarConfig {
            encoder_depth: c.encoder_depth - 1,
            ..c.clone()
        };
        let e = check_mar_unused("m", listed(), &shallow, Some("--config x"))
            .unwrap_err()
            .to_string();
        let last = c.encoder_depth - 1;
        assert!(e.contains(&format!("`encoder_blocks.{last}.")), "{e}");
        assert!(
            e.contains(&format!(
                "encoder_depth is {last} but the weights hold {} `encoder_blocks`",
                c.encoder_depth
            )),
            "{e}"
        );
        assert!(e.contains("more"), "more than five keys are counted: {e}");
    }

    #[test]
    fn describing_the_largest_preset_allocates_no_weights() {
        // MAR-H's ~943M values would take 3.8 GB: only shapes are made.
        let started = std::time::Instant::now();
        let c = MarConfig::mar_huge();
        let shapes = mar_tensor_shapes(&c).unwrap();
        let values: usize = shapes.values().map(|s| s.iter().product::<usize>()).sum();
        assert_eq!(values, c.num_params());
        assert!(started.elapsed().as_secs() < 10, "{:?}", started.elapsed());
    }

    #[test]
    fn key_lists_name_five_and_count_the_rest() {
        let keys = ["a", "b", "c", "d", "e", "f", "g"];
        assert_eq!(
            some_keys(keys.iter().copied(), keys.len()),
            "`a`, `b`, `c`, `d`, `e` and 2 more"
        );
        assert_eq!(some_keys(["x"], 1), "`x`");
    }
}
