//! Thread policy for the CPU backend: a call gets as many threads as its work can keep busy.
//!
//! Burn's `flex` backend parallelizes a matmul over every thread of the current rayon pool once
//! it passes a fixed size (192³ multiply-adds), however many threads that is. At this project's
//! small widths that makes more threads slower: a 144×128×512 matmul split 16 ways spends its
//! time waking threads. [`with_threads_for`] runs a computation inside a rayon pool sized by
//! its multiply-add count, so flex's own parallel paths only use threads that pay off. In wasm
//! (no threads) it just runs the computation.

/// Multiply-adds one more thread needs before it pays off (measured on the built-in model's
/// transformer, see the README's *CPU speed*).
pub const MACS_PER_THREAD: usize = 48 << 20;

/// Threads for a computation of `macs` multiply-adds, out of `available`.
pub fn threads_for(macs: usize, available: usize) -> usize {
    (macs / MACS_PER_THREAD).clamp(1, available.max(1))
}

/// Runs `f` with at most [`threads_for`]`(macs)` rayon threads.
#[cfg(not(target_arch = "wasm32"))]
pub fn with_threads_for<R: Send>(macs: usize, f: impl FnOnce() -> R + Send) -> R {
    let available = rayon::current_num_threads();
    let threads = threads_for(macs, available);
    if threads >= available {
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

    #[cfg(not(target_arch = "wasm32"))]
    #[test]
    fn a_small_call_runs_on_one_thread() {
        let n = with_threads_for(0, rayon::current_num_threads);
        assert_eq!(n, 1);
    }
}
