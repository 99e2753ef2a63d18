//! The safe Rust API of [`Codec`]: appends and attends over host slices, every size checked before
//! any pointer is formed, so Rust callers need no `unsafe`.

use std::ffi::c_void;

use super::request::{AppendArgs, AttendArgs, AttendExtras, Exec, Stores, check_layer};
use super::{Codec, Dtype, Strides};
use crate::backend::Op;
use crate::error::{Error, Result};

/// An element type of q, k, v, out and masks.
pub trait Element: Copy + 'static {
    const DTYPE: Dtype;
}

impl Element for f32 {
    const DTYPE: Dtype = Dtype::F32;
}
impl Element for half::f16 {
    const DTYPE: Dtype = Dtype::F16;
}
impl Element for half::bf16 {
    const DTYPE: Dtype = Dtype::Bf16;
}

/// A host tensor [tokens][heads][head_dim] of `T`: packed (`strides` None) or with byte strides.
#[derive(Clone, Copy, Debug)]
pub struct HostTensor<'a, T> {
    pub data: &'a [T],
    pub strides: Option<Strides>,
}

impl<'a, T: Element> HostTensor<'a, T> {
    /// A packed tensor.
    pub fn packed(data: &'a [T]) -> Self {
        Self { data, strides: None }
    }
}

/// A host additive mask: `n_q` rows of `row_stride` elements (F32, F16 or BF16); −inf hides a cell.
#[derive(Clone, Copy, Debug)]
pub struct HostMask<'a> {
    ptr: *const u8,
    len: usize,
    dtype: Dtype,
    row_stride: usize,
    _data: std::marker::PhantomData<&'a [u8]>,
}

impl<'a> HostMask<'a> {
    pub fn new<M: Element>(data: &'a [M], row_stride: usize) -> Self {
        Self { ptr: data.as_ptr().cast(), len: data.len(), dtype: M::DTYPE, row_stride, _data: std::marker::PhantomData }
    }
}

/// Check that `t` holds `n` tokens of `heads` heads of the codec's shape; its address and strides.
fn tensor<T: Element>(c: &Codec, t: &HostTensor<T>, n: usize, heads: usize, arg: &str) -> Result<(*const c_void, Option<Strides>)> {
    if T::DTYPE != c.dtype() {
        return Err(Error::invalid(format!("{arg} is {}: the codec's dtype is {}", T::DTYPE.name(), c.dtype().name())));
    }
    let d = c.kv().config.head_dim;
    let size = T::DTYPE.size();
    let st = t.strides.unwrap_or(Strides::packed(heads, d, T::DTYPE));
    let need = if n == 0 {
        Some(0)
    } else {
        (n - 1)
            .checked_mul(st.token)
            .and_then(|a| (heads - 1).checked_mul(st.head).and_then(|b| a.checked_add(b)))
            .and_then(|a| a.checked_add(d * size))
    };
    match need {
        Some(b) if b <= t.data.len() * size => Ok((t.data.as_ptr().cast(), t.strides)),
        _ => Err(Error::invalid(format!(
            "{arg} holds {} elements: too few for {n} tokens of {heads} heads with strides ({}, {})",
            t.data.len(),
            st.token,
            st.head
        ))),
    }
}

/// The number of rows of `row_bytes` that K and V stores hold (they must agree).
fn store_cells(k_len: usize, v_len: usize, (kr, vr): (usize, usize)) -> Result<usize> {
    if k_len % kr != 0 {
        return Err(Error::invalid(format!("k_store is {k_len} bytes: not a whole number of {kr}-byte K rows")));
    }
    let n = k_len / kr;
    if v_len != n * vr {
        return Err(Error::invalid(format!("v_store is {v_len} bytes: {n} V rows of {vr} bytes are {}", n * vr)));
    }
    Ok(n)
}

impl Codec {
    /// The K and V row bytes of `layer` (its own widths with per-layer bits), after checking the layer.
    fn checked_layer_rows(&self, layer: usize) -> Result<(usize, usize)> {
        let l = check_layer(self.kv(), u32::try_from(layer).unwrap_or(u32::MAX))?;
        Ok(self.layer_row_bytes(l))
    }

    /// Compress the `slots.len()` tokens of `k` and `v` (each [n][n_kv_heads][head_dim]) into rows of
    /// `layer` at cells `slots[i]` of `k_store`/`v_store` (n_cells × row_bytes each). Slots distinct and
    /// < n_cells; K and V finite; everything is checked before any row is written. With centering, the
    /// first append to a layer fixes its means. CPU backend (host slices) only.
    pub fn append<T: Element>(
        &self,
        layer: usize,
        k_store: &mut [u8],
        v_store: &mut [u8],
        slots: &[i64],
        k: HostTensor<T>,
        v: HostTensor<T>,
    ) -> Result<()> {
        self.backend().require(Op::HostSlices)?;
        let cfg = &self.kv().config;
        let n = slots.len();
        let n_cells = store_cells(k_store.len(), v_store.len(), self.checked_layer_rows(layer)?)?;
        let (kp, ks) = tensor(self, &k, n, cfg.n_kv_heads, "k")?;
        let (vp, vs) = tensor(self, &v, n, cfg.n_kv_heads, "v")?;
        let args = AppendArgs {
            layer: u32::try_from(layer).unwrap_or(u32::MAX),
            k_store: k_store.as_mut_ptr().cast(),
            v_store: v_store.as_mut_ptr().cast(),
            n_cells,
            slots: slots.as_ptr(),
            n_tokens: n,
            k: kp,
            k_strides: ks,
            v: vp,
            v_strides: vs,
        };
        // SAFETY: every pointer comes from a slice whose length was checked against the shape above;
        // the stores are borrowed mutably, so no one else uses them.
        unsafe { self.append_raw(&args, Exec::Queue(std::ptr::null_mut())) }
    }

    /// Attention of the `n_q` query tokens of `q` ([n_q][n_heads][head_dim]) over all cells of
    /// `layer`'s stores, written packed to `out` (n_q·n_heads·head_dim elements). `mask` is optional
    /// (None = all visible); `scale` multiplies q·k. Cells must hold rows appended with this codec.
    /// CPU backend (host slices) only.
    pub fn attend<T: Element>(
        &self,
        layer: usize,
        q: HostTensor<T>,
        n_q: usize,
        k_store: &[u8],
        v_store: &[u8],
        mask: Option<HostMask>,
        scale: f32,
        out: &mut [T],
    ) -> Result<()> {
        self.backend().require(Op::HostSlices)?;
        let cfg = &self.kv().config;
        let n_cells = store_cells(k_store.len(), v_store.len(), self.checked_layer_rows(layer)?)?;
        let (qp, qs) = tensor(self, &q, n_q, cfg.n_heads, "q")?;
        let need = n_q * cfg.n_heads * cfg.head_dim;
        if out.len() != need {
            return Err(Error::invalid(format!("out holds {} elements: {n_q} query tokens need {need}", out.len())));
        }
        let (mask_ptr, mask_dtype, row_stride) = match mask {
            None => (std::ptr::null(), 0, 0),
            Some(m) => {
                let rows_ok = n_q == 0
                    || (n_q - 1).checked_mul(m.row_stride).and_then(|a| a.checked_add(n_cells)).is_some_and(|e| e <= m.len);
                if m.row_stride < n_cells || !rows_ok {
                    return Err(Error::invalid(format!(
                        "mask holds {} elements: too few for {n_q} rows of stride {} over {n_cells} cells",
                        m.len, m.row_stride
                    )));
                }
                (m.ptr.cast::<c_void>(), m.dtype.code(), m.row_stride)
            }
        };
        let args = AttendArgs {
            layer: u32::try_from(layer).unwrap_or(u32::MAX),
            n_seqs: 1,
            q: qp,
            n_q,
            q_strides: qs,
            q_seq_stride: 0,
            stores: Stores::Single { k: k_store.as_ptr().cast(), v: v_store.as_ptr().cast() },
            seq_cells: std::ptr::null(),
            n_cells,
            mask: mask_ptr,
            mask_dtype,
            mask_row_stride: row_stride,
            mask_seq_stride: 0,
            scale,
            out: out.as_mut_ptr().cast(),
            out_strides: None,
            out_seq_stride: 0,
            extras: AttendExtras::NONE,
        };
        // SAFETY: every pointer comes from a slice whose length was checked against the shape above;
        // `out` is borrowed mutably and written packed (no two items overlap).
        unsafe { self.attend_raw(&args, Exec::Queue(std::ptr::null_mut())) }
    }
}
