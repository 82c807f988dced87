//! The engine: [`Model::load`] reads the three original files once, [`Model::generate`] answers a
//! [`Task`] about an [`Image`], [`Model::chat`] keeps a conversation about one image.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Tensor};

use crate::answer::{Answer, StopReason, Timings};
use crate::config::{LlamaConfig, MiniGptMedConfig, ModelFiles};
use crate::error::{Error, Result};
use crate::generate::{GenerateOptions, Sampler};
use crate::image::{Image, ModelView};
use crate::llm::{KvCache, Llama, LoraDeltas};
use crate::nn::{LayerNorm, Linear, WeightDType};
use crate::prompt::{postprocess_answer, Prompt, TextCodec};
use crate::task::Task;
use crate::vision::{Connector, EvaVit};
use crate::weights::{open_llama_dir, PthFile, TensorSource};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` cargo feature).
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let s = s.to_ascii_lowercase();
        if s == "cpu" {
            return Ok(Self::Cpu);
        }
        match s.strip_prefix("cuda") {
            Some("") => Ok(Self::Cuda(0)),
            Some(n) => n
                .trim_start_matches(':')
                .parse()
                .map(Self::Cuda)
                .map_err(|_| Error::InvalidOption(format!("device {s:?}: use cpu, cuda or cuda:N"))),
            None => Err(Error::InvalidOption(format!("device {s:?}: use cpu, cuda or cuda:N"))),
        }
    }
}

impl Device {
    fn candle(self) -> Result<candle_core::Device> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Unsupported(
                        "this build has no CUDA support: rebuild with `--features cuda`".into(),
                    ));
                }
                candle_core::Device::new_cuda(i)
                    .map_err(|e| Error::Unsupported(format!("CUDA device {i} is not usable: {e}")))
            }
        }
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

/// A load-progress callback.
pub type ProgressFn = Arc<dyn Fn(LoadProgress) + Send + Sync>;

/// How to load a model.
#[derive(Clone, Default)]
pub struct LoadOptions {
    /// Where to run.
    pub device: Device,
    /// How LLaMA's matrices are held (f32 = exact; f16 or q8_0/q4_0/q4k to save memory).
    pub llm_dtype: WeightDType,
    /// How the ViT's matrices are held (f32 or f16).
    pub vit_dtype: WeightDType,
    /// Called after each loading step.
    pub progress: Option<ProgressFn>,
}

impl std::fmt::Debug for LoadOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadOptions")
            .field("device", &self.device)
            .field("llm_dtype", &self.llm_dtype)
            .field("vit_dtype", &self.vit_dtype)
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
    /// Bytes of LLM weights in memory.
    pub llm_weight_bytes: usize,
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

const CKPT_HINT: &str = "--checkpoint must be the MiniGPT-Med checkpoint (.pth with llama_proj and LoRA weights)";

impl Model {
    /// Loads the model from the original files. Weights are read once, tensor by tensor
    /// (safetensors memory-mapped), LoRA merged and the position table interpolated on the way.
    pub fn load(files: &ModelFiles, opts: &LoadOptions) -> Result<Self> {
        let start = Instant::now();
        let device = opts.device.candle()?;
        if matches!(opts.vit_dtype, WeightDType::Q8_0 | WeightDType::Q4_0 | WeightDType::Q4K) {
            return Err(Error::InvalidOption("the ViT runs in f32, f16 or bf16; quantize only the LLM".into()));
        }
        let cfg = match &files.config {
            Some(p) => {
                let c = MiniGptMedConfig::from_file(p)?;
                c.validate(p)?;
                c
            }
            None => MiniGptMedConfig::default(),
        };
        let llama_cfg = LlamaConfig::from_dir(&files.llama_dir)?;
        let codec = TextCodec::from_dir(&files.llama_dir)?;
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
        let ckpt = PthFile::open(&files.checkpoint, Some("model"), "MiniGPT-Med checkpoint (.pth, state dict under `model`)")?;
        let vit_src = PthFile::open(&files.vit, None, "EVA ViT-g weights (eva_vit_g.pth)")?;
        let llama_src = open_llama_dir(&files.llama_dir)?;

        let total = 1 + cfg.vision.depth + llama_cfg.num_hidden_layers + 2;
        let mut done = 0;
        let mut step = || {
            done += 1;
            if let Some(p) = &opts.progress {
                p(LoadProgress { done, total });
            }
        };

        let connector = load_connector(&ckpt, &cfg, &llama_cfg, &device)?;
        let vit = EvaVit::load(&vit_src, &cfg.vision, opts.vit_dtype, &device, &mut step)?;
        let lora = LoraDeltas::find(&ckpt, &cfg.lora, &llama_cfg, &device)?;
        let llama = Llama::load(llama_src.as_ref(), &llama_cfg, &lora, opts.llm_dtype, &device, &mut step)?;
        let info = ModelInfo {
            config: cfg.clone(),
            llama: llama_cfg,
            llm_dtype: opts.llm_dtype,
            vit_dtype: opts.vit_dtype,
            llm_weight_bytes: llama.weight_bytes(),
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
        let size = self.cfg.vision.image_size;
        if view.size != size || view.chw.len() != 3 * size * size {
            return Err(Error::image(None, format!("the model takes {size}x{size} RGB views, got side {}", view.size)));
        }
        let pixels = view.tensor(&self.device)?;
        let vit_tokens = self.vit.forward(&pixels)?;
        let features = self.connector.normalize(&vit_tokens)?;
        let image_embeds = self.connector.project(&features)?;
        Ok(EncodeStages { view, vit_tokens, features, image_embeds })
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

    /// Logits `[vocab]` of the last prompt position.
    pub fn prompt_logits(&self, image: &ImageEmbeddings, prompt: &Prompt) -> Result<Tensor> {
        let x = self.input_embeds(image, prompt)?;
        let mut cache = self.llama.new_cache(x.dim(0)?)?;
        self.llama.forward(&x, &mut cache)
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
        opts.validate()?;
        let prompt = self.prompt(instruction)?;
        let mut x = self.input_embeds(image, &prompt)?;
        let len = x.dim(0)?;
        if let Some(limit) = opts.context_limit {
            let keep = limit - opts.max_new_tokens;
            if len > keep {
                x = x.narrow(0, len - keep, keep)?;
            }
        }
        let len = x.dim(0)?;
        let max_pos = self.llama.config().max_position_embeddings;
        if len + opts.max_new_tokens > max_pos {
            return Err(Error::ContextOverflow {
                needed: len + opts.max_new_tokens,
                available: max_pos,
                hint: "lower max_new_tokens or set context_limit to left-truncate the prompt".into(),
            });
        }
        let mut cache = self.llama.new_cache(len + opts.max_new_tokens)?;
        let mut turn = Turn::new(self, opts, image.width, image.height);
        turn.run(&x, &mut cache, on_text)
    }

    /// Starts a conversation about `image` (encoded once; the KV cache is kept between turns).
    pub fn chat(&self, image: &Image) -> Result<Chat<'_>> {
        Ok(Chat::new(self, self.encode_image(image)?))
    }

    /// Starts a conversation about already-encoded image embeddings.
    pub fn chat_from_embeddings(&self, image: ImageEmbeddings) -> Chat<'_> {
        Chat::new(self, image)
    }
}

fn load_connector(
    ckpt: &PthFile,
    cfg: &MiniGptMedConfig,
    llama: &LlamaConfig,
    device: &candle_core::Device,
) -> Result<Connector> {
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
        return Err(Error::ShapeMismatch { name: "llama_proj.weight".into(), expected: vec![h, in_dim], found: w_shape, hint });
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
        LayerNorm::new(Tensor::ones(d, DType::F32, device)?, Tensor::zeros(d, DType::F32, device)?, cfg.vision.ln_vision_eps)?
    };
    Ok(Connector::new(ln, &cfg.connector, Linear::new(w, Some(b), WeightDType::F32)?))
}

/// One answer being generated: sampling, stopping, and the text streamed so far.
struct Turn<'m> {
    model: &'m Model,
    opts: &'m GenerateOptions,
    width: usize,
    height: usize,
    sampler: Sampler,
    ids: Vec<u32>,
    emitted: String,
}

impl<'m> Turn<'m> {
    fn new(model: &'m Model, opts: &'m GenerateOptions, width: usize, height: usize) -> Self {
        Self { model, opts, width, height, sampler: Sampler::new(opts), ids: Vec::new(), emitted: String::new() }
    }

    /// Feeds `x` (the prompt or a follow-up turn), then decodes. On error the cache is rolled
    /// back to where it was; on success the last generated token is left unfed in `ids`.
    fn run(&mut self, x: &Tensor, cache: &mut KvCache, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        let start_len = cache.len();
        let result = self.run_inner(x, cache, on_text);
        if result.is_err() {
            cache.truncate(start_len);
        }
        result
    }

    fn run_inner(&mut self, x: &Tensor, cache: &mut KvCache, on_text: &mut dyn FnMut(&str) -> bool) -> Result<Answer> {
        let llama = &self.model.llama;
        let eos = llama.config().eos_token_id;
        let t0 = Instant::now();
        let mut logits = llama.forward(x, cache)?;
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;
        let t1 = Instant::now();
        let mut stop_reason = StopReason::MaxTokens;
        // HF 4.30 starts generate(inputs_embeds=...) from input_ids = [BOS]; the repetition
        // penalty therefore sees BOS plus the generated ids.
        let mut history = vec![llama.config().bos_token_id];
        let mut text = String::new();
        loop {
            let mut l = logits.to_vec1::<f32>()?;
            let next = self.sampler.next(&mut l, &history);
            if next == eos {
                stop_reason = StopReason::Eos;
                break;
            }
            self.ids.push(next);
            history.push(next);
            text = postprocess_answer(&self.model.codec.decode(&self.ids)?);
            if let Some(cut) = self.opts.stop_strings.iter().filter_map(|s| text.find(s.as_str())).min() {
                text.truncate(cut);
                text = postprocess_answer(&text);
                stop_reason = StopReason::StopString;
                break;
            }
            let last_is_byte = self.model.codec.token(next).is_some_and(|t| t.starts_with("<0x"));
            if !self.emit(&text, last_is_byte, on_text) {
                stop_reason = StopReason::Cancelled;
                break;
            }
            if self.ids.len() >= self.opts.max_new_tokens {
                break;
            }
            logits = llama.forward(&llama.embed(&[next])?, cache)?;
        }
        if stop_reason != StopReason::Cancelled {
            if let Some(rest) = text.strip_prefix(self.emitted.as_str()) {
                if !rest.is_empty() {
                    on_text(rest);
                }
            }
        }
        let decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        let boxes = Answer::parse_boxes(&text, self.width, self.height);
        let n = self.ids.len();
        Ok(Answer {
            text,
            token_ids: self.ids.clone(),
            boxes,
            stop_reason,
            timings: Timings {
                encode_ms: 0.0,
                prefill_ms,
                decode_ms,
                tokens_per_s: if decode_ms > 0.0 { n as f64 / (decode_ms / 1e3) } else { 0.0 },
            },
        })
    }

    /// Sends the stable new part of `text`: trailing whitespace (which the final strip may
    /// remove), a possibly incomplete byte-fallback character, and a possible stop-string
    /// prefix are held back until they are settled.
    fn emit(&mut self, text: &str, last_is_byte: bool, on_text: &mut dyn FnMut(&str) -> bool) -> bool {
        let mut stable = text.trim_end_matches(crate::prompt::py_is_space);
        if last_is_byte {
            stable = stable.trim_end_matches('\u{FFFD}');
        }
        for s in &self.opts.stop_strings {
            for k in (1..s.len()).rev() {
                if s.is_char_boundary(k) && stable.ends_with(&s[..k]) {
                    stable = &stable[..stable.len() - k];
                    break;
                }
            }
        }
        match stable.strip_prefix(self.emitted.as_str()) {
            Some(rest) if !rest.is_empty() => {
                let rest = rest.to_owned();
                self.emitted.push_str(&rest);
                on_text(&rest)
            }
            _ => true,
        }
    }
}

/// How a chat treats earlier answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChatHistory {
    /// Earlier answers stay in context (this engine's default).
    #[default]
    KeepAnswers,
    /// As the original demo: each earlier answer is replaced by `</s>`.
    Original,
}

/// A conversation about one image. The image and every earlier turn stay in the KV cache, so a
/// follow-up question costs only its own tokens. One thread at a time.
pub struct Chat<'m> {
    model: &'m Model,
    image: ImageEmbeddings,
    cache: Option<KvCache>,
    /// Generated ids not yet fed to the model (the last token of the previous answer).
    unfed: Vec<u32>,
    /// Cache length before the previous answer (for [`ChatHistory::Original`]).
    before_answer: usize,
    history: ChatHistory,
    turns: usize,
}

impl<'m> Chat<'m> {
    fn new(model: &'m Model, image: ImageEmbeddings) -> Self {
        Self { model, image, cache: None, unfed: Vec::new(), before_answer: 0, history: ChatHistory::default(), turns: 0 }
    }

    /// Chooses how earlier answers are kept (before the first question).
    pub fn with_history(mut self, history: ChatHistory) -> Self {
        self.history = history;
        self
    }

    /// Questions answered so far.
    pub fn turns(&self) -> usize {
        self.turns
    }

    /// Positions held in the KV cache.
    pub fn context_len(&self) -> usize {
        self.cache.as_ref().map_or(0, KvCache::len)
    }

    /// Asks `instruction` (verbatim, e.g. `[vqa] Is there an effusion?`).
    pub fn ask(&mut self, instruction: &str, opts: &GenerateOptions) -> Result<Answer> {
        self.ask_stream(instruction, opts, &mut |_| true)
    }

    /// Asks `task` (its instruction built for this chat's image).
    pub fn ask_task(&mut self, task: &Task, opts: &GenerateOptions) -> Result<Answer> {
        self.ask(&task.instruction(self.image.width, self.image.height)?, opts)
    }

    /// [`Chat::ask`] with streaming, as [`Model::generate_stream`].
    pub fn ask_stream(
        &mut self,
        instruction: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str) -> bool,
    ) -> Result<Answer> {
        opts.validate()?;
        let model = self.model;
        let x = if self.turns == 0 {
            model.input_embeds(&self.image, &model.prompt(instruction)?)?
        } else {
            if instruction.contains(crate::prompt::IMAGE_PLACEHOLDER) {
                return Err(Error::InvalidOption("a follow-up question cannot add an image".into()));
            }
            let mut ids = match self.history {
                ChatHistory::KeepAnswers => self.unfed.clone(),
                ChatHistory::Original => Vec::new(),
            };
            ids.extend(model.codec.encode(&format!("</s><s>[INST] {instruction} [/INST]"), false)?);
            model.llama.embed(&ids)?
        };
        let n = x.dim(0)?;
        let max_pos = model.llama.config().max_position_embeddings;
        let base = match self.history {
            ChatHistory::Original if self.turns > 0 => self.before_answer,
            _ => self.context_len(),
        };
        if base + n + opts.max_new_tokens > max_pos {
            return Err(Error::ContextOverflow {
                needed: base + n + opts.max_new_tokens,
                available: max_pos,
                hint: "start a new chat or lower max_new_tokens".into(),
            });
        }
        let cache = match &mut self.cache {
            Some(c) => c,
            None => self.cache.insert(model.llama.new_cache(n + opts.max_new_tokens)?),
        };
        cache.truncate(base);
        let mut turn = Turn::new(model, opts, self.image.width, self.image.height);
        let result = turn.run(&x, cache, on_text);
        // On error `Turn::run` has rolled the cache back and the previous turn stays usable.
        if let Ok(answer) = &result {
            self.before_answer = base + n;
            // Every generated token but the last was fed; EOS (if any) is re-sent as `</s>`.
            self.unfed = match answer.stop_reason {
                StopReason::Eos => Vec::new(),
                _ => answer.token_ids.last().copied().into_iter().collect(),
            };
            self.turns += 1;
        }
        result
    }
}
