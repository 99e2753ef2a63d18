//! The CUDA backend: append and attention over raw device pointers on the caller's stream.
//!
//! * cudarc with dynamic loading: the library builds with no CUDA installed; `CudaBackend::new`
//!   probes for libcuda and libnvrtc first (cudarc panics on a missing library) and reports
//!   `Unavailable` with a message when either, or a device, is missing.
//! * Kernels (`kernels/*.cu`) are compiled by NVRTC at context creation for the device's
//!   architecture, specialised per (head_dim, bits_k, bits_v) (`compile`). Everything they need is
//!   uploaded then: rotations, codebooks, and scratch sized by `max_batch` — so `append` and `attend`
//!   only launch kernels on the given stream (no allocation, synchronisation or host copy) and can
//!   be captured in a CUDA graph.
//! * Memory passed in (stores, q/k/v/out, masks, slots, positions) is borrowed: never freed here.
//!
//! Attention is three launches: `tq_rotate_queries` (Π_k q/‖q‖ per query head), then
//! `tq_decode_*` (few queries: split-K flash-decoding, GQA group per warp, tensor cores) or
//! `tq_prefill_*` (query chunks: FlashAttention-2 over dequantised shared-memory tiles), then
//! `tq_combine` (merge splits, full-precision rows, un-rotate, write). Decode takes
//! `tq_decode_fast*` (persistent CTAs, bulk copies, PRMT-addressed pair table) where the shape allows
//! (`fast_variant`, ≤ 8 kv heads, 8-byte rows), else the general `tq_decode_staged*`/`direct`;
//! `TQ_CUDA_DECODE=staged` at context creation forces the general ones. On sm_90 the fast decode and
//! the combine are programmatic dependent launches (each waits in-kernel for its predecessor).

pub mod compile;
pub mod params;
mod engine;

use std::ffi::{CString, c_void};
use std::sync::{Arc, Mutex};

use cudarc::driver::{CudaContext, result, sys};

use crate::codec::{Dtype, KvCodec, Means, Strides};
use crate::math::quantizer::QuantizerKind;
use crate::math::rotation::{Rotation, RotationKind};
use crate::math::scale::ScaleRule;
use params::DevPtr;

/// Why a CUDA call failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CudaErrorKind {
    /// No driver, no NVRTC or no device.
    Unavailable,
    /// A configuration the CUDA kernels do not implement.
    Unsupported,
    /// An argument the call cannot take.
    Invalid,
    /// The driver or the compiler reported an error.
    Backend,
}

#[derive(Clone, Debug)]
pub struct CudaError {
    pub kind: CudaErrorKind,
    pub message: String,
}

impl CudaError {
    fn new(kind: CudaErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    fn invalid(message: impl Into<String>) -> Self {
        Self::new(CudaErrorKind::Invalid, message)
    }
}

fn driver_err(what: &str) -> impl Fn(result::DriverError) -> CudaError + '_ {
    move |e| {
        let name = e.error_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|_| format!("{:?}", e.0));
        let text = e.error_string().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        CudaError::new(CudaErrorKind::Backend, format!("CUDA {what} failed: {name} ({text})"))
    }
}

/// Whether libcuda can be loaded on this machine.
pub fn driver_available() -> bool {
    // SAFETY: only tries to open the library.
    unsafe { sys::is_culib_present() }
}

/// Tokens per split and launch geometry of one attention call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SplitPlan {
    pub prefill: bool,
    /// Decode through shared-memory stages (tq_decode_staged).
    pub staged: bool,
    /// The persistent fast decode kernel (tq_decode_fast): `grid` CTAs walk the work items.
    pub fast: bool,
    pub grid: usize,
    pub n_splits: usize,
    pub chunk: usize,
    pub warps_per_head: usize,
    pub heads_per_cta: usize,
    pub n_partials: usize,
}

/// Device copies of one rotation and codebook (K or V of one layer).
struct SideTables {
    centroids: DevPtr,
    boundaries: DevPtr,
    signs_in: DevPtr,
    signs_out: DevPtr,
    matrix: DevPtr,
    matrix_t: DevPtr,
}

struct Kernels {
    append: sys::CUfunction,
    decode_staged16: sys::CUfunction,
    decode_staged8: sys::CUfunction,
    decode_direct: sys::CUfunction,
    /// tq_decode_fast16 / fast8 / fast8c: compiled for codes of ≤ 4 bits and head_dim ≤ 128
    /// (`fast_variant`).
    decode_fast: Option<[sys::CUfunction; 3]>,
    prefill_aligned: sys::CUfunction,
    prefill_unaligned: sys::CUfunction,
    rotate: sys::CUfunction,
    combine: sys::CUfunction,
    head_means: sys::CUfunction,
    dequant: sys::CUfunction,
}

/// The compressed stores an attention call reads.
#[derive(Clone, Copy, Debug)]
pub enum Stores {
    /// One sequence.
    Single { k: DevPtr, v: DevPtr },
    /// Device arrays of `n_seqs` store pointers (16-byte aligned stores).
    Batch { k: DevPtr, v: DevPtr },
}

/// An additive mask in device memory: element (seq, query, cell) at
/// `ptr + (seq·seq_stride + query·row_stride + cell)·size`.
#[derive(Clone, Copy, Debug)]
pub struct DeviceMask {
    pub ptr: DevPtr,
    pub dtype: Dtype,
    pub row_stride: usize,
    pub seq_stride: usize,
}

/// Causal visibility by positions (device i64 arrays): cell j of sequence s is visible to query i iff
/// `cell_pos[s·seq_stride + j] ≤ query_pos[s·n_q + i]`.
#[derive(Clone, Copy, Debug)]
pub struct DeviceCausal {
    pub cell_pos: DevPtr,
    pub seq_stride: usize,
}

/// Full-precision rows in the original basis (owned cache: residual window, sinks): f32
/// `[seq][n_full][n_kv_heads][head_dim]` (sequence s starts at row s·seq_stride), positions
/// `[seq][n_full]` i64; causal against `query_pos`.
#[derive(Clone, Copy, Debug)]
pub struct DeviceFullRows {
    pub k: DevPtr,
    pub v: DevPtr,
    pub pos: DevPtr,
    pub n_full: usize,
    pub seq_stride: usize,
}

/// One attention call over device memory: `n_seqs` sequences of `n_q` query tokens each.
#[derive(Clone, Copy, Debug)]
pub struct DeviceAttend {
    pub layer: usize,
    pub n_seqs: usize,
    pub n_q: usize,
    /// q of sequence s, token i, head h at `q + s·q_seq_stride + i·q_strides.token + h·q_strides.head`.
    pub q: DevPtr,
    pub q_strides: Strides,
    pub q_seq_stride: usize,
    pub stores: Stores,
    /// Device i64 array of cells per sequence (each ≤ max_cells), or 0: every sequence has max_cells.
    pub seq_cells: DevPtr,
    pub max_cells: usize,
    pub mask: Option<DeviceMask>,
    pub causal: Option<DeviceCausal>,
    pub full: Option<DeviceFullRows>,
    /// Device i64 array `[seq][n_q]` of query positions (needed by `causal` and `full`), or 0.
    pub query_pos: DevPtr,
    pub scale: f32,
    pub out: DevPtr,
    pub out_strides: Strides,
    pub out_seq_stride: usize,
}

/// One append over device memory.
#[derive(Clone, Copy, Debug)]
pub struct DeviceAppend {
    pub layer: usize,
    pub k_store: DevPtr,
    pub v_store: DevPtr,
    pub n_cells: usize,
    /// Device i64 array: token i goes to cell slots[i] (distinct, < n_cells).
    pub slots: DevPtr,
    pub n_tokens: usize,
    pub k: DevPtr,
    pub k_strides: Strides,
    pub v: DevPtr,
    pub v_strides: Strides,
}

/// One dequantization over device memory (tq_dequantize_rows).
#[derive(Clone, Copy, Debug)]
pub struct DeviceDequant {
    pub layer: usize,
    /// The V store (else the K store).
    pub values: bool,
    pub store: DevPtr,
    pub n_cells: usize,
    pub out: DevPtr,
    pub out_dtype: Dtype,
    pub out_strides: Strides,
}

/// The CUDA backend of one context.
pub struct CudaBackend {
    ctx: Arc<CudaContext>,
    module: sys::CUmodule,
    kernels: Kernels,
    layers: Vec<(SideTables, SideTables)>,
    allocations: Vec<DevPtr>,
    q_hat: DevPtr,
    /// The rotated queries as f16 in fragment order (q16_pos in kernels/common.cuh), for tq_decode_fast*.
    q_hat16: DevPtr,
    q_coef: DevPtr,
    q_mu: DevPtr,
    partials: DevPtr,
    /// Centering: per layer [K means, V means], each n_kv_heads × head_dim f32 (0 without centering).
    means: DevPtr,
    /// Value centering (`KvConfig::center_values`): without it the V means are zero.
    center_values: bool,
    /// Centering: one u32 per layer, set on the device once the layer's means are written (the
    /// means kernel checks it, so a replayed graph leaves them frozen).
    means_frozen: DevPtr,
    /// Per layer: whether `means` holds the layer's means (computed on the device by its first append,
    /// or uploaded from a loaded state). The lock is held while the first append issues its means kernel.
    means_ready: Mutex<Vec<bool>>,
    /// Query rows (sequences × query tokens) the scratch holds.
    row_capacity: usize,
    /// f32 partial records of (head_dim + PART_HEADER) floats the scratch holds.
    partial_capacity: usize,
    sm_count: usize,
    decode_smem: u32,
    staged_smem: u32,
    /// Cells per stage of the staged decode kernel (0: contexts that use the direct kernel).
    stage_cells: usize,
    /// Row alignment of the staged copies: 16 or 8 bytes.
    stage_align: usize,
    /// Cells per stage of tq_decode_fast (0: not usable for this context), its shared memory and
    /// warps per kv head.
    fast_stage_cells: usize,
    /// Programmatic dependent launches (sm_90+) for the fast decode and combine kernels.
    pdl: bool,
    fast_smem: u32,
    fast_warps_per_head: usize,
    prefill_smem: u32,
    /// CTAs of tq_prefill_* resident per multiprocessor (the occupancy query).
    prefill_resident: usize,
    head_dim: usize,
    n_heads: usize,
    n_kv_heads: usize,
    group: usize,
    bits_k: u32,
    bits_v: u32,
    /// The row format's scale rules (params::scale_rule_code) of K and V.
    k_scale_rule: i64,
    v_scale_rule: i64,
    k_row_bytes: usize,
    v_row_bytes: usize,
    k_code_bytes: usize,
    v_code_bytes: usize,
    k_scale_offset: usize,
    v_scale_offset: usize,
    dtype: Dtype,
    device_name: String,
    arch: String,
}

// SAFETY: the driver handles (module, functions, device pointers) may be used from any thread once the
// context is current there; every entry point binds the context first. Mutation happens only in
// `new` and `drop`.
unsafe impl Send for CudaBackend {}
// SAFETY: as for Send (above).
unsafe impl Sync for CudaBackend {}

fn table_words(bits: u32) -> usize {
    if bits <= 4 { (1usize << (2 * bits)) * 32 } else { (1usize << bits) / 2 }
}

/// Widest vector load (≤ 16 bytes) the kernels use for a window of `bytes` bytes.
fn vec_width(bytes: usize) -> usize {
    [16, 8, 4].into_iter().find(|w| bytes % w == 0).unwrap_or(1)
}

// Launch geometry shared with the kernels: compile::shared_defines hands each of these to NVRTC as a
// -D option under the kernels' name for it (given beside each), so the two cannot disagree.
/// Warps (one row each) per CTA of tq_append (APPEND_WARPS).
pub(super) const APPEND_WARPS: usize = 4;
/// Rows (cell, kv head) per CTA of tq_dequant_rows (DQ_WARPS in kernels/dequant.cu).
const DEQUANT_WARPS: usize = 8;

/// Query rows per CTA of tq_prefill_* (PF_ROWS).
pub(super) const PREFILL_ROWS: usize = 128;
/// Threads of tq_prefill_* (PF_THREADS): 4 warps of two 16-row mma fragments each up to head_dim 128,
/// 8 warps of one above (the accumulators of two fragments would not fit the registers).
pub(super) fn prefill_threads(d: usize) -> u32 {
    if d <= 128 { 128 } else { 256 }
}
/// CTAs per multiprocessor tq_prefill_* is compiled for (PF_MIN_CTAS): two up to head_dim 128, where
/// the shared memory of two fits, else one.
pub(super) fn prefill_min_ctas(d: usize) -> usize {
    if d <= 128 { 2 } else { 1 }
}
/// Shared-memory stages of the staged decode kernel (DEC_STAGES).
pub(super) const DECODE_STAGES: usize = 4;
/// Threads of tq_decode_fast (FD_THREADS).
pub(super) const FAST_THREADS: usize = 512;
/// Floats before the output in each partial record of (head_dim + PART_HEADER) floats (PART_HEADER): the
/// running max and sum, padded to 16 bytes.
pub(super) const PART_HEADER: usize = 4;

/// CTAs per multiprocessor the staged decode kernel asks for (DEC_MIN_CTAS): two up to head_dim 128,
/// where the registers allow it without spilling much (the stages are sized to fit two), else one.
pub(super) fn decode_min_ctas(d: usize) -> usize {
    if d <= 128 { 2 } else { 1 }
}

/// Shared memory of tq_decode_fast's merge buffers: one per pair of warps of a kv head (warp sub hands
/// its partial to warp sub - ceil(wph / 2)), compile::fast_merge_pair_bytes each.
fn fast_merge_bytes(d: usize, n_kv_heads: usize, warps_per_head: usize) -> usize {
    n_kv_heads * (warps_per_head / 2) * compile::fast_merge_pair_bytes(d)
}

/// Partial records per split of tq_decode_fast: one per warp pair (and one for an odd warp out).
fn fast_partials_per_split(warps_per_head: usize) -> usize {
    warps_per_head.div_ceil(2)
}

/// Fixed cost of one work item of tq_decode_fast*, in cells (query fragments, partial stores).
const FAST_ITEM_COST: usize = 64;

/// `FAST_ITEM_COST` for tests (a function: public constants would land in the C header).
pub fn fast_item_cost() -> usize {
    FAST_ITEM_COST
}

/// Whether kernels/decode_fast.cu compiles tq_decode_fast* for this specialisation (passed to it as
/// FD_COMPILED).
pub fn fast_variant(d: usize, bits_k: u32, bits_v: u32) -> bool {
    bits_k <= 4 && bits_v <= 4 && d <= 128 && (d / 16 * 2 * bits_v as usize) % 8 == 0
}

/// Query rows per CTA of tq_rotate_queries with a Hadamard rotation, one warp a row (ROT_WARPS); a
/// dense rotation takes a CTA of head_dim threads a row.
pub(super) const ROTATE_WARPS: usize = 8;

/// Split count of the fast decode kernel for `base` (sequence, column block) pairs of `len` cells on
/// `ctas` persistent CTAs: the one that minimises the longest CTA's work — items per CTA times (cells
/// per item + a fixed cost per item) — preferring fewer splits (fewer partials to merge).
///
/// Runs on every attention call, so it does not try every split count: for each number of waves w
/// (items per CTA) the best candidate is the most splits that still fit w waves (the smallest chunk),
/// reduced to the splits that chunk really needs; no later w can win once w items of the smallest
/// chunk (16 cells) cost more than the best so far.
pub fn fast_splits(base: usize, len: usize, ctas: usize, max_splits: usize) -> usize {
    let (base, max_splits) = (base.max(1), max_splits.max(1));
    let mut best = (usize::MAX, 1);
    let mut w = base.div_ceil(ctas).max(1);
    loop {
        let s = (w * ctas / base).clamp(1, max_splits);
        let chunk = len.div_ceil(s).next_multiple_of(16);
        let n = len.div_ceil(chunk).max(1);
        let cost = (base * n).div_ceil(ctas) * (chunk + FAST_ITEM_COST);
        if cost < best.0 || (cost == best.0 && n < best.1) {
            best = (cost, n);
        }
        if s == max_splits || w * (16 + FAST_ITEM_COST) >= best.0 {
            return best.1;
        }
        w += 1;
    }
}
/// Warps of the combine kernel: at least head_dim / 32 (its output stage has a thread per element),
/// at most COMBINE_MAX_WARPS (its launch bound CMB_MAX_THREADS = 32 × this); each warp merges
/// COMBINE_BATCH partials per round (CMB_BATCH). The full-precision row limit is computed at
/// COMBINE_WARPS (the fewest warps head_dim 256 needs) so that it does not depend on the split plan.
const COMBINE_WARPS: usize = 8;
pub(super) const COMBINE_MAX_WARPS: usize = 16;
pub(super) const COMBINE_BATCH: usize = 8;
/// Shared memory of the combine kernel (no opt-in needed).
const COMBINE_SMEM: usize = 48 * 1024;

/// Warps of a combine CTA merging `n_partials` records of head_dim `d`: enough for one round of
/// loads, within [d / 32, COMBINE_MAX_WARPS] (small CTAs where there are few partials: more of them
/// resident per multiprocessor).
fn combine_warps(n_partials: usize, d: usize) -> usize {
    n_partials.div_ceil(COMBINE_BATCH).clamp(d.div_ceil(32).max(1), COMBINE_MAX_WARPS)
}
/// Splits of a prefill call of `base` CTAs per split over `slots` resident CTAs (multiprocessors ×
/// CTAs each), at most `max`: the fewest whose waves fill at least 90 % of the slots they occupy (a last
/// wave a third full costs as much as a full one), else the fullest.
fn prefill_splits(base: usize, slots: usize, max: usize) -> usize {
    let (base, slots) = (base.max(1), slots.max(1));
    let fill = |s: usize| (base * s) as f64 / ((base * s).div_ceil(slots) * slots) as f64;
    (1..=max.max(1))
        .find(|&s| fill(s) >= 0.9)
        .unwrap_or_else(|| (1..=max.max(1)).max_by(|&a, &b| fill(a).total_cmp(&fill(b)).then(b.cmp(&a))).unwrap_or(1))
}

/// At most this many partials per (query, head): the combine kernel keeps their weights in shared memory.
const MAX_PARTIALS: usize = 4096;
/// Cells per shared-memory tile of tq_prefill_* (PF_TILE).
pub(super) const PREFILL_TILE: usize = 64;
/// Halves of padding after each row of head_dim halves in tq_prefill_*'s shared memory (PF_PAD): a row
/// stride of head_dim + 8 halves keeps its ldmatrix loads free of bank conflicts.
pub(super) const PREFILL_PAD: usize = 8;
/// Decode is used while query columns (query tokens × group) fit this many 8-wide column blocks.
const DECODE_MAX_COLUMNS: usize = 16;
/// Partial records per (query row, head) the scratch is sized for at max_batch rows.
const PARTIALS_PER_ROW: usize = 8;

impl CudaBackend {
    /// Compile the kernels for the device and upload the codec's tables; allocate scratch for
    /// `max_batch` query rows.
    pub fn new(codec: &KvCodec, dtype: Dtype, device: i32, max_batch: usize) -> Result<Self, CudaError> {
        let cfg = &codec.config;
        if cfg.key_mode == QuantizerKind::Prod {
            return Err(CudaError::new(
                CudaErrorKind::Unsupported,
                "params->key_mode is TQ_KEY_MODE_PROD: the CUDA backend implements MSE keys only",
            ));
        }
        let variant = compile::Variant { head_dim: cfg.head_dim, bits_k: cfg.bits_k, bits_v: cfg.bits_v };
        variant.check().map_err(|m| CudaError::new(CudaErrorKind::Unsupported, format!("params: {m}")))?;
        if max_batch == 0 {
            return Err(CudaError::invalid("params->max_batch is 0: must be ≥ 1"));
        }
        if !driver_available() {
            return Err(CudaError::new(
                CudaErrorKind::Unavailable,
                "TQ_BACKEND_CUDA: the CUDA driver library (libcuda.so) was not found on this machine",
            ));
        }
        if !compile::nvrtc_available() {
            return Err(CudaError::new(
                CudaErrorKind::Unavailable,
                "TQ_BACKEND_CUDA: the NVRTC library (libnvrtc.so, CUDA 12.x/13.x) was not found; install the CUDA \
                 toolkit or the nvidia-cuda-nvrtc wheel and put its lib directory on LD_LIBRARY_PATH",
            ));
        }
        result::init().map_err(|e| {
            CudaError::new(CudaErrorKind::Unavailable, format!("TQ_BACKEND_CUDA: cuInit failed ({e:?}): no usable CUDA device"))
        })?;
        let count = result::device::get_count().map_err(driver_err("device count"))?;
        if device < 0 || device >= count {
            return Err(CudaError::new(
                CudaErrorKind::Unavailable,
                format!("params->device is {device}: this machine has {count} CUDA device(s)"),
            ));
        }
        let ctx = CudaContext::new(device as usize).map_err(driver_err("context creation"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver_err("device query"))?;
        if major < 8 {
            return Err(CudaError::new(
                CudaErrorKind::Unsupported,
                format!("CUDA device {device} has compute capability {major}.{minor}: the kernels need 8.0 or newer"),
            ));
        }
        let arch = format!("sm_{major}{minor}");
        let compiled = compile::compile_cached(variant, &arch).map_err(|m| CudaError::new(CudaErrorKind::Backend, m))?;
        let device_name = ctx.name().unwrap_or_else(|_| "unknown".into());
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_err(driver_err("device query"))? as usize;
        let smem_optin = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN)
            .map_err(driver_err("device query"))? as usize;

        // SAFETY: the cubin comes from NVRTC for this device; functions are looked up by their names.
        let module = unsafe { result::module::load_data(compiled.cubin.as_ptr() as *const c_void) }
            .map_err(driver_err("module load"))?;
        let get = |name: &str| -> Result<sys::CUfunction, CudaError> {
            // SAFETY: `module` was loaded just above and the name is a NUL-terminated kernel name.
            unsafe { result::module::get_function(module, CString::new(name).unwrap()) }.map_err(driver_err("kernel lookup"))
        };
        let kernels = Kernels {
            append: get("tq_append")?,
            decode_staged16: get("tq_decode_staged16")?,
            decode_staged8: get("tq_decode_staged8")?,
            decode_direct: get("tq_decode_direct")?,
            decode_fast: if fast_variant(cfg.head_dim, cfg.bits_k, cfg.bits_v) {
                Some([get("tq_decode_fast16")?, get("tq_decode_fast8")?, get("tq_decode_fast8c")?])
            } else {
                None
            },
            prefill_aligned: get("tq_prefill_aligned")?,
            prefill_unaligned: get("tq_prefill_unaligned")?,
            rotate: get("tq_rotate_queries")?,
            combine: get("tq_combine")?,
            head_means: get("tq_head_means")?,
            dequant: get("tq_dequant_rows")?,
        };
        check_layout(module)?;
        let d = cfg.head_dim;
        let tables = if cfg.bits_k == cfg.bits_v { table_words(cfg.bits_k) } else { table_words(cfg.bits_k) + table_words(cfg.bits_v) };
        let decode_smem = tables * 4;
        let prefill_smem = tables * 4 + (PREFILL_ROWS + 2 * PREFILL_TILE) * (d + PREFILL_PAD) * 2 + 2 * PREFILL_TILE * 4;
        // Staged decode: a ring of DECODE_STAGES stages of stage_cells whole rows (K and V) in shared
        // memory, for contexts whose kv heads fit one CTA and whose rows are 16-byte multiples.
        let (k_row_bytes, v_row_bytes) = (codec.k_layout.row_bytes(), codec.v_layout.row_bytes());
        let heads_per_cta = cfg.n_kv_heads.min(8);
        let warps_per_head = (8 / heads_per_cta).max(1);
        let unit = 16 * warps_per_head;
        // decode_min_ctas CTAs per multiprocessor (two up to head_dim 128).
        let per_cta = if decode_min_ctas(d) == 2 { 228 * 1024 / 2 - 1024 } else { 200 * 1024 };
        let budget = smem_optin.min(per_cta).saturating_sub(decode_smem);
        let fit = budget / (DECODE_STAGES * unit * (k_row_bytes + v_row_bytes));
        let stage_align = if k_row_bytes % 16 == 0 && v_row_bytes % 16 == 0 { 16 } else { 8 };
        let stage_cells = if cfg.n_kv_heads <= 8 && k_row_bytes % 8 == 0 && v_row_bytes % 8 == 0 && fit >= 1 {
            unit * fit.min((128 / unit).max(1))
        } else {
            0
        };
        let staged_smem = decode_smem + DECODE_STAGES * stage_cells * (k_row_bytes + v_row_bytes);
        // Fast decode: one persistent CTA of 512 threads per multiprocessor, all kv heads, a table of
        // 256 bytes per pair code, compile::fast_stages() stages of whole 8-byte-multiple rows.
        let fast_warps_per_head = FAST_THREADS / 32 / cfg.n_kv_heads.clamp(1, 16);
        let (fast_stage_cells, fast_smem) = match kernels.decode_fast {
            // TQ_CUDA_DECODE=staged turns it off (tests and benchmarks of the general kernels).
            Some(_) if cfg.n_kv_heads <= 8
                && k_row_bytes % 8 == 0
                && v_row_bytes % 8 == 0
                && std::env::var("TQ_CUDA_DECODE").map_or(true, |v| v != "staged") =>
            {
                let table = 256usize << (2 * cfg.bits_k.max(cfg.bits_v));
                let unit = 16 * fast_warps_per_head;
                let stages = compile::fast_stages(&arch);
                // After the stages: an mbarrier (8 bytes) and a release counter (4) per stage, then the
                // warp pairs' merge buffers.
                let sync = 16 * stages + fast_merge_bytes(d, cfg.n_kv_heads, fast_warps_per_head);
                let fit = smem_optin.saturating_sub(table + sync) / (stages * unit * (k_row_bytes + v_row_bytes));
                if fit >= 1 {
                    // Up to 256 cells over all stages (more where one unit is larger), at least one
                    // unit, and with two stages at least two units per stage where they fit.
                    let cells = unit * fit.min((256 / stages / unit).max(4 / stages));
                    (cells, table + stages * cells * (k_row_bytes + v_row_bytes) + sync)
                } else {
                    (0, 0)
                }
            }
            _ => (0, 0),
        };
        if prefill_smem > smem_optin {
            return Err(CudaError::new(
                CudaErrorKind::Unsupported,
                format!("head_dim {d} with bits ({}, {}) needs {prefill_smem} bytes of shared memory; the device allows {smem_optin}",
                    cfg.bits_k, cfg.bits_v),
            ));
        }
        for (f, bytes) in [
            (kernels.decode_staged16, staged_smem.max(decode_smem)),
            (kernels.decode_staged8, staged_smem.max(decode_smem)),
            (kernels.decode_direct, decode_smem),
            (kernels.prefill_aligned, prefill_smem),
            (kernels.prefill_unaligned, prefill_smem),
        ]
        .into_iter()
        .chain(kernels.decode_fast.filter(|_| fast_stage_cells > 0).into_iter().flatten().map(|f| (f, fast_smem)))
        {
            // SAFETY: f is a live function of the loaded module.
            unsafe {
                result::function::set_function_attribute(
                    f,
                    sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                    bytes as i32,
                )
            }
            .map_err(driver_err("kernel attribute"))?;
        }

        // SAFETY: the function is live and its dynamic shared memory attribute was set above.
        let prefill_resident = unsafe {
            result::occupancy::max_active_block_per_multiprocessor(kernels.prefill_aligned, prefill_threads(d) as i32, prefill_smem)
        }
        .map_err(driver_err("occupancy query"))?
        .max(1) as usize;
        let mut me = Self {
            ctx,
            module,
            kernels,
            layers: Vec::new(),
            allocations: Vec::new(),
            q_hat: 0,
            q_hat16: 0,
            q_coef: 0,
            q_mu: 0,
            partials: 0,
            means: 0,
            means_frozen: 0,
            means_ready: Mutex::new(vec![false; cfg.n_layers]),
            center_values: cfg.center_values,
            row_capacity: max_batch,
            partial_capacity: max_batch * cfg.n_heads * PARTIALS_PER_ROW,
            sm_count,
            decode_smem: decode_smem as u32,
            staged_smem: staged_smem as u32,
            stage_cells,
            stage_align,
            fast_stage_cells,
            pdl: major >= 9,
            fast_smem: fast_smem as u32,
            fast_warps_per_head,
            prefill_smem: prefill_smem as u32,
            prefill_resident,
            head_dim: d,
            n_heads: cfg.n_heads,
            n_kv_heads: cfg.n_kv_heads,
            group: codec.group_size(),
            bits_k: cfg.bits_k,
            bits_v: cfg.bits_v,
            k_scale_rule: params::scale_rule_code(
                codec.layers.first().and_then(|l| l.key.mse_stage()).map_or(ScaleRule::Norm, |m| m.scale_rule()),
            ),
            v_scale_rule: params::scale_rule_code(codec.layers.first().map_or(ScaleRule::Norm, |l| l.value.scale_rule())),
            k_row_bytes: codec.k_layout.row_bytes(),
            v_row_bytes: codec.v_layout.row_bytes(),
            k_code_bytes: codec.k_layout.code_bytes(),
            v_code_bytes: codec.v_layout.code_bytes(),
            k_scale_offset: codec.k_layout.scale_offset(0),
            v_scale_offset: codec.v_layout.scale_offset(0),
            dtype,
            device_name,
            arch,
        };
        for layer in &codec.layers {
            let k = layer.key.mse_stage().expect("MSE keys have an MSE stage");
            let kt = me.upload_side(k.rotation(), &k.codebook().centroids_f32, &k.codebook().boundaries_f32)?;
            let v = &layer.value;
            let vt = me.upload_side(v.rotation(), &v.codebook().centroids_f32, &v.codebook().boundaries_f32)?;
            me.layers.push((kt, vt));
        }
        let rows = max_batch * cfg.n_heads;
        me.q_hat = me.alloc(rows * d * 4)?;
        me.q_hat16 = me.alloc(rows * d * 2)?;
        me.q_coef = me.alloc(rows * 4)?;
        me.q_mu = me.alloc(rows * 4)?;
        me.partials = me.alloc(me.partial_capacity * (d + PART_HEADER) * 4)?;
        if cfg.centering {
            me.means = me.alloc(cfg.n_layers * 2 * cfg.n_kv_heads * d * 4)?;
            me.means_frozen = me.alloc(cfg.n_layers * 4)?;
            // SAFETY: means_frozen holds n_layers u32.
            unsafe { result::memset_d8_sync(me.means_frozen, 0, cfg.n_layers * 4) }.map_err(driver_err("centering flags reset"))?;
        }
        Ok(me)
    }

    pub fn device_name(&self) -> &str {
        &self.device_name
    }

    pub fn arch(&self) -> &str {
        &self.arch
    }

    fn alloc(&mut self, bytes: usize) -> Result<DevPtr, CudaError> {
        // SAFETY: a plain allocation in the current context; freed in Drop.
        let p = unsafe { result::malloc_sync(bytes.max(4)) }.map_err(|e| {
            let mut err = driver_err("allocation")(e);
            err.message = format!("{} ({bytes} bytes)", err.message);
            err
        })?;
        self.allocations.push(p);
        Ok(p)
    }

    fn upload<T: Copy>(&mut self, data: &[T]) -> Result<DevPtr, CudaError> {
        if data.is_empty() {
            return Ok(0);
        }
        let p = self.alloc(std::mem::size_of_val(data))?;
        // SAFETY: p holds size_of_val(data) bytes.
        unsafe { result::memcpy_htod_sync(p, data) }.map_err(driver_err("upload"))?;
        Ok(p)
    }

    fn upload_side(&mut self, rot: &Rotation, centroids: &[f32], boundaries: &[f32]) -> Result<SideTables, CudaError> {
        let d = rot.dim();
        let (signs_in, signs_out, matrix, matrix_t) = match rot.kind() {
            RotationKind::Hadamard => {
                let (s1, s2) = rot.hadamard_signs();
                (self.upload(s1)?, self.upload(s2)?, 0, 0)
            }
            RotationKind::Dense => {
                let m = rot.matrix();
                let mut t = vec![0.0f32; d * d];
                for i in 0..d {
                    for j in 0..d {
                        t[j * d + i] = m[i * d + j];
                    }
                }
                (0, 0, self.upload(m)?, self.upload(&t)?)
            }
        };
        Ok(SideTables { centroids: self.upload(centroids)?, boundaries: self.upload(boundaries)?, signs_in, signs_out, matrix, matrix_t })
    }

    fn bind(&self) -> Result<(), CudaError> {
        self.ctx.bind_to_thread().map_err(driver_err("context bind"))
    }

    /// Launch `f` with its one by-value parameter struct. `dependent`: as a programmatic dependent
    /// launch where the device has them (sm_90+) — the kernel may be scheduled while the previous
    /// kernel on the stream still runs, and waits for it (`griddepcontrol.wait` in the kernel) before
    /// touching what that kernel writes; elsewhere, and when false, a plain launch.
    #[allow(clippy::too_many_arguments)]
    fn launch(
        &self,
        f: sys::CUfunction,
        grid: (u32, u32, u32),
        block: u32,
        smem: u32,
        stream: sys::CUstream,
        params_ptr: *mut c_void,
        dependent: bool,
        what: &str,
    ) -> Result<(), CudaError> {
        let mut args = [params_ptr];
        if !(dependent && self.pdl) {
            // SAFETY: the kernel takes one by-value struct whose layout is checked at compile time
            // (params::layout_asserts); pointers inside it are the caller's device memory or ours.
            return unsafe { result::launch_kernel(f, grid, (block, 1, 1), smem, stream, &mut args) }.map_err(driver_err(what));
        }
        // SAFETY: an all-zero launch attribute is a valid value to fill in.
        let mut attr: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
        attr.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
        attr.value.programmaticStreamSerializationAllowed = 1;
        let config = sys::CUlaunchConfig {
            gridDimX: grid.0,
            gridDimY: grid.1,
            gridDimZ: grid.2,
            blockDimX: block,
            blockDimY: 1,
            blockDimZ: 1,
            sharedMemBytes: smem,
            hStream: stream,
            attrs: &mut attr,
            numAttrs: 1,
        };
        // SAFETY: as above; the config and its attribute outlive the call.
        unsafe { sys::cuLaunchKernelEx(&config, f, args.as_mut_ptr(), std::ptr::null_mut()) }
            .result()
            .map_err(driver_err(what))
    }

    /// Device addresses of `layer`'s K and V centering means.
    fn means_of(&self, layer: usize) -> (DevPtr, DevPtr) {
        let n = (self.n_kv_heads * self.head_dim * 4) as u64;
        let k = self.means + 2 * layer as u64 * n;
        (k, k + n)
    }

    /// `layer`'s K and V means if centering is on and they are known (else 0, 0: no centering terms).
    fn ready_means(&self, layer: usize) -> (DevPtr, DevPtr) {
        let ready = self.means != 0 && self.means_ready.lock().unwrap_or_else(|e| e.into_inner())[layer];
        if ready { self.means_of(layer) } else { (0, 0) }
    }

    /// Centering: the means of `a.layer`, computed from this append's rows on `stream` by the layer's
    /// first append (then frozen), as the CPU backend does. Returns the K and V mean addresses.
    fn freeze_means(&self, a: &DeviceAppend, stream: sys::CUstream) -> Result<(DevPtr, DevPtr), CudaError> {
        let (mk, mv) = self.means_of(a.layer);
        let mut ready = self.means_ready.lock().unwrap_or_else(|e| e.into_inner());
        if !ready[a.layer] {
            let side = |input, strides: Strides, out| params::MeansSide {
                input,
                token_stride: strides.token as i64,
                head_stride: strides.head as i64,
                out,
            };
            let mut p = params::MeansParams {
                k: side(a.k, a.k_strides, mk),
                v: side(a.v, a.v_strides, mv),
                first_token: crate::codec::mean_rows(a.n_tokens).start as i64,
                n_tokens: a.n_tokens as i64,
                n_kv_heads: self.n_kv_heads as i64,
                dtype: dtype_code(self.dtype),
                center_values: self.center_values as i64,
                frozen: self.means_frozen + 4 * a.layer as u64,
            };
            let blocks = (self.n_kv_heads * self.head_dim).div_ceil(256) as u32;
            let ptr = &mut p as *mut _ as *mut c_void;
            self.launch(self.kernels.head_means, (blocks, 2, 1), 256, 0, stream, ptr, false, "centering means launch")?;
            // stream-ordered after the means: later launches (and replays of a captured graph) see them frozen
            // SAFETY: the flag is one u32 of means_frozen.
            unsafe { result::memset_d8_async(p.frozen, 1, 4, stream) }.map_err(driver_err("centering flag set"))?;
            ready[a.layer] = true;
        }
        Ok((mk, mv))
    }

    /// Centering: the means of every layer that has them into `codec`'s host copy (the state a save
    /// writes). Waits for the device (a first append's means kernel may still be running).
    pub fn download_means(&self, codec: &KvCodec) -> Result<(), CudaError> {
        if self.means == 0 {
            return Ok(());
        }
        let ready = self.means_ready.lock().unwrap_or_else(|e| e.into_inner()).clone();
        self.bind()?;
        if ready.iter().any(|&r| r) {
            result::ctx::synchronize().map_err(driver_err("synchronize before reading the centering means"))?;
        }
        let n = self.n_kv_heads * self.head_dim;
        for (layer, _) in ready.iter().enumerate().filter(|(_, r)| **r) {
            let (mk, mv) = self.means_of(layer);
            let (mut k, mut v) = (vec![0.0f32; n], vec![0.0f32; n]);
            // SAFETY: `means` holds n floats at each of these addresses; the device is idle.
            unsafe { result::memcpy_dtoh_sync(&mut k, mk) }.map_err(driver_err("centering means download"))?;
            // SAFETY: as above.
            unsafe { result::memcpy_dtoh_sync(&mut v, mv) }.map_err(driver_err("centering means download"))?;
            codec.freeze_means(layer, || Means { k, v });
        }
        Ok(())
    }

    /// Centering: after a state load replaced `codec`'s means, use them — uploaded now for the layers
    /// that have means, the others to be computed by their next append.
    pub fn upload_means(&self, codec: &KvCodec) -> Result<(), CudaError> {
        if self.means == 0 {
            return Ok(());
        }
        self.bind()?;
        let mut ready = self.means_ready.lock().unwrap_or_else(|e| e.into_inner());
        // Work already queued may still read the old means: let it finish first.
        result::ctx::synchronize().map_err(driver_err("synchronize before replacing the centering means"))?;
        // SAFETY: means_frozen holds one u32 per layer; the device is idle.
        unsafe { result::memset_d8_sync(self.means_frozen, 0, ready.len() * 4) }.map_err(driver_err("centering flags reset"))?;
        for (layer, r) in ready.iter_mut().enumerate() {
            *r = false;
            if let Some(m) = codec.means(layer) {
                let (mk, mv) = self.means_of(layer);
                // SAFETY: `means` holds n_kv_heads × head_dim floats at each address, as m.k and m.v have.
                unsafe { result::memcpy_htod_sync(mk, &m.k) }.map_err(driver_err("centering means upload"))?;
                // SAFETY: as above.
                unsafe { result::memcpy_htod_sync(mv, &m.v) }.map_err(driver_err("centering means upload"))?;
                // SAFETY: one u32 of means_frozen.
                unsafe { result::memset_d8_sync(self.means_frozen + 4 * layer as u64, 1, 4) }
                    .map_err(driver_err("centering flag set"))?;
                *r = true;
            }
        }
        Ok(())
    }

    /// Encode `a.n_tokens` tokens into rows (same bytes as the CPU backend). Graph-capture safe.
    /// Slots are not range-checked here (they are device memory); the kernel skips out-of-range slots.
    pub fn append(&self, a: &DeviceAppend, stream: sys::CUstream) -> Result<(), CudaError> {
        if a.n_tokens == 0 {
            return Ok(());
        }
        self.bind()?;
        let (mean_k, mean_v) = if self.means != 0 { self.freeze_means(a, stream)? } else { (0, 0) };
        let (kt, vt) = &self.layers[a.layer];
        let side = |store, input, strides: Strides, row_bytes, scale_offset, t: &SideTables, mean, scale_rule| params::EncodeSide {
            store,
            input,
            token_stride: strides.token as i64,
            head_stride: strides.head as i64,
            row_bytes: row_bytes as i64,
            scale_offset: scale_offset as i64,
            boundaries: t.boundaries,
            signs_in: t.signs_in,
            signs_out: t.signs_out,
            matrix_t: t.matrix_t,
            mean,
            centroids: t.centroids,
            scale_rule,
        };
        let mut p = params::AppendParams {
            k: side(a.k_store, a.k, a.k_strides, self.k_row_bytes, self.k_scale_offset, kt, mean_k, self.k_scale_rule),
            v: side(a.v_store, a.v, a.v_strides, self.v_row_bytes, self.v_scale_offset, vt, mean_v, self.v_scale_rule),
            slots: a.slots,
            n_tokens: a.n_tokens as i64,
            n_cells: a.n_cells as i64,
            n_kv_heads: self.n_kv_heads as i64,
            dtype: dtype_code(self.dtype),
        };
        let items = a.n_tokens * self.n_kv_heads * 2;
        let blocks = items.div_ceil(APPEND_WARPS) as u32;
        let ptr = &mut p as *mut _ as *mut c_void;
        self.launch(self.kernels.append, (blocks, 1, 1), (APPEND_WARPS * 32) as u32, 0, stream, ptr, false, "append launch")
    }

    /// The split-K plan of an attention call.
    pub fn plan(&self, n_seqs: usize, n_q: usize, max_cells: usize, staged: bool, fast: bool) -> SplitPlan {
        let cols = n_q * self.group;
        let rows = n_seqs * n_q;
        let target_ctas = 4 * self.sm_count;
        let max_partials = (self.partial_capacity / (rows * self.n_heads).max(1)).clamp(1, MAX_PARTIALS);
        if cols <= DECODE_MAX_COLUMNS && fast && self.fast_stage_cells > 0 {
            let warps_per_head = self.fast_warps_per_head;
            let per_split = fast_partials_per_split(warps_per_head);
            let base = n_seqs * cols.div_ceil(8);
            let max_splits = (max_partials / per_split).max(1).min(max_cells.div_ceil(16).max(1));
            let n_splits = fast_splits(base, max_cells, self.sm_count, max_splits);
            let chunk = max_cells.div_ceil(n_splits).max(1).next_multiple_of(16);
            let n_splits = max_cells.div_ceil(chunk).max(1);
            let grid = (base * n_splits).min(self.sm_count);
            return SplitPlan {
                prefill: false,
                staged: true,
                fast: true,
                grid,
                n_splits,
                chunk,
                warps_per_head,
                heads_per_cta: self.n_kv_heads,
                n_partials: n_splits * per_split,
            };
        }
        if cols <= DECODE_MAX_COLUMNS {
            let heads_per_cta = self.n_kv_heads.min(8);
            let head_blocks = self.n_kv_heads.div_ceil(heads_per_cta);
            let warps_per_head = (8 / heads_per_cta).max(1);
            let step = if staged { self.stage_cells } else { 16 * warps_per_head };
            let base = n_seqs * head_blocks * cols.div_ceil(8);
            // At least 128 cells per warp: fewer makes the partials a sizeable share of the traffic.
            let by_len = max_cells.div_ceil(128 * warps_per_head).max(1);
            let by_scratch = (max_partials / warps_per_head).max(1);
            let want = target_ctas.div_ceil(base.max(1)).clamp(1, by_len.min(by_scratch));
            let chunk = max_cells.div_ceil(want).max(1).next_multiple_of(step);
            let n_splits = max_cells.div_ceil(chunk).max(1);
            SplitPlan {
                prefill: false,
                staged,
                fast: false,
                grid: 0,
                n_splits,
                chunk,
                warps_per_head,
                heads_per_cta,
                n_partials: n_splits * warps_per_head,
            }
        } else {
            let base = n_seqs * self.n_kv_heads * cols.div_ceil(PREFILL_ROWS);
            let by_len = max_cells.div_ceil(4 * PREFILL_TILE).max(1);
            let want = prefill_splits(base, self.sm_count * self.prefill_resident, by_len.min(max_partials));
            let chunk = max_cells.div_ceil(want).max(1).next_multiple_of(PREFILL_TILE);
            let n_splits = max_cells.div_ceil(chunk).max(1);
            SplitPlan {
                prefill: true,
                staged: false,
                fast: false,
                grid: 0,
                n_splits,
                chunk,
                warps_per_head: 1,
                heads_per_cta: 1,
                n_partials: n_splits,
            }
        }
    }

    /// Enqueue the decoding of a store's rows (`DeviceDequant`) on `stream`: one kernel, one warp per
    /// (cell, kv head) row.
    pub fn dequantize(&self, a: &DeviceDequant, stream: sys::CUstream) -> Result<(), CudaError> {
        let rows = a.n_cells.checked_mul(self.n_kv_heads).filter(|&r| r.div_ceil(DEQUANT_WARPS) <= i32::MAX as usize);
        let Some(rows) = rows else {
            return Err(CudaError::invalid(format!("n_cells is {}: too many rows for one launch", a.n_cells)));
        };
        self.bind()?;
        let (mean_k, mean_v) = self.ready_means(a.layer);
        let (kt, vt) = &self.layers[a.layer];
        let (t, mean, row_bytes, code_bytes, scale_offset, bits) = if a.values {
            (vt, mean_v, self.v_row_bytes, self.v_code_bytes, self.v_scale_offset, self.bits_v)
        } else {
            (kt, mean_k, self.k_row_bytes, self.k_code_bytes, self.k_scale_offset, self.bits_k)
        };
        let mut dp = params::DequantParams {
            store: a.store,
            n_cells: a.n_cells as i64,
            n_kv_heads: self.n_kv_heads as i64,
            row_bytes: row_bytes as i64,
            code_bytes: code_bytes as i64,
            scale_offset: scale_offset as i64,
            bits: i64::from(bits),
            rot: params::Rotation { signs_in: t.signs_in, signs_out: t.signs_out, matrix: t.matrix, matrix_t: t.matrix_t },
            centroids: t.centroids,
            mean,
            out: a.out,
            out_dtype: dtype_code(a.out_dtype),
            token_stride: a.out_strides.token as i64,
            head_stride: a.out_strides.head as i64,
        };
        let ptr = &mut dp as *mut _ as *mut c_void;
        let grid = rows.div_ceil(DEQUANT_WARPS) as u32;
        self.launch(self.kernels.dequant, (grid, 1, 1), (DEQUANT_WARPS * 32) as u32, 0, stream, ptr, false, "dequantize launch")
    }

    /// Whether rows and pointers allow the vector-load prefill kernel.
    fn aligned(&self, stores: &Stores) -> bool {
        let d = self.head_dim;
        let (bk, bv) = (self.bits_k as usize, self.bits_v as usize);
        // The prefill kernel's windows: PF_DIMS = d / (threads / PF_TILE) dimensions' codes per lane.
        let dims = d / (prefill_threads(d) as usize / PREFILL_TILE);
        let need = vec_width(dims * bk / 8).max(vec_width(dims * bv / 8));
        let rows_ok = [self.k_row_bytes, self.v_row_bytes, self.k_code_bytes, self.v_code_bytes].iter().all(|x| x % need == 0);
        let ptrs_ok = match *stores {
            Stores::Single { k, v } => k as usize % need == 0 && v as usize % need == 0,
            Stores::Batch { .. } => true,
        };
        rows_ok && ptrs_ok
    }

    /// Whether the stores are aligned to `align` bytes (batch: 16-byte alignment is the caller's
    /// documented duty).
    fn stores_aligned(&self, stores: &Stores, align: u64) -> bool {
        match *stores {
            Stores::Single { k, v } => k % align == 0 && v % align == 0,
            Stores::Batch { .. } => true,
        }
    }

    /// Attention over compressed rows (and optional full-precision rows). Graph-capture safe.
    pub fn attend(&self, a: &DeviceAttend, stream: sys::CUstream) -> Result<(), CudaError> {
        let rows = a.n_seqs * a.n_q;
        if rows == 0 {
            return Ok(());
        }
        if rows > self.row_capacity {
            return Err(CudaError::invalid(format!(
                "n_q × sequences is {rows}: the context's scratch holds {} query tokens (params->max_batch)",
                self.row_capacity
            )));
        }
        if (a.causal.is_some() || a.full.is_some()) && a.query_pos == 0 {
            return Err(CudaError::invalid("query positions are needed for causal masking and full-precision rows"));
        }
        if a.n_seqs > 65535 {
            return Err(CudaError::invalid(format!("{} sequences: at most 65535 per call", a.n_seqs)));
        }
        self.bind()?;
        let (mean_k, mean_v) = self.ready_means(a.layer);
        let (kt, vt) = &self.layers[a.layer];
        let d = self.head_dim;
        let q = params::QueryTensor {
            ptr: a.q,
            seq_stride: a.q_seq_stride as i64,
            token_stride: a.q_strides.token as i64,
            head_stride: a.q_strides.head as i64,
        };
        let mut rp = params::RotateParams {
            q,
            dtype: dtype_code(self.dtype),
            n_q: a.n_q as i64,
            n_heads: self.n_heads as i64,
            group: self.group as i64,
            rot: params::Rotation { signs_in: kt.signs_in, signs_out: kt.signs_out, matrix: kt.matrix, matrix_t: kt.matrix_t },
            mean_k,
            scale: a.scale,
            pad_: 0.0,
            q_hat: self.q_hat,
            q_hat16: self.q_hat16,
            q_coef: self.q_coef,
            q_mu: self.q_mu,
        };
        let grid_rows = (a.n_q * self.n_heads) as u32;
        let aligned = self.aligned(&a.stores);
        let staged = self.stage_cells > 0 && self.stores_aligned(&a.stores, self.stage_align as u64);
        let fast = self.fast_stage_cells > 0 && self.stores_aligned(&a.stores, self.stage_align as u64);
        let plan = self.plan(a.n_seqs, a.n_q, a.max_cells, staged, fast);
        if plan.prefill && a.max_cells > i32::MAX as usize {
            // tq_prefill_* keeps cell indices in 32 bits.
            return Err(CudaError::new(
                CudaErrorKind::Unsupported,
                format!("{} cells: the prefill kernel takes at most 2^31 - 1 cells per sequence", a.max_cells),
            ));
        }
        let ptr = &mut rp as *mut _ as *mut c_void;
        let (rot_grid, rot_block) = if kt.signs_in != 0 {
            ((a.n_q * self.n_heads).div_ceil(ROTATE_WARPS) as u32, (ROTATE_WARPS * 32) as u32)
        } else {
            (grid_rows, d as u32)
        };
        self.launch(self.kernels.rotate, (rot_grid, a.n_seqs as u32, 1), rot_block, 0, stream, ptr, false, "query rotation launch")?;
        let (k_stores, v_stores, k_store, v_store) = match a.stores {
            Stores::Single { k, v } => (0, 0, k, v),
            Stores::Batch { k, v } => (k, v, 0, 0),
        };
        let mut ap = params::AttendParams {
            k_stores,
            v_stores,
            k_store,
            v_store,
            seq_cells: a.seq_cells,
            max_cells: a.max_cells as i64,
            n_seqs: a.n_seqs as i64,
            n_q: a.n_q as i64,
            n_heads: self.n_heads as i64,
            n_kv_heads: self.n_kv_heads as i64,
            group: self.group as i64,
            k_row_bytes: self.k_row_bytes as i64,
            v_row_bytes: self.v_row_bytes as i64,
            k_scale_offset: self.k_scale_offset as i64,
            v_scale_offset: self.v_scale_offset as i64,
            q_hat: self.q_hat,
            q_hat16: self.q_hat16,
            q_coef: self.q_coef,
            q_mu: self.q_mu,
            mask: a.mask.map_or(0, |m| m.ptr),
            mask_dtype: a.mask.map_or(0, |m| dtype_code(m.dtype)),
            mask_row_stride: a.mask.map_or(0, |m| m.row_stride as i64),
            mask_seq_stride: a.mask.map_or(0, |m| m.seq_stride as i64),
            cell_pos: a.causal.map_or(0, |c| c.cell_pos),
            cell_pos_seq_stride: a.causal.map_or(0, |c| c.seq_stride as i64),
            query_pos: a.query_pos,
            chunk: plan.chunk as i64,
            n_splits: plan.n_splits as i64,
            warps_per_head: plan.warps_per_head as i64,
            heads_per_cta: plan.heads_per_cta as i64,
            n_partials: plan.n_partials as i64,
            stage_cells: if plan.fast { self.fast_stage_cells as i64 } else { self.stage_cells as i64 },
            partials: self.partials,
            k_centroids: kt.centroids,
            v_centroids: vt.centroids,
        };
        let ptr = &mut ap as *mut _ as *mut c_void;
        if plan.prefill {
            let row_blocks = (a.n_q * self.group).div_ceil(PREFILL_ROWS);
            let f = if aligned { self.kernels.prefill_aligned } else { self.kernels.prefill_unaligned };
            let grid = (plan.n_splits as u32, (self.n_kv_heads * row_blocks) as u32, a.n_seqs as u32);
            self.launch(f, grid, prefill_threads(d), self.prefill_smem, stream, ptr, false, "prefill attention launch")?;
        } else {
            let col_blocks = (a.n_q * self.group).div_ceil(8);
            let head_blocks = self.n_kv_heads.div_ceil(plan.heads_per_cta);
            let (f, smem) = if plan.fast {
                let [f16, f8, f8c] = self.kernels.decode_fast.expect("plan.fast implies the kernel");
                // Bulk copies (fast16, fast8 on sm_90) need 16-byte aligned stores.
                let f = if !self.stores_aligned(&a.stores, 16) {
                    f8c
                } else if self.stage_align == 16 {
                    f16
                } else {
                    f8
                };
                (f, self.fast_smem)
            } else if plan.staged {
                let f = if self.stage_align == 16 { self.kernels.decode_staged16 } else { self.kernels.decode_staged8 };
                (f, self.staged_smem)
            } else {
                (self.kernels.decode_direct, self.decode_smem)
            };
            let grid = if plan.fast {
                (plan.grid as u32, 1, 1)
            } else {
                (plan.n_splits as u32, (head_blocks * col_blocks) as u32, a.n_seqs as u32)
            };
            let threads = (32 * plan.heads_per_cta * plan.warps_per_head) as u32;
            self.launch(f, grid, threads, smem, stream, ptr, plan.fast, "decode attention launch")?;
        }

        let full = a.full;
        let mut cp = params::CombineParams {
            q,
            dtype: dtype_code(self.dtype),
            n_q: a.n_q as i64,
            n_heads: self.n_heads as i64,
            group: self.group as i64,
            n_kv_heads: self.n_kv_heads as i64,
            rot: params::Rotation { signs_in: vt.signs_in, signs_out: vt.signs_out, matrix: vt.matrix, matrix_t: vt.matrix_t },
            mean_v,
            partials: self.partials,
            n_partials: plan.n_partials as i64,
            full_k: full.map_or(0, |f| f.k),
            full_v: full.map_or(0, |f| f.v),
            full_pos: full.map_or(0, |f| f.pos),
            query_pos: a.query_pos,
            n_full: full.map_or(0, |f| f.n_full as i64),
            full_seq_stride: full.map_or(0, |f| f.seq_stride as i64),
            scale: a.scale,
            pad_: 0.0,
            out: a.out,
            out_seq_stride: a.out_seq_stride as i64,
            out_token_stride: a.out_strides.token as i64,
            out_head_stride: a.out_strides.head as i64,
        };
        let n_full = full.map_or(0, |f| f.n_full);
        let floats = |warps: usize| d + 2 * warps + warps * d + n_full;
        if floats(COMBINE_WARPS) * 4 > COMBINE_SMEM {
            return Err(CudaError::invalid(format!(
                "{n_full} full-precision rows: at most {} per call",
                (COMBINE_SMEM / 4).saturating_sub(floats(COMBINE_WARPS) - n_full)
            )));
        }
        // More warps for many partials (each merges CMB_BATCH per dependent round), if their shared
        // accumulators fit beside the full-precision rows' logits.
        let warps = combine_warps(plan.n_partials, d);
        let warps = if floats(warps) * 4 <= COMBINE_SMEM { warps } else { COMBINE_WARPS };
        let smem = (floats(warps) * 4) as u32;
        let ptr = &mut cp as *mut _ as *mut c_void;
        self.launch(self.kernels.combine, (grid_rows, a.n_seqs as u32, 1), (warps * 32) as u32, smem, stream, ptr, true, "combine launch")
    }
}

/// Run `tq_layout_probe` once and compare the CUDA struct field offsets with the Rust ones.
fn check_layout(module: sys::CUmodule) -> Result<(), CudaError> {
    let expected = params::layout().1;
    // SAFETY: a one-off launch on the default stream into a buffer allocated and freed here.
    unsafe {
        let f = result::module::get_function(module, CString::new("tq_layout_probe").unwrap()).map_err(driver_err("kernel lookup"))?;
        let buf = result::malloc_sync(expected.len() * 8).map_err(driver_err("allocation"))?;
        let mut ptr = buf;
        let mut args = [&mut ptr as *mut u64 as *mut c_void];
        let launched = result::launch_kernel(f, (1, 1, 1), (1, 1, 1), 0, std::ptr::null_mut(), &mut args);
        let mut got = vec![0i64; expected.len()];
        let copied = launched.and_then(|_| result::memcpy_dtoh_sync(&mut got, buf));
        let _ = result::free_sync(buf);
        copied.map_err(driver_err("layout probe"))?;
        if got != expected {
            return Err(CudaError::new(
                CudaErrorKind::Backend,
                format!("kernel argument layout differs from src/backend/cuda/params.rs: CUDA {got:?}, Rust {expected:?}"),
            ));
        }
    }
    Ok(())
}

fn dtype_code(d: Dtype) -> i64 {
    i64::from(d.code())
}

impl Drop for CudaBackend {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        for &p in &self.allocations {
            // SAFETY: allocated by this backend in this context; nothing else frees it.
            let _ = unsafe { result::free_sync(p) };
        }
        // SAFETY: the module was loaded by this backend and no launch can follow.
        let _ = unsafe { result::module::unload(self.module) };
    }
}
