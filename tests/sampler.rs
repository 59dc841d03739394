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
