//! Shared by the core crate's integration tests: the bundled tiny model and its goldens.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use minigpt_med::candle::{Device, Tensor};
use minigpt_med::{LoadOptions, Model, Region, Task, TaskKind};

pub fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

pub fn golden_json() -> &'static serde_json::Value {
    static G: OnceLock<serde_json::Value> = OnceLock::new();
    G.get_or_init(|| {
        let text = std::fs::read_to_string(fixtures().join("golden.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    })
}

pub fn golden() -> &'static HashMap<String, Tensor> {
    static G: OnceLock<HashMap<String, Tensor>> = OnceLock::new();
    G.get_or_init(|| {
        minigpt_med::candle::safetensors::load(fixtures().join("golden.safetensors"), &Device::Cpu).unwrap()
    })
}

pub fn tensor(name: &str) -> &'static Tensor {
    golden().get(name).unwrap_or_else(|| panic!("golden tensor {name} missing"))
}

pub fn model() -> &'static Model {
    static M: OnceLock<Model> = OnceLock::new();
    M.get_or_init(|| Model::load_dir(fixtures(), &LoadOptions::default()).expect("tiny model loads"))
}

/// Largest absolute difference between two tensors of equal shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let a = a.to_dtype(minigpt_med::candle::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let b = b.to_dtype(minigpt_med::candle::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

pub fn ids(name: &str) -> Vec<u32> {
    tensor(name)
        .to_dtype(minigpt_med::candle::DType::I64)
        .unwrap()
        .to_vec1::<i64>()
        .unwrap()
        .into_iter()
        .map(|v| v as u32)
        .collect()
}

/// Copies the directory tree `from` to `to` (e.g. the tiny model, for a test to damage).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), dst).unwrap();
        }
    }
}

/// One question of each of the six tasks.
pub fn six_tasks() -> Vec<Task> {
    vec![
        Task::Report(None),
        Task::new(TaskKind::Vqa, Some("Is there a pleural effusion?"), None).unwrap(),
        Task::new(TaskKind::Detection, Some("pneumonia"), None).unwrap(),
        Task::new(TaskKind::Refer, Some("give me the location of tumor "), None).unwrap(),
        Task::new(TaskKind::Identify, None, Some(Region::grid([12.0, 34.0, 56.0, 78.0]).unwrap())).unwrap(),
        Task::Grounding(None),
    ]
}
