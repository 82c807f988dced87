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
    /// Bytes in the file: no tensor can hold more (torch writes its storages uncompressed).
    file_len: u64,
}

impl PthFile {
    /// Reads the tensor index of `path`; `key` selects a nested state dict (e.g. `model`).
    pub(crate) fn open(path: &Path, key: Option<&str>, expected: &str) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e, format!("expected {expected}")))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e, format!("expected {expected}")))?.len();
        let format_err =
            |reason: String| Error::WeightsFormat { path: path.to_owned(), expected: expected.to_owned(), reason };
        // What the pickle can make the reader build is bounded first (a memo bomb or deep
        // nesting would abort the process inside it), then any panic of it is contained.
        scan_pickle(file).map_err(|reason| format_err(format!("{reason}; the file is corrupt or hostile")))?;
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
        Ok(Self { path: path.to_owned(), expected: expected.to_owned(), inner, shapes, file_len })
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
        // the whole file) cannot hold is refused first.
        if let Some(info) = self.inner.tensor_infos().get(name) {
            let elems = info.layout.dims().iter().try_fold(1usize, |n, &d| n.checked_mul(d));
            let end = elems.and_then(|n| n.checked_add(info.layout.start_offset()));
            let bytes = end.and_then(|n| n.checked_mul(info.dtype.size_in_bytes()));
            let file_len = self.file_len;
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

/// Reads `*/data.pkl` from the zip container (bounded in size) and checks it with
/// [`super::pickle_scan::check`]. A file that is not a zip is left to the reader's own error.
fn scan_pickle(file: std::fs::File) -> std::result::Result<(), String> {
    use std::io::Read;
    let Ok(mut zip) = zip::ZipArchive::new(std::io::BufReader::new(file)) else { return Ok(()) };
    let name = zip.file_names().filter_map(|n| n.ok()).find(|n| n.ends_with("data.pkl")).map(|n| n.into_owned());
    let Some(name) = name else { return Ok(()) };
    let entry = zip.by_name(&name).map_err(|e| format!("unreadable {name}: {e}"))?;
    let max = super::pickle_scan::MAX_PICKLE_BYTES;
    if entry.size() > max {
        return Err(format!("{name} holds {} bytes, over the {max}-byte limit", entry.size()));
    }
    let mut data = Vec::new();
    entry.take(max + 1).read_to_end(&mut data).map_err(|e| format!("unreadable {name}: {e}"))?;
    super::pickle_scan::check(&data).map_err(|e| format!("{name}: {e}"))
}
