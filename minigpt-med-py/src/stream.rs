//! `TextStream`: a generation running on a worker thread, read as a Python iterator.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use minigpt_med::{Answer, Error, Result};
use pyo3::prelude::*;

use crate::answer::PyAnswer;
use crate::errors::to_py_err;

/// How often a waiting `__next__` wakes up to let Python handle Ctrl-C.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

enum Msg {
    Piece(String),
    Done(Result<Answer>),
}

/// A job for the worker: runs a generation, calling the text callback with each piece.
pub(crate) type Job = Box<dyn FnOnce(&mut dyn FnMut(&str) -> bool) -> Result<Answer> + Send>;

/// Locks a mutex even if a panicking thread poisoned it: the data here (a channel end, an
/// answer, a thread handle) stays consistent.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// An iterator over the pieces of an answer as they are generated.
///
/// The pieces concatenate to the final answer text, available as :attr:`answer` once the
/// iterator is exhausted. The generation runs on a worker thread; waiting for the next piece
/// releases the GIL. Closing the iterator (:meth:`close`, leaving a ``with`` block, or dropping
/// it) cancels the generation; Ctrl-C while waiting cancels it and raises ``KeyboardInterrupt``.
#[pyclass(frozen, name = "TextStream", module = "minigpt_med")]
pub(crate) struct PyTextStream {
    rx: Mutex<Receiver<Msg>>,
    cancel: Arc<AtomicBool>,
    finished: AtomicBool,
    answer: Mutex<Option<Answer>>,
    worker: Mutex<Option<JoinHandle<()>>>,
}

fn spawn_worker(f: impl FnOnce() + Send + 'static) -> PyResult<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("minigpt-med-generate".into())
        .spawn(f)
        .map_err(|e| pyo3::exceptions::PyRuntimeError::new_err(format!("cannot start a generation thread: {e}")))
}

/// The error for a worker that ended without sending its result.
fn worker_panicked() -> PyErr {
    to_py_err(Error::Tensor(minigpt_med::candle::Error::Msg(
        "the generation thread ended without an answer (it panicked; see stderr)".into(),
    )))
}

/// Runs a generation on a worker thread and waits for its answer with the GIL released.
///
/// The wait wakes every [`SIGNAL_POLL`] so that Ctrl-C raises `KeyboardInterrupt` at once,
/// even during image encoding or a long prefill where the core calls no callback; the worker
/// is then told to stop and is cancelled at its next text piece (it owns everything it uses).
pub(crate) fn run_blocking(py: Python<'_>, job: Job) -> PyResult<Answer> {
    run_on_worker(py, move |stop| job(&mut |_| !stop.load(Ordering::Relaxed)))?.map_err(to_py_err)
}

/// Runs `work` on a worker thread and waits for its result with the GIL released, waking every
/// [`SIGNAL_POLL`] for Ctrl-C: then the flag `work` was given is set (it should stop soon; it
/// owns everything it uses) and `KeyboardInterrupt` is raised.
pub(crate) fn run_on_worker<T: Send + 'static>(
    py: Python<'_>,
    work: impl FnOnce(&AtomicBool) -> T + Send + 'static,
) -> PyResult<T> {
    let (tx, mut rx) = channel();
    let cancel = Arc::new(AtomicBool::new(false));
    let stop = Arc::clone(&cancel);
    spawn_worker(move || {
        let _ = tx.send(work(&stop));
    })?;
    loop {
        // `Receiver` is not `Sync`: move it into the detached closure and back out.
        let (back, msg) = py.detach(move || {
            let msg = rx.recv_timeout(SIGNAL_POLL);
            (rx, msg)
        });
        rx = back;
        match msg {
            Ok(result) => return Ok(result),
            Err(RecvTimeoutError::Timeout) => {
                if let Err(e) = py.check_signals() {
                    cancel.store(true, Ordering::Relaxed);
                    return Err(e);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return Err(worker_panicked()),
        }
    }
}

impl PyTextStream {
    /// Starts `job` on a worker thread.
    pub(crate) fn spawn(job: Job) -> PyResult<Self> {
        let (tx, rx) = channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&cancel);
        let worker = spawn_worker(move || {
            // A failed send means the iterator is gone: stop generating.
            let mut on_text =
                |piece: &str| !stop.load(Ordering::Relaxed) && tx.send(Msg::Piece(piece.to_owned())).is_ok();
            let result = job(&mut on_text);
            let _ = tx.send(Msg::Done(result));
        })?;
        Ok(Self {
            rx: Mutex::new(rx),
            cancel,
            finished: AtomicBool::new(false),
            answer: Mutex::new(None),
            worker: Mutex::new(Some(worker)),
        })
    }

    fn finish(&self, result: Result<Answer>) -> PyResult<()> {
        self.finished.store(true, Ordering::Relaxed);
        *lock(&self.answer) = Some(result.map_err(to_py_err)?);
        Ok(())
    }
}

#[pymethods]
impl PyTextStream {
    fn __iter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    fn __next__(&self, py: Python<'_>) -> PyResult<Option<String>> {
        if self.finished.load(Ordering::Relaxed) {
            return Ok(None);
        }
        loop {
            // Lock and wait with the GIL released: the worker never needs the GIL, and another
            // Python thread reading this stream must not block the interpreter.
            let msg = py.detach(|| lock(&self.rx).recv_timeout(SIGNAL_POLL));
            match msg {
                Ok(Msg::Piece(piece)) => return Ok(Some(piece)),
                Ok(Msg::Done(result)) => {
                    self.finish(result)?;
                    return Ok(None);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if let Err(e) = py.check_signals() {
                        self.cancel.store(true, Ordering::Relaxed);
                        return Err(e);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    self.finished.store(true, Ordering::Relaxed);
                    return Err(to_py_err(Error::Tensor(minigpt_med::candle::Error::Msg(
                        "the generation thread ended without an answer (it panicked; see stderr)".into(),
                    ))));
                }
            }
        }
    }

    /// The final answer once the stream is exhausted or closed, else ``None``.
    #[getter]
    fn answer(&self) -> Option<PyAnswer> {
        lock(&self.answer).clone().map(PyAnswer::from)
    }

    /// Cancels the generation (if still running) and waits for the worker to stop. The answer
    /// so far is then available as :attr:`answer` (``stop_reason == "cancelled"`` if it was cut).
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        self.cancel.store(true, Ordering::Relaxed);
        if let Some(handle) = lock(&self.worker).take() {
            py.detach(|| {
                let _ = handle.join();
            });
        }
        if self.finished.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.finished.store(true, Ordering::Relaxed);
        loop {
            match lock(&self.rx).try_recv() {
                Ok(Msg::Piece(_)) => continue,
                Ok(Msg::Done(result)) => return self.finish(result),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => return Ok(()),
            }
        }
    }

    fn __enter__(slf: Bound<'_, Self>) -> Bound<'_, Self> {
        slf
    }

    #[pyo3(signature = (*_exc))]
    fn __exit__(&self, py: Python<'_>, _exc: &Bound<'_, pyo3::types::PyTuple>) -> PyResult<bool> {
        self.close(py)?;
        Ok(false)
    }
}

impl Drop for PyTextStream {
    fn drop(&mut self) {
        // Don't join here (this may run under the GIL): the worker stops at its next piece.
        self.cancel.store(true, Ordering::Relaxed);
    }
}
