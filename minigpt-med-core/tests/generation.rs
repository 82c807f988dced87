//! Streaming, cancellation, sampling reproducibility and chat caching on the tiny model.

mod common;

use common::*;
use minigpt_med::candle::Tensor;
use minigpt_med::{ChatHistory, GenerateOptions, Image, Model, Sampling, StopReason, Task};

fn ct() -> Image {
    Image::open(fixtures().join("images/ct_nlst.png")).unwrap()
}

fn sampled(seed: u64) -> GenerateOptions {
    GenerateOptions {
        sampling: Sampling::Sample { temperature: 0.9, top_p: 0.95, top_k: 50, seed },
        repetition_penalty: 1.05,
        ..GenerateOptions::greedy(24)
    }
}

#[test]
fn streamed_pieces_concatenate_to_the_answer() {
    let model = model();
    let image = ct();
    for (task, opts) in [
        (Task::Refer("give me the location of tumor ".into()), GenerateOptions::greedy(20)),
        (Task::Report(None), GenerateOptions::greedy(300)),
        (Task::Vqa("what is shown?".into()), sampled(3)),
    ] {
        let mut pieces = Vec::new();
        let streamed = model
            .generate_stream(&image, &task, &opts, &mut |p| {
                pieces.push(p.to_owned());
                true
            })
            .unwrap();
        let plain = model.generate(&image, &task, &opts).unwrap();
        assert_eq!(streamed.token_ids, plain.token_ids);
        assert_eq!(pieces.concat(), plain.text, "{task:?}");
        assert!(pieces.iter().all(|p| !p.is_empty()));
        assert!(pieces.len() > 1, "streaming sent everything at once");
    }
}

#[test]
fn returning_false_cancels_and_keeps_the_partial_answer() {
    let model = model();
    let mut calls = 0;
    let answer = model
        .generate_stream(&ct(), &Task::Report(None), &GenerateOptions::greedy(40), &mut |_| {
            calls += 1;
            calls < 3
        })
        .unwrap();
    assert_eq!(answer.stop_reason, StopReason::Cancelled);
    assert_eq!(calls, 3);
    assert!(answer.token_ids.len() < 40);
    let full = model.generate(&ct(), &Task::Report(None), &GenerateOptions::greedy(40)).unwrap();
    assert_eq!(answer.token_ids[..], full.token_ids[..answer.token_ids.len()]);
}

#[test]
fn a_cancelled_chat_turn_leaves_the_chat_as_it_was() {
    let model = model();
    for history in [ChatHistory::KeepAnswers, ChatHistory::Original] {
        let opts = GenerateOptions::greedy(6);
        let mut chat = model.chat(&ct()).unwrap().with_history(history);
        chat.ask("[vqa] first?", &opts).unwrap();
        let mut twin = model.chat(&ct()).unwrap().with_history(history);
        twin.ask("[vqa] first?", &opts).unwrap();
        let (turns, len) = (chat.turns(), chat.context_len());
        let cut = chat.ask_stream("[vqa] cancelled?", &GenerateOptions::greedy(30), &mut |_| false).unwrap();
        assert_eq!(cut.stop_reason, StopReason::Cancelled);
        assert_eq!(chat.turns(), turns, "{history}");
        assert!(chat.context_len() <= len, "{history}");
        // The next question is answered as if the cancelled one had never been asked.
        let a = chat.ask("[vqa] second?", &opts).unwrap();
        let b = twin.ask("[vqa] second?", &opts).unwrap();
        assert_eq!(a.token_ids, b.token_ids, "{history}");
        assert_eq!(chat.context_len(), twin.context_len(), "{history}");
    }
}

#[test]
fn same_seed_same_tokens() {
    let model = model();
    let task = Task::Vqa("is there a nodule?".into());
    let a = model.generate(&ct(), &task, &sampled(42)).unwrap();
    let b = model.generate(&ct(), &task, &sampled(42)).unwrap();
    let c = model.generate(&ct(), &task, &sampled(43)).unwrap();
    assert_eq!(a.token_ids, b.token_ids);
    assert_ne!(a.token_ids, c.token_ids, "another seed should sample another answer");
    let greedy = model.generate(&ct(), &task, &GenerateOptions::greedy(24)).unwrap();
    assert_ne!(a.token_ids, greedy.token_ids, "sampling at T=0.9 should leave the greedy path");
}

#[test]
fn stop_strings_cut_the_answer() {
    let model = model();
    let full = model.generate(&ct(), &Task::Report(None), &GenerateOptions::greedy(40)).unwrap();
    // Stop at the third character of the full answer (a piece the model certainly writes).
    let stop: String = full.text.chars().skip(2).take(2).collect();
    let mut opts = GenerateOptions::greedy(40);
    opts.stop_strings = vec![stop.clone()];
    let cut = model.generate(&ct(), &Task::Report(None), &opts).unwrap();
    assert_eq!(cut.stop_reason, StopReason::StopString);
    assert!(!cut.text.contains(&stop));
    assert!(full.text.starts_with(&cut.text));
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    max_abs_diff(a, b)
}

#[test]
fn chat_turns_equal_a_fresh_run_of_the_whole_conversation() {
    let model = model();
    let image = ct();
    let emb = model.encode_image(&image).unwrap();
    let q1 = "[vqa] is there a nodule?";
    let q2 = "[refer] the nodule";
    for history in [ChatHistory::KeepAnswers, ChatHistory::Original] {
        let mut chat = model.chat(&image).unwrap().with_history(history);
        let a1 = chat.ask(q1, &GenerateOptions::greedy(6)).unwrap();
        let a2 = chat.ask(q2, &GenerateOptions::greedy(6)).unwrap();
        assert_eq!(chat.turns(), 2);

        // The same conversation as one prompt, from scratch.
        let p1 = model.prompt(q1).unwrap();
        let mut after = p1.after_image.clone();
        if history == ChatHistory::KeepAnswers {
            after.extend(&a1.token_ids);
            if a1.stop_reason == StopReason::Eos {
                after.push(2);
            }
        }
        after.extend(model.tokenizer().encode(&format!("</s><s>[INST] {q2} [/INST]"), false).unwrap());
        let mut fresh = p1.clone();
        fresh.after_image = after;
        let fresh_logits = model.prompt_logits(&emb, &fresh).unwrap();
        let d = max_diff(chat.last_prompt_logits().unwrap(), &fresh_logits);
        assert!(d <= 1e-4, "{history:?}: turn-2 logits differ from a fresh run by {d}");

        // And the original demo's prompt string, tokenized whole, for the Original mode.
        if history == ChatHistory::Original {
            let text = format!("</Img> {} [/INST]</s><s>[INST] {q2} [/INST]", q1);
            assert_eq!(fresh.after_image, model.tokenizer().encode(&text, false).unwrap());
        }
        let fresh_answer =
            model.generate_from_embeddings(&emb, q1, &GenerateOptions::greedy(1), &mut |_| true).unwrap();
        assert_eq!(fresh_answer.token_ids[0], a1.token_ids[0]);
        assert!(!a2.token_ids.is_empty());
    }
}

#[test]
fn a_failed_turn_leaves_the_chat_usable() {
    let model = model();
    let mut chat = model.chat(&ct()).unwrap();
    chat.ask("[vqa] first?", &GenerateOptions::greedy(4)).unwrap();
    let len = chat.context_len();
    let too_long = format!("[vqa] {}", "word ".repeat(5000));
    let e = chat.ask(&too_long, &GenerateOptions::greedy(4)).unwrap_err();
    assert!(matches!(e, minigpt_med::Error::ContextOverflow { .. }), "{e}");
    assert_eq!(chat.context_len(), len);
    let ok = chat.ask("[vqa] second?", &GenerateOptions::greedy(4)).unwrap();
    assert_eq!(ok.token_ids.len(), 4);
}

#[test]
fn the_context_limit_left_truncates_the_prompt() {
    let model = model();
    let image = ct();
    let task = Task::Report(None);
    let emb = model.encode_image(&image).unwrap();
    let instruction = task.instruction(image.width(), image.height()).unwrap();
    let x = model.input_embeds(&emb, &model.prompt(&instruction).unwrap()).unwrap();
    let len = x.dim(0).unwrap();
    let keep = len * 3 / 5;
    let mut opts = GenerateOptions::greedy(4);
    opts.context_limit = Some(keep + 4);
    let a = model.generate(&image, &task, &opts).unwrap();
    // Reference: the truncated prompt fed by hand, each token chosen from a fresh forward pass
    // over everything so far (no KV cache, no truncation logic of the engine's).
    let mut x = x.narrow(0, len - keep, keep).unwrap();
    let mut want = Vec::new();
    for _ in 0..4 {
        let logits = model.logits_for_embeds(&x).unwrap().to_vec1::<f32>().unwrap();
        let next = (0..logits.len()).fold(0, |b, i| if logits[i] > logits[b] { i } else { b }) as u32;
        want.push(next);
        x = minigpt_med::candle::Tensor::cat(&[&x, &model.embed_ids(&[next]).unwrap()], 0).unwrap();
    }
    let n = a.token_ids.len();
    assert!(n >= 1, "at least one token");
    assert_eq!(a.token_ids, want[..n], "stop reason {}", a.stop_reason);
    // Without the cap the whole prompt is used and the answer differs.
    let full = model.generate(&image, &Task::Report(None), &GenerateOptions::greedy(4)).unwrap();
    assert_ne!(full.token_ids, a.token_ids, "truncating 40% of the prompt changed nothing");
}

#[test]
fn an_answer_stops_where_the_context_ends_and_is_kept() {
    let model = model();
    let image = ct();
    let task = Task::Vqa("is there a nodule?".into());
    let emb = model.encode_image(&image).unwrap();
    let instruction = task.instruction(image.width(), image.height()).unwrap();
    let prompt = model.prompt(&instruction).unwrap();
    let len = prompt.before_image.len() + emb.embeds.dim(0).unwrap() + prompt.after_image.len();
    // The same model with a context of the prompt plus 6 positions.
    let dir = std::env::temp_dir().join(format!("mgm-context-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    copy_dir(&fixtures(), &dir);
    let config = dir.join("llama-2-7b-chat-hf/config.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config).unwrap()).unwrap();
    cfg["max_position_embeddings"] = serde_json::json!(len + 6);
    std::fs::write(&config, cfg.to_string()).unwrap();
    let short = Model::load_dir(&dir, &minigpt_med::LoadOptions::default()).unwrap();
    let a = short.generate(&image, &task, &GenerateOptions::greedy(50)).unwrap();
    let want = model.generate(&image, &task, &GenerateOptions::greedy(6)).unwrap();
    assert_eq!(a.token_ids, want.token_ids, "the answer so far is the full model's");
    assert_eq!(want.stop_reason, StopReason::MaxTokens, "the reference must run its 6 tokens");
    assert_eq!(a.stop_reason, StopReason::ContextFull);
    assert_eq!(a.token_ids.len(), 6);
    // A prompt with no room for one new token is an error, before anything is embedded.
    let long = Task::Vqa("word ".repeat(5000));
    let err = model.generate(&image, &long, &GenerateOptions::greedy(4)).unwrap_err();
    assert!(matches!(err, minigpt_med::Error::ContextOverflow { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// The timed encode gives the same embeddings as the plain one, and books time to every
/// section it runs through; the sections fit inside the encode's own wall time.
#[test]
fn the_encode_split_times_the_same_encode() {
    let model = model();
    let image = ct();
    let plain = model.encode_image(&image).unwrap();
    let t = std::time::Instant::now();
    let (timed, split) = model.encode_split(&image).unwrap();
    let wall_ms = t.elapsed().as_secs_f64() * 1e3;
    assert_eq!(max_diff(&plain.embeds, &timed.embeds), 0.0);
    assert_eq!((timed.width, timed.height), (plain.width, plain.height));
    for (name, ms) in [
        ("gemm", split.gemm_ms),
        ("attention", split.attention_ms),
        ("other", split.other_ms),
        ("connector", split.connector_ms),
    ] {
        assert!(ms > 0.0, "{name}: {ms} ms in {split:?}");
    }
    let sum = split.gemm_ms + split.attention_ms + split.other_ms + split.connector_ms;
    assert!(sum <= wall_ms, "sections {sum} ms > the encode's {wall_ms} ms");
}
