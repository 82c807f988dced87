//! Plain-Rust kernels: the reference the SIMD ones are tested against, and the path on CPUs
//! without AVX2. Each takes four weight rows and one activation row ([`ActRow`]).

use half::f16;

use super::{q4_0_nibble, ActRow, Q4KRaw, BLOCK};

/// Q8_0 rows `w[r]: [kp]` with scales `d[r]: [kp / 32]`, over blocks `from..`.
pub(super) fn q8_0_dot4(w: [&[i8]; 4], d: [&[f16]; 4], (yq, yd, _): ActRow, from: usize) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate().skip(from) {
            let x = &w[r][b * BLOCK..(b + 1) * BLOCK];
            let isum: i32 = x.iter().zip(y).map(|(&a, &b)| a as i32 * b as i32).sum();
            acc += d[r][b].to_f32() * dy * isum as f32;
        }
        acc
    })
}

/// Q4_0 rows in the pair layout (`w[r]: [kp / 2]`), scales `d[r]: [kp / 32]`, over blocks
/// `from..`.
pub(super) fn q4_0_dot4(w: [&[u8]; 4], d: [&[f16]; 4], (yq, yd, _): ActRow, from: usize) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate().skip(from) {
            let isum: i32 =
                y.iter().enumerate().map(|(j, &v)| (q4_0_nibble(w[r], b * BLOCK + j) as i32 - 8) * v as i32).sum();
            acc += d[r][b].to_f32() * dy * isum as f32;
        }
        acc
    })
}

/// Q4_K rows (`w[r]: [kp / 256]` super-blocks): `sum_b sc_b * dy_b * sum(q * y) - mn_b * ys_b`
/// over the 32-value sub-blocks `b`, with their scales `sc` and mins `mn`.
pub(super) fn q4k_dot4(w: [&[Q4KRaw]; 4], (yq, yd, ys): ActRow) -> [f32; 4] {
    std::array::from_fn(|r| {
        let mut acc = 0f32;
        let (mut sc, mut mn) = ([0f32; 8], [0f32; 8]);
        for (b, (&dy, y)) in yd.iter().zip(yq.chunks_exact(BLOCK)).enumerate() {
            let blk = &w[r][b / 8];
            if b % 8 == 0 {
                blk.scales_mins(&mut sc, &mut mn);
            }
            let isum: i32 =
                y.iter().enumerate().map(|(j, &v)| q4_0_nibble(&blk.qs, (b % 8) * BLOCK + j) as i32 * v as i32).sum();
            acc += sc[b % 8] * dy * isum as f32 - mn[b % 8] * ys[b];
        }
        acc
    })
}
