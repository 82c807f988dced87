//! Plain-Rust kernels: the reference the SIMD ones are tested against, and the path on CPUs
//! without AVX2. Each computes the outputs of one tile of eight weight rows (see `layout`) for one
//! activation row ([`ActRow`]).

use super::{layout, ActRow, BLOCK, TILE};

/// A Q8_0 tile (see `layout`): its eight outputs.
pub(super) fn q8_0_tile(w: &[u8], (yq, yd, _, _): ActRow) -> [f32; TILE] {
    let mut acc = [0f32; TILE];
    for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let (d, q) = layout::q8_0_get(&w[b * layout::Q8_0_BYTES..], r);
            let isum: i32 = q.iter().zip(y).map(|(&q, &v)| q as i32 * v as i32).sum();
            *acc += d.to_f32() * dy * isum as f32;
        }
    }
    acc
}

/// A Q4_0 tile (see `layout`): its eight outputs.
pub(super) fn q4_0_tile(w: &[u8], (yq, yd, _, _): ActRow) -> [f32; TILE] {
    let mut acc = [0f32; TILE];
    for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate() {
        for (r, acc) in acc.iter_mut().enumerate() {
            let (d, q) = layout::q4_0_get(&w[b * layout::Q4_0_BYTES..], r);
            let isum: i32 = q.iter().zip(y).map(|(&q, &v)| (q as i32 - 8) * v as i32).sum();
            *acc += d.to_f32() * dy * isum as f32;
        }
    }
    acc
}

/// A Q4_K tile: `sum_b sc_b * dy_b * sum(q * y) - mn_b * ys_b` over the 32-value sub-blocks
/// `b`, with their scales `sc` and mins `mn`.
pub(super) fn q4k_tile(w: &[u8], (yq, yd, ys, _): ActRow) -> [f32; TILE] {
    let mut acc = [0f32; TILE];
    for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate() {
        let (blk, sub) = (&w[b / 8 * layout::Q4K_BYTES..], b % 8);
        for (r, acc) in acc.iter_mut().enumerate() {
            let (sc, mn) = layout::q4k_scale_min(blk, r, sub);
            let q = layout::nibbles(&blk[layout::Q4K_QS + sub * layout::NIBBLES..], r);
            let isum: i32 = q.iter().zip(y).map(|(&q, &v)| q as i32 * v as i32).sum();
            *acc += sc * dy * isum as f32 - mn * ys[b];
        }
    }
    acc
}
