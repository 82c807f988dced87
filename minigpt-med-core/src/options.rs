//! Decoding options and every rule that turns a front door's arguments into them: presets by
//! name, what a lone `temperature` implies, which settings need sampling. The CLI, Python and C
//! all go through [`DecodeSettings::resolve`], so the same arguments decode the same tokens.

use crate::error::{Error, Result};

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampling {
    /// Always the most likely token (lowest id on ties), as MiniGPT-Med's evaluation.
    Greedy,
    /// Random sampling: HF order repetition penalty -> temperature -> top-k -> top-p.
    Sample {
        /// Softmax temperature (> 0).
        temperature: f32,
        /// Nucleus mass kept (0 < top_p <= 1).
        top_p: f32,
        /// Most likely tokens kept (0 = no limit).
        top_k: usize,
        /// Seed: the same seed gives the same tokens.
        seed: u64,
    },
}

impl Sampling {
    /// `top_p` when only a temperature is given: 1.0, the whole distribution.
    pub const DEFAULT_TOP_P: f32 = 1.0;
    /// `top_k` when only a temperature is given: 0, no limit.
    pub const DEFAULT_TOP_K: usize = 0;
    /// `seed` when only a temperature is given.
    pub const DEFAULT_SEED: u64 = 0;

    /// Plain sampling at `temperature`: the whole distribution ([`Self::DEFAULT_TOP_P`],
    /// [`Self::DEFAULT_TOP_K`]) and [`Self::DEFAULT_SEED`]. What a lone `temperature` means at
    /// every front door.
    pub const fn with_temperature(temperature: f32) -> Self {
        Self::Sample { temperature, top_p: Self::DEFAULT_TOP_P, top_k: Self::DEFAULT_TOP_K, seed: Self::DEFAULT_SEED }
    }
}

/// Options of one generation.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateOptions {
    /// Most new tokens to generate.
    pub max_new_tokens: usize,
    /// Greedy or sampling.
    pub sampling: Sampling,
    /// HF-style repetition penalty over the generated ids (1.0 = off).
    pub repetition_penalty: f32,
    /// Stop as soon as the answer text contains one of these (the stop string is removed).
    pub stop_strings: Vec<String>,
    /// Cap on prompt + new tokens; the prompt embeddings are left-truncated to fit, as the
    /// original demo does with 2000. `None`: the prompt must fit the model's context or the
    /// call fails.
    pub context_limit: Option<usize>,
    /// Never end at the end-of-sequence token (its logit is masked): the answer runs to
    /// `max_new_tokens`, a stop string or the context's end. For load tests and benchmarks
    /// that need answers of a known length, as vLLM's and llama.cpp's `ignore_eos`.
    pub ignore_eos: bool,
}

impl GenerateOptions {
    /// Greedy decoding of at most `max_new_tokens` tokens.
    pub fn greedy(max_new_tokens: usize) -> Self {
        Self {
            max_new_tokens,
            sampling: Sampling::Greedy,
            repetition_penalty: 1.0,
            stop_strings: Vec::new(),
            context_limit: None,
            ignore_eos: false,
        }
    }

    /// The paper's evaluation settings ([`Preset::Eval`]): greedy, 300 new tokens.
    pub fn eval() -> Self {
        Self::greedy(300)
    }

    /// The original Gradio demo ([`Preset::Demo`]): temperature 0.6, top-p 0.9, top-k 50,
    /// repetition penalty 1.05, 500 new tokens, context capped at 2000.
    pub fn demo(seed: u64) -> Self {
        Self {
            max_new_tokens: 500,
            sampling: Sampling::Sample { temperature: 0.6, top_p: 0.9, top_k: 50, seed },
            repetition_penalty: 1.05,
            stop_strings: Vec::new(),
            context_limit: Some(2000),
            ignore_eos: false,
        }
    }

    /// Checks the values, with a message saying which one is wrong.
    pub fn validate(&self) -> Result<()> {
        if self.max_new_tokens == 0 {
            return Err(Error::InvalidOption("max_new_tokens must be at least 1".into()));
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return Err(Error::InvalidOption(format!(
                "repetition_penalty {} must be a positive number (1.0 = off)",
                self.repetition_penalty
            )));
        }
        if let Sampling::Sample { temperature, top_p, .. } = self.sampling {
            if !(temperature.is_finite() && temperature > 0.0) {
                return Err(Error::InvalidOption(format!("temperature {temperature} must be > 0 (0 means greedy)")));
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                return Err(Error::InvalidOption(format!("top_p {top_p} must be in (0, 1]")));
            }
        }
        if let Some(limit) = self.context_limit {
            if limit <= self.max_new_tokens {
                return Err(Error::InvalidOption(format!(
                    "context_limit {limit} leaves no room for a prompt with max_new_tokens {}",
                    self.max_new_tokens
                )));
            }
        }
        if self.stop_strings.iter().any(String::is_empty) {
            return Err(Error::InvalidOption("stop strings may not be empty".into()));
        }
        // Every decode step searches the text for each stop string: bounded, so no request can
        // make the steps of a whole batch slow.
        if self.stop_strings.len() > MAX_STOP_STRINGS {
            return Err(Error::InvalidOption(format!(
                "{} stop strings: give at most {MAX_STOP_STRINGS}",
                self.stop_strings.len()
            )));
        }
        if let Some(s) = self.stop_strings.iter().find(|s| s.len() > MAX_STOP_BYTES) {
            return Err(Error::InvalidOption(format!(
                "a stop string of {} bytes: each may be at most {MAX_STOP_BYTES}",
                s.len()
            )));
        }
        Ok(())
    }
}

/// Most stop strings one answer takes.
pub const MAX_STOP_STRINGS: usize = 16;
/// Longest stop string, in bytes.
pub const MAX_STOP_BYTES: usize = 256;

impl Default for GenerateOptions {
    /// [`Preset::Eval`]: greedy, 300 new tokens.
    fn default() -> Self {
        Self::eval()
    }
}

/// Named starting points for the decoding options.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Preset {
    /// The paper's evaluation: greedy, 300 new tokens ([`GenerateOptions::eval`]). The default.
    #[default]
    Eval,
    /// The original demo's sampling: temperature 0.6, top-p 0.9, top-k 50, repetition penalty
    /// 1.05, 500 new tokens, context capped at 2000, seed 0 ([`GenerateOptions::demo`]).
    Demo,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 2] = [Preset::Eval, Preset::Demo];

    /// The preset's options.
    pub fn options(self) -> GenerateOptions {
        match self {
            Preset::Eval => GenerateOptions::eval(),
            Preset::Demo => GenerateOptions::demo(Sampling::DEFAULT_SEED),
        }
    }

    /// The name `FromStr` reads: `eval` or `demo`.
    pub const fn name(self) -> &'static str {
        match self {
            Preset::Eval => "eval",
            Preset::Demo => "demo",
        }
    }
}

/// Parses `eval` (also `greedy`) or `demo`, case-insensitively.
impl std::str::FromStr for Preset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "eval" | "greedy" => Ok(Preset::Eval),
            "demo" => Ok(Preset::Demo),
            _ => Err(Error::InvalidOption(format!("preset {s:?}: use eval (greedy) or demo (sampling)"))),
        }
    }
}

impl std::fmt::Display for Preset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Decoding settings as a front door receives them, each one optional: a CLI's flags, Python's
/// keywords, a service's JSON fields. [`DecodeSettings::resolve`] applies them on a preset.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DecodeSettings {
    /// The starting point (default [`Preset::Eval`]).
    pub preset: Option<Preset>,
    /// Most new tokens (default: the preset's).
    pub max_new_tokens: Option<usize>,
    /// Sampling temperature: > 0 samples (on a greedy preset with [`Sampling::with_temperature`]'s
    /// top-p, top-k and seed), 0 decodes greedily.
    pub temperature: Option<f32>,
    /// Nucleus mass; needs sampling.
    pub top_p: Option<f32>,
    /// Top-k (0 = off); needs sampling.
    pub top_k: Option<usize>,
    /// Sampling seed; needs sampling.
    pub seed: Option<u64>,
    /// Repetition penalty (1.0 = off).
    pub repetition_penalty: Option<f32>,
    /// Stop strings (replacing the preset's, which has none).
    pub stop_strings: Option<Vec<String>>,
    /// Cap on prompt + new tokens (see [`GenerateOptions::context_limit`]).
    pub context_limit: Option<usize>,
    /// See [`GenerateOptions::ignore_eos`].
    pub ignore_eos: Option<bool>,
}

impl DecodeSettings {
    /// The options: the preset, then each given setting on top, validated.
    ///
    /// A `temperature` above 0 on a greedy preset samples with [`Sampling::with_temperature`];
    /// a `temperature` of 0 decodes greedily. `top_p`, `top_k` and `seed` with greedy decoding
    /// are an error (unless `temperature` is 0): silently ignoring them would hide a mistake.
    pub fn resolve(&self) -> Result<GenerateOptions> {
        let mut o = self.preset.unwrap_or_default().options();
        if let Some(n) = self.max_new_tokens {
            o.max_new_tokens = n;
        }
        match self.temperature {
            Some(0.0) => o.sampling = Sampling::Greedy,
            Some(t) => {
                o.sampling = match o.sampling {
                    Sampling::Greedy => Sampling::with_temperature(t),
                    Sampling::Sample { top_p, top_k, seed, .. } => {
                        Sampling::Sample { temperature: t, top_p, top_k, seed }
                    }
                }
            }
            None => {}
        }
        match &mut o.sampling {
            Sampling::Sample { top_p, top_k, seed, .. } => {
                *top_p = self.top_p.unwrap_or(*top_p);
                *top_k = self.top_k.unwrap_or(*top_k);
                *seed = self.seed.unwrap_or(*seed);
            }
            Sampling::Greedy => {
                let explicit_greedy = self.temperature == Some(0.0);
                if !explicit_greedy && (self.top_p.is_some() || self.top_k.is_some() || self.seed.is_some()) {
                    return Err(Error::InvalidOption(
                        "top_p, top_k and seed apply to sampling: also give a temperature, or the demo preset".into(),
                    ));
                }
            }
        }
        if let Some(r) = self.repetition_penalty {
            o.repetition_penalty = r;
        }
        if let Some(s) = &self.stop_strings {
            o.stop_strings = s.clone();
        }
        if let Some(c) = self.context_limit {
            o.context_limit = Some(c);
        }
        if let Some(i) = self.ignore_eos {
            o.ignore_eos = i;
        }
        o.validate()?;
        Ok(o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(temperature: f32, top_p: f32, top_k: usize, seed: u64) -> Sampling {
        Sampling::Sample { temperature, top_p, top_k, seed }
    }

    #[test]
    fn defaults_are_the_eval_preset() {
        let o = DecodeSettings::default().resolve().unwrap();
        assert_eq!(o, GenerateOptions::greedy(300));
        assert_eq!(o, GenerateOptions::default());
    }

    #[test]
    fn a_lone_temperature_samples_the_whole_distribution() {
        let o = DecodeSettings { temperature: Some(0.7), ..Default::default() }.resolve().unwrap();
        assert_eq!(o.sampling, sample(0.7, 1.0, 0, 0));
        assert_eq!(o.max_new_tokens, 300);
        let o = DecodeSettings { temperature: Some(0.0), top_p: Some(0.5), ..Default::default() }.resolve().unwrap();
        assert_eq!(o.sampling, Sampling::Greedy);
    }

    #[test]
    fn the_demo_preset_keeps_its_own_values_under_overrides() {
        let demo = DecodeSettings { preset: Some(Preset::Demo), ..Default::default() };
        let o = demo.resolve().unwrap();
        assert_eq!((o.max_new_tokens, o.sampling, o.repetition_penalty), (500, sample(0.6, 0.9, 50, 0), 1.05));
        assert_eq!(o.context_limit, Some(2000));
        let o = DecodeSettings { temperature: Some(0.9), seed: Some(4), max_new_tokens: Some(20), ..demo }
            .resolve()
            .unwrap();
        assert_eq!((o.max_new_tokens, o.sampling), (20, sample(0.9, 0.9, 50, 4)));
    }

    #[test]
    fn sampling_settings_without_sampling_are_refused() {
        for s in [
            DecodeSettings { top_p: Some(0.9), ..Default::default() },
            DecodeSettings { top_k: Some(5), ..Default::default() },
            DecodeSettings { seed: Some(1), ..Default::default() },
        ] {
            let e = s.resolve().unwrap_err().to_string();
            assert!(e.contains("apply to sampling"), "{e}");
        }
        let e = DecodeSettings { temperature: Some(-1.0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("temperature -1 must be > 0"), "{e}");
        let e = DecodeSettings { max_new_tokens: Some(0), ..Default::default() }.resolve().unwrap_err().to_string();
        assert!(e.contains("max_new_tokens must be at least 1"), "{e}");
    }

    #[test]
    fn presets_parse_by_name() {
        for p in Preset::ALL {
            assert_eq!(p.name().parse::<Preset>().unwrap(), p);
            assert_eq!(p.to_string().to_uppercase().parse::<Preset>().unwrap(), p);
        }
        assert_eq!("greedy".parse::<Preset>().unwrap(), Preset::Eval);
        assert!("fast".parse::<Preset>().is_err());
    }
}

#[cfg(test)]
mod stop_limits {
    use super::*;

    #[test]
    fn stop_strings_are_bounded_in_number_and_length() {
        let with = |stop: Vec<String>| DecodeSettings { stop_strings: Some(stop), ..Default::default() }.resolve();
        assert!(with(vec!["x".into(); MAX_STOP_STRINGS]).is_ok());
        let e = with(vec!["x".into(); MAX_STOP_STRINGS + 1]).unwrap_err().to_string();
        assert!(e.contains("at most 16"), "{e}");
        assert!(with(vec!["é".repeat(MAX_STOP_BYTES / 2)]).is_ok());
        let e = with(vec!["a".repeat(MAX_STOP_BYTES + 1)]).unwrap_err().to_string();
        assert!(e.contains("at most 256"), "{e}");
    }
}
