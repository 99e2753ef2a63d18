//! The owned cache's operations on a [`Codec`]: the checks of the C entry points and of the safe Rust
//! handle [`Cache`], in one place. The owned cache keeps host memory: codecs on a backend without
//! `Op::OwnedCache` are refused.

use std::ffi::c_void;

use super::{CacheParams, MemoryUsage, OwnedCache, persist};
use crate::backend::Op;
use crate::codec::request::{Exec, HeadTensor, check_finite_tensor, check_layer, host_slice};
use crate::codec::{Codec, Element, Strides};
use crate::error::{Error, Result};

/// An empty cache for `codec` with parameters `p` (checked).
pub fn new_state(codec: &Codec, p: CacheParams) -> Result<OwnedCache> {
    codec.backend().require(Op::OwnedCache)?;
    if !codec.kv().uniform_bits() {
        return Err(Error::unsupported(
            "ctx has per-layer bits other than bits_k / bits_v: the owned cache stores one row size for every layer (use slot mode)",
        ));
    }
    if codec.kv().config.key_outliers > 0 {
        return Err(Error::unsupported(
            "ctx has key_outliers (split key rows): the owned cache does not implement them (use slot mode)",
        ));
    }
    if p.max_seqs == 0 || p.max_seqs > 65_536 {
        return Err(Error::invalid(format!("params->max_seqs is {}: must be in 1..=65536", p.max_seqs)));
    }
    if p.max_tokens == 0 {
        return Err(Error::invalid("params->max_tokens is 0: must be ≥ 1"));
    }
    Ok(OwnedCache::new(codec.kv(), p))
}

/// Bytes of `n` packed tokens of `heads` heads in the codec's dtype, checked for overflow (of the
/// element count and of the byte count, and against the address space).
fn packed_bytes(codec: &Codec, n: usize, heads: usize, arg: &str) -> Result<usize> {
    n.checked_mul(heads * codec.kv().config.head_dim)
        .and_then(|e| e.checked_mul(codec.dtype().size()))
        .filter(|&b| b <= isize::MAX as usize)
        .ok_or_else(|| Error::invalid(format!("{arg}: {n} tokens of {heads} heads overflow the address space")))
}

/// Append `n` packed tokens of K and V (host memory of the codec's dtype) to `seq` of `layer`.
///
/// # Safety
/// `k` and `v` are NULL or hold n·n_kv_heads·head_dim elements.
pub unsafe fn append_raw(codec: &Codec, st: &mut OwnedCache, layer: u32, seq: u32, n: usize, k: *const c_void, v: *const c_void) -> Result<()> {
    let layer = check_layer(codec.kv(), layer)?;
    let cfg = &codec.kv().config;
    let dtype = codec.dtype();
    let bytes = packed_bytes(codec, n, cfg.n_kv_heads, "n_tokens")?;
    // SAFETY: the caller guarantees k and v hold n packed tokens (`bytes` bytes).
    let kb = unsafe { host_slice(k.cast::<u8>(), bytes, "k") }?;
    // SAFETY: as for kb.
    let vb = unsafe { host_slice(v.cast::<u8>(), bytes, "v") }?;
    for (bytes, arg) in [(kb, "k"), (vb, "v")] {
        let t = HeadTensor { ptr: bytes.as_ptr(), strides: Strides::packed(cfg.n_kv_heads, cfg.head_dim, dtype), dtype };
        // SAFETY: `bytes` holds n packed tokens.
        unsafe { check_finite_tensor(&t, n, cfg.n_kv_heads, cfg.head_dim, arg) }?;
    }
    // SAFETY: kb and vb hold n packed tokens of the codec's dtype.
    Ok(unsafe { st.append(codec.kv(), layer, seq as usize, n, kb.as_ptr(), vb.as_ptr(), dtype) }?)
}

/// Causal attention of the last `n_q` positions of `seq` (q: packed, host) over the sequence's tokens
/// in `layer`, written packed to `out`.
///
/// # Safety
/// `q` is NULL or holds n_q·n_heads·head_dim elements; `out` as many writable ones, used by no one else.
#[allow(clippy::too_many_arguments)]
pub unsafe fn attend_raw(codec: &Codec, st: &OwnedCache, layer: u32, seq: u32, q: *const c_void, n_q: usize, scale: f32, out: *mut c_void) -> Result<()> {
    let layer = check_layer(codec.kv(), layer)?;
    st.check_seq(seq as usize)?;
    if n_q == 0 {
        return Ok(());
    }
    if !scale.is_finite() {
        return Err(Error::invalid(format!("scale is {scale}: must be finite")));
    }
    let cfg = &codec.kv().config;
    let dtype = codec.dtype();
    let bytes = packed_bytes(codec, n_q, cfg.n_heads, "n_q")?;
    // SAFETY: the caller guarantees q holds n_q packed tokens (`bytes` bytes).
    let qb = unsafe { host_slice(q.cast::<u8>(), bytes, "q") }?;
    if out.is_null() {
        return Err(Error::null("out"));
    }
    let qt = HeadTensor { ptr: qb.as_ptr(), strides: Strides::packed(cfg.n_heads, cfg.head_dim, dtype), dtype };
    // SAFETY: qb holds n_q packed tokens.
    unsafe { check_finite_tensor(&qt, n_q, cfg.n_heads, cfg.head_dim, "q") }?;
    let query_pos = st.last_positions(layer, seq as usize, n_q)?;
    let job = st.attend_job(codec.kv(), layer, seq as usize, qt, n_q, scale, out.cast(), &query_pos);
    let cpu = codec.backend().cpu().ok_or_else(|| Error::unsupported("the owned cache runs on the CPU backend"))?;
    // SAFETY: the job reads the cache's own rows and q, and writes `out` (the caller's guarantee).
    unsafe { cpu.run_attend(&job, Exec::Queue(std::ptr::null_mut())) }?;
    let out_strides = Strides::packed(cfg.n_heads, cfg.head_dim, dtype);
    // SAFETY: `out` holds n_q packed tokens, just written.
    unsafe { crate::codec::limits::check_finite_output(out.cast(), out_strides, dtype, n_q, cfg.n_heads, cfg.head_dim) }
}

/// An owned KV cache over a [`Codec`] (CPU backend): sequences, residual window, sinks, sequence
/// operations and save/load, for Rust callers (no `unsafe`). Not `Sync`-shared for mutation: every
/// mutating method takes `&mut self`.
pub struct Cache<'c> {
    codec: &'c Codec,
    state: OwnedCache,
}

impl<'c> Cache<'c> {
    pub fn new(codec: &'c Codec, params: CacheParams) -> Result<Self> {
        Ok(Self { codec, state: new_state(codec, params)? })
    }

    /// Check a packed host slice of `n` tokens of `heads` heads.
    fn packed<T: Element>(&self, data: &[T], n: usize, heads: usize, arg: &str) -> Result<()> {
        if T::DTYPE != self.codec.dtype() {
            return Err(Error::invalid(format!("{arg} is {}: the codec's dtype is {}", T::DTYPE.name(), self.codec.dtype().name())));
        }
        let need = packed_bytes(self.codec, n, heads, arg)? / self.codec.dtype().size();
        if data.len() != need {
            return Err(Error::invalid(format!("{arg} holds {} elements: {n} tokens need {need}", data.len())));
        }
        Ok(())
    }

    /// Append `n` tokens (k, v: packed [n][n_kv_heads][head_dim]) to `seq` of `layer`.
    pub fn append<T: Element>(&mut self, layer: u32, seq: u32, n: usize, k: &[T], v: &[T]) -> Result<()> {
        let heads = self.codec.kv().config.n_kv_heads;
        self.packed(k, n, heads, "k")?;
        self.packed(v, n, heads, "v")?;
        // SAFETY: k and v hold exactly n packed tokens (checked above).
        unsafe { append_raw(self.codec, &mut self.state, layer, seq, n, k.as_ptr().cast(), v.as_ptr().cast()) }
    }

    /// Causal attention of the last `n_q` positions of `seq` (q, out: packed [n_q][n_heads][head_dim]).
    pub fn attend<T: Element>(&self, layer: u32, seq: u32, q: &[T], n_q: usize, scale: f32, out: &mut [T]) -> Result<()> {
        let heads = self.codec.kv().config.n_heads;
        self.packed(q, n_q, heads, "q")?;
        self.packed(out, n_q, heads, "out")?;
        // SAFETY: q and out hold exactly n_q packed tokens; out is borrowed mutably.
        unsafe { attend_raw(self.codec, &self.state, layer, seq, q.as_ptr().cast(), n_q, scale, out.as_mut_ptr().cast()) }
    }

    /// Remove positions [p0, p1) of `seq` (negative: every sequence / from 0 / to the end).
    pub fn seq_rm(&mut self, seq: i32, p0: i64, p1: i64) -> Result<()> {
        Ok(self.state.seq_rm(self.codec.kv(), seq, p0, p1)?)
    }

    /// Make `dst`'s positions [p0, p1) a copy of `src`'s.
    pub fn seq_cp(&mut self, src: u32, dst: u32, p0: i64, p1: i64) -> Result<()> {
        Ok(self.state.seq_cp(self.codec.kv(), src as usize, dst as usize, p0, p1)?)
    }

    /// Tokens `seq` holds (in layer 0).
    pub fn seq_len(&self, seq: u32) -> Result<usize> {
        Ok(self.state.seq_len(seq as usize)?)
    }

    pub fn memory(&self) -> MemoryUsage {
        self.state.memory(self.codec.kv())
    }

    /// The saved form (versioned, fingerprinted, CRC-32).
    pub fn save(&self) -> Vec<u8> {
        persist::save(&self.state, self.codec.kv())
    }

    /// Replace the contents by a saved cache of the same parameters; on error nothing changes.
    pub fn load(&mut self, bytes: &[u8]) -> Result<()> {
        self.state = persist::load(bytes, self.codec.kv(), &self.state.params)?;
        Ok(())
    }
}
