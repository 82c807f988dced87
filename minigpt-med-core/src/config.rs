//! Model dimensions: the optional `minigpt_med.json` (vision, connector, LoRA) and the HF LLaMA
//! `config.json`. Defaults are the real MiniGPT-Med; every value is cross-checked against the
//! weights at load time, so a config can only add what the weights cannot tell (the ViT head count).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// EVA ViT-g dimensions (`"vision"` in `minigpt_med.json`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct VisionConfig {
    /// Input side in pixels (448 for MiniGPT-Med).
    pub image_size: usize,
    /// Patch side in pixels (14).
    pub patch_size: usize,
    /// Token width D (1408).
    pub width: usize,
    /// Blocks used (39 of the 40 stored in `eva_vit_g.pth`).
    pub depth: usize,
    /// Attention heads (16); not derivable from the weights.
    pub heads: usize,
    /// MLP hidden width (6144 = int(1408 * 4.3637)).
    pub mlp_hidden: usize,
    /// LayerNorm epsilon inside the blocks (1e-6).
    pub layer_norm_eps: f64,
    /// Epsilon of the weightless `ln_vision` after the ViT (1e-5).
    pub ln_vision_eps: f64,
}

impl Default for VisionConfig {
    fn default() -> Self {
        Self {
            image_size: 448,
            patch_size: 14,
            width: 1408,
            depth: 39,
            heads: 16,
            mlp_hidden: 6144,
            layer_norm_eps: 1e-6,
            ln_vision_eps: 1e-5,
        }
    }
}

impl VisionConfig {
    /// Patches per side (32 at 448 px).
    pub fn grid(&self) -> usize {
        self.image_size / self.patch_size
    }

    /// Floating-point operations (a multiply-add counts two) of one image's encode: the patch
    /// embedding and, per block, the q/k/v, output and two MLP products and the attention's
    /// two `N x N` products over the `N = grid^2 + 1` tokens (norms, softmax and GELU, under 1 %,
    /// left out). ~2.25 TFLOP for EVA ViT-g at 448 px: what `bench` divides the encode time by.
    pub fn encode_flops(&self) -> f64 {
        self.encode_gemm_flops() + self.encode_attention_flops()
    }

    /// The part of [`Self::encode_flops`] in products with a weight matrix: the patch
    /// embedding and each block's q/k/v, output, fc1 and fc2 (~2.02 TFLOP for ViT-g at 448 px).
    pub fn encode_gemm_flops(&self) -> f64 {
        let (g, d, f) = (self.grid() as f64, self.width as f64, self.mlp_hidden as f64);
        let n = g * g + 1.0;
        let patch = 2.0 * g * g * (3.0 * (self.patch_size * self.patch_size) as f64) * d;
        patch + self.depth as f64 * 2.0 * n * d * (3.0 * d + d + 2.0 * f)
    }

    /// The part of [`Self::encode_flops`] in the attention's `q k^T` and `p v` products
    /// (`4 N^2 width` per block; ~0.23 TFLOP for ViT-g at 448 px).
    pub fn encode_attention_flops(&self) -> f64 {
        let n = (self.grid() * self.grid() + 1) as f64;
        self.depth as f64 * 4.0 * n * n * self.width as f64
    }
}

/// How patch tokens become LLM tokens (`"connector"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConnectorConfig {
    /// Consecutive (raster-order) patch tokens concatenated into one LLM token (4).
    pub tokens_per_group: usize,
}

impl Default for ConnectorConfig {
    fn default() -> Self {
        Self { tokens_per_group: 4 }
    }
}

/// LoRA adapter settings (`"lora"`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LoraConfig {
    /// Rank (64).
    pub r: usize,
    /// Alpha (16); the merged update is `B @ A * alpha / r`.
    pub alpha: f64,
    /// Projection names carrying adapters (`q_proj`, `v_proj`).
    pub targets: Vec<String>,
}

impl Default for LoraConfig {
    fn default() -> Self {
        Self { r: 64, alpha: 16.0, targets: vec!["q_proj".into(), "v_proj".into()] }
    }
}

impl LoraConfig {
    /// `alpha / r`, the factor applied to `B @ A`.
    pub fn scale(&self) -> f64 {
        self.alpha / self.r as f64
    }
}

/// The MiniGPT-Med model config (`minigpt_med.json`); every field optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct MiniGptMedConfig {
    /// Vision encoder dimensions.
    pub vision: VisionConfig,
    /// Patch-token grouping.
    pub connector: ConnectorConfig,
    /// LoRA settings.
    pub lora: LoraConfig,
}

impl MiniGptMedConfig {
    /// Reads a `minigpt_med.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| Error::io(path, e, "expected a minigpt_med.json model config"))?;
        Self::from_json(&text, path)
    }

    /// Parses the text of a `minigpt_med.json` (`path` names it in errors); not yet validated.
    pub(crate) fn from_json(text: &str, path: &Path) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: format!("{e} (fields: vision, connector, lora; see the README)"),
        })
    }

    pub(crate) fn validate(&self, path: &Path) -> Result<()> {
        let v = &self.vision;
        let bad = |reason: String| Err(Error::Config { path: path.to_owned(), reason });
        // Every size below sets an allocation: bounded before anything is built from it.
        within(path, "vision.image_size", v.image_size, 4096)?;
        within(path, "vision.patch_size", v.patch_size, 1024)?;
        within(path, "vision.width", v.width, 1 << 15)?;
        within(path, "vision.depth", v.depth, 512)?;
        within(path, "vision.heads", v.heads, 1024)?;
        within(path, "vision.mlp_hidden", v.mlp_hidden, 1 << 17)?;
        within(path, "connector.tokens_per_group", self.connector.tokens_per_group, 1 << 12)?;
        within(path, "lora.r", self.lora.r, 1 << 14)?;
        positive_eps(path, "vision.layer_norm_eps", v.layer_norm_eps)?;
        positive_eps(path, "vision.ln_vision_eps", v.ln_vision_eps)?;
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision.image_size {} must be a positive multiple of vision.patch_size {}",
                v.image_size, v.patch_size
            ));
        }
        if v.heads == 0 || !v.width.is_multiple_of(v.heads) {
            return bad(format!("vision.width {} is not divisible by vision.heads {}", v.width, v.heads));
        }
        let tokens = v.grid() * v.grid();
        let g = self.connector.tokens_per_group;
        if g == 0 || !tokens.is_multiple_of(g) || !v.grid().is_multiple_of(g) {
            return bad(format!("connector.tokens_per_group {g} must divide the {} patches of a grid row", v.grid()));
        }
        if !(self.lora.alpha.is_finite()) {
            return bad(format!("lora.alpha {} must be a finite number", self.lora.alpha));
        }
        Ok(())
    }
}

/// `value` must be in `1..=max`; the error names the key and both bounds.
fn within(path: &Path, key: &str, value: usize, max: usize) -> Result<()> {
    if value == 0 || value > max {
        return Err(Error::Config {
            path: path.to_owned(),
            reason: format!("{key} is {value}; it must be between 1 and {max}"),
        });
    }
    Ok(())
}

/// An epsilon must be a finite number above 0.
fn positive_eps(path: &Path, key: &str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(Error::Config {
            path: path.to_owned(),
            reason: format!("{key} {value} must be a finite number > 0"),
        });
    }
    Ok(())
}

/// The LLaMA dimensions read from an HF `config.json`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct LlamaConfig {
    /// Model width (4096 for 7B).
    pub hidden_size: usize,
    /// MLP width (11008 for 7B).
    pub intermediate_size: usize,
    /// Decoder layers (32 for 7B).
    pub num_hidden_layers: usize,
    /// Query heads (32 for 7B).
    pub num_attention_heads: usize,
    /// Key/value heads (equal to query heads for LLaMA-2-7B).
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Vocabulary size (32000).
    pub vocab_size: usize,
    /// RMSNorm epsilon (1e-5 for LLaMA-2; older files say 1e-6).
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base (10000).
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Context length (4096).
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// Beginning-of-sequence id (1).
    #[serde(default = "default_bos")]
    pub bos_token_id: u32,
    /// End-of-sequence id (2).
    #[serde(default = "default_eos")]
    pub eos_token_id: u32,
    /// Whether `lm_head` shares the embedding matrix (false for LLaMA-2).
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10000.0
}
fn default_max_pos() -> usize {
    4096
}
fn default_bos() -> u32 {
    1
}
fn default_eos() -> u32 {
    2
}

impl LlamaConfig {
    /// Reads `config.json` from an HF LLaMA directory.
    pub fn from_dir(dir: &Path) -> Result<Self> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path)
            .map_err(|e| Error::io(&path, e, "--llama must be a Hugging Face Llama-2-7b-chat-hf directory"))?;
        Self::from_json(&text, &path)
    }

    /// Parses and validates the text of a `config.json` (`path` names it in errors).
    pub(crate) fn from_json(text: &str, path: &Path) -> Result<Self> {
        let cfg: Self =
            serde_json::from_str(text).map_err(|e| Error::Config { path: path.to_owned(), reason: e.to_string() })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// LLaMA-2-7B's dimensions (what MiniGPT-Med uses).
    pub fn llama2_7b() -> Self {
        Self {
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: Some(32),
            vocab_size: 32000,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            max_position_embeddings: 4096,
            bos_token_id: 1,
            eos_token_id: 2,
            tie_word_embeddings: false,
        }
    }

    /// Key/value heads (defaults to the query heads).
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    fn validate(&self, path: &Path) -> Result<()> {
        let bad = |reason: String| Err(Error::Config { path: path.to_owned(), reason });
        // Every size below sets an allocation (the RoPE tables are `max_position_embeddings x
        // head_dim`): bounded before anything is built from it.
        within(path, "hidden_size", self.hidden_size, 1 << 16)?;
        within(path, "intermediate_size", self.intermediate_size, 1 << 18)?;
        within(path, "num_hidden_layers", self.num_hidden_layers, 1024)?;
        within(path, "num_attention_heads", self.num_attention_heads, 1024)?;
        within(path, "vocab_size", self.vocab_size, 1 << 22)?;
        within(path, "max_position_embeddings", self.max_position_embeddings, 1 << 18)?;
        positive_eps(path, "rms_norm_eps", self.rms_norm_eps)?;
        positive_eps(path, "rope_theta", self.rope_theta)?;
        for (key, id) in [("bos_token_id", self.bos_token_id), ("eos_token_id", self.eos_token_id)] {
            if id as usize >= self.vocab_size {
                return bad(format!("{key} {id} is outside the vocabulary of {}", self.vocab_size));
            }
        }
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad("the attention head width must be even for RoPE".into());
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad("num_attention_heads must be a multiple of num_key_value_heads".into());
        }
        Ok(())
    }

    /// A human name for the size, used in error messages ("7B", "13B", ...).
    pub fn size_name(hidden: usize) -> &'static str {
        match hidden {
            4096 => "7B",
            5120 => "13B",
            6656 => "30B",
            8192 => "70B",
            _ => "non-standard",
        }
    }
}

/// Where the three files of a MiniGPT-Med model live.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelFiles {
    /// HF LLaMA-2-7b-chat directory (config.json, tokenizer.json, safetensors or .bin shards).
    pub llama_dir: PathBuf,
    /// `eva_vit_g.pth` (LAVIS key names).
    pub vit: PathBuf,
    /// MiniGPT-Med checkpoint `.pth` (state dict under `model`).
    pub checkpoint: PathBuf,
    /// Optional `minigpt_med.json`; defaults are the real model's.
    pub config: Option<PathBuf>,
}

impl ModelFiles {
    /// The files as the original project distributes them.
    pub fn original(llama_dir: impl Into<PathBuf>, vit: impl Into<PathBuf>, checkpoint: impl Into<PathBuf>) -> Self {
        Self { llama_dir: llama_dir.into(), vit: vit.into(), checkpoint: checkpoint.into(), config: None }
    }

    /// Adds a `minigpt_med.json` model config.
    pub fn with_config(mut self, config: impl Into<PathBuf>) -> Self {
        self.config = Some(config.into());
        self
    }

    /// A directory laid out like the bundled tiny model: `llama-2-7b-chat-hf/`, `eva_vit_g.pth`,
    /// `minigpt_med.pth` and, if present, `minigpt_med.json`.
    pub fn from_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        let config = dir.join("minigpt_med.json");
        Self {
            llama_dir: dir.join("llama-2-7b-chat-hf"),
            vit: dir.join("eva_vit_g.pth"),
            checkpoint: dir.join("minigpt_med.pth"),
            config: config.exists().then_some(config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// EVA ViT-g at 448 px, counted by hand: patch embedding 2 * 1024 * 588 * 1408, and per
    /// block (1025 tokens) q/k/v 2 * 1025 * 1408 * 4224, proj 2 * 1025 * 1408^2, fc1 + fc2
    /// 4 * 1025 * 1408 * 6144, attention 4 * 1025^2 * 1408, times 39 blocks.
    #[test]
    fn encode_flops_count_every_product_of_vit_g() {
        assert_eq!(VisionConfig::default().encode_flops(), 2_249_710_459_392.0);
        let tiny =
            VisionConfig { image_size: 28, patch_size: 14, width: 8, depth: 2, mlp_hidden: 16, ..Default::default() };
        // 4 patches of 588 values, 5 tokens: 2*4*588*8 + 2 * (2*5*8*(24 + 8 + 32) + 4*25*8).
        assert_eq!(tiny.encode_flops(), 37632.0 + 2.0 * (5120.0 + 800.0));
        assert_eq!(tiny.encode_attention_flops(), 2.0 * 800.0);
        assert_eq!(VisionConfig::default().encode_attention_flops(), 39.0 * 4.0 * 1025.0 * 1025.0 * 1408.0);
    }
}
