//! Attention of query rows over cached key and value rows (one key/value head of a decode
//! step): `softmax(K q * scale) V`, reading the rows in place, in f32 or f16.
//!
//! A decode step's attention is a pair of matrix-vector products over rows no other step
//! reads, so it is bound by how fast the rows stream: the AVX2 kernel widens f16 rows in
//! registers (F16C) instead of through a buffer, keeps four dot-product chains per row and
//! the output's 64-column blocks in registers, and shares the GEMM's vectorized `exp`.
//!
//! Sequences forked from one study share its prefix's rows ([`attend_group`]): those rows are
//! read from memory once for every query of the group, not once per sequence. Each query's
//! arithmetic is the same whatever the group (the same dot products, one FMA chain per output
//! column in row order), so an answer does not depend on what it was batched with.

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

    /// No rows, held as `self` holds them.
    pub(crate) fn empty(self) -> Rows<'a> {
        self.span(0..0, 1)
    }

    fn len(&self) -> usize {
        match self {
            Self::F32(t) => t.len(),
            Self::F16(t) => t.len(),
        }
    }

    /// Row `j` as f32: in place, or widened into `buf` (`head_dim` long).
    fn row<'b>(&'b self, j: usize, buf: &'b mut [f32]) -> &'b [f32] {
        let hd = buf.len();
        match self {
            Self::F32(t) => &t[j * hd..][..hd],
            Self::F16(t) => {
                t[j * hd..][..hd].convert_to_f32_slice(buf);
                buf
            }
        }
    }
}

/// Key and value rows of one key/value head: the same number of rows of `head_dim` each.
pub(crate) type Kv<'a> = (Rows<'a>, Rows<'a>);

/// Attention of a group of `m = own.len()` query rows over one key/value head: query `i`
/// (`q[i * head_dim..][..head_dim]`) sees the `shared` rows, then its own rows `own[i]`, and
/// its result goes to `out[i * head_dim..][..head_dim]`. The shared rows (a study's prefix,
/// which every sequence forked from it sees) stream from memory once for the whole group.
/// `scores` is scratch space, reused across calls.
///
/// # Panics
/// If the lengths disagree (`q` and `out` not `m` rows of one width, keys and values of
/// different lengths or not whole rows) or a query would see no row at all.
pub(crate) fn attend_group(
    kernels: Isa,
    q: &[f32],
    shared: Kv,
    own: &[Kv],
    scale: f32,
    scores: &mut Vec<f32>,
    out: &mut [f32],
) {
    let m = own.len();
    assert!(
        m > 0 && q.len().is_multiple_of(m) && !q.is_empty() && out.len() == q.len(),
        "attention rows: q {}, out {}, {m} queries",
        q.len(),
        out.len()
    );
    let hd = q.len() / m;
    let whole = |(k, v): &Kv| k.len() == v.len() && k.len() % hd == 0;
    assert!(
        whole(&shared) && own.iter().all(|kv| whole(kv) && shared.0.len() + kv.0.len() > 0),
        "attention rows: keys and values of {hd}-wide rows ({} shared, own {:?})",
        shared.0.len(),
        own.iter().map(|kv| (kv.0.len(), kv.1.len())).collect::<Vec<_>>()
    );
    scores.clear();
    #[cfg(target_arch = "x86_64")]
    if let Isa::Avx2(_) = kernels {
        if hd.is_multiple_of(8) {
            if let Some((shared, own)) = same_dtype(shared, own, |r| if let Rows::F32(t) = r { Some(t) } else { None })
            {
                // SAFETY: an `Isa::Avx2` exists only on CPUs with AVX2, FMA and F16C; the
                // lengths were checked above.
                return unsafe { avx2::attend_group(kernels, q, shared, &own, scale, scores, out) };
            }
            if let Some((shared, own)) = same_dtype(shared, own, |r| if let Rows::F16(t) = r { Some(t) } else { None })
            {
                // SAFETY: as above.
                return unsafe { avx2::attend_group(kernels, q, shared, &own, scale, scores, out) };
            }
        }
    }
    portable(kernels, q, shared, own, scale, scores, out)
}

/// Every slice of the group as `T`, when they all are (empty ones match any dtype).
#[cfg(target_arch = "x86_64")]
#[allow(clippy::type_complexity)]
fn same_dtype<'a, T>(
    shared: Kv<'a>,
    own: &[Kv<'a>],
    get: impl Fn(Rows<'a>) -> Option<&'a [T]>,
) -> Option<((&'a [T], &'a [T]), Vec<(&'a [T], &'a [T])>)> {
    let one = |r: Rows<'a>| if r.len() == 0 { Some(&[][..]) } else { get(r) };
    let pair = |(k, v): Kv<'a>| Some((one(k)?, one(v)?));
    Some((pair(shared)?, own.iter().map(|&kv| pair(kv)).collect::<Option<Vec<_>>>()?))
}

/// Where each query's scores start in the scratch buffer (`m + 1` offsets).
fn offsets(shared: usize, own: impl Iterator<Item = usize>) -> Vec<usize> {
    let mut at = vec![0];
    for n in own {
        at.push(at[at.len() - 1] + shared + n);
    }
    at
}

/// [`attend_group`] in plain Rust (any CPU, any width): the reference the AVX2 kernel is
/// tested against.
fn portable(kernels: Isa, q: &[f32], shared: Kv, own: &[Kv], scale: f32, scores: &mut Vec<f32>, out: &mut [f32]) {
    let hd = q.len() / own.len();
    let rows = |r: &Rows| r.len() / hd;
    let at = offsets(rows(&shared.0), own.iter().map(|kv| rows(&kv.0)));
    scores.resize(at[own.len()], 0.0);
    let mut buf = vec![0f32; hd];
    for (i, kv) in own.iter().enumerate() {
        let q = &q[i * hd..][..hd];
        let s = &mut scores[at[i]..at[i + 1]];
        let keys = (0..rows(&shared.0)).map(|j| (&shared.0, j)).chain((0..rows(&kv.0)).map(|j| (&kv.0, j)));
        for (s, (k, j)) in s.iter_mut().zip(keys) {
            *s = q.iter().zip(k.row(j, &mut buf)).map(|(a, b)| a * b).sum::<f32>() * scale;
        }
        let inv = 1.0 / gemm::softmax_row(kernels, s);
        let out = &mut out[i * hd..][..hd];
        out.fill(0.0);
        let values = (0..rows(&shared.1)).map(|j| (&shared.1, j)).chain((0..rows(&kv.1)).map(|j| (&kv.1, j)));
        for (p, (v, j)) in s.iter().zip(values) {
            out.iter_mut().zip(v.row(j, &mut buf)).for_each(|(o, v)| *o += p * v);
        }
        out.iter_mut().for_each(|o| *o *= inv);
    }
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

    /// `qs[i] . row` over `hd` columns (a multiple of 8) for each of `Q` queries, each in four
    /// chains combined the same way for every `Q`: the row's vectors (and, for f16 rows, their
    /// widening) are loaded once for all the queries, and each sum is bit for bit the one
    /// query's alone.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; each of `qs` and `row` valid for `hd` reads.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dots<const Q: usize, T: Load8>(qs: [*const f32; Q], row: *const T, hd: usize) -> [f32; Q] {
        // SAFETY: columns step by 8 below `hd`, inside every row by the contract.
        unsafe {
            let mut acc = [[_mm256_setzero_ps(); 4]; Q];
            let mut c = 0;
            while c + 32 <= hd {
                for i in 0..4 {
                    let at = c + 8 * i;
                    let r = T::load8(row.add(at));
                    for (a, q) in acc.iter_mut().zip(qs) {
                        a[i] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(at)), r, a[i]);
                    }
                }
                c += 32;
            }
            while c < hd {
                let r = T::load8(row.add(c));
                for (a, q) in acc.iter_mut().zip(qs) {
                    a[0] = _mm256_fmadd_ps(_mm256_loadu_ps(q.add(c)), r, a[0]);
                }
                c += 8;
            }
            let mut sums = [0.0; Q];
            for (s, a) in sums.iter_mut().zip(&acc) {
                *s = hsum(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
            }
            sums
        }
    }

    /// `out[c] += p[j] * v[j * hd + c]` for every row `j` of `p`, one FMA chain per column in
    /// row order, 64 columns at a time in registers (`hd` a multiple of 8).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C; `v` valid for `p.len() * hd` reads, `out` for
    /// `hd` reads and writes.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn accumulate<T: Load8>(p: &[f32], v: *const T, hd: usize, out: *mut f32) {
        // SAFETY: row `j` is `v[j * hd..][..hd]`, columns step by 8 below `hd`.
        unsafe {
            let mut c0 = 0;
            while c0 + 64 <= hd {
                let mut acc = [_mm256_setzero_ps(); 8];
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_loadu_ps(out.add(c0 + 8 * i));
                }
                for (j, &p) in p.iter().enumerate() {
                    let (p, row) = (_mm256_set1_ps(p), v.add(j * hd + c0));
                    for (i, a) in acc.iter_mut().enumerate() {
                        *a = _mm256_fmadd_ps(p, T::load8(row.add(8 * i)), *a);
                    }
                }
                for (i, a) in acc.iter().enumerate() {
                    _mm256_storeu_ps(out.add(c0 + 8 * i), *a);
                }
                c0 += 64;
            }
            while c0 < hd {
                let mut acc = _mm256_loadu_ps(out.add(c0));
                for (j, &p) in p.iter().enumerate() {
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(p), T::load8(v.add(j * hd + c0)), acc);
                }
                _mm256_storeu_ps(out.add(c0), acc);
                c0 += 8;
            }
        }
    }

    /// Fetches row `j` of `rows` (`hd` values each) into the cache level `HINT` names: a hint,
    /// harmless past the end (the address is formed with `wrapping_add` and never read).
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (the features it is compiled with).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn prefetch_row<const HINT: i32, T>(rows: *const T, j: usize, hd: usize) {
        let bytes = hd * std::mem::size_of::<T>();
        let at = rows.cast::<i8>().wrapping_add(j * bytes);
        // A prefetch reads nothing: any address is allowed.
        for line in (0..bytes).step_by(64) {
            _mm_prefetch::<HINT>(at.wrapping_add(line));
        }
    }

    /// Key rows fetched ahead of the one being multiplied, shared and own: a decode step reads
    /// every cached row from memory. A shared row serves every query of the group, so eight
    /// rows ahead cover the memory's latency; an own row serves one query and goes four times
    /// as fast. (Measured on a group of 8 queries over 264 shared and 55 own f16 rows per
    /// head, caches cold: 36.8 -> 34-35 us per head.)
    const SHARED_AHEAD: usize = 8;
    const OWN_AHEAD: usize = 32;

    /// Shared value rows per pass: 32 rows of 128 f32 are 16 KiB, so a chunk read for the
    /// group's first query is still in L1 for the others.
    const CHUNK: usize = 32;

    /// `super::attend_group` for a `head_dim` that is a multiple of 8.
    ///
    /// # Safety
    /// The CPU must have AVX2, FMA and F16C (`kernels` is its `Isa::Avx2`); `q` and `out` hold
    /// `own.len()` rows of the same multiple of 8, and every key/value pair holds the same
    /// whole number of those rows, at least one per query in all.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn attend_group<T: Load8>(
        kernels: Isa,
        q: &[f32],
        shared: (&[T], &[T]),
        own: &[(&[T], &[T])],
        scale: f32,
        scores: &mut Vec<f32>,
        out: &mut [f32],
    ) {
        let m = own.len();
        let hd = q.len() / m;
        let p = shared.0.len() / hd;
        let at = super::offsets(p, own.iter().map(|kv| kv.0.len() / hd));
        // Each query's scores, then each query's sum of exponentials.
        scores.resize(at[m] + m, 0.0);
        // SAFETY: every pointer below stays inside `q`, `out`, `scores` or the rows by the
        // contract: query `i` is `[i * hd, (i + 1) * hd)`, row `j` of a slice likewise, and
        // query `i`'s scores are `at[i]..at[i + 1]` (`p` shared, then its own).
        unsafe {
            let (qp, op) = (q.as_ptr(), out.as_mut_ptr());
            let (probs, sums) = scores.split_at_mut(at[m]);
            let sp = probs.as_mut_ptr();
            // Each shared key row is read once and stays in L1 for the group's queries; two
            // queries share each of its loads (and, for f16 rows, each widening).
            for j in 0..p {
                let row = shared.0.as_ptr().add(j * hd);
                // The keys just ahead into L1, and the value row the second pass will read into
                // L2, so both streams are in flight while the dot products run.
                prefetch_row::<_MM_HINT_T0, T>(shared.0.as_ptr(), j + SHARED_AHEAD, hd);
                prefetch_row::<_MM_HINT_T1, T>(shared.1.as_ptr(), j, hd);
                for i in (0..m).step_by(2) {
                    if i + 1 < m {
                        let [s0, s1] = dots([qp.add(i * hd), qp.add((i + 1) * hd)], row, hd);
                        *sp.add(at[i] + j) = s0 * scale;
                        *sp.add(at[i + 1] + j) = s1 * scale;
                    } else {
                        let [s] = dots([qp.add(i * hd)], row, hd);
                        *sp.add(at[i] + j) = s * scale;
                    }
                }
            }
            for (i, (k, v)) in own.iter().enumerate() {
                for j in 0..k.len() / hd {
                    prefetch_row::<_MM_HINT_T0, T>(k.as_ptr(), j + OWN_AHEAD, hd);
                    prefetch_row::<_MM_HINT_T1, T>(v.as_ptr(), j, hd);
                    let [s] = dots([qp.add(i * hd)], k.as_ptr().add(j * hd), hd);
                    *sp.add(at[i] + p + j) = s * scale;
                }
            }
            for (i, sum) in sums.iter_mut().enumerate() {
                *sum = gemm::softmax_row(kernels, &mut probs[at[i]..at[i + 1]]);
            }
            out.fill(0.0);
            let sp = probs.as_ptr();
            for j0 in (0..p).step_by(CHUNK) {
                let rows = CHUNK.min(p - j0);
                for (i, &at) in at[..m].iter().enumerate() {
                    let probs = std::slice::from_raw_parts(sp.add(at + j0), rows);
                    accumulate(probs, shared.1.as_ptr().add(j0 * hd), hd, op.add(i * hd));
                }
            }
            for (i, (_, v)) in own.iter().enumerate() {
                let probs = std::slice::from_raw_parts(sp.add(at[i] + p), at[i + 1] - at[i] - p);
                accumulate(probs, v.as_ptr(), hd, op.add(i * hd));
                let inv = _mm256_set1_ps(1.0 / sums[i]);
                for c in (0..hd).step_by(8) {
                    let o = op.add(i * hd + c);
                    _mm256_storeu_ps(o, _mm256_mul_ps(_mm256_loadu_ps(o), inv));
                }
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

    fn half(t: &[f32]) -> Vec<f16> {
        t.iter().map(|&x| f16::from_f32(x)).collect()
    }

    fn widen(t: &[f16]) -> Vec<f32> {
        t.iter().map(|x| x.to_f32()).collect()
    }

    /// The f16 rows when `f16_rows`, else the f32 ones.
    fn pick<'a>(f16_rows: bool, f32s: &'a [f32], f16s: &'a [f16]) -> Rows<'a> {
        if f16_rows {
            Rows::F16(f16s)
        } else {
            Rows::F32(f32s)
        }
    }

    /// One query alone, both kernel sets, f32 and f16 rows, widths with and without a
    /// 64-column block and one the AVX2 kernel leaves to the portable path; one row and many.
    #[test]
    fn matches_f64_attention_in_both_dtypes() {
        for (hd, len) in [(128, 301), (128, 1), (40, 77), (88, 33), (8, 5), (22, 19)] {
            let q = values(hd, 1);
            let k = values(hd * len, 2);
            let v = values(hd * len, 3);
            let (k16, v16) = (half(&k), half(&v));
            let scale = (hd as f32).powf(-0.5);
            let exact32 = oracle(&q, &k, &v, scale);
            let exact16 = oracle(&q, &widen(&k16), &widen(&v16), scale);
            for kernels in Isa::available() {
                let mut scores = Vec::new();
                for (rows, exact) in
                    [((Rows::F32(&k), Rows::F32(&v)), &exact32), ((Rows::F16(&k16), Rows::F16(&v16)), &exact16)]
                {
                    let mut out = vec![f32::NAN; hd];
                    let none = (rows.0.empty(), rows.1.empty());
                    attend_group(kernels, &q, none, &[rows], scale, &mut scores, &mut out);
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

    /// A group of queries over shared rows (more than one value chunk, and not a whole number
    /// of them) and rows of their own (none for one query): each query's result is bit for bit
    /// what it gets alone over the same rows held in one piece, and matches f64.
    #[test]
    fn a_group_over_shared_rows_equals_each_query_alone() {
        for (hd, shared, own) in [(128, 75, vec![3, 0, 40, 1]), (40, 33, vec![2, 5]), (22, 9, vec![4, 1, 1])] {
            let m = own.len();
            let q = values(m * hd, 4);
            let (ks, vs) = (values(shared * hd, 5), values(shared * hd, 6));
            let mine: Vec<(Vec<f32>, Vec<f32>)> =
                own.iter().enumerate().map(|(i, &n)| (values(n * hd, 10 + i), values(n * hd, 20 + i))).collect();
            let scale = (hd as f32).powf(-0.5);
            for kernels in Isa::available() {
                for f16_rows in [false, true] {
                    let cast = |t: &[f32]| if f16_rows { widen(&half(t)) } else { t.to_vec() };
                    let (ks16, vs16) = (half(&ks), half(&vs));
                    let mine16: Vec<(Vec<f16>, Vec<f16>)> = mine.iter().map(|(k, v)| (half(k), half(v))).collect();
                    let shared_kv = (pick(f16_rows, &ks, &ks16), pick(f16_rows, &vs, &vs16));
                    let own_kv: Vec<Kv> = mine
                        .iter()
                        .zip(&mine16)
                        .map(|((k, v), (k16, v16))| (pick(f16_rows, k, k16), pick(f16_rows, v, v16)))
                        .collect();
                    let mut scores = Vec::new();
                    let mut got = vec![f32::NAN; m * hd];
                    attend_group(kernels, &q, shared_kv, &own_kv, scale, &mut scores, &mut got);
                    for (i, (k, v)) in mine.iter().enumerate() {
                        let whole_k: Vec<f32> = ks.iter().chain(k).copied().collect();
                        let whole_v: Vec<f32> = vs.iter().chain(v).copied().collect();
                        let (wk16, wv16) = (half(&whole_k), half(&whole_v));
                        let whole = (pick(f16_rows, &whole_k, &wk16), pick(f16_rows, &whole_v, &wv16));
                        let mut alone = vec![f32::NAN; hd];
                        let q = &q[i * hd..][..hd];
                        attend_group(
                            kernels,
                            q,
                            (whole.0.empty(), whole.1.empty()),
                            &[whole],
                            scale,
                            &mut scores,
                            &mut alone,
                        );
                        let got = &got[i * hd..][..hd];
                        assert_eq!(got, &alone[..], "{kernels:?} f16 {f16_rows} hd {hd} query {i}");
                        let exact = oracle(q, &cast(&whole_k), &cast(&whole_v), scale);
                        for (c, (g, e)) in got.iter().zip(&exact).enumerate() {
                            assert!((*g as f64 - e).abs() <= 1e-5, "{kernels:?} hd {hd} query {i} col {c}: {g} vs {e}");
                        }
                    }
                }
            }
        }
    }
}
