//! The two matrix kernels of the tiled (prefill) attention path, `attend::compressed_tiled`, and its
//! softmax step, plus the value accumulation of the row-by-row path (`accumulate_lanes`), each in a
//! portable form and an AVX-512 form.
//!
//! Layout: a tile has `lp` lanes (the (query token, head) pairs of the tile, padded to a multiple of
//! 16) and a block of `nb` cells whose compressed rows were unpacked once into `rows` ([nb][d], the
//! centroid values of each row). Lanes are the vector dimension: the rotated queries are stored
//! transposed (`qt`, [d][lp]), scores and probabilities as [nb][lp], and the value accumulators
//! transposed (`at`, [d][lp]). Every multiply-add then uses a full vector of lanes against one
//! broadcast element of an unpacked row, with no horizontal reductions.
//!
//! The AVX-512 forms keep 4 cells × up to 4 vectors (64 lanes) of accumulators in registers; they
//! compute the same sums as the portable forms, in the same order over the summed index, except that
//! a multiply-add is fused (one rounding instead of two), so the two agree to f32 rounding (a test
//! checks them against each other and a float64 reference).

use super::simd::exp_neg;

/// Lanes per vector register (f32 in AVX-512).
pub const VECTOR: usize = 16;

/// sc[j·lp + L] = row_scale[j] · Σ_i rows[j·d + i] · qt[i·lp + L] + lane_bias[L] for j < nb, L < lp.
#[allow(clippy::too_many_arguments)]
pub fn scores(rows: &[f32], qt: &[f32], row_scale: &[f32], lane_bias: &[f32], d: usize, lp: usize, nb: usize, sc: &mut [f32], avx512: bool) {
    assert!(lp.is_multiple_of(VECTOR) && rows.len() >= nb * d && qt.len() >= d * lp && sc.len() >= nb * lp);
    assert!(row_scale.len() >= nb && lane_bias.len() >= lp);
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: the caller passes avx512 = true only where AVX-512F was detected; the lengths are
        // asserted above and the kernels index inside them.
        unsafe { x86::scores(rows.as_ptr(), qt.as_ptr(), row_scale.as_ptr(), lane_bias.as_ptr(), d, lp, nb, sc.as_mut_ptr()) };
        return;
    }
    let _ = avx512;
    for j in 0..nb {
        let out = &mut sc[j * lp..(j + 1) * lp];
        out.fill(0.0);
        for i in 0..d {
            let k = rows[j * d + i];
            for (o, &q) in out.iter_mut().zip(&qt[i * lp..(i + 1) * lp]) {
                *o += k * q;
            }
        }
        for (o, &b) in out.iter_mut().zip(lane_bias) {
            *o = *o * row_scale[j] + b;
        }
    }
}

/// at[i·lp + L] += Σ_j rows[j·d + i] · p[j·lp + L] for i < d, L < lp.
pub fn accumulate(rows: &[f32], p: &[f32], d: usize, lp: usize, nb: usize, at: &mut [f32], avx512: bool) {
    assert!(lp.is_multiple_of(VECTOR) && rows.len() >= nb * d && p.len() >= nb * lp && at.len() >= d * lp);
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: as in `scores`.
        unsafe { x86::accumulate(rows.as_ptr(), p.as_ptr(), d, lp, nb, at.as_mut_ptr()) };
        return;
    }
    let _ = avx512;
    for j in 0..nb {
        let pr = &p[j * lp..(j + 1) * lp];
        for i in 0..d {
            let v = rows[j * d + i];
            for (a, &w) in at[i * lp..(i + 1) * lp].iter_mut().zip(pr) {
                *a += v * w;
            }
        }
    }
}

/// out[lane] = Σ_i q[lane·d + i] · row[i] for lane < lanes: the key scores of one row in the
/// row-by-row path. The AVX-512 form reduces the partial sums of 4 lanes together (one shuffle tree
/// for 4 dot products instead of one per product).
pub fn dots(row: &[f32], q: &[f32], lanes: usize, d: usize, out: &mut [f32], avx512: bool) {
    assert!(row.len() >= d && q.len() >= lanes * d && out.len() >= lanes);
    #[cfg(target_arch = "x86_64")]
    if avx512 && d.is_multiple_of(VECTOR) {
        // SAFETY: as in `scores`; d is a multiple of 16 as the kernel requires.
        unsafe { x86::dots(row.as_ptr(), q.as_ptr(), lanes, d, out.as_mut_ptr()) };
        return;
    }
    let _ = avx512;
    for (lane, o) in out[..lanes].iter_mut().enumerate() {
        *o = super::simd::dot(&q[lane * d..(lane + 1) * d], &row[..d]);
    }
}

/// acc[lane·d + i] += Σ_j p[lane·p_stride + j] · rows[j·d + i] for lane < lanes, i < d: the value
/// accumulation of the row-by-row path (lanes in their own rows of `acc`, as few as one), with the
/// unpacked rows of a block read once per group of up to 4 lanes instead of once per lane.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_lanes(rows: &[f32], p: &[f32], p_stride: usize, lanes: usize, d: usize, nb: usize, acc: &mut [f32], avx512: bool) {
    assert!(rows.len() >= nb * d && acc.len() >= lanes * d && nb <= p_stride && (lanes == 0 || p.len() >= (lanes - 1) * p_stride + nb));
    #[cfg(target_arch = "x86_64")]
    if avx512 && d.is_multiple_of(VECTOR) {
        // SAFETY: as in `scores`; d is a multiple of 16 as the kernel requires.
        unsafe { x86::accumulate_lanes(rows.as_ptr(), p.as_ptr(), p_stride, lanes, d, nb, acc.as_mut_ptr()) };
        return;
    }
    let _ = avx512;
    for lane in 0..lanes {
        let a = &mut acc[lane * d..(lane + 1) * d];
        for j in 0..nb {
            let w = p[lane * p_stride + j];
            for (x, &v) in a.iter_mut().zip(&rows[j * d..(j + 1) * d]) {
                *x += w * v;
            }
        }
    }
}

/// One online-softmax step over a block of scores ([nb][lp]) for every lane: raise the running max
/// `m` to the block's, rescale the running sum `l` and the accumulators `at` ([d][lp]) by
/// e^(m_old − m_new), replace each score s by e^(s − m_new) and add it to `l`, then multiply each
/// cell's row of probabilities by `weight[j]` (the value scale, which `l` must not include).
/// Lanes that have seen no visible cell keep m = −inf, l = 0.
#[allow(clippy::too_many_arguments)]
pub fn softmax_step(sc: &mut [f32], weight: &[f32], m: &mut [f32], l: &mut [f32], at: &mut [f32], d: usize, lp: usize, nb: usize, avx512: bool) {
    assert!(lp.is_multiple_of(VECTOR) && sc.len() >= nb * lp && weight.len() >= nb && m.len() >= lp && l.len() >= lp && at.len() >= d * lp);
    #[cfg(target_arch = "x86_64")]
    if avx512 {
        // SAFETY: as in `scores`.
        unsafe { x86::softmax_step(sc.as_mut_ptr(), weight.as_ptr(), m.as_mut_ptr(), l.as_mut_ptr(), at.as_mut_ptr(), d, lp, nb) };
        return;
    }
    let _ = avx512;
    for lane in 0..lp {
        let block_max = (0..nb).map(|j| sc[j * lp + lane]).fold(f32::NEG_INFINITY, f32::max);
        let new_m = block_max.max(m[lane]);
        // A lane with nothing visible yet shifts by 0: every e^(−inf − 0) is 0.
        let shift = if new_m == f32::NEG_INFINITY { 0.0 } else { new_m };
        if new_m > m[lane] {
            let corr = exp_neg(m[lane] - shift);
            l[lane] *= corr;
            for i in 0..d {
                at[i * lp + lane] *= corr;
            }
            m[lane] = new_m;
        }
        for j in 0..nb {
            let e = exp_neg(sc[j * lp + lane] - shift);
            l[lane] += e;
            sc[j * lp + lane] = e * weight[j];
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use super::VECTOR;

    /// Cells per register block of `scores`, value dimensions per register block of `accumulate`.
    const BLOCK_ROWS: usize = 4;
    /// Vector registers of lanes per register block (64 lanes).
    const MAX_W: usize = 4;

    /// Runs `$f::<W>` for lane chunks of MAX_W vectors, then the remainder.
    macro_rules! over_lane_chunks {
        ($lp:expr, |$c0:ident, $w:ident| $body:expr) => {{
            let nv = $lp / VECTOR;
            let mut v0 = 0;
            while v0 < nv {
                let $w = (nv - v0).min(MAX_W);
                let $c0 = v0 * VECTOR;
                $body;
                v0 += $w;
            }
        }};
    }

    /// # Safety
    /// AVX-512F; `rows` holds nb·d, `qt` d·lp and `sc` nb·lp elements, lp a multiple of 16.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn scores(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, nb: usize, sc: *mut f32) {
        over_lane_chunks!(lp, |c0, w| {
            // SAFETY: c0 + 16·w ≤ lp: the chunk lies inside every lane row.
            unsafe {
                let (qt, bias, sc) = (qt.add(c0), lane_bias.add(c0), sc.add(c0));
                match w {
                    1 => scores_chunk::<1>(rows, qt, row_scale, bias, d, lp, nb, sc),
                    2 => scores_chunk::<2>(rows, qt, row_scale, bias, d, lp, nb, sc),
                    3 => scores_chunk::<3>(rows, qt, row_scale, bias, d, lp, nb, sc),
                    _ => scores_chunk::<4>(rows, qt, row_scale, bias, d, lp, nb, sc),
                }
            }
        })
    }

    #[allow(clippy::too_many_arguments)]
    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn scores_chunk<const W: usize>(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, nb: usize, sc: *mut f32) {
        let mut j = 0;
        while j + BLOCK_ROWS <= nb {
            // SAFETY: cells j..j+4 < nb; the callee reads W vectors of lanes at qt + i·lp.
            unsafe { scores_cells::<W, BLOCK_ROWS>(rows.add(j * d), qt, row_scale.add(j), lane_bias, d, lp, sc.add(j * lp)) };
            j += BLOCK_ROWS;
        }
        while j < nb {
            // SAFETY: cell j < nb.
            unsafe { scores_cells::<W, 1>(rows.add(j * d), qt, row_scale.add(j), lane_bias, d, lp, sc.add(j * lp)) };
            j += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_cells<const W: usize, const J: usize>(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, sc: *mut f32) {
        // SAFETY: AVX-512F (callers are target_feature functions); reads J rows of d elements and J
        // row scales, d lane rows of W vectors and W vectors of biases, writes J lane rows of W
        // vectors, all inside the caller's buffers.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); W]; J];
            for i in 0..d {
                let mut q = [_mm512_setzero_ps(); W];
                for (w, qv) in q.iter_mut().enumerate() {
                    *qv = _mm512_loadu_ps(qt.add(i * lp + w * VECTOR));
                }
                for (jj, a) in acc.iter_mut().enumerate() {
                    let k = _mm512_set1_ps(*rows.add(jj * d + i));
                    for w in 0..W {
                        a[w] = _mm512_fmadd_ps(k, q[w], a[w]);
                    }
                }
            }
            for (jj, a) in acc.iter().enumerate() {
                let ks = _mm512_set1_ps(*row_scale.add(jj));
                for (w, &v) in a.iter().enumerate() {
                    let out = _mm512_fmadd_ps(v, ks, _mm512_loadu_ps(lane_bias.add(w * VECTOR)));
                    _mm512_storeu_ps(sc.add(jj * lp + w * VECTOR), out);
                }
            }
        }
    }

    /// # Safety
    /// AVX-512F; `rows` holds nb·d, `p` nb·lp and `at` d·lp elements, lp a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        over_lane_chunks!(lp, |c0, w| {
            // SAFETY: as in `scores`.
            unsafe {
                match w {
                    1 => accumulate_chunk::<1>(rows, p.add(c0), d, lp, nb, at.add(c0)),
                    2 => accumulate_chunk::<2>(rows, p.add(c0), d, lp, nb, at.add(c0)),
                    3 => accumulate_chunk::<3>(rows, p.add(c0), d, lp, nb, at.add(c0)),
                    _ => accumulate_chunk::<4>(rows, p.add(c0), d, lp, nb, at.add(c0)),
                }
            }
        })
    }

    #[inline]
    #[target_feature(enable = "avx512f")]
    unsafe fn accumulate_chunk<const W: usize>(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        let mut i = 0;
        while i + BLOCK_ROWS <= d {
            // SAFETY: dimensions i..i+4 < d.
            unsafe { accumulate_dims::<W, BLOCK_ROWS>(rows.add(i), p, d, lp, nb, at.add(i * lp)) };
            i += BLOCK_ROWS;
        }
        while i < d {
            // SAFETY: dimension i < d.
            unsafe { accumulate_dims::<W, 1>(rows.add(i), p, d, lp, nb, at.add(i * lp)) };
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn accumulate_dims<const W: usize, const I: usize>(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        // SAFETY: AVX-512F (callers are target_feature functions); reads I elements of nb rows of
        // stride d, nb lane rows of W vectors, and updates I lane rows of W vectors of `at`.
        unsafe {
            let mut acc = [[_mm512_setzero_ps(); W]; I];
            for (ii, a) in acc.iter_mut().enumerate() {
                for (w, v) in a.iter_mut().enumerate() {
                    *v = _mm512_loadu_ps(at.add(ii * lp + w * VECTOR));
                }
            }
            for j in 0..nb {
                let mut pv = [_mm512_setzero_ps(); W];
                for (w, x) in pv.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(p.add(j * lp + w * VECTOR));
                }
                for (ii, a) in acc.iter_mut().enumerate() {
                    let v = _mm512_set1_ps(*rows.add(j * d + ii));
                    for w in 0..W {
                        a[w] = _mm512_fmadd_ps(v, pv[w], a[w]);
                    }
                }
            }
            for (ii, a) in acc.iter().enumerate() {
                for (w, &v) in a.iter().enumerate() {
                    _mm512_storeu_ps(at.add(ii * lp + w * VECTOR), v);
                }
            }
        }
    }

    /// # Safety
    /// AVX-512F; `row` holds d elements, `q` lanes·d, `out` lanes; d a multiple of 16.
    #[target_feature(enable = "avx512f")]
    pub unsafe fn dots(row: *const f32, q: *const f32, lanes: usize, d: usize, out: *mut f32) {
        // SAFETY: reads inside row[..d] and the lanes' rows of q, writes out[..lanes].
        unsafe {
            let mut l0 = 0;
            while l0 < lanes {
                let g = (lanes - l0).min(4);
                let mut acc = [_mm512_setzero_ps(); 4];
                for i in (0..d).step_by(VECTOR) {
                    let r = _mm512_loadu_ps(row.add(i));
                    for (k, a) in acc.iter_mut().enumerate().take(g) {
                        *a = _mm512_fmadd_ps(_mm512_loadu_ps(q.add((l0 + k) * d + i)), r, *a);
                    }
                }
                // Per 128-bit lane: [a0+a2, b0+b2, a1+a3, b1+b3], the same for c, d, then [a, b, c, d].
                let t0 = _mm512_add_ps(_mm512_unpacklo_ps(acc[0], acc[1]), _mm512_unpackhi_ps(acc[0], acc[1]));
                let t1 = _mm512_add_ps(_mm512_unpacklo_ps(acc[2], acc[3]), _mm512_unpackhi_ps(acc[2], acc[3]));
                let u = _mm512_add_ps(_mm512_shuffle_ps::<0x44>(t0, t1), _mm512_shuffle_ps::<0xEE>(t0, t1));
                // Sum the four 128-bit lanes.
                let v = _mm512_add_ps(u, _mm512_shuffle_f32x4::<0x4E>(u, u));
                let w = _mm512_add_ps(v, _mm512_shuffle_f32x4::<0xB1>(v, v));
                let mut sums = [0.0f32; 4];
                _mm_storeu_ps(sums.as_mut_ptr(), _mm512_castps512_ps128(w));
                for (k, &x) in sums.iter().enumerate().take(g) {
                    *out.add(l0 + k) = x;
                }
                l0 += g;
            }
        }
    }

    /// # Safety
    /// AVX-512F; `rows` holds nb·d elements, `p` lanes rows of stride p_stride ≥ nb, `acc` lanes·d;
    /// d a multiple of 16.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn accumulate_lanes(rows: *const f32, p: *const f32, p_stride: usize, lanes: usize, d: usize, nb: usize, acc: *mut f32) {
        let nv = d / VECTOR;
        let mut v0 = 0;
        while v0 < nv {
            let w = (nv - v0).min(MAX_W);
            let mut l0 = 0;
            while l0 < lanes {
                let g = (lanes - l0).min(MAX_W);
                // SAFETY: dimensions v0·16 .. (v0 + w)·16 ≤ d and lanes l0 .. l0 + g ≤ lanes.
                unsafe {
                    let (rows, p, acc) = (rows.add(v0 * VECTOR), p.add(l0 * p_stride), acc.add(l0 * d + v0 * VECTOR));
                    macro_rules! go {
                        ($($g:literal),*) => {
                            match (g, w) {
                                $( ($g, 1) => lanes_chunk::<$g, 1>(rows, p, p_stride, d, nb, acc),
                                   ($g, 2) => lanes_chunk::<$g, 2>(rows, p, p_stride, d, nb, acc),
                                   ($g, 3) => lanes_chunk::<$g, 3>(rows, p, p_stride, d, nb, acc),
                                   ($g, _) => lanes_chunk::<$g, 4>(rows, p, p_stride, d, nb, acc), )*
                                _ => unreachable!("lane groups have 1 to 4 lanes"),
                            }
                        };
                    }
                    go!(1, 2, 3, 4)
                }
                l0 += g;
            }
            v0 += w;
        }
    }

    #[inline(always)]
    unsafe fn lanes_chunk<const G: usize, const W: usize>(rows: *const f32, p: *const f32, p_stride: usize, d: usize, nb: usize, acc: *mut f32) {
        // SAFETY: AVX-512F (the caller is a target_feature function); reads W vectors of nb rows of
        // stride d, G lanes' nb weights, and updates W vectors of G accumulator rows of stride d.
        unsafe {
            let mut a = [[_mm512_setzero_ps(); W]; G];
            for (lane, al) in a.iter_mut().enumerate() {
                for (w, x) in al.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(acc.add(lane * d + w * VECTOR));
                }
            }
            for j in 0..nb {
                let mut r = [_mm512_setzero_ps(); W];
                for (w, x) in r.iter_mut().enumerate() {
                    *x = _mm512_loadu_ps(rows.add(j * d + w * VECTOR));
                }
                for (lane, al) in a.iter_mut().enumerate() {
                    let pw = _mm512_set1_ps(*p.add(lane * p_stride + j));
                    for w in 0..W {
                        al[w] = _mm512_fmadd_ps(pw, r[w], al[w]);
                    }
                }
            }
            for (lane, al) in a.iter().enumerate() {
                for (w, &x) in al.iter().enumerate() {
                    _mm512_storeu_ps(acc.add(lane * d + w * VECTOR), x);
                }
            }
        }
    }

    /// e^x for x ≤ 0, 16 lanes: the range reduction and polynomial of `simd::exp_neg` (2^n applied
    /// with vscalefps); 0 below −87.3, for −inf and for NaN.
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn exp_neg(x: __m512) -> __m512 {
        let keep = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(x, _mm512_set1_ps(-87.3));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            x,
            _mm512_set1_ps(std::f32::consts::LOG2_E),
        ));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x));
        let mut poly = _mm512_set1_ps(1.0 / 5040.0);
        for c in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            poly = _mm512_fmadd_ps(poly, r, _mm512_set1_ps(c));
        }
        _mm512_maskz_mov_ps(keep, _mm512_scalef_ps(poly, n))
    }

    /// # Safety
    /// AVX-512F; sizes as in `super::softmax_step`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub unsafe fn softmax_step(sc: *mut f32, weight: *const f32, m: *mut f32, l: *mut f32, at: *mut f32, d: usize, lp: usize, nb: usize) {
        // SAFETY: every access is at lane offset c < lp (16 at a time) of a row of lp lanes: cells
        // j < nb of sc, dimensions i < d of at, and m/l; weight[j] for j < nb.
        unsafe {
            let neg_inf = _mm512_set1_ps(f32::NEG_INFINITY);
            for c in (0..lp).step_by(VECTOR) {
                let m_old = _mm512_loadu_ps(m.add(c));
                let mut block_max = neg_inf;
                for j in 0..nb {
                    block_max = _mm512_max_ps(block_max, _mm512_loadu_ps(sc.add(j * lp + c)));
                }
                let m_new = _mm512_max_ps(m_old, block_max);
                let raised = _mm512_cmp_ps_mask::<_CMP_GT_OQ>(m_new, m_old);
                let shift = _mm512_mask_mov_ps(m_new, _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(m_new, neg_inf), _mm512_setzero_ps());
                let mut sum = _mm512_loadu_ps(l.add(c));
                if raised != 0 {
                    // e^(m_old − shift) in the raised lanes, 1 elsewhere.
                    let corr = _mm512_mask_mov_ps(_mm512_set1_ps(1.0), raised, exp_neg(_mm512_sub_ps(m_old, shift)));
                    sum = _mm512_mul_ps(sum, corr);
                    for i in 0..d {
                        let pa = at.add(i * lp + c);
                        _mm512_storeu_ps(pa, _mm512_mul_ps(_mm512_loadu_ps(pa), corr));
                    }
                    _mm512_storeu_ps(m.add(c), m_new);
                }
                for j in 0..nb {
                    let ps = sc.add(j * lp + c);
                    let e = exp_neg(_mm512_sub_ps(_mm512_loadu_ps(ps), shift));
                    sum = _mm512_add_ps(sum, e);
                    _mm512_storeu_ps(ps, _mm512_mul_ps(e, _mm512_set1_ps(*weight.add(j))));
                }
                _mm512_storeu_ps(l.add(c), sum);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    fn avx512() -> bool {
        crate::math::isa::Isa::avx512_available()
    }

    /// Both forms against a float64 product, for lane counts that exercise every chunk width (16–112
    /// lanes) and cell/dimension counts with and without a remainder of the 4-row register block.
    #[test]
    fn matrix_kernels_match_float64_on_both_paths() {
        let paths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        for &(d, lp, nb) in &[(64usize, 48usize, 32usize), (16, 16, 7), (96, 112, 33), (13, 64, 1), (128, 80, 30)] {
            let rows = data(nb * d, 1);
            let qt = data(d * lp, 2);
            let p = data(nb * lp, 3);
            let at0 = data(d * lp, 4);
            let (row_scale, lane_bias) = (data(nb, 5), data(lp, 6));
            let mut outs = Vec::new();
            for &simd in paths {
                let mut sc = vec![f32::NAN; nb * lp];
                scores(&rows, &qt, &row_scale, &lane_bias, d, lp, nb, &mut sc, simd);
                let mut at = at0.clone();
                accumulate(&rows, &p, d, lp, nb, &mut at, simd);
                for j in 0..nb {
                    for lane in 0..lp {
                        let (rs, lb) = (row_scale[j] as f64, lane_bias[lane] as f64);
                        let want = rs * (0..d).map(|i| rows[j * d + i] as f64 * qt[i * lp + lane] as f64).sum::<f64>() + lb;
                        let bound = rs.abs() * (0..d).map(|i| (rows[j * d + i] as f64 * qt[i * lp + lane] as f64).abs()).sum::<f64>() + lb.abs();
                        let got = sc[j * lp + lane] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "scores d={d} lp={lp} nb={nb} simd={simd}: {got} vs {want}");
                    }
                }
                for i in 0..d {
                    for lane in 0..lp {
                        let terms = (0..nb).map(|j| rows[j * d + i] as f64 * p[j * lp + lane] as f64);
                        let want = at0[i * lp + lane] as f64 + terms.clone().sum::<f64>();
                        let bound = (at0[i * lp + lane] as f64).abs() + terms.map(f64::abs).sum::<f64>();
                        let got = at[i * lp + lane] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "accumulate d={d} lp={lp} nb={nb} simd={simd}: {got} vs {want}");
                    }
                }
                outs.push((sc, at));
            }
            if let [(s0, a0), (s1, a1)] = &outs[..] {
                for (x, y) in s0.iter().zip(s1).chain(a0.iter().zip(a1)) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs AVX-512 {y}");
                }
            }
        }
    }

    /// The row-by-row path's key dot products, both forms, against float64: 1 to 9 lanes (groups of 4
    /// and a remainder), d 16 to 256, and a head size that is no multiple of 16.
    #[test]
    fn lane_dots_match_float64_on_both_paths() {
        let paths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        for &(lanes, d) in &[(3usize, 64usize), (1, 16), (9, 256), (4, 128), (6, 96), (2, 40)] {
            let row = data(d, 11);
            let q = data(lanes * d, 12);
            let mut outs = Vec::new();
            for &simd in paths {
                let mut out = vec![f32::NAN; lanes + 1];
                dots(&row, &q, lanes, d, &mut out, simd);
                for lane in 0..lanes {
                    let want: f64 = (0..d).map(|i| q[lane * d + i] as f64 * row[i] as f64).sum();
                    let bound: f64 = (0..d).map(|i| (q[lane * d + i] as f64 * row[i] as f64).abs()).sum();
                    assert!((out[lane] as f64 - want).abs() <= 1e-6 * bound, "lanes {lanes} d {d} simd={simd}: {} vs {want}", out[lane]);
                }
                assert!(out[lanes].is_nan(), "wrote past the lanes");
                outs.push(out);
            }
            if let [o0, o1] = &outs[..] {
                for (x, y) in o0[..lanes].iter().zip(&o1[..lanes]) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs AVX-512 {y}");
                }
            }
        }
    }

    /// The row-by-row path's value accumulation, both forms, against float64: 1 to 9 lanes (lane
    /// groups of 4 and a remainder), d 16 to 320 (dimension chunks of 64 and a remainder), and a head
    /// size that is no multiple of 16 (portable form on both paths).
    #[test]
    fn lane_accumulation_matches_float64_on_both_paths() {
        let paths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        for &(lanes, d, nb) in &[(3usize, 64usize, 64usize), (1, 16, 5), (9, 320, 33), (4, 128, 1), (5, 96, 17), (2, 40, 9)] {
            let p_stride = nb + 3;
            let rows = data(nb * d, 7);
            let p = data(lanes * p_stride, 8);
            let acc0 = data(lanes * d, 9);
            let mut outs = Vec::new();
            for &simd in paths {
                let mut acc = acc0.clone();
                accumulate_lanes(&rows, &p, p_stride, lanes, d, nb, &mut acc, simd);
                for lane in 0..lanes {
                    for i in 0..d {
                        let terms = (0..nb).map(|j| p[lane * p_stride + j] as f64 * rows[j * d + i] as f64);
                        let want = acc0[lane * d + i] as f64 + terms.clone().sum::<f64>();
                        let bound = (acc0[lane * d + i] as f64).abs() + terms.map(f64::abs).sum::<f64>();
                        let got = acc[lane * d + i] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "lanes {lanes} d {d} nb {nb} simd={simd}: {got} vs {want}");
                    }
                }
                outs.push(acc);
            }
            if let [a0, a1] = &outs[..] {
                for (x, y) in a0.iter().zip(a1) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs AVX-512 {y}");
                }
            }
        }
    }

    /// Two softmax steps (the second raising some lanes' maxima, some lanes fully masked in the first
    /// or in both) against the float64 softmax state over both blocks, on both paths.
    #[test]
    fn softmax_step_matches_float64_on_both_paths() {
        let paths: &[bool] = if avx512() { &[false, true] } else { &[false] };
        let (d, lp, nb) = (8usize, 32usize, 5usize);
        let hidden = |blk: usize, lane: usize| (blk == 0 && lane.is_multiple_of(3)) || lane == 7;
        let blocks: Vec<Vec<f32>> = (0..2)
            .map(|blk| {
                let raw = data(nb * lp, 10 + blk as u64);
                (0..nb * lp)
                    .map(|e| if hidden(blk, e % lp) { f32::NEG_INFINITY } else { raw[e] * 20.0 + blk as f32 * 5.0 })
                    .collect()
            })
            .collect();
        let weights: Vec<Vec<f32>> = (0..2).map(|blk| data(nb, 20 + blk as u64)).collect();
        for &simd in paths {
            let mut m = vec![f32::NEG_INFINITY; lp];
            let mut l = vec![0.0f32; lp];
            // at holds Σ_j p_j·weight_j·1 per lane in every dimension.
            let mut at = vec![0.0f32; d * lp];
            for blk in 0..2 {
                let mut sc = blocks[blk].clone();
                softmax_step(&mut sc, &weights[blk], &mut m, &mut l, &mut at, d, lp, nb, simd);
                let ones = vec![1.0f32; nb * d];
                accumulate(&ones, &sc, d, lp, nb, &mut at, simd);
            }
            for lane in 0..lp {
                let all: Vec<(f64, f64)> =
                    (0..2).flat_map(|b| (0..nb).map(move |j| (b, j))).map(|(b, j)| (blocks[b][j * lp + lane] as f64, weights[b][j] as f64)).collect();
                let mx = all.iter().map(|x| x.0).fold(f64::NEG_INFINITY, f64::max);
                if mx == f64::NEG_INFINITY {
                    assert_eq!((m[lane], l[lane]), (f32::NEG_INFINITY, 0.0), "lane {lane} simd={simd}");
                    continue;
                }
                let want_l: f64 = all.iter().map(|x| (x.0 - mx).exp()).sum();
                let want_a: f64 = all.iter().map(|x| (x.0 - mx).exp() * x.1).sum();
                assert_eq!(m[lane] as f64, mx, "lane {lane} simd={simd}");
                assert!((l[lane] as f64 - want_l).abs() <= 1e-6 * want_l, "lane {lane} simd={simd}: l {} vs {want_l}", l[lane]);
                let bound: f64 = all.iter().map(|x| ((x.0 - mx).exp() * x.1).abs()).sum();
                for i in 0..d {
                    let got = at[i * lp + lane] as f64;
                    assert!((got - want_a).abs() <= 1e-6 * bound, "lane {lane} simd={simd}: acc {got} vs {want_a}");
                }
            }
        }
    }
}
