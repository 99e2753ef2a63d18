//! C API of the standalone vector quantizer (`tq_quantizer`): TurboQuant MSE and PROD over arrays of
//! vectors in host memory.

use super::error::{self, Error, Result, boundary, borrow, check_finite, checked_len, slice, slice_mut, write_out};
use super::{TQ_ABI_VERSION, tq_quantizer_kind, tq_rotation, tq_status};
use crate::codec::limits::check_disjoint;
use crate::math::quantizer::{Quantizer, QuantizerConfig, QuantizerKind};
use crate::math::rotation::RotationKind;
use crate::math::scale;
use crate::parallel;

/// Parameters of tq_quantizer_new(). Obtain with tq_quantizer_default_params(), then change fields.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct tq_quantizer_params {
    /// sizeof(tq_quantizer_params); set by tq_quantizer_default_params().
    pub struct_size: usize,
    /// TQ_ABI_VERSION; set by tq_quantizer_default_params().
    pub abi_version: u32,
    /// Vector dimension, 16..=1024 (HADAMARD: a power of two). Default 128.
    pub dim: u32,
    /// Bits per coordinate, 1..=8. Default 4.
    pub bits: u32,
    /// A tq_quantizer_kind value. Default TQ_QUANTIZER_MSE.
    pub kind: u32,
    /// A tq_rotation value. Default TQ_ROTATION_AUTO.
    pub rotation: u32,
    /// Threads used by tq_quantize/tq_dequantize/tq_inner_product; 0 = all cores. Default 0.
    pub n_threads: u32,
    /// Seed of the rotation (and of PROD's projection). Default 0.
    pub seed: u64,
}

/// A vector quantizer. Opaque; create with tq_quantizer_new(), free with tq_quantizer_free().
pub struct tq_quantizer {
    inner: Quantizer,
    threads: usize,
}

/// Default parameters: dim 128, 4 bits, MSE, AUTO rotation, all cores, seed 0. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_quantizer_default_params() -> tq_quantizer_params {
    tq_quantizer_params {
        struct_size: std::mem::size_of::<tq_quantizer_params>(),
        abi_version: TQ_ABI_VERSION,
        dim: 128,
        bits: 4,
        kind: tq_quantizer_kind::TQ_QUANTIZER_MSE as u32,
        rotation: tq_rotation::TQ_ROTATION_AUTO as u32,
        n_threads: 0,
        seed: 0,
    }
}

/// sizeof(tq_quantizer_params) as this library was built (for bindings that mirror the struct).
#[unsafe(no_mangle)]
pub extern "C" fn tq_quantizer_params_size() -> usize {
    std::mem::size_of::<tq_quantizer_params>()
}

pub(crate) fn rotation_from_u32(value: u32, dim: usize, arg: &str) -> Result<RotationKind> {
    match value {
        v if v == tq_rotation::TQ_ROTATION_AUTO as u32 => Ok(RotationKind::auto(dim)),
        v if v == tq_rotation::TQ_ROTATION_DENSE as u32 => Ok(RotationKind::Dense),
        v if v == tq_rotation::TQ_ROTATION_HADAMARD as u32 => {
            if dim.is_power_of_two() {
                Ok(RotationKind::Hadamard)
            } else {
                Err(Error::new(
                    crate::error::ErrorKind::Unsupported,
                    format!("{arg}: dim {dim} is not supported by HADAMARD rotation: need a power of two; use DENSE or AUTO"),
                ))
            }
        }
        other => Err(Error::invalid(format!(
            "{arg} is {other}: not a tq_rotation (AUTO=0, DENSE=1, HADAMARD=2)"
        ))),
    }
}

fn config_from_params(p: &tq_quantizer_params) -> Result<QuantizerConfig> {
    let dim = p.dim as usize;
    if !(16..=1024).contains(&dim) {
        return Err(Error::invalid(format!("params->dim is {dim}: must be in 16..=1024")));
    }
    if !(1..=8).contains(&p.bits) {
        return Err(Error::invalid(format!("params->bits is {}: must be in 1..=8", p.bits)));
    }
    let kind = match p.kind {
        k if k == tq_quantizer_kind::TQ_QUANTIZER_MSE as u32 => QuantizerKind::Mse,
        k if k == tq_quantizer_kind::TQ_QUANTIZER_PROD as u32 => QuantizerKind::Prod,
        other => {
            return Err(Error::invalid(format!(
                "params->kind is {other}: not a tq_quantizer_kind (MSE=0, PROD=1)"
            )));
        }
    };
    let rotation = rotation_from_u32(p.rotation, dim, "params->rotation")?;
    Ok(QuantizerConfig { dim, bits: p.bits, rotation, kind, seed: p.seed })
}

/// Create a quantizer. On success `*out` receives a new handle the caller owns (free it with
/// tq_quantizer_free()); on failure `*out` is left unchanged. Solving the Lloyd–Max codebook takes
/// milliseconds (up to seconds for 7–8 bits); codebooks are cached per process. Thread-safe.
///
/// # Safety
/// `params` points to a tq_quantizer_params (or is NULL); `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantizer_new(params: *const tq_quantizer_params, out: *mut *mut tq_quantizer) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `params` is NULL or a tq_quantizer_params.
        let p = unsafe { error::read_params(params, "params", |p: &tq_quantizer_params| p.abi_version) }?;
        if out.is_null() {
            return Err(Error::null("out"));
        }
        let config = config_from_params(&p)?;
        let inner = Quantizer::new(config).map_err(|m| Error::new(crate::error::ErrorKind::Unsupported, m))?;
        let handle = Box::new(tq_quantizer { inner, threads: parallel::resolve_threads(p.n_threads) });
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { write_out(out, Box::into_raw(handle), "out") }
    })
}

/// Free a quantizer. NULL is a no-op. Not thread-safe with other calls on the same handle.
///
/// # Safety
/// `q` is NULL or a handle from tq_quantizer_new() not yet freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantizer_free(q: *mut tq_quantizer) {
    error::boundary_value((), || {
        if !q.is_null() {
            // SAFETY: the caller passes a live handle from tq_quantizer_new, not used after this call.
            drop(unsafe { Box::from_raw(q) });
        }
    })
}

/// Bytes of packed codes per vector (`codes` arrays hold n × this many bytes): ⌈dim·bits/8⌉ for MSE,
/// ⌈dim·(bits−1)/8⌉ + ⌈dim/8⌉ for PROD. Thread-safe.
///
/// # Safety
/// `q` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantizer_code_bytes(q: *const tq_quantizer, out: *mut usize) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { write_out(out, q.inner.code_bytes(), "out") }
    })
}

/// Scales per vector (`scales` arrays hold n × this many bf16 values): 1 for MSE (‖x‖), 2 for PROD
/// (‖x‖, ‖residual‖). Thread-safe.
///
/// # Safety
/// `q` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantizer_scale_count(q: *const tq_quantizer, out: *mut usize) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { write_out(out, q.inner.scale_count(), "out") }
    })
}

/// The exact expected normalised MSE E‖x−x̂‖²/‖x‖² of the quantizer's MSE stage, from its Lloyd–Max
/// codebook (for PROD this is the (bits−1)-bit stage; 1.0 at 1 bit). Thread-safe.
///
/// # Safety
/// `q` is NULL or a live handle; `out` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantizer_expected_mse(q: *const tq_quantizer, out: *mut f64) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        // SAFETY: the caller guarantees `out` is NULL or writable.
        unsafe { write_out(out, q.inner.mse_stage_nmse(), "out") }
    })
}

/// Convert bf16 scale values (as stored in `scales` arrays) to float. Thread-safe.
///
/// # Safety
/// `bf16_in` holds n values and `out` has room for n floats (either may be NULL when n is 0).
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_bf16_to_float(bf16_in: *const u16, n: usize, out: *mut f32) -> tq_status {
    boundary(|| {
        check_disjoint(bf16_in.cast(), n.saturating_mul(2), "bf16_in", out.cast(), n.saturating_mul(4), "out")?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let input = unsafe { slice(bf16_in, n, "bf16_in") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let output = unsafe { slice_mut(out, n, "out") }?;
        for (o, &b) in output.iter_mut().zip(input) {
            *o = scale::decode(b);
        }
        Ok(())
    })
}

/// Quantize `n` vectors of `dim` floats (row-major `x`, n × dim) into `codes_out`
/// (n × tq_quantizer_code_bytes bytes) and `scales_out` (n × tq_quantizer_scale_count bf16 values,
/// stored as uint16_t). Every element must be finite: NaN or ±inf fails with TQ_STATUS_NON_FINITE
/// (naming the vector and element) before anything is written. n = 0 is a no-op (pointers may be
/// NULL). Safe to call concurrently on one quantizer from several threads (with distinct outputs).
///
/// # Safety
/// Buffers as described. Outputs that overlap inputs (or each other) are refused with
/// TQ_STATUS_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_quantize(
    q: *const tq_quantizer,
    x: *const f32,
    n: usize,
    codes_out: *mut u8,
    scales_out: *mut u16,
) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        let quant = &q.inner;
        let (d, cb, sc) = (quant.dim(), quant.code_bytes(), quant.scale_count());
        let (xn, cn, sn) = (checked_len(n, d, "x")?, checked_len(n, cb, "codes_out")?, checked_len(n, sc, "scales_out")?);
        check_disjoint(x.cast(), xn.saturating_mul(4), "x", codes_out, cn, "codes_out")?;
        check_disjoint(x.cast(), xn.saturating_mul(4), "x", scales_out.cast(), sn.saturating_mul(2), "scales_out")?;
        check_disjoint(codes_out, cn, "codes_out", scales_out.cast(), sn.saturating_mul(2), "scales_out")?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let x = unsafe { slice(x, xn, "x") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let codes = unsafe { slice_mut(codes_out, cn, "codes_out") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let scales = unsafe { slice_mut(scales_out, sn, "scales_out") }?;
        check_finite(x, d, "x")?;
        let codes_addr = SendPtr(codes.as_mut_ptr());
        let scales_addr = SendPtr(scales.as_mut_ptr());
        parallel::for_each_range(n, q.threads, 256, |_, range| {
            let mut scratch = quant.scratch();
            // SAFETY: ranges are disjoint, so each thread writes its own rows.
            let codes = unsafe { std::slice::from_raw_parts_mut(codes_addr.get().add(range.start * cb), range.len() * cb) };
            // SAFETY: each worker's range of rows is disjoint and inside the checked output array.
            let scales = unsafe { std::slice::from_raw_parts_mut(scales_addr.get().add(range.start * sc), range.len() * sc) };
            quant.quantize_batch(&x[range.start * d..range.end * d], codes, scales, &mut scratch);
        });
        Ok(())
    })
}

fn check_scales(scales: &[u16], arg: &str) -> Result<()> {
    match scales.iter().position(|&s| !scale::decode(s).is_finite()) {
        None => Ok(()),
        Some(i) => Err(Error::new(
            crate::error::ErrorKind::NonFinite,
            format!("{arg}[{i}] is not a finite bf16 value (0x{:04x})", scales[i]),
        )),
    }
}

/// Reconstruct `n` vectors into `x_out` (n × dim floats) from `codes` and `scales` as written by
/// tq_quantize(). A non-finite scale fails with TQ_STATUS_NON_FINITE before anything is written.
/// n = 0 is a no-op. Safe to call concurrently on one quantizer (with distinct outputs).
///
/// # Safety
/// Buffers as described. An output that overlaps the inputs is refused with TQ_STATUS_INVALID_ARGUMENT.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_dequantize(
    q: *const tq_quantizer,
    codes: *const u8,
    scales: *const u16,
    n: usize,
    x_out: *mut f32,
) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        let quant = &q.inner;
        let (d, cb, sc) = (quant.dim(), quant.code_bytes(), quant.scale_count());
        let (cn, sn, xn) = (checked_len(n, cb, "codes")?, checked_len(n, sc, "scales")?, checked_len(n, d, "x_out")?);
        check_disjoint(x_out.cast(), xn.saturating_mul(4), "x_out", codes, cn, "codes")?;
        check_disjoint(x_out.cast(), xn.saturating_mul(4), "x_out", scales.cast(), sn.saturating_mul(2), "scales")?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let codes = unsafe { slice(codes, cn, "codes") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let scales = unsafe { slice(scales, sn, "scales") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let out = unsafe { slice_mut(x_out, xn, "x_out") }?;
        check_scales(scales, "scales")?;
        let out_addr = SendPtr(out.as_mut_ptr());
        parallel::for_each_range(n, q.threads, 256, |_, range| {
            let mut scratch = quant.scratch();
            // SAFETY: ranges are disjoint.
            let out = unsafe { std::slice::from_raw_parts_mut(out_addr.get().add(range.start * d), range.len() * d) };
            for (k, i) in range.enumerate() {
                quant.dequantize_one(&codes[i * cb..(i + 1) * cb], &scales[i * sc..(i + 1) * sc], &mut out[k * d..(k + 1) * d], &mut scratch);
            }
        });
        Ok(())
    })
}

/// Estimate ⟨y, x̂_i⟩ for one query `y` (dim floats) against `n` quantized vectors, into `out`
/// (n floats). For PROD this is TurboQuant's unbiased estimator (MSE part plus the QJL correction);
/// for MSE it is ⟨y, x̂_i⟩ of the reconstruction. y must be non-NULL and finite, also when n = 0
/// (which then writes nothing).
/// Safe to call concurrently on one quantizer (with distinct outputs).
///
/// # Safety
/// Buffers as described.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn tq_inner_product(
    q: *const tq_quantizer,
    y: *const f32,
    codes: *const u8,
    scales: *const u16,
    n: usize,
    out: *mut f32,
) -> tq_status {
    boundary(|| {
        // SAFETY: the caller guarantees `q` is NULL or a live handle.
        let q = unsafe { borrow(q, "q") }?;
        let quant = &q.inner;
        let (d, cb, sc) = (quant.dim(), quant.code_bytes(), quant.scale_count());
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let y = unsafe { slice(y, d, "y") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let codes = unsafe { slice(codes, checked_len(n, cb, "codes")?, "codes") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let scales = unsafe { slice(scales, checked_len(n, sc, "scales")?, "scales") }?;
        // SAFETY: the caller guarantees the array holds the stated number of elements.
        let out = unsafe { slice_mut(out, n, "out") }?;
        check_finite(y, d, "y")?;
        check_scales(scales, "scales")?;
        let prepared = quant.prepare_query(y);
        let out_addr = SendPtr(out.as_mut_ptr());
        parallel::for_each_range(n, q.threads, 1024, |_, range| {
            let mut scratch = quant.scratch();
            // SAFETY: ranges are disjoint.
            let out = unsafe { std::slice::from_raw_parts_mut(out_addr.get().add(range.start), range.len()) };
            for (k, i) in range.enumerate() {
                out[k] = quant.inner_product(&prepared, &codes[i * cb..(i + 1) * cb], &scales[i * sc..(i + 1) * sc], &mut scratch);
            }
        });
        Ok(())
    })
}

/// A raw pointer that may cross to the scoped worker threads (each writes a disjoint range).
#[derive(Clone, Copy)]
pub(crate) struct SendPtr<T>(pub *mut T);
// SAFETY: SendPtr carries the address of the caller's output array; workers write disjoint ranges.
unsafe impl<T> Send for SendPtr<T> {}
// SAFETY: as for Send.
unsafe impl<T> Sync for SendPtr<T> {}
impl<T> SendPtr<T> {
    pub fn get(self) -> *mut T {
        self.0
    }
}
