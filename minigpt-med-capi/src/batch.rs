//! `mgm_generate_batch`: many questions decoding together, each with its own result.

use std::ffi::c_char;

use super::answer::Answer;
use super::generate::{options, task, Study};
use super::image::Image;
use super::model::Model;
use super::params::{GenerateParams, Region, TaskValue};
use super::ptr;
use super::status::{guard, Failure, Status};

/// One question of `mgm_generate_batch`: about `image`, or about a prepared `study` (exactly
/// one of the two is non-NULL), with the task arguments of `mgm_generate`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BatchItem {
    /// The image asked about, or NULL when `study` is given.
    pub image: *const Image,
    /// A study of this model (`mgm_study_new`), or NULL when `image` is given.
    pub study: *const Study,
    /// An `mgm_Task`.
    pub task: TaskValue,
    /// The task's text (NULL where optional, see `mgm_Task`).
    pub text: *const c_char,
    /// The box for `MGM_TASK_IDENTIFY`, NULL otherwise.
    pub region: *const Region,
}

/// Bytes of `mgm_BatchResult::message`, its NUL included.
pub const MGM_BATCH_MESSAGE_BYTES: usize = 256;

/// The outcome of one item of `mgm_generate_batch`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct BatchResult {
    /// `MGM_STATUS_OK` and a new answer (free it with `mgm_answer_free`), or the item's error
    /// status and NULL.
    pub status: Status,
    /// The answer, or NULL when the item failed.
    pub answer: *mut Answer,
    /// The item's error message (as `mgm_last_error` would give it, cut at a character
    /// boundary to fit), NUL-terminated; empty on success.
    pub message: [c_char; MGM_BATCH_MESSAGE_BYTES],
}

impl BatchResult {
    fn new(result: Result<engine::Answer, Failure>) -> Self {
        let mut message = [0 as c_char; MGM_BATCH_MESSAGE_BYTES];
        let (status, answer) = match result {
            Ok(a) => (Status::Ok, Box::into_raw(Box::new(Answer::new(a)))),
            Err(f) => {
                let mut end = f.message.len().min(MGM_BATCH_MESSAGE_BYTES - 1);
                while !f.message.is_char_boundary(end) {
                    end -= 1;
                }
                for (m, &b) in message.iter_mut().zip(&f.message.as_bytes()[..end]) {
                    *m = b as c_char;
                }
                (f.status, std::ptr::null_mut())
            }
        };
        Self { status, answer, message }
    }
}

/// Answers `n_items` questions decoding together: each decode step is one pass over the
/// weights for every item still running, and each answer equals what `mgm_generate` (or
/// `mgm_study_ask`) gives for it. At most `batch_size` items decode at once (0: all; each holds
/// a KV cache, ~0.5 GB at the 7B shape); the next starts as one ends. Items about the same
/// image handle share one encoding. `params` (NULL for the defaults) applies to every item;
/// its streaming callback is not called for batches.
///
/// Returns `MGM_STATUS_OK` once every item has its result in `out_results[i]` (an item that
/// fails, e.g. a missing question, fails alone: see its `status` and `message`); another status
/// when the call itself is wrong (a NULL model, items or results), with nothing written.
///
/// # Safety
/// `model` is NULL or a live handle; `items` is NULL or `n_items` readable `mgm_BatchItem`s
/// whose handles are NULL or live and whose strings and regions are valid as for
/// `mgm_generate`; `params` is NULL or valid; `out_results` is NULL or `n_items` writable
/// `mgm_BatchResult`s.
#[no_mangle]
pub unsafe extern "C" fn mgm_generate_batch(
    model: *const Model,
    items: *const BatchItem,
    n_items: usize,
    batch_size: usize,
    params: *const GenerateParams,
    out_results: *mut BatchResult,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let model = unsafe { ptr::arg(model, "model") }?;
        if n_items == 0 {
            return Ok(());
        }
        if items.is_null() || out_results.is_null() {
            return Err(Failure::invalid("items and out_results must not be NULL (n_items is not 0)"));
        }
        // SAFETY: `items` holds `n_items` readable items, per this function's contract.
        let items = unsafe { std::slice::from_raw_parts(items, n_items) };
        // SAFETY: as above.
        let (opts, _) = unsafe { options(params) }?;
        let mut results: Vec<Option<Result<engine::Answer, Failure>>> = (0..n_items).map(|_| None).collect();
        let mut requests = Vec::new();
        let mut slots = Vec::new();
        for (i, item) in items.iter().enumerate() {
            // SAFETY: the item's pointers are NULL or valid, per this function's contract.
            let request = unsafe { request(item, &opts) };
            match request {
                Ok(r) => {
                    requests.push(r);
                    slots.push(i);
                }
                Err(f) => results[i] = Some(Err(f)),
            }
        }
        let max_active = if batch_size == 0 { requests.len() } else { batch_size };
        model.inner.generate_batch_each(&requests, max_active, None, |k, r| {
            results[slots[k]] = Some(r.map_err(Failure::from));
        });
        // SAFETY: `out_results` holds `n_items` writable results, per this function's contract.
        let out = unsafe { std::slice::from_raw_parts_mut(out_results, n_items) };
        for (o, r) in out.iter_mut().zip(results) {
            *o = BatchResult::new(r.expect("every item has a result"));
        }
        Ok(())
    })
}

/// The engine request of one item.
///
/// # Safety
/// As for the items of `mgm_generate_batch`.
unsafe fn request<'a>(item: &'a BatchItem, opts: &engine::GenerateOptions) -> Result<engine::Request<'a>, Failure> {
    // SAFETY: per this function's contract.
    let task = unsafe { task(item.task, item.text, item.region) }?;
    // SAFETY: as above.
    let (image, study) = unsafe { (item.image.as_ref(), item.study.as_ref()) };
    let source = match (image, study) {
        (Some(image), None) => engine::RequestImage::Image(&image.inner),
        // The engine refuses a study of another model, for this item alone.
        (None, Some(study)) => engine::RequestImage::Study(study.inner.shared()),
        _ => return Err(Failure::invalid("give an item exactly one of image and study")),
    };
    Ok(engine::Request { image: source, task, options: opts.clone(), history: Vec::new() })
}
