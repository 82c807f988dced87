//! A study (one image, many questions) answers every task exactly as a fresh `generate` does,
//! in both colour modes, from several threads at once, and under a context limit that cuts
//! into its shared prefix.

mod common;

use common::*;
use minigpt_med::{ColorMode, GenerateOptions, Image, Task, TaskKind};

#[test]
fn study_answers_equal_fresh_generates() {
    let m = model();
    for color in [ColorMode::Gray, ColorMode::Rgb] {
        let image = Image::open(fixtures().join("images/cxr_rsna.jpg")).unwrap().with_color(color);
        let study = m.study(&image).unwrap();
        let before = m.prompt("any question").unwrap().before_image.len();
        assert_eq!(study.prefix_len(), before + study.image().embeds.dim(0).unwrap(), "<s>[INST] <Img> + image");
        for task in six_tasks() {
            let opts = GenerateOptions::greedy(16);
            let fresh = m.generate(&image, &task, &opts).unwrap();
            let asked = study.ask(&task, &opts).unwrap();
            assert_eq!(asked.token_ids, fresh.token_ids, "{task:?} {color}");
            assert_eq!(asked.text, fresh.text);
            assert_eq!(asked.stop_reason, fresh.stop_reason);
        }
    }
    // The golden ids of the reference, from a study.
    let ct = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let refer = Task::new(TaskKind::Refer, Some("give me the location of tumor "), None).unwrap();
    assert_eq!(
        m.study(&ct).unwrap().ask(&refer, &GenerateOptions::greedy(20)).unwrap().token_ids,
        ids("generated_ids.p1_refer")
    );
}

#[test]
fn one_study_is_asked_from_several_threads() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let study = &m.study(&image).unwrap();
    let opts = &GenerateOptions::greedy(12);
    let want: Vec<Vec<u32>> = six_tasks().iter().map(|t| m.generate(&image, t, opts).unwrap().token_ids).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> =
            six_tasks().into_iter().map(|t| s.spawn(move || study.ask(&t, opts).unwrap().token_ids)).collect();
        for (h, want) in handles.into_iter().zip(&want) {
            assert_eq!(&h.join().unwrap(), want);
        }
    });
}

#[test]
fn a_context_limit_inside_the_prefix_still_answers_as_generate() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let study = m.study(&image).unwrap();
    let task = Task::Report(None);
    let opts = GenerateOptions { context_limit: Some(200), ..GenerateOptions::greedy(8) };
    assert_eq!(study.ask(&task, &opts).unwrap().token_ids, m.generate(&image, &task, &opts).unwrap().token_ids);
}
