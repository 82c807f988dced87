//! The few layers both encoders share. Activations are always f32; weights may be stored in a
//! narrower dtype (f16, bf16) or quantized (Q8_0, Q4_0, Q4_K) and are widened inside the matmul.

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use half::f16;
use rayon::prelude::*;
use std::sync::Arc;

use candle_core::{DType, Device, Module, Tensor};

use crate::error::{Error, Result};
use crate::gemm::{self, Epilogue, PackedB, Precision};
use crate::quant::{QuantFormat, QuantMatrix};

/// How a weight matrix is held in memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WeightDType {
    /// 32-bit float: exact parity with the fp32 reference. On the CPU, a matrix whose values
    /// are all f16 values (a checkpoint stored in fp16) is held in f16: the same numbers and the
    /// same results in half the memory.
    #[default]
    F32,
    /// 16-bit float: half the memory, fp16 rounding of the weights.
    F16,
    /// bfloat16: for GPUs; slow on CPUs (no bf16 kernels).
    BF16,
    /// 8-bit blocks (llama.cpp Q8_0), quantized at load.
    Q8_0,
    /// 4-bit blocks (llama.cpp Q4_0), quantized at load.
    Q4_0,
    /// 4-bit k-quants (llama.cpp Q4_K), quantized at load.
    Q4K,
}

impl WeightDType {
    /// The dense dtype weights are stored in, or `None` for quantized formats.
    pub fn dense(self) -> Option<DType> {
        match self {
            Self::F32 => Some(DType::F32),
            Self::F16 => Some(DType::F16),
            Self::BF16 => Some(DType::BF16),
            _ => None,
        }
    }

    pub(crate) fn quant(self) -> Option<QuantFormat> {
        match self {
            Self::Q8_0 => Some(QuantFormat::Q8_0),
            Self::Q4_0 => Some(QuantFormat::Q4_0),
            Self::Q4K => Some(QuantFormat::Q4K),
            _ => None,
        }
    }

    /// Whether the weights are quantized (Q8_0, Q4_0, Q4_K).
    pub fn is_quantized(self) -> bool {
        self.quant().is_some()
    }

    /// The dense dtype used for tensors that are never quantized (embeddings, norms, biases).
    pub fn float(self) -> DType {
        self.dense().unwrap_or(DType::F16)
    }
}

impl std::str::FromStr for WeightDType {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Self::F32,
            "f16" | "float16" | "half" => Self::F16,
            "bf16" | "bfloat16" => Self::BF16,
            "q8_0" | "q8" => Self::Q8_0,
            "q4_0" => Self::Q4_0,
            "q4k" | "q4_k" | "q4_k_m" => Self::Q4K,
            other => {
                return Err(Error::InvalidOption(format!("dtype {other:?}: use f32, f16, bf16, q8_0, q4_0 or q4k")))
            }
        })
    }
}

impl std::fmt::Display for WeightDType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::BF16 => "bf16",
            Self::Q8_0 => "q8_0",
            Self::Q4_0 => "q4_0",
            Self::Q4K => "q4k",
        })
    }
}

/// A weight matrix `[out, in]`, dense or quantized.
#[derive(Debug, Clone)]
enum Weight {
    /// f32 or f16 on the CPU: packed for our GEMM (`crate::gemm`), one copy, bias fused.
    Gemm { w: Arc<PackedB>, bias: Option<Arc<[f32]>> },
    /// bf16, or any dense dtype on a GPU: candle's matmul.
    Dense(Tensor),
    /// On the CPU: our own layout and kernels (`crate::quant`), one copy of the weights.
    Packed(Arc<QuantMatrix>),
    /// On a GPU: candle's quantized matmul.
    Quantized(QMatMul),
}

/// `y = x W^T (+ b)` for `x: [n, in]` f32, returning `[n, out]` f32.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

impl Linear {
    /// Builds the layer from an `[out, in]` weight (any float dtype), converting it to `dtype`.
    /// Quantized formats need `in` to be a multiple of their block size; other layers fall
    /// back to f16 rather than failing.
    pub(crate) fn new(weight: Tensor, bias: Option<Tensor>, dtype: WeightDType) -> Result<Self> {
        let (out_features, in_features) = weight.dims2()?;
        let bias = bias.map(|b| b.to_dtype(DType::F32)).transpose()?;
        if let Some(b) = bias.as_ref().filter(|b| b.elem_count() != out_features) {
            return Err(Error::Tensor(candle_core::Error::Msg(format!(
                "bias of {} values for a [{out_features}, {in_features}] weight",
                b.elem_count()
            ))));
        }
        let cpu = matches!(weight.device(), Device::Cpu);
        let dense = match dtype.quant() {
            Some(q) if q.accepts(in_features) => {
                let weight = if cpu {
                    Weight::Packed(Arc::new(quantize_matrix(&weight, q)?))
                } else {
                    let ggml = match q {
                        QuantFormat::Q8_0 => GgmlDType::Q8_0,
                        QuantFormat::Q4_0 => GgmlDType::Q4_0,
                        QuantFormat::Q4K => GgmlDType::Q4K,
                    };
                    Weight::Quantized(QMatMul::from_qtensor(QTensor::quantize(&weight.to_dtype(DType::F32)?, ggml)?)?)
                };
                return Ok(Self { weight, bias });
            }
            Some(_) => WeightDType::F16,
            None => dtype,
        };
        if cpu && dense != WeightDType::BF16 {
            // Stored in f16 (eva_vit_g.pth, a model file): f16 panels straight from the
            // stored values, no f32 copy and no exactness scan.
            let w = if weight.dtype() == DType::F16 {
                with_slice(&weight, |w: &[f16]| Ok(PackedB::from_nk_f16(w, out_features, in_features, in_features)))?
            } else {
                with_f32_slice(&weight, |w| {
                    // Checkpoints stored in fp16 (eva_vit_g.pth, LLaMA-2's files) give f32 weights
                    // that are all f16 values: held as f16 they are the same numbers in half the
                    // memory, and the products (in f32) are bit-identical.
                    let precision =
                        if dense == WeightDType::F16 || w.par_iter().all(|&v| f16::from_f32(v).to_f32() == v) {
                            Precision::F16
                        } else {
                            Precision::F32
                        };
                    Ok(PackedB::from_nk(w, out_features, in_features, in_features, precision))
                })?
            };
            let bias = bias.map(|b| Ok::<_, Error>(b.to_vec1::<f32>()?.into())).transpose()?;
            return Ok(Self { weight: Weight::Gemm { w: Arc::new(w), bias }, bias: None });
        }
        Ok(Self { weight: Weight::Dense(weight.to_dtype(dense.float())?), bias })
    }

    /// A layer over an already quantized weight (read from a converted model file). On the CPU
    /// it is used as it is; elsewhere its values go through [`Self::new`] in `dtype`.
    pub(crate) fn from_quant(q: QuantMatrix, dtype: WeightDType, device: &Device) -> Result<Self> {
        if matches!(device, Device::Cpu) {
            return Ok(Self { weight: Weight::Packed(Arc::new(q)), bias: None });
        }
        let (rows, cols) = q.dims();
        Self::new(Tensor::from_vec(q.dequantize(), (rows, cols), device)?, None, dtype)
    }

    /// Bytes held by the weight and bias.
    pub(crate) fn bytes(&self) -> usize {
        let w = match &self.weight {
            Weight::Gemm { w, bias } => w.bytes() + bias.as_ref().map_or(0, |b| b.len() * 4),
            Weight::Dense(t) => t.elem_count() * t.dtype().size_in_bytes(),
            Weight::Packed(q) => q.bytes(),
            Weight::Quantized(QMatMul::QTensor(q)) => q.storage_size_in_bytes(),
            Weight::Quantized(QMatMul::Tensor(t) | QMatMul::TensorF16(t)) => t.elem_count() * t.dtype().size_in_bytes(),
        };
        w + self.bias.as_ref().map_or(0, |b| b.elem_count() * 4)
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_act(x, Epilogue::Identity)
    }

    /// [`Self::forward`] of several layers over one input `x: [.., in]` (a decoder layer's q, k
    /// and v; gate and up). Quantized CPU layers without bias share one quantization of `x`
    /// and one parallel pass ([`QuantMatrix::matmul_many`]), with results bit-identical to
    /// separate calls; other layers run one after the other.
    pub(crate) fn forward_many<const N: usize>(layers: [&Linear; N], x: &Tensor) -> Result<[Tensor; N]> {
        let packed: Option<Vec<&QuantMatrix>> = layers
            .iter()
            .map(|l| match (&l.weight, &l.bias) {
                (Weight::Packed(q), None) => Some(&**q),
                _ => None,
            })
            .collect();
        let mut out = Vec::with_capacity(N);
        match packed {
            Some(mats) if mats.iter().all(|q| q.dims().1 == mats[0].dims().1) => {
                let k = mats[0].dims().1;
                let mut shape = x.dims().to_vec();
                if shape.last() != Some(&k) {
                    return Err(Error::Tensor(candle_core::Error::Msg(format!(
                        "input of shape {shape:?} for matrices of {k} inputs"
                    ))));
                }
                let m = x.elem_count() / k.max(1);
                let ys = with_f32_slice(x, |x| QuantMatrix::matmul_many(&mats, x, m))?;
                for (y, q) in ys.into_iter().zip(&mats) {
                    *shape.last_mut().expect("checked above") = q.dims().0;
                    out.push(Tensor::from_vec(y, shape.clone(), x.device())?);
                }
            }
            _ => {
                for l in layers {
                    out.push(l.forward(x)?);
                }
            }
        }
        out.try_into().map_err(|_| Error::InvalidOption("one output per layer".into()))
    }

    /// `epilogue(x W^T + b)`: the GELU is fused into the f32 CPU product's store.
    pub(crate) fn forward_act(&self, x: &Tensor, epilogue: Epilogue) -> Result<Tensor> {
        let y = match &self.weight {
            Weight::Gemm { w, bias } => {
                let (k, n) = w.dims();
                return on_rows(x, k, n, |x, m| gemm::linear(x, m, w, bias.as_deref(), epilogue));
            }
            Weight::Dense(w) if w.dtype() == DType::F32 => x.matmul(&w.t()?)?,
            Weight::Dense(w) => x.to_dtype(w.dtype())?.matmul(&w.t()?)?.to_dtype(DType::F32)?,
            Weight::Packed(q) => {
                let (n, k) = q.dims();
                on_rows(x, k, n, |x, m| q.matmul(x, m))?
            }
            Weight::Quantized(q) => q.forward(x)?,
        };
        let y = match &self.bias {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        Ok(match epilogue {
            Epilogue::Identity => y,
            Epilogue::Gelu => y.gelu_erf()?,
        })
    }
}

/// How [`Linear::new`] holds an `[out, in_features]` weight in `dtype` on the CPU: the quantized
/// format, or `None` for a dense one. A model file stores exactly what this says.
pub(crate) fn quantized_as(dtype: WeightDType, in_features: usize) -> Option<QuantFormat> {
    dtype.quant().filter(|q| q.accepts(in_features))
}

/// Whether [`Linear::new`] rounds a dense weight to f16 (the f16 dtype, and the fallback of a
/// quantized dtype for a shape its format cannot hold).
pub(crate) fn rounds_to_f16(dtype: WeightDType, in_features: usize) -> bool {
    dtype == WeightDType::F16 || (dtype.quant().is_some() && quantized_as(dtype, in_features).is_none())
}

/// Quantizes a CPU weight `[out, in]` (f16 as stored, or f32) to `format`.
pub(crate) fn quantize_matrix(weight: &Tensor, format: QuantFormat) -> Result<QuantMatrix> {
    let (out_features, in_features) = weight.dims2()?;
    if weight.dtype() == DType::F16 {
        with_slice(weight, |data| QuantMatrix::quantize_f16(data, out_features, in_features, format))
    } else {
        with_f32_slice(weight, |data| QuantMatrix::quantize(data, out_features, in_features, format))
    }
}

/// `x: [.., in]` f32 through `f(rows as one [m, in] slice, m) -> [m, out]`, read in place from
/// the tensor's storage; returns `[.., out]`.
fn on_rows(x: &Tensor, k: usize, n: usize, f: impl FnOnce(&[f32], usize) -> Result<Vec<f32>>) -> Result<Tensor> {
    let mut shape = x.dims().to_vec();
    if shape.last() != Some(&k) {
        return Err(Error::Tensor(candle_core::Error::Msg(format!(
            "input of shape {shape:?} for a [{n}, {k}] matrix"
        ))));
    }
    let m = x.elem_count() / k.max(1);
    let y = with_f32_slice(x, |x| f(x, m))?;
    *shape.last_mut().expect("checked above") = n;
    Ok(Tensor::from_vec(y, shape, x.device())?)
}

/// Runs `f` on the values of a CPU tensor as one f32 slice, in place when the tensor already
/// is contiguous f32 (no copy of a weight matrix at load, nor of activations).
pub(crate) fn with_f32_slice<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    with_slice(t, f)
}

/// Runs `f` on the values of a CPU tensor as one slice of `T`, in place when the tensor already
/// is contiguous `T`.
fn with_slice<T: candle_core::WithDType, R>(t: &Tensor, f: impl FnOnce(&[T]) -> Result<R>) -> Result<R> {
    let t = t.to_dtype(T::DTYPE)?.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(cpu) => {
            let start = layout.start_offset();
            f(&cpu.as_slice::<T>()?[start..start + t.elem_count()])
        }
        _ => Err(Error::Tensor(candle_core::Error::Msg("weights are packed on the CPU only".into()))),
    }
}

/// LayerNorm over the last axis, f32, with optional affine parameters.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
}

impl LayerNorm {
    pub(crate) fn new(weight: Tensor, bias: Tensor, eps: f64) -> Result<Self> {
        Ok(Self { weight: weight.to_dtype(DType::F32)?, bias: bias.to_dtype(DType::F32)?, eps: eps as f32 })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Ok(candle_nn::ops::layer_norm(x, &self.weight, &self.bias, self.eps)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    /// f32 weights that are all f16 values take half the bytes and give bit-identical outputs
    /// to the same weights held in f32; one value off the f16 grid keeps the matrix in f32.
    #[test]
    fn f32_weights_from_fp16_files_are_held_in_half_the_bytes() {
        let dev = Device::Cpu;
        let (n, k) = (40, 96);
        let w =
            Tensor::randn(0f32, 1.0, (n, k), &dev).unwrap().to_dtype(DType::F16).unwrap().to_dtype(DType::F32).unwrap();
        let x = Tensor::randn(0f32, 1.0, (7, k), &dev).unwrap();
        let layer = Linear::new(w.clone(), None, WeightDType::F32).unwrap();
        assert_eq!(layer.bytes(), n.div_ceil(16) * 16 * k * 2);
        let got = layer.forward(&x).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let wide = PackedB::from_nk(&w.flatten_all().unwrap().to_vec1::<f32>().unwrap(), n, k, k, Precision::F32);
        let xs = x.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let want = gemm::linear(&xs, 7, &wide, None, Epilogue::Identity).unwrap();
        assert!(got.iter().zip(&want).all(|(a, b)| a.to_bits() == b.to_bits()), "f16-held weights changed the output");

        let mut off_grid = w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        off_grid[5] += 1e-4;
        let layer = Linear::new(Tensor::from_vec(off_grid, (n, k), &dev).unwrap(), None, WeightDType::F32).unwrap();
        assert_eq!(layer.bytes(), n.div_ceil(16) * 16 * k * 4);
    }

    /// Relative error of each storage format on one random layer, against f32.
    #[test]
    fn every_dtype_computes_the_same_product() {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1.0, (96, 512), &dev).unwrap();
        let b = Tensor::randn(0f32, 1.0, 96, &dev).unwrap();
        let x = Tensor::randn(0f32, 1.0, (5, 512), &dev).unwrap();
        let exact = Linear::new(w.clone(), Some(b.clone()), WeightDType::F32).unwrap().forward(&x).unwrap();
        let scale = exact.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        for (dtype, bound) in [
            (WeightDType::F16, 2e-3),
            (WeightDType::BF16, 2e-2),
            (WeightDType::Q8_0, 2e-2),
            (WeightDType::Q4K, 1.2e-1),
            (WeightDType::Q4_0, 2e-1),
        ] {
            let y = Linear::new(w.clone(), Some(b.clone()), dtype).unwrap().forward(&x).unwrap();
            let err = (y - &exact).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() / scale;
            assert!(err <= bound, "{dtype}: relative error {err}");
        }
    }
}
