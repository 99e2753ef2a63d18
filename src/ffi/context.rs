//! C API of the KV codec context and slot mode (engines that own their cache buffers).

use std::ffi::c_void;
use std::sync::atomic::{AtomicBool, Ordering};

use super::error::{self, Error, Result, borrow, borrow_mut, slice, write_out};
use super::quantizer::rotation_from_u32;
use super::{TQ_ABI_VERSION, tq_status};
use crate::backend::cpu::attend::{self, AttendJob, AttendScratch, MaskSource};
use crate::backend::cpu::encode::{self, EncodeScratch, HeadTensor};
use crate::codec::{Dtype, KvCodec, KvConfig, Means, StateError, Strides};
use crate::math::quantizer::QuantizerKind;
use crate::parallel;

/// Backend a context runs on (values of the `backend` params field).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_backend {
    /// Host memory, Rust threads.
    TQ_BACKEND_CPU = 0,
    /// CUDA device memory, the caller's stream.
    TQ_BACKEND_CUDA = 1,
}

/// Element type of q, k, v, out and masks (values of `dtype` fields and arguments).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_dtype {
    TQ_DTYPE_F32 = 0,
    TQ_DTYPE_F16 = 1,
    TQ_DTYPE_BF16 = 2,
}

/// How keys are quantized (values of the `key_mode` params field).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_key_mode {
    /// Minimum-MSE quantizer (TurboQuant_mse) for keys, as for values. Default.
    TQ_KEY_MODE_MSE = 0,
    /// Unbiased inner-product quantizer (TurboQuant_prod): MSE at bits_k−1 plus a 1-bit QJL sketch.
    TQ_KEY_MODE_PROD = 1,
}

/// Parameters of tq_context_new(). Obtain with tq_context_default_params(), then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tq_context_params {
    /// sizeof(tq_context_params); set by tq_context_default_params().
    pub struct_size: usize,
    /// TQ_ABI_VERSION; set by tq_context_default_params().
    pub abi_version: u32,
    /// Number of layers (≥ 1). Default 1.
    pub n_layers: u32,
    /// Query heads (a multiple of n_kv_heads). Default 32.
    pub n_heads: u32,
    /// Key/value heads. Default 8.
    pub n_kv_heads: u32,
    /// Head dimension, 16..=1024 (HADAMARD: a power of two). Default 128.
    pub head_dim: u32,
    /// Bits per K coordinate, 1..=8 (PROD: 2..=8). Default 4.
    pub bits_k: u32,
    /// Bits per V coordinate, 1..=8. Default 4.
    pub bits_v: u32,
    /// A tq_rotation value. Default TQ_ROTATION_AUTO.
    pub rotation: u32,
    /// A tq_key_mode value. Default TQ_KEY_MODE_MSE.
    pub key_mode: u32,
    /// A tq_dtype value: element type of q, k, v and out. Default TQ_DTYPE_F32.
    pub dtype: u32,
    /// A tq_backend value. Default TQ_BACKEND_CPU.
    pub backend: u32,
    /// CUDA device ordinal. Default 0.
    pub device: i32,
    /// CPU threads used by tq_append_kv / tq_attend (not by the _part variants); 0 = all cores. Default 0.
    pub n_threads: u32,
    /// Most tokens per append and query tokens per attend call (CUDA scratch sizing). Default 512.
    pub max_batch: u32,
    /// Seed of every rotation and projection. Default 0.
    pub seed: u64,
    /// Subtract a per-(layer, kv head) mean from K and from V before quantizing, estimated from the
    /// rows of the first append to each layer and then frozen (exact for attention). Default false.
    pub centering: bool,
}

/// A KV codec context. Opaque; create with tq_context_new(), free with tq_context_free().
pub struct tq_context {
    pub(crate) codec: KvCodec,
    pub(crate) dtype: Dtype,
    pub(crate) threads: usize,
    pub(crate) poisoned: AtomicBool,
    /// The CUDA backend (TQ_BACKEND_CUDA); None for CPU contexts.
    pub(crate) cuda: Option<super::cuda::Backend>,
}

/// Default parameters (see each field). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_context_default_params() -> tq_context_params {
    tq_context_params {
        struct_size: std::mem::size_of::<tq_context_params>(),
        abi_version: TQ_ABI_VERSION,
        n_layers: 1,
        n_heads: 32,
        n_kv_heads: 8,
        head_dim: 128,
        bits_k: 4,
        bits_v: 4,
        rotation: super::tq_rotation::TQ_ROTATION_AUTO as u32,
        key_mode: tq_key_mode::TQ_KEY_MODE_MSE as u32,
        dtype: tq_dtype::TQ_DTYPE_F32 as u32,
        backend: tq_backend::TQ_BACKEND_CPU as u32,
        device: 0,
        n_threads: 0,
        max_batch: 512,
        seed: 0,
        centering: false,
    }
}

/// sizeof(tq_context_params) as this library was built (for bindings that mirror the struct).
#[unsafe(no_mangle)]
pub extern "C" fn tq_context_params_size() -> usize {
    std::mem::size_of::<tq_context_params>()
}

pub(crate) fn dtype_from_u32(v: u32, arg: &str) -> Result<Dtype> {
    match v {
        0 => Ok(Dtype::F32),
        1 => Ok(Dtype::F16),
        2 => Ok(Dtype::Bf16),
        other => Err(Error::invalid(format!("{arg} is {other}: not a tq_dtype (F32=0, F16=1, BF16=2)"))),
    }
}

fn config_from_params(p: &tq_context_params) -> Result<KvConfig> {
    let field = |name: &str, v: u32, lo: u32, hi: u32| -> Result<usize> {
        if v < lo || v > hi {
            Err(Error::invalid(format!("params->{name} is {v}: must be in {lo}..={hi}")))
        } else {
            Ok(v as usize)
        }
    };
    let n_layers = field("n_layers", p.n_layers, 1, 4096)?;
    let n_kv_heads = field("n_kv_heads", p.n_kv_heads, 1, 1024)?;
    let n_heads = field("n_heads", p.n_heads, 1, 8192)?;
    if n_heads % n_kv_heads != 0 {
        return Err(Error::invalid(format!(
            "params->n_heads ({n_heads}) is not a multiple of params->n_kv_heads ({n_kv_heads})"
        )));
    }
    let head_dim = field("head_dim", p.head_dim, 16, 1024)?;
    let key_mode = match p.key_mode {
        0 => QuantizerKind::Mse,
        1 => QuantizerKind::Prod,
        other => {
            return Err(Error::invalid(format!("params->key_mode is {other}: not a tq_key_mode (MSE=0, PROD=1)")));
        }
    };
    let min_k = if key_mode == QuantizerKind::Prod { 2 } else { 1 };
    let bits_k = field("bits_k", p.bits_k, min_k, 8)? as u32;
    let bits_v = field("bits_v", p.bits_v, 1, 8)? as u32;
    let rotation = rotation_from_u32(p.rotation, head_dim, "params->rotation")?;
    Ok(KvConfig {
        n_layers,
        n_heads,
        n_kv_heads,
        head_dim,
        bits_k,
        bits_v,
        rotation,
        key_mode,
        seed: p.seed,
        centering: p.centering,
    })
}

/// Create a context: every layer's K and V rotation and codebook (milliseconds for typical models).
/// On success `*out` receives a handle the caller owns (free with tq_context_free()). A CUDA backend
/// that is not compiled in or finds no driver/device fails with TQ_STATUS_BACKEND_UNAVAILABLE.
/// Thread-safe.
///
/// # Safety
/// `params` points to a tq_context_params or is NULL; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_new(params: *const tq_context_params, out: *mut *mut tq_context) -> tq_status {
    error::boundary(|| {
        let p = unsafe { error::read_params(params, "params", |p: &tq_context_params| p.abi_version) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let config = config_from_params(&p)?;
        let dtype = dtype_from_u32(p.dtype, "params->dtype")?;
        if p.backend > 1 {
            return Err(Error::invalid(format!("params->backend is {}: not a tq_backend (CPU=0, CUDA=1)", p.backend)));
        }
        let codec = KvCodec::new(config).map_err(|m| Error::new(tq_status::TQ_STATUS_UNSUPPORTED, m))?;
        let cuda = if p.backend == 1 { Some(super::cuda::Backend::new(&codec, dtype, &p)?) } else { None };
        let ctx = Box::new(tq_context {
            codec,
            dtype,
            threads: parallel::resolve_threads(p.n_threads),
            poisoned: AtomicBool::new(false),
            cuda,
        });
        unsafe { write_out(out, Box::into_raw(ctx), "out") }
    })
}

/// Free a context. NULL is a no-op. Caches created from it must be freed first.
///
/// # Safety
/// `ctx` is NULL or a live handle from tq_context_new().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_free(ctx: *mut tq_context) {
    error::boundary_value((), || {
        if !ctx.is_null() {
            drop(unsafe { Box::from_raw(ctx) });
        }
    })
}

/// Run a call on a context: refuse a poisoned context, and poison it if the call panics.
pub(crate) fn context_call(ctx: *const tq_context, body: impl FnOnce(&tq_context) -> Result<()>) -> tq_status {
    let mut handle: Option<&tq_context> = None;
    let status = error::boundary(|| {
        let c = unsafe { borrow(ctx, "ctx") }?;
        handle = Some(c);
        if c.poisoned.load(Ordering::Relaxed) {
            return Err(Error::new(
                tq_status::TQ_STATUS_POISONED,
                "ctx is poisoned: an earlier call on it failed internally; free it and create a new one",
            ));
        }
        body(c)
    });
    if status == tq_status::TQ_STATUS_INTERNAL_ERROR {
        if let Some(c) = handle {
            c.poisoned.store(true, Ordering::Relaxed);
        }
    }
    status
}

/// Bytes per token per layer of a K row and of a V row (all kv heads): the engine allocates
/// n_cells × these for each layer's K and V store. Either output may be NULL. Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; outputs are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_row_bytes(ctx: *const tq_context, k_row_bytes: *mut usize, v_row_bytes: *mut usize) -> tq_status {
    context_call(ctx, |c| {
        if k_row_bytes.is_null() && v_row_bytes.is_null() {
            return Err(Error::null("k_row_bytes and v_row_bytes"));
        }
        if !k_row_bytes.is_null() {
            unsafe { k_row_bytes.write(c.codec.k_layout.row_bytes()) };
        }
        if !v_row_bytes.is_null() {
            unsafe { v_row_bytes.write(c.codec.v_layout.row_bytes()) };
        }
        Ok(())
    })
}

/// Size in bytes of the context's state (the centering means of every layer). Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_state_size(ctx: *const tq_context, out: *mut usize) -> tq_status {
    context_call(ctx, |c| unsafe { write_out(out, c.codec.state_len(), "out") })
}

/// Save the context's state (centering means; versioned, with a parameter fingerprint) into `buf`
/// of `size` ≥ tq_context_state_size() bytes. An engine that saves its cache rows saves this too.
/// Not thread-safe with appends on the same context.
///
/// # Safety
/// `ctx` is NULL or live; `buf` holds `size` writable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_state_save(ctx: *const tq_context, buf: *mut u8, size: usize) -> tq_status {
    context_call(ctx, |c| {
        let need = c.codec.state_len();
        if size < need {
            return Err(Error::invalid(format!("size is {size}: the state needs {need} bytes (tq_context_state_size)")));
        }
        let out = unsafe { error::slice_mut(buf, need, "buf") }?;
        let mut v = Vec::with_capacity(need);
        c.codec.save_state(&mut v);
        out.copy_from_slice(&v);
        Ok(())
    })
}

/// Restore a state saved by tq_context_state_save() from a context with the same parameters.
/// Truncated, corrupted or mismatched data is rejected (TQ_STATUS_CORRUPT_DATA /
/// TQ_STATUS_INCOMPATIBLE) and leaves the context unchanged. Not thread-safe with other calls on
/// the same context.
///
/// # Safety
/// `ctx` is NULL or live; `buf` holds `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_state_load(ctx: *mut tq_context, buf: *const u8, size: usize) -> tq_status {
    context_call(ctx, |_| {
        let c = unsafe { borrow_mut(ctx, "ctx") }?;
        let bytes = unsafe { slice(buf, size, "buf") }?;
        let parsed = c.codec.parse_state(bytes).map_err(state_error)?;
        for (layer, means) in c.codec.layers.iter_mut().zip(parsed) {
            layer.means = match means {
                Some(m) => std::sync::OnceLock::from(m),
                None => std::sync::OnceLock::new(),
            };
        }
        Ok(())
    })
}

pub(crate) fn state_error(e: StateError) -> Error {
    match e {
        StateError::Corrupt(m) => Error::new(tq_status::TQ_STATUS_CORRUPT_DATA, m),
        StateError::Incompatible(m) => Error::new(tq_status::TQ_STATUS_INCOMPATIBLE, m),
    }
}

/// Byte strides of a [tokens][heads][head_dim] tensor whose head vectors are contiguous.
/// Pass NULL where a tensor is packed.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tq_strides {
    /// Bytes from one token to the next.
    pub token: usize,
    /// Bytes from one head to the next within a token.
    pub head: usize,
}

pub(crate) fn strides_or_packed(s: *const tq_strides, heads: usize, d: usize, dtype: Dtype, arg: &str) -> Result<Strides> {
    match unsafe { s.as_ref() } {
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

pub(crate) fn check_layer(c: &tq_context, layer: u32) -> Result<usize> {
    if (layer as usize) < c.codec.config.n_layers {
        Ok(layer as usize)
    } else {
        Err(Error::invalid(format!("layer is {layer}: the context has {} layers", c.codec.config.n_layers)))
    }
}

fn check_finite_tensor(t: &HeadTensor, n: usize, heads: usize, d: usize, arg: &str) -> Result<()> {
    let mut x = vec![0.0f32; d];
    for tok in 0..n {
        if let Some((h, i)) = unsafe { encode::find_non_finite(t, tok, heads, &mut x) } {
            return Err(Error::new(
                tq_status::TQ_STATUS_NON_FINITE,
                format!("{arg}[token {tok}, head {h}, element {i}] is not finite"),
            ));
        }
    }
    Ok(())
}

struct AppendArgs {
    layer: usize,
    k_store: *mut c_void,
    v_store: *mut c_void,
    slots: Vec<usize>,
    k: HeadTensor,
    v: HeadTensor,
}

#[allow(clippy::too_many_arguments)]
unsafe fn check_append(
    c: &tq_context,
    layer: u32,
    k_store: *mut c_void,
    v_store: *mut c_void,
    n_cells: usize,
    slots: *const i64,
    n_tokens: usize,
    k: *const c_void,
    k_strides: *const tq_strides,
    v: *const c_void,
    v_strides: *const tq_strides,
) -> Result<AppendArgs> {
    let layer = check_layer(c, layer)?;
    let cfg = &c.codec.config;
    if k_store.is_null() {
        return Err(Error::null("k_store"));
    }
    if v_store.is_null() {
        return Err(Error::null("v_store"));
    }
    if k.is_null() {
        return Err(Error::null("k"));
    }
    if v.is_null() {
        return Err(Error::null("v"));
    }
    let slot_values = unsafe { slice(slots, n_tokens, "slots") }?;
    let mut seen = std::collections::HashSet::with_capacity(n_tokens);
    let mut cells = Vec::with_capacity(n_tokens);
    for (i, &s) in slot_values.iter().enumerate() {
        if s < 0 || s as u64 >= n_cells as u64 {
            return Err(Error::invalid(format!("slots[{i}] is {s}: must be in 0..{n_cells} (n_cells)")));
        }
        if !seen.insert(s) {
            return Err(Error::invalid(format!("slots[{i}] is {s}, which an earlier token of this call also uses")));
        }
        cells.push(s as usize);
    }
    let k = HeadTensor { ptr: k.cast(), strides: strides_or_packed(k_strides, cfg.n_kv_heads, cfg.head_dim, c.dtype, "k_strides")?, dtype: c.dtype };
    let v = HeadTensor { ptr: v.cast(), strides: strides_or_packed(v_strides, cfg.n_kv_heads, cfg.head_dim, c.dtype, "v_strides")?, dtype: c.dtype };
    check_finite_tensor(&k, n_tokens, cfg.n_kv_heads, cfg.head_dim, "k")?;
    check_finite_tensor(&v, n_tokens, cfg.n_kv_heads, cfg.head_dim, "v")?;
    Ok(AppendArgs { layer, k_store, v_store, slots: cells, k, v })
}

/// Freeze (once) and return the centering means of the layer, from the rows of this call.
fn layer_means<'a>(c: &'a tq_context, a: &AppendArgs, n_tokens: usize) -> Option<&'a Means> {
    if !c.codec.config.centering {
        return None;
    }
    Some(c.codec.layers[a.layer].means.get_or_init(|| Means {
        k: unsafe { encode::head_means(&c.codec, &a.k, n_tokens) },
        v: unsafe { encode::head_means(&c.codec, &a.v, n_tokens) },
    }))
}

fn append_range(c: &tq_context, a: &AppendArgs, means: Option<&Means>, range: std::ops::Range<usize>) {
    let (kr, vr) = (c.codec.k_layout.row_bytes(), c.codec.v_layout.row_bytes());
    let mut scratch = EncodeScratch::new(&c.codec);
    for i in range {
        let cell = a.slots[i];
        // SAFETY: the store holds n_cells rows, cell < n_cells, and slots are distinct.
        let k_row = unsafe { std::slice::from_raw_parts_mut(a.k_store.cast::<u8>().add(cell * kr), kr) };
        let v_row = unsafe { std::slice::from_raw_parts_mut(a.v_store.cast::<u8>().add(cell * vr), vr) };
        unsafe { encode::encode_token(&c.codec, a.layer, means, &a.k, &a.v, i, k_row, v_row, &mut scratch) };
    }
}

// SAFETY: worker threads write disjoint rows (distinct slots) and only read the inputs.
unsafe impl Sync for AppendArgs {}

/// Compress `n_tokens` tokens of K and V (each [n_tokens][n_kv_heads][head_dim] of the context dtype,
/// byte strides or NULL for packed) into rows of `layer` at cells `slots[i]` of the caller's stores
/// (`k_store`/`v_store`: n_cells × tq_context_row_bytes bytes each; host memory on the CPU backend,
/// device memory on CUDA). Slots must be distinct and < n_cells; K and V must be finite; everything is
/// checked before any row is written. With centering, the first append to a layer fixes its means.
/// CPU: uses the context's n_threads; `stream` is ignored. n_tokens = 0 is a no-op.
/// CUDA: `slots`, `k`, `v` and the stores are device memory; the rows are the same bytes the CPU
/// backend writes. The call only enqueues one kernel on `stream` (a CUstream/cudaStream_t; NULL = the
/// default stream): no allocation, synchronisation or host copy, so it can be captured in a CUDA
/// graph. Device data is not inspected on the host: slots outside 0..n_cells are skipped by the
/// kernel, duplicate slots race, and non-finite K/V are encoded as they are (not rejected).
/// Concurrent calls on one context must write distinct cells (appends to distinct layers are safe).
///
/// # Safety
/// Pointers cover what the sizes say; stores are not read or written concurrently by others.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_append_kv(
    ctx: *mut tq_context,
    layer: u32,
    k_store: *mut c_void,
    v_store: *mut c_void,
    n_cells: usize,
    slots: *const i64,
    n_tokens: usize,
    k: *const c_void,
    k_strides: *const tq_strides,
    v: *const c_void,
    v_strides: *const tq_strides,
    stream: *mut c_void,
) -> tq_status {
    context_call(ctx, |c| {
        if n_tokens == 0 {
            return Ok(());
        }
        if let Some(cuda) = &c.cuda {
            return unsafe {
                cuda.append(c, layer, k_store, v_store, n_cells, slots, n_tokens, k, k_strides, v, v_strides, stream)
            };
        }
        let a = unsafe { check_append(c, layer, k_store, v_store, n_cells, slots, n_tokens, k, k_strides, v, v_strides) }?;
        let means = layer_means(c, &a, n_tokens);
        parallel::for_each_range(n_tokens, c.threads, 4, |_, range| append_range(c, &a, means, range));
        Ok(())
    })
}

fn check_part(ith: u32, nth: u32) -> Result<()> {
    if nth == 0 {
        return Err(Error::invalid("nth is 0: must be ≥ 1"));
    }
    if ith >= nth {
        return Err(Error::invalid(format!("ith is {ith}: must be < nth ({nth})")));
    }
    Ok(())
}

fn part_range(n: usize, ith: u32, nth: u32) -> std::ops::Range<usize> {
    let per = n.div_ceil(nth as usize);
    (ith as usize * per).min(n)..((ith as usize + 1) * per).min(n)
}

/// tq_append_kv() for engines with their own thread pool: thread `ith` of `nth` (all passing the same
/// arguments) encodes its share of the tokens on the calling thread; no threads are started. CPU
/// backend only.
///
/// # Safety
/// As tq_append_kv().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_append_kv_part(
    ctx: *mut tq_context,
    layer: u32,
    k_store: *mut c_void,
    v_store: *mut c_void,
    n_cells: usize,
    slots: *const i64,
    n_tokens: usize,
    k: *const c_void,
    k_strides: *const tq_strides,
    v: *const c_void,
    v_strides: *const tq_strides,
    ith: u32,
    nth: u32,
) -> tq_status {
    context_call(ctx, |c| {
        check_part(ith, nth)?;
        super::cuda::reject_part(c, "tq_append_kv_part")?;
        if n_tokens == 0 {
            return Ok(());
        }
        let a = unsafe { check_append(c, layer, k_store, v_store, n_cells, slots, n_tokens, k, k_strides, v, v_strides) }?;
        let means = layer_means(c, &a, n_tokens);
        append_range(c, &a, means, part_range(n_tokens, ith, nth));
        Ok(())
    })
}

#[allow(clippy::too_many_arguments)]
unsafe fn check_attend<'a>(
    c: &'a tq_context,
    layer: u32,
    q: *const c_void,
    n_q: usize,
    q_strides: *const tq_strides,
    k_store: *const c_void,
    v_store: *const c_void,
    n_cells: usize,
    mask: *const c_void,
    mask_dtype: u32,
    mask_row_stride: usize,
    scale: f32,
    out: *mut c_void,
    out_strides: *const tq_strides,
) -> Result<AttendJob<'a>> {
    let layer = check_layer(c, layer)?;
    let cfg = &c.codec.config;
    if q.is_null() {
        return Err(Error::null("q"));
    }
    if out.is_null() {
        return Err(Error::null("out"));
    }
    if n_cells > 0 && k_store.is_null() {
        return Err(Error::null("k_store"));
    }
    if n_cells > 0 && v_store.is_null() {
        return Err(Error::null("v_store"));
    }
    if !scale.is_finite() {
        return Err(Error::invalid(format!("scale is {scale}: must be finite")));
    }
    let mask = if mask.is_null() {
        MaskSource::None
    } else {
        let dtype = dtype_from_u32(mask_dtype, "mask_dtype")?;
        if mask_row_stride < n_cells {
            return Err(Error::invalid(format!(
                "mask_row_stride is {mask_row_stride}: must be ≥ n_cells ({n_cells})"
            )));
        }
        MaskSource::Tensor { ptr: mask.cast(), dtype, row_stride: mask_row_stride }
    };
    let q = HeadTensor { ptr: q.cast(), strides: strides_or_packed(q_strides, cfg.n_heads, cfg.head_dim, c.dtype, "q_strides")?, dtype: c.dtype };
    check_finite_tensor(&q, n_q, cfg.n_heads, cfg.head_dim, "q")?;
    let out_strides = strides_or_packed(out_strides, cfg.n_heads, cfg.head_dim, c.dtype, "out_strides")?;
    Ok(AttendJob {
        codec: &c.codec,
        layer,
        means: c.codec.means(layer),
        q,
        n_q,
        k_store: k_store.cast(),
        v_store: v_store.cast(),
        n_cells,
        mask,
        full: None,
        scale,
        out: out.cast(),
        out_strides,
        out_dtype: c.dtype,
    })
}

/// Attention of `n_q` query tokens (q: [n_q][n_heads][head_dim] of the context dtype) over cells
/// 0..n_cells of `layer`'s stores, written to `out` ([n_q][n_heads][head_dim]). `mask` (optional,
/// NULL = all visible) is additive, n_q rows of `mask_row_stride` elements of `mask_dtype` (F32, F16
/// or BF16); −inf hides a cell. `scale` multiplies q·k (e.g. 1/sqrt(head_dim)). Query head h reads kv
/// head h / (n_heads / n_kv_heads). A query that sees no cell gets a zero row. Cells must hold rows
/// written by tq_append_kv() with this context (cells never written hold whatever the buffer held:
/// mask them). The cache is never dequantized to memory. CPU: uses n_threads; `stream` is ignored.
/// Thread-safe with other attends on the same context.
/// CUDA: q, stores, mask and out are device memory; the call enqueues three kernels on `stream`
/// (graph-capture safe: no allocation, synchronisation or host copy). q·k uses f16 tensor-core
/// operands (relative error ~1e-3 against the exact attention over the dequantised rows). Attends on
/// one CUDA context share its scratch: issue them on one stream (or serialise them). n_q ≤ max_batch.
///
/// # Safety
/// Pointers cover what the sizes say.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_attend(
    ctx: *const tq_context,
    layer: u32,
    q: *const c_void,
    n_q: usize,
    q_strides: *const tq_strides,
    k_store: *const c_void,
    v_store: *const c_void,
    n_cells: usize,
    mask: *const c_void,
    mask_dtype: u32,
    mask_row_stride: usize,
    scale: f32,
    out: *mut c_void,
    out_strides: *const tq_strides,
    stream: *mut c_void,
) -> tq_status {
    context_call(ctx, |c| {
        if n_q == 0 {
            return Ok(());
        }
        if let Some(cuda) = &c.cuda {
            return unsafe {
                cuda.attend(c, layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides, stream)
            };
        }
        let job = unsafe {
            check_attend(c, layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides)
        }?;
        run_attend(&job, c.threads);
        Ok(())
    })
}

pub(crate) fn run_attend(job: &AttendJob, threads: usize) {
    parallel::for_each_range(job.n_items(), threads, 1, |_, range| {
        let mut scratch = AttendScratch::new(job.codec);
        unsafe { attend::run_items(job, range, &mut scratch) };
    });
}

/// tq_attend() for engines with their own thread pool: thread `ith` of `nth` (all passing the same
/// arguments) computes its share of the (tile of 8 query tokens, kv head) work items on the calling thread; no threads
/// are started. CPU backend only.
///
/// # Safety
/// As tq_attend().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_attend_part(
    ctx: *const tq_context,
    layer: u32,
    q: *const c_void,
    n_q: usize,
    q_strides: *const tq_strides,
    k_store: *const c_void,
    v_store: *const c_void,
    n_cells: usize,
    mask: *const c_void,
    mask_dtype: u32,
    mask_row_stride: usize,
    scale: f32,
    out: *mut c_void,
    out_strides: *const tq_strides,
    ith: u32,
    nth: u32,
) -> tq_status {
    context_call(ctx, |c| {
        check_part(ith, nth)?;
        super::cuda::reject_part(c, "tq_attend_part")?;
        if n_q == 0 {
            return Ok(());
        }
        let job = unsafe {
            check_attend(c, layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides)
        }?;
        let mut scratch = AttendScratch::new(&c.codec);
        unsafe { attend::run_items(&job, part_range(job.n_items(), ith, nth), &mut scratch) };
        Ok(())
    })
}
