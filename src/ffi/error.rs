//! Errors at the C boundary: the thread-local last-error message, the panic boundary, and the
//! pointer helpers that keep `unsafe` in one place.

use std::cell::RefCell;
use std::ffi::{CStr, CString};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Once;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::status::tq_status;

pub use crate::error::{Error, ErrorKind, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Record `message` as this thread's last error. A thread whose thread-local storage is already torn
/// down (a call from a C++ thread_local destructor) keeps no message: its status still tells the
/// failure, and nothing panics across the C boundary.
pub fn set_last_error(message: &str) {
    let c = CString::new(message.replace('\0', " ")).unwrap_or_default();
    let _ = LAST_ERROR.try_with(|slot| {
        if let Ok(mut m) = slot.try_borrow_mut() {
            *m = c;
        }
    });
}

/// What `tq_last_error_message` returns where the thread's message is gone (thread exit).
const NO_MESSAGE: &CStr = c"(no message: this thread's storage is being torn down)";

/// This thread's last error message, as a String.
pub fn last_error_string() -> String {
    LAST_ERROR
        .try_with(|slot| slot.try_borrow().map(|m| m.to_string_lossy().into_owned()).unwrap_or_default())
        .unwrap_or_else(|_| NO_MESSAGE.to_string_lossy().into_owned())
}

/// Pointer to this thread's last error message (valid until this thread's next failing call).
pub fn last_error_ptr() -> *const libc::c_char {
    LAST_ERROR.try_with(|slot| slot.try_borrow().map(|m| m.as_ptr()).unwrap_or(NO_MESSAGE.as_ptr())).unwrap_or(NO_MESSAGE.as_ptr())
}

fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "unknown panic".to_string()
    }
}

/// Entry-point calls in progress, on any thread (the panic hook stays silent while one runs).
static ACTIVE_CALLS: AtomicUsize = AtomicUsize::new(0);

/// `body` under the panic boundary's accounting: a panic inside it (on this thread or a worker it
/// starts) is reported through the status and the last-error message only — the library never writes
/// to the host's stderr. Panics outside entry-point calls go to the hook that was installed before.
fn silenced<T>(body: impl FnOnce() -> T) -> std::thread::Result<T> {
    static HOOK: Once = Once::new();
    HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if ACTIVE_CALLS.load(Ordering::SeqCst) == 0 {
                previous(info);
            }
        }));
    });
    ACTIVE_CALLS.fetch_add(1, Ordering::SeqCst);
    let r = catch_unwind(AssertUnwindSafe(body));
    ACTIVE_CALLS.fetch_sub(1, Ordering::SeqCst);
    r
}

/// Run `body` under the panic boundary: errors and panics become a status plus the last-error message.
pub fn boundary(body: impl FnOnce() -> Result<()>) -> tq_status {
    match silenced(body) {
        Ok(Ok(())) => tq_status::TQ_STATUS_OK,
        Ok(Err(e)) => {
            set_last_error(&e.message);
            tq_status::from(e.kind)
        }
        Err(payload) => {
            set_last_error(&format!("internal error (panic): {}", panic_message(payload.as_ref())));
            tq_status::TQ_STATUS_INTERNAL_ERROR
        }
    }
}

/// Like `boundary` for infallible entry points that return a value: a panic yields `fallback`.
pub fn boundary_value<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    match silenced(body) {
        Ok(v) => v,
        Err(payload) => {
            set_last_error(&format!("internal error (panic): {}", panic_message(payload.as_ref())));
            fallback
        }
    }
}

/// A handle whose calls run under the panic boundary and are refused once a call has panicked.
pub trait Guarded {
    /// The argument name in messages.
    const ARG: &'static str;
    /// The message of a call on a poisoned handle.
    const POISONED: &'static str;
    fn poisoned(&self) -> &AtomicBool;
    /// Mark the handle poisoned (after a panic inside a call on it).
    fn poison(&self) {
        self.poisoned().store(true, Ordering::Relaxed);
    }
    /// Refuse the call if the handle is poisoned.
    fn check_poisoned(&self) -> Result<()> {
        if self.poisoned().load(Ordering::Relaxed) {
            return Err(Error::new(ErrorKind::Poisoned, Self::POISONED));
        }
        Ok(())
    }
}

/// Run `body` on `&*ptr` (a shared borrow for the call) under the panic boundary; poison the handle if
/// the body panics.
pub(crate) fn guarded_ref<T: Guarded>(ptr: *const T, body: impl FnOnce(&T) -> Result<()>) -> tq_status {
    let status = boundary(|| {
        // SAFETY: the entry points' contract: `ptr` is NULL or a live handle.
        let h = unsafe { borrow(ptr, T::ARG) }?;
        h.check_poisoned()?;
        body(h)
    });
    poison_after(ptr, status);
    status
}

/// Run `body` on `&mut *ptr` (the only borrow of the handle for the call) under the panic boundary;
/// poison the handle if the body panics.
pub(crate) fn guarded_mut<T: Guarded>(ptr: *mut T, body: impl FnOnce(&mut T) -> Result<()>) -> tq_status {
    let status = boundary(|| {
        // SAFETY: the entry points' contract: `ptr` is NULL or a live handle that no other call uses
        // during this one (the functions taking a mutable handle are documented not thread-safe).
        let h = unsafe { borrow_mut(ptr, T::ARG) }?;
        h.check_poisoned()?;
        body(h)
    });
    poison_after(ptr, status);
    status
}

/// After a call has returned or unwound (no borrow of the handle is alive any more), poison the
/// handle if the call panicked.
fn poison_after<T: Guarded>(ptr: *const T, status: tq_status) {
    if status == tq_status::TQ_STATUS_INTERNAL_ERROR {
        // SAFETY: `ptr` is NULL or live (the entry point's contract); the call's borrow has ended.
        if let Some(h) = unsafe { ptr.as_ref() } {
            h.poison();
        }
    }
}

/// Borrow `*ptr`, or fail naming `arg`.
///
/// # Safety
/// `ptr` is NULL or points to a live `T`.
pub unsafe fn borrow<'a, T>(ptr: *const T, arg: &str) -> Result<&'a T> {
    // SAFETY: the caller guarantees `ptr` is NULL or a live T.
    unsafe { ptr.as_ref() }.ok_or_else(|| Error::null(arg))
}

/// Mutably borrow `*ptr`, or fail naming `arg`.
///
/// # Safety
/// `ptr` is NULL or points to a live `T` not aliased for the call's duration.
pub unsafe fn borrow_mut<'a, T>(ptr: *mut T, arg: &str) -> Result<&'a mut T> {
    // SAFETY: the caller guarantees `ptr` is NULL or a live T that nothing else borrows.
    unsafe { ptr.as_mut() }.ok_or_else(|| Error::null(arg))
}

fn check_array<T>(ptr: *const T, len: usize, arg: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::null(arg));
    }
    if !(ptr as usize).is_multiple_of(std::mem::align_of::<T>()) {
        return Err(Error::invalid(format!(
            "{arg} is not aligned to {} bytes",
            std::mem::align_of::<T>()
        )));
    }
    if len.checked_mul(std::mem::size_of::<T>()).is_none_or(|b| b > isize::MAX as usize) {
        return Err(Error::invalid(format!("{arg}: length {len} is too large")));
    }
    Ok(())
}

/// A caller's array of `len` elements; NULL is accepted only when `len` is 0.
///
/// # Safety
/// Unless NULL, `ptr` points to `len` initialised elements valid for the call's duration.
pub unsafe fn slice<'a, T>(ptr: *const T, len: usize, arg: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    check_array(ptr, len, arg)?;
    // SAFETY: non-NULL, aligned, size fits isize (check_array); the caller guarantees `len` live elements.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// A caller's writable array of `len` elements; NULL is accepted only when `len` is 0.
///
/// # Safety
/// Unless NULL, `ptr` points to `len` writable elements, not aliased for the call's duration.
pub unsafe fn slice_mut<'a, T>(ptr: *mut T, len: usize, arg: &str) -> Result<&'a mut [T]> {
    if len == 0 {
        return Ok(&mut []);
    }
    check_array(ptr, len, arg)?;
    // SAFETY: as in slice; the caller guarantees the elements are writable and not aliased.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// Store `value` through an output pointer.
///
/// # Safety
/// `ptr` is NULL or valid for writing a `T`.
pub unsafe fn write_out<T>(ptr: *mut T, value: T, arg: &str) -> Result<()> {
    if ptr.is_null() {
        return Err(Error::null(arg));
    }
    // SAFETY: non-NULL (checked); the caller guarantees it is writable.
    unsafe { ptr.write(value) };
    Ok(())
}

/// `a · b`, failing with a message naming `what` on overflow.
pub fn checked_len(a: usize, b: usize, what: &str) -> Result<usize> {
    a.checked_mul(b).ok_or_else(|| Error::invalid(format!("{what}: size overflows")))
}

/// Reject NaN and ±inf, naming the vector and element of the first offender.
pub fn check_finite(values: &[f32], dim: usize, arg: &str) -> Result<()> {
    // Branch-free scan of blocks (vectorised), then the exact position inside the failing block.
    const BLOCK: usize = 256;
    let block_is_finite = |b: &[f32]| b.iter().fold(true, |ok, v| ok & v.is_finite());
    let first = values
        .chunks(BLOCK)
        .position(|b| !block_is_finite(b))
        .and_then(|k| values[k * BLOCK..].iter().position(|v| !v.is_finite()).map(|i| k * BLOCK + i));
    match first {
        None => Ok(()),
        Some(i) => Err(Error::new(
            ErrorKind::NonFinite,
            format!("{arg}[vector {}, element {}] is {} (input must be finite)", i / dim, i % dim, values[i]),
        )),
    }
}

/// A static C string for a status.
pub fn status_cstr(status: u32) -> &'static CStr {
    tq_status::from_u32(status).map_or(c"unknown tq_status value", |s| s.name())
}

/// Check that a params struct from C has the expected `struct_size` (read first, before the rest of
/// the struct) and ABI version; then copy it.
///
/// # Safety
/// `ptr` is NULL or points to at least `size_of::<usize>()` readable bytes, and to a whole `T` when
/// that first field equals `size_of::<T>()`.
pub unsafe fn read_params<T: Copy>(ptr: *const T, arg: &str, abi_version_of: impl Fn(&T) -> u32) -> Result<T> {
    // SAFETY: the caller's guarantee; no older sizes are accepted.
    unsafe { read_params_grown(ptr, arg, abi_version_of, &[], None) }
}

/// `read_params` for a struct that has grown: a `struct_size` equal to one of `older` (the sizes of
/// earlier releases of the struct, each ending before the fields added after it) is accepted too, and
/// then the fields past that size keep their values in `defaults` (the struct's default params), so
/// callers built against an older header keep working with the defaults of the new fields.
///
/// # Safety
/// As for `read_params`, and when the first field equals one of `older`, `ptr` points to that many
/// readable bytes.
pub unsafe fn read_params_grown<T: Copy>(
    ptr: *const T,
    arg: &str,
    abi_version_of: impl Fn(&T) -> u32,
    older: &[usize],
    defaults: Option<T>,
) -> Result<T> {
    if ptr.is_null() {
        return Err(Error::null(arg));
    }
    // SAFETY: non-NULL (checked); the caller guarantees at least a usize is readable.
    let declared = unsafe { (ptr as *const usize).read_unaligned() };
    let expected = std::mem::size_of::<T>();
    let params = if declared == expected {
        // SAFETY: the first field equals size_of::<T>(), so the caller guarantees a whole T.
        unsafe { ptr.read_unaligned() }
    } else if let (true, Some(mut p)) = (older.contains(&declared) && declared < expected, defaults) {
        // SAFETY: `declared` bytes are readable (the caller's guarantee for an older size) and fit in
        // `p` (declared < size_of::<T>()); the older struct is a prefix of T, field for field.
        unsafe { std::ptr::copy_nonoverlapping(ptr as *const u8, &mut p as *mut T as *mut u8, declared) };
        p
    } else {
        return Err(Error::new(
            ErrorKind::AbiMismatch,
            format!(
                "{arg}->struct_size is {declared}, this library expects {expected}: \
                 initialise the struct with its tq_*_default_params() function and rebuild against this header"
            ),
        ));
    };
    let abi = abi_version_of(&params);
    if abi != super::TQ_ABI_VERSION {
        return Err(Error::new(
            ErrorKind::AbiMismatch,
            format!("{arg}->abi_version is {abi}, this library implements {}", super::TQ_ABI_VERSION),
        ));
    }
    Ok(params)
}
