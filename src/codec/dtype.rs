//! Element types of the tensors an engine passes in and out (q, k, v, out, mask).

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    /// Every dtype, in code order: `ALL[i].code() == i`.
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::F16, Dtype::Bf16];

    /// The value of this dtype in the C API (`tq_dtype`) and in the kernels (`TQ_DTYPE_*` defines):
    /// the one source of the dtype codes.
    pub const fn code(self) -> u32 {
        match self {
            Dtype::F32 => 0,
            Dtype::F16 => 1,
            Dtype::Bf16 => 2,
        }
    }

    /// The dtype of a C API code, or an error naming the argument `arg`.
    pub fn from_code(v: u32, arg: &str) -> crate::error::Result<Dtype> {
        Dtype::ALL.get(v as usize).copied().ok_or_else(|| {
            crate::error::Error::invalid(format!("{arg} is {v}: not a tq_dtype (F32=0, F16=1, BF16=2)"))
        })
    }

    pub fn size(self) -> usize {
        match self {
            Dtype::F32 => 4,
            Dtype::F16 | Dtype::Bf16 => 2,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "F32",
            Dtype::F16 => "F16",
            Dtype::Bf16 => "BF16",
        }
    }

    /// Read `out.len()` contiguous elements at `src` as f32 (exact for every dtype).
    ///
    /// # Safety
    /// `src` points to `out.len()` readable elements of this dtype (any alignment).
    #[inline]
    pub unsafe fn load(self, src: *const u8, out: &mut [f32]) {
        // SAFETY: the caller guarantees out.len() readable elements of this dtype at src.
        unsafe {
            match self {
                Dtype::F32 => std::ptr::copy_nonoverlapping(src, out.as_mut_ptr() as *mut u8, out.len() * 4),
                Dtype::F16 => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = f16::from_bits((src.add(2 * i) as *const u16).read_unaligned()).to_f32();
                    }
                }
                Dtype::Bf16 => {
                    for (i, o) in out.iter_mut().enumerate() {
                        *o = bf16::from_bits((src.add(2 * i) as *const u16).read_unaligned()).to_f32();
                    }
                }
            }
        }
    }

    /// Write `values` as this dtype at `dst` (round to nearest even).
    ///
    /// # Safety
    /// `dst` points to `values.len()` writable elements of this dtype (any alignment).
    #[inline]
    pub unsafe fn store(self, values: &[f32], dst: *mut u8) {
        // SAFETY: the caller guarantees values.len() writable elements of this dtype at dst.
        unsafe {
            match self {
                Dtype::F32 => std::ptr::copy_nonoverlapping(values.as_ptr() as *const u8, dst, values.len() * 4),
                Dtype::F16 => {
                    for (i, &v) in values.iter().enumerate() {
                        (dst.add(2 * i) as *mut u16).write_unaligned(f16::from_f32(v).to_bits());
                    }
                }
                Dtype::Bf16 => {
                    for (i, &v) in values.iter().enumerate() {
                        (dst.add(2 * i) as *mut u16).write_unaligned(bf16::from_f32(v).to_bits());
                    }
                }
            }
        }
    }
}

/// Byte strides of a [tokens][heads][head_dim] tensor whose head vectors are contiguous.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Strides {
    pub token: usize,
    pub head: usize,
}

impl Strides {
    pub fn packed(heads: usize, head_dim: usize, dtype: Dtype) -> Self {
        Self { token: heads * head_dim * dtype.size(), head: head_dim * dtype.size() }
    }

    /// Byte offset of (token, head).
    #[inline]
    pub fn offset(&self, token: usize, head: usize) -> usize {
        token * self.token + head * self.head
    }
}
