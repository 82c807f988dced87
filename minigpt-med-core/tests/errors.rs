//! Every failure a user can cause is a typed error whose message names the file and the fix.

mod common;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use minigpt_med::candle::Device;
use minigpt_med::{Error, Image, LoadOptions, Model, ModelFiles};

/// A private copy of the tiny model directory that a test may damage.
fn scratch() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir =
        std::env::temp_dir().join(format!("mgm-errors-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures(), &dir);
    dir
}

fn load(files: &ModelFiles) -> Error {
    match Model::load(files, &LoadOptions::default()) {
        Ok(_) => panic!("loading {files:?} should fail"),
        Err(e) => e,
    }
}

fn truncate(path: &Path, keep: f64) {
    let bytes = std::fs::read(path).unwrap();
    std::fs::write(path, &bytes[..(bytes.len() as f64 * keep) as usize]).unwrap();
}

#[test]
fn missing_files_are_named() {
    let dir = scratch();
    let mut files = ModelFiles::from_dir(&dir);
    files.vit = dir.join("nope.pth");
    let e = load(&files);
    assert!(matches!(e, Error::Io { .. }), "{e:?}");
    assert!(e.to_string().contains("nope.pth") && e.to_string().contains("eva_vit_g"), "{e}");

    let e = load(&ModelFiles::from_dir(dir.join("elsewhere")));
    assert!(e.to_string().contains("config.json") && e.to_string().contains("Llama-2-7b-chat-hf"), "{e}");

    std::fs::remove_file(dir.join("llama-2-7b-chat-hf/model.safetensors")).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(matches!(e, Error::WeightsFormat { .. }) && e.to_string().contains("model.safetensors"), "{e}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn truncated_weights_are_format_errors() {
    for (file, keep) in
        [("eva_vit_g.pth", 0.5), ("minigpt_med.pth", 0.9), ("llama-2-7b-chat-hf/model.safetensors", 0.7)]
    {
        let dir = scratch();
        truncate(&dir.join(file), keep);
        let e = load(&ModelFiles::from_dir(&dir));
        assert!(matches!(e, Error::WeightsFormat { .. }), "{file}: {e:?}");
        assert!(e.to_string().contains(file.rsplit('/').next().unwrap()), "{file}: {e}");
    }
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn missing_tensor_is_named() {
    let dir = scratch();
    let st = dir.join("llama-2-7b-chat-hf/model.safetensors");
    let mut tensors = minigpt_med::candle::safetensors::load(&st, &Device::Cpu).unwrap();
    tensors.remove("model.norm.weight").unwrap();
    minigpt_med::candle::safetensors::save(&tensors, &st).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(matches!(&e, Error::MissingTensor { name, .. } if name == "model.norm.weight"), "{e:?}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn checkpoint_for_another_llama_size_says_so() {
    let dir = scratch();
    let mut files = ModelFiles::from_dir(&dir);
    files.checkpoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile/wide_checkpoint.pth");
    let e = load(&files);
    let msg = e.to_string();
    assert!(matches!(e, Error::ShapeMismatch { .. }), "{e:?}");
    assert!(msg.contains("width 80") && msg.contains("width 64"), "{msg}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn config_contradicting_the_weights_is_rejected() {
    let dir = scratch();
    let cfg = dir.join("minigpt_med.json");
    std::fs::write(&cfg, r#"{"vision": {"width": 64, "heads": 4, "depth": 3, "mlp_hidden": 209}}"#).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(matches!(&e, Error::ShapeMismatch { name, .. } if name == "patch_embed.proj.weight"), "{e:?}");

    std::fs::write(&cfg, r#"{"vision": {"width": 48, "heads": 4, "depth": 5, "mlp_hidden": 209}}"#).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(e.to_string().contains("holds 4 blocks"), "{e}");

    std::fs::write(&cfg, r#"{"vision": {"width": 48, "heads": 5}}"#).unwrap();
    assert!(load(&ModelFiles::from_dir(&dir)).to_string().contains("not divisible"));

    std::fs::write(&cfg, r#"{"vision": {"widht": 48}}"#).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("widht"), "{e}");

    // Without the config, the defaults are the real model's: 1408-wide ViT.
    std::fs::remove_file(&cfg).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(e.to_string().contains("1408"), "{e}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn pickles_never_execute_code() {
    let marker = Path::new("/tmp/minigpt_med_pickle_executed");
    let _ = std::fs::remove_file(marker);
    let dir = scratch();
    let mut files = ModelFiles::from_dir(&dir);
    files.checkpoint = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile/evil.pth");
    let e = load(&files);
    assert!(matches!(e, Error::WeightsFormat { .. }), "{e:?}");
    assert!(!marker.exists(), "the pickle's os.system call ran");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn a_base_model_is_not_a_checkpoint() {
    let dir = scratch();
    let mut files = ModelFiles::from_dir(&dir);
    files.checkpoint = dir.join("eva_vit_g.pth");
    let e = load(&files);
    assert!(matches!(e, Error::WeightsFormat { .. }) && e.to_string().contains("eva_vit_g.pth"), "{e}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn undecodable_images_are_image_errors() {
    let e = Image::from_bytes(b"definitely not an image").unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    let png = std::fs::read(fixtures().join("images/ct_nlst.png")).unwrap();
    let e = Image::from_bytes(&png[..png.len() / 3]).unwrap_err();
    assert!(matches!(e, Error::Image { .. }), "{e:?}");
    let e = Image::open("/nonexistent/chest.png").unwrap_err();
    assert!(e.to_string().contains("/nonexistent/chest.png"), "{e}");
    assert!(Image::from_pixels(0, 5, minigpt_med::Pixels::Gray8(vec![])).is_err());
    assert!(Image::from_pixels(3, 3, minigpt_med::Pixels::Rgb8(vec![0; 9])).is_err());
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn bad_generation_options_are_rejected_before_work() {
    use minigpt_med::{GenerateOptions, Sampling, Task};
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let bad = [
        GenerateOptions::greedy(0),
        GenerateOptions { repetition_penalty: 0.0, ..GenerateOptions::greedy(4) },
        GenerateOptions {
            sampling: Sampling::Sample { temperature: -1.0, top_p: 0.9, top_k: 0, seed: 0 },
            ..GenerateOptions::greedy(4)
        },
        GenerateOptions {
            sampling: Sampling::Sample { temperature: 1.0, top_p: 1.5, top_k: 0, seed: 0 },
            ..GenerateOptions::greedy(4)
        },
        GenerateOptions { stop_strings: vec![String::new()], ..GenerateOptions::greedy(4) },
    ];
    for opts in bad {
        let e = model().generate(&image, &Task::Report(None), &opts).unwrap_err();
        assert!(matches!(e, Error::InvalidOption(_)), "{opts:?}: {e:?}");
    }
    let e = model().generate(&image, &Task::Vqa("<ImageHere>".into()), &GenerateOptions::greedy(2)).unwrap_err();
    assert!(matches!(e, Error::InvalidOption(_)), "{e:?}");
    assert_eq!(minigpt_med::caught_panics(), 0, "a decoder panicked (contained): a check is missing before it");
}

#[test]
fn a_progress_callback_returning_false_cancels_the_load() {
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = std::sync::Arc::clone(&seen);
    let opts = minigpt_med::LoadOptions {
        progress: Some(std::sync::Arc::new(move |p: minigpt_med::LoadProgress| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            p.done < 2
        })),
        ..Default::default()
    };
    let err = Model::load_dir(common::fixtures(), &opts).err().expect("the load was cancelled");
    assert!(matches!(err, Error::Cancelled), "{err}");
    assert!(err.to_string().contains("progress callback returned false"), "{err}");
    // It stopped at the step that said so, not at the end.
    assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[test]
fn config_sizes_are_bounded_before_anything_is_allocated() {
    let dir = scratch();
    let path = dir.join("llama-2-7b-chat-hf/config.json");
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for (key, value, want) in [
        ("num_hidden_layers", serde_json::json!(1_000_000_000_000u64), "num_hidden_layers is 1000000000000"),
        ("max_position_embeddings", serde_json::json!(1_000_000_000u64), "max_position_embeddings is 1000000000"),
        ("hidden_size", serde_json::json!(0), "hidden_size is 0"),
        ("vocab_size", serde_json::json!(1u64 << 40), "vocab_size"),
        ("rms_norm_eps", serde_json::json!(-1.0), "rms_norm_eps"),
        ("eos_token_id", serde_json::json!(4_000_000), "eos_token_id 4000000 is outside the vocabulary"),
    ] {
        let mut cfg = original.clone();
        cfg[key] = value;
        std::fs::write(&path, cfg.to_string()).unwrap();
        let e = load(&ModelFiles::from_dir(&dir));
        assert!(matches!(e, Error::Config { .. }) && e.to_string().contains(want), "{key}: {e}");
    }
    std::fs::write(&path, original.to_string()).unwrap();
    let mm = dir.join("minigpt_med.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&mm).unwrap()).unwrap();
    cfg["vision"]["depth"] = serde_json::json!(1u64 << 40);
    std::fs::write(&mm, cfg.to_string()).unwrap();
    let e = load(&ModelFiles::from_dir(&dir));
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("vision.depth"), "{e}");
}

#[test]
fn only_regular_files_of_bounded_size_are_read_as_images() {
    let e = Image::open("/dev/zero").unwrap_err();
    assert!(matches!(e, Error::Image { .. }) && e.to_string().contains("not a regular file"), "{e}");
    let e = Image::open(std::env::temp_dir()).unwrap_err();
    assert!(e.to_string().contains("not a regular file"), "{e}");
    let small = minigpt_med::ImageOptions { max_file_bytes: 100, ..Default::default() };
    let e = Image::open_with(fixtures().join("images/ct_nlst.png"), &small).unwrap_err();
    assert!(e.to_string().contains("over the 100-byte limit"), "{e}");
    assert_eq!(minigpt_med::caught_panics(), 0);
}

#[test]
fn tensors_larger_than_their_storage_are_refused_before_reading() {
    let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile");
    let mut files = ModelFiles::from_dir(fixtures());
    // The right shape over a storage of 4 values: the reader would read past the storage.
    files.checkpoint = hostile.join("short_storage.pth");
    let e = load(&files);
    assert!(matches!(e, Error::WeightsFormat { .. }), "{e:?}");
    assert!(e.to_string().contains("`llama_proj.bias` declares shape [64] but its storage holds 4 values"), "{e}");
    // A LoRA B of [2147483647, 64]: 512 GiB the reader would allocate before reading.
    files.checkpoint = hostile.join("huge_lora.pth");
    let e = load(&files);
    assert!(matches!(&e, Error::ShapeMismatch { found, .. } if found == &vec![2147483647, 64]), "{e:?}");
    assert_eq!(minigpt_med::caught_panics(), 0);
}

#[test]
fn pickle_bombs_are_refused_before_the_reader_runs() {
    let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile");
    let mut files = ModelFiles::from_dir(fixtures());
    for (file, want) in [("memo_bomb.pth", "more than 50000000 values"), ("deep_nesting.pth", "more than 1000 deep")] {
        files.checkpoint = hostile.join(file);
        let e = load(&files);
        assert!(matches!(e, Error::WeightsFormat { .. }) && e.to_string().contains(want), "{file}: {e}");
    }
    assert_eq!(minigpt_med::caught_panics(), 0);
}
