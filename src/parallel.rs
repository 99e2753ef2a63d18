//! Splitting work over threads. Scoped threads per call: the library keeps no global pool inside a
//! host engine's process, and a call with little work stays on the caller's thread.

use std::ops::Range;

/// Number of threads for a `n_threads` setting (0 = all available cores; more is capped at that).
pub fn resolve_threads(n_threads: u32) -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    if n_threads == 0 { cores } else { (n_threads as usize).min(cores) }
}

/// Split `0..n` into at most `threads` contiguous ranges of at least `min_chunk` items and run `f` on
/// each, in parallel. `f` gets (chunk index, range). The caller's thread takes the first range.
pub fn for_each_range<F>(n: usize, threads: usize, min_chunk: usize, f: F)
where
    F: Fn(usize, Range<usize>) + Sync,
{
    let threads = threads.max(1).min(n.div_ceil(min_chunk.max(1))).max(1);
    if threads <= 1 {
        if n > 0 {
            f(0, 0..n);
        }
        return;
    }
    let per = n.div_ceil(threads);
    std::thread::scope(|scope| {
        let mut inline = Vec::new();
        for t in 1..threads {
            let range = (t * per).min(n)..((t + 1) * per).min(n);
            if !range.is_empty() {
                let f = &f;
                let r = range.clone();
                if spawn_share(scope, move || f(t, r)).is_err() {
                    inline.push((t, range));
                }
            }
        }
        f(0, 0..per.min(n));
        // Shares whose thread could not be started run here: a failed spawn costs time, not the call.
        for (t, range) in inline {
            f(t, range);
        }
    });
}

/// Start one share on a scoped thread; an error (the system refused a thread) is returned, not a panic.
fn spawn_share<'scope, 'env>(
    scope: &'scope std::thread::Scope<'scope, 'env>,
    job: impl FnOnce() + Send + 'scope,
) -> std::io::Result<()> {
    #[cfg(test)]
    if tests::FAIL_SPAWN.with(|f| f.get()) {
        return Err(std::io::Error::other("spawn refused (test)"));
    }
    std::thread::Builder::new().spawn_scoped(scope, job).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    thread_local! {
        pub(super) static FAIL_SPAWN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }

    #[test]
    fn threads_capped_at_parallelism() {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(resolve_threads(u32::MAX), cores);
        assert_eq!(resolve_threads(0), cores);
        assert_eq!(resolve_threads(1), 1);
    }

    #[test]
    fn failed_spawn_runs_the_share_inline() {
        FAIL_SPAWN.with(|f| f.set(true));
        let n = 1000;
        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        for_each_range(n, 8, 1, |_, r| {
            for i in r {
                hits[i].fetch_add(1, Ordering::Relaxed);
            }
        });
        FAIL_SPAWN.with(|f| f.set(false));
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }

    #[test]
    fn covers_every_index_once() {
        for (n, threads, min) in [(0, 4, 1), (1, 4, 1), (10, 3, 1), (1000, 2, 64), (7, 8, 2)] {
            let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
            for_each_range(n, threads, min, |_, r| {
                for i in r {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "n={n} threads={threads}");
        }
    }
}
