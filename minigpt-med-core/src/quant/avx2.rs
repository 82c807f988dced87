//! AVX2 + FMA + F16C kernels (x86-64 since Haswell / Zen 1), chosen at run time.
//!
//! Every kernel takes a tile of eight weight rows against up to four activation rows (eight
//! with VNNI, whose AVX-512 registers hold twice as many accumulators; see
//! `layout`, [`block_dots`] and [`q8_block_dots`]): one accumulator per activation row, lane `r`
//! for weight row `r`, so a block costs one conversion and one or two FMAs per activation row
//! for all eight weight rows, and each weight vector loaded serves every activation row.
//! With VNNI, products of more than one activation row take two tiles per call in 512-bit
//! registers ([`q4_0_pair_vnni`], [`q8_0_pair_vnni`], [`q4k_pair_vnni`]): the 256-bit kernels
//! are bound by loading one broadcast per `vpdpbusd`, and a broadcast then serves sixteen
//! weight rows.

use std::arch::x86_64::*;

use super::{layout, ActRow, BLOCK, TILE};

// Vectors are built with loops, not `std::array::from_fn`: a closure is compiled without the
// kernel's target features, so intrinsics inside it stay calls unless LLVM happens to inline
// the closure first (`scripts/check-intrinsics.sh` checks the built library).

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

/// Prefetches the first [`PREFETCH`] bytes of `w` (all of it when shorter): the head of a
/// stream that the in-loop prefetches, running [`PREFETCH`] ahead, never cover. Measured on
/// the batched decode (eight rows, two-tile kernels, weights from memory, the two forms
/// alternating in one process): 21.6 against 22.8 ms for a 600 MB pass of Q4_0 weights.
pub(super) fn prefetch_head(w: &[u8]) {
    for l in (0..w.len().min(PREFETCH)).step_by(64) {
        // SAFETY: `prefetcht0` is SSE, part of every x86-64 CPU, and only a hint; the address
        // lies inside `w`.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(w.as_ptr().add(l) as *const i8) };
    }
}

/// The dots of one tile block (32 values of each of eight rows: [`layout::NIBBLES`] bytes at
/// `nib`, see `layout`) with `N` activation rows (`y[i]` at their 32 quants of the block), as
/// f32 with lane `r` for row `r`. Each masked vector holds four values of every row, so four
/// activation bytes broadcast to all rows multiply it. The nibbles stay unsigned for
/// `vpmaddubsw`; the callers take any offset off. A block sums in 16-bit lanes and converts
/// once: a `vpmaddubsw` lane is at most 2 * 15 * 128 = 3840 in magnitude, eight of them 30720,
/// within i16.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers and slices cover what the calling kernel's contract names.
#[inline(always)]
unsafe fn block_dots<const N: usize>(nib: *const u8, y: [*const i8; N]) -> [__m256; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has AVX2, FMA and F16C; the pointers cover the ranges it names).
    unsafe {
        let low = _mm256_set1_epi8(0x0F);
        let mut s = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let bytes = _mm256_loadu_si256(nib.add(32 * j) as *const __m256i);
            let lo = _mm256_and_si256(bytes, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
            for i in 0..N {
                let yp = y[i].add(8 * j);
                let ya = _mm256_set1_epi32((yp as *const i32).read_unaligned());
                let yb = _mm256_set1_epi32((yp.add(4) as *const i32).read_unaligned());
                let p = _mm256_add_epi16(_mm256_maddubs_epi16(lo, ya), _mm256_maddubs_epi16(hi, yb));
                s[i] = _mm256_add_epi16(s[i], p);
            }
        }
        let ones = _mm256_set1_epi16(1);
        let mut out = [_mm256_setzero_ps(); N];
        for (o, s) in out.iter_mut().zip(s) {
            *o = _mm256_cvtepi32_ps(_mm256_madd_epi16(s, ones));
        }
        out
    }
}

/// The dots of one Q8_0 tile block (`q`: [`TILE`] * [`BLOCK`] quants, see `layout`) with `N`
/// activation rows, as i32 with lane `r` for row `r`. `vpmaddubsw` wants one unsigned operand:
/// |w| times y with w's sign moved onto y (Q8_0 never holds -128, so |w| fits in a byte and a
/// pair sums to at most 2 * 127 * 127, within i16; two pairs would not, so each vector widens
/// to i32 at once).
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; the
/// pointers cover one tile block and `N` activation blocks.
#[inline(always)]
unsafe fn q8_block_dots<const N: usize>(q: *const u8, y: [*const i8; N], _sums: [i32; N]) -> [__m256; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let ones = _mm256_set1_epi16(1);
        let mut s = [_mm256_setzero_si256(); N];
        for j in 0..BLOCK / 4 {
            let x = _mm256_loadu_si256(q.add(32 * j) as *const __m256i);
            let ax = _mm256_sign_epi8(x, x);
            for i in 0..N {
                let yv = _mm256_set1_epi32((y[i].add(4 * j) as *const i32).read_unaligned());
                let p = _mm256_maddubs_epi16(ax, _mm256_sign_epi8(yv, x));
                s[i] = _mm256_add_epi32(s[i], _mm256_madd_epi16(p, ones));
            }
        }
        let mut out = [_mm256_setzero_ps(); N];
        for (o, s) in out.iter_mut().zip(s) {
            *o = _mm256_cvtepi32_ps(s);
        }
        out
    }
}

/// [`block_dots`] with AVX-512 VNNI: `vpdpbusd` multiplies the unsigned nibbles by four
/// signed activation bytes and adds the four products into each i32 lane in one instruction
/// (the tile layout's lane `r` is row `r`'s four consecutive values), where AVX2 needs two
/// `vpmaddubsw`, two 16-bit adds and a widening `vpmaddwd`. The sums are the same integers,
/// so the results are bit for bit AVX2's. Up to four rows, low and high nibbles accumulate
/// apart (two chains of four per row instead of one of eight, to hide the latency); with more
/// rows the rows' own chains are enough, and one chain per row leaves registers for eight.
///
/// # Safety
/// The CPU must have AVX2, AVX512-VNNI and AVX512-VL; as [`block_dots`] otherwise.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn block_dots_vnni<const N: usize>(nib: *const u8, y: [*const i8; N]) -> [__m256; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let low = _mm256_set1_epi8(0x0F);
        let mut a = [_mm256_setzero_si256(); N];
        let mut b = [_mm256_setzero_si256(); N];
        for j in 0..4 {
            let bytes = _mm256_loadu_si256(nib.add(32 * j) as *const __m256i);
            let lo = _mm256_and_si256(bytes, low);
            let hi = _mm256_and_si256(_mm256_srli_epi16::<4>(bytes), low);
            for i in 0..N {
                let yp = y[i].add(8 * j);
                let ya = _mm256_set1_epi32((yp as *const i32).read_unaligned());
                let yb = _mm256_set1_epi32((yp.add(4) as *const i32).read_unaligned());
                if N > 4 {
                    a[i] = _mm256_dpbusd_epi32(_mm256_dpbusd_epi32(a[i], lo, ya), hi, yb);
                } else {
                    a[i] = _mm256_dpbusd_epi32(a[i], lo, ya);
                    b[i] = _mm256_dpbusd_epi32(b[i], hi, yb);
                }
            }
        }
        let mut out = [_mm256_setzero_ps(); N];
        for (i, o) in out.iter_mut().enumerate() {
            *o = _mm256_cvtepi32_ps(if N > 4 { a[i] } else { _mm256_add_epi32(a[i], b[i]) });
        }
        out
    }
}

/// [`q8_block_dots`] with AVX-512 VNNI: `vpdpbusd` wants one unsigned operand, and `w + 128`
/// (the sign bit flipped, once per weight vector for all rows) is one, so each row takes one
/// instruction per vector where moving w's sign onto y took a `vpsignb` per row as well. The
/// sums start at `-128 * sum(y)` (`sums`: each row's integer block sum), which takes the
/// offset off exactly: the same integers as AVX2's. Two chains (even and odd vectors) up to
/// four rows, one beyond (as [`block_dots_vnni`]).
///
/// # Safety
/// The CPU must have AVX2, AVX512-VNNI and AVX512-VL; as [`q8_block_dots`] otherwise.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn q8_block_dots_vnni<const N: usize>(q: *const u8, y: [*const i8; N], sums: [i32; N]) -> [__m256; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let flip = _mm256_set1_epi8(i8::MIN);
        let mut s = [[_mm256_setzero_si256(); 2]; N];
        for (s, &sum) in s.iter_mut().zip(&sums) {
            // |sum| <= 32 * 128: the product fits an i32.
            s[0] = _mm256_set1_epi32(-128 * sum);
        }
        for j in 0..BLOCK / 4 {
            let u = _mm256_xor_si256(_mm256_loadu_si256(q.add(32 * j) as *const __m256i), flip);
            for i in 0..N {
                let yv = _mm256_set1_epi32((y[i].add(4 * j) as *const i32).read_unaligned());
                let chain = if N > 4 { 0 } else { j % 2 };
                s[i][chain] = _mm256_dpbusd_epi32(s[i][chain], u, yv);
            }
        }
        let mut out = [_mm256_setzero_ps(); N];
        for (o, s) in out.iter_mut().zip(s) {
            *o = _mm256_cvtepi32_ps(_mm256_add_epi32(s[0], s[1]));
        }
        out
    }
}

/// The accumulators' lanes, one output per tile row.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU.
#[inline(always)]
unsafe fn lanes<const N: usize>(acc: [__m256; N]) -> [[f32; TILE]; N] {
    let mut out = [[0f32; TILE]; N];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` holds eight f32s; the caller checked the CPU.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// Stamps out the Q8_0, Q4_0 and Q4_K tile kernels for one flavour of block dot products
/// (AVX2's, or VNNI's), compiled for the CPU features that flavour needs.
macro_rules! tile_kernels {
    ($features:literal, $dots:ident, $q8_dots:ident, $q8_0:ident, $q4_0:ident, $q4k:ident) => {
        /// See `portable::q8_0_tile`, for `N` activation rows.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C, and what `$features` names.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q8_0<const N: usize>(w: &[u8], y: [ActRow; N]) -> [[f32; TILE]; N] {
            // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has what `$features` names); the asserts bound every pointer below.
            unsafe {
                let nb = y[0].1.len();
                for (yq, yd, _, sums) in y {
                    assert!(yq.len() == nb * BLOCK && yd.len() == nb && sums.len() == nb);
                }
                assert!(w.len() == nb * layout::Q8_0_BYTES);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let blk = w.as_ptr().add(b * layout::Q8_0_BYTES);
                    prefetch(blk, 5);
                    let dots = $q8_dots::<N>(
                        blk.add(2 * TILE),
                        std::array::from_fn(|i| y[i].0.as_ptr().add(b * BLOCK)),
                        std::array::from_fn(|i| *y[i].3.get_unchecked(b)),
                    );
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    for i in 0..N {
                        let dy = _mm256_set1_ps(*y[i].1.get_unchecked(b));
                        acc[i] = _mm256_fmadd_ps(_mm256_mul_ps(dw, dy), dots[i], acc[i]);
                    }
                }
                lanes(acc)
            }
        }

        /// See `portable::q4_0_tile`, for `N` activation rows (1 to decode, up to 4 (8 with VNNI) in the
        /// prefill and batched decode). The offset of 8 comes off each block as `ys` (for Q4_0, eight times the
        /// activation block's sum, see `Q8Rows`) before the weight scale multiplies.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C, and what `$features` names.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q4_0<const N: usize>(w: &[u8], y: [ActRow; N]) -> [[f32; TILE]; N] {
            // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has what `$features` names); the asserts bound every pointer below.
            unsafe {
                let nb = y[0].1.len();
                for (yq, yd, ys, _) in y {
                    assert!(yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
                }
                assert!(w.len() == nb * layout::Q4_0_BYTES);
                let mut acc = [_mm256_setzero_ps(); N];
                for b in 0..nb {
                    let blk = w.as_ptr().add(b * layout::Q4_0_BYTES);
                    prefetch(blk, 3);
                    let dots = $dots::<N>(blk.add(2 * TILE), std::array::from_fn(|i| y[i].0.as_ptr().add(b * BLOCK)));
                    let dw = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    for i in 0..N {
                        let (dy, ys) = (*y[i].1.get_unchecked(b), *y[i].2.get_unchecked(b));
                        let t = _mm256_fmsub_ps(_mm256_set1_ps(dy), dots[i], _mm256_set1_ps(ys));
                        acc[i] = _mm256_fmadd_ps(dw, t, acc[i]);
                    }
                }
                lanes(acc)
            }
        }

        /// See `portable::q4k_tile`, for `N` activation rows: each sub-block is a Q4_0 tile block whose
        /// scales and mins (unpacked at load) widen once for all rows.
        ///
        /// # Safety
        /// The CPU must have AVX2, FMA and F16C, and what `$features` names.
        #[target_feature(enable = $features)]
        pub(super) unsafe fn $q4k<const N: usize>(w: &[u8], y: [ActRow; N]) -> [[f32; TILE]; N] {
            // SAFETY: the caller upholds this function's `# Safety` contract (the CPU has what `$features` names); the asserts bound every pointer below.
            unsafe {
                let nb = y[0].1.len();
                for (yq, yd, ys, _) in y {
                    assert!(nb % 8 == 0 && yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
                }
                assert!(w.len() == nb / 8 * layout::Q4K_BYTES);
                let mut acc = [_mm256_setzero_ps(); N];
                let widen =
                    |p: *const u8| _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i)));
                for g in 0..nb / 8 {
                    let blk = w.as_ptr().add(g * layout::Q4K_BYTES);
                    let d = _mm256_cvtph_ps(_mm_loadu_si128(blk as *const __m128i));
                    let dmin = _mm256_cvtph_ps(_mm_loadu_si128(blk.add(layout::Q4K_DMIN) as *const __m128i));
                    for sub in 0..8 {
                        // Eight sub-blocks cover the super-block's 1184 bytes (19 lines) ahead.
                        prefetch(blk.add(148 * sub), 3);
                        let b = 8 * g + sub;
                        let sc = _mm256_mul_ps(widen(blk.add(layout::Q4K_SC + TILE * sub)), d);
                        let mn = _mm256_mul_ps(widen(blk.add(layout::Q4K_MN + TILE * sub)), dmin);
                        let nib = blk.add(layout::Q4K_QS + layout::NIBBLES * sub);
                        let dots = $dots::<N>(nib, std::array::from_fn(|i| y[i].0.as_ptr().add(b * BLOCK)));
                        for i in 0..N {
                            let (dy, ys) = (*y[i].1.get_unchecked(b), *y[i].2.get_unchecked(b));
                            acc[i] = _mm256_fmadd_ps(sc, _mm256_mul_ps(_mm256_set1_ps(dy), dots[i]), acc[i]);
                            acc[i] = _mm256_fnmadd_ps(mn, _mm256_set1_ps(ys), acc[i]);
                        }
                    }
                }
                lanes(acc)
            }
        }
    };
}

tile_kernels!("avx2,fma,f16c", block_dots, q8_block_dots, q8_0_tile, q4_0_tile, q4k_tile);
tile_kernels!(
    "avx2,fma,f16c,avx512f,avx512vl,avx512vnni",
    block_dots_vnni,
    q8_block_dots_vnni,
    q8_0_tile_vnni,
    q4_0_tile_vnni,
    q4k_tile_vnni
);

/// [`block_dots_vnni`] for two tiles at once, in 512-bit registers: the nibbles of one block of
/// each (`nib0`, `nib1`: [`layout::NIBBLES`] bytes) against `N` activation rows (`y[i]` at
/// their 32 quants of the block), as i32 with lanes `0..8` for `nib0`'s rows and `8..16` for
/// `nib1`'s. Each vector holds four values of sixteen rows, so one activation broadcast (a
/// dword, folded into `vpdpbusd` as an embedded broadcast) serves sixteen rows where the
/// 256-bit kernels serve eight: those kernels are bound by loads (two vector loads per cycle,
/// one per broadcast), and this halves the loads per product. The sums are the same integers.
///
/// # Safety
/// The CPU must have AVX2, AVX512F, AVX512-VL and AVX512-VNNI; the pointers must cover one
/// block of nibbles each and 32 quants per activation row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pair_block_dots_vnni<const N: usize>(nib0: *const u8, nib1: *const u8, y: [*const i8; N]) -> [__m512i; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let low = _mm512_set1_epi32(0x0F0F_0F0F);
        let mut s = [_mm512_setzero_si512(); N];
        let mut t = [_mm512_setzero_si512(); N];
        for j in 0..4 {
            let v0 = _mm256_loadu_si256(nib0.add(32 * j) as *const __m256i);
            let v1 = _mm256_loadu_si256(nib1.add(32 * j) as *const __m256i);
            let bytes = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1);
            let lo = _mm512_and_si512(bytes, low);
            // A 32-bit shift: the mask drops what crosses in from the byte above.
            let hi = _mm512_and_si512(_mm512_srli_epi32::<4>(bytes), low);
            for i in 0..N {
                let yp = y[i].add(8 * j);
                let ya = _mm512_set1_epi32((yp as *const i32).read_unaligned());
                let yb = _mm512_set1_epi32((yp.add(4) as *const i32).read_unaligned());
                // Two chains per row at every row count, the same integers: at eight rows the
                // one-chain form (eight dependent `vpdpbusd`s per block) measured no faster,
                // and two fit in the registers.
                s[i] = _mm512_dpbusd_epi32(s[i], lo, ya);
                t[i] = _mm512_dpbusd_epi32(t[i], hi, yb);
            }
        }
        for (s, t) in s.iter_mut().zip(t) {
            *s = _mm512_add_epi32(*s, t);
        }
        s
    }
}

/// [`q8_block_dots_vnni`] for two tiles at once, in 512-bit registers: one Q8_0 tile block of
/// each (`q0`, `q1`: [`TILE`] * [`BLOCK`] quants) against `N` activation rows, as i32 with
/// lanes `0..8` for `q0`'s rows and `8..16` for `q1`'s (see [`pair_block_dots_vnni`]). The
/// same integers as the one-tile kernel's.
///
/// # Safety
/// As [`pair_block_dots_vnni`]; the pointers cover one tile block each and 32 quants per
/// activation row.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pair_q8_block_dots_vnni<const N: usize>(
    q0: *const u8,
    q1: *const u8,
    y: [*const i8; N],
    sums: [i32; N],
) -> [__m512i; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let flip = _mm512_set1_epi8(i8::MIN);
        let mut s = [[_mm512_setzero_si512(); 2]; N];
        for (s, &sum) in s.iter_mut().zip(&sums) {
            s[0] = _mm512_set1_epi32(-128 * sum);
        }
        for j in 0..BLOCK / 4 {
            let v0 = _mm256_loadu_si256(q0.add(32 * j) as *const __m256i);
            let v1 = _mm256_loadu_si256(q1.add(32 * j) as *const __m256i);
            let u = _mm512_xor_si512(_mm512_inserti64x4::<1>(_mm512_castsi256_si512(v0), v1), flip);
            for i in 0..N {
                let yv = _mm512_set1_epi32((y[i].add(4 * j) as *const i32).read_unaligned());
                let chain = if N > 4 { 0 } else { j % 2 };
                s[i][chain] = _mm512_dpbusd_epi32(s[i][chain], u, yv);
            }
        }
        let mut out = [_mm512_setzero_si512(); N];
        for (o, s) in out.iter_mut().zip(s) {
            *o = _mm512_add_epi32(s[0], s[1]);
        }
        out
    }
}

/// Sixteen f16 values, eight at `p0` and eight at `p1`, widened to f32 in that order.
///
/// # Safety
/// As [`pair_block_dots_vnni`]; `p0` and `p1` valid for 16 bytes each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pair_halves(p0: *const u8, p1: *const u8) -> __m512 {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let (a, b) = (_mm_loadu_si128(p0 as *const __m128i), _mm_loadu_si128(p1 as *const __m128i));
        _mm512_cvtph_ps(_mm256_inserti128_si256::<1>(_mm256_castsi128_si256(a), b))
    }
}

/// Sixteen bytes, eight at `p0` and eight at `p1`, widened to f32 in that order.
///
/// # Safety
/// As [`pair_block_dots_vnni`]; `p0` and `p1` valid for 8 bytes each.
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pair_bytes(p0: *const u8, p1: *const u8) -> __m512 {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let b = _mm_unpacklo_epi64(_mm_loadl_epi64(p0 as *const __m128i), _mm_loadl_epi64(p1 as *const __m128i));
        _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
    }
}

/// The accumulators' sixteen lanes per activation row.
///
/// # Safety
/// As [`pair_block_dots_vnni`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
unsafe fn pair_lanes<const N: usize>(acc: [__m512; N]) -> [[f32; 2 * TILE]; N] {
    let mut out = [[0f32; 2 * TILE]; N];
    for (o, a) in out.iter_mut().zip(acc) {
        // SAFETY: `o` holds sixteen f32s; the caller checked the CPU.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), a) };
    }
    out
}

/// Two Q4_0 tiles (sixteen weight rows, `w0` then `w1`) against `N` activation rows (see
/// [`pair_block_dots_vnni`]): lanes `0..8` of each result are `w0`'s rows, `8..16` `w1`'s. Each
/// lane runs the integer sums and f32 operations of [`q4_0_tile_vnni`], so the results are its
/// results bit for bit.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512-VL and AVX512-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn q4_0_pair_vnni<const N: usize>(w0: &[u8], w1: &[u8], y: [ActRow; N]) -> [[f32; 2 * TILE]; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract; the asserts bound every
    // pointer below (block `b` of each tile, the activations' block `b`).
    unsafe {
        let nb = y[0].1.len();
        for (yq, yd, ys, _) in y {
            assert!(yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
        }
        assert!(w0.len() == nb * layout::Q4_0_BYTES && w1.len() == w0.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let (b0, b1) = (w0.as_ptr().add(b * layout::Q4_0_BYTES), w1.as_ptr().add(b * layout::Q4_0_BYTES));
            prefetch(b0, 3);
            prefetch(b1, 3);
            let mut yp = [std::ptr::null(); N];
            for (p, y) in yp.iter_mut().zip(&y) {
                *p = y.0.as_ptr().add(b * BLOCK);
            }
            let dots = pair_block_dots_vnni::<N>(b0.add(2 * TILE), b1.add(2 * TILE), yp);
            let dw = pair_halves(b0, b1);
            for i in 0..N {
                let (dy, ys) = (*y[i].1.get_unchecked(b), *y[i].2.get_unchecked(b));
                let u = _mm512_fmsub_ps(_mm512_set1_ps(dy), _mm512_cvtepi32_ps(dots[i]), _mm512_set1_ps(ys));
                acc[i] = _mm512_fmadd_ps(dw, u, acc[i]);
            }
        }
        pair_lanes(acc)
    }
}

/// Two Q8_0 tiles against `N` activation rows, as [`q4_0_pair_vnni`] for [`q8_0_tile_vnni`]:
/// each lane runs that kernel's integer sums and f32 operations, bit for bit its results.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512-VL and AVX512-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn q8_0_pair_vnni<const N: usize>(w0: &[u8], w1: &[u8], y: [ActRow; N]) -> [[f32; 2 * TILE]; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract; the asserts bound every
    // pointer below (block `b` of each tile, the activations' block `b`).
    unsafe {
        let nb = y[0].1.len();
        for (yq, yd, _, sums) in y {
            assert!(yq.len() == nb * BLOCK && yd.len() == nb && sums.len() == nb);
        }
        assert!(w0.len() == nb * layout::Q8_0_BYTES && w1.len() == w0.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..nb {
            let (b0, b1) = (w0.as_ptr().add(b * layout::Q8_0_BYTES), w1.as_ptr().add(b * layout::Q8_0_BYTES));
            prefetch(b0, 5);
            prefetch(b1, 5);
            let mut yp = [std::ptr::null(); N];
            let mut sums = [0; N];
            for ((p, s), y) in yp.iter_mut().zip(&mut sums).zip(&y) {
                *p = y.0.as_ptr().add(b * BLOCK);
                *s = *y.3.get_unchecked(b);
            }
            let dots = pair_q8_block_dots_vnni::<N>(b0.add(2 * TILE), b1.add(2 * TILE), yp, sums);
            let dw = pair_halves(b0, b1);
            for i in 0..N {
                let dy = _mm512_set1_ps(*y[i].1.get_unchecked(b));
                acc[i] = _mm512_fmadd_ps(_mm512_mul_ps(dw, dy), _mm512_cvtepi32_ps(dots[i]), acc[i]);
            }
        }
        pair_lanes(acc)
    }
}

/// Two Q4_K tiles against `N` activation rows, as [`q4_0_pair_vnni`] for [`q4k_tile_vnni`]:
/// each lane runs that kernel's integer sums and f32 operations, bit for bit its results.
///
/// # Safety
/// The CPU must have AVX2, FMA, F16C, AVX512F, AVX512-VL and AVX512-VNNI.
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512vnni")]
pub(super) unsafe fn q4k_pair_vnni<const N: usize>(w0: &[u8], w1: &[u8], y: [ActRow; N]) -> [[f32; 2 * TILE]; N] {
    // SAFETY: the caller upholds this function's `# Safety` contract; the asserts bound every
    // pointer below (super-block `g` of each tile, the activations' blocks `8 g..8 g + 8`).
    unsafe {
        let nb = y[0].1.len();
        for (yq, yd, ys, _) in y {
            assert!(nb.is_multiple_of(8) && yq.len() == nb * BLOCK && yd.len() == nb && ys.len() == nb);
        }
        assert!(w0.len() == nb / 8 * layout::Q4K_BYTES && w1.len() == w0.len());
        let mut acc = [_mm512_setzero_ps(); N];
        for g in 0..nb / 8 {
            let (b0, b1) = (w0.as_ptr().add(g * layout::Q4K_BYTES), w1.as_ptr().add(g * layout::Q4K_BYTES));
            let d = pair_halves(b0, b1);
            let dmin = pair_halves(b0.add(layout::Q4K_DMIN), b1.add(layout::Q4K_DMIN));
            for sub in 0..8 {
                // Eight sub-blocks cover the super-block's 1184 bytes (19 lines) ahead.
                prefetch(b0.add(148 * sub), 3);
                prefetch(b1.add(148 * sub), 3);
                let b = 8 * g + sub;
                let at = layout::Q4K_SC + TILE * sub;
                let sc = _mm512_mul_ps(pair_bytes(b0.add(at), b1.add(at)), d);
                let at = layout::Q4K_MN + TILE * sub;
                let mn = _mm512_mul_ps(pair_bytes(b0.add(at), b1.add(at)), dmin);
                let at = layout::Q4K_QS + layout::NIBBLES * sub;
                let mut yp = [std::ptr::null(); N];
                for (p, y) in yp.iter_mut().zip(&y) {
                    *p = y.0.as_ptr().add(b * BLOCK);
                }
                let dots = pair_block_dots_vnni::<N>(b0.add(at), b1.add(at), yp);
                for i in 0..N {
                    let (dy, ys) = (*y[i].1.get_unchecked(b), *y[i].2.get_unchecked(b));
                    let dots = _mm512_cvtepi32_ps(dots[i]);
                    acc[i] = _mm512_fmadd_ps(sc, _mm512_mul_ps(_mm512_set1_ps(dy), dots), acc[i]);
                    acc[i] = _mm512_fnmadd_ps(mn, _mm512_set1_ps(ys), acc[i]);
                }
            }
        }
        pair_lanes(acc)
    }
}

/// One activation row quantized to 8-bit blocks as [`super::quantize_q8_block`] does it, eight
/// values per instruction: every whole block of `x` into `qs`, `d`, `ys` and `sums` (see `Q8Rows`);
/// blocks past `x`'s end, a partial last one, and a block whose scale has no finite reciprocal
/// (a subnormal maximum) take the scalar path. The result is the scalar's bit for bit: the
/// maximum ignores NaN as `f32::max` does, `v * (1 / d)` is the same product, a NaN product
/// becomes 0 as `NaN as i32` does, and rounding is truncation plus the exact fraction's test
/// against one half, as in `round_to_i8`. As scalar code it took ~3 % of a 7B prefill's
/// samples.
///
/// # Safety
/// The CPU must have AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn quantize_q8_row(x: &[f32], qs: &mut [i8], d: &mut [f32], ys: &mut [f32], sums: &mut [i32]) {
    let whole = x.len() / BLOCK;
    for (b, (((q, d), ys), sum)) in
        qs.chunks_exact_mut(BLOCK).zip(d.iter_mut()).zip(ys.iter_mut()).zip(sums.iter_mut()).enumerate()
    {
        let quantized = if b < whole {
            // SAFETY: block `b` is whole inside `x`, and `q` holds `BLOCK` values.
            unsafe { q8_block(&x[b * BLOCK..][..BLOCK], q) }
        } else {
            None
        };
        (*d, *sum) = match quantized {
            Some(done) => done,
            None => super::quantize_act_block(x, b, q),
        };
        *ys = *d * *sum as f32;
    }
}

/// One whole block of [`quantize_q8_row`]: the scale and `sum(q)`, or `None` (and `q`
/// untouched) when `1 / scale` is not finite.
///
/// # Safety
/// Only for inlining into an `avx2,fma,f16c` function, whose caller checked the CPU; `x` and
/// `q` hold [`BLOCK`] values.
#[inline(always)]
unsafe fn q8_block(x: &[f32], q: &mut [i8]) -> Option<(f32, i32)> {
    // SAFETY: `x` and `q` hold `BLOCK` (32) values: four vectors of eight each; the caller
    // checked the CPU.
    unsafe {
        let p = x.as_ptr();
        let mut v = [_mm256_setzero_ps(); 4];
        for (i, v) in v.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(p.add(8 * i));
        }
        let sign = _mm256_set1_ps(-0.0);
        let mut m = _mm256_setzero_ps();
        for v in v {
            // `maxps` returns its second operand when the first is NaN: NaN is skipped.
            m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
        }
        let m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
        let m2 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        let amax = _mm_cvtss_f32(_mm_max_ss(m2, _mm_shuffle_ps::<1>(m2, m2)));
        let d = amax / 127.0;
        let id = super::inverse(d);
        if !id.is_finite() {
            return None;
        }
        let (idv, half, neg_half) = (_mm256_set1_ps(id), _mm256_set1_ps(0.5), _mm256_set1_ps(-0.5));
        let mut r = [_mm256_setzero_si256(); 4];
        for (r, &v) in r.iter_mut().zip(&v) {
            let s = _mm256_mul_ps(v, idv);
            let s = _mm256_and_ps(s, _mm256_cmp_ps::<_CMP_ORD_Q>(s, s));
            let t = _mm256_cvttps_epi32(s);
            let frac = _mm256_sub_ps(s, _mm256_cvtepi32_ps(t));
            // A true comparison is -1 in every bit: subtracting it adds one.
            let up = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(frac, half));
            let down = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_LE_OQ>(frac, neg_half));
            *r = _mm256_add_epi32(_mm256_sub_epi32(t, up), down);
        }
        // Saturating packs clamp to i8 as `round_to_i8` does; they interleave 128-bit lanes,
        // which the permutation undoes.
        let packed = _mm256_packs_epi16(_mm256_packs_epi32(r[0], r[1]), _mm256_packs_epi32(r[2], r[3]));
        let packed = _mm256_permutevar8x32_epi32(packed, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
        _mm256_storeu_si256(q.as_mut_ptr() as *mut __m256i, packed);
        let pairs = _mm256_maddubs_epi16(_mm256_set1_epi8(1), packed);
        let quads = _mm256_madd_epi16(pairs, _mm256_set1_epi16(1));
        let s4 = _mm_add_epi32(_mm256_castsi256_si128(quads), _mm256_extracti128_si256::<1>(quads));
        let s2 = _mm_add_epi32(s4, _mm_shuffle_epi32::<0b01_00_11_10>(s4));
        let sum = _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32::<0b10_11_00_01>(s2)));
        Some((d, sum))
    }
}
