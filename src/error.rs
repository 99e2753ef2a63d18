//! The crate's one error type. Every layer (codec, backends, cache) reports an [`Error`]: a kind
//! saying what class of failure it is and a message naming the argument and the reason. The C shell
//! maps the kind to a `tq_status` in one place (`ffi::status`); Rust callers match on the kind.

use std::fmt;

/// What class of failure an [`Error`] is. Each kind corresponds to one `tq_status` value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// An argument has a value the call cannot accept.
    InvalidArgument,
    /// A required pointer (C callers) is NULL.
    NullPointer,
    /// Valid in general but not supported (by this configuration or this backend).
    Unsupported,
    /// A params struct's struct_size or abi_version does not match this library.
    AbiMismatch,
    /// Input data contains NaN or infinity.
    NonFinite,
    /// An allocation failed.
    OutOfMemory,
    /// A cache is full; nothing was changed.
    CapacityExceeded,
    /// The requested backend is not compiled in or not present on this machine.
    BackendUnavailable,
    /// The backend (e.g. the CUDA driver) reported an error.
    BackendError,
    /// Reading or writing a file failed.
    Io,
    /// Saved data is truncated, corrupted or not a libturboquant file.
    CorruptData,
    /// Saved data was written with parameters or a format version this object cannot take.
    Incompatible,
    /// An earlier call on this object panicked; the object must be freed.
    Poisoned,
    /// An internal error (a panic) was caught.
    Internal,
}

/// A failed operation: its kind and a message naming the argument and the reason.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }
    /// [`ErrorKind::InvalidArgument`].
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidArgument, message)
    }
    /// [`ErrorKind::NullPointer`] for the argument `arg`.
    pub fn null(arg: &str) -> Self {
        Self::new(ErrorKind::NullPointer, format!("{arg} is NULL"))
    }
    /// [`ErrorKind::Unsupported`].
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unsupported, message)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}: {}", self.kind, self.message)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

impl From<crate::codec::StateError> for Error {
    fn from(e: crate::codec::StateError) -> Self {
        match e {
            crate::codec::StateError::Corrupt(m) => Error::new(ErrorKind::CorruptData, m),
            crate::codec::StateError::Incompatible(m) => Error::new(ErrorKind::Incompatible, m),
        }
    }
}

impl From<crate::cache::CacheError> for Error {
    fn from(e: crate::cache::CacheError) -> Self {
        match e {
            crate::cache::CacheError::Invalid(m) => Error::invalid(m),
            crate::cache::CacheError::Capacity(m) => Error::new(ErrorKind::CapacityExceeded, m),
        }
    }
}

impl From<crate::cache::persist::LoadError> for Error {
    fn from(e: crate::cache::persist::LoadError) -> Self {
        match e {
            crate::cache::persist::LoadError::Corrupt(m) => Error::new(ErrorKind::CorruptData, m),
            crate::cache::persist::LoadError::Incompatible(m) => Error::new(ErrorKind::Incompatible, m),
        }
    }
}

#[cfg(feature = "cuda")]
impl From<crate::backend::cuda::CudaError> for Error {
    fn from(e: crate::backend::cuda::CudaError) -> Self {
        use crate::backend::cuda::CudaErrorKind;
        let kind = match e.kind {
            CudaErrorKind::Unavailable => ErrorKind::BackendUnavailable,
            CudaErrorKind::Unsupported => ErrorKind::Unsupported,
            CudaErrorKind::Invalid => ErrorKind::InvalidArgument,
            CudaErrorKind::Backend => ErrorKind::BackendError,
        };
        Error::new(kind, e.message)
    }
}
