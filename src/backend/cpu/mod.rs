//! The CPU backend: row encoding and attention over compressed rows in host memory, split over the
//! backend's threads (scoped threads per call, `crate::parallel`) or run as one share of an engine's
//! own thread pool (`Exec::Part`).

pub mod attend;
pub mod encode;
mod simd;
#[cfg(target_arch = "x86_64")]
mod vector;
mod tile;

use attend::{AttendJob, AttendScratch, MaskSource};
use encode::EncodeScratch;

use super::{Backend, Op};
use crate::codec::request::{AppendRequest, AttendRequest, Exec, Memory, Slots, Stores, part_range};
use crate::codec::{KvCodec, Means, limits};
use crate::error::{Error, Result};
use crate::parallel;

/// Host memory, Rust threads.
#[derive(Clone, Copy, Debug)]
pub struct CpuBackend {
    threads: usize,
}

impl CpuBackend {
    /// `n_threads` worker threads per call; 0 = all cores.
    pub fn new(n_threads: u32) -> Self {
        Self { threads: parallel::resolve_threads(n_threads) }
    }

    /// Threads a call uses.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Run an attention job over the backend's threads, or one share of it.
    ///
    /// # Safety
    /// The job's pointers cover what its sizes say.
    pub unsafe fn run_attend(&self, job: &AttendJob, exec: Exec) -> Result<()> {
        match exec {
            Exec::Queue(_) => parallel::for_each_range(job.n_items(), self.threads, 1, |_, range| {
                let mut scratch = AttendScratch::new(job.codec);
                // SAFETY: the caller guarantees the job's pointers; items write disjoint outputs.
                unsafe { attend::run_items(job, range, &mut scratch) };
            }),
            Exec::Part { ith, nth } => {
                let items = part_range(job.n_items(), ith, nth);
                let mut scratch = AttendScratch::new(job.codec);
                // SAFETY: as above.
                unsafe { attend::run_items(job, items.clone(), &mut scratch) };
                // A share checks only the output vectors it wrote: other threads write the rest.
                // SAFETY: the job's output covers every (token, head) of its items.
                return unsafe {
                    limits::check_finite_rows(job.out, job.out_strides, job.out_dtype, job.codec.config.head_dim, attend::item_rows(job, items))
                };
            }
        }
        Ok(())
    }
}

/// Encode tokens `range` of `req` into their cells.
///
/// # Safety
/// The request was validated for host memory and its stores hold n_cells rows each.
unsafe fn append_range(codec: &KvCodec, req: &AppendRequest, slots: &[usize], means: Option<&Means>, range: std::ops::Range<usize>) {
    let (kr, vr) = codec.layer_row_bytes(req.layer);
    let mut scratch = EncodeScratch::new(codec);
    for i in range {
        let cell = slots[i];
        // SAFETY: the store holds n_cells rows, cell < n_cells, and slots are distinct, so no other
        // worker touches this row.
        let k_row = unsafe { std::slice::from_raw_parts_mut(req.k_store.add(cell * kr), kr) };
        // SAFETY: as for k_row.
        let v_row = unsafe { std::slice::from_raw_parts_mut(req.v_store.add(cell * vr), vr) };
        // SAFETY: validation checked the tensors' shape; the caller guarantees they cover n_tokens.
        unsafe { encode::encode_token(codec, req.layer, means, &req.k, &req.v, i, k_row, v_row, &mut scratch) };
    }
}

impl Backend for CpuBackend {
    fn name(&self) -> &'static str {
        "TQ_BACKEND_CPU"
    }

    fn memory(&self) -> Memory {
        Memory::Host
    }

    fn supports(&self, op: Op) -> bool {
        match op {
            Op::AttendBatch => false,
            Op::AppendPart | Op::AttendPart | Op::OwnedCache | Op::HostSlices | Op::AttendSinks | Op::LogitSoftcap => true,
        }
    }

    unsafe fn append(&self, codec: &KvCodec, req: &AppendRequest, exec: Exec) -> Result<()> {
        let Slots::Host(slots) = &req.slots else {
            return Err(Error::invalid("the CPU backend takes host slots"));
        };
        // SAFETY: the caller guarantees the tensors cover n_tokens tokens.
        let means = codec.freeze_means(req.layer, || unsafe { encode::first_append_means(codec, &req.k, &req.v, req.n_tokens) });
        match exec {
            Exec::Queue(_) => parallel::for_each_range(req.n_tokens, self.threads, 4, |_, range| {
                // SAFETY: validated request; ranges of tokens are disjoint and slots distinct.
                unsafe { append_range(codec, req, slots, means, range) }
            }),
            // SAFETY: as above; shares of one call are disjoint.
            Exec::Part { ith, nth } => unsafe { append_range(codec, req, slots, means, part_range(req.n_tokens, ith, nth)) },
        }
        Ok(())
    }

    unsafe fn attend(&self, codec: &KvCodec, req: &AttendRequest, exec: Exec) -> Result<()> {
        let Stores::Single { k, v } = req.stores else {
            return Err(Error::unsupported("the CPU backend attends one sequence per request"));
        };
        let job = AttendJob {
            codec,
            layer: req.layer,
            means: codec.means(req.layer),
            q: req.q,
            n_q: req.n_q,
            k_store: k.cast(),
            v_store: v.cast(),
            n_cells: req.n_cells,
            mask: match req.mask {
                None => MaskSource::None,
                Some(m) => MaskSource::Tensor { ptr: m.ptr, dtype: m.dtype, row_stride: m.row_stride },
            },
            full: None,
            scale: req.scale,
            // SAFETY: validation checked that non-null sinks hold n_heads finite host values.
            sinks: if req.sinks.is_null() { None } else { Some(unsafe { std::slice::from_raw_parts(req.sinks, codec.config.n_heads) }) },
            softcap: req.softcap,
            out: req.out,
            out_strides: req.out_strides,
            out_dtype: req.q.dtype,
        };
        // SAFETY: the caller guarantees the request's pointers.
        unsafe { self.run_attend(&job, exec) }
    }
}
