//! Fuzz target: `engine::fuzzing::gguf` (see minigpt-med-core/src/fuzzing.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::gguf(data));
