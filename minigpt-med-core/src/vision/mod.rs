//! EVA ViT-g/14 (EVA01-CLIP-g as used by BLIP-2 and MiniGPT-v2/Med) and the connector that
//! turns its patch tokens into LLaMA input embeddings.

mod connector;
mod pos_embed;

use candle_core::{DType, Device, Tensor};

pub(crate) use connector::Connector;
pub use pos_embed::interpolate_pos_embed;

use crate::attention::{attention, Heads, Mask, Shape};
use crate::config::VisionConfig;
use crate::cpu::Isa;
use crate::error::{Error, Result};
use crate::gemm::Epilogue;
use crate::nn::{with_f32_slice, LayerNorm, Linear, WeightDType};
use crate::weights::TensorSource;

/// Where one image's encode spends its time ([`crate::Model::encode_split`]), in
/// milliseconds of wall time on the calling thread; the sections add up to the whole encode
/// after the image is resized to the model's view.
/// On a GPU the sections time the launches, not the kernels.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct EncodeSplit {
    /// Products with a weight matrix: the patch embedding and every block's q/k/v, output,
    /// fc1 (with its GELU) and fc2.
    pub gemm_ms: f64,
    /// The attention of every block (`softmax(q k^T) v`, all heads).
    pub attention_ms: f64,
    /// The rest of the ViT: patch gathering, cls and position rows, layer norms, residual adds.
    pub other_ms: f64,
    /// The connector after the ViT: its LayerNorm, the 4-token concatenation and the projection
    /// into the LLM's width.
    pub connector_ms: f64,
}

/// Which [`EncodeSplit`] bucket the time since the last lap goes to.
#[derive(Clone, Copy)]
enum Section {
    Gemm,
    Attention,
    Other,
}

/// Adds the wall time between laps to an [`EncodeSplit`], when one is asked for.
struct Laps<'a> {
    split: Option<&'a mut EncodeSplit>,
    last: std::time::Instant,
}

impl Laps<'_> {
    /// Books the time since the previous lap to `section`.
    fn lap(&mut self, section: Section) {
        let Some(split) = self.split.as_deref_mut() else { return };
        let now = std::time::Instant::now();
        let ms = (now - self.last).as_secs_f64() * 1e3;
        self.last = now;
        match section {
            Section::Gemm => split.gemm_ms += ms,
            Section::Attention => split.attention_ms += ms,
            Section::Other => split.other_ms += ms,
        }
    }
}

struct Block {
    norm1: LayerNorm,
    qkv: Linear,
    proj: Linear,
    norm2: LayerNorm,
    fc1: Linear,
    fc2: Linear,
}

/// The vision encoder: patch embedding, cls token, interpolated positions, `depth` pre-norm
/// blocks, no final norm.
pub(crate) struct EvaVit {
    cfg: VisionConfig,
    patch: Linear,
    cls: Tensor,
    pos: Tensor,
    blocks: Vec<Block>,
}

/// The tensors of block `i` (`blocks.{i}.` + these) that [`EvaVit::load`] reads.
const BLOCK_TENSORS: [&str; 13] = [
    "norm1.weight",
    "norm1.bias",
    "attn.qkv.weight",
    "attn.q_bias",
    "attn.v_bias",
    "attn.proj.weight",
    "attn.proj.bias",
    "norm2.weight",
    "norm2.bias",
    "mlp.fc1.weight",
    "mlp.fc1.bias",
    "mlp.fc2.weight",
    "mlp.fc2.bias",
];

const VIT_HINT: &str = "--vit must be BLIP-2's eva_vit_g.pth (LAVIS key names)";

impl EvaVit {
    /// Checks the file's dimensions against `cfg` without reading any tensor data.
    pub(crate) fn validate(src: &dyn TensorSource, cfg: &VisionConfig) -> Result<()> {
        let prefix = key_prefix(src);
        let key = |k: &str| format!("{prefix}{k}");
        let d = cfg.width;
        let p = cfg.patch_size;
        let pe_shape = src.shape_of(&key("patch_embed.proj.weight"), VIT_HINT)?.to_vec();
        if pe_shape.len() != 4 || pe_shape[1] != 3 || pe_shape[0] != d || pe_shape[2] != p || pe_shape[3] != p {
            return Err(Error::ShapeMismatch {
                name: key("patch_embed.proj.weight"),
                expected: vec![d, 3, p, p],
                found: pe_shape,
                hint: "vision.width / vision.patch_size in the model config do not match the ViT file".into(),
            });
        }
        let in_file =
            (0..).take_while(|i| src.shapes().contains_key(&key(&format!("blocks.{i}.norm1.weight")))).count();
        if in_file < cfg.depth {
            return Err(Error::Config {
                path: src.origin().to_owned(),
                reason: format!(
                    "the ViT file holds {in_file} blocks but vision.depth is {}; MiniGPT-Med uses 39 of 40",
                    cfg.depth
                ),
            });
        }
        Ok(())
    }

    /// Loads the encoder from an `eva_vit_g.pth` state dict, checking every dimension against
    /// `cfg`. `blocks.{depth..}` present in the file are ignored, as the original does.
    pub(crate) fn load(
        src: &dyn TensorSource,
        cfg: &VisionConfig,
        dtype: WeightDType,
        device: &Device,
        mut progress: impl FnMut() -> Result<()>,
    ) -> Result<Self> {
        Self::validate(src, cfg)?;
        let prefix = key_prefix(src);
        let key = |k: &str| format!("{prefix}{k}");
        let d = cfg.width;
        let p = cfg.patch_size;
        let f32_get = |name: &str, shape: &[usize]| src.get(&key(name), shape, DType::F32, device, VIT_HINT);
        // Matrices as stored (f16 in eva_vit_g.pth and model files): `Linear::new` widens them
        // once, and knows f16 values need no exactness scan.
        let matrix = |name: &str, shape: &[usize]| src.get_stored(&key(name), shape, device, VIT_HINT);

        let patch_w = matrix("patch_embed.proj.weight", &[d, 3, p, p])?.reshape((d, 3 * p * p))?;
        let patch_b = f32_get("patch_embed.proj.bias", &[d])?;
        let patch = Linear::new(patch_w, Some(patch_b), dtype)?;
        let cls = f32_get("cls_token", &[1, 1, d])?.reshape((1, d))?;

        let pos = Self::interpolated_pos_embed(src, cfg, device)?;
        progress()?;

        let mlp = cfg.mlp_hidden;
        let mut blocks = Vec::with_capacity(cfg.depth);
        for i in 0..cfg.depth {
            let b = |n: &str, shape: &[usize]| f32_get(&format!("blocks.{i}.{n}"), shape);
            let ln = |n: &str| -> Result<LayerNorm> {
                LayerNorm::new(b(&format!("{n}.weight"), &[d])?, b(&format!("{n}.bias"), &[d])?, cfg.layer_norm_eps)
            };
            let fc1_shape = src.shape_of(&key(&format!("blocks.{i}.mlp.fc1.weight")), VIT_HINT)?;
            if fc1_shape != [mlp, d] {
                return Err(Error::ShapeMismatch {
                    name: key(&format!("blocks.{i}.mlp.fc1.weight")),
                    expected: vec![mlp, d],
                    found: fc1_shape.to_vec(),
                    hint: "vision.mlp_hidden in the model config does not match the ViT file".into(),
                });
            }
            // The key bias is fixed at zero: qkv bias = cat(q_bias, 0, v_bias).
            let qkv_bias = Tensor::cat(
                &[b("attn.q_bias", &[d])?, Tensor::zeros(d, DType::F32, device)?, b("attn.v_bias", &[d])?],
                0,
            )?;
            let m = |n: &str, shape: &[usize]| matrix(&format!("blocks.{i}.{n}"), shape);
            blocks.push(Block {
                norm1: ln("norm1")?,
                qkv: Linear::new(m("attn.qkv.weight", &[3 * d, d])?, Some(qkv_bias), dtype)?,
                proj: Linear::new(m("attn.proj.weight", &[d, d])?, Some(b("attn.proj.bias", &[d])?), dtype)?,
                norm2: ln("norm2")?,
                fc1: Linear::new(m("mlp.fc1.weight", &[mlp, d])?, Some(b("mlp.fc1.bias", &[mlp])?), dtype)?,
                fc2: Linear::new(m("mlp.fc2.weight", &[d, mlp])?, Some(b("mlp.fc2.bias", &[d])?), dtype)?,
            });
            progress()?;
        }
        Ok(Self { cfg: cfg.clone(), patch, cls, pos, blocks })
    }

    /// The interpolated position table `[1 + grid^2, width]` (row 0 = cls).
    /// The position table resized to the configured grid, `[1 + grid^2, width]`.
    pub(crate) fn interpolated_pos_embed(
        src: &dyn TensorSource,
        cfg: &VisionConfig,
        device: &Device,
    ) -> Result<Tensor> {
        let prefix = key_prefix(src);
        let key = |k: &str| format!("{prefix}{k}");
        let d = cfg.width;
        let f32_get = |name: &str, shape: &[usize]| src.get(&key(name), shape, DType::F32, device, VIT_HINT);
        let pos_shape = src.shape_of(&key("pos_embed"), VIT_HINT)?.to_vec();
        let g_in = match pos_shape.as_slice() {
            [1, n, dd] if *dd == d && *n >= 2 && is_square(n - 1) => isqrt(n - 1),
            _ => {
                return Err(Error::ShapeMismatch {
                    name: key("pos_embed"),
                    expected: vec![1, 1 + cfg.grid() * cfg.grid(), d],
                    found: pos_shape,
                    hint: "expected a cls row plus a square grid".into(),
                })
            }
        };
        let pos_raw = f32_get("pos_embed", &pos_shape)?.flatten_all()?.to_vec1::<f32>()?;
        let g = cfg.grid();
        let pos = interpolate_pos_embed(&pos_raw, d, g_in, g);
        Ok(Tensor::from_vec(pos, (1 + g * g, d), device)?)
    }

    /// The prefix of the ViT's keys in `src` (`visual_encoder.` in a full LAVIS checkpoint).
    pub(crate) fn key_prefix(src: &dyn TensorSource) -> &'static str {
        key_prefix(src)
    }

    /// Every tensor [`Self::load`] reads (names without the prefix) with its stored shape.
    pub(crate) fn tensor_shapes(src: &dyn TensorSource, cfg: &VisionConfig) -> Result<Vec<(String, Vec<usize>)>> {
        let prefix = key_prefix(src);
        let mut names: Vec<String> =
            ["patch_embed.proj.weight", "patch_embed.proj.bias", "cls_token", "pos_embed"].map(String::from).to_vec();
        for i in 0..cfg.depth {
            for n in BLOCK_TENSORS {
                names.push(format!("blocks.{i}.{n}"));
            }
        }
        names.into_iter().map(|n| Ok((n.clone(), src.shape_of(&format!("{prefix}{n}"), VIT_HINT)?.to_vec()))).collect()
    }

    /// Whether `name` is a weight matrix (held in the ViT's dtype; the rest stays f32).
    pub(crate) fn is_matrix(name: &str) -> bool {
        name == "patch_embed.proj.weight"
            || ["attn.qkv.weight", "attn.proj.weight", "mlp.fc1.weight", "mlp.fc2.weight"]
                .iter()
                .any(|m| name.ends_with(m))
    }

    pub(crate) fn pos_embed(&self) -> &Tensor {
        &self.pos
    }

    /// `pixels: [3, size, size]` normalised f32 -> `[1 + grid^2, width]` tokens (cls first),
    /// before `ln_vision`; each section's wall time is added to `split` when one is given.
    pub(crate) fn forward_timed(&self, pixels: &Tensor, split: Option<&mut EncodeSplit>) -> Result<Tensor> {
        use Section::{Attention, Gemm, Other};
        let mut laps = Laps { split, last: std::time::Instant::now() };
        let (g, p, d) = (self.cfg.grid(), self.cfg.patch_size, self.cfg.width);
        // The stride-p conv is a matmul over flattened (c, ky, kx) patches in raster order.
        let patches =
            pixels.reshape((3, g, p, g, p))?.permute((1, 3, 0, 2, 4))?.contiguous()?.reshape((g * g, 3 * p * p))?;
        laps.lap(Other);
        let x = self.patch.forward(&patches)?;
        laps.lap(Gemm);
        let mut x = Tensor::cat(&[&self.cls, &x], 0)?.add(&self.pos)?;
        laps.lap(Other);
        let heads = self.cfg.heads;
        let hd = d / heads;
        let scale = (hd as f64).powf(-0.5);
        let n = x.dim(0)?;
        for blk in &self.blocks {
            let h = blk.norm1.forward(&x)?;
            laps.lap(Other);
            let qkv = blk.qkv.forward(&h)?;
            laps.lap(Gemm);
            let o = if matches!(qkv.device(), Device::Cpu) {
                let o = with_f32_slice(&qkv, |qkv| {
                    let view = |part: usize| Heads::interleaved(&qkv[part * d..], hd, 3 * d);
                    let shape = Shape { queries: n, keys: n, heads, kv_heads: heads, head_dim: hd };
                    Ok(attention(Isa::detect(), view(0), view(1), view(2), shape, scale as f32, Mask::None))
                })?;
                Tensor::from_vec(o, (n, d), qkv.device())?
            } else {
                let qkv = qkv.reshape((n, 3, heads, hd))?.permute((1, 2, 0, 3))?;
                let q = (qkv.get(0)? * scale)?.contiguous()?;
                let k = qkv.get(1)?.contiguous()?;
                let v = qkv.get(2)?.contiguous()?;
                let att = candle_nn::ops::softmax_last_dim(&q.matmul(&k.t()?)?)?;
                att.matmul(&v)?.transpose(0, 1)?.reshape((n, d))?
            };
            laps.lap(Attention);
            let o = blk.proj.forward(&o)?;
            laps.lap(Gemm);
            x = (x + o)?;
            let h = blk.norm2.forward(&x)?;
            laps.lap(Other);
            let h = blk.fc2.forward(&blk.fc1.forward_act(&h, Epilogue::Gelu)?)?;
            laps.lap(Gemm);
            x = (x + h)?;
            laps.lap(Other);
        }
        Ok(x)
    }
}

/// LAVIS state dicts use bare names; a full BLIP-2/MiniGPT state dict nests them.
fn key_prefix(src: &dyn TensorSource) -> &'static str {
    if src.shapes().contains_key("cls_token") {
        ""
    } else {
        "visual_encoder."
    }
}

fn isqrt(n: usize) -> usize {
    (n as f64).sqrt().round() as usize
}

fn is_square(n: usize) -> bool {
    let r = isqrt(n);
    r * r == n
}
