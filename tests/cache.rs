//! The owned cache through the C ABI: residual window exactness, sequence operations, save/load,
//! capacity errors, and load of random / mutated bytes.

mod common;

use common::*;
use proptest::prelude::{ProptestConfig, any, prop_assert, prop_assert_eq, proptest};
use turboquant::ffi::cache::*;
use turboquant::ffi::context::*;
use turboquant::codec::layout::RowLayout;
use turboquant::ffi::tq_status;
use turboquant::math::quantizer::{MseQuantizer, Quantizer, QuantizerConfig, QuantizerKind};
use turboquant::math::rotation::RotationKind;

const D: usize = 64;
const NKV: usize = 2;
const NH: usize = 8;
const LAYERS: u32 = 2;

struct Cache(*mut tq_cache);
impl Drop for Cache {
    fn drop(&mut self) {
        unsafe { tq_cache_free(self.0) };
    }
}

fn ctx_params(centering: bool) -> tq_context_params {
    let mut p = tq_context_default_params();
    p.n_layers = LAYERS;
    p.n_heads = NH as u32;
    p.n_kv_heads = NKV as u32;
    p.head_dim = D as u32;
    p.bits_k = 4;
    p.bits_v = 3;
    p.seed = 42;
    p.n_threads = 2;
    p.centering = centering;
    p
}

fn cache(ctx: &Ctx, max_seqs: u32, max_tokens: u32, window: u32, n_sink: u32) -> Cache {
    let mut p = tq_cache_default_params();
    p.max_seqs = max_seqs;
    p.max_tokens = max_tokens;
    p.residual_window = window;
    p.n_sink = n_sink;
    let mut c = std::ptr::null_mut();
    assert_eq!(unsafe { tq_cache_new(ctx.0, &p, &mut c) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    Cache(c)
}

fn append(c: &Cache, layer: u32, seq: u32, k: &[f32], v: &[f32]) -> tq_status {
    let n = k.len() / (NKV * D);
    unsafe { tq_cache_append(c.0, layer, seq, n, k.as_ptr().cast(), v.as_ptr().cast(), std::ptr::null_mut()) }
}

fn attend(c: &Cache, layer: u32, seq: u32, q: &[f32]) -> Vec<f32> {
    let n_q = q.len() / (NH * D);
    let mut out = vec![0.0f32; q.len()];
    let st = unsafe {
        tq_cache_attend(c.0, layer, seq, q.as_ptr().cast(), n_q, 1.0 / (D as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    out
}

fn seq_len(c: &Cache, seq: u32) -> usize {
    let mut n = 0;
    assert_eq!(unsafe { tq_cache_seq_len(c.0, seq, &mut n) }, tq_status::TQ_STATUS_OK);
    n
}

/// Exact causal attention in f64 of the last n_q tokens over all n tokens.
fn exact(k: &[f32], v: &[f32], q: &[f32]) -> Vec<f64> {
    let n = k.len() / (NKV * D);
    let n_q = q.len() / (NH * D);
    let to64 = |x: &[f32]| x.iter().map(|&a| a as f64).collect::<Vec<_>>();
    let mut mask = vec![0.0f64; n_q * n];
    for t in 0..n_q {
        for j in 0..n {
            if j > n - n_q + t {
                mask[t * n + j] = f64::NEG_INFINITY;
            }
        }
    }
    reference_attention(&to64(q), &to64(k), &to64(v), &mask, n_q, n, NH, NKV, D, 1.0 / (D as f64).sqrt())
}

#[test]
fn tokens_inside_the_window_are_exact() {
    let ctx = context(&ctx_params(false));
    let c = cache(&ctx, 1, 1024, 512, 0);
    let mut rng = Rng::new(1);
    let (k, v) = (rng.normals(300 * NKV * D), rng.normals(300 * NKV * D));
    assert_eq!(append(&c, 1, 0, &k[..200 * NKV * D], &v[..200 * NKV * D]), tq_status::TQ_STATUS_OK);
    assert_eq!(append(&c, 1, 0, &k[200 * NKV * D..], &v[200 * NKV * D..]), tq_status::TQ_STATUS_OK);
    let q = rng.normals(5 * NH * D);
    let out = attend(&c, 1, 0, &q);
    let err = max_row_rel_error(&out, &exact(&k, &v, &q), D);
    assert!(err < 1e-5, "window ≥ context must be exact attention: {err:e}");
    let mut m = tq_cache_memory::default();
    assert_eq!(unsafe { tq_cache_memory_usage(c.0, &mut m) }, tq_status::TQ_STATUS_OK);
    assert_eq!((m.n_tokens, m.n_compressed), (300, 0));
}

/// Exact causal attention in f64 of the last n_q tokens over the owned cache's mixed reconstruction with
/// `window` / `sinks`: the first `sinks` and the last `window` tokens as given, the others as their
/// compressed rows decode. The rows come from slot mode on the same context (layer 0: the owned cache
/// writes the same bytes) and are decoded by quantizers rebuilt from the math layer (rotation streams
/// 2L / 2L + 1), independently of the attention code.
fn mixed_reference(ctx: &Ctx, k: &[f32], v: &[f32], q: &[f32], window: usize, sinks: usize) -> Vec<f64> {
    let n = k.len() / (NKV * D);
    let (kr, vr) = row_bytes(ctx);
    let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
    let slots: Vec<i64> = (0..n as i64).collect();
    let st = unsafe {
        tq_append_kv(ctx.0, 0, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n,
            k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let p = ctx_params(false);
    let rotation = RotationKind::auto(D);
    let config = QuantizerConfig { dim: D, bits: p.bits_k, rotation, kind: QuantizerKind::Mse, seed: p.seed };
    let key = Quantizer::new_indexed(config, 0, 0).unwrap();
    let value = MseQuantizer::new(D, p.bits_v, rotation, p.seed, 1).unwrap();
    let layout = |bits| RowLayout { n_kv_heads: NKV, head_dim: D, mse_bits: bits, qjl: false, split: 0 };
    let mut kd = dequant_rows(&ks, &layout(p.bits_k), n, Some(&key), None, None);
    let mut vd = dequant_rows(&vs, &layout(p.bits_v), n, None, Some(&value), None);
    for t in (0..sinks).chain(n - window..n) {
        for e in t * NKV * D..(t + 1) * NKV * D {
            (kd[e], vd[e]) = (k[e] as f64, v[e] as f64);
        }
    }
    let n_q = q.len() / (NH * D);
    let mut mask = vec![0.0f64; n_q * n];
    for t in 0..n_q {
        for j in n - n_q + t + 1..n {
            mask[t * n + j] = f64::NEG_INFINITY;
        }
    }
    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
    reference_attention(&q64, &kd, &vd, &mask, n_q, n, NH, NKV, D, 1.0 / (D as f64).sqrt())
}

#[test]
fn compressed_and_window_tokens_share_one_softmax() {
    // residual_window 0 = everything compressed; 64 = mixed; 64 + 32 sinks. Each attend must match the
    // float64 attention over its mixed reconstruction (compressed tokens decoded, window and sinks
    // exact) to 1e-5 — one softmax over both kinds of token, as slot mode matches its rows — and against
    // exact attention the mixed error must lie below the fully compressed one, the sinks lower still.
    let ctx = context(&ctx_params(false));
    let mut rng = Rng::new(2);
    let n = 400;
    let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
    let q = rng.normals(3 * NH * D);
    let reference = exact(&k, &v, &q);
    let mut errs = Vec::new();
    for (window, sinks) in [(0u32, 0u32), (64, 0), (64, 32)] {
        let c = cache(&ctx, 1, 1024, window, sinks);
        for chunk in 0..4 {
            let r = chunk * 100 * NKV * D..(chunk + 1) * 100 * NKV * D;
            assert_eq!(append(&c, 0, 0, &k[r.clone()], &v[r]), tq_status::TQ_STATUS_OK);
        }
        let mut m = tq_cache_memory::default();
        assert_eq!(unsafe { tq_cache_memory_usage(c.0, &mut m) }, tq_status::TQ_STATUS_OK);
        // Layer 0 only was appended: n tokens, of which n − window − sinks compressed.
        assert_eq!(m.n_compressed, n - window as usize - sinks as usize, "window {window} sinks {sinks}");
        let out = attend(&c, 0, 0, &q);
        let mixed = max_row_rel_error(&out, &mixed_reference(&ctx, &k, &v, &q, window as usize, sinks as usize), D);
        assert!(mixed <= 1e-5, "window {window} sinks {sinks}: {mixed:e} from the float64 mixed reference");
        errs.push(max_row_rel_error(&out, &reference, D));
    }
    assert!(errs[1] < errs[0] && errs[2] < errs[1], "errors {errs:?}");
    assert!(errs[0] < 0.5, "fully compressed 4/3-bit error {}", errs[0]);
}

#[test]
fn fully_compressed_cache_matches_slot_mode() {
    // The owned cache with window 0 stores the rows slot mode would write at cells 0..n; both
    // attends must agree to float rounding.
    let ctx = context(&ctx_params(true));
    let c = cache(&ctx, 1, 512, 0, 0);
    let mut rng = Rng::new(3);
    let n = 150;
    let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
    assert_eq!(append(&c, 1, 0, &k, &v), tq_status::TQ_STATUS_OK);
    let q = rng.normals(NH * D);
    let owned = attend(&c, 1, 0, &q);

    let slot_ctx = context(&ctx_params(true));
    let (kr, vr) = row_bytes(&slot_ctx);
    let (mut ks, mut vs) = (vec![0u8; n * kr], vec![0u8; n * vr]);
    let slots: Vec<i64> = (0..n as i64).collect();
    let st = unsafe {
        tq_append_kv(slot_ctx.0, 1, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), n, slots.as_ptr(), n,
            k.as_ptr().cast(), std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut out = vec![0.0f32; NH * D];
    let st = unsafe {
        tq_attend(slot_ctx.0, 1, q.as_ptr().cast(), 1, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), n,
            std::ptr::null(), 0, 0, 1.0 / (D as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK);
    for (a, b) in owned.iter().zip(&out) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + b.abs()), "{a} vs {b}");
    }
}

fn filled_cache(ctx: &Ctx, seed: u64) -> (Cache, Vec<f32>, Vec<f32>) {
    let c = cache(ctx, 3, 512, 32, 4);
    let mut rng = Rng::new(seed);
    let n = 120;
    let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
    for layer in 0..LAYERS {
        assert_eq!(append(&c, layer, 0, &k, &v), tq_status::TQ_STATUS_OK);
    }
    (c, k, v)
}

#[test]
fn seq_operations_give_bit_identical_attention() {
    let ctx = context(&ctx_params(true));
    let (c, k, v) = filled_cache(&ctx, 4);
    let q = Rng::new(9).normals(2 * NH * D);
    let before = attend(&c, 1, 0, &q);

    // seq_cp 0 → 1 (all positions): seq 1 attends bit-identically.
    assert_eq!(unsafe { tq_cache_seq_cp(c.0, 0, 1, -1, -1) }, tq_status::TQ_STATUS_OK);
    assert_eq!(seq_len(&c, 1), 120);
    assert_eq!(attend(&c, 1, 1, &q), before);

    // seq_rm of the last 20 positions, then re-append the same tokens: identical again.
    assert_eq!(unsafe { tq_cache_seq_rm(c.0, 0, 100, -1) }, tq_status::TQ_STATUS_OK);
    assert_eq!(seq_len(&c, 0), 100);
    for layer in 0..LAYERS {
        assert_eq!(append(&c, layer, 0, &k[100 * NKV * D..], &v[100 * NKV * D..]), tq_status::TQ_STATUS_OK);
    }
    assert_eq!(attend(&c, 1, 0, &q), before);

    // A middle range removed changes the result; copying it back from seq 1 restores it exactly.
    assert_eq!(unsafe { tq_cache_seq_rm(c.0, 0, 10, 30) }, tq_status::TQ_STATUS_OK);
    assert_eq!(seq_len(&c, 0), 100);
    assert_ne!(attend(&c, 1, 0, &q), before);
    assert_eq!(unsafe { tq_cache_seq_cp(c.0, 1, 0, 10, 30) }, tq_status::TQ_STATUS_OK);
    assert_eq!(attend(&c, 1, 0, &q), before);

    // seq_keep(1) empties the others; clear empties everything.
    assert_eq!(unsafe { tq_cache_seq_keep(c.0, 1) }, tq_status::TQ_STATUS_OK);
    assert_eq!((seq_len(&c, 0), seq_len(&c, 1)), (0, 120));
    assert_eq!(unsafe { tq_cache_clear(c.0) }, tq_status::TQ_STATUS_OK);
    assert_eq!(seq_len(&c, 1), 0);
    // Bad sequence ids are argument errors naming seq.
    assert_eq!(unsafe { tq_cache_seq_keep(c.0, 3) }, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("seq is 3"), "{}", last_error());
}

fn save(c: &Cache) -> Vec<u8> {
    let mut n = 0;
    assert_eq!(unsafe { tq_cache_save(c.0, std::ptr::null_mut(), 0, &mut n) }, tq_status::TQ_STATUS_OK);
    let mut buf = vec![0u8; n];
    let mut written = 0;
    assert_eq!(unsafe { tq_cache_save(c.0, buf.as_mut_ptr().cast(), n, &mut written) }, tq_status::TQ_STATUS_OK);
    assert_eq!(written, n);
    buf
}

#[test]
fn save_load_round_trips_and_rejects_bad_data() {
    let ctx = context(&ctx_params(true));
    let (c, _, _) = filled_cache(&ctx, 5);
    let q = Rng::new(10).normals(NH * D);
    let before = attend(&c, 0, 0, &q);
    let bytes = save(&c);

    let (fresh, _, _) = (cache(&ctx, 3, 512, 32, 4), (), ());
    assert_eq!(unsafe { tq_cache_load(fresh.0, bytes.as_ptr().cast(), bytes.len()) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert_eq!(attend(&fresh, 0, 0, &q), before);
    assert_eq!(save(&fresh), bytes);

    // Through a file.
    let path = std::env::temp_dir().join(format!("tq-cache-test-{}.bin", std::process::id()));
    let cpath = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
    assert_eq!(unsafe { tq_cache_save_file(c.0, cpath.as_ptr()) }, tq_status::TQ_STATUS_OK);
    let other = cache(&ctx, 3, 512, 32, 4);
    assert_eq!(unsafe { tq_cache_load_file(other.0, cpath.as_ptr()) }, tq_status::TQ_STATUS_OK);
    assert_eq!(attend(&other, 0, 0, &q), before);
    std::fs::remove_file(&path).unwrap();
    let missing = std::ffi::CString::new("/nonexistent-dir/x.bin").unwrap();
    assert_eq!(unsafe { tq_cache_load_file(other.0, missing.as_ptr()) }, tq_status::TQ_STATUS_IO_ERROR);

    // Truncated and corrupted data: rejected, the target cache unchanged.
    for bad in [bytes[..bytes.len() / 2].to_vec(), {
        let mut b = bytes.clone();
        b[bytes.len() / 3] ^= 0x40;
        b
    }] {
        assert_eq!(unsafe { tq_cache_load(fresh.0, bad.as_ptr().cast(), bad.len()) }, tq_status::TQ_STATUS_CORRUPT_DATA);
        assert_eq!(attend(&fresh, 0, 0, &q), before);
    }
    // Mismatched parameters: another seed (context), another window (cache).
    let mut p2 = ctx_params(true);
    p2.seed = 43;
    let ctx2 = context(&p2);
    let c2 = cache(&ctx2, 3, 512, 32, 4);
    assert_eq!(unsafe { tq_cache_load(c2.0, bytes.as_ptr().cast(), bytes.len()) }, tq_status::TQ_STATUS_INCOMPATIBLE);
    assert!(last_error().contains("different parameters"), "{}", last_error());
    let c3 = cache(&ctx, 3, 512, 16, 4);
    assert_eq!(unsafe { tq_cache_load(c3.0, bytes.as_ptr().cast(), bytes.len()) }, tq_status::TQ_STATUS_INCOMPATIBLE);
    assert!(last_error().contains("residual_window"), "{}", last_error());
    // A context with another layer count: the message names it (and the seed-only difference above
    // keeps the general one).
    let mut p4 = ctx_params(true);
    p4.n_layers = LAYERS + 1;
    let ctx4 = context(&p4);
    let c4 = cache(&ctx4, 3, 512, 32, 4);
    assert_eq!(unsafe { tq_cache_load(c4.0, bytes.as_ptr().cast(), bytes.len()) }, tq_status::TQ_STATUS_INCOMPATIBLE);
    assert!(last_error().contains("saved n_layers is 2, this cache has 3"), "{}", last_error());
}

#[test]
fn appending_past_capacity_is_refused_and_changes_nothing() {
    let ctx = context(&ctx_params(false));
    let c = cache(&ctx, 2, 100, 16, 0);
    let mut rng = Rng::new(6);
    let (k, v) = (rng.normals(90 * NKV * D), rng.normals(90 * NKV * D));
    assert_eq!(append(&c, 0, 0, &k, &v), tq_status::TQ_STATUS_OK);
    let q = rng.normals(NH * D);
    let before = attend(&c, 0, 0, &q);
    let (k2, v2) = (rng.normals(11 * NKV * D), rng.normals(11 * NKV * D));
    assert_eq!(append(&c, 0, 0, &k2, &v2), tq_status::TQ_STATUS_CAPACITY_EXCEEDED);
    assert!(last_error().contains("max_tokens"), "{}", last_error());
    assert_eq!(seq_len(&c, 0), 90);
    assert_eq!(attend(&c, 0, 0, &q), before);
    // seq_cp that would overflow the destination is refused too: seq 1 holds positions 50..144 (95
    // tokens); copying seq 0's positions 0..49 into it would make 145 > max_tokens.
    let (k3, v3) = (rng.normals(95 * NKV * D), rng.normals(95 * NKV * D));
    assert_eq!(append(&c, 0, 1, &k3, &v3), tq_status::TQ_STATUS_OK);
    assert_eq!(unsafe { tq_cache_seq_rm(c.0, 1, 0, 50) }, tq_status::TQ_STATUS_OK);
    assert_eq!(append(&c, 0, 1, &k3[..50 * NKV * D], &v3[..50 * NKV * D]), tq_status::TQ_STATUS_OK);
    assert_eq!(seq_len(&c, 1), 95);
    assert_eq!(unsafe { tq_cache_seq_cp(c.0, 0, 1, 0, 50) }, tq_status::TQ_STATUS_CAPACITY_EXCEEDED);
    assert_eq!(seq_len(&c, 1), 95);
    // Non-finite input and unknown sequences are rejected before anything changes.
    let mut bad = k2.clone();
    bad[5] = f32::NAN;
    assert_eq!(append(&c, 0, 1, &bad, &v2), tq_status::TQ_STATUS_NON_FINITE);
    assert!(last_error().contains("k[token 0, head 0, element 5]"), "{}", last_error());
    assert_eq!(append(&c, 0, 2, &k2, &v2), tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert_eq!(seq_len(&c, 1), 95);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn load_never_crashes_on_random_or_mutated_bytes(
        random in proptest::collection::vec(any::<u8>(), 0..2048),
        flips in proptest::collection::vec((any::<usize>(), 1u8..=255), 1..8),
        cut in any::<usize>(),
    ) {
        let ctx = context(&ctx_params(true));
        let (c, _, _) = filled_cache(&ctx, 7);
        let valid = save(&c);
        let target = cache(&ctx, 3, 512, 32, 4);
        let mut mutated = valid.clone();
        for (at, x) in flips {
            let i = at % mutated.len();
            mutated[i] ^= x;
        }
        let truncated = valid[..cut % valid.len()].to_vec();
        for bytes in [random, mutated, truncated] {
            let st = unsafe { tq_cache_load(target.0, bytes.as_ptr().cast(), bytes.len()) };
            prop_assert!(matches!(st, tq_status::TQ_STATUS_CORRUPT_DATA | tq_status::TQ_STATUS_INCOMPATIBLE), "status {:?}", st);
            prop_assert_eq!(seq_len(&target, 0), 0);
        }
    }
}

#[test]
fn many_query_attend_matches_the_row_by_row_path() {
    // 20 query tokens × 4 heads per kv head take the tiled path (80 lanes), 3 tokens the row-by-row
    // one (12 lanes). The owned cache places a batch's queries at the last n_q positions, so the last
    // 3 rows of the 20-token attend and the 3-token attend see the same cells, compressed and full
    // precision (window, sinks) merged in one softmax: they must agree to float rounding.
    let ctx = context(&ctx_params(true));
    let mut rng = Rng::new(9);
    let n = 300;
    let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
    let q = rng.normals(20 * NH * D);
    // The first 280 tokens in one append (the centering means come from it), the rest one by one.
    let fill = |c: &Cache, upto: usize| {
        let t = NKV * D;
        assert_eq!(append(c, 1, 0, &k[..280 * t], &v[..280 * t]), tq_status::TQ_STATUS_OK);
        for i in 280..upto {
            assert_eq!(append(c, 1, 0, &k[i * t..(i + 1) * t], &v[i * t..(i + 1) * t]), tq_status::TQ_STATUS_OK);
        }
    };
    for (window, sinks) in [(0u32, 0u32), (64, 4)] {
        let c = cache(&ctx, 1, 512, window, sinks);
        fill(&c, n);
        let tiled = attend(&c, 1, 0, &q);
        let rows = attend(&c, 1, 0, &q[17 * NH * D..]);
        for (a, b) in tiled[17 * NH * D..].iter().zip(&rows) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "window {window}: {a} vs {b}");
        }
        if window == 0 {
            // Every earlier row sees the cells up to its own position (causal): query i of the batch
            // sits at position 280 + i, so it equals a one-query attend (the row-by-row path) over a
            // cache holding the same rows up to there.
            for i in 0..17 {
                let short = cache(&ctx, 1, 512, 0, 0);
                fill(&short, 281 + i);
                let one = attend(&short, 1, 0, &q[i * NH * D..(i + 1) * NH * D]);
                for (a, b) in tiled[i * NH * D..(i + 1) * NH * D].iter().zip(&one) {
                    assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "row {i}: {a} vs {b}");
                }
            }
        }
    }
}

#[test]
fn token_counts_whose_bytes_overflow_are_refused() {
    // n·heads·head_dim fits usize but the byte count does not: the calls must refuse (naming the count)
    // before touching k, v, q or out, and the cache and context stay usable.
    let ctx = context(&ctx_params(true));
    let c = cache(&ctx, 1, 64, 0, 0);
    let huge = usize::MAX / (NKV * D) / 2 + 1;
    let (k, v) = (vec![0.5f32; NKV * D], vec![0.5f32; NKV * D]);
    let st = unsafe { tq_cache_append(c.0, 0, 0, huge, k.as_ptr().cast(), v.as_ptr().cast(), std::ptr::null_mut()) };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT, "{}", last_error());
    assert!(last_error().contains("n_tokens"), "{}", last_error());
    let q = vec![0.5f32; NH * D];
    let mut out = vec![0f32; NH * D];
    let st = unsafe { tq_cache_attend(c.0, 0, 0, q.as_ptr().cast(), usize::MAX / (NH * D) / 2 + 1, 0.125, out.as_mut_ptr().cast(), std::ptr::null_mut()) };
    assert_ne!(st, tq_status::TQ_STATUS_OK);
    assert_eq!(append(&c, 0, 0, &k, &v), tq_status::TQ_STATUS_OK, "{}", last_error());
    assert!(attend(&c, 0, 0, &q).iter().all(|x| x.is_finite()));
}

#[test]
fn save_size_query_and_short_buffers_report_the_size_needed() {
    // The size query is computed without serialising; it equals the bytes a save writes. A buffer one
    // byte short is refused with `written` set to the size needed and the buffer untouched; the saved
    // bytes load back into an equal cache.
    let ctx = context(&ctx_params(true));
    let c = cache(&ctx, 2, 64, 8, 2);
    let mut rng = Rng::new(31);
    for (seq, n) in [(0u32, 20usize), (1, 5)] {
        let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
        for layer in 0..LAYERS as u32 {
            assert_eq!(append(&c, layer, seq, &k, &v), tq_status::TQ_STATUS_OK, "{}", last_error());
        }
    }
    let mut need = 0usize;
    assert_eq!(unsafe { tq_cache_save(c.0, std::ptr::null_mut(), 0, &mut need) }, tq_status::TQ_STATUS_OK);
    let mut buf = vec![0x5Au8; need + 16];
    let mut written = 0usize;
    assert_eq!(unsafe { tq_cache_save(c.0, buf.as_mut_ptr().cast(), need - 1, &mut written) }, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert_eq!(written, need, "a short buffer reports the size needed");
    assert!(buf.iter().all(|&b| b == 0x5A), "a refused save wrote into the buffer");
    written = 0;
    assert_eq!(unsafe { tq_cache_save(c.0, buf.as_mut_ptr().cast(), buf.len(), &mut written) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert_eq!(written, need, "the size query equals the bytes written");
    assert!(buf[need..].iter().all(|&b| b == 0x5A), "nothing written past the saved bytes");
    let other = cache(&ctx, 2, 64, 8, 2);
    assert_eq!(unsafe { tq_cache_load(other.0, buf.as_ptr().cast(), written) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let q = rng.normals(NH * D);
    assert_eq!(attend(&other, 1, 0, &q), attend(&c, 1, 0, &q));
    assert_eq!(seq_len(&other, 1), 5);
}
