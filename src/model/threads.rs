//! Thread policy for the CPU backend: a call gets as many threads as its work can keep busy.
//!
//! Burn's `flex` backend parallelizes a matmul over every thread of the current rayon pool once
//! it passes a fixed size (192³ multiply-adds), however many threads that is. At this project's
//! small widths that makes more threads slower: a 144×128×512 matmul split 16 ways spends its
//! time waking threads. [`with_threads_for`] runs a computation inside a rayon pool sized by
//! its multiply-add count, so flex's own parallel paths only use threads that pay off.
//!
//! Splitting every op also costs a hand-off per op, which at these sizes ate the whole gain of
//! a second core (batch 8 ran as fast on 2 threads as on 1). Where the work falls into
//! independent parts — the transformer's sequences (images and their CFG copies), the head's
//! token rows for a whole sampling loop — [`run_parts`] runs each part start to end on its
//! own thread instead: one hand-off per part. In wasm (no threads) both just run the work.

use std::ops::Range;

/// Multiply-adds one more thread needs before it pays off (measured on the built-in model's
/// transformer, see the README's *CPU speed*).
pub const MACS_PER_THREAD: usize = 48 << 20;

/// Threads for a computation of `macs` multiply-adds, out of `available`.
pub fn threads_for(macs: usize, available: usize) -> usize {
    (macs / MACS_PER_THREAD).clamp(1, available.max(1))
}

/// Multiply-adds a part of a split computation needs before another thread pays off: a part
/// costs one hand-off (tens of µs), not one per op, so far less than [`MACS_PER_THREAD`].
pub const MACS_PER_PART: usize = 4 << 20;

/// Parts to split `items` independent items of `macs` multiply-adds in all into: one per
/// available thread while each part keeps [`MACS_PER_PART`], at most one per item.
pub fn parts_for(macs: usize, items: usize, available: usize) -> usize {
    (macs / MACS_PER_PART)
        .clamp(1, available.max(1))
        .min(items.max(1))
}

/// Threads that can run side by side here: the current rayon pool's, but no more than the
/// processors the OS gives this process (`RAYON_NUM_THREADS=16` on two cores would otherwise
/// cut the work into 16 smaller, less efficient pieces that take turns on two cores).
#[cfg(not(target_arch = "wasm32"))]
pub fn usable_threads() -> usize {
    use std::sync::OnceLock;
    static CORES: OnceLock<usize> = OnceLock::new();
    let cores = *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    rayon::current_num_threads().min(cores).max(1)
}

/// [`parts_for`] with [`usable_threads`] natively; 1 in wasm.
pub fn parts_here(macs: usize, items: usize) -> usize {
    #[cfg(not(target_arch = "wasm32"))]
    {
        parts_for(macs, items, usable_threads())
    }
    #[cfg(target_arch = "wasm32")]
    {
        let _ = (macs, items);
        1
    }
}

/// `0..items` cut into `parts` contiguous ranges whose sizes differ by at most one.
pub fn split_ranges(items: usize, parts: usize) -> Vec<Range<usize>> {
    let parts = parts.clamp(1, items.max(1));
    (0..parts)
        .map(|i| (i * items / parts)..((i + 1) * items / parts))
        .collect()
}

/// `f` over every part, side by side on the current rayon pool (in order in wasm); the results
/// in the parts' order.
#[cfg(not(target_arch = "wasm32"))]
pub fn run_parts<T: Send, R: Send>(parts: Vec<T>, f: impl Fn(T) -> R + Sync + Send) -> Vec<R> {
    use rayon::iter::{IntoParallelIterator, ParallelIterator};
    if parts.len() <= 1 {
        return parts.into_iter().map(f).collect();
    }
    parts.into_par_iter().map(f).collect()
}

/// In wasm the parts run one after the other.
#[cfg(target_arch = "wasm32")]
pub fn run_parts<T, R>(parts: Vec<T>, f: impl Fn(T) -> R) -> Vec<R> {
    parts.into_iter().map(f).collect()
}

/// Runs `f` with at most [`threads_for`]`(macs)` of the [`usable_threads`].
#[cfg(not(target_arch = "wasm32"))]
pub fn with_threads_for<R: Send>(macs: usize, f: impl FnOnce() -> R + Send) -> R {
    // Already on a pool's thread (a part of [`run_parts`], or inside another sized pool): the
    // caller has chosen the parallelism; a nested sized pool would serialize the parts.
    if rayon::current_thread_index().is_some() {
        return f();
    }
    let threads = threads_for(macs, usable_threads());
    if threads >= rayon::current_num_threads() {
        return f();
    }
    match pool(threads) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

/// In wasm everything runs on the calling thread.
#[cfg(target_arch = "wasm32")]
pub fn with_threads_for<R>(_macs: usize, f: impl FnOnce() -> R) -> R {
    f()
}

/// A cached pool of exactly `threads` threads (`None` if the OS refuses to start one).
#[cfg(not(target_arch = "wasm32"))]
fn pool(threads: usize) -> Option<std::sync::Arc<rayon::ThreadPool>> {
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex, OnceLock};
    static POOLS: OnceLock<Mutex<HashMap<usize, Arc<rayon::ThreadPool>>>> = OnceLock::new();
    let mut pools = POOLS
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(p) = pools.get(&threads) {
        return Some(p.clone());
    }
    let p = Arc::new(
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(move |i| format!("disa-{threads}t-{i}"))
            .build()
            .ok()?,
    );
    pools.insert(threads, p.clone());
    Some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_grow_with_work_and_stay_in_range() {
        assert_eq!(threads_for(0, 16), 1);
        assert_eq!(threads_for(MACS_PER_THREAD - 1, 16), 1);
        assert_eq!(threads_for(3 * MACS_PER_THREAD, 16), 3);
        assert_eq!(threads_for(100 * MACS_PER_THREAD, 16), 16);
        assert_eq!(threads_for(100 * MACS_PER_THREAD, 0), 1);
    }

    #[test]
    fn parts_follow_work_threads_and_items() {
        assert_eq!(parts_for(0, 8, 2), 1);
        assert_eq!(parts_for(MACS_PER_PART * 2, 8, 2), 2);
        assert_eq!(
            parts_for(MACS_PER_PART * 100, 8, 16),
            8,
            "no more parts than items"
        );
        assert_eq!(parts_for(MACS_PER_PART * 100, 0, 16), 1);
    }

    #[test]
    fn ranges_cover_every_item_once_in_order() {
        for items in 0..20 {
            for parts in 1..6 {
                let r = split_ranges(items, parts);
                let flat: Vec<usize> = r.iter().flat_map(|r| r.clone()).collect();
                assert_eq!(flat, (0..items).collect::<Vec<_>>());
                let sizes: Vec<usize> = r.iter().map(|r| r.len()).collect();
                assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
            }
        }
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn parts_run_side_by_side_and_keep_their_order() {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        let out = pool.install(|| {
            run_parts((0..6).collect(), |i: usize| {
                // Inside a part a sized pool is not entered: the part stays on its thread.
                let inner = with_threads_for(usize::MAX, rayon::current_thread_index);
                (i * 10, inner.is_some())
            })
        });
        assert_eq!(
            out.iter().map(|o| o.0).collect::<Vec<_>>(),
            vec![0, 10, 20, 30, 40, 50]
        );
        assert!(out.iter().all(|o| o.1), "parts run on the pool's threads");
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_small_call_runs_on_one_thread() {
        let n = with_threads_for(0, rayon::current_num_threads);
        assert_eq!(n, 1);
    }

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_pool_larger_than_the_machine_is_used_only_up_to_its_cores() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(cores + 3)
            .build()
            .unwrap();
        let (usable, parts) =
            pool.install(|| (usable_threads(), parts_here(usize::MAX, usize::MAX)));
        assert_eq!(usable, cores);
        assert_eq!(parts, cores);
    }
}
