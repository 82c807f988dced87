//! An f16 KV cache: keys and values rounded once when written, every product still in f32.
//! How far it moves the logits from the fp32 reference (the figure docs/perf.md states), and
//! that greedy answers, studies and chats still give the reference's tokens.

mod common;

use common::*;
use minigpt_med::{GenerateOptions, ImageEmbeddings, KvDType, LoadOptions, Model, Task, TaskKind};

fn f16_model() -> &'static Model {
    static M: std::sync::OnceLock<Model> = std::sync::OnceLock::new();
    M.get_or_init(|| {
        Model::load_dir(fixtures(), &LoadOptions { kv_dtype: KvDType::F16, ..LoadOptions::default() }).unwrap()
    })
}

fn golden_embeddings(image: &str) -> ImageEmbeddings {
    ImageEmbeddings { embeds: tensor(&format!("image_embeds.{image}")).clone(), width: 448, height: 448 }
}

#[test]
fn an_f16_cache_keeps_the_reference_tokens_and_states_its_error() {
    let (exact, half) = (model(), f16_model());
    assert_eq!(half.info().kv_dtype, KvDType::F16);
    assert_eq!(exact.info().kv_dtype, KvDType::F32);
    let mut worst = 0f32;
    for p in golden_json()["prompts"].as_array().unwrap() {
        let name = p["name"].as_str().unwrap();
        let instruction = p["instruction"].as_str().unwrap();
        let emb = golden_embeddings(p["image"].as_str().unwrap());
        let prompt = half.prompt(instruction).unwrap();
        let want = tensor(&format!("last_logits.{name}"));
        let d = max_abs_diff(&half.prompt_logits(&emb, &prompt).unwrap(), want);
        // The f32 cache's own distance from the reference, for scale: the f16 cache's must be
        // of f16's rounding (2^-11 relative on keys and values of magnitude ~1), not zero (the
        // cache would then not be f16) and not an f32 cache's 1e-5.
        let exact_d = max_abs_diff(&exact.prompt_logits(&emb, &prompt).unwrap(), want);
        assert!(exact_d <= 2e-3, "{name}: f32 cache {exact_d}");
        assert!(d > exact_d && d <= 0.1, "{name}: f16 cache logits differ by {d} (f32 cache: {exact_d})");
        worst = worst.max(d);
        let answer = half.generate_from_embeddings(&emb, instruction, &GenerateOptions::greedy(20), &mut |_| true);
        assert_eq!(answer.unwrap().token_ids, ids(&format!("generated_ids.{name}")), "{name}: greedy ids");
    }
    eprintln!("f16 KV cache: max |last prompt logit - fp32 reference| = {worst:.2e} over the six prompts");
}

#[test]
fn a_study_and_a_chat_on_an_f16_cache_answer_as_fresh_generates() {
    let m = f16_model();
    let image = minigpt_med::Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let study = m.study(&image).unwrap();
    for task in six_tasks() {
        let opts = GenerateOptions::greedy(12);
        assert_eq!(study.ask(&task, &opts).unwrap().token_ids, m.generate(&image, &task, &opts).unwrap().token_ids);
    }
    let refer = Task::new(TaskKind::Refer, Some("give me the location of tumor "), None).unwrap();
    let mut chat = m.chat(&image).unwrap();
    // The chat's first turn is the same cache's one-shot answer. (From the PNG, not the golden
    // embeddings, p1_refer's 20th token is not the reference's on an f16 cache: the encoded
    // image differs from the golden one by ~1e-5, and that token's top two logits by 0.004.)
    let first = chat.ask_task(&refer, &GenerateOptions::greedy(20)).unwrap();
    let fresh = m.generate(&image, &refer, &GenerateOptions::greedy(20)).unwrap();
    assert_eq!(first.token_ids, fresh.token_ids);
    assert_eq!(first.token_ids[..19], ids("generated_ids.p1_refer")[..19]);
}
