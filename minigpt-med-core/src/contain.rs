//! Third-party decoders (the image crate, dicom-rs, the pickle reader) run on untrusted bytes.
//! A panic in one of them is contained here, turned into the caller's typed error, and counted:
//! a contained panic is still a bug to fix (a check missing before the decoder), so the test
//! suites fail on any ([`caught_panics`]).

use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};

thread_local! {
    static CAUGHT: Cell<usize> = const { Cell::new(0) };
}

/// Runs `f`; a panic becomes `Err` with its message.
pub(crate) fn contain<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    // The decoders only touch the bytes handed to them and values they return: nothing of ours
    // is left half-updated by a panic, so asserting unwind safety is sound.
    catch_unwind(AssertUnwindSafe(f)).map_err(|p| {
        let _ = CAUGHT.try_with(|c| c.set(c.get() + 1));
        p.downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| p.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".into())
    })
}

/// Panics contained on the calling thread so far (for tests: it must stay 0).
#[doc(hidden)]
pub fn caught_panics() -> usize {
    CAUGHT.try_with(Cell::get).unwrap_or(0)
}
