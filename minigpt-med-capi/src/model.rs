//! `mgm_Model`: a loaded model, immutable and shared between threads.

use std::ffi::{c_char, c_void};
use std::path::PathBuf;
use std::sync::Arc;

use super::params::{self, ModelParams, ProgressCallback};
use super::ptr;
use super::status::{guard, Failure, Status};

/// A loaded model (opaque). Created by `mgm_model_load` / `mgm_model_load_dir`, freed by
/// `mgm_model_free`. Immutable: any number of threads may generate with one model at the same
/// time. Chats keep the model alive, so it may be freed before them.
pub struct Model {
    pub(crate) inner: Arc<engine::Model>,
}

/// The default load parameters: CPU, f32 weights, no paths, no progress callback.
#[no_mangle]
pub extern "C" fn mgm_model_params_default() -> ModelParams {
    // Building a struct of plain values cannot panic; no guard is needed (nor possible for a
    // function that returns the struct itself).
    params::model_params_default()
}

/// The engine's progress hook for a C callback.
fn progress_hook(callback: ProgressCallback, user_data: *mut c_void) -> Option<engine::ProgressFn> {
    let callback = callback?;
    // The engine wants a `Send + Sync` hook; the opaque `user_data` travels as an integer,
    // which is only ever turned back into the caller's pointer on the loading thread.
    let user_data = user_data as usize;
    Some(Arc::new(move |p: engine::LoadProgress| {
        let fraction = if p.total == 0 { 1.0 } else { (p.done as f32 / p.total as f32).min(1.0) };
        // SAFETY: the caller's callback, called with the caller's own user data. Its `false`
        // makes the engine stop the load with `Error::Cancelled` (MGM_STATUS_CANCELLED).
        unsafe { callback(fraction, user_data as *mut c_void) }
    }))
}

/// Where a model is loaded from.
enum Source {
    Files(engine::ModelFiles),
    File(PathBuf),
}

fn load(source: Source, p: &ModelParams, out: &mut *mut Model) -> Result<(), Failure> {
    let opts = engine::LoadOptions {
        device: params::device(p.device, p.device_index)?,
        llm_dtype: params::dtype(p.llm_dtype, "llm_dtype")?,
        vit_dtype: params::dtype(p.vit_dtype, "vit_dtype")?,
        kv_dtype: params::kv_dtype(p.kv_dtype)?,
        progress: progress_hook(p.progress, p.progress_user_data),
    };
    let model = match source {
        Source::Files(files) => engine::Model::load(&files, &opts)?,
        Source::File(path) => engine::Model::open(path, &opts)?,
    };
    *out = Box::into_raw(Box::new(Model { inner: Arc::new(model) }));
    Ok(())
}

/// Loads a model from the paths in `params` (`llama_dir`, `vit`, `checkpoint` required,
/// `config` optional). `params` may be NULL only to get an error; start from
/// `mgm_model_params_default()`.
///
/// On success `*out_model` is a new model to free with `mgm_model_free`; on failure it is NULL.
///
/// # Safety
/// `params` is NULL or a `mgm_ModelParams` whose strings are NULL or NUL-terminated;
/// `out_model` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_model_load(params: *const ModelParams, out_model: *mut *mut Model) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_model, "out_model") }?;
        let p = unsafe { ptr::params(params, "params") }?.ok_or_else(|| Failure::invalid("params is NULL"))?;
        let path = |s: *const c_char, name: &str| -> Result<PathBuf, Failure> {
            // SAFETY: the params' strings are NULL or NUL-terminated per the contract.
            Ok(PathBuf::from(unsafe { ptr::string(s, name) }?))
        };
        let mut files = engine::ModelFiles::original(
            path(p.llama_dir, "params->llama_dir")?,
            path(p.vit, "params->vit")?,
            path(p.checkpoint, "params->checkpoint")?,
        );
        // SAFETY: as above.
        if let Some(config) = unsafe { ptr::opt_string(p.config, "params->config") }? {
            files = files.with_config(config);
        }
        load(Source::Files(files), &p, out)
    })
}

/// Loads a model from a directory laid out like the bundled tiny model:
/// `llama-2-7b-chat-hf/`, `eva_vit_g.pth`, `minigpt_med.pth` and, if present,
/// `minigpt_med.json`. `params` (NULL: defaults) gives the device, dtypes and progress
/// callback; its path fields must be NULL.
///
/// # Safety
/// `dir` is NULL or NUL-terminated; `params` is NULL or a `mgm_ModelParams`; `out_model` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_model_load_dir(
    dir: *const c_char,
    params: *const ModelParams,
    out_model: *mut *mut Model,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_model, "out_model") }?;
        let dir = unsafe { ptr::string(dir, "dir") }?;
        let p = unsafe { ptr::params(params, "params") }?.unwrap_or_else(params::model_params_default);
        if !(p.llama_dir.is_null() && p.vit.is_null() && p.checkpoint.is_null() && p.config.is_null()) {
            return Err(Failure::invalid(
                "mgm_model_load_dir takes the files from `dir`; leave the path fields of params NULL",
            ));
        }
        load(Source::Files(engine::ModelFiles::from_dir(dir)), &p, out)
    })
}

/// Loads a converted model file (`minigpt-med convert`; GGUF): memory-mapped, quantized
/// weights used as stored, answers bit-identical to the original files with the same dtype.
/// `params` (NULL: defaults) gives the device, progress callback and the dtypes of a dense
/// file (a quantized file keeps its own); its path fields must be NULL.
///
/// # Safety
/// `path` is NULL or NUL-terminated; `params` is NULL or a `mgm_ModelParams`; `out_model` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_model_load_file(
    path: *const c_char,
    params: *const ModelParams,
    out_model: *mut *mut Model,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_model, "out_model") }?;
        let path = unsafe { ptr::string(path, "path") }?;
        let p = unsafe { ptr::params(params, "params") }?.unwrap_or_else(params::model_params_default);
        if !(p.llama_dir.is_null() && p.vit.is_null() && p.checkpoint.is_null() && p.config.is_null()) {
            return Err(Failure::invalid(
                "mgm_model_load_file reads everything from the file; leave the path fields of params NULL",
            ));
        }
        load(Source::File(PathBuf::from(path)), &p, out)
    })
}

/// Frees a model. NULL is accepted and ignored. Chats made from it stay usable (they hold
/// their own reference); answers and images never depend on it.
///
/// # Safety
/// `model` is NULL or a model from this library not yet freed, and no other thread is using
/// this handle; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mgm_model_free(model: *mut Model) {
    // SAFETY: per this function's contract.
    unsafe { ptr::free(model) }
}
