//! # libminigpt_med: the C ABI of minigpt-med
//!
//! A thin C layer over the `minigpt-med-core` engine; `include/minigpt_med.h` is generated
//! from this crate by cbindgen (see `cbindgen.toml`). No engine logic lives here: every
//! function checks its arguments, calls the engine, and maps the result to a status code.
//!
//! Rules every entry point follows (repeated in the header's preamble):
//! - every fallible function returns an `mgm_Status`; on failure `mgm_last_error()` says why;
//! - NULL pointers, invalid UTF-8 and out-of-range enum values are errors, never crashes;
//! - panics are caught at the boundary (`MGM_STATUS_PANIC`), never unwound into C;
//! - handles are created by one function and freed by its `*_free`, which accepts NULL.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod answer;
mod batch;
mod generate;
mod image;
mod model;
mod params;
mod ptr;
mod status;

#[cfg(test)]
mod tests;

// Compiled into the fuzz target (`fuzz/`, which builds this crate's sources as a module) and
// into the unit tests, which replay its corpus; not part of the library.
#[cfg(any(test, fuzzing))]
#[doc(hidden)]
pub mod fuzz_harness;

use std::ffi::c_char;

pub use answer::{
    mgm_answer_box, mgm_answer_box_count, mgm_answer_draw_png, mgm_answer_free, mgm_answer_stop_reason,
    mgm_answer_text, mgm_answer_timings, mgm_answer_token_ids, mgm_stop_reason_name, Answer, BoundingBox, StopReason,
    Timings,
};
pub use batch::{mgm_generate_batch, BatchItem, BatchResult, MGM_BATCH_MESSAGE_BYTES};
pub use generate::{
    mgm_chat_ask, mgm_chat_context_len, mgm_chat_free, mgm_chat_new, mgm_chat_turns, mgm_generate,
    mgm_generate_params_default, mgm_generate_params_preset, mgm_study_ask, mgm_study_free, mgm_study_new, Chat, Study,
};
pub use image::{
    mgm_image_free, mgm_image_from_bytes, mgm_image_from_pixels, mgm_image_open, mgm_image_set_color_mode,
    mgm_image_set_window, mgm_image_size, Image,
};
pub use model::{
    mgm_model_free, mgm_model_load, mgm_model_load_dir, mgm_model_load_file, mgm_model_params_default, Model,
};
pub use params::{
    ChatHistory, ChatHistoryValue, ColorMode, ColorModeValue, Device, DeviceValue, Dtype, DtypeValue, GenerateParams,
    ModelParams, PixelFormat, PixelFormatValue, Preset, PresetValue, ProgressCallback, Region, RegionKind,
    RegionKindValue, Sampling, SamplingValue, StreamCallback, Task, TaskValue,
};
pub use status::Status;

/// Major version of the library (semantic versioning; equals the crate version).
pub const MGM_VERSION_MAJOR: u32 = 0;
/// Minor version of the library.
pub const MGM_VERSION_MINOR: u32 = 1;
/// Patch version of the library.
pub const MGM_VERSION_PATCH: u32 = 0;
/// The ABI this header describes. It changes only when existing functions, structs or enum
/// values change incompatibly (additions keep it), and is the SONAME number
/// (`libminigpt_med.so.<ABI>`, set in `build.rs`). Compare with `mgm_abi_version()` at
/// run time to catch a header/library mismatch.
pub const MGM_ABI_VERSION: u32 = 0;

/// The ABI version of the loaded library; equal to `MGM_ABI_VERSION` when the header and the
/// library match.
#[no_mangle]
pub extern "C" fn mgm_abi_version() -> u32 {
    MGM_ABI_VERSION
}

/// The library version as `"MAJOR.MINOR.PATCH"` (a static string, never freed).
#[no_mangle]
pub extern "C" fn mgm_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

/// Sets the CPU threads used for all matrix work (the engine's quantized kernels and the f32
/// GEMM) by building the process-wide thread pool with that many threads. The pool is built
/// once (by this call or the first `mgm_model_load`): call it first. Returns
/// `MGM_STATUS_INVALID_OPTION` for 0, and for another size once the pool exists. The
/// environment is never written (other threads of the host may be reading it).
#[no_mangle]
pub extern "C" fn mgm_set_threads(threads: usize) -> Status {
    status::guard(|| Ok(engine::set_threads(threads)?))
}

/// The message of the last failed call on the calling thread, or "" if the last call
/// succeeded. Never NULL. The string is owned by the library and stays valid until the next
/// status-returning `mgm_*` call on the same thread; copy it to keep it.
#[no_mangle]
pub extern "C" fn mgm_last_error() -> *const c_char {
    status::last_error_ptr()
}

/// The name of a status code (e.g. `"MGM_STATUS_IO"`), or `"MGM_STATUS_UNKNOWN"` for a
/// value that is not one. A static string, never freed.
#[no_mangle]
pub extern "C" fn mgm_status_name(status: u32) -> *const c_char {
    Status::from_raw(status).map_or("MGM_STATUS_UNKNOWN\0", Status::name).as_ptr().cast()
}
