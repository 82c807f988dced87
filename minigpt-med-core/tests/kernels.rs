//! Property tests of the CPU kernels: every instruction set this CPU runs (`Isa::available`)
//! against an f64 reference and against each other, over random shapes including k = 0 and the
//! 1-3 activation rows of the matrix-vector path.

use minigpt_med::cpu::Isa;
use minigpt_med::gemm::{linear_with, Epilogue, PackedB, Precision};
use minigpt_med::quant::{QuantFormat, QuantMatrix};
use proptest::prelude::*;

/// `n` values in [-1, 1) from a xorshift stream.
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn f32_and_f16_products_match_the_reference_on_every_isa(
        m in 0usize..8, k in 0usize..300, n in 1usize..70,
        half in any::<bool>(), with_bias in any::<bool>(), gelu in any::<bool>(), seed in any::<u64>(),
    ) {
        let (w, x, b) = (values(n * k, seed), values(m * k, seed ^ 1), values(n, seed ^ 2));
        let precision = if half { Precision::F16 } else { Precision::F32 };
        let packed = PackedB::from_nk(&w, n, k, k, precision);
        let bias = with_bias.then_some(&b[..]);
        let epilogue = if gelu { Epilogue::Gelu } else { Epilogue::Identity };
        let weight = |v: f32| if half { f64::from(half::f16::from_f32(v).to_f32()) } else { f64::from(v) };
        let mut outputs = Vec::new();
        for isa in Isa::available() {
            let y = linear_with(isa, &x, m, &packed, bias, epilogue).unwrap();
            prop_assert_eq!(y.len(), m * n);
            if !gelu {
                for i in 0..m {
                    for j in 0..n {
                        let want: f64 = (0..k).map(|p| f64::from(x[i * k + p]) * weight(w[j * k + p])).sum::<f64>()
                            + bias.map_or(0.0, |b| f64::from(b[j]));
                        let got = f64::from(y[i * n + j]);
                        prop_assert!((got - want).abs() <= 1e-5 * (1.0 + k as f64), "{:?} ({}, {}): {} vs {}", isa, i, j, got, want);
                    }
                }
            }
            outputs.push(y);
        }
        for pair in outputs.windows(2) {
            for (a, b) in pair[0].iter().zip(&pair[1]) {
                prop_assert!((a - b).abs() <= 1e-5 * (1.0 + k as f32), "instruction sets disagree: {} vs {}", a, b);
            }
        }
    }

    #[test]
    fn quantized_products_match_their_dequantized_weights_on_every_isa(
        m in 1usize..5, blocks in 1usize..4, rows in 1usize..11, format in 0usize..3, seed in any::<u64>(),
    ) {
        let (format, block) = [(QuantFormat::Q8_0, 32), (QuantFormat::Q4_0, 32), (QuantFormat::Q4K, 256)][format];
        let cols = blocks * block;
        let (w, x) = (values(rows * cols, seed), values(m * cols, seed ^ 3));
        let q = QuantMatrix::quantize(&w, rows, cols, format).unwrap();
        let deq = q.dequantize();
        let mut outputs = Vec::new();
        for isa in Isa::available() {
            let y = q.matmul_with(isa, &x, m).unwrap();
            for i in 0..m {
                for r in 0..rows {
                    let terms = (0..cols).map(|c| f64::from(x[i * cols + c]) * f64::from(deq[r * cols + c]));
                    let want: f64 = terms.clone().sum();
                    let scale: f64 = terms.map(f64::abs).sum();
                    // The activations are rounded to 8-bit blocks: 1/127 of each block's range.
                    let got = f64::from(y[i * rows + r]);
                    prop_assert!((got - want).abs() <= 0.01 * scale + 1e-6, "{:?} {:?} ({}, {}): {} vs {}", isa, format, i, r, got, want);
                }
            }
            outputs.push(y);
        }
        for pair in outputs.windows(2) {
            for (a, b) in pair[0].iter().zip(&pair[1]) {
                prop_assert!((a - b).abs() <= 1e-4 * (1.0 + a.abs()), "instruction sets disagree: {} vs {}", a, b);
            }
        }
    }
}
