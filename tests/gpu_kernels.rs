//! GPU tests of the CUDA backend (run on an H100/H200; on a machine without a GPU each test prints a
//! loud "SKIPPED" line and does not run — a skip is not a pass):
//! * appended rows are byte-identical to the CPU backend's for the same input;
//! * tq_attend / tq_attend_batch agree with the CPU backend within 1e-3 relative (f16 and f32 I/O;
//!   bf16 4e-3) for head_dim 64/96/128/256, GQA 1/3/4/8, n_q 1 and 128, ragged lengths, several
//!   sequences, masks, strided queries;
//! * full-precision (residual-window) rows merge into the same softmax as on the CPU;
//! * append + attend captured in a CUDA graph and replayed give the eager results;
//! * centering (means computed on the device by the first append) matches the CPU: rows, state, attention,
//!   and the means stay frozen when a captured first append is replayed;
//! * errors name their argument.
//! TQ_GPU_QUICK=1 runs a reduced set (for compute-sanitizer).
#![cfg(feature = "cuda")]

mod gpu;

use std::ffi::c_void;
use std::ptr::{null, null_mut};

use gpu::*;
use turboquant::backend::cpu::attend::{AttendJob, AttendScratch, FullRows, MaskSource, run_items};
use turboquant::backend::cpu::encode::HeadTensor;
use turboquant::backend::cuda::{CudaBackend, DeviceAttend, DeviceCausal, DeviceFullRows, Stores};
use turboquant::codec::{Dtype, KvCodec, KvConfig, Strides};
use turboquant::ffi::context::*;
use turboquant::ffi::tq_status;
use turboquant::math::quantizer::QuantizerKind;
use turboquant::math::rotation::RotationKind;

const F32: u32 = 0;
const F16: u32 = 1;
const BF16: u32 = 2;

#[allow(clippy::too_many_arguments)]
fn params(n_heads: u32, n_kv: u32, d: u32, bk: u32, bv: u32, rotation: u32, dtype: u32, cuda: bool) -> tq_context_params {
    let mut p = tq_context_default_params();
    p.n_layers = 2;
    p.n_heads = n_heads;
    p.n_kv_heads = n_kv;
    p.head_dim = d;
    p.bits_k = bk;
    p.bits_v = bv;
    p.rotation = rotation;
    p.dtype = dtype;
    p.backend = cuda as u32;
    p.seed = 1234;
    p.max_batch = 1024;
    p
}

fn to_dtype_bytes(x: &[f32], dtype: u32) -> Vec<u8> {
    match dtype {
        F32 => x.iter().flat_map(|v| v.to_le_bytes()).collect(),
        F16 => x.iter().flat_map(|v| half::f16::from_f32(*v).to_bits().to_le_bytes()).collect(),
        _ => x.iter().flat_map(|v| half::bf16::from_f32(*v).to_bits().to_le_bytes()).collect(),
    }
}

/// The inverse of `to_dtype_bytes`.
fn from_dtype_bytes(x: &[u8], dtype: u32) -> Vec<f32> {
    match dtype {
        F32 => x.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect(),
        F16 => x.chunks_exact(2).map(|c| half::f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
        _ => x.chunks_exact(2).map(|c| half::bf16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()).collect(),
    }
}

#[test]
fn cuda_rows_equal_cpu_rows() {
    if !gpu_or_skip("cuda_rows_equal_cpu_rows") {
        return;
    }
    let variants: Vec<(u32, u32, u32, u32)> = if quick() {
        vec![(128, 4, 4, 2)]
    } else {
        vec![
            (64, 4, 4, 2), (128, 4, 4, 2), (256, 4, 4, 2), (128, 3, 3, 2), (128, 2, 2, 2), (128, 1, 1, 2),
            (128, 8, 8, 2), (128, 5, 5, 2), (128, 4, 2, 2), (64, 3, 3, 2), (96, 4, 4, 1), (128, 4, 4, 1), (32, 3, 1, 2),
        ]
    };
    let dtypes = if quick() { vec![F16] } else { vec![F32, F16, BF16] };
    let (n_kv, n_tokens, n_cells) = (3usize, 67usize, 80usize);
    let mut rows_checked = 0;
    for &(d, bk, bv, rot) in &variants {
        for &dtype in &dtypes {
            let d_us = d as usize;
            let esz = if dtype == F32 { 4 } else { 2 };
            let cpu = context(&params(6, n_kv as u32, d, bk, bv, rot, dtype, false));
            let gpu = context(&params(6, n_kv as u32, d, bk, bv, rot, dtype, true));
            let (kr, vr) = row_bytes(&cpu);
            assert_eq!((kr, vr), row_bytes(&gpu));
            let mut rng = Rng::new((d * 100 + bk * 10 + bv + dtype * 1000) as u64);
            // Strided input: padding between heads and tokens; varied magnitudes, a zero vector.
            let head_stride = (d_us + 4) * esz;
            let token_stride = n_kv * head_stride + 16;
            let strides = tq_strides { token: token_stride, head: head_stride };
            let make = |rng: &mut Rng| -> Vec<u8> {
                let mut buf = vec![0u8; n_tokens * token_stride];
                for t in 0..n_tokens {
                    let mag = 10f64.powf(rng.uniform() * 4.0 - 2.0) as f32;
                    for h in 0..n_kv {
                        let mut x: Vec<f32> = rng.normals(d_us).iter().map(|v| v * mag).collect();
                        if t == 5 {
                            x.iter_mut().for_each(|v| *v = 0.0);
                        }
                        if t == 6 {
                            x[3] += 40.0 * mag; // an outlier coordinate
                        }
                        let bytes = to_dtype_bytes(&x, dtype);
                        let o = t * token_stride + h * head_stride;
                        buf[o..o + bytes.len()].copy_from_slice(&bytes);
                    }
                }
                buf
            };
            let (k_in, v_in) = (make(&mut rng), make(&mut rng));
            let slots: Vec<i64> = (0..n_tokens as i64).map(|i| (i * 7 + 3) % n_cells as i64).collect();
            let mut k_cpu = vec![0xABu8; n_cells * kr];
            let mut v_cpu = vec![0xABu8; n_cells * vr];
            for layer in 0..2u32 {
                let st = unsafe {
                    tq_append_kv(cpu.0, layer, k_cpu.as_mut_ptr().cast(), v_cpu.as_mut_ptr().cast(), n_cells, slots.as_ptr(),
                        n_tokens, k_in.as_ptr().cast(), &strides, v_in.as_ptr().cast(), &strides, null_mut())
                };
                assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                let (kd, vd) = (Dev::filled(n_cells * kr, 0xAB), Dev::filled(n_cells * vr, 0xAB));
                let (kin, vin, sd) = (Dev::from(&k_in), Dev::from(&v_in), Dev::from(&slots));
                let st = unsafe {
                    tq_append_kv(gpu.0, layer, kd.void(), vd.void(), n_cells, sd.ptr as *const i64, n_tokens,
                        kin.void(), &strides, vin.void(), &strides, null_mut())
                };
                assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
                let (k_gpu, v_gpu): (Vec<u8>, Vec<u8>) = (kd.read(n_cells * kr), vd.read(n_cells * vr));
                for (name, a, b, rb) in [("K", &k_cpu, &k_gpu, kr), ("V", &v_cpu, &v_gpu, vr)] {
                    if let Some(i) = a.iter().zip(b.iter()).position(|(x, y)| x != y) {
                        panic!(
                            "d={d} bits=({bk},{bv}) rotation={rot} dtype={dtype} layer {layer}: {name} rows differ first at cell {} byte {} (cpu {:#04x}, cuda {:#04x})",
                            i / rb, i % rb, a[i], b[i]
                        );
                    }
                }
                rows_checked += 2 * n_tokens * n_kv;
            }
        }
    }
    println!("cuda_rows_equal_cpu_rows: {rows_checked} head vectors over {} variants x {} dtypes: byte-identical", variants.len(), dtypes.len());
}

struct AttendCase {
    d: u32,
    n_heads: u32,
    n_kv: u32,
    bits: (u32, u32),
    rotation: u32,
    n_q: usize,
    lens: Vec<usize>,
    /// Query/output dtype (F32, F16, BF16).
    dtype: u32,
    /// Extra elements after each query head (strided queries when > 0).
    q_pad: usize,
    /// The mask passed to both backends.
    mask: MaskKind,
}

/// Masks of an attend case.
#[derive(Clone, Copy, Debug, PartialEq)]
enum MaskKind {
    /// Random additive values, ~15% -inf; the last sequence's first query sees nothing.
    Random,
    /// No mask (NULL).
    None,
    /// Causal 0/-inf: query i of a sequence of len cells sees cells j <= len - n_q + i (whole visible
    /// tiles, diagonal tiles, and rows that see nothing when len < n_q).
    Causal,
}

impl AttendCase {
    fn new(d: u32, n_heads: u32, n_kv: u32, bits: (u32, u32), rotation: u32, n_q: usize, lens: Vec<usize>) -> Self {
        AttendCase { d, n_heads, n_kv, bits, rotation, n_q, lens, dtype: F16, q_pad: 0, mask: MaskKind::Random }
    }
}

/// Rows written by the CPU backend (host), the same rows on the device, and CPU attention outputs.
fn run_attend_case(c: &AttendCase) -> (f64, f64) {
    let (d, hq, hkv) = (c.d as usize, c.n_heads as usize, c.n_kv as usize);
    let cpu = context(&params(c.n_heads, c.n_kv, c.d, c.bits.0, c.bits.1, c.rotation, c.dtype, false));
    let gpu = context(&params(c.n_heads, c.n_kv, c.d, c.bits.0, c.bits.1, c.rotation, c.dtype, true));
    let esz = if c.dtype == F32 { 4 } else { 2 };
    let (kr, vr) = row_bytes(&cpu);
    let mut rng = Rng::new((d * 7 + hq * 3 + c.n_q + c.lens.len()) as u64);
    let n_seqs = c.lens.len();
    let max_cells = *c.lens.iter().max().unwrap();
    let scale = 1.0 / (d as f32).sqrt();
    let layer = 1u32;
    // Keys with a shared offset direction (realistic, peaked softmax); queries aligned with it.
    let offset: Vec<f32> = rng.normals(d).iter().map(|v| v * 0.7).collect();
    let mut stores = Vec::new();
    let mut k_dev = Vec::new();
    let mut v_dev = Vec::new();
    for &len in &c.lens {
        let mut kx = rng.normals(len * hkv * d);
        for (i, v) in kx.iter_mut().enumerate() {
            *v += offset[i % d];
        }
        let vx = rng.normals(len * hkv * d);
        let (kb, vb) = (to_dtype_bytes(&kx, c.dtype), to_dtype_bytes(&vx, c.dtype));
        let slots: Vec<i64> = (0..len as i64).collect();
        let mut ks = vec![0u8; len.max(1) * kr];
        let mut vs = vec![0u8; len.max(1) * vr];
        if len > 0 {
            let st = unsafe {
                tq_append_kv(cpu.0, layer, ks.as_mut_ptr().cast(), vs.as_mut_ptr().cast(), len, slots.as_ptr(), len,
                    kb.as_ptr().cast(), null(), vb.as_ptr().cast(), null(), null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        }
        k_dev.push(Dev::from(&ks));
        v_dev.push(Dev::from(&vs));
        stores.push((ks, vs));
    }
    // Queries: head h of token i at element (i*hq + h)*(d + q_pad); the padding holds NaN (never read).
    let qh = d + c.q_pad;
    let qx: Vec<f32> = (0..n_seqs * c.n_q * hq * qh)
        .map(|i| if i % qh < d { rng.normal() as f32 * 1.5 + offset[i % qh] } else { f32::NAN })
        .collect();
    let qb = to_dtype_bytes(&qx, c.dtype);
    let q_strides = tq_strides { token: hq * qh * esz, head: qh * esz };
    let q_seq_bytes = c.n_q * hq * qh * esz;
    // Masks [seq][n_q][max_cells] f32: random additive values, ~15% -inf; the last sequence's first
    // query sees nothing (zero output).
    let mut mask = vec![0.0f32; n_seqs * c.n_q * max_cells];
    for s in 0..n_seqs {
        for i in 0..c.n_q {
            for j in 0..max_cells {
                let u = rng.uniform();
                mask[(s * c.n_q + i) * max_cells + j] = match c.mask {
                    MaskKind::Random if u < 0.15 || (s == n_seqs - 1 && i == 0) => f32::NEG_INFINITY,
                    MaskKind::Random => (u as f32 - 0.5) * 2.0,
                    MaskKind::Causal if j as i64 > c.lens[s] as i64 - c.n_q as i64 + i as i64 => f32::NEG_INFINITY,
                    _ => 0.0,
                };
            }
        }
    }
    let no_mask = c.mask == MaskKind::None;
    let per_seq = c.n_q * hq * d;
    // CPU reference, per sequence.
    let mut out_cpu = vec![0u8; n_seqs * per_seq * esz];
    for s in 0..n_seqs {
        let (ks, vs) = &stores[s];
        let st = unsafe {
            tq_attend(cpu.0, layer, qb[s * q_seq_bytes..].as_ptr().cast(), c.n_q, &q_strides, ks.as_ptr().cast(),
                vs.as_ptr().cast(), c.lens[s], if no_mask { null() } else { mask[s * c.n_q * max_cells..].as_ptr().cast() }, F32,
                if no_mask { 0 } else { max_cells }, scale,
                out_cpu[s * per_seq * esz..].as_mut_ptr().cast(), null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    }
    let out_cpu = from_dtype_bytes(&out_cpu, c.dtype);
    let qd = Dev::from(&qb);
    let md = Dev::from(&mask);
    // CUDA, one call per sequence (tq_attend); output poisoned with NaN.
    let od = Dev::filled(n_seqs * per_seq * esz, 0xFF);
    for s in 0..n_seqs {
        let st = unsafe {
            tq_attend(gpu.0, layer, (qd.ptr + (s * q_seq_bytes) as u64) as *const c_void, c.n_q, &q_strides, k_dev[s].void(),
                v_dev[s].void(), c.lens[s], if no_mask { null() } else { (md.ptr + (s * c.n_q * max_cells * 4) as u64) as *const c_void },
                F32, if no_mask { 0 } else { max_cells },
                scale, (od.ptr + (s * per_seq * esz) as u64) as *mut c_void, null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    }
    let out_single = from_dtype_bytes(&od.read::<u8>(n_seqs * per_seq * esz), c.dtype);
    // CUDA, all sequences in one tq_attend_batch.
    let kp: Vec<u64> = k_dev.iter().map(|b| b.ptr).collect();
    let vp: Vec<u64> = v_dev.iter().map(|b| b.ptr).collect();
    let lens: Vec<i64> = c.lens.iter().map(|&l| l as i64).collect();
    let (kpd, vpd, ld) = (Dev::from(&kp), Dev::from(&vp), Dev::from(&lens));
    let ob = Dev::filled(n_seqs * per_seq * esz, 0xFF);
    let st = unsafe {
        tq_attend_batch(gpu.0, layer, n_seqs, qd.void(), c.n_q, &q_strides, q_seq_bytes, kpd.ptr as *const *const c_void,
            vpd.ptr as *const *const c_void, ld.ptr as *const i64, max_cells, if no_mask { null() } else { md.void() }, F32,
            if no_mask { 0 } else { max_cells }, if no_mask { 0 } else { c.n_q * max_cells },
            scale, ob.void(), null(), per_seq * esz, null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let out_batch = from_dtype_bytes(&ob.read::<u8>(n_seqs * per_seq * esz), c.dtype);
    // The fully masked query row is exactly zero on both backends.
    let s = n_seqs - 1;
    for h in 0..if c.mask == MaskKind::Random { hq } else { 0 } {
        let o = s * per_seq + h * d;
        assert!(out_cpu[o..o + d].iter().all(|&v| v == 0.0));
        assert!(out_single[o..o + d].iter().all(|&v| v == 0.0), "masked row not zero");
        assert!(out_batch[o..o + d].iter().all(|&v| v == 0.0), "masked row not zero (batch call)");
    }
    let (t1, w1) = rel_errors(&out_single, &out_cpu, d);
    let (t2, w2) = rel_errors(&out_batch, &out_cpu, d);
    println!(
        "attend d={} heads={}/{} bits={:?} n_q={} lens={:?} dtype={} q_pad={} mask={:?}: rel err single {t1:.2e} (worst row {w1:.2e}), batch {t2:.2e} (worst row {w2:.2e})",
        c.d, c.n_heads, c.n_kv, c.bits, c.n_q, c.lens, c.dtype, c.q_pad, c.mask
    );
    (t1.max(t2), w1.max(w2))
}

#[test]
fn cuda_attend_matches_cpu() {
    if !gpu_or_skip("cuda_attend_matches_cpu") {
        return;
    }
    let mut cases = Vec::new();
    let dims: &[u32] = if quick() { &[128] } else { &[64, 128, 256] };
    let groups: &[(u32, u32)] = if quick() { &[(16, 4)] } else { &[(4, 4), (16, 4), (16, 2)] };
    for &d in dims {
        for &(h, kv) in groups {
            for n_q in [1usize, 128] {
                let lens = match (n_q, quick()) {
                    (1, false) => vec![1, 37, 300, 2100],
                    (1, true) => vec![1, 37, 300],
                    (_, false) => vec![5, 700],
                    (_, true) => vec![5, 130],
                };
                cases.push(AttendCase::new(d, h, kv, (4, 4), 2, n_q, lens));
            }
        }
    }
    // 8 kv heads with 16-byte rows and 4 kv heads with 8-byte rows: the staged (cp.async) decode kernels.
    for (h, kv) in [(32u32, 8u32), (32, 4)] {
        for n_q in [1usize, 2] {
            let lens = if quick() { vec![1, 45, 300] } else { vec![1, 45, 300, 3000] };
            cases.push(AttendCase::new(128, h, kv, (4, 4), 2, n_q, lens));
        }
    }
    if !quick() {
        for bits in [(3, 3), (2, 2), (4, 2), (8, 8), (1, 1)] {
            cases.push(AttendCase::new(128, 32, 8, bits, 2, 1, vec![17, 1000]));
        }
        cases.push(AttendCase::new(96, 12, 3, (4, 4), 1, 1, vec![33, 400]));
        cases.push(AttendCase::new(96, 12, 3, (4, 4), 1, 128, vec![200]));
        cases.push(AttendCase::new(64, 9, 3, (3, 3), 2, 2, vec![3, 900]));
    }
    // Prefill (more query columns than decode takes): several tiles and splits, partial row blocks
    // (40 and 50 tokens), GQA 3 (row blocks that split a token's heads), no mask (every whole tile
    // without visibility terms), causal 0/-inf (whole tiles plus diagonal ones) and random masks.
    let prefill_masks = [MaskKind::None, MaskKind::Causal, MaskKind::Random];
    for mask in prefill_masks {
        cases.push(AttendCase { mask, ..AttendCase::new(128, 32, 8, (4, 4), 2, 64, vec![3000, 777]) });
        if !quick() {
            cases.push(AttendCase { mask, ..AttendCase::new(64, 9, 3, (4, 4), 2, 50, vec![2100, 30]) });
        }
    }
    if !quick() {
        for bits in [(3, 3), (2, 2), (4, 2), (8, 8), (1, 1), (5, 3)] {
            cases.push(AttendCase { mask: MaskKind::Causal, ..AttendCase::new(128, 32, 8, bits, 2, 40, vec![1500]) });
        }
        cases.push(AttendCase { mask: MaskKind::None, ..AttendCase::new(256, 16, 4, (4, 4), 2, 16, vec![900]) });
        cases.push(AttendCase { mask: MaskKind::Causal, ..AttendCase::new(256, 16, 4, (3, 3), 2, 40, vec![1300]) });
        cases.push(AttendCase { mask: MaskKind::None, ..AttendCase::new(96, 12, 3, (4, 4), 1, 128, vec![640]) });
        cases.push(AttendCase { mask: MaskKind::Causal, ..AttendCase::new(32, 8, 8, (4, 4), 2, 200, vec![1000]) });
    }
    // f32 and bf16 queries/outputs, strided (padded) query heads; Hadamard (d 128) and dense (d 96)
    // rotations, both on the fast decode kernel (8 kv heads: 16-byte rows).
    for (dtype, rotation, q_pad) in [(F32, 2u32, 0usize), (BF16, 2, 0), (F16, 2, 8), (F32, 1, 4)] {
        let d = if rotation == 1 { 96 } else { 128 };
        for n_q in [1usize, 2] {
            cases.push(AttendCase { dtype, q_pad, ..AttendCase::new(d, 32, 8, (4, 4), rotation, n_q, vec![7, 300, 1500]) });
        }
    }
    // Tolerance: 1e-3 relative for f16 and f32 I/O; bf16 outputs carry 8 significant bits, so two
    // backends a few 1e-4 apart round to neighbouring bf16 values (2^-8 apart) on some elements: 4e-3.
    // Single rows (a query head's output): 3e-3 for f16/f32 I/O, 6e-3 for bf16 — about twice the worst
    // rows measured on H100/H200 (1.78e-3 and 2.72e-3, bench/gpu/results/*gpu_tests*.log), so that one
    // wrong row among thousands cannot hide in the tensor's error.
    let mut worst_total = 0.0f64;
    let mut worst_row = 0.0f64;
    let mut worst_bf16 = 0.0f64;
    let mut worst_row_bf16 = 0.0f64;
    for c in &cases {
        let (t, w) = run_attend_case(c);
        if c.dtype == BF16 {
            worst_bf16 = worst_bf16.max(t);
            worst_row_bf16 = worst_row_bf16.max(w);
        } else {
            worst_total = worst_total.max(t);
            worst_row = worst_row.max(w);
        }
    }
    println!(
        "cuda_attend_matches_cpu: {} cases, worst tensor rel err {worst_total:.2e} (f16/f32 I/O), worst row {worst_row:.2e}; bf16 I/O {worst_bf16:.2e}",
        cases.len()
    );
    assert!(worst_total <= 1e-3, "CUDA attend differs from CPU attend by {worst_total:.2e} (> 1e-3)");
    assert!(worst_bf16 <= 4e-3, "CUDA attend (bf16 I/O) differs from CPU attend by {worst_bf16:.2e} (> 4e-3)");
    assert!(worst_row <= 3e-3, "a CUDA attend output row differs from the CPU's by {worst_row:.2e} (> 3e-3)");
    assert!(worst_row_bf16 <= 6e-3, "a CUDA attend output row (bf16 I/O) differs from the CPU's by {worst_row_bf16:.2e} (> 6e-3)");
}

#[test]
fn cuda_residual_rows_match_cpu() {
    if !gpu_or_skip("cuda_residual_rows_match_cpu") {
        return;
    }
    let (d, hq, hkv) = (128usize, 16usize, 4usize);
    let config = KvConfig {
        n_layers: 1, n_heads: hq, n_kv_heads: hkv, head_dim: d, bits_k: 4, bits_v: 4,
        rotation: RotationKind::Hadamard, key_mode: QuantizerKind::Mse, seed: 77, centering: false, center_values: false, key_outliers: 0,
    };
    let codec = KvCodec::new(config).unwrap();
    let backend = CudaBackend::new(&codec, Dtype::F16, 0, 256).expect("CUDA backend");
    let (kr, vr) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes());
    let mut worst = 0.0f64;
    let mut worst_row = 0.0f64;
    let shapes: &[(usize, usize, usize)] = if quick() { &[(200, 32, 1), (100, 16, 70)] } else { &[(900, 128, 1), (600, 128, 16), (300, 64, 200)] };
    for &(n_c, n_full, n_q) in shapes {
        let mut rng = Rng::new((n_c + n_full + n_q) as u64);
        // Compressed rows through the CPU encoder.
        let kx = rng.normals(n_c * hkv * d);
        let vx = rng.normals(n_c * hkv * d);
        let mut ks = vec![0u8; n_c * kr];
        let mut vs = vec![0u8; n_c * vr];
        let kt = HeadTensor { ptr: kx.as_ptr().cast(), strides: Strides::packed(hkv, d, Dtype::F32), dtype: Dtype::F32 };
        let vt = HeadTensor { ptr: vx.as_ptr().cast(), strides: Strides::packed(hkv, d, Dtype::F32), dtype: Dtype::F32 };
        let mut es = turboquant::backend::cpu::encode::EncodeScratch::new(&codec);
        for t in 0..n_c {
            let (kr_, vr_) = (&mut ks[t * kr..(t + 1) * kr], &mut vs[t * vr..(t + 1) * vr]);
            unsafe { turboquant::backend::cpu::encode::encode_token(&codec, 0, None, None, &kt, &vt, t, kr_, vr_, &mut es) };
        }
        let full_k = rng.normals(n_full * hkv * d);
        let full_v = rng.normals(n_full * hkv * d);
        let cell_pos: Vec<i64> = (0..n_c as i64).collect();
        let full_pos: Vec<i64> = (n_c as i64..(n_c + n_full) as i64).collect();
        let total = (n_c + n_full) as i64;
        let query_pos: Vec<i64> = (0..n_q as i64).map(|i| total - n_q as i64 + i).collect();
        let q = f16_bits(&rng.normals(n_q * hq * d));
        let scale = 1.0 / (d as f32).sqrt();
        let mut out_cpu = vec![0u16; n_q * hq * d];
        let job = AttendJob {
            codec: &codec,
            layer: 0,
            means: None,
            key_order: None,
            q: HeadTensor { ptr: q.as_ptr().cast(), strides: Strides::packed(hq, d, Dtype::F16), dtype: Dtype::F16 },
            n_q,
            k_store: ks.as_ptr(),
            v_store: vs.as_ptr(),
            n_cells: n_c,
            mask: MaskSource::Causal { cell_pos: &cell_pos, query_pos: &query_pos },
            full: Some(FullRows::causal(&full_k, &full_v, hkv, d, &full_pos, &query_pos)),
            sinks: None,
            softcap: 0.0,
            scale,
            out: out_cpu.as_mut_ptr().cast(),
            out_strides: Strides::packed(hq, d, Dtype::F16),
            out_dtype: Dtype::F16,
        };
        let mut scratch = AttendScratch::new(&codec);
        unsafe { run_items(&job, 0..job.n_items(), &mut scratch) };
        let (ksd, vsd, qd) = (Dev::from(&ks), Dev::from(&vs), Dev::from(&q));
        let (cpd, fkd, fvd, fpd, qpd) =
            (Dev::from(&cell_pos), Dev::from(&full_k), Dev::from(&full_v), Dev::from(&full_pos), Dev::from(&query_pos));
        let od = Dev::filled(n_q * hq * d * 2, 0xFF);
        let a = DeviceAttend {
            layer: 0,
            n_seqs: 1,
            n_q,
            q: qd.ptr,
            q_strides: Strides::packed(hq, d, Dtype::F16),
            q_seq_stride: 0,
            stores: Stores::Single { k: ksd.ptr, v: vsd.ptr },
            seq_cells: 0,
            max_cells: n_c,
            mask: None,
            causal: Some(DeviceCausal { cell_pos: cpd.ptr, seq_stride: 0 }),
            full: Some(DeviceFullRows { k: fkd.ptr, v: fvd.ptr, pos: fpd.ptr, n_full, seq_stride: 0 }),
            query_pos: qpd.ptr,
            scale,
            out: od.ptr,
            out_strides: Strides::packed(hq, d, Dtype::F16),
            out_seq_stride: 0,
        };
        backend.attend(&a, null_mut()).expect("attend");
        let out_gpu = from_f16_bits(&od.read::<u16>(n_q * hq * d));
        let (t, w) = rel_errors(&out_gpu, &from_f16_bits(&out_cpu), d);
        println!("residual rows: {n_c} compressed + {n_full} full, n_q={n_q} (causal): rel err {t:.2e} (worst row {w:.2e})");
        worst = worst.max(t);
        worst_row = worst_row.max(w);
    }
    assert!(worst <= 1e-3, "residual-window attention differs from the CPU by {worst:.2e}");
    // Single rows: 2e-3, twice the worst measured (9.9e-4 on H100/H200).
    assert!(worst_row <= 2e-3, "a residual-window attention row differs from the CPU's by {worst_row:.2e}");
}

#[test]
fn cuda_graph_capture_and_replay() {
    if !gpu_or_skip("cuda_graph_capture_and_replay") {
        return;
    }
    use cudarc::driver::{result, sys};
    let (d, hq, hkv) = (128usize, 32usize, 8usize);
    let gpu = context(&params(hq as u32, hkv as u32, d as u32, 4, 4, 2, F16, true));
    let (kr, vr) = row_bytes(&gpu);
    let n_cells = 2048usize;
    let (n_prefill, n_new) = (1500usize, 4usize);
    let mut rng = Rng::new(99);
    let stream = new_stream();
    let sp = stream as *mut c_void;
    let kx = Dev::from(&f16_bits(&rng.normals((n_prefill + n_new) * hkv * d)));
    let vx = Dev::from(&f16_bits(&rng.normals((n_prefill + n_new) * hkv * d)));
    let slots: Vec<i64> = (0..(n_prefill + n_new) as i64).collect();
    let sd = Dev::from(&slots);
    let q1 = f16_bits(&rng.normals(hq * d));
    let q2 = f16_bits(&rng.normals(hq * d));
    let qd = Dev::from(&q1);
    let run = |ks: &Dev, vs: &Dev, od: &Dev, kp: &Dev, vp: &Dev, ld: &Dev| {
        // The captured work: append n_new tokens, then decode over all cells.
        let st = unsafe {
            tq_append_kv(gpu.0, 0, ks.void(), vs.void(), n_cells, (sd.ptr + (n_prefill * 8) as u64) as *const i64, n_new,
                (kx.ptr + (n_prefill * hkv * d * 2) as u64) as *const c_void, null(),
                (vx.ptr + (n_prefill * hkv * d * 2) as u64) as *const c_void, null(), sp)
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        let st = unsafe {
            tq_attend_batch(gpu.0, 0, 1, qd.void(), 1, null(), 0, kp.ptr as *const *const c_void, vp.ptr as *const *const c_void,
                ld.ptr as *const i64, n_cells, null(), 0, 0, 0, 0.088, od.void(), null(), 0, sp)
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    };
    let make_stores = || {
        let (ks, vs) = (Dev::zeroed(n_cells * kr), Dev::zeroed(n_cells * vr));
        let st = unsafe {
            tq_append_kv(gpu.0, 0, ks.void(), vs.void(), n_cells, sd.ptr as *const i64, n_prefill, kx.void(), null(), vx.void(), null(), sp)
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        let kp = Dev::from(&[ks.ptr]);
        let vp = Dev::from(&[vs.ptr]);
        let ld = Dev::from(&[(n_prefill + n_new) as i64]);
        (ks, vs, kp, vp, ld)
    };
    // Eager reference.
    let (ks_e, vs_e, kp_e, vp_e, ld_e) = make_stores();
    let out_e = Dev::filled(hq * d * 2, 0xFF);
    run(&ks_e, &vs_e, &out_e, &kp_e, &vp_e, &ld_e);
    unsafe { result::stream::synchronize(stream) }.unwrap();
    let eager1: Vec<u16> = out_e.read(hq * d);
    // Capture into a graph on a fresh set of stores, then replay.
    let (ks_g, vs_g, kp_g, vp_g, ld_g) = make_stores();
    unsafe { result::stream::synchronize(stream) }.unwrap();
    let out_g = Dev::filled(hq * d * 2, 0xFF);
    // Thread-local capture: the other test threads keep allocating while this one captures (global
    // mode would fail their allocations and invalidate this capture); every call this thread makes
    // into the library during the capture is still checked.
    unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }.unwrap();
    run(&ks_g, &vs_g, &out_g, &kp_g, &vp_g, &ld_g);
    let graph = unsafe { result::stream::end_capture(stream) }.expect("capture ended cleanly");
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) }
        .expect("graph instantiate");
    unsafe { result::graph::launch(exec, stream) }.unwrap();
    unsafe { result::stream::synchronize(stream) }.unwrap();
    let replay1: Vec<u16> = out_g.read(hq * d);
    assert_eq!(replay1, eager1, "graph replay differs from the eager run");
    assert_eq!(ks_g.read::<u8>(n_cells * kr), ks_e.read::<u8>(n_cells * kr), "graph-appended rows differ");
    // New query data, replay again: the graph reads the buffers afresh.
    qd.write(&q2);
    unsafe { result::graph::launch(exec, stream) }.unwrap();
    unsafe { result::stream::synchronize(stream) }.unwrap();
    let replay2: Vec<u16> = out_g.read(hq * d);
    run(&ks_e, &vs_e, &out_e, &kp_e, &vp_e, &ld_e);
    unsafe { result::stream::synchronize(stream) }.unwrap();
    let eager2: Vec<u16> = out_e.read(hq * d);
    assert_eq!(replay2, eager2);
    assert_ne!(replay1, replay2);
    unsafe {
        result::graph::exec_destroy(exec).unwrap();
        result::graph::destroy(graph).unwrap();
        result::stream::destroy(stream).unwrap();
    }
    println!("cuda_graph_capture_and_replay: append + attend captured, replayed twice, equal to eager runs");
}

#[test]
fn cuda_errors_name_the_argument() {
    if !gpu_or_skip("cuda_errors_name_the_argument") {
        return;
    }
    let mut p = params(8, 2, 80, 4, 4, 1, F16, true);
    let mut ctx = null_mut();
    assert_eq!(unsafe { tq_context_new(&p, &mut ctx) }, tq_status::TQ_STATUS_UNSUPPORTED);
    assert!(last_error().contains("head_dim 80"), "{}", last_error());
    p = params(8, 2, 128, 4, 4, 2, F16, true);
    p.key_mode = 1;
    assert_eq!(unsafe { tq_context_new(&p, &mut ctx) }, tq_status::TQ_STATUS_UNSUPPORTED);
    assert!(last_error().contains("PROD"), "{}", last_error());
    let mut p = params(8, 2, 128, 4, 4, 2, F16, true);
    p.max_batch = 4;
    let gpu = context(&p);
    let (kr, vr) = row_bytes(&gpu);
    let (ks, vs) = (Dev::zeroed(16 * kr), Dev::zeroed(16 * vr));
    let q = Dev::zeroed(8 * 8 * 128 * 2);
    let out = Dev::zeroed(8 * 8 * 128 * 2);
    let st = unsafe {
        tq_attend(gpu.0, 0, q.void(), 8, null(), ks.void(), vs.void(), 16, null(), 0, 0, 0.1, out.void(), null(), null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("max_batch"), "{}", last_error());
    let st = unsafe {
        tq_attend_part(gpu.0, 0, q.void(), 1, null(), ks.void(), vs.void(), 16, null(), 0, 0, 0.1, out.void(), null(), 0, 1)
    };
    assert_eq!(st, tq_status::TQ_STATUS_UNSUPPORTED);
    let st = unsafe {
        tq_attend(gpu.0, 5, q.void(), 1, null(), ks.void(), vs.void(), 16, null(), 0, 0, 0.1, out.void(), null(), null_mut())
    };
    assert_eq!(st, tq_status::TQ_STATUS_INVALID_ARGUMENT);
    assert!(last_error().contains("layer"), "{}", last_error());
    println!("cuda_errors_name_the_argument: ok");
}

/// A context's saved state (the centering means).
fn state_of(ctx: &Ctx) -> Vec<u8> {
    let mut n = 0usize;
    assert_eq!(unsafe { tq_context_state_size(ctx.0, &mut n) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    let mut buf = vec![0u8; n];
    assert_eq!(unsafe { tq_context_state_save(ctx.0, buf.as_mut_ptr(), n) }, tq_status::TQ_STATUS_OK, "{}", last_error());
    buf
}

#[test]
fn cuda_centering_matches_cpu() {
    // Keys with a constant per-(head, dimension) bias 30× their own norm, values with one 5× theirs.
    // With centering, the CUDA backend computes each layer's means from its first append on the device
    // (f64 sums, as the CPU does) and freezes them: rows byte-identical to the CPU backend's over two
    // appends, attention within 1e-3 of the CPU's, the saved state byte-identical; a state loaded into a
    // fresh CUDA context gives the same attention over the same rows and the same rows for new tokens.
    if !gpu_or_skip("cuda_centering_matches_cpu") {
        return;
    }
    let cases: &[(u32, u32)] = if quick() { &[(128, 2)] } else { &[(128, 2), (64, 2), (96, 1)] };
    for &(d, rot) in cases {
        let (du, hq, hkv, layer) = (d as usize, 8usize, 2usize, 1u32);
        let mk = |cuda| {
            let mut p = params(hq as u32, hkv as u32, d, 4, 4, rot, F16, cuda);
            p.centering = true;
            context(&p)
        };
        let (cpu, gpu) = (mk(false), mk(true));
        let (kr, vr) = row_bytes(&cpu);
        let mut rng = Rng::new(77 + d as u64);
        let kb: Vec<f32> = rng.normals(hkv * du).iter().map(|v| v * 30.0).collect();
        let vb: Vec<f32> = rng.normals(hkv * du).iter().map(|v| v * 5.0).collect();
        let (n1, n2, n3, n_cells) = (100usize, 60usize, 40usize, 256usize);
        let n_tok = n1 + n2 + n3;
        let biased = |x: Vec<f32>, b: &[f32]| -> Vec<u8> {
            to_dtype_bytes(&x.iter().enumerate().map(|(i, v)| v + b[i % (hkv * du)]).collect::<Vec<_>>(), F16)
        };
        let k_in = biased(rng.normals(n_tok * hkv * du), &kb);
        let v_in = biased(rng.normals(n_tok * hkv * du), &vb);
        let tok_bytes = hkv * du * 2;
        let slots: Vec<i64> = (0..n_tok as i64).collect();
        let (mut k_cpu, mut v_cpu) = (vec![0u8; n_cells * kr], vec![0u8; n_cells * vr]);
        let (kd, vd) = (Dev::filled(n_cells * kr, 0xAB), Dev::filled(n_cells * vr, 0xAB));
        let (kin, vin, sd) = (Dev::from(&k_in), Dev::from(&v_in), Dev::from(&slots));
        let append_gpu = |ctx: &Ctx, t0: usize, n: usize, kd: &Dev, vd: &Dev| {
            let st = unsafe {
                tq_append_kv(ctx.0, layer, kd.void(), vd.void(), n_cells, (sd.ptr + 8 * t0 as u64) as *const i64, n,
                    (kin.ptr + (t0 * tok_bytes) as u64) as *const c_void, null(),
                    (vin.ptr + (t0 * tok_bytes) as u64) as *const c_void, null(), null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        };
        for (t0, n) in [(0, n1), (n1, n2)] {
            let st = unsafe {
                tq_append_kv(cpu.0, layer, k_cpu.as_mut_ptr().cast(), v_cpu.as_mut_ptr().cast(), n_cells, slots[t0..].as_ptr(), n,
                    k_in[t0 * tok_bytes..].as_ptr().cast(), null(), v_in[t0 * tok_bytes..].as_ptr().cast(), null(), null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            append_gpu(&gpu, t0, n, &kd, &vd);
        }
        let n = n1 + n2;
        let (k_gpu, v_gpu): (Vec<u8>, Vec<u8>) = (kd.read(n * kr), vd.read(n * vr));
        assert!(k_gpu == k_cpu[..n * kr] && v_gpu == v_cpu[..n * vr], "d={d}: centred rows differ between CPU and CUDA");
        let cpu_state = state_of(&cpu);
        assert!(state_of(&gpu) == cpu_state, "d={d}: the CUDA context's saved means differ from the CPU's");

        // Queries aligned with the key bias (the logits carry q·bias, as in models with key biases).
        let n_q = 3;
        let qx: Vec<f32> = (0..n_q * hq * du).map(|i| rng.normal() as f32 + kb[(i / (hq / hkv * du)) % hkv * du + i % du] / 30.0).collect();
        let qb = to_dtype_bytes(&qx, F16);
        let scale = 1.0 / (d as f32).sqrt();
        let mut out_cpu = vec![0u8; n_q * hq * du * 2];
        let st = unsafe {
            tq_attend(cpu.0, layer, qb.as_ptr().cast(), n_q, null(), k_cpu.as_ptr().cast(), v_cpu.as_ptr().cast(), n, null(), 0, 0,
                scale, out_cpu.as_mut_ptr().cast(), null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        let out_cpu = from_dtype_bytes(&out_cpu, F16);
        let qd = Dev::from(&qb);
        let attend_gpu = |ctx: &Ctx| -> Vec<f32> {
            let od = Dev::filled(n_q * hq * du * 2, 0xFF);
            let st = unsafe {
                tq_attend(ctx.0, layer, qd.void(), n_q, null(), kd.void(), vd.void(), n, null(), 0, 0, scale, od.void(), null(), null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            from_dtype_bytes(&od.read::<u8>(n_q * hq * du * 2), F16)
        };
        let out_gpu = attend_gpu(&gpu);
        let (tot, worst) = rel_errors(&out_gpu, &out_cpu, du);
        assert!(tot < 1e-3 && worst < 3e-3, "d={d}: centred attention CUDA vs CPU rel err {tot:.2e} (worst row {worst:.2e})");

        // A fresh CUDA context with the CPU's state: the same attention over the same rows (bit for bit:
        // same kernels, same means), and the same rows for the next tokens as the first CUDA context writes.
        let fresh = mk(true);
        assert_eq!(unsafe { tq_context_state_load(fresh.0, cpu_state.as_ptr(), cpu_state.len()) }, tq_status::TQ_STATUS_OK, "{}", last_error());
        let out_loaded = attend_gpu(&fresh);
        assert!(out_loaded == out_gpu, "d={d}: attention after a state load differs");
        let (kd2, vd2) = (Dev::filled(n_cells * kr, 0xAB), Dev::filled(n_cells * vr, 0xAB));
        append_gpu(&gpu, n, n3, &kd, &vd);
        append_gpu(&fresh, n, n3, &kd2, &vd2);
        let (a, b) = (kd.read::<u8>(n_tok * kr), kd2.read::<u8>(n_tok * kr));
        assert!(a[n * kr..] == b[n * kr..], "d={d}: K rows after a state load differ");
        let (a, b) = (vd.read::<u8>(n_tok * vr), vd2.read::<u8>(n_tok * vr));
        assert!(a[n * vr..] == b[n * vr..], "d={d}: V rows after a state load differ");
        println!("cuda_centering_matches_cpu d={d}: rows and state byte-identical, attention rel err {tot:.2e} (worst row {worst:.2e}), state load reproduces");
    }
}

#[test]
fn cuda_centering_means_stay_frozen_under_graph_replay() {
    // An engine that captures its first decode/prefill step in a CUDA graph (llama.cpp's CUDA backend
    // does) replays that step's launches without calling the library again: the first append's means
    // kernel must not recompute the means from the replayed rows. Reference: the CPU backend, which
    // freezes the means of the first append (batch A) and encodes a later append (batch B, written into
    // the same input buffers and cells) with them.
    if !gpu_or_skip("cuda_centering_means_stay_frozen_under_graph_replay") {
        return;
    }
    use cudarc::driver::{result, sys};
    let (d, hq, hkv, n_tok, n_cells) = (128usize, 8usize, 2usize, 64usize, 128usize);
    let mk = |cuda| {
        let mut p = params(hq as u32, hkv as u32, d as u32, 4, 4, 2, F16, cuda);
        p.centering = true;
        context(&p)
    };
    let (cpu, gpu) = (mk(false), mk(true));
    let (kr, vr) = row_bytes(&cpu);
    let mut rng = Rng::new(4242);
    let batch = |rng: &mut Rng, bias: f32| -> Vec<u8> {
        to_dtype_bytes(&rng.normals(n_tok * hkv * d).iter().enumerate().map(|(i, v)| v + bias * ((i % d) as f32 / d as f32)).collect::<Vec<_>>(), F16)
    };
    let (ka, va, kb, vb) = (batch(&mut rng, 20.0), batch(&mut rng, 3.0), batch(&mut rng, -15.0), batch(&mut rng, 1.0));
    let slots: Vec<i64> = (0..n_tok as i64).collect();
    let (kin, vin, sd) = (Dev::from(&ka), Dev::from(&va), Dev::from(&slots));
    let (kd, vd) = (Dev::zeroed(n_cells * kr), Dev::zeroed(n_cells * vr));
    let stream = new_stream();
    unsafe { result::stream::begin_capture(stream, sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL) }.unwrap();
    let st = unsafe {
        tq_append_kv(gpu.0, 0, kd.void(), vd.void(), n_cells, sd.ptr as *const i64, n_tok, kin.void(), null(), vin.void(), null(), stream as *mut c_void)
    };
    assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    let graph = unsafe { result::stream::end_capture(stream) }.expect("capture ended cleanly");
    let exec = unsafe { result::graph::instantiate(graph, sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH) }
        .expect("graph instantiate");
    let (mut k_cpu, mut v_cpu) = (vec![0u8; n_cells * kr], vec![0u8; n_cells * vr]);
    let append_cpu = |k_cpu: &mut [u8], v_cpu: &mut [u8], k: &[u8], v: &[u8]| {
        let st = unsafe {
            tq_append_kv(cpu.0, 0, k_cpu.as_mut_ptr().cast(), v_cpu.as_mut_ptr().cast(), n_cells, slots.as_ptr(), n_tok,
                k.as_ptr().cast(), null(), v.as_ptr().cast(), null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
    };
    // first launch: batch A fixes the means
    unsafe { result::graph::launch(exec, stream) }.unwrap();
    unsafe { result::stream::synchronize(stream) }.unwrap();
    append_cpu(&mut k_cpu, &mut v_cpu, &ka, &va);
    let state_a = state_of(&cpu);
    assert!(state_of(&gpu) == state_a, "the means of the captured first append differ from the CPU's");
    assert!(kd.read::<u8>(n_tok * kr) == k_cpu[..n_tok * kr], "rows of batch A differ from the CPU's");
    // replay over batch B: the means stay A's, the rows are B's encoded with them
    kin.write(&kb);
    vin.write(&vb);
    unsafe { result::graph::launch(exec, stream) }.unwrap();
    unsafe { result::stream::synchronize(stream) }.unwrap();
    append_cpu(&mut k_cpu, &mut v_cpu, &kb, &vb);
    assert!(state_of(&cpu) == state_a, "the CPU reference recomputed its means");
    assert!(state_of(&gpu) == state_a, "a graph replay recomputed the centering means");
    assert!(kd.read::<u8>(n_tok * kr) == k_cpu[..n_tok * kr], "K rows of the replayed batch B differ from the CPU's");
    assert!(vd.read::<u8>(n_tok * vr) == v_cpu[..n_tok * vr], "V rows of the replayed batch B differ from the CPU's");
    unsafe {
        result::graph::exec_destroy(exec).unwrap();
        result::graph::destroy(graph).unwrap();
        result::stream::destroy(stream).unwrap();
    }
    println!("cuda_centering_means_stay_frozen_under_graph_replay: means of the first append kept over a replay, rows equal the CPU's");
}

#[test]
fn cuda_dequantized_rows_match_cpu() {
    // tq_dequantize_rows on CUDA against the CPU backend over the same rows (the CUDA append writes the
    // CPU's bytes, checked here too): keys and values with centering (the means computed on the device),
    // Hadamard and dense rotations, f32 output within 1e-5 of each row's largest element, f16 output
    // strided with padding (untouched) within f16 rounding.
    if !gpu_or_skip("cuda_dequantized_rows_match_cpu") {
        return;
    }
    let cases: &[(u32, u32, u32, u32)] = if quick() { &[(128, 0, 4, 4)] } else { &[(128, 0, 4, 4), (64, 0, 3, 2), (96, 1, 4, 3), (256, 0, 5, 8)] };
    for &(d, rot, bk, bv) in cases {
        let (du, hq, hkv, layer, n) = (d as usize, 8usize, 2usize, 1u32, 150usize);
        let mk = |cuda| {
            let mut p = params(hq as u32, hkv as u32, d, bk, bv, rot, F16, cuda);
            p.centering = true;
            p.center_values = true;
            context(&p)
        };
        let (cpu, gpu) = (mk(false), mk(true));
        let (kr, vr) = row_bytes(&cpu);
        let mut rng = Rng::new(500 + d as u64);
        let k: Vec<f32> = rng.normals(n * hkv * du).iter().enumerate().map(|(i, x)| x + 4.0 * (i % 7) as f32).collect();
        let v: Vec<f32> = rng.normals(n * hkv * du).iter().enumerate().map(|(i, x)| x - (i % 3) as f32).collect();
        let (kb, vb) = (to_dtype_bytes(&k, F16), to_dtype_bytes(&v, F16));
        let slots: Vec<i64> = (0..n as i64).collect();
        let (mut kc, mut vc) = (vec![0u8; n * kr], vec![0u8; n * vr]);
        let st = unsafe {
            tq_append_kv(cpu.0, layer, kc.as_mut_ptr().cast(), vc.as_mut_ptr().cast(), n, slots.as_ptr(), n, kb.as_ptr().cast(), null(),
                vb.as_ptr().cast(), null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        let (kd, vd, kin, vin, sd) = (Dev::zeroed(n * kr), Dev::zeroed(n * vr), Dev::from(&kb), Dev::from(&vb), Dev::from(&slots));
        let st = unsafe {
            tq_append_kv(gpu.0, layer, kd.void(), vd.void(), n, sd.ptr as *const i64, n, kin.void(), null(), vin.void(), null(), null_mut())
        };
        assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
        assert!(kd.read::<u8>(n * kr) == kc && vd.read::<u8>(n * vr) == vc, "d={d}: CUDA rows differ from the CPU's");
        for (part, host, dev) in [(0u32, &kc, &kd), (1u32, &vc, &vd)] {
            let mut want = vec![0.0f32; n * hkv * du];
            let st = unsafe {
                tq_dequantize_rows(cpu.0, layer, part, host.as_ptr().cast(), n, want.as_mut_ptr().cast(), F32, null(), null_mut())
            };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            let out = Dev::filled(n * hkv * du * 4, 0xFF);
            let st = unsafe { tq_dequantize_rows(gpu.0, layer, part, dev.void(), n, out.void(), F32, null(), null_mut()) };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            let got = out.read::<f32>(n * hkv * du);
            let mut worst = 0.0f64;
            for (rg, rw) in got.chunks(du).zip(want.chunks(du)) {
                let top = rw.iter().fold(0.0f32, |a, x| a.max(x.abs())) as f64;
                for (x, y) in rg.iter().zip(rw) {
                    worst = worst.max((*x as f64 - *y as f64).abs() / top);
                }
            }
            assert!(worst <= 1e-5, "d={d} part {part}: CUDA f32 rows differ from the CPU's by {worst:.2e} of the row maximum");
            // f16, head stride d + 8 halves, token stride 2 heads + 4 halves.
            let (hs, ts) = (du + 8, hkv * (du + 8) + 4);
            let out16 = Dev::filled(n * ts * 2, 0xFF);
            let strides = tq_strides { token: 2 * ts, head: 2 * hs };
            let st = unsafe { tq_dequantize_rows(gpu.0, layer, part, dev.void(), n, out16.void(), F16, &strides, null_mut()) };
            assert_eq!(st, tq_status::TQ_STATUS_OK, "{}", last_error());
            let halves = out16.read::<u16>(n * ts);
            for j in 0..n {
                for g in 0..hkv {
                    let w = &want[(j * hkv + g) * du..(j * hkv + g + 1) * du];
                    let top = w.iter().fold(0.0f32, |a, x| a.max(x.abs()));
                    for i in 0..du {
                        let x = half::f16::from_bits(halves[j * ts + g * hs + i]).to_f32();
                        assert!((x - w[i]).abs() <= w[i].abs() / 2048.0 + 1e-5 * top, "d={d} part {part} f16 ({j}, {g}, {i}): {x} vs {}", w[i]);
                    }
                    assert!(halves[j * ts + g * hs + du..j * ts + g * hs + hs].iter().all(|&b| b == 0xFFFF), "d={d}: padding written");
                }
            }
            println!("cuda_dequantized_rows_match_cpu d={d} bits {bk}/{bv} part {part}: f32 within {worst:.2e} of the row maximum, f16 strided ok");
        }
    }
}
