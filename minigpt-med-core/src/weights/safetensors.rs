//! Memory-mapped safetensors, single file or shards.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use super::TensorSource;
use crate::error::{Error, Result};

/// One or more memory-mapped safetensors files. Only the tensor being read is copied out of
/// the mapping, so loading never holds a second full copy of the weights.
pub(crate) struct SafetensorsFiles {
    origin: PathBuf,
    files: Vec<(PathBuf, memmap2::Mmap)>,
    owner: HashMap<String, usize>,
    shapes: HashMap<String, Vec<usize>>,
}

impl SafetensorsFiles {
    pub(crate) fn open(origin: &Path, paths: &[PathBuf]) -> Result<Self> {
        let mut files = Vec::with_capacity(paths.len());
        let mut owner = HashMap::new();
        let mut shapes = HashMap::new();
        for (i, path) in paths.iter().enumerate() {
            let file = std::fs::File::open(path).map_err(|e| Error::io(path, e, "expected a safetensors weights file"))?;
            // SAFETY: the mapping is read-only; like every mmap-based loader we rely on the
            // file not being truncated by another process while the model is loading.
            let mmap = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| Error::io(path, e, "could not memory-map the safetensors file"))?;
            let st = safetensors::SafeTensors::deserialize(&mmap).map_err(|e| Error::WeightsFormat {
                path: path.clone(),
                expected: "safetensors file".into(),
                reason: format!("{e} (truncated or corrupt download? re-download it)"),
            })?;
            for (name, view) in st.tensors() {
                shapes.insert(name.clone(), view.shape().to_vec());
                owner.insert(name, i);
            }
            files.push((path.clone(), mmap));
        }
        Ok(Self { origin: origin.to_owned(), files, owner, shapes })
    }
}

impl TensorSource for SafetensorsFiles {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        let &i = self.owner.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            path: self.origin.clone(),
            hint: String::new(),
        })?;
        let (path, mmap) = &self.files[i];
        let format_err = |reason: String| Error::WeightsFormat {
            path: path.clone(),
            expected: "safetensors file".into(),
            reason,
        };
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| format_err(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| format_err(e.to_string()))?;
        candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| format_err(format!("tensor `{name}`: {e}")))
    }
}
