//! The bundled tiny model (random weights, real file formats), compiled into the binary so
//! `minigpt-med demo` works anywhere, offline.

use std::path::PathBuf;

macro_rules! fixture {
    ($p:literal) => {
        include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/tiny/", $p))
    };
}

const FILES: &[(&str, &[u8])] = &[
    ("minigpt_med.json", fixture!("minigpt_med.json")),
    ("eva_vit_g.pth", fixture!("eva_vit_g.pth")),
    ("minigpt_med.pth", fixture!("minigpt_med.pth")),
    ("llama-2-7b-chat-hf/config.json", fixture!("llama-2-7b-chat-hf/config.json")),
    ("llama-2-7b-chat-hf/model.safetensors", fixture!("llama-2-7b-chat-hf/model.safetensors")),
    ("llama-2-7b-chat-hf/tokenizer.json", fixture!("llama-2-7b-chat-hf/tokenizer.json")),
];

/// The NLST CT slice of the fixtures (PNG, decoded exactly).
pub const CT_IMAGE: &[u8] = fixture!("images/ct_nlst.png");

/// Writes the tiny model to a per-version directory under the temp dir (once) and returns it.
pub fn unpack() -> Result<PathBuf, minigpt_med::Error> {
    let dir = std::env::temp_dir().join(format!("minigpt-med-demo-{}", minigpt_med::VERSION));
    for (name, bytes) in FILES {
        let path = dir.join(name);
        if std::fs::read(&path).is_ok_and(|b| b == *bytes) {
            continue;
        }
        let io = |e| minigpt_med::Error::Io {
            path: path.clone(),
            source: e,
            hint: "could not unpack the demo model".into(),
        };
        std::fs::create_dir_all(path.parent().unwrap_or(&dir)).map_err(io)?;
        // Write then rename, so concurrent demos never read a half-written file.
        let tmp = path.with_extension(format!("part{}", std::process::id()));
        std::fs::write(&tmp, bytes).map_err(io)?;
        std::fs::rename(&tmp, &path).map_err(io)?;
    }
    Ok(dir)
}
