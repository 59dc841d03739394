//! The eval yardstick (issue 14): the CNN classifier learns, its bootstrap intervals behave
//! (they hold the full-sample value and narrow with more images), a set is at Fréchet
//! distance ~0 from itself, real images score far better than damaged ones, and `disa eval`
//! prints the floor, both baselines' ratio columns and an interval for every figure.

use burn::module::Module;
use burn::tensor::Device;
use disa::data::{DEBIAN_DIR, FashionMnist};
use disa::eval::bootstrap::Bootstrap;
use disa::eval::classifier::{self, Classifier, INPUT, TrainConfig};
use disa::eval::{Yardstick, balanced_subset, gather};
use std::path::Path;
use std::process::Command;

const SHIPPED: &[u8] = include_bytes!("../www/assets/classifier.safetensors");

fn data() -> FashionMnist {
    FashionMnist::load(Path::new(DEBIAN_DIR))
        .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs dataset-fashion-mnist)"))
}

fn shipped(cpu: &Device) -> Classifier {
    Classifier::from_bytes("shipped classifier", SHIPPED, cpu).unwrap()
}

/// `per_class` test images of every class: pixels and labels.
fn test_sample(data: &FashionMnist, per_class: usize, seed: u64) -> (Vec<u8>, Vec<usize>) {
    let idx = balanced_subset(&data.test.labels, 10, per_class, seed).unwrap();
    let labels = idx.iter().map(|&i| data.test.labels[i] as usize).collect();
    (gather(&data.test.images.pixels, &idx), labels)
}

fn yardstick(data: &FashionMnist, reference_per_class: usize, resamples: usize) -> Yardstick {
    let cpu = Device::flex();
    let idx = balanced_subset(&data.train.labels, 10, reference_per_class, 1).unwrap();
    Yardstick::new(
        shipped(&cpu),
        &gather(&data.train.images.pixels, &idx),
        Bootstrap {
            resamples,
            level: 0.95,
            seed: 5,
        },
        &cpu,
    )
    .unwrap()
}

#[test]
fn the_cnn_learns_on_a_subset() {
    let data = data();
    let n = 6000;
    let config = TrainConfig {
        epochs: 2,
        batch: 64,
        learning_rate: 2e-3,
        seed: 1,
        ..TrainConfig::default()
    };
    let device = Device::flex().autodiff();
    let mut epochs_seen = 0;
    let model = classifier::train_with(
        &data.train.images.pixels[..n * INPUT],
        &data.train.labels[..n],
        &config,
        None,
        &device,
        |_, done| epochs_seen += usize::from(done.is_some()),
    )
    .unwrap()
    .valid();
    assert_eq!(epochs_seen, 2);
    // Held-out: test images the training never saw.
    let cpu = Device::flex();
    let held_out = 2000;
    let acc = model
        .accuracy(
            &data.test.images.pixels[..held_out * INPUT],
            &data.test.labels[..held_out],
            &cpu,
        )
        .unwrap();
    assert!(acc > 0.80, "held-out accuracy {acc} after 2 epochs on {n}");
    // Saved and loaded, it predicts the same.
    let back = Classifier::from_bytes("c", &model.to_bytes().unwrap(), &cpu).unwrap();
    let px = &data.test.images.pixels[..50 * INPUT];
    assert_eq!(
        back.predict(px, &cpu).unwrap(),
        model.predict(px, &cpu).unwrap()
    );
    // Training continues from a loaded classifier (`train-classifier --from`): its weights
    // move and it stays good.
    let more = TrainConfig {
        epochs: 1,
        learning_rate: 3e-4,
        ..config
    };
    let next = classifier::train_with(
        &data.train.images.pixels[n * INPUT..(n + 1000) * INPUT],
        &data.train.labels[n..n + 1000],
        &more,
        Some(back),
        &device,
        |_, _| {},
    )
    .unwrap()
    .valid();
    assert_ne!(next.to_bytes().unwrap(), model.to_bytes().unwrap());
    let again = next
        .accuracy(
            &data.test.images.pixels[..held_out * INPUT],
            &data.test.labels[..held_out],
            &cpu,
        )
        .unwrap();
    assert!(again > 0.80, "held-out accuracy {again} after continuing");
}

#[test]
fn bad_training_input_is_an_error() {
    let device = Device::flex().autodiff();
    let config = TrainConfig::default();
    let run = |px: &[u8], labels: &[u8], config: &TrainConfig| {
        classifier::train_with(px, labels, config, None, &device, |_, _| {}).err()
    };
    assert!(run(&[0; INPUT], &[0, 1], &config).is_some());
    assert!(run(&[0; INPUT], &[10], &config).is_some());
    assert!(run(&[], &[], &config).is_some());
    for learning_rate in [0.0, -1.0, f64::NAN] {
        let bad = TrainConfig {
            learning_rate,
            ..TrainConfig::default()
        };
        assert!(run(&[0; INPUT], &[3], &bad).is_some(), "{learning_rate}");
    }
}

#[test]
fn the_shipped_classifier_is_the_cnn() {
    let cpu = Device::flex();
    let c = shipped(&cpu);
    let w = c.widths();
    assert!(w.conv1 >= 8 && w.conv2 >= 8, "{w:?}");
    // Small enough to ship in the repository.
    assert!(SHIPPED.len() < 2 << 20, "{} bytes", SHIPPED.len());
}

#[test]
fn intervals_hold_the_value_and_narrow_with_more_images() {
    let data = data();
    let cpu = Device::flex();
    let stick = yardstick(&data, 100, 200);
    let (small_px, small_labels) = test_sample(&data, 10, 2);
    let (big_px, big_labels) = test_sample(&data, 60, 3);
    let small = stick.score(&small_px, &small_labels, &cpu).unwrap();
    let big = stick.score(&big_px, &big_labels, &cpu).unwrap();
    for s in [&small, &big] {
        assert!(s.accuracy.contains(s.accuracy.value), "{}", s.accuracy);
        assert!(s.frechet.contains(s.frechet.value), "{}", s.frechet);
        assert!(s.accuracy.low >= 0.0 && s.accuracy.high <= 1.0);
    }
    assert_eq!((small.images, big.images), (100, 600));
    // Six times the images: intervals about √6 ≈ 2.4 times narrower; at least 1.5.
    assert!(
        big.frechet.width() * 1.5 < small.frechet.width(),
        "FD {} vs {}",
        big.frechet,
        small.frechet
    );
    assert!(
        big.accuracy.width() * 1.5 < small.accuracy.width(),
        "accuracy {} vs {}",
        big.accuracy,
        small.accuracy
    );
    // The same seed gives the same intervals.
    let again = stick.score(&small_px, &small_labels, &cpu).unwrap();
    assert_eq!(again.frechet, small.frechet);
}

#[test]
fn a_set_is_at_distance_zero_from_itself_and_damage_shows() {
    let data = data();
    let cpu = Device::flex();
    let (px, labels) = test_sample(&data, 30, 4);
    let resamples = 50;
    let boot = Bootstrap {
        resamples,
        level: 0.95,
        seed: 0,
    };
    // The reference is the very images scored.
    let itself = Yardstick::new(shipped(&cpu), &px, boot, &cpu).unwrap();
    let s = itself.score(&px, &labels, &cpu).unwrap();
    let (_, features) = itself.classifier.predict(&px, &cpu).unwrap();
    let n = labels.len() as f64;
    let mean_sq: f64 = features.iter().map(|&f| (f as f64).powi(2)).sum::<f64>() / n;
    assert!(
        s.frechet.value < 1e-8 * mean_sq,
        "FD {} of a set to itself (feature energy {mean_sq})",
        s.frechet.value
    );
    // Against training images: real test images are close and well classified, the same
    // images with their pixels scrambled are far and not.
    let stick = yardstick(&data, 100, resamples);
    let real = stick.score(&px, &labels, &cpu).unwrap();
    let mut scrambled = px.clone();
    for img in scrambled.chunks_exact_mut(INPUT) {
        img.reverse();
        for (i, p) in img.iter_mut().enumerate() {
            *p = p.wrapping_add((i * 37 % 256) as u8);
        }
    }
    let damaged = stick.score(&scrambled, &labels, &cpu).unwrap();
    assert!(real.accuracy.value > 0.85, "{}", real.accuracy);
    assert!(damaged.accuracy.value < 0.5, "{}", damaged.accuracy);
    assert!(
        damaged.frechet.low > 3.0 * real.frechet.high,
        "{} vs {}",
        damaged.frechet,
        real.frechet
    );
}

#[test]
fn balanced_subsets_are_balanced_seeded_and_checked() {
    let labels: Vec<u8> = (0..100).map(|i| (i % 10) as u8).collect();
    let a = balanced_subset(&labels, 10, 4, 7).unwrap();
    assert_eq!(a.len(), 40);
    for (k, chunk) in a.chunks(4).enumerate() {
        assert!(chunk.iter().all(|&i| labels[i] as usize == k));
        let mut distinct = chunk.to_vec();
        distinct.sort();
        distinct.dedup();
        assert_eq!(distinct.len(), 4);
    }
    assert_eq!(a, balanced_subset(&labels, 10, 4, 7).unwrap());
    assert_ne!(a, balanced_subset(&labels, 10, 4, 8).unwrap());
    let err = balanced_subset(&labels, 10, 11, 0).err().unwrap();
    assert!(err.to_string().contains("class 0"), "{err}");
}

fn disa() -> Command {
    Command::new(env!("CARGO_BIN_EXE_disa"))
}

#[test]
fn eval_prints_the_floor_both_baselines_and_intervals() {
    let out = disa()
        .args([
            "eval",
            "--per-class",
            "2",
            "--batch",
            "20",
            "--ar-steps",
            "2",
        ])
        .args(["--bootstrap", "50", "--reference", "1000"])
        .args([
            "--schedules",
            "constant:10@none;constant:10@950;linear:10:2;cosine:10:2@none",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let header = text.lines().find(|l| l.starts_with("| K |")).unwrap();
    assert!(
        header.contains("FD ÷ constant:10@none") && header.contains("FD ÷ constant:10@950"),
        "{header}"
    );
    assert!(header.contains("[95% CI]"), "{header}");
    let floor = text
        .lines()
        .find(|l| l.contains("real test images"))
        .unwrap();
    assert_eq!(floor.matches('[').count(), 2, "{floor}");
    let rows: Vec<Vec<&str>> = text
        .lines()
        .filter(|l| l.starts_with("| 2 |"))
        .map(|l| l.split(" | ").collect())
        .collect();
    assert_eq!(rows.len(), 4, "{text}");
    // Columns: K, schedule, clip, head calls, token·steps, s/image, speed-up, accuracy,
    // Fréchet, FD ÷ each baseline.
    let clips: Vec<&str> = rows.iter().map(|r| r[2]).collect();
    assert_eq!(clips, ["none", "950", "950", "none"]);
    for r in &rows {
        assert_eq!(r.len(), 11, "{r:?}");
        assert!(r[7].contains('[') && r[8].contains('['), "{r:?}");
    }
    assert_eq!(rows[0][9], "1.000");
    assert_eq!(rows[1][10].trim_end_matches(" |"), "1.000");
    assert!(rows[0][6] == "1.00×", "{:?}", rows[0]);
}

#[test]
fn eval_refuses_bad_rows_and_settings() {
    for (args, needle) in [
        (vec!["--schedules", "linear:10:2@sometimes"], "clip"),
        (vec!["--schedules", "zigzag:3"], "zigzag"),
        (vec!["--bootstrap", "1"], "resamples"),
        (vec!["--level", "1.5"], "level"),
        (vec!["--reference", "15"], "multiple"),
        (vec!["--per-class", "0"], "at least 1"),
        (
            vec!["--ar-steps", "2", "--schedules", "linear:10:2@0"],
            "clip",
        ),
    ] {
        let out = disa()
            .args(["eval", "--quick"])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}
