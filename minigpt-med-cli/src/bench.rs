//! `minigpt-med bench`: load time, image encode, prefill and decode speed, peak memory.

use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use minigpt_med::{
    Device, GenerateOptions, Image, KvDType, LlamaConfig, LoadOptions, MiniGptMedConfig, Model, WeightDType,
};
use serde_json::json;

use crate::progress::Progress;

#[derive(Args)]
pub struct BenchArgs {
    /// Random weights of the real MiniGPT-Med shapes built in memory (`7b`), instead of files.
    #[arg(long, value_name = "SIZE")]
    synthetic: Option<String>,
    /// A model directory laid out like the tiny model (real weights), instead of --synthetic.
    #[arg(long, conflicts_with = "synthetic")]
    model_dir: Option<PathBuf>,
    /// A converted model file (`minigpt-med convert`): its load is what is timed.
    #[arg(long, value_name = "FILE.gguf", conflicts_with_all = ["synthetic", "model_dir"])]
    model: Option<PathBuf>,
    /// With --synthetic: write the random weights to this model file first, then benchmark
    /// opening it (the load row of docs/perf.md).
    #[arg(long, value_name = "FILE.gguf", requires = "synthetic")]
    write_model: Option<PathBuf>,
    /// LLM weights: f32, f16, bf16, q8_0, q4_0, q4k (default: q4k for --synthetic, else f32).
    #[arg(long)]
    llm_dtype: Option<WeightDType>,
    /// ViT weights: f32 or f16.
    #[arg(long, default_value = "f32")]
    vit_dtype: WeightDType,
    /// KV cache: f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_dtype: KvDType,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// The image to encode (default: the bundled CT slice).
    #[arg(long)]
    image: Option<PathBuf>,
    /// Timed repeats (min and median are reported).
    #[arg(long, default_value_t = 3)]
    repeats: usize,
    /// Tokens decoded per repeat.
    #[arg(long, default_value_t = 64)]
    decode_tokens: usize,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Time the load only (and the resident memory after it); no image, prefill or decode.
    #[arg(long)]
    load_only: bool,
    /// Time only the matrix kernels (ours beside candle's): quantized at LLaMA-2-7B shapes for
    /// decode (1 row) and prefill (298 rows), and f32 at the ViT-g's shapes for one image
    /// (1025 rows); no model is loaded.
    #[arg(long, conflicts_with_all = ["synthetic", "model_dir"])]
    kernels: bool,
    /// Also time six tasks on one study against six independent answers (decode excluded).
    #[arg(long)]
    study: bool,
    /// Also time batched decode at these batch sizes (e.g. `1,2,4,8`): aggregate tokens/s of
    /// B sequences sharing each decode step, `--repeats` runs each, every run between two
    /// prefills whose rate it is compared with.
    #[arg(long, value_name = "B,B,...", value_delimiter = ',')]
    batch: Vec<usize>,
    /// Also time one whole answer as a user sees it: the image file's bytes to 20 new tokens
    /// (a VQA question), split by stage (image decoding, ViT encode, prefill, decode steps).
    #[arg(long)]
    end_to_end: bool,
}

/// Peak resident memory of this process in bytes (Linux `VmHWM`), if known.
fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// (best, median) of the repeats; best is the smallest time or the highest rate.
fn best_median(mut v: Vec<f64>, higher_is_better: bool) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    if higher_is_better {
        v.reverse();
    }
    (v[0], v[v.len() / 2])
}

pub fn bench(a: BenchArgs) -> Result<(), minigpt_med::Error> {
    let bad = |m: String| minigpt_med::Error::InvalidOption(m);
    if a.repeats == 0 || a.decode_tokens == 0 {
        return Err(bad("--repeats and --decode-tokens must be at least 1".into()));
    }
    if a.kernels {
        return bench_kernels(&a);
    }
    let tiny = crate::demo::unpack()?;
    let opts = |default: WeightDType| LoadOptions {
        device: a.device,
        llm_dtype: a.llm_dtype.unwrap_or(default),
        vit_dtype: a.vit_dtype,
        kv_dtype: a.kv_dtype,
        progress: None,
    };
    let (model, what) = match (&a.synthetic, &a.model_dir) {
        _ if a.model.is_some() => {
            let file = a.model.as_ref().expect("checked");
            let o = opts(WeightDType::F32);
            let what = format!("{} (model file)", file.display());
            (Model::open(file, &o)?, what)
        }
        (Some(size), _) => {
            if size != "7b" {
                return Err(bad(format!("--synthetic {size}: only 7b is known")));
            }
            let o = opts(WeightDType::Q4K);
            let what = format!("synthetic MiniGPT-Med 7B (random weights), llm {}, vit {}", o.llm_dtype, o.vit_dtype);
            let cfg = MiniGptMedConfig::default();
            let tokenizer = tiny.path().join("llama-2-7b-chat-hf");
            match &a.write_model {
                Some(file) => {
                    let c = minigpt_med::ConvertOptions {
                        llm_dtype: o.llm_dtype,
                        vit_dtype: o.vit_dtype,
                        progress: Some(Progress::stderr("writing").callback()),
                    };
                    let s = minigpt_med::convert_synthetic(&cfg, &LlamaConfig::llama2_7b(), &tokenizer, &c, file)?;
                    eprintln!("wrote {} ({:.2} GB) in {:.1} s", file.display(), s.bytes as f64 / 1e9, s.seconds);
                    (Model::open(file, &o)?, format!("{what}, from the model file {}", file.display()))
                }
                None => (Model::synthetic(cfg, LlamaConfig::llama2_7b(), &tokenizer, &o)?, what),
            }
        }
        (None, Some(dir)) => {
            let o = opts(WeightDType::F32);
            let what = format!("{}, llm {}, vit {}", dir.display(), o.llm_dtype, o.vit_dtype);
            (Model::load_dir(dir, &o)?, what)
        }
        (None, None) => {
            let o = opts(WeightDType::F32);
            let what = format!("bundled tiny model (random weights), llm {}, vit {}", o.llm_dtype, o.vit_dtype);
            (Model::load_dir(tiny.path(), &o)?, what)
        }
    };
    let load_ms = model.info().load_ms;
    // A 7B run takes minutes: say where it stands.
    eprintln!("loaded in {:.1} s; timing {} repeats", load_ms / 1e3, a.repeats);
    let rss_after_load = peak_rss();
    if a.load_only {
        let file_bytes =
            a.model.as_ref().or(a.write_model.as_ref()).and_then(|f| std::fs::metadata(f).ok()).map(|m| m.len());
        let v = json!({
            "model": what, "threads": minigpt_med::threads(), "load_ms": load_ms,
            "rss_after_load_bytes": rss_after_load, "file_bytes": file_bytes,
            "llm_weight_bytes": model.info().llm_weight_bytes,
        });
        if a.json {
            println!("{v}");
        } else {
            println!(
                "{what}: loaded in {:.2} s, resident {:.2} GB",
                load_ms / 1e3,
                rss_after_load.unwrap_or(0) as f64 / 1e9
            );
        }
        return Ok(());
    }
    let image = match &a.image {
        Some(p) => Image::open(p)?,
        None => Image::from_bytes(crate::demo::CT_IMAGE)?,
    };
    let instruction = "[vqa] Which region of the lung is affected and how large is the lesion?";
    let opts = GenerateOptions::greedy(a.decode_tokens);
    let (mut encode, mut prefill, mut decode) = (Vec::new(), Vec::new(), Vec::new());
    let mut prompt_len = 0;
    let mut embeddings = None;
    // The fastest repeat's split of the encode by section (the laps cost nanoseconds).
    let mut split = (f64::INFINITY, minigpt_med::EncodeSplit::default());
    for _ in 0..a.repeats {
        let t = Instant::now();
        let (emb, parts) = model.encode_split(&image)?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        encode.push(ms);
        if ms < split.0 {
            split = (ms, parts);
        }
        let prompt = model.prompt(instruction)?;
        prompt_len =
            prompt.before_image.len() + emb.embeds.dim(0).map_err(minigpt_med::Error::from)? + prompt.after_image.len();
        let answer = model.generate_from_embeddings(&emb, instruction, &opts, &mut |_| true)?;
        prefill.push(prompt_len as f64 / (answer.timings.prefill_ms / 1e3));
        // The first token comes from the prefill; the decode loop produced the rest.
        let steps = answer.token_ids.len().saturating_sub(1).max(1);
        decode.push(steps as f64 / (answer.timings.decode_ms / 1e3));
        embeddings = Some(emb);
    }
    let study = if a.study { Some(bench_study(&model, &image, a.repeats)?) } else { None };
    let end_to_end = if a.end_to_end { Some(bench_end_to_end(&model, &a)?) } else { None };
    let mut batch = Vec::new();
    if let Some(emb) = &embeddings {
        for &b in &a.batch {
            batch.push(bench_batch(&model, &image, (emb, instruction), b, a.decode_tokens, a.repeats)?);
        }
    }
    let (enc_min, enc_med) = best_median(encode, false);
    let (pre_best, pre_med) = best_median(prefill, true);
    let (dec_best, dec_med) = best_median(decode, true);
    let peak = peak_rss();
    let weights = model.info().llm_weight_bytes;
    // Decode's ceiling, measured in the same run: the weights a step reads at the machine's
    // read bandwidth.
    let bandwidth = read_bandwidth(minigpt_med::threads());
    let step_gb = model.info().llm_step_bytes as f64 / 1e9;
    let (decode_gbps, bound) = (dec_best * step_gb, bandwidth / step_gb);
    // The encode's ceiling, also measured here: the f32 FMA peak of the same threads.
    let fma = minigpt_med::cpu::fma_peak(minigpt_med::threads(), 200);
    let vision = &model.info().config.vision;
    let rate = |flops: f64, ms: f64| if ms > 0.0 { flops / (ms / 1e3) / 1e9 } else { 0.0 };
    let encode_gflops = rate(vision.encode_flops(), enc_min);
    let split = split.1;
    let (gemm_gflops, attention_gflops) =
        (rate(vision.encode_gemm_flops(), split.gemm_ms), rate(vision.encode_attention_flops(), split.attention_ms));
    if a.json {
        println!(
            "{}",
            json!({
                "model": what,
                "kv_dtype": model.info().kv_dtype.to_string(),
                "threads": minigpt_med::threads(),
                "jpeg_decoder": minigpt_med::image::jpeg_decoder(),
                "repeats": a.repeats,
                "load_ms": load_ms,
                "encode_ms": {"min": enc_min, "median": enc_med},
                "prompt_tokens": prompt_len,
                "prefill_tokens_per_s": {"best": pre_best, "median": pre_med},
                "decode_tokens": a.decode_tokens,
                "decode_tokens_per_s": {"best": dec_best, "median": dec_med},
                "memory_read_gbps": bandwidth,
                "encode_gflops": encode_gflops,
                "encode_split": {
                    "gemm_ms": split.gemm_ms, "gemm_gflops": gemm_gflops,
                    "attention_ms": split.attention_ms, "attention_gflops": attention_gflops,
                    "other_ms": split.other_ms, "connector_ms": split.connector_ms,
                },
                "fma_peak_gflops": fma_json(fma),
                "decode_read_gbps": decode_gbps,
                "decode_bound_tokens_per_s": bound,
                "llm_weight_bytes": weights,
                "llm_step_bytes": model.info().llm_step_bytes,
                "peak_rss_bytes": peak,
                "peak_rss_after_load_bytes": rss_after_load,
                "study": study,
                "batch": batch,
                "end_to_end": end_to_end,
            })
        );
    } else {
        let gib =
            |b: Option<u64>| b.map(|b| format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64)).unwrap_or("?".into());
        println!("model            {what}");
        println!("threads          {}", minigpt_med::threads());
        println!("load             {load_ms:.0} ms");
        println!(
            "image encode     min {enc_min:.0} ms, median {enc_med:.0} ms ({encode_gflops:.0} GFLOP/s{})",
            of_peak(encode_gflops, fma)
        );
        println!(
            "  split          GEMMs {:.0} ms ({gemm_gflops:.0} GFLOP/s), attention {:.0} ms ({attention_gflops:.0} GFLOP/s), rest of the ViT {:.0} ms, connector {:.0} ms",
            split.gemm_ms, split.attention_ms, split.other_ms, split.connector_ms
        );
        println!("prefill          best {pre_best:.2} tok/s, median {pre_med:.2} tok/s ({prompt_len} tokens)");
        println!("decode           best {dec_best:.2} tok/s, median {dec_med:.2} tok/s ({} tokens)", a.decode_tokens);
        println!(
            "memory           reads {bandwidth:.1} GB/s; decode reads {decode_gbps:.1} GB/s ({:.0} % of the bound of {bound:.2} tok/s)",
            100.0 * dec_best / bound
        );
        println!("LLM weights      {}", gib(Some(weights as u64)));
        println!("peak RSS         {} (after load {})", gib(peak), gib(rss_after_load));
        if let Some(s) = &study {
            println!(
                "study            six tasks {:.0} ms against six independent answers {:.0} ms ({:.2}x less; decode excluded)",
                s["study_ms"].as_f64().unwrap_or(0.0),
                s["independent_ms"].as_f64().unwrap_or(0.0),
                s["ratio"].as_f64().unwrap_or(0.0)
            );
        }
        if let Some(e) = &end_to_end {
            let ms = |k: &str| e[k]["median"].as_f64().unwrap_or(0.0);
            println!(
                "one answer       median {:.0} ms: image {:.0}, encode {:.0}, prefill {:.0}, decode {:.0} ms ({} tokens)",
                ms("total_ms"),
                ms("image_ms"),
                ms("encode_ms"),
                ms("prefill_ms"),
                ms("decode_ms"),
                e["new_tokens"]
            );
        }
        for b in &batch {
            println!(
                "batch decode     B = {}: best {:.2} tok/s aggregate, median {:.2}; {:.2}x the prefill beside it (min {:.2}x)",
                b["batch_size"],
                b["tokens_per_s"].as_f64().unwrap_or(0.0),
                b["tokens_per_s_median"].as_f64().unwrap_or(0.0),
                b["vs_prefill"]["median"].as_f64().unwrap_or(0.0),
                b["vs_prefill"]["min"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}

/// [`minigpt_med::cpu::FmaPeak`] as JSON: `{"avx2": GFLOP/s, "avx512": GFLOP/s or null}`, or
/// null on a CPU without FMA.
fn fma_json(p: Option<minigpt_med::cpu::FmaPeak>) -> serde_json::Value {
    p.map_or(serde_json::Value::Null, |p| json!({"avx2": p.avx2_gflops, "avx512": p.avx512_gflops}))
}

/// `", N % of the f32 FMA peak of P GFLOP/s"` for a rate, or nothing without a measured peak.
fn of_peak(gflops: f64, p: Option<minigpt_med::cpu::FmaPeak>) -> String {
    p.map_or(String::new(), |p| {
        format!(", {:.0} % of the f32 FMA peak of {:.0}", 100.0 * gflops / p.best_gflops(), p.best_gflops())
    })
}

/// The machine's memory read bandwidth in GB/s, the ceiling of decode (which reads every
/// weight once per token): `threads` threads each sum their contiguous share of a 1 GiB
/// buffer, best of five passes. One stream per thread reads fastest here (measured: 2 threads
/// 32.5 GB/s with one stream each, 24-29 GB/s with two to eight interleaved streams each), as
/// the hardware prefetcher follows one stream best.
fn read_bandwidth(threads: usize) -> f64 {
    let buf = vec![1u64; 1 << 27];
    let per = buf.len().div_ceil(threads.max(1));
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let t = Instant::now();
        let total = std::thread::scope(|s| {
            let parts: Vec<_> = buf
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        // Eight independent sums: the adds keep up with the loads.
                        let mut acc = [0u64; 8];
                        for line in part.chunks_exact(8) {
                            for (a, &v) in acc.iter_mut().zip(line) {
                                *a = a.wrapping_add(v);
                            }
                        }
                        acc.iter().fold(0u64, |s, &v| s.wrapping_add(v))
                    })
                })
                .collect();
            parts.into_iter().map(|h| h.join().unwrap_or(0)).fold(0u64, u64::wrapping_add)
        });
        std::hint::black_box(total);
        best = best.min(t.elapsed().as_secs_f64());
    }
    (buf.len() * 8) as f64 / 1e9 / best
}

/// `bench --end-to-end`: one answer from the image file's bytes (decoded as a user's file
/// would be) to 20 greedy tokens of a VQA answer, `repeats` times; min and median of the whole
/// and of each stage.
fn bench_end_to_end(model: &Model, a: &BenchArgs) -> Result<serde_json::Value, minigpt_med::Error> {
    use minigpt_med::{Task, TaskKind};
    let bytes = match &a.image {
        Some(p) => std::fs::read(p).map_err(|e| {
            minigpt_med::Error::InvalidOption(format!("--image {}: {e}; give a readable image file", p.display()))
        })?,
        None => crate::demo::CT_IMAGE.to_vec(),
    };
    let task =
        Task::new(TaskKind::Vqa, Some("Which region of the lung is affected and how large is the lesion?"), None)?;
    let opts = GenerateOptions::greedy(20);
    let mut stages: [Vec<f64>; 5] = Default::default();
    let mut new_tokens = 0;
    for _ in 0..a.repeats {
        let t = Instant::now();
        let image = Image::from_bytes(&bytes)?;
        let image_ms = t.elapsed().as_secs_f64() * 1e3;
        let answer = model.generate(&image, &task, &opts)?;
        let total = t.elapsed().as_secs_f64() * 1e3;
        new_tokens = answer.token_ids.len();
        let tm = &answer.timings;
        for (v, x) in stages.iter_mut().zip([total, image_ms, tm.encode_ms, tm.prefill_ms, tm.decode_ms]) {
            v.push(x);
        }
    }
    let names = ["total_ms", "image_ms", "encode_ms", "prefill_ms", "decode_ms"];
    let mut out = serde_json::Map::new();
    for (name, v) in names.iter().zip(stages) {
        let (min, median) = best_median(v, false);
        out.insert(name.to_string(), json!({"min": min, "median": median}));
    }
    out.insert("new_tokens".into(), json!(new_tokens));
    Ok(serde_json::Value::Object(out))
}

/// The six tasks of the study row, one per MiniGPT-Med task.
fn six_tasks() -> Vec<minigpt_med::Task> {
    use minigpt_med::{Region, Task, TaskKind};
    let t = |kind, prompt: &str| Task::new(kind, Some(prompt), None).expect("a valid bench task");
    vec![
        Task::Report(None),
        t(TaskKind::Vqa, "Which region of the lung is affected and how large is the lesion?"),
        t(TaskKind::Detection, "tumor"),
        t(TaskKind::Refer, "the nodule in the left lung"),
        Task::new(TaskKind::Identify, None, Some(Region::Grid([20, 30, 45, 60]))).expect("a valid bench task"),
        Task::Grounding(None),
    ]
}

/// `bench --study`: six tasks as six independent answers (encode + prompt each) against one
/// study (encode + shared prefix once, then each question's own tokens); one new token each, so
/// decode is excluded. Best of `repeats`.
fn bench_study(model: &Model, image: &Image, repeats: usize) -> Result<serde_json::Value, minigpt_med::Error> {
    let opts = GenerateOptions::greedy(1);
    let (mut independent, mut studied) = (Vec::new(), Vec::new());
    for r in 0..repeats {
        eprintln!("study repeat {}/{repeats}", r + 1);
        let t = Instant::now();
        for task in six_tasks() {
            model.generate(image, &task, &opts)?;
        }
        independent.push(t.elapsed().as_secs_f64() * 1e3);
        let t = Instant::now();
        let study = model.study(image)?;
        for task in six_tasks() {
            study.ask(&task, &opts)?;
        }
        studied.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let (ind, _) = best_median(independent, false);
    let (stu, _) = best_median(studied, false);
    Ok(json!({"tasks": 6, "independent_ms": ind, "study_ms": stu, "ratio": ind / stu}))
}

/// `bench --batch B`: B sequences (the six tasks in turn, on one study) decoding together for
/// `tokens` tokens each, `repeats` times; the aggregate decode rate over the steps (prompts
/// excluded). Each run sits between two prefills of `instruction` on `emb` (one prefill
/// between consecutive runs serves both), so its ratio to the prefill rate (issue 15's 0.8x)
/// compares numbers measured seconds apart: this VM's speed drifts by more than that ratio's
/// margin between minutes.
fn bench_batch(
    model: &Model,
    image: &Image,
    (emb, instruction): (&minigpt_med::ImageEmbeddings, &str),
    b: usize,
    tokens: usize,
    repeats: usize,
) -> Result<serde_json::Value, minigpt_med::Error> {
    if b == 0 {
        return Err(minigpt_med::Error::InvalidOption("--batch: batch sizes must be at least 1".into()));
    }
    eprintln!("batch decode B = {b}");
    let study = model.study(image)?;
    let tasks = six_tasks();
    let prefill = || -> Result<f64, minigpt_med::Error> {
        let answer = model.generate_from_embeddings(emb, instruction, &GenerateOptions::greedy(1), &mut |_| true)?;
        Ok(answer.prompt_tokens as f64 / (answer.timings.prefill_ms / 1e3))
    };
    let mut before = prefill()?;
    let (mut runs, mut rates, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        let mut batch = minigpt_med::DecodeBatch::new(model);
        for i in 0..b {
            let r =
                minigpt_med::Request::on_study(study.shared(), tasks[i % 6].clone(), GenerateOptions::greedy(tokens));
            batch.add(&r, Box::new(|_| true))?;
        }
        let t = Instant::now();
        let start = batch.tokens_fed();
        let mut ended = 0;
        while !batch.is_empty() {
            for (_, answer) in batch.step() {
                answer?;
                ended += 1;
            }
        }
        let ms = t.elapsed().as_secs_f64() * 1e3;
        let fed = batch.tokens_fed() - start;
        let after = prefill()?;
        let rate = fed as f64 / (ms / 1e3);
        let beside = (before + after) / 2.0;
        runs.push(json!({
            "sequences": ended, "tokens": fed, "decode_ms": ms, "tokens_per_s": rate,
            "prefill_before_tokens_per_s": before, "prefill_after_tokens_per_s": after,
            "vs_prefill": rate / beside,
        }));
        rates.push(rate);
        ratios.push(rate / beside);
        before = after;
    }
    let (best, median) = best_median(rates, true);
    let (ratio_max, ratio_median) = best_median(ratios.clone(), true);
    let ratio_min = ratios.iter().copied().fold(f64::INFINITY, f64::min);
    Ok(json!({
        "batch_size": b, "tokens_per_s": best, "tokens_per_s_median": median,
        "vs_prefill": {"min": ratio_min, "median": ratio_median, "max": ratio_max},
        "runs": runs,
    }))
}

/// One row of `bench --kernels`: a `(matrix, rows, cols, m)` product in `format`, our time and
/// candle's (seconds), and the bytes our weights take.
fn kernel_row(
    (name, rows, cols, m): (&str, usize, usize, usize),
    format: &str,
    t_ours: f64,
    t_theirs: f64,
    bytes: usize,
) -> serde_json::Value {
    let gflop = 2.0 * (m * rows * cols) as f64 / 1e9;
    json!({
        "matrix": name, "rows": rows, "cols": cols, "format": format, "m": m,
        "ours_ms": t_ours * 1e3, "candle_ms": t_theirs * 1e3,
        "ours_gflops": gflop / t_ours, "candle_gflops": gflop / t_theirs,
        "ours_weight_gbps": bytes as f64 / 1e9 / t_ours,
    })
}

/// `bench --kernels`: `x W^T` per format and shape, ours and candle's, best of the repeats.
fn bench_kernels(a: &BenchArgs) -> Result<(), minigpt_med::Error> {
    use minigpt_med::candle::quantized::{GgmlDType, QMatMul, QTensor};
    use minigpt_med::candle::DType;
    use minigpt_med::candle::{Device as CDevice, Module, Tensor};
    use minigpt_med::gemm::{self, Epilogue, PackedB, Precision};
    use minigpt_med::quant::{QuantFormat, QuantMatrix};

    let shapes = [("q_proj/o_proj", 4096, 4096), ("gate/up_proj", 11008, 4096), ("down_proj", 4096, 11008)];
    let formats = [
        (QuantFormat::Q8_0, GgmlDType::Q8_0),
        (QuantFormat::Q4_0, GgmlDType::Q4_0),
        (QuantFormat::Q4K, GgmlDType::Q4K),
    ];
    let time = |f: &mut dyn FnMut() -> Result<(), minigpt_med::Error>| -> Result<f64, minigpt_med::Error> {
        f()?; // warm-up: caches, candle's one-time repack
        let mut best = f64::INFINITY;
        for _ in 0..a.repeats {
            let t = Instant::now();
            f()?;
            best = best.min(t.elapsed().as_secs_f64());
        }
        Ok(best)
    };
    let mut rows_out = Vec::new();
    for (name, rows, cols) in shapes {
        // The kernels' speed does not depend on the values.
        let wt = Tensor::rand(-1f32, 1.0, (rows, cols), &CDevice::Cpu)?;
        let w = wt.flatten_all()?.to_vec1::<f32>()?;
        for (format, ggml) in formats {
            let ours = QuantMatrix::quantize(&w, rows, cols, format)?;
            let theirs = QMatMul::from_qtensor(QTensor::quantize(&wt, ggml)?)?;
            for m in [1usize, 298] {
                let xt = Tensor::rand(-1f32, 1.0, (m, cols), &CDevice::Cpu)?;
                let x = xt.flatten_all()?.to_vec1::<f32>()?;
                let t_ours = time(&mut || ours.matmul(&x, m).map(drop))?;
                let t_theirs = time(&mut || theirs.forward(&xt).map(drop).map_err(Into::into))?;
                let shape = (name, rows, cols, m);
                rows_out.push(kernel_row(shape, &format!("{format:?}"), t_ours, t_theirs, ours.bytes()));
            }
        }
    }
    // Decode as it runs in the model: one row against matrices that do not fit in any cache
    // (a layer's weights are read once per token), so the weights come from memory. Copies of
    // gate_proj totalling >= 512 MB, one pass over all of them per repeat.
    let (rows, cols) = (11008, 4096);
    let wt = Tensor::rand(-1f32, 1.0, (rows, cols), &CDevice::Cpu)?;
    let w = wt.flatten_all()?.to_vec1::<f32>()?;
    for (format, _) in formats {
        let one = QuantMatrix::quantize(&w, rows, cols, format)?;
        let copies = (512_000_000usize).div_ceil(one.bytes());
        let mats: Vec<QuantMatrix> = std::iter::once(Ok(one))
            .chain((1..copies).map(|_| QuantMatrix::quantize(&w, rows, cols, format)))
            .collect::<Result<_, _>>()?;
        let bytes: usize = mats.iter().map(|q| q.bytes()).sum();
        // One sequence, and the batched decode of 4 and 8 (issue 15's batch sizes).
        for m in [1usize, 4, 8] {
            let x: Vec<f32> = (0..m * cols).map(|i| (i as f32 * 0.37).sin()).collect();
            let t = time(&mut || mats.iter().try_for_each(|q| q.matmul(&x, m).map(drop)))?;
            let name = format!("decode stream ({copies} x gate)");
            let mut row = kernel_row((&name, rows * copies, cols, m), &format!("{format:?}"), t, f64::NAN, bytes);
            row["candle_ms"] = serde_json::Value::Null;
            row["candle_gflops"] = serde_json::Value::Null;
            rows_out.push(row);
        }
    }
    // The ViT-g's layers for one 448 px image (1025 tokens) in f32 and f16: our packed GEMM
    // beside candle's matmul (the `gemm` crate; f16 activations for its f16 product).
    let vit = [("vit qkv", 4224, 1408), ("vit proj", 1408, 1408), ("vit fc1", 6144, 1408), ("vit fc2", 1408, 6144)];
    for ((name, rows, cols), precision) in vit.into_iter().flat_map(|s| [(s, Precision::F32), (s, Precision::F16)]) {
        let dtype = if precision == Precision::F16 { DType::F16 } else { DType::F32 };
        let wt = Tensor::rand(-1f32, 1.0, (rows, cols), &CDevice::Cpu)?;
        let ours = PackedB::from_nk(&wt.flatten_all()?.to_vec1::<f32>()?, rows, cols, cols, precision);
        let wt = wt.to_dtype(dtype)?;
        let m = 1025;
        let xt = Tensor::rand(-1f32, 1.0, (m, cols), &CDevice::Cpu)?;
        let x = xt.flatten_all()?.to_vec1::<f32>()?;
        let t_ours = time(&mut || gemm::linear(&x, m, &ours, None, Epilogue::Identity).map(drop))?;
        let t_theirs =
            time(&mut || xt.to_dtype(dtype)?.matmul(&wt.t()?)?.to_dtype(DType::F32).map(drop).map_err(Into::into))?;
        rows_out.push(kernel_row((name, rows, cols, m), &format!("{precision:?}"), t_ours, t_theirs, ours.bytes()));
    }
    let fma = minigpt_med::cpu::fma_peak(minigpt_med::threads(), 200);
    if a.json {
        let bandwidth = read_bandwidth(minigpt_med::threads());
        println!(
            "{}",
            json!({"threads": minigpt_med::threads(), "repeats": a.repeats, "memory_read_gbps": bandwidth,
                   "fma_peak_gflops": fma_json(fma), "kernels": rows_out})
        );
    } else {
        let peak = fma.map_or(String::new(), |p| format!("; f32 FMA peak {:.0} GFLOP/s", p.best_gflops()));
        println!("threads {}, best of {}{peak}", minigpt_med::threads(), a.repeats);
        println!(
            "{:<14} {:>6} {:>4} {:>10} {:>10} {:>12} {:>12} {:>9}",
            "matrix", "format", "m", "ours ms", "candle ms", "ours GFLOP/s", "candle GFLOP/s", "ours GB/s"
        );
        for r in &rows_out {
            println!(
                "{:<14} {:>6} {:>4} {:>10.2} {:>10.2} {:>12.1} {:>14.1} {:>9.1}",
                r["matrix"].as_str().unwrap_or(""),
                r["format"].as_str().unwrap_or(""),
                r["m"],
                r["ours_ms"].as_f64().unwrap_or(0.0),
                r["candle_ms"].as_f64().unwrap_or(0.0),
                r["ours_gflops"].as_f64().unwrap_or(0.0),
                r["candle_gflops"].as_f64().unwrap_or(0.0),
                r["ours_weight_gbps"].as_f64().unwrap_or(0.0),
            );
        }
    }
    Ok(())
}
