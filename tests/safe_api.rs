//! The safe Rust API (`Codec::append`/`attend`, `cache::handle::Cache`) is a second entrance to the
//! same engine as the C API: its rows and outputs must equal the C API's bit for bit (tolerance 0;
//! tests/attend.rs and tests/cache.rs check the C API against float64 references), and every size it
//! is given is checked before anything is written.

mod common;

use common::*;
use turboquant::backend::BackendChoice;
use turboquant::cache::CacheParams;
use turboquant::cache::handle::Cache;
use turboquant::codec::{Codec, Dtype, HostMask, HostTensor, KvConfig};
use turboquant::error::ErrorKind;
use turboquant::ffi::cache::*;
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;
use turboquant::math::quantizer::QuantizerKind;
use turboquant::math::rotation::RotationKind;

const D: usize = 64;
const NKV: usize = 2;
const NH: usize = 4;

fn params() -> tq_context_params {
    let mut p = tq_context_default_params();
    p.n_layers = 2;
    p.n_heads = NH as u32;
    p.n_kv_heads = NKV as u32;
    p.head_dim = D as u32;
    p.seed = 7;
    p.centering = true;
    p.center_values = true;
    p.n_threads = 2;
    p
}

fn codec() -> Codec {
    let config = KvConfig {
        n_layers: 2,
        n_heads: NH,
        n_kv_heads: NKV,
        head_dim: D,
        bits_k: 4,
        bits_v: 4,
        rotation: RotationKind::Hadamard,
        key_mode: QuantizerKind::Mse,
        seed: 7,
        centering: true, center_values: true, key_outliers: 0,
    };
    Codec::new(config, Dtype::F32, BackendChoice::Cpu { threads: 2 }).expect("codec")
}

#[test]
fn slot_mode_rows_and_attention_equal_the_c_api() {
    let (n_cells, n, n_q) = (40usize, 33usize, 3usize);
    let mut rng = Rng::new(11);
    let k = rng.normals(n * NKV * D);
    let v = rng.normals(n * NKV * D);
    let q = rng.normals(n_q * NH * D);
    let slots: Vec<i64> = (0..n as i64).map(|i| (i * 7) % n_cells as i64).collect();
    let mask: Vec<f32> = (0..n_q * n_cells).map(|i| if (i % n_cells) < n && i % 5 != 0 { 0.0 } else { f32::NEG_INFINITY }).collect();

    let ctx = context(&params());
    let (kr, vr) = row_bytes(&ctx);
    let (mut ck, mut cv) = (vec![0u8; n_cells * kr], vec![0u8; n_cells * vr]);
    let st = unsafe {
        tq_append_kv(ctx.0, 1, ck.as_mut_ptr().cast(), cv.as_mut_ptr().cast(), n_cells, slots.as_ptr(), n, k.as_ptr().cast(),
            std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut c_out = vec![0f32; n_q * NH * D];
    let st = unsafe {
        tq_attend(ctx.0, 1, q.as_ptr().cast(), n_q, std::ptr::null(), ck.as_ptr().cast(), cv.as_ptr().cast(), n_cells,
            mask.as_ptr().cast(), 0, n_cells, 0.125, c_out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());

    let c = codec();
    assert_eq!(c.row_bytes(), (kr, vr));
    let (mut sk, mut sv) = (vec![0u8; n_cells * kr], vec![0u8; n_cells * vr]);
    c.append(1, &mut sk, &mut sv, &slots, HostTensor::packed(&k), HostTensor::packed(&v)).expect("append");
    assert!(sk == ck && sv == cv, "safe API rows differ from the C API's");
    let mut s_out = vec![0f32; n_q * NH * D];
    c.attend(1, HostTensor::packed(&q), n_q, &sk, &sv, Some(HostMask::new(&mask, n_cells)), 0.125, &mut s_out).expect("attend");
    assert!(s_out.iter().zip(&c_out).all(|(a, b)| a.to_bits() == b.to_bits()), "safe attend differs from tq_attend");
    assert!(s_out.iter().any(|x| *x != 0.0), "attention output is all zero");
}

#[test]
fn safe_api_rejects_bad_sizes_before_writing() {
    let c = codec();
    let (kr, vr) = c.row_bytes();
    let (mut sk, mut sv) = (vec![0xAAu8; 4 * kr], vec![0xAAu8; 4 * vr]);
    let k = vec![1.0f32; 2 * NKV * D];
    let err = |r: turboquant::error::Result<()>| r.expect_err("must fail");
    // k too short for two tokens.
    let e = err(c.append(0, &mut sk, &mut sv, &[0, 1], HostTensor::packed(&k[..NKV * D]), HostTensor::packed(&k)));
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    // Duplicate slots.
    let e = err(c.append(0, &mut sk, &mut sv, &[1, 1], HostTensor::packed(&k), HostTensor::packed(&k)));
    assert!(e.kind == ErrorKind::InvalidArgument && e.message.contains("slots[1]"), "{e}");
    // Stores that disagree on the number of cells.
    let e = err(c.append(0, &mut sk, &mut sv[..3 * vr], &[0, 1], HostTensor::packed(&k), HostTensor::packed(&k)));
    assert!(e.message.contains("v_store"), "{e}");
    // Wrong element type.
    let k16 = vec![half::f16::ONE; 2 * NKV * D];
    let e = err(c.append(0, &mut sk, &mut sv, &[0, 1], HostTensor::packed(&k16), HostTensor::packed(&k16)));
    assert!(e.message.contains("dtype"), "{e}");
    // Non-finite input.
    let mut bad = k.clone();
    bad[NKV * D + 3] = f32::NAN;
    let e = err(c.append(0, &mut sk, &mut sv, &[0, 1], HostTensor::packed(&k), HostTensor::packed(&bad)));
    assert_eq!(e.kind, ErrorKind::NonFinite, "{e}");
    assert!(sk.iter().chain(&sv).all(|&b| b == 0xAA), "a failed append wrote rows");
    // Layer out of range; out of the wrong size.
    let e = err(c.append(5, &mut sk, &mut sv, &[0], HostTensor::packed(&k[..NKV * D]), HostTensor::packed(&k[..NKV * D])));
    assert!(e.message.contains("layer is 5"), "{e}");
    let q = vec![0.5f32; NH * D];
    let mut out = vec![0f32; NH * D - 1];
    let e = err(c.attend(0, HostTensor::packed(&q), 1, &sk, &sv, None, 1.0, &mut out));
    assert!(e.message.contains("out holds"), "{e}");
}

#[test]
fn owned_cache_handle_equals_the_c_api() {
    let (n, n_q) = (20usize, 2usize);
    let mut rng = Rng::new(5);
    let k = rng.normals(n * NKV * D);
    let v = rng.normals(n * NKV * D);
    let q = rng.normals(n_q * NH * D);
    let mut p = tq_cache_default_params();
    p.max_tokens = 64;
    p.residual_window = 6;
    p.n_sink = 2;

    let ctx = context(&params());
    let mut cache = std::ptr::null_mut();
    assert_eq!(unsafe { tq_cache_new(ctx.0, &p, &mut cache) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let st = unsafe { tq_cache_append(cache, 1, 0, n, k.as_ptr().cast(), v.as_ptr().cast(), std::ptr::null_mut()) };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut c_out = vec![0f32; n_q * NH * D];
    let st = unsafe { tq_cache_attend(cache, 1, 0, q.as_ptr().cast(), n_q, 0.125, c_out.as_mut_ptr().cast(), std::ptr::null_mut()) };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut c_len = 0usize;
    assert_eq!(unsafe { tq_cache_seq_len(cache, 0, &mut c_len) }, tq_status::TQ_STATUS_OK);

    let c = codec();
    let params = CacheParams { max_seqs: 1, max_tokens: 64, residual_window: 6, n_sink: 2 };
    let mut h = Cache::new(&c, params).expect("cache");
    h.append(1, 0, n, &k, &v).expect("append");
    let mut s_out = vec![0f32; n_q * NH * D];
    h.attend(1, 0, &q, n_q, 0.125, &mut s_out).expect("attend");
    assert!(s_out.iter().zip(&c_out).all(|(a, b)| a.to_bits() == b.to_bits()), "Cache::attend differs from tq_cache_attend");
    // Layer 1 holds n tokens; seq_len counts layer 0, empty here, as tq_cache_seq_len does; after an
    // append to layer 0 both count its tokens.
    assert_eq!(h.seq_len(0).unwrap(), c_len);
    let st = unsafe { tq_cache_append(cache, 0, 0, 5, k.as_ptr().cast(), v.as_ptr().cast(), std::ptr::null_mut()) };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    h.append(0, 0, 5, &k[..5 * NKV * D], &v[..5 * NKV * D]).expect("append to layer 0");
    assert_eq!(unsafe { tq_cache_seq_len(cache, 0, &mut c_len) }, tq_status::TQ_STATUS_OK);
    assert_eq!((h.seq_len(0).unwrap(), c_len), (5, 5));
    let e = h.append(1, 0, 100, &vec![0f32; 100 * NKV * D], &vec![0f32; 100 * NKV * D]).expect_err("over max_tokens");
    assert_eq!(e.kind, ErrorKind::CapacityExceeded, "{e}");
    unsafe { tq_cache_free(cache) };
}

#[test]
fn per_layer_bits_size_the_stores_of_their_layer() {
    // Layer 0 at 2/2 bits, layer 1 at 8/8: each layer's stores are n_cells of its own rows. Stores
    // sized for layer 1 append and attend there exactly like the C API; stores sized for layer 0 are
    // refused for layer 1 (they would be overrun), naming the row size, and nothing is written.
    let mut config = codec().kv().config.clone();
    config.centering = false;
    config.center_values = false;
    let bits = [(2u32, 2u32), (8, 8)];
    let c = Codec::with_layer_bits(config, Some(&bits), Dtype::F32, BackendChoice::Cpu { threads: 2 }).expect("codec");
    let ((k0, v0), (k1, v1)) = (c.layer_row_bytes(0), c.layer_row_bytes(1));
    assert!(k1 > k0 && v1 > v0, "8-bit rows are longer than 2-bit ones");
    let n = 6usize;
    let mut rng = Rng::new(21);
    let (k, v) = (rng.normals(n * NKV * D), rng.normals(n * NKV * D));
    let slots: Vec<i64> = (0..n as i64).rev().collect();
    let (mut small_k, mut small_v) = (vec![0xAAu8; n * k0], vec![0xAAu8; n * v0]);
    let e = c.append(1, &mut small_k, &mut small_v, &slots, HostTensor::packed(&k), HostTensor::packed(&v)).expect_err("layer-0-sized stores for layer 1");
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(small_k.iter().chain(&small_v).all(|&b| b == 0xAA), "a refused append wrote rows");
    let (mut sk, mut sv) = (vec![0u8; n * k1], vec![0u8; n * v1]);
    c.append(1, &mut sk, &mut sv, &slots, HostTensor::packed(&k), HostTensor::packed(&v)).expect("append to layer 1");
    // The C API with the same per-layer bits writes the same rows and attends the same.
    let mut p = params();
    p.centering = false;
    p.center_values = false;
    let (lk, lv): (Vec<u32>, Vec<u32>) = bits.iter().copied().unzip();
    (p.layer_bits_k, p.layer_bits_v, p.n_layer_bits) = (lk.as_ptr(), lv.as_ptr(), 2);
    let ctx = context(&p);
    let (mut ck, mut cv) = (vec![0u8; n * k1], vec![0u8; n * v1]);
    let st = unsafe {
        tq_append_kv(ctx.0, 1, ck.as_mut_ptr().cast(), cv.as_mut_ptr().cast(), n, slots.as_ptr(), n, k.as_ptr().cast(),
            std::ptr::null(), v.as_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert!(sk == ck && sv == cv, "safe API rows differ from the C API's at per-layer bits");
    let q = rng.normals(NH * D);
    let mut s_out = vec![0f32; NH * D];
    c.attend(1, HostTensor::packed(&q), 1, &sk, &sv, None, 0.125, &mut s_out).expect("attend layer 1");
    let mut c_out = vec![0f32; NH * D];
    let st = unsafe {
        tq_attend(ctx.0, 1, q.as_ptr().cast(), 1, std::ptr::null(), ck.as_ptr().cast(), cv.as_ptr().cast(), n,
            std::ptr::null(), 0, 0, 0.125, c_out.as_mut_ptr().cast(), std::ptr::null(), std::ptr::null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    assert!(s_out.iter().zip(&c_out).all(|(a, b)| a.to_bits() == b.to_bits()), "safe attend differs from tq_attend");
    let e = c.attend(1, HostTensor::packed(&q), 1, &small_k, &small_v, None, 0.125, &mut s_out).expect_err("layer-0-sized stores");
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
}
