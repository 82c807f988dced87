//! Archives: the records of a batch run (`minigpt-med batch`, one JSON object a line) and the
//! rules shared by every front door that runs them: how a record names its task and image
//! options, what a result line holds, and which ids an interrupted run already finished.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::answer::{Answer, BoundingBox, Timings};
use crate::error::{Error, Result};
use crate::image::{ColorMode, ImageOptions, Window};
use crate::task::{Region, Task, TaskKind};

/// One line of a manifest: `{"id", "image", "task", "prompt" | "instruction", "region",
/// "grid_region", "color", "window"}`; only `image` is required.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BatchRecord {
    /// The record's id in the results (default: its image path, then `#N` for repeats).
    pub id: Option<String>,
    /// The image file (any input `Image::open` reads, DICOM included); relative paths are
    /// taken from the manifest's directory.
    pub image: PathBuf,
    /// `report` (default), `vqa`, `detection`, `refer`, `grounding`, `identify` or `custom`.
    pub task: Option<TaskKind>,
    /// The task's text (question, class, phrase, or a replacement instruction).
    pub prompt: Option<String>,
    /// A verbatim instruction, tags included (instead of `task`/`prompt`).
    pub instruction: Option<String>,
    /// Identify's region in pixels of the image: `[x1, y1, x2, y2]`.
    pub region: Option<[f64; 4]>,
    /// Identify's region on the model's 0-100 grid.
    pub grid_region: Option<[f64; 4]>,
    /// `gray` (default, the paper's evaluation) or `rgb`.
    pub color: Option<ColorMode>,
    /// A window `[center, width]` on the image's real values (DICOM, 16-bit).
    pub window: Option<[f64; 2]>,
}

impl BatchRecord {
    /// Reads one manifest line (`line` is 1-based, for the message).
    pub fn parse(text: &str, line: usize) -> Result<Self> {
        serde_json::from_str(text).map_err(|e| {
            Error::InvalidOption(format!(
                "manifest line {line}: {e} (fields: id, image, task, prompt, instruction, region, grid_region, color, window)"
            ))
        })
    }

    /// The task the record asks, checked as the front doors check one (`task` defaults to
    /// `default` when the record names none).
    pub fn task(&self, default: TaskKind, default_prompt: Option<&str>) -> Result<Task> {
        if let Some(i) = &self.instruction {
            if self.task.is_some() || self.prompt.is_some() {
                return Err(Error::InvalidOption("a record gives either instruction or task/prompt, not both".into()));
            }
            return Ok(Task::Custom(i.clone()));
        }
        let region = match (self.region, self.grid_region) {
            (Some(_), Some(_)) => {
                return Err(Error::InvalidOption("give region (pixels) or grid_region, not both".into()))
            }
            (Some(r), None) => Some(Region::pixels(r)?),
            (None, Some(r)) => Some(Region::grid(r)?),
            (None, None) => None,
        };
        let prompt = self.prompt.as_deref().or(if self.task.is_none() { default_prompt } else { None });
        Task::new(self.task.unwrap_or(default), prompt, region)
    }

    /// How the record's image is read.
    pub fn image_options(&self) -> Result<ImageOptions> {
        let mut opts = ImageOptions { color: self.color.unwrap_or_default(), ..ImageOptions::default() };
        if let Some([center, width]) = self.window {
            opts.window = Some(Window::new(center, width)?);
        }
        Ok(opts)
    }

    /// What records of one image share (one study serves them all): the path and the options
    /// that change the pixels the model sees.
    pub fn image_key(&self) -> (PathBuf, Option<ColorMode>, Option<[u64; 2]>) {
        (self.image.clone(), self.color, self.window.map(|w| w.map(f64::to_bits)))
    }
}

/// One result line: the record's id and image, the answer or the error that stopped it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchResult {
    /// The record's id.
    pub id: String,
    /// The record's image path.
    pub image: PathBuf,
    /// The answer text (`null` on error).
    pub text: Option<String>,
    /// Generated token ids.
    pub token_ids: Vec<u32>,
    /// Boxes in the text.
    pub boxes: Vec<BatchBox>,
    /// Why generation stopped (`null` on error).
    pub stop_reason: Option<String>,
    /// Milliseconds: `encode_ms` (the image's share, 0 when a study already had it),
    /// `prefill_ms`, `decode_ms`, and `tokens_per_s`.
    pub timings: Option<Timings>,
    /// What went wrong, or `null`.
    pub error: Option<String>,
}

/// A box of a result line (the answer's [`BoundingBox`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchBox {
    /// The phrase it belongs to.
    pub label: Option<String>,
    /// Corners on the 0-100 grid.
    pub grid: [u32; 4],
    /// Corners in pixels of the input image.
    pub pixels: [f64; 4],
}

impl From<&BoundingBox> for BatchBox {
    fn from(b: &BoundingBox) -> Self {
        Self { label: b.label.clone(), grid: b.grid, pixels: b.pixels }
    }
}

impl BatchResult {
    /// The line of an answered record.
    pub fn answered(id: &str, image: &Path, a: &Answer) -> Self {
        Self {
            id: id.to_owned(),
            image: image.to_owned(),
            text: Some(a.text.clone()),
            token_ids: a.token_ids.clone(),
            boxes: a.boxes.iter().map(BatchBox::from).collect(),
            stop_reason: Some(a.stop_reason.name().to_owned()),
            timings: Some(a.timings),
            error: None,
        }
    }

    /// The line of a record that failed.
    pub fn failed(id: &str, image: &Path, e: impl std::fmt::Display) -> Self {
        Self {
            id: id.to_owned(),
            image: image.to_owned(),
            text: None,
            token_ids: Vec::new(),
            boxes: Vec::new(),
            stop_reason: None,
            timings: None,
            error: Some(e.to_string()),
        }
    }
}

/// The ids an earlier run of `out` finished, so a rerun skips them. A last line cut short by a
/// crash is dropped from the file (its record runs again), so appending continues cleanly.
pub fn resume(out: &Path) -> Result<HashSet<String>> {
    let text = match std::fs::read(out) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(HashSet::new()),
        Err(e) => return Err(Error::io(out, e, "the results file exists but cannot be read")),
    };
    let complete = text.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    if complete < text.len() {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(out)
            .map_err(|e| Error::io(out, e, "truncating a cut line"))?;
        f.set_len(complete as u64).map_err(|e| Error::io(out, e, "truncating a cut line"))?;
    }
    let mut done = HashSet::new();
    for (i, line) in text[..complete].split(|&b| b == b'\n').enumerate().filter(|(_, l)| !l.is_empty()) {
        let r: BatchResult = serde_json::from_slice(line).map_err(|e| {
            Error::InvalidOption(format!(
                "{} line {}: {e}; it is not a results file of this command (choose another --out)",
                out.display(),
                i + 1
            ))
        })?;
        done.insert(r.id);
    }
    Ok(done)
}
