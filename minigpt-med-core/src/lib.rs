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

mod answer;
mod config;
mod draw;
mod error;
pub mod gemm;
mod generate;
pub mod image;
mod llm;
mod model;
mod nn;
pub mod prompt;
pub mod quant;
mod task;
mod vision;
mod weights;

pub use answer::{Answer, BoundingBox, StopReason, Timings};
pub use config::{ConnectorConfig, LlamaConfig, LoraConfig, MiniGptMedConfig, ModelFiles, VisionConfig};
pub use draw::{draw_boxes, PALETTE};
pub use error::{Error, Result};
pub use generate::{GenerateOptions, Sampling};
pub use image::{ColorMode, DicomInfo, Image, ImageOptions, ModelView, Pixels, Window, WindowPreset};
pub use llm::KvCache;
pub use model::{
    Chat, ChatHistory, Device, EncodeStages, ImageEmbeddings, LoadOptions, LoadProgress, Model, ModelInfo, ProgressFn,
};
pub use nn::WeightDType;
pub use prompt::{Prompt, TextCodec};
pub use task::{format_grid_box, Region, Task};
pub use vision::interpolate_pos_embed;

/// The tensor library the engine is built on, re-exported for callers that inspect stages.
pub use candle_core as candle;

/// Sets the CPU threads used for matrix work (candle's rayon pool and its quantized-matmul
/// pool). Both pools read this once, when first used: call it before loading a model. Same as
/// setting `RAYON_NUM_THREADS` and `CANDLE_NUM_THREADS`; the default is every physical core.
pub fn set_threads(n: usize) -> Result<()> {
    if n == 0 {
        return Err(Error::InvalidOption("threads must be at least 1".into()));
    }
    std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    std::env::set_var("CANDLE_NUM_THREADS", n.to_string());
    Ok(())
}

/// Crate version (`CARGO_PKG_VERSION`).
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
