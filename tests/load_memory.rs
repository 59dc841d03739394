//! Loading a model file from bytes holds at most one extra copy of the weights: the caller's
//! bytes, while the parsed tensors move into the model one by one; and bad input (compression
//! bombs, huge claimed tensors, huge files) costs less than twice a valid model of its
//! claimed configuration. Measured with a counting allocator; the tests run one at a time
//! (a lock), so nothing else allocates meanwhile.

use disa::model::MarConfig;
use disa::weights::{Bundle, DecoderSpec, Storage};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting live bytes and their peak.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::SeqCst) + by;
    PEAK.fetch_max(now, Ordering::SeqCst);
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::SeqCst);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Held by every test for its whole run: the tests of this binary run one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Peak and final live bytes above the level when `f` starts, and its result.
fn measure<T>(f: impl FnOnce() -> T) -> (usize, usize, T) {
    let base = LIVE.load(Ordering::SeqCst);
    PEAK.store(base, Ordering::SeqCst);
    let out = f();
    let peak = PEAK.load(Ordering::SeqCst) - base;
    let end = LIVE.load(Ordering::SeqCst).saturating_sub(base);
    (peak, end, out)
}

#[test]
fn loading_from_bytes_holds_at_most_one_extra_copy() {
    let _serial = serial();
    // About 5.3M parameters (21 MB in f32): large next to fixed allocations.
    let config = MarConfig {
        encoder_embed_dim: 256,
        decoder_embed_dim: 256,
        encoder_depth: 3,
        decoder_depth: 3,
        ..MarConfig::fashion()
    };
    let bundle = Bundle {
        decoder: DecoderSpec::Patch { scale: 1.0 },
        ..Bundle::initialized(config, 0)
    };
    let weights: usize = bundle
        .mar
        .tensors
        .values()
        .map(|t| t.values.len() * 4)
        .sum();
    let device = burn::tensor::Device::flex();
    // Warm the backend (thread pool, caches) so its one-time allocations are not counted. All
    // of it runs on one pool thread: the matmul's per-thread scratch (about 2 MB, allocated on
    // a thread's first matmul) would otherwise be counted whenever the measured load's matmul
    // lands on a pool thread the warm-up did not touch.
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    one_thread.install(|| drop(bundle.build(&device).unwrap()));

    for storage in [Storage::F32, Storage::Int8] {
        let bytes = bundle.to_bytes_as(storage).unwrap();
        let (peak, model, generator) = one_thread.install(|| {
            measure(|| {
                Bundle::from_bytes("model", &bytes)
                    .unwrap()
                    .into_generator(&device)
                    .unwrap()
            })
        });
        let mb = |n: usize| n as f64 / 1e6;
        eprintln!(
            "{}: file {:.1} MB, weights {:.1} MB; loading peaked {:.1} MB above the file, \
             the model keeps {:.1} MB",
            storage.name(),
            mb(bytes.len()),
            mb(weights),
            mb(peak),
            mb(model)
        );
        assert!(model >= weights * 9 / 10, "the model holds its weights");
        // One copy in the parsed file, moving into the model: never both in full.
        assert!(
            peak <= weights + weights / 5,
            "{}: peak {:.1} MB for {:.1} MB of weights",
            storage.name(),
            mb(peak),
            mb(weights)
        );
        drop(generator);
    }

    // Building from a parsed file that is kept (`Bundle::build`, which copies) holds two
    // copies at its peak: the bound above is tight enough to notice one more.
    let bytes = bundle.to_bytes().unwrap();
    let (peak, _, generator) = measure(|| {
        let parsed = Bundle::from_bytes("model", &bytes).unwrap();
        parsed.build(&device).unwrap()
    });
    eprintln!(
        "kept parsed file + copy: loading peaked {:.1} MB",
        peak as f64 / 1e6
    );
    assert!(
        peak > weights + weights / 2,
        "parsed file, its copy and the model: peak {peak} for {weights}"
    );
    drop(generator);
}

fn temp_dir(name: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("disa-memory-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn reference() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/reference/mar-tiny")
}

#[test]
fn a_gzip_bomb_as_data_costs_what_its_header_claims() {
    let _serial = serial();
    use std::io::Write;
    let dir = temp_dir("gzip");
    // An idx3 header for 1000 images of 28×28 (784 kB), then 200 MB of zeros: 200 kB gzipped.
    let claimed = 1000 * 28 * 28;
    let mut header = Vec::new();
    for v in [0x0000_0803u32, 1000, 28, 28] {
        header.extend_from_slice(&v.to_be_bytes());
    }
    let path = dir.join("train-images-idx3-ubyte.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    gz.write_all(&header).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..200 {
        gz.write_all(&zeros).unwrap();
    }
    gz.finish().unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() < 2 << 20);
    let (peak, _, read) = measure(|| disa::data::read_maybe_gz(&path));
    let read = read.unwrap();
    assert!(read.len() <= 16 + claimed + 1, "read {} bytes", read.len());
    assert!(
        peak < 2 * claimed + (1 << 20),
        "peak {peak} for {claimed} claimed"
    );
    // The parse then refuses the extra data.
    assert!(disa::data::parse_images("bomb", &read).is_err());
    // A header that claims more than any dataset is refused before reading.
    let path = dir.join("huge.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    for v in [0x0000_0803u32, 4_000_000_000, 28, 28] {
        gz.write_all(&v.to_be_bytes()).unwrap();
    }
    gz.finish().unwrap();
    let (peak, _, r) = measure(|| disa::data::read_maybe_gz(&path));
    assert!(r.is_err());
    assert!(peak < 1 << 20, "peak {peak}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Appends a tensor of `values` f32 values to a safetensors file's header, its data left as a
/// hole of zeros (a sparse file): a file that claims a huge tensor without taking the disk.
fn with_claimed_tensor(src: &std::path::Path, dst: &std::path::Path, name: &str, values: u64) {
    use std::io::Write;
    let bytes = std::fs::read(src).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let data = &bytes[8 + n..];
    let end = data.len() as u64;
    header.insert(
        name.into(),
        serde_json::json!({"dtype": "F32", "shape": [values], "data_offsets": [end, end + 4 * values]}),
    );
    let mut text = serde_json::to_vec(&header).unwrap();
    while !text.len().is_multiple_of(8) {
        text.push(b' ');
    }
    let mut f = std::fs::File::create(dst).unwrap();
    f.write_all(&(text.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&text).unwrap();
    f.write_all(data).unwrap();
    f.set_len(8 + text.len() as u64 + end + 4 * values).unwrap();
}

#[test]
fn huge_claimed_tensors_and_huge_files_are_not_read() {
    let _serial = serial();
    let dir = temp_dir("claims");
    let model = reference().join("model.safetensors");
    let model_bytes = std::fs::metadata(&model).unwrap().len() as usize;
    let files = |weights: std::path::PathBuf| disa::weights::ModelFiles {
        weights,
        vae: None,
        config: Some(reference().join("manifest.json").display().to_string()),
        state_dict: "model_ema".into(),
    };
    // A tensor the model does not use, 256 MB: refused by name, unread.
    let unused = dir.join("unused.safetensors");
    with_claimed_tensor(&model, &unused, "extra.big", 64 << 20);
    let (peak, _, r) = measure(|| files(unused.clone()).load());
    let err = r.unwrap_err().to_string();
    assert!(err.contains("does not use: `extra.big`"), "{err}");
    assert!(
        peak < 2 * model_bytes,
        "peak {peak} for a {model_bytes}-byte model"
    );
    // The same under a name the model uses: more values than the configuration has.
    let used = dir.join("used.safetensors");
    with_claimed_tensor(&model, &used, "encoder_blocks.0.extra", 64 << 20);
    let (peak, _, r) = measure(|| files(used.clone()).load());
    let err = r.unwrap_err().to_string();
    assert!(err.contains("values"), "{err}");
    assert!(peak < 2 * model_bytes, "peak {peak}");
    // A 30 GB sparse file of zeros, and one with a plausible header: never read whole.
    let sparse = dir.join("sparse.safetensors");
    std::fs::File::create(&sparse)
        .unwrap()
        .set_len(30 << 30)
        .unwrap();
    let (peak, _, r) = measure(|| files(sparse.clone()).load());
    assert!(r.is_err());
    assert!(peak < 1 << 20, "peak {peak}");
    let claims = dir.join("claims.safetensors");
    // Tensors of twice this machine's memory (a sparse file that size).
    let values = disa::weights::limits::memory_budget() / 2;
    with_claimed_tensor(&model, &claims, "zzz", values);
    let (peak, _, r) = measure(|| disa::weights::WeightMap::from_path(&claims, None));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("memory"), "{err}");
    assert!(peak < 1 << 20, "peak {peak}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_oversized_pickle_is_refused_before_it_is_parsed() {
    let _serial = serial();
    let dir = temp_dir("pickle");
    let path = dir.join("bomb.pth");
    // A 12 MB pickle of small integers (a list of 3M BININT1), stored in a torch-style zip.
    let script = r#"
import sys, zipfile
body = b"\x80\x02]q\x00(" + b"K\x01" * 6_000_000 + b"e."
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    z.writestr("bomb/data.pkl", body)
    z.writestr("bomb/version", "3\n")
"#;
    let ok = std::process::Command::new("python3")
        .args(["-c", script])
        .arg(&path)
        .status()
        .expect("python3 (scripts/test.sh installs it)");
    assert!(ok.success());
    let (peak, _, r) = measure(|| disa::weights::WeightMap::from_path(&path, None));
    let err = r.unwrap_err().to_string();
    assert!(err.contains("pickle"), "{err}");
    assert!(peak < 4 << 20, "peak {peak}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Writes a PyTorch zip checkpoint of the reference model (`tests/make_torch_checkpoint.py`),
/// with `extra` tensors of zeros (`NAME=VALUES`) that deflate to almost nothing.
fn torch_checkpoint(path: &std::path::Path, extra: &[&str]) {
    let ok = std::process::Command::new("python3")
        .arg(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/make_torch_checkpoint.py"),
        )
        .arg(path)
        .arg(reference().join("model.safetensors"))
        .args(extra)
        .status()
        .expect("python3 (scripts/test.sh installs it)");
    assert!(ok.success());
}

#[test]
fn a_deflated_huge_tensor_in_a_pth_is_never_inflated() {
    let _serial = serial();
    let dir = temp_dir("deflated");
    let model_bytes = std::fs::metadata(reference().join("model.safetensors"))
        .unwrap()
        .len() as usize;
    // 150M zeros (600 MB of f32) deflate to under 1 MB.
    let huge = "150000000";
    let files = |weights: std::path::PathBuf, config: bool| disa::weights::ModelFiles {
        weights,
        vae: None,
        config: config.then(|| reference().join("manifest.json").display().to_string()),
        state_dict: "model_ema".into(),
    };
    // A tensor the model does not use: refused by name, never inflated.
    let unused = dir.join("unused.pth");
    torch_checkpoint(&unused, &[&format!("extra.big={huge}")]);
    assert!(std::fs::metadata(&unused).unwrap().len() < 8 << 20);
    let (peak, _, r) = measure(|| files(unused.clone(), true).load());
    let err = r.unwrap_err().to_string();
    assert!(err.contains("does not use: `extra.big`"), "{err}");
    assert!(peak < 2 * model_bytes, "peak {peak}, model {model_bytes}");
    // The same size under a name the model uses: more values than the model has, refused
    // before reading, with the configuration given and inferred from the claimed shapes.
    let used = dir.join("used.pth");
    torch_checkpoint(
        &used,
        &[&format!("encoder_blocks.0.attn.qkv.weight={huge}")],
    );
    for config in [true, false] {
        let (peak, _, r) = measure(|| files(used.clone(), config).load());
        let err = r.unwrap_err().to_string();
        assert!(err.contains("values"), "config given: {config}: {err}");
        assert!(
            peak < 2 * model_bytes,
            "config given: {config}: peak {peak}"
        );
    }
    // Only the huge tensor: not a MAR model, refused from its outline, nothing read.
    let alone = dir.join("alone.pth");
    torch_checkpoint(&alone, &["--drop-all", &format!("class_emb.weight={huge}")]);
    for config in [true, false] {
        let (peak, _, r) = measure(|| files(alone.clone(), config).load());
        let err = r.unwrap_err().to_string();
        assert!(
            err.contains("lacks tensor"),
            "config given: {config}: {err}"
        );
        assert!(peak < 1 << 20, "config given: {config}: peak {peak}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn an_oversized_legacy_pickle_is_refused_before_it_is_parsed() {
    let _serial = serial();
    let dir = temp_dir("legacy");
    // A legacy (non-zip) torch.save file: the magic number, protocol and sys_info pickles as
    // PyTorch writes them, then a 12 MB pickle of small integers as the "state dict". The
    // same list, within the limit, is parsed (and refused for what it is, not for its size).
    let script = r#"
import pickle, sys
with open(sys.argv[1], "wb") as f:
    pickle.dump(0x1950a86a20f9469cfc6c, f, protocol=2)
    pickle.dump(1001, f, protocol=2)
    pickle.dump({"protocol_version": 1001, "little_endian": True,
                 "type_sizes": {"short": 2, "int": 4, "long": 4}}, f, protocol=2)
    f.write(b"\x80\x02]q\x00(" + b"K\x01" * int(sys.argv[2]) + b"e.")
    pickle.dump([], f, protocol=2)
"#;
    for (items, oversized) in [(6_000_000, true), (1000, false)] {
        let path = dir.join(format!("legacy-{items}.pth"));
        let ok = std::process::Command::new("python3")
            .args(["-c", script])
            .arg(&path)
            .arg(items.to_string())
            .status()
            .expect("python3 (scripts/test.sh installs it)");
        assert!(ok.success());
        let head = std::fs::read(&path).unwrap();
        assert_eq!(
            disa::weights::detect_format(&head[..64], head.len() as u64),
            disa::weights::FileFormat::TorchLegacy
        );
        drop(head);
        let (peak, _, r) = measure(|| disa::weights::WeightMap::from_path(&path, None));
        let err = r.unwrap_err().to_string();
        assert_eq!(err.contains("pickles run past"), oversized, "{err}");
        assert!(peak < 4 << 20, "peak {peak}: {err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn one_state_dict_saved_under_two_keys_loads_under_either() {
    // `torch.save({"model": sd, "model_ema": sd})` pickles the second as a memo reference to
    // the first OrderedDict; `--distinct` writes two dicts sharing the tensors.
    let _serial = serial();
    let dir = temp_dir("alias");
    let reference_map =
        disa::weights::WeightMap::from_path(&reference().join("model.safetensors"), None).unwrap();
    for distinct in [false, true] {
        let path = dir.join(format!("c-{distinct}.pth"));
        torch_checkpoint(&path, if distinct { &["--distinct"] } else { &[] });
        for key in ["model_ema", "model"] {
            let map = disa::weights::WeightMap::from_path(&path, Some(key))
                .unwrap_or_else(|e| panic!("distinct {distinct}, {key}: {e}"));
            assert_eq!(
                map.tensors, reference_map.tensors,
                "distinct {distinct}, {key}"
            );
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
}
