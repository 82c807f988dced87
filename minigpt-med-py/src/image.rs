//! `minigpt_med.Image` and `minigpt_med.preprocess`.

use minigpt_med::{ColorMode, Image, Pixels};
use numpy::ndarray::Array3;
use numpy::{IntoPyArray, PyArray3};
use pyo3::prelude::*;

use crate::convert::{to_image, with_view_options};
use crate::errors::options_error;

/// A decoded input image, reusable across calls.
///
/// Every function taking an image also accepts what this constructor accepts, so building an
/// `Image` is only needed to decode once, or to fix `color`/`window` once.
///
/// Args:
///     source: a path (``str`` or ``os.PathLike``; PNG, JPEG, TIFF, BMP), encoded ``bytes``,
///         a numpy array (uint8 ``HxW`` gray, uint8 ``HxWx3`` RGB, uint16 ``HxW``), a PIL
///         image, or another ``Image``.
///     color: ``"gray"`` (MiniGPT-Med's evaluation: luma replicated to RGB; the default) or
///         ``"rgb"`` (the original demo).
///     window: ``(center, width)`` intensity window for 16-bit inputs (default: min-max).
///
/// Raises:
///     ImageError: the input cannot be read or decoded, or has an unsupported layout.
#[pyclass(frozen, name = "Image", module = "minigpt_med")]
pub(crate) struct PyImage {
    pub(crate) inner: Image,
}

#[pymethods]
impl PyImage {
    #[new]
    #[pyo3(signature = (source, *, color = None, window = None))]
    fn new(source: &Bound<'_, PyAny>, color: Option<&str>, window: Option<(f64, f64)>) -> PyResult<Self> {
        Ok(Self { inner: to_image(source, color, window)? })
    }

    /// Width of the input in pixels (box pixel coordinates refer to it).
    #[getter]
    fn width(&self) -> usize {
        self.inner.width()
    }

    /// Height of the input in pixels.
    #[getter]
    fn height(&self) -> usize {
        self.inner.height()
    }

    /// ``(width, height)``, as PIL's ``Image.size``.
    #[getter]
    fn size(&self) -> (usize, usize) {
        (self.inner.width(), self.inner.height())
    }

    /// How colour is fed to the model: ``"gray"`` or ``"rgb"``.
    #[getter]
    fn color(&self) -> &'static str {
        color_name(self.inner.color())
    }

    /// The decoded pixel format: ``"gray8"``, ``"rgb8"``, ``"gray16"`` or ``"grayf32"`` (DICOM
    /// values after the modality rescale).
    #[getter]
    fn pixel_format(&self) -> &'static str {
        match self.inner.pixels() {
            Pixels::Gray8(_) => "gray8",
            Pixels::Rgb8(_) => "rgb8",
            Pixels::Gray16(_) => "gray16",
            Pixels::GrayF32(_) => "grayf32",
        }
    }

    /// A copy with another colour mode and/or intensity window.
    #[pyo3(signature = (*, color = None, window = None))]
    fn with_options(&self, color: Option<&str>, window: Option<(f64, f64)>) -> PyResult<Self> {
        Ok(Self { inner: with_view_options(self.inner.clone(), color, window)? })
    }

    fn __repr__(&self) -> String {
        format!(
            "Image(width={}, height={}, pixel_format='{}', color='{}')",
            self.inner.width(),
            self.inner.height(),
            self.pixel_format(),
            self.color()
        )
    }
}

pub(crate) fn color_name(c: ColorMode) -> &'static str {
    match c {
        ColorMode::Gray => "gray",
        ColorMode::Rgb => "rgb",
    }
}

/// The exact image the vision encoder sees: Pillow-exact bicubic resize to ``size x size``
/// after the colour conversion, before normalisation.
///
/// Args:
///     image: any accepted image input (see :class:`Image`).
///     color: ``"gray"`` or ``"rgb"``; ``None`` keeps the image's (default gray).
///     window: ``(center, width)`` for 16-bit inputs.
///     size: output side in pixels (the model uses 448).
///
/// Returns:
///     numpy.ndarray: uint8 array of shape ``(size, size, 3)`` (RGB, HWC).
#[pyfunction]
#[pyo3(signature = (image, *, color = None, window = None, size = 448))]
pub(crate) fn preprocess<'py>(
    py: Python<'py>,
    image: &Bound<'py, PyAny>,
    color: Option<&str>,
    window: Option<(f64, f64)>,
    size: i64,
) -> PyResult<Bound<'py, PyArray3<u8>>> {
    // A bound keeps a typo from allocating gigabytes; the model itself uses 448.
    let size = usize::try_from(size)
        .ok()
        .filter(|s| (1..=8192).contains(s))
        .ok_or_else(|| options_error(format!("size {size} must be between 1 and 8192")))?;
    let image = to_image(image, color, window)?;
    let hwc = py.detach(|| image.model_view(size).to_hwc());
    let array = Array3::from_shape_vec((size, size, 3), hwc).expect("model_view returns size*size*3 values");
    Ok(array.into_pyarray(py))
}
