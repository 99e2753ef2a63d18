//! One vector type for the explicit x86 kernels of the CPU backend, with two instruction sets
//! behind it: AVX-512 (16 f32 lanes) and AVX2 + FMA (8 lanes, for CPUs without AVX-512). A kernel
//! is written once over `Vector` (`tile`, `simd`) and instantiated per instruction set inside a
//! `#[target_feature]` entry point, where these `#[inline(always)]` methods and the intrinsics they
//! call are compiled with that entry point's features.
//!
//! Contract of every method: it runs inside a function compiled with its type's features (AVX-512F
//! and AVX-512BW for `Avx512`, AVX2 and FMA for `Avx2`) on a CPU that has them; pointer arguments
//! address `LANES` elements (bytes for codes, `LANES / 2` bytes for packed nibbles) the caller owns.

use std::arch::x86_64::*;

/// A register of f32 lanes and the operations the kernels use.
pub trait Vector: Copy {
    /// f32 lanes per register.
    const LANES: usize;
    /// Registers of lanes per register block in the matrix kernels (what the register file holds
    /// beside the accumulators of 4 rows).
    const MAX_W: usize;
    /// A per-lane predicate.
    type Mask: Copy;
    /// A 16-entry f32 table prepared for the lookups.
    type Table: Copy;

    unsafe fn zero() -> Self;
    unsafe fn splat(x: f32) -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn store(self, p: *mut f32);
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn max(self, o: Self) -> Self;
    /// self·b + c with one rounding.
    unsafe fn fmadd(self, b: Self, c: Self) -> Self;
    unsafe fn gt(self, o: Self) -> Self::Mask;
    unsafe fn eq(self, o: Self) -> Self::Mask;
    unsafe fn any(m: Self::Mask) -> bool;
    /// a where m holds, b elsewhere.
    unsafe fn select(m: Self::Mask, a: Self, b: Self) -> Self;
    /// e^x for x ≤ 0 in every lane: the range reduction and polynomial of `simd::exp_neg`; 0 below
    /// −87.3, for −inf and for NaN.
    unsafe fn exp_neg(self) -> Self;
    /// Σ of the lanes.
    unsafe fn reduce_add(self) -> f32;
    /// The lane sums of four registers, [Σv0, Σv1, Σv2, Σv3].
    unsafe fn reduce4(v: [Self; 4]) -> [f32; 4];
    /// Prepare the 16 floats at `t`.
    unsafe fn table(t: *const f32) -> Self::Table;
    /// table[code] for the LANES code bytes (each < 16) at `codes`.
    unsafe fn lookup_bytes(t: Self::Table, codes: *const u8) -> Self;
    /// table[code] for LANES 4-bit codes packed two per byte, low nibble first, at `packed`.
    unsafe fn lookup_nibbles(t: Self::Table, packed: *const u8) -> Self;
    /// A 32-entry f32 table prepared for `lookup_bytes32`.
    type Table32: Copy;
    /// Prepare the 32 floats at `t`.
    unsafe fn table32(t: *const f32) -> Self::Table32;
    /// table[code] for the LANES code bytes (each < 32) at `codes`.
    unsafe fn lookup_bytes32(t: Self::Table32, codes: *const u8) -> Self;
    /// t[code] for the LANES code bytes at `codes`, gathered from the 256 floats at `t`.
    unsafe fn gather_bytes(t: *const f32, codes: *const u8) -> Self;
}

/// The terms of `exp_neg` shared by both instruction sets: ln 2 split so that n·LN2_HI is exact,
/// and the Taylor coefficients of e^r from degree 6 down to 0 (degree 7 is 1/5040).
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
const EXP_COEFFS: [f32; 7] = [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0];
const EXP_LOWEST: f32 = -87.3;

/// Bytes [lo nibble of b0, hi nibble of b0, lo of b1, ...] of the bytes in the low half of `raw`.
#[inline(always)]
unsafe fn split_nibbles(raw: __m128i) -> __m128i {
    // SAFETY: SSE2, implied by both instruction sets (the module contract).
    unsafe {
        let mask = _mm_set1_epi8(0x0f);
        _mm_unpacklo_epi8(_mm_and_si128(raw, mask), _mm_and_si128(_mm_srli_epi16::<4>(raw), mask))
    }
}

/// AVX-512F/BW: 16 lanes.
#[derive(Clone, Copy)]
pub struct Avx512(__m512);

/// AVX2 + FMA: 8 lanes.
#[derive(Clone, Copy)]
pub struct Avx2(__m256);

impl Vector for Avx512 {
    const LANES: usize = 16;
    const MAX_W: usize = 4;
    type Mask = __mmask16;
    type Table = __m512;

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: AVX-512F; p addresses 16 readable floats (the module contract).
        Self(unsafe { _mm512_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: AVX-512F; p addresses 16 writable floats (the module contract).
        unsafe { _mm512_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_max_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __mmask16 {
        // SAFETY: AVX-512F (the module contract).
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn eq(self, o: Self) -> __mmask16 {
        // SAFETY: AVX-512F (the module contract).
        unsafe { _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn any(m: __mmask16) -> bool {
        m != 0
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, a: Self, b: Self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        Self(unsafe { _mm512_mask_mov_ps(b.0, m, a.0) })
    }
    #[inline(always)]
    unsafe fn exp_neg(self) -> Self {
        // SAFETY: AVX-512F (the module contract).
        unsafe {
            let x = self.0;
            let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(EXP_LOWEST));
            let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
                x,
                _mm512_set1_ps(std::f32::consts::LOG2_E),
            ));
            let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_LO), _mm512_fnmadd_ps(n, _mm512_set1_ps(LN2_HI), x));
            let mut poly = _mm512_set1_ps(1.0 / 5040.0);
            for c in EXP_COEFFS {
                poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
            }
            // 2^n applied with vscalefps.
            Self(_mm512_maskz_mov_ps(keep, _mm512_scalef_ps(poly, n)))
        }
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        // SAFETY: AVX-512F (the module contract).
        unsafe { _mm512_reduce_add_ps(self.0) }
    }
    #[inline(always)]
    unsafe fn reduce4(v: [Self; 4]) -> [f32; 4] {
        // SAFETY: AVX-512F (the module contract).
        unsafe {
            let [a, b, c, d] = v.map(|x| x.0);
            // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same for c, d, then [a, b, c, d].
            let t0 = _mm512_add_ps(_mm512_unpacklo_ps(a, b), _mm512_unpackhi_ps(a, b));
            let t1 = _mm512_add_ps(_mm512_unpacklo_ps(c, d), _mm512_unpackhi_ps(c, d));
            let u = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(t0, t1), _mm512_shuffle_ps::<0xEE>(t0, t1));
            // Sum the four 128-bit lanes.
            let v = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0x4E>(u, u));
            let w = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0xB1>(v, v));
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), _mm512_castps512_ps128(w));
            sums
        }
    }
    #[inline(always)]
    unsafe fn table(t: *const f32) -> __m512 {
        // SAFETY: AVX-512F; t addresses 16 floats (the module contract).
        unsafe { _mm512_loadu_ps(t) }
    }
    #[inline(always)]
    unsafe fn lookup_bytes(t: __m512, codes: *const u8) -> Self {
        // SAFETY: AVX-512F; codes addresses 16 bytes (the module contract).
        unsafe { Self(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(_mm_loadu_si128(codes as *const __m128i)), t)) }
    }
    #[inline(always)]
    unsafe fn lookup_nibbles(t: __m512, packed: *const u8) -> Self {
        // SAFETY: AVX-512F; packed addresses 8 bytes (the module contract).
        unsafe {
            let bytes = split_nibbles(_mm_loadl_epi64(packed as *const __m128i));
            Self(_mm512_permutexvar_ps(_mm512_cvtepu8_epi32(bytes), t))
        }
    }
    type Table32 = (__m512, __m512);
    #[inline(always)]
    unsafe fn table32(t: *const f32) -> (__m512, __m512) {
        // SAFETY: AVX-512F; t addresses 32 floats (the module contract).
        unsafe { (_mm512_loadu_ps(t), _mm512_loadu_ps(t.add(16))) }
    }
    #[inline(always)]
    unsafe fn lookup_bytes32(t: (__m512, __m512), codes: *const u8) -> Self {
        // SAFETY: AVX-512F; codes addresses 16 bytes (the module contract); bit 4 of an index picks
        // the second register.
        unsafe { Self(_mm512_permutex2var_ps(t.0, _mm512_cvtepu8_epi32(_mm_loadu_si128(codes as *const __m128i)), t.1)) }
    }
    #[inline(always)]
    unsafe fn gather_bytes(t: *const f32, codes: *const u8) -> Self {
        // SAFETY: AVX-512F; codes addresses 16 bytes and every t[code] (code < 256) is readable
        // (the module contract).
        unsafe { Self(_mm512_i32gather_ps::<4>(_mm512_cvtepu8_epi32(_mm_loadu_si128(codes as *const __m128i)), t)) }
    }
}

impl Avx2 {
    /// table[idx] for 8 indices < 16: two 8-entry permutes, chosen by bit 3 of the index.
    #[inline(always)]
    unsafe fn permute16(t: (__m256, __m256), idx: __m256i) -> Self {
        // SAFETY: AVX2 (the module contract).
        unsafe {
            let lo = _mm256_permutevar8x32_ps(t.0, idx);
            let hi = _mm256_permutevar8x32_ps(t.1, idx);
            Self(_mm256_blendv_ps(lo, hi, _mm256_castsi256_ps(_mm256_slli_epi32::<28>(idx))))
        }
    }
}

impl Vector for Avx2 {
    const LANES: usize = 8;
    const MAX_W: usize = 2;
    type Mask = __m256;
    type Table = (__m256, __m256);

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_setzero_ps() })
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_set1_ps(x) })
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        // SAFETY: AVX; p addresses 8 readable floats (the module contract).
        Self(unsafe { _mm256_loadu_ps(p) })
    }
    #[inline(always)]
    unsafe fn store(self, p: *mut f32) {
        // SAFETY: AVX; p addresses 8 writable floats (the module contract).
        unsafe { _mm256_storeu_ps(p, self.0) }
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_max_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn fmadd(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA (the module contract).
        Self(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __m256 {
        // SAFETY: AVX (the module contract).
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn eq(self, o: Self) -> __m256 {
        // SAFETY: AVX (the module contract).
        unsafe { _mm256_cmp_ps::<_CMP_EQ_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn any(m: __m256) -> bool {
        // SAFETY: AVX (the module contract).
        unsafe { _mm256_movemask_ps(m) != 0 }
    }
    #[inline(always)]
    unsafe fn select(m: __m256, a: Self, b: Self) -> Self {
        // SAFETY: AVX (the module contract).
        Self(unsafe { _mm256_blendv_ps(b.0, a.0, m) })
    }
    #[inline(always)]
    unsafe fn exp_neg(self) -> Self {
        // SAFETY: AVX2 + FMA (the module contract).
        unsafe {
            let x = self.0;
            let keep = _mm256_cmp_ps::<_CMP_GE_OQ>(x, _mm256_set1_ps(EXP_LOWEST));
            let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                x,
                _mm256_set1_ps(std::f32::consts::LOG2_E),
            ));
            let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x));
            let mut poly = _mm256_set1_ps(1.0 / 5040.0);
            for c in EXP_COEFFS {
                poly = _mm256_fmadd_ps(poly, r, _mm256_set1_ps(c));
            }
            // 2^n from its exponent bits: n ≥ −126 wherever `keep` holds, so the result is normal;
            // the lanes outside `keep` (whose n may be anything) are cleared.
            let pow = _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127))));
            Self(_mm256_and_ps(keep, _mm256_mul_ps(poly, pow)))
        }
    }
    #[inline(always)]
    unsafe fn reduce_add(self) -> f32 {
        // SAFETY: AVX (the module contract).
        unsafe {
            let s = _mm_add_ps(_mm256_castps256_ps128(self.0), _mm256_extractf128_ps::<1>(self.0));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }
    }
    #[inline(always)]
    unsafe fn reduce4(v: [Self; 4]) -> [f32; 4] {
        // SAFETY: AVX (the module contract).
        unsafe {
            let [a, b, c, d] = v.map(|x| x.0);
            // Per 128-bit half: [a0+a1, a2+a3, b0+b1, b2+b3], [c.., d..], then [a, b, c, d].
            let u = _mm256_hadd_ps(_mm256_hadd_ps(a, b), _mm256_hadd_ps(c, d));
            let s = _mm_add_ps(_mm256_castps256_ps128(u), _mm256_extractf128_ps::<1>(u));
            let mut sums = [0.0f32; 4];
            _mm_storeu_ps(sums.as_mut_ptr(), s);
            sums
        }
    }
    #[inline(always)]
    unsafe fn table(t: *const f32) -> (__m256, __m256) {
        // SAFETY: AVX; t addresses 16 floats (the module contract).
        unsafe { (_mm256_loadu_ps(t), _mm256_loadu_ps(t.add(8))) }
    }
    #[inline(always)]
    unsafe fn lookup_bytes(t: (__m256, __m256), codes: *const u8) -> Self {
        // SAFETY: AVX2; codes addresses 8 bytes (the module contract).
        unsafe { Self::permute16(t, _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes as *const __m128i))) }
    }
    #[inline(always)]
    unsafe fn lookup_nibbles(t: (__m256, __m256), packed: *const u8) -> Self {
        // SAFETY: AVX2; packed addresses 4 bytes (the module contract).
        unsafe {
            let raw = _mm_cvtsi32_si128((packed as *const i32).read_unaligned());
            Self::permute16(t, _mm256_cvtepu8_epi32(split_nibbles(raw)))
        }
    }
    type Table32 = ((__m256, __m256), (__m256, __m256));
    #[inline(always)]
    unsafe fn table32(t: *const f32) -> Self::Table32 {
        // SAFETY: AVX; t addresses 32 floats (the module contract).
        unsafe { (Self::table(t), Self::table(t.add(16))) }
    }
    #[inline(always)]
    unsafe fn lookup_bytes32(t: Self::Table32, codes: *const u8) -> Self {
        // SAFETY: AVX2; codes addresses 8 bytes (the module contract). Each half of the table by
        // bits 0-3 of the index (permute16 ignores bit 4), then bit 4 picks the half.
        unsafe {
            let idx = _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes as *const __m128i));
            let (lo, hi) = (Self::permute16(t.0, idx), Self::permute16(t.1, idx));
            Self(_mm256_blendv_ps(lo.0, hi.0, _mm256_castsi256_ps(_mm256_slli_epi32::<27>(idx))))
        }
    }
    #[inline(always)]
    unsafe fn gather_bytes(t: *const f32, codes: *const u8) -> Self {
        // SAFETY: AVX2; codes addresses 8 bytes and every t[code] (code < 256) is readable (the
        // module contract).
        unsafe { Self(_mm256_i32gather_ps::<4>(t, _mm256_cvtepu8_epi32(_mm_loadl_epi64(codes as *const __m128i)))) }
    }
}

/// Defines, for each generic kernel `$generic::<V: Vector>`, a function `$name(level, args)` that
/// runs it as AVX-512 or AVX2 inside an entry point compiled with that instruction set's features.
/// Its safety contract is the kernel's, plus: `level` is not `Portable` and this CPU has its features.
macro_rules! per_level {
    ($($(#[$attr:meta])* pub unsafe fn $name:ident($($a:ident: $t:ty),* $(,)?) $(-> $r:ty)? => $generic:ident;)*) => {
        $(
            $(#[$attr])*
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn $name(level: $crate::backend::cpu::simd::Level, $($a: $t),*) $(-> $r)? {
                #[target_feature(enable = "avx512f,avx512bw")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn on_avx512($($a: $t),*) $(-> $r)? {
                    // SAFETY: the contract of the kernel, which the caller of `$name` upholds.
                    unsafe { $generic::<$crate::backend::cpu::vector::Avx512>($($a),*) }
                }
                #[target_feature(enable = "avx2,fma")]
                #[allow(clippy::too_many_arguments)]
                unsafe fn on_avx2($($a: $t),*) $(-> $r)? {
                    // SAFETY: as above.
                    unsafe { $generic::<$crate::backend::cpu::vector::Avx2>($($a),*) }
                }
                match level {
                    // SAFETY: the caller detected AVX-512F/BW and upholds the kernel's contract.
                    $crate::backend::cpu::simd::Level::Avx512 => unsafe { on_avx512($($a),*) },
                    // SAFETY: the caller detected AVX2 + FMA and upholds the kernel's contract.
                    $crate::backend::cpu::simd::Level::Avx2 => unsafe { on_avx2($($a),*) },
                    $crate::backend::cpu::simd::Level::Portable => unreachable!("explicit kernels run at an x86 level"),
                }
            }
        )*
    };
}
pub(crate) use per_level;
