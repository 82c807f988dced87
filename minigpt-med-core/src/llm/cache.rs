//! A key/value cache allocated once per conversation and written in place, so a decode step
//! never re-copies the history. It can be rolled back, which keeps a chat consistent when a
//! turn fails or is cancelled.

use candle_core::{DType, Device, Storage, Tensor};
use rayon::prelude::*;

use crate::error::Result;

/// Per-layer keys and values `[kv_heads, capacity, head_dim]` and the number of valid positions.
#[derive(Debug)]
pub struct KvCache {
    layers: Vec<(Tensor, Tensor)>,
    len: usize,
    capacity: usize,
    kv_heads: usize,
    head_dim: usize,
    device: Device,
}

impl KvCache {
    pub(crate) fn new(
        layers: usize,
        kv_heads: usize,
        head_dim: usize,
        capacity: usize,
        device: &Device,
    ) -> Result<Self> {
        let layers = (0..layers)
            .map(|_| {
                let z = || Tensor::zeros((kv_heads, capacity, head_dim), DType::F32, device);
                Ok((z()?, z()?))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { layers, len: 0, capacity, kv_heads, head_dim, device: device.clone() })
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
                    let out = Tensor::zeros((self.kv_heads, capacity, self.head_dim), DType::F32, &self.device)?;
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
                let grown = Tensor::zeros((self.kv_heads, new_cap, self.head_dim), DType::F32, &self.device)?;
                grown.slice_set(&t.narrow(1, 0, self.len)?.contiguous()?, 1, 0)?;
                *t = grown;
            }
        }
        self.capacity = new_cap;
        Ok(())
    }

    /// Writes `k, v: [kv_heads, n, head_dim]` of `layer` at the current end and returns views
    /// of everything held for that layer, `[kv_heads, len + n, head_dim]`.
    pub(crate) fn append(&mut self, layer: usize, k: &Tensor, v: &Tensor) -> Result<(Tensor, Tensor)> {
        let n = k.dim(1)?;
        let (kc, vc) = &self.layers[layer];
        kc.slice_set(k, 1, self.len)?;
        vc.slice_set(v, 1, self.len)?;
        Ok((kc.narrow(1, 0, self.len + n)?, vc.narrow(1, 0, self.len + n)?))
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
            return Err(crate::error::Error::InvalidOption(format!(
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
            let (k, v) = (&k.as_slice::<f32>()?[kl.start_offset()..], &v.as_slice::<f32>()?[vl.start_offset()..]);
            views.push((k, v, c.capacity, c.len + 1));
        }
        let group = heads / kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let mut out = vec![0f32; q.len()];
        out.par_chunks_mut(hd).enumerate().for_each(|(j, out)| {
            let (b, h) = (j / heads, j % heads);
            let (k, v, cap, len) = views[b];
            let q = &q[j * hd..(j + 1) * hd];
            let base = (h / group) * cap * hd;
            let (k, v) = (&k[base..base + len * hd], &v[base..base + len * hd]);
            let scores: Vec<f32> = k.chunks_exact(hd).map(|k| dot(q, k) * scale).collect();
            let max = scores.iter().fold(f32::NEG_INFINITY, |m, &s| m.max(s));
            let mut sum = 0f32;
            for (s, v) in scores.iter().zip(v.chunks_exact(hd)) {
                let p = (s - max).exp();
                sum += p;
                out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
            }
            out.iter_mut().for_each(|o| *o /= sum);
        });
        Ok(Some(out))
    }

    /// Marks `n` positions (just appended in every layer) as valid.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}

/// `a . b` over eight independent lanes, which the compiler turns into SIMD.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let rest: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        acc.iter_mut().zip(x.iter().zip(y)).for_each(|(a, (x, y))| *a += x * y);
    }
    acc.iter().sum::<f32>() + rest
}
