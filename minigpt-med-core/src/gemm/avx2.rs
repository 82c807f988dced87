//! AVX2 + FMA forms of the GEMM micro-kernel and of `math.rs`'s functions.

use std::arch::x86_64::*;

use super::math::{ERF_A, ERF_P, EXP_MAX, EXP_MIN, EXP_POLY, LN2_HI, LN2_LO, LOG2E};
use super::{store_tile, Tile, MR, NR};

/// `MR x NR` tile: `kc` steps over packed A (`[kc][MR]`) and f32 B (`[kc][NR]`, 64-byte
/// aligned rows), the whole tile in twelve registers; bias and GELU applied before the store.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `a` and `b` valid for `kc * MR` and `kc * NR` reads;
/// `t` as for [`store_tile`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kernel(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tile_kernel::<false>(kc, a, b, t) }
}

/// [`kernel`] over f16 B (`[kc][NR]` halves, 32-byte aligned rows), widened by F16C.
///
/// # Safety
/// As for [`kernel`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn kernel_f16(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tile_kernel::<true>(kc, a, b, t) }
}

/// The body of [`kernel`] and [`kernel_f16`].
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn tile_kernel<const HALF: bool>(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        // The C tile is read after the loop: start fetching it now (a row spans two lines at most).
        if !t.first {
            for i in 0..t.mr {
                let row = t.c.add(i * t.ldc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(4 * NR - 4));
            }
        }
        for l in 0..t.next_lines {
            _mm_prefetch::<_MM_HINT_T1>(t.next.wrapping_add(64 * l).cast::<i8>());
        }
        let mut acc = [_mm256_setzero_ps(); 2 * MR];
        for p in 0..kc {
            let (b0, b1) = panel_row::<HALF>(b, p);
            let ap = a.add(p * MR);
            for i in 0..MR {
                let ai = _mm256_broadcast_ss(&*ap.add(i));
                acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
            }
        }
        if t.mr < MR || t.nr < NR {
            let mut buf = [0f32; MR * NR];
            for (i, v) in acc.iter().enumerate() {
                _mm256_storeu_ps(buf.as_mut_ptr().add(8 * i), *v);
            }
            return store_tile(&buf, t);
        }
        for i in 0..MR {
            let row = t.c.add(i * t.ldc);
            let (mut lo, mut hi) = (acc[2 * i], acc[2 * i + 1]);
            match (t.first, t.bias) {
                (true, Some(bias)) => {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(bias));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(bias.add(8)));
                }
                (true, None) => {}
                (false, _) => {
                    lo = _mm256_add_ps(lo, _mm256_loadu_ps(row));
                    hi = _mm256_add_ps(hi, _mm256_loadu_ps(row.add(8)));
                }
            }
            if t.gelu {
                lo = gelu8(lo);
                hi = gelu8(hi);
            }
            _mm256_storeu_ps(row, lo);
            _mm256_storeu_ps(row.add(8), hi);
        }
    }
}

/// Row `p` of a panel (f32, or f16 widened by F16C), as two registers of eight columns.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn panel_row<const HALF: bool>(b: *const u8, p: usize) -> (__m256, __m256) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        if HALF {
            let h = b.cast::<__m128i>().add(2 * p);
            (_mm256_cvtph_ps(_mm_load_si128(h)), _mm256_cvtph_ps(_mm_load_si128(h.add(1))))
        } else {
            let f = b.cast::<f32>().add(p * NR);
            (_mm256_load_ps(f), _mm256_load_ps(f.add(8)))
        }
    }
}

/// `super::gemv_portable` on AVX2: four k steps at a time into four pairs of accumulators.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C; `b` valid for `x.len()` panel rows.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn gemv_panel(x: &[f32], b: *const u8, half: bool) -> [f32; NR] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        if half {
            gemv::<true>(x, b)
        } else {
            gemv::<false>(x, b)
        }
    }
}

/// The body of [`gemv_panel`].
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn gemv<const HALF: bool>(x: &[f32], b: *const u8) -> [f32; NR] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let (k, xp) = (x.len(), x.as_ptr());
        let mut acc = [_mm256_setzero_ps(); 8];
        let steps = k / 4 * 4;
        for p in (0..steps).step_by(4) {
            for u in 0..4 {
                let xv = _mm256_broadcast_ss(&*xp.add(p + u));
                let (b0, b1) = panel_row::<HALF>(b, p + u);
                acc[2 * u] = _mm256_fmadd_ps(xv, b0, acc[2 * u]);
                acc[2 * u + 1] = _mm256_fmadd_ps(xv, b1, acc[2 * u + 1]);
            }
        }
        for p in steps..k {
            let xv = _mm256_broadcast_ss(&*xp.add(p));
            let (b0, b1) = panel_row::<HALF>(b, p);
            acc[0] = _mm256_fmadd_ps(xv, b0, acc[0]);
            acc[1] = _mm256_fmadd_ps(xv, b1, acc[1]);
        }
        let lo = _mm256_add_ps(_mm256_add_ps(acc[0], acc[2]), _mm256_add_ps(acc[4], acc[6]));
        let hi = _mm256_add_ps(_mm256_add_ps(acc[1], acc[3]), _mm256_add_ps(acc[5], acc[7]));
        let mut out = [0f32; NR];
        _mm256_storeu_ps(out.as_mut_ptr(), lo);
        _mm256_storeu_ps(out.as_mut_ptr().add(8), hi);
        out
    }
}

/// Eight lanes of `math::exp`.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn exp8(x: __m256) -> __m256 {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let x = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_MIN)), _mm256_set1_ps(EXP_MAX));
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
            x,
            _mm256_set1_ps(LOG2E),
        ));
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_HI), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(LN2_LO), r);
        let mut p = _mm256_setzero_ps();
        for c in EXP_POLY {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let one = _mm256_set1_ps(1.0);
        let p = _mm256_fmadd_ps(_mm256_fmadd_ps(p, r, one), r, one);
        let scale = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
        _mm256_mul_ps(p, _mm256_castsi256_ps(scale))
    }
}

/// Eight lanes of `math::gelu`.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
pub(super) unsafe fn gelu8(x: __m256) -> __m256 {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let sign = _mm256_set1_ps(-0.0);
        let z = _mm256_andnot_ps(sign, _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::FRAC_1_SQRT_2)));
        let one = _mm256_set1_ps(1.0);
        let t = _mm256_div_ps(one, _mm256_fmadd_ps(_mm256_set1_ps(ERF_P), z, one));
        let mut poly = _mm256_setzero_ps();
        for a in ERF_A.iter().rev() {
            poly = _mm256_fmadd_ps(poly, t, _mm256_set1_ps(*a));
        }
        let poly = _mm256_mul_ps(poly, t);
        let e = exp8(_mm256_mul_ps(_mm256_xor_ps(z, sign), z));
        let erf = _mm256_fnmadd_ps(poly, e, one);
        // erf takes x's sign (z is |x| / sqrt 2).
        let erf = _mm256_or_ps(erf, _mm256_and_ps(x, sign));
        _mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5), x), _mm256_add_ps(one, erf))
    }
}

/// `row = exp(row - max(row))`, returning the sum (see `math::softmax_rows`).
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn exp_row(row: &mut [f32]) -> f32 {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let (body, tail) = row.split_at_mut(row.len() / 8 * 8);
        let mut vmax = _mm256_set1_ps(f32::NEG_INFINITY);
        for c in body.chunks_exact(8) {
            vmax = _mm256_max_ps(vmax, _mm256_loadu_ps(c.as_ptr()));
        }
        let mut lanes = [0f32; 8];
        _mm256_storeu_ps(lanes.as_mut_ptr(), vmax);
        let max = lanes.iter().chain(tail.iter()).copied().fold(f32::NEG_INFINITY, f32::max);
        let vm = _mm256_set1_ps(max);
        let mut vsum = _mm256_setzero_ps();
        for c in body.chunks_exact_mut(8) {
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(c.as_ptr()), vm));
            _mm256_storeu_ps(c.as_mut_ptr(), e);
            vsum = _mm256_add_ps(vsum, e);
        }
        _mm256_storeu_ps(lanes.as_mut_ptr(), vsum);
        let mut sum: f32 = lanes.iter().sum();
        for v in tail {
            *v = super::math::exp(*v - max);
            sum += *v;
        }
        sum
    }
}

/// `math::gelu` over a slice.
///
/// # Safety
/// The CPU must have AVX2 and FMA.
#[cfg(test)]
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn gelu_slice(x: &mut [f32]) {
    let mut chunks = x.chunks_exact_mut(8);
    for c in &mut chunks {
        // SAFETY: `c` holds 8 values; the CPU has AVX2 and FMA per the contract.
        unsafe { _mm256_storeu_ps(c.as_mut_ptr(), gelu8(_mm256_loadu_ps(c.as_ptr()))) };
    }
    for v in chunks.into_remainder() {
        *v = super::math::gelu(*v);
    }
}
