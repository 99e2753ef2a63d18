//! Every CUDA kernel variant compiles for sm_80 and sm_90 with NVRTC — no GPU needed (CI runs this
//! with the nvidia-cuda-nvrtc wheel on LD_LIBRARY_PATH, `make test-cuda-compile`). The compiled
//! sources include static_asserts that the kernel argument structs match src/backend/cuda/params.rs.
//!
//! Without libnvrtc the test fails when TQ_REQUIRE_NVRTC=1 (CI) and prints a loud SKIPPED otherwise.
#![cfg(feature = "cuda")]

use turboquant::backend::cuda::compile::{self, Variant};
use turboquant::backend::cuda::{fast_item_cost, fast_splits, fast_variant};

#[test]
fn every_kernel_variant_compiles_for_sm80_and_sm90() {
    if !compile::nvrtc_available() {
        let msg = "libnvrtc not found (put the nvidia-cuda-nvrtc wheel's nvidia/cu13/lib on LD_LIBRARY_PATH)";
        if std::env::var("TQ_REQUIRE_NVRTC").as_deref() == Ok("1") {
            panic!("{msg}");
        }
        use std::io::Write;
        let _ = std::io::stderr().write_all(format!("\n*** SKIPPED: {msg} — the CUDA kernels were NOT compiled ***\n").as_bytes());
        return;
    }
    let jobs: Vec<(Variant, &str)> =
        compile::ci_variants().into_iter().flat_map(|v| [(v, "sm_80"), (v, "sm_90")]).collect();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(jobs.len());
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&(v, arch)) = jobs.get(i) else { break };
                match compile::compile(v, arch) {
                    Ok(c) => {
                        assert!(!c.cubin.is_empty(), "{v:?} {arch}: empty cubin");
                        // The host looks the fast decode kernels up exactly where `fast_variant` says
                        // they exist (a mismatch would fail context creation on a GPU).
                        let has = |name: &str| c.cubin.windows(name.len()).any(|w| w == name.as_bytes());
                        let want = fast_variant(v.head_dim, v.bits_k, v.bits_v);
                        for k in ["tq_decode_fast16", "tq_decode_fast8", "tq_decode_fast8c"] {
                            if has(k) != want {
                                failures.lock().unwrap().push(format!("{v:?} {arch}: {k} present = {}, fast_variant = {want}", has(k)));
                            }
                        }
                    }
                    Err(e) => failures.lock().unwrap().push(e),
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{} of {} compilations failed:\n{}", failures.len(), jobs.len(), failures.join("\n\n"));
    println!("compiled {} kernel variants (sm_80 and sm_90)", jobs.len());
}

#[test]
fn unsupported_shapes_are_refused_with_a_reason() {
    let e = Variant { head_dim: 80, bits_k: 4, bits_v: 4 }.check().unwrap_err();
    assert!(e.contains("head_dim 80") && e.contains("multiple of 32"), "{e}");
    let e = Variant { head_dim: 512, bits_k: 4, bits_v: 4 }.check().unwrap_err();
    assert!(e.contains("at most 256"), "{e}");
}

/// The split planner of the fast decode kernel against an exhaustive search over the real schedule:
/// item i of `base × n_splits` goes to CTA i mod ctas, the last split of a sequence is shorter, every
/// item costs its cells plus the planner's fixed cost per item. The planner's choice must be within 10 % of the best
/// makespan, respect `max_splits`, and cover every cell.
#[test]
fn fast_decode_split_plan_is_near_the_best_schedule() {
    fn makespan(base: usize, len: usize, ctas: usize, s: usize) -> (usize, usize, usize) {
        let chunk = len.div_ceil(s).next_multiple_of(16);
        let n = len.div_ceil(chunk).max(1);
        let mut load = vec![0usize; ctas];
        for item in 0..base * n {
            let split = item % n;
            let cells = chunk.min(len - (split * chunk).min(len));
            load[item % ctas] += cells + fast_item_cost();
        }
        (load.into_iter().max().unwrap(), n, chunk)
    }
    let mut worst = 1.0f64;
    for &ctas in &[108usize, 132] {
        for &base in &[1usize, 2, 3, 4, 16, 64, 256] {
            for &len in &[1usize, 17, 1000, 8192, 32768, 131072] {
                for &max_splits in &[1usize, 4, 64, 2048] {
                    let max_splits = max_splits.min(len.div_ceil(16)).max(1);
                    let s = fast_splits(base, len, ctas, max_splits);
                    assert!((1..=max_splits).contains(&s), "splits {s} outside 1..={max_splits}");
                    let (got, n, chunk) = makespan(base, len, ctas, s);
                    assert!(n <= max_splits, "{n} splits > {max_splits}");
                    assert!(n * chunk >= len && (n - 1) * chunk < len, "{n} splits of {chunk} cells for {len}");
                    let best = (1..=max_splits).map(|t| makespan(base, len, ctas, t).0).min().unwrap();
                    let ratio = got as f64 / best as f64;
                    worst = worst.max(ratio);
                    assert!(ratio <= 1.10, "base {base} len {len} ctas {ctas} max {max_splits}: {s} splits give {got}, best {best}");
                }
            }
        }
    }
    println!("fast decode split plans: worst makespan {worst:.3}x the exhaustive optimum");
}

#[test]
fn fast_decode_stage_count_follows_the_architecture() {
    // Bulk copies from sm_90 on: two larger stages; cp.async before: four (compile::fast_stages, passed to
    // the kernels as FD_STAGES and used by the host to size their shared memory).
    for (arch, stages) in [("sm_80", 4), ("sm_86", 4), ("sm_89", 4), ("sm_90", 2), ("sm_90a", 2), ("sm_100", 2), ("sm_120", 2)] {
        assert_eq!(compile::fast_stages(arch), stages, "{arch}");
    }
}
