//! Python bindings for minigpt-med: the `minigpt_med._native` extension module.
//!
//! Thin by design: argument conversion and the Python protocols (iterators, exceptions, the
//! GIL) live here; every behaviour of the engine is the core crate's. The pure-Python package
//! `minigpt_med` (in `python/`) re-exports these classes and holds the exception classes,
//! the PIL conversion and the tqdm progress bar.

mod answer;
mod batch;
mod convert;
mod errors;
mod image;
mod model;
mod stream;
mod study;

use pyo3::prelude::*;

/// Sets the CPU threads used for all matrix work (the quantized kernels and the f32 GEMM).
///
/// Builds the process-wide thread pool with ``threads`` threads. The pool is built once (by
/// this call or the first model load): call it before loading a model. The environment is not
/// written.
///
/// Raises:
///     OptionsError: ``threads`` is 0, or the pool already runs another number of threads.
#[pyfunction]
fn set_threads(threads: usize) -> PyResult<()> {
    minigpt_med::set_threads(threads).map_err(errors::to_py_err)
}

/// The native part of the `minigpt_med` package; import `minigpt_med` instead.
#[pymodule]
#[pyo3(name = "_native")]
fn native(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", minigpt_med::VERSION)?;
    m.add_class::<model::PyModel>()?;
    m.add_class::<model::PyChat>()?;
    m.add_class::<study::PyStudy>()?;
    m.add_class::<answer::PyAnswer>()?;
    m.add_class::<answer::PyBoundingBox>()?;
    m.add_class::<answer::PyRegion>()?;
    m.add_class::<image::PyImage>()?;
    m.add_class::<stream::PyTextStream>()?;
    m.add_function(wrap_pyfunction!(image::preprocess, m)?)?;
    m.add_function(wrap_pyfunction!(answer::parse_boxes, m)?)?;
    m.add_function(wrap_pyfunction!(set_threads, m)?)?;
    Ok(())
}
