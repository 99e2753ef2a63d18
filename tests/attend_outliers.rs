//! Split key rows (params->key_outliers, TurboQuant §4.3's fractional widths) through the C ABI:
//! the channel choice, the row bytes and tq_attend against a float64 softmax over rows dequantized
//! here from the math layer alone (the library must reproduce it to f32 rounding, ≤ 1e-5 relative),
//! on the row-by-row, tiled and split-K paths; the key error against the unsplit widths on keys with
//! outlier channels; the context state; and the refusals.

mod common;

use common::*;
use turboquant::ffi::cache::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;
use turboquant::math::packing::packed_len;
use turboquant::math::quantizer::{MseQuantizer, QuantizerConfig, QuantizerKind, Quantizer, Scratch};
use turboquant::math::rotation::RotationKind;
use turboquant::codec::layout::RowLayout;

const LAYER: u32 = 1;
/// The first append (channel order and centering means) and the second.
const FIRST: usize = 200;

struct Data {
    n_kv: usize,
    d: usize,
    n_cells: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    slots: Vec<i64>,
}

/// Keys with a constant offset per channel (2 + i%3) and 8 channels per head at 4× the spread of the
/// others (different channels per head); values standard normal. Cells in a scrambled order.
fn data(n_kv: usize, d: usize, n_cells: usize, seed: u64) -> Data {
    let mut rng = Rng::new(seed);
    let mut k = rng.normals(n_cells * n_kv * d);
    for (i, x) in k.iter_mut().enumerate() {
        let (h, ch) = ((i / d) % n_kv, i % d);
        let loud = (ch + 3 * h) % (d / 8) == 0;
        *x = *x * if loud { 4.0 } else { 1.0 } + 2.0 + (ch % 3) as f32;
    }
    let v = rng.normals(n_cells * n_kv * d);
    let slots = (0..n_cells as i64).map(|i| (i * 7) % n_cells as i64).collect();
    Data { n_kv, d, n_cells, k, v, slots }
}

fn params(dt: &Data, group: usize, bits: u32, outliers: u32, centering: bool, seed: u64) -> tq_context_params {
    let mut p = tq_context_default_params();
    p.n_layers = 2;
    (p.n_heads, p.n_kv_heads, p.head_dim) = ((dt.n_kv * group) as u32, dt.n_kv as u32, dt.d as u32);
    (p.bits_k, p.bits_v) = (bits, 3);
    p.key_outliers = outliers;
    p.centering = centering;
    p.seed = seed;
    p.n_threads = 2;
    p
}

/// Append the data to layer 1 in two calls; returns the K and V stores.
fn append(ctx: &Ctx, dt: &Data) -> (Vec<u8>, Vec<u8>) {
    let (mut kr, mut vr) = (0, 0);
    assert_eq!(unsafe { tq_context_layer_row_bytes(ctx.0, LAYER, &mut kr, &mut vr) }, tq_status::TQ_STATUS_OK);
    let w = dt.n_kv * dt.d;
    let (mut ks, mut vs) = (vec![0u8; dt.n_cells * kr], vec![0u8; dt.n_cells * vr]);
    for (a, b) in [(0, FIRST), (FIRST, dt.n_cells)] {
        let st = unsafe {
            tq_append_kv(ctx.0, LAYER, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), dt.n_cells, dt.slots[a..].as_ptr(), b - a,
                dt.k[a * w..].as_ptr().cast(), std::ptr::null(), dt.v[a * w..].as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    }
    (ks, vs)
}

/// The channel order the rows must use, written out from the rule in the header: per head, the energy
/// Σ (k − μ)² over the first append's rows 1..FIRST (μ the centering mean or 0), the `c` largest
/// (ties to the lower channel) ascending, then the rest ascending.
fn expected_order(dt: &Data, c: usize, centering: bool) -> Vec<Vec<usize>> {
    let (d, w) = (dt.d, dt.n_kv * dt.d);
    let mu = if centering { key_means(&dt.k[..FIRST * w], FIRST, w) } else { vec![0.0; w] };
    (0..dt.n_kv)
        .map(|h| {
            let e: Vec<f64> = (0..d)
                .map(|ch| (1..FIRST).map(|t| (dt.k[t * w + h * d + ch] as f64 - mu[h * d + ch] as f64).powi(2)).sum())
                .collect();
            let mut idx: Vec<usize> = (0..d).collect();
            idx.sort_by(|&a, &b| e[b].partial_cmp(&e[a]).unwrap().then(a.cmp(&b)));
            let mut hi = idx[..c].to_vec();
            hi.sort();
            let rest: Vec<usize> = (0..d).filter(|ch| !hi.contains(ch)).collect();
            hi.into_iter().chain(rest).collect()
        })
        .collect()
}

/// Rows of the K store dequantized from the math layer: per head the outliers' codes (c channels,
/// bits + 1, rotation stream 2L) then the rest's (bits, stream 2^32 + 2L), each part Hadamard when it
/// and head_dim are powers of two (else dense), two bf16 scales after all codes; the means added back.
fn dequant_split_keys(store: &[u8], dt: &Data, bits: u32, c: usize, seed: u64, order: &[Vec<usize>], mean: Option<&[f32]>) -> Vec<f64> {
    let (d, h) = (dt.d, dt.n_kv);
    let kind = |n: usize| if d.is_power_of_two() && n.is_power_of_two() { RotationKind::Hadamard } else { RotationKind::Dense };
    let hi = MseQuantizer::new(c, bits + 1, kind(c), seed, 2 * LAYER as u64).unwrap();
    let lo = MseQuantizer::new(d - c, bits, kind(d - c), seed, (1u64 << 32) + 2 * LAYER as u64).unwrap();
    let (hb, lb) = (packed_len(c, bits + 1), packed_len(d - c, bits));
    let codes_end = h * (hb + lb);
    let scales_at = codes_end + codes_end % 2;
    let rb = scales_at + 4 * h;
    assert_eq!(store.len(), dt.n_cells * rb, "K row bytes");
    let (mut sh, mut sl) = (Scratch::new(c), Scratch::new(d - c));
    let (mut xh, mut xl) = (vec![0.0f32; c], vec![0.0f32; d - c]);
    let mut out = vec![0.0f64; dt.n_cells * h * d];
    for j in 0..dt.n_cells {
        let row = &store[j * rb..(j + 1) * rb];
        for g in 0..h {
            let s = |at: usize| u16::from_le_bytes([row[at], row[at + 1]]);
            let base = g * (hb + lb);
            hi.decode(&row[base..base + hb], s(scales_at + 2 * g), &mut xh, &mut sh);
            lo.decode(&row[base + hb..base + hb + lb], s(scales_at + 2 * h + 2 * g), &mut xl, &mut sl);
            for (i, &ch) in order[g].iter().enumerate() {
                let x = if i < c { xh[i] } else { xl[i - c] };
                out[(j * h + g) * d + ch] = x as f64 + mean.map_or(0.0, |m| m[g * d + ch] as f64);
            }
        }
    }
    out
}

/// Unsplit value rows from the math layer (stream 2L + 1).
fn dequant_values(store: &[u8], dt: &Data, seed: u64) -> Vec<f64> {
    let value = MseQuantizer::new(dt.d, 3, RotationKind::auto(dt.d), seed, 2 * LAYER as u64 + 1).unwrap();
    let layout = RowLayout { n_kv_heads: dt.n_kv, head_dim: dt.d, mse_bits: 3, qjl: false, split: 0 };
    dequant_rows(store, &layout, dt.n_cells, None, Some(&value), None)
}

/// tq_attend of n_q random queries over every cell (a few hidden per query).
fn attend(ctx: &Ctx, dt: &Data, group: usize, n_q: usize, ks: &[u8], vs: &[u8], seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>, tq_status) {
    let n_heads = dt.n_kv * group;
    let q = Rng::new(seed ^ 0x9e37).normals(n_q * n_heads * dt.d);
    let mut mask = vec![0.0f32; n_q * dt.n_cells];
    for t in 0..n_q {
        for j in (t % 5..dt.n_cells).step_by(11) {
            mask[t * dt.n_cells + j] = f32::NEG_INFINITY;
        }
    }
    let mut out = vec![0.0f32; n_q * n_heads * dt.d];
    let st = unsafe {
        tq_attend(ctx.0, LAYER, q.as_ptr().cast(), n_q, std::ptr::null(), ks.as_ptr().cast(), vs.as_ptr().cast(), dt.n_cells,
            mask.as_ptr().cast(), 0, dt.n_cells, 1.0 / (dt.d as f32).sqrt(), out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    (q, mask, out, st)
}

fn nmse(a: &[f64], dt: &Data) -> f64 {
    // a in cell order against the input keys (token order mapped through the slots).
    let w = dt.n_kv * dt.d;
    let (mut num, mut den) = (0.0, 0.0);
    for (i, &cell) in dt.slots.iter().enumerate() {
        let mu: Vec<f64> = (0..w).map(|e| (2.0 + (e % dt.d % 3) as f64)).collect();
        for e in 0..w {
            let x = dt.k[i * w + e] as f64;
            num += (a[cell as usize * w + e] - x).powi(2);
            den += (x - mu[e]).powi(2);
        }
    }
    num / den
}

#[test]
fn split_rows_decode_to_the_documented_format_and_attend_matches_float64() {
    let mut seed = 11;
    for (d, c) in [(64usize, 16usize), (64, 32), (128, 32), (96, 32)] {
        for bits in [2u32, 3, 4] {
            for centering in [true, false] {
                let dt = data(2, d, 600, seed);
                let group = 3;
                let ctx = context(&params(&dt, group, bits, c as u32, centering, seed));
                let (ks, vs) = append(&ctx, &dt);
                let order = expected_order(&dt, c, centering);
                let w = dt.n_kv * d;
                let mu = key_means(&dt.k[..FIRST * w], FIRST, w);
                let kd = dequant_split_keys(&ks, &dt, bits, c, seed, &order, centering.then_some(mu.as_slice()));
                let vd = dequant_values(&vs, &dt, seed);
                // n_q = 1: row by row (split-K over 600 cells on 2 threads); 24 tokens × 3 heads: the tiled path.
                for n_q in [1usize, 24] {
                    let (q, mask, out, st) = attend(&ctx, &dt, group, n_q, &ks, &vs, seed);
                    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                    let q64: Vec<f64> = q.iter().map(|&x| x as f64).collect();
                    let m64: Vec<f64> = mask.iter().map(|&x| x as f64).collect();
                    let reference = reference_attention(&q64, &kd, &vd, &m64, n_q, dt.n_cells, dt.n_kv * group, dt.n_kv, d, 1.0 / (d as f64).sqrt());
                    let err = max_row_rel_error(&out, &reference, d);
                    assert!(err <= 1e-5, "d={d} C={c} bits={bits} centering={centering} n_q={n_q}: relative error {err:e} against the float64 reference");
                }
                seed += 1;
            }
        }
    }
}

#[test]
fn outlier_channels_lower_the_key_error_between_the_integer_widths() {
    // Keys whose 8 loud channels per head carry most of the energy: at the same base width, splitting
    // off C = 16 channels at b + 1 must cut the key reconstruction error well below the unsplit b (the
    // loud channels land among the outliers) and stay above b + 1 everywhere.
    let (d, c, seed) = (64usize, 16usize, 5u64);
    let dt = data(2, d, 600, seed);
    let w = dt.n_kv * d;
    let mu = key_means(&dt.k[..FIRST * w], FIRST, w);
    for bits in [2u32, 3] {
        let split = {
            let ctx = context(&params(&dt, 2, bits, c as u32, true, seed));
            let (ks, _) = append(&ctx, &dt);
            nmse(&dequant_split_keys(&ks, &dt, bits, c, seed, &expected_order(&dt, c, true), Some(&mu)), &dt)
        };
        let whole = |b: u32| {
            let ctx = context(&params(&dt, 2, b, 0, true, seed));
            let (ks, _) = append(&ctx, &dt);
            let key = Quantizer::new_indexed(QuantizerConfig { dim: d, bits: b, rotation: RotationKind::auto(d), kind: QuantizerKind::Mse, seed }, 2, 1).unwrap();
            let layout = RowLayout { n_kv_heads: 2, head_dim: d, mse_bits: b, qjl: false, split: 0 };
            nmse(&dequant_rows(&ks, &layout, dt.n_cells, Some(&key), None, Some(&mu)), &dt)
        };
        let (lo, hi) = (whole(bits), whole(bits + 1));
        eprintln!("bits {bits}: unsplit {lo:.5}, split C={c} {split:.5}, unsplit b+1 {hi:.5}");
        assert!(split < 0.8 * lo && split > hi, "bits {bits}: split {split} should be below 0.8 × {lo} and above {hi}");
    }
}

#[test]
fn row_bytes_count_both_parts_and_two_scales() {
    for (d, c, bits, n_kv) in [(64usize, 16usize, 3u32, 3usize), (64, 32, 4, 3), (128, 32, 2, 8), (96, 48, 3, 1)] {
        let dt = Data { n_kv, d, n_cells: 0, k: vec![], v: vec![], slots: vec![] };
        let ctx = context(&params(&dt, 1, bits, c as u32, true, 0));
        let (kr, vr) = row_bytes(&ctx);
        let codes = n_kv * (packed_len(c, bits + 1) + packed_len(d - c, bits));
        assert_eq!(kr, codes.next_multiple_of(2) + 4 * n_kv, "d={d} C={c} bits={bits}");
        assert_eq!(vr, n_kv * packed_len(d, 3) + 2 * n_kv);
    }
}

#[test]
fn state_carries_the_channel_order() {
    let (d, c, bits, seed) = (64usize, 16usize, 3u32, 21u64);
    let dt = data(2, d, 300, seed);
    let p = params(&dt, 2, bits, c as u32, true, seed);
    let a = context(&p);
    let (ks, vs) = append(&a, &dt);
    let (_, _, out_a, st) = attend(&a, &dt, 2, 4, &ks, &vs, seed);
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());

    // A context that has not appended has no channel order: attend is refused, naming the reason.
    let b = context(&p);
    let (_, _, _, st) = attend(&b, &dt, 2, 4, &ks, &vs, seed);
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("key_outliers"), "{}", last_error());

    // With a's state it attends a's rows exactly as a does.
    let mut size = 0;
    assert_eq!(unsafe { tq_context_state_size(a.0, &mut size) }, tq_status::TQ_STATUS_OK);
    let mut state = vec![0u8; size];
    assert_eq!(unsafe { tq_context_state_save(a.0, state.as_mut_ptr(), size) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert_eq!(unsafe { tq_context_state_load(b.0, state.as_ptr(), size) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let (_, _, out_b, st) = attend(&b, &dt, 2, 4, &ks, &vs, seed);
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert_eq!(out_a, out_b);

    // The state of a context without outlier channels does not fit (another size), nor the reverse.
    let plain = context(&params(&dt, 2, bits, 0, true, seed));
    let mut plain_size = 0;
    assert_eq!(unsafe { tq_context_state_size(plain.0, &mut plain_size) }, tq_status::TQ_STATUS_OK);
    assert_eq!(plain_size + 2 * (1 + 2 * 2 * d), size, "one order flag and n_kv × head_dim u16 per layer");
    let mut plain_state = vec![0u8; plain_size];
    assert_eq!(unsafe { tq_context_state_save(plain.0, plain_state.as_mut_ptr(), plain_size) }, tq_status::TQ_STATUS_OK);
    assert_ne!(unsafe { tq_context_state_load(b.0, plain_state.as_ptr(), plain_size) }, tq_status::TQ_STATUS_OK);
    // A damaged order (head 0's first channel repeated in place of its first non-outlier, CRC fixed
    // up) is refused as corrupt.
    let mut bad = state.clone();
    let per_layer = 1 + 2 * 2 * d * 4 + 1 + 2 * 2 * d;
    let order_at = 8 + 4 + 8 + per_layer + 1 + 2 * 2 * d * 4 + 1; // layer 1's order, head 0
    assert_eq!(bad[order_at - 1], 1, "layer 1's order is set");
    bad.copy_within(order_at..order_at + 2, order_at + 2 * c);
    let n = bad.len() - 4;
    let crc = crc32fast::hash(&bad[..n]);
    bad[n..].copy_from_slice(&crc.to_le_bytes());
    let fresh = context(&p);
    assert_eq!(unsafe { tq_context_state_load(fresh.0, bad.as_ptr(), size) }, tq_status::TQ_STATUS_CORRUPT_DATA);
    assert!(last_error().contains("order"), "{}", last_error());
}

#[test]
fn bad_outlier_params_are_refused_naming_the_field() {
    let base = params(&Data { n_kv: 2, d: 64, n_cells: 0, k: vec![], v: vec![], slots: vec![] }, 2, 3, 16, true, 0);
    let cases: [(tq_context_params, &str); 4] = [
        (tq_context_params { key_outliers: 8, ..base }, "key_outliers is 8"),
        (tq_context_params { key_outliers: 56, ..base }, "key_outliers is 56"),
        (tq_context_params { key_mode: 1, ..base }, "key_mode"),
        (tq_context_params { bits_k: 8, ..base }, "bits_k"),
    ];
    for (p, needle) in cases {
        let mut out = std::ptr::null_mut();
        assert_eq!(unsafe { tq_context_new(&p, &mut out) }, tq_status::TQ_STATUS_INVALID_ARGUMENT, "{needle}");
        assert!(last_error().contains(needle), "{needle}: {}", last_error());
    }
    // Per-layer K bits of 8 cannot take the outliers' extra bit either.
    let layer_k = [3u32, 8];
    let p = tq_context_params { layer_bits_k: layer_k.as_ptr(), n_layer_bits: 2, ..base };
    let mut out = std::ptr::null_mut();
    assert_ne!(unsafe { tq_context_new(&p, &mut out) }, tq_status::TQ_STATUS_OK);
    assert!(last_error().contains("at most 7"), "{}", last_error());
    // The owned cache does not take split rows.
    let ctx = context(&base);
    let cp = tq_cache_default_params();
    let mut cache = std::ptr::null_mut();
    assert_eq!(unsafe { tq_cache_new(ctx.0, &cp, &mut cache) }, tq_status::TQ_STATUS_UNSUPPORTED);
    assert!(last_error().contains("key_outliers"), "{}", last_error());
}

#[test]
fn params_of_the_previous_size_mean_no_outliers() {
    // A caller built before key_outliers existed passes struct_size = TQ_CONTEXT_PARAMS_SIZE_V2.
    let mut p = tq_context_default_params();
    p.key_outliers = 16; // beyond the old size: must not be read
    assert!(TQ_CONTEXT_PARAMS_SIZE_V2 <= std::mem::offset_of!(tq_context_params, key_outliers));
    let old = params_prefix(&p, TQ_CONTEXT_PARAMS_SIZE_V2);
    let mut out = std::ptr::null_mut();
    assert_eq!(unsafe { tq_context_new(old.as_ptr().cast(), &mut out) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let ctx = Ctx(out);
    assert_eq!(row_bytes(&ctx), (8 * 66, 8 * 66));
}
