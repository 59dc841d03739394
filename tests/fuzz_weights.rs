//! Property test of the weight loaders: thousands of mutated files (bit flips, byte
//! overwrites, truncations, header edits) must each load or fail with an error — never panic,
//! never hang. Safetensors, disa bundles and PyTorch zip checkpoints. Deterministic (seeded),
//! so a failure reproduces.

mod common;

use common::*;
use disa::weights::{Bundle, WeightMap};
use std::time::{Duration, Instant};

/// splitmix64: a tiny deterministic generator for the mutations.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// One random mutation of `bytes`, biased towards the header where the structure lives.
fn mutate(bytes: &[u8], rng: &mut Rng) -> Vec<u8> {
    let mut out = bytes.to_vec();
    let header_len =
        (u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize + 8).min(bytes.len());
    let pick = |rng: &mut Rng| {
        if rng.below(4) < 3 {
            rng.below(header_len)
        } else {
            rng.below(bytes.len())
        }
    };
    match rng.below(6) {
        0 => {
            for _ in 0..1 + rng.below(8) {
                let i = pick(rng);
                out[i] ^= 1 << rng.below(8);
            }
        }
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = pick(rng);
                out[i] = rng.next() as u8;
            }
        }
        2 => out.truncate(rng.below(bytes.len())),
        3 => {
            // A digit in the JSON header changed: shapes and offsets go wrong in a valid-looking way.
            let digits: Vec<usize> = (8..header_len)
                .filter(|&i| out[i].is_ascii_digit())
                .collect();
            if !digits.is_empty() {
                let i = digits[rng.below(digits.len())];
                out[i] = b'0' + rng.below(10) as u8;
            }
        }
        4 => {
            let i = rng.below(8);
            out[i] = rng.next() as u8; // the header length itself
        }
        _ => {
            let at = pick(rng);
            let junk: Vec<u8> = (0..1 + rng.below(64)).map(|_| rng.next() as u8).collect();
            out.splice(at..at, junk);
        }
    }
    out
}

#[test]
fn thousands_of_mutated_files_never_panic_or_hang() {
    let device = burn::tensor::Device::flex();
    let plain = std::fs::read(reference_dir().join("model.safetensors")).unwrap();
    let bundle = disa::weights::ModelFiles {
        weights: reference_dir().join("checkpoint-last.pth"),
        state_dict: "model_ema".into(),
        ..Default::default()
    }
    .load()
    .unwrap();
    let quantized = bundle.to_bytes_as(disa::weights::Storage::Int4).unwrap();
    let bundle = bundle.to_bytes().unwrap();
    let config = config();
    let mut rng = Rng(0xD15A);
    let (mut loaded, mut rejected) = (0usize, 0usize);
    let started = Instant::now();
    for round in 0..3000 {
        let (name, source) = match round % 3 {
            0 => ("bundle", &bundle),
            1 => ("plain", &plain),
            _ => ("int4 bundle", &quantized),
        };
        let mutated = mutate(source, &mut rng);
        let t = Instant::now();
        let outcome = std::panic::catch_unwind(|| {
            if name != "plain" {
                Bundle::from_bytes("fuzz", &mutated)
                    .and_then(|b| b.build(&device))
                    .map(|_| ())
            } else {
                WeightMap::from_bytes("fuzz", &mutated)
                    .and_then(|mut w| disa::model::Model::load(&mut w, &config, None, &device))
                    .map(|_| ())
            }
        });
        match outcome {
            Ok(Ok(())) => loaded += 1,
            Ok(Err(e)) => {
                assert!(!e.to_string().is_empty());
                rejected += 1;
            }
            Err(_) => panic!("round {round} ({name}): the loader panicked"),
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "round {round} ({name}): took {:?}",
            t.elapsed()
        );
    }
    eprintln!(
        "3000 mutated files: {loaded} loaded, {rejected} rejected with an error, {:?}",
        started.elapsed()
    );
    assert!(
        rejected > 1000,
        "most mutations must be caught ({rejected} rejected)"
    );
}

/// Rewrites a safetensors file with its header padded by spaces so the header length's low
/// byte is `low` (a valid file either way).
fn with_low_byte(bytes: &[u8], low: u8) -> Vec<u8> {
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let pad = (low as usize + 256 - n % 256) % 256;
    let mut out = ((n + pad) as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&bytes[8..8 + n]);
    out.extend(std::iter::repeat_n(b' ', pad));
    out.extend_from_slice(&bytes[8 + n..]);
    out
}

/// Loads a file written to disk: never a panic, within 5 s; a `valid` file must load with
/// exactly its tensors, a refusal must say something. Whether it loaded.
fn load_from_disk(
    load: impl FnOnce() -> disa::Result<WeightMap> + std::panic::UnwindSafe,
    valid: Option<&WeightMap>,
    context: &str,
) -> bool {
    let t = Instant::now();
    let loaded = match std::panic::catch_unwind(load) {
        Ok(Ok(w)) => {
            if let Some(expected) = valid {
                assert_eq!(w.tensors, expected.tensors, "{context}: misread");
            }
            true
        }
        Ok(Err(e)) => {
            assert!(valid.is_none(), "{context}: a valid file refused: {e}");
            assert!(!e.to_string().is_empty());
            false
        }
        Err(_) => panic!("{context}: the loader panicked"),
    };
    assert!(t.elapsed() < Duration::from_secs(5), "{context}");
    loaded
}

#[test]
fn mutated_files_on_disk_never_panic_hang_or_misread() {
    // The file path (CLI) reads safetensors tensor by tensor and sniffs formats; the same
    // mutations, plus every header-length low byte and huge claimed sizes, through it.
    let dir = std::env::temp_dir().join(format!("disa-fuzz-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = std::fs::read(reference_dir().join("model.safetensors")).unwrap();
    let expected = WeightMap::from_bytes("m", &plain).unwrap();
    let mut rng = Rng(0x5AFE);
    let path = dir.join("w.safetensors");
    let (mut loaded, mut rejected) = (0usize, 0usize);
    for round in 0..1500 {
        let low = (round % 256) as u8;
        let valid = with_low_byte(&plain, low);
        let bytes = match round % 3 {
            // Valid, any low byte: must load, with the same tensors.
            0 => valid.clone(),
            1 => mutate(&valid, &mut rng),
            _ => {
                // A header length or a tensor's size claimed huge.
                let mut b = valid.clone();
                let i = 1 + rng.below(7);
                b[i] = 0xff;
                b
            }
        };
        std::fs::write(&path, &bytes).unwrap();
        let valid = (round % 3 == 0).then_some(&expected);
        let context = format!("round {round} (low byte {low:#04x})");
        match load_from_disk(|| WeightMap::from_path(&path, None), valid, &context) {
            true => loaded += 1,
            false => rejected += 1,
        }
    }
    eprintln!("1500 files on disk: {loaded} loaded, {rejected} rejected");
    assert!(rejected > 400, "{rejected} rejected");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A torch zip checkpoint of `entries` (stored, as `torch.save` writes them), with the pickle
/// replaced by `pickle` when given.
fn torch_zip(entries: &[(String, Vec<u8>)], pickle: Option<&[u8]>) -> Vec<u8> {
    use std::io::Write;
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options =
        zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    for (name, data) in entries {
        out.start_file(name.as_str(), options).unwrap();
        let data = match pickle {
            Some(p) if name.ends_with("data.pkl") => p,
            _ => data.as_slice(),
        };
        out.write_all(data).unwrap();
    }
    out.finish().unwrap().into_inner()
}

#[test]
fn mutated_torch_checkpoints_never_panic_hang_or_misread() {
    // The official checkpoint layout: the pickle mutated inside a well-formed zip (what the
    // PyTorch reader parses), or the zip's own bytes mutated.
    let dir = std::env::temp_dir().join(format!("disa-fuzz-pth-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let source = reference_dir().join("checkpoint-last.pth");
    let original = std::fs::read(&source).unwrap();
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(&original)).unwrap();
    let entries: Vec<(String, Vec<u8>)> = (0..archive.len())
        .map(|i| {
            use std::io::Read;
            let mut entry = archive.by_index(i).unwrap();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            (entry.name().unwrap().into_owned(), data)
        })
        .collect();
    let pickle = entries
        .iter()
        .find(|(n, _)| n.ends_with("data.pkl"))
        .map(|(_, d)| d.clone())
        .unwrap();
    let expected = WeightMap::from_path(&source, Some("model_ema")).unwrap();
    let mut rng = Rng(0x7041);
    let path = dir.join("c.pth");
    let (mut loaded, mut rejected) = (0usize, 0usize);
    for round in 0..900 {
        let bytes = match round % 3 {
            0 => torch_zip(&entries, None),
            1 => torch_zip(&entries, Some(&mutate(&pickle, &mut rng))),
            _ => mutate(&original, &mut rng),
        };
        std::fs::write(&path, &bytes).unwrap();
        let valid = (round % 3 == 0).then_some(&expected);
        let load = || WeightMap::from_path(&path, Some("model_ema"));
        match load_from_disk(load, valid, &format!("round {round}")) {
            true => loaded += 1,
            false => rejected += 1,
        }
    }
    eprintln!("900 torch checkpoints: {loaded} loaded, {rejected} rejected");
    assert!(rejected > 200, "{rejected} rejected");
    let _ = std::fs::remove_dir_all(&dir);
}
