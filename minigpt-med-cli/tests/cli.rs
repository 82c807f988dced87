//! The `minigpt-med` command end to end on the bundled tiny model.

use std::path::PathBuf;
use std::process::Command;

use minigpt_med::{Image, Pixels};

fn tiny() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/tiny")
}

fn golden() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(tiny().join("golden.json")).unwrap()).unwrap()
}

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_minigpt-med"))
}

fn golden_ids(prompt: &str) -> Vec<u64> {
    let g = golden();
    let p = g["prompts"].as_array().unwrap().iter().find(|p| p["name"] == prompt).unwrap().clone();
    p["generated_ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect()
}

#[test]
fn generate_json_matches_the_reference() {
    let out = bin()
        .args(["generate", "--model-dir"])
        .arg(tiny())
        .arg("--image")
        .arg(tiny().join("images/ct_nlst.png"))
        .args(["--task", "refer", "--prompt", "give me the location of tumor ", "--max-new-tokens", "20", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids, golden_ids("p1_refer"));
    let g = golden();
    let p1 = g["prompts"].as_array().unwrap().iter().find(|p| p["name"] == "p1_refer").unwrap();
    assert_eq!(v["text"], p1["answer"]);
    for k in ["load_ms", "encode_ms", "prefill_ms", "decode_ms", "tokens_per_s"] {
        assert!(v["timings"][k].as_f64().unwrap() >= 0.0, "{k}");
    }
    assert!(v["boxes"].is_array());
}

#[test]
fn identify_with_a_grid_box_and_verbatim_instruction_agree() {
    let run = |extra: &[&str]| {
        let out = bin()
            .args(["generate", "--model-dir"])
            .arg(tiny())
            .arg("--image")
            .arg(tiny().join("images/ct_nlst.png"))
            .args(["--max-new-tokens", "20", "--json"])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>()
    };
    let by_task = run(&["--task", "identify", "--grid-box", "12,34,56,78"]);
    let verbatim = run(&["--instruction", "[identify] what object is in this location {<12><34><56><78>}"]);
    assert_eq!(by_task, golden_ids("p3_identify"));
    assert_eq!(verbatim, by_task);
    // 512 px image: pixels 61.5,174.1,286.8,399.4 -> grid 12,34,56,78 (truncated like the training data).
    assert_eq!(run(&["--task", "identify", "--box", "61.5,174.1,286.8,399.4"]), by_task);
}

#[test]
fn preprocess_writes_what_the_model_sees() {
    let out_path = std::env::temp_dir().join(format!("mgm-pre-{}.png", std::process::id()));
    let st = bin()
        .arg("preprocess")
        .arg("--image")
        .arg(tiny().join("images/synthetic_gradient.png"))
        .arg("--out")
        .arg(&out_path)
        .status()
        .unwrap();
    assert!(st.success());
    let written = Image::open(&out_path).unwrap();
    assert_eq!((written.width(), written.height()), (448, 448));
    let golden =
        minigpt_med::candle::safetensors::load(tiny().join("golden.safetensors"), &minigpt_med::candle::Device::Cpu)
            .unwrap();
    let chw = golden["pixel_u8.synthetic_gradient"].flatten_all().unwrap().to_vec1::<u8>().unwrap();
    let want = minigpt_med::ModelView { size: 448, chw }.to_hwc();
    let Pixels::Rgb8(got) = written.pixels() else { panic!("expected RGB") };
    assert_eq!(got, &want);
}

#[test]
fn draw_writes_a_png_of_the_input_size() {
    let out_path = std::env::temp_dir().join(format!("mgm-draw-{}.png", std::process::id()));
    let out = bin()
        .args(["demo", "--task", "detection", "--prompt", "pneumonia", "--max-new-tokens", "3", "--draw"])
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("RANDOM weights"));
    let img = Image::open(&out_path).unwrap();
    assert_eq!((img.width(), img.height()), (512, 512));
}

#[test]
fn errors_exit_non_zero_with_the_reason() {
    let out = bin()
        .args(["generate", "--model-dir", "/nonexistent/model", "--image"])
        .arg(tiny().join("images/ct_nlst.png"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/model") && err.contains("config.json"), "{err}");

    let out =
        bin().args(["generate", "--model-dir"]).arg(tiny()).args(["--image", "/nonexistent/x.png"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/x.png"));

    let out = bin().args(["demo", "--task", "identify", "--box", "1,2,3"]).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("x1,y1,x2,y2"));

    // The core's rules, with the core's words: no silent truncation or ignored settings.
    for (args, want) in [
        (&["--task", "identify", "--grid-box", "1.5,2,3,4"][..], "not a whole number in 0..=100"),
        (&["--task", "vqa", "--prompt", "q", "--box", "1,2,3,4"][..], "only used by the identify task"),
        (&["--task", "vqa", "--prompt", "q", "--top-p", "0.5"][..], "apply to sampling"),
    ] {
        let out = bin()
            .args(["generate", "--model-dir"])
            .arg(tiny())
            .arg("--image")
            .arg(tiny().join("images/ct_nlst.png"))
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn preprocess_reads_dicom_with_windows() {
    let dcm = tiny().join("../dicom/CT_small.dcm");
    let run = |extra: &[&str], name: &str| {
        let out = std::env::temp_dir().join(format!("mgm-dcm-{name}-{}.png", std::process::id()));
        let o = bin().arg("preprocess").arg("--image").arg(&dcm).args(extra).arg("--out").arg(&out).output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        std::fs::read(out).unwrap()
    };
    let preset = run(&["--window-preset", "lung"], "preset");
    let explicit = run(&["--window", "-600,1500"], "explicit");
    let file_window = run(&[], "file");
    assert_eq!(preset, explicit, "the lung preset is C -600, W 1500");
    assert_ne!(preset, file_window, "the file's own window differs from the lung window");
    let bad = bin()
        .arg("preprocess")
        .arg("--image")
        .arg(&dcm)
        .args(["--frame", "3", "--out", "/tmp/x.png"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

#[test]
fn bench_smoke_test_on_the_tiny_model() {
    let out = bin()
        .args(["bench", "--repeats", "2", "--decode-tokens", "4", "--end-to-end", "--batch", "1,3", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["repeats"], 2);
    // One whole answer: 20 new tokens (the tiny model has no early EOS on this prompt), and the
    // fastest whole at least the sum of each stage's fastest (every repeat's stages sum to at
    // most its whole).
    let e = &v["end_to_end"];
    assert_eq!(e["new_tokens"], 20);
    let ms = |k: &str| e[k]["min"].as_f64().unwrap();
    assert!(ms("encode_ms") > 0.0 && ms("prefill_ms") > 0.0 && ms("decode_ms") > 0.0);
    let parts: f64 = ["image_ms", "encode_ms", "prefill_ms", "decode_ms"].iter().map(|k| ms(k)).sum();
    assert!(ms("total_ms") >= parts * 0.999, "{e}");
    // The machine's read bandwidth is stated beside decode's.
    assert!(v["memory_read_gbps"].as_f64().unwrap() > 0.1);
    // And the encode's rate beside the f32 FMA peak measured in the same run, which no real
    // encode exceeds.
    let encode = v["encode_gflops"].as_f64().unwrap();
    assert!(encode > 0.0, "{v}");
    if let Some(peak) = v["fma_peak_gflops"]["avx2"].as_f64() {
        assert!(peak > encode, "{v}");
    }
    // The fastest encode's split by section: every section ran, and they fit inside it.
    let split = &v["encode_split"];
    let parts: Vec<f64> =
        ["gemm_ms", "attention_ms", "other_ms", "connector_ms"].iter().map(|k| split[k].as_f64().unwrap()).collect();
    assert!(parts.iter().all(|&ms| ms > 0.0), "{split}");
    assert!(parts.iter().sum::<f64>() <= v["encode_ms"]["min"].as_f64().unwrap(), "{v}");
    assert!(split["gemm_gflops"].as_f64().unwrap() > 0.0 && split["attention_gflops"].as_f64().unwrap() > 0.0);
    for k in ["prefill_tokens_per_s", "decode_tokens_per_s"] {
        assert!(v[k]["best"].as_f64().unwrap() >= v[k]["median"].as_f64().unwrap(), "{k}");
    }
    assert!(v["encode_ms"]["min"].as_f64().unwrap() > 0.0);
    assert!(v["peak_rss_bytes"].as_u64().unwrap() > 0);
    // 8 + 256 + 34 positions: the tokenized prompt around the image.
    assert!(v["prompt_tokens"].as_u64().unwrap() > 256);
    // Batched decode: `--repeats` runs per batch size, each between two prefills (one prefill
    // between consecutive runs serves both), each run's rate set beside their mean.
    let batch = v["batch"].as_array().unwrap();
    assert_eq!(batch.iter().map(|b| b["batch_size"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
    for b in batch {
        let runs = b["runs"].as_array().unwrap();
        assert_eq!(runs.len(), 2, "{b}");
        let size = b["batch_size"].as_u64().unwrap();
        let f = |r: &serde_json::Value, k: &str| r[k].as_f64().unwrap();
        for r in runs {
            assert_eq!(r["sequences"].as_u64(), Some(size), "{r}");
            // Each sequence's first token comes from its prompt; at most 3 more are decoded.
            let tokens = r["tokens"].as_u64().unwrap();
            assert!(tokens > 0 && tokens <= 3 * size, "{r}");
            let beside = (f(r, "prefill_before_tokens_per_s") + f(r, "prefill_after_tokens_per_s")) / 2.0;
            assert!(beside > 0.0 && (f(r, "vs_prefill") - f(r, "tokens_per_s") / beside).abs() < 1e-9, "{r}");
        }
        assert_eq!(f(&runs[0], "prefill_after_tokens_per_s"), f(&runs[1], "prefill_before_tokens_per_s"));
        let rates: Vec<f64> = runs.iter().map(|r| f(r, "tokens_per_s")).collect();
        assert_eq!(f(b, "tokens_per_s"), rates[0].max(rates[1]), "{b}");
        let ratio = &b["vs_prefill"];
        assert!(f(ratio, "min") <= f(ratio, "median") && f(ratio, "median") <= f(ratio, "max"), "{b}");
    }
    let bad = bin().args(["bench", "--synthetic", "13b"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(1));
}

/// `convert` once, `inspect` the file, and `generate --model FILE` answers the reference's
/// tokens (f32: exact), as `--model-dir` does.
#[test]
fn convert_inspect_and_generate_from_the_model_file() {
    let dir = std::env::temp_dir().join(format!("mgm-cli-convert-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("tiny.gguf");
    let out = bin()
        .args(["convert", "--model-dir"])
        .arg(tiny())
        .args(["--llm-dtype", "f32", "--vit-dtype", "f32", "--json", "--out"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let summary: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(summary["bytes"].as_u64(), Some(std::fs::metadata(&file).unwrap().len()));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.lines().any(|l| l.starts_with("converting 100% (")), "progress is shown: {log:?}");
    assert!(!log.contains('\r'), "a log gets whole lines: {log:?}");

    let out = bin().args(["inspect", "--json"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["metadata"]["general.architecture"], "\"llama\"");
    assert_eq!(v["metadata"]["minigpt_med.llm_dtype"], "\"f32\"");
    let names: Vec<&str> = v["tensors"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    for want in ["token_embd.weight", "blk.1.ffn_down.weight", "output.weight", "v.pos_embed", "mm.llama_proj.weight"] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    let out = bin()
        .args(["generate", "--model"])
        .arg(&file)
        .arg("--image")
        .arg(tiny().join("images/ct_nlst.png"))
        .args(["--task", "refer", "--prompt", "give me the location of tumor ", "--max-new-tokens", "20", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ids: Vec<u64> = v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids, golden_ids("p1_refer"));
    // The file is not an input of a later conversion's output.
    let out = bin()
        .args(["convert", "--model-dir"])
        .arg(tiny())
        .arg("--out")
        .arg(tiny().join("minigpt_med.pth"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn batch_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// `batch` over a manifest: answers equal the reference's (and `generate`'s), failing records
/// get their error and the run goes on, and a rerun after a crash (a cut last line) finishes
/// the rest without duplicating anything.
#[test]
fn batch_answers_a_manifest_and_resumes_without_duplicates() {
    let dir = std::env::temp_dir().join(format!("mgm-cli-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let images = tiny().join("images");
    let manifest = dir.join("manifest.jsonl");
    let records = [
        serde_json::json!({"id": "a", "image": images.join("ct_nlst.png"), "task": "refer", "prompt": "give me the location of tumor "}),
        serde_json::json!({"id": "b", "image": images.join("ct_nlst.png"), "task": "identify", "grid_region": [12, 34, 56, 78]}),
        serde_json::json!({"id": "c", "image": dir.join("missing.png")}),
        serde_json::json!({"id": "d", "image": images.join("ct_nlst.png"), "task": "vqa"}),
        serde_json::json!({"image": images.join("synthetic_gradient.png")}),
    ];
    let text: String = records.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(&manifest, text).unwrap();
    let out = dir.join("results.jsonl");
    // Records decoding together (three at a time, then two, then one): the same answers.
    let run = |batch_size: &str| {
        let o = bin()
            .args(["batch", "--model-dir"])
            .arg(tiny())
            .arg("--manifest")
            .arg(&manifest)
            .arg("--out")
            .arg(&out)
            .args(["--max-new-tokens", "20", "--batch-size", batch_size])
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let log = run("3");
    // stderr is a pipe here, as in a cluster job's log: whole lines, one per record at five
    // records (each enters a new tenth), no carriage returns piling them into one line.
    assert!(!log.contains('\r'), "progress: {log:?}");
    let shown: Vec<&str> = log.lines().filter(|l| l.starts_with("batch ")).collect();
    assert_eq!(shown.len(), 5, "progress: {log}");
    assert!(shown[0].starts_with("batch  20% (1/5), ") && shown[4].starts_with("batch 100% (5/5), "), "{log}");
    assert!(shown.iter().all(|l| l.contains(" records/s, ETA ")), "{log}");
    let lines = batch_lines(&out);
    let by_id = |lines: &[serde_json::Value], id: &str| lines.iter().find(|l| l["id"] == id).cloned().unwrap();
    let ids = |v: &serde_json::Value| -> Vec<u64> {
        v["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect()
    };
    assert_eq!(ids(&by_id(&lines, "a")), golden_ids("p1_refer"));
    assert_eq!(ids(&by_id(&lines, "b")), golden_ids("p3_identify"));
    let gradient_id = images.join("synthetic_gradient.png").display().to_string();
    assert_eq!(ids(&by_id(&lines, &gradient_id)), golden_ids("p4_report"));
    assert_eq!(by_id(&lines, &gradient_id)["stop_reason"], "max_tokens");
    assert!(by_id(&lines, "c")["error"].as_str().unwrap().contains("missing.png"));
    assert!(by_id(&lines, "d")["error"].as_str().unwrap().contains("needs a question"));
    assert!(by_id(&lines, "a")["error"].is_null());

    // A crash after two records, in the middle of the third line.
    let all = std::fs::read_to_string(&out).unwrap();
    let cut: Vec<&str> = all.lines().collect();
    std::fs::write(&out, format!("{}\n{}\n{}", cut[0], cut[1], &cut[2][..cut[2].len() / 2])).unwrap();
    let log = run("2");
    assert!(log.contains("2 already in"), "{log}");
    let again = batch_lines(&out);
    let mut seen: Vec<String> = again.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    seen.sort();
    let mut want: Vec<String> = lines.iter().map(|l| l["id"].as_str().unwrap().to_owned()).collect();
    want.sort();
    assert_eq!(seen, want, "every id exactly once");
    for l in &lines {
        assert_eq!(by_id(&again, l["id"].as_str().unwrap())["token_ids"], l["token_ids"]);
    }
    // Nothing left: a third run changes nothing.
    run("1");
    assert_eq!(batch_lines(&out).len(), 5);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `batch --dir`: every image file under a folder (a corrupt one gets its error line).
#[test]
fn batch_over_a_folder() {
    let dir = std::env::temp_dir().join(format!("mgm-cli-batch-dir-{}", std::process::id()));
    let images = dir.join("in/sub");
    std::fs::create_dir_all(&images).unwrap();
    std::fs::copy(tiny().join("images/ct_nlst.png"), images.join("ct.png")).unwrap();
    std::fs::write(dir.join("in/broken.png"), b"\x89PNG not really").unwrap();
    std::fs::write(dir.join("in/notes.txt"), b"not an image").unwrap();
    let out = dir.join("results.jsonl");
    let o = bin()
        .args(["batch", "--model-dir"])
        .arg(tiny())
        .arg("--dir")
        .arg(dir.join("in"))
        .args(["--task", "refer", "--prompt", "give me the location of tumor ", "--max-new-tokens", "20", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines = batch_lines(&out);
    assert_eq!(lines.len(), 2, "{lines:?}");
    let ct = lines.iter().find(|l| l["image"].as_str().unwrap().ends_with("ct.png")).unwrap();
    let ids: Vec<u64> = ct["token_ids"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect();
    assert_eq!(ids, golden_ids("p1_refer"));
    let broken = lines.iter().find(|l| l["image"].as_str().unwrap().ends_with("broken.png")).unwrap();
    assert!(broken["error"].is_string());
    std::fs::remove_dir_all(&dir).unwrap();
}
