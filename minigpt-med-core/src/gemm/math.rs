//! `exp`, the exact GELU and row softmax in f32, with the same formulas in scalar form (here) and
//! eight lanes at a time (`avx2.rs`), so the SIMD and portable paths agree to rounding.
//!
//! - `exp(x) = 2^n e^r` with `n = round(x / ln 2)`, `|r| <= ln 2 / 2` (Cody-Waite split of
//!   `ln 2`) and the degree-7 Taylor polynomial of `e^r`: relative error below 2e-7.
//! - `erf` is Abramowitz & Stegun 7.1.26 (absolute error below 1.5e-7, Handbook of Mathematical
//!   Functions, 1964), so `gelu(x) = x (1 + erf(x / sqrt 2)) / 2` is within ~2e-7 (1 + |x|) of
//!   the exact value; PyTorch's `nn.GELU()` is this erf form.

#[cfg(test)]
use rayon::prelude::*;

use crate::cpu::Isa;

pub(super) const LOG2E: f32 = std::f32::consts::LOG2_E;
pub(super) const LN2_HI: f32 = 0.693_359_4;
pub(super) const LN2_LO: f32 = -2.121_944_4e-4;
/// Inputs are clamped to this range: below it `e^x` is under f32's smallest normal.
pub(super) const EXP_MIN: f32 = -87.0;
pub(super) const EXP_MAX: f32 = 88.0;
/// `1 / k!` for k = 7 down to 2 (Horner order).
pub(super) const EXP_POLY: [f32; 6] = [1.0 / 5040.0, 1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5];
/// A&S 7.1.26: `p` and `a1..a5`.
pub(super) const ERF_P: f32 = 0.327_591_1;
pub(super) const ERF_A: [f32; 5] = [0.254_829_6, -0.284_496_74, 1.421_413_8, -1.453_152_1, 1.061_405_4];

/// `e^x` in f32 (see the module doc).
pub(super) fn exp(x: f32) -> f32 {
    let x = x.clamp(EXP_MIN, EXP_MAX);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    let p = EXP_POLY.iter().fold(0.0f32, |acc, &c| acc.mul_add(r, c));
    let p = p.mul_add(r, 1.0).mul_add(r, 1.0);
    p * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// The exact (erf) GELU, `x (1 + erf(x / sqrt 2)) / 2`.
pub(crate) fn gelu(x: f32) -> f32 {
    let z = (x * std::f32::consts::FRAC_1_SQRT_2).abs();
    let t = 1.0 / ERF_P.mul_add(z, 1.0);
    let poly = ERF_A.iter().rev().fold(0.0f32, |acc, &a| acc.mul_add(t, a)) * t;
    let erf = 1.0 - poly * exp(-z * z);
    let erf = if x < 0.0 { -erf } else { erf };
    0.5 * x * (1.0 + erf)
}

/// Reference GELU in f64 (candle's erf) for the tests.
#[cfg(test)]
pub(super) fn gelu_f64(x: f64) -> f64 {
    0.5 * x * (1.0 + candle_core::cpu::erf::erf_f64(x / std::f64::consts::SQRT_2))
}

/// Replaces each row of `s: [rows, cols]` by `exp(row - max(row))` and returns each row's sum:
/// a softmax whose division is left to the caller (the attention divides its `cols`-long
/// output rows instead of the `cols`-long probability rows).
pub(crate) fn softmax_rows(kernels: Isa, s: &mut [f32], cols: usize) -> Vec<f32> {
    s.chunks_exact_mut(cols.max(1)).map(|row| softmax_row(kernels, row)).collect()
}

/// [`softmax_rows`] of one row: `row = exp(row - max(row))`, returning the sum.
pub(crate) fn softmax_row(kernels: Isa, row: &mut [f32]) -> f32 {
    match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Isa::Avx2` exists only on CPUs with AVX2, FMA and F16C.
        Isa::Avx2(_) => unsafe { super::avx2::exp_row(row) },
        Isa::Portable => {
            let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            row.iter_mut().fold(0.0, |sum, v| {
                *v = exp(*v - max);
                sum + *v
            })
        }
    }
}

/// The exact GELU over a slice, in parallel chunks (the tests' way into the SIMD GELU alone).
#[cfg(test)]
fn gelu_in_place(kernels: Isa, x: &mut [f32]) {
    x.par_chunks_mut(1 << 14).for_each(|chunk| match kernels {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as in `softmax_rows`.
        Isa::Avx2(_) => unsafe { super::avx2::gelu_slice(chunk) },
        Isa::Portable => chunk.iter_mut().for_each(|v| *v = gelu(*v)),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sweep() -> Vec<f32> {
        (0..40_001).map(|i| -20.0 + i as f32 * 1e-3).chain([-90.0, -87.5, 0.0, -0.0, 1e-30, 88.0]).collect()
    }

    #[test]
    fn exp_is_within_2e7_relative() {
        for x in (0..200_001).map(|i| -87.0 + i as f32 * 8.75e-4) {
            let (got, exact) = (exp(x) as f64, (x as f64).exp());
            assert!((got - exact).abs() <= 2e-7 * exact, "exp({x}) = {got}, expected {exact}");
        }
    }

    #[test]
    fn gelu_matches_erf_form_on_every_path() {
        for kernels in Isa::available() {
            let mut v = sweep();
            gelu_in_place(kernels, &mut v);
            for (x, got) in sweep().into_iter().zip(v) {
                let exact = gelu_f64(x as f64);
                let bound = 3e-7 * (1.0 + (x as f64).abs());
                assert!((got as f64 - exact).abs() <= bound, "{kernels:?} gelu({x}) = {got}, expected {exact}");
            }
        }
    }

    #[test]
    fn softmax_rows_match_f64_on_every_path() {
        let cols = 37;
        let input: Vec<f32> = (0..3 * cols).map(|i| ((i * 7919) % 101) as f32 * 0.37 - 15.0).collect();
        for kernels in Isa::available() {
            let mut s = input.clone();
            let sums = softmax_rows(kernels, &mut s, cols);
            for (r, row) in input.chunks(cols).enumerate() {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                // The shift is rounded to f32 on every path: the reference takes it as given.
                let exact: Vec<f64> = row.iter().map(|&v| ((v - max) as f64).exp()).collect();
                let total: f64 = exact.iter().sum();
                assert!((sums[r] as f64 - total).abs() <= 1e-6 * total, "{kernels:?} row {r} sum");
                for (c, e) in exact.iter().enumerate() {
                    assert!((s[r * cols + c] as f64 - e).abs() <= 3e-7 * e.max(1e-30), "{kernels:?} ({r}, {c})");
                }
            }
        }
    }
}
