//! Quantized weight matrices for the CPU, with our own kernels. The LLM uses them when its
//! weights are quantized on the CPU; they are public for benchmarks and for crates that want a
//! fast quantized `x W^T` of their own.
//!
//! The formats are llama.cpp's (Q8_0, Q4_0: blocks of 32 values sharing an f16 scale; Q4_K:
//! super-blocks of 256), quantized with the same arithmetic, so a matrix holds the same numbers
//! as llama.cpp's file would. What differs from candle's quantized matmul (which `docs/perf.md`
//! compares) is the layout and the kernels:
//!
//! - Each matrix is held once, quantized from the loaded tensor (or repacked from a GGUF
//!   file's blocks) in place, in tiles of eight rows (`layout`): per block of 32 columns, the
//!   eight rows' quants ordered so one `maddubs` multiplies four values of all eight rows at
//!   once, with the tile's f16 scales beside them (one F16C instruction widens all eight). A
//!   kernel reads one contiguous stream per tile and each weight vector it loads serves up to
//!   four activation rows (eight with AVX-512 VNNI), so prefill runs near the arithmetic peak and decode near the
//!   memory bound.
//! - Activations are quantized once per call to 8-bit blocks with f32 scales (finer than
//!   llama.cpp's 256-value Q8_K blocks for Q4_K).
//!
//! Work is split over chunks of tiles on rayon's pool, the one `set_threads` sizes. Measured
//! speeds are in `docs/perf.md` (`minigpt-med bench --kernels`).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod ggml;
mod layout;
mod portable;

pub use ggml::ggml_row_bytes;

use candle_core::quantized::k_quants::{BlockQ4K, GgmlType, QK_K};
use half::f16;
use rayon::prelude::*;

use crate::cpu::{Isa, OutPtr, Pages};
use crate::error::{Error, Result};
use layout::TILE;

/// llama.cpp's Q4_K super-block, as candle 0.11.1's `BlockQ4K` lays it out (`#[repr(C)]`, the
/// same field order; its fields are private to candle): read once, after candle's quantizer.
#[repr(C)]
struct Q4KRaw {
    d: f16,
    dmin: f16,
    scales: [u8; 12],
    qs: [u8; QK_K / 2],
}
const _: () = assert!(std::mem::size_of::<Q4KRaw>() == std::mem::size_of::<BlockQ4K>());
const _: () = assert!(std::mem::align_of::<Q4KRaw>() == std::mem::align_of::<BlockQ4K>());

/// candle's block as GGML's fields.
fn q4k_fields(block: &BlockQ4K) -> layout::Q4KBlock {
    // SAFETY: same size, alignment and field layout (checked above; the tests compare our
    // dequantization with candle's `to_float`); all bit patterns are valid for both.
    let raw = unsafe { &*(block as *const BlockQ4K as *const Q4KRaw) };
    layout::Q4KBlock { d: raw.d, dmin: raw.dmin, scales: raw.scales, qs: raw.qs }
}

/// One activation row: quants `[kp]`, block scales `[kp / 32]`, block sums `[kp / 32]`
/// (`scale * sum(quants)`), and the integer sums of each block's quants `[kp / 32]`.
pub(super) type ActRow<'a> = (&'a [i8], &'a [f32], &'a [f32], &'a [i32]);

/// Values per Q8_0 / Q4_0 block.
pub const BLOCK: usize = 32;

/// Runs `$call` with `$y` (1 to `$max` activation rows, `$max` 4 or 8) bound as an array of
/// its own length, writing the results into `$out`: const row counts, so each kernel keeps its
/// accumulators in registers (eight rows only fit in AVX-512's 32 vector registers).
#[cfg(target_arch = "x86_64")]
macro_rules! with_rows {
    ($y:expr, $out:expr, $max:tt, |$a:ident| $call:expr) => {{
        macro_rules! call {
            ($n:literal) => {{
                let $a: [ActRow; $n] = std::array::from_fn(|k| $y[k]);
                $out[..$n].copy_from_slice(&$call);
            }};
        }
        with_rows!(@arms $y.len(), $max, call)
    }};
    (@arms $len:expr, 4, $call:ident) => {
        match $len {
            1 => $call!(1),
            2 => $call!(2),
            3 => $call!(3),
            _ => $call!(4),
        }
    };
    (@arms $len:expr, 8, $call:ident) => {
        match $len {
            1 => $call!(1),
            2 => $call!(2),
            3 => $call!(3),
            4 => $call!(4),
            5 => $call!(5),
            6 => $call!(6),
            7 => $call!(7),
            _ => $call!(8),
        }
    };
}

/// A quantized storage format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuantFormat {
    /// 8-bit, blocks of 32 with an f16 scale (8.5 bits per weight).
    Q8_0,
    /// 4-bit, blocks of 32 with an f16 scale (4.5 bits per weight).
    Q4_0,
    /// 4-bit k-quants: super-blocks of 256 with 6-bit sub-block scales and mins (4.5 bits).
    Q4K,
}

impl QuantFormat {
    /// Values per block (32, or 256 for Q4_K).
    pub fn block_size(self) -> usize {
        match self {
            Self::Q8_0 | Self::Q4_0 => BLOCK,
            Self::Q4K => QK_K,
        }
    }

    /// Whether a matrix with `cols` inputs can be held in this format.
    pub fn accepts(self, cols: usize) -> bool {
        match self {
            Self::Q8_0 | Self::Q4_0 => cols > 0,
            Self::Q4K => cols > 0 && cols.is_multiple_of(QK_K),
        }
    }
}

/// The weights, in tiles of eight rows (the last one zero-padded), each tile one contiguous
/// stream (see `layout`): a kernel computing eight outputs reads one stream, which the hardware
/// prefetcher follows at full speed (separate row streams reached only ~60 % of the memory
/// bandwidth).
enum Data {
    /// `[tile][block]` of [`layout::Q8_0_BYTES`].
    Q8_0(Pages<u8>),
    /// `[tile][block]` of [`layout::Q4_0_BYTES`].
    Q4_0(Pages<u8>),
    /// `[tile][super-block]` of [`layout::Q4K_BYTES`].
    Q4K(Pages<u8>),
}

/// A weight matrix `[rows, cols]` (rows = outputs) held quantized.
pub struct QuantMatrix {
    rows: usize,
    cols: usize,
    /// `cols` rounded up to [`BLOCK`] for Q8_0/Q4_0; `cols` for Q4_K.
    kp: usize,
    data: Data,
}

impl std::fmt::Debug for QuantMatrix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "QuantMatrix({:?}, [{}, {}])", self.format(), self.rows, self.cols)
    }
}

/// Activations quantized to 8-bit blocks: `qs: [m, kp]`, `d: [m, kp / 32]`, each block's
/// sum `ys = d * sum(qs)` (`[m, kp / 32]`) for formats whose weights carry an offset (for
/// Q4_0, whose offset is 8, `8 * ys`: the product is exact, so taking it here once per block
/// and row gives the kernels' own results, and spares the eight-row kernels a multiply and a
/// broadcast per row, block and weight tile), and the
/// integer `sums = sum(qs)` (`[m, kp / 32]`) for kernels that give the weights one (the VNNI
/// Q8_0 kernels multiply `w + 128`, unsigned, and take `128 * sum` off).
struct Q8Rows {
    qs: Vec<i8>,
    d: Vec<f32>,
    ys: Vec<f32>,
    sums: Vec<i32>,
}

impl QuantMatrix {
    /// Quantizes `w: [rows, cols]` (row-major f32), row quads in parallel.
    pub fn quantize(w: &[f32], rows: usize, cols: usize, format: QuantFormat) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(Error::InvalidOption(format!("{} values given for a [{rows}, {cols}] matrix", w.len())));
        }
        Self::quantize_from(rows, cols, format, |i, out| out.copy_from_slice(&w[i * cols..(i + 1) * cols]))
    }

    /// [`Self::quantize`] from f16 values (a checkpoint's own dtype), widened a row at a time:
    /// no f32 copy of the matrix is ever made.
    pub fn quantize_f16(w: &[f16], rows: usize, cols: usize, format: QuantFormat) -> Result<Self> {
        if w.len() != rows * cols {
            return Err(Error::InvalidOption(format!("{} values given for a [{rows}, {cols}] matrix", w.len())));
        }
        Self::quantize_from(rows, cols, format, |i, out| {
            for (o, h) in out.iter_mut().zip(&w[i * cols..(i + 1) * cols]) {
                *o = h.to_f32();
            }
        })
    }

    /// Quantizes the matrix whose row `i` `fill(i, out)` writes into `out` (`cols` long).
    fn quantize_from(
        rows: usize,
        cols: usize,
        format: QuantFormat,
        fill: impl Fn(usize, &mut [f32]) + Sync,
    ) -> Result<Self> {
        if !format.accepts(cols) {
            return Err(Error::InvalidOption(format!(
                "{format:?} needs a column count that is a multiple of {}; {cols} given",
                format.block_size()
            )));
        }
        let kp = Self::padded_cols(format, cols);
        let nb = kp / BLOCK;
        // Row `i` in `buf`; rows past the end stay zero (their outputs are dropped).
        let row = |i: usize, buf: &mut Vec<f32>| -> bool {
            buf.resize(cols, 0.0);
            (i < rows).then(|| fill(i, buf)).is_some()
        };
        let data = match format {
            QuantFormat::Q8_0 => {
                let mut bytes = Self::tile_bytes(format, rows, kp);
                bytes.par_chunks_mut(nb * layout::Q8_0_BYTES).enumerate().for_each(|(t, tile)| {
                    let (mut w, mut q) = (Vec::new(), [0i8; BLOCK]);
                    for r in 0..TILE {
                        if !row(TILE * t + r, &mut w) {
                            continue;
                        }
                        for (b, blk) in tile.chunks_exact_mut(layout::Q8_0_BYTES).enumerate() {
                            let d = quantize_q8_block(padded_block(&w, b), &mut q);
                            layout::q8_0_put(blk, r, f16::from_f32(d), &q.map(|v| v as u8));
                        }
                    }
                });
                Data::Q8_0(bytes)
            }
            QuantFormat::Q4_0 => {
                let mut bytes = Self::tile_bytes(format, rows, kp);
                bytes.par_chunks_mut(nb * layout::Q4_0_BYTES).enumerate().for_each(|(t, tile)| {
                    let mut w = Vec::new();
                    for r in 0..TILE {
                        if !row(TILE * t + r, &mut w) {
                            continue;
                        }
                        for (b, blk) in tile.chunks_exact_mut(layout::Q4_0_BYTES).enumerate() {
                            let (d, q) = quantize_q4_0_block(padded_block(&w, b));
                            layout::q4_0_put(blk, r, d, &q);
                        }
                    }
                });
                Data::Q4_0(bytes)
            }
            QuantFormat::Q4K => {
                let per_row = cols / QK_K;
                let mut bytes = Self::tile_bytes(format, rows, kp);
                bytes.par_chunks_mut(per_row * layout::Q4K_BYTES).enumerate().for_each(|(t, tile)| {
                    let mut one = vec![BlockQ4K::zeros(); per_row];
                    let mut w = Vec::new();
                    for r in 0..TILE {
                        if !row(TILE * t + r, &mut w) {
                            continue;
                        }
                        BlockQ4K::from_float(&w, &mut one);
                        for (blk, src) in tile.chunks_exact_mut(layout::Q4K_BYTES).zip(&one) {
                            layout::q4k_put(blk, r, &q4k_fields(src));
                        }
                    }
                });
                Data::Q4K(bytes)
            }
        };
        Ok(Self { rows, cols, kp, data })
    }

    /// The storage format.
    pub fn format(&self) -> QuantFormat {
        match self.data {
            Data::Q8_0(_) => QuantFormat::Q8_0,
            Data::Q4_0 { .. } => QuantFormat::Q4_0,
            Data::Q4K(_) => QuantFormat::Q4K,
        }
    }

    /// `(rows, cols)`: outputs and inputs.
    pub fn dims(&self) -> (usize, usize) {
        (self.rows, self.cols)
    }

    /// Bytes held (padding included).
    pub fn bytes(&self) -> usize {
        match &self.data {
            Data::Q8_0(b) | Data::Q4_0(b) | Data::Q4K(b) => b.len(),
        }
    }

    /// Columns as stored: `cols` rounded up to a block (Q8_0, Q4_0), or `cols` (Q4_K, whose
    /// rows are whole super-blocks).
    fn padded_cols(format: QuantFormat, cols: usize) -> usize {
        match format {
            QuantFormat::Q8_0 | QuantFormat::Q4_0 => cols.div_ceil(BLOCK) * BLOCK,
            QuantFormat::Q4K => cols,
        }
    }

    /// Bytes of one tile block (a block of [`QuantFormat::block_size`] columns of eight rows).
    fn tile_block_bytes(format: QuantFormat) -> usize {
        match format {
            QuantFormat::Q8_0 => layout::Q8_0_BYTES,
            QuantFormat::Q4_0 => layout::Q4_0_BYTES,
            QuantFormat::Q4K => layout::Q4K_BYTES,
        }
    }

    /// Bytes per tile of a matrix of `format` with `kp` stored columns.
    fn per_tile(format: QuantFormat, kp: usize) -> usize {
        kp / format.block_size() * Self::tile_block_bytes(format)
    }

    /// A zeroed buffer for the tiles of a matrix with `kp` stored columns. Padding rows
    /// stay zero: a zero scale makes them zero whatever their nibbles.
    fn tile_bytes(format: QuantFormat, rows: usize, kp: usize) -> Pages<u8> {
        Pages::zeroed(rows.div_ceil(TILE) * Self::per_tile(format, kp))
    }

    /// Tile `t`: its weights and scales.
    fn tile(&self, t: usize) -> Tile<'_> {
        let per = Self::per_tile(self.format(), self.kp);
        match &self.data {
            Data::Q8_0(b) => Tile::Q8_0(&b[t * per..(t + 1) * per]),
            Data::Q4_0(b) => Tile::Q4_0(&b[t * per..(t + 1) * per]),
            Data::Q4K(b) => Tile::Q4K(&b[t * per..(t + 1) * per]),
        }
    }

    /// The weights as f32 `[rows, cols]`: what the quantized numbers stand for.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = vec![0f32; self.rows * self.cols];
        for (i, row) in out.chunks_mut(self.cols).enumerate() {
            let (tile, r) = (self.tile(i / TILE), i % TILE);
            for (b, vals) in row.chunks_mut(BLOCK).enumerate() {
                match tile {
                    Tile::Q8_0(bytes) => {
                        let (d, q) = layout::q8_0_get(&bytes[b * layout::Q8_0_BYTES..], r);
                        for (v, q) in vals.iter_mut().zip(q) {
                            *v = q as f32 * d.to_f32();
                        }
                    }
                    Tile::Q4_0(bytes) => {
                        let (d, q) = layout::q4_0_get(&bytes[b * layout::Q4_0_BYTES..], r);
                        for (v, q) in vals.iter_mut().zip(q) {
                            *v = (q as f32 - 8.0) * d.to_f32();
                        }
                    }
                    Tile::Q4K(bytes) => {
                        let (blk, sub) = (&bytes[b / 8 * layout::Q4K_BYTES..], b % 8);
                        let (sc, mn) = layout::q4k_scale_min(blk, r, sub);
                        let q = layout::nibbles(&blk[layout::Q4K_QS + sub * layout::NIBBLES..], r);
                        for (v, q) in vals.iter_mut().zip(q) {
                            *v = sc * q as f32 - mn;
                        }
                    }
                }
            }
        }
        out
    }

    /// `y = x W^T` for `x: [m, cols]` row-major f32; returns `[m, rows]`.
    pub fn matmul(&self, x: &[f32], m: usize) -> Result<Vec<f32>> {
        self.matmul_with(Isa::detect(), x, m)
    }

    /// [`Self::matmul`] on the given instruction set (one of [`Isa::available`]).
    #[doc(hidden)]
    pub fn matmul_with(&self, kernels: Isa, x: &[f32], m: usize) -> Result<Vec<f32>> {
        let mut out = Self::matmul_many_with(kernels, &[self], x, m)?;
        Ok(out.pop().unwrap_or_default())
    }

    /// `x W_i^T` for several matrices over the same input (a decoder layer's q, k and v; gate
    /// and up), `x: [m, cols]`; returns one `[m, rows_i]` per matrix. The activations are
    /// quantized once and every product shares one parallel pass, so no core idles at the end
    /// of one matrix before the next starts. Each result is bit-identical to [`Self::matmul`].
    pub fn matmul_many(mats: &[&QuantMatrix], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
        Self::matmul_many_with(Isa::detect(), mats, x, m)
    }

    /// [`Self::matmul_many`] on the given instruction set (one of [`Isa::available`]).
    #[doc(hidden)]
    pub fn matmul_many_with(kernels: Isa, mats: &[&QuantMatrix], x: &[f32], m: usize) -> Result<Vec<Vec<f32>>> {
        let Some(first) = mats.first() else { return Ok(Vec::new()) };
        if let Some(q) = mats.iter().find(|q| q.cols != first.cols) {
            return Err(Error::InvalidOption(format!(
                "matrices of {} and {} inputs cannot share one input",
                first.cols, q.cols
            )));
        }
        if x.len() != m * first.cols {
            return Err(Error::InvalidOption(format!("{} input values for [{m}, {}]", x.len(), first.cols)));
        }
        let mut outs: Vec<Vec<f32>> = mats.iter().map(|q| vec![0f32; m * q.rows]).collect();
        if m == 0 {
            return Ok(outs);
        }
        // Equal column counts mean equal stored widths (Q4_K needs whole super-blocks, which are
        // whole 32-blocks too), so one quantization of the activations serves every matrix.
        let act = first.quantize_rows(kernels, x, m);
        // Decode (m = 1) is bound by reading the weights: small chunks (32 rows) keep both cores
        // busy to the end. Prefill is bound by arithmetic: a chunk's 16 rows stay in cache
        // across all m.
        let chunk = if m == 1 { 32 / TILE } else { 16 / TILE };
        let ptrs: Vec<OutPtr> = outs.iter_mut().map(|o| OutPtr(o.as_mut_ptr())).collect();
        let jobs: Vec<(usize, usize)> = mats
            .iter()
            .enumerate()
            .flat_map(|(i, q)| (0..q.rows.div_ceil(TILE).div_ceil(chunk)).map(move |c| (i, c)))
            .collect();
        jobs.into_par_iter().for_each(|(i, c)| {
            let q = mats[i];
            let tiles = c * chunk..((c + 1) * chunk).min(q.rows.div_ceil(TILE));
            // SAFETY: job `(i, c)` alone writes the columns of tiles `tiles` of output `i`.
            unsafe { q.run_tiles(kernels, &act, m, tiles, ptrs[i]) };
        });
        Ok(outs)
    }

    /// Computes the outputs of `tiles` for all `m` activation rows into `out: [m, rows]`.
    ///
    /// # Safety
    /// `out` must point to `m * rows` values whose columns of `tiles` no other worker writes.
    unsafe fn run_tiles(&self, kernels: Isa, act: &Q8Rows, m: usize, tiles: std::ops::Range<usize>, out: OutPtr) {
        let (kp, nb, rows) = (self.kp, self.kp / BLOCK, self.rows);
        let row = |i: usize| -> ActRow<'_> {
            let blocks = i * nb..(i + 1) * nb;
            (&act.qs[i * kp..(i + 1) * kp], &act.d[blocks.clone()], &act.ys[blocks.clone()], &act.sums[blocks])
        };
        // Activation rows per kernel call: each weight vector loaded serves all of them.
        let per_call = rows_per_call(kernels, m);
        for i in (0..m).step_by(per_call) {
            let y: Vec<ActRow> = (i..(i + per_call).min(m)).map(row).collect();
            let mut t = tiles.start;
            while t < tiles.end {
                // One row (decode) reads memory at full speed from one stream per job; two
                // tiles' streams measured slower there (81 against 111 GFLOP/s).
                let two = m > 1 && t + 1 < tiles.end;
                // A pair reads two streams side by side; the second's first bytes are not
                // covered by the stream before it (the first's are, by the previous pair's
                // prefetches running past its end), so each pair started on them from memory.
                #[cfg(target_arch = "x86_64")]
                if two && i == 0 {
                    avx2::prefetch_head(self.tile(t + 1).bytes());
                }
                let pair = if two { self.pair_dots(kernels, t, &y) } else { None };
                // SAFETY (both arms): rows `i..i + y.len()`, the columns of tiles from `t` on
                // (clipped to `rows`), lie inside `out` and belong to this caller only, per the
                // contract.
                t += match pair {
                    Some(dots) => unsafe { store_tiles(out, rows, i, t, &dots[..y.len()]) },
                    None => unsafe { store_tiles(out, rows, i, t, &self.tile_dots(kernels, t, &y)[..y.len()]) },
                };
            }
        }
    }

    /// The outputs of tile `t` (its eight lanes) for each activation row
    /// of `y` (at most [`MAX_ROWS`]).
    fn tile_dots(&self, kernels: Isa, t: usize, y: &[ActRow]) -> [[f32; TILE]; MAX_ROWS] {
        let mut out = [[0f32; TILE]; MAX_ROWS];
        match (kernels, self.tile(t)) {
            // SAFETY (every arm): an `Isa::Avx2` exists only on CPUs with AVX2, FMA and F16C, and
            // says `vnni()` only on CPUs with AVX512-VNNI and AVX512-VL; tiles and activation
            // rows have the lengths the kernels check.
            // The VNNI arms: the token says the CPU also runs AVX512-VNNI and AVX512-VL.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q4_0(w)) if a.vnni() => {
                with_rows!(y, out, 8, |y| unsafe { avx2::q4_0_tile_vnni(w, y) })
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q4K(w)) if a.vnni() => with_rows!(y, out, 8, |y| unsafe { avx2::q4k_tile_vnni(w, y) }),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q8_0(w)) if a.vnni() => {
                with_rows!(y, out, 8, |y| unsafe { avx2::q8_0_tile_vnni(w, y) })
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(_), Tile::Q4_0(w)) => with_rows!(y, out, 4, |y| unsafe { avx2::q4_0_tile(w, y) }),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(_), Tile::Q4K(w)) => with_rows!(y, out, 4, |y| unsafe { avx2::q4k_tile(w, y) }),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(_), Tile::Q8_0(w)) => with_rows!(y, out, 4, |y| unsafe { avx2::q8_0_tile(w, y) }),
            (_, tile) => {
                for (o, &y) in out.iter_mut().zip(y) {
                    *o = match tile {
                        Tile::Q8_0(w) => portable::q8_0_tile(w, y),
                        Tile::Q4_0(w) => portable::q4_0_tile(w, y),
                        Tile::Q4K(w) => portable::q4k_tile(w, y),
                    };
                }
            }
        }
        out
    }

    /// The outputs of tiles `t` and `t + 1` together (sixteen lanes) for each activation row of
    /// `y`, where a kernel takes two tiles at once (every format with AVX-512 VNNI: one
    /// activation broadcast then serves sixteen weight rows); `None` elsewhere.
    fn pair_dots(&self, kernels: Isa, t: usize, y: &[ActRow]) -> Option<[[f32; 2 * TILE]; MAX_ROWS]> {
        let mut out = [[0f32; 2 * TILE]; MAX_ROWS];
        match (kernels, self.tile(t), self.tile(t + 1)) {
            // SAFETY: an `Isa::Avx2` that says `vnni()` exists only on CPUs with AVX2, FMA,
            // F16C, AVX512F, AVX512-VL and AVX512-VNNI; the kernel checks the lengths.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q4_0(w0), Tile::Q4_0(w1)) if a.vnni() => {
                with_rows!(y, out, 8, |y| unsafe { avx2::q4_0_pair_vnni(w0, w1, y) })
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q8_0(w0), Tile::Q8_0(w1)) if a.vnni() => {
                with_rows!(y, out, 8, |y| unsafe { avx2::q8_0_pair_vnni(w0, w1, y) })
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2(a), Tile::Q4K(w0), Tile::Q4K(w1)) if a.vnni() => {
                with_rows!(y, out, 8, |y| unsafe { avx2::q4k_pair_vnni(w0, w1, y) })
            }
            _ => return None,
        }
        Some(out)
    }

    /// Quantizes `x: [m, cols]` to 8-bit blocks over `kp` columns (zeros past `cols`), on
    /// `kernels` (the same numbers on each).
    fn quantize_rows(&self, kernels: Isa, x: &[f32], m: usize) -> Q8Rows {
        let (cols, kp) = (self.cols, self.kp);
        let nb = kp / BLOCK;
        let mut qs = vec![0i8; m * kp];
        let mut d = vec![0f32; m * nb];
        let mut ys = vec![0f32; m * nb];
        let mut sums = vec![0i32; m * nb];
        let q4_0 = self.format() == QuantFormat::Q4_0;
        let work = |qs: &mut [i8], d: &mut [f32], ys: &mut [f32], sums: &mut [i32], x: &[f32]| {
            match kernels {
                // SAFETY: an `Isa::Avx2` exists only on CPUs with AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                Isa::Avx2(_) => unsafe { avx2::quantize_q8_row(x, qs, d, ys, sums) },
                _ => quantize_q8_row(x, qs, d, ys, sums),
            }
            if q4_0 {
                ys.iter_mut().for_each(|v| *v *= 8.0);
            }
        };
        if m == 1 {
            work(&mut qs, &mut d, &mut ys, &mut sums, x);
        } else {
            qs.par_chunks_mut(kp)
                .zip(d.par_chunks_mut(nb))
                .zip(ys.par_chunks_mut(nb))
                .zip(sums.par_chunks_mut(nb))
                .zip(x.par_chunks(cols))
                .for_each(|((((qs, d), ys), sums), x)| work(qs, d, ys, sums, x));
        }
        Q8Rows { qs, d, ys, sums }
    }
}

/// One tile of weight rows (see [`Data`]).
#[derive(Clone, Copy)]
pub(super) enum Tile<'a> {
    Q8_0(&'a [u8]),
    Q4_0(&'a [u8]),
    Q4K(&'a [u8]),
}

impl<'a> Tile<'a> {
    /// The tile's stored bytes.
    fn bytes(self) -> &'a [u8] {
        match self {
            Tile::Q8_0(b) | Tile::Q4_0(b) | Tile::Q4K(b) => b,
        }
    }
}

/// Most activation rows one kernel call takes.
const MAX_ROWS: usize = 8;

/// Activation rows per kernel call on `kernels` for an `m`-row product. Eight with AVX-512
/// VNNI (whose 32 vector registers hold eight rows' accumulators) when `m` is at most
/// [`SMALL_M`]: a batched decode step, bound by reading the weights from memory, then unpacks
/// each weight vector once for up to eight sequences. Otherwise four: in the prefill the
/// weights come from cache, and four rows' 8-bit activations (16 KiB at a width of 4096) stay
/// in L1 where eight spill to L2, which measured 5-15 % slower there.
fn rows_per_call(kernels: Isa, m: usize) -> usize {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2(a) if a.vnni() && m <= SMALL_M => MAX_ROWS,
        _ => 4,
    }
}

/// Largest product (activation rows) that [`rows_per_call`] treats as a decode step: up to
/// two passes of eight rows over the weights.
const SMALL_M: usize = 16;

/// Writes `dots[k]`, the outputs of the `W / TILE` tiles from `t` on for activation row
/// `i + k`, into `out: [m, rows]` (clipped to `rows`), and returns how many tiles that was.
///
/// # Safety
/// The elements written must be inside the output buffer and written by no other worker.
unsafe fn store_tiles<const W: usize>(out: OutPtr, rows: usize, i: usize, t: usize, dots: &[[f32; W]]) -> usize {
    let n = (rows - TILE * t).min(W);
    for (k, dots) in dots.iter().enumerate() {
        let at = (i + k) * rows + TILE * t;
        for (j, &v) in dots.iter().take(n).enumerate() {
            // SAFETY: inside the buffer and this worker's alone, per the contract.
            unsafe { *out.0.add(at + j) = v };
        }
    }
    W / TILE
}

/// One activation row `x` to 8-bit blocks: `qs: [nb * 32]`, scales `d: [nb]`, block sums
/// `ys: [nb]` and integer sums `sums: [nb]` (see [`Q8Rows`]); blocks past `x`'s end are zeros.
fn quantize_q8_row(x: &[f32], qs: &mut [i8], d: &mut [f32], ys: &mut [f32], sums: &mut [i32]) {
    for (b, (((q, d), ys), sum)) in
        qs.chunks_mut(BLOCK).zip(d.iter_mut()).zip(ys.iter_mut()).zip(sums.iter_mut()).enumerate()
    {
        (*d, *sum) = quantize_act_block(x, b, q);
        *ys = *d * *sum as f32;
    }
}

/// Block `b` of the activation row `x` (zero-padded) to 8 bits in `q`: its scale and `sum(q)`.
fn quantize_act_block(x: &[f32], b: usize, q: &mut [i8]) -> (f32, i32) {
    let d = quantize_q8_block(padded_block(x, b), q);
    (d, q.iter().map(|&v| v as i32).sum::<i32>())
}

/// Block `b` of a row, zero-padded past the row's end.
fn padded_block(row: &[f32], b: usize) -> [f32; BLOCK] {
    let mut out = [0f32; BLOCK];
    let start = (b * BLOCK).min(row.len());
    let end = ((b + 1) * BLOCK).min(row.len());
    out[..end - start].copy_from_slice(&row[start..end]);
    out
}

/// llama.cpp's `quantize_row_q8_0` for one block: scale `amax / 127`, values rounded half away
/// from zero; returns the scale (stored as f16 for weights, kept f32 for activations).
fn quantize_q8_block(x: [f32; BLOCK], q: &mut [i8]) -> f32 {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = inverse(d);
    for (q, v) in q.iter_mut().zip(x) {
        *q = round_to_i8(scaled(v, id, d));
    }
    d
}

/// `v.round() as i8` (half away from zero, saturating, NaN to 0) without a libm call: the
/// crate is built for baseline x86-64, which has no rounding instruction, so `f32::round` was a
/// call per value (~1.3 % of a 7B prefill's samples). `v - trunc(v)` is exact in f32, so the
/// comparison with one half decides as `round` does.
fn round_to_i8(v: f32) -> i8 {
    let t = v as i32;
    let frac = v - t as f32;
    let r = t.saturating_add(i32::from(frac >= 0.5) - i32::from(frac <= -0.5));
    r.clamp(i32::from(i8::MIN), i32::from(i8::MAX)) as i8
}

/// `1 / d`, 0 for 0. For a subnormal `d` the reciprocal overflows to infinity.
fn inverse(d: f32) -> f32 {
    if d != 0.0 {
        1.0 / d
    } else {
        0.0
    }
}

/// `v / d` as llama.cpp computes it (`v * (1 / d)`), or in f64 when `1 / d` overflowed (a block
/// whose largest value is subnormal): llama.cpp's product is then inf or NaN and its cast to an
/// integer undefined.
fn scaled(v: f32, id: f32, d: f32) -> f32 {
    if id.is_finite() {
        v * id
    } else {
        (f64::from(v) / f64::from(d)) as f32
    }
}

/// llama.cpp's `quantize_row_q4_0`: the value of largest magnitude maps to -8, the scale is
/// `max / -8`, and each value becomes `min(15, (x / d + 8.5) as i8)`.
fn quantize_q4_0_block(x: [f32; BLOCK]) -> (f16, [u8; BLOCK]) {
    // The first value of largest magnitude (llama.cpp's strict `>` scan), found in two passes
    // that vectorize; a block of zeros keeps +0 as its maximum.
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let max = if amax > 0.0 { x.into_iter().find(|v| v.abs() == amax).unwrap_or(0.0) } else { 0.0 };
    let d = max / -8.0;
    let id = inverse(d);
    let mut q = [0u8; BLOCK];
    for (q, v) in q.iter_mut().zip(x) {
        *q = ((scaled(v, id, d) + 8.5) as i8).min(15) as u8;
    }
    (f16::from_f32(d), q)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    #[test]
    fn blocks_with_a_subnormal_maximum_keep_their_proportions() {
        // Largest magnitude 8e-40 (subnormal): 1 / d overflows to infinity.
        let mut x = [0f32; BLOCK];
        x[0] = -8e-40;
        x[1] = 4e-40;
        x[2] = 2e-40;
        let (d, q) = quantize_q4_0_block(x);
        // d = max / -8 = 1e-40: the maximum maps to index 0 (-8 d), 4e-40 to 4 + 8 = 12, 2e-40
        // to 10, zeros to 8, as they would with a normal scale.
        assert_eq!(&q[..4], &[0, 12, 10, 8], "{q:?}");
        // Its f16 scale rounds to 0: the block dequantizes to zeros, within f16's reach.
        assert_eq!(d.to_f32(), 0.0);
        let mut q8 = [0i8; BLOCK];
        let d8 = quantize_q8_block(x, &mut q8);
        assert_eq!(&q8[..4], &[-127, 64, 32, 0]);
        // Subnormal scales keep a few significant digits only.
        assert!((f64::from(d8) * 127.0 - f64::from(x[0].abs())).abs() < 1e-42);
    }
    use candle_core::{Device, Tensor};

    #[test]
    fn rounding_to_i8_is_f32_round_then_a_saturating_cast() {
        let edges = [
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -1.5,
            2.5,
            0.499_999_97,
            -0.499_999_97,
            126.5,
            127.4,
            127.5,
            -127.5,
            -128.5,
            -128.4,
            1e10,
            -1e10,
            3e9,
            8_388_607.5,
            1e-45,
            -1e-45,
            f32::NAN,
            f32::INFINITY,
            f32::NEG_INFINITY,
        ];
        for v in edges {
            assert_eq!(round_to_i8(v), v.round() as i8, "{v:e}");
        }
        // Every value a scaled activation can take and more: a spread of bit patterns.
        let mut bits = 0x9E37_79B9u32;
        for _ in 0..2_000_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let v = f32::from_bits(bits);
            let near = (bits % 512) as f32 / 2.0 - 128.0 + f32::from_bits(bits >> 9 | 0x3400_0000) % 0.5;
            for v in [v, near] {
                assert_eq!(round_to_i8(v), v.round() as i8, "{v:e} ({:#x})", v.to_bits());
            }
        }
    }

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect()
    }

    /// candle's own quantizer (a port of llama.cpp's) must produce the same scales and quants
    /// as ours, block by block: our layout holds llama.cpp's numbers.
    #[test]
    fn same_numbers_as_llama_cpp_blocks() {
        let (rows, cols) = (7, 512);
        let w = random(rows * cols, 1);
        let t = Tensor::from_vec(w.clone(), (rows, cols), &Device::Cpu).unwrap();
        for (format, ggml, block_bytes) in
            [(QuantFormat::Q8_0, GgmlDType::Q8_0, 34), (QuantFormat::Q4_0, GgmlDType::Q4_0, 18)]
        {
            let ours = QuantMatrix::quantize(&w, rows, cols, format).unwrap();
            let theirs = QTensor::quantize(&t, ggml).unwrap().data().unwrap().into_owned();
            let nb = cols / BLOCK;
            for i in 0..rows {
                for b in 0..nb {
                    let blk = &theirs[(i * nb + b) * block_bytes..(i * nb + b + 1) * block_bytes];
                    let d = f16::from_le_bytes([blk[0], blk[1]]);
                    match ours.tile(i / TILE) {
                        Tile::Q8_0(tile) => {
                            let (ds, q) = layout::q8_0_get(&tile[b * layout::Q8_0_BYTES..], i % TILE);
                            assert_eq!(ds, d, "{format:?} scale of block {i},{b}");
                            let want: Vec<i8> = blk[2..].iter().map(|&v| v as i8).collect();
                            assert_eq!(&q[..], &want[..], "{format:?} block {i},{b}");
                        }
                        Tile::Q4_0(tile) => {
                            let (ds, q) = layout::q4_0_get(&tile[b * layout::Q4_0_BYTES..], i % TILE);
                            assert_eq!(ds, d, "{format:?} scale of block {i},{b}");
                            for j in 0..16 {
                                assert_eq!(q[j], blk[2 + j] & 0x0F);
                                assert_eq!(q[j + 16], blk[2 + j] >> 4);
                            }
                        }
                        Tile::Q4K(_) => unreachable!(),
                    }
                }
            }
        }
    }

    /// Products sharing one input in one pass give each matrix's own product, bit for bit.
    #[test]
    fn shared_input_products_equal_single_ones() {
        let cols = 512;
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K] {
            let mats: Vec<QuantMatrix> = [(40, 2), (9, 3), (17, 4)]
                .iter()
                .map(|&(rows, seed)| QuantMatrix::quantize(&random(rows * cols, seed), rows, cols, format).unwrap())
                .collect();
            let refs: Vec<&QuantMatrix> = mats.iter().collect();
            for m in [1, 3, 6] {
                let x = random(m * cols, 11 + m as u64);
                for kernels in Isa::available() {
                    let many = QuantMatrix::matmul_many_with(kernels, &refs, &x, m).unwrap();
                    for (q, y) in mats.iter().zip(&many) {
                        let one = q.matmul_with(kernels, &x, m).unwrap();
                        assert!(one.iter().zip(y).all(|(a, b)| a.to_bits() == b.to_bits()), "{format:?} m {m}");
                    }
                }
            }
        }
        let a = QuantMatrix::quantize(&random(8 * 64, 1), 8, 64, QuantFormat::Q8_0).unwrap();
        let b = QuantMatrix::quantize(&random(8 * 96, 1), 8, 96, QuantFormat::Q8_0).unwrap();
        assert!(QuantMatrix::matmul_many(&[&a, &b], &[0.0; 64], 1).is_err());
    }

    /// On a CPU with AVX-512 VNNI, its kernels sum the same integers as AVX2's: every output,
    /// every format, every number of activation rows per call (1 to 8, in products of up to
    /// [`SMALL_M`] rows, and 1 to 4 beyond), bit for bit.
    #[test]
    fn vnni_kernels_equal_avx2_bit_for_bit() {
        let flavours: Vec<Isa> = Isa::available().into_iter().filter(|k| *k != Isa::Portable).collect();
        if flavours.len() < 2 {
            eprintln!("no AVX-512 VNNI on this CPU: nothing to compare");
            return;
        }
        // 45 rows: a partial last tile inside a pair; 53: a job that ends on a lone tile.
        for (rows, format) in
            [45, 53].into_iter().flat_map(|r| [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K].map(|f| (r, f)))
        {
            let cols = 768;
            let q = QuantMatrix::quantize(&random(rows * cols, 21), rows, cols, format).unwrap();
            for m in (1..=SMALL_M + 3).chain([2 * SMALL_M + 7]) {
                // Activations spanning the whole 8-bit range, so the i32 sums are large.
                let x: Vec<f32> = random(m * cols, 30 + m as u64).iter().map(|v| v * 40.0).collect();
                let outs: Vec<Vec<f32>> = flavours.iter().map(|&k| q.matmul_with(k, &x, m).unwrap()).collect();
                assert!(outs[0].iter().any(|&v| v != 0.0));
                for (k, out) in flavours.iter().zip(&outs).skip(1) {
                    let same = outs[0].iter().zip(out).all(|(a, b)| a.to_bits() == b.to_bits());
                    assert!(same, "{format:?} {rows} rows, m {m}: {k:?} differs from {:?}", flavours[0]);
                }
            }
        }
    }

    /// The activations quantize to the same bits on every instruction set: ordinary rows, and
    /// the blocks where the vector path must agree with the scalar one on an edge (exact
    /// halves, NaN and infinities, a subnormal maximum, an all-zero block, -0, a partial last
    /// block and padding blocks).
    #[test]
    fn activations_quantize_to_the_same_bits_on_every_isa() {
        let mut special = vec![0f32; 8 * BLOCK];
        // Block 0: maximum 127, so the scale is 1 and these values are exact halves.
        let halves = [127.0, 0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 126.5, -126.5, 0.49999997, -0.49999997, -0.0];
        special[..halves.len()].copy_from_slice(&halves);
        // Block 1: a NaN among ordinary values; block 2: an infinity; block 3: a subnormal
        // maximum (no finite reciprocal scale); block 4: zeros; block 5: both infinities;
        // block 6: values near f32's largest.
        special[BLOCK] = f32::NAN;
        special[BLOCK + 1..2 * BLOCK].iter_mut().enumerate().for_each(|(i, v)| *v = i as f32 * 0.3 - 4.0);
        special[2 * BLOCK + 3] = f32::INFINITY;
        special[2 * BLOCK + 4] = 7.0;
        special[3 * BLOCK] = -8e-40;
        special[3 * BLOCK + 1] = 3e-40;
        special[5 * BLOCK] = f32::INFINITY;
        special[5 * BLOCK + 1] = f32::NEG_INFINITY;
        special[6 * BLOCK] = 3.0e38;
        special[6 * BLOCK + 1] = -1.0e38;
        special[7 * BLOCK..].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 - 16.0) / 32.0);
        let same =
            |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits() || x.is_nan() && y.is_nan());
        for cols in [8 * BLOCK, 8 * BLOCK - 5, 3 * BLOCK + 1, 17, 4096] {
            let m = 3;
            let mut x: Vec<f32> = random(m * cols, cols as u64).iter().map(|v| v * 9.0).collect();
            x[..cols.min(special.len())].copy_from_slice(&special[..cols.min(special.len())]);
            let q = QuantMatrix::quantize(&random(8 * cols, 5), 8, cols, QuantFormat::Q8_0).unwrap();
            let scalar = q.quantize_rows(Isa::Portable, &x, m);
            assert!(scalar.qs.contains(&127) && scalar.qs.iter().any(|&v| v < 0));
            for kernels in Isa::available() {
                let fast = q.quantize_rows(kernels, &x, m);
                assert_eq!(fast.qs, scalar.qs, "{kernels:?}, {cols} columns: quants");
                assert!(same(&fast.d, &scalar.d), "{kernels:?}, {cols} columns: scales");
                assert!(same(&fast.ys, &scalar.ys), "{kernels:?}, {cols} columns: block sums");
                // Each block's integer sum is its quants' sum.
                let sums: Vec<i32> = fast.qs.chunks(BLOCK).map(|b| b.iter().map(|&v| v as i32).sum()).collect();
                assert_eq!(fast.sums, sums, "{kernels:?}, {cols} columns: integer sums");
            }
        }
        // The exact halves round away from zero, as llama.cpp's `roundf` does.
        let q = QuantMatrix::quantize(&random(8 * BLOCK, 5), 8, BLOCK, QuantFormat::Q8_0).unwrap();
        for kernels in Isa::available() {
            let rows = q.quantize_rows(kernels, &special[..BLOCK], 1);
            assert_eq!(&rows.qs[..12], &[127, 1, -1, 2, -2, 3, -3, 127, -127, 0, 0, 0], "{kernels:?}");
        }
    }

    /// Quantizing fp16 rows (a checkpoint's own dtype) gives the same matrix as quantizing
    /// their f32 values.
    #[test]
    fn f16_rows_quantize_as_their_f32_values() {
        let (rows, cols) = (9, 512);
        let h: Vec<f16> = random(rows * cols, 7).into_iter().map(f16::from_f32).collect();
        let wide: Vec<f32> = h.iter().map(|v| v.to_f32()).collect();
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K] {
            let a = QuantMatrix::quantize_f16(&h, rows, cols, format).unwrap().dequantize();
            let b = QuantMatrix::quantize(&wide, rows, cols, format).unwrap().dequantize();
            assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()), "{format:?}");
            assert!(a.iter().any(|&x| x != 0.0));
        }
        assert!(QuantMatrix::quantize_f16(&h[1..], rows, cols, QuantFormat::Q8_0).is_err());
    }

    /// Our reading of the Q4_K blocks (layout, scale unpacking) gives candle's dequantization.
    #[test]
    fn q4k_dequantizes_as_candle_does() {
        let (rows, cols) = (3, 512);
        let w = random(rows * cols, 3);
        let q = QuantMatrix::quantize(&w, rows, cols, QuantFormat::Q4K).unwrap();
        // candle's quantizer and dequantizer on each row, without our layout.
        let mut theirs = vec![0f32; rows * cols];
        for (row, w) in theirs.chunks_mut(cols).zip(w.chunks(cols)) {
            let mut blocks = vec![BlockQ4K::zeros(); cols / QK_K];
            BlockQ4K::from_float(w, &mut blocks);
            BlockQ4K::to_float(&blocks, row);
        }
        assert_eq!(q.dequantize(), theirs);
        let err = w.iter().zip(&theirs).fold(0f32, |a, (w, t)| a.max((w - t).abs()));
        assert!(err < 0.1, "Q4_K error {err} on values in [-1, 1)");
    }

    #[test]
    fn q4_0_represents_a_block_of_integers_exactly() {
        // Largest magnitude -8 gives d = 1: every integer in -8..=7 is held exactly.
        let w: Vec<f32> = (0..64).map(|i| (i % 16) as f32 - 8.0).collect();
        let m = QuantMatrix::quantize(&w, 1, 64, QuantFormat::Q4_0).unwrap();
        assert_eq!(m.dequantize(), w);
    }

    /// Every kernel against the f32 product of the dequantized weights with the activations.
    /// Each output may differ only by the rounding of the activations to 8 bits: at most half a
    /// step (`amax / 254` of the activation's block) times `|w|`, summed over the row.
    #[test]
    fn kernels_agree_with_dequantized_product() {
        let kernels = Isa::available();
        // Odd shapes on purpose: rows not a multiple of 4 or of a chunk; columns padded, or
        // not a multiple of 256 (the kernels' tail).
        for (rows, cols, m) in [
            (37, 512, 1),
            (37, 448, 3),
            (20, 96, 2),
            (130, 768, 5),
            (3, 256, 1),
            (70, 512, 40),
            (9, 64, 2),
            (11, 256, 7),
            (8, 32, 4),
        ] {
            let w = random(rows * cols, 7);
            let x = random(m * cols, 9);
            let half_step: Vec<f32> = x
                .chunks(cols)
                .flat_map(|row| {
                    (0..cols).map(move |c| {
                        let b = c / BLOCK * BLOCK;
                        row[b..(b + BLOCK).min(cols)].iter().fold(0f32, |a, v| a.max(v.abs())) / 254.0
                    })
                })
                .collect();
            for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K] {
                if !format.accepts(cols) {
                    continue;
                }
                let q = QuantMatrix::quantize(&w, rows, cols, format).unwrap();
                let wd = q.dequantize();
                let dot = |i: usize, r: usize, f: &dyn Fn(usize, usize) -> f32| {
                    (0..cols).map(|c| f(i * cols + c, r * cols + c)).sum::<f32>()
                };
                let exact: Vec<f32> =
                    (0..m * rows).map(|o| dot(o / rows, o % rows, &|xi, wi| x[xi] * wd[wi])).collect();
                let bound: Vec<f32> = (0..m * rows)
                    .map(|o| 1e-5 + 1.01 * dot(o / rows, o % rows, &|xi, wi| half_step[xi] * wd[wi].abs()))
                    .collect();
                let mut previous: Option<Vec<f32>> = None;
                for &k in &kernels {
                    let y = q.matmul_with(k, &x, m).unwrap();
                    for (o, ((y, e), b)) in y.iter().zip(&exact).zip(&bound).enumerate() {
                        assert!(
                            (y - e).abs() <= *b,
                            "{format:?} {k:?} [{rows},{cols}] m={m} output {o}: {y} vs {e} (bound {b})"
                        );
                    }
                    if let Some(p) = &previous {
                        // Same integer sums, only the f32 summation order differs.
                        for (y, p) in y.iter().zip(p) {
                            assert!((y - p).abs() <= 1e-5 * (1.0 + p.abs()), "{format:?} kernels disagree: {y} vs {p}");
                        }
                    }
                    previous = Some(y);
                }
            }
        }
    }
}
