//! The 224-px position table resized to the 448-px grid at load time, exactly as LAVIS'
//! `interpolate_pos_embed` does it: `torch.nn.functional.interpolate(mode="bicubic",
//! align_corners=False)` in f32 (cubic convolution A = -0.75, no antialias, clamped borders).

const A: f32 = -0.75;

fn cubic1(x: f32) -> f32 {
    ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
}

fn cubic2(x: f32) -> f32 {
    ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A
}

/// Source taps (clamped indices) and weights of each output index, as torch computes them.
fn taps(in_size: usize, out_size: usize) -> Vec<([usize; 4], [f32; 4])> {
    let scale = in_size as f32 / out_size as f32;
    (0..out_size)
        .map(|o| {
            let real = scale * (o as f32 + 0.5) - 0.5;
            let base = real.floor();
            let t = real - base;
            let w = [cubic2(t + 1.0), cubic1(t), cubic1(1.0 - t), cubic2(2.0 - t)];
            let idx = std::array::from_fn(|k| (base as i64 - 1 + k as i64).clamp(0, in_size as i64 - 1) as usize);
            (idx, w)
        })
        .collect()
}

/// Resizes a position table `[1 + g_in^2, dim]` (row 0 = cls, then the grid row-major) to
/// `[1 + g_out^2, dim]`. Returns the input unchanged when the grids match.
pub fn interpolate_pos_embed(table: &[f32], dim: usize, g_in: usize, g_out: usize) -> Vec<f32> {
    debug_assert_eq!(table.len(), (1 + g_in * g_in) * dim);
    if g_in == g_out {
        return table.to_vec();
    }
    let t = taps(g_in, g_out);
    let grid = &table[dim..];
    let mut out = Vec::with_capacity((1 + g_out * g_out) * dim);
    out.extend_from_slice(&table[..dim]);
    let mut row = vec![0f32; dim];
    for (ys, wy) in &t {
        for (xs, wx) in &t {
            // Same accumulation order as torch's separable CPU kernel: x inside, y outside.
            row.fill(0.0);
            for (ky, &y) in ys.iter().enumerate() {
                for c in 0..dim {
                    let mut acc = grid[(y * g_in + xs[0]) * dim + c] * wx[0];
                    for kx in 1..4 {
                        acc += grid[(y * g_in + xs[kx]) * dim + c] * wx[kx];
                    }
                    if ky == 0 {
                        row[c] = acc * wy[0];
                    } else {
                        row[c] += acc * wy[ky];
                    }
                }
            }
            out.extend_from_slice(&row);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights_for_doubling_match_torch_constants() {
        // For 16 -> 32 torch uses fixed weights: even outputs (-0.03515625, 0.26171875,
        // 0.87890625, -0.10546875) on rows k-2..k+1, odd outputs the reverse on k-1..k+2.
        let t = taps(16, 32);
        assert_eq!(t[10].1, [-0.03515625, 0.26171875, 0.87890625, -0.10546875]);
        assert_eq!(t[10].0, [3, 4, 5, 6]);
        assert_eq!(t[11].1, [-0.10546875, 0.87890625, 0.26171875, -0.03515625]);
        assert_eq!(t[11].0, [4, 5, 6, 7]);
        assert_eq!(t[0].0, [0, 0, 0, 1]);
    }
}
