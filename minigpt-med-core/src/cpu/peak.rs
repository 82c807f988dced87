//! The machine's f32 arithmetic ceiling, measured: what "the ViT runs at N % of the FMA peak"
//! is a percentage of. A spec sheet's peak assumes a clock this shared VM may not hold, so the
//! benches measure it in the same run as the kernels they compare with it.

/// The f32 multiply-add peak of this machine in GFLOP/s (two FLOPs per lane and FMA), with
/// `threads` threads each running independent FMA chains from registers for ~`ms`
/// milliseconds, best of three passes; per vector width the CPU runs. `None` where the CPU
/// has no FMA (the portable kernels then have no such ceiling to compare with).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FmaPeak {
    /// 256-bit FMAs (AVX2 + FMA: the width every f32 kernel here uses).
    pub avx2_gflops: f64,
    /// 512-bit FMAs, where the CPU runs AVX-512F. On CPUs that split them in two 256-bit
    /// halves (Zen 4) this equals `avx2_gflops`; on those with two 512-bit units it is twice.
    pub avx512_gflops: Option<f64>,
}

impl FmaPeak {
    /// The higher of the two widths: the ceiling of any f32 kernel on this CPU.
    pub fn best_gflops(&self) -> f64 {
        self.avx512_gflops.map_or(self.avx2_gflops, |z| z.max(self.avx2_gflops))
    }
}

/// Independent accumulator chains per thread: more than FMA latency (4-5 cycles) times the FMA
/// ports (2), so the ports never wait for a result.
#[cfg(target_arch = "x86_64")]
const CHAINS: usize = 12;

/// Measures [`FmaPeak`] on `threads` threads (at least one), ~`ms` milliseconds per pass.
pub fn fma_peak(threads: usize, ms: u64) -> Option<FmaPeak> {
    #[cfg(target_arch = "x86_64")]
    {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            return None;
        }
        // SAFETY (both calls): the features each loop needs were detected just above / here.
        let avx2_gflops = measure(threads, ms, 8, |n| unsafe { avx2::chains(n) });
        let avx512_gflops =
            is_x86_feature_detected!("avx512f").then(|| measure(threads, ms, 16, |n| unsafe { avx512::chains(n) }));
        Some(FmaPeak { avx2_gflops, avx512_gflops })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (threads, ms);
        None
    }
}

/// Runs `run(n)` (`n` iterations of [`CHAINS`] FMAs of `lanes` lanes) on `threads` threads at
/// once; GFLOP/s of the best of three passes, `n` sized from a first short pass to last ~`ms`.
#[cfg(target_arch = "x86_64")]
fn measure(threads: usize, ms: u64, lanes: usize, run: impl Fn(usize) -> f32 + Sync) -> f64 {
    use std::time::Instant;
    let threads = threads.max(1);
    let pass = |n: usize| -> f64 {
        let t = Instant::now();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads).map(|_| s.spawn(|| run(n))).collect();
            for h in handles {
                std::hint::black_box(h.join().unwrap_or(0.0));
            }
        });
        t.elapsed().as_secs_f64()
    };
    // Calibrate on one thread so each pass lasts about `ms`.
    let probe = 1 << 16;
    let per_iter = pass(probe).max(1e-9) / probe as f64;
    let n = ((ms.max(1) as f64 / 1e3 / per_iter) as usize).clamp(probe, 1 << 34);
    let best = (0..3).map(|_| pass(n)).fold(f64::INFINITY, f64::min);
    (threads * n * CHAINS * lanes * 2) as f64 / best / 1e9
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// `n` rounds of [`CHAINS`] independent 8-lane FMAs; returns a lane of their sum so the
    /// work cannot be dropped. The multiplier is just under 1 and the addend small, so the
    /// values converge and never overflow or turn subnormal.
    ///
    /// # Safety
    /// The CPU must run AVX2 and FMA.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn chains(n: usize) -> f32 {
        let (a, b) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-6));
        let mut acc = [_mm256_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm256_set1_ps(i as f32);
        }
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm256_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm256_setzero_ps();
        for v in acc {
            s = _mm256_add_ps(s, v);
        }
        _mm256_cvtss_f32(s)
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use super::CHAINS;
    use std::arch::x86_64::*;

    /// [`super::avx2::chains`] on 16-lane vectors, returning the sum of all sixteen lanes.
    ///
    /// # Safety
    /// The CPU must run AVX-512F.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn chains(n: usize) -> f32 {
        let (a, b) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-6));
        let mut acc = [_mm512_setzero_ps(); CHAINS];
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_set1_ps(i as f32);
        }
        for _ in 0..n {
            for v in acc.iter_mut() {
                *v = _mm512_fmadd_ps(*v, a, b);
            }
        }
        let mut s = _mm512_setzero_ps();
        for v in acc {
            s = _mm512_add_ps(s, v);
        }
        _mm512_reduce_add_ps(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each lane of chain `i` after `n` rounds of `x <- a x + b` from `x0 = i`, in f64:
    /// `a^n x0 + b (1 - a^n) / (1 - a)`; the loops' sums must be the twelve chains' total, so
    /// every round ran (a loop cut short or optimized away gives another number).
    fn expected(n: usize, lanes: usize) -> f64 {
        let (a, b) = (0.999_999f32 as f64, 1e-6f32 as f64);
        let an = a.powi(n as i32);
        let per_lane: f64 = (0..CHAINS).map(|i| an * i as f64 + b * (1.0 - an) / (1.0 - a)).sum();
        per_lane * if lanes == 8 { 1.0 } else { 16.0 }
    }

    #[cfg(target_arch = "x86_64")]
    #[test]
    fn the_chains_compute_every_round() {
        if !(is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            eprintln!("no FMA on this CPU: nothing to check");
            return;
        }
        for n in [1, 1000, 20_000] {
            // SAFETY: AVX2 and FMA detected above.
            let got = unsafe { avx2::chains(n) } as f64;
            let want = expected(n, 8);
            assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "n {n}: {got} vs {want}");
            if is_x86_feature_detected!("avx512f") {
                // SAFETY: AVX-512F detected just above.
                let got = unsafe { avx512::chains(n) } as f64;
                let want = expected(n, 16);
                assert!((got - want).abs() <= 1e-3 * want.abs().max(1.0), "n {n}: {got} vs {want}");
            }
        }
        let p = fma_peak(1, 5).expect("FMA was detected");
        assert!(p.avx2_gflops > 0.0 && p.best_gflops() >= p.avx2_gflops, "{p:?}");
    }
}
