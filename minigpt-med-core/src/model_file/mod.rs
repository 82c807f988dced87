//! The converted model file: one GGUF holding the LLaMA with LoRA merged (llama.cpp's tensor
//! names and keys, so its tools read it), the ViT with its position table interpolated, the
//! projector, the tokenizer and MiniGPT-Med's settings. [`convert`] writes it from the three
//! original files; [`crate::Model::open`] maps it.
//!
//! Every tensor is stored as the loader would hand it to the layer it builds (quantized in
//! llama.cpp's blocks where the layer is quantized, otherwise in the narrowest of F16/F32 that
//! holds its values exactly), so a converted file answers bit-identically to the original
//! files loaded with the same dtype.

mod convert;
mod names;
mod view;

use std::path::Path;
use std::sync::Arc;

pub use convert::{convert, convert_synthetic, ConvertOptions, ConvertSummary};
pub(crate) use view::GgufView;

use crate::config::{LlamaConfig, MiniGptMedConfig};
use crate::error::{Error, Result};
use crate::nn::WeightDType;
use crate::prompt::TextCodec;
use crate::weights::gguf::{GgufFile, MetaValue};

/// The `minigpt_med.format_version` written and read.
pub const FORMAT_VERSION: u32 = 1;

/// Metadata keys of MiniGPT-Med's own settings.
pub(crate) mod keys {
    pub const FORMAT_VERSION: &str = "minigpt_med.format_version";
    pub const ENGINE_VERSION: &str = "minigpt_med.engine_version";
    pub const CONFIG: &str = "minigpt_med.config";
    pub const LLAMA_CONFIG: &str = "minigpt_med.llama_config";
    pub const LLM_DTYPE: &str = "minigpt_med.llm_dtype";
    pub const VIT_DTYPE: &str = "minigpt_med.vit_dtype";
    pub const PROMPT_TEMPLATE: &str = "minigpt_med.prompt_template";
    pub const IMAGE_SIZE: &str = "minigpt_med.image_size";
    pub const TASKS: &str = "minigpt_med.tasks";
    pub const TOKENIZER_JSON: &str = "tokenizer.huggingface.json";
}

/// What a model file holds, read from its metadata: everything [`crate::Model::open`] needs
/// besides the tensors.
pub(crate) struct Opened {
    pub file: Arc<GgufFile>,
    pub cfg: MiniGptMedConfig,
    pub llama: LlamaConfig,
    pub codec: TextCodec,
    /// The LLM dtype the file was converted to (a quantized one is the model's).
    pub llm_dtype: WeightDType,
}

/// Opens a model file and reads its settings, checking them against llama.cpp's keys.
pub(crate) fn open(path: &Path) -> Result<Opened> {
    let file = Arc::new(GgufFile::open(path)?);
    let err = |reason: String| Error::WeightsFormat {
        path: path.to_owned(),
        expected: "MiniGPT-Med model file (minigpt-med convert)".into(),
        reason,
    };
    match file.get(keys::FORMAT_VERSION).and_then(MetaValue::as_u64) {
        Some(v) if v == u64::from(FORMAT_VERSION) => {}
        Some(v) => {
            return Err(err(format!(
                "model file format {v}; this engine reads format {FORMAT_VERSION}: convert the original files again"
            )))
        }
        None => {
            let arch = file.get("general.architecture").and_then(MetaValue::as_str).unwrap_or("unknown");
            return Err(err(format!(
                "a GGUF of architecture {arch:?} without MiniGPT-Med's keys (no ViT or projector): a plain \
                 LLaMA or another model; convert the MiniGPT-Med files with `minigpt-med convert`"
            )));
        }
    }
    let text = |key: &str| -> Result<&str> {
        file.get(key).and_then(MetaValue::as_str).ok_or_else(|| err(format!("metadata key {key} is missing")))
    };
    let llama = LlamaConfig::from_json(text(keys::LLAMA_CONFIG)?, path)?;
    check_llama_keys(&file, &llama).map_err(err)?;
    let cfg = MiniGptMedConfig::from_json(text(keys::CONFIG)?, path)?;
    cfg.validate(path)?;
    let codec = TextCodec::from_json(text(keys::TOKENIZER_JSON)?.as_bytes(), path)?;
    if codec.vocab_size() > llama.vocab_size {
        return Err(err(format!(
            "the tokenizer has {} tokens but the model {}; the file is inconsistent",
            codec.vocab_size(),
            llama.vocab_size
        )));
    }
    let dtype =
        |key: &str| -> Result<WeightDType> { text(key)?.parse().map_err(|_| err(format!("{key} is not a dtype"))) };
    Ok(Opened { llm_dtype: dtype(keys::LLM_DTYPE)?, file, cfg, llama, codec })
}

/// llama.cpp's `llama.*` keys as this engine's config gives them.
pub(crate) fn llama_keys(c: &LlamaConfig) -> Vec<(&'static str, MetaValue)> {
    let u = |v: usize| MetaValue::U32(v as u32);
    vec![
        ("llama.context_length", u(c.max_position_embeddings)),
        ("llama.embedding_length", u(c.hidden_size)),
        ("llama.block_count", u(c.num_hidden_layers)),
        ("llama.feed_forward_length", u(c.intermediate_size)),
        ("llama.rope.dimension_count", u(c.head_dim())),
        ("llama.attention.head_count", u(c.num_attention_heads)),
        ("llama.attention.head_count_kv", u(c.kv_heads())),
        ("llama.attention.layer_norm_rms_epsilon", MetaValue::F32(c.rms_norm_eps as f32)),
        ("llama.rope.freq_base", MetaValue::F32(c.rope_theta as f32)),
        ("llama.vocab_size", u(c.vocab_size)),
    ]
}

/// The file's `llama.*` keys must say what its config says (a file edited by another tool
/// could disagree; which one would be right cannot be known).
fn check_llama_keys(file: &GgufFile, c: &LlamaConfig) -> std::result::Result<(), String> {
    for (key, want) in llama_keys(c) {
        let Some(found) = file.get(key) else { continue };
        let same = match (&want, found) {
            (MetaValue::F32(a), b) => b.as_f64().is_some_and(|b| (b as f32) == *a),
            (a, b) => a.as_u64().is_some() && a.as_u64() == b.as_u64(),
        };
        if !same {
            return Err(format!("{key} is {} but the model config says {}", found.summary(), want.summary()));
        }
    }
    match file.get("general.architecture").and_then(MetaValue::as_str) {
        Some("llama") => Ok(()),
        other => Err(format!("general.architecture is {other:?}, not \"llama\"")),
    }
}
