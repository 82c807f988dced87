//! [`Model`] and its loading: [`Model::load`] reads the three original files once,
//! [`Model::generate`] answers a [`Task`] about an [`Image`], [`Model::chat`] starts a
//! [`Chat`] about one image. The decode loop itself is in `generate.rs`.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::answer::Answer;
use crate::chat::Chat;
use crate::config::{LlamaConfig, MiniGptMedConfig, ModelFiles};
use crate::device::Device;
use crate::error::{Error, Result};
use crate::generate::{fit_context, Fit};
use crate::image::{Image, ModelView};
use crate::llm::{KvDType, Llama, LoraDeltas};
use crate::model_file::GgufView;
use crate::nn::WeightDType;
use crate::options::GenerateOptions;
use crate::prompt::{Exchange, Prompt, TextCodec};
use crate::study::{Prepared, Study};
use crate::task::Task;
use crate::vision::{Connector, EncodeSplit, EvaVit};
use crate::weights::{LlamaLayout, PthFile, TensorSource};

/// The original files of a model, opened and checked against each other: configs, tokenizer,
/// and the three weight sources (read lazily).
pub(crate) struct Sources {
    pub cfg: MiniGptMedConfig,
    pub llama_cfg: LlamaConfig,
    pub codec: TextCodec,
    /// The text of `tokenizer.json`.
    pub tokenizer_json: Vec<u8>,
    pub ckpt: Box<dyn TensorSource>,
    pub vit: Box<dyn TensorSource>,
    pub llama: Box<dyn TensorSource>,
    /// The files of the LLaMA directory that are read (config, tokenizer, weights).
    pub llama_files: Vec<std::path::PathBuf>,
}

impl Sources {
    pub(crate) fn open(files: &ModelFiles) -> Result<Self> {
        let cfg = match &files.config {
            Some(p) => {
                let c = MiniGptMedConfig::from_file(p)?;
                c.validate(p)?;
                c
            }
            None => MiniGptMedConfig::default(),
        };
        let llama_cfg = LlamaConfig::from_dir(&files.llama_dir)?;
        let tokenizer_path = files.llama_dir.join("tokenizer.json");
        let tokenizer_json = std::fs::read(&tokenizer_path).map_err(|e| {
            Error::io(&tokenizer_path, e, "the LLaMA directory needs the tokenizer.json of Llama-2-7b-chat-hf")
        })?;
        let codec = TextCodec::from_json(&tokenizer_json, &tokenizer_path)?;
        if codec.vocab_size() > llama_cfg.vocab_size {
            return Err(Error::Config {
                path: files.llama_dir.join("tokenizer.json"),
                reason: format!(
                    "the tokenizer has {} tokens but the model only {}; tokenizer.json belongs to another model",
                    codec.vocab_size(),
                    llama_cfg.vocab_size
                ),
            });
        }
        let ckpt =
            PthFile::open(&files.checkpoint, Some("model"), "MiniGPT-Med checkpoint (.pth, state dict under `model`)")?;
        let vit = PthFile::open(&files.vit, None, "EVA ViT-g weights (eva_vit_g.pth)")?;
        let layout = LlamaLayout::find(&files.llama_dir)?;
        let llama = layout.open(&files.llama_dir)?;
        let mut llama_files = vec![files.llama_dir.join("config.json"), tokenizer_path];
        llama_files.extend(layout.files());
        Ok(Self { cfg, llama_cfg, codec, tokenizer_json, ckpt: Box::new(ckpt), vit: Box::new(vit), llama, llama_files })
    }
}

/// Load progress: `done` of `total` steps (one per ViT block / LLaMA layer).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadProgress {
    /// Steps finished.
    pub done: usize,
    /// Steps in all.
    pub total: usize,
}

/// A load-progress callback: called after each step; returning `false` cancels the load,
/// which then fails with [`Error::Cancelled`].
pub type ProgressFn = Arc<dyn Fn(LoadProgress) -> bool + Send + Sync>;

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: Device,
    /// How LLaMA's matrices are held (f32 = exact; f16 or q8_0/q4_0/q4k to save memory).
    pub llm_dtype: WeightDType,
    /// How the ViT's matrices are held (f32 or f16).
    pub vit_dtype: WeightDType,
    /// How every KV cache of the model holds keys and values (f32 = exact; f16 halves the
    /// attention's memory traffic on long prompts and chats).
    pub kv_dtype: KvDType,
    /// Called after each loading step; may cancel the load.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("device", &self.device)
            .field("llm_dtype", &self.llm_dtype)
            .field("vit_dtype", &self.vit_dtype)
            .field("kv_dtype", &self.kv_dtype)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

/// What a loaded model is.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// Vision/connector/LoRA settings in force.
    pub config: MiniGptMedConfig,
    /// LLaMA dimensions.
    pub llama: LlamaConfig,
    /// LLM weight storage.
    pub llm_dtype: WeightDType,
    /// ViT weight storage.
    pub vit_dtype: WeightDType,
    /// KV cache storage.
    pub kv_dtype: KvDType,
    /// Bytes of LLM weights in memory.
    pub llm_weight_bytes: usize,
    /// Bytes of LLM weights one decode step reads: all but the embedding table, of which a
    /// step reads one row. Divided by a step's time, the memory bandwidth decode reaches.
    pub llm_step_bytes: usize,
    /// Milliseconds spent in [`Model::load`].
    pub load_ms: f64,
}

/// Image embeddings ready to be spliced into a prompt, computed once per image.
#[derive(Debug, Clone)]
pub struct ImageEmbeddings {
    /// `[n_tokens, hidden]` f32 (256 x 4096 for the real model).
    pub embeds: Tensor,
    /// Width of the input image in pixels (boxes are scaled to it).
    pub width: usize,
    /// Height of the input image in pixels.
    pub height: usize,
}

/// Every intermediate of the image path, for parity checks and inspection.
#[derive(Debug, Clone)]
pub struct EncodeStages {
    /// The resized RGB image the model sees.
    pub view: ModelView,
    /// ViT output before `ln_vision`, `[1 + grid^2, width]` (cls first).
    pub vit_tokens: Tensor,
    /// After `ln_vision`, `[1 + grid^2, width]`.
    pub features: Tensor,
    /// After grouping and `llama_proj`, `[grid^2 / group, hidden]`.
    pub image_embeds: Tensor,
}

/// A loaded MiniGPT-Med model. Immutable and `Send + Sync`: share it between threads (e.g. in
/// an `Arc`); each generation or chat has its own KV cache.
pub struct Model {
    cfg: MiniGptMedConfig,
    vit: EvaVit,
    connector: Connector,
    llama: Llama,
    codec: TextCodec,
    device: candle_core::Device,
    info: ModelInfo,
}

impl Model {
    /// Loads the model from the original files. Weights are read once, tensor by tensor
    /// (safetensors memory-mapped), LoRA merged and the position table interpolated on the way.
    pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let s = Sources::open(files)?;
        let lora = LoraDeltas::find(s.ckpt.as_ref(), &s.cfg.lora, &s.llama_cfg, &opts.device.candle()?)?;
        Self::from_sources(
            s.cfg,
            s.llama_cfg,
            s.codec,
            s.vit.as_ref(),
            s.ckpt.as_ref(),
            s.llama.as_ref(),
            &lora,
            opts,
            start,
        )
    }

    /// Opens a converted model file (`minigpt-med convert`): memory-mapped, quantized matrices
    /// used as stored (repacked into the kernels' layout in one pass, never requantized),
    /// dense ones built as from the original files. Answers are bit-identical to
    /// [`Self::load`] of the original files with the dtypes the file was converted to.
    ///
    /// The LLM dtype of a quantized file is the file's; a dense file's matrices follow
    /// `opts.llm_dtype` / `opts.vit_dtype` as the original files' would (so a dense file can
    /// still be quantized at load).
    pub fn open(path: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let o = crate::model_file::open(path.as_ref())?;
        let llm_dtype = if o.llm_dtype.is_quantized() { o.llm_dtype } else { opts.llm_dtype };
        let opts = LoadOptions { llm_dtype, ..opts.clone() };
        let (heads, kv_heads) = (o.llama.num_attention_heads, o.llama.kv_heads());
        let llama = GgufView::llama(Arc::clone(&o.file), heads, kv_heads);
        let vit = GgufView::vit(Arc::clone(&o.file));
        let proj = GgufView::projector(Arc::clone(&o.file));
        let lora = LoraDeltas::none(&proj);
        Self::from_sources(o.cfg, o.llama, o.codec, &vit, &proj, &llama, &lora, &opts, start)
    }

    /// A model of the given dimensions with random weights built in memory (never written to
    /// disk), for benchmarks at real size: the same loading, quantization and compute paths as
    /// real weights, which cost the same. `tokenizer_dir` supplies `tokenizer.json`.
    pub fn synthetic(
        cfg: MiniGptMedConfig,
        llama_cfg: LlamaConfig,
        tokenizer_dir: &Path,
        opts: &LoadOptions,
    ) -> Result<Self> {
        let start = Instant::now();
        let codec = TextCodec::from_dir(tokenizer_dir)?;
        let (vit, ckpt, llama) = crate::weights::synthetic_sources(&cfg, &llama_cfg);
        let lora = LoraDeltas::find(&ckpt, &cfg.lora, &llama_cfg, &opts.device.candle()?)?;
        Self::from_sources(cfg, llama_cfg, codec, &vit, &ckpt, &llama, &lora, opts, start)
    }

    #[allow(clippy::too_many_arguments)]
    fn from_sources(
        cfg: MiniGptMedConfig,
        llama_cfg: LlamaConfig,
        codec: TextCodec,
        vit_src: &dyn TensorSource,
        ckpt: &dyn TensorSource,
        llama_src: &dyn TensorSource,
        lora: &LoraDeltas,
        opts: &LoadOptions,
        start: Instant,
    ) -> Result<Self> {
        if matches!(opts.vit_dtype, WeightDType::Q8_0 | WeightDType::Q4_0 | WeightDType::Q4K) {
            return Err(Error::InvalidOption("the ViT runs in f32, f16 or bf16; quantize only the LLM".into()));
        }
        crate::cpu::keep_freed_memory();
        let device = opts.device.candle()?;
        let total = 1 + cfg.vision.depth + llama_cfg.num_hidden_layers + 2;
        let mut done = 0;
        let mut step = || -> Result<()> {
            done += 1;
            match &opts.progress {
                Some(p) if !p(LoadProgress { done, total }) => Err(Error::Cancelled),
                _ => Ok(()),
            }
        };

        // Every dimension is checked before any large read, so a wrong file fails fast.
        EvaVit::validate(vit_src, &cfg.vision)?;
        let connector = Connector::load(ckpt, &cfg, &llama_cfg, &device)?;
        let vit = EvaVit::load(vit_src, &cfg.vision, opts.vit_dtype, &device, &mut step)?;
        let mut llama = Llama::load(llama_src, &llama_cfg, lora, opts.llm_dtype, &device, &mut step)?;
        llama.kv_dtype = opts.kv_dtype;
        let info = ModelInfo {
            config: cfg.clone(),
            llama: llama_cfg,
            llm_dtype: opts.llm_dtype,
            vit_dtype: opts.vit_dtype,
            kv_dtype: opts.kv_dtype,
            llm_weight_bytes: llama.weight_bytes(),
            llm_step_bytes: llama.step_bytes(),
            load_ms: start.elapsed().as_secs_f64() * 1e3,
        };
        Ok(Self { cfg, vit, connector, llama, codec, device, info })
    }

    /// Loads a model laid out like the bundled tiny model (see [`ModelFiles::from_dir`]).
    pub fn load_dir(dir: impl AsRef<Path>, opts: &LoadOptions) -> Result<Self> {
        Self::load(&ModelFiles::from_dir(dir), opts)
    }

    /// What this model is.
    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// The tokenizer.
    pub fn tokenizer(&self) -> &TextCodec {
        &self.codec
    }

    /// The language model (for the decode loop and chats).
    pub(crate) fn llama(&self) -> &Llama {
        &self.llama
    }

    /// The position table after interpolation, `[1 + grid^2, width]`.
    pub fn pos_embed(&self) -> &Tensor {
        self.vit.pos_embed()
    }

    /// Runs the image path step by step, keeping every intermediate.
    pub fn encode_stages(&self, image: &Image) -> Result<EncodeStages> {
        self.encode_view_stages(image.model_view(self.cfg.vision.image_size))
    }

    /// [`Model::encode_stages`] from an already resized image (`view.size` must be the model's).
    pub fn encode_view_stages(&self, view: ModelView) -> Result<EncodeStages> {
        self.encode_view_timed(view, None)
    }

    /// [`Model::encode_view_stages`], adding each section's wall time to `split` when given.
    fn encode_view_timed(&self, view: ModelView, mut split: Option<&mut EncodeSplit>) -> Result<EncodeStages> {
        let size = self.cfg.vision.image_size;
        if view.size != size || view.chw.len() != 3 * size * size {
            return Err(Error::image(None, format!("the model takes {size}x{size} RGB views, got side {}", view.size)));
        }
        let pixels = view.tensor(&self.device)?;
        let vit_tokens = self.vit.forward_timed(&pixels, split.as_deref_mut())?;
        let t = std::time::Instant::now();
        let features = self.connector.normalize(&vit_tokens)?;
        let image_embeds = self.connector.project(&features)?;
        if let Some(split) = split {
            split.connector_ms += t.elapsed().as_secs_f64() * 1e3;
        }
        Ok(EncodeStages { view, vit_tokens, features, image_embeds })
    }

    /// Encodes `image` once, timing each section ([`EncodeSplit`]): where the encode's time
    /// goes (the products with weights, the attention, the rest of the ViT, the connector).
    /// The embeddings are those of [`Self::encode_image`]; `bench` reports the split.
    pub fn encode_split(&self, image: &Image) -> Result<(ImageEmbeddings, EncodeSplit)> {
        let mut split = EncodeSplit::default();
        let stages = self.encode_view_timed(image.model_view(self.cfg.vision.image_size), Some(&mut split))?;
        Ok((ImageEmbeddings { embeds: stages.image_embeds, width: image.width(), height: image.height() }, split))
    }

    /// The side of the square image the model sees (448).
    pub fn image_size(&self) -> usize {
        self.cfg.vision.image_size
    }

    /// Image embeddings for `image` (preprocess, ViT, projection); reuse them across questions.
    pub fn encode_image(&self, image: &Image) -> Result<ImageEmbeddings> {
        let stages = self.encode_stages(image)?;
        Ok(ImageEmbeddings { embeds: stages.image_embeds, width: image.width(), height: image.height() })
    }

    /// The prompt for an instruction, tokenized.
    pub fn prompt(&self, instruction: &str) -> Result<Prompt> {
        self.codec.prompt(instruction)
    }

    /// The LLM input `[L, hidden]`: embedded ids before the image, the image embeddings, the
    /// embedded ids after it.
    pub fn input_embeds(&self, image: &ImageEmbeddings, prompt: &Prompt) -> Result<Tensor> {
        let before = self.llama.embed(&prompt.before_image)?;
        let after = self.llama.embed(&prompt.after_image)?;
        Ok(Tensor::cat(&[&before, &image.embeds.to_dtype(DType::F32)?, &after], 0)?)
    }

    /// The LLM input `[L, hidden]` of a study's shared prefix: the ids before the image, then
    /// the image embeddings.
    pub(crate) fn input_embeds_before(&self, image: &ImageEmbeddings, before_image: &[u32]) -> Result<Tensor> {
        let before = self.llama.embed(before_image)?;
        Ok(Tensor::cat(&[&before, &image.embeds.to_dtype(DType::F32)?], 0)?)
    }

    /// Prepares `image` for many questions: encoded once, the prompt up to its image tokens run
    /// once ([`Study`]; each [`Study::ask`] then costs only the question's tokens). For a
    /// study that owns its model, use `Study::new(Arc<Model>, embeddings)`.
    pub fn study(&self, image: &Image) -> Result<Study<&Model>> {
        Study::new(self, self.encode_image(image)?)
    }

    /// Logits `[vocab]` of the last prompt position.
    pub fn prompt_logits(&self, image: &ImageEmbeddings, prompt: &Prompt) -> Result<Tensor> {
        self.logits_for_embeds(&self.input_embeds(image, prompt)?)
    }

    /// Token embeddings `[ids.len(), hidden]` f32.
    pub fn embed_ids(&self, ids: &[u32]) -> Result<Tensor> {
        self.llama.embed(ids)
    }

    /// Logits `[vocab]` after a fresh forward pass over input embeddings `x: [L, hidden]`.
    pub fn logits_for_embeds(&self, x: &Tensor) -> Result<Tensor> {
        let mut cache = self.llama.new_cache(x.dim(0)?)?;
        self.llama.forward(x, &mut cache)
    }

    /// Answers `task` about `image`.
    pub fn generate(&self, image: &Image, task: &Task, opts: &GenerateOptions) -> Result<Answer> {
        self.generate_stream(image, task, opts, &mut |_| true)
    }

    /// Like [`Model::generate`], calling `on_text` with each new piece of the answer text (whole
    /// UTF-8 characters; the pieces concatenate to `answer.text`). Returning `false` stops the
    /// generation; the answer so far is returned with [`StopReason::Cancelled`].
    pub fn generate_stream(
        &self,
        image: &Image,
        task: &Task,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        opts.validate()?;
        let instruction = task.instruction(image.width(), image.height())?;
        let t0 = Instant::now();
        let emb = self.encode_image(image)?;
        let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut answer = self.generate_from_embeddings(&emb, &instruction, opts, on_text)?;
        answer.timings.encode_ms = encode_ms;
        Ok(answer)
    }

    /// Answers a verbatim `instruction` about already-encoded image embeddings.
    pub fn generate_from_embeddings(
        &self,
        image: &ImageEmbeddings,
        instruction: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        self.prepare_first_turn(image, instruction, &[], opts)?.run(self, opts, on_text)
    }

    /// The single-turn prompt for `instruction` about `image`, in a fresh cache, ready to run.
    pub(crate) fn prepare_first_turn(
        &self,
        image: &ImageEmbeddings,
        instruction: &str,
        history: &[Exchange],
        opts: &GenerateOptions,
    ) -> Result<Prepared> {
        opts.validate()?;
        let prompt = self.tokenizer().conversation(history, instruction)?;
        let (x, fit) = self.first_turn_input(image, &prompt, 0, opts)?;
        let cache = self.llama.new_cache(x.dim(0)? + fit.new_tokens)?;
        Ok(Prepared { x, cache, budget: fit.new_tokens, width: image.width, height: image.height })
    }

    /// The LLM input `[L, hidden]` of the single-turn prompt for `instruction` about `image`,
    /// after `base` cached positions, and how it fits the context: tokenized and checked
    /// (left-truncated under a `context_limit`) before anything is embedded.
    pub(crate) fn first_turn_input(
        &self,
        image: &ImageEmbeddings,
        prompt: &Prompt,
        base: usize,
        opts: &GenerateOptions,
    ) -> Result<(Tensor, Fit)> {
        let len = prompt.before_image.len() + image.embeds.dim(0)? + prompt.after_image.len();
        let fit = fit_context(base, len, opts, self.llama.config().max_position_embeddings)?;
        let x = self.input_embeds(image, prompt)?;
        let x = if fit.drop > 0 { x.narrow(0, fit.drop, len - fit.drop)? } else { x };
        Ok((x, fit))
    }

    /// `answer` as every front door writes it in JSON (`generate --json`, the service's
    /// `/v1/answer`): its fields, with the model's load time in `timings.load_ms`.
    pub fn answer_json(&self, answer: &Answer) -> serde_json::Value {
        let mut v = serde_json::to_value(answer).unwrap_or_default();
        v["timings"]["load_ms"] = serde_json::json!(self.info().load_ms);
        v
    }

    /// Starts a conversation about `image` (encoded once; the KV cache is kept between turns).
    /// For a chat that owns its model (e.g. in a binding), use `Chat::new(Arc<Model>, ..)`.
    pub fn chat(&self, image: &Image) -> Result<Chat<&Model>> {
        Ok(Chat::new(self, self.encode_image(image)?))
    }
}
