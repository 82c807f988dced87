//! Input images: decoding, colour handling and the exact preprocessing of MiniGPT-Med
//! (`Blip2ImageEvalProcessor`: Pillow bicubic resize to 448x448, ToTensor, CLIP normalisation).

mod resize;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use resize::resize_plane_bicubic;

use crate::error::{Error, Result};

/// Largest accepted input, in pixels (width * height); protects against decompression bombs.
pub const DEFAULT_MAX_PIXELS: u64 = 256 * 1024 * 1024;

/// The CLIP normalisation mean used by MiniGPT-Med, per RGB channel.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP normalisation standard deviation, per RGB channel (written as in torchvision's
/// config; the f32 values are what matter).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decoded pixels, before any resizing.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// 8-bit grayscale, `width * height` values.
    Gray8(Vec<u8>),
    /// 8-bit RGB, interleaved, `width * height * 3` values.
    Rgb8(Vec<u8>),
    /// 16-bit grayscale (e.g. a 16-bit PNG), `width * height` values; mapped to 8 bits by a
    /// window (by default the min-max of the stored values).
    Gray16(Vec<u16>),
}

/// A linear intensity window (DICOM PS3.3 C.11.2.1.2 semantics, applied to stored values).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    /// Window centre.
    pub center: f64,
    /// Window width (> 0).
    pub width: f64,
}

impl Window {
    /// Maps `v` to 0..=255 with the DICOM linear VOI function.
    pub fn apply(&self, v: f64) -> u8 {
        let (c, w) = (self.center, self.width.max(1.0));
        let y = if v <= c - 0.5 - (w - 1.0) / 2.0 {
            0.0
        } else if v > c - 0.5 + (w - 1.0) / 2.0 {
            255.0
        } else {
            ((v - (c - 0.5)) / (w - 1.0) + 0.5) * 255.0
        };
        y.round().clamp(0.0, 255.0) as u8
    }

    /// The window spanning `min..=max` exactly.
    pub fn min_max(min: f64, max: f64) -> Self {
        let width = (max - min + 1.0).max(1.0);
        Self { center: min + (width - 1.0) / 2.0 + 0.5, width }
    }
}

/// How colour inputs become the model's three channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ColorMode {
    /// MiniGPT-Med's evaluation: Pillow `convert("L")` (ITU-R 601 luma), replicated to R, G, B.
    #[default]
    Gray,
    /// MiniGPT-Med's demo: the RGB image as is.
    Rgb,
}

impl std::str::FromStr for ColorMode {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "gray" | "grey" | "l" => Ok(Self::Gray),
            "rgb" | "color" | "colour" => Ok(Self::Rgb),
            other => Err(Error::InvalidOption(format!("colour mode {other:?}: use gray or rgb"))),
        }
    }
}

/// An input image as decoded from a file, bytes or a raw buffer.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    width: usize,
    height: usize,
    pixels: Pixels,
    window: Option<Window>,
    color: ColorMode,
}

impl Image {
    /// Wraps raw pixels; `pixels` must hold exactly `width * height` (x3 for RGB) values.
    pub fn from_pixels(width: usize, height: usize, pixels: Pixels) -> Result<Self> {
        let per_pixel = match &pixels {
            Pixels::Gray8(_) | Pixels::Gray16(_) => 1,
            Pixels::Rgb8(_) => 3,
        };
        let len = match &pixels {
            Pixels::Gray8(v) | Pixels::Rgb8(v) => v.len(),
            Pixels::Gray16(v) => v.len(),
        };
        if width == 0 || height == 0 {
            return Err(Error::image(None, format!("zero size {width}x{height}")));
        }
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(per_pixel));
        if expected != Some(len) {
            return Err(Error::image(
                None,
                format!("{width}x{height} needs {} values, the buffer holds {len}", width * height * per_pixel),
            ));
        }
        Ok(Self { width, height, pixels, window: None, color: ColorMode::Gray })
    }

    /// Decodes an image file (PNG, JPEG, TIFF, BMP; format sniffed from the content).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| Error::Image {
            source_name: Some(path.display().to_string()),
            reason: format!("cannot read the file: {e}"),
        })?;
        Self::decode(&bytes, Some(&path.display().to_string()))
    }

    /// Decodes an encoded image held in memory.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes, None)
    }

    fn decode(bytes: &[u8], name: Option<&str>) -> Result<Self> {
        use image::DynamicImage as D;
        let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::image(name, e.to_string()))?;
        if reader.format().is_none() {
            return Err(Error::image(name, "not a PNG, JPEG, TIFF or BMP image (unrecognised content)"));
        }
        let (w, h) =
            reader.into_dimensions().map_err(|e| Error::image(name, format!("cannot read the header: {e}")))?;
        if u64::from(w) * u64::from(h) > DEFAULT_MAX_PIXELS {
            return Err(Error::image(
                name,
                format!("{w}x{h} exceeds the {DEFAULT_MAX_PIXELS}-pixel limit; downscale it first"),
            ));
        }
        reader = image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| Error::image(name, e.to_string()))?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(DEFAULT_MAX_PIXELS * 8);
        reader.limits(limits);
        let img = reader.decode().map_err(|e| Error::image(name, format!("cannot decode: {e}")))?;
        let (w, h) = (img.width() as usize, img.height() as usize);
        let pixels = match img {
            D::ImageLuma8(b) => Pixels::Gray8(b.into_raw()),
            D::ImageLumaA8(b) => Pixels::Gray8(b.pixels().map(|p| p.0[0]).collect()),
            D::ImageRgb8(b) => Pixels::Rgb8(b.into_raw()),
            D::ImageLuma16(b) => Pixels::Gray16(b.into_raw()),
            D::ImageLumaA16(b) => Pixels::Gray16(b.pixels().map(|p| p.0[0]).collect()),
            other => Pixels::Rgb8(other.to_rgb8().into_raw()),
        };
        Self::from_pixels(w, h, pixels).map_err(|e| match e {
            Error::Image { reason, .. } => Error::image(name, reason),
            e => e,
        })
    }

    /// Width in pixels of the input (box pixel coordinates refer to it).
    pub fn width(&self) -> usize {
        self.width
    }

    /// Height in pixels of the input.
    pub fn height(&self) -> usize {
        self.height
    }

    /// The decoded pixels.
    pub fn pixels(&self) -> &Pixels {
        &self.pixels
    }

    /// Sets the intensity window used for 16-bit inputs (ignored for 8-bit ones).
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// Sets how colour is fed to the model (default [`ColorMode::Gray`], as MiniGPT-Med's evaluation).
    pub fn with_color(mut self, color: ColorMode) -> Self {
        self.color = color;
        self
    }

    /// The colour mode the model will see this image in.
    pub fn color(&self) -> ColorMode {
        self.color
    }

    /// The luma plane as Pillow's `convert("L")` computes it.
    fn luma8(&self) -> Vec<u8> {
        match &self.pixels {
            Pixels::Gray8(v) => v.clone(),
            Pixels::Rgb8(v) => v
                .chunks_exact(3)
                .map(|p| {
                    let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
                    ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16) as u8
                })
                .collect(),
            Pixels::Gray16(v) => {
                let window = self.window.unwrap_or_else(|| {
                    let (min, max) = v.iter().fold((u16::MAX, 0u16), |(lo, hi), &x| (lo.min(x), hi.max(x)));
                    Window::min_max(f64::from(min), f64::from(max))
                });
                v.iter().map(|&x| window.apply(f64::from(x))).collect()
            }
        }
    }

    /// The image at its own size as interleaved RGB bytes (`[height, width, 3]`), 16-bit inputs
    /// windowed; what [`crate::draw_boxes`] draws on.
    pub fn to_rgb8(&self) -> Vec<u8> {
        match &self.pixels {
            Pixels::Rgb8(v) => v.clone(),
            _ => self.luma8().iter().flat_map(|&v| [v, v, v]).collect(),
        }
    }

    /// The `size x size` RGB image the model sees, as three planes (`[3, size, size]`, CHW).
    pub fn model_view(&self, size: usize) -> ModelView {
        let (w, h) = (self.width, self.height);
        let planes = match (&self.pixels, self.color) {
            (Pixels::Rgb8(v), ColorMode::Rgb) => {
                let mut planes = Vec::with_capacity(3 * size * size);
                for c in 0..3 {
                    let plane: Vec<u8> = v.iter().skip(c).step_by(3).copied().collect();
                    planes.extend(resize_plane_bicubic(&plane, w, h, size, size));
                }
                planes
            }
            _ => {
                let plane = resize_plane_bicubic(&self.luma8(), w, h, size, size);
                plane.repeat(3)
            }
        };
        ModelView { size, chw: planes }
    }
}

/// Writes interleaved RGB bytes (`[height, width, 3]`) as a PNG file.
pub fn save_rgb_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    let err = |reason: String| Error::image(Some(&path.display().to_string()), reason);
    let buf = image::RgbImage::from_raw(width as u32, height as u32, rgb.to_vec())
        .ok_or_else(|| err(format!("{} bytes do not make a {width}x{height} RGB image", rgb.len())))?;
    buf.save_with_format(path, image::ImageFormat::Png).map_err(|e| err(format!("cannot write the PNG: {e}")))
}

/// The resized RGB image the vision encoder receives, before normalisation.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelView {
    /// Side length in pixels.
    pub size: usize,
    /// `[3, size, size]` u8 values, channel-major.
    pub chw: Vec<u8>,
}

impl ModelView {
    /// Interleaved `size x size x 3` RGB bytes (HWC), e.g. for writing a PNG.
    pub fn to_hwc(&self) -> Vec<u8> {
        let n = self.size * self.size;
        (0..n).flat_map(|i| [self.chw[i], self.chw[n + i], self.chw[2 * n + i]]).collect()
    }

    /// Normalised pixel values `[3, size, size]` f32: `(u8 / 255 - mean) / std` with true
    /// divisions in f32, as torchvision's ToTensor + Normalize compute them.
    pub fn normalized(&self) -> Vec<f32> {
        let n = self.size * self.size;
        self.chw
            .iter()
            .enumerate()
            .map(|(i, &v)| {
                let c = i / n;
                (f32::from(v) / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]
            })
            .collect()
    }

    /// The normalised pixels as a `[3, size, size]` f32 tensor.
    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.normalized(), (3, self.size, self.size), device)?)
    }
}
