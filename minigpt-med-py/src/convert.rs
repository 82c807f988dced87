//! Python values -> core values: images, regions, tasks and decoding options. Only the shape of
//! the arguments is handled here; every value is validated by the core.

use std::path::PathBuf;

use minigpt_med::{ColorMode, DecodeSettings, GenerateOptions, Image, Pixels, Region, Task, TaskKind, Window};
use numpy::prelude::*;
use numpy::{PyArrayDyn, PyUntypedArray};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};

use crate::errors::{image_error, options_error, IntoPyResult};
use crate::image::PyImage;

/// Decodes any accepted image input: `minigpt_med.Image`, a path (`str`, `os.PathLike`),
/// encoded bytes (`bytes`, `bytearray`), a numpy array; anything else (PIL images, array-likes)
/// goes through `minigpt_med._image.to_array`, the thin Python conversion.
pub(crate) fn decode_image(obj: &Bound<'_, PyAny>) -> PyResult<Image> {
    let py = obj.py();
    if let Ok(img) = obj.cast::<PyImage>() {
        return Ok(img.get().inner.clone());
    }
    if let Ok(b) = obj.cast::<PyBytes>() {
        let bytes = b.as_bytes();
        return py.detach(|| Image::from_bytes(bytes)).py();
    }
    if let Ok(b) = obj.cast::<PyByteArray>() {
        let bytes = b.to_vec();
        return py.detach(|| Image::from_bytes(&bytes)).py();
    }
    if obj.is_instance_of::<PyString>() || obj.hasattr("__fspath__")? {
        let path: PathBuf = obj.extract()?;
        return py.detach(|| Image::open(&path)).py();
    }
    if let Ok(arr) = obj.cast::<PyUntypedArray>() {
        return image_from_array(arr);
    }
    let converted = py.import("minigpt_med._image")?.getattr("to_array")?.call1((obj,))?;
    match converted.cast::<PyUntypedArray>() {
        Ok(arr) => image_from_array(arr),
        Err(_) => Err(image_error("input", "minigpt_med._image.to_array did not return a numpy array")),
    }
}

/// Wraps a numpy array: uint8 `HxW`, `HxWx1` or `HxWx3` (RGB), or uint16 `HxW`/`HxWx1`.
pub(crate) fn image_from_array(arr: &Bound<'_, PyUntypedArray>) -> PyResult<Image> {
    let py = arr.py();
    let dtype = arr.dtype();
    let shape = arr.shape().to_vec();
    let what = format!("numpy array (dtype {dtype}, shape {shape:?})");
    let expected = "use uint8 HxW (gray), uint8 HxWx3 (RGB) or uint16 HxW (16-bit gray)";
    let (h, w, channels) = match shape[..] {
        [h, w] => (h, w, 1),
        [h, w, c] => (h, w, c),
        _ => return Err(image_error(&what, format!("{} dimensions: {expected}", shape.len()))),
    };
    let pixels = if dtype.is_equiv_to(&numpy::dtype::<u8>(py)) {
        let values = array_values::<u8>(arr, &what)?;
        match channels {
            1 => Pixels::Gray8(values),
            3 => Pixels::Rgb8(values),
            4 => return Err(image_error(&what, "RGBA is not accepted: drop the alpha channel (arr[..., :3])")),
            c => return Err(image_error(&what, format!("{c} channels: {expected}"))),
        }
    } else if dtype.is_equiv_to(&numpy::dtype::<u16>(py)) {
        if channels != 1 {
            return Err(image_error(&what, format!("16-bit input must be grayscale: {expected}")));
        }
        Pixels::Gray16(array_values::<u16>(arr, &what)?)
    } else {
        return Err(image_error(&what, format!("unsupported dtype: {expected} (e.g. arr.astype(np.uint8))")));
    };
    Image::from_pixels(w, h, pixels).map_err(|e| match e {
        minigpt_med::Error::Image { reason, .. } => image_error(&what, reason),
        e => crate::errors::to_py_err(e),
    })
}

/// The values of an array in C (row-major) order, whatever its strides.
fn array_values<T: numpy::Element + Copy>(arr: &Bound<'_, PyUntypedArray>, what: &str) -> PyResult<Vec<T>> {
    let typed = arr.cast::<PyArrayDyn<T>>()?;
    let view = typed.try_readonly().map_err(|e| image_error(what, format!("cannot read the array: {e}")))?;
    let array = view.as_array();
    // ndarray's `as_slice` is C order only (numpy's also accepts Fortran order, which would
    // transpose the image); anything else (slices, transposes) is iterated in logical order.
    Ok(match array.as_slice() {
        Some(s) => s.to_vec(),
        None => array.iter().copied().collect(),
    })
}

/// Applies the optional `color` and `window` arguments to a decoded image.
pub(crate) fn with_view_options(mut image: Image, color: Option<&str>, window: Option<(f64, f64)>) -> PyResult<Image> {
    if let Some(c) = color {
        image = image.with_color(c.parse::<ColorMode>().py()?);
    }
    if let Some((center, width)) = window {
        image = image.with_window(Window::new(center, width).py()?);
    }
    Ok(image)
}

/// [`decode_image`] followed by [`with_view_options`].
pub(crate) fn to_image(obj: &Bound<'_, PyAny>, color: Option<&str>, window: Option<(f64, f64)>) -> PyResult<Image> {
    with_view_options(decode_image(obj)?, color, window)
}

/// A `region` argument: a `minigpt_med.Region`, or four numbers taken as pixels of the input.
pub(crate) fn to_region(obj: Option<&Bound<'_, PyAny>>) -> PyResult<Option<Region>> {
    let Some(obj) = obj else { return Ok(None) };
    if let Ok(r) = obj.cast::<crate::answer::PyRegion>() {
        return Ok(Some(r.get().inner));
    }
    match obj.extract::<[f64; 4]>() {
        Ok(p) => Ok(Some(Region::pixels(p).py()?)),
        Err(_) => Err(options_error(format!(
            "region {}: use (x1, y1, x2, y2) in pixels of the input image, or minigpt_med.Region.grid(...)",
            obj.repr().map(|r| r.to_string()).unwrap_or_default()
        ))),
    }
}

/// The task from its name, prompt text and region (the core's `Task::new` decides).
pub(crate) fn to_task(task: &str, prompt: Option<&str>, region: Option<&Bound<'_, PyAny>>) -> PyResult<Task> {
    Task::new(task.parse::<TaskKind>().py()?, prompt, to_region(region)?).py()
}

/// The `stop` argument: one string or a sequence of strings.
#[derive(FromPyObject)]
pub(crate) enum StopArg {
    /// A single stop string.
    One(String),
    /// Several stop strings.
    Many(Vec<String>),
}

/// Decoding keyword arguments, as received from Python.
#[derive(Default)]
pub(crate) struct Decoding {
    pub preset: Option<String>,
    pub max_new_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<u64>,
    pub repetition_penalty: Option<f64>,
    pub stop: Option<StopArg>,
    pub context_limit: Option<i64>,
}

fn count(name: &str, v: i64) -> PyResult<usize> {
    usize::try_from(v).map_err(|_| options_error(format!("{name} {v} must not be negative")))
}

impl Decoding {
    /// The core options: each keyword translated, the rules applied by `DecodeSettings::resolve`.
    pub(crate) fn to_options(&self) -> PyResult<GenerateOptions> {
        let settings = DecodeSettings {
            preset: self.preset.as_deref().map(str::parse).transpose().py()?,
            max_new_tokens: self.max_new_tokens.map(|n| count("max_new_tokens", n)).transpose()?,
            temperature: self.temperature.map(|t| t as f32),
            top_p: self.top_p.map(|p| p as f32),
            top_k: self.top_k.map(|k| count("top_k", k)).transpose()?,
            seed: self.seed,
            repetition_penalty: self.repetition_penalty.map(|r| r as f32),
            stop_strings: self.stop.as_ref().map(|s| match s {
                StopArg::One(s) => vec![s.clone()],
                StopArg::Many(v) => v.clone(),
            }),
            context_limit: self.context_limit.map(|n| count("context_limit", n)).transpose()?,
            ignore_eos: None,
        };
        settings.resolve().py()
    }
}

/// The task of a `Chat.ask`/`Study.ask` call: a verbatim `instruction`, or `task=` with
/// `prompt=`/`region=`, never both.
pub(crate) fn asked_task(
    instruction: Option<String>,
    task: Option<&str>,
    prompt: Option<&str>,
    region: Option<&Bound<'_, PyAny>>,
) -> PyResult<Task> {
    match (instruction, task) {
        (Some(i), None) if prompt.is_none() && region.is_none() => Ok(Task::Custom(i)),
        (None, Some(t)) => to_task(t, prompt, region),
        _ => Err(options_error(
            "give either an instruction (e.g. \"[vqa] Is there an effusion?\") or task= with prompt=/region=",
        )),
    }
}
