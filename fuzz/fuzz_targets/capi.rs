//! Fuzz target: the C ABI, as programs of calls (minigpt-med-capi/src/fuzz_harness.rs). The
//! ABI crate is a cdylib/staticlib, so its sources are compiled here as a module.
#![no_main]

#[path = "../../minigpt-med-capi/src/lib.rs"]
#[allow(dead_code, unused_imports)]
mod capi;

libfuzzer_sys::fuzz_target!(|data: &[u8]| capi::fuzz_harness::run(data));
