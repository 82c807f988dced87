//! Batched generation answers exactly as one request at a time: every task, both colour modes,
//! images and studies mixed, sequences of different lengths and stop reasons leaving the batch
//! at different steps, sampled and greedy, f32 and quantized weights; a failing request fails
//! alone; sequences join and are cancelled between steps.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use minigpt_med::{
    Answer, ColorMode, DecodeBatch, Exchange, GenerateOptions, Image, KvDType, LoadOptions, Model, Request, Sampling,
    StopReason, Task, TaskKind, WeightDType,
};

fn sampled(seed: u64, max_new_tokens: usize) -> GenerateOptions {
    GenerateOptions {
        sampling: Sampling::Sample { temperature: 1.5, top_p: 0.95, top_k: 0, seed },
        ..GenerateOptions::greedy(max_new_tokens)
    }
}

fn same(got: &Answer, want: &Answer, what: &str) {
    assert_eq!(got.token_ids, want.token_ids, "{what}");
    assert_eq!(got.text, want.text, "{what}");
    assert_eq!(got.stop_reason, want.stop_reason, "{what}");
    assert_eq!(got.boxes, want.boxes, "{what}");
}

fn images() -> Vec<Image> {
    let f = fixtures().join("images");
    vec![
        Image::open(f.join("cxr_rsna.jpg")).unwrap().with_color(ColorMode::Gray),
        Image::open(f.join("cxr_rsna.jpg")).unwrap().with_color(ColorMode::Rgb),
        Image::open(f.join("ct_nlst.png")).unwrap(),
    ]
}

/// Every task on every image, each with its own length and decoding: greedy at 5..16 tokens,
/// sampled with its own seed, and a stop string taken from the middle of its own sequential
/// answer, so the sequences leave the batch at different steps for different reasons.
fn check_batch_equals_sequential(m: &Model) {
    let images = images();
    let mut requests = Vec::new();
    for (i, image) in images.iter().enumerate() {
        for (t, task) in six_tasks().into_iter().enumerate() {
            let k = i * 6 + t;
            let opts = match k % 3 {
                0 => GenerateOptions::greedy(5 + k % 12),
                1 => sampled(k as u64, 6 + k % 9),
                _ => GenerateOptions::greedy(14),
            };
            requests.push(Request::new(image, task, opts));
        }
    }
    // The stop strings: a piece of the greedy answer's text, from its middle.
    for r in requests.iter_mut().skip(2).step_by(3) {
        let text = m.generate(image_of(r), &r.task, &r.options).unwrap().text;
        let chars: Vec<char> = text.chars().collect();
        if chars.len() > 8 {
            let piece: String = chars[chars.len() / 2..chars.len() / 2 + 3].iter().collect();
            if !piece.trim().is_empty() {
                r.options.stop_strings = vec![piece];
            }
        }
    }
    let want: Vec<Answer> = requests.iter().map(|r| m.generate(image_of(r), &r.task, &r.options).unwrap()).collect();
    let stops: std::collections::HashSet<StopReason> = want.iter().map(|a| a.stop_reason).collect();
    assert!(stops.contains(&StopReason::StopString) && stops.contains(&StopReason::MaxTokens), "{stops:?}");
    let lengths: std::collections::HashSet<usize> = want.iter().map(|a| a.token_ids.len()).collect();
    assert!(lengths.len() >= 5, "the sequences should end at different steps: {lengths:?}");

    let got = m.generate_batch(&requests);
    assert_eq!(got.len(), requests.len());
    for (k, (got, want)) in got.iter().zip(&want).enumerate() {
        same(got.as_ref().unwrap(), want, &format!("request {k}"));
    }
    // At most three at a time: requests join as others end, and answers stay the same.
    let mut order = Vec::new();
    m.generate_batch_each(&requests, 3, None, |i, r| {
        same(&r.unwrap(), &want[i], &format!("request {i}, three at a time"));
        order.push(i);
    });
    order.sort_unstable();
    assert_eq!(order, (0..requests.len()).collect::<Vec<_>>());
}

/// The image of a request built by [`Request::new`].
fn image_of<'a>(r: &Request<'a>) -> &'a Image {
    match r.image {
        minigpt_med::RequestImage::Image(i) => i,
        _ => unreachable!("these requests name images"),
    }
}

#[test]
fn batched_answers_equal_sequential_ones() {
    check_batch_equals_sequential(model());
}

#[test]
fn batched_answers_equal_sequential_ones_with_quantized_weights() {
    for dtype in [WeightDType::Q8_0, WeightDType::Q4_0] {
        let opts = LoadOptions { llm_dtype: dtype, ..LoadOptions::default() };
        check_batch_equals_sequential(&Model::load_dir(fixtures(), &opts).unwrap());
    }
}

#[test]
fn batched_answers_equal_sequential_ones_with_an_f16_kv_cache() {
    let opts = LoadOptions { kv_dtype: KvDType::F16, ..LoadOptions::default() };
    check_batch_equals_sequential(&Model::load_dir(fixtures(), &opts).unwrap());
}

#[test]
fn an_answer_ending_at_eos_leaves_the_batch_and_the_others_go_on() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let task = Task::Report(None);
    // Sampled seeds whose sequential answer ends at EOS (the random weights make it rare).
    let mut requests: Vec<Request> = Vec::new();
    let mut eos = 0;
    for seed in 0..400u64 {
        let opts = GenerateOptions {
            sampling: Sampling::Sample { temperature: 3.0, top_p: 1.0, top_k: 0, seed },
            ..GenerateOptions::greedy(40)
        };
        let a = m.generate(&image, &task, &opts).unwrap();
        if a.stop_reason == StopReason::Eos {
            eos += 1;
            requests.push(Request::new(&image, task.clone(), opts));
            requests.push(Request::new(&image, task.clone(), GenerateOptions::greedy(40)));
            if eos == 3 {
                break;
            }
        }
    }
    assert!(eos > 0, "no seed of 400 ended at EOS");
    let want: Vec<Answer> = requests.iter().map(|r| m.generate(&image, &r.task, &r.options).unwrap()).collect();
    for (got, want) in m.generate_batch(&requests).iter().zip(&want) {
        same(got.as_ref().unwrap(), want, "eos batch");
    }
}

#[test]
fn studies_and_images_mix_in_one_batch() {
    let m = model();
    let images = images();
    let studies: Vec<_> = images.iter().map(|i| m.study(i).unwrap()).collect();
    let mut requests = Vec::new();
    for (image, study) in images.iter().zip(&studies) {
        for task in six_tasks() {
            requests.push(Request::on_study(study.shared(), task.clone(), GenerateOptions::greedy(12)));
            requests.push(Request::new(image, task, GenerateOptions::greedy(7)));
        }
    }
    let got = m.generate_batch(&requests);
    for (k, (got, r)) in got.iter().zip(&requests).enumerate() {
        let image = &images[k / 12];
        let want = m.generate(image, &r.task, &r.options).unwrap();
        same(got.as_ref().unwrap(), &want, &format!("request {k}"));
        // The image's encode time is reported once, by the first request that paid for it.
        let encode = got.as_ref().unwrap().timings.encode_ms;
        assert_eq!(encode > 0.0, k % 12 == 1, "request {k}: encode_ms {encode}");
    }
}

#[test]
fn a_failing_request_fails_alone() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let tiny = Image::from_pixels(1, 1, minigpt_med::Pixels::Gray8(vec![0])).unwrap();
    let good = Task::Report(None);
    let bad_opts = GenerateOptions { max_new_tokens: 0, ..GenerateOptions::greedy(1) };
    let long_question = "is it normal? ".repeat(2000);
    let too_long = Task::new(TaskKind::Vqa, Some(&long_question), None).unwrap();
    let requests = vec![
        Request::new(&image, good.clone(), GenerateOptions::greedy(9)),
        Request::new(&image, good.clone(), bad_opts),
        Request::new(&tiny, good.clone(), GenerateOptions::greedy(9)),
        Request::new(&image, too_long, GenerateOptions::greedy(9)),
        Request::new(&image, Task::Grounding(None), GenerateOptions::greedy(9)),
    ];
    let got = m.generate_batch(&requests);
    let want = |r: &Request| m.generate(&image, &r.task, &r.options);
    same(got[0].as_ref().unwrap(), &want(&requests[0]).unwrap(), "first");
    same(got[4].as_ref().unwrap(), &want(&requests[4]).unwrap(), "last");
    for k in [1, 3] {
        let (e, w) = (got[k].as_ref().unwrap_err(), want(&requests[k]).unwrap_err());
        assert_eq!(e.to_string(), w.to_string(), "request {k} fails as generate fails");
    }
    // A 1x1 image is a valid input (resized like any other): answered, between failures.
    let tiny_alone = m.generate(&tiny, &good, &GenerateOptions::greedy(9)).unwrap();
    same(got[2].as_ref().unwrap(), &tiny_alone, "1x1 image");
}

#[test]
fn sequences_join_between_steps_stream_and_can_be_cancelled() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let (report, vqa) = (Task::Report(None), Task::new(TaskKind::Vqa, Some("Is it normal?"), None).unwrap());
    let opts = GenerateOptions::greedy(12);
    let want_report = m.generate(&image, &report, &opts).unwrap();
    let want_vqa = m.generate(&image, &vqa, &opts).unwrap();

    let streamed = Arc::new(Mutex::new(String::new()));
    let sink = streamed.clone();
    let mut batch = DecodeBatch::new(m);
    let a = batch.add(
        &Request::new(&image, report.clone(), opts.clone()),
        Box::new(move |t| {
            sink.lock().unwrap().push_str(t);
            true
        }),
    );
    let a = a.unwrap();
    let mut ended = Vec::new();
    for _ in 0..4 {
        ended.extend(batch.step());
    }
    // Joins four steps late, and one more that is cancelled after two steps.
    let b = batch.add(&Request::new(&image, vqa.clone(), opts.clone()), Box::new(|_| true)).unwrap();
    let c = batch.add(&Request::new(&image, vqa.clone(), opts.clone()), Box::new(|_| true)).unwrap();
    assert_eq!(batch.active(), 3);
    ended.extend(batch.step());
    ended.extend(batch.step());
    assert!(batch.cancel(c));
    assert!(!batch.cancel(c), "already ended");
    while !batch.is_empty() {
        ended.extend(batch.step());
    }
    let get = |id| ended.iter().find(|(i, _)| *i == id).unwrap().1.as_ref().unwrap();
    same(get(a), &want_report, "report");
    same(get(b), &want_vqa, "vqa joining late");
    assert_eq!(*streamed.lock().unwrap(), want_report.text, "the streamed pieces concatenate to the text");
    let cancelled = get(c);
    assert_eq!(cancelled.stop_reason, StopReason::Cancelled);
    assert_eq!(cancelled.token_ids[..], want_vqa.token_ids[..cancelled.token_ids.len()]);
    assert_eq!(cancelled.token_ids.len(), 3, "its first token at join, one per step");
    assert_eq!(ended.len(), 3);
}

#[test]
fn a_cancelled_batch_ends_its_running_sequences_and_starts_no_more() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    // The first ends after 2 tokens, the second would run 30; four more wait in the queue.
    let mut requests = vec![
        Request::new(&image, Task::Report(None), GenerateOptions::greedy(2)),
        Request::new(&image, Task::Grounding(None), GenerateOptions::greedy(30)),
    ];
    for _ in 0..4 {
        requests.push(Request::new(&image, Task::Report(None), GenerateOptions::greedy(30)));
    }
    let cancel = AtomicBool::new(false);
    let mut results: Vec<Option<minigpt_med::Result<Answer>>> = (0..requests.len()).map(|_| None).collect();
    m.generate_batch_each(&requests, 2, Some(&cancel), |i, r| {
        if i == 0 {
            // Set from "another thread" as the first answer ends.
            cancel.store(true, Ordering::Relaxed);
        }
        results[i] = Some(r);
    });
    let results: Vec<_> = results.into_iter().map(Option::unwrap).collect();
    assert_eq!(results[0].as_ref().unwrap().stop_reason, StopReason::MaxTokens);
    let second = results[1].as_ref().unwrap();
    assert_eq!(second.stop_reason, StopReason::Cancelled);
    assert!(second.token_ids.len() < 30);
    for r in &results[2..] {
        assert!(matches!(r, Err(minigpt_med::Error::Cancelled)), "{r:?}");
    }
}

/// A conversation resent as history (as an OpenAI client sends it back: the answers as text)
/// answers as a fresh greedy pass over the conversation's tokens, built here by hand: the first
/// question's single-turn prompt, each answer's text, each next question's
/// `</s><s>[INST] .. [/INST]`; on a study (its image prefix reused) and on the image alike.
#[test]
fn a_resent_conversation_answers_as_its_tokens_say() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let study = m.study(&image).unwrap();
    let emb = m.encode_image(&image).unwrap();
    let tok = m.tokenizer();
    let eos = tok.token_id("</s>").unwrap();
    let questions = ["[vqa] Is it normal?", "[refer] the nodule", "[vqa] which side?"];
    let n = 6;
    let opts = GenerateOptions::greedy(n);
    let first = tok.prompt(questions[0]).unwrap();
    let mut after = first.after_image.clone();
    let mut history: Vec<Exchange> = Vec::new();
    for (turn, q) in questions.iter().enumerate() {
        if turn > 0 {
            after.extend(tok.encode(&format!("</s><s>[INST] {q} [/INST]"), false).unwrap());
        }
        // Greedy by fresh forward passes, one token at a time.
        let mut want = Vec::new();
        let mut ids = after.clone();
        for _ in 0..n {
            let p = minigpt_med::Prompt {
                text: String::new(),
                before_image: first.before_image.clone(),
                after_image: ids.clone(),
            };
            let l = m.prompt_logits(&emb, &p).unwrap().to_vec1::<f32>().unwrap();
            let t = (0..l.len()).max_by(|&a, &b| l[a].total_cmp(&l[b]).then(b.cmp(&a))).unwrap() as u32;
            if t == eos {
                break;
            }
            want.push(t);
            ids.push(t);
        }
        let task = Task::Custom(q.to_string());
        let on_study = Request::on_study(study.shared(), task.clone(), opts.clone()).with_history(history.clone());
        let on_image = Request::new(&image, task, opts.clone()).with_history(history.clone());
        let got = m.generate_batch(&[on_study, on_image]);
        let (a, b) = (got[0].as_ref().unwrap(), got[1].as_ref().unwrap());
        assert_eq!(a.token_ids, want, "turn {turn} on the study");
        // The prompt held the tokens before the image, the image's, and the rest built here.
        let positions = first.before_image.len() + emb.embeds.dim(0).unwrap() + after.len();
        assert_eq!((a.prompt_tokens, b.prompt_tokens), (positions, positions), "turn {turn}: prompt positions");
        same(b, a, &format!("turn {turn} on the image"));
        if turn == 0 {
            same(a, &m.generate(&image, &Task::Custom(q.to_string()), &opts).unwrap(), "a first turn is a generate");
        }
        after.extend(tok.encode(&a.text, false).unwrap());
        history.push(Exchange { instruction: q.to_string(), answer: a.text.clone() });
    }
}

/// `ignore_eos` masks the end-of-sequence token: an answer that ended at EOS runs on to its
/// token limit, the same tokens up to where EOS was, alone and in a batch.
#[test]
fn ignore_eos_runs_an_answer_to_its_limit() {
    let m = model();
    let image = Image::open(fixtures().join("images/ct_nlst.png")).unwrap();
    let task = Task::Report(None);
    let ends = m.generate(&image, &task, &GenerateOptions::greedy(4000)).unwrap();
    assert_eq!(ends.stop_reason, StopReason::Eos, "the fixture's report ends at EOS");
    let n = ends.token_ids.len() + 40;
    let opts = GenerateOptions { ignore_eos: true, ..GenerateOptions::greedy(n) };
    let long = m.generate(&image, &task, &opts).unwrap();
    assert_eq!(long.stop_reason, StopReason::MaxTokens);
    assert_eq!(long.token_ids.len(), n);
    assert_eq!(long.token_ids[..ends.token_ids.len()], ends.token_ids[..]);
    assert!(!long.token_ids.contains(&m.tokenizer().token_id("</s>").unwrap()));
    let batched = m.generate_batch(&[
        Request::new(&image, task.clone(), opts.clone()),
        Request::new(&image, task, GenerateOptions::greedy(8)),
    ]);
    same(batched[0].as_ref().unwrap(), &long, "batched");
}
