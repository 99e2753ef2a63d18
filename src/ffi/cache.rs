//! C API of the owned cache (`tq_cache`): sequences, residual window, sinks, sequence operations,
//! memory statistics and save/load, for engines that do not manage cache cells themselves.

use std::ffi::{CStr, c_char, c_void};
use std::sync::atomic::{AtomicBool, Ordering};

use super::context::{context_call, run_attend, tq_context};
use super::error::{self, Error, Result, borrow, borrow_mut, slice, write_out};
use super::{TQ_ABI_VERSION, tq_status};
use crate::backend::cpu::encode::HeadTensor;
use crate::cache::persist::{self, LoadError};
use crate::cache::{CacheError, CacheParams, OwnedCache};
use crate::codec::Strides;

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
/// On success `*out` receives a handle the caller owns (free with tq_cache_free()). Thread-safe.
///
/// # Safety
/// `ctx` is NULL or live; `params` points to a tq_cache_params or is NULL; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_new(ctx: *const tq_context, params: *const tq_cache_params, out: *mut *mut tq_cache) -> tq_status {
    context_call(ctx, |c| {
        let p = unsafe { error::read_params(params, "params", |p: &tq_cache_params| p.abi_version) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        if c.cuda.is_some() {
            return Err(Error::new(
                tq_status::TQ_STATUS_UNSUPPORTED,
                "ctx uses TQ_BACKEND_CUDA: the owned cache keeps host memory; use slot mode (tq_append_kv/tq_attend) on CUDA",
            ));
        }
        if p.max_seqs == 0 || p.max_seqs > 65_536 {
            return Err(Error::invalid(format!("params->max_seqs is {}: must be in 1..=65536", p.max_seqs)));
        }
        if p.max_tokens == 0 {
            return Err(Error::invalid("params->max_tokens is 0: must be ≥ 1"));
        }
        let params = CacheParams {
            max_seqs: p.max_seqs as usize,
            max_tokens: p.max_tokens as usize,
            residual_window: p.residual_window as usize,
            n_sink: p.n_sink as usize,
        };
        let inner = OwnedCache::new(&c.codec, params);
        let cache = Box::new(tq_cache { ctx, inner, poisoned: AtomicBool::new(false) });
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
            drop(unsafe { Box::from_raw(cache) });
        }
    })
}

fn cache_error(e: CacheError) -> Error {
    match e {
        CacheError::Invalid(m) => Error::invalid(m),
        CacheError::Capacity(m) => Error::new(tq_status::TQ_STATUS_CAPACITY_EXCEEDED, m),
    }
}

/// Run a call on a cache (and its context): refuse a poisoned cache, poison it on a panic.
fn cache_call(cache: *mut tq_cache, body: impl FnOnce(&mut tq_cache, &tq_context) -> Result<()>) -> tq_status {
    let flag: *const AtomicBool = match unsafe { cache.as_ref() } {
        Some(c) => &c.poisoned,
        None => std::ptr::null(),
    };
    let status = error::boundary(|| {
        let c = unsafe { borrow_mut(cache, "cache") }?;
        if c.poisoned.load(Ordering::Relaxed) {
            return Err(Error::new(
                tq_status::TQ_STATUS_POISONED,
                "cache is poisoned: an earlier call on it failed internally; free it",
            ));
        }
        let ctx = unsafe { borrow(c.ctx, "cache's context") }?;
        let mut result = Ok(());
        let status = context_call(ctx, |ctx| {
            result = body(c, ctx);
            Ok(())
        });
        if status != tq_status::TQ_STATUS_OK {
            return Err(Error::new(status, error::last_error_string()));
        }
        result
    });
    if status == tq_status::TQ_STATUS_INTERNAL_ERROR && !flag.is_null() {
        unsafe { (*flag).store(true, Ordering::Relaxed) };
    }
    status
}

fn check_layer(ctx: &tq_context, layer: u32) -> Result<usize> {
    let n = ctx.codec.config.n_layers;
    if (layer as usize) < n { Ok(layer as usize) } else { Err(Error::invalid(format!("layer is {layer}: the context has {n} layers"))) }
}

/// Append `n` tokens to sequence `seq` of `layer`: `k` and `v` are packed
/// [n][n_kv_heads][head_dim] of the context dtype, finite. Positions continue the sequence. Tokens
/// older than the residual window (and not sinks) are compressed. Past max_tokens the call fails
/// with TQ_STATUS_CAPACITY_EXCEEDED and the cache is unchanged. `stream` is ignored (CPU).
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
    cache_call(cache, |c, ctx| {
        let layer = check_layer(ctx, layer)?;
        let cfg = &ctx.codec.config;
        let elems = error::checked_len(n, cfg.n_kv_heads * cfg.head_dim, "k")?;
        let size = ctx.dtype.size();
        let kb = unsafe { slice(k.cast::<u8>(), elems * size, "k") }?;
        let vb = unsafe { slice(v.cast::<u8>(), elems * size, "v") }?;
        for (bytes, arg) in [(kb, "k"), (vb, "v")] {
            let t = HeadTensor { ptr: bytes.as_ptr(), strides: Strides::packed(cfg.n_kv_heads, cfg.head_dim, ctx.dtype), dtype: ctx.dtype };
            let mut x = vec![0.0f32; cfg.head_dim];
            for tok in 0..n {
                if let Some((h, i)) = unsafe { crate::backend::cpu::encode::find_non_finite(&t, tok, cfg.n_kv_heads, &mut x) } {
                    return Err(Error::new(tq_status::TQ_STATUS_NON_FINITE, format!("{arg}[token {tok}, head {h}, element {i}] is not finite")));
                }
            }
        }
        unsafe { c.inner.append(&ctx.codec, layer, seq as usize, n, kb.as_ptr(), vb.as_ptr(), ctx.dtype) }.map_err(cache_error)
    })
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
    cache_call(cache, |c, ctx| {
        let layer = check_layer(ctx, layer)?;
        c.inner.check_seq(seq as usize).map_err(cache_error)?;
        if n_q == 0 {
            return Ok(());
        }
        if !scale.is_finite() {
            return Err(Error::invalid(format!("scale is {scale}: must be finite")));
        }
        let cfg = &ctx.codec.config;
        let elems = error::checked_len(n_q, cfg.n_heads * cfg.head_dim, "q")?;
        let qb = unsafe { slice(q.cast::<u8>(), elems * ctx.dtype.size(), "q") }?;
        let ob = unsafe { error::slice_mut(out.cast::<u8>(), elems * ctx.dtype.size(), "out") }?;
        let qt = HeadTensor { ptr: qb.as_ptr(), strides: Strides::packed(cfg.n_heads, cfg.head_dim, ctx.dtype), dtype: ctx.dtype };
        let mut x = vec![0.0f32; cfg.head_dim];
        for tok in 0..n_q {
            if let Some((h, i)) = unsafe { crate::backend::cpu::encode::find_non_finite(&qt, tok, cfg.n_heads, &mut x) } {
                return Err(Error::new(tq_status::TQ_STATUS_NON_FINITE, format!("q[token {tok}, head {h}, element {i}] is not finite")));
            }
        }
        let query_pos = c.inner.last_positions(layer, seq as usize, n_q).map_err(cache_error)?;
        let job = c.inner.attend_job(&ctx.codec, layer, seq as usize, qt, n_q, scale, ob.as_mut_ptr(), &query_pos);
        run_attend(&job, ctx.threads);
        Ok(())
    })
}

/// Remove positions [p0, p1) from sequence `seq` in every layer (seq < 0: every sequence; p0 < 0:
/// from 0; p1 < 0: to the end). Later tokens keep their positions.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_rm(cache: *mut tq_cache, seq: i32, p0: i64, p1: i64) -> tq_status {
    cache_call(cache, |c, ctx| c.inner.seq_rm(&ctx.codec, seq, p0, p1).map_err(cache_error))
}

/// Make `dst`'s positions [p0, p1) a copy of `src`'s (same stored representation, so attention is
/// bit-identical); p0 < 0: from 0, p1 < 0: to the end. Fails with TQ_STATUS_CAPACITY_EXCEEDED,
/// changing nothing, if `dst` would exceed max_tokens.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_cp(cache: *mut tq_cache, src: u32, dst: u32, p0: i64, p1: i64) -> tq_status {
    cache_call(cache, |c, ctx| c.inner.seq_cp(&ctx.codec, src as usize, dst as usize, p0, p1).map_err(cache_error))
}

/// Remove every sequence except `seq`.
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_keep(cache: *mut tq_cache, seq: u32) -> tq_status {
    cache_call(cache, |c, _| c.inner.seq_keep(seq as usize).map_err(cache_error))
}

/// Remove every token of every sequence (centering means, once fixed, are kept).
///
/// # Safety
/// `cache` is NULL or live.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_clear(cache: *mut tq_cache) -> tq_status {
    cache_call(cache, |c, _| {
        c.inner.clear();
        Ok(())
    })
}

/// Number of tokens sequence `seq` holds (in layer 0).
///
/// # Safety
/// `cache` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_seq_len(cache: *const tq_cache, seq: u32, out: *mut usize) -> tq_status {
    cache_call(cache as *mut tq_cache, |c, _| {
        let n = c.inner.seq_len(seq as usize).map_err(cache_error)?;
        unsafe { write_out(out, n, "out") }
    })
}

/// Memory held by the cache and what an f16 cache would hold for the same tokens.
///
/// # Safety
/// `cache` is NULL or live; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_memory_usage(cache: *const tq_cache, out: *mut tq_cache_memory) -> tq_status {
    cache_call(cache as *mut tq_cache, |c, ctx| {
        let m = c.inner.memory(&ctx.codec);
        unsafe {
            write_out(
                out,
                tq_cache_memory { bytes_used: m.bytes_used, bytes_fp16: m.bytes_fp16, n_tokens: m.n_tokens, n_compressed: m.n_compressed },
                "out",
            )
        }
    })
}

fn load_error(e: LoadError) -> Error {
    match e {
        LoadError::Corrupt(m) => Error::new(tq_status::TQ_STATUS_CORRUPT_DATA, m),
        LoadError::Incompatible(m) => Error::new(tq_status::TQ_STATUS_INCOMPATIBLE, m),
    }
}

/// Serialize the cache (versioned, parameter fingerprint, CRC-32). With `buf` NULL, only
/// `*written` = the size needed. Otherwise `size` must be at least that; `*written` = bytes written.
///
/// # Safety
/// `buf` is NULL or holds `size` writable bytes; `written` is writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_save(cache: *const tq_cache, buf: *mut c_void, size: usize, written: *mut usize) -> tq_status {
    cache_call(cache as *mut tq_cache, |c, ctx| {
        if written.is_null() {
            return Err(Error::null("written"));
        }
        let bytes = persist::save(&c.inner, &ctx.codec);
        if !buf.is_null() {
            if size < bytes.len() {
                return Err(Error::invalid(format!("size is {size}: the saved cache needs {} bytes", bytes.len())));
            }
            let out = unsafe { error::slice_mut(buf.cast::<u8>(), bytes.len(), "buf") }?;
            out.copy_from_slice(&bytes);
        }
        unsafe { written.write(bytes.len()) };
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
    cache_call(cache, |c, ctx| {
        let bytes = unsafe { slice(buf.cast::<u8>(), size, "buf") }?;
        c.inner = persist::load(bytes, &ctx.codec, &c.inner.params).map_err(load_error)?;
        Ok(())
    })
}

fn path_arg(path: *const c_char) -> Result<std::path::PathBuf> {
    if path.is_null() {
        return Err(Error::null("path"));
    }
    let s = unsafe { CStr::from_ptr(path) }.to_str().map_err(|_| Error::invalid("path is not valid UTF-8"))?;
    Ok(std::path::PathBuf::from(s))
}

/// tq_cache_save() to a file (written to a temporary name in the same folder, then renamed, so a
/// failure never leaves a partial file under `path`).
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_save_file(cache: *const tq_cache, path: *const c_char) -> tq_status {
    cache_call(cache as *mut tq_cache, |c, ctx| {
        let path = path_arg(path)?;
        let bytes = persist::save(&c.inner, &ctx.codec);
        let mut tmp = path.clone().into_os_string();
        tmp.push(".tmp");
        let io = |e: std::io::Error, what: &str| Error::new(tq_status::TQ_STATUS_IO_ERROR, format!("{what} {}: {e}", path.display()));
        std::fs::write(&tmp, &bytes).map_err(|e| io(e, "cannot write"))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(e, "cannot rename into"))
    })
}

/// tq_cache_load() from a file.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_cache_load_file(cache: *mut tq_cache, path: *const c_char) -> tq_status {
    cache_call(cache, |c, ctx| {
        let path = path_arg(path)?;
        let bytes = std::fs::read(&path)
            .map_err(|e| Error::new(tq_status::TQ_STATUS_IO_ERROR, format!("cannot read {}: {e}", path.display())))?;
        c.inner = persist::load(&bytes, &ctx.codec, &c.inner.params).map_err(load_error)?;
        Ok(())
    })
}
