//! llama.cpp's block layout (what a GGUF file holds) to and from our tiles of eight rows.
//! Both hold the same numbers, so a matrix written and read back is the matrix that was
//! quantized: converted files answer bit-identically, with no requantization at load.
//!
//! GGML blocks, per row, in column order: Q8_0 `{f16 d; i8 q[32]}` (34 bytes), Q4_0
//! `{f16 d; u8 q[16]}` (18 bytes; byte `j` holds values `j` (low nibble) and `j + 16`), Q4_K
//! `{f16 d; f16 dmin; u8 scales[12]; u8 q[128]}` (144 bytes, candle's `BlockQ4K`).

use half::f16;
use rayon::prelude::*;

use super::layout::{self, Q4KBlock, TILE};
use super::{Data, QuantFormat, QuantMatrix, Tile, BLOCK};
use crate::error::{Error, Result};

/// Bytes of one GGML block of `format` (of [`QuantFormat::block_size`] values).
pub(crate) fn block_bytes(format: QuantFormat) -> usize {
    match format {
        QuantFormat::Q8_0 => 2 + BLOCK,
        QuantFormat::Q4_0 => 2 + BLOCK / 2,
        QuantFormat::Q4K => 144,
    }
}

/// Bytes of a GGML row of `cols` values, or `None` when `cols` is not a whole number of blocks
/// (GGML cannot store such a row in this format).
pub fn ggml_row_bytes(format: QuantFormat, cols: usize) -> Option<usize> {
    (cols > 0 && cols.is_multiple_of(format.block_size())).then(|| cols / format.block_size() * block_bytes(format))
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
        let (Tile::Q8_0(tile) | Tile::Q4_0(tile) | Tile::Q4K(tile)) = self.tile(r / TILE);
        for blk in tile.chunks_exact(Self::tile_block_bytes(format)) {
            match format {
                QuantFormat::Q8_0 => {
                    let (d, q) = layout::q8_0_get(blk, r % TILE);
                    out.extend_from_slice(&d.to_le_bytes());
                    out.extend(q.iter().map(|&q| q as u8));
                }
                QuantFormat::Q4_0 => {
                    let (d, q) = layout::q4_0_get(blk, r % TILE);
                    out.extend_from_slice(&d.to_le_bytes());
                    out.extend((0..BLOCK / 2).map(|j| q[j] | (q[j + BLOCK / 2] << 4)));
                }
                QuantFormat::Q4K => out.extend_from_slice(&layout::q4k_get(blk, r % TILE).to_bytes()),
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
        let checked = |i: usize| -> Result<&'a [u8]> {
            let bytes = row(i);
            if bytes.len() != row_bytes {
                return Err(Error::InvalidOption(format!("row {i}: {} bytes, {row_bytes} expected", bytes.len())));
            }
            Ok(bytes)
        };
        let kp = Self::padded_cols(format, cols);
        let (bb, tb) = (block_bytes(format), Self::tile_block_bytes(format));
        // Row `r` of a tile block from GGML block `g` of that row.
        let put = |blk: &mut [u8], r: usize, g: &[u8]| match format {
            QuantFormat::Q8_0 => layout::q8_0_put(blk, r, read_f16(g), &g[2..]),
            QuantFormat::Q4_0 => layout::q4_0_put_ggml(blk, r, g),
            QuantFormat::Q4K => layout::q4k_put(blk, r, &Q4KBlock::from_bytes(g)),
        };
        let mut bytes = Self::tile_bytes(format, rows, kp);
        bytes.par_chunks_mut(Self::per_tile(format, kp)).enumerate().try_for_each(|(t, tile)| -> Result<()> {
            let src: Vec<&[u8]> = (TILE * t..rows.min(TILE * (t + 1))).map(checked).collect::<Result<_>>()?;
            for (b, blk) in tile.chunks_exact_mut(tb).enumerate() {
                for (r, row) in src.iter().enumerate() {
                    put(blk, r, &row[b * bb..(b + 1) * bb]);
                }
            }
            Ok(())
        })?;
        let data = match format {
            QuantFormat::Q8_0 => Data::Q8_0(bytes),
            QuantFormat::Q4_0 => Data::Q4_0(bytes),
            QuantFormat::Q4K => Data::Q4K(bytes),
        };
        Ok(Self { rows, cols, kp, data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::k_quants::{BlockQ4K, BlockQ4_0, BlockQ8_0, GgmlType};

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
