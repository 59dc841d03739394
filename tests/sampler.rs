//! The generation state machine between steps: the schedule can change for the steps not run yet.

mod common;

use common::*;
use disa::noise::SeededNoise;
use disa::sampler::{Generation, Request};
use disa::schedule::StepSchedule;

#[test]
fn a_new_schedule_applies_to_the_remaining_steps() {
    let g = generator(&burn::tensor::Device::flex());
    let request = Request {
        labels: vec![Some(1)],
        ar_steps: 4,
        schedule: StepSchedule::Constant(20),
        ..Request::default()
    };
    let mut generation = Generation::new(g, request, Box::new(SeededNoise::new(1))).unwrap();
    let first = generation.step().unwrap().unwrap();
    assert_eq!(first.nominal_steps, 20);
    assert!(
        generation
            .set_schedule(StepSchedule::Linear { start: 40, end: 0 })
            .is_err(),
        "invalid schedule refused"
    );
    generation
        .set_schedule(StepSchedule::Linear { start: 40, end: 10 })
        .unwrap();
    let rest: Vec<usize> = generation
        .run_to_end()
        .unwrap()
        .iter()
        .map(|e| e.nominal_steps)
        .collect();
    // Linear 40→10 over K=4: 40, 30, 20, 10; steps 1..3 follow it.
    assert_eq!(rest, vec![30, 20, 10]);
    assert!(generation.is_done());
    assert!(
        generation.mask().iter().all(|row| row.iter().all(|m| !m)),
        "every token revealed"
    );
}

/// On the CPU the transformer's sequences and the head's token rows run as parts on separate
/// threads (`disa::model::threads::run_parts`): the tokens must not depend on how many.
#[test]
fn cpu_parts_on_more_threads_give_the_same_tokens() {
    use disa::model::threads::{MACS_PER_PART, parts_for};
    let g = generator(&burn::tensor::Device::flex());
    // The fewest images (from 3) whose transformer work splits at 4 threads: 2B sequences
    // (the images and their CFG copies) at the first AR step, counting the decoder's last
    // block at one revealed row per sequence, the least it can do.
    let images = (3..=64)
        .find(|&b| parts_for(g.model.transformer.macs(2 * b, 0, 1), 2 * b, 4) >= 2)
        .expect("a batch of at most 64 images splits");
    let request = Request {
        labels: (0..images).map(|i| Some(i % g.config.class_num)).collect(),
        ar_steps: 4,
        schedule: StepSchedule::Linear { start: 20, end: 5 },
        cfg: 3.0,
        ..Request::default()
    };
    let first_rows = images * g.config.seq_len() / 4;
    let head_macs = 2 * first_rows * 20 * g.model.head.macs_per_row();
    assert!(
        head_macs >= 2 * MACS_PER_PART,
        "head loop of {head_macs} multiply-adds"
    );
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let mut generation =
                Generation::new(g.clone(), request.clone(), Box::new(SeededNoise::new(5))).unwrap();
            generation.run_to_end().unwrap();
            generation.tokens().to_vec()
        })
    };
    let (one, four) = (run(1), run(4));
    let scale = one.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = one
        .iter()
        .zip(&four)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(scale > 0.0 && one.iter().all(|v| v.is_finite()));
    assert!(
        worst <= 1e-4 * scale,
        "1 vs 4 threads: max |Δ| {worst} (max |value| {scale})"
    );
}

/// The CPU's host head (`disa::model::host_head`) against the head's Burn layers, row for row,
/// at timesteps across the schedule and for row counts that do not fill SIMD lanes.
#[test]
fn host_head_matches_the_tensor_head() {
    use burn::tensor::{Tensor, TensorData};
    use disa::model::host_head::{HostHead, HostScratch};
    let device = burn::tensor::Device::flex();
    let g = generator(&device);
    let head = &g.model.head;
    let table = head.time_embedding_table(1000, &device);
    let host = HostHead::new(head, table).expect("the set's head is small");
    let (c, w) = (g.config.token_dim(), g.config.diffloss_w);
    let mut scratch = HostScratch::default();
    for (rows, t) in [(1, 0), (3, 999), (8, 500), (13, 37)] {
        let values = |n: usize, seed: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i + seed) * 7919 % 2000) as f32 / 1000.0 - 1.0) * 1.5)
                .collect()
        };
        let (x, cond) = (values(rows * c, t), values(rows * w, t + 1));
        let got = host.forward(&x, t, &cond, rows, &mut scratch);
        let tensor = |v: Vec<f32>, cols: usize| {
            Tensor::<2>::from_data(TensorData::new(v, [rows, cols]), &device)
        };
        let want = head
            .forward_embedded(
                tensor(x, c),
                head.time_embedding(t, &device),
                tensor(cond, w),
            )
            .into_data()
            .try_into_vec::<f32>()
            .unwrap();
        assert_eq!(got.len(), want.len());
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = got
            .iter()
            .zip(&want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            scale > 0.0,
            "rows {rows}, t {t}: the head's output is all zero"
        );
        assert!(
            worst <= 1e-5 * scale,
            "rows {rows}, t {t}: max |Δ| {worst:e} (max |value| {scale:e})"
        );
    }
}

/// A token's head output must not depend on how many rows share the call (a thread's part, the
/// teaching view's replay): the same bits for every row count, one row included.
#[test]
fn host_head_rows_do_not_depend_on_the_row_count() {
    use disa::model::host_head::{HostHead, HostScratch};
    let device = burn::tensor::Device::flex();
    let g = generator(&device);
    let head = &g.model.head;
    let host = HostHead::new(head, head.time_embedding_table(1000, &device)).unwrap();
    let (c, w) = (g.config.token_dim(), g.config.diffloss_w);
    let mut scratch = HostScratch::default();
    let rows = 12;
    let x: Vec<f32> = (0..rows * c)
        .map(|i| (i * 7919 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let cond: Vec<f32> = (0..rows * w)
        .map(|i| (i * 104_729 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    let all = host.forward(&x, 500, &cond, rows, &mut scratch);
    for m in [1, 2, 3, 5, 8] {
        let first = host.forward(&x, 500, &cond, m, &mut scratch);
        assert_eq!(first[..], all[..first.len()], "{m} rows against {rows}");
    }
}

/// The host blocks take many sequences in groups (to keep activations in cache): the rows must
/// equal Burn's blocks over all sequences at once, with enough sequences for several groups.
#[test]
fn host_transformer_groups_match_burns_blocks() {
    use burn::tensor::{Tensor, TensorData};
    use disa::model::host_transformer::HostTransformer;
    let device = burn::tensor::Device::flex();
    let g = generator(&device);
    let t = &g.model.transformer;
    let host = HostTransformer::new(t).expect("the set's transformer is small");
    let d = g.config.decoder_embed_dim;
    let l = g.config.buffer_size + g.config.seq_len();
    let b = 2 * 256 / l + 3; // more than two groups of 256 rows
    let x: Vec<f32> = (0..b * l * d)
        .map(|i| (i * 7919 % 2000) as f32 / 1000.0 - 1.0)
        .collect();
    // Two kept rows per sequence, at different positions in each, ascending.
    let half = l / 2;
    let kept: Vec<usize> = (0..b)
        .flat_map(|s| [s * l + s % half, s * l + half + (7 * s) % half])
        .collect();
    let input = || Tensor::<2>::from_data(TensorData::new(x.clone(), [b * l, d]), &device);
    let got = host
        .decoder(input(), b, &kept)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    let (last, earlier) = t.decoder_blocks.split_last().expect("decoder blocks");
    let burn = earlier
        .iter()
        .fold(input(), |x, block| block.forward_rows(x, b));
    let want = last
        .forward_rows_at(burn, b, &kept)
        .into_data()
        .try_into_vec::<f32>()
        .unwrap();
    assert_eq!(got.len(), kept.len() * d);
    let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
    let worst = got
        .iter()
        .zip(&want)
        .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        worst <= 1e-5 * scale,
        "max |Δ| {worst:e} (max |value| {scale:e})"
    );
}
