//! A key/value cache allocated once per conversation and written in place, so a decode step
//! never re-copies the history. It can be rolled back, which keeps a chat consistent when a
//! turn fails or is cancelled.

use candle_core::{DType, Device, Storage, Tensor};
use half::f16;
use half::slice::HalfFloatSliceExt;
use rayon::prelude::*;

use crate::attention::{attention, row, Heads, Mask, Rows, Shape};
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
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    dtype: KvDType,
    device: Device,
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
        Ok(Self { layers, len: 0, capacity, kv_heads, head_dim, dtype, device: device.clone() })
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
        self.capacity
    }

    /// A copy of the held positions with room for `capacity` (at least `len`): a study's
    /// prefix forked for one question, the original left as it is.
    pub(crate) fn fork(&self, capacity: usize) -> Result<Self> {
        let capacity = capacity.max(self.len);
        let layers = self
            .layers
            .iter()
            .map(|(k, v)| {
                let copy = |t: &Tensor| -> Result<Tensor> {
                    let out = Tensor::zeros((self.kv_heads, capacity, self.head_dim), t.dtype(), &self.device)?;
                    if self.len > 0 {
                        out.slice_set(&t.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                    }
                    Ok(out)
                };
                Ok((copy(k)?, copy(v)?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            layers,
            len: self.len,
            capacity,
            kv_heads: self.kv_heads,
            head_dim: self.head_dim,
            dtype: self.dtype,
            device: self.device.clone(),
        })
    }

    /// Forgets positions past `len` (used to undo a failed or cancelled turn).
    pub(crate) fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    /// Makes room for `extra` more positions, growing the buffers (one copy) if needed.
    pub(crate) fn reserve(&mut self, extra: usize) -> Result<()> {
        let needed = self.len + extra;
        if needed <= self.capacity {
            return Ok(());
        }
        let new_cap = needed.max(self.capacity * 2);
        for (k, v) in &mut self.layers {
            for t in [k, v] {
                let grown = Tensor::zeros((self.kv_heads, new_cap, self.head_dim), t.dtype(), &self.device)?;
                grown.slice_set(&t.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                *t = grown;
            }
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `k, v: [kv_heads, n, head_dim]` (f32) of `layer` at the current end and returns
    /// everything held for that layer, `[kv_heads, len + n, head_dim]` f32 (views of an f32
    /// cache; an f16 cache's values widened).
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        self.write(layer, k, v)?;
        let n = k.dim(1)?;
        let (kc, vc) = &self.layers[layer];
        let held = |t: &Tensor| -> Result<Tensor> { Ok(t.narrow(1, 0, self.len + n)?.to_dtype(DType::F32)?) };
        Ok((held(kc)?, held(vc)?))
    }

    /// Writes `k, v: [kv_heads, n, head_dim]` (f32) of `layer` at the current end, rounded to
    /// the cache's dtype.
    pub(crate) fn write(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<()> {
        let dtype = self.dtype.dtype();
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(&k.to_dtype(dtype)?, 1, self.len)?;
        vc.slice_set(&v.to_dtype(dtype)?, 1, self.len)?;
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
    /// attends over `caches[b]` (all of one model), in one parallel pass over every (sequence,
    /// head) pair rather than one per sequence. Returns `[B, heads * head_dim]`; `None` off
    /// the CPU.
    pub(crate) fn attend_rows(caches: &[&KvCache], layer: usize, q: &[f32], heads: usize) -> Result<Option<Vec<f32>>> {
        let Some(first) = caches.first() else { return Ok(Some(Vec::new())) };
        let (hd, kv_heads) = (first.head_dim, first.kv_heads);
        if q.len() != caches.len() * heads * hd || caches.iter().any(|c| c.head_dim != hd || c.kv_heads != kv_heads) {
            return Err(Error::InvalidOption(format!(
                "{} query values for {} sequences of {heads} heads of {hd}",
                q.len(),
                caches.len()
            )));
        }
        let guards: Vec<_> = caches
            .iter()
            .map(|c| {
                let (k, v) = &c.layers[layer];
                (k.storage_and_layout(), v.storage_and_layout())
            })
            .collect();
        let mut views = Vec::with_capacity(caches.len());
        for (c, ((ks, kl), (vs, vl))) in caches.iter().zip(&guards) {
            let (Storage::Cpu(k), Storage::Cpu(v)) = (&**ks, &**vs) else { return Ok(None) };
            let (k, v) = match c.dtype {
                KvDType::F32 => (
                    Rows::F32(&k.as_slice::<f32>()?[kl.start_offset()..]),
                    Rows::F32(&v.as_slice::<f32>()?[vl.start_offset()..]),
                ),
                KvDType::F16 => (
                    Rows::F16(&k.as_slice::<f16>()?[kl.start_offset()..]),
                    Rows::F16(&v.as_slice::<f16>()?[vl.start_offset()..]),
                ),
            };
            views.push((k, v, c.capacity, c.len + 1));
        }
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let kernels = Isa::detect();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(hd).enumerate().for_each_init(Vec::new, |scores, (j, out)| {
            let (b, h) = (j / heads, j % heads);
            let (k, v, cap, len) = views[b];
            let rows = (h / group) * cap..(h / group) * cap + len;
            let q = &q[j * hd..(j + 1) * hd];
            row::attend(kernels, q, k.span(rows.clone(), hd), v.span(rows, hd), scale, scores, out);
        });
        Ok(Some(out))
    }

    /// Causal attention of `n` new positions (just written to `layer`, not yet advanced) over
    /// the whole cache, fused on the CPU (`crate::attention`): `q: [heads, n, head_dim]` ->
    /// `[n, heads * head_dim]`. An f32 cache is read in place; an f16 cache's held positions
    /// are widened once per call. `None` off the CPU.
    pub(crate) fn attend_causal(&self, layer: usize, q: &[f32], n: usize, heads: usize) -> Result<Option<Vec<f32>>> {
        let (hd, kv_heads, held) = (self.head_dim, self.kv_heads, self.len + n);
        if q.len() != heads * n * hd || kv_heads == 0 || heads % kv_heads != 0 || held > self.capacity {
            return Err(Error::InvalidOption(format!(
                "{} query values for {n} positions of {heads} heads of {hd} over {kv_heads} key/value heads",
                q.len()
            )));
        }
        let (k, v) = &self.layers[layer];
        let ((ks, kl), (vs, vl)) = (k.storage_and_layout(), v.storage_and_layout());
        let (Storage::Cpu(ks), Storage::Cpu(vs)) = (&*ks, &*vs) else { return Ok(None) };
        let shape = Shape { queries: n, keys: held, heads, kv_heads, head_dim: hd };
        let scale = 1.0 / (hd as f32).sqrt();
        let q = Heads::stacked(q, n, hd);
        let mask = Mask::Causal { offset: self.len };
        let kernels = Isa::detect();
        Ok(Some(match self.dtype {
            KvDType::F32 => {
                let k = Heads::stacked(&ks.as_slice::<f32>()?[kl.start_offset()..], self.capacity, hd);
                let v = Heads::stacked(&vs.as_slice::<f32>()?[vl.start_offset()..], self.capacity, hd);
                attention(kernels, q, k, v, shape, scale, mask)
            }
            KvDType::F16 => {
                let widen = |t: &[f16]| -> Vec<f32> {
                    let mut out = vec![0f32; kv_heads * held * hd];
                    out.par_chunks_mut(held * hd).enumerate().for_each(|(g, out)| {
                        t[g * self.capacity * hd..][..held * hd].convert_to_f32_slice(out);
                    });
                    out
                };
                let k = widen(&ks.as_slice::<f16>()?[kl.start_offset()..]);
                let v = widen(&vs.as_slice::<f16>()?[vl.start_offset()..]);
                attention(kernels, q, Heads::stacked(&k, held, hd), Heads::stacked(&v, held, hd), shape, scale, mask)
            }
        }))
    }

    /// Marks `n` positions (just appended in every layer) as valid.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `kv` written piece by piece into a cache of `dtype` that starts small (so it grows) and
    /// is forked, then `last` appended as the new position that `q` attends from.
    fn attend(dtype: KvDType, kv: &[(Tensor, Tensor)], last: &(Tensor, Tensor), q: &[f32], heads: usize) -> Vec<f32> {
        let (kv_heads, _, hd) = kv[0].0.dims3().unwrap();
        let mut c = KvCache::new(1, kv_heads, hd, 2, dtype, &Device::Cpu).unwrap();
        for (k, v) in kv {
            c.reserve(k.dim(1).unwrap()).unwrap();
            c.write(0, k, v).unwrap();
            c.advance(k.dim(1).unwrap());
        }
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
}
