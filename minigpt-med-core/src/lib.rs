//! # minigpt-med
//!
//! Inference for MiniGPT-Med (arXiv 2407.04106), the radiology vision-language model: one
//! medical image and an instruction in, text (a report, a VQA answer, boxes) out.
//!
//! Pipeline, identical to the original PyTorch model: Pillow-exact bicubic resize to 448x448,
//! EVA ViT-g/14 (39 of 40 blocks), a weightless LayerNorm, 4 horizontally adjacent patch tokens
//! concatenated (1024 -> 256 tokens), a Linear into LLaMA-2-7b-chat's width, and LLaMA-2 with the
//! MiniGPT-Med LoRA merged in.
//!
//! ```no_run
//! use minigpt_med::{GenerateOptions, Image, LoadOptions, Model, ModelFiles, Task};
//!
//! let files = ModelFiles::original("Llama-2-7b-chat-hf", "eva_vit_g.pth", "minigpt_med.pth");
//! let model = Model::load(&files, &LoadOptions::default())?;
//! let image = Image::open("chest.png")?;
//! let answer = model.generate(&image, &Task::Refer("the nodule in the left lung".into()), &GenerateOptions::greedy(100))?;
//! for b in &answer.boxes {
//!     println!("{:?} at {:?} px", b.label, b.pixels);
//! }
//! # Ok::<(), minigpt_med::Error>(())
//! ```
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod answer;
mod attention;
pub mod batch;
mod batch_decode;
mod chat;
mod config;
mod contain;
#[doc(hidden)]
pub mod cpu;
mod device;
mod draw;
mod error;
#[doc(hidden)]
pub mod fuzzing;
pub mod gemm;
mod generate;
pub mod image;
mod llm;
mod model;
mod model_file;
mod nn;
mod options;
pub mod prompt;
pub mod quant;
mod sample;
mod study;
mod task;
mod vision;
mod weights;

pub use answer::{Answer, BoundingBox, StopReason, Timings};
pub use batch_decode::{DecodeBatch, OnText, Request, RequestImage, SequenceId};
pub use chat::{Chat, ChatHistory};
pub use config::{ConnectorConfig, LlamaConfig, LoraConfig, MiniGptMedConfig, ModelFiles, VisionConfig};
pub use device::Device;
pub use draw::{draw_boxes, PALETTE};
pub use error::{Error, Result};
pub use generate::Detokenizer;
pub use image::{ColorMode, DicomInfo, Image, ImageOptions, ModelView, Pixels, VoiFunction, Window, WindowPreset};
pub use llm::{KvCache, KvDType};
pub use model::{EncodeStages, ImageEmbeddings, LoadOptions, LoadProgress, Model, ModelInfo, ProgressFn};
pub use model_file::{convert, convert_synthetic, ConvertOptions, ConvertSummary, FORMAT_VERSION};
pub use nn::WeightDType;
pub use options::{DecodeSettings, GenerateOptions, Preset, Sampling};
pub use prompt::{Exchange, Prompt, TextCodec};
pub use study::{Study, StudyRef};
pub use task::{format_grid_box, Region, Task, TaskKind};
pub use vision::interpolate_pos_embed;
pub use vision::EncodeSplit;

/// GGUF files: the reader and writer behind converted model files, for inspecting them.
pub mod gguf {
    pub use crate::weights::gguf::{GgmlType, GgufFile, GgufWriter, MetaValue, TensorInfo};
}

/// The tensor library the engine is built on, re-exported for callers that inspect stages.
pub use candle_core as candle;

/// Sets the CPU threads of all matrix work: builds the process-wide thread pool (rayon's
/// global pool, which every kernel runs on) with `n` threads. The pool is built once, by this
/// call or by the first model load (then with `RAYON_NUM_THREADS` or one thread per core), so
/// call it first. Calling it again with the pool's size is fine; another size is an error, as
/// the pool cannot be resized. Nothing is written to the environment, which other threads of a
/// host program may be reading.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidOption("threads must be at least 1".into()));
    }
    if rayon::ThreadPoolBuilder::new().num_threads(n).build_global().is_ok() {
        return Ok(());
    }
    match rayon::current_num_threads() {
        current if current == n => Ok(()),
        current => Err(Error::InvalidOption(format!(
            "the thread pool already runs {current} threads and cannot be resized to {n}: set the threads \
             once, before the first model load (or with RAYON_NUM_THREADS before the program starts)"
        ))),
    }
}

/// The threads of the pool all matrix work runs on (building it, if nothing has yet).
pub fn threads() -> usize {
    rayon::current_num_threads()
}

#[doc(hidden)]
pub use contain::caught_panics;

/// Crate version (`CARGO_PKG_VERSION`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
