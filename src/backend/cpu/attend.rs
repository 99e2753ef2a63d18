//! Attention over compressed rows on the CPU (DESIGN.md §3).
//!
//! For query token t and kv head g, the G query heads of g are processed together so that every
//! compressed K/V row is unpacked once. Scores use the rotated query: ⟨q, k̂_j⟩ = s_j·⟨Π_k·q, c[idx_j]⟩
//! (+ ⟨q, μ_k⟩ with centering, + the QJL term for PROD keys); values are accumulated in the rotated
//! basis and un-rotated once: out = Π_vᵀ·Σ_j p_j·s'_j·c[vidx_j] (+ μ_v·Σ_j p_j). Softmax is fp32
//! online (running max) over blocks of cells. Full-precision rows (owned cache: residual window and
//! sinks) join the same softmax in the original basis.

use super::encode::HeadTensor;
use super::simd::{axpy, dot, exp_neg, exp_shifted_sum, lookup, scale_in_place};
use crate::codec::{Dtype, KvCodec, Means, Strides};
use crate::math::scale;

/// Where the additive mask of (query t, cell j) comes from.
#[derive(Clone, Copy)]
pub enum MaskSource<'a> {
    /// Every cell is visible.
    None,
    /// An engine's additive mask: element (t, j) at `ptr + (t·row_stride + j)·size`.
    Tensor { ptr: *const u8, dtype: Dtype, row_stride: usize },
    /// Causal by positions: cell j is visible to query t iff cell_pos[j] ≤ query_pos[t].
    Causal { cell_pos: &'a [i64], query_pos: &'a [i64] },
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
        match *self {
            MaskSource::None => 0.0,
            // SAFETY: the caller guarantees the mask covers (t, j): n_q rows of row_stride ≥ n_cells elements.
            MaskSource::Tensor { ptr, dtype, row_stride } => unsafe {
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

/// Full-precision rows in the original basis: [n][n_kv_heads][head_dim] f32, with positions.
#[derive(Clone, Copy)]
pub struct FullRows<'a> {
    pub k: &'a [f32],
    pub v: &'a [f32],
    pub pos: &'a [i64],
}

/// One attention call: all query tokens and heads of one layer.
#[derive(Clone, Copy)]
pub struct AttendJob<'a> {
    pub codec: &'a KvCodec,
    pub layer: usize,
    /// Centering means the rows were encoded with (None: no centering).
    pub means: Option<&'a Means>,
    pub q: HeadTensor,
    pub n_q: usize,
    pub k_store: *const u8,
    pub v_store: *const u8,
    pub n_cells: usize,
    pub mask: MaskSource<'a>,
    /// Causal positions of the queries for `full` rows (owned cache); ignored otherwise.
    pub full: Option<(FullRows<'a>, &'a [i64])>,
    pub scale: f32,
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

/// Query tokens processed together: every unpacked K/V row serves all their G heads.
const QUERY_TILE: usize = 8;

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
    signs: Vec<f32>,
    codes: Vec<u8>,
    out: Vec<f32>,
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
            signs: vec![0.0; d],
            codes: vec![0; d],
            out: vec![0.0; d],
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
        unsafe { run_tile(job, t0, t1, g, s) };
    }
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

#[multiversion::multiversion(targets("x86_64+avx512f+avx512bw+avx512vl", "x86_64+avx2+fma"))]
unsafe fn run_tile(job: &AttendJob, t0: usize, t1: usize, g: usize, s: &mut AttendScratch) {
    let codec = job.codec;
    let lc = &codec.layers[job.layer];
    let (kl, vl) = (&lc.k_layout, &lc.v_layout);
    let d = codec.config.head_dim;
    let group = codec.group_size();
    let nt = t1 - t0;
    let lanes = nt * group;
    let means = job.means;
    let key_mse = lc.key.mse_stage();
    let prod = kl.qjl;
    let qjl_gain = lc.key.qjl_gain();
    let k_table: &[f32] = key_mse.map_or(&[], |m| &m.codebook().centroids_f32);
    let v_table: &[f32] = &lc.value.codebook().centroids_f32;
    let (k_row_bytes, v_row_bytes) = (kl.row_bytes(), vl.row_bytes());

    for lane in 0..lanes {
        let (t, h) = (t0 + lane / group, lane % group);
        let q = &mut s.q[lane * d..(lane + 1) * d];
        // SAFETY: t < n_q and the head index < n_heads: inside the validated q tensor.
        unsafe { job.q.load(t, g * group + h, q) };
        if let Some(m) = key_mse {
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

    let mut j0 = 0;
    while j0 < job.n_cells {
        let j1 = (j0 + BLOCK).min(job.n_cells);
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
            let ks = read_scale(row, kl.scale_offset(g));
            if let Some(m) = key_mse {
                // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
                let packed = unsafe { std::slice::from_raw_parts(row.add(kl.codes_offset(g)), kl.code_bytes()) };
                lookup(packed, m.bits(), k_table, &mut s.row, &mut s.codes);
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
                    ip += ks * dot(&s.q_rot[lane * d..(lane + 1) * d], &s.row);
                }
                if prod {
                    ip += gamma * dot(&s.q_proj[lane * d..(lane + 1) * d], &s.signs);
                }
                s.scores[lane * BLOCK + (j - j0)] = ip * job.scale + mv;
            }
        }
        // Online softmax update.
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
        // Value accumulation in the rotated basis: each V row unpacked once for all lanes.
        for j in j0..j1 {
            if !(0..lanes).any(|lane| s.scores[lane * BLOCK + (j - j0)] > 0.0) {
                continue;
            }
            // SAFETY: j < n_cells and the V store holds n_cells rows of v_row_bytes.
            let row = unsafe { job.v_store.add(j * v_row_bytes) };
            let vs = read_scale(row, vl.scale_offset(g));
            // SAFETY: the codes of head g lie inside the row (RowLayout offsets).
            let packed = unsafe { std::slice::from_raw_parts(row.add(vl.codes_offset(g)), vl.code_bytes()) };
            lookup(packed, lc.value.bits(), v_table, &mut s.row, &mut s.codes);
            for lane in 0..lanes {
                let p = s.scores[lane * BLOCK + (j - j0)];
                if p > 0.0 {
                    axpy(p * vs, &s.row, &mut s.acc[lane * d..(lane + 1) * d]);
                }
            }
        }
        j0 = j1;
    }

    // Full-precision rows (original basis, uncentered).
    if let Some((full, query_pos)) = job.full {
        let n_kv = codec.config.n_kv_heads;
        for j in 0..full.pos.len() {
            let k = &full.k[(j * n_kv + g) * d..(j * n_kv + g + 1) * d];
            let v = &full.v[(j * n_kv + g) * d..(j * n_kv + g + 1) * d];
            for lane in 0..lanes {
                if full.pos[j] > query_pos[t0 + lane / group] {
                    continue;
                }
                let sc = dot(&s.q[lane * d..(lane + 1) * d], k) * job.scale;
                raise_max(s, lane, sc, d);
                let p = exp_neg(sc - s.m[lane]);
                s.l[lane] += p;
                axpy(p, v, &mut s.acc_full[lane * d..(lane + 1) * d]);
            }
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
