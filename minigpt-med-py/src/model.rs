//! `Model` and `Chat`.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};

use minigpt_med::{Chat, ChatHistory, LoadOptions, LoadProgress, Model, ModelFiles};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};

use crate::answer::PyAnswer;
use crate::convert::{to_image, to_task, Decoding, StopArg};
use crate::errors::IntoPyResult;
use crate::stream::{run_blocking, Job, PyTextStream};

/// Forwards load progress to a Python callable, keeping its first error for after the load.
struct Progress {
    callable: Py<PyAny>,
    error: Mutex<Option<PyErr>>,
}

impl Progress {
    /// `True`/`None`: the default bar (tqdm if importable); `False`: none; else a callable.
    fn from_arg(py: Python<'_>, arg: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Arc<Self>>> {
        let callable = match arg {
            Some(a) if a.is_callable() => a.clone(),
            Some(a) if !a.is_truthy()? => return Ok(None),
            _ => py.import("minigpt_med._progress")?.call_method0("default_progress")?,
        };
        if callable.is_none() {
            return Ok(None);
        }
        Ok(Some(Arc::new(Self { callable: callable.unbind(), error: Mutex::new(None) })))
    }

    /// Calls the callable; `false` (cancel the load) when it returned `False` or raised.
    fn report(&self, p: LoadProgress) -> bool {
        Python::attach(|py| {
            let mut error = self.error.lock().unwrap_or_else(|e| e.into_inner());
            if error.is_some() {
                return false;
            }
            match self.callable.call1(py, (p.done, p.total)) {
                // Only an explicit `False` cancels: a bar's `None` (or any other value) goes on.
                Ok(r) => !r.bind(py).is_instance_of::<PyBool>() || r.bind(py).is_truthy().unwrap_or(true),
                Err(e) => {
                    *error = Some(e);
                    false
                }
            }
        })
    }

    /// Closes a bar (anything with `close()`) and returns the callback's first error.
    fn finish(&self, py: Python<'_>) -> PyResult<()> {
        let bar = self.callable.bind(py);
        if bar.hasattr("close")? {
            bar.call_method0("close")?;
        }
        match self.error.lock().unwrap_or_else(|e| e.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

/// Where a model is loaded from.
enum Source {
    /// The original files.
    Files(ModelFiles),
    /// A converted model file.
    File(PathBuf),
}

fn load_model(
    py: Python<'_>,
    source: Source,
    device: &str,
    dtype: &str,
    vit_dtype: &str,
    kv_dtype: &str,
    progress: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyModel> {
    let progress = Progress::from_arg(py, progress)?;
    let mut opts = LoadOptions {
        device: device.parse().py()?,
        llm_dtype: dtype.parse().py()?,
        vit_dtype: vit_dtype.parse().py()?,
        kv_dtype: kv_dtype.parse().py()?,
        progress: None,
    };
    if let Some(p) = &progress {
        let p = Arc::clone(p);
        opts.progress = Some(Arc::new(move |step| p.report(step)));
    }
    let result = py.detach(|| match &source {
        Source::Files(files) => Model::load(files, &opts),
        Source::File(path) => Model::open(path, &opts),
    });
    // Drop the callback (and its reference to the Python callable) while attached.
    drop(opts);
    // The callback's own exception, if it raised, explains the cancellation best.
    progress.map_or(Ok(()), |p| p.finish(py))?;
    Ok(PyModel { inner: Arc::new(result.py()?) })
}

/// A loaded MiniGPT-Med model.
///
/// Thread-safe: share one ``Model`` between threads; each call has its own state. Loading and
/// generating release the GIL.
#[pyclass(frozen, name = "Model", module = "minigpt_med")]
pub(crate) struct PyModel {
    inner: Arc<Model>,
}

impl PyModel {
    /// The work of one generation, run by `generate` (blocking) or `stream` (iterated).
    #[allow(clippy::too_many_arguments)]
    fn job(
        &self,
        image: &Bound<'_, PyAny>,
        task: &str,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        color: Option<&str>,
        window: Option<(f64, f64)>,
        decoding: Decoding,
    ) -> PyResult<Job> {
        let task = to_task(task, prompt, region)?;
        let opts = decoding.to_options()?;
        let image = to_image(image, color, window)?;
        let model = Arc::clone(&self.inner);
        Ok(Box::new(move |on_text| model.generate_stream(&image, &task, &opts, on_text)))
    }
}

// The keyword lists mirror every core option, so the methods have many parameters by design.
#[allow(clippy::too_many_arguments)]
#[pymethods]
impl PyModel {
    /// Loads the model from a converted model file (``Model.load("minigpt-med.gguf")``,
    /// written once by ``minigpt-med convert``: memory-mapped, loaded in seconds) or from the
    /// original MiniGPT-Med files.
    ///
    /// Args:
    ///     llama: a converted model file (then leave ``vit`` and ``checkpoint`` out), or the
    ///         HF LLaMA-2-7b-chat directory (config.json, tokenizer.json, safetensors).
    ///     vit: ``eva_vit_g.pth`` (original files only).
    ///     checkpoint: the MiniGPT-Med checkpoint (``minigpt_med.pth``; original files only).
    ///     config: optional ``minigpt_med.json`` (defaults are the real model's).
    ///     device: ``"cpu"``, ``"cuda"`` or ``"cuda:N"``.
    ///     dtype: LLaMA weights: ``"f32"`` (exact), ``"f16"``, ``"bf16"``, ``"q8_0"``, ``"q4_0"``, ``"q4k"``.
    ///     vit_dtype: ViT weights: ``"f32"``, ``"f16"`` or ``"bf16"``.
    ///     kv_dtype: the KV cache: ``"f32"`` (exact) or ``"f16"`` (half the attention's
    ///         memory traffic on long chats; logits within ~1e-2 on the tiny model).
    ///     progress: ``True`` (default) shows a tqdm bar if tqdm is installed, ``False`` shows
    ///         nothing, a callable is called as ``progress(done, total)``; it cancels the
    ///         load by returning ``False`` (:class:`CancelledError`) or by raising (the
    ///         exception propagates).
    ///
    /// Raises:
    ///     ModelFileError: a file is missing, unreadable, or not what it should be.
    ///     OptionsError: an unknown device or dtype.
    ///     UnsupportedError: e.g. CUDA in a build without it.
    #[staticmethod]
    #[pyo3(signature = (llama, vit = None, checkpoint = None, config = None, *, device = "cpu", dtype = "f32", vit_dtype = "f32", kv_dtype = "f32", progress = None))]
    fn load(
        py: Python<'_>,
        llama: PathBuf,
        vit: Option<PathBuf>,
        checkpoint: Option<PathBuf>,
        config: Option<PathBuf>,
        device: &str,
        dtype: &str,
        vit_dtype: &str,
        kv_dtype: &str,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        let source = match (vit, checkpoint, config) {
            (Some(vit), Some(checkpoint), config) => {
                Source::Files(ModelFiles { llama_dir: llama, vit, checkpoint, config })
            }
            (None, None, None) => Source::File(llama),
            _ => {
                return Err::<Self, _>(minigpt_med::Error::InvalidOption(
                    "give a converted model file alone, or the LLaMA directory with both vit= and checkpoint=".into(),
                ))
                .py()
            }
        };
        load_model(py, source, device, dtype, vit_dtype, kv_dtype, progress)
    }

    /// Loads a model from a directory laid out like the bundled tiny model:
    /// ``llama-2-7b-chat-hf/``, ``eva_vit_g.pth``, ``minigpt_med.pth`` and, if present,
    /// ``minigpt_med.json``. Other arguments as :meth:`load`.
    #[staticmethod]
    #[pyo3(signature = (directory, *, device = "cpu", dtype = "f32", vit_dtype = "f32", kv_dtype = "f32", progress = None))]
    fn load_dir(
        py: Python<'_>,
        directory: PathBuf,
        device: &str,
        dtype: &str,
        vit_dtype: &str,
        kv_dtype: &str,
        progress: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Self> {
        load_model(py, Source::Files(ModelFiles::from_dir(directory)), device, dtype, vit_dtype, kv_dtype, progress)
    }

    /// Answers a task about an image.
    ///
    /// Args:
    ///     image: a path, encoded bytes, a numpy array (uint8 ``HxW``/``HxWx3``, uint16
    ///         ``HxW``), a PIL image or an :class:`Image`.
    ///     task: ``"report"``, ``"vqa"``, ``"detection"``, ``"refer"``, ``"grounding"``,
    ///         ``"identify"`` or ``"custom"`` (``prompt`` used verbatim, tags included).
    ///     prompt: the task's text: the question (vqa), class (detection), phrase (refer),
    ///         instruction (report/grounding, optional), question (identify, optional).
    ///     region: for ``identify``: ``(x1, y1, x2, y2)`` in pixels, or a :class:`Region`.
    ///     color: ``"gray"`` (evaluation, default) or ``"rgb"`` (demo).
    ///     window: ``(center, width)`` intensity window for 16-bit inputs.
    ///     preset: ``"eval"`` (default: greedy, 300 tokens) or ``"demo"`` (the original demo's
    ///         sampling: temperature 0.6, top_p 0.9, top_k 50, repetition penalty 1.05, 500 tokens).
    ///     max_new_tokens: most tokens to generate.
    ///     temperature: sample at this temperature (0: greedy). Alone it samples the whole
    ///         distribution (top_p 1, top_k 0, seed 0), as the CLI's ``--temperature`` does.
    ///     top_p, top_k, seed: sampling settings (need sampling: a temperature or ``"demo"``).
    ///     repetition_penalty: HF-style penalty (1.0 = off).
    ///     stop: a stop string or a list of them.
    ///     context_limit: cap on prompt + new tokens (the prompt is left-truncated to fit).
    ///
    /// Returns:
    ///     Answer
    ///
    /// Raises:
    ///     ImageError, OptionsError, ContextOverflowError; ``KeyboardInterrupt`` on Ctrl-C.
    #[pyo3(signature = (image, task = "report", prompt = None, *, region = None, color = None, window = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn generate(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        task: &str,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        color: Option<&str>,
        window: Option<(f64, f64)>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyAnswer> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        run_blocking(py, self.job(image, task, prompt, region, color, window, decoding)?).map(PyAnswer::from)
    }

    /// Like :meth:`generate`, but returns a :class:`TextStream` yielding the answer text piece
    /// by piece as it is generated (same arguments). The pieces concatenate to the answer text;
    /// the full :class:`Answer` is ``stream.answer`` once the stream is exhausted.
    #[pyo3(signature = (image, task = "report", prompt = None, *, region = None, color = None, window = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn stream(
        &self,
        image: &Bound<'_, PyAny>,
        task: &str,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        color: Option<&str>,
        window: Option<(f64, f64)>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyTextStream> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        PyTextStream::spawn(self.job(image, task, prompt, region, color, window, decoding)?)
    }

    /// Starts a conversation about one image: the image is encoded once and every turn stays
    /// in the KV cache, so follow-up questions cost only their own tokens.
    ///
    /// Args:
    ///     image: any accepted image input (see :meth:`generate`).
    ///     color, window: as in :meth:`generate`.
    ///     history: ``"keep_answers"`` (default: earlier answers stay in context) or
    ///         ``"original"`` (as the original demo: earlier answers are replaced by ``</s>``).
    ///
    /// Returns:
    ///     Chat
    #[pyo3(signature = (image, *, color = None, window = None, history = "keep_answers"))]
    fn chat(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        color: Option<&str>,
        window: Option<(f64, f64)>,
        history: &str,
    ) -> PyResult<PyChat> {
        let history: ChatHistory = history.parse().py()?;
        let image = to_image(image, color, window)?;
        let model = Arc::clone(&self.inner);
        let cell = py
            .detach(|| model.encode_image(&image).map(|emb| Chat::new(Arc::clone(&model), emb).with_history(history)))
            .py()?;
        Ok(PyChat { cell: Arc::new(Mutex::new(cell)), width: image.width(), height: image.height() })
    }

    /// Prepares one image for many questions: encoded once, the prompt up to its image tokens
    /// run once; each :meth:`Study.ask` then costs only the question's tokens and answers as
    /// :meth:`generate` would.
    ///
    /// Args:
    ///     image: any accepted image input (see :meth:`generate`).
    ///     color, window: as in :meth:`generate`.
    ///
    /// Returns:
    ///     Study
    #[pyo3(signature = (image, *, color = None, window = None))]
    fn study(
        &self,
        py: Python<'_>,
        image: &Bound<'_, PyAny>,
        color: Option<&str>,
        window: Option<(f64, f64)>,
    ) -> PyResult<crate::study::PyStudy> {
        let image = to_image(image, color, window)?;
        crate::study::study(py, &self.inner, image)
    }

    /// Answers many items together: each decode step is one pass over the weights for every
    /// item still running (faster in total than one :meth:`generate` after another), and
    /// each answer equals the one :meth:`generate` would give. The GIL is released for the
    /// whole batch; Ctrl-C stops it and raises ``KeyboardInterrupt``.
    ///
    /// Args:
    ///     items: an iterable of dicts, each with ``image`` (any input :meth:`generate` takes)
    ///         and optionally ``task`` (default ``"report"``) with ``prompt``/``region``, or a
    ///         verbatim ``instruction``; ``color`` and ``window``. Items naming the same path
    ///         (or the same object) with the same colour and window share one encoding.
    ///     batch_size: most items decoding at once (each holds a KV cache, ~0.5 GB at the 7B
    ///         shape); the next starts as one ends. Default: all of them.
    ///     preset, max_new_tokens, temperature, top_p, top_k, seed, repetition_penalty, stop,
    ///         context_limit: as in :meth:`generate`, for every item.
    ///
    /// Returns:
    ///     list: one entry per item, in order: its :class:`Answer`, or the exception instance
    ///     (``ImageError``, ``OptionsError``, ...) of an item that failed, which fails alone.
    ///
    /// Raises:
    ///     OptionsError for bad decoding options (they apply to every item).
    #[pyo3(signature = (items, *, batch_size = None, preset = None, max_new_tokens = None, temperature = None,
        top_p = None, top_k = None, seed = None, repetition_penalty = None, stop = None, context_limit = None))]
    fn generate_batch(
        &self,
        py: Python<'_>,
        items: &Bound<'_, PyAny>,
        batch_size: Option<i64>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<Vec<Py<PyAny>>> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        let batch_size = match batch_size {
            Some(n) if n < 1 => return Err(crate::errors::options_error(format!("batch_size {n} must be at least 1"))),
            n => n.map(|n| n as usize),
        };
        crate::batch::generate_batch(py, &self.inner, items, decoding.to_options()?, batch_size)
    }

    /// What this model is: dtypes, sizes and load time, as a dict.
    #[getter]
    fn info<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let info = self.inner.info();
        let d = PyDict::new(py);
        d.set_item("llm_dtype", info.llm_dtype.to_string())?;
        d.set_item("vit_dtype", info.vit_dtype.to_string())?;
        d.set_item("kv_dtype", info.kv_dtype.to_string())?;
        d.set_item("llm_weight_bytes", info.llm_weight_bytes)?;
        d.set_item("load_ms", info.load_ms)?;
        d.set_item("image_size", self.inner.image_size())?;
        d.set_item("hidden_size", info.llama.hidden_size)?;
        d.set_item("num_layers", info.llama.num_hidden_layers)?;
        d.set_item("vocab_size", info.llama.vocab_size)?;
        d.set_item("context_length", info.llama.max_position_embeddings)?;
        Ok(d)
    }

    /// The side of the square image the model sees (448 for MiniGPT-Med).
    #[getter]
    fn image_size(&self) -> usize {
        self.inner.image_size()
    }

    fn __repr__(&self) -> String {
        let info = self.inner.info();
        format!(
            "Model(hidden_size={}, layers={}, llm_dtype={}, vit_dtype={})",
            info.llama.hidden_size, info.llama.num_hidden_layers, info.llm_dtype, info.vit_dtype
        )
    }
}

/// A core chat that owns a handle on its model, so it can live in a Python object.
type ChatCell = Chat<Arc<Model>>;

fn lock(m: &Mutex<ChatCell>) -> MutexGuard<'_, ChatCell> {
    // A panic mid-turn leaves the core's cache as the core left it; keep the chat usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A conversation about one image (from :meth:`Model.chat`).
///
/// One question at a time: concurrent calls on one ``Chat`` wait for each other.
#[pyclass(frozen, name = "Chat", module = "minigpt_med")]
pub(crate) struct PyChat {
    cell: Arc<Mutex<ChatCell>>,
    width: usize,
    height: usize,
}

impl PyChat {
    /// The work of answering one question, run by `ask` (blocking) or `stream` (iterated).
    fn job(
        &self,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        decoding: Decoding,
    ) -> PyResult<Job> {
        let instruction = self.instruction(instruction, task, prompt, region)?;
        let opts = decoding.to_options()?;
        let cell = Arc::clone(&self.cell);
        Ok(Box::new(move |on_text| lock(&cell).ask_stream(&instruction, &opts, on_text)))
    }

    /// The instruction for either a verbatim `instruction` or a `task` (built for this image).
    fn instruction(
        &self,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<String> {
        crate::convert::asked_task(instruction, task, prompt, region)?.instruction(self.width, self.height).py()
    }
}

#[allow(clippy::too_many_arguments)]
#[pymethods]
impl PyChat {
    /// Asks a question about the chat's image.
    ///
    /// Args:
    ///     instruction: the instruction verbatim, tags included, e.g.
    ///         ``"[vqa] Is there an effusion?"``; or leave it out and give ``task``.
    ///     task, prompt, region: a task as in :meth:`Model.generate`.
    ///     other keywords: decoding options as in :meth:`Model.generate`.
    ///
    /// Returns:
    ///     Answer
    #[pyo3(signature = (instruction = None, *, task = None, prompt = None, region = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn ask(
        &self,
        py: Python<'_>,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyAnswer> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        run_blocking(py, self.job(instruction, task, prompt, region, decoding)?).map(PyAnswer::from)
    }

    /// Like :meth:`ask`, but returns a :class:`TextStream` of the answer's pieces.
    #[pyo3(signature = (instruction = None, *, task = None, prompt = None, region = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn stream(
        &self,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyTextStream> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        PyTextStream::spawn(self.job(instruction, task, prompt, region, decoding)?)
    }

    /// Questions answered so far.
    #[getter]
    fn turns(&self, py: Python<'_>) -> usize {
        // Locked without the GIL: a running `ask` holds the lock and needs the GIL for Ctrl-C checks.
        py.detach(|| lock(&self.cell).turns())
    }

    /// Positions held in the KV cache.
    #[getter]
    fn context_len(&self, py: Python<'_>) -> usize {
        py.detach(|| lock(&self.cell).context_len())
    }

    fn __repr__(&self, py: Python<'_>) -> String {
        format!("Chat(image={}x{}, turns={})", self.width, self.height, self.turns(py))
    }
}
