//! The one place where core errors become Python exceptions.
//!
//! The exception classes are defined in `minigpt_med/_errors.py` rather than with
//! `create_exception!` so that they can also derive from the matching builtin (`ValueError`,
//! `OSError`): `except ValueError` then catches a bad option as Python users expect.

use minigpt_med::Error;
use pyo3::prelude::*;
use pyo3::types::PyType;

/// The name of the Python class (in `minigpt_med._errors`) for a core error.
///
/// Deliberately exhaustive: a new core variant must be given a class here.
fn class_name(e: &Error) -> &'static str {
    match e {
        Error::Io { .. }
        | Error::WeightsFormat { .. }
        | Error::MissingTensor { .. }
        | Error::ShapeMismatch { .. }
        | Error::Config { .. } => "ModelFileError",
        Error::Image { .. } => "ImageError",
        Error::InvalidOption(_) => "OptionsError",
        Error::ContextOverflow { .. } => "ContextOverflowError",
        Error::Tokenizer(_) => "TokenizerError",
        Error::Unsupported(_) => "UnsupportedError",
        Error::Cancelled => "CancelledError",
        Error::Tensor(_) => "InternalError",
    }
}

/// Converts a core error into the Python exception of its class, keeping the core message.
pub(crate) fn to_py_err(e: Error) -> PyErr {
    let class = class_name(&e);
    let message = e.to_string();
    Python::attach(|py| {
        let ty = py
            .import("minigpt_med._errors")
            .and_then(|m| m.getattr(class))
            .and_then(|c| c.cast_into::<PyType>().map_err(PyErr::from));
        match ty {
            Ok(ty) => PyErr::from_type(ty, message),
            // Only reachable if the package is broken; keep the message rather than lose it.
            Err(_) => pyo3::exceptions::PyRuntimeError::new_err(format!("{class}: {message}")),
        }
    })
}

/// An invalid-option error raised by the binding's own argument conversion (same class and
/// message prefix as the core's).
pub(crate) fn options_error(message: impl Into<String>) -> PyErr {
    to_py_err(Error::InvalidOption(message.into()))
}

/// An unusable-image error raised by the binding's own input conversion.
pub(crate) fn image_error(source: &str, reason: impl Into<String>) -> PyErr {
    to_py_err(Error::Image { source_name: Some(source.to_owned()), reason: reason.into() })
}

/// Shorthand for `.map_err(to_py_err)`.
pub(crate) trait IntoPyResult<T> {
    /// Converts the core error, if any.
    fn py(self) -> PyResult<T>;
}

impl<T> IntoPyResult<T> for minigpt_med::Result<T> {
    fn py(self) -> PyResult<T> {
        self.map_err(to_py_err)
    }
}
