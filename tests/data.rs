//! Fashion-MNIST as Debian's `dataset-fashion-mnist` ships it (installed by scripts/test.sh).

use disa::data::{CLASS_NAMES, DEBIAN_DIR, FashionMnist, PatchLayout};
use std::path::Path;

#[test]
fn the_debian_dataset_loads_with_its_published_sizes() {
    let data = FashionMnist::load(Path::new(DEBIAN_DIR))
        .unwrap_or_else(|e| panic!("{e} (scripts/test.sh installs dataset-fashion-mnist)"));
    assert_eq!(
        (data.train.images.count, data.test.images.count),
        (60_000, 10_000)
    );
    assert_eq!((data.train.images.rows, data.train.images.cols), (28, 28));
    for (split, per_class) in [(&data.train, 6000), (&data.test, 1000)] {
        let mut counts = [0usize; 10];
        split.labels.iter().for_each(|&l| counts[l as usize] += 1);
        assert_eq!(counts, [per_class; 10], "balanced classes");
    }
    assert_eq!(CLASS_NAMES.len(), 10);
    let tokens = PatchLayout::FASHION.tokens(data.train.images.image(0), 28, 28, 1.0);
    assert_eq!(tokens.len(), 64 * 16);
    assert!(tokens.iter().all(|t| (-1.0..=1.0).contains(t)));
}

#[test]
fn a_missing_folder_says_what_to_install() {
    let err = FashionMnist::load(Path::new("/nonexistent")).unwrap_err();
    assert!(err.to_string().contains("dataset-fashion-mnist"), "{err}");
}

#[test]
fn corrupt_gzip_is_an_error() {
    let dir = std::env::temp_dir().join(format!("disa-data-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("train-images-idx3-ubyte.gz");
    std::fs::write(&path, [0x1f, 0x8b, 8, 0, 1, 2, 3, 4, 5, 6]).unwrap();
    let err = disa::data::read_maybe_gz(&path).unwrap_err();
    assert!(err.to_string().contains("gzip"), "{err}");
}
