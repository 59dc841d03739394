//! The teaching analysis on the built-in model: the replayed chains end at exactly the tokens
//! the generation produced, the completed image agrees with the chains' one-shot estimates, and
//! an in-progress generation can be analysed too.

use disa::analysis::{AnalysisOptions, Analyzer, Recorder, Recording};
use disa::noise::SeededNoise;
use disa::sampler::{Generation, LoadedModel, Request};
use disa::schedule::StepSchedule;
use std::sync::Arc;

fn built_in() -> Arc<LoadedModel> {
    let bundle = disa::weights::Bundle::from_bytes(
        "built-in",
        include_bytes!("../www/assets/model.safetensors"),
    )
    .unwrap();
    Arc::new(
        bundle
            .into_generator(&burn::tensor::Device::flex())
            .unwrap(),
    )
}

fn request(cfg: f32, schedule: &str) -> Request {
    Request {
        labels: vec![Some(7)],
        ar_steps: 8,
        schedule: StepSchedule::parse(schedule).unwrap(),
        cfg,
        ..Request::default()
    }
}

fn record(g: &Arc<LoadedModel>, request: Request, seed: u64, steps: usize) -> Recording {
    let mut recorder = Recorder::new(g.clone(), request, Box::new(SeededNoise::new(seed))).unwrap();
    for _ in 0..steps {
        if recorder.step().unwrap().is_none() {
            break;
        }
    }
    recorder.finish()
}

fn options(samples: usize) -> AnalysisOptions {
    AnalysisOptions {
        samples,
        ..AnalysisOptions::default()
    }
}

#[test]
fn replayed_chains_end_at_the_generated_tokens() {
    let g = built_in();
    for (cfg, schedule) in [(3.0, "linear:20:5"), (1.0, "constant:10")] {
        let req = request(cfg, schedule);
        // The plain generation, without any recording.
        let mut plain =
            Generation::new(g.clone(), req.clone(), Box::new(SeededNoise::new(11))).unwrap();
        plain.run_to_end().unwrap();
        let recording = Arc::new(record(&g, req, 11, usize::MAX));
        assert!(recording.is_complete());
        // Recording changes nothing: same final tokens.
        let (tokens, _) = recording.state_after(recording.steps.len());
        assert_eq!(tokens, plain.tokens());

        let analysis = Analyzer::new(g.clone(), recording.clone(), options(4))
            .unwrap()
            .run_to_end()
            .unwrap();
        assert_eq!(analysis.steps.len(), 8);
        let c = g.config.token_dim();
        for (s, rec) in analysis.steps.iter().zip(&recording.steps) {
            assert!(
                s.replay_error <= 1e-5,
                "cfg {cfg}, step {}: {}",
                s.k,
                s.replay_error
            );
            for (r, chain) in s.chains.iter().enumerate() {
                assert_eq!(chain.len(), (s.effective_steps + 1) * c);
                let end = &chain[s.effective_steps * c..];
                for (a, b) in end.iter().zip(&rec.event.values[r * c..(r + 1) * c]) {
                    assert!((a - b).abs() <= 1e-5, "{a} vs {b}");
                }
            }
            assert!(s.variance.is_finite() && s.variance > 0.0, "{}", s.variance);
            assert!(
                s.straightness > 0.0 && s.straightness <= 1.0,
                "{}",
                s.straightness
            );
            assert!(s.one_shot_error.is_finite());
        }
        assert!(analysis.completed_error.iter().all(|e| e.is_finite()));
        assert_eq!(analysis.pca_paths.len(), 6);
    }
}

#[test]
fn completed_image_holds_the_chains_first_estimates() {
    let g = built_in();
    let recording = Arc::new(record(&g, request(3.0, "linear:20:5"), 5, usize::MAX));
    let analysis = Analyzer::new(g.clone(), recording.clone(), options(2))
        .unwrap()
        .run_to_end()
        .unwrap();
    let (n, c) = (g.config.seq_len(), g.config.token_dim());
    for s in &analysis.steps {
        // Known tokens are kept as they are.
        let (before, mask) = recording.state_after(s.k);
        for p in (0..n).filter(|&p| !mask[0][p]) {
            assert_eq!(
                &s.completed[p * c..(p + 1) * c],
                &before[p * c..(p + 1) * c]
            );
        }
        // The tokens revealed at this step: the transformer run again gives the same condition
        // and the same x_T, so the same one-shot estimate as the replayed chain.
        for (r, &p) in s.positions[0].iter().enumerate() {
            for (a, b) in s.completed[p * c..(p + 1) * c]
                .iter()
                .zip(&s.one_shot[r * c..(r + 1) * c])
            {
                assert!(
                    (a - b).abs() <= 1e-4,
                    "step {} position {p}: {a} vs {b}",
                    s.k
                );
            }
        }
    }
    // After the last step nothing is unknown: the final completed image needs no estimate of
    // tokens generated later, and its error against the final tokens is the last step's.
    let last = analysis.steps.last().unwrap();
    assert!(
        (analysis.completed_error[7] - last.one_shot_error).abs()
            < 1e-4 * (1.0 + last.one_shot_error)
    );
}

#[test]
fn an_unfinished_generation_can_be_analysed() {
    let g = built_in();
    let recording = Arc::new(record(&g, request(3.0, "linear:20:5"), 3, 3));
    assert_eq!(recording.steps.len(), 3);
    assert!(!recording.is_complete());
    let analysis = Analyzer::new(g.clone(), recording, options(3))
        .unwrap()
        .run_to_end()
        .unwrap();
    assert_eq!(analysis.steps.len(), 3);
    // No final image yet to compare the completed images with.
    assert!(analysis.completed_error.iter().all(|e| e.is_nan()));
    assert!(analysis.steps.iter().all(|s| s.replay_error <= 1e-5));
}

#[test]
fn bad_options_are_refused() {
    let g = built_in();
    let recording = Arc::new(record(&g, request(1.0, "constant:5"), 0, 1));
    let err = Analyzer::new(g.clone(), recording.clone(), options(1))
        .err()
        .unwrap();
    assert!(err.to_string().contains("at least 2"), "{err}");
    assert!(Analyzer::new(g, recording, options(100_000)).is_err());
}
