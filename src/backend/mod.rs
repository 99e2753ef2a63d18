//! Backends: where a validated request runs. One interface ([`Backend`]), one type per backend
//! ([`cpu::CpuBackend`], [`cuda::CudaBackend`]) and the enum over them ([`AnyBackend`]) that a
//! [`Codec`](crate::codec::Codec) holds. In a build without the `cuda` feature, `cuda` is a stub
//! whose constructor reports the backend unavailable and whose type has no values.
//!
//! Adding a backend means adding one type that implements [`Backend`] and one variant of
//! [`AnyBackend`]; the codec and the C shell do not change.

use std::ffi::c_void;

use crate::codec::request::{AppendRequest, AttendRequest, DequantRequest, Exec, Memory};
use crate::codec::{Dtype, KvCodec};
use crate::error::{Error, Result};

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(not(feature = "cuda"))]
#[path = "cuda_stub.rs"]
pub mod cuda;

/// Operations a backend may or may not implement (the capability query, [`Backend::supports`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Attention of several sequences in one request (`Stores::Batch`).
    AttendBatch,
    /// Running one share of an append on the calling thread (`Exec::Part`).
    AppendPart,
    /// Running one share of an attend on the calling thread (`Exec::Part`).
    AttendPart,
    /// The owned cache (host memory storage policy above the codec).
    OwnedCache,
    /// The safe Rust API over host slices.
    HostSlices,
    /// Per-head sink logits merged in the softmax (`tq_attend_options::sinks`).
    AttendSinks,
    /// tq_attend_options.full_of_cell: full-precision rows standing for compressed cells.
    AttendFull,
    /// Logit soft-capping before the mask (`tq_attend_options::logit_softcap`).
    LogitSoftcap,
    /// Dequantization in caller-run shares (`tq_dequantize_rows_part`).
    DequantPart,
}

/// One backend. Requests are validated by the codec before they reach it.
pub trait Backend: Send + Sync {
    /// The backend's name in messages ("TQ_BACKEND_CPU", "TQ_BACKEND_CUDA").
    fn name(&self) -> &'static str;
    /// Where its stores and tensors live (what validation may read).
    fn memory(&self) -> Memory;
    /// Whether it implements `op`.
    fn supports(&self, op: Op) -> bool;
    /// Encode `req.n_tokens` tokens into rows.
    ///
    /// # Safety
    /// The request's pointers cover what its sizes say, in this backend's memory; no one else reads
    /// or writes the target rows during the call.
    unsafe fn append(&self, codec: &KvCodec, req: &AppendRequest, exec: Exec) -> Result<()>;
    /// Attention of a request (one sequence, or a batch where `supports(Op::AttendBatch)`).
    ///
    /// # Safety
    /// As for `append`; `out` is not read or written by others during the call.
    unsafe fn attend(&self, codec: &KvCodec, req: &AttendRequest, exec: Exec) -> Result<()>;
    /// Write the rows of a validated dequantization in the original basis (means added).
    ///
    /// # Safety
    /// The request's store and output cover what its sizes say, in the backend's memory.
    unsafe fn dequantize(&self, codec: &KvCodec, req: &DequantRequest, exec: Exec) -> Result<()>;
    /// Centering: put the means this backend holds into `codec`'s host copy, which a state save
    /// writes. The CPU backend freezes them there directly; a device backend copies them back.
    fn means_to_codec(&self, _codec: &KvCodec) -> Result<()> {
        Ok(())
    }
    /// Centering: a state load replaced `codec`'s means; use those from now on.
    fn means_from_codec(&self, _codec: &KvCodec) -> Result<()> {
        Ok(())
    }
}

/// How to create a codec's backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BackendChoice {
    /// Host memory; `threads` worker threads per call (0 = all cores).
    Cpu { threads: u32 },
    /// A CUDA device; scratch for `max_batch` query rows per attend.
    Cuda { device: i32, max_batch: usize },
}

/// The backend of a codec.
pub enum AnyBackend {
    Cpu(cpu::CpuBackend),
    Cuda(cuda::CudaBackend),
}

impl AnyBackend {
    /// Create the chosen backend for `codec` with element type `dtype`.
    pub fn new(choice: BackendChoice, codec: &KvCodec, dtype: Dtype) -> Result<Self> {
        Ok(match choice {
            BackendChoice::Cpu { threads } => AnyBackend::Cpu(cpu::CpuBackend::new(threads)),
            BackendChoice::Cuda { device, max_batch } => {
                AnyBackend::Cuda(cuda::CudaBackend::new(codec, dtype, device, max_batch)?)
            }
        })
    }

    /// The backend as the interface.
    pub fn get(&self) -> &dyn Backend {
        match self {
            AnyBackend::Cpu(b) => b,
            AnyBackend::Cuda(b) => b,
        }
    }

    /// The CPU backend, if this is one.
    pub fn cpu(&self) -> Option<&cpu::CpuBackend> {
        match self {
            AnyBackend::Cpu(b) => Some(b),
            AnyBackend::Cuda(_) => None,
        }
    }

    /// Ok if the backend implements `op`, else the one message that says so and what to do instead.
    pub fn require(&self, op: Op) -> Result<()> {
        let b = self.get();
        if b.supports(op) {
            return Ok(());
        }
        let name = b.name();
        Err(Error::unsupported(match op {
            Op::AttendBatch => {
                "tq_attend_batch is for CUDA contexts; on the CPU call tq_attend per sequence".to_string()
            }
            Op::AppendPart | Op::AttendPart => {
                let f = if op == Op::AppendPart { "tq_append_kv_part" } else { "tq_attend_part" };
                format!("{f} is for CPU contexts; ctx uses {name}: call the non-_part function with a stream")
            }
            Op::OwnedCache => format!(
                "ctx uses {name}: the owned cache keeps host memory; use slot mode (tq_append_kv/tq_attend) on CUDA"
            ),
            Op::HostSlices => format!(
                "the codec uses {name}, whose tensors are device memory: pass device pointers through the C API"
            ),
            Op::AttendSinks => format!(
                "options->sinks: attention sinks are implemented on the CPU backend only; ctx uses {name}"
            ),
            Op::AttendFull => format!(
                "options->full_of_cell: full-precision rows in attention are implemented on the CPU backend only; ctx uses {name}"
            ),
            Op::DequantPart => format!("tq_dequantize_rows_part is for CPU contexts; ctx uses {name}: call tq_dequantize_rows with a stream"),
            Op::LogitSoftcap => format!(
                "options->logit_softcap: logit soft-capping is implemented on the CPU backend only; ctx uses {name}"
            ),
        }))
    }
}

/// A stream argument as the CUDA driver type.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub(crate) fn stream_of(exec: Exec) -> *mut c_void {
    match exec {
        Exec::Queue(s) => s,
        Exec::Part { .. } => std::ptr::null_mut(),
    }
}
