//! The CUDA backend in a build without the `cuda` feature: the type exists so that the codec and the
//! C shell are the same in every build, but it has no values — its constructor reports
//! `BackendUnavailable`.

use crate::backend::{Backend, Op};
use crate::codec::request::{AppendRequest, AttendRequest, DequantRequest, Exec, Memory};
use crate::codec::{Dtype, KvCodec};
use crate::error::{Error, ErrorKind, Result};

/// Never constructed: this build has no CUDA backend.
pub enum CudaBackend {}

impl CudaBackend {
    pub fn new(_codec: &KvCodec, _dtype: Dtype, _device: i32, _max_batch: usize) -> Result<Self> {
        Err(Error::new(
            ErrorKind::BackendUnavailable,
            "params->backend is TQ_BACKEND_CUDA, but this build of libturboquant has no CUDA backend (build with --features cuda)",
        ))
    }
}

impl Backend for CudaBackend {
    fn name(&self) -> &'static str {
        match *self {}
    }
    fn memory(&self) -> Memory {
        match *self {}
    }
    fn supports(&self, _op: Op) -> bool {
        match *self {}
    }
    unsafe fn append(&self, _codec: &KvCodec, _req: &AppendRequest, _exec: Exec) -> Result<()> {
        match *self {}
    }
    unsafe fn attend(&self, _codec: &KvCodec, _req: &AttendRequest, _exec: Exec) -> Result<()> {
        match *self {}
    }
    unsafe fn dequantize(&self, _codec: &KvCodec, _req: &DequantRequest, _exec: Exec) -> Result<()> {
        match *self {}
    }
}
