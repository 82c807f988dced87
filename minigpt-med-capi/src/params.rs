//! The enums and versioned parameter structs of the ABI, and their conversion to engine types.
//!
//! Enums the caller passes in are received as plain `uint32_t` (the `*Value` aliases, which
//! the header spells with the enum's name): C and C++ may legally hold any number in an enum
//! variable, and a Rust enum with an unknown discriminant would be undefined behaviour, so
//! every incoming value is range-checked here.

use std::ffi::{c_char, c_void};

use super::ptr;
use super::status::Failure;

/// Where the model runs.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU (always available).
    Cpu = 0,
    /// A CUDA GPU (`device_index` picks which); needs a library built with the `cuda` feature.
    Cuda = 1,
}

/// How weights are held in memory.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dtype {
    /// 32-bit float: exact parity with the reference model.
    F32 = 0,
    /// 16-bit float: half the memory.
    F16 = 1,
    /// bfloat16 (for GPUs; slow on CPUs).
    Bf16 = 2,
    /// 8-bit blocks (llama.cpp Q8_0), quantized at load; LLM only.
    Q8_0 = 3,
    /// 4-bit blocks (llama.cpp Q4_0), quantized at load; LLM only.
    Q4_0 = 4,
    /// 4-bit k-quants (llama.cpp Q4_K), quantized at load; LLM only.
    Q4K = 5,
}

/// How the next token is chosen.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Always the most likely token (MiniGPT-Med's evaluation); the sampling fields are ignored.
    Greedy = 0,
    /// Random sampling with `temperature`, `top_p`, `top_k` and `seed`.
    Sample = 1,
}

/// What to ask the model. `text` is the task's argument; `region` is used by `IDENTIFY` only.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// A radiology report; `text` optional (default "Describe this image in detail").
    Report = 0,
    /// `[vqa] text`: a short answer to the question `text` (required).
    Vqa = 1,
    /// `[detection] text`: boxes of every instance of the class `text` (required).
    Detection = 2,
    /// `[refer] text`: the box of the thing `text` describes (required).
    Refer = 3,
    /// `[grounding] text`: a description with boxed phrases; `text` optional.
    Grounding = 4,
    /// `[identify] text {box}`: what is in `region` (required); `text` optional question.
    Identify = 5,
    /// `text` (required) used verbatim as the instruction, tags included.
    Custom = 6,
}

/// Named starting points for `mgm_GenerateParams` (see `mgm_generate_params_preset`).
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// The paper's evaluation: greedy, 300 new tokens (what `mgm_generate_params_default` gives).
    Eval = 0,
    /// The original demo's sampling: temperature 0.6, top-p 0.9, top-k 50, repetition penalty
    /// 1.05, 500 new tokens, context capped at 2000, seed 0.
    Demo = 1,
}

/// The unit of an `mgm_Region`'s corners.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegionKind {
    /// Integers 0..=100 on the model's grid.
    Grid = 0,
    /// Pixels of the input image.
    Pixels = 1,
}

/// The layout of a raw pixel buffer.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PixelFormat {
    /// One byte per pixel, grayscale.
    Gray8 = 0,
    /// Three bytes per pixel, R G B.
    Rgb8 = 1,
    /// One native-endian `uint16_t` per pixel, grayscale (mapped to 8 bits by a window, by
    /// default the min-max of the values).
    Gray16 = 2,
}

/// How colour images are fed to the model.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColorMode {
    /// Luma replicated to R, G, B (MiniGPT-Med's evaluation; the default).
    Gray = 0,
    /// The RGB image as is (MiniGPT-Med's demo).
    Rgb = 1,
}

/// How a chat treats earlier answers.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChatHistory {
    /// Earlier answers stay in context (the default).
    KeepAnswers = 0,
    /// As the original demo: each earlier answer is replaced by `</s>`.
    Original = 1,
}

/// An `mgm_Device` as received from C (checked before use).
pub type DeviceValue = u32;
/// An `mgm_Dtype` as received from C (checked before use).
pub type DtypeValue = u32;
/// An `mgm_Sampling` as received from C (checked before use).
pub type SamplingValue = u32;
/// An `mgm_Task` as received from C (checked before use).
pub type TaskValue = u32;
/// An `mgm_RegionKind` as received from C (checked before use).
pub type RegionKindValue = u32;
/// An `mgm_PixelFormat` as received from C (checked before use).
pub type PixelFormatValue = u32;
/// An `mgm_ColorMode` as received from C (checked before use).
pub type ColorModeValue = u32;
/// An `mgm_ChatHistory` as received from C (checked before use).
pub type ChatHistoryValue = u32;
/// An `mgm_Preset` as received from C (checked before use).
pub type PresetValue = u32;

/// Maps a raw enum value to one of `table`'s entries, or an error naming the argument.
fn lookup<T: Copy>(raw: u32, table: &[(u32, T)], what: &str) -> Result<T, Failure> {
    table
        .iter()
        .find(|(v, _)| *v == raw)
        .map(|(_, t)| *t)
        .ok_or_else(|| Failure::invalid(format!("{what} {raw} is not one of the header's values")))
}

pub(crate) fn device(raw: DeviceValue, index: u32) -> Result<engine::Device, Failure> {
    let kind = lookup(raw, &[(0, Device::Cpu), (1, Device::Cuda)], "device")?;
    Ok(match kind {
        Device::Cpu => engine::Device::Cpu,
        Device::Cuda => engine::Device::Cuda(index as usize),
    })
}

pub(crate) fn dtype(raw: DtypeValue, what: &str) -> Result<engine::WeightDType, Failure> {
    use engine::WeightDType as W;
    lookup(raw, &[(0, W::F32), (1, W::F16), (2, W::BF16), (3, W::Q8_0), (4, W::Q4_0), (5, W::Q4K)], what)
}

pub(crate) fn kv_dtype(raw: DtypeValue) -> Result<engine::KvDType, Failure> {
    lookup(raw, &[(0, engine::KvDType::F32), (1, engine::KvDType::F16)], "kv_dtype (MGM_DTYPE_F32 or MGM_DTYPE_F16)")
}

fn dtype_value(d: engine::WeightDType) -> DtypeValue {
    use engine::WeightDType as W;
    (match d {
        W::F32 => Dtype::F32,
        W::F16 => Dtype::F16,
        W::BF16 => Dtype::Bf16,
        W::Q8_0 => Dtype::Q8_0,
        W::Q4_0 => Dtype::Q4_0,
        W::Q4K => Dtype::Q4K,
    }) as u32
}

/// The engine's task kind for a raw `mgm_Task` (the engine validates the text and region).
pub(crate) fn task_kind(raw: TaskValue) -> Result<engine::TaskKind, Failure> {
    use engine::TaskKind as K;
    let table = [
        (0, K::Report),
        (1, K::Vqa),
        (2, K::Detection),
        (3, K::Refer),
        (4, K::Grounding),
        (5, K::Identify),
        (6, K::Custom),
    ];
    lookup(raw, &table, "task")
}

pub(crate) fn preset(raw: PresetValue) -> Result<engine::Preset, Failure> {
    lookup(raw, &[(0, engine::Preset::Eval), (1, engine::Preset::Demo)], "preset")
}

pub(crate) fn pixel_format(raw: PixelFormatValue) -> Result<PixelFormat, Failure> {
    lookup(raw, &[(0, PixelFormat::Gray8), (1, PixelFormat::Rgb8), (2, PixelFormat::Gray16)], "pixel format")
}

pub(crate) fn color_mode(raw: ColorModeValue) -> Result<engine::ColorMode, Failure> {
    lookup(raw, &[(0, engine::ColorMode::Gray), (1, engine::ColorMode::Rgb)], "color mode")
}

pub(crate) fn chat_history(raw: ChatHistoryValue) -> Result<engine::ChatHistory, Failure> {
    lookup(raw, &[(0, engine::ChatHistory::KeepAnswers), (1, engine::ChatHistory::Original)], "chat history")
}

/// A box given to `MGM_TASK_IDENTIFY`: corners `x1, y1, x2, y2`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Region {
    /// The unit of `coords` (an `mgm_RegionKind`).
    pub kind: RegionKindValue,
    /// `x1, y1, x2, y2`; for `MGM_REGION_KIND_GRID` whole numbers 0..=100.
    pub coords: [f64; 4],
}

impl Region {
    pub(crate) fn to_engine(self) -> Result<engine::Region, Failure> {
        let kind = lookup(self.kind, &[(0, RegionKind::Grid), (1, RegionKind::Pixels)], "region kind")?;
        Ok(match kind {
            RegionKind::Pixels => engine::Region::pixels(self.coords)?,
            RegionKind::Grid => engine::Region::grid(self.coords)?,
        })
    }
}

/// Called during loading with the fraction done (0..1]; return `true` to go on, `false` to
/// cancel (the load then stops at once and returns `MGM_STATUS_CANCELLED`). Runs on the
/// loading thread; it must not throw (C++ exceptions may not unwind through this library).
pub type ProgressCallback = Option<unsafe extern "C" fn(fraction: f32, user_data: *mut c_void) -> bool>;

/// Called with each new piece of answer text: `piece` is `len` bytes of UTF-8 (whole
/// characters) followed by a NUL, valid only during the call; the pieces concatenate to the
/// answer's text. Return `true` to go on, `false` to stop (the answer so far is returned with
/// `MGM_STOP_REASON_CANCELLED`). Runs on the generating thread; it must not throw, and must
/// not call back into the same chat.
pub type StreamCallback =
    Option<unsafe extern "C" fn(piece: *const c_char, len: usize, user_data: *mut c_void) -> bool>;

/// How to load a model. Get one from `mgm_model_params_default()`, then set the fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct ModelParams {
    /// `sizeof(mgm_ModelParams)`, set by `mgm_model_params_default()`; lets later library
    /// versions accept structs from older headers.
    pub struct_size: u32,
    /// Where to run (an `mgm_Device`; default CPU).
    pub device: DeviceValue,
    /// The CUDA ordinal for `MGM_DEVICE_CUDA` (default 0).
    pub device_index: u32,
    /// How LLaMA's weights are held (an `mgm_Dtype`; default F32).
    pub llm_dtype: DtypeValue,
    /// How the ViT's weights are held (an `mgm_Dtype`: F32, F16 or BF16; default F32).
    pub vit_dtype: DtypeValue,
    /// The Hugging Face LLaMA-2-7b-chat directory (UTF-8 path). Required by `mgm_model_load`.
    pub llama_dir: *const c_char,
    /// `eva_vit_g.pth`. Required by `mgm_model_load`.
    pub vit: *const c_char,
    /// The MiniGPT-Med checkpoint `.pth`. Required by `mgm_model_load`.
    pub checkpoint: *const c_char,
    /// Optional `minigpt_med.json` (NULL: the real model's settings).
    pub config: *const c_char,
    /// Optional progress callback (NULL: none).
    pub progress: ProgressCallback,
    /// Passed to `progress` unchanged.
    pub progress_user_data: *mut c_void,
    /// How the KV cache holds keys and values (an `mgm_Dtype`: F32, exact, the default; or
    /// F16, half the attention's memory traffic on long chats).
    pub kv_dtype: DtypeValue,
}

/// The defaults of `ModelParams`, taken from the engine's `LoadOptions::default()`.
pub(crate) fn model_params_default() -> ModelParams {
    let d = engine::LoadOptions::default();
    let (device, device_index) = match d.device {
        engine::Device::Cpu => (Device::Cpu, 0),
        engine::Device::Cuda(i) => (Device::Cuda, u32::try_from(i).unwrap_or(0)),
    };
    ModelParams {
        struct_size: std::mem::size_of::<ModelParams>() as u32,
        device: device as u32,
        device_index,
        llm_dtype: dtype_value(d.llm_dtype),
        vit_dtype: dtype_value(d.vit_dtype),
        llama_dir: std::ptr::null(),
        vit: std::ptr::null(),
        checkpoint: std::ptr::null(),
        config: std::ptr::null(),
        progress: None,
        progress_user_data: std::ptr::null_mut(),
        kv_dtype: match d.kv_dtype {
            engine::KvDType::F32 => Dtype::F32,
            engine::KvDType::F16 => Dtype::F16,
        } as u32,
    }
}

/// How to generate. Get one from `mgm_generate_params_default()` (greedy, 300 new tokens: the
/// paper's evaluation settings), then set the fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct GenerateParams {
    /// `sizeof(mgm_GenerateParams)`, set by `mgm_generate_params_default()`.
    pub struct_size: u32,
    /// Most new tokens to generate (>= 1).
    pub max_new_tokens: u32,
    /// Greedy or sampling (an `mgm_Sampling`).
    pub sampling: SamplingValue,
    /// Softmax temperature (> 0), for `MGM_SAMPLING_SAMPLE`.
    pub temperature: f32,
    /// Nucleus mass kept (0 < top_p <= 1), for `MGM_SAMPLING_SAMPLE`.
    pub top_p: f32,
    /// Most likely tokens kept (0 = no limit), for `MGM_SAMPLING_SAMPLE`.
    pub top_k: u32,
    /// Random seed, for `MGM_SAMPLING_SAMPLE`: the same seed gives the same tokens.
    pub seed: u64,
    /// Repetition penalty over the generated ids (1.0 = off).
    pub repetition_penalty: f32,
    /// Cap on prompt + new tokens; the prompt is left-truncated to fit. 0 = no cap (the prompt
    /// must fit the model's context).
    pub context_limit: u32,
    /// `stop_strings_len` UTF-8 strings; generation stops when the text contains one (it is
    /// removed from the answer). May be NULL when `stop_strings_len` is 0.
    pub stop_strings: *const *const c_char,
    /// Number of entries in `stop_strings`.
    pub stop_strings_len: usize,
    /// Optional streaming callback (NULL: none).
    pub on_text: StreamCallback,
    /// Passed to `on_text` unchanged.
    pub on_text_user_data: *mut c_void,
}

/// `GenerateParams` holding the engine's options `o` (no stop strings, no streaming). Greedy
/// options carry the sampling fields of a lone temperature (`engine::Sampling::with_temperature`)
/// and temperature 1, so that switching `sampling` to `MGM_SAMPLING_SAMPLE` and setting `temperature` alone
/// samples exactly as the CLI's `--temperature` and Python's `temperature=` do.
fn generate_params_for(o: &engine::GenerateOptions) -> GenerateParams {
    use engine::Sampling as S;
    let (sampling, (temperature, top_p, top_k, seed)) = match o.sampling {
        S::Greedy => (Sampling::Greedy, (1.0, S::DEFAULT_TOP_P, S::DEFAULT_TOP_K, S::DEFAULT_SEED)),
        S::Sample { temperature, top_p, top_k, seed } => (Sampling::Sample, (temperature, top_p, top_k, seed)),
    };
    GenerateParams {
        struct_size: std::mem::size_of::<GenerateParams>() as u32,
        max_new_tokens: u32::try_from(o.max_new_tokens).unwrap_or(u32::MAX),
        sampling: sampling as u32,
        temperature,
        top_p,
        top_k: u32::try_from(top_k).unwrap_or(u32::MAX),
        seed,
        repetition_penalty: o.repetition_penalty,
        context_limit: o.context_limit.map_or(0, |c| u32::try_from(c).unwrap_or(u32::MAX)),
        stop_strings: std::ptr::null(),
        stop_strings_len: 0,
        on_text: None,
        on_text_user_data: std::ptr::null_mut(),
    }
}

/// The defaults of `GenerateParams`: the engine's `GenerateOptions::default()` (greedy, 300).
pub(crate) fn generate_params_default() -> GenerateParams {
    generate_params_for(&engine::GenerateOptions::default())
}

/// The `GenerateParams` of an engine preset.
pub(crate) fn generate_params_preset(preset: engine::Preset) -> GenerateParams {
    generate_params_for(&preset.options())
}

impl GenerateParams {
    /// The engine's options, through the engine's own rules (`DecodeSettings::resolve`).
    ///
    /// # Safety
    /// `stop_strings` holds `stop_strings_len` NUL-terminated strings (or is NULL when 0).
    pub(crate) unsafe fn to_engine(self) -> Result<engine::GenerateOptions, Failure> {
        let sample = match lookup(self.sampling, &[(0, Sampling::Greedy), (1, Sampling::Sample)], "sampling")? {
            Sampling::Greedy => false,
            Sampling::Sample => true,
        };
        let mut stop_strings = Vec::new();
        if self.stop_strings_len > 0 {
            if self.stop_strings.is_null() {
                return Err(Failure::invalid("params->stop_strings is NULL but stop_strings_len is not 0"));
            }
            // SAFETY: the caller guarantees `stop_strings_len` readable entries.
            let entries = unsafe { std::slice::from_raw_parts(self.stop_strings, self.stop_strings_len) };
            for (i, &s) in entries.iter().enumerate() {
                // SAFETY: each entry is NULL or NUL-terminated, per the caller's contract.
                stop_strings.push(unsafe { ptr::string(s, &format!("params->stop_strings[{i}]")) }?.to_owned());
            }
        }
        // Every field of the struct is always set; with greedy decoding the sampling fields
        // are documented as ignored, so they are not passed on.
        let settings = engine::DecodeSettings {
            preset: Some(engine::Preset::Eval),
            max_new_tokens: Some(self.max_new_tokens as usize),
            temperature: sample.then_some(self.temperature),
            top_p: sample.then_some(self.top_p),
            top_k: sample.then_some(self.top_k as usize),
            seed: sample.then_some(self.seed),
            repetition_penalty: Some(self.repetition_penalty),
            stop_strings: Some(stop_strings),
            context_limit: (self.context_limit > 0).then_some(self.context_limit as usize),
            ignore_eos: None,
        };
        Ok(settings.resolve()?)
    }
}
