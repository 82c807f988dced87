//! Hostile inputs, each run in a child process under a 4 GiB address-space limit (`prlimit
//! --as`), as a host application would meet them: every case must end in a typed error (exit
//! status 1 and the engine's message), never an abort, a signal or a stack overflow, which a
//! test inside this process could not see.

use std::path::{Path, PathBuf};
use std::process::Command;

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mgm-hostile-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `minigpt-med ARGS` under `prlimit --as=4GiB` when prlimit exists (util-linux), else plain.
fn limited(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let bin = env!("CARGO_BIN_EXE_minigpt-med");
    let mut cmd = if Path::new("/usr/bin/prlimit").exists() {
        let mut c = Command::new("/usr/bin/prlimit");
        c.arg("--as=4294967296").arg(bin);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args).output().unwrap()
}

/// `minigpt-med generate --model-dir DIR --image IMAGE EXTRA...`, limited.
fn generate(dir: &Path, image: &Path, extra: &[&str]) -> std::process::Output {
    let mut args: Vec<&std::ffi::OsStr> =
        vec!["generate".as_ref(), "--model-dir".as_ref(), dir.as_os_str(), "--image".as_ref(), image.as_os_str()];
    args.extend(extra.iter().map(|a| std::ffi::OsStr::new(*a)));
    limited(&args)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = 0xFFFF_FFFFu32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0xEDB8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// A PNG signature and IHDR for `width x height` 8-bit gray, then a tiny IDAT and IEND.
fn png_header(width: u32, height: u32) -> Vec<u8> {
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    for (kind, data) in [
        (&b"IHDR"[..], [&width.to_be_bytes()[..], &height.to_be_bytes(), &[8, 0, 0, 0, 0]].concat()),
        (b"IDAT", vec![0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01]),
        (b"IEND", vec![]),
    ] {
        let mut chunk = kind.to_vec();
        chunk.extend(&data);
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(&chunk);
        out.extend(crc32(&chunk).to_be_bytes());
    }
    out
}

fn assert_typed_error(out: &std::process::Output, want: &str, case: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{case}: status {:?} (an abort or a signal?), stderr: {err}", out.status);
    assert!(err.contains("error: ") && err.contains(want), "{case}: {err}");
}

#[test]
fn hostile_images_get_typed_errors_under_a_memory_limit() {
    let dir = scratch("images");
    let tall = dir.join("tall.png");
    std::fs::write(&tall, png_header(1, 268_435_455)).unwrap();
    let wide = dir.join("wide.png");
    std::fs::write(&wide, png_header(268_435_455, 1)).unwrap();
    let bomb = dir.join("bomb.png");
    std::fs::write(&bomb, png_header(60_000, 60_000)).unwrap();
    let out = dir.join("out.png");
    for (image, want) in [
        (tall.as_path(), "side over 65535"),
        (wide.as_path(), "side over 65535"),
        (bomb.as_path(), "pixel limit"),
        (Path::new("/dev/zero"), "not a regular file"),
    ] {
        let o =
            limited(&["preprocess".as_ref(), "--image".as_ref(), image.as_os_str(), "--out".as_ref(), out.as_os_str()]);
        assert_typed_error(&o, want, &image.display().to_string());
        assert!(!out.exists(), "nothing is written on failure");
    }
}

#[test]
fn hostile_model_files_get_typed_errors_under_a_memory_limit() {
    let dir = scratch("model");
    copy_dir(&tiny(), &dir);
    let llama = dir.join("llama-2-7b-chat-hf");
    let config_path = llama.join("config.json");
    let original: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    let image = tiny().join("images/ct_nlst.png");
    for (key, value) in [("num_hidden_layers", 1_000_000_000_000u64), ("max_position_embeddings", 1_000_000_000)] {
        let mut cfg = original.clone();
        cfg[key] = serde_json::json!(value);
        std::fs::write(&config_path, cfg.to_string()).unwrap();
        assert_typed_error(&generate(&dir, &image, &["--max-new-tokens", "2"]), key, key);
    }
    std::fs::write(&config_path, original.to_string()).unwrap();
    // Checkpoints whose tensors declare more than their storage holds.
    let hostile = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/hostile");
    for (file, want) in [
        ("huge_lora.pth", "2147483647"),
        ("short_storage.pth", "its storage holds 4 values"),
        ("memo_bomb.pth", "more than 50000000 values"),
        ("deep_nesting.pth", "more than 1000 deep"),
    ] {
        std::fs::copy(hostile.join(file), dir.join("minigpt_med.pth")).unwrap();
        assert_typed_error(&generate(&dir, &image, &[]), want, file);
    }
    std::fs::copy(tiny().join("minigpt_med.pth"), dir.join("minigpt_med.pth")).unwrap();
    // A prompt far beyond the context is refused before it is embedded.
    let long = "word ".repeat(20_000);
    let o = generate(&dir, &image, &["--task", "vqa", "--prompt", &long]);
    assert_typed_error(&o, "positions", "a 100 kB prompt");
}

/// Damaged model files (GGUF) under the memory limit: each count, length and offset is
/// checked against the file before anything is allocated from it.
#[test]
fn hostile_gguf_files_get_typed_errors_under_a_memory_limit() {
    let dir = scratch("gguf");
    let good = dir.join("good.gguf");
    let o = limited(&[
        "convert".as_ref(),
        "--model-dir".as_ref(),
        tiny().as_os_str(),
        "--llm-dtype".as_ref(),
        "q4_0".as_ref(),
        "--out".as_ref(),
        good.as_os_str(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let bytes = std::fs::read(&good).unwrap();
    let patched = |at: usize, with: &[u8]| {
        let mut b = bytes.clone();
        b[at..at + with.len()].copy_from_slice(with);
        b
    };
    let find = |needle: &[u8]| bytes.windows(needle.len()).position(|w| w == needle).unwrap();
    // The string length of the first metadata key, then an array count, then a tensor count.
    let huge = u64::MAX.to_le_bytes();
    let tokens = find(b"tokenizer.ggml.tokens") + b"tokenizer.ggml.tokens".len() + 4 + 4;
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("truncated", bytes[..bytes.len() / 2].to_vec(), "past the end"),
        ("empty", Vec::new(), "shorter than a GGUF header"),
        ("magic", patched(0, b"GGJT"), "not \"GGUF\""),
        ("tensor count", patched(8, &huge), "cannot fit"),
        ("key length", patched(24, &huge), "needs"),
        ("array count", patched(tokens, &huge), "does not fit"),
    ];
    let image = tiny().join("images/ct_nlst.png");
    for (case, data, want) in cases {
        let path = dir.join(format!("{}.gguf", case.replace(' ', "_")));
        std::fs::write(&path, data).unwrap();
        let o = limited(&[
            "generate".as_ref(),
            "--model".as_ref(),
            path.as_os_str(),
            "--image".as_ref(),
            image.as_os_str(),
        ]);
        assert_typed_error(&o, want, case);
    }
}

#[test]
fn outputs_never_overwrite_the_input() {
    let dir = scratch("overwrite");
    let input = dir.join("ct.png");
    std::fs::copy(tiny().join("images/ct_nlst.png"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o =
        limited(&["preprocess".as_ref(), "--image".as_ref(), input.as_os_str(), "--out".as_ref(), input.as_os_str()]);
    assert_typed_error(&o, "is the input image", "preprocess --out = --image");
    let same_file = dir.join(".").join("ct.png");
    let o = limited(&[
        "demo".as_ref(),
        "--image".as_ref(),
        input.as_os_str(),
        "--max-new-tokens".as_ref(),
        "2".as_ref(),
        "--draw".as_ref(),
        same_file.as_os_str(),
    ]);
    assert_typed_error(&o, "is the input image", "demo --draw = --image");
    assert_eq!(std::fs::read(&input).unwrap(), before, "the input was changed");
    // A real output is written whole, with no temporary file left beside it.
    let out = dir.join("view.png");
    let o = limited(&["preprocess".as_ref(), "--image".as_ref(), input.as_os_str(), "--out".as_ref(), out.as_os_str()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let names: Vec<String> =
        std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(minigpt_med::Image::open(&out).is_ok());
}
