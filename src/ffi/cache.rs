//! C API of the owned cache (`tq_cache`): sequences, residual window, sinks, sequence operations,
//! memory statistics and save/load, for engines that do not manage cache cells themselves.

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::AtomicBool;

use super::context::{context_call, tq_context};
use super::error::{self, Error, Guarded, Result, borrow, guarded_mut, guarded_ref, slice, write_out};
use super::{TQ_ABI_VERSION, tq_status};
use crate::cache::persist;
use crate::cache::{CacheParams, OwnedCache, handle};
use crate::codec::Codec;

/// Parameters of tq_cache_new(). Obtain with tq_cache_default_params(), then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tq_cache_params {
    /// sizeof(tq_cache_params); set by tq_cache_default_params().
    pub struct_size: usize,
    /// TQ_ABI_VERSION; set by tq_cache_default_params().
    pub abi_version: u32,
    /// Sequence ids 0..max_seqs. Default 1.
    pub max_seqs: u32,
    /// Most tokens per sequence (per layer). Default 4096.
    pub max_tokens: u32,
    /// The most recent tokens kept in full precision. Default 128.
    pub residual_window: u32,
    /// Tokens at positions < n_sink kept in full precision (attention sinks). Default 0.
    pub n_sink: u32,
}

/// Memory held by a cache (tq_cache_memory_usage()).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct tq_cache_memory {
    /// Bytes of stored rows, full-precision values and positions.
    pub bytes_used: usize,
    /// Bytes an f16 K/V cache would hold for the same tokens.
    pub bytes_fp16: usize,
    /// Tokens held, summed over sequences and layers.
    pub n_tokens: usize,
    /// Of those, tokens stored compressed.
    pub n_compressed: usize,
}

/// An owned KV cache. Opaque; create with tq_cache_new(), free with tq_cache_free().
pub struct tq_cache {
    ctx: *const tq_context,
    inner: OwnedCache,
    poisoned: AtomicBool,
}

impl Guarded for tq_cache {
    const ARG: &'static str = "cache";
    const POISONED: &'static str = "cache is poisoned: an earlier call on it failed internally; free it";
    fn poisoned(&self) -> &AtomicBool {
        &self.poisoned
    }
    /// A panic in a cache call may have left its context's state half-updated too: poison both.
    fn poison(&self) {
        self.poisoned.store(true, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the context outlives its caches (tq_cache_new's contract).
        if let Some(ctx) = unsafe { self.ctx.as_ref() } {
            ctx.poison();
        }
    }
}

/// Default cache parameters (see each field). Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_cache_default_params() -> tq_cache_params {
    tq_cache_params {
        struct_size: std::mem::size_of::<tq_cache_params>(),
        abi_version: TQ_ABI_VERSION,
        max_seqs: 1,
        max_tokens: 4096,
        residual_window: 128,
        n_sink: 0,
    }
}

/// sizeof(tq_cache_params) as this library was built.
#[unsafe(no_mangle)]
pub extern "C" fn tq_cache_params_size() -> usize {
    std::mem::size_of::<tq_cache_params>()
}

/// Create an empty cache for `ctx` (CPU backend). The cache borrows `ctx`, which must outlive it.
/// Memory grows with use: a sequence's per-layer records are allocated by its first append, so
/// max_seqs (1..=65536) costs 24 bytes per sequence up front whatever n_layers is.
/// On success `*out` receives a handle the caller owns (free with tq_cache_free()). Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; `params` points to a tq_cache_params or is NULL; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_new(ctx: *const tq_context, params: *const tq_cache_params, out: *mut *mut tq_cache) -> tq_status {
    context_call(ctx, |c| {
        // SAFETY: the caller guarantees `params` is NULL or a tq_cache_params.
        let p = unsafe { error::read_params(params, "params", |p: &tq_cache_params| p.abi_version) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let params = CacheParams {
            max_seqs: p.max_seqs as usize,
            max_tokens: p.max_tokens as usize,
            residual_window: p.residual_window as usize,
            n_sink: p.n_sink as usize,
        };
        let inner = handle::new_state(&c.codec, params)?;
        let cache = Box::new(tq_cache { ctx, inner, poisoned: AtomicBool::new(false) });
        // SAFETY: `out` is non-NULL (checked) and writable (the caller's contract).
        unsafe { write_out(out, Box::into_raw(cache), "out") }
    })
}

/// Free a cache. NULL is a no-op.
///
/// # Safety
/// `cache` is NULL or a live handle from tq_cache_new().
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_free(cache: *mut tq_cache) {
    error::boundary_value((), || {
        if !cache.is_null() {
            // SAFETY: the caller passes a live handle from tq_cache_new, not used after this call.
            drop(unsafe { Box::from_raw(cache) });
        }
    })
}

/// The context of a live cache, refused when poisoned.
fn cache_context<'a>(ctx: *const tq_context) -> Result<&'a tq_context> {
    // SAFETY: the context outlives its caches (tq_cache_new's contract); it is a separate allocation
    // from the cache, so this shared borrow does not alias the cache's borrow.
    let ctx = unsafe { borrow(ctx, "cache's context") }?;
    ctx.check_poisoned()?;
    Ok(ctx)
}

/// A call that reads a cache (entry points taking `const tq_cache*`): shared borrows only.
fn cache_call(cache: *const tq_cache, body: impl FnOnce(&tq_cache, &Codec) -> Result<()>) -> tq_status {
    guarded_ref(cache, |c| body(c, &cache_context(c.ctx)?.codec))
}

/// A call that changes a cache (entry points taking `tq_cache*`): the one mutable borrow of the cache
/// for the call; its context is only read.
fn cache_call_mut(cache: *mut tq_cache, body: impl FnOnce(&mut OwnedCache, &Codec) -> Result<()>) -> tq_status {
    guarded_mut(cache, |c| {
        let ctx = cache_context(c.ctx)?;
        body(&mut c.inner, &ctx.codec)
    })
}

/// Append `n` tokens to sequence `seq` of `layer`: `k` and `v` are packed
/// [n][n_kv_heads][head_dim] of the context dtype, finite. Positions continue the sequence. Tokens
/// older than the residual window (and not sinks) are compressed. Past max_tokens the call fails
/// with TQ_STATUS_CAPACITY_EXCEEDED and the cache is unchanged. `stream` is ignored (CPU).
/// Elements must be finite with |x| ≤ 2^64 (TQ_STATUS_NON_FINITE); positions end at 2^62 (an append
/// past it is TQ_STATUS_CAPACITY_EXCEEDED). A loaded file is held to the same limits.
/// Not thread-safe with other calls on the same cache.
///
/// # Safety
/// `k` and `v` hold n·n_kv_heads·head_dim elements.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_append(
    cache: *mut tq_cache,
    layer: u32,
    seq: u32,
    n: usize,
    k: *const c_void,
    v: *const c_void,
    stream: *mut c_void,
) -> tq_status {
    let _ = stream;
    // SAFETY: the caller guarantees k and v hold n·n_kv_heads·head_dim elements.
    cache_call_mut(cache, |st, codec| unsafe { handle::append_raw(codec, st, layer, seq, n, k, v) })
}

/// Attention of the queries of the last `n_q` positions of `seq` (q: packed [n_q][n_heads][head_dim]
/// of the context dtype; their K/V must already be appended) over the sequence's tokens in `layer`,
/// causal: query i sees positions ≤ its own. Compressed and full-precision tokens share one softmax.
/// Writes `out` ([n_q][n_heads][head_dim]). `stream` is ignored (CPU). Not thread-safe with
/// mutations of the same cache.
///
/// # Safety
/// `q` holds n_q·n_heads·head_dim elements; `out` as many writable ones.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_attend(
    cache: *mut tq_cache,
    layer: u32,
    seq: u32,
    q: *const c_void,
    n_q: usize,
    scale: f32,
    out: *mut c_void,
    stream: *mut c_void,
) -> tq_status {
    let _ = stream;
    // SAFETY: the caller guarantees q holds n_q·n_heads·head_dim elements and out as many writable ones.
    cache_call(cache, |c, codec| unsafe { handle::attend_raw(codec, &c.inner, layer, seq, q, n_q, scale, out) })
}

/// Remove positions [p0, p1) from sequence `seq` in every layer (seq < 0: every sequence; p0 < 0:
/// from 0; p1 < 0: to the end). Later tokens keep their positions.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_rm(cache: *mut tq_cache, seq: i32, p0: i64, p1: i64) -> tq_status {
    cache_call_mut(cache, |st, codec| Ok(st.seq_rm(codec.kv(), seq, p0, p1)?))
}

/// Make `dst`'s positions [p0, p1) a copy of `src`'s (same stored representation, so attention is
/// bit-identical); p0 < 0: from 0, p1 < 0: to the end. Fails with TQ_STATUS_CAPACITY_EXCEEDED,
/// changing nothing, if `dst` would exceed max_tokens.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_cp(cache: *mut tq_cache, src: u32, dst: u32, p0: i64, p1: i64) -> tq_status {
    cache_call_mut(cache, |st, codec| Ok(st.seq_cp(codec.kv(), src as usize, dst as usize, p0, p1)?))
}

/// Remove every sequence except `seq`.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_keep(cache: *mut tq_cache, seq: u32) -> tq_status {
    cache_call_mut(cache, |st, _| Ok(st.seq_keep(seq as usize)?))
}

/// Remove every token of every sequence (centering means, once fixed, are kept).
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_clear(cache: *mut tq_cache) -> tq_status {
    cache_call_mut(cache, |st, _| {
        st.clear();
        Ok(())
    })
}

/// Number of tokens sequence `seq` holds (in layer 0).
///
/// # Safety
/// `cache` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_len(cache: *const tq_cache, seq: u32, out: *mut usize) -> tq_status {
    cache_call(cache, |c, _| {
        let n = c.inner.seq_len(seq as usize)?;
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { write_out(out, n, "out") }
    })
}

/// Memory held by the cache and what an f16 cache would hold for the same tokens.
///
/// # Safety
/// `cache` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_memory_usage(cache: *const tq_cache, out: *mut tq_cache_memory) -> tq_status {
    cache_call(cache, |c, codec| {
        let m = c.inner.memory(codec.kv());
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe {
            write_out(
                out,
                tq_cache_memory { bytes_used: m.bytes_used, bytes_fp16: m.bytes_fp16, n_tokens: m.n_tokens, n_compressed: m.n_compressed },
                "out",
            )
        }
    })
}

/// Serialize the cache (versioned, parameter fingerprint, CRC-32). With `buf` NULL, only
/// `*written` = the size needed (computed, not serialised). Otherwise `size` must be at least that;
/// `*written` = bytes written. A `size` too small fails with TQ_STATUS_INVALID_ARGUMENT and
/// `*written` = the size needed, nothing written to `buf`.
///
/// # Safety
/// `buf` is NULL or holds `size` writable bytes; `written` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_save(cache: *const tq_cache, buf: *mut c_void, size: usize, written: *mut usize) -> tq_status {
    cache_call(cache, |c, codec| {
        if written.is_null() {
            return Err(Error::null("written"));
        }
        let need = persist::saved_len(&c.inner, codec.kv());
        // SAFETY: `written` is non-NULL (checked) and writable (the caller's contract).
        unsafe { written.write(need) };
        if buf.is_null() {
            return Ok(());
        }
        if size < need {
            return Err(Error::invalid(format!("size is {size}: the saved cache needs {need} bytes (written holds that size)")));
        }
        let bytes = persist::save_checked(&c.inner, codec.kv())?;
        // SAFETY: the caller guarantees `buf` holds `size` ≥ bytes.len() writable bytes.
        let out = unsafe { error::slice_mut(buf.cast::<u8>(), bytes.len(), "buf") }?;
        out.copy_from_slice(&bytes);
        Ok(())
    })
}

/// Replace the cache's contents by a cache saved with tq_cache_save() (same context parameters and
/// cache parameters). Truncated, corrupted or foreign data fails with TQ_STATUS_CORRUPT_DATA,
/// mismatched parameters or format with TQ_STATUS_INCOMPATIBLE; on failure the cache is unchanged.
///
/// # Safety
/// `buf` holds `size` readable bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_load(cache: *mut tq_cache, buf: *const c_void, size: usize) -> tq_status {
    cache_call_mut(cache, |st, codec| {
        // SAFETY: the caller guarantees `buf` holds `size` readable bytes.
        let bytes = unsafe { slice(buf.cast::<u8>(), size, "buf") }?;
        *st = persist::load(bytes, codec.kv(), &st.params)?;
        Ok(())
    })
}

fn path_arg(path: *const c_char) -> Result<std::path::PathBuf> {
    if path.is_null() {
        return Err(Error::null("path"));
    }
    // SAFETY: `path` is non-NULL (checked) and NUL-terminated (the caller's contract).
    let s = unsafe { CStr::from_ptr(path) }.to_str().map_err(|_| Error::invalid("path is not valid UTF-8"))?;
    Ok(std::path::PathBuf::from(s))
}

/// tq_cache_save() to a file: written to a new temporary file with a unique name in the same folder
/// (created exclusively, never through an existing file or symlink), fsynced, then renamed over
/// `path`, so a failure never leaves a partial file under `path`; on failure the temporary is removed.
/// An empty path or one ending in a folder separator is TQ_STATUS_INVALID_ARGUMENT.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_save_file(cache: *const tq_cache, path: *const c_char) -> tq_status {
    cache_call(cache, |c, codec| {
        let path = path_arg(path)?;
        let bytes = persist::save_checked(&c.inner, codec.kv())?;
        persist::write_file(&path, &bytes)
    })
}

/// tq_cache_load() from a file, which must be a regular file (a FIFO, device or folder is refused
/// with TQ_STATUS_IO_ERROR without blocking).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_load_file(cache: *mut tq_cache, path: *const c_char) -> tq_status {
    cache_call_mut(cache, |st, codec| {
        let path = path_arg(path)?;
        let bytes = persist::read_file(&path)?;
        *st = persist::load(&bytes, codec.kv(), &st.params)?;
        Ok(())
    })
}
