//! Small vector kernels of the CPU attention loop. Written as lane-parallel loops over fixed-width
//! chunks so the compiler vectorises them (multiversioned for AVX-512 / AVX2), plus an explicit
//! AVX-512 path for the centroid lookup of ≤ 4-bit codes (`vpermps` turns 16 codes into 16 floats).

use crate::math::packing::unpack;

const LANES: usize = 16;

/// Σ a_i·b_i.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if a.len() % 16 == 0 && has_avx512() {
        // SAFETY: feature checked; equal lengths, multiple of 16.
        return unsafe { x86::dot(a, b) };
    }
    dot_portable(a, b)
}

/// Σ a_i·b_i with 16 interleaved partial sums.
#[inline(always)]
fn dot_portable(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut ca = a.chunks_exact(LANES);
    let mut cb = b.chunks_exact(LANES);
    for (x, y) in (&mut ca).zip(&mut cb) {
        for l in 0..LANES {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for (x, y) in ca.remainder().iter().zip(cb.remainder()) {
        tail += x * y;
    }
    // Pairwise tree over the lanes (vectorises to shuffles + adds, unlike a serial sum).
    let mut width = LANES / 2;
    while width > 0 {
        for l in 0..width {
            acc[l] += acc[l + width];
        }
        width /= 2;
    }
    acc[0] + tail
}

/// y += w·x.
#[inline(always)]
pub fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if x.len() % 16 == 0 && has_avx512() {
        // SAFETY: feature checked; equal lengths, multiple of 16.
        return unsafe { x86::axpy(w, x, y) };
    }
    for (o, &v) in y.iter_mut().zip(x) {
        *o += w * v;
    }
}

/// y *= w.
#[inline(always)]
pub fn scale_in_place(w: f32, y: &mut [f32]) {
    for o in y.iter_mut() {
        *o *= w;
    }
}

/// v_i ← e^(v_i − m) for every element (−inf → 0); returns Σ v_i.
#[inline(always)]
pub fn exp_shifted_sum(v: &mut [f32], m: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if v.len() % 16 == 0 && has_avx512() {
        // SAFETY: feature checked; length multiple of 16.
        return unsafe { x86::exp_shifted_sum(v, m) };
    }
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = exp_neg(*x - m);
        sum += *x;
    }
    sum
}

/// e^x for x ≤ 0 (softmax after subtracting the running max); 0 below −87.3 and for −inf.
/// x = n·ln 2 + r with n = round(x/ln 2) and r computed in two steps (ln 2 split into a short
/// exactly-multiplied high part and a low part) so that |r| ≤ ln2/2 keeps full precision; e^r by a
/// degree-7 Taylor polynomial (truncation < 1e-8 relative); 2^n by building the exponent bits.
#[inline(always)]
pub fn exp_neg(x: f32) -> f32 {
    const LN2_HI: f32 = 0.693_359_4; // 0x3f318000: 9 significant bits, so n·LN2_HI is exact
    const LN2_LO: f32 = -2.121_944_4e-4;
    if x < -87.3 {
        return 0.0;
    }
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0
        + r * (1.0
            + r * (0.5
                + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// out[i] = table[code_i] for packed `bits`-bit codes; `codes` is scratch of out.len() bytes.
#[inline(always)]
pub fn lookup(packed: &[u8], bits: u32, table: &[f32], out: &mut [f32], codes: &mut [u8]) {
    #[cfg(target_arch = "x86_64")]
    {
        if bits == 4 && out.len() % 16 == 0 && table.len() == 16 && has_avx512() {
            // SAFETY: feature checked; lengths checked (out.len()/2 packed bytes are read).
            unsafe { lookup4_avx512(packed, table, out) };
            return;
        }
        if bits <= 4 && out.len() % 16 == 0 && has_avx512() {
            unpack(packed, bits, codes);
            let mut t16 = [0.0f32; 16];
            t16[..table.len()].copy_from_slice(table);
            // SAFETY: feature checked; codes < 2^bits ≤ 16.
            unsafe { lookup_bytes_avx512(codes, &t16, out) };
            return;
        }
    }
    unpack(packed, bits, codes);
    for (o, &c) in out.iter_mut().zip(codes.iter()) {
        *o = table[c as usize];
    }
}

/// Whether the explicit AVX-512 kernels run: the CPU has AVX-512F/BW and `TQ_DISABLE_SIMD` is unset
/// (which forces the portable code everywhere in CPU attention, for testing it).
#[inline(always)]
pub fn avx512_enabled() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_avx512()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn has_avx512() -> bool {
    use std::sync::atomic::{AtomicU8, Ordering};
    static STATE: AtomicU8 = AtomicU8::new(0);
    match STATE.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let yes = std::env::var_os("TQ_DISABLE_SIMD").is_none()
                && std::arch::is_x86_feature_detected!("avx512f")
                && std::arch::is_x86_feature_detected!("avx512bw");
            STATE.store(if yes { 1 } else { 2 }, Ordering::Relaxed);
            yes
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        // SAFETY: this function is only called where AVX-512F was detected; loads stay inside the slices (chunks of 16).
        unsafe {
            let mut acc0 = _mm512_setzero_ps();
            let mut acc1 = _mm512_setzero_ps();
            let n = a.len() / 16;
            let (pa, pb) = (a.as_ptr(), b.as_ptr());
            let mut i = 0;
            while i + 1 < n {
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(16 * i)), _mm512_loadu_ps(pb.add(16 * i)), acc0);
                acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(16 * i + 16)), _mm512_loadu_ps(pb.add(16 * i + 16)), acc1);
                i += 2;
            }
            if i < n {
                acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(pa.add(16 * i)), _mm512_loadu_ps(pb.add(16 * i)), acc0);
            }
            _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1))
        }
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn axpy(w: f32, x: &[f32], y: &mut [f32]) {
        // SAFETY: as in dot: AVX-512F detected; loads and stores stay inside x and y.
        unsafe {
            let wv = _mm512_set1_ps(w);
            for i in 0..x.len() / 16 {
                let py = y.as_mut_ptr().add(16 * i);
                _mm512_storeu_ps(py, _mm512_fmadd_ps(wv, _mm512_loadu_ps(x.as_ptr().add(16 * i)), _mm512_loadu_ps(py)));
            }
        }
    }

    /// Vector form of `exp_neg` (same range reduction; 2^n applied with vscalefps).
    #[inline]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum(v: &mut [f32], m: f32) -> f32 {
        // SAFETY: as in dot: AVX-512F detected; loads and stores stay inside v.
        unsafe {
            let mv = _mm512_set1_ps(m);
            let mut sum = _mm512_setzero_ps();
            let lo_limit = _mm512_set1_ps(-87.3);
            for i in 0..v.len() / 16 {
                let p = v.as_mut_ptr().add(16 * i);
                let x = _mm512_sub_ps(_mm512_loadu_ps(p), mv);
                let keep = _mm512_cmp_ps_mask(x, lo_limit, _CMP_GE_OQ);
                let n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x));
                let mut poly = _mm512_set1_ps(1.0 / 5040.0);
                for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
                    poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
                }
                let e = _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(poly, n));
                _mm512_storeu_ps(p, e);
                sum = _mm512_add_ps(sum, e);
            }
            _mm512_reduce_add_ps(sum)
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lookup4_avx512(packed: &[u8], table: &[f32], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512F detected by the caller; reads stay inside packed and table, writes inside out.
    unsafe {
        let t = _mm512_loadu_ps(table.as_ptr());
        let mask = _mm_set1_epi8(0x0f);
        for (chunk, o) in out.chunks_exact_mut(16).enumerate() {
            // 8 bytes = 16 nibbles; low nibble first (math::packing layout).
            let raw = _mm_loadl_epi64(packed.as_ptr().add(8 * chunk) as *const __m128i);
            let lo = _mm_and_si128(raw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(raw, 4), mask);
            let bytes = _mm_unpacklo_epi8(lo, hi);
            let idx = _mm512_cvtepu8_epi32(bytes);
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_permutexvar_ps(idx, t));
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn lookup_bytes_avx512(codes: &[u8], table: &[f32; 16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512F detected by the caller; reads stay inside codes and table, writes inside out.
    unsafe {
        let t = _mm512_loadu_ps(table.as_ptr());
        for (chunk, o) in out.chunks_exact_mut(16).enumerate() {
            let bytes = _mm_loadu_si128(codes.as_ptr().add(16 * chunk) as *const __m128i);
            let idx = _mm512_cvtepu8_epi32(bytes);
            _mm512_storeu_ps(o.as_mut_ptr(), _mm512_permutexvar_ps(idx, t));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::math::packing::{pack, packed_len};

    #[test]
    fn exp_neg_is_accurate() {
        let mut worst = 0.0f64;
        let mut x = 0.0f32;
        while x > -87.0 {
            let got = exp_neg(x) as f64;
            let want = (x as f64).exp();
            worst = worst.max(((got - want) / want).abs());
            x -= 0.0137;
        }
        assert!(worst < 1e-6, "worst relative error {worst}");
        assert_eq!(exp_neg(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp_neg(0.0), 1.0);
    }

    #[test]
    fn lookup_matches_scalar_for_every_width() {
        for bits in 1..=8u32 {
            for n in [16usize, 64, 128, 24] {
                let codes: Vec<u8> = (0..n).map(|i| ((i * 7 + 3) % (1 << bits)) as u8).collect();
                let mut packed = vec![0u8; packed_len(n, bits)];
                pack(&codes, bits, &mut packed);
                let table: Vec<f32> = (0..1usize << bits).map(|i| i as f32 * 0.5 - 3.0).collect();
                let mut out = vec![0.0f32; n];
                let mut scratch = vec![0u8; n];
                lookup(&packed, bits, &table, &mut out, &mut scratch);
                for (i, &c) in codes.iter().enumerate() {
                    assert_eq!(out[i], table[c as usize], "bits {bits} n {n} i {i}");
                }
            }
        }
    }

    #[test]
    fn vector_kernels_match_portable_ones() {
        let a: Vec<f32> = (0..128).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..128).map(|i| (i as f32 * 0.11).cos()).collect();
        assert!((dot(&a, &b) - dot_portable(&a, &b)).abs() < 1e-5);
        let mut y1 = b.clone();
        axpy(0.7, &a, &mut y1);
        for i in 0..128 {
            assert!((y1[i] - (b[i] + 0.7 * a[i])).abs() < 1e-6);
        }
        let mut v: Vec<f32> = (0..64).map(|i| -(i as f32) * 1.7).collect();
        v[5] = f32::NEG_INFINITY;
        let orig = v.clone();
        let sum = exp_shifted_sum(&mut v, 0.5);
        let mut want = 0.0f64;
        for (i, &x) in orig.iter().enumerate() {
            let e = ((x - 0.5) as f64).exp();
            want += e;
            assert!((v[i] as f64 - e).abs() <= 1e-6 * e + 1e-38, "{i}: {} vs {e}", v[i]);
        }
        assert!(((sum as f64) - want).abs() < 1e-6 * want);
    }

    #[test]
    fn dot_matches_f64() {
        let a: Vec<f32> = (0..131).map(|i| (i as f32 * 0.37).sin()).collect();
        let b: Vec<f32> = (0..131).map(|i| (i as f32 * 0.11).cos()).collect();
        let want: f64 = a.iter().zip(&b).map(|(x, y)| *x as f64 * *y as f64).sum();
        assert!((dot(&a, &b) as f64 - want).abs() < 1e-5);
    }
}
