//! The per-vector scale: its computation and its stored form.
//!
//! A vector's scale is its Euclidean norm ‖x‖ (TurboQuant's choice, and the standalone quantizer's),
//! or ‖x‖ corrected for the shrinkage of the codebook reconstruction (`ScaleRule`; the KV codec's rows),
//! stored as a bf16 bit pattern (2 bytes). bf16 keeps f32's exponent range, so norms from 1e-38 to 3e38 are representable and a
//! finite input never stores inf; its 8-bit significand adds at most 2^-8 relative error to the
//! scale, about 5e-6 to the normalised MSE on average (0.06% of the 4-bit figure, 0.0093).
//!
//! The norm is accumulated in f64 over eight interleaved partial sums (element i goes to sum i mod 8,
//! then ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7))): squares of f32 values are exact in f64, so no input
//! overflows or underflows, and every backend reproduces the same value.

use half::bf16;

/// How a row's stored scale s is derived from ‖x‖ and the codebook reconstruction ĉ = c[idx] of the
/// unit vector y = Π·x/‖x‖ (the reconstruction is x̂ = s·Πᵀ·ĉ). Lloyd–Max centroids shrink (‖ĉ‖ < 1,
/// ⟨y, ĉ⟩ ≈ ‖ĉ‖² ≈ 1 − MSE), so with s = ‖x‖ every inner product with x̂ is scaled by about ⟨y, ĉ⟩.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ScaleRule {
    /// s = ‖x‖ (the paper's Algorithm 1; the standalone quantizer).
    Norm,
    /// s = ‖x‖/‖ĉ‖, so that ‖x̂‖ = ‖x‖.
    NormCorrected,
    /// s = ‖x‖·⟨y, ĉ⟩/‖ĉ‖², the least-squares gain (the s minimising ‖x − x̂‖).
    LeastSquares,
    /// s = ‖x‖/⟨y, ĉ⟩, so that ⟨x̂, x⟩/‖x‖ = ‖x‖: the component of x̂ along x is exact, and an
    /// inner product ⟨q, x̂⟩ is not shrunk towards 0 along x.
    Projection,
}

/// ⟨y, ĉ⟩ and ‖ĉ‖² in f64, over eight interleaved partial sums (as `norm_f64`; products of f32
/// values are exact in f64, so every backend reproduces the same values).
#[inline]
pub fn gain_sums(y: &[f32], c: &[f32]) -> (f64, f64) {
    let (mut dot, mut sq) = ([0.0f64; 8], [0.0f64; 8]);
    for (i, (&a, &b)) in y.iter().zip(c).enumerate() {
        let (a, b) = (a as f64, b as f64);
        dot[i % 8] += a * b;
        sq[i % 8] += b * b;
    }
    (combine8(&dot), combine8(&sq))
}

/// ((s0+s1)+(s2+s3))+((s4+s5)+(s6+s7)).
#[inline]
pub fn combine8(a: &[f64; 8]) -> f64 {
    ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))
}

/// The scale `rule` gives for a vector of norm `norm` whose reconstruction has ⟨y, ĉ⟩ = `dot` and
/// ‖ĉ‖² = `sq` (f64, each operation rounded once, in this order). A zero norm stays 0; a
/// reconstruction with no component (sq or dot not positive, impossible for a non-zero y with
/// this codebook) keeps ‖x‖.
#[inline]
pub fn apply_rule(rule: ScaleRule, norm: f64, dot: f64, sq: f64) -> f64 {
    if norm == 0.0 {
        return 0.0;
    }
    match rule {
        ScaleRule::Norm => norm,
        ScaleRule::NormCorrected if sq > 0.0 => norm / sq.sqrt(),
        ScaleRule::LeastSquares if sq > 0.0 && dot > 0.0 => (norm * dot) / sq,
        ScaleRule::Projection if dot > 0.0 => norm / dot,
        _ => norm,
    }
}

/// ‖x‖ in f64 (see the module comment for the summation order).
#[inline]
pub fn norm_f64(x: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for l in 0..8 {
            let v = c[l] as f64;
            acc[l] += v * v;
        }
    }
    for (l, &v) in chunks.remainder().iter().enumerate() {
        let v = v as f64;
        acc[l] += v * v;
    }
    combine8(&acc).sqrt()
}

/// The stored bf16 bits of a scale, rounded to nearest even and clamped to the finite range.
#[inline]
pub fn encode(scale: f64) -> u16 {
    let v = scale as f32;
    let max = bf16::MAX.to_f32();
    let v = if v > max { max } else { v };
    bf16::from_f32(v).to_bits()
}

/// The scale a stored bf16 pattern stands for.
#[inline]
pub fn decode(bits: u16) -> f32 {
    bf16::from_bits(bits).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn norm_has_no_overflow_or_underflow() {
        let big = vec![3.0e38f32; 128];
        let n = norm_f64(&big);
        assert!(((n / (3.0e38 * 128f64.sqrt())) - 1.0).abs() < 1e-7);
        assert_eq!(decode(encode(n)), bf16::MAX.to_f32());
        let tiny = vec![1.0e-40f32; 7];
        let n = norm_f64(&tiny);
        let exact = (1.0e-40f32 as f64) * 7f64.sqrt();
        assert!(((n / exact) - 1.0).abs() < 1e-12);
    }

    #[test]
    fn encode_rounds_to_nearest() {
        // The nearest bf16 to the f32 value, ties to the even pattern, found by comparing the
        // neighbouring patterns' exact values (not through a conversion routine). The cases include
        // values that truncation would get wrong (1 + 0.75·2⁻⁷ rounds up), both kinds of tie
        // (1 + 2⁻⁸ to 1, 1 + 3·2⁻⁸ to 1 + 2⁻⁶) and values of very different magnitudes.
        let ulp = 2f64.powi(-7);
        let cases = [1.0f64, 2.71, 1e-30, 1e6, 123456.789, 1.0 + 0.75 * ulp, 1.0 + 0.5 * ulp, 1.0 + 1.5 * ulp, 0.3, 7.99, 1e-38, 3e38];
        for &v in &cases {
            let v32 = v as f32;
            let near = (v32.to_bits() >> 16) as u16;
            let mut best = near;
            for b in [near.wrapping_sub(1), near, near + 1] {
                let (d, db) = ((decode(b) - v32).abs(), (decode(best) - v32).abs());
                if d < db || (d == db && b % 2 == 0) {
                    best = b;
                }
            }
            assert_eq!(encode(v), best, "{v}: encoded {} (bits {:#06x}), nearest {} ({best:#06x})", decode(encode(v)), encode(v), decode(best));
        }
        assert_eq!(decode(encode(1.0 + 0.75 * ulp)), (1.0 + ulp) as f32, "rounds up, not down");
        assert_eq!(decode(encode(0.0)), 0.0);
    }
}
