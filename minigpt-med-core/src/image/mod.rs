//! Input images: decoding (PNG, JPEG, TIFF, BMP, DICOM), intensity windowing, colour handling
//! and the exact preprocessing of MiniGPT-Med (`Blip2ImageEvalProcessor`: Pillow bicubic resize
//! to 448x448, ToTensor, CLIP normalisation).

#[cfg(feature = "dicom")]
mod dicom;
#[cfg(feature = "jpeg-turbo")]
mod jpeg;
mod resize;
mod window;

use std::path::Path;

use candle_core::{Device, Tensor};

pub use resize::resize_plane_bicubic;
pub use window::{VoiFunction, Window, WindowPreset};

use crate::error::{Error, Result};

/// The JPEG decoder of this build: libjpeg-turbo (the `jpeg-turbo` feature, bit-exact with
/// Pillow), or the `image` crate's pure-Rust decoder, which rounds its IDCT and upsampling
/// differently (1-2 levels on ~0.5 % of the values).
pub fn jpeg_decoder() -> &'static str {
    if cfg!(feature = "jpeg-turbo") {
        "libjpeg-turbo 3.1.0 (ISLOW, fancy upsampling: Pillow's)"
    } else {
        "zune-jpeg via the image crate (not bit-exact with Pillow; build with the jpeg-turbo feature)"
    }
}

/// Default largest accepted input, in pixels (width * height): Pillow's `MAX_IMAGE_PIXELS`
/// (the original model's decoder warns of a decompression bomb above it). The model sees
/// 448x448; see [`ImageOptions::max_pixels`].
pub const DEFAULT_MAX_PIXELS: u64 = 89_478_485;

/// Longest accepted side of an input, in pixels (JPEG's and DICOM's own maximum). It bounds the
/// resize's buffers and filter tables (a 1 x 268,435,455 PNG is a half-megabyte file).
pub const MAX_SIDE: usize = 65_535;

/// Default largest image file read, in bytes; see [`ImageOptions::max_file_bytes`].
pub const DEFAULT_MAX_FILE_BYTES: u64 = 1 << 30;

/// The CLIP normalisation mean used by MiniGPT-Med, per RGB channel.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// The CLIP normalisation standard deviation, per RGB channel (written as in torchvision's
/// config; the f32 values are what matter).
#[allow(clippy::excessive_precision)]
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_58, 0.275_777_11];

/// Decoded pixels, before any resizing. Row-major, top row first.
#[derive(Debug, Clone, PartialEq)]
pub enum Pixels {
    /// 8-bit grayscale, `width * height` values; used as is (windows do not apply).
    Gray8(Vec<u8>),
    /// 8-bit RGB, interleaved, `width * height * 3` values.
    Rgb8(Vec<u8>),
    /// 16-bit grayscale (e.g. a 16-bit PNG or TIFF), `width * height` values; mapped to 8 bits
    /// by a window on the stored values (by default their min-max).
    Gray16(Vec<u16>),
    /// Real-valued grayscale, `width * height` values: DICOM modality values (after Rescale
    /// Slope/Intercept, e.g. Hounsfield units for CT). Mapped to 8 bits by a window (by
    /// default the file's, else the min-max of the finite values).
    GrayF32(Vec<f32>),
}

impl Pixels {
    /// Values per pixel: 1 for grayscale, 3 for RGB.
    pub fn channels(&self) -> usize {
        match self {
            Pixels::Rgb8(_) => 3,
            _ => 1,
        }
    }

    /// Number of stored values (`width * height * channels`).
    pub fn len(&self) -> usize {
        match self {
            Pixels::Gray8(v) | Pixels::Rgb8(v) => v.len(),
            Pixels::Gray16(v) => v.len(),
            Pixels::GrayF32(v) => v.len(),
        }
    }

    /// Whether there are no values at all.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What a DICOM file declared, kept with the decoded [`Image`] for reporting
/// (e.g. `minigpt-med preprocess` printing the window it used).
#[derive(Debug, Clone, PartialEq)]
pub struct DicomInfo {
    /// Transfer Syntax UID, e.g. `1.2.840.10008.1.2.1`.
    pub transfer_syntax: String,
    /// Its name, e.g. `Explicit VR Little Endian` (the UID again when unknown).
    pub transfer_syntax_name: String,
    /// Photometric Interpretation as stored, e.g. `MONOCHROME2`, `YBR_FULL_422`.
    pub photometric: String,
    /// Modality (e.g. `CT`, `MR`), when present.
    pub modality: Option<String>,
    /// Number of frames in the file (>= 1).
    pub frames: usize,
    /// The 0-based frame that was decoded.
    pub frame: usize,
    /// Bits Allocated per sample (1, 8, 16 or 32).
    pub bits_allocated: u16,
    /// Bits Stored per sample.
    pub bits_stored: u16,
    /// Rescale Slope applied (1 when absent or for colour images).
    pub rescale_slope: f64,
    /// Rescale Intercept applied (0 when absent or for colour images).
    pub rescale_intercept: f64,
    /// The file's first Window Center/Width for this frame, if any (monochrome only).
    pub file_window: Option<Window>,
}

/// How an image is decoded and rendered to 8 bits. `Default` gives: the file's own window
/// (DICOM) or min-max, the middle frame, [`ColorMode::Gray`], [`DEFAULT_MAX_PIXELS`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageOptions {
    /// An explicit window on the image's real values (CLI `--window C,W`); overrides the file's.
    pub window: Option<Window>,
    /// A named window (CLI `--window-preset NAME`); giving both this and `window` is an error.
    pub preset: Option<WindowPreset>,
    /// 0-based frame of a multi-frame DICOM (CLI `--frame N`); `None`: the middle one
    /// (`frames / 2`). Non-DICOM inputs only have frame 0.
    pub frame: Option<usize>,
    /// How colour is fed to the model.
    pub color: ColorMode,
    /// Largest accepted `width * height`; larger inputs fail before pixels are allocated.
    pub max_pixels: u64,
    /// Largest file [`Image::open_with`] reads, in bytes (default [`DEFAULT_MAX_FILE_BYTES`]).
    pub max_file_bytes: u64,
}

impl Default for ImageOptions {
    fn default() -> Self {
        Self {
            window: None,
            preset: None,
            frame: None,
            color: ColorMode::Gray,
            max_pixels: DEFAULT_MAX_PIXELS,
            max_file_bytes: DEFAULT_MAX_FILE_BYTES,
        }
    }
}

impl ImageOptions {
    /// Sets an explicit window.
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// Sets a named window.
    pub fn with_preset(mut self, preset: WindowPreset) -> Self {
        self.preset = Some(preset);
        self
    }

    /// Selects a frame (0-based).
    pub fn with_frame(mut self, frame: usize) -> Self {
        self.frame = Some(frame);
        self
    }

    /// Sets the colour mode.
    pub fn with_color(mut self, color: ColorMode) -> Self {
        self.color = color;
        self
    }

    /// Sets the pixel limit.
    pub fn with_max_pixels(mut self, max_pixels: u64) -> Self {
        self.max_pixels = max_pixels;
        self
    }

    /// The window the caller asked for (explicit or preset), if any.
    pub fn requested_window(&self) -> Result<Option<Window>> {
        match (self.window, self.preset) {
            (Some(_), Some(p)) => {
                Err(Error::InvalidOption(format!("both a window and the {p} preset were given; choose one")))
            }
            (w, p) => Ok(w.or(p.map(WindowPreset::window))),
        }
    }
}

/// How colour inputs become the model's three channels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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

/// `gray` or `rgb`, the names `FromStr` reads.
impl std::fmt::Display for ColorMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Gray => "gray",
            Self::Rgb => "rgb",
        })
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
    /// MONOCHROME1 DICOM: invert after windowing.
    invert: bool,
    dicom: Option<Box<DicomInfo>>,
}

/// PNG's deflate cannot expand more than ~1032:1; a header promising more pixels than that
/// from the bytes present is corrupt or a bomb, rejected before the decoder allocates.
const PNG_MAX_EXPANSION: u64 = 1100;

impl Image {
    /// Wraps raw pixels; `pixels` must hold exactly `width * height` (x3 for RGB) values.
    pub fn from_pixels(width: usize, height: usize, pixels: Pixels) -> Result<Self> {
        let (per_pixel, len) = (pixels.channels(), pixels.len());
        check_size(width, height, u64::MAX)?;
        let expected = width.checked_mul(height).and_then(|n| n.checked_mul(per_pixel));
        if expected != Some(len) {
            return Err(Error::image(
                None,
                format!("{width}x{height} with {per_pixel} value(s) per pixel does not match a buffer of {len} values"),
            ));
        }
        Ok(Self { width, height, pixels, window: None, color: ColorMode::Gray, invert: false, dicom: None })
    }

    /// Decodes an image file with default options (format sniffed from the content: PNG, JPEG,
    /// TIFF, BMP, or DICOM with the `dicom` feature).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path, &ImageOptions::default())
    }

    /// Decodes an image file with the given window, frame, colour and size options.
    pub fn open_with(path: impl AsRef<Path>, opts: &ImageOptions) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let bytes = read_image_file(path, opts.max_file_bytes).map_err(|reason| Error::image(Some(&name), reason))?;
        Self::decode(&bytes, Some(&name), opts)
    }

    /// Decodes an encoded image held in memory, with default options.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        Self::decode(bytes, None, &ImageOptions::default())
    }

    /// Decodes an encoded image held in memory with the given options.
    pub fn from_bytes_with(bytes: &[u8], opts: &ImageOptions) -> Result<Self> {
        Self::decode(bytes, None, opts)
    }

    fn decode(bytes: &[u8], name: Option<&str>, opts: &ImageOptions) -> Result<Self> {
        let requested = opts.requested_window()?;
        let mut image = if looks_like_dicom(bytes) {
            Self::decode_dicom(bytes, name, opts)?
        } else if looks_like_raw_dataset(bytes) {
            return Err(Error::image(
                name,
                "a DICOM data set without its file meta header (no DICM preamble) is not supported; \
                 add the meta header, e.g. `dcmconv +F in.dcm out.dcm` (DCMTK) or pydicom's `dcmwrite(..., enforce_file_format=True)`",
            ));
        } else {
            if let Some(f) = opts.frame.filter(|&f| f > 0) {
                return Err(Error::InvalidOption(format!(
                    "frame {f} requested, but only DICOM inputs have several frames (this one has frame 0 only)"
                )));
            }
            crate::contain::contain(|| Self::decode_common(bytes, name, opts.max_pixels)).unwrap_or_else(|msg| {
                Err(Error::image(name, format!("the decoder failed on malformed data ({msg}); the file is corrupt")))
            })?
        };
        if let Some(w) = requested {
            image.window = Some(w);
        }
        Ok(image.with_color(opts.color))
    }

    #[cfg(feature = "dicom")]
    fn decode_dicom(bytes: &[u8], name: Option<&str>, opts: &ImageOptions) -> Result<Self> {
        let d = dicom::decode(bytes, opts.frame, opts.max_pixels, name)?;
        if let (Some(what), None) = (&d.unsupported_voi, opts.requested_window()?) {
            return Err(Error::image(
                name,
                format!(
                    "the file's own display transform is {what}, which this engine does not apply; give a window \
                     (--window C,W or --window-preset, ImageOptions::window, window=(c, w)) to render it linearly"
                ),
            ));
        }
        let mut image = Self::from_pixels(d.width, d.height, d.pixels).map_err(|e| rename(e, name))?;
        image.invert = d.invert;
        image.window = d.info.file_window;
        image.dicom = Some(Box::new(d.info));
        Ok(image)
    }

    #[cfg(not(feature = "dicom"))]
    fn decode_dicom(_bytes: &[u8], name: Option<&str>, _opts: &ImageOptions) -> Result<Self> {
        Err(Error::image(name, "DICOM input needs minigpt-med built with the `dicom` feature (on by default)"))
    }

    /// PNG, JPEG, TIFF or BMP through the `image` crate.
    fn decode_common(bytes: &[u8], name: Option<&str>, max_pixels: u64) -> Result<Self> {
        use image::DynamicImage as D;
        #[cfg(feature = "jpeg-turbo")]
        if jpeg::is_jpeg(bytes) {
            let (w, h, pixels) = jpeg::decode(bytes, name, max_pixels)?;
            return Self::from_pixels(w, h, pixels).map_err(|e| rename(e, name));
        }
        let reader = || {
            image::ImageReader::new(std::io::Cursor::new(bytes))
                .with_guessed_format()
                .map_err(|e| Error::image(name, e.to_string()))
        };
        let probe = reader()?;
        let Some(format) = probe.format() else {
            return Err(Error::image(name, "not a PNG, JPEG, TIFF, BMP or DICOM image (unrecognised content)"));
        };
        let (w, h) = probe.into_dimensions().map_err(|e| Error::image(name, format!("cannot read the header: {e}")))?;
        let pixels = u64::from(w) * u64::from(h);
        check_size(w as usize, h as usize, max_pixels).map_err(|e| rename(e, name))?;
        if format == image::ImageFormat::Png && pixels > (bytes.len() as u64).saturating_mul(PNG_MAX_EXPANSION) {
            return Err(Error::image(
                name,
                format!(
                    "the PNG header declares {w}x{h} but the file holds only {} bytes; it is truncated or corrupt",
                    bytes.len()
                ),
            ));
        }
        let mut reader = reader()?;
        let mut limits = image::Limits::default();
        limits.max_alloc = Some(max_pixels.saturating_mul(8));
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
        Self::from_pixels(w, h, pixels).map_err(|e| rename(e, name))
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

    /// What the DICOM header said (transfer syntax, frames, rescale, file window), for DICOM inputs.
    pub fn dicom_info(&self) -> Option<&DicomInfo> {
        self.dicom.as_deref()
    }

    /// Sets the intensity window used for 16-bit and real-valued (DICOM) inputs; ignored for
    /// 8-bit and colour ones.
    pub fn with_window(mut self, window: Window) -> Self {
        self.window = Some(window);
        self
    }

    /// The window set on the image (by the caller or the DICOM file), if any.
    pub fn window(&self) -> Option<Window> {
        self.window
    }

    /// The window the 8-bit rendering uses: the one set, else the min-max of the values.
    /// `None` for 8-bit and colour images, which are used as is.
    pub fn effective_window(&self) -> Option<Window> {
        match &self.pixels {
            Pixels::Gray8(_) | Pixels::Rgb8(_) => None,
            Pixels::Gray16(v) => self.window.or_else(|| Window::of_values(v.iter().map(|&x| f64::from(x)))),
            Pixels::GrayF32(v) => self.window.or_else(|| Window::of_values(v.iter().map(|&x| f64::from(x)))),
        }
    }

    /// Whether the rendering is inverted after windowing (DICOM MONOCHROME1).
    pub fn is_inverted(&self) -> bool {
        self.invert
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

    /// The image rendered to 8 bits at full resolution: windowed (and inverted for
    /// MONOCHROME1) grayscale as [`Pixels::Gray8`], colour as [`Pixels::Rgb8`]; 8-bit inputs
    /// unchanged. This is what [`Image::model_view`] resizes.
    pub fn to_8bit(&self) -> Image {
        let pixels = match &self.pixels {
            Pixels::Rgb8(v) => Pixels::Rgb8(v.clone()),
            _ => Pixels::Gray8(self.gray8()),
        };
        Image {
            width: self.width,
            height: self.height,
            pixels,
            window: None,
            color: self.color,
            invert: false,
            dicom: self.dicom.clone(),
        }
    }

    /// Grayscale planes windowed to 8 bits (8-bit gray as is).
    fn gray8(&self) -> Vec<u8> {
        let window = self.effective_window();
        let flip = |y: u8| if self.invert { 255 - y } else { y };
        match &self.pixels {
            Pixels::Gray8(v) => v.clone(),
            Pixels::Rgb8(_) => self.luma8(),
            Pixels::Gray16(v) => {
                let w = window.unwrap_or(Window::min_max(0.0, 0.0));
                v.iter().map(|&x| flip(w.apply(f64::from(x)))).collect()
            }
            Pixels::GrayF32(v) => {
                let w = window.unwrap_or(Window::min_max(0.0, 0.0));
                v.iter().map(|&x| flip(w.apply(f64::from(x)))).collect()
            }
        }
    }

    /// The luma plane as Pillow's `convert("L")` computes it (windowed for non-8-bit gray).
    fn luma8(&self) -> Vec<u8> {
        match &self.pixels {
            Pixels::Rgb8(v) => v
                .chunks_exact(3)
                .map(|p| {
                    let (r, g, b) = (u32::from(p[0]), u32::from(p[1]), u32::from(p[2]));
                    ((19595 * r + 38470 * g + 7471 * b + 32768) >> 16) as u8
                })
                .collect(),
            _ => self.gray8(),
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

/// Interleaved RGB bytes (`[height, width, 3]`) encoded as an 8-bit PNG.
pub fn encode_rgb_png(width: usize, height: usize, rgb: &[u8]) -> Result<Vec<u8>> {
    let dims = (u32::try_from(width), u32::try_from(height));
    let (Ok(w), Ok(h)) = dims else { return Err(Error::image(None, "image too large for PNG")) };
    if rgb.len() != width * height * 3 {
        return Err(Error::image(None, format!("{} bytes do not make a {width}x{height} RGB image", rgb.len())));
    }
    let mut out = Vec::new();
    image::ImageEncoder::write_image(
        image::codecs::png::PngEncoder::new(&mut out),
        rgb,
        w,
        h,
        image::ExtendedColorType::Rgb8,
    )
    .map_err(|e| Error::image(None, format!("cannot encode the PNG: {e}")))?;
    Ok(out)
}

/// Writes interleaved RGB bytes (`[height, width, 3]`) as a PNG file.
pub fn save_rgb_png(path: &Path, width: usize, height: usize, rgb: &[u8]) -> Result<()> {
    let png = encode_rgb_png(width, height, rgb)?;
    write_atomic(path, &png)
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over `path`: a reader
/// never sees half a file, and a failed write leaves what was there.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let hint = "the directory must exist and be writable";
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(path, std::io::Error::from(std::io::ErrorKind::InvalidInput), "give a file name, not a directory")
    })?;
    let tmp = path.with_file_name(format!(".{}.{}.tmp", file_name.to_string_lossy(), std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    match written.and_then(|()| std::fs::rename(&tmp, path)) {
        Ok(()) => Ok(()),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(Error::io(path, e, hint))
        }
    }
}

/// Refuses an output path that names the input file (or the same file through another path).
pub fn ensure_not_input(output: &Path, input: &Path) -> Result<()> {
    let same = match (std::fs::canonicalize(output), std::fs::canonicalize(input)) {
        (Ok(o), Ok(i)) => o == i,
        _ => false,
    };
    if same {
        return Err(Error::InvalidOption(format!(
            "the output {} is the input image: choose another file name",
            output.display()
        )));
    }
    Ok(())
}

/// Checks the size of an image before its pixels are allocated or read: both sides non-zero
/// and at most [`MAX_SIDE`], `width * height` at most `max_pixels`.
pub fn check_size(width: usize, height: usize, max_pixels: u64) -> Result<()> {
    if width == 0 || height == 0 {
        return Err(Error::image(None, format!("zero size {width}x{height}")));
    }
    if width > MAX_SIDE || height > MAX_SIDE {
        return Err(Error::image(
            None,
            format!("{width}x{height} has a side over {MAX_SIDE} pixels; crop or downscale it first"),
        ));
    }
    if (width as u64) * (height as u64) > max_pixels {
        return Err(Error::image(
            None,
            format!(
                "{width}x{height} exceeds the {max_pixels}-pixel limit (ImageOptions::max_pixels); downscale it first"
            ),
        ));
    }
    Ok(())
}

/// Reads an image file: a regular file (not a device, FIFO or directory) of at most `max` bytes.
fn read_image_file(path: &Path, max: u64) -> std::result::Result<Vec<u8>, String> {
    use std::io::Read;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read the file: {e}"))?;
    if !meta.is_file() {
        return Err("not a regular file (a directory, device or pipe); give an image file".into());
    }
    if meta.len() > max {
        return Err(format!(
            "the file has {} bytes, over the {max}-byte limit (ImageOptions::max_file_bytes)",
            meta.len()
        ));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read the file: {e}"))?;
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    // `take` bounds the read even if the file grows while it is read.
    file.take(max + 1).read_to_end(&mut bytes).map_err(|e| format!("cannot read the file: {e}"))?;
    if bytes.len() as u64 > max {
        return Err(format!("the file grew past the {max}-byte limit while it was read"));
    }
    Ok(bytes)
}

/// Whether `bytes` starts like a bare DICOM data set (no preamble, no meta group): an element
/// of group 0008 with a plausible VR or a 4-byte length, as such files (old ACR-NEMA-style
/// exports) begin.
fn looks_like_raw_dataset(bytes: &[u8]) -> bool {
    if bytes.len() < 8 || bytes[0..2] != [0x08, 0x00] || u16::from_le_bytes([bytes[2], bytes[3]]) > 0x0100 {
        return false;
    }
    let vr = &bytes[4..6];
    let explicit = vr.iter().all(u8::is_ascii_uppercase);
    let implicit_len = u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
    explicit || implicit_len < 1 << 16
}

/// Whether `bytes` is a DICOM file (`DICM` at offset 128, or at 0 when the preamble is missing).
pub fn looks_like_dicom(bytes: &[u8]) -> bool {
    bytes.get(128..132) == Some(b"DICM") || bytes.starts_with(b"DICM")
}

fn rename(e: Error, name: Option<&str>) -> Error {
    match e {
        Error::Image { reason, .. } => Error::image(name, reason),
        e => e,
    }
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

    /// Writes the view as an 8-bit RGB PNG (`size x size`), e.g. for `minigpt-med preprocess`.
    pub fn save_png(&self, path: impl AsRef<Path>) -> Result<()> {
        save_rgb_png(path.as_ref(), self.size, self.size, &self.to_hwc())
    }

    /// The view encoded as an 8-bit RGB PNG.
    pub fn to_png(&self) -> Result<Vec<u8>> {
        encode_rgb_png(self.size, self.size, &self.to_hwc())
    }

    /// The normalised pixels as a `[3, size, size]` f32 tensor.
    pub fn tensor(&self, device: &Device) -> Result<Tensor> {
        Ok(Tensor::from_vec(self.normalized(), (3, self.size, self.size), device)?)
    }
}
