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

/// The unpacked tiny model: a private directory (mode 0700, a fresh name, created exclusively,
/// so no other user can plant or read files in it), removed when dropped.
pub struct DemoDir(PathBuf);

impl DemoDir {
    /// Where the model files are.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the tiny model into a new private temporary directory.
pub fn unpack() -> Result<DemoDir, minigpt_med::Error> {
    let io = |path: &std::path::Path, e| minigpt_med::Error::Io {
        path: path.to_owned(),
        source: e,
        hint: "could not unpack the demo model into the temporary directory".into(),
    };
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let dir = std::env::temp_dir().join(format!("minigpt-med-demo-{}-{stamp}", std::process::id()));
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    // `create` (not `create_all`) fails if the name exists: the directory is ours alone.
    builder.create(&dir).map_err(|e| io(&dir, e))?;
    let guard = DemoDir(dir);
    for (name, bytes) in FILES {
        let path = guard.0.join(name);
        std::fs::create_dir_all(path.parent().unwrap_or(&guard.0)).map_err(|e| io(&path, e))?;
        std::fs::write(&path, bytes).map_err(|e| io(&path, e))?;
    }
    Ok(guard)
}
