//! `Answer`, `BoundingBox`, `Region` and `parse_boxes`.

use minigpt_med::{Answer, BoundingBox, Region};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::errors::IntoPyResult;

/// Python's `repr()` of a string (Rust's `{:?}` escapes differently).
fn py_repr(py: Python<'_>, s: &str) -> PyResult<String> {
    Ok(PyString::new(py, s).repr()?.to_string())
}

/// A box the model wrote.
///
/// Attributes:
///     label: the phrase inside ``<p>...</p>``, or ``None`` for a bare box.
///     grid: ``(x1, y1, x2, y2)`` on the model's 0-100 grid.
///     pixels: the same corners in pixels of the input image.
#[pyclass(frozen, name = "BoundingBox", module = "minigpt_med")]
#[derive(Clone)]
pub(crate) struct PyBoundingBox {
    inner: BoundingBox,
}

#[pymethods]
impl PyBoundingBox {
    /// The phrase inside ``<p>...</p>``, or ``None`` for a bare ``{<..><..><..><..>}``.
    #[getter]
    fn label(&self) -> Option<String> {
        self.inner.label.clone()
    }

    /// ``(x1, y1, x2, y2)`` on the 0-100 grid, clamped, corners ordered.
    #[getter]
    fn grid(&self) -> (u32, u32, u32, u32) {
        let g = self.inner.grid;
        (g[0], g[1], g[2], g[3])
    }

    /// ``(x1, y1, x2, y2)`` in pixels of the input image.
    #[getter]
    fn pixels(&self) -> (f64, f64, f64, f64) {
        let p = self.inner.pixels;
        (p[0], p[1], p[2], p[3])
    }

    fn __eq__(&self, other: &Bound<'_, PyAny>) -> bool {
        other.cast::<Self>().is_ok_and(|o| o.get().inner == self.inner)
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        let label = match &self.inner.label {
            Some(l) => py_repr(py, l)?,
            None => "None".to_owned(),
        };
        Ok(format!("BoundingBox(label={label}, grid={:?}, pixels={:?})", self.grid(), self.pixels()))
    }
}

impl From<BoundingBox> for PyBoundingBox {
    fn from(inner: BoundingBox) -> Self {
        Self { inner }
    }
}

/// The model's answer to one task.
///
/// Attributes:
///     text: the cleaned answer text.
///     token_ids: the generated token ids (EOS excluded).
///     boxes: boxes parsed from ``text``, in pixels of the input image.
///     stop_reason: ``"eos"``, ``"max_tokens"``, ``"stop_string"``, ``"cancelled"`` or ``"context_full"``.
///     timings: ``{"encode_ms", "prefill_ms", "decode_ms", "tokens_per_s"}``.
#[pyclass(frozen, name = "Answer", module = "minigpt_med")]
pub(crate) struct PyAnswer {
    pub(crate) inner: Answer,
}

#[pymethods]
impl PyAnswer {
    /// The boxes drawn over ``image`` (the input this answer is about), one colour per label,
    /// like the original demo; returned as a ``PIL.Image`` (shown inline in Jupyter).
    ///
    /// Args:
    ///     image: the same kinds of input as :meth:`Model.generate`.
    ///     as_array: return a ``numpy.ndarray`` (H, W, 3) uint8 instead of a PIL image.
    #[pyo3(signature = (image, *, window = None, as_array = false))]
    fn draw<'py>(
        &self,
        py: Python<'py>,
        image: &Bound<'py, PyAny>,
        window: Option<(f64, f64)>,
        as_array: bool,
    ) -> PyResult<Bound<'py, PyAny>> {
        let image = crate::convert::to_image(image, None, window)?;
        let rgb = py.detach(|| self.inner.draw(&image));
        let array = numpy::ndarray::Array3::from_shape_vec((image.height(), image.width(), 3), rgb)
            .expect("draw returns height*width*3 values");
        let array = numpy::IntoPyArray::into_pyarray(array, py).into_any();
        if as_array {
            return Ok(array);
        }
        py.import("PIL.Image")?.call_method1("fromarray", (array,))
    }

    /// The cleaned answer text, as MiniGPT-Med post-processes it.
    #[getter]
    fn text(&self) -> &str {
        &self.inner.text
    }

    /// The generated token ids (EOS excluded).
    #[getter]
    fn token_ids(&self) -> Vec<u32> {
        self.inner.token_ids.clone()
    }

    /// Boxes found in ``text``, in pixels of the input image.
    #[getter]
    fn boxes(&self) -> Vec<PyBoundingBox> {
        self.inner.boxes.iter().cloned().map(PyBoundingBox::from).collect()
    }

    /// Why generation stopped: ``"eos"``, ``"max_tokens"``, ``"stop_string"``, ``"cancelled"`` or ``"context_full"``.
    #[getter]
    fn stop_reason(&self) -> &'static str {
        self.inner.stop_reason.name()
    }

    /// Phase timings: ``encode_ms``, ``prefill_ms``, ``decode_ms`` and ``tokens_per_s``.
    #[getter]
    fn timings<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let t = self.inner.timings;
        let d = PyDict::new(py);
        d.set_item("encode_ms", t.encode_ms)?;
        d.set_item("prefill_ms", t.prefill_ms)?;
        d.set_item("decode_ms", t.decode_ms)?;
        d.set_item("tokens_per_s", t.tokens_per_s)?;
        Ok(d)
    }

    fn __str__(&self) -> &str {
        &self.inner.text
    }

    fn __repr__(&self, py: Python<'_>) -> PyResult<String> {
        Ok(format!(
            "Answer(text={}, tokens={}, boxes={}, stop_reason='{}')",
            py_repr(py, &self.inner.text)?,
            self.inner.token_ids.len(),
            self.inner.boxes.len(),
            self.stop_reason()
        ))
    }
}

impl From<Answer> for PyAnswer {
    fn from(inner: Answer) -> Self {
        Self { inner }
    }
}

/// A region for the ``identify`` task.
///
/// Build one with :meth:`Region.grid` (0-100 model grid) or :meth:`Region.pixels` (pixels of
/// the input image). A plain ``(x1, y1, x2, y2)`` tuple passed as ``region=`` means pixels.
#[pyclass(frozen, name = "Region", module = "minigpt_med")]
pub(crate) struct PyRegion {
    pub(crate) inner: Region,
}

#[pymethods]
impl PyRegion {
    /// Corners ``x1, y1, x2, y2`` on the model's 0-100 grid: whole numbers in 0..=100.
    #[staticmethod]
    fn grid(x1: f64, y1: f64, x2: f64, y2: f64) -> PyResult<Self> {
        Ok(Self { inner: Region::grid([x1, y1, x2, y2]).py()? })
    }

    /// Corners ``x1, y1, x2, y2`` in pixels of the input image (finite numbers).
    #[staticmethod]
    fn pixels(x1: f64, y1: f64, x2: f64, y2: f64) -> PyResult<Self> {
        Ok(Self { inner: Region::pixels([x1, y1, x2, y2]).py()? })
    }

    fn __repr__(&self) -> String {
        match self.inner {
            Region::Grid(g) => format!("Region.grid({}, {}, {}, {})", g[0], g[1], g[2], g[3]),
            Region::Pixels(p) => format!("Region.pixels({}, {}, {}, {})", p[0], p[1], p[2], p[3]),
        }
    }
}

/// Parses the boxes in a model answer, for an input image of ``width x height`` pixels.
///
/// Accepts ``<p>label</p> {<x1><y1><x2><y2>}``, several boxes joined by ``<delim>``, several
/// labelled groups, and bare boxes; malformed groups are skipped.
///
/// Returns:
///     list[BoundingBox]
#[pyfunction]
pub(crate) fn parse_boxes(text: &str, width: usize, height: usize) -> Vec<PyBoundingBox> {
    Answer::parse_boxes(text, width, height).into_iter().map(PyBoundingBox::from).collect()
}
