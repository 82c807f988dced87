//! Tensor names in a model file: llama.cpp's for the LLaMA (`token_embd.weight`,
//! `blk.N.attn_q.weight`, ...), the original names under `v.` for the ViT and `mm.` for the
//! projector (`ln_vision`, `llama_proj`).

/// The prefix of the ViT's tensors.
pub(crate) const VIT_PREFIX: &str = "v.";
/// The prefix of the projector's tensors.
pub(crate) const PROJ_PREFIX: &str = "mm.";

/// llama.cpp's name of a Hugging Face LLaMA tensor.
pub(crate) fn llama_to_gguf(hf: &str) -> Option<String> {
    let fixed = match hf {
        "model.embed_tokens.weight" => Some("token_embd.weight"),
        "model.norm.weight" => Some("output_norm.weight"),
        "lm_head.weight" => Some("output.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let rest = hf.strip_prefix("model.layers.")?;
    let (layer, module) = rest.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let name = match module {
        "input_layernorm.weight" => "attn_norm.weight",
        "self_attn.q_proj.weight" => "attn_q.weight",
        "self_attn.k_proj.weight" => "attn_k.weight",
        "self_attn.v_proj.weight" => "attn_v.weight",
        "self_attn.o_proj.weight" => "attn_output.weight",
        "post_attention_layernorm.weight" => "ffn_norm.weight",
        "mlp.gate_proj.weight" => "ffn_gate.weight",
        "mlp.up_proj.weight" => "ffn_up.weight",
        "mlp.down_proj.weight" => "ffn_down.weight",
        _ => return None,
    };
    Some(format!("blk.{layer}.{name}"))
}

/// The Hugging Face name of a llama.cpp LLaMA tensor (the inverse of [`llama_to_gguf`]).
pub(crate) fn gguf_to_llama(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_owned());
    }
    let (layer, name) = gguf.strip_prefix("blk.")?.split_once('.')?;
    layer.parse::<usize>().ok()?;
    let module = match name {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{module}"))
}

/// Heads whose rows llama.cpp's files hold permuted: `q_proj` (query heads) and `k_proj`
/// (key/value heads). llama.cpp's converter reorders the rows of each head from Hugging Face's
/// rotate-half RoPE layout to the interleaved one llama.cpp computes with.
pub(crate) fn permuted_heads(hf: &str, heads: usize, kv_heads: usize) -> Option<usize> {
    if hf.ends_with("self_attn.q_proj.weight") {
        Some(heads)
    } else if hf.ends_with("self_attn.k_proj.weight") {
        Some(kv_heads)
    } else {
        None
    }
}

/// The Hugging Face row stored at row `r` of a permuted matrix of `rows` rows and `heads`
/// heads (llama.cpp's `permute`: within a head, row `2i + j` holds row `j * hd / 2 + i`).
pub(crate) fn hf_row(r: usize, rows: usize, heads: usize) -> usize {
    let hd = rows / heads;
    let (h, k) = (r / hd, r % hd);
    let (i, j) = (k / 2, k % 2);
    h * hd + j * (hd / 2) + i
}

/// The row of a permuted matrix that holds Hugging Face row `x` (the inverse of [`hf_row`]).
pub(crate) fn file_row(x: usize, rows: usize, heads: usize) -> usize {
    let hd = rows / heads;
    let (h, k) = (x / hd, x % hd);
    let (j, i) = (k / (hd / 2), k % (hd / 2));
    h * hd + 2 * i + j
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for hf in ["model.embed_tokens.weight", "model.layers.31.mlp.down_proj.weight", "lm_head.weight"] {
            assert_eq!(gguf_to_llama(&llama_to_gguf(hf).unwrap()).as_deref(), Some(hf));
        }
        assert_eq!(llama_to_gguf("model.layers.3.self_attn.q_proj.weight").as_deref(), Some("blk.3.attn_q.weight"));
        assert_eq!(llama_to_gguf("model.layers.x.self_attn.q_proj.weight"), None);
    }

    /// llama.cpp's permutation, spelled out for one head of 8 rows: rows 0..4 and 4..8 (the two
    /// rotate-half halves) interleave.
    #[test]
    fn rows_permute_as_llama_cpp() {
        let order: Vec<usize> = (0..8).map(|r| hf_row(r, 8, 1)).collect();
        assert_eq!(order, [0, 4, 1, 5, 2, 6, 3, 7]);
        for x in 0..64 {
            assert_eq!(hf_row(file_row(x, 64, 4), 64, 4), x);
        }
    }
}
