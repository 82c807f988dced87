//! The one error type of the engine. Every message says what went wrong *and* what to do.

use std::path::PathBuf;

/// Everything that can go wrong in minigpt-med. The bindings map each variant to their own
/// error kinds (a C status code, a Python exception class) without losing the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file the model needs is missing or cannot be opened.
    #[error("cannot read {path}: {source}. Check the path; {hint}")]
    Io {
        /// The file that could not be read.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
        /// What the file is supposed to be.
        hint: String,
    },
    /// A weights file exists but is not in the expected format, or is truncated/corrupt.
    #[error("{path} is not a usable {expected}: {reason}")]
    WeightsFormat {
        /// The offending file.
        path: PathBuf,
        /// What the file should be (e.g. "PyTorch checkpoint (.pth)").
        expected: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A tensor the model needs is absent from the weights.
    #[error("tensor `{name}` is missing from {path}. {hint}")]
    MissingTensor {
        /// The key that was looked up.
        name: String,
        /// The file (or directory) searched.
        path: PathBuf,
        /// Likely cause.
        hint: String,
    },
    /// A tensor has the wrong shape, or two files disagree about a dimension.
    #[error("shape mismatch for `{name}`: expected {expected:?}, found {found:?}. {hint}")]
    ShapeMismatch {
        /// The tensor concerned.
        name: String,
        /// The shape the model config implies.
        expected: Vec<usize>,
        /// The shape stored in the file.
        found: Vec<usize>,
        /// Likely cause, e.g. a 13B checkpoint next to a 7B LLaMA.
        hint: String,
    },
    /// A configuration file is malformed or contradicts the weights.
    #[error("invalid configuration {path}: {reason}")]
    Config {
        /// The configuration file (or `"<options>"` for values given in code).
        path: PathBuf,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// The input image cannot be decoded or is unacceptable.
    #[error("unusable image{}: {reason}", source_name.as_ref().map(|s| format!(" {s}")).unwrap_or_default())]
    Image {
        /// Path or description of the input, when known.
        source_name: Option<String>,
        /// What is wrong and how to fix it.
        reason: String,
    },
    /// Invalid generation options or task arguments.
    #[error("invalid option: {0}")]
    InvalidOption(String),
    /// The prompt does not fit in the model's context.
    #[error("the prompt needs {needed} positions but the model has {available}: {hint}")]
    ContextOverflow {
        /// Positions requested (prompt + new tokens).
        needed: usize,
        /// Positions the model supports.
        available: usize,
        /// How to make it fit.
        hint: String,
    },
    /// The tokenizer failed.
    #[error("tokenizer error: {0}")]
    Tokenizer(String),
    /// The requested device or dtype is not available in this build.
    #[error("unsupported: {0}")]
    Unsupported(String),
    /// A load was cancelled by the caller: its progress callback returned `false`.
    /// (A cancelled generation is not an error: its answer says [`crate::StopReason::Cancelled`].)
    #[error("cancelled by the caller: the progress callback returned false")]
    Cancelled,
    /// An internal tensor operation failed; this is a bug in minigpt-med, please report it.
    #[error("internal tensor error (please report): {0}")]
    Tensor(#[from] candle_core::Error),
}

/// Result alias used throughout the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error, hint: impl Into<String>) -> Self {
        Error::Io { path: path.into(), source, hint: hint.into() }
    }

    pub(crate) fn image(source_name: Option<&str>, reason: impl Into<String>) -> Self {
        Error::Image { source_name: source_name.map(str::to_owned), reason: reason.into() }
    }
}
