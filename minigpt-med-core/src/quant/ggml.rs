//! llama.cpp's block layout (what a GGUF file holds) to and from our quad-interleaved layout.
//! Both hold the same numbers, so a matrix written and read back is the matrix that was
//! quantized: converted files answer bit-identically, with no requantization at load.
//!
//! GGML blocks, per row, in column order: Q8_0 `{f16 d; i8 q[32]}` (34 bytes), Q4_0
//! `{f16 d; u8 q[16]}` (18 bytes; byte `j` holds values `j` (low nibble) and `j + 16`), Q4_K
//! `{f16 d; f16 dmin; u8 scales[12]; u8 q[128]}` (144 bytes, candle's `BlockQ4K`).

use candle_core::quantized::k_quants::{BlockQ4K, GgmlType, QK_K};
use half::f16;
use rayon::prelude::*;

use super::{q4_0_nibble, scale_index, Data, Q4KRaw, QuantFormat, QuantMatrix, BLOCK, PAIR};
use crate::error::{Error, Result};

/// Bytes of one GGML block of `format` (of [`QuantFormat::block_size`] values).
pub(crate) fn block_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8_0 => 2 + BLOCK,
        QuantFormat::Q4_0 => 2 + BLOCK / 2,
        QuantFormat::Q4K => std::mem::size_of::<Q4KRaw>(),
    }
}

/// Bytes of a GGML row of `cols` values, or `None` when `cols` is not a whole number of blocks
/// (GGML cannot store such a row in this format).
pub fn ggml_row_bytes(format: QuantFormat, cols: usize) -> Option<usize> {
    (cols > 0 && cols % format.block_size() == 0).then(|| cols / format.block_size() * block_bytes(format))
}

fn q4k_raw_mut(blocks: &mut [BlockQ4K]) -> &mut [Q4KRaw] {
    // SAFETY: as `q4k_raw`: same size, alignment and field layout; every bit pattern is valid.
    unsafe { std::slice::from_raw_parts_mut(blocks.as_mut_ptr() as *mut Q4KRaw, blocks.len()) }
}

fn read_f16(b: &[u8]) -> f16 {
    f16::from_le_bytes([b[0], b[1]])
}

impl QuantMatrix {
    /// Appends row `r` in GGML's block layout to `out` (see the module docs). The matrix's
    /// columns must be a whole number of blocks ([`ggml_row_bytes`]).
    pub fn write_ggml_row(&self, r: usize, out: &mut Vec<u8>) -> Result<()> {
        let format = self.format();
        if r >= self.rows || ggml_row_bytes(format, self.cols).is_none() {
            return Err(Error::InvalidOption(format!(
                "row {r} of a [{}, {}] {format:?} matrix cannot be written as GGML blocks",
                self.rows, self.cols
            )));
        }
        let (quad, i) = (r / 4, r % 4);
        let (kp, groups) = (self.kp, (self.kp / BLOCK).div_ceil(8));
        match &self.data {
            Data::Q8_0 { qs, d } => {
                let (qs, d) = (&qs[quad * 4 * kp..], &d[quad * groups * 32..]);
                for b in 0..self.cols / BLOCK {
                    out.extend_from_slice(&d[scale_index(b, i)].to_le_bytes());
                    out.extend(qs[(4 * b + i) * BLOCK..][..BLOCK].iter().map(|&q| q as u8));
                }
            }
            Data::Q4_0 { qs, d } => {
                let (qs, d) = (&qs[quad * 2 * kp..(quad + 1) * 2 * kp], &d[quad * groups * 32..]);
                for b in 0..self.cols / BLOCK {
                    out.extend_from_slice(&d[scale_index(b, i)].to_le_bytes());
                    out.extend(
                        (0..BLOCK / 2).map(|j| q4_0_nibble(qs, i, b, j) | (q4_0_nibble(qs, i, b, j + BLOCK / 2) << 4)),
                    );
                }
            }
            Data::Q4K(blocks) => {
                let per_row = self.cols / QK_K;
                let raw = super::q4k_raw(&blocks[quad * 4 * per_row..(quad + 1) * 4 * per_row]);
                for g in 0..per_row {
                    let blk = &raw[4 * g + i];
                    out.extend_from_slice(&blk.d.to_le_bytes());
                    out.extend_from_slice(&blk.dmin.to_le_bytes());
                    out.extend_from_slice(&blk.scales);
                    out.extend_from_slice(&blk.qs);
                }
            }
        }
        Ok(())
    }

    /// Builds a `[rows, cols]` matrix from GGML rows: `row(i)` returns row `i`'s blocks
    /// ([`ggml_row_bytes`] long). The result equals the matrix those rows were written from.
    pub fn from_ggml_rows<'a>(
        format: QuantFormat,
        rows: usize,
        cols: usize,
        row: impl Fn(usize) -> &'a [u8] + Sync,
    ) -> Result<Self> {
        let row_bytes = ggml_row_bytes(format, cols).ok_or_else(|| {
            Error::InvalidOption(format!("{cols} columns are not whole {format:?} blocks of {}", format.block_size()))
        })?;
        let quads = rows.div_ceil(4);
        let checked = |i: usize| -> Result<&'a [u8]> {
            let bytes = row(i);
            if bytes.len() != row_bytes {
                return Err(Error::InvalidOption(format!("row {i}: {} bytes, {row_bytes} expected", bytes.len())));
            }
            Ok(bytes)
        };
        let real = cols / BLOCK;
        let data = match format {
            QuantFormat::Q4K => {
                let per_row = cols / QK_K;
                let mut blocks = vec![BlockQ4K::zeros(); quads * 4 * per_row];
                blocks.par_chunks_mut(4 * per_row).enumerate().try_for_each(|(q, quad)| -> Result<()> {
                    let raw = q4k_raw_mut(quad);
                    for r in (0..4).filter(|r| 4 * q + r < rows) {
                        for (g, src) in checked(4 * q + r)?.chunks_exact(block_bytes(format)).enumerate() {
                            let blk = &mut raw[4 * g + r];
                            blk.d = read_f16(&src[0..2]);
                            blk.dmin = read_f16(&src[2..4]);
                            blk.scales.copy_from_slice(&src[4..16]);
                            blk.qs.copy_from_slice(&src[16..]);
                        }
                    }
                    Ok(())
                })?;
                return Ok(Self { rows, cols, kp: cols, data: Data::Q4K(blocks) });
            }
            QuantFormat::Q8_0 | QuantFormat::Q4_0 => {
                let kp = cols.div_ceil(PAIR) * PAIR;
                let groups = (kp / BLOCK).div_ceil(8);
                let mut d = vec![f16::ZERO; quads * groups * 32];
                if format == QuantFormat::Q8_0 {
                    let mut qs = vec![0i8; quads * 4 * kp];
                    qs.par_chunks_mut(4 * kp).zip(d.par_chunks_mut(groups * 32)).enumerate().try_for_each(
                        |(q, (qs, d))| -> Result<()> {
                            for r in (0..4).filter(|r| 4 * q + r < rows) {
                                for (b, src) in checked(4 * q + r)?.chunks_exact(block_bytes(format)).enumerate() {
                                    d[scale_index(b, r)] = read_f16(src);
                                    let o = (4 * b + r) * BLOCK;
                                    qs[o..o + BLOCK].iter_mut().zip(&src[2..]).for_each(|(q, &v)| *q = v as i8);
                                }
                            }
                            Ok(())
                        },
                    )?;
                    Data::Q8_0 { qs, d }
                } else {
                    let mut qs = vec![0x88u8; quads * 4 * kp / 2];
                    qs.par_chunks_mut(2 * kp).zip(d.par_chunks_mut(groups * 32)).enumerate().try_for_each(
                        |(q, (qs, d))| -> Result<()> {
                            for r in (0..4).filter(|r| 4 * q + r < rows) {
                                // Blocks in pairs: GGML byte `j` holds values `j` and `j + 16` of
                                // one block; ours holds value `j` of two neighbouring blocks.
                                let row = checked(4 * q + r)?;
                                let n = block_bytes(format);
                                let nibbles = |b: usize| -> [u8; BLOCK] {
                                    let src = row.get(b * n..(b + 1) * n).map_or(&[0x88u8; 18][..], |s| s);
                                    let qs: &[u8; 16] = src[2..18].try_into().expect("18-byte blocks");
                                    std::array::from_fn(|j| if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 })
                                };
                                for p in 0..real.div_ceil(2) {
                                    let (lo, hi) = (nibbles(2 * p), nibbles(2 * p + 1));
                                    let o = (4 * p + r) * BLOCK;
                                    qs[o..o + BLOCK]
                                        .iter_mut()
                                        .zip(lo.iter().zip(&hi))
                                        .for_each(|(q, (l, h))| *q = l | (h << 4));
                                }
                                for (b, src) in row.chunks_exact(n).enumerate() {
                                    d[scale_index(b, r)] = read_f16(src);
                                }
                                // A half-used last pair: its padding block, as the quantizer
                                // writes it (a block of zeros has the scale -0).
                                if real % 2 == 1 {
                                    d[scale_index(real, r)] = f16::NEG_ZERO;
                                }
                            }
                            Ok(())
                        },
                    )?;
                    Data::Q4_0 { qs, d }
                }
            }
        };
        Ok(Self { rows, cols, kp: cols.div_ceil(PAIR) * PAIR, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ8_0};

    fn weights(rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols).map(|i| ((i * 7919 % 1013) as f32 / 1013.0 - 0.5) * (1.0 + (i % 5) as f32)).collect()
    }

    fn ggml(m: &QuantMatrix) -> Vec<u8> {
        let mut out = Vec::new();
        for r in 0..m.dims().0 {
            m.write_ggml_row(r, &mut out).unwrap();
        }
        out
    }

    /// Our rows are llama.cpp's own blocks: candle's port of llama.cpp's quantizers gives the
    /// same bytes from the same values.
    #[test]
    fn rows_are_llama_cpp_blocks() {
        let (rows, cols) = (6, 512);
        let w = weights(rows, cols);
        for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K] {
            let ours = ggml(&QuantMatrix::quantize(&w, rows, cols, format).unwrap());
            let theirs: Vec<u8> = w
                .chunks(cols)
                .flat_map(|row| -> Vec<u8> {
                    fn bytes<T: GgmlType>(row: &[f32]) -> Vec<u8> {
                        let mut blocks = vec![T::zeros(); row.len() / T::BLCK_SIZE];
                        T::from_float(row, &mut blocks);
                        // SAFETY: plain-old-data blocks viewed as their bytes.
                        unsafe {
                            std::slice::from_raw_parts(blocks.as_ptr().cast::<u8>(), std::mem::size_of_val(&blocks[..]))
                        }
                        .to_vec()
                    }
                    match format {
                        QuantFormat::Q8_0 => bytes::<BlockQ8_0>(row),
                        QuantFormat::Q4_0 => bytes::<BlockQ4_0>(row),
                        QuantFormat::Q4K => bytes::<BlockQ4K>(row),
                    }
                })
                .collect();
            assert_eq!(ours.len(), rows * ggml_row_bytes(format, cols).unwrap());
            assert!(ours == theirs, "{format:?}: our GGML rows differ from llama.cpp's quantizer");
        }
    }

    /// Written and read back, a matrix computes bit-identical products, for odd row counts and
    /// a Q4_0 row that ends in half a block pair.
    #[test]
    fn round_trip_is_exact() {
        for (rows, cols) in [(1, 32), (5, 96), (7, 256), (9, 512)] {
            let w = weights(rows, cols);
            let x = weights(3, cols);
            for format in [QuantFormat::Q8_0, QuantFormat::Q4_0, QuantFormat::Q4K] {
                if !format.accepts(cols) {
                    continue;
                }
                let a = QuantMatrix::quantize(&w, rows, cols, format).unwrap();
                let bytes = ggml(&a);
                let n = ggml_row_bytes(format, cols).unwrap();
                let b = QuantMatrix::from_ggml_rows(format, rows, cols, |i| &bytes[i * n..(i + 1) * n]).unwrap();
                assert_eq!(ggml(&b), bytes, "{format:?} [{rows}, {cols}]");
                let (ya, yb) = (a.matmul(&x, 3).unwrap(), b.matmul(&x, 3).unwrap());
                assert!(ya.iter().zip(&yb).all(|(p, q)| p.to_bits() == q.to_bits()), "{format:?} [{rows}, {cols}]");
                assert_eq!(a.dequantize(), b.dequantize());
            }
        }
    }

    #[test]
    fn rows_that_are_not_whole_blocks_are_refused() {
        assert_eq!(ggml_row_bytes(QuantFormat::Q4_0, 48), None);
        assert_eq!(ggml_row_bytes(QuantFormat::Q4K, 512), Some(288));
        let short = [0u8; 10];
        assert!(QuantMatrix::from_ggml_rows(QuantFormat::Q8_0, 1, 32, |_| &short).is_err());
        let m = QuantMatrix::quantize(&weights(1, 48), 1, 48, QuantFormat::Q4_0).unwrap();
        assert!(m.write_ggml_row(0, &mut Vec::new()).is_err());
    }
}
