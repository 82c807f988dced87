//! Random weights with the exact key names and shapes of the real files, generated tensor by
//! tensor when the loader asks for them (nothing is written to disk or held twice).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::TensorSource;
use crate::config::{LlamaConfig, MiniGptMedConfig};
use crate::error::Result;

/// A tensor store whose f16 tensors are filled with N(0, 0.02^2) draws on each read.
pub(crate) struct SyntheticSource {
    origin: PathBuf,
    shapes: HashMap<String, Vec<usize>>,
}

impl TensorSource for SyntheticSource {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let shape = self.shape_of(name, "")?.to_vec();
        let n: usize = shape.iter().product();
        // One random block tiled over the tensor: drawing 7e9 normals one by one would make a
        // benchmark's "load" measure the random number generator instead of the loader.
        let block = random_block();
        let mut data: Vec<half::f16> = Vec::with_capacity(n);
        while data.len() < n {
            data.extend_from_slice(&block[..block.len().min(n - data.len())]);
        }
        Ok(Tensor::from_vec(data, shape, device)?)
    }
}

/// 65537 (prime, so rows of a power-of-two width do not repeat) draws from N(0, 0.02^2), in f16.
fn random_block() -> &'static [half::f16] {
    static BLOCK: std::sync::OnceLock<Vec<half::f16>> = std::sync::OnceLock::new();
    BLOCK.get_or_init(|| {
        let t = Tensor::randn(0f32, 0.02, 65537, &Device::Cpu).and_then(|t| t.to_vec1::<f32>());
        t.unwrap_or_else(|_| vec![0.01; 65537]).into_iter().map(half::f16::from_f32).collect()
    })
}

/// The ViT file, the MiniGPT-Med checkpoint and the LLaMA weights of a model with these
/// dimensions (the ViT file holds one block more than is used, like `eva_vit_g.pth`).
pub(crate) fn synthetic_sources(
    cfg: &MiniGptMedConfig,
    llama: &LlamaConfig,
) -> (SyntheticSource, SyntheticSource, SyntheticSource) {
    let v = &cfg.vision;
    let (d, p, g) = (v.width, v.patch_size, 224 / v.patch_size);
    let mut vit = HashMap::new();
    vit.insert("cls_token".to_owned(), vec![1, 1, d]);
    vit.insert("pos_embed".to_owned(), vec![1, 1 + g * g, d]);
    vit.insert("patch_embed.proj.weight".to_owned(), vec![d, 3, p, p]);
    vit.insert("patch_embed.proj.bias".to_owned(), vec![d]);
    for i in 0..=v.depth {
        for (k, s) in [
            ("norm1.weight", vec![d]),
            ("norm1.bias", vec![d]),
            ("norm2.weight", vec![d]),
            ("norm2.bias", vec![d]),
            ("attn.qkv.weight", vec![3 * d, d]),
            ("attn.q_bias", vec![d]),
            ("attn.v_bias", vec![d]),
            ("attn.proj.weight", vec![d, d]),
            ("attn.proj.bias", vec![d]),
            ("mlp.fc1.weight", vec![v.mlp_hidden, d]),
            ("mlp.fc1.bias", vec![v.mlp_hidden]),
            ("mlp.fc2.weight", vec![d, v.mlp_hidden]),
            ("mlp.fc2.bias", vec![d]),
        ] {
            vit.insert(format!("blocks.{i}.{k}"), s);
        }
    }
    let (h, r) = (llama.hidden_size, cfg.lora.r);
    let kv = llama.kv_heads() * llama.head_dim();
    let mut ckpt = HashMap::new();
    ckpt.insert("llama_proj.weight".to_owned(), vec![h, d * cfg.connector.tokens_per_group]);
    ckpt.insert("llama_proj.bias".to_owned(), vec![h]);
    let mut lm = HashMap::new();
    lm.insert("model.embed_tokens.weight".to_owned(), vec![llama.vocab_size, h]);
    lm.insert("model.norm.weight".to_owned(), vec![h]);
    lm.insert("lm_head.weight".to_owned(), vec![llama.vocab_size, h]);
    for l in 0..llama.num_hidden_layers {
        let i = llama.intermediate_size;
        for (k, s) in [
            ("input_layernorm.weight", vec![h]),
            ("post_attention_layernorm.weight", vec![h]),
            ("self_attn.q_proj.weight", vec![h, h]),
            ("self_attn.k_proj.weight", vec![kv, h]),
            ("self_attn.v_proj.weight", vec![kv, h]),
            ("self_attn.o_proj.weight", vec![h, h]),
            ("mlp.gate_proj.weight", vec![i, h]),
            ("mlp.up_proj.weight", vec![i, h]),
            ("mlp.down_proj.weight", vec![h, i]),
        ] {
            lm.insert(format!("model.layers.{l}.{k}"), s);
        }
        for (proj, out) in [("q_proj", h), ("v_proj", kv)] {
            let base = format!("llama_model.base_model.model.model.layers.{l}.self_attn.{proj}");
            ckpt.insert(format!("{base}.lora_A.weight"), vec![r, h]);
            ckpt.insert(format!("{base}.lora_B.weight"), vec![out, r]);
        }
    }
    let src = |name: &str, shapes| SyntheticSource { origin: PathBuf::from(format!("<synthetic {name}>")), shapes };
    (src("eva_vit_g.pth", vit), src("minigpt_med.pth", ckpt), src("llama", lm))
}
