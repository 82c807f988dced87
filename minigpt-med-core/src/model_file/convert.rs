//! `minigpt-med convert`: the three original files to one model file, written tensor by
//! tensor (one tensor in memory at a time) into a temporary file renamed when complete.

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use half::f16;
use rayon::prelude::*;
use sha2::Digest;

use super::names::{hf_row, llama_to_gguf, permuted_heads, PROJ_PREFIX, VIT_PREFIX};
use super::{keys, llama_keys, FORMAT_VERSION};
use crate::config::{LlamaConfig, MiniGptMedConfig, ModelFiles};
use crate::error::{Error, Result};
use crate::llm::{layer_matrices, layer_matrix, lm_head_name, stored_matrix, LoraDeltas, LLAMA_HINT};
use crate::model::{LoadProgress, ProgressFn, Sources};
use crate::nn::{quantize_matrix, quantized_as, rounds_to_f16, WeightDType};
use crate::prompt::{TextCodec, PROMPT_TEMPLATE};
use crate::task::TaskKind;
use crate::vision::{Connector, EvaVit};
use crate::weights::gguf::{GgmlType, GgufWriter, MetaValue};
use crate::weights::TensorSource;

/// How to convert.
#[derive(Clone, Default)]
pub struct ConvertOptions {
    /// How the LLaMA's matrices are stored: f32 (exact), f16, or quantized (q8_0, q4_0, q4k).
    pub llm_dtype: WeightDType,
    /// How the ViT's matrices are stored: f32 or f16.
    pub vit_dtype: WeightDType,
    /// Called after each tensor written (`done` of `total` tensors); `false` cancels.
    pub progress: Option<ProgressFn>,
}

/// What a conversion wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct ConvertSummary {
    /// The file written.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// Tensors in it.
    pub tensors: usize,
    /// Seconds the conversion took.
    pub seconds: f64,
}

/// Converts the original files to one model file at `out` (GGUF v3; see the module docs of
/// `model_file`). `out` is written through a temporary file and never over an input.
pub fn convert(files: &ModelFiles, opts: &ConvertOptions, out: &Path) -> Result<ConvertSummary> {
    let sources = Sources::open(files)?;
    // Every input by its role: never written over, and its sha256 kept in the metadata.
    let mut inputs = vec![("vit".to_string(), files.vit.clone()), ("checkpoint".to_string(), files.checkpoint.clone())];
    inputs.extend(files.config.clone().map(|c| ("config".to_string(), c)));
    inputs.extend(
        sources
            .llama_files
            .iter()
            .map(|f| (format!("llama.{}", f.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()), f.clone())),
    );
    for (_, input) in &inputs {
        crate::image::ensure_not_input(out, input)?;
    }
    let mut hashed = Vec::with_capacity(inputs.len());
    for (role, path) in inputs {
        let sha = sha256(&path)?;
        hashed.push((role, path, sha));
    }
    let tokenizer_model = std::fs::read(files.llama_dir.join("tokenizer.model")).ok();
    convert_sources(
        &sources.cfg,
        &sources.llama_cfg,
        &sources.codec,
        &sources.tokenizer_json,
        tokenizer_model.as_deref(),
        sources.vit.as_ref(),
        sources.ckpt.as_ref(),
        sources.llama.as_ref(),
        &hashed,
        opts,
        out,
    )
}

/// Writes a model file of the given dimensions with the random weights of
/// [`crate::Model::synthetic`] (the same values), for benchmarks and tests at real size.
/// `tokenizer_dir` supplies `tokenizer.json`.
pub fn convert_synthetic(
    cfg: &MiniGptMedConfig,
    llama_cfg: &LlamaConfig,
    tokenizer_dir: &Path,
    opts: &ConvertOptions,
    out: &Path,
) -> Result<ConvertSummary> {
    let codec = TextCodec::from_dir(tokenizer_dir)?;
    let json_path = tokenizer_dir.join("tokenizer.json");
    let json = std::fs::read(&json_path).map_err(|e| Error::io(&json_path, e, "expected tokenizer.json"))?;
    let (vit, ckpt, llama) = crate::weights::synthetic_sources(cfg, llama_cfg);
    let sources = [("synthetic".to_string(), PathBuf::from("random-weights"), "-".to_string())];
    convert_sources(cfg, llama_cfg, &codec, &json, None, &vit, &ckpt, &llama, &sources, opts, out)
}

/// The SHA-256 of a file, hex.
fn sha256(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e, "reading it for its checksum"))?;
    let mut h = sha2::Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e, "reading it for its checksum"))?;
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// One tensor of the file: its name, shape, and how to make its bytes.
type Job<'a> = (String, Vec<usize>, Box<dyn Fn() -> Result<(GgmlType, Vec<u8>)> + Sync + 'a>);

/// Writes a model file from the components' sources (the original files, or synthetic weights
/// for benchmarks). `sources` are (role, path, sha256) of the inputs, for the metadata.
#[allow(clippy::too_many_arguments)]
pub(crate) fn convert_sources(
    cfg: &MiniGptMedConfig,
    llama_cfg: &LlamaConfig,
    codec: &TextCodec,
    tokenizer_json: &[u8],
    tokenizer_model: Option<&[u8]>,
    vit: &dyn TensorSource,
    ckpt: &dyn TensorSource,
    llama: &dyn TensorSource,
    sources: &[(String, PathBuf, String)],
    opts: &ConvertOptions,
    out: &Path,
) -> Result<ConvertSummary> {
    let start = Instant::now();
    let (llm, vit_dtype) = (opts.llm_dtype, opts.vit_dtype);
    if !matches!(vit_dtype, WeightDType::F32 | WeightDType::F16) {
        return Err(Error::InvalidOption(format!("--vit-dtype {vit_dtype}: the ViT is stored as f32 or f16")));
    }
    if llm == WeightDType::BF16 {
        return Err(Error::InvalidOption("--llm-dtype bf16: store f32, f16, q8_0, q4_0 or q4k".into()));
    }
    let cpu = &Device::Cpu;
    // Everything is checked before the first byte is written.
    EvaVit::validate(vit, &cfg.vision)?;
    Connector::load(ckpt, cfg, llama_cfg, cpu)?;
    let lora = LoraDeltas::find(ckpt, &cfg.lora, llama_cfg, cpu)?;
    let tokenizer_json = std::str::from_utf8(tokenizer_json).map_err(|_| Error::WeightsFormat {
        path: llama.origin().join("tokenizer.json"),
        expected: "UTF-8 tokenizer.json".into(),
        reason: "it is not UTF-8".into(),
    })?;

    let mut jobs: Vec<Job> = Vec::new();
    // The ViT: its tensors as its loader reads them, the position table already resized.
    let prefix = EvaVit::key_prefix(vit);
    for (name, shape) in EvaVit::tensor_shapes(vit, &cfg.vision)? {
        let key = format!("{prefix}{name}");
        let round = vit_dtype == WeightDType::F16 && EvaVit::is_matrix(&name);
        let gguf = format!("{VIT_PREFIX}{name}");
        if name == "pos_embed" {
            let out_shape = vec![1, 1 + cfg.vision.grid() * cfg.vision.grid(), cfg.vision.width];
            jobs.push((
                gguf,
                out_shape.clone(),
                Box::new(move || {
                    let t = EvaVit::interpolated_pos_embed(vit, &cfg.vision, cpu)?.reshape(out_shape.as_slice())?;
                    dense(&t, false, None)
                }),
            ));
        } else {
            jobs.push((
                gguf,
                shape.clone(),
                Box::new(move || dense(&vit.get(&key, &shape, DType::F32, cpu, "")?, round, None)),
            ));
        }
    }
    for (name, shape) in Connector::tensor_shapes(ckpt) {
        jobs.push((
            format!("{PROJ_PREFIX}{name}"),
            shape.clone(),
            Box::new(move || dense(&ckpt.get(&name, &shape, DType::F32, cpu, "")?, false, None)),
        ));
    }
    // The LLaMA, LoRA merged, each matrix as the layer built from it holds it.
    let (h, v) = (llama_cfg.hidden_size, llama_cfg.vocab_size);
    let float_f16 = llm.float() == DType::F16;
    jobs.push((
        gguf_name("model.embed_tokens.weight")?,
        vec![v, h],
        Box::new(move || {
            dense(&llama.get("model.embed_tokens.weight", &[v, h], DType::F32, cpu, LLAMA_HINT)?, float_f16, None)
        }),
    ));
    let (heads, kv_heads) = (llama_cfg.num_attention_heads, llama_cfg.kv_heads());
    let lora = &lora;
    for l in 0..llama_cfg.num_hidden_layers {
        let norm = |n: &str| -> Result<Job> {
            let name = format!("model.layers.{l}.{n}.weight");
            Ok((
                gguf_name(&name)?,
                vec![h],
                Box::new(move || dense(&llama.get(&name, &[h], DType::F32, cpu, LLAMA_HINT)?, false, None)),
            ))
        };
        jobs.push(norm("input_layernorm")?);
        for (module, shape) in layer_matrices(llama_cfg) {
            let name = format!("model.layers.{l}.{module}.weight");
            let perm = permuted_heads(&name, heads, kv_heads);
            jobs.push((
                gguf_name(&name)?,
                shape.to_vec(),
                Box::new(move || matrix(&layer_matrix(llama, lora, l, module, shape, llm, cpu)?, llm, perm)),
            ));
            if module == "self_attn.o_proj" {
                jobs.push(norm("post_attention_layernorm")?);
            }
        }
    }
    jobs.push((
        gguf_name("model.norm.weight")?,
        vec![h],
        Box::new(move || dense(&llama.get("model.norm.weight", &[h], DType::F32, cpu, LLAMA_HINT)?, false, None)),
    ));
    let head = lm_head_name(llama, llama_cfg);
    jobs.push((
        gguf_name("lm_head.weight")?,
        vec![v, h],
        Box::new(move || matrix(&stored_matrix(llama, head, [v, h], llm, cpu)?, llm, None)),
    ));

    let mut w = GgufWriter::create(out)?;
    metadata(&mut w, cfg, llama_cfg, codec, tokenizer_json, tokenizer_model, sources, opts)?;
    let plan: Vec<(String, Vec<usize>)> = jobs.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    w.plan(&plan)?;
    let total = jobs.len();
    for (done, (name, _, job)) in jobs.iter().enumerate() {
        let (dtype, bytes) = job()?;
        w.write_tensor(name, dtype, &bytes)?;
        if let Some(p) = &opts.progress {
            if !p(LoadProgress { done: done + 1, total }) {
                return Err(Error::Cancelled);
            }
        }
    }
    let bytes = w.finish()?;
    Ok(ConvertSummary { path: out.to_owned(), bytes, tensors: total, seconds: start.elapsed().as_secs_f64() })
}

fn gguf_name(hf: &str) -> Result<String> {
    llama_to_gguf(hf).ok_or_else(|| Error::InvalidOption(format!("no GGUF name for {hf} (internal error)")))
}

/// A LLaMA matrix as the layer built from it holds it: quantized rows in llama.cpp's blocks,
/// else dense. `perm` (heads) writes the rows in llama.cpp's order.
fn matrix(w: &Tensor, dtype: WeightDType, perm: Option<usize>) -> Result<(GgmlType, Vec<u8>)> {
    let (rows, cols) = w.dims2()?;
    match quantized_as(dtype, cols).filter(|&q| crate::quant::ggml_row_bytes(q, cols).is_some()) {
        Some(q) => {
            let m = quantize_matrix(w, q)?;
            let mut out = Vec::with_capacity(rows * crate::quant::ggml_row_bytes(q, cols).unwrap_or(0));
            for r in 0..rows {
                m.write_ggml_row(perm.map_or(r, |heads| hf_row(r, rows, heads)), &mut out)?;
            }
            Ok((GgmlType::of_quant(q), out))
        }
        // A shape GGML cannot block (odd test models) stays dense, exactly, and is quantized
        // at load as it would be from the original files.
        None => dense(w, rounds_to_f16(dtype, cols), perm),
    }
}

/// A dense tensor's bytes: F16 when `round` (the layer rounds to f16 anyway) or when every
/// value is an f16, else F32; rows permuted by `perm` (heads) for llama.cpp's order.
fn dense(t: &Tensor, round: bool, perm: Option<usize>) -> Result<(GgmlType, Vec<u8>)> {
    let mut v = t.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?;
    if let (Some(heads), [rows, cols]) = (perm, t.dims()) {
        let (rows, cols) = (*rows, *cols);
        let src = v.clone();
        for r in 0..rows {
            let x = hf_row(r, rows, heads);
            v[r * cols..(r + 1) * cols].copy_from_slice(&src[x * cols..(x + 1) * cols]);
        }
    }
    if round || v.par_iter().all(|&x| f16::from_f32(x).to_f32() == x) {
        Ok((GgmlType::F16, v.iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect()))
    } else {
        Ok((GgmlType::F32, v.iter().flat_map(|&x| x.to_le_bytes()).collect()))
    }
}

/// llama.cpp's `general.file_type` of the LLM dtype.
fn file_type(dtype: WeightDType) -> u32 {
    match dtype {
        WeightDType::F32 => 0,
        WeightDType::F16 | WeightDType::BF16 => 1,
        WeightDType::Q4_0 => 2,
        WeightDType::Q8_0 => 7,
        WeightDType::Q4K => 15,
    }
}

#[allow(clippy::too_many_arguments)]
fn metadata(
    w: &mut GgufWriter,
    cfg: &MiniGptMedConfig,
    llama_cfg: &LlamaConfig,
    codec: &TextCodec,
    tokenizer_json: &str,
    tokenizer_model: Option<&[u8]>,
    sources: &[(String, PathBuf, String)],
    opts: &ConvertOptions,
) -> Result<()> {
    let s = |v: &str| MetaValue::Str(v.to_owned());
    w.meta("general.architecture", s("llama"));
    w.meta("general.name", s("MiniGPT-Med"));
    w.meta("general.description", s("MiniGPT-Med (arXiv 2407.04106): EVA ViT-g/14 + LLaMA-2-7b-chat with LoRA merged"));
    w.meta(
        "general.license",
        s("weights keep their own licences: LLaMA 2 Community License (the LLM), the MiniGPT-Med and EVA releases"),
    );
    w.meta("general.file_type", MetaValue::U32(file_type(opts.llm_dtype)));
    w.meta("general.alignment", MetaValue::U32(crate::weights::gguf::DEFAULT_ALIGNMENT as u32));
    for (k, v) in llama_keys(llama_cfg) {
        w.meta(k, v);
    }
    tokenizer_keys(w, codec, llama_cfg, tokenizer_model);
    w.meta(keys::TOKENIZER_JSON, s(tokenizer_json));
    w.meta(keys::FORMAT_VERSION, MetaValue::U32(FORMAT_VERSION));
    w.meta(keys::ENGINE_VERSION, s(crate::VERSION));
    let json = |e: serde_json::Error| Error::InvalidOption(format!("config to JSON: {e}"));
    w.meta(keys::CONFIG, MetaValue::Str(serde_json::to_string(cfg).map_err(json)?));
    w.meta(keys::LLAMA_CONFIG, MetaValue::Str(serde_json::to_string(llama_cfg).map_err(json)?));
    w.meta(keys::LLM_DTYPE, s(&opts.llm_dtype.to_string()));
    w.meta(keys::VIT_DTYPE, s(&opts.vit_dtype.to_string()));
    w.meta(keys::PROMPT_TEMPLATE, s(PROMPT_TEMPLATE));
    w.meta(keys::IMAGE_SIZE, MetaValue::U32(cfg.vision.image_size as u32));
    w.meta(keys::TASKS, MetaValue::Array(TaskKind::ALL.iter().filter_map(|k| k.tag()).map(s).collect()));
    for (role, path, sha) in sources {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        w.meta(&format!("minigpt_med.source.{role}.file"), s(&name));
        w.meta(&format!("minigpt_med.source.{role}.sha256"), s(sha));
    }
    Ok(())
}

/// llama.cpp's `tokenizer.ggml.*` keys: the vocabulary by id, its scores (from
/// `tokenizer.model` when there is one) and token types.
fn tokenizer_keys(w: &mut GgufWriter, codec: &TextCodec, cfg: &LlamaConfig, model: Option<&[u8]>) {
    let n = cfg.vocab_size;
    let pieces = model.and_then(sentencepiece_pieces).filter(|p| p.len() == n);
    let mut tokens = Vec::with_capacity(n);
    let mut scores = Vec::with_capacity(n);
    let mut types = Vec::with_capacity(n);
    for id in 0..n as u32 {
        let token = codec.token(id).unwrap_or_else(|| format!("[PAD{id}]"));
        let (score, ty) = match &pieces {
            Some(p) => (p[id as usize].1, p[id as usize].2),
            None => (0.0, default_type(&token, id, cfg)),
        };
        tokens.push(MetaValue::Str(token));
        scores.push(MetaValue::F32(score));
        types.push(MetaValue::I32(ty));
    }
    w.meta("tokenizer.ggml.model", MetaValue::Str("llama".into()));
    w.meta("tokenizer.ggml.tokens", MetaValue::Array(tokens));
    w.meta("tokenizer.ggml.scores", MetaValue::Array(scores));
    w.meta("tokenizer.ggml.token_type", MetaValue::Array(types));
    w.meta("tokenizer.ggml.bos_token_id", MetaValue::U32(cfg.bos_token_id));
    w.meta("tokenizer.ggml.eos_token_id", MetaValue::U32(cfg.eos_token_id));
    w.meta("tokenizer.ggml.unknown_token_id", MetaValue::U32(0));
    w.meta("tokenizer.ggml.add_bos_token", MetaValue::Bool(true));
}

/// llama.cpp's token types: 1 normal, 2 unknown, 3 control, 6 byte.
fn default_type(token: &str, id: u32, cfg: &LlamaConfig) -> i32 {
    if id == 0 {
        2
    } else if id == cfg.bos_token_id || id == cfg.eos_token_id {
        3
    } else if token.len() == 6 && token.starts_with("<0x") && token.ends_with('>') {
        6
    } else {
        1
    }
}

/// The pieces of a SentencePiece `tokenizer.model` (a protobuf `ModelProto`: field 1, repeated
/// `SentencePiece { piece = 1; score = 2; type = 3 }`) as (piece, score, llama.cpp type).
/// `None` if the bytes are not such a message.
fn sentencepiece_pieces(data: &[u8]) -> Option<Vec<(String, f32, i32)>> {
    fn varint(d: &[u8], pos: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = *d.get(*pos)?;
            *pos += 1;
            v |= u64::from(b & 0x7F) << shift;
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }
    /// One field of a message: number, wire type, numeric value, bytes (length-delimited).
    type Field<'a> = (u64, u64, u64, &'a [u8]);
    /// The fields of one message.
    fn fields(d: &[u8]) -> Option<Vec<Field<'_>>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < d.len() {
            let key = varint(d, &mut pos)?;
            let (field, wire) = (key >> 3, key & 7);
            let (value, bytes) = match wire {
                0 => (varint(d, &mut pos)?, &d[0..0]),
                1 => {
                    let b = d.get(pos..pos + 8)?;
                    pos += 8;
                    (u64::from_le_bytes(b.try_into().ok()?), b)
                }
                2 => {
                    let n = usize::try_from(varint(d, &mut pos)?).ok()?;
                    let b = d.get(pos..pos.checked_add(n)?)?;
                    pos += n;
                    (0, b)
                }
                5 => {
                    let b = d.get(pos..pos + 4)?;
                    pos += 4;
                    (u64::from(u32::from_le_bytes(b.try_into().ok()?)), b)
                }
                _ => return None,
            };
            out.push((field, wire, value, bytes));
        }
        Some(out)
    }
    let mut pieces = Vec::new();
    for (field, wire, _, bytes) in fields(data)? {
        if field != 1 || wire != 2 {
            continue;
        }
        let (mut piece, mut score, mut ty) = (String::new(), 0f32, 1i32);
        for (f, w, v, b) in fields(bytes)? {
            match (f, w) {
                (1, 2) => piece = String::from_utf8(b.to_vec()).ok()?,
                (2, 5) => score = f32::from_bits(v as u32),
                // SentencePiece's types are llama.cpp's: 1 normal, 2 unknown, 3 control,
                // 4 user-defined, 5 unused, 6 byte.
                (3, 0) => ty = v as i32,
                _ => {}
            }
        }
        pieces.push((piece, score, ty));
    }
    Some(pieces)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentencepiece_model_of_the_tiny_tokenizer() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny/llama-2-7b-chat-hf");
        let pieces = sentencepiece_pieces(&std::fs::read(dir.join("tokenizer.model")).unwrap()).unwrap();
        let codec = TextCodec::from_dir(&dir).unwrap();
        assert_eq!(pieces[0].0, "<unk>");
        assert_eq!((pieces[1].0.as_str(), pieces[1].2), ("<s>", 3));
        assert_eq!(pieces[3].2, 6, "byte token {}", pieces[3].0);
        // The same vocabulary as tokenizer.json, piece for piece.
        for (id, (piece, _, _)) in pieces.iter().enumerate() {
            assert_eq!(codec.token(id as u32).as_deref(), Some(piece.as_str()), "id {id}");
        }
        assert!(pieces.iter().skip(300).any(|p| p.1 != 0.0), "scores are read");
    }
}
