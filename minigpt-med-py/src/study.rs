//! `Study`: one image, many questions (the core's `minigpt_med::Study`).

use std::sync::Arc;

use minigpt_med::{Model, Study};
use pyo3::prelude::*;

use crate::answer::PyAnswer;
use crate::convert::{asked_task, Decoding, StopArg};
use crate::errors::IntoPyResult;
use crate::stream::{run_blocking, Job, PyTextStream};

/// One image prepared for many questions (``Model.study``): encoded once, the prompt up to
/// its image tokens run once, so each :meth:`ask` costs only the question's own tokens.
/// Every answer equals ``Model.generate`` of the same task. Thread-safe: several threads may
/// ask one study at once.
#[pyclass(frozen, name = "Study", module = "minigpt_med")]
pub(crate) struct PyStudy {
    pub(crate) inner: Arc<Study<Arc<Model>>>,
}

impl PyStudy {
    fn job(
        &self,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        decoding: Decoding,
    ) -> PyResult<Job> {
        let task = asked_task(instruction, task, prompt, region)?;
        let opts = decoding.to_options()?;
        let study = Arc::clone(&self.inner);
        Ok(Box::new(move |on_text| study.ask_stream(&task, &opts, on_text)))
    }
}

// The keyword lists mirror every core option, so the methods have many parameters by design.
#[allow(clippy::too_many_arguments)]
#[pymethods]
impl PyStudy {
    /// Answers a question about the study's image; keywords as :meth:`Chat.ask` (an
    /// ``instruction`` used verbatim, or ``task=`` with ``prompt=``/``region=``, and the
    /// decoding options of :meth:`Model.generate`).
    ///
    /// Returns:
    ///     Answer
    #[pyo3(signature = (instruction = None, *, task = None, prompt = None, region = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn ask(
        &self,
        py: Python<'_>,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyAnswer> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        run_blocking(py, self.job(instruction, task, prompt, region, decoding)?).map(PyAnswer::from)
    }

    /// Like :meth:`ask`, returning a :class:`TextStream` of text pieces.
    #[pyo3(signature = (instruction = None, *, task = None, prompt = None, region = None,
        preset = None, max_new_tokens = None, temperature = None, top_p = None, top_k = None, seed = None,
        repetition_penalty = None, stop = None, context_limit = None))]
    fn stream(
        &self,
        instruction: Option<String>,
        task: Option<&str>,
        prompt: Option<&str>,
        region: Option<&Bound<'_, PyAny>>,
        preset: Option<String>,
        max_new_tokens: Option<i64>,
        temperature: Option<f64>,
        top_p: Option<f64>,
        top_k: Option<i64>,
        seed: Option<u64>,
        repetition_penalty: Option<f64>,
        stop: Option<StopArg>,
        context_limit: Option<i64>,
    ) -> PyResult<PyTextStream> {
        let decoding = Decoding {
            preset,
            max_new_tokens,
            temperature,
            top_p,
            top_k,
            seed,
            repetition_penalty,
            stop,
            context_limit,
        };
        PyTextStream::spawn(self.job(instruction, task, prompt, region, decoding)?)
    }

    /// Positions of the shared prefix (the tokens before the image and the image tokens).
    #[getter]
    fn prefix_len(&self) -> usize {
        self.inner.prefix_len()
    }

    fn __repr__(&self) -> String {
        let image = self.inner.image();
        format!("Study(image={}x{}, prefix_len={})", image.width, image.height, self.inner.prefix_len())
    }
}

/// `Model.study`: the image encoded and the prefix run with the GIL released.
pub(crate) fn study(py: Python<'_>, model: &Arc<Model>, image: minigpt_med::Image) -> PyResult<PyStudy> {
    let model = Arc::clone(model);
    let study = py.detach(|| model.encode_image(&image).and_then(|emb| Study::new(Arc::clone(&model), emb))).py()?;
    Ok(PyStudy { inner: Arc::new(study) })
}
