//! A key/value cache allocated once per conversation and written in place, so a decode step
//! never re-copies the history. It can be rolled back, which keeps a chat consistent when a
//! turn fails or is cancelled.

use std::sync::Arc;

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::attention::{attention, row, Heads, Kv, Mask, Pieces, Rows, Shape};
use crate::cpu::Isa;
use crate::error::{Error, Result};

/// How a KV cache holds its keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDType {
    /// 32-bit floats: the reference's numbers.
    #[default]
    F32,
    /// 16-bit floats: half the cache's memory and half the bytes each decode step's attention
    /// reads (which grows with the conversation). Keys and values are rounded to f16 once, when
    /// written; the arithmetic stays f32. On the fixtures the greedy tokens are unchanged
    /// (`tests/kv_dtype.rs` states the logits' error).
    F16,
}

impl KvDType {
    fn dtype(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
        }
    }
}

impl std::str::FromStr for KvDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(Self::F32),
            "f16" | "float16" | "half" => Ok(Self::F16),
            other => Err(Error::InvalidOption(format!("KV cache dtype {other:?}: use f32 or f16"))),
        }
    }
}

impl std::fmt::Display for KvDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
        })
    }
}

/// Per-layer keys and values `[kv_heads, capacity, head_dim]` (in the cache's [`KvDType`]) and
/// the number of valid positions.
///
/// A cache forked from a study's prefix ([`Self::fork`]) shares that prefix's buffers instead
/// of copying them: its own buffers hold only the positions after it, and a batched decode
/// step reads the shared rows once for all the sequences forked from one prefix.
#[derive(Debug)]
pub struct KvCache {
    /// This cache's own rows: positions `base_len..` of each layer, `[kv_heads, own_capacity,
    /// head_dim]`.
    layers: Vec<(Tensor, Tensor)>,
    /// The prefix this cache was forked from (never written through this cache): positions
    /// `0..base_len` are its first `base_len` positions.
    base: Option<Arc<KvCache>>,
    base_len: usize,
    len: usize,
    own_capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: KvDType,
    device: Device,
}

/// A layer's rows of one cache as the CPU kernels read them: the shared prefix's and its own,
/// each with its buffers' capacity and the rows used.
struct CpuView<'a> {
    base: Option<(Rows<'a>, Rows<'a>, usize, usize)>,
    own: (Rows<'a>, Rows<'a>, usize, usize),
}

impl CpuView<'_> {
    /// Key and value rows of key/value head `g` in one piece of `(keys, values, capacity, rows)`.
    fn head<'a>(piece: &(Rows<'a>, Rows<'a>, usize, usize), g: usize, hd: usize) -> Kv<'a> {
        let (k, v, cap, rows) = *piece;
        let at = g * cap..g * cap + rows;
        (k.span(at.clone(), hd), v.span(at, hd))
    }
}

impl KvCache {
    pub(crate) fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        dtype: KvDType,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..layers)
            .map(|_| {
                let z = || Tensor::zeros((kv_heads, capacity, head_dim), dtype.dtype(), device);
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            base: None,
            base_len: 0,
            len: 0,
            own_capacity: capacity,
            kv_heads,
            head_dim,
            dtype,
            device: device.clone(),
        })
    }

    /// How keys and values are held.
    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// Positions currently held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no position is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions that fit without growing.
    pub fn capacity(&self) -> usize {
        self.base_len + self.own_capacity
    }

    /// Positions read from a shared prefix rather than held by this cache.
    pub fn shared_len(&self) -> usize {
        self.base_len
    }

    /// Bytes of this cache's own buffers (a shared prefix not counted).
    pub fn own_bytes(&self) -> usize {
        self.layers.iter().map(|(k, v)| (k.elem_count() + v.elem_count()) * k.dtype().size_in_bytes()).sum()
    }

    /// A cache holding this one's positions with room for `capacity` (at least `len`): a
    /// study's prefix forked for one question. The held positions are shared, not copied (the
    /// fork's buffers hold only what comes after them), and this cache is left as it is.
    pub(crate) fn fork(self: &Arc<Self>, capacity: usize) -> Result<Self> {
        let (base, base_len) = match &self.base {
            Some(base) => (Some(Arc::clone(base)), self.base_len),
            None if self.len > 0 => (Some(Arc::clone(self)), self.len),
            None => (None, 0),
        };
        let copied = self.len - base_len;
        let own_capacity = capacity.max(self.len) - base_len;
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| {
                let copy = |t: &Tensor| -> Result<Tensor> {
                    let out = Tensor::zeros((self.kv_heads, own_capacity, self.head_dim), t.dtype(), &self.device)?;
                    if copied > 0 {
                        out.slice_set(&t.narrow(1, 0, copied)?.contiguous()?, 1, 0)?;
                    }
                    Ok(out)
                };
                Ok((copy(k)?, copy(v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            base,
            base_len,
            len: self.len,
            own_capacity,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }

    /// Forgets positions past `len` (used to undo a failed or cancelled turn).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
        if self.len < self.base_len {
            // Into the shared prefix: its first `len` positions stay shared, the own buffers
            // now start after them.
            self.base_len = self.len;
            if self.base_len == 0 {
                self.base = None;
            }
        }
    }

    /// Positions held in this cache's own buffers.
    fn own_len(&self) -> usize {
        self.len - self.base_len
    }

    /// Makes room for `extra` more positions, growing the own buffers (one copy) if needed.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.own_len() + extra;
        if needed <= self.own_capacity {
            return Ok(());
        }
        let new_cap = needed.max(self.own_capacity * 2);
        let held = self.own_len();
        for (k, v) in &mut self.layers {
            for t in [k, v] {
                let grown = Tensor::zeros((self.kv_heads, new_cap, self.head_dim), t.dtype(), &self.device)?;
                if held > 0 {
                    grown.slice_set(&t.narrow(1, 0, held)?.contiguous()?, 1, 0)?;
                }
                *t = grown;
            }
        }
        self.own_capacity = new_cap;
        Ok(())
    }

    /// Writes `k, v: [kv_heads, n, head_dim]` (f32) of `layer` at the current end and returns
    /// everything held for that layer, `[kv_heads, len + n, head_dim]` f32 (views of an
    /// unforked f32 cache; otherwise copies).
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.write(layer, k, v)?;
        let n = k.dim(1)?;
        let (kc, vc) = &self.layers[layer];
        let own = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, 0, self.own_len() + n)?) };
        let (k, v) = match &self.base {
            None => (own(kc)?, own(vc)?),
            Some(base) => {
                let (bk, bv) = &base.layers[layer];
                let prefix = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, 0, self.base_len)?) };
                (Tensor::cat(&[prefix(bk)?, own(kc)?], 1)?, Tensor::cat(&[prefix(bv)?, own(vc)?], 1)?)
            }
        };
        Ok((k.to_dtype(DType::F32)?, v.to_dtype(DType::F32)?))
    }

    /// Writes `k, v: [kv_heads, n, head_dim]` (f32) of `layer` at the current end, rounded to
    /// the cache's dtype.
    pub(crate) fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let dtype = self.dtype.dtype();
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(dtype)?, 1, self.own_len())?;
        vc.slice_set(&v.to_dtype(dtype)?, 1, self.own_len())?;
        Ok(())
    }

    /// Writes one position of `layer` at the current end: `k, v: [kv_heads * head_dim]` (f32,
    /// heads one after the other, as a decode step's products leave a row), rounded to the
    /// cache's dtype as [`Self::write`] rounds them (`f16::from_f32`, candle's conversion). One
    /// pass into the buffers, where `write` would make a tensor of each row, convert it and copy
    /// it in: a batched step does this for every sequence and layer.
    pub(crate) fn write_row(&mut self, layer: usize, k: &[f32], v: &[f32]) -> Result<()> {
        let width = self.kv_heads * self.head_dim;
        if k.len() != width || v.len() != width {
            return Err(Error::InvalidOption(format!(
                "a key/value row of {} and {} values for {} heads of {}",
                k.len(),
                v.len(),
                self.kv_heads,
                self.head_dim
            )));
        }
        let (kc, vc) = &self.layers[layer];
        let at = (self.own_len(), self.own_capacity, self.head_dim);
        kc.inplace_op1(&PutRow { row: k, at })?;
        vc.inplace_op1(&PutRow { row: v, at })?;
        Ok(())
    }

    /// Attention of one new position (just appended to `layer`, not yet advanced) over the
    /// whole cache: `q: [heads, 1, head_dim]` -> `[1, heads * head_dim]`. It reads each cached
    /// key and value once, straight from the buffers, where the general path would copy the
    /// values and run three small GEMMs per layer. `None` off the CPU.
    pub(crate) fn attend_one(&self, layer: usize, q: &Tensor, heads: usize) -> Result<Option<Tensor>> {
        let q = q.flatten_all()?.to_vec1::<f32>()?;
        let out = Self::attend_rows(&[self], layer, &q, heads)?;
        out.map(|out| Ok(Tensor::from_vec(out, (1, heads * self.head_dim), &self.device)?)).transpose()
    }

    /// [`Self::attend_one`] for a batched decode step: row `b` of `q: [B, heads * head_dim]`
    /// attends over `caches[b]` (all of one model), in one parallel pass over every key/value
    /// head of every group of sequences forked from one prefix (the prefix's rows read once for
    /// the group) and of every other sequence. Returns `[B, heads * head_dim]`; `None` off the
    /// CPU.
    pub(crate) fn attend_rows(caches: &[&KvCache], layer: usize, q: &[f32], heads: usize) -> Result<Option<Vec<f32>>> {
        let Some(first) = caches.first() else { return Ok(Some(Vec::new())) };
        let (hd, kv_heads) = (first.head_dim, first.kv_heads);
        if q.len() != caches.len() * heads * hd
            || kv_heads == 0
            || !heads.is_multiple_of(kv_heads)
            || caches.iter().any(|c| c.head_dim != hd || c.kv_heads != kv_heads)
        {
            return Err(Error::InvalidOption(format!(
                "{} query values for {} sequences of {heads} heads of {hd}",
                q.len(),
                caches.len()
            )));
        }
        let guards: Vec<_> = caches
            .iter()
            .map(|c| {
                let base = c.base.as_ref().map(|b| {
                    let (k, v) = &b.layers[layer];
                    (k.storage_and_layout(), v.storage_and_layout())
                });
                let (k, v) = &c.layers[layer];
                (base, (k.storage_and_layout(), v.storage_and_layout()))
            })
            .collect();
        let mut views = Vec::with_capacity(caches.len());
        for (c, (base, own)) in caches.iter().zip(&guards) {
            let Some((k, v)) = cpu_rows(c.dtype, (&own.0 .0, own.0 .1), (&own.1 .0, own.1 .1))? else {
                return Ok(None);
            };
            let own = (k, v, c.own_capacity, c.own_len() + 1);
            let base = match (base, &c.base) {
                (Some(b), Some(held)) => {
                    let Some((k, v)) = cpu_rows(c.dtype, (&b.0 .0, b.0 .1), (&b.1 .0, b.1 .1))? else {
                        return Ok(None);
                    };
                    Some((k, v, held.own_capacity, c.base_len))
                }
                _ => None,
            };
            views.push(CpuView { base, own });
        }
        // Sequences forked from one prefix (at the same length) form a group: (the prefix's
        // address and length, the members).
        type Group = (Option<(usize, usize)>, Vec<usize>);
        let mut groups: Vec<Group> = Vec::new();
        for (b, c) in caches.iter().enumerate() {
            let key = c.base.as_ref().map(|base| (Arc::as_ptr(base) as usize, c.base_len));
            match groups.iter_mut().find(|(k, _)| key.is_some() && *k == key) {
                Some((_, members)) => members.push(b),
                None => groups.push((key, vec![b])),
            }
        }
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let kernels = Isa::detect();
        let tasks: Vec<(usize, usize)> = (0..groups.len()).flat_map(|i| (0..kv_heads).map(move |g| (i, g))).collect();
        let done: Vec<Vec<f32>> = tasks
            .par_iter()
            .map_init(Vec::new, |scores, &(i, g)| {
                let members = &groups[i].1;
                let shared = match &views[members[0]].base {
                    Some(piece) => CpuView::head(piece, g, hd),
                    None => (views[members[0]].own.0.empty(), views[members[0]].own.1.empty()),
                };
                let mut queries = Vec::with_capacity(members.len() * group * hd);
                let mut own = Vec::with_capacity(members.len() * group);
                for &b in members {
                    for h in g * group..(g + 1) * group {
                        queries.extend_from_slice(&q[(b * heads + h) * hd..][..hd]);
                        own.push(CpuView::head(&views[b].own, g, hd));
                    }
                }
                let mut out = vec![0f32; queries.len()];
                row::attend_group(kernels, &queries, shared, &own, scale, scores, &mut out);
                out
            })
            .collect();
        let mut out = vec![0f32; q.len()];
        for (&(i, g), done) in tasks.iter().zip(&done) {
            let rows = groups[i].1.iter().flat_map(|&b| (g * group..(g + 1) * group).map(move |h| b * heads + h));
            for (r, done) in rows.zip(done.chunks_exact(hd)) {
                out[r * hd..][..hd].copy_from_slice(done);
            }
        }
        Ok(Some(out))
    }

    /// Causal attention of `n` new positions (just written to `layer`, not yet advanced) over
    /// the whole cache, fused on the CPU (`crate::attention`): `q: [heads, n, head_dim]` ->
    /// `[n, heads * head_dim]`. f32 rows are read in place (a shared prefix's too); an f16
    /// cache's held positions are widened once per call. `None` off the CPU.
    pub(crate) fn attend_causal(&self, layer: usize, q: &[f32], n: usize, heads: usize) -> Result<Option<Vec<f32>>> {
        let (hd, kv_heads, held) = (self.head_dim, self.kv_heads, self.len + n);
        if q.len() != heads * n * hd || kv_heads == 0 || !heads.is_multiple_of(kv_heads) || held > self.capacity() {
            return Err(Error::InvalidOption(format!(
                "{} query values for {n} positions of {heads} heads of {hd} over {kv_heads} key/value heads",
                q.len()
            )));
        }
        let (k, v) = &self.layers[layer];
        let own_guard = (k.storage_and_layout(), v.storage_and_layout());
        let base_guard = self.base.as_ref().map(|b| {
            let (k, v) = &b.layers[layer];
            ((k.storage_and_layout(), v.storage_and_layout()), b.own_capacity)
        });
        let Some(own) = cpu_rows(self.dtype, (&own_guard.0 .0, own_guard.0 .1), (&own_guard.1 .0, own_guard.1 .1))?
        else {
            return Ok(None);
        };
        let base = match &base_guard {
            Some(((k, v), cap)) => match cpu_rows(self.dtype, (&k.0, k.1), (&v.0, v.1))? {
                Some(kv) => Some((kv, *cap)),
                None => return Ok(None),
            },
            None => None,
        };
        let shape = Shape { queries: n, keys: held, heads, kv_heads, head_dim: hd };
        let scale = 1.0 / (hd as f32).sqrt();
        let q = Heads::stacked(q, n, hd);
        let mask = Mask::Causal { offset: self.len };
        let kernels = Isa::detect();
        let (own_cap, own_rows, base_len) = (self.own_capacity, self.own_len() + n, self.base_len);
        Ok(Some(match (own, base) {
            ((Rows::F32(k), Rows::F32(v)), None) => attention(
                kernels,
                q,
                Heads::stacked(k, own_cap, hd),
                Heads::stacked(v, own_cap, hd),
                shape,
                scale,
                mask,
            ),
            ((Rows::F32(k), Rows::F32(v)), Some(((Rows::F32(bk), Rows::F32(bv)), cap))) => {
                let k = Pieces {
                    prefix: Some((Heads::stacked(bk, cap, hd), base_len)),
                    rest: Heads::stacked(k, own_cap, hd),
                };
                let v = Pieces {
                    prefix: Some((Heads::stacked(bv, cap, hd), base_len)),
                    rest: Heads::stacked(v, own_cap, hd),
                };
                attention(kernels, q, k, v, shape, scale, mask)
            }
            ((Rows::F16(k), Rows::F16(v)), base) => {
                let (bk, bv, cap) = match base {
                    Some(((Rows::F16(bk), Rows::F16(bv)), cap)) => (bk, bv, cap),
                    Some(_) => return Err(mixed()),
                    None => (&[][..], &[][..], 0),
                };
                // Each head's held rows, the shared prefix's then the own, widened in one piece.
                let widen = |prefix: &[f16], own: &[f16]| -> Vec<f32> {
                    let mut out = vec![0f32; kv_heads * held * hd];
                    out.par_chunks_mut(held * hd).enumerate().for_each(|(g, out)| {
                        let (first, rest) = out.split_at_mut(base_len * hd);
                        if base_len > 0 {
                            prefix[g * cap * hd..][..base_len * hd].convert_to_f32_slice(first);
                        }
                        own[g * own_cap * hd..][..own_rows * hd].convert_to_f32_slice(rest);
                    });
                    out
                };
                let (k, v) = (widen(bk, k), widen(bv, v));
                attention(kernels, q, Heads::stacked(&k, held, hd), Heads::stacked(&v, held, hd), shape, scale, mask)
            }
            _ => return Err(mixed()),
        }))
    }

    /// Marks `n` positions (just appended in every layer) as valid.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// The in-place write of [`KvCache::write_row`]: `row` (head `h` at `h * head_dim`) into a
/// contiguous `[kv_heads, capacity, head_dim]` buffer at position `at.0` (`at`: position,
/// capacity, head_dim).
struct PutRow<'a> {
    row: &'a [f32],
    at: (usize, usize, usize),
}

impl candle_core::InplaceOp1 for PutRow<'_> {
    fn name(&self) -> &'static str {
        "kv-put-row"
    }

    fn cpu_fwd(&self, storage: &mut candle_core::CpuStorage, layout: &candle_core::Layout) -> candle_core::Result<()> {
        let (pos, cap, hd) = self.at;
        let heads = self.row.len() / hd;
        let start = layout.start_offset();
        if !layout.is_contiguous() || layout.shape().dims() != [heads, cap, hd] || pos >= cap {
            return Err(candle_core::Error::Msg(format!(
                "a KV buffer of shape {:?} for a row of {heads} heads of {hd} at position {pos}",
                layout.shape()
            )));
        }
        fn put<T>(buf: &mut [T], start: usize, (pos, cap, hd): (usize, usize, usize), row: &[f32], f: fn(f32) -> T) {
            for (h, src) in row.chunks_exact(hd).enumerate() {
                let dst = &mut buf[start + (h * cap + pos) * hd..][..hd];
                for (d, &x) in dst.iter_mut().zip(src) {
                    *d = f(x);
                }
            }
        }
        match storage {
            candle_core::CpuStorage::F32(buf) => put(buf, start, self.at, self.row, |x| x),
            candle_core::CpuStorage::F16(buf) => put(buf, start, self.at, self.row, f16::from_f32),
            _ => return Err(candle_core::Error::Msg("a KV buffer neither f32 nor f16".into())),
        }
        Ok(())
    }
}

/// A cache whose buffers disagree with its dtype or its prefix's: a bug, reported not panicked.
fn mixed() -> Error {
    Error::InvalidOption("a KV cache's buffers do not match its dtype or its prefix's".into())
}

/// A layer's keys and values as rows of `dtype` (from each buffer's start); `None` off the CPU.
fn cpu_rows<'a>(
    dtype: KvDType,
    (ks, kl): (&'a Storage, &candle_core::Layout),
    (vs, vl): (&'a Storage, &candle_core::Layout),
) -> Result<Option<Kv<'a>>> {
    let (Storage::Cpu(k), Storage::Cpu(v)) = (ks, vs) else { return Ok(None) };
    Ok(Some(match dtype {
        KvDType::F32 => (
            Rows::F32(&k.as_slice::<f32>()?[kl.start_offset()..]),
            Rows::F32(&v.as_slice::<f32>()?[vl.start_offset()..]),
        ),
        KvDType::F16 => (
            Rows::F16(&k.as_slice::<f16>()?[kl.start_offset()..]),
            Rows::F16(&v.as_slice::<f16>()?[vl.start_offset()..]),
        ),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kv` written piece by piece into a cache of `dtype` that starts small (so it grows) and
    /// is forked, then `last` appended as the new position that `q` attends from.
    fn attend(dtype: KvDType, kv: &[(Tensor, Tensor)], last: &(Tensor, Tensor), q: &[f32], heads: usize) -> Vec<f32> {
        let c = Arc::new(filled(dtype, kv));
        let mut c = c.fork(c.len() + 1).unwrap();
        assert_eq!(c.layers[0].0.dtype(), dtype.dtype());
        c.write(0, &last.0, &last.1).unwrap();
        KvCache::attend_rows(&[&c], 0, q, heads).unwrap().unwrap()
    }

    #[test]
    fn an_f16_cache_attends_over_its_rounded_values_in_f32() {
        let (heads, kv_heads, hd) = (4, 2, 40);
        let dev = &Device::Cpu;
        let r = |n| Tensor::randn(0f32, 1.0, (kv_heads, n, hd), dev).unwrap();
        // 71 positions in pieces of 30, 1, 39 and the new one: past one 32-row conversion step.
        let kv: Vec<(Tensor, Tensor)> = [30, 1, 39].iter().map(|&n| (r(n), r(n))).collect();
        let last = (r(1), r(1));
        let q = Tensor::randn(0f32, 1.0, heads * hd, dev).unwrap().to_vec1::<f32>().unwrap();
        let exact = attend(KvDType::F32, &kv, &last, &q, heads);
        let half = attend(KvDType::F16, &kv, &last, &q, heads);
        // The attention over f16-rounded keys and values, computed here in f64.
        let all = |i: usize, round: bool| -> Vec<Vec<Vec<f32>>> {
            let pieces: Vec<Tensor> =
                kv.iter().chain([&last]).map(|p| if i == 0 { p.0.clone() } else { p.1.clone() }).collect();
            let t = Tensor::cat(&pieces, 1).unwrap();
            let t = if round { t.to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap() } else { t };
            t.to_vec3::<f32>().unwrap()
        };
        let oracle = |round: bool| -> Vec<f64> {
            let (keys, values) = (all(0, round), all(1, round));
            let mut out = vec![0f64; heads * hd];
            for h in 0..heads {
                let g = h / (heads / kv_heads);
                let qh = &q[h * hd..(h + 1) * hd];
                let scores: Vec<f64> = keys[g]
                    .iter()
                    .map(|k| k.iter().zip(qh).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() / (hd as f64).sqrt())
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let p: Vec<f64> = scores.iter().map(|s| (s - max).exp()).collect();
                let sum: f64 = p.iter().sum();
                for d in 0..hd {
                    out[h * hd + d] = p.iter().zip(&values[g]).map(|(p, v)| p * v[d] as f64).sum::<f64>() / sum;
                }
            }
            out
        };
        let dist = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(a, b)| (*a as f64 - b).abs()).fold(0f64, f64::max);
        let (rounded, unrounded) = (oracle(true), oracle(false));
        // Each cache computes its own values' attention to f32 accuracy...
        assert!(dist(&exact, &unrounded) < 1e-5, "f32 cache: {}", dist(&exact, &unrounded));
        assert!(dist(&half, &rounded) < 1e-5, "f16 cache: {}", dist(&half, &rounded));
        // ...and f16's rounding (11 bits: <= 2^-12 on values ~1) moves the result measurably.
        let moved = dist(&half, &unrounded);
        assert!(moved > 1e-5 && moved < 1e-2, "f16 rounding moved attention by {moved}");
    }

    /// Writes `kv` (one layer) piece by piece into a new cache of `dtype` that starts with room
    /// for one position, so it grows.
    fn filled(dtype: KvDType, kv: &[(Tensor, Tensor)]) -> KvCache {
        let (kv_heads, _, hd) = kv[0].0.dims3().unwrap();
        let mut c = KvCache::new(1, kv_heads, hd, 1, dtype, &Device::Cpu).unwrap();
        for (k, v) in kv {
            c.reserve(k.dim(1).unwrap()).unwrap();
            c.write(0, k, v).unwrap();
            c.advance(k.dim(1).unwrap());
        }
        c
    }

    /// Forks of one prefix hold only their own positions, and a batched step over several of
    /// them (with an unforked sequence among them) and the prefill of their questions give bit
    /// for bit what caches holding every position themselves give.
    #[test]
    fn forks_share_the_prefix_and_attend_as_whole_caches_do() {
        let (heads, kv_heads, hd) = (4, 2, 32);
        let dev = &Device::Cpu;
        let r = |n| Tensor::randn(0f32, 1.0, (kv_heads, n, hd), dev).unwrap();
        for dtype in [KvDType::F32, KvDType::F16] {
            let prefix_kv = vec![(r(40), r(40)), (r(27), r(27))];
            let prefix = Arc::new(filled(dtype, &prefix_kv));
            // Three questions of 5, 1 and 9 positions, run as a prefill on the fork.
            let questions: Vec<(Tensor, Tensor)> = [5, 1, 9].iter().map(|&n| (r(n), r(n))).collect();
            let mut forks = Vec::new();
            let mut wholes = Vec::new();
            for (k, v) in &questions {
                let n = k.dim(1).unwrap();
                let mut fork = prefix.fork(prefix.len() + n + 1).unwrap();
                assert_eq!((fork.len(), fork.shared_len(), fork.capacity()), (67, 67, 67 + n + 1));
                // Its own buffers: room for the question and one decode step, not the prefix.
                assert_eq!(fork.own_bytes(), 2 * kv_heads * (n + 1) * hd * dtype.dtype().size_in_bytes());
                let mut whole = filled(dtype, &prefix_kv);
                let q = Tensor::randn(0f32, 1.0, heads * n * hd, dev).unwrap().to_vec1::<f32>().unwrap();
                let mut outs = Vec::new();
                for c in [&mut fork, &mut whole] {
                    c.reserve(n + 1).unwrap();
                    c.write(0, k, v).unwrap();
                    outs.push(c.attend_causal(0, &q, n, heads).unwrap().unwrap());
                    c.advance(n);
                }
                assert_eq!(outs[0], outs[1], "{dtype} prefill of {n} positions after a shared prefix");
                forks.push(fork);
                wholes.push(whole);
            }
            // One decode step of the three forks and an unforked sequence, batched.
            let mut lone = filled(dtype, &[(r(12), r(12))]);
            lone.reserve(1).unwrap();
            let step = (r(1), r(1));
            for c in forks.iter_mut().chain(wholes.iter_mut()).chain([&mut lone]) {
                c.write(0, &step.0, &step.1).unwrap();
            }
            let q = Tensor::randn(0f32, 1.0, 4 * heads * hd, dev).unwrap().to_vec1::<f32>().unwrap();
            let batch = |caches: Vec<&KvCache>| KvCache::attend_rows(&caches, 0, &q, heads).unwrap().unwrap();
            let shared = batch(forks.iter().chain([&lone]).collect());
            let copied = batch(wholes.iter().chain([&lone]).collect());
            assert_eq!(shared, copied, "{dtype} batched step over shared and whole caches");
            // Each sequence alone gets its row of the batch.
            for (b, c) in forks.iter().chain([&lone]).enumerate() {
                let row = &q[b * heads * hd..][..heads * hd];
                let alone = KvCache::attend_rows(&[c], 0, row, heads).unwrap().unwrap();
                assert_eq!(alone, shared[b * heads * hd..][..heads * hd], "{dtype} sequence {b} alone");
            }
            // Rolling a fork back into the prefix keeps its first positions shared.
            let fork = &mut forks[0];
            fork.truncate(30);
            assert_eq!((fork.len(), fork.shared_len()), (30, 30));
            fork.truncate(0);
            assert!(fork.base.is_none());
        }
    }

    /// A row written by `write_row` (one pass from the products' slice) lands as `write` puts
    /// the same row given as a tensor (candle's conversion and copy): every buffer value the
    /// same bits, in both dtypes, on a fork whose own buffers start at another capacity; a row
    /// of the wrong width is refused.
    #[test]
    fn a_row_written_in_place_equals_the_tensor_write() {
        let (kv_heads, hd) = (3, 16);
        let dev = &Device::Cpu;
        let r = |n| Tensor::randn(0f32, 1.0, (kv_heads, n, hd), dev).unwrap();
        for dtype in [KvDType::F32, KvDType::F16] {
            let prefix = Arc::new(filled(dtype, &[(r(5), r(5))]));
            let (mut a, mut b) = (prefix.fork(9).unwrap(), prefix.fork(9).unwrap());
            for _ in 0..4 {
                let (k, v) = (r(1), r(1));
                let flat = |t: &Tensor| t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
                for c in [&mut a, &mut b] {
                    c.reserve(1).unwrap();
                }
                a.write(0, &k, &v).unwrap();
                b.write_row(0, &flat(&k), &flat(&v)).unwrap();
                a.advance(1);
                b.advance(1);
            }
            for i in 0..2 {
                let bits = |c: &KvCache| {
                    let t = if i == 0 { &c.layers[0].0 } else { &c.layers[0].1 };
                    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
                };
                let (x, y) = (bits(&a), bits(&b));
                assert!(x.iter().zip(&y).all(|(p, q)| p.to_bits() == q.to_bits()), "{dtype:?}");
                // The rows were written: not still the zeros of a fresh buffer.
                assert!(y[..4 * hd].iter().any(|&v| v != 0.0));
            }
            assert!(b.write_row(0, &[0.0; 3], &[0.0; 3]).is_err());
        }
    }
}
