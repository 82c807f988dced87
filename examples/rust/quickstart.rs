//! Quick start: load MiniGPT-Med, ask each kind of question about one image, stream a report,
//! and keep a conversation. Runs on the bundled tiny model (random weights, so the answers are
//! gibberish) unless you pass a model directory and an image:
//!
//!     cargo run -p minigpt-med-core --example quickstart -- [MODEL_DIR] [IMAGE]
//!
//! MODEL_DIR holds `llama-2-7b-chat-hf/`, `eva_vit_g.pth`, `minigpt_med.pth` (see the README).

use std::io::Write;

use minigpt_med::{GenerateOptions, Image, LoadOptions, Model, Region, Task};

fn main() -> Result<(), minigpt_med::Error> {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny");
    let mut args = std::env::args().skip(1);
    let model_dir = args.next().unwrap_or_else(|| root.to_owned());
    let image_path = args.next().unwrap_or_else(|| format!("{root}/images/ct_nlst.png"));

    let model = Model::load_dir(&model_dir, &LoadOptions::default())?;
    let image = Image::open(&image_path)?;
    let opts = GenerateOptions::greedy(20);

    for task in [
        Task::Report(None),
        Task::Vqa("Is there a nodule in the left lung?".into()),
        Task::Detection("tumor".into()),
        Task::Refer("the nodule in the left lung".into()),
        Task::Grounding(None),
        Task::Identify { region: Region::Pixels([100.0, 150.0, 220.0, 260.0]), question: None },
    ] {
        let answer = model.generate(&image, &task, &opts)?;
        println!(
            "{:<60} -> {:?} ({} boxes)",
            task.instruction(image.width(), image.height())?,
            answer.text,
            answer.boxes.len()
        );
        for b in &answer.boxes {
            println!("    {:?}: grid {:?}, pixels {:?}", b.label, b.grid, b.pixels);
        }
    }

    print!("streamed report: ");
    model.generate_stream(&image, &Task::Report(None), &opts, &mut |piece| {
        print!("{piece}");
        std::io::stdout().flush().is_ok()
    })?;
    println!();

    // A conversation: the image and earlier turns stay in the KV cache.
    let mut chat = model.chat(&image)?;
    let first = chat.ask("[vqa] What organ is shown?", &opts)?;
    let second = chat.ask("[refer] the largest lesion", &opts)?;
    println!("chat: {:?} / {:?} ({} positions cached)", first.text, second.text, chat.context_len());
    Ok(())
}
