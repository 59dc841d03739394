//! `disa train-classifier`: trains the Fashion-MNIST CNN that `disa eval` scores samples with
//! (`disa::eval::classifier`), reporting the test accuracy after every epoch.

use super::common::{progress_bar, write_file};
use clap::Args;
use disa::data::{DEBIAN_DIR, FashionMnist};
use disa::eval::classifier::{self, Classifier, TrainConfig, Widths};
use disa::{DisaError, Result};
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args)]
pub struct ClassifierArgs {
    /// Output file (`disa eval --classifier`; the shipped one is
    /// www/assets/classifier.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value_t = 8)]
    pub epochs: usize,
    #[arg(long, default_value_t = 128)]
    pub batch: usize,
    /// Adam's peak learning rate (cosine decay to 0 over the run).
    #[arg(long, default_value_t = 1e-3)]
    pub lr: f64,
    /// Random horizontal flips and ±2-pixel shifts of the training images.
    #[arg(long)]
    pub augment: bool,
    /// Channels of the two convolutions, `C1,C2`.
    #[arg(long, value_delimiter = ',', num_args = 1, default_value = "16,32")]
    pub channels: Vec<usize>,
    /// Continue training this classifier file (fresh optimizer moments, a new cosine from
    /// --lr); its channels are kept.
    #[arg(long)]
    pub from: Option<PathBuf>,
    /// Train on the first N training images only (quick runs).
    #[arg(long)]
    pub limit: Option<usize>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Directory of the Fashion-MNIST idx files.
    #[arg(long, default_value = DEBIAN_DIR)]
    pub data: PathBuf,
}

pub fn train_classifier(args: ClassifierArgs) -> Result<()> {
    disa::weights::atomic::check_output_file(&args.out, "--out", &[])?;
    if args.batch == 0 || args.batch > disa::train::MAX_BATCH {
        return Err(DisaError::InvalidSetting(format!(
            "--batch {} must be in 1..={}",
            args.batch,
            disa::train::MAX_BATCH
        )));
    }
    let widths = match args.channels[..] {
        [c1, c2] if (1..=1024).contains(&c1) && (1..=1024).contains(&c2) => Widths {
            conv1: c1,
            conv2: c2,
        },
        _ => {
            return Err(DisaError::InvalidSetting(format!(
                "--channels {:?}: give two widths in 1..=1024, like 16,32",
                args.channels
            )));
        }
    };
    let cpu = burn::tensor::Device::flex();
    let start = match &args.from {
        Some(p) => {
            let bytes = disa::weights::atomic::read_regular(p, 1 << 30, "a classifier file")?;
            Some(Classifier::from_bytes(
                &p.display().to_string(),
                &bytes,
                &cpu,
            )?)
        }
        None => None,
    };
    eprintln!("loading Fashion-MNIST from {}", args.data.display());
    let data = FashionMnist::load(&args.data)?;
    let n = match args.limit {
        Some(0) => {
            return Err(DisaError::InvalidSetting(
                "--limit must be at least 1".into(),
            ));
        }
        Some(l) => l.min(data.train.labels.len()),
        None => data.train.labels.len(),
    };
    let pixels = &data.train.images.pixels[..n * classifier::INPUT];
    let labels = &data.train.labels[..n];
    let widths = start.as_ref().map_or(widths, Classifier::widths);
    let config = TrainConfig {
        epochs: args.epochs,
        batch: args.batch,
        learning_rate: args.lr,
        seed: args.seed,
        augment: args.augment,
        widths,
    };
    eprintln!(
        "CNN conv {}→{} channels, {} features · {n} images · {} epochs · batch {} · lr {} \
         (cosine) · augment {} · seed {}{}",
        widths.conv1,
        widths.conv2,
        classifier::FEATURES,
        args.epochs,
        args.batch,
        args.lr,
        args.augment,
        args.seed,
        args.from
            .as_ref()
            .map(|p| format!(" · from {}", p.display()))
            .unwrap_or_default()
    );
    let batches = n.div_ceil(args.batch);
    let bar = progress_bar(
        (args.epochs * batches) as u64,
        "epoch {msg} [{bar:30}] {pos}/{len} batches · {per_sec} · {elapsed} (eta {eta})",
        false,
    );
    let interactive = std::io::stderr().is_terminal();
    let device = cpu.clone().autodiff();
    let clock = std::time::Instant::now();
    let (test_px, test_labels) = (&data.test.images.pixels, &data.test.labels);
    let mut smooth: Option<f32> = None;
    let mut failure = None;
    // Test accuracy after each epoch, on the first 2,000 test images to keep it quick.
    let (watch_px, watch_labels) = (&test_px[..2000 * classifier::INPUT], &test_labels[..2000]);
    let model = classifier::train_with(pixels, labels, &config, start, &device, |p, done| {
        let l = smooth.map_or(p.loss, |m| 0.98 * m + 0.02 * p.loss);
        smooth = Some(l);
        bar.set_message(format!(
            "{}/{} · loss {l:.4} · lr {:.2e}",
            p.epoch + 1,
            args.epochs,
            p.learning_rate
        ));
        bar.inc(1);
        if !interactive && p.batch % 100 == 0 {
            eprintln!(
                "epoch {}/{} batch {}/{} loss {l:.4} lr {:.2e} · {:.0} s",
                p.epoch + 1,
                args.epochs,
                p.batch,
                p.batches,
                p.learning_rate,
                clock.elapsed().as_secs_f64()
            );
        }
        if let Some(m) = done.filter(|_| failure.is_none()) {
            // Reported, never used to choose: the last epoch's weights are the result.
            use burn::module::Module;
            match m.valid().accuracy(watch_px, watch_labels, &cpu) {
                Ok(acc) => bar.suspend(|| {
                    eprintln!(
                        "epoch {}/{} loss {l:.4} · test accuracy (2,000 images) {:.2}% · {:.0} s",
                        p.epoch + 1,
                        args.epochs,
                        100.0 * acc,
                        clock.elapsed().as_secs_f64()
                    )
                }),
                Err(e) => failure = Some(e),
            }
        }
    });
    bar.finish_and_clear();
    let model = match (model, failure.take()) {
        (Ok(m), None) => m,
        (Err(e), _) | (_, Some(e)) => return Err(e),
    };
    let secs = clock.elapsed().as_secs_f64();
    use burn::module::Module;
    let model = model.valid();
    let test = model.accuracy(test_px, test_labels, &cpu)?;
    // The training accuracy on (at most) its first 10,000 images, for the gap to the test's.
    let seen = n.min(10_000);
    let train = model.accuracy(&pixels[..seen * classifier::INPUT], &labels[..seen], &cpu)?;
    let bytes = model.to_bytes()?;
    write_file(&args.out, &bytes)?;
    println!(
        "test accuracy {:.2}% (10,000 images) · train accuracy {:.2}% ({seen} images) · {} epochs in {secs:.0} s · wrote {} \
         ({:.2} MB, {} parameters)",
        100.0 * test,
        100.0 * train,
        args.epochs,
        args.out.display(),
        bytes.len() as f64 / 1e6,
        model.parameters()
    );
    Ok(())
}
