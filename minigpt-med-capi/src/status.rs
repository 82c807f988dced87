//! Status codes, the thread-local error message, and the guard every entry point runs in.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{c_char, CString};
use std::panic::{self, AssertUnwindSafe};

/// The result of every `mgm_*` call that can fail. `MGM_STATUS_OK` is 0; on any other value
/// `mgm_last_error()` holds a message saying what went wrong and what to do.
///
/// The numbers are part of the ABI and never change; new codes are only appended.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// Success.
    Ok = 0,
    /// A NULL pointer, a string that is not UTF-8, an enum or number out of range, a wrong
    /// `struct_size`: the caller passed something this library cannot accept.
    InvalidArgument = 1,
    /// A model file is missing or cannot be read.
    Io = 2,
    /// A weights file is not in the expected format, or is truncated.
    WeightsFormat = 3,
    /// A tensor the model needs is absent from the weights.
    MissingTensor = 4,
    /// A tensor has the wrong shape (e.g. files of different model sizes mixed).
    ShapeMismatch = 5,
    /// A configuration file is malformed or contradicts the weights.
    Config = 6,
    /// The input image cannot be decoded or is unacceptable.
    Image = 7,
    /// Invalid generation options or task arguments (e.g. a task without its text).
    InvalidOption = 8,
    /// The prompt does not fit in the model's context.
    ContextOverflow = 9,
    /// The tokenizer failed.
    Tokenizer = 10,
    /// The requested device or dtype is not available in this build.
    Unsupported = 11,
    /// The caller cancelled (a load-progress callback returned false).
    Cancelled = 12,
    /// An internal error of the engine (a bug: please report it with the message).
    Internal = 13,
    /// The library panicked (a bug: please report it with the message). The handles passed to
    /// the failed call remain valid to free.
    Panic = 14,
    /// The handle is in use by a call on another thread (a chat answers one question at a
    /// time); nothing was changed: retry when that call has returned.
    Busy = 15,
}

impl Status {
    /// The constant's name as it appears in the header.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Status::Ok => "MGM_STATUS_OK\0",
            Status::InvalidArgument => "MGM_STATUS_INVALID_ARGUMENT\0",
            Status::Io => "MGM_STATUS_IO\0",
            Status::WeightsFormat => "MGM_STATUS_WEIGHTS_FORMAT\0",
            Status::MissingTensor => "MGM_STATUS_MISSING_TENSOR\0",
            Status::ShapeMismatch => "MGM_STATUS_SHAPE_MISMATCH\0",
            Status::Config => "MGM_STATUS_CONFIG\0",
            Status::Image => "MGM_STATUS_IMAGE\0",
            Status::InvalidOption => "MGM_STATUS_INVALID_OPTION\0",
            Status::ContextOverflow => "MGM_STATUS_CONTEXT_OVERFLOW\0",
            Status::Tokenizer => "MGM_STATUS_TOKENIZER\0",
            Status::Unsupported => "MGM_STATUS_UNSUPPORTED\0",
            Status::Cancelled => "MGM_STATUS_CANCELLED\0",
            Status::Internal => "MGM_STATUS_INTERNAL\0",
            Status::Panic => "MGM_STATUS_PANIC\0",
            Status::Busy => "MGM_STATUS_BUSY\0",
        }
    }

    /// The status for a raw value, if it is one.
    pub(crate) fn from_raw(raw: u32) -> Option<Self> {
        const ALL: [Status; 16] = [
            Status::Ok,
            Status::InvalidArgument,
            Status::Io,
            Status::WeightsFormat,
            Status::MissingTensor,
            Status::ShapeMismatch,
            Status::Config,
            Status::Image,
            Status::InvalidOption,
            Status::ContextOverflow,
            Status::Tokenizer,
            Status::Unsupported,
            Status::Cancelled,
            Status::Internal,
            Status::Panic,
            Status::Busy,
        ];
        ALL.into_iter().find(|s| *s as u32 == raw)
    }
}

/// A failed call: the code to return and the message for `mgm_last_error`.
#[derive(Debug)]
pub(crate) struct Failure {
    pub(crate) status: Status,
    pub(crate) message: String,
}

impl Failure {
    /// An argument the caller got wrong.
    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self { status: Status::InvalidArgument, message: message.into() }
    }
}

/// The one place engine errors become status codes. The match is exhaustive on purpose: a new
/// engine error variant must be given a code here before the library builds again.
impl From<engine::Error> for Failure {
    fn from(e: engine::Error) -> Self {
        use engine::Error as E;
        let status = match &e {
            E::Io { .. } => Status::Io,
            E::WeightsFormat { .. } => Status::WeightsFormat,
            E::MissingTensor { .. } => Status::MissingTensor,
            E::ShapeMismatch { .. } => Status::ShapeMismatch,
            E::Config { .. } => Status::Config,
            E::Image { .. } => Status::Image,
            E::InvalidOption(_) => Status::InvalidOption,
            E::ContextOverflow { .. } => Status::ContextOverflow,
            E::Tokenizer(_) => Status::Tokenizer,
            E::Unsupported(_) => Status::Unsupported,
            E::Cancelled => Status::Cancelled,
            E::Tensor(_) => Status::Internal,
        };
        Self { status, message: e.to_string() }
    }
}

thread_local! {
    /// The message of the last failed call on this thread ("" after a successful one).
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    // A message with an interior NUL would be cut short in C; NULs are replaced, not dropped.
    let c = CString::new(message.replace('\0', "\u{FFFD}")).unwrap_or_default();
    // `try_with` fails only while the thread is being torn down; the message is lost then.
    let _ = LAST_ERROR.try_with(|e| *e.borrow_mut() = c);
}

/// The current thread's last error message; the pointer stays valid until the next
/// status-returning call on this thread.
pub(crate) fn last_error_ptr() -> *const c_char {
    LAST_ERROR.try_with(|e| e.borrow().as_ptr()).unwrap_or(c"".as_ptr())
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".to_owned());
    format!("internal panic in libminigpt_med (please report): {what}")
}

/// Runs the body of an entry point: catches panics (unwinding into C is undefined behaviour),
/// maps failures to their status and records the message for `mgm_last_error`.
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Failure>) -> Status {
    // The body only touches memory the caller handed over for this call; on a panic the
    // handles stay structurally valid (no engine invariant spans a panic), so asserting
    // unwind safety is sound.
    let outcome = match panic::catch_unwind(AssertUnwindSafe(body)) {
        Ok(result) => result,
        Err(payload) => Err(Failure { status: Status::Panic, message: panic_message(payload.as_ref()) }),
    };
    match outcome {
        Ok(()) => {
            set_last_error("");
            Status::Ok
        }
        Err(f) => {
            set_last_error(&f.message);
            f.status
        }
    }
}
