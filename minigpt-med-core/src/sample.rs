//! The token sampler: greedy, or HF-order sampling with a reproducible random stream.

use crate::options::{GenerateOptions, Sampling};

/// Picks tokens from logits according to [`GenerateOptions`].
pub(crate) struct Sampler {
    sampling: Sampling,
    penalty: f32,
    rng: u64,
}

impl Sampler {
    pub(crate) fn new(opts: &GenerateOptions) -> Self {
        let seed = match opts.sampling {
            Sampling::Sample { seed, .. } => seed,
            Sampling::Greedy => 0,
        };
        Self { sampling: opts.sampling, penalty: opts.repetition_penalty, rng: seed ^ 0x9E37_79B9_7F4A_7C15 }
    }

    /// A uniform draw in [0, 1) from splitmix64 (reproducible across platforms).
    fn uniform(&mut self) -> f64 {
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Chooses the next id; `history` are the ids the penalty applies to.
    pub(crate) fn next(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        if self.penalty != 1.0 {
            let mut seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
            for id in seen {
                if let Some(l) = logits.get_mut(id as usize) {
                    *l = if *l < 0.0 { *l * self.penalty } else { *l / self.penalty };
                }
            }
        }
        match self.sampling {
            Sampling::Greedy => crate::generate::argmax(logits),
            Sampling::Sample { temperature, top_p, top_k, .. } => {
                let mut order: Vec<u32> = (0..logits.len() as u32).collect();
                order.sort_by(|&a, &b| logits[b as usize].total_cmp(&logits[a as usize]).then(a.cmp(&b)));
                if top_k > 0 {
                    order.truncate(top_k.max(1));
                }
                // Differences first, in f64: `logit / temperature` overflows for a tiny
                // temperature (inf - inf = NaN), while `(logit - max) / temperature` only goes to
                // -inf, so a near-zero temperature samples the top token, as its limit should.
                let top = f64::from(logits[order[0] as usize]);
                let t = f64::from(temperature);
                let mut probs: Vec<f64> =
                    order.iter().map(|&i| ((f64::from(logits[i as usize]) - top) / t).exp()).collect();
                let total: f64 = probs.iter().sum();
                probs.iter_mut().for_each(|p| *p /= total);
                // Keep the smallest prefix whose mass reaches top_p (at least one token).
                let mut cum = 0.0;
                let mut keep = probs.len();
                for (i, p) in probs.iter().enumerate() {
                    cum += p;
                    if cum >= f64::from(top_p) {
                        keep = i + 1;
                        break;
                    }
                }
                let kept = &probs[..keep];
                let mass: f64 = kept.iter().sum();
                let mut r = self.uniform() * mass;
                for (i, p) in kept.iter().enumerate() {
                    if r < *p {
                        return order[i];
                    }
                    r -= p;
                }
                order[keep - 1]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_takes_lowest_id_on_ties() {
        let mut s = Sampler::new(&GenerateOptions::greedy(1));
        assert_eq!(s.next(&mut [0.0, 3.0, 3.0, 1.0], &[]), 1);
    }

    #[test]
    fn penalty_divides_positive_and_multiplies_negative() {
        let mut opts = GenerateOptions::greedy(1);
        opts.repetition_penalty = 2.0;
        let mut s = Sampler::new(&opts);
        let mut logits = [2.0, 1.5, -1.0];
        // id 0 is penalised to 1.0, so id 1 wins.
        assert_eq!(s.next(&mut logits, &[0, 0, 2]), 1);
        assert_eq!(logits, [1.0, 1.5, -2.0]);
    }

    #[test]
    fn a_tiny_temperature_samples_the_top_token() {
        // Distinct values: a tie would rightly be sampled among its tokens.
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 50) as f32 * 0.1 - 1.0).collect();
        for temperature in [1e-30f32, f32::MIN_POSITIVE, 1e-45] {
            let opts = GenerateOptions {
                sampling: Sampling::Sample { temperature, top_p: 0.9, top_k: 0, seed: 3 },
                ..GenerateOptions::greedy(1)
            };
            opts.validate().unwrap();
            let mut s = Sampler::new(&opts);
            for _ in 0..20 {
                assert_eq!(s.next(&mut logits.clone(), &[]), crate::generate::argmax(&logits), "t = {temperature:e}");
            }
        }
    }

    #[test]
    fn top_k_one_is_greedy_and_seeds_repeat() {
        let logits: Vec<f32> = (0..50).map(|i| ((i * 37) % 11) as f32 * 0.3).collect();
        let sample = |seed, top_k| {
            let opts = GenerateOptions {
                sampling: Sampling::Sample { temperature: 1.0, top_p: 1.0, top_k, seed },
                ..GenerateOptions::greedy(1)
            };
            let mut s = Sampler::new(&opts);
            (0..20).map(|_| s.next(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert!(sample(7, 1).iter().all(|&t| t == crate::generate::argmax(&logits)));
        assert_eq!(sample(7, 0), sample(7, 0));
        assert_ne!(sample(7, 0), sample(8, 0));
    }
}
