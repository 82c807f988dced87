//! Where each number of a 4-bit matrix sits in memory: rows in tiles of eight, each tile one
//! contiguous stream of blocks. One place defines the layout; the quantizer, the GGML
//! conversions, dequantization and the portable kernels all read and write through it.
//!
//! A tile block holds 32 values of each of the tile's eight rows as 128 bytes, four vectors of
//! 32: byte `4r + t` of vector `j` holds value `8j + t` of row `r` in its low nibble and value
//! `8j + 4 + t` in its high nibble. One masked vector thus gives four consecutive values of all
//! eight rows, so the AVX2 kernel multiplies it by four activation values broadcast to every
//! row, sums the block in 16-bit lanes and converts once per block for eight rows (where a
//! row-major layout converts once per block and row).
//!
//! - Q8_0, per tile and block ([`Q8_0_BYTES`]): the eight rows' f16 scales, then 256 quants in
//!   eight vectors: byte `4r + t` of vector `j` is value `4j + t` of row `r`.
//! - Q4_0, per tile and block ([`Q4_0_BYTES`]): the eight rows' f16 scales, then the nibbles.
//! - Q4_K, per tile and super-block of 256 ([`Q4K_BYTES`]): eight f16 `d`, eight f16 `dmin`,
//!   the 6-bit sub-block scales and mins unpacked to bytes (`[sub-block][row]`, 64 each), then
//!   the eight sub-blocks' nibbles. Unpacking the scales once at load costs 32 bytes per 2048
//!   weights (2.8 %) and saves the kernel llama.cpp's bit shuffle for every row.

use half::f16;

use super::BLOCK;

/// Rows per tile of the 4-bit formats.
pub(super) const TILE: usize = 8;
/// Bytes of one block's nibbles across a tile's rows.
pub(super) const NIBBLES: usize = TILE * BLOCK / 2;
/// Bytes per tile and block of Q8_0: scales, then quants.
pub(super) const Q8_0_BYTES: usize = 2 * TILE + TILE * BLOCK;
/// Bytes per tile and block of Q4_0: scales, then nibbles.
pub(super) const Q4_0_BYTES: usize = 2 * TILE + NIBBLES;
/// Offsets inside a Q4_K tile super-block.
pub(super) const Q4K_DMIN: usize = 2 * TILE;
pub(super) const Q4K_SC: usize = 4 * TILE;
pub(super) const Q4K_MN: usize = Q4K_SC + 8 * TILE;
pub(super) const Q4K_QS: usize = Q4K_MN + 8 * TILE;
/// Bytes per tile and Q4_K super-block.
pub(super) const Q4K_BYTES: usize = Q4K_QS + 8 * NIBBLES;

/// Byte and bit shift of value `v` (0..32) of tile row `r` inside a block's nibbles.
fn nibble_at(r: usize, v: usize) -> (usize, u32) {
    (32 * (v / 8) + 4 * r + v % 4, if v % 8 >= 4 { 4 } else { 0 })
}

/// The 32 nibbles of row `r` in the block `nib` ([`NIBBLES`] bytes).
pub(super) fn nibbles(nib: &[u8], r: usize) -> [u8; BLOCK] {
    std::array::from_fn(|v| {
        let (at, shift) = nibble_at(r, v);
        (nib[at] >> shift) & 0x0F
    })
}

/// Writes `q` (values 0..16) as row `r` of the block `nib`.
pub(super) fn put_nibbles(nib: &mut [u8], r: usize, q: &[u8; BLOCK]) {
    for (v, &q) in q.iter().enumerate() {
        let (at, shift) = nibble_at(r, v);
        nib[at] = (nib[at] & !(0x0F << shift)) | ((q & 0x0F) << shift);
    }
}

/// GGML's nibble packing to ours, four bytes at a time. `lo` holds values `v..v + 4` of two
/// sequences (first: low nibbles, second: high), `hi` values `v + 4..v + 8`; returns the tile
/// word of row `r` holding values `v..v + 8` of the first sequence and that of the second.
fn split_words(lo: u32, hi: u32) -> (u32, u32) {
    ((lo & 0x0F0F_0F0F) | ((hi & 0x0F0F_0F0F) << 4), ((lo >> 4) & 0x0F0F_0F0F) | (hi & 0xF0F0_F0F0))
}

fn word(q: &[u8], i: usize) -> u32 {
    u32::from_le_bytes([q[i], q[i + 1], q[i + 2], q[i + 3]])
}

fn put_word(nib: &mut [u8], vector: usize, r: usize, w: u32) {
    nib[BLOCK * vector + 4 * r..][..4].copy_from_slice(&w.to_le_bytes());
}

/// Sets row `r` of a Q4_0 tile block ([`Q4_0_BYTES`]) from GGML's 18-byte block: the f16
/// scale, then 16 bytes whose byte `j` holds value `j` in the low nibble and value `j + 16` in
/// the high: [`q4_0_put`] without unpacking the nibbles.
pub(super) fn q4_0_put_ggml(blk: &mut [u8], r: usize, g: &[u8]) {
    blk[2 * r..2 * r + 2].copy_from_slice(&g[..2]);
    let (q, nib) = (&g[2..18], &mut blk[2 * TILE..]);
    for j in 0..2 {
        let (first, second) = split_words(word(q, 8 * j), word(q, 8 * j + 4));
        put_word(nib, j, r, first);
        put_word(nib, j + 2, r, second);
    }
}

fn f16_at(b: &[u8], i: usize) -> f16 {
    f16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}

fn put_f16(b: &mut [u8], i: usize, v: f16) {
    b[2 * i..2 * i + 2].copy_from_slice(&v.to_le_bytes());
}

/// Row `r` of a Q8_0 tile block ([`Q8_0_BYTES`]): its scale and quants.
pub(super) fn q8_0_get(blk: &[u8], r: usize) -> (f16, [i8; BLOCK]) {
    let q = &blk[2 * TILE..];
    (f16_at(blk, r), std::array::from_fn(|v| q[BLOCK * (v / 4) + 4 * r + v % 4] as i8))
}

/// Sets row `r` of a Q8_0 tile block from its scale and quants, a word at a time (GGML's block
/// holds the same quants in column order).
pub(super) fn q8_0_put(blk: &mut [u8], r: usize, d: f16, q: &[u8]) {
    put_f16(blk, r, d);
    for j in 0..BLOCK / 4 {
        put_word(&mut blk[2 * TILE..], j, r, word(q, 4 * j));
    }
}

/// Row `r` of a Q4_0 tile block ([`Q4_0_BYTES`]): its scale and nibbles.
pub(super) fn q4_0_get(blk: &[u8], r: usize) -> (f16, [u8; BLOCK]) {
    (f16_at(blk, r), nibbles(&blk[2 * TILE..], r))
}

/// Sets row `r` of a Q4_0 tile block.
pub(super) fn q4_0_put(blk: &mut [u8], r: usize, d: f16, q: &[u8; BLOCK]) {
    put_f16(blk, r, d);
    put_nibbles(&mut blk[2 * TILE..], r, q);
}

/// A Q4_K super-block as GGML stores it (llama.cpp's `block_q4_K`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) struct Q4KBlock {
    pub d: f16,
    pub dmin: f16,
    /// Eight 6-bit scales and eight 6-bit mins, packed (llama.cpp's `get_scale_min_k4`).
    pub scales: [u8; 12],
    /// Byte `32p + j`: value `j` of sub-block `2p` (low nibble) and of `2p + 1` (high).
    pub qs: [u8; 128],
}

impl Q4KBlock {
    /// Parses GGML's 144 bytes.
    pub fn from_bytes(b: &[u8]) -> Self {
        Self {
            d: f16_at(b, 0),
            dmin: f16_at(b, 1),
            scales: b[4..16].try_into().expect("a Q4_K block is 144 bytes"),
            qs: b[16..144].try_into().expect("a Q4_K block is 144 bytes"),
        }
    }

    /// GGML's 144 bytes.
    pub fn to_bytes(self) -> [u8; 144] {
        let mut out = [0u8; 144];
        out[0..2].copy_from_slice(&self.d.to_le_bytes());
        out[2..4].copy_from_slice(&self.dmin.to_le_bytes());
        out[4..16].copy_from_slice(&self.scales);
        out[16..].copy_from_slice(&self.qs);
        out
    }

    /// The 6-bit scale and min of each sub-block.
    fn scales_mins(&self) -> ([u8; 8], [u8; 8]) {
        let s = &self.scales;
        let (mut sc, mut mn) = ([0u8; 8], [0u8; 8]);
        for j in 0..8 {
            (sc[j], mn[j]) = if j < 4 {
                (s[j] & 63, s[j + 4] & 63)
            } else {
                ((s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4), (s[j + 4] >> 4) | ((s[j] >> 6) << 4))
            };
        }
        (sc, mn)
    }

    /// Packs 6-bit scales and mins back into 12 bytes: the inverse of [`Self::scales_mins`]
    /// (all 96 bits are used, so every packing is reached).
    fn pack_scales(sc: &[u8; 8], mn: &[u8; 8]) -> [u8; 12] {
        let mut s = [0u8; 12];
        for j in 0..4 {
            s[j] = (sc[j] & 63) | ((sc[j + 4] >> 4) << 6);
            s[j + 4] = (mn[j] & 63) | ((mn[j + 4] >> 4) << 6);
            s[j + 8] = (sc[j + 4] & 0x0F) | ((mn[j + 4] & 0x0F) << 4);
        }
        s
    }
}

/// Row `r` of a Q4_K tile super-block ([`Q4K_BYTES`]) as GGML's block.
pub(super) fn q4k_get(blk: &[u8], r: usize) -> Q4KBlock {
    let sc = std::array::from_fn(|j| blk[Q4K_SC + TILE * j + r]);
    let mn = std::array::from_fn(|j| blk[Q4K_MN + TILE * j + r]);
    let mut qs = [0u8; 128];
    for sub in 0..8 {
        let q = nibbles(&blk[Q4K_QS + sub * NIBBLES..], r);
        for (j, q) in q.into_iter().enumerate() {
            qs[32 * (sub / 2) + j] |= q << (4 * (sub % 2));
        }
    }
    Q4KBlock { d: f16_at(blk, r), dmin: f16_at(&blk[Q4K_DMIN..], r), scales: Q4KBlock::pack_scales(&sc, &mn), qs }
}

/// Sets row `r` of a Q4_K tile super-block from GGML's block.
pub(super) fn q4k_put(blk: &mut [u8], r: usize, src: &Q4KBlock) {
    put_f16(blk, r, src.d);
    put_f16(&mut blk[Q4K_DMIN..], r, src.dmin);
    let (sc, mn) = src.scales_mins();
    for j in 0..8 {
        blk[Q4K_SC + TILE * j + r] = sc[j];
        blk[Q4K_MN + TILE * j + r] = mn[j];
    }
    // GGML byte `32p + v`: value `v` of sub-block `2p` (low nibble) and of `2p + 1` (high).
    for p in 0..4 {
        let q = &src.qs[32 * p..];
        for j in 0..4 {
            let (first, second) = split_words(word(q, 8 * j), word(q, 8 * j + 4));
            put_word(&mut blk[Q4K_QS + 2 * p * NIBBLES..], j, r, first);
            put_word(&mut blk[Q4K_QS + (2 * p + 1) * NIBBLES..], j, r, second);
        }
    }
}

/// Sub-block `sub`'s scale `d * sc` and min `dmin * mn` for row `r` of a Q4_K tile super-block,
/// with llama.cpp's arithmetic: value `j` is `scale * q_j - min`.
pub(super) fn q4k_scale_min(blk: &[u8], r: usize, sub: usize) -> (f32, f32) {
    (
        f16_at(blk, r).to_f32() * f32::from(blk[Q4K_SC + TILE * sub + r]),
        f16_at(&blk[Q4K_DMIN..], r).to_f32() * f32::from(blk[Q4K_MN + TILE * sub + r]),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_nibble_has_its_own_place() {
        let mut seen = [[false; 2]; NIBBLES];
        for r in 0..TILE {
            for v in 0..BLOCK {
                let (at, shift) = nibble_at(r, v);
                assert!(!seen[at][shift as usize / 4], "row {r} value {v}");
                seen[at][shift as usize / 4] = true;
            }
        }
        assert!(seen.iter().flatten().all(|&s| s));
    }

    #[test]
    fn q4k_scales_pack_back_to_the_same_bytes() {
        // Every byte value in every position: the 12-byte packing is a bijection.
        for seed in 0..256u32 {
            let scales: [u8; 12] = std::array::from_fn(|i| (seed.wrapping_mul(37).wrapping_add(i as u32 * 101)) as u8);
            let blk = Q4KBlock { d: f16::ONE, dmin: f16::ONE, scales, qs: [0; 128] };
            let (sc, mn) = blk.scales_mins();
            assert_eq!(Q4KBlock::pack_scales(&sc, &mn), scales);
        }
    }

    #[test]
    fn rows_put_and_got_back_are_unchanged() {
        let mut tile = vec![0u8; Q4K_BYTES];
        let blocks: Vec<Q4KBlock> = (0..TILE)
            .map(|r| Q4KBlock {
                d: f16::from_f32(0.5 + r as f32),
                dmin: f16::from_f32(-1.0 - r as f32),
                scales: std::array::from_fn(|i| (r * 31 + i * 7) as u8),
                qs: std::array::from_fn(|i| (r * 13 + i * 29) as u8),
            })
            .collect();
        for (r, b) in blocks.iter().enumerate() {
            q4k_put(&mut tile, r, b);
        }
        for (r, b) in blocks.iter().enumerate() {
            assert_eq!(q4k_get(&tile, r), *b, "row {r}");
        }
        let mut q8 = vec![0u8; Q8_0_BYTES];
        for r in 0..TILE {
            let q: [u8; BLOCK] = std::array::from_fn(|v| (r * 41 + v * 7) as u8);
            q8_0_put(&mut q8, r, f16::from_f32(r as f32), &q);
        }
        for r in 0..TILE {
            let (d, q) = q8_0_get(&q8, r);
            assert_eq!(d.to_f32(), r as f32);
            assert_eq!(q, std::array::from_fn(|v| (r * 41 + v * 7) as u8 as i8), "Q8_0 row {r}");
        }
        let mut q40 = vec![0u8; Q4_0_BYTES];
        for r in 0..TILE {
            let g: [u8; 18] = std::array::from_fn(|j| (r * 37 + j * 11) as u8);
            q4_0_put_ggml(&mut q40, r, &g);
            let want: [u8; BLOCK] = std::array::from_fn(|v| if v < 16 { g[2 + v] & 0x0F } else { g[v - 14] >> 4 });
            assert_eq!(q4_0_get(&q40, r), (f16::from_le_bytes([g[0], g[1]]), want), "GGML row {r}");
        }
        let mut q40 = vec![0u8; Q4_0_BYTES];
        for r in 0..TILE {
            q4_0_put(&mut q40, r, f16::from_f32(r as f32), &std::array::from_fn(|v| ((v + r) % 16) as u8));
        }
        for r in 0..TILE {
            let (d, q) = q4_0_get(&q40, r);
            assert_eq!(d.to_f32(), r as f32);
            assert_eq!(q, std::array::from_fn(|v| ((v + r) % 16) as u8));
        }
    }
}
