//! AVX-512 encode and decode of one vector for the HADAMARD MSE quantizer at 1–4 bits, the hot path
//! of `tq_quantize`/`tq_dequantize` and of the KV codec's row encoding.
//!
//! The whole vector lives in N = d/16 registers (d = 16…1024, a power of two): the norm, the
//! normalisation, the signs, the Walsh–Hadamard butterflies (strides 1–8 inside a register by lane
//! permutes, strides ≥ 16 between registers), the output signs, the bucket search (a branchless binary
//! search over the ≤ 15 boundaries held in one register, `vpermps`) and the bit packing.
//! Every rounded operation is the one the portable code performs, in the same order (see `rotation`,
//! `scale` and `quantizer`), so codes, scales and reconstructions are bit-identical; a test compares
//! the two paths.
//!
//! Callers must have checked `Isa::avx512_available()`; lengths are asserted here.

use std::arch::x86_64::*;

use super::packing::packed_len;
use super::scale::combine8;

/// FWHT butterflies of strides 1, 2, 4, 8 inside one register: lane i pairs with lane i ^ h; the lane
/// without bit h gets a + b, the lane with it gets a − b (a the lower-index element).
#[inline]
#[target_feature(enable = "avx512f")]
fn butterflies_in_register(v: __m512) -> __m512 {
    let p = _mm512_permute_ps::<0xB1>(v);
    let v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xAAAA, p, v);
    let p = _mm512_permute_ps::<0x4E>(v);
    let v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xCCCC, p, v);
    let p = _mm512_shuffle_f32x4::<0xB1>(v, v);
    let v = _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xF0F0, p, v);
    let p = _mm512_shuffle_f32x4::<0x4E>(v, v);
    _mm512_mask_sub_ps(_mm512_add_ps(v, p), 0xFF00, p, v)
}

/// FWHT butterflies of strides 16, 32, … between the registers of one vector.
#[inline]
#[target_feature(enable = "avx512f")]
fn butterflies_across_registers<const N: usize>(v: &mut [__m512; N]) {
    let mut h = 1;
    while h < N {
        for i in 0..N {
            if i & h == 0 {
                let (a, b) = (v[i], v[i + h]);
                v[i] = _mm512_add_ps(a, b);
                v[i + h] = _mm512_sub_ps(a, b);
            }
        }
        h *= 2;
    }
}

/// Number of boundaries strictly below each lane of `y`: branchless binary search over the 2^B − 1
/// ascending boundaries in `table` (counts the same predicate, t < y, as `quantizer::bucketize`).
#[inline]
#[target_feature(enable = "avx512f")]
fn bucket<const B: u32>(y: __m512, table: __m512) -> __m512i {
    let mut idx = _mm512_setzero_si512();
    let mut step = 1i32 << (B - 1);
    while step > 0 {
        let t = _mm512_permutexvar_ps(_mm512_add_epi32(idx, _mm512_set1_epi32(step - 1)), table);
        let above = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(y, t);
        idx = _mm512_mask_add_epi32(idx, above, idx, _mm512_set1_epi32(step));
        step >>= 1;
    }
    idx
}

/// 16 codes (< 2^B, one per 32-bit lane) in the `packing` layout: 2·B bytes, LSB first.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn pack16<const B: u32>(idx: __m512i) -> u64 {
    match B {
        1 => _mm512_cmpneq_epi32_mask(idx, _mm512_setzero_si512()) as u64,
        2 => {
            let bytes = _mm512_cvtepi32_epi8(idx);
            let pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x0401));
            let quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x0010_0001));
            _mm_cvtsi128_si32(_mm_cvtepi32_epi8(quads)) as u32 as u64
        }
        3 => {
            let bytes = _mm512_cvtepi32_epi8(idx);
            let pairs = _mm_maddubs_epi16(bytes, _mm_set1_epi16(0x0801));
            let quads = _mm_madd_epi16(pairs, _mm_set1_epi32(0x0040_0001)) ;
            let lo = _mm_cvtsi128_si64(quads) as u64;
            let hi = _mm_extract_epi64::<1>(quads) as u64;
            (lo & 0xfff) | ((lo >> 32) << 12) | ((hi & 0xfff) << 24) | ((hi >> 32) << 36)
        }
        _ => {
            let merged = _mm512_or_si512(idx, _mm512_srli_epi64::<28>(idx));
            _mm_cvtsi128_si64(_mm512_cvtepi64_epi8(merged)) as u64
        }
    }
}

/// The 16 codes of 2·B packed bytes (little-endian in `bits`), one per 32-bit lane.
#[inline]
#[target_feature(enable = "avx512f")]
fn unpack16<const B: u32>(bits: u64) -> __m512i {
    let b = B as i32;
    let lo = (bits & ((1u64 << (8 * B)) - 1)) as i32;
    let hi = (bits >> (8 * B)) as i32;
    let words = _mm512_mask_set1_epi32(_mm512_set1_epi32(lo), 0xFF00, hi);
    let shifts = _mm512_setr_epi32(0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b, 0, b, 2 * b, 3 * b, 4 * b, 5 * b, 6 * b, 7 * b);
    _mm512_and_si512(_mm512_srlv_epi32(words, shifts), _mm512_set1_epi32((1 << B) - 1))
}

/// Up to 16 f32 values into one register, the unused lanes filled with `fill`.
#[inline]
#[target_feature(enable = "avx512f")]
fn table(values: &[f32], fill: f32) -> __m512 {
    assert!(values.len() <= 16);
    let mask = ((1u32 << values.len()) - 1) as u16;
    // SAFETY: the mask enables only lanes 0..values.len().
    unsafe { _mm512_mask_loadu_ps(_mm512_set1_ps(fill), mask, values.as_ptr()) }
}

#[inline]
#[target_feature(enable = "avx512f")]
fn load16(s: &[f32], i: usize) -> __m512 {
    let c = &s[16 * i..16 * i + 16];
    // SAFETY: `c` has 16 elements.
    unsafe { _mm512_loadu_ps(c.as_ptr()) }
}

#[inline]
fn read_bytes(s: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b[..s.len()].copy_from_slice(s);
    u64::from_le_bytes(b)
}

/// Encode G vectors of d = 16·N elements at B bits (processed in lockstep, so that the long
/// dependency chain of one vector — norm, square root, division, butterflies, search — overlaps the
/// others'): packed codes into `packed` (G × ⌈d·B/8⌉ bytes), ‖x‖ as f64 into `norms` (a zero vector
/// gets norm 0 and all-zero codes).
// The loops index the G vectors' register arrays in lockstep; iterators would obscure that.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn encode_n<const N: usize, const B: u32, const G: usize>(
    x: &[f32],
    signs_in: &[f32],
    signs_out_scaled: &[f32],
    boundaries: &[f32],
    centroids: &[f32],
    packed: &mut [u8],
    norms: &mut [f64],
    gains: &mut [(f64, f64)],
) {
    let d = 16 * N;
    let code_bytes = packed_len(d, B);
    assert!(x.len() == G * d && signs_in.len() == d && signs_out_scaled.len() == d);
    assert!(boundaries.len() == (1 << B) - 1 && packed.len() == G * code_bytes && norms.len() == G);
    assert!(centroids.len() == 1 << B && gains.len() == G);
    // ‖x‖: eight f64 partial sums, element i into sum i mod 8 (scale::norm_f64).
    let mut acc = [_mm512_setzero_pd(); G];
    for i in 0..2 * N {
        for (g, a) in acc.iter_mut().enumerate() {
            let c = &x[g * d + 8 * i..g * d + 8 * i + 8];
            // SAFETY: `c` has 8 elements.
            let v = _mm512_cvtps_pd(unsafe { _mm256_loadu_ps(c.as_ptr()) });
            *a = _mm512_add_pd(*a, _mm512_mul_pd(v, v));
        }
    }
    let mut inv = [_mm512_setzero_pd(); G];
    for g in 0..G {
        let mut a = [0.0f64; 8];
        // SAFETY: `a` has 8 elements.
        unsafe { _mm512_storeu_pd(a.as_mut_ptr(), acc[g]) };
        norms[g] = combine8(&a).sqrt();
        // A zero vector gives inf·0 = NaN here; its codes are overwritten below.
        inv[g] = _mm512_set1_pd(1.0 / norms[g]);
    }
    // u = (f32)((f64)x · (1/‖x‖)), then D₁, then the butterflies.
    let mut v = [[_mm512_setzero_ps(); N]; G];
    for i in 0..N {
        let s1 = load16(signs_in, i);
        for g in 0..G {
            let c = &x[g * d + 16 * i..g * d + 16 * i + 16];
            // SAFETY: `c` has 16 elements.
            let (lo, hi) = unsafe { (_mm256_loadu_ps(c.as_ptr()), _mm256_loadu_ps(c.as_ptr().add(8))) };
            let lo = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(lo), inv[g]));
            let hi = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(hi), inv[g]));
            let u = _mm512_castpd_ps(_mm512_insertf64x4::<1>(
                _mm512_castps_pd(_mm512_castps256_ps512(lo)),
                _mm256_castps_pd(hi),
            ));
            v[g][i] = butterflies_in_register(_mm512_mul_ps(u, s1));
        }
    }
    for vg in v.iter_mut() {
        butterflies_across_registers(vg);
    }
    // D₂/√d, bucket, pack; ⟨y, ĉ⟩ and ‖ĉ‖² in f64 (scale::gain_sums: element e into sum e mod 8, so
    // lanes 0–7 then lanes 8–15 of each register).
    let t = table(boundaries, f32::INFINITY);
    let c = table(centroids, 0.0);
    let bytes = 2 * B as usize;
    let mut dot = [_mm512_setzero_pd(); G];
    let mut sq = [_mm512_setzero_pd(); G];
    for i in 0..N {
        let s2 = load16(signs_out_scaled, i);
        for g in 0..G {
            let y = _mm512_mul_ps(v[g][i], s2);
            let idx = bucket::<B>(y, t);
            let word = pack16::<B>(idx);
            let at = g * code_bytes + bytes * i;
            packed[at..at + bytes].copy_from_slice(&word.to_le_bytes()[..bytes]);
            let cy = _mm512_permutexvar_ps(idx, c);
            for (yh, ch) in [
                (_mm512_castps512_ps256(y), _mm512_castps512_ps256(cy)),
                (
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(y))),
                    _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(cy))),
                ),
            ] {
                let (yd, cd) = (_mm512_cvtps_pd(yh), _mm512_cvtps_pd(ch));
                dot[g] = _mm512_add_pd(dot[g], _mm512_mul_pd(yd, cd));
                sq[g] = _mm512_add_pd(sq[g], _mm512_mul_pd(cd, cd));
            }
        }
    }
    for g in 0..G {
        if norms[g] == 0.0 {
            packed[g * code_bytes..(g + 1) * code_bytes].fill(0);
        }
        let (mut a, mut b) = ([0.0f64; 8], [0.0f64; 8]);
        // SAFETY: `a` and `b` have 8 elements.
        unsafe {
            _mm512_storeu_pd(a.as_mut_ptr(), dot[g]);
            _mm512_storeu_pd(b.as_mut_ptr(), sq[g]);
        }
        gains[g] = (combine8(&a), combine8(&b));
    }
}

/// Encode the n = x.len()/d vectors of `x` two at a time (see `encode_n`).
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn encode_many<const N: usize, const B: u32>(
    x: &[f32],
    signs_in: &[f32],
    signs_out_scaled: &[f32],
    boundaries: &[f32],
    centroids: &[f32],
    packed: &mut [u8],
    norms: &mut [f64],
    gains: &mut [(f64, f64)],
) {
    let (d, cb) = (16 * N, packed_len(16 * N, B));
    let n = norms.len();
    assert!(x.len() == n * d && packed.len() == n * cb && gains.len() == n);
    let pairs = n / 2;
    for p in 0..pairs {
        encode_n::<N, B, 2>(
            &x[2 * p * d..2 * (p + 1) * d],
            signs_in,
            signs_out_scaled,
            boundaries,
            centroids,
            &mut packed[2 * p * cb..2 * (p + 1) * cb],
            &mut norms[2 * p..2 * p + 2],
            &mut gains[2 * p..2 * p + 2],
        );
    }
    if n % 2 == 1 {
        let k = n - 1;
        encode_n::<N, B, 1>(
            &x[k * d..],
            signs_in,
            signs_out_scaled,
            boundaries,
            centroids,
            &mut packed[k * cb..],
            &mut norms[k..],
            &mut gains[k..],
        );
    }
}

/// Decode one vector of d = 16·N elements at B bits: out = scale · D₁·H·(D₂/√d)·c[code], saturated
/// to ±f32::MAX.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
fn decode_n<const N: usize, const B: u32>(
    packed: &[u8],
    scale: f32,
    signs_in: &[f32],
    signs_out_scaled: &[f32],
    centroids: &[f32],
    out: &mut [f32],
) {
    let d = 16 * N;
    assert!(out.len() == d && signs_in.len() == d && signs_out_scaled.len() == d);
    assert!(centroids.len() == 1 << B && packed.len() >= packed_len(d, B));
    let c = table(centroids, 0.0);
    let bytes = 2 * B as usize;
    let mut v = [_mm512_setzero_ps(); N];
    for (i, r) in v.iter_mut().enumerate() {
        let idx = unpack16::<B>(read_bytes(&packed[bytes * i..bytes * (i + 1)]));
        let y = _mm512_permutexvar_ps(idx, c);
        *r = butterflies_in_register(_mm512_mul_ps(y, load16(signs_out_scaled, i)));
    }
    butterflies_across_registers(&mut v);
    let s = _mm512_set1_ps(scale);
    let (lowest, highest) = (_mm512_set1_ps(-f32::MAX), _mm512_set1_ps(f32::MAX));
    for (i, r) in v.iter().enumerate() {
        let o = _mm512_mul_ps(_mm512_mul_ps(*r, load16(signs_in, i)), s);
        // Saturate to ±f32::MAX as `quantizer::saturate` does (never NaN here: scale and centroids
        // are finite).
        let o = _mm512_min_ps(_mm512_max_ps(o, lowest), highest);
        let dst = &mut out[16 * i..16 * i + 16];
        // SAFETY: `dst` has 16 elements.
        unsafe { _mm512_storeu_ps(dst.as_mut_ptr(), o) };
    }
}

macro_rules! by_dim_and_bits {
    ($f:ident, $d:expr, $bits:expr, ($($arg:expr),*)) => {
        match ($d, $bits) {
            (16, 1) => $f::<1, 1>($($arg),*), (16, 2) => $f::<1, 2>($($arg),*),
            (16, 3) => $f::<1, 3>($($arg),*), (16, 4) => $f::<1, 4>($($arg),*),
            (32, 1) => $f::<2, 1>($($arg),*), (32, 2) => $f::<2, 2>($($arg),*),
            (32, 3) => $f::<2, 3>($($arg),*), (32, 4) => $f::<2, 4>($($arg),*),
            (64, 1) => $f::<4, 1>($($arg),*), (64, 2) => $f::<4, 2>($($arg),*),
            (64, 3) => $f::<4, 3>($($arg),*), (64, 4) => $f::<4, 4>($($arg),*),
            (128, 1) => $f::<8, 1>($($arg),*), (128, 2) => $f::<8, 2>($($arg),*),
            (128, 3) => $f::<8, 3>($($arg),*), (128, 4) => $f::<8, 4>($($arg),*),
            (256, 1) => $f::<16, 1>($($arg),*), (256, 2) => $f::<16, 2>($($arg),*),
            (256, 3) => $f::<16, 3>($($arg),*), (256, 4) => $f::<16, 4>($($arg),*),
            (512, 1) => $f::<32, 1>($($arg),*), (512, 2) => $f::<32, 2>($($arg),*),
            (512, 3) => $f::<32, 3>($($arg),*), (512, 4) => $f::<32, 4>($($arg),*),
            (1024, 1) => $f::<64, 1>($($arg),*), (1024, 2) => $f::<64, 2>($($arg),*),
            (1024, 3) => $f::<64, 3>($($arg),*), (1024, 4) => $f::<64, 4>($($arg),*),
            _ => unreachable!("avx512::supports() was not checked"),
        }
    };
}

/// Whether `encode_hadamard`/`decode_hadamard` handle (d, bits).
pub fn supports(dim: usize, bits: u32) -> bool {
    (1..=4).contains(&bits) && dim.is_power_of_two() && (16..=1024).contains(&dim)
}

/// HADAMARD encode of n vectors (see `encode_n`): `x` holds n × d floats, `packed` n × ⌈d·bits/8⌉
/// bytes, `norms` receives the n norms and `gains` the n pairs (⟨y, ĉ⟩, ‖ĉ‖²) of `scale::gain_sums`.
///
/// # Safety
/// The CPU has AVX-512F/BW/VL (`Isa::avx512_available()`), and `supports(d, bits)`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn encode_hadamard(
    x: &[f32],
    dim: usize,
    bits: u32,
    signs_in: &[f32],
    signs_out_scaled: &[f32],
    boundaries: &[f32],
    centroids: &[f32],
    packed: &mut [u8],
    norms: &mut [f64],
    gains: &mut [(f64, f64)],
) {
    // SAFETY: the caller detected AVX-512 and passes slices of the lengths the kernels take.
    unsafe {
        by_dim_and_bits!(encode_many, dim, bits, (x, signs_in, signs_out_scaled, boundaries, centroids, packed, norms, gains))
    }
}

/// HADAMARD decode (see `decode_n`).
///
/// # Safety
/// The CPU has AVX-512F/BW/VL (`Isa::avx512_available()`), and `supports(out.len(), bits)`.
pub unsafe fn decode_hadamard(
    packed: &[u8],
    bits: u32,
    scale: f32,
    signs_in: &[f32],
    signs_out_scaled: &[f32],
    centroids: &[f32],
    out: &mut [f32],
) {
    // SAFETY: the caller detected AVX-512 and passes slices of the lengths the kernels take.
    unsafe { by_dim_and_bits!(decode_n, out.len(), bits, (packed, scale, signs_in, signs_out_scaled, centroids, out)) }
}
