#![allow(non_camel_case_types)]
//! The C ABI: the only `#[unsafe(no_mangle)]` code. Every entry point checks its arguments, runs under
//! the panic boundary (`error::boundary`), and reports failures as a `tq_status` plus a thread-local
//! message (`tq_last_error_message`).

pub mod cache;
pub mod context;
pub mod error;
pub mod quantizer;
pub mod status;

use std::ffi::c_char;

pub use status::tq_status;

/// Version of the params structs' layout; a params struct carrying another value is rejected.
pub const TQ_ABI_VERSION: u32 = 1;

/// Rotation applied before quantization (values of the `rotation` params field).
#[repr(u32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_rotation {
    /// HADAMARD when the dimension is a power of two, DENSE otherwise.
    TQ_ROTATION_AUTO = 0,
    /// Haar-random dense orthogonal matrix (any dimension; O(d²) per vector).
    TQ_ROTATION_DENSE = 1,
    /// Randomised Walsh–Hadamard transform (power-of-two dimensions; O(d log d) per vector).
    TQ_ROTATION_HADAMARD = 2,
}

/// Quantizer flavour (values of the `kind` params field).
#[repr(u32)]
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum tq_quantizer_kind {
    /// Minimum-MSE quantizer (TurboQuant_mse).
    TQ_QUANTIZER_MSE = 0,
    /// Unbiased inner-product quantizer: MSE at bits−1 plus a 1-bit QJL sketch of the residual
    /// (TurboQuant_prod).
    TQ_QUANTIZER_PROD = 1,
}

/// The library version, "MAJOR.MINOR.PATCH". Static; never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_version() -> *const c_char {
    static VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), "\0");
    VERSION.as_ptr() as *const c_char
}

/// A static, human-readable name for a status value (also for values this library does not define).
/// Never NULL. Thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn tq_status_to_string(status: u32) -> *const c_char {
    error::boundary_value(c"unknown tq_status value".as_ptr(), || error::status_cstr(status).as_ptr())
}

/// The message of the most recent failing call on the calling thread: which argument was wrong and
/// why. Empty if no call on this thread has failed. Never NULL. The pointer stays valid until the next
/// failing call on this thread; copy it to keep it. Thread-safe (the message is per thread).
#[unsafe(no_mangle)]
pub extern "C" fn tq_last_error_message() -> *const c_char {
    error::last_error_ptr()
}
