//! Converted model files (`minigpt-med convert`): one GGUF answers bit-identically to the
//! original files loaded with the same dtype (every format, on the tiny model and on a model
//! 256 wide so that Q4_K really runs), it is standard GGUF (llama.cpp's names and blocks), and
//! damaged or foreign files get typed errors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use minigpt_med::gguf::{GgmlType, GgufFile, MetaValue};
use minigpt_med::{
    convert, convert_synthetic, ConvertOptions, Error, GenerateOptions, Image, LlamaConfig, LoadOptions,
    MiniGptMedConfig, Model, ModelFiles, Task, WeightDType,
};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("mgm-model-file-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn convert_tiny(dtype: WeightDType, vit: WeightDType, out: &Path) {
    let opts = ConvertOptions { llm_dtype: dtype, vit_dtype: vit, progress: None };
    let s = convert(&ModelFiles::from_dir(fixtures()), &opts, out).unwrap();
    assert_eq!(s.bytes, std::fs::metadata(out).unwrap().len());
}

fn bits(t: &minigpt_med::candle::Tensor) -> Vec<u32> {
    t.flatten_all().unwrap().to_vec1::<f32>().unwrap().iter().map(|v| v.to_bits()).collect()
}

/// Both models see the same image and prompt: ViT output, image embeddings and the prompt's
/// logits must be the same bits, and greedy answers the same tokens.
fn assert_same(a: &Model, b: &Model, what: &str) {
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let (ea, eb) = (a.encode_image(&image).unwrap(), b.encode_image(&image).unwrap());
    assert!(bits(&ea.embeds) == bits(&eb.embeds), "{what}: image embeddings differ");
    let prompt = a.prompt("[refer] the left lung").unwrap();
    let (la, lb) = (a.prompt_logits(&ea, &prompt).unwrap(), b.prompt_logits(&eb, &prompt).unwrap());
    assert!(bits(&la) == bits(&lb), "{what}: logits differ (max {})", max_abs_diff(&la, &lb));
    let task = Task::Report(None);
    let (ta, tb) = (
        a.generate(&image, &task, &GenerateOptions::greedy(12)).unwrap(),
        b.generate(&image, &task, &GenerateOptions::greedy(12)).unwrap(),
    );
    assert_eq!(ta.token_ids, tb.token_ids, "{what}");
}

#[test]
fn converted_tiny_model_answers_as_the_original_files() {
    let dir = scratch("tiny");
    for dtype in [WeightDType::F32, WeightDType::F16, WeightDType::Q8_0, WeightDType::Q4_0] {
        let path = dir.join(format!("tiny-{dtype}.gguf"));
        convert_tiny(dtype, WeightDType::F32, &path);
        let opts = LoadOptions { llm_dtype: dtype, ..LoadOptions::default() };
        let original = Model::load_dir(fixtures(), &opts).unwrap();
        // A quantized file is opened with default options: its dtype is the file's.
        let opened = Model::open(&path, &LoadOptions::default()).unwrap();
        assert_eq!(opened.info().llm_dtype, if dtype.is_quantized() { dtype } else { WeightDType::F32 });
        let opened = if dtype.is_quantized() { opened } else { Model::open(&path, &opts).unwrap() };
        assert_same(&original, &opened, &format!("llm {dtype}"));
        assert_eq!(original.info().llm_weight_bytes, opened.info().llm_weight_bytes, "{dtype}");
    }
    // The f16 ViT.
    let path = dir.join("tiny-vit-f16.gguf");
    convert_tiny(WeightDType::F32, WeightDType::F16, &path);
    let opts = LoadOptions { vit_dtype: WeightDType::F16, ..LoadOptions::default() };
    assert_same(&Model::load_dir(fixtures(), &opts).unwrap(), &Model::open(&path, &opts).unwrap(), "vit f16");
    // And the f32 file against the fp32 reference's golden logits (the same tolerance as the
    // original files' parity test).
    let m = Model::open(dir.join("tiny-f32.gguf"), &LoadOptions::default()).unwrap();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let p = &golden_json()["prompts"][1];
    let prompt = m.prompt(p["instruction"].as_str().unwrap()).unwrap();
    let d = max_abs_diff(
        &m.prompt_logits(&m.encode_image(&image).unwrap(), &prompt).unwrap(),
        tensor("last_logits.p1_refer"),
    );
    assert!(d <= 2e-3, "converted f32 model is {d} from the reference");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A model 256 wide, so every LLaMA matrix really is Q4_K (the tiny one's 64 columns fall
/// back to f16): random weights, converted and opened, against the same weights in memory.
#[test]
fn converted_q4k_model_256_wide_is_bit_identical() {
    let dir = scratch("q4k");
    let tokenizer = fixtures().join("llama-2-7b-chat-hf");
    let mut cfg = MiniGptMedConfig::default();
    cfg.vision.width = 32;
    cfg.vision.depth = 1;
    cfg.vision.heads = 2;
    cfg.vision.mlp_hidden = 64;
    let llama: LlamaConfig = serde_json::from_value(serde_json::json!({
        "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "vocab_size": 800, "max_position_embeddings": 512
    }))
    .unwrap();
    for dtype in [WeightDType::Q4K, WeightDType::Q4_0] {
        let path = dir.join(format!("synthetic-{dtype}.gguf"));
        let opts = ConvertOptions { llm_dtype: dtype, vit_dtype: WeightDType::F16, progress: None };
        convert_synthetic(&cfg, &llama, &tokenizer, &opts, &path).unwrap();
        let file = GgufFile::open(&path).unwrap();
        let want = GgmlType::of_quant(match dtype {
            WeightDType::Q4K => minigpt_med::quant::QuantFormat::Q4K,
            _ => minigpt_med::quant::QuantFormat::Q4_0,
        });
        for name in ["blk.0.attn_q.weight", "blk.1.attn_k.weight", "blk.1.ffn_down.weight", "output.weight"] {
            assert_eq!(file.tensor(name).unwrap().dtype, want, "{name}");
        }
        let load = LoadOptions { llm_dtype: dtype, vit_dtype: WeightDType::F16, ..LoadOptions::default() };
        let in_memory = Model::synthetic(cfg.clone(), llama.clone(), &tokenizer, &load).unwrap();
        let opened =
            Model::open(&path, &LoadOptions { vit_dtype: WeightDType::F16, ..LoadOptions::default() }).unwrap();
        assert_same(&in_memory, &opened, &format!("synthetic {dtype}"));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// The file is standard GGUF as llama.cpp writes a LLaMA: its names, keys and block types,
/// and `q_proj`/`k_proj` rows in llama.cpp's order.
#[test]
fn converted_file_follows_llama_cpp_conventions() {
    let dir = scratch("conventions");
    let path = dir.join("tiny-q8.gguf");
    convert_tiny(WeightDType::Q8_0, WeightDType::F32, &path);
    let f = GgufFile::open(&path).unwrap();
    assert_eq!(f.version(), 3);
    let get = |k: &str| f.get(k).unwrap_or_else(|| panic!("{k} missing")).clone();
    assert_eq!(get("general.architecture"), MetaValue::Str("llama".into()));
    assert_eq!(get("llama.block_count").as_u64(), Some(2));
    assert_eq!(get("llama.embedding_length").as_u64(), Some(64));
    assert_eq!(get("llama.attention.head_count").as_u64(), Some(4));
    assert_eq!(get("llama.context_length").as_u64(), Some(4096));
    assert_eq!(get("general.file_type").as_u64(), Some(7));
    let MetaValue::Array(tokens) = get("tokenizer.ggml.tokens") else { panic!("tokens") };
    assert_eq!(tokens.len(), 800);
    assert_eq!(tokens[1], MetaValue::Str("<s>".into()));
    assert_eq!(get("minigpt_med.llm_dtype"), MetaValue::Str("q8_0".into()));
    let sha = get("minigpt_med.source.checkpoint.sha256");
    assert_eq!(sha.as_str().unwrap().len(), 64);
    for (name, dtype, shape) in [
        ("token_embd.weight", GgmlType::F16, vec![800, 64]),
        ("blk.0.attn_q.weight", GgmlType::Q8_0, vec![64, 64]),
        ("blk.1.ffn_gate.weight", GgmlType::Q8_0, vec![172, 64]),
        ("output_norm.weight", GgmlType::F16, vec![64]),
        // Interpolated: f32 values, no longer f16 ones.
        ("v.pos_embed", GgmlType::F32, vec![1, 1 + 32 * 32, 48]),
        ("mm.llama_proj.weight", GgmlType::F32, vec![64, 192]),
    ] {
        let t = f.tensor(name).unwrap_or_else(|| panic!("{name} missing"));
        assert_eq!((t.dtype, &t.shape), (dtype, &shape), "{name}");
    }
    // down_proj has 172 inputs: not whole Q8_0 blocks, so it stays dense (quantized at load).
    assert!(matches!(f.tensor("blk.0.ffn_down.weight").unwrap().dtype, GgmlType::F16 | GgmlType::F32));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn expect_format_error(path: &Path, needle: &str) {
    match Model::open(path, &LoadOptions::default()) {
        Err(e @ (Error::WeightsFormat { .. } | Error::Config { .. } | Error::MissingTensor { .. })) => {
            assert!(e.to_string().contains(needle), "{e} lacks {needle:?}")
        }
        Err(e) => panic!("wrong error for {}: {e:?}", path.display()),
        Ok(_) => panic!("{} opened", path.display()),
    }
}

/// Damaged and foreign files: each a typed error naming the problem, before any large
/// allocation (the hostile suite runs the same under a 4 GiB address-space limit).
#[test]
fn damaged_or_foreign_files_are_refused() {
    let dir = scratch("damaged");
    let good = dir.join("good.gguf");
    convert_tiny(WeightDType::Q4_0, WeightDType::F32, &good);
    let bytes = std::fs::read(&good).unwrap();
    let write = |name: &str, data: &[u8]| {
        let p = dir.join(name);
        std::fs::write(&p, data).unwrap();
        p
    };
    expect_format_error(&write("truncated.gguf", &bytes[..bytes.len() - 1000]), "past the end");
    expect_format_error(&write("header.gguf", &bytes[..20]), "needs");
    let mut magic = bytes.clone();
    magic[..4].copy_from_slice(b"GGML");
    expect_format_error(&write("magic.gguf", &magic), "not \"GGUF\"");
    let mut count = bytes.clone();
    count[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
    expect_format_error(&write("count.gguf", &count), "cannot fit");
    let f = GgufFile::open(&good).unwrap();
    // A tensor offset pointing outside the file: patch the last tensor's offset field.
    let (last, info) = f.tensors().last().unwrap().clone();
    let pos = find(&bytes, last.as_bytes()) + last.len() + 4 + 8 * info.shape.len() + 4;
    let mut offset = bytes.clone();
    offset[pos..pos + 8].copy_from_slice(&(1u64 << 40).to_le_bytes());
    expect_format_error(&write("offset.gguf", &offset), "past the end");
    // A metadata value that contradicts the config.
    let key = b"llama.block_count";
    let pos = find(&bytes, key) + key.len() + 4;
    let mut contradict = bytes.clone();
    contradict[pos..pos + 4].copy_from_slice(&7u32.to_le_bytes());
    expect_format_error(&write("contradict.gguf", &contradict), "llama.block_count");
    // A missing key: rename the config's key.
    let mut renamed = bytes.clone();
    let pos = find(&bytes, b"minigpt_med.llama_config");
    renamed[pos..pos + 11].copy_from_slice(b"minigpt_mex");
    expect_format_error(&write("missing.gguf", &renamed), "minigpt_med.llama_config");
    // A plain LLaMA GGUF (no ViT, no MiniGPT-Med keys).
    let mut w = minigpt_med::gguf::GgufWriter::create(&dir.join("plain.gguf")).unwrap();
    w.meta("general.architecture", MetaValue::Str("llama".into()));
    w.plan(&[("token_embd.weight".into(), vec![2, 32])]).unwrap();
    w.write_tensor("token_embd.weight", GgmlType::F32, &[0u8; 256]).unwrap();
    w.finish().unwrap();
    expect_format_error(&dir.join("plain.gguf"), "plain");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn find(haystack: &[u8], needle: &[u8]) -> usize {
    haystack.windows(needle.len()).position(|w| w == needle).unwrap()
}

/// The converter never writes over an input, and leaves no partial file behind on error.
#[test]
fn conversion_refuses_its_input_and_cleans_up() {
    let files = ModelFiles::from_dir(fixtures());
    let opts = ConvertOptions::default();
    assert!(matches!(convert(&files, &opts, &files.checkpoint), Err(Error::InvalidOption(_) | Error::Io { .. })));
    let dir = scratch("cancel");
    let out = dir.join("cancelled.gguf");
    let cancel = ConvertOptions { progress: Some(std::sync::Arc::new(|p| p.done < 5)), ..ConvertOptions::default() };
    assert!(matches!(convert(&files, &cancel, &out), Err(Error::Cancelled)));
    assert!(std::fs::read_dir(&dir).unwrap().next().is_none(), "a partial file was left");
    std::fs::remove_dir_all(&dir).unwrap();
}
