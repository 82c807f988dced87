//! Where the model runs.

use crate::error::{Error, Result};

/// Where the model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// The CPU (always available).
    #[default]
    Cpu,
    /// A CUDA GPU by ordinal (needs the `cuda` cargo feature).
    Cuda(usize),
}

/// Parses `cpu`, `cuda` (ordinal 0) or `cuda:N`, case-insensitively.
impl std::str::FromStr for Device {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let bad = || Error::InvalidOption(format!("device {s:?}: use cpu, cuda or cuda:N"));
        if lower == "cpu" {
            return Ok(Self::Cpu);
        }
        match lower.strip_prefix("cuda") {
            Some("") => Ok(Self::Cuda(0)),
            Some(n) => n.strip_prefix(':').ok_or_else(bad)?.parse().map(Self::Cuda).map_err(|_| bad()),
            None => Err(bad()),
        }
    }
}

/// `cpu` or `cuda:N`, the form [`Device::from_str`](std::str::FromStr) reads back.
impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl Device {
    /// The candle device, or a typed error when this build or machine cannot run it.
    pub(crate) fn candle(self) -> Result<candle_core::Device> {
        match self {
            Device::Cpu => Ok(candle_core::Device::Cpu),
            Device::Cuda(i) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(Error::Unsupported(
                        "this build has no CUDA support: rebuild with `--features cuda`".into(),
                    ));
                }
                candle_core::Device::new_cuda(i)
                    .map_err(|e| Error::Unsupported(format!("CUDA device {i} is not usable: {e}")))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_devices() {
        assert_eq!("cpu".parse::<Device>().unwrap(), Device::Cpu);
        assert_eq!("CUDA".parse::<Device>().unwrap(), Device::Cuda(0));
        assert_eq!("cuda:3".parse::<Device>().unwrap(), Device::Cuda(3));
        assert!("cuda3".parse::<Device>().is_err());
        assert!("cuda:x".parse::<Device>().is_err());
        assert!("tpu".parse::<Device>().is_err());
        for d in [Device::Cpu, Device::Cuda(0), Device::Cuda(7)] {
            assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
        }
    }
}
