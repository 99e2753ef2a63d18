//! The two matrix kernels of the tiled (prefill) attention path, `attend::compressed_tiled`, and its
//! softmax step, plus the value accumulation of the row-by-row path (`accumulate_lanes`), each in a
//! portable form and an explicit form written over `vector::Vector` (AVX-512 or AVX2 + FMA).
//!
//! Layout: a tile has `lp` lanes (the (query token, head) pairs of the tile, padded to a multiple of
//! 16) and a block of `nb` cells whose compressed rows were unpacked once into `rows` ([nb][d], the
//! centroid values of each row). Lanes are the vector dimension: the rotated queries are stored
//! transposed (`qt`, [d][lp]), scores and probabilities as [nb][lp], and the value accumulators
//! transposed (`at`, [d][lp]). Every multiply-add then uses a full vector of lanes against one
//! broadcast element of an unpacked row, with no horizontal reductions.
//!
//! The explicit forms keep 4 cells × up to `Vector::MAX_W` registers of lanes (64 lanes in AVX-512,
//! 16 in AVX2) of accumulators in registers; they compute the same sums as the portable forms, in
//! the same order over the summed index, except that a multiply-add is fused (one rounding instead of
//! two), so the forms agree to f32 rounding (a test checks each against the others and a float64
//! reference).

use super::simd::{Level, exp_neg};

/// Lanes of a tile are padded to a multiple of this (the widest register, 16 f32 in AVX-512).
pub const VECTOR: usize = 16;

/// sc[j·lp + L] = row_scale[j] · Σ_i rows[j·d + i] · qt[i·lp + L] + lane_bias[L] for j < nb, L < lp.
#[allow(clippy::too_many_arguments)]
pub fn scores(rows: &[f32], qt: &[f32], row_scale: &[f32], lane_bias: &[f32], d: usize, lp: usize, nb: usize, sc: &mut [f32], simd: Level) {
    assert!(lp.is_multiple_of(VECTOR) && rows.len() >= nb * d && qt.len() >= d * lp && sc.len() >= nb * lp);
    assert!(row_scale.len() >= nb && lane_bias.len() >= lp);
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable {
        // SAFETY: the caller passes a level this CPU runs (`simd::level`); the lengths are asserted
        // above and the kernels index inside them.
        unsafe { x86::scores(simd, rows.as_ptr(), qt.as_ptr(), row_scale.as_ptr(), lane_bias.as_ptr(), d, lp, nb, sc.as_mut_ptr()) };
        return;
    }
    let _ = simd;
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
pub fn accumulate(rows: &[f32], p: &[f32], d: usize, lp: usize, nb: usize, at: &mut [f32], simd: Level) {
    assert!(lp.is_multiple_of(VECTOR) && rows.len() >= nb * d && p.len() >= nb * lp && at.len() >= d * lp);
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable {
        // SAFETY: as in `scores`.
        unsafe { x86::accumulate(simd, rows.as_ptr(), p.as_ptr(), d, lp, nb, at.as_mut_ptr()) };
        return;
    }
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
/// row-by-row path. The explicit form reduces the partial sums of 4 lanes together (one shuffle tree
/// for 4 dot products instead of one per product).
pub fn dots(row: &[f32], q: &[f32], lanes: usize, d: usize, out: &mut [f32], simd: Level) {
    assert!(row.len() >= d && q.len() >= lanes * d && out.len() >= lanes);
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable && d.is_multiple_of(simd.lanes()) {
        // SAFETY: as in `scores`; d is a multiple of the level's lanes as the kernel requires.
        unsafe { x86::dots(simd, row.as_ptr(), q.as_ptr(), lanes, d, out.as_mut_ptr()) };
        return;
    }
    for (lane, o) in out[..lanes].iter_mut().enumerate() {
        *o = super::simd::dot(&q[lane * d..(lane + 1) * d], &row[..d]);
    }
}

/// acc[lane·d + i] += Σ_j p[lane·p_stride + j] · rows[j·d + i] for lane < lanes, i < d: the value
/// accumulation of the row-by-row path (lanes in their own rows of `acc`, as few as one), with the
/// unpacked rows of a block read once per group of up to 4 lanes instead of once per lane.
#[allow(clippy::too_many_arguments)]
pub fn accumulate_lanes(rows: &[f32], p: &[f32], p_stride: usize, lanes: usize, d: usize, nb: usize, acc: &mut [f32], simd: Level) {
    assert!(rows.len() >= nb * d && acc.len() >= lanes * d && nb <= p_stride && (lanes == 0 || p.len() >= (lanes - 1) * p_stride + nb));
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable && d.is_multiple_of(simd.lanes()) {
        // SAFETY: as in `scores`; d is a multiple of the level's lanes as the kernel requires.
        unsafe { x86::accumulate_lanes(simd, rows.as_ptr(), p.as_ptr(), p_stride, lanes, d, nb, acc.as_mut_ptr()) };
        return;
    }
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
pub fn softmax_step(sc: &mut [f32], weight: &[f32], m: &mut [f32], l: &mut [f32], at: &mut [f32], d: usize, lp: usize, nb: usize, simd: Level) {
    assert!(lp.is_multiple_of(VECTOR) && sc.len() >= nb * lp && weight.len() >= nb && m.len() >= lp && l.len() >= lp && at.len() >= d * lp);
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable {
        // SAFETY: as in `scores`.
        unsafe { x86::softmax_step(simd, sc.as_mut_ptr(), weight.as_ptr(), m.as_mut_ptr(), l.as_mut_ptr(), at.as_mut_ptr(), d, lp, nb) };
        return;
    }
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

/// How the code kernels read a block's codes and look them up.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum CodeKind {
    /// 4-bit codes packed two per byte, low nibble first (read in place from the cache); a
    /// 16-entry table in registers.
    Nibbles,
    /// One byte per code (unpacked beforehand), codes < 16: a 16-entry table in registers.
    Bytes16,
    /// One byte per code, codes < 32: a 32-entry table in registers.
    Bytes32,
    /// One byte per code, any code < 256: gathered from the table in memory.
    Bytes256,
}

impl CodeKind {
    /// The kind for codes of `bits` bits, packed (4 bits) or unpacked to bytes.
    pub fn of_bits(bits: u32, packed: bool) -> Self {
        match bits {
            4 if packed => CodeKind::Nibbles,
            0..=4 => CodeKind::Bytes16,
            5 => CodeKind::Bytes32,
            _ => CodeKind::Bytes256,
        }
    }
}

/// Compressed rows of a block as the code kernels read them: row j (j < nb) at `ptr + j·stride`
/// holds its d codes as `kind` says.
#[derive(Clone, Copy)]
pub struct CodeRows {
    pub ptr: *const u8,
    pub stride: usize,
    pub kind: CodeKind,
}

impl CodeRows {
    /// Code i of row j.
    ///
    /// # Safety
    /// Row j lies inside the rows described (the contract of the code kernels).
    #[inline(always)]
    unsafe fn code(&self, j: usize, i: usize) -> usize {
        // SAFETY: the caller's contract: row j holds d codes (d/2 bytes packed, d bytes unpacked).
        unsafe {
            let row = self.ptr.add(j * self.stride);
            if self.kind == CodeKind::Nibbles { ((*row.add(i / 2) >> (4 * (i % 2))) & 0x0f) as usize } else { *row.add(i) as usize }
        }
    }
}

/// The key scores of the row-by-row path straight from the codes: sc[lane·sc_stride + j] =
/// Σ_i q[lane·d + i] · table[code(j, i)] for every cell j < nb with `vis[j]` and lane < lanes
/// (cells without `vis` are not written). Each register of a row's codes is looked up once for all
/// lanes (in registers up to 5 bits, gathered above); the explicit forms hold up to 8 lanes' sums in registers and reduce them 4 at a time.
///
/// # Safety
/// `rows` describes nb rows of d codes (`table`: the codebook padded with zeros to 256 entries; a
/// code reads the entry of its low 4 bits for the 16-entry kinds, of its low 5 bits for `Bytes32`,
/// and the whole byte for `Bytes256` and the portable form — always inside the table).
#[allow(clippy::too_many_arguments)]
pub unsafe fn code_scores(rows: CodeRows, table: &[f32; 256], q: &[f32], lanes: usize, d: usize, vis: &[bool], sc: &mut [f32], sc_stride: usize, simd: Level) {
    let nb = vis.len();
    assert!(q.len() >= lanes * d && nb <= sc_stride && (lanes == 0 || sc.len() >= (lanes - 1) * sc_stride + nb));
    assert!(rows.kind != CodeKind::Nibbles || d.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable && d.is_multiple_of(simd.lanes()) {
        // SAFETY: as in `scores`, plus the caller's contract on `rows`; d is a multiple of the
        // level's lanes as the kernel requires.
        unsafe { x86::code_scores(simd, rows, table.as_ptr(), q.as_ptr(), lanes, d, vis.as_ptr(), nb, sc.as_mut_ptr(), sc_stride) };
        return;
    }
    for (j, _) in vis.iter().enumerate().filter(|(_, v)| **v) {
        for lane in 0..lanes {
            let ql = &q[lane * d..(lane + 1) * d];
            // SAFETY: the caller's contract on `rows` (j < nb, i < d).
            sc[lane * sc_stride + j] = (0..d).map(|i| ql[i] * table[unsafe { rows.code(j, i) }]).sum();
        }
    }
}

/// The value accumulation of the row-by-row path straight from the codes: acc[lane·d + i] +=
/// Σ_j p[lane·p_stride + j] · table[code(j, i)] for lane < lanes, i < d, j < nb. Every cell is
/// read (weight 0 for those no lane takes: their codes only need to be in range). The explicit forms
/// hold one register of up to 8 lanes' accumulators and look each register of codes up once.
///
/// # Safety
/// As `code_scores`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn code_accumulate(rows: CodeRows, table: &[f32; 256], p: &[f32], p_stride: usize, lanes: usize, d: usize, nb: usize, acc: &mut [f32], simd: Level) {
    assert!(acc.len() >= lanes * d && nb <= p_stride && (lanes == 0 || p.len() >= (lanes - 1) * p_stride + nb));
    assert!(rows.kind != CodeKind::Nibbles || d.is_multiple_of(2));
    #[cfg(target_arch = "x86_64")]
    if simd != Level::Portable && d.is_multiple_of(simd.lanes()) {
        // SAFETY: as in `code_scores`.
        unsafe { x86::code_accumulate(simd, rows, table.as_ptr(), p.as_ptr(), p_stride, lanes, d, nb, acc.as_mut_ptr()) };
        return;
    }
    for lane in 0..lanes {
        let a = &mut acc[lane * d..(lane + 1) * d];
        for j in 0..nb {
            let w = p[lane * p_stride + j];
            for (i, x) in a.iter_mut().enumerate() {
                // SAFETY: the caller's contract on `rows` (j < nb, i < d).
                *x += w * table[unsafe { rows.code(j, i) }];
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{CodeKind, CodeRows};
    use super::super::vector::{Vector, per_level};

    per_level! {
        /// # Safety
        /// `rows` holds nb·d, `qt` d·lp and `sc` nb·lp elements, lp a multiple of 16.
        pub unsafe fn scores(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, nb: usize, sc: *mut f32) => scores_v;
        /// # Safety
        /// `rows` holds nb·d, `p` nb·lp and `at` d·lp elements, lp a multiple of 16.
        pub unsafe fn accumulate(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) => accumulate_v;
        /// # Safety
        /// `row` holds d elements, `q` lanes·d, `out` lanes; d a multiple of the level's lanes.
        pub unsafe fn dots(row: *const f32, q: *const f32, lanes: usize, d: usize, out: *mut f32) => dots_v;
        /// # Safety
        /// `rows` holds nb·d elements, `p` lanes rows of stride p_stride ≥ nb, `acc` lanes·d; d a
        /// multiple of the level's lanes.
        pub unsafe fn accumulate_lanes(rows: *const f32, p: *const f32, p_stride: usize, lanes: usize, d: usize, nb: usize, acc: *mut f32) => accumulate_lanes_v;
        /// # Safety
        /// Sizes as in `super::softmax_step`.
        pub unsafe fn softmax_step(sc: *mut f32, weight: *const f32, m: *mut f32, l: *mut f32, at: *mut f32, d: usize, lp: usize, nb: usize) => softmax_step_v;
        /// # Safety
        /// As `super::code_scores`; `q` holds lanes·d, `vis` nb and `sc` lanes rows of stride
        /// sc_stride ≥ nb elements; d a multiple of the level's lanes.
        pub unsafe fn code_scores(rows: CodeRows, table: *const f32, q: *const f32, lanes: usize, d: usize, vis: *const bool, nb: usize, sc: *mut f32, sc_stride: usize) => code_scores_v;
        /// # Safety
        /// As `super::code_accumulate`; `p` holds lanes rows of stride p_stride ≥ nb, `acc` lanes·d
        /// elements; d a multiple of the level's lanes.
        pub unsafe fn code_accumulate(rows: CodeRows, table: *const f32, p: *const f32, p_stride: usize, lanes: usize, d: usize, nb: usize, acc: *mut f32) => code_accumulate_v;
    }

    /// Cells per register block of `scores`, value dimensions per register block of `accumulate`.
    const BLOCK_ROWS: usize = 4;

    /// Runs `$body` with `$c0` the first lane and `$w` the registers of each chunk of up to
    /// `V::MAX_W` registers of lanes.
    macro_rules! over_lane_chunks {
        ($v:ty, $lp:expr, |$c0:ident, $w:ident| $body:expr) => {{
            let nv = $lp / <$v>::LANES;
            let mut v0 = 0;
            while v0 < nv {
                let $w = (nv - v0).min(<$v>::MAX_W);
                let $c0 = v0 * <$v>::LANES;
                $body;
                v0 += $w;
            }
        }};
    }

    /// `$f::<$g.., W>($args)` for the chunk width W = `$w` (1 to 4 registers).
    macro_rules! by_width {
        ($w:expr, $f:ident::<$($g:tt),*>($($arg:expr),*)) => {
            match $w {
                1 => $f::<$($g),*, 1>($($arg),*),
                2 => $f::<$($g),*, 2>($($arg),*),
                3 => $f::<$($g),*, 3>($($arg),*),
                _ => $f::<$($g),*, 4>($($arg),*),
            }
        };
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_v<V: Vector>(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, nb: usize, sc: *mut f32) {
        over_lane_chunks!(V, lp, |c0, w| {
            // SAFETY: c0 + LANES·w ≤ lp: the chunk lies inside every lane row.
            unsafe { by_width!(w, scores_chunk::<V>(rows, qt.add(c0), row_scale, lane_bias.add(c0), d, lp, nb, sc.add(c0))) }
        })
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_chunk<V: Vector, const W: usize>(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, nb: usize, sc: *mut f32) {
        let mut j = 0;
        while j + BLOCK_ROWS <= nb {
            // SAFETY: cells j..j+4 < nb; the callee reads W registers of lanes at qt + i·lp.
            unsafe { scores_cells::<V, W, BLOCK_ROWS>(rows.add(j * d), qt, row_scale.add(j), lane_bias, d, lp, sc.add(j * lp)) };
            j += BLOCK_ROWS;
        }
        while j < nb {
            // SAFETY: cell j < nb.
            unsafe { scores_cells::<V, W, 1>(rows.add(j * d), qt, row_scale.add(j), lane_bias, d, lp, sc.add(j * lp)) };
            j += 1;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn scores_cells<V: Vector, const W: usize, const J: usize>(rows: *const f32, qt: *const f32, row_scale: *const f32, lane_bias: *const f32, d: usize, lp: usize, sc: *mut f32) {
        // SAFETY: the vector contract; reads J rows of d elements and J row scales, d lane rows of W
        // registers and W registers of biases, writes J lane rows of W registers, all inside the
        // caller's buffers.
        unsafe {
            let mut acc = [[V::zero(); W]; J];
            for i in 0..d {
                let mut q = [V::zero(); W];
                for (w, qv) in q.iter_mut().enumerate() {
                    *qv = V::load(qt.add(i * lp + w * V::LANES));
                }
                for (jj, a) in acc.iter_mut().enumerate() {
                    let k = V::splat(*rows.add(jj * d + i));
                    for w in 0..W {
                        a[w] = k.fmadd(q[w], a[w]);
                    }
                }
            }
            for (jj, a) in acc.iter().enumerate() {
                let ks = V::splat(*row_scale.add(jj));
                for (w, &v) in a.iter().enumerate() {
                    v.fmadd(ks, V::load(lane_bias.add(w * V::LANES))).store(sc.add(jj * lp + w * V::LANES));
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn accumulate_v<V: Vector>(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        over_lane_chunks!(V, lp, |c0, w| {
            // SAFETY: as in `scores_v`.
            unsafe { by_width!(w, accumulate_chunk::<V>(rows, p.add(c0), d, lp, nb, at.add(c0))) }
        })
    }

    #[inline(always)]
    unsafe fn accumulate_chunk<V: Vector, const W: usize>(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        let mut i = 0;
        while i + BLOCK_ROWS <= d {
            // SAFETY: dimensions i..i+4 < d.
            unsafe { accumulate_dims::<V, W, BLOCK_ROWS>(rows.add(i), p, d, lp, nb, at.add(i * lp)) };
            i += BLOCK_ROWS;
        }
        while i < d {
            // SAFETY: dimension i < d.
            unsafe { accumulate_dims::<V, W, 1>(rows.add(i), p, d, lp, nb, at.add(i * lp)) };
            i += 1;
        }
    }

    #[inline(always)]
    unsafe fn accumulate_dims<V: Vector, const W: usize, const I: usize>(rows: *const f32, p: *const f32, d: usize, lp: usize, nb: usize, at: *mut f32) {
        // SAFETY: the vector contract; reads I elements of nb rows of stride d, nb lane rows of W
        // registers, and updates I lane rows of W registers of `at`.
        unsafe {
            let mut acc = [[V::zero(); W]; I];
            for (ii, a) in acc.iter_mut().enumerate() {
                for (w, v) in a.iter_mut().enumerate() {
                    *v = V::load(at.add(ii * lp + w * V::LANES));
                }
            }
            for j in 0..nb {
                let mut pv = [V::zero(); W];
                for (w, x) in pv.iter_mut().enumerate() {
                    *x = V::load(p.add(j * lp + w * V::LANES));
                }
                for (ii, a) in acc.iter_mut().enumerate() {
                    let v = V::splat(*rows.add(j * d + ii));
                    for w in 0..W {
                        a[w] = v.fmadd(pv[w], a[w]);
                    }
                }
            }
            for (ii, a) in acc.iter().enumerate() {
                for (w, &v) in a.iter().enumerate() {
                    v.store(at.add(ii * lp + w * V::LANES));
                }
            }
        }
    }

    #[inline(always)]
    unsafe fn dots_v<V: Vector>(row: *const f32, q: *const f32, lanes: usize, d: usize, out: *mut f32) {
        // SAFETY: the vector contract; reads inside row[..d] and the lanes' rows of q, writes out[..lanes].
        unsafe {
            let mut l0 = 0;
            while l0 < lanes {
                let g = (lanes - l0).min(4);
                let mut acc = [V::zero(); 4];
                for i in (0..d).step_by(V::LANES) {
                    let r = V::load(row.add(i));
                    for (k, a) in acc.iter_mut().enumerate().take(g) {
                        *a = V::load(q.add((l0 + k) * d + i)).fmadd(r, *a);
                    }
                }
                let sums = V::reduce4(acc);
                for (k, &x) in sums.iter().enumerate().take(g) {
                    *out.add(l0 + k) = x;
                }
                l0 += g;
            }
        }
    }

    /// Lanes of the row-by-row path per register block of `accumulate_lanes`.
    const LANE_GROUP: usize = 4;

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn accumulate_lanes_v<V: Vector>(rows: *const f32, p: *const f32, p_stride: usize, lanes: usize, d: usize, nb: usize, acc: *mut f32) {
        let nv = d / V::LANES;
        let mut v0 = 0;
        while v0 < nv {
            let w = (nv - v0).min(V::MAX_W);
            let mut l0 = 0;
            while l0 < lanes {
                let g = (lanes - l0).min(LANE_GROUP);
                // SAFETY: dimensions v0·LANES .. (v0 + w)·LANES ≤ d and lanes l0 .. l0 + g ≤ lanes.
                unsafe {
                    let (rows, p, acc) = (rows.add(v0 * V::LANES), p.add(l0 * p_stride), acc.add(l0 * d + v0 * V::LANES));
                    match g {
                        1 => by_width!(w, lanes_chunk::<V, 1>(rows, p, p_stride, d, nb, acc)),
                        2 => by_width!(w, lanes_chunk::<V, 2>(rows, p, p_stride, d, nb, acc)),
                        3 => by_width!(w, lanes_chunk::<V, 3>(rows, p, p_stride, d, nb, acc)),
                        _ => by_width!(w, lanes_chunk::<V, 4>(rows, p, p_stride, d, nb, acc)),
                    }
                }
                l0 += g;
            }
            v0 += w;
        }
    }

    #[inline(always)]
    unsafe fn lanes_chunk<V: Vector, const G: usize, const W: usize>(rows: *const f32, p: *const f32, p_stride: usize, d: usize, nb: usize, acc: *mut f32) {
        // SAFETY: the vector contract; reads W registers of nb rows of stride d, G lanes' nb weights,
        // and updates W registers of G accumulator rows of stride d.
        unsafe {
            let mut a = [[V::zero(); W]; G];
            for (lane, al) in a.iter_mut().enumerate() {
                for (w, x) in al.iter_mut().enumerate() {
                    *x = V::load(acc.add(lane * d + w * V::LANES));
                }
            }
            for j in 0..nb {
                let mut r = [V::zero(); W];
                for (w, x) in r.iter_mut().enumerate() {
                    *x = V::load(rows.add(j * d + w * V::LANES));
                }
                for (lane, al) in a.iter_mut().enumerate() {
                    let pw = V::splat(*p.add(lane * p_stride + j));
                    for w in 0..W {
                        al[w] = pw.fmadd(r[w], al[w]);
                    }
                }
            }
            for (lane, al) in a.iter().enumerate() {
                for (w, &x) in al.iter().enumerate() {
                    x.store(acc.add(lane * d + w * V::LANES));
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn softmax_step_v<V: Vector>(sc: *mut f32, weight: *const f32, m: *mut f32, l: *mut f32, at: *mut f32, d: usize, lp: usize, nb: usize) {
        // SAFETY: the vector contract; every access is at lane offset c < lp (one register at a
        // time) of a row of lp lanes: cells j < nb of sc, dimensions i < d of at, and m/l; weight[j]
        // for j < nb.
        unsafe {
            let neg_inf = V::splat(f32::NEG_INFINITY);
            for c in (0..lp).step_by(V::LANES) {
                let m_old = V::load(m.add(c));
                let mut block_max = neg_inf;
                for j in 0..nb {
                    block_max = block_max.max(V::load(sc.add(j * lp + c)));
                }
                let m_new = m_old.max(block_max);
                let raised = m_new.gt(m_old);
                // A lane with nothing visible yet shifts by 0: every e^(−inf − 0) is 0.
                let shift = V::select(m_new.eq(neg_inf), V::zero(), m_new);
                let mut sum = V::load(l.add(c));
                if V::any(raised) {
                    // e^(m_old − shift) in the raised lanes, 1 elsewhere.
                    let corr = V::select(raised, m_old.sub(shift).exp_neg(), V::splat(1.0));
                    sum = sum.mul(corr);
                    for i in 0..d {
                        let pa = at.add(i * lp + c);
                        V::load(pa).mul(corr).store(pa);
                    }
                    m_new.store(m.add(c));
                }
                for j in 0..nb {
                    let ps = sc.add(j * lp + c);
                    let e = V::load(ps).sub(shift).exp_neg();
                    sum = sum.add(e);
                    e.mul(V::splat(*weight.add(j))).store(ps);
                }
                sum.store(l.add(c));
            }
        }
    }
    /// Lanes of the code kernels per register block.
    const CODE_LANES: usize = 8;

    /// `$f::<V, L, K>($args)` for L = `$l` (1 to 8 lanes) and K the code kind `$kind` as a number.
    macro_rules! by_lanes {
        ($l:expr, $kind:expr, $f:ident($($arg:expr),*)) => {
            match $kind {
                CodeKind::Nibbles => by_lanes!(@l $l, 0, $f($($arg),*)),
                CodeKind::Bytes16 => by_lanes!(@l $l, 1, $f($($arg),*)),
                CodeKind::Bytes32 => by_lanes!(@l $l, 2, $f($($arg),*)),
                CodeKind::Bytes256 => by_lanes!(@l $l, 3, $f($($arg),*)),
            }
        };
        (@l $l:expr, $k:literal, $f:ident($($arg:expr),*)) => {
            match $l {
                1 => $f::<V, 1, $k>($($arg),*),
                2 => $f::<V, 2, $k>($($arg),*),
                3 => $f::<V, 3, $k>($($arg),*),
                4 => $f::<V, 4, $k>($($arg),*),
                5 => $f::<V, 5, $k>($($arg),*),
                6 => $f::<V, 6, $k>($($arg),*),
                7 => $f::<V, 7, $k>($($arg),*),
                _ => $f::<V, 8, $k>($($arg),*),
            }
        };
    }

    /// The tables of a code kernel of kind K (0 nibbles, 1 bytes < 16, 2 bytes < 32, 3 gathered).
    struct Tables<V: Vector> {
        t16: V::Table,
        t32: V::Table32,
        mem: *const f32,
    }

    impl<V: Vector> Tables<V> {
        #[inline(always)]
        unsafe fn new(table: *const f32) -> Self {
            // SAFETY: the vector contract; `table` holds 256 floats.
            unsafe { Self { t16: V::table(table), t32: V::table32(table), mem: table } }
        }
        /// table[code] for register c of row `row`.
        #[inline(always)]
        unsafe fn register<const K: u8>(&self, row: *const u8, c: usize) -> V {
            // SAFETY: the vector contract; register c of a row of d codes lies inside it.
            unsafe {
                match K {
                    0 => V::lookup_nibbles(self.t16, row.add(c * V::LANES / 2)),
                    1 => V::lookup_bytes(self.t16, row.add(c * V::LANES)),
                    2 => V::lookup_bytes32(self.t32, row.add(c * V::LANES)),
                    _ => V::gather_bytes(self.mem, row.add(c * V::LANES)),
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn code_scores_v<V: Vector>(rows: CodeRows, table: *const f32, q: *const f32, lanes: usize, d: usize, vis: *const bool, nb: usize, sc: *mut f32, sc_stride: usize) {
        let mut l0 = 0;
        while l0 < lanes {
            let l = (lanes - l0).min(CODE_LANES);
            // SAFETY: lanes l0 .. l0 + l ≤ lanes of q and sc.
            unsafe {
                let (q, sc) = (q.add(l0 * d), sc.add(l0 * sc_stride));
                by_lanes!(l, rows.kind, code_scores_lanes(rows, table, q, d, vis, nb, sc, sc_stride));
            }
            l0 += l;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn code_scores_lanes<V: Vector, const L: usize, const K: u8>(rows: CodeRows, table: *const f32, q: *const f32, d: usize, vis: *const bool, nb: usize, sc: *mut f32, sc_stride: usize) {
        // SAFETY: the vector contract; reads the d codes of rows j < nb, L lanes' d query elements
        // and vis[..nb], writes sc[lane·sc_stride + j] for lane < L, j < nb.
        unsafe {
            let t = Tables::<V>::new(table);
            let nc = d / V::LANES;
            for j in 0..nb {
                if !*vis.add(j) {
                    continue;
                }
                let row = rows.ptr.add(j * rows.stride);
                let mut acc = [V::zero(); L];
                for c in 0..nc {
                    let x = t.register::<K>(row, c);
                    for (lane, a) in acc.iter_mut().enumerate() {
                        *a = V::load(q.add(lane * d + c * V::LANES)).fmadd(x, *a);
                    }
                }
                let mut l0 = 0;
                while l0 < L {
                    let mut four = [V::zero(); 4];
                    let g = (L - l0).min(4);
                    four[..g].copy_from_slice(&acc[l0..l0 + g]);
                    let sums = V::reduce4(four);
                    for (k, &x) in sums.iter().enumerate().take(g) {
                        *sc.add((l0 + k) * sc_stride + j) = x;
                    }
                    l0 += g;
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn code_accumulate_v<V: Vector>(rows: CodeRows, table: *const f32, p: *const f32, p_stride: usize, lanes: usize, d: usize, nb: usize, acc: *mut f32) {
        let mut l0 = 0;
        while l0 < lanes {
            let l = (lanes - l0).min(CODE_LANES);
            // SAFETY: lanes l0 .. l0 + l ≤ lanes of p and acc.
            unsafe {
                let (p, acc) = (p.add(l0 * p_stride), acc.add(l0 * d));
                by_lanes!(l, rows.kind, code_accumulate_lanes(rows, table, p, p_stride, d, nb, acc));
            }
            l0 += l;
        }
    }

    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    unsafe fn code_accumulate_lanes<V: Vector, const L: usize, const K: u8>(rows: CodeRows, table: *const f32, p: *const f32, p_stride: usize, d: usize, nb: usize, acc: *mut f32) {
        // SAFETY: the vector contract; reads the d codes of rows j < nb and L lanes' nb weights,
        // updates L accumulator rows of d elements.
        unsafe {
            let t = Tables::<V>::new(table);
            for c in 0..d / V::LANES {
                let mut a = [V::zero(); L];
                for (lane, x) in a.iter_mut().enumerate() {
                    *x = V::load(acc.add(lane * d + c * V::LANES));
                }
                for j in 0..nb {
                    let x = t.register::<K>(rows.ptr.add(j * rows.stride), c);
                    for (lane, y) in a.iter_mut().enumerate() {
                        *y = V::splat(*p.add(lane * p_stride + j)).fmadd(x, *y);
                    }
                }
                for (lane, x) in a.iter().enumerate() {
                    x.store(acc.add(lane * d + c * V::LANES));
                }
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

    /// Both forms against a float64 product, for lane counts that exercise every chunk width (16–112
    /// lanes) and cell/dimension counts with and without a remainder of the 4-row register block.
    #[test]
    fn matrix_kernels_match_float64_on_every_path() {
        let paths = Level::available();
        for &(d, lp, nb) in &[(64usize, 48usize, 32usize), (16, 16, 7), (96, 112, 33), (13, 64, 1), (128, 80, 30)] {
            let rows = data(nb * d, 1);
            let qt = data(d * lp, 2);
            let p = data(nb * lp, 3);
            let at0 = data(d * lp, 4);
            let (row_scale, lane_bias) = (data(nb, 5), data(lp, 6));
            let mut outs = Vec::new();
            for &simd in &paths {
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
                        assert!((got - want).abs() <= 1e-6 * bound, "scores d={d} lp={lp} nb={nb} simd={simd:?}: {got} vs {want}");
                    }
                }
                for i in 0..d {
                    for lane in 0..lp {
                        let terms = (0..nb).map(|j| rows[j * d + i] as f64 * p[j * lp + lane] as f64);
                        let want = at0[i * lp + lane] as f64 + terms.clone().sum::<f64>();
                        let bound = (at0[i * lp + lane] as f64).abs() + terms.map(f64::abs).sum::<f64>();
                        let got = at[i * lp + lane] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "accumulate d={d} lp={lp} nb={nb} simd={simd:?}: {got} vs {want}");
                    }
                }
                outs.push((sc, at));
            }
            let (s0, a0) = &outs[0];
            for (s1, a1) in &outs[1..] {
                for (x, y) in s0.iter().zip(s1).chain(a0.iter().zip(a1)) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs explicit {y}");
                }
            }
        }
    }

    /// The row-by-row path's key dot products, both forms, against float64: 1 to 9 lanes (groups of 4
    /// and a remainder), d 16 to 256, and a head size that is no multiple of 16.
    #[test]
    fn lane_dots_match_float64_on_every_path() {
        let paths = Level::available();
        for &(lanes, d) in &[(3usize, 64usize), (1, 16), (9, 256), (4, 128), (6, 96), (2, 40)] {
            let row = data(d, 11);
            let q = data(lanes * d, 12);
            let mut outs = Vec::new();
            for &simd in &paths {
                let mut out = vec![f32::NAN; lanes + 1];
                dots(&row, &q, lanes, d, &mut out, simd);
                for lane in 0..lanes {
                    let want: f64 = (0..d).map(|i| q[lane * d + i] as f64 * row[i] as f64).sum();
                    let bound: f64 = (0..d).map(|i| (q[lane * d + i] as f64 * row[i] as f64).abs()).sum();
                    assert!((out[lane] as f64 - want).abs() <= 1e-6 * bound, "lanes {lanes} d {d} simd={simd:?}: {} vs {want}", out[lane]);
                }
                assert!(out[lanes].is_nan(), "wrote past the lanes");
                outs.push(out);
            }
            for o1 in &outs[1..] {
                for (x, y) in outs[0][..lanes].iter().zip(&o1[..lanes]) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs explicit {y}");
                }
            }
        }
    }

    /// The row-by-row path's value accumulation, both forms, against float64: 1 to 9 lanes (lane
    /// groups of 4 and a remainder), d 16 to 320 (dimension chunks of 64 and a remainder), and a head
    /// size that is no multiple of 16 (portable form on every path).
    #[test]
    fn lane_accumulation_matches_float64_on_every_path() {
        let paths = Level::available();
        for &(lanes, d, nb) in &[(3usize, 64usize, 64usize), (1, 16, 5), (9, 320, 33), (4, 128, 1), (5, 96, 17), (2, 40, 9)] {
            let p_stride = nb + 3;
            let rows = data(nb * d, 7);
            let p = data(lanes * p_stride, 8);
            let acc0 = data(lanes * d, 9);
            let mut outs = Vec::new();
            for &simd in &paths {
                let mut acc = acc0.clone();
                accumulate_lanes(&rows, &p, p_stride, lanes, d, nb, &mut acc, simd);
                for lane in 0..lanes {
                    for i in 0..d {
                        let terms = (0..nb).map(|j| p[lane * p_stride + j] as f64 * rows[j * d + i] as f64);
                        let want = acc0[lane * d + i] as f64 + terms.clone().sum::<f64>();
                        let bound = (acc0[lane * d + i] as f64).abs() + terms.map(f64::abs).sum::<f64>();
                        let got = acc[lane * d + i] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "lanes {lanes} d {d} nb {nb} simd={simd:?}: {got} vs {want}");
                    }
                }
                outs.push(acc);
            }
            for a1 in &outs[1..] {
                for (x, y) in outs[0].iter().zip(a1) {
                    assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "portable {x} vs explicit {y}");
                }
            }
        }
    }

    /// Random codes < 2^bits for nb rows of d, as row bytes of `stride` (packed nibbles for 4 bits,
    /// one byte each otherwise), with the codes themselves for the reference.
    fn code_rows(nb: usize, d: usize, bits: u32, stride: usize, seed: u64) -> (Vec<u8>, Vec<usize>) {
        let codes: Vec<usize> = data(nb * d, seed).iter().map(|x| ((x + 1.0) * 0.5 * (1 << bits) as f32) as usize % (1 << bits)).collect();
        let mut bytes = vec![0xa5u8; nb * stride + 7];
        for j in 0..nb {
            for i in 0..d {
                let c = codes[j * d + i] as u8;
                if bits == 4 {
                    let b = &mut bytes[j * stride + i / 2];
                    *b = if i % 2 == 0 { (*b & 0xf0) | c } else { (*b & 0x0f) | (c << 4) };
                } else {
                    bytes[j * stride + i] = c;
                }
            }
        }
        (bytes, codes)
    }

    /// The code kernels (scores and accumulation straight from 4-bit packed or byte codes of 1 to 8
    /// bits: every code kind), every form against float64 over the looked-up values: 1 to 19 lanes
    /// (register blocks of 8 and a remainder), d 16 to 256, hidden cells left unwritten, rows with
    /// padding between them.
    #[test]
    fn code_kernels_match_float64_on_every_path() {
        let paths = Level::available();
        let table: [f32; 256] = std::array::from_fn(|i| (i as f32 - 127.5) * 0.021 + 0.0013 * (i % 37 * (i % 41)) as f32);
        let cases = [(3usize, 64usize, 64usize, 4u32), (1, 16, 5, 4), (9, 128, 33, 4), (19, 64, 7, 3), (8, 256, 2, 2), (4, 128, 64, 4), (6, 32, 17, 1), (5, 64, 40, 5), (11, 128, 9, 6), (2, 64, 20, 8), (3, 64, 64, 7)];
        for &(lanes, d, nb, bits) in &cases {
            let stride = if bits == 4 { d / 2 + 3 } else { d + 5 };
            let (bytes, codes) = code_rows(nb, d, bits, stride, 21);
            let rows = CodeRows { ptr: bytes.as_ptr(), stride, kind: CodeKind::of_bits(bits, true) };
            let q = data(lanes * d, 22);
            let vis: Vec<bool> = (0..nb).map(|j| j % 5 != 3).collect();
            let sc_stride = nb + 2;
            let p = data(lanes * sc_stride, 23);
            let acc0 = data(lanes * d, 24);
            let val = |j: usize, i: usize| table[codes[j * d + i]] as f64;
            for &simd in &paths {
                let mut sc = vec![f32::NAN; lanes * sc_stride];
                // SAFETY: `rows` describes nb rows of d codes < 2^bits inside `bytes`.
                unsafe { code_scores(rows, &table, &q, lanes, d, &vis, &mut sc, sc_stride, simd) };
                let mut acc = acc0.clone();
                // SAFETY: as above.
                unsafe { code_accumulate(rows, &table, &p, sc_stride, lanes, d, nb, &mut acc, simd) };
                for lane in 0..lanes {
                    for j in 0..nb {
                        let got = sc[lane * sc_stride + j] as f64;
                        if !vis[j] {
                            assert!(got.is_nan(), "scores wrote hidden cell {j}");
                            continue;
                        }
                        let want: f64 = (0..d).map(|i| q[lane * d + i] as f64 * val(j, i)).sum();
                        let bound: f64 = (0..d).map(|i| (q[lane * d + i] as f64 * val(j, i)).abs()).sum();
                        assert!((got - want).abs() <= 1e-6 * bound, "scores lanes {lanes} d {d} bits {bits} simd={simd:?}: {got} vs {want}");
                    }
                    assert!(sc[lane * sc_stride + nb..(lane + 1) * sc_stride].iter().all(|x| x.is_nan()), "scores wrote past the cells");
                    for i in 0..d {
                        let terms = (0..nb).map(|j| p[lane * sc_stride + j] as f64 * val(j, i));
                        let want = acc0[lane * d + i] as f64 + terms.clone().sum::<f64>();
                        let bound = (acc0[lane * d + i] as f64).abs() + terms.map(f64::abs).sum::<f64>();
                        let got = acc[lane * d + i] as f64;
                        assert!((got - want).abs() <= 1e-6 * bound, "accumulate lanes {lanes} d {d} bits {bits} simd={simd:?}: {got} vs {want}");
                    }
                }
            }
        }
    }

    /// Two softmax steps (the second raising some lanes' maxima, some lanes fully masked in the first
    /// or in both) against the float64 softmax state over both blocks, on every path.
    #[test]
    fn softmax_step_matches_float64_on_every_path() {
        let paths = Level::available();
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
        for &simd in &paths {
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
                    assert_eq!((m[lane], l[lane]), (f32::NEG_INFINITY, 0.0), "lane {lane} simd={simd:?}");
                    continue;
                }
                let want_l: f64 = all.iter().map(|x| (x.0 - mx).exp()).sum();
                let want_a: f64 = all.iter().map(|x| (x.0 - mx).exp() * x.1).sum();
                assert_eq!(m[lane] as f64, mx, "lane {lane} simd={simd:?}");
                assert!((l[lane] as f64 - want_l).abs() <= 1e-6 * want_l, "lane {lane} simd={simd:?}: l {} vs {want_l}", l[lane]);
                let bound: f64 = all.iter().map(|x| ((x.0 - mx).exp() * x.1).abs()).sum();
                for i in 0..d {
                    let got = at[i * lp + lane] as f64;
                    assert!((got - want_a).abs() <= 1e-6 * bound, "lane {lane} simd={simd:?}: acc {got} vs {want_a}");
                }
            }
        }
    }
}
