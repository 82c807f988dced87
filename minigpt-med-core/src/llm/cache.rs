//! A key/value cache allocated once per conversation and written in place, so a decode step
//! never re-copies the history. It can be rolled back, which keeps a chat consistent when a
//! turn fails or is cancelled.

use candle_core::{DType, Device, Tensor};

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
    pub(crate) fn new(layers: usize, kv_heads: usize, head_dim: usize, capacity: usize, device: &Device) -> Result<Self> {
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

    /// Marks `n` positions (just appended in every layer) as valid.
    pub(crate) fn advance(&mut self, n: usize) {
        self.len += n;
    }
}
