//! Attention over compressed rows on the CPU (DESIGN.md §3).
//!
//! For query token t and kv head g, the G query heads of g are processed together so that every
//! compressed K/V row is unpacked once. Scores use the rotated query: ⟨q, k̂_j⟩ = s_j·⟨Π_k·q, c[idx_j]⟩
//! (+ ⟨q, μ_k⟩ with centering, + the QJL term for PROD keys); values are accumulated in the rotated
//! basis and un-rotated once: out = Π_vᵀ·Σ_j p_j·s'_j·c[vidx_j] (+ μ_v·Σ_j p_j). Softmax is fp32
//! online (running max) over blocks of cells. Full-precision rows (owned cache: residual window and
//! sinks) join the same softmax in the original basis. Split key rows (`codec::outliers`): the query is
//! gathered into the layer's key channel order and each part rotated by its instance; a row is unpacked
//! with both scales folded in.

use super::encode::HeadTensor;
use super::simd::{axpy, dot, exp_neg, exp_shifted_sum, level, lookup, scale_in_place};
use super::tile;
use crate::codec::outliers::OutlierKeys;
use crate::codec::{Dtype, KvCodec, Means, RowLayout, Strides};
use crate::math::scale;

/// Where the additive mask of (query t, cell j) comes from.
#[derive(Clone, Copy)]
pub enum MaskSource<'a> {
    /// Every cell is visible.
    None,
    /// Every cell is visible except those `Hidden` takes (as `Tensor`'s `hidden`).
    AllBut(Hidden<'a>),
    /// An engine's additive mask: element (t, j) at `ptr + (t·row_stride + j)·size`; the cells that
    /// `hidden` takes for query t are hidden from the compressed rows — that query attends them through
    /// their full-precision rows instead (`FullMask::Cells`).
    Tensor { ptr: *const u8, dtype: Dtype, row_stride: usize, hidden: Option<Hidden<'a>> },
    /// Causal by positions: cell j is visible to query t iff cell_pos[j] ≤ query_pos[t].
    Causal { cell_pos: &'a [i64], query_pos: &'a [i64] },
}

/// The cells that have full-precision rows (bit j%64 of word j/64 of `bits`; `row_of[j]` their row),
/// and for which queries: all of them, or with `full_mask` those whose full-mask entry (t, row) is not
/// −inf (an f32 element at `full_mask + (t·full_mask_stride + row)·4`).
#[derive(Clone, Copy)]
pub struct Hidden<'a> {
    pub bits: &'a [u64],
    pub row_of: &'a [i32],
    pub full_mask: *const f32,
    pub full_mask_stride: usize,
}

impl Hidden<'_> {
    /// Whether any cell of j0..j1 has a full-precision row.
    #[inline(always)]
    fn any(&self, j0: usize, j1: usize) -> bool {
        (j0..j1).any(|j| self.bits[j / 64] >> (j % 64) & 1 != 0)
    }

    /// The full-mask value of (query t, row r): 0 without a full mask.
    ///
    /// # Safety
    /// A full mask covers (t, r).
    #[inline(always)]
    unsafe fn full_value(&self, t: usize, r: usize) -> f32 {
        if self.full_mask.is_null() {
            0.0
        } else {
            // SAFETY: the caller guarantees the full mask covers (t, r).
            unsafe { self.full_mask.add(t * self.full_mask_stride + r).read_unaligned() }
        }
    }

    /// Whether query t attends cell j through its full-precision row.
    ///
    /// # Safety
    /// j < n_cells; a full mask covers (t, row_of[j]).
    #[inline(always)]
    unsafe fn takes(&self, t: usize, j: usize) -> bool {
        // SAFETY: the caller's guarantee.
        self.bits[j / 64] >> (j % 64) & 1 != 0 && unsafe { self.full_value(t, self.row_of[j] as usize) } != f32::NEG_INFINITY
    }
}

// SAFETY: a mask is a read-only view of caller memory (or of slices it borrows), valid for the call.
unsafe impl Send for MaskSource<'_> {}
// SAFETY: as for Send: shared use only reads.
unsafe impl Sync for MaskSource<'_> {}

impl MaskSource<'_> {
    /// Additive mask value; −inf hides the cell.
    ///
    /// # Safety
    /// A tensor mask covers (t, j).
    #[inline(always)]
    unsafe fn value(&self, t: usize, j: usize) -> f32 {
        if let MaskSource::Tensor { hidden: Some(h), .. } | MaskSource::AllBut(h) = *self {
            // SAFETY: the caller's guarantee covers the full mask's (t, row) as well.
            if unsafe { h.takes(t, j) } {
                return f32::NEG_INFINITY;
            }
        }
        // SAFETY: the caller's guarantee.
        unsafe { self.raw_value(t, j) }
    }

    /// The additive mask values of query t over cells j0..j0 + out.len() (as `value`), an aligned f16
    /// tensor row (llama.cpp's mask) converted at once.
    ///
    /// # Safety
    /// A tensor mask covers (t, j) for those cells.
    #[inline(always)]
    unsafe fn fill(&self, t: usize, j0: usize, out: &mut [f32]) {
        use half::slice::HalfFloatSliceExt;
        if let MaskSource::Tensor { ptr, dtype: Dtype::F16, row_stride, hidden: None } = *self {
            // SAFETY: the caller guarantees the mask covers (t, j0..j0 + out.len()).
            let p = unsafe { ptr.add((t * row_stride + j0) * 2) };
            if (p as usize).is_multiple_of(std::mem::align_of::<half::f16>()) {
                // SAFETY: as above, and aligned for f16: one vectorised conversion of the row.
                unsafe { std::slice::from_raw_parts(p as *const half::f16, out.len()) }.convert_to_f32_slice(out);
                return;
            }
        }
        for (jj, o) in out.iter_mut().enumerate() {
            // SAFETY: as above.
            *o = unsafe { self.value(t, j0 + jj) };
        }
    }

    /// Additive mask value of (t, j) as the mask gives it, ignoring `hidden`.
    ///
    /// # Safety
    /// A tensor mask covers (t, j).
    #[inline(always)]
    unsafe fn raw_value(&self, t: usize, j: usize) -> f32 {
        match *self {
            MaskSource::None | MaskSource::AllBut(_) => 0.0,
            // SAFETY: the caller guarantees the mask covers (t, j): n_q rows of row_stride ≥ n_cells elements.
            MaskSource::Tensor { ptr, dtype, row_stride, .. } => unsafe {
                let p = ptr.add((t * row_stride + j) * dtype.size());
                match dtype {
                    Dtype::F32 => (p as *const f32).read_unaligned(),
                    Dtype::F16 => half::f16::from_bits((p as *const u16).read_unaligned()).to_f32(),
                    Dtype::Bf16 => half::bf16::from_bits((p as *const u16).read_unaligned()).to_f32(),
                }
            },
            MaskSource::Causal { cell_pos, query_pos } => {
                if cell_pos[j] <= query_pos[t] { 0.0 } else { f32::NEG_INFINITY }
            }
        }
    }
}

/// Full-precision rows in the original basis: row r holds [n_kv_heads][head_dim] elements of `dtype`,
/// K at `k + r·row_stride` bytes and V at `v + r·row_stride`.
#[derive(Clone, Copy)]
pub struct FullRows<'a> {
    pub k: *const u8,
    pub v: *const u8,
    pub dtype: Dtype,
    pub row_stride: usize,
    pub mask: FullMask<'a>,
}

/// Which full-precision rows a query sees.
#[derive(Clone, Copy)]
pub enum FullMask<'a> {
    /// Owned cache: rows 0..pos.len(); row j is visible to query t iff pos[j] ≤ query_pos[t].
    Causal { pos: &'a [i64], query_pos: &'a [i64] },
    /// Slot mode: (cell, row) pairs — row `row` stands for compressed cell `cell` under that cell's
    /// mask value plus the full mask's (t, row) value for the queries the job's `Hidden` gives it to
    /// (the job's mask hides the cell from the compressed pass for exactly those).
    Cells(&'a [(usize, usize)], Hidden<'a>),
}

impl<'a> FullRows<'a> {
    /// Owned-cache rows: packed f32 [n][n_kv_heads][head_dim] with their positions.
    pub fn causal(k: &'a [f32], v: &'a [f32], n_kv: usize, d: usize, pos: &'a [i64], query_pos: &'a [i64]) -> Self {
        debug_assert!(k.len() >= pos.len() * n_kv * d && v.len() >= pos.len() * n_kv * d);
        FullRows {
            k: k.as_ptr().cast(),
            v: v.as_ptr().cast(),
            dtype: Dtype::F32,
            row_stride: n_kv * d * 4,
            mask: FullMask::Causal { pos, query_pos },
        }
    }

    /// Load kv head `g` of row `row` of K and V as f32.
    ///
    /// # Safety
    /// The rows cover `row`.
    #[inline(always)]
    unsafe fn load(&self, row: usize, g: usize, d: usize, k: &mut [f32], v: &mut [f32]) {
        let off = row * self.row_stride + g * d * self.dtype.size();
        // SAFETY: the caller guarantees the row; head g's d elements lie inside it.
        unsafe {
            self.dtype.load(self.k.add(off), &mut k[..d]);
            self.dtype.load(self.v.add(off), &mut v[..d]);
        }
    }
}

/// One attention call: all query tokens and heads of one layer.
#[derive(Clone, Copy)]
pub struct AttendJob<'a> {
    pub codec: &'a KvCodec,
    pub layer: usize,
    /// Centering means the rows were encoded with (None: no centering).
    pub means: Option<&'a Means>,
    /// The layer's key channel order (split key rows, `codec::outliers`); None for unsplit rows.
    pub key_order: Option<&'a [u16]>,
    pub q: HeadTensor,
    pub n_q: usize,
    pub k_store: *const u8,
    pub v_store: *const u8,
    pub n_cells: usize,
    pub mask: MaskSource<'a>,
    /// Full-precision rows joining the same softmax (owned cache: residual window and sinks; slot
    /// mode: rows an engine keeps exact in place of compressed cells).
    pub full: Option<FullRows<'a>>,
    pub scale: f32,
    /// Sink logit per query head (n_heads): one more softmax term with a zero value vector.
    pub sinks: Option<&'a [f32]>,
    /// Logit soft-capping: a scaled score s becomes softcap·tanh(s/softcap) before the mask; 0 = off.
    pub softcap: f32,
    pub out: *mut u8,
    pub out_strides: Strides,
    pub out_dtype: Dtype,
}

// SAFETY: a job reads caller memory valid for the call and its items write disjoint parts of `out`.
unsafe impl Send for AttendJob<'_> {}
// SAFETY: as for Send: items of one job write disjoint outputs, everything else is read.
unsafe impl Sync for AttendJob<'_> {}

/// Cells per softmax block.
const BLOCK: usize = 64;

/// Query tokens processed together: every unpacked K/V row serves all their G heads (16 tokens fill
/// whole vectors of lanes on the tiled path for any G).
const QUERY_TILE: usize = 16;

/// Per-thread working memory; "lanes" are the (query token, head) pairs of one tile and kv head.
pub struct AttendScratch {
    q: Vec<f32>,
    q_rot: Vec<f32>,
    q_proj: Vec<f32>,
    q_mu: Vec<f32>,
    m: Vec<f32>,
    l: Vec<f32>,
    /// Σ p over compressed cells (weight of μ_v with centering).
    l_compressed: Vec<f32>,
    acc: Vec<f32>,
    acc_full: Vec<f32>,
    scores: Vec<f32>,
    masks: Vec<f32>,
    row: Vec<f32>,
    /// One head of a full-precision K row and V row, as f32.
    full_k: Vec<f32>,
    full_v: Vec<f32>,
    /// ⟨Π_k·q, c[idx]⟩ of one K row for every lane (row-by-row path).
    k_dots: Vec<f32>,
    /// Unpacked V rows of a block (row-by-row path), [BLOCK][d].
    v_rows: Vec<f32>,
    signs: Vec<f32>,
    codes: Vec<u8>,
    /// The additive mask of a block, [QUERY_TILE][BLOCK] (code path).
    mask_block: Vec<f32>,
    /// Per cell of a block: some token sees it (K), some lane weighs it (V) (code path).
    visible: Vec<bool>,
    /// Unpacked codes of a block's rows of widths other than 4 and 8 bits, [BLOCK][d] (code path).
    codes_block: Vec<u8>,
    /// The K (then V) scale of each cell of a block (code path).
    row_scale: Vec<f32>,
    out: Vec<f32>,
    tile: TileScratch,
}

impl AttendScratch {
    pub fn new(codec: &KvCodec) -> Self {
        let (lanes, d) = (QUERY_TILE * codec.group_size(), codec.config.head_dim);
        Self {
            q: vec![0.0; lanes * d],
            q_rot: vec![0.0; lanes * d],
            q_proj: vec![0.0; lanes * d],
            q_mu: vec![0.0; lanes],
            m: vec![0.0; lanes],
            l: vec![0.0; lanes],
            l_compressed: vec![0.0; lanes],
            acc: vec![0.0; lanes * d],
            acc_full: vec![0.0; lanes * d],
            scores: vec![0.0; lanes * BLOCK],
            masks: vec![0.0; QUERY_TILE],
            row: vec![0.0; d],
            full_k: vec![0.0; d],
            full_v: vec![0.0; d],
            k_dots: vec![0.0; lanes],
            v_rows: vec![0.0; BLOCK * d],
            signs: vec![0.0; d],
            codes: vec![0; d],
            mask_block: vec![0.0; QUERY_TILE * BLOCK],
            visible: vec![false; BLOCK],
            codes_block: vec![0; BLOCK * d],
            row_scale: vec![0.0; BLOCK],
            out: vec![0.0; d],
            tile: TileScratch::default(),
        }
    }
}

#[inline(always)]
fn read_scale(row: *const u8, offset: usize) -> f32 {
    // SAFETY: callers pass offsets inside the row.
    scale::decode(unsafe { (row.add(offset) as *const u16).read_unaligned() })
}

impl AttendJob<'_> {
    /// Work items: (tile of up to QUERY_TILE query tokens, kv head) pairs; disjoint outputs.
    pub fn n_items(&self) -> usize {
        self.n_q.div_ceil(QUERY_TILE) * self.codec.config.n_kv_heads
    }
}

/// The (query token, query head) output vectors that items `items` of `job` write.
pub fn item_rows(job: &AttendJob, items: std::ops::Range<usize>) -> impl Iterator<Item = (usize, usize)> {
    let (n_kv, n_q) = (job.codec.config.n_kv_heads, job.n_q);
    let group = job.codec.config.n_heads / n_kv;
    items.flat_map(move |item| {
        let (tile, g) = (item / n_kv, item % n_kv);
        let t0 = tile * QUERY_TILE;
        (t0..(t0 + QUERY_TILE).min(n_q)).flat_map(move |tok| (g * group..(g + 1) * group).map(move |h| (tok, h)))
    })
}

/// Run items `items` (index = tile·n_kv_heads + g) of `job`.
///
/// # Safety
/// All pointers of `job` cover what its sizes say; outputs of distinct items do not overlap.
pub unsafe fn run_items(job: &AttendJob, items: std::ops::Range<usize>, s: &mut AttendScratch) {
    let n_kv = job.codec.config.n_kv_heads;
    for item in items {
        let (tile, g) = (item / n_kv, item % n_kv);
        let t0 = tile * QUERY_TILE;
        let t1 = (t0 + QUERY_TILE).min(job.n_q);
        // SAFETY: the caller guarantees the job's pointers; t0..t1 < n_q and g < n_kv_heads.
        unsafe { run_tile(job, t0, t1, g, 0..job.n_cells, true, s) };
    }
}

/// Logit soft-capping: c·tanh(s/c), or s when c is 0.
#[inline(always)]
fn cap(s: f32, c: f32) -> f32 {
    if c == 0.0 { s } else { c * (s / c).tanh() }
}

/// Rescale lane `lane`'s running state to a new maximum.
#[inline(always)]
fn raise_max(s: &mut AttendScratch, lane: usize, new_m: f32, d: usize) {
    if new_m > s.m[lane] {
        let corr = exp_neg(s.m[lane] - new_m);
        s.l[lane] *= corr;
        s.l_compressed[lane] *= corr;
        scale_in_place(corr, &mut s.acc[lane * d..(lane + 1) * d]);
        scale_in_place(corr, &mut s.acc_full[lane * d..(lane + 1) * d]);
        s.m[lane] = new_m;
    }
}

/// The online-softmax step of the row-by-row paths over a block of `nb` scores per lane (s.scores,
/// rows of BLOCK): raise each lane's running maximum, turn its scores into e^(s − m) and add them to
/// l and l_compressed. Lanes with nothing visible in the block are left as they are.
#[inline(always)]
fn softmax_block(s: &mut AttendScratch, lanes: usize, nb: usize, d: usize) {
    for lane in 0..lanes {
        let block_max = s.scores[lane * BLOCK..lane * BLOCK + nb].iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if block_max == f32::NEG_INFINITY {
            continue;
        }
        raise_max(s, lane, block_max.max(s.m[lane]), d);
        let m = s.m[lane];
        let sum = exp_shifted_sum(&mut s.scores[lane * BLOCK..lane * BLOCK + nb], m);
        s.l[lane] += sum;
        s.l_compressed[lane] += sum;
    }
}

/// Attention of query tokens t0..t1 of kv head g over compressed cells `cells`. With `finish`, the
/// full-precision rows and sinks join and the outputs are written; without, the lanes' softmax state
/// (m, l, l_compressed, acc) is left in `s` for a split-K merge (`split`), and the job has no
/// full-precision rows.
#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
unsafe fn run_tile(job: &AttendJob, t0: usize, t1: usize, g: usize, cells: std::ops::Range<usize>, finish: bool, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let lanes = (t1 - t0) * group;
    let means = job.means;
    let key_mse = lc.key.mse_stage();
    let prod = lc.k_layout.qjl;

    for lane in 0..lanes {
        let (t, h) = (t0 + lane / group, lane % group);
        let q = &mut s.q[lane * d..(lane + 1) * d];
        // SAFETY: t < n_q and the head index < n_heads: inside the validated q tensor.
        unsafe { job.q.load(t, g * group + h, q) };
        if let (Some(ok), Some(order)) = (&lc.outliers, job.key_order) {
            ok.rotate_query(&order[g * d..(g + 1) * d], q, &mut s.row, &mut s.q_rot[lane * d..(lane + 1) * d]);
        } else if let Some(m) = key_mse {
            m.rotation().rotate(q, &mut s.q_rot[lane * d..(lane + 1) * d]);
        }
        if prod {
            lc.key.project_query(q, &mut s.q_proj[lane * d..(lane + 1) * d]);
        }
        s.q_mu[lane] = means.map_or(0.0, |m| dot(q, &m.k[g * d..(g + 1) * d]));
        s.m[lane] = f32::NEG_INFINITY;
        s.l[lane] = 0.0;
        s.l_compressed[lane] = 0.0;
    }
    s.acc[..lanes * d].iter_mut().for_each(|v| *v = 0.0);
    s.acc_full[..lanes * d].iter_mut().for_each(|v| *v = 0.0);

    // The tiled path has no logit soft-capping: a soft-capped job takes the row-by-row path.
    if !prod && lanes >= tile::VECTOR && job.softcap == 0.0 {
        // SAFETY: the caller guarantees the job's pointers; t0..t1 < n_q and g < n_kv_heads.
        unsafe { compressed_tiled(job, t0, t1, g, cells, s) };
    } else if codes_path(job, lanes, level()) {
        // SAFETY: as above; codes_path holds.
        unsafe { compressed_codes(job, t0, t1, g, cells, s) };
    } else {
        // SAFETY: as above.
        unsafe { compressed_rows(job, t0, t1, g, cells, s) };
    }
    if !finish {
        // a split-K share: the merge adds the full-precision rows once
        return;
    }
    // SAFETY: as above; s.q holds the lanes' queries.
    unsafe {
        full_rows(job, t0, t1, g, s);
        finish_tile(job, t0, t1, g, s);
    }
}

/// The full-precision rows of `job` (original basis, uncentered) for lanes t0..t1 × the group of kv
/// head g, into their running softmax state (m, l, acc_full).
///
/// # Safety
/// As for `run_tile`; `s.q` holds the lanes' (unrotated) queries.
#[inline(always)]
unsafe fn full_rows(job: &AttendJob, t0: usize, t1: usize, g: usize, s: &mut AttendScratch) {
    let Some(full) = job.full else { return };
    let d = job.codec.config.head_dim;
    let group = job.codec.group_size();
    let (nt, lanes) = (t1 - t0, (t1 - t0) * group);
    let n = match full.mask {
        FullMask::Causal { pos, .. } => pos.len(),
        FullMask::Cells(pairs, _) => pairs.len(),
    };
    for j in 0..n {
        let mut any = false;
        for t in 0..nt {
            s.masks[t] = match full.mask {
                FullMask::Causal { pos, query_pos } => {
                    if pos[j] <= query_pos[t0 + t] { 0.0 } else { f32::NEG_INFINITY }
                }
                // SAFETY: t0 + t < n_q and the pair's cell < n_cells: inside the mask and the full mask.
                FullMask::Cells(pairs, h) => unsafe {
                    let fm = h.full_value(t0 + t, pairs[j].1);
                    if fm == f32::NEG_INFINITY { fm } else { job.mask.raw_value(t0 + t, pairs[j].0) + fm }
                },
            };
            any |= s.masks[t] != f32::NEG_INFINITY;
        }
        if !any {
            continue;
        }
        let row = match full.mask {
            FullMask::Causal { .. } => j,
            FullMask::Cells(pairs, _) => pairs[j].1,
        };
        // SAFETY: the job's full rows cover every row they name.
        unsafe { full.load(row, g, d, &mut s.full_k, &mut s.full_v) };
        for lane in 0..lanes {
            let mv = s.masks[lane / group];
            if mv == f32::NEG_INFINITY {
                continue;
            }
            let sc = cap(dot(&s.q[lane * d..(lane + 1) * d], &s.full_k[..d]) * job.scale, job.softcap) + mv;
            raise_max(s, lane, sc, d);
            let p = exp_neg(sc - s.m[lane]);
            s.l[lane] += p;
            axpy(p, &s.full_v[..d], &mut s.acc_full[lane * d..(lane + 1) * d]);
        }
    }
}

/// Lanes t0..t1 × the group of kv head g whose softmax state (m, l, l_compressed, acc, acc_full) is
/// complete in `s`: add the sinks, un-rotate once, add the centering mean and the full-precision
/// part, normalise and store the outputs.
///
/// # Safety
/// The job's output covers tokens t0..t1 < n_q of every head of group g.
#[inline(always)]
pub(super) unsafe fn finish_tile(job: &AttendJob, t0: usize, t1: usize, g: usize, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let lanes = (t1 - t0) * group;
    let means = job.means;
    // Attention sinks: one more term per query head in the denominator, with nothing to add to the
    // numerator (a query that sees no cell then still gets a zero row).
    if let Some(sinks) = job.sinks {
        for lane in 0..lanes {
            let sink = sinks[g * group + lane % group];
            raise_max(s, lane, sink, d);
            s.l[lane] += exp_neg(sink - s.m[lane]);
        }
    }

    // Un-rotate once, add the centering mean and the full-precision part, normalise, store.
    for lane in 0..lanes {
        let (t, h) = (t0 + lane / group, lane % group);
        // SAFETY: t < n_q and the head index < n_heads: inside the validated out tensor.
        let out_ptr = unsafe { job.out.add(job.out_strides.offset(t, g * group + h)) };
        if s.l[lane] == 0.0 {
            s.out.iter_mut().for_each(|v| *v = 0.0);
        } else {
            lc.value.rotation().unrotate(&s.acc[lane * d..(lane + 1) * d], &mut s.out);
            let inv = 1.0 / s.l[lane];
            let mu_w = s.l_compressed[lane];
            for i in 0..d {
                let mu = means.map_or(0.0, |m| m.v[g * d + i]);
                s.out[i] = (s.out[i] + mu * mu_w + s.acc_full[lane * d + i]) * inv;
            }
        }
        // SAFETY: out_ptr addresses head_dim writable elements of this item only.
        unsafe { job.out_dtype.store(&s.out, out_ptr) };
    }
}

/// The compressed cells of one tile, row by row: each K/V row is unpacked once and serves the tile's
/// lanes through dot products (K) and one accumulation pass per block (V) — the path for what
/// neither the tiled path nor `compressed_codes` takes: PROD keys, split key rows, the portable
/// level, a head size that is no whole number of registers. Updates the lanes' m, l, l_compressed
/// and acc.
///
/// # Safety
/// As for `run_tile`; the lanes were initialised by it.
#[inline(always)]
unsafe fn compressed_rows(job: &AttendJob, t0: usize, t1: usize, g: usize, cells: std::ops::Range<usize>, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let (kl, vl) = (&codec.layers[job.layer].k_layout, &codec.layers[job.layer].v_layout);
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let nt = t1 - t0;
    let lanes = nt * group;
    let key_mse = lc.key.mse_stage();
    let prod = kl.qjl;
    let qjl_gain = lc.key.qjl_gain();
    let k_table: &[f32] = key_mse.map_or(&[], |m| &m.codebook().centroids_f32);
    let v_table: &[f32] = &lc.value.codebook().centroids_f32;
    let (k_row_bytes, v_row_bytes) = (kl.row_bytes(), vl.row_bytes());
    let simd = level();

    let mut j0 = cells.start;
    while j0 < cells.end {
        let j1 = (j0 + BLOCK).min(cells.end);
        let nb = j1 - j0;
        // Scores of the block: each visible K row is unpacked once for all lanes.
        for j in j0..j1 {
            let mut any = false;
            for t in 0..nt {
                // SAFETY: t0 + t < n_q and j < n_cells: inside the mask (validated row stride ≥ n_cells).
                s.masks[t] = unsafe { job.mask.value(t0 + t, j) };
                any |= s.masks[t] != f32::NEG_INFINITY;
            }
            if !any {
                for lane in 0..lanes {
                    s.scores[lane * BLOCK + (j - j0)] = f32::NEG_INFINITY;
                }
                continue;
            }
            // SAFETY: j < n_cells and the K store holds n_cells rows of k_row_bytes.
            let row = unsafe { job.k_store.add(j * k_row_bytes) };
            // The MSE stage's scale (used only with one).
            let mut ks = 0.0;
            if let Some(m) = key_mse {
                // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
                let packed = unsafe { std::slice::from_raw_parts(row.add(kl.codes_offset(g)), kl.code_bytes()) };
                ks = match &lc.outliers {
                    // SAFETY: as above.
                    Some(ok) => unsafe { unpack_split(ok, kl, row, g, packed, &mut s.row, &mut s.codes) },
                    None => {
                        lookup(packed, m.bits(), k_table, &mut s.row, &mut s.codes);
                        read_scale(row, kl.scale_offset(g))
                    }
                };
                tile::dots(&s.row, &s.q_rot, lanes, d, &mut s.k_dots, simd);
            }
            if prod {
                // SAFETY: the sign bits of head g lie inside the row (RowLayout offsets).
                let packed = unsafe { std::slice::from_raw_parts(row.add(kl.signs_offset(g)), kl.sign_bytes()) };
                lookup(packed, 1, &[-1.0, 1.0], &mut s.signs, &mut s.codes);
            }
            let gamma = if prod { read_scale(row, kl.gamma_offset(g)) * qjl_gain } else { 0.0 };
            for lane in 0..lanes {
                let mv = s.masks[lane / group];
                if mv == f32::NEG_INFINITY {
                    s.scores[lane * BLOCK + (j - j0)] = f32::NEG_INFINITY;
                    continue;
                }
                let mut ip = s.q_mu[lane];
                if key_mse.is_some() {
                    ip += ks * s.k_dots[lane];
                }
                if prod {
                    ip += gamma * dot(&s.q_proj[lane * d..(lane + 1) * d], &s.signs);
                }
                s.scores[lane * BLOCK + (j - j0)] = cap(ip * job.scale, job.softcap) + mv;
            }
        }
        softmax_block(s, lanes, nb, d);
        // Value accumulation in the rotated basis: each V row that some lane weighs is unpacked once
        // into the block's rows, its scale folded into the weights; then one pass over the block
        // for all lanes. Cells no lane weighs get weight 0 (their buffered row is stale but finite).
        for jj in 0..nb {
            if !(0..lanes).any(|lane| s.scores[lane * BLOCK + jj] > 0.0) {
                (0..lanes).for_each(|lane| s.scores[lane * BLOCK + jj] = 0.0);
                continue;
            }
            // SAFETY: j0 + jj < n_cells and the V store holds n_cells rows of v_row_bytes.
            let row = unsafe { job.v_store.add((j0 + jj) * v_row_bytes) };
            let vs = read_scale(row, vl.scale_offset(g));
            // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
            let packed = unsafe { std::slice::from_raw_parts(row.add(vl.codes_offset(g)), vl.code_bytes()) };
            lookup(packed, lc.value.bits(), v_table, &mut s.v_rows[jj * d..(jj + 1) * d], &mut s.codes);
            for lane in 0..lanes {
                let p = &mut s.scores[lane * BLOCK + jj];
                *p = if *p > 0.0 { *p * vs } else { 0.0 };
            }
        }
        tile::accumulate_lanes(&s.v_rows, &s.scores, BLOCK, lanes, d, nb, &mut s.acc, simd);
        j0 = j1;
    }

}

/// Whether `compressed_codes` runs this job's tiles of `lanes` lanes: MSE keys without outlier
/// channels, an explicit SIMD level and a head size that is a whole number of its registers.
fn codes_path(job: &AttendJob, lanes: usize, simd: super::simd::Level) -> bool {
    let lc = &job.codec.layers[job.layer];
    let d = job.codec.config.head_dim;
    let key_bits = lc.key.mse_stage().map(|m| m.bits());
    simd != super::simd::Level::Portable
        && !lc.k_layout.qjl
        && lc.outliers.is_none()
        && key_bits.is_some()
        && d.is_multiple_of(simd.lanes())
        && lanes > 0
}

/// A codebook padded with zeros to the 256 entries of the code kernels' tables.
fn table256(c: &[f32]) -> [f32; 256] {
    let mut t = [0.0f32; 256];
    t[..c.len()].copy_from_slice(c);
    t
}

/// The row-by-row path (tiles of fewer than 16 lanes, decode among them) for MSE keys: per block of
/// cells, the key scores of all lanes straight from the codes (`tile::code_scores`: 4-bit codes
/// looked up in registers where they lie in the cache, 8-bit codes gathered where they lie, codes of
/// other widths unpacked to bytes once per block, then looked up in registers up to 5 bits and
/// gathered above), the online-softmax
/// step, then the values the same way
/// (`tile::code_accumulate`). Same sums as `compressed_rows` (the order of a dot product's terms
/// differs). Updates the lanes' m, l, l_compressed and acc.
///
/// # Safety
/// As for `run_tile`; the lanes were initialised by it, and `codes_path` holds.
#[inline(always)]
unsafe fn compressed_codes(job: &AttendJob, t0: usize, t1: usize, g: usize, cells: std::ops::Range<usize>, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let (kl, vl) = (&lc.k_layout, &lc.v_layout);
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let nt = t1 - t0;
    let lanes = nt * group;
    let simd = level();
    let key_bits = lc.key.mse_stage().map_or(0, |m| m.bits());
    let value_bits = lc.value.bits();
    let k_table = table256(lc.key.mse_stage().map_or(&[][..], |m| &m.codebook().centroids_f32[..]));
    let v_table = table256(&lc.value.codebook().centroids_f32);
    let (k_row_bytes, v_row_bytes) = (kl.row_bytes(), vl.row_bytes());

    let mut j0 = cells.start;
    while j0 < cells.end {
        let j1 = (j0 + BLOCK).min(cells.end);
        let nb = j1 - j0;
        // The block's mask: each token's additive value, and which cells any token sees.
        for t in 0..nt {
            // SAFETY: t0 + t < n_q and j0..j1 ⊂ 0..n_cells: inside the mask.
            unsafe { job.mask.fill(t0 + t, j0, &mut s.mask_block[t * BLOCK..t * BLOCK + nb]) };
        }
        for jj in 0..nb {
            s.visible[jj] = (0..nt).any(|t| s.mask_block[t * BLOCK + jj] != f32::NEG_INFINITY);
        }
        // SAFETY: cells j0..j1 < n_cells of the K store; head g's codes and scale inside each row.
        let k_rows = unsafe { block_rows(job.k_store, j0, nb, k_row_bytes, kl.codes_offset(g), key_bits, d, &s.visible[..nb], &mut s.codes_block) };
        // SAFETY: `k_rows` holds nb rows of d codes < 2^key_bits, of the kind for key_bits.
        unsafe { tile::code_scores(k_rows, &k_table, &s.q_rot, lanes, d, &s.visible[..nb], &mut s.scores, BLOCK, simd) };
        // Each visible cell's key scale (0 for the others: their mask is −inf for every token).
        for jj in 0..nb {
            s.row_scale[jj] = if s.visible[jj] {
                // SAFETY: j0 + jj < n_cells; head g's scale lies inside the row.
                read_scale(unsafe { job.k_store.add((j0 + jj) * k_row_bytes) }, kl.scale_offset(g))
            } else {
                0.0
            };
        }
        for lane in 0..lanes {
            let (bias, mask) = (s.q_mu[lane], &s.mask_block[(lane / group) * BLOCK..(lane / group) * BLOCK + nb]);
            let sc = &mut s.scores[lane * BLOCK..lane * BLOCK + nb];
            if job.softcap == 0.0 {
                for ((x, &ks), &mv) in sc.iter_mut().zip(&s.row_scale[..nb]).zip(mask) {
                    // A hidden cell's score is unset (not visible to any token) or finite: −inf wins.
                    let v = (bias + ks * *x) * job.scale + mv;
                    *x = if mv == f32::NEG_INFINITY { f32::NEG_INFINITY } else { v };
                }
            } else {
                for ((x, &ks), &mv) in sc.iter_mut().zip(&s.row_scale[..nb]).zip(mask) {
                    *x = if mv == f32::NEG_INFINITY { f32::NEG_INFINITY } else { cap((bias + ks * *x) * job.scale, job.softcap) + mv };
                }
            }
        }
        softmax_block(s, lanes, nb, d);
        // Values: the scale of each row some lane weighs folded into the weights; cells no lane
        // weighs get weight 0 (their codes are still read, whatever they hold: every byte reads an
        // entry of the padded table, see `tile::code_scores`).
        for jj in 0..nb {
            let weighed = (0..lanes).any(|lane| s.scores[lane * BLOCK + jj] > 0.0);
            s.visible[jj] = weighed;
            s.row_scale[jj] = if weighed {
                // SAFETY: j0 + jj < n_cells; head g's scale lies inside the row.
                read_scale(unsafe { job.v_store.add((j0 + jj) * v_row_bytes) }, vl.scale_offset(g))
            } else {
                0.0
            };
        }
        for lane in 0..lanes {
            for (p, &vs) in s.scores[lane * BLOCK..lane * BLOCK + nb].iter_mut().zip(&s.row_scale[..nb]) {
                *p = if *p > 0.0 { *p * vs } else { 0.0 };
            }
        }
        // SAFETY: as for the K rows, in the V store.
        let v_rows = unsafe { block_rows(job.v_store, j0, nb, v_row_bytes, vl.codes_offset(g), value_bits, d, &s.visible[..nb], &mut s.codes_block) };
        // SAFETY: `v_rows` holds nb rows of d codes < 2^value_bits, of the kind for value_bits.
        unsafe { tile::code_accumulate(v_rows, &v_table, &s.scores, BLOCK, lanes, d, nb, &mut s.acc, simd) };
        j0 = j1;
    }
}

/// The code rows of cells j0..j0+nb of one head (codes at `codes_offset` of each row of a store of
/// `row_bytes`-byte rows): 4- and 8-bit codes where they lie, codes of other widths unpacked into `buf`
/// ([nb][d]; rows of cells not `wanted` are not unpacked and keep what an earlier block wrote, or
/// zeros).
///
/// # Safety
/// The store holds cells j0..j0+nb, and each row holds head codes of `bits` bits at `codes_offset`.
#[allow(clippy::too_many_arguments)]
unsafe fn block_rows(store: *const u8, j0: usize, nb: usize, row_bytes: usize, codes_offset: usize, bits: u32, d: usize, wanted: &[bool], buf: &mut [u8]) -> tile::CodeRows {
    // SAFETY: the caller's contract: cell j0's row lies inside the store.
    let first = unsafe { store.add(j0 * row_bytes + codes_offset) };
    match bits {
        4 => return tile::CodeRows { ptr: first, stride: row_bytes, kind: tile::CodeKind::Nibbles },
        8 => return tile::CodeRows { ptr: first, stride: row_bytes, kind: tile::CodeKind::Bytes256 },
        _ => {}
    }
    let code_bytes = crate::math::packing::packed_len(d, bits);
    for (jj, _) in wanted[..nb].iter().enumerate().filter(|(_, w)| **w) {
        // SAFETY: as above, for cell j0 + jj.
        let packed = unsafe { std::slice::from_raw_parts(first.add(jj * row_bytes), code_bytes) };
        crate::math::packing::unpack(packed, bits, &mut buf[jj * d..(jj + 1) * d]);
    }
    tile::CodeRows { ptr: buf.as_ptr(), stride: d, kind: tile::CodeKind::of_bits(bits, false) }
}

/// Unpack head g of a split K row (`codec::outliers`): the outliers' centroids times their scale, then
/// the others' times theirs, in the layer's key channel order (the basis of the rotated queries).
/// Returns 1, the scale the caller multiplies the dots by (both scales are folded in).
///
/// # Safety
/// `row` is a K row of layout `kl` and `packed` its head-g codes.
#[inline(always)]
unsafe fn unpack_split(ok: &OutlierKeys, kl: &RowLayout, row: *const u8, g: usize, packed: &[u8], out: &mut [f32], codes: &mut [u8]) -> f32 {
    let c = ok.channels;
    let (hi, lo) = packed.split_at(kl.split_code_bytes());
    let d = out.len();
    // `lookup` unpacks as many codes as its scratch holds: give each part its width.
    lookup(hi, ok.hi.bits(), &ok.hi.codebook().centroids_f32, &mut out[..c], &mut codes[..c]);
    lookup(lo, ok.lo.bits(), &ok.lo.codebook().centroids_f32, &mut out[c..], &mut codes[..d - c]);
    scale_in_place(read_scale(row, kl.scale_offset(g)), &mut out[..c]);
    scale_in_place(read_scale(row, kl.second_scale_offset(g)), &mut out[c..]);
    1.0
}

/// Cells per block of the tiled path (its working set — unpacked K and V rows, scores — stays in L1).
const TILE_BLOCK: usize = 32;

/// Working memory of the tiled path (`tile` describes the layouts), allocated on first use.
#[derive(Default)]
struct TileScratch {
    /// Rotated queries, [d][lp].
    qt: Vec<f32>,
    /// ⟨q, μ_k⟩·scale per lane (0 without centering).
    q_mu: Vec<f32>,
    /// Value accumulators in the rotated basis, [d][lp].
    at: Vec<f32>,
    /// Scores, then probabilities times the value scale, [TILE_BLOCK][lp].
    scores: Vec<f32>,
    /// The additive mask per lane of a block that is neither all visible nor all hidden, [TILE_BLOCK][lp].
    mask: Vec<f32>,
    /// Unpacked K and V rows of a block (centroid values, unscaled), [TILE_BLOCK][d].
    k_rows: Vec<f32>,
    v_rows: Vec<f32>,
    /// Row scales of a block; 0 for cells no lane of the tile sees.
    k_scale: Vec<f32>,
    v_scale: Vec<f32>,
    /// Whether some lane of the tile sees the cell.
    visible: Vec<bool>,
    m: Vec<f32>,
    l: Vec<f32>,
}

impl TileScratch {
    fn ensure(&mut self, d: usize, lp_max: usize) {
        if self.qt.len() < d * lp_max {
            *self = Self {
                qt: vec![0.0; d * lp_max],
                q_mu: vec![0.0; lp_max],
                at: vec![0.0; d * lp_max],
                scores: vec![0.0; TILE_BLOCK * lp_max],
                mask: vec![0.0; TILE_BLOCK * lp_max],
                // Rows of hidden cells are never unpacked: they keep these finite values.
                k_rows: vec![0.0; TILE_BLOCK * d],
                v_rows: vec![0.0; TILE_BLOCK * d],
                k_scale: vec![0.0; TILE_BLOCK],
                v_scale: vec![0.0; TILE_BLOCK],
                visible: vec![false; TILE_BLOCK],
                m: vec![0.0; lp_max],
                l: vec![0.0; lp_max],
            };
        }
    }
}

/// What the mask says about a block of cells for the queries of a tile.
#[derive(Clone, Copy, PartialEq, Eq)]
enum BlockMask {
    /// Every (query, cell) pair has mask 0.
    Visible,
    /// Every pair is −inf.
    Hidden,
    /// Anything else: the values are in `TileScratch::mask`, per lane.
    Mixed,
}

/// Classify block [j0, j1) for queries [t0, t1) from the raw mask bits (±0 is visible, −inf hidden).
///
/// # Safety
/// A tensor mask covers rows t0..t1 and cells j0..j1.
unsafe fn classify_block(mask: &MaskSource, t0: usize, t1: usize, j0: usize, j1: usize) -> BlockMask {
    let (mut any_nonzero, mut all_hidden) = (false, true);
    match *mask {
        MaskSource::None => return BlockMask::Visible,
        MaskSource::AllBut(h) => {
            return if h.any(j0, j1) { BlockMask::Mixed } else { BlockMask::Visible };
        }
        MaskSource::Tensor { ptr, dtype, row_stride, hidden } => {
            if let Some(h) = hidden {
                // a cell with a full-precision row makes a visible block mixed
                any_nonzero |= h.any(j0, j1);
            }
            let (abs_bits, neg_inf_bits): (u32, u32) = match dtype {
                Dtype::F32 => (0x7fff_ffff, 0xff80_0000),
                Dtype::F16 => (0x7fff, 0xfc00),
                Dtype::Bf16 => (0x7fff, 0xff80),
            };
            let wide = dtype == Dtype::F32;
            for t in t0..t1 {
                // SAFETY: the caller guarantees the mask covers (t, j) for j in j0..j1.
                let row = unsafe { ptr.add((t * row_stride + j0) * dtype.size()) };
                let (mut or_bits, mut and_hidden) = (0u32, true);
                if wide {
                    for jj in 0..j1 - j0 {
                        // SAFETY: as above.
                        let bits = unsafe { (row.add(4 * jj) as *const u32).read_unaligned() };
                        or_bits |= bits & abs_bits;
                        and_hidden &= bits == neg_inf_bits;
                    }
                } else {
                    for jj in 0..j1 - j0 {
                        // SAFETY: as above.
                        let bits = unsafe { (row.add(2 * jj) as *const u16).read_unaligned() } as u32;
                        or_bits |= bits & abs_bits;
                        and_hidden &= bits == neg_inf_bits;
                    }
                }
                any_nonzero |= or_bits != 0;
                all_hidden &= and_hidden;
            }
        }
        MaskSource::Causal { cell_pos, query_pos } => {
            let first_query = query_pos[t0..t1].iter().copied().min().unwrap_or(i64::MIN);
            let last_query = query_pos[t0..t1].iter().copied().max().unwrap_or(i64::MIN);
            let (lo, hi) = cell_pos[j0..j1].iter().fold((i64::MAX, i64::MIN), |(lo, hi), &p| (lo.min(p), hi.max(p)));
            if hi <= first_query {
                return BlockMask::Visible;
            }
            if lo > last_query {
                return BlockMask::Hidden;
            }
            return BlockMask::Mixed;
        }
    }
    match (any_nonzero, all_hidden) {
        (false, _) => BlockMask::Visible,
        (true, true) => BlockMask::Hidden,
        (true, false) => BlockMask::Mixed,
    }
}

/// The compressed cells of one tile as small matrix products (`tile`): per block of cells, the K rows
/// visible to some lane are unpacked once into [nb][d] and multiplied with the transposed rotated
/// queries into scores for all lanes; after the online-softmax step the V rows, unpacked once, are
/// accumulated into the transposed value accumulators. Updates the lanes' m, l, l_compressed and acc.
///
/// # Safety
/// As for `run_tile`; the lanes were initialised by it (q_rot, q_mu), and the keys are MSE.
#[inline(always)]
unsafe fn compressed_tiled(job: &AttendJob, t0: usize, t1: usize, g: usize, cells: std::ops::Range<usize>, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let (kl, vl) = (&codec.layers[job.layer].k_layout, &codec.layers[job.layer].v_layout);
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let lanes = (t1 - t0) * group;
    let lp = lanes.next_multiple_of(tile::VECTOR);
    let key = lc.key.mse_stage().expect("the tiled path serves MSE keys");
    let (k_table, v_table) = (&key.codebook().centroids_f32[..], &lc.value.codebook().centroids_f32[..]);
    let (k_bits, v_bits) = (key.bits(), lc.value.bits());
    let (k_row_bytes, v_row_bytes) = (kl.row_bytes(), vl.row_bytes());
    let (k_codes, v_codes) = (kl.codes_offset(g), vl.codes_offset(g));
    let (k_scale_at, v_scale_at) = (kl.scale_offset(g), vl.scale_offset(g));
    let simd = level();

    let ts = &mut s.tile;
    ts.ensure(d, QUERY_TILE * group.next_multiple_of(tile::VECTOR));
    for lane in 0..lp {
        let live = lane < lanes;
        for i in 0..d {
            ts.qt[i * lp + lane] = if live { s.q_rot[lane * d + i] } else { 0.0 };
        }
        ts.q_mu[lane] = if live { s.q_mu[lane] * job.scale } else { 0.0 };
        ts.m[lane] = f32::NEG_INFINITY;
        ts.l[lane] = 0.0;
    }
    ts.at[..d * lp].fill(0.0);

    let mut j0 = cells.start;
    while j0 < cells.end {
        let j1 = (j0 + TILE_BLOCK).min(cells.end);
        let nb = j1 - j0;
        // SAFETY: the job's mask covers rows t0..t1 < n_q and cells j0..j1 ≤ n_cells.
        let class = unsafe { classify_block(&job.mask, t0, t1, j0, j1) };
        if class == BlockMask::Hidden {
            j0 = j1;
            continue;
        }
        if class == BlockMask::Mixed {
            for jj in 0..nb {
                let mut any = false;
                for t in 0..t1 - t0 {
                    // SAFETY: as above.
                    let mv = unsafe { job.mask.value(t0 + t, j0 + jj) };
                    any |= mv != f32::NEG_INFINITY;
                    ts.mask[jj * lp + t * group..jj * lp + (t + 1) * group].fill(mv);
                }
                ts.mask[jj * lp + lanes..(jj + 1) * lp].fill(0.0);
                ts.visible[jj] = any;
            }
        } else {
            ts.visible[..nb].fill(true);
        }

        // Scores: each visible K row unpacked once for all lanes.
        for jj in 0..nb {
            if !ts.visible[jj] {
                ts.k_scale[jj] = 0.0;
                continue;
            }
            // SAFETY: j0 + jj < n_cells and the K store holds n_cells rows of k_row_bytes.
            let row = unsafe { job.k_store.add((j0 + jj) * k_row_bytes) };
            // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
            let packed = unsafe { std::slice::from_raw_parts(row.add(k_codes), kl.code_bytes()) };
            let out = &mut ts.k_rows[jj * d..(jj + 1) * d];
            ts.k_scale[jj] = job.scale
                * match &lc.outliers {
                    // SAFETY: as above.
                    Some(ok) => unsafe { unpack_split(ok, kl, row, g, packed, out, &mut s.codes) },
                    None => {
                        lookup(packed, k_bits, k_table, out, &mut s.codes);
                        read_scale(row, k_scale_at)
                    }
                };
        }
        tile::scores(&ts.k_rows, &ts.qt, &ts.k_scale, &ts.q_mu, d, lp, nb, &mut ts.scores, simd);
        if class == BlockMask::Mixed {
            for (x, &mv) in ts.scores[..nb * lp].iter_mut().zip(&ts.mask[..nb * lp]) {
                *x += mv;
            }
        }

        // Values: each visible V row unpacked once for all lanes.
        for jj in 0..nb {
            if !ts.visible[jj] {
                ts.v_scale[jj] = 0.0;
                continue;
            }
            // SAFETY: j0 + jj < n_cells and the V store holds n_cells rows of v_row_bytes.
            let row = unsafe { job.v_store.add((j0 + jj) * v_row_bytes) };
            ts.v_scale[jj] = read_scale(row, v_scale_at);
            // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
            let packed = unsafe { std::slice::from_raw_parts(row.add(v_codes), vl.code_bytes()) };
            lookup(packed, v_bits, v_table, &mut ts.v_rows[jj * d..(jj + 1) * d], &mut s.codes);
        }
        tile::softmax_step(&mut ts.scores, &ts.v_scale, &mut ts.m, &mut ts.l, &mut ts.at, d, lp, nb, simd);
        tile::accumulate(&ts.v_rows, &ts.scores, d, lp, nb, &mut ts.at, simd);
        j0 = j1;
    }

    for lane in 0..lanes {
        s.m[lane] = ts.m[lane];
        s.l[lane] = ts.l[lane];
        s.l_compressed[lane] = ts.l[lane];
        for i in 0..d {
            s.acc[lane * d + i] = ts.at[i * lp + lane];
        }
    }
}

// --- split-K: one item's cells cut into chunks (`super::split`) ----------------------------------

/// Cells a split-K chunk holds at the least (fewer: the shares' fixed costs and the merge outweigh
/// the cells they would take off the slowest share).
pub const MIN_CHUNK_CELLS: usize = 256;

/// How one call's work is cut: every item (query tile, kv head) into `chunks` ranges of
/// `chunk_cells` cells (the last one shorter); `chunks` 1 is the plain item split. Work units are
/// (item, chunk) pairs, item-major: unit u = item·chunks + chunk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    pub items: usize,
    pub chunks: usize,
    pub chunk_cells: usize,
}

impl SplitPlan {
    /// The plan for `job` shared by `shares` threads: split-K when it shortens the slowest share by
    /// at least 1/8 (measured in item-cells: ⌈units/shares⌉ · chunk_cells against
    /// ⌈items/shares⌉ · n_cells), with chunks of at least `MIN_CHUNK_CELLS` cells, a multiple of the
    /// softmax block (full-precision rows join in the merge). Every share computes the same plan from
    /// the same arguments.
    pub fn new(job: &AttendJob, shares: usize) -> Self {
        let (items, n_cells) = (job.n_items(), job.n_cells);
        let plain = SplitPlan { items, chunks: 1, chunk_cells: n_cells };
        if shares < 2 || items == 0 || n_cells < 2 * MIN_CHUNK_CELLS {
            return plain;
        }
        let plain_cost = items.div_ceil(shares) as u128 * n_cells as u128;
        let (mut best, mut best_cost) = (plain, plain_cost);
        for s in 2..=shares.min(n_cells / MIN_CHUNK_CELLS) {
            let chunk_cells = n_cells.div_ceil(s).next_multiple_of(BLOCK);
            if chunk_cells < MIN_CHUNK_CELLS {
                break;
            }
            let chunks = n_cells.div_ceil(chunk_cells);
            let cost = (items * chunks).div_ceil(shares) as u128 * chunk_cells as u128;
            if cost < best_cost {
                (best, best_cost) = (SplitPlan { items, chunks, chunk_cells }, cost);
            }
        }
        if best_cost * 8 > plain_cost * 7 { plain } else { best }
    }

    /// Whether the cells are split (else the plain item split runs).
    pub fn is_split(&self) -> bool {
        self.chunks > 1
    }

    /// Work units: (item, chunk) pairs.
    pub fn units(&self) -> usize {
        self.items * self.chunks
    }

    /// Item and cell range of unit `u`.
    pub fn unit(&self, u: usize, n_cells: usize) -> (usize, std::ops::Range<usize>) {
        let (item, chunk) = (u / self.chunks, u % self.chunks);
        let c0 = (chunk * self.chunk_cells).min(n_cells);
        (item, c0..(c0 + self.chunk_cells).min(n_cells))
    }
}

/// Lanes of the largest tile of `job`.
fn max_lanes(job: &AttendJob) -> usize {
    job.n_q.min(QUERY_TILE) * job.codec.group_size()
}

/// f32 values of one unit's partial result: per lane of the largest tile m, l, l_compressed, then
/// the lanes' accumulators (rotated basis), d each.
pub fn partial_len(job: &AttendJob) -> usize {
    max_lanes(job) * (3 + job.codec.config.head_dim)
}

/// Compute unit `u` of `plan` (its item over its chunk of cells) into `out` (`partial_len` values):
/// the running max, the sums and the unnormalised value accumulators, no sinks, nothing written to
/// the job's output.
///
/// # Safety
/// As for `run_items`; the plan was made for `job`.
pub unsafe fn run_unit(job: &AttendJob, plan: &SplitPlan, u: usize, s: &mut AttendScratch, out: &mut [f32]) {
    let n_kv = job.codec.config.n_kv_heads;
    let d = job.codec.config.head_dim;
    let (item, cells) = plan.unit(u, job.n_cells);
    let (tile, g) = (item / n_kv, item % n_kv);
    let t0 = tile * QUERY_TILE;
    let t1 = (t0 + QUERY_TILE).min(job.n_q);
    // SAFETY: the caller guarantees the job's pointers; t0..t1 < n_q, g < n_kv_heads, cells ⊂ 0..n_cells.
    unsafe { run_tile(job, t0, t1, g, cells, false, s) };
    let (lanes, lm) = ((t1 - t0) * job.codec.group_size(), max_lanes(job));
    out[..lanes].copy_from_slice(&s.m[..lanes]);
    out[lm..lm + lanes].copy_from_slice(&s.l[..lanes]);
    out[2 * lm..2 * lm + lanes].copy_from_slice(&s.l_compressed[..lanes]);
    out[3 * lm..3 * lm + lanes * d].copy_from_slice(&s.acc[..lanes * d]);
}

/// Merge the `plan.chunks` partials of item `item` (units item·chunks.., in `partials`, `partial_len`
/// values each) like a flash-decoding combine — M = max m_c, l = Σ e^(m_c − M)·l_c, acc = Σ e^(m_c −
/// M)·acc_c — then add the full-precision rows and the sinks once, un-rotate, add the centering mean once and write the item's
/// outputs (exactly what the unsplit tile does after its last cell).
///
/// # Safety
/// The job's output covers the item's (token, head) vectors.
pub unsafe fn merge_item(job: &AttendJob, plan: &SplitPlan, item: usize, partials: &[f32], s: &mut AttendScratch) {
    let n_kv = job.codec.config.n_kv_heads;
    let d = job.codec.config.head_dim;
    let (tile, g) = (item / n_kv, item % n_kv);
    let t0 = tile * QUERY_TILE;
    let t1 = (t0 + QUERY_TILE).min(job.n_q);
    let (lanes, lm, len) = ((t1 - t0) * job.codec.group_size(), max_lanes(job), partial_len(job));
    let units = &partials[item * plan.chunks * len..(item + 1) * plan.chunks * len];
    for lane in 0..lanes {
        let m = units.chunks_exact(len).map(|p| p[lane]).fold(f32::NEG_INFINITY, f32::max);
        let (mut l, mut lc) = (0.0f32, 0.0f32);
        let acc = &mut s.acc[lane * d..(lane + 1) * d];
        acc.fill(0.0);
        if m != f32::NEG_INFINITY {
            for p in units.chunks_exact(len) {
                if p[lane] == f32::NEG_INFINITY {
                    continue;
                }
                let w = exp_neg(p[lane] - m);
                l += w * p[lm + lane];
                lc += w * p[2 * lm + lane];
                axpy(w, &p[3 * lm + lane * d..3 * lm + (lane + 1) * d], acc);
            }
        }
        s.m[lane] = m;
        s.l[lane] = l;
        s.l_compressed[lane] = lc;
    }
    s.acc_full[..lanes * d].fill(0.0);
    if job.full.is_some() {
        let group = job.codec.group_size();
        for lane in 0..lanes {
            // SAFETY: t < n_q and the head index < n_heads: inside the validated q tensor.
            unsafe { job.q.load(t0 + lane / group, g * group + lane % group, &mut s.q[lane * d..(lane + 1) * d]) };
        }
    }
    // SAFETY: the caller guarantees the output covers the item's vectors; s.q holds the queries.
    unsafe {
        full_rows(job, t0, t1, g, s);
        finish_tile(job, t0, t1, g, s);
    }
}
