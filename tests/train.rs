//! Training: the state dict round trip the trainer relies on, the loss going down on a small
//! batch, checkpoint/resume continuing exactly, and the classifier learning.

use burn::tensor::Device;
use disa::data::{DEBIAN_DIR, FashionMnist, Split};
use disa::eval::classifier;
use disa::model::{MarConfig, Model};
use disa::train::{TrainSettings, Trainer, max_abs_difference};
use disa::weights::BundleInfo;
use std::path::Path;

/// A very small configuration with the Fashion-MNIST token layout.
fn tiny() -> MarConfig {
    MarConfig {
        encoder_embed_dim: 32,
        encoder_depth: 1,
        encoder_num_heads: 2,
        decoder_embed_dim: 32,
        decoder_depth: 1,
        decoder_num_heads: 2,
        buffer_size: 4,
        diffloss_d: 1,
        diffloss_w: 32,
        ..MarConfig::fashion()
    }
}

fn data() -> FashionMnist {
    FashionMnist::load(Path::new(DEBIAN_DIR))
        .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs dataset-fashion-mnist)"))
}

/// The first `n` training images only.
fn first(split: &Split, n: usize) -> Split {
    let mut s = split.clone();
    s.images.count = n;
    s.images.pixels.truncate(n * 28 * 28);
    s.labels.truncate(n);
    s
}

/// The CPU backend's host-side activations must not run on a training device: Burn's device
/// equality ignores autodiff, and a host round trip there once cut the gradient of every
/// GELU and SiLU (and kept each step's forward graph alive: training memory grew ~64 MB a
/// step). The gradients must be the analytic derivatives.
#[test]
fn activations_pass_gradients_on_the_training_device() {
    use burn::tensor::{Tensor, TensorData};
    use disa::model::host::erf;
    use disa::model::layers::{gelu_erf, silu};
    let dev = Device::flex().autodiff();
    let xs = vec![-4.0f32, -1.5, -0.3, 0.0, 0.7, 3.0];
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let pdf = |x: f64| (-x * x / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
    type Activation = fn(Tensor<2>) -> Tensor<2>;
    type Derivative<'a> = &'a dyn Fn(f64) -> f64;
    let cases: [(&str, Activation, Derivative); 2] = [
        ("gelu", gelu_erf, &|x| {
            0.5 * (1.0 + erf((x / 2f64.sqrt()) as f32) as f64) + x * pdf(x)
        }),
        ("silu", silu, &|x| {
            sigmoid(x) * (1.0 + x * (1.0 - sigmoid(x)))
        }),
    ];
    for (name, f, derivative) in cases {
        let x = Tensor::<2>::from_data(TensorData::new(xs.clone(), [2, 3]), &dev).require_grad();
        let grads = f(x.clone()).sum().backward();
        let g = x
            .grad(&grads)
            .unwrap_or_else(|| panic!("{name}: no gradient reached the input"))
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        for (&xi, &gi) in xs.iter().zip(&g) {
            let want = derivative(xi as f64);
            assert!(
                (gi as f64 - want).abs() < 1e-4,
                "{name}'({xi}) = {gi}, want {want}"
            );
        }
    }
}

#[test]
fn initial_weights_load_and_export_unchanged() {
    let config = MarConfig::fashion();
    let w = config.initial_weights(3);
    let mut taken = w.clone();
    let model = Model::load(&mut taken, &config, None, &Device::flex()).unwrap();
    let left: Vec<_> = taken.tensors.keys().collect();
    assert!(left.is_empty(), "tensors the model did not take: {left:?}");
    let back = model.state_dict("export").unwrap();
    assert_eq!(
        back.tensors.keys().collect::<Vec<_>>(),
        w.tensors.keys().collect::<Vec<_>>()
    );
    assert_eq!(max_abs_difference(&w, &back), Some(0.0));
    assert_eq!(
        w.tensors.values().map(|t| t.numel()).sum::<usize>(),
        config.num_params(),
        "the initializer covers every parameter the count knows about"
    );
    // Different seeds, different weights; same seed, same weights.
    assert_eq!(
        max_abs_difference(&w, &config.initial_weights(3)),
        Some(0.0)
    );
    assert!(max_abs_difference(&w, &config.initial_weights(4)).unwrap() > 0.0);
}

#[test]
fn loss_decreases_on_a_small_batch() {
    let data = first(&data().train, 32);
    let settings = TrainSettings {
        batch_size: 32,
        learning_rate: 2e-3,
        warmup_steps: 0,
        seed: 1,
        ..TrainSettings::default()
    };
    let mut trainer = Trainer::new(tiny(), settings, &Device::flex().autodiff()).unwrap();
    // Compare mean losses of the first and last 10 of 60 steps (each step draws its own
    // timesteps and masks, so single steps are noisy).
    let losses: Vec<f32> = (0..60)
        .map(|_| trainer.train_step(&data).unwrap().loss)
        .collect();
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (early, late) = (mean(&losses[..10]), mean(&losses[50..]));
    assert!(losses.iter().all(|l| l.is_finite()));
    assert!(late < 0.8 * early, "loss {early} → {late}");
    // The EMA moved away from the initial weights, and by less than the weights did.
    let init = tiny().initial_weights(1);
    let now = trainer.model().state_dict("now").unwrap();
    let ema_moved = max_abs_difference(&init, trainer.ema_weights()).unwrap();
    assert!(ema_moved > 0.0 && ema_moved < max_abs_difference(&init, &now).unwrap());
}

#[test]
fn a_resumed_run_continues_exactly() {
    let data = first(&data().train, 64);
    let settings = TrainSettings {
        batch_size: 8,
        warmup_steps: 2,
        seed: 7,
        ..TrainSettings::default()
    };
    let device = Device::flex().autodiff();
    let dir = std::env::temp_dir().join(format!("disa-resume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    let mut straight = Trainer::new(tiny(), settings.clone(), &device).unwrap();
    for _ in 0..4 {
        straight.train_step(&data).unwrap();
    }

    let mut first_half = Trainer::new(tiny(), settings, &device).unwrap();
    for _ in 0..2 {
        first_half.train_step(&data).unwrap();
    }
    first_half.save(&dir, &BundleInfo::default()).unwrap();
    drop(first_half);
    let mut resumed = Trainer::resume(&dir, &device).unwrap();
    assert_eq!(resumed.step, 2);
    for _ in 0..2 {
        resumed.train_step(&data).unwrap();
    }
    let a = straight.model().state_dict("a").unwrap();
    let b = resumed.model().state_dict("b").unwrap();
    let diff = max_abs_difference(&a, &b).unwrap();
    assert!(diff < 1e-6, "resumed weights differ by {diff}");
    let ema = max_abs_difference(straight.ema_weights(), resumed.ema_weights()).unwrap();
    assert!(ema < 1e-6, "resumed EMA differs by {ema}");

    // A damaged checkpoint (the only one) is an error naming what is wrong, not a panic.
    let checkpoint = dir
        .join(disa::train::CHECKPOINTS)
        .join(format!("step-{:09}", 2));
    assert!(checkpoint.is_dir(), "{}", checkpoint.display());
    let state = std::fs::read(checkpoint.join("state.json")).unwrap();
    std::fs::remove_file(checkpoint.join("state.json")).unwrap();
    let err = Trainer::resume(&dir, &device).err().unwrap();
    assert!(err.to_string().contains("state.json"), "{err}");
    std::fs::write(checkpoint.join("state.json"), state).unwrap();
    assert!(Trainer::resume(&dir, &device).is_ok(), "restored");
    std::fs::write(checkpoint.join("optimizer.bin"), b"garbage").unwrap();
    let err = Trainer::resume(&dir, &device).err().unwrap();
    assert!(err.to_string().contains("optimizer.bin"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_resume_past_a_damaged_checkpoint_reports_it() {
    let data = first(&data().train, 16);
    let settings = TrainSettings {
        batch_size: 2,
        ..TrainSettings::default()
    };
    let device = Device::flex().autodiff();
    let dir = std::env::temp_dir().join(format!("disa-resume-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut t = Trainer::new(tiny(), settings, &device).unwrap();
    t.train_step(&data).unwrap();
    t.save(&dir, &BundleInfo::default()).unwrap();
    let root = dir.join(disa::train::CHECKPOINTS);
    let good = root.join(format!("step-{:09}", 1));
    let r = Trainer::resume_reporting(&dir, &device).unwrap();
    assert_eq!((r.trainer.step, &r.checkpoint), (1, &good));
    assert!(r.skipped.is_empty());

    // A newer checkpoint with an empty optimizer state: skipped, and told.
    let damaged = root.join(format!("step-{:09}", 99));
    std::fs::create_dir(&damaged).unwrap();
    for entry in std::fs::read_dir(&good).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), damaged.join(entry.file_name())).unwrap();
    }
    std::fs::write(damaged.join("optimizer.bin"), b"").unwrap();
    let r = Trainer::resume_reporting(&dir, &device).unwrap();
    assert_eq!((r.trainer.step, &r.checkpoint), (1, &good));
    assert_eq!(r.skipped.len(), 1);
    assert_eq!((r.skipped[0].step, &r.skipped[0].path), (99, &damaged));
    let reason = r.skipped[0].reason.to_string();
    assert!(reason.contains("optimizer.bin"), "{reason}");
    // The plain `resume` takes the same checkpoint.
    assert_eq!(Trainer::resume(&dir, &device).unwrap().step, 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_run_started_from_weights_begins_at_them() {
    let data = first(&data().train, 16);
    let settings = TrainSettings {
        batch_size: 8,
        warmup_steps: 2,
        ..TrainSettings::default()
    };
    let device = Device::flex().autodiff();
    let start = tiny().initial_weights(11);
    // Extra tensors (a VAE, say) are ignored; the model and the EMA begin as the file.
    let mut with_extra = start.clone();
    with_extra.tensors.insert(
        "vae.something".into(),
        disa::base::HostTensor {
            shape: vec![1],
            values: vec![1.0],
        },
    );
    let mut t = Trainer::from_weights(tiny(), settings.clone(), with_extra, &device).unwrap();
    assert_eq!(t.step, 0);
    let model = t.model().state_dict("m").unwrap();
    assert_eq!(max_abs_difference(&start, &model), Some(0.0));
    assert_eq!(max_abs_difference(&start, t.ema_weights()), Some(0.0));
    // Not a fresh initialization: another seed's weights differ.
    assert_ne!(
        max_abs_difference(&tiny().initial_weights(0), &model),
        Some(0.0)
    );
    t.train_step(&data).unwrap();
    assert!(max_abs_difference(&start, &t.model().state_dict("m").unwrap()).unwrap() > 0.0);

    // A missing or misshapen tensor is an error that names it.
    let mut missing = start.clone();
    missing.tensors.remove("z_proj.weight");
    let err = Trainer::from_weights(tiny(), settings.clone(), missing, &device)
        .err()
        .unwrap();
    assert!(err.to_string().contains("z_proj.weight"), "{err}");
    let err = Trainer::from_weights(MarConfig::fashion(), settings, start, &device)
        .err()
        .unwrap();
    assert!(err.to_string().contains("shape"), "{err}");
}

#[test]
fn bad_training_settings_are_rejected() {
    let device = Device::flex().autodiff();
    for bad in [
        TrainSettings {
            batch_size: 0,
            ..TrainSettings::default()
        },
        TrainSettings {
            learning_rate: f64::NAN,
            ..TrainSettings::default()
        },
        TrainSettings {
            ema_decay: 1.0,
            ..TrainSettings::default()
        },
        TrainSettings {
            tail_fraction: 1.5,
            ..TrainSettings::default()
        },
        TrainSettings {
            tail_fraction: 0.2,
            tail_from: 1000,
            ..TrainSettings::default()
        },
        TrainSettings {
            tail_weight: f32::NAN,
            ..TrainSettings::default()
        },
    ] {
        assert!(Trainer::new(tiny(), bad, &device).is_err());
    }
    // A configuration whose tokens are not Fashion-MNIST patches.
    let err = Trainer::new(MarConfig::mar_base(), TrainSettings::default(), &device)
        .err()
        .unwrap();
    assert!(err.to_string().contains("tokens"), "{err}");
}

#[test]
fn the_classifier_learns_and_round_trips() {
    let data = data();
    let n = 3000;
    let px = &data.train.images.pixels[..n * 784];
    let labels = &data.train.labels[..n];
    let device = Device::flex().autodiff();
    let model = classifier::train(px, labels, 2, 100, 0, &device, |_, _, _, _| {}).unwrap();
    use burn::module::Module;
    let model = model.valid();
    let cpu = Device::flex();
    let test = &data.test.images.pixels[..2000 * 784];
    let acc = model
        .accuracy(test, &data.test.labels[..2000], &cpu)
        .unwrap();
    assert!(acc > 0.7, "accuracy {acc} after 2 epochs on 3000 images");
    let bytes = model.to_bytes().unwrap();
    let back = classifier::Classifier::from_bytes("c", &bytes, &cpu).unwrap();
    let (p1, f1) = model.predict(&test[..100 * 784], &cpu).unwrap();
    let (p2, f2) = back.predict(&test[..100 * 784], &cpu).unwrap();
    assert_eq!(p1, p2);
    assert_eq!(f1, f2);
    assert!(classifier::Classifier::from_bytes("c", &bytes[..bytes.len() - 1], &cpu).is_err());
    assert!(classifier::Classifier::from_bytes("c", b"not a file", &cpu).is_err());
}
