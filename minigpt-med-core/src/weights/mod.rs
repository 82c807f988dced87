//! Reading tensors from the files users actually have: safetensors (single or sharded,
//! memory-mapped) and PyTorch zip pickles (`.pth`, `pytorch_model-*.bin`, read lazily, one
//! tensor at a time, by a pickle reader that never executes code).

pub(crate) mod gguf;
mod pickle_scan;
mod pth;
mod safetensors;
mod synthetic;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor};

use crate::error::{Error, Result};

pub(crate) use pth::PthFile;
pub(crate) use safetensors::SafetensorsFiles;
pub(crate) use synthetic::synthetic_sources;

/// A named-tensor store backed by files; tensors are read only when asked for.
pub(crate) trait TensorSource: Send + Sync {
    /// The file or directory the tensors come from, for messages.
    fn origin(&self) -> &Path;
    /// Every tensor name with its shape, without reading any data.
    fn shapes(&self) -> &HashMap<String, Vec<usize>>;
    /// Reads one tensor (in its stored dtype) onto `device`.
    fn read(&self, name: &str, device: &Device) -> Result<Tensor>;

    /// The `[rows, cols]` matrix `name` in our kernels' layout, when the source holds it
    /// quantized (a converted model file); `None` for a dense tensor, to be read with
    /// [`Self::get`].
    fn quantized(&self, _name: &str, _shape: [usize; 2]) -> Result<Option<crate::quant::QuantMatrix>> {
        Ok(None)
    }

    /// The stored shape of `name`, or a typed error naming the file.
    fn shape_of(&self, name: &str, hint: &str) -> Result<&[usize]> {
        self.shapes().get(name).map(Vec::as_slice).ok_or_else(|| Error::MissingTensor {
            name: name.to_owned(),
            path: self.origin().to_owned(),
            hint: hint.to_owned(),
        })
    }

    /// Reads `name`, checks its shape and converts it to `dtype`.
    fn get(&self, name: &str, expected: &[usize], dtype: DType, device: &Device, hint: &str) -> Result<Tensor> {
        Ok(self.get_stored(name, expected, device, hint)?.to_dtype(dtype)?)
    }

    /// [`Self::get`] in the dtype the file stores (no conversion, so no second copy).
    fn get_stored(&self, name: &str, expected: &[usize], device: &Device, hint: &str) -> Result<Tensor> {
        let found = self.shape_of(name, hint)?;
        if found != expected {
            return Err(Error::ShapeMismatch {
                name: name.to_owned(),
                expected: expected.to_vec(),
                found: found.to_vec(),
                hint: format!("in {}. {hint}", self.origin().display()),
            });
        }
        self.read(name, device)
    }
}

/// How an HF LLaMA directory stores its weights.
pub(crate) enum LlamaLayout {
    /// `model.safetensors` or its shards.
    Safetensors(Vec<PathBuf>),
    /// One `pytorch_model.bin`.
    Pickle(PathBuf),
    /// `pytorch_model-*.bin` shards.
    PickleShards(Vec<PathBuf>),
}

impl LlamaLayout {
    /// Finds the layout of `dir` (safetensors first, as transformers does).
    pub(crate) fn find(dir: &Path) -> Result<Self> {
        let single_st = dir.join("model.safetensors");
        let index_st = dir.join("model.safetensors.index.json");
        let single_bin = dir.join("pytorch_model.bin");
        let index_bin = dir.join("pytorch_model.bin.index.json");
        if index_st.exists() {
            Ok(Self::Safetensors(shard_files(&index_st, dir)?))
        } else if single_st.exists() {
            Ok(Self::Safetensors(vec![single_st]))
        } else if index_bin.exists() {
            Ok(Self::PickleShards(shard_files(&index_bin, dir)?))
        } else if single_bin.exists() {
            Ok(Self::Pickle(single_bin))
        } else {
            Err(Error::WeightsFormat {
                path: dir.to_owned(),
                expected: "Hugging Face LLaMA directory".into(),
                reason: "no model.safetensors, model.safetensors.index.json, pytorch_model.bin or \
                         pytorch_model.bin.index.json in it; point --llama at the Llama-2-7b-chat-hf folder"
                    .into(),
            })
        }
    }

    /// The weight files.
    pub(crate) fn files(&self) -> Vec<PathBuf> {
        match self {
            Self::Safetensors(f) | Self::PickleShards(f) => f.clone(),
            Self::Pickle(f) => vec![f.clone()],
        }
    }

    /// Opens the weights.
    pub(crate) fn open(&self, dir: &Path) -> Result<Box<dyn TensorSource>> {
        Ok(match self {
            Self::Safetensors(files) => Box::new(SafetensorsFiles::open(dir, files)?),
            Self::PickleShards(files) => Box::new(MultiSource::pth_shards(dir, files)?),
            Self::Pickle(file) => Box::new(PthFile::open(file, None, "LLaMA weights (pytorch_model.bin)")?),
        })
    }
}

/// The distinct shard files named by a `*.index.json` weight map, in a stable order.
fn shard_files(index: &Path, dir: &Path) -> Result<Vec<PathBuf>> {
    #[derive(serde::Deserialize)]
    struct Index {
        weight_map: HashMap<String, String>,
    }
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e, "expected a shard index"))?;
    let idx: Index = serde_json::from_str(&text).map_err(|e| Error::WeightsFormat {
        path: index.to_owned(),
        expected: "shard index (weight_map)".into(),
        reason: e.to_string(),
    })?;
    let mut files: Vec<String> = idx.weight_map.into_values().collect();
    files.sort();
    files.dedup();
    for f in &files {
        if f.contains('/') || f.contains('\\') || f.contains("..") {
            return Err(Error::WeightsFormat {
                path: index.to_owned(),
                expected: "shard index".into(),
                reason: format!("shard name {f:?} points outside the model directory"),
            });
        }
    }
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Several pickle shards seen as one store.
struct MultiSource {
    origin: PathBuf,
    parts: Vec<PthFile>,
    owner: HashMap<String, usize>,
    shapes: HashMap<String, Vec<usize>>,
}

impl MultiSource {
    fn pth_shards(dir: &Path, files: &[PathBuf]) -> Result<Self> {
        let mut parts = Vec::new();
        let mut owner = HashMap::new();
        let mut shapes = HashMap::new();
        for (i, f) in files.iter().enumerate() {
            let part = PthFile::open(f, None, "LLaMA weight shard (pytorch_model-*.bin)")?;
            for (name, shape) in part.shapes() {
                owner.insert(name.clone(), i);
                shapes.insert(name.clone(), shape.clone());
            }
            parts.push(part);
        }
        Ok(Self { origin: dir.to_owned(), parts, owner, shapes })
    }
}

impl TensorSource for MultiSource {
    fn origin(&self) -> &Path {
        &self.origin
    }
    fn shapes(&self) -> &HashMap<String, Vec<usize>> {
        &self.shapes
    }
    fn read(&self, name: &str, device: &Device) -> Result<Tensor> {
        match self.owner.get(name) {
            Some(&i) => self.parts[i].read(name, device),
            None => Err(Error::MissingTensor {
                name: name.into(),
                path: self.origin.clone(),
                hint: "the shard index does not list it".into(),
            }),
        }
    }
}
