//! The ViT's multi-head self-attention on the CPU, fused: per (head, block of query rows) one
//! task computes `softmax(q k^T * scale) v` with the scores held in a small per-thread buffer.
//!
//! q, k and v are read in place from the qkv rows (no copies out of it); k and v are packed
//! once per head; the scale is applied while packing q; the softmax's division is applied to the
//! `head_dim`-long output rows instead of the probability rows. `docs/perf.md` has the timings.

use std::cell::RefCell;

use rayon::prelude::*;

use crate::cpu::{Isa, OutPtr};
use crate::gemm::{self, Epilogue, Lhs, Out, PackedB, Precision};

/// Query rows per task: their scores (`ROWS x tokens`) stay in L2.
const ROWS: usize = 48;

thread_local! {
    /// Each worker's score buffer, reused across calls.
    static SCORES: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// `qkv: [n, 3 * heads * head_dim]` (q, then k, then v; heads contiguous within each) ->
/// `[n, heads * head_dim]`, heads side by side, as `softmax(q k^T * scale) v` per head.
pub(crate) fn attention(kernels: Isa, qkv: &[f32], n: usize, heads: usize, head_dim: usize, scale: f32) -> Vec<f32> {
    let d = heads * head_dim;
    let ld = 3 * d;
    assert_eq!(qkv.len(), n * ld, "attention: qkv is not [{n}, {ld}]");
    let packed: Vec<(PackedB, PackedB)> = (0..heads)
        .into_par_iter()
        .map(|h| {
            let keys = PackedB::from_nk(&qkv[d + h * head_dim..], n, head_dim, ld, Precision::F32);
            let values = PackedB::from_kn(&qkv[2 * d + h * head_dim..], n, head_dim, ld);
            (keys, values)
        })
        .collect();
    let mut out = vec![0f32; n * d];
    let ptr = OutPtr(out.as_mut_ptr());
    let tasks: Vec<(usize, usize)> = (0..heads).flat_map(|h| (0..n).step_by(ROWS).map(move |r| (h, r))).collect();
    tasks.par_iter().for_each(|&(h, r0)| {
        let rows = ROWS.min(n - r0);
        let (keys, values) = &packed[h];
        SCORES.with(|scores| {
            let scores = &mut *scores.borrow_mut();
            scores.resize(rows * n, 0.0);
            let q = Lhs::Rows { data: &qkv[r0 * ld + h * head_dim..], ld, rows, scale };
            let s = Out { ptr: OutPtr(scores.as_mut_ptr()), ld: n, bias: None, epilogue: Epilogue::Identity };
            // SAFETY: `scores` holds `rows x n` elements and belongs to this thread.
            unsafe { gemm::gemm_on_thread(kernels, q, keys, 0..n, s) };
            let sums = gemm::softmax_rows(kernels, &mut scores[..rows * n], n);
            let p = Lhs::Rows { data: scores, ld: n, rows, scale: 1.0 };
            // SAFETY: rows `r0..r0 + rows`, columns `h * head_dim..` of `out`: this task's
            // alone (one task per head and row block).
            let o = unsafe { ptr.add(r0 * d + h * head_dim) };
            unsafe {
                gemm::gemm_on_thread(
                    kernels,
                    p,
                    values,
                    0..head_dim,
                    Out { ptr: o, ld: d, bias: None, epilogue: Epilogue::Identity },
                )
            };
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

    /// Against an f64 attention, on a sequence longer than one row block and a head width that
    /// is not a multiple of the kernel's 16 columns.
    #[test]
    fn matches_f64_attention() {
        let (n, heads, hd) = (101, 3, 22);
        let d = heads * hd;
        let qkv: Vec<f32> = (0..n * 3 * d).map(|i| (((i * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 1.5).collect();
        let scale = (hd as f32).powf(-0.5);
        let mut kernels = vec![Isa::Portable];
        if Isa::detect() != Isa::Portable {
            kernels.push(Isa::detect());
        }
        for k in kernels {
            let got = attention(k, &qkv, n, heads, hd, scale);
            for h in 0..heads {
                for i in 0..n {
                    let at = |r: usize, part: usize, c: usize| qkv[r * 3 * d + part * d + h * hd + c] as f64;
                    let s: Vec<f64> =
                        (0..n).map(|j| (0..hd).map(|c| at(i, 0, c) * scale as f64 * at(j, 1, c)).sum()).collect();
                    let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let e: Vec<f64> = s.iter().map(|v| (v - max).exp()).collect();
                    let total: f64 = e.iter().sum();
                    for c in 0..hd {
                        let exact: f64 = (0..n).map(|j| e[j] / total * at(j, 2, c)).sum();
                        let g = got[i * d + h * hd + c] as f64;
                        assert!((g - exact).abs() <= 2e-6, "{k:?} head {h} row {i} col {c}: {g} vs {exact}");
                    }
                }
            }
        }
    }
}
