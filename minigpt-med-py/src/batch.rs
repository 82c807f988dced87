//! `Model.generate_batch`: a list of items through the core's batched generation, each
//! failing item's slot holding its exception instead of failing the batch.

use std::collections::HashMap;
use std::sync::Arc;

use minigpt_med::{Answer, GenerateOptions, Image, Model, Request, Result, Task};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::answer::PyAnswer;
use crate::convert::{asked_task, decode_image, to_task, with_view_options};
use crate::errors::{options_error, to_py_err};
use crate::stream::run_on_worker;

/// The keys an item may have.
const ITEM_KEYS: [&str; 7] = ["image", "task", "prompt", "instruction", "region", "color", "window"];

/// What makes two items' images the same: the path (or object), colour and window.
type ImageKey = (String, Option<String>, Option<(u64, u64)>);

/// One item, converted: its image (an index into the batch's distinct images) and task.
struct Item {
    image: usize,
    task: Task,
}

/// Converts one item dict. Images are shared between items that give the same path (or the
/// same object) with the same colour and window, so each is decoded and encoded once.
fn item(obj: &Bound<'_, PyAny>, images: &mut Vec<Image>, seen: &mut HashMap<ImageKey, usize>) -> PyResult<Item> {
    let d = obj.cast::<PyDict>().map_err(|_| options_error("each item must be a dict with an \"image\" key"))?;
    for key in d.keys() {
        let key: String = key.extract().map_err(|_| options_error("item keys must be strings"))?;
        if !ITEM_KEYS.contains(&key.as_str()) {
            return Err(options_error(format!("item key {key:?}: use {}", ITEM_KEYS.join(", "))));
        }
    }
    let get = |k: &str| d.get_item(k).ok().flatten().filter(|v| !v.is_none());
    let text = |k: &str| -> PyResult<Option<String>> {
        get(k)
            .map(|v| v.extract::<String>().map_err(|_| options_error(format!("item {k:?} must be a string"))))
            .transpose()
    };
    let image = get("image").ok_or_else(|| options_error("an item has no \"image\""))?;
    let color = text("color")?;
    let window: Option<(f64, f64)> = get("window")
        .map(|w| w.extract().map_err(|_| options_error("item \"window\" must be (center, width)")))
        .transpose()?;
    let (prompt, instruction, task) = (text("prompt")?, text("instruction")?, text("task")?);
    let region = get("region");
    let task = match instruction {
        Some(i) => asked_task(Some(i), task.as_deref(), prompt.as_deref(), region.as_ref())?,
        None => to_task(task.as_deref().unwrap_or("report"), prompt.as_deref(), region.as_ref())?,
    };
    let identity = match image.cast::<PyString>() {
        Ok(s) => format!("path:{s}"),
        Err(_) if image.hasattr("__fspath__").unwrap_or(false) => format!("path:{}", image.str()?),
        Err(_) => format!("object:{}", image.as_ptr() as usize),
    };
    let key = (identity, color.clone(), window.map(|(c, w)| (c.to_bits(), w.to_bits())));
    let index = match seen.get(&key) {
        Some(&i) => i,
        None => {
            images.push(with_view_options(decode_image(&image)?, color.as_deref(), window)?);
            seen.insert(key, images.len() - 1);
            images.len() - 1
        }
    };
    Ok(Item { image: index, task })
}

/// The batch: items converted (a bad one keeps its exception), then all answered on a worker
/// thread with the GIL released. Returns one `Answer` or exception instance per item.
pub(crate) fn generate_batch(
    py: Python<'_>,
    model: &Arc<Model>,
    items: &Bound<'_, PyAny>,
    opts: GenerateOptions,
    batch_size: Option<usize>,
) -> PyResult<Vec<Py<PyAny>>> {
    let mut images = Vec::new();
    let mut seen = HashMap::new();
    let mut converted: Vec<PyResult<Item>> = Vec::new();
    for obj in items.try_iter().map_err(|_| options_error("items must be an iterable of dicts"))? {
        converted.push(obj.and_then(|o| item(&o, &mut images, &mut seen)));
    }
    let jobs: Vec<(usize, usize, Task)> = converted
        .iter()
        .enumerate()
        .filter_map(|(k, r)| r.as_ref().ok().map(|it| (k, it.image, it.task.clone())))
        .collect();
    let model = Arc::clone(model);
    let max_active = batch_size.unwrap_or(jobs.len()).max(1);
    let answers: Vec<Result<Answer>> = run_on_worker(py, move |stop| {
        let requests: Vec<Request> =
            jobs.iter().map(|(_, image, task)| Request::new(&images[*image], task.clone(), opts.clone())).collect();
        let mut out: Vec<Option<Result<Answer>>> = (0..requests.len()).map(|_| None).collect();
        model.generate_batch_each(&requests, max_active, Some(stop), |i, r| out[i] = Some(r));
        out.into_iter().map(|r| r.expect("every request is answered")).collect()
    })?;
    let mut answers = answers.into_iter();
    converted
        .into_iter()
        .map(|c| {
            let result = c.and_then(|_| answers.next().expect("one answer per converted item").map_err(to_py_err));
            Ok(match result {
                Ok(a) => Py::new(py, PyAnswer::from(a))?.into_any(),
                Err(e) => e.into_value(py).into_any(),
            })
        })
        .collect()
}
