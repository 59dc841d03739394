//! Loading a model file from bytes holds at most one extra copy of the weights: the caller's
//! bytes, while the parsed tensors move into the model one by one. Measured with a counting
//! allocator (this binary's only test, so nothing else allocates meanwhile).

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
    // Warm the backend (thread pool, caches) so its one-time allocations are not counted.
    drop(bundle.build(&device).unwrap());

    for storage in [Storage::F32, Storage::Int8] {
        let bytes = bundle.to_bytes_as(storage).unwrap();
        let (peak, model, generator) = measure(|| {
            Bundle::from_bytes("model", &bytes)
                .unwrap()
                .into_generator(&device)
                .unwrap()
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
