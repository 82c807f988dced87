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
    /// A region on the 0-100 grid from four numbers, each a whole number in 0..=100 (a
    /// fraction or a value out of range is an error, never truncated or clamped).
    pub fn grid(corners: [f64; 4]) -> Result<Self> {
        if let Some(bad) = corners.iter().find(|v| !(v.fract() == 0.0 && (0.0..=100.0).contains(*v))) {
            return Err(Error::InvalidOption(format!(
                "grid region {corners:?}: {bad} is not a whole number in 0..=100"
            )));
        }
        Ok(Region::Grid(corners.map(|v| v as u32)))
    }

    /// A region in pixels of the input image from four finite numbers (corners beyond the
    /// image are clamped to its edges when converted to the grid).
    pub fn pixels(corners: [f64; 4]) -> Result<Self> {
        if corners.iter().any(|v| !v.is_finite()) {
            return Err(Error::InvalidOption(format!(
                "pixel region {corners:?}: every corner must be a finite number"
            )));
        }
        Ok(Region::Pixels(corners))
    }

    /// Four corners written `x1,y1,x2,y2` (spaces allowed), as a command line gives them.
    pub fn parse_corners(s: &str) -> Result<[f64; 4]> {
        let bad = || Error::InvalidOption(format!("box {s:?}: expected four numbers x1,y1,x2,y2"));
        let v: Vec<f64> =
            s.split(',').map(|x| x.trim().parse::<f64>()).collect::<std::result::Result<_, _>>().map_err(|_| bad())?;
        <[f64; 4]>::try_from(v).map_err(|_| bad())
    }

    /// The region a front door was given as text: `pixels` (`x1,y1,x2,y2` in pixels of the
    /// input image) or `grid` (on the 0-100 grid), at most one of them.
    pub fn from_text(pixels: Option<&str>, grid: Option<&str>) -> Result<Option<Self>> {
        match (pixels, grid) {
            (Some(_), Some(_)) => {
                Err(Error::InvalidOption("give the region once: in pixels or on the grid, not both".into()))
            }
            (Some(p), None) => Ok(Some(Region::pixels(Region::parse_corners(p)?)?)),
            (None, Some(g)) => Ok(Some(Region::grid(Region::parse_corners(g)?)?)),
            (None, None) => Ok(None),
        }
    }

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

    /// Builds a task of `kind` from its text and region, as the CLI and the bindings receive
    /// them. `text` is the question (vqa), class (detection), phrase (refer), instruction
    /// (report, grounding: optional; custom: required) or question (identify: optional). A
    /// region is required by [`TaskKind::Identify`] and an error with any other kind.
    pub fn new(kind: TaskKind, text: Option<&str>, region: Option<Region>) -> Result<Self> {
        if region.is_some() && kind != TaskKind::Identify {
            return Err(Error::InvalidOption(format!(
                "a region is only used by the identify task, not by {kind}: leave it out or use identify"
            )));
        }
        let need = |what: &str| {
            text.map(str::to_owned)
                .ok_or_else(|| Error::InvalidOption(format!("task {kind} needs {what} (the prompt text)")))
        };
        Ok(match kind {
            TaskKind::Report => Task::Report(text.map(str::to_owned)),
            TaskKind::Vqa => Task::Vqa(need("a question")?),
            TaskKind::Detection => Task::Detection(need("a class name, e.g. pneumonia")?),
            TaskKind::Refer => Task::Refer(need("a phrase, e.g. the nodule in the left lung")?),
            TaskKind::Grounding => Task::Grounding(text.map(str::to_owned)),
            TaskKind::Identify => Task::Identify {
                region: region.ok_or_else(|| Error::InvalidOption("task identify needs a region (a box)".into()))?,
                question: text.map(str::to_owned),
            },
            TaskKind::Custom => Task::Custom(need("the instruction")?),
        })
    }

    /// The task a front door's fields describe: a verbatim `instruction` (tags included; then
    /// no `kind` or `text`), or a `kind` (default report) with its `text` and `region` as in
    /// [`Task::new`].
    pub fn from_fields(
        kind: Option<TaskKind>,
        text: Option<&str>,
        instruction: Option<&str>,
        region: Option<Region>,
    ) -> Result<Self> {
        match instruction {
            Some(_) if kind.is_some() || text.is_some() || region.is_some() => Err(Error::InvalidOption(
                "a verbatim instruction replaces the task, its prompt and region: give one or the other".into(),
            )),
            Some(i) => Ok(Task::Custom(i.to_owned())),
            None => Task::new(kind.unwrap_or_default(), text, region),
        }
    }

    /// Which kind of task this is.
    pub fn kind(&self) -> TaskKind {
        match self {
            Task::Report(_) => TaskKind::Report,
            Task::Vqa(_) => TaskKind::Vqa,
            Task::Detection(_) => TaskKind::Detection,
            Task::Refer(_) => TaskKind::Refer,
            Task::Grounding(_) => TaskKind::Grounding,
            Task::Identify { .. } => TaskKind::Identify,
            Task::Custom(_) => TaskKind::Custom,
        }
    }
}

/// The kinds of [`Task`], named as every output and front door spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A radiology report (untagged).
    #[default]
    Report,
    /// `[vqa]`: a short answer.
    Vqa,
    /// `[detection]`: boxes of every instance of a class.
    Detection,
    /// `[refer]`: the box of the thing described.
    Refer,
    /// `[grounding]`: a description with boxed phrases.
    Grounding,
    /// `[identify]`: what is in a region.
    Identify,
    /// An instruction used verbatim.
    Custom,
}

impl TaskKind {
    /// Every kind, in documentation order.
    pub const ALL: [TaskKind; 7] = [
        TaskKind::Report,
        TaskKind::Vqa,
        TaskKind::Detection,
        TaskKind::Refer,
        TaskKind::Grounding,
        TaskKind::Identify,
        TaskKind::Custom,
    ];

    /// The kind an instruction asks for, by its leading tag as users type it: `[refer] the
    /// nodule` is [`TaskKind::Refer`], an untagged instruction a [`TaskKind::Report`], a tag
    /// MiniGPT-Med does not know [`TaskKind::Custom`]. Tags are matched case-insensitively.
    pub fn of_instruction(instruction: &str) -> TaskKind {
        let text = instruction.trim_start();
        let Some(rest) = text.strip_prefix('[') else { return TaskKind::Report };
        let Some((tag, _)) = rest.split_once(']') else { return TaskKind::Report };
        match tag.trim().to_ascii_lowercase().as_str() {
            "vqa" => TaskKind::Vqa,
            "detection" => TaskKind::Detection,
            "refer" => TaskKind::Refer,
            "grounding" => TaskKind::Grounding,
            "identify" => TaskKind::Identify,
            _ => TaskKind::Custom,
        }
    }

    /// The name: `report`, `vqa`, `detection`, `refer`, `grounding`, `identify` or `custom`.
    pub const fn name(self) -> &'static str {
        match self {
            TaskKind::Report => "report",
            TaskKind::Vqa => "vqa",
            TaskKind::Detection => "detection",
            TaskKind::Refer => "refer",
            TaskKind::Grounding => "grounding",
            TaskKind::Identify => "identify",
            TaskKind::Custom => "custom",
        }
    }

    /// The tag the instruction starts with (`[vqa]`, ...); `None` for reports and custom ones.
    pub const fn tag(self) -> Option<&'static str> {
        match self {
            TaskKind::Vqa => Some("[vqa]"),
            TaskKind::Detection => Some("[detection]"),
            TaskKind::Refer => Some("[refer]"),
            TaskKind::Grounding => Some("[grounding]"),
            TaskKind::Identify => Some("[identify]"),
            TaskKind::Report | TaskKind::Custom => None,
        }
    }
}

/// Parses a kind's name case-insensitively (also `detect` and `instruction` for custom).
impl std::str::FromStr for TaskKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let lower = s.trim().to_ascii_lowercase();
        match lower.as_str() {
            "detect" => return Ok(TaskKind::Detection),
            "instruction" => return Ok(TaskKind::Custom),
            _ => {}
        }
        TaskKind::ALL.into_iter().find(|k| k.name() == lower).ok_or_else(|| {
            Error::InvalidOption(format!("unknown task {s:?}: use {}", TaskKind::ALL.map(TaskKind::name).join(", ")))
        })
    }
}

impl std::fmt::Display for TaskKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instruction_names_its_task_by_its_tag() {
        for (text, kind) in [
            ("[refer] the nodule", TaskKind::Refer),
            ("  [VQA] Is there an effusion?", TaskKind::Vqa),
            ("[detection] pneumonia", TaskKind::Detection),
            ("[grounding] describe", TaskKind::Grounding),
            ("[identify] what is this {<1><2><3><4>}", TaskKind::Identify),
            ("Describe this image in detail", TaskKind::Report),
            ("[caption] something", TaskKind::Custom),
            ("[refer the nodule", TaskKind::Report),
            ("", TaskKind::Report),
        ] {
            assert_eq!(TaskKind::of_instruction(text), kind, "{text:?}");
        }
        // A task's own instruction reads back as its kind.
        let t = Task::new(TaskKind::Refer, Some("the nodule"), None).unwrap();
        assert_eq!(TaskKind::of_instruction(&t.instruction(10, 10).unwrap()), TaskKind::Refer);
    }

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

    #[test]
    fn grid_values_are_checked_never_truncated() {
        assert_eq!(Region::grid([0.0, 5.0, 100.0, 42.0]).unwrap(), Region::Grid([0, 5, 100, 42]));
        for bad in [[0.0, 5.5, 10.0, 10.0], [0.0, 0.0, 101.0, 10.0], [-1.0, 0.0, 1.0, 1.0], [f64::NAN, 0.0, 1.0, 1.0]] {
            let e = Region::grid(bad).unwrap_err().to_string();
            assert!(e.contains("not a whole number in 0..=100"), "{e}");
        }
        assert!(Region::pixels([0.0, f64::INFINITY, 1.0, 1.0]).is_err());
        assert_eq!(Region::parse_corners(" 1, 2.5,3 ,4").unwrap(), [1.0, 2.5, 3.0, 4.0]);
        assert!(Region::parse_corners("1,2,3").is_err());
        assert!(Region::parse_corners("1,2,3,x").is_err());
    }

    #[test]
    fn task_kinds_round_trip_and_regions_belong_to_identify() {
        for k in TaskKind::ALL {
            assert_eq!(k.name().parse::<TaskKind>().unwrap(), k);
            assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{k}\""));
        }
        assert_eq!("DETECT".parse::<TaskKind>().unwrap(), TaskKind::Detection);
        assert!("segment".parse::<TaskKind>().is_err());
        let region = Some(Region::Grid([1, 2, 3, 4]));
        let e = Task::new(TaskKind::Vqa, Some("q"), region).unwrap_err().to_string();
        assert!(e.contains("only used by the identify task, not by vqa"), "{e}");
        let t = Task::new(TaskKind::Identify, None, region).unwrap();
        assert_eq!(t.instruction(10, 10).unwrap(), "[identify] what object is in this location {<1><2><3><4>}");
        assert_eq!(t.kind(), TaskKind::Identify);
        for k in TaskKind::ALL {
            let task = Task::new(k, Some("x"), (k == TaskKind::Identify).then_some(Region::Grid([0, 0, 1, 1])));
            let instruction = task.unwrap().instruction(10, 10).unwrap();
            assert_eq!(instruction.starts_with('['), k.tag().is_some(), "{k}: {instruction}");
            if let Some(tag) = k.tag() {
                assert!(instruction.starts_with(tag), "{k}: {instruction}");
            }
        }
        assert!(Task::new(TaskKind::Vqa, None, None).is_err());
        assert!(Task::new(TaskKind::Identify, Some("q"), None).is_err());
    }
}
