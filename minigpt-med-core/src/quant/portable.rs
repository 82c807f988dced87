//! Plain-Rust kernels: the reference the SIMD ones are tested against, and the path on CPUs
//! without AVX2. Each computes the four outputs of one row quad (see `Data`) for one activation
//! row ([`ActRow`]).

use half::f16;

use super::{q4_0_nibble, q4k_nibble, scale_index, ActRow, Q4KRaw, BLOCK};

/// A Q8_0 quad (`w: [block][4][32]`, scales `d` at [`scale_index`]), over blocks `from..`.
pub(super) fn q8_0_dot4(w: &[i8], d: &[f16], (yq, yd, _): ActRow, from: usize) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate().skip(from) {
            let x = &w[(4 * b + r) * BLOCK..(4 * b + r + 1) * BLOCK];
            let isum: i32 = x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
            acc += d[scale_index(b, r)].to_f32() * dy * isum as f32;
        }
        acc
    })
}

/// A Q4_0 quad (`w: [pair][4][32 bytes]`), over blocks `from..`.
pub(super) fn q4_0_dot4(w: &[u8], d: &[f16], (yq, yd, _): ActRow, from: usize) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate().skip(from) {
            let isum: i32 = y.iter().enumerate().map(|(j, &v)| (q4_0_nibble(w, r, b, j) as i32 - 8) * v as i32).sum();
            acc += d[scale_index(b, r)].to_f32() * dy * isum as f32;
        }
        acc
    })
}

/// A Q4_K quad (`w: [super-block][4]`): `sum_b sc_b * dy_b * sum(q * y) - mn_b * ys_b` over the
/// 32-value sub-blocks `b`, with their scales `sc` and mins `mn`.
pub(super) fn q4k_dot4(w: &[Q4KRaw], (yq, yd, ys): ActRow) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate() {
            let blk = &w[4 * (b / 8) + r];
            if b % 8 == 0 {
                blk.scales_mins(&mut sc, &mut mn);
            }
            let isum: i32 = y.iter().enumerate().map(|(j, &v)| q4k_nibble(blk, b % 8, j) as i32 * v as i32).sum();
            acc += sc[b % 8] * dy * isum as f32 - mn[b % 8] * ys[b];
        }
        acc
    })
}
