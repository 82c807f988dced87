//! Every committed fuzz input (the seed corpora in `fuzz/corpus/<target>/` and each crash the
//! fuzzer found, kept in `fuzz/regressions/<target>/`) replayed through the same entry points
//! the fuzz targets call, so CI keeps them fixed without a fuzzer. A panic fails the test; a
//! contained decoder panic (turned into a typed error at the boundary) fails it too.

use std::path::PathBuf;
use std::sync::OnceLock;

use minigpt_med::{fuzzing, TextCodec};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut files = Vec::new();
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else { continue };
        files.extend(entries.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    files.sort();
    // A replay over nothing would pass with the corpus lost.
    assert!(files.len() >= 3, "fuzz/corpus/{target} holds {} inputs; it must be committed", files.len());
    files
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let before = minigpt_med::caught_panics();
    for path in inputs(target) {
        let data = std::fs::read(&path).unwrap();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&data)));
        assert!(outcome.is_ok(), "{} panicked", path.display());
        assert_eq!(minigpt_med::caught_panics(), before, "{}: a decoder panicked (contained)", path.display());
    }
}

#[test]
fn pth_corpus() {
    replay("pth", fuzzing::pth);
}

#[test]
fn safetensors_corpus() {
    replay("safetensors", fuzzing::safetensors);
}

#[test]
fn gguf_corpus() {
    replay("gguf", fuzzing::gguf);
}

#[test]
fn configs_corpus() {
    replay("configs", fuzzing::configs);
}

#[test]
fn image_corpus() {
    replay("image", fuzzing::image);
}

#[test]
fn dicom_corpus() {
    replay("dicom", fuzzing::dicom);
}

#[test]
fn boxes_corpus() {
    replay("boxes", fuzzing::boxes);
}

#[test]
fn request_corpus() {
    static CODEC: OnceLock<TextCodec> = OnceLock::new();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/llama-2-7b-chat-hf");
    let codec = CODEC.get_or_init(|| TextCodec::from_dir(&dir).unwrap());
    replay("request", |data| fuzzing::request(codec, data));
}
