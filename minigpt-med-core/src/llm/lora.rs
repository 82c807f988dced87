//! The MiniGPT-Med LoRA adapters, read from the checkpoint and merged into the base weights at
//! load: `W += (B @ A) * alpha / r`.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::config::{LlamaConfig, LoraConfig};
use crate::error::{Error, Result};
use crate::weights::TensorSource;

/// Key names of the adapters of one projection.
struct Pair {
    a: String,
    b: String,
}

/// The adapters found in a checkpoint, keyed by (layer, module path such as `self_attn.q_proj`).
pub(crate) struct LoraDeltas<'a> {
    src: &'a dyn TensorSource,
    pairs: HashMap<(usize, String), Pair>,
    scale: f64,
    device: Device,
}

impl<'a> LoraDeltas<'a> {
    /// No adapters at all: a model file holds them merged already (and tests of the base
    /// model's loading).
    pub(crate) fn none(src: &'a dyn TensorSource) -> Self {
        Self { src, pairs: HashMap::new(), scale: 0.0, device: Device::Cpu }
    }

    /// Finds every `...layers.{i}.{module}.lora_{A,B}[.default].weight` pair in `src` and checks
    /// them against the LLaMA dimensions.
    pub(crate) fn find(
        src: &'a dyn TensorSource,
        lora: &LoraConfig,
        llama: &LlamaConfig,
        device: &Device,
    ) -> Result<Self> {
        let mut a_keys = HashMap::new();
        let mut b_keys = HashMap::new();
        for name in src.shapes().keys() {
            let Some((layer, module, which)) = parse_key(name) else { continue };
            let slot = if which == 'A' { &mut a_keys } else { &mut b_keys };
            slot.insert((layer, module), name.clone());
        }
        let mut pairs = HashMap::new();
        for (key, a) in a_keys {
            let b = b_keys.remove(&key).ok_or_else(|| Error::MissingTensor {
                name: a.replace("lora_A", "lora_B"),
                path: src.origin().to_owned(),
                hint: "the checkpoint has a LoRA A matrix without its B partner; the file is incomplete".into(),
            })?;
            pairs.insert(key, Pair { a, b });
        }
        if pairs.is_empty() {
            return Err(Error::WeightsFormat {
                path: src.origin().to_owned(),
                expected: "MiniGPT-Med checkpoint".into(),
                reason: "it holds no LoRA weights (…layers.N.self_attn.q_proj.lora_A.weight); \
                         --checkpoint must be the MiniGPT-Med .pth, not a base model"
                    .into(),
            });
        }
        let h = llama.hidden_size;
        for ((layer, module), pair) in &pairs {
            let a = src.shape_of(&pair.a, "")?;
            let b = src.shape_of(&pair.b, "")?;
            let in_dim = a.get(1).copied().unwrap_or(0);
            let Some((out, input)) = base_shape(module, llama) else {
                return Err(Error::WeightsFormat {
                    path: src.origin().to_owned(),
                    expected: "MiniGPT-Med checkpoint".into(),
                    reason: format!("{} adapts `{module}`, which LLaMA does not have", pair.a),
                });
            };
            // B must be `[out, r]` for the projection it adapts; its size is read from the file,
            // so it is checked before anything is allocated for it.
            if b != [out, lora.r] && a.len() == 2 && a[0] == lora.r && in_dim == input {
                return Err(Error::ShapeMismatch {
                    name: pair.b.clone(),
                    expected: vec![out, lora.r],
                    found: b.to_vec(),
                    hint: format!("the adapter of {module} must project rank {} back to width {out}", lora.r),
                });
            }
            if a.len() != 2 || b.len() != 2 || a[0] != lora.r || b[1] != lora.r {
                return Err(Error::ShapeMismatch {
                    name: pair.a.clone(),
                    expected: vec![lora.r, h],
                    found: a.to_vec(),
                    hint: format!("lora.r is {} in the model config; B is {:?}", lora.r, b),
                });
            }
            if in_dim != input || *layer >= llama.num_hidden_layers {
                return Err(Error::ShapeMismatch {
                    name: pair.a.clone(),
                    expected: vec![lora.r, h],
                    found: a.to_vec(),
                    hint: format!(
                        "the checkpoint was trained for a {} LLaMA (width {in_dim}, layer {layer}) but --llama holds a \
                         {} model (width {h}, {} layers); use the matching Llama-2-chat weights",
                        LlamaConfig::size_name(in_dim),
                        LlamaConfig::size_name(h),
                        llama.num_hidden_layers
                    ),
                });
            }
        }
        for target in &lora.targets {
            if !pairs.keys().any(|(_, m)| m.ends_with(&format!(".{target}")) || m == target) {
                return Err(Error::Config {
                    path: src.origin().to_owned(),
                    reason: format!("lora.targets lists {target} but the checkpoint has no adapter for it"),
                });
            }
        }
        Ok(Self { src, pairs, scale: lora.scale(), device: device.clone() })
    }

    /// `(B @ A) * alpha / r` for `module` of `layer` (f32), or `None` without an adapter there.
    pub(crate) fn delta(&self, layer: usize, module: &str) -> Result<Option<Tensor>> {
        let Some(pair) = self.pairs.get(&(layer, module.to_owned())) else { return Ok(None) };
        // Shapes were checked in `find`; read through `get` so they are checked again here.
        let (a_shape, b_shape) = (self.src.shape_of(&pair.a, "")?.to_vec(), self.src.shape_of(&pair.b, "")?.to_vec());
        let a = self.src.get(&pair.a, &a_shape, DType::F32, &self.device, "")?;
        let b = self.src.get(&pair.b, &b_shape, DType::F32, &self.device, "")?;
        Ok(Some((b.matmul(&a)? * self.scale)?))
    }
}

/// `(out, in)` of the LLaMA projection `module` (`self_attn.q_proj`, `mlp.down_proj`, ...).
fn base_shape(module: &str, llama: &LlamaConfig) -> Option<(usize, usize)> {
    let (h, i, kv) = (llama.hidden_size, llama.intermediate_size, llama.kv_heads() * llama.head_dim());
    Some(match module {
        "self_attn.q_proj" | "self_attn.o_proj" => (h, h),
        "self_attn.k_proj" | "self_attn.v_proj" => (kv, h),
        "mlp.gate_proj" | "mlp.up_proj" => (i, h),
        "mlp.down_proj" => (h, i),
        _ => return None,
    })
}

/// `…layers.{i}.{module}.lora_{A|B}[.default].weight` -> (i, module, 'A' | 'B').
fn parse_key(name: &str) -> Option<(usize, String, char)> {
    let rest = &name[name.find("layers.")? + "layers.".len()..];
    let (idx, rest) = rest.split_once('.')?;
    let layer = idx.parse().ok()?;
    let rest = rest.strip_suffix(".weight")?;
    let rest = rest.strip_suffix(".default").unwrap_or(rest);
    let (module, which) =
        if let Some(m) = rest.strip_suffix(".lora_A") { (m, 'A') } else { (rest.strip_suffix(".lora_B")?, 'B') };
    Some((layer, module.to_owned(), which))
}

#[cfg(test)]
mod tests {
    use super::parse_key;

    #[test]
    fn parses_old_and_new_peft_keys() {
        let old = "llama_model.base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight";
        let new = "llama_model.base_model.model.model.layers.31.self_attn.v_proj.lora_B.default.weight";
        assert_eq!(parse_key(old), Some((3, "self_attn.q_proj".into(), 'A')));
        assert_eq!(parse_key(new), Some((31, "self_attn.v_proj".into(), 'B')));
        assert_eq!(parse_key("llama_proj.weight"), None);
        assert_eq!(parse_key("model.layers.0.self_attn.q_proj.weight"), None);
    }
}
