//! Pillow's `Image.resize(..., BICUBIC)` restated bit for bit: separable Keys cubic (a = -0.5)
//! whose support widens with the downscale factor, coefficients normalised in f64 then rounded
//! to 22-bit fixed point, a u8 round/clip between the passes, horizontal pass first (Pillow <= 12;
//! the order MiniGPT-Med's environment used).

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn bicubic(x: f64) -> f64 {
    const A: f64 = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * A
    } else {
        0.0
    }
}

/// Fixed-point taps of one output sample: the first input index and its integer weights.
struct Taps {
    start: usize,
    weights: Vec<i32>,
}

fn taps(in_size: usize, out_size: usize) -> Vec<Taps> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = 2.0 * filterscale;
    let ss = 1.0 / filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            // `as i64` truncates toward zero, as Pillow's (int) cast does.
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let raw: Vec<f64> = (xmin..xmax).map(|x| bicubic((x as f64 - center + 0.5) * ss)).collect();
            let sum: f64 = raw.iter().sum();
            let weights = raw
                .iter()
                .map(|&w| {
                    let w = if sum != 0.0 { w / sum } else { w };
                    let scaled = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { scaled - 0.5 } else { scaled + 0.5 }) as i32
                })
                .collect();
            Taps { start: xmin, weights }
        })
        .collect()
}

fn clip8(acc: i32) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// Resizes one 8-bit plane (`width * height`, row-major) to `out_w * out_h` exactly as Pillow's
/// BICUBIC filter does. A pass whose size does not change is skipped, as in Pillow.
pub fn resize_plane_bicubic(src: &[u8], width: usize, height: usize, out_w: usize, out_h: usize) -> Vec<u8> {
    debug_assert_eq!(src.len(), width * height);
    let rounding = 1i32 << (PRECISION_BITS - 1);
    let horizontal = if out_w != width {
        let t = taps(width, out_w);
        let mut out = vec![0u8; out_w * height];
        for y in 0..height {
            let row = &src[y * width..(y + 1) * width];
            for (x, tap) in t.iter().enumerate() {
                let acc = tap
                    .weights
                    .iter()
                    .zip(&row[tap.start..])
                    .fold(rounding, |acc, (&k, &p)| acc + i32::from(p) * k);
                out[y * out_w + x] = clip8(acc);
            }
        }
        out
    } else {
        src.to_vec()
    };
    if out_h == height {
        return horizontal;
    }
    let t = taps(height, out_h);
    let mut out = vec![0u8; out_w * out_h];
    let mut acc = vec![0i32; out_w];
    for (y, tap) in t.iter().enumerate() {
        acc.fill(rounding);
        for (j, &k) in tap.weights.iter().enumerate() {
            let row = &horizontal[(tap.start + j) * out_w..(tap.start + j + 1) * out_w];
            for (a, &p) in acc.iter_mut().zip(row) {
                *a += i32::from(p) * k;
            }
        }
        for (o, &a) in out[y * out_w..(y + 1) * out_w].iter_mut().zip(&acc) {
            *o = clip8(a);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_when_sizes_match() {
        let src: Vec<u8> = (0..=255).collect();
        assert_eq!(resize_plane_bicubic(&src, 16, 16, 16, 16), src);
    }

    #[test]
    fn constant_plane_stays_constant() {
        // Normalised weights sum to 2^22 (up to rounding), so a flat image must stay flat.
        let src = vec![137u8; 300 * 200];
        let out = resize_plane_bicubic(&src, 300, 200, 448, 448);
        assert!(out.iter().all(|&v| v == 137));
    }
}
