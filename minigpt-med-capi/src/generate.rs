//! `mgm_generate` (one question) and `mgm_Chat` (a conversation about one image).

use std::ffi::c_char;
use std::sync::Arc;

use crate::answer::Answer;
use crate::image::Image;
use crate::model::Model;
use crate::params::{self, ChatHistoryValue, GenerateParams, Region, TaskValue};
use crate::ptr;
use crate::status::{guard, Failure, Status};

/// The default generation parameters: greedy, 300 new tokens, no penalty, no stop strings, no
/// context cap, no streaming (the paper's evaluation settings). The sampling fields hold the
/// original demo's values (temperature 0.6, top-p 0.9, top-k 50) for callers who switch
/// `sampling` to `MGM_SAMPLING_SAMPLE`.
#[no_mangle]
pub extern "C" fn mgm_generate_params_default() -> GenerateParams {
    // Plain values only: nothing here can panic, so no guard is needed.
    params::generate_params_default()
}

/// The engine task for the C arguments (the engine checks that the task has what it needs).
///
/// # Safety
/// `text` is NULL or NUL-terminated; `region` is NULL or a readable `mgm_Region`.
unsafe fn task(task: TaskValue, text: *const c_char, region: *const Region) -> Result<engine::Task, Failure> {
    let name = params::task_name(task)?;
    // SAFETY: per this function's contract.
    let text = unsafe { ptr::opt_string(text, "text") }?;
    // SAFETY: per this function's contract.
    let region = unsafe { region.as_ref() }.map(|r| r.to_engine()).transpose()?;
    if region.is_some() && name != "identify" {
        // The engine would ignore it silently; a region given to another task is a mistake.
        return Err(Failure::invalid(format!("a region is only used by MGM_TASK_IDENTIFY, not by task {name}")));
    }
    Ok(engine::Task::from_name(name, text, region)?)
}

/// The engine options and the streaming callback from optional C params.
///
/// # Safety
/// `params` is NULL or a `mgm_GenerateParams` whose stop strings are valid.
unsafe fn options(params: *const GenerateParams) -> Result<(engine::GenerateOptions, GenerateParams), Failure> {
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
        let (opts, p) = unsafe { options(params) }?;
        let answer = with_stream(&p, |on_text| model.inner.generate_stream(&image.inner, &task, &opts, on_text))?;
        *out = Box::into_raw(Box::new(Answer::new(answer)));
        Ok(())
    })
}

/// A conversation about one image (opaque): the image is encoded once and every turn stays in
/// the model's context. Created by `mgm_chat_new`, freed by `mgm_chat_free`. One thread at a
/// time: calls on one chat must not overlap (different chats may run in parallel). It holds a
/// reference to its model, which may be freed first.
pub struct Chat {
    inner: engine::Chat,
    /// The image size, to place pixel regions of `MGM_TASK_IDENTIFY` follow-ups.
    width: usize,
    height: usize,
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
        let (width, height) = (image.inner.width(), image.inner.height());
        *out = Box::into_raw(Box::new(Chat { inner: chat, width, height }));
        Ok(())
    })
}

/// Asks the next question of a chat; arguments as `mgm_generate`. On failure the chat is
/// unchanged and may be asked again.
///
/// # Safety
/// `chat` is NULL or a live chat no other thread is using; the other pointers as
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
        let chat = unsafe { ptr::arg_mut(chat, "chat") }?;
        let task = unsafe { self::task(task, text, region) }?;
        let (opts, p) = unsafe { options(params) }?;
        let instruction = task.instruction(chat.width, chat.height)?;
        let answer = with_stream(&p, |on_text| chat.inner.ask_stream(&instruction, &opts, on_text))?;
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
        *unsafe { ptr::arg_mut(out_turns, "out_turns") }? = chat.inner.turns();
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
        *unsafe { ptr::arg_mut(out_len, "out_len") }? = chat.inner.context_len();
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
