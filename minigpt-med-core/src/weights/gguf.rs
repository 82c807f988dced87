//! GGUF (version 3), the file format of llama.cpp: read over a memory map with every count,
//! length and offset checked against the file before anything is allocated from it, and
//! written tensor by tensor into a temporary file that is renamed when complete.
//!
//! Layout: `"GGUF"`, version `u32`, tensor count `u64`, metadata count `u64`; the metadata
//! (key string, type `u32`, value); the tensor infos (name, `n_dims: u32`, `dims: [u64]`
//! innermost first, GGML type `u32`, offset `u64` from the data section); padding to
//! `general.alignment` (32); the tensor data, each tensor at an aligned offset. Strings are a
//! `u64` length and UTF-8 bytes; everything is little-endian.

use std::collections::HashMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::quant::QuantFormat;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// The format version written (and the only one read: 2 and 3 differ from 1 in width only).
pub const VERSION: u32 = 3;
/// Data alignment when `general.alignment` is absent (and what we write).
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Dimensions a GGML tensor may have.
const MAX_DIMS: usize = 4;
/// Array nesting read (the format allows arrays of arrays; nobody writes deeper than 2).
const MAX_DEPTH: usize = 3;

/// A tensor element type of GGML (the numbers are GGML's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GgmlType {
    /// 32-bit float.
    F32,
    /// 16-bit float.
    F16,
    /// 4-bit blocks of 32 (llama.cpp Q4_0).
    Q4_0,
    /// 8-bit blocks of 32 (llama.cpp Q8_0).
    Q8_0,
    /// 4-bit k-quant super-blocks of 256 (llama.cpp Q4_K).
    Q4K,
}

impl GgmlType {
    /// GGML's number for the type.
    pub fn id(self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q4_0 => 2,
            Self::Q8_0 => 8,
            Self::Q4K => 12,
        }
    }

    /// The type of GGML number `id`, if this engine reads it.
    pub fn from_id(id: u32) -> Option<Self> {
        Some(match id {
            0 => Self::F32,
            1 => Self::F16,
            2 => Self::Q4_0,
            8 => Self::Q8_0,
            12 => Self::Q4K,
            _ => return None,
        })
    }

    /// GGML's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::Q4_0 => "Q4_0",
            Self::Q8_0 => "Q8_0",
            Self::Q4K => "Q4_K",
        }
    }

    /// The quantized format, for Q8_0, Q4_0 and Q4_K.
    pub fn quant(self) -> Option<QuantFormat> {
        match self {
            Self::Q8_0 => Some(QuantFormat::Q8_0),
            Self::Q4_0 => Some(QuantFormat::Q4_0),
            Self::Q4K => Some(QuantFormat::Q4K),
            Self::F32 | Self::F16 => None,
        }
    }

    /// The GGML type holding `format`.
    pub fn of_quant(format: QuantFormat) -> Self {
        match format {
            QuantFormat::Q8_0 => Self::Q8_0,
            QuantFormat::Q4_0 => Self::Q4_0,
            QuantFormat::Q4K => Self::Q4K,
        }
    }

    /// Bytes of a row of `cols` values, `None` if `cols` is not a whole number of blocks.
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        match self {
            Self::F32 => cols.checked_mul(4),
            Self::F16 => cols.checked_mul(2),
            q => crate::quant::ggml_row_bytes(q.quant()?, cols),
        }
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A metadata value.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaValue {
    /// `uint8`.
    U8(u8),
    /// `int8`.
    I8(i8),
    /// `uint16`.
    U16(u16),
    /// `int16`.
    I16(i16),
    /// `uint32`.
    U32(u32),
    /// `int32`.
    I32(i32),
    /// `float32`.
    F32(f32),
    /// `bool`.
    Bool(bool),
    /// UTF-8 string.
    Str(String),
    /// An array of values of one type.
    Array(Vec<MetaValue>),
    /// `uint64`.
    U64(u64),
    /// `int64`.
    I64(i64),
    /// `float64`.
    F64(f64),
}

impl MetaValue {
    fn type_id(&self) -> u32 {
        match self {
            Self::U8(_) => 0,
            Self::I8(_) => 1,
            Self::U16(_) => 2,
            Self::I16(_) => 3,
            Self::U32(_) => 4,
            Self::I32(_) => 5,
            Self::F32(_) => 6,
            Self::Bool(_) => 7,
            Self::Str(_) => 8,
            Self::Array(_) => 9,
            Self::U64(_) => 10,
            Self::I64(_) => 11,
            Self::F64(_) => 12,
        }
    }

    /// The value as an unsigned integer, for any integer type that holds one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a float, for the float types.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The string, for a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::Str(s) => Some(s),
            _ => None,
        }
    }

    /// A short rendering for listings: numbers and strings as they are (long strings cut),
    /// arrays by their length and first values.
    pub fn summary(&self) -> String {
        match self {
            Self::Str(s) if s.chars().count() > 80 => {
                format!("{:?}… ({} bytes)", s.chars().take(60).collect::<String>(), s.len())
            }
            Self::Str(s) => format!("{s:?}"),
            Self::Array(v) => {
                let head: Vec<String> = v.iter().take(4).map(MetaValue::summary).collect();
                format!("[{}{}] ({} values)", head.join(", "), if v.len() > 4 { ", …" } else { "" }, v.len())
            }
            Self::Bool(b) => b.to_string(),
            Self::F32(v) => v.to_string(),
            Self::F64(v) => v.to_string(),
            other => other.as_u64().map_or_else(|| format!("{other:?}"), |v| v.to_string()),
        }
    }
}

/// Where a tensor is and what it holds.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// Element type.
    pub dtype: GgmlType,
    /// Shape, outermost first (`[rows, cols]` for a matrix: GGML's `ne` reversed).
    pub shape: Vec<usize>,
    /// Byte offset of the data from the start of the file.
    pub offset: usize,
    /// Bytes of data.
    pub bytes: usize,
}

/// A GGUF file, memory-mapped: its metadata and tensor index are read at open, tensor data
/// only when asked for.
pub struct GgufFile {
    path: PathBuf,
    mmap: memmap2::Mmap,
    version: u32,
    metadata: Vec<(String, MetaValue)>,
    index: HashMap<String, usize>,
    tensors: Vec<(String, TensorInfo)>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GgufFile({}, {} tensors)", self.path.display(), self.tensors.len())
    }
}

/// Reads little-endian values from a byte slice, each length checked against what is left.
struct Cursor<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: u64, what: &str) -> std::result::Result<&'a [u8], String> {
        let left = (self.data.len() - self.pos) as u64;
        if n > left {
            return Err(format!("{what} needs {n} bytes at offset {} but the file ends {left} bytes later", self.pos));
        }
        let s = &self.data[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }
    fn array<const N: usize>(&mut self, what: &str) -> std::result::Result<[u8; N], String> {
        Ok(self.take(N as u64, what)?.try_into().expect("took N bytes"))
    }
    fn u32(&mut self, what: &str) -> std::result::Result<u32, String> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> std::result::Result<u64, String> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> std::result::Result<String, String> {
        let n = self.u64(what)?;
        let bytes = self.take(n, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    fn left(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn value(&mut self, ty: u32, depth: usize, what: &str) -> std::result::Result<MetaValue, String> {
        Ok(match ty {
            0 => MetaValue::U8(self.array::<1>(what)?[0]),
            1 => MetaValue::I8(self.array::<1>(what)?[0] as i8),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(what)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(what)?)),
            4 => MetaValue::U32(self.u32(what)?),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(what)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => MetaValue::Bool(false),
                1 => MetaValue::Bool(true),
                b => return Err(format!("{what}: bool value {b}")),
            },
            8 => MetaValue::Str(self.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested over {MAX_DEPTH} deep"));
                }
                let elem = self.u32(what)?;
                let n = self.u64(what)?;
                // Every element takes at least one byte (a string or an array at least 8):
                // a count the rest of the file cannot hold is refused before allocating.
                let min = match elem {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8..=12 => 8,
                    other => return Err(format!("{what}: unknown array element type {other}")),
                };
                if n.checked_mul(min).is_none_or(|b| b > self.left()) {
                    return Err(format!("{what}: an array of {n} values does not fit in the file"));
                }
                let mut v = Vec::with_capacity(n as usize);
                for _ in 0..n {
                    v.push(self.value(elem, depth + 1, what)?);
                }
                MetaValue::Array(v)
            }
            10 => MetaValue::U64(self.u64(what)?),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(what)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(format!("{what}: unknown value type {other}")),
        })
    }
}

impl GgufFile {
    /// Opens and memory-maps `path`, reading its metadata and tensor index. Every count,
    /// length and tensor extent is checked against the file's size first: a truncated or
    /// hostile file is a typed error, never a large allocation.
    pub fn open(path: &Path) -> Result<Self> {
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, e, "expected a GGUF model file"))?;
        let meta = file.metadata().map_err(|e| Error::io(path, e, "expected a GGUF model file"))?;
        if !meta.is_file() {
            return Err(Self::format_error(path, "it is not a regular file".into()));
        }
        // SAFETY: a read-only mapping; like every mmap-based loader (llama.cpp's too) we rely
        // on the file not being truncated by another process while it is mapped.
        let mmap = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| Error::io(path, e, "could not memory-map it"))?;
        Self::parse(path, mmap)
    }

    fn format_error(path: &Path, reason: String) -> Error {
        Error::WeightsFormat { path: path.to_owned(), expected: "GGUF model file".into(), reason }
    }

    fn parse(path: &Path, mmap: memmap2::Mmap) -> Result<Self> {
        let err = |reason: String| Self::format_error(path, reason);
        let mut c = Cursor { data: &mmap, pos: 0 };
        let magic = c.take(4, "the magic").map_err(|_| err("shorter than a GGUF header (truncated?)".into()))?;
        if magic != MAGIC {
            return Err(err(format!(
                "it starts with {magic:02x?}, not \"GGUF\"; convert the original files with `minigpt-med convert`"
            )));
        }
        let version = c.u32("the version").map_err(err)?;
        if !(2..=3).contains(&version) {
            return Err(err(format!("GGUF version {version}; versions 2 and 3 are read")));
        }
        let n_tensors = c.u64("the tensor count").map_err(err)?;
        let n_kv = c.u64("the metadata count").map_err(err)?;
        // A metadata entry takes at least 12 bytes and a tensor info at least 24.
        if n_kv.checked_mul(12).is_none_or(|b| b > c.left()) || n_tensors.checked_mul(24).is_none_or(|b| b > c.left()) {
            return Err(err(format!("{n_tensors} tensors and {n_kv} metadata entries cannot fit in the file")));
        }
        let mut metadata = Vec::with_capacity(n_kv as usize);
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key {i}")).map_err(err)?;
            let ty = c.u32(&key).map_err(err)?;
            let value = c.value(ty, 0, &key).map_err(err)?;
            if metadata.iter().any(|(k, _)| *k == key) {
                return Err(err(format!("metadata key {key} appears twice")));
            }
            metadata.push((key, value));
        }
        let alignment = match metadata.iter().find(|(k, _)| k == "general.alignment") {
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() && a <= 1 << 16 => a,
                _ => return Err(err(format!("general.alignment {} is not a power of two", v.summary()))),
            },
            None => DEFAULT_ALIGNMENT,
        };
        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor name {i}")).map_err(err)?;
            let n_dims = c.u32(&name).map_err(err)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(err(format!("tensor {name} has {n_dims} dimensions (1 to {MAX_DIMS})")));
            }
            let mut ne = Vec::with_capacity(n_dims);
            for _ in 0..n_dims {
                ne.push(c.u64(&name).map_err(err)?);
            }
            let ty = c.u32(&name).map_err(err)?;
            let offset = c.u64(&name).map_err(err)?;
            infos.push((name, ne, ty, offset));
        }
        let data_start = (c.pos as u64).next_multiple_of(alignment);
        let file_len = mmap.len() as u64;
        let mut tensors = Vec::with_capacity(infos.len());
        let mut index = HashMap::with_capacity(infos.len());
        for (name, ne, ty, offset) in infos {
            let dtype = GgmlType::from_id(ty).ok_or_else(|| {
                err(format!("tensor {name} has GGML type {ty}; this engine reads F32, F16, Q8_0, Q4_0 and Q4_K"))
            })?;
            let elems = ne.iter().try_fold(1u64, |n, &d| n.checked_mul(d));
            let too_big = || err(format!("tensor {name} of shape {ne:?} is larger than the file"));
            let elems = elems.filter(|&n| n <= file_len).ok_or_else(too_big)?;
            let cols = ne[0] as usize;
            let row = dtype
                .row_bytes(cols)
                .ok_or_else(|| err(format!("tensor {name}: {cols} columns are not whole {dtype} blocks")))?;
            let bytes = if cols == 0 { 0 } else { (elems / ne[0]) as usize * row };
            if offset % alignment != 0 {
                return Err(err(format!("tensor {name} starts at offset {offset}, not a multiple of {alignment}")));
            }
            let start =
                data_start.checked_add(offset).filter(|s| s.checked_add(bytes as u64).is_some_and(|e| e <= file_len));
            let start = start.ok_or_else(|| {
                err(format!(
                    "tensor {name} ({bytes} bytes at data offset {offset}) extends past the end of the \
                     {file_len}-byte file (truncated download?)"
                ))
            })?;
            if index.insert(name.clone(), tensors.len()).is_some() {
                return Err(err(format!("tensor {name} appears twice")));
            }
            let shape = ne.iter().rev().map(|&d| d as usize).collect();
            tensors.push((name, TensorInfo { dtype, shape, offset: start as usize, bytes }));
        }
        Ok(Self { path: path.to_owned(), mmap, version, metadata, index, tensors })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size in bytes.
    pub fn len(&self) -> usize {
        self.mmap.len()
    }

    /// Whether the file is empty (never true of a file that opened).
    pub fn is_empty(&self) -> bool {
        self.mmap.is_empty()
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// Every metadata entry, in file order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The metadata value of `key`.
    pub fn get(&self, key: &str) -> Option<&MetaValue> {
        self.metadata.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Every tensor, in file order.
    pub fn tensors(&self) -> &[(String, TensorInfo)] {
        &self.tensors
    }

    /// The tensor called `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.index.get(name).map(|&i| &self.tensors[i].1)
    }

    /// The bytes of a tensor (inside the mapping; checked at open).
    pub(crate) fn data(&self, info: &TensorInfo) -> &[u8] {
        &self.mmap[info.offset..info.offset + info.bytes]
    }

    /// Drops the pages of `data` (just copied out) from this process's resident set.
    pub(crate) fn release(&self, data: &[u8]) {
        super::safetensors::release(&self.mmap, data);
    }
}

/// A tensor's place in a file being written.
struct Planned {
    name: String,
    ne: Vec<u64>,
    dtype: Option<GgmlType>,
    offset: u64,
}

/// Writes a GGUF file: metadata and the tensors' names and shapes first ([`Self::plan`]), then
/// each tensor's data in that order ([`Self::write_tensor`]), then [`Self::finish`], which
/// fills in the header and renames the temporary file to its name. Only one tensor is ever
/// held in memory; an error or a drop before `finish` removes the temporary file.
pub struct GgufWriter {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<std::io::BufWriter<std::fs::File>>,
    metadata: Vec<(String, MetaValue)>,
    tensors: Vec<Planned>,
    next: usize,
    data_start: u64,
    written: u64,
}

impl GgufWriter {
    /// Starts writing `path` (through a temporary file beside it).
    pub fn create(path: &Path) -> Result<Self> {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "model.gguf".into());
        let tmp = path.with_file_name(format!(".{name}.tmp-{}", std::process::id()));
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e, "could not create the output file"))?;
        Ok(Self {
            path: path.to_owned(),
            tmp,
            file: Some(std::io::BufWriter::with_capacity(1 << 20, file)),
            metadata: Vec::new(),
            tensors: Vec::new(),
            next: 0,
            data_start: 0,
            written: 0,
        })
    }

    /// Adds a metadata entry (before [`Self::plan`]).
    pub fn meta(&mut self, key: &str, value: MetaValue) {
        self.metadata.push((key.to_owned(), value));
    }

    /// Declares the tensors, in the order their data will be written: names and shapes
    /// (outermost first). Reserves the header; the element types are decided per tensor.
    pub fn plan(&mut self, tensors: &[(String, Vec<usize>)]) -> Result<()> {
        self.tensors = tensors
            .iter()
            .map(|(n, s)| Planned {
                name: n.clone(),
                ne: s.iter().rev().map(|&d| d as u64).collect(),
                dtype: None,
                offset: 0,
            })
            .collect();
        let header = self.header()?;
        self.data_start = (header.len() as u64).next_multiple_of(DEFAULT_ALIGNMENT);
        let f = self.file.as_mut().expect("open until finish");
        f.write_all(&vec![0u8; self.data_start as usize]).map_err(|e| Error::io(&self.tmp, e, "writing the output"))?;
        Ok(())
    }

    /// Writes the next planned tensor, `name`, as `dtype` from `data` (GGML layout).
    pub fn write_tensor(&mut self, name: &str, dtype: GgmlType, data: &[u8]) -> Result<()> {
        let t = self.tensors.get_mut(self.next).filter(|t| t.name == name).ok_or_else(|| {
            Error::InvalidOption(format!("tensor {name} was not planned next (internal conversion error)"))
        })?;
        let cols = t.ne[0] as usize;
        let rows: u64 = t.ne[1..].iter().product();
        let expected = dtype.row_bytes(cols).map(|r| r as u64 * rows);
        if expected != Some(data.len() as u64) {
            return Err(Error::InvalidOption(format!(
                "tensor {name}: {} bytes of {dtype} for shape {:?} (internal conversion error)",
                data.len(),
                t.ne
            )));
        }
        let pad = self.written.next_multiple_of(DEFAULT_ALIGNMENT) - self.written;
        t.dtype = Some(dtype);
        t.offset = self.written + pad;
        let f = self.file.as_mut().expect("open until finish");
        let io = |e| Error::io(&self.tmp, e, "writing the output");
        f.write_all(&[0u8; DEFAULT_ALIGNMENT as usize][..pad as usize]).map_err(io)?;
        f.write_all(data).map_err(io)?;
        self.written += pad + data.len() as u64;
        self.next += 1;
        Ok(())
    }

    /// Writes the header, syncs and renames the file to its name. Returns its size.
    pub fn finish(mut self) -> Result<u64> {
        if self.next != self.tensors.len() {
            return Err(Error::InvalidOption(format!(
                "{} of {} tensors written (internal conversion error)",
                self.next,
                self.tensors.len()
            )));
        }
        let header = self.header()?;
        let file = self.file.take().expect("open until finish");
        let done = (|| -> std::io::Result<()> {
            let mut f = file.into_inner().map_err(|e| e.into_error())?;
            f.seek(SeekFrom::Start(0))?;
            f.write_all(&header)?;
            f.sync_all()
        })()
        .map_err(|e| Error::io(&self.tmp, e, "writing the output"))
        .and_then(|()| {
            std::fs::rename(&self.tmp, &self.path).map_err(|e| Error::io(&self.path, e, "could not rename the output"))
        });
        if done.is_err() {
            let _ = std::fs::remove_file(&self.tmp);
        }
        done?;
        Ok(self.data_start + self.written)
    }

    fn header(&self) -> Result<Vec<u8>> {
        let mut h = Vec::new();
        h.extend_from_slice(&MAGIC);
        h.extend_from_slice(&VERSION.to_le_bytes());
        h.extend_from_slice(&(self.tensors.len() as u64).to_le_bytes());
        h.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (k, v) in &self.metadata {
            put_str(&mut h, k);
            h.extend_from_slice(&v.type_id().to_le_bytes());
            put_value(&mut h, v)?;
        }
        for t in &self.tensors {
            put_str(&mut h, &t.name);
            h.extend_from_slice(&(t.ne.len() as u32).to_le_bytes());
            t.ne.iter().for_each(|d| h.extend_from_slice(&d.to_le_bytes()));
            h.extend_from_slice(&t.dtype.map_or(0, GgmlType::id).to_le_bytes());
            h.extend_from_slice(&t.offset.to_le_bytes());
        }
        Ok(h)
    }
}

impl Drop for GgufWriter {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

fn put_str(h: &mut Vec<u8>, s: &str) {
    h.extend_from_slice(&(s.len() as u64).to_le_bytes());
    h.extend_from_slice(s.as_bytes());
}

fn put_value(h: &mut Vec<u8>, v: &MetaValue) -> Result<()> {
    match v {
        MetaValue::U8(x) => h.push(*x),
        MetaValue::I8(x) => h.push(*x as u8),
        MetaValue::U16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I16(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::U32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F32(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::Bool(x) => h.push(u8::from(*x)),
        MetaValue::Str(s) => put_str(h, s),
        MetaValue::Array(items) => {
            let ty = items.first().map_or(4, MetaValue::type_id);
            if items.iter().any(|i| i.type_id() != ty) {
                return Err(Error::InvalidOption("a GGUF array holds values of one type".into()));
            }
            h.extend_from_slice(&ty.to_le_bytes());
            h.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for i in items {
                put_value(h, i)?;
            }
        }
        MetaValue::U64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::I64(x) => h.extend_from_slice(&x.to_le_bytes()),
        MetaValue::F64(x) => h.extend_from_slice(&x.to_le_bytes()),
    }
    Ok(())
}
