//! AVX-512 form of the GEMM micro-kernel: four [`MR`] x [`NR`] tiles (24 rows of C) per call,
//! one 512-bit register per row of C.
//!
//! CPUs with full-width 512-bit FMA units (Zen 5, Intel since Skylake-SP) run twice the f32
//! FLOPs per cycle of AVX2's 256-bit FMAs; on Zen 4, which splits a 512-bit FMA in two, it
//! runs at the AVX2 tile's rate. Each element of C takes the same FMAs in the same order as
//! in the AVX2 tile (from zero, depth by depth; the bias or the previous C added after, GELU
//! by the AVX2 code on each half), so the products are bit for bit AVX2's.

use std::arch::x86_64::*;

use super::{Tile, MR, NR};

/// Rows of C per call: four packed A panels of [`MR`] rows, which lie one after another in a
/// packed block (`[panels][kc][MR]`).
pub(super) const ROWS: usize = 4 * MR;

/// `ROWS x NR` of C: `kc` steps over four consecutive packed A panels (`[4][kc][MR]` from
/// `a`) and f32 B (`[kc][NR]`, 64-byte aligned rows).
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX512F; `a` and `b` valid for `4 * kc * MR` and
/// `kc * NR` reads; `t` covers `ROWS` full rows of `NR` columns (`t.mr == ROWS`, `t.nr == NR`),
/// valid for reads and writes, and `t.bias` (when `t.first`) `NR` reads.
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn kernel(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tiles::<false>(kc, a, b, t) }
}

/// [`kernel`] over f16 B (`[kc][NR]` halves, 32-byte aligned rows), widened by F16C.
///
/// # Safety
/// As for [`kernel`].
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn kernel_f16(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tiles::<true>(kc, a, b, t) }
}

/// The body of [`kernel`] and [`kernel_f16`].
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c,avx512f` function, whose caller checked the CPU;
/// the pointers cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn tiles<const HALF: bool>(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA,
    // F16C and AVX512F; the pointers cover the ranges it names).
    unsafe {
        debug_assert!(t.mr == ROWS && t.nr == NR);
        // The C rows are read after the loop: start fetching them now (a row spans two lines
        // at most).
        if !t.first {
            for i in 0..ROWS {
                let row = t.c.add(i * t.ldc) as *const i8;
                _mm_prefetch::<_MM_HINT_T0>(row);
                _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(4 * NR - 4));
            }
        }
        for l in 0..t.next_lines {
            _mm_prefetch::<_MM_HINT_T1>(t.next.wrapping_add(64 * l).cast::<i8>());
        }
        let mut acc = [_mm512_setzero_ps(); ROWS];
        for p in 0..kc {
            let bv = if HALF {
                _mm512_cvtph_ps(_mm256_load_si256(b.cast::<__m256i>().add(p)))
            } else {
                _mm512_load_ps(b.cast::<f32>().add(p * NR))
            };
            for q in 0..ROWS / MR {
                let ap = a.add((q * kc + p) * MR);
                for i in 0..MR {
                    let r = q * MR + i;
                    acc[r] = _mm512_fmadd_ps(_mm512_set1_ps(*ap.add(i)), bv, acc[r]);
                }
            }
        }
        for (i, v) in acc.into_iter().enumerate() {
            let row = t.c.add(i * t.ldc);
            let v = match (t.first, t.bias) {
                (true, Some(bias)) => _mm512_add_ps(v, _mm512_loadu_ps(bias)),
                (true, None) => v,
                (false, _) => _mm512_add_ps(v, _mm512_loadu_ps(row)),
            };
            if t.gelu {
                let lo = super::avx2::gelu8(_mm512_castps512_ps256(v));
                let hi = super::avx2::gelu8(_mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v))));
                _mm256_storeu_ps(row, lo);
                _mm256_storeu_ps(row.add(8), hi);
            } else {
                _mm512_storeu_ps(row, v);
            }
        }
    }
}
