//! `mgm_Answer`: the text, token ids, boxes, stop reason and timings of one generation.

use std::ffi::c_char;

use super::ptr;
use super::status::{guard, Failure, Status};

/// A model's answer (opaque, immutable). Made by `mgm_generate` / `mgm_chat_ask`, freed by
/// `mgm_answer_free`. Pointers it hands out (text, ids, labels) stay valid until it is freed.
/// Its accessors may be called from several threads at once.
pub struct Answer {
    inner: engine::Answer,
    /// `inner.text` plus a NUL, so C gets a terminated string without a copy per call.
    text_nul: Vec<u8>,
    /// Each box label plus a NUL (`None` for unlabelled boxes).
    labels_nul: Vec<Option<Vec<u8>>>,
}

impl Answer {
    pub(crate) fn new(inner: engine::Answer) -> Self {
        let nul = |s: &str| [s.as_bytes(), b"\0"].concat();
        let text_nul = nul(&inner.text);
        let labels_nul = inner.boxes.iter().map(|b| b.label.as_deref().map(nul)).collect();
        Self { inner, text_nul, labels_nul }
    }
}

/// Why generation stopped.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    /// The model wrote its end-of-sequence token.
    Eos = 0,
    /// `max_new_tokens` were generated.
    MaxTokens = 1,
    /// A stop string appeared in the text.
    StopString = 2,
    /// The streaming callback returned false.
    Cancelled = 3,
    /// The model's context was full before `max_new_tokens` were generated.
    ContextFull = 4,
}

impl StopReason {
    /// Every reason, in the order of their values.
    #[cfg(test)]
    pub(crate) const ALL: [StopReason; 5] = [
        StopReason::Eos,
        StopReason::MaxTokens,
        StopReason::StopString,
        StopReason::Cancelled,
        StopReason::ContextFull,
    ];

    fn from_engine(r: engine::StopReason) -> Self {
        match r {
            engine::StopReason::Eos => StopReason::Eos,
            engine::StopReason::MaxTokens => StopReason::MaxTokens,
            engine::StopReason::StopString => StopReason::StopString,
            engine::StopReason::Cancelled => StopReason::Cancelled,
            engine::StopReason::ContextFull => StopReason::ContextFull,
        }
    }
}

/// The name of a stop reason (an `mgm_StopReason`) as every output of the engine spells it
/// (`"eos"`, `"max_tokens"`, `"stop_string"`, `"cancelled"`, `"context_full"`: the CLI's JSON,
/// Python), or `"unknown"` for a value that is not one. A static string, never freed.
#[no_mangle]
pub extern "C" fn mgm_stop_reason_name(reason: u32) -> *const c_char {
    static NAMES: std::sync::OnceLock<Vec<(u32, std::ffi::CString)>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        engine::StopReason::ALL
            .iter()
            .map(|&r| (StopReason::from_engine(r) as u32, std::ffi::CString::new(r.name()).unwrap_or_default()))
            .collect()
    });
    names.iter().find(|(v, _)| *v == reason).map_or(c"unknown".as_ptr(), |(_, n)| n.as_ptr())
}

/// A box the model wrote.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BoundingBox {
    /// The phrase of `<p>phrase</p>` (UTF-8, NUL-terminated, `label_len` bytes), or NULL for
    /// an unlabelled box. Owned by the answer.
    pub label: *const c_char,
    /// Bytes in `label` before its NUL (0 when `label` is NULL).
    pub label_len: usize,
    /// `x1, y1, x2, y2` on the model's 0..=100 grid (corners ordered).
    pub grid: [u32; 4],
    /// The same corners in pixels of the input image.
    pub pixels: [f64; 4],
}

/// Time spent in each phase of the generation, in milliseconds.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct Timings {
    /// Image preprocessing, ViT and projection (0 for follow-up chat questions).
    pub encode_ms: f64,
    /// Prompt processing.
    pub prefill_ms: f64,
    /// All decode steps.
    pub decode_ms: f64,
    /// Generated tokens per second of decode time.
    pub tokens_per_s: f64,
}

/// The answer text: `*out_text` is UTF-8 of `*out_len` bytes followed by a NUL (the text may
/// itself contain NULs if the model wrote them; use the length). Owned by the answer.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_text` is NULL or writable; `out_len` is NULL
/// (length not wanted) or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_text(
    answer: *const Answer,
    out_text: *mut *const c_char,
    out_len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out_text = unsafe { ptr::arg_mut(out_text, "out_text") }?;
        *out_text = a.text_nul.as_ptr().cast();
        // SAFETY: NULL or writable, per the contract.
        if let Some(len) = unsafe { out_len.as_mut() } {
            *len = a.inner.text.len();
        }
        Ok(())
    })
}

/// The generated token ids (end-of-sequence excluded): `*out_len` ids at `*out_ids` (NULL
/// when there are none). Owned by the answer.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_ids` and `out_len` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_token_ids(
    answer: *const Answer,
    out_ids: *mut *const u32,
    out_len: *mut usize,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out_ids = unsafe { ptr::arg_mut(out_ids, "out_ids") }?;
        let out_len = unsafe { ptr::arg_mut(out_len, "out_len") }?;
        let ids = &a.inner.token_ids;
        *out_ids = if ids.is_empty() { std::ptr::null() } else { ids.as_ptr() };
        *out_len = ids.len();
        Ok(())
    })
}

/// The number of boxes parsed from the answer text.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_box_count(answer: *const Answer, out_count: *mut usize) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out = unsafe { ptr::arg_mut(out_count, "out_count") }?;
        *out = a.inner.boxes.len();
        Ok(())
    })
}

/// Box `index` (0 <= index < `mgm_answer_box_count`); its label pointer is owned by the answer.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_box` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_box(answer: *const Answer, index: usize, out_box: *mut BoundingBox) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out = unsafe { ptr::arg_mut(out_box, "out_box") }?;
        let n = a.inner.boxes.len();
        let b = a.inner.boxes.get(index).ok_or_else(|| Failure::invalid(format!("box index {index} >= count {n}")))?;
        let label = a.labels_nul[index].as_ref();
        *out = BoundingBox {
            label: label.map_or(std::ptr::null(), |l| l.as_ptr().cast()),
            label_len: label.map_or(0, |l| l.len() - 1),
            grid: b.grid,
            pixels: b.pixels,
        };
        Ok(())
    })
}

/// Writes the answer's boxes drawn over `image` (the input it answers about; one colour per
/// label, as the original demo draws them) to a PNG file at `path`.
///
/// # Safety
/// `answer` and `image` are NULL or live handles; `path` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_draw_png(
    answer: *const Answer,
    image: *const super::image::Image,
    path: *const c_char,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let img = unsafe { ptr::arg(image, "image") }?;
        let path = unsafe { ptr::string(path, "path") }?;
        let rgb = a.inner.draw(&img.inner);
        engine::image::save_rgb_png(std::path::Path::new(path), img.inner.width(), img.inner.height(), &rgb)?;
        Ok(())
    })
}

/// Why generation stopped.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_reason` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_stop_reason(answer: *const Answer, out_reason: *mut StopReason) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out = unsafe { ptr::arg_mut(out_reason, "out_reason") }?;
        *out = StopReason::from_engine(a.inner.stop_reason);
        Ok(())
    })
}

/// Phase timings of the generation.
///
/// # Safety
/// `answer` is NULL or a live answer; `out_timings` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_timings(answer: *const Answer, out_timings: *mut Timings) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let a = unsafe { ptr::arg(answer, "answer") }?;
        let out = unsafe { ptr::arg_mut(out_timings, "out_timings") }?;
        let t = a.inner.timings;
        *out = Timings {
            encode_ms: t.encode_ms,
            prefill_ms: t.prefill_ms,
            decode_ms: t.decode_ms,
            tokens_per_s: t.tokens_per_s,
        };
        Ok(())
    })
}

/// Frees an answer (and every pointer it handed out). NULL is accepted and ignored.
///
/// # Safety
/// `answer` is NULL or an answer from this library not yet freed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mgm_answer_free(answer: *mut Answer) {
    // SAFETY: per this function's contract.
    unsafe { ptr::free(answer) }
}
