//! The connector between the ViT and LLaMA: `ln_vision`, the cls token dropped, every
//! `tokens_per_group` adjacent patch tokens concatenated, and `llama_proj` into LLaMA's width.

use candle_core::{DType, Device, Tensor, D};

use crate::config::{LlamaConfig, MiniGptMedConfig};
use crate::error::{Error, Result};
use crate::nn::{LayerNorm, Linear, WeightDType};
use crate::weights::TensorSource;

const CKPT_HINT: &str = "--checkpoint must be the MiniGPT-Med checkpoint (.pth with llama_proj and LoRA weights)";

/// `ln_vision` + cls drop + grouping + `llama_proj`: ViT tokens to LLaMA input embeddings.
pub(crate) struct Connector {
    ln_vision: LayerNorm,
    group: usize,
    proj: Linear,
}

impl Connector {
    /// Loads `llama_proj` (and `ln_vision`, when the checkpoint has it) from the MiniGPT-Med
    /// checkpoint, checking its shape against the ViT width, the group size and LLaMA's width.
    pub(crate) fn load(
        ckpt: &dyn TensorSource,
        cfg: &MiniGptMedConfig,
        llama: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        let d = cfg.vision.width;
        let in_dim = d * cfg.connector.tokens_per_group;
        let h = llama.hidden_size;
        let w_shape = ckpt.shape_of("llama_proj.weight", CKPT_HINT)?.to_vec();
        if w_shape.len() != 2 || w_shape[1] != in_dim || w_shape[0] != h {
            let hint = if w_shape.len() == 2 && w_shape[0] != h {
                format!(
                    "the checkpoint projects to width {} ({} LLaMA) but --llama holds a {} model (width {h}); \
                     use the LLaMA-2-chat the checkpoint was trained with",
                    w_shape[0],
                    LlamaConfig::size_name(w_shape[0]),
                    LlamaConfig::size_name(h)
                )
            } else {
                format!(
                    "expects {} ViT tokens of width {d} per group; check vision.width and connector.tokens_per_group",
                    cfg.connector.tokens_per_group
                )
            };
            return Err(Error::ShapeMismatch {
                name: "llama_proj.weight".into(),
                expected: vec![h, in_dim],
                found: w_shape,
                hint,
            });
        }
        let w = ckpt.get("llama_proj.weight", &[h, in_dim], DType::F32, device, CKPT_HINT)?;
        let b = ckpt.get("llama_proj.bias", &[h], DType::F32, device, CKPT_HINT)?;
        // `ln_vision` is frozen during training, so checkpoints normally lack it: identity affine.
        let ln = if ckpt.shapes().contains_key("ln_vision.weight") {
            LayerNorm::new(
                ckpt.get("ln_vision.weight", &[d], DType::F32, device, CKPT_HINT)?,
                ckpt.get("ln_vision.bias", &[d], DType::F32, device, CKPT_HINT)?,
                cfg.vision.ln_vision_eps,
            )?
        } else {
            LayerNorm::new(
                Tensor::ones(d, DType::F32, device)?,
                Tensor::zeros(d, DType::F32, device)?,
                cfg.vision.ln_vision_eps,
            )?
        };
        Ok(Self {
            ln_vision: ln,
            group: cfg.connector.tokens_per_group,
            proj: Linear::new(w, Some(b), WeightDType::F32)?,
        })
    }

    /// The checkpoint tensors [`Self::load`] reads, with their stored shapes.
    pub(crate) fn tensor_shapes(ckpt: &dyn TensorSource) -> Vec<(String, Vec<usize>)> {
        ["llama_proj.weight", "llama_proj.bias", "ln_vision.weight", "ln_vision.bias"]
            .iter()
            .filter_map(|n| Some((n.to_string(), ckpt.shapes().get(*n)?.clone())))
            .collect()
    }

    /// `ln_vision(vit_tokens)` `[1 + n, width]` (the features the reference calls `vit_features`).
    pub(crate) fn normalize(&self, vit_tokens: &Tensor) -> Result<Tensor> {
        self.ln_vision.forward(vit_tokens)
    }

    /// Normalised features `[1 + n, width]` -> image embeddings `[n / group, hidden]`.
    pub(crate) fn project(&self, features: &Tensor) -> Result<Tensor> {
        let (n1, d) = features.dims2()?;
        let n = n1 - 1;
        let grouped = features.narrow(D::Minus2, 1, n)?.contiguous()?.reshape((n / self.group, self.group * d))?;
        self.proj.forward(&grouped)
    }
}
