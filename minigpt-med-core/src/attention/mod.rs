//! Multi-head attention on the CPU, fused: per (head, block of query rows) one task computes
//! `softmax(q k^T * scale) v` with the scores held in a small per-thread buffer. It serves the
//! ViT (every query sees every token) and the LLM's prefill (causal, over the KV cache).
//!
//! q, k and v are read in place through [`Heads`] (no copies out of the qkv rows or the cache);
//! k and v are packed once per key/value head; the scale is applied while packing q; the
//! softmax's division is applied to the `head_dim`-long output rows instead of the probability
//! rows. A causal block multiplies only the keys its last row sees and zeroes the probabilities
//! past each row's own position. `docs/perf.md` has the timings.

pub(crate) mod row;

use std::cell::RefCell;

use rayon::prelude::*;

use crate::cpu::{Isa, OutPtr};
use crate::gemm::{self, Epilogue, Lhs, Out, PackedB, Precision};

pub(crate) use row::{Kv, Rows};

/// Query rows per task: their scores (`ROWS x keys`) stay in L2.
const ROWS: usize = 48;

thread_local! {
    /// Each worker's score buffer, reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Where the rows of every head of q, k or v lie: head `h`'s row `i` is
/// `data[h * head_stride + i * row_stride..][..head_dim]`.
#[derive(Clone, Copy)]
pub(crate) struct Heads<'a> {
    pub(crate) data: &'a [f32],
    pub(crate) head_stride: usize,
    pub(crate) row_stride: usize,
}

impl<'a> Heads<'a> {
    /// Heads side by side in rows of `row_stride` (`[n, .. heads * head_dim ..]`, head `h` at
    /// column `h * head_dim`): the ViT's qkv output.
    pub(crate) fn interleaved(data: &'a [f32], head_dim: usize, row_stride: usize) -> Self {
        Self { data, head_stride: head_dim, row_stride }
    }

    /// Heads one after the other, `rows` rows of `head_dim` each (`[heads, rows, head_dim]`).
    pub(crate) fn stacked(data: &'a [f32], rows: usize, head_dim: usize) -> Self {
        Self { data, head_stride: rows * head_dim, row_stride: head_dim }
    }

    fn head(&self, h: usize) -> &'a [f32] {
        &self.data[h * self.head_stride..]
    }

    /// Row `i` of head `h`.
    fn row(&self, h: usize, i: usize, head_dim: usize) -> &'a [f32] {
        &self.data[h * self.head_stride + i * self.row_stride..][..head_dim]
    }
}

/// Key or value rows of every head, in one piece or in two: a forked cache's shared prefix
/// (its first `rows` rows of each head), then the rows of its own.
#[derive(Clone, Copy)]
pub(crate) struct Pieces<'a> {
    pub(crate) prefix: Option<(Heads<'a>, usize)>,
    pub(crate) rest: Heads<'a>,
}

impl<'a> Pieces<'a> {
    /// Row `i` of head `h`.
    fn row(&self, h: usize, i: usize, head_dim: usize) -> &'a [f32] {
        match self.prefix {
            Some((prefix, rows)) if i < rows => prefix.row(h, i, head_dim),
            Some((_, rows)) => self.rest.row(h, i - rows, head_dim),
            None => self.rest.row(h, i, head_dim),
        }
    }
}

impl<'a> From<Heads<'a>> for Pieces<'a> {
    fn from(rest: Heads<'a>) -> Self {
        Self { prefix: None, rest }
    }
}

/// Which keys each query sees.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mask {
    /// Every key (the ViT).
    None,
    /// Causal: query `i` sits at position `offset + i` and sees keys `0..=offset + i` (the
    /// LLM, `offset` positions already cached).
    Causal { offset: usize },
}

/// The attention's shape: `queries` query rows of `heads` heads over `keys` key rows of
/// `kv_heads` heads (grouped-query attention when fewer), each `head_dim` wide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    pub(crate) queries: usize,
    pub(crate) keys: usize,
    pub(crate) heads: usize,
    pub(crate) kv_heads: usize,
    pub(crate) head_dim: usize,
}

/// `[queries, heads * head_dim]`, heads side by side, as `softmax(q k^T * scale + mask) v` per
/// head; query head `h` reads key/value head `h / (heads / kv_heads)`.
///
/// # Panics
/// If a view is too short for `shape`, `kv_heads` does not divide `heads`, or a causal query
/// would see past the last key (`offset + queries > keys`).
pub(crate) fn attention<'a>(
    kernels: Isa,
    q: Heads,
    k: impl Into<Pieces<'a>>,
    v: impl Into<Pieces<'a>>,
    shape: Shape,
    scale: f32,
    mask: Mask,
) -> Vec<f32> {
    let (k, v) = (k.into(), v.into());
    let Shape { queries: n, keys, heads, kv_heads, head_dim } = shape;
    assert!(kv_heads > 0 && heads % kv_heads == 0, "attention: {heads} heads over {kv_heads} key/value heads");
    if let Mask::Causal { offset } = mask {
        assert!(offset + n <= keys, "attention: {n} queries after {offset} positions but {keys} keys");
    }
    let d = heads * head_dim;
    let group = heads / kv_heads;
    let packed: Vec<(PackedB, PackedB)> = (0..kv_heads)
        .into_par_iter()
        .map(|h| {
            let kp = PackedB::from_nk_rows(keys, head_dim, Precision::F32, |j| k.row(h, j, head_dim));
            let vp = PackedB::from_kn_rows(keys, head_dim, |p| v.row(h, p, head_dim));
            (kp, vp)
        })
        .collect();
    let mut out = vec![0f32; n * d];
    let ptr = OutPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..heads).flat_map(|h| (0..n).step_by(ROWS).map(move |r| (h, r))).collect();
    tasks.par_iter().for_each(|&(h, r0)| {
        let rows = ROWS.min(n - r0);
        // Keys this block sees: all of them, or up to its last row's position.
        let seen = match mask {
            Mask::None => keys,
            Mask::Causal { offset } => offset + r0 + rows,
        };
        let (kp, vp) = &packed[h / group];
        SCORES.with(|scores| {
            let scores = &mut *scores.borrow_mut();
            scores.resize(rows * seen, 0.0);
            let scores = &mut scores[..rows * seen];
            let lhs = Lhs::Rows { data: &q.head(h)[r0 * q.row_stride..], ld: q.row_stride, rows, scale };
            let s = Out { ptr: OutPtr(scores.as_mut_ptr()), ld: seen, bias: None, epilogue: Epilogue::Identity };
            // SAFETY: `scores` holds `rows x seen` elements and belongs to this thread.
            unsafe { gemm::gemm_on_thread(kernels, lhs, kp, 0..seen, s) };
            let sums: Vec<f32> = match mask {
                Mask::None => gemm::softmax_rows(kernels, scores, seen),
                Mask::Causal { offset } => scores
                    .chunks_exact_mut(seen)
                    .enumerate()
                    .map(|(r, row)| {
                        let (visible, hidden) = row.split_at_mut(offset + r0 + r + 1);
                        hidden.fill(0.0);
                        gemm::softmax_row(kernels, visible)
                    })
                    .collect(),
            };
            let p = Lhs::Rows { data: scores, ld: seen, rows, scale: 1.0 };
            // SAFETY: rows `r0..r0 + rows`, columns `h * head_dim..` of `out`: this task's
            // alone (one task per head and row block).
            let o = unsafe { ptr.add(r0 * d + h * head_dim) };
            let dst = Out { ptr: o, ld: d, bias: None, epilogue: Epilogue::Identity };
            // SAFETY: as above; `p` has `seen` columns, the depth multiplied.
            unsafe { gemm::gemm_to_depth(kernels, p, vp, seen, 0..head_dim, dst) };
            for (r, sum) in sums.iter().enumerate() {
                let inv = 1.0 / sum;
                // SAFETY: as above.
                let row = unsafe { std::slice::from_raw_parts_mut(o.add(r * d).0, head_dim) };
                row.iter_mut().for_each(|v| *v *= inv);
            }
        })
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 1.5).collect()
    }

    /// The attention in f64, straight from the definition: query `i` of head `h` over the keys
    /// `0..visible(i)` of its key/value head.
    #[allow(clippy::too_many_arguments)]
    fn oracle(
        q: impl Fn(usize, usize, usize) -> f64,
        k: impl Fn(usize, usize, usize) -> f64,
        v: impl Fn(usize, usize, usize) -> f64,
        shape: Shape,
        scale: f64,
        visible: impl Fn(usize) -> usize,
        h: usize,
        i: usize,
    ) -> Vec<f64> {
        let g = h / (shape.heads / shape.kv_heads);
        let s: Vec<f64> =
            (0..visible(i)).map(|j| (0..shape.head_dim).map(|c| q(h, i, c) * scale * k(g, j, c)).sum()).collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..shape.head_dim).map(|c| (0..e.len()).map(|j| e[j] / total * v(g, j, c)).sum()).collect()
    }

    /// The ViT's case against an f64 attention, on a sequence longer than one row block and a
    /// head width that is not a multiple of the kernel's 16 columns.
    #[test]
    fn matches_f64_attention() {
        let (n, heads, hd) = (101, 3, 22);
        let d = heads * hd;
        let qkv = values(n * 3 * d, 0);
        let scale = (hd as f32).powf(-0.5);
        let shape = Shape { queries: n, keys: n, heads, kv_heads: heads, head_dim: hd };
        let qkv = &qkv;
        let at = |part: usize| move |h: usize, r: usize, c: usize| qkv[r * 3 * d + part * d + h * hd + c] as f64;
        for kernels in Isa::available() {
            let view = |part: usize| Heads::interleaved(&qkv[part * d..], hd, 3 * d);
            let got = attention(kernels, view(0), view(1), view(2), shape, scale, Mask::None);
            for h in 0..heads {
                for i in 0..n {
                    let exact = oracle(at(0), at(1), at(2), shape, scale as f64, |_| n, h, i);
                    for (c, exact) in exact.iter().enumerate() {
                        let g = got[i * d + h * hd + c] as f64;
                        assert!((g - exact).abs() <= 2e-6, "{kernels:?} head {h} row {i} col {c}: {g} vs {exact}");
                    }
                }
            }
        }
    }

    /// The LLM's case: causal, after cached positions, grouped-query heads, stacked views with
    /// room past the held keys (as the cache has), queries spanning several row blocks.
    #[test]
    fn causal_attention_over_a_cache_matches_f64() {
        let (heads, kv_heads, hd) = (4, 2, 20);
        for (offset, n) in [(0, 1), (0, 7), (0, 100), (37, 60), (5, 1)] {
            let (keys, capacity) = (offset + n, offset + n + 9);
            let q = values(heads * n * hd, 1);
            let k = values(kv_heads * capacity * hd, 2);
            let v = values(kv_heads * capacity * hd, 3);
            let shape = Shape { queries: n, keys, heads, kv_heads, head_dim: hd };
            let scale = (hd as f32).powf(-0.5);
            let qa = |h: usize, r: usize, c: usize| q[(h * n + r) * hd + c] as f64;
            let ka = |g: usize, r: usize, c: usize| k[(g * capacity + r) * hd + c] as f64;
            let va = |g: usize, r: usize, c: usize| v[(g * capacity + r) * hd + c] as f64;
            for kernels in Isa::available() {
                let got = attention(
                    kernels,
                    Heads::stacked(&q, n, hd),
                    Heads::stacked(&k, capacity, hd),
                    Heads::stacked(&v, capacity, hd),
                    shape,
                    scale,
                    Mask::Causal { offset },
                );
                assert_eq!(got.len(), n * heads * hd);
                for h in 0..heads {
                    for i in 0..n {
                        let exact = oracle(qa, ka, va, shape, scale as f64, |i| offset + i + 1, h, i);
                        for (c, exact) in exact.iter().enumerate() {
                            let g = got[i * heads * hd + h * hd + c] as f64;
                            assert!(
                                (g - exact).abs() <= 2e-6,
                                "{kernels:?} offset {offset} n {n} head {h} row {i} col {c}: {g} vs {exact}"
                            );
                        }
                    }
                }
            }
        }
    }
}
