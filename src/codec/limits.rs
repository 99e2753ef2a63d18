//! Size and range limits on caller arguments: checked arithmetic on products of caller sizes, "this
//! tensor's strides stay inside the address space", mask bounds, fallible allocation and the bounds
//! that keep documented-valid parameters from taking minutes or returning non-finite results.
//! Called from the existing validation (`request`, the owned cache, the context constructor).

use super::{Dtype, Strides};
use crate::math::rotation::RotationKind;
use crate::error::{Error, ErrorKind, Result};

/// Largest position a cache token may have (2^62): appends that would pass it and files holding a
/// larger one are refused, so positions never wrap.
pub const MAX_POSITION: i64 = 1 << 62;

/// Largest magnitude of a K, V or q element (2^64): larger finite values are refused like NaN, so
/// norms, centering and saved files stay far inside f32.
pub const MAX_INPUT_ABS: f32 = 18_446_744_073_709_551_616.0;

/// Largest bf16 row scale a file may hold (2^71 ≥ √1024 · 2 · 2^64: the norm of any centered head
/// vector of in-range elements).
pub const MAX_ROW_SCALE: f32 = 2_361_183_241_434_822_606_848.0;

/// Bound on n_layers · head_dim³ for DENSE rotation (2^32: 7–14 s of set-up measured on one core of a
/// shared 2020s x86-64 machine, 1.7–3.4 s per layer at head_dim 1024; e.g. 4096 layers at head_dim
/// 96, 256 at 256, 4 at 1024).
pub const DENSE_COST_LIMIT: u128 = 1 << 32;

/// Bytes from the first to one past the last element of an `n`-token, `heads`-head tensor with
/// `strides`, checked to fit in isize and, from `ptr`, not to wrap around the address space.
pub fn tensor_span(ptr: *const u8, s: Strides, n: usize, heads: usize, d: usize, dtype: Dtype, arg: &str) -> Result<usize> {
    if n == 0 || heads == 0 {
        return Ok(0);
    }
    let span = (|| {
        let last = (n - 1).checked_mul(s.token)?.checked_add((heads - 1).checked_mul(s.head)?)?;
        let span = last.checked_add(d.checked_mul(dtype.size())?)?;
        (span <= isize::MAX as usize && (ptr as usize).checked_add(span).is_some()).then_some(span)
    })();
    span.ok_or_else(|| {
        Error::invalid(format!(
            "{arg}: strides ({}, {}) over {n} tokens × {heads} heads do not fit in the address space",
            s.token, s.head
        ))
    })
}

/// `n_seqs` blocks of `inner` bytes, `seq_stride` bytes apart from `ptr`: checked as [`tensor_span`].
pub fn seq_span(ptr: *const u8, seq_stride: usize, n_seqs: usize, inner: usize, arg: &str) -> Result<usize> {
    if n_seqs == 0 || inner == 0 {
        return Ok(0);
    }
    (n_seqs - 1)
        .checked_mul(seq_stride)
        .and_then(|l| l.checked_add(inner))
        .filter(|&span| span <= isize::MAX as usize && (ptr as usize).checked_add(span).is_some())
        .ok_or_else(|| Error::invalid(format!("{arg} is {seq_stride}: {n_seqs} sequences do not fit in the address space")))
}

/// An output tensor's vectors must not overlap: calls write them from several threads (and blocks)
/// at once, so two vectors sharing bytes would race and one result would be lost. The dimensions
/// with more than one index — (sequences, `seq_stride`), (tokens, `s.token`), (heads, `s.head`) —
/// taken from the smallest stride up must each step past everything the smaller ones cover (a
/// d-element vector first). Spans are already checked ([`tensor_span`], [`seq_span`]), so the
/// arithmetic does not overflow.
pub fn check_disjoint_output(s: Strides, seq_stride: usize, n_seqs: usize, n: usize, heads: usize, d: usize, dtype: Dtype, arg: &str) -> Result<()> {
    let mut dims = [("sequence", seq_stride, n_seqs), ("token", s.token, n), ("head", s.head, heads)];
    dims.sort_by_key(|&(_, stride, _)| stride);
    let mut extent = d * dtype.size();
    for (name, stride, count) in dims {
        if count <= 1 {
            continue;
        }
        if stride < extent {
            return Err(Error::invalid(format!(
                "{arg}: the {name} stride of {stride} bytes is less than the {extent} bytes one {name} index covers, \
                 so output vectors would overlap (strides token {}, head {}, sequence {seq_stride})",
                s.token, s.head
            )));
        }
        extent += stride * (count - 1);
    }
    Ok(())
}

/// Two caller buffers of `a_bytes` and `b_bytes` bytes must not share a byte (an output written while
/// an input is read, or two outputs written by different threads): checked on the addresses, before
/// any slice of them is formed.
pub fn check_disjoint(a: *const u8, a_bytes: usize, a_name: &str, b: *const u8, b_bytes: usize, b_name: &str) -> Result<()> {
    let (a0, b0) = (a as usize, b as usize);
    if a_bytes > 0 && b_bytes > 0 && a0 < b0.saturating_add(b_bytes) && b0 < a0.saturating_add(a_bytes) {
        return Err(Error::invalid(format!("{a_name} and {b_name} overlap ({a_bytes} and {b_bytes} bytes): they must be distinct buffers")));
    }
    Ok(())
}

/// A store of `n_cells` rows of `row_bytes`: its size must fit in isize (cell offsets never wrap).
pub fn check_store(n_cells: usize, row_bytes: usize, arg: &str) -> Result<()> {
    match n_cells.checked_mul(row_bytes) {
        Some(b) if b <= isize::MAX as usize => Ok(()),
        _ => Err(Error::invalid(format!(
            "n_cells is {n_cells}: {arg} of {n_cells} rows × {row_bytes} bytes does not fit in the address space"
        ))),
    }
}

/// An append writes n_tokens distinct cells of 0..n_cells: more tokens than cells cannot be valid.
pub fn check_tokens_fit(n_tokens: usize, n_cells: usize) -> Result<()> {
    if n_tokens > n_cells {
        return Err(Error::invalid(format!("n_tokens is {n_tokens}: more than n_cells ({n_cells}) distinct slots")));
    }
    Ok(())
}

/// A mask of `n_seqs` × `n_q` rows (`row_stride` elements apart, sequences `seq_stride` apart) of
/// `n_cells` elements of `size` bytes: the last element's byte offset must fit in isize.
pub fn check_mask(n_seqs: usize, n_q: usize, n_cells: usize, row_stride: usize, seq_stride: usize, size: usize) -> Result<()> {
    if n_q == 0 || n_cells == 0 || n_seqs == 0 {
        return Ok(());
    }
    let end = (|| {
        let e = (n_seqs - 1).checked_mul(seq_stride)?.checked_add((n_q - 1).checked_mul(row_stride)?)?.checked_add(n_cells)?;
        e.checked_mul(size).filter(|&b| b <= isize::MAX as usize)
    })();
    end.map(|_| ()).ok_or_else(|| {
        Error::invalid(format!(
            "mask_row_stride {row_stride} / mask_seq_stride {seq_stride}: a mask of {n_seqs} × {n_q} rows of {n_cells} cells does not fit in the address space"
        ))
    })
}

/// The outcome of a fallible reservation (`try_reserve`): an allocation failure is
/// [`ErrorKind::OutOfMemory`] saying what could not be allocated.
pub fn reserved(r: std::result::Result<(), std::collections::TryReserveError>, what: impl FnOnce() -> String) -> Result<()> {
    r.map_err(|_| Error::new(ErrorKind::OutOfMemory, what()))
}

/// DENSE rotation set-up is O(dim³) per rotation: refuse configurations whose dense rotations cost
/// more than [`DENSE_COST_LIMIT`] in n_layers · head_dim³ units (a layer's K and V rotations at
/// head_dim count one unit together). Dense rotations are the V rotation and the K rotation under
/// DENSE, and with key outliers each part of the key head (outlier channels, the rest) whose width is
/// not a power of two, whatever the head's rotation (`outliers::part_rotation`).
pub fn check_dense_cost(n_layers: usize, head_dim: usize, rotation: RotationKind, key_outliers: usize) -> Result<()> {
    let cube = |d: usize| (d as u128).pow(3);
    let v = if rotation == RotationKind::Dense { cube(head_dim) } else { 0 };
    let k = if key_outliers > 0 {
        [key_outliers, head_dim - key_outliers]
            .into_iter()
            .filter(|&d| super::outliers::part_rotation(rotation, d) == RotationKind::Dense)
            .map(cube)
            .sum()
    } else if rotation == RotationKind::Dense {
        cube(head_dim)
    } else {
        0
    };
    let cost = n_layers as u128 * (k + v) / 2;
    if cost > DENSE_COST_LIMIT {
        let parts = if key_outliers > 0 {
            format!(" (key outliers {key_outliers}: key parts of {key_outliers} and {} channels)", head_dim - key_outliers)
        } else {
            String::new()
        };
        return Err(Error::unsupported(format!(
            "dense rotations for n_layers {n_layers} and head_dim {head_dim}{parts} cost {cost} in n_layers · head_dim³ units, \
             over 2^32 (building them would take minutes); use HADAMARD with power-of-two widths or fewer layers"
        )));
    }
    Ok(())
}

/// After a host attend: a non-finite output from finite inputs means the logits or sums overflowed
/// f32 (inputs or scale far too large). Refused rather than returned with status OK.
///
/// # Safety
/// `out` covers `n` tokens × `heads` heads of `d` elements of `dtype` with `strides`, in host memory.
pub unsafe fn check_finite_output(out: *const u8, strides: Strides, dtype: Dtype, n: usize, heads: usize, d: usize) -> Result<()> {
    // SAFETY: the caller guarantees `out` covers every (token, head) of 0..n × 0..heads.
    unsafe { check_finite_rows(out, strides, dtype, d, (0..n).flat_map(|tok| (0..heads).map(move |h| (tok, h)))) }
}

/// `check_finite_output` over the given (token, head) vectors only (the share of a `_part` call).
///
/// # Safety
/// `out` covers every (token, head) of `rows`, `d` elements of `dtype` with `strides`, in host memory.
pub unsafe fn check_finite_rows(
    out: *const u8,
    strides: Strides,
    dtype: Dtype,
    d: usize,
    rows: impl Iterator<Item = (usize, usize)>,
) -> Result<()> {
    let t = super::request::HeadTensor { ptr: out, strides, dtype };
    let mut x = vec![0.0f32; d];
    for (tok, h) in rows {
        // SAFETY: the caller guarantees `out` covers (tok, h).
        unsafe { t.load(tok, h, &mut x) };
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(Error::new(
                ErrorKind::NonFinite,
                format!(
                    "out[token {tok}, head {h}, element {i}] overflowed to a non-finite value: the inputs or scale are too large for f32 attention"
                ),
            ));
        }
    }
    Ok(())
}
