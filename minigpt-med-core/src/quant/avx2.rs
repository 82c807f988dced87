//! AVX2 + FMA + F16C kernels (x86-64 since Haswell / Zen 1), chosen at run time.
//!
//! Both kernels take four weight rows against one activation row: each activation block is
//! loaded once for four rows, and the four accumulators are independent chains, so the FMA
//! latency is hidden. Scales of eight blocks widen at once (`vcvtph2ps`) and are multiplied by
//! the eight activation scales; each block then broadcasts its lane with `vpermps`.

use std::arch::x86_64::*;

use half::f16;

use super::{ActRow, Q4KRaw, BLOCK};

/// Whether this CPU runs these kernels.
pub(super) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

#[inline(always)]
unsafe fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

/// Eight f16 scales from `d` times eight f32 activation scales `yd`.
#[inline(always)]
unsafe fn scales8(d: *const f16, yd: __m256) -> __m256 {
    _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(d as *const __m128i)), yd)
}

/// See `portable::q8_0_dot4`. Products use `vpmaddubsw`, which wants one unsigned operand:
/// |w| times y with w's sign moved onto y (Q8_0 never holds -128, so |w| fits in a byte and a
/// pair sums to at most 2 * 127 * 127, within i16).
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; rows hold `yq.len()` values, a multiple of 256.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q8_0_dot4(w: [&[i8]; 4], d: [&[f16]; 4], y: ActRow) -> [f32; 4] {
    let (yq, yd, _) = y;
    let nb = yd.len();
    debug_assert!(yq.len() == nb * BLOCK);
    debug_assert!(w.iter().all(|w| w.len() == yq.len()) && d.iter().all(|d| d.len() == nb));
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    for g in 0..nb / 8 {
        let dy = _mm256_loadu_ps(yd.as_ptr().add(8 * g));
        let s: [__m256; 4] = std::array::from_fn(|r| scales8(d[r].as_ptr().add(8 * g), dy));
        for j in 0..8 {
            let b = 8 * g + j;
            let y = _mm256_loadu_si256(yq.as_ptr().add(b * BLOCK) as *const __m256i);
            let lane = _mm256_set1_epi32(j as i32);
            for r in 0..4 {
                let x = _mm256_loadu_si256(w[r].as_ptr().add(b * BLOCK) as *const __m256i);
                let p = _mm256_maddubs_epi16(_mm256_sign_epi8(x, x), _mm256_sign_epi8(y, x));
                let p = _mm256_cvtepi32_ps(_mm256_madd_epi16(p, ones));
                acc[r] = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s[r], lane), p, acc[r]);
            }
        }
    }
    // The last (fewer than eight) blocks of rows that are not a multiple of 256 long.
    let tail = super::portable::q8_0_dot4(w, d, y, nb / 8 * 8);
    std::array::from_fn(|r| hsum(acc[r]) + tail[r])
}

/// Unsigned nibbles (0..15) of one block pair (32 bytes) times two activation blocks, each
/// block's integer sum scaled by its lane of `s` and added to `acc`.
#[inline(always)]
unsafe fn nibble_pair(
    bytes: *const u8,
    y0: __m256i,
    y1: __m256i,
    s: __m256,
    l0: __m256i,
    l1: __m256i,
    acc: __m256,
) -> __m256 {
    let ones = _mm256_set1_epi16(1);
    let low = _mm256_set1_epi8(0x0F);
    let bytes = _mm256_loadu_si256(bytes as *const __m256i);
    let lo = _mm256_and_si256(bytes, low);
    let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
    let p0 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(lo, y0), ones));
    let p1 = _mm256_cvtepi32_ps(_mm256_madd_epi16(_mm256_maddubs_epi16(hi, y1), ones));
    let acc = _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s, l0), p0, acc);
    _mm256_fmadd_ps(_mm256_permutevar8x32_ps(s, l1), p1, acc)
}

/// See `portable::q4_0_dot4`. The nibbles stay unsigned for `vpmaddubsw`; the offset of 8 is
/// taken off once per eight blocks as `8 * d * ys` (lane-wise, before the final sum).
///
/// # Safety
/// As [`q8_0_dot4`]; weight rows hold `yq.len() / 2` bytes in the pair layout.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn q4_0_dot4(w: [&[u8]; 4], d: [&[f16]; 4], y: ActRow) -> [f32; 4] {
    let (yq, yd, ys) = y;
    let nb = yd.len();
    debug_assert!(nb % 2 == 0 && yq.len() == nb * BLOCK && ys.len() == nb);
    debug_assert!(w.iter().all(|w| 2 * w.len() == yq.len()) && d.iter().all(|d| d.len() == nb));
    let eight = _mm256_set1_ps(8.0);
    let mut acc = [_mm256_setzero_ps(); 4];
    for g in 0..nb / 8 {
        let dy = _mm256_loadu_ps(yd.as_ptr().add(8 * g));
        let sy = _mm256_loadu_ps(ys.as_ptr().add(8 * g));
        let mut s = [_mm256_setzero_ps(); 4];
        for r in 0..4 {
            let dw = _mm256_cvtph_ps(_mm_loadu_si128(d[r].as_ptr().add(8 * g) as *const __m128i));
            s[r] = _mm256_mul_ps(dw, dy);
            acc[r] = _mm256_fnmadd_ps(_mm256_mul_ps(dw, eight), sy, acc[r]);
        }
        for p in 0..4 {
            let b = 8 * g + 2 * p;
            let y0 = _mm256_loadu_si256(yq.as_ptr().add(b * BLOCK) as *const __m256i);
            let y1 = _mm256_loadu_si256(yq.as_ptr().add((b + 1) * BLOCK) as *const __m256i);
            let (l0, l1) = (_mm256_set1_epi32(2 * p as i32), _mm256_set1_epi32(2 * p as i32 + 1));
            for r in 0..4 {
                acc[r] = nibble_pair(w[r].as_ptr().add(b * BLOCK / 2), y0, y1, s[r], l0, l1, acc[r]);
            }
        }
    }
    // The last (fewer than eight) blocks of rows that are not a multiple of 256 long.
    let tail = super::portable::q4_0_dot4(w, d, y, nb / 8 * 8);
    std::array::from_fn(|r| hsum(acc[r]) + tail[r])
}

/// Q4_K's eight 6-bit sub-block scales and mins (packed in 12 bytes), widened and multiplied
/// by the super-block's `d` and `dmin`: llama.cpp's bit shuffle on three 32-bit words.
#[inline(always)]
unsafe fn q4k_scales_mins(blk: &Q4KRaw) -> (__m256, __m256) {
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

/// See `portable::q4k_dot4`: the Q4_0 kernel with each super-block's scales and mins widened in
/// registers (Q4_K's nibbles are already in the pair layout, a super-block per group of eight
/// blocks).
///
/// # Safety
/// As [`q8_0_dot4`]; `w[r]` holds `yq.len() / 256` super-blocks.
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // `g` indexes the super-blocks of four rows at once
pub(super) unsafe fn q4k_dot4(w: [&[Q4KRaw]; 4], (yq, yd, ys): ActRow) -> [f32; 4] {
    let nb = yd.len();
    debug_assert!(nb % 8 == 0 && yq.len() == nb * BLOCK && ys.len() == nb);
    debug_assert!(w.iter().all(|w| 8 * w.len() == nb));
    let mut acc = [_mm256_setzero_ps(); 4];
    for g in 0..nb / 8 {
        let dy = _mm256_loadu_ps(yd.as_ptr().add(8 * g));
        let sy = _mm256_loadu_ps(ys.as_ptr().add(8 * g));
        let mut s = [_mm256_setzero_ps(); 4];
        for r in 0..4 {
            let (sc, mn) = q4k_scales_mins(&w[r][g]);
            s[r] = _mm256_mul_ps(sc, dy);
            acc[r] = _mm256_fnmadd_ps(mn, sy, acc[r]);
        }
        for p in 0..4 {
            let b = 8 * g + 2 * p;
            let y0 = _mm256_loadu_si256(yq.as_ptr().add(b * BLOCK) as *const __m256i);
            let y1 = _mm256_loadu_si256(yq.as_ptr().add((b + 1) * BLOCK) as *const __m256i);
            let (l0, l1) = (_mm256_set1_epi32(2 * p as i32), _mm256_set1_epi32(2 * p as i32 + 1));
            for r in 0..4 {
                acc[r] = nibble_pair(w[r][g].qs.as_ptr().add(p * BLOCK), y0, y1, s[r], l0, l1, acc[r]);
            }
        }
    }
    [hsum(acc[0]), hsum(acc[1]), hsum(acc[2]), hsum(acc[3])]
}
