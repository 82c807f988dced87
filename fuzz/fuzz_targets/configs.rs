//! Fuzz target: `engine::fuzzing::configs` (see minigpt-med-core/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::configs(data));
