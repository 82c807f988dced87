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
            let file =
                std::fs::File::open(path).map_err(|e| Error::io(path, e, "expected a safetensors weights file"))?;
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
        let format_err =
            |reason: String| Error::WeightsFormat { path: path.clone(), expected: "safetensors file".into(), reason };
        let st = safetensors::SafeTensors::deserialize(mmap).map_err(|e| format_err(e.to_string()))?;
        let view = st.tensor(name).map_err(|e| format_err(e.to_string()))?;
        let tensor = candle_core::safetensors::Load::load(&view, device)
            .map_err(|e| format_err(format!("tensor `{name}`: {e}")))?;
        release(mmap, view.data());
        Ok(tensor)
    }
}

/// Drops the pages of `data` (a range of `mmap` that has just been copied out) from this
/// process's mapping. Otherwise every file page read during a load stays in our resident set
/// next to the weights built from it: a 7B fp16 checkpoint would add 13 GB to the peak RSS. The
/// pages stay in the page cache; touching them again faults them back in, with the same bytes.
pub(super) fn release(mmap: &memmap2::Mmap, data: &[u8]) {
    // Whole 64 KiB blocks inside the tensor only: aligned for any page size up to 64 KiB, and no
    // page of a neighbouring tensor is dropped.
    const ALIGN: usize = 1 << 16;
    let start = (data.as_ptr() as usize - mmap.as_ptr() as usize).next_multiple_of(ALIGN);
    let end = (data.as_ptr() as usize - mmap.as_ptr() as usize + data.len()) / ALIGN * ALIGN;
    #[cfg(unix)]
    if end > start {
        // SAFETY: the mapping is a read-only file mapping and no reference into this range is
        // in use (the tensor was copied out above); MADV_DONTNEED on it only unmaps the pages,
        // and any later read refills them from the file, unchanged. A failure only leaves the
        // pages resident.
        let _ = unsafe { mmap.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, start, end - start) };
    }
    #[cfg(not(unix))]
    let _ = (start, end);
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    /// Resident bytes of the mapping that starts at `addr`, from /proc/self/smaps.
    fn resident(addr: usize) -> usize {
        let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap();
        let mut lines = smaps.lines();
        while let Some(line) = lines.next() {
            let range = line.split_whitespace().next().unwrap_or("");
            let Some((lo, hi)) = range.split_once('-') else { continue };
            let (Ok(lo), Ok(hi)) = (usize::from_str_radix(lo, 16), usize::from_str_radix(hi, 16)) else { continue };
            if (lo..hi).contains(&addr) {
                let rss = lines.find(|l| l.starts_with("Rss:")).unwrap();
                return rss.split_whitespace().nth(1).unwrap().parse::<usize>().unwrap() * 1024;
            }
        }
        panic!("no mapping at {addr:#x}")
    }

    /// Reading every tensor leaves (almost) none of the file resident in our mapping.
    #[test]
    fn read_tensors_leave_the_mapping() {
        let dir = std::env::temp_dir().join(format!("mgm-st-release-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("model.safetensors");
        let tensors: HashMap<String, Tensor> =
            (0..4).map(|i| (format!("w{i}"), Tensor::full(i as f32, (1024, 1024), &Device::Cpu).unwrap())).collect();
        candle_core::safetensors::save(&tensors, &path).unwrap();
        let src = SafetensorsFiles::open(&dir, std::slice::from_ref(&path)).unwrap();
        let base = src.files[0].1.as_ptr() as usize;
        for i in 0..4 {
            let t = src.read(&format!("w{i}"), &Device::Cpu).unwrap();
            assert_eq!(t.flatten_all().unwrap().to_vec1::<f32>().unwrap()[4321], i as f32);
        }
        let left = resident(base);
        std::fs::remove_dir_all(&dir).unwrap();
        // 16 MiB were read; at most the header and the partial 64 KiB blocks around each
        // tensor may stay.
        assert!(left <= 4 * 2 * 65536 + 65536, "{left} bytes of the file still resident");
        // Reading again faults the pages back in with the same bytes.
        let again = src.read("w3", &Device::Cpu).unwrap();
        assert_eq!(again.flatten_all().unwrap().to_vec1::<f32>().unwrap()[1_000_000], 3.0);
    }
}
