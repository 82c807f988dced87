//! f32 matrix products on the CPU, for the ViT (and every f32 `Linear`): a packed GEMM with a
//! register-blocked micro-kernel, plus the row-wise math the ViT fuses around it (softmax, exact
//! GELU). Public for benchmarks and for crates that want a fast f32 `x W^T` of their own.
//!
//! How it is fast (the measurements behind each choice are in `docs/perf.md`):
//!
//! - A weight matrix is packed once, at load, into panels of [`NR`] output columns stored
//!   k-major (`[n / NR][k][NR]`, 64-byte aligned rows), replacing the loaded tensor: the hot
//!   loop never packs weights and the model holds one copy. Panels may hold f16 (widened by
//!   F16C in the kernel; products and sums stay f32).
//! - The micro-kernel keeps an [`MR`] x [`NR`] tile of C in 12 AVX2 registers: per k step two
//!   panel loads, six broadcasts, twelve independent FMAs (two FMA pipes, four cycles latency).
//!   Where the CPU has AVX512F, whole 12 x 32 blocks (two tiles' rows, two panels) run in 24
//!   512-bit registers instead (`avx512.rs`), with the same FMAs per element: bit for bit
//!   the AVX2 tile's results, at up to twice its rate on full-width 512-bit FMA units.
//! - Blocking: activations are packed `MC` rows x `KC` deep (288 KiB, stays in L2) and each
//!   `KC` x [`NR`] weight micro-panel (16 KiB) is reused from L1 across the `MC` rows: the
//!   weights stream from memory once per 288 rows of A, not per 96 (5-7 % faster with f32
//!   weights at ViT-g's shapes, 2-5 % with f16).
//! - Bias and GELU are applied to the tile in registers as it is stored, after its last k block.
//! - Each tile prefetches its share of the next weight panel into L2, and its own C rows.
//! - One or two activation rows (a decode step) run as matrix-vector products over the panels.
//! - Work is split over (row block, column chunk) tasks on rayon's pool, the one `set_threads`
//!   sizes; each task writes its own tile of C.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
mod math;

use std::cell::RefCell;
use std::ops::Range;

use half::f16;
use rayon::prelude::*;

use math::gelu;
pub(crate) use math::{softmax_row, softmax_rows};

use crate::cpu::{Isa, OutPtr, Pages, Zeroable};
use crate::error::{Error, Result};

/// Rows of C per micro-kernel tile.
pub const MR: usize = 6;
/// Columns of C per micro-kernel tile (two AVX2 registers).
pub const NR: usize = 16;
/// Depth of one packed block of A and of one weight micro-panel.
const KC: usize = 256;
/// Rows of A packed at once (a multiple of [`MR`]).
const MC: usize = 288;
/// Most columns of C per parallel task (chunks are a multiple of [`NR`]).
const NC: usize = 1024;
/// Below this many activation rows (a decode step) a product runs as matrix-vector products
/// over the panels: the 6-row tile would spend most of its FMAs on rows of zeros.
const GEMV_ROWS: usize = 3;

/// What is applied to each finished element of C.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Epilogue {
    /// `c = bias + a b`.
    Identity,
    /// `c = gelu(bias + a b)`, the exact (erf) GELU.
    Gelu,
}

/// One row of an f32 weight panel: [`NR`] consecutive output columns at one depth, aligned so
/// the kernel's two 32-byte loads never straddle a cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct PanelRow([f32; NR]);

/// One row of an f16 weight panel (half the bytes; widened in the kernel by F16C).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
struct PanelRowF16([f16; NR]);

/// How a packed matrix holds its values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precision {
    /// 32-bit floats: the exact weights.
    F32,
    /// 16-bit floats: half the memory and memory traffic, weights rounded to f16; products and
    /// sums stay f32.
    F16,
}

// SAFETY: arrays of f32 / f16 with no padding beyond their alignment: all zeros is valid.
unsafe impl Zeroable for PanelRow {}
// SAFETY: as above.
unsafe impl Zeroable for PanelRowF16 {}

enum Panels {
    F32(Pages<PanelRow>),
    F16(Pages<PanelRowF16>),
}

/// The right operand `B: [k, n]` of `C = A B`, packed into panels of [`NR`] columns
/// (`[ceil(n / NR)][k][NR]`, zero past column `n`), in f32 or f16.
pub struct PackedB {
    n: usize,
    k: usize,
    panels: Panels,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackedB([{}, {}], {:?})", self.k, self.n, self.precision())
    }
}

impl PackedB {
    /// Packs `w: [n, k]` (row `j` at `w[j * ld..][..k]`), for `C = A w^T`: a `Linear` weight
    /// `[out, in]`, or the keys of an attention head.
    ///
    /// # Panics
    /// If `w` is shorter than `(n - 1) * ld + k`.
    pub fn from_nk(w: &[f32], n: usize, k: usize, ld: usize, precision: Precision) -> Self {
        assert!(n == 0 || w.len() >= (n - 1) * ld + k, "PackedB::from_nk: {} values for [{n}, {k}] / {ld}", w.len());
        Self::from_nk_rows(n, k, precision, |j| &w[j * ld..][..k])
    }

    /// [`Self::from_nk`] with row `j` (`k` values) given by `row(j)`: keys held in pieces.
    pub(crate) fn from_nk_rows<'a>(
        n: usize,
        k: usize,
        precision: Precision,
        row: impl Fn(usize) -> &'a [f32] + Sync,
    ) -> Self {
        Self::build(n, k, precision, |j0, width, panel| {
            for c in 0..width {
                for (r, &v) in panel.iter_mut().zip(&row(j0 + c)[..k]) {
                    r.0[c] = v;
                }
            }
        })
    }

    /// [`Self::from_nk`] of f16 values into f16 panels, with no f32 copy: a weight stored in
    /// f16 packs to the same panels as its values widened to f32 would.
    ///
    /// # Panics
    /// If `w` is shorter than `(n - 1) * ld + k`.
    pub fn from_nk_f16(w: &[f16], n: usize, k: usize, ld: usize) -> Self {
        assert!(
            n == 0 || w.len() >= (n - 1) * ld + k,
            "PackedB::from_nk_f16: {} values for [{n}, {k}] / {ld}",
            w.len()
        );
        let count = n.div_ceil(NR) * k;
        let mut rows = Pages::<PanelRowF16>::zeroed(count);
        if k > 0 {
            rows.par_chunks_mut(k).enumerate().for_each(|(p, panel)| {
                for c in 0..NR.min(n - p * NR) {
                    for (row, &v) in panel.iter_mut().zip(&w[(p * NR + c) * ld..][..k]) {
                        row.0[c] = v;
                    }
                }
            });
        }
        Self { n, k, panels: Panels::F16(rows) }
    }

    /// Packs `b: [k, n]` (row `p` at `b[p * ld..][..n]`) in f32, for `C = A b`: the values of
    /// an attention head.
    ///
    /// # Panics
    /// If `b` is shorter than `(k - 1) * ld + n`.
    pub fn from_kn(b: &[f32], k: usize, n: usize, ld: usize) -> Self {
        assert!(k == 0 || b.len() >= (k - 1) * ld + n, "PackedB::from_kn: {} values for [{k}, {n}] / {ld}", b.len());
        Self::from_kn_rows(k, n, |p| &b[p * ld..][..n])
    }

    /// [`Self::from_kn`] with row `p` (`n` values) given by `row(p)`: values held in pieces.
    pub(crate) fn from_kn_rows<'a>(k: usize, n: usize, row: impl Fn(usize) -> &'a [f32] + Sync) -> Self {
        Self::build(n, k, Precision::F32, |j0, width, panel| {
            for (p, r) in panel.iter_mut().enumerate() {
                r.0[..width].copy_from_slice(&row(p)[j0..][..width]);
            }
        })
    }

    /// Fills each zeroed panel with `fill(first column, columns in the panel, panel rows)`,
    /// panels in parallel; f16 panels are filled in f32 one panel at a time, then rounded.
    fn build(n: usize, k: usize, precision: Precision, fill: impl Fn(usize, usize, &mut [PanelRow]) + Sync) -> Self {
        let count = n.div_ceil(NR) * k;
        let width = |p: usize| NR.min(n - p * NR);
        let panels = match precision {
            Precision::F32 => {
                let mut rows = Pages::<PanelRow>::zeroed(count);
                if k > 0 {
                    rows.par_chunks_mut(k).enumerate().for_each(|(p, panel)| fill(p * NR, width(p), panel));
                }
                Panels::F32(rows)
            }
            Precision::F16 => {
                let mut rows = Pages::<PanelRowF16>::zeroed(count);
                if k > 0 {
                    rows.par_chunks_mut(k).enumerate().for_each(|(p, panel)| {
                        let mut wide = vec![PanelRow([0.0; NR]); k];
                        fill(p * NR, width(p), &mut wide);
                        for (h, w) in panel.iter_mut().zip(&wide) {
                            h.0 = w.0.map(f16::from_f32);
                        }
                    });
                }
                Panels::F16(rows)
            }
        };
        Self { n, k, panels }
    }

    /// `(k, n)`.
    pub fn dims(&self) -> (usize, usize) {
        (self.k, self.n)
    }

    /// How the values are held.
    pub fn precision(&self) -> Precision {
        match self.panels {
            Panels::F32(_) => Precision::F32,
            Panels::F16(_) => Precision::F16,
        }
    }

    /// Bytes held (padding included).
    pub fn bytes(&self) -> usize {
        match &self.panels {
            Panels::F32(rows) => std::mem::size_of_val(&rows[..]),
            Panels::F16(rows) => std::mem::size_of_val(&rows[..]),
        }
    }

    /// Bytes per panel row.
    fn row_bytes(&self) -> usize {
        match self.panels {
            Panels::F32(_) => std::mem::size_of::<PanelRow>(),
            Panels::F16(_) => std::mem::size_of::<PanelRowF16>(),
        }
    }

    /// Panel `p` from depth `p0`: `[k - p0][NR]` rows of [`Self::row_bytes`].
    fn panel(&self, p: usize, p0: usize) -> *const u8 {
        let at = p * self.k + p0;
        match &self.panels {
            Panels::F32(rows) => rows[at..].as_ptr().cast(),
            Panels::F16(rows) => rows[at..].as_ptr().cast(),
        }
    }
}

/// One micro-kernel call's destination: `mr` x `nr` elements at `c` (row stride `ldc`): at
/// most one [`MR`] x [`NR`] tile, or one AVX-512 block.
pub(super) struct Tile {
    c: *mut f32,
    ldc: usize,
    mr: usize,
    nr: usize,
    /// First k block: C is overwritten (with the bias added, if any) instead of accumulated.
    first: bool,
    /// The bias of the tile's first column, read only when `first`.
    bias: Option<*const f32>,
    /// Last k block with a GELU epilogue.
    gelu: bool,
    /// Lines (64 bytes) of the next weight micro-panel to fetch into L2 meanwhile: each of a
    /// panel's tiles fetches its share, so the next panel never waits on L3 or DRAM.
    next: *const u8,
    next_lines: usize,
}

/// Stores a finished `MR x NR` accumulator tile (`acc[i * NR + j]`) into the part of `t` that
/// exists: the edge tiles of the AVX2 kernel and every tile of the portable one.
///
/// # Safety
/// `t.c` must be valid for reads and writes of `t.mr` rows of `t.nr` elements at stride `t.ldc`,
/// and `t.bias` (when `t.first`) for `t.nr` reads.
unsafe fn store_tile(acc: &[f32; MR * NR], t: &Tile) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        for i in 0..t.mr {
            let row = t.c.add(i * t.ldc);
            for j in 0..t.nr {
                let base = if t.first { t.bias.map_or(0.0, |b| *b.add(j)) } else { *row.add(j) };
                let v = base + acc[i * NR + j];
                *row.add(j) = if t.gelu { gelu(v) } else { v };
            }
        }
    }
}

/// Row `p` of a panel (f32, or f16 when `HALF`) widened to f32.
///
/// # Safety
/// `b` must be valid for `p + 1` panel rows.
unsafe fn panel_row<const HALF: bool>(b: *const u8, p: usize) -> [f32; NR] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let mut row = [0f32; NR];
        if HALF {
            let halves = std::slice::from_raw_parts(b.cast::<f16>().add(p * NR), NR);
            row.iter_mut().zip(halves).for_each(|(v, h)| *v = h.to_f32());
        } else {
            row.copy_from_slice(std::slice::from_raw_parts(b.cast::<f32>().add(p * NR), NR));
        }
        row
    }
}

/// The portable micro-kernel: `kc` steps over packed A (`[kc][MR]`) and B (`[kc][NR]` of f32,
/// or of f16 when `HALF`).
///
/// # Safety
/// `a` and `b` must be valid for `kc * MR` and `kc * NR` reads; `t` as for [`store_tile`].
unsafe fn kernel_portable<const HALF: bool>(kc: usize, a: *const f32, b: *const u8, t: &Tile) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let mut acc = [0f32; MR * NR];
        for p in 0..kc {
            let a = std::slice::from_raw_parts(a.add(p * MR), MR);
            let row = panel_row::<HALF>(b, p);
            for (i, &ai) in a.iter().enumerate() {
                for (c, &bj) in acc[i * NR..][..NR].iter_mut().zip(&row) {
                    *c += ai * bj;
                }
            }
        }
        store_tile(&acc, t)
    }
}

/// One activation row `x` against one panel (`[x.len()][NR]`, f32 or f16 when `HALF`): the
/// panel's [`NR`] sums, each over four interleaved partial sums (`p % 4`, the tail in the first)
/// as the AVX2 form keeps them to hide the FMA latency.
///
/// # Safety
/// `b` must be valid for `x.len()` panel rows.
unsafe fn gemv_portable<const HALF: bool>(x: &[f32], b: *const u8) -> [f32; NR] {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        let steps = x.len() / 4 * 4;
        let mut acc = [[0f32; NR]; 4];
        for (p, &xp) in x.iter().enumerate() {
            let row = panel_row::<HALF>(b, p);
            let slot = if p < steps { p % 4 } else { 0 };
            for (a, r) in acc[slot].iter_mut().zip(row) {
                *a += xp * r;
            }
        }
        std::array::from_fn(|c| (acc[0][c] + acc[1][c]) + (acc[2][c] + acc[3][c]))
    }
}

/// Packs rows `a[r * lda..][..kc]` for `r < live` (at most [`MR`]), times `scale`, into one
/// panel `dst: [kc][MR]`, rows past `live` zero.
fn pack_panel(a: &[f32], lda: usize, live: usize, kc: usize, scale: f32, dst: &mut [f32]) {
    let rows: [&[f32]; MR] = std::array::from_fn(|r| if r < live { &a[r * lda..][..kc] } else { &[] });
    let dst = &mut dst[..kc * MR];
    if live == MR && scale == 1.0 {
        for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
            for (v, row) in d.iter_mut().zip(&rows) {
                *v = row[kk];
            }
        }
    } else {
        for (kk, d) in dst.chunks_exact_mut(MR).enumerate() {
            for (r, v) in d.iter_mut().enumerate() {
                *v = if r < live { rows[r][kk] * scale } else { 0.0 };
            }
        }
    }
}

/// Packs rows `a[i * lda..][..kc]` for `i < mc`, times `scale`, into `[ceil(mc / MR)][kc][MR]`.
fn pack_block(a: &[f32], lda: usize, mc: usize, kc: usize, scale: f32, out: &mut Vec<f32>) {
    let panels = mc.div_ceil(MR);
    out.resize(panels * kc * MR, 0.0);
    for (p, dst) in out.chunks_exact_mut(kc * MR).take(panels).enumerate() {
        pack_panel(&a[p * MR * lda..], lda, MR.min(mc - p * MR), kc, scale, dst);
    }
}

/// All of `A: [m, k]` packed once, for products whose every row block meets many column
/// chunks: the block of depth `p0..p0 + kc` holds `ceil(m / MR)` panels `[kc][MR]` from
/// `p0 * mp` (`mp` = `m` rounded up to [`MR`]).
pub(crate) struct PackedA {
    data: Vec<f32>,
    mp: usize,
    k: usize,
}

impl PackedA {
    /// Packs `x: [m, k]` (row-major), blocks in parallel.
    pub(crate) fn new(x: &[f32], m: usize, k: usize) -> Self {
        let mp = m.div_ceil(MR) * MR;
        let mut data = vec![0f32; mp * k];
        if mp > 0 && k > 0 {
            data.par_chunks_mut(KC * mp).enumerate().for_each(|(b, block)| {
                let p0 = b * KC;
                let kc = KC.min(k - p0);
                for (p, dst) in block.chunks_exact_mut(kc * MR).enumerate() {
                    pack_panel(&x[p * MR * k + p0..], k, MR.min(m - p * MR), kc, 1.0, dst);
                }
            });
        }
        Self { data, mp, k }
    }

    /// The panel of rows `i..i + MR` (`i` a multiple of [`MR`]) in the block at depth `p0`.
    fn panel(&self, p0: usize, kc: usize, i: usize) -> *const f32 {
        self.data[p0 * self.mp + i * kc..].as_ptr()
    }
}

thread_local! {
    /// Each worker's packed block of A, reused across calls.
    static A_PACK: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// The left operand `A: [rows, k]` of a product.
#[derive(Clone, Copy)]
pub(crate) enum Lhs<'a> {
    /// Row `i` at `data[i * ld..][..k]`, times `scale`, packed block by block as it is used.
    Rows { data: &'a [f32], ld: usize, rows: usize, scale: f32 },
    /// Rows `first..first + rows` (`first` a multiple of [`MR`]) of a matrix packed beforehand.
    Packed { a: &'a PackedA, first: usize, rows: usize },
}

impl Lhs<'_> {
    fn rows(&self) -> usize {
        match *self {
            Self::Rows { rows, .. } | Self::Packed { rows, .. } => rows,
        }
    }
}

/// Where C goes: element `(i, j)` at `ptr + i * ld + j`, and what is applied to it.
#[derive(Clone, Copy)]
pub(crate) struct Out<'a> {
    pub(crate) ptr: OutPtr,
    pub(crate) ld: usize,
    pub(crate) bias: Option<&'a [f32]>,
    pub(crate) epilogue: Epilogue,
}

/// `C[i, j] = epilogue(bias[j] + sum_p A[i, p] B[p, j])` for every row of `a` and `j` in `cols`
/// (`cols.start` a multiple of [`NR`]), on the calling thread.
///
/// # Safety
/// `out.ptr` must be valid for writes of `a.rows` rows at stride `out.ld` over columns `cols`,
/// and no other thread may touch those elements meanwhile.
pub(crate) unsafe fn gemm_on_thread(isa: Isa, a: Lhs, b: &PackedB, cols: Range<usize>, out: Out) {
    // SAFETY: the caller upholds this function's `# Safety` contract, which is `gemm_to_depth`'s.
    unsafe { gemm_to_depth(isa, a, b, b.k, cols, out) }
}

/// [`gemm_on_thread`] over the first `depth` rows of `B` only (`depth <= k`; `A` needs `depth`
/// columns): a causal attention's later keys, whose probabilities are zero, are skipped.
///
/// # Safety
/// As [`gemm_on_thread`].
pub(crate) unsafe fn gemm_to_depth(isa: Isa, a: Lhs, b: &PackedB, depth: usize, cols: Range<usize>, out: Out) {
    // SAFETY: the caller upholds this function's `# Safety` contract.
    unsafe {
        debug_assert_eq!(cols.start % NR, 0);
        assert!(cols.end <= b.n && depth <= b.k && out.bias.is_none_or(|bias| bias.len() >= b.n));
        let rows = a.rows();
        match a {
            Lhs::Rows { data, ld, .. } => {
                assert!(rows == 0 || data.len() >= (rows - 1) * ld + depth, "gemm: A too short for [{rows}, {depth}]")
            }
            Lhs::Packed { a, first, .. } => {
                assert!(first % MR == 0 && first + rows <= a.mp && a.k == depth, "gemm: packed A does not match")
            }
        }
        if rows == 0 || cols.is_empty() {
            return;
        }
        if depth == 0 {
            // No depth: C is the bias alone (through the epilogue).
            let zero = [0f32; MR * NR];
            for i in (0..rows).step_by(MR) {
                for j in cols.clone().step_by(NR) {
                    let t = tile(&out, i, j, MR.min(rows - i), NR.min(cols.end - j), true, true);
                    store_tile(&zero, &t);
                }
            }
            return;
        }
        A_PACK.with(|pack| {
            let pack = &mut *pack.borrow_mut();
            for p0 in (0..depth).step_by(KC) {
                let kc = KC.min(depth - p0);
                let (first, last) = (p0 == 0, p0 + kc == depth);
                for i0 in (0..rows).step_by(MC) {
                    let mc = MC.min(rows - i0);
                    let block = match a {
                        Lhs::Rows { data, ld, scale, .. } => {
                            pack_block(&data[i0 * ld + p0..], ld, mc, kc, scale, pack);
                            pack.as_ptr()
                        }
                        Lhs::Packed { a, first, .. } => a.panel(p0, kc, first + i0),
                    };
                    // Each tile of a panel prefetches `share` bytes of the next panel.
                    let panel_bytes = kc * b.row_bytes();
                    let share = panel_bytes.div_ceil(mc.div_ceil(MR));
                    let half = b.precision() == Precision::F16;
                    let bstride = b.k * b.row_bytes();
                    let mut j = cols.start;
                    while j < cols.end {
                        // Whole panel pairs go to the AVX-512 kernel where the CPU has it.
                        let pair = wide_tiles(isa) && j + WIDE_COLS <= cols.end;
                        let step = if pair { WIDE_COLS } else { NR };
                        let bp = b.panel(j / NR, p0);
                        let next = if j + step < cols.end { b.panel((j + step) / NR, p0) } else { std::ptr::null() };
                        let nr = step.min(cols.end - j);
                        let mut i = 0;
                        while i < mc {
                            let wide = pair && mc - i >= WIDE_ROWS;
                            let mr = if wide { WIDE_ROWS } else { MR.min(mc - i) };
                            // A pair outside the wide calls (its last rows) runs panel by panel.
                            for s in 0..if wide { 1 } else { nr.div_ceil(NR) } {
                                let (jj, nrr) =
                                    if wide { (j, nr) } else { (j + s * NR, NR.min(cols.end - j - s * NR)) };
                                let bps = if wide { bp } else { bp.add(s * bstride) };
                                let mut t = tile(&out, i0 + i, jj, mr, nrr, first, last);
                                if !next.is_null() && s == 0 {
                                    let from = (i / MR * share).min(panel_bytes);
                                    t.next = next.add(from);
                                    t.next_lines = (mr.div_ceil(MR) * share).min(panel_bytes - from).div_ceil(64);
                                }
                                let ap = block.add(i * kc);
                                match (isa, half) {
                                    #[cfg(target_arch = "x86_64")]
                                    (Isa::Avx2(_), false) if wide => avx512::kernel(kc, ap, bps, bstride, &t),
                                    #[cfg(target_arch = "x86_64")]
                                    (Isa::Avx2(_), true) if wide => avx512::kernel_f16(kc, ap, bps, bstride, &t),
                                    #[cfg(target_arch = "x86_64")]
                                    (Isa::Avx2(_), false) => avx2::kernel(kc, ap, bps, &t),
                                    #[cfg(target_arch = "x86_64")]
                                    (Isa::Avx2(_), true) => avx2::kernel_f16(kc, ap, bps, &t),
                                    (Isa::Portable, false) => kernel_portable::<false>(kc, ap, bps, &t),
                                    (Isa::Portable, true) => kernel_portable::<true>(kc, ap, bps, &t),
                                }
                            }
                            i += mr;
                        }
                        j += step;
                    }
                }
            }
        })
    }
}

/// Rows of C per AVX-512 kernel call (two tiles' rows); a name for the portable build too.
#[cfg(target_arch = "x86_64")]
const WIDE_ROWS: usize = avx512::ROWS;
#[cfg(not(target_arch = "x86_64"))]
const WIDE_ROWS: usize = 2 * MR;
/// Columns of C per AVX-512 kernel call.
#[cfg(target_arch = "x86_64")]
const WIDE_COLS: usize = avx512::COLS;
#[cfg(not(target_arch = "x86_64"))]
const WIDE_COLS: usize = 2 * NR;

/// Whether `isa` runs whole 12 x 32 blocks of f32 tiles in 512-bit registers.
fn wide_tiles(isa: Isa) -> bool {
    match isa {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(a) => a.avx512(),
        Isa::Portable => false,
    }
}

/// The tile of `out` at row `i`, column `j`.
fn tile(out: &Out, i: usize, j: usize, mr: usize, nr: usize, first: bool, last: bool) -> Tile {
    Tile {
        // SAFETY (of the pointer arithmetic): in bounds by `gemm_on_thread`'s contract.
        c: unsafe { out.ptr.0.add(i * out.ld + j) },
        ldc: out.ld,
        mr,
        nr,
        first,
        bias: out.bias.map(|b| b[j..].as_ptr()),
        gelu: last && out.epilogue == Epilogue::Gelu,
        next: std::ptr::null(),
        next_lines: 0,
    }
}

/// `epilogue(x W^T + bias)` for `x: [m, k]` row-major, a packed weight `W: [n, k]` and
/// `bias: [n]`, on rayon's pool: returns `[m, n]`.
pub fn linear(x: &[f32], m: usize, w: &PackedB, bias: Option<&[f32]>, epilogue: Epilogue) -> Result<Vec<f32>> {
    linear_with(Isa::detect(), x, m, w, bias, epilogue)
}

/// [`linear`] on the given instruction set (one of [`Isa::available`]).
#[doc(hidden)]
pub fn linear_with(
    isa: Isa,
    x: &[f32],
    m: usize,
    w: &PackedB,
    bias: Option<&[f32]>,
    epilogue: Epilogue,
) -> Result<Vec<f32>> {
    let (k, n) = w.dims();
    if x.len() != m * k {
        return Err(Error::InvalidOption(format!("{} input values for [{m}, {k}]", x.len())));
    }
    if let Some(b) = bias.filter(|b| b.len() != n) {
        return Err(Error::InvalidOption(format!("a bias of {} values for {n} outputs", b.len())));
    }
    let mut y = vec![0f32; m * n];
    let ptr = OutPtr(y.as_mut_ptr());
    if m < GEMV_ROWS {
        let half = w.precision() == Precision::F16;
        (0..n.div_ceil(NR)).into_par_iter().with_min_len(4).for_each(|p| {
            let (j0, nr) = (p * NR, NR.min(n - p * NR));
            for i in 0..m {
                let xi = &x[i * k..(i + 1) * k];
                let panel = w.panel(p, 0);
                // SAFETY: the panel holds `k` rows; the kernel set runs on this CPU (checked).
                let sums = unsafe {
                    match (isa, half) {
                        #[cfg(target_arch = "x86_64")]
                        (Isa::Avx2(_), _) => avx2::gemv_panel(xi, panel, half),
                        (Isa::Portable, false) => gemv_portable::<false>(xi, panel),
                        (Isa::Portable, true) => gemv_portable::<true>(xi, panel),
                    }
                };
                for (c, &sum) in sums[..nr].iter().enumerate() {
                    let v = sum + bias.map_or(0.0, |b| b[j0 + c]);
                    let v = if epilogue == Epilogue::Gelu { gelu(v) } else { v };
                    // SAFETY: element (i, j0 + c) of `y`; panel `p` is this task's alone.
                    unsafe { *ptr.add(i * n + j0 + c).0 = v };
                }
            }
        });
        return Ok(y);
    }
    let packed = PackedA::new(x, m, k);
    let (height, chunk) = task_grid(m, n, rayon::current_num_threads());
    let tasks: Vec<(usize, usize)> =
        (0..m).step_by(height).flat_map(|i| (0..n).step_by(chunk).map(move |j| (i, j))).collect();
    tasks.par_iter().for_each(|&(i, j)| {
        let a = Lhs::Packed { a: &packed, first: i, rows: height.min(m - i) };
        // SAFETY: `ptr + i * n` starts row `i` of `y`; task (i, j) writes rows `i..i + height` and
        // columns `j..j + chunk` only, which no other task writes.
        let out = Out { ptr: unsafe { ptr.add(i * n) }, ld: n, bias, epilogue };
        unsafe { gemm_on_thread(isa, a, w, j..(j + chunk).min(n), out) };
    });
    Ok(y)
}

/// How [`linear`] splits `C: [m, n]` over `threads`: `(rows, columns)` of each task, rows a
/// multiple of [`MR`] (at most [`MC`]), columns a multiple of [`NR`] (at most [`NC`] unless more
/// chunks would split panels). Blocks of equal size, and, where the panels allow, a task count
/// that is a multiple of `threads`: one task more than the others wait for costs a whole task's
/// time with every other thread idle.
fn task_grid(m: usize, n: usize, threads: usize) -> (usize, usize) {
    let blocks = m.div_ceil(MC).max(1);
    let height = m.div_ceil(blocks).div_ceil(MR) * MR;
    let panels = n.div_ceil(NR).max(1);
    let threads = threads.max(1);
    let mut chunks = n.div_ceil(NC).max(1);
    // Even out the chunk count, at most doubling it (smaller chunks read the A block more often).
    let limit = (2 * chunks).min(panels);
    while !(blocks * chunks).is_multiple_of(threads) && chunks < limit {
        chunks += 1;
    }
    if !(blocks * chunks).is_multiple_of(threads) {
        chunks = n.div_ceil(NC).max(1);
    }
    (height.max(MR), panels.div_ceil(chunks) * NR)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The task grid covers C with blocks of the promised sizes, and gives every thread the
    /// same number of tasks at 1, 2 and 4 threads wherever the panels allow it.
    #[test]
    fn task_grid_balances_the_threads() {
        for &(m, n) in &[(1025, 1408), (1025, 4224), (1025, 6144), (298, 4096), (3, 16), (97, 33), (1, 1), (2000, 40)] {
            for threads in 1..=5 {
                let (height, chunk) = task_grid(m, n, threads);
                assert!(
                    height % MR == 0 && height <= MC.max(MR) && height >= MR,
                    "[{m}, {n}] / {threads}: height {height}"
                );
                assert!(chunk % NR == 0 && chunk >= NR, "[{m}, {n}] / {threads}: chunk {chunk}");
                let tasks = m.div_ceil(height) * n.div_ceil(chunk);
                assert_eq!(m.div_ceil(height), m.div_ceil(MC), "[{m}, {n}]: no more row blocks than MC asks");
                let panels = n.div_ceil(NR);
                if panels >= 2 * threads && [1, 2, 4].contains(&threads) {
                    assert_eq!(tasks % threads, 0, "[{m}, {n}] / {threads}: {tasks} tasks of {height} x {chunk}");
                }
            }
        }
    }

    /// Packing f16 values directly gives the panels of packing them widened to f32.
    #[test]
    fn f16_packing_equals_widened_packing() {
        for (n, k) in [(1, 1), (5, 3), (17, 40), (33, 7)] {
            let h: Vec<f16> = values(n * k, 3).iter().map(|&v| f16::from_f32(v)).collect();
            let w: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
            let (a, b) = (PackedB::from_nk_f16(&h, n, k, k), PackedB::from_nk(&w, n, k, k, Precision::F16));
            let (Panels::F16(a), Panels::F16(b)) = (&a.panels, &b.panels) else { panic!("f16 panels") };
            assert!(a.iter().zip(b.iter()).all(|(x, y)| x.0.map(f16::to_bits) == y.0.map(f16::to_bits)), "[{n}, {k}]");
            assert_eq!(a.len(), b.len());
        }
    }

    /// Deterministic values in [-1, 1).
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 23) as f32) - 1.0
            })
            .collect()
    }

    /// Every shape class (edge rows and columns, several k blocks and row blocks, more than one
    /// column chunk), f32 and f16 weights, against an f64 product of the weights as held, within
    /// f32's summation bound `k * eps * sum |x w|` per element.
    #[test]
    fn linear_matches_f64_product() {
        for kernels in Isa::available() {
            for precision in [Precision::F32, Precision::F16] {
                for &(m, n, k) in &[
                    (1, 1, 1),
                    (1, 37, 302),
                    (2, 70, 517),
                    (5, 17, 3),
                    (13, 37, 300),
                    (97, 33, 517),
                    (6, 16, 256),
                    (200, 1040, 40),
                ] {
                    for (bias, epilogue) in
                        [(false, Epilogue::Identity), (true, Epilogue::Identity), (true, Epilogue::Gelu)]
                    {
                        let x = values(m * k, 1);
                        let mut w = values(n * k, 2);
                        let b = values(n, 3);
                        let packed = PackedB::from_nk(&w, n, k, k, precision);
                        if precision == Precision::F16 {
                            w.iter_mut().for_each(|v| *v = f16::from_f32(*v).to_f32());
                        }
                        let y = linear_with(kernels, &x, m, &packed, bias.then_some(&b[..]), epilogue).unwrap();
                        for i in 0..m {
                            for j in 0..n {
                                let mut exact = if bias { b[j] as f64 } else { 0.0 };
                                let mut mag = exact.abs();
                                for p in 0..k {
                                    exact += x[i * k + p] as f64 * w[j * k + p] as f64;
                                    mag += (x[i * k + p] * w[j * k + p]).abs() as f64;
                                }
                                let mut bound = (k + 2) as f64 * f32::EPSILON as f64 * mag + 1e-30;
                                if epilogue == Epilogue::Gelu {
                                    // GELU's slope is below 1.13; its own error below 3e-7 (1 + |x|).
                                    bound = 1.13 * bound + 3e-7 * (1.0 + exact.abs());
                                    exact = math::gelu_f64(exact);
                                }
                                let got = y[i * n + j] as f64;
                                assert!(
                                    (got - exact).abs() <= bound,
                                    "{kernels:?} {precision:?} [{m}x{k}]x[{k}x{n}] {epilogue:?} bias {bias}: ({i}, {j}) = {got}, expected {exact} (bound {bound})"
                                );
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX-512 kernel (12 x 32 blocks) gives the AVX2 tile's products bit for bit:
    /// whole and edge row groups, edge columns, several k blocks (C accumulated), bias and GELU,
    /// f32 and f16 weights, a scaled strided A and a packed one.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn avx512_tiles_equal_avx2_bit_for_bit() {
        let Some(&wide) = Isa::available().iter().find(|&&i| wide_tiles(i)) else {
            eprintln!("no AVX512F on this CPU: the AVX-512 GEMM kernel is not run here");
            return;
        };
        let plain = Isa::available()[1];
        assert!(matches!(plain, Isa::Avx2(a) if !a.avx512()));
        for precision in [Precision::F32, Precision::F16] {
            for &(m, n, k) in &[(24, 16, 256), (30, 40, 300), (97, 33, 517), (300, 50, 600), (48, 88, 88)] {
                for epilogue in [Epilogue::Identity, Epilogue::Gelu] {
                    let x = values(m * k, 11);
                    let w = values(n * k, 12);
                    let b = values(n, 13);
                    let packed = PackedB::from_nk(&w, n, k, k, precision);
                    let run = |isa| linear_with(isa, &x, m, &packed, Some(&b[..]), epilogue).unwrap();
                    let (y0, y1) = (run(plain), run(wide));
                    let differ = y0.iter().zip(&y1).filter(|(a, b)| a.to_bits() != b.to_bits()).count();
                    assert_eq!(differ, 0, "{precision:?} [{m}x{k}]x[{k}x{n}] {epilogue:?}: {differ} elements differ");
                    // The attention's path: A read by rows, scaled, into a strided C.
                    let run_rows = |isa| {
                        let mut c = vec![0f32; m * (n + 3)];
                        let out = Out { ptr: OutPtr(c.as_mut_ptr()), ld: n + 3, bias: None, epilogue };
                        let a = Lhs::Rows { data: &x, ld: k, rows: m, scale: 0.3 };
                        // SAFETY: `c` holds `m` rows at stride `n + 3 >= n`; this thread is the only one.
                        unsafe { gemm_on_thread(isa, a, &packed, 0..n, out) };
                        c
                    };
                    let (c0, c1) = (run_rows(plain), run_rows(wide));
                    assert!(
                        c0.iter().zip(&c1).all(|(a, b)| a.to_bits() == b.to_bits()),
                        "rows {precision:?} [{m}x{k}]x[{k}x{n}]"
                    );
                }
            }
        }
    }

    /// Packing `[k, n]` rows gives the same panels as packing the transpose as `[n, k]`, and a
    /// strided, scaled A reads the right elements.
    #[test]
    fn packings_and_strides_agree() {
        let (m, n, k, ld) = (11, 21, 19, 30);
        let b = values(k * ld, 4);
        let kn = PackedB::from_kn(&b, k, n, ld);
        let mut t = vec![0f32; n * k];
        for p in 0..k {
            for j in 0..n {
                t[j * k + p] = b[p * ld + j];
            }
        }
        let nk = PackedB::from_nk(&t, n, k, k, Precision::F32);
        let (Panels::F32(kn_rows), Panels::F32(nk_rows)) = (&kn.panels, &nk.panels) else { panic!("f32 panels") };
        assert!(kn_rows.iter().zip(nk_rows.iter()).all(|(a, b)| a.0 == b.0));
        let a = values(m * ld, 5);
        for kernels in Isa::available() {
            let mut c = vec![f32::NAN; m * ld];
            let out = Out { ptr: OutPtr(c.as_mut_ptr()), ld, bias: None, epilogue: Epilogue::Identity };
            // SAFETY: `c` holds `m` rows at stride `ld >= n`, and this thread is the only one.
            unsafe { gemm_on_thread(kernels, Lhs::Rows { data: &a, ld, rows: m, scale: 0.5 }, &kn, 0..n, out) };
            for i in 0..m {
                for j in 0..ld {
                    let got = c[i * ld + j];
                    if j >= n {
                        assert!(got.is_nan(), "column {j} past n was written");
                        continue;
                    }
                    let exact: f64 = (0..k).map(|p| 0.5 * a[i * ld + p] as f64 * b[p * ld + j] as f64).sum();
                    assert!((got as f64 - exact).abs() < 1e-5, "({i}, {j}): {got} vs {exact}");
                }
            }
        }
    }
}
