//! Entry points of the fuzz targets (`fuzz/`, run by `scripts/fuzz.sh`) and of their corpus
//! replay under `cargo test` (`tests/fuzz_corpus.rs`): each takes arbitrary bytes and runs one
//! reader exactly as a load or a request does. An error is a pass; a panic, an abort or an
//! allocation over the fuzzer's limit is a finding.
//!
//! Not a stable API: hidden from the docs, here only so the fuzzer and the replay call the
//! same code.

use std::path::Path;

use candle_core::Device;

use crate::answer::Answer;
use crate::config::{LlamaConfig, MiniGptMedConfig};
use crate::image::{ColorMode, Image, ImageOptions, WindowPreset};
use crate::options::DecodeSettings;
use crate::prompt::TextCodec;
use crate::task::{Region, Task, TaskKind};
use crate::weights::{PthFile, SafetensorsFiles, TensorSource};

/// Pixels an image input may have here: enough for every real file shape, small enough that
/// one input stays a fraction of a second (the 448x448 resize dominates).
const FUZZ_MAX_PIXELS: u64 = 1 << 22;

/// A `.pth` (zip pickle) checkpoint: opened with and without a state-dict key, every tensor read.
pub fn pth(data: &[u8]) {
    with_file("pth", data, |path| {
        for key in [None, Some("model")] {
            if let Ok(file) = PthFile::open(path, key, "a fuzz input") {
                read_all(&file);
            }
        }
    });
}

/// A safetensors file: the header parsed and every tensor read out of the mapping.
pub fn safetensors(data: &[u8]) {
    with_file("safetensors", data, |path| {
        if let Ok(files) = SafetensorsFiles::open(path, &[path.to_owned()]) {
            read_all(&files);
        }
    });
}

/// A GGUF model file: the header and index read, every metadata value rendered, and when it
/// is a MiniGPT-Med file, the model opened from it (every tensor read through the loader).
pub fn gguf(data: &[u8]) {
    with_file("gguf", data, |path| {
        let Ok(file) = crate::weights::gguf::GgufFile::open(path) else { return };
        for (_, value) in file.metadata() {
            let _ = value.summary();
        }
        drop(file);
        let _ = crate::Model::open(path, &crate::LoadOptions::default());
    });
}

/// `config.json` and `minigpt_med.json`: the input is parsed as both, each validated as a load
/// does before anything is sized from it.
pub fn configs(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("fuzz.json");
    let _ = LlamaConfig::from_json(text, path).map(|c| (c.kv_heads(), c.head_dim()));
    if let Ok(c) = MiniGptMedConfig::from_json(text, path) {
        if c.validate(path).is_ok() {
            let _ = (c.vision.grid(), c.lora.scale());
        }
    }
}

/// Any image file (PNG, JPEG, TIFF, BMP, DICOM): decoded, windowed and resized to the model's
/// 448x448 view in both colour modes, as `generate` prepares it.
pub fn image(data: &[u8]) {
    let opts = ImageOptions { max_pixels: FUZZ_MAX_PIXELS, ..ImageOptions::default() };
    if let Ok(image) = Image::from_bytes_with(data, &opts) {
        prepare(image);
    }
}

/// A DICOM file, through every option that changes how it is rendered: the default, a
/// frame, a named window and the RGB colour mode.
pub fn dicom(data: &[u8]) {
    let base = ImageOptions { max_pixels: FUZZ_MAX_PIXELS, ..ImageOptions::default() };
    let variants = [
        base.clone(),
        ImageOptions { frame: Some(1), ..base.clone() },
        ImageOptions { preset: Some(WindowPreset::Lung), ..base.clone() },
        ImageOptions { color: ColorMode::Rgb, ..base },
    ];
    for opts in &variants {
        if let Ok(image) = Image::from_bytes_with(data, opts) {
            prepare(image);
        }
    }
}

/// Model output text: the box parser for an image size taken from the first 4 bytes, and the
/// corner parser of `--region`.
pub fn boxes(data: &[u8]) {
    let (size, text) = data.split_at(data.len().min(4));
    let mut dims = [0u8; 4];
    dims[..size.len()].copy_from_slice(size);
    let width = u16::from_le_bytes([dims[0], dims[1]]) as usize;
    let height = u16::from_le_bytes([dims[2], dims[3]]) as usize;
    let text = String::from_utf8_lossy(text);
    for b in Answer::parse_boxes(&text, width, height) {
        assert!(b.grid[0] <= b.grid[2] && b.grid[1] <= b.grid[3] && b.grid[2] <= 100 && b.grid[3] <= 100);
    }
    let _ = Region::parse_corners(&text);
}

/// A request as the front doors receive it: the first byte picks a task kind and whether the
/// text is a region, the rest is the text; the task's instruction is built and tokenized as a
/// first turn and as a follow-up. The text is also read as decoding settings (JSON).
pub fn request(codec: &TextCodec, data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else { return };
    let text = String::from_utf8_lossy(rest);
    if let Ok(settings) = serde_json::from_str::<DecodeSettings>(&text) {
        let _ = settings.resolve();
    }
    let kind = TaskKind::ALL[usize::from(selector) % TaskKind::ALL.len()];
    let (text, region) = match (selector & 0x80 != 0, text.split_once('|')) {
        (true, Some((corners, question))) => {
            let region = Region::parse_corners(corners).and_then(|c| {
                if selector & 0x40 != 0 {
                    Region::pixels(c)
                } else {
                    Region::grid(c)
                }
            });
            (Some(question.to_owned()), region.ok())
        }
        _ => (Some(text.into_owned()), None),
    };
    let Ok(task) = Task::new(kind, text.as_deref(), region) else { return };
    let width = usize::from(rest.first().copied().unwrap_or(1)) * 7 + 1;
    let height = usize::from(rest.last().copied().unwrap_or(1)) * 5 + 1;
    let Ok(instruction) = task.instruction(width, height) else { return };
    let _ = codec.prompt(&instruction);
    let _ = codec.follow_up(&instruction);
}

/// Everything `generate` does to an image before the ViT.
fn prepare(image: Image) {
    let _ = (image.effective_window(), image.is_inverted(), image.to_8bit().width());
    for color in [ColorMode::Gray, ColorMode::Rgb] {
        let view = image.clone().with_color(color).model_view(448);
        assert_eq!(view.chw.len(), 3 * 448 * 448);
    }
}

/// Reads every tensor of `source` (in name order, so a run repeats exactly).
fn read_all(source: &dyn TensorSource) {
    let mut names: Vec<&String> = source.shapes().keys().collect();
    names.sort();
    for name in names {
        let _ = source.read(name, &Device::Cpu);
    }
}

/// Runs `f` on `data` written to a scratch file (the readers take paths, as loads do); a fresh
/// name per call, so threads never share one.
fn with_file(ext: &str, data: &[u8], f: impl FnOnce(&Path)) {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = std::env::temp_dir().join(format!("minigpt-med-fuzz-{}-{n}.{ext}", std::process::id()));
    if std::fs::write(&path, data).is_ok() {
        f(&path);
    }
    let _ = std::fs::remove_file(&path);
}
