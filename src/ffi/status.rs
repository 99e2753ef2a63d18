//! Status codes returned by every fallible entry point.

/// Result of a libturboquant call. Values are stable and never reused.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_status {
    /// Success.
    TQ_STATUS_OK = 0,
    /// An argument has a value the call cannot accept (see tq_last_error_message()).
    TQ_STATUS_INVALID_ARGUMENT = 1,
    /// A required pointer argument is NULL.
    TQ_STATUS_NULL_POINTER = 2,
    /// The combination is valid in general but not supported (e.g. HADAMARD with a non power of two).
    TQ_STATUS_UNSUPPORTED = 3,
    /// A params struct's struct_size or abi_version does not match this library.
    TQ_STATUS_ABI_MISMATCH = 4,
    /// Input data contains NaN or infinity.
    TQ_STATUS_NON_FINITE = 5,
    /// An allocation failed.
    TQ_STATUS_OUT_OF_MEMORY = 6,
    /// A cache sequence is full (max_tokens, or the 2^62 position limit, reached by an append or
    /// seq_cp); nothing was changed. A sequence id ≥ max_seqs is TQ_STATUS_INVALID_ARGUMENT.
    TQ_STATUS_CAPACITY_EXCEEDED = 7,
    /// The requested backend is not compiled in or not present on this machine.
    TQ_STATUS_BACKEND_UNAVAILABLE = 8,
    /// The backend (e.g. the CUDA driver) reported an error.
    TQ_STATUS_BACKEND_ERROR = 9,
    /// Reading or writing a file failed.
    TQ_STATUS_IO_ERROR = 10,
    /// Saved data is truncated, corrupted or not a libturboquant file.
    TQ_STATUS_CORRUPT_DATA = 11,
    /// Saved data was written with parameters or a format version this object cannot take.
    TQ_STATUS_INCOMPATIBLE = 12,
    /// An earlier call on this object panicked; the object must be freed.
    TQ_STATUS_POISONED = 13,
    /// An internal error (a panic) was caught at the library boundary.
    TQ_STATUS_INTERNAL_ERROR = 14,
}

impl tq_status {
    pub fn name(self) -> &'static std::ffi::CStr {
        use tq_status::*;
        match self {
            TQ_STATUS_OK => c"TQ_STATUS_OK",
            TQ_STATUS_INVALID_ARGUMENT => c"TQ_STATUS_INVALID_ARGUMENT",
            TQ_STATUS_NULL_POINTER => c"TQ_STATUS_NULL_POINTER",
            TQ_STATUS_UNSUPPORTED => c"TQ_STATUS_UNSUPPORTED",
            TQ_STATUS_ABI_MISMATCH => c"TQ_STATUS_ABI_MISMATCH",
            TQ_STATUS_NON_FINITE => c"TQ_STATUS_NON_FINITE",
            TQ_STATUS_OUT_OF_MEMORY => c"TQ_STATUS_OUT_OF_MEMORY",
            TQ_STATUS_CAPACITY_EXCEEDED => c"TQ_STATUS_CAPACITY_EXCEEDED",
            TQ_STATUS_BACKEND_UNAVAILABLE => c"TQ_STATUS_BACKEND_UNAVAILABLE",
            TQ_STATUS_BACKEND_ERROR => c"TQ_STATUS_BACKEND_ERROR",
            TQ_STATUS_IO_ERROR => c"TQ_STATUS_IO_ERROR",
            TQ_STATUS_CORRUPT_DATA => c"TQ_STATUS_CORRUPT_DATA",
            TQ_STATUS_INCOMPATIBLE => c"TQ_STATUS_INCOMPATIBLE",
            TQ_STATUS_POISONED => c"TQ_STATUS_POISONED",
            TQ_STATUS_INTERNAL_ERROR => c"TQ_STATUS_INTERNAL_ERROR",
        }
    }

    pub fn from_u32(v: u32) -> Option<Self> {
        use tq_status::*;
        const ALL: [tq_status; 15] = [
            TQ_STATUS_OK, TQ_STATUS_INVALID_ARGUMENT, TQ_STATUS_NULL_POINTER, TQ_STATUS_UNSUPPORTED,
            TQ_STATUS_ABI_MISMATCH, TQ_STATUS_NON_FINITE, TQ_STATUS_OUT_OF_MEMORY,
            TQ_STATUS_CAPACITY_EXCEEDED, TQ_STATUS_BACKEND_UNAVAILABLE, TQ_STATUS_BACKEND_ERROR,
            TQ_STATUS_IO_ERROR, TQ_STATUS_CORRUPT_DATA, TQ_STATUS_INCOMPATIBLE, TQ_STATUS_POISONED,
            TQ_STATUS_INTERNAL_ERROR,
        ];
        ALL.iter().copied().find(|s| *s as u32 == v)
    }
}

/// The one map from the crate's error kinds to status values.
impl From<crate::error::ErrorKind> for tq_status {
    fn from(kind: crate::error::ErrorKind) -> Self {
        use crate::error::ErrorKind as K;
        use tq_status::*;
        match kind {
            K::InvalidArgument => TQ_STATUS_INVALID_ARGUMENT,
            K::NullPointer => TQ_STATUS_NULL_POINTER,
            K::Unsupported => TQ_STATUS_UNSUPPORTED,
            K::AbiMismatch => TQ_STATUS_ABI_MISMATCH,
            K::NonFinite => TQ_STATUS_NON_FINITE,
            K::OutOfMemory => TQ_STATUS_OUT_OF_MEMORY,
            K::CapacityExceeded => TQ_STATUS_CAPACITY_EXCEEDED,
            K::BackendUnavailable => TQ_STATUS_BACKEND_UNAVAILABLE,
            K::BackendError => TQ_STATUS_BACKEND_ERROR,
            K::Io => TQ_STATUS_IO_ERROR,
            K::CorruptData => TQ_STATUS_CORRUPT_DATA,
            K::Incompatible => TQ_STATUS_INCOMPATIBLE,
            K::Poisoned => TQ_STATUS_POISONED,
            K::Internal => TQ_STATUS_INTERNAL_ERROR,
        }
    }
}
