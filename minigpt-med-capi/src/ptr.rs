//! Checked conversions of what C hands over: NULL pointers, strings, out-parameters and
//! versioned parameter structs become `Failure`s instead of undefined behaviour.

use std::ffi::{c_char, CStr};

use super::status::Failure;

/// `&T` from a caller's pointer; NULL is an error naming the argument.
///
/// # Safety
/// `p` is NULL or points to a live, properly aligned `T` for `'a`.
pub(crate) unsafe fn arg<'a, T>(p: *const T, name: &str) -> Result<&'a T, Failure> {
    // SAFETY: the caller guarantees `p` is NULL or valid; NULL is rejected by `as_ref`.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::invalid(format!("{name} is NULL")))
}

/// `&mut T` from a caller's pointer; NULL is an error naming the argument.
///
/// # Safety
/// `p` is NULL or points to a live `T` nobody else uses during `'a`.
pub(crate) unsafe fn arg_mut<'a, T>(p: *mut T, name: &str) -> Result<&'a mut T, Failure> {
    // SAFETY: as `arg`, plus exclusivity, which the caller guarantees.
    unsafe { p.as_mut() }.ok_or_else(|| Failure::invalid(format!("{name} is NULL")))
}

/// A UTF-8 string from a NUL-terminated C string; NULL and invalid UTF-8 are errors.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that outlives `'a`.
pub(crate) unsafe fn string<'a>(p: *const c_char, name: &str) -> Result<&'a str, Failure> {
    // SAFETY: non-NULL checked first; termination and lifetime are the caller's contract.
    unsafe { opt_string(p, name) }?.ok_or_else(|| Failure::invalid(format!("{name} is NULL")))
}

/// Like [`string`], with NULL meaning "not given".
///
/// # Safety
/// As [`string`].
pub(crate) unsafe fn opt_string<'a>(p: *const c_char, name: &str) -> Result<Option<&'a str>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: `p` is non-NULL and NUL-terminated per the caller's contract.
    let c = unsafe { CStr::from_ptr(p) };
    c.to_str().map(Some).map_err(|e| {
        Failure::invalid(format!("{name} is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()))
    })
}

/// The slot behind an out-parameter, cleared to NULL so that the caller never sees a stale
/// handle after a failure.
///
/// # Safety
/// `p` is NULL or points to writable storage for one pointer.
pub(crate) unsafe fn out_handle<'a, T>(p: *mut *mut T, name: &str) -> Result<&'a mut *mut T, Failure> {
    // SAFETY: per the caller's contract.
    let slot = unsafe { arg_mut(p, name) }?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

/// Reads a versioned parameter struct whose first field is `uint32_t struct_size`.
///
/// Only the size field is read first, so a struct from an older or newer header is rejected
/// without reading past its end. Every released size is accepted by later libraries; this is
/// the first release, so the only accepted size is the current one.
///
/// # Safety
/// `p` is NULL or points to at least `struct_size` readable bytes beginning with a `u32`.
pub(crate) unsafe fn params<T: Copy>(p: *const T, name: &str) -> Result<Option<T>, Failure> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: every params struct starts with a `u32` (checked by the unit tests' layout
    // asserts), so its first four bytes are readable and aligned.
    let size = unsafe { p.cast::<u32>().read() };
    let expected = std::mem::size_of::<T>();
    if size as usize != expected {
        return Err(Failure::invalid(format!(
            "{name}->struct_size is {size}, this library expects {expected}: initialise the struct with its \
             mgm_*_params_default() and check that the header matches the library (mgm_abi_version())"
        )));
    }
    // SAFETY: the caller says the struct is `size` bytes long, and `size` is `T`'s size.
    Ok(Some(unsafe { p.read() }))
}

/// Frees a handle made by `Box::into_raw`; NULL is ignored. A panic while dropping (none is
/// expected) is caught, as on every entry point, and the memory is then leaked.
///
/// # Safety
/// `p` is NULL or came from `Box::into_raw` in this library and is not used again.
pub(crate) unsafe fn free<T>(p: *mut T) {
    if p.is_null() {
        return;
    }
    // SAFETY: per the contract, `p` is a live box owned by the caller, given up here.
    let boxed = unsafe { Box::from_raw(p) };
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(move || drop(boxed)));
}
