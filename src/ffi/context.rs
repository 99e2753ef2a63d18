//! C API of the KV codec context and slot mode (engines that own their cache buffers).

use std::ffi::c_void;
use std::sync::atomic::AtomicBool;

use super::error::{self, Error, Guarded, Result, guarded_mut, guarded_ref, slice, write_out};
use super::quantizer::rotation_from_u32;
use super::{TQ_ABI_VERSION, tq_status};
use crate::backend::BackendChoice;
use crate::codec::request::{AppendArgs, AttendArgs, AttendExtras, DequantArgs, Exec, FullArgs, Stores};
use crate::codec::{Codec, Dtype, KvConfig, Strides};
use crate::math::quantizer::QuantizerKind;

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
    /// Number of layers, 1..=4096. Default 1.
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
    /// A tq_rotation value. Default TQ_ROTATION_AUTO. DENSE (also AUTO with a head_dim that is not a
    /// power of two) builds two head_dim × head_dim QR factorizations per layer: it is refused with
    /// TQ_STATUS_UNSUPPORTED when n_layers · head_dim³ > 2^32 (at most about 15 s of set-up).
    pub rotation: u32,
    /// A tq_key_mode value. Default TQ_KEY_MODE_MSE.
    pub key_mode: u32,
    /// A tq_dtype value: element type of q, k, v and out. Default TQ_DTYPE_F32.
    pub dtype: u32,
    /// A tq_backend value. Default TQ_BACKEND_CPU.
    pub backend: u32,
    /// CUDA device ordinal. Default 0.
    pub device: i32,
    /// CPU threads used by tq_append_kv / tq_attend (not by the _part variants); 0 = all cores, and
    /// larger values are capped at the machine's parallelism. If the system cannot start a thread, the
    /// work runs on the threads it has (no error, nothing printed). Default 0.
    pub n_threads: u32,
    /// Most tokens per append and query tokens per attend call (CUDA scratch sizing). Default 512.
    pub max_batch: u32,
    /// Seed of every rotation and projection. Default 0.
    pub seed: u64,
    /// Subtract a per-(layer, kv head) mean from K before quantizing (and from V with
    /// center_values), estimated from the rows of the first append to each layer and then frozen
    /// (exact for attention: q·μ_k is added back to every logit, μ_v to every output). Keys with a
    /// large constant component (e.g. k_proj biases) otherwise lose most of their precision to it.
    /// Default true (both backends; on CUDA the means are computed on the device and stay frozen
    /// when a CUDA graph replays the first append).
    pub centering: bool,
    /// Per-layer bits of the K codes: NULL (every layer at bits_k), or an array of n_layer_bits =
    /// n_layers values, each in bits_k's range, read by tq_context_new() only. Layers may then have
    /// different row sizes (tq_context_layer_row_bytes()). Not with the CUDA backend or the owned
    /// cache unless all values are equal to bits_k. Default NULL. (Added after the first release:
    /// a struct_size without this field and the three after it is accepted and means NULL, NULL, 0,
    /// false.)
    pub layer_bits_k: *const u32,
    /// Per-layer bits of the V codes, as layer_bits_k for bits_v. Default NULL.
    pub layer_bits_v: *const u32,
    /// Length of each non-NULL per-layer array: n_layers; 0 when both are NULL. Default 0.
    pub n_layer_bits: u32,
    /// With centering: subtract a per-(layer, kv head) mean from V too. Default false: measured on
    /// SmolLM2-135M it helps at 4-bit values and hurts at 2-bit ones (bench/llama/quality.md).
    /// (Added with the per-layer bits; an older struct_size means false.)
    pub center_values: bool,
    /// Fractional key widths (TurboQuant §4.3): per (layer, kv head), the key_outliers channels of
    /// largest energy are quantized by a second TurboQuant instance at bits_k + 1 and the other
    /// head_dim − key_outliers at bits_k, each part with its own rotation and scale (a K row costs
    /// (key_outliers·(bits_k + 1) + (head_dim − key_outliers)·bits_k)/head_dim bits per element plus two
    /// bf16 scales per head). The channels are chosen from the rows of the first append to each layer
    /// (after centering) and frozen in the context state with the means. 0 = off, else 16..=head_dim −
    /// 16; MSE keys with every layer's K bits ≤ 7; CPU backend, slot mode. Default 0. (Added after
    /// center_values; an older struct_size means 0.)
    pub key_outliers: u32,
}

/// struct_size of tq_context_params before the per-layer bits fields (still accepted).
pub const TQ_CONTEXT_PARAMS_SIZE_V1: usize = std::mem::offset_of!(tq_context_params, layer_bits_k);
/// struct_size of tq_context_params before key_outliers (still accepted): the end of center_values,
/// rounded up to the struct's alignment as a C compiler lays it out.
pub const TQ_CONTEXT_PARAMS_SIZE_V2: usize =
    (std::mem::offset_of!(tq_context_params, center_values) + 1).next_multiple_of(std::mem::align_of::<tq_context_params>());

/// A KV codec context. Opaque; create with tq_context_new(), free with tq_context_free().
pub struct tq_context {
    pub(crate) codec: Codec,
    pub(crate) poisoned: AtomicBool,
}

impl Guarded for tq_context {
    const ARG: &'static str = "ctx";
    const POISONED: &'static str = "ctx is poisoned: an earlier call on it failed internally; free it and create a new one";
    fn poisoned(&self) -> &AtomicBool {
        &self.poisoned
    }
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
        centering: true,
        layer_bits_k: std::ptr::null(),
        layer_bits_v: std::ptr::null(),
        n_layer_bits: 0,
        center_values: false,
        key_outliers: 0,
    }
}

/// sizeof(tq_context_params) as this library was built (for bindings that mirror the struct).
#[unsafe(no_mangle)]
pub extern "C" fn tq_context_params_size() -> usize {
    std::mem::size_of::<tq_context_params>()
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
    if p.key_outliers != 0 {
        let c = p.key_outliers as usize;
        if key_mode != QuantizerKind::Mse {
            return Err(Error::invalid("params->key_outliers needs params->key_mode MSE (PROD keys sketch the whole head)"));
        }
        if c < 16 || c + 16 > head_dim {
            return Err(Error::invalid(format!(
                "params->key_outliers is {c}: must be 0 or in 16..={} (each part of a head needs at least 16 channels, head_dim {head_dim})",
                head_dim.saturating_sub(16)
            )));
        }
        if bits_k > 7 {
            return Err(Error::invalid(format!(
                "params->bits_k is {bits_k} with params->key_outliers: the outlier channels take bits_k + 1, so bits_k must be at most 7"
            )));
        }
    }
    crate::codec::limits::check_dense_cost(n_layers, head_dim, rotation, p.key_outliers as usize)?;
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
        center_values: p.centering && p.center_values,
        key_outliers: p.key_outliers as usize,
    })
}

/// The per-layer (bits_k, bits_v) of `p` for `config`, or None when both arrays are NULL.
///
/// # Safety
/// Each non-NULL array of `p` holds n_layer_bits readable u32.
unsafe fn layer_bits_from_params(p: &tq_context_params, config: &KvConfig) -> Result<Option<Vec<(u32, u32)>>> {
    let n = p.n_layer_bits as usize;
    if p.layer_bits_k.is_null() && p.layer_bits_v.is_null() {
        if n != 0 {
            return Err(Error::invalid(format!(
                "params->n_layer_bits is {n} but params->layer_bits_k and params->layer_bits_v are NULL: set 0 or pass the arrays"
            )));
        }
        return Ok(None);
    }
    if n != config.n_layers {
        return Err(Error::invalid(format!(
            "params->n_layer_bits is {n}: the per-layer bits arrays need one value per layer (n_layers = {})",
            config.n_layers
        )));
    }
    let min_k = if config.key_mode == QuantizerKind::Prod { 2 } else { 1 };
    let read = |ptr: *const u32, name: &str, lo: u32, default: u32| -> Result<Vec<u32>> {
        if ptr.is_null() {
            return Ok(vec![default; n]);
        }
        // SAFETY: the caller guarantees a non-NULL array holds n_layer_bits values.
        let values = unsafe { std::slice::from_raw_parts(ptr, n) };
        if let Some((i, &b)) = values.iter().enumerate().find(|&(_, &b)| b < lo || b > 8) {
            return Err(Error::invalid(format!("params->{name}[{i}] is {b}: must be in {lo}..=8")));
        }
        Ok(values.to_vec())
    };
    let k = read(p.layer_bits_k, "layer_bits_k", min_k, config.bits_k)?;
    let v = read(p.layer_bits_v, "layer_bits_v", 1, config.bits_v)?;
    Ok(Some(k.into_iter().zip(v).collect()))
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
        // SAFETY: the caller guarantees `params` is NULL or a tq_context_params.
        let p = unsafe {
            error::read_params_grown(
                params,
                "params",
                |p: &tq_context_params| p.abi_version,
                &[TQ_CONTEXT_PARAMS_SIZE_V1, TQ_CONTEXT_PARAMS_SIZE_V2],
                Some(tq_context_default_params()),
            )
        }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let config = config_from_params(&p)?;
        // SAFETY: the caller guarantees the per-layer arrays of `params` (NULL or n_layer_bits values).
        let layer_bits = unsafe { layer_bits_from_params(&p, &config) }?;
        let dtype = Dtype::from_code(p.dtype, "params->dtype")?;
        let backend = match p.backend {
            0 => BackendChoice::Cpu { threads: p.n_threads },
            1 => BackendChoice::Cuda { device: p.device, max_batch: p.max_batch as usize },
            other => return Err(Error::invalid(format!("params->backend is {other}: not a tq_backend (CPU=0, CUDA=1)"))),
        };
        let codec = Codec::with_layer_bits(config, layer_bits.as_deref(), dtype, backend)?;
        let ctx = Box::new(tq_context { codec, poisoned: AtomicBool::new(false) });
        // SAFETY: the caller guarantees `out` is NULL (checked) or writable.
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
            // SAFETY: the caller passes a live handle from tq_context_new, not used after this call.
            drop(unsafe { Box::from_raw(ctx) });
        }
    })
}

/// Run a call on a context (shared: the entry points that take `const tq_context*`): refuse a
/// poisoned context, and poison it if the call panics.
pub(crate) fn context_call(ctx: *const tq_context, body: impl FnOnce(&tq_context) -> Result<()>) -> tq_status {
    guarded_ref(ctx, body)
}

/// Bytes per token per layer of a K row and of a V row (all kv heads): the engine allocates
/// n_cells × these for each layer's K and V store. Either output may be NULL. A context whose
/// per-layer bits differ from bits_k / bits_v has no single row size: this fails with
/// TQ_STATUS_INVALID_ARGUMENT (use tq_context_layer_row_bytes()). Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; outputs are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_row_bytes(ctx: *const tq_context, k_row_bytes: *mut usize, v_row_bytes: *mut usize) -> tq_status {
    context_call(ctx, |c| {
        if !c.codec.kv().uniform_bits() {
            return Err(Error::invalid(
                "ctx has per-layer bits other than bits_k / bits_v: its rows have per-layer sizes (tq_context_layer_row_bytes)",
            ));
        }
        // SAFETY: the caller's guarantee for the outputs.
        unsafe { write_row_bytes(c.codec.row_bytes(), k_row_bytes, v_row_bytes) }
    })
}

/// Bytes of a K row and of a V row of `layer` (as tq_context_row_bytes(), for contexts with
/// per-layer bits; any context). Either output may be NULL. Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; outputs are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_layer_row_bytes(
    ctx: *const tq_context,
    layer: u32,
    k_row_bytes: *mut usize,
    v_row_bytes: *mut usize,
) -> tq_status {
    context_call(ctx, |c| {
        let layer = crate::codec::request::check_layer(c.codec.kv(), layer)?;
        // SAFETY: the caller's guarantee for the outputs.
        unsafe { write_row_bytes(c.codec.layer_row_bytes(layer), k_row_bytes, v_row_bytes) }
    })
}

/// # Safety
/// Outputs are NULL or writable.
unsafe fn write_row_bytes((kr, vr): (usize, usize), k_row_bytes: *mut usize, v_row_bytes: *mut usize) -> Result<()> {
    if k_row_bytes.is_null() && v_row_bytes.is_null() {
        return Err(Error::null("k_row_bytes and v_row_bytes"));
    }
    for (ptr, bytes) in [(k_row_bytes, kr), (v_row_bytes, vr)] {
        if !ptr.is_null() {
            // SAFETY: the caller guarantees a non-NULL output is writable.
            unsafe { ptr.write(bytes) };
        }
    }
    Ok(())
}

/// Size in bytes of the context's state (the centering means of every layer and, with key_outliers,
/// the chosen outlier channels). Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_context_state_size(ctx: *const tq_context, out: *mut usize) -> tq_status {
    // SAFETY: the caller guarantees `out` is NULL or writable.
    context_call(ctx, |c| unsafe { write_out(out, c.codec.state_len(), "out") })
}

/// Save the context's state (centering means and key-outlier channels; versioned, with a parameter
/// fingerprint and a CRC-32) into `buf`
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
        // SAFETY: the caller guarantees `buf` holds `size` ≥ need writable bytes.
        let out = unsafe { error::slice_mut(buf, need, "buf") }?;
        out.copy_from_slice(&c.codec.save_state()?);
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
    guarded_mut(ctx, |c| {
        // SAFETY: the caller guarantees `buf` holds `size` readable bytes.
        let bytes = unsafe { slice(buf, size, "buf") }?;
        c.codec.load_state(bytes)
    })
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

/// The caller's strides: NULL = packed.
///
/// # Safety
/// `s` is NULL or points to a tq_strides.
pub(crate) unsafe fn strides_arg(s: *const tq_strides) -> Option<Strides> {
    // SAFETY: the caller guarantees `s` is NULL or points to a tq_strides; read unaligned, so a
    // pointer into a packed or byte buffer is fine too.
    (!s.is_null()).then(|| unsafe { s.read_unaligned() }).map(|st| Strides { token: st.token, head: st.head })
}

/// The raw append of tq_append_kv / tq_append_kv_part.
///
/// # Safety
/// The strides are NULL or valid.
#[allow(clippy::too_many_arguments)]
unsafe fn append_args(
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
) -> AppendArgs {
    AppendArgs {
        layer,
        k_store,
        v_store,
        n_cells,
        slots,
        n_tokens,
        k,
        // SAFETY: the caller guarantees the strides are NULL or valid.
        k_strides: unsafe { strides_arg(k_strides) },
        v,
        // SAFETY: as for k_strides.
        v_strides: unsafe { strides_arg(v_strides) },
    }
}

/// The raw single-sequence attend of tq_attend / tq_attend_part.
///
/// # Safety
/// The strides are NULL or valid.
#[allow(clippy::too_many_arguments)]
unsafe fn attend_args(
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
    extras: AttendExtras,
) -> AttendArgs {
    AttendArgs {
        layer,
        n_seqs: 1,
        q,
        n_q,
        // SAFETY: the caller guarantees the strides are NULL or valid.
        q_strides: unsafe { strides_arg(q_strides) },
        q_seq_stride: 0,
        stores: Stores::Single { k: k_store, v: v_store },
        seq_cells: std::ptr::null(),
        n_cells,
        mask,
        mask_dtype,
        mask_row_stride,
        mask_seq_stride: 0,
        scale,
        out,
        // SAFETY: as for q_strides.
        out_strides: unsafe { strides_arg(out_strides) },
        out_seq_stride: 0,
        extras,
    }
}

/// Compress `n_tokens` tokens of K and V (each [n_tokens][n_kv_heads][head_dim] of the context dtype,
/// byte strides or NULL for packed) into rows of `layer` at cells `slots[i]` of the caller's stores
/// (`k_store`/`v_store`: n_cells × tq_context_row_bytes bytes each; host memory on the CPU backend,
/// device memory on CUDA). Slots must be distinct and < n_cells; K and V must be finite; everything is
/// checked before any row is written. With centering, the first append to a layer fixes its means.
/// Limits: n_tokens ≤ n_cells (distinct slots); n_cells × row bytes and each tensor's extent under
/// its strides must fit in the address space (else TQ_STATUS_INVALID_ARGUMENT, before anything is
/// read or allocated); every element finite with |x| ≤ 2^64 (else TQ_STATUS_NON_FINITE).
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
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = unsafe { append_args(layer, k_store, v_store, n_cells, slots, n_tokens, k, k_strides, v, v_strides) };
    // SAFETY: the caller guarantees the pointers cover what the sizes say (the function's contract).
    context_call(ctx, |c| unsafe { c.codec.append_raw(&a, Exec::Queue(stream)) })
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
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = unsafe { append_args(layer, k_store, v_store, n_cells, slots, n_tokens, k, k_strides, v, v_strides) };
    context_call(ctx, |c| {
        let exec = Exec::part(ith, nth)?;
        // SAFETY: as in tq_append_kv.
        unsafe { c.codec.append_raw(&a, exec) }
    })
}

/// Attention of `n_q` query tokens (q: [n_q][n_heads][head_dim] of the context dtype) over cells
/// 0..n_cells of `layer`'s stores, written to `out` ([n_q][n_heads][head_dim]). `mask` (optional,
/// NULL = all visible) is additive, n_q rows of `mask_row_stride` elements of `mask_dtype` (F32, F16
/// or BF16); −inf hides a cell. `scale` multiplies q·k (e.g. 1/sqrt(head_dim)). Query head h reads kv
/// head h / (n_heads / n_kv_heads). A query that sees no cell gets a zero row. Cells must hold rows
/// written by tq_append_kv() with this context (cells never written hold whatever the buffer held:
/// mask them). The cache is never dequantized to memory. CPU: uses n_threads (a call with few work
/// items over many cells is split over its cells too, as tq_attend_part describes); `stream` is ignored.
/// Limits: the mask's extent (n_q rows of mask_row_stride elements) and q/out under their strides
/// must fit in the address space; q elements |x| ≤ 2^64. An output that overflows f32 (inputs or
/// scale far too large) is refused with TQ_STATUS_NON_FINITE on the CPU backend (tq_attend_part
/// checks the share it wrote). CUDA does not scan the output: the call only enqueues kernels, so no
/// status can report what they compute.
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
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = unsafe {
        attend_args(layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides, AttendExtras::NONE)
    };
    // SAFETY: the caller guarantees the pointers cover what the sizes say (the function's contract).
    context_call(ctx, |c| unsafe { c.codec.attend_raw(&a, Exec::Queue(stream)) })
}

/// tq_attend() for engines with their own thread pool: thread `ith` of `nth` (all passing the same
/// arguments) computes its share of the call on the calling thread; no threads are started. CPU
/// backend only.
/// Work is shared as (tile of 16 query tokens, kv head) items. When that split is unbalanced — e.g.
/// one decode token over 3 kv heads on 2 threads — and the call has at least 256 cells per share,
/// every item's cells are cut into chunks as well (split-K): each share stores the partial softmax
/// state of its chunks in the context, and the share that completes the call (the last to arrive,
/// in whatever order) merges them into `out`. The call's output is then complete only once all nth
/// shares have returned (as with any split: an engine reads `out` after its barrier), and the
/// non-finite-output check is reported by that last share. The nth shares of one call may run
/// concurrently and in any order, and interleave with other calls on the same context (a thread
/// may start a later call while others are still in this one); no share waits for another. Every
/// share of a call must be made before a later call on the same layer and `out`: a share that finds
/// such an earlier split call incomplete (shares missing, or its own share made twice) drops it —
/// its output is not written — and returns TQ_STATUS_INVALID_ARGUMENT, while its own call still
/// completes normally. At most 64 split calls may be in flight on one context (beyond that the
/// least recently touched one is dropped and reported the same way).
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
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = unsafe {
        attend_args(layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides, AttendExtras::NONE)
    };
    context_call(ctx, |c| {
        let exec = Exec::part(ith, nth)?;
        // SAFETY: as in tq_attend.
        unsafe { c.codec.attend_raw(&a, exec) }
    })
}

/// Which store of a layer tq_dequantize_rows() reads (values of its `part` argument).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_kv_part {
    /// The K store.
    TQ_KV_KEYS = 0,
    /// The V store.
    TQ_KV_VALUES = 1,
}

/// The stored rows of cells 0..n_cells of `layer`'s K store (`part` TQ_KV_KEYS) or V store
/// (TQ_KV_VALUES) as vectors: `out` receives [n_cells][n_kv_heads][head_dim] elements of `out_dtype`
/// (F32, F16 or BF16) under `out_strides` (NULL = packed), each the vector tq_attend() scores a
/// query against (keys) or weighs (values) — the decoded row in the original basis with the layer's
/// centering mean added (none before the layer's first append). For engines that run their own
/// attention over a prompt chunk (e.g. an f16 flash-attention kernel) where that is faster than
/// attending the compressed rows. Cells never written decode whatever bytes they hold (llama.cpp
/// zeroes its buffers: they decode to the mean). CPU: uses n_threads, `stream` is ignored. CUDA:
/// store and out are device memory and the call enqueues one kernel on `stream` (graph-capture safe);
/// PROD keys are refused with TQ_STATUS_UNSUPPORTED there. Thread-safe.
///
/// # Safety
/// `store` holds n_cells rows of the layer's row size; `out` covers the output tensor.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_dequantize_rows(
    ctx: *const tq_context,
    layer: u32,
    part: u32,
    store: *const c_void,
    n_cells: usize,
    out: *mut c_void,
    out_dtype: u32,
    out_strides: *const tq_strides,
    stream: *mut c_void,
) -> tq_status {
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = DequantArgs { layer, part, store, n_cells, out, out_dtype, out_strides: unsafe { strides_arg(out_strides) } };
    // SAFETY: the caller guarantees the pointers cover what the sizes say (the function's contract).
    context_call(ctx, |c| unsafe { c.codec.dequantize_raw(&a, Exec::Queue(stream)) })
}

/// tq_dequantize_rows() for engines with their own thread pool: thread `ith` of `nth` decodes its share
/// of the cells on the calling thread. CPU backend only.
///
/// # Safety
/// As tq_dequantize_rows().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_dequantize_rows_part(
    ctx: *const tq_context,
    layer: u32,
    part: u32,
    store: *const c_void,
    n_cells: usize,
    out: *mut c_void,
    out_dtype: u32,
    out_strides: *const tq_strides,
    ith: u32,
    nth: u32,
) -> tq_status {
    // SAFETY: the caller guarantees the strides are NULL or valid.
    let a = DequantArgs { layer, part, store, n_cells, out, out_dtype, out_strides: unsafe { strides_arg(out_strides) } };
    context_call(ctx, |c| {
        let exec = Exec::part(ith, nth)?;
        // SAFETY: as in tq_dequantize_rows.
        unsafe { c.codec.dequantize_raw(&a, exec) }
    })
}

/// Decode attention of `n_seqs` sequences in one call (CUDA contexts): sequence s has `n_q` query
/// tokens at `q + s·q_seq_stride` bytes ([n_q][n_heads][head_dim], `q_strides` or NULL for packed),
/// its compressed stores `k_stores[s]`/`v_stores[s]` and `n_cells[s]` cells, and writes
/// `out + s·out_seq_stride`. `k_stores`, `v_stores` (arrays of n_seqs device pointers, each store
/// 16-byte aligned) and `n_cells` (n_seqs int64) are DEVICE arrays, so the call is graph-capture safe
/// with per-step lengths; `max_cells` (host) bounds every n_cells[s] and sizes the launch. `mask`
/// (optional) is additive: element (s, i, j) at mask[s·mask_seq_stride + i·mask_row_stride + j].
/// n_seqs × n_q ≤ max_batch. Same semantics as tq_attend per sequence; the sequences share one
/// launch of each kernel. CPU contexts: TQ_STATUS_UNSUPPORTED (call tq_attend per sequence).
/// Attends on one context share its scratch: issue them on one stream.
///
/// # Safety
/// Device pointers cover what the sizes say.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_attend_batch(
    ctx: *const tq_context,
    layer: u32,
    n_seqs: usize,
    q: *const c_void,
    n_q: usize,
    q_strides: *const tq_strides,
    q_seq_stride: usize,
    k_stores: *const *const c_void,
    v_stores: *const *const c_void,
    n_cells: *const i64,
    max_cells: usize,
    mask: *const c_void,
    mask_dtype: u32,
    mask_row_stride: usize,
    mask_seq_stride: usize,
    scale: f32,
    out: *mut c_void,
    out_strides: *const tq_strides,
    out_seq_stride: usize,
    stream: *mut c_void,
) -> tq_status {
    let a = AttendArgs {
        layer,
        n_seqs,
        q,
        n_q,
        // SAFETY: the caller guarantees the strides are NULL or valid.
        q_strides: unsafe { strides_arg(q_strides) },
        q_seq_stride,
        stores: Stores::Batch { k: k_stores, v: v_stores },
        seq_cells: n_cells,
        n_cells: max_cells,
        mask,
        mask_dtype,
        mask_row_stride,
        mask_seq_stride,
        scale,
        out,
        // SAFETY: as for q_strides.
        out_strides: unsafe { strides_arg(out_strides) },
        out_seq_stride,
        extras: AttendExtras::NONE,
    };
    // SAFETY: the caller guarantees the device pointers cover what the sizes say.
    context_call(ctx, |c| unsafe { c.codec.attend_raw(&a, Exec::Queue(stream)) })
}

/// What tq_attend_ext() / tq_attend_part_ext() add to plain softmax attention. Obtain with
/// tq_attend_default_options() (nothing added), then set fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tq_attend_options {
    /// sizeof(tq_attend_options); set by tq_attend_default_options().
    pub struct_size: usize,
    /// TQ_ABI_VERSION; set by tq_attend_default_options().
    pub abi_version: u32,
    /// Logit soft-capping: each score s = scale·q·k becomes logit_softcap·tanh(s / logit_softcap)
    /// before the mask is added (Gemma 2 style). 0 = off (default); otherwise finite and > 0.
    pub logit_softcap: f32,
    /// Attention sinks (gpt-oss style): n_heads f32 logits, one per query head, each joining that
    /// head's softmax as one more term whose value vector is zero, so out = Σ_j e^(s_j)·v_j /
    /// (e^(sink_h) + Σ_j e^(s_j)). NULL = none (default). Host memory, finite. CPU backend only (a
    /// CUDA context refuses with TQ_STATUS_UNSUPPORTED, as it does logit_softcap).
    pub sinks: *const f32,
    /// Full-precision rows standing for compressed cells (an engine's residual window of recent
    /// tokens and its first tokens kept exact): NULL = none (default), else n_cells int32, one per cell
    /// of the call — -1 attends the cell's compressed row, r ≥ 0 attends row r of full_k/full_v
    /// instead, under the cell's own mask value, in the same softmax. Rows are in the original basis
    /// (not centered, not rotated). Host memory; CPU backend only (a CUDA context refuses with
    /// TQ_STATUS_UNSUPPORTED). Every row named is checked finite. (Added after sinks; an older
    /// struct_size means none.)
    pub full_of_cell: *const i32,
    /// K of the full-precision rows: row r ([n_kv_heads][head_dim] of full_dtype) at
    /// full_k + r·full_row_stride bytes.
    pub full_k: *const c_void,
    /// V of the full-precision rows, laid out as full_k.
    pub full_v: *const c_void,
    /// Rows in full_k/full_v; every full_of_cell entry is -1 or below it.
    pub n_full: usize,
    /// Bytes from one full-precision row to the next (≥ n_kv_heads·head_dim·element size).
    pub full_row_stride: usize,
    /// TQ_DTYPE_* of full_k/full_v (default TQ_DTYPE_F32).
    pub full_dtype: u32,
    /// Which queries take each full-precision row (NULL = all, default): n_q rows of
    /// full_mask_row_stride f32 (≥ n_full), host memory. Element (t, r) −inf makes query t attend the
    /// compressed row of the cell that row r stands for; any other value is added to the row's score
    /// (on top of the cell's mask value). E.g. a residual window per query: a batch of prompt tokens
    /// each sees only its own most recent positions in full precision.
    pub full_mask: *const f32,
    pub full_mask_row_stride: usize,
}

/// struct_size of tq_attend_options before the full-precision rows (still accepted).
const ATTEND_OPTIONS_V1_SIZE: usize = std::mem::offset_of!(tq_attend_options, full_of_cell);

/// Options that add nothing: tq_attend_ext() with them is tq_attend(). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_attend_default_options() -> tq_attend_options {
    tq_attend_options {
        struct_size: std::mem::size_of::<tq_attend_options>(),
        abi_version: TQ_ABI_VERSION,
        logit_softcap: 0.0,
        sinks: std::ptr::null(),
        full_of_cell: std::ptr::null(),
        full_k: std::ptr::null(),
        full_v: std::ptr::null(),
        n_full: 0,
        full_row_stride: 0,
        full_dtype: tq_dtype::TQ_DTYPE_F32 as u32,
        full_mask: std::ptr::null(),
        full_mask_row_stride: 0,
    }
}

/// The options argument as extras: NULL = none.
///
/// # Safety
/// `opts` is NULL or points to a tq_attend_options (its struct_size read first).
unsafe fn extras_arg(opts: *const tq_attend_options) -> Result<AttendExtras> {
    if opts.is_null() {
        return Ok(AttendExtras::NONE);
    }
    // SAFETY: the caller guarantees a non-NULL `opts` is a tq_attend_options.
    let o = unsafe {
        error::read_params_grown(
            opts,
            "options",
            |o: &tq_attend_options| o.abi_version,
            &[ATTEND_OPTIONS_V1_SIZE],
            Some(tq_attend_default_options()),
        )
    }?;
    Ok(AttendExtras {
        sinks: o.sinks,
        softcap: o.logit_softcap,
        full: FullArgs {
            of_cell: o.full_of_cell,
            k: o.full_k,
            v: o.full_v,
            n_full: o.n_full,
            row_stride: o.full_row_stride,
            dtype: o.full_dtype,
            mask: o.full_mask,
            mask_row_stride: o.full_mask_row_stride,
        },
    })
}

/// tq_attend() with the extras of `options` (NULL = none, then the same as tq_attend()): per-head
/// attention sinks, logit soft-capping and full-precision rows standing for cells, all checked (sinks
/// finite, logit_softcap 0 or finite > 0, full_of_cell entries -1 or below n_full and the rows they
/// name finite). On a CUDA context each is refused with TQ_STATUS_UNSUPPORTED.
///
/// # Safety
/// As tq_attend(); `options` is NULL or a tq_attend_options whose `sinks` is NULL or holds n_heads
/// floats, whose `full_of_cell` is NULL or holds n_cells entries, and whose full_k/full_v then hold
/// n_full rows of full_row_stride bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_attend_ext(
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
    options: *const tq_attend_options,
    out: *mut c_void,
    out_strides: *const tq_strides,
    stream: *mut c_void,
) -> tq_status {
    context_call(ctx, |c| {
        // SAFETY: the caller guarantees `options` is NULL or valid.
        let extras = unsafe { extras_arg(options) }?;
        // SAFETY: the caller guarantees the strides are NULL or valid.
        let a = unsafe {
            attend_args(layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides, extras)
        };
        // SAFETY: the caller guarantees the pointers cover what the sizes say (the function's contract).
        unsafe { c.codec.attend_raw(&a, Exec::Queue(stream)) }
    })
}

/// tq_attend_part() with `options` (see tq_attend_ext()), shared and split the same way; with split-K
/// the sinks join the merged softmax once. CPU backend only.
///
/// # Safety
/// As tq_attend_ext().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_attend_part_ext(
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
    options: *const tq_attend_options,
    out: *mut c_void,
    out_strides: *const tq_strides,
    ith: u32,
    nth: u32,
) -> tq_status {
    context_call(ctx, |c| {
        let exec = Exec::part(ith, nth)?;
        // SAFETY: the caller guarantees `options` is NULL or valid.
        let extras = unsafe { extras_arg(options) }?;
        // SAFETY: the caller guarantees the strides are NULL or valid.
        let a = unsafe {
            attend_args(layer, q, n_q, q_strides, k_store, v_store, n_cells, mask, mask_dtype, mask_row_stride, scale, out, out_strides, extras)
        };
        // SAFETY: as in tq_attend.
        unsafe { c.codec.attend_raw(&a, exec) }
    })
}
