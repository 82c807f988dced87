//! `minigpt-med batch`: a manifest (or a folder) of images and tasks through one loaded model,
//! each result appended and flushed as it completes, a rerun skipping what is done.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use clap::Args;
use minigpt_med::batch::{resume, BatchRecord, BatchResult};
use minigpt_med::{Error, Image, Request, TaskKind};

use crate::progress::Progress;

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// A JSONL manifest: one `{"id", "image", "task", "prompt" | "instruction", "region",
    /// "grid_region", "color", "window"}` a line.
    #[arg(long, value_name = "FILE.jsonl", required_unless_present = "dir", conflicts_with = "dir")]
    manifest: Option<PathBuf>,
    /// Every image file under this folder (recursively; DICOM included), with --task/--prompt.
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The task of records that name none (and of every --dir image).
    #[arg(long, default_value = "report")]
    task: TaskKind,
    /// The prompt of records that name no task.
    #[arg(long)]
    prompt: Option<String>,
    /// The results (JSONL), appended; ids already in it are skipped.
    #[arg(long, value_name = "FILE.jsonl")]
    out: PathBuf,
    /// Records decoding together (each decode step is one pass over the weights for all of
    /// them); each holds a KV cache (~0.5 GB at the 7B shape).
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    #[command(flatten)]
    decode: crate::DecodeArgs,
}

/// File extensions taken from `--dir` (others are skipped; DICOM files often have none).
const IMAGE_EXTENSIONS: [&str; 9] = ["png", "jpg", "jpeg", "tif", "tiff", "bmp", "dcm", "dicom", "ima"];

fn dir_records(dir: &Path) -> Result<Vec<BatchRecord>, Error> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| Error::InvalidOption(format!("--dir {}: {e}", d.display())))?;
        for e in entries.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    let ext = p.extension().map(|x| x.to_string_lossy().to_ascii_lowercase());
                    let dicom_without_extension = ext.is_none() && starts_like_dicom(&p);
                    if ext.is_some_and(|x| IMAGE_EXTENSIONS.contains(&x.as_str())) || dicom_without_extension {
                        files.push(p);
                    }
                }
                _ => {}
            }
        }
    }
    files.sort();
    Ok(files.into_iter().map(|image| BatchRecord { image, ..BatchRecord::default() }).collect())
}

/// Whether the file's first 132 bytes are a DICOM preamble and `DICM`.
fn starts_like_dicom(path: &Path) -> bool {
    use std::io::Read;
    let mut head = [0u8; 132];
    std::fs::File::open(path).and_then(|mut f| f.read_exact(&mut head)).is_ok()
        && minigpt_med::image::looks_like_dicom(&head)
}

fn manifest_records(path: &Path) -> Result<Vec<BatchRecord>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::InvalidOption(format!("--manifest {}: {e}", path.display())))?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut records = Vec::new();
    for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        let mut r = BatchRecord::parse(line, i + 1)?;
        if r.image.is_relative() {
            r.image = base.join(&r.image);
        }
        records.push(r);
    }
    Ok(records)
}

pub fn batch(a: BatchArgs) -> Result<(), Error> {
    let mut records = match (&a.manifest, &a.dir) {
        (Some(m), _) => manifest_records(m)?,
        (None, Some(d)) => dir_records(d)?,
        (None, None) => unreachable!("clap requires one"),
    };
    // Ids: given, else the image path; repeats of one id get `#2`, `#3`...
    let mut seen: HashMap<String, usize> = HashMap::new();
    let ids: Vec<String> = records
        .iter_mut()
        .map(|r| {
            let base = r.id.clone().unwrap_or_else(|| r.image.display().to_string());
            let n = seen.entry(base.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                base
            } else {
                format!("{base}#{n}")
            }
        })
        .collect();
    for r in &records {
        minigpt_med::image::ensure_not_input(&a.out, &r.image)?;
    }
    let done = resume(&a.out)?;
    let opts = a.decode.options()?;
    let todo: Vec<usize> = (0..records.len()).filter(|&i| !done.contains(&ids[i])).collect();
    eprintln!(
        "batch: {} records, {} already in {}, {} to run",
        records.len(),
        records.len() - todo.len(),
        a.out.display(),
        todo.len()
    );
    if todo.is_empty() {
        return Ok(());
    }
    let model = a.model.load(false)?;
    let mut out = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&a.out)
        .map_err(|e| Error::InvalidOption(format!("--out {}: {e}", a.out.display())))?;
    // Records of one image (same path, colour and window) share one study, in first-seen order.
    let mut groups: Vec<(BatchRecord, Vec<usize>)> = Vec::new();
    for &i in &todo {
        match groups.iter_mut().find(|(r, _)| r.image_key() == records[i].image_key()) {
            Some((_, members)) => members.push(i),
            None => groups.push((records[i].clone(), vec![i])),
        }
    }
    let progress = Progress::stderr("batch").with_rate("records");
    let mut finished = 0usize;
    let batch_size = a.batch_size.max(1);
    let mut write = |line: BatchResult| -> Result<(), Error> {
        let mut text = serde_json::to_string(&line).map_err(|e| Error::InvalidOption(e.to_string()))?;
        text.push('\n');
        out.write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .map_err(|e| Error::InvalidOption(format!("--out {}: {e}", a.out.display())))?;
        finished += 1;
        progress.show(finished, todo.len());
        Ok(())
    };
    // Whole groups at a time, about `batch_size` records, decoding together: the studies of a
    // chunk are held only while it runs.
    let mut rest = &groups[..];
    while !rest.is_empty() {
        let mut take = 0;
        let mut records_in = 0;
        while take < rest.len() && (take == 0 || records_in + rest[take].1.len() <= batch_size) {
            records_in += rest[take].1.len();
            take += 1;
        }
        let (chunk, next) = rest.split_at(take);
        rest = next;
        let mut studies = Vec::new();
        for (first, members) in chunk {
            let study = first
                .image_options()
                .and_then(|o| Image::open_with(&first.image, &o))
                .and_then(|img| model.study(&img));
            match study {
                Ok(s) => studies.push((s, members)),
                // An unreadable image fails each of its records.
                Err(e) => {
                    for &i in members {
                        write(BatchResult::failed(&ids[i], &records[i].image, &e))?;
                    }
                }
            }
        }
        let mut requests = Vec::new();
        let mut slots = Vec::new();
        for (study, members) in &studies {
            for &i in *members {
                let r = &records[i];
                // A bad task fails its own record.
                match r.task(a.task, a.prompt.as_deref()) {
                    Ok(task) => {
                        requests.push(Request::on_study(study.shared(), task, opts.clone()));
                        slots.push(i);
                    }
                    Err(e) => write(BatchResult::failed(&ids[i], &r.image, e))?,
                }
            }
        }
        let mut failed_write = None;
        model.generate_batch_each(&requests, batch_size, None, |k, result| {
            let i = slots[k];
            let line = match result {
                Ok(answer) => BatchResult::answered(&ids[i], &records[i].image, &answer),
                Err(e) => BatchResult::failed(&ids[i], &records[i].image, e),
            };
            if failed_write.is_none() {
                failed_write = write(line).err();
            }
        });
        if let Some(e) = failed_write {
            return Err(e);
        }
    }
    Ok(())
}
