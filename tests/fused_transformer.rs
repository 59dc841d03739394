//! The fused transformer kernels (`shaders/transformer.wgsl`, `src/gpu/transformer.rs`)
//! against Burn's transformer on the same wgpu device (Mesa's lavapipe where no GPU exists):
//! one forward pass for every storage of the project's file and several masks (none known,
//! some, all but one; sequences with different known positions; the unconditional class),
//! whole generations, the launches of a pass, and bad jobs. The official outputs are checked
//! in `tests/parity.rs` (`wgpu_fused::mae`).

#![cfg(feature = "wgpu")]

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use common::*;
use disa::gpu::{Kernels, TransformerJob};
use disa::model::MaskLayout;
use disa::noise::SeededNoise;
use disa::sampler::{Generation, LoadedModel, Request};
use disa::schedule::StepSchedule;
use disa::weights::{Bundle, Storage};
use std::sync::Arc;

/// Scaled tolerance against Burn's transformer with the same weights: both run f32
/// arithmetic on the same (dequantized) values; only the summation order differs.
const TOLERANCE: f64 = 1e-4;

fn device() -> Device {
    disa::backend::Backend::Wgpu
        .device()
        .expect("a wgpu adapter (lavapipe on CI)")
}

/// The reference model stored as `storage`, built on the GPU with its fused kernels.
fn generator(storage: Storage) -> Arc<LoadedModel> {
    let bytes = official().to_bytes_as(storage).unwrap();
    let g = Bundle::from_bytes(storage.name(), &bytes)
        .unwrap()
        .into_generator(&device())
        .unwrap();
    assert!(
        g.fused_transformer().is_some(),
        "{}: no fused transformer",
        storage.name()
    );
    Arc::new(g)
}

/// A small deterministic generator of values in [-1, 1) and of permutations.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn values(&mut self, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| (self.next() as f32 / (1u64 << 31) as f32) * 2.0 - 1.0)
            .collect()
    }
    /// `known` distinct positions of `0..n`, in random order.
    fn positions(&mut self, n: usize, known: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            all.swap(i, self.next() as usize % (i + 1));
        }
        all.truncate(known);
        all
    }
}

/// Burn's transformer over the same job: every position's `z`, `[S·N, dec]`.
fn burn_forward(
    g: &LoadedModel,
    labels: &[Option<usize>],
    mask: &[Vec<bool>],
    tokens: &[f32],
) -> Vec<f32> {
    let (n, c) = (g.config.seq_len(), g.config.token_dim());
    let t = &g.model.transformer;
    let layout = MaskLayout::new(mask, g.config.buffer_size);
    let x = Tensor::<3>::from_data(
        TensorData::new(tokens.to_vec(), [labels.len(), n, c]),
        &g.device,
    );
    let z = t.decode(
        t.encode(x, &layout, t.class_embedding(labels, &g.device)),
        &layout,
    );
    z.into_data().try_into_vec::<f32>().unwrap()
}

/// One forward pass per storage and mask against Burn's: the rows the head would read, in a
/// shuffled order, and every row.
#[test]
fn one_forward_matches_burns_transformer_for_every_storage() {
    for storage in [Storage::F32, Storage::F16, Storage::Int8, Storage::Int4] {
        check_forwards(&generator(storage), storage);
    }
}

/// The shared-array sizes the page compiles on a software adapter (a quarter of a GPU's:
/// browsers zero-initialize workgroup memory, which SwiftShader compiles into code as long as
/// the arrays), here on the native adapter: more tiles per `linear`, more key chunks per
/// attention, the same results.
#[test]
fn browser_software_sizes_match_burns_transformer() {
    for storage in [Storage::F32, Storage::Int8] {
        let g = generator(storage);
        let fused = g.fused_transformer().unwrap();
        fused.use_browser_software_sizes(true).unwrap();
        check_forwards(&g, storage);
        fused.use_browser_software_sizes(false).unwrap();
    }
}

/// Fused forward passes of `g` (stored as `storage`) against Burn's transformer: several
/// label sets (CFG's unconditional rows among them), 0 to all tokens known, every row or a
/// third of them selected.
fn check_forwards(g: &LoadedModel, storage: Storage) {
    {
        let fused = g.fused_transformer().unwrap();
        let (n, c, d) = (
            g.config.seq_len(),
            g.config.token_dim(),
            g.config.decoder_embed_dim,
        );
        let classes = g.config.class_num;
        let mut rng = Lcg(storage as u64 + 11);
        // (labels, known tokens per sequence)
        let cases: Vec<(Vec<Option<usize>>, usize)> = vec![
            (vec![Some(1), None], 0),
            (vec![Some(0), Some(classes - 1), None], n / 3),
            (vec![Some(2)], n - 1),
            (vec![None, Some(3)], n),
        ];
        for (labels, known) in cases {
            let s = labels.len();
            let mask: Vec<Vec<bool>> = (0..s)
                .map(|_| {
                    let mut m = vec![true; n];
                    for p in rng.positions(n, known) {
                        m[p] = false;
                    }
                    m
                })
                .collect();
            let tokens = rng.values(s * n * c);
            let reference = burn_forward(g, &labels, &mask, &tokens);
            let every: Vec<usize> = (0..s * n).collect();
            let some: Vec<usize> = rng.positions(s * n, (s * n).div_ceil(3));
            for select in [every, some] {
                let z = fused
                    .read(
                        fused
                            .submit(&TransformerJob {
                                labels: &labels,
                                mask: &mask,
                                tokens: &tokens,
                                select: &select,
                            })
                            .unwrap(),
                    )
                    .unwrap();
                let want: Vec<f32> = select
                    .iter()
                    .flat_map(|&r| reference[r * d..(r + 1) * d].iter().copied())
                    .collect();
                let err = scaled(&z, &want);
                assert!(
                    err <= TOLERANCE,
                    "{} labels {labels:?}, {known} known, {} rows: {err:.3e}",
                    storage.name(),
                    select.len()
                );
            }
        }
    }
}

/// A pass is `7 + 5·(encoder + decoder depth)` launches (one fewer with no token known: no
/// `z_proj`), counted as recorded.
#[test]
fn launches_per_forward() {
    let g = generator(Storage::Int8);
    let fused = g.fused_transformer().unwrap();
    let (n, c) = (g.config.seq_len(), g.config.token_dim());
    let depth = g.config.encoder_depth + g.config.decoder_depth;
    for known in [0, 5] {
        let mut mask = vec![true; n];
        mask[..known].iter_mut().for_each(|m| *m = false);
        let before = fused.dispatches();
        let submitted = fused
            .submit(&TransformerJob {
                labels: &[Some(1), None],
                mask: &[mask.clone(), mask],
                tokens: &vec![0.5; 2 * n * c],
                select: &[0, n + 1],
            })
            .unwrap();
        fused.read(submitted).unwrap();
        let launched = (fused.dispatches() - before) as usize;
        assert_eq!(launched, fused.dispatches_per_forward(known));
        assert_eq!(launched, 6 + usize::from(known > 0) + 5 * depth);
    }
}

/// Whole generations with both fused parts against the fused head on Burn's transformer:
/// the same positions and, within tolerance, the same tokens at every AR step.
#[test]
fn generations_match_burns_transformer() {
    let bundle =
        Bundle::from_bytes("shipped", include_bytes!("../www/assets/model.safetensors")).unwrap();
    let g = Arc::new(bundle.into_generator(&device()).unwrap());
    let request = Request {
        labels: vec![Some(1), Some(4)],
        ar_steps: 5,
        schedule: StepSchedule::Linear { start: 12, end: 5 },
        cfg: 3.0,
        ..Request::default()
    };
    let run = |kernels: Kernels| {
        let mut generation =
            Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(3)))
                .unwrap()
                .kernels(kernels);
        let used = generation.uses_fused_transformer();
        (generation.run_to_end().unwrap(), used)
    };
    let (burn, used_burn) = run(Kernels::FusedHead);
    let (fused, used_fused) = run(Kernels::Fused);
    assert!(!used_burn && used_fused);
    assert_eq!(burn.len(), fused.len());
    for (a, b) in burn.iter().zip(&fused) {
        assert_eq!(a.positions, b.positions);
        let err = scaled(&b.values, &a.values);
        assert!(err <= TOLERANCE, "step {}: {err:.3e}", a.k);
    }
}

/// Jobs that do not fit the model are errors, not panics or garbage.
#[test]
fn bad_jobs_are_errors() {
    let g = generator(Storage::F32);
    let fused = g.fused_transformer().unwrap();
    let (n, c) = (g.config.seq_len(), g.config.token_dim());
    let mask = vec![true; n];
    let tokens = vec![0.0; n * c];
    let job = |labels: &[Option<usize>], mask: &[Vec<bool>], tokens: &[f32], select: &[usize]| {
        fused
            .submit(&TransformerJob {
                labels,
                mask,
                tokens,
                select,
            })
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let one_mask = std::slice::from_ref(&mask);
    assert!(job(&[Some(0)], one_mask, &tokens[1..], &[0]).contains("disagree"));
    assert!(job(&[Some(g.config.class_num)], one_mask, &tokens, &[0]).contains("class"));
    assert!(job(&[Some(0)], one_mask, &tokens, &[n]).contains("selected row"));
    assert!(job(&[], &[], &[], &[]).contains("disagree"));
    let mut other = mask.clone();
    other[0] = false;
    let two = vec![0.0; 2 * n * c];
    assert!(job(&[None, None], &[mask.clone(), other], &two, &[0]).contains("different"));
    assert!(job(&[None], &[vec![true; n - 1]], &tokens, &[0]).contains("one entry per token"));
}
