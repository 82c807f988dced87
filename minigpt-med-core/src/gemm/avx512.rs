//! AVX-512 form of the GEMM micro-kernel: a 12 x 32 block of C (two [`MR`]-row A panels
//! against two [`NR`]-column weight panels) per call, in 24 512-bit registers.
//!
//! CPUs with full-width 512-bit FMA units (Zen 5, Intel since Skylake-SP) run twice the f32
//! FLOPs per cycle of AVX2's 256-bit FMAs; Zen 4 splits a 512-bit FMA in two. Per depth step
//! the block takes two weight loads and twelve broadcasts for its 24 FMAs (a 24 x 16 block,
//! four A panels against one weight panel, needs 25 loads and ran 20-25 % slower on Zen 5).
//! Each element of C takes the same FMAs in the same order as in the AVX2 tile (from zero,
//! depth by depth; the bias or the previous C added after, GELU by the AVX2 code on each
//! half), so the products are bit for bit AVX2's.

use std::arch::x86_64::*;

use super::{Tile, MR, NR};

/// Rows of C per call: two packed A panels of [`MR`] rows, which lie one after another in a
/// packed block (`[panels][kc][MR]`).
pub(super) const ROWS: usize = 2 * MR;
/// Columns of C per call: two weight panels, `bstride` bytes apart.
pub(super) const COLS: usize = 2 * NR;

/// `ROWS x COLS` of C: `kc` steps over two consecutive packed A panels (`[2][kc][MR]` from
/// `a`) and two f32 weight panels (`[kc][NR]` each, 64-byte aligned rows, the second
/// `bstride` bytes after the first).
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C and AVX512F; `a` valid for `2 * kc * MR` reads, `b` and
/// `b + bstride` for `kc` panel rows each; `t` covers `ROWS` full rows of `COLS` columns
/// (`t.mr == ROWS`, `t.nr == COLS`), valid for reads and writes, and `t.bias` (when `t.first`)
/// `COLS` reads. `t.next` is only prefetched (here and `bstride` bytes further).
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn kernel(kc: usize, a: *const f32, b: *const u8, bstride: usize, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tiles::<false>(kc, a, b, bstride, t) }
}

/// [`kernel`] over f16 B (`[kc][NR]` halves, 32-byte aligned rows), widened by F16C.
///
/// # Safety
/// As for [`kernel`].
#[target_feature(enable = "avx2,fma,f16c,avx512f")]
pub(super) unsafe fn kernel_f16(kc: usize, a: *const f32, b: *const u8, bstride: usize, t: &Tile) {
    // SAFETY: this function's contract is the kernel's.
    unsafe { tiles::<true>(kc, a, b, bstride, t) }
}

/// The body of [`kernel`] and [`kernel_f16`].
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c,avx512f` function, whose caller checked the CPU;
/// the pointers cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn tiles<const HALF: bool>(kc: usize, a: *const f32, b: *const u8, bstride: usize, t: &Tile) {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA,
    // F16C and AVX512F; the pointers cover the ranges it names).
    unsafe {
        debug_assert!(t.mr == ROWS && t.nr == COLS);
        if !t.first {
            for i in 0..ROWS {
                let row = t.c.add(i * t.ldc) as *const i8;
                for c in 0..COLS / NR {
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * c));
                    _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(64 * c + 4 * NR - 4));
                }
            }
        }
        const P: usize = COLS / NR;
        // The same share of each panel of the next pair.
        for l in 0..t.next_lines {
            for c in 0..P {
                _mm_prefetch::<_MM_HINT_T1>(t.next.wrapping_add(c * bstride + 64 * l).cast::<i8>());
            }
        }
        let mut acc = [[_mm512_setzero_ps(); P]; ROWS];
        for p in 0..kc {
            let mut bv = [_mm512_setzero_ps(); P];
            for (c, v) in bv.iter_mut().enumerate() {
                let bc = b.add(c * bstride);
                *v = if HALF {
                    _mm512_cvtph_ps(_mm256_load_si256(bc.cast::<__m256i>().add(p)))
                } else {
                    _mm512_load_ps(bc.cast::<f32>().add(p * NR))
                };
            }
            for q in 0..ROWS / MR {
                let ap = a.add((q * kc + p) * MR);
                for i in 0..MR {
                    let r = q * MR + i;
                    let av = _mm512_set1_ps(*ap.add(i));
                    for c in 0..P {
                        acc[r][c] = _mm512_fmadd_ps(av, bv[c], acc[r][c]);
                    }
                }
            }
        }
        for (i, vs) in acc.into_iter().enumerate() {
            for (c, v) in vs.into_iter().enumerate() {
                let row = t.c.add(i * t.ldc + c * NR);
                let v = match (t.first, t.bias) {
                    (true, Some(bias)) => _mm512_add_ps(v, _mm512_loadu_ps(bias.add(c * NR))),
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
}
