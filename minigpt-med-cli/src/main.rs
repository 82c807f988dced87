//! `minigpt-med`: MiniGPT-Med inference from the command line.

mod batch;
mod bench;
mod demo;
mod progress;
mod serve;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use minigpt_med::{
    ColorMode, DecodeSettings, Device, GenerateOptions, Image, ImageOptions, KvDType, LoadOptions, Model, ModelFiles,
    Preset, Region, Task, TaskKind, WeightDType, Window, WindowPreset,
};
use serde_json::json;

use crate::progress::Progress;

#[derive(Parser)]
#[command(
    name = "minigpt-med",
    version,
    about = "MiniGPT-Med radiology vision-language model inference (not a medical device)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// CPU threads for matrix work (default: all cores; also RAYON_NUM_THREADS).
    #[arg(long, global = true)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Command {
    /// Answer a task about an image with the real (or any) MiniGPT-Med weights.
    Generate(Box<GenerateArgs>),
    /// Run the whole pipeline offline on the bundled tiny model (random weights).
    Demo(DemoArgs),
    /// Write the 448x448 RGB image the model receives.
    Preprocess(PreprocessArgs),
    /// Measure load, image encode, prefill and decode speed and peak memory.
    Bench(Box<bench::BenchArgs>),
    /// Answer a manifest (JSONL) or a folder of images; results appended to a JSONL file,
    /// a rerun skipping the ids already there.
    Batch(Box<batch::BatchArgs>),
    /// Convert the three original files into one model file (GGUF), loaded in seconds.
    Convert(Box<ConvertArgs>),
    /// Print a model file's metadata, tensor types and sizes.
    Inspect(InspectArgs),
    /// Run the HTTP service: OpenAI-compatible chat completions, continuous batching, a viewer page.
    Serve(Box<serve::ServeArgs>),
}

#[derive(Args)]
pub(crate) struct ModelArgs {
    /// Hugging Face Llama-2-7b-chat-hf directory.
    #[arg(long, required_unless_present_any = ["model_dir", "model"])]
    llama: Option<PathBuf>,
    /// BLIP-2's eva_vit_g.pth.
    #[arg(long, required_unless_present_any = ["model_dir", "model"])]
    vit: Option<PathBuf>,
    /// The MiniGPT-Med checkpoint (.pth).
    #[arg(long, required_unless_present_any = ["model_dir", "model"])]
    checkpoint: Option<PathBuf>,
    /// Optional minigpt_med.json model config (defaults: the real model).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory laid out like the bundled tiny model, instead of the three paths.
    #[arg(long, conflicts_with_all = ["llama", "vit", "checkpoint"])]
    model_dir: Option<PathBuf>,
    /// A converted model file (`minigpt-med convert`), instead of the original files.
    #[arg(long, value_name = "FILE.gguf", conflicts_with_all = ["llama", "vit", "checkpoint", "model_dir", "config"])]
    model: Option<PathBuf>,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// LLM weights: f32 (exact), f16, bf16 (GPU), q8_0, q4_0, q4k.
    #[arg(long, default_value = "f32")]
    llm_dtype: WeightDType,
    /// ViT weights: f32 or f16.
    #[arg(long, default_value = "f32")]
    vit_dtype: WeightDType,
    /// KV cache: f32 (exact) or f16 (half the attention's memory traffic on long chats).
    #[arg(long, default_value = "f32")]
    kv_dtype: KvDType,
}

impl ModelArgs {
    fn files(&self) -> ModelFiles {
        let mut files = match &self.model_dir {
            Some(dir) => ModelFiles::from_dir(dir),
            None => ModelFiles::original(
                self.llama.clone().unwrap_or_default(),
                self.vit.clone().unwrap_or_default(),
                self.checkpoint.clone().unwrap_or_default(),
            ),
        };
        if let Some(c) = &self.config {
            files.config = Some(c.clone());
        }
        files
    }

    fn options(&self, quiet: bool) -> LoadOptions {
        let progress = (!quiet).then(|| Progress::stderr("loading").callback());
        LoadOptions {
            device: self.device,
            llm_dtype: self.llm_dtype,
            vit_dtype: self.vit_dtype,
            kv_dtype: self.kv_dtype,
            progress,
        }
    }

    /// The model: a converted file when `--model` is given, else the original files.
    pub(crate) fn load(&self, quiet: bool) -> Result<Model, minigpt_med::Error> {
        match &self.model {
            Some(file) => Model::open(file, &self.options(quiet)),
            None => Model::load(&self.files(), &self.options(quiet)),
        }
    }
}

#[derive(Args)]
struct ConvertArgs {
    /// Hugging Face Llama-2-7b-chat-hf directory.
    #[arg(long, required_unless_present = "model_dir")]
    llama: Option<PathBuf>,
    /// BLIP-2's eva_vit_g.pth.
    #[arg(long, required_unless_present = "model_dir")]
    vit: Option<PathBuf>,
    /// The MiniGPT-Med checkpoint (.pth).
    #[arg(long, required_unless_present = "model_dir")]
    checkpoint: Option<PathBuf>,
    /// Optional minigpt_med.json model config (defaults: the real model).
    #[arg(long)]
    config: Option<PathBuf>,
    /// A directory laid out like the bundled tiny model, instead of the three paths.
    #[arg(long, conflicts_with_all = ["llama", "vit", "checkpoint"])]
    model_dir: Option<PathBuf>,
    /// How the LLaMA is stored: f32 (exact), f16, q8_0, q4_0 or q4k.
    #[arg(long, default_value = "f16")]
    llm_dtype: WeightDType,
    /// How the ViT is stored: f32 or f16.
    #[arg(long, default_value = "f16")]
    vit_dtype: WeightDType,
    /// The model file to write (GGUF).
    #[arg(long, value_name = "FILE.gguf")]
    out: PathBuf,
    /// Print a JSON summary instead of a line.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct InspectArgs {
    /// A model file (GGUF).
    file: PathBuf,
    /// Print JSON (metadata and tensors) instead of a listing.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
struct TaskArgs {
    /// report (default), vqa, detection, refer, grounding, identify or custom.
    #[arg(long)]
    task: Option<TaskKind>,
    /// The task's text: the question, class, phrase, or a replacement instruction.
    #[arg(long)]
    prompt: Option<String>,
    /// A verbatim instruction, tags included (e.g. "[identify] this {<20><15><48><70>} is").
    #[arg(long, conflicts_with_all = ["task", "prompt"])]
    instruction: Option<String>,
    /// Region for identify, in pixels of the input image: x1,y1,x2,y2.
    #[arg(long = "box", value_name = "X1,Y1,X2,Y2", conflicts_with = "grid_box")]
    pixel_box: Option<String>,
    /// Region for identify on the model's 0-100 grid: x1,y1,x2,y2 (whole numbers).
    #[arg(long, value_name = "X1,Y1,X2,Y2")]
    grid_box: Option<String>,
}

impl TaskArgs {
    fn task(&self) -> Result<Task, minigpt_med::Error> {
        let region = Region::from_text(self.pixel_box.as_deref(), self.grid_box.as_deref())?;
        Task::from_fields(self.task, self.prompt.as_deref(), self.instruction.as_deref(), region)
    }
}

#[derive(Args)]
pub(crate) struct DecodeArgs {
    /// Most new tokens (default: the preset's, 300 for eval and 500 for demo).
    #[arg(long)]
    max_new_tokens: Option<usize>,
    /// eval (greedy, the paper's) or demo (the original demo's sampling, context capped at 2000).
    #[arg(long)]
    preset: Option<Preset>,
    /// Sample at this temperature (0: greedy); alone it samples the whole distribution.
    #[arg(long)]
    temperature: Option<f32>,
    /// Nucleus sampling mass (needs sampling).
    #[arg(long)]
    top_p: Option<f32>,
    /// Top-k (needs sampling; 0 = off).
    #[arg(long)]
    top_k: Option<usize>,
    /// Sampling seed (needs sampling; default 0).
    #[arg(long)]
    seed: Option<u64>,
    /// Repetition penalty (1.0 = off).
    #[arg(long)]
    repetition_penalty: Option<f32>,
    /// Stop when the answer contains this text (repeatable).
    #[arg(long = "stop")]
    stop: Vec<String>,
    /// Cap on prompt + new tokens; the prompt is left-truncated to fit.
    #[arg(long)]
    context_limit: Option<usize>,
    /// Never stop at the end-of-sequence token (answers of a known length, for load tests).
    #[arg(long)]
    ignore_eos: bool,
}

impl DecodeArgs {
    pub(crate) fn options(&self) -> Result<GenerateOptions, minigpt_med::Error> {
        DecodeSettings {
            preset: self.preset,
            max_new_tokens: self.max_new_tokens,
            temperature: self.temperature,
            top_p: self.top_p,
            top_k: self.top_k,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty,
            stop_strings: (!self.stop.is_empty()).then(|| self.stop.clone()),
            context_limit: self.context_limit,
            ignore_eos: self.ignore_eos.then_some(true),
        }
        .resolve()
    }
}

#[derive(Args)]
struct OutputArgs {
    /// Print one JSON object (text, token_ids, boxes, timings) instead of the text.
    #[arg(long)]
    json: bool,
    /// Print the answer as it is generated.
    #[arg(long, conflicts_with = "json")]
    stream: bool,
    /// Write the boxes drawn over the input image to this PNG.
    #[arg(long, value_name = "OUT.png")]
    draw: Option<PathBuf>,
}

#[derive(Args)]
struct ImageArgs {
    /// The input image (DICOM, PNG, JPEG, TIFF, BMP; sniffed by content).
    #[arg(long)]
    image: PathBuf,
    /// gray (the original evaluation: luma replicated) or rgb (the original demo).
    #[arg(long, default_value = "gray")]
    color: ColorMode,
    /// Intensity window CENTER,WIDTH on the image's real values (DICOM, 16-bit images).
    #[arg(long, value_name = "C,W", allow_hyphen_values = true)]
    window: Option<Window>,
    /// Named window: lung, mediastinum, bone, brain or abdomen.
    #[arg(long, value_name = "NAME", conflicts_with = "window")]
    window_preset: Option<WindowPreset>,
    /// Frame of a multi-frame DICOM (default: the middle one).
    #[arg(long)]
    frame: Option<usize>,
}

impl ImageArgs {
    fn open(&self) -> Result<Image, minigpt_med::Error> {
        let opts = ImageOptions {
            window: self.window,
            preset: self.window_preset,
            frame: self.frame,
            color: self.color,
            ..ImageOptions::default()
        };
        let image = Image::open_with(&self.image, &opts)?;
        if (self.window.is_some() || self.window_preset.is_some()) && image.effective_window().is_none() {
            eprintln!("note: {} is an 8-bit or colour image; the window is ignored", self.image.display());
        }
        Ok(image)
    }
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    #[command(flatten)]
    image: ImageArgs,
    #[command(flatten)]
    task: TaskArgs,
    #[command(flatten)]
    decode: DecodeArgs,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct DemoArgs {
    /// An image to use instead of the bundled CT slice.
    #[arg(long)]
    image: Option<PathBuf>,
    #[command(flatten)]
    task: TaskArgs,
    /// Most new tokens.
    #[arg(long, default_value_t = 20)]
    max_new_tokens: usize,
    #[command(flatten)]
    output: OutputArgs,
}

#[derive(Args)]
struct PreprocessArgs {
    #[command(flatten)]
    image: ImageArgs,
    /// Side of the square model input.
    #[arg(long, default_value_t = 448)]
    size: usize,
    /// Output PNG.
    #[arg(long)]
    out: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(n) = cli.threads {
        // Nothing has touched candle yet, so both of its pools will see this.
        if let Err(e) = minigpt_med::set_threads(n) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    }
    let result: Result<(), Box<dyn std::error::Error>> = match cli.command {
        Command::Generate(a) => generate(*a).map_err(Into::into),
        Command::Demo(a) => demo(a).map_err(Into::into),
        Command::Preprocess(a) => preprocess(a).map_err(Into::into),
        Command::Bench(a) => bench::bench(*a).map_err(Into::into),
        Command::Convert(a) => convert(*a).map_err(Into::into),
        Command::Batch(a) => batch::batch(*a).map_err(Into::into),
        Command::Inspect(a) => inspect(a).map_err(Into::into),
        Command::Serve(a) => serve::serve(*a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn generate(a: GenerateArgs) -> Result<(), minigpt_med::Error> {
    let image = a.image.open()?;
    let task = a.task.task()?;
    let opts = a.decode.options()?;
    let model = a.model.load(a.output.json)?;
    if let Some(draw) = &a.output.draw {
        minigpt_med::image::ensure_not_input(draw, &a.image.image)?;
    }
    run(&model, &image, &task, &opts, &a.output)
}

fn demo(a: DemoArgs) -> Result<(), minigpt_med::Error> {
    eprintln!(
        "minigpt-med demo: the bundled TINY model has RANDOM weights; its answers are gibberish by design.\n\
         It exercises the real pipeline (file formats, preprocessing, ViT, LoRA-merged LLaMA, decoding) offline.\n\
         For real answers pass the real weights to `minigpt-med generate` (see the README).\n\
         JPEG decoder: {}",
        minigpt_med::image::jpeg_decoder()
    );
    let dir = demo::unpack()?;
    let image = match &a.image {
        Some(p) => Image::open(p)?,
        None => Image::from_bytes(demo::CT_IMAGE)?,
    };
    let task = if a.task.task.is_none() && a.task.instruction.is_none() {
        Task::Refer("give me the location of tumor ".into())
    } else {
        a.task.task()?
    };
    let model = Model::load_dir(dir.path(), &LoadOptions::default())?;
    if let (Some(draw), Some(input)) = (&a.output.draw, &a.image) {
        minigpt_med::image::ensure_not_input(draw, input)?;
    }
    run(&model, &image, &task, &GenerateOptions::greedy(a.max_new_tokens), &a.output)
}

fn run(
    model: &Model,
    image: &Image,
    task: &Task,
    opts: &GenerateOptions,
    out: &OutputArgs,
) -> Result<(), minigpt_med::Error> {
    let answer = if out.stream {
        use std::io::Write;
        let a = model.generate_stream(image, task, opts, &mut |piece| {
            print!("{piece}");
            std::io::stdout().flush().is_ok()
        })?;
        println!();
        a
    } else {
        model.generate(image, task, opts)?
    };
    if let Some(path) = &out.draw {
        save_png(path, image.width(), image.height(), &answer.draw(image))?;
    }
    if out.json {
        println!("{}", model.answer_json(&answer));
    } else if !out.stream {
        println!("{}", answer.text);
    }
    Ok(())
}

fn save_png(path: &std::path::Path, w: usize, h: usize, rgb: &[u8]) -> Result<(), minigpt_med::Error> {
    minigpt_med::image::save_rgb_png(path, w, h, rgb)
}

fn preprocess(a: PreprocessArgs) -> Result<(), minigpt_med::Error> {
    let image = a.image.open()?;
    if let Some(w) = image.effective_window() {
        eprintln!("window {w}");
    }
    minigpt_med::image::ensure_not_input(&a.out, &a.image.image)?;
    image.model_view(a.size).save_png(&a.out)
}

fn convert(a: ConvertArgs) -> Result<(), minigpt_med::Error> {
    let mut files = match &a.model_dir {
        Some(dir) => ModelFiles::from_dir(dir),
        None => ModelFiles::original(
            a.llama.clone().unwrap_or_default(),
            a.vit.clone().unwrap_or_default(),
            a.checkpoint.clone().unwrap_or_default(),
        ),
    };
    if let Some(c) = &a.config {
        files.config = Some(c.clone());
    }
    let opts = minigpt_med::ConvertOptions {
        llm_dtype: a.llm_dtype,
        vit_dtype: a.vit_dtype,
        progress: Some(Progress::stderr("converting").callback()),
    };
    let s = minigpt_med::convert(&files, &opts, &a.out)?;
    if a.json {
        println!(
            "{}",
            json!({"path": s.path, "bytes": s.bytes, "tensors": s.tensors, "seconds": s.seconds,
                   "llm_dtype": a.llm_dtype.to_string(), "vit_dtype": a.vit_dtype.to_string()})
        );
    } else {
        println!(
            "wrote {} ({:.1} MB, {} tensors, llm {}, vit {}) in {:.1} s",
            s.path.display(),
            s.bytes as f64 / 1e6,
            s.tensors,
            a.llm_dtype,
            a.vit_dtype,
            s.seconds
        );
    }
    Ok(())
}

fn inspect(a: InspectArgs) -> Result<(), minigpt_med::Error> {
    let f = minigpt_med::gguf::GgufFile::open(&a.file)?;
    let mut by_type: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (_, t) in f.tensors() {
        let e = by_type.entry(t.dtype.name()).or_default();
        e.0 += 1;
        e.1 += t.bytes;
    }
    if a.json {
        let meta: serde_json::Map<String, serde_json::Value> =
            f.metadata().iter().map(|(k, v)| (k.clone(), json!(v.summary()))).collect();
        let tensors: Vec<_> = f
            .tensors()
            .iter()
            .map(|(n, t)| json!({"name": n, "dtype": t.dtype.name(), "shape": t.shape, "bytes": t.bytes}))
            .collect();
        println!(
            "{}",
            json!({"path": a.file, "bytes": f.len(), "gguf_version": f.version(), "metadata": meta, "tensors": tensors})
        );
        return Ok(());
    }
    println!(
        "{}: GGUF v{}, {:.1} MB, {} tensors",
        a.file.display(),
        f.version(),
        f.len() as f64 / 1e6,
        f.tensors().len()
    );
    println!("\nmetadata:");
    for (k, v) in f.metadata() {
        println!("  {k} = {}", v.summary());
    }
    println!("\ntensors by type:");
    for (ty, (n, bytes)) in &by_type {
        println!("  {ty:5} {n:5} tensors {:10.1} MB", *bytes as f64 / 1e6);
    }
    println!("\ntensors:");
    for (n, t) in f.tensors() {
        println!("  {n:40} {:5} {:?} {} bytes", t.dtype.name(), t.shape, t.bytes);
    }
    Ok(())
}
