//! `mgm_generate` (one question) and `mgm_Chat` (a conversation about one image).

use std::ffi::c_char;
use std::sync::Arc;

use super::answer::Answer;
use super::image::Image;
use super::model::Model;
use super::params::{self, ChatHistoryValue, GenerateParams, PresetValue, Region, TaskValue};
use super::ptr;
use super::status::{guard, Failure, Status};

/// The default generation parameters: greedy, 300 new tokens, no penalty, no stop strings, no
/// context cap, no streaming (the paper's evaluation settings, `MGM_PRESET_EVAL`). The sampling
/// fields hold temperature 1, top-p 1, top-k 0 (no limit) and seed 0: switching `sampling` to
/// `MGM_SAMPLING_SAMPLE` and setting `temperature` alone samples as the CLI's `--temperature`
/// and Python's `temperature=` do. A temperature of 0 with `MGM_SAMPLING_SAMPLE` is greedy.
#[no_mangle]
pub extern "C" fn mgm_generate_params_default() -> GenerateParams {
    // Plain values only: nothing here can panic, so no guard is needed.
    params::generate_params_default()
}

/// The generation parameters of a named preset (an `mgm_Preset`), as the CLI's `--preset` and
/// Python's `preset=`: `MGM_PRESET_EVAL` (greedy, 300 new tokens) or `MGM_PRESET_DEMO` (the
/// original demo's sampling). Adjust the fields afterwards as with the defaults.
///
/// # Safety
/// `out_params` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_generate_params_preset(preset: PresetValue, out_params: *mut GenerateParams) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::arg_mut(out_params, "out_params") }?;
        *out = params::generate_params_preset(params::preset(preset)?);
        Ok(())
    })
}

/// The engine task for the C arguments (the engine checks that the task has what it needs).
///
/// # Safety
/// `text` is NULL or NUL-terminated; `region` is NULL or a readable `mgm_Region`.
pub(crate) unsafe fn task(
    task: TaskValue,
    text: *const c_char,
    region: *const Region,
) -> Result<engine::Task, Failure> {
    let kind = params::task_kind(task)?;
    // SAFETY: per this function's contract.
    let text = unsafe { ptr::opt_string(text, "text") }?;
    // SAFETY: per this function's contract.
    let region = unsafe { region.as_ref() }.map(|r| r.to_engine()).transpose()?;
    Ok(engine::Task::new(kind, text, region)?)
}

/// The engine options and the streaming callback from optional C params.
///
/// # Safety
/// `params` is NULL or a `mgm_GenerateParams` whose stop strings are valid.
pub(crate) unsafe fn options(
    params: *const GenerateParams,
) -> Result<(engine::GenerateOptions, GenerateParams), Failure> {
    // SAFETY: per this function's contract.
    let p = unsafe { ptr::params(params, "params") }?.unwrap_or_else(params::generate_params_default);
    // SAFETY: the stop strings are valid per this function's contract.
    Ok((unsafe { p.to_engine() }?, p))
}

/// Runs `body` with the engine's streaming closure for `p.on_text` (a no-op without one).
fn with_stream<R>(p: &GenerateParams, body: impl FnOnce(&mut dyn FnMut(&str) -> bool) -> R) -> R {
    let mut buf: Vec<u8> = Vec::new();
    let (callback, user_data) = (p.on_text, p.on_text_user_data);
    let mut on_text = |piece: &str| match callback {
        None => true,
        Some(f) => {
            // The callback gets a NUL-terminated copy, valid during the call only.
            buf.clear();
            buf.extend_from_slice(piece.as_bytes());
            buf.push(0);
            // SAFETY: the caller's callback with its own user data; `buf` outlives the call.
            unsafe { f(buf.as_ptr().cast(), piece.len(), user_data) }
        }
    };
    body(&mut on_text)
}

/// Answers one task about an image.
///
/// `task` is an `mgm_Task`; `text` its argument (NULL where optional, see `mgm_Task`);
/// `region` the box for `MGM_TASK_IDENTIFY` (NULL otherwise); `params` NULL for the defaults
/// (greedy, 300 tokens). The streaming callback in `params`, if any, runs on this thread
/// before the call returns; if it returns false the call still succeeds, with the answer so
/// far and `MGM_STOP_REASON_CANCELLED`.
///
/// Thread safety: any number of threads may call this at once with the same model and image.
/// On success `*out_answer` is a new answer to free with `mgm_answer_free`; on failure NULL.
///
/// # Safety
/// `model`/`image` are NULL or live handles; `text` is NULL or NUL-terminated; `region` is
/// NULL or readable; `params` is NULL or a valid `mgm_GenerateParams`; `out_answer` is NULL or
/// writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_generate(
    model: *const Model,
    image: *const Image,
    task: TaskValue,
    text: *const c_char,
    region: *const Region,
    params: *const GenerateParams,
    out_answer: *mut *mut Answer,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_answer, "out_answer") }?;
        let model = unsafe { ptr::arg(model, "model") }?;
        let image = unsafe { ptr::arg(image, "image") }?;
        let task = unsafe { self::task(task, text, region) }?;
        // SAFETY: as above.
        let (opts, p) = unsafe { options(params) }?;
        let answer = with_stream(&p, |on_text| model.inner.generate_stream(&image.inner, &task, &opts, on_text))?;
        *out = Box::into_raw(Box::new(Answer::new(answer)));
        Ok(())
    })
}

/// A conversation about one image (opaque): the image is encoded once and every turn stays in
/// the model's context. Created by `mgm_chat_new`, freed by `mgm_chat_free`. One question at a
/// time: a call made while another thread is in one on the same chat returns
/// `MGM_STATUS_BUSY` (different chats run in parallel). It holds a reference to its model,
/// which may be freed first.
pub struct Chat {
    /// Locked by each call; a call that finds it locked reports `MGM_STATUS_BUSY`.
    inner: std::sync::Mutex<engine::Chat>,
}

impl Chat {
    /// The chat, or `MGM_STATUS_BUSY` when another thread is using it.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, engine::Chat>, Failure> {
        match self.inner.try_lock() {
            Ok(chat) => Ok(chat),
            // A panic mid-turn is reported as MGM_STATUS_PANIC; the engine's chat stays usable.
            Err(std::sync::TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => Err(Failure {
                status: Status::Busy,
                message: "this chat is answering a question on another thread; wait for it, or use one chat per thread"
                    .into(),
            }),
        }
    }
}

/// Starts a chat about `image` (encoded now; the image may be freed afterwards). `history` is
/// an `mgm_ChatHistory`.
///
/// # Safety
/// `model`/`image` are NULL or live handles; `out_chat` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_chat_new(
    model: *const Model,
    image: *const Image,
    history: ChatHistoryValue,
    out_chat: *mut *mut Chat,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_chat, "out_chat") }?;
        let model = unsafe { ptr::arg(model, "model") }?;
        let image = unsafe { ptr::arg(image, "image") }?;
        let history = params::chat_history(history)?;
        // The chat owns a reference to the model (`Chat<Arc<Model>>`), so it borrows nothing
        // and its handle may outlive the model's.
        let embeddings = model.inner.encode_image(&image.inner)?;
        let chat = engine::Chat::new(Arc::clone(&model.inner), embeddings).with_history(history);
        *out = Box::into_raw(Box::new(Chat { inner: std::sync::Mutex::new(chat) }));
        Ok(())
    })
}

/// Asks the next question of a chat; arguments as `mgm_generate`. On failure, and when the
/// streaming callback cancels the answer, the chat is as it was before the question and may be
/// asked again.
///
/// Returns `MGM_STATUS_BUSY` (and changes nothing) while another thread is in a call on the
/// same chat.
///
/// # Safety
/// `chat` is NULL or a live chat (other threads may be using it); the other pointers as
/// `mgm_generate`.
#[no_mangle]
pub unsafe extern "C" fn mgm_chat_ask(
    chat: *mut Chat,
    task: TaskValue,
    text: *const c_char,
    region: *const Region,
    params: *const GenerateParams,
    out_answer: *mut *mut Answer,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_answer, "out_answer") }?;
        // Shared, not `&mut`: two threads may hold the pointer at once; the lock decides.
        let chat = unsafe { ptr::arg(chat.cast_const(), "chat") }?;
        let task = unsafe { self::task(task, text, region) }?;
        // SAFETY: as above.
        let (opts, p) = unsafe { options(params) }?;
        let mut chat = chat.lock()?;
        let answer = with_stream(&p, |on_text| chat.ask_task_stream(&task, &opts, on_text))?;
        *out = Box::into_raw(Box::new(Answer::new(answer)));
        Ok(())
    })
}

/// Questions answered so far by a chat.
///
/// # Safety
/// `chat` is NULL or a live chat; `out_turns` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_chat_turns(chat: *const Chat, out_turns: *mut usize) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let chat = unsafe { ptr::arg(chat, "chat") }?;
        *unsafe { ptr::arg_mut(out_turns, "out_turns") }? = chat.lock()?.turns();
        Ok(())
    })
}

/// Positions a chat holds in the model's context (image, questions and answers so far).
///
/// # Safety
/// `chat` is NULL or a live chat; `out_len` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_chat_context_len(chat: *const Chat, out_len: *mut usize) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let chat = unsafe { ptr::arg(chat, "chat") }?;
        *unsafe { ptr::arg_mut(out_len, "out_len") }? = chat.lock()?.context_len();
        Ok(())
    })
}

/// Frees a chat. NULL is accepted and ignored.
///
/// # Safety
/// `chat` is NULL or a chat from this library not yet freed and not in use; it is invalid
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn mgm_chat_free(chat: *mut Chat) {
    // SAFETY: per this function's contract.
    unsafe { ptr::free(chat) }
}

/// One image prepared for many questions (opaque): encoded once, the prompt up to its image
/// tokens run once, so each `mgm_study_ask` costs only the question's tokens and answers as
/// `mgm_generate` would. Created by `mgm_study_new`, freed by `mgm_study_free`. Unlike a chat,
/// a study may be asked from several threads at once. It holds a reference to its model.
pub struct Study {
    pub(crate) inner: engine::Study<Arc<engine::Model>>,
}

/// Prepares `image` (encoded now; the image may be freed afterwards) for many questions.
///
/// # Safety
/// `model`/`image` are NULL or live handles; `out_study` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_study_new(model: *const Model, image: *const Image, out_study: *mut *mut Study) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_study, "out_study") }?;
        let model = unsafe { ptr::arg(model, "model") }?;
        let image = unsafe { ptr::arg(image, "image") }?;
        let embeddings = model.inner.encode_image(&image.inner)?;
        let study = engine::Study::new(Arc::clone(&model.inner), embeddings)?;
        *out = Box::into_raw(Box::new(Study { inner: study }));
        Ok(())
    })
}

/// Answers a question about a study's image; arguments as `mgm_generate`.
///
/// # Safety
/// `study` is NULL or a live study (other threads may be asking it too); the other pointers
/// as `mgm_generate`.
#[no_mangle]
pub unsafe extern "C" fn mgm_study_ask(
    study: *const Study,
    task: TaskValue,
    text: *const c_char,
    region: *const Region,
    params: *const GenerateParams,
    out_answer: *mut *mut Answer,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_answer, "out_answer") }?;
        let study = unsafe { ptr::arg(study, "study") }?;
        let task = unsafe { self::task(task, text, region) }?;
        // SAFETY: as above.
        let (opts, p) = unsafe { options(params) }?;
        let answer = with_stream(&p, |on_text| study.inner.ask_stream(&task, &opts, on_text))?;
        *out = Box::into_raw(Box::new(Answer::new(answer)));
        Ok(())
    })
}

/// Frees a study. NULL is accepted and ignored.
///
/// # Safety
/// `study` is NULL or a study from this library not yet freed and not in use; it is invalid
/// afterwards.
#[no_mangle]
pub unsafe extern "C" fn mgm_study_free(study: *mut Study) {
    // SAFETY: per this function's contract.
    unsafe { ptr::free(study) }
}
