//! [`CudaBackend`] behind the backend interface: a validated request becomes the device launch
//! description (`DeviceAppend`, `DeviceAttend`) the kernels take.

use super::{CudaBackend, DeviceAppend, DeviceAttend, DeviceDequant, DeviceMask, Stores as DeviceStores};
use crate::backend::{Backend, Op, stream_of};
use crate::codec::KvCodec;
use crate::codec::request::{AppendRequest, AttendRequest, DequantRequest, Exec, KvPart, Memory, Slots, Stores};
use crate::error::{Error, Result};

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        "TQ_BACKEND_CUDA"
    }

    fn memory(&self) -> Memory {
        Memory::Device
    }

    fn supports(&self, op: Op) -> bool {
        match op {
            Op::AttendBatch => true,
            // Sinks and soft-capping are not in the kernels (kernels/*.cu): such attends are refused.
            Op::AppendPart | Op::AttendPart | Op::OwnedCache | Op::HostSlices | Op::AttendSinks | Op::AttendFull | Op::LogitSoftcap | Op::DequantPart => false,
        }
    }

    unsafe fn append(&self, _codec: &KvCodec, req: &AppendRequest, exec: Exec) -> Result<()> {
        let Slots::Device(slots) = req.slots else {
            return Err(Error::invalid("the CUDA backend takes device slots"));
        };
        let a = DeviceAppend {
            layer: req.layer,
            k_store: req.k_store as u64,
            v_store: req.v_store as u64,
            n_cells: req.n_cells,
            slots: slots as u64,
            n_tokens: req.n_tokens,
            k: req.k.ptr as u64,
            k_strides: req.k.strides,
            v: req.v.ptr as u64,
            v_strides: req.v.strides,
        };
        Ok(CudaBackend::append(self, &a, stream_of(exec) as _)?)
    }

    unsafe fn attend(&self, _codec: &KvCodec, req: &AttendRequest, exec: Exec) -> Result<()> {
        let stores = match req.stores {
            Stores::Single { k, v } => DeviceStores::Single { k: k as u64, v: v as u64 },
            Stores::Batch { k, v } => DeviceStores::Batch { k: k as u64, v: v as u64 },
        };
        let a = DeviceAttend {
            layer: req.layer,
            n_seqs: req.n_seqs,
            n_q: req.n_q,
            q: req.q.ptr as u64,
            q_strides: req.q.strides,
            q_seq_stride: req.q_seq_stride,
            stores,
            seq_cells: req.seq_cells as u64,
            max_cells: req.n_cells,
            mask: req.mask.map(|m| DeviceMask { ptr: m.ptr as u64, dtype: m.dtype, row_stride: m.row_stride, seq_stride: m.seq_stride }),
            causal: None,
            full: None,
            query_pos: 0,
            scale: req.scale,
            out: req.out as u64,
            out_strides: req.out_strides,
            out_seq_stride: req.out_seq_stride,
        };
        Ok(CudaBackend::attend(self, &a, stream_of(exec) as _)?)
    }

    unsafe fn dequantize(&self, _codec: &KvCodec, req: &DequantRequest, exec: Exec) -> Result<()> {
        let a = DeviceDequant {
            layer: req.layer,
            values: req.part == KvPart::Values,
            store: req.store as u64,
            n_cells: req.n_cells,
            out: req.out as u64,
            out_dtype: req.out_dtype,
            out_strides: req.out_strides,
        };
        Ok(CudaBackend::dequantize(self, &a, stream_of(exec) as _)?)
    }

    fn means_to_codec(&self, codec: &KvCodec) -> Result<()> {
        Ok(self.download_means(codec)?)
    }

    fn means_from_codec(&self, codec: &KvCodec) -> Result<()> {
        Ok(self.upload_means(codec)?)
    }
}
