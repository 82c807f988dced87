//! Fuzz target: `engine::fuzzing::request` with the bundled tiny model's tokenizer.
#![no_main]

use std::sync::OnceLock;

use engine::TextCodec;

fn codec() -> &'static TextCodec {
    static CODEC: OnceLock<TextCodec> = OnceLock::new();
    CODEC.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/llama-2-7b-chat-hf");
        TextCodec::from_dir(std::path::Path::new(dir)).expect("the tiny model's tokenizer")
    })
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| engine::fuzzing::request(codec(), data));
