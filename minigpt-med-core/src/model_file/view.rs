//! One component's tensors of a model file, under the names its loader asks for (Hugging Face
//! LLaMA names, the ViT's and the projector's original names): the same loading code serves
//! the original files and a converted one.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use candle_core::{DType, Device, Tensor};

use super::names::{file_row, gguf_to_llama, permuted_heads, PROJ_PREFIX, VIT_PREFIX};
use crate::error::{Error, Result};
use crate::quant::QuantMatrix;
use crate::weights::gguf::{GgmlType, GgufFile, TensorInfo};
use crate::weights::TensorSource;

/// A component's tensors in a [`GgufFile`].
pub(crate) struct GgufView {
    file: Arc<GgufFile>,
    /// Loader name -> file name.
    names: HashMap<String, String>,
    shapes: HashMap<String, Vec<usize>>,
    /// Loader names whose rows the file holds in llama.cpp's permuted order, with their heads.
    permuted: HashMap<String, usize>,
}

impl GgufView {
    /// The LLaMA's tensors, under Hugging Face names (`heads`/`kv_heads` undo llama.cpp's
    /// row order of `q_proj`/`k_proj`).
    pub(crate) fn llama(file: Arc<GgufFile>, heads: usize, kv_heads: usize) -> Self {
        let mut view = Self::new(file, gguf_to_llama);
        view.permuted =
            view.names.keys().filter_map(|n| Some((n.clone(), permuted_heads(n, heads, kv_heads)?))).collect();
        view
    }

    /// The ViT's tensors, under their LAVIS names.
    pub(crate) fn vit(file: Arc<GgufFile>) -> Self {
        Self::new(file, |n| n.strip_prefix(VIT_PREFIX).map(str::to_owned))
    }

    /// The projector's tensors (`llama_proj`, `ln_vision`), as the checkpoint names them.
    pub(crate) fn projector(file: Arc<GgufFile>) -> Self {
        Self::new(file, |n| n.strip_prefix(PROJ_PREFIX).map(str::to_owned))
    }

    fn new(file: Arc<GgufFile>, rename: impl Fn(&str) -> Option<String>) -> Self {
        let mut names = HashMap::new();
        let mut shapes = HashMap::new();
        for (name, info) in file.tensors() {
            if let Some(local) = rename(name) {
                shapes.insert(local.clone(), info.shape.clone());
                names.insert(local, name.clone());
            }
        }
        Self { file, names, shapes, permuted: HashMap::new() }
    }

    fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.names.get(name).and_then(|n| self.file.tensor(n)).ok_or_else(|| Error::MissingTensor {
            name: name.to_owned(),
            path: self.file.path().to_owned(),
            hint: "the model file is incomplete; convert the original files again".into(),
        })
    }

    /// Checks that a permuted tensor's rows split into heads of an even width (the config
    /// guarantees it for the shapes the loader asks for; this keeps the row map in bounds for
    /// any file).
    fn check_rows(&self, name: &str, rows: usize) -> Result<()> {
        match self.permuted.get(name) {
            Some(&heads) if heads == 0 || !rows.is_multiple_of(heads) || !(rows / heads).is_multiple_of(2) => {
                Err(Error::WeightsFormat {
                    path: self.file.path().to_owned(),
                    expected: "MiniGPT-Med model file".into(),
                    reason: format!(
                        "tensor {name} has {rows} rows, which do not split into {heads} heads of even width"
                    ),
                })
            }
            _ => Ok(()),
        }
    }

    /// Row `x` (in the loader's order) of a tensor whose rows are `row_bytes` long.
    fn row<'a>(&self, name: &str, data: &'a [u8], rows: usize, row_bytes: usize, x: usize) -> &'a [u8] {
        let r = match self.permuted.get(name) {
            Some(&heads) => file_row(x, rows, heads),
            None => x,
        };
        &data[r * row_bytes..(r + 1) * row_bytes]
    }
}

impl TensorSource for GgufView {
    fn origin(&self) -> &Path {
        self.file.path()
    }

    fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }

    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let info = self.info(name)?;
        let dtype = match info.dtype {
            GgmlType::F32 => DType::F32,
            GgmlType::F16 => DType::F16,
            q => {
                return Err(Error::WeightsFormat {
                    path: self.file.path().to_owned(),
                    expected: "MiniGPT-Med model file".into(),
                    reason: format!("tensor {name} is {q}, where this engine expects a dense tensor"),
                })
            }
        };
        let data = self.file.data(info);
        let tensor = if self.permuted.contains_key(name) && info.shape.len() == 2 {
            let (rows, row_bytes) = (info.shape[0], info.bytes / info.shape[0].max(1));
            self.check_rows(name, rows)?;
            let mut out = Vec::with_capacity(info.bytes);
            (0..rows).for_each(|x| out.extend_from_slice(self.row(name, data, rows, row_bytes, x)));
            Tensor::from_raw_buffer(&out, dtype, &info.shape, device)?
        } else {
            Tensor::from_raw_buffer(data, dtype, &info.shape, device)?
        };
        self.file.release(data);
        Ok(tensor)
    }

    fn quantized(&self, name: &str, shape: [usize; 2]) -> Result<Option<QuantMatrix>> {
        let info = self.info(name)?;
        let Some(format) = info.dtype.quant() else { return Ok(None) };
        if info.shape != shape {
            return Err(Error::ShapeMismatch {
                name: name.to_owned(),
                expected: shape.to_vec(),
                found: info.shape.clone(),
                hint: format!("in {}: the model file disagrees with its own config", self.file.path().display()),
            });
        }
        let [rows, cols] = shape;
        self.check_rows(name, rows)?;
        let data = self.file.data(info);
        let row_bytes = info.bytes / rows.max(1);
        let q = QuantMatrix::from_ggml_rows(format, rows, cols, |x| self.row(name, data, rows, row_bytes, x))?;
        self.file.release(data);
        Ok(Some(q))
    }
}
