//! The six MiniGPT-Med tasks and the instruction strings its datasets and demo use for them.

use crate::error::{Error, Result};

/// Default report instruction (one of the four MIMIC-CXR instructions).
pub const DEFAULT_REPORT: &str = "Describe this image in detail";
/// Default grounding instruction (the SLAKE evaluation prompt).
pub const DEFAULT_GROUNDING: &str = "please describe this image in details";
/// Default identify question (one of the training templates).
pub const DEFAULT_IDENTIFY: &str = "what object is in this location";

/// A region given to `[identify]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Region {
    /// Corners `x1, y1, x2, y2` on the model's 0-100 grid.
    Grid([u32; 4]),
    /// Corners `x1, y1, x2, y2` in pixels of the input image.
    Pixels([f64; 4]),
}

impl Region {
    /// The region on the 0-100 grid of an image of `width x height` pixels, converted as the
    /// original training data was (`int(pixel / size * 100)`, per axis), clamped to 0..=100.
    pub fn to_grid(&self, width: usize, height: usize) -> Result<[u32; 4]> {
        let grid = match *self {
            Region::Grid(g) => g,
            Region::Pixels(p) => {
                if p.iter().any(|v| !v.is_finite()) || width == 0 || height == 0 {
                    return Err(Error::InvalidOption(format!("region {p:?} is not a finite pixel box")));
                }
                let conv = |v: f64, size: usize| ((v / size as f64) * 100.0).clamp(0.0, 100.0) as u32;
                [conv(p[0], width), conv(p[1], height), conv(p[2], width), conv(p[3], height)]
            }
        };
        if grid.iter().any(|&v| v > 100) {
            return Err(Error::InvalidOption(format!("grid box {grid:?} has values over 100")));
        }
        Ok(grid)
    }
}

/// Formats a grid box as the model reads and writes it: `{<x1><y1><x2><y2>}`.
pub fn format_grid_box(b: [u32; 4]) -> String {
    format!("{{<{}><{}><{}><{}>}}", b[0], b[1], b[2], b[3])
}

/// What to ask the model about an image.
#[derive(Debug, Clone, PartialEq)]
pub enum Task {
    /// Radiology report, untagged (default instruction "Describe this image in detail").
    Report(Option<String>),
    /// `[vqa] {question}`: a short answer.
    Vqa(String),
    /// `[detection] {class}`: boxes of every instance of a class.
    Detection(String),
    /// `[refer] {phrase}`: the box of the thing described.
    Refer(String),
    /// `[grounding] {instruction}`: a description with boxed phrases.
    Grounding(Option<String>),
    /// `[identify] {question} {<x1><y1><x2><y2>}`: what is in a region.
    Identify {
        /// The region to identify.
        region: Region,
        /// The question (default "what object is in this location").
        question: Option<String>,
    },
    /// An instruction used verbatim (tags included).
    Custom(String),
}

impl Task {
    /// The instruction placed in the prompt, for an input image of `width x height` pixels
    /// (needed only to convert a pixel region of `Identify`).
    pub fn instruction(&self, width: usize, height: usize) -> Result<String> {
        Ok(match self {
            Task::Report(text) => text.clone().unwrap_or_else(|| DEFAULT_REPORT.to_owned()),
            Task::Vqa(q) => format!("[vqa] {q}"),
            Task::Detection(c) => format!("[detection] {c}"),
            Task::Refer(p) => format!("[refer] {p}"),
            Task::Grounding(text) => format!("[grounding] {}", text.as_deref().unwrap_or(DEFAULT_GROUNDING)),
            Task::Identify { region, question } => format!(
                "[identify] {} {}",
                question.as_deref().unwrap_or(DEFAULT_IDENTIFY),
                format_grid_box(region.to_grid(width, height)?)
            ),
            Task::Custom(text) => text.clone(),
        })
    }

    /// Builds a task from its name (`report`, `vqa`, `detection`, `refer`, `grounding`,
    /// `identify`, `custom`) and text, as the CLI and the bindings receive them.
    pub fn from_name(name: &str, text: Option<&str>, region: Option<Region>) -> Result<Self> {
        let need = |what: &str| {
            text.map(str::to_owned)
                .ok_or_else(|| Error::InvalidOption(format!("task {name} needs {what} (the prompt text)")))
        };
        Ok(match name.to_ascii_lowercase().as_str() {
            "report" => Task::Report(text.map(str::to_owned)),
            "vqa" => Task::Vqa(need("a question")?),
            "detection" | "detect" => Task::Detection(need("a class name, e.g. pneumonia")?),
            "refer" => Task::Refer(need("a phrase, e.g. the nodule in the left lung")?),
            "grounding" => Task::Grounding(text.map(str::to_owned)),
            "identify" => Task::Identify {
                region: region
                    .ok_or_else(|| Error::InvalidOption("task identify needs a region (a box)".into()))?,
                question: text.map(str::to_owned),
            },
            "custom" | "instruction" => Task::Custom(need("the instruction")?),
            other => {
                return Err(Error::InvalidOption(format!(
                    "unknown task {other:?}: use report, vqa, detection, refer, grounding, identify or custom"
                )))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pixel_regions_truncate_like_the_training_data() {
        // NLST: 512 px images; int(100 / 512 * 100) = 19.
        let r = Region::Pixels([100.0, 50.0, 300.0, 511.0]);
        assert_eq!(r.to_grid(512, 512).unwrap(), [19, 9, 58, 99]);
        // Non-square: x by width, y by height.
        assert_eq!(Region::Pixels([50.0, 50.0, 100.0, 100.0]).to_grid(200, 100).unwrap(), [25, 50, 50, 100]);
        assert!(Region::Grid([0, 0, 101, 5]).to_grid(10, 10).is_err());
        assert!(Region::Pixels([f64::NAN, 0.0, 1.0, 1.0]).to_grid(10, 10).is_err());
    }
}
