//! Intensity windows (DICOM VOI LUT, linear function) and the usual CT presets.

use crate::error::{Error, Result};

/// A linear intensity window: DICOM PS3.3 C.11.2.1.2 ("LINEAR") semantics, applied to the
/// image's real values (modality values, e.g. Hounsfield units, for DICOM; stored values for a
/// 16-bit PNG or TIFF).
/// Built only through [`Window::new`] (or the presets and min-max windows), so every window
/// has a finite centre and a finite width above 0.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    center: f64,
    width: f64,
    function: VoiFunction,
}

/// The VOI LUT Function of a window (PS3.3 C.11.2.1.3): how values between its ends map to
/// 0..=255.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VoiFunction {
    /// `LINEAR`, the default: the DICOM linear function with its half-sample offsets.
    #[default]
    Linear,
    /// `LINEAR_EXACT`: `((x - c) / w + 0.5) * 255` between `c - w/2` and `c + w/2`.
    LinearExact,
    /// `SIGMOID`: `255 / (1 + exp(-4 (x - c) / w))`.
    Sigmoid,
}

impl Window {
    /// A window of the given centre and width: both finite, the width above 0 (widths below 1
    /// are applied as 1, as the standard requires).
    pub fn new(center: f64, width: f64) -> Result<Self> {
        if !(center.is_finite() && width.is_finite() && width > 0.0) {
            return Err(Error::InvalidOption(format!(
                "window center {center}, width {width}: need finite values and a width > 0"
            )));
        }
        Ok(Self { center, width, function: VoiFunction::Linear })
    }

    /// A window known to be valid (the presets' constants).
    const fn known(center: f64, width: f64) -> Self {
        Self { center, width, function: VoiFunction::Linear }
    }

    /// The same window with another VOI LUT Function.
    pub fn with_function(mut self, function: VoiFunction) -> Self {
        self.function = function;
        self
    }

    /// The window's VOI LUT Function.
    pub fn function(&self) -> VoiFunction {
        self.function
    }

    /// The window's centre.
    pub fn center(&self) -> f64 {
        self.center
    }

    /// The window's width.
    pub fn width(&self) -> f64 {
        self.width
    }

    /// Maps `v` to 0..=255 with the window's VOI function (output rounded half up).
    pub fn apply(&self, v: f64) -> u8 {
        let (c, w) = (self.center, self.width);
        let y = match self.function {
            VoiFunction::Linear => return self.apply_linear(v),
            VoiFunction::LinearExact if v <= c - w / 2.0 => 0.0,
            VoiFunction::LinearExact if v > c + w / 2.0 => 255.0,
            VoiFunction::LinearExact => ((v - c) / w + 0.5) * 255.0,
            VoiFunction::Sigmoid => 255.0 / (1.0 + (-4.0 * (v - c) / w).exp()),
        };
        (y + 0.5).floor().clamp(0.0, 255.0) as u8
    }

    /// The DICOM linear function (C.11.2.1.2), width below 1 applied as 1.
    fn apply_linear(&self, v: f64) -> u8 {
        let (c, w) = (self.center, self.width.max(1.0));
        let y = if v <= c - 0.5 - (w - 1.0) / 2.0 {
            0.0
        } else if v > c - 0.5 + (w - 1.0) / 2.0 {
            255.0
        } else {
            ((v - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
        };
        y.round().clamp(0.0, 255.0) as u8
    }

    /// The window spanning `min..=max` exactly: `min` maps to 0, `max` to 255, linearly between.
    pub fn min_max(min: f64, max: f64) -> Self {
        let width = (max - min + 1.0).max(1.0);
        Self { center: min + (width - 1.0) / 2.0 + 0.5, width, function: VoiFunction::Linear }
    }

    /// The min-max window of the finite values in `values` (`None` if there are none).
    pub fn of_values(values: impl IntoIterator<Item = f64>) -> Option<Self> {
        let (lo, hi) = values
            .into_iter()
            .filter(|v| v.is_finite())
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
        (lo <= hi).then(|| Self::min_max(lo, hi))
    }
}

/// Parses `"CENTER,WIDTH"` (e.g. `"-600,1500"`; `/` or `:` also separate), as a CLI
/// `--window C,W` gives it. The width must be positive and both numbers finite.
impl std::str::FromStr for Window {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::InvalidOption(format!("window {s:?}: expected CENTER,WIDTH such as -600,1500"));
        let (c, w) = s.split_once([',', '/', ':']).ok_or_else(bad)?;
        let center: f64 = c.trim().parse().map_err(|_| bad())?;
        let width: f64 = w.trim().parse().map_err(|_| bad())?;
        Self::new(center, width)
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{},{}", self.center, self.width)
    }
}

/// Named CT windows, in Hounsfield units (centre/width as commonly used in radiology).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WindowPreset {
    /// Lung parenchyma: -600/1500.
    Lung,
    /// Mediastinum / soft tissue of the chest: 50/350.
    Mediastinum,
    /// Bone: 400/1800.
    Bone,
    /// Brain: 40/80.
    Brain,
    /// Abdomen / soft tissue: 40/400.
    Abdomen,
}

impl WindowPreset {
    /// Every preset, in documentation order.
    pub const ALL: [WindowPreset; 5] = [Self::Lung, Self::Mediastinum, Self::Bone, Self::Brain, Self::Abdomen];

    /// The preset's window (centre, width in HU).
    pub const fn window(self) -> Window {
        match self {
            Self::Lung => Window::known(-600.0, 1500.0),
            Self::Mediastinum => Window::known(50.0, 350.0),
            Self::Bone => Window::known(400.0, 1800.0),
            Self::Brain => Window::known(40.0, 80.0),
            Self::Abdomen => Window::known(40.0, 400.0),
        }
    }

    /// The lower-case name `FromStr` accepts.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Lung => "lung",
            Self::Mediastinum => "mediastinum",
            Self::Bone => "bone",
            Self::Brain => "brain",
            Self::Abdomen => "abdomen",
        }
    }
}

/// Parses a preset name, case-insensitively (`lung`, `mediastinum`, `bone`, `brain`, `abdomen`;
/// also `mediastinal`, `soft-tissue` for abdomen).
impl std::str::FromStr for WindowPreset {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "lung" | "lungs" => Ok(Self::Lung),
            "mediastinum" | "mediastinal" => Ok(Self::Mediastinum),
            "bone" => Ok(Self::Bone),
            "brain" => Ok(Self::Brain),
            "abdomen" | "abdominal" | "soft-tissue" | "soft_tissue" => Ok(Self::Abdomen),
            other => Err(Error::InvalidOption(format!(
                "window preset {other:?}: use one of {}",
                Self::ALL.map(Self::name).join(", ")
            ))),
        }
    }
}

impl std::fmt::Display for WindowPreset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_function_matches_the_standard() {
        let w = Window::new(40.0, 80.0).unwrap();
        assert_eq!(w.apply(-1.0), 0);
        assert_eq!(w.apply(0.0), 0);
        assert_eq!(w.apply(79.0), 255);
        assert_eq!(w.apply(40.0), 129); // ((40 - 39.5) / 79 + 0.5) * 255 = 129.1
        let mm = Window::min_max(-1000.0, 1000.0);
        assert_eq!((mm.apply(-1000.0), mm.apply(1000.0), mm.apply(0.0)), (0, 255, 128));
        assert_eq!(Window::of_values([f64::NAN, 3.0, 1.0]), Some(Window::min_max(1.0, 3.0)));
        assert_eq!(Window::of_values([f64::NAN]), None);
    }

    #[test]
    fn exact_and_sigmoid_functions_follow_the_standard() {
        // Worked by hand from PS3.3 C.11.2.1.3 (y in 0..=255, rounded half up).
        let exact = Window::new(100.0, 200.0).unwrap().with_function(VoiFunction::LinearExact);
        assert_eq!(
            [exact.apply(0.0), exact.apply(100.0), exact.apply(150.0), exact.apply(200.0), exact.apply(201.0)],
            [0, 128, 191, 255, 255]
        );
        let sigmoid = Window::new(100.0, 200.0).unwrap().with_function(VoiFunction::Sigmoid);
        // 255 / (1 + e^-2) = 224.60; 255 / (1 + e^2) = 30.40.
        assert_eq!(
            [sigmoid.apply(100.0), sigmoid.apply(200.0), sigmoid.apply(0.0), sigmoid.apply(-1e9)],
            [128, 225, 30, 0]
        );
        assert_eq!(Window::new(40.0, 80.0).unwrap().function(), VoiFunction::Linear);
    }

    #[test]
    fn parses_windows_and_presets() {
        assert_eq!("-600,1500".parse::<Window>().unwrap(), Window::new(-600.0, 1500.0).unwrap());
        assert_eq!(" 40 / 80 ".parse::<Window>().unwrap(), Window::new(40.0, 80.0).unwrap());
        assert!("40".parse::<Window>().is_err());
        assert!("40,0".parse::<Window>().is_err());
        assert!("nan,3".parse::<Window>().is_err());
        assert!(Window::new(0.0, 0.0).is_err());
        assert!(Window::new(f64::INFINITY, 10.0).is_err());
        assert!(Window::new(5.0, -1.0).is_err());
        for p in WindowPreset::ALL {
            assert_eq!(p.name().parse::<WindowPreset>().unwrap(), p);
            assert_eq!(p.to_string().to_uppercase().parse::<WindowPreset>().unwrap(), p);
        }
        assert_eq!("LUNG".parse::<WindowPreset>().unwrap().window(), Window::new(-600.0, 1500.0).unwrap());
        assert!("liver".parse::<WindowPreset>().is_err());
    }
}
