//! AVX2 + FMA + F16C kernels (x86-64 since Haswell / Zen 1), chosen at run time.
//!
//! Both kernels take four weight rows against one activation row: each activation block is
//! loaded once for four rows, and the four accumulators are independent chains, so the FMA
//! latency is hidden. Scales of eight blocks widen at once (`vcvtph2ps`) and are multiplied by
//! the eight activation scales; each block then broadcasts its lane with `vpermps`.

use std::arch::x86_64::*;

use half::f16;

use super::{ActRow, Q4KRaw, BLOCK};

/// How far ahead (bytes) the weight stream is prefetched: the hardware prefetcher alone left
/// decode at ~60 % of the memory bandwidth (measured: Q4_0 decode 13.6 -> 9.9 ms per layer).
/// Prefetches use `wrapping_add`: past the end they are harmless hints, never dereferenced.
const PREFETCH: usize = 4096;

/// Prefetches `lines` cache lines starting [`PREFETCH`] bytes after `p`.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn prefetch<T>(p: *const T, lines: usize) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let p = (p as *const i8).wrapping_add(PREFETCH);
        for l in 0..lines {
            _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * l));
        }
    }
}

/// The sum of the eight lanes of `v`.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// See `portable::q8_0_dot4`. Products use `vpmaddubsw`, which wants one unsigned operand:
/// |w| times y with w's sign moved onto y (Q8_0 never holds -128, so |w| fits in a byte and a
/// pair sums to at most 2 * 127 * 127, within i16).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `w` and `d` form one quad of a matrix whose rows hold
/// `yq.len()` values.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_dot4(w: &[i8], d: &[f16], y: ActRow) -> [f32; 4] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let (yq, yd, _) = y;
        let nb = yd.len();
        assert!(yq.len() == nb * BLOCK && w.len() == 4 * nb * BLOCK && d.len() >= nb / 8 * 32);
        let (wp, dp, yq, yd) = (w.as_ptr(), d.as_ptr() as *const __m128i, yq.as_ptr(), yd.as_ptr());
        let ones = _mm256_set1_epi16(1);
        let (mut a0, mut a1, mut a2, mut a3) =
            (_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps());
        for g in 0..nb / 8 {
            let dy = _mm256_loadu_ps(yd.add(8 * g));
            let s = |r: usize| _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(dp.add(4 * g + r))), dy);
            let (s0, s1, s2, s3) = (s(0), s(1), s(2), s(3));
            macro_rules! block {
                ($j:literal) => {{
                    let b = 8 * g + $j;
                    let yv = _mm256_loadu_si256(yq.add(b * BLOCK) as *const __m256i);
                    let lane = _mm256_set1_epi32($j);
                    prefetch(wp.add(4 * b * BLOCK), 2);
                    let dot = |r: usize| {
                        let x = _mm256_loadu_si256(wp.add((4 * b + r) * BLOCK) as *const __m256i);
                        let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(yv, x));
                        _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones))
                    };
                    a0 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s0, lane), dot(0), a0);
                    a1 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s1, lane), dot(1), a1);
                    a2 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s2, lane), dot(2), a2);
                    a3 = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s3, lane), dot(3), a3);
                }};
            }
            block!(0);
            block!(1);
            block!(2);
            block!(3);
            block!(4);
            block!(5);
            block!(6);
            block!(7);
        }
        // The last (fewer than eight) blocks of rows that are not a multiple of 256 long.
        let tail = super::portable::q8_0_dot4(w, d, y, nb / 8 * 8);
        [hsum(a0) + tail[0], hsum(a1) + tail[1], hsum(a2) + tail[2], hsum(a3) + tail[3]]
    }
}

/// The block pairs of one group of eight blocks for `N` activation rows at once: each unpacked
/// weight pair serves every row, and the per-block scales are broadcast straight from memory
/// (`sa[i][r]`: the eight scales of weight row `r` times those of activation `i`). `wq(r, p)`
/// points at pair `p` of weight row `r` in the group; `y[i]` at the group in activation `i`.
/// The nibbles stay unsigned for `vpmaddubsw`; the callers take any offset off separately.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn pairs<const N: usize>(
    wq: impl Fn(usize, usize) -> *const u8,
    y: [*const i8; N],
    sa: &[[[f32; 8]; 4]; N],
    acc: &mut [[__m256; 4]; N],
) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let low = _mm256_set1_epi8(0x0F);
        for p in 0..4 {
            let yv: [[__m256i; 2]; N] = std::array::from_fn(|i| {
                std::array::from_fn(|h| _mm256_loadu_si256(y[i].add((2 * p + h) * BLOCK) as *const __m256i))
            });
            for r in 0..4 {
                let bytes = _mm256_loadu_si256(wq(r, p) as *const __m256i);
                let lo = _mm256_and_si256(bytes, low);
                let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
                for i in 0..N {
                    let p0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, yv[i][0]), ones));
                    let p1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, yv[i][1]), ones));
                    acc[i][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sa[i][r][2 * p]), p0, acc[i][r]);
                    acc[i][r] = _mm256_fmadd_ps(_mm256_broadcast_ss(&sa[i][r][2 * p + 1]), p1, acc[i][r]);
                }
            }
        }
    }
}

/// See `portable::q4_0_dot4`, for `N` activation rows (1 to decode, 2 in the prefill). The
/// offset of 8 is taken off once per eight blocks as `8 * d * ys` (lane-wise, before the sum).
///
/// # Safety
/// As [`q8_0_dot4`], for every row; `w` holds the quad's block pairs.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0_dots<const N: usize>(w: &[u8], d: &[f16], y: [ActRow; N]) -> [[f32; 4]; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let nb = y[0].1.len();
        for (yq, yd, ys) in y {
            assert!(nb % 2 == 0 && yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
        }
        assert!(w.len() == 2 * nb * BLOCK && d.len() >= nb / 8 * 32);
        let (wp, dp) = (w.as_ptr(), d.as_ptr() as *const __m128i);
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut sa = [[[0f32; 8]; 4]; N];
        for g in 0..nb / 8 {
            // A group is four pairs of four rows of 32 bytes: eight cache lines, one stream.
            let group = wp.add(16 * g * BLOCK);
            prefetch(group, 8);
            for r in 0..4 {
                let e = _mm256_cvtph_ps(_mm_loadu_si128(dp.add(4 * g + r)));
                for i in 0..N {
                    let (dy, sy) =
                        (_mm256_loadu_ps(y[i].1.as_ptr().add(8 * g)), _mm256_loadu_ps(y[i].2.as_ptr().add(8 * g)));
                    _mm256_storeu_ps(sa[i][r].as_mut_ptr(), _mm256_mul_ps(e, dy));
                    acc[i][r] = _mm256_fnmadd_ps(_mm256_mul_ps(e, _mm256_set1_ps(8.0)), sy, acc[i][r]);
                }
            }
            let yq = std::array::from_fn(|i| y[i].0.as_ptr().add(8 * g * BLOCK));
            pairs(|r, p| group.add((4 * p + r) * BLOCK), yq, &sa, &mut acc);
        }
        std::array::from_fn(|i| {
            // The last (fewer than eight) blocks of rows that are not a multiple of 256 long.
            let tail = super::portable::q4_0_dot4(w, d, y[i], nb / 8 * 8);
            std::array::from_fn(|r| hsum(acc[i][r]) + tail[r])
        })
    }
}

/// Q4_K's eight 6-bit sub-block scales and mins (packed in 12 bytes), widened and multiplied
/// by the super-block's `d` and `dmin`: llama.cpp's bit shuffle on three 32-bit words.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn q4k_scales_mins(blk: &Q4KRaw) -> (__m256, __m256) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        const M6: u32 = 0x3f3f_3f3f;
        const M4: u32 = 0x0f0f_0f0f;
        const M2: u32 = 0x0303_0303;
        let s = &blk.scales;
        let u = |i: usize| u32::from_le_bytes([s[4 * i], s[4 * i + 1], s[4 * i + 2], s[4 * i + 3]]);
        let (u0, u1, u2) = (u(0), u(1), u(2));
        let scales_lo = u0 & M6;
        let scales_hi = (u2 & M4) | (((u0 >> 6) & M2) << 4);
        let mins_lo = u1 & M6;
        let mins_hi = ((u2 >> 4) & M4) | (((u1 >> 6) & M2) << 4);
        let packed = _mm_set_epi32(mins_hi as i32, mins_lo as i32, scales_hi as i32, scales_lo as i32);
        let sc = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(packed));
        let mn = _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(packed)));
        // d and dmin are the block's first two f16s.
        let bits = u32::from(blk.d.to_bits()) | (u32::from(blk.dmin.to_bits()) << 16);
        let dd = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
        let d = _mm256_broadcastss_ps(dd);
        let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dd));
        (_mm256_mul_ps(sc, d), _mm256_mul_ps(mn, dmin))
    }
}

/// See `portable::q4k_dot4`, for `N` activation rows: the Q4_0 kernel with each super-block's
/// scales and mins widened once for all rows (Q4_K's nibbles are already in the pair layout, a
/// super-block per group of eight blocks; a quad's four super-blocks of a group are adjacent).
///
/// # Safety
/// As [`q8_0_dot4`], for every row; `w` holds the quad's `4 * yq.len() / 256` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4k_dots<const N: usize>(w: &[Q4KRaw], y: [ActRow; N]) -> [[f32; 4]; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let nb = y[0].1.len();
        for (yq, yd, ys) in y {
            assert!(nb % 8 == 0 && yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
        }
        assert!(w.len() == nb / 2);
        let mut acc = [[_mm256_setzero_ps(); 4]; N];
        let mut sa = [[[0f32; 8]; 4]; N];
        for g in 0..nb / 8 {
            let blk = w.as_ptr().add(4 * g);
            prefetch(blk, 9);
            for r in 0..4 {
                let (sc, mn) = q4k_scales_mins(&*blk.add(r));
                for i in 0..N {
                    let (dy, sy) =
                        (_mm256_loadu_ps(y[i].1.as_ptr().add(8 * g)), _mm256_loadu_ps(y[i].2.as_ptr().add(8 * g)));
                    _mm256_storeu_ps(sa[i][r].as_mut_ptr(), _mm256_mul_ps(sc, dy));
                    acc[i][r] = _mm256_fnmadd_ps(mn, sy, acc[i][r]);
                }
            }
            let yq = std::array::from_fn(|i| y[i].0.as_ptr().add(8 * g * BLOCK));
            pairs(|r, p| (*blk.add(r)).qs.as_ptr().add(p * BLOCK), yq, &sa, &mut acc);
        }
        std::array::from_fn(|i| std::array::from_fn(|r| hsum(acc[i][r])))
    }
}
