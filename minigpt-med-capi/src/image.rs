//! `mgm_Image`: an input image decoded from a file, from bytes, or copied from a raw buffer.

use std::ffi::{c_char, c_void};

use super::params::{self, ColorModeValue, PixelFormat, PixelFormatValue};
use super::ptr;
use super::status::{guard, Failure, Status};

/// An input image (opaque). Created by `mgm_image_open`, `mgm_image_from_bytes` or
/// `mgm_image_from_pixels`; freed by `mgm_image_free`. It owns a copy of its pixels, so it may
/// be freed right after the calls that use it. Read-only calls may run on several threads at
/// once; the `mgm_image_set_*` calls need exclusive access.
pub struct Image {
    pub(crate) inner: engine::Image,
}

fn finish(image: engine::Image, out: &mut *mut Image) -> Result<(), Failure> {
    *out = Box::into_raw(Box::new(Image { inner: image }));
    Ok(())
}

/// Decodes an image file (PNG, JPEG, TIFF, BMP; the format is sniffed from the content).
///
/// On success `*out_image` is a new image to free with `mgm_image_free`; on failure it is NULL.
///
/// # Safety
/// `path` is NULL or a NUL-terminated string; `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_open(path: *const c_char, out_image: *mut *mut Image) -> Status {
    guard(|| {
        // SAFETY: the pointers are valid or NULL per this function's contract.
        let out = unsafe { ptr::out_handle(out_image, "out_image") }?;
        let path = unsafe { ptr::string(path, "path") }?;
        finish(engine::Image::open(path)?, out)
    })
}

/// Decodes an encoded image (PNG, JPEG, TIFF, BMP) held in memory; the bytes are not kept.
///
/// # Safety
/// `data` is NULL or points to `len` readable bytes; `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_from_bytes(data: *const u8, len: usize, out_image: *mut *mut Image) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_image, "out_image") }?;
        if data.is_null() {
            return Err(Failure::invalid("data is NULL"));
        }
        // SAFETY: `data` is non-NULL with `len` readable bytes.
        let bytes = unsafe { std::slice::from_raw_parts(data, len) };
        finish(engine::Image::from_bytes(bytes)?, out)
    })
}

/// Copies a raw pixel buffer: `height` rows of `width` pixels in `format`, each row starting
/// `stride` bytes after the previous one (`stride` 0 means tightly packed). `MGM_PIXEL_FORMAT_GRAY16`
/// values are native-endian; the buffer needs no particular alignment. A zero side, a side over
/// 65535 pixels or more than 89,478,485 pixels (Pillow's limit) is `MGM_STATUS_IMAGE`, reported
/// before the buffer is read.
///
/// # Safety
/// `pixels` is NULL or points to `stride * (height - 1) + width * bytes_per_pixel` readable
/// bytes; `out_image` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_from_pixels(
    width: u32,
    height: u32,
    stride: usize,
    format: PixelFormatValue,
    pixels: *const c_void,
    out_image: *mut *mut Image,
) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let out = unsafe { ptr::out_handle(out_image, "out_image") }?;
        let format = params::pixel_format(format)?;
        if pixels.is_null() {
            return Err(Failure::invalid("pixels is NULL"));
        }
        let (w, h) = (width as usize, height as usize);
        // Checked before the caller's buffer is read or a copy of it allocated.
        engine::image::check_size(w, h, engine::image::DEFAULT_MAX_PIXELS)?;
        let bpp = match format {
            PixelFormat::Gray8 => 1,
            PixelFormat::Rgb8 => 3,
            PixelFormat::Gray16 => 2,
        };
        let row = w.checked_mul(bpp).ok_or_else(|| Failure::invalid("width is too large"))?;
        let stride = if stride == 0 { row } else { stride };
        if stride < row {
            return Err(Failure::invalid(format!("stride {stride} is less than a row ({row} bytes)")));
        }
        let mut packed = Vec::new();
        if w > 0 && h > 0 {
            let total = stride
                .checked_mul(h - 1)
                .and_then(|n| n.checked_add(row))
                .ok_or_else(|| Failure::invalid("width x height x stride overflows"))?;
            // SAFETY: `pixels` is non-NULL with `total` readable bytes per the contract.
            let src = unsafe { std::slice::from_raw_parts(pixels.cast::<u8>(), total) };
            packed.reserve_exact(row * h);
            for y in 0..h {
                packed.extend_from_slice(&src[y * stride..y * stride + row]);
            }
        }
        let pixels = match format {
            PixelFormat::Gray8 => engine::Pixels::Gray8(packed),
            PixelFormat::Rgb8 => engine::Pixels::Rgb8(packed),
            PixelFormat::Gray16 => {
                engine::Pixels::Gray16(packed.chunks_exact(2).map(|b| u16::from_ne_bytes([b[0], b[1]])).collect())
            }
        };
        finish(engine::Image::from_pixels(w, h, pixels)?, out)
    })
}

/// The image's size in pixels (box pixel coordinates refer to it).
///
/// # Safety
/// `image` is NULL or a live image; `out_width`/`out_height` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_size(image: *const Image, out_width: *mut u32, out_height: *mut u32) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let image = unsafe { ptr::arg(image, "image") }?;
        let out_w = unsafe { ptr::arg_mut(out_width, "out_width") }?;
        let out_h = unsafe { ptr::arg_mut(out_height, "out_height") }?;
        // Decoded images are capped far below 2^32 pixels a side by the engine.
        *out_w = u32::try_from(image.inner.width()).map_err(|_| Failure::invalid("width exceeds uint32_t"))?;
        *out_h = u32::try_from(image.inner.height()).map_err(|_| Failure::invalid("height exceeds uint32_t"))?;
        Ok(())
    })
}

/// Sets how a colour image is fed to the model (default `MGM_COLOR_MODE_GRAY`, as
/// MiniGPT-Med's evaluation). Grayscale inputs are unaffected.
///
/// # Safety
/// `image` is NULL or a live image no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_set_color_mode(image: *mut Image, mode: ColorModeValue) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let image = unsafe { ptr::arg_mut(image, "image") }?;
        let mode = params::color_mode(mode)?;
        update(image, |i| i.with_color(mode));
        Ok(())
    })
}

/// Sets the intensity window (DICOM linear VOI: `center`, `width` > 0, in stored values) that
/// maps 16-bit grayscale images to 8 bits; ignored for 8-bit images.
///
/// # Safety
/// `image` is NULL or a live image no other thread uses during the call.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_set_window(image: *mut Image, center: f64, width: f64) -> Status {
    guard(|| {
        // SAFETY: per this function's contract.
        let image = unsafe { ptr::arg_mut(image, "image") }?;
        let window = engine::Window::new(center, width)?;
        update(image, |i| i.with_window(window));
        Ok(())
    })
}

/// Applies one of the engine's by-value builders in place.
fn update(image: &mut Image, f: impl FnOnce(engine::Image) -> engine::Image) {
    // The builders take the image by value; a 1-pixel placeholder stands in meanwhile, so no
    // pixel buffer is cloned.
    let placeholder = engine::Image::from_pixels(1, 1, engine::Pixels::Gray8(vec![0])).expect("1x1 image is valid");
    let taken = std::mem::replace(&mut image.inner, placeholder);
    image.inner = f(taken);
}

/// Frees an image. NULL is accepted and ignored.
///
/// # Safety
/// `image` is NULL or an image from this library not yet freed; it is invalid afterwards.
#[no_mangle]
pub unsafe extern "C" fn mgm_image_free(image: *mut Image) {
    // SAFETY: per this function's contract.
    unsafe { ptr::free(image) }
}
