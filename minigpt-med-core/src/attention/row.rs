//! Attention of one query row over cached key and value rows (one head of a decode step):
//! `softmax(K q * scale) V`, reading the rows in place, in f32 or f16.
//!
//! A decode step's attention is a pair of matrix-vector products over rows no other step
//! reads, so it is bound by how fast the rows stream: the AVX2 kernel widens f16 rows in
//! registers (F16C) instead of through a buffer, keeps four dot-product chains per row and
//! the output's 64-column blocks in registers, and shares the GEMM's vectorized `exp`.

use std::ops::Range;

use half::f16;
use half::slice::HalfFloatSliceExt;

use crate::cpu::Isa;
use crate::gemm;

/// Rows of `head_dim` values one after the other, as a KV cache holds them.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Rows<'a> {
    F32(&'a [f32]),
    F16(&'a [f16]),
}

impl<'a> Rows<'a> {
    /// Rows `rows` (each `head_dim` values).
    ///
    /// # Panics
    /// If they run past the end.
    pub(crate) fn span(self, rows: Range<usize>, head_dim: usize) -> Rows<'a> {
        let at = rows.start * head_dim..rows.end * head_dim;
        match self {
            Self::F32(t) => Self::F32(&t[at]),
            Self::F16(t) => Self::F16(&t[at]),
        }
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(t) => t.len(),
            Self::F16(t) => t.len(),
        }
    }

    /// `f` of each row in order, as f32: f32 rows in place, f16 rows widened a few at a time
    /// into `buf` (32 rows of 128 values are 16 KiB, in L1).
    fn for_each(self, head_dim: usize, buf: &mut Vec<f32>, mut f: impl FnMut(&[f32])) {
        match self {
            Self::F32(t) => t.chunks_exact(head_dim).for_each(f),
            Self::F16(t) => {
                for chunk in t.chunks(32 * head_dim) {
                    buf.resize(chunk.len(), 0.0);
                    chunk.convert_to_f32_slice(buf);
                    buf.chunks_exact(head_dim).for_each(&mut f);
                }
            }
        }
    }
}

/// `out = softmax(k q * scale) v`: `q` and `out` are `head_dim = q.len()` wide, `k` and `v`
/// hold the same number of rows (at least one). `scores` is scratch space, reused across
/// calls.
///
/// # Panics
/// If the lengths disagree or `k` holds no row.
pub(crate) fn attend(kernels: Isa, q: &[f32], k: Rows, v: Rows, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = q.len();
    assert!(
        hd > 0 && out.len() == hd && k.len() == v.len() && k.len() % hd == 0 && k.len() > 0,
        "attention row: q {hd}, out {}, k {}, v {}",
        out.len(),
        k.len(),
        v.len()
    );
    scores.clear();
    match (kernels, k, v) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa::Avx2` exists only on CPUs with AVX2, FMA and F16C; the lengths were
        // checked above.
        (Isa::Avx2(_), Rows::F32(k), Rows::F32(v)) if hd % 8 == 0 => unsafe {
            avx2::attend(kernels, q, k, v, scale, scores, out)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (Isa::Avx2(_), Rows::F16(k), Rows::F16(v)) if hd % 8 == 0 => unsafe {
            avx2::attend(kernels, q, k, v, scale, scores, out)
        },
        _ => portable(kernels, q, k, v, scale, scores, out),
    }
}

/// [`attend`] in plain Rust (any CPU, any width): the reference the AVX2 kernel is tested
/// against.
fn portable(kernels: Isa, q: &[f32], k: Rows, v: Rows, scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = q.len();
    let mut buf = Vec::new();
    k.for_each(hd, &mut buf, |k| scores.push(q.iter().zip(k).map(|(a, b)| a * b).sum::<f32>() * scale));
    let sum = gemm::softmax_row(kernels, scores);
    out.fill(0.0);
    let mut p = scores.iter();
    v.for_each(hd, &mut buf, |v| {
        let p = *p.next().expect("one score per row");
        out.iter_mut().zip(v).for_each(|(o, v)| *o += p * v);
    });
    let inv = 1.0 / sum;
    out.iter_mut().for_each(|o| *o *= inv);
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use half::f16;

    use crate::cpu::Isa;
    use crate::gemm;

    /// Eight consecutive values widened to f32.
    pub(super) trait Load8: Copy {
        /// # Safety
        /// `p` must be valid for reads of eight values; the CPU must have AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
    }

    impl Load8 for f32 {
        #[inline]
        #[target_feature(enable = "avx2")]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe { _mm256_loadu_ps(p) }
        }
    }

    impl Load8 for f16 {
        #[inline]
        #[target_feature(enable = "avx2,f16c")]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller upholds this function's `# Safety` contract.
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p.cast())) }
        }
    }

    /// The sum of the eight lanes.
    ///
    /// # Safety
    /// The CPU must have AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn hsum(x: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(x), _mm256_extractf128_ps::<1>(x));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }

    /// `super::attend` for a `head_dim` that is a multiple of 8.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`kernels` is its `Isa::Avx2`); `out.len() ==
    /// q.len()`, a multiple of 8, and `k`
    /// and `v` hold the same whole number (at least one) of `q.len()`-long rows.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend<T: Load8>(
        kernels: Isa,
        q: &[f32],
        k: &[T],
        v: &[T],
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let hd = q.len();
        let len = k.len() / hd;
        // SAFETY: every pointer below stays inside `q`, `k`, `v` or `out` by the contract:
        // row `j` of `k`/`v` is `[j * hd, (j + 1) * hd)`, and columns step by 8 below `hd`.
        unsafe {
            let qp = q.as_ptr();
            for j in 0..len {
                let row = k.as_ptr().add(j * hd);
                let mut acc = [_mm256_setzero_ps(); 4];
                let mut c = 0;
                while c + 32 <= hd {
                    for (i, a) in acc.iter_mut().enumerate() {
                        let at = c + 8 * i;
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(at)), T::load8(row.add(at)), *a);
                    }
                    c += 32;
                }
                while c < hd {
                    acc[0] = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add(c)), T::load8(row.add(c)), acc[0]);
                    c += 8;
                }
                let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
                scores.push(hsum(sum) * scale);
            }
            let inv = _mm256_set1_ps(1.0 / gemm::softmax_row(kernels, scores));
            let op = out.as_mut_ptr();
            let mut c0 = 0;
            // 64 columns at a time: eight accumulators, one FMA chain each.
            while c0 + 64 <= hd {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (j, &p) in scores.iter().enumerate() {
                    let (p, row) = (_mm256_set1_ps(p), v.as_ptr().add(j * hd + c0));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(p, T::load8(row.add(8 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(op.add(c0 + 8 * i), _mm256_mul_ps(*a, inv));
                }
                c0 += 64;
            }
            while c0 < hd {
                let mut acc = _mm256_setzero_ps();
                for (j, &p) in scores.iter().enumerate() {
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(p), T::load8(v.as_ptr().add(j * hd + c0)), acc);
                }
                _mm256_storeu_ps(op.add(c0), _mm256_mul_ps(acc, inv));
                c0 += 8;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((((i + seed) * 2654435761) % 1000) as f32 / 500.0 - 1.0) * 2.0).collect()
    }

    /// The definition in f64 over the rows as given (already rounded, for f16).
    fn oracle(q: &[f32], k: &[f32], v: &[f32], scale: f32) -> Vec<f64> {
        let hd = q.len();
        let s: Vec<f64> = k
            .chunks_exact(hd)
            .map(|k| k.iter().zip(q).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() * scale as f64)
            .collect();
        let max = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|s| (s - max).exp()).collect();
        let total: f64 = e.iter().sum();
        (0..hd).map(|c| e.iter().zip(v.chunks_exact(hd)).map(|(p, v)| p * v[c] as f64).sum::<f64>() / total).collect()
    }

    /// Both kernel sets, f32 and f16 rows, widths with and without a 64-column block and one
    /// the AVX2 kernel leaves to the portable path; one row and many.
    #[test]
    fn matches_f64_attention_in_both_dtypes() {
        for (hd, len) in [(128, 301), (128, 1), (40, 77), (88, 33), (8, 5), (22, 19)] {
            let q = values(hd, 1);
            let k = values(hd * len, 2);
            let v = values(hd * len, 3);
            let (k16, v16): (Vec<f16>, Vec<f16>) =
                (k.iter().map(|&x| f16::from_f32(x)).collect(), v.iter().map(|&x| f16::from_f32(x)).collect());
            let widen = |t: &[f16]| t.iter().map(|x| x.to_f32()).collect::<Vec<f32>>();
            let scale = (hd as f32).powf(-0.5);
            let exact32 = oracle(&q, &k, &v, scale);
            let exact16 = oracle(&q, &widen(&k16), &widen(&v16), scale);
            for kernels in Isa::available() {
                let mut scores = Vec::new();
                for (rows, exact) in
                    [((Rows::F32(&k), Rows::F32(&v)), &exact32), ((Rows::F16(&k16), Rows::F16(&v16)), &exact16)]
                {
                    let mut out = vec![f32::NAN; hd];
                    attend(kernels, &q, rows.0, rows.1, scale, &mut scores, &mut out);
                    for (c, (g, e)) in out.iter().zip(exact).enumerate() {
                        // f32 sums over up to 301 rows of values up to 2: ~2e-6 measured.
                        assert!(
                            (*g as f64 - e).abs() <= 1e-5,
                            "{kernels:?} {:?} hd {hd} len {len} col {c}: {g} vs {e}",
                            std::mem::discriminant(&rows.0)
                        );
                    }
                }
            }
        }
    }
}
