//! Append and attend requests, validated once into a backend-neutral form.
//!
//! A caller (the C shell or the safe Rust API) describes a request with raw addresses and sizes
//! ([`AppendArgs`], [`AttendArgs`]); [`AppendRequest::validate`] and [`AttendRequest::validate`]
//! check every argument — layer, null pointers, strides, mask, scale, slots and, where the data is
//! host memory, finiteness — and produce the request a backend runs. Every append/attend check lives
//! here, whichever backend runs the request; nothing is written before validation succeeds.

use std::ffi::c_void;

use super::{Dtype, KvCodec, Strides, limits};
use crate::error::{Error, ErrorKind, Result};

/// Where a backend's tensors live: what the host may read during validation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Memory {
    /// Host memory: slots and inputs are inspected (slot range, distinct slots, finiteness).
    Host,
    /// Device memory: the host never dereferences it; only pointers and sizes are checked.
    Device,
}

/// A tensor of head vectors in caller memory: [tokens][heads][head_dim] with byte strides.
#[derive(Clone, Copy, Debug)]
pub struct HeadTensor {
    pub ptr: *const u8,
    pub strides: Strides,
    pub dtype: Dtype,
}

// SAFETY: a HeadTensor is an address plus a shape; the requests that hold one are read-only views of
// caller memory that the caller keeps valid and unmodified for the call (the entry points' contract).
unsafe impl Send for HeadTensor {}
// SAFETY: as for Send: shared use only reads through the pointer.
unsafe impl Sync for HeadTensor {}

impl HeadTensor {
    /// Load head vector (token, head) into `out` as f32.
    ///
    /// # Safety
    /// The tensor covers (token, head) and is host memory.
    #[inline]
    pub unsafe fn load(&self, token: usize, head: usize, out: &mut [f32]) {
        // SAFETY: the caller guarantees (token, head) is inside the tensor.
        unsafe { self.dtype.load(self.ptr.add(self.strides.offset(token, head)), out) }
    }

    /// First element of token `token` that is not finite or exceeds [`limits::MAX_INPUT_ABS`] in
    /// magnitude, as (head, element).
    ///
    /// # Safety
    /// The tensor covers `token` and `heads` heads, in host memory.
    pub unsafe fn find_non_finite(&self, token: usize, heads: usize, x: &mut [f32]) -> Option<(usize, usize)> {
        for head in 0..heads {
            // SAFETY: the caller guarantees the tensor covers (token, head).
            unsafe { self.load(token, head, x) };
            if let Some(i) = x.iter().position(|v| !(v.abs() <= limits::MAX_INPUT_ABS)) {
                return Some((head, i));
            }
        }
        None
    }
}

/// The `layer` argument as an index, or why not.
pub fn check_layer(codec: &KvCodec, layer: u32) -> Result<usize> {
    if (layer as usize) < codec.config.n_layers {
        Ok(layer as usize)
    } else {
        Err(Error::invalid(format!("layer is {layer}: the context has {} layers", codec.config.n_layers)))
    }
}

/// A caller's strides (None = packed), checked to be whole elements.
pub fn strides_or_packed(s: Option<Strides>, heads: usize, d: usize, dtype: Dtype, arg: &str) -> Result<Strides> {
    match s {
        None => Ok(Strides::packed(heads, d, dtype)),
        Some(st) => {
            if st.head % dtype.size() != 0 || st.token % dtype.size() != 0 {
                return Err(Error::invalid(format!(
                    "{arg}: strides ({}, {}) are not multiples of the element size {}",
                    st.token,
                    st.head,
                    dtype.size()
                )));
            }
            Ok(Strides { token: st.token, head: st.head })
        }
    }
}

/// Reject a host tensor holding NaN, ±inf or an element above 2^64 in magnitude, naming the first
/// offender.
///
/// # Safety
/// `t` is host memory covering tokens 0..n and heads 0..heads.
pub unsafe fn check_finite_tensor(t: &HeadTensor, n: usize, heads: usize, d: usize, arg: &str) -> Result<()> {
    let mut x = vec![0.0f32; d];
    for tok in 0..n {
        // SAFETY: the caller guarantees the tensor covers tokens 0..n and heads 0..heads.
        if let Some((h, i)) = unsafe { t.find_non_finite(tok, heads, &mut x) } {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!("{arg}[token {tok}, head {h}, element {i}] is {}: not finite or above 2^64 in magnitude", x[i]),
            ));
        }
    }
    Ok(())
}

/// How a request is run: by the backend's own means, or one share of it on the calling thread.
#[derive(Clone, Copy, Debug)]
pub enum Exec {
    /// The backend schedules the work: CPU threads (n_threads), or kernels enqueued on this stream
    /// (a CUstream; null = the default stream).
    Queue(*mut c_void),
    /// Share `ith` of `nth` on the calling thread (engines with their own thread pool).
    Part { ith: usize, nth: usize },
}

impl Exec {
    /// A checked `Part`.
    pub fn part(ith: u32, nth: u32) -> Result<Exec> {
        if nth == 0 {
            return Err(Error::invalid("nth is 0: must be ≥ 1"));
        }
        if ith >= nth {
            return Err(Error::invalid(format!("ith is {ith}: must be < nth ({nth})")));
        }
        Ok(Exec::Part { ith: ith as usize, nth: nth as usize })
    }
}

/// The `ith` of `nth` contiguous shares of `0..n`.
pub fn part_range(n: usize, ith: usize, nth: usize) -> std::ops::Range<usize> {
    let per = n.div_ceil(nth);
    (ith * per).min(n)..((ith + 1) * per).min(n)
}

/// An append as the caller gave it: raw addresses, sizes, optional strides.
#[derive(Clone, Copy, Debug)]
pub struct AppendArgs {
    pub layer: u32,
    pub k_store: *mut c_void,
    pub v_store: *mut c_void,
    pub n_cells: usize,
    pub slots: *const i64,
    pub n_tokens: usize,
    pub k: *const c_void,
    pub k_strides: Option<Strides>,
    pub v: *const c_void,
    pub v_strides: Option<Strides>,
}

/// The cells an append writes.
#[derive(Clone, Debug)]
pub enum Slots {
    /// Read from host memory and checked: each < n_cells, all distinct.
    Host(Vec<usize>),
    /// n_tokens int64 in device memory (not inspected; the kernel skips cells outside 0..n_cells).
    Device(*const i64),
}

/// A validated append: `n_tokens` tokens of `k` and `v` into rows `slots` of the stores of `layer`.
#[derive(Clone, Debug)]
pub struct AppendRequest {
    pub layer: usize,
    pub k_store: *mut u8,
    pub v_store: *mut u8,
    pub n_cells: usize,
    pub slots: Slots,
    pub n_tokens: usize,
    pub k: HeadTensor,
    pub v: HeadTensor,
}

// SAFETY: the request is read by the workers of one call; they write disjoint rows of the stores
// (distinct slots, checked on the host) and only read the inputs.
unsafe impl Sync for AppendRequest {}

impl AppendRequest {
    /// Check an append for a codec with element type `dtype` whose backend's data lives in `memory`.
    ///
    /// # Safety
    /// With `Memory::Host`, `a.slots` holds `a.n_tokens` readable int64 and `a.k`/`a.v` cover their
    /// tensors (they are read here).
    pub unsafe fn validate(codec: &KvCodec, dtype: Dtype, memory: Memory, a: &AppendArgs) -> Result<Self> {
        let layer = check_layer(codec, a.layer)?;
        let cfg = &codec.config;
        if a.k_store.is_null() {
            return Err(Error::null("k_store"));
        }
        if a.v_store.is_null() {
            return Err(Error::null("v_store"));
        }
        if a.k.is_null() {
            return Err(Error::null("k"));
        }
        if a.v.is_null() {
            return Err(Error::null("v"));
        }
        limits::check_tokens_fit(a.n_tokens, a.n_cells)?;
        let (k_row_bytes, v_row_bytes) = codec.layer_row_bytes(layer);
        limits::check_store(a.n_cells, k_row_bytes, "k_store")?;
        limits::check_store(a.n_cells, v_row_bytes, "v_store")?;
        // The K and V rows of a token are written at once (by different threads for different tokens):
        // stores that share bytes would corrupt each other.
        limits::check_disjoint(a.k_store.cast(), a.n_cells * k_row_bytes, "k_store", a.v_store.cast(), a.n_cells * v_row_bytes, "v_store")?;
        let slots = match memory {
            Memory::Host => {
                // SAFETY: the caller guarantees `slots` holds n_tokens readable values.
                let slot_values = unsafe { host_slice(a.slots, a.n_tokens, "slots") }?;
                let mut seen = std::collections::HashSet::new();
                limits::reserved(seen.try_reserve(a.n_tokens), || format!("slots: cannot allocate a set of {} slots", a.n_tokens))?;
                let mut cells = Vec::new();
                limits::reserved(cells.try_reserve_exact(a.n_tokens), || format!("slots: cannot allocate {} cell indices", a.n_tokens))?;
                for (i, &s) in slot_values.iter().enumerate() {
                    if s < 0 || s as u64 >= a.n_cells as u64 {
                        return Err(Error::invalid(format!("slots[{i}] is {s}: must be in 0..{} (n_cells)", a.n_cells)));
                    }
                    if !seen.insert(s) {
                        return Err(Error::invalid(format!("slots[{i}] is {s}, which an earlier token of this call also uses")));
                    }
                    cells.push(s as usize);
                }
                Slots::Host(cells)
            }
            Memory::Device => {
                if a.slots.is_null() {
                    return Err(Error::null("slots"));
                }
                Slots::Device(a.slots)
            }
        };
        let k_strides = strides_or_packed(a.k_strides, cfg.n_kv_heads, cfg.head_dim, dtype, "k_strides")?;
        let v_strides = strides_or_packed(a.v_strides, cfg.n_kv_heads, cfg.head_dim, dtype, "v_strides")?;
        limits::tensor_span(a.k.cast(), k_strides, a.n_tokens, cfg.n_kv_heads, cfg.head_dim, dtype, "k_strides")?;
        limits::tensor_span(a.v.cast(), v_strides, a.n_tokens, cfg.n_kv_heads, cfg.head_dim, dtype, "v_strides")?;
        let k = HeadTensor { ptr: a.k.cast(), strides: k_strides, dtype };
        let v = HeadTensor { ptr: a.v.cast(), strides: v_strides, dtype };
        if memory == Memory::Host {
            // SAFETY: the caller guarantees host tensors covering n_tokens tokens.
            unsafe {
                check_finite_tensor(&k, a.n_tokens, cfg.n_kv_heads, cfg.head_dim, "k")?;
                check_finite_tensor(&v, a.n_tokens, cfg.n_kv_heads, cfg.head_dim, "v")?;
            }
        }
        Ok(AppendRequest {
            layer,
            k_store: a.k_store.cast(),
            v_store: a.v_store.cast(),
            n_cells: a.n_cells,
            slots,
            n_tokens: a.n_tokens,
            k,
            v,
        })
    }
}

/// The compressed stores an attend reads.
#[derive(Clone, Copy, Debug)]
pub enum Stores {
    /// One sequence: its K and V stores.
    Single { k: *const c_void, v: *const c_void },
    /// `n_seqs` sequences: arrays of n_seqs store pointers (device arrays on CUDA).
    Batch { k: *const *const c_void, v: *const *const c_void },
}

/// An attend as the caller gave it. A single-sequence attend has `n_seqs` 1, `Stores::Single` and
/// null `seq_cells`; a batch has per-sequence cell counts at `seq_cells` (device int64 on CUDA).
#[derive(Clone, Copy, Debug)]
pub struct AttendArgs {
    pub layer: u32,
    pub n_seqs: usize,
    pub q: *const c_void,
    pub n_q: usize,
    pub q_strides: Option<Strides>,
    pub q_seq_stride: usize,
    pub stores: Stores,
    pub seq_cells: *const i64,
    /// n_cells of a single attend; the bound of every seq_cells[s] of a batch.
    pub n_cells: usize,
    pub mask: *const c_void,
    pub mask_dtype: u32,
    pub mask_row_stride: usize,
    pub mask_seq_stride: usize,
    pub scale: f32,
    pub out: *mut c_void,
    pub out_strides: Option<Strides>,
    pub out_seq_stride: usize,
    /// Extra softmax terms (attention sinks, logit soft-capping); `AttendExtras::NONE` for none.
    pub extras: AttendExtras,
}

/// What an attend may add to plain softmax attention.
#[derive(Clone, Copy, Debug)]
pub struct AttendExtras {
    /// n_heads f32 sink logits (one per query head, in the backend's memory) that join each query's
    /// softmax as one more term with a zero value vector; null = none.
    pub sinks: *const f32,
    /// Logit soft-capping: a score s (already multiplied by `scale`) becomes c·tanh(s/c) before the
    /// mask is added; 0 = off.
    pub softcap: f32,
    /// Full-precision rows standing for compressed cells; `FullArgs::NONE` for none.
    pub full: FullArgs,
}

impl AttendExtras {
    /// Plain attention.
    pub const NONE: AttendExtras = AttendExtras { sinks: std::ptr::null(), softcap: 0.0, full: FullArgs::NONE };

    /// Whether any extra is used.
    pub fn any(&self) -> bool {
        !self.sinks.is_null() || self.softcap != 0.0 || self.full.any()
    }
}

/// Full-precision rows as the caller gave them (tq_attend_options' full_* fields): for each cell j
/// of the call `of_cell[j]` is -1 (attend its compressed row) or the row r < n_full of `k`/`v` that
/// stands for it; row r is [n_kv_heads][head_dim] elements of dtype `dtype` at `k + r·row_stride`.
#[derive(Clone, Copy, Debug)]
pub struct FullArgs {
    pub of_cell: *const i32,
    pub k: *const c_void,
    pub v: *const c_void,
    pub n_full: usize,
    pub row_stride: usize,
    pub dtype: u32,
    /// Optional [n_q][mask_row_stride] f32: −inf where query t attends the compressed row of the cell
    /// that row r stands for, otherwise a value added to the full row's score; NULL = every query
    /// attends every named cell through its full row.
    pub mask: *const f32,
    pub mask_row_stride: usize,
}

impl FullArgs {
    /// No full-precision rows.
    pub const NONE: FullArgs = FullArgs {
        of_cell: std::ptr::null(),
        k: std::ptr::null(),
        v: std::ptr::null(),
        n_full: 0,
        row_stride: 0,
        dtype: 0,
        mask: std::ptr::null(),
        mask_row_stride: 0,
    };

    /// Whether rows are given (a non-NULL `of_cell`).
    pub fn any(&self) -> bool {
        !self.of_cell.is_null()
    }
}

/// Validated full-precision rows (host memory): `of_cell` holds n_cells entries, each -1 or a row
/// below n_full, and every row it names is finite.
#[derive(Clone, Copy, Debug)]
pub struct FullSpec {
    pub of_cell: *const i32,
    pub k: *const u8,
    pub v: *const u8,
    pub dtype: Dtype,
    pub row_stride: usize,
    /// The full mask (see `FullArgs::mask`), null = none.
    pub mask: *const f32,
    pub mask_row_stride: usize,
}

impl FullSpec {
    /// `of_cell` as a slice of n_cells entries.
    ///
    /// # Safety
    /// `of_cell` holds `n_cells` entries (validated).
    pub unsafe fn of_cell<'a>(&self, n_cells: usize) -> &'a [i32] {
        // SAFETY: the caller's guarantee.
        unsafe { std::slice::from_raw_parts(self.of_cell, n_cells) }
    }

    /// The (cell, row) pairs and the bitset of cells that have a full-precision row.
    ///
    /// # Safety
    /// `of_cell` holds `n_cells` entries (validated).
    pub unsafe fn pairs(&self, n_cells: usize) -> (Vec<(usize, usize)>, Vec<u64>) {
        // SAFETY: the caller's guarantee.
        let of_cell = unsafe { self.of_cell(n_cells) };
        let mut hidden = vec![0u64; n_cells.div_ceil(64)];
        let mut pairs = Vec::new();
        for (j, &r) in of_cell.iter().enumerate() {
            if r >= 0 {
                pairs.push((j, r as usize));
                hidden[j / 64] |= 1 << (j % 64);
            }
        }
        (pairs, hidden)
    }
}

/// Check the full-precision rows of an attend over `n_cells` cells (host memory).
///
/// # Safety
/// A non-NULL `f.of_cell` holds n_cells entries, and `f.k`/`f.v` hold n_full rows of `f.row_stride`
/// bytes.
unsafe fn validate_full(cfg: &super::KvConfig, n_q: usize, n_cells: usize, f: &FullArgs) -> Result<Option<FullSpec>> {
    if f.of_cell.is_null() {
        return Ok(None);
    }
    let dtype = Dtype::from_code(f.dtype, "options->full_dtype")?;
    let row = cfg.n_kv_heads * cfg.head_dim;
    if f.n_full > 0 {
        if f.k.is_null() {
            return Err(Error::null("options->full_k"));
        }
        if f.v.is_null() {
            return Err(Error::null("options->full_v"));
        }
        if f.row_stride < row * dtype.size() {
            return Err(Error::invalid(format!(
                "options->full_row_stride is {}: a row of {} kv heads × head_dim {} needs at least {} bytes",
                f.row_stride,
                cfg.n_kv_heads,
                cfg.head_dim,
                row * dtype.size()
            )));
        }
        limits::check_store(f.n_full, f.row_stride, "options->full_k")?;
    }
    if !f.mask.is_null() {
        if f.mask_row_stride < f.n_full {
            return Err(Error::invalid(format!(
                "options->full_mask_row_stride is {}: must be ≥ n_full ({})",
                f.mask_row_stride, f.n_full
            )));
        }
        limits::check_mask(1, n_q, f.n_full, f.mask_row_stride, 0, 4)?;
    }
    // SAFETY: the caller guarantees n_cells entries.
    let of_cell = unsafe { host_slice(f.of_cell, n_cells, "options->full_of_cell") }?;
    let mut buf = vec![0.0f32; row];
    for (j, &r) in of_cell.iter().enumerate() {
        if r == -1 {
            continue;
        }
        if r < 0 || r as usize >= f.n_full {
            return Err(Error::invalid(format!(
                "options->full_of_cell[{j}] is {r}: must be -1 (the compressed row) or a row index below n_full ({})",
                f.n_full
            )));
        }
        for (base, name) in [(f.k, "options->full_k"), (f.v, "options->full_v")] {
            // SAFETY: row r < n_full lies inside the caller's rows.
            let p = unsafe { (base as *const u8).add(r as usize * f.row_stride) };
            // SAFETY: as above; a row holds `row` elements.
            unsafe { dtype.load(p, &mut buf) };
            if let Some(i) = buf.iter().position(|x| !x.is_finite() || x.abs() > limits::MAX_INPUT_ABS) {
                return Err(Error::new(
                    ErrorKind::NonFinite,
                    format!("{name} row {r} (cell {j}), element {i} is {}: not finite or above 2^64 in magnitude", buf[i]),
                ));
            }
        }
    }
    Ok(Some(FullSpec {
        of_cell: f.of_cell,
        k: f.k.cast(),
        v: f.v.cast(),
        dtype,
        row_stride: f.row_stride,
        mask: f.mask,
        mask_row_stride: f.mask_row_stride,
    }))
}

/// An engine's additive mask: element (s, t, j) at `ptr + (s·seq_stride + t·row_stride + j)·size`.
#[derive(Clone, Copy, Debug)]
pub struct Mask {
    pub ptr: *const u8,
    pub dtype: Dtype,
    pub row_stride: usize,
    pub seq_stride: usize,
}

/// A validated attend.
#[derive(Clone, Copy, Debug)]
pub struct AttendRequest {
    pub layer: usize,
    pub n_seqs: usize,
    pub n_q: usize,
    pub q: HeadTensor,
    pub q_seq_stride: usize,
    pub stores: Stores,
    pub seq_cells: *const i64,
    pub n_cells: usize,
    pub mask: Option<Mask>,
    pub scale: f32,
    pub out: *mut u8,
    pub out_strides: Strides,
    pub out_seq_stride: usize,
    /// Sink logits (n_heads f32, the backend's memory; null = none), finite where host memory.
    pub sinks: *const f32,
    /// Soft-capping constant, 0 = off (else finite and > 0).
    pub softcap: f32,
    /// Full-precision rows standing for cells (host memory), validated.
    pub full: Option<FullSpec>,
}

impl AttendRequest {
    /// Check an attend (see [`AppendRequest::validate`]).
    ///
    /// # Safety
    /// With `Memory::Host`, `a.q` covers its tensor and a non-null `a.extras.sinks` holds n_heads
    /// values (they are read here).
    pub unsafe fn validate(codec: &KvCodec, dtype: Dtype, memory: Memory, a: &AttendArgs) -> Result<Self> {
        let layer = check_layer(codec, a.layer)?;
        let cfg = &codec.config;
        if a.q.is_null() {
            return Err(Error::null("q"));
        }
        if a.out.is_null() {
            return Err(Error::null("out"));
        }
        if a.n_cells > 0 {
            match a.stores {
                Stores::Single { k, v } => {
                    if k.is_null() {
                        return Err(Error::null("k_store"));
                    }
                    if v.is_null() {
                        return Err(Error::null("v_store"));
                    }
                }
                Stores::Batch { k, v } => {
                    if k.is_null() || v.is_null() {
                        return Err(Error::null("k_store/v_store"));
                    }
                }
            }
        }
        if !a.scale.is_finite() {
            return Err(Error::invalid(format!("scale is {}: must be finite", a.scale)));
        }
        let softcap = a.extras.softcap;
        if !(softcap.is_finite() && softcap >= 0.0) {
            return Err(Error::invalid(format!("options->logit_softcap is {softcap}: must be 0 (off) or finite and > 0")));
        }
        let sinks = a.extras.sinks;
        if !sinks.is_null() && memory == Memory::Host {
            // SAFETY: the caller guarantees a non-null host `sinks` holds n_heads values.
            let values = unsafe { host_slice(sinks, cfg.n_heads, "options->sinks") }?;
            if let Some(h) = values.iter().position(|v| !v.is_finite() || v.abs() > limits::MAX_INPUT_ABS) {
                return Err(Error::new(
                    ErrorKind::NonFinite,
                    format!("options->sinks[{h}] is {}: not finite or above 2^64 in magnitude", values[h]),
                ));
            }
        }
        let full = if memory == Memory::Host {
            // SAFETY: the caller guarantees the full-precision arguments cover what they say.
            unsafe { validate_full(cfg, a.n_q, a.n_cells, &a.extras.full) }?
        } else {
            None
        };
        let mask = if a.mask.is_null() {
            None
        } else {
            let dtype = Dtype::from_code(a.mask_dtype, "mask_dtype")?;
            if a.mask_row_stride < a.n_cells {
                return Err(Error::invalid(format!(
                    "mask_row_stride is {}: must be ≥ n_cells ({})",
                    a.mask_row_stride, a.n_cells
                )));
            }
            limits::check_mask(a.n_seqs, a.n_q, a.n_cells, a.mask_row_stride, a.mask_seq_stride, dtype.size())?;
            Some(Mask { ptr: a.mask.cast(), dtype, row_stride: a.mask_row_stride, seq_stride: a.mask_seq_stride })
        };
        let q_strides = strides_or_packed(a.q_strides, cfg.n_heads, cfg.head_dim, dtype, "q_strides")?;
        let (k_row_bytes, v_row_bytes) = codec.layer_row_bytes(layer);
        limits::check_store(a.n_cells, k_row_bytes, "k_store")?;
        limits::check_store(a.n_cells, v_row_bytes, "v_store")?;
        let q_span = limits::tensor_span(a.q.cast(), q_strides, a.n_q, cfg.n_heads, cfg.head_dim, dtype, "q_strides")?;
        limits::seq_span(a.q.cast(), a.q_seq_stride, a.n_seqs, q_span, "q_seq_stride")?;
        let q = HeadTensor { ptr: a.q.cast(), strides: q_strides, dtype };
        if memory == Memory::Host {
            // SAFETY: the caller guarantees a host q covering n_q tokens of n_heads heads.
            unsafe { check_finite_tensor(&q, a.n_q, cfg.n_heads, cfg.head_dim, "q") }?;
        }
        let out_strides = strides_or_packed(a.out_strides, cfg.n_heads, cfg.head_dim, dtype, "out_strides")?;
        let out_span = limits::tensor_span(a.out.cast(), out_strides, a.n_q, cfg.n_heads, cfg.head_dim, dtype, "out_strides")?;
        limits::seq_span(a.out.cast(), a.out_seq_stride, a.n_seqs, out_span, "out_seq_stride")?;
        limits::check_disjoint_output(out_strides, a.out_seq_stride, a.n_seqs, a.n_q, cfg.n_heads, cfg.head_dim, dtype, "out_strides")?;
        Ok(AttendRequest {
            layer,
            n_seqs: a.n_seqs,
            n_q: a.n_q,
            q,
            q_seq_stride: a.q_seq_stride,
            stores: a.stores,
            seq_cells: a.seq_cells,
            n_cells: a.n_cells,
            mask,
            scale: a.scale,
            out: a.out.cast(),
            out_strides,
            out_seq_stride: a.out_seq_stride,
            sinks,
            softcap,
            full,
        })
    }
}

/// A caller's host array of `len` elements; NULL is accepted only when `len` is 0.
///
/// # Safety
/// Unless NULL, `ptr` points to `len` initialised elements valid for the call's duration.
pub unsafe fn host_slice<'a, T>(ptr: *const T, len: usize, arg: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Error::null(arg));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::invalid(format!("{arg} is not aligned to {} bytes", std::mem::align_of::<T>())));
    }
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::invalid(format!("{arg}: length {len} is too large")));
    }
    // SAFETY: non-null, aligned, size fits isize; the caller guarantees `len` live elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Which store of a layer a dequantization reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KvPart {
    Keys,
    Values,
}

/// A dequantization as the caller gave it: cells 0..n_cells of `store` (K or V rows of `layer`)
/// into `out`, [n_cells][n_kv_heads][head_dim] elements of `out_dtype` under `out_strides`.
#[derive(Clone, Copy, Debug)]
pub struct DequantArgs {
    pub layer: u32,
    pub part: u32,
    pub store: *const c_void,
    pub n_cells: usize,
    pub out: *mut c_void,
    pub out_dtype: u32,
    pub out_strides: Option<Strides>,
}

/// A validated dequantization.
#[derive(Clone, Copy, Debug)]
pub struct DequantRequest {
    pub layer: usize,
    pub part: KvPart,
    pub store: *const u8,
    pub n_cells: usize,
    pub out: *mut u8,
    pub out_dtype: Dtype,
    pub out_strides: Strides,
}

// SAFETY: a DequantRequest is addresses plus sizes; the caller keeps the store readable and gives the
// output's disjoint cells to the threads that share a request (the entry points' contract).
unsafe impl Send for DequantRequest {}
// SAFETY: as for Send: the store is only read, and each thread writes its own cells.
unsafe impl Sync for DequantRequest {}

impl DequantRequest {
    /// Check a dequantization: layer, part, pointers, output dtype and strides (whole elements, the
    /// extent inside the address space).
    pub fn validate(codec: &KvCodec, a: &DequantArgs) -> Result<Self> {
        let layer = check_layer(codec, a.layer)?;
        let part = match a.part {
            0 => KvPart::Keys,
            1 => KvPart::Values,
            p => return Err(Error::invalid(format!("part is {p}: must be TQ_KV_KEYS (0) or TQ_KV_VALUES (1)"))),
        };
        let cfg = &codec.config;
        if a.n_cells > 0 && a.store.is_null() {
            return Err(Error::null("store"));
        }
        if a.n_cells > 0 && a.out.is_null() {
            return Err(Error::null("out"));
        }
        let out_dtype = Dtype::from_code(a.out_dtype, "out_dtype")?;
        let (k_row_bytes, v_row_bytes) = codec.layer_row_bytes(layer);
        limits::check_store(a.n_cells, if part == KvPart::Keys { k_row_bytes } else { v_row_bytes }, "store")?;
        let out_strides = strides_or_packed(a.out_strides, cfg.n_kv_heads, cfg.head_dim, out_dtype, "out_strides")?;
        limits::tensor_span(a.out.cast(), out_strides, a.n_cells, cfg.n_kv_heads, cfg.head_dim, out_dtype, "out_strides")?;
        limits::check_disjoint_output(out_strides, 0, 1, a.n_cells, cfg.n_kv_heads, cfg.head_dim, out_dtype, "out_strides")?;
        Ok(DequantRequest { layer, part, store: a.store.cast(), n_cells: a.n_cells, out: a.out.cast(), out_dtype, out_strides })
    }
}
