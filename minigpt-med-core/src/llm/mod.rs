//! LLaMA-2 (HF layout) with the MiniGPT-Med LoRA merged in, taking input embeddings so image
//! tokens can be spliced into the prompt.

mod cache;
mod lora;

use candle_core::{DType, Device, Tensor};
use rayon::prelude::*;

pub use cache::{KvCache, KvDType};
pub(crate) use lora::LoraDeltas;

use crate::config::LlamaConfig;
use crate::error::{Error, Result};
use crate::nn::{with_f32_slice, Linear, WeightDType};
use crate::weights::TensorSource;

/// The seven projections of a decoder layer: module path and `[out, in]` shape.
pub(crate) fn layer_matrices(cfg: &LlamaConfig) -> [(&'static str, [usize; 2]); 7] {
    let (h, i) = (cfg.hidden_size, cfg.intermediate_size);
    let kv = cfg.kv_heads() * cfg.head_dim();
    [
        ("self_attn.q_proj", [h, h]),
        ("self_attn.k_proj", [kv, h]),
        ("self_attn.v_proj", [kv, h]),
        ("self_attn.o_proj", [h, h]),
        ("mlp.gate_proj", [i, h]),
        ("mlp.up_proj", [i, h]),
        ("mlp.down_proj", [h, i]),
    ]
}

/// The weight [`Linear::new`] is given for `module` of layer `l`: the stored matrix, with the
/// LoRA delta merged in (in f32) where the checkpoint adapts it.
pub(crate) fn layer_matrix(
    src: &dyn TensorSource,
    lora: &LoraDeltas,
    l: usize,
    module: &str,
    shape: [usize; 2],
    dtype: WeightDType,
    device: &Device,
) -> Result<Tensor> {
    let name = format!("model.layers.{l}.{module}.weight");
    match lora.delta(l, module)? {
        Some(delta) => Ok((src.get(&name, &shape, DType::F32, device, LLAMA_HINT)? + delta)?),
        None => stored_matrix(src, &name, shape, dtype, device),
    }
}

/// A matrix as stored, for quantizing on the CPU straight from the file's fp16 rows (no f32
/// copy), else in f32.
pub(crate) fn stored_matrix(
    src: &dyn TensorSource,
    name: &str,
    shape: [usize; 2],
    dtype: WeightDType,
    device: &Device,
) -> Result<Tensor> {
    if dtype.is_quantized() && matches!(device, Device::Cpu) {
        src.get_stored(name, &shape, device, LLAMA_HINT)
    } else {
        src.get(name, &shape, DType::F32, device, LLAMA_HINT)
    }
}

/// Where `lm_head` is read from: its own matrix, or the embeddings when they are tied.
pub(crate) fn lm_head_name(src: &dyn TensorSource, cfg: &LlamaConfig) -> &'static str {
    if cfg.tie_word_embeddings && !src.shapes().contains_key("lm_head.weight") {
        "model.embed_tokens.weight"
    } else {
        "lm_head.weight"
    }
}

struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

impl Layer {
    /// The feed-forward block, `down(silu(gate(h)) * up(h))`, gate and up in one pass.
    fn mlp(&self, h: &Tensor) -> Result<Tensor> {
        let [gate, up] = Linear::forward_many([&self.gate, &self.up], h)?;
        self.down.forward(&elementwise(
            &gate,
            &up,
            |g, u| g / (1.0 + (-g).exp()) * u,
            |g, u| candle_nn::ops::silu(g)? * u,
        )?)
    }
}

/// `f` of two same-shaped f32 tensors, element by element, in one plain pass on the CPU
/// (`fallback` elsewhere). candle's elementwise ops hand even a decode step's small tensors to
/// its own spinning thread pool, which then competes with the matrix kernels' threads for the
/// cores (~3 % of a batched decode step in `perf`). `f` repeats candle's arithmetic (its
/// `silu` is `v / (1 + exp(-v))`), so the results are the same bits.
fn elementwise(
    a: &Tensor,
    b: &Tensor,
    f: impl Fn(f32, f32) -> f32,
    fallback: impl FnOnce(&Tensor, &Tensor) -> candle_core::Result<Tensor>,
) -> Result<Tensor> {
    if !matches!(a.device(), Device::Cpu) || a.dims() != b.dims() {
        return Ok(fallback(a, b)?);
    }
    let out = with_f32_slice(a, |a| {
        with_f32_slice(b, |b| Ok(a.iter().zip(b).map(|(&a, &b)| f(a, b)).collect::<Vec<f32>>()))
    })?;
    Ok(Tensor::from_vec(out, a.dims(), a.device())?)
}

/// `x + y` (the residual adds), as [`elementwise`].
fn residual(x: &Tensor, y: &Tensor) -> Result<Tensor> {
    elementwise(x, y, |a, b| a + b, |a, b| a + b)
}

/// The language model: embeddings, decoder layers, final norm and `lm_head`.
pub(crate) struct Llama {
    cfg: LlamaConfig,
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    lm_head: Linear,
    cos: Tensor,
    sin: Tensor,
    /// How new caches hold keys and values.
    pub(crate) kv_dtype: KvDType,
    device: Device,
}

pub(crate) const LLAMA_HINT: &str = "--llama must be the Hugging Face Llama-2-7b-chat-hf directory";

impl Llama {
    /// Loads the weights, merging `lora` into its target projections, one layer at a time.
    pub(crate) fn load(
        src: &dyn TensorSource,
        cfg: &LlamaConfig,
        lora: &LoraDeltas,
        dtype: WeightDType,
        device: &Device,
        mut progress: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        let (h, v) = (cfg.hidden_size, cfg.vocab_size);
        let embed_shape = src.shape_of("model.embed_tokens.weight", LLAMA_HINT)?;
        if embed_shape != [v, h] {
            return Err(Error::ShapeMismatch {
                name: "model.embed_tokens.weight".into(),
                expected: vec![v, h],
                found: embed_shape.to_vec(),
                hint: format!(
                    "config.json and the weights in {} disagree; re-download the directory",
                    src.origin().display()
                ),
            });
        }
        let get = |name: &str, shape: &[usize]| src.get(name, shape, DType::F32, device, LLAMA_HINT);
        let float = dtype.float();
        let embed = src.get("model.embed_tokens.weight", &[v, h], float, device, LLAMA_HINT)?;
        progress()?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let lin = |module: &str, shape: [usize; 2]| -> Result<Linear> {
                let name = format!("model.layers.{l}.{module}.weight");
                Self::linear(src, &name, shape, dtype, device, || {
                    layer_matrix(src, lora, l, module, shape, dtype, device)
                })
            };
            // Converting and quantizing a matrix is CPU-bound and independent of the others:
            // the seven projections of a layer are built side by side.
            let specs = layer_matrices(cfg);
            // On rayon's pool (which the matmuls use anyway): no threads of our own to manage.
            let built: Vec<Result<Linear>> = specs.par_iter().map(|&(module, shape)| lin(module, shape)).collect();
            let mut built = built.into_iter();
            let mut next = || built.next().expect("seven projections were built");
            layers.push(Layer {
                input_norm: get(&format!("model.layers.{l}.input_layernorm.weight"), &[h])?,
                q: next()?,
                k: next()?,
                v: next()?,
                o: next()?,
                post_norm: get(&format!("model.layers.{l}.post_attention_layernorm.weight"), &[h])?,
                gate: next()?,
                up: next()?,
                down: next()?,
            });
            progress()?;
        }
        let norm = get("model.norm.weight", &[h])?;
        let head_name = lm_head_name(src, cfg);
        let lm_head = Self::linear(src, head_name, [v, h], dtype, device, || {
            stored_matrix(src, head_name, [v, h], dtype, device)
        })?;
        let (cos, sin) = rope_tables(cfg, device)?;
        progress()?;
        Ok(Self {
            cfg: cfg.clone(),
            embed,
            layers,
            norm,
            lm_head,
            cos,
            sin,
            kv_dtype: KvDType::default(),
            device: device.clone(),
        })
    }

    /// The layer of matrix `name`: quantized as the source holds it (a converted model file),
    /// or built in `dtype` from the tensor `matrix` returns.
    fn linear(
        src: &dyn TensorSource,
        name: &str,
        shape: [usize; 2],
        dtype: WeightDType,
        device: &Device,
        matrix: impl FnOnce() -> Result<Tensor>,
    ) -> Result<Linear> {
        match src.quantized(name, shape)? {
            Some(q) => Linear::from_quant(q, dtype, device),
            None => Linear::new(matrix()?, None, dtype),
        }
    }

    pub(crate) fn config(&self) -> &LlamaConfig {
        &self.cfg
    }

    /// A cache with room for `capacity` positions.
    pub(crate) fn new_cache(&self, capacity: usize) -> Result<KvCache> {
        KvCache::new(
            self.cfg.num_hidden_layers,
            self.cfg.kv_heads(),
            self.cfg.head_dim(),
            capacity,
            self.kv_dtype,
            &self.device,
        )
    }

    /// Token embeddings `[ids.len(), hidden]` f32.
    pub(crate) fn embed(&self, ids: &[u32]) -> Result<Tensor> {
        if let Some(&bad) = ids.iter().find(|&&id| id as usize >= self.cfg.vocab_size) {
            return Err(Error::InvalidOption(format!(
                "token id {bad} is outside the vocabulary of {}",
                self.cfg.vocab_size
            )));
        }
        let ids = Tensor::new(ids, &self.device)?;
        Ok(self.embed.index_select(&ids, 0)?.to_dtype(DType::F32)?)
    }

    /// Bytes of weights held in memory.
    pub(crate) fn weight_bytes(&self) -> usize {
        let t = |t: &Tensor| t.elem_count() * t.dtype().size_in_bytes();
        let layers: usize = self
            .layers
            .iter()
            .map(|l| {
                [&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down].iter().map(|x| x.bytes()).sum::<usize>()
                    + t(&l.input_norm)
                    + t(&l.post_norm)
            })
            .sum();
        layers + t(&self.embed) + t(&self.norm) + self.lm_head.bytes()
    }

    /// Bytes of weights a decode step reads: everything but the embedding table.
    pub(crate) fn step_bytes(&self) -> usize {
        self.weight_bytes() - self.embed.elem_count() * self.embed.dtype().size_in_bytes()
    }

    /// Runs `x: [n, hidden]` at positions `cache.len()..cache.len() + n` and returns the logits
    /// `[vocab]` (f32) of the last position. On error the cache is left as it was.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut KvCache) -> Result<Tensor> {
        let n = x.dim(0)?;
        let pos = cache.len();
        if pos + n > self.cfg.max_position_embeddings {
            return Err(Error::ContextOverflow {
                needed: pos + n,
                available: self.cfg.max_position_embeddings,
                hint: "shorten the prompt or lower max_new_tokens".into(),
            });
        }
        cache.reserve(n)?;
        let cos = self.cos.narrow(0, pos, n)?;
        let sin = self.sin.narrow(0, pos, n)?;
        // The CPU's fused attention masks as it goes (`KvCache::attend_causal`).
        let mask =
            if n > 1 && !matches!(self.device, Device::Cpu) { Some(causal_mask(n, pos, &self.device)?) } else { None };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = x.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let att = self.attention(li, layer, &h, &cos, &sin, mask.as_ref(), cache)?;
            x = residual(&x, &att)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            x = residual(&x, &layer.mlp(&h)?)?;
        }
        cache.advance(n);
        let last = x.narrow(0, n - 1, 1)?;
        let last = candle_nn::ops::rms_norm(&last, &self.norm, eps)?;
        Ok(self.lm_head.forward(&last)?.squeeze(0)?)
    }

    /// One decode step of several sequences: row `b` of `x: [B, hidden]` is the next input of
    /// the sequence held in `caches[b]`, at that cache's own position. Every matrix is read once
    /// for all `B` rows; attention runs per sequence over its own cache. Returns the logits
    /// `[B, vocab]` (f32). On error every cache is left as it was.
    pub(crate) fn forward_rows(&self, x: &Tensor, caches: &mut [&mut KvCache]) -> Result<Tensor> {
        let b = x.dim(0)?;
        if b != caches.len() {
            return Err(Error::InvalidOption(format!("{b} input rows for {} sequences", caches.len())));
        }
        for cache in caches.iter_mut() {
            if cache.len() + 1 > self.cfg.max_position_embeddings {
                return Err(Error::ContextOverflow {
                    needed: cache.len() + 1,
                    available: self.cfg.max_position_embeddings,
                    hint: "shorten the prompt or lower max_new_tokens".into(),
                });
            }
            cache.reserve(1)?;
        }
        // Each row's RoPE angles, at its own position: the B rows rotate in one call, as the B
        // positions of one sequence would.
        let positions: Vec<u32> = caches.iter().map(|c| c.len() as u32).collect();
        let positions = Tensor::new(positions.as_slice(), &self.device)?;
        let (cos, sin) = (self.cos.index_select(&positions, 0)?, self.sin.index_select(&positions, 0)?);
        let (heads, kv_heads, hd) = (self.cfg.num_attention_heads, self.cfg.kv_heads(), self.cfg.head_dim());
        let cpu = matches!(self.device, Device::Cpu);
        // The B rows' angles `[B, hd / 2]`, for the CPU's in-place RoPE.
        let angles = if cpu {
            Some((with_f32_slice(&cos, |c| Ok(c.to_vec()))?, with_f32_slice(&sin, |s| Ok(s.to_vec()))?))
        } else {
            None
        };
        let eps = self.cfg.rms_norm_eps as f32;
        let mut x = x.clone();
        for (li, layer) in self.layers.iter().enumerate() {
            let h = candle_nn::ops::rms_norm(&x, &layer.input_norm, eps)?;
            let [q, k, v] = Linear::forward_many([&layer.q, &layer.k, &layer.v], &h)?;
            let att = if let Some((cos, sin)) = &angles {
                // RoPE on the rows as the products left them (`[B, heads * hd]`), in place: a
                // decode step's tensors are small, and candle's reshapes, transposes and
                // per-sequence copies around them took ~4 % of a B = 8 step.
                let mut q = with_f32_slice(&q, |q| Ok(q.to_vec()))?;
                let mut k = with_f32_slice(&k, |k| Ok(k.to_vec()))?;
                rope_rows(&mut q, hd, cos, sin)?;
                rope_rows(&mut k, hd, cos, sin)?;
                let width = kv_heads * hd;
                with_f32_slice(&v, |v| {
                    for (i, cache) in caches.iter_mut().enumerate() {
                        // Row `i` holds the heads one after the other, as the cache takes it.
                        cache.write_row(li, &k[i * width..][..width], &v[i * width..][..width])?;
                    }
                    Ok(())
                })?;
                let shared: Vec<&KvCache> = caches.iter().map(|c| &**c).collect();
                // A CPU model's caches are CPU tensors; `None` would mean a cache from another
                // device, refused rather than attended wrongly.
                let out = KvCache::attend_rows(&shared, li, &q, heads)?.ok_or_else(|| {
                    Error::InvalidOption(
                        "a KV cache on another device than the model: use the model's own caches".into(),
                    )
                })?;
                Tensor::from_vec(out, (b, heads * hd), &self.device)?
            } else {
                let mut rows = Vec::with_capacity(b);
                for (i, cache) in caches.iter_mut().enumerate() {
                    let (c, s) = (cos.narrow(0, i, 1)?, sin.narrow(0, i, 1)?);
                    let row = |t: &Tensor| t.narrow(0, i, 1);
                    rows.push(self.attend(li, row(&q)?, row(&k)?, row(&v)?, &c, &s, None, cache)?);
                }
                Tensor::cat(&rows, 0)?
            };
            let att = layer.o.forward(&att)?;
            x = residual(&x, &att)?;
            let h = candle_nn::ops::rms_norm(&x, &layer.post_norm, eps)?;
            x = residual(&x, &layer.mlp(&h)?)?;
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        let x = candle_nn::ops::rms_norm(&x, &self.norm, eps)?;
        self.lm_head.forward(&x)
    }

    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        li: usize,
        layer: &Layer,
        h: &Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let [q, k, v] = Linear::forward_many([&layer.q, &layer.k, &layer.v], h)?;
        layer.o.forward(&self.attend(li, q, k, v, cos, sin, mask, cache)?)
    }

    /// Attention of `n` new positions of one sequence, from their projections `q: [n, heads *
    /// head_dim]`, `k, v: [n, kv_heads * head_dim]`: RoPE, the cache appended, and the
    /// attention output `[n, heads * head_dim]` (before `o_proj`).
    #[allow(clippy::too_many_arguments)]
    fn attend(
        &self,
        li: usize,
        q: Tensor,
        k: Tensor,
        v: Tensor,
        cos: &Tensor,
        sin: &Tensor,
        mask: Option<&Tensor>,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let n = q.dim(0)?;
        let (heads, kv_heads, hd) = (self.cfg.num_attention_heads, self.cfg.kv_heads(), self.cfg.head_dim());
        let shape =
            |t: Tensor, nh: usize| -> Result<Tensor> { Ok(t.reshape((1, n, nh, hd))?.transpose(1, 2)?.contiguous()?) };
        let q = candle_nn::rotary_emb::rope(&shape(q, heads)?, cos, sin)?.squeeze(0)?;
        let k = candle_nn::rotary_emb::rope(&shape(k, kv_heads)?, cos, sin)?.squeeze(0)?;
        let v = shape(v, kv_heads)?.squeeze(0)?;
        if matches!(self.device, Device::Cpu) {
            cache.write(li, &k, &v)?;
            if n == 1 {
                if let Some(out) = cache.attend_one(li, &q, heads)? {
                    return Ok(out);
                }
            } else if let Some(out) = with_f32_slice(&q, |q| cache.attend_causal(li, q, n, heads))? {
                return Ok(Tensor::from_vec(out, (n, heads * hd), &self.device)?);
            }
        }
        let (k, v) = cache.append(li, &k, &v)?;
        let (k, v) = if heads != kv_heads {
            let rep = heads / kv_heads;
            let expand = |t: Tensor| -> Result<Tensor> {
                let (_, l, d) = t.dims3()?;
                Ok(t.unsqueeze(1)?.expand((kv_heads, rep, l, d))?.reshape((heads, l, d))?)
            };
            (expand(k)?, expand(v)?)
        } else {
            (k, v)
        };
        let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(m)?,
            None => scores,
        };
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
        Ok(probs.matmul(&v.contiguous()?)?.transpose(0, 1)?.reshape((n, heads * hd))?)
    }
}

/// RoPE of a decode step's rows in place: row `r` of `x: [B, n * hd]` (`n` heads side by side)
/// at the position whose angles are row `r` of `cos, sin: [B, hd / 2]`, in the rotate-half form
/// with candle's `rope` arithmetic (`x1 c - x2 s`, `x1 s + x2 c`, unfused), so the same bits as
/// a prefill's RoPE at that position.
fn rope_rows(x: &mut [f32], hd: usize, cos: &[f32], sin: &[f32]) -> Result<()> {
    let half = hd / 2;
    let rows = cos.len().checked_div(half).unwrap_or(0);
    if !hd.is_multiple_of(2)
        || rows == 0
        || cos.len() != rows * half
        || sin.len() != cos.len()
        || !x.len().is_multiple_of(rows * hd)
    {
        return Err(Error::InvalidOption(format!(
            "RoPE of {} values over {rows} rows of {hd}-wide heads ({} angles)",
            x.len(),
            cos.len()
        )));
    }
    for (r, row) in x.chunks_exact_mut(x.len() / rows).enumerate() {
        let (c, s) = (&cos[r * half..][..half], &sin[r * half..][..half]);
        for head in row.chunks_exact_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for i in 0..half {
                let (a, b) = (x1[i], x2[i]);
                x1[i] = a * c[i] - b * s[i];
                x2[i] = a * s[i] + b * c[i];
            }
        }
    }
    Ok(())
}

/// `[n, pos + n]` additive mask: query `i` (at position `pos + i`) sees keys `0..=pos + i`.
fn causal_mask(n: usize, pos: usize, device: &Device) -> Result<Tensor> {
    let total = pos + n;
    let data: Vec<f32> =
        (0..n).flat_map(|i| (0..total).map(move |j| if j > pos + i { f32::NEG_INFINITY } else { 0.0 })).collect();
    Ok(Tensor::from_vec(data, (n, total), device)?)
}

/// RoPE cos/sin `[max_positions, head_dim / 2]`, computed in f32 as HF does.
fn rope_tables(cfg: &LlamaConfig, device: &Device) -> Result<(Tensor, Tensor)> {
    let hd = cfg.head_dim();
    let inv_freq: Vec<f32> =
        (0..hd / 2).map(|i| 1.0 / (cfg.rope_theta as f32).powf((2 * i) as f32 / hd as f32)).collect();
    let inv_freq = Tensor::from_vec(inv_freq, (1, hd / 2), device)?;
    let t = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((cfg.max_position_embeddings, 1))?;
    let freqs = t.broadcast_mul(&inv_freq)?;
    Ok((freqs.cos()?, freqs.sin()?))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::path::Path;

    use super::*;
    use crate::config::MiniGptMedConfig;
    use crate::quant::{QuantFormat, QuantMatrix};
    use crate::weights::synthetic_sources;

    /// The LLaMA weights of `inner` with every quantized matrix replaced by what its quantized
    /// form stands for: the reference a quantized model must reproduce.
    struct Dequantized<'a> {
        inner: &'a dyn TensorSource,
        format: QuantFormat,
    }

    impl TensorSource for Dequantized<'_> {
        fn origin(&self) -> &Path {
            self.inner.origin()
        }
        fn shapes(&self) -> &HashMap<String, Vec<usize>> {
            self.inner.shapes()
        }
        fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
            let t = self.inner.read(name, device)?;
            if t.rank() != 2 || name == "model.embed_tokens.weight" {
                return Ok(t);
            }
            let (rows, cols) = t.dims2()?;
            let w = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            let q = QuantMatrix::quantize(&w, rows, cols, self.format)?;
            Ok(Tensor::from_vec(q.dequantize(), (rows, cols), device)?)
        }
    }

    /// A checkpoint without tensors.
    struct NoTensors(HashMap<String, Vec<usize>>);

    impl TensorSource for NoTensors {
        fn origin(&self) -> &Path {
            Path::new("<none>")
        }
        fn shapes(&self) -> &HashMap<String, Vec<usize>> {
            &self.0
        }
        fn read(&self, name: &str, _: &Device) -> Result<Tensor> {
            Err(Error::MissingTensor { name: name.into(), path: "<none>".into(), hint: String::new() })
        }
    }

    /// A two-layer, four-head LLaMA of random weights: its config and weights.
    fn small_llama(
        hidden: usize,
        intermediate: usize,
        kv_heads: usize,
        vocab: usize,
    ) -> (LlamaConfig, impl TensorSource) {
        let cfg = LlamaConfig {
            hidden_size: hidden,
            intermediate_size: intermediate,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: Some(kv_heads),
            vocab_size: vocab,
            max_position_embeddings: 64,
            ..LlamaConfig::llama2_7b()
        };
        let (_, _, src) = synthetic_sources(&MiniGptMedConfig::default(), &cfg);
        (cfg, src)
    }

    /// Logits of a few random positions run through `llama`.
    fn logits(llama: &Llama, x: &Tensor) -> Vec<f32> {
        let mut cache = llama.new_cache(8).unwrap();
        llama.forward(x, &mut cache).unwrap().to_vec1::<f32>().unwrap()
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
    }

    /// A decode step's in-place RoPE gives candle's `rope` bits, row by row at each row's own
    /// position, for several heads; odd widths and mismatched angles are refused.
    #[test]
    fn rope_rows_equal_candles_rope() {
        let (b, heads, hd, max_pos) = (3, 2, 8, 40);
        let cfg = LlamaConfig {
            hidden_size: heads * hd,
            num_attention_heads: heads,
            max_position_embeddings: max_pos,
            ..LlamaConfig::llama2_7b()
        };
        let (cos_t, sin_t) = rope_tables(&cfg, &Device::Cpu).unwrap();
        let positions = Tensor::new(&[5u32, 0, 37], &Device::Cpu).unwrap();
        let (cos, sin) = (cos_t.index_select(&positions, 0).unwrap(), sin_t.index_select(&positions, 0).unwrap());
        let x: Vec<f32> = (0..b * heads * hd).map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.37).collect();
        let xt = Tensor::from_vec(x.clone(), (1, b, heads, hd), &Device::Cpu)
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap();
        let theirs = candle_nn::rotary_emb::rope(&xt, &cos, &sin).unwrap();
        let theirs: Vec<f32> = theirs.transpose(1, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let (c, s) = (
            cos.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            sin.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        );
        let mut ours = x.clone();
        rope_rows(&mut ours, hd, &c, &s).unwrap();
        assert_ne!(ours, x);
        assert_eq!(
            ours.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            theirs.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(rope_rows(&mut ours.clone(), hd + 1, &c, &s).is_err());
        assert!(rope_rows(&mut ours.clone(), hd, &c, &s[1..]).is_err());
    }

    #[test]
    fn rows_of_several_sequences_equal_each_sequence_alone() {
        // Grouped-query attention (2 kv heads for 4), so each row's attention reads its group.
        let (cfg, src) = small_llama(64, 128, 2, 96);
        let no_adapters = NoTensors(HashMap::new());
        let lora = LoraDeltas::none(&no_adapters);
        for dtype in [WeightDType::F32, WeightDType::Q8_0, WeightDType::Q4_0] {
            let llama = Llama::load(&src, &cfg, &lora, dtype, &Device::Cpu, || Ok(())).unwrap();
            // Four sequences with prompts of different lengths, so each row sits at its own position.
            let prompts: Vec<Tensor> =
                [3, 7, 1, 12].iter().map(|&n| Tensor::randn(0f32, 1.0, (n, 64), &Device::Cpu).unwrap()).collect();
            let mut alone: Vec<KvCache> = prompts.iter().map(|_| llama.new_cache(4).unwrap()).collect();
            let mut together: Vec<KvCache> = prompts.iter().map(|_| llama.new_cache(4).unwrap()).collect();
            for (p, (a, t)) in prompts.iter().zip(alone.iter_mut().zip(together.iter_mut())) {
                llama.forward(p, a).unwrap();
                llama.forward(p, t).unwrap();
            }
            for step in 0..3 {
                let x = Tensor::randn(0f32, 1.0, (4, 64), &Device::Cpu).unwrap();
                let want: Vec<Vec<f32>> = alone
                    .iter_mut()
                    .enumerate()
                    .map(|(b, c)| llama.forward(&x.narrow(0, b, 1).unwrap(), c).unwrap().to_vec1().unwrap())
                    .collect();
                let mut caches: Vec<&mut KvCache> = together.iter_mut().collect();
                let got = llama.forward_rows(&x, &mut caches).unwrap().to_vec2::<f32>().unwrap();
                for (b, (g, w)) in got.iter().zip(&want).enumerate() {
                    let scale = w.iter().fold(0f32, |m, v| m.max(v.abs()));
                    // Only the products' blocking differs (rows batched); measured ~1e-7 relative.
                    assert!(max_diff(g, w) <= 1e-5 * scale, "{dtype} step {step} row {b}: {}", max_diff(g, w));
                }
                assert_eq!(
                    together.iter().map(KvCache::len).collect::<Vec<_>>(),
                    alone.iter().map(KvCache::len).collect::<Vec<_>>()
                );
            }
            let mut two: Vec<&mut KvCache> = together.iter_mut().take(2).collect();
            let x = Tensor::zeros((3, 64), DType::F32, &Device::Cpu).unwrap();
            assert!(llama.forward_rows(&x, &mut two).is_err(), "three rows for two sequences");
        }
    }

    #[test]
    fn quantized_kernels_compute_the_dequantized_products() {
        // 256 wide: Q4_K's super-blocks fit every matrix, so no layer falls back to f16.
        let (cfg, src) = small_llama(256, 512, 4, 512);
        // No adapters: every matrix is quantized straight from the file, in both models alike.
        let no_adapters = NoTensors(HashMap::new());
        let lora = LoraDeltas::none(&no_adapters);
        let load =
            |src: &dyn TensorSource, dtype| Llama::load(src, &cfg, &lora, dtype, &Device::Cpu, || Ok(())).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 256), &Device::Cpu).unwrap();
        let exact = logits(&load(&src, WeightDType::F32), &x);
        let f16_bytes = load(&src, WeightDType::F16).weight_bytes();
        for (dtype, format) in [
            (WeightDType::Q8_0, QuantFormat::Q8_0),
            (WeightDType::Q4_0, QuantFormat::Q4_0),
            (WeightDType::Q4K, QuantFormat::Q4K),
        ] {
            let quantized = load(&src, dtype);
            assert!(
                quantized.weight_bytes() * 10 < f16_bytes * 6,
                "{dtype}: {} bytes against f16's {f16_bytes}: some matrix fell back to f16",
                quantized.weight_bytes()
            );
            let q = logits(&quantized, &x);
            let reference = logits(&load(&Dequantized { inner: &src, format }, WeightDType::F32), &x);
            let (kernel_err, format_err) = (max_diff(&q, &reference), max_diff(&reference, &exact));
            let scale = exact.iter().fold(0f32, |m, v| m.max(v.abs()));
            eprintln!("{dtype}: |q - dequantized| {kernel_err:.2e}, |dequantized - f32| {format_err:.2e}, logits up to {scale:.2}");
            // The kernels round the activations to 8-bit blocks (as llama.cpp's do); beyond that
            // they must compute exactly the dequantized product. Measured: 0.6 % of the logit
            // range for all three formats; for the 4-bit ones, 12x closer to the dequantized
            // model than the format is to f32.
            assert!(kernel_err <= 0.012 * scale, "{dtype}: kernels off the dequantized product by {kernel_err}");
            assert!(format_err > 0.0, "{dtype}: the round trip changed nothing, so the test tests nothing");
            if format != QuantFormat::Q8_0 {
                assert!(
                    kernel_err * 4.0 < format_err,
                    "{dtype}: not closer to its own dequantized weights than to f32"
                );
            }
        }
    }
}
