//! PyTorch zip checkpoints (`torch.save` since 1.6): `.pth` files and `pytorch_model*.bin`.
//!
//! The pickle is interpreted by candle's restricted reader: it only builds a description of the
//! objects (classes are recorded by name, never imported or called), so a malicious file cannot
//! run code. Only the tensors that are asked for are read, so optimizer state and other entries
//! in a training checkpoint cost nothing.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::pickle::PthTensors;
use candle_core::{Device, Tensor};

use super::TensorSource;
use crate::error::{Error, Result};

/// One PyTorch zip checkpoint, optionally with its state dict under a top-level key.
pub(crate) struct PthFile {
    path: PathBuf,
    expected: String,
    inner: PthTensors,
    shapes: HashMap<String, Vec<usize>>,
}

impl PthFile {
    /// Reads the tensor index of `path`; `key` selects a nested state dict (e.g. `model`).
    pub(crate) fn open(path: &Path, key: Option<&str>, expected: &str) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e, format!("expected {expected}")))?;
        drop(file);
        let format_err =
            |reason: String| Error::WeightsFormat { path: path.to_owned(), expected: expected.to_owned(), reason };
        // The pickle reader is third-party code fed with untrusted bytes: contain any panic.
        let inner = crate::contain::contain(|| PthTensors::new(path, key))
            .map_err(|msg| format_err(format!("the pickle is malformed ({msg})")))?
            .map_err(|e| {
                format_err(format!(
                    "{e} (it must be a zip-format torch.save file; a truncated download also looks like this)"
                ))
            })?;
        let shapes: HashMap<String, Vec<usize>> =
            inner.tensor_infos().iter().map(|(k, v)| (k.clone(), v.layout.shape().dims().to_vec())).collect();
        if shapes.is_empty() {
            return Err(format_err(match key {
                Some(k) => format!("no tensors under the `{k}` entry"),
                None => "no tensors found".into(),
            }));
        }
        Ok(Self { path: path.to_owned(), expected: expected.to_owned(), inner, shapes })
    }
}

impl TensorSource for PthFile {
    fn origin(&self) -> &Path {
        &self.path
    }
    fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let format_err =
            |reason: String| Error::WeightsFormat { path: self.path.clone(), expected: self.expected.clone(), reason };
        // The reader allocates the declared shape before it reads: a shape the storage (or
        // the whole file, which torch writes uncompressed) cannot hold is refused first.
        if let Some(info) = self.inner.tensor_infos().get(name) {
            let elems = info.layout.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let end = elems.and_then(|n| n.checked_add(info.layout.start_offset()));
            let bytes = end.and_then(|n| n.checked_mul(info.dtype.size_in_bytes()));
            let file_len = std::fs::metadata(&self.path).map(|m| m.len()).unwrap_or(0);
            match (end, bytes) {
                (Some(end), Some(bytes)) if end <= info.storage_size && bytes as u64 <= file_len => {}
                _ => {
                    return Err(format_err(format!(
                        "tensor `{name}` declares shape {:?} but its storage holds {} values ({file_len}-byte file); \
                         the file is corrupt",
                        info.layout.dims(),
                        info.storage_size
                    )))
                }
            }
        }
        let t = crate::contain::contain(|| self.inner.get(name))
            .map_err(|msg| format_err(format!("tensor `{name}` is malformed ({msg})")))?
            .map_err(|e| format_err(format!("tensor `{name}`: {e} (truncated or corrupt file?)")))?
            .ok_or_else(|| Error::MissingTensor { name: name.into(), path: self.path.clone(), hint: String::new() })?;
        Ok(t.to_device(device)?)
    }
}
