//! The CPU backend: row encoding and attention over compressed rows in host memory, split over the
//! backend's threads (scoped threads per call, `crate::parallel`) or run as one share of an engine's
//! own thread pool (`Exec::Part`). A call with few items over many cells is split over its cells as
//! well (split-K, `attend::SplitPlan`): the shares' partial softmax states are merged by the last
//! share to arrive (`split`).

pub mod attend;
mod dequant;
pub mod encode;
mod simd;
mod split;
#[cfg(target_arch = "x86_64")]
mod vector;
mod tile;

use attend::{AttendJob, AttendScratch, FullMask, FullRows, Hidden, MaskSource, SplitPlan};
use encode::EncodeScratch;

use super::{Backend, Op};
use crate::codec::request::{AppendRequest, AttendRequest, DequantRequest, Exec, KvPart, Memory, Slots, Stores, part_range};
use crate::codec::{KvCodec, Means, limits};
use crate::error::{Error, Result};
use crate::parallel;

/// Host memory, Rust threads.
#[derive(Debug)]
pub struct CpuBackend {
    threads: usize,
    /// Split-K `Exec::Part` calls whose shares have not all arrived.
    in_flight: split::InFlight,
}

impl CpuBackend {
    /// `n_threads` worker threads per call; 0 = all cores.
    pub fn new(n_threads: u32) -> Self {
        Self { threads: parallel::resolve_threads(n_threads), in_flight: split::InFlight::default() }
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
            Exec::Queue(_) => {
                let plan = SplitPlan::new(job, self.threads);
                if plan.is_split() {
                    // SAFETY: the caller guarantees the job's pointers.
                    unsafe { self.split_queue(job, &plan) };
                    return Ok(());
                }
                parallel::for_each_range(job.n_items(), self.threads, 1, |_, range| {
                    let mut scratch = AttendScratch::new(job.codec);
                    // SAFETY: the caller guarantees the job's pointers; items write disjoint outputs.
                    unsafe { attend::run_items(job, range, &mut scratch) };
                })
            }
            Exec::Part { ith, nth } => {
                let plan = SplitPlan::new(job, nth);
                if plan.is_split() {
                    // SAFETY: as above.
                    return unsafe { self.split_part(job, &plan, ith, nth) };
                }
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

    /// Split-K on the backend's own threads: the units over scoped threads, then the merge on this one.
    ///
    /// # Safety
    /// As for `run_attend`.
    unsafe fn split_queue(&self, job: &AttendJob, plan: &SplitPlan) {
        let len = attend::partial_len(job);
        let mut partials = vec![0.0f32; plan.units() * len];
        let base = SharedOut(partials.as_mut_ptr());
        parallel::for_each_range(plan.units(), self.threads, 1, |_, range| {
            let mut scratch = AttendScratch::new(job.codec);
            for u in range {
                // SAFETY: unit u owns values u·len..(u + 1)·len of `partials`; ranges are disjoint.
                let out = unsafe { std::slice::from_raw_parts_mut(base.get().add(u * len), len) };
                // SAFETY: the caller guarantees the job's pointers.
                unsafe { attend::run_unit(job, plan, u, &mut scratch, out) };
            }
        });
        let mut scratch = AttendScratch::new(job.codec);
        for item in 0..plan.items {
            // SAFETY: the job's output covers every item.
            unsafe { attend::merge_item(job, plan, item, &partials, &mut scratch) };
        }
    }

    /// Share `ith` of `nth` of a split-K call: its units' partials go to the table of calls in flight;
    /// the share that completes the call merges them all into the output and checks it.
    ///
    /// # Safety
    /// As for `run_attend`.
    unsafe fn split_part(&self, job: &AttendJob, plan: &SplitPlan, ith: usize, nth: usize) -> Result<()> {
        let units = part_range(plan.units(), ith, nth);
        if units.is_empty() {
            return Ok(());
        }
        let len = attend::partial_len(job);
        let expected = (0..nth).take_while(|&i| !part_range(plan.units(), i, nth).is_empty()).count();
        let mut scratch = AttendScratch::new(job.codec);
        let mut mine = vec![0.0f32; units.len() * len];
        for (i, u) in units.clone().enumerate() {
            // SAFETY: the caller guarantees the job's pointers.
            unsafe { attend::run_unit(job, plan, u, &mut scratch, &mut mine[i * len..(i + 1) * len]) };
        }
        let share = split::Share {
            key: (job.layer, job.out as usize),
            // SAFETY: the caller guarantees q (host memory, validated).
            sig: unsafe { split::signature(job, nth) },
            ith,
            nth,
            expected,
            total: plan.units() * len,
            offset: units.start * len,
            data: &mine,
        };
        let arrival = self.in_flight.arrive(&share);
        let mut result = Ok(());
        if let Some((slot, partials)) = arrival.complete {
            for item in 0..plan.items {
                // SAFETY: the job's output covers every item.
                unsafe { attend::merge_item(job, plan, item, &partials, &mut scratch) };
            }
            self.in_flight.give_back(slot, partials);
            // SAFETY: as above.
            result = unsafe {
                limits::check_finite_rows(job.out, job.out_strides, job.out_dtype, job.codec.config.head_dim, attend::item_rows(job, 0..plan.items))
            };
        }
        match arrival.dropped {
            Some(message) => Err(Error::invalid(message)),
            None => result,
        }
    }
}

/// The partials buffer of a split-K call, written by the scoped threads at disjoint offsets.
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: every thread writes only its own units' values, and the buffer outlives the scope.
unsafe impl Send for SharedOut {}
// SAFETY: as for Send.
unsafe impl Sync for SharedOut {}

impl SharedOut {
    fn get(self) -> *mut f32 {
        self.0
    }
}

/// The key channel order of a layer with split key rows (None for other layers); an error while the
/// layer has none yet (no append has reached it and no state set it).
fn split_key_order(codec: &KvCodec, layer: usize) -> Result<Option<&[u16]>> {
    if codec.layers[layer].outliers.is_none() {
        return Ok(None);
    }
    codec.key_order(layer).map(Some).ok_or_else(|| {
        Error::invalid(format!(
            "layer {layer} has split key rows (key_outliers) but no channel order yet: it is chosen by the layer's first append \
             (or restored by tq_context_state_load), so attend or dequantize the keys after appending"
        ))
    })
}

/// Encode tokens `range` of `req` into their cells.
///
/// # Safety
/// The request was validated for host memory and its stores hold n_cells rows each.
unsafe fn append_range(
    codec: &KvCodec,
    req: &AppendRequest,
    slots: &[usize],
    means: Option<&Means>,
    order: Option<&[u16]>,
    range: std::ops::Range<usize>,
) {
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
        unsafe { encode::encode_token(codec, req.layer, means, order, &req.k, &req.v, i, k_row, v_row, &mut scratch) };
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
            Op::AppendPart | Op::AttendPart | Op::OwnedCache | Op::HostSlices | Op::AttendSinks | Op::AttendFull | Op::LogitSoftcap | Op::DequantPart => true,
        }
    }

    unsafe fn append(&self, codec: &KvCodec, req: &AppendRequest, exec: Exec) -> Result<()> {
        let Slots::Host(slots) = &req.slots else {
            return Err(Error::invalid("the CPU backend takes host slots"));
        };
        // SAFETY: the caller guarantees the tensors cover n_tokens tokens.
        let means = codec.freeze_means(req.layer, || unsafe { encode::first_append_means(codec, &req.k, &req.v, req.n_tokens) });
        // SAFETY: as above.
        let order = codec.freeze_key_order(req.layer, || unsafe { encode::first_append_order(codec, &req.k, req.n_tokens, means) });
        match exec {
            Exec::Queue(_) => parallel::for_each_range(req.n_tokens, self.threads, 4, |_, range| {
                // SAFETY: validated request; ranges of tokens are disjoint and slots distinct.
                unsafe { append_range(codec, req, slots, means, order, range) }
            }),
            // SAFETY: as above; shares of one call are disjoint.
            Exec::Part { ith, nth } => unsafe { append_range(codec, req, slots, means, order, part_range(req.n_tokens, ith, nth)) },
        }
        Ok(())
    }

    unsafe fn dequantize(&self, codec: &KvCodec, req: &DequantRequest, exec: Exec) -> Result<()> {
        let order = if req.part == KvPart::Keys { split_key_order(codec, req.layer)? } else { None };
        match exec {
            Exec::Queue(_) => parallel::for_each_range(req.n_cells, self.threads, 64, |_, range| {
                // SAFETY: validated request; ranges of cells are disjoint.
                unsafe { dequant::dequantize_range(codec, req, order, range) }
            }),
            // SAFETY: as above; shares of one call are disjoint.
            Exec::Part { ith, nth } => unsafe { dequant::dequantize_range(codec, req, order, part_range(req.n_cells, ith, nth)) },
        }
        Ok(())
    }

    unsafe fn attend(&self, codec: &KvCodec, req: &AttendRequest, exec: Exec) -> Result<()> {
        let Stores::Single { k, v } = req.stores else {
            return Err(Error::unsupported("the CPU backend attends one sequence per request"));
        };
        // full-precision rows standing for cells: (cell, row) pairs, and those cells hidden from the compressed pass
        // SAFETY: validation checked that `of_cell` holds n_cells entries.
        let (pairs, bits) = req.full.map(|f| unsafe { f.pairs(req.n_cells) }).unwrap_or_default();
        let hidden = req.full.map(|f| Hidden {
            bits: &bits,
            // SAFETY: as above.
            row_of: unsafe { f.of_cell(req.n_cells) },
            full_mask: f.mask,
            full_mask_stride: f.mask_row_stride,
        });
        let job = AttendJob {
            codec,
            layer: req.layer,
            means: codec.means(req.layer),
            key_order: split_key_order(codec, req.layer)?,
            q: req.q,
            n_q: req.n_q,
            k_store: k.cast(),
            v_store: v.cast(),
            n_cells: req.n_cells,
            mask: match req.mask {
                None if hidden.is_some() => MaskSource::AllBut(hidden.unwrap()),
                None => MaskSource::None,
                Some(m) => MaskSource::Tensor {
                    ptr: m.ptr,
                    dtype: m.dtype,
                    row_stride: m.row_stride,
                    hidden,
                },
            },
            full: req.full.map(|f| FullRows { k: f.k, v: f.v, dtype: f.dtype, row_stride: f.row_stride, mask: FullMask::Cells(&pairs, hidden.unwrap()) }),
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
