//! C API of the CUDA backend: context creation, the slot-mode dispatch of tq_append_kv/tq_attend
//! to device kernels, and tq_attend_batch (several sequences in one launch). In a build without the
//! `cuda` feature the same functions exist and report TQ_STATUS_BACKEND_UNAVAILABLE.

use std::ffi::c_void;

use super::context::{tq_context, tq_context_params, tq_strides};
use super::error::{Error, Result};
use super::tq_status;
use crate::codec::{Dtype, KvCodec};

#[cfg(feature = "cuda")]
mod imp {
    use super::*;
    use crate::backend::cuda::{
        CudaBackend, CudaError, CudaErrorKind, DeviceAppend, DeviceAttend, DeviceMask, Stores,
    };
    use crate::ffi::context::{check_layer, dtype_from_u32, strides_or_packed};

    /// A context's CUDA backend.
    pub struct Backend(pub CudaBackend);

    pub(crate) fn status(e: CudaError) -> Error {
        let st = match e.kind {
            CudaErrorKind::Unavailable => tq_status::TQ_STATUS_BACKEND_UNAVAILABLE,
            CudaErrorKind::Unsupported => tq_status::TQ_STATUS_UNSUPPORTED,
            CudaErrorKind::Invalid => tq_status::TQ_STATUS_INVALID_ARGUMENT,
            CudaErrorKind::Backend => tq_status::TQ_STATUS_BACKEND_ERROR,
        };
        Error::new(st, e.message)
    }

    impl Backend {
        pub fn new(codec: &KvCodec, dtype: Dtype, p: &tq_context_params) -> Result<Self> {
            CudaBackend::new(codec, dtype, p.device, p.max_batch as usize).map(Backend).map_err(status)
        }

        #[allow(clippy::too_many_arguments)]
        pub unsafe fn append(
            &self,
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
            stream: *mut c_void,
        ) -> Result<()> {
            let layer = check_layer(c, layer)?;
            for (p, name) in [(k_store as *const c_void, "k_store"), (v_store as *const c_void, "v_store"), (slots.cast(), "slots"), (k, "k"), (v, "v")] {
                if p.is_null() {
                    return Err(Error::null(name));
                }
            }
            let cfg = &c.codec.config;
            let a = DeviceAppend {
                layer,
                k_store: k_store as u64,
                v_store: v_store as u64,
                n_cells,
                slots: slots as u64,
                n_tokens,
                k: k as u64,
                k_strides: strides_or_packed(k_strides, cfg.n_kv_heads, cfg.head_dim, c.dtype, "k_strides")?,
                v: v as u64,
                v_strides: strides_or_packed(v_strides, cfg.n_kv_heads, cfg.head_dim, c.dtype, "v_strides")?,
            };
            self.0.append(&a, stream as _).map_err(status)
        }

        #[allow(clippy::too_many_arguments)]
        pub unsafe fn attend(
            &self,
            c: &tq_context,
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
        ) -> Result<()> {
            let a = unsafe {
                attend_args(c, layer, 1, q, n_q, q_strides, 0, Stores::Single { k: k_store as u64, v: v_store as u64 },
                    k_store.is_null() || v_store.is_null(), 0, n_cells, mask, mask_dtype, mask_row_stride, 0, scale, out, out_strides, 0)
            }?;
            self.0.attend(&a, stream as _).map_err(status)
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) unsafe fn attend_args(
        c: &tq_context,
        layer: u32,
        n_seqs: usize,
        q: *const c_void,
        n_q: usize,
        q_strides: *const tq_strides,
        q_seq_stride: usize,
        stores: Stores,
        stores_null: bool,
        seq_cells: u64,
        max_cells: usize,
        mask: *const c_void,
        mask_dtype: u32,
        mask_row_stride: usize,
        mask_seq_stride: usize,
        scale: f32,
        out: *mut c_void,
        out_strides: *const tq_strides,
        out_seq_stride: usize,
    ) -> Result<DeviceAttend> {
        let layer = check_layer(c, layer)?;
        let cfg = &c.codec.config;
        if q.is_null() {
            return Err(Error::null("q"));
        }
        if out.is_null() {
            return Err(Error::null("out"));
        }
        if max_cells > 0 && stores_null {
            return Err(Error::null("k_store/v_store"));
        }
        if !scale.is_finite() {
            return Err(Error::invalid(format!("scale is {scale}: must be finite")));
        }
        let mask = if mask.is_null() {
            None
        } else {
            let dtype = dtype_from_u32(mask_dtype, "mask_dtype")?;
            if mask_row_stride < max_cells {
                return Err(Error::invalid(format!("mask_row_stride is {mask_row_stride}: must be ≥ n_cells ({max_cells})")));
            }
            Some(DeviceMask { ptr: mask as u64, dtype, row_stride: mask_row_stride, seq_stride: mask_seq_stride })
        };
        Ok(DeviceAttend {
            layer,
            n_seqs,
            n_q,
            q: q as u64,
            q_strides: strides_or_packed(q_strides, cfg.n_heads, cfg.head_dim, c.dtype, "q_strides")?,
            q_seq_stride,
            stores,
            seq_cells,
            max_cells,
            mask,
            causal: None,
            full: None,
            query_pos: 0,
            scale,
            out: out as u64,
            out_strides: strides_or_packed(out_strides, cfg.n_heads, cfg.head_dim, c.dtype, "out_strides")?,
            out_seq_stride,
        })
    }
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use super::*;

    /// Never constructed: this build has no CUDA backend.
    pub enum Backend {}

    impl Backend {
        pub fn new(_codec: &KvCodec, _dtype: Dtype, _p: &tq_context_params) -> Result<Self> {
            Err(Error::new(
                tq_status::TQ_STATUS_BACKEND_UNAVAILABLE,
                "params->backend is TQ_BACKEND_CUDA, but this build of libturboquant has no CUDA backend (build with --features cuda)",
            ))
        }

        #[allow(clippy::too_many_arguments)]
        pub unsafe fn append(
            &self, _c: &tq_context, _layer: u32, _k_store: *mut c_void, _v_store: *mut c_void, _n_cells: usize,
            _slots: *const i64, _n_tokens: usize, _k: *const c_void, _k_strides: *const tq_strides, _v: *const c_void,
            _v_strides: *const tq_strides, _stream: *mut c_void,
        ) -> Result<()> {
            match *self {}
        }

        #[allow(clippy::too_many_arguments)]
        pub unsafe fn attend(
            &self, _c: &tq_context, _layer: u32, _q: *const c_void, _n_q: usize, _q_strides: *const tq_strides,
            _k_store: *const c_void, _v_store: *const c_void, _n_cells: usize, _mask: *const c_void, _mask_dtype: u32,
            _mask_row_stride: usize, _scale: f32, _out: *mut c_void, _out_strides: *const tq_strides, _stream: *mut c_void,
        ) -> Result<()> {
            match *self {}
        }
    }
}

pub use imp::Backend;

/// The `_part` entry points run on engine threads over host memory: CPU contexts only.
pub(crate) fn reject_part(c: &tq_context, name: &str) -> Result<()> {
    if c.cuda.is_some() {
        return Err(Error::new(
            tq_status::TQ_STATUS_UNSUPPORTED,
            format!("{name} is for CPU contexts; ctx uses TQ_BACKEND_CUDA: call the non-_part function with a stream"),
        ));
    }
    Ok(())
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
    super::context::context_call(ctx, |c| {
        let Some(cuda) = &c.cuda else {
            return Err(Error::new(
                tq_status::TQ_STATUS_UNSUPPORTED,
                "tq_attend_batch is for CUDA contexts; on the CPU call tq_attend per sequence",
            ));
        };
        if n_seqs == 0 || n_q == 0 {
            return Ok(());
        }
        if n_cells.is_null() {
            return Err(Error::null("n_cells"));
        }
        batch(cuda, c, layer, n_seqs, q, n_q, q_strides, q_seq_stride, k_stores, v_stores, n_cells, max_cells, mask,
            mask_dtype, mask_row_stride, mask_seq_stride, scale, out, out_strides, out_seq_stride, stream)
    })
}

#[cfg(feature = "cuda")]
#[allow(clippy::too_many_arguments)]
fn batch(
    cuda: &Backend, c: &tq_context, layer: u32, n_seqs: usize, q: *const c_void, n_q: usize, q_strides: *const tq_strides,
    q_seq_stride: usize, k_stores: *const *const c_void, v_stores: *const *const c_void, n_cells: *const i64,
    max_cells: usize, mask: *const c_void, mask_dtype: u32, mask_row_stride: usize, mask_seq_stride: usize, scale: f32,
    out: *mut c_void, out_strides: *const tq_strides, out_seq_stride: usize, stream: *mut c_void,
) -> Result<()> {
    use crate::backend::cuda::Stores;
    let stores = Stores::Batch { k: k_stores as u64, v: v_stores as u64 };
    let a = unsafe {
        imp::attend_args(c, layer, n_seqs, q, n_q, q_strides, q_seq_stride, stores, k_stores.is_null() || v_stores.is_null(),
            n_cells as u64, max_cells, mask, mask_dtype, mask_row_stride, mask_seq_stride, scale, out, out_strides, out_seq_stride)
    }?;
    cuda.0.attend(&a, stream as _).map_err(imp::status)
}

#[cfg(not(feature = "cuda"))]
#[allow(clippy::too_many_arguments)]
fn batch(
    cuda: &Backend, _c: &tq_context, _layer: u32, _n_seqs: usize, _q: *const c_void, _n_q: usize, _q_strides: *const tq_strides,
    _q_seq_stride: usize, _k_stores: *const *const c_void, _v_stores: *const *const c_void, _n_cells: *const i64,
    _max_cells: usize, _mask: *const c_void, _mask_dtype: u32, _mask_row_stride: usize, _mask_seq_stride: usize, _scale: f32,
    _out: *mut c_void, _out_strides: *const tq_strides, _out_seq_stride: usize, _stream: *mut c_void,
) -> Result<()> {
    match *cuda {}
}
